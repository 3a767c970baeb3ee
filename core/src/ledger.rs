//! The release ledger, `<state dir>/releases.jsonl`: one deploy document per line,
//! appended under a lock and fsynced, never rewritten. A deploy may be appended more than
//! once as it goes (the swap records its release; the report appends the final document):
//! readers take the last line of each `deploy_id`.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::doc::{Document, Status};
use crate::msg;

pub const FILE: &str = "releases.jsonl";

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Append one document as one line: exclusive lock, write, fsync.
pub fn append(state_dir: &Path, doc: &Document) -> Result<()> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let p = path(state_dir);
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .with_context(|| format!("opening the ledger {}", p.display()))?;
    f.lock()
        .with_context(|| format!("locking the ledger {}", p.display()))?;
    let mut line = doc.to_json();
    line.push('\n');
    f.write_all(line.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("appending to the ledger {}", p.display()))?;
    f.unlock()?;
    Ok(())
}

/// Every release, oldest first, one per deploy id (its last line). Lines that are not
/// documents are skipped with a warning naming the line.
pub fn read(state_dir: &Path) -> Result<Vec<Document>> {
    let p = path(state_dir);
    let f = match std::fs::File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("opening the ledger {}", p.display())),
    };
    let mut out: Vec<Document> = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading the ledger {}", p.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        match Document::parse(&line) {
            Ok(d) => {
                out.retain(|o| o.deploy_id != d.deploy_id);
                out.push(d);
            }
            Err(e) => msg::warn(format!("{}:{}: skipped: {}", p.display(), i + 1, e.message)),
        }
    }
    Ok(out)
}

/// A good release: it swapped successfully and nothing failed.
pub fn is_good(doc: &Document) -> bool {
    doc.outcome() == 0
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
    }
}
