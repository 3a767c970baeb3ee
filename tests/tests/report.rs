//! berth-report against the real demo stack: `status` shows what runs now (image, tag,
//! health, containers) and the last release the report recorded.

use std::process::Command;

use berth_e2e::{berth, Stack, TestServer};
use serde_json::{json, Value};

/// `berth-report SUB ARGS... --project-dir DIR -p NAME` (a subcommand takes its flags
/// after its name).
fn sub(stack: &Stack, args: &[&str]) -> Command {
    let mut c = berth("berth-report");
    c.args(args)
        .arg("--project-dir")
        .arg(&stack.dir)
        .args(["-p", &stack.project])
        .current_dir(&stack.dir);
    c
}

#[test]
fn status_shows_web_at_v1_healthy_and_the_last_release() {
    let stack = Stack::new("report-status");
    stack.start("v1");

    // Record a release the way the pipeline's last stage does.
    let doc = json!({
        "schema": "berth/1", "deploy_id": "20261122T031500Z-v1", "project": stack.project,
        "tag": "v1", "previous_tag": null,
        "services": [{"name": "web", "image": "berth-demo/app:v1"}],
        "created_at": "2026-11-22T03:15:00.000Z",
        "stages": [{"stage": "swap", "status": "ok", "started_at": "2026-11-22T03:15:01.000Z",
                    "duration_ms": 5000, "exit_code": 0, "detail": {}, "error": null}],
    });
    let out = stack
        .berth("berth-report")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(doc.to_string().as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // JSON: web runs v1, healthy, one container named after the project.
    let out = sub(&stack, &["status", "--json"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["project"], stack.project.as_str());
    let services = v["services"].as_array().unwrap();
    let names: Vec<&str> = services
        .iter()
        .map(|s| s["service"].as_str().unwrap())
        .collect();
    for s in ["db", "proxy", "redis", "web", "worker"] {
        assert!(names.contains(&s), "{s} missing from {names:?}");
    }
    let web = services.iter().find(|s| s["service"] == "web").unwrap();
    assert_eq!(web["image"], "berth-demo/app:v1");
    assert_eq!(web["tag"], "v1");
    assert_eq!(web["health"], "healthy");
    assert_eq!(web["running"], 1);
    let c = &web["containers"][0];
    assert_eq!(c["state"], "running");
    assert!(
        c["name"].as_str().unwrap().starts_with(&stack.project),
        "{c}"
    );
    let since = web["since"].as_str().unwrap();
    assert!(berth_core::time::parse(since).is_some(), "{since}");
    assert_eq!(v["last_release"]["deploy_id"], "20261122T031500Z-v1");
    assert_eq!(v["last_good"]["tag"], "v1");

    // Text, one service.
    let out = sub(&stack, &["status", "web"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("no web row in:\n{text}"));
    assert!(row.contains(" v1 ") && row.contains("healthy"), "{row}");
    assert!(row.contains("berth-demo/app:v1"), "{row}");
    assert!(!text.lines().any(|l| l.starts_with("worker ")), "{text}");
    assert!(
        text.contains("Last release: 20261122T031500Z-v1 tag v1"),
        "{text}"
    );

    // Backups: a real one of the demo database, fresh; an old one of another target,
    // stale against the default --max-age 26h.
    // With a dead-man ping (healthchecks.io style) on a local check server.
    let monitor = TestServer::start(|_| (200, "OK".into()));
    let check = monitor.url("/ping/3f9c-check-uuid");
    let bb = |args: &[&str]| {
        berth("berth-backup")
            .args(args)
            .arg("--project-dir")
            .arg(&stack.dir)
            .args(["-p", &stack.project])
            .current_dir(&stack.dir)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let backup = |service: &str| bb(&["pg", "--service", service, "--quiet", "--ping", &check]);
    let b = backup("db");
    assert_eq!(
        b.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&b.stderr)
    );
    // A failing one pings /fail with its error line; the outcome is the backup's.
    let f = backup("nope");
    assert_eq!(
        f.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&f.stderr)
    );
    let seen: Vec<String> = monitor
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|h| h.lines().next().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        seen,
        [
            "POST /ping/3f9c-check-uuid/start HTTP/1.1",
            "POST /ping/3f9c-check-uuid HTTP/1.1",
            "POST /ping/3f9c-check-uuid/start HTTP/1.1",
            "POST /ping/3f9c-check-uuid/fail HTTP/1.1",
        ]
    );
    let bodies = monitor.bodies.lock().unwrap().clone();
    assert!(bodies[3].contains("nope"), "{bodies:?}");
    for out in [&b, &f] {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !all.contains("3f9c-check-uuid"),
            "the check URL leaked: {all}"
        );
    }
    let dir = stack.state_dir().join("backups");
    std::fs::write(dir.join("old-archive-20260101T000000Z.dump"), b"PGDMP").unwrap();
    let old = json!({
        "format": "berth-backup/1", "kind": "pg", "file": "old-archive-20260101T000000Z.dump",
        "bytes": 5, "sha256": "x", "created_at": "2026-01-01T00:00:00.000Z",
        "project": stack.project, "target": "archive", "source": "service db",
        "verification": "read", "duration_ms": 1,
    });
    std::fs::write(
        dir.join("old-archive-20260101T000000Z.dump.json"),
        old.to_string(),
    )
    .unwrap();
    let out = sub(&stack, &["status", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let backups = v["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 2, "{v}");
    let fresh = backups.iter().find(|b| b["target"] != "archive").unwrap();
    assert_eq!(
        (fresh["kind"].as_str(), fresh["stale"].as_bool()),
        (Some("pg"), Some(false)),
        "{fresh}"
    );
    let stale = backups.iter().find(|b| b["target"] == "archive").unwrap();
    assert_eq!(stale["stale"], true, "{stale}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pg archive is older than --max-age 26h"),
        "{err}"
    );
    // A restore drill of the newest backup passes and is recorded; a drill of a
    // truncated copy fails with 5 and is recorded too; status shows the last one.
    let d = bb(&["drill", "--service", "db"]);
    assert_eq!(
        d.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&d.stderr)
    );
    let out = sub(&stack, &["status", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["last_drill"]["passed"], true, "{v}");
    let fresh_file = fresh["file"].as_str().unwrap();
    assert!(
        v["last_drill"]["file"]
            .as_str()
            .unwrap()
            .ends_with(fresh_file),
        "{v}"
    );
    let dump = std::fs::read(dir.join(fresh_file)).unwrap();
    let torn = stack.dir.join("torn.dump");
    std::fs::write(&torn, &dump[..dump.len() / 2]).unwrap();
    let d = bb(&["drill", torn.to_str().unwrap(), "--service", "db"]);
    assert_eq!(
        d.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&d.stderr)
    );
    // No scratch database is left behind.
    let dbs = stack.compose_ok(&[
        "exec",
        "-T",
        "db",
        "psql",
        "-U",
        "demo",
        "-d",
        "postgres",
        "-Atc",
        "SELECT datname FROM pg_database",
    ]);
    assert!(!dbs.contains("berth_verify"), "{dbs}");
    let out = sub(&stack, &["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("last drill: FAILED"), "{text}");
    // Drills are not releases.
    let out = sub(&stack, &["history", "--json"]).output().unwrap();
    let h: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(h.as_array().unwrap().len(), 1, "{h}");

    let out = sub(&stack, &["status", "--max-age", "3000d"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Backups:") && !text.contains("STALE"),
        "{text}"
    );

    // An unknown service is a usage error naming the ones there are.
    let out = sub(&stack, &["status", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no service \"nope\"") && err.contains("web"),
        "{err}"
    );
}
