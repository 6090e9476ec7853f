//! Several hookd nodes on one PostgreSQL database, through the API: each serves the whole API
//! and reads what the others acknowledged, and delivery is split between them with each
//! dispatch delivered once (no node is killed here; tests/it/crash.rs kills them).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use crate::clients::on_postgres;
use crate::support::receiver::{Receiver, Reply};
use crate::support::*;

/// The `postgres_url` of a daemon config.
fn database_url(config: &str) -> String {
    let line = config.lines().find(|l| l.starts_with("postgres_url")).expect("a postgres_url");
    line.split('"').nth(1).expect("a quoted URL").to_string()
}

const CONFIG: &str = "[delivery]\nallow_private_targets = true\nretry_delays_ms = [20, 20, 20]\n";

#[test]
fn two_nodes_share_the_api_and_deliver_each_dispatch_once() {
    let Some(config) = on_postgres("two_nodes", CONFIG) else { return };
    // The default lease TTL (15 s): a node stalled under the test run's load keeps its shards.
    let a = TestDaemon::start(&config);
    let b = TestDaemon::start(&config);
    // Once both hold their half of the shards no lease moves, so no call is made twice.
    let url = database_url(&config);
    wait_until(Duration::from_secs(40), "the shards to split between the nodes", || {
        let split = crate::support::postgres::psql(
            &url,
            "SELECT string_agg(n::text, ',') FROM (SELECT count(*) AS n FROM shard_leases
             WHERE expires_at > now() GROUP BY owner) c",
        );
        (split == "32,32").then_some(())
    });
    // Many targets (ports), so that the shards of both nodes have work.
    let receivers: Vec<Receiver> =
        (0..8).map(|_| Receiver::start(0, |_, _| Reply::Status(200))).collect();
    let mut webhooks = Vec::new();
    for (i, rx) in receivers.iter().enumerate() {
        let node = if i % 2 == 0 { &a } else { &b };
        webhooks.push(node.create_webhook(ALICE_TOKEN, &webhook_body("shared", &rx.url("/hook"))));
    }
    // Each node reads the other's webhooks at once.
    for id in &webhooks {
        for node in [&a, &b] {
            let r = node.req("GET", &format!("/v2/webhooks/{id}"), Some(ALICE_TOKEN), None);
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    assert_eq!(
        b.req("GET", &format!("/v2/webhooks/{}", webhooks[0]), Some(BOB_TOKEN), None).status,
        404
    );

    // Events through both nodes, one with a key sent to each.
    let mut ids = Vec::new();
    for i in 0..40 {
        let node = if i % 2 == 0 { &a } else { &b };
        let answer = node.post_events(
            ALICE_TOKEN,
            &run_event("ACTOR.RUN.SUCCEEDED", "shared", None, &format!("run-{i}")),
        );
        ids.extend(
            answer["dispatchIds"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string()),
        );
    }
    let mut keyed = run_event("ACTOR.RUN.SUCCEEDED", "shared", None, "run-keyed");
    keyed["idempotencyKey"] = json!("k-1");
    let first = a.post_events(ALICE_TOKEN, &keyed);
    let again = b.post_events(ALICE_TOKEN, &keyed);
    assert_eq!(first, again, "the key answers the first 202 on every node");
    ids.extend(
        first["dispatchIds"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()),
    );
    assert_eq!(ids.len(), 41 * 8);

    let calls = a.wait_all_ended(ALICE_TOKEN, Duration::from_secs(60));
    assert_eq!(calls, ids.len(), "one call per dispatch");
    let mut delivered: HashMap<String, usize> = HashMap::new();
    for rx in &receivers {
        for r in rx.received() {
            let id = r.header("x-apify-webhook-dispatch-id").unwrap_or_default().to_string();
            *delivered.entry(id).or_default() += 1;
        }
    }
    assert_eq!(delivered.len(), ids.len(), "every dispatch arrived");
    assert!(delivered.values().all(|n| *n == 1), "each once");
    for node in [&a, &b] {
        let d = node.dispatch(ALICE_TOKEN, &ids[0]);
        assert_eq!(d["status"], "SUCCEEDED", "{d}");
    }
}
