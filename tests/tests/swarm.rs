//! berth on a real multi-node Docker Swarm (issue 11): ONE test bed of 1 manager + 2
//! workers + a registry (tests/src/swarm.rs) shared by every part, each part a function
//! in tests/tests/swarm/*.rs on a stack of its own. After the test bed and the stacks,
//! four lanes run at once (much of a part's time is waiting on Swarm, not CPU): lanes 1
//! and 2 the parts under load through nginx (0 failed requests each), lanes 3 and 4 the
//! parts that assert no timing. [`Parts`] prints each part's elapsed time and, when one fails,
//! names it; the test bed is removed all the same (its Drop).
//!
//! - lane 1, deploy: `scripts/deploy.sh --env swarm` (the whole pipeline) under load, 0
//!   failed: v1 -> v2, a tag never ready (3), a release sick after the switch rolled
//!   back (4), the document and ledger as on Compose;
//! - lane 2, swap: `berth-swap`/`berth-rollback --to --engine swarm` under load, 0 failed;
//! - lane 2, then on the swap part's stack, maintenance: `berth-swap maintenance on|off
//!   --engine swarm` and `scripts/deploy.sh` with `DEPLOY_MAINTENANCE=1` under keep-alive
//!   GET+POST clients, each switch seen by a request sent the instant it returns;
//! - lane 2, then, crash: a swap SIGKILLed after its switch to `web--next`
//!   (`BERTH_FAULT_KILL_AFTER=swarm-switch`), then a swap to a never-ready tag under load
//!   (and 5 s after it): 0 failed, nginx back on the stack's own tasks, `web--next` gone;
//!   killed there again, then `berth-swap --converge`: the same, 0 failed;
//! - lane 3, preflight: `berth-swap preflight` and `pull --engine swarm` on a stack whose
//!   tasks run on two nodes, the lint's exact lines, a worker refused, `berth-report status`;
//! - lane 3, migrate: berth-migrate reaching a database task on a worker;
//! - lane 3, pg: berth-backup's round trip with that database task;
//! - lane 4, worker (a stack of its own, no load): `web` and a worker in one
//!   `berth-swap` (the worker by Swarm's start-first update, between web's readiness and
//!   the switch), and a never-healthy worker tag rolled back by Swarm (exit 3);
//! - then, alone (a drain moves every stack's tasks), drain: a node drained under load
//!   through nginx, its task moves and nginx follows by Swarm's DNS, 0 failed.
//!
//! Every command that does not support Swarm refuses `--engine swarm` (exit 64) rather
//! than act on Compose (`every_command_takes_or_refuses_the_swarm_engine`, no test bed).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_e2e::swarm::Testbed;
use berth_e2e::{berth, require_images};

#[path = "swarm/crash.rs"]
mod crash;
#[path = "swarm/deploy.rs"]
mod deploy;
#[path = "swarm/drain.rs"]
mod drain;
#[path = "swarm/maintenance.rs"]
mod maintenance;
#[path = "swarm/migrate.rs"]
mod migrate;
#[path = "swarm/pg.rs"]
mod pg;
#[path = "swarm/preflight.rs"]
mod preflight;
#[path = "swarm/status.rs"]
mod status;
#[path = "swarm/swap.rs"]
mod swap;
#[path = "swarm/worker.rs"]
mod worker;

/// Runs parts in order on one test bed: each part's elapsed time printed; a panicking
/// part ends the run of its lane with its name in the message.
struct Parts {
    lane: &'static str,
    t0: Instant,
    done: Vec<(&'static str, Duration)>,
}

/// `BERTH_SWARM_PARTS=deploy,pg` runs only those parts (and the stacks they need), for
/// working on one part; unset (as in CI): every part.
fn wanted(part: &str) -> bool {
    match std::env::var("BERTH_SWARM_PARTS") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|p| p.trim() == part),
        _ => true,
    }
}

impl Parts {
    fn new(lane: &'static str, t0: Instant) -> Parts {
        Parts {
            lane,
            t0,
            done: Vec::new(),
        }
    }

    fn run<T>(&mut self, name: &'static str, part: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let lane = self.lane;
        eprintln!(
            "=== swarm part {name} ({lane}): start at {:?}",
            self.t0.elapsed()
        );
        match catch_unwind(AssertUnwindSafe(part)) {
            Ok(v) => {
                self.done.push((name, started.elapsed()));
                eprintln!(
                    "=== swarm part {name} ({lane}): ok in {:?} (at {:?})",
                    started.elapsed(),
                    self.t0.elapsed()
                );
                v
            }
            Err(panic) => {
                let why = panic_text(&*panic);
                eprintln!(
                    "=== swarm part {name} ({lane}): FAILED after {:?}; done before it: {:?}",
                    started.elapsed(),
                    self.done
                );
                resume_unwind(Box::new(format!("swarm part {name} failed: {why}")))
            }
        }
    }

    /// Run `part` if wanted (see [`wanted`]).
    fn maybe(&mut self, name: &'static str, part: impl FnOnce()) {
        if wanted(name) {
            self.run(name, part);
        } else {
            eprintln!("=== swarm part {name}: skipped (BERTH_SWARM_PARTS)");
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

#[test]
fn swarm_parts_on_one_three_node_test_bed() {
    require_images(&[
        "berth-demo/app:v1",
        "berth-demo/app:v2",
        "berth-demo/app:unready",
        "berth-demo/app:sick",
        "berth-demo/app:badmigrate",
        "berth-fixture/nginx:1",
        "berth-fixture/postgres:15",
        "berth-fixture/redis:7",
    ]);
    let t0 = Instant::now();
    let mut parts = Parts::new("main", t0);
    let tb = parts.run("up", Testbed::up);
    eprintln!("swarm test bed {} up", tb.name);
    // The stacks of the later parts start meanwhile (their images pushed once).
    let (good, db, mig, dep) = parts.run("stacks", || {
        let db_needed = wanted("migrate") || wanted("pg");
        (
            wanted("preflight").then(|| preflight::deploy(&tb)),
            db_needed.then(|| pg::deploy(&tb)),
            wanted("migrate").then(|| migrate::deploy(&tb)),
            wanted("deploy").then(|| deploy::start(&tb)),
        )
    });
    // Four lanes at once, each on stacks of its own: the two parts under load through
    // nginx (0 failed requests each), and the parts that assert no timing.
    type Lane<'a> = Box<dyn FnOnce() -> Vec<(&'static str, Duration)> + Send + 'a>;
    let lanes: Vec<Lane> = vec![
        Box::new(|| {
            let mut p = Parts::new("lane 1", t0);
            if let Some(dep) = &dep {
                p.maybe("deploy", || deploy::deploy_under_load(&tb, dep));
            }
            p.done
        }),
        Box::new(|| {
            let mut p = Parts::new("lane 2", t0);
            // maintenance, then crash, go on with the swap part's stack (at v1 after it).
            if wanted("swap") || wanted("maintenance") || wanted("crash") {
                let dir = p.run("swap", || swap::swap_and_rollback_under_load(&tb));
                p.maybe("maintenance", || {
                    maintenance::on_and_off_under_clients_then_deploy_with_maintenance(&tb, &dir)
                });
                p.maybe("crash", || {
                    crash::killed_after_the_switch_then_unready(&tb, &dir)
                });
            }
            p.done
        }),
        Box::new(|| {
            let mut p = Parts::new("lane 3", t0);
            if let Some(good) = &good {
                p.maybe("preflight", || {
                    preflight::preflight_pull_and_lint(&tb, good)
                });
            }
            if let (Some(db), Some(mig)) = (&db, &mig) {
                p.maybe("migrate", || {
                    migrate::migrations_reach_the_db_task_on_a_worker(&tb, db, mig)
                });
            }
            if let Some(db) = &db {
                p.maybe("pg", || {
                    pg::backup_and_restore_reach_the_db_task_on_a_worker(&tb, db)
                });
            }
            p.done
        }),
        // A fourth lane: the worker part waits on Swarm's health checks and update
        // monitor far more than it computes, and lanes 2 and 3 are already close to the
        // deploy lane's length.
        Box::new(|| {
            let mut p = Parts::new("lane 4", t0);
            p.maybe("worker", || worker::worker_swap_and_rollback(&tb));
            p.done
        }),
    ];
    let results: Vec<std::thread::Result<_>> = std::thread::scope(|s| {
        let running: Vec<_> = lanes.into_iter().map(|lane| s.spawn(lane)).collect();
        running.into_iter().map(|h| h.join()).collect()
    });
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|p| panic_text(&**p)))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // After the lanes: draining a node moves the tasks of every stack on it.
    parts.maybe("drain", || drain::tasks_follow_a_drained_node(&tb));
    let done: Vec<_> = results
        .into_iter()
        .filter_map(Result::ok)
        .flatten()
        .collect();
    eprintln!("swarm parts done in {:?}: {done:?}", t0.elapsed());
}

/// Every stage of scripts/deploy.sh (`berth-swap` and its `preflight`, `pull` and
/// `maintenance`, `berth-backup pg`, `berth-migrate`, `berth-healthwait --url`,
/// `berth-rollback`, the `berth-report` stage and `record-failure`) and `berth-backup
/// copy` take `--engine swarm` (as `--check-args`, which scripts/deploy.sh runs first:
/// nothing runs, nothing changes); `berth-backup`'s `verify`, `restore`, `drill`, `list`
/// and `prune`, `berth-report status` and `history` run on the test bed
/// (tests/tests/swarm/*.rs). What Swarm cannot do is refused with one line and exit 64:
/// `berth-healthwait --container` and maintenance through another proxy than nginx,
/// naming why.
#[test]
fn every_command_takes_or_refuses_the_swarm_engine() {
    let tmp = tempfile::tempdir().unwrap();
    // Every stage of scripts/deploy.sh takes it (a check of the arguments only here).
    let stages: &[(&str, &[&str])] = &[
        ("berth-swap", &["preflight", "--tag", "v1"]),
        (
            "berth-swap",
            &["preflight", "--tag", "v1", "--", "./check.sh"],
        ),
        ("berth-swap", &["pull", "--tag", "v1"]),
        ("berth-backup", &["pg", "--service", "db"]),
        ("berth-migrate", &["web", "--", "migrate"]),
        ("berth-swap", &["--tag", "v1", "web"]),
        ("berth-swap", &["maintenance", "on"]),
        ("berth-swap", &["maintenance", "off"]),
        (
            "berth-healthwait",
            &["--url", "http://127.0.0.1:1/", "--stage", "smoke"],
        ),
        ("berth-rollback", &[]),
        ("berth-report", &[]),
        (
            "berth-report",
            &["record-failure", "--stage", "smoke", "--exit", "4"],
        ),
        // Not a stage; no docker: the engine changes nothing.
        ("berth-backup", &["copy", "/etc/hostname"]),
    ];
    for (bin, args) in stages {
        let cut = args.iter().position(|a| *a == "--").unwrap_or(args.len());
        let out = berth(bin)
            .args(&args[..cut])
            .args(["--engine", "swarm", "--check-args", "--project-dir"])
            .arg(tmp.path())
            .args(&args[cut..])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{bin} {args:?}: {out:?}");
    }
    // berth-healthwait --container: a task may run on another node; refused, naming why.
    let out = berth("berth-healthwait")
        .args(["--container", "web", "--engine", "swarm", "--check-args"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with(
            "berth-healthwait: error: --engine swarm: --container is not supported on Swarm"
        ),
        "{out:?}"
    );
    // Maintenance mode on Swarm goes through nginx as a service of the stack: another
    // proxy is refused in the argument check, one line.
    for proxy in ["haproxy", "nginx-dns"] {
        let out = berth("berth-swap")
            .args(["maintenance", "on", "--proxy", proxy])
            .args(["--engine", "swarm", "--check-args", "--project-dir"])
            .arg(tmp.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!(
                "berth-swap: error: --engine swarm: maintenance mode goes through nginx as a \
                 service of the stack (--proxy compose), not --proxy {proxy}\n"
            )
        );
    }
}
