//! Crash torture: the real binary under concurrent event load, a receiver that fails a share of
//! calls, SIGKILL at seeded random moments, restart, N cycles; then everything drains and every
//! acknowledged event is checked: each of its dispatches was delivered at least once, or is
//! FAILED with all its calls recorded; nothing arrived that was neither acknowledged nor in
//! flight at a kill; duplicate deliveries are counted and bounded by the calls a kill can
//! orphan. Retention runs with a short window, so ended dispatches are deleted between and
//! across the kills: a deleted one must have been delivered, or failed every call, as the
//! receiver saw it. On failure it prints the seed.
//!
//! `TORTURE_CYCLES` (default 5), `TORTURE_EVENTS` per cycle (default 300), `TORTURE_SEED`
//! (default 1), `TORTURE_FAIL_PERCENT` (default 20).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::receiver::{Receiver, Reply};
use crate::support::*;

pub(crate) fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// splitmix64: a seeded stream for the kill moments and the receiver's failures.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(crate) const RETRY_DELAYS: &str = "[20, 40, 80, 160, 320, 640]";
pub(crate) const CALLS_MAX: usize = 7;
const INFLIGHT_MAX: usize = 64;
/// Ended dispatches older than this are deleted while the torture runs.
const RETENTION_MS: u64 = 100;

#[derive(Default)]
pub(crate) struct Ledger {
    /// marker -> dispatch ids, for events that got a 202.
    pub acked: HashMap<String, Vec<String>>,
    /// markers of requests that were sent but got no answer (in flight at a kill), or an
    /// error while the database was down (committed or not).
    pub in_flight: HashSet<String>,
    /// 5xx answers (the database was down).
    pub server_errors: usize,
}

#[test]
fn crash_torture() {
    let seed = env_or("TORTURE_SEED", 1);
    let cycles = env_or("TORTURE_CYCLES", 5);
    let per_cycle = env_or("TORTURE_EVENTS", 300) as usize;
    let fail_percent = env_or("TORTURE_FAIL_PERCENT", 20);
    let result = std::panic::catch_unwind(|| torture(seed, cycles, per_cycle, fail_percent));
    if let Err(e) = result {
        eprintln!(
            "crash torture failed with TORTURE_SEED={seed} TORTURE_CYCLES={cycles} TORTURE_EVENTS={per_cycle}"
        );
        std::panic::resume_unwind(e);
    }
}

fn torture(seed: u64, cycles: u64, per_cycle: usize, fail_percent: u64) {
    // The answer to request number n (in arrival order) is a function of the seed and n, so
    // the checks below can replay it.
    let rx = Receiver::start(0, move |_, n| {
        if mix(seed ^ mix(n as u64)) % 100 < fail_percent {
            Reply::Status(500)
        } else {
            Reply::Status(200)
        }
    });
    // Folds of the per-webhook data every 64 dispatches, so that kills land around them.
    let mut d = TestDaemon::start(&format!(
        "[delivery]\nallow_private_targets = true\nretry_delays_ms = {RETRY_DELAYS}\ninflight_max = {INFLIGHT_MAX}\nper_target_inflight_max = {INFLIGHT_MAX}\n[limits]\nwebhook_pending_max = 64\n[retention]\nfinished_max_age_ms = {RETENTION_MS}\n"
    ));
    let hook = d.create_webhook(ALICE_TOKEN, &webhook_body("A", &rx.url("/")));
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    for cycle in 0..cycles {
        let load = Load::start(&[d.addr], 1, cycle, &ledger, false);
        // Kill at a seeded moment: after a seeded share of this cycle's events.
        let kill_after =
            per_cycle / 2 + (mix(seed ^ (cycle + 1)) as usize % (per_cycle / 2).max(1));
        load.wait_acked(kill_after);
        d.kill9();
        load.stop();
        d.restart();
    }
    let ledger = ledger.lock().unwrap();
    let acked_events = ledger.acked.len();
    let acked_ids: HashSet<&String> = ledger.acked.values().flatten().collect();
    assert_eq!(acked_ids.len(), acked_events, "one webhook: one dispatch per event");

    // What the receiver saw: per dispatch id, the answers (replaying the seeded script).
    let answers = |received: &[crate::support::receiver::Received]| {
        let mut by_id: HashMap<String, Vec<bool>> = HashMap::new();
        for (n, r) in received.iter().enumerate() {
            let ok = mix(seed ^ mix(n as u64)) % 100 >= fail_percent;
            by_id
                .entry(r.header("x-apify-webhook-dispatch-id").unwrap_or("").to_string())
                .or_default()
                .push(ok);
        }
        by_id
    };
    // Ended as the receiver saw it: delivered once, or every call failed.
    let seen_ended = |v: &Vec<bool>| v.iter().any(|ok| *ok) || v.len() >= CALLS_MAX;

    // Drain: every stored dispatch ends; an acknowledged one not stored any more was deleted
    // by retention, which the receiver must have seen end.
    let mut ended: HashMap<String, Value> = HashMap::new();
    let mut listed_ids: HashSet<String> = HashSet::new();
    wait_until(Duration::from_secs(300), "every acknowledged dispatch to end", || {
        ended.clear();
        listed_ids.clear();
        let mut active = 0;
        for i in d.all_dispatches(ALICE_TOKEN) {
            let id = i["id"].as_str().unwrap().to_string();
            listed_ids.insert(id.clone());
            if i["status"] == "ACTIVE" {
                active += 1;
            } else {
                ended.insert(id, i);
            }
        }
        let seen = answers(&rx.received());
        let acked_done = acked_ids.iter().all(|id| {
            ended.contains_key(*id)
                || (!listed_ids.contains(*id) && seen.get(*id).is_some_and(seen_ended))
        });
        (active == 0 && acked_done).then_some(())
    });

    // The webhook's stats and lists count every dispatch once, across the kills and the
    // deletes: the acknowledged ones, those committed while a kill cut off their answer (the
    // receiver or the list shows them), nothing else.
    let received = rx.received();
    let statuses = answers(&received);
    let every_id: HashSet<&String> =
        acked_ids.iter().copied().chain(statuses.keys()).chain(listed_ids.iter()).collect();
    let w = d.req("GET", &format!("/v2/webhooks/{hook}"), Some(ALICE_TOKEN), None).json()["data"]
        .clone();
    assert_eq!(w["stats"]["totalDispatches"], every_id.len(), "{w}");
    let listed = d
        .req("GET", &format!("/v2/webhooks/{hook}/dispatches?limit=1"), Some(ALICE_TOKEN), None)
        .json()["data"]["total"]
        .clone();
    assert_eq!(listed, listed_ids.len());
    let deleted = acked_ids.iter().filter(|id| !listed_ids.contains(**id)).count();

    let mut lost = Vec::new();
    let mut failed = 0;
    for id in &acked_ids {
        let delivered = statuses.get(*id).is_some_and(|v| v.iter().any(|ok| *ok));
        let Some(d) = ended.get(*id) else {
            // Deleted by retention: the drain checked the receiver saw it end.
            continue;
        };
        match d["status"].as_str() {
            Some("SUCCEEDED") if delivered => {}
            Some("FAILED") if d["calls"].as_array().unwrap().len() == CALLS_MAX => failed += 1,
            _ => lost.push(id.to_string()),
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged dispatches lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    ledger.check_only_posted_events_arrived(&received);
    let duplicates = duplicate_successes(&statuses);
    let unacked_delivered: HashSet<String> = received
        .iter()
        .map(|r| r.json()["resource"]["marker"].as_str().unwrap_or("").to_string())
        .filter(|m| !ledger.acked.contains_key(m))
        .collect();
    // A duplicate success needs a call whose outcome a kill cut off: at most the calls in flight.
    assert!(
        duplicates <= cycles as usize * INFLIGHT_MAX,
        "{duplicates} duplicate deliveries, more than {cycles} kills can orphan"
    );
    println!(
        "crash torture seed {seed}: {cycles} kill cycles, {acked_events} events acknowledged, 0 lost, \
         {deleted} deleted by retention, \
         {failed} FAILED after {CALLS_MAX} calls, {duplicates} duplicate deliveries, \
         {} deliveries of events in flight at a kill, {} calls in all",
        unacked_delivered.len(),
        received.len()
    );
}

impl Ledger {
    /// Every delivery carries an event that was acknowledged or in flight.
    pub(crate) fn check_only_posted_events_arrived(
        &self,
        received: &[crate::support::receiver::Received],
    ) {
        for r in received {
            let marker = r.json()["resource"]["marker"].as_str().unwrap_or("").to_string();
            assert!(
                self.acked.contains_key(&marker) || self.in_flight.contains(&marker),
                "{marker} was delivered but never acknowledged nor in flight"
            );
        }
    }
}

/// Successful calls beyond the first, over dispatch ids mapped to their calls' successes.
pub(crate) fn duplicate_successes(statuses: &HashMap<String, Vec<bool>>) -> usize {
    statuses.values().map(|v| v.iter().filter(|ok| **ok).count().saturating_sub(1)).sum()
}

/// Four threads posting single events and small arrays (to the daemons given, in turn) until
/// stopped; each acknowledged marker goes to the ledger with its dispatch ids.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    acked_now: Arc<AtomicUsize>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// `server_errors_expected`: a 5xx (the database is down) leaves the events in flight and
    /// the worker carries on; otherwise it fails the test.
    /// Events name `actors` actors in turn: `A` for one, else `A0`, `A1`...
    pub(crate) fn start(
        addrs: &[std::net::SocketAddr],
        actors: usize,
        cycle: u64,
        ledger: &Arc<Mutex<Ledger>>,
        server_errors_expected: bool,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked_now = Arc::new(AtomicUsize::new(0));
        let workers = (0..4)
            .map(|w| {
                let (ledger, stop, acked_now) = (ledger.clone(), stop.clone(), acked_now.clone());
                let addr = addrs[w % addrs.len()];
                std::thread::spawn(move || {
                    let poster = Poster { addr, actors, cycle, worker: w, server_errors_expected };
                    poster.post_until_stopped(&ledger, &stop, &acked_now)
                })
            })
            .collect();
        Load { stop, acked_now, workers }
    }

    /// Waits until `n` events were acknowledged since the start.
    pub(crate) fn wait_acked(&self, n: usize) {
        wait_until(Duration::from_secs(180), "events acknowledged this cycle", || {
            (self.acked_now.load(Ordering::SeqCst) >= n).then_some(())
        });
    }

    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers {
            w.join().unwrap();
        }
    }
}

struct Poster {
    addr: std::net::SocketAddr,
    actors: usize,
    cycle: u64,
    worker: usize,
    server_errors_expected: bool,
}

impl Poster {
    fn post_until_stopped(
        &self,
        ledger: &Mutex<Ledger>,
        stop: &AtomicBool,
        acked_now: &AtomicUsize,
    ) {
        let Poster { addr, actors, cycle, worker: w, server_errors_expected } = *self;
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            // Single events and small arrays, mixed.
            let n = if i % 4 == 0 { 5 } else { 1 };
            let markers: Vec<String> = (0..n).map(|k| format!("ev-{cycle}-{w}-{i}-{k}")).collect();
            let events: Vec<Value> = markers
                .iter()
                .map(|m| {
                    let actor =
                        if actors == 1 { "A".to_string() } else { format!("A{}", i % actors) };
                    let mut e = run_event("ACTOR.RUN.SUCCEEDED", &actor, None, m);
                    e["resource"]["marker"] = json!(m);
                    e
                })
                .collect();
            let body = if n == 1 { events[0].clone() } else { Value::Array(events) };
            // From here on the request may reach the daemon: in flight until answered.
            ledger.lock().unwrap().in_flight.extend(markers.iter().cloned());
            let auth = format!("Bearer {ALICE_TOKEN}");
            let r = try_raw_request(
                addr,
                "POST",
                "/v2/webhook-events",
                &[("Authorization", &auth), ("Content-Type", "application/json")],
                body.to_string().as_bytes(),
            );
            match r {
                Ok(r) if r.status == 202 => {
                    let data = r.json()["data"].clone();
                    let answers =
                        if n == 1 { vec![data] } else { data.as_array().unwrap().clone() };
                    let mut l = ledger.lock().unwrap();
                    for (m, a) in markers.iter().zip(answers) {
                        l.in_flight.remove(m);
                        let ids = a["dispatchIds"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|v| v.as_str().unwrap().to_string())
                            .collect();
                        l.acked.insert(m.clone(), ids);
                    }
                    acked_now.fetch_add(n, Ordering::SeqCst);
                }
                Ok(r) if server_errors_expected && r.status >= 500 => {
                    ledger.lock().unwrap().server_errors += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(r) => {
                    panic!("unexpected answer {}: {:?}", r.status, String::from_utf8_lossy(&r.body))
                }
                Err(_) => break, // killed while in flight: stays in `in_flight`
            }
        }
    }
}
