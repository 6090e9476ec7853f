//! Security checks: tokens never reach the logs (even at trace level), token comparison is
//! constant-time, another user's ids are 404 on every route, and the SSRF guard's address
//! forms (the unit table in delivery/sender.rs covers IPv4-mapped IPv6, NAT64, 6to4 and the
//! ranges; delivery.rs covers decimal and hex IPv4 and names resolving to loopback).

use serde_json::json;

use crate::support::receiver::{Receiver, Reply};
use crate::support::*;

#[test]
fn tokens_never_appear_in_logs() {
    let rx = Receiver::start(0, |_, _| Reply::Status(200));
    // Everything every crate logs, at the most verbose level.
    let d = TestDaemon::start_logging("[delivery]\nallow_private_targets = true\n", "trace");
    let wrong = "wrong-token-4f3a9c";
    let hook = d.create_webhook(ALICE_TOKEN, &webhook_body("a", &rx.url("/")));
    for path in ["/v2/webhooks", &format!("/v2/webhooks/{hook}"), "/v2/webhook-dispatches"] {
        d.req("GET", path, Some(ALICE_TOKEN), None);
        d.req("GET", path, Some(wrong), None);
        d.req("GET", &format!("{path}?token={ALICE_TOKEN}"), None, None);
        d.req("GET", &format!("{path}?token={wrong}"), None, None);
    }
    d.post_events(ALICE_TOKEN, &run_event("ACTOR.RUN.SUCCEEDED", "a", None, "r"));
    d.req("POST", &format!("/v2/webhooks/{hook}/test?token={ALICE_TOKEN}"), None, None);
    crate::support::receiver::eventually(std::time::Duration::from_secs(20), "deliveries", || {
        rx.count() == 2
    });
    let log = d.log();
    assert!(log.len() > 1000, "trace logging is on: {} bytes", log.len());
    for secret in [ALICE_TOKEN, BOB_TOKEN, wrong] {
        assert!(!log.contains(secret), "a token is in the log");
    }
}

#[test]
fn token_comparison_is_constant_time() {
    // The comparison runs over the whole length whatever the inputs (routes.rs
    // `constant_time_eq`, unit-tested there), and authentication compares the presented token
    // with every user's token that way, never with `==` or a map lookup.
    let routes =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/routes.rs")).unwrap();
    let auth = routes.split("pub fn authenticate").nth(1).unwrap().split("\n}\n").next().unwrap();
    assert!(auth.contains("constant_time_eq(u.token.as_bytes(), token.as_bytes())"));
    for banned in ["== token", "token ==", ".get(token", "find(|u| u.token"] {
        assert!(!auth.contains(banned), "authenticate compares tokens with {banned}");
    }
    let ct = routes.split("fn constant_time_eq").nth(1).unwrap().split("\n}\n").next().unwrap();
    assert!(!ct.contains("return") && !ct.contains("break"), "no early exit in the comparison");
}

#[test]
fn another_users_ids_are_404_everywhere() {
    let rx = Receiver::start(0, |_, _| Reply::Status(200));
    let d = TestDaemon::start("[delivery]\nallow_private_targets = true\n");
    let hook = d.create_webhook(ALICE_TOKEN, &webhook_body("a", &rx.url("/")));
    let dispatch = d.post_events(ALICE_TOKEN, &run_event("ACTOR.RUN.SUCCEEDED", "a", None, "r"))["dispatchIds"][0]
        .as_str()
        .unwrap()
        .to_string();
    d.req(
        "PUT",
        "/v2/actor-runs/run1",
        Some(ALICE_TOKEN),
        Some(&json!({"actId": "a", "status": "RUNNING"})),
    );
    d.req(
        "PUT",
        "/v2/actor-builds/b1",
        Some(ALICE_TOKEN),
        Some(&json!({"actId": "a", "status": "RUNNING"})),
    );
    let cases = [
        ("GET", format!("/v2/webhooks/{hook}"), None),
        ("PUT", format!("/v2/webhooks/{hook}"), Some(json!({"description": "x"}))),
        ("DELETE", format!("/v2/webhooks/{hook}"), None),
        ("POST", format!("/v2/webhooks/{hook}/test"), None),
        ("GET", format!("/v2/webhooks/{hook}/dispatches"), None),
        ("GET", format!("/v2/webhook-dispatches/{dispatch}"), None),
        ("GET", "/v2/actor-runs/run1".to_string(), None),
        ("GET", "/v2/actor-builds/b1".to_string(), None),
    ];
    for (method, path, body) in &cases {
        let r = d.req(method, path, Some(BOB_TOKEN), body.as_ref());
        assert_eq!(
            (r.status, r.error_type()),
            (404, "record-not-found".to_string()),
            "{method} {path}"
        );
    }
    // Bob's run report with Alice's run id is his own run: it does not touch hers.
    let r = d.req(
        "PUT",
        "/v2/actor-runs/run1",
        Some(BOB_TOKEN),
        Some(&json!({"actId": "b", "status": "SUCCEEDED"})),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        d.req("GET", "/v2/actor-runs/run1", Some(ALICE_TOKEN), None).json()["data"]["status"],
        "RUNNING"
    );
    // And nothing of Alice's changed.
    assert_eq!(d.req("GET", &format!("/v2/webhooks/{hook}"), Some(ALICE_TOKEN), None).status, 200);
}
