//! A small HTTP/1.1 server on std: a thread per connection, keep-alive and pipelining,
//! and a graceful stop (close the listener at once, let in-flight requests finish).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::signals::Shutdown;

/// Largest request head (request line + headers) accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body read (and thrown away): this app takes no input in bodies.
const MAX_BODY: usize = 1024 * 1024;
/// How long an idle keep-alive connection is kept: longer than nginx's upstream
/// `keepalive_timeout` (60 s) so that nginx, not we, closes idle connections.
const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// How long a client may take to send one whole request once it started.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Granularity of the shutdown checks while a connection waits for input.
const POLL_TICK: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub query: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<(String, String)>,
    pub content_length: usize,
    /// Whether the client wants the connection kept open after this request.
    pub keep_alive: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `name` in the query string (not percent-decoded: not needed here).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// Why a request head could not be parsed; each maps to a status code and closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    BadRequest(&'static str),
    HeadTooLarge,
    BodyTooLarge,
    /// Transfer-Encoding (chunked bodies) is not supported by this tiny server.
    NotImplemented(&'static str),
    VersionNotSupported,
}

impl ParseError {
    pub fn status(&self) -> u16 {
        match self {
            ParseError::BadRequest(_) => 400,
            ParseError::BodyTooLarge => 413,
            ParseError::HeadTooLarge => 431,
            ParseError::NotImplemented(_) => 501,
            ParseError::VersionNotSupported => 505,
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            ParseError::BadRequest(m) | ParseError::NotImplemented(m) => m,
            ParseError::HeadTooLarge => "request head too large",
            ParseError::BodyTooLarge => "request body too large",
            ParseError::VersionNotSupported => "only HTTP/1.0 and HTTP/1.1 are supported",
        }
    }
}

/// Parses a request head from the start of `buf`.
/// `Ok(None)`: not complete yet. `Ok(Some((request, n)))`: the head took `n` bytes (the body,
/// if any, follows).
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, ParseError> {
    // Tolerate empty lines before a request (RFC 9112 section 2.2).
    let skip = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    let data = &buf[skip..];
    let Some(end) = find(data, b"\r\n\r\n") else {
        if data.len() > MAX_HEAD {
            return Err(ParseError::HeadTooLarge);
        }
        return Ok(None);
    };
    if end > MAX_HEAD {
        return Err(ParseError::HeadTooLarge);
    }
    let head = std::str::from_utf8(&data[..end])
        .map_err(|_| ParseError::BadRequest("request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::BadRequest("malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ParseError::BadRequest("malformed method"));
    }
    let minor_version = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        v if v.starts_with("HTTP/") => return Err(ParseError::VersionNotSupported),
        _ => return Err(ParseError::BadRequest("malformed HTTP version")),
    };
    // Origin form only ("/path?query"); an absolute URL keeps just its path.
    let target = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    if !target.starts_with('/') && target != "*" {
        return Err(ParseError::BadRequest("malformed request target"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));

    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ParseError::BadRequest("malformed header line"));
        };
        if name.is_empty() || name.ends_with(' ') || name.contains(' ') {
            return Err(ParseError::BadRequest("malformed header name"));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let mut req = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        minor_version,
        headers,
        content_length: 0,
        keep_alive: false,
    };
    if req.header("transfer-encoding").is_some() {
        return Err(ParseError::NotImplemented(
            "Transfer-Encoding request bodies are not supported",
        ));
    }
    let mut lengths = req
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse::<usize>());
    if let Some(first) = lengths.next() {
        let n = first.map_err(|_| ParseError::BadRequest("invalid Content-Length"))?;
        if lengths.any(|other| other != Ok(n)) {
            return Err(ParseError::BadRequest("conflicting Content-Length headers"));
        }
        if n > MAX_BODY {
            return Err(ParseError::BodyTooLarge);
        }
        req.content_length = n;
    }
    let connection = req.header("connection").unwrap_or("").to_ascii_lowercase();
    let has = |token: &str| connection.split(',').any(|t| t.trim() == token);
    req.keep_alive = if minor_version == 1 {
        !has("close")
    } else {
        has("keep-alive")
    };
    Ok(Some((req, skip + end + 4)))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        let mut body = serde_json::to_vec(value).unwrap_or_default();
        body.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            body,
        }
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Serializes a response. `version_header` is the value of `X-Demo-Version`.
pub fn encode_response(
    resp: &Response,
    version_header: &str,
    keep_alive: bool,
    head_only: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + resp.body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nX-Demo-Version: {}\r\nCache-Control: no-store\r\nConnection: {}\r\n\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len(),
        version_header,
        if keep_alive { "keep-alive" } else { "close" },
    );
    if !head_only {
        out.extend_from_slice(&resp.body);
    }
    out
}

pub type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// What `serve` reports when it returns.
#[derive(Debug)]
pub struct Drained {
    /// Connections still open when the drain deadline passed (0 on a clean drain).
    pub left: usize,
    pub took: Duration,
}

/// Accepts connections until a shutdown is requested, then closes the listener at once and
/// waits up to `drain` for open connections to finish their current request.
pub fn serve(
    listener: TcpListener,
    handler: Arc<Handler>,
    version: Arc<str>,
    shutdown: Arc<Shutdown>,
    drain: Duration,
) -> io::Result<Drained> {
    let active = Arc::new(AtomicUsize::new(0));
    listener.set_nonblocking(true)?;
    while !shutdown.requested() {
        // Sleep in poll(2) until a connection or a signal arrives.
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: shutdown.wake_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfd structs that outlives the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        accept_pending(&listener, &handler, &version, &shutdown, &active);
    }
    // Take what already sits in the backlog (those clients connected before the signal),
    // then close the listening socket: new connections are refused from here on.
    accept_pending(&listener, &handler, &version, &shutdown, &active);
    drop(listener);
    let start = Instant::now();
    while active.load(Ordering::SeqCst) > 0 && start.elapsed() < drain {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Drained {
        left: active.load(Ordering::SeqCst),
        took: start.elapsed(),
    })
}

fn accept_pending(
    listener: &TcpListener,
    handler: &Arc<Handler>,
    version: &Arc<str>,
    shutdown: &Arc<Shutdown>,
    active: &Arc<AtomicUsize>,
) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => spawn_connection(stream, handler, version, shutdown, active),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // ECONNABORTED and friends concern one connection; EMFILE: back off a moment.
            Err(e) => {
                if e.raw_os_error() == Some(libc::EMFILE) || e.raw_os_error() == Some(libc::ENFILE)
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return;
            }
        }
    }
}

struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn spawn_connection(
    stream: TcpStream,
    handler: &Arc<Handler>,
    version: &Arc<str>,
    shutdown: &Arc<Shutdown>,
    active: &Arc<AtomicUsize>,
) {
    active.fetch_add(1, Ordering::SeqCst);
    let guard = ActiveGuard(active.clone());
    let (handler, version, shutdown) = (handler.clone(), version.clone(), shutdown.clone());
    let spawned = std::thread::Builder::new()
        .name("conn".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let _guard = guard;
            let _ = handle_connection(stream, &*handler, &version, &shutdown);
        });
    // If no thread can be made the closure (and so the stream and the guard) is dropped:
    // the client sees a closed connection, the server keeps going.
    drop(spawned);
}

fn handle_connection(
    mut stream: TcpStream,
    handler: &Handler,
    version: &str,
    shutdown: &Shutdown,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(POLL_TICK))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut served = 0u64;
    let opened = Instant::now();
    loop {
        match parse_head(&buf) {
            Ok(Some((req, head_len))) => {
                buf.drain(..head_len);
                if !read_body(&mut stream, &mut buf, req.content_length)? {
                    return Ok(());
                }
                buf.drain(..req.content_length);
                let resp = match req.method.as_str() {
                    "GET" | "HEAD" => handler(&req),
                    _ => Response::text(405, "only GET and HEAD\n"),
                };
                if crate::sse::is_stream(&resp) && req.method == "GET" {
                    crate::sse::stream(&mut stream, &resp, version, shutdown)?;
                    let _ = stream.shutdown(std::net::Shutdown::Write);
                    return Ok(());
                }
                let keep_alive = req.keep_alive && !shutdown.requested();
                stream.write_all(&encode_response(
                    &resp,
                    version,
                    keep_alive,
                    req.method == "HEAD",
                ))?;
                served += 1;
                if !keep_alive {
                    let _ = stream.shutdown(std::net::Shutdown::Write);
                    return Ok(());
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                let resp = Response::text(e.status(), format!("{}\n", e.message()));
                stream.write_all(&encode_response(&resp, version, false, false))?;
                return Ok(());
            }
        }
        // Need more bytes: wait for them, noticing a shutdown while idle.
        let waiting_since = Instant::now();
        loop {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    break;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    let idle = waiting_since.elapsed();
                    if buf.is_empty() {
                        // Between requests. A connection accepted during shutdown gets a short
                        // chance to send its first request; an idle keep-alive one is closed.
                        let grace_over = served > 0 || opened.elapsed() > Duration::from_secs(1);
                        if (shutdown.requested() && grace_over) || idle > IDLE_TIMEOUT {
                            return Ok(());
                        }
                    } else if idle > REQUEST_TIMEOUT {
                        let resp = Response::text(408, "request timeout\n");
                        stream.write_all(&encode_response(&resp, version, false, false))?;
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Makes sure `buf` holds at least `len` bytes (the body). Returns false on EOF.
fn read_body(stream: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> io::Result<bool> {
    let start = Instant::now();
    while buf.len() < len {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                if start.elapsed() > REQUEST_TIMEOUT {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// A one-shot GET to `addr` (used by `healthcheck`): returns the status code and body.
pub fn get(
    addr: std::net::SocketAddr,
    path: &str,
    timeout: Duration,
) -> io::Result<(u16, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: berth-demo-app-healthcheck\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                "timed out reading the response",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&chunk[..n]);
                if raw.len() > 1024 * 1024 {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    parse_response(&raw)
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, "malformed HTTP response"))
}

/// Status code and body of a complete `Connection: close` response.
pub fn parse_response(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let end = find(raw, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let status_line = head.lines().next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse::<u16>().ok()?;
    Some((status, raw[end + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<(Request, usize)>, ParseError> {
        parse_head(s.as_bytes())
    }

    #[test]
    fn parses_a_simple_get() {
        let raw = "GET /slow?ms=300&x HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\n\r\n";
        let (req, n) = parse(raw).unwrap().unwrap();
        assert_eq!(n, raw.len());
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/slow");
        assert_eq!(req.query, "ms=300&x");
        assert_eq!(req.query_param("ms"), Some("300"));
        assert_eq!(req.query_param("x"), Some(""));
        assert_eq!(req.query_param("y"), None);
        assert_eq!(req.header("HOST"), Some("a"));
        assert_eq!(req.minor_version, 1);
        assert!(req.keep_alive);
        assert_eq!(req.content_length, 0);
    }

    #[test]
    fn incomplete_heads_ask_for_more() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: a\r\n").unwrap(), None);
    }

    #[test]
    fn pipelined_requests_report_the_first_length() {
        let one = "GET /a HTTP/1.1\r\n\r\n";
        let raw = format!("{one}GET /b HTTP/1.1\r\n\r\n");
        let (req, n) = parse(&raw).unwrap().unwrap();
        assert_eq!(req.path, "/a");
        assert_eq!(n, one.len());
        let (req, _) = parse(&raw[n..]).unwrap().unwrap();
        assert_eq!(req.path, "/b");
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |s: &str| parse(s).unwrap().unwrap().0.keep_alive;
        assert!(ka("GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.1\r\nConnection: Upgrade, Close\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
        assert!(ka("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn content_length_and_leading_blank_lines() {
        let raw = "\r\nPOST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        let (req, n) = parse(raw).unwrap().unwrap();
        assert_eq!(req.content_length, 5);
        assert_eq!(&raw[n..], "hello");
    }

    #[test]
    fn absolute_form_targets_keep_the_path() {
        let (req, _) = parse("GET http://example/readyz?a=1 HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.path, "/readyz");
        assert_eq!(req.query, "a=1");
        let (req, _) = parse("GET http://example HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.path, "/");
    }

    #[test]
    fn malformed_requests_are_rejected_with_a_status() {
        let status = |s: &str| parse(s).unwrap_err().status();
        assert_eq!(status("GET /\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1 extra\r\n\r\n"), 400);
        assert_eq!(status("get / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET nopath HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(status("GET / FTP/1.0\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nNoColon\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), 400);
        assert_eq!(
            status("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            413
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            501
        );
    }

    #[test]
    fn oversized_heads_are_rejected_even_when_incomplete() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD + 10));
        assert_eq!(parse(&big).unwrap_err(), ParseError::HeadTooLarge);
        let big = format!("{big}\r\n");
        assert_eq!(parse(&big).unwrap_err(), ParseError::HeadTooLarge);
    }

    #[test]
    fn responses_carry_length_version_and_connection() {
        let resp = Response::text(200, "v1\n");
        let raw = String::from_utf8(encode_response(&resp, "v1", true, false)).unwrap();
        assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
        assert!(raw.contains("\r\nContent-Length: 3\r\n"));
        assert!(raw.contains("\r\nX-Demo-Version: v1\r\n"));
        assert!(raw.contains("\r\nConnection: keep-alive\r\n"));
        assert!(raw.ends_with("\r\n\r\nv1\n"));
        let raw = String::from_utf8(encode_response(&resp, "v1", false, true)).unwrap();
        assert!(raw.contains("\r\nConnection: close\r\n"));
        assert!(
            raw.contains("\r\nContent-Length: 3\r\n"),
            "HEAD keeps the length"
        );
        assert!(raw.ends_with("\r\n\r\n"));
    }

    #[test]
    fn json_responses_end_with_a_newline() {
        let resp = Response::json(503, &serde_json::json!({"status": "unready"}));
        assert_eq!(resp.body, b"{\"status\":\"unready\"}\n");
        assert_eq!(resp.content_type, "application/json");
    }

    #[test]
    fn parses_responses_for_the_healthcheck() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\nno";
        assert_eq!(parse_response(raw), Some((503, b"no".to_vec())));
        assert_eq!(parse_response(b"garbage\r\n\r\n"), None);
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n"), None);
    }

    #[test]
    fn server_answers_keep_alive_and_pipelined_requests_then_drains() {
        use std::io::BufRead;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Arc::new(Shutdown::for_tests().unwrap());
        let handler: Arc<Handler> = Arc::new(|req: &Request| {
            if req.path == "/slow" {
                std::thread::sleep(Duration::from_millis(300));
            }
            Response::text(200, format!("{}\n", req.path))
        });
        let server = {
            let shutdown = shutdown.clone();
            std::thread::spawn(move || {
                serve(
                    listener,
                    handler,
                    "t1".into(),
                    shutdown,
                    Duration::from_secs(5),
                )
            })
        };
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.write_all(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
            .unwrap();
        let mut reader = io::BufReader::new(conn.try_clone().unwrap());
        let mut bodies = Vec::new();
        for _ in 0..2 {
            let mut len = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.strip_prefix("Content-Length: ") {
                    len = v.trim().parse().unwrap();
                }
                assert!(!line.starts_with("X-Demo-Version") || line == "X-Demo-Version: t1\r\n");
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            bodies.push(String::from_utf8(body).unwrap());
        }
        assert_eq!(bodies, ["/a\n", "/b\n"]);

        // A slow request in flight when the shutdown comes still gets its answer.
        let slow = std::thread::spawn(move || get(addr, "/slow", Duration::from_secs(5)).unwrap());
        std::thread::sleep(Duration::from_millis(100));
        shutdown.request();
        let drained = server.join().unwrap().unwrap();
        assert_eq!(slow.join().unwrap(), (200, b"/slow\n".to_vec()));
        assert_eq!(drained.left, 0);
        // The idle keep-alive connection was closed, and the listener is gone.
        let mut rest = Vec::new();
        assert_eq!(reader.read_to_end(&mut rest).unwrap(), 0);
        assert!(TcpStream::connect(addr).is_err());
    }
}
