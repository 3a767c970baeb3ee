//! Which PostgreSQL server a command works on (`--service` or `--url`, `--database`,
//! `--user`, `--password-file`), and connecting to it.

use std::path::PathBuf;

use anyhow::Result;
use berth_core::cli::Context;
use berth_core::process::quote;
use berth_core::swarm::Engine;
use berth_core::Failure;
use clap::Args;

use crate::pg::{self, Conn, PgUrl};

/// A database named by a flag or the compose file, and by which.
#[derive(Debug, Clone)]
pub struct Named {
    pub db: String,
    /// `--database`, `--url`, or `the POSTGRES_DB of service db`.
    pub by: String,
}

/// Which PostgreSQL server.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Server")]
pub struct Server {
    /// The compose service running PostgreSQL; the clients run inside its container
    #[arg(
        long,
        env = "BERTH_BACKUP_SERVICE",
        value_name = "SERVICE",
        conflicts_with = "url"
    )]
    pub service: Option<String>,

    /// A server URL (postgres://user@host:port/db); the clients run on this host. In a
    /// user or password write / as %2F, @ as %40, % as %25; better, keep the password
    /// out of the URL (--password-file)
    #[arg(long, env = "BERTH_BACKUP_URL", value_name = "URL")]
    pub url: Option<String>,

    /// The database [default: the URL's, else the service's POSTGRES_DB, else its user]
    #[arg(long, env = "BERTH_BACKUP_DATABASE", value_name = "NAME")]
    pub database: Option<String>,

    /// The user, with --service [default: the service's POSTGRES_USER, else postgres]
    #[arg(long, env = "BERTH_BACKUP_USER", value_name = "NAME")]
    pub user: Option<String>,

    /// A file whose first line is the password [default: $PGPASSWORD]; never in argv
    #[arg(long, env = "BERTH_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

impl Server {
    pub fn given(&self) -> bool {
        self.service.is_some() || self.url.is_some()
    }

    pub(crate) fn check(&self) -> Result<(), Failure> {
        if let Some(p) = &self.password_file {
            if !p.is_file() {
                return Err(Failure::usage(format!(
                    "--password-file {}: no such file",
                    p.display()
                )));
            }
        }
        if let Some(u) = &self.url {
            PgUrl::parse(u).map_err(|e| Failure::usage(format!("--url: {e}")))?;
        }
        if self.url.is_some() && self.user.is_some() {
            return Err(Failure::usage(
                "--user goes with --service; put the user in --url",
            ));
        }
        Ok(())
    }

    /// Connect; with the database the flags name and what named it: `--database`, else
    /// the URL's, else the service's `POSTGRES_DB`. On Swarm, `--service` is a service
    /// of the stack (the project's name).
    pub fn connect_named(&self, ctx: &Context, engine: Engine) -> Result<(Conn, Option<Named>)> {
        let password = match &self.password_file {
            Some(p) => Some(pg::read_password_file(p)?),
            None => std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()),
        };
        let named = |db: Option<String>, by: String| db.map(|db| Named { db, by });
        let flag = named(self.database.clone(), "--database".into());
        if let Some(svc) = &self.service {
            let user = self.user.as_deref();
            let (conn, pg_db) = match engine {
                Engine::Compose => Conn::service(ctx.compose(), svc, user, password)?,
                Engine::Swarm => Conn::swarm(&ctx.project, svc, user, password, !ctx.dry_run)?,
            };
            let by = format!("the POSTGRES_DB of service {svc}");
            Ok((conn, flag.or_else(|| named(pg_db, by))))
        } else if let Some(u) = &self.url {
            let url = PgUrl::parse(u).map_err(|e| Failure::usage(format!("--url: {e}")))?;
            let from_url = named(url.database.clone(), "--url".into());
            Ok((Conn::url(url, password), flag.or(from_url)))
        } else {
            Err(Failure::usage("give --service SERVICE or --url URL").into())
        }
    }

    /// Connect: the server, and the database to use (as named, else the service's user,
    /// as PostgreSQL's own tools do).
    pub fn connect(&self, ctx: &Context, engine: Engine) -> Result<(Conn, String)> {
        let (conn, named) = self.connect_named(ctx, engine)?;
        let db = named
            .map(|n| n.db)
            .or_else(|| conn.user_db())
            .ok_or_else(|| Failure::usage("--url has no database: add /NAME or --database"))?;
        Ok((conn, db))
    }

    /// The flags that reach this server again (for printed restore commands).
    pub fn flags(&self) -> String {
        let mut s = String::new();
        if let Some(v) = &self.service {
            s.push_str(&format!(" --service {}", quote(v)));
        }
        if let Some(v) = &self.url {
            let shown = PgUrl::parse(v).map(|u| u.display()).unwrap_or_default();
            s.push_str(&format!(" --url {}", quote(&shown)));
        }
        if let Some(v) = &self.user {
            s.push_str(&format!(" --user {}", quote(v)));
        }
        s
    }
}
