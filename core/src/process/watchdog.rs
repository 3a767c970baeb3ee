//! One thread that kills child process groups past their deadline (SIGTERM, then SIGKILL
//! after [`KILL_GRACE`]), and one that forwards SIGINT/SIGTERM/SIGHUP to every running
//! child group. Both start with the first child.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::{ProcessError, KILL_GRACE};

struct Entry {
    id: u64,
    pgid: libc::pid_t,
    /// None: no bound (a limit too large for an `Instant`).
    deadline: Option<Instant>,
    /// When SIGTERM went to the group (its deadline passed, or it was terminated).
    term_sent: Option<Instant>,
    killed: bool,
    timed_out: Arc<AtomicBool>,
}

struct Groups {
    list: Mutex<Vec<Entry>>,
    wake: Condvar,
}

static GROUPS: OnceLock<Groups> = OnceLock::new();
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// The binary catches signals itself and cleans up (backup, migrate): forward, go on.
static CALLER_HANDLES: AtomicBool = AtomicBool::new(false);
/// A signal arrived and berth is about to end by it: start no new child.
static ENDING: AtomicI32 = AtomicI32::new(0);

fn groups() -> &'static Groups {
    GROUPS.get_or_init(|| {
        let _ = std::thread::Builder::new()
            .name("berth-watchdog".into())
            .spawn(watch_loop);
        forward_signals();
        Groups {
            list: Mutex::new(Vec::new()),
            wake: Condvar::new(),
        }
    })
}

fn list() -> MutexGuard<'static, Vec<Entry>> {
    groups().list.lock().unwrap_or_else(|e| e.into_inner())
}

fn killpg(pgid: libc::pid_t, sig: libc::c_int) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

/// Some live process is still in the group. Zombies do not count: an orphan's zombie
/// waits for init to reap it, which may take a while.
fn group_alive(pgid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks for existence.
    if pgid <= 1 || unsafe { libc::kill(-pgid, 0) } != 0 {
        return false;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true;
    };
    dir.flatten().any(|d| {
        let Ok(stat) = std::fs::read_to_string(d.path().join("stat")) else {
            return false;
        };
        // pid (comm) state ppid pgrp ...: comm may hold anything but not the last ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().take(3).collect())
            .unwrap_or_default();
        matches!(fields[..], [state, _, pgrp] if state != "Z" && pgrp == pgid.to_string())
    })
}

fn watch_loop() {
    let g = groups();
    let mut list = list();
    loop {
        let now = Instant::now();
        let mut next = now + Duration::from_secs(1);
        for e in list.iter_mut() {
            match e.term_sent {
                None => match e.deadline {
                    Some(d) if now >= d => {
                        e.timed_out.store(true, Ordering::SeqCst);
                        killpg(e.pgid, libc::SIGTERM);
                        e.term_sent = Some(now);
                        next = next.min(now + KILL_GRACE);
                    }
                    Some(d) => next = next.min(d),
                    None => {}
                },
                Some(t) if !e.killed => {
                    if now >= t + KILL_GRACE {
                        killpg(e.pgid, libc::SIGKILL);
                        e.killed = true;
                    } else {
                        next = next.min(t + KILL_GRACE);
                    }
                }
                Some(_) => {}
            }
        }
        let wait = next
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(5));
        list = g
            .wake
            .wait_timeout(list, wait)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

fn forward_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("berth-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let caller_handles = CALLER_HANDLES.load(Ordering::SeqCst);
                if !caller_handles {
                    ENDING.store(sig, Ordering::SeqCst);
                }
                let pgids: Vec<libc::pid_t> = list().iter().map(|e| e.pgid).collect();
                for p in &pgids {
                    killpg(*p, sig);
                }
                if caller_handles {
                    continue;
                }
                // End by the signal as berth always did, but its children first.
                let until = Instant::now() + KILL_GRACE;
                while Instant::now() < until && pgids.iter().any(|p| group_alive(*p)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                for p in pgids.iter().filter(|p| group_alive(**p)) {
                    killpg(*p, libc::SIGKILL);
                }
                let _ = signal_hook::low_level::emulate_default_handler(sig);
            }
        });
}

/// Call from a binary that catches SIGINT/SIGTERM itself to clean up: signals are still
/// forwarded to the children, and berth goes on (to its cleanup) instead of ending.
pub fn handle_signals_in_caller() {
    CALLER_HANDLES.store(true, Ordering::SeqCst);
}

/// A signal arrived and berth is ending by it: no new child starts.
pub fn interrupted() -> bool {
    ENDING.load(Ordering::SeqCst) != 0
}

/// A started child's process group under its deadline. Dropping it stops watching (and
/// makes sure a group that was killed is gone).
pub struct Watch {
    id: u64,
    pgid: libc::pid_t,
    timed_out: Arc<AtomicBool>,
    command: String,
    limit: Duration,
    by_stage: bool,
}

impl Watch {
    pub(super) fn new(pids: &[u32], limit: Duration, command: String, by_stage: bool) -> Watch {
        let pgid = pids
            .first()
            .and_then(|p| libc::pid_t::try_from(*p).ok())
            .unwrap_or(0);
        let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
        let timed_out = Arc::new(AtomicBool::new(false));
        list().push(Entry {
            id,
            pgid,
            deadline: Instant::now().checked_add(limit),
            term_sent: None,
            killed: false,
            timed_out: timed_out.clone(),
        });
        groups().wake.notify_all();
        Watch {
            id,
            pgid,
            timed_out,
            command,
            limit,
            by_stage,
        }
    }

    /// The deadline passed and the group was killed.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::SeqCst)
    }

    /// Once the child has ended: the error naming the command and its limit when it was
    /// killed for its deadline.
    pub fn finished(&self) -> Result<(), ProcessError> {
        if self.timed_out() {
            Err(ProcessError::TimedOut {
                command: self.command.clone(),
                limit: self.limit,
                by_stage: self.by_stage,
            })
        } else {
            Ok(())
        }
    }

    /// Stop the child's whole group now: SIGTERM, SIGKILL after the grace (for callers
    /// with a deadline or a cancel of their own).
    pub fn terminate(&self) {
        let mut list = list();
        if let Some(e) = list.iter_mut().find(|e| e.id == self.id) {
            if e.term_sent.is_none() {
                killpg(e.pgid, libc::SIGTERM);
                e.term_sent = Some(Instant::now());
            }
        }
        groups().wake.notify_all();
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let entry = {
            let mut list = list();
            list.iter()
                .position(|e| e.id == self.id)
                .map(|i| list.remove(i))
        };
        // A group that was told to stop: its leader is gone, but a member that ignores
        // SIGTERM gets the rest of the grace, then SIGKILL. No orphan stays behind.
        if let Some(Entry {
            term_sent: Some(t), ..
        }) = entry
        {
            while group_alive(self.pgid) && t.elapsed() < KILL_GRACE {
                std::thread::sleep(Duration::from_millis(20));
            }
            if group_alive(self.pgid) {
                killpg(self.pgid, libc::SIGKILL);
            }
        }
    }
}
