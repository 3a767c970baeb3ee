//! `berth-report status --engine swarm` (and `history`) on the test bed (a part of
//! `swarm_parts_on_one_three_node_test_bed`): the good stack's `web`, 2
//! replicas on 2 nodes, shown task by task with node, tag and health, as JSON and as text;
//! the database stack's backup and restore drill (after swarm/pg.rs made them).

use std::path::Path;
use std::process::Stdio;

use berth_e2e::berth;
use berth_e2e::swarm::Testbed;
use serde_json::Value;

/// `berth-report ARGS --engine swarm -p STACK` on the manager: (exit code, stdout, stderr).
fn report(tb: &Testbed, dir: &Path, stack: &str, args: &[&str]) -> (i32, String, String) {
    let out = berth("berth-report")
        .env("DOCKER_HOST", tb.manager.docker_host())
        .args(args)
        .args(["--engine", "swarm", "-p", stack])
        .arg("--project-dir")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("berth-report runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `web` of `stack` runs 2 healthy tasks at `tag`, one on each of `nodes`.
pub fn shows_the_tasks_per_node(
    tb: &Testbed,
    dir: &Path,
    stack: &str,
    nodes: &[String],
    tag: &str,
) {
    let (code, out, err) = report(tb, dir, stack, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["project"], stack);
    assert_eq!(v["engine"], "swarm");
    let web = &v["services"][0];
    assert_eq!(web["service"], "web", "{v}");
    assert_eq!(web["tag"], tag, "{web}");
    assert_eq!(web["health"], "healthy", "{web}");
    assert_eq!(
        (&web["running"], &web["replicas"]),
        (&2.into(), &2.into()),
        "{web}"
    );
    let tasks = web["tasks"].as_array().cloned().unwrap_or_default();
    let mut on: Vec<&str> = tasks.iter().filter_map(|t| t["node"].as_str()).collect();
    on.sort_unstable();
    let mut want: Vec<&str> = nodes.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(on, want, "{web}");
    for t in &tasks {
        assert_eq!(
            (&t["tag"], &t["state"]),
            (&tag.into(), &"running".into()),
            "{t}"
        );
        assert_eq!(t["health"], "healthy", "{t}");
        let image = t["image"].as_str().unwrap_or_default();
        assert!(
            image.starts_with(&format!("{}/app:{tag}@sha256:", tb.registry)),
            "{t}"
        );
    }

    // The text: the service's row, then a row per task with its node and tag.
    let (code, out, err) = report(tb, dir, stack, &["status", "web"]);
    assert_eq!(code, 0, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_default();
    assert!(
        row.contains(&format!(" {tag} ")) && row.contains("2/2 running: "),
        "{out}"
    );
    for n in nodes {
        let task = out
            .lines()
            .find(|l| l.starts_with("  ") && l.contains(&format!(" {n} ")));
        let task = task.unwrap_or_else(|| panic!("no task row on {n}: {out}"));
        assert!(
            task.contains(&format!(" {tag} ")) && task.contains(" healthy"),
            "{out}"
        );
    }
    // A service the stack lacks: one line, exit 64.
    let (code, _, err) = report(tb, dir, stack, &["status", "nosuch"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("no service \"nosuch\" in project"), "{err}");

    // history reads only the ledger: nothing recorded yet, exit 0.
    let (code, out, err) = report(tb, dir, stack, &["history", "--json"]);
    assert_eq!((code, out.trim()), (0, "[]"), "{err}");
}

/// `status` of the database stack after a backup and a drill: the newest verified backup
/// and the last drill, from the state directory, as on Compose.
pub fn shows_the_backup_and_the_drill(tb: &Testbed, dir: &Path, stack: &str) {
    let backups = dir.join("backups");
    let backups = backups.to_string_lossy();
    let args = ["status", "--json", "--backup-dir", &backups];
    let (code, out, err) = report(tb, dir, stack, &args);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["services"][0]["service"], "db", "{v}");
    assert_eq!(v["services"][0]["running"], 1, "{v}");
    assert_eq!(v["backups"][0]["target"], "shop", "{v}");
    assert_eq!(v["last_drill"]["passed"], true, "{v}");
}
