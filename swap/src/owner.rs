//! Two environments on one host must not touch each other: every file berth writes for a
//! project (the `.env` pin, the nginx upstream and maintenance files) carries the line
//! `# berth: project=NAME`, and berth refuses, before anything changes, to write a file
//! that another compose project owns: its marker names another project, a pin file's
//! `COMPOSE_PROJECT_NAME` names another project, or a container of another compose
//! project reads it as its env file or mounts it (or a directory holding it).

use std::path::{Path, PathBuf};

use anyhow::Result;
use berth_core::cli::Context;
use berth_core::compose::LABEL_PROJECT;
use berth_core::{docker, fail};

const MARK: &str = "# berth: project=";
const LABEL_WORKING_DIR: &str = "com.docker.compose.project.working_dir";
const LABEL_ENV_FILE: &str = "com.docker.compose.project.environment_file";

/// What a file is to berth (for the messages, and where its owner may be written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The env file where the deployed tag is pinned.
    Pin,
    /// A file in nginx's configuration (upstream, maintenance).
    Nginx,
}

/// The project named by the file's marker line (for a pin file, else by its
/// `COMPOSE_PROJECT_NAME`).
pub fn owner_in(text: &str, kind: Kind) -> Option<String> {
    let marked = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(MARK).map(|p| p.trim().to_string()));
    match (marked, kind) {
        (Some(p), _) => Some(p),
        (None, Kind::Pin) => crate::envfile::get(text, "COMPOSE_PROJECT_NAME"),
        (None, Kind::Nginx) => None,
    }
}

/// `text` with the marker naming `project` (the old marker replaced, else a first line).
pub fn marked(text: &str, project: &str) -> String {
    let line = format!("{MARK}{project}");
    if text.lines().any(|l| l.trim().starts_with(MARK)) {
        text.split_inclusive('\n')
            .map(|l| {
                if l.trim().starts_with(MARK) {
                    let nl = if l.ends_with('\n') { "\n" } else { "" };
                    format!("{line}{nl}")
                } else {
                    l.to_string()
                }
            })
            .collect()
    } else {
        format!("{line}\n{text}")
    }
}

/// A container of another compose project, and the host paths it uses.
#[derive(Debug)]
struct User {
    project: String,
    /// The env files it was created with (compose's label, else `<working dir>/.env`).
    env_files: Vec<PathBuf>,
    /// The sources of its bind mounts.
    binds: Vec<PathBuf>,
}

/// The containers of every other compose project on this host, in one `docker ps` (no
/// window in which a container removed meanwhile hides the others, as with ps + inspect).
fn other_users(ctx: &Context) -> Result<Vec<User>> {
    let format = format!(
        "{{{{.Label \"{LABEL_PROJECT}\"}}}}\t{{{{.Label \"{LABEL_WORKING_DIR}\"}}}}\t\
         {{{{.Label \"{LABEL_ENV_FILE}\"}}}}\t{{{{.Mounts}}}}"
    );
    let out = docker::docker()
        .args(["ps", "-a", "--no-trunc", "--filter"])
        .arg(format!("label={LABEL_PROJECT}"))
        .args(["--format", &format])
        .read()?;
    Ok(parse_users(&out, &ctx.project))
}

fn parse_users(out: &str, own: &str) -> Vec<User> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let project = f.next()?.to_string();
            if project.is_empty() || project == own {
                return None;
            }
            let working_dir = f.next().unwrap_or_default();
            let env_label = f.next().unwrap_or_default();
            let env_files = if env_label.is_empty() {
                if working_dir.is_empty() {
                    Vec::new()
                } else {
                    vec![Path::new(working_dir).join(".env")]
                }
            } else {
                env_label
                    .split(',')
                    .map(|p| canonical(Path::new(p)))
                    .collect()
            };
            // Mounts: bind sources (absolute paths) and volume names, comma-separated.
            let binds = f
                .next()
                .unwrap_or_default()
                .split(',')
                .filter(|m| m.starts_with('/'))
                .map(|m| canonical(Path::new(m)))
                .collect();
            Some(User {
                project,
                env_files: env_files.iter().map(|p| canonical(p)).collect(),
                binds,
            })
        })
        .collect()
}

/// The path with symlinks resolved as far as it exists.
fn canonical(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    match (p.parent(), p.file_name()) {
        (Some(dir), Some(name)) => canonical(dir).join(name),
        _ => p.to_path_buf(),
    }
}

/// Fail with exit 1 when any of `files` belongs to another compose project; nothing is
/// changed. Asks docker once for the other projects' containers.
pub fn check(ctx: &Context, files: &[(&Path, Kind)]) -> Result<()> {
    for (path, kind) in files {
        if let Some(text) = crate::nginx::read_opt(path)? {
            if let Some(owner) = owner_in(&text, *kind) {
                if owner != ctx.project {
                    return Err(refusal(ctx, path, *kind, &owner, "it says so"));
                }
            }
        }
    }
    if files.is_empty() {
        return Ok(());
    }
    let users = other_users(ctx)?;
    for (path, kind) in files {
        let p = canonical(path);
        for u in &users {
            let why = match kind {
                Kind::Pin if u.env_files.contains(&p) => "its containers read it",
                Kind::Nginx if u.binds.iter().any(|b| covers(b, &p)) => "its containers mount it",
                _ => continue,
            };
            return Err(refusal(ctx, path, *kind, &u.project, why));
        }
    }
    Ok(())
}

/// Whether a bind mount of `source` shows `file`: the file itself, the directory holding
/// it, or that directory's parent (`./nginx:/etc/nginx`). Not any ancestor: a container
/// that mounts `/srv` whole does not own every project under it.
fn covers(source: &Path, file: &Path) -> bool {
    let dir = file.parent();
    source == file || Some(source) == dir || dir.and_then(Path::parent) == Some(source)
}

fn refusal(ctx: &Context, path: &Path, kind: Kind, owner: &str, why: &str) -> anyhow::Error {
    let what = match kind {
        Kind::Pin => "the pin file",
        Kind::Nginx => "the nginx file",
    };
    fail!(
        Preflight,
        "{what} {} belongs to compose project {owner} ({why}), not to {}: give each environment \
         its own directory, or its own --env-file and --upstream-file; nothing was changed",
        path.display(),
        ctx.project
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers() {
        assert_eq!(
            owner_in("A=1\n# berth: project=shop\n", Kind::Pin).as_deref(),
            Some("shop")
        );
        assert_eq!(
            owner_in("COMPOSE_PROJECT_NAME=shop\n", Kind::Pin).as_deref(),
            Some("shop")
        );
        assert_eq!(owner_in("COMPOSE_PROJECT_NAME=shop\n", Kind::Nginx), None);
        assert_eq!(owner_in("A=1\n", Kind::Pin), None);
        assert_eq!(marked("A=1\n", "shop"), "# berth: project=shop\nA=1\n");
        assert_eq!(
            marked("A=1\n# berth: project=old\nB=2", "shop"),
            "A=1\n# berth: project=shop\nB=2"
        );
    }

    #[test]
    fn users_of_other_projects() {
        let out =
            "shop\t/srv/shop\t\t/srv/shop/nginx/berth,shop_db-data\nstaging\t/srv/st\t/srv/st/.env.staging\t\n\
                   mine\t/srv/mine\t\t/srv/mine/nginx\n";
        let u = parse_users(out, "mine");
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].project, "shop");
        assert_eq!(u[0].env_files, [PathBuf::from("/srv/shop/.env")]);
        assert_eq!(u[0].binds, [PathBuf::from("/srv/shop/nginx/berth")]);
        assert_eq!(u[1].env_files, [PathBuf::from("/srv/st/.env.staging")]);
        assert!(u[1].binds.is_empty());
        let f = Path::new("/srv/shop/nginx/berth/upstream-web.conf");
        assert!(covers(Path::new("/srv/shop/nginx/berth"), f));
        assert!(covers(Path::new("/srv/shop/nginx"), f));
        assert!(covers(f, f));
        assert!(!covers(Path::new("/srv/shop"), f));
        assert!(!covers(Path::new("/srv/shop/nginx/other"), f));
    }
}
