//! `migrate`: brings the database up to DEMO_SCHEMA in one transaction.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::config::{Config, Variant};
use crate::db::{db_message, DbParams};
use crate::log;

/// One schema version: what it does (for the output) and its SQL.
#[derive(Debug)]
pub struct Migration {
    pub version: i32,
    pub summary: &'static str,
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        summary: "create tables schema_version and items, add 3 items",
        sql: "CREATE TABLE schema_version (version int NOT NULL);
              CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL);
              INSERT INTO items (name) VALUES ('anchor'), ('buoy'), ('cleat');",
    },
    Migration {
        version: 2,
        summary: "add column items.note",
        sql: "ALTER TABLE items ADD COLUMN note text;",
    },
];

/// The migrations to run to go from `current` to `target`; an error if one is unknown.
pub fn plan(current: i32, target: i32) -> Result<Vec<&'static Migration>> {
    let latest = MIGRATIONS.last().map_or(0, |m| m.version);
    if target > latest {
        bail!("DEMO_SCHEMA={target} but this build only knows migrations up to {latest}");
    }
    Ok(MIGRATIONS
        .iter()
        .filter(|m| m.version > current && m.version <= target)
        .collect())
}

/// Serializes concurrent `migrate` runs (pg_advisory_xact_lock key).
const LOCK_KEY: i64 = 0x6265_7274_6864; // "berthd"

fn say(line: impl std::fmt::Display) {
    println!("migrate: {line}");
}

pub fn run(cfg: &Config) -> Result<ExitCode> {
    let params = DbParams::from_config(cfg)?.context("migrate needs DATABASE_URL")?;
    say(format_args!(
        "version {} wants schema {} ({})",
        cfg.version,
        cfg.schema,
        params.describe()
    ));
    // 30 s: the database may be starting, and on Swarm a fresh one-off container on the
    // stack's overlay network was seen waiting more than 10 s for the embedded DNS to
    // list the database's task (CI, 2026-12-06).
    let mut client = params.connect_retrying(Duration::from_secs(30), |e| {
        log::warn(format!("{e:#} (retrying)"))
    })?;
    let sql_err =
        |what: &'static str| move |e: postgres::Error| anyhow!("{what}: {}", db_message(&e));

    let mut tx = client.transaction().map_err(sql_err("BEGIN"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .map_err(sql_err("taking the migration lock"))?;
    let has_table: bool = tx
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .map_err(sql_err("looking for schema_version"))?
        .get(0);
    let current: i32 = if has_table {
        tx.query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
            .map_err(sql_err("reading schema_version"))?
            .get(0)
    } else {
        0
    };
    say(format_args!("database is at schema {current}"));
    let steps = plan(current, cfg.schema)?;

    if cfg.variant == Variant::BadMigrate {
        for m in &steps {
            say(format_args!("applying {}: {}", m.version, m.summary));
            tx.batch_execute(m.sql)
                .map_err(sql_err("applying a migration"))?;
        }
        say("applying the final step");
        // A real failing statement, so the rollback is the database's own.
        let failure = tx
            .batch_execute("SELECT no_such_column FROM items")
            .map_err(sql_err("final step"))
            .err()
            .unwrap_or_else(|| anyhow!("final step unexpectedly succeeded"));
        drop(tx); // rolls back
        return Err(failure.context(format!(
            "DEMO_VARIANT=badmigrate: migration to schema {} fails on purpose; \
             rolled back, database still at schema {current}",
            cfg.schema
        )));
    }

    if steps.is_empty() {
        tx.commit().map_err(sql_err("COMMIT"))?;
        if current > cfg.schema {
            say(format_args!(
                "nothing to do: database schema {current} is newer than {} (additive, compatible)",
                cfg.schema
            ));
        } else {
            say(format_args!("nothing to do: already at schema {current}"));
        }
        return Ok(ExitCode::SUCCESS);
    }
    for m in &steps {
        say(format_args!("applying {}: {}", m.version, m.summary));
        tx.batch_execute(m.sql)
            .map_err(sql_err("applying a migration"))
            .with_context(|| format!("migration {}", m.version))?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&m.version],
        )
        .map_err(sql_err("recording the version"))?;
    }
    tx.commit().map_err(sql_err("COMMIT"))?;
    say(format_args!(
        "done: schema {current} -> {} in one transaction",
        cfg.schema
    ));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(current: i32, target: i32) -> Vec<i32> {
        plan(current, target)
            .unwrap()
            .iter()
            .map(|m| m.version)
            .collect()
    }

    #[test]
    fn plans_only_the_missing_steps() {
        assert_eq!(versions(0, 1), [1]);
        assert_eq!(versions(0, 2), [1, 2]);
        assert_eq!(versions(1, 2), [2]);
        assert!(versions(2, 2).is_empty());
        assert!(versions(2, 1).is_empty(), "a newer database is left alone");
        assert!(versions(0, 0).is_empty());
    }

    #[test]
    fn unknown_target_is_an_error() {
        assert!(plan(0, 3)
            .unwrap_err()
            .to_string()
            .contains("only knows migrations up to 2"));
    }

    #[test]
    fn migrations_are_numbered_one_by_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1);
        }
    }
}
