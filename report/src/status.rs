//! `berth-report status` (what runs now) and `berth-report history` (the ledger).

use std::collections::BTreeMap;
use std::io::Write as _;

use anyhow::Result;
use std::path::PathBuf;
use std::time::Duration;

use berth_core::backups;
use berth_core::cli::{parse_duration, Context};
use berth_core::compose::{LABEL_ONEOFF, LABEL_PROJECT, LABEL_SERVICE};
use berth_core::doc::Document;
use berth_core::docker::{self, Container};
use berth_core::swarm::Engine;
use berth_core::{ledger, msg, time, ExitCode, Failure};
use serde_json::{json, Value};

use crate::summary::{self, human_time};
use berth_core::{human, record};

/// The tag of an image reference: what follows the last `:` after the last `/`.
pub fn tag_of(image: &str) -> Option<&str> {
    let last = image.rsplit('/').next().unwrap_or(image);
    let last = last.split('@').next().unwrap_or(last);
    last.rsplit_once(':').map(|(_, t)| t)
}

/// One service as it runs now.
#[derive(Debug, Clone)]
pub struct ServiceNow {
    pub name: String,
    pub containers: Vec<Container>,
}

impl ServiceNow {
    fn running(&self) -> Vec<&Container> {
        self.containers.iter().filter(|c| c.state.running).collect()
    }

    /// The images its running containers use (more than one mid-swap).
    pub fn images(&self) -> Vec<String> {
        let mut v: Vec<String> = self.running().iter().map(|c| c.image.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn tags(&self) -> Vec<String> {
        self.images()
            .iter()
            .map(|i| tag_of(i).unwrap_or("(none)").to_string())
            .collect()
    }

    /// When its oldest running container started.
    pub fn since(&self) -> Option<String> {
        self.running()
            .iter()
            .map(|c| c.state.started_at.clone())
            .filter(|s| time::parse(s).is_some())
            .min()
    }

    /// `healthy`, `2 healthy, 1 starting`, `running (no healthcheck)`, `not running (exited 1)`.
    pub fn health(&self) -> String {
        let running = self.running();
        if running.is_empty() {
            return match self.containers.last() {
                Some(c) => format!("not running ({} {})", c.state.status, c.state.exit_code),
                None => "not running (no containers)".into(),
            };
        }
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for c in &running {
            let h = match &c.state.health {
                Some(h) => h.status.clone(),
                None if c.state.restarting => "restarting".into(),
                None => "running (no healthcheck)".into(),
            };
            *counts.entry(h).or_default() += 1;
        }
        counted(counts)
    }

    pub fn to_json(&self) -> Value {
        let mut v = service_json(&self.name, self.images(), self.since(), self.health());
        v["running"] = json!(self.running().len());
        v["containers"] = json!(self
            .containers
            .iter()
            .map(|c| json!({
                "name": c.name,
                "id": c.short_id(),
                "image": c.image,
                "state": c.state.status,
                "health": c.state.health.as_ref().map(|h| h.status.clone()),
                "started_at": c.state.started_at,
            }))
            .collect::<Vec<_>>());
        v
    }
}

/// `healthy`, or `2 healthy, 1 starting`: how many of a service's containers (tasks) are
/// in each state of health.
pub fn counted(counts: BTreeMap<String, usize>) -> String {
    if counts.len() == 1 {
        return counts.into_keys().next().unwrap_or_default();
    }
    let parts: Vec<String> = counts.iter().map(|(h, n)| format!("{n} {h}")).collect();
    parts.join(", ")
}

/// The fields `status --json` gives a service on either engine.
pub fn service_json(
    name: &str,
    images: Vec<String>,
    since: Option<String>,
    health: String,
) -> Value {
    let tag = images
        .first()
        .map(|i| tag_of(i).unwrap_or("(none)").to_string());
    json!({
        "service": name,
        "image": images.first(),
        "images": images,
        "tag": tag,
        "since": since,
        "health": health,
    })
}

/// The project's services and their containers (one-off runs excluded). Services the
/// compose file defines but that have no container are listed empty.
pub fn services_now(ctx: &Context) -> Result<Vec<ServiceNow>> {
    docker::ensure_reachable()?;
    let ids = docker::containers_with_labels(&[(LABEL_PROJECT, &ctx.project)], true)?;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut by: BTreeMap<String, Vec<Container>> = BTreeMap::new();
    for c in docker::inspect(&refs)? {
        if c.label(LABEL_ONEOFF) == Some("True") {
            continue;
        }
        let svc = c.label(LABEL_SERVICE).unwrap_or("(none)").to_string();
        by.entry(svc).or_default().push(c);
    }
    if has_compose_file(ctx) {
        match ctx.compose().services() {
            Ok(names) => {
                for n in names {
                    by.entry(n).or_default();
                }
            }
            Err(e) => msg::warn(format!(
                "could not read the compose configuration ({}); showing containers only",
                berth_core::exit::one_line(&e)
            )),
        }
    }
    Ok(by
        .into_iter()
        .map(|(name, mut containers)| {
            containers.sort_by(|a, b| a.name.cmp(&b.name));
            ServiceNow { name, containers }
        })
        .collect())
}

pub fn has_compose_file(ctx: &Context) -> bool {
    !ctx.files.is_empty()
        || [
            "compose.yaml",
            "compose.yml",
            "docker-compose.yaml",
            "docker-compose.yml",
        ]
        .iter()
        .any(|f| ctx.project_dir.join(f).is_file())
}

/// `berth-report status`.
/// Where `status` looks for backups and how old the newest may be.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Backups")]
pub struct BackupArgs {
    /// The backup directory [default: <state dir>/backups]
    #[arg(long, env = "BERTH_BACKUP_DIR", value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Warn when the newest verified backup of a database or volume is older than this
    #[arg(long, value_name = "DURATION", default_value = "26h", value_parser = parse_duration)]
    pub max_age: Duration,
}

/// The newest verified backup of each target: one line each, and whether it is stale.
fn backups_now(ctx: &Context, args: &BackupArgs) -> (Vec<String>, Vec<Value>) {
    let dir = args
        .backup_dir
        .clone()
        .unwrap_or_else(|| ctx.state_dir.join("backups"));
    let all = match backups::scan(&dir) {
        Ok(all) => all,
        Err(e) => {
            return (
                vec![format!("cannot read {}: {e:#}", dir.display())],
                vec![],
            )
        }
    };
    let newest = backups::newest_verified(&all);
    if newest.is_empty() {
        let line = format!("no verified backup in {}", dir.display());
        return (vec![line], vec![]);
    }
    let max = args.max_age.as_secs();
    let mut lines = Vec::new();
    let mut json = Vec::new();
    for b in newest {
        let age = time::parse(&b.created_at).map(|t| time::now().duration_since(t).as_secs());
        let stale = age.is_none_or(|a| a > max as i64);
        lines.push(format!(
            "{} {} {}{}, {}, verified: {}{}",
            b.kind,
            b.target,
            human_time(&b.created_at),
            ago(&b.created_at),
            human::bytes(b.bytes),
            b.verification,
            if stale { "  STALE" } else { "" }
        ));
        if stale {
            msg::warn(format!(
                "the newest verified backup of {} {} is older than --max-age {}",
                b.kind,
                b.target,
                human::elapsed_ms(args.max_age.as_millis() as u64)
            ));
        }
        json.push(json!({
            "kind": b.kind, "target": b.target, "file": b.file, "bytes": b.bytes,
            "created_at": b.created_at, "verification": b.verification,
            "age_s": age, "stale": stale,
        }));
    }
    (lines, json)
}

/// The last restore drill (`berth-backup drill`), as recorded in the ledger.
fn drill_line(drill: Option<&Document>) -> String {
    let Some(st) = drill.and_then(|d| d.stages.first()) else {
        return "last drill: none recorded (berth-backup drill)".to_string();
    };
    let drill: record::Drill = record::read(&st.detail).unwrap_or_default();
    let file = if drill.file.is_empty() {
        "-"
    } else {
        &drill.file
    };
    let file = file.rsplit('/').next().unwrap_or(file);
    match &st.error {
        None => format!(
            "last drill: passed {}{}, {file} restored in {}",
            human_time(&st.started_at),
            ago(&st.started_at),
            human::elapsed_ms(st.duration_ms)
        ),
        Some(e) => format!(
            "last drill: FAILED {}{}: {e}",
            human_time(&st.started_at),
            ago(&st.started_at)
        ),
    }
}

fn drill_json(d: &Document) -> Value {
    let st = d.stages.first();
    json!({
        "passed": st.is_some_and(|s| s.error.is_none()),
        "at": st.map(|s| s.started_at.clone()),
        "duration_ms": st.map(|s| s.duration_ms),
        "file": st.and_then(|s| s.detail.contains_key("file").then(|| {
            record::read::<record::Drill>(&s.detail).unwrap_or_default().file
        })),
        "error": st.and_then(|s| s.error.clone()),
    })
}

/// What runs now, as one engine sees it: the services' JSON and their table.
pub struct Now {
    pub json: Vec<Value>,
    /// The table's lines (empty when there is no service).
    pub table: String,
}

/// Keep only `service` (when given) of `items`; a usage error naming the known ones.
pub fn only<T>(
    items: Vec<T>,
    name: impl Fn(&T) -> &str,
    service: Option<&str>,
    project: &str,
) -> Result<Vec<T>> {
    let Some(s) = service else {
        return Ok(items);
    };
    if !items.iter().any(|x| name(x) == s) {
        let known: Vec<&str> = items.iter().map(&name).collect();
        return Err(Failure::usage(format!(
            "no service {s:?} in project {project} (services: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ))
        .into());
    }
    Ok(items.into_iter().filter(|x| name(x) == s).collect())
}

/// What runs now on Compose.
fn compose_now(ctx: &Context, service: Option<&str>) -> Result<Now> {
    let services = only(services_now(ctx)?, |x| &x.name, service, &ctx.project)?;
    Ok(Now {
        json: services.iter().map(ServiceNow::to_json).collect(),
        table: if services.is_empty() {
            String::new()
        } else {
            services_table(&services)
        },
    })
}

pub fn status(
    ctx: &Context,
    engine: Engine,
    service: Option<&str>,
    as_json: bool,
    backup_args: &BackupArgs,
) -> Result<ExitCode> {
    let now = match engine {
        Engine::Compose => compose_now(ctx, service)?,
        Engine::Swarm => crate::swarm::now(ctx, service)?,
    };
    let all = ledger::read(&ctx.state_dir)?;
    let drill = all.iter().rev().find(|d| ledger::is_drill(d)).cloned();
    let releases = ledger::releases(all);
    let last = releases.last();
    let good = ledger::last_good(&releases, service);
    let (mut backup_lines, backup_json) = backups_now(ctx, backup_args);
    backup_lines.push(drill_line(drill.as_ref()));
    let out = if as_json {
        let v = json!({
            "project": ctx.project,
            "engine": if engine == Engine::Swarm { "swarm" } else { "compose" },
            "services": now.json,
            "last_release": last.map(summary::to_json),
            "last_good": good.map(summary::to_json),
            "backups": backup_json,
            "last_drill": drill.as_ref().map(drill_json),
        });
        serde_json::to_string_pretty(&v)? + "\n"
    } else {
        let mut text = status_table(ctx, &now.table, last, good);
        for (i, l) in backup_lines.iter().enumerate() {
            let head = if i == 0 {
                "Backups:     "
            } else {
                "             "
            };
            text.push_str(&format!("{head} {l}\n"));
        }
        text
    };
    print_stdout(&out)?;
    Ok(ExitCode::Success)
}

pub fn ago(rfc3339: &str) -> String {
    let Some(t) = time::parse(rfc3339) else {
        return String::new();
    };
    let secs = time::now().duration_since(t).as_secs().max(0) as u64;
    let text = if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m", secs / 60)
    } else if secs < 86_400 {
        format!("{}h {}m", secs / 3600, (secs % 3600) / 60)
    } else {
        format!("{}d {}h", secs / 86_400, (secs % 86_400) / 3600)
    };
    format!(" ({text} ago)")
}

/// One row per Compose service.
fn services_table(services: &[ServiceNow]) -> String {
    let mut rows = vec![[
        "SERVICE".to_string(),
        "TAG".into(),
        "HEALTH".into(),
        "SINCE".into(),
        "CONTAINERS".into(),
        "IMAGE".into(),
    ]];
    for s in services {
        let names: Vec<&str> = s.running().iter().map(|c| c.name.as_str()).collect();
        rows.push([
            s.name.clone(),
            or_dash(s.tags().join(",")),
            s.health(),
            since_text(s.since()),
            if names.is_empty() {
                "0".into()
            } else {
                format!("{}: {}", names.len(), names.join(","))
            },
            or_dash(s.images().join(",")),
        ]);
    }
    table(&rows)
}

/// `14:02 (3m ago)`, or `-`.
pub fn since_text(t: Option<String>) -> String {
    t.map(|t| format!("{}{}", human_time(&t), ago(&t)))
        .unwrap_or_else(|| "-".into())
}

/// What `berth-report status` prints: the services' table, then the releases.
fn status_table(
    ctx: &Context,
    services: &str,
    last: Option<&Document>,
    good: Option<&Document>,
) -> String {
    let mut out = format!("Project {} ({})\n", ctx.project, ctx.project_dir.display());
    if services.is_empty() {
        out.push_str("  no containers\n");
    } else {
        out.push_str(services);
    }
    match last {
        Some(d) => out.push_str(&format!("Last release: {}\n", release_line(d))),
        None => out.push_str(&format!(
            "Last release: none recorded in {}\n",
            ledger::path(&ctx.state_dir).display()
        )),
    }
    if let Some(g) = good {
        out.push_str(&format!(
            "Last good:    {} ({})\n",
            g.tag.as_deref().unwrap_or("-"),
            g.deploy_id
        ));
    }
    out
}

pub fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

fn release_line(d: &Document) -> String {
    let (name, _) = summary::outcome_words(d.outcome());
    format!(
        "{} tag {} at {}: {} (exit {} {name})",
        d.deploy_id,
        d.tag.as_deref().unwrap_or("-"),
        human_time(&d.created_at),
        summary::Verdict::of(d).name(),
        d.outcome()
    )
}

pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut w = [0usize; N];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `berth-report history`.
pub fn history(ctx: &Context, limit: usize, as_json: bool) -> Result<ExitCode> {
    let releases = ledger::releases(ledger::read(&ctx.state_dir)?);
    let good_id = ledger::last_good(&releases, None).map(|d| d.deploy_id.clone());
    let newest: Vec<&Document> = releases.iter().rev().take(limit).collect();
    let out = if as_json {
        let v: Vec<Value> = newest
            .iter()
            .map(|d| {
                let mut s = summary::to_json(d);
                s["last_good"] = json!(good_id.as_deref() == Some(d.deploy_id.as_str()));
                s["provisional"] = json!(ledger::is_provisional(d));
                s
            })
            .collect();
        serde_json::to_string_pretty(&v)? + "\n"
    } else if newest.is_empty() {
        msg::info(format!(
            "no releases recorded yet in {}",
            ledger::path(&ctx.state_dir).display()
        ));
        String::new()
    } else {
        let mut rows = vec![[
            "TIME".to_string(),
            "DEPLOY ID".into(),
            "TAG".into(),
            "OUTCOME".into(),
            "TOOK".into(),
            String::new(),
        ]];
        for d in &newest {
            let code = d.outcome();
            rows.push([
                human_time(&d.created_at),
                d.deploy_id.clone(),
                d.tag.clone().unwrap_or_else(|| "-".into()),
                if ledger::is_provisional(d) {
                    // The swap's line, and no report after it: the deploy died unverified.
                    "unverified".to_string()
                } else {
                    format!("{code} {}", summary::Verdict::of(d).name())
                },
                summary::span(d)
                    .2
                    .map(human::elapsed_ms)
                    .unwrap_or_else(|| "-".into()),
                if good_id.as_deref() == Some(d.deploy_id.as_str()) {
                    "<- last good".into()
                } else {
                    String::new()
                },
            ]);
        }
        table(&rows)
    };
    print_stdout(&out)?;
    Ok(ExitCode::Success)
}

fn print_stdout(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("writing to stdout: {e}"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_of_image_references() {
        assert_eq!(tag_of("berth-demo/app:v1"), Some("v1"));
        assert_eq!(tag_of("registry:5000/shop/web:3f9c2a1"), Some("3f9c2a1"));
        assert_eq!(tag_of("registry:5000/shop/web"), None);
        assert_eq!(tag_of("web:v2@sha256:abc"), Some("v2"));
    }
}
