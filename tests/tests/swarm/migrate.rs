//! `berth-migrate --engine swarm` on the test bed (a part of
//! `swarm_parts_on_one_three_node_test_bed`, sharing its Swarm and the
//! database stack of swarm/pg.rs, whose task runs on a worker): a stack `berthmig` whose
//! `web` service (the demo app, 0 replicas) has the database's URL in its environment
//! and the database stack's attachable overlay network. berth on the manager runs the
//! migration from the NEW image (v2, pulled from the registry, pinned by digest), which
//! creates the demo's tables in a database on the worker; a failing migration (the
//! `badmigrate` image) exits 6 with its log's tail; a migration that never ends is
//! stopped at `--timeout` (exit 6); a berth-migrate killed with SIGKILL leaves its
//! container, which the next run removes by label. No container is left, and the
//! service's password shows in no output or document.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::berth;
use berth_e2e::swarm::Testbed;
use serde_json::Value;

use super::pg::{self, Db, PASSWORD};

const STACK: &str = "berthmig";

/// The demo app's web service, no task: its spec is what the migration runs with.
const STACK_FILE: &str = r#"services:
  web:
    image: REGISTRY/app:${BERTH_TAG}
    environment:
      DATABASE_URL: "postgres://app:@PW@@DBSTACK_db:5432/demo"
    networks: [data]
    deploy:
      replicas: 0
networks:
  data:
    external: true
    name: DBSTACK_data
"#;

/// The stack, deployed at v1 (the images v2 and badmigrate pushed beside it).
pub struct Mig {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

pub fn deploy(tb: &Testbed) -> Mig {
    for tag in ["v2", "badmigrate"] {
        tb.push(&format!("berth-demo/app:{tag}"), &format!("app:{tag}"));
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(STACK);
    std::fs::create_dir_all(&dir).unwrap();
    let file = STACK_FILE
        .replace("REGISTRY", &tb.registry)
        .replace("@PW@", PASSWORD)
        .replace("DBSTACK", pg::STACK);
    std::fs::write(dir.join("compose.yaml"), file).unwrap();
    tb.deploy_stack(&dir, STACK, "v1");
    Mig { dir, _tmp: tmp }
}

/// `berth-migrate --engine swarm -p berthmig ARGS` with berth on the manager.
fn migrate(tb: &Testbed, dir: &Path, args: &[&str]) -> std::process::Command {
    let mut c = berth("berth-migrate");
    c.env("DOCKER_HOST", tb.manager.docker_host())
        .args(["--engine", "swarm", "-p", STACK, "--no-backup-required"])
        .arg("--project-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null());
    c
}

fn outcome(out: &Output) -> (i32, Value, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no document ({e}): {stderr}"));
    for text in [&stderr, &doc.to_string()] {
        assert!(!text.contains(PASSWORD), "the password leaked: {text}");
    }
    (out.status.code().unwrap_or(-1), doc, stderr)
}

/// The migration containers on the manager (all states).
fn left(tb: &Testbed) -> String {
    tb.manager.docker_ok(&[
        "ps",
        "-aq",
        "--filter",
        "label=berth.role=migrate",
        "--filter",
        &format!("label=berth.stack={STACK}"),
    ])
}

pub fn migrations_reach_the_db_task_on_a_worker(tb: &Testbed, db: &Db, mig: &Mig) {
    let t0 = Instant::now();
    let (m, dir) = (&tb.manager, mig.dir.as_path());
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Err(e) = pg::sql(m, &db.image, "postgres", "CREATE DATABASE demo") {
        assert!(Instant::now() < deadline, "the db never answered: {e}");
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("migrate: the db answered at {:?}", t0.elapsed());

    // The new image's migration creates the schema, from the manager, on the worker's db.
    let out = migrate(tb, dir, &["--tag", "v2", "web", "--", "migrate"])
        .output()
        .unwrap();
    let (code, doc, err) = outcome(&out);
    assert_eq!(code, 0, "{err}");
    let rec = &doc["stages"][0];
    assert_eq!(
        (&rec["stage"], &rec["status"]),
        (&"migrate".into(), &"ok".into())
    );
    let image = rec["detail"]["image"].as_str().unwrap_or_default();
    assert!(
        image.starts_with(&format!("{}/app@sha256:", tb.registry)),
        "pinned by digest: {rec}"
    );
    assert_eq!(rec["detail"]["exit_status"], 0, "{rec}");
    assert_eq!(rec["detail"]["containers_left"], 0, "{rec}");
    let q = "SELECT max(version) || ',' || (SELECT count(*) FROM items) FROM schema_version";
    assert_eq!(pg::sql(m, &db.image, "demo", q).unwrap(), "2,3");
    let db_node = m.docker_ok(&[
        "service",
        "ps",
        &format!("{}_db", pg::STACK),
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Node}}",
    ]);
    assert_ne!(db_node, m.container, "the db task is on a worker");
    eprintln!("migrate: schema 2 on {db_node}'s db at {:?}", t0.elapsed());

    // A migration that fails: exit 6, its output's tail on stderr and in the document.
    let out = migrate(tb, dir, &["--tag", "badmigrate", "web", "--", "migrate"])
        .output()
        .unwrap();
    let (code, doc, err) = outcome(&out);
    assert_eq!(code, 6, "{err}");
    let rec = &doc["stages"][0];
    assert_eq!(rec["status"], "failed");
    let error = rec["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("the migration exited with 1"), "{error}");
    let tail = rec["detail"]["log_tail"].as_str().unwrap_or_default();
    assert!(tail.contains("fails on purpose"), "{tail}");
    assert!(err.contains("| migrate: applying the final step"), "{err}");
    assert_eq!(pg::sql(m, &db.image, "demo", q).unwrap(), "2,3");

    // One that never ends (the app's server): stopped at --timeout, exit 6, removed.
    let out = migrate(
        tb,
        dir,
        &["--tag", "v2", "--timeout", "3s", "web", "--", "serve"],
    )
    .output()
    .unwrap();
    let (code, doc, err) = outcome(&out);
    assert_eq!(code, 6, "{err}");
    assert_eq!(doc["stages"][0]["detail"]["ended"], "timed_out");
    assert!(err.contains("did not finish within 3s"), "{err}");
    assert_eq!(left(tb), "", "the timed-out container is removed");

    // berth-migrate killed (SIGKILL) while its migration runs: the container stays
    // (it never ends here), and the next berth-migrate removes it before migrating.
    let mut child = migrate(tb, dir, &["--tag", "v2", "web", "--", "serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while left(tb).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no migration container within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_ne!(left(tb), "", "killed with SIGKILL: nothing removed it yet");
    let out = migrate(tb, dir, &["--tag", "v2", "web", "--", "migrate"])
        .output()
        .unwrap();
    let (code, doc, err) = outcome(&out);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "removing 1 migration container(s) an earlier, interrupted berth-migrate left behind"
        ),
        "{err}"
    );
    let log = doc["stages"][0]["detail"]["log"]
        .as_str()
        .unwrap_or_default();
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("nothing to do: already at schema 2"), "{log}");
    assert!(!log.contains(PASSWORD), "the password leaked into the log");
    assert_eq!(left(tb), "", "no migration container left");
    eprintln!("migrate: done at {:?}", t0.elapsed());
}
