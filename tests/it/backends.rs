//! One store-level suite run against every backend: redb on a temp file, and PostgreSQL on a
//! fresh database of the server the test command started (support/postgres.rs; where there is
//! none the PostgreSQL half says it is skipped, never under CI). Each check drives `Store` as
//! the API does and asserts what it answers; then the PostgreSQL-only checks: several stores
//! (nodes) on one database, and a schema newer than the binary's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hookd::delivery::Scheduler;
use hookd::model::{Call, Decision, Dispatch, DispatchStatus, JobKind};
use hookd::model::{
    Change, Condition, ConditionKind, EventData, EventType, Webhook, WebhookDraft, WebhookPatch,
};
use hookd::store::{
    DispatchFilter, DispatchScope, EncodedEvent, EventAnswer, Freshness, JobReport, NewEvent,
    PageRequest, Store, StoreError, StoreLimits, WebhookScope,
};

use crate::support::postgres;

type Check = fn(Store) -> Pin<Box<dyn Future<Output = ()> + Send>>;

fn limits() -> StoreLimits {
    StoreLimits {
        write_queue_max: 1024,
        write_batch_max: 64,
        cache_bytes: 4 << 20,
        webhook_pending_max: 7,
        finished_max_age_ms: 0,
        store_bytes_max: 0,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn on_redb(check: Check) {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let (store, writer) = Store::open(&dir.path().join("s.redb"), limits()).unwrap();
        check(store).await;
        writer.close().await;
    });
}

fn on_postgres(test: &str, check: Check) {
    let Some(url) = postgres::fresh_database(test) else { return };
    runtime().block_on(async {
        let (store, writer) = Store::open_postgres(&url, 4, 15_000, limits()).await.unwrap();
        check(store).await;
        writer.close().await;
    });
}

/// A test per backend for each check.
macro_rules! on_every_backend {
    ($($check:ident),* $(,)?) => {
        $(mod $check {
            #[test]
            fn redb() {
                super::on_redb(|s| Box::pin(super::$check(s)));
            }
            #[test]
            fn postgres() {
                super::on_postgres(stringify!($check), |s| Box::pin(super::$check(s)));
            }
        })*
    };
}

on_every_backend!(
    webhooks_are_stored_listed_changed_and_deleted_per_user,
    a_repeated_idempotency_key_answers_the_first_webhook,
    the_webhook_limit_holds_and_frees_on_delete,
    signing_keys_rotate_with_an_overlap,
    matching_follows_creates_updates_and_deletes,
    ingest_stores_what_the_webhooks_still_take,
    a_repeated_event_key_answers_the_first_202,
    job_reports_are_compare_and_set,
    due_work_is_taken_once_and_its_outcomes_recorded,
    deleting_a_webhook_ends_its_active_dispatches,
    a_call_in_flight_when_its_webhook_is_deleted_leaves_the_dispatch_failed,
    an_ended_dispatch_is_delivered_again_on_request,
    a_small_bulk_redelivery_is_not_held_behind_a_large_one,
);

const ALICE: &str = "alice";
const BOB: &str = "bob";

fn draft(actor: &str, key: Option<&str>) -> WebhookDraft {
    WebhookDraft {
        event_types: vec![EventType::RunSucceeded],
        condition: Condition { actor_id: Some(actor.into()), ..Condition::default() },
        request_url: "http://127.0.0.1:9/hook".into(),
        idempotency_key: key.map(String::from),
        ..WebhookDraft::default()
    }
}

fn webhook(user: &str, created_ms: u64, d: WebhookDraft) -> Webhook {
    Webhook::create(hookd::sys::new_id().unwrap(), user.into(), d, created_ms).unwrap()
}

const ALL: PageRequest = PageRequest { offset: 0, limit: 100, desc: false };

async fn ids(
    store: &Store,
    user: &str,
    scope: WebhookScope,
    page: PageRequest,
) -> (u64, Vec<String>) {
    let p = store.list_webhooks(user.into(), scope, page).await.unwrap();
    (p.total, p.items.into_iter().map(|(w, _)| w.id).collect())
}

async fn webhooks_are_stored_listed_changed_and_deleted_per_user(store: Store) {
    let a = store.create_webhook(webhook(ALICE, 1, draft("x", None)), 10).await.unwrap().webhook;
    let mut task = draft("x", None);
    task.condition = Condition { actor_task_id: Some("t".into()), ..Condition::default() };
    task.is_enabled = false;
    let b = store.create_webhook(webhook(ALICE, 2, task), 10).await.unwrap().webhook;
    let c = store.create_webhook(webhook(BOB, 3, draft("x", None)), 10).await.unwrap().webhook;

    let (got, stats) = store.get_webhook(ALICE.into(), a.id.clone()).await.unwrap().unwrap();
    assert_eq!(got, a);
    assert_eq!((stats.total_dispatches, stats.last_dispatch), (0, None));
    assert!(store.get_webhook(BOB.into(), a.id.clone()).await.unwrap().is_none(), "Bob's view");
    assert_eq!(
        ids(&store, ALICE, WebhookScope::All, ALL).await,
        (2, vec![a.id.clone(), b.id.clone()])
    );
    let desc = PageRequest { offset: 1, limit: 1, desc: true };
    assert_eq!(ids(&store, ALICE, WebhookScope::All, desc).await, (2, vec![a.id.clone()]));
    let by_actor = WebhookScope::Condition(ConditionKind::Actor, "x".into());
    assert_eq!(ids(&store, ALICE, by_actor.clone(), ALL).await, (1, vec![a.id.clone()]));
    assert_eq!(ids(&store, BOB, by_actor.clone(), ALL).await, (1, vec![c.id.clone()]));
    let by_task = WebhookScope::Condition(ConditionKind::ActorTask, "t".into());
    assert_eq!(ids(&store, ALICE, by_task, ALL).await, (1, vec![b.id.clone()]));

    let patch = WebhookPatch {
        description: Change::Set("changed".into()),
        condition: Change::Set(Condition { actor_id: Some("y".into()), ..Condition::default() }),
        ..WebhookPatch::default()
    };
    let refused = store.update_webhook(BOB.into(), a.id.clone(), patch.clone(), 10).await;
    assert!(matches!(refused, Err(StoreError::NotFound)), "{refused:?}");
    let (changed, _) = store.update_webhook(ALICE.into(), a.id.clone(), patch, 10).await.unwrap();
    assert_eq!(changed.description.as_deref(), Some("changed"));
    assert_eq!(changed.modified_ms, 10);
    let (got, _) = store.get_webhook(ALICE.into(), a.id.clone()).await.unwrap().unwrap();
    assert_eq!(got, changed);
    assert_eq!(ids(&store, ALICE, by_actor, ALL).await, (0, vec![]), "listed under its new actor");
    let by_y = WebhookScope::Condition(ConditionKind::Actor, "y".into());
    assert_eq!(ids(&store, ALICE, by_y, ALL).await, (1, vec![a.id.clone()]));
    let ad_hoc = WebhookPatch { is_ad_hoc: Change::Set(true), ..WebhookPatch::default() };
    let refused = store.update_webhook(ALICE.into(), a.id.clone(), ad_hoc, 11).await;
    assert!(matches!(refused, Err(StoreError::Invalid(_))), "{refused:?}");

    let refused = store.delete_webhook(BOB.into(), a.id.clone(), 12).await;
    assert!(matches!(refused, Err(StoreError::NotFound)), "{refused:?}");
    store.delete_webhook(ALICE.into(), a.id.clone(), 12).await.unwrap();
    assert!(store.get_webhook(ALICE.into(), a.id.clone()).await.unwrap().is_none());
    assert_eq!(ids(&store, ALICE, WebhookScope::All, ALL).await, (1, vec![b.id.clone()]));
    let again = store.delete_webhook(ALICE.into(), a.id.clone(), 13).await;
    assert!(matches!(again, Err(StoreError::NotFound)), "{again:?}");
}

async fn a_repeated_idempotency_key_answers_the_first_webhook(store: Store) {
    let first = store.create_webhook(webhook(ALICE, 1, draft("x", Some("k"))), 10).await.unwrap();
    assert!(!first.replayed);
    let second = store.create_webhook(webhook(ALICE, 2, draft("z", Some("k"))), 10).await.unwrap();
    assert!(second.replayed);
    assert_eq!(second.webhook, first.webhook);
    // Keys are per user.
    let bobs = store.create_webhook(webhook(BOB, 3, draft("x", Some("k"))), 10).await.unwrap();
    assert!(!bobs.replayed);
    assert_eq!(ids(&store, ALICE, WebhookScope::All, ALL).await.0, 1);
}

async fn the_webhook_limit_holds_and_frees_on_delete(store: Store) {
    let a = store.create_webhook(webhook(ALICE, 1, draft("x", None)), 2).await.unwrap().webhook;
    store.create_webhook(webhook(ALICE, 2, draft("x", None)), 2).await.unwrap();
    let over = store.create_webhook(webhook(ALICE, 3, draft("x", None)), 2).await;
    assert!(matches!(over, Err(StoreError::TooManyWebhooks(2))), "{over:?}");
    store.create_webhook(webhook(BOB, 4, draft("x", None)), 2).await.expect("Bob has his own");
    store.delete_webhook(ALICE.into(), a.id, 5).await.unwrap();
    store.create_webhook(webhook(ALICE, 6, draft("x", None)), 2).await.expect("room again");
    assert_eq!(ids(&store, ALICE, WebhookScope::All, ALL).await.0, 2);
}

async fn signing_keys_rotate_with_an_overlap(store: Store) {
    let a = store.create_webhook(webhook(ALICE, 1, draft("x", None)), 10).await.unwrap().webhook;
    let keys = store.signing_keys(ALICE.into(), a.id.clone()).await.unwrap().expect("keys");
    assert_eq!(keys.current.len(), 32);
    assert!(keys.previous.is_none());
    assert!(store.signing_keys(BOB.into(), a.id.clone()).await.unwrap().is_none());
    let refused = store.rotate_signing_key(BOB.into(), a.id.clone(), None, 100, 50).await;
    assert!(matches!(refused, Err(StoreError::NotFound)), "{refused:?}");
    let rotated = store
        .rotate_signing_key(ALICE.into(), a.id.clone(), Some(vec![7; 32]), 100, 50)
        .await
        .unwrap();
    assert_eq!(rotated.current, vec![7; 32]);
    assert_eq!(rotated.previous, Some((keys.current.clone(), 150)));
    let read = store.signing_keys(ALICE.into(), a.id).await.unwrap().unwrap();
    assert_eq!((read.current, read.previous), (rotated.current, rotated.previous));
}

async fn matched(store: &Store, user: &str, actor: &str) -> Vec<String> {
    let data = EventData { actor_id: actor.into(), ..EventData::default() };
    let keys = [(EventType::RunSucceeded, data)];
    let (found, stamp) =
        store.match_webhooks(user, &keys, 100, Freshness::Checked).await.unwrap().unwrap();
    assert_eq!(stamp, None, "a checked match needs no check at the write");
    found[0].iter().map(|w: &Arc<Webhook>| w.id.clone()).collect()
}

async fn matching_follows_creates_updates_and_deletes(store: Store) {
    let a = store.create_webhook(webhook(ALICE, 1, draft("x", None)), 10).await.unwrap().webhook;
    assert_eq!(matched(&store, ALICE, "x").await, vec![a.id.clone()]);
    assert!(matched(&store, BOB, "x").await.is_empty());
    let off = WebhookPatch { is_enabled: Change::Set(false), ..WebhookPatch::default() };
    store.update_webhook(ALICE.into(), a.id.clone(), off, 2).await.unwrap();
    assert!(matched(&store, ALICE, "x").await.is_empty(), "disabled");
    let on = WebhookPatch { is_enabled: Change::Set(true), ..WebhookPatch::default() };
    store.update_webhook(ALICE.into(), a.id.clone(), on, 3).await.unwrap();
    assert_eq!(matched(&store, ALICE, "x").await, vec![a.id.clone()]);
    store.delete_webhook(ALICE.into(), a.id, 4).await.unwrap();
    assert!(matched(&store, ALICE, "x").await.is_empty(), "deleted");
}

/// Two stores on one database (two nodes): each reads what the other wrote, racing creates
/// with one idempotency key make one webhook, and racing creates cannot pass the limit.
#[test]
fn postgres_nodes_share_webhooks_and_races_are_resolved_by_the_database() {
    let Some(url) = postgres::fresh_database("postgres_nodes_share") else { return };
    runtime().block_on(async {
        let (a, _wa) = Store::open_postgres(&url, 4, 15_000, limits()).await.unwrap();
        let (b, _wb) = Store::open_postgres(&url, 4, 15_000, limits()).await.unwrap();
        let w = a.create_webhook(webhook(ALICE, 1, draft("x", None)), 10).await.unwrap().webhook;
        let (seen, _) =
            b.get_webhook(ALICE.into(), w.id.clone()).await.unwrap().expect("B reads A's");
        assert_eq!(seen, w);
        // B matches A's acknowledged create at once (its index checks the change count).
        assert_eq!(matched(&b, ALICE, "x").await, vec![w.id.clone()]);
        let off = WebhookPatch { is_enabled: Change::Set(false), ..WebhookPatch::default() };
        a.update_webhook(ALICE.into(), w.id.clone(), off, 2).await.unwrap();
        assert!(matched(&b, ALICE, "x").await.is_empty(), "B sees A's disable at once");
        let on = WebhookPatch { is_enabled: Change::Set(true), ..WebhookPatch::default() };
        a.update_webhook(ALICE.into(), w.id.clone(), on, 3).await.unwrap();

        // An event key raced on both nodes makes one event.
        let racing = (0..6).map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            let e = event(ALICE, 20 + i, Some("race"), &[(&w, EventType::RunSucceeded)]);
            tokio::spawn(async move { s.ingest(vec![e], None).await })
        });
        let mut answers = Vec::new();
        for r in racing {
            answers.push(r.await.unwrap().unwrap().remove(0));
        }
        answers.dedup();
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert_eq!(b.all_dispatches().await.unwrap().len(), 1);

        let creates = (0..8).map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                s.create_webhook(webhook(BOB, 10 + i, draft("x", Some("same"))), 100).await
            })
        });
        let mut ids = Vec::new();
        let mut fresh = 0;
        for c in creates {
            let created = c.await.unwrap().unwrap();
            fresh += usize::from(!created.replayed);
            ids.push(created.webhook.id);
        }
        ids.dedup();
        assert_eq!((fresh, ids.len()), (1, 1), "one webhook for one key");

        let creates = (0..12).map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(
                async move { s.create_webhook(webhook("carol", i, draft("x", None)), 5).await },
            )
        });
        let mut made = 0;
        for c in creates {
            match c.await.unwrap() {
                Ok(_) => made += 1,
                Err(StoreError::TooManyWebhooks(5)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(made, 5, "the limit holds across nodes");
        assert_eq!(ids_total(&a, "carol").await, 5);
    });
}

/// Events matched without a check first (`Freshness::AtWrite`) against an index that misses
/// a webhook write another node acknowledged are refused by their write, which stores
/// nothing; matched again after a check, they fire that webhook.
#[test]
fn postgres_a_match_behind_an_acknowledged_webhook_write_is_refused_by_the_write() {
    let Some(url) = postgres::fresh_database("postgres_stale_match") else { return };
    runtime().block_on(async {
        let (a, _wa) = Store::open_postgres(&url, 4, 15_000, limits()).await.unwrap();
        let (b, _wb) = Store::open_postgres(&url, 4, 15_000, limits()).await.unwrap();
        let keys =
            [(EventType::RunSucceeded, EventData { actor_id: "x".into(), ..EventData::default() })];
        let at_write = |s: Store| {
            let keys = keys.clone();
            async move {
                s.match_webhooks(ALICE, &keys, 100, Freshness::AtWrite).await.unwrap().unwrap()
            }
        };
        // B's index is current: its stamp passes.
        let (found, stamp) = at_write(b.clone()).await;
        assert!(found[0].is_empty() && stamp.is_some());
        let e = EncodedEvent::new(event(ALICE, 5, None, &[])).unwrap();
        assert_eq!(b.ingest_encoded(vec![e], None, stamp).await.unwrap().len(), 1);

        // A webhook B has not heard of, matched on B with the stamp taken before it.
        let (found, stale) = at_write(b.clone()).await;
        assert!(found[0].is_empty());
        let w = a.create_webhook(webhook(ALICE, 1, draft("x", None)), 10).await.unwrap().webhook;
        let e = EncodedEvent::new(event(ALICE, 20, Some("k"), &[])).unwrap();
        let refused = b.ingest_encoded(vec![e], None, stale).await;
        assert!(matches!(refused, Err(StoreError::StaleIndex)), "{refused:?}");

        // Matched again after a check, the event fires it: its key was not stored with the
        // refused write (a stored key would answer that write's empty answer again).
        assert_eq!(matched(&b, ALICE, "x").await, vec![w.id.clone()]);
        let e = EncodedEvent::new(event(ALICE, 30, Some("k"), &[(&w, EventType::RunSucceeded)]));
        let answers = b.ingest_encoded(vec![e.unwrap()], None, None).await.unwrap();
        assert_eq!(answers[0].dispatch_ids.len(), 1);
        assert_eq!(b.all_dispatches().await.unwrap().len(), 1);
    });
}

async fn ids_total(store: &Store, user: &str) -> u64 {
    ids(store, user, WebhookScope::All, ALL).await.0
}

/// A database whose hookd schema is newer than this binary's is refused, naming both versions.
#[test]
fn postgres_refuses_a_newer_schema() {
    let Some(url) = postgres::fresh_database("postgres_newer_schema") else { return };
    runtime().block_on(async {
        let (store, writer) = Store::open_postgres(&url, 2, 15_000, limits()).await.unwrap();
        writer.close().await;
        drop(store);
    });
    postgres::psql(&url, "UPDATE hookd_meta SET value = 99 WHERE name = 'schema_version'");
    runtime().block_on(async {
        let refused = Store::open_postgres(&url, 2, 15_000, limits()).await.err().expect("refused");
        let text = refused.to_string();
        assert!(text.contains("99") && text.contains("newer"), "{text}");
    });
}

/// A database left by schema 1 (the outbox was a partial index of `dispatches`, rebuilt here
/// by hand from today's) migrates to today's with its ACTIVE dispatches in the outbox.
#[test]
fn postgres_schema_1_migrates_with_its_waiting_dispatches() {
    let Some(url) = postgres::fresh_database("postgres_schema_1") else { return };
    let (a, waiting, ended) = runtime().block_on(async {
        let (store, writer) = Store::open_postgres(&url, 2, 15_000, limits()).await.unwrap();
        let a = store.create_webhook(webhook(ALICE, 1, draft("x", None)), 10).await.unwrap();
        let a = a.webhook;
        let e1 = event(ALICE, 10, None, &[(&a, EventType::RunSucceeded)]);
        let e2 = event(ALICE, 11, None, &[(&a, EventType::RunSucceeded)]);
        let (ended, waiting) = (e1.dispatches[0].id.clone(), e2.dispatches[0].id.clone());
        store.ingest(vec![e1, e2], None).await.unwrap();
        let mut scheduler = Scheduler::new(16, 1, 8);
        let pass = scheduler.take_due(&store, 11).await.unwrap();
        assert_eq!(pass.calls.len(), 1, "one call per target at a time");
        assert_eq!(pass.calls[0].1.id, ended, "the earliest due goes first");
        store.record_call(ended.clone(), call_at(11, 200), Decision::Succeeded).await.unwrap();
        writer.close().await;
        drop(store);
        // The second is left waiting.
        (a, waiting, ended)
    });
    postgres::psql(
        &url,
        "DROP TABLE outbox;
         DROP TABLE redeliveries;
         DROP TABLE webhook_retained;
         ALTER TABLE webhooks ADD COLUMN retained_count bigint NOT NULL DEFAULT 0,
             ADD COLUMN last_ended_status smallint, ADD COLUMN last_ended_ms bigint;
         DROP INDEX IF EXISTS dispatches_by_time;
         CREATE INDEX IF NOT EXISTS events_by_time ON events (created_ms, id);
         CREATE INDEX dispatches_by_user_status ON dispatches (user_id, status, event_type, id);
         CREATE INDEX dispatches_by_webhook_status
             ON dispatches (webhook_id, status, event_type, id);
         CREATE INDEX dispatches_due ON dispatches (shard, target, next_due_ms, id)
             INCLUDE (user_id) WHERE status = 0;
         CREATE INDEX dispatches_ended ON dispatches (finished_ms, id) WHERE status <> 0;
         UPDATE hookd_meta SET value = 1 WHERE name = 'schema_version';",
    );
    runtime().block_on(async {
        let (store, writer) = Store::open_postgres(&url, 2, 15_000, limits()).await.unwrap();
        let keys = store.outbox_keys().await.unwrap();
        assert_eq!(keys, vec![("http://127.0.0.1:9".to_string(), 11, waiting.clone())]);
        let pass = Scheduler::new(16, 4, 8).take_due(&store, 20).await.unwrap();
        let taken: Vec<&str> = pass.calls.iter().map(|(_, d)| d.id.as_str()).collect();
        assert_eq!(taken, vec![waiting.as_str()]);
        let d = store.get_dispatch(ALICE.into(), ended).await.unwrap().unwrap();
        assert_eq!(d.status, DispatchStatus::Succeeded);
        assert_eq!(d.webhook_id, a.id);
        writer.close().await;
    });
    let version =
        postgres::psql(&url, "SELECT value FROM hookd_meta WHERE name = 'schema_version'");
    assert_eq!(version.trim(), "5");
    let options =
        postgres::psql(&url, "SELECT reloptions FROM pg_class WHERE relname = 'dispatches'");
    assert_eq!(options.trim(), "{fillfactor=50}");
    let by_time = postgres::psql(&url, "SELECT to_regclass('dispatches_by_time') IS NULL");
    assert_eq!(by_time.trim(), "t", "schema 4 drops the index by creation time");
    let events_by_time = postgres::psql(&url, "SELECT to_regclass('events_by_time') IS NULL");
    assert_eq!(events_by_time.trim(), "t", "schema 5 drops the events' index by creation time");
}

/// An event of `user` at `ms` with one dispatch per (webhook, event type) given, as the API
/// renders them (ids in time order).
fn event(user: &str, ms: u64, key: Option<&str>, to: &[(&Webhook, EventType)]) -> NewEvent {
    let dispatches = to
        .iter()
        .map(|(w, event_type)| Dispatch {
            id: hookd::sys::new_time_id(ms).unwrap(),
            user_id: user.into(),
            webhook_id: w.id.clone(),
            created_ms: ms,
            status: DispatchStatus::Active,
            event_type: *event_type,
            event_data_json: Some("{}".into()),
            condition: w.condition.clone(),
            request_url: w.request_url.clone(),
            is_ad_hoc: w.is_ad_hoc,
            ignore_ssl_errors: false,
            do_not_retry: false,
            body: format!("{{\"at\":{ms}}}"),
            headers: vec![("X-At".into(), ms.to_string())],
            calls: vec![],
            next_due_ms: Some(ms),
            finished_ms: None,
            calls_before_redelivery: 0,
        })
        .collect();
    let test = to.iter().all(|(_, t)| *t == EventType::Test) && !to.is_empty();
    NewEvent {
        id: hookd::sys::new_time_id(ms).unwrap(),
        user_id: user.into(),
        created_ms: ms,
        event_type: to.first().map_or(EventType::RunSucceeded, |(_, t)| *t),
        idempotency_key: key.map(String::from),
        record_json: (!test).then(|| "{}".into()),
        dispatches,
    }
}

async fn listed(
    store: &Store,
    user: &str,
    scope: DispatchScope,
    filter: DispatchFilter,
) -> (u64, Vec<String>) {
    let p = store.list_dispatches(user.into(), scope, filter, ALL).await.unwrap();
    (p.total, p.items.into_iter().map(|d| d.id).collect())
}

async fn ingest_stores_what_the_webhooks_still_take(store: Store) {
    let a = store.create_webhook(webhook(ALICE, 1, draft("x", None)), 10).await.unwrap().webhook;
    let mut off = draft("x", None);
    off.is_enabled = false;
    let b = store.create_webhook(webhook(ALICE, 2, off), 10).await.unwrap().webhook;
    let mut once = draft("x", None);
    once.is_ad_hoc = true;
    once.condition = Condition { actor_run_id: Some("r1".into()), ..Condition::default() };
    let c = store.create_webhook(webhook(ALICE, 3, once), 10).await.unwrap().webhook;
    let gone = store.create_webhook(webhook(ALICE, 4, draft("x", None)), 10).await.unwrap().webhook;
    store.delete_webhook(ALICE.into(), gone.id.clone(), 5).await.unwrap();
    let run = EventType::RunSucceeded;

    let e1 = event(ALICE, 10, None, &[(&a, run), (&b, run), (&c, run), (&gone, run)]);
    let want = vec![e1.dispatches[0].clone(), e1.dispatches[2].clone()];
    let e1_id = e1.id.clone();
    let answers = store.ingest(vec![e1], None).await.unwrap();
    let ids: Vec<String> = want.iter().map(|d| d.id.clone()).collect();
    assert_eq!(answers[0].dispatch_ids, ids, "the disabled and the deleted webhook take none");
    assert_eq!((answers[0].id.as_str(), answers[0].created_ms), (e1_id.as_str(), 10));
    let e2 = event(ALICE, 20, None, &[(&a, run), (&c, run)]);
    let e2_first = e2.dispatches[0].id.clone();
    let second = store.ingest(vec![e2], None).await.unwrap();
    assert_eq!(second[0].dispatch_ids, vec![e2_first.clone()], "ad hoc fires once");
    let test = event(ALICE, 30, None, &[(&b, EventType::Test)]);
    let test_id = test.dispatches[0].id.clone();
    let third = store.ingest(vec![test], None).await.unwrap();
    assert_eq!(third[0].dispatch_ids, vec![test_id.clone()], "TEST calls a disabled one");

    for d in &want {
        assert_eq!(store.get_dispatch(ALICE.into(), d.id.clone()).await.unwrap().as_ref(), Some(d));
        assert_eq!(store.get_dispatch(BOB.into(), d.id.clone()).await.unwrap(), None);
    }
    let all = DispatchFilter::default();
    // Lists are in id order (ids of one millisecond in random order).
    let mut mine = [ids.clone(), vec![e2_first.clone(), test_id]].concat();
    mine.sort();
    assert_eq!(listed(&store, ALICE, DispatchScope::User, all).await, (4, mine.clone()));
    assert_eq!(listed(&store, BOB, DispatchScope::User, all).await, (0, vec![]));
    let of_a = DispatchScope::Webhook(a.id.clone());
    let mut a_ids = vec![ids[0].clone(), e2_first];
    a_ids.sort();
    assert_eq!(listed(&store, ALICE, of_a.clone(), all).await, (2, a_ids.clone()));
    assert_eq!(listed(&store, BOB, of_a, all).await, (0, vec![]));
    let tests = DispatchFilter { event_type: Some(EventType::Test), ..DispatchFilter::default() };
    assert_eq!(listed(&store, ALICE, DispatchScope::User, tests).await.0, 1);
    let failed =
        DispatchFilter { status: Some(DispatchStatus::Failed), ..DispatchFilter::default() };
    assert_eq!(listed(&store, ALICE, DispatchScope::User, failed).await.0, 0);
    let page = PageRequest { offset: 1, limit: 2, desc: true };
    let p = store.list_dispatches(ALICE.into(), DispatchScope::User, all, page).await.unwrap();
    let got: Vec<String> = p.items.into_iter().map(|d| d.id).collect();
    assert_eq!((p.total, got), (4, vec![mine[2].clone(), mine[1].clone()]));
    let keys = store.outbox_keys().await.unwrap();
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert!(keys.iter().all(|(t, _, _)| t == "http://127.0.0.1:9"), "{keys:?}");
    let (_, stats) = store.get_webhook(ALICE.into(), a.id.clone()).await.unwrap().unwrap();
    assert_eq!(stats.total_dispatches, 2);
    assert_eq!(stats.last_dispatch.map(|l| l.status), Some(DispatchStatus::Active));
}

async fn a_repeated_event_key_answers_the_first_202(store: Store) {
    let a = store.create_webhook(webhook(ALICE, 1, draft("x", None)), 10).await.unwrap().webhook;
    let run = EventType::RunSucceeded;
    let first: EventAnswer = store
        .ingest(vec![event(ALICE, 10, Some("k"), &[(&a, run)])], None)
        .await
        .unwrap()
        .remove(0);
    let again = store.ingest(vec![event(ALICE, 20, Some("k"), &[(&a, run)])], None).await.unwrap();
    assert_eq!(again, vec![first.clone()]);
    // Twice in one request: the second answers the first.
    let both =
        vec![event(ALICE, 30, Some("j"), &[(&a, run)]), event(ALICE, 31, Some("j"), &[(&a, run)])];
    let answers = store.ingest(both, None).await.unwrap();
    assert_eq!(answers[0], answers[1]);
    // Keys are per user.
    let bobs = store.ingest(vec![event(BOB, 40, Some("k"), &[])], None).await.unwrap();
    assert_ne!(bobs[0].id, first.id);
    assert_eq!(store.all_dispatches().await.unwrap().len(), 2);
}

async fn job_reports_are_compare_and_set(store: Store) {
    let report = |expected: Option<&str>, status: &str| JobReport {
        user_id: ALICE.into(),
        kind: JobKind::Run,
        id: "run-1".into(),
        expected_status: expected.map(String::from),
        status: status.into(),
        object_json: format!("{{\"id\":\"run-1\",\"status\":\"{status}\"}}"),
    };
    store.ingest(vec![], Some(report(None, "RUNNING"))).await.unwrap();
    let raced = store.ingest(vec![], Some(report(None, "RUNNING"))).await;
    assert!(matches!(raced, Err(StoreError::Conflict)), "{raced:?}");
    let stale = store.ingest(vec![], Some(report(Some("READY"), "FAILED"))).await;
    assert!(matches!(stale, Err(StoreError::Conflict)), "{stale:?}");
    store.ingest(vec![], Some(report(Some("RUNNING"), "SUCCEEDED"))).await.unwrap();
    let job = store.get_job(ALICE.into(), JobKind::Run, "run-1".into()).await.unwrap().unwrap();
    assert_eq!(job.status.as_deref(), Some("SUCCEEDED"));
    assert!(job.object_json.contains("SUCCEEDED"), "{}", job.object_json);
    assert!(store.get_job(BOB.into(), JobKind::Run, "run-1".into()).await.unwrap().is_none());
}

fn call_at(ms: u64, status: u16) -> Call {
    Call {
        started_ms: ms,
        finished_ms: ms + 1,
        error_message: None,
        response_status: Some(status),
        response_body: Some("ok".into()),
    }
}

async fn due_work_is_taken_once_and_its_outcomes_recorded(store: Store) {
    let a = store.create_webhook(webhook(ALICE, 1, draft("x", None)), 10).await.unwrap().webhook;
    let e = event(ALICE, 10, None, &[(&a, EventType::RunSucceeded)]);
    let id = e.dispatches[0].id.clone();
    store.ingest(vec![e], None).await.unwrap();
    let mut scheduler = Scheduler::new(16, 4, 8);
    assert!(scheduler.take_due(&store, 5).await.unwrap().calls.is_empty(), "not due yet");
    let pass = scheduler.take_due(&store, 10).await.unwrap();
    let taken: Vec<&str> = pass.calls.iter().map(|(_, d)| d.id.as_str()).collect();
    assert_eq!(taken, vec![id.as_str()]);
    assert_eq!(pass.calls[0].0, "http://127.0.0.1:9");
    assert!(pass.signing.contains_key(&a.id), "the webhook's signing keys come along");
    assert!(scheduler.take_due(&store, 11).await.unwrap().calls.is_empty(), "in flight");

    store.record_call(id.clone(), call_at(10, 500), Decision::RetryAt(100)).await.unwrap();
    scheduler.land(&id, "http://127.0.0.1:9");
    let early = scheduler.take_due(&store, 50).await.unwrap();
    assert!(early.calls.is_empty());
    assert_eq!(early.next_due_ms, Some(100));
    assert_eq!(
        store.outbox_keys().await.unwrap(),
        vec![("http://127.0.0.1:9".into(), 100, id.clone())]
    );
    let again = scheduler.take_due(&store, 100).await.unwrap();
    assert_eq!(again.calls.len(), 1);
    store.record_call(id.clone(), call_at(100, 200), Decision::Succeeded).await.unwrap();
    scheduler.land(&id, "http://127.0.0.1:9");
    let d = store.get_dispatch(ALICE.into(), id.clone()).await.unwrap().unwrap();
    assert_eq!(d.status, DispatchStatus::Succeeded);
    assert_eq!(d.calls.len(), 2);
    assert_eq!(d.finished_ms, Some(101));
    assert!(store.outbox_keys().await.unwrap().is_empty());
    assert!(scheduler.take_due(&store, 1000).await.unwrap().calls.is_empty());
}

/// Shards split between live nodes; a node that lost a lease cannot record an outcome; a dead
/// node's shards are taken over once its leases lapse.
#[test]
fn postgres_leases_split_fence_and_move_to_live_nodes() {
    let Some(url) = postgres::fresh_database("postgres_leases") else { return };
    let ttl_ms = 600;
    let owners = |url: &str| {
        postgres::psql(
            url,
            "SELECT owner, count(*) FROM shard_leases WHERE expires_at > now() GROUP BY owner ORDER BY 2",
        )
    };
    let rt_a = runtime();
    let (a, _wa) = rt_a.block_on(Store::open_postgres(&url, 4, ttl_ms, limits())).unwrap();
    assert_eq!(owners(&url).lines().count(), 1, "A alone holds every shard");
    let rt_b = runtime();
    let (b, _wb) = rt_b.block_on(Store::open_postgres(&url, 4, ttl_ms, limits())).unwrap();
    crate::support::wait_until(std::time::Duration::from_secs(10), "an even split", || {
        let o = owners(&url);
        let counts: Vec<&str> = o.lines().filter_map(|l| l.split('|').nth(1)).collect();
        (counts == ["32", "32"]).then_some(())
    });

    // A takes a dispatch, then loses its shard: its outcome is refused and the dispatch waits.
    let mut taken = None;
    for i in 0..200u64 {
        // Targets spread over shards: find one in a shard A holds.
        let mut d = draft("x", None);
        d.request_url = format!("http://127.0.0.1:{}/hook", 1000 + i);
        let wi = rt_a.block_on(a.create_webhook(webhook(ALICE, 2 + i, d), 1000)).unwrap().webhook;
        let e = event(ALICE, 10, None, &[(&wi, EventType::RunSucceeded)]);
        rt_a.block_on(a.ingest(vec![e], None)).unwrap();
        let mut s = Scheduler::new(16, 4, 8);
        let pass = rt_a.block_on(s.take_due(&a, 10)).unwrap();
        if let Some((_, d)) = pass.calls.into_iter().next() {
            taken = Some(d);
            break;
        }
    }
    let d = taken.expect("A holds some shard");
    postgres::psql(&url, "UPDATE shard_leases SET epoch = epoch + 1 WHERE owner IS NOT NULL");
    let refused = rt_a.block_on(a.record_call(d.id.clone(), call_at(10, 200), Decision::Succeeded));
    assert!(matches!(refused, Err(StoreError::Refused(_))), "{refused:?}");
    let still = rt_a.block_on(a.get_dispatch(ALICE.into(), d.id.clone())).unwrap().unwrap();
    assert_eq!((still.status, still.calls.len()), (DispatchStatus::Active, 0));

    // B dies (its tasks stop with its runtime): A takes every shard once B's leases lapse.
    drop(b);
    drop(rt_b);
    crate::support::wait_until(std::time::Duration::from_secs(10), "A to hold every shard", || {
        let o = owners(&url);
        (o.lines().count() == 1 && o.ends_with("|64")).then_some(())
    });
    drop(a);
}

async fn deleting_a_webhook_ends_its_active_dispatches(store: Store) {
    let a = store.create_webhook(webhook(ALICE, 1, draft("x", None)), 10).await.unwrap().webhook;
    for ms in [10, 11, 12] {
        store
            .ingest(vec![event(ALICE, ms, None, &[(&a, EventType::RunSucceeded)])], None)
            .await
            .unwrap();
    }
    store.delete_webhook(ALICE.into(), a.id.clone(), 50).await.unwrap();
    let all = store.all_dispatches().await.unwrap();
    assert_eq!(all.len(), 3);
    for d in &all {
        assert_eq!(
            (d.status, d.finished_ms, d.next_due_ms),
            (DispatchStatus::Failed, Some(50), None)
        );
        assert_eq!(
            d.calls.last().and_then(|c| c.error_message.as_deref()),
            Some("Webhook was removed.")
        );
    }
    assert!(store.outbox_keys().await.unwrap().is_empty());
    let refused = store.redeliver(ALICE.into(), all[0].id.clone(), 60).await;
    assert!(matches!(refused, Err(StoreError::Refused(_))), "{refused:?}");
}

/// The outcome of a call that was in flight when its webhook was deleted is kept among the
/// calls, and the dispatch stays FAILED (the state the outcome was appended to had changed).
async fn a_call_in_flight_when_its_webhook_is_deleted_leaves_the_dispatch_failed(store: Store) {
    let a = store.create_webhook(webhook(ALICE, 1, draft("x", None)), 10).await.unwrap().webhook;
    let e = event(ALICE, 10, None, &[(&a, EventType::RunSucceeded)]);
    let id = e.dispatches[0].id.clone();
    store.ingest(vec![e], None).await.unwrap();
    let pass = Scheduler::new(16, 4, 8).take_due(&store, 10).await.unwrap();
    assert_eq!(pass.calls.len(), 1);
    store.delete_webhook(ALICE.into(), a.id.clone(), 50).await.unwrap();
    store.record_call(id.clone(), call_at(60, 200), Decision::Succeeded).await.unwrap();
    let d = store.get_dispatch(ALICE.into(), id).await.unwrap().unwrap();
    assert_eq!((d.status, d.finished_ms, d.next_due_ms), (DispatchStatus::Failed, Some(50), None));
    let calls: Vec<(Option<&str>, Option<u16>)> =
        d.calls.iter().map(|c| (c.error_message.as_deref(), c.response_status)).collect();
    assert_eq!(calls, vec![(Some("Webhook was removed."), None), (None, Some(200))]);
    assert!(store.outbox_keys().await.unwrap().is_empty());
}

async fn an_ended_dispatch_is_delivered_again_on_request(store: Store) {
    let a = store.create_webhook(webhook(ALICE, 1, draft("x", None)), 10).await.unwrap().webhook;
    let e = event(ALICE, 10, None, &[(&a, EventType::RunSucceeded)]);
    let id = e.dispatches[0].id.clone();
    store.ingest(vec![e], None).await.unwrap();
    let refused = store.redeliver(ALICE.into(), id.clone(), 11).await;
    assert!(matches!(refused, Err(StoreError::Refused(_))), "ACTIVE: {refused:?}");
    let mut scheduler = Scheduler::new(16, 4, 8);
    assert_eq!(scheduler.take_due(&store, 10).await.unwrap().calls.len(), 1);
    store.record_call(id.clone(), call_at(10, 500), Decision::Failed).await.unwrap();
    scheduler.land(&id, "http://127.0.0.1:9");
    let hidden = store.redeliver(BOB.into(), id.clone(), 20).await;
    assert!(matches!(hidden, Err(StoreError::NotFound)), "{hidden:?}");
    store.redeliver(ALICE.into(), id.clone(), 20).await.unwrap();
    let d = store.get_dispatch(ALICE.into(), id.clone()).await.unwrap().unwrap();
    assert_eq!((d.status, d.next_due_ms, d.finished_ms), (DispatchStatus::Active, Some(20), None));
    assert_eq!(d.calls_before_redelivery, 1);
    let pass = scheduler.take_due(&store, 20).await.unwrap();
    assert_eq!(pass.calls.len(), 1, "due again");
    store.record_call(id.clone(), call_at(20, 200), Decision::Succeeded).await.unwrap();
    let d = store.get_dispatch(ALICE.into(), id).await.unwrap().unwrap();
    assert_eq!((d.status, d.calls.len()), (DispatchStatus::Succeeded, 2));
}

/// A node that stops cleanly gives up its leases: the live node takes its shards at its next
/// round, well before they would lapse.
#[test]
fn postgres_a_clean_stop_hands_the_shards_over_at_once() {
    let Some(url) = postgres::fresh_database("postgres_clean_stop") else { return };
    let ttl_ms = 6000;
    let held = |url: &str| {
        postgres::psql(
            url,
            "SELECT string_agg(n::text, ',' ORDER BY n) FROM (SELECT count(*) AS n
             FROM shard_leases WHERE expires_at > now() GROUP BY owner) c",
        )
    };
    let rt = runtime();
    let (a, _wa) = rt.block_on(Store::open_postgres(&url, 4, ttl_ms, limits())).unwrap();
    let (b, wb) = rt.block_on(Store::open_postgres(&url, 4, ttl_ms, limits())).unwrap();
    crate::support::wait_until(std::time::Duration::from_secs(15), "an even split", || {
        (held(&url) == "32,32").then_some(())
    });
    let stopped = std::time::Instant::now();
    rt.block_on(wb.close());
    drop(b);
    crate::support::wait_until(std::time::Duration::from_secs(10), "A to hold every shard", || {
        (held(&url) == "64").then_some(())
    });
    let took = stopped.elapsed();
    assert!(
        took < std::time::Duration::from_millis(ttl_ms - 1000),
        "took {took:?}: waited for the lapse"
    );
    drop(a);
}

/// A FAILED dispatch of `w` at 1,000 ms, as a delivery that gave up leaves it.
fn failed_dispatch(id: String, w: &Webhook) -> Dispatch {
    Dispatch {
        id,
        user_id: w.user_id.clone(),
        webhook_id: w.id.clone(),
        created_ms: 1_000,
        status: DispatchStatus::Failed,
        event_type: EventType::RunFailed,
        event_data_json: Some("{}".into()),
        condition: w.condition.clone(),
        request_url: w.request_url.clone(),
        is_ad_hoc: false,
        ignore_ssl_errors: false,
        do_not_retry: true,
        body: "{}".into(),
        headers: Vec::new(),
        calls: Vec::new(),
        next_due_ms: None,
        finished_ms: Some(1_000),
        calls_before_redelivery: 0,
    }
}

/// Two bulk redeliveries share the store's time: a small one started right behind a large
/// one ends first (it used to wait for the whole large one), and each counts all of its own.
async fn a_small_bulk_redelivery_is_not_held_behind_a_large_one(store: Store) {
    let mut webhooks = Vec::new();
    for (i, actor) in ["large", "small"].into_iter().enumerate() {
        let draft = WebhookDraft {
            event_types: vec![EventType::RunFailed],
            condition: Condition { actor_id: Some(actor.into()), ..Condition::default() },
            request_url: "http://receiver.test/".into(),
            ..WebhookDraft::default()
        };
        let w = Webhook::create(format!("w{i:016}"), ALICE.into(), draft, 0).unwrap();
        store.create_webhook(w.clone(), usize::MAX).await.unwrap();
        webhooks.push(w);
    }
    let mut n = 0;
    for (w, count) in webhooks.iter().zip([3_000, 10]) {
        let dispatches: Vec<Dispatch> = (0..count)
            .map(|_| {
                n += 1;
                failed_dispatch(format!("d{n:016}"), w)
            })
            .collect();
        let event = NewEvent {
            id: format!("e{n:016}"),
            user_id: ALICE.into(),
            created_ms: 1_000,
            event_type: EventType::RunFailed,
            idempotency_key: None,
            record_json: Some("{}".into()),
            dispatches,
        };
        store.ingest(vec![event], None).await.unwrap();
    }
    let finished = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in &webhooks {
        let (store, finished, id) = (store.clone(), finished.clone(), w.id.clone());
        tasks.push(tokio::spawn(async move {
            let window = (0, 62u64.pow(8) - 1);
            let count = store
                .redeliver_all(ALICE.into(), id.clone(), DispatchStatus::Failed, window, 2_000)
                .await
                .unwrap();
            finished.lock().unwrap().push((id, count));
        }));
        // The large one's job is recorded first.
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let order = finished.lock().unwrap().clone();
    let want = vec![(webhooks[1].id.clone(), 10), (webhooks[0].id.clone(), 3_000)];
    assert_eq!(order, want, "the small job ends first, each counts all of its own");
    assert_eq!(store.outbox_keys().await.unwrap().len(), 3_010, "every one ACTIVE again");
}

/// Ids sort byte by byte (so lists come in creation order) on a database whose collation
/// would put `a` before `B`: an ICU `en-US` one.
#[test]
fn postgres_lists_keep_creation_order_under_any_collation() {
    let options = "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'";
    let Some(url) = postgres::fresh_database_with("postgres_collation", options) else { return };
    runtime().block_on(async {
        let (store, writer) = Store::open_postgres(&url, 4, 15_000, limits()).await.unwrap();
        let a = store.create_webhook(webhook(ALICE, 1, draft("x", None)), 10).await.unwrap();
        // Ids made at these times end their time part in `A`, `B` and `a`.
        for ms in [10, 11, 36] {
            let e = event(ALICE, ms, None, &[(&a.webhook, EventType::RunSucceeded)]);
            store.ingest(vec![e], None).await.unwrap();
        }
        let page = store
            .list_dispatches(ALICE.into(), DispatchScope::User, DispatchFilter::default(), ALL)
            .await
            .unwrap();
        let created: Vec<u64> = page.items.iter().map(|d| d.created_ms).collect();
        assert_eq!(created, [10, 11, 36]);
        writer.close().await;
    });
}
