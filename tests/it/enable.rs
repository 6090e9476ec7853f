//! `isEnabled`: a disabled webhook matches no event (also after a restart), keeps its history,
//! and its ACTIVE dispatches are still delivered; enabled again, it matches events from then
//! on, with no backfill. A value that is not a boolean is refused and changes nothing.

use std::time::Duration;

use serde_json::json;

use crate::support::receiver::{Receiver, Reply};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_disabled_webhook_matches_nothing_and_keeps_delivering_what_it_has() {
    // The first call fails, so the first dispatch is ACTIVE (retrying) when the webhook is
    // disabled; every later call succeeds.
    let rx = Receiver::start(0, |_, i| Reply::Status(if i == 0 { 500 } else { 200 }));
    let mut d =
        TestDaemon::start("[delivery]\nallow_private_targets = true\nretry_delays_ms = [1500]\n");
    let webhook = d.create_webhook(ALICE_TOKEN, &webhook_body("a", &rx.url("/a")));
    let path = format!("/v2/webhooks/{webhook}");
    let event = |run: &str| run_event("ACTOR.RUN.SUCCEEDED", "a", None, run);
    let first =
        d.post_events(ALICE_TOKEN, &event("run-1"))["dispatchIds"][0].as_str().unwrap().to_string();
    wait_until(WAIT, "the first call", || (rx.count() == 1).then_some(()));

    let off = d.req("PUT", &path, Some(ALICE_TOKEN), Some(&json!({"isEnabled": false})));
    assert_eq!(off.status, 200);
    assert_eq!(off.json()["data"]["isEnabled"], false);
    let none = d.post_events(ALICE_TOKEN, &event("run-2"));
    assert_eq!(none["dispatchIds"], json!([]), "a disabled webhook matches nothing: {none}");
    // Its ACTIVE dispatch is still delivered (the retry succeeds).
    let ended = d.wait_ended(ALICE_TOKEN, &first, WAIT);
    assert_eq!(ended["status"], "SUCCEEDED", "{ended}");

    // Disabled across a restart; a non-boolean changes nothing.
    d.restart();
    let bad = d.req("PUT", &path, Some(ALICE_TOKEN), Some(&json!({"isEnabled": "yes"})));
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("isEnabled"), "{}", bad.text());
    let still = d.req("GET", &path, Some(ALICE_TOKEN), None).json();
    assert_eq!(still["data"]["isEnabled"], false, "{still}");
    assert_eq!(d.post_events(ALICE_TOKEN, &event("run-3"))["dispatchIds"], json!([]));
    // Its history stays; the test route still calls it.
    assert_eq!(still["data"]["stats"]["totalDispatches"], 1, "{still}");
    let test = d.req("POST", &format!("{path}/test"), Some(ALICE_TOKEN), None);
    assert_eq!(test.status, 201, "{}", test.text());

    // Enabled again: events from now on match; the ones sent while disabled stay unmatched.
    let on = d.req("PUT", &path, Some(ALICE_TOKEN), Some(&json!({"isEnabled": true})));
    assert_eq!(on.json()["data"]["isEnabled"], true);
    let again = d.post_events(ALICE_TOKEN, &event("run-4"));
    assert_eq!(again["dispatchIds"].as_array().unwrap().len(), 1, "{again}");
    let total =
        d.req("GET", &path, Some(ALICE_TOKEN), None).json()["data"]["stats"]["totalDispatches"]
            .clone();
    assert_eq!(total, 3, "run-1, the test call and run-4: no backfill");
}

#[test]
fn a_webhook_created_disabled_matches_nothing() {
    let rx = Receiver::start(0, |_, _| Reply::Status(200));
    let d = TestDaemon::start("[delivery]\nallow_private_targets = true\n");
    let mut body = webhook_body("a", &rx.url("/a"));
    body["isEnabled"] = json!(false);
    let r = d.req("POST", "/v2/webhooks", Some(ALICE_TOKEN), Some(&body));
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["data"]["isEnabled"], false);
    let a = d.post_events(ALICE_TOKEN, &run_event("ACTOR.RUN.SUCCEEDED", "a", None, "run-1"));
    assert_eq!(a["dispatchIds"], json!([]), "{a}");
    body["isEnabled"] = json!(1);
    let bad = d.req("POST", "/v2/webhooks", Some(ALICE_TOKEN), Some(&body));
    assert_eq!(bad.status, 400, "{}", bad.text());
}
