//! Dead-man pings for cron jobs, healthchecks.io style: `URL/start` when the job begins,
//! `URL` when it succeeded, `URL/fail` (the error line as the body) when it failed. The
//! monitor raises the alarm when the success ping does not come, so a backup that silently
//! stopped running is noticed too.
//!
//! A ping never changes the job's outcome: each is bounded (a few seconds, one retry) and
//! its failure is a warning. The URL holds the check's secret: it is never printed.

use std::time::Duration;

use crate::{http, msg, scrub};

/// How long one ping may take, and how many times it is tried.
const TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPTS: u32 = 2;

/// The pinger for one job.
pub struct Ping {
    url: String,
    agent: ureq::Agent,
}

impl Ping {
    /// `None` when no URL is given.
    pub fn new(url: Option<&str>) -> Option<Ping> {
        let url = url?.trim().trim_end_matches('/');
        (!url.is_empty()).then(|| Ping {
            url: url.to_string(),
            agent: http::agent(TIMEOUT),
        })
    }

    /// `URL/start`.
    pub fn start(&self) {
        self.send("/start", "");
    }

    /// `URL` after a success, `URL/fail` with `error` after a failure.
    pub fn finish(&self, error: Option<&str>) {
        match error {
            None => self.send("", ""),
            Some(e) => self.send("/fail", e),
        }
    }

    fn send(&self, suffix: &str, body: &str) {
        let url = format!("{}{suffix}", self.url);
        let body = scrub::scrub(body, std::slice::from_ref(&self.url));
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let res = self
                .agent
                .post(&url)
                .header("Content-Type", "text/plain; charset=utf-8")
                .send(body.as_bytes());
            match res {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => last = format!("HTTP {}", r.status().as_u16()),
                Err(e) => last = http::describe_error(&e),
            }
        }
        msg::warn(format!(
            "the {} ping to {} failed ({last}); the job's outcome is unchanged",
            if suffix.is_empty() {
                "success"
            } else {
                &suffix[1..]
            },
            host_of(&self.url)
        ));
    }
}

/// Only the host of a ping URL may be shown (its path is the check's secret).
fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "the ping URL".to_string())
}

/// Whether `s` is an http(s) URL (for a `--ping` value parser).
pub fn parse_url(s: &str) -> Result<String, String> {
    match url::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
            Ok(s.to_string())
        }
        _ => Err("not an http(s) URL".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// A one-thread HTTP server recording "METHOD PATH BODY" and answering `status`.
    fn server(status: u16) -> (String, Arc<Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/ping/abc-secret-uuid", l.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                r.read_line(&mut first).unwrap();
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let words: Vec<&str> = first.split_whitespace().collect();
                s2.lock().unwrap().push(format!(
                    "{} {} {}",
                    words[0],
                    words[1],
                    String::from_utf8_lossy(&body)
                ));
                let mut c = conn;
                let _ = write!(
                    c,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        (url, seen)
    }

    #[test]
    fn start_success_and_fail_with_the_error_line() {
        let (url, seen) = server(200);
        let p = Ping::new(Some(&url)).unwrap();
        p.start();
        p.finish(None);
        p.finish(Some("pg_dump failed: postgresql://u:pw@db/x"));
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[0], "POST /ping/abc-secret-uuid/start ");
        assert_eq!(seen[1], "POST /ping/abc-secret-uuid ");
        assert_eq!(
            seen[2],
            "POST /ping/abc-secret-uuid/fail pg_dump failed: postgresql://u:***@db/x"
        );
    }

    #[test]
    fn a_failing_monitor_is_tried_twice_and_never_fails_the_job() {
        let (url, seen) = server(500);
        Ping::new(Some(&url)).unwrap().finish(None);
        assert_eq!(seen.lock().unwrap().len(), 2);
        // Nothing listens: bounded, no panic.
        let dead = format!("http://127.0.0.1:{}/x", {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        });
        Ping::new(Some(&dead)).unwrap().start();
        assert!(Ping::new(Some("  ")).is_none());
        assert!(parse_url("ftp://x").is_err() && parse_url("https://hc-ping.com/u").is_ok());
        assert_eq!(host_of(&url), "127.0.0.1");
    }
}
