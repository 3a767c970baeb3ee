//! berth-swap and berth-rollback on the demo stack, against the real Docker Engine,
//! Compose v2 and nginx, under load: 8 clients that behave like real ones
//! (tests/src/clients.rs: keep-alive when the server allows it, every third request a
//! POST, nothing ever resent) sending requests through nginx from before the swap until
//! after it. The demo's nginx ships `keepalive_timeout 0`, so it closes every client
//! connection after its answer and each client opens a new one per request, as a real
//! client does. Every test has its own compose project and port.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::clients::{ClientReport, Clients, Method, Mix};
use berth_e2e::Stack;
use serde_json::Value;

/// 8 clients, each pausing 5 ms after every answer (steady load that leaves the 2-core
/// CI machine CPU for the deploy), every third request a POST.
fn mix() -> Mix {
    Mix {
        max_time: Duration::from_secs(180),
        ..Mix::default()
    }
}

/// Short timings for tests: the demo app drains in well under a second.
const FAST: &[&str] = &["--drain", "1s", "--stop-timeout", "5s", "--timeout", "30s"];

/// Start the stack at v1 with the database already at schema 2 (v2's migration is
/// backward compatible: v1 serves on it), as a deploy would after its migrate stage.
fn stack_at_v1(name: &str) -> Stack {
    let s = Stack::new(name);
    s.start_on_schema("v1", "v2");
    s
}

/// Run a berth command with empty stdin: (exit code, document, stderr).
fn berth(s: &Stack, prog: &str, args: &[&str]) -> (i32, Value, String) {
    let out = s
        .berth(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    parse(out)
}

fn parse(out: Output) -> (i32, Value, String) {
    let code = out.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let doc = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (code, doc, String::from_utf8_lossy(&out.stderr).to_string())
}

fn swap(s: &Stack, tag: &str, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec!["--tag", tag];
    args.extend_from_slice(FAST);
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--worker", "worker", "web", "worker"]);
    berth(s, "berth-swap", &args)
}

/// Load on `/version` through nginx for the whole of `f`, with half a second of traffic
/// on either side (hundreds of requests). Returns f's result, the load report, and the
/// load time when f returned.
fn under_load<T>(s: &Stack, f: impl FnOnce() -> T) -> (T, ClientReport, Duration) {
    LOAD_STARTED_UNIX_MS.with(|c| c.set(unix_ms()));
    let load = Clients::start(&s.url(""), &mix());
    std::thread::sleep(Duration::from_millis(500));
    let out = f();
    let done = load.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    (out, load.stop(), done)
}

/// No request failed (no transport error, no 5xx), GETs and POSTs alike, and both were
/// sent.
fn no_failed(load: &ClientReport) {
    eprintln!("load: {}", load.summary());
    assert_eq!(load.failed(), 0, "{}", load.summary());
    let sent = |m| load.attempts.iter().any(|a| a.method == m);
    assert!(
        sent(Method::Get) && sent(Method::Post),
        "{}",
        load.summary()
    );
}

thread_local! {
    /// Wall-clock time (Unix ms) at which this thread's last `under_load` began.
    static LOAD_STARTED_UNIX_MS: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// An RFC 3339 time from a document as load time (since the last `under_load` began).
fn load_time(rfc3339: &str) -> Duration {
    let t = berth_core::time::parse(rfc3339).expect("an RFC 3339 time");
    let rel = t.as_millisecond() - LOAD_STARTED_UNIX_MS.with(|c| c.get());
    Duration::from_millis(rel.max(0) as u64)
}

fn versions(s: &Stack, service: &str) -> Vec<String> {
    s.service_containers(service)
        .into_iter()
        .map(|(_, image)| image)
        .collect()
}

fn stage<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["stages"]
        .as_array()
        .and_then(|a| a.iter().rev().find(|st| st["stage"] == name))
        .unwrap_or_else(|| panic!("no stage {name} in {doc}"))
}

fn journal_is_empty(s: &Stack) -> bool {
    std::fs::read_dir(s.state_dir().join("swap"))
        .map(|d| d.count() == 0)
        .unwrap_or(true)
}

/// Wait until GET `path` through nginx answers 200 (after a restart).
fn wait_serving(s: &Stack, path: &str, limit: Duration) -> (u16, String, String) {
    let t = Instant::now();
    loop {
        if let Ok(r) = berth_e2e::get(&s.url(path)) {
            if r.0 == 200 || t.elapsed() > limit {
                return r;
            }
        }
        assert!(t.elapsed() < limit, "{path} not served within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// With web at v1 and nothing in the ledger: v1 to v2 under load fails no request, then
/// the release is durable across `up -d`, a restart and `down` + `up`.
fn v1_to_v2_zero_failed_requests_then_durable_across_restart_and_up(s: &Stack) {
    let ((code, doc, err), load, done) = under_load(s, || swap(s, "v2", &[]));
    assert_eq!(code, 0, "{err}");
    no_failed(&load);
    assert!(load.total() > 100, "{}", load.summary());
    assert_eq!(
        load.versions_after(done),
        ["v2".to_string()].into(),
        "{}",
        load.summary()
    );
    // Both versions served during the test: the swap happened under this load.
    assert!(load.by_version().contains_key("v1"), "{}", load.summary());
    // Every answer after the switch came from v2. `switched_at` is when nginx's new workers
    // serve; a sample is timed when its answer arrived, and a request sent before the
    // switch may answer after it (an old worker finishes it), so allow 1 s.
    let switched = load_time(
        stage(&doc, "swap")["detail"]["switched_at"]
            .as_str()
            .unwrap(),
    );
    let after_switch = load.versions_after(switched + Duration::from_secs(1));
    assert_eq!(
        after_switch,
        ["v2".to_string()].into(),
        "{}",
        load.summary()
    );
    assert!(
        switched < done,
        "switched {switched:?}, swap returned {done:?}"
    );

    // The document: previous tag, images with IDs, old and new containers, timings.
    assert_eq!(doc["previous_tag"], "v1");
    assert_eq!(doc["services"][0]["image"], "berth-demo/app:v2");
    assert!(doc["services"][0]["image_id"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    let st = stage(&doc, "swap");
    assert_eq!(st["status"], "ok");
    let web = &st["detail"]["services"][0];
    assert_eq!(web["old_containers"].as_array().unwrap().len(), 1);
    assert_eq!(web["new_containers"].as_array().unwrap().len(), 1);
    for k in ["ready_ms", "switch_ms", "drain_ms", "total_ms"] {
        assert!(st["detail"][k].is_u64(), "{k} in {st}");
    }
    assert!(st["detail"]["switched_at"].is_string());

    // Durable: .env, compose ps, the upstream file, the ledger; no journal left.
    assert_eq!(s.env_value("BERTH_TAG").as_deref(), Some("v2"));
    assert_eq!(versions(s, "web"), ["berth-demo/app:v2"]);
    assert_eq!(versions(s, "worker"), ["berth-demo/app:v2"]);
    // Once the old containers are gone the upstream names the service itself (only the
    // new containers answer to it), so a later `down` + `up` still finds the app.
    let upstream = std::fs::read_to_string(s.dir.join("nginx/berth/upstream-web.conf")).unwrap();
    assert!(upstream.contains("server web:8080;"), "{upstream}");
    assert!(journal_is_empty(s));
    let ledger = std::fs::read_to_string(s.state_dir().join("releases.jsonl")).unwrap();
    assert_eq!(ledger.lines().count(), 1);

    // A plain `docker compose up -d` changes nothing: same containers, none recreated.
    let before = s.container_ids();
    let out = s.compose().args(["up", "-d"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{said}");
    assert!(!said.contains("Recreate"), "{said}");
    let mut after = s.container_ids();
    let mut b = before.clone();
    b.sort();
    after.sort();
    assert_eq!(b, after, "up -d changed containers: {said}");

    // What a reboot does: stop everything, start it again. Addresses may change; nginx
    // resolves the container names again and the new version serves.
    s.compose_ok(&["stop", "-t", "5"]);
    s.compose_ok(&["start"]);
    let (status, version, _) = wait_serving(s, "/version", Duration::from_secs(60));
    assert_eq!((status, version.as_str()), (200, "v2"));
    let out = s.compose().args(["up", "-d"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!said.contains("Recreate"), "{said}");
    let mut again = s.container_ids();
    again.sort();
    assert_eq!(b, again, "up -d after a restart changed containers: {said}");

    // Containers removed and created afresh (numbered from 1 again): still v2 via nginx.
    s.compose_ok(&["down", "-t", "5"]);
    s.compose_ok(&["up", "-d", "--wait"]);
    let (status, version, _) = wait_serving(s, "/version", Duration::from_secs(60));
    assert_eq!((status, version.as_str()), (200, "v2"));
}

/// Failed swaps first, then (on the same stack: one start-up less for CI) the good one:
/// [`v1_to_v2_zero_failed_requests_then_durable_across_restart_and_up`].
#[test]
fn failed_swaps_change_nothing_broken_3_missing_image_2_nginx_t_3_dry_run_0_then_v1_to_v2() {
    let s = Stack::new("swap-broken");
    // Nothing runs yet: preflight finds no nginx, before anything is changed.
    let (code, _, err) = berth(&s, "berth-swap", &["--tag", "v2", "--dry-run", "web"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not running"), "{err}");
    s.start_on_schema("v1", "v2");
    let ids = s.container_ids();
    let (code, doc, err) = berth(&s, "berth-swap", &["--tag", "v2", "--dry-run", "web"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("would run: docker compose"), "{err}");
    assert!(err.contains("--scale web=2"), "{err}");
    assert_eq!(stage(&doc, "swap")["status"], "skipped");
    assert_eq!(s.container_ids(), ids);
    assert_eq!(s.env_value("BERTH_TAG").as_deref(), Some("v1"));
    assert!(!s.state_dir().join("releases.jsonl").exists());

    let ((code, doc, err), load, _) = under_load(&s, || swap(&s, "broken", &[]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("berth-swap: error: "), "{err}");
    assert!(
        err.contains("refuses to start"),
        "the container's log tail: {err}"
    );
    no_failed(&load);
    assert_eq!(
        load.by_version().keys().collect::<Vec<_>>(),
        ["v1"],
        "{}",
        load.summary()
    );
    assert_eq!(stage(&doc, "swap")["exit_code"], 3);
    // Nothing new left behind; v1 as before.
    assert_eq!(versions(&s, "web"), ["berth-demo/app:v1"]);
    assert_eq!(versions(&s, "worker"), ["berth-demo/app:v1"]);
    let all = Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Image}}", "--filter"])
        .arg(format!("label=com.docker.compose.project={}", s.project))
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&all.stdout).contains("broken"),
        "{}",
        String::from_utf8_lossy(&all.stdout)
    );
    assert_eq!(s.env_value("BERTH_TAG").as_deref(), Some("v1"));
    assert!(journal_is_empty(&s));

    // An image that cannot be had: 2, nothing changed.
    let (code, _, err) = swap(&s, "nosuchtag", &[]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(versions(&s, "web"), ["berth-demo/app:v1"]);

    // nginx -t rejects the new configuration (here: an upstream file that nginx includes
    // inside its server block, where `upstream` is not allowed): 3, the file as it was,
    // the new containers gone, v1 serving.
    let wrong = s.dir.join("nginx/berth/server-web.conf");
    std::fs::write(&wrong, "# berth test\n").unwrap();
    let ((code, _, err), load, _) = under_load(&s, || {
        berth(
            &s,
            "berth-swap",
            &[
                "--tag",
                "v2",
                "--drain",
                "1s",
                "--upstream-file",
                "nginx/berth/server-{service}.conf",
                "web",
            ],
        )
    });
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("nginx -t rejected"), "{err}");
    no_failed(&load);
    assert_eq!(std::fs::read_to_string(&wrong).unwrap(), "# berth test\n");
    assert_eq!(versions(&s, "web"), ["berth-demo/app:v1"]);
    assert_eq!(wait_serving(&s, "/version", Duration::from_secs(5)).1, "v1");
    assert!(journal_is_empty(&s));

    std::fs::remove_file(&wrong).unwrap();
    assert!(!s.state_dir().join("releases.jsonl").exists());
    v1_to_v2_zero_failed_requests_then_durable_across_restart_and_up(&s);
}

/// Three scenarios on one stack (two start-ups less for CI), each from v1 (web and
/// worker) on schema 2 with no swap journal, which is asserted before each:
/// [`sick_release_is_rolled_back_after_the_switch_and_standalone_rollback_works`] first
/// (it reads the ledger, so on a fresh stack), then
/// [`maintenance_under_load_then_every_switch_is_done_when_the_new_configuration_answers`]
/// and [`kill_9_mid_swap_keeps_serving_and_the_next_run_converges`].
#[test]
fn sick_rolled_back_then_maintenance_and_switch_timing_then_kill_9_mid_swap_converges() {
    let t0 = Instant::now();
    let s = stack_at_v1("swap-sick");
    eprintln!("stack up: {:?}", t0.elapsed());
    let t = Instant::now();
    sick_release_is_rolled_back_after_the_switch_and_standalone_rollback_works(&s);
    eprintln!("sick and rollback: {:?}", t.elapsed());
    assert_at_v1(&s, "after the rollbacks");
    let t = Instant::now();
    maintenance_under_load_then_every_switch_is_done_when_the_new_configuration_answers(&s);
    // The last round's swap was killed after its switch: back to v1 as between rounds.
    let (code, _, err) = berth(&s, "berth-swap", &["--converge"]);
    assert_eq!(code, 0, "{err}");
    eprintln!("maintenance and switches: {:?}", t.elapsed());
    assert_at_v1(&s, "after the maintenance rounds");
    let t = Instant::now();
    kill_9_mid_swap_keeps_serving_and_the_next_run_converges(&s);
    eprintln!("kill -9 mid-swap: {:?}", t.elapsed());
    eprintln!("whole test: {:?}", t0.elapsed());
}

/// The state every scenario of the shared stack starts from: web and worker at v1
/// (`.env` too), no swap journal, v1 answering through nginx.
fn assert_at_v1(s: &Stack, when: &str) {
    assert_eq!(versions(s, "web"), ["berth-demo/app:v1"], "{when}");
    assert_eq!(versions(s, "worker"), ["berth-demo/app:v1"], "{when}");
    assert_eq!(s.env_value("BERTH_TAG").as_deref(), Some("v1"), "{when}");
    assert!(journal_is_empty(s), "{when}: a swap journal is left");
    assert_eq!(
        wait_serving(s, "/version", Duration::from_secs(5)).1,
        "v1",
        "{when}"
    );
}

/// From v1 on schema 2, nothing in the ledger: a sick release rolled back after the
/// switch; then the standalone rollback (to the newest good release, `--to`).
fn sick_release_is_rolled_back_after_the_switch_and_standalone_rollback_works(s: &Stack) {
    let smoke = s.url("/smoke");
    let ((codes, doc, errs), load, done) = under_load(s, || {
        let mut args = vec!["--tag", "sick"];
        args.extend_from_slice(FAST);
        args.extend_from_slice(&["--worker", "worker", "web", "worker"]);
        let mut a = s
            .berth("berth-swap")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut b = s
            .berth("berth-healthwait")
            .args(["--url", &smoke, "--timeout", "2s", "--stage", "smoke"])
            .stdin(a.stdout.take().unwrap())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let c = s
            .berth("berth-rollback")
            .args(FAST)
            .stdin(b.stdout.take().unwrap())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let oc = c.wait_with_output().unwrap();
        let ob = b.wait_with_output().unwrap();
        let oa = a.wait_with_output().unwrap();
        let codes = [&oa, &ob, &oc].map(|o| o.status.code().unwrap_or(-1));
        let errs: String = [&oa, &ob, &oc]
            .iter()
            .map(|o| String::from_utf8_lossy(&o.stderr).to_string())
            .collect();
        let doc: Value = serde_json::from_slice(&oc.stdout).unwrap_or(Value::Null);
        (codes, doc, errs)
    });
    assert_eq!(codes, [0, 4, 4], "{errs}");
    no_failed(&load);
    assert_eq!(
        load.versions_after(done),
        ["v1".to_string()].into(),
        "{}",
        load.summary()
    );
    let rb = stage(&doc, "rollback");
    assert_eq!(
        (rb["status"].as_str(), rb["exit_code"].as_i64()),
        (Some("ok"), Some(4))
    );
    assert_eq!(rb["detail"]["to"], "v1");
    assert_eq!(s.env_value("BERTH_TAG").as_deref(), Some("v1"));
    assert_eq!(versions(s, "web"), ["berth-demo/app:v1"]);
    assert_eq!(versions(s, "worker"), ["berth-demo/app:v1"]);
    assert!(journal_is_empty(s));
    // The ledger no longer counts the sick release as good: last line of its deploy wins.
    let ledger = std::fs::read_to_string(s.state_dir().join("releases.jsonl")).unwrap();
    let last: Value = serde_json::from_str(ledger.lines().last().unwrap()).unwrap();
    assert_eq!(last["tag"], "sick");
    assert_eq!(stage(&last, "rollback")["exit_code"], 4);

    // Standalone: two good releases (v2, then v1 again; each good once its report says
    // so: a swap's own ledger line is provisional), then `berth-rollback web worker`
    // goes back to v2, the newest good release that is not the one running.
    for tag in ["v2", "v1"] {
        let (code, doc, err) = swap(s, tag, &[]);
        assert_eq!(code, 0, "{err}");
        let out =
            berth_e2e::output_with_stdin(&mut s.berth("berth-report"), doc.to_string().as_bytes());
        assert!(out.status.success());
    }
    let mut args = FAST.to_vec();
    args.extend_from_slice(&["--worker", "worker", "web", "worker"]);
    let ((code, doc, err), load, done) = under_load(s, || berth(s, "berth-rollback", &args));
    assert_eq!(code, 0, "{err}");
    no_failed(&load);
    assert_eq!(load.versions_after(done), ["v2".to_string()].into());
    assert_eq!(doc["tag"], "v2");
    assert_eq!(stage(&doc, "rollback")["detail"]["from"], "v1");
    assert_eq!(s.env_value("BERTH_TAG").as_deref(), Some("v2"));
    // v1 is now marked rolled back and sick failed: nothing good but the running v2...
    let (code, _, err) = berth(s, "berth-rollback", &args);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("pass --to"), "{err}");
    // ...and --to goes to any tag.
    let mut to = vec!["--to", "v1"];
    to.extend_from_slice(&args);
    let (code, _, err) = berth(s, "berth-rollback", &to);
    assert_eq!(code, 0, "{err}");
    assert_eq!(wait_serving(s, "/version", Duration::from_secs(5)).1, "v1");
}

/// RPUSH job ids onto demo:jobs through redis-cli in the redis container.
fn enqueue(s: &Stack, ids: &[String]) {
    let mut args = vec!["exec", "-T", "redis", "redis-cli", "RPUSH", "demo:jobs"];
    args.extend(ids.iter().map(String::as_str));
    s.compose_ok(&args);
}

fn redis(s: &Stack, args: &[&str]) -> String {
    let mut a = vec!["exec", "-T", "redis", "redis-cli"];
    a.extend_from_slice(args);
    s.compose_ok(&a)
}

/// The worker swap (every job exactly once), then on the same stack (one start-up less
/// for CI) the deploy lock: [`second_swap_while_one_runs_exits_75_and_changes_nothing`].
#[test]
fn worker_swap_processes_every_job_exactly_once_then_a_second_swap_exits_75() {
    let s = Stack::new("swap-worker");
    // Slower jobs, so that some are in hand when the old worker gets SIGTERM (set before
    // the start: recreating the worker for it cost CI a stop and a health wait).
    s.set_env("DEMO_JOB_MS", "20");
    s.start_on_schema("v1", "v2");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut sent: Vec<String> = Vec::new();
    let code = std::thread::scope(|sc| {
        let pusher = sc.spawn(|| {
            let mut all = Vec::new();
            let mut batch = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && batch < 400 {
                let ids: Vec<String> = (0..10).map(|i| format!("b{batch}-{i}")).collect();
                enqueue(&s, &ids);
                all.extend(ids);
                batch += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            all
        });
        std::thread::sleep(Duration::from_secs(2));
        let (code, _, err) = berth(
            &s,
            "berth-swap",
            &[
                "--tag",
                "v2",
                "--drain",
                "1s",
                "--timeout",
                "30s",
                "--worker",
                "worker",
                "worker",
            ],
        );
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        sent = pusher.join().unwrap();
        (code, err)
    });
    assert_eq!(code.0, 0, "{}", code.1);
    assert_eq!(versions(&s, "worker"), ["berth-demo/app:v2"]);
    // Wait until the queue and every processing list are empty.
    let t = Instant::now();
    loop {
        let left: usize = redis(&s, &["LLEN", "demo:jobs"]).trim().parse().unwrap();
        let processing = redis(&s, &["--scan", "--pattern", "demo:processing:*"]);
        let busy: usize = processing
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|k| {
                redis(&s, &["LLEN", k.trim()])
                    .trim()
                    .parse::<usize>()
                    .unwrap()
            })
            .sum();
        if left == 0 && busy == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{left} queued, {busy} in processing"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let done = redis(&s, &["LRANGE", "demo:done", "0", "-1"]);
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for l in done.lines().map(str::trim).filter(|l| !l.is_empty()) {
        *seen.entry(l).or_default() += 1;
    }
    let lost: Vec<&String> = sent
        .iter()
        .filter(|j| !seen.contains_key(j.as_str()))
        .collect();
    let twice: Vec<(&&str, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(sent.len() >= 60, "only {} jobs sent", sent.len());
    assert!(
        lost.is_empty(),
        "{} of {} jobs lost: {:?}",
        lost.len(),
        sent.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(twice.is_empty(), "processed more than once: {twice:?}");
    assert_eq!(seen.len(), sent.len());
    assert_eq!(versions(&s, "web"), ["berth-demo/app:v1"]);
    second_swap_while_one_runs_exits_75_and_changes_nothing(&s);
}

/// With web at v1: a second swap while one runs exits 75 and changes nothing; with
/// `--lock-wait` it waits, then runs.
fn second_swap_while_one_runs_exits_75_and_changes_nothing(s: &Stack) {
    let mut first = s
        .berth("berth-swap")
        .args([
            "--tag",
            "v2",
            "--drain",
            "2s",
            "--stop-timeout",
            "5s",
            "web",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the first one holds the lock.
    let lock = s.state_dir().join("locks/deploy.lock");
    let t = Instant::now();
    while std::fs::metadata(&lock).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the first swap never took the lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let containers = s.container_ids();
    let (code, doc, err) = berth(s, "berth-swap", &["--tag", "broken", "web"]);
    assert_eq!(code, 75, "{err}");
    assert!(err.contains("lock"), "{err}");
    assert_eq!(stage(&doc, "swap")["exit_code"], 75);
    // The second one created nothing (the first may have by now; none is `broken`).
    let imgs = Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Image}}", "--filter"])
        .arg(format!("label=com.docker.compose.project={}", s.project))
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&imgs.stdout).contains("broken"));
    assert!(!containers.is_empty());
    let status = first.wait().unwrap();
    assert!(status.success());
    assert_eq!(versions(s, "web"), ["berth-demo/app:v2"]);
    // With --lock-wait the second one waits and then runs.
    let mut holder = s
        .berth("berth-swap")
        .args([
            "--tag",
            "v1",
            "--drain",
            "2s",
            "--stop-timeout",
            "5s",
            "web",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while std::fs::metadata(&lock).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(t.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, _, err) = berth(
        s,
        "berth-swap",
        &["--tag", "v2", "--lock-wait", "60s", "--drain", "1s", "web"],
    );
    assert!(holder.wait().unwrap().success());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("waiting for the deploy lock"), "{err}");
    assert_eq!(versions(s, "web"), ["berth-demo/app:v2"]);
}

fn kill9(child: &mut std::process::Child) {
    // Child::kill is SIGKILL on Unix: nothing of berth-swap runs after it.
    child.kill().unwrap();
    let _ = child.wait();
}

fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// From v1: killed while waiting for readiness, then killed during the drain; each next
/// run converges.
fn kill_9_mid_swap_keeps_serving_and_the_next_run_converges(s: &Stack) {
    let upstream = s.dir.join("nginx/berth/upstream-web.conf");
    let journal = s.state_dir().join("swap/web.json");
    let spawn = |tag: &str, drain: &str| {
        s.berth("berth-swap")
            .args([
                "--tag",
                tag,
                "--drain",
                drain,
                "--stop-timeout",
                "5s",
                "--timeout",
                "60s",
                "web",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let ((), load, _) = under_load(s, || {
        // 1. Killed while waiting for a new container that never gets ready.
        let mut c = spawn("unready", "1s");
        wait_for(Duration::from_secs(30), "the unready container", || {
            versions(s, "web").iter().any(|i| i.ends_with(":unready"))
        });
        kill9(&mut c);
        assert!(journal.exists());
        // 2. The next run converges backwards (removes it), then swaps to v2; killed
        //    during the drain, after nginx moved to v2.
        let mut c = spawn("v2", "30s");
        wait_for(Duration::from_secs(60), "the switch to v2", || {
            std::fs::read_to_string(&journal)
                .map(|j| j.contains("\"switched\""))
                .unwrap_or(false)
        });
        assert!(!versions(s, "web").iter().any(|i| i.ends_with(":unready")));
        kill9(&mut c);
        // Old v1 and new v2 both still run; nginx sends everything to v2.
        assert_eq!(versions(s, "web").len(), 2);
        // 3. The next run converges forwards (stops v1, records v2), then swaps again.
        let (code, _, err) = berth(
            s,
            "berth-swap",
            &[
                "--tag",
                "v2",
                "--drain",
                "1s",
                "--stop-timeout",
                "5s",
                "web",
            ],
        );
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("converging the interrupted swap"), "{err}");
    });
    no_failed(&load);
    assert_eq!(versions(s, "web"), ["berth-demo/app:v2"]);
    assert_eq!(s.env_value("BERTH_TAG").as_deref(), Some("v2"));
    assert!(!journal.exists());
    let up = std::fs::read_to_string(&upstream).unwrap();
    assert!(up.contains("server web:8080;"), "{up}");
}

/// Maintenance on and off under load: only 503s in between, no connection errors.
fn maintenance_on_and_off_under_load(s: &Stack) {
    let file = s.dir.join("nginx/berth/server-maintenance.conf");
    let load = Clients::start(&s.url(""), &mix());
    std::thread::sleep(Duration::from_secs(1));
    let (code, doc, err) = berth(
        s,
        "berth-swap",
        &[
            "maintenance",
            "on",
            "--message",
            "Back at 5 o'clock, $5 {x}",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(file.exists());
    assert_eq!(stage(&doc, "maintenance")["detail"]["state"], "on");
    // Idempotent.
    let (code, doc2, err) = berth(s, "berth-swap", &["maintenance", "on"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(stage(&doc2, "maintenance")["detail"]["already"], true);
    let page = berth_core::http::get(
        &berth_core::http::agent(Duration::from_secs(5)),
        &s.url("/"),
        &[],
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(page.status, 503);
    assert!(page.body.contains("5 o&#39;clock, &#36;5"), "{}", page.body);
    let agent = berth_core::http::agent(Duration::from_secs(5));
    let r = agent.get(&s.url("/anything")).call().unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers().get("retry-after").unwrap(), "30");
    assert_eq!(berth_e2e::get(&s.url("/healthz")).unwrap().0, 200);
    assert_eq!(berth_e2e::get(&s.url("/readyz")).unwrap().0, 200);
    std::thread::sleep(Duration::from_secs(1));
    let (code, doc, err) = berth(s, "berth-swap", &["maintenance", "off"]);
    assert_eq!(code, 0, "{err}");
    let d = &stage(&doc, "maintenance")["detail"];
    assert_eq!(d["state"], "off");
    assert!(d["window_ms"].as_u64().unwrap() >= 1000, "{d}");
    assert!(!file.exists());
    let (code, _, err) = berth(s, "berth-swap", &["maintenance", "off"]);
    assert_eq!(code, 0, "{err}");
    std::thread::sleep(Duration::from_secs(1));
    let off_at = load.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let report = load.stop();
    eprintln!("load: {}", report.summary());
    report.assert_app_or_maintenance_page();
    let after = report.window(off_at, Duration::MAX);
    assert!(
        after.total() > 0 && after.failed() == 0,
        "{}",
        after.summary()
    );
}

/// Maintenance on and off under load (see [`maintenance_on_and_off_under_load`]), then, on
/// the same stack: a switch is done when the new configuration answers: one request sent
/// the instant each command returns sees it. `nginx -s reload` returns before nginx's new
/// workers serve, so each switch waits for them. ROUNDS times each: maintenance on (503
/// page), off (the app), and a swap of web to v2 killed right after its switch
/// (`BERTH_FAULT_KILL_AFTER=reload`: the moment it would record `switched_at` and start
/// draining; `--converge` then goes back to v1 for the next round).
fn maintenance_under_load_then_every_switch_is_done_when_the_new_configuration_answers(s: &Stack) {
    const ROUNDS: usize = 5;
    maintenance_on_and_off_under_load(s);
    let took = |err: &str| -> Vec<String> {
        err.lines()
            .filter_map(|l| l.split_once("nginx serves the new configuration ("))
            .map(|(_, t)| t.trim_end_matches(" after the reload)").to_string())
            .collect()
    };
    let mut wrong = Vec::new();
    let mut check =
        |what: &str, i: usize, path: &str, want: (u16, &str)| match berth_e2e::get(&s.url(path)) {
            Ok((status, version, _)) if (status, version.as_str()) == want => {}
            Ok((status, version, _)) => {
                wrong.push(format!("{what} #{i}: {status} {version:?}, want {want:?}"))
            }
            Err(e) => wrong.push(format!("{what} #{i}: {e}")),
        };
    for i in 0..ROUNDS {
        let (code, _, err) = berth(s, "berth-swap", &["maintenance", "on"]);
        assert_eq!(code, 0, "{err}");
        check("maintenance on", i, "/version", (503, ""));
        eprintln!("maintenance on #{i}: switched in {:?}", took(&err));
        let (code, _, err) = berth(s, "berth-swap", &["maintenance", "off"]);
        assert_eq!(code, 0, "{err}");
        check("maintenance off", i, "/version", (200, "v1"));
        eprintln!("maintenance off #{i}: switched in {:?}", took(&err));
    }
    for i in 0..ROUNDS {
        if i > 0 {
            // Back to v1 (the killed swap had not drained: converge undoes it), so that
            // the next swap's first reload is its switch.
            let (code, _, err) = berth(s, "berth-swap", &["--converge"]);
            assert_eq!(code, 0, "{err}");
        }
        let mut args = vec!["--tag", "v2"];
        args.extend_from_slice(FAST);
        args.extend_from_slice(&["--worker", "worker", "web"]);
        let out = s
            .berth("berth-swap")
            .args(&args)
            .env(berth_core::fault::VAR, "reload")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("killing myself"), "swap #{i}: {err}");
        check("swap", i, "/version", (200, "v2"));
        eprintln!("swap #{i}: switched in {:?}", took(&err));
    }
    assert!(
        wrong.is_empty(),
        "{} of {}: {wrong:#?}",
        wrong.len(),
        3 * ROUNDS
    );
}

/// A swapped service that publishes a fixed host port cannot run twice: preflight and
/// the swap say which service and port, and what to do instead (exit 1), from compose's
/// own normalised configuration, before any container exists.
#[test]
fn a_service_publishing_a_host_port_is_refused_in_preflight_and_swap() {
    let s = Stack::new("swap-ports");
    let port = berth_e2e::free_port();
    std::fs::write(
        s.dir.join("compose.override.yaml"),
        format!("services:\n  web:\n    ports:\n      - \"127.0.0.1:{port}:8080\"\n"),
    )
    .unwrap();
    let want = format!(
        "service web publishes host port 127.0.0.1:{port}->8080, so a second container of it \
         cannot start beside the running one during a swap: publish the port on the proxy \
         service instead and give web only `expose:` (or no ports)"
    );
    for args in [
        &["--tag", "v2", "preflight", "web"][..],
        &["--tag", "v2", "--worker", "worker", "web", "worker"],
    ] {
        let (code, _, err) = berth(&s, "berth-swap", args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(&want), "{args:?}: {err}");
    }
    assert!(s.container_ids().is_empty(), "{:?}", s.container_ids());
}
