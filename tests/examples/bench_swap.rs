//! bench/swap: `docker compose up -d --wait` (recreate) against `berth-swap`, one run each,
//! on the same demo stack under the same load. Run through `bench/swap.sh`.
//!
//! For each: failed requests, the longest gap between successful answers, p50/p99/max
//! latency during the rollout (against steady state just before it), wall time. For
//! berth also the time from the new container's own `ready` log event to the switch.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::{Load, LoadReport, Stack};
use serde_json::Value;

const CLIENTS: usize = 8;

struct Row {
    name: &'static str,
    wall: Duration,
    report: LoadReport,
    from: Duration,
    to: Duration,
    steady_p99: Duration,
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn measure(s: &Stack, pause: Duration, name: &'static str, op: impl FnOnce()) -> Row {
    let load = Load::start_paced(&s.url("/version"), CLIENTS, Duration::from_secs(300), pause);
    std::thread::sleep(Duration::from_secs(4));
    let from = load.elapsed();
    let t = Instant::now();
    op();
    let wall = t.elapsed();
    let to = load.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let report = load.stop();
    let steady_p99 = report.latency_percentile(0.99, from - Duration::from_secs(3), from);
    Row {
        name,
        wall,
        report,
        from,
        to,
        steady_p99,
    }
}

fn window(r: &Row) -> (usize, usize, Duration) {
    let end = r.to + Duration::from_secs(1);
    let inside: Vec<_> = r
        .report
        .samples
        .iter()
        .filter(|x| x.at >= r.from && x.at < end)
        .collect();
    let failed = inside.iter().filter(|x| x.failed()).count();
    let oks: Vec<Duration> = inside
        .iter()
        .filter(|x| !x.failed())
        .map(|x| x.at)
        .collect();
    let mut gap = oks.first().map(|f| *f - r.from).unwrap_or(end - r.from);
    for w in oks.windows(2) {
        gap = gap.max(w[1] - w[0]);
    }
    (inside.len(), failed, gap)
}

fn docker_logs(name: &str) -> String {
    let out = Command::new("docker")
        .args(["logs", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn main() {
    let pause = Duration::from_millis(
        std::env::var("PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5),
    );
    let s = Stack::new("bench-swap");
    s.start("v1");
    s.migrate("v2");

    // 1. What compose does by itself: recreate web at v2 (stop-first), wait for health,
    //    then reload nginx so that it resolves the new container (without the reload
    //    nginx keeps the old address and every request fails until it is reloaded).
    let compose_row = measure(&s, pause, "compose up -d --wait", || {
        s.set_env("BERTH_TAG", "v2");
        s.compose_ok(&["up", "-d", "--wait", "--no-deps", "web"]);
        s.compose_ok(&["exec", "-T", "proxy", "nginx", "-s", "reload"]);
    });

    // Back to v1 the same way (not measured), then berth-swap v1 -> v2.
    s.set_env("BERTH_TAG", "v1");
    s.compose_ok(&["up", "-d", "--wait", "--no-deps", "web"]);
    s.compose_ok(&["exec", "-T", "proxy", "nginx", "-s", "reload"]);
    std::thread::sleep(Duration::from_secs(1));

    let mut doc = Value::Null;
    let berth_row = measure(&s, pause, "berth-swap", || {
        let out = s
            .berth("berth-swap")
            .args(["--tag", "v2", "--drain", "2s", "web"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        doc = serde_json::from_slice(&out.stdout).unwrap();
    });

    let st = doc["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["stage"] == "swap")
        .unwrap()
        .clone();
    let d = &st["detail"];
    let new_name = d["services"][0]["new_containers"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let ready: Value = docker_logs(&new_name)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "ready")
        .expect("the app logs a ready event");
    let ready_unix_ms = ready["unix_ms"].as_i64().unwrap();
    let boot_ms = ready["boot_ms"].as_i64().unwrap();
    let switched = berth_core::time::parse(d["switched_at"].as_str().unwrap()).unwrap();
    let switch_lag = switched.as_millisecond() - ready_unix_ms;

    println!(
        "bench/swap: demo stack, {CLIENTS} clients on /version through nginx ({} ms pause per client), one run each",
        pause.as_millis()
    );
    println!();
    println!(
        "{:<22} {:>9} {:>8} {:>10} {:>9} {:>9} {:>9} {:>11} {:>9}",
        "rollout",
        "requests",
        "failed",
        "gap_ms",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "steady_p99",
        "wall_s"
    );
    for r in [&compose_row, &berth_row] {
        let (n, failed, gap) = window(r);
        let end = r.to + Duration::from_secs(1);
        let p50 = r.report.latency_percentile(0.5, r.from, end);
        let p99 = r.report.latency_percentile(0.99, r.from, end);
        let max = r.report.latency_percentile(1.0, r.from, end);
        println!(
            "{:<22} {:>9} {:>8} {:>10} {:>9} {:>9} {:>9} {:>11} {:>9.2}",
            r.name,
            n,
            failed,
            ms(gap),
            ms(p50),
            ms(p99),
            ms(max),
            ms(r.steady_p99),
            r.wall.as_secs_f64()
        );
    }
    println!();
    println!("(requests, failed, gap, latencies: from the start of the rollout until 1 s after it returned;");
    println!(" steady_p99: the 3 s before it; gap: longest time without a successful answer)");
    println!();
    println!("berth-swap, from the document and the new container's log:");
    println!("  new container {new_name}: boot to ready {boot_ms} ms (its own `ready` event)");
    println!(
        "  berth saw it ready {} ms after starting to probe; switch (upstream + nginx -t + reload) {} ms",
        d["ready_ms"], d["switch_ms"]
    );
    println!("  switched {switch_lag} ms after the container's ready event (goal <= 500 ms)");
    println!(
        "  drain {} ms, stop old {} ms, total {} ms",
        d["drain_ms"], d["stop_ms"], d["total_ms"]
    );
}
