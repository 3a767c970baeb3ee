//! PostgreSQL as a service of a Docker Swarm stack (`--engine swarm --service db`). Its
//! task may run on any node, where `docker exec` from the manager cannot reach it, so
//! every client (pg_dump, pg_restore, psql) runs on the manager in a client container:
//! the service's own image (so client and server versions match; the manager pulls it
//! from the registry like any node), attached to the stack's attachable overlay network,
//! connecting over TCP to the service by its Swarm DNS name (`STACK_SERVICE`). One such
//! container serves the whole command ([`Runner`]), each client a `docker exec` into it.
//! The password travels as on Compose: `-e PGPASSWORD` by name in argv, its value only
//! in the docker CLI's environment.

use anyhow::Result;
use berth_core::docker::docker;
use berth_core::process::Cmd;
use berth_core::{fail, Failure};

/// A PostgreSQL service of a stack, as the clients reach it.
#[derive(Clone, PartialEq, Eq)]
pub struct Service {
    pub stack: String,
    pub service: String,
    /// The stack's attachable overlay network the one-off clients join.
    pub network: String,
    /// The service's image (as its spec names it, usually pinned by digest).
    pub image: String,
    /// The service's environment, `KEY=VALUE` (may hold `POSTGRES_PASSWORD`: never shown).
    env: Vec<String>,
    /// The client container, once started ([`Service::start`]); until then (a dry run)
    /// each client is shown as its own `docker run`.
    runner: Option<std::sync::Arc<Runner>>,
}

impl PartialEq for Runner {
    fn eq(&self, other: &Runner) -> bool {
        self.name == other.name
    }
}
impl Eq for Runner {}

/// One client container for the whole command: `docker run -i` of the service's image
/// running `cat`, its stdin a pipe held by berth. Each client is a `docker exec` into it
/// (much cheaper than a container per client, which joins the overlay network each
/// time). Dropped: `docker rm -f`; if berth dies instead, the pipe closes, `cat` ends and
/// `--rm` removes the container, so none is left behind either way.
pub struct Runner {
    name: String,
    child: std::sync::Mutex<Option<(std::process::Child, std::process::ChildStdin)>>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client container {}", self.name)
    }
}

impl Runner {
    /// `docker run --rm -i` of `image` on `network`, running `cat` on berth's pipe.
    fn spawn(network: &str, image: &str) -> std::io::Result<Runner> {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() % 1_000_000_000)
            .unwrap_or(0);
        let name = format!("berth-pgclient-{}-{ms}", std::process::id());
        let docker = std::env::var_os("BERTH_DOCKER").unwrap_or_else(|| "docker".into());
        let mut child = std::process::Command::new(docker)
            .args(["run", "--rm", "-i", "--name", &name, "--network", network])
            .args([
                "--label",
                "berth.backup.client=1",
                "--entrypoint",
                "cat",
                image,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        Ok(Runner {
            name,
            child: std::sync::Mutex::new(Some((child, stdin))),
        })
    }

    /// Wait (60 s at most) until the container runs; if `docker run` ends first, why.
    fn wait_running(&self, what: &str) -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let running = docker()
                .args(["container", "inspect", "--format", "{{.State.Running}}"])
                .arg(&self.name)
                .read();
            if running.is_ok_and(|r| r.trim() == "true") {
                return Ok(());
            }
            if let Some(out) = self.ended() {
                let err = String::from_utf8_lossy(&out.stderr);
                let why = berth_core::process::last_lines(&err, 2);
                return Err(fail!(Backup, "{what} did not start: {why}"));
            }
            if std::time::Instant::now() > deadline {
                return Err(fail!(Backup, "{what} was not running within 60 s"));
            }
            crate::check_interrupted()?;
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// `docker run`'s output, once it has ended.
    fn ended(&self) -> Option<std::process::Output> {
        let mut g = self.child.lock().ok()?;
        let (child, _) = g.as_mut()?;
        child.try_wait().ok().flatten()?;
        let (child, stdin) = g.take()?;
        drop(stdin);
        child.wait_with_output().ok()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = docker().args(["rm", "-f", &self.name]).output();
        let taken = self.child.lock().map(|mut c| c.take());
        if let Ok(Some((mut child, stdin))) = taken {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "swarm service {} of stack {} (network {}, image {})",
            self.service, self.stack, self.network, self.image
        )
    }
}

impl Service {
    /// The Swarm service's full name, also its DNS name on the stack's networks.
    pub fn host(&self) -> String {
        format!("{}_{}", self.stack, self.service)
    }

    /// A variable of the service's environment, when set and not empty.
    pub fn env(&self, key: &str) -> Option<String> {
        berth_core::stack::env_value(&self.env, key)
    }

    /// Read the service `STACK_SERVICE` and find an attachable network of it. Not a
    /// service of the stack: exit 64; not reachable (no attachable network, docker
    /// refuses): exit 5.
    pub fn inspect(stack: &str, service: &str) -> Result<Service> {
        let full = format!("{stack}_{service}");
        let spec = berth_core::stack::inspect(&full)
            .map_err(|e| fail!(Backup, "{e:#}"))?
            .ok_or_else(|| {
                anyhow::Error::new(Failure::usage(format!(
                    "--service {service}: stack {stack} has no service {full} (docker service ls lists them)"
                )))
            })?;
        let network = berth_core::stack::attachable_network(&spec)
            .map_err(|e| fail!(Backup, "{e:#}"))?
            .ok_or_else(|| {
                fail!(
                    Backup,
                    "service {full} is on no attachable network, so no client container can reach it: give its overlay network `attachable: true` in the stack file"
                )
            })?;
        let c = spec.task_template.container_spec;
        Ok(Service {
            stack: stack.to_string(),
            service: service.to_string(),
            network,
            image: c.image,
            env: c.env,
            runner: None,
        })
    }

    /// Start the client container (pulling the image if the manager lacks it) and wait
    /// until it runs; exit 5 if it does not within 60 s.
    pub fn start(&mut self) -> Result<()> {
        let what = format!(
            "the client container of {} (image {})",
            self.host(),
            self.image
        );
        let runner = Runner::spawn(&self.network, &self.image)
            .map_err(|e| fail!(Backup, "{what}: docker run: {e}"))?;
        runner.wait_running(&what)?;
        self.runner = Some(std::sync::Arc::new(runner));
        Ok(())
    }

    /// A client program in a one-off container of the service's image, on the stack's
    /// network, connected to the service; `with_password`: `-e PGPASSWORD` (by name; the
    /// caller sets its value in the docker CLI's environment).
    pub fn client(&self, program: &str, user: &str, db: Option<&str>, with_password: bool) -> Cmd {
        let mut c = match &self.runner {
            Some(_) => docker().args(["exec", "-i"]),
            None => docker().args(["run", "--rm", "-i", "--network", &self.network]),
        };
        if with_password {
            c = c.args(["-e", "PGPASSWORD"]);
        }
        c = c
            .arg("-e")
            .arg(format!("PGHOST={}", self.host()))
            .args(["-e", "PGCONNECT_TIMEOUT=10"]);
        c = match &self.runner {
            Some(r) => c.arg(&r.name).arg(program),
            None => c.args(["--entrypoint", program]).arg(&self.image),
        };
        c = c.args(["-U", user]);
        if let Some(db) = db {
            c = c.args(["-d", db]);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_run_beside_the_stack_and_keep_the_password_out_of_argv() {
        let s = Service {
            stack: "shop".into(),
            service: "db".into(),
            network: "shop_data".into(),
            image: "reg:5000/pg:15@sha256:ab".into(),
            env: vec!["POSTGRES_PASSWORD=hunter2".into(), "POSTGRES_DB=".into()],
            runner: None,
        };
        let cmd = s.client("pg_dump", "app", Some("shop"), true);
        assert_eq!(
            cmd.display(),
            "docker run --rm -i --network shop_data -e PGPASSWORD -e PGHOST=shop_db \
             -e PGCONNECT_TIMEOUT=10 --entrypoint pg_dump reg:5000/pg:15@sha256:ab -U app -d shop"
        );
        assert_eq!(s.env("POSTGRES_PASSWORD").as_deref(), Some("hunter2"));
        assert_eq!(s.env("POSTGRES_DB"), None);
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
