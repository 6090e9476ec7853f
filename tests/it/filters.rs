//! hookd's filters on the dispatch lists (`?status=`, `?eventType=`): answered from the status
//! indexes with exact totals, paged and newest-first like the plain lists, per user and per
//! webhook (whose newest dispatches are not folded into its index yet).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::receiver::{Receiver, Reply};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);
/// Webhooks on the actor whose receiver never answers: every event makes one dispatch each.
const HANGING_WEBHOOKS: usize = 10;
const EVENTS_PER_REQUEST: usize = 1000;

fn list(d: &TestDaemon, path: &str) -> (u64, Vec<String>) {
    let r = d.req("GET", path, Some(ALICE_TOKEN), None);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    let data = r.json()["data"].clone();
    let ids = data["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().into());
    (data["total"].as_u64().unwrap(), ids.collect())
}

fn events(event_type: &str, actor: &str, first_run: usize, n: usize) -> Value {
    let all: Vec<Value> = (first_run..first_run + n)
        .map(|i| run_event(event_type, actor, None, &format!("r{i}")))
        .collect();
    json!(all)
}

#[test]
fn ten_failed_among_100000_dispatches_are_found_by_status_with_exact_totals() {
    let hang = Receiver::start(0, |_, _| Reply::Hang(Duration::from_secs(120)));
    let fail = Receiver::start(0, |_, _| Reply::Status(500));
    let d = TestDaemon::start("[delivery]\nallow_private_targets = true\n");
    let mut hanging = Vec::new();
    for _ in 0..HANGING_WEBHOOKS {
        hanging.push(d.create_webhook(ALICE_TOKEN, &webhook_body("a", &hang.url("/a"))));
    }
    let mut body = webhook_body("b", &fail.url("/b"));
    body["eventTypes"] = json!(["ACTOR.RUN.FAILED"]);
    body["doNotRetry"] = json!(true);
    let failing = d.create_webhook(ALICE_TOKEN, &body);
    // Bob's failures are not Alice's.
    let mut bobs = webhook_body("b", &fail.url("/bob"));
    bobs["eventTypes"] = json!(["ACTOR.RUN.FAILED"]);
    bobs["doNotRetry"] = json!(true);
    d.create_webhook(BOB_TOKEN, &bobs);
    d.post_events(BOB_TOKEN, &events("ACTOR.RUN.FAILED", "b", 0, 3));

    let active_total = 100_000 - 10;
    let mut run = 0;
    while run * HANGING_WEBHOOKS < active_total {
        let n = EVENTS_PER_REQUEST.min(active_total / HANGING_WEBHOOKS - run);
        d.post_events(ALICE_TOKEN, &events("ACTOR.RUN.SUCCEEDED", "a", run, n));
        run += n;
    }
    let answer = d.post_events(ALICE_TOKEN, &events("ACTOR.RUN.FAILED", "b", 0, 10));
    let mut failed: Vec<String> = answer
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|a| a["dispatchIds"].as_array().unwrap().clone())
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    failed.sort();
    assert_eq!(failed.len(), 10);
    for id in &failed {
        assert_eq!(d.wait_ended(ALICE_TOKEN, id, WAIT)["status"], "FAILED");
    }

    // The ten, in createdAt order, with the exact total, out of 100,000.
    let started = Instant::now();
    let (total, ids) = list(&d, "/v2/webhook-dispatches?status=FAILED");
    let elapsed = started.elapsed();
    println!("?status=FAILED among 100,000 dispatches: {} ms", elapsed.as_secs_f64() * 1000.0);
    assert_eq!((total, &ids), (10, &failed));
    // Newest first, paged.
    let (total, ids) = list(&d, "/v2/webhook-dispatches?status=FAILED&desc=1&offset=2&limit=3");
    let want: Vec<String> = failed.iter().rev().skip(2).take(3).cloned().collect();
    assert_eq!((total, ids), (10, want));
    let (total, ids) = list(&d, "/v2/webhook-dispatches?status=FAILED&offset=8&limit=5");
    assert_eq!((total, ids), (10, failed[8..].to_vec()));
    // By event type, alone and with a status.
    assert_eq!(list(&d, "/v2/webhook-dispatches?eventType=ACTOR.RUN.FAILED"), (10, failed.clone()));
    let (total, _) = list(&d, "/v2/webhook-dispatches?eventType=ACTOR.RUN.SUCCEEDED&status=FAILED");
    assert_eq!(total, 0);
    let (total, ids) = list(&d, "/v2/webhook-dispatches?status=ACTIVE&limit=5");
    assert_eq!((total, ids.len()), (active_total as u64, 5));
    let (total, _) = list(&d, "/v2/webhook-dispatches?status=SUCCEEDED");
    assert_eq!(total, 0);

    // Per webhook: the failing one's ten; a hanging one's ACTIVE, paged across the folded
    // and the not yet folded ones, both ways, matching its unfiltered list.
    let path = format!("/v2/webhooks/{failing}/dispatches?status=FAILED&desc=true");
    let want: Vec<String> = failed.iter().rev().cloned().collect();
    assert_eq!(list(&d, &path), (10, want));
    let path = format!("/v2/webhooks/{failing}/dispatches?status=ACTIVE");
    assert_eq!(list(&d, &path).0, 0);
    let per_webhook = (active_total / HANGING_WEBHOOKS) as u64;
    for (desc, offset) in [(false, 0), (false, 4_990), (true, 0), (true, 9_000)] {
        let plain =
            format!("/v2/webhooks/{}/dispatches?desc={desc}&offset={offset}&limit=20", hanging[0]);
        let filtered = format!("{plain}&status=ACTIVE&eventType=ACTOR.RUN.SUCCEEDED");
        let (total, ids) = list(&d, &filtered);
        assert_eq!(total, per_webhook);
        assert_eq!(ids, list(&d, &plain).1, "desc={desc} offset={offset}");
        assert_eq!(ids.len(), 20);
    }

    // A value that is not a status or an event type is refused, naming the parameter.
    for (path, name) in [
        ("/v2/webhook-dispatches?status=DONE", "status"),
        ("/v2/webhook-dispatches?eventType=RUN", "eventType"),
        (&format!("/v2/webhooks/{failing}/dispatches?status=failed"), "status"),
    ] {
        let r = d.req("GET", path, Some(ALICE_TOKEN), None);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_eq!(r.error_type(), "invalid-input");
        assert!(r.text().contains(name), "{}", r.text());
    }
}
