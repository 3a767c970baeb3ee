//! `berth-swap --engine swarm` (and `berth-rollback`, through [`crate::engine::swap`]):
//! the zero-downtime swap on Docker Swarm.
//!
//! For the services behind nginx (nginx a service of the stack, its task on this manager,
//! its upstream directory a bind mount of a directory here):
//!
//! 1. `docker stack deploy` of a generated file holding only `SERVICE--next` (the
//!    service's own definition at the new tag) into the same stack, beside the old tasks.
//! 2. Each new task is probed at its overlay address from inside nginx's container
//!    (`docker exec PROXY curl ...`). Not ready in time: `SERVICE--next` is removed,
//!    exit 3, nothing else changed.
//! 3. Switch: once the proxy's resolver lists exactly the ready tasks under
//!    `tasks.STACK_SERVICE--next`, berth's file for the service sets nginx's variable
//!    `$berth_SERVICE` to that name (`nginx -t`, graceful reload, wait for the new
//!    workers: the Compose path's [`nginx::apply`]); drain.
//! 4. The stack's own service is updated to the new tag (no traffic reaches it), its
//!    tasks probed, nginx switched back to `tasks.STACK_SERVICE`, drained, and
//!    `SERVICE--next` removed: the running stack is again what `docker stack deploy` of
//!    the project's file makes.
//!
//! nginx resolves that name per request (`resolver 127.0.0.11 valid=1s`, the variable in
//! `proxy_pass`), so it follows tasks that Swarm moves (a drained node, a task restarted
//! elsewhere) without berth: Swarm's DNS lists a task once its healthcheck passes and
//! drops it before the task gets SIGTERM. No task address is ever written down, so none
//! goes stale. See docs/swarm.md.
//!
//! Workers (no traffic) then take `docker service update --image --update-order
//! start-first --update-failure-action rollback`, waited until converged. A failure after
//! the first switch is exit 4: the new release serves (see [`AfterSwitch`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use berth_core::cli::Context;
use berth_core::process::Runner;
use berth_core::time::millis;
use berth_core::{docker, fail, fault, msg, record, swarm, time, Failure};
use serde_json::{json, Map, Value};

use crate::engine::{AfterSwitch, Options, SwapOutcome, Unmoved};
use crate::nginx::{self, Proxy, ProxyMode};
use crate::{envfile, owner, upstream};
use berth_core::stack::{self, Task};

/// The suffix of the temporary service that holds the new release during a swap.
pub const NEXT: &str = "--next";

/// One service of the swap.
struct Svc {
    name: String,
    /// Its definition at the new tag (compose's normalised configuration).
    def: Value,
    image: String,
    replicas: usize,
    upstream: Option<PathBuf>,
    old: Vec<Task>,
    new: Vec<Task>,
    time_to_ready_ms: Option<u64>,
    /// A worker this swap updated (a failure later rolls it back).
    updated: bool,
}

struct Plan<'a> {
    ctx: &'a Context,
    opts: &'a Options,
    tag: &'a str,
    deploy_id: &'a str,
    cfg: Value,
    proxy: Option<Proxy>,
    services: Vec<Svc>,
    previous_tag: Option<String>,
    times: Map<String, Value>,
    /// What [`Plan::clean_up_before`] removed of an earlier swap.
    cleaned_up: Vec<String>,
}

/// Swap `services` of the stack to `tag`. Errors carry their exit code (1 preflight, 3
/// nothing moved, 4 after the switch, 64 what Swarm does not support here).
pub fn swap(
    ctx: &Context,
    opts: &Options,
    services: &[String],
    tag: &str,
    deploy_id: &str,
) -> Result<SwapOutcome> {
    let started = Instant::now();
    let mut p = Plan::new(ctx, opts, services, tag, deploy_id)?;
    if ctx.dry_run {
        p.say_dry_run()?;
        return Ok(p.outcome(true));
    }
    if let Err(e) = p.run() {
        return Err(p.unmoved(e));
    }
    p.time("total_ms", started);
    msg::info(format!(
        "swapped {} of stack {} to {tag} in {}",
        services.join(", "),
        ctx.project,
        berth_core::human::elapsed_ms(millis(started.elapsed()))
    ));
    Ok(p.outcome(false))
}

impl<'a> Plan<'a> {
    fn run(&mut self) -> Result<()> {
        // Workers go between the new tasks' readiness and the switch, so a release moves
        // completely or not at all: a worker update Swarm rolls back removes `--next` before
        // traffic moved (exit 3), and a switch that fails rolls the workers back.
        let proxied = self.proxied().next().is_some();
        if proxied {
            self.clean_up_before()?;
            self.start_next()?;
        }
        self.update_workers()?;
        if proxied {
            self.switch_to_next()?;
            self.converge_own().map_err(|e| self.after_switch(e))?;
        }
        let (ctx, tag) = (self.ctx, self.tag);
        let pin = ctx.pin_file();
        envfile::write_var(&pin, &ctx.tag_var, tag, &ctx.project)
            .with_context(|| format!("recording {}={tag} in {}", ctx.tag_var, pin.display()))
            .map_err(|e| self.after_switch(e))?;
        Ok(())
    }

    /// A failure before traffic moved (exit 3): the document's detail records the tasks
    /// that ran before and still run ([`Unmoved`]); one after the switch stays as it is.
    fn unmoved(&self, e: anyhow::Error) -> anyhow::Error {
        if e.downcast_ref::<AfterSwitch>().is_some() {
            return e;
        }
        let mut detail = Map::new();
        record::put(&mut detail, &self.swap_record(false));
        if !self.cleaned_up.is_empty() {
            detail.insert("cleaned_up".into(), json!(self.cleaned_up));
        }
        e.context(Unmoved {
            previous_tag: self.previous_tag.clone(),
            detail,
            cleaned_up: self.cleaned_up.clone(),
        })
    }

    fn new(
        ctx: &'a Context,
        opts: &'a Options,
        names: &[String],
        tag: &'a str,
        deploy_id: &'a str,
    ) -> Result<Plan<'a>> {
        if !matches!(opts.proxy, ProxyMode::Compose | ProxyMode::None) {
            return Err(Failure::usage(
                "--engine swarm: a swap goes through nginx as a service of the stack (--proxy compose) or no proxy (--proxy none)",
            )
            .into());
        }
        swarm::ensure_manager(&swarm::node_state()?)?;
        let cfg = ctx
            .compose_at(tag)
            .config()
            .map_err(|e| fail!(Preflight, "{e:#}"))?;
        let mut services = Vec::new();
        for name in names {
            services.push(Svc::plan(ctx, opts, &cfg, name)?);
        }
        let previous_tag = services
            .iter()
            .flat_map(|s| &s.old)
            .find_map(|t| tag_of(&t.image));
        let mut p = Plan {
            ctx,
            opts,
            tag,
            deploy_id,
            cfg,
            proxy: None,
            services,
            previous_tag,
            times: Map::new(),
            cleaned_up: Vec::new(),
        };
        if p.proxied().next().is_some() {
            let proxy = locate_proxy(ctx, opts)?;
            let conf = proxy
                .nginx_cmd(&["-T"])
                .output()
                .map(|o| o.stdout)
                .map_err(|e| fail!(Preflight, "nginx -T in the proxy's task: {e}"))?;
            let names: Vec<&str> = p.proxied().map(|s| s.name.as_str()).collect();
            check_nginx(&conf, &names).map_err(|e| fail!(Preflight, "{e:#}"))?;
            p.proxy = Some(proxy);
        }
        let pin = ctx.pin_file();
        let files: Vec<_> = p
            .proxied()
            .filter_map(|s| s.upstream.as_deref())
            .map(|u| (u, owner::Kind::Nginx))
            .chain([(pin.as_path(), owner::Kind::Pin)])
            .collect();
        owner::check(ctx, &files)?;
        Ok(p)
    }

    fn proxied(&self) -> impl Iterator<Item = &Svc> {
        self.services.iter().filter(|s| s.upstream.is_some())
    }

    fn proxy(&self) -> &Proxy {
        self.proxy.as_ref().expect("a located proxy")
    }

    fn say_dry_run(&self) -> Result<()> {
        let left = self.left_over()?;
        if !left.is_empty() {
            msg::info(format!(
                "would first finish a swap that did not ({} left): nginx back to the stack's own tasks once they are ready, then remove them",
                left.join(", ")
            ));
        }
        for s in &self.services {
            let how = if s.upstream.is_some() {
                format!(
                    "start {}{NEXT} ({} task(s)) beside {} old task(s), probe, switch nginx, update {} to it, switch back, remove {}{NEXT}",
                    s.name,
                    s.replicas,
                    s.old.len(),
                    s.name,
                    s.name
                )
            } else {
                format!(
                    "docker service update --image {} (start-first, rollback on failure)",
                    s.image
                )
            };
            msg::info(format!("would swap {} to {}: {how}", s.name, s.image));
        }
        Ok(())
    }

    /// Swarm keeps no journal: a swap killed half-way leaves `SERVICE--next` running, and
    /// maybe nginx sending to it (berth's file names `tasks.STACK_SERVICE--next`). A
    /// swap starts from what Swarm and that file say: when either is left, nginx is
    /// switched (back) to the stack's own service once its tasks are probed ready, drained,
    /// and `SERVICE--next` removed, so that the new `SERVICE--next` never replaces tasks
    /// that take traffic. The own service not ready in time: exit 3, nothing removed.
    fn clean_up_before(&mut self) -> Result<()> {
        let left = self.left_over()?;
        if left.is_empty() {
            return Ok(());
        }
        msg::warn(format!(
            "a swap before this one did not finish ({} left): nginx back to the stack's own tasks, then removing them",
            left.join(", ")
        ));
        let started = Instant::now();
        self.wait_all_ready("", started)
            .and_then(|()| self.switch("clean_up_ms", ""))
            .map_err(|e| {
                fail!(
                    Swap,
                    "{e:#}; left as it was ({} still there)",
                    left.join(", ")
                )
            })?;
        self.remove_next();
        for s in self.services.iter_mut() {
            s.new.clear();
            s.time_to_ready_ms = None;
        }
        self.cleaned_up = left;
        Ok(())
    }

    /// The `STACK_SERVICE--next` a swap before this one left (see [`left_by_a_swap`]).
    fn left_over(&self) -> Result<Vec<String>> {
        let mut left = Vec::new();
        for s in self.proxied() {
            let upstream = s.upstream.as_ref().expect("proxied");
            left.extend(left_by_a_swap(self.ctx, upstream, &s.name)?);
        }
        Ok(left)
    }

    /// Step 1 and 2: `SERVICE--next` for every proxied service, its tasks ready.
    fn start_next(&mut self) -> Result<()> {
        let file = next_file(&self.cfg, self.proxied())?;
        let started = Instant::now();
        let deployed = docker::docker()
            .args(["stack", "deploy", "--with-registry-auth", "-c", "-"])
            .arg(&self.ctx.project)
            .stdin_bytes(file.to_string())
            .read();
        fault::point("swarm-next");
        if let Err(e) = deployed {
            self.remove_next();
            return Err(fail!(
                Swap,
                "docker stack deploy of the new tasks failed, removed them; the old ones still serve: {}",
                berth_core::process::last_lines(e.stderr(), 2)
            ));
        }
        if let Err(e) = self.wait_all_ready(NEXT, started) {
            self.remove_next();
            return Err(fail!(
                Swap,
                "{e:#}; removed the new tasks ({}); the old ones still serve",
                self.next_names().join(", ")
            ));
        }
        self.time("ready_ms", started);
        Ok(())
    }

    /// Wait until every proxied service `NAME+suffix` has its replicas running and each
    /// answers the ready path at its overlay address; records them as the new tasks.
    fn wait_all_ready(&mut self, suffix: &str, started: Instant) -> Result<()> {
        let deadline = started + self.opts.timeout;
        let proxy = self.proxy.clone().expect("a located proxy");
        for s in self.services.iter_mut().filter(|s| s.upstream.is_some()) {
            let name = format!("{}{suffix}", s.name);
            s.new = wait_ready(
                &self.ctx.project,
                &name,
                s.replicas,
                &proxy,
                self.opts,
                deadline,
            )?;
            s.time_to_ready_ms = Some(millis(started.elapsed()));
        }
        Ok(())
    }

    /// Step 3 (and the switch of step 4): nginx to the tasks of `SERVICE+suffix` by
    /// their Swarm DNS name, once it lists exactly the probed ready tasks; then the drain.
    fn switch(&mut self, key: &str, suffix: &str) -> Result<()> {
        let started = Instant::now();
        let deadline = started + self.opts.timeout;
        let mut files: Vec<(PathBuf, Option<String>)> = Vec::new();
        let mut names = Vec::new();
        for s in self.proxied() {
            let name = dns_name(&self.ctx.project, &format!("{}{suffix}", s.name));
            names.push(name.clone());
            let ready: Vec<String> = s
                .new
                .iter()
                .filter_map(|t| t.addresses.first().cloned())
                .collect();
            wait_listed(self.proxy(), &name, &ready, deadline, self.opts.timeout)?;
            let about = format!(
                "deploy {}): {} at {}, the tasks of {}{suffix}",
                self.deploy_id, s.name, self.tag, s.name
            );
            let target = format!("{name}:{}", self.opts.port);
            let text = render_map(&s.name, &target, &upstream::comment(self.ctx, &about));
            files.push((s.upstream.clone().expect("proxied"), Some(text)));
        }
        let what = names.join(", ");
        let switching = Instant::now();
        nginx::apply(self.proxy(), Runner { dry_run: false }, &files)?;
        self.time(key, switching);
        if key == "switch_ms" {
            self.times
                .insert("switched_at".into(), json!(time::now_rfc3339()));
        }
        msg::info(format!(
            "nginx sends to {what}; draining the tasks it sent to before for {}",
            berth_core::human::limit(self.opts.drain.unwrap_or(crate::engine::DEFAULT_DRAIN))
        ));
        std::thread::sleep(self.opts.drain.unwrap_or(crate::engine::DEFAULT_DRAIN));
        Ok(())
    }

    fn switch_to_next(&mut self) -> Result<()> {
        if let Err(e) = self.switch("switch_ms", NEXT) {
            self.remove_next();
            let workers = self.roll_back_workers();
            return Err(fail!(
                Swap,
                "{e:#}; removed the new tasks{workers}; the old ones still serve"
            ));
        }
        fault::point("swarm-switch");
        Ok(())
    }

    /// Step 4: the stack's own service at the new tag, nginx back on it, `--next` gone.
    fn converge_own(&mut self) -> Result<()> {
        let started = Instant::now();
        let updates: Vec<(String, String)> = self
            .proxied()
            .map(|s| (s.name.clone(), s.image.clone()))
            .collect();
        for (name, image) in &updates {
            update_service(&self.ctx.project, name, image, self.opts)?;
        }
        fault::point("swarm-update");
        let ready = Instant::now();
        self.wait_all_ready("", ready)?;
        self.switch("converge_switch_ms", "")?;
        fault::point("swarm-back");
        self.remove_next();
        fault::point("swarm-rm");
        self.time("converge_ms", started);
        Ok(())
    }

    /// The services without traffic: `docker service update` each (start-first, Swarm
    /// rolls a failed one back). A failure is exit 3: the workers this swap updated
    /// before are rolled back too and `--next` removed, so nothing of the release stays.
    fn update_workers(&mut self) -> Result<()> {
        let started = Instant::now();
        let project = self.ctx.project.clone();
        for i in 0..self.services.len() {
            let s = &self.services[i];
            if s.upstream.is_some() {
                continue;
            }
            let (name, image) = (s.name.clone(), s.image.clone());
            match update_service(&project, &name, &image, self.opts) {
                Ok(updated) => self.services[i].updated = updated,
                Err(e) => {
                    let s = &self.services[i];
                    let full = format!("{project}_{name}");
                    let (replaced, old) = settled(&full, &s.old, s.replicas, SETTLE_BOUND);
                    let workers = self.roll_back_workers();
                    let next = if self.proxied().next().is_some() {
                        self.remove_next();
                        format!("; removed the new tasks ({})", self.next_names().join(", "))
                    } else {
                        String::new()
                    };
                    return Err(fail!(Swap, "{e:#}{replaced}{workers}{next}; {old}"));
                }
            }
            let s = &mut self.services[i];
            s.new = stack::tasks(&format!("{project}_{name}"))?;
            s.time_to_ready_ms = Some(millis(started.elapsed()));
        }
        if self.services.iter().any(|s| s.upstream.is_none()) {
            self.time("workers_ms", started);
        }
        Ok(())
    }

    /// `docker service rollback` of the workers this swap updated (Swarm's previous
    /// spec: the old tag); "" when none, else what to add to the error line.
    fn roll_back_workers(&mut self) -> String {
        let mut back = Vec::new();
        for s in self.services.iter_mut().filter(|s| s.updated) {
            let service = format!("{}_{}", self.ctx.project, s.name);
            match rollback(&service, self.opts) {
                Ok(()) => {
                    s.updated = false;
                    back.push(s.name.clone());
                }
                Err(e) => msg::warn(format!("could not roll {service} back: {e}")),
            }
        }
        if back.is_empty() {
            String::new()
        } else {
            format!("; rolled {} back", back.join(", "))
        }
    }

    fn next_names(&self) -> Vec<String> {
        self.proxied()
            .map(|s| format!("{}_{}{NEXT}", self.ctx.project, s.name))
            .collect()
    }

    /// Remove the `--next` services (their tasks stop with their grace period).
    fn remove_next(&self) {
        let names = self.next_names();
        let out = docker::docker().args(["service", "rm"]).args(&names).read();
        if let Err(e) = out {
            if !e.stderr().contains("not found") {
                msg::warn(format!(
                    "could not remove {}: {}",
                    names.join(", "),
                    berth_core::process::last_lines(e.stderr(), 1)
                ));
            }
        }
    }

    fn after_switch(&self, e: anyhow::Error) -> anyhow::Error {
        let line = berth_core::exit::one_line(&e);
        fail!(Unhealthy, "{line}").context(AfterSwitch {
            serving: self.tag.to_string(),
            previous_tag: self.previous_tag.clone(),
        })
    }

    fn time(&mut self, key: &str, since: Instant) {
        self.times
            .insert(key.into(), json!(millis(since.elapsed())));
    }

    fn outcome(self, dry_run: bool) -> SwapOutcome {
        let mut detail = Map::new();
        record::put(&mut detail, &self.swap_record(dry_run));
        SwapOutcome {
            previous_tag: self.previous_tag,
            images: self
                .services
                .iter()
                .map(|s| (s.name.clone(), s.image.clone(), String::new()))
                .collect(),
            detail,
            dry_run,
        }
    }

    /// The swap's record: its services' old and new tasks, and (not a dry run) its times.
    fn swap_record(&self, dry_run: bool) -> record::Swap {
        let services: Vec<record::SwappedService> = self
            .services
            .iter()
            .map(|s| s.record(&self.ctx.project))
            .collect();
        let mut swap = record::Swap {
            tag: Some(self.tag.to_string()),
            previous_tag: Some(self.previous_tag.clone()),
            services,
            ..Default::default()
        };
        if !dry_run {
            let ms = |k: &str| self.times.get(k).and_then(Value::as_u64);
            swap.ready_ms = ms("ready_ms");
            swap.switch_ms = ms("switch_ms");
            swap.total_ms = ms("total_ms");
            swap.switched_at = self
                .times
                .get("switched_at")
                .and_then(Value::as_str)
                .map(str::to_string);
            swap.drain_ms = Some(millis(
                self.opts.drain.unwrap_or(crate::engine::DEFAULT_DRAIN),
            ));
            swap.extra.insert("engine".into(), json!("swarm"));
            for k in [
                "clean_up_ms",
                "converge_ms",
                "converge_switch_ms",
                "workers_ms",
            ] {
                if let Some(v) = self.times.get(k) {
                    swap.extra.insert(k.into(), v.clone());
                }
            }
        }
        swap
    }
}

impl Svc {
    fn plan(ctx: &Context, opts: &Options, cfg: &Value, name: &str) -> Result<Svc> {
        let def = cfg["services"].get(name).cloned().ok_or_else(|| {
            fail!(
                Preflight,
                "no service {name:?} in the compose configuration"
            )
        })?;
        let image = def["image"].as_str().unwrap_or_default().to_string();
        if def["deploy"]["mode"].as_str() == Some("global") {
            return Err(Failure::usage(format!(
                "--engine swarm: {name} is a global service; berth swaps replicated services only"
            ))
            .into());
        }
        let replicas = def["deploy"]["replicas"].as_u64().unwrap_or(1) as usize;
        let proxied = upstream::is_proxied(opts, name);
        if proxied && def["ports"].as_array().is_some_and(|p| !p.is_empty()) {
            return Err(fail!(
                Preflight,
                "{name} publishes ports: a service behind nginx on Swarm publishes none (nginx is the way in; the new tasks start beside the old ones)"
            ));
        }
        if proxied && !has_healthcheck(&def) {
            return Err(fail!(
                Preflight,
                "{name} has no healthcheck: on Swarm nginx follows a service's tasks through Swarm's DNS, which lists a task as soon as it starts when there is none; give it a healthcheck that passes only once the task is ready (its /readyz)"
            ));
        }
        let stack_name = format!("{}_{name}", ctx.project);
        let exists = docker::docker()
            .args(["service", "inspect", "--format", "{{.ID}}", &stack_name])
            .read();
        if exists.is_err() {
            return Err(fail!(
                Preflight,
                "stack {} has no service {stack_name}: deploy the stack first (docker stack deploy)",
                ctx.project
            ));
        }
        Ok(Svc {
            name: name.to_string(),
            image,
            replicas,
            upstream: proxied.then(|| upstream::path(ctx, opts.upstream_file.as_deref(), name)),
            old: stack::tasks(&stack_name)?,
            new: Vec::new(),
            time_to_ready_ms: None,
            updated: false,
            def,
        })
    }

    fn record(&self, stack: &str) -> record::SwappedService {
        let r = |t: &Task| record::ContainerRef {
            id: t.id.chars().take(12).collect(),
            name: format!("{stack}_{}", self.name),
            image: t.image.clone(),
            node: Some(t.node.clone()),
            ..Default::default()
        };
        record::SwappedService {
            name: self.name.clone(),
            image: self.image.clone(),
            proxied: self.upstream.is_some(),
            upstream_file: self.upstream.as_ref().map(|u| u.display().to_string()),
            old_containers: self.old.iter().map(r).collect(),
            new_containers: self.new.iter().map(r).collect(),
            time_to_ready_ms: self.time_to_ready_ms,
            ..Default::default()
        }
    }
}

/// The tag of an image reference (`R/app:v1@sha256:...` is `v1`).
fn tag_of(image: &str) -> Option<String> {
    let name = image.split('@').next()?;
    let last = name.rsplit('/').next()?;
    last.split_once(':').map(|(_, t)| t.to_string())
}

/// nginx's running container on this manager: the task of `STACK_PROXY` placed here
/// (the swap's and maintenance mode's proxy on Swarm).
pub(crate) fn locate_proxy(ctx: &Context, opts: &Options) -> Result<Proxy> {
    let service = format!("{}_{}", ctx.project, opts.proxy_service);
    let out = docker::docker()
        .args(["ps", "--filter"])
        .arg(format!("label=com.docker.swarm.service.name={service}"))
        .args(["--filter", "status=running", "--format", "{{.Names}}"])
        .read()?;
    let Some(container) = out.lines().map(str::trim).find(|l| !l.is_empty()) else {
        return Err(fail!(
            Preflight,
            "the proxy service {service} has no running task on this manager: place nginx here (deploy.placement.constraints: [node.role == manager]) or name it with --proxy-service"
        ));
    };
    let mut proxy = Proxy::new(
        ProxyMode::Compose,
        ctx.compose(),
        &opts.proxy_service,
        &opts.nginx,
    );
    proxy.container = Some(container.to_string());
    Ok(proxy)
}

/// The stack file that adds `SERVICE--next` for each service: its own definition at the
/// new tag, on the stack's existing networks, volumes, secrets and configs (named as
/// external). Every `$` is doubled: compose already interpolated the values, and `docker
/// stack deploy` interpolates again.
fn next_file<'s>(cfg: &Value, services: impl Iterator<Item = &'s Svc>) -> Result<Value> {
    let mut out = json!({"version": "3.8", "services": {}});
    for s in services {
        let mut def = s.def.clone();
        // `networks: {appnet: null}` attaches to appnet: keep the key.
        if let Some(nets) = def["networks"].as_object_mut() {
            nets.values_mut()
                .filter(|v| v.is_null())
                .for_each(|v| *v = json!({}));
        }
        strip_nulls(&mut def);
        for kind in ["networks", "volumes", "secrets", "configs"] {
            for used in referenced(&def, kind) {
                let name = cfg[kind][&used]["name"].as_str().map(str::to_string);
                let name = name.unwrap_or_else(|| used.clone());
                out[kind][&used] = json!({"external": true, "name": name});
            }
        }
        out["services"][format!("{}{NEXT}", s.name)] = def;
    }
    Ok(escape_dollars(out))
}

/// The top-level names of `kind` a service definition uses.
fn referenced(def: &Value, kind: &str) -> Vec<String> {
    match (&def[kind], kind) {
        (Value::Object(m), "networks") => m.keys().cloned().collect(),
        (Value::Array(list), _) => list
            .iter()
            .filter(|v| kind != "volumes" || v["type"] == "volume")
            .filter_map(|v| v["source"].as_str().map(str::to_string))
            .filter(|s| !s.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn escape_dollars(v: Value) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace('$', "$$")),
        Value::Array(a) => Value::Array(a.into_iter().map(escape_dollars).collect()),
        Value::Object(m) => {
            Value::Object(m.into_iter().map(|(k, v)| (k, escape_dollars(v))).collect())
        }
        other => other,
    }
}

/// Whether a service definition (compose's normalised configuration) has a healthcheck.
fn has_healthcheck(def: &Value) -> bool {
    let h = &def["healthcheck"];
    h.is_object()
        && h["disable"] != json!(true)
        && h["test"]
            .as_array()
            .and_then(|t| t.first())
            .is_some_and(|t| t != "NONE")
}

/// The nginx variable berth sets for `service`: `berth_` and the name, with `_` for every
/// character a variable name cannot hold (`web-api`: `$berth_web_api`).
pub fn variable(service: &str) -> String {
    let name: String = service
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("berth_{name}")
}

/// The Swarm DNS name of the tasks of `STACK_SERVICE`: every task address, listed once
/// the task's healthcheck passes, dropped before the task is stopped.
fn dns_name(stack: &str, service: &str) -> String {
    format!("tasks.{stack}_{service}")
}

/// berth's file for `service`, included at nginx's http level: its variable set to
/// `target` (`tasks.STACK_SERVICE:PORT`), which nginx resolves per request.
fn render_map(service: &str, target: &str, comment: &str) -> String {
    let mut s = String::new();
    for line in comment.lines() {
        s.push_str(&format!("# {line}\n"));
    }
    s.push_str(&format!(
        "map $scheme ${} {{\n    default {target};\n}}\n",
        variable(service)
    ));
    s
}

/// nginx's configuration (`nginx -T`) resolves names at request time (a `resolver`) and
/// sends each service's traffic to its variable, which berth's file sets; otherwise nginx
/// would not follow the tasks.
fn check_nginx(nginx_t: &str, services: &[&str]) -> Result<()> {
    let code = crate::dns::code_lines(nginx_t);
    if !crate::dns::has_resolver(&code) {
        anyhow::bail!(
            "--engine swarm: nginx's configuration has no `resolver` (add `resolver 127.0.0.11 valid=1s ipv6=off;`, see examples/swarm/nginx.conf)"
        );
    }
    for s in services {
        let var = format!("${}", variable(s));
        let used = code.iter().any(|l| {
            l.trim_start().starts_with("proxy_pass ")
                && l.split(|c: char| c.is_whitespace() || c == ';' || c == '/')
                    .any(|w| w == var)
        });
        if !used {
            anyhow::bail!(
                "--engine swarm: nginx's configuration never sends to {var} (write `proxy_pass http://{var};` for {s}, see examples/swarm/nginx.conf): berth switches that variable between Swarm DNS names"
            );
        }
    }
    Ok(())
}

/// The addresses the proxy's resolver gives for `name` (`getent ahostsv4` in its
/// container, which asks what nginx's `resolver 127.0.0.11` asks); none when it has none
/// (getent's exit 2: the name is not known yet; Swarm lists a new service's tasks a
/// moment after their healthcheck passes, so that is "not yet", not an error).
fn resolve(proxy: &Proxy, name: &str) -> Result<Vec<String>> {
    let container = proxy.container.as_deref().unwrap_or_default();
    let stdout = match docker::docker()
        .args(["exec", container, "getent", "ahostsv4", name])
        .output()
    {
        Ok(out) => out.stdout,
        Err(berth_core::process::ProcessError::Failed { code: Some(2), .. }) => String::new(),
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("getent ahostsv4 {name} in {container}"))
            )
        }
    };
    let mut addrs: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// Wait (until `deadline`) until the proxy resolves `name` to exactly the `ready`
/// addresses: Swarm adds a task to its DNS when its healthcheck passes, which may be a
/// little after berth's own probe, and a switch to a name that lists a task berth has not
/// probed, or lacks one, is not made.
fn wait_listed(
    proxy: &Proxy,
    name: &str,
    ready: &[String],
    deadline: Instant,
    bound: Duration,
) -> Result<()> {
    let mut want = ready.to_vec();
    want.sort();
    want.dedup();
    loop {
        let got = resolve(proxy, name)?;
        if got == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the proxy's resolver did not list exactly the ready tasks under {name} within {} (it lists [{}], ready: [{}])",
                berth_core::human::limit(bound),
                got.join(", "),
                want.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Wait (until `deadline`) for `replicas` running tasks of `STACK_NAME`, each answering
/// the ready path at its overlay address, probed from inside nginx's container.
fn wait_ready(
    stack: &str,
    name: &str,
    replicas: usize,
    proxy: &Proxy,
    opts: &Options,
    deadline: Instant,
) -> Result<Vec<Task>> {
    msg::info(format!(
        "waiting for {replicas} task(s) of {stack}_{name} to be ready (timeout {})",
        berth_core::human::limit(opts.timeout)
    ));
    let mut ready: Vec<String> = Vec::new();
    let mut last = String::from("no task running yet");
    loop {
        let running: Vec<Task> = stack::tasks(&format!("{stack}_{name}"))?
            .into_iter()
            .filter(|t| t.state == "running" && !t.addresses.is_empty())
            .collect();
        for t in &running {
            if ready.contains(&t.id) {
                continue;
            }
            match probe(proxy, opts, &t.addresses[0]) {
                Ok(()) => ready.push(t.id.clone()),
                Err(e) => last = format!("task {} on {}: {e}", &t.id[..12.min(t.id.len())], t.node),
            }
        }
        let ok: Vec<Task> = running
            .into_iter()
            .filter(|t| ready.contains(&t.id))
            .collect();
        if ok.len() >= replicas {
            msg::info(format!(
                "{stack}_{name}: {} task(s) ready on {}",
                ok.len(),
                ok.iter()
                    .map(|t| t.node.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            return Ok(ok);
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "{stack}_{name}: {} of {replicas} task(s) ready within {} ({last})",
                ok.len(),
                berth_core::human::limit(opts.timeout)
            );
        }
        std::thread::sleep(opts.interval.max(Duration::from_millis(250)));
    }
}

/// GET http://ADDRESS:PORT/READY_PATH from inside nginx's container: 2xx is ready;
/// otherwise the status and the start of the answer say why.
fn probe(proxy: &Proxy, opts: &Options, address: &str) -> Result<()> {
    let url = format!("http://{address}:{}{}", opts.port, opts.ready_path);
    let container = proxy.container.as_deref().unwrap_or_default();
    let out = docker::docker()
        .args(["exec", container, "curl", "-sS", "--max-time", "2"])
        .args(["-w", "\n%{http_code}", &url])
        .read()
        .map_err(|e| {
            anyhow::anyhow!("{url}: {}", berth_core::process::last_lines(e.stderr(), 1))
        })?;
    let (body, status) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    if status.starts_with('2') {
        return Ok(());
    }
    let body: String = body.chars().take(120).collect();
    anyhow::bail!("{url}: HTTP {status} {body}")
}

/// `docker service update --image` of `STACK_NAME`, waited until converged; true when
/// it updated, false when the service already runs that image. Swarm rolls a failed
/// update back (the new task exited or its healthcheck failed) and the CLI may still exit
/// 0, so the service's `UpdateStatus` says how it ended (waited for while a rollback
/// runs, within the same bound).
fn update_service(stack: &str, name: &str, image: &str, opts: &Options) -> Result<bool> {
    let service = format!("{stack}_{name}");
    let (before, current) = update_state(&service)?;
    if current.split('@').next() == Some(image) {
        return Ok(false);
    }
    msg::info(format!(
        "updating {service} to {image} (start-first, rollback on failure)"
    ));
    let deadline = Instant::now() + opts.timeout + berth_core::process::command_timeout();
    let ran = docker::docker()
        .args([
            "service",
            "update",
            "--with-registry-auth",
            "--detach=false",
            "--quiet",
        ])
        .args([
            "--update-order",
            "start-first",
            "--update-failure-action",
            "rollback",
            "--rollback-order",
            "start-first",
        ])
        .args(["--image", image, &service])
        .timeout(opts.timeout + berth_core::process::command_timeout())
        .read();
    let (now, running) = loop {
        let (now, running) = update_state(&service)?;
        let state = now["State"].as_str().unwrap_or_default();
        if !matches!(state, "updating" | "rollback_started") || Instant::now() >= deadline {
            break (now, running);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let state = now["State"].as_str();
    let why = now["Message"].as_str().unwrap_or_default();
    match (state, ran) {
        // Swarm's word, whatever the CLI said.
        (Some("completed"), _) => Ok(true),
        (None, Ok(_)) if before.is_null() => Ok(true),
        (Some("rollback_completed"), _) => Err(fail!(
            Swap,
            "{service}: Swarm rolled the update to {image} back ({why}); its tasks run {} again",
            running.split('@').next().unwrap_or_default()
        )),
        (state, ran) => {
            let state = state.unwrap_or("no update state");
            let what = match ran {
                Err(e) => format!(
                    "failed ({state}): {}",
                    berth_core::process::last_lines(e.stderr(), 2)
                ),
                Ok(_) => format!("did not complete: {state} ({why})"),
            };
            // Half-way (still updating at the bound, or paused): the previous spec back,
            // so that nothing of the release stays; a rollback Swarm runs already goes on.
            let undo = if state.starts_with("rollback_") {
                String::new()
            } else {
                match rollback(&service, opts) {
                    Ok(()) => "; rolled it back".to_string(),
                    Err(e) => format!("; could not roll it back: {e}"),
                }
            };
            Err(fail!(Swap, "{service}: the update to {image} {what}{undo}"))
        }
    }
}

/// `STACK_SERVICE--next` when a swap left it: running, or named in berth's nginx file for
/// the service (`upstream`).
fn left_by_a_swap(ctx: &Context, upstream: &std::path::Path, name: &str) -> Result<Option<String>> {
    let next = format!("{}_{name}{NEXT}", ctx.project);
    let on_next =
        std::fs::read_to_string(upstream).is_ok_and(|f| f.contains(&format!("tasks.{next}:")));
    Ok((on_next || stack::inspect(&next)?.is_some()).then_some(next))
}

/// `berth-swap --converge --engine swarm`: the clean-up every Swarm swap starts with
/// ([`Plan::clean_up_before`]), alone, for each service behind nginx that a swap left
/// half-way (its `--next` running or named in berth's file): nginx back on the stack's
/// own tasks once they are ready, drained, `--next` removed. Returns what it removed
/// (empty: nothing was left).
pub fn converge(ctx: &Context, opts: &Options, deploy_id: &str) -> Result<Vec<String>> {
    let pin = ctx.pin_file();
    let tag = ctx
        .tag
        .clone()
        .or_else(|| envfile::read_var(&pin, &ctx.tag_var))
        .ok_or_else(|| {
            fail!(
                Preflight,
                "{} does not set {}: pass --tag (the tag the stack runs)",
                pin.display(),
                ctx.tag_var
            )
        })?;
    let cfg = ctx
        .compose_at(&tag)
        .config()
        .map_err(|e| fail!(Preflight, "{e:#}"))?;
    let mut names = Vec::new();
    for name in cfg["services"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.keys())
    {
        let upstream = upstream::path(ctx, opts.upstream_file.as_deref(), name);
        if upstream::is_proxied(opts, name) && left_by_a_swap(ctx, &upstream, name)?.is_some() {
            names.push(name.clone());
        }
    }
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut p = Plan::new(ctx, opts, &names, &tag, deploy_id)?;
    p.clean_up_before()?;
    Ok(p.cleaned_up)
}

/// How long a worker whose update failed may take to run its replicas again.
const SETTLE_BOUND: Duration = Duration::from_secs(20);

/// After a worker's update failed and was rolled back: waits (at most `bound`) until
/// `full` runs exactly `replicas` tasks, all running, then tells whether the tasks that
/// ran before still do: ("", "the old tasks still run") or what Swarm replaced. While it
/// rolls back, Swarm may restart the failed new task from the old spec and then keep
/// that one instead of a task that ran before (seen on the test bed): a worker restarted
/// at the old tag, which the 3 a.m. reader should not have to find out alone.
fn settled(full: &str, old: &[Task], replicas: usize, bound: Duration) -> (String, String) {
    let deadline = Instant::now() + bound;
    let now = loop {
        let Ok(now) = stack::tasks(full) else {
            return compared(&[], &[]); // what it said before it looked
        };
        let settled = now.len() == replicas && now.iter().all(|t| t.state == "running");
        if settled || Instant::now() >= deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    compared(old, &now)
}

/// [`settled`]'s line: ("", "the old tasks still run") when every task in `old` is in
/// `now`, else how many Swarm replaced, what runs now, and "the other old tasks...".
fn compared(old: &[Task], now: &[Task]) -> (String, String) {
    let gone: Vec<&Task> = old
        .iter()
        .filter(|o| !now.iter().any(|t| t.id == o.id))
        .collect();
    if gone.is_empty() {
        return (String::new(), "the old tasks still run".to_string());
    }
    let running: Vec<String> = now
        .iter()
        .map(|t| format!("{} on {} ({})", t.name, t.node, t.state))
        .collect();
    let replaced = format!(
        "; of the {} tasks that ran before, Swarm replaced {} while it rolled back \
         (now: {})",
        old.len(),
        gone.len(),
        if running.is_empty() {
            "none".to_string()
        } else {
            running.join(", ")
        }
    );
    (replaced, "the other old tasks still run".to_string())
}

/// `docker service rollback` of `service` (Swarm's previous spec), waited for.
fn rollback(service: &str, opts: &Options) -> std::result::Result<(), String> {
    msg::info(format!("rolling {service} back to its previous image"));
    docker::docker()
        .args(["service", "rollback", "--detach=false", "--quiet", service])
        .timeout(opts.timeout + berth_core::process::command_timeout())
        .read()
        .map(|_| ())
        .map_err(|e| berth_core::process::last_lines(e.stderr(), 1))
}

/// A service's `UpdateStatus` (null before any update) and the image its spec runs.
fn update_state(service: &str) -> Result<(Value, String)> {
    let out = docker::docker()
        .args(["service", "inspect", "--format"])
        .arg("{{json .UpdateStatus}}\t{{.Spec.TaskTemplate.ContainerSpec.Image}}")
        .arg(service)
        .read()?;
    let (status, image) = out.trim().split_once('\t').unwrap_or((out.trim(), ""));
    Ok((
        serde_json::from_str(status).unwrap_or(Value::Null),
        image.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_follows_a_variable_berth_sets_to_a_swarm_dns_name() {
        assert_eq!(variable("web-api.v2"), "berth_web_api_v2");
        assert_eq!(dns_name("shop", "web--next"), "tasks.shop_web--next");
        assert_eq!(
            render_map("web", "tasks.shop_web--next:8080", "berth: project=shop\nWritten"),
            "# berth: project=shop\n# Written\nmap $scheme $berth_web {\n    default tasks.shop_web--next:8080;\n}\n"
        );
        let good = "http {\n  resolver 127.0.0.11 valid=1s;\n  location / {\n    proxy_pass http://$berth_web;\n  }\n}\n";
        assert!(check_nginx(good, &["web"]).is_ok());
        let err = check_nginx(good, &["api"]).unwrap_err().to_string();
        assert!(err.contains("never sends to $berth_api"), "{err}");
        let no_resolver = good.replace("resolver", "# resolver");
        let err = check_nginx(&no_resolver, &["web"]).unwrap_err().to_string();
        assert!(err.contains("has no `resolver`"), "{err}");
        let commented = good.replace("proxy_pass", "# proxy_pass");
        assert!(check_nginx(&commented, &["web"]).is_err());
    }

    #[test]
    fn healthchecks_of_definitions() {
        assert!(has_healthcheck(
            &json!({"healthcheck": {"test": ["CMD", "/app", "healthcheck"]}})
        ));
        assert!(!has_healthcheck(&json!({})));
        assert!(!has_healthcheck(
            &json!({"healthcheck": {"test": ["NONE"]}})
        ));
        assert!(!has_healthcheck(
            &json!({"healthcheck": {"disable": true, "test": ["CMD", "x"]}})
        ));
    }

    #[test]
    fn a_rolled_back_worker_says_which_old_tasks_swarm_replaced() {
        let task = |id: &str, slot: u8, node: &str| Task {
            id: id.into(),
            name: format!("s_worker.{slot}"),
            node: node.into(),
            state: "running".into(),
            ..Task::default()
        };
        let old = [task("a", 1, "w1"), task("b", 2, "m1")];
        let same = [task("b", 2, "m1"), task("a", 1, "w1")];
        let still = (String::new(), "the old tasks still run".to_string());
        assert_eq!(compared(&old, &same), still);
        assert_eq!(compared(&[], &[]), still);
        let now = [task("c", 1, "w1"), task("b", 2, "m1")];
        assert_eq!(
            compared(&old, &now),
            (
                "; of the 2 tasks that ran before, Swarm replaced 1 while it rolled back \
                 (now: s_worker.1 on w1 (running), s_worker.2 on m1 (running))"
                    .to_string(),
                "the other old tasks still run".to_string()
            )
        );
        let (line, _) = compared(&old, &[]);
        assert!(line.ends_with("Swarm replaced 2 while it rolled back (now: none)"));
    }

    #[test]
    fn tags_of_references() {
        assert_eq!(tag_of("r:5000/app:v1@sha256:ab").as_deref(), Some("v1"));
        assert_eq!(tag_of("app:v2").as_deref(), Some("v2"));
        assert_eq!(tag_of("r:5000/app").as_deref(), None);
    }

    #[test]
    fn next_file_names_the_stacks_own_resources() {
        let cfg = json!({
            "services": {"web": {
                "image": "r/app:v2", "command": null,
                "environment": {"GREETING": "a$b"},
                "networks": {"appnet": null},
                "volumes": [{"type": "volume", "source": "data", "target": "/d"},
                            {"type": "bind", "source": "/srv", "target": "/s"}],
                "secrets": [{"source": "pw", "target": "pw"}]}},
            "networks": {"appnet": {"name": "shop_appnet"}},
            "volumes": {"data": {"name": "shop_data"}},
            "secrets": {"pw": {"name": "shop_pw", "file": "/x"}},
        });
        let svc = Svc {
            name: "web".into(),
            def: cfg["services"]["web"].clone(),
            image: "r/app:v2".into(),
            replicas: 2,
            upstream: None,
            old: vec![],
            new: vec![],
            time_to_ready_ms: None,
            updated: false,
        };
        let f = next_file(&cfg, [&svc].into_iter()).unwrap();
        let web = &f["services"]["web--next"];
        assert!(web.get("command").is_none(), "{f}");
        assert_eq!(web["networks"], json!({"appnet": {}}));
        assert_eq!(web["environment"]["GREETING"], "a$$b");
        assert_eq!(
            f["networks"]["appnet"],
            json!({"external": true, "name": "shop_appnet"})
        );
        assert_eq!(
            f["volumes"],
            json!({"data": {"external": true, "name": "shop_data"}})
        );
        assert_eq!(
            f["secrets"]["pw"],
            json!({"external": true, "name": "shop_pw"})
        );
    }
}
