//! `serve`: the web app. Also the routes of the worker's small health server.

use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map};

use crate::config::{Config, Variant};
use crate::db::{Db, DbError, DbParams};
use crate::http::{self, Handler, Request, Response};
use crate::log;
use crate::readiness::{CheckResult, Readiness};
use crate::signals::Shutdown;

/// How long in-flight requests get to finish after SIGTERM (Docker's grace is longer).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound of `/slow?ms=`.
const MAX_SLOW_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Serve,
    Worker,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Serve => "serve",
            Mode::Worker => "worker",
        }
    }
}

pub struct App {
    pub cfg: Config,
    pub mode: Mode,
    pub readiness: Arc<Readiness>,
    pub db: Option<Arc<Db>>,
}

impl App {
    pub fn route(&self, req: &Request) -> Response {
        let version = self.cfg.version.as_str();
        match (self.mode, req.path.as_str()) {
            (_, "/") => Response::text(200, format!("{version}\n")),
            (_, "/healthz") => Response::json(200, &json!({"status": "ok", "version": version})),
            (_, "/readyz") => match self.readiness.current() {
                Ok(extra) => {
                    let mut body = Map::new();
                    body.insert("status".into(), "ok".into());
                    body.insert("version".into(), version.into());
                    body.insert("schema".into(), self.cfg.schema.into());
                    body.extend(extra);
                    Response::json(200, &body.into())
                }
                Err(reason) => Response::json(
                    503,
                    &json!({"status": "unready", "version": version, "reason": reason}),
                ),
            },
            (_, "/version") => Response::json(
                200,
                &json!({"version": version, "schema": self.cfg.schema, "variant": self.cfg.variant.as_str()}),
            ),
            (Mode::Serve, "/smoke") => self.smoke(),
            (Mode::Serve, "/slow") => {
                let ms = match req.query_param("ms").map(str::parse::<u64>) {
                    None => 1000,
                    Some(Ok(ms)) => ms.min(MAX_SLOW_MS),
                    Some(Err(_)) => {
                        return Response::json(400, &json!({"error": "ms must be a number"}))
                    }
                };
                std::thread::sleep(Duration::from_millis(ms));
                Response::json(
                    200,
                    &json!({"status": "ok", "version": version, "slept_ms": ms}),
                )
            }
            (Mode::Serve, "/events") => crate::sse::start(req),
            (Mode::Serve, "/items") => match &self.db {
                None => Response::json(503, &json!({"error": "no DATABASE_URL configured"})),
                Some(db) => match db.item_count() {
                    Ok(n) => Response::json(200, &json!({"items": n, "version": version})),
                    Err(e) => {
                        Response::json(503, &json!({"error": e.to_string(), "version": version}))
                    }
                },
            },
            _ => Response::json(404, &json!({"error": "not found", "path": req.path})),
        }
    }

    /// One real request through the app: the database answers (if there is one).
    fn smoke(&self) -> Response {
        let version = self.cfg.version.as_str();
        if self.cfg.variant == Variant::Sick {
            return Response::json(
                500,
                &json!({"status": "fail", "version": version, "reason": "DEMO_VARIANT=sick: smoke test fails on purpose"}),
            );
        }
        match &self.db {
            None => Response::json(200, &json!({"status": "ok", "version": version})),
            Some(db) => match db.item_count() {
                Ok(n) => Response::json(
                    200,
                    &json!({"status": "ok", "version": version, "items": n}),
                ),
                Err(e) => Response::json(
                    500,
                    &json!({"status": "fail", "version": version, "reason": e.to_string()}),
                ),
            },
        }
    }
}

/// Whether the web app is ready: the database answers and its schema is at least ours.
pub fn check_web(cfg: &Config, db: Option<&Db>) -> CheckResult {
    if cfg.variant == Variant::Unready {
        return Err("DEMO_VARIANT=unready: this build never becomes ready".into());
    }
    let Some(db) = db else {
        return Ok(Map::new());
    };
    match db.schema_version() {
        Ok(Some(v)) if v >= cfg.schema => {
            let mut m = Map::new();
            m.insert("db_schema".into(), v.into());
            Ok(m)
        }
        Ok(Some(v)) => Err(format!(
            "database schema is {v}, this build needs {} (run migrate)",
            cfg.schema
        )),
        Ok(None) => Err("schema_version is empty (run migrate)".into()),
        Err(DbError::Query {
            missing_table: true,
            ..
        }) => Err("database not migrated: no schema_version table (run migrate)".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Sleeps DEMO_BOOT_DELAY_MS (a slow boot). False if a shutdown came meanwhile.
pub fn boot_delay(cfg: &Config, shutdown: &Shutdown) -> bool {
    cfg.boot_delay.is_zero() || !shutdown.sleep(cfg.boot_delay)
}

pub fn bind(cfg: &Config, mode: Mode, process_start: Instant) -> Result<TcpListener> {
    let listener =
        TcpListener::bind(cfg.listen).with_context(|| format!("binding {}", cfg.listen))?;
    log::event(
        "listening",
        json!({
            "version": cfg.version,
            "mode": mode.as_str(),
            "addr": listener.local_addr()?.to_string(),
            "boot_ms": process_start.elapsed().as_millis() as u64,
        }),
    );
    Ok(listener)
}

pub fn log_shutdown(cfg: &Config, mode: Mode, fields: serde_json::Value) {
    let mut obj = Map::new();
    obj.insert("version".into(), cfg.version.clone().into());
    obj.insert("mode".into(), mode.as_str().into());
    if let serde_json::Value::Object(m) = fields {
        obj.extend(m);
    }
    log::event("shutdown", obj.into());
}

pub fn run(cfg: Config, process_start: Instant) -> Result<ExitCode> {
    let shutdown = Arc::new(Shutdown::install()?);
    if cfg.variant == Variant::Broken {
        bail!(
            "DEMO_VARIANT=broken: version {} refuses to start (broken on purpose)",
            cfg.version
        );
    }
    let db = DbParams::from_config(&cfg)?.map(|p| Arc::new(Db::new(p)));
    if !boot_delay(&cfg, &shutdown) {
        log_shutdown(&cfg, Mode::Serve, json!({"during": "boot"}));
        return Ok(ExitCode::SUCCESS);
    }
    let listener = bind(&cfg, Mode::Serve, process_start)?;
    let readiness = Readiness::new(process_start, &cfg.version, Mode::Serve.as_str());
    {
        let (cfg, db) = (cfg.clone(), db.clone());
        readiness.spawn_checker(shutdown.clone(), move || check_web(&cfg, db.as_deref()))?;
    }
    let version: Arc<str> = cfg.version.as_str().into();
    let app = Arc::new(App {
        cfg,
        mode: Mode::Serve,
        readiness,
        db,
    });
    let handler: Arc<Handler> = {
        let app = app.clone();
        Arc::new(move |req: &Request| app.route(req))
    };
    let drained =
        http::serve(listener, handler, version, shutdown, DRAIN_TIMEOUT).context("serving HTTP")?;
    log_shutdown(
        &app.cfg,
        Mode::Serve,
        json!({"drain_ms": drained.took.as_millis() as u64, "connections_left": drained.left}),
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_head;

    fn app(pairs: &[(&str, &str)], ready: Option<CheckResult>) -> App {
        let map: std::collections::HashMap<_, _> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cfg = Config::from_lookup(|k| map.get(k).cloned()).unwrap();
        let readiness = Readiness::new(Instant::now(), &cfg.version, "serve");
        if let Some(r) = ready {
            readiness.record(r);
        }
        App {
            cfg,
            mode: Mode::Serve,
            readiness,
            db: None,
        }
    }

    fn get(app: &App, target: &str) -> (u16, serde_json::Value) {
        let raw = format!("GET {target} HTTP/1.1\r\n\r\n");
        let (req, _) = parse_head(raw.as_bytes()).unwrap().unwrap();
        let resp = app.route(&req);
        let body = serde_json::from_slice(&resp.body)
            .unwrap_or_else(|_| String::from_utf8_lossy(&resp.body).into());
        (resp.status, body)
    }

    #[test]
    fn root_and_version() {
        let a = app(&[("DEMO_VERSION", "v7"), ("DEMO_SCHEMA", "2")], None);
        assert_eq!(get(&a, "/"), (200, json!("v7\n")));
        assert_eq!(
            get(&a, "/version"),
            (200, json!({"version": "v7", "schema": 2, "variant": "ok"}))
        );
        assert_eq!(
            get(&a, "/healthz"),
            (200, json!({"status": "ok", "version": "v7"}))
        );
        assert_eq!(get(&a, "/nope").0, 404);
    }

    #[test]
    fn readyz_follows_the_readiness_cache() {
        let a = app(&[("DEMO_VERSION", "v1")], None);
        let (status, body) = get(&a, "/readyz");
        assert_eq!(status, 503);
        assert_eq!(body["status"], "unready");
        let mut extra = Map::new();
        extra.insert("db_schema".into(), 2.into());
        a.readiness.record(Ok(extra));
        assert_eq!(
            get(&a, "/readyz"),
            (
                200,
                json!({"status": "ok", "version": "v1", "schema": 1, "db_schema": 2})
            )
        );
    }

    #[test]
    fn variants_change_readiness_and_smoke() {
        let unready = app(&[("DEMO_VARIANT", "unready")], None);
        assert!(check_web(&unready.cfg, None)
            .unwrap_err()
            .contains("unready"));
        let ok = app(&[], None);
        assert_eq!(check_web(&ok.cfg, None), Ok(Map::new()));
        assert_eq!(get(&ok, "/smoke").0, 200);
        let sick = app(&[("DEMO_VARIANT", "sick")], Some(Ok(Map::new())));
        assert_eq!(get(&sick, "/readyz").0, 200);
        assert_eq!(get(&sick, "/smoke").0, 500);
    }

    #[test]
    fn slow_waits_and_validates() {
        let a = app(&[], None);
        let t = Instant::now();
        assert_eq!(get(&a, "/slow?ms=120").1["slept_ms"], 120);
        assert!(t.elapsed() >= Duration::from_millis(120));
        assert_eq!(get(&a, "/slow?ms=abc").0, 400);
    }

    #[test]
    fn items_without_a_database_is_unavailable() {
        assert_eq!(get(&app(&[], None), "/items").0, 503);
    }

    #[test]
    fn worker_mode_has_only_the_health_routes() {
        let mut a = app(&[], Some(Ok(Map::new())));
        a.mode = Mode::Worker;
        assert_eq!(get(&a, "/readyz").0, 200);
        assert_eq!(get(&a, "/slow?ms=1").0, 404);
        assert_eq!(get(&a, "/smoke").0, 404);
    }
}
