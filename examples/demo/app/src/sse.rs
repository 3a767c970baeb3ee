//! `/events`: a server-sent events stream (one `tick` event every 100 ms) that ends
//! cleanly when the app shuts down: on SIGTERM it sends a last `event: shutdown` and the
//! end of the chunked body, so that a client (an `EventSource`) tells "the server went
//! away on purpose, reconnect" from a cut connection, and reconnects to the new release.
//!
//! The body is chunked, one chunk per event: a proxy in between (nginx, HAProxy) passes
//! the last chunk on only when the stream really ended, and closes the client's
//! connection without it when the app's connection was cut.

use std::io::{self, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;

use crate::http::{Request, Response};
use crate::signals::Shutdown;

/// The content type that makes the connection handler stream (see [`stream`]).
pub const CONTENT_TYPE: &str = "text/event-stream";
/// Pause between two `tick` events.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// Upper bound of `/events?count=`.
const MAX_COUNT: u64 = 1_000_000;

/// What `route` answers for `/events`: a marker response carrying the stream's length
/// (`count` ticks, `/events?count=N`; unbounded by default) in its body.
pub fn start(req: &Request) -> Response {
    let count = match req.query_param("count").map(str::parse::<u64>) {
        None => MAX_COUNT,
        Some(Ok(n)) => n.min(MAX_COUNT),
        Some(Err(_)) => {
            return Response::json(400, &json!({"error": "count must be a number"}));
        }
    };
    Response {
        status: 200,
        content_type: CONTENT_TYPE,
        body: count.to_string().into_bytes(),
    }
}

/// Whether `resp` is a stream to run rather than a body to send.
pub fn is_stream(resp: &Response) -> bool {
    resp.status == 200 && resp.content_type == CONTENT_TYPE
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// It sent all its ticks.
    Done,
    /// A shutdown came: it sent `event: shutdown`.
    Shutdown,
}

/// Run the stream of `marker` (from [`start`]) on `out`: the head, `tick` events every
/// [`INTERVAL`] until the count is reached or a shutdown is requested (then a `shutdown`
/// event), and the end of the chunked body. The connection is closed after it.
pub fn stream(
    out: &mut TcpStream,
    marker: &Response,
    version: &str,
    shutdown: &Shutdown,
) -> io::Result<End> {
    let count: u64 = std::str::from_utf8(&marker.body)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(MAX_COUNT);
    out.write_all(head(version).as_bytes())?;
    let mut end = End::Done;
    for n in 1..=count {
        if shutdown.requested() {
            end = End::Shutdown;
            break;
        }
        out.write_all(&chunk(&tick(n, version)))?;
        if n < count && shutdown.sleep(INTERVAL) {
            end = End::Shutdown;
            break;
        }
    }
    if end == End::Shutdown {
        out.write_all(&chunk(&goodbye(version)))?;
    }
    out.write_all(b"0\r\n\r\n")?;
    out.flush()?;
    Ok(end)
}

/// The response head: chunked, never buffered by nginx (`X-Accel-Buffering: no`).
fn head(version: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nTransfer-Encoding: chunked\r\n\
         Cache-Control: no-store\r\nX-Accel-Buffering: no\r\nX-Demo-Version: {version}\r\n\
         Connection: close\r\n\r\n"
    )
}

/// One `tick` event: its id is its number.
pub fn tick(n: u64, version: &str) -> String {
    format!(
        "id: {n}\nevent: tick\ndata: {}\n\n",
        json!({"n": n, "version": version})
    )
}

/// The last event of a stream cut short by a shutdown: reconnect (soon) elsewhere.
pub fn goodbye(version: &str) -> String {
    format!(
        "retry: 100\nevent: shutdown\ndata: {}\n\n",
        json!({"version": version, "reason": "server shutting down; reconnect"})
    )
}

/// `text` as one chunk of a chunked body.
fn chunk(text: &str) -> Vec<u8> {
    let mut v = format!("{:x}\r\n", text.len()).into_bytes();
    v.extend_from_slice(text.as_bytes());
    v.extend_from_slice(b"\r\n");
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_head;
    use std::io::Read;
    use std::net::TcpListener;
    use std::sync::Arc;

    fn req(target: &str) -> Request {
        let raw = format!("GET {target} HTTP/1.1\r\n\r\n");
        parse_head(raw.as_bytes()).unwrap().unwrap().0
    }

    /// Run a stream on a real socket; the client's bytes.
    fn run(target: &str, shutdown: Arc<Shutdown>, stop_after: Option<Duration>) -> (End, String) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, _) = l.accept().unwrap();
        let marker = start(&req(target));
        assert!(is_stream(&marker));
        if let Some(d) = stop_after {
            let s = shutdown.clone();
            std::thread::spawn(move || {
                std::thread::sleep(d);
                s.request();
            });
        }
        let end = stream(&mut server, &marker, "v9", &shutdown).unwrap();
        drop(server);
        let mut got = String::new();
        client.read_to_string(&mut got).unwrap();
        (end, got)
    }

    #[test]
    fn a_counted_stream_sends_its_ticks_and_ends_the_body() {
        let (end, got) = run(
            "/events?count=3",
            Arc::new(Shutdown::for_tests().unwrap()),
            None,
        );
        assert_eq!(end, End::Done);
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.contains("Transfer-Encoding: chunked\r\n"));
        assert!(got.contains("X-Accel-Buffering: no\r\n"));
        assert_eq!(got.matches("event: tick\n").count(), 3, "{got}");
        assert!(got.contains(&String::from_utf8(chunk(&tick(3, "v9"))).unwrap()));
        assert!(!got.contains("event: shutdown"));
        assert!(got.ends_with("\r\n0\r\n\r\n"), "{got}");
    }

    #[test]
    fn a_shutdown_ends_the_stream_with_a_shutdown_event() {
        let shutdown = Arc::new(Shutdown::for_tests().unwrap());
        let t = std::time::Instant::now();
        let (end, got) = run("/events", shutdown, Some(Duration::from_millis(350)));
        assert_eq!(end, End::Shutdown);
        assert!(t.elapsed() < Duration::from_secs(2), "ended promptly");
        let ticks = got.matches("event: tick\n").count();
        assert!((2..=6).contains(&ticks), "{ticks} ticks: {got}");
        assert!(got.ends_with(&format!(
            "{}0\r\n\r\n",
            String::from_utf8(chunk(&goodbye("v9"))).unwrap()
        )));
    }

    #[test]
    fn a_bad_count_is_a_400() {
        let r = start(&req("/events?count=x"));
        assert_eq!(r.status, 400);
        assert!(!is_stream(&r));
    }
}
