//! Waiting until targets are ready: HTTP URLs, TCP ports, containers. All targets are
//! probed in parallel and all must pass; a target that dies (a container that exited,
//! restarts or was OOM-killed) fails the wait at once instead of when the clock runs out.
//! `berth-healthwait` is this module's command line; `berth-swap` probes new containers
//! with it.

use std::net::{TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::docker;
use crate::http;
use crate::time::millis;

/// Something to wait for.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Http(HttpCheck),
    Tcp(String),
    Container(String),
    /// An HTTP check on one container's own address: ready when the check passes (Docker
    /// health is not waited for), dead as soon as the container exits, restarts, is
    /// OOM-killed or turns unhealthy.
    HttpOn {
        container: String,
        check: HttpCheck,
    },
    /// A Swarm service (`STACK_SERVICE`, as `docker service ls` names it): ready when it
    /// runs its replicas (a global one: each task Swarm wants), every one `running`
    /// (which Swarm says of a task with a healthcheck only once it passed); dead as soon
    /// as one of its tasks fails or is rejected after `since` (the wait's start).
    Service {
        name: String,
        since: jiff::Timestamp,
    },
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Http(_) => "http",
            Target::Tcp(_) => "tcp",
            Target::Container(_) => "container",
            Target::HttpOn { .. } => "http",
            Target::Service { .. } => "service",
        }
    }
    pub fn name(&self) -> String {
        match self {
            Target::Http(h) => h.url.clone(),
            Target::Tcp(a) => a.clone(),
            Target::Container(c) => c.clone(),
            Target::HttpOn { check, .. } => check.url.clone(),
            Target::Service { name, .. } => name.clone(),
        }
    }
}

/// An HTTP readiness check: a GET that must answer with an expected status, and
/// optionally a body containing a text and JSON fields with given values.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCheck {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub status: StatusSet,
    pub json: Vec<JsonExpect>,
    pub body: Option<String>,
}

impl HttpCheck {
    pub fn new(url: &str) -> HttpCheck {
        HttpCheck {
            url: url.to_string(),
            headers: Vec::new(),
            status: StatusSet::default(),
            json: Vec::new(),
            body: None,
        }
    }
}

/// A set of HTTP statuses: `200-299` (the default), `200,204,300-399`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusSet {
    ranges: Vec<(u16, u16)>,
    text: String,
}

impl Default for StatusSet {
    fn default() -> Self {
        "200-299".parse().expect("valid default")
    }
}

impl StatusSet {
    pub fn contains(&self, status: u16) -> bool {
        self.ranges.iter().any(|(a, b)| (*a..=*b).contains(&status))
    }
}

impl std::fmt::Display for StatusSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for StatusSet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let code = |t: &str| -> Result<u16, String> {
            let n: u16 = t
                .trim()
                .parse()
                .map_err(|_| format!("{t:?} is not a status code"))?;
            if (100..=599).contains(&n) {
                Ok(n)
            } else {
                Err(format!("{n} is not an HTTP status (100-599)"))
            }
        };
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!("{s:?}: empty entry (use e.g. 200,204,300-399)"));
            }
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (code(a)?, code(b)?);
                    if a > b {
                        return Err(format!("{part:?}: range runs backwards"));
                    }
                    ranges.push((a, b));
                }
                None => {
                    let c = code(part)?;
                    ranges.push((c, c));
                }
            }
        }
        Ok(StatusSet {
            ranges,
            text: s.trim().to_string(),
        })
    }
}

/// `PATH=VALUE`: the JSON field at the dotted PATH (array indexes as numbers) equals VALUE.
/// VALUE is read as JSON when it parses (`true`, `3`, `"x"`), else as a string.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonExpect {
    pub path: String,
    pub raw: String,
    pub value: Value,
}

impl FromStr for JsonExpect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (path, raw) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected PATH=VALUE, e.g. status=ok or db.ok=true"))?;
        let path = path.trim();
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(format!("{s:?}: the path must be dotted names, e.g. db.ok"));
        }
        let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
        Ok(JsonExpect {
            path: path.to_string(),
            raw: raw.to_string(),
            value,
        })
    }
}

impl JsonExpect {
    /// `Ok` when the document matches; else what was found.
    pub fn check(&self, doc: &Value) -> Result<(), String> {
        let mut cur = doc;
        for seg in self.path.split('.') {
            let next = match cur {
                Value::Object(m) => m.get(seg),
                Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            };
            cur = match next {
                Some(v) => v,
                None => {
                    return Err(format!(
                        "json {} is missing (expected {})",
                        self.path, self.raw
                    ))
                }
            };
        }
        let equal = *cur == self.value || matches!(cur, Value::String(s) if *s == self.raw);
        if equal {
            Ok(())
        } else {
            Err(format!(
                "json {} = {} (expected {})",
                self.path, cur, self.raw
            ))
        }
    }
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    Ready,
    /// Not ready yet; worth another try.
    NotYet(String),
    /// Will never be ready (the container exited): stop waiting.
    Dead(String),
}

/// Probe a target once, within `timeout` (a docker call: never past `deadline`).
pub fn probe(target: &Target, agent: &ureq::Agent, timeout: Duration, deadline: Instant) -> Probe {
    match target {
        Target::Http(h) => probe_http(h, agent, timeout),
        Target::Tcp(addr) => probe_tcp(addr, timeout),
        Target::Container(id) => probe_container(id, deadline),
        Target::HttpOn { container, check } => match probe_container(container, deadline) {
            Probe::Dead(e) => Probe::Dead(format!("{container}: {e}")),
            _ => probe_http(check, agent, timeout),
        },
        Target::Service { name, since } => probe_service(name, *since),
    }
}

/// A Swarm service's replicas and tasks, once (see [`Target::Service`]).
fn probe_service(name: &str, since: jiff::Timestamp) -> Probe {
    let spec = match crate::stack::inspect(name) {
        Ok(Some(spec)) => spec,
        Ok(None) => return Probe::Dead(format!("no such Swarm service: {name}")),
        Err(e) => return Probe::NotYet(format!("{e:#}")),
    };
    let tasks = match crate::stack::all_tasks(name) {
        Ok(t) => t,
        Err(e) => return Probe::NotYet(format!("{e:#}")),
    };
    let replicas = spec.mode.replicated.as_ref().map(|r| r.replicas as usize);
    service_verdict(&tasks, replicas, since)
}

/// [`probe_service`]'s verdict on `tasks` (all Swarm lists) for `replicas` (`None`: a
/// global service).
fn service_verdict(
    tasks: &[crate::stack::Task],
    replicas: Option<usize>,
    since: jiff::Timestamp,
) -> Probe {
    let failed = tasks.iter().find(|t| {
        matches!(t.state.as_str(), "failed" | "rejected")
            && crate::time::parse(&t.since).is_some_and(|at| at >= since)
    });
    if let Some(t) = failed {
        let node = if t.node.is_empty() {
            "no node"
        } else {
            t.node.as_str()
        };
        let why = if t.error.is_empty() {
            "no error given"
        } else {
            t.error.as_str()
        };
        return Probe::Dead(format!("task {} on {node} {}: {why}", t.name, t.state));
    }
    let wanted: Vec<_> = tasks.iter().filter(|t| t.desired == "running").collect();
    let running = wanted.iter().filter(|t| t.state == "running").count();
    let want = replicas.unwrap_or(wanted.len());
    if want == 0 && replicas.is_none() {
        return Probe::NotYet("no task yet".to_string());
    }
    if running >= want && wanted.len() == running {
        return Probe::Ready;
    }
    let others: Vec<String> = wanted
        .iter()
        .filter(|t| t.state != "running")
        .map(|t| format!("{} {}", t.name, t.state))
        .collect();
    Probe::NotYet(format!(
        "{running} of {want} task(s) running{}",
        if others.is_empty() {
            String::new()
        } else {
            format!(" ({})", others.join(", "))
        }
    ))
}

fn probe_http(h: &HttpCheck, agent: &ureq::Agent, timeout: Duration) -> Probe {
    let resp = match http::get(agent, &h.url, &h.headers, timeout) {
        Ok(r) => r,
        Err(e) => return Probe::NotYet(e),
    };
    if !h.status.contains(resp.status) {
        return Probe::NotYet(format!("status {} (expected {})", resp.status, h.status));
    }
    if let Some(text) = &h.body {
        if !resp.body.contains(text.as_str()) {
            return Probe::NotYet(format!("body does not contain {text:?}"));
        }
    }
    if !h.json.is_empty() {
        let doc: Value = match serde_json::from_str(&resp.body) {
            Ok(v) => v,
            Err(_) => return Probe::NotYet("body is not JSON".to_string()),
        };
        for j in &h.json {
            if let Err(e) = j.check(&doc) {
                return Probe::NotYet(e);
            }
        }
    }
    Probe::Ready
}

fn probe_tcp(addr: &str, timeout: Duration) -> Probe {
    let addrs: Vec<_> = match addr.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => return Probe::NotYet(format!("cannot resolve: {e}")),
    };
    let mut last = "no address".to_string();
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(_) => return Probe::Ready,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = "connection refused".to_string()
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => last = "timed out".to_string(),
            Err(e) => last = e.to_string(),
        }
    }
    Probe::NotYet(last)
}

/// Docker's health status where the container has a healthcheck, else "running".
pub fn probe_container(id: &str, deadline: Instant) -> Probe {
    let c = match docker::inspect_until(&[id], Some(deadline)) {
        Ok(mut v) if !v.is_empty() => v.remove(0),
        Ok(_) => return Probe::Dead(format!("no such container: {id}")),
        Err(e) => {
            let text = format!("{e:#}");
            return if text.contains("No such") || text.contains("no such") {
                Probe::Dead(format!("no such container: {id}"))
            } else {
                Probe::NotYet(text)
            };
        }
    };
    let s = &c.state;
    let logs = || {
        let tail = docker::logs_tail(&c.id, 10);
        if tail.is_empty() {
            String::new()
        } else {
            format!(
                "; last log lines: {}",
                crate::process::last_lines(&tail, 10)
            )
        }
    };
    if s.oom_killed {
        return Probe::Dead(format!(
            "container was OOM-killed (exit code {}){}",
            s.exit_code,
            logs()
        ));
    }
    if s.restarting || s.status == "restarting" {
        return Probe::Dead(format!(
            "container is restarting (last exit code {}){}",
            s.exit_code,
            logs()
        ));
    }
    match s.status.as_str() {
        "running" => match s.health.as_ref().map(|h| h.status.as_str()) {
            None | Some("healthy") => Probe::Ready,
            Some("unhealthy") => Probe::Dead(format!("container is unhealthy{}", logs())),
            Some(other) => Probe::NotYet(format!("health: {other}")),
        },
        "exited" | "dead" => Probe::Dead(format!(
            "container {} with exit code {}{}",
            s.status,
            s.exit_code,
            logs()
        )),
        other => Probe::NotYet(format!("container is {other}")),
    }
}

/// How long and how often to probe.
#[derive(Debug, Clone)]
pub struct Options {
    /// Overall deadline.
    pub timeout: Duration,
    /// Pause between attempts.
    pub interval: Duration,
    /// Bound on one attempt (always also bounded by the deadline).
    pub attempt_timeout: Duration,
    /// Consecutive successes needed.
    pub successes: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(60),
            interval: Duration::from_millis(200),
            attempt_timeout: Duration::from_secs(2),
            successes: 1,
        }
    }
}

/// What happened to one target.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetReport {
    pub target: String,
    pub kind: &'static str,
    pub ready: bool,
    pub died: bool,
    pub attempts: u32,
    pub time_to_ready_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// What happened to all of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub ready: bool,
    pub elapsed_ms: u64,
    pub targets: Vec<TargetReport>,
}

impl Report {
    /// One line saying why the wait failed.
    pub fn failure(&self) -> String {
        let bad: Vec<String> = self
            .targets
            .iter()
            .filter(|t| !t.ready)
            .map(|t| {
                let why = t.last_error.as_deref().unwrap_or("not ready");
                if t.died {
                    format!("{} died: {why}", t.target)
                } else {
                    format!(
                        "{} not ready after {} attempts: {why}",
                        t.target, t.attempts
                    )
                }
            })
            .collect();
        bad.join("; ")
    }

    /// The stage record for the document ([`crate::record::Health`]).
    pub fn to_record(&self, opts: &Options) -> crate::record::Health {
        use crate::record;
        let targets = self
            .targets
            .iter()
            .map(|t| record::TargetResult {
                target: t.target.clone(),
                kind: t.kind.to_string(),
                ready: t.ready,
                died: t.died,
                attempts: t.attempts,
                time_to_ready_ms: t.time_to_ready_ms,
                last_error: t.last_error.clone(),
                extra: Map::new(),
            })
            .collect();
        record::Health {
            ready: self.ready,
            elapsed_ms: self.elapsed_ms,
            timeout_ms: millis(opts.timeout),
            interval_ms: millis(opts.interval),
            successes: opts.successes,
            targets,
            extra: Map::new(),
        }
    }
}

/// Probe every target in parallel until all are ready, one dies, or the deadline passes.
/// `on_change` gets one line per state change of a target (not one per probe).
pub fn wait(targets: &[Target], opts: &Options, on_change: &(dyn Fn(&str) + Sync)) -> Report {
    let start = Instant::now();
    let deadline = start + opts.timeout;
    let abort = AtomicBool::new(false);
    let agent = http::agent(opts.attempt_timeout.max(Duration::from_millis(1)));
    let reports: Vec<TargetReport> = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| {
                let (abort, agent) = (&abort, &agent);
                s.spawn(move || wait_one(t, opts, start, deadline, abort, agent, on_change))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread panicked"))
            .collect()
    });
    Report {
        ready: reports.iter().all(|r| r.ready),
        elapsed_ms: millis(start.elapsed()),
        targets: reports,
    }
}

fn wait_one(
    target: &Target,
    opts: &Options,
    start: Instant,
    deadline: Instant,
    abort: &AtomicBool,
    agent: &ureq::Agent,
    on_change: &(dyn Fn(&str) + Sync),
) -> TargetReport {
    let name = target.name();
    let mut r = TargetReport {
        target: name.clone(),
        kind: target.kind(),
        ready: false,
        died: false,
        attempts: 0,
        time_to_ready_ms: None,
        last_error: None,
    };
    let mut consecutive = 0u32;
    let mut shown: Option<String> = None;
    loop {
        let now = Instant::now();
        if abort.load(Ordering::SeqCst) || now >= deadline {
            break;
        }
        let budget = opts.attempt_timeout.min(deadline - now);
        r.attempts += 1;
        match probe(target, agent, budget, deadline) {
            Probe::Ready => {
                consecutive += 1;
                if consecutive >= opts.successes.max(1) {
                    r.ready = true;
                    r.time_to_ready_ms = Some(millis(start.elapsed()));
                    on_change(&format!(
                        "{name}: ready after {} attempt{} ({:.1}s)",
                        r.attempts,
                        if r.attempts == 1 { "" } else { "s" },
                        start.elapsed().as_secs_f64()
                    ));
                    return r;
                }
            }
            Probe::NotYet(e) => {
                consecutive = 0;
                if shown.as_deref() != Some(e.as_str()) {
                    on_change(&format!("{name}: {e}"));
                    shown = Some(e.clone());
                }
                r.last_error = Some(e);
            }
            Probe::Dead(e) => {
                r.died = true;
                on_change(&format!("{name}: {e}"));
                r.last_error = Some(e);
                abort.store(true, Ordering::SeqCst);
                return r;
            }
        }
        // Sleep the interval in short slices so a dead sibling stops us promptly.
        let wake = (Instant::now() + opts.interval).min(deadline);
        while Instant::now() < wake && !abort.load(Ordering::SeqCst) {
            std::thread::sleep((wake - Instant::now()).min(Duration::from_millis(50)));
        }
    }
    if r.last_error.is_none() {
        r.last_error = Some(if abort.load(Ordering::SeqCst) {
            "stopped: another target died".to_string()
        } else if r.attempts == 0 {
            "no attempt fitted in the deadline".to_string()
        } else {
            format!("{consecutive} of {} consecutive successes", opts.successes)
        });
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_swarm_service_is_ready_when_its_replicas_run_and_dead_when_a_task_fails() {
        let since = crate::time::parse("2026-12-06T12:00:00Z").unwrap();
        let t = |name: &str, desired: &str, state: &str, at: &str| crate::stack::Task {
            name: name.into(),
            node: "w1".into(),
            desired: desired.into(),
            state: state.into(),
            since: at.into(),
            error: "task: non-zero exit (1)".into(),
            ..Default::default()
        };
        let up = |n| t(n, "running", "running", "2026-12-06T12:00:01Z");
        let before = t("s_web.1", "shutdown", "failed", "2026-12-06T11:59:00Z");
        assert_eq!(
            service_verdict(
                &[up("s_web.1"), up("s_web.2"), before.clone()],
                Some(2),
                since
            ),
            Probe::Ready
        );
        let starting = t("s_web.2", "running", "starting", "2026-12-06T12:00:01Z");
        assert_eq!(
            service_verdict(&[up("s_web.1"), starting], Some(2), since),
            Probe::NotYet("1 of 2 task(s) running (s_web.2 starting)".into())
        );
        assert_eq!(
            service_verdict(&[up("s_web.1")], Some(2), since),
            Probe::NotYet("1 of 2 task(s) running".into())
        );
        let failed = t("s_web.2", "shutdown", "failed", "2026-12-06T12:00:05Z");
        assert_eq!(
            service_verdict(&[up("s_web.1"), failed], Some(2), since),
            Probe::Dead("task s_web.2 on w1 failed: task: non-zero exit (1)".into())
        );
        // Global: every task Swarm wants, none yet is not ready.
        assert_eq!(service_verdict(&[up("s_a.x")], None, since), Probe::Ready);
        assert_eq!(
            service_verdict(&[], None, since),
            Probe::NotYet("no task yet".into())
        );
    }

    #[test]
    fn status_sets() {
        let s: StatusSet = "200,204,300-399".parse().unwrap();
        assert!(s.contains(204) && s.contains(301) && !s.contains(201) && !s.contains(400));
        assert!(StatusSet::default().contains(299));
        assert!(!StatusSet::default().contains(300));
        for bad in ["", "20x", "300-200", "200,,201", "600"] {
            assert!(bad.parse::<StatusSet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn json_expectations() {
        let doc = json!({"status": "ok", "db": {"ok": true, "n": 3}, "items": [{"id": "7"}]});
        for ok in [
            "status=ok",
            "db.ok=true",
            "db.n=3",
            "items.0.id=7",
            "status=\"ok\"",
        ] {
            let j: JsonExpect = ok.parse().unwrap();
            assert!(j.check(&doc).is_ok(), "{ok}");
        }
        let j: JsonExpect = "db.ok=false".parse().unwrap();
        assert_eq!(
            j.check(&doc).unwrap_err(),
            "json db.ok = true (expected false)"
        );
        let j: JsonExpect = "db.missing=1".parse().unwrap();
        assert!(j.check(&doc).unwrap_err().contains("missing"));
        assert!("nopath".parse::<JsonExpect>().is_err());
        assert!("a..b=1".parse::<JsonExpect>().is_err());
    }

    #[test]
    fn tcp_refused_then_deadline() {
        // A port nobody listens on: bind, learn the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let opts = Options {
            timeout: Duration::from_millis(600),
            interval: Duration::from_millis(100),
            ..Options::default()
        };
        let lines = std::sync::Mutex::new(Vec::new());
        let r = wait(&[Target::Tcp(format!("127.0.0.1:{port}"))], &opts, &|l| {
            lines.lock().unwrap().push(l.to_string())
        });
        assert!(!r.ready);
        assert!(r.targets[0].attempts >= 3, "{r:?}");
        assert_eq!(
            r.targets[0].last_error.as_deref(),
            Some("connection refused")
        );
        // One line for the state, not one per probe.
        assert_eq!(lines.lock().unwrap().len(), 1);
    }

    #[test]
    fn http_on_a_container_that_is_gone_fails_fast() {
        // A stub docker that knows no containers: the target dies at the first probe
        // instead of probing the URL until the deadline.
        let dir = tempfile::tempdir().unwrap();
        let stub = dir.path().join("docker");
        std::fs::write(
            &stub,
            "#!/bin/sh\necho 'Error: No such container: gone' >&2\nexit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        let target = Target::HttpOn {
            container: "gone".into(),
            check: HttpCheck::new("http://127.0.0.1:9/readyz"),
        };
        assert_eq!(target.kind(), "http");
        assert_eq!(target.name(), "http://127.0.0.1:9/readyz");
        std::env::set_var("BERTH_DOCKER", &stub);
        let agent = http::agent(Duration::from_millis(200));
        let p = probe(
            &target,
            &agent,
            Duration::from_millis(200),
            Instant::now() + Duration::from_secs(5),
        );
        std::env::remove_var("BERTH_DOCKER");
        match p {
            Probe::Dead(e) => assert!(e.contains("no such container"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tcp_ready() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let r = wait(&[Target::Tcp(addr)], &Options::default(), &|_| {});
        assert!(r.ready);
        assert_eq!(r.targets[0].attempts, 1);
    }
}
