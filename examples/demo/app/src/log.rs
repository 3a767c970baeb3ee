//! One JSON object per line on stdout for events; plain lines on stderr for errors.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Builds the line `{"event":<name>, <fields...>, "unix_ms":...}` (unix_ms unless given).
pub fn event_line(name: &str, fields: Value) -> String {
    let mut obj = Map::new();
    obj.insert("event".into(), name.into());
    if let Value::Object(map) = fields {
        obj.extend(map);
    }
    obj.entry("unix_ms").or_insert_with(|| unix_ms().into());
    Value::Object(obj).to_string()
}

/// Writes an event line to stdout. A closed stdout is not worth dying for.
pub fn event(name: &str, fields: Value) {
    let line = event_line(name, fields);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A human-readable error or warning line on stderr.
pub fn error(msg: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr().lock(), "berth-demo-app: error: {msg}");
}

pub fn warn(msg: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr().lock(), "berth-demo-app: warning: {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_lines_start_with_the_event_and_end_with_the_time() {
        let line = event_line("ready", json!({"version": "v1", "boot_ms": 12}));
        assert!(
            line.starts_with(r#"{"event":"ready","version":"v1","boot_ms":12,"unix_ms":"#),
            "{line}"
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert!(v["unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
        assert!(!line.contains('\n'));
    }

    #[test]
    fn a_given_unix_ms_is_kept() {
        let line = event_line("ready", json!({"unix_ms": 5}));
        assert_eq!(line, r#"{"event":"ready","unix_ms":5}"#);
    }
}
