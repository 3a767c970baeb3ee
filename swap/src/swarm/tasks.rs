//! The tasks of a stack's service: on which node each runs, in which state, from which
//! image, and at which overlay addresses (what the swap on Swarm will probe and route to).

use anyhow::Result;
use berth_core::docker;
use serde::Deserialize;
use serde_json::{json, Value};

/// One task that Swarm wants running.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: String,
    pub node: String,
    /// Swarm's state of the task (`running`, `starting`, `preparing`, ...).
    pub state: String,
    pub image: String,
    /// Its addresses on the overlay networks, without the prefix length.
    pub addresses: Vec<String>,
}

impl Task {
    pub fn json(&self) -> Value {
        json!({
            "id": self.id, "node": self.node, "state": self.state,
            "image": self.image, "addresses": self.addresses,
        })
    }
}

/// A line of `docker service ps --format '{{json .}}'`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PsLine {
    #[serde(rename = "ID")]
    id: String,
    node: String,
}

/// The parts of `docker inspect --type task` read here.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspected {
    #[serde(rename = "ID")]
    id: String,
    status: Status,
    spec: Spec,
    #[serde(default)]
    networks_attachments: Vec<Attachment>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Status {
    state: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Spec {
    container_spec: ContainerSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerSpec {
    image: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Attachment {
    #[serde(default)]
    addresses: Vec<String>,
    network: Network,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Network {
    spec: NetworkSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkSpec {
    #[serde(default)]
    name: String,
}

/// The tasks of service `STACK_SERVICE` that Swarm wants running; none when the service
/// does not exist yet (a first deploy).
pub fn desired_running(stack: &str, service: &str) -> Result<Vec<Task>> {
    let name = format!("{stack}_{service}");
    let ps = docker::docker()
        .args([
            "service",
            "ps",
            "--no-trunc",
            "--filter",
            "desired-state=running",
        ])
        .args(["--format", "{{json .}}", &name])
        .read();
    let ps = match ps {
        Ok(out) => out,
        Err(e) if e.stderr().contains("no such service") => return Ok(Vec::new()),
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
    let out = docker::docker()
        .args(["inspect", "--type", "task"])
        .args(lines.iter().map(|l| l.id.as_str()))
        .read()?;
    let inspected: Vec<Inspected> = serde_json::from_str(&out)?;
    Ok(tasks_from(&lines, inspected))
}

fn tasks_from(lines: &[PsLine], inspected: Vec<Inspected>) -> Vec<Task> {
    inspected
        .into_iter()
        .map(|t| Task {
            node: lines
                .iter()
                .find(|l| l.id == t.id)
                .map(|l| l.node.clone())
                .unwrap_or_default(),
            state: t.status.state,
            image: t.spec.container_spec.image,
            addresses: t
                .networks_attachments
                .iter()
                // The ingress network carries only the routing mesh, never berth's traffic.
                .filter(|a| a.network.spec.name != "ingress")
                .flat_map(|a| &a.addresses)
                .map(|a| a.split('/').next().unwrap_or(a).to_string())
                .collect(),
            id: t.id,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_join_ps_and_inspect() {
        let lines = vec![PsLine {
            id: "t1".into(),
            node: "m1".into(),
        }];
        let inspected: Vec<Inspected> = serde_json::from_str(
            r#"[{"ID":"t1","Status":{"State":"running"},
                 "Spec":{"ContainerSpec":{"Image":"r:5000/app:v1@sha256:ab"}},
                 "NetworksAttachments":[
                   {"Network":{"Spec":{"Name":"ingress"}},"Addresses":["10.0.0.5/24"]},
                   {"Network":{"Spec":{"Name":"s_appnet"}},"Addresses":["10.0.1.7/24"]}]}]"#,
        )
        .unwrap();
        assert_eq!(
            tasks_from(&lines, inspected),
            [Task {
                id: "t1".into(),
                node: "m1".into(),
                state: "running".into(),
                image: "r:5000/app:v1@sha256:ab".into(),
                addresses: vec!["10.0.1.7".into()],
            }]
        );
    }
}
