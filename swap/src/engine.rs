//! The swap itself, shared by `berth-swap` and `berth-rollback`, in phases over one
//! [`Swap`] (the plan: every service, its old containers, its upstream file):
//!
//! ```text
//!  plan ─▶ images ─▶ start beside ─▶ ready? ──no──▶ remove new, exit 3 (old still serve)
//!                                      │yes
//!                                      ▼
//!              switch: rewrite upstream, nginx -t, reload ──fails──▶ restore file, remove new, exit 3
//!                                      │
//!                                      ▼
//!              drain and stop: drain ─▶ stop + remove old ─▶ durable: .env BERTH_TAG=new
//! ```
//!
//! All services of one swap move together: every new container must be ready before any
//! traffic moves, so a swap of `web worker` either switches both or neither. The journal
//! moves with the phases ([`Journals`]: its table says what [`crate::converge`] does
//! after a kill in each); `--dry-run` stops after the images and says what would run.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
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

use crate::dns;
use crate::envfile;
use crate::haproxy::{self, Admin};
use crate::journal::{Journal, Journals, Phase};
use crate::nginx::{self, Proxy, ProxyMode};
use crate::owner;
use crate::upstream;

/// How a swap runs (what `berth-swap` and `berth-rollback` take on their command lines).
#[derive(Debug, Clone)]
pub struct Options {
    /// Where nginx runs.
    pub proxy: ProxyMode,
    /// The compose service running nginx (with [`ProxyMode::Compose`]).
    pub proxy_service: String,
    /// The upstream file template (`{service}` is replaced); `None`: the default path.
    pub upstream_file: Option<String>,
    /// Services that take no traffic.
    pub workers: Vec<String>,
    /// The port the services listen on inside their containers.
    pub port: u16,
    /// The path probed on each new container.
    pub ready_path: String,
    /// How long new containers get to become ready, and the pause between probes.
    pub timeout: Duration,
    pub interval: Duration,
    /// The bound of the drain: how long the old containers get after the switch to finish
    /// what they hold before they are stopped (`None`: [`drain_limit`]'s default).
    pub drain: Option<Duration>,
    /// Grace period before SIGKILL (`None`: the service's `stop_grace_period`).
    pub stop_timeout: Option<Duration>,
    /// Idle keep-alive connections nginx keeps to the upstream.
    pub keepalive: u32,
    /// The nginx binary.
    pub nginx: String,
    /// HAProxy's admin socket inside its container (with [`ProxyMode::Haproxy`]).
    pub haproxy_socket: String,
    /// HAProxy's server-state file inside its container ("" none).
    pub haproxy_state_file: String,
    /// The compose network whose alias nginx resolves, and the alias template
    /// (`{service}` replaced), with [`ProxyMode::NginxDns`].
    pub dns_network: String,
    pub dns_alias: String,
    /// Bound on pulling one service's image.
    pub pull_timeout: Duration,
}

/// What a swap did: for the document.
#[derive(Debug, Clone)]
pub struct SwapOutcome {
    pub previous_tag: Option<String>,
    /// (service, image reference, image ID)
    pub images: Vec<(String, String, String)>,
    pub detail: Map<String, Value>,
    pub dry_run: bool,
}

/// The tag the project runs now: what `.env` says compose should run.
pub fn current_tag(ctx: &Context) -> Option<String> {
    envfile::read_var(&ctx.pin_file(), &ctx.tag_var)
}

/// Swap `services` to `tag`. Errors carry their exit code (1 preflight, 2 image,
/// 3 nothing moved, 4 after the switch). Call with the deploy lock held.
pub fn swap(
    ctx: &Context,
    opts: &Options,
    services: &[String],
    tag: &str,
    deploy_id: &str,
) -> Result<SwapOutcome> {
    if ctx.engine == berth_core::swarm::Engine::Swarm {
        return crate::swarm::swap::swap(ctx, opts, services, tag, deploy_id);
    }
    let started = Instant::now();
    let mut s = Swap::plan(ctx, opts, services, tag, deploy_id)?;
    s.images()?;
    if ctx.dry_run {
        s.dry_run();
        return Ok(s.outcome(Map::new(), true));
    }
    s.name_serving()?;
    let mut journals = s.start_beside()?;
    s.ready(&journals)?;
    s.switch(&journals)?;
    journals.switched().map_err(|e| s.after_switch(e))?;
    s.drain_and_stop();
    s.durable(&journals)?;
    s.times.total_ms = millis(started.elapsed());
    s.say_swapped();
    let detail = s.detail();
    Ok(s.outcome(detail, false))
}

impl Service {
    /// `--proxy nginx-dns`: the running containers without the alias nginx resolves
    /// (compose created them, a first `up` or `down` + `up`), each with its `Live`.
    fn unnamed(&self) -> Vec<(&dns::Live, &Container)> {
        let Some(l) = &self.live else {
            return Vec::new();
        };
        self.old
            .iter()
            .filter(|c| c.state.running && dns::address_on(c, &l.network).is_none())
            .map(|c| (l, c))
            .collect()
    }
}

/// One service in a swap.
#[derive(Debug, Clone)]
struct Service {
    name: String,
    image: String,
    image_id: String,
    pulled: bool,
    stop_grace: Duration,
    /// The `stop_grace_period` the compose file sets (the default drain follows it).
    declared_grace: Option<Duration>,
    /// Old containers that did not exit within `stop_grace` and were killed.
    killed: usize,
    /// The upstream file, for a service behind nginx.
    upstream: Option<PathBuf>,
    upstream_before: Option<String>,
    /// The HAProxy backend, for a service behind HAProxy (`--proxy haproxy`).
    backend: Option<String>,
    /// The network alias nginx resolves, for a service behind `--proxy nginx-dns`.
    live: Option<dns::Live>,
    /// Every container the service had before (any state), oldest first.
    old: Vec<Container>,
    running_before: usize,
    new: Vec<Container>,
    time_to_ready_ms: Option<u64>,
}

/// How long each phase took (for the document and the last line).
#[derive(Debug, Default)]
struct Times {
    ready_ms: u64,
    switch_ms: u64,
    switched_at: String,
    drain_ms: u64,
    /// The drain's bound, where it came from, and whether the old containers were idle
    /// before it (`None`: not observable, the whole bound was waited).
    drain_limit: Duration,
    drain_from: &'static str,
    drained: Option<bool>,
    stop_ms: u64,
    total_ms: u64,
    all_stopped: bool,
}

/// The plan of one swap, carried through its phases.
struct Swap<'a> {
    ctx: &'a Context,
    opts: &'a Options,
    tag: &'a str,
    deploy_id: &'a str,
    compose: Compose,
    proxy: Proxy,
    runner: Runner,
    /// HAProxy's admin socket (with `--proxy haproxy`, once located), and what the switch
    /// did to its backends.
    admin: Option<Admin>,
    moves: Vec<haproxy::Moves>,
    /// nginx's worker processes before the switch's reload: the drain waits until they
    /// exited (an old worker exits once it has finished what it held).
    old_workers: Option<Vec<String>>,
    previous_tag: Option<String>,
    services: Vec<Service>,
    times: Times,
    /// `--proxy nginx-dns`: how long nginx may remember an answer of its resolver
    /// (`valid=`), a failed lookup included.
    dns_cache: Duration,
}

impl<'a> Swap<'a> {
    /// Plan: converge a killed swap first, then each service's image, old containers
    /// and upstream file; refuse files another project owns and a proxy that is not up.
    fn plan(
        ctx: &'a Context,
        opts: &'a Options,
        services: &[String],
        tag: &'a str,
        deploy_id: &'a str,
    ) -> Result<Swap<'a>> {
        docker::ensure_reachable()?;
        let compose = ctx.compose_at(tag);
        let cfg = compose
            .config()
            .map_err(|e| fail!(Preflight, "{}", berth_core::exit::one_line(&e)))?;
        crate::prepare::check_ports(&cfg, services)?;
        let proxy = upstream::proxy(ctx, opts, Some(tag));
        if !ctx.dry_run {
            crate::converge::converge(ctx, opts, Some(tag))?;
        }
        let mut s = Swap {
            ctx,
            opts,
            tag,
            deploy_id,
            previous_tag: current_tag(ctx),
            services: Vec::new(),
            runner: Runner {
                dry_run: ctx.dry_run,
            },
            compose,
            proxy,
            admin: None,
            moves: Vec::new(),
            old_workers: None,
            times: Times::default(),
            dns_cache: Duration::ZERO,
        };
        for svc in services {
            let planned = s.plan_service(&cfg, svc)?;
            s.services.push(planned);
        }
        (s.times.drain_limit, s.times.drain_from) = drain_limit(opts.drain, &s.services);
        s.check_owned_and_proxy()?;
        Ok(s)
    }

    fn plan_service(&self, cfg: &Value, svc: &str) -> Result<Service> {
        let (ctx, opts) = (self.ctx, self.opts);
        let image = compose::service_image_in(cfg, svc).map_err(|e| fail!(Usage, "{e:#}"))?;
        let (haproxy, by_dns) = (
            opts.proxy == ProxyMode::Haproxy,
            opts.proxy == ProxyMode::NginxDns,
        );
        let proxied = upstream::is_proxied(opts, svc);
        let upstream = (proxied && !haproxy && !by_dns)
            .then(|| upstream::path(ctx, opts.upstream_file.as_deref(), svc));
        let backend = (proxied && haproxy).then(|| svc.to_string());
        let live = match proxied && by_dns {
            true => Some(dns::Live {
                network: dns::network_name(cfg, &ctx.project, &opts.dns_network)
                    .map_err(|e| fail!(Preflight, "{e:#}"))?,
                alias: dns::alias(&opts.dns_alias, svc),
            }),
            false => None,
        };
        let old = self.compose.containers(svc)?;
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
        Ok(Service {
            name: svc.to_string(),
            image,
            image_id: String::new(),
            pulled: false,
            stop_grace: opts
                .stop_timeout
                .unwrap_or_else(|| declared_grace(cfg, svc).unwrap_or(DOCKER_GRACE)),
            declared_grace: declared_grace(cfg, svc),
            killed: 0,
            upstream,
            upstream_before,
            backend,
            live,
            old,
            running_before,
            new: Vec::new(),
            time_to_ready_ms: None,
        })
    }

    /// Nothing another environment owns (its pin file, its nginx files), and nginx up
    /// when a service is behind it.
    fn check_owned_and_proxy(&mut self) -> Result<()> {
        let pin = self.ctx.pin_file();
        let mut owned: Vec<(&std::path::Path, owner::Kind)> = vec![(&pin, owner::Kind::Pin)];
        owned.extend(
            self.services
                .iter()
                .filter_map(|p| p.upstream.as_deref())
                .map(|u| (u, owner::Kind::Nginx)),
        );
        owner::check(self.ctx, &owned)?;
        if self.opts.proxy == ProxyMode::Haproxy {
            return self.check_haproxy();
        }
        let proxied_any = self
            .services
            .iter()
            .any(|p| p.upstream.is_some() || p.live.is_some());
        if proxied_any && self.proxy.in_project() && !self.proxy.locate()? {
            return Err(fail!(
                Preflight,
                "the nginx service {:?} is not running (start the stack first, or pass --proxy-service)",
                self.opts.proxy_service
            ));
        }
        self.check_dns()
    }

    /// `--proxy nginx-dns`: the proxy is on the live network and its configuration
    /// resolves each alias.
    fn check_dns(&mut self) -> Result<()> {
        let lives: Vec<&dns::Live> = self
            .services
            .iter()
            .filter_map(|p| p.live.as_ref())
            .collect();
        let (Some(first), Some(name)) = (lives.first(), self.proxy.container.as_deref()) else {
            return Ok(());
        };
        let proxy = docker::inspect(&[name])?.remove(0);
        let conf = self
            .proxy
            .nginx_cmd(&["-T"])
            .output()
            .map(|o| o.stdout)
            .map_err(|e| fail!(Preflight, "nginx -T in {name}: {e}"))?;
        let aliases: Vec<String> = lives.iter().map(|l| l.alias.clone()).collect();
        dns::check(&proxy, &conf, &first.network, &aliases)
            .map_err(|e| fail!(Preflight, "{e:#}"))?;
        self.dns_cache = dns::cache_time(&conf);
        Ok(())
    }

    /// `--proxy nginx-dns`, before any new container starts: the containers that serve
    /// now get the name nginx resolves if they lack it. Compose creates containers without
    /// it (a first `up`, `down` + `up`), and until one has it nginx answers from compose's
    /// service name (examples/nginx-dns's `@web_unnamed`), which would list a new container
    /// the moment it starts, ready or not. Then wait out nginx's memory of the failed
    /// lookup (`valid=`, plus 2 s: nginx counts in whole seconds), so that nothing is sent by the service name when
    /// the new containers start.
    fn name_serving(&mut self) -> Result<()> {
        let Some(proxy) = self.proxy.container.clone() else {
            return Ok(());
        };
        let mut named = false;
        for p in &self.services {
            let bare: Vec<Container> = p.unnamed().into_iter().map(|(_, c)| c.clone()).collect();
            let Some(live) = p.live.as_ref().filter(|_| !bare.is_empty()) else {
                continue;
            };
            dns::name_them(&proxy, live, &bare, self.opts.timeout).map_err(|e| {
                fail!(
                    Swap,
                    "{}: giving the running containers the name {}; nothing started: {}",
                    p.name,
                    live.alias,
                    berth_core::exit::one_line(&e)
                )
            })?;
            msg::info(format!(
                "{} on {} now answers for the running {} (compose had created them without it)",
                live.alias,
                live.network,
                bare.iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            named = true;
        }
        if named {
            std::thread::sleep(self.dns_cache + Duration::from_secs(2));
        }
        Ok(())
    }

    /// HAProxy runs, and each backend exists with a free slot per new container.
    fn check_haproxy(&mut self) -> Result<()> {
        if !self.services.iter().any(|p| p.backend.is_some()) {
            return Ok(());
        }
        let admin = Admin::locate(
            &self.compose,
            &self.opts.proxy_service,
            &self.opts.haproxy_socket,
            &self.opts.haproxy_state_file,
        )?
        .ok_or_else(|| {
            fail!(
                Preflight,
                "the HAProxy service {:?} is not running (start the stack first, or pass --proxy-service)",
                self.opts.proxy_service
            )
        })?;
        for p in &self.services {
            if let Some(b) = &p.backend {
                admin
                    .check_free(b, p.running_before.max(1))
                    .map_err(|e| fail!(Preflight, "{}: {e:#}", p.name))?;
            }
        }
        self.admin = Some(admin);
        Ok(())
    }

    /// Phase 1, images: present, or pulled by tag; else exit 2 with nothing changed.
    fn images(&mut self) -> Result<()> {
        for p in &mut self.services {
            (p.image_id, p.pulled) = ensure_image(
                &self.compose,
                self.runner,
                &p.name,
                &p.image,
                self.opts.pull_timeout,
            )?;
        }
        Ok(())
    }

    /// Dry run: say what each phase would run, change nothing.
    fn dry_run(&self) {
        for p in &self.services {
            for (l, c) in p.unnamed() {
                msg::info(format!(
                    "would first give the running {} the name nginx resolves: {}",
                    c.name,
                    dns::connect_cmd(l, &c.name).display()
                ));
            }
            msg::info(format!(
                "would run: {}",
                start_cmd(&self.compose, p).display()
            ));
            let then = match (&p.upstream, &p.live) {
                (_, Some(l)) => format!(
                    "give them the name nginx resolves: {}",
                    dns::connect_cmd(l, "NEW").display()
                ),
                (Some(u), _) => format!(
                    "rewrite {} to name them, run {} and {}",
                    u.display(),
                    self.proxy.nginx_cmd(&["-t"]).display(),
                    self.proxy.nginx_cmd(&["-s", "reload"]).display()
                ),
                (None, None) => "(a worker) stop the old ones".to_string(),
            };
            msg::info(format!(
                "would wait until the new {} container(s) are ready, then {then}",
                p.name
            ));
            let ids: Vec<String> = p.old.iter().map(|c| c.short_id().to_string()).collect();
            if !ids.is_empty() {
                msg::info(format!(
                    "would run: {}",
                    docker::stop(&ids, p.stop_grace).display()
                ));
                msg::info(format!("would run: {}", docker::remove(&ids).display()));
            }
        }
        msg::info(format!(
            "would set {}={} in {}",
            self.ctx.tag_var,
            self.tag,
            self.ctx.pin_file().display()
        ));
    }

    /// Phase 2, start beside: the journal first, so that a kill at any point can be undone;
    /// then one compose per service, all at once.
    fn start_beside(&mut self) -> Result<Journals> {
        let entries = self.services.iter().map(|p| self.journal(p)).collect();
        let mut journals = Journals::begin(&self.ctx.state_dir, entries)?;
        let compose = &self.compose;
        let results: Vec<Result<()>> = std::thread::scope(|sc| {
            let handles: Vec<_> = self
                .services
                .iter_mut()
                .map(|p| sc.spawn(move || start_service(compose, p)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("start thread panicked"))
                .collect()
        });
        journals.started(
            self.services
                .iter()
                .map(|p| p.new.iter().map(|c| c.id.clone()).collect())
                .collect(),
        )?;
        if let Some((i, e)) = results
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
        {
            self.undo(&journals);
            return Err(fail!(
                Swap,
                "{}: {}",
                self.services[i].name,
                berth_core::exit::one_line(e)
            ));
        }
        Ok(journals)
    }

    /// What the journal records of a service before its new containers start.
    fn journal(&self, p: &Service) -> Journal {
        Journal {
            deploy_id: self.deploy_id.to_string(),
            service: p.name.clone(),
            phase: Phase::Started,
            tag: self.tag.to_string(),
            tag_var: self.ctx.tag_var.clone(),
            image: p.image.clone(),
            old: p.old.iter().map(|c| c.id.clone()).collect(),
            new: Vec::new(),
            upstream_file: p.upstream.clone(),
            upstream_before: p.upstream_before.clone(),
            backend: p.backend.clone(),
            live: p.live.clone(),
            stop_grace_secs: p.stop_grace.as_secs(),
            updated_at: String::new(),
        }
    }

    /// Phase 3, ready: every new container, probed directly, failing fast when one dies.
    fn ready(&mut self, journals: &Journals) -> Result<()> {
        let opts = self.opts;
        let mut targets = Vec::new();
        let mut owner = Vec::new();
        for (i, p) in self.services.iter().enumerate() {
            for c in &p.new {
                targets.push(ready_target(opts, p, c));
                owner.push(i);
            }
        }
        msg::info(format!(
            "waiting for {} new container(s) to be ready (timeout {})",
            targets.len(),
            berth_core::human::limit(opts.timeout)
        ));
        let probe = health::Options {
            timeout: opts.timeout,
            interval: opts.interval,
            attempt_timeout: Duration::from_secs(2).min(opts.timeout),
            successes: 1,
        };
        let wait_started = Instant::now();
        let report = health::wait(&targets, &probe, &|l| {
            msg::info(l);
            fault::point("probe");
        });
        if !report.ready {
            self.undo(journals);
            return Err(fail!(
                Swap,
                "new containers not ready, removed them; the old ones still serve: {}",
                report.failure()
            ));
        }
        fault::point("ready");
        for (t, i) in report.targets.iter().zip(owner) {
            let ms = t.time_to_ready_ms.unwrap_or(0);
            let cur = &mut self.services[i].time_to_ready_ms;
            *cur = Some(cur.unwrap_or(0).max(ms));
        }
        self.times.ready_ms = millis(wait_started.elapsed());
        Ok(())
    }

    /// Phase 4, switch: every upstream file at once, one `nginx -t`, one graceful reload.
    fn switch(&mut self, journals: &Journals) -> Result<()> {
        let ready_at = Instant::now();
        let files: Vec<(PathBuf, Option<String>)> = self
            .services
            .iter()
            .filter_map(|p| {
                let u = p.upstream.as_ref()?;
                let servers: Vec<String> = p
                    .new
                    .iter()
                    .map(|c| upstream::server(self.opts, c))
                    .collect();
                Some((u.clone(), Some(self.upstream_text(p, &servers))))
            })
            .collect();
        if !files.is_empty() {
            self.note_workers();
            if let Err(e) = nginx::apply(&self.proxy, self.runner, &files) {
                self.undo(journals);
                return Err(e.context("switching nginx to the new containers; removed them"));
            }
            msg::info(format!(
                "switched nginx to {}",
                self.services
                    .iter()
                    .filter(|p| p.upstream.is_some())
                    .flat_map(|p| p.new.iter().map(|c| c.name.clone()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Err(e) = self.switch_dns() {
            self.undo(journals);
            return Err(fail!(
                Swap,
                "naming the new containers for nginx; removed them, the old ones still serve: {}",
                berth_core::exit::one_line(&e)
            ));
        }
        if let Err(e) = self.switch_haproxy() {
            self.undo(journals);
            return Err(fail!(
                Swap,
                "switching HAProxy to the new containers; removed them, the old ones still serve: {}",
                berth_core::exit::one_line(&e)
            ));
        }
        self.times.switch_ms = millis(ready_at.elapsed());
        self.times.switched_at = time::now_rfc3339();
        Ok(())
    }

    /// The switch through HAProxy's runtime API: the new containers in free slots, UP by
    /// HAProxy's own check, and only then the old slots drained. On a failure, the filled
    /// slots are freed again and the old ones take traffic as before.
    fn switch_haproxy(&mut self) -> Result<()> {
        let Some(admin) = self.admin.clone() else {
            return Ok(());
        };
        let wanted: Vec<(String, Vec<haproxy::Target>)> = self
            .services
            .iter()
            .filter_map(|p| {
                let targets = p.new.iter().filter_map(haproxy::Target::of).collect();
                Some((p.backend.clone()?, targets))
            })
            .collect();
        for (b, targets) in wanted {
            match admin.fill(&b, &targets, self.opts.port) {
                Ok(m) => self.moves.push(m),
                Err(e) => {
                    self.unfill();
                    return Err(e.context(format!("{b}: filling HAProxy slots")));
                }
            }
        }
        berth_core::fault::point("haproxy-fill");
        let up = admin.wait_up(&self.moves, self.opts.timeout);
        let drained = up.and_then(|_| {
            self.moves
                .iter()
                .try_for_each(|m| admin.drain(&m.backend, &m.old))
        });
        if let Err(e) = drained {
            for m in &self.moves {
                for s in &m.old {
                    let _ = admin.set(&format!("set server {}/{s} state ready", m.backend));
                }
            }
            self.unfill();
            return Err(e);
        }
        for m in &self.moves {
            msg::info(format!(
                "switched HAProxy backend {} to slot(s) {} (drained: {})",
                m.backend,
                m.filled.join(", "),
                if m.old.is_empty() {
                    "none".to_string()
                } else {
                    m.old.join(", ")
                }
            ));
        }
        Ok(())
    }

    /// The switch without a reload (`--proxy nginx-dns`): the new containers get the
    /// alias nginx resolves, done once the proxy's resolver answers every one of them
    /// (nginx's own cache follows within its `valid`, the drain covers it). On a failure
    /// the new containers stop gracefully (what nginx sent them finishes, a refused
    /// connection goes on to the old ones) and are removed.
    fn switch_dns(&mut self) -> Result<()> {
        let Some(proxy) = self.proxy.container.clone() else {
            return Ok(());
        };
        let mut failed = None;
        for p in self.services.iter().filter(|p| p.live.is_some()) {
            let live = p.live.as_ref().expect("filtered");
            if let Err(e) = dns::name_them(&proxy, live, &p.new, self.opts.timeout) {
                failed = Some(e.context(format!("{}: {}", p.name, live.alias)));
                break;
            }
            msg::info(format!(
                "{} on {} now answers for {} (nginx resolves it per request)",
                live.alias,
                live.network,
                p.new
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let Some(e) = failed else {
            fault::point("dns-named");
            return Ok(());
        };
        for p in self.services.iter_mut().filter(|p| p.live.is_some()) {
            let ids: Vec<String> = p.new.iter().map(|c| c.id.clone()).collect();
            match stop_remove(&ids, p.stop_grace) {
                Ok(_) => p.new.clear(),
                Err(e) => msg::warn(format!("{}: {e:#}", p.name)),
            }
        }
        Err(e)
    }

    /// Free the slots the switch filled.
    fn unfill(&mut self) {
        if let Some(admin) = &self.admin {
            for m in &self.moves {
                admin.free(&m.backend, &m.filled);
            }
        }
        self.moves.clear();
    }

    /// Before the switch's reload: nginx's workers now (they become the old ones).
    fn note_workers(&mut self) {
        if self.runner.dry_run || !self.drains() {
            return;
        }
        self.old_workers = self.proxy.worker_pids().ok();
    }

    /// Whether the switch took traffic away from old containers (so they drain).
    fn drains(&self) -> bool {
        let any_old = self.services.iter().any(|p| !p.old.is_empty());
        any_old
            && self
                .services
                .iter()
                .any(|p| proxied(p) && p.running_before > 0)
    }

    /// Phase 5, drain and stop: wait until the proxy holds nothing on the old containers
    /// (at most the drain's bound), then stop them with their grace period, all at once.
    fn drain_and_stop(&mut self) {
        let drain_started = Instant::now();
        if self.drains() {
            self.times.drained = self.drain();
        }
        self.times.drain_ms = millis(drain_started.elapsed());
        fault::point("drain");
        let stop_started = Instant::now();
        self.stop_old();
        if let Some(admin) = &self.admin {
            for m in &self.moves {
                admin.free(&m.backend, &m.old);
            }
        }
        self.times.stop_ms = millis(stop_started.elapsed());
    }

    /// The drain: HAProxy counts the sessions the old slots still hold; nginx's old workers
    /// exit once they finished theirs. Without either, the whole bound is waited. Returns
    /// whether the old containers were idle before the bound (`None`: not observable).
    fn drain(&self) -> Option<bool> {
        let limit = self.times.drain_limit;
        let bound = berth_core::human::limit(limit);
        let from = self.times.drain_from;
        let idle = if let Some(admin) = &self.admin {
            msg::info(format!(
                "draining the old containers until HAProxy has no session on them (at most {bound}, {from})"
            ));
            Some(admin.wait_idle(&self.moves, limit))
        } else if let Some(pids) = &self.old_workers {
            msg::info(format!(
                "draining the old containers until nginx's old workers have finished their requests (at most {bound}, {from})"
            ));
            Some(self.proxy.wait_workers_gone(pids, limit))
        } else {
            msg::info(format!("draining the old containers for {bound} ({from})"));
            std::thread::sleep(limit);
            None
        };
        if idle == Some(false) {
            msg::warn(format!(
                "the old containers still had requests in hand after {bound}; stopping them \
                 gracefully (SIGTERM: the app finishes or closes them within its grace period)"
            ));
        }
        idle
    }

    /// Stop and remove every service's old containers (SIGTERM, SIGKILL after the grace
    /// period), all at once; count the ones that had to be killed.
    fn stop_old(&mut self) {
        let all_stopped = AtomicBool::new(true);
        std::thread::scope(|s| {
            for p in self.services.iter_mut().filter(|p| !p.old.is_empty()) {
                let all_stopped = &all_stopped;
                s.spawn(move || {
                    let ids: Vec<String> = p.old.iter().map(|c| c.id.clone()).collect();
                    match stop_remove(&ids, p.stop_grace) {
                        Ok(killed) => p.killed = killed,
                        Err(e) => {
                            all_stopped.store(false, Ordering::SeqCst);
                            msg::warn(format!("{}: {e:#}", p.name));
                        }
                    }
                });
            }
        });
        self.times.all_stopped = all_stopped.load(Ordering::SeqCst);
    }

    /// Phase 6, durable: the upstream names the service (restart-proof), compose itself reads
    /// the new tag, and the journal goes.
    fn durable(&self, journals: &Journals) -> Result<()> {
        if self.times.all_stopped {
            self.name_services();
        }
        let env_path = self.ctx.pin_file();
        let (var, tag) = (&self.ctx.tag_var, self.tag);
        envfile::write_var(&env_path, var, tag, &self.ctx.project)
            .with_context(|| format!("recording {var}={tag} in {}", env_path.display()))
            .map_err(|e| self.after_switch(e))?;
        fault::point("env");
        journals.close().map_err(|e| self.after_switch(e))
    }

    /// With the old containers gone, the service's own name resolves to the new ones
    /// only. Name it in the upstream file, so that a `docker compose down` and `up`
    /// (which numbers containers afresh) still finds the app; nginx re-resolves the name
    /// at this (graceful) reload and whenever it starts.
    fn name_services(&self) {
        let files: Vec<(PathBuf, Option<String>)> = self
            .services
            .iter()
            .filter(|p| !p.new.is_empty())
            .filter_map(|p| {
                let u = p.upstream.as_ref()?;
                let server = upstream::service_server(self.opts, &p.name);
                Some((u.clone(), Some(self.upstream_text(p, &[server]))))
            })
            .collect();
        if files.is_empty() {
            return;
        }
        if let Err(e) = nginx::apply(&self.proxy, self.runner, &files) {
            msg::warn(format!(
                "could not name the services in the upstream files (the new containers serve by name): {e:#}"
            ));
        }
    }

    fn upstream_text(&self, p: &Service, servers: &[String]) -> String {
        let what = format!("deploy {}): {} at {}", self.deploy_id, p.name, self.tag);
        upstream::text(self.ctx, self.opts, &p.name, servers, &what)
    }

    /// From the switch on the new release serves: an error is not "the old version
    /// still serves".
    fn after_switch(&self, e: anyhow::Error) -> anyhow::Error {
        after_switch(e, self.tag, self.previous_tag.as_deref())
    }

    /// Undo a swap that has not moved traffic: remove the new containers and the journals.
    fn undo(&self, journals: &Journals) {
        for p in &self.services {
            remove_new(&self.compose, p);
        }
        if let Err(e) = journals.close() {
            msg::warn(format!("{e:#}"));
        }
    }

    fn say_swapped(&self) {
        let t = &self.times;
        msg::info(format!(
            "swapped {} to {} in {:.1}s (ready {:.1}s, switch {} ms, drain {:.1}s)",
            self.services
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            self.tag,
            t.total_ms as f64 / 1000.0,
            t.ready_ms as f64 / 1000.0,
            t.switch_ms,
            t.drain_ms as f64 / 1000.0
        ));
    }

    /// The stage's `detail`: the swap's record in the document.
    fn detail(&self) -> Map<String, Value> {
        let t = &self.times;
        record::to_detail(&record::Swap {
            tag: Some(self.tag.to_string()),
            previous_tag: Some(self.previous_tag.clone()),
            services: self.services.iter().map(service_detail).collect(),
            ready_ms: Some(t.ready_ms),
            switch_ms: Some(t.switch_ms),
            switched_at: Some(t.switched_at.clone()),
            drain_ms: Some(t.drain_ms),
            drain_limit_ms: Some(millis(t.drain_limit)),
            drain_from: Some(t.drain_from.to_string()),
            drained: self.drains().then_some(t.drained),
            stop_ms: Some(t.stop_ms),
            total_ms: Some(t.total_ms),
            ..record::Swap::default()
        })
    }

    fn outcome(&self, detail: Map<String, Value>, dry_run: bool) -> SwapOutcome {
        SwapOutcome {
            previous_tag: self.previous_tag.clone(),
            images: self
                .services
                .iter()
                .map(|p| (p.name.clone(), p.image.clone(), p.image_id.clone()))
                .collect(),
            detail,
            dry_run,
        }
    }
}

/// How a new container is probed: over HTTP at its own address when it takes traffic;
/// Docker health for a worker, or a container that has no address (it has already
/// exited: the container probe says how, with its logs).
fn ready_target(opts: &Options, p: &Service, c: &Container) -> Target {
    match (proxied(p), upstream::address(c)) {
        (true, Some(ip)) => Target::HttpOn {
            container: c.name.clone(),
            check: HttpCheck::new(&format!("http://{ip}:{}{}", opts.port, opts.ready_path)),
        },
        _ => Target::Container(c.name.clone()),
    }
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

/// The context of a swap on Swarm that failed before traffic moved (exit 3): the old
/// version still runs, and `detail` (the swap's record: its services and the tasks that
/// ran before and still run) goes into the document.
#[derive(Debug, Clone)]
pub struct Unmoved {
    pub previous_tag: Option<String>,
    pub detail: Map<String, Value>,
    /// The `SERVICE--next` of an earlier, unfinished swap this one removed first (nginx
    /// switched back to the stack's own tasks): that much did move.
    pub cleaned_up: Vec<String>,
}

impl std::fmt::Display for Unmoved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.cleaned_up.is_empty() {
            return write!(f, "nothing moved");
        }
        write!(
            f,
            "nothing moved after the clean-up of a swap that did not finish (nginx back on \
             the stack's own tasks, {} removed)",
            self.cleaned_up.join(", ")
        )
    }
}

fn after_switch(e: anyhow::Error, tag: &str, previous_tag: Option<&str>) -> anyhow::Error {
    let line = berth_core::exit::one_line(&e);
    fail!(Unhealthy, "{line}").context(AfterSwitch {
        serving: tag.to_string(),
        previous_tag: previous_tag.map(str::to_string),
    })
}

/// Whether the service takes traffic through a proxy (nginx or HAProxy).
fn proxied(p: &Service) -> bool {
    p.upstream.is_some() || p.backend.is_some() || p.live.is_some()
}

fn service_detail(p: &Service) -> record::SwappedService {
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
        proxied: proxied(p),
        upstream_file: p.upstream.as_ref().map(|u| u.display().to_string()),
        old_containers: p.old.iter().map(c).collect(),
        new_containers: p.new.iter().map(c).collect(),
        time_to_ready_ms: p.time_to_ready_ms,
        stop_grace_ms: millis(p.stop_grace),
        killed: Some(p.killed as u64),
        haproxy_backend: p.backend.clone(),
        extra: Map::new(),
    }
}

/// The image ID of `image`, pulling it by tag when it is not here (exit 2 when it cannot
/// be had within `pull_timeout`). Returns (ID, pulled).
pub fn ensure_image(
    compose: &Compose,
    runner: Runner,
    svc: &str,
    image: &str,
    pull_timeout: Duration,
) -> Result<(String, bool)> {
    if let Some(id) = docker::image_id(image)? {
        return Ok((id, false));
    }
    msg::info(format!("{svc}: pulling {image}"));
    runner
        .change(&compose.cmd(["pull", "--quiet", svc]).timeout(pull_timeout))
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

fn start_cmd(compose: &Compose, p: &Service) -> berth_core::process::Cmd {
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

/// Start the new containers of one service beside the old ones (as many as run now; a
/// first deploy starts the service as the compose file says).
fn start_service(compose: &Compose, p: &mut Service) -> Result<()> {
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

/// Remove a service's new containers, also those compose created that we did not see
/// (a failed `up`).
fn remove_new(compose: &Compose, p: &Service) {
    let mut ids: Vec<String> = p.new.iter().map(|c| c.id.clone()).collect();
    if let Ok(now) = compose.containers(&p.name) {
        for c in now {
            if !p.old.iter().any(|o| o.id == c.id) && !ids.contains(&c.id) {
                ids.push(c.id);
            }
        }
    }
    if ids.is_empty() {
        return;
    }
    msg::info(format!(
        "{}: removing {} new container(s)",
        p.name,
        ids.len()
    ));
    if let Err(e) = docker::remove_force(&ids, true).run() {
        msg::warn(format!("{}: could not remove new containers: {e}", p.name));
    }
}

/// The drain's bound when `--drain` is not given: the longest `stop_grace_period` of the
/// swapped services that take traffic (as long as the app is given to finish its
/// requests when it stops), else this.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(5);
/// Docker's own grace period, for a service without `stop_grace_period`.
const DOCKER_GRACE: Duration = Duration::from_secs(10);

/// The drain's bound and where it came from (`--drain`, `stop_grace_period`, `default`).
fn drain_limit(flag: Option<Duration>, services: &[Service]) -> (Duration, &'static str) {
    if let Some(d) = flag {
        return (d, "--drain");
    }
    services
        .iter()
        .filter(|p| proxied(p))
        .filter_map(|p| p.declared_grace)
        .max()
        .map_or((DEFAULT_DRAIN, "default"), |g| (g, "stop_grace_period"))
}

/// SIGTERM with the grace period (then SIGKILL), then remove. Returns how many of them
/// were killed: still running at the end of the grace period (Docker's SIGKILL, exit
/// 137), so whatever they still held was cut.
pub(crate) fn stop_remove(ids: &[String], grace: Duration) -> Result<usize> {
    let found: Vec<Container> = ids
        .iter()
        .filter_map(|id| docker::inspect(&[id.as_str()]).ok())
        .flatten()
        .collect();
    if found.is_empty() {
        return Ok(0);
    }
    let existing: Vec<String> = found.iter().map(|c| c.id.clone()).collect();
    let running: Vec<String> = found
        .iter()
        .filter(|c| c.state.running)
        .map(|c| c.id.clone())
        .collect();
    docker::stop(&existing, grace)
        .run()
        .context("stopping containers")?;
    fault::point("stop");
    let killed = killed_at_grace(&running, grace);
    docker::remove(&existing)
        .run()
        .context("removing containers")?;
    fault::point("rm");
    Ok(killed)
}

/// How many of `running` (stopped just now) exited by SIGKILL, with a warning for each.
fn killed_at_grace(running: &[String], grace: Duration) -> usize {
    let refs: Vec<&str> = running.iter().map(String::as_str).collect();
    let Ok(now) = docker::inspect(&refs) else {
        return 0;
    };
    let killed: Vec<String> = now
        .iter()
        .filter(|c| !c.state.running && c.state.exit_code == 137)
        .map(|c| c.name.clone())
        .collect();
    for name in &killed {
        msg::warn(format!(
            "{name} did not exit within its grace period ({}) and was killed (SIGKILL): \
             requests it still held were cut (a longer stop_grace_period or --stop-timeout \
             gives them time)",
            berth_core::human::limit(grace)
        ));
    }
    killed.len()
}

/// `stop_grace_period` from the resolved configuration (compose prints a duration
/// string, or nanoseconds); `None` when the service sets none.
fn declared_grace(cfg: &Value, svc: &str) -> Option<Duration> {
    match cfg.pointer(&format!("/services/{svc}/stop_grace_period"))? {
        Value::String(s) => humantime::parse_duration(s).ok(),
        // Nanoseconds, as compose's Go duration type marshals.
        Value::Number(n) => n.as_u64().map(Duration::from_nanos),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unmoved_says_what_its_clean_up_moved() {
        let unmoved = |cleaned_up: Vec<String>| {
            let e = anyhow::anyhow!("web--next: not ready in 15s").context(Unmoved {
                previous_tag: None,
                detail: Map::new(),
                cleaned_up,
            });
            berth_core::exit::one_line(&e)
        };
        assert_eq!(
            unmoved(vec![]),
            "nothing moved: web--next: not ready in 15s"
        );
        assert_eq!(
            unmoved(vec!["s_web--next".into()]),
            "nothing moved after the clean-up of a swap that did not finish (nginx back on \
             the stack's own tasks, s_web--next removed): web--next: not ready in 15s"
        );
    }

    #[test]
    fn grace_from_config() {
        let cfg = json!({"services": {"web": {"stop_grace_period": "15s"},
                                      "w": {"stop_grace_period": 30_000_000_000u64}, "x": {}}});
        assert_eq!(declared_grace(&cfg, "web"), Some(Duration::from_secs(15)));
        assert_eq!(declared_grace(&cfg, "w"), Some(Duration::from_secs(30)));
        assert_eq!(declared_grace(&cfg, "x"), None);
    }

    fn svc(name: &str, grace: Option<u64>, proxied: bool) -> Service {
        Service {
            name: name.into(),
            image: String::new(),
            image_id: String::new(),
            pulled: false,
            stop_grace: DOCKER_GRACE,
            declared_grace: grace.map(Duration::from_secs),
            killed: 0,
            upstream: proxied.then(|| PathBuf::from("/u.conf")),
            upstream_before: None,
            backend: None,
            live: None,
            old: Vec::new(),
            running_before: 1,
            new: Vec::new(),
            time_to_ready_ms: None,
        }
    }

    #[test]
    fn the_default_drain_follows_the_grace_period_of_what_takes_traffic() {
        let s = Duration::from_secs;
        let web = svc("web", Some(15), true);
        // A worker's (longer) grace does not count: no traffic drains from it.
        let worker = svc("worker", Some(30), false);
        let bare = svc("api", None, true);
        assert_eq!(
            drain_limit(None, &[web.clone(), worker.clone()]),
            (s(15), "stop_grace_period")
        );
        assert_eq!(
            drain_limit(None, &[bare.clone(), worker]),
            (s(5), "default")
        );
        assert_eq!(
            drain_limit(None, &[bare, web.clone()]),
            (s(15), "stop_grace_period")
        );
        assert_eq!(drain_limit(Some(s(1)), &[web]), (s(1), "--drain"));
    }
}
