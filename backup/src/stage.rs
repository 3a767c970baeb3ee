//! `berth-backup pg` and `berth-backup volume`: the pipeline stage `backup`. The
//! document in, one backup taken under its target's lock, the rotation and the off-site
//! copy after it, the stage's record (its `detail`) out.

use anyhow::Result;
use berth_core::cli::{CommonArgs, Context};
use berth_core::process::quote;
use berth_core::stage::{self, Completed, Spec};
use berth_core::swarm::Engine;
use berth_core::{lock, msg, record, time, ExitCode};
use serde_json::{Map, Value};

use crate::job::{backup_pg, backup_volume, lock_target, Job};
use crate::prune::{pinned, rotate_target};
use crate::rotate::{Decision, Policy};
use crate::store::{self, Entry, Kind, Target};
use crate::{offsite, pg, say, set_quiet, volume, BackupArgs, PgCmd, VolumeCmd};

const SPEC: Spec<'static> = Spec::new("backup", ExitCode::Backup);

/// A backup taken; its target's lock still held (rotation runs under it).
struct Taken {
    job: Job,
    entry: Entry,
    _lock: lock::Lock,
}

/// What the stage's body has to hand: the shared flags and the deploy id, if piped.
struct Start<'a> {
    args: &'a BackupArgs,
    deploy_id: Option<String>,
}

impl Start<'_> {
    fn job(&self, ctx: &Context, target: Target) -> Job {
        let b = self.args;
        Job {
            dir: b.storage.dir(ctx),
            target,
            verify: b.verify,
            allow_shrink: b.allow_shrink,
            tag: ctx.tag.clone(),
            deploy_id: self.deploy_id.clone(),
            encrypt: b.encrypt.enabled().then(|| b.encrypt.clone()),
        }
    }

    /// Hold the job's target lock (catching signals from then on).
    fn lock(&self, ctx: &Context, job: &Job) -> Result<lock::Lock> {
        lock_target(
            ctx,
            &job.target,
            self.args.storage.lock_wait,
            self.deploy_id.as_deref(),
        )
    }
}

/// The stage around one backup: `take` returns None for a dry run; after it, the
/// rotation and the off-site copy.
fn run_stage(
    b: &BackupArgs,
    common: &CommonArgs,
    take: impl FnOnce(&Context, &Start, &mut Map<String, Value>) -> Result<Option<Taken>>,
) -> Result<ExitCode> {
    set_quiet(&b.storage);
    let input = stage::load(common)?;
    let start = Start {
        args: b,
        deploy_id: input.piped.then(|| input.doc.deploy_id.clone()),
    };
    stage::run(SPEC, input, |ctx, _doc, detail| {
        let Some(t) = take(ctx, &start, detail)? else {
            return Ok(Completed::Skipped("dry run".into()));
        };
        let policy = b.keep.policy();
        after_backup(ctx, &t.job, &policy, detail);
        copy_offsite(ctx, &b.offsite, &t.entry, &t.job, &policy, detail)?;
        Ok(Completed::Ok)
    })
}

pub fn run_pg(c: PgCmd) -> Result<ExitCode> {
    run_stage(&c.backup, &c.common, |ctx, start, detail| {
        let (conn, db) = c.server.connect(ctx, c.common.engine)?;
        let target = Target {
            kind: Kind::Pg,
            project: ctx.project.clone(),
            name: db.clone(),
        };
        let job = start.job(ctx, target);
        if ctx.dry_run {
            msg::info(format!(
                "would run: {} > {}",
                pg::dump_cmd(&conn, &db, "SNAPSHOT").display(),
                job.dir
                    .join(job.target.file_name(time::now(), job.tag.as_deref()))
                    .display()
            ));
            return Ok(None);
        }
        let _lock = start.lock(ctx, &job)?;
        let entry = backup_pg(&conn, &db, &job)?;
        let engine = match c.common.engine {
            Engine::Swarm => " --engine swarm",
            Engine::Compose => "",
        };
        let restore = format!(
            "berth-backup restore {}{}{}{engine}{} --database {}",
            quote(&entry.path.to_string_lossy()),
            c.server.flags(),
            project_flags(ctx),
            job.identity_flag(),
            quote(&db)
        );
        fill_detail(detail, &entry, restore);
        record::update(detail, |b: &mut record::Backup| {
            b.source = Some(entry.manifest.source.clone());
            b.service = c.server.service.clone();
        });
        Ok(Some(Taken { job, entry, _lock }))
    })
}

pub fn run_volume(c: VolumeCmd) -> Result<ExitCode> {
    run_stage(&c.backup, &c.common, |ctx, start, detail| {
        let real = volume::resolve(&ctx.compose(), &c.name)?;
        let target = Target {
            kind: Kind::Volume,
            project: ctx.project.clone(),
            name: c.name.clone(),
        };
        let job = start.job(ctx, target);
        let image = &c.helper.image;
        if ctx.dry_run {
            msg::info(format!(
                "would run: {}",
                volume::tar_cmd(&ctx.project, "NAME", image, &real).display()
            ));
            return Ok(None);
        }
        let _lock = start.lock(ctx, &job)?;
        let entry = backup_volume(ctx, &real, &c.stop, image, &job)?;
        let mut restore = format!(
            "berth-backup restore {} --helper-image {}",
            quote(&entry.path.to_string_lossy()),
            quote(image)
        );
        for s in &c.stop {
            restore.push_str(&format!(" --stop {}", quote(s)));
        }
        restore.push_str(&project_flags(ctx));
        restore.push_str(&job.identity_flag());
        fill_detail(detail, &entry, restore);
        record::update(detail, |b: &mut record::Backup| {
            b.volume = Some(real.clone())
        });
        Ok(Some(Taken { job, entry, _lock }))
    })
}

fn project_flags(ctx: &Context) -> String {
    ctx.project_args()
        .iter()
        .map(|w| format!(" {}", quote(w)))
        .collect()
}

fn after_backup(ctx: &Context, job: &Job, policy: &Policy, detail: &mut Map<String, Value>) {
    if policy.is_empty() {
        return;
    }
    if !job.verify.verified() {
        say("rotation skipped: it runs only after a verified backup");
        return;
    }
    match rotate_target(&job.dir, &ctx.state_dir, &job.target, policy, false) {
        Ok(done) => {
            for (d, p) in done.iter().filter(|d| !d.0.keep) {
                say(format!(
                    "rotation deleted {} ({})",
                    p.display(),
                    d.reasons.join("; ")
                ));
            }
            record::update(detail, |b: &mut record::Backup| {
                b.rotation = Some(rotation_detail(&done))
            });
        }
        Err(e) => msg::warn(format!("rotation failed: {e:#}")),
    }
}

/// Copy a verified backup off-site (see [`offsite`]); an unverified one stays local.
fn copy_offsite(
    ctx: &Context,
    off: &offsite::Offsite,
    entry: &Entry,
    job: &Job,
    policy: &Policy,
    detail: &mut Map<String, Value>,
) -> Result<()> {
    if off.copy_to.is_empty() {
        return Ok(());
    }
    if !job.verify.verified() {
        msg::warn("off-site copy skipped: only verified backups leave the machine (--verify read or restore)");
        return Ok(());
    }
    let pins = pinned(&ctx.state_dir).unwrap_or_default();
    off.copy(entry, &job.target, policy, &pins, detail)
}

// The stage's `detail`: what the backup stage records in the deploy document.

fn fill_detail(detail: &mut Map<String, Value>, e: &Entry, restore_command: String) {
    let m = &e.manifest;
    record::put(
        detail,
        &record::Backup {
            kind: Some(m.kind.as_str().to_string()),
            target: Some(m.target.clone()),
            file: Some(e.path.display().to_string()),
            manifest: Some(store::manifest_path(&e.path).display().to_string()),
            bytes: Some(m.bytes),
            sha256: Some(m.sha256.clone()),
            verification: Some(m.verification.as_str().to_string()),
            duration_ms: Some(m.duration_ms),
            server_version: m.server_version.clone(),
            tables: m.tables,
            restore_command: Some(restore_command),
            ..Default::default()
        },
    );
}

fn rotation_detail(done: &[(Decision, std::path::PathBuf)]) -> record::Rotation {
    record::Rotation {
        kept: done.iter().filter(|d| d.0.keep).count(),
        deleted: done
            .iter()
            .filter(|d| !d.0.keep)
            .map(|d| d.0.name.clone())
            .collect(),
        extra: Map::new(),
    }
}
