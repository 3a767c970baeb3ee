//! `berth-backup` on the test bed (a part of `swarm_parts_on_one_three_node_test_bed`,
//! sharing its Swarm; issue 11): the PostgreSQL task of a stack placed on a worker, berth
//! on the manager (`DOCKER_HOST`) reaching it through a one-off client container on the
//! stack's attachable overlay network. A verified backup (restore-level: restored into
//! scratch, row counts compared), `verify`, a restore that brings changed rows back (built
//! beside the live database, swapped in), and the failures: a wrong password, the
//! service scaled to 0 -> exit 5, nothing half-written left; a restore `drill`; `list`
//! and `prune` (they read only the backup directory) as on Compose. The service's password
//! never shows in output, document or manifest.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::berth;
use berth_e2e::swarm::{Node, Testbed};
use serde_json::Value;

pub const PASSWORD: &str = "sw4rm-Pw-9c1e";
pub const STACK: &str = "berthdb";

/// The database on a worker, reachable on an attachable overlay network.
const STACK_FILE: &str = r#"services:
  db:
    image: REGISTRY/postgres:15
    environment:
      POSTGRES_USER: app
      POSTGRES_PASSWORD: "@PW@"
      POSTGRES_DB: shop
    networks: [data]
    deploy:
      replicas: 1
      endpoint_mode: dnsrr
      placement:
        constraints: [node.role == worker]
networks:
  data:
    driver: overlay
    attachable: true
"#;

/// psql in a one-off container on the stack's network (the test's own way in, not berth's).
pub fn sql(m: &Node, image: &str, db: &str, q: &str) -> Result<String, String> {
    let out = m
        .docker()
        .args(["run", "--rm", "--network", &format!("{STACK}_data")])
        .args([
            "-e",
            &format!("PGPASSWORD={PASSWORD}"),
            "-e",
            "PGCONNECT_TIMEOUT=5",
            "--entrypoint",
            "psql",
        ])
        .args([image, "-h", &format!("{STACK}_db"), "-U", "app", "-d", db])
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", q])
        .output()
        .expect("docker run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// `berth-backup ARGS --engine swarm -p STACK` on the manager: (exit code, stdout, stderr).
fn backup(
    tb: &Testbed,
    dir: &Path,
    args: &[&str],
    extra_env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut c = berth("berth-backup");
    c.env("DOCKER_HOST", tb.manager.docker_host())
        .args(args)
        .args(["--engine", "swarm", "-p", STACK])
        .arg("--project-dir")
        .arg(dir)
        .arg("--dir")
        .arg(dir.join("backups"))
        .stdin(Stdio::null());
    for (k, v) in extra_env {
        c.env(k, v);
    }
    let out: Output = c.output().expect("berth-backup runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The database stack, deployed on a test bed (its task starts meanwhile).
pub struct Db {
    dir: PathBuf,
    pub image: String,
    _tmp: tempfile::TempDir,
}

/// Push `berth-fixture/postgres:15` (which must exist) and deploy the stack.
pub fn deploy(tb: &Testbed) -> Db {
    let t0 = Instant::now();
    let image = tb.push("berth-fixture/postgres:15", "postgres:15");
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join(STACK);
    std::fs::create_dir_all(&dir).unwrap();
    let stack_file = STACK_FILE
        .replace("REGISTRY", &tb.registry)
        .replace("@PW@", PASSWORD);
    std::fs::write(dir.join("compose.yaml"), stack_file).unwrap();
    tb.deploy_stack(&dir, STACK, "v1");
    eprintln!("pg: image pushed, stack deployed in {:?}", t0.elapsed());
    Db {
        dir,
        image,
        _tmp: tmp,
    }
}

/// The round trip on `tb`, with the stack [`deploy`] started.
pub fn backup_and_restore_reach_the_db_task_on_a_worker(tb: &Testbed, db: &Db) {
    let t0 = Instant::now();
    let (dir, image) = (db.dir.as_path(), db.image.as_str());

    // The db task runs on a worker; rows go in once it answers.
    let m = &tb.manager;
    let deadline = Instant::now() + Duration::from_secs(120);
    let seed = "CREATE TABLE items (id int PRIMARY KEY, name text); \
                INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 50) g";
    while let Err(e) = sql(m, image, "shop", seed) {
        assert!(Instant::now() < deadline, "the db never answered: {e}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let node = m.docker_ok(&[
        "service",
        "ps",
        &format!("{STACK}_db"),
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Node}}",
    ]);
    assert!(
        tb.workers.iter().any(|w| w.container == node),
        "the db task is on {node:?}, not a worker"
    );
    eprintln!("pg: db on {node}, 50 rows in, at {:?}", t0.elapsed());

    // A backup, verified by restoring it into scratch and comparing row counts.
    let (code, out, err) = backup(
        tb,
        dir,
        &["pg", "--service", "db", "--verify", "restore"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).expect("a document");
    let rec = &doc["stages"][0];
    assert_eq!(rec["stage"], "backup");
    assert_eq!(rec["status"], "ok", "{rec}");
    assert_eq!(rec["detail"]["verification"], "restore", "{rec}");
    assert_eq!(rec["detail"]["target"], "shop");
    assert_eq!(rec["detail"]["source"], "service db of Swarm stack berthdb");
    let file = PathBuf::from(rec["detail"]["file"].as_str().unwrap());
    let manifest = std::fs::read_to_string(rec["detail"]["manifest"].as_str().unwrap()).unwrap();
    let mf: Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(mf["row_counts"]["public.items"], 50, "{manifest}");
    let restore_cmd = rec["detail"]["restore_command"]
        .as_str()
        .unwrap_or_default();
    assert!(restore_cmd.contains(" --engine swarm"), "{restore_cmd}");
    for text in [&out, &err, &manifest] {
        assert!(!text.contains(PASSWORD), "the password leaked: {text}");
    }
    let backups = dir.join("backups");
    let before = files(&backups);
    assert_eq!(before.len(), 2, "the dump and its manifest: {before:?}");
    let path = file.to_string_lossy().to_string();
    let (code, _, err) = backup(tb, dir, &["verify", &path, "--service", "db"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("read verification ok"), "{err}");
    eprintln!("pg: backup verified at {:?}", t0.elapsed());

    // A restore drill into a scratch database on the worker's server: passes, and
    // `berth-report status` shows it with the backup (tests/tests/swarm/status.rs).
    let (code, _, err) = backup(tb, dir, &["drill", "--service", "db"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("drill passed"), "{err}");
    super::status::shows_the_backup_and_the_drill(tb, dir, STACK);
    eprintln!("pg: drilled at {:?}", t0.elapsed());

    // Rows change; the restore brings them back, the replaced database kept aside.
    sql(
        m,
        image,
        "shop",
        "DELETE FROM items WHERE id > 10; INSERT INTO items VALUES (999, 'new')",
    )
    .unwrap();
    let (code, _, err) = backup(
        tb,
        dir,
        &[
            "restore",
            &path,
            "--service",
            "db",
            "--yes",
            "--no-safety-backup",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
    assert_eq!(
        sql(m, image, "shop", "SELECT count(*), max(id) FROM items").unwrap(),
        "50|50"
    );
    let kept = sql(
        m,
        image,
        "postgres",
        "SELECT datname FROM pg_database WHERE datname LIKE 'shop_before_%'",
    )
    .unwrap();
    assert_eq!(kept.lines().count(), 1, "{kept}");
    assert_eq!(
        sql(m, image, &kept, "SELECT count(*) FROM items").unwrap(),
        "11"
    );
    eprintln!("pg: restored at {:?}", t0.elapsed());

    // A wrong password (given as a file): exit 5, nothing new in the backup directory.
    let wrong = dir.join("wrong-pw");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let wrong = wrong.to_string_lossy().to_string();
    let (code, out, err) = backup(
        tb,
        dir,
        &["pg", "--service", "db", "--password-file", &wrong],
        &[],
    );
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("password authentication failed"), "{err}");
    let doc: Value = serde_json::from_str(&out).expect("a document");
    assert_eq!(doc["stages"][0]["status"], "failed");
    assert_eq!(files(&backups), before);

    // The service scaled to 0: no task to reach, exit 5, nothing new.
    m.docker_ok(&["service", "scale", "-d", &format!("{STACK}_db=0")]);
    // Gone means: no task of the service is running any more (Swarm's own view), and the
    // database no longer answers. One failed query alone is not proof: on a loaded machine
    // a query can fail while the task still runs.
    let service = format!("{STACK}_db");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let states = m.docker_ok(&["service", "ps", "--format", "{{.CurrentState}}", &service]);
        let running = states
            .lines()
            .any(|l| l.starts_with("Running") || l.starts_with("Starting"));
        if !running && sql(m, image, "shop", "SELECT 1").is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the db still runs 60 s after scale 0: {states}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (code, _, err) = backup(tb, dir, &["pg", "--service", "db"], &[]);
    assert_eq!(code, 5, "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("error:")).count(),
        1,
        "{err}"
    );
    assert_eq!(files(&backups), before);
    // Each run removed its client container.
    // This stack's clients only (the deploy part's backups run beside this part).
    let left = m.docker_ok(&[
        "ps",
        "-aq",
        "--filter",
        "label=berth.backup.client",
        "--filter",
        &format!("network={STACK}_data"),
    ]);
    assert_eq!(left, "", "client containers left behind");
    // A volume lives on one node: refused with one line.
    let (code, _, err) = backup(tb, dir, &["volume", "data"], &[]);
    assert_eq!(code, 64, "{err}");
    assert_eq!(
        err,
        "berth-backup: error: --engine swarm: volume backups and restores are not supported on Swarm: a volume lives on one node, not with the stack\n"
    );
    // list and prune read only the backup directory, as on Compose.
    let (code, out, err) = backup(tb, dir, &["list", "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&out).expect("a JSON array");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(listed[0]["path"], path.as_str(), "{out}");
    let (code, out, err) = backup(tb, dir, &["prune", "--keep-last", "1", "--dry-run"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("keep "), "{out}");
    assert_eq!(files(&backups), before);
    eprintln!("pg: done at {:?}", t0.elapsed());
}
