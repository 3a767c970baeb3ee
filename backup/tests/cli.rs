//! berth-backup's --check-args: every subcommand parses and checks its arguments exactly
//! as a run does, reading no stdin, running no docker, writing nothing. Backups
//! themselves are tested end to end in tests/tests/backup.rs.

use assert_cmd::Command;

fn check(dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let mut c = Command::cargo_bin("berth-backup").unwrap();
    for (k, _) in std::env::vars() {
        if k.starts_with("BERTH_") {
            c.env_remove(k);
        }
    }
    c.env("HOME", "/nonexistent")
        .env("BERTH_DOCKER", "/nonexistent/docker")
        .env("BERTH_PROJECT_DIR", dir)
        .env("BERTH_PROJECT_NAME", "shop")
        .current_dir(dir)
        .args(args)
        .arg("--check-args")
        .write_stdin("not a document");
    berth_e2e::checked(c.output().unwrap())
}

#[test]
fn check_args_parses_like_the_run_and_touches_nothing() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("x.dump"), b"PGDMP").unwrap();
    std::fs::write(d.path().join("x.dump.age"), b"age-encryption.org/v1").unwrap();
    std::fs::write(d.path().join("key.txt"), b"AGE-SECRET-KEY-1").unwrap();
    for ok in [
        &[
            "pg",
            "--service",
            "db",
            "--verify",
            "restore",
            "--keep-daily",
            "7",
        ][..],
        &["volume", "redis-data", "--stop", "redis"],
        &["verify", "x.dump", "--level", "read"],
        &["pg", "--service", "db", "--encrypt-to", "age1abc,age1def"],
        &["verify", "x.dump.age", "--identity-file", "key.txt"],
        &["prune", "--keep-last", "3"],
        &["list"],
    ] {
        assert_eq!(check(d.path(), ok), (0, String::new()), "{ok:?}");
    }
    for (bad, says) in [
        (
            &["pg", "--service", "db", "--verify", "sure"][..],
            "--verify",
        ),
        (&["pg"], "--service"),
        (
            &["pg", "--service", "db", "--password-file", "nope"],
            "--password-file",
        ),
        (&["pg", "--url", "mysql://x/y"], "--url"),
        (
            &["pg", "--service", "db", "--keep-daily", "many"],
            "--keep-daily",
        ),
        (
            &["restore", "missing.dump", "--service", "db"],
            "missing.dump",
        ),
        (&["prune"], "--keep-last"),
        (
            &["pg", "--service", "db", "--encrypt-to", "ssh-rsa"],
            "--encrypt-to",
        ),
        (
            &["pg", "--service", "db", "--encrypt-to-file", "nope"],
            "--encrypt-to-file",
        ),
        (
            &[
                "pg",
                "--service",
                "db",
                "--encrypt-to",
                "age1abc",
                "--verify",
                "restore",
            ],
            "--identity-file",
        ),
        (&["verify", "x.dump.age"], "--identity-file"),
        (
            &["restore", "x.dump.age", "--service", "db"],
            "--identity-file",
        ),
        (
            &["drill", "x.dump.age", "--service", "db"],
            "--identity-file",
        ),
    ] {
        let (code, err) = check(d.path(), bad);
        assert_eq!(code, 64, "{bad:?}: {err}");
        assert!(err.contains(says), "{bad:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    assert!(!d.path().join(".berth").exists(), "nothing written");
    use clap::CommandFactory;
    berth_core::settings::assert_known_envs(&berth_backup::Cli::command());
}
