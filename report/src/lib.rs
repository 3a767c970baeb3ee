//! `berth-report`: the deploy's last stage. Reads the final deploy document, passes it
//! through unchanged, tells people what happened (stderr, a log file, Telegram, a webhook,
//! Slack), appends the release to the ledger, and exits with the deploy's outcome.
//! `status` and `history` answer "what runs now" and "what ran before" without a document.

pub mod deploy;
pub mod notify;
pub mod render;
pub mod status;
pub mod summary;
pub mod swarm;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use berth_core::cli::{parse_duration, CommonArgs};
use berth_core::doc::{self, Document};
use berth_core::{exit, fsutil, ledger, msg, stage, ExitCode, Failure};
use clap::{Parser, Subcommand, ValueEnum};

use notify::Channel;

const EXAMPLES: &str = "\
Examples:
  # The end of a deploy pipeline: report, record in the ledger, notify, exit with the outcome
  berth-swap --tag 3f9c2a1 web | berth-healthwait --url http://127.0.0.1/readyz --stage smoke \\
    | berth-rollback | berth-report --notify telegram,webhook

  # Report a saved document as Markdown into a file (e.g. a CI job summary), no ledger
  berth-report --format markdown --out report.md --no-ledger < deploy.json

  # What runs now, per service: image, tag, since when, health, containers
  berth-report status
  berth-report status web --json

  # The release ledger, newest first, the last good release marked
  berth-report history --limit 10

  # status and history take their flags after their name
  berth-report status --project-dir /srv/shop -p shop

Notifications read their settings from the environment only (secrets never go on a
command line, into the document, the ledger or any message):
  telegram  TELEGRAM_BOT_TOKEN, TELEGRAM_CHAT_ID (API base: BERTH_TELEGRAM_API)
  webhook   BERTH_WEBHOOK_URL (receives a JSON summary)
  slack     BERTH_SLACK_WEBHOOK_URL (an incoming webhook)
A notification that fails is a warning; it never changes the exit status.

Files: <state dir>/releases.jsonl (the ledger: one document per line, appended, never
rewritten) and <state dir>/logs/deploy-<deploy id>.log (the text report).

Exit status: the deploy's outcome from the document (0 success, 1-7 the failed stage's
code: 4 rolled back, 7 rollback failed: CRITICAL); 64 usage error or no document on
stdin; 65 bad document. status and history: 0, 1 when docker does not answer (status).";

/// Report a deploy: read the final deploy document on stdin, write it unchanged to
/// stdout, a report for people to stderr, the release to the ledger and a log file;
/// notify; exit with the deploy's outcome.
#[derive(Debug, Parser)]
#[command(
    name = "berth-report",
    version,
    after_long_help = EXAMPLES,
    after_help = "See --help for examples, notification settings and exit codes.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The report's format (stderr and --out)
    #[arg(long, value_enum, default_value = "text", env = "BERTH_REPORT_FORMAT")]
    pub format: Format,

    /// Also write the report to FILE (atomically)
    #[arg(long, value_name = "FILE", env = "BERTH_REPORT_OUT")]
    pub out: Option<PathBuf>,

    /// Record nothing: no ledger line, no log file (for dry runs and saved documents)
    #[arg(long, env = "BERTH_NO_LEDGER")]
    pub no_ledger: bool,

    /// Send a notification: telegram, webhook, slack (repeatable or comma-separated;
    /// an empty value sends none)
    #[arg(
        long,
        value_name = "CHANNEL[,CHANNEL]",
        value_parser = notify::parse_channels,
        env = "BERTH_NOTIFY",
        help_heading = "Notifications"
    )]
    pub notify: Vec<notify::Channels>,

    /// Bound on one notification attempt
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration,
          env = "BERTH_NOTIFY_TIMEOUT", help_heading = "Notifications")]
    pub notify_timeout: Duration,

    /// Attempts per notification (transport errors, 429 and 5xx are retried with backoff)
    #[arg(
        long,
        value_name = "N",
        default_value = "3",
        env = "BERTH_NOTIFY_ATTEMPTS",
        help_heading = "Notifications"
    )]
    pub notify_attempts: NonZeroU32,

    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Markdown,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// What runs now per service: image, tag, since when, health, containers; and the
    /// last release from the ledger. Needs docker; reads no document.
    #[command(after_help = "Example: berth-report status web --json")]
    Status {
        /// Only this service
        #[arg(value_name = "SERVICE")]
        service: Option<String>,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        backups: status::BackupArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// The release ledger, newest first: time, deploy id, tag, outcome, duration; the last
    /// good release marked. Reads no document.
    #[command(after_help = "Example: berth-report history --limit 5 --json")]
    History {
        /// Show at most N releases
        #[arg(long, value_name = "N", default_value = "20")]
        limit: usize,
        /// Print JSON (an array, newest first) instead of a table
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// For scripts/deploy.sh: read deploy.NAME.env as data (never code) and print the
    /// settings to export as NUL-separated KEY=VALUE; exit 64 naming a bad line or key
    #[command(
        name = "env-file",
        after_help = "Example: berth-report env-file --env production | xargs -0 -n1 echo"
    )]
    EnvFile(deploy::EnvFileArgs),
    /// For scripts/deploy.sh: record a stage that exited without writing a document as
    /// failed in the kept document (stdin to stdout), so that rollback and report run
    #[command(
        name = "record-failure",
        after_help = "Example: berth-report record-failure --stage smoke --exit 64 --message 'error: ...' < doc.json"
    )]
    RecordFailure(deploy::RecordFailureArgs),
}

/// `--check-args` of the report: the settings it would use, notifications included (a
/// channel whose secrets are missing would only warn at the end of a deploy).
fn check_report(cli: &Cli) -> Result<()> {
    cli.common.check()?;
    if let Some(dir) = cli.out.as_ref().and_then(|o| o.parent()) {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            return Err(Failure::usage(format!("--out: no directory {}", dir.display())).into());
        }
    }
    let probe = Document::new("check", Some("check"));
    for c in cli.notify.iter().flat_map(|c| c.0.iter()) {
        notify::request(*c, &probe, &env_var)
            .map_err(|e| Failure::usage(format!("--notify {}: {e}", c.name())))?;
    }
    Ok(())
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let check_only = match &cli.command {
        None => cli.common.check_args,
        Some(Command::Status { common, .. }) | Some(Command::History { common, .. }) => {
            common.check_args
        }
        Some(Command::EnvFile(_)) => false,
        Some(Command::RecordFailure(a)) => a.common.check_args,
    };
    if check_only {
        return berth_core::cli::checked(|| match &cli.command {
            None => check_report(&cli),
            Some(Command::Status { common, .. }) | Some(Command::History { common, .. }) => {
                Ok(common.check()?)
            }
            Some(Command::RecordFailure(a)) => Ok(a.common.check()?),
            Some(Command::EnvFile(_)) => Ok(()),
        });
    }
    match &cli.command {
        Some(Command::EnvFile(a)) => deploy::env_file(a),
        Some(Command::RecordFailure(a)) => deploy::record_failure(a),
        Some(Command::Status {
            service,
            json,
            backups,
            common,
        }) => status::status(
            &common.resolve()?,
            common.engine,
            service.as_deref(),
            *json,
            backups,
        ),
        Some(Command::History {
            limit,
            json,
            common,
        }) => status::history(&common.resolve()?, *limit, *json),
        None => report(&cli),
    }
}

/// Read the environment (notification settings).
fn env_var(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

fn report(cli: &Cli) -> Result<ExitCode> {
    // The document's project and tag win; a flag that contradicts them is a usage error.
    let input = stage::load(&cli.common)?;
    if !input.piped {
        return Err(Failure::usage("berth-report needs the deploy document on stdin").into());
    }
    let (ctx, doc) = (input.ctx, input.doc);

    // The document first, unchanged: the next reader should not wait on notifications.
    if let Err(e) = doc::write_stdout(&doc) {
        msg::error(format!("writing the document to stdout: {e}"));
    }

    let text = render::text(&doc);
    let shown = match cli.format {
        Format::Text => text.clone(),
        Format::Markdown => render::markdown(&doc),
        Format::Json => {
            serde_json::to_string_pretty(&summary::to_json(&doc)).expect("JSON serializes") + "\n"
        }
    };
    eprint!("{shown}");
    if let Some(out) = &cli.out {
        if let Err(e) = fsutil::write_atomic(out, shown.as_bytes(), 0o644) {
            msg::error(format!(
                "could not write the report to {}: {}",
                out.display(),
                exit::one_line(&e)
            ));
        }
    }

    if cli.no_ledger || ctx.dry_run {
        msg::info("not recorded (--no-ledger or --dry-run): no ledger line, no log file");
    } else {
        record(&ctx.state_dir, &doc, &text);
    }

    let channels: Vec<Channel> = cli.notify.iter().flat_map(|c| c.0.clone()).collect();
    if !channels.is_empty() {
        let opts = notify::Options {
            timeout: cli.notify_timeout,
            attempts: cli.notify_attempts.get(),
            backoff: Duration::from_millis(500),
        };
        notify::notify_all(&channels, &doc, &opts, &env_var, ctx.dry_run);
    }

    let code = doc.outcome();
    Ok(ExitCode::from_code(code).unwrap_or_else(|| {
        msg::warn(format!(
            "the document's outcome {code} is not a berth exit code; exiting 1"
        ));
        ExitCode::Preflight
    }))
}

/// The log file for a deploy id (characters outside `[A-Za-z0-9._-]` become `_`, so a
/// document can never name a path outside the logs directory).
pub fn log_path(state_dir: &Path, deploy_id: &str) -> PathBuf {
    let safe: String = deploy_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    state_dir.join("logs").join(format!("deploy-{safe}.log"))
}

/// Append to the ledger and write the log. A failure here is loud, but the exit status
/// stays the deploy's: the report never masks what happened to the release.
fn record(state_dir: &Path, doc: &Document, text: &str) {
    match ledger::append(state_dir, &ledger::final_line(doc)) {
        Ok(()) => msg::info(format!("recorded in {}", ledger::path(state_dir).display())),
        Err(e) => msg::error(format!(
            "could not append to the ledger: {}",
            exit::one_line(&e)
        )),
    }
    let log = log_path(state_dir, &doc.deploy_id);
    let text = berth_core::scrub::scrub(text, &[]);
    let res = fsutil::create_dir(&state_dir.join("logs"), ledger::DIR_MODE)
        .and_then(|_| fsutil::write_atomic(&log, text.as_bytes(), ledger::FILE_MODE));
    if let Err(e) = res {
        msg::error(format!(
            "could not write the log {}: {}",
            log.display(),
            exit::one_line(&e)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths_stay_in_the_logs_dir() {
        let p = log_path(Path::new("/s"), "../../etc/x y");
        assert_eq!(p, Path::new("/s/logs/deploy-.._.._etc_x_y.log"));
        assert_eq!(p.parent(), Some(Path::new("/s/logs")));
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
