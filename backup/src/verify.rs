//! `berth-backup verify`: a backup's checksum against its manifest, then the archive
//! read whole or restored into scratch and compared; the result written back into the
//! manifest. With `--remote`, `restic check` of an off-site repository instead.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use berth_core::cli::Context;
use berth_core::process::Cmd;
use berth_core::{fail, msg, time, ExitCode, Failure};

use crate::store::{self, file_name, Kind, Manifest, Verification};
use crate::{crypt, offsite, pg, say, set_quiet, volume, CheckLevel, VerifyCmd};

/// Checksum of a file against its manifest.
pub(crate) fn check_checksum(file: &Path, m: &Manifest) -> Result<()> {
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

/// The tables restored from a dump (`got`) against its manifest: its row counts, else
/// its number of tables. `says` words the manifest's numbers in the differences
/// (`expected`, or `the manifest says`).
pub(crate) fn check_counts(m: &Manifest, got: &BTreeMap<String, u64>, says: &str) -> Result<()> {
    let problems = match (&m.row_counts, m.tables) {
        (Some(want), _) => pg::compare_counts(want, got)
            .into_iter()
            .map(|p| p.replace(", expected ", &format!(", {says} ")))
            .collect(),
        (None, Some(t)) if got.len() as u64 != t => {
            vec![format!(
                "{} tables restored, the manifest says {t}",
                got.len()
            )]
        }
        _ => Vec::new(),
    };
    if problems.is_empty() {
        return Ok(());
    }
    Err(fail!(
        Backup,
        "restore verification failed: {}",
        problems.join("; ")
    ))
}

fn kind_of_file(file: &Path, m: Option<&Manifest>) -> Kind {
    if let Some(m) = m {
        return m.kind;
    }
    let n = file_name(file);
    let n = n.strip_suffix(crypt::SUFFIX).unwrap_or(&n);
    if n.ends_with(".tar.gz") || n.ends_with(".tgz") {
        Kind::Volume
    } else {
        Kind::Pg
    }
}

pub(crate) fn run(c: VerifyCmd) -> Result<ExitCode> {
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
    let kind = kind_of_file(&file, manifest.as_ref());
    let src = crypt::Source::for_file(&file, manifest.as_ref(), &c.identity)?;
    if kind == Kind::Pg && c.level == CheckLevel::Restore && !c.server.given() {
        return Err(Failure::usage("--level restore needs a server: --service or --url").into());
    }
    let res = check(&c, &ctx, &file, manifest.as_ref(), &src);
    if let Some(m) = manifest {
        record(m, &res, c.level, &file);
    }
    res.map(|_| ExitCode::Success)
}

/// The checks, as far as `--level` says; for a volume, the number of entries.
fn check(
    c: &VerifyCmd,
    ctx: &Context,
    file: &Path,
    manifest: Option<&Manifest>,
    src: &crypt::Source,
) -> Result<Option<u64>> {
    match manifest {
        Some(m) => {
            check_checksum(file, m)?;
            say(format!("checksum ok: sha256 {}", m.sha256));
        }
        None => msg::warn(format!(
            "{} has no manifest: checking the archive only",
            file.display()
        )),
    }
    match (kind_of_file(file, manifest), c.level) {
        (Kind::Pg, CheckLevel::Read) => {
            if c.server.given() {
                let (conn, _) = c.server.connect_named(ctx, c.common.engine)?;
                conn.verify_read(src)?;
            } else {
                let cmd = Cmd::new("pg_restore").args(["--exit-on-error", "-f", "/dev/null"]);
                pg::feed(cmd.stage_timeout(), src, "read verification failed (pg_restore on this host; else pass --service or --url)")?;
            }
            say("read verification ok: the whole archive reads");
            Ok(None)
        }
        (Kind::Pg, CheckLevel::Restore) => {
            let (conn, _) = c.server.connect_named(ctx, c.common.engine)?;
            let got = conn.restore_counts(src)?;
            if let Some(m) = manifest {
                check_counts(m, &got, "expected")?;
            }
            say(format!(
                "restore verification ok: {} tables, {} rows",
                got.len(),
                got.values().sum::<u64>()
            ));
            Ok(None)
        }
        (Kind::Volume, CheckLevel::Read) => {
            let n = volume::read_archive(src)?;
            say(format!("verification ok: {n} entries"));
            Ok(Some(n))
        }
        (Kind::Volume, CheckLevel::Restore) => {
            let n = volume::verify_restore(&ctx.project, &c.helper.image, src)?;
            say(format!("verification ok: {n} entries"));
            Ok(Some(n))
        }
    }
}

/// Write the outcome into the manifest: the level reached (never lowered from restore
/// to read), or failed with the error line.
fn record(mut m: Manifest, res: &Result<Option<u64>>, level: CheckLevel, file: &Path) {
    match res {
        Ok(entries) => {
            let reached = match level {
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
