//! `berth-swap --engine swarm` and `berth-rollback --engine swarm` on the real test bed
//! (issue 11): nginx as a service of the stack on the manager (host-mode port 80, its
//! config (examples/swarm/nginx.conf: `proxy_pass http://$berth_web;`, resolved per
//! request) and berth's directory bind-mounted from a directory the manager shares with
//! the host at the same path, `Testbed::shared`), the demo app's `web` with 2 replicas
//! on 2 nodes (`endpoint_mode: dnsrr`, no published port), under load through nginx: a
//! swap v1 -> v2 (0 failed, the stack's own tasks at v2 on two nodes, `web--next` gone);
//! then `berth-rollback --to v1`, 0 failed. (A tag whose tasks never get ready, exit 3:
//! the deploy part, swarm/deploy.rs, through scripts/deploy.sh and this same swap.)

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::swarm::Testbed;
use berth_e2e::{berth, swarmstack};
use serde_json::Value;

pub const STACK: &str = "berthswap";

/// Run a berth command with DOCKER_HOST at the manager, for the stack: (exit, document, stderr).
pub fn run(tb: &Testbed, dir: &Path, bin: &str, args: &[&str]) -> (i32, Value, String) {
    let out: Output = berth(bin)
        .env("DOCKER_HOST", tb.manager.docker_host())
        .args(args)
        .args(["--engine", "swarm", "-p", STACK])
        .arg("--project-dir")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("berth runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{bin}: no document ({e}): {stderr}"));
    (out.status.code().unwrap_or(-1), doc, stderr)
}

/// `args` under load through nginx; asserts 0 failed requests; (exit, document, stderr).
fn under_load(tb: &Testbed, dir: &Path, bin: &str, args: &[&str]) -> (i32, Value, String) {
    let load = swarmstack::clients(&format!("http://{}:80", tb.manager.ip));
    let t0 = Instant::now();
    let args: Vec<&str> = args.iter().copied().chain(["--drain", "2s"]).collect();
    let res = run(tb, dir, bin, &args);
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    eprintln!("{bin} {args:?}: exit {} in {:?}", res.0, t0.elapsed());
    assert_eq!(report.failed(), 0, "{}\n{}", report.summary(), res.2);
    report.assert_all_answered_by_app(&format!("{bin} {args:?}: load"));
    assert!(report.total() > 100, "{}", report.summary());
    res
}

/// The services of `stack` (other parts' stacks run beside it): "NAME IMAGE" lines.
pub fn services(tb: &Testbed, stack: &str) -> String {
    let label = format!("label=com.docker.stack.namespace={stack}");
    tb.manager.docker_ok(&[
        "service",
        "ls",
        "--filter",
        &label,
        "--format",
        "{{.Name}} {{.Image}}",
    ])
}

/// The swap part; returns the stack's directory (the maintenance part goes on with the
/// stack, at v1).
pub fn swap_and_rollback_under_load(tb: &Testbed) -> PathBuf {
    let t0 = Instant::now();
    let dir = swarmstack::deploy(
        tb,
        STACK,
        80,
        &swarmstack::nginx_conf(),
        &[
            ("berth-demo/app:v1", "app:v1"),
            ("berth-demo/app:v2", "app:v2"),
            ("berth-fixture/nginx:1", "nginx:1"),
        ],
    );
    eprintln!("stack {STACK} at v1 behind nginx at {:?}", t0.elapsed());

    let url = format!("http://{}/version", tb.manager.ip);
    // v1 -> v2 under load: 0 failed, the stack's own tasks at v2 on two nodes.
    let (code, doc, stderr) = under_load(tb, &dir, "berth-swap", &["--tag", "v2", "web"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(doc["stages"][0]["status"], "ok", "{doc}");
    assert_eq!(berth_e2e::get(&url).map(|r| r.1), Ok("v2".to_string()));
    at_tag_on_two_nodes(tb, STACK, "v2");
    assert!(
        !services(tb, STACK).contains("--next"),
        "{}",
        services(tb, STACK)
    );
    // nginx is back on the stack's own service, by its Swarm DNS name (no address).
    let file = std::fs::read_to_string(dir.join("nginx/berth/upstream-web.conf")).unwrap();
    assert!(
        file.starts_with("# berth: project=berthswap\n")
            && file
                .ends_with("map $scheme $berth_web {\n    default tasks.berthswap_web:8080;\n}\n"),
        "{file}"
    );
    eprintln!("swapped to v2 at {:?}", t0.elapsed());
    // berth-rollback --to v1 through the same path: 0 failed.
    let (code, _, stderr) = under_load(tb, &dir, "berth-rollback", &["--to", "v1", "web"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(berth_e2e::get(&url).map(|r| r.1), Ok("v1".to_string()));
    at_tag_on_two_nodes(tb, STACK, "v1");
    eprintln!("rolled back to v1 at {:?}", t0.elapsed());
    dir
}

/// The running tasks of `stack`'s `web` all run `app:TAG`, on two different nodes.
pub fn at_tag_on_two_nodes(tb: &Testbed, stack: &str, tag: &str) {
    let ps = tb.manager.docker_ok(&[
        "service",
        "ps",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Node}} {{.Image}}",
        &format!("{stack}_web"),
    ]);
    let lines: Vec<&str> = ps.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 2, "{ps}");
    assert!(
        lines.iter().all(|l| l.contains(&format!("/app:{tag}"))),
        "{ps}"
    );
    let nodes: std::collections::BTreeSet<&str> =
        lines.iter().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(nodes.len(), 2, "{ps}");
}
