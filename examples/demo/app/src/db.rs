//! PostgreSQL: connection settings from DATABASE_URL, one shared connection for `serve`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use postgres::error::SqlState;
use postgres::{Client, NoTls};

use crate::config::Config;
use crate::url::{redact, Url};

/// What `connect_config` needs, parsed from DATABASE_URL (+ DEMO_DB_PASSWORD_FILE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbParams {
    pub user: String,
    pub password: Option<String>,
    pub host: String,
    pub port: u16,
    pub dbname: String,
}

impl DbParams {
    /// `password_file` (if given) wins over a password in the URL.
    pub fn parse(url: &str, password_file_contents: Option<&str>) -> Result<DbParams> {
        let u = Url::parse(url).context("DATABASE_URL")?;
        if u.scheme != "postgres" && u.scheme != "postgresql" {
            bail!("DATABASE_URL {:?} must start with postgres://", redact(url));
        }
        let user = u.user.clone().unwrap_or_else(|| "postgres".to_string());
        let password = match password_file_contents {
            Some(p) => Some(p.trim_end_matches(['\r', '\n']).to_string()),
            None => u.password.clone(),
        };
        let dbname = if u.path.is_empty() {
            user.clone()
        } else {
            u.path.clone()
        };
        Ok(DbParams {
            user,
            password,
            host: u.host,
            port: u.port.unwrap_or(5432),
            dbname,
        })
    }

    pub fn from_config(cfg: &Config) -> Result<Option<DbParams>> {
        let Some(url) = &cfg.database_url else {
            return Ok(None);
        };
        let password = match &cfg.db_password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading DEMO_DB_PASSWORD_FILE {}", path.display()))?,
            ),
            None => None,
        };
        DbParams::parse(url, password.as_deref()).map(Some)
    }

    pub fn pg_config(&self) -> postgres::Config {
        let mut c = postgres::Config::new();
        c.user(&self.user)
            .host(&self.host)
            .port(self.port)
            .dbname(&self.dbname)
            .application_name("berth-demo-app")
            .connect_timeout(Duration::from_secs(2))
            // A database that stops answering drops the connection instead of hanging forever.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5));
        #[cfg(target_os = "linux")]
        c.tcp_user_timeout(Duration::from_secs(5));
        if let Some(p) = &self.password {
            c.password(p);
        }
        c
    }

    pub fn describe(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }

    pub fn connect(&self) -> Result<Client> {
        self.pg_config()
            .connect(NoTls)
            .with_context(|| format!("connecting to postgres {}", self.describe()))
    }

    /// Retries the connection until `within` has passed (the database may be starting).
    pub fn connect_retrying(
        &self,
        within: Duration,
        mut on_retry: impl FnMut(&anyhow::Error),
    ) -> Result<Client> {
        let start = Instant::now();
        loop {
            match self.connect() {
                Ok(c) => return Ok(c),
                Err(e) if start.elapsed() < within => {
                    on_retry(&e);
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(e).context(format!("gave up after {:.0?}", start.elapsed())),
            }
        }
    }
}

/// One connection shared by the request threads, reconnected after a connection error.
pub struct Db {
    params: DbParams,
    client: Mutex<Option<Client>>,
}

impl Db {
    pub fn new(params: DbParams) -> Db {
        Db {
            params,
            client: Mutex::new(None),
        }
    }

    /// Runs `f` on the connection, connecting first if needed. Errors are one-line messages.
    pub fn with_client<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, DbError> {
        let mut guard = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = None;
            let client = self
                .params
                .connect()
                .map_err(|e| DbError::Connect(format!("{e:#}")))?;
            *guard = Some(client);
        }
        let client = guard.as_mut().expect("connected above");
        match f(client) {
            Ok(v) => Ok(v),
            Err(e) => {
                // An error from the server (bad SQL, missing table) leaves the connection usable;
                // anything else (I/O, closed) means reconnect next time.
                if e.code().is_none() || client.is_closed() {
                    *guard = None;
                }
                Err(DbError::Query {
                    missing_table: e.code() == Some(&SqlState::UNDEFINED_TABLE),
                    message: db_message(&e),
                })
            }
        }
    }

    /// The database's schema version (`max(version)` of `schema_version`), `None` if empty.
    pub fn schema_version(&self) -> Result<Option<i32>, DbError> {
        self.with_client(|c| {
            c.query_one("SELECT max(version) FROM schema_version", &[])
                .map(|row| row.get(0))
        })
    }

    pub fn item_count(&self) -> Result<i64, DbError> {
        self.with_client(|c| {
            c.query_one("SELECT count(*) FROM items", &[])
                .map(|row| row.get(0))
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbError {
    Connect(String),
    Query {
        missing_table: bool,
        message: String,
    },
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbError::Connect(m) => write!(f, "database unreachable: {m}"),
            DbError::Query { message, .. } => write!(f, "database query failed: {message}"),
        }
    }
}

/// The server's message when there is one (postgres::Error's Display is just "db error").
pub fn db_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            msg
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_database_url() {
        let p = DbParams::parse("postgres://demo:pw@db:5432/demo", None).unwrap();
        assert_eq!(
            p,
            DbParams {
                user: "demo".into(),
                password: Some("pw".into()),
                host: "db".into(),
                port: 5432,
                dbname: "demo".into()
            }
        );
        assert_eq!(p.describe(), "demo@db:5432/demo");
    }

    #[test]
    fn defaults_port_user_and_dbname() {
        let p = DbParams::parse("postgresql://db", None).unwrap();
        assert_eq!(
            (p.user.as_str(), p.port, p.dbname.as_str()),
            ("postgres", 5432, "postgres")
        );
        assert_eq!(p.password, None);
        let p = DbParams::parse("postgres://app@db", None).unwrap();
        assert_eq!(p.dbname, "app");
    }

    #[test]
    fn password_file_wins_and_loses_its_trailing_newline() {
        let p = DbParams::parse("postgres://demo:url-pw@db/demo", Some("file-pw\n")).unwrap();
        assert_eq!(p.password.as_deref(), Some("file-pw"));
        let p = DbParams::parse("postgres://demo@db/demo", Some("  spaced pw \r\n")).unwrap();
        assert_eq!(p.password.as_deref(), Some("  spaced pw "));
    }

    #[test]
    fn rejects_other_schemes_without_leaking_the_password() {
        let e = DbParams::parse("mysql://u:topsecret@db/x", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("postgres://"), "{e}");
        assert!(!e.contains("topsecret"), "{e}");
    }

    #[test]
    fn reads_the_password_file_named_in_the_config() {
        let dir = std::env::temp_dir().join(format!("berth-demo-app-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let cfg = Config::from_lookup(|k| match k {
            "DATABASE_URL" => Some("postgres://demo@db/demo".into()),
            "DEMO_DB_PASSWORD_FILE" => Some(file.display().to_string()),
            _ => None,
        })
        .unwrap();
        let p = DbParams::from_config(&cfg).unwrap().unwrap();
        assert_eq!(p.password.as_deref(), Some("from-file"));
        std::fs::remove_file(&file).unwrap();
        let e = DbParams::from_config(&cfg).unwrap_err().to_string();
        assert!(e.contains("DEMO_DB_PASSWORD_FILE"), "{e}");
        std::fs::remove_dir(&dir).unwrap();
        let none = Config::from_lookup(|_| None).unwrap();
        assert_eq!(DbParams::from_config(&none).unwrap(), None);
    }
}
