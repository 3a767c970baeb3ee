//! Off-site copies against a real SFTP server (openssh-server in a container,
//! `berth-fixture/sftp:1`): restic (encrypted snapshots over sftp) and rclone (a plain copy
//! over its own sftp client). Copy, list, check, off-site rotation, restore from a
//! snapshot after the local files are gone, a wrong password, the server down.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use berth_e2e::{free_port, require_images, run_ok, Stack};
use serde_json::Value;

const SFTP_IMAGE: &str = "berth-fixture/sftp:1";

/// An SFTP server container with our key, removed on drop; and the client side: an ssh
/// config naming it `berth-sftp`, an `ssh` on PATH that reads that config (restic runs
/// `ssh` from PATH; ssh takes its config from the real home, not $HOME), a restic
/// password file and an rclone remote `off` (by rclone's environment config).
struct Sftp {
    name: String,
    dir: tempfile::TempDir,
}

impl Sftp {
    fn start(project: &str) -> Sftp {
        require_images(&[SFTP_IMAGE]);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let d = d.as_path();
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join("key")),
        );
        std::fs::copy(d.join("key.pub"), d.join("authorized_keys")).unwrap();
        let port = free_port();
        let name = format!("{project}-sftp");
        let sftp = Sftp { name, dir };
        run_ok(
            Command::new("docker")
                .args(["run", "-d", "--name", &sftp.name, "-p"])
                .arg(format!("127.0.0.1:{port}:22"))
                .arg("-v")
                .arg(format!(
                    "{}:/root/.ssh/authorized_keys:ro",
                    d.join("authorized_keys").display()
                ))
                .arg(SFTP_IMAGE),
        );
        std::fs::write(
            d.join("ssh_config"),
            format!(
                "Host berth-sftp\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {}\n  \
                 StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  ConnectTimeout 5\n",
                d.join("key").display()
            ),
        )
        .unwrap();
        std::fs::create_dir(d.join("bin")).unwrap();
        let ssh = d.join("bin/ssh");
        std::fs::write(
            &ssh,
            format!(
                "#!/bin/sh\nexec /usr/bin/ssh -F {} \"$@\"\n",
                d.join("ssh_config").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(d.join("restic-pw"), "correct horse battery staple\n").unwrap();
        std::fs::write(d.join("wrong-pw"), "wrong\n").unwrap();
        // sshd is up when a login works (bounded).
        for i in 0.. {
            let ok = sftp
                .cmd("ssh")
                .args(["berth-sftp", "true"])
                .output()
                .unwrap()
                .status
                .success();
            if ok {
                break;
            }
            assert!(
                i < 100,
                "the SFTP server did not accept a login within 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        sftp
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A command with the client side in its environment.
    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.env("PATH", path)
            .env("RCLONE_CONFIG_OFF_TYPE", "sftp")
            .env("RCLONE_CONFIG_OFF_HOST", "127.0.0.1")
            .env("RCLONE_CONFIG_OFF_PORT", self.port().to_string())
            .env("RCLONE_CONFIG_OFF_USER", "root")
            .env("RCLONE_CONFIG_OFF_KEY_FILE", self.path("key"))
            .env("RCLONE_CONFIG_OFF_SHELL_TYPE", "unix")
            .env("RCLONE_CONFIG", self.path("rclone.conf"))
            .stdin(Stdio::null());
        c
    }

    fn port(&self) -> u16 {
        let cfg = std::fs::read_to_string(self.path("ssh_config")).unwrap();
        cfg.lines()
            .find_map(|l| l.trim().strip_prefix("Port "))
            .unwrap()
            .parse()
            .unwrap()
    }
}

impl Drop for Sftp {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.name])
            .output();
    }
}

const RESTIC: &str = "restic:sftp:berth-sftp:/srv/restic";
const RCLONE: &str = "rclone:off:/srv/plain";

fn bb(s: &Stack, sftp: &Sftp, args: &[&str]) -> Output {
    let mut c = sftp.cmd(berth_e2e::bin("berth-backup"));
    c.args(args)
        .arg("--project-dir")
        .arg(&s.dir)
        .args(["-p", &s.project])
        .current_dir(&s.dir);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BERTH_") || k.to_string_lossy().starts_with("RESTIC_") {
            c.env_remove(&k);
        }
    }
    c.output().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn detail(o: &Output) -> Value {
    let d: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", err(o)));
    d["stages"].as_array().unwrap().last().unwrap()["detail"].clone()
}

#[test]
fn copies_to_restic_and_rclone_over_sftp_list_check_rotate_and_restore_from_a_snapshot() {
    let t0 = std::time::Instant::now();
    let s = Stack::new("offsite");
    // The database and the SFTP server start side by side (CI time).
    let sftp = std::thread::scope(|sc| {
        let sftp = sc.spawn(|| Sftp::start(&s.project));
        s.compose_ok(&["up", "-d", "--wait", "db"]);
        s.compose_ok(&["run", "--rm", "--no-deps", "-T", "web", "migrate"]);
        sftp.join().expect("the SFTP server starts")
    });
    eprintln!("database and SFTP server up: {:?}", t0.elapsed());
    let pw = sftp.path("restic-pw");
    let pw = pw.to_str().unwrap();
    run_ok(
        sftp.cmd("restic")
            .args(["-r", "sftp:berth-sftp:/srv/restic", "init"])
            .env("RESTIC_PASSWORD_FILE", pw),
    );

    // A backup copied to both; the document records the snapshot; nothing secret shows.
    // `pg --service db` with the restic password file `pw` and `rest` (destinations...).
    let pg = |pw: &str, rest: &[&str]| {
        let mut a = vec!["pg", "--service", "db", "--restic-password-file", pw];
        a.extend_from_slice(rest);
        bb(&s, &sftp, &a)
    };
    let backup = |extra: &[&str]| {
        pg(
            pw,
            &[&["--copy-to", RESTIC, "--copy-to", RCLONE], extra].concat(),
        )
    };
    let o = backup(&[]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    let d = detail(&o);
    let copies = d["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 2, "{d}");
    assert!(copies.iter().all(|c| c.get("error").is_none()), "{d}");
    let snap = copies[0]["snapshot"].as_str().unwrap().to_string();
    let file = PathBuf::from(d["file"].as_str().unwrap());
    let name = file.file_name().unwrap().to_str().unwrap().to_string();
    assert!(!err(&o).contains("correct horse"));

    // list --remote: the snapshot and the plain copy, by name.
    let o = bb(
        &s,
        &sftp,
        &[
            "list",
            "--remote",
            RESTIC,
            "--restic-password-file",
            pw,
            "--json",
        ],
    );
    assert_eq!(code(&o), 0, "{}", err(&o));
    let l: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(l.as_array().unwrap().len(), 1, "{l}");
    assert_eq!(l[0]["file"], name.as_str());
    assert!(
        snap.starts_with(l[0]["snapshot"].as_str().unwrap()),
        "{l} vs {snap}"
    );
    let o = bb(&s, &sftp, &["list", "--remote", RCLONE, "--json"]);
    let l: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", err(&o)));
    assert_eq!(l.as_array().unwrap().len(), 1, "{l}");
    assert_eq!(l[0]["file"], name.as_str());

    // copy: an existing backup to a new destination (exit 0, the copy listed); with
    // `--engine swarm` too (copy runs no docker: it works the same on a Swarm manager).
    for (dest, engine) in [
        ("rclone:off:/srv/second", "compose"),
        ("rclone:off:/srv/third", "swarm"),
    ] {
        let file = file.to_str().unwrap();
        let args = ["copy", file, "--copy-to", dest, "--engine", engine];
        let o = bb(&s, &sftp, &args);
        assert_eq!(code(&o), 0, "{engine}: {}", err(&o));
        let o = bb(&s, &sftp, &["list", "--remote", dest, "--json"]);
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(&name),
            "{engine}: {}",
            err(&o)
        );
    }

    // verify --remote: restic check reads the data back.
    let o = bb(
        &s,
        &sftp,
        &[
            "verify",
            "--remote",
            RESTIC,
            "--restic-password-file",
            pw,
            "--read-data-subset",
            "100%",
        ],
    );
    assert_eq!(code(&o), 0, "{}", err(&o));

    // A second backup with --keep-last 1: locally and off-site only the newest stays.
    s.sql("INSERT INTO items (name) VALUES ('second')");
    let o = backup(&["--keep-last", "1"]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    let d2 = detail(&o);
    assert_eq!(d2["copies"][0]["forgotten"], 1, "{d2}");
    let snap2 = d2["copies"][0]["snapshot"].as_str().unwrap().to_string();
    let o = bb(
        &s,
        &sftp,
        &[
            "list",
            "--remote",
            RESTIC,
            "--restic-password-file",
            pw,
            "--json",
        ],
    );
    let l: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(l.as_array().unwrap().len(), 1, "{l}");
    assert!(snap2.starts_with(l[0]["snapshot"].as_str().unwrap()), "{l}");
    let rows = s.sql("SELECT count(*) FROM items");

    // The VPS lost its disk: the local backups are gone. Restore from the snapshot.
    let local = PathBuf::from(d2["file"].as_str().unwrap());
    std::fs::remove_file(&local).unwrap();
    std::fs::remove_file(format!("{}.json", local.display())).unwrap();
    s.sql("INSERT INTO items (name) VALUES ('after the backup')");
    let o = bb(
        &s,
        &sftp,
        &[
            "restore",
            &snap2,
            "--from",
            RESTIC,
            "--restic-password-file",
            pw,
            "--service",
            "db",
            "--yes",
            "--no-safety-backup",
        ],
    );
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert_eq!(s.sql("SELECT count(*) FROM items"), rows);
    assert!(
        local.is_file(),
        "the fetched backup is a local backup again"
    );

    // A wrong password: a warning, the local backup is good (0); with --require-copy 5.
    let wrong = sftp.path("wrong-pw");
    let wrong = wrong.to_str().unwrap();
    let with_wrong = |extra: &[&str]| pg(wrong, &[&["--copy-to", RESTIC], extra].concat());
    let o = with_wrong(&[]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    let d = detail(&o);
    assert!(
        d["copies"][0]["error"].as_str().unwrap().contains("restic"),
        "{d}"
    );
    assert!(
        err(&o).contains("warning: the off-site copy to restic:sftp:berth-sftp:/srv/restic failed"),
        "{}",
        err(&o)
    );
    let o = with_wrong(&["--require-copy"]);
    assert_eq!(code(&o), 5, "{}", err(&o));
    assert!(
        Path::new(detail(&o)["file"].as_str().unwrap()).is_file(),
        "the local backup stays"
    );

    // The server down: the copy fails as a warning, listing fails with 5, bounded.
    run_ok(Command::new("docker").args(["stop", "-t", "1", &sftp.name]));
    let o = backup(&[]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    let d = detail(&o);
    assert!(
        d["copies"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c.get("error").is_some()),
        "{d}"
    );
    let o = bb(
        &s,
        &sftp,
        &["list", "--remote", RESTIC, "--restic-password-file", pw],
    );
    assert_eq!(code(&o), 5, "{}", err(&o));
    assert_eq!(
        err(&o).lines().filter(|l| l.contains("error:")).count(),
        1,
        "{}",
        err(&o)
    );
    // Asked for by name, a failed copy is the answer: 5.
    let o = bb(
        &s,
        &sftp,
        &["copy", local.to_str().unwrap(), "--copy-to", RCLONE],
    );
    assert_eq!(code(&o), 5, "{}", err(&o));
    eprintln!("whole test: {:?}", t0.elapsed());
}
