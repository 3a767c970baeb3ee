//! The end-to-end test bed: a private copy of the demo stack per test (own compose
//! project name, own loopback port, own state directory), cleaned up even when the test
//! panics; the paths of the built berth binaries; and a load generator that counts
//! failures, latencies and which version answered.
//!
//! Every test here talks to the real Docker Engine, Compose v2, nginx and PostgreSQL.
//! `scripts/setup.sh` provides them (and the images); `scripts/test.sh` runs it first.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A load generator that behaves like real HTTP clients (keep-alive, GET and POST).
pub mod clients;
pub mod swarm;
pub mod swarmstack;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// The path of a built berth binary (`berth-swap`, ...): `$BERTH_BIN_DIR` or
/// `target/debug`. `scripts/test.sh` builds them before the tests run.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("BERTH_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target").join("debug"));
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is not built: run `cargo build --workspace --bins` (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A command for a berth binary with a clean environment: no `BERTH_*` variables
/// leak in from the caller, `HOME` points nowhere useful.
pub fn berth(name: &str) -> Command {
    let mut c = Command::new(bin(name));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BERTH_") {
            c.env_remove(&k);
        }
    }
    c.env("HOME", "/nonexistent");
    c
}

/// Fail the test early with a clear message when the images are missing.
pub fn require_images(images: &[&str]) {
    for img in images {
        let ok = Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Id}}", img])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(ok, "image {img} is missing: run scripts/setup.sh first");
    }
}

/// The demo images every stack test needs.
pub const DEMO_IMAGES: &[&str] = &[
    "berth-fixture/nginx:1",
    "berth-fixture/postgres:15",
    "berth-fixture/redis:7",
    "berth-demo/app:v1",
    "berth-demo/app:v2",
];

/// A free loopback TCP port, picked from 20000-31999: below the kernel's ephemeral
/// range (32768+), so no outgoing connection of the load generator or of docker can
/// take it between our check and the moment compose publishes it.
pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        ^ (u64::from(std::process::id()) << 7);
    for i in 0..2000u64 {
        let n = seed.wrapping_add(NEXT.fetch_add(1, Ordering::SeqCst) * 7919 + i * 104_729);
        let port = 20000 + (n % 12000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in 20000-31999")
}

/// A short random suffix (no rand crate: time and pid are plenty for uniqueness here).
pub(crate) fn suffix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{:x}{:x}{}",
        std::process::id() % 0xfff,
        t % 0xffff,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A `--check-args` run: (exit code, stderr), asserting it wrote nothing on stdout.
pub fn checked(out: Output) -> (i32, String) {
    assert!(out.stdout.is_empty(), "--check-args wrote a document");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code().unwrap_or(-1), err)
}

/// Run a command, returning its output; panic with everything it said when it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run a command with `input` on its stdin, capturing stdout and stderr.
pub fn output_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// A docker that hangs on the call whose arguments contain the word `word` (a daemon
/// that stopped answering: `sleep <marker>` under a shell) and passes every other call
/// to the real docker; for `BERTH_DOCKER`. Dropping it kills any of its sleeps still
/// there (after a failed test; the tests assert none is).
pub struct Hang {
    pub path: PathBuf,
    pub marker: String,
}

impl Hang {
    pub fn new(dir: &Path, word: &str) -> Hang {
        use std::os::unix::fs::PermissionsExt;
        static N: AtomicU64 = AtomicU64::new(0);
        let n = u64::from(std::process::id()) * 10 + N.fetch_add(1, Ordering::SeqCst);
        let marker = format!("{}", 700_000 + n % 200_000);
        let path = dir.join(format!("docker-hangs-{marker}"));
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\ncase \" $* \" in *\" {word} \"*) sleep {marker} ;; esac\nexec docker \"$@\"\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Hang { path, marker }
    }

    /// The pids of its `sleep <marker>` processes.
    pub fn sleepers(&self) -> Vec<String> {
        let want = format!("sleep\0{}\0", self.marker);
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|d| std::fs::read(d.path().join("cmdline")).is_ok_and(|c| c == want.as_bytes()))
            .map(|d| d.file_name().to_string_lossy().to_string())
            .collect()
    }
}

impl Drop for Hang {
    fn drop(&mut self) {
        let pids = self.sleepers();
        if !pids.is_empty() {
            let _ = Command::new("kill").arg("-KILL").args(&pids).output();
        }
    }
}

/// A private copy of `examples/demo` with its own compose project and port.
/// Dropping it removes its containers (also ones berth created), networks and volumes.
pub struct Stack {
    /// The compose project name, also the directory's name.
    pub project: String,
    /// The project directory (a copy of examples/demo).
    pub dir: PathBuf,
    /// The proxy's published loopback port.
    pub port: u16,
    _tmp: tempfile::TempDir,
}

impl Stack {
    /// Copy the demo stack for test `name`; `.env` gets `BERTH_TAG=v1` and a free port.
    pub fn new(name: &str) -> Stack {
        require_images(DEMO_IMAGES);
        let clean: String = name
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(24)
            .collect();
        let project = format!("be-{clean}-{}", suffix());
        let tmp = tempfile::Builder::new()
            .prefix("berth-e2e-")
            .tempdir()
            .expect("a temp dir");
        let dir = tmp.path().join(&project);
        copy_dir(&root().join("examples").join("demo"), &dir);
        let port = free_port();
        let stack = Stack {
            project,
            dir,
            port,
            _tmp: tmp,
        };
        let example = std::fs::read_to_string(stack.dir.join(".env.example")).unwrap_or_default();
        std::fs::write(stack.dir.join(".env"), example).unwrap();
        stack.set_env("BERTH_TAG", "v1");
        stack.set_env("DEMO_HTTP_PORT", &port.to_string());
        // CI time: compose healthchecks every second (not the demo's 2 s: every `up
        // --wait` and every worker swap waits for a first check), and initdb without
        // fsync (a throwaway database; halves its first start on a loaded machine).
        stack.set_env("DEMO_HEALTH_INTERVAL", "1s");
        stack.set_env("POSTGRES_INITDB_ARGS", "--no-sync");
        stack
    }

    /// HAProxy in place of nginx: examples/haproxy's compose.override.yaml, and its
    /// haproxy.cfg and maintenance.map in haproxy/ (before [`Stack::start`]).
    pub fn use_haproxy(&self) {
        let ex = root().join("examples/haproxy");
        std::fs::copy(
            ex.join("compose.override.yaml"),
            self.dir.join("compose.override.yaml"),
        )
        .unwrap();
        std::fs::create_dir_all(self.dir.join("haproxy")).unwrap();
        for f in ["haproxy.cfg", "maintenance.map"] {
            std::fs::copy(ex.join(f), self.dir.join("haproxy").join(f)).unwrap();
        }
    }

    /// nginx switched without a reload (`--proxy nginx-dns`): examples/nginx-dns's
    /// compose.override.yaml, and its nginx.conf as nginx/nginx-dns.conf (before
    /// [`Stack::start`]).
    pub fn use_nginx_dns(&self) {
        let ex = root().join("examples/nginx-dns");
        std::fs::copy(
            ex.join("compose.override.yaml"),
            self.dir.join("compose.override.yaml"),
        )
        .unwrap();
        std::fs::copy(ex.join("nginx.conf"), self.dir.join("nginx/nginx-dns.conf")).unwrap();
    }

    /// One command on HAProxy's admin socket (socat in the proxy container); its answer.
    pub fn haproxy_admin(&self, cmd: &str) -> String {
        let out = output_with_stdin(
            self.compose().args([
                "exec",
                "-T",
                "proxy",
                "socat",
                "stdio",
                "/run/haproxy/admin.sock",
            ]),
            format!("{cmd}\n").as_bytes(),
        );
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Set `KEY=value` in the stack's `.env` (replacing the line or adding one).
    pub fn set_env(&self, key: &str, value: &str) {
        let p = self.dir.join(".env");
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with(&format!("{key}=")))
            .map(str::to_string)
            .collect();
        lines.push(format!("{key}={value}"));
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    }

    /// A value from the stack's `.env`.
    pub fn env_value(&self, key: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(".env"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
    }

    /// The state directory berth uses for this stack by default.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join(".berth")
    }

    /// `docker compose` for this project, run in its directory.
    pub fn compose(&self) -> Command {
        let mut c = Command::new("docker");
        c.args(["compose", "--project-directory"])
            .arg(&self.dir)
            .args(["-p", &self.project])
            .current_dir(&self.dir);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("BERTH_") {
                c.env_remove(&k);
            }
        }
        c
    }

    /// Run `docker compose ARGS` and return stdout; panic with its stderr on failure.
    pub fn compose_ok(&self, args: &[&str]) -> String {
        let out = run_ok(self.compose().args(args));
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// One SQL statement in the demo database (`db`, user and database `demo`), as
    /// psql's unaligned output, trimmed; panics when it fails.
    pub fn sql(&self, q: &str) -> String {
        let args = ["exec", "-T", "db", "psql", "-X", "-U", "demo", "-d", "demo"];
        let out = self.compose_ok(&[&args[..], &["-v", "ON_ERROR_STOP=1", "-Atc", q]].concat());
        out.trim().to_string()
    }

    /// A berth command pointed at this stack (`--project-dir`, `-p`).
    pub fn berth(&self, name: &str) -> Command {
        let mut c = berth(name);
        c.arg("--project-dir")
            .arg(&self.dir)
            .args(["-p", &self.project])
            .current_dir(&self.dir);
        c
    }

    /// Start the database, migrate it to the schema of `tag`, and start everything at
    /// `tag`, waiting until compose reports it healthy.
    pub fn start(&self, tag: &str) {
        self.start_on_schema(tag, tag);
    }

    /// [`Stack::start`] with the database migrated to the schema of `schema_tag` instead
    /// (one migrate run: e.g. v1 serving on v2's backward compatible schema, as after a
    /// deploy's migrate stage).
    pub fn start_on_schema(&self, tag: &str, schema_tag: &str) {
        self.set_env("BERTH_TAG", tag);
        self.compose_ok(&["up", "-d", "--wait", "db", "redis"]);
        self.migrate(schema_tag);
        self.compose_ok(&["up", "-d", "--wait"]);
    }

    /// Migrate the database to the schema of `tag` (the app's `migrate` in a one-off
    /// container of that image), as a deploy's migrate stage would.
    pub fn migrate(&self, tag: &str) {
        run_ok(self.compose().env("BERTH_TAG", tag).args([
            "run",
            "--rm",
            "--no-deps",
            "-T",
            "web",
            "migrate",
        ]));
    }

    /// `http://127.0.0.1:<port><path>` (through the proxy).
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// GET through the proxy: (status, X-Demo-Version, body). Transport errors panic.
    pub fn get(&self, path: &str) -> (u16, String, String) {
        get(&self.url(path)).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// The version that answers `/version` through the proxy (a 200 is asserted).
    pub fn version(&self) -> String {
        let (status, v, body) = self.get("/version");
        assert_eq!(status, 200, "{body}");
        v
    }

    /// Run a berth program with `args` (stdin closed): its exit code, the document it
    /// printed (`Null` when none) and its stderr.
    pub fn run(&self, prog: &str, args: &[&str]) -> (i32, serde_json::Value, String) {
        let out = self
            .berth(prog)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let doc = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.code().unwrap_or(-1), doc, err)
    }

    /// Keep-alive clients (8, GET, every third request a POST, nothing resent) through the
    /// proxy for the whole of `f`, a second on either side.
    pub fn under_clients<T>(&self, f: impl FnOnce() -> T) -> (T, clients::ClientReport) {
        self.under_clients_for(Duration::from_secs(1), f)
    }

    /// [`Stack::under_clients`] with `margin` of traffic before and after `f` (bounded at
    /// 180 s in all).
    pub fn under_clients_for<T>(
        &self,
        margin: Duration,
        f: impl FnOnce() -> T,
    ) -> (T, clients::ClientReport) {
        let mix = clients::Mix {
            max_time: Duration::from_secs(180),
            ..clients::Mix::default()
        };
        let load = clients::Clients::start(&self.url(""), &mix);
        std::thread::sleep(margin);
        let out = f();
        std::thread::sleep(margin);
        (out, load.stop())
    }

    /// A swap of web to v2 with `flags` (the proxy's), killed (SIGKILL) right after the
    /// fault point `at`, then `berth-swap FLAGS --converge` under keep-alive clients: 0
    /// failed requests (POSTs included), `serving` answers, one web container runs. The
    /// caller checks what its proxy names; the load's report is returned.
    pub fn killed_then_converged(
        &self,
        flags: &[&str],
        at: &str,
        serving: &str,
    ) -> clients::ClientReport {
        let out = self
            .berth("berth-swap")
            .args(flags)
            .args(["--tag", "v2", "web"])
            .env(berth_core::fault::VAR, at)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), None, "not killed at {at}");
        let args: Vec<&str> = flags.iter().copied().chain(["--converge"]).collect();
        let ((code, _, err), load) = self.under_clients(|| self.run("berth-swap", &args));
        eprintln!("converge after a kill at {at}: {}", load.summary());
        assert_eq!(code, 0, "{err}");
        assert_eq!(load.failed(), 0, "at {at}: {}", load.summary());
        assert_eq!(load.failed_posts(), 0, "at {at}: {}", load.summary());
        assert!(load.total() > 100, "at {at}: {}", load.summary());
        assert_eq!(self.version(), serving);
        assert_eq!(self.service_containers("web").len(), 1);
        load
    }

    /// IDs of every container of this project (running or not), one-off runs included.
    pub fn container_ids(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=com.docker.compose.project={}", self.project))
            .output()
            .expect("docker ps");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Running containers of one service: (name, image).
    pub fn service_containers(&self, service: &str) -> Vec<(String, String)> {
        let out = Command::new("docker")
            .args(["ps", "--format", "{{.Names}} {{.Image}}", "--filter"])
            .arg(format!("label=com.docker.compose.project={}", self.project))
            .arg("--filter")
            .arg(format!("label=com.docker.compose.service={service}"))
            .output()
            .expect("docker ps");
        let mut v: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        v.sort();
        v
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self
            .compose()
            .args(["down", "-v", "--remove-orphans", "-t", "2"])
            .output();
        let ids = self.container_ids();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .output();
        }
        let label = format!("label=com.docker.compose.project={}", self.project);
        for kind in ["network", "volume"] {
            let out = Command::new("docker")
                .args([kind, "ls", "-q", "--filter", &label])
                .output();
            if let Ok(out) = out {
                let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect();
                if !names.is_empty() {
                    let _ = Command::new("docker")
                        .args([kind, "rm"])
                        .args(&names)
                        .output();
                }
            }
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let e = e.unwrap();
        let name = e.file_name();
        let n = name.to_string_lossy();
        // Not the app's sources, nor anything a local run left behind.
        if n == ".env" || n == ".berth" || n == "app" || n == "target" {
            continue;
        }
        let src = e.path();
        let dst = to.join(&name);
        if e.file_type().unwrap().is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// The newest deploy document scripts/deploy.sh kept in `<state dir>/deploys`.
pub fn last_document(state_dir: &Path) -> serde_json::Value {
    let dir = state_dir.join("deploys");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let text = std::fs::read_to_string(files.last().expect("a deploy document")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// (stage, status, exit code) of each record of a deploy document, in order.
pub fn stages(doc: &serde_json::Value) -> Vec<(String, String, i64)> {
    doc["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["stage"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
                r["exit_code"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// One GET with a 5 s bound: (status, X-Demo-Version, body).
pub fn get(url: &str) -> Result<(u16, String, String), String> {
    let agent = berth_core::http::agent(Duration::from_secs(5));
    let mut resp = agent.get(url).call().map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let version = resp
        .headers()
        .get("x-demo-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    Ok((status, version, body))
}

/// One GET on a fresh connection to the proxy on loopback `port`; the whole response (status line,
/// headers, decoded chunked body) and whether the chunked body ended with its last chunk.
pub fn get_raw(port: u16, path: &str) -> (String, String, bool) {
    use std::io::{BufRead, Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = std::io::BufReader::new(c);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        head.push_str(&line);
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut body = String::new();
        let _ = r.read_to_string(&mut body);
        return (head, body, false);
    }
    let (mut body, mut ended) = (String::new(), false);
    loop {
        let mut size = String::new();
        if r.read_line(&mut size).unwrap_or(0) == 0 {
            break; // closed without the last chunk: torn
        }
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut chunk = vec![0; n + 2];
        if r.read_exact(&mut chunk).is_err() {
            break;
        }
        if n == 0 {
            ended = true;
            break;
        }
        body.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
    }
    (head, body, ended)
}

/// The events of an SSE body: (event, data) per complete event (a torn last one panics).
pub fn events(body: &str) -> Vec<(String, serde_json::Value)> {
    assert!(
        body.is_empty() || body.ends_with("\n\n"),
        "torn event: {body:?}"
    );
    body.split_terminator("\n\n")
        .map(|ev| {
            let field = |k: &str| {
                ev.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                    .unwrap_or_default()
                    .to_string()
            };
            (
                field("event"),
                serde_json::from_str(&field("data")).unwrap(),
            )
        })
        .collect()
}

/// What a swap from `old` to `new` did to a `/slow?ms=4000` request and an `/events`
/// stream ([`get_raw`] answers) open across it (issue 12 §3): the slow request answered
/// whole by `old`; the stream got `old`'s ticks in order, then its `shutdown` event and
/// the end of the body (never torn); a stream opened now through `port` reaches `new`.
pub fn assert_outlived_the_drain(
    port: u16,
    slow: (String, String, bool),
    stream: (String, String, bool),
    old: &str,
    new: &str,
) {
    let (head, body, _) = slow;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("x-demo-version: {old}")),
        "{head}"
    );
    assert!(body.contains("\"slept_ms\":4000"), "{body}");
    let (head, body, ended) = stream;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(ended, "the stream was cut: {body:?}");
    let evs = events(&body);
    let (last, ticks) = evs.split_last().expect("events");
    assert_eq!(last.0, "shutdown", "{body}");
    assert!(ticks.len() >= 5, "{body}");
    for (i, (kind, data)) in ticks.iter().enumerate() {
        assert_eq!(
            (kind.as_str(), data["version"].as_str()),
            ("tick", Some(old))
        );
        assert_eq!(data["n"], i as u64 + 1, "{body}");
    }
    let (_, body, ended) = get_raw(port, "/events?count=3");
    assert!(ended);
    let evs = events(&body);
    assert_eq!(evs.len(), 3, "{body}");
    assert!(evs.iter().all(|(_, d)| d["version"] == new), "{body}");
}

/// The longest time between two consecutive instants of `times` (in order).
pub fn longest_gap(times: impl IntoIterator<Item = Duration>) -> Duration {
    let times: Vec<Duration> = times.into_iter().collect();
    times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

/// A tiny HTTP server for tests that need one without Docker: answers each request with
/// `respond(request_line_and_headers) -> (status, body)`; stops on drop.
pub struct TestServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// Requests seen (their head: request line and headers).
    pub seen: Arc<Mutex<Vec<String>>>,
    /// Their bodies (per `Content-Length`), in the same order as `seen`.
    pub bodies: Arc<Mutex<Vec<String>>>,
}

impl TestServer {
    pub fn start(respond: impl Fn(&str) -> (u16, String) + Send + Sync + 'static) -> TestServer {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (stop2, seen2, bodies2) = (stop.clone(), seen.clone(), bodies.clone());
        let respond = Arc::new(respond);
        let handle = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut reader = BufReader::new(stream.try_clone().unwrap());
                        let mut head = String::new();
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                                break;
                            }
                            head.push_str(&line);
                        }
                        // Read the body too: closing with it unread would reset the
                        // connection before the client reads the answer.
                        let len = head
                            .lines()
                            .filter_map(|l| l.split_once(':'))
                            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        let mut body = vec![0u8; len];
                        let _ = std::io::Read::read_exact(&mut reader, &mut body);
                        seen2.lock().unwrap().push(head.clone());
                        bodies2
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&body).to_string());
                        let (status, body) = respond(&head);
                        let mut s = stream;
                        let _ = write!(
                            s,
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TestServer {
            port,
            stop,
            handle: Some(handle),
            seen,
            bodies,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
