//! The one HTTP client berth uses (ureq 3): bounded timeouts always, status codes read by
//! the caller (never turned into errors), no redirects followed, no proxy from the
//! environment (probes go to local addresses).

use std::time::Duration;

/// What a request brought back.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Largest body berth reads from a probe or an API (bytes).
pub const BODY_LIMIT: u64 = 256 * 1024;

/// An agent whose every call ends within `timeout`.
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// A request's failure as a short, stable phrase (no timings), so that repeated
/// identical failures can be recognised as one state.
pub fn describe_error(e: &ureq::Error) -> String {
    use std::io::ErrorKind;
    match e {
        ureq::Error::Timeout(_) => "timed out".to_string(),
        ureq::Error::Io(io) => match io.kind() {
            ErrorKind::ConnectionRefused => "connection refused".to_string(),
            ErrorKind::ConnectionReset => "connection reset".to_string(),
            ErrorKind::ConnectionAborted => "connection aborted".to_string(),
            ErrorKind::TimedOut => "timed out".to_string(),
            ErrorKind::UnexpectedEof => "connection closed before a response".to_string(),
            _ => io.to_string(),
        },
        ureq::Error::HostNotFound => "host not found".to_string(),
        other => other.to_string(),
    }
}

/// GET `url` with extra headers, within `timeout`.
pub fn get(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<Response, String> {
    let mut req = agent.get(url);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let res = req.config().timeout_global(Some(timeout)).build().call();
    read(res)
}

/// POST a JSON body to `url` within `timeout` (notifications).
pub fn post_json(
    agent: &ureq::Agent,
    url: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<Response, String> {
    let res = agent
        .post(url)
        .config()
        .timeout_global(Some(timeout))
        .build()
        .send_json(body);
    read(res)
}

fn read(res: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Response, String> {
    let mut resp = res.map_err(|e| describe_error(&e))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(BODY_LIMIT)
        .read_to_string()
        .unwrap_or_default();
    Ok(Response { status, body })
}
