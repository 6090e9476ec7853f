//! One store-level suite run against every backend: redb on a temp file, and PostgreSQL on a
//! fresh database of the server the test command started (support/postgres.rs; where there is
//! none the PostgreSQL half says it is skipped, never under CI). Each check drives `Store` as
//! the API does and asserts what it answers; then the PostgreSQL-only checks: several stores
//! (nodes) on one database, and a schema newer than the binary's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hookd::model::{
    Change, Condition, ConditionKind, EventData, EventType, Webhook, WebhookDraft, WebhookPatch,
};
use hookd::store::{PageRequest, Store, StoreError, StoreLimits, WebhookScope};

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
        let (store, writer) = Store::open_postgres(&url, 4).await.unwrap();
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

fn matched(store: &Store, user: &str, actor: &str) -> Vec<String> {
    let data = EventData { actor_id: actor.into(), ..EventData::default() };
    let found = store.match_webhooks(user, &[(EventType::RunSucceeded, data)], 100).unwrap();
    found[0].iter().map(|w: &Arc<Webhook>| w.id.clone()).collect()
}

async fn matching_follows_creates_updates_and_deletes(store: Store) {
    let a = store.create_webhook(webhook(ALICE, 1, draft("x", None)), 10).await.unwrap().webhook;
    assert_eq!(matched(&store, ALICE, "x"), vec![a.id.clone()]);
    assert!(matched(&store, BOB, "x").is_empty());
    let off = WebhookPatch { is_enabled: Change::Set(false), ..WebhookPatch::default() };
    store.update_webhook(ALICE.into(), a.id.clone(), off, 2).await.unwrap();
    assert!(matched(&store, ALICE, "x").is_empty(), "disabled");
    let on = WebhookPatch { is_enabled: Change::Set(true), ..WebhookPatch::default() };
    store.update_webhook(ALICE.into(), a.id.clone(), on, 3).await.unwrap();
    assert_eq!(matched(&store, ALICE, "x"), vec![a.id.clone()]);
    store.delete_webhook(ALICE.into(), a.id, 4).await.unwrap();
    assert!(matched(&store, ALICE, "x").is_empty(), "deleted");
}

/// Two stores on one database (two nodes): each reads what the other wrote, racing creates
/// with one idempotency key make one webhook, and racing creates cannot pass the limit.
#[test]
fn postgres_nodes_share_webhooks_and_races_are_resolved_by_the_database() {
    let Some(url) = postgres::fresh_database("postgres_nodes_share") else { return };
    runtime().block_on(async {
        let (a, _wa) = Store::open_postgres(&url, 4).await.unwrap();
        let (b, _wb) = Store::open_postgres(&url, 4).await.unwrap();
        let w = a.create_webhook(webhook(ALICE, 1, draft("x", None)), 10).await.unwrap().webhook;
        let (seen, _) =
            b.get_webhook(ALICE.into(), w.id.clone()).await.unwrap().expect("B reads A's");
        assert_eq!(seen, w);
        // B's own next write brings A's create into B's match index.
        b.create_webhook(webhook(ALICE, 2, draft("other", None)), 10).await.unwrap();
        assert_eq!(matched(&b, ALICE, "x"), vec![w.id.clone()]);

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

async fn ids_total(store: &Store, user: &str) -> u64 {
    ids(store, user, WebhookScope::All, ALL).await.0
}

/// A database whose hookd schema is newer than this binary's is refused, naming both versions.
#[test]
fn postgres_refuses_a_newer_schema() {
    let Some(url) = postgres::fresh_database("postgres_newer_schema") else { return };
    runtime().block_on(async {
        let (store, writer) = Store::open_postgres(&url, 2).await.unwrap();
        writer.close().await;
        drop(store);
    });
    postgres::psql(&url, "UPDATE hookd_meta SET value = 99 WHERE name = 'schema_version'");
    runtime().block_on(async {
        let refused = Store::open_postgres(&url, 2).await.err().expect("refused");
        let text = refused.to_string();
        assert!(text.contains("99") && text.contains("newer"), "{text}");
    });
}
