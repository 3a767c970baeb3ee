//! The e2e tests' load generator: clients that behave like real HTTP clients (issue 12 §7),
//! seeing what happens to each connection (a pooling HTTP library would hide it).
//!
//! Each client owns one HTTP/1.1 keep-alive connection and reuses it request after request;
//! it opens a new one only when the server closed the old one (`Connection: close`, or a FIN
//! seen while the connection was idle, as browsers, Go's and hyper's pools notice before
//! reuse). It never sends a request twice: a request whose connection failed before a
//! response is one failure, whatever the method. A GET that failed that way on a *reused*
//! connection is also counted as [`ClientReport::browser_retriable`]: a browser would have
//! resent it silently; an API client or a POST would not.
//!
//! Requests are a fixed, repeatable mix per client: every `post_every`-th is a POST with a
//! small JSON body, every `slow_every`-th a GET of the demo app's `/slow?ms=N`, the rest GETs
//! of `path`. Bounded in time and in requests per client. A request fails when it gets no
//! complete response (a transport error) or a 5xx status; any other status is the app's own
//! answer (the demo app answers POST with 405, "only GET and HEAD", after reading the body:
//! the request reached it and its answer came back).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the clients send and for how long.
#[derive(Debug, Clone)]
pub struct Mix {
    pub clients: usize,
    /// The GET path (and the POST path).
    pub path: String,
    /// Every n-th request of a client is a POST (0: none).
    pub post_every: u32,
    /// Every n-th request of a client is `GET /slow?ms=slow_ms` (0: none).
    pub slow_every: u32,
    pub slow_ms: u64,
    /// Each client's pause after every answer.
    pub pause: Duration,
    /// How long a request may take (plus `slow_ms` for a slow one).
    pub timeout: Duration,
    /// Bounds: the load stops at whichever comes first (or at [`Clients::stop`]).
    pub max_time: Duration,
    pub max_requests_per_client: usize,
}

impl Default for Mix {
    fn default() -> Mix {
        Mix {
            clients: 8,
            path: "/version".to_string(),
            post_every: 3,
            slow_every: 0,
            slow_ms: 1500,
            pause: Duration::from_millis(5),
            timeout: Duration::from_secs(5),
            max_time: Duration::from_secs(300),
            max_requests_per_client: usize::MAX,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// A complete response with this status.
    Status(u16),
    /// No complete response: the kind of transport error (see [`Attempt::error`]).
    Error(&'static str),
}

/// One request, sent exactly once.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When it finished, from the start of the load.
    pub at: Duration,
    pub latency: Duration,
    pub method: Method,
    pub slow: bool,
    /// Sent on a connection that had carried an earlier request.
    pub reused: bool,
    pub outcome: Outcome,
    /// The `X-Demo-Version` header of the response, if any.
    pub version: String,
}

impl Attempt {
    /// A transport error or a 5xx.
    pub fn failed(&self) -> bool {
        match self.outcome {
            Outcome::Status(s) => s >= 500,
            Outcome::Error(_) => true,
        }
    }

    /// A GET on a reused connection that the server closed before any byte of a response:
    /// browsers resend exactly these (still counted as failed here).
    pub fn browser_retriable(&self) -> bool {
        self.method == Method::Get
            && self.reused
            && matches!(
                self.outcome,
                Outcome::Error(CLOSED_BEFORE_RESPONSE | RESET_BEFORE_RESPONSE)
            )
    }
}

pub const CONNECT_REFUSED: &str = "connect refused";
pub const CONNECT_FAILED: &str = "connect failed";
pub const CLOSED_BEFORE_RESPONSE: &str = "closed before response";
pub const RESET_BEFORE_RESPONSE: &str = "reset before response";
pub const CLOSED_MID_RESPONSE: &str = "closed mid-response";
pub const TIMEOUT: &str = "timeout";
pub const BAD_RESPONSE: &str = "bad response";
pub const OTHER: &str = "other io error";

/// A running load; [`Clients::stop`] (or [`Clients::wait`]) collects the report.
pub struct Clients {
    stop: Arc<AtomicBool>,
    started: Instant,
    handles: Vec<JoinHandle<(Vec<Attempt>, usize)>>,
}

impl Clients {
    /// Start `mix.clients` clients against `base` (`http://HOST:PORT`, no path).
    pub fn start(base: &str, mix: &Mix) -> Clients {
        let authority = base
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("{base}: only http://HOST:PORT"))
            .trim_end_matches('/')
            .to_string();
        let addr = authority
            .to_socket_addrs()
            .unwrap_or_else(|e| panic!("{authority}: {e}"))
            .next()
            .unwrap_or_else(|| panic!("{authority}: no address"));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let handles = (0..mix.clients)
            .map(|i| {
                let client = Client {
                    addr,
                    authority: authority.clone(),
                    mix: mix.clone(),
                    id: i,
                    started,
                };
                let stop = stop.clone();
                std::thread::spawn(move || client.run(&stop))
            })
            .collect();
        Clients {
            stop,
            started,
            handles,
        }
    }

    /// Time since the load started (to mark events against its attempts).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stop every client (after its request in flight) and collect the report.
    pub fn stop(self) -> ClientReport {
        self.stop.store(true, Ordering::SeqCst);
        self.wait()
    }

    /// Wait until every client reached its bounds, then collect the report.
    pub fn wait(self) -> ClientReport {
        let mut attempts = Vec::new();
        let mut idle_closes = 0;
        for h in self.handles {
            let (a, c) = h.join().expect("client thread");
            attempts.extend(a);
            idle_closes += c;
        }
        attempts.sort_by_key(|a| a.at);
        ClientReport {
            attempts,
            idle_closes,
        }
    }
}

struct Client {
    addr: SocketAddr,
    authority: String,
    mix: Mix,
    id: usize,
    started: Instant,
}

impl Client {
    fn run(&self, stop: &AtomicBool) -> (Vec<Attempt>, usize) {
        let mut out = Vec::new();
        let mut conn: Option<TcpStream> = None;
        let mut idle_closes = 0;
        let mut n: u32 = 0;
        while !stop.load(Ordering::SeqCst)
            && self.started.elapsed() < self.mix.max_time
            && out.len() < self.mix.max_requests_per_client
        {
            n = n.wrapping_add(1);
            let every = |k: u32| k > 0 && n.is_multiple_of(k);
            let (method, slow) = if every(self.mix.post_every) {
                (Method::Post, false)
            } else {
                (Method::Get, every(self.mix.slow_every))
            };
            if conn.as_ref().is_some_and(closed_by_peer) {
                conn = None;
                idle_closes += 1;
            }
            let reused = conn.is_some();
            let t0 = Instant::now();
            let (outcome, version, keep) = self.once(&mut conn, method, slow, n);
            if !keep {
                conn = None;
            }
            out.push(Attempt {
                at: self.started.elapsed(),
                latency: t0.elapsed(),
                method,
                slow,
                reused,
                outcome,
                version,
            });
            if !self.mix.pause.is_zero() {
                std::thread::sleep(self.mix.pause);
            }
        }
        (out, idle_closes)
    }

    /// Send one request on `conn` (connecting first if there is none): (outcome, version
    /// header, whether the connection may carry another request).
    fn once(
        &self,
        conn: &mut Option<TcpStream>,
        method: Method,
        slow: bool,
        n: u32,
    ) -> (Outcome, String, bool) {
        let timeout =
            self.mix.timeout + Duration::from_millis(if slow { self.mix.slow_ms } else { 0 });
        if conn.is_none() {
            match TcpStream::connect_timeout(&self.addr, self.mix.timeout) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    *conn = Some(s);
                }
                Err(e) => {
                    let kind = if e.kind() == ErrorKind::ConnectionRefused {
                        CONNECT_REFUSED
                    } else {
                        CONNECT_FAILED
                    };
                    return (Outcome::Error(kind), String::new(), false);
                }
            }
        }
        let stream = conn.as_mut().expect("connected above");
        let _ = stream.set_read_timeout(Some(timeout));
        let _ = stream.set_write_timeout(Some(timeout));
        let request = self.request(method, slow, n);
        if let Err(e) = stream.write_all(request.as_bytes()) {
            return (Outcome::Error(io_kind(&e, false)), String::new(), false);
        }
        match read_response(stream) {
            Ok(r) => (Outcome::Status(r.status), r.version, r.keep_alive),
            Err(kind) => (Outcome::Error(kind), String::new(), false),
        }
    }

    fn request(&self, method: Method, slow: bool, n: u32) -> String {
        let host = &self.authority;
        match method {
            Method::Get => {
                let path = if slow {
                    format!("/slow?ms={}", self.mix.slow_ms)
                } else {
                    self.mix.path.clone()
                };
                format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: berth-e2e-clients\r\nAccept: */*\r\n\r\n")
            }
            Method::Post => {
                let body = format!("{{\"client\":{},\"n\":{n}}}", self.id);
                format!(
                    "POST {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: berth-e2e-clients\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    self.mix.path,
                    body.len()
                )
            }
        }
    }
}

/// Whether an idle connection has been closed (or reset) by the server: a non-blocking
/// peek sees EOF or an error. Unread bytes on an idle connection make it unusable too.
fn closed_by_peer(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let closed = match s.peek(&mut b) {
        Ok(_) => true,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    closed || s.set_nonblocking(false).is_err()
}

fn io_kind(e: &std::io::Error, got_bytes: bool) -> &'static str {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => TIMEOUT,
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => {
            if got_bytes {
                CLOSED_MID_RESPONSE
            } else {
                RESET_BEFORE_RESPONSE
            }
        }
        ErrorKind::UnexpectedEof => {
            if got_bytes {
                CLOSED_MID_RESPONSE
            } else {
                CLOSED_BEFORE_RESPONSE
            }
        }
        _ => OTHER,
    }
}

struct Response {
    status: u16,
    version: String,
    keep_alive: bool,
}

/// Read one complete response (Content-Length, chunked, or until close).
fn read_response(s: &mut TcpStream) -> Result<Response, &'static str> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8192];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = resp.code.unwrap_or(0);
                let header = |name: &str| {
                    resp.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
                };
                let version = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("x-demo-version"))
                    .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
                    .unwrap_or_default();
                let connection = header("connection").unwrap_or_default();
                let http10 = resp.version == Some(0);
                let mut keep_alive = if http10 {
                    connection.contains("keep-alive")
                } else {
                    !connection.contains("close")
                };
                let length = header("content-length").and_then(|v| v.parse::<usize>().ok());
                let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
                let body = buf.split_off(head_len);
                if chunked {
                    read_chunked(s, body)?;
                } else if let Some(len) = length {
                    read_exact_more(s, body, len)?;
                } else if status >= 200 && status != 204 && status != 304 {
                    read_to_close(s)?;
                    keep_alive = false;
                }
                return Ok(Response {
                    status,
                    version,
                    keep_alive,
                });
            }
            Ok(httparse::Status::Partial) => {}
            Err(_) => return Err(BAD_RESPONSE),
        }
        match s.read(&mut chunk) {
            Ok(0) => {
                return Err(if buf.is_empty() {
                    CLOSED_BEFORE_RESPONSE
                } else {
                    CLOSED_MID_RESPONSE
                })
            }
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io_kind(&e, !buf.is_empty())),
        }
    }
}

fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), &'static str> {
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Err(CLOSED_MID_RESPONSE),
            Ok(k) => {
                buf.extend_from_slice(&chunk[..k]);
                return Ok(());
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io_kind(&e, true)),
        }
    }
}

fn read_exact_more(s: &mut TcpStream, mut buf: Vec<u8>, len: usize) -> Result<(), &'static str> {
    while buf.len() < len {
        fill(s, &mut buf)?;
    }
    Ok(())
}

fn read_to_close(s: &mut TcpStream) -> Result<(), &'static str> {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).map_err(|e| io_kind(&e, true))?;
    Ok(())
}

/// Reads a chunked body through its last chunk and final CRLF (no trailers expected).
fn read_chunked(s: &mut TcpStream, mut buf: Vec<u8>) -> Result<(), &'static str> {
    let mut pos = 0;
    loop {
        let line_end = loop {
            if let Some(i) = buf[pos..].windows(2).position(|w| w == b"\r\n") {
                break pos + i;
            }
            fill(s, &mut buf)?;
        };
        let size_text = String::from_utf8_lossy(&buf[pos..line_end]).to_string();
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| BAD_RESPONSE)?;
        let next = line_end + 2 + size + 2;
        while buf.len() < next {
            fill(s, &mut buf)?;
        }
        if size == 0 {
            return Ok(());
        }
        pos = next;
    }
}

/// Everything the clients saw.
#[derive(Debug, Clone, Default)]
pub struct ClientReport {
    pub attempts: Vec<Attempt>,
    /// Idle keep-alive connections found closed by the server before reuse (each client
    /// then opened a new one; not failures).
    pub idle_closes: usize,
}

impl ClientReport {
    pub fn total(&self) -> usize {
        self.attempts.len()
    }

    pub fn failed(&self) -> usize {
        self.attempts.iter().filter(|a| a.failed()).count()
    }

    /// Failed POSTs: never resent by a client, each one lost or of unknown fate.
    pub fn failed_posts(&self) -> usize {
        self.attempts
            .iter()
            .filter(|a| a.failed() && a.method == Method::Post)
            .count()
    }

    /// Failed GETs a browser would have resent (a reused connection closed before any
    /// byte of a response). Included in [`ClientReport::failed`].
    pub fn browser_retriable(&self) -> usize {
        self.attempts
            .iter()
            .filter(|a| a.browser_retriable())
            .count()
    }

    /// Only the attempts that finished within `[from, to)` (load time).
    pub fn window(&self, from: Duration, to: Duration) -> ClientReport {
        ClientReport {
            attempts: self
                .attempts
                .iter()
                .filter(|a| a.at >= from && a.at < to)
                .cloned()
                .collect(),
            idle_closes: self.idle_closes,
        }
    }

    /// Requests that got no complete response (a 503 page is an answer, not one of these).
    pub fn transport_errors(&self) -> usize {
        self.attempts
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Error(_)))
            .count()
    }

    /// Across a maintenance window: no connection dropped, every request got an answer,
    /// the app's (GET 200, POST 405) or the maintenance page (503, whatever the method),
    /// and each of the four at least once.
    pub fn assert_app_or_maintenance_page(&self) {
        assert_eq!(self.transport_errors(), 0, "{}", self.summary());
        let want = [
            (Method::Get, 200),
            (Method::Get, 503),
            (Method::Post, 405),
            (Method::Post, 503),
        ];
        assert_eq!(self.statuses(), want.into(), "{}", self.summary());
    }

    /// Every request got the demo app's own answer: none failed, every GET a 200 and every
    /// POST a 405 (the app read it and refused it), both sent. Stricter than `failed() == 0`:
    /// a 404 or 400 from whatever answered instead of the app counts too. Prints the
    /// summary (the numbers of the run) whatever the outcome.
    pub fn assert_all_answered_by_app(&self, what: &str) {
        eprintln!("{what}: {}", self.summary());
        assert_eq!(self.failed(), 0, "{what}: {}", self.summary());
        let want = [(Method::Get, 200), (Method::Post, 405)];
        assert_eq!(self.statuses(), want.into(), "{what}: {}", self.summary());
    }

    /// The (method, status) pairs of the answered requests.
    pub fn statuses(&self) -> BTreeSet<(Method, u16)> {
        self.attempts
            .iter()
            .filter_map(|a| match a.outcome {
                Outcome::Status(s) => Some((a.method, s)),
                Outcome::Error(_) => None,
            })
            .collect()
    }

    /// Versions that answered (not failed) at or after `t` (load time).
    pub fn versions_after(&self, t: Duration) -> BTreeSet<String> {
        self.attempts
            .iter()
            .filter(|a| a.at >= t && !a.failed())
            .map(|a| a.version.clone())
            .collect()
    }

    /// The longest time between two consecutive answered (not failed) requests.
    pub fn longest_gap(&self) -> Duration {
        crate::longest_gap(self.attempts.iter().filter(|a| !a.failed()).map(|a| a.at))
    }

    /// Counts per (method, reused or fresh connection, status or error kind).
    pub fn counts(&self) -> BTreeMap<(Method, bool, Outcome), usize> {
        let mut m = BTreeMap::new();
        for a in &self.attempts {
            *m.entry((a.method, a.reused, a.outcome.clone()))
                .or_default() += 1;
        }
        m
    }

    /// Latency percentile (0.0..=1.0) of the requests that were not slow ones.
    pub fn latency(&self, p: f64) -> Duration {
        let mut l: Vec<Duration> = self
            .attempts
            .iter()
            .filter(|a| !a.slow)
            .map(|a| a.latency)
            .collect();
        l.sort();
        let i = ((l.len() as f64 - 1.0) * p).round() as usize;
        l.get(i.min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    }

    /// Count per `X-Demo-Version` among answered (not failed) requests.
    pub fn by_version(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for a in self.attempts.iter().filter(|a| !a.failed()) {
            *m.entry(a.version.clone()).or_default() += 1;
        }
        m
    }

    /// One line: totals, failures by kind, answering versions, then every (method,
    /// connection, outcome) count.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .counts()
            .into_iter()
            .map(|((m, reused, o), n)| {
                let conn = if reused { "reused" } else { "fresh" };
                let o = match o {
                    Outcome::Status(s) => s.to_string(),
                    Outcome::Error(e) => e.to_string(),
                };
                format!("{} {conn} {o}: {n}", m.as_str())
            })
            .collect();
        format!(
            "{} requests, {} failed ({} POST, {} GET a browser would resend), {} idle closes seen, versions {:?}, p50/p99 {:.1}/{:.1} ms (not slow); {}",
            self.total(),
            self.failed(),
            self.failed_posts(),
            self.browser_retriable(),
            self.idle_closes,
            self.by_version(),
            self.latency(0.5).as_secs_f64() * 1000.0,
            self.latency(0.99).as_secs_f64() * 1000.0,
            parts.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A keep-alive server for these tests: on each connection it answers `answer` requests
    /// (200, keep-alive), then does `then` with the next one. It counts the requests it read.
    struct Server {
        port: u16,
        seen: Arc<std::sync::atomic::AtomicUsize>,
    }

    #[derive(Clone, Copy)]
    enum Then {
        /// Read the next request and close without answering (a worker exiting at reload).
        CloseUnanswered,
        /// Close right after the last answer, without `Connection: close` (idle close).
        CloseIdle,
    }

    impl Server {
        fn start(answer: usize, then: Then) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let seen2 = seen.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let seen = seen2.clone();
                    std::thread::spawn(move || serve(stream, answer, then, &seen));
                }
            });
            Server { port, seen }
        }

        fn base(&self) -> String {
            format!("http://127.0.0.1:{}", self.port)
        }
    }

    /// Reads one request (head and Content-Length body); false at EOF.
    fn read_request(s: &mut TcpStream) -> bool {
        let mut buf = Vec::new();
        let mut b = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(1) => buf.push(b[0]),
                _ => return false,
            }
        }
        let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).is_ok()
    }

    fn serve(mut s: TcpStream, answer: usize, then: Then, seen: &std::sync::atomic::AtomicUsize) {
        for _ in 0..answer {
            if !read_request(&mut s) {
                return;
            }
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Demo-Version: t\r\n\r\nok\n",
            );
        }
        match then {
            Then::CloseUnanswered => {
                if read_request(&mut s) {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            }
            Then::CloseIdle => {}
        }
        let _ = s.shutdown(std::net::Shutdown::Both);
    }

    fn mix(clients: usize, requests: usize, post_every: u32) -> Mix {
        Mix {
            clients,
            post_every,
            pause: Duration::from_millis(30),
            max_time: Duration::from_secs(60),
            max_requests_per_client: requests,
            ..Mix::default()
        }
    }

    #[test]
    fn keep_alive_connections_are_reused_and_every_answer_counts() {
        let srv = Server::start(usize::MAX, Then::CloseIdle);
        let r = Clients::start(&srv.base(), &mix(3, 10, 3)).wait();
        assert_eq!(r.total(), 30, "{}", r.summary());
        assert_eq!(r.failed(), 0, "{}", r.summary());
        // One fresh connection per client, reused for the other 9 requests.
        assert_eq!(r.attempts.iter().filter(|a| !a.reused).count(), 3);
        assert_eq!(
            r.attempts
                .iter()
                .filter(|a| a.method == Method::Post)
                .count(),
            9
        );
        assert_eq!(srv.seen.load(Ordering::SeqCst), 30);
        assert!(r.attempts.iter().all(|a| a.version == "t"));
        assert_eq!(r.transport_errors(), 0);
        assert_eq!(
            r.statuses(),
            [(Method::Get, 200), (Method::Post, 200)].into()
        );
        assert_eq!(r.versions_after(Duration::ZERO), ["t".to_string()].into());
        let last = r.attempts.last().unwrap().at;
        assert!(r.versions_after(last + Duration::from_millis(1)).is_empty());
        // Each client pauses 30 ms between answers: no gap anywhere near a second.
        assert!(
            r.longest_gap() < Duration::from_secs(1),
            "{:?}",
            r.longest_gap()
        );
    }

    #[test]
    fn a_connection_closed_under_a_request_is_a_failure_and_never_resent() {
        // Every second request on a connection meets a server that reads it and closes.
        let srv = Server::start(1, Then::CloseUnanswered);
        let r = Clients::start(&srv.base(), &mix(2, 12, 4)).wait();
        assert_eq!(r.total(), 24, "{}", r.summary());
        // Requests alternate: fresh (answered), reused (closed unanswered), per client.
        assert_eq!(r.failed(), 12, "{}", r.summary());
        assert!(r.attempts.iter().all(|a| a.failed() == a.reused));
        // Every 4th request is a POST, so it is always one on a reused connection (n = 4, 8,
        // 12) and so are the GETs n = 2, 6, 10: a browser would resend those, not the POSTs.
        assert_eq!(r.failed_posts(), 6, "{}", r.summary());
        assert_eq!(r.browser_retriable(), 6, "{}", r.summary());
        assert!(r.attempts.iter().filter(|a| a.failed()).all(|a| matches!(
            a.outcome,
            Outcome::Error(CLOSED_BEFORE_RESPONSE | RESET_BEFORE_RESPONSE)
        )));
        // Exactly one request on the wire per attempt: nothing was resent.
        assert_eq!(srv.seen.load(Ordering::SeqCst), 24);
    }

    #[test]
    fn an_idle_connection_closed_by_the_server_is_replaced_before_use() {
        // The server closes each connection right after its first answer (no
        // `Connection: close`); the client sees the FIN during its pause and reconnects. The
        // pause is long so that even a starved server thread has closed by then.
        let srv = Server::start(1, Then::CloseIdle);
        let m = Mix {
            pause: Duration::from_millis(200),
            ..mix(2, 6, 2)
        };
        let r = Clients::start(&srv.base(), &m).wait();
        assert_eq!(r.failed(), 0, "{}", r.summary());
        assert_eq!(r.idle_closes, 10, "{}", r.summary());
        assert!(r.attempts.iter().all(|a| !a.reused));
    }

    #[test]
    fn a_refused_connection_is_a_failure_of_its_kind() {
        let port = crate::free_port();
        let r = Clients::start(&format!("http://127.0.0.1:{port}"), &mix(1, 3, 0)).wait();
        assert_eq!(r.failed(), 3, "{}", r.summary());
        assert!(r
            .attempts
            .iter()
            .all(|a| a.outcome == Outcome::Error(CONNECT_REFUSED) && !a.reused));
        assert_eq!(r.browser_retriable(), 0);
        assert_eq!(r.transport_errors(), 3);
        assert!(r.statuses().is_empty() && r.versions_after(Duration::ZERO).is_empty());
        assert_eq!(r.longest_gap(), Duration::ZERO);
    }

    #[test]
    fn slow_requests_and_statuses_are_counted() {
        let srv = crate::TestServer::start(|head| {
            if head.starts_with("POST") {
                (405, "{}".to_string())
            } else {
                (200, "{}".to_string())
            }
        });
        let m = Mix {
            slow_every: 2,
            slow_ms: 10,
            ..mix(1, 6, 3)
        };
        let r = Clients::start(&format!("http://127.0.0.1:{}", srv.port), &m).wait();
        // TestServer answers `Connection: close`: every request on a fresh connection.
        assert_eq!(r.failed(), 0, "{}", r.summary());
        assert!(r.attempts.iter().all(|a| !a.reused));
        let seen = srv.seen.lock().unwrap().clone();
        let lines: Vec<&str> = seen.iter().map(|h| h.lines().next().unwrap()).collect();
        assert_eq!(
            lines,
            [
                "GET /version HTTP/1.1",
                "GET /slow?ms=10 HTTP/1.1",
                "POST /version HTTP/1.1",
                "GET /slow?ms=10 HTTP/1.1",
                "GET /version HTTP/1.1",
                "POST /version HTTP/1.1",
            ]
        );
        let statuses: Vec<Outcome> = r.attempts.iter().map(|a| a.outcome.clone()).collect();
        assert_eq!(
            statuses
                .iter()
                .filter(|o| **o == Outcome::Status(405))
                .count(),
            2
        );
        assert_eq!(r.attempts.iter().filter(|a| a.slow).count(), 2);
        r.assert_all_answered_by_app("GET 200, POST 405");
    }

    #[test]
    fn an_answer_other_than_the_apps_fails_the_all_answered_check() {
        // A 404 is an answer (not failed), but not the app's.
        let srv = crate::TestServer::start(|head| {
            let status = if head.starts_with("POST") { 405 } else { 404 };
            (status, String::new())
        });
        let r = Clients::start(&format!("http://127.0.0.1:{}", srv.port), &mix(1, 3, 3)).wait();
        assert_eq!((r.total(), r.failed()), (3, 0), "{}", r.summary());
        let checked = std::panic::catch_unwind(|| r.assert_all_answered_by_app("GET 404"));
        assert!(checked.is_err(), "{}", r.summary());
    }
}
