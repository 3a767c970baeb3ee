//! Where a swap sends traffic: the proxy the settings describe, each service's upstream
//! file, and the text that names its containers (shared by the swap's phases and by
//! convergence).

use std::path::PathBuf;

use berth_core::cli::Context;
use berth_core::docker::Container;
use berth_core::time;

use crate::engine::Options;
use crate::nginx::{self, Proxy, ProxyMode};

/// The proxy the settings describe, for this project (compose at `tag`, when known).
pub fn proxy(ctx: &Context, opts: &Options, tag: Option<&str>) -> Proxy {
    let compose = match tag {
        Some(t) => ctx.compose_at(t),
        None => ctx.compose(),
    };
    Proxy::new(opts.proxy, compose, &opts.proxy_service, &opts.nginx)
}

/// The upstream file of a service, from the `--upstream-file` template.
pub fn path(ctx: &Context, template: Option<&str>, service: &str) -> PathBuf {
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

/// Whether `service` takes traffic through nginx (not a worker, and a proxy at all).
pub fn is_proxied(opts: &Options, service: &str) -> bool {
    opts.proxy != ProxyMode::None && !opts.workers.iter().any(|w| w == service)
}

/// The upstream file's text for `service` sending to `servers`; `what` ends the first
/// comment line ("Written by berth-swap at TIME (" WHAT ".").
pub fn text(
    ctx: &Context,
    opts: &Options,
    service: &str,
    servers: &[String],
    what: &str,
) -> String {
    nginx::render_upstream(service, servers, opts.keepalive, &comment(ctx, what))
}

/// The comment that opens every file berth writes for nginx; `what` ends its second line
/// ("Written by berth-swap at TIME (" WHAT "."). Its first line marks the file as this
/// project's (see [`crate::owner`]).
pub fn comment(ctx: &Context, what: &str) -> String {
    format!(
        "berth: project={}\nWritten by berth-swap at {} ({what}.\n\
         berth rewrites this file on every swap; edits here are overwritten.",
        ctx.project,
        time::now_rfc3339()
    )
}

/// How an upstream file names one container: by name (nginx runs in the project's
/// network and resolves it on every start and reload, so new addresses after a reboot do
/// not matter).
pub fn server(opts: &Options, c: &Container) -> String {
    format!("{}:{}", c.name, opts.port)
}

/// How an upstream file names a whole service: its compose name, which resolves to every
/// container of the service (the restart-proof form, once only the new ones are left).
pub fn service_server(opts: &Options, service: &str) -> String {
    format!("{service}:{}", opts.port)
}

/// The container's address on its first network that has one.
pub fn address(c: &Container) -> Option<String> {
    c.networks
        .iter()
        .map(|(_, ip)| ip.clone())
        .find(|ip| !ip.is_empty())
}
