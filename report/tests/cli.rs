//! berth-report's command line without Docker: reports of every ending, the ledger and the
//! log, notifications to local stand-ins for Telegram, a webhook and Slack (including
//! ones that are down or failing, and secrets that must never show), history.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use assert_cmd::Command;
use berth_e2e::TestServer;
use serde_json::{json, Value};

const TOKEN: &str = "987654:SECRET-telegram-token-xyz";

/// The binary with a clean environment, run in a fresh project directory whose state
/// directory is `<dir>/.berth`.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("berth-report").unwrap();
        for (k, _) in std::env::vars() {
            if k.starts_with("BERTH_") || k.starts_with("TELEGRAM_") {
                c.env_remove(k);
            }
        }
        c.env("HOME", "/nonexistent").current_dir(self.dir.path());
        c
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join(".berth")
    }

    fn ledger_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.state().join("releases.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn log(&self, deploy_id: &str) -> Option<String> {
        std::fs::read_to_string(
            self.state()
                .join("logs")
                .join(format!("deploy-{deploy_id}.log")),
        )
        .ok()
    }

    /// Run with `doc` on stdin.
    fn report(&self, doc: &Value, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = self.cmd();
        c.args(args).write_stdin(doc.to_string());
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stage(name: &str, status: &str, code: i32, ms: u64, at: &str) -> Value {
    json!({
        "stage": name, "status": status, "started_at": at, "duration_ms": ms,
        "exit_code": code, "detail": {},
        "error": if status == "failed" { json!(format!("{name}: it broke")) } else { Value::Null },
    })
}

fn document(id: &str, tag: &str, stages: Vec<Value>) -> Value {
    json!({
        "schema": "berth/1",
        "deploy_id": id,
        "project": "shop",
        "tag": tag,
        "previous_tag": "v1",
        "services": [{"name": "web", "image": format!("shop-web:{tag}")}],
        "created_at": "2026-11-22T03:15:00.000Z",
        "stages": stages,
        "from_a_newer_stage": {"kept": true},
    })
}

fn success(id: &str, tag: &str) -> Value {
    let mut backup = stage("backup", "ok", 0, 812, "2026-11-22T03:15:00.100Z");
    backup["detail"] = json!({"file": "/srv/shop/.berth/backups/db-1.dump", "bytes": 1_234_567});
    document(
        id,
        tag,
        vec![
            stage("preflight", "ok", 0, 300, "2026-11-22T03:15:00.000Z"),
            backup,
            stage("swap", "ok", 0, 8000, "2026-11-22T03:15:01.000Z"),
            stage("smoke", "ok", 0, 400, "2026-11-22T03:15:09.000Z"),
        ],
    )
}

fn failed_migration() -> Value {
    document(
        "20261122T031500Z-v2",
        "v2",
        vec![
            stage("backup", "ok", 0, 812, "2026-11-22T03:15:00.100Z"),
            stage("migrate", "failed", 6, 2000, "2026-11-22T03:15:01.000Z"),
        ],
    )
}

fn rolled_back() -> Value {
    document(
        "20261122T031500Z-v2",
        "v2",
        vec![
            stage("swap", "ok", 0, 8000, "2026-11-22T03:15:01.000Z"),
            stage("smoke", "failed", 4, 30_000, "2026-11-22T03:15:09.000Z"),
            stage("rollback", "ok", 4, 6000, "2026-11-22T03:15:39.000Z"),
        ],
    )
}

fn critical() -> Value {
    let mut rb = stage("rollback", "failed", 7, 6000, "2026-11-22T03:15:39.000Z");
    rb["error"] = json!("image shop-web:v1 is gone");
    rb["detail"] = json!({"manual_command": "berth-rollback --to v1 web"});
    document(
        "20261122T031500Z-v2",
        "v2",
        vec![
            stage("swap", "ok", 0, 8000, "2026-11-22T03:15:01.000Z"),
            stage("smoke", "failed", 4, 30_000, "2026-11-22T03:15:09.000Z"),
            rb,
        ],
    )
}

/// The document on stdout is the one on stdin (same JSON), and nothing else is there.
fn assert_passed_through(o: &Output, doc: &Value) {
    let out: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one document ({e}): {}", stdout(o)));
    assert_eq!(&out, doc);
    assert_eq!(stdout(o).lines().count(), 1);
}

#[test]
fn success_passes_the_document_through_records_it_and_exits_0() {
    let env = Env::new();
    let doc = success("20261122T031500Z-v2", "v2");
    let o = env.report(&doc, &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_passed_through(&o, &doc);
    let err = stderr(&o);
    assert!(
        err.contains("Deploy 20261122T031500Z-v2 of shop: SUCCESS"),
        "{err}"
    );
    assert!(err.contains("Now running: v2 (deployed)"), "{err}");
    assert!(
        err.contains("file=/srv/shop/.berth/backups/db-1.dump, bytes=1.2 MiB"),
        "{err}"
    );
    assert!(err.contains("took 9.4s"), "{err}");
    // One ledger line, the same document; a log file with the text report.
    let lines = env.ledger_lines();
    assert_eq!(lines.len(), 1);
    let recorded: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(recorded["deploy_id"], doc["deploy_id"]);
    assert_eq!(recorded["stages"], doc["stages"]);
    assert_eq!(recorded["from_a_newer_stage"], doc["from_a_newer_stage"]);
    let log = env.log("20261122T031500Z-v2").expect("log file");
    assert!(log.contains("SUCCESS") && log.contains("swap"), "{log}");

    // A second report appends; the first line is never rewritten.
    let doc2 = success("20261122T041500Z-v3", "v3");
    let o = env.report(&doc2, &[], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let again = env.ledger_lines();
    assert_eq!(again.len(), 2);
    assert_eq!(again[0], lines[0]);
    assert!(again[1].contains("20261122T041500Z-v3"));
    assert!(env.log("20261122T041500Z-v3").is_some());
}

#[test]
fn a_failure_before_the_switch_exits_with_its_code() {
    let env = Env::new();
    let doc = failed_migration();
    let o = env.report(&doc, &[], &[]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert_passed_through(&o, &doc);
    let err = stderr(&o);
    assert!(
        err.contains("FAILED (exit 6: migration failed; the old version still serves)"),
        "{err}"
    );
    assert!(err.contains("error: migrate: it broke"), "{err}");
    assert!(err.contains("Now running: v1 (unchanged)"), "{err}");
    assert!(
        !err.contains("ROLLBACK") && !err.contains("CRITICAL"),
        "{err}"
    );
    assert_eq!(env.ledger_lines().len(), 1);
}

#[test]
fn a_rollback_exits_4_and_says_what_serves() {
    let env = Env::new();
    let doc = rolled_back();
    let o = env.report(&doc, &[], &[]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert_passed_through(&o, &doc);
    let err = stderr(&o);
    assert!(err.contains("ROLLED BACK (exit 4)"), "{err}");
    assert!(err.contains("Now running: v1 (rolled back)"), "{err}");
    assert!(
        err.contains(
            "ROLLBACK: smoke failed after the switch (smoke: it broke); rolled back to v1"
        ),
        "{err}"
    );
    let log = env.log("20261122T031500Z-v2").unwrap();
    assert!(log.contains("ROLLBACK:"), "{log}");
}

#[test]
fn a_failed_rollback_exits_7_with_critical_lines() {
    let env = Env::new();
    let doc = critical();
    let o = env.report(&doc, &[], &[]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert_passed_through(&o, &doc);
    let err = stderr(&o);
    assert!(
        err.contains("CRITICAL: the rollback to v1 failed: image shop-web:v1 is gone. A person must act now."),
        "{err}"
    );
    assert!(
        err.contains("CRITICAL: to restore by hand: berth-rollback --to v1 web"),
        "{err}"
    );
    assert!(err.contains("Now running: unknown"), "{err}");
    assert_eq!(env.ledger_lines().len(), 1);
}

#[test]
fn no_document_is_64_and_a_bad_one_65_with_nothing_recorded() {
    let env = Env::new();
    let o = env.cmd().write_stdin("").output().unwrap();
    assert_eq!(o.status.code(), Some(64));
    assert_eq!(
        stderr(&o).trim(),
        "berth-report: error: berth-report needs the deploy document on stdin"
    );
    assert!(o.stdout.is_empty());
    let mut failed_with_0 = failed_migration();
    failed_with_0["stages"][1]["exit_code"] = json!(0);
    for bad in [
        "{not json".to_string(),
        "[1,2]".to_string(),
        json!({"schema": "berth/9"}).to_string(),
        failed_with_0.to_string(),
    ] {
        let o = env.cmd().write_stdin(bad.clone()).output().unwrap();
        assert_eq!(o.status.code(), Some(65), "{bad}: {}", stderr(&o));
        assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
        assert!(o.stdout.is_empty());
    }
    assert!(!env.state().exists(), "nothing recorded for bad input");
}

#[test]
fn a_pretty_printed_document_comes_out_as_one_line_of_the_same_json() {
    let env = Env::new();
    let doc = success("20261122T031500Z-v2", "v2");
    let o = env
        .cmd()
        .arg("--no-ledger")
        .write_stdin(serde_json::to_string_pretty(&doc).unwrap())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert_passed_through(&o, &doc);
}

#[test]
fn no_ledger_records_nothing_and_out_writes_a_copy_in_the_format_asked() {
    let env = Env::new();
    let doc = rolled_back();
    let md = env.dir.path().join("report.md");
    let o = env.report(
        &doc,
        &[
            "--no-ledger",
            "--format",
            "markdown",
            "--out",
            md.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(4));
    assert!(
        !env.state().exists(),
        "--no-ledger writes no ledger and no log"
    );
    let text = std::fs::read_to_string(&md).unwrap();
    assert!(text.starts_with("### Deploy 20261122T031500Z-v2 of shop: ROLLED BACK"));
    assert!(text.contains("| smoke | FAILED (4) | 30.0s |"), "{text}");
    assert!(stderr(&o).contains(&text), "stderr carries the same report");

    let js = env.dir.path().join("report.json");
    let o = env.report(
        &critical(),
        &[
            "--no-ledger",
            "--format",
            "json",
            "--out",
            js.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(7));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&js).unwrap()).unwrap();
    assert_eq!(v["status"], "critical");
    assert_eq!(
        v["outcome"],
        json!({"code": 7, "name": "rollback_failed",
        "meaning": "rollback failed: CRITICAL, a person must act"})
    );
    assert_eq!(v["rollback_error"], "image shop-web:v1 is gone");
}

#[test]
fn contradicting_flags_and_bad_flags_are_64() {
    let env = Env::new();
    let o = env.report(&success("a-v2", "v2"), &["-p", "other"], &[]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("contradicts the document's project"));
    let o = env.report(&success("a-v2", "v2"), &["--format", "pdf"], &[]);
    assert_eq!(o.status.code(), Some(64));
    let o = env.report(&success("a-v2", "v2"), &["--notify", "pager"], &[]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("pager"), "{}", stderr(&o));
    let o = env.cmd().arg("--help").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let help = stdout(&o);
    for s in [
        "Examples:",
        "berth-report status",
        "TELEGRAM_BOT_TOKEN",
        "releases.jsonl",
    ] {
        assert!(help.contains(s), "help lacks {s}");
    }
}

/// Telegram, webhook and Slack stand-ins in one server, told apart by path.
fn receiver() -> TestServer {
    TestServer::start(|head| {
        if head.contains("/sendMessage") {
            (200, r#"{"ok":true,"result":{}}"#.into())
        } else {
            (200, "ok".into())
        }
    })
}

fn bodies(server: &TestServer, path_part: &str) -> Vec<Value> {
    let seen = server.seen.lock().unwrap().clone();
    let bodies = server.bodies.lock().unwrap().clone();
    seen.iter()
        .zip(bodies)
        .filter(|(h, _)| h.lines().next().unwrap_or("").contains(path_part))
        .map(|(_, b)| serde_json::from_str(&b).unwrap_or_else(|e| panic!("{e}: {b}")))
        .collect()
}

fn notify_env(server: &TestServer) -> Vec<(String, String)> {
    vec![
        ("TELEGRAM_BOT_TOKEN".into(), TOKEN.into()),
        ("TELEGRAM_CHAT_ID".into(), "-100123".into()),
        ("BERTH_TELEGRAM_API".into(), server.url("")),
        (
            "BERTH_WEBHOOK_URL".into(),
            server.url("/hooks/webhook-SECRETPATH"),
        ),
        (
            "BERTH_SLACK_WEBHOOK_URL".into(),
            server.url("/services/T0/B0/slack-SECRET"),
        ),
    ]
}

fn report_notifying(env: &Env, doc: &Value, server: &TestServer, args: &[&str]) -> Output {
    let vars = notify_env(server);
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.report(doc, args, &pairs)
}

/// No secret in anything berth wrote: stdout, stderr, the ledger, the log.
fn assert_no_secrets(env: &Env, o: &Output) {
    let mut everything = stdout(o) + &stderr(o);
    everything += &env.ledger_lines().join("\n");
    if let Ok(rd) = std::fs::read_dir(env.state().join("logs")) {
        for e in rd {
            everything += &std::fs::read_to_string(e.unwrap().path()).unwrap();
        }
    }
    for secret in [
        "SECRET-telegram-token",
        "987654:",
        "SECRETPATH",
        "slack-SECRET",
    ] {
        assert!(
            !everything.contains(secret),
            "{secret} leaked:\n{everything}"
        );
    }
}

#[test]
fn each_ending_sends_its_own_message_to_telegram_webhook_and_slack() {
    let cases: [(Value, i32, &str, &str); 4] = [
        (
            success("20261122T031500Z-v2", "v2"),
            0,
            "success",
            "✅ DEPLOYED: shop v2",
        ),
        (
            failed_migration(),
            6,
            "failed",
            "❌ DEPLOY FAILED: shop v2 at stage migrate",
        ),
        (
            rolled_back(),
            4,
            "rolled_back",
            "⚠️ ROLLED BACK: shop v2 failed at stage smoke",
        ),
        (
            critical(),
            7,
            "critical",
            "🚨 CRITICAL: shop v2 failed and the rollback to v1 FAILED",
        ),
    ];
    for (doc, code, status, opening) in cases {
        let env = Env::new();
        let server = receiver();
        let o = report_notifying(
            &env,
            &doc,
            &server,
            &["--notify", "telegram,webhook", "--notify", "slack"],
        );
        assert_eq!(o.status.code(), Some(code), "{}", stderr(&o));
        assert_passed_through(&o, &doc);
        let err = stderr(&o);
        for c in ["telegram", "webhook", "slack"] {
            assert!(
                err.contains(&format!("berth-report: notified {c}")),
                "{err}"
            );
        }

        let heads = server.seen.lock().unwrap().clone();
        assert!(
            heads
                .iter()
                .any(|h| h.starts_with(&format!("POST /bot{TOKEN}/sendMessage "))),
            "{heads:?}"
        );
        let tg = bodies(&server, "/sendMessage");
        assert_eq!(tg.len(), 1);
        assert_eq!(tg[0]["chat_id"], "-100123");
        let text = tg[0]["text"].as_str().unwrap();
        assert!(text.starts_with(opening), "{status}: {text}");
        assert!(text.contains("Deploy 20261122T031500Z-v2"), "{text}");

        let hook = bodies(&server, "/hooks/");
        assert_eq!(hook.len(), 1);
        let h = &hook[0];
        assert_eq!(h["status"], status);
        assert_eq!(h["deploy_id"], "20261122T031500Z-v2");
        assert_eq!(h["project"], "shop");
        assert_eq!(h["tag"], "v2");
        assert_eq!(h["previous_tag"], "v1");
        assert_eq!(h["outcome"]["code"], code);
        assert_eq!(
            h["stages"].as_array().unwrap().len(),
            doc["stages"].as_array().unwrap().len()
        );
        assert!(h["stages"][0]["duration_ms"].is_u64());
        if code == 0 {
            assert_eq!(h["error"], Value::Null);
        } else {
            assert!(h["error"].as_str().unwrap().contains("it broke"), "{h}");
        }

        let slack = bodies(&server, "/services/");
        assert_eq!(slack.len(), 1);
        assert!(slack[0]["text"].as_str().unwrap().starts_with(opening));
        assert_no_secrets(&env, &o);
    }
}

#[test]
fn the_notify_list_also_comes_from_the_environment() {
    let env = Env::new();
    let server = receiver();
    let mut vars = notify_env(&server);
    vars.push(("BERTH_NOTIFY".into(), "slack".into()));
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let o = env.report(&rolled_back(), &[], &pairs);
    assert_eq!(o.status.code(), Some(4));
    assert_eq!(server.seen.lock().unwrap().len(), 1, "only slack");
    assert_eq!(bodies(&server, "/services/").len(), 1);

    // An empty BERTH_NOTIFY sends nothing.
    let env = Env::new();
    let o = env.report(&rolled_back(), &[], &[("BERTH_NOTIFY", "")]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
}

#[test]
fn a_server_that_answers_500_is_retried_then_warned_about_and_the_code_stays() {
    let hits = Arc::new(AtomicU32::new(0));
    let h = hits.clone();
    let server = TestServer::start(move |_| {
        h.fetch_add(1, Ordering::SeqCst);
        (500, format!("internal error for bot{TOKEN}"))
    });
    for (doc, code) in [
        (success("20261122T031500Z-v2", "v2"), 0),
        (rolled_back(), 4),
    ] {
        let env = Env::new();
        hits.store(0, Ordering::SeqCst);
        let o = report_notifying(&env, &doc, &server, &["--notify", "telegram,webhook,slack"]);
        assert_eq!(o.status.code(), Some(code), "{}", stderr(&o));
        assert_passed_through(&o, &doc);
        assert_eq!(
            hits.load(Ordering::SeqCst),
            9,
            "3 attempts for each of 3 channels"
        );
        let err = stderr(&o);
        for c in ["telegram", "webhook", "slack"] {
            assert!(
                err.contains(&format!(
                    "berth-report: warning: {c} notification failed: HTTP 500"
                )),
                "{err}"
            );
        }
        assert!(err.contains("(after 3 attempts)"), "{err}");
        assert_eq!(env.ledger_lines().len(), 1, "recorded all the same");
        assert_no_secrets(&env, &o);
    }
}

#[test]
fn a_server_that_is_down_is_a_warning_and_the_code_stays() {
    let port = berth_e2e::free_port(); // nothing listens here
    let env = Env::new();
    let base = format!("http://127.0.0.1:{port}");
    let o = env.report(
        &critical(),
        &["--notify", "telegram,webhook", "--notify-attempts", "2"],
        &[
            ("TELEGRAM_BOT_TOKEN", TOKEN),
            ("TELEGRAM_CHAT_ID", "1"),
            ("BERTH_TELEGRAM_API", &base),
            (
                "BERTH_WEBHOOK_URL",
                &format!("{base}/hooks/webhook-SECRETPATH"),
            ),
        ],
    );
    assert_eq!(o.status.code(), Some(7));
    let err = stderr(&o);
    assert!(
        err.contains(
            "warning: telegram notification failed: connection refused (after 2 attempts)"
        ),
        "{err}"
    );
    assert!(
        err.contains("warning: webhook notification failed"),
        "{err}"
    );
    assert_no_secrets(&env, &o);
}

#[test]
fn unusable_addresses_are_warnings_without_the_secret() {
    // Addresses ureq refuses before connecting (the scrubbing of errors that quote a URL
    // is unit-tested in notify.rs, and end to end by the 500 test's echoing server).
    let env = Env::new();
    let o = env.report(
        &success("20261122T031500Z-v2", "v2"),
        &["--notify", "telegram,slack", "--notify-attempts", "1"],
        &[
            ("TELEGRAM_BOT_TOKEN", TOKEN),
            ("TELEGRAM_CHAT_ID", "1"),
            ("BERTH_TELEGRAM_API", "http://exa mple.invalid:99999"),
            (
                "BERTH_SLACK_WEBHOOK_URL",
                "http://exa mple.invalid:99999/services/T0/B0/slack-SECRET",
            ),
        ],
    );
    assert_eq!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(
        err.contains("warning: telegram notification failed"),
        "{err}"
    );
    assert!(err.contains("warning: slack notification failed"), "{err}");
    assert_no_secrets(&env, &o);
}

#[test]
fn a_notification_retried_after_a_503_gets_through() {
    let hits = Arc::new(AtomicU32::new(0));
    let h = hits.clone();
    let server = TestServer::start(move |_| {
        if h.fetch_add(1, Ordering::SeqCst) == 0 {
            (503, "busy".into())
        } else {
            (200, r#"{"ok":true}"#.into())
        }
    });
    let env = Env::new();
    let o = report_notifying(
        &env,
        &success("x-v2", "v2"),
        &server,
        &["--notify", "telegram"],
    );
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("notified telegram (attempt 2)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[test]
fn missing_settings_warn_and_send_nothing() {
    let env = Env::new();
    let o = env.report(
        &failed_migration(),
        &["--notify", "telegram,webhook"],
        &[("TELEGRAM_BOT_TOKEN", TOKEN)],
    );
    assert_eq!(o.status.code(), Some(6));
    let err = stderr(&o);
    assert!(
        err.contains("warning: telegram notification not sent: TELEGRAM_CHAT_ID is not set"),
        "{err}"
    );
    assert!(
        err.contains("warning: webhook notification not sent: BERTH_WEBHOOK_URL is not set"),
        "{err}"
    );
    assert_no_secrets(&env, &o);
}

/// A ledger of four releases: v1 good, v2 rolled back, v3 good, v4 failed before the switch.
fn ledger_of_four(state: &Path) {
    use berth_core::doc::Document;
    let mut docs = [
        success("20261120T100000Z-v1", "v1"),
        rolled_back(),
        success("20261122T100000Z-v3", "v3"),
        failed_migration(),
    ];
    docs[1]["deploy_id"] = json!("20261121T100000Z-v2");
    docs[3]["deploy_id"] = json!("20261123T100000Z-v4");
    docs[3]["tag"] = json!("v4");
    for (i, d) in docs.iter_mut().enumerate() {
        d["created_at"] = json!(format!("2026-11-2{}T10:00:00.000Z", i));
        berth_core::ledger::append(state, &Document::from_value(d.clone()).unwrap()).unwrap();
    }
}

#[test]
fn history_is_newest_first_and_marks_the_last_good_release() {
    let env = Env::new();
    ledger_of_four(&env.state());
    let o = env
        .cmd()
        .arg("history")
        .write_stdin("ignored")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[0].starts_with("TIME"), "{out}");
    let order: Vec<&str> = ["v4", "v3", "v2", "v1"].to_vec();
    for (line, id) in lines[1..].iter().zip(&order) {
        assert!(
            line.contains(&format!("Z-{id} ")),
            "{id} expected in {line}"
        );
    }
    assert!(lines[1].contains("6 failed"), "{out}");
    assert!(
        lines[2].contains("0 success") && lines[2].ends_with("<- last good"),
        "{out}"
    );
    assert!(lines[3].contains("4 rolled_back"), "{out}");
    assert_eq!(out.matches("last good").count(), 1, "{out}");

    let o = env
        .cmd()
        .args(["history", "--limit", "2", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[0]["tag"], "v4");
    assert_eq!(arr[0]["last_good"], false);
    assert_eq!(arr[1]["tag"], "v3");
    assert_eq!(arr[1]["last_good"], true);
    assert_eq!(arr[1]["status"], "success");
}

#[test]
fn history_takes_the_reports_final_version_of_a_deploy() {
    // The swap appends the release when it switches; the report appends the final
    // document (here: smoke failed, rolled back) with the same deploy id.
    let env = Env::new();
    let mut swapped = rolled_back();
    swapped["stages"] = json!([stage("swap", "ok", 0, 8000, "2026-11-22T03:15:01.000Z")]);
    berth_core::ledger::append(
        &env.state(),
        &berth_core::doc::Document::from_value(swapped).unwrap(),
    )
    .unwrap();
    let o = env.report(&rolled_back(), &[], &[]);
    assert_eq!(o.status.code(), Some(4));
    assert_eq!(env.ledger_lines().len(), 2);
    let o = env.cmd().args(["history", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["status"], "rolled_back");
    assert_eq!(v[0]["last_good"], false);
}

#[test]
fn history_of_an_empty_ledger() {
    let env = Env::new();
    let o = env.cmd().arg("history").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(o.stdout.is_empty());
    assert!(
        stderr(&o).contains("no releases recorded yet"),
        "{}",
        stderr(&o)
    );
    let o = env.cmd().args(["history", "--json"]).output().unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&o.stdout).unwrap(),
        json!([])
    );
}

#[test]
fn check_args_checks_the_notification_settings_too() {
    let e = Env::new();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = e.cmd();
        c.envs(env.iter().copied())
            .args(args)
            .arg("--check-args")
            .write_stdin("not a document");
        berth_e2e::checked(c.output().unwrap())
    };
    let tg = [
        ("TELEGRAM_BOT_TOKEN", "123456:tok"),
        ("TELEGRAM_CHAT_ID", "1"),
    ];
    assert_eq!(run(&["--notify", "telegram"], &tg), (0, String::new()));
    assert_eq!(run(&["history", "--limit", "3"], &[]), (0, String::new()));
    for (bad, says) in [
        (
            &["--notify", "telegram"][..],
            "TELEGRAM_BOT_TOKEN is not set",
        ),
        (&["--notify", "telegrm"], "not a channel"),
        (&["--notify-timeout", "5"], "--notify-timeout"),
        (&["--out", "/nonexistent/dir/r.md"], "--out"),
    ] {
        let (code, err) = run(bad, &[]);
        assert_eq!(code, 64, "{bad:?}: {err}");
        assert!(err.contains(says), "{bad:?}: {err}");
    }
    assert!(e.ledger_lines().is_empty());
    use clap::CommandFactory;
    berth_core::settings::assert_known_envs(&berth_report::Cli::command());
}

#[test]
fn env_file_prints_the_settings_nul_separated_and_the_environment_wins() {
    let e = Env::new();
    std::fs::write(
        e.dir.path().join("deploy.prod.env"),
        "# settings\r\nDEPLOY_SERVICES=web worker\r\nDEPLOY_LOCK_WAIT=1m30s\r\n\
         DEPLOY_TEST_CMD=$(id)\r\nDEPLOY_WORKERS=worker\r\n",
    )
    .unwrap();
    let out = e
        .cmd()
        .args(["env-file", "--env", "prod", "--project-dir"])
        .arg(e.dir.path())
        .env("DEPLOY_WORKERS", "from-env")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let pairs: Vec<&str> = text.split_terminator('\0').collect();
    assert_eq!(
        pairs,
        [
            "DEPLOY_SERVICES=web worker",
            "DEPLOY_LOCK_WAIT=1m30s",
            "DEPLOY_TEST_CMD=$(id)",
            "DEPLOY_LOCK_WAIT_SECS=90"
        ]
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("CRLF"));

    for (file, env, says) in [
        ("PATH=/tmp\n", None, "PATH is not allowed"),
        ("DEPLOY_SMOKE_TIMOUT=5s\n", None, "DEPLOY_SMOKE_TIMOUT"),
        ("", Some(("DEPLOY_SMOKE_URLS", "x")), "DEPLOY_SMOKE_URLS"),
        (
            "DEPLOY_LOCK_WAIT=PATH[$(id)]+1m\n",
            None,
            "DEPLOY_LOCK_WAIT",
        ),
    ] {
        std::fs::write(e.dir.path().join("deploy.prod.env"), file).unwrap();
        let mut c = e.cmd();
        c.args(["env-file", "--env", "prod", "--project-dir"])
            .arg(e.dir.path());
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{file}: {err}");
        assert!(err.contains(says), "{file}: {err}");
        assert!(out.stdout.is_empty());
    }
    let out = e
        .cmd()
        .args(["env-file", "--env", "../etc/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn record_failure_appends_a_failed_scrubbed_record_to_the_kept_document() {
    let e = Env::new();
    let kept = json!({"schema": "berth/1", "deploy_id": "20261122T031500Z-v2", "project": "shop",
        "tag": "v2", "previous_tag": "v1", "services": [], "created_at": "2026-11-22T03:15:00Z",
        "stages": [{"stage": "swap", "status": "ok", "started_at": "2026-11-22T03:15:01Z",
                    "duration_ms": 5, "exit_code": 0, "detail": {}, "error": null}]});
    let out = e
        .cmd()
        .args(["record-failure", "--stage", "smoke", "--exit", "137"])
        .arg("--message=-boom: token 123456:secret-tok in https://u:pw123456@h/x")
        .env("TELEGRAM_BOT_TOKEN", "123456:secret-tok")
        .write_stdin(kept.to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &d["stages"][1];
    assert_eq!(
        (&r["stage"], &r["status"], &r["exit_code"]),
        (&json!("smoke"), &json!("failed"), &json!(4))
    );
    let error = r["error"].as_str().unwrap();
    assert!(
        error.contains("-boom") && error.contains("exited 137"),
        "{error}"
    );
    assert!(
        !error.contains("secret-tok") && !error.contains("pw123456"),
        "{error}"
    );
    assert_eq!(r["detail"]["no_document"], true);

    // Nothing kept yet (the first stage died): a new document, from the settings.
    let out = e
        .cmd()
        .args([
            "record-failure",
            "--stage",
            "preflight",
            "--exit",
            "2",
            "-p",
            "shop",
            "--tag",
            "v2",
        ])
        .write_stdin("")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["stages"][0]["exit_code"], 2);
    assert_eq!(d["tag"], "v2");
}
