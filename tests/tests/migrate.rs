//! berth-migrate against the real demo stack (Docker Engine, Compose v2, nginx,
//! PostgreSQL): v1 serving, the v2 image migrates the schema 1 -> 2 in a one-off container
//! and v1 still answers ready; a failing migration exits 6 with its log tail while v1
//! serves; a hanging migration is stopped and its container removed on timeout and on
//! SIGTERM.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::{run_ok, Stack};
use serde_json::Value;

/// The demo app's migration lock (`pg_advisory_xact_lock` key in its `migrate`).
const DEMO_MIGRATION_LOCK: i64 = 0x6265_7274_6864;

fn psql(stack: &Stack, sql: &str) -> String {
    stack
        .compose_ok(&[
            "exec", "-T", "db", "psql", "-U", "demo", "-d", "demo", "-tAc", sql,
        ])
        .trim()
        .to_string()
}

fn schema(stack: &Stack) -> i64 {
    psql(
        stack,
        "SELECT coalesce(max(version), 0) FROM schema_version",
    )
    .parse()
    .expect("a schema version")
}

/// Migration containers of this stack, running or not.
fn migrate_containers(stack: &Stack) -> Vec<String> {
    let out = run_ok(Command::new("docker").args([
        "ps",
        "-aq",
        "--filter",
        &format!("label=com.docker.compose.project={}", stack.project),
        "--filter",
        "label=berth.role=migrate",
    ]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn doc_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn migrate_record(doc: &Value) -> &Value {
    doc["stages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|s| s["stage"] == "migrate")
        .unwrap_or_else(|| panic!("no migrate record: {doc}"))
}

fn migrate(stack: &Stack, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut c = stack.berth("berth-migrate");
    c.args(args);
    match stdin {
        None => c.stdin(Stdio::null()).output().unwrap(),
        Some(input) => berth_e2e::output_with_stdin(&mut c, input),
    }
}

/// v1 answers through the proxy.
fn assert_v1_serves(stack: &Stack) {
    let (status, version, body) = stack.get("/");
    assert_eq!((status, version.as_str()), (200, "v1"), "{body}");
    let (status, _, body) = stack.get("/readyz");
    assert_eq!(status, 200, "{body}");
}

/// The three scenarios on one stack (two start-ups less for CI), each from v1 serving on
/// schema 1 with no migration container, which each one asserts when it ends: the failing
/// and the hanging migrations change nothing, so the good one comes last.
#[test]
fn failing_then_hanging_then_good_migration_on_one_stack() {
    let t0 = Instant::now();
    let stack = Stack::new("migrate");
    stack.start("v1");
    eprintln!("stack up: {:?}", t0.elapsed());
    let t = Instant::now();
    a_failing_migration_exits_6_with_its_log_tail_and_the_restore_command_while_v1_serves(&stack);
    eprintln!("failing migration: {:?}", t.elapsed());
    let t = Instant::now();
    a_hanging_migration_is_removed_on_timeout_on_sigterm_and_after_kill_9(&stack);
    eprintln!("hanging migration: {:?}", t.elapsed());
    let t = Instant::now();
    v2_migrates_the_schema_in_a_one_off_container_and_v1_stays_ready(&stack);
    eprintln!("good migration: {:?}", t.elapsed());
    eprintln!("whole test: {:?}", t0.elapsed());
}

fn v2_migrates_the_schema_in_a_one_off_container_and_v1_stays_ready(stack: &Stack) {
    assert_eq!(schema(stack), 1);
    assert!(migrate_containers(stack).is_empty());
    let out = migrate(
        stack,
        &[
            "--tag",
            "v2",
            "--no-backup-required",
            "web",
            "--",
            "migrate",
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(schema(stack), 2);
    let doc = doc_of(&out);
    let rec = migrate_record(&doc);
    assert_eq!(rec["status"], "ok");
    let d = &rec["detail"];
    assert_eq!(d["image"], "berth-demo/app:v2");
    assert_eq!(d["exit_status"], 0);
    assert_eq!(d["command"], serde_json::json!(["migrate"]));
    assert_eq!(d["old_version_ready"], true, "{d}");
    let old = d["old_version"].as_array().unwrap();
    assert_eq!(old.len(), 1, "{d}");
    assert_eq!(old[0]["image"], "berth-demo/app:v1");
    // The whole output is in the log, in the state directory.
    let log = Path::new(d["log"].as_str().unwrap());
    assert!(log.starts_with(stack.state_dir().join("logs")), "{log:?}");
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("schema 1 -> 2"), "{text}");
    assert!(
        migrate_containers(stack).is_empty(),
        "a migration container is left"
    );
    // Nothing else was touched: v1 serves, the lock is free.
    assert_v1_serves(stack);
    assert!(berth_core::lock::holder(&stack.state_dir(), "deploy").is_none());
}

fn a_failing_migration_exits_6_with_its_log_tail_and_the_restore_command_while_v1_serves(
    stack: &Stack,
) {
    assert_eq!(schema(stack), 1);
    // A real verified backup first, as the pipeline does.
    let backup = run_ok(
        berth_e2e::berth("berth-backup")
            .arg("pg")
            .arg("--project-dir")
            .arg(&stack.dir)
            .args([
                "-p",
                &stack.project,
                "--service",
                "db",
                "--tag",
                "badmigrate",
            ])
            .current_dir(&stack.dir)
            .stdin(Stdio::null()),
    );
    let out = migrate(stack, &["web", "--", "migrate"], Some(&backup.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    let doc = doc_of(&out);
    let rec = migrate_record(&doc);
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["exit_code"], 6);
    let d = &rec["detail"];
    assert_eq!(d["image"], "berth-demo/app:badmigrate");
    assert_eq!(d["exit_status"], 1);
    let tail = d["log_tail"].as_str().unwrap();
    assert!(tail.contains("fails on purpose"), "{tail}");
    assert!(tail.lines().count() <= 50);
    assert!(
        err.contains("| ") && err.contains("fails on purpose"),
        "{err}"
    );
    // The restore command names the backup file the document recorded.
    let file = doc["stages"][0]["detail"]["file"].as_str().unwrap();
    assert!(Path::new(file).is_file(), "{file}");
    let restore = d["restore_command"].as_str().unwrap();
    assert!(restore.starts_with("berth-backup restore "), "{restore}");
    assert!(restore.contains(file), "{restore}");
    assert!(err.contains(restore), "{err}");
    // The schema is unchanged, v1 still serves and is still ready; nothing left over.
    assert_eq!(schema(stack), 1);
    assert_eq!(d["old_version_ready"], true, "{d}");
    assert_v1_serves(stack);
    assert!(migrate_containers(stack).is_empty());
}

/// A session holding the demo app's migration lock: `migrate` waits on it (a migration
/// stuck behind a lock, the usual way one hangs). Released on drop.
struct LockHolder<'a> {
    stack: &'a Stack,
    child: Child,
}

impl<'a> LockHolder<'a> {
    fn hold(stack: &'a Stack) -> LockHolder<'a> {
        let sql = format!(
            "SELECT pg_advisory_lock({DEMO_MIGRATION_LOCK}); SELECT pg_sleep(120) /* berth-e2e-holder */"
        );
        let child = stack
            .compose()
            .args([
                "exec", "-T", "db", "psql", "-U", "demo", "-d", "demo", "-c", &sql,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let holder = LockHolder { stack, child };
        let t = Instant::now();
        while psql(
            stack,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted",
        ) != "1"
        {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the lock was not taken"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        holder
    }
}

impl Drop for LockHolder<'_> {
    fn drop(&mut self) {
        let _ = self.stack.compose().args([
            "exec", "-T", "db", "psql", "-U", "demo", "-d", "demo", "-tAc",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%berth-e2e-holder%' AND pid <> pg_backend_pid()",
        ]).output();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start berth-migrate in the background (stdout and stderr piped) and wait until its
/// migration container exists.
fn spawn_until_running(stack: &Stack, args: &[&str]) -> Child {
    let mut child = stack
        .berth("berth-migrate")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while migrate_containers(stack).is_empty() {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "berth-migrate ended ({status}) before its container was seen: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the migration never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

const HANG: &[&str] = &["--tag", "v2", "--no-backup-required"];

fn a_hanging_migration_is_removed_on_timeout_on_sigterm_and_after_kill_9(stack: &Stack) {
    assert_eq!(schema(stack), 1);
    assert!(migrate_containers(stack).is_empty());
    let _lock = LockHolder::hold(stack);

    // Timeout: exit 6 once the clock runs out, the container gone. (8 s: room for the
    // container to start on a loaded machine, so that it is seen running first.)
    let t = Instant::now();
    let args = [HANG, &["--timeout", "8s", "web", "--", "migrate"]].concat();
    let child = spawn_until_running(stack, &args);
    let out = child.wait_with_output().unwrap();
    let elapsed = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(elapsed >= Duration::from_secs(8), "took {elapsed:?}");
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
    assert!(err.contains("did not finish within 8s"), "{err}");
    let doc = doc_of(&out);
    let d = &migrate_record(&doc)["detail"];
    assert_eq!(d["ended"], "timed_out");
    assert_eq!(d["containers_left"], 0);
    // It was waiting on the lock when it was stopped.
    let log = std::fs::read_to_string(d["log"].as_str().unwrap()).unwrap();
    assert!(log.contains("wants schema 2"), "{log}");
    assert!(
        log.contains("timed out after 8s; removed container"),
        "{log}"
    );
    assert!(
        migrate_containers(stack).is_empty(),
        "left running after the timeout"
    );
    assert_eq!(schema(stack), 1);

    // SIGTERM while it waits: exit 6, the container gone.
    let args = [HANG, &["web", "--", "migrate"]].concat();
    let child = spawn_until_running(stack, &args);
    run_ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("interrupted by SIGTERM"), "{err}");
    let doc = doc_of(&out);
    assert_eq!(migrate_record(&doc)["detail"]["ended"], "interrupted");
    assert!(
        migrate_containers(stack).is_empty(),
        "left running after SIGTERM"
    );
    assert_eq!(schema(stack), 1);

    // kill -9 cannot be caught: the container outlives berth-migrate (compose's own
    // pitfall), and the next berth-migrate of the project removes it first.
    let mut child = spawn_until_running(stack, &args);
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        migrate_containers(stack).len(),
        1,
        "the orphan is still there"
    );
    let args = [HANG, &["--timeout", "2s", "web", "--", "migrate"]].concat();
    let out = migrate(stack, &args, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains(
            "removing 1 migration container(s) an earlier, interrupted berth-migrate left behind"
        ),
        "{err}"
    );
    assert!(migrate_containers(stack).is_empty(), "{err}");
    assert_eq!(schema(stack), 1);
    assert_v1_serves(stack);
}
