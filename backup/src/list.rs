//! `berth-backup list`: the backups in the backup directory (or in an off-site copy),
//! as a table or as JSON.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use berth_core::{human, msg, time, ExitCode};
use serde_json::{json, Value};

use crate::prune::pinned;
use crate::store::{self, file_name, Scan};
use crate::{offsite, set_quiet, ListCmd};

/// How long ago, shortly: `42s`, `5m`, `3h12m`, `2d4h`.
pub(crate) fn age(created: jiff::Timestamp) -> String {
    let secs = (time::now().as_second() - created.as_second()).max(0) as u64;
    let d = Duration::from_secs(secs);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86399 => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{}h", d.as_secs() / 86400, (d.as_secs() % 86400) / 3600),
    }
}

pub fn run(c: ListCmd) -> Result<ExitCode> {
    set_quiet(&c.storage);
    if let Some(dest) = &c.remote {
        print(&offsite::list(dest, &c.restic, c.json)?)?;
        return Ok(ExitCode::Success);
    }
    let ctx = c.common.resolve()?;
    let dir = c.storage.dir(&ctx);
    let scan = store::scan(&dir)?;
    let pins = pinned(&ctx.state_dir).unwrap_or_else(|e| {
        msg::warn(format!("{e:#}: pins unknown"));
        BTreeMap::new()
    });
    let text = if c.json {
        json_text(&scan, &pins)?
    } else {
        table(&scan, &pins, &dir)
    };
    print(&text)?;
    Ok(ExitCode::Success)
}

/// Write to stdout; a reader that went away (`| head`) is no error.
pub(crate) fn print(text: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// One JSON array of the manifests, each with its `path` and whether it is pinned.
fn json_text(scan: &Scan, pins: &BTreeMap<String, String>) -> Result<String> {
    let arr: Vec<Value> = scan
        .entries
        .iter()
        .map(|e| {
            let mut v = serde_json::to_value(&e.manifest).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.insert("path".into(), json!(e.path.display().to_string()));
                o.insert("pinned".into(), json!(pins.contains_key(&e.manifest.file)));
            }
            v
        })
        .collect();
    Ok(format!("{}\n", serde_json::to_string(&arr)?))
}

/// The table: newest first, then the files that are not backups.
fn table(scan: &Scan, pins: &BTreeMap<String, String>, dir: &Path) -> String {
    let mut text = String::new();
    if scan.entries.is_empty() {
        text.push_str(&format!("no backups in {}\n", dir.display()));
    } else {
        text.push_str(&format!(
            "{:<52} {:<6} {:<10} {:>10} {:>8}  {}\n",
            "FILE", "KIND", "VERIFIED", "SIZE", "AGE", "NOTE"
        ));
    }
    for e in scan.entries.iter().rev() {
        let m = &e.manifest;
        text.push_str(&format!(
            "{:<52} {:<6} {:<10} {:>10} {:>8}  {}\n",
            m.file,
            m.kind.as_str(),
            m.verification.as_str(),
            human::bytes(m.bytes),
            age(m.created()),
            if pins.contains_key(&m.file) {
                "pinned (last good release)"
            } else {
                ""
            }
        ));
    }
    for p in &scan.incomplete {
        text.push_str(&format!(
            "{}  incomplete: no manifest, not a backup\n",
            file_name(p)
        ));
    }
    for p in &scan.partials {
        text.push_str(&format!(
            "{}  partial: being written, or left by a crash\n",
            file_name(p)
        ));
    }
    text
}
