//! What `scripts/deploy.sh` asks of berth-report besides the report itself:
//!
//! - `berth-report env-file --env NAME`: read `<project dir>/deploy.NAME.env` as data
//!   ([`berth_core::settings`]) and print the settings to export, NUL-separated, so the
//!   script never evaluates a value.
//! - `berth-report record-failure --stage NAME --exit N --message LINE`: a stage ended
//!   without writing a document (killed, crashed, a usage error): record it as failed in
//!   the kept document so that rollback and report still run.

use std::io::Write;

use anyhow::Result;
use berth_core::cli::{parse_duration, CommonArgs};
use berth_core::doc::{self, StageRecord, Status};
use berth_core::{msg, record, settings, stage, time, ExitCode, Failure};
use serde_json::Map;

#[derive(Debug, clap::Args)]
pub struct EnvFileArgs {
    /// The environment: reads <project dir>/deploy.NAME.env
    #[arg(long = "env", value_name = "NAME")]
    pub env: Option<String>,

    /// (Only --project-dir is used: the directory that holds the env file.)
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Check the environment's `DEPLOY_*` keys and the env file; print `KEY=VALUE\0` for
/// each setting of the file the environment does not already set (the environment
/// wins), then `DEPLOY_LOCK_WAIT_SECS=N\0` when `DEPLOY_LOCK_WAIT` is set (whole
/// seconds, rounded up, for flock: the script does no arithmetic on values).
pub fn env_file(args: &EnvFileArgs) -> Result<ExitCode> {
    if let Some(e) =
        settings::unknown_in_env(std::env::vars_os().map(|(k, _)| k.to_string_lossy().to_string()))
    {
        return Err(Failure::usage(format!("{e} (in the environment)")).into());
    }
    let mut out: Vec<(String, String)> = Vec::new();
    if let Some(name) = &args.env {
        let ok = !name.is_empty()
            && !name.starts_with(['.', '-'])
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !ok {
            return Err(Failure::usage(format!(
                "--env {name:?}: not an environment name (letters, digits, '.', '_', '-')"
            ))
            .into());
        }
        let file = args.common.project_dir.join(format!("deploy.{name}.env"));
        let text = std::fs::read(&file).map_err(|e| {
            Failure::usage(format!(
                "no env file {} for --env {name}: {e}",
                file.display()
            ))
        })?;
        let text = String::from_utf8(text)
            .map_err(|_| Failure::usage(format!("{}: not UTF-8 text", file.display())))?;
        let parsed = settings::parse(&text, &file.display().to_string())?;
        for w in &parsed.warnings {
            msg::warn(w);
        }
        out.extend(
            parsed
                .pairs
                .into_iter()
                .filter(|(k, _)| std::env::var_os(k).is_none()),
        );
    }
    let lock_wait = out
        .iter()
        .find(|(k, _)| k == "DEPLOY_LOCK_WAIT")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("DEPLOY_LOCK_WAIT").ok())
        .filter(|v| !v.is_empty());
    if let Some(w) = lock_wait {
        let d = parse_duration(&w)
            .map_err(|e| Failure::usage(format!("DEPLOY_LOCK_WAIT={w:?}: {e}")))?;
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        out.push(("DEPLOY_LOCK_WAIT_SECS".into(), secs.to_string()));
    }
    let mut stdout = std::io::stdout().lock();
    for (k, v) in &out {
        write!(stdout, "{k}={v}\0")?;
    }
    stdout.flush()?;
    Ok(ExitCode::Success)
}

#[derive(Debug, clap::Args)]
pub struct RecordFailureArgs {
    /// The stage that ended without a document (e.g. smoke)
    #[arg(long, value_name = "NAME")]
    pub stage: String,

    /// Its exit status
    #[arg(long = "exit", value_name = "N")]
    pub exit: i32,

    /// Its last line on stderr (secrets are scrubbed before it is recorded)
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub message: String,

    #[command(flatten)]
    pub common: CommonArgs,
}

/// The code to record for a stage that exited `exit` without a document: its own when
/// it is one of berth's failure codes, else the stage's meaning (a swap or rollback
/// that died leaves the state unknown: 7, a person must look).
pub fn failure_code(stage: &str, exit: i32) -> ExitCode {
    match ExitCode::from_code(exit) {
        Some(c) if c != ExitCode::Success => c,
        _ => match stage {
            "pull" => ExitCode::Image,
            "backup" => ExitCode::Backup,
            "migrate" => ExitCode::Migration,
            "smoke" => ExitCode::Unhealthy,
            "swap" | "rollback" => ExitCode::RollbackFailed,
            "maintenance_on" | "maintenance_off" | "maintenance" => ExitCode::Swap,
            _ => ExitCode::Preflight,
        },
    }
}

/// `record-failure`: the kept document (stdin; a new one when empty) with a failed
/// record for the stage, to stdout. Exit 0 once written.
pub fn record_failure(args: &RecordFailureArgs) -> Result<ExitCode> {
    let name = args.stage.trim();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
    {
        return Err(Failure::usage(format!("--stage {:?}: not a stage name", args.stage)).into());
    }
    let input = stage::load(&args.common)?;
    let mut d = input.doc;
    let code = failure_code(name, args.exit);
    let env: Vec<(String, String)> = std::env::vars().collect();
    let said = scrub(&args.message, &env);
    let error = if said.is_empty() {
        format!(
            "stage {name} exited {} without writing a deploy document",
            args.exit
        )
    } else {
        format!(
            "stage {name} exited {} without writing a deploy document: {said}",
            args.exit
        )
    };
    let detail = record::to_detail(&record::NoDocument {
        no_document: true,
        exit_status: args.exit,
        ..Default::default()
    });
    d.stages.push(StageRecord {
        stage: name.to_string(),
        status: Status::Failed,
        started_at: time::now_rfc3339(),
        duration_ms: 0,
        exit_code: code.code(),
        detail,
        error: Some(error.clone()),
        extra: Map::new(),
    });
    msg::info(format!("recorded: {error} (exit {})", code.code()));
    doc::write_stdout(&d)?;
    Ok(ExitCode::Success)
}

/// A line fit for the document and the ledger: one line, at most 300 characters,
/// secrets scrubbed ([`berth_core::scrub`]: URL passwords, `KEY=secret`, and the values
/// of this environment's secret variables, e.g. `TELEGRAM_BOT_TOKEN`, webhook URLs).
pub fn scrub(text: &str, env: &[(String, String)]) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let known: Vec<String> = env
        .iter()
        .filter(|(k, v)| {
            (berth_core::scrub::is_secret_key(k) || k.ends_with("WEBHOOK_URL")) && v.len() >= 4
        })
        .map(|(_, v)| v.clone())
        .collect();
    berth_core::scrub::scrub(&line, &known)
        .trim()
        .chars()
        .take(300)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_for_stages_that_left_no_document() {
        assert_eq!(failure_code("smoke", 64), ExitCode::Usage);
        assert_eq!(failure_code("smoke", 137), ExitCode::Unhealthy);
        assert_eq!(failure_code("swap", 137), ExitCode::RollbackFailed);
        assert_eq!(failure_code("backup", 0), ExitCode::Backup);
        assert_eq!(failure_code("preflight", 127), ExitCode::Preflight);
    }

    #[test]
    fn scrubbed_lines() {
        let env = vec![(
            "TELEGRAM_BOT_TOKEN".to_string(),
            "123456:secret-token".to_string(),
        )];
        let s = scrub(
            "berth-x: error: POST https://api/bot123456:secret-token/send failed;\tdb postgres://app:hunter22@db:5432/shop down",
            &env,
        );
        assert!(
            !s.contains("secret-token") && !s.contains("hunter22"),
            "{s}"
        );
        assert!(s.contains("postgres://app:***@db:5432/shop"), "{s}");
        assert!(!s.contains('\t'));
        assert_eq!(scrub(&"x".repeat(1000), &env).len(), 300);
    }
}
