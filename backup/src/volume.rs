//! Docker volumes: a tar.gz streamed out of a short-lived helper container that mounts
//! the volume read-only (from a local image, never pulled), verification by reading the
//! archive to its end in-process, and restore through the same helper.

use std::io::Read;

use crate::crypt::Source;
use anyhow::Result;
use berth_core::compose::{Compose, LABEL_PROJECT};
use berth_core::process::{last_lines, Cmd, ProcessError};
use berth_core::{docker, fail, msg};

/// The label on every helper container and scratch volume berth-backup creates.
pub const LABEL_HELPER: &str = "berth.backup.helper";

/// The docker volume behind `name`: the compose volume of that name (its `name:` after
/// interpolation, usually `<project>_<name>`), else a docker volume called `name`.
pub fn resolve(compose: &Compose, name: &str) -> Result<String> {
    let cfg = compose.config().map_err(|e| fail!(Backup, "{e:#}"))?;
    let real = cfg
        .pointer(&format!("/volumes/{name}/name"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| name.to_string());
    match docker::volume_inspect(&real).read() {
        Ok(_) => Ok(real),
        Err(ProcessError::Failed { stderr, .. }) => Err(fail!(
            Backup,
            "volume {real} does not exist ({})",
            last_lines(&stderr, 1)
        )),
        Err(e) => Err(fail!(Backup, "{e}")),
    }
}

/// A helper container name, unique to this process.
pub fn helper_name(what: &str) -> String {
    format!(
        "berth-backup-{what}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() % 1_000_000_000)
            .unwrap_or(0)
    )
}

/// `docker run --rm` of the helper image with our labels, no network, never pulling.
pub fn helper(project: &str, name: &str, image: &str, mounts: &[String], interactive: bool) -> Cmd {
    let labels = [(LABEL_PROJECT, project), (LABEL_HELPER, "1")];
    docker::run_helper(name, image, &labels, mounts, interactive)
}

/// Remove a helper container if it is still there (after a failure or an interrupt).
pub fn remove_helper(name: &str) {
    let _ = docker::remove_force(&[name], false).output();
}

/// `tar -czf -` of the volume, mounted read-only.
pub fn tar_cmd(project: &str, container: &str, image: &str, volume: &str) -> Cmd {
    helper(
        project,
        container,
        image,
        &[format!("{volume}:/volume:ro")],
        false,
    )
    .stage_timeout()
    .args(["tar", "-C", "/volume", "-czf", "-", "."])
}

/// Read the whole archive (gunzip + tar, every entry's data, the gzip trailer): the
/// number of entries other than the root directory.
pub fn read_archive(src: &Source) -> Result<u64> {
    let mut input = src.open()?;
    let res = read_stream(input.reader());
    input.finish(res)
}

fn read_stream(f: std::fs::File) -> Result<u64> {
    let gz = flate2::read::GzDecoder::new(std::io::BufReader::new(f));
    let mut ar = tar::Archive::new(gz);
    let mut n = 0u64;
    let bad = |e: std::io::Error| fail!(Backup, "read verification failed: {e}");
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.to_string_lossy().to_string();
        std::io::copy(&mut entry, &mut std::io::sink()).map_err(bad)?;
        if path != "." && path != "./" {
            n += 1;
        }
    }
    // The tar end marker may come before the gzip trailer: read on to check it.
    let mut rest = ar.into_inner();
    let mut buf = [0u8; 8192];
    loop {
        match rest.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(bad(e)),
        }
    }
    if n == 0 {
        msg::warn("the archive holds no files");
    }
    Ok(n)
}

/// Create a volume with berth's project label and `labels`.
pub fn create(project: &str, name: &str, labels: &[(&str, &str)]) -> Result<()> {
    let all: Vec<(&str, &str)> = [(LABEL_PROJECT, project)]
        .into_iter()
        .chain(labels.iter().copied())
        .collect();
    docker::volume_create(name, &all)
        .run()
        .map_err(|e| fail!(Backup, "creating volume {name}: {e}"))?;
    Ok(())
}

/// Remove a volume, if it is there.
pub fn remove(name: &str) -> Result<()> {
    docker::volume_remove(name)
        .run()
        .map_err(|e| fail!(Backup, "removing volume {name}: {e}"))?;
    Ok(())
}

/// Whether a docker volume of that name exists.
pub fn exists(name: &str) -> bool {
    docker::volume_inspect(name).run().is_ok()
}

/// The volumes whose names start with `prefix`.
pub fn starting(prefix: &str) -> Result<Vec<String>> {
    let out = docker::volume_list()
        .read()
        .map_err(|e| fail!(Backup, "listing volumes: {e}"))?;
    Ok(out
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect())
}

/// The number of entries in a volume (`find -mindepth 1`, like [`read_archive`]).
pub fn count(project: &str, image: &str, volume: &str) -> Result<u64> {
    let name = helper_name("count");
    let out = helper(
        project,
        &name,
        image,
        &[format!("{volume}:/volume:ro")],
        false,
    )
    .args(["find", "/volume", "-mindepth", "1"])
    .read()
    .map_err(|e| {
        remove_helper(&name);
        fail!(Backup, "counting the entries of volume {volume}: {e}")
    })?;
    Ok(out.lines().filter(|l| !l.is_empty()).count() as u64)
}

/// Extract the archive into a scratch volume, count what landed, remove the volume.
pub fn restore_count(project: &str, image: &str, file: &Source) -> Result<u64> {
    let scratch = helper_name("verify");
    create(project, &scratch, &[(LABEL_HELPER, "1")])?;
    let res = extract(project, image, file, &scratch, false)
        .and_then(|_| count(project, image, &scratch))
        .map_err(|e| fail!(Backup, "restore verification failed: {e:#}"));
    let _ = remove(&scratch);
    res
}

/// Restore verification of an archive: read it whole, extract it into a scratch volume,
/// and check as many entries landed as it holds; that number.
pub fn verify_restore(project: &str, image: &str, src: &Source) -> Result<u64> {
    let n = read_archive(src)?;
    let got = restore_count(project, image, src)?;
    if got != n {
        return Err(fail!(
            Backup,
            "restore verification failed: the archive holds {n} entries, {got} landed"
        ));
    }
    Ok(n)
}

/// How a [`switch`] ended badly.
#[derive(Debug, PartialEq, Eq)]
pub enum SwitchFailed {
    /// The old content could not be copied aside: the live volume was not touched.
    Untouched(String),
    /// The new content could not be copied in: the old content was put back.
    PutBack(String),
    /// Half-way: the old content is only in the `before` volume.
    HalfWay(String),
}

/// Copy `live` into the empty `before` (and check the copy is whole), then replace
/// `live`'s content with `staging`'s. Old content is deleted only once its copy is
/// complete; when the new content cannot be copied in, the old is put back.
pub fn switch(
    project: &str,
    image: &str,
    live: &str,
    before: &str,
    staging: &str,
) -> Result<(), SwitchFailed> {
    const SCRIPT: &str = r#"n() { find "$1" -mindepth 1 | wc -l; }
cp -a /live/. /before/ || exit 3
[ "$(n /live)" = "$(n /before)" ] || { echo "the copy of the old content is incomplete" >&2; exit 3; }
find /live -mindepth 1 -delete && cp -a /staging/. /live/ && exit 0
find /live -mindepth 1 -delete; cp -a /before/. /live/ && exit 4
exit 5"#;
    let name = helper_name("switch");
    let mounts = [
        format!("{live}:/live"),
        format!("{before}:/before"),
        format!("{staging}:/staging:ro"),
    ];
    let out = helper(project, &name, image, &mounts, false)
        .args(["sh", "-c", SCRIPT])
        .stage_timeout()
        .run_shaped(|e| e.stdout_null().stderr_capture());
    let out = match out {
        Ok(o) => o,
        Err(e @ ProcessError::NotStarted { .. }) => {
            return Err(SwitchFailed::Untouched(format!(
                "could not run docker: {e}"
            )))
        }
        // Killed at the deadline: the copy may have been anywhere.
        Err(e) => {
            remove_helper(&name);
            return Err(SwitchFailed::HalfWay(e.to_string()));
        }
    };
    if out.status.success() {
        return Ok(());
    }
    remove_helper(&name);
    let why = last_lines(&String::from_utf8_lossy(&out.stderr), 2);
    Err(match out.status.code() {
        // 125-127: docker could not start the helper; 3: the copy aside failed.
        Some(3 | 125..=127) => SwitchFailed::Untouched(why),
        Some(4) => SwitchFailed::PutBack(why),
        _ => SwitchFailed::HalfWay(why),
    })
}

/// Unpack `file` into `volume`; with `replace`, delete what the volume held first.
pub fn extract(
    project: &str,
    image: &str,
    src: &Source,
    volume: &str,
    replace: bool,
) -> Result<()> {
    let name = helper_name("restore");
    let script = if replace {
        "find /volume -mindepth 1 -delete && exec tar -xzpf - -C /volume --numeric-owner"
    } else {
        "exec tar -xzpf - -C /volume --numeric-owner"
    };
    let cmd = helper(project, &name, image, &[format!("{volume}:/volume")], true)
        .args(["sh", "-c", script]);
    src.feed(&cmd.stage_timeout(), |out| {
        let out = out.map_err(|e| {
            remove_helper(&name);
            fail!(Backup, "extracting into volume {volume}: {e}")
        })?;
        if out.status.success() {
            return Ok(());
        }
        remove_helper(&name);
        Err(fail!(
            Backup,
            "extracting into volume {volume} failed: {}",
            last_lines(&String::from_utf8_lossy(&out.stderr), 2)
        ))
    })
}

/// Services stopped for a consistent copy; started again when dropped, whatever happened.
pub struct Stopped {
    compose: Compose,
    services: Vec<String>,
}

impl Stopped {
    /// Stop each running service of `names` (one that was not running stays as it was).
    pub fn stop(compose: &Compose, names: &[String]) -> Result<Stopped> {
        let mut s = Stopped {
            compose: compose.clone(),
            services: Vec::new(),
        };
        for n in names {
            let running = compose
                .containers(n)
                .map_err(|e| fail!(Backup, "{e:#}"))?
                .iter()
                .any(|c| c.state.running);
            if !running {
                msg::info(format!("service {n} is not running; nothing to stop"));
                continue;
            }
            crate::say(format!("stopping {n} for a consistent copy"));
            s.services.push(n.clone());
            compose
                .cmd(["stop", n.as_str()])
                .run()
                .map_err(|e| fail!(Backup, "stopping {n}: {e}"))?;
        }
        Ok(s)
    }

    pub fn restart(&mut self) -> Result<()> {
        let mut failed = Vec::new();
        for n in std::mem::take(&mut self.services) {
            crate::say(format!("starting {n} again"));
            if let Err(e) = self.compose.cmd(["start", n.as_str()]).run() {
                msg::error(format!("starting {n} again failed: {e}"));
                failed.push(n);
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(fail!(
                Backup,
                "could not start {} again: start it by hand",
                failed.join(", ")
            ))
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.restart();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(c: &Cmd) -> String {
        c.arg_list()
            .iter()
            .map(|a| a.to_string_lossy().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn helper_containers_are_labelled_offline_and_never_pulled() {
        let mounts = ["v:/volume:ro".to_string()];
        assert_eq!(
            argv(&tar_cmd("shop", "h1", "img:1", "v")),
            "run --rm --pull never --network none --name h1 \
             --label com.docker.compose.project=shop --label berth.backup.helper=1 \
             -v v:/volume:ro img:1 tar -C /volume -czf - ."
        );
        assert_eq!(
            argv(&helper("shop", "h2", "img:1", &mounts, true)),
            "run --rm --pull never --network none -i --name h2 \
             --label com.docker.compose.project=shop --label berth.backup.helper=1 \
             -v v:/volume:ro img:1"
        );
    }
}
