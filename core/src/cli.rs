//! Settings every stage takes (like compose's own), and the `main` every binary calls.

use std::path::{Path, PathBuf};

use clap::Parser;

use crate::compose::Compose;
use crate::exit::{self, ExitCode, Failure};
use crate::msg;

/// Where the project is and which release is meant. Every berth command flattens this;
/// the options are global, so they may stand before or after a subcommand's word.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Project")]
pub struct CommonArgs {
    /// The compose project's directory (holds the compose file and `.env`)
    #[arg(
        long,
        global = true,
        env = "BERTH_PROJECT_DIR",
        default_value = ".",
        value_name = "DIR"
    )]
    pub project_dir: PathBuf,

    /// Compose file(s), repeatable; default: compose finds compose.yaml etc. in the project dir
    #[arg(
        global = true,
        short = 'f',
        long = "file",
        env = "BERTH_COMPOSE_FILE",
        value_name = "FILE",
        value_delimiter = ':'
    )]
    pub files: Vec<PathBuf>,

    /// Compose project name [default: what compose resolves: COMPOSE_PROJECT_NAME (environment,
    /// then the env file), the compose file's top-level name:, the directory's name]
    #[arg(
        global = true,
        short = 'p',
        long = "project-name",
        env = "BERTH_PROJECT_NAME",
        value_name = "NAME"
    )]
    pub project_name: Option<String>,

    /// The env file compose reads instead of <project dir>/.env (relative to the project
    /// dir); berth records the deployed tag in it
    #[arg(long, global = true, env = "BERTH_ENV_FILE", value_name = "FILE")]
    pub env_file: Option<PathBuf>,

    /// Where berth keeps locks, the ledger, logs and backups [default: <project dir>/.berth]
    #[arg(long, global = true, env = "BERTH_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// The immutable image tag being deployed (usually the git SHA)
    #[arg(long, global = true, env = "BERTH_TAG", value_name = "TAG")]
    pub tag: Option<String>,

    /// The variable the compose file uses for the tag, e.g. image: shop-web:${BERTH_TAG}
    #[arg(
        long,
        global = true,
        env = "BERTH_TAG_VAR",
        default_value = "BERTH_TAG",
        value_name = "NAME"
    )]
    pub tag_var: String,

    /// Print the docker commands this would run, and change nothing
    #[arg(long, global = true, env = "BERTH_DRY_RUN")]
    pub dry_run: bool,

    /// Only check the arguments and settings, exactly as a real run parses them: nothing
    /// printed and exit 0 when they are valid, one line and exit 64 when not. Reads no
    /// stdin, runs no docker, changes nothing (scripts/deploy.sh checks every stage so)
    #[arg(long, global = true)]
    pub check_args: bool,

    /// The engine that runs the project: compose (this host) or swarm (berth runs on a
    /// Swarm manager; every stage of scripts/deploy.sh supports it; `berth-swap
    /// maintenance`, `berth-backup copy`, `volume` and `berth-healthwait --container`
    /// refuse it with exit 64)
    #[arg(
        long,
        global = true,
        value_enum,
        env = "BERTH_ENGINE",
        default_value = "compose"
    )]
    pub engine: crate::swarm::Engine,

    /// Bound on each docker/compose/nginx call that has no bound of its own: past it the
    /// call's process group is killed and the stage fails naming the call
    #[arg(long, global = true, env = "BERTH_COMMAND_TIMEOUT", default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub command_timeout: std::time::Duration,
}

/// [`CommonArgs`] resolved: absolute paths, a project name, a checked tag.
#[derive(Debug, Clone)]
pub struct Context {
    pub project_dir: PathBuf,
    pub files: Vec<PathBuf>,
    /// `--env-file`, absolute; `None`: compose reads `<project dir>/.env`.
    pub env_file: Option<PathBuf>,
    pub project: String,
    pub state_dir: PathBuf,
    pub tag: Option<String>,
    pub tag_var: String,
    pub dry_run: bool,
    /// Compose on this host, or a Swarm stack (`--engine`).
    pub engine: crate::swarm::Engine,
}

impl CommonArgs {
    /// The checks of [`CommonArgs::resolve`], for `--check-args`: free of docker and of
    /// writes (the project name is not asked of compose here).
    pub fn check(&self) -> Result<(), Failure> {
        self.resolve_offline(None).map(|_| ())
    }

    /// Resolve the settings; the project name is `-p`, else what compose resolves (one
    /// bounded `docker compose config`), else (no compose file, no docker) the
    /// directory's name.
    pub fn resolve(&self) -> Result<Context, Failure> {
        self.resolve_for(None)
    }

    /// [`CommonArgs::resolve`], with the project already known (from the deploy document):
    /// compose is not asked again.
    pub fn resolve_for(&self, known: Option<&str>) -> Result<Context, Failure> {
        self.resolve_with(known, true)
    }

    /// For a command that never runs compose (`berth-healthwait`): the project name is
    /// `-p`, the document's, or the directory's; compose is not asked.
    pub fn resolve_offline(&self, known: Option<&str>) -> Result<Context, Failure> {
        self.resolve_with(known, false)
    }

    fn resolve_with(&self, known: Option<&str>, ask: bool) -> Result<Context, Failure> {
        crate::swarm::refuse(self.engine)?;
        self.resolve_settings(known, ask)
    }

    /// For a command that supports `--engine swarm`: the same settings whatever the
    /// engine; the project name is the stack's.
    /// `ask: false` asks compose nothing (as [`CommonArgs::resolve_offline`]).
    pub fn resolve_any_engine(&self, known: Option<&str>, ask: bool) -> Result<Context, Failure> {
        self.resolve_settings(known, ask)
    }

    fn resolve_settings(&self, known: Option<&str>, ask: bool) -> Result<Context, Failure> {
        if self.command_timeout.is_zero() {
            return Err(Failure::usage("--command-timeout must be more than 0"));
        }
        crate::process::set_command_timeout(self.command_timeout);
        let cwd = std::env::current_dir()
            .map_err(|e| Failure::usage(format!("cannot read the current directory: {e}")))?;
        let project_dir = absolute(&cwd, &self.project_dir);
        if !project_dir.is_dir() {
            return Err(Failure::usage(format!(
                "--project-dir {}: no such directory",
                project_dir.display()
            )));
        }
        let files: Vec<PathBuf> = self
            .files
            .iter()
            .filter(|f| !f.as_os_str().is_empty())
            .map(|f| absolute(&project_dir, f))
            .collect();
        for f in &files {
            if !f.is_file() {
                return Err(Failure::usage(format!(
                    "--file {}: no such file",
                    f.display()
                )));
            }
        }
        let env_file = match &self.env_file {
            Some(f) if !f.as_os_str().is_empty() => {
                let f = absolute(&project_dir, f);
                if !f.is_file() {
                    return Err(Failure::usage(format!(
                        "--env-file {}: no such file",
                        f.display()
                    )));
                }
                Some(f)
            }
            _ => None,
        };
        let state_dir = match &self.state_dir {
            Some(d) => absolute(&cwd, d),
            None => project_dir.join(".berth"),
        };
        self.tag.as_deref().map(check_tag).transpose()?;
        if !is_env_name(&self.tag_var) {
            return Err(Failure::usage(format!(
                "--tag-var {:?}: not a valid variable name (letters, digits, _)",
                self.tag_var
            )));
        }
        let mut ctx = Context {
            project_dir,
            files,
            env_file,
            project: String::new(),
            state_dir,
            tag: self.tag.clone(),
            tag_var: self.tag_var.clone(),
            dry_run: self.dry_run,
            engine: self.engine,
        };
        ctx.project = match (&self.project_name, known) {
            (Some(p), _) => {
                check_project_name(p)?;
                p.clone()
            }
            (None, Some(k)) => k.to_string(),
            (None, None) => match ask.then(|| ctx.compose().resolved_name()) {
                Some(Ok(name)) => name,
                _ => default_project_name(&ctx.project_dir)?,
            },
        };
        Ok(ctx)
    }
}

impl Context {
    /// `docker compose` for this project (`-p`, `-f`, `--env-file` as resolved); with the
    /// tag variable set when a tag is known.
    pub fn compose(&self) -> Compose {
        let c = Compose::new(&self.project, &self.project_dir, &self.files)
            .with_env_file(self.env_file.as_deref());
        match &self.tag {
            Some(t) => c.with_env(&self.tag_var, t),
            None => c,
        }
    }

    /// `docker compose` with the tag variable set to `tag`.
    pub fn compose_at(&self, tag: &str) -> Compose {
        self.compose().with_env(&self.tag_var, tag)
    }

    /// The flags that name this project to another berth command (for the commands berth
    /// prints for a person to run): `--project-dir DIR -p NAME [-f FILE]... [--env-file F]`.
    pub fn project_args(&self) -> Vec<String> {
        let mut v = vec![
            "--project-dir".to_string(),
            self.project_dir.display().to_string(),
            "-p".to_string(),
            self.project.clone(),
        ];
        for f in &self.files {
            v.push("-f".into());
            v.push(f.display().to_string());
        }
        if let Some(e) = &self.env_file {
            v.push("--env-file".into());
            v.push(e.display().to_string());
        }
        v
    }

    /// The file where the deployed tag is pinned for compose: the env file compose reads.
    pub fn pin_file(&self) -> PathBuf {
        self.env_file
            .clone()
            .unwrap_or_else(|| self.project_dir.join(".env"))
    }

    pub fn require_tag(&self) -> Result<&str, Failure> {
        self.tag.as_deref().ok_or_else(|| {
            Failure::usage("no tag: pass --tag TAG (or BERTH_TAG), or a document that has one")
        })
    }
}

fn absolute(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        let joined = base.join(p);
        joined.canonicalize().unwrap_or(joined)
    }
}

/// Compose's rule: lowercase letters, digits, `-` and `_`, starting with a letter or digit.
pub fn check_project_name(name: &str) -> Result<(), Failure> {
    let ok = !name.is_empty()
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Failure::usage(format!(
            "project name {name:?}: use lowercase letters, digits, '-' and '_', starting with a letter or digit"
        )))
    }
}

fn default_project_name(dir: &Path) -> Result<String, Failure> {
    let base = dir
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let name: String = base
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_')
        .collect();
    let name = name.trim_start_matches(['-', '_']).to_string();
    if name.is_empty() {
        return Err(Failure::usage(format!(
            "cannot derive a project name from {}: pass -p NAME",
            dir.display()
        )));
    }
    Ok(name)
}

/// Docker's tag grammar: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn check_tag(tag: &str) -> Result<(), Failure> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Failure::usage(format!(
            "tag {tag:?} is not a valid image tag (letters, digits, '_', '.', '-'; at most 128)"
        )))
    }
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parse a duration like `60s`, `200ms`, `5m`, `1h 30m` (humantime).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (examples: 500ms, 30s, 5m)"))
}

/// The end of a `--check-args` run: `check` passed, exit 0 with nothing printed; any
/// failure is a usage error (64) on one line, whatever code the real run would give it.
pub fn checked(check: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<ExitCode> {
    match check() {
        Ok(()) => Ok(ExitCode::Success),
        Err(e) => Err(Failure::usage(exit::one_line(&e)).into()),
    }
}

/// The whole `main` of a berth binary: parse flags (usage errors exit 64, never clap's 2;
/// `--help`/`--version` exit 0 and read nothing), run, map the error to its exit code.
pub fn main<A: Parser>(
    prog: &str,
    run: impl FnOnce(A) -> anyhow::Result<ExitCode>,
) -> std::process::ExitCode {
    main_from(prog, std::env::args_os(), run)
}

/// Settings renamed, (old, new): the old name still works (for a command that reads the
/// new one), with a warning.
pub const RENAMED_ENVS: &[(&str, &str)] = &[("BERTH_PORT", "BERTH_APP_PORT")];

/// Read each old name of [`RENAMED_ENVS`] as its new one, when this command reads the
/// new one. Called first thing in `main`, before any thread starts.
fn rename_envs(cmd: &clap::Command) {
    for (old, new) in RENAMED_ENVS {
        let Some(value) = std::env::var_os(old) else {
            continue;
        };
        if !reads_env(cmd, new) {
            continue;
        }
        if std::env::var_os(new).is_some() {
            msg::warn(format!(
                "{old} is ignored: {new} is set (it replaces {old})"
            ));
        } else {
            msg::warn(format!("{old} is deprecated: set {new} instead"));
            std::env::set_var(new, value);
        }
    }
}

/// Whether `cmd` or one of its subcommands has a flag read from the variable `env`.
fn reads_env(cmd: &clap::Command, env: &str) -> bool {
    cmd.get_arguments()
        .any(|a| a.get_env().is_some_and(|e| e == env))
        || cmd.get_subcommands().any(|s| reads_env(s, env))
}

/// [`main`] with the argument vector given (for a binary that rearranges it first).
pub fn main_from<A: Parser, I, T>(
    prog: &str,
    argv: I,
    run: impl FnOnce(A) -> anyhow::Result<ExitCode>,
) -> std::process::ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    msg::set_program(prog);
    rename_envs(&<A as clap::CommandFactory>::command());
    let argv: Vec<std::ffi::OsString> = argv.into_iter().map(Into::into).collect();
    // Parsed once: the matches give both the arguments and the subcommand's name.
    let parsed = <A as clap::CommandFactory>::command()
        .try_get_matches_from(&argv)
        .and_then(|mut m| {
            let name = command_name(prog, &m);
            A::from_arg_matches_mut(&mut m)
                .map(|a| (a, name))
                .map_err(|e| e.format(&mut <A as clap::CommandFactory>::command()))
        });
    let args = match parsed {
        Ok((a, name)) => {
            crate::swarm::set_command(name);
            a
        }
        Err(e) => {
            let from = env_source::<A>(&e, &argv);
            return clap_exit_from(e, from.as_deref());
        }
    };
    match run(args) {
        Ok(code) => code.into(),
        Err(err) => {
            let code = exit::code_of(&err, ExitCode::Preflight);
            msg::error(exit::one_line(&err));
            code.into()
        }
    }
}

/// The program and its subcommands as given, e.g. `berth-swap pull`.
fn command_name(prog: &str, matches: &clap::ArgMatches) -> String {
    let mut name = prog.to_string();
    let mut m = matches;
    while let Some((sub, next)) = m.subcommand() {
        name = format!("{name} {sub}");
        m = next;
    }
    name
}

/// The environment variable a bad value came from, when it did not come from argv: so
/// the error can say `invalid value '60' for '--timeout <DURATION>' (from BERTH_SWAP_TIMEOUT)`.
fn env_source<A: clap::CommandFactory>(
    e: &clap::Error,
    argv: &[std::ffi::OsString],
) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg.split_whitespace().next()?.to_string();
    let name = long.strip_prefix("--")?;
    let on_argv = argv.iter().any(|a| {
        let a = a.to_string_lossy();
        a == long || a.starts_with(&format!("{long}="))
    });
    if on_argv {
        return None;
    }
    fn find_env(cmd: &clap::Command, long: &str) -> Option<String> {
        cmd.get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_env())
            .map(|v| v.to_string_lossy().to_string())
            .or_else(|| cmd.get_subcommands().find_map(|s| find_env(s, long)))
    }
    find_env(&A::command(), name).filter(|var| std::env::var_os(var).is_some())
}

/// Print a clap error our way and return the code: 0 for help/version, 64 for the rest.
pub fn clap_exit(e: clap::Error) -> std::process::ExitCode {
    clap_exit_from(e, None)
}

/// [`clap_exit`], naming the environment variable the bad value came from.
fn clap_exit_from(e: clap::Error, env_var: Option<&str>) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::Usage.into()
            } else {
                ExitCode::Success.into()
            }
        }
        _ => {
            let from = env_var.map(|v| format!(" (from {v})")).unwrap_or_default();
            msg::error(format!(
                "{}{from}; see --help",
                clap_one_line(&e.render().to_string())
            ));
            ExitCode::Usage.into()
        }
    }
}

/// A rendered clap error as one line: its first line, the indented lines that complete
/// it when it ends with ':' (e.g. the missing arguments), and the tip.
fn clap_one_line(rendered: &str) -> String {
    let mut lines = rendered.lines().skip_while(|l| l.trim().is_empty());
    let mut first = lines
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_string();
    if first.ends_with(':') {
        let items: Vec<&str> = lines
            .take_while(|l| l.starts_with(' ') && !l.trim().is_empty())
            .map(str::trim)
            .collect();
        if !items.is_empty() {
            first = format!("{} {}", first, items.join(", "));
        }
    }
    let tip = rendered
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("tip:"))
        .map(|t| format!(" ({t})"))
        .unwrap_or_default();
    format!("{first}{tip}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_fold_into_one_line() {
        let missing = "error: the following required arguments were not provided:\n  <SERVICE>\n  <CMD>...\n\nUsage: berth-migrate <SERVICE> -- <CMD>...\n\nFor more information, try '--help'.\n";
        assert_eq!(
            clap_one_line(missing),
            "the following required arguments were not provided: <SERVICE>, <CMD>..."
        );
        let unknown = "error: unexpected argument '--bogus' found\n\n  tip: to pass '--bogus' as a value, use '-- --bogus'\n\nUsage: x\n";
        assert_eq!(
            clap_one_line(unknown),
            "unexpected argument '--bogus' found (tip: to pass '--bogus' as a value, use '-- --bogus')"
        );
    }

    #[test]
    fn tags() {
        for ok in ["v1", "3f9c2a1", "release_1.2-rc.1", "_x"] {
            assert!(check_tag(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", ".x", "a/b", "a:b", "a b", &"x".repeat(129)] {
            assert!(check_tag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn project_names() {
        assert!(check_project_name("shop-prod_1").is_ok());
        assert!(check_project_name("Shop").is_err());
        assert!(check_project_name("-x").is_err());
        assert_eq!(
            default_project_name(Path::new("/srv/My.Shop")).unwrap(),
            "myshop"
        );
        assert!(default_project_name(Path::new("/")).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("200ms").unwrap().as_millis(), 200);
        assert_eq!(parse_duration("5m").unwrap().as_secs(), 300);
        assert!(parse_duration("soon").is_err());
    }
}
