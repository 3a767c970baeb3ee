//! Long requests and server-sent event streams across a swap (issue 12 §3): with a drain
//! shorter than the request, a slow request started before the switch still gets its
//! answer from the old release (the old container's graceful stop finishes it), and an
//! open `/events` stream ends cleanly with the app's `shutdown` event and the end of the
//! chunked body, never torn; a stream opened after the switch reaches the new release.

use std::process::Stdio;
use std::time::Duration;

use berth_e2e::clients::{Clients, Mix};
use berth_e2e::{assert_outlived_the_drain, get_raw, Stack};
use serde_json::Value;

#[test]
fn a_slow_request_and_an_event_stream_outlive_a_short_drain() {
    let s = Stack::new("drain");
    s.start("v1");
    s.migrate("v2");
    let port = s.port;
    // Beside them, 4 keep-alive clients (every third request a POST, none resent).
    let mix = Mix {
        clients: 4,
        max_time: Duration::from_secs(120),
        ..Mix::default()
    };
    let load = Clients::start(&s.url(""), &mix);
    let stream = std::thread::spawn(move || get_raw(port, "/events"));
    let slow = std::thread::spawn(move || get_raw(port, "/slow?ms=4000"));
    std::thread::sleep(Duration::from_millis(500));
    let out = s
        .berth("berth-swap")
        .args(["--tag", "v2", "--drain", "1s", "--stop-timeout", "5s"])
        .args(["--timeout", "30s", "web"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{err}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();

    // The slow request: answered by v1, whole, although it outlived the 1 s drain. The
    // stream: v1's ticks in order, then its shutdown event, then the end of the body. A
    // stream opened now (the client reconnecting) reaches v2.
    assert_outlived_the_drain(
        port,
        slow.join().unwrap(),
        stream.join().unwrap(),
        "v1",
        "v2",
    );

    let report = load.stop();
    report.assert_all_answered_by_app("beside the slow request and the stream");
    assert!(report.total() > 100, "{}", report.summary());

    // The record: the drain used and where it came from; nothing killed.
    let st = doc["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["stage"] == "swap")
        .unwrap();
    let d = &st["detail"];
    assert_eq!(d["drain_limit_ms"], 1000, "{d}");
    assert_eq!(d["drain_from"], "--drain", "{d}");
    // The open stream held an old nginx worker for the whole bound.
    assert_eq!(d["drained"], false, "{d}");
    assert_eq!(d["services"][0]["killed"], 0, "{d}");
}
