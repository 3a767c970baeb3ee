//! berth-migrate's command line without Docker: usage errors, bad documents, the
//! pass-through, the backup requirement, dry runs, and (with a stub `docker` on
//! `BERTH_DOCKER`) docker down, the lock, and a failing migration's log tail. The real
//! thing runs end to end in tests/tests/migrate.rs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::{json, Value};
use tempfile::TempDir;

/// A project directory and state directory of their own.
struct Env {
    dir: TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The binary with a clean environment, pointed at this project, empty stdin.
    fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("berth-migrate").unwrap();
        for (k, _) in std::env::vars() {
            if k.starts_with("BERTH_") {
                c.env_remove(k);
            }
        }
        c.env("HOME", "/nonexistent")
            .current_dir(self.path())
            .args(["--project-dir", self.path().to_str().unwrap(), "-p", "shop"])
            .write_stdin("");
        c
    }

    /// A stub docker that logs its arguments to `calls` and answers like a daemon
    /// whose compose `run` prints 60 lines and exits 3 (or `STUB_RUN_EXIT`); with
    /// `STUB_OLD` set, one `web` container runs (the old version) at 127.0.0.1.
    fn stub_docker(&self) -> PathBuf {
        let p = self.path().join("docker");
        std::fs::write(
            &p,
            r#"#!/bin/sh
echo "$*" >> "$(dirname "$0")/calls"
case "$*" in
  version*) [ -n "$STUB_DOWN" ] && { echo "Cannot connect to the Docker daemon" >&2; exit 1; }
            echo 20.10.24 ;;
  *" config --format json") echo '{"services":{"web":{"image":"shop/web:v2"}}}' ;;
  ps*com.docker.compose.service=web*) [ -n "$STUB_OLD" ] && echo oldweb1 ;;
  "container inspect oldweb1")
    echo '[{"Id":"oldweb1","Name":"/shop-web-1","Image":"sha256:aa","Created":"2026-11-22T03:00:00Z",
      "Config":{"Image":"shop/web:v1","Labels":{"com.docker.compose.service":"web"}},
      "State":{"Status":"running","Running":true},
      "NetworkSettings":{"Networks":{"shop_default":{"IPAddress":"127.0.0.1"}}}}]' ;;
  *" run --rm "*)
    i=1; while [ $i -le 60 ]; do echo "migration line $i"; i=$((i+1)); done
    echo "ERROR: column does not exist" >&2
    exit "${STUB_RUN_EXIT:-3}" ;;
esac
exit 0
"#,
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.path().join("calls")).unwrap_or_default()
    }
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
    stages.last().expect("a record")
}

fn base_doc(stages: Value) -> Value {
    json!({
        "schema": "berth/1", "deploy_id": "20261122T031500Z-v2", "project": "shop",
        "tag": "v2", "previous_tag": null, "services": [],
        "created_at": "2026-11-22T03:15:00.000Z", "stages": stages, "newer_field": {"x": 1}
    })
}

fn backup_record(detail: Value) -> Value {
    json!({"stage": "backup", "status": "ok", "started_at": "2026-11-22T03:15:00.100Z",
           "duration_ms": 812, "exit_code": 0, "detail": detail, "error": null})
}

#[test]
fn usage_errors_exit_64_never_2_and_write_nothing() {
    let env = Env::new();
    for args in [
        vec!["--bogus"],
        vec![],
        vec!["--tag", "v2", "web"],
        vec!["--tag", "v2", "web", "--"],
        vec!["--tag", "v2", "bad/svc", "--", "migrate"],
        vec!["--tag", "bad/tag", "web", "--", "migrate"],
        vec!["--tag", "v2", "--timeout", "soon", "web", "--", "migrate"],
        vec!["--tag", "v2", "--timeout", "0s", "web", "--", "migrate"],
        vec!["--tag", "v2", "--lock-wait", "x", "web", "--", "migrate"],
        vec![
            "--tag",
            "v2",
            "--ready-path",
            "readyz",
            "web",
            "--",
            "migrate",
        ],
        vec!["--tag", "v2", "--port", "0", "web", "--", "migrate"],
        vec!["--tag", "v2", "--port", "70000", "web", "--", "migrate"],
        // No tag from the flag nor the (new) document.
        vec!["--no-backup-required", "web", "--", "migrate"],
    ] {
        let out = env.cmd().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("berth-migrate: error: "), "{args:?}: {err}");
    }
    // Missing arguments are named on the one line.
    let out = env.cmd().args(["--tag", "v2"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not provided: <SERVICE>, <CMD>..."), "{err}");
    // --tag contradicting the document's tag is a usage error too.
    let out = env
        .cmd()
        .args(["--tag", "v3", "web", "--", "migrate"])
        .write_stdin(base_doc(json!([])).to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(env.calls().is_empty());
}

#[test]
fn help_exits_0_and_names_the_exit_codes() {
    let out = Env::new().cmd().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--no-backup-required"), "{text}");
    assert!(text.contains("Exit status: 0 migrated; 6"), "{text}");
}

#[test]
fn bad_documents_exit_65_and_run_nothing() {
    let env = Env::new();
    let docker = env.stub_docker();
    let mut wrong_type = base_doc(json!([]));
    wrong_type["deploy_id"] = json!(7);
    for (input, expect) in [
        ("{not json".to_string(), "not valid JSON"),
        ("[]".to_string(), "must be a JSON object"),
        (wrong_type.to_string(), "`deploy_id`"),
    ] {
        let out = env
            .cmd()
            .env("BERTH_DOCKER", &docker)
            .args(["--no-backup-required", "web", "--", "migrate"])
            .write_stdin(input.clone())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(65), "{input}");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{err}");
    }
    assert!(env.calls().is_empty(), "docker was called: {}", env.calls());
}

#[test]
fn an_earlier_failure_passes_through_untouched() {
    let env = Env::new();
    let docker = env.stub_docker();
    let input = base_doc(json!([{
        "stage": "backup", "status": "failed", "started_at": "2026-11-22T03:15:00.100Z",
        "duration_ms": 5, "exit_code": 5, "detail": {}, "error": "disk full"}]));
    let out = env
        .cmd()
        .env("BERTH_DOCKER", &docker)
        .args(["web", "--", "migrate"])
        .write_stdin(input.to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(doc_of(&out.stdout), input);
    assert!(env.calls().is_empty(), "docker was called: {}", env.calls());
}

#[test]
fn without_a_verified_backup_record_it_refuses_with_6_and_runs_nothing() {
    let env = Env::new();
    let docker = env.stub_docker();
    for (stages, expect) in [
        (json!([]), "no verified backup in the document"),
        (
            json!([{"stage": "backup", "status": "skipped", "started_at": "2026-11-22T03:15:00.100Z",
                    "duration_ms": 0, "exit_code": 0, "detail": {}, "error": null}]),
            "no verified backup in the document",
        ),
        (
            json!([backup_record(
                json!({"file": "/b/x.dump", "verification": "none"})
            )]),
            "not verified (verification: none)",
        ),
    ] {
        let input = base_doc(stages);
        let out = env
            .cmd()
            .env("BERTH_DOCKER", &docker)
            .args(["web", "--", "migrate"])
            .write_stdin(input.to_string())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(6), "{input}");
        let doc = doc_of(&out.stdout);
        assert_eq!(doc["newer_field"], json!({"x": 1}));
        let rec = record(&doc);
        assert_eq!(rec["stage"], "migrate");
        assert_eq!(rec["status"], "failed");
        assert_eq!(rec["exit_code"], 6);
        let e = rec["error"].as_str().unwrap();
        assert!(e.contains(expect), "{e}");
        assert!(e.contains("--no-backup-required"), "{e}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("berth-migrate: error: refusing to migrate"),
            "{err}"
        );
    }
    assert!(env.calls().is_empty(), "docker was called: {}", env.calls());
}

#[test]
fn dry_run_prints_the_commands_and_runs_nothing() {
    let env = Env::new();
    let docker = env.stub_docker();
    let input = base_doc(json!([backup_record(
        json!({"file": "/b/x.dump", "service": "db", "verification": "read"})
    )]));
    let out = env
        .cmd()
        .env("BERTH_DOCKER", &docker)
        .args([
            "--dry-run",
            "--timeout",
            "90s",
            "web",
            "--",
            "migrate",
            "--to",
            "head",
        ])
        .write_stdin(input.to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    let dir = env.path().to_str().unwrap();
    let want = format!(
        "berth-migrate: would run: {} compose --project-directory {dir} -p shop run --rm --no-deps -T \
         --name shop-migrate-20261122T031500Z-v2 --label berth.deploy_id=20261122T031500Z-v2 \
         --label berth.role=migrate web migrate --to head",
        docker.display()
    );
    assert!(err.contains(&want), "{err}");
    assert!(err.contains("timeout (90s), SIGINT or SIGTERM: "), "{err}");
    let doc = doc_of(&out.stdout);
    let rec = record(&doc);
    assert_eq!(rec["status"], "skipped");
    assert_eq!(rec["detail"]["dry_run"], true);
    assert_eq!(rec["detail"]["command"], json!(["migrate", "--to", "head"]));
    assert!(env.calls().is_empty(), "docker was called: {}", env.calls());
    assert!(!env.path().join(".berth").exists(), "nothing written");
}

#[test]
fn docker_down_exits_1_and_records_it() {
    let env = Env::new();
    let docker = env.stub_docker();
    let out = env
        .cmd()
        .env("BERTH_DOCKER", &docker)
        .env("STUB_DOWN", "1")
        .args([
            "--tag",
            "v2",
            "--no-backup-required",
            "web",
            "--",
            "migrate",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc = doc_of(&out.stdout);
    let rec = record(&doc);
    assert_eq!(rec["exit_code"], 1);
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("docker daemon is not reachable"),
        "{rec}"
    );
    assert!(!env.calls().contains(" run "), "{}", env.calls());
}

#[test]
fn another_deploy_holding_the_lock_gives_75() {
    let env = Env::new();
    let docker = env.stub_docker();
    let locks = env.path().join(".berth/locks");
    std::fs::create_dir_all(&locks).unwrap();
    let f = std::fs::File::create(locks.join("deploy.lock")).unwrap();
    f.lock().unwrap();
    let out = env
        .cmd()
        .env("BERTH_DOCKER", &docker)
        .args([
            "--tag",
            "v2",
            "--no-backup-required",
            "web",
            "--",
            "migrate",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another deploy holds the deploy lock"),
        "{err}"
    );
    assert!(!env.calls().contains(" run "), "{}", env.calls());
    drop(f);
}

#[test]
fn a_failing_migration_puts_its_last_50_lines_in_the_document_and_on_stderr() {
    let env = Env::new();
    let docker = env.stub_docker();
    let input = base_doc(json!([backup_record(
        json!({"file": "/srv/b/shop-demo.dump", "service": "db", "verification": "read"})
    )]));
    let out = env
        .cmd()
        .env("BERTH_DOCKER", &docker)
        .args(["web", "--", "migrate"])
        .write_stdin(input.to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6));
    let doc = doc_of(&out.stdout);
    let rec = record(&doc);
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["detail"]["exit_status"], 3);
    assert_eq!(rec["detail"]["image"], "shop/web:v2");
    let tail: Vec<&str> = rec["detail"]["log_tail"]
        .as_str()
        .unwrap()
        .lines()
        .collect();
    assert_eq!(tail.len(), 50, "{tail:?}");
    assert_eq!(tail[0], "migration line 12");
    assert_eq!(tail[49], "ERROR: column does not exist");
    let restore = "berth-backup restore /srv/b/shop-demo.dump --service db --yes";
    assert!(
        rec["detail"]["restore_command"]
            .as_str()
            .unwrap()
            .starts_with(restore),
        "{rec}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("berth-migrate: | migration line 12\n"),
        "{err}"
    );
    assert!(!err.contains("| migration line 11\n"), "{err}");
    assert!(err.contains(restore), "{err}");
    assert!(
        err.contains("berth-migrate: error: the migration exited with 3"),
        "{err}"
    );
    // The whole output is in the log file, not only the tail.
    let log = std::fs::read_to_string(rec["detail"]["log"].as_str().unwrap()).unwrap();
    assert!(log.contains("migration line 1\n"), "{log}");
    // The lock is free again.
    let f = std::fs::File::open(env.path().join(".berth/locks/deploy.lock")).unwrap();
    f.try_lock().unwrap();
}

#[test]
fn an_old_version_that_is_not_ready_after_migrating_is_a_loud_warning_not_a_failure() {
    for (status, ready) in [(503u16, false), (200, true)] {
        let env = Env::new();
        let docker = env.stub_docker();
        let server = berth_e2e::TestServer::start(move |_| (status, "{}".into()));
        let out = env
            .cmd()
            .env("BERTH_DOCKER", &docker)
            .env("STUB_OLD", "1")
            .env("STUB_RUN_EXIT", "0")
            .args([
                "--tag",
                "v2",
                "--no-backup-required",
                "--ready-timeout",
                "1s",
            ])
            .args(["--port", &server.port.to_string(), "web", "--", "migrate"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        let doc = doc_of(&out.stdout);
        let rec = record(&doc);
        assert_eq!(rec["status"], "ok");
        let d = &rec["detail"];
        assert_eq!(d["old_version_ready"], ready, "{d}");
        assert_eq!(d["old_version"][0]["container"], "shop-web-1");
        assert_eq!(
            d["old_version"][0]["url"],
            format!("http://127.0.0.1:{}/readyz", server.port)
        );
        assert!(
            !server.seen.lock().unwrap().is_empty(),
            "the old version was probed"
        );
        let warned = err.contains("berth-migrate: WARNING: the running web version is NOT ready");
        assert_eq!(warned, !ready, "{err}");
        if !ready {
            assert!(err.contains("status 503"), "{err}");
            assert!(err.contains("rolls forward"), "{err}");
        }
    }
}

#[test]
fn check_args_parses_like_the_run_and_runs_no_docker() {
    let e = Env::new();
    let docker = e.stub_docker();
    let run = |args: &[&str]| {
        let mut c = e.cmd();
        c.env("BERTH_DOCKER", &docker)
            .arg("--check-args")
            .args(args)
            .write_stdin("not a document");
        berth_e2e::checked(c.output().unwrap())
    };
    assert_eq!(
        run(&["--tag", "v2", "web", "--", "migrate"]),
        (0, String::new())
    );
    for (bad, says) in [
        (&["--tag", "v2", "we/b", "--", "migrate"][..], "SERVICE"),
        (
            &["--tag", "v2", "--timeout", "5", "web", "--", "migrate"],
            "--timeout",
        ),
        (&["--tag", "v2", "web", "--", ""], "migration command"),
        (&["--tag", "v2", "web"], "required"),
    ] {
        let (code, err) = run(bad);
        assert_eq!(code, 64, "{bad:?}: {err}");
        assert!(err.contains(says), "{bad:?}: {err}");
    }
    assert_eq!(e.calls(), "", "docker was not called");
    use clap::CommandFactory;
    berth_core::settings::assert_known_envs(&berth_migrate::Cli::command());
}
