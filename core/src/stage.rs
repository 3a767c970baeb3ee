//! The life of one stage: read the document (or start one), pass an earlier failure
//! through untouched, run, record `{stage, status, started_at, duration_ms, exit_code,
//! detail, error}`, write the whole document to stdout, exit with the stage's code.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Map, Value};

use crate::cli::{CommonArgs, Context};
use crate::doc::{self, Document, StageRecord, Status};
use crate::exit::{self, ExitCode, Failure};
use crate::{ledger, lock, msg, time};

/// A stage's input: its resolved settings and the document it works on.
#[derive(Debug)]
pub struct Input {
    pub ctx: Context,
    pub doc: Document,
    /// Whether the document came from stdin (false: this stage started it).
    pub piped: bool,
}

/// Resolve the common settings and read the document from stdin (a new one when stdin
/// is a terminal or empty). The document's project and tag win over the defaults; an
/// explicit flag that contradicts the document is a usage error.
pub fn load(common: &CommonArgs) -> Result<Input, Failure> {
    load_with(common, true)
}

/// [`load`]; `ask_compose: false` for a stage that never runs compose (see
/// [`CommonArgs::resolve_offline`]).
pub fn load_with(common: &CommonArgs, ask_compose: bool) -> Result<Input, Failure> {
    let read = doc::read_stdin()?;
    // A document names its project: the first stage asked compose, the others follow it.
    let known = read.as_ref().map(|d| d.project.as_str());
    let mut ctx = if ask_compose {
        common.resolve_for(known)?
    } else {
        common.resolve_offline(known)?
    };
    reconcile(common, &mut ctx, read)
}

/// [`load`] with the document already read (for tests and for callers that read a file).
pub fn reconcile(
    common: &CommonArgs,
    ctx: &mut Context,
    read: Option<Document>,
) -> Result<Input, Failure> {
    match read {
        None => Ok(Input {
            doc: Document::new(&ctx.project, ctx.tag.as_deref()),
            ctx: ctx.clone(),
            piped: false,
        }),
        Some(mut d) => {
            if let Some(p) = &common.project_name {
                if *p != d.project {
                    return Err(Failure::usage(format!(
                        "-p {p} contradicts the document's project {:?}",
                        d.project
                    )));
                }
            }
            ctx.project = d.project.clone();
            match (&d.tag, &ctx.tag) {
                (Some(dt), Some(ft)) if dt != ft => {
                    return Err(Failure::usage(format!(
                        "--tag {ft} contradicts the document's tag {dt:?}"
                    )))
                }
                (Some(dt), _) => {
                    crate::cli::check_tag(dt).map_err(|e| {
                        Failure::bad_document(format!("deploy document field `tag`: {e}"))
                    })?;
                    ctx.tag = Some(dt.clone());
                }
                (None, Some(ft)) => d.tag = Some(ft.clone()),
                (None, None) => {}
            }
            Ok(Input {
                ctx: ctx.clone(),
                doc: d,
                piped: true,
            })
        }
    }
}

/// How a stage body ended when it did not fail.
#[derive(Debug, Clone, PartialEq)]
pub enum Completed {
    Ok,
    /// Nothing to do; the reason goes into `detail.reason`.
    Skipped(String),
    /// The stage did its work, and the deploy's outcome is this code: a rollback that
    /// succeeded records `ok` with 4 (the release was not healthy, and is undone).
    Done(ExitCode),
}

/// What a stage is called, how it treats earlier failures, the lock it runs under and
/// what it leaves in the ledger.
#[derive(Debug, Clone, Copy)]
pub struct Spec<'a> {
    /// The name in the document's `stages` list.
    pub name: &'a str,
    /// The exit code for an error that carries none.
    pub default_code: ExitCode,
    /// rollback and report act on failures; every other stage passes them through.
    pub acts_on_failure: bool,
    /// The lock the body runs under (not in a dry run): taken before it, released once
    /// the stage's record is in the document and before the document is written, so the
    /// next stage of a pipe can take it as soon as it reads the document.
    pub lock: Option<StageLock<'a>>,
    /// What the stage appends to the ledger once its record is in (not in a dry run).
    pub ledger: Ledger,
}

/// A lock a stage runs under (see [`crate::lock`]).
#[derive(Debug, Clone, Copy)]
pub struct StageLock<'a> {
    pub name: &'a str,
    /// How long to wait for another holder (zero: exit 75 at once).
    pub wait: Duration,
}

/// What a stage leaves in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ledger {
    Nothing,
    /// The release, marked provisional, when the stage succeeded (the swap: good only
    /// once the whole deploy says so).
    Provisional,
    /// The whole document, however the stage ended (the rollback).
    Document,
}

impl<'a> Spec<'a> {
    /// A stage that passes failures through, takes no lock and writes no ledger line.
    pub const fn new(name: &'a str, default_code: ExitCode) -> Spec<'a> {
        Spec {
            name,
            default_code,
            acts_on_failure: false,
            lock: None,
            ledger: Ledger::Nothing,
        }
    }

    /// The stage acts on an earlier failure (`yes`) instead of passing it through.
    pub const fn acting_on_failure(mut self, yes: bool) -> Spec<'a> {
        self.acts_on_failure = yes;
        self
    }

    /// The body runs under lock `name`, waiting up to `wait` for it.
    pub const fn locked(mut self, name: &'a str, wait: Duration) -> Spec<'a> {
        self.lock = Some(StageLock { name, wait });
        self
    }

    pub const fn ledger(mut self, ledger: Ledger) -> Spec<'a> {
        self.ledger = ledger;
        self
    }
}

/// If the document already records a failure, and this stage does not act on failures,
/// write it through unchanged and return the failure's code.
pub fn pass_through(spec: &Spec, doc: &Document) -> Option<ExitCode> {
    if spec.acts_on_failure {
        return None;
    }
    let failed = doc.first_failure()?;
    msg::info(format!(
        "skipping: stage {:?} failed earlier (exit {}); passing the document through",
        failed.stage, failed.exit_code
    ));
    Some(ExitCode::from_code(doc.outcome()).unwrap_or(ExitCode::Preflight))
}

/// Run `body` as the stage `spec`, record it in the document, write the document to
/// stdout, and return the exit code (or the error, already recorded, for `main` to print).
pub fn run(
    spec: Spec,
    input: Input,
    body: impl FnOnce(&Context, &mut Document, &mut Map<String, Value>) -> Result<Completed>,
) -> Result<ExitCode> {
    run_then(spec, input, body, |_, _| {})
}

/// [`run`], with `after` called on the document once this stage's record is in it and
/// before its ledger line, the release of its lock and the write (not when the document
/// is only passed through).
pub fn run_then(
    spec: Spec,
    input: Input,
    body: impl FnOnce(&Context, &mut Document, &mut Map<String, Value>) -> Result<Completed>,
    after: impl FnOnce(&Context, &Document),
) -> Result<ExitCode> {
    let Input { ctx, mut doc, .. } = input;
    if let Some(code) = pass_through(&spec, &doc) {
        write(&doc)?;
        return Ok(code);
    }
    let started_at = time::now_rfc3339();
    let clock = Instant::now();
    let mut detail = Map::new();
    let (held, result) = match take_lock(&spec, &ctx, &doc) {
        Ok(held) => (held, body(&ctx, &mut doc, &mut detail)),
        Err(e) => (None, Err(e)),
    };
    let duration_ms = time::millis(clock.elapsed());
    let (status, code, error, err) = match result {
        Ok(Completed::Ok) => (Status::Ok, ExitCode::Success, None, None),
        Ok(Completed::Skipped(reason)) => {
            detail.insert("reason".into(), Value::String(reason));
            (Status::Skipped, ExitCode::Success, None, None)
        }
        Ok(Completed::Done(code)) => (Status::Ok, code, None, None),
        Err(e) => {
            let code = exit::code_of(&e, spec.default_code);
            let line = exit::one_line(&e);
            (
                Status::Failed,
                code,
                Some(line.clone()),
                Some(Failure::new(code, line)),
            )
        }
    };
    doc.stages.push(StageRecord {
        stage: spec.name.to_string(),
        status,
        started_at,
        duration_ms,
        exit_code: code.code(),
        detail,
        error,
        extra: Map::new(),
    });
    after(&ctx, &doc);
    append_ledger(&spec, &ctx, &doc);
    if let Some(lock) = held {
        lock.release();
    }
    write(&doc)?;
    match err {
        Some(f) => Err(f.into()),
        None => Ok(code),
    }
}

/// The stage's lock, unless it has none or this is a dry run.
fn take_lock(spec: &Spec, ctx: &Context, doc: &Document) -> Result<Option<lock::Lock>> {
    match spec.lock {
        Some(l) if !ctx.dry_run => {
            lock::acquire(&ctx.state_dir, l.name, l.wait, Some(&doc.deploy_id)).map(Some)
        }
        _ => Ok(None),
    }
}

/// The stage's ledger line (see [`Ledger`]); a failure to write it is a warning.
fn append_ledger(spec: &Spec, ctx: &Context, doc: &Document) {
    if ctx.dry_run {
        return;
    }
    let line = match spec.ledger {
        Ledger::Nothing => return,
        Ledger::Provisional => {
            let ok = doc.stage(spec.name).is_some_and(|s| s.status == Status::Ok);
            if !ok {
                return;
            }
            ledger::provisional(doc)
        }
        Ledger::Document => doc.clone(),
    };
    if let Err(e) = ledger::append(&ctx.state_dir, &line) {
        msg::warn(format!(
            "could not record the {} in the ledger: {e:#}",
            if spec.ledger == Ledger::Provisional {
                "release"
            } else {
                spec.name
            }
        ));
    }
}

fn write(doc: &Document) -> Result<()> {
    doc::write_stdout(doc).map_err(|e| anyhow::anyhow!("writing the document to stdout: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        common: CommonArgs,
    }

    fn ctx(args: &[&str]) -> (CommonArgs, Context) {
        let dir = std::env::temp_dir();
        let mut argv = vec!["t", "--project-dir", dir.to_str().unwrap()];
        argv.extend_from_slice(args);
        let t = T::try_parse_from(argv).unwrap();
        let c = t.common.resolve().unwrap();
        (t.common, c)
    }

    #[test]
    fn document_wins_and_contradictions_are_usage_errors() {
        let (common, mut c) = ctx(&[]);
        let d = Document::new("shop", Some("abc"));
        let input = reconcile(&common, &mut c, Some(d.clone())).unwrap();
        assert_eq!(input.ctx.project, "shop");
        assert_eq!(input.ctx.tag.as_deref(), Some("abc"));

        let (common, mut c) = ctx(&["--tag", "other"]);
        let e = reconcile(&common, &mut c, Some(d.clone())).unwrap_err();
        assert_eq!(e.code, ExitCode::Usage);

        let (common, mut c) = ctx(&["-p", "elsewhere"]);
        let e = reconcile(&common, &mut c, Some(d)).unwrap_err();
        assert_eq!(e.code, ExitCode::Usage);
    }

    #[test]
    fn done_records_ok_with_its_code_and_after_sees_the_record() {
        let (_, c) = ctx(&[]);
        let input = Input {
            ctx: c,
            doc: Document::new("shop", Some("abc")),
            piped: false,
        };
        let spec = Spec::new("rollback", ExitCode::RollbackFailed).acting_on_failure(true);
        let seen = std::cell::RefCell::new(None);
        let code = run_then(
            spec,
            input,
            |_, _, _| Ok(Completed::Done(ExitCode::Unhealthy)),
            |_, d| *seen.borrow_mut() = Some(d.clone()),
        )
        .unwrap();
        assert_eq!(code, ExitCode::Unhealthy);
        let d = seen.into_inner().unwrap();
        let r = d.stage("rollback").unwrap();
        assert_eq!((r.status, r.exit_code), (Status::Ok, 4));
        assert_eq!(d.outcome(), 4);
    }

    #[test]
    fn the_spec_holds_its_lock_over_the_body_and_writes_its_ledger_line() {
        let state = tempfile::tempdir().unwrap();
        let input = |dry_run: bool| {
            let (_, mut c) = ctx(&[]);
            c.state_dir = state.path().to_path_buf();
            c.dry_run = dry_run;
            Input {
                ctx: c,
                doc: Document::new("shop", Some("abc")),
                piped: false,
            }
        };
        let spec = Spec::new("swap", ExitCode::Swap)
            .locked(lock::DEPLOY, Duration::ZERO)
            .ledger(Ledger::Provisional);
        let locked = |e: &anyhow::Error| exit::code_of(e, ExitCode::Preflight) == ExitCode::Locked;
        let code = run(spec, input(false), |ctx, _, _| {
            let other = lock::acquire(&ctx.state_dir, lock::DEPLOY, Duration::ZERO, None);
            assert!(locked(&other.unwrap_err()), "the body runs under the lock");
            Ok(Completed::Ok)
        })
        .unwrap();
        assert_eq!(code, ExitCode::Success);
        let lines = ledger::read(state.path()).unwrap();
        assert_eq!(lines.len(), 1);
        assert!(ledger::is_provisional(&lines[0]));
        // Released: another holder now keeps the next stage out, body unrun, 75 recorded.
        let other = lock::acquire(state.path(), lock::DEPLOY, Duration::ZERO, None).unwrap();
        let e = run(spec, input(false), |_, _, _| panic!("ran without the lock")).unwrap_err();
        assert!(locked(&e), "{e}");
        // A failed stage writes no provisional line; a dry run takes no lock and writes none.
        drop(other);
        let e = run(spec, input(false), |_, _, _| anyhow::bail!("no")).unwrap_err();
        assert_eq!(exit::code_of(&e, ExitCode::Preflight), ExitCode::Swap);
        let _held = lock::acquire(state.path(), lock::DEPLOY, Duration::ZERO, None).unwrap();
        let dry = spec.ledger(Ledger::Document);
        assert_eq!(
            run(dry, input(true), |_, _, _| Ok(Completed::Ok)).unwrap(),
            ExitCode::Success
        );
        assert_eq!(ledger::read(state.path()).unwrap().len(), 1);
    }

    #[test]
    fn failures_pass_through_except_for_stages_that_act_on_them() {
        let mut d = Document::new("shop", Some("abc"));
        d.stages.push(StageRecord {
            stage: "backup".into(),
            status: Status::Failed,
            started_at: time::now_rfc3339(),
            duration_ms: 3,
            exit_code: 5,
            detail: Map::new(),
            error: Some("disk full".into()),
            extra: Map::new(),
        });
        let swap = Spec::new("swap", ExitCode::Swap);
        assert_eq!(pass_through(&swap, &d), Some(ExitCode::Backup));
        let report = Spec {
            acts_on_failure: true,
            ..swap
        };
        assert_eq!(pass_through(&report, &d), None);
    }
}
