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
use std::time::Instant;

use anyhow::{Context as _, Result};
use berth_core::cli::{CommonArgs, Context};
use berth_core::process::{self, Runner};
use berth_core::stage::{self, Completed, Spec};
use berth_core::{compose, docker, fail, msg, record, time, ExitCode};

use crate::owner;
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct PreflightArgs {
    /// The services to deploy [default: every service whose image uses the tag variable]
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,

    /// The upstream file nginx includes, as the swap takes it: checked not to belong to
    /// another compose project [default: <project dir>/nginx/berth/upstream-{service}.conf]
    #[arg(long, env = "BERTH_UPSTREAM_FILE", value_name = "PATH")]
    pub upstream_file: Option<String>,

    #[command(flatten)]
    pub common: CommonArgs,

    /// A pre-deploy check to run last (e.g. -- ./config-test.sh); non-zero fails the deploy
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// The services whose images to get [default: every service whose image uses the tag variable]
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,

    #[command(flatten)]
    pub pull: crate::PullOpts,

    #[command(flatten)]
    pub common: CommonArgs,
}

/// The named services, or every one whose image uses the tag variable; each must exist
/// and have an image.
/// `berth-swap -p shop pull web` reads `pull` as the first service to swap; move the
/// word to the front (`berth-swap pull -p shop web`) so options may stand on either side,
/// as they may for every other command.
pub fn hoist(mut argv: Vec<OsString>) -> Vec<OsString> {
    use clap::Parser;
    let Ok(cli) = crate::Cli::try_parse_from(&argv) else {
        return argv;
    };
    let word = match (cli.command, cli.services.first()) {
        (None, Some(w)) if w == "preflight" || w == "pull" => w.clone(),
        _ => return argv,
    };
    if let Some(i) = argv
        .iter()
        .skip(1)
        .position(|a| a.as_os_str() == word.as_str())
    {
        let w = argv.remove(i + 1);
        argv.insert(1, w);
    }
    argv
}

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

/// Check that each service's image uses the tag; record the services and their images
/// in the stage's detail and in the document (preflight, on either engine).
pub fn record_images(
    ctx: &Context,
    services: &[String],
    cfg: &Value,
    doc: &mut berth_core::doc::Document,
    detail: &mut serde_json::Map<String, Value>,
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

/// `--check-args` of `preflight` and `pull`: their services and the common settings.
fn check_only(services: &[String], common: &CommonArgs) -> Result<ExitCode> {
    berth_core::cli::checked(|| {
        crate::check_services(services)?;
        common.check()?;
        Ok(())
    })
}

/// The preflight stage (on either engine).
pub const PREFLIGHT: Spec<'static> = Spec {
    name: "preflight",
    default_code: ExitCode::Preflight,
    acts_on_failure: false,
};

pub fn preflight(args: PreflightArgs) -> Result<ExitCode> {
    if args.common.engine == berth_core::swarm::Engine::Swarm {
        return crate::swarm::preflight(args);
    }
    if args.common.check_args {
        return check_only(&args.services, &args.common);
    }
    crate::check_services(&args.services)?;
    let input = stage::load(&args.common)?;
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
        // Another environment's pin file or nginx files are not ours to write.
        let pin = ctx.pin_file();
        let upstreams: Vec<_> = services
            .iter()
            .map(|s| crate::engine::upstream_path(ctx, args.upstream_file.as_deref(), s))
            .filter(|u| u.is_file())
            .collect();
        let mut owned = vec![(pin.as_path(), owner::Kind::Pin)];
        owned.extend(upstreams.iter().map(|u| (u.as_path(), owner::Kind::Nginx)));
        owner::check(ctx, &owned)?;
        record::update(detail, |p: &mut record::Preflight| {
            p.pin_file = Some(pin.display().to_string())
        });
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
            let shown = args
                .command
                .iter()
                .map(|a| process::quote(&a.to_string_lossy()))
                .collect::<Vec<_>>()
                .join(" ");
            record::update(detail, |p: &mut record::Preflight| {
                p.test_command = Some(shown.clone())
            });
            msg::info(format!("running the pre-deploy check: {shown}"));
            let t = Instant::now();
            // The check's own output goes to stderr: stdout carries the document.
            let status = std::process::Command::new(&args.command[0])
                .args(&args.command[1..])
                .current_dir(&ctx.project_dir)
                .env(&ctx.tag_var, &tag)
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
        }
        msg::info(format!(
            "preflight ok: docker {version}, compose {}, {} at {tag}",
            compose_version.trim(),
            services.join(", ")
        ));
        Ok(Completed::Ok)
    })
}

fn tempfile_in(dir: &std::path::Path) -> std::io::Result<()> {
    let p = dir.join(format!(".berth-write-test-{}", std::process::id()));
    std::fs::write(&p, b"")?;
    std::fs::remove_file(&p)
}

pub fn pull(args: PullArgs) -> Result<ExitCode> {
    if args.common.engine == berth_core::swarm::Engine::Swarm {
        return crate::swarm::pull(args);
    }
    if args.common.check_args {
        return check_only(&args.services, &args.common);
    }
    crate::check_services(&args.services)?;
    let input = stage::load(&args.common)?;
    let spec = Spec {
        name: "pull",
        default_code: ExitCode::Image,
        acts_on_failure: false,
    };
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
                crate::engine::ensure_image(&compose, runner, s, &image, &args.pull)?;
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
