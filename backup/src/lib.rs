//! `berth-backup`: PostgreSQL and volume backups that can be trusted — streamed to a
//! `.partial`, fsynced, renamed, verified, described by a manifest written last — GFS
//! rotation that never deletes the backup a release depends on, and restore.

pub mod crypt;
pub mod drill;
pub mod offsite;
pub mod pg;
pub mod progress;
pub mod restore;
pub mod rotate;
pub mod store;
pub mod volume;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use berth_core::cli::{parse_duration, CommonArgs, Context};
use berth_core::process::{quote, Cmd};
use berth_core::stage::{self, Completed, Spec};
use berth_core::{fail, ledger, lock, msg, time, ExitCode, Failure};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};

use crate::pg::{Conn, PgUrl};
use crate::progress::Progress;
use crate::rotate::{Candidate, Decision, Policy};
use crate::store::{Entry, Kind, Manifest, Partial, Target, Verification};

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
fn catch_signals() {
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

    /// How long to wait while another backup or restore of the same target runs
    #[arg(long, env = "BERTH_LOCK_WAIT", value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
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

/// A database named by a flag or the compose file, and by which.
#[derive(Debug, Clone)]
pub struct Named {
    pub db: String,
    /// `--database`, `--url`, or `the POSTGRES_DB of service db`.
    pub by: String,
}

/// Which PostgreSQL server.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Server")]
pub struct Server {
    /// The compose service running PostgreSQL; the clients run inside its container
    #[arg(
        long,
        env = "BERTH_BACKUP_SERVICE",
        value_name = "SERVICE",
        conflicts_with = "url"
    )]
    pub service: Option<String>,

    /// A server URL (postgres://user@host:port/db); the clients run on this host. In a
    /// user or password write / as %2F, @ as %40, % as %25; better, keep the password
    /// out of the URL (--password-file)
    #[arg(long, env = "BERTH_BACKUP_URL", value_name = "URL")]
    pub url: Option<String>,

    /// The database [default: the URL's, else the service's POSTGRES_DB, else its user]
    #[arg(long, env = "BERTH_BACKUP_DATABASE", value_name = "NAME")]
    pub database: Option<String>,

    /// The user, with --service [default: the service's POSTGRES_USER, else postgres]
    #[arg(long, env = "BERTH_BACKUP_USER", value_name = "NAME")]
    pub user: Option<String>,

    /// A file whose first line is the password [default: $PGPASSWORD]; never in argv
    #[arg(long, env = "BERTH_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

impl Server {
    pub fn given(&self) -> bool {
        self.service.is_some() || self.url.is_some()
    }

    fn check(&self) -> Result<(), Failure> {
        if let Some(p) = &self.password_file {
            if !p.is_file() {
                return Err(Failure::usage(format!(
                    "--password-file {}: no such file",
                    p.display()
                )));
            }
        }
        if let Some(u) = &self.url {
            PgUrl::parse(u).map_err(|e| Failure::usage(format!("--url: {e}")))?;
        }
        if self.url.is_some() && self.user.is_some() {
            return Err(Failure::usage(
                "--user goes with --service; put the user in --url",
            ));
        }
        Ok(())
    }

    /// Connect; with the database the flags name and what named it: `--database`, else
    /// the URL's, else the service's `POSTGRES_DB`.
    pub fn connect_named(&self, ctx: &Context) -> Result<(Conn, Option<Named>)> {
        let password = match &self.password_file {
            Some(p) => Some(pg::read_password_file(p)?),
            None => std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()),
        };
        let named = |db: Option<String>, by: String| db.map(|db| Named { db, by });
        let flag = named(self.database.clone(), "--database".into());
        if let Some(svc) = &self.service {
            let (conn, pg_db) = Conn::service(ctx.compose(), svc, self.user.as_deref(), password)?;
            let by = format!("the POSTGRES_DB of service {svc}");
            Ok((conn, flag.or_else(|| named(pg_db, by))))
        } else if let Some(u) = &self.url {
            let url = PgUrl::parse(u).map_err(|e| Failure::usage(format!("--url: {e}")))?;
            let from_url = named(url.database.clone(), "--url".into());
            Ok((Conn::url(url, password), flag.or(from_url)))
        } else {
            Err(Failure::usage("give --service SERVICE or --url URL").into())
        }
    }

    /// Connect: the server, and the database to use (as named, else the service's user,
    /// as PostgreSQL's own tools do).
    pub fn connect(&self, ctx: &Context) -> Result<(Conn, String)> {
        let (conn, named) = self.connect_named(ctx)?;
        let db = named
            .map(|n| n.db)
            .or_else(|| conn.user_db())
            .ok_or_else(|| Failure::usage("--url has no database: add /NAME or --database"))?;
        Ok((conn, db))
    }

    /// The flags that reach this server again (for printed restore commands).
    pub fn flags(&self) -> String {
        let mut s = String::new();
        if let Some(v) = &self.service {
            s.push_str(&format!(" --service {}", quote(v)));
        }
        if let Some(v) = &self.url {
            let shown = PgUrl::parse(v).map(|u| u.display()).unwrap_or_default();
            s.push_str(&format!(" --url {}", quote(&shown)));
        }
        if let Some(v) = &self.user {
            s.push_str(&format!(" --user {}", quote(v)));
        }
        s
    }
}

#[derive(Debug, Args)]
pub struct PgCmd {
    #[command(flatten)]
    pub server: Server,

    /// How far to check the new backup before it counts
    #[arg(
        long,
        env = "BERTH_BACKUP_VERIFY",
        value_name = "LEVEL",
        default_value = "read",
        help_heading = "Backup"
    )]
    pub verify: Verification,

    /// Accept a dump under half the size of the last verified one, or with fewer tables
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

    /// The local image for the helper container (needs tar, gzip, sh, find; never pulled)
    #[arg(
        long,
        env = "BERTH_HELPER_IMAGE",
        value_name = "IMAGE",
        default_value = "debian:bookworm-slim"
    )]
    pub helper_image: String,

    /// How far to check the new backup before it counts
    #[arg(
        long,
        env = "BERTH_BACKUP_VERIFY",
        value_name = "LEVEL",
        default_value = "read",
        help_heading = "Backup"
    )]
    pub verify: Verification,

    /// Accept an archive under half the size of the last verified one
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

    /// The local image for the helper container (volume backups, --level restore)
    #[arg(
        long,
        env = "BERTH_HELPER_IMAGE",
        value_name = "IMAGE",
        default_value = "debian:bookworm-slim"
    )]
    pub helper_image: String,

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

    /// The local image for the helper container (volume backups)
    #[arg(
        long,
        env = "BERTH_HELPER_IMAGE",
        value_name = "IMAGE",
        default_value = "debian:bookworm-slim"
    )]
    pub helper_image: String,

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
                check_encrypt(&c.encrypt, c.verify)?;
            }
            Command::Volume(c) => {
                if c.name.trim().is_empty() {
                    return Err(Failure::usage("volume NAME is empty"));
                }
                check_encrypt(&c.encrypt, c.verify)?;
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
        Command::Pg(c) => c.monitor.clone().around(|| {
            checked?;
            run_pg(c)
        }),
        Command::Volume(c) => c.monitor.clone().around(|| {
            checked?;
            run_volume(c)
        }),
        Command::List(c) => checked.map_err(Into::into).and_then(|_| run_list(c)),
        Command::Verify(c) => checked.map_err(Into::into).and_then(|_| run_verify(c)),
        Command::Restore(c) => checked.map_err(Into::into).and_then(|_| restore::run(c)),
        Command::Prune(c) => checked.map_err(Into::into).and_then(|_| run_prune(c)),
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

const SPEC: Spec<'static> = Spec::new("backup", ExitCode::Backup);

/// What a backup run needs besides its source.
struct Job {
    dir: PathBuf,
    target: Target,
    verify: Verification,
    allow_shrink: bool,
    tag: Option<String>,
    deploy_id: Option<String>,
    /// Encrypt with age (None: a plain archive).
    encrypt: Option<crypt::Encrypt>,
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
    fn identity_flag(&self) -> String {
        match &self.encrypt {
            None => String::new(),
            Some(e) => match &e.identity.identity_file {
                Some(i) => format!(" --identity-file {}", quote(&i.to_string_lossy())),
                None => " --identity-file KEY_FILE".into(),
            },
        }
    }

    /// `encryption` and `recipients` when encrypted.
    fn manifest_extra(&self) -> Map<String, Value> {
        self.encrypt
            .as_ref()
            .map(crypt::Encrypt::manifest_fields)
            .unwrap_or_default()
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
    ) -> Result<(store::Streamed, Option<T>)> {
        match &self.encrypt {
            Some(e) => {
                stream_encrypted(cmd, e, partial, label, self.tee_read().then_some(verifier))
            }
            None => Ok((stream_cmd(cmd, partial, label)?, None)),
        }
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

/// Run `cmd`, streaming its stdout into the partial file.
fn stream_cmd(cmd: &Cmd, partial: &mut Partial, label: &str) -> Result<store::Streamed> {
    let (handle, watch) = cmd
        .reader(|e| e.stderr_capture())
        .map_err(|e| fail!(Backup, "{label}: {e}"))?;
    let mut progress = Progress::auto(label);
    let res = {
        let mut r = &handle;
        partial.stream(&mut r, &mut progress)
    };
    let streamed = match res {
        Ok(s) => s,
        Err(e) => {
            watch.terminate();
            let _ = handle.kill();
            return Err(watch
                .finished()
                .err()
                .map_or(e, |t| fail!(Backup, "{label}: {t}")));
        }
    };
    watch
        .finished()
        .map_err(|e| fail!(Backup, "{label}: {e}"))?;
    producer_done(&handle, label).map(|_| streamed)
}

/// A read verifier fed the plaintext stream while it is encrypted.
type Tee<'a, T> = Option<&'a (dyn Fn(&crypt::Source) -> Result<T> + Sync)>;

/// Run `cmd`, its stdout through `age` into the partial file, and at the same time into
/// `tee` (a verifier on its own thread). `head` is the plaintext's; bytes and sha256 are
/// the encrypted file's.
fn stream_encrypted<T: Send>(
    cmd: &Cmd,
    enc: &crypt::Encrypt,
    partial: &mut Partial,
    label: &str,
    tee: Tee<'_, T>,
) -> Result<(store::Streamed, Option<T>)> {
    use std::io::{Read, Write};
    let (age_in, mut to_age) = std::io::pipe()?;
    let file = partial.file()?;
    let age_cmd = enc.cmd();
    let (age, age_watch) = age_cmd
        .start(|e| {
            e.stdin_file(age_in)
                .stdout_file(file)
                .stderr_capture()
                .unchecked()
        })
        .map_err(|e| fail!(Backup, "{e}"))?;
    let (handle, watch) = match cmd.reader(|e| e.stderr_capture()) {
        Ok(h) => h,
        Err(e) => {
            age_watch.terminate();
            let _ = age.kill();
            return Err(fail!(Backup, "{label}: {e}"));
        }
    };
    let mut progress = Progress::auto(label);
    let (res, teed) = std::thread::scope(|scope| {
        let (mut to_tee, verifier) = match tee {
            Some(f) => {
                let (r, w) = std::io::pipe()?;
                let src = crypt::Source::Pipe(std::sync::Mutex::new(Some(r)));
                (Some(w), Some(scope.spawn(move || f(&src))))
            }
            None => (None, None),
        };
        let mut buf = vec![0u8; 256 * 1024];
        let mut head = Vec::new();
        let mut bytes = 0u64;
        let res = (|| -> Result<Vec<u8>> {
            loop {
                check_interrupted()?;
                let n = match (&handle).read(&mut buf) {
                    Ok(0) => return Ok(head),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(anyhow::Error::new(e).context("reading the stream")),
                };
                if head.len() < 16 {
                    head.extend_from_slice(&buf[..n.min(16 - head.len())]);
                }
                to_age
                    .write_all(&buf[..n])
                    .map_err(|e| fail!(Backup, "writing to age failed: {e}"))?;
                // A verifier that stopped reading has failed: its own error tells why.
                if to_tee
                    .as_mut()
                    .is_some_and(|w| w.write_all(&buf[..n]).is_err())
                {
                    to_tee = None;
                }
                bytes += n as u64;
                progress.update(bytes);
            }
        })();
        drop(to_age);
        drop(to_tee);
        if res.is_err() {
            watch.terminate();
            let _ = handle.kill();
        }
        let teed = verifier.map(|v| {
            v.join()
                .unwrap_or_else(|_| Err(fail!(Backup, "the verifier panicked")))
        });
        Ok::<_, anyhow::Error>((res, teed))
    })?;
    let timed_out = watch.finished();
    let head = res?;
    timed_out.map_err(|e| fail!(Backup, "{label}: {e}"))?;
    producer_done(&handle, label)?;
    let out = age.wait().map_err(|e| fail!(Backup, "age: {e}"))?;
    age_watch.finished().map_err(|e| fail!(Backup, "{e}"))?;
    if !out.status.success() {
        return Err(fail!(
            Backup,
            "age failed: {}",
            crypt::age_error(&String::from_utf8_lossy(&out.stderr))
        ));
    }
    let teed = teed.transpose()?;
    let streamed = partial.seal(head)?;
    progress.finish(streamed.bytes);
    Ok((streamed, teed))
}

/// The producer's exit status, as an error that says why.
fn producer_done(handle: &duct::ReaderHandle, label: &str) -> Result<()> {
    match handle.try_wait() {
        Ok(Some(out)) if out.status.success() => Ok(()),
        Ok(Some(out)) => {
            use std::os::unix::process::ExitStatusExt;
            let how = match (out.status.code(), out.status.signal()) {
                (Some(c), _) => format!("exited with {c}"),
                (None, Some(s)) => format!("was killed by signal {s}"),
                _ => "failed".into(),
            };
            let why = pg::pg_error(&how, &String::from_utf8_lossy(&out.stderr));
            Err(fail!(Backup, "{label} failed ({how}): {why}"))
        }
        Ok(None) => Err(fail!(
            Backup,
            "{label}: the stream ended but the process did not"
        )),
        Err(e) => Err(fail!(Backup, "{label}: {e}")),
    }
}

/// Create the partial file for a new backup; a name taken this second waits for the next.
fn new_partial(job: &Job) -> Result<(Partial, jiff::Timestamp)> {
    for attempt in 0..3 {
        let at = time::now();
        let mut name = job.target.file_name(at, job.tag.as_deref());
        if job.encrypt.is_some() {
            name.push_str(crypt::SUFFIX);
        }
        if !job.dir.join(&name).exists() && !job.dir.join(format!("{name}.partial")).exists() {
            return Ok((Partial::create(&job.dir, &name)?, at));
        }
        if attempt < 2 {
            std::thread::sleep(Duration::from_millis(1000));
        }
    }
    Err(fail!(
        Backup,
        "could not find a free file name in {}",
        job.dir.display()
    ))
}

fn begin(job: &Job) -> Result<()> {
    store::prepare_dir(&job.dir)?;
    for p in store::sweep_partials(&job.dir, &job.target) {
        msg::warn(format!(
            "removed {}, left by an interrupted backup",
            p.display()
        ));
    }
    Ok(())
}

/// Back up a database (the target's lock held by the caller).
fn backup_pg(conn: &Conn, db: &str, job: &Job) -> Result<Entry> {
    begin(job)?;
    let clock = Instant::now();
    let (mut partial, created) = new_partial(job)?;
    say(format!(
        "backing up database {db} ({}) to {}",
        conn.source(db),
        partial.final_path.display()
    ));
    let mut snap = pg::Snapshot::open(conn, db)?;
    let facts = snap.facts(job.verify == Verification::Restore)?;
    let dump = pg::dump_cmd(conn, db, &snap.id);
    let read = |src: &crypt::Source| conn.verify_read(src);
    let (streamed, teed) = job.produce(&dump, &mut partial, &format!("pg_dump of {db}"), &read)?;
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
    let mut verified_at = None;
    match job.verify {
        Verification::None | Verification::Failed => {}
        Verification::Read => {
            say("verifying: reading the whole archive (pg_restore -f /dev/null)");
            if teed.is_none() {
                conn.verify_read(&job.source(&partial.path))?;
            }
            verified_at = Some(time::now_rfc3339());
        }
        Verification::Restore => {
            say("verifying: restoring into a scratch database and comparing row counts");
            let got = conn.restore_counts(&job.source(&partial.path))?;
            let want = facts.counts.clone().unwrap_or_default();
            let diff = pg::compare_counts(&want, &got);
            if !diff.is_empty() {
                return Err(fail!(
                    Backup,
                    "restore verification failed: {}",
                    diff.join("; ")
                ));
            }
            verified_at = Some(time::now_rfc3339());
        }
    }
    let path = partial.commit()?;
    let manifest = Manifest {
        format: store::FORMAT.into(),
        kind: Kind::Pg,
        file: file_name(&path),
        bytes: streamed.bytes,
        sha256: streamed.sha256,
        created_at: time::rfc3339(created),
        project: job.target.project.clone(),
        target: db.to_string(),
        source: conn.source(db),
        volume: None,
        server_version: Some(facts.server_version),
        verification: job.verify,
        verified_at,
        verification_error: None,
        tables: Some(tables),
        entries: None,
        row_counts: facts.counts,
        deploy_id: job.deploy_id.clone(),
        tag: job.tag.clone(),
        duration_ms: time::millis(clock.elapsed()),
        extra: job.manifest_extra(),
    };
    if let Err(e) = manifest.write(&job.dir) {
        let _ = std::fs::remove_file(&path);
        return Err(fail!(Backup, "{e:#}"));
    }
    say(format!(
        "backup of {db} done: {} ({}), verification {}, {:.1}s",
        path.display(),
        store::human_bytes(manifest.bytes),
        manifest.verification.as_str(),
        manifest.duration_ms as f64 / 1000.0
    ));
    Ok(Entry { path, manifest })
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string()
}

/// Back up a volume (the target's lock held by the caller).
fn backup_volume(
    ctx: &Context,
    real: &str,
    stop: &[String],
    image: &str,
    job: &Job,
) -> Result<Entry> {
    begin(job)?;
    let clock = Instant::now();
    let (mut partial, created) = new_partial(job)?;
    say(format!(
        "backing up volume {real} to {}",
        partial.final_path.display()
    ));
    let streamed = {
        let compose = ctx.compose();
        let mut stopped = volume::Stopped::stop(&compose, stop)?;
        let helper = volume::helper_name("tar");
        let cmd = volume::tar_cmd(&ctx.project, &helper, image, real);
        let res = job.produce(
            &cmd,
            &mut partial,
            &format!("tar of volume {real}"),
            &volume::read_archive,
        );
        if res.is_err() {
            volume::remove_helper(&helper);
        }
        let restarted = stopped.restart();
        let s = res?;
        restarted?;
        s
    };
    let (streamed, teed) = streamed;
    if streamed.bytes == 0 || !streamed.head.starts_with(&[0x1f, 0x8b]) {
        return Err(fail!(
            Backup,
            "the tar of volume {real} is not a gzip archive"
        ));
    }
    guard(job, streamed.bytes, None)?;
    let mut entries = None;
    let mut verified_at = None;
    match job.verify {
        Verification::None | Verification::Failed => {}
        Verification::Read => {
            say("verifying: reading the whole archive");
            entries = match teed {
                Some(n) => Some(n),
                None => Some(volume::read_archive(&job.source(&partial.path))?),
            };
            verified_at = Some(time::now_rfc3339());
        }
        Verification::Restore => {
            say("verifying: reading the archive, then extracting it into a scratch volume");
            let src = job.source(&partial.path);
            let n = volume::read_archive(&src)?;
            let got = volume::restore_count(&ctx.project, image, &src)?;
            if got != n {
                return Err(fail!(
                    Backup,
                    "restore verification failed: the archive holds {n} entries, {got} landed"
                ));
            }
            entries = Some(n);
            verified_at = Some(time::now_rfc3339());
        }
    }
    let path = partial.commit()?;
    let manifest = Manifest {
        format: store::FORMAT.into(),
        kind: Kind::Volume,
        file: file_name(&path),
        bytes: streamed.bytes,
        sha256: streamed.sha256,
        created_at: time::rfc3339(created),
        project: job.target.project.clone(),
        target: job.target.name.clone(),
        source: format!("docker volume {real}"),
        volume: Some(real.to_string()),
        server_version: None,
        verification: job.verify,
        verified_at,
        verification_error: None,
        tables: None,
        entries,
        row_counts: None,
        deploy_id: job.deploy_id.clone(),
        tag: job.tag.clone(),
        duration_ms: time::millis(clock.elapsed()),
        extra: job.manifest_extra(),
    };
    if let Err(e) = manifest.write(&job.dir) {
        let _ = std::fs::remove_file(&path);
        return Err(fail!(Backup, "{e:#}"));
    }
    say(format!(
        "backup of volume {real} done: {} ({}), verification {}",
        path.display(),
        store::human_bytes(manifest.bytes),
        manifest.verification.as_str()
    ));
    Ok(Entry { path, manifest })
}

/// File names pinned by the ledger: the backups recorded by the last good release. An
/// error when the ledger cannot be read: then no one knows what is pinned.
fn pinned(state_dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let releases = ledger::read(state_dir)?;
    if let Some(good) = ledger::last_good(&releases, None) {
        for s in good.stages.iter().filter(|s| s.stage.starts_with("backup")) {
            if let Some(f) = s.detail.get("file").and_then(Value::as_str) {
                let name = file_name(Path::new(f));
                out.insert(
                    name,
                    format!(
                        "pinned: taken before the last good release {}",
                        good.deploy_id
                    ),
                );
            }
        }
    }
    Ok(out)
}

/// Apply the policy to one target's backups (lock held by the caller).
fn rotate_target(
    dir: &Path,
    state_dir: &Path,
    target: &Target,
    policy: &Policy,
    dry_run: bool,
) -> Result<Vec<(Decision, PathBuf)>> {
    let scan = store::scan(dir)?;
    // Never delete on a ledger we cannot read: the last good release's backup may be
    // among the candidates.
    let (pins, ledger_ok) = match pinned(state_dir) {
        Ok(p) => (p, true),
        Err(e) => {
            msg::warn(format!(
                "{e:#}: rotation deletes nothing until the ledger is readable"
            ));
            (BTreeMap::new(), false)
        }
    };
    let entries = scan.of(target);
    let cands: Vec<Candidate> = entries
        .iter()
        .map(|e| Candidate {
            name: e.manifest.file.clone(),
            created: e.manifest.created(),
            verified: e.manifest.verification.verified(),
            pinned: pins.get(&e.manifest.file).cloned(),
        })
        .collect();
    let mut decisions = rotate::plan(&cands, policy);
    if !ledger_ok {
        for d in decisions.iter_mut().filter(|d| !d.keep) {
            d.keep = true;
            d.reasons.push("kept: the ledger cannot be read".into());
        }
    }
    let mut out = Vec::new();
    for d in decisions {
        let path = dir.join(&d.name);
        if !d.keep && !dry_run {
            store::remove(&path)?;
        }
        out.push((d, path));
    }
    Ok(out)
}

fn rotation_detail(done: &[(Decision, PathBuf)]) -> Value {
    json!({
        "kept": done.iter().filter(|d| d.0.keep).count(),
        "deleted": done.iter().filter(|d| !d.0.keep).map(|d| d.0.name.clone()).collect::<Vec<_>>(),
    })
}

fn fill_detail(detail: &mut Map<String, Value>, e: &Entry, restore_command: String) {
    let m = &e.manifest;
    detail.insert("kind".into(), json!(m.kind));
    detail.insert("target".into(), json!(m.target));
    detail.insert("file".into(), json!(e.path.display().to_string()));
    detail.insert(
        "manifest".into(),
        json!(store::manifest_path(&e.path).display().to_string()),
    );
    detail.insert("bytes".into(), json!(m.bytes));
    detail.insert("sha256".into(), json!(m.sha256));
    detail.insert("verification".into(), json!(m.verification));
    detail.insert("duration_ms".into(), json!(m.duration_ms));
    if let Some(v) = &m.server_version {
        detail.insert("server_version".into(), json!(v));
    }
    if let Some(t) = m.tables {
        detail.insert("tables".into(), json!(t));
    }
    detail.insert("restore_command".into(), json!(restore_command));
}

fn project_flags(ctx: &Context) -> String {
    ctx.project_args()
        .iter()
        .map(|w| format!(" {}", quote(w)))
        .collect()
}

fn after_backup(ctx: &Context, job: &Job, policy: &Policy, detail: &mut Map<String, Value>) {
    if policy.is_empty() {
        return;
    }
    if !job.verify.verified() {
        say("rotation skipped: it runs only after a verified backup");
        return;
    }
    match rotate_target(&job.dir, &ctx.state_dir, &job.target, policy, false) {
        Ok(done) => {
            for (d, p) in done.iter().filter(|d| !d.0.keep) {
                say(format!(
                    "rotation deleted {} ({})",
                    p.display(),
                    d.reasons.join("; ")
                ));
            }
            detail.insert("rotation".into(), rotation_detail(&done));
        }
        Err(e) => msg::warn(format!("rotation failed: {e:#}")),
    }
}

/// Copy a verified backup off-site (see [`offsite`]); an unverified one stays local.
fn copy_offsite(
    ctx: &Context,
    off: &offsite::Offsite,
    entry: &Entry,
    job: &Job,
    policy: &Policy,
    detail: &mut Map<String, Value>,
) -> Result<()> {
    if off.copy_to.is_empty() {
        return Ok(());
    }
    if !job.verify.verified() {
        msg::warn("off-site copy skipped: only verified backups leave the machine (--verify read or restore)");
        return Ok(());
    }
    let pins = pinned(&ctx.state_dir).unwrap_or_default();
    off.copy(entry, &job.target, policy, &pins, detail)
}

fn run_pg(c: PgCmd) -> Result<ExitCode> {
    set_quiet(&c.storage);
    let input = stage::load(&c.common)?;
    let deploy_id = input.piped.then(|| input.doc.deploy_id.clone());
    stage::run(SPEC, input, |ctx, _doc, detail| {
        let (conn, db) = c.server.connect(ctx)?;
        let target = Target {
            kind: Kind::Pg,
            project: ctx.project.clone(),
            name: db.clone(),
        };
        let job = Job {
            dir: c.storage.dir(ctx),
            target,
            verify: c.verify,
            allow_shrink: c.allow_shrink,
            tag: ctx.tag.clone(),
            deploy_id: deploy_id.clone(),
            encrypt: c.encrypt.enabled().then(|| c.encrypt.clone()),
        };
        if ctx.dry_run {
            msg::info(format!(
                "would run: {} > {}",
                pg::dump_cmd(&conn, &db, "SNAPSHOT").display(),
                job.dir
                    .join(job.target.file_name(time::now(), job.tag.as_deref()))
                    .display()
            ));
            return Ok(Completed::Skipped("dry run".into()));
        }
        let _lock = lock::acquire(
            &ctx.state_dir,
            &job.target.lock_name(),
            c.storage.lock_wait,
            deploy_id.as_deref(),
        )?;
        catch_signals();
        let entry = backup_pg(&conn, &db, &job)?;
        let restore = format!(
            "berth-backup restore {}{}{}{} --database {}",
            quote(&entry.path.to_string_lossy()),
            c.server.flags(),
            project_flags(ctx),
            job.identity_flag(),
            quote(&db)
        );
        fill_detail(detail, &entry, restore);
        detail.insert("source".into(), json!(entry.manifest.source));
        if let Some(svc) = &c.server.service {
            detail.insert("service".into(), json!(svc));
        }
        after_backup(ctx, &job, &c.keep.policy(), detail);
        copy_offsite(ctx, &c.offsite, &entry, &job, &c.keep.policy(), detail)?;
        Ok(Completed::Ok)
    })
}

fn run_volume(c: VolumeCmd) -> Result<ExitCode> {
    set_quiet(&c.storage);
    let input = stage::load(&c.common)?;
    let deploy_id = input.piped.then(|| input.doc.deploy_id.clone());
    stage::run(SPEC, input, |ctx, _doc, detail| {
        let real = volume::resolve(&ctx.compose(), &c.name)?;
        let job = Job {
            dir: c.storage.dir(ctx),
            target: Target {
                kind: Kind::Volume,
                project: ctx.project.clone(),
                name: c.name.clone(),
            },
            verify: c.verify,
            allow_shrink: c.allow_shrink,
            tag: ctx.tag.clone(),
            deploy_id: deploy_id.clone(),
            encrypt: c.encrypt.enabled().then(|| c.encrypt.clone()),
        };
        if ctx.dry_run {
            msg::info(format!(
                "would run: {}",
                volume::tar_cmd(&ctx.project, "NAME", &c.helper_image, &real).display()
            ));
            return Ok(Completed::Skipped("dry run".into()));
        }
        let _lock = lock::acquire(
            &ctx.state_dir,
            &job.target.lock_name(),
            c.storage.lock_wait,
            deploy_id.as_deref(),
        )?;
        catch_signals();
        let entry = backup_volume(ctx, &real, &c.stop, &c.helper_image, &job)?;
        let mut restore = format!(
            "berth-backup restore {} --helper-image {}",
            quote(&entry.path.to_string_lossy()),
            quote(&c.helper_image)
        );
        for s in &c.stop {
            restore.push_str(&format!(" --stop {}", quote(s)));
        }
        restore.push_str(&project_flags(ctx));
        restore.push_str(&job.identity_flag());
        fill_detail(detail, &entry, restore);
        detail.insert("volume".into(), json!(real));
        after_backup(ctx, &job, &c.keep.policy(), detail);
        copy_offsite(ctx, &c.offsite, &entry, &job, &c.keep.policy(), detail)?;
        Ok(Completed::Ok)
    })
}

fn age(created: jiff::Timestamp) -> String {
    let secs = (time::now().as_second() - created.as_second()).max(0) as u64;
    let d = Duration::from_secs(secs);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86399 => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{}h", d.as_secs() / 86400, (d.as_secs() % 86400) / 3600),
    }
}

fn run_list(c: ListCmd) -> Result<ExitCode> {
    set_quiet(&c.storage);
    if let Some(dest) = &c.remote {
        let text = offsite::list(dest, &c.restic, c.json)?;
        use std::io::Write;
        std::io::stdout().lock().write_all(text.as_bytes())?;
        return Ok(ExitCode::Success);
    }
    let ctx = c.common.resolve()?;
    let dir = c.storage.dir(&ctx);
    let scan = store::scan(&dir)?;
    let pins = pinned(&ctx.state_dir).unwrap_or_else(|e| {
        msg::warn(format!("{e:#}: pins unknown"));
        BTreeMap::new()
    });
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let res = if c.json {
        let arr: Vec<Value> = scan
            .entries
            .iter()
            .map(|e| {
                let mut v = serde_json::to_value(&e.manifest).unwrap_or(Value::Null);
                if let Some(o) = v.as_object_mut() {
                    o.insert("path".into(), json!(e.path.display().to_string()));
                    o.insert("pinned".into(), json!(pins.contains_key(&e.manifest.file)));
                }
                v
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string(&arr)?)
    } else {
        let mut text = String::new();
        if scan.entries.is_empty() {
            text.push_str(&format!("no backups in {}\n", dir.display()));
        } else {
            text.push_str(&format!(
                "{:<52} {:<6} {:<10} {:>10} {:>8}  {}\n",
                "FILE", "KIND", "VERIFIED", "SIZE", "AGE", "NOTE"
            ));
        }
        for e in scan.entries.iter().rev() {
            let m = &e.manifest;
            text.push_str(&format!(
                "{:<52} {:<6} {:<10} {:>10} {:>8}  {}\n",
                m.file,
                m.kind.as_str(),
                m.verification.as_str(),
                store::human_bytes(m.bytes),
                age(m.created()),
                if pins.contains_key(&m.file) {
                    "pinned (last good release)"
                } else {
                    ""
                }
            ));
        }
        for p in &scan.incomplete {
            text.push_str(&format!(
                "{}  incomplete: no manifest, not a backup\n",
                file_name(p)
            ));
        }
        for p in &scan.partials {
            text.push_str(&format!(
                "{}  partial: being written, or left by a crash\n",
                file_name(p)
            ));
        }
        write!(out, "{text}")
    };
    match res {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    Ok(ExitCode::Success)
}

/// Checksum of a file against its manifest.
fn check_checksum(file: &Path, m: &Manifest) -> Result<()> {
    let (bytes, sha) = store::sha256_file(file)?;
    if bytes != m.bytes || sha != m.sha256 {
        return Err(fail!(
            Backup,
            "{} does not match its manifest: {bytes} bytes, sha256 {sha}; the manifest says {} bytes, sha256 {}",
            file.display(),
            m.bytes,
            m.sha256
        ));
    }
    Ok(())
}

fn kind_of_file(file: &Path, m: Option<&Manifest>) -> Result<Kind> {
    if let Some(m) = m {
        return Ok(m.kind);
    }
    let n = file_name(file);
    let n = n.strip_suffix(crypt::SUFFIX).unwrap_or(&n);
    if n.ends_with(".tar.gz") || n.ends_with(".tgz") {
        Ok(Kind::Volume)
    } else {
        Ok(Kind::Pg)
    }
}

pub(crate) fn run_verify(c: VerifyCmd) -> Result<ExitCode> {
    set_quiet(&c.storage);
    if let Some(dest) = &c.remote {
        offsite::verify(dest, &c.restic, &c.read_data_subset)?;
        return Ok(ExitCode::Success);
    }
    let Some(file) = c.file.clone() else {
        return Err(Failure::usage("give the backup FILE to verify (or --remote DEST)").into());
    };
    c.server.check()?;
    let ctx = c.common.resolve()?;
    if !file.is_file() {
        return Err(Failure::usage(format!("{}: no such file", file.display())).into());
    }
    let manifest = Manifest::read_for(&file)?;
    let kind = kind_of_file(&file, manifest.as_ref())?;
    let src = crypt::Source::for_file(&file, manifest.as_ref(), &c.identity)?;
    if kind == Kind::Pg && c.level == CheckLevel::Restore && !c.server.given() {
        return Err(Failure::usage("--level restore needs a server: --service or --url").into());
    }
    let res = (|| -> Result<Option<u64>> {
        match &manifest {
            Some(m) => {
                check_checksum(&file, m)?;
                say(format!("checksum ok: sha256 {}", m.sha256));
            }
            None => msg::warn(format!(
                "{} has no manifest: checking the archive only",
                file.display()
            )),
        }
        match (kind, c.level) {
            (Kind::Pg, CheckLevel::Read) => {
                if c.server.given() {
                    let (conn, _) = c.server.connect_named(&ctx)?;
                    conn.verify_read(&src)?;
                } else {
                    let cmd = Cmd::new("pg_restore").args(["--exit-on-error", "-f", "/dev/null"]);
                    pg::feed(cmd.stage_timeout(), &src, "read verification failed (pg_restore on this host; else pass --service or --url)")?;
                }
                say("read verification ok: the whole archive reads");
                Ok(None)
            }
            (Kind::Pg, CheckLevel::Restore) => {
                let (conn, _) = c.server.connect_named(&ctx)?;
                let got = conn.restore_counts(&src)?;
                if let Some(want) = manifest.as_ref().and_then(|m| m.row_counts.as_ref()) {
                    let diff = pg::compare_counts(want, &got);
                    if !diff.is_empty() {
                        return Err(fail!(
                            Backup,
                            "restore verification failed: {}",
                            diff.join("; ")
                        ));
                    }
                } else if let Some(t) = manifest.as_ref().and_then(|m| m.tables) {
                    if got.len() as u64 != t {
                        return Err(fail!(
                            Backup,
                            "restore verification failed: {} tables restored, the manifest says {t}",
                            got.len()
                        ));
                    }
                }
                say(format!(
                    "restore verification ok: {} tables, {} rows",
                    got.len(),
                    got.values().sum::<u64>()
                ));
                Ok(None)
            }
            (Kind::Volume, level) => {
                let n = volume::read_archive(&src)?;
                if level == CheckLevel::Restore {
                    let got = volume::restore_count(&ctx.project, &c.helper_image, &src)?;
                    if got != n {
                        return Err(fail!(
                            Backup,
                            "restore verification failed: the archive holds {n} entries, {got} landed"
                        ));
                    }
                }
                say(format!("verification ok: {n} entries"));
                Ok(Some(n))
            }
        }
    })();
    if let Some(mut m) = manifest {
        match &res {
            Ok(entries) => {
                let reached = match c.level {
                    CheckLevel::Read => Verification::Read,
                    CheckLevel::Restore => Verification::Restore,
                };
                if !(m.verification == Verification::Restore && reached == Verification::Read) {
                    m.verification = reached;
                }
                m.verified_at = Some(time::now_rfc3339());
                m.verification_error = None;
                if entries.is_some() {
                    m.entries = *entries;
                }
            }
            Err(e) => {
                m.verification = Verification::Failed;
                m.verification_error = Some(berth_core::exit::one_line(e));
                m.verified_at = Some(time::now_rfc3339());
            }
        }
        let dir = file.parent().unwrap_or(Path::new("."));
        if let Err(e) = m.write(dir) {
            msg::warn(format!("could not update the manifest: {e:#}"));
        }
    }
    res.map(|_| ExitCode::Success)
}

fn run_prune(c: PruneCmd) -> Result<ExitCode> {
    set_quiet(&c.storage);
    let ctx = c.common.resolve()?;
    let policy = c.keep.policy();
    let dir = c.storage.dir(&ctx);
    let scan = store::scan(&dir)?;
    let mut targets: Vec<Target> = scan.entries.iter().map(|e| e.manifest.target()).collect();
    targets.sort();
    targets.dedup();
    let mut text = String::new();
    let verb = |keep: bool| match (keep, ctx.dry_run) {
        (true, _) => "keep",
        (false, true) => "would delete",
        (false, false) => "deleted",
    };
    for t in &targets {
        let _lock = lock::acquire(&ctx.state_dir, &t.lock_name(), c.storage.lock_wait, None)?;
        text.push_str(&format!("{}:\n", t.describe()));
        for (d, _) in rotate_target(&dir, &ctx.state_dir, t, &policy, ctx.dry_run)? {
            text.push_str(&format!(
                "  {:<12} {}  ({})\n",
                verb(d.keep),
                d.name,
                d.reasons.join("; ")
            ));
        }
    }
    for p in &scan.incomplete {
        text.push_str(&format!(
            "  {:<12} {}  (no manifest: not a backup; remove it by hand)\n",
            "ignore",
            file_name(p)
        ));
    }
    if targets.is_empty() {
        text.push_str(&format!("no backups in {}\n", dir.display()));
    }
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match write!(out, "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    Ok(ExitCode::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three verified backups of one database, the files and their manifests.
    fn three_backups(dir: &Path) -> Target {
        for day in 1..=3 {
            let file = format!("shop-app-2026112{day}T031500Z.dump");
            std::fs::write(dir.join(&file), b"PGDMP").unwrap();
            let m: store::Manifest = serde_json::from_value(json!({
                "format": store::FORMAT, "kind": "pg", "file": file, "bytes": 5,
                "sha256": "x", "created_at": format!("2026-11-2{day}T03:15:00.000Z"),
                "project": "shop", "target": "app", "source": "service db",
                "verification": "read", "duration_ms": 1,
            }))
            .unwrap();
            m.write(dir).unwrap();
        }
        store::Target {
            kind: store::Kind::Pg,
            project: "shop".into(),
            name: "app".into(),
        }
    }

    #[test]
    fn rotation_deletes_nothing_when_the_ledger_cannot_be_read() {
        let d = tempfile::tempdir().unwrap();
        let (dir, state) = (d.path().join("b"), d.path().join("state"));
        std::fs::create_dir_all(&dir).unwrap();
        let target = three_backups(&dir);
        let policy = Policy {
            last: 1,
            ..Policy::default()
        };
        // A ledger that is there but cannot be read (a directory in its place).
        std::fs::create_dir_all(ledger::path(&state)).unwrap();
        let done = rotate_target(&dir, &state, &target, &policy, false).unwrap();
        assert_eq!(done.len(), 3);
        assert!(done.iter().all(|(d, p)| d.keep && p.exists()));
        // Readable (and empty): the policy applies.
        std::fs::remove_dir(ledger::path(&state)).unwrap();
        let done = rotate_target(&dir, &state, &target, &policy, false).unwrap();
        assert_eq!(
            done.iter().filter(|(d, p)| !d.keep && !p.exists()).count(),
            2
        );
    }
}
