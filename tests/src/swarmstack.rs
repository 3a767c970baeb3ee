//! The stack the Swarm swap, drain and bench runs deploy on the test bed: nginx as a
//! service of the stack on the manager (host-mode port, examples/swarm/nginx.conf and
//! berth's directory bind-mounted from [`Testbed::shared`]), the demo app's `web` with 2
//! replicas on 2 nodes (`endpoint_mode: dnsrr`, a healthcheck on `/readyz`, no published
//! port).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::clients::{Clients, Mix};
use crate::swarm::Testbed;

/// `REGISTRY`, `PORT` (nginx on the manager) and `DIR` (see [`nginx_files`]) to replace.
pub const STACK_FILE: &str = r#"services:
  proxy:
    image: REGISTRY/nginx:1
    ports:
      - target: 80
        published: PORT
        protocol: tcp
        mode: host
    volumes:
      - type: bind
        source: DIR/nginx/nginx.conf
        target: /etc/nginx/nginx.conf
        read_only: true
      - type: bind
        source: DIR/nginx/berth
        target: /etc/nginx/berth
    networks: [appnet]
    deploy:
      replicas: 1
      endpoint_mode: dnsrr
      placement:
        constraints: [node.role == manager]
  web:
    image: REGISTRY/app:${BERTH_TAG}
    init: true
    healthcheck:
      test: ["CMD", "/app", "healthcheck", "/readyz"]
      interval: 1s
      timeout: 2s
      retries: 3
    stop_grace_period: 15s
    networks: [appnet]
    deploy:
      replicas: 2
      endpoint_mode: dnsrr
      placement:
        max_replicas_per_node: 1
networks:
  appnet:
    driver: overlay
    attachable: true
"#;

/// Pushes `images` (local image, name in the registry), deploys the stack `stack` at v1
/// with nginx (`conf`) on the manager's `port` and waits until nginx answers with v1.
pub fn deploy(
    tb: &Testbed,
    stack: &str,
    port: u16,
    conf: &str,
    images: &[(&str, &str)],
) -> PathBuf {
    deploy_with(tb, stack, port, conf, images, "")
}

/// [`deploy`] with `services` (YAML, indented as the entries of `services:`; `REGISTRY`
/// replaced) added to [`STACK_FILE`]'s.
pub fn deploy_with(
    tb: &Testbed,
    stack: &str,
    port: u16,
    conf: &str,
    images: &[(&str, &str)],
    services: &str,
) -> PathBuf {
    for (image, name) in images {
        tb.push(image, name);
    }
    let dir = nginx_files(tb, stack, conf);
    let (own, networks) = STACK_FILE
        .split_once("\nnetworks:\n")
        .expect("the stack file's networks");
    let file = format!("{own}\n{services}networks:\n{networks}")
        .replace("REGISTRY", &tb.registry)
        .replace("PORT", &port.to_string())
        .replace("DIR", &dir.display().to_string());
    std::fs::write(dir.join("compose.yaml"), file).unwrap();
    tb.deploy_stack(&dir, stack, "v1");
    let url = format!("http://{}:{port}/version", tb.manager.ip);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match crate::get(&url) {
            Ok((200, v, _)) if v == "v1" => break,
            other => assert!(
                Instant::now() < deadline,
                "nginx did not answer v1 within 120 s: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    dir
}

/// The directory of `stack` in the one the manager shares (nginx's bind mounts), with
/// nginx's `conf` and, before berth's first swap, the file berth will own, as
/// examples/swarm/nginx.conf says to write it.
pub fn nginx_files(tb: &Testbed, stack: &str, conf: &str) -> PathBuf {
    let dir = tb.shared.path().join(stack);
    std::fs::create_dir_all(dir.join("nginx/berth")).unwrap();
    std::fs::write(dir.join("nginx/nginx.conf"), conf).unwrap();
    std::fs::write(
        dir.join("nginx/berth/upstream-web.conf"),
        format!("map $scheme $berth_web {{\n    default tasks.{stack}_web:8080;\n}}\n"),
    )
    .unwrap();
    dir
}

/// examples/swarm/nginx.conf, the layout berth-swap on Swarm switches.
pub fn nginx_conf() -> String {
    std::fs::read_to_string(crate::root().join("examples/swarm/nginx.conf")).unwrap()
}

/// Keep-alive clients (6, each pausing 10 ms after every answer: three test lanes share
/// the machine; every third request a POST, none resent) through the nginx at `base`
/// (`http://HOST:PORT`), bounded at 240 s.
pub fn clients(base: &str) -> Clients {
    let mix = Mix {
        clients: 6,
        pause: Duration::from_millis(10),
        max_time: Duration::from_secs(240),
        ..Mix::default()
    };
    Clients::start(base, &mix)
}
