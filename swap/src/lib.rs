//! `berth-swap`: replace the containers of compose services with a new release, with
//! zero failed requests. New containers start beside the old ones from the compose file's
//! own definition, are probed directly, nginx is switched to them by rewriting an upstream
//! file and reloading gracefully, the old ones drain and stop, and `.env` records the
//! tag so that compose itself keeps the new release. See [`engine`].
//!
//! The engine is a library so that `berth-rollback` swaps back through the same path.
//! This file is the command line on top: it parses argv once (the subcommands share the
//! global options, which may stand before or after the word) and hands the engine its
//! own [`engine::Options`]; nothing below imports it.

pub mod converge;
pub mod dns;
pub mod engine;
pub mod envfile;
pub mod haproxy;
pub mod journal;
pub mod maintenance;
pub mod nginx;
pub mod owner;
pub mod prepare;
pub mod swarm;
pub mod upstream;

use std::time::Duration;

use anyhow::Result;
use berth_core::cli::{parse_duration, CommonArgs};
use berth_core::stage::{self, Completed, Ledger, Spec};
use berth_core::{msg, record, ExitCode, Failure};
use clap::{Parser, Subcommand};
use serde_json::Value;

pub use nginx::ProxyMode;
pub use prepare::check_services;

const EXAMPLES: &str = "\
Examples:
  # Swap web and worker (built from the same commit) to 3f9c2a1
  berth-swap --tag 3f9c2a1 web --worker worker worker

  # In a pipeline: a smoke test after the switch, and a rollback when it fails
  berth-swap --tag 3f9c2a1 web | berth-healthwait --url http://127.0.0.1/smoke --stage smoke \\
      | berth-rollback | berth-report

  # nginx (and certbot) on the host: it proxies to the project's nginx on a fixed loopback
  # port and is never touched; berth swaps behind it as usual (docs/proxies.md#host-nginx-certbot)
  berth-swap --tag 3f9c2a1 web

  # HAProxy instead of nginx: switched through its runtime API, never reloaded
  berth-swap --tag 3f9c2a1 --proxy haproxy web

  # nginx never reloaded: it resolves web-live per request; berth gives that alias only
  # to ready containers (client keep-alive can stay on; examples/nginx-dns)
  berth-swap --tag 3f9c2a1 --proxy nginx-dns web

  # Show the docker commands, change nothing
  berth-swap --tag 3f9c2a1 --dry-run web

  # After a crash (kill -9, power cut) mid-swap: back to one consistent release, no
  # request lost (the next swap or rollback also does this first). With --proxy
  # nginx-dns also after a `docker compose up`: names the running containers for nginx
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
    /// <state>/swap/; on --engine swarm from the stack's SERVICE--next and berth's nginx
    /// file), with zero failed requests, then exit; every swap and rollback also does this
    /// first
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

/// How a swap runs; `berth-rollback` takes the same settings. The ones a subcommand also
/// uses (nginx, the upstream file, the lock, pulls) are global: before or after its word.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Swap")]
pub struct SwapArgs {
    /// The proxy in front of the services (nginx on the host goes in front of the
    /// project's nginx: docs/proxies.md#host-nginx-certbot)
    #[arg(
        long,
        global = true,
        value_parser = nginx::ProxyParser,
        env = "BERTH_PROXY",
        default_value = "compose"
    )]
    pub proxy: ProxyMode,

    /// The compose service running nginx (with --proxy compose or nginx-dns) or HAProxy
    /// (--proxy haproxy)
    #[arg(
        long,
        global = true,
        env = "BERTH_PROXY_SERVICE",
        default_value = "proxy",
        value_name = "SERVICE"
    )]
    pub proxy_service: String,

    /// The upstream file nginx includes; `{service}` is replaced by the service's name
    /// [default: <project dir>/nginx/berth/upstream-{service}.conf]
    #[arg(long, global = true, env = "BERTH_UPSTREAM_FILE", value_name = "PATH")]
    pub upstream_file: Option<String>,

    /// A service that takes no traffic (a worker): started beside, waited healthy (Docker
    /// health), then the old ones stop with their grace period (repeatable)
    #[arg(long = "worker", value_name = "SERVICE")]
    pub workers: Vec<String>,

    /// The port the services listen on inside their containers (BERTH_PORT, its old
    /// name, still works with a warning)
    #[arg(long, env = "BERTH_APP_PORT", default_value_t = 8080)]
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

    /// Longest the old containers get after the switch to finish what they hold before
    /// they are stopped (SIGTERM, then --stop-timeout): the swap goes on as soon as the
    /// proxy holds nothing on them (nginx: its old workers exited; HAProxy: no session on
    /// the old slots) [default: the longest stop_grace_period of the services that take
    /// traffic, else 5s]
    #[arg(long, env = "BERTH_DRAIN", value_parser = parse_duration, value_name = "DURATION")]
    pub drain: Option<Duration>,

    /// Grace period before SIGKILL when stopping old containers
    /// [default: the service's stop_grace_period, else 10s]
    #[arg(long, env = "BERTH_STOP_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub stop_timeout: Option<Duration>,

    /// Idle keep-alive connections nginx keeps to the upstream (0: none)
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub keepalive: u32,

    /// The nginx binary inside the proxy container
    #[arg(
        long,
        global = true,
        env = "BERTH_NGINX",
        default_value = "nginx",
        value_name = "PATH"
    )]
    pub nginx: String,

    /// HAProxy's admin socket inside its container (with --proxy haproxy; berth talks to
    /// it through `docker exec -i PROXY socat stdio SOCKET`)
    #[arg(
        long,
        global = true,
        default_value = "/run/haproxy/admin.sock",
        value_name = "PATH"
    )]
    pub haproxy_socket: String,

    /// HAProxy's `server-state-file` inside its container: berth rewrites it after every
    /// change of the slots, so a restarted HAProxy loads the slots as they were
    /// (`load-server-state-from-file global`); "" keeps none
    #[arg(
        long,
        global = true,
        default_value = "/run/haproxy/server-state",
        value_name = "PATH"
    )]
    pub haproxy_state_file: String,

    /// With --proxy nginx-dns: the compose network (its key in the compose file) on which
    /// berth gives ready containers the name nginx resolves; the proxy is on it, the
    /// swapped services are not
    #[arg(long, global = true, default_value = "live", value_name = "NETWORK")]
    pub dns_network: String,

    /// With --proxy nginx-dns: the name nginx resolves per request (`set $backend NAME;`),
    /// `{service}` is replaced by the service's name
    #[arg(
        long,
        global = true,
        default_value = "{service}-live",
        value_name = "NAME"
    )]
    pub dns_alias: String,

    /// Wait this long for another deploy's lock instead of exiting 75 at once
    #[arg(long, global = true, env = "BERTH_LOCK_WAIT", default_value = "0s", value_parser = parse_duration, value_name = "DURATION")]
    pub lock_wait: Duration,

    #[command(flatten)]
    pub pull: PullOpts,
}

/// How pulls by tag are bounded (`berth-swap`, `berth-swap pull`, `berth-rollback`).
#[derive(Debug, Clone, clap::Args)]
pub struct PullOpts {
    /// Bound on pulling one service's image from its registry; past it the pull is
    /// killed and the stage exits 2, nothing changed
    #[arg(long, global = true, env = "BERTH_PULL_TIMEOUT", default_value = "10m", value_parser = parse_duration, value_name = "DURATION")]
    pub pull_timeout: Duration,
}

impl SwapArgs {
    /// The engine's options.
    pub fn options(&self) -> engine::Options {
        engine::Options {
            proxy: self.proxy,
            proxy_service: self.proxy_service.clone(),
            upstream_file: self.upstream_file.clone(),
            workers: self.workers.clone(),
            port: self.port,
            ready_path: self.ready_path.clone(),
            timeout: self.timeout,
            interval: self.interval,
            drain: self.drain,
            stop_timeout: self.stop_timeout,
            keepalive: self.keepalive,
            nginx: self.nginx.clone(),
            haproxy_socket: self.haproxy_socket.clone(),
            haproxy_state_file: self.haproxy_state_file.clone(),
            dns_network: self.dns_network.clone(),
            dns_alias: self.dns_alias.clone(),
            pull_timeout: self.pull.pull_timeout,
        }
    }

    /// The stage runs under the deploy lock, waiting `--lock-wait` for it.
    pub fn locked<'a>(&self, spec: Spec<'a>) -> Spec<'a> {
        spec.locked(berth_core::lock::DEPLOY, self.lock_wait)
    }

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
        // Paths inside the proxy container: absolute, as haproxy.cfg names them.
        let inside = [
            ("--haproxy-socket", &self.haproxy_socket, false),
            ("--haproxy-state-file", &self.haproxy_state_file, true),
        ];
        for (flag, path, may_be_empty) in inside {
            if !(path.starts_with('/') || may_be_empty && path.is_empty()) {
                return Err(Failure::usage(format!(
                    "{flag} {path:?}: must be an absolute path inside the proxy container{}",
                    if may_be_empty {
                        " (or \"\" for none)"
                    } else {
                        ""
                    }
                )));
            }
        }
        if self.proxy == ProxyMode::NginxDns
            && self.drain.is_some_and(|d| d < Duration::from_secs(1))
        {
            return Err(Failure::usage(
                "--drain with --proxy nginx-dns must be at least 1s (nginx's resolver keeps \
                 an answer for its `valid`, 1s in examples/nginx-dns)",
            ));
        }
        Ok(())
    }
}

/// The binary's `main`.
pub fn main() -> std::process::ExitCode {
    berth_core::cli::main("berth-swap", run)
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Some(Command::Maintenance(m)) => {
            let nginx = cli.swap.options();
            return maintenance::run(m, &nginx, cli.swap.lock_wait, &cli.common);
        }
        Some(Command::Preflight(a)) => {
            return prepare::preflight(a, cli.swap.upstream_file.as_deref(), &cli.common)
        }
        Some(Command::Pull(a)) => return prepare::pull(a, cli.swap.pull.pull_timeout, &cli.common),
        None => {}
    }
    let check = || -> Result<(), Failure> {
        cli.swap.check()?;
        check_services(&cli.services)
    };
    if cli.common.check_args {
        return berth_core::cli::checked(|| {
            check()?;
            Ok(cli.common.check()?)
        });
    }
    check()?;
    let input = stage::load(&cli.common)?;
    if cli.converge {
        return converge_stage(&cli.swap, input);
    }
    let spec = cli
        .swap
        .locked(Spec::new("swap", ExitCode::Swap))
        .ledger(Ledger::Provisional);
    let opts = cli.swap.options();
    stage::run(spec, input, |ctx, doc, detail| {
        let tag = ctx.require_tag()?.to_string();
        let services = if cli.services.is_empty() {
            let cfg = ctx
                .compose_at(&tag)
                .config()
                .map_err(|e| berth_core::fail!(Preflight, "{e:#}"))?;
            prepare::resolve_services(ctx, &[], &cfg)?
        } else {
            cli.services.clone()
        };
        let out = engine::swap(ctx, &opts, &services, &tag, &doc.deploy_id)
            .inspect_err(|e| record_after_switch(e, doc, detail))?;
        record(doc, &out);
        detail.extend(out.detail);
        if out.dry_run {
            return Ok(Completed::Skipped("dry run: nothing changed".into()));
        }
        Ok(Completed::Ok)
    })
}

/// A swap that failed after traffic moved records `switched` and `serving` (and the tag
/// it moved from), so that the rollback stage acts on it; one on Swarm that failed before
/// (exit 3) records the tasks that still run.
fn record_after_switch(
    e: &anyhow::Error,
    doc: &mut berth_core::doc::Document,
    detail: &mut serde_json::Map<String, Value>,
) {
    if let Some(a) = e.downcast_ref::<engine::AfterSwitch>() {
        if a.previous_tag.is_some() {
            doc.previous_tag = a.previous_tag.clone();
        }
        record::put(detail, &record::Swap::switched_record(&a.serving));
    } else if let Some(u) = e.downcast_ref::<engine::Unmoved>() {
        if u.previous_tag.is_some() {
            doc.previous_tag = u.previous_tag.clone();
        }
        detail.extend(u.detail.clone());
    }
}

/// `berth-swap --converge`: the stage `converge`, under the deploy lock; it acts after a
/// failure too (a converged state is always safer).
fn converge_stage(args: &SwapArgs, input: stage::Input) -> Result<ExitCode> {
    let spec = args.locked(Spec::new("converge", ExitCode::Swap).acting_on_failure(true));
    let prior = ExitCode::from_code(input.doc.outcome()).unwrap_or(ExitCode::Success);
    let opts = args.options();
    stage::run(spec, input, |ctx, doc, detail| {
        if ctx.dry_run {
            return Ok(Completed::Skipped("dry run: nothing changed".into()));
        }
        let (done, line) = if ctx.engine == berth_core::swarm::Engine::Swarm {
            let done = swarm::swap::converge(ctx, &opts, &doc.deploy_id)?;
            let line = if done.is_empty() {
                "nothing to converge: no swap was left half-way".to_string()
            } else {
                format!(
                    "converged: nginx back on the stack's own tasks, removed {}",
                    done.join(", ")
                )
            };
            (done, line)
        } else {
            converge_compose(ctx, &opts)?
        };
        msg::info(line);
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

/// `--converge` on Compose: what the journals of killed swaps left, and with `--proxy
/// nginx-dns` the running containers named for nginx; (what it did, the line saying so).
fn converge_compose(
    ctx: &berth_core::cli::Context,
    opts: &engine::Options,
) -> Result<(Vec<String>, String)> {
    let mut done = converge::converge(ctx, opts, ctx.tag.as_deref())?;
    if opts.proxy == ProxyMode::NginxDns {
        let named = dns::name_running(ctx, opts).map_err(|e| {
            berth_core::fail!(Swap, "naming the running containers for nginx: {e:#}")
        })?;
        for n in &named {
            msg::info(n);
        }
        done.extend(named);
    }
    let line = if done.is_empty() {
        "nothing to converge: no swap was interrupted".to_string()
    } else {
        format!("converged: {}", done.join(", "))
    };
    Ok((done, line))
}

/// Put what a swap learned into the document: previous tag, images with their IDs.
pub fn record(doc: &mut berth_core::doc::Document, out: &engine::SwapOutcome) {
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
        // Options before the word (global): parsed once, wherever they stand.
        for argv in [
            &[
                "berth-swap",
                "-p",
                "shop",
                "maintenance",
                "off",
                "--lock-wait",
                "5s",
            ][..],
            &[
                "berth-swap",
                "--lock-wait",
                "5s",
                "maintenance",
                "off",
                "-p",
                "shop",
            ],
        ] {
            let c = Cli::try_parse_from(argv).unwrap();
            let Some(Command::Maintenance(m)) = &c.command else {
                panic!("{argv:?}: not maintenance")
            };
            assert_eq!(m.state, maintenance::OnOff::Off);
            assert_eq!(c.common.project_name.as_deref(), Some("shop"));
            assert_eq!(c.swap.lock_wait, Duration::from_secs(5));
        }
        let c = Cli::try_parse_from(["berth-swap", "-p", "shop", "pull", "web"]).unwrap();
        assert!(matches!(&c.command, Some(Command::Pull(p)) if p.services == ["web"]));
        let c = Cli::try_parse_from([
            "berth-swap",
            "--proxy",
            "haproxy",
            "preflight",
            "web",
            "--",
            "x",
        ])
        .unwrap();
        assert!(matches!(&c.command, Some(Command::Preflight(p)) if p.command == ["x"]));
        assert_eq!(c.swap.proxy, ProxyMode::Haproxy);
        // --proxy host is gone: refused with what to do instead.
        let e = Cli::try_parse_from(["berth-swap", "--proxy", "host", "web"]).unwrap_err();
        assert!(e.to_string().contains(nginx::HOST_REMOVED), "{e}");
        let e = Cli::try_parse_from(["berth-swap", "--proxy", "nginx", "web"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("one of: compose, nginx-dns, haproxy, none"),
            "{e}"
        );
        // No services: every service whose image uses the tag variable (resolved later).
        let c = Cli::try_parse_from(["berth-swap", "--tag", "v2"]).unwrap();
        assert!(c.services.is_empty() && c.command.is_none());
        assert!(check_services(&["web".into(), "web".into()]).is_err());
        // nginx-dns: its name on the command line; a drain shorter than the resolver's
        // `valid` is refused.
        let c = Cli::try_parse_from(["berth-swap", "--proxy", "nginx-dns", "--drain", "500ms"])
            .unwrap();
        assert_eq!(c.swap.proxy, ProxyMode::NginxDns);
        assert!(c.swap.check().is_err());
        assert_eq!(c.swap.options().dns_alias, "{service}-live");
    }
}
