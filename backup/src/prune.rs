//! `berth-backup prune`: the GFS rules applied to every target in the backup directory,
//! never deleting what the last good release's ledger record names (pinned).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use berth_core::{ledger, lock, msg, record, ExitCode};

use crate::list::print;
use crate::rotate::{self, Candidate, Decision, Policy};
use crate::store::{self, file_name, Target};
use crate::{set_quiet, PruneCmd};

/// File names pinned by the ledger: the backups recorded by the last good release. An
/// error when the ledger cannot be read: then no one knows what is pinned.
pub(crate) fn pinned(state_dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let releases = ledger::read(state_dir)?;
    if let Some(good) = ledger::last_good(&releases, None) {
        for s in good.stages.iter().filter(|s| s.stage.starts_with("backup")) {
            let b: record::Backup = record::read(&s.detail).unwrap_or_default();
            if let Some(f) = &b.file {
                let name = file_name(Path::new(f));
                out.insert(
                    name,
                    format!(
                        "pinned: taken before the last good release {}",
                        good.deploy_id
                    ),
                );
            }
        }
    }
    Ok(out)
}

/// Apply the policy to one target's backups (lock held by the caller).
pub(crate) fn rotate_target(
    dir: &Path,
    state_dir: &Path,
    target: &Target,
    policy: &Policy,
    dry_run: bool,
) -> Result<Vec<(Decision, PathBuf)>> {
    let scan = store::scan(dir)?;
    // Never delete on a ledger we cannot read: the last good release's backup may be
    // among the candidates.
    let (pins, ledger_ok) = match pinned(state_dir) {
        Ok(p) => (p, true),
        Err(e) => {
            msg::warn(format!(
                "{e:#}: rotation deletes nothing until the ledger is readable"
            ));
            (BTreeMap::new(), false)
        }
    };
    let entries = scan.of(target);
    let cands: Vec<Candidate> = entries
        .iter()
        .map(|e| Candidate {
            name: e.manifest.file.clone(),
            created: e.manifest.created(),
            verified: e.manifest.verification.verified(),
            pinned: pins.get(&e.manifest.file).cloned(),
        })
        .collect();
    let mut decisions = rotate::plan(&cands, policy);
    if !ledger_ok {
        for d in decisions.iter_mut().filter(|d| !d.keep) {
            d.keep = true;
            d.reasons.push("kept: the ledger cannot be read".into());
        }
    }
    let mut out = Vec::new();
    for d in decisions {
        let path = dir.join(&d.name);
        if !d.keep && !dry_run {
            store::remove(&path)?;
        }
        out.push((d, path));
    }
    Ok(out)
}

pub fn run(c: PruneCmd) -> Result<ExitCode> {
    set_quiet(&c.storage);
    let ctx = c.common.resolve()?;
    let policy = c.keep.policy();
    let dir = c.storage.dir(&ctx);
    let scan = store::scan(&dir)?;
    let mut targets: Vec<Target> = scan.entries.iter().map(|e| e.manifest.target()).collect();
    targets.sort();
    targets.dedup();
    let mut text = String::new();
    let verb = |keep: bool| match (keep, ctx.dry_run) {
        (true, _) => "keep",
        (false, true) => "would delete",
        (false, false) => "deleted",
    };
    for t in &targets {
        let _lock = lock::acquire(&ctx.state_dir, &t.lock_name(), c.storage.lock_wait, None)?;
        text.push_str(&format!("{}:\n", t.describe()));
        for (d, _) in rotate_target(&dir, &ctx.state_dir, t, &policy, ctx.dry_run)? {
            text.push_str(&format!(
                "  {:<12} {}  ({})\n",
                verb(d.keep),
                d.name,
                d.reasons.join("; ")
            ));
        }
    }
    for p in &scan.incomplete {
        text.push_str(&format!(
            "  {:<12} {}  (no manifest: not a backup; remove it by hand)\n",
            "ignore",
            file_name(p)
        ));
    }
    if targets.is_empty() {
        text.push_str(&format!("no backups in {}\n", dir.display()));
    }
    print(&text)?;
    Ok(ExitCode::Success)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Three verified backups of one database, the files and their manifests.
    fn three_backups(dir: &Path) -> Target {
        for day in 1..=3 {
            let file = format!("shop-app-2026112{day}T031500Z.dump");
            std::fs::write(dir.join(&file), b"PGDMP").unwrap();
            let m: store::Manifest = serde_json::from_value(json!({
                "format": store::FORMAT, "kind": "pg", "file": file, "bytes": 5,
                "sha256": "x", "created_at": format!("2026-11-2{day}T03:15:00.000Z"),
                "project": "shop", "target": "app", "source": "service db",
                "verification": "read", "duration_ms": 1,
            }))
            .unwrap();
            m.write(dir).unwrap();
        }
        store::Target {
            kind: store::Kind::Pg,
            project: "shop".into(),
            name: "app".into(),
        }
    }

    #[test]
    fn rotation_deletes_nothing_when_the_ledger_cannot_be_read() {
        let d = tempfile::tempdir().unwrap();
        let (dir, state) = (d.path().join("b"), d.path().join("state"));
        std::fs::create_dir_all(&dir).unwrap();
        let target = three_backups(&dir);
        let policy = Policy {
            last: 1,
            ..Policy::default()
        };
        // A ledger that is there but cannot be read (a directory in its place).
        std::fs::create_dir_all(ledger::path(&state)).unwrap();
        let done = rotate_target(&dir, &state, &target, &policy, false).unwrap();
        assert_eq!(done.len(), 3);
        assert!(done.iter().all(|(d, p)| d.keep && p.exists()));
        // Readable (and empty): the policy applies.
        std::fs::remove_dir(ledger::path(&state)).unwrap();
        let done = rotate_target(&dir, &state, &target, &policy, false).unwrap();
        assert_eq!(
            done.iter().filter(|(d, p)| !d.keep && !p.exists()).count(),
            2
        );
    }
}
