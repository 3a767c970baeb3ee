//! `berth-healthwait`: wait until HTTP, TCP, container and Swarm service targets are ready; fail fast
//! when they die. The probing itself lives in `berth_core::health` (berth-swap uses it
//! too); this crate is its command line.

use std::ffi::OsString;
use std::num::NonZeroU32;
use std::time::Duration;

use anyhow::Result;
use berth_core::cli::{parse_duration, CommonArgs};
use berth_core::health::{self, HttpCheck, JsonExpect, StatusSet, Target};
use berth_core::stage::{self, Completed, Spec};
use berth_core::{docker, fail, msg, record, ExitCode, Failure};
use clap::Parser;

const EXAMPLES: &str = "\
Examples:
  # Wait for the app behind the proxy, checking its JSON and the Host it expects
  berth-healthwait --url http://127.0.0.1:8080/readyz --expect-json status=ok \\
      --header 'Host: shop.example.com' --timeout 90s

  # A script waiting for its database, then running the migration
  berth-healthwait --tcp 127.0.0.1:5432 -- ./migrate.sh

  # Fail fast when a container exits, OOMs or restarts; else wait for Docker health
  berth-healthwait --container shop-web-1 --timeout 2m

  # On a Swarm manager after `docker stack deploy`: every replica of shop_web running
  # (healthy); a task that fails or is rejected meanwhile fails at once
  berth-healthwait --service shop_web --timeout 2m

  # As a pipeline stage: the deploy document passes through stdin to stdout
  berth-swap --tag 3f9c2a1 web | berth-healthwait --url http://127.0.0.1/ --stage smoke | berth-report

Exit status: 0 ready; 4 not ready (deadline passed or a target died; the document's
record says which; a docker call still running at the deadline is killed and named);
1 docker unreachable or not answering within --timeout (for --container, --service) or CMD could not run;
64 usage error; 65 bad document on stdin; a failure already in the document passes
through with its code.";

/// Wait until every target is ready: HTTP URLs, TCP ports, containers, probed in
/// parallel. A container that exits, restarts or is OOM-killed fails at once, with its
/// last log lines. Progress goes to stderr, one line per change; the deploy document
/// (stdin to stdout) gets a record of targets, attempts, time to ready and last errors.
#[derive(Debug, Parser)]
#[command(name = "berth-healthwait", version, after_long_help = EXAMPLES, after_help = "See --help for examples and exit codes.")]
pub struct Cli {
    /// An HTTP(S) URL to GET until it answers as expected (repeatable)
    #[arg(long = "url", value_name = "URL", help_heading = "Targets")]
    pub urls: Vec<String>,

    /// A TCP address that must accept a connection (repeatable)
    #[arg(long = "tcp", value_name = "HOST:PORT", help_heading = "Targets")]
    pub tcp: Vec<String>,

    /// A container that must be healthy (or running, without a healthcheck) (repeatable)
    #[arg(long = "container", value_name = "NAME|ID", help_heading = "Targets")]
    pub containers: Vec<String>,

    /// A Swarm service (STACK_SERVICE) that must run all its replicas, each running and
    /// healthy; a task of it that fails or is rejected meanwhile fails at once (repeatable)
    #[arg(
        long = "service",
        value_name = "STACK_SERVICE",
        help_heading = "Targets"
    )]
    pub services: Vec<String>,

    /// Statuses that count as ready, e.g. 200,204,300-399
    #[arg(
        long,
        value_name = "SET",
        default_value = "200-299",
        help_heading = "HTTP checks"
    )]
    pub expect_status: StatusSet,

    /// A JSON field that must have a value: dotted PATH=VALUE, e.g. status=ok, db.ok=true (repeatable)
    #[arg(
        long = "expect-json",
        value_name = "PATH=VALUE",
        help_heading = "HTTP checks"
    )]
    pub expect_json: Vec<JsonExpect>,

    /// Text the body must contain
    #[arg(long, value_name = "TEXT", help_heading = "HTTP checks")]
    pub expect_body: Option<String>,

    /// A request header, e.g. 'Host: shop.example.com' (repeatable)
    #[arg(short = 'H', long = "header", value_name = "'NAME: VALUE'", value_parser = parse_header, help_heading = "HTTP checks")]
    pub headers: Vec<(String, String)>,

    /// Overall deadline
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration, help_heading = "Timing")]
    pub timeout: Duration,

    /// Pause between probes of a target
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = parse_duration, help_heading = "Timing")]
    pub interval: Duration,

    /// Bound on one probe (never past the deadline)
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration, help_heading = "Timing")]
    pub attempt_timeout: Duration,

    /// Consecutive successes a target needs
    #[arg(long, value_name = "N", default_value = "1", help_heading = "Timing")]
    pub successes: NonZeroU32,

    /// The stage's name in the deploy document (e.g. smoke)
    #[arg(long = "stage", value_name = "NAME", default_value = "healthwait")]
    pub stage: String,

    #[command(flatten)]
    pub common: CommonArgs,

    /// Run CMD once ready (exec: it replaces berth-healthwait and owns stdin/stdout;
    /// no document is read or written)
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected 'Name: value'"))?;
    let k = k.trim();
    if k.is_empty()
        || !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    {
        return Err(format!("{s:?}: {k:?} is not a header name"));
    }
    Ok((k.to_string(), v.trim().to_string()))
}

impl Cli {
    /// The targets, checked.
    pub fn targets(&self) -> Result<Vec<Target>, Failure> {
        let mut out = Vec::new();
        for u in &self.urls {
            let lower = u.to_ascii_lowercase();
            if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                return Err(Failure::usage(format!(
                    "--url {u}: must start with http:// or https://"
                )));
            }
            if let Err(e) = u.parse::<ureq::http::Uri>() {
                return Err(Failure::usage(format!(
                    "--url {u:?}: not a valid URL ({e})"
                )));
            }
            let mut h = HttpCheck::new(u);
            h.headers = self.headers.clone();
            h.status = self.expect_status.clone();
            h.json = self.expect_json.clone();
            h.body = self.expect_body.clone();
            out.push(Target::Http(h));
        }
        for t in &self.tcp {
            let ok = t
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(Failure::usage(format!(
                    "--tcp {t}: expected HOST:PORT, e.g. 127.0.0.1:5432"
                )));
            }
            out.push(Target::Tcp(t.clone()));
        }
        if !self.containers.is_empty() && self.common.engine == berth_core::swarm::Engine::Swarm {
            return Err(Failure::usage(
                "--engine swarm: --container is not supported on Swarm (a task may run on another node, where this manager cannot inspect its container); wait for the whole service with --service STACK_SERVICE, or with --url through the proxy",
            ));
        }
        for c in &self.containers {
            if c.trim().is_empty() {
                return Err(Failure::usage("--container: empty name"));
            }
            out.push(Target::Container(c.clone()));
        }
        for s in &self.services {
            if s.trim().is_empty() || s.contains(char::is_whitespace) {
                return Err(Failure::usage(format!(
                    "--service {s:?}: expected a Swarm service name, e.g. shop_web"
                )));
            }
            out.push(Target::Service {
                name: s.clone(),
                since: berth_core::time::now(),
            });
        }
        if out.is_empty() {
            return Err(Failure::usage(
                "nothing to wait for: give --url, --tcp, --container or --service",
            ));
        }
        if self.stage.trim().is_empty() {
            return Err(Failure::usage("--stage: empty name"));
        }
        Ok(out)
    }

    pub fn options(&self) -> health::Options {
        health::Options {
            timeout: self.timeout,
            interval: self.interval,
            attempt_timeout: self.attempt_timeout,
            successes: self.successes.get(),
        }
    }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    if cli.common.check_args {
        return berth_core::cli::checked(|| {
            cli.targets()?;
            cli.common.check()?;
            Ok(())
        });
    }
    // --timeout bounds everything, docker calls included: a hung daemon cannot hold us.
    if let Some(at) = std::time::Instant::now().checked_add(cli.timeout) {
        berth_core::process::set_deadline(at);
    }
    let targets = cli.targets()?;
    let opts = cli.options();
    let check_docker = || -> Result<()> {
        if targets
            .iter()
            .any(|t| matches!(t, Target::Container(_) | Target::Service { .. }))
        {
            docker::ensure_reachable()?;
        }
        Ok(())
    };
    if !cli.command.is_empty() {
        // Standalone with a command: stdin and stdout belong to CMD.
        cli.common.resolve_offline(None)?;
        check_docker()?;
        let report = health::wait(&targets, &opts, &|l| msg::info(l));
        if !report.ready {
            return Err(fail!(Unhealthy, "{}", report.failure()));
        }
        return exec(&cli.command);
    }
    // The smoke check talks HTTP and docker, never compose.
    let input = stage::load_with(&cli.common, false)?;
    let spec = Spec::new(&cli.stage, ExitCode::Unhealthy);
    // Docker is checked only when the stage will run: a document that records an earlier
    // failure is passed through by `stage::run` (which says so once).
    if input.doc.first_failure().is_none() {
        check_docker()?;
    }
    stage::run(spec, input, |_ctx, _doc, detail| {
        let report = health::wait(&targets, &opts, &|l| msg::info(l));
        record::put(detail, &report.to_record(&opts));
        if report.ready {
            msg::info(format!(
                "all {} target(s) ready in {:.1}s",
                targets.len(),
                report.elapsed_ms as f64 / 1000.0
            ));
            Ok(Completed::Ok)
        } else {
            Err(fail!(Unhealthy, "not ready: {}", report.failure()))
        }
    })
}

fn exec(command: &[OsString]) -> Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(&command[0])
        .args(&command[1..])
        .exec();
    Err(fail!(
        Preflight,
        "could not run {}: {err}",
        command[0].to_string_lossy()
    ))
}
