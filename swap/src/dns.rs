//! nginx without a reload (`--proxy nginx-dns`): nginx resolves a name per request
//! through Docker's DNS (`resolver 127.0.0.11 valid=1s; set $backend web-live;
//! proxy_pass http://$backend:8080;`) and berth decides which containers answer that
//! name. No reload, so no client keep-alive connection is closed by a switch.
//!
//! The name is a network alias on a second network of the project (`live`, the proxy is
//! on it, the swapped services are not): compose's own service name lists a container as
//! soon as it starts, before it is ready, so it cannot be the switch. A swap connects each
//! new container to that network with the alias only once it has passed its probe
//! (`docker network connect --alias web-live NET NEW`), waits until the proxy's resolver
//! answers it, and the old containers leave the name by their graceful stop (they close
//! their listener, finish what they hold and exit; nginx's `proxy_next_upstream error`
//! sends a refused connection on to the next address). See docs/proxies.md.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use berth_core::cli::Context;
use berth_core::docker::{self, Container};
use berth_core::process::Cmd;

use crate::engine::Options;
use crate::upstream;

/// Where one service's containers are named for nginx: `alias` on `network` (the
/// network's name as Docker knows it, e.g. `shop_live`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Live {
    pub network: String,
    pub alias: String,
}

/// The alias of `service` from the `--dns-alias` template (`{service}` replaced).
pub fn alias(template: &str, service: &str) -> String {
    template.replace("{service}", service)
}

/// The Docker name of the compose network `key` (its `name`, else `PROJECT_KEY`); an
/// error naming what to add when the compose file does not declare it.
pub fn network_name(cfg: &Value, project: &str, key: &str) -> Result<String> {
    let Some(n) = cfg.pointer(&format!("/networks/{key}")) else {
        bail!(
            "--proxy nginx-dns: the compose file declares no network {key:?} (add `networks: \
             {{{key}: {{}}}}` and put the proxy service on it, see examples/nginx-dns; or pass \
             --dns-network)"
        );
    };
    Ok(n.get("name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{project}_{key}")))
}

/// Preflight: the proxy container is on the network and nginx's configuration names
/// each alias and a resolver (else nginx would not follow the name without a reload).
pub fn check(proxy: &Container, nginx_t: &str, network: &str, aliases: &[String]) -> Result<()> {
    if !proxy.networks.iter().any(|(n, _)| n == network) {
        bail!(
            "--proxy nginx-dns: the proxy container {} is not on the network {network} (add it \
             to the proxy service's networks, see examples/nginx-dns)",
            proxy.name
        );
    }
    let code = code_lines(nginx_t);
    if !has_resolver(&code) {
        bail!(
            "--proxy nginx-dns: nginx's configuration has no `resolver` (add `resolver \
             127.0.0.11 valid=1s ipv6=off;`, see examples/nginx-dns/nginx.conf)"
        );
    }
    for a in aliases {
        if !names(&code, a) {
            bail!(
                "--proxy nginx-dns: nginx's configuration never names {a} (add `set $backend \
                 {a};` and `proxy_pass http://$backend:PORT;`, see examples/nginx-dns/nginx.conf)"
            );
        }
    }
    Ok(())
}

/// The lines of `nginx -T`'s output without their comments.
pub fn code_lines(nginx_t: &str) -> Vec<&str> {
    nginx_t
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .collect()
}

/// Whether nginx's configuration has a `resolver` (without one a name in a variable
/// `proxy_pass` is never resolved at request time).
pub fn has_resolver(code: &[&str]) -> bool {
    code.iter().any(|l| l.trim_start().starts_with("resolver "))
}

/// Whether the configuration's code lines (comments cut) name `alias` as a word.
fn names(code: &[&str], alias: &str) -> bool {
    code.iter().any(|l| {
        l.split(|c: char| c.is_whitespace() || c == ';' || c == '/' || c == ':')
            .any(|w| w == alias)
    })
}

/// `berth-swap --proxy nginx-dns --converge`, with no swap to converge: the running
/// containers of every service whose alias nginx's configuration names get it if they
/// lack it (compose created them: a first `up`, `down` + `up`), so that nginx stops
/// answering through compose's service name (slower: a failed lookup per request). No
/// container starts, so nothing waits for nginx to forget the failed lookup. Returns
/// what it named, e.g. `web: shop-web-1 named web-live`.
pub fn name_running(ctx: &Context, opts: &Options) -> Result<Vec<String>> {
    let mut proxy = upstream::proxy(ctx, opts, None);
    if !proxy.locate()? {
        return Ok(Vec::new());
    }
    let Some(name) = proxy.container.clone() else {
        return Ok(Vec::new());
    };
    let cfg = proxy.compose.config()?;
    let conf = proxy
        .nginx_cmd(&["-T"])
        .output()
        .map(|o| o.stdout)
        .with_context(|| format!("nginx -T in {name}"))?;
    let code = code_lines(&conf);
    let services: Vec<String> = cfg
        .pointer("/services")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let mut done = Vec::new();
    for svc in services.iter().filter(|s| **s != opts.proxy_service) {
        let live = Live {
            network: network_name(&cfg, &ctx.project, &opts.dns_network)?,
            alias: alias(&opts.dns_alias, svc),
        };
        if !names(&code, &live.alias) {
            continue;
        }
        let bare: Vec<Container> = proxy
            .compose
            .containers(svc)?
            .into_iter()
            .filter(|c| c.state.running && address_on(c, &live.network).is_none())
            .collect();
        if bare.is_empty() {
            continue;
        }
        name_them(&name, &live, &bare, opts.timeout).with_context(|| svc.clone())?;
        let named: Vec<&str> = bare.iter().map(|c| c.name.as_str()).collect();
        done.push(format!("{svc}: {} named {}", named.join(", "), live.alias));
    }
    Ok(done)
}

/// How long nginx may keep an answer of its `resolver`, a "no such name" included: the
/// `valid=` of the first `resolver` line in `nginx -T` output (`30s`, `1m`, `2` seconds),
/// else nginx's own 10 s for a failed lookup (Docker's DNS gives names a longer TTL, but
/// what matters here is how long nginx remembers that a name did not resolve).
pub fn cache_time(nginx_t: &str) -> Duration {
    let valid = nginx_t
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| l.starts_with("resolver "))
        .and_then(|l| {
            l.split(|c: char| c.is_whitespace() || c == ';')
                .find_map(|w| w.strip_prefix("valid="))
                .and_then(nginx_secs)
        });
    Duration::from_secs(valid.unwrap_or(10))
}

/// nginx's time syntax in whole seconds (`5`, `5s`, `2m`, `1h`); `None` for anything else.
fn nginx_secs(v: &str) -> Option<u64> {
    let (num, mult) = match v.char_indices().last()? {
        (i, 's') => (&v[..i], 1),
        (i, 'm') => (&v[..i], 60),
        (i, 'h') => (&v[..i], 3600),
        _ => (v, 1),
    };
    num.parse::<u64>().ok().map(|n| n * mult)
}

/// `docker network connect --alias ALIAS NETWORK CONTAINER`.
pub fn connect_cmd(live: &Live, container: &str) -> Cmd {
    docker::docker().args([
        "network",
        "connect",
        "--alias",
        &live.alias,
        &live.network,
        container,
    ])
}

/// Give `c` the alias (nothing to do when it is already on the network).
pub fn connect(live: &Live, c: &Container) -> Result<()> {
    if c.networks.iter().any(|(n, _)| *n == live.network) {
        return Ok(());
    }
    connect_cmd(live, &c.id)
        .run()
        .with_context(|| format!("giving {} the name {}", c.name, live.alias))?;
    Ok(())
}

/// The addresses the proxy container's resolver answers for `name` (none: NXDOMAIN).
pub fn resolve(proxy: &str, name: &str) -> Result<Vec<String>> {
    match docker::docker()
        .args(["exec", proxy, "getent", "ahostsv4", name])
        .read()
    {
        Ok(out) => Ok(ahosts(&out)),
        // getent's "not found".
        Err(berth_core::process::ProcessError::Failed { code: Some(2), .. }) => Ok(Vec::new()),
        Err(e) => Err(e).context("asking the proxy's resolver (getent in the proxy container)"),
    }
}

/// The distinct addresses in `getent ahostsv4` output.
fn ahosts(out: &str) -> Vec<String> {
    let mut ips: Vec<String> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Wait (at most `bound`) until the proxy's resolver answers `name` with every one of
/// `ips` (their addresses on the live network).
pub fn wait_resolves(proxy: &str, name: &str, ips: &[String], bound: Duration) -> Result<()> {
    let deadline = Instant::now() + bound;
    loop {
        let now = resolve(proxy, name)?;
        let missing: Vec<&String> = ips.iter().filter(|ip| !now.contains(ip)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the proxy's resolver did not answer {name} with {} within {} (it answers: {})",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                berth_core::human::limit(bound),
                if now.is_empty() {
                    "nothing".to_string()
                } else {
                    now.join(", ")
                }
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The address of `c` on `network` (after [`connect`], re-inspected).
pub fn address_on(c: &Container, network: &str) -> Option<String> {
    c.networks
        .iter()
        .find(|(n, ip)| n == network && !ip.is_empty())
        .map(|(_, ip)| ip.clone())
}

/// Give every container in `cs` the alias, then wait (at most `bound`) until the proxy
/// resolves it to all of them.
pub fn name_them(proxy: &str, live: &Live, cs: &[Container], bound: Duration) -> Result<()> {
    for c in cs {
        connect(live, c)?;
    }
    let ids: Vec<&str> = cs.iter().map(|c| c.id.as_str()).collect();
    let now = docker::inspect(&ids)?;
    let ips: Vec<String> = now
        .iter()
        .filter_map(|c| address_on(c, &live.network))
        .collect();
    if ips.len() != cs.len() {
        bail!(
            "{} container(s) have no address on {} after being connected",
            cs.len() - ips.len(),
            live.network
        );
    }
    wait_resolves(proxy, &live.alias, &ips, bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn network_names() {
        let cfg = json!({"networks": {"live": {"name": "shop_live"}, "other": {}}});
        assert_eq!(network_name(&cfg, "shop", "live").unwrap(), "shop_live");
        assert_eq!(network_name(&cfg, "shop", "other").unwrap(), "shop_other");
        let e = network_name(&cfg, "shop", "nope").unwrap_err().to_string();
        assert!(e.contains("no network \"nope\""), "{e}");
        assert_eq!(alias("{service}-live", "web"), "web-live");
    }

    fn proxy_on(net: &str) -> Container {
        let j = format!(
            r#"[{{"Id":"abc","Name":"/shop-proxy-1","Config":{{"Image":"nginx"}},"State":{{"Status":"running","Running":true}},
            "NetworkSettings":{{"Networks":{{"{net}":{{"IPAddress":"172.20.0.2"}}}}}}}}]"#
        );
        docker::parse_inspect(&j).unwrap().remove(0)
    }

    #[test]
    fn preflight_names_what_is_missing() {
        let conf = "http {\n  # resolver 1.1.1.1;\n  resolver 127.0.0.11 valid=1s;\n  set $backend web-live;\n  proxy_pass http://$backend:8080;\n}\n";
        let p = proxy_on("shop_live");
        check(&p, conf, "shop_live", &["web-live".into()]).unwrap();
        let e = check(&proxy_on("shop_default"), conf, "shop_live", &[]).unwrap_err();
        assert!(
            e.to_string().contains("not on the network shop_live"),
            "{e}"
        );
        let e = check(&p, conf, "shop_live", &["api-live".into()]).unwrap_err();
        assert!(e.to_string().contains("never names api-live"), "{e}");
        // A commented-out resolver does not count; nor does a longer name containing it.
        let e = check(&p, "# resolver x;\nset $b web-live2;", "shop_live", &[]).unwrap_err();
        assert!(e.to_string().contains("no `resolver`"), "{e}");
        let e = check(
            &p,
            "resolver x;\nset $b web-live2;",
            "shop_live",
            &["web-live".into()],
        );
        assert!(e.is_err());
    }

    #[test]
    fn resolver_cache_time() {
        let t = |c: &str| cache_time(c).as_secs();
        assert_eq!(t("  resolver 127.0.0.11 valid=1s ipv6=off;\n"), 1);
        assert_eq!(t("resolver 127.0.0.11 ipv6=off valid=2m;"), 120);
        assert_eq!(t("resolver 127.0.0.11 valid=30;"), 30);
        // Commented out, absent or unreadable: nginx's 10 s for a failed lookup.
        assert_eq!(
            t("# resolver 127.0.0.11 valid=1s;\nresolver 127.0.0.11;"),
            10
        );
        assert_eq!(t("http {}"), 10);
        assert_eq!(t("resolver 127.0.0.11 valid=soon;"), 10);
    }

    #[test]
    fn getent_output() {
        let out =
            "172.20.0.5      STREAM web-live\n172.20.0.5      DGRAM  \n172.20.0.6      STREAM \n";
        assert_eq!(ahosts(out), ["172.20.0.5", "172.20.0.6"]);
        assert!(ahosts("").is_empty());
        let live = Live {
            network: "shop_live".into(),
            alias: "web-live".into(),
        };
        assert_eq!(
            connect_cmd(&live, "shop-web-2").display(),
            "docker network connect --alias web-live shop_live shop-web-2"
        );
    }
}
