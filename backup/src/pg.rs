//! PostgreSQL: where the server is (a compose service, or a URL), and the client programs
//! run against it: `pg_dump` for backups, `pg_restore` for verification and restore,
//! `psql` for catalog queries. With `--service`, every client runs inside the service's
//! container (`docker compose exec -T`), so client and server versions always match.
//! Passwords travel in `PGPASSWORD` in the child's environment, never in argv, never printed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use berth_core::compose::Compose;
use berth_core::fail;
use berth_core::process::{last_lines, Cmd};

/// `postgres://user[:password]@host[:port]/db[?params]`, the password kept apart.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    scheme: String,
    user: Option<String>,
    password: Option<String>,
    host: String,
    pub database: Option<String>,
    query: String,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|c| {
            if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                (c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect()
}

impl PgUrl {
    pub fn parse(url: &str) -> Result<PgUrl, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| "expected postgres://user@host:port/database".to_string())?;
        if scheme != "postgres" && scheme != "postgresql" {
            return Err(format!("scheme {scheme:?}: expected postgres://"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, host) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((u, p)) => (Some(percent_decode(u)), Some(percent_decode(p))),
                None => (Some(percent_decode(u)), None),
            },
        };
        let (db, query) = match path.split_once('?') {
            Some((d, q)) => (d, q.to_string()),
            None => (path, String::new()),
        };
        let database = if db.is_empty() {
            None
        } else {
            Some(percent_decode(db))
        };
        Ok(PgUrl {
            scheme: scheme.to_string(),
            user,
            password,
            host: host.to_string(),
            database,
            query,
        })
    }

    /// The URL for database `db`, without the password.
    pub fn for_db(&self, db: &str) -> String {
        let user = self
            .user
            .as_deref()
            .map(|u| format!("{}@", percent_encode(u)))
            .unwrap_or_default();
        let q = if self.query.is_empty() {
            String::new()
        } else {
            format!("?{}", self.query)
        };
        format!(
            "{}://{user}{}/{}{q}",
            self.scheme,
            self.host,
            percent_encode(db)
        )
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
    /// `postgres`); the default database from its `POSTGRES_DB` (else the user).
    pub fn service(
        compose: Compose,
        service: &str,
        user: Option<&str>,
        password: Option<String>,
    ) -> Result<(Conn, String)> {
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
        let db = env("POSTGRES_DB").unwrap_or_else(|| user.clone());
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

    /// A URL; the password from the URL, else `password` (file or `PGPASSWORD`).
    pub fn url(url: PgUrl, password: Option<String>) -> Conn {
        let password = url.password().map(str::to_string).or(password);
        Conn {
            server: Server::Url { url },
            password,
        }
    }

    /// Where backups come from, without secrets (for manifests and plans).
    pub fn source(&self, db: &str) -> String {
        match &self.server {
            Server::Service {
                compose, service, ..
            } => format!("service {service} of compose project {}", compose.project),
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
                let mut c = compose.cmd(args);
                if let Some(p) = &self.password {
                    c = c.env("PGPASSWORD", p);
                }
                c
            }
            Server::Url { url } => {
                let mut c = Cmd::new(program).env("PGCONNECT_TIMEOUT", "10");
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
    pub fn feed(&self, cmd: Cmd, file: &Path, what: &str) -> Result<()> {
        let out = cmd
            .expression()
            .stdin_path(file)
            .stdout_null()
            .stderr_capture()
            .unchecked()
            .run()
            .map_err(|e| fail!(Backup, "{what}: could not run {}: {e}", cmd.display()))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(fail!(
            Backup,
            "{what}: {}",
            pg_error(&status_text(&out.status), &stderr)
        ))
    }

    /// Read the whole archive: `pg_restore -f /dev/null` (`--list` alone passes
    /// truncated files).
    pub fn verify_read(&self, file: &Path) -> Result<()> {
        let cmd = self
            .client("pg_restore", None)
            .args(["--exit-on-error", "-f", "/dev/null"]);
        self.feed(cmd, file, "read verification failed")
    }

    /// Restore into a scratch database, count rows per table, drop it.
    pub fn restore_counts(&self, file: &Path) -> Result<BTreeMap<String, u64>> {
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

    /// Replace database `db` with the archive: restore into a new database first (the
    /// live one is untouched if that fails), then swap names in one transaction, then
    /// drop the old one.
    pub fn restore_replace(&self, file: &Path, db: &str) -> Result<()> {
        let exists = self.database_exists(db)?;
        let owner = if exists {
            Some(self.psql(
                MAINTENANCE_DB,
                &format!(
                    "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = {}",
                    literal(db)
                ),
            )?)
        } else {
            None
        };
        let fresh = scratch_name("berth_restore");
        let owner_sql = owner
            .as_deref()
            .map(|o| format!(" OWNER {}", ident(o.trim())))
            .unwrap_or_default();
        self.psql(
            MAINTENANCE_DB,
            &format!("CREATE DATABASE {}{owner_sql}", ident(&fresh)),
        )?;
        let cmd = self
            .client("pg_restore", Some(&fresh))
            .args(["--exit-on-error"]);
        let restored = self.feed(cmd, file, "restore failed");
        if let Err(e) = restored {
            let _ = self.drop_database(&fresh);
            return Err(e);
        }
        if !exists {
            self.psql(
                MAINTENANCE_DB,
                &format!("ALTER DATABASE {} RENAME TO {}", ident(&fresh), ident(db)),
            )?;
            return Ok(());
        }
        let old = scratch_name("berth_replaced");
        let swap = format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = {lit} AND pid <> pg_backend_pid(); \
             ALTER DATABASE {db} RENAME TO {old}; ALTER DATABASE {fresh} RENAME TO {db}",
            lit = literal(db),
            db = ident(db),
            old = ident(&old),
            fresh = ident(&fresh)
        );
        // Sessions terminated a moment ago may still be leaving: try a few times.
        let mut last = None;
        for _ in 0..25 {
            match self.psql(MAINTENANCE_DB, &swap) {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    let text = format!("{e:#}");
                    last = Some(e);
                    if !text.contains("being accessed by other users") {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
            }
        }
        if let Some(e) = last {
            let _ = self.drop_database(&fresh);
            return Err(e.context(format!("swapping the restored database in for {db}")));
        }
        if let Err(e) = self.drop_database(&old) {
            berth_core::msg::warn(format!(
                "the replaced database was kept as {old}: dropping it failed: {e:#}"
            ));
        }
        Ok(())
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
        let handle = {
            let expr = cmd.expression().stdin_file(r).stderr_capture().unchecked();
            expr.reader()
                .map_err(|e| fail!(Backup, "could not run {}: {e}", cmd.display()))?
        };
        let mut s = Snapshot {
            reader: BufReader::new(handle),
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
