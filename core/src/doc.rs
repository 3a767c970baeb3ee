//! The deploy document: one JSON object that flows from stage to stage, stdin to stdout.
//!
//! ```json
//! {"schema": "berth/1", "deploy_id": "20261122T031500Z-3f9c2a1", "project": "shop",
//!  "tag": "3f9c2a1", "previous_tag": "9e8d7c6",
//!  "services": [{"name": "web", "image": "registry.example.com/shop-web:3f9c2a1"}],
//!  "created_at": "2026-11-22T03:15:00.000Z",
//!  "stages": [{"stage": "backup", "status": "ok", "started_at": "...", "duration_ms": 812,
//!              "exit_code": 0, "detail": {...}, "error": null}]}
//! ```
//! Fields this version does not know are kept (the `extra` maps), so a newer stage's
//! additions survive an older stage in the middle of a pipe.

use std::io::Read;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::exit::Failure;
use crate::time;

pub const SCHEMA: &str = "berth/1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub schema: String,
    pub deploy_id: String,
    pub project: String,
    /// The immutable tag being deployed (usually the git SHA). `null` for a document that
    /// only waits or reports and deploys nothing.
    #[serde(default)]
    pub tag: Option<String>,
    /// Filled by the stage that learns it (the swap).
    #[serde(default)]
    pub previous_tag: Option<String>,
    #[serde(default)]
    pub services: Vec<ServiceImage>,
    pub created_at: String,
    #[serde(default)]
    pub stages: Vec<StageRecord>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceImage {
    pub name: String,
    pub image: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: String,
    pub status: Status,
    pub started_at: String,
    pub duration_ms: u64,
    pub exit_code: i32,
    #[serde(default)]
    pub detail: Map<String, Value>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl StageRecord {
    /// Whether this record says traffic moved to the document's release: a swap that
    /// succeeded, or one that failed after its switch (`detail.switched`: the new release
    /// serves, and only a rollback undoes it).
    pub fn moved_traffic(&self) -> bool {
        self.stage == "swap"
            && (self.status == Status::Ok
                || crate::record::read::<crate::record::Swap>(&self.detail)
                    .is_ok_and(|s| s.switched))
    }
}

impl Document {
    /// A new document, as the first stage of a pipeline starts it.
    pub fn new(project: &str, tag: Option<&str>) -> Document {
        let now = time::now();
        let deploy_id = match tag {
            Some(t) => format!("{}-{t}", time::compact(now)),
            None => time::compact(now),
        };
        Document {
            schema: SCHEMA.to_string(),
            deploy_id,
            project: project.to_string(),
            tag: tag.map(str::to_string),
            previous_tag: None,
            services: Vec::new(),
            created_at: time::rfc3339(now),
            stages: Vec::new(),
            extra: Map::new(),
        }
    }

    /// Parse and check a document. Every problem is a [`Failure`] with code 65 whose
    /// message names what is wrong and where.
    pub fn parse(text: &str) -> Result<Document, Failure> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            Failure::bad_document(format!("deploy document on stdin is not valid JSON: {e}"))
        })?;
        Document::from_value(value)
    }

    pub fn from_value(value: Value) -> Result<Document, Failure> {
        let obj = value.as_object().ok_or_else(|| {
            Failure::bad_document(format!(
                "deploy document must be a JSON object, found {}",
                kind_of(&value)
            ))
        })?;
        match obj.get("schema") {
            Some(Value::String(s)) if s == SCHEMA => {}
            Some(Value::String(s)) => {
                return Err(Failure::bad_document(format!(
                    "deploy document has schema \"{s}\"; this berth reads \"{SCHEMA}\""
                )))
            }
            Some(other) => {
                return Err(Failure::bad_document(format!(
                    "deploy document field `schema` must be the string \"{SCHEMA}\", found {}",
                    kind_of(other)
                )))
            }
            None => {
                return Err(Failure::bad_document(format!(
                    "deploy document has no `schema` field (expected \"{SCHEMA}\")"
                )))
            }
        }
        let doc: Document = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            if path == "." || path.is_empty() {
                Failure::bad_document(format!("deploy document: {inner}"))
            } else {
                Failure::bad_document(format!("deploy document field `{path}`: {inner}"))
            }
        })?;
        doc.check()?;
        Ok(doc)
    }

    /// Checks beyond types: times that are times, no empty names.
    fn check(&self) -> Result<(), Failure> {
        let bad = |field: String, what: &str| {
            Err(Failure::bad_document(format!(
                "deploy document field `{field}`: {what}"
            )))
        };
        if self.deploy_id.trim().is_empty() {
            return bad("deploy_id".into(), "must not be empty");
        }
        if self.project.trim().is_empty() {
            return bad("project".into(), "must not be empty");
        }
        if time::parse(&self.created_at).is_none() {
            return bad(
                "created_at".into(),
                &format!("\"{}\" is not an RFC 3339 time", self.created_at),
            );
        }
        for (i, s) in self.stages.iter().enumerate() {
            if s.stage.trim().is_empty() {
                return bad(format!("stages[{i}].stage"), "must not be empty");
            }
            if time::parse(&s.started_at).is_none() {
                return bad(
                    format!("stages[{i}].started_at"),
                    &format!("\"{}\" is not an RFC 3339 time", s.started_at),
                );
            }
            if s.status == Status::Failed && s.exit_code == 0 {
                return bad(
                    format!("stages[{i}].exit_code"),
                    "a failed stage must carry a non-zero exit code",
                );
            }
        }
        Ok(())
    }

    /// The first failed stage, if any.
    pub fn first_failure(&self) -> Option<&StageRecord> {
        self.stages.iter().find(|s| s.status == Status::Failed)
    }

    pub fn has_failed(&self) -> bool {
        self.first_failure().is_some()
    }

    /// The deploy's outcome so far: the exit code of the last stage that recorded a
    /// non-zero one (a rollback that succeeded records 4, one that failed 7), else 0.
    pub fn outcome(&self) -> i32 {
        self.stages
            .iter()
            .rev()
            .find(|s| s.exit_code != 0)
            .map(|s| s.exit_code)
            .unwrap_or(0)
    }

    /// The last record of a stage by name.
    pub fn stage(&self, name: &str) -> Option<&StageRecord> {
        self.stages.iter().rev().find(|s| s.stage == name)
    }

    /// Set (or replace) the image recorded for a service.
    pub fn set_service_image(&mut self, name: &str, image: &str) {
        match self.services.iter_mut().find(|s| s.name == name) {
            Some(s) => s.image = image.to_string(),
            None => self.services.push(ServiceImage {
                name: name.to_string(),
                image: image.to_string(),
                extra: Map::new(),
            }),
        }
    }

    /// One JSON object, no trailing newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a document always serializes")
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Read the document from stdin: only when stdin is not a terminal; empty input
/// (or only whitespace) means "start a new document" and gives `None`.
pub fn read_stdin() -> Result<Option<Document>, Failure> {
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok(None);
    }
    let mut text = String::new();
    stdin.lock().read_to_string(&mut text).map_err(|e| {
        Failure::bad_document(format!("could not read the deploy document on stdin: {e}"))
    })?;
    parse_input(&text)
}

/// [`read_stdin`]'s rule for already-read text.
pub fn parse_input(text: &str) -> Result<Option<Document>, Failure> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    Document::parse(text).map(Some)
}

/// Write the document to stdout as one line. A closed pipe is not an error: the
/// reader went away, which is its business.
pub fn write_stdout(doc: &Document) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let res = writeln!(out, "{}", doc.to_json()).and_then(|_| out.flush());
    match res {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ExitCode;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "schema": "berth/1",
            "deploy_id": "20261122T031500Z-3f9c2a1",
            "project": "shop",
            "tag": "3f9c2a1",
            "previous_tag": null,
            "services": [{"name": "web", "image": "r/shop-web:3f9c2a1", "digest": "sha256:ab"}],
            "created_at": "2026-11-22T03:15:00.000Z",
            "stages": [{
                "stage": "backup", "status": "ok", "started_at": "2026-11-22T03:15:00.100Z",
                "duration_ms": 812, "exit_code": 0, "detail": {"bytes": 10}, "error": null,
                "host": "vps1"
            }],
            "from_the_future": {"x": 1}
        })
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let doc = Document::from_value(sample()).unwrap();
        let back: Value = serde_json::from_str(&doc.to_json()).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn wrong_types_are_named_with_their_path() {
        let mut v = sample();
        v["stages"][0]["duration_ms"] = json!("fast");
        let e = Document::from_value(v).unwrap_err();
        assert_eq!(e.code, ExitCode::BadDocument);
        assert!(e.message.contains("stages[0].duration_ms"), "{}", e.message);

        let mut v = sample();
        v["stages"][0]["status"] = json!("meh");
        let e = Document::from_value(v).unwrap_err();
        assert!(e.message.contains("stages[0].status"), "{}", e.message);

        let mut v = sample();
        v["tag"] = json!(7);
        let e = Document::from_value(v).unwrap_err();
        assert!(e.message.contains("`tag`"), "{}", e.message);
    }

    #[test]
    fn schema_is_checked_first() {
        let mut v = sample();
        v["schema"] = json!("berth/2");
        let e = Document::from_value(v).unwrap_err();
        assert!(e.message.contains("berth/2"), "{}", e.message);
        let mut v = sample();
        v.as_object_mut().unwrap().remove("schema");
        assert!(Document::from_value(v).is_err());
        assert!(Document::parse("[1,2]")
            .unwrap_err()
            .message
            .contains("an array"));
        assert!(Document::parse("{\"schema\":")
            .unwrap_err()
            .message
            .contains("not valid JSON"));
    }

    #[test]
    fn times_are_checked() {
        let mut v = sample();
        v["stages"][0]["started_at"] = json!("noon");
        let e = Document::from_value(v).unwrap_err();
        assert!(e.message.contains("stages[0].started_at"), "{}", e.message);
    }

    #[test]
    fn empty_input_starts_a_new_document() {
        assert!(parse_input("").unwrap().is_none());
        assert!(parse_input("  \n").unwrap().is_none());
        let d = Document::new("shop", Some("abc123"));
        assert!(d.deploy_id.ends_with("Z-abc123"), "{}", d.deploy_id);
        assert_eq!(d.deploy_id.len(), "20261122T031500Z-abc123".len());
        let again = parse_input(&d.to_json()).unwrap().unwrap();
        assert_eq!(again, d);
    }

    #[test]
    fn outcome_is_the_last_nonzero_code() {
        let mut d = Document::new("shop", Some("t"));
        assert_eq!(d.outcome(), 0);
        let rec = |stage: &str, status, code| StageRecord {
            stage: stage.into(),
            status,
            started_at: time::now_rfc3339(),
            duration_ms: 1,
            exit_code: code,
            detail: Map::new(),
            error: None,
            extra: Map::new(),
        };
        d.stages.push(rec("swap", Status::Ok, 0));
        d.stages.push(rec("smoke", Status::Failed, 4));
        assert_eq!(d.outcome(), 4);
        assert_eq!(d.first_failure().unwrap().stage, "smoke");
        d.stages.push(rec("rollback", Status::Failed, 7));
        assert_eq!(d.outcome(), 7);
    }
}
