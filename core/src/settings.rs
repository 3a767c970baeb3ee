//! The env file of an environment (`deploy.<env>.env`, read by `scripts/deploy.sh`
//! through `berth-report env-file`): data, never code.
//!
//! Format, one setting per line:
//! - `KEY=VALUE`; the value is everything after the first `=`, taken literally (`$`,
//!   backquotes, `#` and spaces are data; nothing is expanded or evaluated). A value wholly
//!   inside one pair of `"` or `'` loses that pair (no escapes inside).
//! - Blank lines, and lines whose first non-blank character is `#`, are comments; `#`
//!   anywhere else belongs to the value (`DEPLOY_BACKUP=none # no` is the value `none # no`,
//!   which the setting's own check then refuses).
//! - CRLF line endings: the `\r` is removed, with one warning.
//! - Refused: keys that change how programs run ([`refused`]), unknown `DEPLOY_*` and
//!   `BERTH_*` keys (a typo must not pass silently), a key set twice, control characters.

use crate::exit::Failure;

/// Every `DEPLOY_*` setting `scripts/deploy.sh` reads.
pub const DEPLOY_KEYS: &[&str] = &[
    "DEPLOY_ENV",
    "DEPLOY_SERVICES",
    "DEPLOY_WORKERS",
    "DEPLOY_TEST_CMD",
    "DEPLOY_DB_SERVICE",
    "DEPLOY_BACKUP",
    "DEPLOY_BACKUP_VERIFY",
    "DEPLOY_MIGRATE_CMD",
    "DEPLOY_MIGRATE_SERVICE",
    "DEPLOY_MAINTENANCE",
    "DEPLOY_SMOKE_URL",
    "DEPLOY_SMOKE_TIMEOUT",
    "DEPLOY_SMOKE_SUCCESSES",
    "DEPLOY_NOTIFY",
    "DEPLOY_LOCK_WAIT",
];

/// Every `BERTH_*` setting a berth command reads (the `env =` fallbacks of their flags,
/// and the notification settings). Each crate's CLI test checks its flags against this.
pub const BERTH_KEYS: &[&str] = &[
    "BERTH_AGE_IDENTITY_FILE",
    "BERTH_ALLOW_SHRINK",
    "BERTH_APP_PORT",
    "BERTH_BACKUP_DATABASE",
    "BERTH_BACKUP_DIR",
    "BERTH_BACKUP_LOCK_WAIT",
    "BERTH_BACKUP_SERVICE",
    "BERTH_BACKUP_TIMEOUT",
    "BERTH_BACKUP_URL",
    "BERTH_BACKUP_USER",
    "BERTH_BACKUP_VERIFY",
    "BERTH_COMMAND_TIMEOUT",
    "BERTH_COMPOSE_FILE",
    "BERTH_COPY_TO",
    "BERTH_DRAIN",
    "BERTH_DRY_RUN",
    "BERTH_ENCRYPT_TO",
    "BERTH_ENCRYPT_TO_FILE",
    "BERTH_ENGINE",
    "BERTH_ENV_FILE",
    "BERTH_HELPER_IMAGE",
    "BERTH_KEEP_DAILY",
    "BERTH_KEEP_LAST",
    "BERTH_KEEP_MONTHLY",
    "BERTH_KEEP_PREVIOUS",
    "BERTH_KEEP_WEEKLY",
    "BERTH_LOCK_WAIT",
    "BERTH_MAINTENANCE_FILE",
    "BERTH_MIGRATE_TIMEOUT",
    "BERTH_NGINX",
    "BERTH_NOTIFY",
    "BERTH_NOTIFY_ATTEMPTS",
    "BERTH_NOTIFY_TIMEOUT",
    "BERTH_NO_BACKUP_REQUIRED",
    "BERTH_NO_LEDGER",
    "BERTH_PASSWORD_FILE",
    "BERTH_PING_URL",
    // The old name of BERTH_APP_PORT (see `cli::RENAMED_ENVS`).
    "BERTH_PORT",
    "BERTH_PROJECT_NAME",
    "BERTH_PROXY",
    "BERTH_PROXY_SERVICE",
    "BERTH_PULL_TIMEOUT",
    "BERTH_QUIET",
    "BERTH_READY_PATH",
    "BERTH_READY_TIMEOUT",
    "BERTH_REPORT_FORMAT",
    "BERTH_REPORT_OUT",
    "BERTH_REQUIRE_COPY",
    "BERTH_RESTIC_PASSWORD_FILE",
    "BERTH_ROLLBACK_TO",
    "BERTH_SLACK_WEBHOOK_URL",
    "BERTH_STATE_DIR",
    "BERTH_STOP_TIMEOUT",
    "BERTH_SWAP_TIMEOUT",
    "BERTH_TAG_VAR",
    "BERTH_TELEGRAM_API",
    "BERTH_UPSTREAM_FILE",
    "BERTH_WEBHOOK_URL",
];

/// Why a key may not be set from an env file, if it may not.
pub fn refused(key: &str) -> Option<&'static str> {
    const RUN: &str = "it changes how programs run; set it in the environment if you must";
    match key {
        "PATH"
        | "HOME"
        | "SHELL"
        | "IFS"
        | "ENV"
        | "CDPATH"
        | "GLOBIGNORE"
        | "PS4"
        | "PROMPT_COMMAND"
        | "SHELLOPTS"
        | "BASHOPTS"
        | "POSIXLY_CORRECT"
        | "TMPDIR"
        | "PWD"
        | "OLDPWD"
        | "BERTH_DOCKER"
        | "BERTH_BIN_DIR"
        | "BERTH_LOCK_HELD"
        | "BERTH_FAULT_KILL_AFTER" => Some(RUN),
        "BERTH_PROJECT_DIR" => {
            Some("the env file lives in the project directory; set it in the environment")
        }
        "BERTH_TAG" => Some("the tag comes from the command line (deploy.sh TAG)"),
        _ if ["LD_", "DYLD_", "BASH_", "DOCKER_"]
            .iter()
            .any(|p| key.starts_with(p)) =>
        {
            Some(RUN)
        }
        _ => None,
    }
}

/// An unknown `DEPLOY_*` or `BERTH_*` key: the error text, naming the key.
pub fn unknown(key: &str) -> Option<String> {
    let (list, what) = if key.starts_with("DEPLOY_") {
        (DEPLOY_KEYS, "scripts/deploy.sh --help")
    } else if key.starts_with("BERTH_") {
        (BERTH_KEYS, "the README's settings")
    } else {
        return None;
    };
    if list.contains(&key) {
        return None;
    }
    let near = list
        .iter()
        .min_by_key(|k| distance(k, key))
        .filter(|k| distance(k, key) <= 3)
        .map(|k| format!(" (did you mean {k}?)"))
        .unwrap_or_default();
    Some(format!("{key}: unknown setting{near}; see {what}"))
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A valid environment variable name.
pub fn is_key(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An env file, read.
#[derive(Debug, Default, PartialEq)]
pub struct EnvFile {
    /// The settings, in file order.
    pub pairs: Vec<(String, String)>,
    /// Things to tell the user (CRLF line endings).
    pub warnings: Vec<String>,
}

/// Parse an env file's text; `origin` names it in messages. Every error is a usage error
/// (64) naming the line and the key.
pub fn parse(text: &str, origin: &str) -> Result<EnvFile, Failure> {
    let mut out = EnvFile::default();
    let mut crlf = 0;
    for (i, raw) in text.split('\n').enumerate() {
        let n = i + 1;
        let bad = |what: String| Failure::usage(format!("{origin}:{n}: {what}"));
        let line = match raw.strip_suffix('\r') {
            Some(l) => {
                crlf += 1;
                l
            }
            None => raw,
        };
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(bad(format!(
                "not KEY=VALUE: {:?}",
                line.chars().take(40).collect::<String>()
            )));
        };
        if let Some(k) = key.strip_prefix("export ") {
            return Err(bad(format!("write {}=..., without export", k.trim())));
        }
        if !is_key(key) {
            return Err(bad(format!(
                "{:?} is not a variable name (letters, digits, _; no spaces around =)",
                key.chars().take(40).collect::<String>()
            )));
        }
        if let Some(why) = refused(key) {
            return Err(bad(format!("{key} is not allowed here: {why}")));
        }
        if let Some(e) = unknown(key) {
            return Err(bad(e));
        }
        if let Some(c) = value.chars().find(|c| c.is_control() && *c != '\t') {
            return Err(bad(format!(
                "{key}: the value holds the control character {c:?}"
            )));
        }
        let value = unquote(value).map_err(|e| bad(format!("{key}: {e}")))?;
        if out.pairs.iter().any(|(k, _)| k == key) {
            return Err(bad(format!("{key} is set twice")));
        }
        out.pairs.push((key.to_string(), value.to_string()));
    }
    if crlf > 0 {
        out.warnings.push(format!(
            "{origin}: CRLF line endings: removed the \\r at the end of {crlf} line(s)"
        ));
    }
    Ok(out)
}

/// A value wholly inside one pair of quotes loses them; a lone opening quote is an error.
fn unquote(v: &str) -> Result<&str, String> {
    for q in ['"', '\''] {
        if let Some(rest) = v.strip_prefix(q) {
            return rest
                .strip_suffix(q)
                .ok_or_else(|| format!("the value opens a {q} quote and does not close it"));
        }
    }
    Ok(v)
}

/// The `DEPLOY_*` keys of an environment that are not known settings (typos).
pub fn unknown_in_env(vars: impl IntoIterator<Item = String>) -> Option<String> {
    vars.into_iter()
        .filter(|k| k.starts_with("DEPLOY_"))
        .find_map(|k| unknown(&k))
}

/// Check that every environment fallback of a command line is a known setting (for
/// each crate's CLI test).
pub fn assert_known_envs(cmd: &clap::Command) {
    for a in cmd.get_arguments() {
        if let Some(env) = a.get_env() {
            let env = env.to_string_lossy();
            assert!(
                BERTH_KEYS.contains(&env.as_ref())
                    || ["BERTH_PROJECT_DIR", "BERTH_TAG"].contains(&env.as_ref()),
                "{env} (of {}) is not in berth_core::settings::BERTH_KEYS",
                cmd.get_name()
            );
        }
    }
    for s in cmd.get_subcommands() {
        assert_known_envs(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Vec<(String, String)> {
        parse(text, "f").unwrap().pairs
    }

    fn err(text: &str) -> String {
        parse(text, "f").unwrap_err().message
    }

    #[test]
    fn values_are_data() {
        let v = ok("# c\n\n  # indented comment\nDEPLOY_LOCK_WAIT=PATH[$(touch /tmp/x)]+1m\n\
                    DEPLOY_SMOKE_URL=http://h/#frag\nDEPLOY_BACKUP=none # inline\n\
                    DEPLOY_TEST_CMD=\"./check.sh --fast\"\nDEPLOY_NOTIFY='$HOME'\nCOMPOSE_PROFILES=\n");
        assert_eq!(
            v,
            [
                ("DEPLOY_LOCK_WAIT", "PATH[$(touch /tmp/x)]+1m"),
                ("DEPLOY_SMOKE_URL", "http://h/#frag"),
                ("DEPLOY_BACKUP", "none # inline"),
                ("DEPLOY_TEST_CMD", "./check.sh --fast"),
                ("DEPLOY_NOTIFY", "$HOME"),
                ("COMPOSE_PROFILES", ""),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn crlf_is_stripped_with_a_warning() {
        let f = parse("DEPLOY_BACKUP=none\r\nDEPLOY_WORKERS=worker\r\n", "f").unwrap();
        assert_eq!(f.pairs[0].1, "none");
        assert_eq!(f.pairs[1].1, "worker");
        assert_eq!(f.warnings.len(), 1);
        assert!(f.warnings[0].contains("CRLF"), "{:?}", f.warnings);
        assert!(parse("DEPLOY_BACKUP=no\rne\n", "f").is_err());
    }

    #[test]
    fn refused_unknown_and_malformed_keys() {
        for (text, want) in [
            ("PATH=/tmp", "PATH is not allowed"),
            ("LD_PRELOAD=/x.so", "LD_PRELOAD is not allowed"),
            ("BASH_ENV=/x", "BASH_ENV is not allowed"),
            ("ENV=/x", "ENV is not allowed"),
            ("IFS=x", "IFS is not allowed"),
            ("BERTH_DOCKER=/x", "BERTH_DOCKER is not allowed"),
            ("BERTH_TAG=v9", "BERTH_TAG is not allowed"),
            (
                "DEPLOY_SMOKE_TIMOUT=5s",
                "did you mean DEPLOY_SMOKE_TIMEOUT",
            ),
            ("BERTH_DRAN=1s", "did you mean BERTH_DRAIN"),
            ("export DEPLOY_BACKUP=none", "without export"),
            ("DEPLOY_BACKUP =none", "not a variable name"),
            ("just words", "not KEY=VALUE"),
            ("DEPLOY_NOTIFY=\"telegram", "does not close"),
            ("DEPLOY_BACKUP=none\nDEPLOY_BACKUP=pg", "set twice"),
        ] {
            let e = err(text);
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.starts_with("f:"), "names the line: {e}");
        }
        assert_eq!(
            ok("TELEGRAM_CHAT_ID=42\nCOMPOSE_PROFILES=x")[0].0,
            "TELEGRAM_CHAT_ID"
        );
    }

    #[test]
    fn typos_in_the_environment() {
        assert!(unknown_in_env(["DEPLOY_SERVICES".to_string(), "HOME".into()]).is_none());
        let e = unknown_in_env(["DEPLOY_SMOKE_URLS".to_string()]).unwrap();
        assert!(e.contains("DEPLOY_SMOKE_URLS"), "{e}");
    }
}
