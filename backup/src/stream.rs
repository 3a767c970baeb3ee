//! Producing an archive into its partial file: a command's stdout streamed in, or
//! streamed through `age` (with a read verifier fed the plaintext on the way).

use anyhow::Result;
use berth_core::fail;
use berth_core::process::Cmd;

use crate::progress::Progress;
use crate::store::{self, Partial};
use crate::{check_interrupted, crypt, pg};

/// Run `cmd`, streaming its stdout into the partial file.
pub(crate) fn stream_cmd(cmd: &Cmd, partial: &mut Partial, label: &str) -> Result<store::Streamed> {
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
pub(crate) fn stream_encrypted<T: Send>(
    cmd: &Cmd,
    enc: &crypt::Encrypt,
    partial: &mut Partial,
    label: &str,
    tee: Tee<'_, T>,
) -> Result<(store::Streamed, Option<T>)> {
    let (age_in, to_age) = std::io::pipe()?;
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
        let (to_tee, verifier) = match tee {
            Some(f) => {
                let (r, w) = std::io::pipe()?;
                let src = crypt::Source::Pipe(std::sync::Mutex::new(Some(r)));
                (Some(w), Some(scope.spawn(move || f(&src))))
            }
            None => (None, None),
        };
        let res = pump(&handle, to_age, to_tee, &mut progress);
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

/// Copy the producer's stdout to age, and to the verifier while it reads; the first
/// bytes of the plaintext. Both pipes are closed on return.
fn pump(
    mut from: &duct::ReaderHandle,
    mut to_age: std::io::PipeWriter,
    mut to_tee: Option<std::io::PipeWriter>,
    progress: &mut Progress,
) -> Result<Vec<u8>> {
    use std::io::{Read, Write};
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    let mut bytes = 0u64;
    loop {
        check_interrupted()?;
        let n = match from.read(&mut buf) {
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
