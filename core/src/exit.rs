//! The exit-code table (README's "Exit codes" table carries the same words; a test
//! checks it) and [`Failure`], the error that carries one of these codes.

use std::fmt;

/// Every exit code a berth command can return. Shell pipelines branch on these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitCode {
    /// 0: success.
    Success,
    /// 1: preflight failed (config invalid, docker unreachable, a pre-deploy test command failed).
    Preflight,
    /// 2: image unavailable (pull by tag failed).
    Image,
    /// 3: swap failed before traffic moved; the old version still serves.
    Swap,
    /// 4: not healthy after traffic moved (rolled back, where the rollback stage ran).
    Unhealthy,
    /// 5: backup failed; nothing changed.
    Backup,
    /// 6: migration failed; the old version still serves.
    Migration,
    /// 7: rollback failed: CRITICAL, a person must act.
    RollbackFailed,
    /// 64: usage error (bad flags or arguments).
    Usage,
    /// 65: bad deploy document on stdin.
    BadDocument,
    /// 75: another deploy holds the lock.
    Locked,
}

impl ExitCode {
    /// All codes, in table order.
    pub const ALL: [ExitCode; 11] = [
        ExitCode::Success,
        ExitCode::Preflight,
        ExitCode::Image,
        ExitCode::Swap,
        ExitCode::Unhealthy,
        ExitCode::Backup,
        ExitCode::Migration,
        ExitCode::RollbackFailed,
        ExitCode::Usage,
        ExitCode::BadDocument,
        ExitCode::Locked,
    ];

    pub fn code(self) -> i32 {
        match self {
            ExitCode::Success => 0,
            ExitCode::Preflight => 1,
            ExitCode::Image => 2,
            ExitCode::Swap => 3,
            ExitCode::Unhealthy => 4,
            ExitCode::Backup => 5,
            ExitCode::Migration => 6,
            ExitCode::RollbackFailed => 7,
            ExitCode::Usage => 64,
            ExitCode::BadDocument => 65,
            ExitCode::Locked => 75,
        }
    }

    /// The code for a number found in a document, if it is one of ours.
    pub fn from_code(code: i32) -> Option<ExitCode> {
        ExitCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// A stable snake_case name for machines (webhooks, JSON summaries): `rollback_failed`.
    pub fn name(self) -> &'static str {
        match self {
            ExitCode::Success => "success",
            ExitCode::Preflight => "preflight",
            ExitCode::Image => "image",
            ExitCode::Swap => "swap",
            ExitCode::Unhealthy => "unhealthy",
            ExitCode::Backup => "backup",
            ExitCode::Migration => "migration",
            ExitCode::RollbackFailed => "rollback_failed",
            ExitCode::Usage => "usage",
            ExitCode::BadDocument => "bad_document",
            ExitCode::Locked => "locked",
        }
    }

    pub fn meaning(self) -> &'static str {
        match self {
            ExitCode::Success => "success",
            ExitCode::Preflight => {
                "preflight failed (config invalid, docker unreachable, a pre-deploy test command failed)"
            }
            ExitCode::Image => "image unavailable (pull by tag failed)",
            ExitCode::Swap => "swap failed before traffic moved; the old version still serves",
            ExitCode::Unhealthy => {
                "not healthy after traffic moved (rolled back, where the rollback stage ran)"
            }
            ExitCode::Backup => "backup failed; nothing changed",
            ExitCode::Migration => "migration failed; the old version still serves",
            ExitCode::RollbackFailed => "rollback failed: CRITICAL, a person must act",
            ExitCode::Usage => "usage error",
            ExitCode::BadDocument => "bad deploy document on stdin",
            ExitCode::Locked => "another deploy holds the lock",
        }
    }
}

impl From<ExitCode> for i32 {
    fn from(c: ExitCode) -> i32 {
        c.code()
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(c: ExitCode) -> std::process::ExitCode {
        // All our codes fit in a u8.
        std::process::ExitCode::from(c.code() as u8)
    }
}

/// An error that knows its exit code. Stages return these (inside `anyhow::Error`);
/// `main` finds the code with `downcast_ref`, never by matching message text.
#[derive(Debug)]
pub struct Failure {
    pub code: ExitCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ExitCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(ExitCode::Usage, message)
    }
    pub fn bad_document(message: impl Into<String>) -> Failure {
        Failure::new(ExitCode::BadDocument, message)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Build an `anyhow::Error` carrying an exit code: `fail!(Swap, "new containers not ready")`.
#[macro_export]
macro_rules! fail {
    ($code:ident, $($arg:tt)*) => {
        ::anyhow::Error::new($crate::exit::Failure::new($crate::exit::ExitCode::$code, format!($($arg)*)))
    };
}

/// The exit code an error maps to: the [`Failure`] code anywhere in its chain, else `default`.
pub fn code_of(err: &anyhow::Error, default: ExitCode) -> ExitCode {
    err.chain()
        .find_map(|e| e.downcast_ref::<Failure>())
        .map(|f| f.code)
        .unwrap_or(default)
}

/// An error as one line: the whole context chain joined with ": ", newlines folded.
pub fn one_line(err: &anyhow::Error) -> String {
    let text = format!("{err:#}");
    text.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_readme_table() {
        let table: Vec<(i32, &str)> = ExitCode::ALL
            .iter()
            .map(|c| (c.code(), c.meaning()))
            .collect();
        assert_eq!(
            table.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4, 5, 6, 7, 64, 65, 75]
        );
        for (code, _) in &table {
            assert_eq!(ExitCode::from_code(*code).unwrap().code(), *code);
        }
        assert_eq!(ExitCode::from_code(2).unwrap(), ExitCode::Image);
        assert!(ExitCode::from_code(9).is_none());
        // The README carries the same table, word for word, and no other row.
        let readme = include_str!("../../README.md");
        let section = readme
            .split("\n## Exit codes\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README has an Exit codes section");
        let rows: Vec<(i32, String)> = section
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l
                    .trim()
                    .strip_prefix('|')?
                    .strip_suffix('|')?
                    .split(" | ")
                    .collect();
                let code = cells.first()?.trim().parse().ok()?;
                Some((code, cells.get(1)?.trim().to_string()))
            })
            .collect();
        let want: Vec<(i32, String)> = table.iter().map(|(c, m)| (*c, m.to_string())).collect();
        assert_eq!(
            rows, want,
            "README's exit-code table differs from ExitCode::meaning"
        );
    }

    #[test]
    fn names_are_distinct_snake_case() {
        let names: std::collections::BTreeSet<&str> =
            ExitCode::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), ExitCode::ALL.len());
        assert!(names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
        assert_eq!(ExitCode::RollbackFailed.name(), "rollback_failed");
        assert_eq!(ExitCode::from_code(4).unwrap().name(), "unhealthy");
    }

    #[test]
    fn code_is_found_through_context() {
        let e = fail!(Backup, "disk full").context("writing dump");
        assert_eq!(code_of(&e, ExitCode::Preflight), ExitCode::Backup);
        let plain = anyhow::anyhow!("x");
        assert_eq!(code_of(&plain, ExitCode::Preflight), ExitCode::Preflight);
        assert_eq!(one_line(&e), "writing dump: disk full");
    }
}
