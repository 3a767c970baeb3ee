//! Which compose project berth acts on, and what it may write, against the real Docker
//! Engine, Compose v2 and nginx, under load (8 keep-alive clients, tests/src/clients.rs:
//! every third request a POST, none resent):
//!
//! - berth asks compose for the project: the compose file's top-level `name:`, the
//!   project's `.env` `COMPOSE_PROJECT_NAME`, the environment's, with `COMPOSE_FILE` (and
//!   `COMPOSE_PATH_SEPARATOR`) naming an override, all in a directory named otherwise; each
//!   is a whole swap with zero failed requests, and backup `--service` and status find
//!   the same project.
//! - staging beside production in one directory, with its own env file and nginx
//!   directory, deploys without touching production; the shared layout is refused before
//!   anything changes.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use berth_e2e::{bin, free_port, root, Stack};
use serde_json::Value;

const FAST: &[&str] = &["--drain", "1s", "--stop-timeout", "5s", "--timeout", "60s"];

/// Run `cmd` with empty stdin: (exit code, document on stdout, stderr).
fn run(cmd: &mut Command) -> (i32, Value, String) {
    let out: Output = cmd.stdin(Stdio::null()).output().expect("it runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A berth command (and subcommand) for the project in `dir`, naming no project: berth
/// must find it.
fn berth_in(dir: &Path, prog: &str, sub: &[&str]) -> Command {
    let mut c = berth_e2e::berth(prog);
    c.args(sub).arg("--project-dir").arg(dir).current_dir(dir);
    c.env_remove("COMPOSE_PROJECT_NAME")
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROFILES");
    c
}

fn images(project: &str, service: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "--format", "{{.Image}}", "--filter"])
        .arg(format!("label=com.docker.compose.project={project}"))
        .arg("--filter")
        .arg(format!("label=com.docker.compose.service={service}"))
        .output()
        .expect("docker ps");
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `.env` without the lines setting `key`.
fn unset_env(s: &Stack, key: &str) {
    let p = s.dir.join(".env");
    let text: String = read(&p)
        .lines()
        .filter(|l| !l.starts_with(&format!("{key}=")))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(p, text).unwrap();
}

/// Swap web (and worker) to `tag` under load through nginx, with berth finding the
/// project by itself; every request answered by the app, the project's containers swapped.
fn swap_found(s: &Stack, tag: &str, source: &str, env: &[(&str, &str)]) {
    let (out, load) = s.under_clients(|| {
        let mut c = berth_in(&s.dir, "berth-swap", &[]);
        c.envs(env.iter().copied())
            .args(["--tag", tag])
            .args(FAST)
            .args(["--worker", "worker", "web", "worker"]);
        run(&mut c)
    });
    let (code, doc, err) = out;
    assert_eq!(code, 0, "{source}: berth-swap failed: {err}");
    assert_eq!(doc["project"], s.project.as_str(), "{source}: {doc}");
    load.assert_all_answered_by_app(source);
    let want = format!("berth-demo/app:{tag}");
    assert_eq!(
        images(&s.project, "web"),
        std::slice::from_ref(&want),
        "{source}"
    );
    assert_eq!(images(&s.project, "worker"), [want], "{source}");
    let pin = read(&s.dir.join(".env"));
    assert!(
        pin.contains(&format!("BERTH_TAG={tag}\n")),
        "{source}: {pin}"
    );
    assert!(
        pin.contains(&format!("# berth: project={}\n", s.project)),
        "{source}: {pin}"
    );
}

#[test]
fn every_compose_naming_source_finds_the_same_project() {
    let mut s = Stack::new("naming");
    // A directory named otherwise than the project: the directory's name would be "app".
    let dir = s.dir.with_file_name("app");
    std::fs::rename(&s.dir, &dir).unwrap();
    s.dir = dir;
    // COMPOSE_FILE (with its separator) names an override: another port, a web setting.
    let port = free_port();
    std::fs::write(
        s.dir.join("override.yaml"),
        format!(
            "services:\n  proxy:\n    ports: !override\n      - \"127.0.0.1:{port}:80\"\n  \
             web:\n    environment:\n      DEMO_FROM_OVERRIDE: \"yes\"\n"
        ),
    )
    .unwrap();
    s.set_env("COMPOSE_FILE", "compose.yaml;override.yaml");
    s.set_env("COMPOSE_PATH_SEPARATOR", ";");
    s.port = port;
    // v1 on v2's schema (v1 serves on it), as after a deploy's migrate stage: one migrate
    // run of v2's image.
    s.start_on_schema("v1", "v2");

    // 1. The compose file's top-level name:.
    let compose = s.dir.join("compose.yaml");
    let original = read(&compose);
    std::fs::write(&compose, format!("name: {}\n{original}", s.project)).unwrap();
    swap_found(&s, "v2", "name:", &[]);
    let web = s.service_containers("web");
    let env = Command::new("docker")
        .args(["inspect", "--format", "{{json .Config.Env}}", &web[0].0])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&env.stdout).contains("DEMO_FROM_OVERRIDE=yes"),
        "the new web container was not made from COMPOSE_FILE's override"
    );
    std::fs::write(&compose, &original).unwrap();

    // 2. COMPOSE_PROJECT_NAME in the project's .env.
    s.set_env("COMPOSE_PROJECT_NAME", &s.project);
    swap_found(&s, "v1", ".env COMPOSE_PROJECT_NAME", &[]);
    unset_env(&s, "COMPOSE_PROJECT_NAME");

    // 3. COMPOSE_PROJECT_NAME in the environment: backup --service finds the project's
    // database, status its containers.
    let env = [("COMPOSE_PROJECT_NAME", s.project.as_str())];
    let (code, doc, err) = run(berth_in(&s.dir, "berth-backup", &["pg"]).envs(env).args([
        "--service",
        "db",
        "--verify",
        "none",
    ]));
    assert_eq!(code, 0, "berth-backup pg --service db: {err}");
    assert_eq!(doc["project"], s.project.as_str(), "{doc}");
    let out = berth_e2e::run_ok(
        berth_in(&s.dir, "berth-report", &["status"])
            .envs(env)
            .arg("--json"),
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["project"], s.project.as_str(), "{status}");
    assert!(status.to_string().contains("berth-demo/app:v1"), "{status}");
}

/// `docker compose` for staging as an operator runs it: in production's directory, with
/// staging's env file, naming no project (the env file does).
fn staging_compose(dir: &Path, args: &[&str]) {
    let mut c = Command::new("docker");
    // The schema of v2 (v1 serves on it): the deploy below skips its migrate stage.
    c.env("BERTH_TAG", "v2");
    c.args(["compose", "--project-directory"])
        .arg(dir)
        .arg("--env-file")
        .arg(dir.join(".env.staging"))
        .args(args)
        .current_dir(dir)
        .env_remove("COMPOSE_PROJECT_NAME");
    berth_e2e::run_ok(&mut c);
}

#[test]
fn staging_beside_production_cannot_touch_it() {
    let prod = Stack::new("env-prod");
    // Staging's name, port and clean-up; it runs in production's directory.
    let st = Stack::new("env-st");
    let example = read(&prod.dir.join(".env.staging.example"));
    let staging_env: String = example
        .lines()
        .map(|l| {
            if l.starts_with("COMPOSE_PROJECT_NAME=") {
                format!("COMPOSE_PROJECT_NAME={}\n", st.project)
            } else if l.starts_with("DEMO_HTTP_PORT=") {
                format!("DEMO_HTTP_PORT={}\n", st.port)
            } else {
                format!("{l}\n")
            }
        })
        // CI time, as Stack::new sets for production's .env.
        .chain([
            "DEMO_HEALTH_INTERVAL=1s\n".into(),
            "POSTGRES_INITDB_ARGS=--no-sync\n".into(),
        ])
        .collect();
    std::fs::write(prod.dir.join(".env.staging"), staging_env).unwrap();
    // Both environments start at v1, side by side.
    std::thread::scope(|sc| {
        sc.spawn(|| prod.start("v1"));
        staging_compose(&prod.dir, &["up", "-d", "--wait", "db", "redis"]);
        staging_compose(
            &prod.dir,
            &["run", "--rm", "--no-deps", "-T", "web", "migrate"],
        );
        let mut up = Command::new("docker");
        up.args(["compose", "--env-file"])
            .arg(prod.dir.join(".env.staging"))
            .args(["up", "-d", "--wait"])
            .current_dir(&prod.dir)
            .env_remove("COMPOSE_PROJECT_NAME");
        berth_e2e::run_ok(&mut up);
    });

    let pin = prod.dir.join(".env");
    let upstream = prod.dir.join("nginx/berth/upstream-web.conf");
    let (pin_before, upstream_before) = (read(&pin), read(&upstream));
    let ids_before = prod.container_ids();

    // The unsafe layout (the old example: another project name, nothing else): refused
    // before anything changes, by preflight, the swap and maintenance alike.
    let shared = |args: &[&str]| {
        let mut c = berth_in(&prod.dir, "berth-swap", &[]);
        c.args(["-p", &st.project]).args(args);
        run(&mut c)
    };
    for args in [
        &["preflight", "--tag", "v2", "web", "worker"][..],
        &["--tag", "v2", "--worker", "worker", "web", "worker"][..],
        &["maintenance", "on"][..],
    ] {
        let (code, _, err) = shared(args);
        assert_eq!(code, 1, "berth-swap {args:?} in production's files: {err}");
        let line = err.lines().last().unwrap_or_default();
        assert!(
            line.contains(&format!("belongs to compose project {}", prod.project)),
            "{args:?}: {err}"
        );
    }
    assert!(!prod
        .dir
        .join("nginx/berth/server-maintenance.conf")
        .exists());
    assert_eq!(images(&st.project, "web"), ["berth-demo/app:v1"]);

    // The example's layout: scripts/deploy.sh --env staging v2, under load on production.
    let bin_dir = bin("berth-swap").parent().unwrap().to_path_buf();
    let (out, load) = prod.under_clients(|| {
        let mut c = Command::new(root().join("scripts/deploy.sh"));
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().to_string();
            if k.starts_with("BERTH_") || k.starts_with("DEPLOY_") || k.starts_with("COMPOSE_") {
                c.env_remove(k);
            }
        }
        c.args(["--env", "staging", "v2"])
            .current_dir(&prod.dir)
            .env("BERTH_BIN_DIR", &bin_dir)
            .env("BERTH_PROJECT_DIR", &prod.dir)
            .env("DEPLOY_SMOKE_URL", st.url("/smoke"))
            // Cheap: the schema is already at v2's (migrate and backup are tested elsewhere).
            .env("DEPLOY_BACKUP", "none")
            .env("DEPLOY_MIGRATE_CMD", "")
            .env("BERTH_DRAIN", "1s")
            .env("BERTH_STOP_TIMEOUT", "5s")
            .env("BERTH_SWAP_TIMEOUT", "60s")
            .env("HOME", "/nonexistent");
        run(&mut c)
    });
    let (code, _, err) = out;
    assert_eq!(code, 0, "deploy.sh --env staging v2: {err}");
    load.assert_all_answered_by_app("production");
    assert_eq!(
        load.by_version().keys().collect::<Vec<_>>(),
        ["v1"],
        "production served only v1: {}",
        load.summary()
    );
    // Production: the same pin, upstream and containers; staging: v2, pinned in its file.
    assert_eq!(read(&pin), pin_before, "production's .env changed");
    assert_eq!(
        read(&upstream),
        upstream_before,
        "production's upstream changed"
    );
    assert_eq!(prod.container_ids(), ids_before);
    assert_eq!(prod.get("/version").1, "v1");
    assert_eq!(images(&st.project, "web"), ["berth-demo/app:v2"]);
    assert_eq!(st.get("/version").1, "v2");
    let st_pin = read(&prod.dir.join(".env.staging"));
    assert!(st_pin.contains("BERTH_TAG=v2\n"), "{st_pin}");
    assert!(
        st_pin.contains(&format!("# berth: project={}\n", st.project)),
        "{st_pin}"
    );
    let st_upstream = read(&prod.dir.join("nginx/berth-staging/upstream-web.conf"));
    assert!(
        st_upstream.contains(&format!("# berth: project={}\n", st.project)),
        "{st_upstream}"
    );
}
