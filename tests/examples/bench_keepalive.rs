//! bench/keepalive: failed requests during one swap, seen by clients that behave like real
//! ones ([`berth_e2e::clients`]: one keep-alive connection each, a POST never resent), for
//! several nginx setups of the demo stack and two request mixes. Run through
//! `bench/keepalive.sh`. Not part of the test suite.
//!
//! Setups (the stack's own copy of nginx.conf, rewritten in place and reloaded before the
//! load starts; the shipped examples/demo config is not touched):
//! - `reload-ka0`: as shipped, `keepalive_timeout 0`; berth-swap (upstream file + reload).
//! - `reload-ka75`: nginx's default client keep-alive (75 s); berth-swap.
//! - `reload-ka75-linger` (only when named in SETUPS): as `reload-ka75` plus
//!   `lingering_close always; lingering_timeout 5s; worker_shutdown_timeout 30s;`.
//! - `dns-ka75`: keep-alive 75 s and no reload at all: nginx resolves the compose service
//!   name per request (`resolver 127.0.0.11 valid=1s`, `proxy_pass http://$backend:8080`);
//!   the swap is done by hand: `compose up --no-recreate --scale web=2` starts the new
//!   version beside the old one under the same DNS name, then (after the drain) the old
//!   container is stopped gracefully and removed.
//! - `berth-dns-ka75`: keep-alive 75 s, no reload: berth's own `berth-swap --proxy
//!   nginx-dns` on the demo stack with examples/nginx-dns (nginx resolves the alias
//!   `web-live`, which berth gives only to probed-ready containers; old ones leave it by
//!   their graceful stop).
//! - `haproxy-api`: HAProxy 2.6 instead of nginx (examples/haproxy: compose.override.yaml and
//!   haproxy.cfg, client keep-alive 75 s), switched by hand through its runtime API, never
//!   reloaded: the new container (`compose up --no-recreate --scale web=2`) goes into a free
//!   server slot (`set server web/sN addr IP port 8080`, `state ready`, wait until UP), the
//!   old slot is set to `drain`, after the drain and once it has no connection in use its
//!   container is stopped gracefully and removed, and the slot set to `maint`.
//!
//! Mixes: `get` (GET /version only) and `get+post` (every 3rd request a POST, every 40th a
//! GET /slow?ms=1000). Every attempt of the whole load (3 s before the swap until 2 s after
//! it) counts.
//!
//! Env: RUNS (default 3), SETUPS (comma list, default all but `reload-ka75-linger`),
//! CLIENTS (8), PAUSE_MS (5), POST_EVERY (3) and SLOW_EVERY (40) for the `get+post` mix.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::clients::{ClientReport, Clients, Mix};
use berth_e2e::{run_ok, Stack};

const SETUPS: &[&str] = &[
    "reload-ka0",
    "reload-ka75",
    "dns-ka75",
    "berth-dns-ka75",
    "haproxy-api",
];

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The stack's nginx.conf for `setup`, from the shipped one.
fn nginx_conf(shipped: &str, setup: &str) -> String {
    let ka = if setup.contains("ka75") {
        "keepalive_timeout 75s;"
    } else {
        "keepalive_timeout 0;"
    };
    let mut c = shipped.replace("keepalive_timeout 0;", ka);
    if setup.ends_with("-linger") {
        c = c
            .replace(
                ka,
                &format!("{ka}\n    lingering_close always;\n    lingering_timeout 5s;"),
            )
            .replace(
                "worker_processes auto;",
                "worker_processes auto;\nworker_shutdown_timeout 30s;",
            );
    }
    if setup.starts_with("dns") {
        c = c.replace(
            "proxy_pass http://web;",
            "resolver 127.0.0.11 valid=1s ipv6=off;\n            set $backend web;\n            proxy_pass http://$backend:8080;",
        );
    }
    let shaped = c.contains(ka)
        && (!setup.starts_with("dns") || c.contains("$backend:8080"))
        && (!setup.ends_with("-linger") || c.contains("worker_shutdown_timeout"));
    assert!(shaped, "nginx.conf changed shape: {setup}");
    c
}

fn set_nginx(s: &Stack, setup: &str) {
    let path = s.dir.join("nginx").join("nginx.conf");
    let shipped =
        std::fs::read_to_string(berth_e2e::root().join("examples/demo/nginx/nginx.conf")).unwrap();
    // In place (same inode): the file is bind-mounted on its own.
    std::fs::write(&path, nginx_conf(&shipped, setup)).unwrap();
    s.compose_ok(&["exec", "-T", "proxy", "nginx", "-t", "-q"]);
    s.compose_ok(&["exec", "-T", "proxy", "nginx", "-s", "reload"]);
    // Let the old workers go before any load starts.
    std::thread::sleep(Duration::from_secs(3));
}

fn web_names(s: &Stack) -> Vec<String> {
    s.service_containers("web")
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

/// One more `web` container, at `tag`, beside the running ones (which it returns) under
/// the same service name, healthy before this returns.
fn scale_up(s: &Stack, tag: &str) -> Vec<String> {
    let old = web_names(s);
    s.set_env("BERTH_TAG", tag);
    let n = format!("web={}", old.len() + 1);
    s.compose_ok(&[
        "up",
        "-d",
        "--wait",
        "--no-deps",
        "--no-recreate",
        "--scale",
        &n,
        "web",
    ]);
    old
}

/// The reload-free swap of `dns-*`: the new container beside the old one under the
/// service's DNS name, a drain, then the old one stopped (the app drains in-flight
/// requests on SIGTERM) and removed.
fn dns_swap(s: &Stack, tag: &str, drain: Duration) {
    let old = scale_up(s, tag);
    std::thread::sleep(drain);
    for name in &old {
        run_ok(Command::new("docker").args(["stop", "-t", "15", name]));
        run_ok(Command::new("docker").args(["rm", name]));
    }
}

/// Which stack a setup runs on: nginx (its config rewritten per setup), nginx for
/// `--proxy nginx-dns` (examples/nginx-dns), or HAProxy.
fn stack_kind(setup: &str) -> &'static str {
    if setup.starts_with("haproxy") {
        "haproxy"
    } else if setup.starts_with("berth-dns") {
        "berth-dns"
    } else {
        "nginx"
    }
}

/// One private demo stack of a kind, with HAProxy's slots when it is HAProxy.
struct Bench {
    kind: &'static str,
    stack: Stack,
    slots: Vec<(String, String)>,
}

impl Bench {
    fn new(kind: &'static str) -> Bench {
        if kind == "haproxy" {
            let (stack, slots) = haproxy_stack();
            return Bench { kind, stack, slots };
        }
        let stack = Stack::new(&format!("bench-{kind}"));
        if kind == "berth-dns" {
            stack.use_nginx_dns();
        }
        stack.start("v1");
        stack.migrate("v2");
        if kind == "berth-dns" {
            // compose starts web without the alias: berth names it (swap onto itself).
            berth_swap(&stack, "v1", "nginx-dns");
        }
        Bench {
            kind,
            stack,
            slots: Vec::new(),
        }
    }

    /// One swap to `next` the setup's way, under `mix`.
    fn measure(&mut self, setup: &str, mix: &Mix, next: &str) -> (ClientReport, Duration) {
        let (s, slots) = (&self.stack, &mut self.slots);
        let drain = Duration::from_secs(2);
        match self.kind {
            "haproxy" => measure(s, mix, || haproxy_swap(s, slots, next, drain)),
            "berth-dns" => measure(s, mix, || berth_swap(s, next, "nginx-dns")),
            _ if setup.starts_with("dns") => measure(s, mix, || dns_swap(s, next, drain)),
            _ => measure(s, mix, || berth_swap(s, next, "compose")),
        }
    }
}

/// The demo stack with HAProxy as its proxy (examples/haproxy), web in slot s1.
fn haproxy_stack() -> (Stack, Vec<(String, String)>) {
    let s = Stack::new("bench-haproxy");
    s.use_haproxy();
    s.start("v1");
    s.migrate("v2");
    let web = web_names(&s);
    assert_eq!(web.len(), 1, "{web:?}");
    let mut slots: Vec<(String, String)> =
        (1..=4).map(|i| (format!("s{i}"), String::new())).collect();
    put_in_slot(&s, &mut slots, &web[0]);
    (s, slots)
}

/// One command on HAProxy's admin socket (socat in the proxy container); its answer.
fn admin(s: &Stack, cmd: &str) -> String {
    s.haproxy_admin(cmd)
}

/// `show servers state web`: the operational state (2 = up) and current connections... the
/// columns: be_id be_name srv_id srv_name srv_addr srv_op_state ...
fn slot_up(s: &Stack, slot: &str) -> bool {
    admin(s, "show servers state web").lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 5 && f[3] == slot && f[5] == "2"
    })
}

/// Used (not idle) connections of a server: `show stat` field scur.
fn slot_in_use(s: &Stack, slot: &str) -> u64 {
    let stat = admin(s, "show stat");
    let head: Vec<&str> = stat
        .lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let scur = head.iter().position(|h| *h == "scur").expect("scur column");
    stat.lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.len() > scur && f[0] == "web" && f[1] == slot)
        .and_then(|f| f[scur].parse().ok())
        .unwrap_or(0)
}

fn put_in_slot(s: &Stack, slots: &mut [(String, String)], container: &str) {
    let out = run_ok(Command::new("docker").args([
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        container,
    ]));
    let ip = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("an address")
        .to_string();
    let slot = slots
        .iter_mut()
        .find(|(_, c)| c.is_empty())
        .expect("a free slot");
    slot.1 = container.to_string();
    for cmd in [
        format!("set server web/{} addr {ip} port 8080", slot.0),
        format!("set server web/{} state ready", slot.0),
    ] {
        let answer = admin(s, &cmd);
        assert!(
            answer.is_empty() || answer.contains("changed") || answer.contains("no need to change"),
            "{cmd}: {answer}"
        );
    }
    let t = Instant::now();
    while !slot_up(s, &slot.0) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{} never came up",
            slot.0
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The reload-free swap of `haproxy-api` (see the module's text).
fn haproxy_swap(s: &Stack, slots: &mut [(String, String)], tag: &str, drain: Duration) {
    let old = scale_up(s, tag);
    let new: Vec<String> = web_names(s)
        .into_iter()
        .filter(|c| !old.contains(c))
        .collect();
    for c in &new {
        put_in_slot(s, slots, c);
    }
    let old_slots: Vec<String> = slots
        .iter()
        .filter(|(_, c)| old.contains(c))
        .map(|(n, _)| n.clone())
        .collect();
    for slot in &old_slots {
        admin(s, &format!("set server web/{slot} state drain"));
    }
    std::thread::sleep(drain);
    let t = Instant::now();
    while old_slots.iter().any(|slot| slot_in_use(s, slot) > 0)
        && t.elapsed() < Duration::from_secs(15)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    for name in &old {
        run_ok(Command::new("docker").args(["stop", "-t", "15", name]));
        run_ok(Command::new("docker").args(["rm", name]));
    }
    for slot in slots.iter_mut().filter(|(_, c)| old.contains(c)) {
        admin(s, &format!("set server web/{} state maint", slot.0));
        slot.1.clear();
    }
}

fn berth_swap(s: &Stack, tag: &str, proxy: &str) {
    let out = s
        .berth("berth-swap")
        .args(["--tag", tag, "--drain", "2s", "--proxy", proxy, "web"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "berth-swap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn measure(s: &Stack, mix: &Mix, swap: impl FnOnce()) -> (ClientReport, Duration) {
    let load = Clients::start(&format!("http://127.0.0.1:{}", s.port), mix);
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    swap();
    let wall = t.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    (load.stop(), wall)
}

fn main() {
    let runs = env_num("RUNS", 3);
    let clients = env_num("CLIENTS", 8) as usize;
    let pause = Duration::from_millis(env_num("PAUSE_MS", 5));
    let setups: Vec<String> = std::env::var("SETUPS")
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or_else(|_| SETUPS.iter().map(|s| s.to_string()).collect());
    let get = Mix {
        clients,
        pause,
        post_every: 0,
        ..Mix::default()
    };
    let get_post = Mix {
        clients,
        pause,
        post_every: env_num("POST_EVERY", 3) as u32,
        slow_every: env_num("SLOW_EVERY", 40) as u32,
        slow_ms: 1000,
        ..Mix::default()
    };

    println!(
        "bench/keepalive: demo stack, {clients} keep-alive clients ({} ms pause), {runs} runs per case; load average at start: {}",
        pause.as_millis(),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    let mut bench: Option<Bench> = None;
    let mut tag = "v1";
    let mut table = Vec::new();
    for setup in &setups {
        let kind = stack_kind(setup);
        if bench.as_ref().is_none_or(|b| b.kind != kind) {
            drop(bench.take()); // the previous stack goes first
            bench = Some(Bench::new(kind));
            tag = "v1";
        }
        let b = bench.as_mut().expect("a stack");
        if kind == "nginx" {
            set_nginx(&b.stack, setup);
        }
        for (mix_name, mix) in [("get", &get), ("get+post", &get_post)] {
            let mut fails = Vec::new();
            for run in 1..=runs {
                let next = if tag == "v1" { "v2" } else { "v1" };
                let (r, wall) = b.measure(setup, mix, next);
                tag = next;
                println!(
                    "{setup:<15} {mix_name:<9} run {run}: swap to {next} in {:.1} s; {}",
                    wall.as_secs_f64(),
                    r.summary()
                );
                fails.push((
                    r.failed(),
                    r.failed_posts(),
                    r.browser_retriable(),
                    r.total(),
                ));
            }
            table.push((setup.clone(), mix_name, fails));
        }
    }
    println!();
    println!("failed requests per run (failed/total; of which POST; of which GETs a browser would resend):");
    for (setup, mix, fails) in table {
        let cells: Vec<String> = fails
            .iter()
            .map(|(f, p, g, t)| format!("{f}/{t} (POST {p}, GET-resend {g})"))
            .collect();
        println!("{setup:<15} {mix:<9} {}", cells.join("  "));
    }
    println!(
        "load average at end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}
