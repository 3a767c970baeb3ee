//! The first two stages of a deploy, before anything changes:
//!
//! - `berth-swap preflight [SERVICE...] [-- CMD ARGS...]`: docker answers, the compose
//!   configuration is valid with the new tag, every service to deploy exists and names its
//!   image through the tag variable, the state directory is writable; then the optional
//!   pre-deploy check CMD (e.g. the project's config test) must exit 0. Exit 1 otherwise.
//! - `berth-swap pull [SERVICE...]`: every service's image at the new tag is here or is
//!   pulled now, by tag; exit 2 when one cannot be had, before the backup and the
//!   migration run. Records each image's ID.
//!
//! Without services, both take every service whose image uses the tag variable.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use berth_core::cli::{CommonArgs, Context};
use berth_core::process::{self, Runner};
use berth_core::stage::{self, Completed, Spec};
use berth_core::{compose, docker, fail, msg, record, time, ExitCode, Failure};

use crate::{owner, upstream};
use berth_core::doc::Document;
use serde_json::{Map, Value};

#[derive(Debug, clap::Args)]
pub struct PreflightArgs {
    /// The services to deploy [default: every service whose image uses the tag variable]
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,

    /// A pre-deploy check to run last (e.g. -- ./config-test.sh); non-zero fails the deploy
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// The services whose images to get [default: every service whose image uses the tag variable]
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,
}

/// The named services, or every one whose image uses the tag variable; each must exist
/// and have an image.
pub fn resolve_services(ctx: &Context, named: &[String], cfg: &Value) -> Result<Vec<String>> {
    let services = if named.is_empty() {
        let probe = ctx.compose().services_using_var(&ctx.tag_var)?;
        if probe.is_empty() {
            return Err(fail!(
                Preflight,
                "no service's image uses ${{{}}}: name the services, or write image: NAME:${{{}}} in the compose file",
                ctx.tag_var,
                ctx.tag_var
            ));
        }
        probe
    } else {
        named.to_vec()
    };
    for s in &services {
        compose::service_image_in(cfg, s).map_err(|e| fail!(Preflight, "{e:#}"))?;
    }
    Ok(services)
}

/// Check service names: known shape, no repeats.
pub fn check_services(services: &[String]) -> Result<(), Failure> {
    for (i, s) in services.iter().enumerate() {
        let ok = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !ok {
            return Err(Failure::usage(format!("SERVICE {s:?}: not a service name")));
        }
        if services[..i].contains(s) {
            return Err(Failure::usage(format!("SERVICE {s} named twice")));
        }
    }
    Ok(())
}

/// `--check-args` of `preflight` and `pull`: their services and the common settings.
fn check_only(services: &[String], common: &CommonArgs) -> Result<ExitCode> {
    berth_core::cli::checked(|| {
        check_services(services)?;
        common.check()?;
        Ok(())
    })
}

/// The preflight stage (on either engine).
pub const PREFLIGHT: Spec<'static> = Spec::new("preflight", ExitCode::Preflight);

/// `berth-swap preflight`; `upstream_file` is the swap's (global) template, so that the
/// files checked are the ones the swap will write.
pub fn preflight(
    args: PreflightArgs,
    upstream_file: Option<&str>,
    common: &CommonArgs,
) -> Result<ExitCode> {
    if common.engine == berth_core::swarm::Engine::Swarm {
        return crate::swarm::preflight(args, upstream_file, common);
    }
    if common.check_args {
        return check_only(&args.services, common);
    }
    check_services(&args.services)?;
    let input = stage::load(common)?;
    stage::run(PREFLIGHT, input, |ctx, doc, detail| {
        let tag = ctx.require_tag()?.to_string();
        let version = docker::ensure_reachable()?;
        record::update(detail, |p: &mut record::Preflight| {
            p.docker_version = Some(version.clone())
        });
        let compose_version = docker::docker()
            .args(["compose", "version", "--short"])
            .read()
            .map_err(|e| fail!(Preflight, "docker compose v2 is not available: {e}"))?;
        record::update(detail, |p: &mut record::Preflight| {
            p.compose_version = Some(compose_version.trim().to_string())
        });
        let cfg = ctx
            .compose()
            .config()
            .map_err(|e| fail!(Preflight, "{e:#}"))?;
        let services = resolve_services(ctx, &args.services, &cfg)?;
        record_images(ctx, &services, &cfg, doc, detail)?;
        check_ports(&cfg, &services)?;
        check_owned(ctx, detail, &services, upstream_file)?;
        if !ctx.dry_run {
            berth_core::ledger::ensure_state_dir(&ctx.state_dir)
                .and_then(|_| Ok(tempfile_in(&ctx.state_dir)?))
                .with_context(|| {
                    format!(
                        "the state directory {} is not writable",
                        ctx.state_dir.display()
                    )
                })
                .map_err(|e| fail!(Preflight, "{e:#}"))?;
        }
        if !args.command.is_empty() {
            run_check(ctx, detail, &args.command, &tag)?;
        }
        msg::info(format!(
            "preflight ok: docker {version}, compose {}, {} at {tag}",
            compose_version.trim(),
            services.join(", ")
        ));
        Ok(Completed::Ok)
    })
}

/// Check that each service's image uses the tag; record the services and their images
/// in the stage's detail and in the document (preflight, on either engine).
pub fn record_images(
    ctx: &Context,
    services: &[String],
    cfg: &Value,
    doc: &mut Document,
    detail: &mut Map<String, Value>,
) -> Result<()> {
    let tag = ctx.require_tag()?;
    let mut images = Vec::new();
    for s in services {
        let image = compose::service_image_in(cfg, s)?;
        if !image.contains(tag) {
            return Err(fail!(
                Preflight,
                "service {s}'s image {image} does not use the tag {tag}: write image: NAME:${{{}}} in the compose file",
                ctx.tag_var
            ));
        }
        images.push(record::NamedImage {
            name: s.clone(),
            image: image.clone(),
            ..Default::default()
        });
        doc.set_service_image(s, &image);
    }
    record::update(detail, |p: &mut record::Preflight| {
        p.services = Some(services.to_vec());
        p.images = Some(images);
    });
    Ok(())
}

/// A swapped service (or worker) that publishes a fixed host port cannot run twice: its
/// new container would not start beside the old one ("port is already allocated"). Exit
/// 1 naming the service, the port and what to do instead (preflight, and a swap before
/// anything changes).
pub fn check_ports(cfg: &Value, services: &[String]) -> Result<()> {
    for s in services {
        if let Some(port) = published_port(cfg, s) {
            return Err(fail!(
                Preflight,
                "service {s} publishes host port {port}, so a second container of it cannot \
                 start beside the running one during a swap: publish the port on the proxy \
                 service instead and give {s} only `expose:` (or no ports)"
            ));
        }
    }
    Ok(())
}

/// The first fixed host port of `svc` in compose's normalised configuration
/// (`ports[].published`), as `[HOST_IP:]PUBLISHED->TARGET`; an ephemeral one (none or
/// 0) can run twice.
fn published_port(cfg: &Value, svc: &str) -> Option<String> {
    let ports = cfg.pointer(&format!("/services/{svc}/ports"))?.as_array()?;
    ports.iter().find_map(|p| {
        let published = match p.get("published")? {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return None,
        };
        if published.is_empty() || published == "0" {
            return None;
        }
        let ip = match p.get("host_ip").and_then(Value::as_str) {
            Some(h) if !h.is_empty() => format!("{h}:"),
            _ => String::new(),
        };
        let target = p.get("target").map(Value::to_string).unwrap_or_default();
        Some(format!("{ip}{published}->{target}"))
    })
}

/// Another environment's pin file or nginx files are not ours to write.
fn check_owned(
    ctx: &Context,
    detail: &mut Map<String, Value>,
    services: &[String],
    upstream_file: Option<&str>,
) -> Result<()> {
    let pin = ctx.pin_file();
    let upstreams: Vec<_> = services
        .iter()
        .map(|s| upstream::path(ctx, upstream_file, s))
        .filter(|u| u.is_file())
        .collect();
    let mut owned = vec![(pin.as_path(), owner::Kind::Pin)];
    owned.extend(upstreams.iter().map(|u| (u.as_path(), owner::Kind::Nginx)));
    owner::check(ctx, &owned)?;
    record::update(detail, |p: &mut record::Preflight| {
        p.pin_file = Some(pin.display().to_string())
    });
    Ok(())
}

/// The pre-deploy check: it must exit 0. Its own output goes to stderr: stdout carries
/// the document.
pub(crate) fn run_check(
    ctx: &Context,
    detail: &mut Map<String, Value>,
    command: &[OsString],
    tag: &str,
) -> Result<()> {
    let shown = command
        .iter()
        .map(|a| process::quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ");
    record::update(detail, |p: &mut record::Preflight| {
        p.test_command = Some(shown.clone())
    });
    msg::info(format!("running the pre-deploy check: {shown}"));
    let t = Instant::now();
    let status = std::process::Command::new(&command[0])
        .args(&command[1..])
        .current_dir(&ctx.project_dir)
        .env(&ctx.tag_var, tag)
        .stdin(std::process::Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| fail!(Preflight, "could not run the pre-deploy check {shown}: {e}"))?;
    record::update(detail, |p: &mut record::Preflight| {
        p.test_ms = Some(time::millis(t.elapsed()));
        p.test_exit = Some(status.code());
    });
    if !status.success() {
        return Err(fail!(
            Preflight,
            "the pre-deploy check {shown} failed ({status}); nothing was changed"
        ));
    }
    Ok(())
}

fn tempfile_in(dir: &std::path::Path) -> std::io::Result<()> {
    let p = dir.join(format!(".berth-write-test-{}", std::process::id()));
    std::fs::write(&p, b"")?;
    std::fs::remove_file(&p)
}

/// `berth-swap pull`, each pull bounded by the (global) `--pull-timeout`.
pub fn pull(args: PullArgs, pull_timeout: Duration, common: &CommonArgs) -> Result<ExitCode> {
    if common.engine == berth_core::swarm::Engine::Swarm {
        return crate::swarm::pull(args, pull_timeout, common);
    }
    if common.check_args {
        return check_only(&args.services, common);
    }
    check_services(&args.services)?;
    let input = stage::load(common)?;
    let spec = Spec::new("pull", ExitCode::Image);
    stage::run(spec, input, |ctx, doc, detail| {
        let tag = ctx.require_tag()?.to_string();
        docker::ensure_reachable()?;
        let compose = ctx.compose_at(&tag);
        let cfg = compose.config().map_err(|e| fail!(Preflight, "{e:#}"))?;
        let services = resolve_services(ctx, &args.services, &cfg)?;
        let runner = Runner {
            dry_run: ctx.dry_run,
        };
        let mut out = Vec::new();
        for s in &services {
            let image = compose::service_image_in(&cfg, s)?;
            let t = Instant::now();
            let (id, pulled) =
                crate::engine::ensure_image(&compose, runner, s, &image, pull_timeout)?;
            doc.set_service_image(s, &image);
            out.push(record::Pulled {
                name: s.clone(),
                image: image.clone(),
                image_id: id,
                pulled,
                duration_ms: time::millis(t.elapsed()),
                ..Default::default()
            });
            msg::info(format!(
                "{s}: {image} {}",
                if pulled { "pulled" } else { "already here" }
            ));
        }
        record::put(
            detail,
            &record::Pull {
                services: out,
                ..Default::default()
            },
        );
        if ctx.dry_run {
            return Ok(Completed::Skipped("dry run: nothing pulled".into()));
        }
        Ok(Completed::Ok)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fixed_host_ports_are_found_ephemeral_ones_are_not() {
        let cfg = json!({"services": {
            "web": {"ports": [{"mode": "ingress", "target": 8080, "published": "8000", "protocol": "tcp"}]},
            "api": {"ports": [{"target": 9000, "published": "9000", "host_ip": "127.0.0.1"}]},
            "eph": {"ports": [{"target": 8080, "protocol": "tcp"}, {"target": 8081, "published": "0"}]},
            "none": {"expose": ["8080"]},
        }});
        assert_eq!(published_port(&cfg, "web").as_deref(), Some("8000->8080"));
        assert_eq!(
            published_port(&cfg, "api").as_deref(),
            Some("127.0.0.1:9000->9000")
        );
        assert_eq!(published_port(&cfg, "eph"), None);
        assert_eq!(published_port(&cfg, "none"), None);
        let all = ["none".to_string(), "web".to_string()];
        let e = check_ports(&cfg, &all).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("service web publishes host port 8000->8080"),
            "{e}"
        );
        assert!(check_ports(&cfg, &["eph".into(), "none".into()]).is_ok());
    }
}
