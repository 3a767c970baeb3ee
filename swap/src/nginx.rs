//! nginx as a service of the compose project: the upstream file berth rewrites, `nginx
//! -t`, graceful reload, and the maintenance snippet. (nginx on the host sits in front of
//! it on a fixed loopback port and is never touched: docs/proxies.md#host-nginx-certbot.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};
use berth_core::compose::Compose;
use berth_core::process::{Cmd, Runner};
use berth_core::{fail, fault, fsutil, msg};

/// Which proxy is in front of the services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyMode {
    /// nginx as a service of the compose project (see --proxy-service); commands run
    /// through `docker exec`, upstreams name containers (nginx resolves them by Docker DNS)
    Compose,
    /// nginx as a service of the compose project, never reloaded by a swap: it resolves a
    /// network alias per request (Docker DNS) that berth gives only to ready containers
    /// (see --dns-network, --dns-alias)
    NginxDns,
    /// HAProxy as a service of the compose project (see --proxy-service), switched through
    /// its runtime API on the admin socket (see --haproxy-socket), never reloaded
    Haproxy,
    /// No proxy: every service is swapped as a worker (no traffic to move)
    None,
}

/// Why `--proxy host` is refused: it wrote container addresses into the host's upstream
/// file, and a reboot or `down`/`up` hands those addresses to other containers.
pub const HOST_REMOVED: &str = "--proxy host was removed: it wrote container addresses that a \
     reboot or down/up changes (traffic could reach a wrong container); keep host nginx in front \
     of the project's nginx on a fixed loopback port and use --proxy compose, see \
     docs/proxies.md#host-nginx-certbot";

/// `--proxy`'s parser: [`ProxyMode`]'s values (listed in `--help`), and `host` refused
/// with [`HOST_REMOVED`] (exit 64, naming BERTH_PROXY when it came from there).
#[derive(Debug, Clone, Copy)]
pub struct ProxyParser;

impl clap::builder::TypedValueParser for ProxyParser {
    type Value = ProxyMode;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<ProxyMode, clap::Error> {
        let parse = |s: &str| -> Result<ProxyMode, String> {
            if s.eq_ignore_ascii_case("host") {
                return Err(HOST_REMOVED.to_string());
            }
            <ProxyMode as clap::ValueEnum>::from_str(s, false)
                .map_err(|_| format!("one of: {}", ProxyParser::names().join(", ")))
        };
        parse.parse_ref(cmd, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        let all = <ProxyMode as clap::ValueEnum>::value_variants();
        Some(Box::new(
            all.iter().filter_map(clap::ValueEnum::to_possible_value),
        ))
    }
}

impl ProxyParser {
    fn names() -> Vec<String> {
        use clap::builder::TypedValueParser as _;
        ProxyParser
            .possible_values()
            .into_iter()
            .flatten()
            .map(|v| v.get_name().to_string())
            .collect()
    }
}

/// How to talk to the nginx in front of the services.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub mode: ProxyMode,
    pub compose: Compose,
    pub service: String,
    pub nginx: String,
    /// The running container of the proxy service, once looked up: `docker exec` into it
    /// takes ~0.2 s where `docker compose exec` takes ~0.6 s, and the switch is timed.
    pub container: Option<String>,
}

impl Proxy {
    pub fn new(mode: ProxyMode, compose: Compose, service: &str, nginx: &str) -> Proxy {
        Proxy {
            mode,
            compose,
            service: service.to_string(),
            nginx: nginx.to_string(),
            container: None,
        }
    }

    /// nginx runs as a service of the compose project (commands through `docker exec`).
    pub fn in_project(&self) -> bool {
        matches!(self.mode, ProxyMode::Compose | ProxyMode::NginxDns)
    }

    /// Look up the proxy service's running container (nginx in the project). `false` when
    /// none runs.
    pub fn locate(&mut self) -> Result<bool> {
        if !self.in_project() {
            return Ok(true);
        }
        let running = self
            .compose
            .containers(&self.service)?
            .into_iter()
            .find(|c| c.state.running);
        self.container = running.map(|c| c.name);
        Ok(self.container.is_some())
    }

    /// The command running `nginx ARGS` where nginx lives.
    pub fn nginx_cmd(&self, args: &[&str]) -> Cmd {
        match &self.container {
            Some(c) => berth_core::docker::docker()
                .args(["exec", c, &self.nginx])
                .args(args),
            None => {
                let mut v = vec!["exec", "-T", &self.service, &self.nginx];
                v.extend_from_slice(args);
                self.compose.cmd(v)
            }
        }
    }

    /// `nginx -t`: the whole configuration, with berth's files, is valid.
    pub fn test(&self, runner: Runner) -> Result<()> {
        runner
            .change(&self.nginx_cmd(&["-t"]))
            .map(|_| ())
            .map_err(|e| {
                anyhow::anyhow!(
                    "nginx -t rejected the configuration: {}",
                    berth_core::process::last_lines(e.stderr(), 3)
                )
            })
    }

    /// `nginx -s reload`: new workers with the new configuration; old workers finish the
    /// requests they hold, then exit.
    pub fn reload(&self, runner: Runner) -> Result<()> {
        runner
            .change(&self.nginx_cmd(&["-s", "reload"]))
            .map(|_| ())
            .context("nginx -s reload failed")
    }

    /// nginx's worker processes now (`docker top` of the proxy container).
    pub fn workers(&self) -> Result<Vec<Worker>> {
        let Some(c) = &self.container else {
            anyhow::bail!("the nginx container is not located");
        };
        let out = berth_core::docker::docker()
            .args(["top", c, "-eo", "pid,ppid,args"])
            .read()?;
        Ok(workers_in(&out))
    }

    /// The PIDs of nginx's worker processes now (one shutting down still counts).
    pub fn worker_pids(&self) -> Result<Vec<String>> {
        Ok(self.workers()?.into_iter().map(|w| w.pid).collect())
    }

    /// Wait (at most `bound`) until every worker in `before` has exited: after a graceful
    /// reload the old workers finish the requests they hold, then exit. Returns whether
    /// they did; when they cannot be listed, waits the whole `bound`.
    pub fn wait_workers_gone(&self, before: &[String], bound: Duration) -> bool {
        let deadline = std::time::Instant::now() + bound;
        loop {
            match self.worker_pids() {
                Ok(now) if !now.iter().any(|p| before.contains(p)) => return true,
                Ok(_) => {}
                Err(e) => {
                    msg::warn(format!(
                        "cannot list nginx's workers ({e:#}); waiting {bound:?}"
                    ));
                    std::thread::sleep(
                        deadline.saturating_duration_since(std::time::Instant::now()),
                    );
                    return false;
                }
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The workers before a reload, to know when it has taken ([`Proxy::wait_switched`]);
    /// `None` (with a warning) when they cannot be listed.
    pub fn before_reload(&self) -> Option<Vec<Worker>> {
        match self.workers() {
            Ok(w) if !w.is_empty() => Some(w),
            Ok(_) => {
                msg::warn("nginx shows no worker processes; not waiting for the reload to take");
                None
            }
            Err(e) => {
                msg::warn(format!(
                    "cannot list nginx's workers ({e:#}); not waiting for the reload to take"
                ));
                None
            }
        }
    }

    /// Wait until the new configuration is what answers: `nginx -s reload` returns once
    /// the master has the signal, before it has started new workers and told the old ones
    /// to stop accepting. Done when the master has a new worker and each of its old
    /// workers is gone or "shutting down" (it closed its listeners). Fails after `bound`.
    pub fn wait_switched(&self, before: &[Worker], bound: Duration) -> Result<Duration> {
        let started = std::time::Instant::now();
        let mut last_err = None;
        loop {
            match self.workers() {
                Ok(now) if reloaded(before, &now) => return Ok(started.elapsed()),
                Ok(_) => {}
                Err(e) => last_err = Some(e),
            }
            if started.elapsed() >= bound {
                let why = last_err.map(|e| format!(" ({e:#})")).unwrap_or_default();
                anyhow::bail!(
                    "nginx did not switch to the new configuration within {} of the reload: \
                     its old workers still accept connections (--command-timeout){why}",
                    berth_core::human::limit(bound)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One nginx worker process, as `ps -eo pid,ppid,args` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    pub pid: String,
    /// Its master's PID.
    pub master: String,
    /// Titled "worker process is shutting down": it no longer accepts connections.
    pub shutting_down: bool,
}

/// The nginx worker processes in `ps -eo pid,ppid,args` output.
fn workers_in(ps: &str) -> Vec<Worker> {
    ps.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (pid, ppid) = (f.next()?, f.next()?);
            let args = f.collect::<Vec<_>>().join(" ");
            let numeric = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
            (numeric(pid) && numeric(ppid) && args.starts_with("nginx: worker process")).then(
                || Worker {
                    pid: pid.to_string(),
                    master: ppid.to_string(),
                    shutting_down: args.contains("is shutting down"),
                },
            )
        })
        .collect()
}

/// Whether a reload after `before` has taken, in `now`: one of the masters has a worker
/// that is new and accepting, and each of its old workers is gone or shutting down. (A
/// master that did not change, e.g. another nginx in the container, does not count.)
fn reloaded(before: &[Worker], now: &[Worker]) -> bool {
    let mut masters: Vec<&str> = before.iter().map(|w| w.master.as_str()).collect();
    masters.sort_unstable();
    masters.dedup();
    masters.into_iter().any(|m| {
        let was = |pid: &str| before.iter().any(|b| b.pid == pid);
        let fresh = now
            .iter()
            .any(|w| w.master == m && !w.shutting_down && !was(&w.pid));
        let quiet = before.iter().filter(|b| b.master == m).all(|b| {
            now.iter()
                .find(|w| w.pid == b.pid)
                .is_none_or(|w| w.shutting_down)
        });
        fresh && quiet
    })
}

/// The upstream block for `name` sending to `servers` (`host:port`).
pub fn render_upstream(name: &str, servers: &[String], keepalive: u32, comment: &str) -> String {
    let mut s = String::new();
    for line in comment.lines() {
        s.push_str(&format!("# {line}\n"));
    }
    s.push_str(&format!("upstream {name} {{\n"));
    for srv in servers {
        s.push_str(&format!("    server {srv};\n"));
    }
    if keepalive > 0 {
        s.push_str(&format!("    keepalive {keepalive};\n"));
    }
    s.push_str("}\n");
    s
}

/// Replace `path` with `text` (or remove it for `None`), atomically.
pub fn put(path: &Path, text: Option<&str>) -> Result<()> {
    match text {
        Some(t) => fsutil::write_atomic(path, t.as_bytes(), 0o644),
        None => match std::fs::remove_file(path) {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    fsutil::sync_dir(dir);
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
        },
    }
}

/// Read a file that may be absent.
pub fn read_opt(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Write files, `nginx -t`, reload; on a rejected configuration put every file back as
/// it was (and reload that, best effort) and fail with exit 3.
pub fn apply(proxy: &Proxy, runner: Runner, files: &[(PathBuf, Option<String>)]) -> Result<()> {
    let mut before = Vec::new();
    for (path, _) in files {
        before.push((path.clone(), read_opt(path)?));
    }
    let restore = |why: &anyhow::Error| {
        for (path, text) in &before {
            if let Err(e) = put(path, text.as_deref()) {
                msg::warn(format!("could not restore {}: {e:#}", path.display()));
            }
        }
        msg::warn(format!("restored the previous nginx files ({why:#})"));
    };
    if runner.dry_run {
        for (path, text) in files {
            match text {
                Some(t) => msg::info(format!("would write {}:\n{}", path.display(), t.trim_end())),
                None => msg::info(format!("would remove {}", path.display())),
            }
        }
    } else {
        for (path, text) in files {
            if let Err(e) = put(path, text.as_deref()) {
                restore(&e);
                return Err(fail!(Swap, "{e:#}"));
            }
        }
        fault::point("upstream");
    }
    if let Err(e) = proxy.test(runner) {
        restore(&e);
        return Err(fail!(Swap, "{e:#}"));
    }
    fault::point("nginx-test");
    let before = (!runner.dry_run).then(|| proxy.before_reload()).flatten();
    let switched = proxy.reload(runner).and_then(|()| match &before {
        Some(b) => proxy.wait_switched(b, berth_core::process::command_timeout()),
        None => Ok(Duration::ZERO),
    });
    match switched {
        Ok(took) if before.is_some() => msg::info(format!(
            "nginx serves the new configuration ({} after the reload)",
            berth_core::human::elapsed_ms(berth_core::time::millis(took))
        )),
        Ok(_) => {}
        Err(e) => {
            restore(&e);
            let _ = proxy.reload(runner);
            return Err(fail!(Swap, "{e:#}"));
        }
    }
    fault::point("reload");
    Ok(())
}

/// The server-level snippet of maintenance mode: 503 with a small page and `Retry-After`
/// for everything except the health paths.
pub fn render_maintenance(message: &str, retry_after: Duration, except: &[String]) -> String {
    let secs = retry_after.as_secs().max(1);
    let page = maintenance_page(message);
    let mut s = String::new();
    s.push_str("# Maintenance mode, written by `berth-swap maintenance on`; removed by `off`.\n");
    s.push_str("set $berth_maintenance 1;\n");
    if !except.is_empty() {
        let alts: Vec<String> = except.iter().map(|p| regex_escape(p)).collect();
        s.push_str(&format!(
            "if ($uri ~ \"^({})$\") {{ set $berth_maintenance 0; }}\n",
            alts.join("|")
        ));
    }
    s.push_str("if ($berth_maintenance) { return 503; }\n");
    s.push_str("error_page 503 @berth_maintenance;\n");
    s.push_str("location @berth_maintenance {\n");
    s.push_str("    default_type text/html;\n");
    s.push_str(&format!("    add_header Retry-After {secs} always;\n"));
    s.push_str("    add_header Cache-Control \"no-store\" always;\n");
    s.push_str(&format!("    return 503 '{page}';\n"));
    s.push_str("}\n");
    s
}

/// The maintenance page (HTML, one line) with `message` escaped: safe inside nginx's
/// single-quoted string and as one word of HAProxy's CLI once blanks are escaped.
pub fn maintenance_page(message: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Maintenance</title></head>\
<body><h1>Back soon</h1><p>{}</p></body></html>",
        html_escape(message)
    )
}

/// HTML-escape, and keep nginx's string syntax safe: no `'`, `\` or `$` survive raw.
fn html_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\\' => out.push_str("&#92;"),
            '$' => out.push_str("&#36;"),
            '{' => out.push_str("&#123;"),
            '}' => out.push_str("&#125;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || "/-_~".contains(c) {
            out.push(c);
        } else if !c.is_control() && c != '"' && c != '$' {
            out.push('\\');
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_block() {
        let s = render_upstream(
            "web",
            &["shop-web-3:8080".into(), "shop-web-4:8080".into()],
            16,
            "written by berth",
        );
        assert_eq!(
            s,
            "# written by berth\nupstream web {\n    server shop-web-3:8080;\n    server shop-web-4:8080;\n    keepalive 16;\n}\n"
        );
    }

    #[test]
    fn maintenance_snippet_escapes_the_message() {
        let s = render_maintenance(
            "Back at 5 o'clock; costs $0 {really} <b>",
            Duration::from_secs(30),
            &["/healthz".into(), "/readyz".into()],
        );
        assert!(s.contains("if ($uri ~ \"^(/healthz|/readyz)$\")"), "{s}");
        assert!(s.contains("add_header Retry-After 30 always;"));
        assert!(
            s.contains("o&#39;clock; costs &#36;0 &#123;really&#125; &lt;b&gt;"),
            "{s}"
        );
        // The page is a single-quoted nginx string: only our own two quotes.
        let ret = s.lines().find(|l| l.contains("return 503 '")).unwrap();
        assert_eq!(ret.matches('\'').count(), 2, "{ret}");
    }

    fn w(pid: &str, master: &str, shutting_down: bool) -> Worker {
        Worker {
            pid: pid.into(),
            master: master.into(),
            shutting_down,
        }
    }

    #[test]
    fn workers_from_ps() {
        let ps = "    PID    PPID COMMAND\n   4021  4000 nginx: master process nginx -g daemon off;\n   \
                  4100  4021 nginx: worker process\n   4101  4021 nginx: worker process is shutting down\n   \
                  4200  4021 /bin/sh -c nginx: worker process\n";
        assert_eq!(
            workers_in(ps),
            [w("4100", "4021", false), w("4101", "4021", true)]
        );
    }

    #[test]
    fn a_reload_has_taken_when_the_old_workers_stopped_accepting() {
        let before = [
            w("10", "1", false),
            w("11", "1", false),
            w("90", "9", false),
        ];
        // Right after `nginx -s reload`: nothing changed yet.
        assert!(!reloaded(&before, &before));
        // New workers, but an old one still accepts.
        let half = [w("10", "1", true), w("11", "1", false), w("12", "1", false)];
        assert!(!reloaded(&before, &half));
        // Old ones gone or shutting down, a new one accepting: done (another nginx, 9,
        // did not change and does not matter).
        let done = [w("11", "1", true), w("12", "1", false), w("90", "9", false)];
        assert!(reloaded(&before, &done));
        // Old ones shutting down but no new worker (yet): not done.
        let none = [w("10", "1", true), w("11", "1", true), w("90", "9", false)];
        assert!(!reloaded(&before, &none));
        // An old worker still shutting down from an earlier reload does not hold it up.
        let before = [w("5", "1", true), w("10", "1", false)];
        let done = [w("5", "1", true), w("10", "1", true), w("20", "1", false)];
        assert!(reloaded(&before, &done));
    }

    #[test]
    fn proxy_commands() {
        let compose = Compose::new("shop", Path::new("/srv/shop"), &[]);
        let mut p = Proxy::new(ProxyMode::Compose, compose, "proxy", "nginx");
        assert_eq!(
            p.nginx_cmd(&["-s", "reload"]).display(),
            "docker compose --project-directory /srv/shop -p shop exec -T proxy nginx -s reload"
        );
        p.container = Some("shop-proxy-1".into());
        assert_eq!(
            p.nginx_cmd(&["-t"]).display(),
            "docker exec shop-proxy-1 nginx -t"
        );
    }
}
