//! `berth-backup`: PostgreSQL and volume backups that can be trusted — streamed to a
//! `.partial`, fsynced, renamed, verified, described by a manifest written last — GFS
//! rotation that never deletes the backup a release depends on, and restore.

pub mod crypt;
pub mod drill;
pub mod job;
pub mod list;
pub mod offsite;
pub mod pg;
pub mod progress;
pub mod prune;
pub mod restore;
pub mod rotate;
pub mod server;
pub mod stage;
pub mod store;
pub mod stream;
pub mod swarm;
pub mod verify;
pub mod volume;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use berth_core::cli::{parse_duration, CommonArgs, Context};
use berth_core::{fail, msg, ExitCode, Failure};
use clap::{Args, Parser, Subcommand};

use crate::rotate::Policy;
pub use crate::server::{Named, Server};
use crate::store::Verification;

static QUIET: AtomicBool = AtomicBool::new(false);
static INTERRUPTED: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

/// `--quiet` was given.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// A status line on stderr, unless `--quiet`.
pub fn say(text: impl AsRef<str>) {
    if !quiet() {
        msg::info(text);
    }
}

/// Catch SIGINT/SIGTERM/SIGHUP so that cleanup (stopped services started again, partial
/// files removed) runs; long loops call [`check_interrupted`]. Called once the target's
/// lock is held (before that, Ctrl-C must end a lock wait or a prompt at once).
pub(crate) fn catch_signals() {
    let flag = INTERRUPTED.get_or_init(|| Arc::new(AtomicBool::new(false)));
    berth_core::process::handle_signals_in_caller();
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.get().is_some_and(|f| f.load(Ordering::Relaxed)) {
        return Err(fail!(Backup, "interrupted"));
    }
    Ok(())
}

const EXAMPLES: &str = "\
Examples:
  # Back up the compose service `db` (pg_dump runs inside it), read-verify, keep GFS
  berth-backup pg --service db --keep-daily 7 --keep-weekly 4 --keep-monthly 6

  # Before a deploy, as the first stage of the pipeline; restore-level verification
  berth-backup pg --service db --verify restore --tag 3f9c2a1 | berth-migrate ... | berth-swap ...

  # A database outside compose; the password from a file (or PGPASSWORD), never argv
  berth-backup pg --url postgres://app@10.0.0.5:5432/shop --password-file /etc/berth/pgpass

  # A volume, with the service that writes it stopped meanwhile (and started again)
  berth-backup volume redis-data --stop redis --helper-image berth-fixture/base:12

  # Encrypted at rest with age (file .dump.age); restore, verify and drill need the key
  berth-backup pg --service db --encrypt-to age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
  berth-backup restore .berth/backups/shop-shop-20261122T031500Z.dump.age --service db \
      --identity-file /root/berth-backup.key

  # Nightly from cron: no progress, the deploy document appended to a log
  berth-backup pg --service db --quiet --keep-daily 7 >>/var/log/berth-backup.jsonl

  berth-backup list
  berth-backup verify .berth/backups/shop-shop-20261122T031500Z.dump --level restore --service db
  berth-backup prune --keep-last 3 --keep-daily 7 --dry-run
  berth-backup restore .berth/backups/shop-shop-20261122T031500Z.dump --service db

  # Into another database than the backup's: the URL's (or --database) is the target
  berth-backup restore .berth/backups/shop-shop-20261122T031500Z.dump \
      --url postgres://app@10.0.0.5:5432/shop_check --password-file /etc/berth/pgpass --yes

Restore builds the copy beside the live database (<db>_berth_restore_<UTC time>),
compares its row counts with the manifest, and only then swaps the names; the replaced
database stays as <db>_before_<UTC time> (--keep-previous, default 1). A failed check
drops the copy and leaves the live database as it was (exit 5). Volumes alike.

Files: <dir>/<project>-<database|volume>-<UTC time>[-<tag>].dump|.tar.gz[.age] (0600, in a
0700 directory), each with a manifest <file>.json written last; a file without its
manifest is not a backup.

Exit status: 0 done; 5 backup, verification or restore failed (no file that could pass
for a backup is left); 64 usage error (also: restore without --yes and no terminal);
65 bad document on stdin; 75 another backup of the same target held the lock past
--lock-wait; a failure already in the document passes through with its code.";

/// Verified PostgreSQL and volume backups: streamed to a temporary file, fsynced,
/// renamed, verified (the whole archive read, or restored into a scratch database and
/// compared), described by a manifest written last; GFS rotation; restore.
#[derive(Debug, Parser)]
#[command(name = "berth-backup", version, after_long_help = EXAMPLES, after_help = "See --help for examples and exit codes.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Back up a PostgreSQL database (custom format) as the pipeline stage `backup`
    Pg(PgCmd),
    /// Back up a Docker volume (tar.gz from a read-only helper container) as the stage `backup`
    Volume(VolumeCmd),
    /// List the backups in the backup directory
    List(ListCmd),
    /// Check a backup: its checksum, then read it whole (or restore it into scratch)
    Verify(VerifyCmd),
    /// Restore a backup: built beside the live database or volume, verified, then put in
    /// its place; the replaced one is kept (--keep-previous)
    Restore(RestoreCmd),
    /// Apply the --keep rules to every target in the backup directory
    Prune(PruneCmd),
    /// Rehearse a restore: the newest verified backup into a scratch database, row counts
    /// compared with the manifest, the result recorded in the ledger (exit 5 on failure)
    Drill(drill::DrillCmd),
    /// Copy an existing backup off-site (retry a failed copy, or feed a new destination)
    Copy(offsite::CopyCmd),
}

/// Where backups live and how to share them.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Storage")]
pub struct Storage {
    /// The backup directory [default: <state dir>/backups]
    #[arg(long, env = "BERTH_BACKUP_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// How long to wait while another backup or restore of the same target runs (not the
    /// deploy lock: BERTH_LOCK_WAIT, 0s)
    #[arg(long, env = "BERTH_BACKUP_LOCK_WAIT", value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub lock_wait: Duration,

    /// No progress or status lines (for cron); errors and warnings still go to stderr
    #[arg(short, long, env = "BERTH_QUIET")]
    pub quiet: bool,

    /// Bound on the whole command (dump, copy, verification, restore): past it the
    /// running pg_dump/pg_restore/psql/tar is killed and it exits 5
    #[arg(long, env = "BERTH_BACKUP_TIMEOUT", value_name = "DURATION", default_value = "2h", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl Storage {
    pub fn dir(&self, ctx: &Context) -> PathBuf {
        match &self.dir {
            Some(d) if d.is_absolute() => d.clone(),
            Some(d) => std::env::current_dir().unwrap_or_default().join(d),
            None => ctx.state_dir.join("backups"),
        }
    }
}

/// GFS rotation rules (only verified backups count).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Rotation")]
pub struct Keep {
    /// Keep the N newest verified backups
    #[arg(long, env = "BERTH_KEEP_LAST", value_name = "N", default_value = "0")]
    pub keep_last: u32,
    /// Keep the newest verified backup of each of the last N days (UTC)
    #[arg(long, env = "BERTH_KEEP_DAILY", value_name = "N", default_value = "0")]
    pub keep_daily: u32,
    /// Keep the newest verified backup of each of the last N ISO weeks
    #[arg(long, env = "BERTH_KEEP_WEEKLY", value_name = "N", default_value = "0")]
    pub keep_weekly: u32,
    /// Keep the newest verified backup of each of the last N months
    #[arg(
        long,
        env = "BERTH_KEEP_MONTHLY",
        value_name = "N",
        default_value = "0"
    )]
    pub keep_monthly: u32,
}

/// A dead-man monitor for cron jobs.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Monitoring")]
pub struct Monitor {
    /// Ping a healthchecks.io-style check: URL/start, then URL on success or URL/fail
    /// with the error line. Bounded (5 s, one retry); never changes the outcome. The URL
    /// is never printed
    #[arg(long, env = "BERTH_PING_URL", value_name = "URL", value_parser = berth_core::ping::parse_url)]
    pub ping: Option<String>,
}

impl Monitor {
    /// Run `job` between the start ping and the success or failure ping.
    pub fn around(&self, job: impl FnOnce() -> Result<ExitCode>) -> Result<ExitCode> {
        let Some(ping) = berth_core::ping::Ping::new(self.ping.as_deref()) else {
            return job();
        };
        ping.start();
        let res = job();
        match &res {
            Ok(ExitCode::Success) => ping.finish(None),
            Ok(code) => ping.finish(Some(&format!("exit {}", code.code()))),
            Err(e) => ping.finish(Some(&berth_core::exit::one_line(e))),
        }
        res
    }
}

impl Keep {
    pub fn policy(&self) -> Policy {
        Policy {
            last: self.keep_last,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
        }
    }
}

/// What every backup command shares: how far to verify, the guard, encryption, the
/// rotation rules, the dead-man ping, the off-site copies, the backup directory.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// How far to check the new backup before it counts
    #[arg(
        long,
        env = "BERTH_BACKUP_VERIFY",
        value_name = "LEVEL",
        default_value = "read",
        help_heading = "Backup"
    )]
    pub verify: Verification,

    /// Accept a backup under half the size of the last verified one (a database dump:
    /// or with fewer tables)
    #[arg(long, env = "BERTH_ALLOW_SHRINK", help_heading = "Backup")]
    pub allow_shrink: bool,

    #[command(flatten)]
    pub encrypt: crypt::Encrypt,

    #[command(flatten)]
    pub keep: Keep,

    #[command(flatten)]
    pub monitor: Monitor,

    #[command(flatten)]
    pub offsite: offsite::Offsite,

    #[command(flatten)]
    pub storage: Storage,
}

/// The helper container that reads and writes volumes.
#[derive(Debug, Clone, Args)]
pub struct Helper {
    /// The local image for the helper container of volume backups, verification and
    /// restores (needs tar, gzip, sh, find; never pulled)
    #[arg(
        long = "helper-image",
        env = "BERTH_HELPER_IMAGE",
        value_name = "IMAGE",
        default_value = "debian:bookworm-slim"
    )]
    pub image: String,
}

#[derive(Debug, Args)]
pub struct PgCmd {
    #[command(flatten)]
    pub server: Server,

    #[command(flatten)]
    pub backup: BackupArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct VolumeCmd {
    /// The volume: a compose volume name (e.g. db-data) or a docker volume name
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Stop this service during the copy, and start it again whatever happens (repeatable)
    #[arg(long = "stop", value_name = "SERVICE")]
    pub stop: Vec<String>,

    #[command(flatten)]
    pub helper: Helper,

    #[command(flatten)]
    pub backup: BackupArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct ListCmd {
    /// One JSON array of manifests (with `path`) on stdout
    #[arg(long)]
    pub json: bool,

    /// List the copies in an off-site destination instead (restic:REPO or rclone:REMOTE:PATH)
    #[arg(long, value_name = "DEST", value_parser = offsite::Dest::parse)]
    pub remote: Option<offsite::Dest>,

    #[command(flatten)]
    pub restic: offsite::Restic,

    #[command(flatten)]
    pub storage: Storage,

    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckLevel {
    /// Read the whole archive
    Read,
    /// Restore into a scratch database (or volume) and compare
    Restore,
}

#[derive(Debug, Args)]
pub struct VerifyCmd {
    /// The backup file (its manifest beside it is checked and updated)
    #[arg(value_name = "FILE", required_unless_present = "remote")]
    pub file: Option<PathBuf>,

    /// Check an off-site restic repository instead: `restic check --read-data-subset`
    #[arg(long, value_name = "DEST", value_parser = offsite::Dest::parse, conflicts_with = "file")]
    pub remote: Option<offsite::Dest>,

    /// With --remote: how much of the data to download and check (a percentage or n/t)
    #[arg(
        long,
        value_name = "SUBSET",
        default_value = "10%",
        requires = "remote"
    )]
    pub read_data_subset: String,

    #[command(flatten)]
    pub restic: offsite::Restic,

    /// How far to check
    #[arg(long, value_name = "LEVEL", default_value = "read")]
    pub level: CheckLevel,

    #[command(flatten)]
    pub identity: crypt::Identity,

    #[command(flatten)]
    pub server: Server,

    #[command(flatten)]
    pub helper: Helper,

    #[command(flatten)]
    pub storage: Storage,

    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
#[command(mut_arg("database", |a| a.help(
    "The database to restore into [default: the URL's, else the service's POSTGRES_DB, \
     else the one the backup was taken from]"
)))]
pub struct RestoreCmd {
    /// The backup file to restore (with --from: the restic snapshot id, or the file name
    /// in the rclone remote)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Fetch the backup from an off-site copy first (restic:REPO or rclone:REMOTE:PATH);
    /// it lands in the backup directory, its checksum checked, then restores as usual
    #[arg(long, value_name = "DEST", value_parser = offsite::Dest::parse)]
    pub from: Option<offsite::Dest>,

    #[command(flatten)]
    pub restic: offsite::Restic,

    #[command(flatten)]
    pub server: Server,

    #[command(flatten)]
    pub identity: crypt::Identity,

    /// Volume backups: the docker volume to restore into [default: the one backed up]
    #[arg(long, value_name = "NAME")]
    pub volume: Option<String>,

    /// Keep the N newest replaced databases or volumes, named <name>_before_<UTC time>;
    /// older ones are dropped; 0 drops the replaced one once the new one is in place
    #[arg(
        long,
        env = "BERTH_KEEP_PREVIOUS",
        value_name = "N",
        default_value = "1"
    )]
    pub keep_previous: u32,

    /// Volume backups: stop this service during the restore, then start it (repeatable)
    #[arg(long = "stop", value_name = "SERVICE")]
    pub stop: Vec<String>,

    #[command(flatten)]
    pub helper: Helper,

    /// Do not ask: replace the current data (needed without a terminal)
    #[arg(long)]
    pub yes: bool,

    /// Skip the backup of the current data taken before restoring
    #[arg(long)]
    pub no_safety_backup: bool,

    #[command(flatten)]
    pub storage: Storage,

    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct PruneCmd {
    #[command(flatten)]
    pub keep: Keep,

    #[command(flatten)]
    pub storage: Storage,

    #[command(flatten)]
    pub common: CommonArgs,
}

impl Command {
    fn common(&self) -> &CommonArgs {
        match self {
            Command::Pg(c) => &c.common,
            Command::Volume(c) => &c.common,
            Command::List(c) => &c.common,
            Command::Verify(c) => &c.common,
            Command::Restore(c) => &c.common,
            Command::Prune(c) => &c.common,
            Command::Drill(c) => &c.common,
            Command::Copy(c) => &c.common,
        }
    }

    /// Every check a run makes before it touches anything (for `--check-args`, and the
    /// start of each run).
    fn check(&self) -> Result<(), Failure> {
        match self {
            Command::Pg(c) => {
                c.server.check()?;
                if !c.server.given() {
                    return Err(Failure::usage("give --service SERVICE or --url URL"));
                }
                check_encrypt(&c.backup.encrypt, c.backup.verify)?;
            }
            Command::Volume(c) => {
                if c.common.engine == berth_core::swarm::Engine::Swarm {
                    return Err(Failure::usage(VOLUME_ON_SWARM));
                }
                if c.name.trim().is_empty() {
                    return Err(Failure::usage("volume NAME is empty"));
                }
                check_encrypt(&c.backup.encrypt, c.backup.verify)?;
            }
            Command::List(_) => {}
            Command::Verify(c) => {
                c.server.check()?;
                if c.remote.is_none() {
                    match &c.file {
                        None => {
                            return Err(Failure::usage(
                                "give the backup FILE to verify (or --remote DEST)",
                            ))
                        }
                        Some(f) => {
                            must_exist(f)?;
                            crypt::check_identity(f, &c.identity)?;
                        }
                    }
                }
            }
            Command::Restore(c) => {
                c.server.check()?;
                if c.from.is_none() {
                    must_exist(&c.file)?;
                    crypt::check_identity(&c.file, &c.identity)?;
                }
            }
            Command::Copy(c) => must_exist(&c.file)?,
            Command::Drill(c) => {
                c.server.check()?;
                if let Some(f) = &c.file {
                    must_exist(f)?;
                    crypt::check_identity(f, &c.identity)?;
                }
            }
            Command::Prune(c) => {
                if c.keep.policy().is_empty() {
                    return Err(Failure::usage(
                        "give at least one of --keep-last, --keep-daily, --keep-weekly, --keep-monthly",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Why volumes are not backed up or restored on Swarm.
pub(crate) const VOLUME_ON_SWARM: &str = "--engine swarm: volume backups and restores are not supported on Swarm: a volume lives on one node, not with the stack";

fn must_exist(file: &Path) -> Result<(), Failure> {
    if file.is_file() {
        Ok(())
    } else {
        Err(Failure::usage(format!("{}: no such file", file.display())))
    }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    if cli.command.common().check_args {
        return berth_core::cli::checked(|| {
            cli.command.check()?;
            cli.command.common().check()?;
            Ok(())
        });
    }
    // Checked inside the monitor, so that a bad argument pings a failure too.
    let checked = cli.command.check();
    match cli.command {
        Command::Pg(c) => c.backup.monitor.clone().around(|| {
            checked?;
            stage::run_pg(c)
        }),
        Command::Volume(c) => c.backup.monitor.clone().around(|| {
            checked?;
            stage::run_volume(c)
        }),
        Command::List(c) => checked.map_err(Into::into).and_then(|_| list::run(c)),
        Command::Verify(c) => checked.map_err(Into::into).and_then(|_| verify::run(c)),
        Command::Restore(c) => checked.map_err(Into::into).and_then(|_| restore::run(c)),
        Command::Prune(c) => checked.map_err(Into::into).and_then(|_| prune::run(c)),
        Command::Drill(c) => c.monitor.clone().around(|| {
            checked?;
            drill::run(c)
        }),
        Command::Copy(c) => checked
            .map_err(Into::into)
            .and_then(|_| offsite::run_copy(c)),
    }
}

/// `--quiet`, and `--timeout` as the deadline of every child from now on.
pub(crate) fn set_quiet(storage: &Storage) {
    QUIET.store(storage.quiet, Ordering::Relaxed);
    if let Some(at) = Instant::now().checked_add(storage.timeout) {
        berth_core::process::set_deadline(at);
    }
}

/// Check the encryption flags of a backup command before anything runs.
fn check_encrypt(enc: &crypt::Encrypt, verify: Verification) -> Result<(), Failure> {
    if !enc.enabled() {
        return Ok(());
    }
    enc.check()?;
    match &enc.identity.identity_file {
        Some(i) if !i.is_file() => Err(Failure::usage(format!(
            "--identity-file {}: no such file",
            i.display()
        ))),
        None if verify == Verification::Restore => Err(Failure::usage(
            "--verify restore of an encrypted backup needs --identity-file FILE to decrypt it",
        )),
        _ => Ok(()),
    }
}
