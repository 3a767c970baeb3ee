//! What in a compose project Docker Swarm ignores or rejects: one finding per service and
//! key, with what to use instead, so that moving a project from Compose to Swarm starts
//! with a list, not with surprises.
//!
//! The service keys are read from compose's normalised configuration (`docker compose
//! config --format json`); the verdicts follow the docker CLI's `stack deploy` (its
//! unsupported, deprecated and forbidden properties, and the keys its compose 3.x schema
//! does not allow, checked against `docker stack config`).

use serde_json::Value;

/// How Swarm treats a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `docker stack deploy` refuses the file.
    Rejected,
    /// `docker stack deploy` drops the key (with or without a warning).
    Ignored,
    /// Accepted, but does not work on this host.
    Broken,
}

/// One thing to change before the project runs on Swarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The service, or `None` for the project (a file).
    pub service: Option<String>,
    /// The key (or file) concerned.
    pub key: String,
    pub verdict: Verdict,
    /// What happens and what to use instead.
    pub advice: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.verdict {
            Verdict::Rejected => "rejected by docker stack deploy",
            Verdict::Ignored => "ignored by docker stack deploy",
            Verdict::Broken => "does not work on this host",
        };
        match &self.service {
            Some(s) => write!(f, "service {s}: {}: {what}; {}", self.key, self.advice),
            None => write!(f, "{}: {what}; {}", self.key, self.advice),
        }
    }
}

impl Finding {
    pub fn json(&self) -> Value {
        serde_json::json!({
            "service": self.service,
            "key": self.key,
            "verdict": match self.verdict {
                Verdict::Rejected => "rejected",
                Verdict::Ignored => "ignored",
                Verdict::Broken => "broken",
            },
            "advice": self.advice,
        })
    }
}

const RESOURCES: &str = "set limits under deploy.resources";

/// Service keys `docker stack deploy` drops, and what to do instead.
const IGNORED: &[(&str, &str)] = &[
    ("build", "build and push the image before the deploy; a stack only runs image:"),
    ("container_name", "Swarm names the tasks itself; reach the service by its name"),
    ("expose", "not needed: services on the same network reach each other on any port"),
    ("restart", "use deploy.restart_policy (condition: any | on-failure | none)"),
    ("links", "services on the same overlay network reach each other by name"),
    ("external_links", "attach the service to the other stack's network (external: true)"),
    ("network_mode", "attach the service to networks: (overlay); for the host's network use the network named host"),
    ("devices", "Swarm services cannot map devices; run that part outside the stack"),
    ("privileged", "Swarm services cannot be privileged; use cap_add for the capabilities needed"),
    ("security_opt", "not passed to Swarm tasks; drop it or run that part outside the stack"),
    ("cgroup_parent", "not passed to Swarm tasks; drop it"),
    ("domainname", "not passed to Swarm tasks; drop it"),
    ("ipc", "not passed to Swarm tasks; drop it"),
    ("pid", "not passed to Swarm tasks; drop it"),
    ("mac_address", "not passed to Swarm tasks; drop it"),
    ("shm_size", "not passed to Swarm tasks; mount a tmpfs at /dev/shm instead"),
    ("userns_mode", "not passed to Swarm tasks; drop it"),
];

/// Service keys `docker stack deploy` refuses outright ("forbidden properties").
const FORBIDDEN: &[(&str, &str)] = &[
    ("mem_limit", "use deploy.resources.limits.memory"),
    ("memswap_limit", RESOURCES),
    ("cpu_quota", "use deploy.resources.limits.cpus"),
    ("cpu_shares", RESOURCES),
    ("cpuset", RESOURCES),
    (
        "volumes_from",
        "define the volume under the top-level volumes: and mount it in each service",
    ),
    (
        "volume_driver",
        "define the volume under the top-level volumes: with its driver",
    ),
];

/// Every service key the compose 3.x schema of `docker stack deploy` allows (checked one
/// by one against `docker stack config` of docker CLI 28).
const ALLOWED: &[&str] = &[
    "build",
    "cap_add",
    "cap_drop",
    "cgroup_parent",
    "cgroupns_mode",
    "command",
    "configs",
    "container_name",
    "credential_spec",
    "depends_on",
    "deploy",
    "devices",
    "dns",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "environment",
    "expose",
    "external_links",
    "extra_hosts",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "isolation",
    "labels",
    "links",
    "logging",
    "mac_address",
    "network_mode",
    "networks",
    "pid",
    "ports",
    "privileged",
    "read_only",
    "restart",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "user",
    "userns_mode",
    "volumes",
    "working_dir",
];

/// Advice for keys outside the schema that compose users often have.
fn outside_schema(key: &str) -> &'static str {
    match key {
        "cpus" => "use deploy.resources.limits.cpus",
        "mem_reservation" => "use deploy.resources.reservations.memory",
        "scale" => "use deploy.replicas",
        "pull_policy" => "drop it: Swarm pulls the image by tag on each node (berth-swap pull checks the registry)",
        "profiles" => "drop it: a stack deploys every service in its files; split the files instead",
        "platform" => "use deploy.placement.constraints (node.platform.arch == ...)",
        _ => "drop it or find its Swarm counterpart under deploy:",
    }
}

/// The findings for the services of a normalised compose configuration. `ipvs`: whether
/// this host's kernel has IPVS, without which Swarm's routing mesh and service VIPs do
/// not route.
pub fn services(cfg: &Value, ipvs: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    let Some(services) = cfg.get("services").and_then(Value::as_object) else {
        return out;
    };
    // By service, then key: the same list whatever order the file has.
    let mut names: Vec<&String> = services.keys().collect();
    names.sort();
    for name in names {
        let svc = &services[name];
        let Some(keys) = svc.as_object() else {
            continue;
        };
        let mut keys: Vec<(&String, &Value)> = keys.iter().collect();
        keys.sort_by_key(|(k, _)| *k);
        let mut add = |key: &str, verdict, advice: &str| {
            out.push(Finding {
                service: Some(name.clone()),
                key: key.to_string(),
                verdict,
                advice: advice.to_string(),
            })
        };
        for (key, value) in keys {
            if value.is_null() || key.starts_with("x-") {
                continue;
            }
            if let Some((_, advice)) = FORBIDDEN.iter().find(|(k, _)| k == key) {
                add(key, Verdict::Rejected, advice);
            } else if key == "depends_on" {
                depends_on(value, &mut add);
            } else if let Some((_, advice)) = IGNORED.iter().find(|(k, _)| k == key) {
                add(key, Verdict::Ignored, advice);
            } else if !ALLOWED.contains(&key.as_str()) {
                add(key, Verdict::Rejected, outside_schema(key));
            }
        }
        if !ipvs {
            network(svc, &mut add);
        }
    }
    out
}

/// `depends_on`: a condition other than "started" is outside the schema; the plain list
/// is accepted and ignored (Swarm starts services in no order).
fn depends_on(value: &Value, add: &mut impl FnMut(&str, Verdict, &str)) {
    let conditions: Vec<String> = value
        .as_object()
        .map(|deps| {
            deps.iter()
                .filter_map(|(dep, d)| {
                    let c = d.get("condition").and_then(Value::as_str)?;
                    (c != "service_started").then(|| format!("{dep}: {c}"))
                })
                .collect()
        })
        .unwrap_or_default();
    if conditions.is_empty() {
        add(
            "depends_on",
            Verdict::Ignored,
            "Swarm starts services in no order: each service must wait for (retry) what it needs",
        );
    } else {
        add(
            &format!("depends_on condition ({})", conditions.join(", ")),
            Verdict::Rejected,
            "Swarm has no start conditions: list the services only, and let each service wait for (retry) what it needs",
        );
    }
}

/// Ports published through the routing mesh, and service VIPs, on a host without IPVS.
fn network(svc: &Value, add: &mut impl FnMut(&str, Verdict, &str)) {
    let ingress: Vec<String> = svc
        .get("ports")
        .and_then(Value::as_array)
        .map(|ports| {
            ports
                .iter()
                .filter(|p| p.get("mode").and_then(Value::as_str).unwrap_or("ingress") != "host")
                .map(|p| {
                    let n = |k: &str| p.get(k).map(port_text).unwrap_or_default();
                    format!("{}:{}", n("published"), n("target"))
                })
                .collect()
        })
        .unwrap_or_default();
    if !ingress.is_empty() {
        add(
            &format!("ports {} (mode ingress)", ingress.join(", ")),
            Verdict::Broken,
            "the routing mesh needs IPVS, which this kernel lacks: publish with mode: host",
        );
    }
    let mode = svc
        .pointer("/deploy/endpoint_mode")
        .and_then(Value::as_str)
        .unwrap_or("vip");
    if mode != "dnsrr" {
        add(
            "deploy.endpoint_mode vip",
            Verdict::Broken,
            "service VIPs need IPVS, which this kernel lacks: set deploy.endpoint_mode: dnsrr",
        );
    }
}

fn port_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The variables a compose file's text refers to (`$NAME`, `${NAME}`, `${NAME:-x}`...),
/// in order of first use; `$$` is a literal dollar.
pub fn variables(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        if b.get(i + 1) == Some(&b'$') {
            i += 2;
            continue;
        }
        let start = i + 1 + usize::from(b.get(i + 1) == Some(&b'{'));
        let len = b[start..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
            .count();
        let name = &text[start..start + len];
        let valid = !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit());
        if valid && !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
        i = start + len.max(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines(f: &[Finding]) -> Vec<String> {
        f.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn names_each_key_with_its_verdict() {
        let cfg = json!({"services": {
            "web": {
                "image": "app:1", "command": null, "build": {"context": "."},
                "restart": "always", "mem_limit": "104857600", "x-note": 1,
                "depends_on": {"db": {"condition": "service_healthy", "required": true}},
                "ports": [{"mode": "ingress", "target": 8080, "published": "8080"}],
            },
            "db": {
                "image": "pg", "profiles": ["x"],
                "depends_on": {"cache": {"condition": "service_started", "required": true}},
                "ports": [{"mode": "host", "target": 5432, "published": "5432"}],
                "deploy": {"endpoint_mode": "dnsrr"},
            },
        }});
        let f = services(&cfg, false);
        assert_eq!(
            lines(&f),
            [
                "service db: depends_on: ignored by docker stack deploy; Swarm starts services in no order: each service must wait for (retry) what it needs",
                "service db: profiles: rejected by docker stack deploy; drop it: a stack deploys every service in its files; split the files instead",
                "service web: build: ignored by docker stack deploy; build and push the image before the deploy; a stack only runs image:",
                "service web: depends_on condition (db: service_healthy): rejected by docker stack deploy; Swarm has no start conditions: list the services only, and let each service wait for (retry) what it needs",
                "service web: mem_limit: rejected by docker stack deploy; use deploy.resources.limits.memory",
                "service web: restart: ignored by docker stack deploy; use deploy.restart_policy (condition: any | on-failure | none)",
                "service web: ports 8080:8080 (mode ingress): does not work on this host; the routing mesh needs IPVS, which this kernel lacks: publish with mode: host",
                "service web: deploy.endpoint_mode vip: does not work on this host; service VIPs need IPVS, which this kernel lacks: set deploy.endpoint_mode: dnsrr",
            ]
        );
        // With IPVS the mesh and VIPs route: no network findings.
        assert_eq!(services(&cfg, true).len(), f.len() - 2);
    }

    #[test]
    fn a_swarm_ready_service_has_no_findings() {
        let cfg = json!({"services": {"web": {
            "image": "app:1", "command": null, "entrypoint": null, "init": true,
            "healthcheck": {"test": ["CMD", "true"]}, "networks": {"appnet": null},
            "ports": [{"mode": "host", "target": 8080, "published": "8080"}],
            "deploy": {"endpoint_mode": "dnsrr", "replicas": 2},
        }}});
        assert_eq!(services(&cfg, false), []);
    }

    #[test]
    fn variables_of_a_file() {
        let text = "image: app:${BERTH_TAG}\nx: $HOME/${A:-d} $$LITERAL ${B?err} $1 $\n";
        assert_eq!(variables(text), ["BERTH_TAG", "HOME", "A", "B"]);
    }
}
