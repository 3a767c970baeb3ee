//! The release ledger, `<state dir>/releases.jsonl`: one deploy document per line,
//! appended under a lock and fsynced, never rewritten. A deploy may be appended more than
//! once as it goes (the swap records its release as *provisional*; the report appends the
//! final document): readers take the last line of each `deploy_id`. A release is good only
//! by a final line: a deploy that died after its swap (smoke never passed, report never
//! ran) stays provisional and is never a rollback target.
//!
//! The ledger is private (0600 in a 0700 state directory) and holds no secrets: every
//! string is scrubbed on the way in (see [`crate::scrub`]).

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::doc::{Document, Status};
use crate::{fsutil, msg, scrub};

pub const FILE: &str = "releases.jsonl";

/// The top-level field marking a line written before the deploy's outcome was known.
pub const PROVISIONAL: &str = "provisional";

/// A copy of `doc` marked provisional (the swap's line: the smoke test has not run yet).
pub fn provisional(doc: &Document) -> Document {
    let mut d = doc.clone();
    d.extra
        .insert(PROVISIONAL.into(), serde_json::Value::Bool(true));
    d
}

/// Whether a ledger line was written before the deploy's outcome was known.
pub fn is_provisional(doc: &Document) -> bool {
    doc.extra.get(PROVISIONAL) == Some(&serde_json::Value::Bool(true))
}

/// A copy of `doc` without the provisional mark (the report's final line).
pub fn final_line(doc: &Document) -> Document {
    let mut d = doc.clone();
    d.extra.remove(PROVISIONAL);
    d
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The mode of the state directory: it holds log tails and host names.
pub const DIR_MODE: u32 = 0o700;
/// The mode of the ledger and the other state files.
pub const FILE_MODE: u32 = 0o600;

/// Create the state directory private (0700); an existing one that others can read is
/// made private too (it is berth's own).
pub fn ensure_state_dir(state_dir: &Path) -> Result<()> {
    fsutil::create_dir(state_dir, DIR_MODE)?;
    let meta =
        std::fs::metadata(state_dir).with_context(|| format!("reading {}", state_dir.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(DIR_MODE))
            .with_context(|| format!("making {} private (0700)", state_dir.display()))?;
    }
    Ok(())
}

/// Append one document as one line: exclusive lock, repair a torn last line (a crash
/// mid-append leaves one without its newline), write, fsync. Strings are scrubbed of
/// secrets first; the file is private (0600).
pub fn append(state_dir: &Path, doc: &Document) -> Result<()> {
    ensure_state_dir(state_dir)?;
    let p = path(state_dir);
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(FILE_MODE)
        .open(&p)
        .with_context(|| format!("opening the ledger {}", p.display()))?;
    f.lock()
        .with_context(|| format!("locking the ledger {}", p.display()))?;
    if f.metadata()?.permissions().mode() & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    }
    let mut value = serde_json::from_str::<serde_json::Value>(&doc.to_json())?;
    scrub::scrub_json(&mut value, &[]);
    let mut line = String::new();
    if !ends_with_newline(&mut f)? {
        line.push('\n');
    }
    line.push_str(&value.to_string());
    line.push('\n');
    f.write_all(line.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("appending to the ledger {}", p.display()))?;
    f.unlock()?;
    Ok(())
}

/// Whether the file is empty or ends with a newline.
fn ends_with_newline(f: &mut std::fs::File) -> Result<bool> {
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(true);
    }
    let mut last = [0u8; 1];
    f.seek(SeekFrom::Start(len - 1))?;
    f.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

/// Every release, oldest first, one per deploy id (its last line). Lines that are not
/// documents (torn by a crash, not UTF-8, edited by hand) are skipped, with one warning
/// saying how many and where the first is. An error means the file could not be read at
/// all: callers that would delete on the ledger's word must then delete nothing.
pub fn read(state_dir: &Path) -> Result<Vec<Document>> {
    let p = path(state_dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading the ledger {}", p.display())),
    };
    let mut out: Vec<Document> = Vec::new();
    let mut skipped: Vec<(usize, String)> = Vec::new();
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let parsed = match std::str::from_utf8(raw) {
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => Document::parse(line).map_err(|e| e.message),
            Err(_) => Err("not UTF-8".to_string()),
        };
        match parsed {
            Ok(d) => {
                out.retain(|o| o.deploy_id != d.deploy_id);
                out.push(d);
            }
            Err(why) => skipped.push((i + 1, why)),
        }
    }
    if let Some((line, why)) = skipped.first() {
        msg::warn(format!(
            "{}: skipped {} unreadable line(s) (first: line {line}: {why})",
            p.display(),
            skipped.len()
        ));
    }
    Ok(out)
}

/// The stage of a restore drill's record (`berth-backup drill`): the ledger keeps drills
/// beside releases; release views skip them.
pub const DRILL_STAGE: &str = "drill";

/// Whether a ledger record is a restore drill, not a release.
pub fn is_drill(doc: &Document) -> bool {
    doc.stages.iter().any(|s| s.stage == DRILL_STAGE)
}

/// The releases of a ledger (drills left out), oldest first.
pub fn releases(all: Vec<Document>) -> Vec<Document> {
    all.into_iter().filter(|d| !is_drill(d)).collect()
}

/// A good release: it swapped successfully, nothing failed, and the whole deploy said so
/// (its final line, not the swap's provisional one).
pub fn is_good(doc: &Document) -> bool {
    !is_provisional(doc)
        && doc.outcome() == 0
        && !doc.has_failed()
        && doc
            .stages
            .iter()
            .any(|s| s.stage == "swap" && s.status == Status::Ok)
}

/// The newest good release that deployed `service` (any service when `None`).
pub fn last_good<'a>(releases: &'a [Document], service: Option<&str>) -> Option<&'a Document> {
    releases.iter().rev().find(|d| {
        is_good(d)
            && d.tag.is_some()
            && service.is_none_or(|s| d.services.iter().any(|x| x.name == s))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::StageRecord;
    use serde_json::Map;

    fn release(tag: &str, ok: bool) -> Document {
        let mut d = Document::new("shop", Some(tag));
        d.deploy_id = format!("id-{tag}");
        d.set_service_image("web", &format!("shop-web:{tag}"));
        d.stages.push(StageRecord {
            stage: "swap".into(),
            status: if ok { Status::Ok } else { Status::Failed },
            started_at: crate::time::now_rfc3339(),
            duration_ms: 1,
            exit_code: if ok { 0 } else { 3 },
            detail: Map::new(),
            error: None,
            extra: Map::new(),
        });
        d
    }

    #[test]
    fn append_read_and_last_good() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_empty());
        append(dir.path(), &release("v1", true)).unwrap();
        append(dir.path(), &release("v2", true)).unwrap();
        append(dir.path(), &release("v3", false)).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(path(dir.path()))
            .unwrap()
            .write_all(b"not json\n")
            .unwrap();
        // v2 again, now failed (the report saw the smoke test fail): last line wins.
        append(dir.path(), &release("v2", false)).unwrap();
        let all = read(dir.path()).unwrap();
        assert_eq!(all.len(), 3);
        let good = last_good(&all, Some("web")).unwrap();
        assert_eq!(good.tag.as_deref(), Some("v1"));
        assert!(last_good(&all, Some("worker")).is_none());

        // v4's swap wrote its provisional line, and the deploy died before its report:
        // unverified, never good. Its report's final line makes it good.
        let v4 = release("v4", true);
        append(dir.path(), &provisional(&v4)).unwrap();
        let all = read(dir.path()).unwrap();
        assert!(is_provisional(all.last().unwrap()));
        assert_eq!(last_good(&all, None).unwrap().tag.as_deref(), Some("v1"));
        append(dir.path(), &final_line(&provisional(&v4))).unwrap();
        let all = read(dir.path()).unwrap();
        assert_eq!(last_good(&all, None).unwrap().tag.as_deref(), Some("v4"));
    }

    #[test]
    fn torn_and_non_utf8_lines_are_skipped_and_appends_repair_the_newline() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), &release("v1", true)).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(path(dir.path()))
            .unwrap();
        f.write_all(b"\xff\xfe not utf-8\n{\"deploy_id\": \"torn")
            .unwrap();
        drop(f);
        // The torn line has no newline: the next append must not glue onto it.
        append(dir.path(), &release("v2", true)).unwrap();
        let all = read(dir.path()).unwrap();
        let tags: Vec<_> = all.iter().map(|d| d.tag.clone().unwrap()).collect();
        assert_eq!(tags, ["v1", "v2"]);
        let text = std::fs::read(path(dir.path())).unwrap();
        assert!(text.ends_with(b"\n"));
    }

    #[test]
    fn the_ledger_is_private_and_scrubbed() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut d = release("v1", false);
        d.stages[0].error =
            Some("pg_dump: postgresql://app:hunter2@db/shop POSTGRES_PASSWORD=hunter2".into());
        append(&state, &d).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&path(&state)), 0o600);
        let text = std::fs::read_to_string(path(&state)).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("postgresql://app:***@db/shop"), "{text}");
    }
}
