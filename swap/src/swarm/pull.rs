//! `berth-swap pull --engine swarm`: every service's image at the tag is in its registry.
//!
//! On Swarm each node pulls the image itself when a task lands there, so an image that
//! is only in the manager's local store is not enough: the manager pulls every image by
//! tag from its registry (`docker pull`, bounded by `--pull-timeout`), whether or not it
//! has it, and records its ID and repository digest. A tag the registry does not have:
//! exit 2, before anything changes. (The swap will deploy with `--with-registry-auth`, so
//! the workers pull with the manager's login.)

use std::time::{Duration, Instant};

use anyhow::Result;
use berth_core::cli::{CommonArgs, Context};
use berth_core::process::Runner;
use berth_core::stage::{self, Completed, Spec};
use berth_core::{compose, docker, fail, msg, time, ExitCode};
use serde_json::{json, Value};

use crate::prepare::PullArgs;

const PULL: Spec<'static> = Spec::new("pull", ExitCode::Image);

pub fn pull(args: PullArgs, pull_timeout: Duration, common: &CommonArgs) -> Result<ExitCode> {
    if common.check_args {
        return super::check_only(&args.services, common);
    }
    crate::prepare::check_services(&args.services)?;
    let input = super::load(common)?;
    stage::run(PULL, input, |ctx, doc, detail| {
        ctx.require_tag()?;
        let (_, cfg, services) = super::on_manager(ctx, &args.services, detail)?;
        let pulled = services
            .iter()
            .map(|s| {
                let image = compose::service_image_in(&cfg, s)?;
                doc.set_service_image(s, &image);
                pull_one(ctx, s, &image, pull_timeout)
            })
            .collect::<Result<Vec<Value>>>()?;
        detail.insert("services".into(), Value::Array(pulled));
        if ctx.dry_run {
            return Ok(Completed::Skipped("dry run: nothing pulled".into()));
        }
        Ok(Completed::Ok)
    })
}

/// `docker pull` one service's image by tag on the manager: what it recorded, or exit 2.
fn pull_one(ctx: &Context, svc: &str, image: &str, pull_timeout: Duration) -> Result<Value> {
    let t = Instant::now();
    msg::info(format!("{svc}: pulling {image} from its registry"));
    let pull = docker::docker()
        .args(["pull", "--quiet", image])
        .timeout(pull_timeout);
    Runner {
        dry_run: ctx.dry_run,
    }
    .change(&pull)
    .map_err(|e| {
        let why = berth_core::process::last_lines(e.stderr(), 1);
        let why = if why.is_empty() { e.to_string() } else { why };
        fail!(
            Image,
            "{svc}: image {image} cannot be pulled from its registry, so no Swarm node could run it: {why}"
        )
    })?;
    let (id, digest) = if ctx.dry_run {
        (String::new(), String::new())
    } else {
        identity(image)?
    };
    Ok(json!({
        "name": svc, "image": image, "image_id": id, "digest": digest, "pulled": true,
        "duration_ms": time::millis(t.elapsed()),
    }))
}

/// The image's ID and its digest in the registry it came from (`REPO@sha256:...`).
fn identity(image: &str) -> Result<(String, String)> {
    let out = docker::docker()
        .args([
            "image",
            "inspect",
            "--format",
            "{{.Id}} {{range .RepoDigests}}{{.}} {{end}}",
            image,
        ])
        .read()
        .map_err(|e| {
            fail!(
                Image,
                "{image}: pulled, but docker image inspect failed: {e}"
            )
        })?;
    let mut words = out.split_whitespace();
    let id = words.next().unwrap_or_default().to_string();
    let repo = image.rsplit_once(':').map_or(image, |(r, _)| r);
    let digest = words
        .find(|d| d.starts_with(&format!("{repo}@")))
        .unwrap_or_default()
        .to_string();
    Ok((id, digest))
}
