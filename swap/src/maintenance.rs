//! `berth-swap maintenance on|off`: the proxy answers 503 with a small page and
//! `Retry-After` (health paths still reach the app). nginx: a snippet it includes,
//! switched by graceful reload. HAProxy (`--proxy haproxy`): a map its frontend reads
//! (`--haproxy-map`), replaced atomically through the runtime API, no reload, so no
//! client connection is closed. Idempotent; the window's start is kept in
//! `<state>/maintenance.json` so `off` records its length. The proxy's settings
//! (`--proxy`, `--proxy-service`, `--nginx`, `--haproxy-socket`) and `--lock-wait` are the
//! swap's global options. On Swarm (`--engine swarm`) it is the nginx path, in the swap's
//! layout there: nginx's task on this manager, the snippet in the bind-mounted directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use berth_core::cli::{parse_duration, CommonArgs, Context};
use berth_core::lock;
use berth_core::process::Runner;
use berth_core::stage::{self, Completed, Spec};
use berth_core::swarm::{self, Engine};
use berth_core::{fsutil, msg, record, time, ExitCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::engine::Options;
use crate::haproxy::Admin;
use crate::nginx::{self, Proxy, ProxyMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// The maintenance page's text when none is given.
pub const DEFAULT_MESSAGE: &str = "We are upgrading the service and will be back in a few minutes.";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// on: serve the maintenance page; off: serve the app again
    #[arg(value_enum)]
    pub state: OnOff,

    /// The text on the page [default: "We are upgrading the service and will be back in
    /// a few minutes."]. When maintenance is already on, the page stays as it is unless
    /// --message is given
    #[arg(long)]
    pub message: Option<String>,

    /// The Retry-After the 503 carries
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub retry_after: Duration,

    /// A path that still reaches the app (repeatable)
    #[arg(long = "except", value_name = "PATH", default_values = ["/healthz", "/readyz"])]
    pub except: Vec<String>,

    /// The snippet nginx includes in its server block
    /// [default: <project dir>/nginx/berth/server-maintenance.conf]
    #[arg(long, env = "BERTH_MAINTENANCE_FILE", value_name = "PATH")]
    pub maintenance_file: Option<PathBuf>,

    /// With --proxy haproxy: the map HAProxy's frontend reads (its path as haproxy.cfg
    /// names it, inside the proxy container; examples/haproxy/haproxy.cfg)
    #[arg(
        long,
        default_value = "/etc/haproxy/maintenance.map",
        value_name = "PATH"
    )]
    pub haproxy_map: String,
}

/// When the window opened, kept between `on` and `off`.
#[derive(Debug, Serialize, Deserialize)]
struct Window {
    since: String,
    message: String,
}

fn check(args: &Args, nginx: &Options, engine: Engine) -> Result<(), berth_core::Failure> {
    if nginx.proxy == ProxyMode::None {
        return Err(berth_core::Failure::usage(
            "maintenance mode needs a proxy: --proxy compose, nginx-dns or haproxy",
        ));
    }
    if engine == Engine::Swarm && nginx.proxy != ProxyMode::Compose {
        return Err(berth_core::Failure::usage(format!(
            "--engine swarm: maintenance mode goes through nginx as a service of the stack \
             (--proxy compose), not --proxy {}",
            clap::ValueEnum::to_possible_value(&nginx.proxy)
                .map(|v| v.get_name().to_string())
                .unwrap_or_default()
        )));
    }
    if nginx.proxy == ProxyMode::Haproxy && args.haproxy_map.trim().is_empty() {
        return Err(berth_core::Failure::usage(
            "--haproxy-map \"\": name the map as haproxy.cfg does (default \
             /etc/haproxy/maintenance.map)",
        ));
    }
    for p in &args.except {
        if !p.starts_with('/') {
            return Err(berth_core::Failure::usage(format!(
                "--except {p:?}: must start with /"
            )));
        }
    }
    Ok(())
}

/// `berth-swap maintenance on|off`, with the swap's global settings: how nginx is reached
/// (`nginx`: its proxy, proxy service and binary), the lock wait, the project.
pub fn run(
    args: Args,
    nginx: &Options,
    lock_wait: Duration,
    common: &CommonArgs,
) -> Result<ExitCode> {
    if common.check_args {
        return berth_core::cli::checked(|| {
            check(&args, nginx, common.engine)?;
            Ok(common.check()?)
        });
    }
    check(&args, nginx, common.engine)?;
    let input = stage::load(common)?;
    // Turning maintenance off must happen even when an earlier stage failed.
    let prior = input.doc.outcome();
    let spec = Spec::new("maintenance", ExitCode::Swap)
        .acting_on_failure(args.state == OnOff::Off)
        .locked(lock::DEPLOY, lock_wait);
    stage::run(spec, input, |ctx, _doc, detail| {
        let runner = Runner {
            dry_run: ctx.dry_run,
        };
        let switch = locate_switch(ctx, &args, nginx)?;
        record::update(detail, |m: &mut record::Maintenance| {
            m.file = Some(switch.place());
            m.map_file = switch.host_file();
        });
        if let Switch::Nginx { file, .. } = &switch {
            crate::owner::check(ctx, &[(file.as_path(), crate::owner::Kind::Nginx)])?;
        }
        let page = Page {
            ctx,
            switch: &switch,
            runner,
            state_file: ctx.state_dir.join("maintenance.json"),
        };
        match args.state {
            OnOff::On => page.on(&args, detail)?,
            OnOff::Off => page.off(detail)?,
        }
        match ExitCode::from_code(prior) {
            Some(code) if code != ExitCode::Success => Ok(Completed::Done(code)),
            _ => Ok(Completed::Ok),
        }
    })
}

/// Where the page is switched: HAProxy's map through its admin socket, or nginx's
/// snippet (on Swarm in the directory bind-mounted into the nginx task on this manager,
/// the swap's layout there). A proxy that is not running: exit 1 (but in a dry run).
fn locate_switch(ctx: &Context, args: &Args, nginx: &Options) -> Result<Switch> {
    if nginx.proxy == ProxyMode::Haproxy {
        let admin = Admin::locate(
            &ctx.compose(),
            &nginx.proxy_service,
            &nginx.haproxy_socket,
            "",
        )?;
        if admin.is_none() && !ctx.dry_run {
            return Err(berth_core::fail!(
                Preflight,
                "the HAProxy service {:?} is not running",
                nginx.proxy_service
            ));
        }
        let host_map = map_on_host(ctx, &nginx.proxy_service, &args.haproxy_map);
        if host_map.is_none() {
            msg::warn(format!(
                "HAProxy's map {} is not on a bind mount of the service {:?}: berth cannot keep its file in step, so a restart of HAProxy ends a maintenance window (mount the directory that holds it, as examples/haproxy does)",
                args.haproxy_map, nginx.proxy_service
            ));
        }
        return Ok(Switch::Haproxy {
            admin,
            map: args.haproxy_map.clone(),
            host_map,
        });
    }
    let file = match &args.maintenance_file {
        Some(f) if f.is_absolute() => f.clone(),
        Some(f) => ctx.project_dir.join(f),
        None => ctx
            .project_dir
            .join("nginx")
            .join("berth")
            .join("server-maintenance.conf"),
    };
    let proxy = if ctx.engine == Engine::Swarm {
        // nginx is a service of the stack, its task on this manager, berth's
        // directory bind-mounted into it: the swap's layout on Swarm.
        swarm::ensure_manager(&swarm::node_state()?)?;
        crate::swarm::swap::locate_proxy(ctx, nginx)?
    } else {
        let mut proxy = Proxy::new(
            nginx.proxy,
            ctx.compose(),
            &nginx.proxy_service,
            &nginx.nginx,
        );
        if !ctx.dry_run && !proxy.locate()? {
            return Err(berth_core::fail!(
                Preflight,
                "the nginx service {:?} is not running",
                nginx.proxy_service
            ));
        }
        proxy
    };
    Ok(Switch::Nginx { proxy, file })
}

/// Where the maintenance page is switched on and off.
enum Switch {
    /// A snippet nginx includes in its server block, applied by graceful reload.
    Nginx { proxy: Proxy, file: PathBuf },
    /// A map HAProxy's frontend reads (`on`, `page`, `retry`, and the paths that still
    /// reach the app with the value `except`), replaced through the runtime API. `admin`
    /// is `None` only in a dry run without a running HAProxy.
    /// `host_map`: the map's file on this host (the proxy's bind mount), rewritten after
    /// each change so that a restarted HAProxy, which reads it, keeps the state.
    Haproxy {
        admin: Option<Admin>,
        map: String,
        host_map: Option<HostMap>,
    },
}

/// HAProxy's map file as this host sees it through the proxy's bind mount.
#[derive(Debug, Clone, PartialEq)]
struct HostMap {
    path: PathBuf,
    /// The mount is the file itself: written in place (a rename would leave the
    /// container the old file); else the directory: replaced atomically.
    file_mount: bool,
}

/// Where `map` (a path in the proxy service's container) is on this host: the service's
/// bind mount that holds it, from `docker compose config`. `None`: not on a bind mount
/// (in the image or a volume).
fn map_on_host(ctx: &Context, service: &str, map: &str) -> Option<HostMap> {
    let cfg = ctx.compose().config().ok()?;
    host_path(&cfg["services"][service]["volumes"], map)
}

fn host_path(volumes: &Value, map: &str) -> Option<HostMap> {
    volumes.as_array()?.iter().rev().find_map(|v| {
        if v["type"] != "bind" {
            return None;
        }
        let (source, target) = (v["source"].as_str()?, v["target"].as_str()?);
        let rest = Path::new(map).strip_prefix(target).ok()?;
        let file_mount = rest.as_os_str().is_empty();
        let path = if file_mount {
            PathBuf::from(source)
        } else {
            Path::new(source).join(rest)
        };
        Some(HostMap { path, file_mount })
    })
}

/// The map file's text for `entries` (HAProxy reads `KEY VALUE` per line at start; the
/// value is the rest of the line, so no line breaks in it).
fn map_file_text(entries: &[(String, String)], project: &str) -> String {
    let state = if entries.is_empty() { "off" } else { "on" };
    let mut text = format!(
        "# berth-swap maintenance {state} (project {project}). HAProxy reads this file when it \
         starts; berth changes the live map through the runtime API and then this file.\n"
    );
    for (k, v) in entries {
        let v: String = v
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        text.push_str(&format!("{k} {v}\n"));
    }
    text
}

impl HostMap {
    fn write(&self, text: &str) -> Result<()> {
        if self.file_mount {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&self.path)?;
            std::io::Write::write_all(&mut f, text.as_bytes())?;
            f.sync_all()?;
            return Ok(());
        }
        berth_core::fsutil::write_atomic(&self.path, text.as_bytes(), 0o644)
    }
}

impl Switch {
    /// What the record's `file` names: the snippet's path, or the HAProxy map.
    fn place(&self) -> String {
        match self {
            Switch::Nginx { file, .. } => file.display().to_string(),
            Switch::Haproxy { map, .. } => map.clone(),
        }
    }

    /// HAProxy's map file on this host, when berth keeps it in step.
    fn host_file(&self) -> Option<String> {
        match self {
            Switch::Haproxy {
                host_map: Some(h), ..
            } => Some(h.path.display().to_string()),
            _ => None,
        }
    }

    fn is_on(&self) -> Result<bool> {
        match self {
            Switch::Nginx { file, .. } => Ok(nginx::read_opt(file)?.is_some()),
            Switch::Haproxy { admin: None, .. } => Ok(false),
            Switch::Haproxy {
                admin: Some(a),
                map,
                ..
            } => Ok(a.map_entries(map)?.iter().any(|(k, _)| k == "on")),
        }
    }

    /// Serve the page (`Some`) or the app (`None`); done when the proxy answers so.
    fn set(
        &self,
        runner: Runner,
        ctx: &Context,
        page: Option<(&str, Duration, &[String])>,
    ) -> Result<()> {
        match self {
            Switch::Nginx { proxy, file } => {
                let text = page.map(|(message, retry_after, except)| {
                    crate::owner::marked(
                        &nginx::render_maintenance(message, retry_after, except),
                        &ctx.project,
                    )
                });
                nginx::apply(proxy, runner, &[(file.clone(), text)])
            }
            Switch::Haproxy {
                admin,
                map,
                host_map,
            } => {
                let entries = page
                    .map(|(message, retry_after, except)| {
                        haproxy_entries(message, retry_after, except)
                    })
                    .unwrap_or_default();
                let Some(a) = admin.as_ref().filter(|_| !runner.dry_run) else {
                    msg::info(format!(
                        "would replace HAProxy's map {map} by {} entries",
                        entries.len()
                    ));
                    return Ok(());
                };
                a.replace_map(map, &entries).map_err(|e| {
                    berth_core::fail!(Swap, "switching HAProxy's maintenance map: {e:#}")
                })?;
                // The live map is what counts; its file only carries it across a restart.
                if let Some(h) = host_map {
                    if let Err(e) = h.write(&map_file_text(&entries, &ctx.project)) {
                        msg::warn(format!(
                            "HAProxy serves the new state, but its map file {} was not updated ({e:#}): a restart of HAProxy would go back to what it holds",
                            h.path.display()
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    fn who(&self) -> &'static str {
        match self {
            Switch::Nginx { .. } => "nginx",
            Switch::Haproxy { .. } => "HAProxy",
        }
    }
}

/// The HAProxy map of maintenance mode: the page, its Retry-After, the paths that still
/// reach the app, and last the switch itself.
fn haproxy_entries(
    message: &str,
    retry_after: Duration,
    except: &[String],
) -> Vec<(String, String)> {
    let mut e = vec![
        ("page".to_string(), nginx::maintenance_page(message)),
        (
            "retry".to_string(),
            retry_after.as_secs().max(1).to_string(),
        ),
    ];
    e.extend(except.iter().map(|p| (p.clone(), "except".to_string())));
    e.push(("on".to_string(), "1".to_string()));
    e
}

/// The maintenance page of one project: the proxy's switch, and the window's start kept
/// between `on` and `off`.
struct Page<'a> {
    ctx: &'a Context,
    switch: &'a Switch,
    runner: Runner,
    state_file: PathBuf,
}

impl Page<'_> {
    fn on(&self, args: &Args, detail: &mut Map<String, Value>) -> Result<()> {
        let ctx = self.ctx;
        let was_on = self.switch.is_on()?;
        // Already on: keep the page (and the proxy) as they are unless asked otherwise.
        if !was_on || args.message.is_some() {
            let message = args.message.as_deref().unwrap_or(DEFAULT_MESSAGE);
            self.switch.set(
                self.runner,
                ctx,
                Some((message, args.retry_after, &args.except)),
            )?;
        }
        let since = match read_window(&self.state_file) {
            Some(w) if was_on => w.since,
            _ => {
                let w = Window {
                    since: time::now_rfc3339(),
                    message: args
                        .message
                        .clone()
                        .unwrap_or_else(|| DEFAULT_MESSAGE.to_string()),
                };
                if !ctx.dry_run {
                    berth_core::ledger::ensure_state_dir(&ctx.state_dir)?;
                    fsutil::write_atomic(
                        &self.state_file,
                        serde_json::to_string(&w)?.as_bytes(),
                        0o600,
                    )?;
                }
                w.since
            }
        };
        msg::info(if was_on {
            format!("maintenance mode was already on (since {since})")
        } else {
            format!("maintenance mode on: {} answers 503", self.switch.who())
        });
        record::update(detail, |m: &mut record::Maintenance| {
            m.state = Some("on".into());
            m.since = Some(Some(since));
            m.already = Some(was_on);
        });
        Ok(())
    }

    fn off(&self, detail: &mut Map<String, Value>) -> Result<()> {
        let was_on = self.switch.is_on()?;
        if was_on {
            self.switch.set(self.runner, self.ctx, None)?;
        }
        let window = read_window(&self.state_file);
        let window_ms = window
            .as_ref()
            .and_then(|w| time::parse(&w.since))
            .map(|t| {
                let d = time::now().duration_since(t);
                d.as_millis().max(0) as u64
            });
        if !self.ctx.dry_run {
            let _ = std::fs::remove_file(&self.state_file);
        }
        match (was_on, window_ms) {
            (false, _) => msg::info("maintenance mode was already off"),
            (true, Some(ms)) => msg::info(format!(
                "maintenance mode off after {:.1}s",
                ms as f64 / 1000.0
            )),
            (true, None) => msg::info("maintenance mode off"),
        }
        record::update(detail, |m: &mut record::Maintenance| {
            m.state = Some("off".into());
            m.already = Some(!was_on);
            m.since = Some(window.map(|w| w.since));
            m.window_ms = Some(window_ms);
        });
        Ok(())
    }
}

fn read_window(p: &std::path::Path) -> Option<Window> {
    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_maps_file_on_this_host_through_a_bind_mount() {
        let vols = serde_json::json!([
            {"type": "volume", "source": "run", "target": "/run/haproxy"},
            {"type": "bind", "source": "/srv/shop/haproxy", "target": "/etc/haproxy"},
        ]);
        let dir = host_path(&vols, "/etc/haproxy/maintenance.map").unwrap();
        assert_eq!(dir.path, Path::new("/srv/shop/haproxy/maintenance.map"));
        assert!(!dir.file_mount);
        let file = serde_json::json!([
            {"type": "bind", "source": "/srv/m.map", "target": "/etc/haproxy/maintenance.map"},
        ]);
        let f = host_path(&file, "/etc/haproxy/maintenance.map").unwrap();
        assert_eq!(
            (f.path.as_path(), f.file_mount),
            (Path::new("/srv/m.map"), true)
        );
        // A volume, a mount elsewhere, no volumes: no file berth can keep in step.
        assert_eq!(host_path(&vols, "/run/haproxy/maintenance.map"), None);
        assert_eq!(host_path(&vols, "/etc/haproxyx/m.map"), None);
        assert_eq!(
            host_path(&Value::Null, "/etc/haproxy/maintenance.map"),
            None
        );
    }

    #[test]
    fn the_map_file_holds_one_entry_per_line() {
        let on = map_file_text(
            &haproxy_entries("Back\nsoon", Duration::from_secs(30), &["/healthz".into()]),
            "shop",
        );
        let lines: Vec<&str> = on.lines().collect();
        assert!(
            lines[0].starts_with("# berth-swap maintenance on (project shop)."),
            "{on}"
        );
        assert!(lines[1].starts_with("page <!"), "{on}");
        assert!(
            !lines[1].contains('\n') && lines[1].contains("Back soon"),
            "{on}"
        );
        assert_eq!(&lines[2..], ["retry 30", "/healthz except", "on 1"]);
        let off = map_file_text(&[], "shop");
        assert_eq!(off.lines().count(), 1, "{off}");
        assert!(off.starts_with("# berth-swap maintenance off"), "{off}");
    }

    #[test]
    fn window_length_is_measured_from_since() {
        let since = berth_core::time::parse("2026-01-01T00:00:00Z").unwrap();
        let later = berth_core::time::parse("2026-01-01T00:01:30Z").unwrap();
        assert_eq!(later.duration_since(since).as_millis(), 90_000);
    }
}
