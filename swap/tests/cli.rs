//! berth-swap's command line without Docker: usage errors (64, never clap's 2), bad
//! documents (65), failures passed through, docker unreachable (1). Swaps themselves are
//! tested end to end in tests/tests/swap.rs.

use assert_cmd::Command;
use serde_json::{json, Value};

fn cmd(dir: &std::path::Path) -> Command {
    let mut c = Command::cargo_bin("berth-swap").unwrap();
    for (k, _) in std::env::vars() {
        if k.starts_with("BERTH_") {
            c.env_remove(k);
        }
    }
    c.env("HOME", "/nonexistent")
        .current_dir(dir)
        .args(["--project-dir"])
        .arg(dir)
        .args(["-p", "shop"]);
    c
}

fn code(c: &mut Command, stdin: &str) -> (i32, String, String) {
    let out = c.write_stdin(stdin.to_string()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn usage_errors_exit_64() {
    let d = tempfile::tempdir().unwrap();
    for args in [
        vec!["--tag", "a:b", "web"],       // not a tag
        vec!["web"],                       // no tag at all
        vec!["--tag", "v2", "web", "web"], // twice
        vec!["--tag", "v2", "--ready-path", "x", "web"],
        vec!["--tag", "v2", "--drain", "soon", "web"],
        vec!["maintenance", "on", "--proxy", "none"],
        vec!["maintenance", "sideways"],
        vec!["--tag", "v2", "--haproxy-socket", "admin.sock", "web"],
        vec![
            "--check-args",
            "--tag",
            "v2",
            "--haproxy-state-file",
            "state",
            "web",
        ],
        vec![
            "maintenance",
            "on",
            "--proxy",
            "haproxy",
            "--haproxy-map",
            "",
        ],
    ] {
        let (c, _, err) = code(cmd(d.path()).args(&args), "");
        assert_eq!(c, 64, "{args:?}: {err}");
        assert!(err.starts_with("berth-swap: error: "), "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    // No service named and no compose file to find the services in: a preflight error.
    let (c, _, err) = code(cmd(d.path()).args(["--tag", "v2"]), "");
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("compose configuration is invalid"), "{err}");
}

/// `--proxy host` wrote container addresses that a reboot changes: it is gone, and saying
/// it (flag, BERTH_PROXY, a subcommand, --check-args) is one line naming what to use.
#[test]
fn proxy_host_is_refused_with_what_to_use_instead() {
    let d = tempfile::tempdir().unwrap();
    for (args, env) in [
        (vec!["--proxy", "host", "--tag", "v2", "web"], None),
        (vec!["maintenance", "on", "--proxy", "host"], None),
        (vec!["--tag", "v2", "web"], Some("host")),
        (vec!["--check-args", "--tag", "v2", "web"], Some("host")),
    ] {
        let mut c = cmd(d.path());
        if let Some(v) = env {
            c.env("BERTH_PROXY", v);
        }
        let (c, out, err) = code(c.args(&args), "");
        assert_eq!(c, 64, "{args:?}: {err}");
        assert!(out.is_empty(), "{out}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains("--proxy host was removed"), "{err}");
        assert!(err.contains("docs/proxies.md#host-nginx-certbot"), "{err}");
        assert_eq!(err.contains("(from BERTH_PROXY)"), env.is_some(), "{err}");
    }
}

#[test]
fn docker_unreachable_is_a_preflight_failure() {
    let d = tempfile::tempdir().unwrap();
    let (c, out, err) = code(
        cmd(d.path())
            .env("BERTH_DOCKER", "/nonexistent/docker")
            .args(["--tag", "v2", "web"]),
        "",
    );
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("docker daemon is not reachable"), "{err}");
    let doc: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(doc["stages"][0]["stage"], "swap");
    assert_eq!(doc["stages"][0]["exit_code"], 1);
}

#[test]
fn documents_bad_and_failed() {
    let d = tempfile::tempdir().unwrap();
    let (c, _, _) = code(cmd(d.path()).args(["--tag", "v2", "web"]), "[1]");
    assert_eq!(c, 65);
    let failed = json!({"schema": "berth/1", "deploy_id": "x-v2", "project": "shop",
        "tag": "v2", "created_at": "2026-11-22T03:15:00.000Z",
        "stages": [{"stage": "backup", "status": "failed", "started_at": "2026-11-22T03:15:00.000Z",
                    "duration_ms": 1, "exit_code": 5}]});
    let (c, out, _) = code(cmd(d.path()).arg("web"), &failed.to_string());
    assert_eq!(c, 5);
    let back: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(back["stages"].as_array().unwrap().len(), 1);
}

#[test]
fn converge_with_no_interrupted_swap_changes_nothing() {
    // No journal: nothing to do, and no docker is needed to know it.
    let d = tempfile::tempdir().unwrap();
    let (c, out, err) = code(
        cmd(d.path())
            .env("BERTH_DOCKER", "/nonexistent/docker")
            .arg("--converge"),
        "",
    );
    assert_eq!(c, 0, "{err}");
    assert!(err.contains("nothing to converge"), "{err}");
    let doc: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(doc["stages"][0]["stage"], "converge");
    assert_eq!(doc["stages"][0]["detail"]["converged"], json!([]));
    // Services with --converge are a usage error.
    let (c, _, _) = code(cmd(d.path()).args(["--converge", "web"]), "");
    assert_eq!(c, 64);
}

#[test]
fn check_args_parses_like_the_run_and_touches_neither_stdin_nor_docker() {
    let d = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = cmd(d.path());
        c.env("BERTH_DOCKER", "/nonexistent/docker");
        for (k, v) in env {
            c.env(k, v);
        }
        c.arg("--check-args").args(args);
        let (code, out, err) = code(&mut c, "not a document");
        assert_eq!(out, "", "no document is written");
        (code, err)
    };
    for ok in [
        &["--tag", "v2", "--worker", "worker", "web", "worker"][..],
        &["preflight", "--tag", "v2", "web", "--", "./check.sh"],
        &["pull", "--tag", "v2", "web"],
        &["maintenance", "on", "--message", "back soon"],
    ] {
        assert_eq!(run(ok, &[]), (0, String::new()), "{ok:?}");
    }
    for (bad, env, says) in [
        (
            &["--tag", "a b", "web"][..],
            &[][..],
            "not a valid image tag",
        ),
        (&["--tag", "v2", "we b"], &[], "SERVICE"),
        (&["pull", "--tag", "v2", "web", "web"], &[], "named twice"),
        (&["--tag", "v2", "--drain", "5", "web"], &[], "--drain"),
        (
            &["--tag", "v2", "web"],
            &[("BERTH_SWAP_TIMEOUT", "60")],
            "(from BERTH_SWAP_TIMEOUT)",
        ),
        (&["maintenance", "on", "--except", "x"], &[], "--except"),
    ] {
        let (code, err) = run(bad, env);
        assert_eq!(code, 64, "{bad:?}: {err}");
        assert!(err.contains(says), "{bad:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    use clap::CommandFactory;
    berth_core::settings::assert_known_envs(&berth_swap::Cli::command());
}

/// Without -p, the project is the name compose resolves (asked once, without -p, with
/// the same --env-file), not the directory's: a stub docker answers `config` only.
#[test]
fn the_project_is_the_name_compose_resolves() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("calls");
    let stub = d.path().join("docker");
    std::fs::write(
        &stub,
        format!(
            "#!/bin/sh\necho \"$*\" >>{}\ncase \"$*\" in\n*' config --format json') echo '{{\"name\": \"from-compose\", \"services\": {{}}}}' ;;\n\
             *) echo 'Cannot connect to the Docker daemon' >&2; exit 1 ;;\nesac\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(d.path().join(".env.staging"), "X=1\n").unwrap();
    let mut c = Command::cargo_bin("berth-swap").unwrap();
    for (k, _) in std::env::vars() {
        if k.starts_with("BERTH_") {
            c.env_remove(k);
        }
    }
    c.env("HOME", "/nonexistent")
        .env("BERTH_DOCKER", &stub)
        .env("BERTH_ENV_FILE", ".env.staging")
        .current_dir(d.path())
        .arg("--project-dir")
        .arg(d.path())
        .args(["--tag", "v2", "web"]);
    let (code, out, err) = code(&mut c, "");
    assert_eq!(code, 1, "{err}");
    let doc: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(doc["project"], "from-compose", "{err}");
    let calls = std::fs::read_to_string(&log).unwrap();
    let first = calls.lines().next().unwrap();
    let env_file = d.path().join(".env.staging");
    assert_eq!(
        first,
        format!(
            "compose --project-directory {} --env-file {} config --format json",
            d.path().display(),
            env_file.display()
        )
    );
    // Without services: the configuration that named the project is the one the swap
    // reads its services from (compose is asked once more only for the services that
    // use the tag variable, with a probe value for it).
    std::fs::remove_file(&log).unwrap();
    let mut all = Command::cargo_bin("berth-swap").unwrap();
    for (k, _) in std::env::vars() {
        if k.starts_with("BERTH_") {
            all.env_remove(k);
        }
    }
    all.env("HOME", "/nonexistent")
        .env("BERTH_DOCKER", &stub)
        .current_dir(d.path())
        .arg("--project-dir")
        .arg(d.path())
        .args(["--tag", "v2"]);
    let (code, _, err) = self::code(&mut all, "");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no service's image uses"), "{err}");
    let calls = std::fs::read_to_string(&log).unwrap();
    let configs = calls
        .lines()
        .filter(|l| l.ends_with(" config --format json"));
    assert_eq!(configs.count(), 2, "{calls}");
    // A missing env file is a usage error, before anything runs.
    let (code, _, err) = self::code(c.env("BERTH_ENV_FILE", "nope.env"), "");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--env-file"), "{err}");
}

/// BERTH_APP_PORT is the port's one name (berth-migrate reads it too); BERTH_PORT, the old
/// one, still works with a warning, and loses to the new one.
#[test]
fn the_app_port_has_one_name_and_the_old_one_still_works() {
    let d = tempfile::tempdir().unwrap();
    let run = |env: &[(&str, &str)]| {
        let mut c = cmd(d.path());
        for (k, v) in env {
            c.env(k, v);
        }
        c.args(["--check-args", "--tag", "v2", "web"]);
        let (code, _, err) = code(&mut c, "");
        (code, err)
    };
    let (c, err) = run(&[("BERTH_APP_PORT", "0")]);
    assert_eq!(c, 64, "{err}");
    assert!(err.contains("--port 0"), "{err}");
    let (c, err) = run(&[("BERTH_PORT", "0")]);
    assert_eq!(c, 64, "{err}");
    assert!(
        err.contains("BERTH_PORT is deprecated: set BERTH_APP_PORT"),
        "{err}"
    );
    assert!(err.contains("--port 0"), "{err}");
    let (c, err) = run(&[("BERTH_PORT", "0"), ("BERTH_APP_PORT", "8080")]);
    assert_eq!(c, 0, "{err}");
    assert!(err.contains("BERTH_PORT is ignored"), "{err}");
}

/// A service that publishes a fixed host port cannot run twice: preflight and the swap
/// itself say so (exit 1, one line), before anything changes. A stub docker answers the
/// version, compose's version and its configuration; it logs every call.
#[test]
fn a_published_host_port_is_refused_before_anything_changes() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("calls");
    let stub = d.path().join("docker");
    let cfg = json!({"name": "shop", "services": {
        "web": {"image": "shop/web:v2",
                "ports": [{"mode": "ingress", "target": 8080, "published": "8000", "protocol": "tcp"}]},
        "worker": {"image": "shop/web:v2"},
    }});
    std::fs::write(
        &stub,
        format!(
            "#!/bin/sh\necho \"$*\" >>{}\ncase \"$*\" in\n\
             'version --format'*) echo 27.0.0 ;;\n\
             'compose version --short') echo 2.29.0 ;;\n\
             *' config --format json') echo '{cfg}' ;;\n\
             *) echo \"unexpected: $*\" >&2; exit 1 ;;\nesac\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let expected = "service web publishes host port 8000->8080, so a second container of it \
                    cannot start beside the running one during a swap: publish the port on the \
                    proxy service instead and give web only `expose:` (or no ports)";
    for args in [
        &["--tag", "v2", "preflight", "web", "worker"][..],
        &["--tag", "v2", "--worker", "worker", "web", "worker"],
    ] {
        let mut c = cmd(d.path());
        c.env("BERTH_DOCKER", &stub).args(args);
        let (code, out, err) = code(&mut c, "");
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
        let doc: Value = serde_json::from_str(out.trim()).unwrap();
        let last = &doc["stages"].as_array().unwrap().last().unwrap();
        assert_eq!(last["exit_code"], 1, "{doc}");
        // Nothing ran but the version and configuration queries.
        let calls = std::fs::read_to_string(&log).unwrap();
        assert!(
            calls.lines().all(|l| l.starts_with("version")
                || l.starts_with("compose version")
                || l.ends_with("config --format json")),
            "{args:?}: {calls}"
        );
        std::fs::remove_file(&log).unwrap();
    }
}
