//! `--proxy haproxy`: berth-swap and berth-rollback switch HAProxy through its runtime
//! API (no reload) on the demo stack with HAProxy in place of nginx (examples/haproxy),
//! under keep-alive clients sending GETs and POSTs (tests/src/clients.rs; nothing resent);
//! so do maintenance on and off; a slow request and an event stream outlive a short
//! drain; a restarted HAProxy comes back serving the live release (its server state)
//! and keeps a maintenance window open (the map file berth keeps in step).

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
    fixed_subnet(&s);
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

/// The `show stat` rows of backend web's slots that take traffic (not in maintenance,
/// whether set by berth or because the slot's name does not resolve).
fn live_slots(s: &Stack) -> Vec<String> {
    s.haproxy_admin("show stat -1 4 -1")
        .lines()
        .filter(|l| l.starts_with("web,s") && !l.contains(",MAINT"))
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
    maintenance_survives_a_restart(&s);
    eprintln!(
        "maintenance across two HAProxy restarts took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    restarted_haproxy_serves_the_live_release(&s, "v1");
    eprintln!("HAProxy restart took {:?}", t.elapsed());
    let t = Instant::now();
    stop_start_never_reaches_the_old_address(&s, "v1");
    eprintln!("stop + start with an impostor took {:?}", t.elapsed());
    let t = Instant::now();
    down_up_then_a_swap(&s);
    eprintln!("down + up and a swap took {:?}", t.elapsed());
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
        serves_the_page(s, "Back at 5 o&#39;clock; &#36;5 &#123;x&#125; &#92; é", "");
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

/// Maintenance is on: any path answers 503 with the page holding `message` (as HTML) and
/// Retry-After 30, while the health paths reach the app; `context` goes into failures.
fn serves_the_page(s: &Stack, message: &str, context: &str) {
    let (status, _, page) = berth_e2e::get(&s.url("/anything")).unwrap();
    assert_eq!(status, 503, "{page}\n{context}");
    assert!(page.contains(message), "{page}\n{context}");
    let agent = berth_core::http::agent(Duration::from_secs(5));
    let r = agent.get(&s.url("/version")).call().unwrap();
    assert_eq!(r.headers().get("retry-after").unwrap(), "30");
    assert_eq!(berth_e2e::get(&s.url("/healthz")).unwrap().0, 200);
    assert_eq!(berth_e2e::get(&s.url("/readyz")).unwrap().0, 200);
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

/// Maintenance on, then `docker compose restart proxy`: HAProxy reads the map file berth
/// rewrote after the runtime change (examples/haproxy mounts its directory), so once it
/// answers again it serves the same page; off, restart: the app again. Before, a
/// restart read the shipped (empty) file and ended the window.
fn maintenance_survives_a_restart(s: &Stack) {
    let message = "Restarted; still $5 {x} \\ é";
    let (code, doc, err) = berth(
        s,
        "berth-swap",
        &["maintenance", "on", "--message", message],
    );
    assert_eq!(code, 0, "{err}");
    let st = doc["stages"].as_array().unwrap().last().unwrap().clone();
    let file = s.dir.join("haproxy/maintenance.map");
    assert_eq!(st["detail"]["map_file"], file.display().to_string(), "{st}");
    // Restarted, then until /version answers `want` (at most 60 s).
    let restarted = |what: &str, want: u16| {
        s.compose_ok(&["restart", "-t", "5", "proxy"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match berth_e2e::get(&s.url("/version")) {
                Ok((status, ..)) if status == want => break,
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                other => panic!("{what}: HAProxy did not answer within 60 s: {other:?}"),
            }
        }
    };
    restarted("restart during maintenance", 503);
    let text = std::fs::read_to_string(&file).unwrap();
    serves_the_page(s, "Restarted; still &#36;5 &#123;x&#125; &#92; é", &text);
    let (code, _, err) = berth(s, "berth-swap", &["maintenance", "off"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(berth_e2e::get(&s.url("/version")).unwrap().0, 200);
    restarted("restart after maintenance", 200);
    let (status, version, _) = berth_e2e::get(&s.url("/version")).unwrap();
    assert_eq!((status, version.as_str()), (200, "v1"));
}

/// `docker compose restart proxy` under keep-alive clients: HAProxy loads the server
/// state berth saved after the last switch, so once it answers again, every request is
/// answered by `serving` through the slot that served before (without the state, no
/// slot would be live and only the backup servers would answer).
fn restarted_haproxy_serves_the_live_release(s: &Stack, serving: &str) {
    recovers_serving(s, "HAProxy restart", serving, || {
        s.compose_ok(&["restart", "-t", "5", "proxy"]);
    });
    assert_eq!(live_slots(s).len(), 1, "{:?}", live_slots(s));
}

/// Under keep-alive clients, `disrupt` the stack; once the proxy answers 200 again,
/// every request (at least 50 in 2 s) is answered by `serving`: 0 failed.
fn recovers_serving(s: &Stack, what: &str, serving: &str, disrupt: impl FnOnce()) {
    let mix = Mix {
        max_time: Duration::from_secs(180),
        ..Mix::default()
    };
    let clients = Clients::start(&s.url(""), &mix);
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    disrupt();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match berth_e2e::get(&s.url("/version")) {
            Ok((200, _, _)) => break,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("{what}: no 200 within 60 s: {other:?}"),
        }
    }
    eprintln!(
        "{what}: answered 200 again {:?} after it began",
        t.elapsed()
    );
    // The clients' clock at the first 200 after the disruption.
    let since = clients.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let load = clients.stop();
    let after = load.window(since, Duration::MAX);
    eprintln!("{what}, all: {}", load.summary());
    eprintln!("{what}, after recovery: {}", after.summary());
    assert!(after.total() > 50, "{what}: {}", after.summary());
    assert_eq!(after.failed(), 0, "{what}: {}", after.summary());
    assert_eq!(
        after.by_version().into_keys().collect::<Vec<_>>(),
        [serving],
        "{what}: {}",
        after.summary()
    );
    assert_eq!(s.version(), serving);
}

/// The stack's network gets a fixed subnet (so a test can give a container a chosen
/// address): appended to the override before the stack starts.
fn fixed_subnet(s: &Stack) {
    let f = s.dir.join("compose.override.yaml");
    let mut text = std::fs::read_to_string(&f).unwrap();
    text.push_str(&format!(
        "\nnetworks:\n  default:\n    ipam:\n      config:\n        - subnet: {SUBNET}\n"
    ));
    std::fs::write(f, text).unwrap();
}

/// Not used by any other test or by Docker's default address pools.
const SUBNET: &str = "10.213.57.0/24";

/// An HTTP server that answers 200 to everything (HAProxy's check included), with the
/// version header `impostor`.
const IMPOSTOR: &str = "printf 'defaults\\n mode http\\n timeout client 5s\\n timeout server 5s\\n timeout connect 1s\\nfrontend f\\n bind :8080\\n http-request return status 200 content-type text/plain string impostor hdr x-demo-version impostor\\n' > /tmp/i.cfg && exec haproxy -db -f /tmp/i.cfg";

/// The web container's name and address now.
fn web_address(s: &Stack) -> (String, String) {
    let web = s.service_containers("web");
    assert_eq!(web.len(), 1, "{web:?}");
    let name = web[0].0.clone();
    let out = berth_e2e::run_ok(std::process::Command::new("docker").args([
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &name,
    ]));
    let ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (name, ip)
}

/// What a reboot does: `docker compose stop` and `start` of the whole stack, while
/// another container took the live web container's address. The slot names the
/// container, not the address: HAProxy finds it at its new address, and the impostor
/// never answers (with addresses restored from the saved state, it would).
fn stop_start_never_reaches_the_old_address(s: &Stack, serving: &str) {
    let (web, ip) = web_address(s);
    let impostor = format!("{}-impostor", s.project);
    recovers_serving(s, "stop + start", serving, || {
        s.compose_ok(&["stop", "-t", "5"]);
        berth_e2e::run_ok(std::process::Command::new("docker").args([
            "run",
            "-d",
            "--name",
            &impostor,
            // Removed with the stack, whatever happens here.
            "--label",
            &format!("com.docker.compose.project={}", s.project),
            "--network",
            &format!("{}_default", s.project),
            "--ip",
            &ip,
            "berth-fixture/haproxy:2.6",
            "sh",
            "-c",
            IMPOSTOR,
        ]));
        s.compose_ok(&["start"]);
    });
    let (again, moved) = web_address(s);
    assert_eq!(again, web);
    assert_ne!(moved, ip, "the impostor holds {ip}: web must have moved");
    // The trap was real: the old address answers, and not as web.
    let body = s.compose_ok(&[
        "exec",
        "-T",
        "proxy",
        "curl",
        "-sS",
        "-m",
        "5",
        &format!("http://{ip}:8080/readyz"),
    ]);
    assert_eq!(body.trim(), "impostor");
    assert_eq!(live_slots(s).len(), 1, "{:?}", live_slots(s));
    berth_e2e::run_ok(std::process::Command::new("docker").args(["rm", "-f", &impostor]));
}

/// `docker compose down` and `up`: new containers under new names, while the saved
/// server state names the old ones. No slot names anything but a web container (a name
/// that no longer resolves takes its slot out of service); the backup servers, on the
/// service's compose name, serve what compose started, 0 failed once HAProxy answers;
/// the next swap names the new container in a slot, 0 failed.
fn down_up_then_a_swap(s: &Stack) {
    let tag = s.env_value("BERTH_TAG").expect("BERTH_TAG in .env");
    recovers_serving(s, "down + up", &tag, || {
        s.compose_ok(&["down", "-t", "5"]);
        s.compose_ok(&["up", "-d", "--wait"]);
    });
    let (_, ip) = web_address(s);
    for l in live_slots(s) {
        assert!(l.contains(&format!(",{ip}:8080,")), "{l} (web is at {ip})");
    }
    let to = if tag == "v1" { "v2" } else { "v1" };
    let ((code, _, err), load) = s.under_clients(|| berth(s, "berth-swap", &["--tag", to, "web"]));
    eprintln!("swap {to} after down + up: {}", load.summary());
    assert_eq!(code, 0, "{err}");
    assert_eq!(load.failed(), 0, "{}", load.summary());
    assert_eq!(s.version(), to);
    assert_eq!(live_slots(s).len(), 1, "{:?}", live_slots(s));
}
