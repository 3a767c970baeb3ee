//! The backup directory: file names, manifests, streaming writes that are atomic, and
//! reading the directory back.
//!
//! A backup is two files: the archive (`<project>-<target>-<UTC time>[-<tag>].dump` or
//! `.tar.gz`) and its manifest `<archive>.json`, written last. An archive without its
//! manifest is not a backup (a crash between the two leaves such a file; `list` shows it
//! as incomplete and `prune` deletes it). Archives are written as `<name>.partial` first;
//! a `.partial` is never a backup and is swept by the next run for its target.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use berth_core::{fail, fsutil, time};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::progress::Progress;

/// The manifest's `format` field.
pub const FORMAT: &str = "berth-backup/1";
/// Files are readable by their owner only; so is the directory.
pub const FILE_MODE: u32 = 0o600;
pub const DIR_MODE: u32 = 0o700;

/// What was backed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A PostgreSQL database, `pg_dump -Fc`.
    Pg,
    /// A Docker volume, tar.gz.
    Volume,
}

impl Kind {
    pub fn extension(self) -> &'static str {
        match self {
            Kind::Pg => "dump",
            Kind::Volume => "tar.gz",
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pg => "pg",
            Kind::Volume => "volume",
        }
    }
}

/// How far a backup has been checked. `failed`: a later `verify` found it broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Verification {
    /// Not checked beyond the producer's exit status and the file's magic bytes
    None,
    /// The whole archive was read to its end (`pg_restore -f /dev/null`; gunzip + tar)
    Read,
    /// Restored into a scratch database/volume and compared with the source
    Restore,
    #[value(skip)]
    Failed,
}

impl Verification {
    pub fn verified(self) -> bool {
        matches!(self, Verification::Read | Verification::Restore)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Verification::None => "none",
            Verification::Read => "read",
            Verification::Restore => "restore",
            Verification::Failed => "failed",
        }
    }
}

/// One backup target: a database or a volume of a project. Backups of a target share a
/// file-name prefix, a lock and a rotation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub kind: Kind,
    pub project: String,
    /// The database name, or the volume name as given.
    pub name: String,
}

/// Letters, digits, `_`, `.` stay; everything else becomes `_` (file and lock names).
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else if c == '-' {
                '-'
            } else {
                '_'
            }
        })
        .collect()
}

impl Target {
    /// `<project>-<name>-`: every archive of this target starts with it, followed by
    /// the 16-character UTC time.
    pub fn prefix(&self) -> String {
        format!("{}-{}-", sanitize(&self.project), sanitize(&self.name))
    }

    /// The lock that keeps two backups (or a backup and a restore) of it apart.
    pub fn lock_name(&self) -> String {
        format!(
            "backup-{}-{}-{}",
            self.kind.as_str(),
            sanitize(&self.project),
            sanitize(&self.name)
        )
    }

    /// `<project>-<name>-20261122T031500Z[-<tag>].<ext>`
    pub fn file_name(&self, at: Timestamp, tag: Option<&str>) -> String {
        let tag = tag.map(|t| format!("-{}", sanitize(t))).unwrap_or_default();
        format!(
            "{}{}{tag}.{}",
            self.prefix(),
            time::compact(at),
            self.kind.extension()
        )
    }

    /// Whether `file` (a base name) is an archive, or a `.partial`, of this target.
    pub fn owns(&self, file: &str) -> bool {
        let Some(rest) = file.strip_prefix(&self.prefix()) else {
            return false;
        };
        let stamp = rest.as_bytes();
        stamp.len() >= 16
            && stamp[..8].iter().all(u8::is_ascii_digit)
            && stamp[8] == b'T'
            && stamp[9..15].iter().all(u8::is_ascii_digit)
            && stamp[15] == b'Z'
    }

    pub fn describe(&self) -> String {
        match self.kind {
            Kind::Pg => format!("database {} of project {}", self.name, self.project),
            Kind::Volume => format!("volume {} of project {}", self.name, self.project),
        }
    }
}

/// `<archive>.json`: everything needed to trust, find and restore an archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub kind: Kind,
    /// The archive's base name (it sits beside the manifest).
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
    pub created_at: String,
    pub project: String,
    /// The database name (pg) or the volume name as given (volume).
    pub target: String,
    /// Where it came from, without secrets: `service db` or `postgres://user@host:5432/db`.
    pub source: String,
    /// The docker volume's real name (volume backups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    pub verification: Verification,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_error: Option<String>,
    /// pg: user tables in the dump's snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<u64>,
    /// volume: entries in the archive (read verification and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    /// pg, restore verification: rows per table in the dump's snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_counts: Option<BTreeMap<String, u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    pub duration_ms: u64,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Manifest {
    pub fn target(&self) -> Target {
        Target {
            kind: self.kind,
            project: self.project.clone(),
            name: self.target.clone(),
        }
    }

    pub fn created(&self) -> Timestamp {
        time::parse(&self.created_at).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    /// Write `<dir>/<file>.json` atomically, mode 0600.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let path = manifest_path(&dir.join(&self.file));
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        fsutil::write_atomic(&path, text.as_bytes(), FILE_MODE)
            .with_context(|| format!("writing the manifest {}", path.display()))?;
        Ok(path)
    }

    /// Read the manifest beside `archive`.
    pub fn read_for(archive: &Path) -> Result<Option<Manifest>> {
        let path = manifest_path(archive);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let m: Manifest = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not a berth manifest", path.display()))?;
                Ok(Some(m))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// A path's last component, as text.
pub fn file_name(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string()
}

pub fn manifest_path(archive: &Path) -> PathBuf {
    let mut s = archive.as_os_str().to_os_string();
    s.push(".json");
    PathBuf::from(s)
}

/// A backup in the directory: its archive path and manifest.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: PathBuf,
    pub manifest: Manifest,
}

/// What a directory holds.
#[derive(Debug, Default)]
pub struct Scan {
    /// Backups (archive + manifest), oldest first.
    pub entries: Vec<Entry>,
    /// Archives without a manifest: not backups.
    pub incomplete: Vec<PathBuf>,
    /// `.partial` files: writes in progress or left by a crash.
    pub partials: Vec<PathBuf>,
}

impl Scan {
    pub fn of(&self, target: &Target) -> Vec<&Entry> {
        self.entries
            .iter()
            .filter(|e| e.manifest.target() == *target)
            .collect()
    }
}

fn is_archive(name: &str) -> bool {
    let name = name.strip_suffix(crate::crypt::SUFFIX).unwrap_or(name);
    name.ends_with(".dump") || name.ends_with(".tar.gz")
}

/// Read a backup directory (a missing one is empty).
pub fn scan(dir: &Path) -> Result<Scan> {
    let mut out = Scan::default();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut names: Vec<String> = Vec::new();
    for e in rd {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        names.push(e.file_name().to_string_lossy().to_string());
    }
    names.sort();
    for name in &names {
        let path = dir.join(name);
        if name.ends_with(".partial") {
            out.partials.push(path);
        } else if is_archive(name) {
            match Manifest::read_for(&path) {
                Ok(Some(m)) if m.format == FORMAT && m.file == *name => {
                    out.entries.push(Entry { path, manifest: m })
                }
                _ => out.incomplete.push(path),
            }
        }
    }
    out.entries.sort_by_key(|e| e.manifest.created());
    Ok(out)
}

/// Remove `.partial` files of `target` (call with the target's lock held).
pub fn sweep_partials(dir: &Path, target: &Target) -> Vec<PathBuf> {
    let mut swept = Vec::new();
    if let Ok(s) = scan(dir) {
        for p in s.partials {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            if target.owns(&name) && fs::remove_file(&p).is_ok() {
                swept.push(p);
            }
        }
    }
    swept
}

/// Make the directory (0700) if needed; refuse one others can read.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    fsutil::create_dir(dir, DIR_MODE)
        .map_err(|e| fail!(Backup, "cannot create the backup directory: {e:#}"))?;
    let meta = fs::metadata(dir).with_context(|| format!("{}", dir.display()))?;
    if !meta.is_dir() {
        return Err(fail!(Backup, "{} is not a directory", dir.display()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)).map_err(|e| {
            fail!(
                Backup,
                "{} is readable by others and its mode cannot be set to 0700: {e}",
                dir.display()
            )
        })?;
    }
    Ok(())
}

/// An archive being written. Dropped before [`Partial::commit`], it removes itself: a
/// failed backup leaves nothing behind (a killed process leaves a `.partial`, which
/// the next run sweeps).
#[derive(Debug)]
pub struct Partial {
    pub path: PathBuf,
    pub final_path: PathBuf,
    file: Option<File>,
    committed: bool,
}

/// What streaming produced.
#[derive(Debug, Clone)]
pub struct Streamed {
    pub bytes: u64,
    pub sha256: String,
    /// The first bytes (to check the format's magic).
    pub head: Vec<u8>,
}

impl Partial {
    /// Create `<dir>/<name>.partial` (mode 0600, must not exist; nor may `<dir>/<name>`).
    pub fn create(dir: &Path, name: &str) -> Result<Partial> {
        let final_path = dir.join(name);
        let path = dir.join(format!("{name}.partial"));
        if final_path.exists() {
            return Err(fail!(Backup, "{} already exists", final_path.display()));
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(|e| fail!(Backup, "cannot create {}: {e}", path.display()))?;
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
        Ok(Partial {
            path,
            final_path,
            file: Some(file),
            committed: false,
        })
    }

    /// Copy `reader` to the file to its end, hashing as it goes; then fsync. Never holds
    /// more than one buffer in memory.
    pub fn stream(&mut self, reader: &mut dyn Read, progress: &mut Progress) -> Result<Streamed> {
        let file = self.file.as_mut().expect("stream before commit");
        let mut buf = vec![0u8; 256 * 1024];
        let mut hasher = Sha256::new();
        let mut bytes: u64 = 0;
        let mut head = Vec::new();
        loop {
            crate::check_interrupted()?;
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(anyhow::Error::new(e).context("reading the stream")),
            };
            if head.len() < 16 {
                let take = (16 - head.len()).min(n);
                head.extend_from_slice(&buf[..take]);
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(|e| {
                fail!(
                    Backup,
                    "writing {} failed after {bytes} bytes: {e}",
                    self.path.display()
                )
            })?;
            bytes += n as u64;
            progress.update(bytes);
        }
        file.sync_all()
            .map_err(|e| fail!(Backup, "syncing {}: {e}", self.path.display()))?;
        progress.finish(bytes);
        Ok(Streamed {
            bytes,
            sha256: hex(&hasher.finalize()),
            head,
        })
    }

    /// Another handle on the file, for a child process to write it (age).
    pub fn file(&self) -> Result<File> {
        let f = self.file.as_ref().expect("file after commit");
        f.try_clone()
            .map_err(|e| fail!(Backup, "{}: {e}", self.path.display()))
    }

    /// After a child wrote the file: fsync it, then hash what landed. `head` is what the
    /// caller saw of the stream (the plaintext's first bytes).
    pub fn seal(&mut self, head: Vec<u8>) -> Result<Streamed> {
        let file = self.file.as_ref().expect("seal after commit");
        file.sync_all()
            .map_err(|e| fail!(Backup, "syncing {}: {e}", self.path.display()))?;
        let (bytes, sha256) = sha256_file(&self.path)?;
        Ok(Streamed {
            bytes,
            sha256,
            head,
        })
    }

    /// Rename to the final name and sync the directory.
    pub fn commit(mut self) -> Result<PathBuf> {
        self.file.take();
        fs::rename(&self.path, &self.final_path).map_err(|e| {
            fail!(
                Backup,
                "renaming {} to {}: {e}",
                self.path.display(),
                self.final_path.display()
            )
        })?;
        if let Some(dir) = self.final_path.parent() {
            fsutil::sync_dir(dir);
        }
        self.committed = true;
        Ok(self.final_path.clone())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.committed {
            self.file.take();
            let _ = fs::remove_file(&self.path);
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 and size of a file, read in one pass.
pub fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut hasher = Sha256::new();
    let mut n_total = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        n_total += n as u64;
    }
    Ok((n_total, hex(&hasher.finalize())))
}

/// Remove a backup: manifest first (so a half-removed backup never looks whole), then
/// the archive.
pub fn remove(archive: &Path) -> Result<()> {
    let m = manifest_path(archive);
    match fs::remove_file(&m) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", m.display())),
    }
    match fs::remove_file(archive) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", archive.display())),
    }
    if let Some(d) = archive.parent() {
        fsutil::sync_dir(d);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            kind: Kind::Pg,
            project: "shop".into(),
            name: "app".into(),
        }
    }

    #[test]
    fn names_and_ownership() {
        let t = target();
        let at: Timestamp = "2026-11-22T03:15:00Z".parse().unwrap();
        assert_eq!(t.file_name(at, None), "shop-app-20261122T031500Z.dump");
        assert_eq!(
            t.file_name(at, Some("3f9c2a1")),
            "shop-app-20261122T031500Z-3f9c2a1.dump"
        );
        assert!(t.owns("shop-app-20261122T031500Z.dump.partial"));
        // Another database whose name starts the same way is not ours.
        assert!(!t.owns("shop-app-b-20261122T031500Z.dump.partial"));
        assert_eq!(t.lock_name(), "backup-pg-shop-app");
        assert_eq!(sanitize("a b/c"), "a_b_c");
    }

    #[test]
    fn partial_is_private_and_vanishes_unless_committed() {
        let d = tempfile::tempdir().unwrap();
        let mut p = Partial::create(d.path(), "x.dump").unwrap();
        let mode = fs::metadata(&p.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mut data: &[u8] = b"PGDMP and more";
        let s = p.stream(&mut data, &mut Progress::new(false, "t")).unwrap();
        assert_eq!(s.bytes, 14);
        assert_eq!(&s.head[..5], b"PGDMP");
        let path = p.path.clone();
        drop(p);
        assert!(!path.exists());
        let mut p = Partial::create(d.path(), "x.dump").unwrap();
        let mut data: &[u8] = b"abc";
        let s = p.stream(&mut data, &mut Progress::new(false, "t")).unwrap();
        assert_eq!(
            s.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let f = p.commit().unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"abc");
        assert!(Partial::create(d.path(), "x.dump").is_err());
    }

    #[test]
    fn scan_sorts_out_incomplete_and_partials() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("shop-app-20261122T031500Z.dump"), b"x").unwrap();
        fs::write(
            d.path().join("shop-app-20261123T031500Z.dump.partial"),
            b"x",
        )
        .unwrap();
        fs::write(d.path().join("shop-app-20261124T031500Z.dump"), b"x").unwrap();
        let m = Manifest {
            format: FORMAT.into(),
            kind: Kind::Pg,
            file: "shop-app-20261124T031500Z.dump".into(),
            bytes: 1,
            sha256: "x".into(),
            created_at: "2026-11-24T03:15:00.000Z".into(),
            project: "shop".into(),
            target: "app".into(),
            source: "service db".into(),
            volume: None,
            server_version: None,
            verification: Verification::Read,
            verified_at: None,
            verification_error: None,
            tables: Some(2),
            entries: None,
            row_counts: None,
            deploy_id: None,
            tag: None,
            duration_ms: 5,
            extra: Map::new(),
        };
        m.write(d.path()).unwrap();
        let s = scan(d.path()).unwrap();
        assert_eq!(s.entries.len(), 1);
        assert_eq!(s.entries[0].manifest, m);
        assert_eq!(s.incomplete.len(), 1);
        assert_eq!(s.partials.len(), 1);
        assert_eq!(sweep_partials(d.path(), &target()).len(), 1);
        assert!(scan(d.path()).unwrap().partials.is_empty());
    }
}
