//! `docker compose` for one project: the argument vector every stage builds the same way,
//! the resolved configuration, and the containers of a service.
//!
//! The tag convention: the compose file names its images with a variable,
//! `image: registry.example.com/shop-web:${BERTH_TAG}`; berth passes the tag through that
//! variable in the child's environment (which compose prefers over `.env`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::docker::{self, Container};
use crate::process::Cmd;

pub const LABEL_PROJECT: &str = "com.docker.compose.project";
pub const LABEL_SERVICE: &str = "com.docker.compose.service";
pub const LABEL_ONEOFF: &str = "com.docker.compose.oneoff";

#[derive(Debug, Clone)]
pub struct Compose {
    pub project: String,
    pub project_dir: PathBuf,
    pub files: Vec<PathBuf>,
    /// `--env-file`: the file compose reads instead of `<project dir>/.env`.
    pub env_file: Option<PathBuf>,
    pub env: Vec<(String, String)>,
}

/// How long compose may take to print the configuration that names the project.
pub const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Compose {
    pub fn new(project: &str, project_dir: &Path, files: &[PathBuf]) -> Compose {
        Compose {
            project: project.to_string(),
            project_dir: project_dir.to_path_buf(),
            files: files.to_vec(),
            env_file: None,
            env: Vec::new(),
        }
    }

    /// Pass `--env-file FILE` to every command (compose reads it instead of `.env`).
    pub fn with_env_file(mut self, file: Option<&Path>) -> Compose {
        self.env_file = file.map(Path::to_path_buf);
        self
    }

    /// Set a variable for compose's interpolation (e.g. the tag variable).
    pub fn with_env(mut self, key: &str, value: &str) -> Compose {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// `docker compose --project-directory DIR -p NAME [-f FILE]... [--env-file F] ARGS...`
    pub fn cmd<I, S>(&self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.base_cmd(Some(&self.project)).args(args)
    }

    /// The command without its arguments; without `-p` compose resolves the name itself.
    /// Run in the project directory, so that `COMPOSE_FILE` paths mean what they mean to
    /// a plain `docker compose` there.
    fn base_cmd(&self, project: Option<&str>) -> Cmd {
        let mut c = docker::docker()
            .arg("compose")
            .arg("--project-directory")
            .arg(&self.project_dir);
        if let Some(p) = project {
            c = c.args(["-p", p]);
        }
        for f in &self.files {
            c = c.arg("-f").arg(f);
        }
        if let Some(e) = &self.env_file {
            c = c.arg("--env-file").arg(e);
        }
        for (k, v) in &self.env {
            c = c.env(k, v);
        }
        c.dir(&self.project_dir)
    }

    /// The project name exactly as compose resolves it without `-p` (`COMPOSE_PROJECT_NAME`
    /// from the environment, then the env file; the file's top-level `name:`; the
    /// directory), asked once, bounded by [`RESOLVE_TIMEOUT`]. The configuration it
    /// printed is kept as this project's (see [`Compose::config`]).
    pub fn resolved_name(&self) -> Result<String> {
        let out = self
            .base_cmd(None)
            .args(["config", "--format", "json"])
            .timeout(RESOLVE_TIMEOUT)
            .read()?;
        let cfg: Value =
            serde_json::from_str(&out).context("docker compose config printed no JSON")?;
        let name = cfg
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .context("docker compose config printed no project name")?;
        let named = Compose {
            project: name.clone(),
            ..self.clone()
        };
        remember(named.config_key(), cfg);
        Ok(name)
    }

    /// The resolved configuration (`docker compose config --format json`), asked of
    /// compose once per process for the same project, files and environment. Fails with
    /// compose's own message when the file is invalid or a variable is missing.
    pub fn config(&self) -> Result<Value> {
        let key = self.config_key();
        if let Some(cfg) = remembered(&key) {
            return Ok(cfg);
        }
        let out = self
            .config_cmd()
            .read()
            .context("compose configuration is invalid")?;
        let cfg: Value =
            serde_json::from_str(&out).context("docker compose config printed no JSON")?;
        remember(key, cfg.clone());
        Ok(cfg)
    }

    fn config_cmd(&self) -> Cmd {
        self.cmd(["config", "--format", "json"])
    }

    /// What makes two `config` calls the same: the argument vector and the environment.
    fn config_key(&self) -> String {
        let cmd = self.config_cmd();
        format!("{:?} {:?}", cmd.arg_list(), self.env)
    }

    /// The names of the services in the configuration.
    pub fn services(&self) -> Result<Vec<String>> {
        let cfg = self.config()?;
        Ok(cfg
            .get("services")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default())
    }

    /// The services whose image uses the variable `var` (e.g. `BERTH_TAG`): the ones a
    /// deploy of a new tag replaces when none are named.
    pub fn services_using_var(&self, var: &str) -> Result<Vec<String>> {
        const PROBE: &str = "berth-tag-probe-7f3a";
        let cfg = self.clone().with_env(var, PROBE).config()?;
        Ok(services_with_image_containing(&cfg, PROBE))
    }

    /// The service's containers (running or not, one-off runs excluded), oldest first.
    pub fn containers(&self, service: &str) -> Result<Vec<Container>> {
        let ids = docker::containers_with_labels(
            &[(LABEL_PROJECT, &self.project), (LABEL_SERVICE, service)],
            true,
        )?;
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut cs: Vec<Container> = docker::inspect(&refs)?
            .into_iter()
            .filter(|c| c.label(LABEL_ONEOFF) != Some("True"))
            .collect();
        cs.sort_by(|a, b| a.created.cmp(&b.created));
        Ok(cs)
    }
}

/// The configurations already read in this process (compose files and `.env` do not
/// change under a stage before it reads them; the tag is in the key, as an environment
/// variable).
fn configs() -> &'static Mutex<HashMap<String, Value>> {
    static CONFIGS: OnceLock<Mutex<HashMap<String, Value>>> = OnceLock::new();
    CONFIGS.get_or_init(Default::default)
}

fn remembered(key: &str) -> Option<Value> {
    configs().lock().ok()?.get(key).cloned()
}

fn remember(key: String, cfg: Value) {
    if let Ok(mut m) = configs().lock() {
        m.insert(key, cfg);
    }
}

/// `services.<name>.image` from a resolved configuration.
pub fn service_image_in(cfg: &Value, service: &str) -> Result<String> {
    let svc = cfg
        .pointer(&format!("/services/{service}"))
        .with_context(|| format!("no service {service:?} in the compose configuration"))?;
    svc.get("image")
        .and_then(Value::as_str)
        .map(str::to_string)
        .with_context(|| {
            format!("service {service:?} has no image: (berth deploys prebuilt images)")
        })
}

/// The services of a resolved configuration whose image contains `needle`, sorted.
pub fn services_with_image_containing(cfg: &Value, needle: &str) -> Vec<String> {
    let mut v: Vec<String> = cfg
        .get("services")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(_, s)| {
                    s.get("image")
                        .and_then(Value::as_str)
                        .is_some_and(|i| i.contains(needle))
                })
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_vector() {
        let c = Compose::new(
            "shop",
            Path::new("/srv/shop"),
            &[PathBuf::from("/srv/shop/prod.yml")],
        )
        .with_env("BERTH_TAG", "abc")
        .with_env("BERTH_TAG", "def");
        let cmd = c.cmd(["up", "-d"]);
        assert_eq!(
            cmd.display(),
            "docker compose --project-directory /srv/shop -p shop -f /srv/shop/prod.yml up -d"
        );
        assert_eq!(c.env, vec![("BERTH_TAG".to_string(), "def".to_string())]);
    }

    #[test]
    fn a_config_is_kept_per_project_files_and_environment() {
        let c = Compose::new("shop", Path::new("/srv/shop"), &[]);
        let at = |t: &str| c.clone().with_env("BERTH_TAG", t).config_key();
        assert_eq!(at("v1"), at("v1"));
        assert_ne!(at("v1"), at("v2"));
        let other = Compose::new("shop-staging", Path::new("/srv/shop"), &[]);
        assert_ne!(c.config_key(), other.config_key());
        let cfg = serde_json::json!({"name": "shop-cache-test", "services": {}});
        let k = Compose::new("shop-cache-test", Path::new("/nonexistent"), &[]);
        remember(k.config_key(), cfg.clone());
        // Kept: no compose is run (there is none at /nonexistent).
        assert_eq!(k.config().unwrap(), cfg);
    }

    #[test]
    fn services_using_the_tag() {
        let cfg = serde_json::json!({"services": {
            "web": {"image": "r/web:PROBE"}, "worker": {"image": "r/web:PROBE"},
            "db": {"image": "postgres:15"}, "built": {"build": "."}}});
        assert_eq!(
            services_with_image_containing(&cfg, "PROBE"),
            ["web", "worker"]
        );
    }

    #[test]
    fn image_from_config() {
        let cfg =
            serde_json::json!({"services": {"web": {"image": "r/web:abc"}, "x": {"build": "."}}});
        assert_eq!(service_image_in(&cfg, "web").unwrap(), "r/web:abc");
        assert!(service_image_in(&cfg, "x")
            .unwrap_err()
            .to_string()
            .contains("no image"));
        assert!(service_image_in(&cfg, "nope").is_err());
    }
}
