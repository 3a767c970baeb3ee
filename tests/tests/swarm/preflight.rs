//! `berth-swap preflight` and `pull --engine swarm` on the test bed (a part of
//! tests/tests/swarm.rs, sharing its Swarm): a stack that suits Swarm (`berthgood`, its 2
//! tasks on 2 nodes) passes on the manager (also with berth inside the manager, Debian's
//! docker CLI 20.10 beside Compose v2), `berth-report status` shows its tasks per node, a
//! tag in the registry pulls and one that is not exits 2, a worker node is refused, and
//! the lint names each key of a compose file written for one host that Swarm ignores or
//! rejects (exact lines, as README's "When one server is not enough" shows them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::swarm::{Node, Testbed};
use berth_e2e::{berth, bin, run_ok};
use serde_json::Value;

pub const STACK: &str = "berthgood";

/// A stack that suits Swarm on this kernel (no IPVS): host-mode port, dnsrr.
const GOOD: &str = r#"services:
  web:
    image: REGISTRY/app:${BERTH_TAG}
    init: true
    ports:
      - target: 8080
        published: 8080
        protocol: tcp
        mode: host
    healthcheck:
      test: ["CMD", "/app", "healthcheck", "/healthz"]
      interval: 2s
      timeout: 2s
      retries: 3
    networks: [appnet]
    deploy:
      replicas: 2
      endpoint_mode: dnsrr
      restart_policy:
        condition: any
networks:
  appnet:
    driver: overlay
    attachable: true
"#;

/// A compose project as many are written for one host.
const COMPOSE_ONLY: &str = r#"services:
  web:
    image: REGISTRY/app:${BERTH_TAG}
    build: .
    container_name: shop-web
    restart: always
    links: [db]
    mem_limit: 64m
    ports: ["8080:8080"]
    environment:
      GREETING: ${GREETING}
    depends_on:
      db:
        condition: service_healthy
  db:
    image: REGISTRY/app:${BERTH_TAG}
    network_mode: host
    devices: ["/dev/null:/dev/berth-null"]
"#;

fn project(dir: &Path, name: &str, compose: &str, registry: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(
        p.join("compose.yaml"),
        compose.replace("REGISTRY", registry),
    )
    .unwrap();
    p
}

pub const SWARM_PREFLIGHT: &[&str] = &["preflight", "--engine", "swarm", "--tag", "v1"];

/// `berth-swap preflight --engine swarm` on `node`, for the project in `dir`.
fn preflight(node: &Node, dir: &Path, project: &str) -> (i32, Value, String) {
    swap_stage(node, dir, project, &["preflight", "--tag", "v1"])
}

/// `berth-swap ARGS --engine swarm` on `node`: (exit code, document, stderr).
fn swap_stage(node: &Node, dir: &Path, project: &str, args: &[&str]) -> (i32, Value, String) {
    let out: Output = berth("berth-swap")
        .env("DOCKER_HOST", node.docker_host())
        .args(args)
        .args(["--engine", "swarm", "-p", project])
        .arg("--project-dir")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("berth-swap runs");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no document ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code().unwrap_or(-1), doc, stderr)
}

/// `berth-swap preflight --engine swarm` run inside the manager's container (the binary,
/// the host's Compose v2 plugin and the project copied in): (exit code, document, stderr).
fn on_the_manager(tb: &Testbed, dir: &Path, project: &str) -> (i32, Value, String) {
    let m = &tb.manager.container;
    let plugins = "/usr/local/lib/docker/cli-plugins";
    run_ok(Command::new("docker").args(["exec", m, "mkdir", "-p", plugins, "/srv"]));
    for (from, to) in [
        (bin("berth-swap"), "/usr/local/bin/berth-swap".to_string()),
        (
            Path::new(plugins).join("docker-compose"),
            format!("{plugins}/docker-compose"),
        ),
        (dir.to_path_buf(), format!("/srv/{project}")),
    ] {
        run_ok(
            Command::new("docker")
                .arg("cp")
                .arg(from)
                .arg(format!("{m}:{to}")),
        );
    }
    let out = run_ok(Command::new("docker").args([
        "exec",
        m,
        "docker",
        "version",
        "-f",
        "{{.Client.Version}}",
    ]));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("20.10."),
        "{out:?}"
    );
    let out = Command::new("docker")
        .args(["exec", "-w", &format!("/srv/{project}"), m, "berth-swap"])
        .args(SWARM_PREFLIGHT)
        .args(["-p", project])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code().unwrap_or(-1), doc, stderr)
}

/// The nodes running the stack's web tasks, once `want` are running (bounded).
fn running_nodes(manager: &Node, service: &str, want: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = manager.docker_ok(&[
            "service",
            "ps",
            service,
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Node}} {{.CurrentState}}",
        ]);
        let nodes: Vec<String> = out
            .lines()
            .filter(|l| l.contains(" Running"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        if nodes.len() == want {
            return nodes;
        }
        assert!(
            Instant::now() < deadline,
            "{service}: not {want} running tasks within 90 s:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The good stack's project directory (and a temporary directory for the other one).
pub struct Good {
    dir: PathBuf,
    image: String,
    _tmp: tempfile::TempDir,
}

/// Push app:v1 and deploy the good stack (its tasks start meanwhile).
pub fn deploy(tb: &Testbed) -> Good {
    let image = tb.push("berth-demo/app:v1", "app:v1");
    let tmp = tempfile::tempdir().unwrap();
    // The test bed is a real swarm: the good stack runs, its 2 tasks on 2 nodes (pulled
    // from the registry), each answering on its node's host-mode port.
    let dir = project(tmp.path(), "good", GOOD, &tb.registry);
    tb.deploy_stack(&dir, STACK, "v1");
    Good {
        dir,
        image,
        _tmp: tmp,
    }
}

/// The part: status, preflight, pull and the lint on the good stack (then removed) and
/// on a compose file written for one host.
pub fn preflight_pull_and_lint(tb: &Testbed, g: &Good) {
    let t0 = Instant::now();
    let (stack, image) = (STACK, g.image.as_str());
    let nodes = running_nodes(&tb.manager, &format!("{stack}_web"), 2);
    assert_ne!(nodes[0], nodes[1], "the 2 replicas share a node: {nodes:?}");
    for n in tb.nodes().filter(|n| nodes.contains(&n.container)) {
        let (status, version, _) = berth_e2e::get(&format!("http://{}:8080/version", n.ip))
            .unwrap_or_else(|e| panic!("{}: {e}", n.container));
        assert_eq!((status, version.as_str()), (200, "v1"), "{}", n.container);
    }
    eprintln!(
        "preflight: stack {stack} running on {nodes:?} ({image}) at {:?}",
        t0.elapsed()
    );
    super::status::shows_the_tasks_per_node(tb, &g.dir, stack, &nodes, "v1");
    eprintln!("preflight: status shown at {:?}", t0.elapsed());

    // preflight on the manager: passes, records the node and an empty lint.
    let (code, doc, stderr) = preflight(&tb.manager, &g.dir, stack);
    assert_eq!(code, 0, "{stderr}");
    let rec = &doc["stages"][0];
    assert_eq!(rec["stage"], "preflight");
    assert_eq!(rec["status"], "ok");
    assert_eq!(rec["detail"]["engine"], "swarm");
    assert_eq!(rec["detail"]["node"]["manager"], true);
    assert_eq!(rec["detail"]["node"]["nodes"], 3);
    assert_eq!(rec["detail"]["services"], serde_json::json!(["web"]));
    assert_eq!(rec["detail"]["lint"], serde_json::json!([]));
    // The running tasks, each on its node at an overlay address, at the pushed image.
    let tasks = rec["detail"]["tasks"]["web"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut on: Vec<&str> = tasks.iter().filter_map(|t| t["node"].as_str()).collect();
    on.sort_unstable();
    let mut want: Vec<&str> = nodes.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(on, want, "{tasks:?}");
    for t in &tasks {
        assert_eq!(t["state"], "running", "{t}");
        assert!(
            t["image"].as_str().unwrap_or_default().starts_with(image),
            "{t}"
        );
        let addrs = t["addresses"].as_array().map(Vec::len);
        assert_eq!(addrs, Some(1), "one address, on appnet: {t}");
    }
    assert!(
        !stderr.contains("lint:"),
        "a Swarm-ready file has no findings: {stderr}"
    );

    // berth on the manager itself, with Debian's docker CLI (20.10, no `docker stack
    // config`) and Compose v2 beside it: passes, saying what it could not ask.
    let (code, doc, stderr) = on_the_manager(tb, &g.dir, stack);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(doc["stages"][0]["detail"]["stack_config"], "unavailable");
    assert!(
        stderr.contains("berth-swap: warning: this docker CLI has no `docker stack config`"),
        "{stderr}"
    );
    assert_eq!(rec["detail"]["stack_config"], "ok", "the host's CLI has it");

    // pull: the tag is in the registry (ID and digest recorded); a tag that is not: exit 2.
    let (code, doc, stderr) = swap_stage(&tb.manager, &g.dir, stack, &["pull", "--tag", "v1"]);
    assert_eq!(code, 0, "{stderr}");
    let pulled = &doc["stages"][0]["detail"]["services"][0];
    assert_eq!(pulled["image"], image);
    let digest = pulled["digest"].as_str().unwrap_or_default();
    assert!(
        digest.starts_with(&format!("{}/app@sha256:", tb.registry)),
        "{pulled}"
    );
    let (code, doc, stderr) = swap_stage(&tb.manager, &g.dir, stack, &["pull", "--tag", "v9"]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(doc["stages"][0]["status"], "failed");
    let error = doc["stages"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with(&format!(
            "web: image {}/app:v9 cannot be pulled from its registry, so no Swarm node could run it: ",
            tb.registry
        )),
        "{error}"
    );

    // The same on a worker: refused, exit 1.
    let (code, doc, stderr) = preflight(&tb.workers[0], &g.dir, stack);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(doc["stages"][0]["status"], "failed");
    assert!(
        stderr.contains("this docker node is a Swarm worker, not a manager"),
        "{stderr}"
    );

    // A compose project written for one host: every key named, one line each; the keys
    // Swarm rejects fail the stage (exit 1).
    let shop = project(g._tmp.path(), "shop", COMPOSE_ONLY, &tb.registry);
    std::fs::write(shop.join(".env"), "GREETING=hello\n").unwrap();
    let (code, doc, stderr) = preflight(&tb.manager, &shop, "shop");
    // As README's "When one server is not enough" shows it.
    eprintln!("preflight of a compose-only project printed:\n{stderr}");
    let lint: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("berth-swap: lint: "))
        .collect();
    assert_eq!(
        lint,
        [
            "service db: devices: ignored by docker stack deploy; Swarm services cannot map devices; run that part outside the stack",
            "service db: network_mode: ignored by docker stack deploy; attach the service to networks: (overlay); for the host's network use the network named host",
            "service db: deploy.endpoint_mode vip: does not work on this host; service VIPs need IPVS, which this kernel lacks: set deploy.endpoint_mode: dnsrr",
            "service web: build: ignored by docker stack deploy; build and push the image before the deploy; a stack only runs image:",
            "service web: container_name: ignored by docker stack deploy; Swarm names the tasks itself; reach the service by its name",
            "service web: depends_on condition (db: service_healthy): rejected by docker stack deploy; Swarm has no start conditions: list the services only, and let each service wait for (retry) what it needs",
            "service web: links: ignored by docker stack deploy; services on the same overlay network reach each other by name",
            "service web: mem_limit: rejected by docker stack deploy; use deploy.resources.limits.memory",
            "service web: restart: ignored by docker stack deploy; use deploy.restart_policy (condition: any | on-failure | none)",
            "service web: ports 8080:8080 (mode ingress): does not work on this host; the routing mesh needs IPVS, which this kernel lacks: publish with mode: host",
            "service web: deploy.endpoint_mode vip: does not work on this host; service VIPs need IPVS, which this kernel lacks: set deploy.endpoint_mode: dnsrr",
            ".env: ignored by docker stack deploy; the stack file uses GREETING from it: set them in the deploy's environment (berth sets BERTH_TAG itself)",
        ],
        "{stderr}"
    );
    assert_eq!(code, 1, "{stderr}");
    let rec = &doc["stages"][0];
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["detail"]["lint"].as_array().map(Vec::len), Some(12));
    let error = rec["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with(
            "the stack file is not valid for Swarm: 2 key(s) docker stack deploy rejects"
        ) && error.contains("docker stack config: "),
        "{error}"
    );
    eprintln!("preflight: lint done at {:?}", t0.elapsed());

    healthwait_service(tb, g);
    eprintln!("preflight: healthwait --service done at {:?}", t0.elapsed());
    tb.manager.docker_ok(&["stack", "rm", STACK]);
}

/// `berth-healthwait --service`: the good stack's `web` (2 replicas, running, healthy) is
/// ready; a service whose task exits (and is restarted) fails at once (`died`), naming
/// the task and Swarm's error.
fn healthwait_service(tb: &Testbed, g: &Good) {
    let wait = |service: &str| {
        let t = Instant::now();
        let out = berth("berth-healthwait")
            .env("DOCKER_HOST", tb.manager.docker_host())
            .args([
                "--service",
                service,
                "--timeout",
                "60s",
                "--interval",
                "500ms",
            ])
            .args(["--engine", "swarm", "-p", STACK, "--project-dir"])
            .arg(&g.dir)
            .stdin(Stdio::null())
            .output()
            .expect("berth-healthwait runs");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let doc: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no document ({e}): {stderr}"));
        eprintln!(
            "healthwait --service {service}: {:?} in {:?}",
            out.status.code(),
            t.elapsed()
        );
        (
            out.status.code(),
            doc["stages"][0]["detail"]["targets"][0].clone(),
            stderr,
            t.elapsed(),
        )
    };
    let (code, target, stderr, _) = wait(&format!("{STACK}_web"));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        (&target["kind"], &target["ready"]),
        (&"service".into(), &true.into()),
        "{target}"
    );

    let fails = "berthfail_web";
    let image = format!("{}/app:v1", tb.registry);
    tb.manager.docker_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        fails,
        "--restart-condition",
        "on-failure",
        "--restart-delay",
        "1s",
        &image,
        "nosuchmode",
    ]);
    // Died (not: not ready at the deadline): it failed at once.
    let (code, target, stderr, _) = wait(fails);
    tb.manager.docker_ok(&["service", "rm", fails]);
    assert_eq!(code, Some(4), "{stderr}");
    assert_eq!(target["died"], true, "{target}");
    let error = target["last_error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with(&format!("task {fails}.1 on "))
            && error.contains(" failed: task: non-zero exit"),
        "{error}"
    );
}
