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
    use hookd::api::{Query, authenticate};
    use hookd::config::User;
    // Rejecting a token that differs from the users' tokens in its first byte takes as long
    // as one that differs only in its last: a comparison that stops at the first difference
    // would be several times faster on the first (that is how a token leaks, byte by byte).
    // Many users whose tokens share all but their last byte make the comparisons the bulk of
    // the work, so a short-circuiting one shows.
    let prefix: String = (0..511).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let users: Vec<User> = (0..1000)
        .map(|i| User {
            id: format!("u{i}"),
            token: format!("{prefix}{}", char::from(b'!' + (i % 90) as u8)),
        })
        .collect();
    let mut first = format!("{prefix}~").into_bytes();
    first[0] = b'#';
    let last = format!("{prefix}~").into_bytes();
    let secret = users[0].token.clone();
    let header = |t: &[u8]| {
        let mut h = http::HeaderMap::new();
        let value = format!("Bearer {}", String::from_utf8_lossy(t));
        h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        h
    };
    let (early, late, right) = (header(&first), header(&last), header(secret.as_bytes()));
    let query = Query::parse(None);
    assert!(authenticate(&users, &right, &query).is_ok());
    let time = |h: &http::HeaderMap| {
        let started = std::time::Instant::now();
        for _ in 0..20 {
            assert!(authenticate(std::hint::black_box(&users), h, &query).is_err());
        }
        started.elapsed()
    };
    // The fastest of several rounds of each, interleaved, so that load elsewhere cancels out.
    let (mut best_early, mut best_late) = (std::time::Duration::MAX, std::time::Duration::MAX);
    for _ in 0..15 {
        best_early = best_early.min(time(&early));
        best_late = best_late.min(time(&late));
    }
    let ratio = best_late.as_secs_f64() / best_early.as_secs_f64();
    println!(
        "token rejection: first byte differs {best_early:?}, last {best_late:?}, ratio {ratio:.2}"
    );
    assert!((0.8..1.25).contains(&ratio), "timing depends on where the token differs: {ratio:.2}");
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
