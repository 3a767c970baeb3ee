//! Fault injection, a **test hook**: `BERTH_FAULT_KILL_AFTER=POINT` makes the program
//! SIGKILL itself right after the named step, as a power cut or an OOM kill would, so the
//! end-to-end tests can prove that the next run converges from any point
//! (`tests/tests/crash.rs` iterates [`SWAP_POINTS`]).
//!
//! `POINT` is a name from [`SWAP_POINTS`] (or [`SWARM_POINTS`]), optionally `NAME:N` for its N-th occurrence in
//! one run (`reload:2` is the second `nginx -s reload`). Unset (always, outside tests),
//! [`point`] does nothing. The points are the steps of a swap (and so of a rollback, which
//! swaps back through the same engine); convergence reuses some of those steps, so a test
//! arms a point only in the run it means to kill.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// The variable that arms a point.
pub const VAR: &str = "BERTH_FAULT_KILL_AFTER";

/// Every point of a swap, in the order a swap passes them: each is right after an
/// external step (a docker, compose or nginx command, or a file nginx or compose reads).
pub const SWAP_POINTS: &[&str] = &[
    // `docker compose up -d --scale` started the new containers beside the old ones
    "start",
    // the readiness probes of the new containers are running (first change of state)
    "probe",
    // every new container answered its readiness probe
    "ready",
    // the upstream file names the new containers; nginx has not read it
    "upstream",
    // `nginx -t` accepted it
    "nginx-test",
    // `nginx -s reload`: nginx sends traffic to the new containers (journal: started)
    "reload",
    // the drain pause is over (journal: switched)
    "drain",
    // `docker stop` of the old containers
    "stop",
    // `docker rm` of the old containers
    "rm",
    // the upstream file names the service again (restart-proof), before its reload
    "upstream:2",
    // that reload
    "reload:2",
    // `.env` records the new tag; the journal is still there
    "env",
];

/// The points of a swap on Swarm (`berth-swap --engine swarm`, `swap/src/swarm/swap.rs`)
/// after its own steps; its switches also pass the nginx points of [`SWAP_POINTS`]
/// (`upstream`, `nginx-test`, `reload`, each `:2` for the switch back). Swarm keeps no
/// journal: the next swap starts from what Swarm and berth's nginx file say (docs/swarm.md).
pub const SWARM_POINTS: &[&str] = &[
    // `docker stack deploy` created `SERVICE--next` beside the old tasks
    "swarm-next",
    // nginx sends to `tasks.STACK_SERVICE--next`, drained
    "swarm-switch",
    // `docker service update --image` of the stack's own service converged (no traffic)
    "swarm-update",
    // nginx back on `tasks.STACK_SERVICE`, drained; `SERVICE--next` still there
    "swarm-back",
    // `docker service rm` of `SERVICE--next`; the pin file not yet written
    "swarm-rm",
];

static SEEN: Mutex<Vec<(String, u32)>> = Mutex::new(Vec::new());
static KILLS: AtomicU32 = AtomicU32::new(0);

/// Called right after the step named `name`: SIGKILL this process when
/// `BERTH_FAULT_KILL_AFTER` names this occurrence of it.
pub fn point(name: &str) {
    let Some(want) = std::env::var_os(VAR) else {
        return;
    };
    let want = want.to_string_lossy().to_string();
    let n = {
        let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        match seen.iter_mut().find(|(k, _)| k == name) {
            Some((_, c)) => {
                *c += 1;
                *c
            }
            None => {
                seen.push((name.to_string(), 1));
                1
            }
        }
    };
    if matches(&want, name, n) && KILLS.fetch_add(1, Ordering::SeqCst) == 0 {
        crate::msg::warn(format!(
            "{VAR}={want}: killing myself (SIGKILL) after {name}"
        ));
        // SAFETY: kill(2) on our own pid with a constant signal has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Whether `want` (`NAME` or `NAME:N`) names occurrence `n` of `name`.
fn matches(want: &str, name: &str, n: u32) -> bool {
    match want.rsplit_once(':') {
        Some((w, k)) => w == name && k.parse() == Ok(n),
        None => want == name && n == 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_occurrences() {
        assert!(matches("reload", "reload", 1));
        assert!(!matches("reload", "reload", 2));
        assert!(matches("reload:2", "reload", 2));
        assert!(!matches("reload:2", "reload", 1));
        assert!(!matches("reload", "nginx-test", 1));
        assert!(!matches("reload:x", "reload", 1));
        // Every listed point parses to a name and an occurrence.
        for p in SWAP_POINTS.iter().chain(SWARM_POINTS) {
            let (name, n) = p.split_once(':').unwrap_or((p, "1"));
            assert!(matches(p, name, n.parse().unwrap()), "{p}");
        }
    }

    #[test]
    fn unset_does_nothing() {
        // The test process never has the variable (cargo test runs us without it).
        if std::env::var_os(VAR).is_none() {
            point("reload");
        }
    }
}
