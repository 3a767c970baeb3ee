//! A load probe for the demo: N keep-alive clients (tests/src/clients.rs: every third
//! request a POST, none resent) send requests to a URL (paced), until a stop file appears
//! (or --max passes), then one summary line goes to stdout; exit 1 if any failed.
//!
//! cargo run --release -p berth-e2e --example loadprobe -- URL [CLIENTS] [STOP_FILE] [MAX_SECS]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_e2e::clients::{Clients, Mix};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        eprintln!("usage: loadprobe http://HOST:PORT[/PATH] [CLIENTS] [STOP_FILE] [MAX_SECS]");
        std::process::exit(64);
    };
    let Some(url) = args.first() else { usage() };
    let Some(rest) = url.strip_prefix("http://") else {
        usage()
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let clients: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let stop = args.get(2).map(PathBuf::from);
    let max = Duration::from_secs(args.get(3).and_then(|s| s.parse().ok()).unwrap_or(600));
    let mix = Mix {
        clients,
        path: if path.is_empty() { "/" } else { path }.to_string(),
        max_time: max,
        ..Mix::default()
    };
    let started = Instant::now();
    let load = Clients::start(&format!("http://{authority}"), &mix);
    while started.elapsed() < max && !stop.as_ref().is_some_and(|p| p.exists()) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = load.stop();
    println!(
        "load probe: {} requests from {clients} keep-alive clients in {:.1}s ({} POST), {} failed, answered by {:?}, longest gap between answers {} ms",
        r.total(),
        started.elapsed().as_secs_f64(),
        r.attempts
            .iter()
            .filter(|a| a.method == berth_e2e::clients::Method::Post)
            .count(),
        r.failed(),
        r.by_version(),
        r.longest_gap().as_millis()
    );
    if r.failed() > 0 {
        eprintln!("{}", r.summary());
        std::process::exit(1);
    }
}
