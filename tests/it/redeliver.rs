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

fn iso(ms: u64) -> String {
    hookd::model::format_timestamp_ms(ms)
}

fn iso_now() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    iso(ms.as_millis() as u64)
}

/// Statuses of the webhook's dispatches, by id, read through its list.
fn statuses(d: &TestDaemon, webhook_id: &str) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    loop {
        let path = format!("/v2/webhooks/{webhook_id}/dispatches?limit=1000&offset={}", out.len());
        let r = d.req("GET", &path, Some(ALICE_TOKEN), None);
        assert_eq!(r.status, 200, "{}", r.text());
        let items = r.json()["data"]["items"].as_array().unwrap().clone();
        if items.is_empty() {
            return out;
        }
        for i in items {
            out.insert(i["id"].as_str().unwrap().to_string(), i["status"].as_str().unwrap().into());
        }
    }
}

/// Sends `n` events for actor `actor` in batches; returns their dispatch ids.
fn send(d: &TestDaemon, actor: &str, n: usize, tag: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in 0..n.div_ceil(100) {
        let events: Vec<serde_json::Value> = (0..100.min(n - chunk * 100))
            .map(|i| run_event("ACTOR.RUN.SUCCEEDED", actor, None, &format!("{tag}-{chunk}-{i}")))
            .collect();
        for a in d.post_events(ALICE_TOKEN, &json!(events)).as_array().unwrap() {
            ids.extend(
                a["dispatchIds"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()),
            );
        }
    }
    ids
}

fn wait_all(d: &TestDaemon, webhook_id: &str, ids: &[String], status: &str) {
    wait_until(Duration::from_secs(60), &format!("{} dispatches {status}", ids.len()), || {
        let now = statuses(d, webhook_id);
        ids.iter().all(|id| now.get(id).map(String::as_str) == Some(status)).then_some(())
    });
}

#[test]
fn a_webhook_s_failed_dispatches_in_a_time_window_are_delivered_again_in_bulk() {
    let rx = Receiver::start(0, |_, _| Reply::Status(500));
    let d = TestDaemon::start("[delivery]\nallow_private_targets = true\n");
    let mut body = webhook_body("a", &rx.url("/a"));
    body["doNotRetry"] = json!(true);
    let w = d.create_webhook(ALICE_TOKEN, &body);
    let mut other = webhook_body("b", &rx.url("/b"));
    other["doNotRetry"] = json!(true);
    let w_other = d.create_webhook(ALICE_TOKEN, &other);
    // Three windows of failed dispatches; the middle one spans several of the writer's chunks.
    let before = send(&d, "a", 50, "before");
    std::thread::sleep(Duration::from_millis(20));
    let since = iso_now();
    let inside = send(&d, "a", 600, "inside");
    let until = iso_now();
    std::thread::sleep(Duration::from_millis(20));
    let after = send(&d, "a", 50, "after");
    let others = send(&d, "b", 50, "other");
    for (hook, ids) in [(&w, &before), (&w, &inside), (&w, &after), (&w_other, &others)] {
        wait_all(&d, hook, ids, "FAILED");
    }
    let calls_before = rx.count();
    rx.set_script(|_, _| Reply::Status(200));
    let path = format!("/v2/webhooks/{w}/redeliver");
    let window = json!({"status": "FAILED", "since": since, "until": until});
    // Bad selections, another user's webhook, an unknown one: refused, nothing sent.
    for bad in [
        json!({"status": "ACTIVE"}),
        json!({"since": "soon"}),
        json!({"until": until, "since": iso(4_000_000_000_000)}),
    ] {
        let r = d.req("POST", &path, Some(ALICE_TOKEN), Some(&bad));
        assert_eq!(
            (r.status, r.error_type().as_str()),
            (400, "invalid-input"),
            "{bad}: {}",
            r.text()
        );
    }
    assert_eq!(d.req("POST", &path, Some(BOB_TOKEN), Some(&window)).status, 404);
    let unknown = "/v2/webhooks/AAAAAAAAAAAAAAAAA/redeliver";
    assert_eq!(d.req("POST", unknown, Some(ALICE_TOKEN), Some(&window)).status, 404);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rx.count(), calls_before, "a refused redelivery sent something");

    let r = d.req("POST", &path, Some(ALICE_TOKEN), Some(&window));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"data": {"count": 600}}));
    wait_all(&d, &w, &inside, "SUCCEEDED");
    wait_all(&d, &w, &before, "FAILED");
    wait_all(&d, &w, &after, "FAILED");
    wait_all(&d, &w_other, &others, "FAILED");
    // Each in the window sent once more; none outside it.
    let mut sent = std::collections::HashMap::<String, usize>::new();
    for r in &rx.received()[calls_before..] {
        *sent.entry(r.header("x-apify-webhook-dispatch-id").unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(sent.len(), 600);
    assert!(inside.iter().all(|id| sent.get(id) == Some(&1)));
    // Again: nothing in the window is FAILED any more.
    let r = d.req("POST", &path, Some(ALICE_TOKEN), Some(&window));
    assert_eq!(r.json(), json!({"data": {"count": 0}}));
    // No body: every FAILED one of the webhook.
    let r = d.req("POST", &path, Some(ALICE_TOKEN), None);
    assert_eq!(r.json(), json!({"data": {"count": 100}}), "{}", r.text());
    wait_all(&d, &w, &before, "SUCCEEDED");
    wait_all(&d, &w, &after, "SUCCEEDED");
    // SUCCEEDED ones can be sent again too.
    let r = d.req("POST", &path, Some(ALICE_TOKEN), Some(&json!({"status": "SUCCEEDED"})));
    assert_eq!(r.json(), json!({"data": {"count": 700}}), "{}", r.text());
}

#[test]
fn kill9_in_the_middle_of_a_bulk_redelivery_loses_nothing_and_sends_nothing_twice() {
    const N: usize = 5000;
    // A call is in flight from its send until its outcome is committed; at most this many.
    const INFLIGHT: usize = 16;
    let rx = Receiver::start(0, |_, _| Reply::Status(500));
    let mut d = TestDaemon::start(&format!(
        "[delivery]\nallow_private_targets = true\ninflight_max = {INFLIGHT}\n"
    ));
    let mut body = webhook_body("a", &rx.url("/a"));
    body["doNotRetry"] = json!(true);
    let w = d.create_webhook(ALICE_TOKEN, &body);
    let ids = send(&d, "a", N, "r");
    wait_all(&d, &w, &ids, "FAILED");
    let failed_calls = rx.count();
    rx.set_script(|_, _| Reply::Status(200));
    let addr = d.addr;
    let path = format!("/v2/webhooks/{w}/redeliver");
    // The answer never comes: the daemon is killed while the job runs.
    let asked = std::thread::spawn(move || {
        let auth = format!("Bearer {ALICE_TOKEN}");
        try_raw_request(addr, "POST", &path, &[("Authorization", &auth)], b"")
    });
    wait_until(WAIT, "the first redelivered call", || (rx.count() > failed_calls).then_some(()));
    d.kill9();
    let _ = asked.join();
    let sent_before_kill = rx.count() - failed_calls;
    d.restart();
    // On PostgreSQL a live node takes the job over once the killed one lapses.
    wait_until(WAIT, "the job resumed", || d.log().contains("resuming").then_some(()));
    wait_all(&d, &w, &ids, "SUCCEEDED");
    let mut sent = std::collections::HashMap::<String, usize>::new();
    for r in &rx.received()[failed_calls..] {
        *sent.entry(r.header("x-apify-webhook-dispatch-id").unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(sent.len(), N, "every dispatch delivered again");
    let twice: Vec<_> = sent.iter().filter(|(_, n)| **n > 1).collect();
    // Only calls in flight at the kill may go twice: at most the in-flight bound, each sent
    // twice at most, and its first outcome is the one the kill lost (one call recorded since).
    assert!(twice.len() <= INFLIGHT, "{} sent twice: {twice:?}", twice.len());
    for (id, n) in &twice {
        assert_eq!(**n, 2, "{id}");
        let calls = d.dispatch(ALICE_TOKEN, id)["calls"].as_array().unwrap().len();
        assert_eq!(calls, 2, "{id}: the failed call and one recorded redelivered call");
    }
    assert!(sent_before_kill < N, "the kill came after the job: {sent_before_kill} sent");
}
