//! Docker Swarm as berth's engine (`--engine swarm`, `BERTH_ENGINE=swarm`): berth runs on a
//! Swarm manager and talks to the stack by its name (the project name).
//!
//! So far `berth-swap` (the swap, `preflight`, `pull` and `maintenance`), `berth-rollback`,
//! `berth-backup pg`, `verify`, `restore` (of pg backups), `drill`, `list` and `prune`,
//! `berth-migrate`, `berth-healthwait` (`--url`, `--tcp`), the `berth-report` stage,
//! `status`, `history` and `record-failure` support Swarm (every stage of
//! `scripts/deploy.sh`, `DEPLOY_MAINTENANCE=1` included); every other
//! command refuses `--engine swarm` with one line and exit 64 ([`refuse`]) rather than
//! act on Compose.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Result;
use serde::Deserialize;

use crate::exit::Failure;
use crate::{docker, fail};

/// Which engine runs the project's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Engine {
    /// Docker Compose on this host
    #[default]
    Compose,
    /// Docker Swarm: berth runs on a manager, the project is a stack
    Swarm,
}

/// The commands that work with `--engine swarm` so far.
pub const SUPPORTED: &str = "berth-swap (the swap, preflight, pull and maintenance), berth-rollback, berth-backup pg, verify, restore (of pg backups), drill, list, prune and copy, berth-migrate, berth-healthwait (--url, --tcp), berth-report (the stage), status, history and record-failure";

/// Commands that resolve their settings the usual way and handle Swarm themselves
/// (the others that support it call [`crate::cli::CommonArgs::resolve_any_engine`]).
const HANDLE_SWARM: &[&str] = &[
    "berth-swap",
    "berth-swap maintenance",
    "berth-rollback",
    "berth-backup pg",
    "berth-backup verify",
    "berth-backup restore",
    "berth-backup drill",
    "berth-backup list",
    "berth-backup prune",
    // Reads the backup directory and runs the off-site tool: no docker.
    "berth-backup copy",
    "berth-migrate",
    // --url and --tcp need no engine; --container is refused on Swarm by healthwait.
    "berth-healthwait",
    // The report stage reads the document and writes the ledger: no docker.
    "berth-report",
    "berth-report status",
    "berth-report history",
    "berth-report record-failure",
];

static COMMAND: OnceLock<String> = OnceLock::new();

/// Name the command being run (program and subcommand, e.g. `berth-swap pull`), for
/// [`refuse`]; set once by `main`.
pub fn set_command(name: String) {
    let _ = COMMAND.set(name);
}

/// A usage error (64) for a command that does not support Swarm yet.
pub fn refuse(engine: Engine) -> Result<(), Failure> {
    match engine {
        Engine::Compose => Ok(()),
        Engine::Swarm => {
            let name = COMMAND
                .get()
                .map(String::as_str)
                .unwrap_or_else(|| crate::msg::program());
            if HANDLE_SWARM.contains(&name) {
                return Ok(());
            }
            Err(Failure::usage(format!(
                "--engine swarm: {name} does not support Docker Swarm yet (so far only {SUPPORTED} do); use --engine compose"
            )))
        }
    }
}

/// The Swarm part of `docker info`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "PascalCase")]
pub struct NodeState {
    /// `inactive`, `pending`, `active`, `error`, `locked`.
    #[serde(default)]
    pub local_node_state: String,
    /// Whether this node is a manager that can take commands.
    #[serde(default)]
    pub control_available: bool,
    #[serde(rename = "NodeID", default)]
    pub node_id: String,
    #[serde(default)]
    pub nodes: u64,
    #[serde(default)]
    pub managers: u64,
}

/// This node's Swarm state, from `docker info`.
pub fn node_state() -> Result<NodeState> {
    let out = docker::docker()
        .args(["info", "--format", "{{json .Swarm}}"])
        .read()
        .map_err(|e| {
            let why = crate::process::last_lines(e.stderr(), 1);
            fail!(
                Preflight,
                "docker daemon is not reachable: {}",
                if why.is_empty() { e.to_string() } else { why }
            )
        })?;
    serde_json::from_str(out.trim())
        .map_err(|e| fail!(Preflight, "docker info printed no Swarm state: {e}"))
}

/// Fail with exit 1 unless this node is an active Swarm manager.
pub fn ensure_manager(state: &NodeState) -> Result<()> {
    if state.local_node_state != "active" {
        let what = if state.local_node_state.is_empty() {
            "unknown"
        } else {
            &state.local_node_state
        };
        return Err(fail!(
            Preflight,
            "this docker node is not in a swarm (state {what}): run berth on a Swarm manager (docker swarm init, or join as a manager)"
        ));
    }
    if !state.control_available {
        return Err(fail!(
            Preflight,
            "this docker node is a Swarm worker, not a manager: run berth on a manager (docker node ls there lists the managers)"
        ));
    }
    Ok(())
}

/// Whether this host's kernel has IPVS (`ip_vs`), without which Swarm's routing mesh
/// and service VIPs do not route. berth runs on a manager: its kernel is the node's.
pub fn host_has_ipvs() -> bool {
    Path::new("/proc/net/ip_vs").exists() || Path::new("/sys/module/ip_vs").exists()
}

/// The compose files of a project as `docker stack deploy -c` must be told them: the
/// given ones, else the first of compose's default names in the project directory (the
/// stack does not merge `compose.override.yaml` as compose does).
pub fn stack_files(project_dir: &Path, files: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if !files.is_empty() {
        return Ok(files.to_vec());
    }
    DEFAULT_FILES
        .iter()
        .map(|f| project_dir.join(f))
        .find(|p| p.is_file())
        .map(|p| vec![p])
        .ok_or_else(|| {
            fail!(
                Preflight,
                "no compose file in {} (looked for {}): pass -f FILE",
                project_dir.display(),
                DEFAULT_FILES.join(", ")
            )
        })
}

/// Compose's default file names, in its order of preference.
pub const DEFAULT_FILES: &[&str] = &[
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// Compose's override files, which compose merges and `docker stack deploy` does not.
pub const OVERRIDE_FILES: &[&str] = &[
    "compose.override.yaml",
    "compose.override.yml",
    "docker-compose.override.yaml",
    "docker-compose.override.yml",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_worker_and_outside() {
        let manager: NodeState = serde_json::from_str(
            r#"{"LocalNodeState":"active","ControlAvailable":true,"NodeID":"x","Nodes":3,"Managers":1}"#,
        )
        .unwrap();
        assert!(ensure_manager(&manager).is_ok());
        let worker = NodeState {
            control_available: false,
            ..manager.clone()
        };
        let e = ensure_manager(&worker).unwrap_err();
        assert!(
            format!("{e}").contains("a Swarm worker, not a manager"),
            "{e}"
        );
        let outside: NodeState =
            serde_json::from_str(r#"{"LocalNodeState":"inactive","ControlAvailable":false}"#)
                .unwrap();
        let e = ensure_manager(&outside).unwrap_err();
        assert!(
            format!("{e}").contains("not in a swarm (state inactive)"),
            "{e}"
        );
    }

    #[test]
    fn refusal_names_the_command() {
        assert!(refuse(Engine::Compose).is_ok());
        let e = refuse(Engine::Swarm).unwrap_err();
        assert_eq!(e.code, crate::ExitCode::Usage);
        assert!(e.message.starts_with("--engine swarm: "), "{}", e.message);
        assert!(e.message.contains(SUPPORTED), "{}", e.message);
    }
}
