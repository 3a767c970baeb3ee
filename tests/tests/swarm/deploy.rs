//! `scripts/deploy.sh --env swarm` on the test bed (issue 11's first "Done when"): the
//! whole pipeline (preflight, pull, backup, migrate, swap, smoke, rollback, report) on a
//! stack `berthdeploy`: nginx as a service on the manager (host-mode port 8081), the demo
//! app's `web` with 2 replicas on 2 nodes, its PostgreSQL `db` on a worker. The engine
//! comes from `deploy.swarm.env` (`BERTH_ENGINE=swarm`), as a user would set it. Under
//! load through nginx, 0 failed requests each:
//! - v1 -> v2: exit 0, the stack's tasks at v2 on 2 nodes, schema 2, and the deploy
//!   document, ledger, `history` and `status` as on Compose (stage by stage);
//! - a tag whose tasks never get ready (`unready`): exit 3, v2 still serves;
//! - a release that fails the smoke check after the switch (`sick`): exit 4, rolled back
//!   to v2 by the pipe's rollback stage.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::swarm::Testbed;
use berth_e2e::{berth, bin, root, stages, swarmstack};
use serde_json::Value;

pub const STACK: &str = "berthdeploy";
/// nginx's host-mode port on the manager (the swap part's nginx has 80 there).
const PORT: u16 = 8081;
const PASSWORD: &str = "d3ploy-Pw-71ab";

/// The swap part's stack file (tests/src/swarmstack.rs) (nginx on the manager, `web` with 2 replicas) on port
/// @PORT@, `web` with the database's URL, and the database on a worker.
fn stack_file() -> String {
    let file = berth_e2e::swarmstack::STACK_FILE
        .replace("        published: PORT\n", "        published: @PORT@\n")
        .replace(
            "    init: true\n",
            "    init: true\n    environment:\n      DATABASE_URL: \"postgres://demo:@PW@@db:5432/demo\"\n",
        )
        .replace("networks:\n  appnet:\n", &format!("{DB}networks:\n  appnet:\n"));
    for part in ["published: @PORT@", "DATABASE_URL", "  db:\n"] {
        assert!(
            file.contains(part),
            "swarmstack.rs's stack file changed shape: {file}"
        );
    }
    file
}

const DB: &str = r#"  db:
    image: REGISTRY/postgres:15
    environment:
      POSTGRES_USER: demo
      POSTGRES_DB: demo
      POSTGRES_PASSWORD: "@PW@"
    networks: [appnet]
    deploy:
      replicas: 1
      endpoint_mode: dnsrr
      placement:
        constraints: [node.role == worker]
"#;

/// The stack's directory (in the directory the manager shares: nginx's bind mounts).
pub struct Stack {
    dir: PathBuf,
}

/// Push the images and deploy the stack at v1 (its tasks start meanwhile; web is ready
/// only once [`deploy_under_load`] has migrated the database).
pub fn start(tb: &Testbed) -> Stack {
    for tag in ["v1", "v2", "unready", "sick"] {
        tb.push(&format!("berth-demo/app:{tag}"), &format!("app:{tag}"));
    }
    tb.push("berth-fixture/nginx:1", "nginx:1");
    tb.push("berth-fixture/postgres:15", "postgres:15");
    let dir = berth_e2e::swarmstack::nginx_files(tb, STACK, &berth_e2e::swarmstack::nginx_conf());
    let file = stack_file()
        .replace("REGISTRY", &tb.registry)
        .replace("DIR", &dir.display().to_string())
        .replace("@PORT@", &PORT.to_string())
        .replace("@PW@", PASSWORD);
    std::fs::write(dir.join("compose.yaml"), file).unwrap();
    // The environment as a user writes it: the engine and the stack come from here.
    let env = format!(
        "BERTH_ENGINE=swarm\n\
         BERTH_PROJECT_NAME={STACK}\n\
         DEPLOY_SERVICES=web\n\
         DEPLOY_DB_SERVICE=db\n\
         DEPLOY_MIGRATE_CMD=migrate\n\
         DEPLOY_MIGRATE_SERVICE=web\n\
         DEPLOY_SMOKE_URL=http://{}:{PORT}/smoke\n\
         DEPLOY_SMOKE_SUCCESSES=2\n\
         DEPLOY_SMOKE_TIMEOUT=6s\n\
         DEPLOY_TEST_CMD=./check-config.sh\n",
        tb.manager.ip
    );
    std::fs::write(dir.join("deploy.swarm.env"), env).unwrap();
    // The pre-deploy check: on the manager, in the project directory, the tag set.
    let check = dir.join("check-config.sh");
    std::fs::write(&check, "#!/bin/sh\necho \"$BERTH_TAG\" >>checked\n").unwrap();
    std::fs::set_permissions(&check, std::fs::Permissions::from_mode(0o755)).unwrap();
    tb.deploy_stack(&dir, STACK, "v1");
    Stack { dir }
}

fn url(tb: &Testbed, path: &str) -> String {
    format!("http://{}:{PORT}{path}", tb.manager.ip)
}

/// The database migrated to v1's schema (once the db task answers), then nginx
/// answering v1.
fn at_v1(tb: &Testbed, s: &Stack) {
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let out = berth("berth-migrate")
            .env("DOCKER_HOST", tb.manager.docker_host())
            .args(["--engine", "swarm", "-p", STACK, "--no-backup-required"])
            .arg("--project-dir")
            .arg(&s.dir)
            .args(["--tag", "v1", "web", "--", "migrate"])
            .stdin(Stdio::null())
            .output()
            .expect("berth-migrate runs");
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the database was not migrated to v1 within 150 s: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match berth_e2e::get(&url(tb, "/version")) {
            Ok((200, v, _)) if v == "v1" => break,
            other => assert!(
                Instant::now() < deadline,
                "nginx did not answer v1 within 120 s: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `scripts/deploy.sh --env swarm TAG` with berth on the manager (DOCKER_HOST), under
/// load through nginx, the swap bounded by `timeout`; asserts 0 failed requests; (exit
/// code, stderr).
fn deploy(tb: &Testbed, s: &Stack, tag: &str, timeout: &str) -> (i32, String) {
    let mut c = Command::new(root().join("scripts/deploy.sh"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if k.starts_with("BERTH_") || k.starts_with("DEPLOY_") {
            c.env_remove(k);
        }
    }
    c.args(["--env", "swarm", tag])
        .current_dir(&s.dir)
        .env("DOCKER_HOST", tb.manager.docker_host())
        .env("BERTH_BIN_DIR", bin("berth-swap").parent().unwrap())
        // Short timings for tests: the demo app drains in well under a second.
        .env("BERTH_DRAIN", "1s")
        .env("BERTH_SWAP_TIMEOUT", timeout)
        .stdin(Stdio::null());
    let load = swarmstack::clients(&url(tb, ""));
    let t0 = Instant::now();
    let out = c.output().expect("deploy.sh runs");
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    let code = out.status.code().unwrap_or(-1);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    eprintln!(
        "deploy.sh --env swarm {tag}: exit {code} in {:?}",
        t0.elapsed()
    );
    assert_eq!(report.failed(), 0, "{}\n{stderr}", report.summary());
    report.assert_all_answered_by_app(&format!("deploy.sh --env swarm {tag}: load"));
    assert!(report.total() > 100, "{}", report.summary());
    assert!(!stderr.contains(PASSWORD), "the password leaked: {stderr}");
    (code, stderr)
}

/// The newest deploy document in the state directory (no password in it).
fn last_document(s: &Stack) -> Value {
    let doc = berth_e2e::last_document(&s.dir.join(".berth"));
    assert!(
        !doc.to_string().contains(PASSWORD),
        "the password leaked: {doc}"
    );
    doc
}

fn st(stage: &str, status: &str, code: i64) -> (String, String, i64) {
    (stage.to_string(), status.to_string(), code)
}

fn ledger(s: &Stack) -> Vec<Value> {
    std::fs::read_to_string(s.dir.join(".berth/releases.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `berth-report ARGS` with the stack's engine and name from the command line.
fn report(tb: &Testbed, s: &Stack, args: &[&str]) -> Value {
    let out = berth("berth-report")
        .env("DOCKER_HOST", tb.manager.docker_host())
        .args(args)
        .args(["--engine", "swarm", "-p", STACK, "--json"])
        .arg("--project-dir")
        .arg(&s.dir)
        .stdin(Stdio::null())
        .output()
        .expect("berth-report runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stderr}"))
}

fn serving(tb: &Testbed) -> String {
    let (status, version, _) = berth_e2e::get(&url(tb, "/version")).expect("nginx answers");
    assert_eq!(status, 200, "{version}");
    version
}

fn pinned(s: &Stack) -> String {
    std::fs::read_to_string(s.dir.join(".env")).unwrap_or_default()
}

pub fn deploy_under_load(tb: &Testbed, s: &Stack) {
    let t0 = Instant::now();
    at_v1(tb, s);
    eprintln!(
        "deploy: stack {STACK} at v1 behind nginx at {:?}",
        t0.elapsed()
    );

    // v1 -> v2: every stage as on Compose, 0 failed, tasks at v2 on two nodes.
    let (code, stderr) = deploy(tb, s, "v2", "60s");
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("deploy: environment swarm"),
        "the settings came from deploy.swarm.env: {stderr}"
    );
    assert_eq!(serving(tb), "v2");
    super::swap::at_tag_on_two_nodes(tb, STACK, "v2");
    let (_, _, ready) = berth_e2e::get(&url(tb, "/readyz")).unwrap();
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["db_schema"], 2, "migrated: {ready}");
    assert!(pinned(s).contains("BERTH_TAG=v2"), "{}", pinned(s));
    let doc = last_document(s);
    assert_eq!(
        stages(&doc),
        [
            st("preflight", "ok", 0),
            st("pull", "ok", 0),
            st("backup", "ok", 0),
            st("migrate", "ok", 0),
            st("swap", "ok", 0),
            st("smoke", "ok", 0),
        ],
        "{doc}"
    );
    assert_eq!(doc["project"], STACK);
    assert_eq!(
        (&doc["tag"], &doc["previous_tag"]),
        (&"v2".into(), &"v1".into())
    );
    let rec = |i: usize| &doc["stages"][i]["detail"];
    assert_eq!(rec(0)["engine"], "swarm", "{}", rec(0));
    assert_eq!(
        (&rec(0)["test_command"], &rec(0)["test_exit"]),
        (&"./check-config.sh".into(), &0.into()),
        "{}",
        rec(0)
    );
    let checked = std::fs::read_to_string(s.dir.join("checked")).unwrap();
    assert!(checked.ends_with("v2\n"), "{checked}");
    assert_eq!(rec(0)["services"], serde_json::json!(["web"]));
    assert_eq!(
        rec(2)["source"],
        format!("service db of Swarm stack {STACK}")
    );
    let backup = PathBuf::from(rec(2)["file"].as_str().expect("a backup file"));
    assert!(backup.is_file(), "{}", backup.display());
    assert!(
        rec(3)["image"]
            .as_str()
            .is_some_and(|i| i.starts_with(&format!("{}/app@sha256:", tb.registry))),
        "the migration ran the new image by digest: {}",
        rec(3)
    );
    let swap = rec(4);
    assert_eq!(swap["engine"], "swarm", "{swap}");
    assert_eq!(
        (&swap["tag"], &swap["previous_tag"]),
        (&"v2".into(), &"v1".into())
    );
    let web = &swap["services"][0];
    assert_eq!(web["name"], "web", "{swap}");
    let nodes = |key: &str| -> std::collections::BTreeSet<String> {
        web[key]
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .filter_map(|c| c["node"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(nodes("new_containers").len(), 2, "{web}");
    assert_eq!(nodes("old_containers").len(), 2, "{web}");
    assert_eq!(rec(5)["ready"], true, "{}", rec(5));
    // The ledger's last line is this deploy, a success; history and status show it.
    let lines = ledger(s);
    let last = lines.last().expect("a ledger line");
    assert_eq!(last["deploy_id"], doc["deploy_id"]);
    assert_eq!(last["tag"], "v2");
    let history = report(tb, s, &["history"]);
    assert_eq!(history[0]["tag"], "v2", "{history}");
    assert_eq!(history[0]["deploy_id"], doc["deploy_id"], "{history}");
    assert_eq!(history[0]["status"], "success", "{history}");
    assert_eq!(history[0]["last_good"], true, "{history}");
    let status = report(tb, s, &["status"]);
    assert_eq!(status["engine"], "swarm", "{status}");
    let web = status["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["service"] == "web"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&web["tag"], &web["running"]),
        (&"v2".into(), &2.into()),
        "{status}"
    );
    assert_eq!(status["last_release"]["tag"], "v2", "{status}");
    eprintln!("deploy: v1 -> v2 at {:?}", t0.elapsed());

    // A tag whose tasks never get ready: 3, nothing after the swap acted, v2 serves.
    let (code, stderr) = deploy(tb, s, "unready", "15s");
    assert_eq!(code, 3, "{stderr}");
    let doc = last_document(s);
    assert_eq!(stages(&doc).last(), Some(&st("swap", "failed", 3)), "{doc}");
    let error = doc["stages"][4]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("web--next: 0 of 2 task(s) ready within 15s")
            && error.contains("the old ones still serve"),
        "{error}"
    );
    assert_eq!(serving(tb), "v2");
    super::swap::at_tag_on_two_nodes(tb, STACK, "v2");
    assert!(pinned(s).contains("BERTH_TAG=v2"), "{}", pinned(s));
    let services = super::swap::services(tb, STACK);
    assert!(!services.contains("--next"), "{services}");
    let history = report(tb, s, &["history"]);
    assert_eq!(
        (
            &history[0]["tag"],
            &history[0]["status"],
            &history[0]["outcome"]["code"]
        ),
        (&"unready".into(), &"failed".into(), &3.into()),
        "{history}"
    );
    eprintln!("deploy: unready refused at {:?}", t0.elapsed());

    // Sick after the switch: the smoke check fails, the pipe's rollback stage swaps back
    // to v2 through the same path: 4.
    let (code, stderr) = deploy(tb, s, "sick", "60s");
    assert_eq!(code, 4, "{stderr}");
    let doc = last_document(s);
    let got = stages(&doc);
    assert_eq!(
        got[got.len() - 3..],
        [
            st("swap", "ok", 0),
            st("smoke", "failed", 4),
            st("rollback", "ok", 4)
        ],
        "{doc}"
    );
    let rb = &doc["stages"][got.len() - 1]["detail"];
    assert_eq!(
        (&rb["from"], &rb["to"]),
        (&"sick".into(), &"v2".into()),
        "{rb}"
    );
    assert_eq!(serving(tb), "v2");
    super::swap::at_tag_on_two_nodes(tb, STACK, "v2");
    assert!(pinned(s).contains("BERTH_TAG=v2"), "{}", pinned(s));
    let history = report(tb, s, &["history"]);
    assert_eq!(
        (
            &history[0]["tag"],
            &history[0]["status"],
            &history[0]["outcome"]["code"]
        ),
        (&"sick".into(), &"rolled_back".into(), &4.into()),
        "{history}"
    );
    let status = report(tb, s, &["status"]);
    assert_eq!(status["last_good"]["tag"], "v2", "{status}");
    eprintln!("deploy: sick rolled back at {:?}", t0.elapsed());
}
