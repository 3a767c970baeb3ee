//! Plain `docker` commands berth needs: is the daemon there, what state is a container
//! in, its last log lines, which containers a compose service has.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::fail;
use crate::process::{Cmd, ProcessError};

/// The docker CLI, overridable for tests with `BERTH_DOCKER` (a path to a stub).
pub fn docker() -> Cmd {
    Cmd::new(std::env::var_os("BERTH_DOCKER").unwrap_or_else(|| "docker".into()))
}

/// Fail with exit 1 (preflight) when the daemon does not answer.
pub fn ensure_reachable() -> Result<String> {
    let out = docker()
        .args(["version", "--format", "{{.Server.Version}}"])
        .read();
    match out {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        Ok(_) => Err(fail!(
            Preflight,
            "docker daemon is not reachable (no server version)"
        )),
        Err(e) => {
            let mut why = crate::process::last_lines(e.stderr(), 1);
            if why.is_empty() {
                why = e.to_string();
            }
            Err(fail!(Preflight, "docker daemon is not reachable: {why}"))
        }
    }
}

/// The parts of `docker inspect`'s `.State` berth looks at.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct State {
    pub status: String,
    #[serde(default)]
    pub running: bool,
    #[serde(default)]
    pub restarting: bool,
    #[serde(rename = "OOMKilled", default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub exit_code: i32,
    #[serde(default)]
    pub started_at: String,
    #[serde(default)]
    pub health: Option<Health>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Health {
    pub status: String,
}

/// A container as `docker inspect` describes it, reduced to what berth uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    pub id: String,
    pub name: String,
    /// The image reference it was created from (`Config.Image`).
    pub image: String,
    /// The image ID (`sha256:...`).
    pub image_id: String,
    pub state: State,
    pub labels: serde_json::Map<String, Value>,
    /// Network name -> IP address.
    pub networks: Vec<(String, String)>,
    pub created: String,
}

impl Container {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).and_then(Value::as_str)
    }
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }
}

/// Inspect containers by name or ID. Missing ones are an error naming them.
pub fn inspect(ids: &[&str]) -> Result<Vec<Container>> {
    inspect_until(ids, None)
}

/// [`inspect`], never running past `deadline`.
pub fn inspect_until(ids: &[&str], deadline: Option<Instant>) -> Result<Vec<Container>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut cmd = docker().args(["container", "inspect"]).args(ids);
    if let Some(d) = deadline {
        cmd = cmd.deadline(d);
    }
    let out = cmd.read().map_err(|e| match &e {
        ProcessError::Failed { stderr, .. } if stderr.contains("No such") => {
            anyhow::anyhow!("{}", crate::process::last_lines(stderr, 1))
        }
        _ => anyhow::Error::new(e),
    })?;
    parse_inspect(&out)
}

pub fn parse_inspect(json: &str) -> Result<Vec<Container>> {
    let arr: Vec<Value> = serde_json::from_str(json).context("docker inspect printed no JSON")?;
    arr.into_iter().map(container_from).collect()
}

fn container_from(v: Value) -> Result<Container> {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let state: State = serde_json::from_value(v.get("State").cloned().unwrap_or(Value::Null))
        .context("docker inspect: unexpected .State")?;
    let labels = v
        .pointer("/Config/Labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let networks = v
        .pointer("/NetworkSettings/Networks")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, n)| {
                    let ip = n.get("IPAddress").and_then(Value::as_str).unwrap_or("");
                    (k.clone(), ip.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Container {
        id: s("/Id"),
        name: s("/Name").trim_start_matches('/').to_string(),
        image: s("/Config/Image"),
        image_id: s("/Image"),
        state,
        labels,
        networks,
        created: s("/Created"),
    })
}

/// The last `n` lines a container wrote (stdout and stderr together), scrubbed of
/// secrets: the values of the container's own secret environment variables
/// (`POSTGRES_PASSWORD`, `*_TOKEN`, ...) and anything shaped like one (see
/// [`crate::scrub`]). These tails go into documents, the ledger and notifications.
pub fn logs_tail(id: &str, n: usize) -> String {
    let out = docker()
        .args(["logs", "--tail", &n.to_string(), id])
        .output();
    match out {
        Ok(o) => {
            let mut all = o.stdout;
            all.push_str(&o.stderr);
            crate::scrub::scrub(all.trim_end(), &secret_env_values(id))
        }
        Err(e) => format!("(no logs: {e})"),
    }
}

/// The values of a container's environment variables whose names mark them secret.
pub fn secret_env_values(id: &str) -> Vec<String> {
    docker()
        .args(["inspect", "--format", "{{json .Config.Env}}", id])
        .output()
        .ok()
        .and_then(|o| serde_json::from_str::<Vec<String>>(o.stdout.trim()).ok())
        .map(|env| crate::scrub::secret_values(env.iter().map(String::as_str)))
        .unwrap_or_default()
}

/// IDs of the containers (running or not) carrying all these labels.
pub fn containers_with_labels(labels: &[(&str, &str)], all: bool) -> Result<Vec<String>> {
    let mut cmd = docker().args(["ps", "-q", "--no-trunc"]);
    if all {
        cmd = cmd.arg("-a");
    }
    for (k, v) in labels {
        cmd = cmd.args(["--filter", &format!("label={k}={v}")]);
    }
    let out = cmd.read()?;
    Ok(out
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect())
}

/// `docker stop --time SECS ID...`: SIGTERM, then SIGKILL after `grace` (rounded up to
/// whole seconds), bounded by the grace plus `--command-timeout`.
pub fn stop(ids: &[String], grace: Duration) -> Cmd {
    let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
    docker()
        .args(["stop", "--time", &secs.to_string()])
        .args(ids)
        .timeout(grace + crate::process::command_timeout())
}

/// `docker rm -v ID...`: stopped containers, with their anonymous volumes.
pub fn remove(ids: &[String]) -> Cmd {
    docker().args(["rm", "-v"]).args(ids)
}

/// `docker rm -f [-v] ID...`: containers in any state (`volumes`: with their anonymous
/// volumes).
pub fn remove_force<S: AsRef<std::ffi::OsStr>>(ids: &[S], volumes: bool) -> Cmd {
    let c = docker().args(["rm", "-f"]);
    let c = if volumes { c.arg("-v") } else { c };
    c.args(ids)
}

/// `docker volume create [--label KEY=VALUE]... NAME`.
pub fn volume_create(name: &str, labels: &[(&str, &str)]) -> Cmd {
    let mut c = docker().args(["volume", "create"]);
    for (k, v) in labels {
        c = c.args(["--label", &format!("{k}={v}")]);
    }
    c.arg(name)
}

/// `docker volume rm -f NAME`.
pub fn volume_remove(name: &str) -> Cmd {
    docker().args(["volume", "rm", "-f", name])
}

/// Whether an image is present locally; its ID when it is.
pub fn image_id(reference: &str) -> Result<Option<String>> {
    match docker()
        .args(["image", "inspect", "--format", "{{.Id}}", reference])
        .read()
    {
        Ok(id) => Ok(Some(id.trim().to_string())),
        Err(ProcessError::Failed { stderr, .. })
            if stderr.contains("No such image") || stderr.contains("no such image") =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

// verbs used by backup

/// `docker volume inspect --format {{.Name}} NAME`: prints the name; fails when there
/// is no such volume.
pub fn volume_inspect(name: &str) -> Cmd {
    docker().args(["volume", "inspect", "--format", "{{.Name}}", name])
}

/// `docker volume ls -q`: every volume's name, one a line.
pub fn volume_list() -> Cmd {
    docker().args(["volume", "ls", "-q"])
}

/// `docker run --rm --pull never --network none [-i] --name NAME [--label KEY=VALUE]...
/// [-v MOUNT]... IMAGE`: a short-lived helper container from a local image, without a
/// network; its command goes after (more args).
pub fn run_helper(
    name: &str,
    image: &str,
    labels: &[(&str, &str)],
    mounts: &[String],
    interactive: bool,
) -> Cmd {
    let mut c = docker().args(["run", "--rm", "--pull", "never", "--network", "none"]);
    if interactive {
        c = c.arg("-i");
    }
    c = c.args(["--name", name]);
    for (k, v) in labels {
        c = c.args(["--label", &format!("{k}={v}")]);
    }
    for m in mounts {
        c = c.args(["-v", m]);
    }
    c.arg(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs() {
        let ids = vec!["a1".to_string(), "b2".to_string()];
        let shown = |c: Cmd| {
            c.arg_list()
                .iter()
                .map(|a| a.to_string_lossy().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            shown(stop(&ids, Duration::from_millis(1500))),
            "stop --time 2 a1 b2"
        );
        assert_eq!(
            shown(stop(&ids, Duration::from_secs(10))),
            "stop --time 10 a1 b2"
        );
        assert_eq!(shown(remove(&ids)), "rm -v a1 b2");
        assert_eq!(shown(remove_force(&ids, true)), "rm -f -v a1 b2");
        assert_eq!(shown(remove_force(&["m"], false)), "rm -f m");
        assert_eq!(
            shown(volume_create("v", &[("k", "x")])),
            "volume create --label k=x v"
        );
        assert_eq!(shown(volume_remove("v")), "volume rm -f v");
    }

    #[test]
    fn parses_inspect_output() {
        let json = r#"[{"Id":"0123456789abcdef0123","Name":"/shop-web-1","Image":"sha256:aa",
          "Created":"2026-11-22T03:00:00Z",
          "Config":{"Image":"shop-web:v1","Labels":{"com.docker.compose.service":"web"}},
          "State":{"Status":"exited","Running":false,"Restarting":false,"OOMKilled":true,
                   "ExitCode":137,"StartedAt":"x","Health":{"Status":"unhealthy","Log":[]}},
          "NetworkSettings":{"Networks":{"shop_default":{"IPAddress":"172.18.0.5"}}}}]"#;
        let c = &parse_inspect(json).unwrap()[0];
        assert_eq!(c.name, "shop-web-1");
        assert_eq!(c.short_id(), "0123456789ab");
        assert_eq!(c.image, "shop-web:v1");
        assert!(c.state.oom_killed);
        assert_eq!(c.state.exit_code, 137);
        assert_eq!(c.state.health.as_ref().unwrap().status, "unhealthy");
        assert_eq!(c.label("com.docker.compose.service"), Some("web"));
        assert_eq!(
            c.networks,
            vec![("shop_default".into(), "172.18.0.5".into())]
        );
    }
}
