//! The one way berth runs child processes: argument vectors (never a shell string),
//! stderr captured, exit status classified, the child's trimmed stderr in the error.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};

/// A command to run. Build it, then [`Cmd::read`] (capture stdout) or [`Cmd::run`].
#[derive(Clone, Debug)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    dir: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
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
        }
    }
}

impl std::error::Error for ProcessError {}

impl ProcessError {
    /// The captured stderr, when the command ran.
    pub fn stderr(&self) -> &str {
        match self {
            ProcessError::Failed { stderr, .. } => stderr,
            ProcessError::NotStarted { .. } => "",
        }
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
        }
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

    /// A duct expression for this command, for callers that stream (dumps, logs).
    pub fn expression(&self) -> duct::Expression {
        let mut e = duct::cmd(&self.program, &self.args);
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

    /// Run, capturing stdout and stderr; non-zero exit is an error carrying stderr.
    pub fn output(&self) -> Result<Output, ProcessError> {
        let out = self
            .expression()
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .run()
            .map_err(|e| ProcessError::NotStarted {
                program: self.program.to_string_lossy().to_string(),
                error: e.to_string(),
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
