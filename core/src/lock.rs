//! One deploy at a time per project: an exclusive `flock` on a file in the state
//! directory (`<state>/locks/<name>.lock`). The kernel drops the lock when its holder
//! dies, so a `kill -9` never blocks the next deploy; the file's content (who held it)
//! is only for messages, and a record left by a dead process is reported as reclaimed.
//!
//! A script that holds the lock itself (e.g. `flock` in `deploy.sh`) exports
//! `BERTH_LOCK_HELD=<lock file path>`; stages it runs then proceed under its lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{fail, msg, time};

/// Who holds a lock, as written into the lock file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Holder {
    pub pid: u32,
    pub program: String,
    #[serde(default)]
    pub deploy_id: Option<String>,
    pub since: String,
}

/// A held lock; released on drop.
#[derive(Debug)]
pub struct Lock {
    file: Option<File>,
    pub path: PathBuf,
}

/// The lock every stage that changes the deploy takes (swap, rollback, migrate,
/// maintenance, converge).
pub const DEPLOY: &str = "deploy";

/// The path of lock `name` in a state directory.
pub fn path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("locks").join(format!("{name}.lock"))
}

/// Take lock `name`, waiting up to `wait` (zero: fail at once with exit 75).
pub fn acquire(
    state_dir: &Path,
    name: &str,
    wait: Duration,
    deploy_id: Option<&str>,
) -> Result<Lock> {
    let path = path(state_dir, name);
    let dir = path.parent().expect("lock path has a parent");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let started = Instant::now();
    let mut announced = false;
    loop {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {
                claim(&mut file, name, deploy_id)?;
                return Ok(Lock {
                    file: Some(file),
                    path,
                });
            }
            Err(TryLockError::WouldBlock) => {
                if inherited(&path) {
                    return Ok(Lock { file: None, path });
                }
                let who = who(read_holder(&mut file).as_ref());
                if started.elapsed() >= wait {
                    return Err(busy(name, &who, wait, started.elapsed()));
                }
                if !announced {
                    msg::info(format!("waiting for the {name} lock held by {who}"));
                    announced = true;
                }
                drop(file);
                std::thread::sleep(Duration::from_millis(200).min(wait - started.elapsed()));
            }
            Err(TryLockError::Error(e)) => {
                return Err(anyhow::Error::new(e).context(format!("locking {}", path.display())))
            }
        }
    }
}

/// The lock is ours: say when it reclaims a dead holder's record, then write ours.
fn claim(file: &mut File, name: &str, deploy_id: Option<&str>) -> Result<()> {
    if let Some(old) = read_holder(file) {
        if old.pid != std::process::id() && !pid_alive(old.pid) {
            msg::warn(format!(
                "reclaimed the {name} lock left by {} (pid {}, {}since {}), which is gone",
                old.program,
                old.pid,
                old.deploy_id
                    .as_deref()
                    .map(|d| format!("deploy {d}, "))
                    .unwrap_or_default(),
                old.since
            ));
        }
    }
    let me = Holder {
        pid: std::process::id(),
        program: msg::program().to_string(),
        deploy_id: deploy_id.map(str::to_string),
        since: time::now_rfc3339(),
    };
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(serde_json::to_string(&me)?.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// Who holds a lock, for a person.
fn who(holder: Option<&Holder>) -> String {
    holder
        .map(|h| {
            format!(
                "{} (pid {}{}, since {})",
                h.program,
                h.pid,
                h.deploy_id
                    .as_deref()
                    .map(|d| format!(", deploy {d}"))
                    .unwrap_or_default(),
                h.since
            )
        })
        .unwrap_or_else(|| "another process".to_string())
}

/// Exit 75: another deploy holds the lock (and held it for all of `wait`).
fn busy(name: &str, who: &str, wait: Duration, waited: Duration) -> anyhow::Error {
    let hint = if wait.is_zero() {
        "; pass --lock-wait DURATION to wait for it"
    } else {
        ""
    };
    fail!(
        Locked,
        "another deploy holds the {name} lock: {who}; waited {}{hint}",
        crate::human::limit(Duration::from_secs(waited.as_secs()))
    )
}

fn inherited(path: &Path) -> bool {
    let Some(held) = std::env::var_os("BERTH_LOCK_HELD") else {
        return false;
    };
    let held = PathBuf::from(held);
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    canon(&held) == canon(path)
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut s = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut s).ok()?;
    serde_json::from_str(&s).ok()
}

/// Who holds lock `name` right now, if anyone.
pub fn holder(state_dir: &Path, name: &str) -> Option<Holder> {
    let mut f = File::open(path(state_dir, name)).ok()?;
    match f.try_lock_shared() {
        Ok(()) => None,
        Err(_) => read_holder(&mut f),
    }
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl Lock {
    /// Release now (also happens on drop).
    pub fn release(mut self) {
        self.clear();
    }

    fn clear(&mut self) {
        if let Some(f) = self.file.take() {
            let _ = f.set_len(0);
            let _ = f.unlock();
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{code_of, ExitCode};

    #[test]
    fn second_holder_gets_75_and_release_frees_it() {
        let d = tempfile::tempdir().unwrap();
        let a = acquire(d.path(), "deploy", Duration::ZERO, Some("x-1")).unwrap();
        let h = holder(d.path(), "deploy").unwrap();
        assert_eq!(h.pid, std::process::id());
        assert_eq!(h.deploy_id.as_deref(), Some("x-1"));
        // A second open file description conflicts even within one process.
        let e = acquire(d.path(), "deploy", Duration::ZERO, None).unwrap_err();
        assert_eq!(code_of(&e, ExitCode::Preflight), ExitCode::Locked);
        assert!(e.to_string().contains("deploy x-1"), "{e}");
        let t = Instant::now();
        let e = acquire(d.path(), "deploy", Duration::from_millis(500), None).unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(500));
        assert_eq!(code_of(&e, ExitCode::Preflight), ExitCode::Locked);
        a.release();
        assert!(holder(d.path(), "deploy").is_none());
        acquire(d.path(), "deploy", Duration::ZERO, None).unwrap();
    }

    #[test]
    fn a_record_left_by_a_dead_process_does_not_block() {
        let d = tempfile::tempdir().unwrap();
        let p = path(d.path(), "deploy");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        // A pid that cannot exist (above pid_max).
        let dead = Holder {
            pid: 4_194_305,
            program: "berth-swap".into(),
            deploy_id: Some("old".into()),
            since: time::now_rfc3339(),
        };
        std::fs::write(&p, serde_json::to_string(&dead).unwrap()).unwrap();
        assert!(!pid_alive(dead.pid));
        let l = acquire(d.path(), "deploy", Duration::ZERO, None).unwrap();
        drop(l);
    }
}
