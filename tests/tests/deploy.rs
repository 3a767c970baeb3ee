//! The whole deploy, `scripts/deploy.sh`, on the demo stack under load: preflight, pull,
//! backup, migrate, swap, smoke, rollback, report. One exit code per outcome, exactly as
//! the README's table says, and zero failed requests whatever happens.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::clients::{ClientReport, Clients, Method, Mix};
use berth_e2e::{bin, root, stages, Stack, TestServer};
use serde_json::Value;

const TOKEN: &str = "123456:telegram-secret-token";

/// Start the stack at `tag` (database migrated to its schema).
fn stack(name: &str, tag: &str) -> Stack {
    let t = Instant::now();
    let s = Stack::new(name);
    s.start(tag);
    eprintln!("{name}: stack up at {tag} in {:?}", t.elapsed());
    s
}

/// `scripts/deploy.sh TAG` against the stack, configured like the demo's production env
/// file, with Telegram and the webhook pointed at `notify` (a local stand-in).
fn deploy_cmd(s: &Stack, tag: &str, notify: Option<&TestServer>) -> Command {
    deploy_cmd_args(s, &[tag], notify)
}

/// [`deploy_cmd`] with the script's arguments given whole (e.g. `--dry-run v2`).
fn deploy_cmd_args(s: &Stack, args: &[&str], notify: Option<&TestServer>) -> Command {
    let mut c = Command::new(root().join("scripts/deploy.sh"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if k.starts_with("BERTH_") || k.starts_with("DEPLOY_") || k.starts_with("TELEGRAM_") {
            c.env_remove(k);
        }
    }
    let bin_dir: PathBuf = bin("berth-swap").parent().unwrap().to_path_buf();
    c.args(args)
        .current_dir(&s.dir)
        .env("BERTH_BIN_DIR", bin_dir)
        .env("BERTH_PROJECT_DIR", &s.dir)
        .env("BERTH_PROJECT_NAME", &s.project)
        .env("DEPLOY_SERVICES", "web worker")
        .env("DEPLOY_WORKERS", "worker")
        .env("DEPLOY_MIGRATE_CMD", "migrate")
        .env("DEPLOY_SMOKE_URL", s.url("/smoke"))
        .env("DEPLOY_SMOKE_SUCCESSES", "2")
        .env("DEPLOY_SMOKE_TIMEOUT", "10s")
        // Short timings for tests: the demo app drains in well under a second.
        .env("BERTH_DRAIN", "1s")
        .env("BERTH_STOP_TIMEOUT", "5s")
        .env("BERTH_SWAP_TIMEOUT", "30s")
        .stdin(Stdio::null());
    if let Some(n) = notify {
        c.env("DEPLOY_NOTIFY", "telegram,webhook")
            .env("TELEGRAM_BOT_TOKEN", TOKEN)
            .env("TELEGRAM_CHAT_ID", "4242")
            .env("BERTH_TELEGRAM_API", n.url(""))
            .env("BERTH_WEBHOOK_URL", n.url("/hook"));
    }
    c
}

struct Run {
    code: i32,
    stderr: String,
}

fn run(mut c: Command) -> Run {
    let t = Instant::now();
    let out: Output = c.output().expect("deploy.sh runs");
    let args: Vec<_> = c.get_args().map(|a| a.to_string_lossy()).collect();
    eprintln!(
        "deploy.sh {}: exit {:?} in {:?}",
        args.join(" "),
        out.status.code(),
        t.elapsed()
    );
    Run {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// The deploy documents berth kept in the state directory, newest last.
fn last_document(s: &Stack) -> Value {
    berth_e2e::last_document(&s.state_dir())
}

fn ledger_lines(s: &Stack) -> usize {
    std::fs::read_to_string(s.state_dir().join("releases.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Clients that behave like real ones (tests/src/clients.rs: 8, keep-alive when nginx
/// allows it, every third request a POST, nothing resent) on `/` for the whole of `f`.
fn under_load(s: &Stack, f: impl FnOnce()) -> ClientReport {
    let mix = Mix {
        path: "/".to_string(),
        max_time: Duration::from_secs(240),
        ..Mix::default()
    };
    let load = Clients::start(&s.url(""), &mix);
    std::thread::sleep(Duration::from_millis(500));
    f();
    std::thread::sleep(Duration::from_millis(500));
    load.stop()
}

fn serving(s: &Stack) -> String {
    let (status, version, _) = s.get("/");
    assert_eq!(status, 200);
    version
}

fn schema(s: &Stack) -> String {
    s.compose_ok(&[
        "exec",
        "-T",
        "db",
        "psql",
        "-U",
        "demo",
        "-d",
        "demo",
        "-tAc",
        "SELECT max(version) FROM schema_version",
    ])
    .trim()
    .to_string()
}

#[test]
fn v1_to_v2_with_migration_backup_ledger_and_notifications() {
    let notify = TestServer::start(|_| (200, r#"{"ok":true}"#.into()));
    let s = stack("deploy-v2", "v1");
    let mut r = None;
    let load = under_load(&s, || r = Some(run(deploy_cmd(&s, "v2", Some(&notify)))));
    let r = r.unwrap();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(load.failed(), 0, "{}", load.summary());
    assert!(load.total() > 200, "{}", load.summary());
    assert_eq!(serving(&s), "v2");
    assert_eq!(schema(&s), "2");
    assert_eq!(s.env_value("BERTH_TAG").as_deref(), Some("v2"));

    let doc = last_document(&s);
    let names: Vec<String> = stages(&doc).into_iter().map(|t| t.0).collect();
    assert_eq!(
        names,
        // Nothing to undo: rollback and report pass a success through without a record.
        ["preflight", "pull", "backup", "migrate", "swap", "smoke"],
        "{doc}"
    );
    assert!(
        stages(&doc)
            .iter()
            .all(|(_, st, c)| *c == 0 && st != "failed"),
        "{doc}"
    );
    assert_eq!(doc["previous_tag"], "v1");

    // The backup and its manifest, 0600.
    let backup = &doc["stages"][2]["detail"];
    let file = PathBuf::from(backup["file"].as_str().expect("backup file"));
    assert!(file.is_file(), "{}", file.display());
    let manifest = PathBuf::from(format!("{}.json", file.display()));
    assert!(manifest.is_file(), "{}", manifest.display());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The state is private: the directory 0700, the ledger and the documents 0600.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&s.state_dir()), 0o700);
    assert_eq!(mode(&s.state_dir().join("releases.jsonl")), 0o600);
    let logs = std::fs::read_dir(s.state_dir().join("logs")).unwrap();
    for d in std::fs::read_dir(s.state_dir().join("deploys"))
        .unwrap()
        .chain(logs)
    {
        let p = d.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }

    // The ledger holds the release; the report's line is the last of this deploy.
    assert!(ledger_lines(&s) >= 1);
    let ledger = std::fs::read_to_string(s.state_dir().join("releases.jsonl")).unwrap();
    let last: Value = serde_json::from_str(ledger.lines().last().unwrap()).unwrap();
    assert_eq!(last["deploy_id"], doc["deploy_id"]);

    // Telegram and the webhook heard about the success; the token is nowhere.
    let seen = notify.seen.lock().unwrap().join("\n");
    let bodies = notify.bodies.lock().unwrap().join("\n");
    assert!(seen.contains(&format!("/bot{TOKEN}/sendMessage")), "{seen}");
    assert!(seen.contains("POST /hook"), "{seen}");
    assert!(
        bodies.contains("v2") && bodies.to_lowercase().contains("success"),
        "{bodies}"
    );
    assert!(!r.stderr.contains(TOKEN) && !ledger.contains(TOKEN));
}

#[test]
fn dry_run_then_failures_before_the_switch_exit_with_their_code_and_v1_keeps_serving() {
    let s = stack("deploy-before", "v1");
    // A dry run of the whole deploy: every stage says what it would do, nothing moves.
    let before = s.container_ids();
    let dry = deploy_cmd_args(&s, &["--dry-run", "v2"], None);
    let r = run(dry);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("would run: docker compose"),
        "{}",
        r.stderr
    );
    assert_eq!(s.container_ids(), before);
    assert_eq!(s.env_value("BERTH_TAG").as_deref(), Some("v1"));
    assert_eq!(ledger_lines(&s), 0);
    assert_eq!(schema(&s), "1");

    // Under load: a missing image, a failing migration, a release that never gets ready.
    let load = under_load(&s, || {
        // An image that exists nowhere: 2, nothing changed.
        let r = run(deploy_cmd(&s, "no-such-tag-3f9c2a1", None));
        assert_eq!(r.code, 2, "{}", r.stderr);
        let doc = last_document(&s);
        assert!(
            stages(&doc)
                .iter()
                .any(|t| t == &("pull".into(), "failed".into(), 2)),
            "{doc}"
        );
        assert!(
            !stages(&doc).iter().any(|t| t.0 == "backup"),
            "nothing after pull ran: {doc}"
        );

        // A migration that fails: 6, the backup is there and the restore command printed.
        let r = run(deploy_cmd(&s, "badmigrate", None));
        assert_eq!(r.code, 6, "{}", r.stderr);
        assert!(r.stderr.contains("berth-backup restore"), "{}", r.stderr);
        let doc = last_document(&s);
        let file = doc["stages"][2]["detail"]["file"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(PathBuf::from(&file).is_file());
        assert_eq!(schema(&s), "1");

        // An image that never becomes ready: 3.
        let r = run(deploy_cmd(&s, "broken", None));
        assert_eq!(r.code, 3, "{}", r.stderr);
    });
    assert_eq!(load.failed(), 0, "{}", load.summary());
    assert_eq!(serving(&s), "v1");
    assert_eq!(s.env_value("BERTH_TAG").as_deref(), Some("v1"));
    assert_eq!(
        s.service_containers("web").len(),
        1,
        "no new container left"
    );

    // The database is down: the backup fails, 5, and nothing after it runs.
    s.compose_ok(&["stop", "db"]);
    let r = run(deploy_cmd(&s, "v2", None));
    assert_eq!(r.code, 5, "{}", r.stderr);
    let doc = last_document(&s);
    let st = stages(&doc);
    assert!(
        st.iter()
            .any(|t| t == &("backup".into(), "failed".into(), 5)),
        "{doc}"
    );
    assert!(
        !st.iter().any(|t| t.0 == "migrate" || t.0 == "swap"),
        "{doc}"
    );
    assert_eq!(serving(&s), "v1");
    assert_eq!(s.env_value("BERTH_TAG").as_deref(), Some("v1"));
}

#[test]
fn unhealthy_after_the_switch_rolls_back_4_and_an_impossible_rollback_is_7() {
    let notify = TestServer::start(|_| (200, r#"{"ok":true}"#.into()));
    // The previous release runs from a tag that is then removed by hand (the image itself
    // stays in use by the running containers): rolling back to it cannot work.
    let prev = format!("prev{}", std::process::id());
    berth_e2e::run_ok(Command::new("docker").args([
        "tag",
        "berth-demo/app:v1",
        &format!("berth-demo/app:{prev}"),
    ]));
    let s = stack("deploy-sick", &prev);

    // sick passes its readiness check but fails the smoke test after the switch.
    let mut r = None;
    // Its smoke check fails for as long as it is given: 4 s of it is plenty (CI time).
    let sick = || {
        let mut c = deploy_cmd(&s, "sick", Some(&notify));
        c.env("DEPLOY_SMOKE_TIMEOUT", "4s");
        c
    };
    let load = under_load(&s, || r = Some(run(sick())));
    let r = r.unwrap();
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert_eq!(load.failed(), 0, "{}", load.summary());
    assert_eq!(serving(&s), "v1");
    assert_eq!(s.env_value("BERTH_TAG").as_deref(), Some(prev.as_str()));
    let doc = last_document(&s);
    assert_eq!(
        stages(&doc).last().unwrap(),
        &("rollback".to_string(), "ok".to_string(), 4),
        "{doc}"
    );
    assert!(notify
        .bodies
        .lock()
        .unwrap()
        .join("\n")
        .to_lowercase()
        .contains("rolled back"));

    // Now the previous tag disappears, and the same bad release comes again.
    berth_e2e::run_ok(Command::new("docker").args(["rmi", &format!("berth-demo/app:{prev}")]));
    let r = run(sick());
    assert_eq!(r.code, 7, "{}", r.stderr);
    let critical: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("CRITICAL"))
        .collect();
    assert!(!critical.is_empty(), "{}", r.stderr);
    assert!(
        critical.iter().any(|l| l.contains(&prev)),
        "the CRITICAL line names the release to restore: {critical:?}"
    );
    assert!(notify
        .bodies
        .lock()
        .unwrap()
        .join("\n")
        .contains("CRITICAL"));
    // The new (sick) release still answers: a person decides what next.
    assert_eq!(s.get("/").0, 200);
}

#[test]
fn a_second_deploy_while_one_runs_exits_75() {
    let s = stack("deploy-lock", "v1");
    // A slow boot keeps the first deploy in its swap for a while.
    let mut first = deploy_cmd(&s, "v2", None);
    // No services named: every service whose image uses BERTH_TAG (web and worker).
    first.env_remove("DEPLOY_SERVICES");
    first.env("DEPLOY_MIGRATE_SERVICE", "web");
    first.env("DEMO_BOOT_DELAY_MS", "2000");
    s.set_env("DEMO_BOOT_DELAY_MS", "2000");
    let mut child = first
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the first deploy holds the lock.
    let lock = s.state_dir().join("locks/deploy.lock");
    let t = std::time::Instant::now();
    while !std::fs::read_to_string(&lock)
        .map(|c| c.contains("deploy.sh"))
        .unwrap_or(false)
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "first deploy never took the lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = run(deploy_cmd(&s, "v2", None));
    assert_eq!(second.code, 75, "{}", second.stderr);
    assert!(
        second.stderr.contains("another deploy holds the lock"),
        "{}",
        second.stderr
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(serving(&s), "v2");
    let doc = last_document(&s);
    let swapped: Vec<&str> = doc["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(swapped, ["web", "worker"], "{doc}");
    assert_eq!(s.service_containers("worker")[0].1, "berth-demo/app:v2");
    // The lock is free again, and its file names no holder that could look stale.
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), "");
}

#[test]
fn stage_by_stage_with_a_saved_document_equals_the_pipe() {
    // The same deploy, v1 -> v2, twice: once as one shell pipe of berth commands, once as
    // separate commands with the document saved in a file between them.
    // The two stacks start, and the two deploys run, side by side (CI time).
    let (pipe_stack, file_stack) = std::thread::scope(|sc| {
        let pipe = sc.spawn(|| stack("deploy-pipe", "v1"));
        let file = stack("deploy-file", "v1");
        (pipe.join().expect("the pipe's stack starts"), file)
    });
    let stage_args: Vec<Vec<String>> = vec![
        vec![
            "berth-swap".into(),
            "preflight".into(),
            "--tag".into(),
            "v2".into(),
            "web".into(),
            "worker".into(),
        ],
        vec![
            "berth-swap".into(),
            "pull".into(),
            "web".into(),
            "worker".into(),
        ],
        vec![
            "berth-backup".into(),
            "pg".into(),
            "--service".into(),
            "db".into(),
        ],
        vec![
            "berth-migrate".into(),
            "web".into(),
            "--".into(),
            "migrate".into(),
        ],
        vec![
            "berth-swap".into(),
            "--drain".into(),
            "1s".into(),
            "--worker".into(),
            "worker".into(),
            "web".into(),
            "worker".into(),
        ],
        vec![
            "berth-healthwait".into(),
            "--stage".into(),
            "smoke".into(),
            "--url".into(),
            "URL".into(),
        ],
        vec!["berth-rollback".into(), "--worker".into(), "worker".into()],
        vec!["berth-report".into()],
    ];
    let bin_dir = bin("berth-swap").parent().unwrap().to_path_buf();
    let common = |s: &Stack| format!("--project-dir {} -p {}", s.dir.display(), s.project);
    let words = |s: &Stack, a: &Vec<String>| -> String {
        let mut v: Vec<String> = a
            .iter()
            .map(|w| {
                if w == "URL" {
                    s.url("/smoke")
                } else {
                    w.clone()
                }
            })
            .collect();
        let prog = bin_dir.join(&v[0]).display().to_string();
        v[0] = prog;
        // Subcommands take the common flags after their name.
        let at = if matches!(
            a.get(1).map(String::as_str),
            Some("preflight" | "pull" | "pg")
        ) {
            2
        } else {
            1
        };
        v.insert(at, common(s));
        v.join(" ")
    };
    let pipe = stage_args
        .iter()
        .map(|a| words(&pipe_stack, a))
        .collect::<Vec<_>>()
        .join(" | ");
    let pipe_run = Command::new("bash")
        // The first stage starts a new document from an empty stdin.
        .args(["-c", &format!("</dev/null {pipe}")])
        .env_remove("BERTH_TAG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let doc_file = file_stack.dir.join("doc.json");
    std::fs::write(&doc_file, "").unwrap();
    let mut file_code = -1;
    for a in &stage_args {
        let line = words(&file_stack, a);
        let out = Command::new("bash")
            .args([
                "-c",
                &format!("{line} < doc.json > doc.next; c=$?; mv doc.next doc.json; exit $c"),
            ])
            .current_dir(&file_stack.dir)
            .env_remove("BERTH_TAG")
            .output()
            .unwrap();
        file_code = out.status.code().unwrap();
    }
    let file_doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&doc_file).unwrap()).unwrap();
    let out = pipe_run.wait_with_output().unwrap();
    let pipe_code = out.status.code().unwrap();
    let pipe_doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the pipe wrote no document ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });

    assert_eq!(pipe_code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(file_code, pipe_code);
    assert_eq!(stages(&file_doc), stages(&pipe_doc));
    assert_eq!(file_doc["tag"], pipe_doc["tag"]);
    assert_eq!(file_doc["previous_tag"], pipe_doc["previous_tag"]);
    assert_eq!(
        file_doc["services"].as_array().unwrap().len(),
        pipe_doc["services"].as_array().unwrap().len()
    );
    assert_eq!(serving(&pipe_stack), "v2");
    assert_eq!(serving(&file_stack), "v2");
}

#[test]
fn maintenance_mode_wraps_migrate_and_swap_and_the_report_states_the_window() {
    let s = stack("deploy-maint", "v1");
    let mut out = None;
    let load = under_load(&s, || {
        let mut c = deploy_cmd(&s, "v2", None);
        c.env("DEPLOY_MAINTENANCE", "1");
        out = Some(run(c));
    });
    let r = out.unwrap();
    assert_eq!(r.code, 0, "{}", r.stderr);
    // While the window is open nginx answers 503 (with Retry-After); never a dropped
    // connection, and nothing but the app's answers (GET 200, POST 405) and 503.
    assert_eq!(load.transport_errors(), 0, "{}", load.summary());
    let statuses = load.statuses();
    let allowed = [
        (Method::Get, 200),
        (Method::Get, 503),
        (Method::Post, 405),
        (Method::Post, 503),
    ];
    assert!(
        statuses.iter().all(|s| allowed.contains(s)),
        "{}",
        load.summary()
    );
    assert!(
        statuses.contains(&(Method::Get, 503)),
        "the window was seen: {}",
        load.summary()
    );
    let doc = last_document(&s);
    let names: Vec<String> = stages(&doc).into_iter().map(|t| t.0).collect();
    assert_eq!(
        names,
        [
            "preflight",
            "pull",
            "backup",
            "maintenance",
            "migrate",
            "swap",
            "maintenance",
            "smoke"
        ],
        "{doc}"
    );
    assert!(r.stderr.contains("Maintenance window"), "{}", r.stderr);
    assert_eq!(serving(&s), "v2");
    assert!(!s.dir.join("nginx/berth/server-maintenance.conf").exists());
}
