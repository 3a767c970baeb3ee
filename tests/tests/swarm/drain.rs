//! A node drained under load (issue 11): Swarm moves its task to another node and nginx
//! follows with no berth command and no reload, 0 failed requests. The layout is the one
//! berth-swap on Swarm switches (examples/swarm/nginx.conf: nginx resolves
//! `tasks.STACK_web`, the name berth's file sets, per request through Docker's DNS, which
//! lists a task once its healthcheck passes and drops it before Swarm stops it). The
//! test's copy of that nginx.conf also names the task address that answered each request
//! (`X-Berth-Upstream`), so the test sees nginx send to the moved task and never again to
//! the drained one.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use berth_e2e::clients::{Clients, Mix};
use berth_e2e::swarm::Testbed;
use berth_e2e::swarmstack;

const STACK: &str = "berthdrain";
/// On the manager's address of the test bed (the swap part's stack publishes 80, the
/// deploy part's 8081; their stacks still run when this part starts).
const PORT: u16 = 8082;
/// How long Swarm gets to move the task and pass its healthcheck (a few seconds when idle).
const MOVE_TIMEOUT: Duration = Duration::from_secs(60);

/// (task id, node, overlay address) of each running task of the stack's `web`.
fn web_tasks(tb: &Testbed) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (id, node, _) in tb.manager.running_tasks(&format!("{STACK}_web")) {
        let addr = tb.manager.docker_ok(&[
            "inspect",
            "--type",
            "task",
            "--format",
            "{{range .NetworksAttachments}}{{range .Addresses}}{{.}} {{end}}{{end}}",
            &id,
        ]);
        let addr = addr.split('/').next().unwrap_or_default().to_string();
        out.push((id, node, addr));
    }
    out
}

/// The task address nginx sent one GET to (the last one, after a retry).
fn upstream_of(url: &str) -> Option<String> {
    let agent = berth_core::http::agent(Duration::from_secs(5));
    let resp = agent.get(url).call().ok()?;
    let addr = resp.headers().get("x-berth-upstream")?.to_str().ok()?;
    let last = addr.rsplit(", ").next()?;
    Some(last.split(':').next()?.to_string())
}

pub fn tasks_follow_a_drained_node(tb: &Testbed) {
    let t0 = Instant::now();
    let conf = swarmstack::nginx_conf();
    let marked = conf.replacen(
        "proxy_pass http://$berth_web;",
        "proxy_pass http://$berth_web;\n            add_header X-Berth-Upstream $upstream_addr always;",
        1,
    );
    assert_ne!(
        marked, conf,
        "examples/swarm/nginx.conf has no `proxy_pass http://$berth_web;`"
    );
    swarmstack::deploy(
        tb,
        STACK,
        PORT,
        &marked,
        &[
            ("berth-demo/app:v1", "app:v1"),
            ("berth-fixture/nginx:1", "nginx:1"),
        ],
    );
    // nginx answered with one task: wait for both.
    let before = loop {
        let now = web_tasks(tb);
        if now.len() == 2 {
            break now;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "web has not 2 running tasks: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // A worker with a web task (never the manager: nginx is placed there).
    let drained = tb
        .workers
        .iter()
        .map(|w| w.container.clone())
        .find(|w| before.iter().any(|(_, n, _)| n == w))
        .expect("a web task on a worker (max 1 per node, 2 of 3 nodes)");
    let gone: Vec<String> = before
        .iter()
        .filter(|(_, n, _)| *n == drained)
        .map(|(_, _, a)| a.clone())
        .collect();
    eprintln!(
        "stack {STACK} at v1, web on {before:?}, at {:?}",
        t0.elapsed()
    );

    let base = format!("http://{}:{PORT}", tb.manager.ip);
    let url = format!("{base}/version");
    let mix = Mix {
        clients: 6,
        pause: Duration::from_millis(10),
        max_time: Duration::from_secs(150),
        ..Mix::default()
    };
    let load = Clients::start(&base, &mix);
    std::thread::sleep(Duration::from_secs(1));
    let drain_at = Instant::now();
    tb.manager
        .docker_ok(&["node", "update", "--availability", "drain", &drained]);
    // Swarm moves the task: 2 running (healthy) tasks again, none on the drained node.
    let after = loop {
        let now = web_tasks(tb);
        if now.len() == 2 && now.iter().all(|(_, n, _)| *n != drained) {
            break now;
        }
        assert!(
            drain_at.elapsed() < MOVE_TIMEOUT,
            "web's task did not move off {drained} within {MOVE_TIMEOUT:?}: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let moved_in = drain_at.elapsed();
    let addrs: BTreeSet<String> = after.iter().map(|(_, _, a)| a.clone()).collect();
    let new: Vec<String> = addrs
        .iter()
        .filter(|a| !before.iter().any(|(_, _, b)| b == *a))
        .cloned()
        .collect();
    assert_eq!(new.len(), 1, "before {before:?}, after {after:?}");
    // nginx sends to the moved task (it resolves the name again within 1 s), still under load.
    let mut seen = BTreeSet::new();
    while !seen.contains(&new[0]) {
        assert!(
            drain_at.elapsed() < MOVE_TIMEOUT,
            "nginx never sent to the moved task {} (it sent to {seen:?})",
            new[0]
        );
        if let Some(a) = upstream_of(&url) {
            seen.insert(a);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let followed_in = drain_at.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let report = load.stop();
    eprintln!(
        "drained {drained}: task moved in {moved_in:?}, nginx sent to it at {followed_in:?}; load: {}",
        report.summary()
    );
    assert!(report.total() > 100, "{}", report.summary());
    assert_eq!(report.failed(), 0, "{}", report.summary());
    // From now on only the running tasks answer: never the drained node's address.
    let mut answered = BTreeSet::new();
    for _ in 0..40 {
        answered.insert(upstream_of(&url).expect("an answer through nginx"));
    }
    assert!(answered.is_subset(&addrs), "{answered:?} not in {addrs:?}");
    assert!(gone.iter().all(|g| !answered.contains(g)), "{answered:?}");

    // Leave the test bed as it was: the node active, the stack gone.
    tb.manager
        .docker_ok(&["node", "update", "--availability", "active", &drained]);
    tb.manager.docker_ok(&["stack", "rm", STACK]);
    eprintln!("drain part done in {:?}", t0.elapsed());
}
