//! Redelivery (`POST /v2/webhook-dispatches/{id}/redeliver`) and what a dispatch shows of its
//! request and next call: an ended dispatch is sent again, the same bytes under the same ids,
//! with its earlier calls kept and its retry schedule restarted; ACTIVE is 409, another user's
//! is 404; the 200 is on disk (kill -9 right after it).

use std::time::Duration;

use serde_json::json;

use crate::support::receiver::{Receiver, Reply};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_failed_dispatch_is_delivered_again_once_the_receiver_is_fixed() {
    let rx = Receiver::start(0, |_, _| Reply::Status(500));
    let mut d =
        TestDaemon::start("[delivery]\nallow_private_targets = true\nretry_delays_ms = [200]\n");
    let mut body = webhook_body("a", &rx.url("/a"));
    body["headersTemplate"] = json!("{\"X-Run\": \"{{resource.id}}\"}");
    body["shouldInterpolateStrings"] = json!(true);
    d.create_webhook(ALICE_TOKEN, &body);
    let answer = d.post_events(ALICE_TOKEN, &run_event("ACTOR.RUN.SUCCEEDED", "a", None, "run-1"));
    let id = answer["dispatchIds"][0].as_str().unwrap().to_string();
    let path = format!("/v2/webhook-dispatches/{id}");
    let redeliver = format!("{path}/redeliver");

    // ACTIVE while it retries: 409, and nextCallAt says when.
    let active = d.dispatch(ALICE_TOKEN, &id);
    assert_eq!(active["status"], "ACTIVE");
    assert!(active["nextCallAt"].is_string(), "{active}");
    let r = d.req("POST", &redeliver, Some(ALICE_TOKEN), None);
    assert_eq!(r.status, 409, "{}", r.text());
    let failed = d.wait_ended(ALICE_TOKEN, &id, WAIT);
    assert_eq!(failed["status"], "FAILED");
    assert_eq!(failed["calls"].as_array().unwrap().len(), 2, "the schedule: 1 retry");
    assert_eq!(failed["nextCallAt"], json!(null));
    // What was sent: the stored body and headers.
    let first = rx.received()[0].clone();
    assert_eq!(failed["request"]["body"], String::from_utf8(first.body.clone()).unwrap());
    assert_eq!(failed["request"]["headers"], json!({"X-Run": "run-1"}));

    // Still failing: the schedule starts over (two more calls), the earlier calls are kept.
    let r = d.req("POST", &redeliver, Some(ALICE_TOKEN), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["status"], "ACTIVE");
    let again = d.wait_ended(ALICE_TOKEN, &id, WAIT);
    assert_eq!(again["status"], "FAILED");
    assert_eq!(again["calls"].as_array().unwrap().len(), 4, "{again}");

    // Fixed: redelivered, and the 200 is on disk (kill -9 at once, the call comes after).
    rx.set_script(|_, _| Reply::Status(200));
    let r = d.req("POST", &redeliver, Some(ALICE_TOKEN), None);
    assert_eq!(r.status, 200, "{}", r.text());
    d.restart();
    let ok = d.wait_ended(ALICE_TOKEN, &id, WAIT);
    assert_eq!(ok["status"], "SUCCEEDED", "{ok}");
    assert_eq!(ok["calls"].as_array().unwrap().len(), 5, "{ok}");
    let last = rx.received().last().unwrap().clone();
    assert_eq!(last.body, first.body, "the same bytes");
    assert_eq!(last.header("x-apify-webhook-dispatch-id"), Some(id.as_str()));
    assert_eq!(last.header("webhook-id"), Some(id.as_str()));
    assert_eq!(last.header("x-run"), Some("run-1"));

    // SUCCEEDED can be redelivered too; another user's or an unknown id is 404.
    assert_eq!(d.req("POST", &redeliver, Some(BOB_TOKEN), None).status, 404);
    let unknown = "/v2/webhook-dispatches/AAAAAAAAAAAAAAAAA/redeliver";
    assert_eq!(d.req("POST", unknown, Some(ALICE_TOKEN), None).status, 404);
    let r = d.req("POST", &redeliver, Some(ALICE_TOKEN), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let twice = d.wait_ended(ALICE_TOKEN, &id, WAIT);
    assert_eq!(twice["status"], "SUCCEEDED");
    assert_eq!(twice["calls"].as_array().unwrap().len(), 6, "{twice}");
}

#[test]
fn a_dispatch_of_a_deleted_webhook_is_not_redelivered() {
    let rx = Receiver::start(0, |_, _| Reply::Status(200));
    let d = TestDaemon::start("[delivery]\nallow_private_targets = true\n");
    let webhook = d.create_webhook(ALICE_TOKEN, &webhook_body("a", &rx.url("/a")));
    let answer = d.post_events(ALICE_TOKEN, &run_event("ACTOR.RUN.SUCCEEDED", "a", None, "run-1"));
    let id = answer["dispatchIds"][0].as_str().unwrap().to_string();
    d.wait_ended(ALICE_TOKEN, &id, WAIT);
    assert_eq!(
        d.req("DELETE", &format!("/v2/webhooks/{webhook}"), Some(ALICE_TOKEN), None).status,
        204
    );
    let r =
        d.req("POST", &format!("/v2/webhook-dispatches/{id}/redeliver"), Some(ALICE_TOKEN), None);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("deleted"), "{}", r.text());
    assert_eq!(d.dispatch(ALICE_TOKEN, &id)["status"], "SUCCEEDED", "unchanged");
}
