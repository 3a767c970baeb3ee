//! `berth-migrate`: run a migration once, in a one-off container from the **new** image
//! with the service's compose definition, before any traffic moves (Heroku's release
//! phase, Fly's `release_command`). The container is owned: a timeout, Ctrl-C or SIGTERM
//! removes it. Its output streams to `<state>/logs/migrate-<deploy id>.log`; a failure
//! puts the last 50 lines into the document and on stderr and exits 6, the old version
//! still serving. Afterwards the running (old) version's readiness is probed once more
//! and recorded: the deploy rolls forward either way.

pub mod backup;
pub mod oneoff;
pub mod swarm;

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use berth_core::cli::{parse_duration, CommonArgs, Context};
use berth_core::compose::{self, Compose};
use berth_core::doc::Document;
use berth_core::docker::Container;
use berth_core::health::{self, HttpCheck, Target};
use berth_core::lock;
use berth_core::stage::{self, Completed, Spec};
use berth_core::swarm::Engine;
use berth_core::time::millis;
use berth_core::{docker, fail, msg, record, ExitCode, Failure};
use clap::Parser;
use serde_json::{Map, Value};

use crate::backup::BackupRef;
use crate::oneoff::{Ended, OneOff};

/// The stage's name in the deploy document.
pub const STAGE: &str = "migrate";
/// Lines of the log that go into the document and on stderr when the migration fails.
pub const TAIL_LINES: usize = 50;

const EXAMPLES: &str = "\
Examples:
  # In the pipeline, after a verified backup, before the swap
  berth-backup pg --service db --tag 3f9c2a1 \\
    | berth-migrate web -- alembic upgrade head \\
    | berth-swap web | berth-report

  # Alone, without a backup record (you took one another way)
  berth-migrate --tag 3f9c2a1 --no-backup-required web -- ./manage.py migrate --noinput

  # See what would run
  berth-migrate --tag 3f9c2a1 --no-backup-required --dry-run web -- migrate

Exit status: 0 migrated; 6 the migration failed, timed out or was interrupted (the
container is removed; the old version still serves), or no verified backup is recorded
in the document and --no-backup-required is not given; 1 docker unreachable or the
compose file invalid (on Swarm also: not a manager, no such service in the stack, no
attachable network); 2 (Swarm) the new image cannot be pulled from its registry; 75
another deploy holds the lock; 64 usage error (on Swarm also: the service uses Swarm
secrets); 65 bad document on stdin; a failure already in the document passes through
with its code.

On Swarm (--engine swarm, on a manager, -p STACK): the new image is pulled and pinned by
digest, and runs in `docker run --rm` on the manager with the environment, entrypoint and
first attachable overlay network of the running service STACK_SERVICE.";

/// Run CMD once in a one-off container of SERVICE from the image of the new tag (its
/// compose definition: environment, networks, volumes), before any traffic moves. Output
/// goes to <state dir>/logs/migrate-<deploy id>.log; on failure its last lines go into
/// the document and on stderr. The deploy document passes from stdin to stdout.
#[derive(Debug, Parser)]
#[command(name = "berth-migrate", version, after_long_help = EXAMPLES, after_help = "See --help for examples and exit codes.")]
pub struct Cli {
    /// The compose service whose definition (and new image) runs the migration
    #[arg(value_name = "SERVICE")]
    pub service: String,

    /// The migration command and its arguments, e.g. -- alembic upgrade head
    #[arg(last = true, value_name = "CMD", required = true)]
    pub command: Vec<OsString>,

    /// Stop and remove the migration container after this long
    #[arg(long, value_name = "DURATION", default_value = "5m", env = "BERTH_MIGRATE_TIMEOUT", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Migrate even when the document records no verified backup
    #[arg(long, env = "BERTH_NO_BACKUP_REQUIRED")]
    pub no_backup_required: bool,

    /// Readiness path of the running version, probed again after migrating
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/readyz",
        env = "BERTH_READY_PATH",
        help_heading = "Old version's readiness"
    )]
    pub ready_path: String,

    /// The port the service listens on inside its containers
    #[arg(
        long,
        value_name = "PORT",
        default_value = "8080",
        env = "BERTH_APP_PORT",
        help_heading = "Old version's readiness"
    )]
    pub port: u16,

    /// How long the running version gets to answer ready after migrating
    #[arg(long, value_name = "DURATION", default_value = "5s", env = "BERTH_READY_TIMEOUT", value_parser = parse_duration, help_heading = "Old version's readiness")]
    pub ready_timeout: Duration,

    /// Wait this long for another deploy's lock (default: fail at once with 75)
    #[arg(long, value_name = "DURATION", default_value = "0s", env = "BERTH_LOCK_WAIT", value_parser = parse_duration)]
    pub lock_wait: Duration,

    #[command(flatten)]
    pub common: CommonArgs,
}

impl Cli {
    fn check(&self) -> Result<(), Failure> {
        let s = &self.service;
        if s.is_empty()
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(Failure::usage(format!(
                "SERVICE {s:?}: not a compose service name (letters, digits, '-', '_', '.')"
            )));
        }
        if self.command.first().is_none_or(|c| c.is_empty()) {
            return Err(Failure::usage(
                "no migration command: give it after --, e.g. berth-migrate web -- alembic upgrade head",
            ));
        }
        if !self.ready_path.starts_with('/') {
            return Err(Failure::usage(format!(
                "--ready-path {:?}: must start with '/'",
                self.ready_path
            )));
        }
        if self.port == 0 {
            return Err(Failure::usage("--port 0: not a port"));
        }
        if self.timeout.is_zero() {
            return Err(Failure::usage("--timeout 0: give the migration some time"));
        }
        Ok(())
    }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    if cli.common.check_args {
        return berth_core::cli::checked(|| {
            cli.check()?;
            cli.common.check()?;
            Ok(())
        });
    }
    cli.check()?;
    let input = stage::load(&cli.common)?;
    let spec = Spec::new(STAGE, ExitCode::Migration).locked(lock::DEPLOY, cli.lock_wait);
    if !input.doc.has_failed() {
        input.ctx.require_tag()?;
    }
    stage::run(spec, input, |ctx, doc, detail| {
        migrate(&cli, ctx, doc, detail)
    })
}

/// The stage's body, under the deploy lock (see [`run`]).
fn migrate(
    cli: &Cli,
    ctx: &Context,
    doc: &mut Document,
    detail: &mut Map<String, Value>,
) -> Result<Completed> {
    let tag = ctx.require_tag()?.to_string();
    let compose = ctx.compose_at(&tag);
    let mut job = OneOff::new(
        compose.clone(),
        &cli.service,
        &cli.command,
        &doc.deploy_id,
        &ctx.state_dir,
    );
    record::put(
        detail,
        &record::Migrate {
            service: Some(cli.service.clone()),
            tag: Some(tag.clone()),
            command: job.command_display(),
            container: Some(job.name.clone()),
            log: Some(job.log.to_string_lossy().to_string()),
            timeout_ms: Some(millis(cli.timeout)),
            backup_required: Some(!cli.no_backup_required),
            ..Default::default()
        },
    );
    let backup = required_backup(cli, ctx, doc, detail)?;
    let on_swarm = cli.common.engine == Engine::Swarm;
    if ctx.dry_run && !on_swarm {
        return dry_run(cli, &job, detail);
    }
    let image = new_image(cli, ctx, &compose, &mut job)?;
    if ctx.dry_run {
        return dry_run(cli, &job, detail);
    }
    record::update(detail, |m: &mut record::Migrate| {
        m.image = Some(image.clone())
    });

    let stop = Arc::new(AtomicUsize::new(0));
    catch_signals(&stop)?;

    oneoff::remove_leftovers(&job)?;
    msg::info(format!(
        "migrating with {image}: {} (output: {})",
        job.command_display().join(" "),
        job.log.display()
    ));
    let out = oneoff::run(&job, cli.timeout, &stop)?;
    let failure = record_run(cli, &job, &out, detail);
    // The old version is probed again, unless a person asked us to stop.
    if on_swarm {
        msg::info("the running version's readiness is not probed again on Swarm (not built yet)");
        record::update(detail, |m: &mut record::Migrate| {
            m.old_version_ready = Some(None)
        });
    } else if !matches!(out.ended, Ended::Interrupted(_)) {
        probe_old(cli, &compose, detail);
    }
    let Some(failure) = failure else {
        msg::info(format!("migrated in {:.1}s", out.elapsed.as_secs_f64()));
        return Ok(Completed::Ok);
    };
    explain_failure(ctx, &job, &out, backup.as_ref(), detail);
    Err(fail!(Migration, "{failure} (log: {})", job.log.display()))
}

/// The image that runs the migration: the service's at the new tag; on Swarm, pulled
/// by the manager and pinned by digest, the one-off then a `docker run` beside the stack.
fn new_image(cli: &Cli, ctx: &Context, compose: &Compose, job: &mut OneOff) -> Result<String> {
    docker::ensure_reachable()?;
    let config = compose.config().map_err(|e| fail!(Preflight, "{e:#}"))?;
    let image =
        compose::service_image_in(&config, &cli.service).map_err(|e| fail!(Preflight, "{e:#}"))?;
    if cli.common.engine != Engine::Swarm {
        return Ok(image);
    }
    let run = swarm::prepare(ctx, &cli.service, &image, cli.timeout)?;
    let pinned = run.image.clone();
    job.swarm = Some(run);
    Ok(pinned)
}

/// The verified backup the document records (into the detail either way); without one,
/// refuse unless --no-backup-required, or the whole pipeline is a dry run.
fn required_backup(
    cli: &Cli,
    ctx: &Context,
    doc: &Document,
    detail: &mut Map<String, Value>,
) -> Result<Option<BackupRef>> {
    let backup = backup::find(doc, ctx);
    record::update(detail, |m: &mut record::Migrate| {
        m.backup = Some(backup.as_ref().ok().map(BackupRef::to_record))
    });
    // A dry run of the whole pipeline skips the backup too: the backup it stands for
    // would run first, so that is not a reason to refuse.
    let dry_backup = ctx.dry_run
        && doc
            .stages
            .iter()
            .any(|s| s.stage.starts_with("backup") && s.status == berth_core::doc::Status::Skipped);
    match backup {
        Ok(b) => Ok(Some(b)),
        Err(_) if dry_backup => {
            msg::info(
                "dry run: the backup stage was a dry run too; a real run needs its verified backup",
            );
            Ok(None)
        }
        Err(missing) if !cli.no_backup_required => Err(fail!(
            Migration,
            "refusing to migrate: {}",
            missing.message()
        )),
        Err(_) => Ok(None),
    }
}

/// How the run ended, into the detail; the failure's line, if it failed.
fn record_run(
    cli: &Cli,
    job: &OneOff,
    out: &oneoff::Run,
    detail: &mut Map<String, Value>,
) -> Option<String> {
    record::update(detail, |m: &mut record::Migrate| {
        m.migration_ms = Some(millis(out.elapsed));
        m.containers_left = Some(out.left);
    });
    let (ended, exit_status) = match &out.ended {
        Ended::Exited(c) => ("exited", Some(*c)),
        Ended::Killed(_) => ("killed", None),
        Ended::TimedOut => ("timed_out", None),
        Ended::Interrupted(_) => ("interrupted", None),
    };
    record::update(detail, |m: &mut record::Migrate| {
        m.ended = Some(ended.to_string());
        m.exit_status = Some(exit_status);
    });
    if out.left > 0 {
        msg::error(format!(
            "{} migration container(s) still present after removal; remove them: docker rm -f {}",
            out.left, job.name
        ));
    }
    match &out.ended {
        Ended::Exited(0) => None,
        Ended::Exited(c) => Some(format!("the migration exited with {c}")),
        Ended::Killed(s) => Some(format!("the docker client was killed by signal {s}")),
        Ended::TimedOut => Some(format!(
            "the migration did not finish within {}; its container {} was removed",
            berth_core::human::limit(cli.timeout),
            job.name
        )),
        Ended::Interrupted(s) => Some(format!(
            "interrupted by {s}; the migration container {} was removed",
            job.name
        )),
    }
}

/// A failed migration: the log's last lines (document and stderr), and how to restore
/// the backup taken before it.
fn explain_failure(
    ctx: &Context,
    job: &OneOff,
    out: &oneoff::Run,
    backup: Option<&BackupRef>,
    detail: &mut Map<String, Value>,
) {
    let tail = oneoff::tail(&job.log, out.log_start, TAIL_LINES);
    record::update(detail, |m: &mut record::Migrate| {
        m.log_tail = Some(tail.join("\n"))
    });
    if tail.is_empty() {
        msg::info(format!(
            "the migration wrote nothing ({})",
            job.log.display()
        ));
    } else {
        msg::info(format!(
            "last {} line(s) of {}:",
            tail.len(),
            job.log.display()
        ));
        for l in &tail {
            msg::info(format!("| {l}"));
        }
    }
    msg::info("the old version still serves: nothing else was touched");
    if let Some(b) = backup {
        let cmd = b.restore_command(ctx);
        msg::info(format!(
            "if the migration left the database half-changed, restore the backup taken before it:\n    {cmd}"
        ));
        record::update(detail, |m: &mut record::Migrate| {
            m.restore_command = Some(cmd)
        });
    }
}

/// SIGINT/SIGTERM set `stop` (the migration container is then removed); a second one
/// exits at once.
fn catch_signals(stop: &Arc<AtomicUsize>) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let again = Arc::new(AtomicBool::new(false));
    berth_core::process::handle_signals_in_caller();
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(
            sig,
            ExitCode::Migration.code(),
            again.clone(),
        )
        .context("installing signal handlers")?;
        signal_hook::flag::register(sig, again.clone()).context("installing signal handlers")?;
        signal_hook::flag::register_usize(sig, stop.clone(), sig as usize)
            .context("installing signal handlers")?;
    }
    Ok(())
}

fn dry_run(cli: &Cli, job: &OneOff, detail: &mut Map<String, Value>) -> Result<Completed> {
    let run = job.run_cmd().display();
    let rm = job.remove_cmd().display();
    msg::info(format!("would run: {run}"));
    msg::info(format!("would write its output to {}", job.log.display()));
    msg::info(format!(
        "would remove its container on timeout ({}), SIGINT or SIGTERM: {rm}",
        berth_core::human::limit(cli.timeout)
    ));
    if job.swarm.is_none() {
        msg::info(format!(
            "would then probe each running {} container at http://<its IP>:{}{}",
            cli.service, cli.port, cli.ready_path
        ));
    }
    record::update(detail, |m: &mut record::Migrate| {
        m.dry_run = true;
        m.would_run = vec![run.to_string()];
    });
    Ok(Completed::Skipped("dry run: nothing was run".into()))
}

/// Probe the running containers of the service (the old version) at their own IPs, for a
/// few seconds, and record whether they still answer ready with the new schema.
fn probe_old(cli: &Cli, compose: &Compose, detail: &mut Map<String, Value>) {
    let containers = match compose.containers(&cli.service) {
        Ok(cs) => cs,
        Err(e) => {
            msg::warn(format!(
                "could not list the running {} containers: {e:#}",
                cli.service
            ));
            record::update(detail, |m: &mut record::Migrate| {
                m.old_version_ready = Some(None)
            });
            return;
        }
    };
    let running: Vec<_> = containers.into_iter().filter(|c| c.state.running).collect();
    if running.is_empty() {
        msg::info(format!(
            "no running {} container to probe (first deploy?)",
            cli.service
        ));
        record::update(detail, |m: &mut record::Migrate| {
            m.old_version_ready = Some(None);
            m.old_version = Some(vec![]);
        });
        return;
    }
    let rows = probe_rows(cli, &running);
    let ready = rows.iter().all(|r| r.ready);
    record::update(detail, |m: &mut record::Migrate| {
        m.old_version_ready = Some(Some(ready));
        m.old_version = Some(rows.clone());
    });
    if ready {
        msg::info(format!(
            "the running version still answers ready on {} ({} container(s))",
            cli.ready_path,
            rows.len()
        ));
    } else {
        let why: Vec<String> = rows
            .iter()
            .filter(|r| !r.ready)
            .map(|r| {
                format!(
                    "{}: {}",
                    r.container,
                    r.last_error.as_deref().unwrap_or("not ready")
                )
            })
            .collect();
        msg::info(format!(
            "WARNING: the running {} version is NOT ready with the new schema ({}); it may fail \
             requests until the new version takes over. The deploy rolls forward: the new \
             version is the fix.",
            cli.service,
            why.join("; ")
        ));
    }
}

/// One row per running container: its readiness at its own address.
fn probe_rows(cli: &Cli, running: &[Container]) -> Vec<record::OldContainer> {
    let mut targets = Vec::new();
    let mut rows = Vec::new();
    for c in running {
        let ip = c
            .networks
            .iter()
            .map(|(_, ip)| ip.as_str())
            .find(|ip| !ip.is_empty());
        let Some(ip) = ip else {
            rows.push(record::OldContainer {
                container: c.name.clone(),
                image: c.image.clone(),
                url: None,
                ready: false,
                last_error: Some("no IP address".into()),
                extra: Map::new(),
            });
            continue;
        };
        let url = format!("http://{ip}:{}{}", cli.port, cli.ready_path);
        targets.push((
            c,
            Target::HttpOn {
                container: c.id.clone(),
                check: HttpCheck::new(&url),
            },
        ));
    }
    let opts = health::Options {
        timeout: cli.ready_timeout,
        interval: Duration::from_millis(250),
        attempt_timeout: Duration::from_secs(2),
        successes: 1,
    };
    let only: Vec<Target> = targets.iter().map(|(_, t)| t.clone()).collect();
    let report = health::wait(&only, &opts, &|_| {});
    for ((c, _), r) in targets.iter().zip(&report.targets) {
        rows.push(record::OldContainer {
            container: c.name.clone(),
            image: c.image.clone(),
            url: Some(r.target.clone()),
            ready: r.ready,
            last_error: if r.ready { None } else { r.last_error.clone() },
            extra: Map::new(),
        });
    }
    rows
}
