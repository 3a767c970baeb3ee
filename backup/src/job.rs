//! One backup being taken, whatever its source: the partial file under a free name, the
//! archive produced into it (plain, or through age), the guard against a shrunken
//! backup, the verification, the commit and the manifest written last.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use berth_core::cli::Context;
use berth_core::process::{quote, Cmd};
use berth_core::{fail, human, lock, msg, time};
use serde_json::{Map, Value};

use crate::pg::{self, Conn};
use crate::store::{self, file_name, Entry, Manifest, Partial, Streamed, Target, Verification};
use crate::stream::{stream_cmd, stream_encrypted};
use crate::{catch_signals, crypt, say, volume};

/// What a backup run needs besides its source.
pub struct Job {
    pub dir: PathBuf,
    pub target: Target,
    pub verify: Verification,
    pub allow_shrink: bool,
    pub tag: Option<String>,
    pub deploy_id: Option<String>,
    /// Encrypt with age (None: a plain archive).
    pub encrypt: Option<crypt::Encrypt>,
}

/// A backup begun: its partial file, when it was named, the clock of its duration.
struct Begun {
    partial: Partial,
    created: jiff::Timestamp,
    clock: Instant,
}

impl Job {
    /// The plaintext of the archive being written, for verification after the write:
    /// the file itself, or (encrypted) decrypted with the identity in a stream.
    fn source(&self, path: &Path) -> crypt::Source {
        match &self.encrypt {
            Some(e) => crypt::Source::Age {
                file: path.to_path_buf(),
                identity: e.identity.identity_file.clone().unwrap_or_default(),
            },
            None => crypt::Source::Plain(path.to_path_buf()),
        }
    }

    /// ` --identity-file FILE` for printed restore commands of an encrypted backup.
    pub fn identity_flag(&self) -> String {
        match &self.encrypt {
            None => String::new(),
            Some(e) => match &e.identity.identity_file {
                Some(i) => format!(" --identity-file {}", quote(&i.to_string_lossy())),
                None => " --identity-file KEY_FILE".into(),
            },
        }
    }

    /// Read verification rides on the stream (encrypted, and no identity to decrypt).
    fn tee_read(&self) -> bool {
        self.verify == Verification::Read
            && self
                .encrypt
                .as_ref()
                .is_some_and(|e| e.identity.identity_file.is_none())
    }

    /// Produce the archive: plain, or through age (with the read verifier on the stream
    /// when [`Job::tee_read`]); the verifier's result when it ran.
    fn produce<T: Send>(
        &self,
        cmd: &Cmd,
        partial: &mut Partial,
        label: &str,
        verifier: &(dyn Fn(&crypt::Source) -> Result<T> + Sync),
    ) -> Result<(Streamed, Option<T>)> {
        match &self.encrypt {
            Some(e) => {
                stream_encrypted(cmd, e, partial, label, self.tee_read().then_some(verifier))
            }
            None => Ok((stream_cmd(cmd, partial, label)?, None)),
        }
    }

    /// The directory ready, partials of this target left by a crash swept, the new
    /// partial file created.
    fn begin(&self) -> Result<Begun> {
        store::prepare_dir(&self.dir)?;
        for p in store::sweep_partials(&self.dir, &self.target) {
            msg::warn(format!(
                "removed {}, left by an interrupted backup",
                p.display()
            ));
        }
        let clock = Instant::now();
        let (partial, created) = self.new_partial()?;
        Ok(Begun {
            partial,
            created,
            clock,
        })
    }

    /// Create the partial file for a new backup; a name taken this second waits for the next.
    fn new_partial(&self) -> Result<(Partial, jiff::Timestamp)> {
        for attempt in 0..3 {
            let at = time::now();
            let mut name = self.target.file_name(at, self.tag.as_deref());
            if self.encrypt.is_some() {
                name.push_str(crypt::SUFFIX);
            }
            if !self.dir.join(&name).exists() && !self.dir.join(format!("{name}.partial")).exists()
            {
                return Ok((Partial::create(&self.dir, &name)?, at));
            }
            if attempt < 2 {
                std::thread::sleep(Duration::from_millis(1000));
            }
        }
        Err(fail!(
            Backup,
            "could not find a free file name in {}",
            self.dir.display()
        ))
    }

    /// The partial renamed into place, then its manifest written (the kind's own fields
    /// set by `fill`); no manifest, no archive.
    fn commit(
        &self,
        b: Begun,
        streamed: Streamed,
        verified_at: Option<String>,
        fill: impl FnOnce(&mut Manifest),
    ) -> Result<Entry> {
        let path = b.partial.commit()?;
        let mut manifest = Manifest {
            format: store::FORMAT.into(),
            kind: self.target.kind,
            file: file_name(&path),
            bytes: streamed.bytes,
            sha256: streamed.sha256,
            created_at: time::rfc3339(b.created),
            project: self.target.project.clone(),
            target: self.target.name.clone(),
            source: String::new(),
            volume: None,
            server_version: None,
            verification: self.verify,
            verified_at,
            verification_error: None,
            tables: None,
            entries: None,
            row_counts: None,
            deploy_id: self.deploy_id.clone(),
            tag: self.tag.clone(),
            duration_ms: time::millis(b.clock.elapsed()),
            extra: self.manifest_extra(),
        };
        fill(&mut manifest);
        if let Err(e) = manifest.write(&self.dir) {
            let _ = std::fs::remove_file(&path);
            return Err(fail!(Backup, "{e:#}"));
        }
        Ok(Entry { path, manifest })
    }

    /// `encryption` and `recipients` when encrypted.
    fn manifest_extra(&self) -> Map<String, Value> {
        self.encrypt
            .as_ref()
            .map(crypt::Encrypt::manifest_fields)
            .unwrap_or_default()
    }
}

/// Hold a target's lock for the rest of the run; catch signals from then on.
pub fn lock_target(
    ctx: &Context,
    target: &Target,
    wait: Duration,
    deploy_id: Option<&str>,
) -> Result<lock::Lock> {
    let lock = lock::acquire(&ctx.state_dir, &target.lock_name(), wait, deploy_id)?;
    catch_signals();
    Ok(lock)
}

/// The newest verified backup of the target, for the anomaly guard.
fn last_verified(dir: &Path, target: &Target) -> Result<Option<Manifest>> {
    let scan = store::scan(dir)?;
    Ok(scan
        .of(target)
        .into_iter()
        .rev()
        .find(|e| e.manifest.verification.verified())
        .map(|e| e.manifest.clone()))
}

fn guard(job: &Job, bytes: u64, tables: Option<u64>) -> Result<()> {
    if job.allow_shrink {
        return Ok(());
    }
    let Some(last) = last_verified(&job.dir, &job.target)? else {
        return Ok(());
    };
    if bytes.saturating_mul(2) < last.bytes {
        return Err(fail!(
            Backup,
            "the new backup is {} bytes, under half of the last verified one ({}, {} bytes); \
             if the data really shrank, pass --allow-shrink",
            bytes,
            last.file,
            last.bytes
        ));
    }
    if let (Some(t), Some(lt)) = (tables, last.tables) {
        if t < lt {
            return Err(fail!(
                Backup,
                "the database has {t} tables, fewer than the {lt} of the last verified backup \
                 ({}); if tables were dropped on purpose, pass --allow-shrink",
                last.file
            ));
        }
    }
    Ok(())
}

/// Back up a database (the target's lock held by the caller).
pub fn backup_pg(conn: &Conn, db: &str, job: &Job) -> Result<Entry> {
    let mut b = job.begin()?;
    say(format!(
        "backing up database {db} ({}) to {}",
        conn.source(db),
        b.partial.final_path.display()
    ));
    let mut snap = pg::Snapshot::open(conn, db)?;
    let facts = snap.facts(job.verify == Verification::Restore)?;
    let dump = pg::dump_cmd(conn, db, &snap.id);
    let read = |src: &crypt::Source| conn.verify_read(src);
    let label = format!("pg_dump of {db}");
    let (streamed, teed) = job.produce(&dump, &mut b.partial, &label, &read)?;
    snap.close()?;
    if streamed.bytes == 0 {
        return Err(fail!(Backup, "pg_dump of {db} wrote nothing"));
    }
    if !streamed.head.starts_with(b"PGDMP") {
        return Err(fail!(
            Backup,
            "pg_dump of {db} did not write a custom-format archive"
        ));
    }
    let tables = facts.tables.len() as u64;
    guard(job, streamed.bytes, Some(tables))?;
    let src = job.source(&b.partial.path);
    let verified_at = verify_pg(conn, job, &src, teed.is_some(), facts.counts.as_ref())?;
    let entry = job.commit(b, streamed, verified_at, |m| {
        m.source = conn.source(db);
        m.server_version = Some(facts.server_version);
        m.tables = Some(tables);
        m.row_counts = facts.counts;
    })?;
    let m = &entry.manifest;
    say(format!(
        "backup of {db} done: {} ({}), verification {}, {:.1}s",
        entry.path.display(),
        human::bytes(m.bytes),
        m.verification.as_str(),
        m.duration_ms as f64 / 1000.0
    ));
    Ok(entry)
}

/// Verify a new dump as `job.verify` asks (read: unless it was read on the stream); when
/// it was verified.
fn verify_pg(
    conn: &Conn,
    job: &Job,
    src: &crypt::Source,
    teed: bool,
    counts: Option<&BTreeMap<String, u64>>,
) -> Result<Option<String>> {
    match job.verify {
        Verification::None | Verification::Failed => return Ok(None),
        Verification::Read => {
            say("verifying: reading the whole archive (pg_restore -f /dev/null)");
            if !teed {
                conn.verify_read(src)?;
            }
        }
        Verification::Restore => {
            say("verifying: restoring into a scratch database and comparing row counts");
            let got = conn.restore_counts(src)?;
            let diff = pg::compare_counts(&counts.cloned().unwrap_or_default(), &got);
            if !diff.is_empty() {
                return Err(fail!(
                    Backup,
                    "restore verification failed: {}",
                    diff.join("; ")
                ));
            }
        }
    }
    Ok(Some(time::now_rfc3339()))
}

/// Back up a volume (the target's lock held by the caller).
pub fn backup_volume(
    ctx: &Context,
    real: &str,
    stop: &[String],
    image: &str,
    job: &Job,
) -> Result<Entry> {
    let mut b = job.begin()?;
    say(format!(
        "backing up volume {real} to {}",
        b.partial.final_path.display()
    ));
    let (streamed, teed) = tar_volume(ctx, real, stop, image, job, &mut b.partial)?;
    if streamed.bytes == 0 || !streamed.head.starts_with(&[0x1f, 0x8b]) {
        return Err(fail!(
            Backup,
            "the tar of volume {real} is not a gzip archive"
        ));
    }
    guard(job, streamed.bytes, None)?;
    let src = job.source(&b.partial.path);
    let (entries, verified_at) = match job.verify {
        Verification::None | Verification::Failed => (None, None),
        Verification::Read => {
            say("verifying: reading the whole archive");
            let n = match teed {
                Some(n) => n,
                None => volume::read_archive(&src)?,
            };
            (Some(n), Some(time::now_rfc3339()))
        }
        Verification::Restore => {
            say("verifying: reading the archive, then extracting it into a scratch volume");
            let n = volume::verify_restore(&ctx.project, image, &src)?;
            (Some(n), Some(time::now_rfc3339()))
        }
    };
    let entry = job.commit(b, streamed, verified_at, |m| {
        m.source = format!("docker volume {real}");
        m.volume = Some(real.to_string());
        m.entries = entries;
    })?;
    say(format!(
        "backup of volume {real} done: {} ({}), verification {}",
        entry.path.display(),
        human::bytes(entry.manifest.bytes),
        entry.manifest.verification.as_str()
    ));
    Ok(entry)
}

/// The tar of the volume into the partial file, the services in `stop` stopped
/// meanwhile and started again whatever happens.
fn tar_volume(
    ctx: &Context,
    real: &str,
    stop: &[String],
    image: &str,
    job: &Job,
    partial: &mut Partial,
) -> Result<(Streamed, Option<u64>)> {
    let compose = ctx.compose();
    let mut stopped = volume::Stopped::stop(&compose, stop)?;
    let helper = volume::helper_name("tar");
    let cmd = volume::tar_cmd(&ctx.project, &helper, image, real);
    let label = format!("tar of volume {real}");
    let res = job.produce(&cmd, partial, &label, &volume::read_archive);
    if res.is_err() {
        volume::remove_helper(&helper);
    }
    let restarted = stopped.restart();
    let s = res?;
    restarted?;
    Ok(s)
}
