//! Workers in `berth-swap --engine swarm` on the real test bed (issue 11, "workers
//! too"): a stack of its own, `berthwork`: the swap part's layout (tests/src/swarmstack.rs:
//! nginx on the manager, here on port 8083, `web` with 2 replicas on 2 nodes) plus Redis
//! (one task, on the manager, whose image shares its base layer with nginx's: nothing big
//! to pull) and the demo app's `worker` (2 replicas on 2 nodes, a healthcheck on
//! `/readyz`, which answers only while Redis does). A worker takes no traffic: Swarm's
//! own start-first update, with its rollback, is its swap; berth checks how it ended.
//!
//! - `--tag v2 --worker worker web worker`: exit 0, in the documented order (web--next
//!   ready, then the worker updated, then nginx switched), both services' tasks at v2 on
//!   two nodes, the deploy document's stage, tags and tasks (old at v1, new at v2, with
//!   their nodes); the v2 workers take jobs from Redis.
//! - `--tag unready --worker worker worker` (its `/readyz` always 503, so its healthcheck
//!   never passes): exit 3, Swarm rolled the update back, two v2 tasks on two nodes run,
//!   the document says so, and berth's line says whether they are the ones that ran before
//!   (Swarm sometimes replaces one with a fresh v2 task while it rolls back).
//!
//! No load here (lane 2's swap part has it, before this part).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_e2e::swarm::Testbed;
use berth_e2e::{berth, swarmstack};
use serde_json::Value;

const STACK: &str = "berthwork";

/// nginx's host-mode port on the manager (swap: 80, deploy: 8081, drain: 8082).
const PORT: u16 = 8083;

/// Added to the services of [`swarmstack::STACK_FILE`] (nginx and `web` on `appnet`).
const SERVICES: &str = r#"  redis:
    image: REGISTRY/redis:7
    networks: [appnet]
    deploy:
      replicas: 1
      endpoint_mode: dnsrr
      placement:
        constraints: [node.role == manager]
  worker:
    image: REGISTRY/app:${BERTH_TAG}
    command: ["worker"]
    init: true
    environment:
      REDIS_URL: "redis://redis:6379"
      DEMO_JOB_MS: "20"
    healthcheck:
      test: ["CMD", "/app", "healthcheck", "/readyz"]
      interval: 1s
      timeout: 2s
      retries: 3
      # Not the image's 30 s: a never-healthy tag fails (and is rolled back) in seconds.
      start_period: 1s
    stop_grace_period: 10s
    networks: [appnet]
    deploy:
      replicas: 2
      endpoint_mode: dnsrr
      placement:
        max_replicas_per_node: 1
"#;

/// `berth-swap --engine swarm -p berthwork --tag TAG --worker worker SERVICE...`, berth
/// on the manager: (exit, document, stderr).
fn swap(tb: &Testbed, dir: &Path, tag: &str, services: &[&str]) -> (i32, Value, String) {
    let t0 = Instant::now();
    let out = berth("berth-swap")
        .env("DOCKER_HOST", tb.manager.docker_host())
        .args(["--engine", "swarm", "-p", STACK, "--timeout", "60s"])
        .args(["--drain", "1s", "--tag", tag, "--worker", "worker"])
        .args(services)
        .arg("--project-dir")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("berth-swap runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("berth-swap: no document ({e}): {stderr}"));
    let code = out.status.code().unwrap_or(-1);
    eprintln!(
        "worker: berth-swap --tag {tag} {services:?}: exit {code} in {:?}",
        t0.elapsed()
    );
    (code, doc, stderr)
}

/// The worker's tasks Swarm wants running: (task id, node, image) of each, sorted.
fn tasks(tb: &Testbed) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = tb
        .manager
        .running_tasks(&format!("{STACK}_worker"))
        .into_iter()
        .map(|(id, node, image)| (id, node, untagged_digest(&image)))
        .collect();
    out.sort();
    out
}

/// Every task of the worker Swarm still lists, with its states and error: what a failed
/// assertion on the tasks prints.
fn history(tb: &Testbed) -> String {
    let format = "{{.ID}} {{.Name}} {{.Node}} {{.Image}} desired={{.DesiredState}} \
                  now={{.CurrentState}} error={{.Error}}";
    let service = format!("{STACK}_worker");
    tb.manager
        .docker_ok(&["service", "ps", "--no-trunc", "--format", format, &service])
}

/// `R/app:v1` of `R/app:v1@sha256:...` (what the task runs, without the digest).
fn untagged_digest(image: &str) -> String {
    image.split('@').next().unwrap_or_default().to_string()
}

/// A service's tasks in the document (`old_containers`, `new_containers`): (node, image).
fn listed(service: &Value, key: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = service[key]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|c| {
            let image = untagged_digest(c["image"].as_str().unwrap_or_default());
            (c["node"].as_str().unwrap_or_default().to_string(), image)
        })
        .collect();
    v.sort();
    v
}

/// Tasks as [`tasks`] lists them, as the document lists them: (node, image).
fn docs_view(tasks: &[(String, String, String)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = tasks.iter().map(|t| (t.1.clone(), t.2.clone())).collect();
    v.sort();
    v
}

/// Wait (at most 120 s) for 2 running worker tasks at `tag`, on 2 nodes; returns them.
fn running_at(tb: &Testbed, tag: &str) -> Vec<(String, String, String)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = tasks(tb);
        let at_tag = now.iter().all(|t| t.2.ends_with(&format!("/app:{tag}")));
        let nodes: BTreeSet<&str> = now.iter().map(|t| t.1.as_str()).collect();
        if now.len() == 2 && at_tag && nodes.len() == 2 {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the worker's tasks are not 2 at {tag} on 2 nodes: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// redis-cli in the Redis task (on the manager).
fn redis(tb: &Testbed, args: &[&str]) -> String {
    let container = tb.manager.docker_ok(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={STACK}_redis"),
    ]);
    let mut cmd = vec!["exec", container.as_str(), "redis-cli"];
    cmd.extend_from_slice(args);
    tb.manager.docker_ok(&cmd)
}

/// Pushes the images and deploys `berthwork` at v1; returns its directory (in the one the
/// manager shares: nginx's bind mounts) once nginx answers v1 and both worker tasks run
/// (healthy: Swarm reports a task with a healthcheck `Running` only once it passed).
pub fn deploy(tb: &Testbed) -> PathBuf {
    let dir = swarmstack::deploy_with(
        tb,
        STACK,
        PORT,
        &swarmstack::nginx_conf(),
        &[
            ("berth-demo/app:v1", "app:v1"),
            ("berth-demo/app:v2", "app:v2"),
            ("berth-demo/app:unready", "app:unready"),
            ("berth-fixture/nginx:1", "nginx:1"),
            ("berth-fixture/redis:7", "redis:7"),
        ],
        SERVICES,
    );
    running_at(tb, "v1");
    dir
}

pub fn worker_swap_and_rollback(tb: &Testbed) {
    let t0 = Instant::now();
    let dir = deploy(tb);
    let dir = dir.as_path();
    let v1 = running_at(tb, "v1");
    eprintln!(
        "worker: stack {STACK} at v1 on {v1:?} at {:?}",
        t0.elapsed()
    );

    // web and worker to v2 in one call: exit 0, in the documented order.
    let (code, doc, stderr) = swap(tb, dir, "v2", &["web", "worker"]);
    assert_eq!(code, 0, "{stderr}");
    let at = |line: &str| {
        stderr
            .find(line)
            .unwrap_or_else(|| panic!("no {line:?} in: {stderr}"))
    };
    let ready = at(&format!("{STACK}_web--next: 2 task(s) ready"));
    let updating = at(&format!("updating {STACK}_worker to "));
    let switched = at(&format!("nginx sends to tasks.{STACK}_web--next"));
    assert!(ready < updating && updating < switched, "{stderr}");
    let url = format!("http://{}:{PORT}/version", tb.manager.ip);
    assert_eq!(berth_e2e::get(&url).map(|r| r.1), Ok("v2".to_string()));
    super::swap::at_tag_on_two_nodes(tb, STACK, "v2");
    let ok = ("swap".to_string(), "ok".to_string(), 0);
    assert_eq!(berth_e2e::stages(&doc), [ok], "{doc}");
    let d = &doc["stages"][0]["detail"];
    assert_eq!(d["engine"], "swarm", "{d}");
    assert_eq!(
        (&d["tag"], &d["previous_tag"]),
        (&"v2".into(), &"v1".into()),
        "{d}"
    );
    assert!(d["workers_ms"].as_u64().is_some(), "{d}");
    let (web, w) = (&d["services"][0], &d["services"][1]);
    assert_eq!(
        (&web["name"], &web["proxied"]),
        (&"web".into(), &true.into()),
        "{d}"
    );
    assert_eq!(
        (&w["name"], &w["proxied"]),
        (&"worker".into(), &false.into()),
        "{d}"
    );
    assert_eq!(w["image"], format!("{}/app:v2", tb.registry), "{d}");
    // The document's worker tasks: the old ones at v1, the new ones at v2, with nodes.
    let v2 = running_at(tb, "v2");
    assert_eq!(listed(w, "old_containers"), docs_view(&v1), "{d}");
    assert_eq!(listed(w, "new_containers"), docs_view(&v2), "{d}");
    let nodes: BTreeSet<&str> = v2.iter().map(|t| t.1.as_str()).collect();
    assert!(std::fs::read_to_string(dir.join(".env"))
        .unwrap()
        .contains("BERTH_TAG=v2"));
    eprintln!(
        "worker: web and worker at v2, worker on {nodes:?} at {:?}",
        t0.elapsed()
    );

    // The v2 workers work: 20 jobs through Redis, all done.
    let mut push = vec!["RPUSH", "demo:jobs"];
    let jobs: Vec<String> = (1..=20).map(|i| format!("job-{i}")).collect();
    push.extend(jobs.iter().map(String::as_str));
    redis(tb, &push);
    let deadline = Instant::now() + Duration::from_secs(60);
    while redis(tb, &["LLEN", "demo:done"]) != "20" {
        assert!(
            Instant::now() < deadline,
            "the v2 workers did not finish 20 jobs: {} done",
            redis(tb, &["LLEN", "demo:done"])
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // A tag that never gets healthy: exit 3, Swarm rolled it back, v2 tasks run.
    let (code, doc, stderr) = swap(tb, dir, "unready", &["worker"]);
    eprintln!("worker: tasks after --tag unready:\n{}", history(tb));
    assert_eq!(code, 3, "{stderr}");
    let failed = ("swap".to_string(), "failed".to_string(), 3);
    assert_eq!(berth_e2e::stages(&doc), [failed], "{doc}");
    let error = doc["stages"][0]["error"].as_str().unwrap_or_default();
    let want = format!(
        "nothing moved: {STACK}_worker: Swarm rolled the update to {}/app:unready back",
        tb.registry
    );
    assert!(
        error.contains(&want)
            && error.contains(&format!("its tasks run {}/app:v2 again", tb.registry)),
        "{error}"
    );
    // Two tasks at v2 on two nodes, and berth's line says whether they are the ones that
    // ran before: while it rolls back, Swarm may restart the failed new task from the v2
    // spec and keep that one instead of an old one (seen on the bed in CI).
    let now = tasks(tb);
    assert_eq!(now.len(), 2, "{now:?}\n{}", history(tb));
    assert!(now.iter().all(|t| t.2 == v2[0].2), "{now:?}");
    let nodes: BTreeSet<&str> = now.iter().map(|t| t.1.as_str()).collect();
    assert_eq!(nodes.len(), 2, "{now:?}");
    let gone = v2
        .iter()
        .filter(|o| !now.iter().any(|t| t.0 == o.0))
        .count();
    let said = if gone == 0 {
        "; the old tasks still run".to_string()
    } else {
        format!("of the 2 tasks that ran before, Swarm replaced {gone} while it rolled back")
    };
    assert!(error.contains(&said), "{error}\n{now:?}\n{}", history(tb));
    eprintln!("worker: v2 tasks replaced by Swarm while it rolled back: {gone} of 2");
    // The document: the tag it tried, the one that still runs, and its tasks.
    let d = &doc["stages"][0]["detail"];
    assert_eq!(
        (&doc["tag"], &doc["previous_tag"]),
        (&"unready".into(), &"v2".into())
    );
    assert_eq!(
        (&d["tag"], &d["previous_tag"]),
        (&"unready".into(), &"v2".into()),
        "{d}"
    );
    let w = &d["services"][0];
    assert_eq!(w["name"], "worker", "{d}");
    assert_eq!(listed(w, "old_containers"), docs_view(&v2), "{d}");
    assert_eq!(listed(w, "new_containers"), [], "{d}");
    assert_eq!(berth_e2e::get(&url).map(|r| r.1), Ok("v2".to_string()));
    assert!(std::fs::read_to_string(dir.join(".env"))
        .unwrap()
        .contains("BERTH_TAG=v2"));
    eprintln!("worker: unready rolled back at {:?}", t0.elapsed());
    tb.manager.docker_ok(&["stack", "rm", STACK]);
}
