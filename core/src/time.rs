//! Times as the document writes them: RFC 3339, UTC, milliseconds.

use jiff::Timestamp;

pub fn now() -> Timestamp {
    Timestamp::now()
}

/// `2026-11-22T03:15:00.123Z`
pub fn rfc3339(ts: Timestamp) -> String {
    format!("{ts:.3}")
}

pub fn now_rfc3339() -> String {
    rfc3339(now())
}

/// `20261122T031500Z`, the first half of a deploy id.
pub fn compact(ts: Timestamp) -> String {
    ts.strftime("%Y%m%dT%H%M%SZ").to_string()
}

/// Parse an RFC 3339 time as written in a document.
pub fn parse(text: &str) -> Option<Timestamp> {
    text.parse::<Timestamp>().ok()
}

pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let ts: Timestamp = "2026-11-22T03:15:00.5Z".parse().unwrap();
        assert_eq!(rfc3339(ts), "2026-11-22T03:15:00.500Z");
        assert_eq!(compact(ts), "20261122T031500Z");
        assert!(parse("2026-11-22T03:15:00Z").is_some());
        assert!(parse("yesterday").is_none());
    }
}
