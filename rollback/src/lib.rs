//! `berth-rollback`: return to the previous good release through the same zero-downtime
//! swap as `berth-swap` (its engine is a library).
//!
//! In a pipeline it acts on the document: a failure recorded after a successful `swap`
//! means the failed release is serving, so it swaps back to `previous_tag`, records
//! `rollback` (ok, exit 4) and exits 4; if that fails, exit 7 with one `CRITICAL:` line
//! naming the command to run by hand. It acts only on what it would undo: after
//! converging an interrupted swap, what serves must still be the document's release (the
//! tag in `.env`, the container IDs its swap started per service); otherwise it changes
//! nothing, says who deployed what, and exits 7. A failure before the switch passes through with its
//! code, a success with 0. Standalone it goes back to the newest good release in the
//! ledger that is not the one running now, or to `--to TAG`.

use anyhow::Result;
use berth_core::cli::{CommonArgs, Context};
use berth_core::doc::{self, Document, StageRecord, Status};
use berth_core::lock;
use berth_core::process::quote;
use berth_core::stage::{self, Completed, Ledger, Spec};
use berth_core::{fail, ledger, msg, record, time, ExitCode, Failure};
use berth_swap::engine::{self, Options};
use berth_swap::SwapArgs;
use clap::Parser;
use serde_json::Map;

const EXAMPLES: &str = "\
Examples:
  # After a smoke test that failed post-switch, swap back (exit 4), else pass through
  berth-swap --tag 3f9c2a1 web | berth-healthwait --url http://127.0.0.1/smoke --stage smoke \\
      | berth-rollback | berth-report

  # By hand: back to the previous good release recorded in the ledger
  berth-rollback web --worker worker worker

  # To a chosen release
  berth-rollback --to 9e8d7c6 web

Exit status: 0 nothing to undo (pipeline) or rolled back (standalone); 4 rolled back
after a failure past the switch; 7 CRITICAL: the rollback failed, a person must act (the
stderr line says what to run), or (pipeline) what serves is no longer the document's
release (another deploy landed since: tag in .env, container IDs) and nothing was changed; a failure before the switch passes through with its code;
standalone: 2 image missing, 3 swap failed (the current release still serves);
64 usage; 65 bad document; 75 locked.";

/// Return to the previous good release with the same zero-downtime swap as berth-swap.
/// In a pipeline: undo a release that failed after traffic moved (exit 4; 7 if that
/// fails). Standalone: back to the newest good release in the ledger before the one
/// running now, or to --to TAG.
#[derive(Debug, Parser)]
#[command(
    name = "berth-rollback",
    version,
    after_long_help = EXAMPLES,
    after_help = "See --help for examples and exit codes."
)]
pub struct Cli {
    /// The services to roll back (standalone; in a pipeline the swap's record names them)
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,

    /// Roll back to this tag instead of the previous good release (standalone)
    #[arg(long, value_name = "TAG", env = "BERTH_ROLLBACK_TO")]
    pub to: Option<String>,

    #[command(flatten)]
    pub swap: SwapArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let check = || -> Result<(), Failure> {
        cli.swap.check()?;
        berth_swap::check_services(&cli.services)?;
        if let Some(t) = &cli.to {
            berth_core::cli::check_tag(t)?;
        }
        Ok(())
    };
    if cli.common.check_args {
        return berth_core::cli::checked(|| {
            check()?;
            cli.common.check()?;
            Ok(())
        });
    }
    check()?;
    let input = stage::load(&cli.common)?;
    if input.piped {
        piped(cli, input)
    } else {
        standalone(cli, input)
    }
}

/// The stage `rollback`: it acts on failures and records the whole document in the
/// ledger.
fn spec(default_code: ExitCode) -> Spec<'static> {
    Spec::new("rollback", default_code)
        .acting_on_failure(true)
        .ledger(Ledger::Document)
}

/// What the swap stage of a document says it moved: (service, behind nginx).
fn swapped_services(d: &Document) -> Vec<(String, bool)> {
    let from_detail: Vec<(String, bool)> = swap_record(d)
        .map(|s| {
            s.services
                .into_iter()
                .map(|s| (s.name, s.proxied))
                .collect()
        })
        .unwrap_or_default();
    if !from_detail.is_empty() {
        return from_detail;
    }
    d.services.iter().map(|s| (s.name.clone(), true)).collect()
}

/// Whether traffic moved before (or at) the first failure: a `swap` recorded ok before
/// it, or the failed swap itself records that it had switched.
pub fn failed_after_switch(d: &Document) -> bool {
    let Some(i) = d.stages.iter().position(|s| s.status == Status::Failed) else {
        return false;
    };
    d.stages[..=i].iter().any(StageRecord::moved_traffic)
}

/// A document with nothing to undo (nothing failed, or before traffic moved) passes
/// through with its own code.
fn pass_through(d: &Document) -> Result<Option<ExitCode>> {
    let Some(failed) = d.first_failure() else {
        msg::info("nothing failed; passing the document through");
        write(d)?;
        return Ok(Some(ExitCode::Success));
    };
    if failed_after_switch(d) {
        return Ok(None);
    }
    msg::info(format!(
        "stage {:?} failed before traffic moved (exit {}); nothing to roll back",
        failed.stage, failed.exit_code
    ));
    write(d)?;
    Ok(Some(
        ExitCode::from_code(d.outcome()).unwrap_or(ExitCode::Preflight),
    ))
}

fn piped(cli: Cli, input: stage::Input) -> Result<ExitCode> {
    let d = &input.doc;
    if let Some(code) = pass_through(d)? {
        return Ok(code);
    }
    let failed = d.first_failure().expect("has failed").clone();
    let spec = spec(ExitCode::RollbackFailed);
    let (Some(to), Some(from)) = (d.previous_tag.clone(), d.tag.clone()) else {
        let e = "the document records no previous_tag to return to";
        critical(&input.ctx, &cli, "?", &[], e);
        let spec = spec.ledger(Ledger::Nothing);
        return stage::run(spec, input, |_, _, _| Err(fail!(RollbackFailed, "{e}")));
    };
    let (opts, names) = swap_options(&cli, d);
    msg::info(format!(
        "stage {:?} failed after traffic moved to {from} (exit {}): rolling {} back to {to}",
        failed.stage,
        failed.exit_code,
        names.join(", ")
    ));
    stage::run(spec, input, |ctx, doc, detail| {
        record::put(
            detail,
            &record::Rollback {
                from: Some(Some(from.clone())),
                to: Some(to.clone()),
                after_stage: Some(failed.stage.clone()),
                services: Some(names.clone()),
                ..Default::default()
            },
        );
        // Only undo what this deploy did: a crash is converged first (always safe),
        // then what serves must still be this document's release. The lock is taken
        // here, not by the stage: not getting it is a failed rollback (CRITICAL, 7).
        let held = lock::acquire(
            &ctx.state_dir,
            lock::DEPLOY,
            cli.swap.lock_wait,
            Some(&doc.deploy_id),
        );
        let res = held.and_then(|_lock| {
            converge(ctx, &opts, &to)?;
            if let Some(other) = serving_other(ctx, doc, &from, &names)? {
                return Err(NotOurs(other).into());
            }
            engine::swap(ctx, &opts, &names, &to, &doc.deploy_id)
        });
        match res {
            Ok(out) => {
                record::update(detail, |r: &mut record::Rollback| {
                    r.swap = record::read(&out.detail).ok()
                });
                msg::info(format!("rolled back to {to}"));
                Ok(Completed::Done(ExitCode::Unhealthy))
            }
            Err(e) if e.is::<NotOurs>() => {
                record::update(detail, |r: &mut record::Rollback| {
                    r.serving = Some(e.to_string())
                });
                Err(fail!(
                    RollbackFailed,
                    "not rolling back: {e}; this deploy ({}, {from}) no longer serves, so \
                     nothing was changed: a person must look",
                    doc.deploy_id
                ))
            }
            Err(e) => {
                let line = berth_core::exit::one_line(&e);
                let cmd = critical(ctx, &cli, &to, &names_with_workers(&names, &opts), &line);
                record::update(detail, |r: &mut record::Rollback| {
                    r.manual_command = Some(cmd)
                });
                Err(fail!(RollbackFailed, "rollback to {to} failed: {line}"))
            }
        }
    })
}

/// The swap back: the services the document's swap moved, the ones without a proxy as
/// workers.
fn swap_options(cli: &Cli, d: &Document) -> (Options, Vec<String>) {
    let services = swapped_services(d);
    let mut opts = cli.swap.options();
    for (s, proxied) in &services {
        if !proxied && !opts.workers.contains(s) {
            opts.workers.push(s.clone());
        }
    }
    (opts, services.into_iter().map(|(s, _)| s).collect())
}

/// What serves is not the release the document would undo (who deployed what).
#[derive(Debug)]
struct NotOurs(String);

impl std::fmt::Display for NotOurs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotOurs {}

/// Converge a killed swap or rollback before looking at what serves.
fn converge(ctx: &Context, opts: &Options, tag: &str) -> Result<()> {
    let done = berth_swap::converge::converge(ctx, opts, Some(tag))?;
    if !done.is_empty() {
        msg::info(format!(
            "converged an interrupted swap: {}",
            done.join(", ")
        ));
    }
    Ok(())
}

/// `None` when what serves is still the document's release: `.env` at its tag and, per
/// service, every container its swap started still there and no other one running.
/// Otherwise who deployed what.
fn serving_other(
    ctx: &Context,
    d: &Document,
    from: &str,
    names: &[String],
) -> Result<Option<String>> {
    let now = engine::current_tag(ctx);
    if now.as_deref() != Some(from) {
        let Some(now) = now else {
            return Ok(Some(format!(
                "{} has no {} in .env (deployed by hand?)",
                ctx.project, ctx.tag_var
            )));
        };
        let who = ledger::read(&ctx.state_dir)
            .unwrap_or_default()
            .into_iter()
            .rev()
            .find(|r| r.tag.as_deref() == Some(now.as_str()) && r.deploy_id != d.deploy_id)
            .map(|r| format!("deploy {} of {} put it there", r.deploy_id, r.created_at))
            .unwrap_or_else(|| "no deploy in the ledger put it there".into());
        return Ok(Some(format!(
            "{} runs {now} now ({}={now} in .env; {who})",
            ctx.project, ctx.tag_var
        )));
    }
    let compose = ctx.compose_at(from);
    for svc in names {
        let Some(started) = started_containers(d, svc) else {
            continue;
        };
        // Ours while every container (on Swarm: task) it started is still there (a crashed
        // or restarting one too: undoing a release that dies is the point) and nothing
        // else runs.
        let now: Vec<(String, bool)> = if ctx.engine == berth_core::swarm::Engine::Swarm {
            berth_core::stack::tasks(&format!("{}_{svc}", ctx.project))?
                .into_iter()
                .map(|t| (t.id, true))
                .collect()
        } else {
            compose
                .containers(svc)?
                .into_iter()
                .map(|c| (c.id.clone(), c.state.running))
                .collect()
        };
        let what = match ctx.engine {
            berth_core::swarm::Engine::Swarm => "tasks",
            berth_core::swarm::Engine::Compose => "containers",
        };
        let short = |id: &str| id.chars().take(12).collect::<String>();
        let is_started = |id: &str| started.iter().any(|s| id.starts_with(s.as_str()));
        let gone = started
            .iter()
            .any(|s| !now.iter().any(|(id, _)| id.starts_with(s.as_str())));
        let others: Vec<String> = now
            .iter()
            .filter(|(id, running)| *running && !is_started(id))
            .map(|(id, _)| short(id))
            .collect();
        if gone || !others.is_empty() {
            let running: Vec<String> = now
                .iter()
                .filter(|(_, running)| *running)
                .map(|(id, _)| short(id))
                .collect();
            return Ok(Some(format!(
                "{svc} runs {what} {} now, not {} that this deploy started",
                list(&running),
                list(&started)
            )));
        }
    }
    Ok(None)
}

fn list(ids: &[String]) -> String {
    if ids.is_empty() {
        "(none)".into()
    } else {
        ids.join(", ")
    }
}

/// The (short) IDs of the containers the document's swap started for `svc`.
fn started_containers(d: &Document, svc: &str) -> Option<Vec<String>> {
    let swap = swap_record(d)?;
    let s = swap.service(svc)?;
    Some(s.new_containers.iter().map(|c| c.id.clone()).collect())
}

/// The record of the document's (last) swap; `None` without one or when it is not a
/// swap record.
fn swap_record(d: &Document) -> Option<record::Swap> {
    record::read(&d.stage("swap")?.detail).ok()
}

fn names_with_workers(names: &[String], opts: &Options) -> Vec<String> {
    let mut v = Vec::new();
    for w in &opts.workers {
        v.push("--worker".to_string());
        v.push(w.clone());
    }
    v.extend(names.iter().cloned());
    v
}

/// The one CRITICAL line: what failed and the exact command to run by hand (returned,
/// for the rollback's record: `manual_command`).
fn critical(ctx: &Context, cli: &Cli, to: &str, words: &[String], why: &str) -> String {
    let mut cmd = vec!["berth-rollback".to_string()];
    cmd.extend(ctx.project_args());
    cmd.extend(["--to".to_string(), to.to_string()]);
    if cli.swap.proxy != berth_swap::ProxyMode::Compose {
        cmd.push("--proxy".into());
        let mode = clap::ValueEnum::to_possible_value(&cli.swap.proxy)
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        cmd.push(mode);
    }
    cmd.extend(words.iter().cloned());
    let shown: Vec<String> = cmd.iter().map(|w| quote(w)).collect();
    eprintln!(
        "{}: CRITICAL: rollback failed, the failed release may still serve ({why}); run by hand: {}",
        msg::program(),
        shown.join(" ")
    );
    shown.join(" ")
}

fn write(d: &Document) -> Result<()> {
    doc::write_stdout(d).map_err(|e| anyhow::anyhow!("writing the document to stdout: {e}"))
}

/// The release to return to: `--to`, else the newest good release in the ledger, other
/// than the one running now, that deployed every named service.
pub fn release_to(
    releases: &[Document],
    current: Option<&str>,
    services: &[String],
    to: Option<&str>,
) -> Result<String, Failure> {
    if let Some(t) = to {
        return Ok(t.to_string());
    }
    releases
        .iter()
        .rev()
        .filter(|d| ledger::is_good(d))
        .filter(|d| d.tag.is_some() && d.tag.as_deref() != current)
        .find(|d| {
            services
                .iter()
                .all(|s| d.services.iter().any(|x| x.name == *s))
        })
        .and_then(|d| d.tag.clone())
        .ok_or_else(|| {
            Failure::new(
                ExitCode::Preflight,
                format!(
                    "no good release other than {} in the ledger deployed {}; pass --to TAG",
                    current.unwrap_or("the current one"),
                    services.join(", ")
                ),
            )
        })
}

fn standalone(cli: Cli, mut input: stage::Input) -> Result<ExitCode> {
    if cli.services.is_empty() {
        return Err(Failure::usage(
            "name the services to roll back (e.g. berth-rollback web), or pipe a deploy document",
        )
        .into());
    }
    let ctx = input.ctx.clone();
    let current = engine::current_tag(&ctx);
    let releases = ledger::releases(ledger::read(&ctx.state_dir)?);
    let to = release_to(
        &releases,
        current.as_deref(),
        &cli.services,
        cli.to.as_deref(),
    )?;
    msg::info(format!(
        "rolling {} back from {} to {to}",
        cli.services.join(", "),
        current.as_deref().unwrap_or("(unknown)")
    ));
    input.doc.tag = Some(to.clone());
    let opts = cli.swap.options();
    stage::run_then(
        cli.swap.locked(spec(ExitCode::Swap)),
        input,
        |ctx, doc, detail| {
            record::put(
                detail,
                &record::Rollback {
                    from: Some(current.clone()),
                    to: Some(to.clone()),
                    ..Default::default()
                },
            );
            let out = engine::swap(ctx, &opts, &cli.services, &to, &doc.deploy_id)?;
            berth_swap::record(doc, &out);
            record::update(detail, |r: &mut record::Rollback| {
                r.swap = record::read(&out.detail).ok()
            });
            if out.dry_run {
                return Ok(Completed::Skipped("dry run: nothing changed".into()));
            }
            Ok(Completed::Ok)
        },
        |ctx, doc| mark_rolled_back(ctx, doc, &releases, current.as_deref(), &to),
    )
}

/// After a standalone rollback, the release rolled back from no longer counts as good.
fn mark_rolled_back(
    ctx: &Context,
    doc: &Document,
    releases: &[Document],
    current: Option<&str>,
    to: &str,
) {
    let ok = doc
        .stage("rollback")
        .is_some_and(|s| s.status == Status::Ok)
        && !ctx.dry_run;
    let Some(cur) = current.filter(|_| ok) else {
        return;
    };
    let from = releases
        .iter()
        .rev()
        .find(|d| d.tag.as_deref() == Some(cur) && ledger::is_good(d));
    if let Some(from) = from {
        let mut marked = from.clone();
        marked.stages.push(rolled_back_record(&doc.deploy_id, to));
        if let Err(e) = ledger::append(&ctx.state_dir, &marked) {
            msg::warn(format!("could not mark {cur} rolled back: {e:#}"));
        }
    }
}

fn rolled_back_record(by: &str, to: &str) -> StageRecord {
    let detail = record::to_detail(&record::Rollback {
        rolled_back_to: Some(to.to_string()),
        by_deploy: Some(by.to_string()),
        ..Default::default()
    });
    StageRecord {
        stage: "rollback".into(),
        status: Status::Ok,
        started_at: time::now_rfc3339(),
        duration_ms: 0,
        exit_code: ExitCode::Unhealthy.code(),
        detail,
        error: None,
        extra: Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let c = Cli::try_parse_from(["berth-rollback", "--to", "v1", "web"]).unwrap();
        assert_eq!((c.to.as_deref(), c.services.len()), (Some("v1"), 1));
    }

    fn release(tag: &str, stages: &[(&str, Status, i32)]) -> Document {
        let mut d = Document::new("shop", Some(tag));
        d.deploy_id = format!("id-{tag}");
        d.set_service_image("web", &format!("shop-web:{tag}"));
        for (name, status, code) in stages {
            d.stages.push(StageRecord {
                stage: (*name).into(),
                status: *status,
                started_at: time::now_rfc3339(),
                duration_ms: 1,
                exit_code: *code,
                detail: Map::new(),
                error: None,
                extra: Map::new(),
            });
        }
        d
    }

    #[test]
    fn failure_after_switch_only_when_swap_succeeded_first() {
        let d = release(
            "v2",
            &[("swap", Status::Ok, 0), ("smoke", Status::Failed, 4)],
        );
        assert!(failed_after_switch(&d));
        let d = release("v2", &[("swap", Status::Failed, 3)]);
        assert!(!failed_after_switch(&d));
        let d = release("v2", &[("backup", Status::Failed, 5)]);
        assert!(!failed_after_switch(&d));
        let d = release("v2", &[("swap", Status::Ok, 0)]);
        assert!(!failed_after_switch(&d));
        // The swap switched nginx, then could not write .env: the new release serves.
        let mut d = release("v2", &[("swap", Status::Failed, 4)]);
        d.stages[0].detail.insert("switched".into(), json!(true));
        assert!(failed_after_switch(&d));
    }

    #[test]
    fn target_is_the_newest_good_release_before_the_current_one() {
        let ok = [("swap", Status::Ok, 0)];
        let mut v3 = release("v3", &ok);
        v3.stages.push(rolled_back_record("x", "v2"));
        let rels = vec![
            release("v1", &ok),
            release("v2", &ok),
            release(
                "bad",
                &[("swap", Status::Ok, 0), ("smoke", Status::Failed, 4)],
            ),
            v3,
        ];
        let web = vec!["web".to_string()];
        // v3 was rolled back; "bad" failed: v2 is the last good, and it is running.
        assert_eq!(release_to(&rels, Some("v2"), &web, None).unwrap(), "v1");
        assert_eq!(release_to(&rels, Some("v3"), &web, None).unwrap(), "v2");
        assert_eq!(
            release_to(&rels, Some("v3"), &web, Some("v1")).unwrap(),
            "v1"
        );
        let e = release_to(&rels, Some("v2"), &["worker".to_string()], None).unwrap_err();
        assert!(e.message.contains("pass --to"), "{}", e.message);
    }
}
