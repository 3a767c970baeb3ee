//! The swap journal, `<state>/swap/<service>.json`: what a swap in progress has done, so
//! that a swap killed at any moment (even `kill -9`) is converged by the next swap or
//! rollback. Written atomically before every step that changes something.
//!
//! - `started`: new containers may exist and nginx may already send them traffic, but
//!   the old containers still run. Converge backwards (to the new ones only when no old
//!   one runs).
//! - `switched`: nginx sends traffic to the new containers. Converge forwards: the old
//!   containers go and `.env` records the tag.
//!
//! [`Journals`] makes these transitions for the engine, beside the table of what a kill
//! after each one leaves to converge.
//!
//! Either way nginx is first told to name only the containers that stay, and its old
//! workers have exited, before any other container goes ([`crate::converge`]).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use berth_core::{fsutil, time};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Started,
    Switched,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    pub deploy_id: String,
    pub service: String,
    pub phase: Phase,
    /// The tag being swapped to, and the variable `.env` holds it in.
    pub tag: String,
    pub tag_var: String,
    /// The image reference the new containers are created from.
    pub image: String,
    /// Container IDs that served before the swap.
    pub old: Vec<String>,
    /// Container IDs the swap created (empty until compose has created them).
    #[serde(default)]
    pub new: Vec<String>,
    /// The upstream file nginx reads for this service, and its text before the switch
    /// (`None`: there was no file).
    #[serde(default)]
    pub upstream_file: Option<PathBuf>,
    #[serde(default)]
    pub upstream_before: Option<String>,
    /// The HAProxy backend of this service (`--proxy haproxy`), whose slots converge to the
    /// containers that stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The network alias nginx resolves for this service (`--proxy nginx-dns`), which
    /// converges to name only the containers that stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<crate::dns::Live>,
    /// Seconds the old containers get to stop.
    pub stop_grace_secs: u64,
    pub updated_at: String,
}

pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("swap")
}

pub fn path(state_dir: &Path, service: &str) -> PathBuf {
    dir(state_dir).join(format!("{service}.json"))
}

impl Journal {
    /// Write (atomically), stamping the time.
    pub fn save(&mut self, state_dir: &Path) -> Result<()> {
        self.updated_at = time::now_rfc3339();
        let d = dir(state_dir);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        let text = serde_json::to_string_pretty(self)? + "\n";
        fsutil::write_atomic(&path(state_dir, &self.service), text.as_bytes(), 0o644)
    }
}

/// The journals of one swap (one file per service), moved through their phases here and
/// only here, in the engine's order. What [`crate::converge`] does when the swap is
/// killed after each transition:
///
/// | transition (engine phase)            | file                 | converge after a kill             |
/// |--------------------------------------|----------------------|-----------------------------------|
/// | [`Journals::begin`] (start beside)   | `started`, no new ID | back: new containers (by image) go |
/// | [`Journals::started`] (start beside) | `started`, new IDs   | back, or forward when no old one runs |
/// | [`Journals::switched`] (switch)      | `switched`           | forward: old ones go, `.env` = tag |
/// | [`Journals::close`] (durable, undo)  | removed              | nothing left to do                |
#[derive(Debug)]
pub struct Journals {
    state_dir: PathBuf,
    entries: Vec<Journal>,
}

impl Journals {
    /// Before any container starts: every service `started`, no new container yet.
    pub fn begin(state_dir: &Path, entries: Vec<Journal>) -> Result<Journals> {
        let mut j = Journals {
            state_dir: state_dir.to_path_buf(),
            entries,
        };
        for e in &mut j.entries {
            e.phase = Phase::Started;
            e.save(state_dir)?;
        }
        Ok(j)
    }

    /// Compose has created these containers (IDs per service, in `begin`'s order).
    pub fn started(&mut self, new: Vec<Vec<String>>) -> Result<()> {
        for (e, ids) in self.entries.iter_mut().zip(new) {
            e.new = ids;
            e.save(&self.state_dir)?;
        }
        Ok(())
    }

    /// nginx sends traffic to the new containers: from here a kill converges forward.
    pub fn switched(&mut self) -> Result<()> {
        for e in &mut self.entries {
            e.phase = Phase::Switched;
            e.save(&self.state_dir)?;
        }
        Ok(())
    }

    /// The swap is complete (or undone before the switch): nothing left to converge.
    pub fn close(&self) -> Result<()> {
        for e in &self.entries {
            remove(&self.state_dir, &e.service)?;
        }
        Ok(())
    }
}

/// Remove a service's journal (the swap is complete or undone).
pub fn remove(state_dir: &Path, service: &str) -> Result<()> {
    let p = path(state_dir, service);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

/// Every journal left in the state directory, by service name.
pub fn all(state_dir: &Path) -> Result<Vec<Journal>> {
    let d = dir(state_dir);
    let entries = match std::fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", d.display())),
    };
    let mut out = Vec::new();
    for e in entries {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "json") {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let j: Journal = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a swap journal", p.display()))?;
            out.push(j);
        }
    }
    out.sort_by(|a, b| a.service.cmp(&b.service));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_all_remove() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal {
            deploy_id: "d1".into(),
            service: "web".into(),
            phase: Phase::Started,
            tag: "v2".into(),
            tag_var: "BERTH_TAG".into(),
            image: "app:v2".into(),
            old: vec!["a".into()],
            new: vec![],
            upstream_file: Some("/x/upstream-web.conf".into()),
            upstream_before: None,
            backend: None,
            live: None,
            stop_grace_secs: 10,
            updated_at: String::new(),
        };
        j.save(d.path()).unwrap();
        j.phase = Phase::Switched;
        j.save(d.path()).unwrap();
        let all = all(d.path()).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].phase, Phase::Switched);
        remove(d.path(), "web").unwrap();
        remove(d.path(), "web").unwrap();
        assert!(super::all(d.path()).unwrap().is_empty());
    }

    #[test]
    fn journals_move_through_the_phases_and_close() {
        let d = tempfile::tempdir().unwrap();
        let one = |svc: &str| Journal {
            deploy_id: "d1".into(),
            service: svc.into(),
            phase: Phase::Switched,
            tag: "v2".into(),
            tag_var: "BERTH_TAG".into(),
            image: "app:v2".into(),
            old: vec!["o".into()],
            new: vec![],
            upstream_file: None,
            upstream_before: None,
            backend: None,
            live: None,
            stop_grace_secs: 10,
            updated_at: String::new(),
        };
        let mut j = Journals::begin(d.path(), vec![one("web"), one("worker")]).unwrap();
        let on_disk = || super::all(d.path()).unwrap();
        assert!(on_disk()
            .iter()
            .all(|e| e.phase == Phase::Started && e.new.is_empty()));
        j.started(vec![vec!["n1".into()], vec!["n2".into()]])
            .unwrap();
        assert_eq!(on_disk()[1].new, ["n2"]);
        j.switched().unwrap();
        assert!(on_disk().iter().all(|e| e.phase == Phase::Switched));
        j.close().unwrap();
        assert!(on_disk().is_empty());
    }
}
