//! `--proxy haproxy`: berth-swap and berth-rollback switch HAProxy through its runtime
//! API (no reload) on the demo stack with HAProxy in place of nginx (examples/haproxy),
//! under keep-alive clients sending GETs and POSTs (tests/src/clients.rs; nothing resent);
//! so do maintenance on and off; a slow request and an event stream outlive a short
//! drain; a restarted HAProxy comes back serving the live release (its server state).

use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_e2e::clients::{Clients, Mix};
use berth_e2e::{assert_outlived_the_drain, get_raw, Stack};
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
    assert_eq!(s.version(), "v1");
    s
}

fn berth(s: &Stack, prog: &str, args: &[&str]) -> (i32, Value, String) {
    let args: Vec<&str> = FAST.iter().chain(args).copied().collect();
    s.run(prog, &args)
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
fn every_switch_through_the_runtime_api_fails_no_request() {
    let s = haproxy_stack();
    let first = std::time::Instant::now();

    // v1 -> v2: 0 failed requests with keep-alive GET+POST clients.
    let ((code, doc, err), load) =
        s.under_clients(|| berth(&s, "berth-swap", &["--tag", "v2", "web"]));
    eprintln!("swap v2: {}", load.summary());
    assert_eq!(code, 0, "{err}");
    assert_eq!(load.failed(), 0, "{}", load.summary());
    assert!(
        load.failed_posts() == 0 && load.total() > 100,
        "{}",
        load.summary()
    );
    assert!(load.by_version().contains_key("v1"), "{}", load.summary());
    assert_eq!(s.version(), "v2");
    let st = doc["stages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        st["detail"]["services"][0]["haproxy_backend"], "web",
        "{st}"
    );
    assert_eq!(live_slots(&s).len(), 1, "{:?}", live_slots(&s));
    assert!(!err.contains("reload"), "{err}");

    // Back to v1 with berth-rollback (the swap engine), under the same load.
    let ((code, _, err), load) =
        s.under_clients(|| berth(&s, "berth-rollback", &["--to", "v1", "web"]));
    eprintln!("rollback v1: {}", load.summary());
    assert_eq!(code, 0, "{err}");
    assert_eq!(load.failed(), 0, "{}", load.summary());
    assert!(load.by_version().contains_key("v2"), "{}", load.summary());
    assert_eq!(s.version(), "v1");
    assert_eq!(live_slots(&s).len(), 1, "{:?}", live_slots(&s));

    // A tag that never gets ready (it exits at start): exit 3, nothing moved, v1 serves, no slot left filled.
    let ((code, _, err), load) =
        s.under_clients(|| berth(&s, "berth-swap", &["--tag", "broken", "web"]));
    eprintln!("broken: {}", load.summary());
    assert_eq!(code, 3, "{err}");
    assert_eq!(load.failed(), 0, "{}", load.summary());
    assert_eq!(load.by_version().keys().collect::<Vec<_>>(), ["v1"]);
    assert_eq!(s.version(), "v1");
    assert_eq!(live_slots(&s).len(), 1, "{:?}", live_slots(&s));
    eprintln!("three switches under load took {:?}", first.elapsed());

    let t = Instant::now();
    maintenance_on_and_off_under_load(&s);
    eprintln!("maintenance on/off took {:?}", t.elapsed());

    // A service without a backend in haproxy.cfg: exit 1 before anything starts, naming
    // what to add.
    let before = s.container_ids();
    let (code, _, err) = berth(&s, "berth-swap", &["--tag", "v2", "worker"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("backend \"worker\""), "{err}");
    assert_eq!(s.container_ids(), before);

    // Killed (SIGKILL) with the new container in a slot and UP, before the old slot
    // drained: converging goes back, and the slots name only v1's running container.
    s.killed_then_converged(FAST, "haproxy-fill", "v1");
    assert_eq!(live_slots(&s).len(), 1, "{:?}", live_slots(&s));
    // Killed after the switch and the drain, before the old container stopped: forward.
    s.killed_then_converged(FAST, "drain", "v2");
    assert_eq!(live_slots(&s).len(), 1, "{:?}", live_slots(&s));

    let t = Instant::now();
    slow_request_and_stream_outlive_a_short_drain(&s);
    eprintln!(
        "drain v2 -> v1 with a slow request and a stream took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    restarted_haproxy_serves_the_live_release(&s, "v1");
    eprintln!("HAProxy restart took {:?}", t.elapsed());
    eprintln!("the whole test took {:?}", first.elapsed());
}

/// `berth-swap maintenance on|off` through HAProxy's map, under keep-alive clients: no
/// request fails at the connection level (each gets the app's answer or the 503 page),
/// a request sent the instant each command returns sees the new state, the health paths
/// reach the app meanwhile, nothing is reloaded.
fn maintenance_on_and_off_under_load(s: &Stack) {
    // HAProxy's PIDs (`compose top`'s PID column): no reload starts a new worker.
    let pids = || -> Vec<String> {
        s.compose_ok(&["top", "proxy"])
            .lines()
            .skip(1)
            // HAProxy's own master and worker, not a healthcheck's curl or berth's socat
            // caught running at that instant.
            .filter(|l| l.contains("haproxy -"))
            .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
            .collect()
    };
    let before = pids();
    let mut wrong = Vec::new();
    let mut check = |what: &str, want: (u16, &str)| match berth_e2e::get(&s.url("/version")) {
        Ok((status, version, _)) if (status, version.as_str()) == want => {}
        Ok((status, version, _)) => {
            wrong.push(format!("{what}: {status} {version:?}, want {want:?}"))
        }
        Err(e) => wrong.push(format!("{what}: {e}")),
    };
    let ((), load) = s.under_clients(|| {
        let (code, doc, err) = berth(
            s,
            "berth-swap",
            &[
                "maintenance",
                "on",
                "--message",
                "Back at 5 o'clock; $5 {x} \\ é",
            ],
        );
        assert_eq!(code, 0, "{err}");
        check("maintenance on", (503, ""));
        let st = doc["stages"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(st["detail"]["state"], "on", "{st}");
        assert_eq!(st["detail"]["file"], "/etc/haproxy/maintenance.map", "{st}");
        let (status, _, page) = berth_e2e::get(&s.url("/anything")).unwrap();
        assert_eq!(status, 503);
        assert!(
            page.contains("Back at 5 o&#39;clock; &#36;5 &#123;x&#125; &#92; é"),
            "{page}"
        );
        let agent = berth_core::http::agent(Duration::from_secs(5));
        let r = agent.get(&s.url("/version")).call().unwrap();
        assert_eq!(r.headers().get("retry-after").unwrap(), "30");
        assert_eq!(berth_e2e::get(&s.url("/healthz")).unwrap().0, 200);
        assert_eq!(berth_e2e::get(&s.url("/readyz")).unwrap().0, 200);
        // Idempotent: already on, the page stays.
        let (code, doc, err) = berth(s, "berth-swap", &["maintenance", "on"]);
        assert_eq!(code, 0, "{err}");
        let st = doc["stages"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(st["detail"]["already"], true, "{st}");
        std::thread::sleep(Duration::from_millis(500));
        let (code, doc, err) = berth(s, "berth-swap", &["maintenance", "off"]);
        assert_eq!(code, 0, "{err}");
        check("maintenance off", (200, "v1"));
        let st = doc["stages"].as_array().unwrap().last().unwrap().clone();
        assert!(st["detail"]["window_ms"].as_u64().unwrap() >= 500, "{st}");
        // Two more rounds, each checked the instant its command returns.
        for i in 0..2 {
            let (code, _, err) = berth(s, "berth-swap", &["maintenance", "on"]);
            assert_eq!(code, 0, "{err}");
            check(&format!("maintenance on #{i}"), (503, ""));
            let (code, _, err) = berth(s, "berth-swap", &["maintenance", "off"]);
            assert_eq!(code, 0, "{err}");
            check(&format!("maintenance off #{i}"), (200, "v1"));
        }
    });
    eprintln!("maintenance on/off: {}", load.summary());
    assert!(wrong.is_empty(), "{wrong:#?}");
    load.assert_app_or_maintenance_page();
    assert_eq!(before.len(), 2, "{before:?}");
    assert_eq!(pids(), before, "HAProxy's processes changed");
}

/// A swap (v2 -> v1) with `--drain 1s` while a 4 s request and an `/events` stream are
/// open through HAProxy, under keep-alive clients: the slow request is answered whole by
/// v2, the stream ends with v2's `shutdown` event and the end of its body (the old
/// container's graceful stop), a stream opened after the switch reaches v1, 0 failed.
fn slow_request_and_stream_outlive_a_short_drain(s: &Stack) {
    let port = s.port;
    let ((out, slow, stream), load) = s.under_clients(|| {
        let stream = std::thread::spawn(move || get_raw(port, "/events"));
        let slow = std::thread::spawn(move || get_raw(port, "/slow?ms=4000"));
        std::thread::sleep(Duration::from_millis(500));
        let out = s
            .berth("berth-swap")
            .args(["--proxy", "haproxy", "--tag", "v1", "--drain", "1s"])
            .args(["--stop-timeout", "5s", "--timeout", "30s", "web"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (out, slow.join().unwrap(), stream.join().unwrap())
    });
    eprintln!("drain: {}", load.summary());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(load.failed(), 0, "{}", load.summary());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_outlived_the_drain(port, slow, stream, "v2", "v1");

    let d = &doc["stages"].as_array().unwrap().last().unwrap()["detail"];
    assert_eq!(d["drain_limit_ms"], 1000, "{d}");
    // The open stream held a session on the old slot for the whole bound.
    assert_eq!(d["drained"], false, "{d}");
    assert_eq!(d["services"][0]["killed"], 0, "{d}");
    assert_eq!(s.version(), "v1");
    assert_eq!(live_slots(s).len(), 1, "{:?}", live_slots(s));
}

/// `docker compose restart proxy` under keep-alive clients: HAProxy loads the server
/// state berth saved after the last switch, so once it answers again, every request is
/// answered by `serving` (without it, every slot would be in maintenance: 503s).
fn restarted_haproxy_serves_the_live_release(s: &Stack, serving: &str) {
    let mix = Mix {
        max_time: Duration::from_secs(120),
        ..Mix::default()
    };
    let clients = Clients::start(&s.url(""), &mix);
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    s.compose_ok(&["restart", "-t", "5", "proxy"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match berth_e2e::get(&s.url("/version")) {
            Ok((200, _, _)) => break,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("HAProxy did not answer 200 within 30 s of its restart: {other:?}"),
        }
    }
    eprintln!(
        "HAProxy answered 200 again {:?} after `restart` began",
        t.elapsed()
    );
    // The clients' clock at the first 200 after the restart.
    let since = clients.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let load = clients.stop();
    let after = load.window(since, Duration::MAX);
    eprintln!("HAProxy restart, all: {}", load.summary());
    eprintln!("HAProxy restart, after recovery: {}", after.summary());
    assert!(after.total() > 50, "{}", after.summary());
    assert_eq!(after.failed(), 0, "{}", after.summary());
    assert_eq!(
        after.by_version().into_keys().collect::<Vec<_>>(),
        [serving],
        "{}",
        after.summary()
    );
    assert_eq!(s.version(), serving);
    assert_eq!(live_slots(s).len(), 1, "{:?}", live_slots(s));
}
