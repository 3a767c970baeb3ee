//! `--proxy haproxy`: berth-swap and berth-rollback switch HAProxy through its runtime
//! API (no reload) on the demo stack with HAProxy in place of nginx (examples/haproxy),
//! under keep-alive clients sending GETs and POSTs (tests/src/clients.rs; nothing resent).

use std::process::Stdio;

use berth_e2e::clients::ClientReport;
use berth_e2e::Stack;
use serde_json::Value;

const FAST: &[&str] = &[
    "--proxy",
    "haproxy",
    "--drain",
    "2s",
    "--stop-timeout",
    "5s",
    "--timeout",
    "30s",
];

/// The demo stack with examples/haproxy's override and config, web at v1 (put into a
/// slot by a first `berth-swap --tag v1`), the database at v2's schema.
fn haproxy_stack() -> Stack {
    let s = Stack::new("haproxy");
    s.use_haproxy();
    s.start_on_schema("v1", "v2");
    // HAProxy starts with every slot in maintenance: the first swap fills one.
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

/// The `show stat` rows of backend web's slots that take traffic (not in maintenance).
fn live_slots(s: &Stack) -> Vec<String> {
    s.haproxy_admin("show stat -1 4 -1")
        .lines()
        .filter(|l| l.starts_with("web,s") && !l.contains(",MAINT,"))
        .map(str::to_string)
        .collect()
}

#[test]
fn swap_rollback_and_broken_tag_through_the_runtime_api_fail_no_request() {
    let s = haproxy_stack();
    let first = std::time::Instant::now();

    // v1 -> v2: 0 failed requests with keep-alive GET+POST clients.
    let ((code, doc, err), load) =
        under_load(&s, || berth(&s, "berth-swap", &["--tag", "v2", "web"]));
    eprintln!("swap v2: {}", load.summary());
    assert_eq!(code, 0, "{err}");
    assert_eq!(load.failed(), 0, "{}", load.summary());
    assert!(
        load.failed_posts() == 0 && load.total() > 100,
        "{}",
        load.summary()
    );
    assert!(load.by_version().contains_key("v1"), "{}", load.summary());
    assert_eq!(version(&s), "v2");
    let st = doc["stages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        st["detail"]["services"][0]["haproxy_backend"], "web",
        "{st}"
    );
    assert_eq!(live_slots(&s).len(), 1, "{:?}", live_slots(&s));
    assert!(!err.contains("reload"), "{err}");

    // Back to v1 with berth-rollback (the swap engine), under the same load.
    let ((code, _, err), load) =
        under_load(&s, || berth(&s, "berth-rollback", &["--to", "v1", "web"]));
    eprintln!("rollback v1: {}", load.summary());
    assert_eq!(code, 0, "{err}");
    assert_eq!(load.failed(), 0, "{}", load.summary());
    assert!(load.by_version().contains_key("v2"), "{}", load.summary());
    assert_eq!(version(&s), "v1");
    assert_eq!(live_slots(&s).len(), 1, "{:?}", live_slots(&s));

    // A tag that never gets ready (it exits at start): exit 3, nothing moved, v1 serves, no slot left filled.
    let ((code, _, err), load) =
        under_load(&s, || berth(&s, "berth-swap", &["--tag", "broken", "web"]));
    eprintln!("broken: {}", load.summary());
    assert_eq!(code, 3, "{err}");
    assert_eq!(load.failed(), 0, "{}", load.summary());
    assert_eq!(load.by_version().keys().collect::<Vec<_>>(), ["v1"]);
    assert_eq!(version(&s), "v1");
    assert_eq!(live_slots(&s).len(), 1, "{:?}", live_slots(&s));
    eprintln!("three switches under load took {:?}", first.elapsed());

    // Maintenance mode is not there yet on HAProxy: refused as a usage error.
    let (code, _, err) = berth(&s, "berth-swap", &["maintenance", "on"]);
    assert_eq!(code, 64, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // A service without a backend in haproxy.cfg: exit 1 before anything starts, naming
    // what to add.
    let before = s.container_ids();
    let (code, _, err) = berth(&s, "berth-swap", &["--tag", "v2", "worker"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("backend \"worker\""), "{err}");
    assert_eq!(s.container_ids(), before);

    // Killed (SIGKILL) with the new container in a slot and UP, before the old slot
    // drained: converging goes back, and the slots name only v1's running container.
    killed_then_converged(&s, "haproxy-fill", "v1");
    // Killed after the switch and the drain, before the old container stopped: forward.
    killed_then_converged(&s, "drain", "v2");
}

/// A swap to v2 killed (SIGKILL) right after the fault point `at`, then `berth-swap
/// --converge` under load: 0 failed, `serving` answers, one slot names its one container.
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
    eprintln!("converge after a kill at {at}: {}", load.summary());
    assert_eq!(code, 0, "{err}");
    assert_eq!(load.failed(), 0, "{}", load.summary());
    assert_eq!(version(s), serving);
    assert_eq!(live_slots(s).len(), 1, "{:?}", live_slots(s));
    assert_eq!(s.service_containers("web").len(), 1);
}
