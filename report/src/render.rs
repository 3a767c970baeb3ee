//! The report for people (text or Markdown) and the notification message.

use std::fmt::Write as _;

use berth_core::doc::{Document, StageRecord, Status};
use berth_core::time;
use serde_json::Value;

use crate::summary::{self, human_time, Verdict};
use berth_core::{human, record};

/// The detail fields worth a reader's eye, per known stage, best first: fields of the
/// stage's record in [`berth_core::record`] (a test checks each). Unknown stages (and
/// known ones that recorded none of these) show their first few plain fields.
fn preferred_keys(stage: &str) -> &'static [&'static str] {
    match stage {
        "preflight" => &[
            "docker_version",
            "compose_version",
            "services",
            "test_command",
        ],
        "pull" => &["services"],
        "backup" => &["file", "target", "bytes", "verification"],
        "migrate" => &[
            "command",
            "service",
            "log",
            "old_version_ready",
            "restore_command",
        ],
        "swap" => &["services", "previous_tag", "drain_ms"],
        "rollback" => &["to", "services", "manual_command"],
        "maintenance" => &["state", "window_ms"],
        _ => &[],
    }
}

/// One short line: the key detail of a stage record.
pub fn key_detail(r: &StageRecord) -> String {
    if r.status == Status::Skipped {
        if let Some(Value::String(reason)) = r.detail.get("reason") {
            return format!("skipped: {reason}");
        }
    }
    if r.detail.contains_key("targets") {
        if let Ok(h) = record::read::<record::Health>(&r.detail) {
            return targets_line(&h.targets);
        }
    }
    let mut parts: Vec<String> = preferred_keys(&r.stage)
        .iter()
        .filter_map(|k| r.detail.get(*k).and_then(|v| show(k, v)))
        .take(3)
        .collect();
    if parts.is_empty() {
        parts = r
            .detail
            .iter()
            .filter(|(k, _)| k.as_str() != "reason")
            .filter_map(|(k, v)| show(k, v))
            .take(3)
            .collect();
    }
    clip(&parts.join(", "), 100)
}

/// healthwait/smoke: how many targets were ready, or the first one that was not.
fn targets_line(targets: &[record::TargetResult]) -> String {
    let ready = targets.iter().filter(|t| t.ready).count();
    if let Some(bad) = targets.iter().find(|t| !t.ready) {
        let what = if bad.target.is_empty() {
            "a target"
        } else {
            &bad.target
        };
        let err = bad.last_error.as_deref().unwrap_or("not ready");
        let died = if bad.died { " (died)" } else { "" };
        return clip(&format!("{what}: {err}{died}"), 100);
    }
    let slowest = targets.iter().filter_map(|t| t.time_to_ready_ms).max();
    match slowest {
        Some(ms) => format!(
            "{ready}/{} ready in {}",
            targets.len(),
            human::elapsed_ms(ms)
        ),
        None => format!("{ready}/{} ready", targets.len()),
    }
}

/// `key=value` for a plain value; `None` for what would not fit on a line.
fn show(key: &str, v: &Value) -> Option<String> {
    let text = match v {
        Value::Null => return None,
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_u64() {
            Some(ms) if key.ends_with("_ms") => human::elapsed_ms(ms),
            Some(b) if key.ends_with("bytes") => human::bytes(b),
            _ => n.to_string(),
        },
        Value::String(s) if s.is_empty() => return None,
        Value::String(s) => clip(s, 60),
        Value::Array(items) => {
            let names: Vec<String> = items
                .iter()
                .filter_map(|i| match i {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Object(o) => o
                        .get("name")
                        .or_else(|| o.get("service"))
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    _ => None,
                })
                .collect();
            if names.is_empty() {
                if items.is_empty() {
                    return None;
                }
                format!("{} items", items.len())
            } else {
                clip(&names.join(","), 60)
            }
        }
        Value::Object(_) => return None,
    };
    let key = key.strip_suffix("_ms").unwrap_or(key);
    Some(format!("{key}={text}"))
}

fn clip(s: &str, max: usize) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= max {
        one
    } else {
        let mut t: String = one.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The maintenance window's length, when the document recorded one: a `window_ms`
/// in a maintenance record, else the time from the first maintenance record's start
/// to the last one's end.
pub fn maintenance_window_ms(doc: &Document) -> Option<u64> {
    let recs: Vec<&StageRecord> = doc
        .stages
        .iter()
        .filter(|s| s.stage == "maintenance")
        .collect();
    if let Some(ms) = recs.iter().rev().find_map(|r| {
        record::read::<record::Maintenance>(&r.detail)
            .ok()?
            .window_ms
            .flatten()
    }) {
        return Some(ms);
    }
    if recs.len() < 2 {
        return None;
    }
    let start = time::parse(&recs[0].started_at)?;
    let last = recs[recs.len() - 1];
    let end = time::parse(&last.started_at)?
        .checked_add(jiff::SignedDuration::from_millis(
            i64::try_from(last.duration_ms).ok()?,
        ))
        .ok()?;
    u64::try_from(end.duration_since(start).as_millis()).ok()
}

fn headline(doc: &Document) -> String {
    let code = doc.outcome();
    let (_, meaning) = summary::outcome_words(code);
    let word = match Verdict::of(doc) {
        Verdict::Success => "SUCCESS".to_string(),
        Verdict::Failed => format!("FAILED (exit {code}: {meaning})"),
        Verdict::RolledBack => format!("ROLLED BACK (exit {code})"),
        Verdict::Critical => format!("CRITICAL (exit {code}: {meaning})"),
    };
    format!("Deploy {} of {}: {word}", doc.deploy_id, doc.project)
}

fn tag_line(doc: &Document) -> String {
    let (_, _, total) = summary::span(doc);
    format!(
        "tag {}, previous {}; started {}{}",
        doc.tag.as_deref().unwrap_or("(none)"),
        doc.previous_tag.as_deref().unwrap_or("(unknown)"),
        human_time(&doc.created_at),
        total
            .map(|t| format!(", took {}", human::elapsed_ms(t)))
            .unwrap_or_default()
    )
}

fn running_line(doc: &Document) -> String {
    match summary::running_tag(doc) {
        (Some(t), why) => format!("Now running: {t} ({why})"),
        (None, why) => format!("Now running: {why}"),
    }
}

/// The lines after the table: rollback and CRITICAL.
fn alarm_lines(doc: &Document) -> Vec<String> {
    let mut out = Vec::new();
    let failed = summary::main_error(doc);
    match Verdict::of(doc) {
        Verdict::RolledBack => {
            let (stage, err) = failed.unwrap_or_else(|| ("a stage".into(), "failed".into()));
            out.push(format!(
                "ROLLBACK: {stage} failed after the switch ({err}); rolled back to {}",
                doc.previous_tag
                    .as_deref()
                    .unwrap_or("the previous release")
            ));
        }
        Verdict::Critical => {
            let rb = doc.stage("rollback");
            let why = rb
                .and_then(|r| r.error.clone())
                .unwrap_or_else(|| "the rollback failed".into());
            out.push(format!(
                "CRITICAL: the rollback to {} failed: {why}. A person must act now.",
                doc.previous_tag
                    .as_deref()
                    .unwrap_or("the previous release")
            ));
            if let Some(cmd) = rb.and_then(manual_command) {
                out.push(format!("CRITICAL: to restore by hand: {cmd}"));
            }
        }
        Verdict::Failed | Verdict::Success => {}
    }
    if let Some(ms) = maintenance_window_ms(doc) {
        out.push(format!("Maintenance window: {}", human::elapsed_ms(ms)));
    }
    out
}

fn manual_command(r: &StageRecord) -> Option<String> {
    record::read::<record::Rollback>(&r.detail)
        .ok()?
        .manual_command
}

fn status_cell(r: &StageRecord) -> String {
    match r.status {
        Status::Ok if r.exit_code != 0 => format!("ok ({})", r.exit_code),
        Status::Ok => "ok".into(),
        Status::Failed => format!("FAILED ({})", r.exit_code),
        Status::Skipped => "skipped".into(),
    }
}

/// The plain-text report (stderr and the log file).
pub fn text(doc: &Document) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", headline(doc));
    let _ = writeln!(s, "  {}", tag_line(doc));
    if doc.stages.is_empty() {
        let _ = writeln!(s, "  (no stages recorded)");
    } else {
        let width = doc
            .stages
            .iter()
            .map(|r| r.stage.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let _ = writeln!(
            s,
            "  {:width$}  {:12}  {:>8}  DETAIL",
            "STAGE", "STATUS", "TIME"
        );
        for r in &doc.stages {
            let detail = key_detail(r);
            let _ = writeln!(
                s,
                "  {:width$}  {:12}  {:>8}  {}",
                r.stage,
                status_cell(r),
                human::elapsed_ms(r.duration_ms),
                detail
            )
            .map(|_| ());
            if let Some(e) = &r.error {
                let _ = writeln!(s, "  {:width$}  error: {}", "", clip(e, 300));
            }
        }
    }
    let _ = writeln!(s, "  {}", running_line(doc));
    for l in alarm_lines(doc) {
        let _ = writeln!(s, "  {l}");
    }
    s.lines().map(str::trim_end).collect::<Vec<_>>().join("\n") + "\n"
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The Markdown report (for a CI summary or a ticket).
pub fn markdown(doc: &Document) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "### {}\n", md_cell(&headline(doc)));
    let _ = writeln!(s, "{}\n", md_cell(&tag_line(doc)));
    if !doc.stages.is_empty() {
        let _ = writeln!(s, "| Stage | Status | Time | Detail |");
        let _ = writeln!(s, "|---|---|--:|---|");
        for r in &doc.stages {
            let mut detail = key_detail(r);
            if let Some(e) = &r.error {
                if !detail.is_empty() {
                    detail.push_str("; ");
                }
                detail.push_str(&format!("error: {}", clip(e, 300)));
            }
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                md_cell(&r.stage),
                status_cell(r),
                human::elapsed_ms(r.duration_ms),
                md_cell(&detail)
            );
        }
        s.push('\n');
    }
    let _ = writeln!(s, "**{}**", md_cell(&running_line(doc)));
    for l in alarm_lines(doc) {
        let _ = writeln!(s, "\n> **{}**", md_cell(&l));
    }
    s
}

/// The notification text: plain, short, distinct per ending.
pub fn message(doc: &Document) -> String {
    let tag = doc.tag.as_deref().unwrap_or("(no tag)");
    let prev = doc
        .previous_tag
        .as_deref()
        .unwrap_or("the previous release");
    let (_, _, total) = summary::span(doc);
    let took = total
        .map(|t| format!(" in {}", human::elapsed_ms(t)))
        .unwrap_or_default();
    let code = doc.outcome();
    let (_, meaning) = summary::outcome_words(code);
    let failed = summary::main_error(doc);
    let mut s = match Verdict::of(doc) {
        Verdict::Success => format!("✅ DEPLOYED: {} {tag}{took} (was {prev}).", doc.project),
        Verdict::Failed => {
            let (stage, err) = failed.unwrap_or_else(|| ("?".into(), "?".into()));
            let (running, why) = summary::running_tag(doc);
            format!(
                "❌ DEPLOY FAILED: {} {tag} at stage {stage} (exit {code}: {meaning}).\nError: {}\nRunning: {} ({why}).",
                doc.project,
                clip(&err, 500),
                running.as_deref().unwrap_or("unknown")
            )
        }
        Verdict::RolledBack => {
            let (stage, err) = failed.unwrap_or_else(|| ("?".into(), "?".into()));
            format!(
                "⚠️ ROLLED BACK: {} {tag} failed at stage {stage} after the switch; {prev} serves again (exit {code}).\nError: {}",
                doc.project,
                clip(&err, 500)
            )
        }
        Verdict::Critical => {
            let rb = doc.stage("rollback");
            let why = rb
                .and_then(|r| r.error.clone())
                .unwrap_or_else(|| "the rollback failed".into());
            let mut m = format!(
                "🚨 CRITICAL: {} {tag} failed and the rollback to {prev} FAILED. A person must act now.\nRollback error: {}",
                doc.project,
                clip(&why, 500)
            );
            if let Some((stage, err)) = failed {
                m.push_str(&format!("\nFirst failure: {stage}: {}", clip(&err, 300)));
            }
            if let Some(cmd) = rb.and_then(manual_command) {
                m.push_str(&format!("\nRestore by hand: {cmd}"));
            }
            m
        }
    };
    s.push_str(&format!("\nDeploy {}", doc.deploy_id));
    let stages: Vec<String> = doc
        .stages
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r.stage,
                summary::status_word(r.status),
                human::elapsed_ms(r.duration_ms)
            )
        })
        .collect();
    if !stages.is_empty() {
        s.push_str(&format!("\nStages: {}", stages.join(" · ")));
    }
    if let Some(ms) = maintenance_window_ms(doc) {
        s.push_str(&format!("\nMaintenance window: {}", human::elapsed_ms(ms)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::tests::{doc, rec};
    use serde_json::json;

    #[test]
    fn key_details_of_known_and_unknown_stages() {
        let mut b = rec("backup", Status::Ok, 0, 10);
        b.detail.insert("file".into(), json!("/srv/b/x.dump"));
        b.detail.insert("bytes".into(), json!(12_345_678));
        b.detail.insert("noise".into(), json!({"a": 1}));
        assert_eq!(key_detail(&b), "file=/srv/b/x.dump, bytes=11.8 MiB");

        let mut u = rec("canary", Status::Ok, 0, 10);
        u.detail.insert("weight".into(), json!(5));
        u.detail.insert("wait_ms".into(), json!(1500));
        assert_eq!(key_detail(&u), "weight=5, wait=1.5s");

        let mut h = rec("smoke", Status::Failed, 4, 10);
        h.detail.insert(
            "targets".into(),
            json!([{"target": "http://x/", "ready": false, "last_error": "status 503"}]),
        );
        assert_eq!(key_detail(&h), "http://x/: status 503");

        let mut sk = rec("migrate", Status::Skipped, 0, 0);
        sk.detail
            .insert("reason".into(), json!("no DEPLOY_MIGRATE_CMD"));
        assert_eq!(key_detail(&sk), "skipped: no DEPLOY_MIGRATE_CMD");
    }

    #[test]
    fn preferred_keys_are_fields_the_stages_write() {
        use berth_core::record::{defines, Record};
        fn check<T: Record>(stage: &str) {
            for k in preferred_keys(stage) {
                assert!(defines::<T>(k), "{stage}: no stage writes {k:?}");
            }
        }
        check::<record::Preflight>("preflight");
        check::<record::Pull>("pull");
        check::<record::Backup>("backup");
        check::<record::Migrate>("migrate");
        check::<record::Swap>("swap");
        check::<record::Rollback>("rollback");
        check::<record::Maintenance>("maintenance");
    }

    #[test]
    fn text_has_rollback_and_critical_lines() {
        let mut d = doc(vec![
            rec("swap", Status::Ok, 0, 10),
            rec("smoke", Status::Failed, 4, 10),
            rec("rollback", Status::Ok, 4, 10),
        ]);
        let t = text(&d);
        assert!(t.contains("ROLLED BACK (exit 4)"), "{t}");
        assert!(t.contains("Now running: v1 (rolled back)"), "{t}");
        assert!(t.contains("ROLLBACK: smoke failed after the switch"), "{t}");
        assert!(message(&d).starts_with("⚠️ ROLLED BACK: shop v2"));

        d.stages[2] = rec("rollback", Status::Failed, 7, 10);
        d.stages[2]
            .detail
            .insert("manual_command".into(), json!("berth-rollback --to v1 web"));
        let t = text(&d);
        assert!(t.contains("CRITICAL: the rollback to v1 failed"), "{t}");
        assert!(t.contains("berth-rollback --to v1 web"), "{t}");
        assert!(markdown(&d).contains("> **CRITICAL"));
        assert!(message(&d).starts_with("🚨 CRITICAL: shop v2"));
    }

    #[test]
    fn maintenance_window_from_records() {
        let mut on = rec("maintenance", Status::Ok, 0, 100);
        on.started_at = "2026-11-22T03:15:00.000Z".into();
        let mut off = rec("maintenance", Status::Ok, 0, 100);
        off.started_at = "2026-11-22T03:15:09.900Z".into();
        let d = doc(vec![on, off]);
        assert_eq!(maintenance_window_ms(&d), Some(10_000));
        assert!(text(&d).contains("Maintenance window: 10.0s"));
    }
}
