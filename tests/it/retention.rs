//! Retention on the real binary: finished dispatches older than `finished_max_age_ms` are
//! deleted with their list entries, ACTIVE ones never are, a webhook's stats keep counting
//! them, an event goes (and its idempotency key is free again) only once all its dispatches
//! are gone; the size guard keeps the file from growing whatever the age.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::receiver::{Receiver, Reply, eventually};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

fn event(actor: &str, key: &str) -> Value {
    let mut e = run_event("ACTOR.RUN.SUCCEEDED", actor, None, "run-1");
    e["idempotencyKey"] = json!(key);
    e
}

#[test]
fn finished_dispatches_and_their_events_expire_and_active_ones_stay() {
    let ok = Receiver::start(0, |_, _| Reply::Status(200));
    let failing = Receiver::start(0, |_, _| Reply::Status(500));
    let mut d = TestDaemon::start(
        "[delivery]\nallow_private_targets = true\nretry_delays_ms = [600000]\n[retention]\nfinished_max_age_ms = 1500\n",
    );
    let delivered = d.create_webhook(ALICE_TOKEN, &webhook_body("a", &ok.url("/a")));
    let retrying = d.create_webhook(ALICE_TOKEN, &webhook_body("a", &failing.url("/a")));
    let alone = d.create_webhook(ALICE_TOKEN, &webhook_body("b", &ok.url("/b")));

    // Event k1 makes two dispatches: one succeeds, one stays ACTIVE (next try in 10 minutes).
    let first = d.post_events(ALICE_TOKEN, &event("a", "k1"));
    let ids: Vec<String> = first["dispatchIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2);
    let by_webhook =
        |id: &str| d.dispatch(ALICE_TOKEN, id)["webhookId"].as_str().unwrap().to_string();
    let (done_id, active_id) =
        if by_webhook(&ids[0]) == delivered { (&ids[0], &ids[1]) } else { (&ids[1], &ids[0]) };
    let done = d.wait_ended(ALICE_TOKEN, done_id, WAIT);
    assert_eq!(done["status"], "SUCCEEDED");
    wait_until(WAIT, "the failed call to be recorded", || {
        let a = d.dispatch(ALICE_TOKEN, active_id);
        (a["calls"].as_array()?.len() == 1).then_some(())
    });

    // Event k2 makes one dispatch, which succeeds.
    let second = d.post_events(ALICE_TOKEN, &event("b", "k2"));
    let second_dispatch = second["dispatchIds"][0].as_str().unwrap().to_string();
    d.wait_ended(ALICE_TOKEN, &second_dispatch, WAIT);

    // The finished dispatches go once they are 1.5 s old.
    for id in [done_id.as_str(), second_dispatch.as_str()] {
        wait_until(WAIT, &format!("{id} to be deleted"), || {
            let r = d.req("GET", &format!("/v2/webhook-dispatches/{id}"), Some(ALICE_TOKEN), None);
            (r.status == 404).then_some(())
        });
    }
    // The event whose dispatches are all gone goes too: its key makes a new event now.
    let again = wait_until(WAIT, "event k2 to be deleted", || {
        let a = d.post_events(ALICE_TOKEN, &event("b", "k2"));
        (a["id"] != second["id"]).then_some(a)
    });
    assert_eq!(again["dispatchIds"].as_array().unwrap().len(), 1, "{again}");

    // Across a kill -9 and a restart: the ACTIVE one stays, its event stays (k1 replays).
    d.restart();
    let active = d.dispatch(ALICE_TOKEN, active_id);
    assert_eq!(active["status"], "ACTIVE", "{active}");
    let replay = d.post_events(ALICE_TOKEN, &event("a", "k1"));
    assert_eq!(replay["id"], first["id"], "k1's event has an ACTIVE dispatch: it is kept");
    let r = d.req("GET", &format!("/v2/webhook-dispatches/{done_id}"), Some(ALICE_TOKEN), None);
    assert_eq!(r.status, 404, "deleted before the kill, deleted after it");

    // The webhook still counts its deleted dispatch and shows how it ended; its list is empty.
    let w = d.req("GET", &format!("/v2/webhooks/{delivered}"), Some(ALICE_TOKEN), None).json();
    assert_eq!(w["data"]["stats"]["totalDispatches"], 1, "{w}");
    assert_eq!(w["data"]["lastDispatch"]["status"], "SUCCEEDED", "{w}");
    let listed = d
        .req("GET", &format!("/v2/webhooks/{delivered}/dispatches"), Some(ALICE_TOKEN), None)
        .json();
    assert_eq!(listed["data"]["total"], 0, "{listed}");
    // The user's list holds the ACTIVE one and the dispatch of k2's new event.
    let all: Vec<String> = d
        .all_dispatches(ALICE_TOKEN)
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect();
    assert!(all.contains(active_id) && !all.contains(done_id), "{all:?}");
    let _ = (retrying, alone);
}

#[test]
fn the_size_guard_deletes_the_oldest_finished_records_whatever_their_age() {
    let ok = Receiver::start(0, |_, _| Reply::Status(200));
    let bytes_max: u64 = 8 << 20;
    let d = TestDaemon::start(&format!(
        "[delivery]\nallow_private_targets = true\n[retention]\nfinished_max_age_ms = 0\nstore_bytes_max = {bytes_max}\n"
    ));
    let mut body = webhook_body("a", &ok.url("/a"));
    // 16 KB per dispatch: 3,000 of them are 48 MB, six times the bound.
    body["payloadTemplate"] = json!(format!("{{\"pad\":\"{}\"}}", "x".repeat(16_000)));
    d.create_webhook(ALICE_TOKEN, &body);
    let mut first = None;
    let mut last = None;
    for round in 0..30 {
        let events: Vec<Value> =
            (0..100).map(|_| run_event("ACTOR.RUN.SUCCEEDED", "a", None, "r")).collect();
        let a = d.post_events(ALICE_TOKEN, &json!(events));
        let ids = a.as_array().unwrap();
        if round == 0 {
            first = Some(ids[0]["dispatchIds"][0].as_str().unwrap().to_string());
        }
        last = Some(ids[99]["dispatchIds"][0].as_str().unwrap().to_string());
        // Delivered before the next round, so there are finished records to delete.
        eventually(WAIT, "the round's deliveries", || ok.count() == (round + 1) * 100);
    }
    let (first, last) = (first.unwrap(), last.unwrap());
    d.wait_ended(ALICE_TOKEN, &last, WAIT);
    wait_until(WAIT, "the oldest dispatch to be deleted", || {
        let r = d.req("GET", &format!("/v2/webhook-dispatches/{first}"), Some(ALICE_TOKEN), None);
        (r.status == 404).then_some(())
    });
    let len = std::fs::metadata(d.data_dir().join("hookd.redb")).unwrap().len();
    // The file may pass the bound by one growth step of redb, never by the 48 MB written.
    assert!(len <= 3 * bytes_max, "store file {len} bytes with a bound of {bytes_max}");
    assert_eq!(d.dispatch(ALICE_TOKEN, &last)["status"], "SUCCEEDED");
}

/// A group commit that ended more dispatches than retention deletes in one group (a webhook's
/// delete ends up to 1,024 at once) is deleted over several groups: none is left behind.
#[test]
fn a_large_group_of_ended_dispatches_is_deleted_in_chunks_to_the_last() {
    let failing = Receiver::start(0, |_, _| Reply::Status(500));
    let d = TestDaemon::start(
        "[delivery]\nallow_private_targets = true\nretry_delays_ms = [600000]\n[retention]\nfinished_max_age_ms = 500\n",
    );
    let webhook = d.create_webhook(ALICE_TOKEN, &webhook_body("a", &failing.url("/a")));
    for batch in 0..2 {
        let events: Vec<Value> = (0..1000)
            .map(|i| run_event("ACTOR.RUN.SUCCEEDED", "a", None, &format!("run-{batch}-{i}")))
            .collect();
        d.post_events(ALICE_TOKEN, &Value::Array(events));
    }
    let total = |d: &TestDaemon| {
        d.req("GET", "/v2/webhook-dispatches?limit=1", Some(ALICE_TOKEN), None).json()["data"]
            ["total"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(total(&d), 2000);
    let r = d.req("DELETE", &format!("/v2/webhooks/{webhook}"), Some(ALICE_TOKEN), None);
    assert_eq!(r.status, 204);
    wait_until(WAIT, "every ended dispatch to be deleted", || (total(&d) == 0).then_some(()));
}
