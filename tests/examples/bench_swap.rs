//! bench/swap: one rollout of the demo's web service per row, side by side in one run,
//! under the same load: clients that behave like real ones ([`berth_e2e::clients`]: 8
//! keep-alive clients when the proxy allows it, every third request a POST, nothing
//! resent). Run through `bench/swap.sh`.
//!
//! Rows (one nginx stack for the first three, one for the nginx DNS rows, one HAProxy
//! stack for the last):
//! - `compose recreate`: the baseline, what compose does by itself: `BERTH_TAG=v2`, `docker
//!   compose up -d --wait --no-deps web` (stop-first), then `nginx -s reload` so that nginx
//!   resolves the new container (without it every request fails until someone reloads).
//! - `berth nginx ka off`: `berth-swap --drain 2s web`, the demo's nginx.conf as shipped
//!   (`keepalive_timeout 0`: one request per client connection).
//! - `berth nginx ka on`: the same with nginx's default client keep-alive (75 s).
//! - `nginx dns 1st`: `berth-swap --proxy nginx-dns --drain 2s web` on examples/nginx-dns
//!   (no reload; client keep-alive 75 s), the first swap after `docker compose up`: it
//!   first gives the running container the alias and waits out nginx's memory of the
//!   failed lookup (3 s), then swaps.
//! - `berth nginx dns`: the next swap on that stack (the steady state).
//! - `berth haproxy`: `berth-swap --proxy haproxy` on examples/haproxy (runtime API, no
//!   reload; client keep-alive 75 s).
//!
//! On the 3-node Swarm test bed ([`Testbed`], one stack: nginx resolving the tasks by
//! Swarm DNS name, examples/swarm/nginx.conf; `web` with 2 replicas on 2 nodes), a second
//! table whose baseline is Swarm's own rolling update:
//! - `swarm update`: `docker service update --image R/app:v2 --update-order start-first`
//!   of the stack's `web` (raw Swarm; nginx follows Swarm's DNS, which lists a task once
//!   its healthcheck passes).
//! - `berth swarm`: `berth-swap --engine swarm --tag v1 --drain 2s web` on the same stack,
//!   back to v1.
//!
//! `BENCH_ROWS=compose` or `swarm` runs one table only (default: both).
//!
//! Per row: requests and failed ones (GET, POST) from the start of the rollout until 1 s
//! after it returned, the longest time without an answer, p99 latency, the time from the
//! start until the first answer from the new version (switch), the command's wall time
//! (total), and failed/total against the compose recreate baseline of the same run.

use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_e2e::clients::{ClientReport, Clients, Method, Mix};
use berth_e2e::swarm::Testbed;
use berth_e2e::{swarmstack, Stack};

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
fn measure(base: &str, mix: &Mix, name: &'static str, to: &str, op: impl FnOnce()) -> Row {
    let load = Clients::start(base, mix);
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
    let base = measure(&s.url(""), mix, "compose recreate", "v2", || {
        compose_recreate(&s, "v2")
    });
    // Back to v1 the same way (not measured).
    compose_recreate(&s, "v1");
    std::thread::sleep(Duration::from_secs(1));
    let off = measure(&s.url(""), mix, "berth nginx ka off", "v2", || {
        berth_swap(&s, &["--tag", "v2", "web"])
    });
    nginx_keepalive(&s, "75s");
    let on = measure(&s.url(""), mix, "berth nginx ka on", "v1", || {
        berth_swap(&s, &["--tag", "v1", "web"])
    });
    vec![base, off, on]
}

/// examples/nginx-dns: the first swap after `up` (web has no alias yet), then the next.
fn dns_rows(mix: &Mix) -> Vec<Row> {
    let s = Stack::new("bench-swap-dns");
    s.use_nginx_dns();
    s.start_on_schema("v1", "v2");
    let dns = ["--proxy", "nginx-dns"];
    let first = measure(&s.url(""), mix, "nginx dns 1st", "v2", || {
        berth_swap(&s, &[&dns[..], &["--tag", "v2", "web"]].concat())
    });
    let next = measure(&s.url(""), mix, "berth nginx dns", "v1", || {
        berth_swap(&s, &[&dns[..], &["--tag", "v1", "web"]].concat())
    });
    vec![first, next]
}

fn haproxy_row(mix: &Mix) -> Row {
    let s = Stack::new("bench-swap-haproxy");
    s.use_haproxy();
    s.start_on_schema("v1", "v2");
    // HAProxy starts with every slot in maintenance: the first swap fills one.
    berth_swap(&s, &["--proxy", "haproxy", "--tag", "v1", "web"]);
    measure(&s.url(""), mix, "berth haproxy", "v2", || {
        berth_swap(&s, &["--proxy", "haproxy", "--tag", "v2", "web"])
    })
}

/// The Swarm table: raw `docker service update` start-first, then berth-swap, on one
/// stack of a test bed of its own (removed at the end).
fn swarm_rows(mix: &Mix) -> Vec<Row> {
    const STACK: &str = "benchswarm";
    let tb = Testbed::up();
    let dir = swarmstack::deploy(
        &tb,
        STACK,
        80,
        &swarmstack::nginx_conf(),
        &[
            ("berth-demo/app:v1", "app:v1"),
            ("berth-demo/app:v2", "app:v2"),
            ("berth-fixture/nginx:1", "nginx:1"),
        ],
    );
    // Both tasks up (nginx answered with the first one).
    let service = format!("{STACK}_web");
    let deadline = Instant::now() + Duration::from_secs(120);
    // `2/2 (max 1 per node)`.
    while !tb
        .manager
        .docker_ok(&[
            "service",
            "ls",
            "--filter",
            &format!("name={service}"),
            "--format",
            "{{.Replicas}}",
        ])
        .starts_with("2/2")
    {
        assert!(Instant::now() < deadline, "{service}: not 2/2 within 120 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(2));
    let base = format!("http://{}:80", tb.manager.ip);
    let image = format!("{}/app:v2", tb.registry);
    let raw = measure(&base, mix, "swarm update", "v2", || {
        tb.manager.docker_ok(&[
            "service",
            "update",
            "--detach=false",
            "--quiet",
            "--update-order",
            "start-first",
            "--image",
            &image,
            &service,
        ]);
    });
    let berth = measure(&base, mix, "berth swarm", "v1", || {
        let out = berth_e2e::berth("berth-swap")
            .env("DOCKER_HOST", tb.manager.docker_host())
            .args(["--engine", "swarm", "-p", STACK, "--drain", "2s"])
            .args(["--tag", "v1", "web"])
            .arg("--project-dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "berth-swap --engine swarm: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    vec![raw, berth]
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

/// One table; failed/base and total/base against its first row.
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
    let which = std::env::var("BENCH_ROWS").unwrap_or_default();
    if which != "swarm" {
        let mut rows = nginx_rows(&mix);
        rows.extend(dns_rows(&mix));
        rows.push(haproxy_row(&mix));
        println!();
        print_rows(&rows);
    }
    if which != "compose" {
        let rows = swarm_rows(&mix);
        println!();
        println!("Swarm, 3-node test bed (1 manager, 2 workers), nginx on the manager:");
        print_rows(&rows);
    }
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
