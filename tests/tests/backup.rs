//! berth-backup against the real PostgreSQL of the demo stack (`db`) and real volumes:
//! every verification level, corrupted dumps caught, restore round trips, rotation on
//! real files, and failures (database down, wrong password, pg_dump killed, disk full,
//! volume missing, lock held) that leave nothing that could pass for a backup.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use berth_e2e::{run_ok, Stack};
use serde_json::Value;

const HELPER: &str = "berth-fixture/base:12";

/// A stack with only `db` up and migrated (tables schema_version and items, 3 items).
fn db_stack(name: &str) -> Stack {
    let s = Stack::new(name);
    s.compose_ok(&["up", "-d", "--wait", "db"]);
    s.compose_ok(&["run", "--rm", "--no-deps", "-T", "web", "migrate"]);
    s
}

fn sql(s: &Stack, q: &str) -> String {
    sql_in(s, "demo", q)
}

/// One SQL text in database `db` of the stack's `db` service.
fn sql_in(s: &Stack, db: &str, q: &str) -> String {
    s.compose_ok(&[
        "exec",
        "-T",
        "db",
        "psql",
        "-X",
        "-U",
        "demo",
        "-d",
        db,
        "-v",
        "ON_ERROR_STOP=1",
        "-Atc",
        q,
    ])
    .trim()
    .to_string()
}

/// berth-backup ARGS against the stack (the subcommand first, then the project flags).
fn bb_cmd(s: &Stack, args: &[&str]) -> Command {
    let mut cmd = berth_e2e::berth("berth-backup");
    cmd.args(args)
        .arg("--project-dir")
        .arg(&s.dir)
        .args(["-p", &s.project])
        .current_dir(&s.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Run berth-backup against the stack with stdin from `input` (empty: none).
fn bb(s: &Stack, args: &[&str], input: &str) -> Output {
    let mut child = bb_cmd(s, args).spawn().expect("berth-backup runs");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(input.as_bytes());
    }
    child.wait_with_output().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn doc(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not a document ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            stderr(o)
        )
    })
}

fn ok(o: Output) -> Output {
    assert_eq!(code(&o), 0, "berth-backup failed: {}", stderr(&o));
    o
}

fn backups_dir(s: &Stack) -> PathBuf {
    s.state_dir().join("backups")
}

/// Every file name in a directory.
fn files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn manifest(file: &Path) -> Value {
    let p = format!("{}.json", file.display());
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn sha256(file: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(file));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn stage_detail(d: &Value) -> &Value {
    let st = d["stages"].as_array().unwrap().last().unwrap();
    assert_eq!(st["stage"], "backup");
    &st["detail"]
}

fn db_ip(s: &Stack) -> String {
    let id = s.compose_ok(&["ps", "-q", "db"]).trim().to_string();
    let out = run_ok(Command::new("docker").args([
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &id,
    ]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn pg_backup_at_each_verify_level_is_private_checksummed_and_a_pipeline_stage() {
    let s = db_stack("bk-levels");
    let dir = backups_dir(&s);
    let mut seen = Vec::new();
    for level in ["none", "read", "restore"] {
        let o = ok(bb(&s, &["pg", "--service", "db", "--verify", level], ""));
        let d = doc(&o);
        let det = stage_detail(&d);
        assert_eq!(det["verification"], level);
        let file = PathBuf::from(det["file"].as_str().unwrap());
        assert!(file.starts_with(&dir), "{}", file.display());
        let m = manifest(&file);
        assert_eq!(m["verification"], level);
        assert_eq!(m["target"], "demo");
        assert_eq!(m["tables"], 2);
        assert!(m["server_version"].as_str().unwrap().starts_with("15."));
        assert_eq!(m["sha256"].as_str().unwrap(), sha256(&file));
        assert_eq!(det["sha256"], m["sha256"]);
        assert_eq!(
            m["bytes"].as_u64().unwrap(),
            std::fs::metadata(&file).unwrap().len()
        );
        assert_eq!(det["bytes"], m["bytes"]);
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(Path::new(&format!("{}.json", file.display()))), 0o600);
        if level == "restore" {
            assert_eq!(m["row_counts"]["public.items"], 3);
            assert_eq!(m["row_counts"]["public.schema_version"], 1);
        }
        seen.push(file);
        // Two backups within one second would share a name: the tool waits for the next.
    }
    assert_eq!(mode(&dir), 0o700);
    // No scratch database is left behind by restore verification.
    let dbs = sql(&s, "SELECT string_agg(datname, ',') FROM pg_database");
    assert!(!dbs.contains("berth_"), "{dbs}");

    // list --json shows the three, newest last.
    let o = ok(bb(&s, &["list", "--json"], ""));
    let l: Value = serde_json::from_slice(&o.stdout).unwrap();
    let levels: Vec<&str> = l
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["verification"].as_str().unwrap())
        .collect();
    assert_eq!(levels, vec!["none", "read", "restore"]);

    // verify upgrades the unverified one: read on the host (pg_restore 15 here), then
    // restore inside the service.
    let f = seen[0].display().to_string();
    let o = ok(bb(&s, &["verify", &f], ""));
    assert!(
        stderr(&o).contains("read verification ok"),
        "{}",
        stderr(&o)
    );
    assert_eq!(manifest(&seen[0])["verification"], "read");
    ok(bb(
        &s,
        &["verify", &f, "--level", "restore", "--service", "db"],
        "",
    ));
    assert_eq!(manifest(&seen[0])["verification"], "restore");

    // In a pipeline: the document's deploy id and tag land in the manifest and file name.
    let mut d = doc(&ok(bb(
        &s,
        &["pg", "--service", "db", "--verify", "none"],
        "",
    )));
    d["stages"] = Value::Array(vec![]);
    d["tag"] = Value::String("3f9c2a1".into());
    d["deploy_id"] = Value::String("20261122T031500Z-3f9c2a1".into());
    let o = ok(bb(&s, &["pg", "--service", "db"], &d.to_string()));
    let out = doc(&o);
    assert_eq!(out["deploy_id"], "20261122T031500Z-3f9c2a1");
    let file = PathBuf::from(stage_detail(&out)["file"].as_str().unwrap());
    assert!(
        file.to_string_lossy().ends_with("-3f9c2a1.dump"),
        "{}",
        file.display()
    );
    let m = manifest(&file);
    assert_eq!(m["deploy_id"], "20261122T031500Z-3f9c2a1");
    assert_eq!(m["tag"], "3f9c2a1");
    assert!(stage_detail(&out)["restore_command"]
        .as_str()
        .unwrap()
        .starts_with("berth-backup restore "));

    // A failure earlier in the document passes through: no backup is taken.
    let before = files(&dir);
    let mut failed = out.clone();
    failed["stages"] = serde_json::json!([{"stage": "preflight", "status": "failed",
        "started_at": "2026-11-22T03:15:00.000Z", "duration_ms": 1, "exit_code": 1,
        "detail": {}, "error": "config invalid"}]);
    let o = bb(&s, &["pg", "--service", "db"], &failed.to_string());
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert_eq!(doc(&o)["stages"].as_array().unwrap().len(), 1);
    assert_eq!(files(&dir), before);

    // A bad document is 65, bad flags 64, and neither writes anything.
    let o = bb(&s, &["pg", "--service", "db"], "{\"schema\": \"berth/1\"");
    assert_eq!(code(&o), 65, "{}", stderr(&o));
    let o = bb(&s, &["pg", "--service", "db", "--verify", "sometimes"], "");
    assert_eq!(code(&o), 64, "{}", stderr(&o));
    let o = bb(&s, &["pg"], "");
    assert_eq!(code(&o), 64, "{}", stderr(&o));
    let o = bb(&s, &["pg", "--service", "nope"], "");
    assert_eq!(code(&o), 64, "{}", stderr(&o));
    assert_eq!(files(&dir), before);
}

/// Overwrite one byte in the middle of a file.
fn flip_middle(p: &Path) {
    let mut b = std::fs::read(p).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0xff;
    std::fs::write(p, b).unwrap();
}

#[test]
fn truncated_and_bit_flipped_dumps_fail_read_verification() {
    let s = db_stack("bk-corrupt");
    // Enough rows that the middle of the file is table data.
    sql(
        &s,
        "INSERT INTO items (name) SELECT md5(g::text) FROM generate_series(1, 20000) g",
    );
    let o = ok(bb(&s, &["pg", "--service", "db"], ""));
    let file = PathBuf::from(stage_detail(&doc(&o))["file"].as_str().unwrap());
    let work = tempfile::tempdir().unwrap();
    let len = std::fs::metadata(&file).unwrap().len();

    // Without a manifest only pg_restore's full read can tell: truncated...
    let cut = work.path().join("cut.dump");
    std::fs::copy(&file, &cut).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(len * 2 / 3)
        .unwrap();
    // (pg_restore --list alone would pass it.)
    let list = Command::new("pg_restore")
        .arg("--list")
        .arg(&cut)
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "pg_restore --list now fails on a truncated dump"
    );
    for server in [&[][..], &["--service", "db"][..]] {
        let mut args = vec!["verify", cut.to_str().unwrap()];
        args.extend_from_slice(server);
        let o = bb(&s, &args, "");
        assert_eq!(code(&o), 5, "truncated dump passed: {}", stderr(&o));
        assert!(
            stderr(&o).contains("read verification failed"),
            "{}",
            stderr(&o)
        );
    }
    // ... and bit-flipped.
    let flipped = work.path().join("flipped.dump");
    std::fs::copy(&file, &flipped).unwrap();
    flip_middle(&flipped);
    for server in [&[][..], &["--service", "db"][..]] {
        let mut args = vec!["verify", flipped.to_str().unwrap()];
        args.extend_from_slice(server);
        let o = bb(&s, &args, "");
        assert_eq!(code(&o), 5, "bit-flipped dump passed: {}", stderr(&o));
    }
    // The intact copy passes the same check.
    let good = work.path().join("good.dump");
    std::fs::copy(&file, &good).unwrap();
    ok(bb(
        &s,
        &["verify", good.to_str().unwrap(), "--service", "db"],
        "",
    ));

    // With its manifest, a damaged backup fails the checksum, and is marked failed so
    // that neither rotation nor restore trusts it again.
    flip_middle(&file);
    let o = bb(&s, &["verify", file.to_str().unwrap()], "");
    assert_eq!(code(&o), 5);
    assert!(
        stderr(&o).contains("does not match its manifest"),
        "{}",
        stderr(&o)
    );
    assert_eq!(manifest(&file)["verification"], "failed");
    let o = bb(
        &s,
        &[
            "restore",
            file.to_str().unwrap(),
            "--service",
            "db",
            "--yes",
        ],
        "",
    );
    assert_eq!(code(&o), 5, "{}", stderr(&o));
    assert_eq!(sql(&s, "SELECT count(*) FROM items"), "20003");
}

#[test]
fn restore_round_trip_gives_back_the_same_rows_and_refuses_without_yes() {
    let s = db_stack("bk-restore");
    sql(
        &s,
        "INSERT INTO items (name) SELECT 'item ' || g FROM generate_series(1, 500) g",
    );
    let rows = || {
        sql(
            &s,
            "SELECT md5(string_agg(id || ':' || name, ',' ORDER BY id)) FROM items",
        )
    };
    let original = rows();
    let o = ok(bb(
        &s,
        &["pg", "--service", "db", "--verify", "restore"],
        "",
    ));
    let file = stage_detail(&doc(&o))["file"].as_str().unwrap().to_string();

    // Damage: rows changed and deleted, a table added.
    sql(&s, "UPDATE items SET name = 'changed' WHERE id % 2 = 0");
    sql(&s, "DELETE FROM items WHERE id > 400");
    sql(&s, "CREATE TABLE stray (x int)");
    let damaged = rows();
    assert_ne!(damaged, original);

    // No terminal, no --yes: refused, nothing touched.
    let o = bb(&s, &["restore", &file, "--service", "db"], "");
    assert_eq!(code(&o), 64, "{}", stderr(&o));
    assert!(stderr(&o).contains("pass --yes"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("sha256"),
        "the plan shows the checksum: {}",
        stderr(&o)
    );
    assert_eq!(rows(), damaged);

    let before = files(&backups_dir(&s));
    let o = ok(bb(&s, &["restore", &file, "--service", "db", "--yes"], ""));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["tables"]["public.items"], 503);
    assert_eq!(rows(), original);
    assert_eq!(
        sql(
            &s,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'stray'"
        ),
        "0"
    );
    // The safety backup holds the damaged state.
    let safety = PathBuf::from(report["safety_backup"].as_str().unwrap());
    assert!(safety.to_string_lossy().ends_with("-pre-restore.dump"));
    assert!(!before.contains(&safety.file_name().unwrap().to_string_lossy().to_string()));
    assert_eq!(manifest(&safety)["verification"], "read");
    let dbs = sql(&s, "SELECT string_agg(datname, ',') FROM pg_database");
    assert!(!dbs.contains("berth_"), "{dbs}");
    // And it restores the damaged state back, without another safety backup.
    ok(restore_quick(&s, safety.to_str().unwrap(), &[]));
    assert_eq!(rows(), damaged);

    // The same through a URL with the host's client tools; password from a file.
    let pw = s.env_value("POSTGRES_PASSWORD").unwrap();
    let work = tempfile::tempdir().unwrap();
    let pwfile = work.path().join("pw");
    std::fs::write(&pwfile, format!("{pw}\n")).unwrap();
    let url = format!("postgres://demo@{}:5432/demo", db_ip(&s));
    let o = ok(bb(
        &s,
        &[
            "pg",
            "--url",
            &url,
            "--password-file",
            pwfile.to_str().unwrap(),
            "--verify",
            "restore",
        ],
        "",
    ));
    assert!(!String::from_utf8_lossy(&o.stdout).contains(&pw));
    assert!(!stderr(&o).contains(&pw));
    let f2 = stage_detail(&doc(&o))["file"].as_str().unwrap().to_string();
    assert_eq!(manifest(Path::new(&f2))["source"], url.as_str());
    sql(&s, "DELETE FROM items");
    ok(bb(
        &s,
        &[
            "restore",
            &f2,
            "--url",
            &url,
            "--password-file",
            pwfile.to_str().unwrap(),
            "--yes",
        ],
        "",
    ));
    assert_eq!(rows(), damaged);
}

/// The databases of the stack's server whose names start with `prefix`, sorted.
fn databases(s: &Stack, prefix: &str) -> Vec<String> {
    sql(
        s,
        &format!(
            "SELECT datname FROM pg_database WHERE starts_with(datname, '{prefix}') ORDER BY 1"
        ),
    )
    .lines()
    .map(str::to_string)
    .collect()
}

fn items(s: &Stack, db: &str) -> u64 {
    sql_in(s, db, "SELECT count(*) FROM items").parse().unwrap()
}

/// berth-backup restore FILE --service db --yes --no-safety-backup EXTRA...
fn restore_quick(s: &Stack, file: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "restore",
        file,
        "--service",
        "db",
        "--yes",
        "--no-safety-backup",
    ];
    args.extend_from_slice(extra);
    bb(s, &args, "")
}

/// berth-backup exited 5 with one error line: that line.
fn failed_5(o: &Output) -> String {
    assert_eq!(code(o), 5, "{}", stderr(o));
    let err = stderr(o);
    let errors: Vec<&str> = err.lines().filter(|l| l.contains(": error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line: {err}");
    errors[0].to_string()
}

/// One stack for every check of restore's safety (section 1 and 2 of issue 9): the
/// database named on the command line is the one restored into; a copy is built beside
/// the live one and verified before the names swap; the replaced one is kept; a failed
/// check, a SIGKILL, or a full disk leave the live database answering with all its rows.
#[test]
fn restore_goes_into_the_named_database_and_never_destroys_before_verifying() {
    let s = Stack::new("bk-safe-restore");
    // A small tmpfs in the db container for a tablespace that fills up (disk full).
    std::fs::write(
        s.dir.join("compose.override.yaml"),
        "services:\n  db:\n    volumes:\n      - type: tmpfs\n        target: /small\n        tmpfs:\n          size: 12582912\n",
    )
    .unwrap();
    s.compose_ok(&["up", "-d", "--wait", "db"]);
    s.compose_ok(&["run", "--rm", "--no-deps", "-T", "web", "migrate"]);
    // ~6 MB of table data (1 KB rows stay uncompressed in the table), a small dump.
    sql(
        &s,
        "INSERT INTO items (name) SELECT repeat(md5(g::text), 32) FROM generate_series(1, 6000) g",
    );
    let o = ok(bb(
        &s,
        &["pg", "--service", "db", "--verify", "restore"],
        "",
    ));
    let file = stage_detail(&doc(&o))["file"].as_str().unwrap().to_string();
    assert_eq!(
        manifest(Path::new(&file))["row_counts"]["public.items"],
        6003
    );
    sql(&s, "INSERT INTO items (name) VALUES ('after the backup')");
    assert_eq!(items(&s, "demo"), 6004);

    // §1: into database `other` by URL, as a user whose password holds / @ % :.
    let secret = "p/w@x%y:z";
    sql(
        &s,
        &format!("CREATE ROLE restorer LOGIN SUPERUSER PASSWORD '{secret}'"),
    );
    let encoded = "p%2Fw%40x%25y%3Az";
    let url_of = |db: &str| format!("postgres://restorer:{encoded}@{}:5432/{db}", db_ip(&s));
    let o = ok(bb(
        &s,
        &[
            "restore",
            &file,
            "--url",
            &url_of("other"),
            "--yes",
            "--no-safety-backup",
        ],
        "",
    ));
    let err = stderr(&o);
    let into = err
        .lines()
        .find(|l| l.contains("into:"))
        .unwrap_or_default();
    assert!(
        into.contains("database other on postgres://restorer@"),
        "{err}"
    );
    assert!(
        into.contains("named by --url; the backup was taken from database demo, not this one"),
        "{err}"
    );
    for shown in [err.as_str(), &String::from_utf8_lossy(&o.stdout)] {
        assert!(
            !shown.contains(secret) && !shown.contains(encoded),
            "{shown}"
        );
    }
    assert_eq!(
        items(&s, "other"),
        6003,
        "other holds demo's rows at backup time"
    );
    assert_eq!(items(&s, "demo"), 6004, "demo is untouched");
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["database"], "other");
    assert_eq!(report["previous"], Value::Null);

    // §2: into demo (the service's POSTGRES_DB): the replaced database is kept.
    let o = ok(restore_quick(&s, &file, &[]));
    let err = stderr(&o);
    assert!(
        err.contains("named by the POSTGRES_DB of service db"),
        "{err}"
    );
    assert!(
        err.contains("is kept as demo_before_<UTC time>"),
        "the plan says so: {err}"
    );
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let before1 = report["previous"].as_str().unwrap().to_string();
    assert!(
        err.contains(&format!("kept the replaced database as {before1}")),
        "{err}"
    );
    assert_eq!(items(&s, "demo"), 6003);
    assert_eq!(
        items(&s, &before1),
        6004,
        "the replaced database, as it was"
    );
    assert_eq!(databases(&s, "demo_before_"), [before1.as_str()]);

    // (a) The manifest's row counts disagree with the archive: exit 5 naming the table,
    // nothing swapped, the copy dropped.
    sql(&s, "INSERT INTO items (name) VALUES ('live only')");
    let work = tempfile::tempdir().unwrap();
    let lying = work.path().join("lying.dump");
    std::fs::copy(&file, &lying).unwrap();
    let mut m = manifest(Path::new(&file));
    m["row_counts"]["public.items"] = Value::from(6100);
    std::fs::write(work.path().join("lying.dump.json"), m.to_string()).unwrap();
    let o = restore_quick(&s, lying.to_str().unwrap(), &[]);
    let error = failed_5(&o);
    assert!(
        error.contains("table public.items has 6003 rows, the manifest says 6100"),
        "{error}"
    );
    assert_eq!(
        items(&s, "demo"),
        6004,
        "the live database answers with all its rows"
    );
    assert!(databases(&s, "demo_berth_restore_").is_empty());
    assert_eq!(databases(&s, "demo_before_"), [before1.as_str()]);

    // (b) berth-backup SIGKILLed while restoring (a pg_restore that hangs): the live
    // database is intact; the next restore drops the leftover copy and succeeds.
    let bin = tempfile::tempdir().unwrap();
    let pidfile = bin.path().join("pid");
    std::fs::write(
        bin.path().join("pg_restore"),
        format!(
            "#!/bin/sh\necho $$ >{}\nexec sleep 120\n",
            pidfile.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        bin.path().join("pg_restore"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let mut cmd = bb_cmd(
        &s,
        &[
            "restore",
            &file,
            "--url",
            &url_of("demo"),
            "--yes",
            "--no-safety-backup",
        ],
    );
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap()
    );
    let mut child = cmd.env("PATH", path).stdin(Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !pidfile.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "berth-backup ended before pg_restore ran: {}",
            stderr(&child.wait_with_output().unwrap())
        );
        assert!(std::time::Instant::now() < deadline, "pg_restore never ran");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let _ = Command::new("kill").args(["-9", pid.trim()]).output();
    let left = databases(&s, "demo_berth_restore_");
    assert_eq!(left.len(), 1, "the copy being built is left: {left:?}");
    assert_eq!(items(&s, "demo"), 6004);
    let o = ok(restore_quick(&s, &file, &["--keep-previous", "2"]));
    assert!(
        stderr(&o).contains(&format!(
            "dropped database {}, left by an interrupted restore",
            left[0]
        )),
        "{}",
        stderr(&o)
    );
    assert!(databases(&s, "demo_berth_restore_").is_empty());
    assert_eq!(items(&s, "demo"), 6003);
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let before2 = report["previous"].as_str().unwrap().to_string();
    assert_eq!(
        databases(&s, "demo_before_"),
        [before1.clone(), before2.clone()]
    );
    assert_eq!(items(&s, &before2), 6004);

    // (c) Disk full: `tiny` (7.5 MB once checkpointed) lives in a tablespace on a 12 MB
    // tmpfs; the copy is built in the same tablespace and runs out of space while its
    // 7 MB of rows go in: exit 5, tiny as it was, no copy left.
    s.compose_ok(&["exec", "-T", "-u", "postgres", "db", "mkdir", "/small/ts"]);
    sql(&s, "CREATE TABLESPACE small LOCATION '/small/ts'");
    sql(&s, "CREATE DATABASE tiny TABLESPACE small");
    sql_in(
        &s,
        "tiny",
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2), (3)",
    );
    // Written out now (a new database's pages are written at the next checkpoint).
    sql(&s, "CHECKPOINT");
    let o = restore_quick(&s, &file, &["--database", "tiny"]);
    let error = failed_5(&o);
    assert!(
        error.contains("restore failed") && error.contains("No space left on device"),
        "the disk filled up while restoring: {error}"
    );
    assert_eq!(
        sql_in(&s, "tiny", "SELECT string_agg(x::text, ',') FROM t"),
        "1,2,3"
    );
    assert!(
        databases(&s, "tiny_").is_empty(),
        "{:?}",
        databases(&s, "tiny_")
    );

    // --keep-previous 1 drops the older replaced databases; the printed way back works.
    sql(
        &s,
        "INSERT INTO items (name) VALUES ('before the last restore')",
    );
    let o = ok(restore_quick(&s, &file, &["--keep-previous", "1"]));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let before3 = report["previous"].as_str().unwrap().to_string();
    assert_eq!(databases(&s, "demo_before_"), [before3.as_str()]);
    assert_eq!(
        report["previous_dropped"],
        serde_json::json!([before2, before1])
    );
    assert_eq!(items(&s, "demo"), 6003);
    let err = stderr(&o);
    let back = err
        .lines()
        .find_map(|l| {
            l.split_once("to go back, stop the app and run: ")
                .map(|x| x.1)
        })
        .unwrap_or_else(|| panic!("no way back printed: {err}"));
    run_ok(Command::new("sh").arg("-c").arg(back));
    assert_eq!(items(&s, "demo"), 6004, "back to the replaced database");
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("small");
        std::fs::create_dir(&p).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&p),
        );
        Tmpfs(p, t)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

#[test]
fn failures_exit_5_and_leave_nothing_that_could_pass_for_a_backup() {
    let s = db_stack("bk-failures");
    let dir = backups_dir(&s);
    // Incompressible-ish rows: the dump is ~2 MB.
    sql(
        &s,
        "INSERT INTO items (name) SELECT md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 40000) g",
    );
    let o = ok(bb(&s, &["pg", "--service", "db", "--keep-last", "1"], ""));
    let first = stage_detail(&doc(&o))["file"].as_str().unwrap().to_string();
    let baseline = files(&dir);
    let check_clean = |o: &Output, what: &str| {
        assert_eq!(code(o), 5, "{what}: {}", stderr(o));
        let err = stderr(o);
        assert_eq!(
            err.lines().filter(|l| l.contains(": error: ")).count(),
            1,
            "{what}: one error line: {err}"
        );
        let d = doc(o);
        let st = d["stages"].as_array().unwrap().last().unwrap();
        assert_eq!(st["status"], "failed");
        assert_eq!(st["exit_code"], 5);
        assert_eq!(files(&dir), baseline, "{what}: the directory changed");
    };

    // Disk full: the backup directory on a 512 KiB tmpfs.
    let small = Tmpfs::new("512k");
    let o = bb(
        &s,
        &["pg", "--service", "db", "--dir", small.0.to_str().unwrap()],
        "",
    );
    assert_eq!(code(&o), 5, "{}", stderr(&o));
    assert!(stderr(&o).contains("No space left"), "{}", stderr(&o));
    assert!(files(&small.0).is_empty(), "{:?}", files(&small.0));

    // pg_dump killed mid-stream: a pg_dump on PATH that dies after 100 KB.
    let pw = s.env_value("POSTGRES_PASSWORD").unwrap();
    let url = format!("postgres://demo@{}:5432/demo", db_ip(&s));
    let bin = tempfile::tempdir().unwrap();
    let stub = bin.path().join("pg_dump");
    std::fs::write(
        &stub,
        "#!/bin/sh\n/usr/bin/pg_dump \"$@\" | head -c 100000\nkill -9 $$\n",
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap()
    );
    let mut cmd = berth_e2e::berth("berth-backup");
    let o = cmd
        .args(["pg", "--url", &url, "--project-dir"])
        .arg(&s.dir)
        .args(["-p", &s.project])
        .env("PATH", &path)
        .env("PGPASSWORD", &pw)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    check_clean(&o, "pg_dump killed");
    assert!(stderr(&o).contains("killed by signal 9"), "{}", stderr(&o));

    // Wrong password (URL mode).
    let mut cmd = berth_e2e::berth("berth-backup");
    let o = cmd
        .args(["pg", "--url", &url, "--project-dir"])
        .arg(&s.dir)
        .args(["-p", &s.project])
        .env("PGPASSWORD", "wrong-password")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    check_clean(&o, "wrong password");
    assert!(
        stderr(&o).contains("password authentication failed"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("wrong-password"));

    // The anomaly guard: most rows gone -> under half the size; a table gone -> fewer tables.
    sql(&s, "DELETE FROM items WHERE id > 10");
    let o = bb(&s, &["pg", "--service", "db", "--keep-last", "1"], "");
    check_clean(&o, "shrunk");
    assert!(stderr(&o).contains("--allow-shrink"), "{}", stderr(&o));
    sql(&s, "INSERT INTO items (name) SELECT md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 40000) g");
    sql(&s, "CREATE TABLE t2 (x int); CREATE TABLE t3 (x int)");
    let o = ok(bb(&s, &["pg", "--service", "db"], ""));
    let with4 = stage_detail(&doc(&o))["file"].as_str().unwrap().to_string();
    let baseline2 = files(&dir);
    sql(&s, "DROP TABLE t3");
    let o = bb(&s, &["pg", "--service", "db", "--keep-last", "1"], "");
    assert_eq!(code(&o), 5, "{}", stderr(&o));
    assert!(stderr(&o).contains("fewer than the 4"), "{}", stderr(&o));
    assert_eq!(files(&dir), baseline2);
    // Rotation did not run on any failure: the first backup is still there.
    assert!(Path::new(&first).exists());
    let o = ok(bb(&s, &["pg", "--service", "db", "--allow-shrink"], ""));
    assert_eq!(
        manifest(Path::new(stage_detail(&doc(&o))["file"].as_str().unwrap()))["tables"],
        3
    );
    assert!(Path::new(&with4).exists());

    // Database down.
    let baseline3 = files(&dir);
    s.compose_ok(&["stop", "db"]);
    let o = bb(&s, &["pg", "--service", "db"], "");
    assert_eq!(code(&o), 5, "{}", stderr(&o));
    assert_eq!(files(&dir), baseline3);

    // A volume that does not exist.
    let o = bb(
        &s,
        &["volume", "no-such-volume", "--helper-image", HELPER],
        "",
    );
    assert_eq!(code(&o), 5, "{}", stderr(&o));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    assert_eq!(files(&dir), baseline3);
}

/// On a stack with no backup yet: a held lock is waited for, then 75 and no dump; once
/// released, the next backup runs (its output returned: the rotation test's real backup).
fn a_held_lock_is_waited_for_then_75(s: &Stack) -> Output {
    assert!(files(&backups_dir(s)).iter().all(|f| !f.ends_with(".dump")));
    let lock = s
        .state_dir()
        .join("locks")
        .join(format!("backup-pg-{}-demo.lock", s.project));
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::write(&lock, "").unwrap();
    // -F: flock execs sleep itself, so killing it releases the lock.
    let mut holder = Command::new("flock")
        .arg("-F")
        .arg(&lock)
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let t = std::time::Instant::now();
    let o = bb(s, &["pg", "--service", "db", "--lock-wait", "2s"], "");
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(code(&o), 75, "{}", stderr(&o));
    assert!(t.elapsed() >= std::time::Duration::from_secs(2));
    assert!(files(&backups_dir(s)).iter().all(|f| !f.ends_with(".dump")));
    // Released: the next one runs.
    ok(bb(s, &["pg", "--service", "db", "--lock-wait", "2s"], ""))
}

/// Copy a real backup under a made-up date (file name and manifest).
fn fake_copy(
    src: &Path,
    dir: &Path,
    project: &str,
    stamp: &str,
    rfc: &str,
    verified: &str,
) -> String {
    let name = format!("{project}-demo-{stamp}.dump");
    std::fs::copy(src, dir.join(&name)).unwrap();
    let mut m = manifest(src);
    m["file"] = Value::String(name.clone());
    m["created_at"] = Value::String(rfc.into());
    m["verification"] = Value::String(verified.into());
    std::fs::write(dir.join(format!("{name}.json")), m.to_string()).unwrap();
    name
}

/// The held lock first (its own stack cost CI a start-up): the backup it lets through
/// once released is the one real backup the rotation starts from.
#[test]
fn a_held_lock_is_waited_for_then_75_then_rotation_keeps_exactly_what_gfs_says_and_pinned() {
    let t0 = std::time::Instant::now();
    let s = db_stack("bk-rotate");
    eprintln!("database up: {:?}", t0.elapsed());
    let dir = backups_dir(&s);
    let o = a_held_lock_is_waited_for_then_75(&s);
    eprintln!("held lock: {:?}", t0.elapsed());
    assert_eq!(
        files(&dir).iter().filter(|f| f.ends_with(".dump")).count(),
        1,
        "{:?}",
        files(&dir)
    );
    let real = PathBuf::from(stage_detail(&doc(&o))["file"].as_str().unwrap());
    let p = s.project.clone();
    // Made-up history (the real one is newest, today).
    let days = [
        ("20250105T030000Z", "2025-01-05T03:00:00.000Z", "read"),
        ("20250301T030000Z", "2025-03-01T03:00:00.000Z", "read"),
        ("20250315T030000Z", "2025-03-15T03:00:00.000Z", "read"),
        ("20250316T030000Z", "2025-03-16T03:00:00.000Z", "none"),
        ("20250402T030000Z", "2025-04-02T03:00:00.000Z", "read"),
        ("20250403T030000Z", "2025-04-03T03:00:00.000Z", "read"),
        ("20250403T150000Z", "2025-04-03T15:00:00.000Z", "restore"),
    ];
    let names: Vec<String> = days
        .iter()
        .map(|(st, rfc, v)| fake_copy(&real, &dir, &p, st, rfc, v))
        .collect();
    // The ledger: the last good release took the January backup.
    let release = serde_json::json!({"schema": "berth/1", "deploy_id": "20250105T030000Z-v1",
        "project": p, "tag": "v1", "services": [{"name": "web", "image": "berth-demo/app:v1"}],
        "created_at": "2025-01-05T03:00:00.000Z",
        "stages": [
          {"stage": "backup", "status": "ok", "started_at": "2025-01-05T03:00:00.000Z",
           "duration_ms": 1, "exit_code": 0, "detail": {"file": dir.join(&names[0]).display().to_string()}},
          {"stage": "swap", "status": "ok", "started_at": "2025-01-05T03:00:01.000Z",
           "duration_ms": 1, "exit_code": 0, "detail": {}}]});
    std::fs::write(s.state_dir().join("releases.jsonl"), format!("{release}\n")).unwrap();

    let before = files(&dir);
    let o = ok(bb(
        &s,
        &[
            "prune",
            "--keep-daily",
            "2",
            "--keep-monthly",
            "2",
            "--dry-run",
        ],
        "",
    ));
    let plan = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(files(&dir), before, "dry run deleted something");
    let line = |n: &str| {
        plan.lines()
            .find(|l| l.contains(n))
            .unwrap_or_else(|| panic!("{n} missing from the plan:\n{plan}"))
            .to_string()
    };
    // Newest verified (today) : daily + monthly; 2025-04-03 15:00: daily 2025-04-03 and
    // monthly 2025-04; the rest are deleted except the pinned January one.
    assert!(line(&real.file_name().unwrap().to_string_lossy()).contains("keep"));
    assert!(
        line(&names[6]).contains("keep") && line(&names[6]).contains("daily 2025-04-03"),
        "{plan}"
    );
    assert!(line(&names[6]).contains("monthly 2025-04"), "{plan}");
    assert!(
        line(&names[0]).contains("keep") && line(&names[0]).contains("pinned"),
        "{plan}"
    );
    for i in [1, 2, 4, 5] {
        assert!(
            line(&names[i]).contains("would delete"),
            "{}\n{plan}",
            names[i]
        );
    }
    assert!(
        line(&names[3]).contains("unverified, and a newer verified backup exists"),
        "{plan}"
    );

    ok(bb(
        &s,
        &["prune", "--keep-daily", "2", "--keep-monthly", "2"],
        "",
    ));
    let after: BTreeSet<String> = files(&dir)
        .into_iter()
        .filter(|f| f.ends_with(".dump"))
        .collect();
    let expect: BTreeSet<String> = [
        real.file_name().unwrap().to_string_lossy().to_string(),
        names[0].clone(),
        names[6].clone(),
    ]
    .into_iter()
    .collect();
    assert_eq!(after, expect);
    // Every remaining archive still has its manifest; no manifest is orphaned.
    for f in files(&dir) {
        if let Some(a) = f.strip_suffix(".json") {
            assert!(dir.join(a).exists(), "orphan manifest {f}");
        } else {
            assert!(
                dir.join(format!("{f}.json")).exists(),
                "archive without manifest {f}"
            );
        }
    }
    // Rotation after a verified backup: --keep-last 1 keeps the new one and the pinned one.
    let o = ok(bb(&s, &["pg", "--service", "db", "--keep-last", "1"], ""));
    let newest = stage_detail(&doc(&o))["file"].as_str().unwrap().to_string();
    let after: BTreeSet<String> = files(&dir)
        .into_iter()
        .filter(|f| f.ends_with(".dump"))
        .collect();
    let expect: BTreeSet<String> = [
        Path::new(&newest)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string(),
        names[0].clone(),
    ]
    .into_iter()
    .collect();
    assert_eq!(after, expect);
    eprintln!("whole test: {:?}", t0.elapsed());
}

#[test]
fn volume_backup_with_stop_verifies_and_restores() {
    let s = Stack::new("bk-volume");
    s.compose_ok(&["up", "-d", "--wait", "redis"]);
    s.compose_ok(&[
        "exec",
        "-T",
        "redis",
        "redis-cli",
        "SET",
        "greeting",
        "hello",
    ]);
    s.compose_ok(&["exec", "-T", "redis", "redis-cli", "SAVE"]);
    let o = ok(bb(
        &s,
        &[
            "volume",
            "redis-data",
            "--stop",
            "redis",
            "--helper-image",
            HELPER,
            "--verify",
            "restore",
        ],
        "",
    ));
    let d = doc(&o);
    let det = stage_detail(&d);
    assert_eq!(det["verification"], "restore");
    assert_eq!(det["volume"], format!("{}_redis-data", s.project));
    let file = PathBuf::from(det["file"].as_str().unwrap());
    assert!(file.to_string_lossy().ends_with(".tar.gz"));
    assert_eq!(mode(&file), 0o600);
    assert_eq!(manifest(&file)["sha256"].as_str().unwrap(), sha256(&file));
    assert!(manifest(&file)["entries"].as_u64().unwrap() >= 1);
    // The stopped service is running again.
    let running = s.compose_ok(&["ps", "--status", "running", "-q", "redis"]);
    assert!(!running.trim().is_empty(), "redis was not started again");
    // No helper container or scratch volume is left.
    let left = run_ok(Command::new("docker").args([
        "ps",
        "-aq",
        "--filter",
        "label=berth.backup.helper=1",
    ]));
    assert!(String::from_utf8_lossy(&left.stdout).trim().is_empty());
    let left = run_ok(Command::new("docker").args([
        "volume",
        "ls",
        "-q",
        "--filter",
        "label=berth.backup.helper=1",
    ]));
    assert!(String::from_utf8_lossy(&left.stdout).trim().is_empty());

    // A truncated archive fails read verification.
    let work = tempfile::tempdir().unwrap();
    let cut = work.path().join("cut.tar.gz");
    std::fs::copy(&file, &cut).unwrap();
    let len = std::fs::metadata(&cut).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(len - 20)
        .unwrap();
    let o = bb(&s, &["verify", cut.to_str().unwrap()], "");
    assert_eq!(code(&o), 5, "{}", stderr(&o));

    // Change the data, then restore: the old value is back, and redis runs.
    s.compose_ok(&[
        "exec",
        "-T",
        "redis",
        "redis-cli",
        "SET",
        "greeting",
        "changed",
    ]);
    s.compose_ok(&["exec", "-T", "redis", "redis-cli", "SAVE"]);
    let o = bb(
        &s,
        &[
            "restore",
            file.to_str().unwrap(),
            "--stop",
            "redis",
            "--helper-image",
            HELPER,
        ],
        "",
    );
    assert_eq!(code(&o), 64, "{}", stderr(&o));
    // A manifest that disagrees with the archive's entries: exit 5, nothing touched.
    let lying = work.path().join("lying.tar.gz");
    std::fs::copy(&file, &lying).unwrap();
    let mut m = manifest(&file);
    m["entries"] = Value::from(m["entries"].as_u64().unwrap() + 1);
    std::fs::write(work.path().join("lying.tar.gz.json"), m.to_string()).unwrap();
    let restore = |f: &Path| {
        let f = f.to_str().unwrap();
        bb(
            &s,
            &[
                "restore",
                f,
                "--stop",
                "redis",
                "--helper-image",
                HELPER,
                "--yes",
            ],
            "",
        )
    };
    let error = failed_5(&restore(&lying));
    assert!(error.contains("the manifest says"), "{error}");
    // What a killed restore left: removed by the next one.
    let real = det["volume"].as_str().unwrap().to_string();
    let leftover = format!("{real}_berth_restore_20200101000000");
    let label = format!("com.docker.compose.project={}", s.project);
    run_ok(Command::new("docker").args(["volume", "create", "--label", &label, &leftover]));
    let o = ok(restore(&file));
    assert!(
        stderr(&o).contains(&format!(
            "removed volume {leftover}, left by an interrupted restore"
        )),
        "{}",
        stderr(&o)
    );
    s.compose_ok(&["up", "-d", "--wait", "redis"]);
    let v = s.compose_ok(&["exec", "-T", "redis", "redis-cli", "GET", "greeting"]);
    assert_eq!(v.trim(), "hello");
    // The old content is kept as <volume>_before_<UTC time>, and the plan said so.
    assert!(
        stderr(&o).contains(&format!("is kept as {real}_before_<UTC time>")),
        "{}",
        stderr(&o)
    );
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let before = report["previous"].as_str().unwrap();
    assert!(before.starts_with(&format!("{real}_before_")), "{before}");
    let old = run_ok(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &format!("{before}:/v:ro"),
        HELPER,
        "grep",
        "-c",
        "changed",
        "/v/dump.rdb",
    ]));
    assert_eq!(String::from_utf8_lossy(&old.stdout).trim(), "1");
    let vols = run_ok(Command::new("docker").args(["volume", "ls", "-q"]));
    let vols = String::from_utf8_lossy(&vols.stdout);
    assert!(!vols.contains(&format!("{real}_berth_restore_")), "{vols}");
}

/// A docker volume holding one file, removed when dropped.
struct Volume(String);

impl Volume {
    fn new(name: &str) -> Volume {
        let v = Volume(name.to_string());
        run_ok(Command::new("docker").args(["volume", "create", name]));
        let mount = format!("{name}:/v");
        run_ok(Command::new("docker").args([
            "run",
            "--rm",
            "-v",
            &mount,
            HELPER,
            "sh",
            "-c",
            "echo hi > /v/f",
        ]));
        v
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f", &self.0])
            .output();
    }
}

/// `age-keygen -o FILE`: a new identity file; its public key (recipient).
fn age_keygen(file: &Path) -> String {
    run_ok(Command::new("age-keygen").arg("-o").arg(file));
    let out = run_ok(Command::new("age-keygen").arg("-y").arg(file));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Local encryption at rest with age (issue 9 §4): the file on disk is ciphertext and
/// its manifest says so; read verification needs no private key; verify, restore and
/// drill decrypt in a stream with --identity-file, refuse without it (64, naming the
/// flag) and fail on the wrong one (5, the live database untouched).
#[test]
fn age_encrypted_backup_verifies_and_restores_only_with_the_identity() {
    let s = db_stack("bk-age");
    let keys = tempfile::tempdir().unwrap();
    let (key, wrong) = (keys.path().join("key.txt"), keys.path().join("wrong.txt"));
    let recipient = age_keygen(&key);
    age_keygen(&wrong);
    let secret = std::fs::read_to_string(&key).unwrap();
    let secret = secret
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();
    let (key, wrong) = (key.to_str().unwrap(), wrong.to_str().unwrap());
    // Everything berth said, to look for the private key in.
    let said = std::cell::RefCell::new(String::new());
    let heard = |o: Output| {
        said.borrow_mut().push_str(&format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            stderr(&o)
        ));
        o
    };
    let run = |args: &[&str]| heard(bb(&s, args, ""));

    let o = ok(run(&["pg", "--service", "db", "--encrypt-to", &recipient]));
    let file = stage_detail(&doc(&o))["file"].as_str().unwrap().to_string();
    assert!(file.ends_with(".dump.age"), "{file}");
    let bytes = std::fs::read(&file).unwrap();
    assert!(!bytes.starts_with(b"PGDMP"));
    assert!(bytes.starts_with(b"age-encryption.org/v1"));
    let m = manifest(Path::new(&file));
    assert_eq!(m["encryption"], "age");
    assert_eq!(m["recipients"], serde_json::json!([recipient]));
    assert_eq!(m["verification"], "read");
    assert_eq!(m["sha256"], sha256(Path::new(&file)).as_str());
    assert_eq!(m["bytes"], bytes.len() as u64);

    let o = run(&["verify", &file]);
    assert_eq!(code(&o), 64, "{}", stderr(&o));
    assert!(stderr(&o).contains("--identity-file"), "{}", stderr(&o));
    ok(run(&[
        "verify",
        &file,
        "--level",
        "read",
        "--identity-file",
        key,
    ]));

    sql(&s, "INSERT INTO items (name) VALUES ('after the backup')");
    let n = items(&s, "demo");
    let o = heard(restore_quick(&s, &file, &[]));
    assert_eq!(code(&o), 64, "{}", stderr(&o));
    assert!(stderr(&o).contains("--identity-file"), "{}", stderr(&o));
    let o = heard(restore_quick(&s, &file, &["--identity-file", wrong]));
    assert!(
        failed_5(&o).contains("no identity matched"),
        "{}",
        stderr(&o)
    );
    assert_eq!(items(&s, "demo"), n, "a wrong key leaves the live database");
    ok(heard(restore_quick(&s, &file, &["--identity-file", key])));
    assert_eq!(items(&s, "demo"), n - 1);
    assert_eq!(
        sql(
            &s,
            "SELECT count(*) FROM items WHERE name = 'after the backup'"
        ),
        "0"
    );
    ok(run(&[
        "drill",
        &file,
        "--service",
        "db",
        "--identity-file",
        key,
    ]));

    // A volume: the tar stream is read whole (entries counted) while it is encrypted.
    let vol = Volume::new(&format!("{}-age", s.project));
    let o = ok(run(&[
        "volume",
        &vol.0,
        "--helper-image",
        HELPER,
        "--encrypt-to",
        &recipient,
    ]));
    let file = stage_detail(&doc(&o))["file"].as_str().unwrap().to_string();
    assert!(file.ends_with(".tar.gz.age"), "{file}");
    let m = manifest(Path::new(&file));
    assert_eq!(m["encryption"], "age");
    assert_eq!(m["verification"], "read");
    assert_eq!(m["entries"], 1);
    ok(run(&["verify", &file, "--identity-file", key]));
    assert!(
        !said.borrow().contains(&secret),
        "the private key was printed"
    );
}
