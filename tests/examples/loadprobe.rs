//! A load probe for the demo and benchmarks: N clients send GETs to a URL (paced), until
//! a stop file appears (or --max passes), then one summary line goes to stdout.
//!
//! cargo run --release -p berth-e2e --example loadprobe -- URL [CLIENTS] [STOP_FILE] [MAX_SECS]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_e2e::Load;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(url) = args.first() else {
        eprintln!("usage: loadprobe URL [CLIENTS] [STOP_FILE] [MAX_SECS]");
        std::process::exit(64);
    };
    let clients: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let stop = args.get(2).map(PathBuf::from);
    let max = Duration::from_secs(args.get(3).and_then(|s| s.parse().ok()).unwrap_or(600));
    let started = Instant::now();
    let load = Load::start_paced(url, clients, max, Duration::from_millis(5));
    while started.elapsed() < max && !stop.as_ref().is_some_and(|p| p.exists()) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = load.stop();
    println!(
        "load probe: {} requests from {clients} clients in {:.1}s, {} failed, answered by {:?}, longest gap between answers {} ms",
        r.total(),
        started.elapsed().as_secs_f64(),
        r.failed(),
        r.by_version(),
        r.longest_gap().as_millis()
    );
    if r.failed() > 0 {
        std::process::exit(1);
    }
}
