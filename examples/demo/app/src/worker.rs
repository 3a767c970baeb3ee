//! `worker`: takes jobs reliably from Redis (BRPOPLPUSH into a per-host processing list),
//! and `enqueue`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map};

use crate::config::{Config, Variant};
use crate::http::{self, Handler, Request};
use crate::log;
use crate::readiness::Readiness;
use crate::resp::{Redis, Value};
use crate::serve::{bind, boot_delay, log_shutdown, App, Mode};
use crate::signals::Shutdown;

pub const JOBS: &str = "demo:jobs";
pub const DONE: &str = "demo:done";
const PROCESSING_PREFIX: &str = "demo:processing:";
const ALIVE_PREFIX: &str = "demo:alive:";
/// Heartbeat key lifetime; refreshed every second.
const ALIVE_TTL_SECS: &str = "5";
/// How long the worker keeps trying to record a finished job before giving up on it
/// (it then stays in the processing list and is re-queued by the next start).
const COMPLETE_RETRY_FOR: Duration = Duration::from_secs(20);

pub fn processing_key(host: &str) -> String {
    format!("{PROCESSING_PREFIX}{host}")
}

pub fn alive_key(host: &str) -> String {
    format!("{ALIVE_PREFIX}{host}")
}

/// The worker's name: the container's hostname (its short id unless set).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes; gethostname NUL-terminates on success
    // (the last byte stays 0 because we pass one less than the length).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end]) {
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    format!("pid-{}", std::process::id())
}

/// The host part of a processing-list key, if it is one.
pub fn host_of_processing_key(key: &str) -> Option<&str> {
    key.strip_prefix(PROCESSING_PREFIX)
        .filter(|h| !h.is_empty())
}

/// Moves every job of `list` back to the queue, one atomic RPOPLPUSH at a time.
fn requeue(r: &mut Redis, list: &str) -> Result<u64> {
    let mut n = 0;
    while r
        .cmd(&[b"RPOPLPUSH", list.as_bytes(), JOBS.as_bytes()])?
        .into_bulk()?
        .is_some()
    {
        n += 1;
    }
    Ok(n)
}

/// Re-queues jobs left in our own processing list (an earlier run of this container that was
/// killed mid-job) and in the lists of workers whose heartbeat is gone.
fn recover(r: &mut Redis, host: &str, version: &str) -> Result<()> {
    let own = processing_key(host);
    let n = requeue(r, &own)?;
    if n > 0 {
        log::event(
            "requeue",
            json!({"from": host, "count": n, "version": version}),
        );
    }
    let mut cursor = b"0".to_vec();
    loop {
        let reply = r.cmd(&[
            b"SCAN",
            &cursor,
            b"MATCH",
            b"demo:processing:*",
            b"COUNT",
            b"100",
        ])?;
        let Value::Array(Some(mut parts)) = reply else {
            bail!("unexpected SCAN reply {reply:?}");
        };
        let (Some(Value::Array(Some(keys))), Some(Value::Bulk(Some(next)))) =
            (parts.pop(), parts.pop())
        else {
            bail!("unexpected SCAN reply shape");
        };
        for key in keys {
            let Value::Bulk(Some(key)) = key else {
                continue;
            };
            let key = String::from_utf8_lossy(&key).into_owned();
            let Some(other) = host_of_processing_key(&key) else {
                continue;
            };
            if other == host {
                continue;
            }
            if r.cmd(&[b"EXISTS", alive_key(other).as_bytes()])?
                .into_int()?
                == 0
            {
                let n = requeue(r, &key)?;
                if n > 0 {
                    log::event(
                        "requeue",
                        json!({"from": other, "count": n, "version": version}),
                    );
                }
            }
        }
        if next == b"0" {
            return Ok(());
        }
        cursor = next;
    }
}

/// Records a finished job: onto `demo:done` and off our processing list, atomically.
fn complete(r: &mut Redis, processing: &str, job: &[u8]) -> Result<()> {
    r.cmd(&[b"MULTI"])?;
    r.cmd(&[b"RPUSH", DONE.as_bytes(), job])?;
    r.cmd(&[b"LREM", processing.as_bytes(), b"1", job])?;
    match r.cmd(&[b"EXEC"])? {
        Value::Array(Some(replies)) => {
            for reply in replies {
                reply.ok()?;
            }
            Ok(())
        }
        other => bail!("EXEC failed: {other:?}"),
    }
}

struct Conn {
    url: String,
    redis: Option<Redis>,
    failures: u32,
}

impl Conn {
    fn new(url: &str) -> Conn {
        Conn {
            url: url.to_string(),
            redis: None,
            failures: 0,
        }
    }

    /// The connection, connecting if needed; logs the first failure and every 20th.
    fn get(&mut self) -> Option<&mut Redis> {
        if self.redis.is_none() {
            match Redis::connect(&self.url) {
                Ok(r) => {
                    self.redis = Some(r);
                    self.failures = 0;
                }
                Err(e) => {
                    if self.failures.is_multiple_of(20) {
                        log::warn(format!("{e:#} (retrying)"));
                    }
                    self.failures += 1;
                    return None;
                }
            }
        }
        self.redis.as_mut()
    }

    fn broken(&mut self, e: &anyhow::Error) {
        log::warn(format!("redis: {e:#} (reconnecting)"));
        self.redis = None;
    }
}

pub fn run(cfg: Config, process_start: Instant) -> Result<ExitCode> {
    let shutdown = Arc::new(Shutdown::install()?);
    if cfg.variant == Variant::Broken {
        bail!(
            "DEMO_VARIANT=broken: version {} refuses to start (broken on purpose)",
            cfg.version
        );
    }
    if !boot_delay(&cfg, &shutdown) {
        log_shutdown(&cfg, Mode::Worker, json!({"during": "boot"}));
        return Ok(ExitCode::SUCCESS);
    }
    let host = hostname();
    let processing = processing_key(&host);
    let listener = bind(&cfg, Mode::Worker, process_start)?;
    let readiness = Readiness::new(process_start, &cfg.version, Mode::Worker.as_str());
    {
        let unready = cfg.variant == Variant::Unready;
        let mut conn = Conn::new(&cfg.redis_url);
        readiness.spawn_checker(shutdown.clone(), move || {
            if unready {
                return Err("DEMO_VARIANT=unready: this build never becomes ready".into());
            }
            let Some(r) = conn.get() else {
                return Err("redis unreachable".into());
            };
            match r.ping() {
                Ok(()) => Ok(Map::from_iter([("redis".to_string(), "ok".into())])),
                Err(e) => {
                    conn.redis = None;
                    Err(format!("redis: {e:#}"))
                }
            }
        })?;
    }
    let app = Arc::new(App {
        cfg: cfg.clone(),
        mode: Mode::Worker,
        readiness,
        db: None,
    });
    {
        let handler: Arc<Handler> = Arc::new(move |req: &Request| app.route(req));
        let (version, shutdown) = (cfg.version.as_str().into(), shutdown.clone());
        std::thread::Builder::new()
            .name("health".into())
            .spawn(move || {
                if let Err(e) =
                    http::serve(listener, handler, version, shutdown, Duration::from_secs(1))
                {
                    log::error(format!("health server: {e}"));
                }
            })?;
    }
    // The heartbeat outlives the job loop so that the job in hand is never taken as abandoned.
    let heartbeat_stop = Arc::new(AtomicBool::new(false));
    let heartbeat = {
        let (stop, url, key) = (
            heartbeat_stop.clone(),
            cfg.redis_url.clone(),
            alive_key(&host),
        );
        std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || {
                let mut conn = Conn::new(&url);
                while !stop.load(Ordering::SeqCst) {
                    if let Some(r) = conn.get() {
                        let stamp = log::unix_ms().to_string();
                        if let Err(e) = r.cmd(&[
                            b"SET",
                            key.as_bytes(),
                            stamp.as_bytes(),
                            b"EX",
                            ALIVE_TTL_SECS.as_bytes(),
                        ]) {
                            conn.broken(&e);
                        }
                    }
                    for _ in 0..10 {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                if let Some(r) = conn.get() {
                    let _ = r.cmd(&[b"DEL", key.as_bytes()]);
                }
            })?
    };

    let mut conn = Conn::new(&cfg.redis_url);
    let mut recovered = false;
    let mut jobs_done = 0u64;
    while !shutdown.requested() {
        let Some(r) = conn.get() else {
            shutdown.sleep(Duration::from_millis(500));
            continue;
        };
        if !recovered {
            // Also after every reconnect: a BRPOPLPUSH whose reply was lost left its job in
            // our own list, and no job is in hand here.
            match recover(r, &host, &cfg.version) {
                Ok(()) => recovered = true,
                Err(e) => {
                    conn.broken(&e);
                    continue;
                }
            }
        }
        let job = match r.cmd(&[b"BRPOPLPUSH", JOBS.as_bytes(), processing.as_bytes(), b"1"]) {
            Ok(Value::Bulk(Some(job))) => job,
            Ok(Value::Bulk(None) | Value::Array(None)) => continue,
            Ok(other) => {
                conn.broken(&anyhow::anyhow!("unexpected BRPOPLPUSH reply {other:?}"));
                recovered = false;
                continue;
            }
            Err(e) => {
                conn.broken(&e);
                recovered = false;
                continue;
            }
        };
        // The job is in hand: finish it even if a SIGTERM arrives meanwhile.
        std::thread::sleep(cfg.job_time);
        finish(&mut conn, &processing, &job)
            .with_context(|| format!("recording job {} as done", String::from_utf8_lossy(&job)))?;
        jobs_done += 1;
        log::event(
            "job",
            json!({"id": String::from_utf8_lossy(&job), "version": cfg.version, "worker": host}),
        );
    }
    heartbeat_stop.store(true, Ordering::SeqCst);
    let _ = heartbeat.join();
    log_shutdown(
        &cfg,
        Mode::Worker,
        json!({"jobs_done": jobs_done, "worker": host}),
    );
    Ok(ExitCode::SUCCESS)
}

/// `complete` with retries across reconnects. After a lost EXEC reply the job may already be
/// recorded: if it is no longer in our processing list, it is.
fn finish(conn: &mut Conn, processing: &str, job: &[u8]) -> Result<()> {
    let start = Instant::now();
    let mut first = true;
    loop {
        if let Some(r) = conn.get() {
            let attempt = if first {
                complete(r, processing, job)
            } else {
                match r.cmd(&[b"LPOS", processing.as_bytes(), job]) {
                    Ok(Value::Bulk(None)) | Ok(Value::Array(None)) => return Ok(()),
                    Ok(_) => complete(r, processing, job),
                    Err(e) => Err(e),
                }
            };
            match attempt {
                Ok(()) => return Ok(()),
                Err(e) => conn.broken(&e),
            }
            first = false;
        }
        if start.elapsed() > COMPLETE_RETRY_FOR {
            bail!("redis unreachable for {:?}", COMPLETE_RETRY_FOR);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `enqueue N [PREFIX]`: RPUSH job ids PREFIX-1 .. PREFIX-N onto demo:jobs.
pub fn enqueue(cfg: &Config, args: &[String]) -> Result<ExitCode> {
    let n: u64 = args
        .first()
        .context("usage: berth-demo-app enqueue N [PREFIX]")?
        .parse()
        .context("N must be a number")?;
    let prefix = args.get(1).map(String::as_str).unwrap_or("job");
    let mut r = Redis::connect(&cfg.redis_url)?;
    let ids: Vec<String> = (1..=n).map(|i| format!("{prefix}-{i}")).collect();
    let mut len = 0;
    for chunk in ids.chunks(500) {
        let mut args: Vec<&[u8]> = vec![b"RPUSH", JOBS.as_bytes()];
        args.extend(chunk.iter().map(|s| s.as_bytes()));
        len = r.cmd(&args)?.into_int()?;
    }
    println!("enqueued {n} jobs ({prefix}-1..{prefix}-{n}); {JOBS} now holds {len}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names() {
        assert_eq!(processing_key("abc123"), "demo:processing:abc123");
        assert_eq!(alive_key("abc123"), "demo:alive:abc123");
        assert_eq!(
            host_of_processing_key("demo:processing:abc123"),
            Some("abc123")
        );
        assert_eq!(host_of_processing_key("demo:processing:"), None);
        assert_eq!(host_of_processing_key("demo:jobs"), None);
    }

    #[test]
    fn hostname_is_not_empty() {
        let h = hostname();
        assert!(!h.is_empty());
        assert!(!h.contains('\0'));
    }
}
