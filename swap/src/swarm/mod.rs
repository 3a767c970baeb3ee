//! `berth-swap preflight --engine swarm`: the deploy's first stage on Docker Swarm.
//!
//! Checks, before anything changes: this docker node is an active Swarm manager; the
//! compose configuration is valid with the tag and the services use it; `docker stack
//! config` accepts the stack file; and the [`lint`] lists every key Swarm ignores or
//! rejects, one line each on stderr (`berth-swap: lint: service web: build: ignored by
//! docker stack deploy; ...`) and in the stage's `detail.lint`. A rejected key, a worker
//! node, or a file `docker stack config` refuses: exit 1. `berth-swap pull --engine swarm`:
//! see [`pull`].

pub mod lint;
pub mod pull;
pub mod swap;

pub use pull::pull;

use std::path::{Path, PathBuf};

use anyhow::Result;
use berth_core::cli::{checked, CommonArgs, Context};
use berth_core::stack::Task;
use berth_core::stage::{self, Completed};
use berth_core::swarm::{self, NodeState};
use berth_core::{doc, docker, fail, msg, ExitCode, Failure};
use serde_json::{json, Value};

use crate::prepare::PreflightArgs;
use lint::{Finding, Verdict};

/// What `preflight` does not do on Swarm: a usage error rather than a silent skip.
fn refuse_unsupported(upstream_file: Option<&str>) -> Result<(), Failure> {
    if upstream_file.is_none() {
        return Ok(());
    }
    Err(Failure::usage(
        "--engine swarm: preflight does not support --upstream-file (nginx files of the Compose layout) on Swarm",
    ))
}

/// `--check-args` of a Swarm stage: its services and the common settings.
fn check_only(services: &[String], common: &CommonArgs) -> Result<ExitCode> {
    checked(|| {
        crate::prepare::check_services(services)?;
        common.resolve_any_engine(None, false)?;
        Ok(())
    })
}

/// [`stage::load`] for a command that runs on Swarm.
fn load(common: &CommonArgs) -> Result<stage::Input, Failure> {
    let read = doc::read_stdin()?;
    let known = read.as_ref().map(|d| d.project.as_str());
    let mut ctx = common.resolve_any_engine(known, true)?;
    stage::reconcile(common, &mut ctx, read)
}

pub fn preflight(
    args: PreflightArgs,
    upstream_file: Option<&str>,
    common: &CommonArgs,
) -> Result<ExitCode> {
    refuse_unsupported(upstream_file)?;
    if common.check_args {
        return check_only(&args.services, common);
    }
    crate::prepare::check_services(&args.services)?;
    let input = load(common)?;
    stage::run(crate::prepare::PREFLIGHT, input, |ctx, doc, detail| {
        let tag = ctx.require_tag()?.to_string();
        let (node, cfg, services) = on_manager(ctx, &args.services, detail)?;
        crate::prepare::record_images(ctx, &services, &cfg, doc, detail)?;
        detail.insert("stack".into(), json!(ctx.project));
        // What runs now, per service: the tasks a swap will replace.
        let mut running = serde_json::Map::new();
        for s in &services {
            let tasks = berth_core::stack::tasks(&format!("{}_{s}", ctx.project))?;
            running.insert(s.clone(), tasks.iter().map(Task::json).collect());
        }
        detail.insert("tasks".into(), Value::Object(running));
        let files = swarm::stack_files(&ctx.project_dir, &ctx.files)?;
        detail.insert("files".into(), json!(files));
        let mut findings = lint::services(&cfg, swarm::host_has_ipvs());
        findings.extend(project_findings(ctx, &files)?);
        for f in &findings {
            msg::info(format!("lint: {f}"));
        }
        detail.insert(
            "lint".into(),
            Value::Array(findings.iter().map(Finding::json).collect()),
        );
        let stack_config = stack_config(ctx, &files, &tag);
        if let Ok(false) = stack_config {
            msg::warn(
                "this docker CLI has no `docker stack config` (docker 23 and later have it): the stack file was checked by compose and the lint only",
            );
        }
        detail.insert(
            "stack_config".into(),
            json!(match &stack_config {
                Ok(true) => "ok",
                Ok(false) => "unavailable",
                Err(_) => "refused",
            }),
        );
        let rejected = findings
            .iter()
            .filter(|f| f.verdict == Verdict::Rejected)
            .count();
        if rejected > 0 || stack_config.is_err() {
            let why = stack_config
                .err()
                .map(|e| format!("; docker stack config: {e}"))
                .unwrap_or_default();
            return Err(fail!(
                Preflight,
                "the stack file is not valid for Swarm: {rejected} key(s) docker stack deploy rejects (lint lines above){why}"
            ));
        }
        if !args.command.is_empty() {
            // Last, as on Compose: on this manager, in the project directory, TAG_VAR set.
            crate::prepare::run_check(ctx, detail, &args.command, &tag)?;
        }
        msg::info(format!(
            "preflight ok: swarm manager ({} node(s)), stack {} at {tag}: {}; {} lint warning(s)",
            node.nodes,
            ctx.project,
            services.join(", "),
            findings.len()
        ));
        Ok(Completed::Ok)
    })
}

/// The start of every Swarm stage: this node is an active manager (recorded in
/// `detail.node`), the compose configuration with the tag, the services to act on.
fn on_manager(
    ctx: &Context,
    named: &[String],
    detail: &mut serde_json::Map<String, Value>,
) -> Result<(NodeState, Value, Vec<String>)> {
    detail.insert("engine".into(), json!("swarm"));
    let node = swarm::node_state()?;
    detail.insert("node".into(), node_json(&node));
    swarm::ensure_manager(&node)?;
    let cfg = ctx
        .compose()
        .config()
        .map_err(|e| fail!(Preflight, "{e:#}"))?;
    let services = crate::prepare::resolve_services(ctx, named, &cfg)?;
    Ok((node, cfg, services))
}

fn node_json(n: &NodeState) -> Value {
    json!({
        "state": n.local_node_state,
        "manager": n.control_available,
        "node_id": n.node_id,
        "nodes": n.nodes,
        "managers": n.managers,
    })
}

/// `docker stack config -c FILE...` with the tag set, as `docker stack deploy` will read
/// the files (no `.env`, no override file): `Ok(false)` when this docker CLI lacks the
/// command, its error line when it refuses the files.
fn stack_config(ctx: &Context, files: &[PathBuf], tag: &str) -> Result<bool, String> {
    let mut cmd = docker::docker().args(["stack", "config"]);
    for f in files {
        cmd = cmd.arg("-c").arg(f);
    }
    match cmd.env(&ctx.tag_var, tag).dir(&ctx.project_dir).read() {
        Ok(_) => Ok(true),
        // Debian's docker.io 20.10: `docker stack` has no `config` (it reads -c as a flag
        // of `docker stack` itself).
        Err(e) if e.stderr().contains("unknown shorthand flag: 'c'") => Ok(false),
        Err(e) => {
            let why = berth_core::process::last_lines(e.stderr(), 1);
            Err(if why.is_empty() { e.to_string() } else { why })
        }
    }
}

/// Files compose reads and `docker stack deploy` does not: the env file's variables the
/// stack file uses, and an override file that was not named with -f.
fn project_findings(ctx: &Context, files: &[PathBuf]) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    let env_file = ctx.pin_file();
    if env_file.is_file() {
        let env_text = read(&env_file)?;
        let mut text = String::new();
        for f in files {
            text.push_str(&read(f)?);
        }
        let from_env_file: Vec<String> = lint::variables(&text)
            .into_iter()
            .filter(|v| *v != ctx.tag_var && std::env::var_os(v).is_none())
            .filter(|v| crate::envfile::get(&env_text, v).is_some())
            .collect();
        if !from_env_file.is_empty() {
            out.push(Finding {
                service: None,
                key: shown(ctx, &env_file),
                verdict: Verdict::Ignored,
                advice: format!(
                    "the stack file uses {} from it: set them in the deploy's environment (berth sets {} itself)",
                    from_env_file.join(", "),
                    ctx.tag_var
                ),
            });
        }
    }
    if ctx.files.is_empty() {
        for name in swarm::OVERRIDE_FILES {
            if ctx.project_dir.join(name).is_file() {
                out.push(Finding {
                    service: None,
                    key: name.to_string(),
                    verdict: Verdict::Ignored,
                    advice: "docker stack deploy merges no override file: name every file with -f (BERTH_COMPOSE_FILE=a.yaml:b.yaml)".into(),
                });
            }
        }
    }
    Ok(out)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| fail!(Preflight, "cannot read {}: {e}", path.display()))
}

/// A path as the user knows it: relative to the project directory when inside it.
fn shown(ctx: &Context, path: &Path) -> String {
    path.strip_prefix(&ctx.project_dir)
        .unwrap_or(path)
        .display()
        .to_string()
}
