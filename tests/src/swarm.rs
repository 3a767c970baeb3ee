//! A real multi-node Docker Swarm for the end-to-end tests: 1 manager and 2 workers, each a
//! Docker-in-Docker node (`berth-fixture/swarm-node:1`, built by `scripts/setup.sh --only
//! swarm`), and a registry (the same image running Debian's `docker-registry`, no auth),
//! on a private bridge network of their own. Brought up by [`Testbed::up`], removed
//! whole (containers, their volumes, the network) when dropped, also when the test fails.
//!
//! How berth on the host reaches a node: each node's dockerd also listens on a unix
//! socket in a host directory bind-mounted into it ([`Node::docker_host`] is
//! `unix://...`); berth runs with `DOCKER_HOST` set to the manager's, exactly as it runs
//! on a manager. No TCP port is opened. Nodes run without `--privileged` (the host dockerd
//! may lack CAP_SYS_RESOURCE); the kernel here has no IPVS, so stacks publish ports with
//! `mode: host` and use `endpoint_mode: dnsrr`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{require_images, run_ok};

pub const NODE_IMAGE: &str = "berth-fixture/swarm-node:1";

/// The label on everything a test bed creates (its value: the test bed's name).
const LABEL: &str = "berth.e2e.swarm";

/// One Swarm node: a container running dockerd.
#[derive(Debug, Clone)]
pub struct Node {
    pub container: String,
    /// Its address on the test bed's bridge (the Swarm advertise address).
    pub ip: String,
    /// The host side of its dockerd's socket.
    socket: PathBuf,
}

impl Node {
    /// `DOCKER_HOST` for this node's dockerd.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The docker CLI talking to this node.
    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", self.docker_host());
        c
    }

    /// Run docker on this node; its stdout, trimmed; panic with what it said on failure.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = run_ok(self.docker().args(args));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The tasks of `service` that Swarm wants running and that run (`Running ...`: with
    /// a healthcheck, only once it passed, else `Starting`), from this manager: (task id,
    /// node, image) of each.
    pub fn running_tasks(&self, service: &str) -> Vec<(String, String, String)> {
        let ps = self.docker_ok(&[
            "service",
            "ps",
            "--no-trunc",
            "--filter",
            "desired-state=running",
            "--format",
            "{{.ID}} {{.Node}} {{.Image}} {{.CurrentState}}",
            service,
        ]);
        ps.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let t = (w.next()?, w.next()?, w.next()?, w.next()?);
                (t.3 == "Running").then(|| (t.0.into(), t.1.into(), t.2.into()))
            })
            .collect()
    }
}

pub struct Testbed {
    /// Unique per test bed: the prefix of its container and network names.
    pub name: String,
    pub network: String,
    /// `172.16.N` of the /24 the network has.
    pub subnet: String,
    /// `IP:5000`, plain HTTP, no auth; the nodes trust it (--insecure-registry).
    pub registry: String,
    pub manager: Node,
    pub workers: Vec<Node>,
    /// A host directory that the manager sees at the same path (outside /tmp, which the
    /// node mounts a tmpfs over): berth on the host writes there what a stack's bind
    /// mount on the manager reads, as berth running on the manager would.
    pub shared: tempfile::TempDir,
    /// The references [`Testbed::push`] pushed already (the parts share the test bed).
    pushed: std::sync::Mutex<Vec<String>>,
    /// Holds the nodes' sockets.
    _dir: tempfile::TempDir,
}

/// How long the nodes get to start dockerd and to form the swarm.
const UP_TIMEOUT: Duration = Duration::from_secs(90);

impl Testbed {
    /// Bring up the registry, the manager and two workers, and form the swarm.
    pub fn up() -> Testbed {
        require_images(&[NODE_IMAGE]);
        let name = format!("berth-swarm-{}", crate::suffix());
        let dir = tempfile::Builder::new()
            .prefix("berth-swarm-")
            .tempdir()
            .expect("a temp dir");
        let shared = tempfile::Builder::new()
            .prefix("berth-swarm-")
            .tempdir_in("/var/tmp")
            .expect("a temp dir in /var/tmp");
        let (network, subnet) = create_network(&name);
        let node = |role: &str, host: u8| Node {
            container: format!("{name}-{role}"),
            ip: format!("{subnet}.{host}"),
            socket: dir.path().join(role).join("docker.sock"),
        };
        let tb = Testbed {
            registry: format!("{subnet}.250:5000"),
            manager: node("m1", 11),
            workers: vec![node("w1", 12), node("w2", 13)],
            name,
            network,
            subnet,
            shared,
            pushed: std::sync::Mutex::new(Vec::new()),
            _dir: dir,
        };
        tb.start_registry();
        for n in tb.nodes() {
            tb.start_node(n);
        }
        let deadline = Instant::now() + UP_TIMEOUT;
        for n in tb.nodes() {
            wait_for(deadline, &format!("{}'s dockerd", n.container), || {
                n.docker()
                    .args(["info"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            });
        }
        tb.manager
            .docker_ok(&["swarm", "init", "--advertise-addr", &tb.manager.ip]);
        let token = tb
            .manager
            .docker_ok(&["swarm", "join-token", "-q", "worker"]);
        let join = format!("{}:2377", tb.manager.ip);
        for w in &tb.workers {
            w.docker_ok(&["swarm", "join", "--token", &token, &join]);
        }
        wait_for(deadline, "3 ready swarm nodes", || {
            tb.manager
                .docker()
                .args(["node", "ls", "--format", "{{.Status}}"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).matches("Ready").count() == 3)
        });
        tb
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        std::iter::once(&self.manager).chain(&self.workers)
    }

    fn start_registry(&self) {
        run_ok(Command::new("docker").args([
            "run",
            "-d",
            "--name",
            &format!("{}-registry", self.name),
            "--label",
            &format!("{LABEL}={}", self.name),
            "--network",
            &self.network,
            "--ip",
            &format!("{}.250", self.subnet),
            "--entrypoint",
            "/usr/bin/docker-registry",
            NODE_IMAGE,
            "serve",
            "/etc/docker/registry/config.yml",
        ]));
    }

    fn start_node(&self, n: &Node) {
        let sock_dir = n.socket.parent().expect("a socket directory");
        std::fs::create_dir_all(sock_dir).expect("the socket directory");
        let shared = self.shared.path().display();
        run_ok(Command::new("docker").args([
            "run",
            "-d",
            "--name",
            &n.container,
            "--hostname",
            &n.container,
            "--label",
            &format!("{LABEL}={}", self.name),
            "--network",
            &self.network,
            "--ip",
            &n.ip,
            // Not --privileged: the host dockerd may lack CAP_SYS_RESOURCE.
            "--cap-add",
            "ALL",
            "--cap-drop",
            "SYS_RESOURCE",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
            "--security-opt",
            "systempaths=unconfined",
            "--device-cgroup-rule",
            "a *:* rwm",
            "-v",
            &format!("{}:/run/berth", sock_dir.display()),
            "-v",
            &format!("{shared}:{shared}"),
            NODE_IMAGE,
            "--host=unix:///run/berth/docker.sock",
            &format!("--insecure-registry={}", self.registry),
        ]));
    }

    /// `docker stack deploy --with-registry-auth -c compose.yaml STACK` on the manager, in
    /// `dir`, with `BERTH_TAG=tag` (what the stack files name their images with).
    pub fn deploy_stack(&self, dir: &std::path::Path, stack: &str, tag: &str) {
        run_ok(
            self.manager
                .docker()
                .env("BERTH_TAG", tag)
                .args(["stack", "deploy", "--with-registry-auth"])
                .args(["-c", "compose.yaml", stack])
                .current_dir(dir),
        );
    }

    /// Put a local image into the registry as `REGISTRY/NAME` (no pull from anywhere: the
    /// image is loaded into the manager, tagged and pushed from there); returns the
    /// reference the nodes pull. Pushed once per test bed: a second call returns at once.
    pub fn push(&self, image: &str, name: &str) -> String {
        let reference = format!("{}/{name}", self.registry);
        let mut pushed = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
        if pushed.contains(&reference) {
            return reference;
        }
        let mut saved = Command::new("docker")
            .args(["save", image])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("docker save");
        let load = self
            .manager
            .docker()
            .args(["load", "-q"])
            .stdin(saved.stdout.take().expect("docker save's stdout"))
            .output()
            .expect("docker load");
        let save_status = saved.wait().expect("docker save ends");
        assert!(
            save_status.success() && load.status.success(),
            "docker save {image} ({save_status}) | docker load into {}: {}",
            self.manager.container,
            String::from_utf8_lossy(&load.stderr)
        );
        self.manager.docker_ok(&["tag", image, &reference]);
        self.manager.docker_ok(&["push", "-q", &reference]);
        pushed.push(reference.clone());
        reference
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // -v: the nodes' /var/lib/docker volumes go with them. A container that never
        // started is only an error line here.
        let registry = format!("{}-registry", self.name);
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &registry])
            .args(self.nodes().map(|n| &n.container))
            .output();
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}

/// A bridge network on a free /24 of 172.16.0.0/16: outside docker's default address
/// pools (172.17-31/16, then 192.168/16 in /20s, which compose projects of other tests
/// get here), so compose never takes it, and clear of what the nodes use inside (their
/// own bridges 172.17-18, Swarm's overlays 10.0.0.0/8). docker refuses a subnet that
/// overlaps another network's, so a taken one is skipped: two test beds never share one.
fn create_network(name: &str) -> (String, String) {
    let network = format!("{name}-net");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as usize);
    let seed = nanos ^ std::process::id() as usize;
    let mut last = String::new();
    for i in 0..256 {
        let subnet = format!("172.16.{}", (seed + i * 7) % 256);
        let out = Command::new("docker")
            .args(["network", "create", "--driver", "bridge", "--label"])
            .arg(format!("{LABEL}={name}"))
            .arg("--subnet")
            .arg(format!("{subnet}.0/24"))
            .arg(&network)
            .output()
            .expect("docker network create");
        if out.status.success() {
            return (network, subnet);
        }
        last = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if !last.contains("overlap") {
            break;
        }
    }
    panic!("no free /24 in 172.16.0.0/16 for {network}: {last}");
}

fn wait_for(deadline: Instant, what: &str, mut ok: impl FnMut() -> bool) {
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "the swarm test bed: no {what} within {UP_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
