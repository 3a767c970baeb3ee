//! berth-core: everything two berth stages share, in exactly one place.
//!
//! - [`exit`]: the exit-code table and the error type that carries a code.
//! - [`doc`]: the deploy document that flows from stage to stage.
//! - [`cli`]: the settings every stage takes, and the `main` every binary calls.
//! - [`stage`]: read the document, pass failures through, record a stage, write it out.
//! - [`record`]: each stage's `detail`, one struct per stage.
//! - [`process`]: running child processes (argument vectors only, stderr captured).
//! - [`docker`] and [`compose`]: docker and `docker compose` commands.
//! - [`lock`]: one deploy at a time per project.
//! - [`ledger`]: the release ledger `releases.jsonl`.
//! - [`http`] and [`health`]: HTTP probing and waiting until targets are ready.
//! - [`fsutil`]: atomic file writes.
//! - [`human`]: durations and byte sizes for people, one way each.
//! - [`fault`]: a test hook that kills the program after a named step.
//! - [`swarm`]: Docker Swarm as the engine (`--engine swarm`).
//! - [`settings`]: the env file of an environment (data, never code) and the known settings.

pub mod backups;
pub mod cli;
pub mod compose;
pub mod doc;
pub mod docker;
pub mod exit;
pub mod fault;
pub mod fsutil;
pub mod health;
pub mod http;
pub mod human;
pub mod ledger;
pub mod lock;
pub mod msg;
pub mod ping;
pub mod process;
pub mod record;
pub mod scrub;
pub mod settings;
pub mod stack;
pub mod stage;
pub mod swarm;
pub mod time;

pub use exit::{ExitCode, Failure};
