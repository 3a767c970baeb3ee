//! PostgreSQL: where the server is (a compose service, or a URL), and the client programs
//! run against it: `pg_dump` for backups, `pg_restore` for verification and restore,
//! `psql` for catalog queries. With `--service`, every client runs inside the service's
//! container (`docker compose exec -T`), so client and server versions always match.
//! Passwords travel in `PGPASSWORD` in the child's environment, never in argv, never printed.

use crate::crypt::Source;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use berth_core::compose::Compose;
use berth_core::fail;
use berth_core::process::{last_lines, Cmd, Watch};

/// `postgres://user[:password]@host[:port]/db[?params]`, parsed by the `url` crate (the
/// WHATWG rules libpq's URIs follow): user and password percent-decoded, the password
/// kept apart and never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    /// The URL without its password (and without a fragment).
    url: url::Url,
    password: Option<String>,
    pub database: Option<String>,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

/// What stays as it is in a database name inside a URL path.
const DB_NAME: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// How to write what a URL cannot hold as it is.
const URL_HINT: &str =
    "in a user or password, write / as %2F, @ as %40, % as %25, : as %3A, # as %23, ? as %3F";

impl PgUrl {
    pub fn parse(text: &str) -> Result<PgUrl, String> {
        let mut url = url::Url::parse(text).map_err(|e| format!("{e} ({URL_HINT})"))?;
        if url.scheme() != "postgres" && url.scheme() != "postgresql" {
            return Err(format!(
                "scheme {:?}: expected postgres://user@host:port/database",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!(
                "no host: expected postgres://user@host:port/database ({URL_HINT})"
            ));
        }
        let password = url.password().map(decode);
        let db = decode(url.path().trim_start_matches('/'));
        url.set_password(None)
            .map_err(|_| "this URL cannot hold a user".to_string())?;
        url.set_fragment(None);
        Ok(PgUrl {
            url,
            password,
            database: (!db.is_empty()).then_some(db),
        })
    }

    /// The user, decoded.
    pub fn user(&self) -> Option<String> {
        Some(decode(self.url.username())).filter(|u| !u.is_empty())
    }

    /// The URL for database `db`, without the password.
    pub fn for_db(&self, db: &str) -> String {
        let mut u = self.url.clone();
        u.set_path(&format!(
            "/{}",
            percent_encoding::utf8_percent_encode(db, DB_NAME)
        ));
        u.to_string()
    }

    pub fn display(&self) -> String {
        self.for_db(self.database.as_deref().unwrap_or(""))
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }
}

/// Where the server is and how to reach it.
#[derive(Debug, Clone)]
pub enum Server {
    Service {
        compose: Compose,
        service: String,
        user: String,
    },
    /// A service of a Swarm stack: the clients run in a one-off container beside it
    /// ([`crate::swarm`]).
    Swarm {
        service: crate::swarm::Service,
        user: String,
    },
    Url {
        url: PgUrl,
    },
}

/// A server plus the secret to reach it.
#[derive(Clone)]
pub struct Conn {
    pub server: Server,
    password: Option<String>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Conn({:?}, password: {})",
            self.server,
            self.password.is_some()
        )
    }
}

/// The maintenance database scratch databases are created from.
const MAINTENANCE_DB: &str = "postgres";

/// User tables, one `schema.table` per line.
const TABLES_SQL: &str = "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') \
     AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' ORDER BY 1";

/// User tables with their row counts, `schema.table|rows` per line.
const COUNTS_SQL: &str = "SELECT format('%I.%I', n.nspname, c.relname) || '|' || \
     (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %s %I.%I', \
     CASE WHEN c.relkind = 'p' THEN '' ELSE 'ONLY' END, n.nspname, c.relname), \
     false, true, '')))[1]::text FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') \
     AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' ORDER BY 1";

/// `"name"` for SQL.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'text'` for SQL.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Parse `schema.table|rows` lines.
pub fn parse_counts(text: &str) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (t, n) = line
            .rsplit_once('|')
            .with_context(|| format!("unexpected row-count line {line:?}"))?;
        let n: u64 = n
            .trim()
            .parse()
            .with_context(|| format!("unexpected row count in {line:?}"))?;
        out.insert(t.to_string(), n);
    }
    Ok(out)
}

/// Differences between two table→rows maps, for people; empty when equal.
pub fn compare_counts(want: &BTreeMap<String, u64>, got: &BTreeMap<String, u64>) -> Vec<String> {
    let mut d = Vec::new();
    for (t, n) in want {
        match got.get(t) {
            None => d.push(format!("table {t} is missing")),
            Some(m) if m != n => d.push(format!("table {t} has {m} rows, expected {n}")),
            _ => {}
        }
    }
    for t in got.keys() {
        if !want.contains_key(t) {
            d.push(format!("unexpected table {t}"));
        }
    }
    d
}

impl Conn {
    /// A compose service: user from `--user` or the service's `POSTGRES_USER` (else
    /// `postgres`); with the service's `POSTGRES_DB`, if its environment sets one.
    pub fn service(
        compose: Compose,
        service: &str,
        user: Option<&str>,
        password: Option<String>,
    ) -> Result<(Conn, Option<String>)> {
        let cfg = compose.config().map_err(|e| fail!(Backup, "{e:#}"))?;
        let svc = cfg
            .pointer(&format!("/services/{service}"))
            .ok_or_else(|| {
                anyhow::Error::new(berth_core::Failure::usage(format!(
                    "--service {service}: no such service in the compose configuration"
                )))
            })?;
        let env = |k: &str| {
            svc.pointer(&format!("/environment/{k}"))
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let user = user
            .map(str::to_string)
            .or_else(|| env("POSTGRES_USER"))
            .unwrap_or_else(|| "postgres".into());
        let db = env("POSTGRES_DB");
        Ok((
            Conn {
                server: Server::Service {
                    compose,
                    service: service.to_string(),
                    user,
                },
                password,
            },
            db,
        ))
    }

    /// A service of the Swarm stack `stack`: user from `--user` or the service's
    /// `POSTGRES_USER` (else `postgres`), the password from `password` (file or
    /// `PGPASSWORD`), else the service's `POSTGRES_PASSWORD`; with its `POSTGRES_DB`.
    /// `start`: start the client container now (not for a dry run).
    pub fn swarm(
        stack: &str,
        service: &str,
        user: Option<&str>,
        password: Option<String>,
        start: bool,
    ) -> Result<(Conn, Option<String>)> {
        let mut svc = crate::swarm::Service::inspect(stack, service)?;
        let password = password.or_else(|| svc.env("POSTGRES_PASSWORD"));
        if password.is_none() && svc.env("POSTGRES_PASSWORD_FILE").is_some() {
            return Err(berth_core::Failure::usage(format!(
                "--service {service}: its password is in a Swarm secret (POSTGRES_PASSWORD_FILE), which berth cannot read back: pass --password-file FILE or PGPASSWORD"
            ))
            .into());
        }
        let user = user
            .map(str::to_string)
            .or_else(|| svc.env("POSTGRES_USER"))
            .unwrap_or_else(|| "postgres".into());
        let db = svc.env("POSTGRES_DB");
        if start {
            svc.start()?;
        }
        let server = Server::Swarm { service: svc, user };
        Ok((Conn { server, password }, db))
    }

    /// A URL; the password from the URL, else `password` (file or `PGPASSWORD`).
    pub fn url(url: PgUrl, password: Option<String>) -> Conn {
        let password = url.password().map(str::to_string).or(password);
        Conn {
            server: Server::Url { url },
            password,
        }
    }

    /// The database PostgreSQL's own tools would pick: the service's user.
    pub fn user_db(&self) -> Option<String> {
        match &self.server {
            Server::Service { user, .. } | Server::Swarm { user, .. } => Some(user.clone()),
            Server::Url { .. } => None,
        }
    }

    /// Where backups come from, without secrets (for manifests and plans).
    pub fn source(&self, db: &str) -> String {
        match &self.server {
            Server::Service {
                compose, service, ..
            } => format!("service {service} of compose project {}", compose.project),
            Server::Swarm { service, .. } => format!(
                "service {} of Swarm stack {}",
                service.service, service.stack
            ),
            Server::Url { url } => url.for_db(db),
        }
    }

    /// A client program connected to `db` (or to nothing, for `pg_restore -f`).
    pub fn client(&self, program: &str, db: Option<&str>) -> Cmd {
        match &self.server {
            Server::Service {
                compose,
                service,
                user,
            } => {
                let mut args: Vec<String> = vec!["exec".into(), "-T".into()];
                if self.password.is_some() {
                    // Name only: compose takes the value from its own environment.
                    args.extend(["-e".into(), "PGPASSWORD".into()]);
                }
                args.extend([service.clone(), program.into(), "-U".into(), user.clone()]);
                if let Some(db) = db {
                    args.extend(["-d".into(), db.into()]);
                }
                let mut c = compose.cmd(args).stage_timeout();
                if let Some(p) = &self.password {
                    c = c.env("PGPASSWORD", p);
                }
                c
            }
            Server::Swarm { service, user } => {
                let c = service.client(program, user, db, self.password.is_some());
                match &self.password {
                    Some(p) => c.stage_timeout().env("PGPASSWORD", p),
                    None => c.stage_timeout(),
                }
            }
            Server::Url { url } => {
                let mut c = Cmd::new(program)
                    .env("PGCONNECT_TIMEOUT", "10")
                    .stage_timeout();
                if let Some(db) = db {
                    c = c.arg(format!("--dbname={}", url.for_db(db)));
                }
                if let Some(p) = &self.password {
                    c = c.env("PGPASSWORD", p);
                }
                c
            }
        }
    }

    /// Run one SQL text with psql; rows as `-At` prints them.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        self.client("psql", Some(db))
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .read()
            .map_err(|e| fail!(Backup, "{}", pg_error(&e.to_string(), e.stderr())))
    }

    pub fn database_exists(&self, db: &str) -> Result<bool> {
        let out = self.psql(
            MAINTENANCE_DB,
            &format!("SELECT 1 FROM pg_database WHERE datname = {}", literal(db)),
        )?;
        Ok(out.trim() == "1")
    }

    pub fn counts(&self, db: &str) -> Result<BTreeMap<String, u64>> {
        parse_counts(&self.psql(db, COUNTS_SQL)?)
    }

    /// Feed a file to a client's stdin (pg_restore reads archives from stdin), so it
    /// runs wherever the client is: in the container or on the host.
    pub fn feed(&self, cmd: Cmd, src: &Source, what: &str) -> Result<()> {
        feed(cmd, src, what)
    }

    /// Read the whole archive: `pg_restore -f /dev/null` (`--list` alone passes
    /// truncated files).
    pub fn verify_read(&self, file: &Source) -> Result<()> {
        let cmd = self
            .client("pg_restore", None)
            .args(["--exit-on-error", "-f", "/dev/null"]);
        self.feed(cmd, file, "read verification failed")
    }

    /// Restore into a scratch database, count rows per table, drop it.
    pub fn restore_counts(&self, file: &Source) -> Result<BTreeMap<String, u64>> {
        let scratch = scratch_name("berth_verify");
        self.psql(
            MAINTENANCE_DB,
            &format!("CREATE DATABASE {}", ident(&scratch)),
        )?;
        let res = (|| {
            let cmd = self.client("pg_restore", Some(&scratch)).args([
                "--exit-on-error",
                "--no-owner",
                "--no-privileges",
            ]);
            self.feed(cmd, file, "restore verification failed")?;
            self.counts(&scratch)
        })();
        let dropped = self.drop_database(&scratch);
        let counts = res?;
        dropped?;
        Ok(counts)
    }

    pub fn drop_database(&self, db: &str) -> Result<()> {
        self.psql(
            MAINTENANCE_DB,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(db)),
        )
        .map(|_| ())
    }

    /// `OWNER .. TABLESPACE ..`: where `db` lives, for a new database to live there too;
    /// `None` when `db` does not exist.
    pub fn home_of(&self, db: &str) -> Result<Option<String>> {
        let out = self.psql(
            MAINTENANCE_DB,
            &format!(
                "SELECT format('OWNER %I TABLESPACE %I', pg_get_userbyid(d.datdba), t.spcname) \
                 FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace \
                 WHERE d.datname = {}",
                literal(db)
            ),
        )?;
        Ok(Some(out.trim().to_string()).filter(|h| !h.is_empty()))
    }

    /// `CREATE DATABASE name [OWNER .. TABLESPACE ..]`.
    pub fn create_database(&self, name: &str, home: Option<&str>) -> Result<()> {
        let home = home.map(|h| format!(" {h}")).unwrap_or_default();
        self.psql(
            MAINTENANCE_DB,
            &format!("CREATE DATABASE {}{home}", ident(name)),
        )
        .map(|_| ())
    }

    /// `pg_restore` the archive into the existing database `db`, owners kept.
    pub fn restore_into(&self, file: &Source, db: &str) -> Result<()> {
        let cmd = self
            .client("pg_restore", Some(db))
            .args(["--exit-on-error"]);
        self.feed(cmd, file, "restore failed")
    }

    /// The databases whose names start with `prefix`.
    pub fn databases_starting(&self, prefix: &str) -> Result<Vec<String>> {
        let out = self.psql(
            MAINTENANCE_DB,
            &format!(
                "SELECT datname FROM pg_database WHERE substr(datname, 1, {}) = {} ORDER BY 1",
                prefix.chars().count(),
                literal(prefix)
            ),
        )?;
        Ok(out
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Put `fresh` in the place of `live`: in one transaction, end the sessions on
    /// `live`, rename it to `before` (when it exists) and `fresh` to `live`. Either both
    /// renames happen or neither. Sessions terminated a moment ago may still be leaving:
    /// tried a few times.
    pub fn swap_in(&self, fresh: &str, live: &str, before: Option<&str>) -> Result<()> {
        let sql = match before {
            Some(before) => format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = {lit} AND pid <> pg_backend_pid(); \
                 ALTER DATABASE {live} RENAME TO {before}; ALTER DATABASE {fresh} RENAME TO {live}",
                lit = literal(live),
                live = ident(live),
                before = ident(before),
                fresh = ident(fresh)
            ),
            None => format!("ALTER DATABASE {} RENAME TO {}", ident(fresh), ident(live)),
        };
        let mut tries = 0;
        loop {
            match self.psql(MAINTENANCE_DB, &sql) {
                Ok(_) => return Ok(()),
                Err(e)
                    if tries < 25 && format!("{e:#}").contains("being accessed by other users") =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// `berth_verify_<pid>_<millis>`: unique, lowercase, short.
pub fn scratch_name(prefix: &str) -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 1_000_000_000)
        .unwrap_or(0);
    format!("{prefix}_{}_{ms}", std::process::id())
}

fn status_text(s: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "failed".into(),
    }
}

/// The useful part of a client's stderr: its last `error:`/`FATAL:` lines, else the tail.
pub fn pg_error(fallback: &str, stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let errs: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("error") || l.contains("FATAL") || l.contains("ERROR"))
        .collect();
    let text = if !errs.is_empty() {
        errs[errs.len().saturating_sub(2)..].join(" / ")
    } else {
        last_lines(stderr, 2)
    };
    if text.is_empty() {
        fallback.to_string()
    } else {
        text
    }
}

/// What a snapshot session learned before the dump.
#[derive(Debug, Clone)]
pub struct SourceFacts {
    pub server_version: String,
    pub tables: Vec<String>,
    /// Rows per table in the snapshot (only when asked: counting reads every table).
    pub counts: Option<BTreeMap<String, u64>>,
}

/// A read-only REPEATABLE READ transaction that exports its snapshot: `pg_dump
/// --snapshot` dumps exactly what this transaction sees, so the table list and row counts
/// taken here are those of the dump, whatever writes go on meanwhile.
pub struct Snapshot {
    reader: BufReader<duct::ReaderHandle>,
    watch: Watch,
    stdin: Option<std::io::PipeWriter>,
    command: String,
    pub id: String,
}

impl Snapshot {
    pub fn open(conn: &Conn, db: &str) -> Result<Snapshot> {
        let cmd = conn
            .client("psql", Some(db))
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"]);
        let (r, w) = std::io::pipe().context("creating a pipe")?;
        let (handle, watch) = cmd
            .reader(|e| e.stdin_file(r).stderr_capture())
            .map_err(|e| fail!(Backup, "{e}"))?;
        let mut s = Snapshot {
            reader: BufReader::new(handle),
            watch,
            stdin: Some(w),
            command: cmd.display(),
            id: String::new(),
        };
        s.send("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\nSELECT pg_export_snapshot();\n")?;
        s.id = s.line()?;
        Ok(s)
    }

    fn send(&mut self, sql: &str) -> Result<()> {
        let w = self.stdin.as_mut().expect("session open");
        if w.write_all(sql.as_bytes()).and_then(|_| w.flush()).is_err() {
            return Err(self.died());
        }
        Ok(())
    }

    fn line(&mut self) -> Result<String> {
        let mut l = String::new();
        match self.reader.read_line(&mut l) {
            Ok(0) | Err(_) => Err(self.died()),
            Ok(_) => Ok(l.trim_end_matches('\n').to_string()),
        }
    }

    /// psql ended early: wait for it and say why.
    fn died(&mut self) -> anyhow::Error {
        self.stdin.take();
        if let Err(e) = self.watch.finished() {
            return fail!(Backup, "cannot read the database: {e}");
        }
        let handle = self.reader.get_ref();
        let _ = handle.kill();
        let why = match handle.try_wait() {
            Ok(Some(out)) => pg_error(
                &status_text(&out.status),
                &String::from_utf8_lossy(&out.stderr),
            ),
            _ => "psql ended unexpectedly".into(),
        };
        fail!(Backup, "cannot read the database: {why}")
    }

    /// Lines of one query's result, up to a sentinel.
    fn rows(&mut self, sql: &str) -> Result<Vec<String>> {
        self.send(&format!("{sql};\nSELECT 'berth:end';\n"))?;
        let mut out = Vec::new();
        loop {
            let l = self.line()?;
            if l == "berth:end" {
                return Ok(out);
            }
            out.push(l);
        }
    }

    pub fn facts(&mut self, with_counts: bool) -> Result<SourceFacts> {
        let server_version = self
            .rows("SELECT current_setting('server_version')")?
            .join(" ");
        let tables = self.rows(TABLES_SQL)?;
        let counts = if with_counts {
            Some(parse_counts(&self.rows(COUNTS_SQL)?.join("\n"))?)
        } else {
            None
        };
        Ok(SourceFacts {
            server_version,
            tables,
            counts,
        })
    }

    /// End the transaction and wait for psql.
    pub fn close(mut self) -> Result<()> {
        self.send("COMMIT;\n")?;
        self.stdin.take();
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.reader, &mut rest);
        self.watch
            .finished()
            .map_err(|e| fail!(Backup, "cannot read the database: {e}"))?;
        match self.reader.get_ref().try_wait() {
            Ok(Some(out)) if out.status.success() => Ok(()),
            Ok(Some(out)) => Err(fail!(
                Backup,
                "`{}` {}",
                self.command,
                pg_error(
                    &status_text(&out.status),
                    &String::from_utf8_lossy(&out.stderr)
                )
            )),
            _ => Ok(()),
        }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if self.stdin.take().is_some() {
            let _ = self.reader.get_ref().kill();
        }
    }
}

/// Feed an archive's plaintext to a client's stdin (pg_restore reads archives from
/// stdin), so it runs wherever the client is: in the container or on the host.
pub fn feed(cmd: Cmd, src: &Source, what: &str) -> Result<()> {
    src.feed(&cmd, |out| {
        let out = out.map_err(|e| fail!(Backup, "{what}: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(fail!(
            Backup,
            "{what}: {}",
            pg_error(&status_text(&out.status), &stderr)
        ))
    })
}

/// `pg_dump -Fc --snapshot ID` for `db`.
pub fn dump_cmd(conn: &Conn, db: &str, snapshot: &str) -> Cmd {
    conn.client("pg_dump", Some(db))
        .arg("-Fc")
        .arg(format!("--snapshot={snapshot}"))
}

/// Read a password file (first line, trailing newline dropped).
pub fn read_password_file(p: &PathBuf) -> Result<String> {
    let text = std::fs::read_to_string(p).map_err(|e| {
        anyhow::Error::new(berth_core::Failure::usage(format!(
            "--password-file {}: {e}",
            p.display()
        )))
    })?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn urls_keep_the_password_apart() {
        let u = PgUrl::parse("postgres://app:s%3Acret@db.local:5433/shop?sslmode=disable").unwrap();
        assert_eq!(u.password(), Some("s:cret"));
        assert_eq!(u.database.as_deref(), Some("shop"));
        assert_eq!(
            u.display(),
            "postgres://app@db.local:5433/shop?sslmode=disable"
        );
        assert_eq!(
            u.for_db("scratch"),
            "postgres://app@db.local:5433/scratch?sslmode=disable"
        );
        assert!(!format!("{u:?}").contains("cret"));
        assert!(PgUrl::parse("mysql://x@y/z").is_err());
        assert!(PgUrl::parse("nonsense").is_err());
        assert!(PgUrl::parse("postgres:///db").is_err());
        // Passwords holding / @ % : percent-encoded; @ and % also as they are.
        for (url, pw) in [
            ("postgres://app:a%2Fb%40c%25d%3Ae@h:5432/prod", "a/b@c%d:e"),
            ("postgresql://app:p@ss@h/prod", "p@ss"),
            ("postgres://app:50%off@h/prod", "50%off"),
            ("postgres://app:x:y@[::1]:6432/prod", "x:y"),
        ] {
            let u = PgUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(u.password(), Some(pw), "{url}");
            assert_eq!(u.user().as_deref(), Some("app"), "{url}");
            assert_eq!(u.database.as_deref(), Some("prod"), "{url}");
            let shown = u.for_db("scratch");
            assert!(shown.ends_with("/scratch"), "{shown}");
            assert!(!shown.contains(pw), "{shown}");
            assert!(!format!("{u:?}").contains(pw), "{u:?}");
        }
        // A raw / cannot be told from the path: the error says how to write it.
        let e = PgUrl::parse("postgres://app:a/b@h/prod").unwrap_err();
        assert!(e.contains("%2F"), "{e}");
        // A user and a database name that need encoding travel encoded and come back.
        let u = PgUrl::parse("postgres://m%C3%BCller@h/my%20db").unwrap();
        assert_eq!(u.user().as_deref(), Some("müller"));
        assert_eq!(u.database.as_deref(), Some("my db"));
        assert_eq!(u.for_db("my db"), "postgres://m%C3%BCller@h/my%20db");
        assert_eq!(PgUrl::parse("postgres://h").unwrap().database, None);
        let c = Conn::url(u, None);
        let cmd = c.client("pg_dump", Some("shop"));
        assert!(!cmd.display().contains("cret"), "{}", cmd.display());
        assert!(!format!("{c:?}").contains("cret"));
    }

    #[test]
    fn service_clients_run_in_the_container() {
        let compose = Compose::new("shop", Path::new("/srv/shop"), &[]);
        let c = Conn {
            server: Server::Service {
                compose,
                service: "db".into(),
                user: "app".into(),
            },
            password: Some("hunter2".into()),
        };
        let cmd = dump_cmd(&c, "shop", "00000003-1");
        assert_eq!(
            cmd.display(),
            "docker compose --project-directory /srv/shop -p shop exec -T -e PGPASSWORD db \
             pg_dump -U app -d shop -Fc --snapshot=00000003-1"
        );
    }

    #[test]
    fn counts_parse_and_compare() {
        let a = parse_counts("public.items|3\npublic.\"odd|name\"|0\n").unwrap();
        assert_eq!(a.get("public.\"odd|name\""), Some(&0));
        let mut b = a.clone();
        b.insert("public.items".into(), 2);
        b.insert("public.extra".into(), 1);
        let d = compare_counts(&a, &b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(compare_counts(&a, &a).is_empty());
        assert!(parse_counts("garbage").is_err());
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
    }
}
