//! The swap itself, shared by `berth-swap` and `berth-rollback`:
//!
//! ```text
//!  image ─▶ start beside ─▶ ready? ──no──▶ remove new, exit 3 (old still serve)
//!                             │yes
//!                             ▼
//!              rewrite upstream, nginx -t, reload ──fails──▶ restore file, remove new, exit 3
//!                             │
//!                             ▼
//!              drain ─▶ stop + remove old ─▶ .env BERTH_TAG=new
//! ```
//!
//! All services of one swap move together: every new container must be ready before any
//! traffic moves, so a swap of `web worker` either switches both or neither.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde_json::{Map, Value};

use berth_core::cli::Context;
use berth_core::compose::{self, Compose};
use berth_core::docker::{self, Container};
use berth_core::health::{self, HttpCheck, Target};
use berth_core::process::Runner;
use berth_core::record;
use berth_core::time::{self, millis};
use berth_core::{fail, fault, msg};

use crate::envfile;
use crate::journal::{self, Journal, Phase};
use crate::nginx::{self, Proxy, ProxyMode};
use crate::owner;
use crate::SwapArgs;

/// One service in a swap.
#[derive(Debug, Clone)]
struct Plan {
    name: String,
    image: String,
    image_id: String,
    pulled: bool,
    stop_grace: Duration,
    /// The upstream file, for a service behind nginx.
    upstream: Option<PathBuf>,
    upstream_before: Option<String>,
    /// Every container the service had before (any state), oldest first.
    old: Vec<Container>,
    running_before: usize,
    new: Vec<Container>,
    time_to_ready_ms: Option<u64>,
    journal: Option<Journal>,
}

/// What a swap did: for the document.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub previous_tag: Option<String>,
    /// (service, image reference, image ID)
    pub images: Vec<(String, String, String)>,
    pub detail: Map<String, Value>,
    pub dry_run: bool,
}

/// The proxy the settings describe, for this project.
pub fn proxy(ctx: &Context, args: &SwapArgs, tag: Option<&str>) -> Proxy {
    let compose = match tag {
        Some(t) => ctx.compose_at(t),
        None => ctx.compose(),
    };
    Proxy::new(args.proxy, compose, &args.proxy_service, &args.nginx)
}

/// The upstream file of a service, from the `--upstream-file` template.
pub fn upstream_path(ctx: &Context, template: Option<&str>, service: &str) -> PathBuf {
    match template {
        Some(t) => {
            let p = PathBuf::from(t.replace("{service}", service));
            if p.is_absolute() {
                p
            } else {
                ctx.project_dir.join(p)
            }
        }
        None => ctx
            .project_dir
            .join("nginx")
            .join("berth")
            .join(format!("upstream-{service}.conf")),
    }
}

fn is_proxied(args: &SwapArgs, service: &str) -> bool {
    args.proxy != ProxyMode::None && !args.workers.iter().any(|w| w == service)
}

/// The tag the project runs now: what `.env` says compose should run.
pub fn current_tag(ctx: &Context) -> Option<String> {
    envfile::read_var(&ctx.pin_file(), &ctx.tag_var)
}

/// Swap `services` to `tag`. Errors carry their exit code (1 preflight, 2 image,
/// 3 nothing moved). Call with the deploy lock held.
pub fn swap(
    ctx: &Context,
    args: &SwapArgs,
    services: &[String],
    tag: &str,
    deploy_id: &str,
) -> Result<Outcome> {
    let started = Instant::now();
    let runner = Runner {
        dry_run: ctx.dry_run,
    };
    docker::ensure_reachable()?;
    let compose = ctx.compose_at(tag);
    let cfg = compose
        .config()
        .map_err(|e| fail!(Preflight, "{}", berth_core::exit::one_line(&e)))?;
    let mut proxy = proxy(ctx, args, Some(tag));

    if !ctx.dry_run {
        crate::converge::converge(ctx, args, Some(tag))?;
    }
    let previous_tag = current_tag(ctx);

    let mut plans = Vec::new();
    for svc in services {
        let image = compose::service_image_in(&cfg, svc).map_err(|e| fail!(Usage, "{e:#}"))?;
        let stop_grace = args.stop_timeout.unwrap_or_else(|| stop_grace(&cfg, svc));
        let upstream =
            is_proxied(args, svc).then(|| upstream_path(ctx, args.upstream_file.as_deref(), svc));
        let old = compose.containers(svc)?;
        let running_before = old.iter().filter(|c| c.state.running).count();
        let upstream_before = match &upstream {
            Some(p) => nginx::read_opt(p)?,
            None => None,
        };
        if let Some(p) = &upstream {
            if running_before > 0 && upstream_before.is_none() {
                return Err(fail!(
                    Preflight,
                    "{svc}: no upstream file at {} (nginx must include it); pass --upstream-file, \
                     or --worker {svc} if it takes no traffic",
                    p.display()
                ));
            }
            if !p.parent().is_some_and(|d| d.is_dir()) {
                return Err(fail!(
                    Preflight,
                    "{svc}: the directory of the upstream file {} does not exist",
                    p.display()
                ));
            }
        }
        plans.push(Plan {
            name: svc.clone(),
            image,
            image_id: String::new(),
            pulled: false,
            stop_grace,
            upstream,
            upstream_before,
            old,
            running_before,
            new: Vec::new(),
            time_to_ready_ms: None,
            journal: None,
        });
    }
    // Nothing another environment owns: its pin file, its nginx files.
    let pin = ctx.pin_file();
    let mut owned: Vec<(&std::path::Path, owner::Kind)> = vec![(&pin, owner::Kind::Pin)];
    owned.extend(
        plans
            .iter()
            .filter_map(|p| p.upstream.as_deref())
            .map(|u| (u, owner::Kind::Nginx)),
    );
    owner::check(ctx, &owned)?;
    let proxied_any = plans.iter().any(|p| p.upstream.is_some());
    if proxied_any && args.proxy == ProxyMode::Compose && !proxy.locate()? {
        return Err(fail!(
            Preflight,
            "the nginx service {:?} is not running (start the stack first, or pass --proxy-service)",
            args.proxy_service
        ));
    }

    // 1. Images: present, or pulled by tag; else exit 2 with nothing changed.
    for p in &mut plans {
        (p.image_id, p.pulled) = ensure_image(&compose, runner, &p.name, &p.image, &args.pull)?;
    }

    if ctx.dry_run {
        for p in &plans {
            let cmd = start_cmd(&compose, p);
            msg::info(format!("would run: {}", cmd.display()));
            msg::info(format!(
                "would wait until the new {} container(s) are ready, then {}",
                p.name,
                match &p.upstream {
                    Some(u) => format!(
                        "rewrite {} to name them, run {} and {}",
                        u.display(),
                        proxy.nginx_cmd(&["-t"]).display(),
                        proxy.nginx_cmd(&["-s", "reload"]).display()
                    ),
                    None => "(a worker) stop the old ones".to_string(),
                }
            ));
            let ids: Vec<&str> = p.old.iter().map(|c| c.short_id()).collect();
            if !ids.is_empty() {
                msg::info(format!(
                    "would run: docker stop --time {} {}",
                    p.stop_grace.as_secs(),
                    ids.join(" ")
                ));
                msg::info(format!("would run: docker rm -v {}", ids.join(" ")));
            }
        }
        msg::info(format!(
            "would set {}={tag} in {}",
            ctx.tag_var,
            ctx.pin_file().display()
        ));
        return Ok(Outcome {
            previous_tag,
            images: plans
                .iter()
                .map(|p| (p.name.clone(), p.image.clone(), p.image_id.clone()))
                .collect(),
            detail: Map::new(),
            dry_run: true,
        });
    }

    // 2. Start beside: the journal first, so that a kill at any point can be undone.
    for p in &mut plans {
        let mut j = Journal {
            deploy_id: deploy_id.to_string(),
            service: p.name.clone(),
            phase: Phase::Started,
            tag: tag.to_string(),
            tag_var: ctx.tag_var.clone(),
            image: p.image.clone(),
            old: p.old.iter().map(|c| c.id.clone()).collect(),
            new: Vec::new(),
            upstream_file: p.upstream.clone(),
            upstream_before: p.upstream_before.clone(),
            stop_grace_secs: p.stop_grace.as_secs(),
            updated_at: String::new(),
        };
        j.save(&ctx.state_dir)?;
        p.journal = Some(j);
    }
    // One compose per service, all at once.
    let results: Vec<Result<()>> = std::thread::scope(|sc| {
        let handles: Vec<_> = plans
            .iter_mut()
            .map(|p| {
                let compose = &compose;
                sc.spawn(move || start_beside(compose, p))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("start thread panicked"))
            .collect()
    });
    for p in &mut plans {
        let new_ids = p.new.iter().map(|c| c.id.clone()).collect();
        let j = p.journal.as_mut().expect("journal saved");
        j.new = new_ids;
        j.save(&ctx.state_dir)?;
    }
    if let Some((i, e)) = results
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
    {
        undo(ctx, &compose, &plans);
        return Err(fail!(
            Swap,
            "{}: {}",
            plans[i].name,
            berth_core::exit::one_line(e)
        ));
    }

    // 3. Ready: every new container, probed directly, failing fast when one dies.
    let mut targets = Vec::new();
    let mut owner = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        for c in &p.new {
            let t = match (&p.upstream, address(c)) {
                (Some(_), Some(ip)) => Target::HttpOn {
                    container: c.name.clone(),
                    check: HttpCheck::new(&format!("http://{ip}:{}{}", args.port, args.ready_path)),
                },
                // No address: it has already exited; the container probe says how, with its logs.
                _ => Target::Container(c.name.clone()),
            };
            targets.push(t);
            owner.push(i);
        }
    }
    msg::info(format!(
        "waiting for {} new container(s) to be ready (timeout {})",
        targets.len(),
        humantime::format_duration(args.timeout)
    ));
    let opts = health::Options {
        timeout: args.timeout,
        interval: args.interval,
        attempt_timeout: Duration::from_secs(2).min(args.timeout),
        successes: 1,
    };
    let wait_started = Instant::now();
    let report = health::wait(&targets, &opts, &|l| {
        msg::info(l);
        fault::point("probe");
    });
    if !report.ready {
        undo(ctx, &compose, &plans);
        return Err(fail!(
            Swap,
            "new containers not ready, removed them; the old ones still serve: {}",
            report.failure()
        ));
    }
    fault::point("ready");
    for (t, i) in report.targets.iter().zip(owner) {
        let ms = t.time_to_ready_ms.unwrap_or(0);
        let cur = &mut plans[i].time_to_ready_ms;
        *cur = Some(cur.unwrap_or(0).max(ms));
    }
    let ready_ms = millis(wait_started.elapsed());
    let ready_at = Instant::now();

    // 4. Switch: every upstream file at once, one `nginx -t`, one graceful reload.
    let mut files = Vec::new();
    for p in &plans {
        if let Some(u) = &p.upstream {
            let servers: Vec<String> = p.new.iter().map(|c| server(&proxy, args, c)).collect();
            let what = format!("deploy {deploy_id}): {} at {tag}", p.name);
            files.push((
                u.clone(),
                Some(upstream_text(ctx, args, &p.name, &servers, &what)),
            ));
        }
    }
    if !files.is_empty() {
        if let Err(e) = nginx::apply(&proxy, runner, &files) {
            undo(ctx, &compose, &plans);
            return Err(e.context("switching nginx to the new containers; removed them"));
        }
        msg::info(format!(
            "switched nginx to {}",
            plans
                .iter()
                .filter(|p| p.upstream.is_some())
                .flat_map(|p| p.new.iter().map(|c| c.name.clone()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let switch_ms = millis(ready_at.elapsed());
    let switched_at = time::now_rfc3339();
    // From here on the new release serves: an error is not "the old version still serves".
    let moved = |e: anyhow::Error| after_switch(e, tag, previous_tag.as_deref());
    for p in &mut plans {
        let j = p.journal.as_mut().expect("journal saved");
        j.phase = Phase::Switched;
        j.save(&ctx.state_dir).map_err(moved)?;
    }

    // 5. Drain, then stop the old containers with their grace period.
    let drain_started = Instant::now();
    let any_old = plans.iter().any(|p| !p.old.is_empty());
    if any_old
        && plans
            .iter()
            .any(|p| p.upstream.is_some() && p.running_before > 0)
    {
        msg::info(format!(
            "draining the old containers for {}",
            humantime::format_duration(args.drain)
        ));
        std::thread::sleep(args.drain);
    }
    let drain_ms = millis(drain_started.elapsed());
    fault::point("drain");
    let stop_started = Instant::now();
    let all_stopped = std::sync::atomic::AtomicBool::new(true);
    std::thread::scope(|s| {
        for p in &plans {
            if !p.old.is_empty() {
                let all_stopped = &all_stopped;
                s.spawn(move || {
                    let ids: Vec<String> = p.old.iter().map(|c| c.id.clone()).collect();
                    if let Err(e) = stop_remove(&ids, p.stop_grace) {
                        all_stopped.store(false, std::sync::atomic::Ordering::SeqCst);
                        msg::warn(format!("{}: {e:#}", p.name));
                    }
                });
            }
        }
    });
    let stop_ms = millis(stop_started.elapsed());

    // 5b. Restart-proof: with the old containers gone, the service's own name resolves to
    // the new ones only. Name it in the upstream file, so that a `docker compose down`
    // and `up` (which numbers containers afresh) still finds the app; nginx re-resolves
    // the name at this (graceful) reload and whenever it starts.
    if proxy.by_name() && all_stopped.load(std::sync::atomic::Ordering::SeqCst) {
        let files: Vec<(PathBuf, Option<String>)> = plans
            .iter()
            .filter(|p| !p.new.is_empty())
            .filter_map(|p| {
                let u = p.upstream.as_ref()?;
                let what = format!("deploy {deploy_id}): {} at {tag}", p.name);
                let server = format!("{}:{}", p.name, args.port);
                Some((
                    u.clone(),
                    Some(upstream_text(ctx, args, &p.name, &[server], &what)),
                ))
            })
            .collect();
        if !files.is_empty() {
            if let Err(e) = nginx::apply(&proxy, runner, &files) {
                msg::warn(format!(
                    "could not name the services in the upstream files (the new containers serve by name): {e:#}"
                ));
            }
        }
    }

    // 6. Durable: compose itself now reads the new tag.
    let env_path = ctx.pin_file();
    envfile::write_var(&env_path, &ctx.tag_var, tag, &ctx.project)
        .with_context(|| format!("recording {}={tag} in {}", ctx.tag_var, env_path.display()))
        .map_err(moved)?;
    fault::point("env");
    for p in &plans {
        journal::remove(&ctx.state_dir, &p.name).map_err(moved)?;
    }
    let total_ms = millis(started.elapsed());
    msg::info(format!(
        "swapped {} to {tag} in {:.1}s (ready {:.1}s, switch {} ms, drain {:.1}s)",
        plans
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        total_ms as f64 / 1000.0,
        ready_ms as f64 / 1000.0,
        switch_ms,
        drain_ms as f64 / 1000.0
    ));

    let detail = record::to_detail(&record::Swap {
        tag: Some(tag.to_string()),
        previous_tag: Some(previous_tag.clone()),
        services: plans.iter().map(service_detail).collect(),
        ready_ms: Some(ready_ms),
        switch_ms: Some(switch_ms),
        switched_at: Some(switched_at),
        drain_ms: Some(drain_ms),
        stop_ms: Some(stop_ms),
        total_ms: Some(total_ms),
        ..record::Swap::default()
    });
    Ok(Outcome {
        previous_tag,
        images: plans
            .iter()
            .map(|p| (p.name.clone(), p.image.clone(), p.image_id.clone()))
            .collect(),
        detail,
        dry_run: false,
    })
}

/// What an error after the switch carries: the new release serves. Its exit code is 4
/// (not healthy after traffic moved), never 3 (which says the old version still serves),
/// and the swap records `switched` and `serving` so that the rollback stage acts on it.
#[derive(Debug, Clone)]
pub struct AfterSwitch {
    pub serving: String,
    pub previous_tag: Option<String>,
}

impl std::fmt::Display for AfterSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "traffic had moved to {} (it serves now)", self.serving)
    }
}

fn after_switch(e: anyhow::Error, tag: &str, previous_tag: Option<&str>) -> anyhow::Error {
    let line = berth_core::exit::one_line(&e);
    fail!(Unhealthy, "{line}").context(AfterSwitch {
        serving: tag.to_string(),
        previous_tag: previous_tag.map(str::to_string),
    })
}

fn service_detail(p: &Plan) -> record::SwappedService {
    let c = |c: &Container| record::ContainerRef {
        id: c.short_id().to_string(),
        name: c.name.clone(),
        image: c.image.clone(),
        ..Default::default()
    };
    record::SwappedService {
        name: p.name.clone(),
        image: p.image.clone(),
        image_id: p.image_id.clone(),
        pulled: p.pulled,
        proxied: p.upstream.is_some(),
        upstream_file: p.upstream.as_ref().map(|u| u.display().to_string()),
        old_containers: p.old.iter().map(c).collect(),
        new_containers: p.new.iter().map(c).collect(),
        time_to_ready_ms: p.time_to_ready_ms,
        stop_grace_ms: millis(p.stop_grace),
        extra: Map::new(),
    }
}

/// The image ID of `image`, pulling it by tag when it is not here (exit 2 when it cannot
/// be had). Returns (ID, pulled).
pub fn ensure_image(
    compose: &Compose,
    runner: Runner,
    svc: &str,
    image: &str,
    opts: &crate::PullOpts,
) -> Result<(String, bool)> {
    if let Some(id) = docker::image_id(image)? {
        return Ok((id, false));
    }
    msg::info(format!("{svc}: pulling {image}"));
    runner
        .change(
            &compose
                .cmd(["pull", "--quiet", svc])
                .timeout(opts.pull_timeout),
        )
        .map_err(|e| {
            fail!(
                Image,
                "{svc}: image {image} is not here and could not be pulled: {e}"
            )
        })?;
    if runner.dry_run {
        return Ok((String::new(), true));
    }
    match docker::image_id(image)? {
        Some(id) => Ok((id, true)),
        None => Err(fail!(
            Image,
            "{svc}: image {image} is still missing after the pull"
        )),
    }
}

fn start_cmd(compose: &Compose, p: &Plan) -> berth_core::process::Cmd {
    if p.running_before == 0 {
        compose.cmd(["up", "-d", "--no-deps", &p.name])
    } else {
        let scale = format!("{}={}", p.name, p.old.len() + p.running_before);
        compose.cmd([
            "up",
            "-d",
            "--no-deps",
            "--no-recreate",
            "--scale",
            &scale,
            &p.name,
        ])
    }
}

/// Start the new containers beside the old ones (as many as run now; a first deploy
/// starts the service as the compose file says).
fn start_beside(compose: &Compose, p: &mut Plan) -> Result<()> {
    let cmd = start_cmd(compose, p);
    msg::info(format!(
        "{}: starting new containers at {}",
        p.name, p.image
    ));
    let res = cmd.run();
    fault::point("start");
    let after = compose.containers(&p.name)?;
    if p.running_before == 0 {
        // Whatever compose now runs is the new release; anything else is old.
        p.new = after
            .iter()
            .filter(|c| c.image == p.image && c.state.status != "exited")
            .cloned()
            .collect();
        let new_ids: Vec<&str> = p.new.iter().map(|c| c.id.as_str()).collect();
        p.old.retain(|c| !new_ids.contains(&c.id.as_str()));
        p.old.retain(|c| after.iter().any(|a| a.id == c.id));
    } else {
        p.new = after
            .into_iter()
            .filter(|c| !p.old.iter().any(|o| o.id == c.id))
            .collect();
    }
    res.map_err(anyhow::Error::new)?;
    if p.new.is_empty() {
        anyhow::bail!("compose started no new container");
    }
    Ok(())
}

/// Undo a swap that has not moved traffic: remove the new containers and the journals.
fn undo(ctx: &Context, compose: &Compose, plans: &[Plan]) {
    for p in plans {
        // Also containers compose created that we did not see (a failed `up`).
        let mut ids: Vec<String> = p.new.iter().map(|c| c.id.clone()).collect();
        if let Ok(now) = compose.containers(&p.name) {
            for c in now {
                if !p.old.iter().any(|o| o.id == c.id) && !ids.contains(&c.id) {
                    ids.push(c.id);
                }
            }
        }
        if !ids.is_empty() {
            msg::info(format!(
                "{}: removing {} new container(s)",
                p.name,
                ids.len()
            ));
            if let Err(e) = docker::docker().args(["rm", "-f", "-v"]).args(&ids).run() {
                msg::warn(format!("{}: could not remove new containers: {e}", p.name));
            }
        }
        if let Err(e) = journal::remove(&ctx.state_dir, &p.name) {
            msg::warn(format!("{e:#}"));
        }
    }
}

/// The upstream file's text for `service` sending to `servers`; `what` ends the first
/// comment line ("Written by berth-swap at TIME (" WHAT ".").
pub(crate) fn upstream_text(
    ctx: &Context,
    args: &SwapArgs,
    service: &str,
    servers: &[String],
    what: &str,
) -> String {
    // The first line marks the file as this project's (see [`owner`]).
    let comment = format!(
        "berth: project={}\nWritten by berth-swap at {} ({what}.\n\
         berth rewrites this file on every swap; edits here are overwritten.",
        ctx.project,
        time::now_rfc3339()
    );
    nginx::render_upstream(service, servers, args.keepalive, &comment)
}

/// How an upstream file names one container: by name for nginx in the project's
/// network, by address for nginx on the host.
pub(crate) fn server(proxy: &Proxy, args: &SwapArgs, c: &Container) -> String {
    if proxy.by_name() {
        format!("{}:{}", c.name, args.port)
    } else {
        format!("{}:{}", address(c).unwrap_or_default(), args.port)
    }
}

/// SIGTERM with the grace period (then SIGKILL), then remove.
pub(crate) fn stop_remove(ids: &[String], grace: Duration) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
    let existing: Vec<String> = ids
        .iter()
        .filter(|id| docker::inspect(&[id.as_str()]).is_ok())
        .cloned()
        .collect();
    if existing.is_empty() {
        return Ok(());
    }
    docker::docker()
        .args(["stop", "--time", &secs.to_string()])
        .args(&existing)
        .timeout(grace + berth_core::process::command_timeout())
        .run()
        .context("stopping containers")?;
    fault::point("stop");
    docker::docker()
        .args(["rm", "-v"])
        .args(&existing)
        .run()
        .context("removing containers")?;
    fault::point("rm");
    Ok(())
}

/// The container's address on its first network that has one.
fn address(c: &Container) -> Option<String> {
    c.networks
        .iter()
        .map(|(_, ip)| ip.clone())
        .find(|ip| !ip.is_empty())
}

/// `stop_grace_period` from the resolved configuration (compose prints a duration
/// string); docker's default 10 s otherwise.
fn stop_grace(cfg: &Value, svc: &str) -> Duration {
    let v = cfg.pointer(&format!("/services/{svc}/stop_grace_period"));
    match v {
        Some(Value::String(s)) => humantime::parse_duration(s).unwrap_or(Duration::from_secs(10)),
        // Nanoseconds, as compose's Go duration type marshals.
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Duration::from_nanos)
            .unwrap_or(Duration::from_secs(10)),
        _ => Duration::from_secs(10),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn grace_from_config() {
        let cfg = json!({"services": {"web": {"stop_grace_period": "15s"},
                                      "w": {"stop_grace_period": 30_000_000_000u64}, "x": {}}});
        assert_eq!(stop_grace(&cfg, "web"), Duration::from_secs(15));
        assert_eq!(stop_grace(&cfg, "w"), Duration::from_secs(30));
        assert_eq!(stop_grace(&cfg, "x"), Duration::from_secs(10));
    }
}
