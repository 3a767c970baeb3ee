//! Pull by tag from a real private registry (Debian's docker-registry, Distribution 2.8,
//! on loopback, htpasswd auth, `docker login` done beforehand in a temporary
//! DOCKER_CONFIG), as on a server whose CI pushes the images; and children that hang
//! (a BERTH_DOCKER wrapper that never answers one call) are killed with their process
//! group at their deadline, the old version serving.
//!
//! One stack and one registry for every check, in the order a deploy meets them.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_e2e::{root, run_ok, Hang, Stack};
use serde_json::Value;

const USER: &str = "berth-ci";
/// Keep-alive clients (GET and POST) through nginx this long before and after each command
/// under load.
const MARGIN: Duration = Duration::from_millis(500);

/// The registry, its credentials and the images pushed to it; dropping it stops the
/// registry and removes every local tag of its repository.
struct Registry {
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`
    addr: String,
    /// `127.0.0.1:PORT/<unique>/app`
    repo: String,
    /// A DOCKER_CONFIG holding a login to it (the machine's ~/.docker is never touched).
    config: PathBuf,
}

fn registry_sh(args: &[&str]) -> Output {
    run_ok(Command::new(root().join("scripts/lib/registry.sh")).args(args))
}

fn unique() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{:x}{:05x}", std::process::id(), t.subsec_micros())
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("berth-registry-")
            .tempdir()
            .unwrap();
        let password = format!("pw-{}", unique());
        // The password on stdin (-i), never in argv.
        let mut child = Command::new("htpasswd")
            .args(["-iBn", USER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("htpasswd (apache2-utils; scripts/setup.sh installs it)");
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "htpasswd failed");
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, &out.stdout).unwrap();
        let data = dir.path().join("reg");
        let data_s = data.to_str().unwrap();
        registry_sh(&["start", data_s, "0", htpasswd.to_str().unwrap()]);
        let port = String::from_utf8(registry_sh(&["port", data_s]).stdout).unwrap();
        let addr = format!("127.0.0.1:{}", port.trim());
        let config = dir.path().join("docker-config");
        std::fs::create_dir_all(&config).unwrap();
        let reg = Registry {
            repo: format!("{addr}/be{}/app", unique()),
            addr,
            config,
            dir,
        };
        let mut login = reg.docker(&["login", &reg.addr, "-u", USER, "--password-stdin"]);
        let mut child = login.stdin(Stdio::piped()).spawn().unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        assert!(child.wait().unwrap().success(), "docker login failed");
        reg
    }

    fn docker(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_CONFIG", &self.config).args(args);
        c
    }

    fn image(&self, tag: &str) -> String {
        format!("{}:{tag}", self.repo)
    }

    /// Push `source` (a shared demo image, left as it is) as `<repo>:<tag>`.
    fn push(&self, source: &str, tag: &str) {
        run_ok(&mut self.docker(&["tag", source, &self.image(tag)]));
        run_ok(&mut self.docker(&["push", "--quiet", &self.image(tag)]));
    }

    /// Drop the local tag (the image stays in the registry).
    fn forget(&self, tag: &str) {
        run_ok(&mut self.docker(&["rmi", &self.image(tag)]));
    }

    fn data(&self) -> String {
        self.dir.path().join("reg").to_str().unwrap().to_string()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/lib/registry.sh"))
            .args(["stop", &self.data()])
            .output();
        if let Ok(out) = Command::new("docker")
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}", &self.repo])
            .output()
        {
            let tags: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            if !tags.is_empty() {
                let _ = Command::new("docker").arg("rmi").args(&tags).output();
            }
        }
    }
}

/// A TCP server that accepts connections and never answers: a registry that stalls.
struct Stall {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Stall {
    fn start() -> Stall {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => held.push(conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Stall { port, stop }
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A berth command on the stack with the registry login: (exit code, document, stderr).
fn berth(s: &Stack, reg: &Registry, prog: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    berth_in(s, reg, prog, args, env, None)
}

fn berth_in(
    s: &Stack,
    reg: &Registry,
    prog: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&Value>,
) -> Run {
    let mut c = s.berth(prog);
    c.env("DOCKER_CONFIG", &reg.config)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    if let Some(doc) = stdin {
        writeln!(child.stdin.take().unwrap(), "{doc}").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        doc: serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        err: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

struct Run {
    code: i32,
    doc: Value,
    err: String,
}

impl Run {
    /// The one `error:` line.
    fn error_line(&self) -> &str {
        let lines: Vec<&str> = self
            .err
            .lines()
            .filter(|l| l.contains(": error: "))
            .collect();
        assert_eq!(lines.len(), 1, "one error line expected:\n{}", self.err);
        eprintln!("{}", lines[0]);
        lines[0]
    }
}

fn stage<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["stages"]
        .as_array()
        .and_then(|a| a.iter().rev().find(|st| st["stage"] == name))
        .unwrap_or_else(|| panic!("no stage {name} in {doc}"))
}

fn versions(s: &Stack, service: &str) -> Vec<String> {
    s.service_containers(service)
        .into_iter()
        .map(|(_, image)| image)
        .collect()
}

/// A swap (or rollback) of web and worker with short timings, and `extra` options.
fn swap_args<'a>(first: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = first.to_vec();
    v.extend_from_slice(&["--drain", "1s", "--stop-timeout", "5s", "--timeout", "30s"]);
    v.extend_from_slice(extra);
    v.extend_from_slice(&["--worker", "worker", "web", "worker"]);
    v
}

#[test]
fn pull_by_tag_from_a_private_registry_and_bounded_children() {
    let reg = Registry::start();
    let (t1, t2) = (format!("{}a1", unique()), format!("{}b2", unique()));
    reg.push("berth-demo/app:v1", &t1);
    reg.push("berth-demo/app:v2", &t2);
    reg.forget(&t2);

    // The demo with web and worker from the registry: image: ${APP_REGISTRY}/.../app:TAG
    let s = Stack::new("registry");
    let path = reg.repo.trim_start_matches(&format!("{}/", reg.addr));
    let compose = std::fs::read_to_string(s.dir.join("compose.yaml")).unwrap();
    let rewritten = compose.replace(
        "image: berth-demo/app:",
        &format!("image: ${{APP_REGISTRY:?}}/{path}:"),
    );
    assert_ne!(compose, rewritten);
    std::fs::write(s.dir.join("compose.yaml"), rewritten).unwrap();
    s.set_env("APP_REGISTRY", &reg.addr);
    s.start(&t1);
    let ids = s.container_ids();
    let unchanged = |what: &str| {
        assert_eq!(s.container_ids(), ids, "{what}: containers changed");
        assert_eq!(s.env_value("BERTH_TAG"), Some(t1.clone()), "{what}");
        assert_eq!(versions(&s, "web"), [reg.image(&t1)], "{what}");
    };

    // Wrong credentials: 2, one line naming the registry and the tag, nothing changed.
    let wrong = reg.dir.path().join("wrong-config");
    std::fs::create_dir_all(&wrong).unwrap();
    std::fs::write(
        wrong.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"YmVydGgtY2k6bm90LXRoZS1wYXNzd29yZA=="}}}}}}"#,
            reg.addr
        ),
    )
    .unwrap();
    let r = berth(
        &s,
        &reg,
        "berth-swap",
        &["pull", "--tag", &t2],
        &[("DOCKER_CONFIG", wrong.to_str().unwrap())],
    );
    assert_eq!(r.code, 2, "{}", r.err);
    let line = r.error_line();
    assert!(line.contains(&reg.image(&t2)), "{line}");
    assert!(
        line.contains("unauthorized") || line.contains("authentication"),
        "{line}"
    );
    unchanged("wrong credentials");

    // A tag that is not there: 2, named.
    let r = berth(
        &s,
        &reg,
        "berth-swap",
        &["pull", "--tag", "nosuchtag0"],
        &[],
    );
    assert_eq!(r.code, 2, "{}", r.err);
    assert!(
        r.error_line().contains(&reg.image("nosuchtag0")),
        "{}",
        r.err
    );
    unchanged("missing tag");

    // A registry that accepts and never answers: bounded by --pull-timeout, 2.
    let stall = Stall::start();
    let stalled = format!("127.0.0.1:{}", stall.port);
    let r = berth(
        &s,
        &reg,
        "berth-swap",
        &["pull", "--tag", &t2, "--pull-timeout", "3s"],
        &[("APP_REGISTRY", &stalled)],
    );
    drop(stall);
    assert_eq!(r.code, 2, "{}", r.err);
    let line = r.error_line();
    assert!(
        line.contains(&format!("{stalled}/{path}:{t2}"))
            && line.contains("docker compose pull --quiet web did not finish within 3s"),
        "{line}"
    );
    unchanged("stalled registry");

    // The pull stage gets the new tag, for the services that use it only.
    let pulled = berth(&s, &reg, "berth-swap", &["pull", "--tag", &t2], &[]);
    assert_eq!(pulled.code, 0, "{}", pulled.err);
    let detail = &stage(&pulled.doc, "pull")["detail"]["services"];
    let names: Vec<&str> = detail
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web", "worker"], "{detail}");
    assert_eq!(detail[0]["pulled"], true, "{detail}");
    assert_eq!(
        detail[1]["pulled"], false,
        "same image, already here: {detail}"
    );
    unchanged("pull");
    // v2's migration, as the deploy's migrate stage would run it.
    s.migrate(&t2);

    // A docker call that hangs before the switch (compose up of the new containers):
    // killed with its process group at --command-timeout, 3, the old version serving,
    // nothing of the wrapper left, the lock released.
    let hang = Hang::new(reg.dir.path(), "--scale");
    let (r, load) = s.under_clients_for(MARGIN, || {
        berth_in(
            &s,
            &reg,
            "berth-swap",
            &swap_args(&["--tag", &t2], &["--command-timeout", "5s"]),
            &[("BERTH_DOCKER", hang.path.to_str().unwrap())],
            Some(&pulled.doc),
        )
    });
    assert_eq!(r.code, 3, "{}", r.err);
    assert!(
        r.error_line()
            .contains(" compose up -d --no-deps --no-recreate --scale web=2 web")
            && r.error_line().contains("did not finish within 5s"),
        "{}",
        r.err
    );
    assert_eq!(hang.sleepers(), [""; 0], "the hung call's process survived");
    load.assert_all_answered_by_app("hung compose up");
    assert_eq!(load.by_version().keys().collect::<Vec<_>>(), ["v1"]);
    unchanged("hung compose up");

    // The deploy: the swap to the pulled tag under load, 0 failed requests.
    let (r, load) = s.under_clients_for(MARGIN, || {
        let args = swap_args(&["--tag", &t2], &[]);
        berth_in(&s, &reg, "berth-swap", &args, &[], Some(&pulled.doc))
    });
    assert_eq!(r.code, 0, "{}", r.err);
    load.assert_all_answered_by_app("swap to the pulled tag");
    assert_eq!(versions(&s, "web"), [reg.image(&t2)]);
    assert_eq!(berth_e2e::get(&s.url("/version")).unwrap().1, "v2");

    // Rollback to a release whose image was pruned here: pulled again, under load.
    reg.forget(&t1);
    let rb = swap_args(&["--to", &t1], &[]);
    let (r, load) = s.under_clients_for(MARGIN, || berth(&s, &reg, "berth-rollback", &rb, &[]));
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(
        r.err.contains(&format!("pulling {}", reg.image(&t1))),
        "{}",
        r.err
    );
    load.assert_all_answered_by_app("rollback, image pulled again");
    assert_eq!(versions(&s, "web"), [reg.image(&t1)]);

    // The registry down: 2, named, nothing changed.
    reg.forget(&t2);
    registry_sh(&["stop", &reg.data()]);
    let ids = s.container_ids();
    let r = berth(&s, &reg, "berth-swap", &["pull", "--tag", &t2], &[]);
    assert_eq!(r.code, 2, "{}", r.err);
    assert!(r.error_line().contains(&reg.image(&t2)), "{}", r.err);
    assert_eq!(s.container_ids(), ids);
    assert_eq!(s.env_value("BERTH_TAG"), Some(t1.clone()));
}
