//! A stack's services as Docker Swarm runs them, read on a manager: a service's spec
//! (`docker service inspect`: image, environment, networks, secrets), its first
//! attachable overlay network (where berth's one-off containers join it: the pg
//! clients of `berth-backup`, the migration of `berth-migrate`), and its tasks per node
//! with their overlay addresses (`docker service ps` + `docker inspect --type task`, for
//! `berth-report status` and the swap on Swarm, which probes them).

use anyhow::Result;
use serde::Deserialize;

use crate::docker::docker;
use crate::process::ProcessError;

/// The label `docker stack deploy` puts on a stack's services.
pub const LABEL_NAMESPACE: &str = "com.docker.stack.namespace";

/// What berth reads of `docker service inspect`'s `.Spec`.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Spec {
    #[serde(default)]
    pub task_template: TaskTemplate,
    #[serde(default)]
    pub mode: Mode,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct TaskTemplate {
    #[serde(default)]
    pub container_spec: ContainerSpec,
    #[serde(default)]
    pub networks: Vec<NetworkRef>,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSpec {
    #[serde(default)]
    pub image: String,
    /// `KEY=VALUE` (may hold secrets: never shown).
    #[serde(default)]
    pub env: Vec<String>,
    /// The entrypoint, when the stack file overrides it.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub dir: String,
    #[serde(default)]
    pub secrets: Vec<SecretRef>,
    #[serde(default)]
    pub healthcheck: Option<Healthcheck>,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct SecretRef {
    #[serde(default)]
    pub secret_name: String,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    #[serde(default)]
    pub test: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkRef {
    pub target: String,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Mode {
    #[serde(default)]
    pub replicated: Option<Replicated>,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Replicated {
    #[serde(default)]
    pub replicas: u64,
}

impl Spec {
    /// Whether the service's spec has a healthcheck (Swarm then starts a task as
    /// `starting` and makes it `running` once the check passes).
    pub fn has_healthcheck(&self) -> bool {
        self.task_template
            .container_spec
            .healthcheck
            .as_ref()
            .is_some_and(|h| h.test.first().is_some_and(|t| t != "NONE"))
    }

    /// A variable of the service's environment, when set and not empty.
    pub fn env(&self, key: &str) -> Option<String> {
        env_value(&self.task_template.container_spec.env, key)
    }
}

/// A variable of a `KEY=VALUE` list, when set and not empty.
pub fn env_value(env: &[String], key: &str) -> Option<String> {
    env.iter()
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, v)| *k == key && !v.is_empty())
        .map(|(_, v)| v.to_string())
}

/// The spec of service `full` (`STACK_SERVICE`); `Ok(None)` when there is no such service.
pub fn inspect(full: &str) -> Result<Option<Spec>> {
    let out = docker()
        .args(["service", "inspect", "--format", "{{json .Spec}}", full])
        .read();
    match out {
        Ok(text) => serde_json::from_str(text.trim())
            .map(Some)
            .map_err(|e| anyhow::anyhow!("docker service inspect {full}: unexpected output: {e}")),
        Err(e) if no_such_service(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn no_such_service(e: &ProcessError) -> bool {
    e.stderr().to_lowercase().contains("no such service")
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Network {
    name: String,
    #[serde(default)]
    attachable: bool,
}

/// The name of the first attachable network of a spec (where a one-off container can
/// join the service); `None` when it has none.
pub fn attachable_network(spec: &Spec) -> Result<Option<String>> {
    for n in &spec.task_template.networks {
        let text = docker()
            .args(["network", "inspect", "--format", "{{json .}}", &n.target])
            .read()?;
        let net: Network = serde_json::from_str(text.trim())
            .map_err(|e| anyhow::anyhow!("docker network inspect {}: {e}", n.target))?;
        if net.attachable {
            return Ok(Some(net.name));
        }
    }
    Ok(None)
}

/// The stack's services, without the stack's prefix, sorted.
pub fn services(stack: &str) -> Result<Vec<String>> {
    let out = docker()
        .args(["service", "ls", "--format", "{{.Name}}", "--filter"])
        .arg(format!("label={LABEL_NAMESPACE}={stack}"))
        .read()?;
    let prefix = format!("{stack}_");
    let mut names: Vec<String> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix(&prefix))
        .map(str::to_string)
        .collect();
    names.sort();
    Ok(names)
}

/// One task of a service that Swarm wants running.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Task {
    pub id: String,
    /// `STACK_SERVICE.SLOT`
    pub name: String,
    pub node: String,
    /// Swarm's state: `running`, `starting` (its healthcheck has not passed yet),
    /// `preparing`, `pending`, ...
    pub state: String,
    /// What Swarm wants of it: `running`, `shutdown`, ... (lower case).
    pub desired: String,
    /// When the task entered that state (RFC 3339).
    pub since: String,
    /// The image as the task runs it (usually pinned by digest).
    pub image: String,
    /// Why it is not running, when Swarm says (`Status.Err`).
    pub error: String,
    /// Its addresses on the stack's overlay networks, without the prefix length (the
    /// ingress network, which carries only the routing mesh, left out).
    pub addresses: Vec<String>,
}

impl Task {
    /// What a stage records of a task (`berth-swap preflight`'s `detail.tasks`).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id, "node": self.node, "state": self.state,
            "image": self.image, "addresses": self.addresses,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PsLine {
    #[serde(rename = "ID")]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    node: String,
    /// `Running`, `Shutdown`, ... (what Swarm wants of the task).
    #[serde(default)]
    desired_state: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspected {
    #[serde(rename = "ID")]
    id: String,
    status: TaskStatus,
    spec: TaskSpec,
    #[serde(default)]
    networks_attachments: Vec<Attachment>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Attachment {
    #[serde(default)]
    addresses: Vec<String>,
    network: AttachedNetwork,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AttachedNetwork {
    spec: AttachedNetworkSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AttachedNetworkSpec {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TaskStatus {
    #[serde(default)]
    state: String,
    #[serde(default)]
    timestamp: String,
    #[serde(default)]
    err: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TaskSpec {
    #[serde(default)]
    container_spec: ContainerSpec,
}

/// The tasks of service `full` that Swarm wants running, sorted by name; none when the
/// service does not exist.
pub fn tasks(full: &str) -> Result<Vec<Task>> {
    listed(full, &["--filter", "desired-state=running"])
}

/// Every task of service `full` Swarm still lists (its history too: tasks it shut down,
/// failed or rejected), sorted by name; none when the service does not exist.
pub fn all_tasks(full: &str) -> Result<Vec<Task>> {
    listed(full, &[])
}

fn listed(full: &str, filter: &[&str]) -> Result<Vec<Task>> {
    let ps = docker()
        .args(["service", "ps", "--no-trunc"])
        .args(filter)
        .args(["--format", "{{json .}}", full])
        .read();
    let ps = match ps {
        Ok(out) => out,
        Err(e) if no_such_service(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let lines: Vec<PsLine> = ps
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    if lines.is_empty() {
        return Ok(Vec::new());
    }
    let out = docker()
        .args(["inspect", "--type", "task"])
        .args(lines.iter().map(|l| l.id.as_str()))
        .read()?;
    let inspected: Vec<Inspected> = serde_json::from_str(&out)?;
    Ok(join(&lines, inspected))
}

fn join(lines: &[PsLine], inspected: Vec<Inspected>) -> Vec<Task> {
    let mut tasks: Vec<Task> = inspected
        .into_iter()
        .map(|t| {
            let line = lines.iter().find(|l| l.id == t.id);
            Task {
                name: line.map(|l| l.name.clone()).unwrap_or_default(),
                node: line.map(|l| l.node.clone()).unwrap_or_default(),
                desired: line
                    .map(|l| l.desired_state.to_lowercase())
                    .unwrap_or_default(),
                state: t.status.state,
                since: t.status.timestamp,
                image: t.spec.container_spec.image,
                error: t.status.err,
                addresses: t
                    .networks_attachments
                    .iter()
                    .filter(|a| a.network.spec.name != "ingress")
                    .flat_map(|a| &a.addresses)
                    .map(|a| a.split('/').next().unwrap_or(a).to_string())
                    .collect(),
                id: t.id,
            }
        })
        .collect();
    tasks.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    tasks
}

/// `REPO@sha256:...` of a pulled image, from the registry `image` (`REPO:TAG`) names.
pub fn repo_digest(image: &str) -> Result<Option<String>> {
    let out = docker()
        .args(["image", "inspect", "--format"])
        .args(["{{range .RepoDigests}}{{.}} {{end}}", image])
        .read()?;
    let repo = repo_of(image);
    Ok(out
        .split_whitespace()
        .find(|d| d.split_once('@').is_some_and(|(r, _)| r == repo))
        .map(str::to_string))
}

/// The repository of an image reference: without its tag and digest.
pub fn repo_of(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rsplit_once(':') {
        // A ':' after the last '/' is the tag's; before it, a registry's port.
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => image,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_reads_what_berth_needs() {
        let spec: Spec = serde_json::from_str(
            r#"{"Name":"shop_web","Mode":{"Replicated":{"Replicas":2}},
                "TaskTemplate":{"ContainerSpec":{"Image":"r:5000/app:v1@sha256:ab",
                  "Env":["A=1","EMPTY="],"Command":["/app"],
                  "Secrets":[{"SecretName":"db_pw","File":{"Name":"db_pw"}}],
                  "Healthcheck":{"Test":["CMD","/app","healthcheck"]}},
                 "Networks":[{"Target":"n1"}]}}"#,
        )
        .unwrap();
        assert!(spec.has_healthcheck());
        assert_eq!(spec.env("A").as_deref(), Some("1"));
        assert_eq!(spec.env("EMPTY"), None);
        assert_eq!(spec.mode.replicated.as_ref().map(|r| r.replicas), Some(2));
        let c = &spec.task_template.container_spec;
        assert_eq!(c.secrets[0].secret_name, "db_pw");
        assert_eq!(c.command, ["/app"]);
        let none: Spec = serde_json::from_str(
            r#"{"TaskTemplate":{"ContainerSpec":{"Healthcheck":{"Test":["NONE"]}}}}"#,
        )
        .unwrap();
        assert!(!none.has_healthcheck());
        assert!(!Spec::default().has_healthcheck());
    }

    #[test]
    fn tasks_join_ps_and_inspect_sorted() {
        let lines = vec![
            PsLine {
                id: "t2".into(),
                name: "s_web.2".into(),
                node: "w1".into(),
                desired_state: "Running".into(),
            },
            PsLine {
                id: "t1".into(),
                name: "s_web.1".into(),
                node: "m1".into(),
                desired_state: "Shutdown".into(),
            },
        ];
        let inspected: Vec<Inspected> = serde_json::from_str(
            r#"[{"ID":"t2","Status":{"State":"starting","Timestamp":"2026-12-06T14:00:00Z"},
                 "Spec":{"ContainerSpec":{"Image":"r:5000/app:v2@sha256:cd"}}},
                {"ID":"t1","Status":{"State":"running","Timestamp":"2026-12-06T13:00:00Z","Err":""},
                 "Spec":{"ContainerSpec":{"Image":"r:5000/app:v1@sha256:ab"}},
                 "NetworksAttachments":[
                   {"Network":{"Spec":{"Name":"ingress"}},"Addresses":["10.0.0.5/24"]},
                   {"Network":{"Spec":{"Name":"s_appnet"}},"Addresses":["10.0.1.7/24"]}]}]"#,
        )
        .unwrap();
        let tasks = join(&lines, inspected);
        assert_eq!(
            tasks.iter().map(|t| t.node.as_str()).collect::<Vec<_>>(),
            ["m1", "w1"]
        );
        assert_eq!(tasks[1].state, "starting");
        assert_eq!(
            (tasks[0].desired.as_str(), tasks[1].desired.as_str()),
            ("shutdown", "running")
        );
        assert_eq!(tasks[0].since, "2026-12-06T13:00:00Z");
        assert_eq!(tasks[0].addresses, ["10.0.1.7"]);
        assert!(tasks[1].addresses.is_empty());
    }

    #[test]
    fn repositories_of_references() {
        assert_eq!(repo_of("reg:5000/app:v1"), "reg:5000/app");
        assert_eq!(repo_of("reg:5000/app"), "reg:5000/app");
        assert_eq!(repo_of("reg:5000/app:v1@sha256:ab"), "reg:5000/app");
        assert_eq!(repo_of("app"), "app");
    }
}
