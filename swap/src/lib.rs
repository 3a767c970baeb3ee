//! `berth-swap`: replace the containers of compose services with a new release, with
//! zero failed requests. New containers start beside the old ones from the compose file's
//! own definition, are probed directly, nginx is switched to them by rewriting an upstream
//! file and reloading gracefully, the old ones drain and stop, and `.env` records the
//! tag so that compose itself keeps the new release. See [`engine`].
//!
//! The engine is a library so that `berth-rollback` swaps back through the same path.

pub mod converge;
pub mod engine;
pub mod envfile;
pub mod journal;
pub mod maintenance;
pub mod nginx;
pub mod owner;
pub mod prepare;
pub mod swarm;

use std::cell::RefCell;
use std::time::Duration;

use anyhow::Result;
use berth_core::cli::{parse_duration, CommonArgs};
use berth_core::lock::{self, Lock};
use berth_core::stage::{self, Completed, Spec};
use berth_core::{ledger, msg, record, ExitCode, Failure};
use clap::{Parser, Subcommand};
use serde_json::Value;

pub use nginx::ProxyMode;

const EXAMPLES: &str = "\
Examples:
  # Swap web and worker (built from the same commit) to 3f9c2a1
  berth-swap --tag 3f9c2a1 web --worker worker worker

  # In a pipeline: a smoke test after the switch, and a rollback when it fails
  berth-swap --tag 3f9c2a1 web | berth-healthwait --url http://127.0.0.1/smoke --stage smoke \\
      | berth-rollback | berth-report

  # nginx on the host instead of in the compose project
  berth-swap --tag 3f9c2a1 --proxy host --upstream-file /etc/nginx/berth/upstream-web.conf web

  # Show the docker commands, change nothing
  berth-swap --tag 3f9c2a1 --dry-run web

  # After a crash (kill -9, power cut) mid-swap: back to one consistent release, no
  # request lost (the next swap or rollback also does this first)
  berth-swap --converge

  # Maintenance page on and off (503 with Retry-After; /healthz and /readyz still pass)
  berth-swap maintenance on --message 'Upgrading the database, back in 5 minutes'
  berth-swap maintenance off

Files: the upstream file (default <project>/nginx/berth/upstream-SERVICE.conf) is rewritten
to name the new containers; <project>/.env (or --env-file) gets TAG_VAR=TAG. Both are marked
`# berth: project=NAME`; a file another compose project owns is refused (exit 1).
<state>/swap/SERVICE.json is the journal of a swap in progress (a killed swap is converged
by the next swap or rollback, or by `berth-swap --converge`);
<state>/releases.jsonl gets the release as a provisional line (good once berth-report
records the whole deploy's success).

Exit status: 0 swapped; 1 preflight (docker unreachable, compose config invalid, nginx not
running); 2 image unavailable (nothing changed); 3 swap failed before traffic moved (the old
containers still serve, the new ones are removed); 4 failed after traffic moved (the new
release serves: the record says so, and berth-rollback in the pipe undoes it); 64 usage; 65 bad document on stdin;
75 another deploy holds the lock; a failure already in the document passes through.";

/// Swap compose services to a new image tag with zero downtime: start new containers
/// beside the old ones, probe each one directly, switch nginx to them (rewrite the
/// upstream file, nginx -t, graceful reload), drain and stop the old ones, and record the
/// tag in .env. Workers (--worker, or --proxy none) wait for Docker health instead and
/// take no traffic switch. The deploy document flows stdin to stdout.
#[derive(Debug, Parser)]
#[command(
    name = "berth-swap",
    version,
    after_long_help = EXAMPLES,
    after_help = "See --help for examples, files and exit codes.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The services to swap (all move together: every new container is ready before any
    /// traffic moves) [default: every service whose image uses the tag variable]
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,

    /// Only converge what a killed swap or rollback left (from its journal in
    /// <state>/swap/), with zero failed requests, then exit; every swap and rollback also
    /// does this first
    #[arg(long, conflicts_with = "services")]
    pub converge: bool,

    #[command(flatten)]
    pub swap: SwapArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Turn nginx's maintenance page on or off (503 with Retry-After; health paths pass)
    Maintenance(maintenance::Args),
    /// The deploy's first stage: docker answers, compose config valid with the tag, the
    /// services use it, the state dir is writable, an optional check (-- CMD) passes
    Preflight(prepare::PreflightArgs),
    /// Get every service's image at the tag (here, or pulled by tag); exit 2 when one
    /// cannot be had, before anything changes
    Pull(prepare::PullArgs),
}

/// How a swap runs; `berth-rollback` takes the same settings.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Swap")]
pub struct SwapArgs {
    /// Where nginx runs
    #[arg(long, value_enum, env = "BERTH_PROXY", default_value = "compose")]
    pub proxy: ProxyMode,

    /// The compose service running nginx (with --proxy compose)
    #[arg(
        long,
        env = "BERTH_PROXY_SERVICE",
        default_value = "proxy",
        value_name = "SERVICE"
    )]
    pub proxy_service: String,

    /// The upstream file nginx includes; `{service}` is replaced by the service's name
    /// [default: <project dir>/nginx/berth/upstream-{service}.conf]
    #[arg(long, env = "BERTH_UPSTREAM_FILE", value_name = "PATH")]
    pub upstream_file: Option<String>,

    /// A service that takes no traffic (a worker): started beside, waited healthy (Docker
    /// health), then the old ones stop with their grace period (repeatable)
    #[arg(long = "worker", value_name = "SERVICE")]
    pub workers: Vec<String>,

    /// The port the services listen on inside their containers
    #[arg(long, env = "BERTH_PORT", default_value_t = 8080)]
    pub port: u16,

    /// The path probed on each new container (GET http://ADDRESS:PORT/PATH, 2xx = ready)
    #[arg(
        long,
        env = "BERTH_READY_PATH",
        default_value = "/readyz",
        value_name = "PATH"
    )]
    pub ready_path: String,

    /// How long new containers get to become ready
    #[arg(long, env = "BERTH_SWAP_TIMEOUT", default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,

    /// Pause between probes of a new container
    #[arg(long, default_value = "100ms", value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Duration,

    /// How long the old containers keep running after the switch (in-flight requests finish)
    #[arg(long, env = "BERTH_DRAIN", default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub drain: Duration,

    /// Grace period before SIGKILL when stopping old containers
    /// [default: the service's stop_grace_period, else 10s]
    #[arg(long, env = "BERTH_STOP_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub stop_timeout: Option<Duration>,

    /// Idle keep-alive connections nginx keeps to the upstream (0: none)
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub keepalive: u32,

    /// The nginx binary (inside the proxy container, or on the host)
    #[arg(
        long,
        env = "BERTH_NGINX",
        default_value = "nginx",
        value_name = "PATH"
    )]
    pub nginx: String,

    /// Wait this long for another deploy's lock instead of exiting 75 at once
    #[arg(long, env = "BERTH_LOCK_WAIT", default_value = "0s", value_parser = parse_duration, value_name = "DURATION")]
    pub lock_wait: Duration,

    #[command(flatten)]
    pub pull: PullOpts,
}

/// How pulls by tag are bounded (`berth-swap`, `berth-swap pull`, `berth-rollback`).
#[derive(Debug, Clone, clap::Args)]
pub struct PullOpts {
    /// Bound on pulling one service's image from its registry; past it the pull is
    /// killed and the stage exits 2, nothing changed
    #[arg(long, env = "BERTH_PULL_TIMEOUT", default_value = "10m", value_parser = parse_duration, value_name = "DURATION")]
    pub pull_timeout: Duration,
}

impl SwapArgs {
    pub fn check(&self) -> Result<(), Failure> {
        if !self.ready_path.starts_with('/') {
            return Err(Failure::usage(format!(
                "--ready-path {:?}: must start with /",
                self.ready_path
            )));
        }
        if self.port == 0 {
            return Err(Failure::usage("--port 0: not a port"));
        }
        if self.timeout.is_zero() {
            return Err(Failure::usage("--timeout must be more than 0"));
        }
        Ok(())
    }
}

/// Check service names: known shape, no repeats.
pub fn check_services(services: &[String]) -> Result<(), Failure> {
    for (i, s) in services.iter().enumerate() {
        let ok = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !ok {
            return Err(Failure::usage(format!("SERVICE {s:?}: not a service name")));
        }
        if services[..i].contains(s) {
            return Err(Failure::usage(format!("SERVICE {s} named twice")));
        }
    }
    Ok(())
}

/// The binary's `main`: `berth-swap [OPTIONS] maintenance on|off` (options before the
/// word, which clap would read as services) goes to the maintenance command line.
pub fn main() -> std::process::ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if maintenance::wanted(&argv) {
        berth_core::cli::main::<maintenance::Reparse>("berth-swap", |r| maintenance::run(r.args))
    } else {
        berth_core::cli::main_from("berth-swap", prepare::hoist(argv), run)
    }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Some(Command::Maintenance(m)) => return maintenance::run(m),
        Some(Command::Preflight(a)) => return prepare::preflight(a),
        Some(Command::Pull(a)) => return prepare::pull(a),
        None => {}
    }
    if cli.common.check_args {
        return berth_core::cli::checked(|| {
            cli.swap.check()?;
            check_services(&cli.services)?;
            cli.common.check()?;
            Ok(())
        });
    }
    cli.swap.check()?;
    check_services(&cli.services)?;
    let input = stage::load(&cli.common)?;
    if cli.converge {
        return converge_stage(&cli.swap, input);
    }
    let spec = Spec {
        name: "swap",
        default_code: ExitCode::Swap,
        acts_on_failure: false,
    };
    let held: RefCell<Option<Lock>> = RefCell::new(None);
    let dry_run = input.ctx.dry_run;
    stage::run_then(
        spec,
        input,
        |ctx, doc, detail| {
            let tag = ctx.require_tag()?.to_string();
            if !ctx.dry_run {
                *held.borrow_mut() = Some(lock::acquire(
                    &ctx.state_dir,
                    "deploy",
                    cli.swap.lock_wait,
                    Some(&doc.deploy_id),
                )?);
            }
            let services = if cli.services.is_empty() {
                let cfg = ctx
                    .compose_at(&tag)
                    .config()
                    .map_err(|e| berth_core::fail!(Preflight, "{e:#}"))?;
                prepare::resolve_services(ctx, &[], &cfg)?
            } else {
                cli.services.clone()
            };
            let out = match engine::swap(ctx, &cli.swap, &services, &tag, &doc.deploy_id) {
                Ok(out) => out,
                Err(e) => {
                    if let Some(a) = e.downcast_ref::<engine::AfterSwitch>() {
                        if a.previous_tag.is_some() {
                            doc.previous_tag = a.previous_tag.clone();
                        }
                        record::put(detail, &record::Swap::switched_record(&a.serving));
                    }
                    return Err(e);
                }
            };
            record(doc, &out);
            detail.extend(out.detail);
            if out.dry_run {
                return Ok(Completed::Skipped("dry run: nothing changed".into()));
            }
            Ok(Completed::Ok)
        },
        |ctx, doc| {
            let ok = doc
                .stage("swap")
                .is_some_and(|s| s.status == berth_core::doc::Status::Ok);
            // Provisional: the release is good only when the whole deploy says so (the
            // report's final line, after the smoke test).
            if ok && !dry_run {
                if let Err(e) = ledger::append(&ctx.state_dir, &ledger::provisional(doc)) {
                    msg::warn(format!("could not record the release in the ledger: {e:#}"));
                }
            }
            if let Some(l) = held.borrow_mut().take() {
                l.release();
            }
        },
    )
}

/// `berth-swap --converge`: the stage `converge`, under the deploy lock; it acts after a
/// failure too (a converged state is always safer).
fn converge_stage(args: &SwapArgs, input: stage::Input) -> Result<ExitCode> {
    let spec = Spec {
        name: "converge",
        default_code: ExitCode::Swap,
        acts_on_failure: true,
    };
    let prior = ExitCode::from_code(input.doc.outcome()).unwrap_or(ExitCode::Success);
    stage::run(spec, input, |ctx, doc, detail| {
        if ctx.dry_run {
            return Ok(Completed::Skipped("dry run: nothing changed".into()));
        }
        let _lock = lock::acquire(
            &ctx.state_dir,
            "deploy",
            args.lock_wait,
            Some(&doc.deploy_id),
        )?;
        let done = converge::converge(ctx, args, ctx.tag.as_deref())?;
        msg::info(if done.is_empty() {
            "nothing to converge: no swap was interrupted".to_string()
        } else {
            format!("converged: {}", done.join(", "))
        });
        record::put(
            detail,
            &record::Converge {
                converged: done,
                ..Default::default()
            },
        );
        Ok(Completed::Done(prior))
    })
}

/// Put what a swap learned into the document: previous tag, images with their IDs.
pub fn record(doc: &mut berth_core::doc::Document, out: &engine::Outcome) {
    if out.previous_tag.is_some() {
        doc.previous_tag = out.previous_tag.clone();
    }
    for (svc, image, id) in &out.images {
        doc.set_service_image(svc, image);
        if let Some(s) = doc.services.iter_mut().find(|s| s.name == *svc) {
            if !id.is_empty() {
                s.extra.insert("image_id".into(), Value::String(id.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "berth-swap",
            "--tag",
            "v2",
            "--worker",
            "worker",
            "web",
            "worker",
        ])
        .unwrap();
        assert_eq!(c.services, ["web", "worker"]);
        assert_eq!(c.swap.workers, ["worker"]);
        let m = Cli::try_parse_from([
            "berth-swap",
            "maintenance",
            "on",
            "--message",
            "x",
            "-p",
            "shop",
        ])
        .unwrap();
        assert!(matches!(m.command, Some(Command::Maintenance(_))));
        // Options before the word: read as services first, then again as maintenance.
        let argv = [
            "berth-swap",
            "-p",
            "shop",
            "maintenance",
            "off",
            "--lock-wait",
            "5s",
        ];
        let os = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert!(maintenance::wanted(&os(&argv)));
        let m = maintenance::Reparse::try_parse_from(argv).unwrap().args;
        assert_eq!(m.state, maintenance::OnOff::Off);
        assert_eq!(m.common.project_name.as_deref(), Some("shop"));
        let with_message = [
            "berth-swap",
            "-p",
            "s",
            "maintenance",
            "on",
            "--message",
            "m",
        ];
        assert!(maintenance::wanted(&os(&with_message)));
        assert!(!maintenance::wanted(&os(&[
            "berth-swap",
            "maintenance",
            "on"
        ])));
        assert!(!maintenance::wanted(&os(&[
            "berth-swap",
            "--tag",
            "v",
            "web"
        ])));
        maintenance::Reparse::command().debug_assert();
        // Options before `preflight`/`pull` are moved after it.
        let h = prepare::hoist(os(&["berth-swap", "-p", "shop", "pull", "web"]));
        assert_eq!(h, os(&["berth-swap", "pull", "-p", "shop", "web"]));
        let same = os(&["berth-swap", "--tag", "v", "web"]);
        assert_eq!(prepare::hoist(same.clone()), same);
        // No services: every service whose image uses the tag variable (resolved later).
        let c = Cli::try_parse_from(["berth-swap", "--tag", "v2"]).unwrap();
        assert!(c.services.is_empty() && c.command.is_none());
        assert!(check_services(&["web".into(), "web".into()]).is_err());
    }
}
