//! The one way berth runs child processes: argument vectors (never a shell string),
//! stderr captured, exit status classified, the child's trimmed stderr in the error.
//!
//! Nothing waits forever: every child runs in its own process group under a deadline
//! (its own [`Cmd::timeout`], else `--command-timeout`, never past the stage's deadline
//! set with [`set_deadline`]). A watchdog thread sends the whole group SIGTERM when the
//! deadline passes, SIGKILL [`KILL_GRACE`] later, and the command fails with
//! [`ProcessError::TimedOut`] ("docker compose ps did not finish within 5s").
//! SIGINT, SIGTERM and SIGHUP sent to berth are forwarded to every running child group,
//! so Ctrl-C or a CI cancel leaves no orphans.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod watchdog;
pub use watchdog::{handle_signals_in_caller, interrupted, Watch};

/// The bound of a child without one of its own (`--command-timeout`).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child's group has between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

static COMMAND_TIMEOUT_MS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(DEFAULT_COMMAND_TIMEOUT.as_millis() as u64);
static DEADLINE: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);

/// Set the bound of children that have none of their own (`--command-timeout`).
pub fn set_command_timeout(d: Duration) {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
    COMMAND_TIMEOUT_MS.store(ms, std::sync::atomic::Ordering::SeqCst);
}

pub fn command_timeout() -> Duration {
    Duration::from_millis(COMMAND_TIMEOUT_MS.load(std::sync::atomic::Ordering::SeqCst))
}

/// The stage's own deadline: no child started from now on runs past it.
pub fn set_deadline(at: Instant) {
    *DEADLINE.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
}

fn stage_deadline() -> Option<Instant> {
    *DEADLINE.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a command may run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Limit {
    /// `--command-timeout`.
    Default,
    /// Its own bound (a pull, a dump).
    Own(Duration),
    /// Only the stage's deadline (else `--command-timeout`).
    Stage,
}

/// A command to run. Build it, then [`Cmd::read`] (capture stdout) or [`Cmd::run`].
#[derive(Clone, Debug)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    dir: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    limit: Limit,
    deadline: Option<Instant>,
}

/// Why a command did not succeed.
#[derive(Debug)]
pub enum ProcessError {
    /// The program could not be started (not installed, not executable).
    NotStarted { program: String, error: String },
    /// It ran and exited non-zero, or was killed by a signal.
    Failed {
        command: String,
        code: Option<i32>,
        signal: Option<i32>,
        stderr: String,
    },
    /// It passed its deadline and its process group was killed.
    TimedOut {
        command: String,
        limit: Duration,
        /// The limit was what was left of the stage's deadline.
        by_stage: bool,
    },
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessError::NotStarted { program, error } => {
                write!(f, "could not run {program}: {error}")
            }
            ProcessError::Failed {
                command,
                code,
                signal,
                stderr,
            } => {
                let how = match (code, signal) {
                    (Some(c), _) => format!("exited with {c}"),
                    (None, Some(s)) => format!("was killed by signal {s}"),
                    _ => "failed".to_string(),
                };
                let tail = crate::scrub::scrub(&last_lines(stderr, 3), &[]);
                if tail.is_empty() {
                    write!(f, "`{command}` {how}")
                } else {
                    write!(f, "`{command}` {how}: {tail}")
                }
            }
            ProcessError::TimedOut {
                command,
                limit,
                by_stage,
            } => {
                write!(
                    f,
                    "{command} did not finish within {}",
                    crate::human::limit(*limit)
                )?;
                if *by_stage {
                    f.write_str(" (the stage's deadline)")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ProcessError {}

impl ProcessError {
    /// The captured stderr, when the command ran.
    pub fn stderr(&self) -> &str {
        match self {
            ProcessError::Failed { stderr, .. } => stderr,
            ProcessError::NotStarted { .. } | ProcessError::TimedOut { .. } => "",
        }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, ProcessError::TimedOut { .. })
    }
}

/// The last `n` non-empty lines of `text`, joined with " / ".
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

/// What a successful run produced.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        Cmd {
            program: program.as_ref().to_os_string(),
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
            stdin: None,
            limit: Limit::Default,
            deadline: None,
        }
    }

    /// Bound this command by `d` instead of `--command-timeout` (still never past the
    /// stage's deadline).
    pub fn timeout(mut self, d: Duration) -> Cmd {
        self.limit = Limit::Own(d);
        self
    }

    /// Bound this command only by the stage's deadline (a dump or a restore that takes
    /// what it takes); `--command-timeout` when the stage set none.
    pub fn stage_timeout(mut self) -> Cmd {
        self.limit = Limit::Stage;
        self
    }

    /// Never run past `at` (e.g. the end of a wait this command is part of).
    pub fn deadline(mut self, at: Instant) -> Cmd {
        self.deadline = Some(self.deadline.map_or(at, |d| d.min(at)));
        self
    }

    /// From now: how long this command may run, and whether a deadline (not its own
    /// bound) decided it.
    pub fn limit(&self) -> (Duration, bool) {
        let now = Instant::now();
        let own = match (self.limit, stage_deadline()) {
            (Limit::Own(d), _) => d,
            (Limit::Stage, Some(_)) => Duration::MAX,
            (Limit::Stage, None) | (Limit::Default, _) => command_timeout(),
        };
        let left = [stage_deadline(), self.deadline]
            .into_iter()
            .flatten()
            .map(|d| d.saturating_duration_since(now))
            .min();
        match left {
            Some(l) if l < own => (l, true),
            _ => (own, false),
        }
    }

    /// The command as short as it stays recognisable, for "did not finish" lines: the
    /// program's file name, and for `docker compose` without the options every berth
    /// compose call carries (`--project-directory`, `-p`, `-f`).
    pub fn short_display(&self) -> String {
        let prog = Path::new(&self.program)
            .file_name()
            .unwrap_or(self.program.as_os_str())
            .to_string_lossy()
            .to_string();
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| a.to_string_lossy().to_string())
            .collect();
        let mut words = vec![prog];
        let mut rest = &args[..];
        if rest.first().is_some_and(|a| a == "compose") {
            words.push("compose".into());
            rest = &rest[1..];
            while let [opt, _, tail @ ..] = rest {
                if !["--project-directory", "-p", "-f", "--file"].contains(&opt.as_str()) {
                    break;
                }
                rest = tail;
            }
        }
        words.extend(rest.iter().cloned());
        words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Cmd {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Set a variable for the child (secrets go here, never into argv).
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Cmd {
        self.env
            .push((k.as_ref().to_os_string(), v.as_ref().to_os_string()));
        self
    }

    pub fn dir(mut self, d: impl AsRef<Path>) -> Cmd {
        self.dir = Some(d.as_ref().to_path_buf());
        self
    }

    pub fn stdin_bytes(mut self, data: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(data.into());
        self
    }

    pub fn program(&self) -> &OsStr {
        &self.program
    }

    pub fn arg_list(&self) -> &[OsString] {
        &self.args
    }

    /// The command as a person would type it (quoted where needed). Environment values
    /// are not shown: they may be secrets.
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(self.args.iter())
            .map(|a| quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A duct expression for this command, for callers that stream (dumps, logs). The
    /// child starts in its own process group: start it, then [`Cmd::watch`] its pids.
    pub fn expression(&self) -> duct::Expression {
        let mut e = duct::cmd(&self.program, &self.args).before_spawn(|c| {
            use std::os::unix::process::CommandExt;
            c.process_group(0);
            Ok(())
        });
        for (k, v) in &self.env {
            e = e.env(k, v);
        }
        if let Some(d) = &self.dir {
            e = e.dir(d);
        }
        if let Some(s) = &self.stdin {
            e = e.stdin_bytes(s.clone());
        }
        e
    }

    /// Put a started child (its [`Cmd::expression`]) under this command's deadline and
    /// the signal forwarding. Check [`Watch::timed_out`] once it has ended.
    pub fn watch(&self, pids: &[u32]) -> Watch {
        let (limit, by_stage) = self.limit();
        Watch::new(pids, limit, self.short_display(), by_stage)
    }

    fn not_started(&self, error: impl fmt::Display) -> ProcessError {
        ProcessError::NotStarted {
            program: self.program.to_string_lossy().to_string(),
            error: error.to_string(),
        }
    }

    /// Start [`Cmd::expression`] as `shape` makes it, watched: refused once berth was
    /// interrupted (a signal arrived and berth is about to exit).
    pub fn start(
        &self,
        shape: impl FnOnce(duct::Expression) -> duct::Expression,
    ) -> Result<(duct::Handle, Watch), ProcessError> {
        self.launch(shape, |e| e.start(), duct::Handle::pids)
    }

    /// Run [`Cmd::expression`] as `shape` makes it (stdin from a file, stdout to one),
    /// watched, to its end: the output whatever the exit status (callers classify it);
    /// an error when it could not start or passed its deadline.
    pub fn run_shaped(
        &self,
        shape: impl FnOnce(duct::Expression) -> duct::Expression,
    ) -> Result<std::process::Output, ProcessError> {
        let (handle, watch) = self.start(|e| shape(e).unchecked())?;
        let out = handle.wait().map_err(|e| self.not_started(e))?.clone();
        watch.finished()?;
        Ok(out)
    }

    /// Start [`Cmd::expression`] as `shape` makes it, reading its stdout as it comes
    /// (dumps, archives), watched: keep the [`Watch`] until the reader is done, then ask
    /// it whether the deadline passed.
    pub fn reader(
        &self,
        shape: impl FnOnce(duct::Expression) -> duct::Expression,
    ) -> Result<(duct::ReaderHandle, Watch), ProcessError> {
        self.launch(
            |e| shape(e).unchecked(),
            |e| e.reader(),
            duct::ReaderHandle::pids,
        )
    }

    fn launch<H>(
        &self,
        shape: impl FnOnce(duct::Expression) -> duct::Expression,
        go: impl FnOnce(duct::Expression) -> std::io::Result<H>,
        pids: impl FnOnce(&H) -> Vec<u32>,
    ) -> Result<(H, Watch), ProcessError> {
        if interrupted() {
            return Err(self.not_started("berth was interrupted"));
        }
        let handle = go(shape(self.expression())).map_err(|e| self.not_started(e))?;
        let watch = self.watch(&pids(&handle));
        Ok((handle, watch))
    }

    /// Run, capturing stdout and stderr; non-zero exit is an error carrying stderr.
    pub fn output(&self) -> Result<Output, ProcessError> {
        let stdin_given = self.stdin.is_some();
        let out = self.run_shaped(|e| {
            // Its own process group is not the terminal's: it must not read the terminal.
            let e = if stdin_given { e } else { e.stdin_null() };
            e.stdout_capture().stderr_capture()
        })?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.success() {
            Ok(Output { stdout, stderr })
        } else {
            use std::os::unix::process::ExitStatusExt;
            Err(ProcessError::Failed {
                command: self.display(),
                code: out.status.code(),
                signal: out.status.signal(),
                stderr,
            })
        }
    }

    /// Run and return trimmed stdout.
    pub fn read(&self) -> Result<String, ProcessError> {
        self.output().map(|o| o.stdout.trim_end().to_string())
    }

    /// Run for its effect; stdout is discarded.
    pub fn run(&self) -> Result<(), ProcessError> {
        self.output().map(|_| ())
    }
}

/// Quote a word for display in a POSIX shell (for people copying a printed command).
pub fn quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs mutating commands, or only prints them under `--dry-run`.
#[derive(Debug, Clone, Copy)]
pub struct Runner {
    pub dry_run: bool,
}

impl Runner {
    /// Run a command that changes something. In dry-run mode print `+ cmd` to stderr
    /// and pretend it succeeded with empty output.
    pub fn change(&self, cmd: &Cmd) -> Result<Output, ProcessError> {
        if self.dry_run {
            crate::msg::info(format!("would run: {}", cmd.display()));
            return Ok(Output {
                stdout: String::new(),
                stderr: String::new(),
            });
        }
        cmd.output()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_errors() {
        let out = Cmd::new("sh")
            .args(["-c", "echo out; echo err >&2"])
            .output()
            .unwrap();
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");

        let e = Cmd::new("sh")
            .args(["-c", "echo one >&2; echo two >&2; exit 3"])
            .output()
            .unwrap_err();
        match &e {
            ProcessError::Failed { code, stderr, .. } => {
                assert_eq!(*code, Some(3));
                assert!(stderr.contains("two"));
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("exited with 3: one / two"), "{e}");

        let e = Cmd::new("/nonexistent/berth-test").output().unwrap_err();
        assert!(matches!(e, ProcessError::NotStarted { .. }), "{e:?}");
    }

    #[test]
    fn env_and_stdin_reach_the_child() {
        let out = Cmd::new("sh")
            .args(["-c", "printf %s \"$X\"; cat"])
            .env("X", "secret")
            .stdin_bytes("in")
            .read()
            .unwrap();
        assert_eq!(out, "secretin");
    }

    #[test]
    fn display_quotes_and_hides_env() {
        let c = Cmd::new("docker")
            .args(["compose", "-p", "shop", "exec", "it's here"])
            .env("PGPASSWORD", "hunter2");
        assert_eq!(c.display(), r"docker compose -p shop exec 'it'\''s here'");
        assert!(!c.display().contains("hunter2"));
    }

    /// Whether any process runs `sleep <marker>` (a unique number of seconds).
    fn sleeper_alive(marker: &str) -> bool {
        std::fs::read_dir("/proc").unwrap().flatten().any(|d| {
            std::fs::read(d.path().join("cmdline"))
                .map(|c| c == format!("sleep\0{marker}\0").as_bytes())
                .unwrap_or(false)
        })
    }

    #[test]
    fn a_hung_command_is_killed_with_its_group() {
        // The grandchild ignores SIGTERM and holds stdout: only the group's SIGKILL ends it.
        let marker = format!("{}", 900_000 + std::process::id() % 90_000);
        let started = Instant::now();
        let e = Cmd::new("sh")
            .args([
                "-c",
                &format!("sh -c 'trap \"\" TERM; sleep {marker}' & wait"),
            ])
            .timeout(Duration::from_millis(300))
            .output()
            .unwrap_err();
        assert!(e.is_timeout(), "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with("sh -c ") && text.ends_with(" did not finish within 300ms"),
            "{text}"
        );
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(!sleeper_alive(&marker), "sleep {marker} survived");

        // A deadline nearer than the command's own bound decides, and says so.
        let e = Cmd::new("sleep")
            .arg("5")
            .deadline(Instant::now() + Duration::from_millis(200))
            .run()
            .unwrap_err();
        assert!(e.to_string().ends_with("(the stage's deadline)"), "{e}");

        // A command that ends in time is not touched.
        assert_eq!(
            Cmd::new("echo")
                .arg("ok")
                .timeout(Duration::from_secs(30))
                .read()
                .unwrap(),
            "ok"
        );
    }

    #[test]
    fn limits() {
        let c = Cmd::new("docker").timeout(Duration::from_secs(600));
        assert_eq!(c.limit(), (Duration::from_secs(600), false));
        let (l, by_deadline) = c
            .clone()
            .deadline(Instant::now() + Duration::from_secs(5))
            .limit();
        assert!(by_deadline && l <= Duration::from_secs(5), "{l:?}");
        assert_eq!(Cmd::new("x").limit().0, command_timeout());
    }

    #[test]
    fn short_display_drops_compose_boilerplate() {
        let c = Cmd::new("/usr/local/bin/docker").args([
            "compose",
            "--project-directory",
            "/srv/shop",
            "-p",
            "shop",
            "-f",
            "a.yml",
            "ps",
            "-q",
        ]);
        assert_eq!(c.short_display(), "docker compose ps -q");
        assert_eq!(
            Cmd::new("docker").args(["pull", "r/x:1"]).short_display(),
            "docker pull r/x:1"
        );
    }

    #[test]
    fn dry_run_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("m");
        let c = Cmd::new("touch").arg(&marker);
        Runner { dry_run: true }.change(&c).unwrap();
        assert!(!marker.exists());
        Runner { dry_run: false }.change(&c).unwrap();
        assert!(marker.exists());
    }
}
