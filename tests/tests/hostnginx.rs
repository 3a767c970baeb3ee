//! nginx on the host (certbot's layout) in front of the project's own nginx, published on
//! a fixed loopback port (examples/host-nginx): a swap behind it fails no keep-alive
//! request, and after `docker compose stop`+`start` (what a reboot does) and `down`+`up`
//! the host nginx reaches the current release again, never another container.
//!
//! The "host" nginx is the fixture image's nginx in the host's network namespace
//! (`--network host`): it listens on the host's loopback and proxies to the published
//! port, as a Debian nginx installed on the host would.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::clients::{ClientReport, Clients, Mix, Outcome};
use berth_e2e::{free_port, root, Stack};

/// The host's nginx: examples/host-nginx/berth-proxy.conf (its port set to the stack's
/// loopback port) inside a bare server block, client keep-alive at nginx's default.
struct HostNginx {
    name: String,
    port: u16,
    _dir: tempfile::TempDir,
}

impl HostNginx {
    fn start(name: &str, upstream_port: u16) -> HostNginx {
        let dir = tempfile::tempdir().unwrap();
        let snippet =
            std::fs::read_to_string(root().join("examples/host-nginx/berth-proxy.conf")).unwrap();
        assert!(snippet.contains("proxy_pass http://127.0.0.1:8081;"));
        let snippet = snippet.replace("127.0.0.1:8081", &format!("127.0.0.1:{upstream_port}"));
        std::fs::create_dir(dir.path().join("snippets")).unwrap();
        std::fs::write(dir.path().join("snippets/berth-proxy.conf"), snippet).unwrap();
        let port = free_port();
        let conf = format!(
            "pid /run/nginx.pid;\nevents {{}}\nhttp {{\n    access_log off;\n    server {{\n        \
             listen 127.0.0.1:{port};\n        include /etc/nginx/snippets/berth-proxy.conf;\n    }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let h = HostNginx {
            name: name.to_string(),
            port,
            _dir: dir,
        };
        let d = h._dir.path();
        let out = Command::new("docker")
            .args(["run", "-d", "--name", name, "--network", "host", "-v"])
            .arg(mount(&d.join("nginx.conf"), "/etc/nginx/nginx.conf"))
            .arg("-v")
            .arg(mount(&d.join("snippets"), "/etc/nginx/snippets"))
            .args(["berth-fixture/nginx:1", "nginx", "-g", "daemon off;"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        h
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Wait until a GET through the host nginx answers 200 from release `tag`.
    fn wait_serving(&self, tag: &str) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let got = berth_e2e::get(&self.url("/version"));
            if matches!(&got, Ok((200, v, _)) if v == tag) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "host nginx never served {tag}: {got:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for HostNginx {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

fn mount(host: &Path, inside: &str) -> String {
    format!("{}:{inside}:ro", host.display())
}

/// Keep-alive clients through the host nginx, every third request a POST, nothing resent.
fn load(h: &HostNginx) -> Clients {
    let mix = Mix {
        max_time: Duration::from_secs(150),
        ..Mix::default()
    };
    Clients::start(&format!("http://127.0.0.1:{}", h.port), &mix)
}

/// The requests that were sent at or after `t` (load time).
fn sent_after(r: &ClientReport, t: Duration) -> ClientReport {
    ClientReport {
        attempts: r
            .attempts
            .iter()
            .filter(|a| a.at.saturating_sub(a.latency) >= t)
            .cloned()
            .collect(),
        idle_closes: r.idle_closes,
    }
}

/// Answers that came from something other than the app (the demo answers every request
/// of the mix with 200, or 405 for a POST): a 404 is what a wrong container gave.
fn foreign(r: &ClientReport) -> usize {
    r.attempts
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Status(s) if s != 200 && s != 405 && s < 500))
        .count()
}

/// `docker compose ARGS` under load through the host nginx, then wait until it serves
/// `tag` and keep the load 3 s more: every request sent from then on is answered by `tag`.
fn outage(s: &Stack, h: &HostNginx, what: &str, steps: &[&[&str]], tag: &str) {
    disrupted(h, what, tag, || {
        for args in steps {
            s.compose_ok(args);
        }
    });
}

/// What dockerd does at boot: it starts the containers that have a restart policy by
/// itself, in no dependency order (compose is not involved). Here in the worst order:
/// the project's nginx first, the database last, each with `docker start`.
fn boot_order(s: &Stack) {
    s.compose_ok(&["stop"]);
    for service in ["proxy", "web", "worker", "redis", "db"] {
        let ids = berth_e2e::run_ok(
            std::process::Command::new("docker")
                .args(["ps", "-aq", "--filter"])
                .arg(format!("label=com.docker.compose.project={}", s.project))
                .arg("--filter")
                .arg(format!("label=com.docker.compose.service={service}")),
        );
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            berth_e2e::run_ok(std::process::Command::new("docker").args(["start", id]));
        }
    }
}

/// `disrupt` the stack under load through the host nginx, then wait until it serves
/// `tag` and keep the load 3 s more: every request sent from then on is answered by `tag`.
fn disrupted(h: &HostNginx, what: &str, tag: &str, disrupt: impl FnOnce()) {
    let l = load(h);
    std::thread::sleep(Duration::from_secs(1));
    disrupt();
    h.wait_serving(tag);
    let back = l.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let all = l.stop();
    let after = sent_after(&all, back);
    eprintln!("{what}, whole run: {}", all.summary());
    eprintln!(
        "{what}, sent once it served again ({back:?} into the load): {}",
        after.summary()
    );
    assert_eq!(foreign(&all), 0, "{what}: {}", all.summary());
    assert!(after.total() > 100, "{what}: {}", after.summary());
    assert_eq!(after.failed(), 0, "{what}: {}", after.summary());
    assert_eq!(after.by_version().keys().collect::<Vec<_>>(), [tag]);
}

#[test]
fn host_nginx_survives_a_swap_a_restart_and_down_up() {
    let s = Stack::new("hostnginx");
    let loopback = free_port();
    std::fs::copy(
        root().join("examples/host-nginx/compose.override.yaml"),
        s.dir.join("compose.override.yaml"),
    )
    .unwrap();
    s.set_env("PROXY_LOOPBACK_PORT", &loopback.to_string());
    s.start("v1");
    s.migrate("v2");
    let h = HostNginx::start(&format!("{}-hostnginx", s.project), loopback);
    let started = Instant::now();

    // A swap behind the project's nginx: 0 failed keep-alive GET+POST requests through
    // the host's nginx, which nobody reloads.
    h.wait_serving("v1");
    let l = load(&h);
    std::thread::sleep(Duration::from_secs(1));
    let out = s
        .berth("berth-swap")
        .args([
            "--tag",
            "v2",
            "--drain",
            "2s",
            "--stop-timeout",
            "5s",
            "web",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let swap = l.stop();
    eprintln!("swap v1 -> v2 through host nginx: {}", swap.summary());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(swap.failed(), 0, "{}", swap.summary());
    assert!(
        swap.total() > 100 && swap.by_version().contains_key("v1"),
        "{}",
        swap.summary()
    );
    assert_eq!(berth_e2e::get(&h.url("/version")).unwrap().1, "v2");

    // A reboot, as far as the stack sees it: stop, start (new addresses).
    outage(&s, &h, "stop + start", &[&["stop"], &["start"]], "v2");
    // A reboot as dockerd does it: the containers started without compose's order.
    disrupted(&h, "boot order", "v2", || boot_order(&s));
    // down + up: new containers, a new network; .env keeps v2.
    outage(
        &s,
        &h,
        "down + up",
        &[&["down"], &["up", "-d", "--wait"]],
        "v2",
    );
    eprintln!("swap, stop/start and down/up took {:?}", started.elapsed());
}

/// examples/host-nginx/shop.conf (a site as certbot leaves it, with the include) passes
/// `nginx -t` under Debian's own nginx.conf, certbot's files stood in for by a
/// self-signed certificate.
#[test]
fn the_example_site_passes_nginx_t() {
    berth_e2e::require_images(&["berth-fixture/nginx:1"]);
    const SCRIPT: &str = "set -e
        le=/etc/letsencrypt; live=$le/live/shop.example.com
        mkdir -p $live /etc/nginx/snippets
        openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=shop.example.com -days 1 \
            -keyout $live/privkey.pem -out $live/fullchain.pem 2>/dev/null
        echo 'ssl_protocols TLSv1.2 TLSv1.3;' > $le/options-ssl-nginx.conf
        openssl dhparam -dsaparam -out $le/ssl-dhparams.pem 2048 2>/dev/null
        cp /ex/berth-proxy.conf /etc/nginx/snippets/
        rm -f /etc/nginx/sites-enabled/*
        cp /ex/shop.conf /etc/nginx/sites-enabled/shop
        nginx -t";
    let name = format!("be-hostnginx-t-{}", std::process::id());
    let out = Command::new("docker")
        .args(["run", "--rm", "--name", &name, "-v"])
        .arg(mount(&root().join("examples/host-nginx"), "/ex"))
        .args(["berth-fixture/nginx:1", "sh", "-c", SCRIPT])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("test is successful"), "{err}");
}
