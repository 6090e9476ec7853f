//! Store files of released schema versions, kept as fixtures so that every later hookd is tested
//! on them: today's hookd opens `tests/fixtures/store-vN.redb` (written by the schema-N code)
//! and every record reads back as the API showed it then (`store-vN.json`). A later schema
//! migrates these files at open, and these tests keep passing.
//!
//! `make_store_fixture` wrote each pair with the code of its schema (ignored: run it once per
//! schema version, before the version changes).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::receiver::{Receiver, Reply, free_port};
use crate::support::*;

/// The fixture files of one schema version: the store and what the API showed of it.
fn fixture(version: u64) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    (dir.join(format!("store-v{version}.redb")), dir.join(format!("store-v{version}.json")))
}
const JOBS: [&str; 2] = ["/v2/actor-runs/fx-run-1", "/v2/actor-builds/fx-build-1"];

/// What the API shows of the store: per user, every webhook and every dispatch in full, and
/// the reported jobs.
fn shown(d: &TestDaemon) -> Value {
    let mut users = serde_json::Map::new();
    for (user, token) in [(ALICE, ALICE_TOKEN), (BOB, BOB_TOKEN)] {
        let list = d.req("GET", "/v2/webhooks?limit=1000", Some(token), None).json();
        let webhooks: Vec<Value> = list["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                let id = w["id"].as_str().unwrap();
                d.req("GET", &format!("/v2/webhooks/{id}"), Some(token), None).json()["data"]
                    .clone()
            })
            .collect();
        let dispatches: Vec<Value> = d
            .all_dispatches(token)
            .iter()
            .map(|i| d.dispatch(token, i["id"].as_str().unwrap()))
            .collect();
        let jobs: Vec<Value> =
            JOBS.iter().map(|p| d.req("GET", p, Some(token), None).json()).collect();
        // Each webhook's signing key (schema 7 on).
        let secrets: serde_json::Map<String, Value> = webhooks
            .iter()
            .map(|w| {
                let id = w["id"].as_str().unwrap();
                let path = format!("/v2/webhooks/{id}/signing-secret");
                (
                    id.to_string(),
                    d.req("GET", &path, Some(token), None).json()["data"]["key"].clone(),
                )
            })
            .collect();
        users.insert(
            user.to_string(),
            json!({"webhooks": webhooks, "dispatches": dispatches, "jobs": jobs, "secrets": secrets}),
        );
    }
    Value::Object(users)
}

#[test]
#[ignore = "writes the fixture of the current schema version: run once per version"]
fn make_store_fixture() {
    let (store, shown_file) = fixture(hookd::store::SCHEMA_VERSION);
    let rx = Receiver::start(0, |_, _| Reply::Status(200));
    // Folded every 2 dispatches, so that the store has folded and waiting ones.
    let mut d = TestDaemon::start(
        "[delivery]\nallow_private_targets = true\n[limits]\nwebhook_pending_max = 2\n",
    );
    let closed = format!("http://127.0.0.1:{}/closed", free_port());
    let with = |mut body: Value, extra: Value| {
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let plain = d.create_webhook(ALICE_TOKEN, &webhook_body("fx-actor", &rx.url("/plain")));
    d.create_webhook(
        ALICE_TOKEN,
        &with(
            webhook_body("fx-actor", &rx.url("/templated")),
            json!({
                "payloadTemplate": "{\"run\": {{resource.id}}, \"who\": \"{{userId}} at {{createdAt}}\", \"data\": {{eventData}}}",
                "headersTemplate": "{\"X-Run\": \"{{resource.id}}\", \"X-Static\": \"yes\"}",
                "shouldInterpolateStrings": true,
                "description": "templated, with headers",
                "idempotencyKey": "fx-key-1",
                "eventTypes": ["ACTOR.RUN.SUCCEEDED", "ACTOR.RUN.FAILED", "ACTOR.BUILD.SUCCEEDED"],
            }),
        ),
    );
    d.create_webhook(
        ALICE_TOKEN,
        &with(
            webhook_body("fx-actor", &rx.url("/adhoc")),
            json!({"isAdHoc": true, "condition": {"actorRunId": "fx-run-1"}}),
        ),
    );
    d.create_webhook(
        ALICE_TOKEN,
        &with(
            webhook_body("fx-actor", &rx.url("/task")),
            json!({"condition": {"actorTaskId": "fx-task"}}),
        ),
    );
    d.create_webhook(ALICE_TOKEN, &webhook_body("fx-pending", &closed));
    d.create_webhook(
        ALICE_TOKEN,
        &with(
            webhook_body("fx-failing", &closed),
            json!({"doNotRetry": true, "ignoreSslErrors": true}),
        ),
    );
    let removed = d.create_webhook(ALICE_TOKEN, &webhook_body("fx-removed", &closed));
    // Schema 7: a disabled webhook, and a rotated signing key.
    d.create_webhook(
        ALICE_TOKEN,
        &with(webhook_body("fx-actor", &rx.url("/disabled")), json!({"isEnabled": false})),
    );
    let rotate = format!("/v2/webhooks/{plain}/signing-secret/rotate");
    assert_eq!(d.req("POST", &rotate, Some(ALICE_TOKEN), None).status, 200);
    d.create_webhook(BOB_TOKEN, &webhook_body("fx-actor", &rx.url("/bob")));

    let mut keyed = run_event("ACTOR.RUN.SUCCEEDED", "fx-actor", Some("fx-task"), "fx-run-1");
    keyed["idempotencyKey"] = json!("fx-event-1");
    keyed["createdAt"] = json!("2026-12-03T10:00:00.000+02:00");
    d.post_events(ALICE_TOKEN, &keyed);
    d.post_events(
        ALICE_TOKEN,
        &json!([
            run_event("ACTOR.RUN.FAILED", "fx-actor", None, "fx-run-2"),
            run_event("ACTOR.RUN.SUCCEEDED", "fx-pending", None, "fx-run-3"),
            run_event("ACTOR.RUN.SUCCEEDED", "fx-failing", None, "fx-run-4"),
            run_event("ACTOR.RUN.SUCCEEDED", "fx-removed", None, "fx-run-5"),
        ]),
    );
    d.post_events(BOB_TOKEN, &run_event("ACTOR.RUN.SUCCEEDED", "fx-actor", None, "fx-run-6"));
    for (path, status) in [(JOBS[0], "RUNNING"), (JOBS[0], "SUCCEEDED"), (JOBS[1], "SUCCEEDED")] {
        let r = d.req(
            "PUT",
            path,
            Some(ALICE_TOKEN),
            Some(&json!({"actId": "fx-actor", "status": status})),
        );
        assert_eq!(r.status, 200, "{path}");
    }
    assert_eq!(
        d.req("DELETE", &format!("/v2/webhooks/{removed}"), Some(ALICE_TOKEN), None).status,
        204
    );
    // Every dispatch has had its first call: delivered ones ended, the closed port's retried.
    wait_until(Duration::from_secs(30), "first calls", || {
        let all = d.all_dispatches(ALICE_TOKEN);
        all.iter()
            .all(|i| {
                d.dispatch(ALICE_TOKEN, i["id"].as_str().unwrap())["calls"]
                    .as_array()
                    .is_some_and(|c| !c.is_empty())
            })
            .then_some(())
    });
    d.wait_all_ended(BOB_TOKEN, Duration::from_secs(30));
    // Schema 7: the failed dispatch redelivered once (it fails again: two calls, the schedule
    // counted from the second).
    let failing = d
        .all_dispatches(ALICE_TOKEN)
        .into_iter()
        .map(|i| d.dispatch(ALICE_TOKEN, i["id"].as_str().unwrap()))
        .find(|x| x["status"] == "FAILED" && x["calls"].as_array().unwrap().len() == 1)
        .expect("the doNotRetry dispatch failed");
    let id = failing["id"].as_str().unwrap().to_string();
    let r =
        d.req("POST", &format!("/v2/webhook-dispatches/{id}/redeliver"), Some(ALICE_TOKEN), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let again = d.wait_ended(ALICE_TOKEN, &id, Duration::from_secs(30));
    assert_eq!(again["calls"].as_array().unwrap().len(), 2, "{again}");
    assert!(rx.count() >= 5, "deliveries arrived: {}", rx.count());
    let state = shown(&d);
    let status = d.sigterm(Duration::from_secs(15)).expect("stops");
    assert!(status.success());
    std::fs::copy(d.data_dir().join("hookd.redb"), &store).expect("write the fixture");
    let text = serde_json::to_string_pretty(&state).unwrap();
    std::fs::write(&shown_file, text + "\n").expect("write what the API showed");
    println!("fixture: {} bytes", std::fs::metadata(&store).unwrap().len());
}

/// Today's hookd opens the v8 store (status indexes, folded and waiting dispatches) and reads
/// every record back as it was shown.
#[test]
fn the_v8_store_opens_and_reads_back() {
    reads_back(8);
}

/// Today's hookd opens the v7 store (signing keys, a disabled webhook, a redelivered
/// dispatch) and reads every record back as it was shown.
#[test]
fn the_v7_store_opens_and_reads_back() {
    reads_back(7);
}

/// Today's hookd opens the v4 store and reads every record back as it was shown.
#[test]
fn the_v4_store_opens_and_reads_back() {
    reads_back(4);
}

/// Today's hookd opens the v5 store and reads every record back as it was shown.
#[test]
fn the_v5_store_opens_and_reads_back() {
    reads_back(5);
}

/// Today's hookd opens the v6 store and reads every record back as it was shown.
#[test]
fn the_v6_store_opens_and_reads_back() {
    reads_back(6);
}

fn reads_back(version: u64) {
    let (store, shown_file) = fixture(version);
    // Kept whatever the fixture's age (the default retention would delete its ended ones).
    let d = TestDaemon::start_on_store("[retention]\nfinished_max_age_ms = 0\n", &store);
    let want: Value = serde_json::from_str(&std::fs::read_to_string(shown_file).unwrap()).unwrap();
    let got = shown(&d);
    for user in [ALICE, BOB] {
        assert_eq!(got[user]["webhooks"], want[user]["webhooks"], "{user}'s webhooks");
        assert_eq!(got[user]["jobs"], want[user]["jobs"], "{user}'s jobs");
        if want[user].get("secrets").is_some() {
            assert_eq!(got[user]["secrets"], want[user]["secrets"], "{user}'s signing keys");
        }
        let (got_d, want_d) = (
            got[user]["dispatches"].as_array().unwrap(),
            want[user]["dispatches"].as_array().unwrap(),
        );
        assert_eq!(got_d.len(), want_d.len(), "{user}'s dispatches");
        for (g, w) in got_d.iter().zip(want_d) {
            // An ACTIVE dispatch is due again on this start, so it may have more calls now
            // (the targets are on loopback, refused here): the stored ones are a prefix.
            let mut g = g.clone();
            // Fields a later hookd added (`nextCallAt`, `request`) are not in the old answer;
            // every field that was must read back the same.
            if let (Some(got), Some(want)) = (g.as_object_mut(), w.as_object()) {
                got.retain(|k, _| want.contains_key(k));
            }
            let calls = w["calls"].as_array().unwrap().len();
            if w["status"] == "ACTIVE" {
                g["calls"] = Value::Array(g["calls"].as_array().unwrap()[..calls].to_vec());
                g["status"] = w["status"].clone();
                // Due again on this start: its next call is rescheduled.
                if g.get("nextCallAt").is_some() {
                    g["nextCallAt"] = w["nextCallAt"].clone();
                }
            }
            assert_eq!(&g, w, "{user}'s dispatch");
        }
    }
    // The status indexes the migration built (schema 8) list what the records say.
    for token in [ALICE_TOKEN, BOB_TOKEN] {
        wait_until(Duration::from_secs(10), "the filtered lists to agree", || {
            filters_agree(&d, token).then_some(())
        });
    }
    // Schema 9 versioned event answers and job reports: a replayed key answers as the first
    // time (no new dispatch), and a job report compares with the status the migration kept (the
    // same status again raises nothing; a lost status would raise the run's first events).
    let known: Vec<Value> = d.all_dispatches(ALICE_TOKEN).iter().map(|i| i["id"].clone()).collect();
    let mut keyed = run_event("ACTOR.RUN.SUCCEEDED", "fx-actor", Some("fx-task"), "fx-run-1");
    keyed["idempotencyKey"] = json!("fx-event-1");
    let answer = d.post_events(ALICE_TOKEN, &keyed);
    let replayed = answer["dispatchIds"].as_array().expect("an answer with dispatchIds");
    assert!(!replayed.is_empty() && replayed.iter().all(|i| known.contains(i)), "{answer}");
    let job = &want[ALICE]["jobs"][0]["data"];
    let r = d.req("PUT", JOBS[0], Some(ALICE_TOKEN), Some(job));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(d.all_dispatches(ALICE_TOKEN).len(), known.len(), "no dispatch was added");
    assert!(d.log().contains("the last run closed the store cleanly"), "{}", d.log());
    let now = hookd::store::SCHEMA_VERSION;
    if version < now {
        let line = format!("migrated the store schema_version={now}");
        assert!(d.log().contains(&line), "{}", d.log());
    }
}

/// Whether every filtered list (the user's and each webhook's, by status and by event type)
/// lists, in order and with its total, what the unfiltered list shows with that status or type.
/// (A status can change between the reads: ACTIVE ones are called again on this start.)
fn filters_agree(d: &TestDaemon, token: &str) -> bool {
    let all = d.all_dispatches(token);
    let ids_where = |items: &[Value], key: &str, value: &Value| -> Vec<Value> {
        items.iter().filter(|i| &i[key] == value).map(|i| i["id"].clone()).collect()
    };
    let listed = |path: String| -> Option<(u64, Vec<Value>)> {
        let r = d.req("GET", &path, Some(token), None);
        let data = r.json()["data"].clone();
        let ids = data["items"].as_array()?.iter().map(|i| i["id"].clone()).collect();
        Some((data["total"].as_u64()?, ids))
    };
    let mut webhooks: Vec<&str> = all.iter().filter_map(|i| i["webhookId"].as_str()).collect();
    webhooks.sort_unstable();
    webhooks.dedup();
    let mut filters: Vec<(&str, Value)> =
        ["ACTIVE", "SUCCEEDED", "FAILED"].into_iter().map(|s| ("status", json!(s))).collect();
    for t in all.iter().map(|i| i["eventType"].clone()) {
        if !filters.contains(&("eventType", t.clone())) {
            filters.push(("eventType", t));
        }
    }
    for (key, value) in &filters {
        let v = value.as_str().unwrap_or_default();
        let want = ids_where(&all, key, value);
        let path = format!("/v2/webhook-dispatches?limit=1000&{key}={v}");
        if listed(path) != Some((want.len() as u64, want)) {
            return false;
        }
        for w in &webhooks {
            let plain = format!("/v2/webhooks/{w}/dispatches?limit=1000");
            let Some((_, ids)) = listed(plain.clone()) else { continue }; // deleted: 404
            let mine: Vec<Value> = all.iter().filter(|i| ids.contains(&i["id"])).cloned().collect();
            let want = ids_where(&mine, key, value);
            if listed(format!("{plain}&{key}={v}")) != Some((want.len() as u64, want)) {
                return false;
            }
        }
    }
    true
}

/// Retention works on a migrated v4 store: its ended dispatches (listed by the migration) go,
/// the ACTIVE ones stay.
#[test]
fn retention_deletes_the_ended_dispatches_of_a_migrated_v4_store() {
    retention_deletes_ended(4);
}

#[test]
fn retention_deletes_the_ended_dispatches_of_a_migrated_v5_store() {
    retention_deletes_ended(5);
}

#[test]
fn retention_deletes_the_ended_dispatches_of_a_migrated_v6_store() {
    retention_deletes_ended(6);
}

fn retention_deletes_ended(version: u64) {
    let (store, shown_file) = fixture(version);
    let d = TestDaemon::start_on_store("[retention]\nfinished_max_age_ms = 1\n", &store);
    let want: Value = serde_json::from_str(&std::fs::read_to_string(shown_file).unwrap()).unwrap();
    let mut ended = 0;
    for (user, token) in [(ALICE, ALICE_TOKEN), (BOB, BOB_TOKEN)] {
        for w in want[user]["dispatches"].as_array().unwrap() {
            let id = w["id"].as_str().unwrap();
            let path = format!("/v2/webhook-dispatches/{id}");
            if w["status"] == "ACTIVE" {
                assert_eq!(d.req("GET", &path, Some(token), None).status, 200, "{id} stays");
            } else {
                ended += 1;
                wait_until(Duration::from_secs(30), &format!("{id} to be deleted"), || {
                    (d.req("GET", &path, Some(token), None).status == 404).then_some(())
                });
            }
        }
    }
    assert!(ended > 0, "the fixture has ended dispatches");
}

#[test]
fn retention_deletes_the_ended_dispatches_of_a_v7_store() {
    retention_deletes_ended(7);
}

#[test]
fn retention_deletes_the_ended_dispatches_of_a_v8_store() {
    retention_deletes_ended(8);
}
