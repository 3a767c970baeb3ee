//! Convergence: what a swap (or rollback) killed at any step left behind, made whole
//! again from its journal (see [`journal`]) without failing a request. It runs at the
//! start of every swap and rollback, and as `berth-swap --converge`.
//!
//! ```text
//!  journal ─▶ keep: the new containers if traffic had moved (switched), else the old;
//!             only containers that exist and run
//!          ─▶ upstream names exactly those, nginx -t, reload
//!          ─▶ wait until nginx's old workers have exited (they may still talk to the rest)
//!          ─▶ stop (grace period) and remove the rest
//!          ─▶ upstream as a finished swap leaves it (the service's name, or as before)
//!          ─▶ .env = the tag that now runs; journal removed
//! ```
//!
//! Which phase of the swap a kill interrupted, and so which way each service goes, is
//! the journal's (see the table at [`journal::Journals`]).
//!
//! No container nginx may still name is removed before nginx has stopped naming it: a
//! service name in the upstream (`server web:8080`) resolves to every container of the
//! service, so while the others exist the upstream names the kept containers one by one.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use berth_core::cli::Context;
use berth_core::compose::Compose;
use berth_core::docker::Container;
use berth_core::process::Runner;
use berth_core::{fail, msg};

use crate::dns;
use crate::engine::{stop_remove, Options};
use crate::envfile;
use crate::haproxy::{self, Admin};
use crate::journal::{self, Journal, Phase};
use crate::nginx::{self, Proxy, ProxyMode};
use crate::upstream;

/// One service of the interrupted swap: which way it goes and what stays.
struct Fix<'a> {
    j: &'a Journal,
    /// Towards the swap's release (traffic had moved), or back to what served before.
    forward: bool,
    keep: Vec<Container>,
    drop: Vec<Container>,
}

impl Fix<'_> {
    fn say(&self, s: &str) {
        msg::warn(format!(
            "converging the interrupted swap of {} to {} (deploy {}): {s}",
            self.j.service, self.j.tag, self.j.deploy_id
        ));
    }
}

/// What converging needs at hand: the settings, the proxy, the project.
struct Converge<'a> {
    ctx: &'a Context,
    opts: &'a Options,
    proxy: Proxy,
    runner: Runner,
}

/// Converge every journal in the state directory. Returns one line per service done.
/// Call with the deploy lock held.
pub fn converge(ctx: &Context, opts: &Options, tag: Option<&str>) -> Result<Vec<String>> {
    // A swap on Swarm keeps no journal (see docs/swarm.md: not converged after a crash).
    if ctx.engine == berth_core::swarm::Engine::Swarm {
        return Ok(Vec::new());
    }
    let journals = journal::all(&ctx.state_dir)?;
    if journals.is_empty() {
        return Ok(Vec::new());
    }
    let compose = match tag {
        Some(t) => ctx.compose_at(t),
        None => ctx.compose(),
    };
    let mut c = Converge {
        ctx,
        opts,
        proxy: upstream::proxy(ctx, opts, tag),
        runner: Runner { dry_run: false },
    };
    let nginx_named = |j: &Journal| j.upstream_file.is_some() || j.live.is_some();
    if c.proxied() && journals.iter().any(nginx_named) && !c.proxy.locate()? {
        return Err(fail!(
            Preflight,
            "an interrupted swap needs converging, but the nginx service {:?} is not running",
            opts.proxy_service
        ));
    }
    // Traffic moved for the swap when any of its services had switched: go forward.
    let switched = journals.iter().any(|j| j.phase == Phase::Switched);
    let fixes = journals
        .iter()
        .map(|j| fix(j, &compose.containers(&j.service)?, switched))
        .collect::<Result<Vec<_>>>()?;
    let admin = c.haproxy(&compose, &fixes)?;
    let moves = match &admin {
        Some(a) => c.point_slots(a, &fixes)?,
        None => Vec::new(),
    };
    c.pin_kept(&fixes)?;
    c.name_kept(&fixes)?;
    c.stop_dropped(&fixes)?;
    if let Some(a) = &admin {
        for m in &moves {
            a.free(&m.backend, &m.old);
        }
    }
    c.settle_upstreams(&fixes)?;
    c.record(&fixes)
}

/// Which way one service goes, from its journal and the containers it has now.
fn fix<'a>(j: &'a Journal, all: &[Container], switched: bool) -> Result<Fix<'a>> {
    let is_old = |c: &Container| j.old.contains(&c.id);
    let is_new = |c: &Container| !is_old(c) && (j.new.contains(&c.id) || c.image == j.image);
    let running = |f: &dyn Fn(&Container) -> bool| -> Vec<Container> {
        all.iter()
            .filter(|c| f(c) && c.state.running)
            .cloned()
            .collect()
    };
    let (old_running, new_running) = (running(&is_old), running(&is_new));
    let forward = (switched && !new_running.is_empty()) || old_running.is_empty();
    let keep = if forward { new_running } else { old_running };
    if keep.is_empty() {
        return Err(fail!(
            Swap,
            "converging the interrupted swap of {}: neither its old nor its new containers \
             run; start it (docker compose up -d {}) and run berth-swap --converge",
            j.service,
            j.service
        ));
    }
    let drop = all
        .iter()
        .filter(|c| (is_old(c) || is_new(c)) && !keep.iter().any(|k| k.id == c.id))
        .cloned()
        .collect();
    Ok(Fix {
        j,
        forward,
        keep,
        drop,
    })
}

impl Converge<'_> {
    fn proxied(&self) -> bool {
        self.opts.proxy != ProxyMode::None
    }

    /// HAProxy's admin socket, when a service of the interrupted swap is behind HAProxy.
    fn haproxy(&self, compose: &Compose, fixes: &[Fix]) -> Result<Option<Admin>> {
        if self.opts.proxy != ProxyMode::Haproxy || !fixes.iter().any(|f| f.j.backend.is_some()) {
            return Ok(None);
        }
        let admin = Admin::locate(
            compose,
            &self.opts.proxy_service,
            &self.opts.haproxy_socket,
            &self.opts.haproxy_state_file,
        )?;
        match admin {
            Some(a) => Ok(Some(a)),
            None => Err(fail!(
                Preflight,
                "an interrupted swap needs converging, but the HAProxy service {:?} is not running",
                self.opts.proxy_service
            )),
        }
    }

    /// HAProxy's slots name only the containers that stay (filled and UP first, then the
    /// others drained), and nothing is in hand on the others before they stop.
    fn point_slots(&self, admin: &Admin, fixes: &[Fix]) -> Result<Vec<haproxy::Moves>> {
        let mut moves = Vec::new();
        for f in fixes {
            let Some(b) = &f.j.backend else { continue };
            let keep: Vec<haproxy::Target> =
                f.keep.iter().filter_map(haproxy::Target::of).collect();
            let m = admin
                .point(b, &keep, self.opts.port, self.opts.timeout)
                .map_err(|e| fail!(Swap, "converging {}: {e:#}", f.j.service))?;
            let names: Vec<&str> = f.keep.iter().map(|c| c.name.as_str()).collect();
            f.say(&format!(
                "HAProxy backend {b} names only {}",
                names.join(", ")
            ));
            moves.push(m);
        }
        if !admin.wait_idle(
            &moves,
            self.opts
                .drain
                .unwrap_or(crate::engine::DEFAULT_DRAIN)
                .max(Duration::from_secs(2)),
        ) {
            msg::warn(
                "HAProxy still had sessions on the containers that go; stopping them gracefully",
            );
        }
        Ok(moves)
    }

    /// With `--proxy nginx-dns`: the containers that stay answer the alias nginx resolves
    /// (given it if they lack it), and nginx's resolver cache has had the drain to see
    /// that, before the others stop (leaving the name by their graceful stop).
    fn name_kept(&self, fixes: &[Fix]) -> Result<()> {
        let live: Vec<(&Fix, &dns::Live)> = fixes
            .iter()
            .filter(|_| self.opts.proxy == ProxyMode::NginxDns)
            .filter_map(|f| Some((f, f.j.live.as_ref()?)))
            .collect();
        let Some(proxy) = self.proxy.container.as_deref() else {
            return Ok(());
        };
        for (f, l) in &live {
            dns::name_them(proxy, l, &f.keep, self.opts.timeout)
                .map_err(|e| fail!(Swap, "converging {}: {e:#}", f.j.service))?;
            let names: Vec<&str> = f.keep.iter().map(|c| c.name.as_str()).collect();
            f.say(&format!("{} answers for {}", l.alias, names.join(", ")));
        }
        if live.iter().any(|(f, _)| !f.drop.is_empty()) {
            std::thread::sleep(
                self.opts
                    .drain
                    .unwrap_or(Duration::from_secs(2))
                    .max(Duration::from_secs(1)),
            );
        }
        Ok(())
    }

    fn upstream_of(&self, f: &Fix) -> Option<PathBuf> {
        f.j.upstream_file.clone().filter(|_| self.proxied())
    }

    fn servers(&self, keep: &[Container]) -> Vec<String> {
        keep.iter()
            .map(|c| upstream::server(self.opts, c))
            .collect()
    }

    /// Step 1: nginx names only the containers that stay, before any other goes; step 2: the old
    /// workers finish what they hold (possibly with the others), then exit.
    fn pin_kept(&self, fixes: &[Fix]) -> Result<()> {
        let pinned: Vec<_> = fixes
            .iter()
            .filter(|f| !f.drop.is_empty())
            .filter_map(|f| {
                let u = self.upstream_of(f)?;
                let what = format!("converging deploy {}): {}", f.j.deploy_id, f.j.service);
                let text = upstream::text(
                    self.ctx,
                    self.opts,
                    &f.j.service,
                    &self.servers(&f.keep),
                    &what,
                );
                Some((u, Some(text)))
            })
            .collect();
        if pinned.is_empty() {
            return Ok(());
        }
        let workers = self.proxy.worker_pids().unwrap_or_else(|e| {
            msg::warn(format!("cannot list nginx's workers: {e:#}"));
            Vec::new()
        });
        nginx::apply(&self.proxy, self.runner, &pinned)?;
        for f in fixes.iter().filter(|f| !f.drop.is_empty()) {
            let names: Vec<&str> = f.keep.iter().map(|c| c.name.as_str()).collect();
            f.say(&format!("nginx names only {}", names.join(", ")));
        }
        let bound = self
            .opts
            .drain
            .unwrap_or(crate::engine::DEFAULT_DRAIN)
            .max(Duration::from_secs(2));
        if !self.proxy.wait_workers_gone(&workers, bound) {
            msg::warn(format!(
                "nginx's old workers still run after {}; stopping gracefully anyway",
                berth_core::human::limit(bound)
            ));
        }
        Ok(())
    }

    /// Step 3: the others stop with their grace period (in-flight requests finish), all at once.
    fn stop_dropped(&self, fixes: &[Fix]) -> Result<()> {
        let results: Vec<Result<usize>> = std::thread::scope(|sc| {
            let handles: Vec<_> = fixes
                .iter()
                .map(|f| {
                    sc.spawn(move || {
                        let ids: Vec<String> = f.drop.iter().map(|c| c.id.clone()).collect();
                        stop_remove(&ids, Duration::from_secs(f.j.stop_grace_secs))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("stop thread panicked"))
                .collect()
        });
        for (f, r) in fixes.iter().zip(results) {
            r?;
            if !f.drop.is_empty() {
                f.say(&format!(
                    "stopped and removed {} {} container(s)",
                    f.drop.len(),
                    if f.forward { "old" } else { "new" }
                ));
            }
        }
        Ok(())
    }

    /// Step 4: the upstream as a finished swap (forward) or as before the swap (back) leaves
    /// it: with only the kept containers left, the service's name resolves to them alone.
    fn settle_upstreams(&self, fixes: &[Fix]) -> Result<()> {
        let mut last = Vec::new();
        for f in fixes {
            let Some(u) = self.upstream_of(f) else {
                continue;
            };
            let text = if !f.forward {
                f.j.upstream_before.clone()
            } else {
                let servers = vec![upstream::service_server(self.opts, &f.j.service)];
                let what = format!("deploy {}): {} at {}", f.j.deploy_id, f.j.service, f.j.tag);
                Some(upstream::text(
                    self.ctx,
                    self.opts,
                    &f.j.service,
                    &servers,
                    &what,
                ))
            };
            if nginx::read_opt(&u)?.as_deref().map(strip_comments)
                != text.as_deref().map(strip_comments)
            {
                last.push((u, text));
            }
        }
        if !last.is_empty() {
            nginx::apply(&self.proxy, self.runner, &last)?;
        }
        Ok(())
    }

    /// Step 5: compose itself runs what now serves; the journals go.
    fn record(&self, fixes: &[Fix]) -> Result<Vec<String>> {
        let env_path = self.ctx.pin_file();
        let mut done = Vec::new();
        for f in fixes {
            if f.forward
                && envfile::write_var(&env_path, &f.j.tag_var, &f.j.tag, &self.ctx.project)?
            {
                f.say(&format!(
                    "recorded {}={} in {}",
                    f.j.tag_var,
                    f.j.tag,
                    env_path.display()
                ));
            }
            journal::remove(&self.ctx.state_dir, &f.j.service)?;
            f.say(if f.forward {
                "done: the new release serves"
            } else {
                "done: the release from before the swap serves"
            });
            done.push(format!(
                "{}: {}",
                f.j.service,
                if f.forward { "forward" } else { "back" }
            ));
        }
        Ok(done)
    }
}

/// The file without its comment lines (they carry a time stamp).
fn strip_comments(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}
