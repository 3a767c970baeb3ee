//! `berth-migrate --engine swarm`: the migration in a one-off container on the manager,
//! from the **new** image (pulled by the manager from its registry, run pinned by
//! digest), with the environment, entrypoint, user and working directory of the stack's
//! service as Swarm runs it (`docker service inspect STACK_SERVICE`), on the service's
//! first attachable overlay network: so it reaches the database task on whichever node
//! that runs, by its Swarm DNS name, as the service's own tasks do.
//!
//! The container is `docker run --rm` with berth's labels: removed when it ends, by name
//! and label on a timeout or a signal (as on Compose), and, if berth itself is killed,
//! by `--rm` once the migration ends; the next `berth-migrate` of the stack removes any
//! left over. The environment's values never go on the command line: each variable is
//! `-e KEY` there, its value only in the docker CLI's own environment (as berth-backup
//! passes PGPASSWORD), except the few the docker CLI reads itself ([`cli_reads`]).

use std::time::Duration;

use anyhow::Result;
use berth_core::cli::Context;
use berth_core::docker::docker;
use berth_core::process::Cmd;
use berth_core::{fail, msg, stack, swarm, Failure};

use crate::oneoff::{OneOff, LABEL_DEPLOY, LABEL_ROLE, ROLE};

/// The label naming the stack on berth's one-off containers on Swarm (the Compose
/// path's is compose's own project label).
pub const LABEL_STACK: &str = "berth.stack";

/// How the one-off container runs on Swarm.
#[derive(Clone, PartialEq, Eq)]
pub struct SwarmRun {
    /// The new image, `REPO@sha256:...` once pulled (by tag in a dry run).
    pub image: String,
    pub network: String,
    /// The service's environment (values may be secrets: never shown).
    env: Vec<(String, String)>,
    entrypoint: Vec<String>,
    user: String,
    dir: String,
}

impl std::fmt::Debug for SwarmRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        write!(
            f,
            "docker run of {} on {} (environment {keys:?})",
            self.image, self.network
        )
    }
}

/// Variables the docker CLI reads itself (which daemon, its config and login, where
/// programs are): setting them on its process would change the CLI, so these few go
/// on the command line as `KEY=VALUE`. Put no secret in them.
pub fn cli_reads(key: &str) -> bool {
    matches!(key, "PATH" | "HOME") || key.starts_with("DOCKER_")
}

impl SwarmRun {
    /// `docker run --rm --name NAME --label ... --network NET -e KEY... IMAGE CMD...`
    pub fn run_cmd(&self, job: &OneOff) -> Cmd {
        let mut c = docker().args(["run", "--rm", "--name", &job.name]);
        for (k, v) in [
            (LABEL_DEPLOY, job.deploy_id.as_str()),
            (LABEL_ROLE, ROLE),
            (LABEL_STACK, job.compose.project.as_str()),
        ] {
            c = c.arg("--label").arg(format!("{k}={v}"));
        }
        c = c.args(["--network", &self.network]);
        for (k, v) in &self.env {
            c = if cli_reads(k) {
                c.arg("-e").arg(format!("{k}={v}"))
            } else {
                c.args(["-e", k]).env(k, v)
            };
        }
        if !self.user.is_empty() {
            c = c.args(["--user", &self.user]);
        }
        if !self.dir.is_empty() {
            c = c.args(["--workdir", &self.dir]);
        }
        let rest: &[String] = match self.entrypoint.split_first() {
            Some((first, rest)) => {
                c = c.args(["--entrypoint", first]);
                rest
            }
            None => &[],
        };
        c.arg(&self.image).args(rest).args(&job.command)
    }
}

/// Read the stack's service and make the image ready on this manager: the one-off's
/// settings. Not a manager, no such service, no attachable network: exit 1; Swarm
/// secrets (a plain container cannot mount them): exit 64; the new image not in its
/// registry: exit 2.
pub fn prepare(
    ctx: &Context,
    service: &str,
    image: &str,
    pull_timeout: Duration,
) -> Result<SwarmRun> {
    swarm::ensure_manager(&swarm::node_state()?)?;
    let full = format!("{}_{service}", ctx.project);
    let spec = stack::inspect(&full)
        .map_err(|e| fail!(Preflight, "{e:#}"))?
        .ok_or_else(|| {
            fail!(
                Preflight,
                "stack {} has no service {full}: deploy the stack first (docker stack deploy); on Swarm the migration runs with the service's environment and network",
                ctx.project
            )
        })?;
    let c = &spec.task_template.container_spec;
    if !c.secrets.is_empty() {
        let names: Vec<&str> = c.secrets.iter().map(|s| s.secret_name.as_str()).collect();
        return Err(Failure::usage(format!(
            "--engine swarm: service {full} uses Swarm secrets ({}), which berth-migrate's one-off container cannot mount yet; give the migration what it needs in the service's environment",
            names.join(", ")
        ))
        .into());
    }
    let network = stack::attachable_network(&spec)
        .map_err(|e| fail!(Preflight, "{e:#}"))?
        .ok_or_else(|| {
            fail!(
                Preflight,
                "service {full} is on no attachable network, so the migration could not reach what it reaches: give its overlay network `attachable: true` in the stack file"
            )
        })?;
    let image = if ctx.dry_run {
        image.to_string()
    } else {
        pull_pinned(service, image, pull_timeout)?
    };
    Ok(SwarmRun {
        image,
        network,
        env: c
            .env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        entrypoint: c.command.clone(),
        user: c.user.clone(),
        dir: c.dir.clone(),
    })
}

/// `docker pull IMAGE` on the manager (whether or not it has it: the registry's image
/// is the one the nodes will run), then its digest: `REPO@sha256:...`.
fn pull_pinned(service: &str, image: &str, timeout: Duration) -> Result<String> {
    msg::info(format!("{service}: pulling {image} from its registry"));
    docker()
        .args(["pull", "--quiet", image])
        .timeout(timeout)
        .run()
        .map_err(|e| {
            let why = berth_core::process::last_lines(e.stderr(), 1);
            let why = if why.is_empty() { e.to_string() } else { why };
            fail!(
                Image,
                "{service}: image {image} cannot be pulled from its registry: {why}"
            )
        })?;
    stack::repo_digest(image)
        .map_err(|e| fail!(Image, "{image}: pulled, but: {e:#}"))?
        .ok_or_else(|| {
            fail!(
                Image,
                "{image}: pulled, but docker names no registry digest for it"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::compose::Compose;
    use std::path::Path;

    #[test]
    fn the_run_keeps_values_out_of_argv() {
        let c = Compose::new("shop", Path::new("/srv/shop"), &[]);
        let mut job = OneOff::new(
            c,
            "web",
            &["migrate".into()],
            "20261206T140000Z-v2",
            Path::new("/srv/shop/.berth"),
        );
        job.swarm = Some(SwarmRun {
            image: "r:5000/app@sha256:ab".into(),
            network: "shop_data".into(),
            env: vec![
                ("DATABASE_URL".into(), "postgres://u:hunter2@db/x".into()),
                ("DOCKER_HOST".into(), "tcp://x".into()),
            ],
            entrypoint: vec!["/app".into(), "--quiet".into()],
            user: "1000".into(),
            dir: String::new(),
        });
        let cmd = job.run_cmd();
        assert_eq!(
            cmd.display(),
            "docker run --rm --name shop-migrate-20261206T140000Z-v2 \
             --label berth.deploy_id=20261206T140000Z-v2 --label berth.role=migrate \
             --label berth.stack=shop --network shop_data -e DATABASE_URL \
             -e DOCKER_HOST=tcp://x --user 1000 --entrypoint /app r:5000/app@sha256:ab \
             --quiet migrate"
        );
        assert!(!format!("{:?}", job.swarm).contains("hunter2"));
        assert!(cli_reads("DOCKER_CONFIG") && cli_reads("PATH") && !cli_reads("PGPASSWORD"));
    }
}
