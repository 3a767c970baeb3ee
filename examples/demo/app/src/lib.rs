//! berth-demo-app: the small web app and worker that berth's examples and end-to-end tests
//! deploy. See `examples/demo/README.md` for what each subcommand and variant does.

pub mod config;
pub mod db;
pub mod http;
pub mod log;
pub mod migrate;
pub mod readiness;
pub mod resp;
pub mod serve;
pub mod signals;
pub mod sse;
pub mod url;
pub mod worker;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::config::Config;

const USAGE: &str =
    "usage: berth-demo-app [serve | worker | migrate | healthcheck [PATH] | enqueue N [PREFIX]]";

/// The whole program: runs the subcommand, maps an error to exit 1 with one line on stderr.
pub fn main() -> ExitCode {
    let process_start = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args, process_start) {
        Ok(code) => code,
        Err(e) => {
            log::error(format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

pub fn run(args: &[String], process_start: Instant) -> Result<ExitCode> {
    let (cmd, rest) = match args.split_first() {
        Some((c, rest)) => (c.as_str(), rest),
        None => ("serve", &[][..]),
    };
    if matches!(cmd, "-h" | "--help" | "help") {
        println!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = Config::from_env()?;
    match cmd {
        "serve" => serve::run(cfg, process_start),
        "worker" => worker::run(cfg, process_start),
        "migrate" => migrate::run(&cfg),
        "healthcheck" => healthcheck(&cfg, rest.first().map_or("/readyz", String::as_str)),
        "enqueue" => worker::enqueue(&cfg, rest),
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}

/// `healthcheck [PATH]`: exit 0 on a 2xx from our own port, else 1 (a Docker HEALTHCHECK
/// for an image without a shell or curl). Prints the status and body for `docker inspect`.
fn healthcheck(cfg: &Config, path: &str) -> Result<ExitCode> {
    if !path.starts_with('/') {
        bail!("healthcheck PATH must start with '/', got {path:?}");
    }
    let addr = cfg.probe_addr();
    match http::get(addr, path, Duration::from_secs(2)) {
        Ok((status, body)) => {
            println!("{status} {}", String::from_utf8_lossy(&body).trim_end());
            Ok(if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Err(e) => {
            println!("GET http://{addr}{path} failed: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
