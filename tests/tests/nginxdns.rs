//! `--proxy nginx-dns`: berth-swap and berth-rollback switch nginx without reloading it
//! (nginx resolves the alias `web-live` per request; berth gives it only to ready
//! containers) on the demo stack with examples/nginx-dns (client keep-alive ON, 75 s),
//! under keep-alive clients sending GETs and POSTs (tests/src/clients.rs; nothing resent).

use std::process::Stdio;

use berth_e2e::clients::ClientReport;
use berth_e2e::Stack;
use serde_json::Value;

const FAST: &[&str] = &[
    "--proxy",
    "nginx-dns",
    "--drain",
    "2s",
    "--stop-timeout",
    "5s",
    "--timeout",
    "30s",
];

/// The demo stack with examples/nginx-dns, web at v1 (named `web-live` by a first
/// `berth-swap --tag v1`), the database at v2's schema.
fn dns_stack() -> Stack {
    let s = Stack::new("nginxdns");
    s.use_nginx_dns();
    s.start("v1");
    s.migrate("v2");
    // compose started web without the alias: nginx cannot resolve web-live yet.
    assert_eq!(s.get("/version").0, 502);
    let (code, _, err) = berth(&s, "berth-swap", &["--tag", "v1", "web"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(version(&s), "v1");
    s
}

fn berth(s: &Stack, prog: &str, args: &[&str]) -> (i32, Value, String) {
    let args: Vec<&str> = FAST.iter().chain(args).copied().collect();
    s.run(prog, &args)
}

fn version(s: &Stack) -> String {
    s.version()
}

fn under_load<T>(s: &Stack, f: impl FnOnce() -> T) -> (T, ClientReport) {
    s.under_clients(f)
}

/// The addresses the proxy's resolver answers for web-live.
fn live(s: &Stack) -> Vec<String> {
    let out = s
        .compose()
        .args(["exec", "-T", "proxy", "getent", "ahostsv4", "web-live"])
        .output()
        .unwrap();
    let mut ips: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    ips.dedup();
    ips
}

/// nginx's worker PIDs: the same before and after a switch when nothing reloaded.
fn workers(s: &Stack) -> Vec<String> {
    let top = s.compose_ok(&["top", "proxy"]);
    let mut pids: Vec<String> = top
        .lines()
        .filter(|l| l.contains("nginx: worker process"))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect();
    pids.sort();
    assert!(!pids.is_empty(), "{top}");
    pids
}

fn assert_clean(what: &str, load: &ClientReport) {
    eprintln!("{what}: {}", load.summary());
    assert_eq!(load.failed(), 0, "{what}: {}", load.summary());
    assert!(
        load.failed_posts() == 0 && load.total() > 100,
        "{what}: {}",
        load.summary()
    );
}

#[test]
fn swap_rollback_and_broken_tag_without_a_reload_fail_no_request() {
    let s = dns_stack();
    let first = std::time::Instant::now();
    let before = workers(&s);

    // v1 -> v2: 0 failed requests with keep-alive GET+POST clients, no reload.
    let ((code, doc, err), load) =
        under_load(&s, || berth(&s, "berth-swap", &["--tag", "v2", "web"]));
    assert_eq!(code, 0, "{err}");
    assert_clean("swap v2", &load);
    assert!(load.by_version().contains_key("v1"), "{}", load.summary());
    assert_eq!(version(&s), "v2");
    let st = doc["stages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(st["detail"]["services"][0]["proxied"], true, "{st}");
    assert_eq!(live(&s).len(), 1, "{:?}", live(&s));
    assert!(!err.contains("reload"), "{err}");

    // Back to v1 with berth-rollback (the swap engine), under the same load.
    let ((code, _, err), load) =
        under_load(&s, || berth(&s, "berth-rollback", &["--to", "v1", "web"]));
    assert_eq!(code, 0, "{err}");
    assert_clean("rollback v1", &load);
    assert!(load.by_version().contains_key("v2"), "{}", load.summary());
    assert_eq!(version(&s), "v1");
    assert_eq!(live(&s).len(), 1, "{:?}", live(&s));

    // A tag that never gets ready (it exits at start): exit 3, never given the name, v1
    // serves.
    let ((code, _, err), load) =
        under_load(&s, || berth(&s, "berth-swap", &["--tag", "broken", "web"]));
    assert_eq!(code, 3, "{err}");
    assert_clean("broken", &load);
    assert_eq!(load.by_version().keys().collect::<Vec<_>>(), ["v1"]);
    assert_eq!(version(&s), "v1");
    assert_eq!(live(&s).len(), 1, "{:?}", live(&s));
    assert_eq!(workers(&s), before, "nginx reloaded during a switch");
    eprintln!("three switches under load took {:?}", first.elapsed());

    // Maintenance mode still works (by a reload of nginx).
    let (code, _, err) = berth(&s, "berth-swap", &["maintenance", "on"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(s.get("/version").0, 503);
    let (code, _, err) = berth(&s, "berth-swap", &["maintenance", "off"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(version(&s), "v1");

    // A service nginx's configuration does not resolve: exit 1 before anything starts,
    // naming what to add.
    let ids = s.container_ids();
    let (code, _, err) = berth(&s, "berth-swap", &["--tag", "v2", "worker"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("never names worker-live"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(s.container_ids(), ids);

    // Killed (SIGKILL) with the new container named but the swap not yet switched:
    // converging goes back, and only v1's container answers the name.
    killed_then_converged(&s, "dns-named", "v1");
    // Killed after the switch and the drain, before the old container stopped: forward.
    killed_then_converged(&s, "drain", "v2");
}

/// A swap to v2 killed (SIGKILL) right after the fault point `at`, then `berth-swap
/// --converge` under load: 0 failed, `serving` answers, the name names its one container.
fn killed_then_converged(s: &Stack, at: &str, serving: &str) {
    let out = s
        .berth("berth-swap")
        .args(FAST)
        .args(["--tag", "v2", "web"])
        .env(berth_core::fault::VAR, at)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), None, "not killed at {at}");
    let ((code, _, err), load) = under_load(s, || berth(s, "berth-swap", &["--converge"]));
    assert_eq!(code, 0, "{err}");
    assert_clean(&format!("converge after a kill at {at}"), &load);
    assert_eq!(version(s), serving);
    assert_eq!(live(s).len(), 1, "{:?}", live(s));
    assert_eq!(s.service_containers("web").len(), 1);
}
