//! The one-off migration container: `docker compose run` from the new image, its output
//! streamed to a log file, bounded by a timeout, and owned: on timeout, SIGINT or SIGTERM
//! the compose client is killed and the container removed by name and label (compose
//! leaves a `run` container running when its client dies, and `down` ignores one-offs).

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use berth_core::compose::{Compose, LABEL_PROJECT};
use berth_core::docker;
use berth_core::process::Cmd;
use berth_core::{fsutil, msg, time};

pub const LABEL_DEPLOY: &str = "berth.deploy_id";
pub const LABEL_ROLE: &str = "berth.role";
pub const ROLE: &str = "migrate";

/// What to run and where its output goes.
#[derive(Debug, Clone)]
pub struct OneOff {
    pub compose: Compose,
    pub service: String,
    pub command: Vec<OsString>,
    pub deploy_id: String,
    /// The container's name: `<project>-migrate-<deploy id>`.
    pub name: String,
    pub log: PathBuf,
    /// On Swarm: a `docker run` of the new image beside the stack, not `compose run`.
    pub swarm: Option<crate::swarm::SwarmRun>,
}

impl OneOff {
    pub fn new(
        compose: Compose,
        service: &str,
        command: &[OsString],
        deploy_id: &str,
        state_dir: &Path,
    ) -> OneOff {
        let name = format!("{}-migrate-{}", compose.project, container_safe(deploy_id));
        let log = state_dir
            .join("logs")
            .join(format!("migrate-{}.log", container_safe(deploy_id)));
        OneOff {
            compose,
            service: service.to_string(),
            command: command.to_vec(),
            deploy_id: deploy_id.to_string(),
            name,
            log,
            swarm: None,
        }
    }

    /// The label that names the project (compose's) or the stack (berth's) on the
    /// one-off container.
    pub fn project_label(&self) -> &'static str {
        match self.swarm {
            Some(_) => crate::swarm::LABEL_STACK,
            None => LABEL_PROJECT,
        }
    }

    /// `docker compose ... run --rm --no-deps -T --name NAME --label ... SERVICE CMD...`;
    /// on Swarm, [`crate::swarm::SwarmRun::run_cmd`].
    pub fn run_cmd(&self) -> Cmd {
        if let Some(s) = &self.swarm {
            return s.run_cmd(self);
        }
        self.compose
            .cmd([
                "run",
                "--rm",
                "--no-deps",
                "-T",
                "--name",
                &self.name,
                "--label",
                &format!("{LABEL_DEPLOY}={}", self.deploy_id),
                "--label",
                &format!("{LABEL_ROLE}={ROLE}"),
                &self.service,
            ])
            .args(&self.command)
    }

    /// `docker rm -f NAME`: how this container is removed when berth-migrate must stop it.
    pub fn remove_cmd(&self) -> Cmd {
        docker::remove_force(&[&self.name], false)
    }

    pub fn command_display(&self) -> Vec<String> {
        self.command
            .iter()
            .map(|a| a.to_string_lossy().to_string())
            .collect()
    }
}

/// Docker's container-name alphabet: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn container_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// `docker compose run` exited with this code (the command's own, or compose's 1 when
    /// it could not start the container).
    Exited(i32),
    /// The compose client was killed by a signal nobody here sent.
    Killed(i32),
    /// The timeout passed; the container was removed.
    TimedOut,
    /// SIGINT or SIGTERM reached berth-migrate; the container was removed.
    Interrupted(&'static str),
}

#[derive(Debug)]
pub struct Run {
    pub ended: Ended,
    pub elapsed: Duration,
    /// Where this run's output starts in the log (earlier attempts come before it).
    pub log_start: u64,
    /// Containers of this run still present after cleanup (should be 0).
    pub left: usize,
}

/// The labels that find every migration container of this run.
fn labels(job: &OneOff) -> [(&str, &str); 3] {
    [
        (job.project_label(), job.compose.project.as_str()),
        (LABEL_DEPLOY, job.deploy_id.as_str()),
        (LABEL_ROLE, ROLE),
    ]
}

/// Remove migration containers a killed berth-migrate of this project left behind (we
/// hold the deploy lock: no other migration of this project runs now).
pub fn remove_leftovers(job: &OneOff) -> Result<usize> {
    let ids = docker::containers_with_labels(
        &[
            (job.project_label(), job.compose.project.as_str()),
            (LABEL_ROLE, ROLE),
        ],
        true,
    )?;
    if ids.is_empty() {
        return Ok(0);
    }
    msg::warn(format!(
        "removing {} migration container(s) an earlier, interrupted berth-migrate left behind",
        ids.len()
    ));
    docker::remove_force(&ids, false)
        .run()
        .context("removing leftover migration containers")?;
    Ok(ids.len())
}

/// Remove this run's container (by name and by label) until none is left, bounded to a
/// few seconds: a create the killed client had already sent can land a moment later.
pub fn remove(job: &OneOff) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut clean_checks = 0;
    loop {
        let _ = job.remove_cmd().output();
        let ids = docker::containers_with_labels(&labels(job), true).unwrap_or_default();
        if !ids.is_empty() {
            clean_checks = 0;
            let _ = docker::remove_force(&ids, false).output();
        } else {
            clean_checks += 1;
        }
        // Two clean looks half a second apart.
        if clean_checks >= 2 || Instant::now() >= deadline {
            return ids.len();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Open the log for appending (0600, directory 0700) with a header; its length after the
/// header is where this run's output starts.
fn open_log(job: &OneOff) -> Result<(File, u64)> {
    let dir = job.log.parent().expect("log path has a parent");
    fsutil::create_dir(dir, 0o700)?;
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&job.log)
        .with_context(|| format!("opening the log {}", job.log.display()))?;
    writeln!(
        f,
        "# berth-migrate {}: {}",
        time::now_rfc3339(),
        job.run_cmd().display()
    )
    .with_context(|| format!("writing {}", job.log.display()))?;
    f.flush()?;
    let start = f.metadata()?.len();
    Ok((f, start))
}

/// Run the migration. `stop` holds the number of a signal that arrived (0: none).
pub fn run(job: &OneOff, timeout: Duration, stop: &Arc<AtomicUsize>) -> Result<Run> {
    let (log, log_start) = open_log(job)?;
    let started = Instant::now();
    // The watchdog's bound is a safety net past our own deadline: this loop stops the
    // run itself (and says so) first.
    let (handle, watch) = job
        .run_cmd()
        .timeout(timeout + berth_core::process::command_timeout())
        .start(|e| {
            e.stdin_null()
                .stderr_to_stdout()
                .stdout_file(log)
                .unchecked()
        })
        .context("could not start the docker client")?;
    let deadline = started + timeout;
    let ended = loop {
        // The signal first: it is also forwarded to compose's process group, which may
        // end a moment before this loop looks.
        let sig = stop.load(Ordering::SeqCst);
        if sig != 0 {
            break Ended::Interrupted(signal_name(sig));
        }
        if let Some(out) = handle.try_wait().context("waiting for docker compose")? {
            use std::os::unix::process::ExitStatusExt;
            break match (out.status.code(), out.status.signal()) {
                (Some(c), _) => Ended::Exited(c),
                (None, Some(s)) => Ended::Killed(s),
                (None, None) => Ended::Killed(0),
            };
        }
        if Instant::now() >= deadline {
            break Ended::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let elapsed = started.elapsed();
    let mut left = 0;
    if matches!(ended, Ended::TimedOut | Ended::Interrupted(_)) {
        watch.terminate();
        let _ = handle.wait();
        left = remove(job);
        let why = match &ended {
            Ended::TimedOut => format!("timed out after {}", berth_core::human::limit(timeout)),
            Ended::Interrupted(s) => format!("interrupted by {s}"),
            _ => unreachable!(),
        };
        append_note(
            &job.log,
            &format!("# berth-migrate: {why}; removed container {}", job.name),
        );
    } else if !docker::containers_with_labels(&labels(job), true)
        .unwrap_or_default()
        .is_empty()
    {
        // compose run --rm removes it itself; make sure of it (a killed client does not).
        left = remove(job);
    }
    Ok(Run {
        ended,
        elapsed,
        log_start,
        left,
    })
}

fn append_note(path: &Path, line: &str) {
    if let Ok(mut f) = OpenOptions::new().append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}

pub fn signal_name(sig: usize) -> &'static str {
    match sig as i32 {
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// The last `n` lines of `path` from byte `from` on, reading at most the last 256 KiB.
pub fn tail(path: &Path, from: u64, n: usize) -> Vec<String> {
    const WINDOW: u64 = 256 * 1024;
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(WINDOW));
    if f.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(WINDOW).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    // A window that starts mid-line: drop the partial first line.
    if start > from && !lines.is_empty() {
        lines.remove(0);
    }
    let lines: Vec<String> = lines
        .into_iter()
        .filter(|l| !l.starts_with("# berth-migrate"))
        .map(str::to_string)
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_and_names() {
        let c = Compose::new("shop", Path::new("/srv/shop"), &[]).with_env("BERTH_TAG", "v2");
        let p = OneOff::new(
            c,
            "web",
            &["alembic".into(), "upgrade".into(), "head".into()],
            "20261122T031500Z-v2",
            Path::new("/srv/shop/.berth"),
        );
        assert_eq!(p.name, "shop-migrate-20261122T031500Z-v2");
        assert_eq!(
            p.log,
            Path::new("/srv/shop/.berth/logs/migrate-20261122T031500Z-v2.log")
        );
        assert_eq!(
            p.run_cmd().display(),
            "docker compose --project-directory /srv/shop -p shop run --rm --no-deps -T \
             --name shop-migrate-20261122T031500Z-v2 --label berth.deploy_id=20261122T031500Z-v2 \
             --label berth.role=migrate web alembic upgrade head"
        );
        assert_eq!(container_safe("a/b:c"), "a-b-c");
    }

    #[test]
    fn tail_reads_only_this_runs_last_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.log");
        std::fs::write(&p, "# berth-migrate old\nold line\n").unwrap();
        let from = std::fs::metadata(&p).unwrap().len();
        let mut text = String::new();
        for i in 0..80 {
            text.push_str(&format!("line {i}\n"));
        }
        text.push_str("# berth-migrate: timed out\n");
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        let t = tail(&p, from, 50);
        assert_eq!(t.len(), 50);
        assert_eq!(t[0], "line 30");
        assert_eq!(t[49], "line 79");
        assert!(tail(&p, std::fs::metadata(&p).unwrap().len(), 50).is_empty());
        assert!(tail(&d.path().join("none"), 0, 50).is_empty());
    }
}
