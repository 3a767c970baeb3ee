//! Off-site copies: a backup on the VPS's own disk dies with the VPS. Each verified backup
//! (archive and manifest) is copied with tools people already trust:
//!
//! - `restic:REPO`: encrypted, deduplicated snapshots in any restic repository (`sftp:`,
//!   `s3:`, `rest:`, `rclone:`, a path). The password comes from `--restic-password-file`
//!   or restic's own `RESTIC_PASSWORD_FILE`/`RESTIC_PASSWORD`, never argv. Snapshots are
//!   tagged `berth` and `berth-target=<kind>-<name>`, with the project as host; the same
//!   GFS rules as the local rotation forget old ones, never the last good release's.
//! - `rclone:REMOTE:PATH`: a plain copy to any rclone remote (its config is rclone's).
//!
//! A failed copy is a warning in the document (the local backup is good) unless
//! `--require-copy`. Restore can fetch a snapshot back (`restore --from`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use berth_core::process::Cmd;
use berth_core::{fail, msg, record, scrub, Failure};
use clap::Args;
use serde_json::{json, Map, Value};

use crate::rotate::{self, Candidate, Policy};
use crate::say;
use crate::store::{self, Entry, Manifest, Target};

/// Where a copy goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// A restic repository, as restic's `-r` takes it.
    Restic(String),
    /// An rclone `remote:path`.
    Rclone(String),
}

impl Dest {
    pub fn parse(s: &str) -> Result<Dest, String> {
        let s = s.trim();
        if let Some(repo) = s.strip_prefix("restic:").filter(|r| !r.is_empty()) {
            Ok(Dest::Restic(repo.to_string()))
        } else if let Some(remote) = s.strip_prefix("rclone:").filter(|r| r.contains(':')) {
            Ok(Dest::Rclone(remote.trim_end_matches('/').to_string()))
        } else {
            Err(
                "expected restic:REPO (e.g. restic:sftp:backup@host:/srv/restic) or \
                 rclone:REMOTE:PATH (e.g. rclone:offsite:backups/shop)"
                    .to_string(),
            )
        }
    }
}

/// Shown without any password a repository URL may hold.
impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Dest::Restic(r) => format!("restic:{r}"),
            Dest::Rclone(r) => format!("rclone:{r}"),
        };
        f.write_str(&scrub::scrub(&s, &[]))
    }
}

/// `--copy-to` and its companions, for pg and volume backups.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Off-site copies")]
pub struct Offsite {
    /// Copy each verified backup and its manifest off the machine: restic:REPO
    /// (encrypted; sftp:, s3:, rest:, rclone: or a path) or rclone:REMOTE:PATH (repeatable,
    /// or comma-separated in BERTH_COPY_TO)
    #[arg(long = "copy-to", env = "BERTH_COPY_TO", value_name = "DEST", value_delimiter = ',', value_parser = Dest::parse)]
    pub copy_to: Vec<Dest>,

    /// Exit 5 when an off-site copy fails [default: a warning; the local backup is good]
    #[arg(long, env = "BERTH_REQUIRE_COPY")]
    pub require_copy: bool,

    #[command(flatten)]
    pub restic: Restic,
}

/// How to reach restic repositories.
#[derive(Debug, Clone, Args)]
pub struct Restic {
    /// The restic repository password file [default: restic's RESTIC_PASSWORD_FILE or
    /// RESTIC_PASSWORD]; the password never goes on a command line
    #[arg(long, env = "BERTH_RESTIC_PASSWORD_FILE", value_name = "FILE")]
    pub restic_password_file: Option<PathBuf>,
}

impl Restic {
    fn cmd(&self, repo: &str) -> Cmd {
        let mut c = Cmd::new("restic").args(["--no-cache", "-r", repo]);
        if let Some(p) = &self.restic_password_file {
            c = c.env("RESTIC_PASSWORD_FILE", p);
        }
        c
    }

    fn check(&self) -> Result<()> {
        if let Some(p) = &self.restic_password_file {
            if !p.is_file() {
                return Err(Failure::usage(format!(
                    "--restic-password-file {}: no such file",
                    p.display()
                ))
                .into());
            }
        }
        Ok(())
    }
}

/// A command's failure as one scrubbed line (the last line restic or rclone printed).
/// A transfer takes what it takes, within the backup's `--timeout`.
fn run(cmd: &Cmd, what: &str) -> Result<String, String> {
    match cmd.clone().stage_timeout().output() {
        Ok(o) => Ok(o.stdout),
        Err(e) => {
            let text = berth_core::process::last_lines(e.stderr(), 1);
            let line = if text.trim().is_empty() {
                e.to_string()
            } else {
                text
            };
            Err(scrub::scrub(&format!("{what}: {}", line.trim()), &[]))
        }
    }
}

fn target_tag(t: &Target) -> String {
    format!(
        "berth-target={}-{}",
        t.kind.as_str(),
        store::sanitize(&t.name)
    )
}

impl Offsite {
    /// Copy `entry` to every destination; record each result in `detail["copies"]`. With
    /// `policy`, apply it off-site too (never to a pinned backup).
    pub fn copy(
        &self,
        entry: &Entry,
        target: &Target,
        policy: &Policy,
        pins: &BTreeMap<String, String>,
        detail: &mut Map<String, Value>,
    ) -> Result<()> {
        if self.copy_to.is_empty() {
            return Ok(());
        }
        self.restic.check()?;
        let manifest = store::manifest_path(&entry.path);
        let mut copies = Vec::new();
        let mut failed = Vec::new();
        for dest in &self.copy_to {
            let res = match dest {
                Dest::Restic(repo) => self.restic_backup(repo, &entry.path, &manifest, target),
                Dest::Rclone(remote) => rclone_copy(remote, &entry.path, &manifest),
            };
            match res {
                Ok(snapshot) => {
                    say(format!(
                        "copied to {dest}{}",
                        snapshot
                            .as_deref()
                            .map(|s| format!(" (snapshot {s})"))
                            .unwrap_or_default()
                    ));
                    let mut c = record::OffsiteCopy {
                        to: dest.to_string(),
                        snapshot,
                        ..Default::default()
                    };
                    if let (Dest::Restic(repo), false) = (dest, policy.is_empty()) {
                        match self.forget(repo, target, policy, pins) {
                            Ok(n) => c.forgotten = Some(n),
                            Err(e) => {
                                msg::warn(format!("off-site rotation in {dest} failed: {e}"));
                                c.rotation_error = Some(e.to_string());
                            }
                        }
                    }
                    copies.push(c);
                }
                Err(e) => {
                    msg::warn(format!(
                        "the off-site copy to {dest} failed: {e}; the local backup is good"
                    ));
                    copies.push(record::OffsiteCopy {
                        to: dest.to_string(),
                        error: Some(e.to_string()),
                        ..Default::default()
                    });
                    failed.push(format!("{dest}: {e}"));
                }
            }
        }
        record::update(detail, |b: &mut record::Backup| b.copies = Some(copies));
        if self.require_copy && !failed.is_empty() {
            return Err(fail!(
                Backup,
                "off-site copy failed (--require-copy): {}",
                failed.join("; ")
            ));
        }
        Ok(())
    }

    fn restic_backup(
        &self,
        repo: &str,
        archive: &Path,
        manifest: &Path,
        target: &Target,
    ) -> Result<Option<String>, String> {
        let out = run(
            &self
                .restic
                .cmd(repo)
                .args(["backup", "--json", "--host"])
                .arg(&target.project)
                .args(["--tag", "berth", "--tag", &target_tag(target)])
                .arg(archive)
                .arg(manifest),
            "restic backup",
        )?;
        let id = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message_type"] == "summary")
            .and_then(|v| v["snapshot_id"].as_str().map(str::to_string));
        id.map(Some)
            .ok_or_else(|| "restic backup printed no snapshot id".to_string())
    }

    /// Forget the snapshots of `target` that the policy would not keep; returns how many.
    fn forget(
        &self,
        repo: &str,
        target: &Target,
        policy: &Policy,
        pins: &BTreeMap<String, String>,
    ) -> Result<usize, String> {
        let snaps = snapshots(&self.restic, repo, Some(target))?;
        let cands: Vec<Candidate> = snaps
            .iter()
            .map(|s| Candidate {
                name: s.id.clone(),
                created: berth_core::time::parse(&s.time).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
                verified: true,
                pinned: s.file.as_ref().and_then(|f| pins.get(f).cloned()),
            })
            .collect();
        let drop: Vec<String> = rotate::plan(&cands, policy)
            .into_iter()
            .filter(|d| !d.keep)
            .map(|d| d.name)
            .collect();
        if drop.is_empty() {
            return Ok(0);
        }
        run(
            &self
                .restic
                .cmd(repo)
                .args(["forget", "--prune"])
                .args(&drop),
            "restic forget",
        )?;
        say(format!(
            "off-site rotation forgot {} snapshot(s) in restic:{}",
            drop.len(),
            scrub::scrub(repo, &[])
        ));
        Ok(drop.len())
    }
}

fn rclone_copy(remote: &str, archive: &Path, manifest: &Path) -> Result<Option<String>, String> {
    // The archive first: a manifest is what makes a backup, so it goes last.
    for f in [archive, manifest] {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        run(
            &Cmd::new("rclone")
                .arg("copyto")
                .arg(f)
                .arg(format!("{remote}/{name}")),
            "rclone copyto",
        )?;
    }
    Ok(None)
}

/// `berth-backup copy FILE --copy-to DEST...`.
#[derive(Debug, Args)]
#[command(
    after_help = "Example: berth-backup copy .berth/backups/shop-shop-20261122T031500Z.dump \\
    --copy-to restic:sftp:backup@vault:/srv/restic/shop --restic-password-file /etc/berth/restic-pw"
)]
pub struct CopyCmd {
    /// The backup (its manifest must be beside it)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    #[command(flatten)]
    pub offsite: Offsite,

    #[command(flatten)]
    pub storage: crate::Storage,

    #[command(flatten)]
    pub common: berth_core::cli::CommonArgs,
}

/// Copy one backup; exit 5 when any copy failed (asked for by name, a failure is the
/// answer, not a warning). The results are printed as JSON on stdout.
pub fn run_copy(c: CopyCmd) -> Result<berth_core::ExitCode> {
    crate::set_quiet(&c.storage);
    if c.offsite.copy_to.is_empty() {
        return Err(Failure::usage(
            "name a destination: --copy-to restic:REPO or rclone:REMOTE:PATH",
        )
        .into());
    }
    let ctx = c.common.resolve()?;
    let manifest = Manifest::read_for(&c.file)?.ok_or_else(|| {
        Failure::usage(format!(
            "{}: no manifest beside it: not a berth backup",
            c.file.display()
        ))
    })?;
    if !manifest.verification.verified() {
        return Err(fail!(
            Backup,
            "{} is not verified: run berth-backup verify first",
            c.file.display()
        ));
    }
    let entry = Entry {
        path: c.file.clone(),
        manifest,
    };
    let pins = crate::prune::pinned(&ctx.state_dir).unwrap_or_default();
    let mut off = c.offsite.clone();
    off.require_copy = true;
    let mut detail = Map::new();
    let res = off.copy(
        &entry,
        &entry.manifest.target(),
        &Policy::default(),
        &pins,
        &mut detail,
    );
    println!("{}", Value::Object(detail));
    res.map(|_| berth_core::ExitCode::Success)
}

/// One restic snapshot of a berth backup.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub id: String,
    pub short_id: String,
    pub time: String,
    pub target: String,
    /// The archive's file name.
    pub file: Option<String>,
    /// The archive's and the manifest's paths inside the snapshot.
    pub paths: Vec<String>,
}

/// The berth snapshots in `repo` (of `target` only, when given), oldest first.
pub fn snapshots(
    restic: &Restic,
    repo: &str,
    target: Option<&Target>,
) -> Result<Vec<Snapshot>, String> {
    let mut cmd = restic.cmd(repo).args(["snapshots", "--json", "--tag"]);
    cmd = match target {
        Some(t) => cmd.arg(format!("berth,{}", target_tag(t))),
        None => cmd.arg("berth"),
    };
    let out = run(&cmd, "restic snapshots")?;
    let list: Vec<Value> =
        serde_json::from_str(out.trim()).map_err(|e| format!("restic snapshots: {e}"))?;
    let mut snaps: Vec<Snapshot> = list
        .iter()
        .map(|v| {
            let paths: Vec<String> = v["paths"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect();
            let file = paths
                .iter()
                .find(|p| !p.ends_with(".json"))
                .and_then(|p| Path::new(p).file_name())
                .map(|n| n.to_string_lossy().to_string());
            let target = v["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .find_map(|t| t.strip_prefix("berth-target="))
                .unwrap_or("")
                .to_string();
            Snapshot {
                id: v["id"].as_str().unwrap_or("").to_string(),
                short_id: v["short_id"].as_str().unwrap_or("").to_string(),
                time: v["time"].as_str().unwrap_or("").to_string(),
                target,
                file,
                paths,
            }
        })
        .collect();
    snaps.sort_by(|a, b| a.time.cmp(&b.time));
    Ok(snaps)
}

/// `list --remote DEST`: the copies there, oldest first, one line each (or JSON).
pub fn list(dest: &Dest, restic: &Restic, as_json: bool) -> Result<String> {
    restic.check()?;
    let rows: Vec<Value> = match dest {
        Dest::Restic(repo) => snapshots(restic, repo, None)
            .map_err(|e| fail!(Backup, "{e}"))?
            .into_iter()
            .map(|s| json!({"snapshot": s.short_id, "time": s.time, "target": s.target, "file": s.file}))
            .collect(),
        Dest::Rclone(remote) => {
            let out = run(&Cmd::new("rclone").args(["lsjson", remote]), "rclone lsjson").map_err(|e| fail!(Backup, "{e}"))?;
            let list: Vec<Value> = serde_json::from_str(out.trim()).map_err(|e| fail!(Backup, "rclone lsjson: {e}"))?;
            list.iter()
                .filter(|v| v["IsDir"] != true && !v["Name"].as_str().unwrap_or("").ends_with(".json"))
                .map(|v| json!({"file": v["Name"], "bytes": v["Size"], "time": v["ModTime"]}))
                .collect()
        }
    };
    if as_json {
        return Ok(serde_json::to_string(&rows)? + "\n");
    }
    let mut out = format!("{} copies in {dest}\n", rows.len());
    for r in &rows {
        let cell = |k: &str| {
            r[k].as_str()
                .map(str::to_string)
                .unwrap_or_else(|| r[k].to_string())
        };
        match dest {
            Dest::Restic(_) => out.push_str(&format!(
                "{}  {}  {}  {}\n",
                cell("snapshot"),
                cell("time"),
                cell("target"),
                cell("file")
            )),
            Dest::Rclone(_) => out.push_str(&format!(
                "{}  {}  {} bytes\n",
                cell("time"),
                cell("file"),
                cell("bytes")
            )),
        }
    }
    Ok(out)
}

/// `verify --remote restic:REPO`: `restic check --read-data-subset` (the given share of
/// the data is downloaded and checked against its hashes).
pub fn verify(dest: &Dest, restic: &Restic, subset: &str) -> Result<()> {
    restic.check()?;
    let Dest::Restic(repo) = dest else {
        return Err(Failure::usage("verify --remote needs a restic repository (rclone copies are checked with `rclone check`)").into());
    };
    run(
        &restic
            .cmd(repo)
            .args(["check", &format!("--read-data-subset={subset}")]),
        "restic check",
    )
    .map_err(|e| fail!(Backup, "{e}"))?;
    say(format!("{dest}: check passed (read {subset} of the data)"));
    Ok(())
}

/// Fetch a backup from `dest` into `dir` (the archive is `what`: a restic snapshot id, or
/// an rclone file name), check it against its manifest, and return the local path. The
/// fetched backup is a local backup like any other from then on.
pub fn fetch(dest: &Dest, restic: &Restic, what: &str, dir: &Path) -> Result<PathBuf> {
    restic.check()?;
    store::prepare_dir(dir)?;
    let tmp = tempfile::Builder::new().prefix(".fetch-").tempdir_in(dir)?;
    let archive_name = match dest {
        Dest::Restic(repo) => fetch_restic(restic, repo, dest, what, tmp.path())?,
        Dest::Rclone(remote) => fetch_rclone(remote, what, tmp.path())?,
    };
    let local_tmp = tmp.path().join(&archive_name);
    let manifest = Manifest::read_for(&local_tmp)?
        .ok_or_else(|| fail!(Backup, "{archive_name} came without its manifest"))?;
    let (_, sha) = store::sha256_file(&local_tmp)?;
    if sha != manifest.sha256 {
        return Err(fail!(
            Backup,
            "{archive_name} from {dest}: checksum mismatch (sha256 {sha}, the manifest says {})",
            manifest.sha256
        ));
    }
    let dest_path = dir.join(&archive_name);
    if dest_path.exists() {
        say(format!(
            "{} is already here; using the local copy",
            dest_path.display()
        ));
        return Ok(dest_path);
    }
    std::fs::rename(&local_tmp, &dest_path)?;
    manifest.write(dir)?;
    berth_core::fsutil::sync_dir(dir);
    say(format!("fetched {archive_name} from {dest} (checksum ok)"));
    Ok(dest_path)
}

/// Dump the files of restic snapshot `what` into `into`; the archive's name.
fn fetch_restic(
    restic: &Restic,
    repo: &str,
    dest: &Dest,
    what: &str,
    into: &Path,
) -> Result<String> {
    let snaps = snapshots(restic, repo, None).map_err(|e| fail!(Backup, "{e}"))?;
    let snap = snaps
        .iter()
        .find(|s| s.id.starts_with(what) || s.short_id == what)
        .ok_or_else(|| {
            fail!(
                Backup,
                "no berth snapshot {what:?} in {dest} (see berth-backup list --remote)"
            )
        })?;
    let file = snap
        .file
        .clone()
        .ok_or_else(|| fail!(Backup, "snapshot {what} holds no archive"))?;
    for p in &snap.paths {
        let name = Path::new(p).file_name().unwrap_or_default();
        let out = std::fs::File::create(into.join(name))?;
        let dumped = restic
            .cmd(repo)
            .args(["dump", &snap.id, p])
            .stage_timeout()
            .run_shaped(|e| e.stdout_file(out).stderr_capture())
            .map_err(|e| fail!(Backup, "restic dump {p}: {e}"))?;
        if !dumped.status.success() {
            let why = berth_core::process::last_lines(&String::from_utf8_lossy(&dumped.stderr), 1);
            return Err(fail!(
                Backup,
                "{}",
                scrub::scrub(&format!("restic dump {p}: {why}"), &[])
            ));
        }
    }
    Ok(file)
}

/// Copy `what` and its manifest from the rclone remote into `into`; the archive's name.
fn fetch_rclone(remote: &str, what: &str, into: &Path) -> Result<String> {
    for name in [what.to_string(), format!("{what}.json")] {
        run(
            &Cmd::new("rclone")
                .arg("copyto")
                .arg(format!("{remote}/{name}"))
                .arg(into.join(&name)),
            "rclone copyto",
        )
        .map_err(|e| fail!(Backup, "{e}"))?;
    }
    Ok(what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_and_hide_passwords() {
        assert_eq!(
            Dest::parse("restic:sftp:u@h:/srv/r").unwrap(),
            Dest::Restic("sftp:u@h:/srv/r".into())
        );
        assert_eq!(
            Dest::parse("rclone:off:backups/shop/").unwrap(),
            Dest::Rclone("off:backups/shop".into())
        );
        assert!(Dest::parse("s3:bucket").is_err());
        assert!(Dest::parse("restic:").is_err());
        assert!(Dest::parse("rclone:nocolon").is_err());
        let d = Dest::parse("restic:rest:https://u:secret@h:8000/r").unwrap();
        assert_eq!(d.to_string(), "restic:rest:https://u:***@h:8000/r");
    }
}
