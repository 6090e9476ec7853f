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
    wait_for_the_split(&database_url(&config));
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

/// Waits until the 64 shards are split 32/32 between two live nodes.
fn wait_for_the_split(url: &str) {
    wait_until(Duration::from_secs(40), "the shards to split between the nodes", || {
        let split = crate::support::postgres::psql(
            url,
            "SELECT string_agg(n::text, ',') FROM (SELECT count(*) AS n FROM shard_leases
             WHERE expires_at > now() GROUP BY owner) c",
        );
        (split == "32,32").then_some(())
    });
}

/// A webhook created, disabled or deleted through one node is matched that way by every
/// event the other node acknowledges after it, with no wait: the other node matches from its
/// memory and its write refuses a match made against an index behind the database's.
#[test]
fn an_acknowledged_webhook_write_is_matched_at_once_by_the_other_node() {
    let Some(config) = on_postgres("match_at_once", CONFIG) else { return };
    let a = TestDaemon::start(&config);
    let b = TestDaemon::start(&config);
    let rx = Receiver::start(0, |_, _| Reply::Status(200));
    let dispatches = |node: &TestDaemon, actor: &str| {
        let answer =
            node.post_events(ALICE_TOKEN, &run_event("ACTOR.RUN.SUCCEEDED", actor, None, "r"));
        answer["dispatchIds"].as_array().expect("dispatchIds").len()
    };
    for i in 0..20 {
        let actor = format!("at-once-{i}");
        let (writer, reader) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        // The reader's index is current before the write, as in a busy node.
        assert_eq!(dispatches(reader, &actor), 0);
        let id = writer.create_webhook(ALICE_TOKEN, &webhook_body(&actor, &rx.url("/hook")));
        assert_eq!(dispatches(reader, &actor), 1, "created through the other node (round {i})");
        let off = json!({"isEnabled": false});
        let r = writer.req("PUT", &format!("/v2/webhooks/{id}"), Some(ALICE_TOKEN), Some(&off));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(dispatches(reader, &actor), 0, "disabled through the other node (round {i})");
    }
}

/// An event acknowledged by one node for a target whose shard the other node holds is
/// delivered at once (the other node is told), not on that node's next idle look at the
/// outbox (once a second).
#[test]
fn a_node_is_woken_when_another_node_adds_work_for_it() {
    let Some(config) = on_postgres("wake", CONFIG) else { return };
    let a = TestDaemon::start(&config);
    let b = TestDaemon::start(&config);
    wait_for_the_split(&database_url(&config));
    let rx = Receiver::start(0, |_, _| Reply::Status(200));
    a.create_webhook(ALICE_TOKEN, &webhook_body("wake", &rx.url("/hook")));
    // One node holds the target's shard: events through each node in turn, one at a time, so
    // half of them are acknowledged by the node that does not deliver them.
    let mut waits_ms: [Vec<u128>; 2] = [Vec::new(), Vec::new()];
    for i in 0..30 {
        let before = rx.received().len();
        let sent = std::time::Instant::now();
        let node = if i % 2 == 0 { &a } else { &b };
        node.post_events(ALICE_TOKEN, &run_event("ACTOR.RUN.SUCCEEDED", "wake", None, "r"));
        let arrived = wait_until(Duration::from_secs(10), "the delivery", || {
            rx.received().get(before).map(|r| r.at)
        });
        waits_ms[i % 2].push(arrived.saturating_duration_since(sent).as_millis());
        // Land at different moments of the idle poll.
        std::thread::sleep(Duration::from_millis(37));
    }
    for (node, waits) in ["a", "b"].iter().zip(&mut waits_ms) {
        waits.sort_unstable();
        let median = waits[waits.len() / 2];
        assert!(median < 200, "through node {node}: median {median} ms to delivery ({waits:?})");
    }
}

/// Crash torture on PostgreSQL: two nodes under event load, one receiver per target (six
/// targets, so both nodes hold some) failing a seeded share of calls; one node killed with
/// SIGKILL each cycle (the two in turn) and restarted, and once the database itself stopped
/// with `pg_ctl stop -m immediate` under load and started again. Then every acknowledged
/// dispatch must be SUCCEEDED and seen by its receiver, or FAILED after every call; nothing
/// arrives that was neither acknowledged nor in flight; duplicates are counted.
///
/// `PG_TORTURE_CYCLES` (default 4), `PG_TORTURE_EVENTS` per cycle (default 300),
/// `TORTURE_SEED` (default 1).
#[test]
fn two_nodes_kill9_and_a_database_crash_lose_no_acknowledged_event() {
    use crate::torture::{CALLS_MAX, Ledger, Load, RETRY_DELAYS, env_or, mix};
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    let Some(server) = crate::support::postgres::PrivateServer::start("pg_torture") else {
        return;
    };
    let seed = env_or("TORTURE_SEED", 1);
    let cycles = env_or("PG_TORTURE_CYCLES", 4).max(2);
    let per_cycle = env_or("PG_TORTURE_EVENTS", 300) as usize;
    const TARGETS: usize = 6;
    const FAIL_PERCENT: u64 = 20;
    let receivers: Vec<Receiver> = (0..TARGETS as u64)
        .map(|t| {
            Receiver::start(0, move |_, n| {
                if mix(seed ^ mix(n as u64) ^ t) % 100 < FAIL_PERCENT {
                    Reply::Status(500)
                } else {
                    Reply::Status(200)
                }
            })
        })
        .collect();
    let config = format!(
        "[delivery]\nallow_private_targets = true\nretry_delays_ms = {RETRY_DELAYS}\ninflight_max = 64\nper_target_inflight_max = 16\n[store]\nbackend = \"postgres\"\npostgres_url = \"{}\"\nlease_ttl_ms = 3000\n",
        server.url()
    );
    let mut nodes = [TestDaemon::start(&config), TestDaemon::start(&config)];
    for (t, rx) in receivers.iter().enumerate() {
        nodes[t % 2].create_webhook(ALICE_TOKEN, &webhook_body(&format!("A{t}"), &rx.url("/")));
    }
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let db_crash_cycle = cycles / 2;
    for cycle in 0..cycles {
        let addrs = [nodes[0].addr, nodes[1].addr];
        let load = Load::start(&addrs, TARGETS, cycle, &ledger, true);
        let kill_after =
            per_cycle / 2 + (mix(seed ^ (cycle + 1)) as usize % (per_cycle / 2).max(1));
        if cycle == db_crash_cycle {
            load.wait_acked(kill_after / 2);
            server.crash();
            std::thread::sleep(Duration::from_secs(1));
            server.resume();
        }
        // Under way again after the database came back (or simply: this cycle's share).
        load.wait_acked(kill_after);
        let victim = usize::try_from(cycle % 2).unwrap();
        nodes[victim].kill9();
        load.stop();
        nodes[victim].restart();
    }
    let ledger = ledger.lock().unwrap();
    let acked_ids: HashSet<&String> = ledger.acked.values().flatten().collect();
    assert_eq!(acked_ids.len(), ledger.acked.len(), "one dispatch per event");

    // Per dispatch id, the answers its receiver gave (replaying each receiver's script).
    let answers = || {
        let mut by_id: HashMap<String, Vec<bool>> = HashMap::new();
        for (t, rx) in receivers.iter().enumerate() {
            for (n, r) in rx.received().iter().enumerate() {
                let ok = mix(seed ^ mix(n as u64) ^ t as u64) % 100 >= FAIL_PERCENT;
                let id = r.header("x-apify-webhook-dispatch-id").unwrap_or("").to_string();
                by_id.entry(id).or_default().push(ok);
            }
        }
        by_id
    };
    let mut ended: HashMap<String, serde_json::Value> = HashMap::new();
    wait_until(Duration::from_secs(300), "every acknowledged dispatch to end", || {
        let all = nodes[0].all_dispatches(ALICE_TOKEN);
        let active = all.iter().filter(|d| d["status"] == "ACTIVE").count();
        ended = all
            .into_iter()
            .filter(|d| d["status"] != "ACTIVE")
            .map(|d| (d["id"].as_str().unwrap().to_string(), d))
            .collect();
        (active == 0 && acked_ids.iter().all(|id| ended.contains_key(*id))).then_some(())
    });
    let statuses = answers();
    let (mut lost, mut failed) = (Vec::new(), 0);
    for id in &acked_ids {
        let delivered = statuses.get(*id).is_some_and(|v| v.iter().any(|ok| *ok));
        let d = &ended[*id];
        match d["status"].as_str() {
            Some("SUCCEEDED") if delivered => {}
            Some("FAILED") if d["calls"].as_array().unwrap().len() == CALLS_MAX => failed += 1,
            _ => lost.push(format!("{id}: {d}")),
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged dispatches lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(3)]
    );
    let mut received = 0;
    for rx in &receivers {
        let arrived = rx.received();
        received += arrived.len();
        ledger.check_only_posted_events_arrived(&arrived);
    }
    let duplicates = crate::torture::duplicate_successes(&statuses);
    let unacked = ended.len() - acked_ids.len();
    println!(
        "PostgreSQL crash torture seed {seed}: 2 nodes, {cycles} kill cycles and 1 database crash, \
         {} events acknowledged, 0 lost, {failed} FAILED after {CALLS_MAX} calls, \
         {duplicates} duplicate deliveries, {unacked} stored events whose answer a kill or the \
         database crash cut off, {} answers 5xx while the database was down, {received} calls in all",
        ledger.acked.len(),
        ledger.server_errors
    );
}
