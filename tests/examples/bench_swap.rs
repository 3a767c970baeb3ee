//! bench/swap: one rollout of the demo's web service per row, side by side in one run,
//! under the same load: clients that behave like real ones ([`berth_e2e::clients`]: 8
//! keep-alive clients when the proxy allows it, every third request a POST, nothing
//! resent). Run through `bench/swap.sh`.
//!
//! Rows (one nginx stack for the first three, one HAProxy stack for the fourth):
//! - `compose recreate`: the baseline, what compose does by itself: `BERTH_TAG=v2`, `docker
//!   compose up -d --wait --no-deps web` (stop-first), then `nginx -s reload` so that nginx
//!   resolves the new container (without it every request fails until someone reloads).
//! - `berth nginx ka off`: `berth-swap --drain 2s web`, the demo's nginx.conf as shipped
//!   (`keepalive_timeout 0`: one request per client connection).
//! - `berth nginx ka on`: the same with nginx's default client keep-alive (75 s).
//! - `berth haproxy`: `berth-swap --proxy haproxy` on examples/haproxy (runtime API, no
//!   reload; client keep-alive 75 s).
//!
//! Places are kept for the nginx DNS mode (helper nginxka) and Swarm (helper swarmswap):
//! see [`PENDING`].
//!
//! Per row: requests and failed ones (GET, POST) from the start of the rollout until 1 s
//! after it returned, the longest time without an answer, p99 latency, the time from the
//! start until the first answer from the new version (switch), the command's wall time
//! (total), and failed/total against the compose recreate baseline of the same run.

use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_e2e::clients::{ClientReport, Clients, Method, Mix};
use berth_e2e::Stack;

/// Rows not measured yet, printed as such: (name, who adds it).
const PENDING: &[(&str, &str)] = &[
    ("berth nginx dns", "nginx DNS mode, helper nginxka"),
    ("berth swarm", "Swarm, helper swarmswap"),
];

struct Row {
    name: &'static str,
    /// The rollout's window of the load: from its start until 1 s after it returned.
    load: ClientReport,
    /// From the start of the rollout until the first answer from the new version.
    switch: Option<Duration>,
    total: Duration,
}

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Load for 3 s, then `op` (a rollout to `to`), then 2 s more.
fn measure(s: &Stack, mix: &Mix, name: &'static str, to: &str, op: impl FnOnce()) -> Row {
    let load = Clients::start(&s.url(""), mix);
    std::thread::sleep(Duration::from_secs(3));
    let from = load.elapsed();
    let t = Instant::now();
    op();
    let total = t.elapsed();
    let to_end = load.elapsed() + Duration::from_secs(1);
    std::thread::sleep(Duration::from_secs(2));
    let load = load.stop().window(from, to_end);
    let switch = load
        .attempts
        .iter()
        .find(|a| a.version == to && !a.failed())
        .map(|a| a.at - from);
    Row {
        name,
        load,
        switch,
        total,
    }
}

fn berth_swap(s: &Stack, args: &[&str]) {
    let out = s
        .berth("berth-swap")
        .args(["--drain", "2s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "berth-swap {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Client keep-alive of the stack's own nginx (the shipped file is not touched): rewritten
/// in place (it is bind-mounted on its own), checked, reloaded; then the old workers get
/// time to go before any load starts.
fn nginx_keepalive(s: &Stack, timeout: &str) {
    let path = s.dir.join("nginx/nginx.conf");
    let conf = std::fs::read_to_string(&path).unwrap();
    assert!(conf.contains("keepalive_timeout 0;"), "nginx.conf changed");
    let conf = conf.replace(
        "keepalive_timeout 0;",
        &format!("keepalive_timeout {timeout};"),
    );
    std::fs::write(&path, conf).unwrap();
    s.compose_ok(&["exec", "-T", "proxy", "nginx", "-t", "-q"]);
    s.compose_ok(&["exec", "-T", "proxy", "nginx", "-s", "reload"]);
    std::thread::sleep(Duration::from_secs(3));
}

fn compose_recreate(s: &Stack, tag: &str) {
    s.set_env("BERTH_TAG", tag);
    s.compose_ok(&["up", "-d", "--wait", "--no-deps", "web"]);
    s.compose_ok(&["exec", "-T", "proxy", "nginx", "-s", "reload"]);
}

fn nginx_rows(mix: &Mix) -> Vec<Row> {
    let s = Stack::new("bench-swap");
    s.start_on_schema("v1", "v2");
    let base = measure(&s, mix, "compose recreate", "v2", || {
        compose_recreate(&s, "v2")
    });
    // Back to v1 the same way (not measured).
    compose_recreate(&s, "v1");
    std::thread::sleep(Duration::from_secs(1));
    let off = measure(&s, mix, "berth nginx ka off", "v2", || {
        berth_swap(&s, &["--tag", "v2", "web"])
    });
    nginx_keepalive(&s, "75s");
    let on = measure(&s, mix, "berth nginx ka on", "v1", || {
        berth_swap(&s, &["--tag", "v1", "web"])
    });
    vec![base, off, on]
}

fn haproxy_row(mix: &Mix) -> Row {
    let s = Stack::new("bench-swap-haproxy");
    s.use_haproxy();
    s.start_on_schema("v1", "v2");
    // HAProxy starts with every slot in maintenance: the first swap fills one.
    berth_swap(&s, &["--proxy", "haproxy", "--tag", "v1", "web"]);
    measure(&s, mix, "berth haproxy", "v2", || {
        berth_swap(&s, &["--proxy", "haproxy", "--tag", "v2", "web"])
    })
}

fn failed(r: &ClientReport, m: Method) -> usize {
    r.attempts
        .iter()
        .filter(|a| a.method == m && a.failed())
        .count()
}

fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "-".to_string()
    } else {
        format!("{:.2}", a / b)
    }
}

fn print_rows(rows: &[Row]) {
    println!(
        "{:<20} {:>8} {:>6} {:>5} {:>5} {:>7} {:>7} {:>8} {:>7} {:>11} {:>10}",
        "rollout",
        "requests",
        "failed",
        "GET",
        "POST",
        "gap_ms",
        "p99_ms",
        "switch_s",
        "total_s",
        "failed/base",
        "total/base"
    );
    let base = &rows[0];
    let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1000.0);
    for r in rows {
        let switch = r
            .switch
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .unwrap_or_else(|| "never".into());
        println!(
            "{:<20} {:>8} {:>6} {:>5} {:>5} {:>7} {:>7} {:>8} {:>7.2} {:>11} {:>10}",
            r.name,
            r.load.total(),
            r.load.failed(),
            failed(&r.load, Method::Get),
            failed(&r.load, Method::Post),
            ms(r.load.longest_gap()),
            ms(r.load.latency(0.99)),
            switch,
            r.total.as_secs_f64(),
            ratio(r.load.failed() as f64, base.load.failed() as f64),
            ratio(r.total.as_secs_f64(), base.total.as_secs_f64()),
        );
    }
    for (name, what) in PENDING {
        println!("{name:<20} (not measured yet: {what})");
    }
}

fn main() {
    let mix = Mix {
        clients: env_num("CLIENTS", 8) as usize,
        pause: Duration::from_millis(env_num("PAUSE_MS", 5)),
        post_every: env_num("POST_EVERY", 3) as u32,
        ..Mix::default()
    };
    let load_avg = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    println!(
        "bench/swap: demo stack, {} clients on /version ({} ms pause, {}, nothing resent), one rollout per row; load average at start: {}",
        mix.clients,
        mix.pause.as_millis(),
        posts(mix.post_every),
        load_avg()
    );
    let mut rows = nginx_rows(&mix);
    rows.push(haproxy_row(&mix));
    println!();
    print_rows(&rows);
    println!();
    println!(
        "(requests, failed, gap, p99: from the start of the rollout until 1 s after it returned;"
    );
    println!(
        " gap: longest time between two answered requests; switch: until the first answer from the"
    );
    println!(
        " new version; total: the rollout command's wall time, berth's includes its 2 s drain)"
    );
    println!("load average at end: {}", load_avg());
}

fn posts(n: u32) -> String {
    match n {
        0 => "GETs only".into(),
        1 => "POSTs only".into(),
        2 => "every 2nd request a POST".into(),
        3 => "every 3rd request a POST".into(),
        n => format!("every {n}th request a POST"),
    }
}
