//! The backup a migration stands on: the last successful `backup` record in the document,
//! and the command that restores it when the migration fails.
//!
//! The contract with `berth-backup` is its stage record, [`record::Backup`], read
//! leniently so a missing field degrades the message instead of failing the migration:
//! - `restore_command`: the command that restores it, used as written when present;
//! - `kind`: `pg` or `volume`; the last `pg` backup is preferred, else the last one;
//! - `file`: the archive (absolute, or a base name in `<state>/backups`);
//! - `service` (or `source: "service db"`): the compose service of the database, or
//!   `source: "postgres://user@host/db"` for a database reached by URL;
//! - `verification`: `none` or `failed` means the backup was not verified: refused.

use std::path::{Path, PathBuf};

use berth_core::cli::Context;
use berth_core::doc::{Document, Status};
use berth_core::process::quote;
use berth_core::record;

/// The stage name berth-backup records.
pub const STAGE: &str = "backup";

/// What a backup record says about how to restore it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupRef {
    /// The archive, as precise as the record allows.
    pub file: Option<String>,
    /// Where it restores to.
    pub target: RestoreTarget,
    /// `detail.verification` as recorded.
    pub verification: Option<String>,
    /// `detail.restore_command` as berth-backup wrote it.
    pub recorded_command: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RestoreTarget {
    Service(String),
    Url(String),
    Unknown,
}

/// Why there is no backup to migrate on.
#[derive(Debug, Clone, PartialEq)]
pub enum Missing {
    /// No successful `backup` record at all.
    None,
    /// There is one, but it says it was not verified.
    Unverified(String),
}

impl Missing {
    pub fn message(&self) -> String {
        match self {
            Missing::None => "no verified backup in the document; run berth-backup first \
                              (berth-backup pg --service db | berth-migrate ...) or pass \
                              --no-backup-required"
                .to_string(),
            Missing::Unverified(v) => format!(
                "the backup in the document is not verified (verification: {v}); take one \
                 with berth-backup --verify read (or restore), or pass --no-backup-required"
            ),
        }
    }
}

/// The last successful backup record of the document.
pub fn find(doc: &Document, ctx: &Context) -> Result<BackupRef, Missing> {
    let ok = || {
        doc.stages
            .iter()
            .rev()
            .filter(|s| s.stage == STAGE && s.status == Status::Ok)
    };
    // A record of the wrong shape reads as an empty one: placeholders, never a failure.
    let records = || ok().map(|s| record::read::<record::Backup>(&s.detail).unwrap_or_default());
    let rec = records()
        .find(|b| b.kind.as_deref() == Some("pg"))
        .or_else(|| records().next())
        .ok_or(Missing::None)?;
    let b = from_record(rec, &ctx.state_dir);
    if let Some(v) = &b.verification {
        if v == "none" || v == "failed" {
            return Err(Missing::Unverified(v.clone()));
        }
    }
    Ok(b)
}

fn from_record(d: record::Backup, state_dir: &Path) -> BackupRef {
    let file = d.file.map(|f| {
        let p = PathBuf::from(&f);
        if p.is_absolute() {
            return f;
        }
        let guess = state_dir.join("backups").join(&p);
        if guess.exists() {
            guess.to_string_lossy().to_string()
        } else {
            f
        }
    });
    let target = match (d.service, d.source) {
        (Some(svc), _) => RestoreTarget::Service(svc),
        (None, Some(src)) => match src.strip_prefix("service ") {
            Some(svc) => RestoreTarget::Service(svc.trim().to_string()),
            None if src.starts_with("postgres://") || src.starts_with("postgresql://") => {
                RestoreTarget::Url(src)
            }
            None => RestoreTarget::Unknown,
        },
        (None, None) => RestoreTarget::Unknown,
    };
    BackupRef {
        file,
        target,
        verification: d.verification,
        recorded_command: d.restore_command.filter(|c| !c.trim().is_empty()),
    }
}

impl BackupRef {
    /// The exact command that restores this backup into this project. Placeholders in
    /// capitals where the record lacks a part.
    pub fn restore_command(&self, ctx: &Context) -> String {
        if let Some(c) = &self.recorded_command {
            return c.clone();
        }
        let mut words: Vec<String> = vec!["berth-backup".into(), "restore".into()];
        words.push(match &self.file {
            Some(f) => quote(f),
            None => "FILE".into(),
        });
        match &self.target {
            RestoreTarget::Service(s) => words.extend(["--service".into(), quote(s)]),
            RestoreTarget::Url(u) => words.extend(["--url".into(), quote(u)]),
            RestoreTarget::Unknown => words.extend(["--service".into(), "DB_SERVICE".into()]),
        }
        words.push("--yes".into());
        words.extend(ctx.project_args().iter().map(|w| quote(w)));
        words.join(" ")
    }

    /// What the migrate record says about this backup.
    pub fn to_record(&self) -> record::MigrateBackup {
        let target = match &self.target {
            RestoreTarget::Service(s) => Some(serde_json::json!({"service": s})),
            RestoreTarget::Url(u) => Some(serde_json::json!({"url": u})),
            RestoreTarget::Unknown => None,
        };
        record::MigrateBackup {
            file: self.file.clone(),
            target,
            verification: self.verification.clone(),
            extra: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::doc::StageRecord;
    use serde_json::{json, Map, Value};

    fn ctx(state: &Path) -> Context {
        Context {
            project_dir: PathBuf::from("/srv/shop"),
            files: vec![],
            env_file: None,
            project: "shop".into(),
            state_dir: state.to_path_buf(),
            tag: Some("v2".into()),
            tag_var: "BERTH_TAG".into(),
            dry_run: false,
            engine: Default::default(),
        }
    }

    fn with_backup(status: Status, detail: Value) -> Document {
        let mut d = Document::new("shop", Some("v2"));
        d.stages.push(StageRecord {
            stage: "backup".into(),
            status,
            started_at: berth_core::time::now_rfc3339(),
            duration_ms: 1,
            exit_code: if status == Status::Failed { 5 } else { 0 },
            detail: detail.as_object().cloned().unwrap_or_default(),
            error: None,
            extra: Map::new(),
        });
        d
    }

    #[test]
    fn no_or_skipped_or_unverified_backup_is_missing() {
        let c = ctx(Path::new("/nonexistent"));
        let d = Document::new("shop", Some("v2"));
        assert_eq!(find(&d, &c), Err(Missing::None));
        let d = with_backup(Status::Skipped, json!({"file": "/b/x.dump"}));
        assert_eq!(find(&d, &c), Err(Missing::None));
        let d = with_backup(
            Status::Ok,
            json!({"file": "/b/x.dump", "verification": "none"}),
        );
        assert_eq!(find(&d, &c), Err(Missing::Unverified("none".into())));
        assert!(Missing::None.message().contains("--no-backup-required"));
    }

    #[test]
    fn restore_command_from_a_full_record() {
        let c = ctx(Path::new("/nonexistent"));
        let d = with_backup(
            Status::Ok,
            json!({"file": "/srv/b/shop-demo-20261122T031500Z-v2.dump", "service": "db",
                   "verification": "read", "bytes": 10}),
        );
        let b = find(&d, &c).unwrap();
        assert_eq!(
            b.restore_command(&c),
            "berth-backup restore /srv/b/shop-demo-20261122T031500Z-v2.dump --service db --yes \
             --project-dir /srv/shop -p shop"
        );
    }

    #[test]
    fn lenient_with_missing_or_other_keys() {
        let state = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(state.path().join("backups")).unwrap();
        std::fs::write(state.path().join("backups/x.dump"), "").unwrap();
        let c = ctx(state.path());
        // A base name found in <state>/backups, the service from `source`.
        let b = find(
            &with_backup(
                Status::Ok,
                json!({"file": "x.dump", "source": "service pg"}),
            ),
            &c,
        )
        .unwrap();
        assert_eq!(
            b.file.as_deref(),
            Some(state.path().join("backups/x.dump").to_str().unwrap())
        );
        assert_eq!(b.target, RestoreTarget::Service("pg".into()));
        // A URL source; no file at all: placeholders, never a panic.
        let b = find(
            &with_backup(Status::Ok, json!({"source": "postgres://u@h:5432/d"})),
            &c,
        )
        .unwrap();
        let cmd = b.restore_command(&c);
        assert!(
            cmd.starts_with("berth-backup restore FILE --url postgres://u@h:5432/d --yes"),
            "{cmd}"
        );
        let b = find(&with_backup(Status::Ok, json!({})), &c).unwrap();
        assert!(b.restore_command(&c).contains("--service DB_SERVICE"));
        // berth-backup's own command wins over one built here.
        let b = find(
            &with_backup(
                Status::Ok,
                json!({"file": "/a.dump", "restore_command": "berth-backup restore /a.dump --database demo"}),
            ),
            &c,
        )
        .unwrap();
        assert_eq!(
            b.restore_command(&c),
            "berth-backup restore /a.dump --database demo"
        );
        // A pg backup is preferred to a later volume backup.
        let mut d = with_backup(Status::Ok, json!({"file": "/pg.dump", "kind": "pg"}));
        d.stages.push(d.stages[0].clone());
        d.stages[1].detail = json!({"file": "/v.tar.gz", "kind": "volume"})
            .as_object()
            .cloned()
            .unwrap();
        assert_eq!(find(&d, &c).unwrap().file.as_deref(), Some("/pg.dump"));
        // The last successful record wins.
        let mut d = with_backup(Status::Ok, json!({"file": "/a.dump", "service": "db"}));
        d.stages.push(d.stages[0].clone());
        d.stages[1].detail.insert("file".into(), json!("/b.dump"));
        assert_eq!(find(&d, &c).unwrap().file.as_deref(), Some("/b.dump"));
    }
}
