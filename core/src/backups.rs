//! A read-only view of the backups `berth-backup` wrote: the manifests (`<archive>.json`)
//! in a backup directory, for `berth-report status` and anything else that must answer
//! "how old is our newest good backup?" without linking the backup tool.

use std::path::Path;

use anyhow::{Context as _, Result};
use serde::Deserialize;

/// What a manifest says of one backup (the fields a status needs).
#[derive(Debug, Clone, Deserialize)]
pub struct Backup {
    /// `pg` or `volume`.
    pub kind: String,
    /// The database or the volume as named.
    pub target: String,
    /// The archive's file name.
    pub file: String,
    pub bytes: u64,
    pub created_at: String,
    /// `none`, `read`, `restore` or `failed`.
    pub verification: String,
}

impl Backup {
    /// Read through to its end or restored, and not found broken since.
    pub fn verified(&self) -> bool {
        matches!(self.verification.as_str(), "read" | "restore")
    }
}

/// Every backup whose archive and manifest are both in `dir`, oldest first. A missing
/// directory is no backups; a manifest that does not parse is skipped.
pub fn scan(dir: &Path) -> Result<Vec<Backup>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(archive) = name.strip_suffix(".json") else {
            continue;
        };
        if !dir.join(archive).is_file() {
            continue;
        }
        let parsed = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<Backup>(&t).ok());
        if let Some(b) = parsed.filter(|b| b.file == archive) {
            out.push(b);
        }
    }
    out.sort_by(|a, b| a.created_at.cmp(&b.created_at));
    Ok(out)
}

/// The newest verified backup of each (kind, target), ordered by kind and target.
pub fn newest_verified(all: &[Backup]) -> Vec<&Backup> {
    let mut newest: std::collections::BTreeMap<(&str, &str), &Backup> = Default::default();
    for b in all.iter().filter(|b| b.verified()) {
        newest.insert((b.kind.as_str(), b.target.as_str()), b);
    }
    newest.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(dir: &Path, file: &str, target: &str, at: &str, verification: &str) {
        std::fs::write(dir.join(file), b"x").unwrap();
        let m = serde_json::json!({
            "format": "berth-backup/1", "kind": "pg", "file": file, "bytes": 1,
            "sha256": "x", "created_at": at, "project": "shop", "target": target,
            "source": "service db", "verification": verification, "duration_ms": 1,
        });
        std::fs::write(dir.join(format!("{file}.json")), m.to_string()).unwrap();
    }

    #[test]
    fn newest_verified_per_target() {
        let d = tempfile::tempdir().unwrap();
        assert!(scan(&d.path().join("none")).unwrap().is_empty());
        put(
            d.path(),
            "a1.dump",
            "app",
            "2026-11-01T03:00:00.000Z",
            "read",
        );
        put(
            d.path(),
            "a2.dump",
            "app",
            "2026-11-02T03:00:00.000Z",
            "restore",
        );
        put(
            d.path(),
            "a3.dump",
            "app",
            "2026-11-03T03:00:00.000Z",
            "failed",
        );
        put(
            d.path(),
            "b1.dump",
            "other",
            "2026-11-01T03:00:00.000Z",
            "none",
        );
        // A manifest without its archive is not a backup.
        std::fs::write(d.path().join("gone.dump.json"), "{}").unwrap();
        let all = scan(d.path()).unwrap();
        assert_eq!(all.len(), 4);
        let newest = newest_verified(&all);
        assert_eq!(newest.len(), 1);
        assert_eq!(newest[0].file, "a2.dump");
    }
}
