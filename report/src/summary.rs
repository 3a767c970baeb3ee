//! What a deploy document says, reduced to what people and webhooks need: how it ended
//! (success, failed, rolled back, CRITICAL), which tag runs now, how long each stage took.

use berth_core::doc::{Document, StageRecord, Status};
use berth_core::{time, ExitCode};
use serde_json::{json, Map, Value};

/// How a deploy ended, as the notifications and the webhook name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Outcome 0.
    Success,
    /// A failure that the rollback did not (or did not need to) undo.
    Failed,
    /// Outcome 4 with a rollback record that succeeded: the previous release serves.
    RolledBack,
    /// Outcome 7: the rollback failed, a person must act.
    Critical,
}

impl Verdict {
    pub fn of(doc: &Document) -> Verdict {
        match doc.outcome() {
            0 => Verdict::Success,
            7 => Verdict::Critical,
            4 if rollback_succeeded(doc) => Verdict::RolledBack,
            _ => Verdict::Failed,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Verdict::Success => "success",
            Verdict::Failed => "failed",
            Verdict::RolledBack => "rolled_back",
            Verdict::Critical => "critical",
        }
    }
}

fn rollback_succeeded(doc: &Document) -> bool {
    doc.stage("rollback")
        .is_some_and(|r| r.status == Status::Ok && r.exit_code == 4)
}

/// Whether traffic moved to the new tag (a swap that succeeded).
fn swapped(doc: &Document) -> bool {
    doc.stage("swap").is_some_and(|s| s.moved_traffic())
}

/// The tag serving now, as far as the document knows, with a word on why.
pub fn running_tag(doc: &Document) -> (Option<String>, &'static str) {
    match Verdict::of(doc) {
        Verdict::Success => (doc.tag.clone(), "deployed"),
        Verdict::RolledBack => (doc.previous_tag.clone(), "rolled back"),
        Verdict::Critical => (None, "unknown: the rollback failed"),
        Verdict::Failed if swapped(doc) => (doc.tag.clone(), "new, not healthy; no rollback ran"),
        Verdict::Failed => (doc.previous_tag.clone(), "unchanged"),
    }
}

/// The outcome's name and meaning; codes outside the table are named `exit_N`.
pub fn outcome_words(code: i32) -> (String, String) {
    match ExitCode::from_code(code) {
        Some(c) => (c.name().to_string(), c.meaning().to_string()),
        None => (format!("exit_{code}"), format!("exit code {code}")),
    }
}

/// When the deploy started and ended (the latest end of any stage), and the span in ms.
pub fn span(doc: &Document) -> (String, Option<String>, Option<u64>) {
    let start = time::parse(&doc.created_at);
    let end = doc
        .stages
        .iter()
        .filter_map(|s| {
            let t = time::parse(&s.started_at)?;
            let d = jiff::SignedDuration::from_millis(i64::try_from(s.duration_ms).ok()?);
            t.checked_add(d).ok()
        })
        .max();
    let total = match (start, end) {
        (Some(a), Some(b)) if b >= a => {
            let ms = b.duration_since(a).as_millis();
            u64::try_from(ms).ok()
        }
        _ => None,
    };
    (doc.created_at.clone(), end.map(time::rfc3339), total)
}

/// The error that explains a failed deploy: the first failed stage's, and for a failed
/// rollback the rollback's own too.
pub fn main_error(doc: &Document) -> Option<(String, String)> {
    let f = doc.first_failure()?;
    Some((
        f.stage.clone(),
        f.error.clone().unwrap_or_else(|| "(no message)".into()),
    ))
}

/// The JSON summary: the webhook's body and `--format json`. No secrets: built only
/// from the document.
pub fn to_json(doc: &Document) -> Value {
    let code = doc.outcome();
    let (name, meaning) = outcome_words(code);
    let verdict = Verdict::of(doc);
    let (running, why) = running_tag(doc);
    let (started_at, finished_at, duration_ms) = span(doc);
    let stages: Vec<Value> = doc.stages.iter().map(stage_json).collect();
    let (failed_stage, error) = match main_error(doc) {
        Some((s, e)) => (Value::String(s), Value::String(e)),
        None => (Value::Null, Value::Null),
    };
    let rollback_error = match (verdict, doc.stage("rollback")) {
        (Verdict::Critical, Some(r)) => r.error.clone().map(Value::String),
        _ => None,
    };
    let mut m = Map::new();
    m.insert("deploy_id".into(), json!(doc.deploy_id));
    m.insert("project".into(), json!(doc.project));
    m.insert("tag".into(), json!(doc.tag));
    m.insert("previous_tag".into(), json!(doc.previous_tag));
    m.insert("running_tag".into(), json!(running));
    m.insert("running_tag_reason".into(), json!(why));
    m.insert("status".into(), json!(verdict.name()));
    m.insert(
        "outcome".into(),
        json!({"code": code, "name": name, "meaning": meaning}),
    );
    m.insert("failed_stage".into(), failed_stage);
    m.insert("error".into(), error);
    if let Some(e) = rollback_error {
        m.insert("rollback_error".into(), e);
    }
    m.insert(
        "services".into(),
        Value::Array(
            doc.services
                .iter()
                .map(|s| json!({"name": s.name, "image": s.image}))
                .collect(),
        ),
    );
    m.insert("started_at".into(), json!(started_at));
    m.insert("finished_at".into(), json!(finished_at));
    m.insert("duration_ms".into(), json!(duration_ms));
    m.insert("stages".into(), Value::Array(stages));
    Value::Object(m)
}

fn stage_json(s: &StageRecord) -> Value {
    json!({
        "stage": s.stage,
        "status": status_word(s.status),
        "duration_ms": s.duration_ms,
        "exit_code": s.exit_code,
        "error": s.error,
    })
}

pub fn status_word(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::Failed => "failed",
        Status::Skipped => "skipped",
    }
}

/// `2026-11-22 03:15:00Z` from an RFC 3339 time (the text itself when it is not one).
pub fn human_time(rfc3339: &str) -> String {
    match time::parse(rfc3339) {
        Some(t) => t.strftime("%Y-%m-%d %H:%M:%SZ").to_string(),
        None => rfc3339.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use berth_core::human;

    pub fn rec(stage: &str, status: Status, code: i32, ms: u64) -> StageRecord {
        StageRecord {
            stage: stage.into(),
            status,
            started_at: "2026-11-22T03:15:01.000Z".into(),
            duration_ms: ms,
            exit_code: code,
            detail: Map::new(),
            error: (status == Status::Failed).then(|| format!("{stage} broke")),
            extra: Map::new(),
        }
    }

    pub fn doc(stages: Vec<StageRecord>) -> Document {
        let mut d = Document::new("shop", Some("v2"));
        d.created_at = "2026-11-22T03:15:00.000Z".into();
        d.previous_tag = Some("v1".into());
        d.stages = stages;
        d
    }

    #[test]
    fn verdicts_and_running_tags() {
        let ok = doc(vec![rec("swap", Status::Ok, 0, 10)]);
        assert_eq!(Verdict::of(&ok), Verdict::Success);
        assert_eq!(running_tag(&ok).0.as_deref(), Some("v2"));

        let before_switch = doc(vec![rec("migrate", Status::Failed, 6, 10)]);
        assert_eq!(Verdict::of(&before_switch), Verdict::Failed);
        assert_eq!(running_tag(&before_switch).0.as_deref(), Some("v1"));

        let unhealthy = doc(vec![
            rec("swap", Status::Ok, 0, 10),
            rec("smoke", Status::Failed, 4, 10),
        ]);
        assert_eq!(Verdict::of(&unhealthy), Verdict::Failed);
        assert_eq!(running_tag(&unhealthy).0.as_deref(), Some("v2"));

        let mut rolled = unhealthy.clone();
        rolled.stages.push(rec("rollback", Status::Ok, 4, 10));
        assert_eq!(Verdict::of(&rolled), Verdict::RolledBack);
        assert_eq!(running_tag(&rolled).0.as_deref(), Some("v1"));

        let mut critical = unhealthy;
        critical.stages.push(rec("rollback", Status::Failed, 7, 10));
        assert_eq!(Verdict::of(&critical), Verdict::Critical);
        assert_eq!(running_tag(&critical).0, None);
        let j = to_json(&critical);
        assert_eq!(j["status"], "critical");
        assert_eq!(j["outcome"]["name"], "rollback_failed");
        assert_eq!(j["failed_stage"], "smoke");
        assert_eq!(j["rollback_error"], "rollback broke");
    }

    #[test]
    fn span_runs_to_the_last_stage_end() {
        let d = doc(vec![rec("swap", Status::Ok, 0, 2500)]);
        let (_, end, total) = span(&d);
        assert_eq!(end.as_deref(), Some("2026-11-22T03:15:03.500Z"));
        assert_eq!(total, Some(3500));
        assert_eq!(span(&doc(vec![])).2, None);
    }

    #[test]
    fn human_units() {
        assert_eq!(human::elapsed_ms(812), "812ms");
        assert_eq!(human::elapsed_ms(2140), "2.1s");
        assert_eq!(human::elapsed_ms(72_000), "1m 12s");
        assert_eq!(human::elapsed_ms(3_780_000), "1h 03m");
        assert_eq!(
            human_time("2026-11-22T03:15:00.500Z"),
            "2026-11-22 03:15:00Z"
        );
        assert_eq!(outcome_words(9).0, "exit_9");
    }
}
