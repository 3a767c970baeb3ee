//! `berth-backup drill`: the restore rehearsal that proves the backups can be restored.
//! The newest verified backup (or a given one) is restored into a scratch database, its
//! row counts are compared with the manifest, the scratch database is dropped, and the
//! result (pass or fail, when, which file, how big, how long) goes to the ledger, where
//! `berth-report status` shows the last drill. Exit 5 when it fails.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use berth_core::doc::{Document, StageRecord, Status};
use berth_core::{exit, ledger, msg, record, time, ExitCode, Failure};
use clap::Args;
use serde_json::Map;

use crate::store::{self, Kind, Manifest, Target};
use crate::verify::run as run_verify;
use crate::{say, set_quiet, CheckLevel, Helper, Monitor, Server, Storage, VerifyCmd};
use berth_core::cli::CommonArgs;

/// The name of a drill's stage in its ledger record.
pub const STAGE: &str = ledger::DRILL_STAGE;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  berth-backup drill --service db                 # the newest verified backup of db's database
  berth-backup drill --service db --ping https://hc-ping.com/UUID   # weekly, from cron
  berth-backup drill FILE --url postgres://app@10.0.0.5/shop --password-file /etc/berth/pgpass

The live database is never touched: the restore goes into a scratch database that is
dropped afterwards.")]
pub struct DrillCmd {
    /// The backup to drill [default: the newest verified backup of the server's database]
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,

    #[command(flatten)]
    pub server: Server,

    #[command(flatten)]
    pub identity: crate::crypt::Identity,

    #[command(flatten)]
    pub monitor: Monitor,

    #[command(flatten)]
    pub storage: Storage,

    #[command(flatten)]
    pub common: CommonArgs,
}

pub fn run(c: DrillCmd) -> Result<ExitCode> {
    set_quiet(&c.storage);
    if !c.server.given() {
        return Err(
            Failure::usage("drill needs a server to restore into: --service or --url").into(),
        );
    }
    let ctx = c.common.resolve()?;
    let dir = c.storage.dir(&ctx);
    let file = match &c.file {
        Some(f) => f.clone(),
        None => {
            let (_, db) = c.server.connect(&ctx, c.common.engine)?;
            newest_verified(&dir, &ctx.project, &db)?
        }
    };
    say(format!(
        "drill: restoring {} into a scratch database",
        file.display()
    ));
    let manifest = Manifest::read_for(&file).ok().flatten();
    let clock = Instant::now();
    let started_at = time::now_rfc3339();
    let res = run_verify(VerifyCmd {
        file: Some(file.clone()),
        remote: None,
        read_data_subset: String::new(),
        restic: crate::offsite::Restic {
            restic_password_file: None,
        },
        level: CheckLevel::Restore,
        identity: c.identity.clone(),
        server: c.server.clone(),
        helper: Helper {
            image: String::new(),
        },
        storage: c.storage.clone(),
        common: c.common.clone(),
    });
    let detail = record::to_detail(&record::Drill {
        file: file.display().to_string(),
        bytes: manifest.as_ref().map(|m| m.bytes),
        backup_created_at: manifest.as_ref().map(|m| m.created_at.clone()),
        target: manifest.as_ref().map(|m| m.target.clone()),
        ..Default::default()
    });
    let (status, code, error) = match &res {
        Ok(_) => (Status::Ok, ExitCode::Success, None),
        Err(e) => (
            Status::Failed,
            exit::code_of(e, ExitCode::Backup),
            Some(exit::one_line(e)),
        ),
    };
    let mut doc = Document::new(&ctx.project, None);
    doc.deploy_id = format!("drill-{}", doc.deploy_id);
    doc.stages.push(StageRecord {
        stage: STAGE.into(),
        status,
        started_at,
        duration_ms: time::millis(clock.elapsed()),
        exit_code: code.code(),
        detail,
        error,
        extra: Map::new(),
    });
    if !ctx.dry_run {
        if let Err(e) = ledger::append(&ctx.state_dir, &doc) {
            msg::warn(format!("could not record the drill in the ledger: {e:#}"));
        }
    }
    if res.is_ok() {
        say("drill passed: the backup restores and its row counts match the manifest");
    }
    res
}

/// The newest verified pg backup of `db` in `dir`.
fn newest_verified(dir: &std::path::Path, project: &str, db: &str) -> Result<PathBuf> {
    let target = Target {
        kind: Kind::Pg,
        project: project.to_string(),
        name: db.to_string(),
    };
    let scan = store::scan(dir)?;
    scan.of(&target)
        .into_iter()
        .rev()
        .find(|e| e.manifest.verification.verified())
        .map(|e| e.path.clone())
        .ok_or_else(|| {
            berth_core::fail!(
                Backup,
                "no verified backup of database {db} in {}: nothing to drill",
                dir.display()
            )
        })
}
