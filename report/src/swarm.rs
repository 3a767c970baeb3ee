//! `berth-report status --engine swarm`: each service of the stack (the project's name)
//! with its tasks per node, their tag and health, from a manager (`docker service ls`,
//! `docker service inspect`, `docker service ps`, `docker inspect --type task`).
//!
//! A task's health is Swarm's view of it, since the manager cannot inspect a container
//! on another node: a service with a healthcheck has its tasks `starting` until the check
//! passes, then `running` (shown as `healthy`); without one, `running (no healthcheck)`.

use std::collections::BTreeMap;

use anyhow::Result;
use berth_core::cli::Context;
use berth_core::stack::{self, Spec, Task};
use berth_core::{docker, msg, swarm, time};
use serde_json::{json, Value};

use crate::status::{self, or_dash, since_text, table, tag_of, Now};

/// One service of the stack as Swarm runs it.
#[derive(Debug, Clone)]
pub struct SwarmService {
    pub name: String,
    /// `None`: the compose file names it, the stack has no such service.
    pub spec: Option<Spec>,
    /// The tasks Swarm wants running.
    pub tasks: Vec<Task>,
}

impl SwarmService {
    fn running(&self) -> impl Iterator<Item = &Task> {
        self.tasks.iter().filter(|t| t.state == "running")
    }

    /// The images of its tasks (more than one mid-update), without their digests.
    fn images(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tasks.iter().map(|t| no_digest(&t.image)).collect();
        v.sort();
        v.dedup();
        v
    }

    fn tags(&self) -> Vec<String> {
        self.images()
            .iter()
            .map(|i| tag_of(i).unwrap_or("(none)").to_string())
            .collect()
    }

    /// When its oldest running task started running.
    fn since(&self) -> Option<String> {
        self.running()
            .map(|t| t.since.clone())
            .filter(|s| time::parse(s).is_some())
            .min()
    }

    /// A task's health as Swarm reports it.
    fn task_health(&self, t: &Task) -> String {
        let checked = self.spec.as_ref().is_some_and(Spec::has_healthcheck);
        match t.state.as_str() {
            "running" if checked => "healthy".into(),
            "running" => "running (no healthcheck)".into(),
            s if t.error.is_empty() => s.to_string(),
            s => format!("{s}: {}", t.error),
        }
    }

    /// `healthy`, `1 healthy, 1 starting`, `not running (no tasks)`.
    fn health(&self) -> String {
        if self.tasks.is_empty() {
            return match &self.spec {
                None => "not running (not in the stack)".into(),
                Some(_) => "not running (no tasks)".into(),
            };
        }
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for t in &self.tasks {
            *counts.entry(self.task_health(t)).or_default() += 1;
        }
        status::counted(counts)
    }

    /// Desired replicas (replicated mode), `None` for a global service or none at all.
    fn replicas(&self) -> Option<u64> {
        self.spec
            .as_ref()
            .and_then(|s| s.mode.replicated.as_ref())
            .map(|r| r.replicas)
    }

    pub fn to_json(&self) -> Value {
        let mut v = status::service_json(&self.name, self.images(), self.since(), self.health());
        v["running"] = json!(self.running().count());
        v["replicas"] = json!(self.replicas());
        v["tasks"] = json!(self
            .tasks
            .iter()
            .map(|t| json!({
                "id": t.id,
                "name": t.name,
                "node": t.node,
                "state": t.state,
                "health": self.task_health(t),
                "image": t.image,
                "tag": tag_of(&t.image),
                "since": t.since,
                "error": (!t.error.is_empty()).then_some(&t.error),
            }))
            .collect::<Vec<_>>());
        v
    }
}

fn no_digest(image: &str) -> String {
    image.split('@').next().unwrap_or(image).to_string()
}

/// The stack's services (and those the compose file names) with their tasks.
pub fn services_now(ctx: &Context) -> Result<Vec<SwarmService>> {
    docker::ensure_reachable()?;
    swarm::ensure_manager(&swarm::node_state()?)?;
    let mut names = stack::services(&ctx.project)?;
    if status::has_compose_file(ctx) {
        match ctx.compose().services() {
            Ok(more) => names.extend(more),
            Err(e) => msg::warn(format!(
                "could not read the compose configuration ({}); showing the stack's services only",
                berth_core::exit::one_line(&e)
            )),
        }
    }
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let full = format!("{}_{name}", ctx.project);
            Ok(SwarmService {
                spec: stack::inspect(&full)?,
                tasks: stack::tasks(&full)?,
                name,
            })
        })
        .collect()
}

/// What runs now on Swarm: one row per service, then one per task.
pub fn now(ctx: &Context, service: Option<&str>) -> Result<Now> {
    let services = status::only(services_now(ctx)?, |x| &x.name, service, &ctx.project)?;
    let json = services.iter().map(SwarmService::to_json).collect();
    if services.is_empty() {
        return Ok(Now {
            json,
            table: String::new(),
        });
    }
    Ok(Now {
        json,
        table: format!(
            "{}Tasks:\n{}",
            services_table(&services),
            tasks_table(&services)
        ),
    })
}

fn services_table(services: &[SwarmService]) -> String {
    let mut rows = vec![[
        "SERVICE".to_string(),
        "TAG".into(),
        "HEALTH".into(),
        "SINCE".into(),
        "TASKS".into(),
        "IMAGE".into(),
    ]];
    for s in services {
        let mut nodes: Vec<&str> = s.running().map(|t| t.node.as_str()).collect();
        nodes.sort_unstable();
        let want = s.replicas().map(|r| format!("/{r}")).unwrap_or_default();
        rows.push([
            s.name.clone(),
            or_dash(s.tags().join(",")),
            s.health(),
            since_text(s.since()),
            format!(
                "{}{want} running: {}",
                nodes.len(),
                or_dash(nodes.join(","))
            ),
            or_dash(s.images().join(",")),
        ]);
    }
    table(&rows)
}

fn tasks_table(services: &[SwarmService]) -> String {
    let mut rows = vec![[
        "  TASK".to_string(),
        "NODE".into(),
        "TAG".into(),
        "HEALTH".into(),
        "SINCE".into(),
    ]];
    for s in services {
        for t in &s.tasks {
            rows.push([
                format!("  {}", t.name),
                t.node.clone(),
                tag_of(&t.image).unwrap_or("-").to_string(),
                s.task_health(t),
                since_text(Some(t.since.clone()).filter(|s| time::parse(s).is_some())),
            ]);
        }
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str, node: &str, state: &str, image: &str) -> Task {
        Task {
            id: name.into(),
            name: name.into(),
            node: node.into(),
            state: state.into(),
            desired: "running".into(),
            since: "2026-12-06T13:00:00Z".into(),
            image: image.into(),
            error: String::new(),
            addresses: Vec::new(),
        }
    }

    #[test]
    fn tasks_per_node_with_tag_and_health() {
        let spec: Spec = serde_json::from_str(
            r#"{"Mode":{"Replicated":{"Replicas":2}},"TaskTemplate":{"ContainerSpec":
                {"Healthcheck":{"Test":["CMD","/app","healthcheck"]}}}}"#,
        )
        .unwrap();
        let s = SwarmService {
            name: "web".into(),
            spec: Some(spec),
            tasks: vec![
                task("s_web.1", "m1", "running", "r:5000/app:v1@sha256:ab"),
                task("s_web.2", "w1", "starting", "r:5000/app:v2@sha256:cd"),
            ],
        };
        assert_eq!(s.health(), "1 healthy, 1 starting");
        assert_eq!(s.tags(), ["v1", "v2"]);
        let j = s.to_json();
        assert_eq!(j["running"], 1);
        assert_eq!(j["replicas"], 2);
        assert_eq!(j["tasks"][1]["node"], "w1");
        assert_eq!(j["tasks"][1]["tag"], "v2");
        assert_eq!(j["since"], "2026-12-06T13:00:00Z");
        let text = services_table(std::slice::from_ref(&s));
        assert!(text.contains("1/2 running: m1"), "{text}");
        let none = SwarmService {
            name: "db".into(),
            spec: None,
            tasks: vec![],
        };
        assert_eq!(none.health(), "not running (not in the stack)");
    }
}
