//! Configuration from the environment (the image sets DEMO_VERSION, DEMO_SCHEMA, DEMO_VARIANT).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// How this build misbehaves, so that berth's failure paths can be tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Behaves.
    Ok,
    /// Logs an error and exits 1 as soon as `serve` or `worker` starts.
    Broken,
    /// Serves, `/healthz` is 200, `/readyz` is always 503.
    Unready,
    /// Ready, but `/smoke` answers 500.
    Sick,
    /// `migrate` fails (rolled back, schema unchanged).
    BadMigrate,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Ok => "ok",
            Variant::Broken => "broken",
            Variant::Unready => "unready",
            Variant::Sick => "sick",
            Variant::BadMigrate => "badmigrate",
        }
    }
}

impl FromStr for Variant {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Variant> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "" | "ok" => Variant::Ok,
            "broken" => Variant::Broken,
            "unready" => Variant::Unready,
            "sick" => Variant::Sick,
            "badmigrate" => Variant::BadMigrate,
            other => {
                bail!("DEMO_VARIANT {other:?} is not one of ok, broken, unready, sick, badmigrate")
            }
        })
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// DEMO_VERSION, e.g. `v1`; `dev` when unset.
    pub version: String,
    /// DEMO_SCHEMA: the schema version this build needs (and `migrate` applies up to).
    pub schema: i32,
    pub variant: Variant,
    /// DEMO_LISTEN, default `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// DEMO_BOOT_DELAY_MS: sleep before binding the port.
    pub boot_delay: Duration,
    /// DATABASE_URL (postgres://user:pass@host:port/db).
    pub database_url: Option<String>,
    /// DEMO_DB_PASSWORD_FILE: the password, when it is not in DATABASE_URL.
    pub db_password_file: Option<PathBuf>,
    /// REDIS_URL, default `redis://redis:6379`.
    pub redis_url: String,
    /// DEMO_JOB_MS: how long the worker spends on one job.
    pub job_time: Duration,
}

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_REDIS_URL: &str = "redis://redis:6379";

impl Config {
    pub fn from_env() -> Result<Config> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the settings through `get`; empty values count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let schema = match get("DEMO_SCHEMA") {
            Some(s) => s
                .parse::<i32>()
                .ok()
                .filter(|n| *n >= 0)
                .with_context(|| format!("DEMO_SCHEMA {s:?} is not a non-negative integer"))?,
            None => 1,
        };
        let listen = get("DEMO_LISTEN").unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen = listen.parse::<SocketAddr>().with_context(|| {
            format!("DEMO_LISTEN {listen:?} is not an address like 0.0.0.0:8080")
        })?;
        Ok(Config {
            version: get("DEMO_VERSION").unwrap_or_else(|| "dev".to_string()),
            schema,
            variant: get("DEMO_VARIANT").as_deref().unwrap_or("ok").parse()?,
            listen,
            boot_delay: Duration::from_millis(millis(&get, "DEMO_BOOT_DELAY_MS", 0)?),
            database_url: get("DATABASE_URL"),
            db_password_file: get("DEMO_DB_PASSWORD_FILE").map(PathBuf::from),
            redis_url: get("REDIS_URL").unwrap_or_else(|| DEFAULT_REDIS_URL.to_string()),
            job_time: Duration::from_millis(millis(&get, "DEMO_JOB_MS", 50)?),
        })
    }

    /// Where `healthcheck` connects: the listen port on loopback unless a specific address is set.
    pub fn probe_addr(&self) -> SocketAddr {
        let mut addr = self.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        addr
    }
}

fn millis(get: &impl Fn(&str) -> Option<String>, key: &str, default: u64) -> Result<u64> {
    match get(key) {
        Some(s) => s
            .parse::<u64>()
            .with_context(|| format!("{key} {s:?} is not a number of milliseconds")),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<Config> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = config(&[]).unwrap();
        assert_eq!(c.version, "dev");
        assert_eq!(c.schema, 1);
        assert_eq!(c.variant, Variant::Ok);
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.boot_delay, Duration::ZERO);
        assert_eq!(c.database_url, None);
        assert_eq!(c.db_password_file, None);
        assert_eq!(c.redis_url, "redis://redis:6379");
        assert_eq!(c.job_time, Duration::from_millis(50));
        assert_eq!(c.probe_addr(), "127.0.0.1:8080".parse().unwrap());
    }

    #[test]
    fn reads_every_setting() {
        let c = config(&[
            ("DEMO_VERSION", "v2"),
            ("DEMO_SCHEMA", "2"),
            ("DEMO_VARIANT", "Sick"),
            ("DEMO_LISTEN", "127.0.0.1:9000"),
            ("DEMO_BOOT_DELAY_MS", "1500"),
            ("DATABASE_URL", "postgres://demo@db/demo"),
            ("DEMO_DB_PASSWORD_FILE", "/run/secrets/pw"),
            ("REDIS_URL", "redis://cache:6380"),
            ("DEMO_JOB_MS", "5"),
        ])
        .unwrap();
        assert_eq!(c.version, "v2");
        assert_eq!(c.schema, 2);
        assert_eq!(c.variant, Variant::Sick);
        assert_eq!(c.probe_addr(), "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.boot_delay, Duration::from_millis(1500));
        assert_eq!(c.database_url.as_deref(), Some("postgres://demo@db/demo"));
        assert_eq!(c.db_password_file, Some(PathBuf::from("/run/secrets/pw")));
        assert_eq!(c.redis_url, "redis://cache:6380");
        assert_eq!(c.job_time, Duration::from_millis(5));
    }

    #[test]
    fn empty_values_mean_unset() {
        let c = config(&[
            ("DATABASE_URL", ""),
            ("DEMO_VARIANT", " "),
            ("DEMO_SCHEMA", ""),
        ])
        .unwrap();
        assert_eq!(c.database_url, None);
        assert_eq!(c.variant, Variant::Ok);
        assert_eq!(c.schema, 1);
    }

    #[test]
    fn every_variant_parses_and_round_trips() {
        for v in [
            Variant::Ok,
            Variant::Broken,
            Variant::Unready,
            Variant::Sick,
            Variant::BadMigrate,
        ] {
            assert_eq!(v.as_str().parse::<Variant>().unwrap(), v);
        }
    }

    #[test]
    fn bad_values_are_errors_that_name_the_variable() {
        for (k, v) in [
            ("DEMO_SCHEMA", "two"),
            ("DEMO_SCHEMA", "-1"),
            ("DEMO_VARIANT", "flaky"),
            ("DEMO_LISTEN", "8080"),
            ("DEMO_BOOT_DELAY_MS", "1s"),
            ("DEMO_JOB_MS", "-5"),
        ] {
            let err = config(&[(k, v)]).unwrap_err().to_string();
            assert!(err.contains(k), "{err}");
        }
    }

    #[test]
    fn ipv6_wildcard_probes_ipv6_loopback() {
        let c = config(&[("DEMO_LISTEN", "[::]:8081")]).unwrap();
        assert_eq!(c.probe_addr(), "[::1]:8081".parse().unwrap());
    }
}
