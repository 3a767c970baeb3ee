//! berth-rollback's command line without Docker: what passes through, usage errors, bad
//! documents, a stub docker for the CRITICAL path. Real swaps back are tested end to end
//! in tests/tests/swap.rs.

use assert_cmd::Command;
use serde_json::{json, Value};

fn cmd(dir: &std::path::Path) -> Command {
    let mut c = Command::cargo_bin("berth-rollback").unwrap();
    for (k, _) in std::env::vars() {
        if k.starts_with("BERTH_") {
            c.env_remove(k);
        }
    }
    c.env("HOME", "/nonexistent")
        .current_dir(dir)
        .args(["--project-dir"])
        .arg(dir)
        .args(["-p", "shop"]);
    c
}

fn doc(stages: Value) -> Value {
    json!({"schema": "berth/1", "deploy_id": "20261122T031500Z-v2", "project": "shop",
           "tag": "v2", "previous_tag": "v1",
           "services": [{"name": "web", "image": "shop-web:v2"}],
           "created_at": "2026-11-22T03:15:00.000Z", "stages": stages})
}

fn st(name: &str, status: &str, code: i32) -> Value {
    json!({"stage": name, "status": status, "started_at": "2026-11-22T03:15:01.000Z",
           "duration_ms": 5, "exit_code": code, "detail": {}, "error": null})
}

#[test]
fn success_passes_through_unchanged_with_0() {
    let d = tempfile::tempdir().unwrap();
    let input = doc(json!([st("swap", "ok", 0), st("smoke", "ok", 0)]));
    let out = cmd(d.path())
        .write_stdin(input.to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let back: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(back, input);
}

#[test]
fn a_failure_before_the_switch_passes_through_with_its_code() {
    let d = tempfile::tempdir().unwrap();
    for (stages, code) in [
        (json!([st("backup", "failed", 5)]), 5),
        (json!([st("migrate", "failed", 6)]), 6),
        (json!([st("swap", "failed", 3)]), 3),
    ] {
        let input = doc(stages);
        let out = cmd(d.path())
            .write_stdin(input.to_string())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{input}");
        let back: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(back, input);
        assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to roll back"));
    }
}

/// berth-rollback on a deploy whose smoke failed after its swap to v2, with `.env`
/// pinning `pinned` and no docker at all: (stderr, its rollback record).
fn rollback_v2_with_env(d: &std::path::Path, pinned: &str) -> (String, Value) {
    std::fs::write(d.join(".env"), format!("BERTH_TAG={pinned}\n")).unwrap();
    let input = doc(json!([st("swap", "ok", 0), st("smoke", "failed", 4)]));
    let out = cmd(d)
        .env("BERTH_DOCKER", "/nonexistent/docker")
        .write_stdin(input.to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    let back: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rb = back["stages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (rb["stage"].as_str(), rb["exit_code"].as_i64()),
        (Some("rollback"), Some(7))
    );
    (String::from_utf8_lossy(&out.stderr).to_string(), rb)
}

#[test]
fn a_failed_rollback_exits_7_with_one_critical_line() {
    // v2 is pinned (the release to undo), but docker is not there: the swap back cannot
    // even start.
    let d = tempfile::tempdir().unwrap();
    let (err, _) = rollback_v2_with_env(d.path(), "v2");
    let critical: Vec<&str> = err.lines().filter(|l| l.contains("CRITICAL:")).collect();
    assert_eq!(critical.len(), 1, "{err}");
    assert!(
        critical[0].contains(&format!(
            "berth-rollback --project-dir {} -p shop --to v1 web",
            d.path().display()
        )),
        "{err}"
    );
}

#[test]
fn another_release_serving_exits_7_and_touches_nothing() {
    // Another deploy landed after this document's swap: `.env` pins v3, not v2. No docker
    // is needed to see it, and none is run (a missing one would be a CRITICAL line).
    let d = tempfile::tempdir().unwrap();
    let (err, rb) = rollback_v2_with_env(d.path(), "v3");
    assert!(!err.contains("CRITICAL"), "{err}");
    assert!(
        err.contains(
            "not rolling back: shop runs v3 now (BERTH_TAG=v3 in .env; no deploy in the \
             ledger put it there)"
        ),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(d.path().join(".env")).unwrap(),
        "BERTH_TAG=v3\n"
    );
    assert_eq!(rb["status"], "failed");
}

#[test]
fn usage_and_bad_documents() {
    let d = tempfile::tempdir().unwrap();
    // Standalone needs services.
    let out = cmd(d.path()).write_stdin("").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = cmd(d.path())
        .args(["--to", "a/b", "web"])
        .write_stdin("")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = cmd(d.path()).write_stdin("{\"schema\":").output().unwrap();
    assert_eq!(out.status.code(), Some(65));
    // No ledger, no --to: nothing to go back to (preflight), and nothing ran.
    let out = cmd(d.path()).arg("web").write_stdin("").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --to TAG"));
}

#[test]
fn check_args_parses_like_the_run_and_touches_nothing() {
    let d = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut c = cmd(d.path());
        c.env("BERTH_DOCKER", "/nonexistent/docker")
            .arg("--check-args")
            .args(args)
            .write_stdin("not a document");
        berth_e2e::checked(c.output().unwrap())
    };
    assert_eq!(run(&["--worker", "worker"]), (0, String::new()));
    assert_eq!(run(&["--to", "v1", "web"]), (0, String::new()));
    for (bad, says) in [
        (&["--to", "a b", "web"][..], "not a valid image tag"),
        (&["--ready-path", "x"], "--ready-path"),
        (&["--lock-wait", "5"], "--lock-wait"),
        (
            &["--proxy", "host", "--to", "v1", "web"],
            "--proxy host was removed",
        ),
    ] {
        let (code, err) = run(bad);
        assert_eq!(code, 64, "{bad:?}: {err}");
        assert!(err.contains(says), "{bad:?}: {err}");
    }
    assert!(!d.path().join(".berth").exists(), "nothing written");
    use clap::CommandFactory;
    berth_core::settings::assert_known_envs(&berth_rollback::Cli::command());
}
