//! Local encryption at rest with `age`.
//!
//! Design (the simplest that keeps the plaintext off the disk and the private key off
//! the backup host's backup path):
//! - Backup: the producer's stdout (pg_dump, tar) is read by berth and written to two
//!   pipes: `age -r RECIPIENT.. -R FILE..` (whose stdout is the `.partial` file) and the
//!   read verifier (`pg_restore -f /dev/null`, or the in-process tar reader). So read
//!   verification checks the very bytes that were encrypted and needs no private key.
//!   With `--identity-file` the written file is instead decrypted in a stream into the
//!   verifier, which also proves the key opens it (needed for `--verify restore`).
//! - verify, restore, drill: `age -d -i FILE ARCHIVE` into a pipe that the consumer
//!   reads as its stdin. The key file's path is in argv, never its content.
//! - sha256 and bytes in the manifest are of the encrypted file, as stored and copied.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Result;
use berth_core::process::{last_lines, Cmd, ProcessError, Watch};
use berth_core::{fail, Failure};
use clap::Args;
use serde_json::{json, Map, Value};

use crate::store::Manifest;

/// The manifest's `encryption` value for age.
pub const AGE: &str = "age";
/// The suffix of an encrypted archive.
pub const SUFFIX: &str = ".age";

/// Encryption of new backups.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Encryption")]
pub struct Encrypt {
    /// Encrypt the backup with age to this public key (age1...; repeatable). The file
    /// becomes .dump.age / .tar.gz.age; read verification checks the plaintext stream as
    /// it is encrypted, so it needs no private key
    #[arg(
        long = "encrypt-to",
        env = "BERTH_ENCRYPT_TO",
        value_name = "RECIPIENT",
        value_delimiter = ','
    )]
    pub to: Vec<String>,

    /// Encrypt to the recipients listed in this age recipients file (repeatable)
    #[arg(
        long = "encrypt-to-file",
        env = "BERTH_ENCRYPT_TO_FILE",
        value_name = "FILE",
        value_delimiter = ','
    )]
    pub to_file: Vec<PathBuf>,

    #[command(flatten)]
    pub identity: Identity,
}

/// The private key for reading encrypted backups.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Encryption")]
pub struct Identity {
    /// An age identity file (age-keygen -o FILE) to decrypt .age backups in a stream;
    /// needed to verify, restore or drill them. Only its path is ever passed on
    #[arg(long, env = "BERTH_AGE_IDENTITY_FILE", value_name = "FILE")]
    pub identity_file: Option<PathBuf>,
}

impl Encrypt {
    pub fn enabled(&self) -> bool {
        !self.to.is_empty() || !self.to_file.is_empty()
    }

    /// Check the recipients (a usage error names the bad one).
    pub fn check(&self) -> Result<(), Failure> {
        for r in &self.to {
            if !r.starts_with("age1") || r.contains(char::is_whitespace) {
                return Err(Failure::usage(format!(
                    "--encrypt-to {r}: not an age public key (age1...)"
                )));
            }
        }
        for f in &self.to_file {
            self.recipients_in(f)?;
        }
        Ok(())
    }

    fn recipients_in(&self, f: &Path) -> Result<Vec<String>, Failure> {
        let text = std::fs::read_to_string(f)
            .map_err(|e| Failure::usage(format!("--encrypt-to-file {}: {e}", f.display())))?;
        let keys: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
        if keys.is_empty() {
            return Err(Failure::usage(format!(
                "--encrypt-to-file {}: no recipients in it",
                f.display()
            )));
        }
        Ok(keys)
    }

    /// `age -r R.. -R FILE..`: public keys and file paths only.
    pub fn cmd(&self) -> Cmd {
        let mut c = Cmd::new("age");
        for r in &self.to {
            c = c.args(["-r", r]);
        }
        for f in &self.to_file {
            c = c.arg("-R").arg(f);
        }
        c
    }

    /// `encryption` and `recipients` for the manifest.
    pub fn manifest_fields(&self) -> Map<String, Value> {
        let mut all = self.to.clone();
        for f in &self.to_file {
            all.extend(self.recipients_in(f).unwrap_or_default());
        }
        let mut m = Map::new();
        m.insert("encryption".into(), json!(AGE));
        m.insert("recipients".into(), json!(all));
        m
    }
}

/// Whether a backup is encrypted: its manifest says so, or (without one) its name.
pub fn is_encrypted(file: &Path, m: Option<&Manifest>) -> bool {
    match m {
        Some(m) => m.extra.get("encryption").and_then(Value::as_str) == Some(AGE),
        None => file.to_string_lossy().ends_with(SUFFIX),
    }
}

/// The identity an encrypted `file` needs (None: not encrypted); a usage error when it
/// is not given or not there.
fn identity_for<'a>(
    file: &Path,
    m: Option<&Manifest>,
    id: &'a Identity,
) -> Result<Option<&'a Path>, Failure> {
    if !is_encrypted(file, m) {
        return Ok(None);
    }
    match &id.identity_file {
        Some(i) if i.is_file() => Ok(Some(i)),
        Some(i) => Err(Failure::usage(format!(
            "--identity-file {}: no such file",
            i.display()
        ))),
        None => Err(Failure::usage(format!(
            "{} is encrypted with age: give --identity-file FILE (or BERTH_AGE_IDENTITY_FILE)",
            file.display()
        ))),
    }
}

/// For `--check-args`: an encrypted backup file comes with an identity file.
pub fn check_identity(file: &Path, id: &Identity) -> Result<(), Failure> {
    let m = Manifest::read_for(file).ok().flatten();
    identity_for(file, m.as_ref(), id).map(|_| ())
}

/// Where an archive's plaintext comes from; each [`Source::open`] starts a new read.
#[derive(Debug)]
pub enum Source {
    /// A plain archive on disk.
    Plain(PathBuf),
    /// An age-encrypted archive and the identity that opens it.
    Age { file: PathBuf, identity: PathBuf },
    /// A pipe, readable once (the plaintext stream of a backup being encrypted).
    Pipe(Mutex<Option<std::io::PipeReader>>),
}

impl Source {
    /// The source for a backup file; an encrypted one without `--identity-file` is a
    /// usage error naming the flag.
    pub fn for_file(file: &Path, m: Option<&Manifest>, id: &Identity) -> Result<Source> {
        Ok(match identity_for(file, m, id)? {
            None => Source::Plain(file.to_path_buf()),
            Some(i) => Source::Age {
                file: file.to_path_buf(),
                identity: i.to_path_buf(),
            },
        })
    }

    /// Start reading the plaintext.
    pub fn open(&self) -> Result<Opened> {
        match self {
            Source::Plain(p) => {
                let f = File::open(p).map_err(|e| fail!(Backup, "opening {}: {e}", p.display()))?;
                Ok(Opened {
                    input: Some(f.into()),
                    age: None,
                })
            }
            Source::Pipe(r) => {
                let r = r.lock().ok().and_then(|mut r| r.take());
                let r = r.ok_or_else(|| fail!(Backup, "the stream was already read"))?;
                Ok(Opened {
                    input: Some(r.into()),
                    age: None,
                })
            }
            Source::Age { file, identity } => {
                let (r, w) = std::io::pipe()?;
                let cmd = decrypt_cmd(file, identity);
                let (handle, watch) = cmd
                    .start(|e| e.stdout_file(w).stderr_capture().unchecked())
                    .map_err(|e| fail!(Backup, "{e}"))?;
                Ok(Opened {
                    input: Some(r.into()),
                    age: Some((handle, watch, file.clone())),
                })
            }
        }
    }
}

impl Source {
    /// Run `cmd` with the plaintext as its stdin (stdout discarded, stderr captured);
    /// `judge` turns its outcome into the result.
    pub fn feed(
        &self,
        cmd: &Cmd,
        judge: impl FnOnce(Result<std::process::Output, ProcessError>) -> Result<()>,
    ) -> Result<()> {
        let mut input = self.open()?;
        let fd = input.take();
        let out = cmd.run_shaped(|e| e.stdin_file(fd).stdout_null().stderr_capture());
        input.finish(judge(out))
    }
}

/// `age -d -i IDENTITY FILE`: paths only.
pub fn decrypt_cmd(file: &Path, identity: &Path) -> Cmd {
    Cmd::new("age").arg("-d").arg("-i").arg(identity).arg(file)
}

/// A plaintext stream being read; [`Opened::finish`] reports a failed decryption
/// before the consumer's own error (which then only says its input ended early).
pub struct Opened {
    input: Option<OwnedFd>,
    age: Option<(duct::Handle, Watch, PathBuf)>,
}

impl Opened {
    /// The stream, for a child's stdin (or, as a `File`, to read in process).
    pub fn take(&mut self) -> OwnedFd {
        self.input.take().expect("stream taken twice")
    }

    pub fn reader(&mut self) -> File {
        File::from(self.take())
    }

    /// Wait for the decryption and combine its outcome with the consumer's.
    pub fn finish<T>(mut self, res: Result<T>) -> Result<T> {
        self.input.take();
        let Some((handle, watch, file)) = self.age.take() else {
            return res;
        };
        if res.is_err() {
            // The consumer stopped reading: age must not wait on a full pipe.
            watch.terminate();
            let _ = handle.kill();
        }
        let waited = handle.wait().cloned();
        if let Err(e) = watch.finished() {
            return res.and(Err(fail!(Backup, "{e}")));
        }
        match waited {
            Ok(out) if out.status.success() => res,
            Ok(out) => {
                let err = String::from_utf8_lossy(&out.stderr);
                if res.is_err() && (err.contains("broken pipe") || err.is_empty()) {
                    return res;
                }
                Err(fail!(
                    Backup,
                    "decrypting {} failed: {}",
                    file.display(),
                    age_error(&err)
                ))
            }
            Err(e) => res.and(Err(fail!(Backup, "age: {e}"))),
        }
    }
}

/// age's last error line, without its `age: error:` prefix and hints.
pub fn age_error(stderr: &str) -> String {
    let line = stderr
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("age: error:"))
        .map(|l| l.trim_start_matches("age: error:").trim().to_string())
        .unwrap_or_else(|| last_lines(stderr, 1));
    if line.is_empty() {
        "age failed".into()
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_holds_public_keys_and_paths_only() {
        let e = Encrypt {
            to: vec!["age1abc".into(), "age1def".into()],
            to_file: vec![PathBuf::from("/etc/berth/recipients")],
            identity: Identity::default(),
        };
        assert_eq!(
            e.cmd().display(),
            "age -r age1abc -r age1def -R /etc/berth/recipients"
        );
        assert_eq!(
            decrypt_cmd(Path::new("/b/x.dump.age"), Path::new("/k/key.txt")).display(),
            "age -d -i /k/key.txt /b/x.dump.age"
        );
        assert!(e.enabled());
        assert!(!Encrypt::default().enabled());
    }

    #[test]
    fn recipients_are_checked() {
        let bad = Encrypt {
            to: vec!["AGE-SECRET-KEY-1XYZ".into()],
            ..Encrypt::default()
        };
        let err = bad.check().unwrap_err().to_string();
        assert!(err.contains("not an age public key"), "{err}");
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("r.txt");
        std::fs::write(&f, "# shop\nage1one\n\nage1two\n").unwrap();
        let e = Encrypt {
            to: vec!["age1zero".into()],
            to_file: vec![f.clone()],
            ..Encrypt::default()
        };
        e.check().unwrap();
        assert_eq!(
            e.manifest_fields()["recipients"],
            json!(["age1zero", "age1one", "age1two"])
        );
        std::fs::write(&f, "# nothing\n").unwrap();
        assert!(e.check().is_err());
    }

    #[test]
    fn an_encrypted_file_needs_the_identity() {
        let p = Path::new("/b/x.dump.age");
        let err = Source::for_file(p, None, &Identity::default()).unwrap_err();
        assert!(format!("{err:#}").contains("--identity-file"));
        assert!(matches!(
            Source::for_file(Path::new("/b/x.dump"), None, &Identity::default()).unwrap(),
            Source::Plain(_)
        ));
        assert_eq!(
            age_error("age: error: no identity matched any of the recipients\nage: report..."),
            "no identity matched any of the recipients"
        );
    }
}
