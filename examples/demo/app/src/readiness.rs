//! Readiness, checked by a background thread every ~150 ms and read from that cache by
//! `/readyz`: probes and load never reach the database or Redis themselves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::log;
use crate::signals::Shutdown;

/// How often the background thread checks.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(150);
/// A result older than this (the check hangs) counts as not ready.
pub const STALE_AFTER: Duration = Duration::from_secs(3);

/// Extra fields for the 200 answer, or why the app is not ready.
pub type CheckResult = Result<Map<String, Value>, String>;

pub struct Readiness {
    last: Mutex<Option<(Instant, CheckResult)>>,
    became_ready: AtomicBool,
    process_start: Instant,
    version: String,
    mode: &'static str,
}

impl Readiness {
    pub fn new(process_start: Instant, version: &str, mode: &'static str) -> Arc<Readiness> {
        Arc::new(Readiness {
            last: Mutex::new(None),
            became_ready: AtomicBool::new(false),
            process_start,
            version: version.to_string(),
            mode,
        })
    }

    /// Records a check result; logs the `ready` event the first time one succeeds, and a
    /// `readiness` event on every change after that.
    pub fn record(&self, result: CheckResult) {
        let ok = result.is_ok();
        let change = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let was_ok = last.as_ref().map(|(_, r)| r.is_ok());
            let reason = result.as_ref().err().cloned();
            *last = Some((Instant::now(), result));
            (was_ok != Some(ok)).then_some(reason)
        };
        if let Some(reason) = change {
            if self.became_ready.load(Ordering::SeqCst) {
                log::event(
                    "readiness",
                    json!({"version": self.version, "mode": self.mode, "ready": ok, "reason": reason}),
                );
            }
        }
        if ok && !self.became_ready.swap(true, Ordering::SeqCst) {
            log::event(
                "ready",
                json!({
                    "version": self.version,
                    "mode": self.mode,
                    "boot_ms": self.process_start.elapsed().as_millis() as u64,
                }),
            );
        }
    }

    /// The current answer for `/readyz`.
    pub fn current(&self) -> CheckResult {
        match &*self.last.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Err("starting: first check not done yet".to_string()),
            Some((at, _)) if at.elapsed() > STALE_AFTER => Err(format!(
                "last check finished {} ms ago (check hangs)",
                at.elapsed().as_millis()
            )),
            Some((_, result)) => result.clone(),
        }
    }

    /// Runs `check` every CHECK_INTERVAL on its own thread until shutdown.
    pub fn spawn_checker(
        self: &Arc<Self>,
        shutdown: Arc<Shutdown>,
        mut check: impl FnMut() -> CheckResult + Send + 'static,
    ) -> std::io::Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("readiness".into())
            .spawn(move || {
                while !shutdown.requested() {
                    let result = check();
                    me.record(result);
                    shutdown.sleep(CHECK_INTERVAL);
                }
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_before_the_first_check() {
        let r = Readiness::new(Instant::now(), "v1", "serve");
        assert!(r.current().unwrap_err().contains("starting"));
    }

    #[test]
    fn reports_the_last_result() {
        let r = Readiness::new(Instant::now(), "v1", "serve");
        r.record(Err("db down".into()));
        assert_eq!(r.current().unwrap_err(), "db down");
        assert!(!r.became_ready.load(Ordering::SeqCst));
        let mut m = Map::new();
        m.insert("db_schema".into(), 2.into());
        r.record(Ok(m.clone()));
        assert_eq!(r.current().unwrap(), m);
        assert!(r.became_ready.load(Ordering::SeqCst));
        r.record(Err("db down again".into()));
        assert_eq!(r.current().unwrap_err(), "db down again");
    }

    #[test]
    fn a_stale_result_is_not_ready() {
        let r = Readiness::new(Instant::now(), "v1", "serve");
        let long_ago = Instant::now()
            .checked_sub(STALE_AFTER * 2)
            .expect("machine up for a few seconds");
        *r.last.lock().unwrap() = Some((long_ago, Ok(Map::new())));
        assert!(r.current().unwrap_err().contains("check hangs"));
    }
}
