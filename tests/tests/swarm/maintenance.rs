//! `berth-swap maintenance on|off --engine swarm` on the real test bed, on the swap part's
//! stack (nginx a service of the stack on the manager, berth's directory bind-mounted from
//! the directory it shares with the host; swarm/swap.rs), after that part (at v1), under
//! the project's keep-alive clients (tests/src/clients.rs: GET, every third request a
//! POST) through nginx:
//! - a proxy service with no task on this manager: exit 1, one line, nothing written;
//! - on, on again with another message, off, off again, each checked by one request sent
//!   the instant the command returns (issue 12 §6: a switch is done when the new
//!   configuration answers); the record and `<state>/maintenance.json` as on Compose; the
//!   `--except` paths reach the app meanwhile;
//! - then `scripts/deploy.sh --env swarm v2` with `DEPLOY_MAINTENANCE=1`: the maintenance
//!   stages around the swap, v2 serving the instant the deploy returns;
//! - across all of it: no transport error, every answer the app's (GET 200, POST 405) or
//!   the 503 page.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::clients::{Clients, Mix};
use berth_e2e::swarm::Testbed;
use berth_e2e::{bin, root, stages};
use serde_json::Value;

use super::swap::STACK;

/// `berth-swap maintenance ARGS --engine swarm` with DOCKER_HOST at the manager: (exit,
/// the maintenance stage's record, stderr).
fn maintenance(tb: &Testbed, dir: &Path, args: &[&str]) -> (i32, Value, String) {
    let args: Vec<&str> = ["maintenance"].iter().chain(args).copied().collect();
    let (code, doc, stderr) = super::swap::run(tb, dir, "berth-swap", &args);
    let stage = doc["stages"]
        .as_array()
        .and_then(|s| s.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(stage["stage"], "maintenance", "{doc}");
    let switched = stderr
        .lines()
        .find(|l| l.contains("nginx serves the new configuration"));
    eprintln!("maintenance {args:?}: exit {code}; {switched:?}");
    (code, stage, stderr)
}

pub fn on_and_off_under_clients_then_deploy_with_maintenance(tb: &Testbed, dir: &Path) {
    let t0 = Instant::now();
    // nginx of the swap part's stack: the manager's port 80.
    let base = format!("http://{}:80", tb.manager.ip);
    let url = |path: &str| format!("{base}{path}");
    let file = dir.join("nginx/berth/server-maintenance.conf");
    let window = dir.join(".berth/maintenance.json");
    // One request the instant a command returns: (status, version, body).
    let now = |path: &str| berth_e2e::get(&url(path)).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let mix = Mix {
        clients: 4,
        pause: Duration::from_millis(10),
        max_time: Duration::from_secs(240),
        ..Mix::default()
    };
    // No nginx task of that name on this manager: exit 1, one line, nothing written.
    let (code, st, err) = maintenance(tb, dir, &["on", "--proxy-service", "nope"]);
    assert_eq!((code, &st["status"]), (1, &"failed".into()), "{err}");
    assert!(
        err.contains("the proxy service berthswap_nope has no running task on this manager")
            && err.lines().filter(|l| l.contains("error")).count() == 1,
        "{err}"
    );
    assert!(!file.exists() && !window.exists());
    let load = Clients::start(&base, &mix);
    std::thread::sleep(Duration::from_secs(1));

    // on: the page, at once.
    let (code, st, err) = maintenance(tb, dir, &["on", "--message", "Back at 5 o'clock; $5 {x}"]);
    assert_eq!(code, 0, "{err}");
    let (status, _, page) = now("/version");
    assert_eq!(status, 503, "the instant `on` returned: {page}");
    assert!(
        page.contains("Back at 5 o&#39;clock; &#36;5 &#123;x&#125;"),
        "{page}"
    );
    let d = &st["detail"];
    assert_eq!(st["status"], "ok", "{st}");
    assert_eq!(d["state"], "on", "{st}");
    assert_eq!(d["already"], false, "{st}");
    assert_eq!(d["file"], file.display().to_string(), "{st}");
    assert!(file.exists() && window.exists());
    assert!(
        err.contains("nginx serves the new configuration ("),
        "waited for nginx's new workers: {err}"
    );
    let since = d["since"].clone();
    let agent = berth_core::http::agent(Duration::from_secs(5));
    let r = agent.get(&url("/anything")).call().unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers().get("retry-after").unwrap(), "30");
    // The --except paths (default /healthz, /readyz) still reach the app's tasks.
    let (status, _, body) = now("/healthz");
    assert_eq!(status, 200, "{body}");
    let (status, version, body) = now("/readyz");
    assert_eq!((status, version.as_str()), (200, "v1"), "{body}");

    // on again with another message: the page changes, the window does not.
    let (code, st, err) = maintenance(tb, dir, &["on", "--message", "Second notice"]);
    assert_eq!(code, 0, "{err}");
    let (status, _, page) = now("/version");
    assert_eq!(status, 503, "{page}");
    assert!(
        page.contains("Second notice") && !page.contains("clock"),
        "the instant `on` returned: {page}"
    );
    assert_eq!(st["detail"]["already"], true, "{st}");
    assert_eq!(st["detail"]["since"], since, "{st}");

    std::thread::sleep(Duration::from_millis(500));
    // off: the app, at once; the window's length recorded.
    let (code, st, err) = maintenance(tb, dir, &["off"]);
    assert_eq!(code, 0, "{err}");
    let (status, version, body) = now("/version");
    assert_eq!(
        (status, version.as_str()),
        (200, "v1"),
        "the instant `off` returned: {body}"
    );
    let d = &st["detail"];
    assert_eq!((&d["state"], &d["already"]), (&"off".into(), &false.into()));
    assert_eq!(d["since"], since, "{st}");
    assert!(d["window_ms"].as_u64().unwrap() >= 500, "{st}");
    assert!(!file.exists() && !window.exists());
    let (code, st, err) = maintenance(tb, dir, &["off"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(st["detail"]["already"], true, "{st}");
    eprintln!("maintenance on, on, off, off at {:?}", t0.elapsed());

    // The pipeline with DEPLOY_MAINTENANCE=1, settings as a user writes them.
    std::fs::write(
        dir.join("deploy.swarm.env"),
        format!(
            "BERTH_ENGINE=swarm\nBERTH_PROJECT_NAME={STACK}\nDEPLOY_SERVICES=web\n\
             DEPLOY_BACKUP=none\nDEPLOY_MAINTENANCE=1\n"
        ),
    )
    .unwrap();
    let mut c = Command::new(root().join("scripts/deploy.sh"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if k.starts_with("BERTH_") || k.starts_with("DEPLOY_") {
            c.env_remove(k);
        }
    }
    let t = Instant::now();
    let out = c
        .args(["--env", "swarm", "v2"])
        .current_dir(dir)
        .env("DOCKER_HOST", tb.manager.docker_host())
        .env("BERTH_BIN_DIR", bin("berth-swap").parent().unwrap())
        .env("BERTH_DRAIN", "1s")
        .env("BERTH_SWAP_TIMEOUT", "60s")
        .stdin(Stdio::null())
        .output()
        .expect("deploy.sh runs");
    let (status, version, body) = now("/version");
    let returned = load.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "deploy.sh --env swarm v2 with DEPLOY_MAINTENANCE=1: exit {:?} in {:?}",
        out.status.code(),
        t.elapsed()
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        (status, version.as_str()),
        (200, "v2"),
        "the instant the deploy returned: {body}"
    );
    let doc = berth_e2e::last_document(&dir.join(".berth"));
    let ok = |stage: &str| (stage.to_string(), "ok".to_string(), 0);
    assert_eq!(
        stages(&doc),
        [
            ok("preflight"),
            ok("pull"),
            ok("maintenance"),
            ok("swap"),
            ok("maintenance"),
        ],
        "{doc}"
    );
    let m: Vec<&Value> = doc["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["stage"] == "maintenance")
        .collect();
    assert_eq!(m[0]["detail"]["state"], "on", "{doc}");
    assert_eq!(m[1]["detail"]["state"], "off", "{doc}");
    assert!(m[1]["detail"]["window_ms"].as_u64().is_some(), "{doc}");
    assert!(!file.exists() && !window.exists());
    super::swap::at_tag_on_two_nodes(tb, STACK, "v2");
    std::thread::sleep(Duration::from_millis(500));

    let report = load.stop();
    eprintln!("maintenance part: {}", report.summary());
    report.assert_app_or_maintenance_page();
    let after = report.window(returned, Duration::MAX);
    assert!(
        after.total() > 0 && after.failed() == 0,
        "{}",
        after.summary()
    );
    assert_eq!(
        report.versions_after(returned),
        ["v2".to_string()].into(),
        "{}",
        after.summary()
    );
}
