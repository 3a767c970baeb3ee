//! berth-healthwait against real containers: a container that dies fails the wait at
//! once (not at the deadline), with its last log lines; Docker health is followed.

use std::process::Command;
use std::time::{Duration, Instant};

use berth_e2e::{berth, require_images, run_ok, Hang};
use serde_json::Value;

const BASE: &str = "berth-fixture/base:12";

/// A throwaway container, removed on drop even when the test fails.
struct Container(String);

impl Container {
    fn run(name: &str, args: &[&str]) -> Container {
        require_images(&[BASE]);
        let name = format!("berth-e2e-hw-{name}-{}", std::process::id());
        let _ = Command::new("docker").args(["rm", "-f", &name]).output();
        run_ok(
            Command::new("docker")
                .args(["run", "-d", "--name", &name, "--label", "berth-e2e=1"])
                .args(args),
        );
        Container(name)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

fn healthwait(args: &[&str]) -> (Option<i32>, Value, String, Duration) {
    let t = Instant::now();
    let out = berth("berth-healthwait")
        .args(args)
        .current_dir(std::env::temp_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let elapsed = t.elapsed();
    let doc = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code(),
        doc,
        String::from_utf8_lossy(&out.stderr).to_string(),
        elapsed,
    )
}

#[test]
fn a_container_that_exits_fails_fast_with_its_last_logs() {
    let c = Container::run(
        "exits",
        &[
            // Booting (never healthy), then crashing: the usual way an app dies in a deploy.
            "--health-cmd",
            "test -f /tmp/never",
            "--health-interval",
            "1s",
            BASE,
            "sh",
            "-c",
            "echo 'boom: config missing' >&2; sleep 1; exit 3",
        ],
    );
    let (code, doc, err, elapsed) = healthwait(&["--container", &c.0, "--timeout", "60s"]);
    assert_eq!(code, Some(4), "{err}");
    // Fails when the container dies (~1 s), far before the 60 s deadline.
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    let rec = &doc["stages"][0];
    assert_eq!(rec["status"], "failed");
    let t = &rec["detail"]["targets"][0];
    assert_eq!(t["died"], true);
    let last = t["last_error"].as_str().unwrap();
    assert!(last.contains("exit code 3"), "{last}");
    assert!(last.contains("boom: config missing"), "{last}");
    assert!(err.contains("boom: config missing"), "{err}");
}

#[test]
fn a_restarting_container_fails_fast() {
    let c = Container::run(
        "restarts",
        &[
            "--restart",
            "always",
            "--health-cmd",
            "test -f /tmp/never",
            BASE,
            "sh",
            "-c",
            "echo crash; sleep 0.5; exit 1",
        ],
    );
    let (code, doc, err, elapsed) = healthwait(&["--container", &c.0, "--timeout", "60s"]);
    assert_eq!(code, Some(4), "{err}");
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    assert_eq!(doc["stages"][0]["detail"]["targets"][0]["died"], true);
}

#[test]
fn docker_health_is_followed() {
    let c = Container::run(
        "health",
        &[
            "--health-cmd",
            "test -f /tmp/ready",
            "--health-interval",
            "300ms",
            "--health-retries",
            "100",
            BASE,
            "sh",
            "-c",
            "sleep 1.5; touch /tmp/ready; sleep 60",
        ],
    );
    let (code, doc, err, _) = healthwait(&["--container", &c.0, "--timeout", "60s"]);
    assert_eq!(code, Some(0), "{err}");
    let t = &doc["stages"][0]["detail"]["targets"][0];
    assert_eq!(t["ready"], true);
    assert!(t["time_to_ready_ms"].as_u64().unwrap() >= 1000, "{t}");
    assert!(err.contains("health: starting"), "{err}");
}

#[test]
fn without_healthcheck_consecutive_successes_catch_a_crash() {
    // Running counts as ready without a healthcheck; asking for several consecutive
    // observations catches a container that crashes a moment after it starts.
    let c = Container::run("nohc", &[BASE, "sh", "-c", "sleep 1; exit 2"]);
    let (code, doc, err, elapsed) = healthwait(&[
        "--container",
        &c.0,
        "--successes",
        "15",
        "--interval",
        "200ms",
        "--timeout",
        "60s",
    ]);
    assert_eq!(code, Some(4), "{err}");
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    assert_eq!(doc["stages"][0]["detail"]["targets"][0]["died"], true);
}

#[test]
fn a_running_container_without_healthcheck_is_ready() {
    let c = Container::run("plain", &[BASE, "sleep", "60"]);
    let (code, _, err, _) = healthwait(&["--container", &c.0]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_missing_container_is_dead_at_once() {
    let (code, doc, _, elapsed) = healthwait(&[
        "--container",
        "berth-e2e-no-such-container",
        "--timeout",
        "60s",
    ]);
    assert_eq!(code, Some(4));
    assert!(elapsed < Duration::from_secs(30));
    let last = doc["stages"][0]["detail"]["targets"][0]["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(last.contains("no such container"), "{last}");
}

#[test]
fn a_dead_docker_daemon_is_a_preflight_error() {
    let out = berth("berth-healthwait")
        .args(["--container", "x", "--timeout", "5s"])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .current_dir(std::env::temp_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("docker daemon is not reachable"), "{err}");
}

/// Wait for a child at most `limit` (the old behaviour never returned: fail, not hang).
fn wait_bounded(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_hung_docker_call_is_killed_at_the_deadline_and_on_sigterm() {
    use std::process::Stdio;
    let c = Container::run("hung", &[BASE, "sleep", "120"]);
    let dir = tempfile::tempdir().unwrap();
    let hung = |word: &str, timeout: &str| {
        let hang = Hang::new(dir.path(), word);
        let child = berth("berth-healthwait")
            .args(["--container", &c.0, "--timeout", timeout])
            .env("BERTH_DOCKER", &hang.path)
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        (child, hang)
    };
    let stderr = |child: std::process::Child| {
        String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr).to_string()
    };

    // The container's inspect hangs: the wait ends at its --timeout, 4, naming the call.
    let (mut child, hang) = hung("inspect", "3s");
    let st = wait_bounded(&mut child, Duration::from_secs(60));
    let err = stderr(child);
    assert_eq!(st.code(), Some(4), "{err}");
    assert!(
        err.contains(&format!(" container inspect {} did not finish within", c.0)),
        "{err}"
    );
    assert_eq!(hang.sleepers(), [""; 0], "the hung call's process survived");

    // `docker version` hangs: docker does not answer, 1.
    let (mut child, hang) = hung("version", "3s");
    let st = wait_bounded(&mut child, Duration::from_secs(60));
    let err = stderr(child);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("version --format"), "{err}");
    assert_eq!(hang.sleepers(), [""; 0], "the hung call's process survived");

    // SIGTERM to berth (a CI cancel) reaches the hung call's whole process group.
    let (mut child, hang) = hung("inspect", "120s");
    let t = Instant::now();
    while hang.sleepers().is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the call never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    run_ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    wait_bounded(&mut child, Duration::from_secs(30));
    assert_eq!(
        hang.sleepers(),
        [""; 0],
        "the hung call's process survived SIGTERM"
    );
}
