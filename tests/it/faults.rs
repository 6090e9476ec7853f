//! Faulty receivers: slow headers, slow body, a huge response body, a connection reset
//! mid-answer, malformed HTTP, a redirect, a 410, TLS to a plain HTTP port. Each becomes a
//! recorded failed call; none stalls deliveries to a healthy target, and the huge body does
//! not grow the daemon's memory.

use std::time::Duration;

use serde_json::json;

use crate::support::receiver::{Receiver, Reply, eventually};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn faulty_receivers_become_failed_calls_and_stall_nothing() {
    let long = Duration::from_secs(10);
    let healthy = Receiver::start(0, |_, _| Reply::Status(200));
    let cases: Vec<(&str, Receiver, &str)> = vec![
        (
            "slow headers",
            Receiver::start(0, move |_, _| Reply::Raw(b"HTTP/1.1 200 OK\r\n".to_vec(), long)),
            "timed out",
        ),
        (
            "slow body",
            Receiver::start(0, move |_, _| {
                Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc".to_vec(), long)
            }),
            "timed out",
        ),
        (
            "huge body",
            Receiver::start(0, |_, _| Reply::Huge(500, 64 * 1024 * 1024)),
            "HTTP status code 500",
        ),
        (
            "reset mid-answer",
            Receiver::start(0, |_, _| Reply::Raw(b"HTTP/1.1 2".to_vec(), Duration::ZERO)),
            "Cannot send request",
        ),
        (
            "malformed",
            Receiver::start(0, |_, _| {
                Reply::Raw(b"NOT HTTP AT ALL\r\n\r\n".to_vec(), Duration::ZERO)
            }),
            "Cannot send request",
        ),
        (
            "redirect",
            {
                let to = healthy.url("/redirected");
                Receiver::start(0, move |_, _| {
                    Reply::StatusWith(302, vec![("Location".into(), to.clone())])
                })
            },
            "HTTP status code 302",
        ),
        ("gone", Receiver::start(0, |_, _| Reply::Status(410)), "HTTP status code 410"),
    ];
    let d = TestDaemon::start(
        "[delivery]\nallow_private_targets = true\nretry_delays_ms = [10]\ntimeout_ms = 1500\n",
    );
    let mut ids = Vec::new();
    for (i, (name, rx, _)) in cases.iter().enumerate() {
        let mut body = webhook_body(&format!("f{i}"), &rx.url("/"));
        body["doNotRetry"] = json!(true);
        d.create_webhook(ALICE_TOKEN, &body);
        let a = d.post_events(
            ALICE_TOKEN,
            &run_event("ACTOR.RUN.SUCCEEDED", &format!("f{i}"), None, "r"),
        );
        ids.push((name.to_string(), a["dispatchIds"][0].as_str().unwrap().to_string()));
    }
    // TLS to a port that speaks plain HTTP.
    let mut tls = webhook_body("tls", &format!("https://127.0.0.1:{}/", healthy.addr.port()));
    tls["doNotRetry"] = json!(true);
    d.create_webhook(ALICE_TOKEN, &tls);
    let a = d.post_events(ALICE_TOKEN, &run_event("ACTOR.RUN.SUCCEEDED", "tls", None, "r"));
    ids.push(("tls".into(), a["dispatchIds"][0].as_str().unwrap().to_string()));
    // Meanwhile a healthy target gets its deliveries at once.
    d.create_webhook(ALICE_TOKEN, &webhook_body("ok", &healthy.url("/ok")));
    let events: Vec<serde_json::Value> =
        (0..20).map(|i| run_event("ACTOR.RUN.SUCCEEDED", "ok", None, &format!("h{i}"))).collect();
    d.post_events(ALICE_TOKEN, &serde_json::Value::Array(events));
    eventually(WAIT, "healthy deliveries", || {
        healthy.received().iter().filter(|r| r.path == "/ok").count() == 20
    });
    let expected: Vec<&str> =
        cases.iter().map(|(_, _, e)| *e).chain(["Cannot send request"]).collect();
    for ((name, id), want) in ids.iter().zip(expected) {
        let dispatch = d.wait_ended(ALICE_TOKEN, id, WAIT);
        assert_eq!(dispatch["status"], "FAILED", "{name}: {dispatch}");
        let calls = dispatch["calls"].as_array().unwrap();
        assert_eq!(calls.len(), 1, "{name}");
        let message = calls[0]["errorMessage"].as_str().unwrap_or("");
        assert!(message.contains(want), "{name}: {message:?} lacks {want:?}");
        if *name == "huge body" {
            assert_eq!(
                calls[0]["responseBody"].as_str().unwrap().len(),
                2048,
                "the body read is capped"
            );
        }
    }
    // The redirect was not followed, and the huge body was not buffered.
    assert!(healthy.received().iter().all(|r| r.path != "/redirected"));
    let peak_kb = d.proc_status_kb("VmHWM");
    assert!(peak_kb > 0 && peak_kb < 64 * 1024, "peak RSS {peak_kb} kB after a 64 MiB response");
}
