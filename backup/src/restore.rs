//! Restore, which never destroys before it has a verified replacement: the backup is
//! restored beside the live database (or volume) as `<name>_berth_restore_<UTC time>`,
//! checked against its manifest, and only then put in the live one's place. The replaced
//! one is kept as `<name>_before_<UTC time>` (the newest `--keep-previous` of them).
//! Whatever a killed restore left beside the live one is recognised by its name and
//! dropped by the next restore of the same target.
//!
//! The target is what the command line names (`--database`, the URL's database, the
//! service's `POSTGRES_DB`, `--volume`); the backup's own source only when nothing does.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use berth_core::cli::Context;
use berth_core::process::quote;
use berth_core::{fail, human, msg, time, ExitCode, Failure};
use serde_json::json;

use crate::crypt::Source;
use crate::job::{backup_pg, backup_volume, lock_target, Job};
use crate::list::age;
use crate::offsite;
use crate::pg::ident;
use crate::pg::Conn;
use crate::store::{Entry, Kind, Manifest, Target, Verification};
use crate::verify::{check_checksum, check_counts};
use crate::volume::{self, SwitchFailed};
use crate::{check_interrupted, say, set_quiet, RestoreCmd};

/// The tag of the copy a restore builds beside the live database or volume.
pub const SCRATCH_TAG: &str = "berth_restore";
/// The tag of a replaced database or volume, kept to go back to.
pub const BEFORE_TAG: &str = "before";
/// Who names the target when no flag does.
const FROM_MANIFEST: &str = "the backup's manifest, as nothing else names one";
/// PostgreSQL's longest identifier, in bytes.
const DB_NAME_MAX: usize = 63;
/// The longest file name, a docker volume's directory's.
const VOLUME_NAME_MAX: usize = 255;
/// `YYYYMMDDhhmmss`
const STAMP_LEN: usize = 14;

/// `<base>_<tag>_`: how every name of that kind for `base` starts. A long base is cut,
/// with a hash of the whole of it so that two bases stay apart, so that the name with
/// its time (and a `_NN` for a second restore within the same second) fits in `max`
/// bytes (PostgreSQL would cut a longer name silently).
pub fn tag_prefix(base: &str, tag: &str, max: usize) -> String {
    let room = max - (tag.len() + 2 + STAMP_LEN + 3);
    if base.len() <= room {
        return format!("{base}_{tag}_");
    }
    let mut cut = room - 9;
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    // FNV-1a: stable across builds and platforms.
    let hash = base.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{}_{:08x}_{tag}_", &base[..cut], hash as u32)
}

/// When `name` is `<prefix><UTC time>[_<n>]`: its place in time, for ordering.
pub fn tagged_order(name: &str, prefix: &str) -> Option<(String, u32)> {
    let rest = name.strip_prefix(prefix)?;
    let (stamp, n) = match rest.split_once('_') {
        Some((s, n)) => (s, n.parse::<u32>().ok().filter(|n| *n >= 2)?),
        None => (rest, 1),
    };
    (stamp.len() == STAMP_LEN && stamp.bytes().all(|b| b.is_ascii_digit()))
        .then(|| (stamp.to_string(), n))
}

/// `<prefix><stamp>`, or `_2`, `_3`... after it when that name is taken.
fn fresh_name(prefix: &str, stamp: &str, taken: &[String]) -> String {
    let mut name = format!("{prefix}{stamp}");
    let mut n = 1;
    while taken.contains(&name) {
        n += 1;
        name = format!("{prefix}{stamp}_{n}");
    }
    name
}

/// Of the names tagged with `prefix`: the newest `keep` to keep, the rest to drop.
pub fn keep_newest(names: &[String], prefix: &str, keep: u32) -> (Vec<String>, Vec<String>) {
    let mut tagged: Vec<(&String, (String, u32))> = names
        .iter()
        .filter_map(|n| tagged_order(n, prefix).map(|o| (n, o)))
        .collect();
    tagged.sort_by(|a, b| b.1.cmp(&a.1));
    let (kept, dropped) = tagged.split_at((keep as usize).min(tagged.len()));
    let names = |v: &[(&String, (String, u32))]| v.iter().map(|(n, _)| (*n).clone()).collect();
    (names(kept), names(dropped))
}

fn stamp() -> String {
    time::now().strftime("%Y%m%d%H%M%S").to_string()
}

/// Ask on the terminal for `expected`; without a terminal, `--yes` is needed.
fn confirm(yes: bool, what: &str, expected: &str) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::usage(format!(
            "refusing to restore into {what} without confirmation: no terminal to ask on; pass --yes"
        ))
        .into());
    }
    eprint!(
        "{}: this replaces {what}. Type {expected:?} to go on: ",
        msg::program()
    );
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if line.trim() != expected {
        return Err(Failure::usage("not confirmed; nothing was changed").into());
    }
    Ok(())
}

/// The backup of the current data taken before it is replaced.
fn safety_job(c: &RestoreCmd, ctx: &Context, target: &Target) -> Job {
    Job {
        dir: c.storage.dir(ctx),
        target: target.clone(),
        verify: Verification::Read,
        allow_shrink: true,
        tag: Some("pre-restore".into()),
        deploy_id: None,
        encrypt: None,
    }
}

pub fn run(mut c: RestoreCmd) -> Result<ExitCode> {
    set_quiet(&c.storage);
    c.server.check()?;
    let ctx = c.common.resolve()?;
    if let Some(dest) = &c.from {
        let what = c.file.to_string_lossy().to_string();
        c.file = offsite::fetch(dest, &c.restic, &what, &c.storage.dir(&ctx))?;
    }
    if !c.file.is_file() {
        return Err(Failure::usage(format!("{}: no such file", c.file.display())).into());
    }
    let m = Manifest::read_for(&c.file)?.ok_or_else(|| {
        fail!(
            Backup,
            "{} has no manifest: not a berth backup (restore it by hand with pg_restore or tar)",
            c.file.display()
        )
    })?;
    if m.verification == Verification::Failed {
        return Err(fail!(
            Backup,
            "{} failed verification ({}); refusing to restore it",
            c.file.display(),
            m.verification_error.as_deref().unwrap_or("no detail")
        ));
    }
    let src = Source::for_file(&c.file, Some(&m), &c.identity)?;
    match m.kind {
        Kind::Pg => restore_pg(&c, &ctx, &m, &src),
        Kind::Volume if c.common.engine == berth_core::swarm::Engine::Swarm => {
            Err(Failure::usage(crate::VOLUME_ON_SWARM).into())
        }
        Kind::Volume => restore_volume(&c, &ctx, &m, &src),
    }
}

/// The plan, on stderr, whatever `--quiet` says.
fn plan_lines(m: &Manifest, file: &Path, steps: &[(&str, String)], safety: bool) {
    let mut lines = vec![
        format!("restore plan for {}", file.display()),
        format!("  from:     {} ({})", m.source, m.target),
        format!(
            "  taken:    {} ({} ago){}",
            m.created_at,
            age(m.created()),
            m.tag
                .as_deref()
                .map(|t| format!(", tag {t}"))
                .unwrap_or_default()
        ),
        format!(
            "  size:     {} ({} bytes), verification {}",
            human::bytes(m.bytes),
            m.bytes,
            m.verification.as_str()
        ),
        format!("  sha256:   {}", m.sha256),
    ];
    for (k, v) in steps {
        lines.push(format!("  {:<9} {v}", format!("{k}:")));
    }
    lines.push(format!(
        "  safety:   {}",
        if safety {
            "a backup of the current data is taken first"
        } else {
            "no safety backup (--no-safety-backup)"
        }
    ));
    for l in lines {
        msg::info(l);
    }
}

/// What the plan says about the replaced database or volume.
fn previous_line(what: &str, name: &str, exists: bool, keep: u32) -> String {
    let max = if what == "database" {
        DB_NAME_MAX
    } else {
        VOLUME_NAME_MAX
    };
    let before = format!("{}<UTC time>", tag_prefix(name, BEFORE_TAG, max));
    match (exists, keep) {
        (false, _) => format!("none: {what} {name} does not exist yet, it is created"),
        (true, 0) => format!("the replaced {what} is dropped once the new one is in place (--keep-previous 0)"),
        (true, 1) => format!("the replaced {what} is kept as {before} to go back to; older ones are dropped (--keep-previous 1)"),
        (true, k) => format!("the replaced {what} is kept as {before} to go back to, with the {} before it; older ones are dropped (--keep-previous {k})", k - 1),
    }
}

/// The database to restore into, and what named it.
fn pg_target(c: &RestoreCmd, ctx: &Context, m: &Manifest) -> Result<(Conn, String, String)> {
    if !c.server.given() {
        return Err(
            Failure::usage("restoring a database needs --service SERVICE or --url URL").into(),
        );
    }
    let (conn, named) = c.server.connect_named(ctx, c.common.engine)?;
    let (db, by) = match named {
        Some(n) => (n.db, n.by),
        None if !m.target.is_empty() => (m.target.clone(), FROM_MANIFEST.into()),
        None => {
            return Err(Failure::usage("name the database to restore into: --database NAME").into())
        }
    };
    Ok((conn, db, by))
}

/// The plan of a database restore, on stderr.
fn pg_plan(c: &RestoreCmd, m: &Manifest, conn: &Conn, db: &str, by: &str) -> Result<()> {
    let source = if m.target == db {
        "the database the backup was taken from".to_string()
    } else {
        format!(
            "the backup was taken from database {}, not this one",
            m.target
        )
    };
    let into = format!(
        "database {db} on {} (named by {by}; {source})",
        conn.source(db)
    );
    let exists = conn.home_of(db)?.is_some();
    let scratch_prefix = tag_prefix(db, SCRATCH_TAG, DB_NAME_MAX);
    let check = match (&m.row_counts, m.tables) {
        (Some(r), _) => format!(
            "the row counts of its {} tables against the manifest",
            r.len()
        ),
        (None, Some(t)) => format!("its number of tables ({t}; the manifest has no row counts)"),
        (None, None) => "nothing (the manifest has no tables nor row counts)".into(),
    };
    plan_lines(
        m,
        &c.file,
        &[
            ("into", into),
            ("method", format!("restored into {scratch_prefix}<UTC time> beside it; {check} checked; only then the names swapped")),
            ("previous", previous_line("database", db, exists, c.keep_previous)),
        ],
        !c.no_safety_backup,
    );
    Ok(())
}

fn restore_pg(c: &RestoreCmd, ctx: &Context, m: &Manifest, src: &Source) -> Result<ExitCode> {
    let (conn, db, by) = pg_target(c, ctx, m)?;
    pg_plan(c, m, &conn, &db, &by)?;
    check_checksum(&c.file, m)?;
    msg::info("checksum ok");
    confirm(c.yes, &format!("database {db}"), &db)?;
    let target = Target {
        kind: Kind::Pg,
        project: ctx.project.clone(),
        name: db.clone(),
    };
    let _lock = lock_target(ctx, &target, c.storage.lock_wait, None)?;
    let scratch_prefix = tag_prefix(&db, SCRATCH_TAG, DB_NAME_MAX);
    let leftovers = drop_leftovers(
        "dropped database",
        &scratch_prefix,
        conn.databases_starting(&scratch_prefix),
        |l| conn.drop_database(l),
    )?;
    let home = conn.home_of(&db)?;
    let safety = match home.is_some() && !c.no_safety_backup {
        true => safety_backup(|| backup_pg(&conn, &db, &safety_job(c, ctx, &target)))?,
        false => None,
    };
    let at = stamp();
    let scratch = fresh_name(&scratch_prefix, &at, &[]);
    say(format!("restoring {} into {scratch}", c.file.display()));
    let clock = Instant::now();
    conn.create_database(&scratch, home.as_deref())
        .map_err(|e| e.context(format!("nothing was changed: database {db} is as it was")))?;
    let built = (|| {
        check_interrupted()?;
        conn.restore_into(src, &scratch)?;
        check_interrupted()?;
        let counts = conn.counts(&scratch)?;
        check_counts(m, &counts, "the manifest says")?;
        check_interrupted()?;
        Ok(counts)
    })();
    let counts = built.map_err(|e| drop_scratch(&conn, &scratch, &db, e))?;
    let rows: u64 = counts.values().sum();
    msg::info(format!(
        "restored and verified in {:.1}s: {} tables, {rows} rows, as the manifest says",
        clock.elapsed().as_secs_f64(),
        counts.len()
    ));
    let previous = swap_pg(c, &conn, &db, &scratch, &at, home.is_some(), &counts)?;
    let mut report = json!({
        "restored": c.file.display().to_string(),
        "kind": "pg",
        "database": db,
        "source_database": m.target,
    });
    previous.fill(&mut report, safety, leftovers);
    report["tables"] = json!(counts);
    println!("{report}");
    Ok(ExitCode::Success)
}

/// A failed restore into `scratch`: the copy dropped, the error saying nothing changed.
fn drop_scratch(conn: &Conn, scratch: &str, db: &str, e: anyhow::Error) -> anyhow::Error {
    if let Err(d) = conn.drop_database(scratch) {
        msg::warn(format!(
            "could not drop {scratch} ({d:#}); the next restore drops it"
        ));
    }
    e.context(format!(
        "nothing was changed: database {db} is as it was, the restored copy dropped"
    ))
}

/// Put the verified copy `scratch` in the live database `db`'s place (the live one, if
/// any, renamed to `<db>_before_<at>`), then keep the newest `--keep-previous` of those.
fn swap_pg(
    c: &RestoreCmd,
    conn: &Conn,
    db: &str,
    scratch: &str,
    at: &str,
    exists: bool,
    counts: &BTreeMap<String, u64>,
) -> Result<Previous> {
    let unchanged = |e: anyhow::Error| drop_scratch(conn, scratch, db, e);
    let before_prefix = tag_prefix(db, BEFORE_TAG, DB_NAME_MAX);
    let before = match exists {
        true => Some(fresh_name(
            &before_prefix,
            at,
            &conn.databases_starting(&before_prefix).map_err(unchanged)?,
        )),
        false => None,
    };
    conn.swap_in(scratch, db, before.as_deref())
        .map_err(|e| unchanged(e.context(format!("swapping {scratch} in for {db}"))))?;
    match &before {
        Some(b) => msg::info(format!(
            "swapped: {db} now holds the backup; the replaced database is {b}"
        )),
        None => msg::info(format!("created database {db} from the backup")),
    }
    for (t, n) in counts {
        say(format!("  {t}: {n} rows"));
    }
    let previous = prune_previous(
        "database",
        &before_prefix,
        c.keep_previous,
        before,
        conn.databases_starting(&before_prefix),
        |d| conn.drop_database(d),
    );
    if let Some(b) = &previous.kept_before {
        let back = format!(
            "ALTER DATABASE {} RENAME TO {}; ALTER DATABASE {} RENAME TO {}",
            ident(db),
            ident(&format!("{}{at}", tag_prefix(db, "discarded", DB_NAME_MAX))),
            ident(b),
            ident(db)
        );
        msg::info(format!(
            "kept the replaced database as {b} (--keep-previous {}); to go back, stop the app and run: {} -c {}",
            c.keep_previous,
            conn.client("psql", Some("postgres")).display(),
            quote(&back)
        ));
    }
    Ok(previous)
}

/// Drop what an interrupted restore left (names `<prefix><UTC time>`): `done` says how
/// (`dropped database`, `removed volume`); the names.
fn drop_leftovers(
    done: &str,
    prefix: &str,
    listed: Result<Vec<String>>,
    drop: impl Fn(&str) -> Result<()>,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for l in listed?
        .into_iter()
        .filter(|n| tagged_order(n, prefix).is_some())
    {
        drop(&l)?;
        msg::info(format!("{done} {l}, left by an interrupted restore"));
        out.push(l);
    }
    Ok(out)
}

/// The backup of the current data, taken before it is replaced; its path.
fn safety_backup(take: impl FnOnce() -> Result<Entry>) -> Result<Option<PathBuf>> {
    let e = take().map_err(|e| e.context("the safety backup failed; nothing was restored"))?;
    msg::info(format!("safety backup: {}", e.path.display()));
    Ok(Some(e.path))
}

/// The replaced databases or volumes after a restore.
struct Previous {
    /// The one this restore replaced, when it is kept.
    kept_before: Option<String>,
    kept: Vec<String>,
    dropped: Vec<String>,
}

impl Previous {
    /// The report's fields on what was replaced, kept, dropped and cleaned up.
    fn fill(self, report: &mut serde_json::Value, safety: Option<PathBuf>, leftovers: Vec<String>) {
        report["safety_backup"] = json!(safety.as_ref().map(|p| p.display().to_string()));
        report["previous"] = json!(self.kept_before);
        report["previous_kept"] = json!(self.kept);
        report["previous_dropped"] = json!(self.dropped);
        report["leftovers_dropped"] = json!(leftovers);
    }
}

/// Keep the newest `keep` replaced databases or volumes, drop the others (a failure to
/// list or drop one warns: the restore itself is done).
fn prune_previous(
    what: &str,
    prefix: &str,
    keep: u32,
    before: Option<String>,
    listed: Result<Vec<String>>,
    drop: impl Fn(&str) -> Result<()>,
) -> Previous {
    let names = match listed {
        Ok(n) => n,
        Err(e) => {
            msg::warn(format!(
                "could not list the replaced {what}s ({e:#}); none dropped"
            ));
            Vec::new()
        }
    };
    let (kept, old) = keep_newest(&names, prefix, keep);
    let mut dropped = Vec::new();
    for d in old {
        match drop(&d) {
            Ok(()) => {
                msg::info(format!(
                    "dropped the replaced {what} {d} (--keep-previous {keep})"
                ));
                dropped.push(d);
            }
            Err(e) => msg::warn(format!("could not drop the replaced {what} {d}: {e:#}")),
        }
    }
    Previous {
        kept_before: before.filter(|b| kept.contains(b)),
        kept,
        dropped,
    }
}

/// The volume to restore into, and what named it; the plan of its restore, on stderr.
fn volume_plan(c: &RestoreCmd, m: &Manifest) -> String {
    let (real, by) = match (&c.volume, &m.volume) {
        (Some(v), _) => (v.clone(), "--volume"),
        (None, Some(v)) => (v.clone(), FROM_MANIFEST),
        (None, None) => (m.target.clone(), FROM_MANIFEST),
    };
    let source = match &m.volume {
        Some(v) if *v != real => format!("the backup was taken from volume {v}, not this one"),
        _ => "the volume the backup was taken from".into(),
    };
    let exists = volume::exists(&real);
    let staging_prefix = tag_prefix(&real, SCRATCH_TAG, VOLUME_NAME_MAX);
    plan_lines(
        m,
        &c.file,
        &[
            ("into", format!("docker volume {real} (named by {by}; {source})")),
            ("method", format!("extracted into a new volume {staging_prefix}<UTC time>; its entries counted against the archive; only then the old content copied aside and the new copied in")),
            ("previous", previous_line("volume", &real, exists, c.keep_previous)),
        ],
        !c.no_safety_backup,
    );
    real
}

fn restore_volume(c: &RestoreCmd, ctx: &Context, m: &Manifest, src: &Source) -> Result<ExitCode> {
    let real = volume_plan(c, m);
    check_checksum(&c.file, m)?;
    msg::info("checksum ok");
    let entries = volume::read_archive(src)?;
    if let Some(want) = m.entries.filter(|w| *w != entries) {
        return Err(fail!(
            Backup,
            "the archive holds {entries} entries, the manifest says {want}; nothing was changed"
        ));
    }
    confirm(c.yes, &format!("docker volume {real}"), &real)?;
    let target = Target {
        kind: Kind::Volume,
        project: ctx.project.clone(),
        name: m.target.clone(),
    };
    let _lock = lock_target(ctx, &target, c.storage.lock_wait, None)?;
    let staging_prefix = tag_prefix(&real, SCRATCH_TAG, VOLUME_NAME_MAX);
    let leftovers = drop_leftovers(
        "removed volume",
        &staging_prefix,
        volume::starting(&staging_prefix),
        volume::remove,
    )?;
    let exists = volume::exists(&real);
    let safety = match exists && !c.no_safety_backup {
        true => safety_backup(|| {
            let job = safety_job(c, ctx, &target);
            backup_volume(ctx, &real, &c.stop, &c.helper.image, &job)
        })?,
        false => None,
    };
    let at = stamp();
    let staging = fresh_name(&staging_prefix, &at, &[]);
    let (project, image) = (ctx.project.as_str(), c.helper.image.as_str());
    say(format!(
        "restoring {} into volume {staging}",
        c.file.display()
    ));
    volume::create(project, &staging, &[(volume::LABEL_HELPER, "1")])?;
    let built = (|| {
        check_interrupted()?;
        volume::extract(project, image, src, &staging, false)?;
        let got = volume::count(project, image, &staging)?;
        if got != entries {
            return Err(fail!(
                Backup,
                "restore verification failed: the archive holds {entries} entries, {got} landed in {staging}"
            ));
        }
        check_interrupted()
    })();
    built.map_err(|e| remove_staging(&staging, &real, e))?;
    say(format!(
        "verified: {entries} entries in {staging}, as in the archive"
    ));
    let before = switch_volume(c, ctx, src, &real, &staging, &at, exists)?;
    let previous = after_switch(c, ctx, &real, &staging, before, entries)?;
    let mut report = json!({
        "restored": c.file.display().to_string(),
        "kind": "volume",
        "volume": real,
        "entries": entries,
    });
    previous.fill(&mut report, safety, leftovers);
    println!("{report}");
    Ok(ExitCode::Success)
}

/// A failed restore into `staging`: the volume removed, the error saying nothing changed.
fn remove_staging(staging: &str, real: &str, e: anyhow::Error) -> anyhow::Error {
    if let Err(d) = volume::remove(staging) {
        msg::warn(format!(
            "could not remove volume {staging} ({d:#}); the next restore removes it"
        ));
    }
    e.context(format!("nothing was changed: volume {real} is as it was"))
}

/// With the services in `--stop` stopped: the live content copied aside into a new
/// `<volume>_before_<at>` and the verified content copied in (or, no live volume, the
/// archive extracted into a new one); the services started again whatever happened.
/// The `before` volume.
fn switch_volume(
    c: &RestoreCmd,
    ctx: &Context,
    src: &Source,
    real: &str,
    staging: &str,
    at: &str,
    exists: bool,
) -> Result<Option<String>> {
    let unchanged = |e: anyhow::Error| remove_staging(staging, real, e);
    let (project, image) = (ctx.project.as_str(), c.helper.image.as_str());
    let before_prefix = tag_prefix(real, BEFORE_TAG, VOLUME_NAME_MAX);
    let mut before = None;
    let compose = ctx.compose();
    let mut stopped = volume::Stopped::stop(&compose, &c.stop).map_err(unchanged)?;
    let switched = if exists {
        let taken = volume::starting(&before_prefix).map_err(unchanged)?;
        let b = fresh_name(&before_prefix, at, &taken);
        volume::create(project, &b, &[("berth.backup.before", real)]).map_err(unchanged)?;
        let res = volume::switch(project, image, real, &b, staging);
        before = Some(b);
        res
    } else {
        volume::create(project, real, &[])
            .map_err(|e| SwitchFailed::Untouched(format!("{e:#}")))
            .and_then(|_| {
                volume::extract(project, image, src, real, false)
                    .map_err(|e| SwitchFailed::HalfWay(format!("{e:#}")))
            })
    };
    let restarted = stopped.restart();
    if let Err(f) = switched {
        let b = before.clone().unwrap_or_default();
        return Err(match f {
            SwitchFailed::Untouched(why) => {
                if !b.is_empty() {
                    let _ = volume::remove(&b);
                }
                unchanged(fail!(Backup, "copying the old content aside failed: {why}"))
            }
            SwitchFailed::PutBack(why) => unchanged(fail!(
                Backup,
                "copying the restored content in failed, the old content was put back (a copy is in volume {b}): {why}"
            )),
            SwitchFailed::HalfWay(why) if b.is_empty() => {
                fail!(Backup, "restoring into the new volume {real} failed: {why}")
            }
            SwitchFailed::HalfWay(why) => fail!(
                Backup,
                "the switch failed half-way: volume {real} may be incomplete; the old content is in volume {b}, the verified new content in {staging}: {why}"
            ),
        });
    }
    restarted?;
    Ok(before)
}

/// After the switch: the staging volume removed, the live one's entries counted, the
/// newest `--keep-previous` replaced volumes kept.
fn after_switch(
    c: &RestoreCmd,
    ctx: &Context,
    real: &str,
    staging: &str,
    before: Option<String>,
    entries: u64,
) -> Result<Previous> {
    let image = c.helper.image.as_str();
    let _ = volume::remove(staging);
    let got = volume::count(&ctx.project, image, real)?;
    if got != entries {
        return Err(fail!(
            Backup,
            "volume {real} holds {got} entries after the switch, the archive {entries}; the old content is in volume {}",
            before.as_deref().unwrap_or("(none: it did not exist)")
        ));
    }
    msg::info(format!("restored {entries} entries into volume {real}"));
    let before_prefix = tag_prefix(real, BEFORE_TAG, VOLUME_NAME_MAX);
    let previous = prune_previous(
        "volume",
        &before_prefix,
        c.keep_previous,
        before,
        volume::starting(&before_prefix),
        volume::remove,
    );
    if let Some(b) = &previous.kept_before {
        msg::info(format!(
            "kept the old content as volume {b} (--keep-previous {}); to go back: docker run --rm -v {b}:/from:ro -v {real}:/to {image} sh -c 'find /to -mindepth 1 -delete && cp -a /from/. /to/'",
            c.keep_previous
        ));
    }
    Ok(previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_tagged_recognised_and_fit_postgres() {
        assert_eq!(tag_prefix("shop", BEFORE_TAG, DB_NAME_MAX), "shop_before_");
        let p = tag_prefix("shop", SCRATCH_TAG, DB_NAME_MAX);
        assert_eq!(p, "shop_berth_restore_");
        assert_eq!(
            tagged_order("shop_berth_restore_20261206081500", &p),
            Some(("20261206081500".into(), 1))
        );
        assert_eq!(
            tagged_order("shop_berth_restore_20261206081500_3", &p),
            Some(("20261206081500".into(), 3))
        );
        for not in [
            "shop",
            "shop_berth_restore_",
            "shop_berth_restore_2026120608150",
            "shop_berth_restore_2026120608150x",
            "shop_berth_restore_20261206081500_x",
            "shop_berth_restore_20261206081500_1",
            "shop_2_berth_restore_20261206081500",
        ] {
            assert_eq!(tagged_order(not, &p), None, "{not}");
        }
        // Long names are cut to fit 63 bytes (with room for `_NN`), and stay apart.
        let long_a = "a".repeat(60) + "x";
        let long_b = "a".repeat(60) + "y";
        for tag in [SCRATCH_TAG, BEFORE_TAG] {
            let (pa, pb) = (
                tag_prefix(&long_a, tag, DB_NAME_MAX),
                tag_prefix(&long_b, tag, DB_NAME_MAX),
            );
            assert_ne!(pa, pb);
            assert_eq!(pa.len() + STAMP_LEN + 3, DB_NAME_MAX, "{pa}");
            assert_eq!(pa, tag_prefix(&long_a, tag, DB_NAME_MAX), "stable");
            assert_eq!(
                tag_prefix(&long_a, tag, VOLUME_NAME_MAX),
                format!("{long_a}_{tag}_")
            );
        }
        let multibyte = "é".repeat(40);
        assert!(
            tag_prefix(&multibyte, SCRATCH_TAG, DB_NAME_MAX).len() + STAMP_LEN + 3 <= DB_NAME_MAX
        );
        assert_eq!(
            fresh_name("d_before_", "20261206081500", &[]),
            "d_before_20261206081500"
        );
        assert_eq!(
            fresh_name(
                "d_before_",
                "20261206081500",
                &[
                    "d_before_20261206081500".into(),
                    "d_before_20261206081500_2".into()
                ]
            ),
            "d_before_20261206081500_3"
        );
    }

    #[test]
    fn keep_previous_keeps_the_newest() {
        let p = "d_before_";
        let names: Vec<String> = [
            "d_before_20261206081500",
            "d_before_20251206081500",
            "d_before_20261206081500_2",
            "d_before_manual",
            "d_before_20261106081500",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (kept, dropped) = keep_newest(&names, p, 2);
        assert_eq!(
            kept,
            ["d_before_20261206081500_2", "d_before_20261206081500"]
        );
        assert_eq!(
            dropped,
            ["d_before_20261106081500", "d_before_20251206081500"]
        );
        let (kept, dropped) = keep_newest(&names, p, 0);
        assert!(kept.is_empty());
        assert_eq!(
            dropped.len(),
            4,
            "never a name it did not make: {dropped:?}"
        );
        let (kept, dropped) = keep_newest(&names, p, 9);
        assert_eq!((kept.len(), dropped.len()), (4, 0));
    }
}
