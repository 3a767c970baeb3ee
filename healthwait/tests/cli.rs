//! berth-healthwait's command line against local HTTP servers and TCP ports (no Docker
//! here; containers are tested end to end in tests/tests/healthwait.rs).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use berth_e2e::TestServer;
use serde_json::{json, Value};

/// The binary with a clean environment and empty stdin (a new document).
fn cmd() -> Command {
    let mut c = Command::cargo_bin("berth-healthwait").unwrap();
    for (k, _) in std::env::vars() {
        if k.starts_with("BERTH_") {
            c.env_remove(k);
        }
    }
    let dir = std::env::temp_dir();
    c.env("HOME", "/nonexistent")
        .current_dir(dir)
        .write_stdin("");
    c
}

fn doc_of(out: &[u8]) -> Value {
    serde_json::from_slice(out).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}",
            String::from_utf8_lossy(out)
        )
    })
}

fn record(doc: &Value) -> &Value {
    let stages = doc["stages"].as_array().expect("stages");
    assert_eq!(stages.len(), 1, "{doc}");
    &stages[0]
}

#[test]
fn ready_after_a_delay() {
    let start = Instant::now();
    let server = TestServer::start(move |_| {
        if start.elapsed() < Duration::from_millis(800) {
            (503, r#"{"status":"starting"}"#.into())
        } else {
            (200, r#"{"status":"ok"}"#.into())
        }
    });
    let out = cmd()
        .args([
            "--url",
            &server.url("/readyz"),
            "--timeout",
            "20s",
            "--interval",
            "100ms",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = doc_of(&out.stdout);
    assert_eq!(doc["schema"], "berth/1");
    let rec = record(&doc);
    assert_eq!(rec["stage"], "healthwait");
    assert_eq!(rec["status"], "ok");
    assert_eq!(rec["exit_code"], 0);
    let t = &rec["detail"]["targets"][0];
    assert_eq!(t["ready"], true);
    assert!(t["attempts"].as_u64().unwrap() >= 2, "{t}");
    assert!(t["time_to_ready_ms"].as_u64().unwrap() >= 700, "{t}");
    assert_eq!(t["last_error"], "status 503 (expected 200-299)");
    // One progress line per state change, not one per probe.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("status 503").count(), 1, "{err}");
    assert!(err.contains("ready after"), "{err}");
}

#[test]
fn never_ready_exits_4_with_the_reason() {
    let server = TestServer::start(|_| (503, "{}".into()));
    let out = cmd()
        .args([
            "--url",
            &server.url("/readyz"),
            "--timeout",
            "1s",
            "--interval",
            "100ms",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let doc = doc_of(&out.stdout);
    let rec = record(&doc);
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["exit_code"], 4);
    assert!(
        rec["error"].as_str().unwrap().contains("status 503"),
        "{rec}"
    );
    assert_eq!(rec["detail"]["targets"][0]["ready"], false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("berth-healthwait: error: not ready"), "{err}");
}

#[test]
fn json_status_and_body_assertions() {
    let server = TestServer::start(|head| {
        if head.starts_with("GET /nocontent") {
            (204, String::new())
        } else {
            (
                200,
                r#"{"status":"ok","db":{"ok":true},"version":"v2"}"#.into(),
            )
        }
    });
    let url = server.url("/readyz");
    cmd()
        .args([
            "--url",
            &url,
            "--expect-json",
            "status=ok",
            "--expect-json",
            "db.ok=true",
        ])
        .args(["--expect-body", "\"v2\""])
        .assert()
        .code(0);
    let out = cmd()
        .args([
            "--url",
            &url,
            "--expect-json",
            "db.ok=false",
            "--timeout",
            "600ms",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("json db.ok = true (expected false)"));
    let out = cmd()
        .args(["--url", &url, "--expect-body", "v3", "--timeout", "600ms"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    // Status sets: 204 passes the default 2xx, fails an explicit 200.
    let nc = server.url("/nocontent");
    cmd().args(["--url", &nc]).assert().code(0);
    cmd()
        .args([
            "--url",
            &nc,
            "--expect-status",
            "200,300-399",
            "--timeout",
            "500ms",
        ])
        .assert()
        .code(4);
}

#[test]
fn host_header_is_sent() {
    let server = TestServer::start(|head| {
        if head.to_ascii_lowercase().contains("host: shop.example.com") {
            (200, "{}".into())
        } else {
            (400, "bad host".into())
        }
    });
    let url = server.url("/");
    cmd()
        .args(["--url", &url, "--timeout", "500ms"])
        .assert()
        .code(4);
    cmd()
        .args(["--url", &url, "--header", "Host: shop.example.com"])
        .assert()
        .code(0);
}

#[test]
fn consecutive_successes_are_counted() {
    // Alternates ok / fail: --successes 2 can never be met, 1 can.
    let n = Arc::new(AtomicU32::new(0));
    let n2 = n.clone();
    let server = TestServer::start(move |_| {
        if n2.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
            (200, "{}".into())
        } else {
            (500, "{}".into())
        }
    });
    let url = server.url("/");
    let out = cmd()
        .args([
            "--url",
            &url,
            "--successes",
            "2",
            "--interval",
            "50ms",
            "--timeout",
            "1s",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(n.load(Ordering::SeqCst) >= 4);
    cmd()
        .args(["--url", &url, "--successes", "1"])
        .assert()
        .code(0);
}

#[test]
fn a_hanging_server_is_bounded_by_the_attempt_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    // Accepts (the kernel backlog does) but never answers.
    let out = cmd()
        .args([
            "--url",
            &url,
            "--attempt-timeout",
            "200ms",
            "--timeout",
            "1s",
            "--interval",
            "10ms",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let doc = doc_of(&out.stdout);
    let t = &record(&doc)["detail"]["targets"][0];
    assert!(
        t["attempts"].as_u64().unwrap() >= 3,
        "each attempt was cut at 200ms: {t}"
    );
    assert_eq!(t["last_error"], "timed out");
    drop(listener);
}

#[test]
fn tcp_targets_and_parallel_all_must_pass() {
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = berth_e2e::free_port();
    let a = open.local_addr().unwrap().to_string();
    cmd().args(["--tcp", &a]).assert().code(0);
    let out = cmd()
        .args([
            "--tcp",
            &a,
            "--tcp",
            &format!("127.0.0.1:{closed}"),
            "--timeout",
            "500ms",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let doc = doc_of(&out.stdout);
    let targets = record(&doc)["detail"]["targets"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(targets.len(), 2);
    assert_eq!(targets[0]["ready"], true);
    assert_eq!(targets[1]["ready"], false);
    assert_eq!(targets[1]["last_error"], "connection refused");
}

#[test]
fn runs_the_command_after_success() {
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = open.local_addr().unwrap().to_string();
    let out = cmd()
        .args(["--tcp", &a, "--", "sh", "-c", "echo ran:$0", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran:x\n");
    // Not ready: the command does not run.
    let closed = berth_e2e::free_port();
    let out = cmd()
        .args([
            "--tcp",
            &format!("127.0.0.1:{closed}"),
            "--timeout",
            "300ms",
            "--",
            "echo",
            "ran",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(out.stdout.is_empty());
}

fn failed_doc() -> Value {
    json!({
        "schema": "berth/1", "deploy_id": "20261122T031500Z-abc", "project": "shop",
        "tag": "abc", "previous_tag": "old", "services": [], "created_at": "2026-11-22T03:15:00.000Z",
        "stages": [{"stage": "backup", "status": "failed", "started_at": "2026-11-22T03:15:00.000Z",
                    "duration_ms": 5, "exit_code": 5, "detail": {}, "error": "disk full"}],
        "newer_field": [1, 2, 3]
    })
}

#[test]
fn an_earlier_failure_passes_through_untouched() {
    let server = TestServer::start(|_| (200, "{}".into()));
    let input = failed_doc().to_string();
    let out = cmd()
        .args(["--url", &server.url("/")])
        .write_stdin(input)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(doc_of(&out.stdout), failed_doc());
    assert!(server.seen.lock().unwrap().is_empty(), "nothing was probed");
    // One line says why, once.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("skipping").count(), 1, "{err}");
    assert!(
        err.contains("stage \"backup\" failed earlier (exit 5)"),
        "{err}"
    );
}

#[test]
fn a_piped_document_keeps_unknown_fields_and_gains_a_record() {
    let mut input = failed_doc();
    input["stages"] = json!([]);
    let server = TestServer::start(|_| (200, "{}".into()));
    let out = cmd()
        .args(["--url", &server.url("/"), "--stage", "smoke"])
        .write_stdin(input.to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let doc = doc_of(&out.stdout);
    assert_eq!(doc["newer_field"], json!([1, 2, 3]));
    assert_eq!(doc["deploy_id"], input["deploy_id"]);
    assert_eq!(record(&doc)["stage"], "smoke");
}

#[test]
fn bad_documents_exit_65_and_do_nothing() {
    let server = TestServer::start(|_| (200, "{}".into()));
    let mut wrong_type = failed_doc();
    wrong_type["stages"][0]["exit_code"] = json!("five");
    let mut wrong_schema = failed_doc();
    wrong_schema["schema"] = json!("berth/9");
    for (input, expect) in [
        ("{not json".to_string(), "not valid JSON"),
        ("[]".to_string(), "must be a JSON object"),
        (wrong_schema.to_string(), "berth/9"),
        (wrong_type.to_string(), "stages[0].exit_code"),
    ] {
        let out = cmd()
            .args(["--url", &server.url("/")])
            .write_stdin(input.clone())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(65), "{input}");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(expect), "{err}");
    }
    assert!(server.seen.lock().unwrap().is_empty());
}

#[test]
fn usage_errors_exit_64_never_2() {
    for args in [
        vec!["--bogus"],
        vec![],
        vec!["--url", "ftp://x"],
        vec!["--url", "http://127.0.0.1:8080 55865/"],
        vec!["--tcp", "nohost"],
        vec!["--url", "http://127.0.0.1:1/", "--timeout", "soon"],
        vec!["--url", "http://127.0.0.1:1/", "--expect-status", "2xx"],
        vec!["--url", "http://127.0.0.1:1/", "--expect-json", "nopath"],
        vec!["--url", "http://127.0.0.1:1/", "--successes", "0"],
        vec!["--url", "http://127.0.0.1:1/", "--header", "no colon"],
        vec!["--url", "http://127.0.0.1:1/", "--tag", "bad/tag"],
    ] {
        let out = cmd().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("berth-healthwait: error: "), "{err}");
    }
}

#[test]
fn help_and_version_never_read_stdin() {
    for flag in ["--help", "-h", "--version"] {
        let out = cmd().arg(flag).write_stdin("{garbage").output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{flag}");
        assert!(!out.stdout.is_empty());
    }
    let help = cmd().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "--expect-json",
        "Examples:",
        "Exit status",
        "--attempt-timeout",
        "BERTH_PROJECT_DIR",
    ] {
        assert!(text.contains(needle), "help lacks {needle}");
    }
}

#[test]
fn check_args_parses_like_the_run_reads_no_stdin_and_says_nothing() {
    let run = |args: &[&str]| {
        let mut c = cmd();
        c.arg("--check-args")
            .args(args)
            .write_stdin("not a document");
        berth_e2e::checked(c.output().unwrap())
    };
    let ok = [
        "--url",
        "http://127.0.0.1:1/",
        "--timeout",
        "60s",
        "--stage",
        "smoke",
    ];
    assert_eq!(run(&ok), (0, String::new()));
    for bad in [
        &["--url", "http://127.0.0.1:1/", "--timeout", "60"][..],
        &["--url", "ftp://x/"],
        &["--url", "http://127.0.0.1:1/", "--successes", "0"],
        &["--tcp", "nohost"],
        &[],
    ] {
        let (code, err) = run(bad);
        assert_eq!(code, 64, "{bad:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    use clap::CommandFactory;
    berth_core::settings::assert_known_envs(&berth_healthwait::Cli::command());
}
