//! `--proxy nginx-dns`: berth-swap and berth-rollback switch nginx without reloading it
//! (nginx resolves the alias `web-live` per request; berth gives it only to ready
//! containers) on the demo stack with examples/nginx-dns (client keep-alive ON, 75 s),
//! under keep-alive clients sending GETs and POSTs (tests/src/clients.rs; nothing resent).

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

/// The demo stack with examples/nginx-dns, web at v1 as compose created it (without the
/// alias: nginx answers from the service name `web`), the database at v2's schema.
fn dns_stack() -> Stack {
    let s = Stack::new("nginxdns");
    s.use_nginx_dns();
    s.start_on_schema("v1", "v2");
    s
}

/// Poll (at most 90 s) until nginx answers `/version` with a 200: the stack has
/// recovered from a `start` or `up`. Returns how long that took.
fn until_answers(s: &Stack) -> std::time::Duration {
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(90) {
        if berth_e2e::get(&s.url("/version")).is_ok_and(|(code, _, _)| code == 200) {
            return t.elapsed();
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("nginx did not answer /version with 200 within 90 s");
}

/// Keep-alive clients for 4 s from now: every request answered, all by `serving`.
fn all_answered_by(s: &Stack, what: &str, serving: &str) {
    let ((), load) = s.under_clients(|| std::thread::sleep(std::time::Duration::from_secs(2)));
    assert_clean(what, &load);
    assert_eq!(
        load.by_version().keys().collect::<Vec<_>>(),
        [serving],
        "{what}: {}",
        load.summary()
    );
}

fn berth(s: &Stack, prog: &str, args: &[&str]) -> (i32, Value, String) {
    let args: Vec<&str> = FAST.iter().chain(args).copied().collect();
    s.run(prog, &args)
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
    let t = std::time::Instant::now();
    // Right after `docker compose up` no container has the name web-live: nginx answers
    // from compose's service name (examples/nginx-dns's @web_unnamed), every request.
    assert!(live(&s).is_empty(), "{:?}", live(&s));
    all_answered_by(&s, "after the first up", "v1");
    let first = std::time::Instant::now();
    let before = workers(&s);

    // v1 -> v2: 0 failed requests with keep-alive GET+POST clients, no reload. The swap
    // first gives the running v1 container the name (else the service name would list the
    // new container before it is ready).
    let ((code, doc, err), load) =
        s.under_clients(|| berth(&s, "berth-swap", &["--tag", "v2", "web"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("compose had created them without it"), "{err}");
    assert_clean("swap v2", &load);
    assert!(load.by_version().contains_key("v1"), "{}", load.summary());
    assert_eq!(s.version(), "v2");
    let st = doc["stages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(st["detail"]["services"][0]["proxied"], true, "{st}");
    assert_eq!(live(&s).len(), 1, "{:?}", live(&s));
    assert!(!err.contains("reload"), "{err}");

    // Back to v1 with berth-rollback (the swap engine), under the same load.
    let ((code, _, err), load) =
        s.under_clients(|| berth(&s, "berth-rollback", &["--to", "v1", "web"]));
    assert_eq!(code, 0, "{err}");
    assert_clean("rollback v1", &load);
    assert!(load.by_version().contains_key("v2"), "{}", load.summary());
    assert_eq!(s.version(), "v1");
    assert_eq!(live(&s).len(), 1, "{:?}", live(&s));

    // A tag that never gets ready (it exits at start): exit 3, never given the name, v1
    // serves.
    let ((code, _, err), load) =
        s.under_clients(|| berth(&s, "berth-swap", &["--tag", "broken", "web"]));
    assert_eq!(code, 3, "{err}");
    assert_clean("broken", &load);
    assert_eq!(load.by_version().keys().collect::<Vec<_>>(), ["v1"]);
    assert_eq!(s.version(), "v1");
    assert_eq!(live(&s).len(), 1, "{:?}", live(&s));
    assert_eq!(workers(&s), before, "nginx reloaded during a switch");
    eprintln!("three switches under load took {:?}", first.elapsed());

    // Maintenance mode still works (by a reload of nginx).
    let (code, _, err) = berth(&s, "berth-swap", &["maintenance", "on"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(s.get("/version").0, 503);
    let (code, _, err) = berth(&s, "berth-swap", &["maintenance", "off"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(s.version(), "v1");

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
    s.killed_then_converged(FAST, "dns-named", "v1");
    assert_eq!(live(&s).len(), 1, "{:?}", live(&s));
    // Killed after the switch and the drain, before the old container stopped: forward.
    s.killed_then_converged(FAST, "drain", "v2");
    assert_eq!(live(&s).len(), 1, "{:?}", live(&s));
    eprintln!("swaps, rollback, maintenance, kills: {:?}", t.elapsed());

    // What a reboot does: `stop` + `start`. Docker keeps the alias (the container may come
    // back at another address); once nginx answers, every request is v2's.
    let t = std::time::Instant::now();
    s.compose_ok(&["stop", "-t", "5"]);
    s.compose_ok(&["start"]);
    eprintln!(
        "stop + start: answering again after {:?}",
        until_answers(&s)
    );
    assert_eq!(live(&s).len(), 1, "{:?}", live(&s));
    all_answered_by(&s, "after stop + start", "v2");
    // Nothing to name (Docker kept the alias): --converge changes nothing.
    let (code, _, err) = berth(&s, "berth-swap", &["--converge"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("named web-live"), "{err}");
    eprintln!("stop + start, checked: {:?}", t.elapsed());

    // `down` + `up`: compose creates the containers afresh, without the alias, at the tag
    // berth pinned (v2); nginx answers from the service name until the next swap.
    let t = std::time::Instant::now();
    s.compose_ok(&["down", "-t", "5"]);
    s.compose_ok(&["up", "-d", "--wait"]);
    eprintln!("down + up: answering again after {:?}", until_answers(&s));
    assert!(live(&s).is_empty(), "{:?}", live(&s));
    all_answered_by(&s, "after down + up", "v2");
    // `berth-swap --converge` names the running container (nothing else to converge), so
    // nginx stops going through the service name; under load, 0 failed.
    let ((code, _, err), load) = s.under_clients(|| berth(&s, "berth-swap", &["--converge"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("named web-live"), "{err}");
    assert_clean("converge naming after down + up", &load);
    assert_eq!(load.by_version().keys().collect::<Vec<_>>(), ["v2"]);
    assert_eq!(live(&s).len(), 1, "{:?}", live(&s));
    // And a swap from there: 0 failed.
    let ((code, _, err), load) =
        s.under_clients(|| berth(&s, "berth-swap", &["--tag", "v1", "web"]));
    assert_eq!(code, 0, "{err}");
    assert_clean("swap v1 after down + up", &load);
    assert_eq!(s.version(), "v1");
    assert_eq!(live(&s).len(), 1, "{:?}", live(&s));
    eprintln!("down + up, checked, swapped: {:?}", t.elapsed());
}
