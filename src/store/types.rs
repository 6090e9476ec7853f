//! The store's public types: limits, pages, scopes, the records of an ingest, the scheduler's
//! questions and answer, and the fatal-error latch.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use crate::model::{
    ConditionKind, Dispatch, DispatchStatus, EventType, JobKind, SigningKeys, Webhook, WebhookStats,
};

/// The smallest dispatch id created at `since_ms` or later and the largest created at
/// `until_ms` or earlier: a time window's bounds in the byte order of ids (which begin with
/// their creation time; `~` sorts after every id character).
pub(crate) fn window_ids(since_ms: u64, until_ms: u64) -> (String, String) {
    let prefix = crate::sys::time_id_prefix;
    (prefix(since_ms), format!("{}~", prefix(until_ms)))
}

/// The bounds of a store.
#[derive(Clone, Copy, Debug)]
pub struct StoreLimits {
    pub write_queue_max: usize,
    pub write_batch_max: usize,
    /// redb's page cache; the OS caches the file too.
    pub cache_bytes: usize,
    /// Dispatches that wait before their per-webhook stats and list entries are folded in.
    pub webhook_pending_max: usize,
    /// Finished dispatches older than this (by their end) are deleted; 0 keeps them.
    pub finished_max_age_ms: u64,
    /// Past this file size retention deletes the oldest finished records whatever their age;
    /// 0: no bound.
    pub store_bytes_max: u64,
}

/// A page request, already clamped by the API.
#[derive(Clone, Copy, Debug)]
pub struct PageRequest {
    pub offset: u64,
    pub limit: u64,
    pub desc: bool,
}

/// One page of a list and the exact total.
#[derive(Debug)]
pub struct Page<T> {
    pub total: u64,
    pub items: Vec<T>,
}

/// Which webhooks a list covers.
#[derive(Clone, Debug)]
pub enum WebhookScope {
    All,
    Condition(ConditionKind, String),
}

/// The result of a create: the webhook, and whether an earlier create with the same
/// `idempotencyKey` made it.
#[derive(Debug)]
pub struct Created {
    pub webhook: Webhook,
    pub stats: WebhookStats,
    pub replayed: bool,
}

/// An event to store with the dispatches it created, all in one transaction.
#[derive(Debug)]
pub struct NewEvent {
    pub id: String,
    pub user_id: String,
    pub created_ms: u64,
    pub event_type: EventType,
    pub idempotency_key: Option<String>,
    /// The event as accepted (JSON); `None` for a TEST dispatch, which has no event.
    pub record_json: Option<String>,
    /// Rendered dispatches, one per matched webhook. The writer drops those whose webhook is
    /// gone, or is ad-hoc and already fired.
    pub dispatches: Vec<Dispatch>,
}

/// The version of a node's webhook index that events were matched against, without first
/// making sure it is the newest (PostgreSQL, where that takes a round trip): the writer reads
/// the store's version in the events' own transaction and refuses the write with
/// `StoreError::StaleIndex` if a webhook write committed in between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexStamp(pub(crate) i64);

/// The webhooks each of a request's events fires.
pub type Matches = Vec<Vec<Arc<Webhook>>>;

/// How a match makes sure the webhook index holds every write acknowledged before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Before matching (on PostgreSQL, a read shared by the ingests waiting for one).
    Checked,
    /// In the events' write: the match returns an `IndexStamp` for `Store::ingest_encoded`,
    /// which answers `StoreError::StaleIndex` when the index was behind.
    AtWrite,
}

/// An event whose dispatch records are encoded already, the same bytes for every backend.
/// Encoding takes time in proportion to the bodies (megabytes for a costly template), so the
/// API encodes where it renders, off the async workers, and the writers only copy bytes.
#[derive(Debug)]
pub struct EncodedEvent {
    /// The event; its dispatches' bodies have moved into `dispatches`' records.
    pub(crate) event: NewEvent,
    /// One per `event.dispatches`, in order.
    pub(crate) dispatches: Vec<EncodedDispatch>,
}

#[derive(Debug)]
pub(crate) struct EncodedDispatch {
    pub request: Vec<u8>,
    pub state: Vec<u8>,
    pub target: String,
}

impl EncodedEvent {
    /// Encodes `event`'s dispatch records, moving each body into its record.
    pub fn new(mut event: NewEvent) -> Result<EncodedEvent, super::StoreError> {
        let mut dispatches = Vec::with_capacity(event.dispatches.len());
        for d in &mut event.dispatches {
            let state = super::records::state_of(d);
            dispatches.push(EncodedDispatch {
                request: super::records::encode_dispatch_request(d)?,
                state: super::records::encode_dispatch_state(&state)?,
                target: state.target,
            });
            d.body = String::new();
        }
        Ok(EncodedEvent { event, dispatches })
    }

    /// The bytes of its encoded dispatch records.
    pub fn encoded_bytes(&self) -> usize {
        self.dispatches.iter().map(|d| d.request.len() + d.state.len()).sum()
    }
}

/// The 202 answer for one event.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EventAnswer {
    pub id: String,
    pub created_ms: u64,
    pub event_type: String,
    pub dispatch_ids: Vec<String>,
}

/// A run or build state report, stored only if the job's status is still `expected_status`
/// (compare and set: racing reports raise each transition's events once).
#[derive(Debug)]
pub struct JobReport {
    pub user_id: String,
    pub kind: JobKind,
    pub id: String,
    pub expected_status: Option<String>,
    /// The status the report sets.
    pub status: String,
    pub object_json: String,
}

/// The latest reported state of a run or build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredJob {
    /// `None` only for an object stored before statuses were kept apart whose `status` was
    /// not a string.
    pub status: Option<String>,
    /// The object as reported.
    pub object_json: String,
}

/// Which dispatches a list covers.
#[derive(Clone, Debug)]
pub enum DispatchScope {
    User,
    Webhook(String),
}

/// Which statuses and event types a list keeps (`None`: all).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DispatchFilter {
    pub status: Option<DispatchStatus>,
    pub event_type: Option<EventType>,
}

/// The choices of one scheduler pass, made outside the store (delivery/schedule.rs): a
/// backend walks its outbox, targets in order from just after `start_after` (round robin) and
/// each target's entries in due order up to `now_ms`, and asks at each step.
pub trait DuePicker: Send + 'static {
    fn now_ms(&self) -> u64;
    fn start_after(&self) -> Option<&str>;
    /// The pass has taken all it may.
    fn is_full(&self) -> bool;
    /// How many of `target`'s due dispatches the pass may take; 0: the target is not read.
    fn target_room(&self, target: &str) -> usize;
    /// `id` is being called already: passed over without being read.
    fn in_flight(&self, id: &str) -> bool;
    /// Takes the next due dispatch of the target, owned by `user_id` (`true`), or leaves the
    /// rest of its target for this pass (`false`).
    fn admit(&mut self, user_id: &str) -> bool;
    /// The pass wants the signing keys of the webhooks it takes.
    fn wants_signing_keys(&self) -> bool;
}

/// Due dispatches (with their targets) and the earliest due time not taken.
#[derive(Debug, Default)]
pub struct Due {
    pub dispatches: Vec<(String, Dispatch)>,
    pub next_due_ms: Option<u64>,
    /// The signing keys of the dispatches' webhooks, by webhook id (a webhook deleted
    /// meanwhile has none).
    pub signing: HashMap<String, Arc<SigningKeys>>,
}

/// Set once by the writer when a storage error stops it; the app waits on it to exit non-zero.
#[derive(Debug, Default)]
pub struct Fatal {
    failed: AtomicBool,
    notify: Notify,
    message: std::sync::Mutex<Option<String>>,
}

impl Fatal {
    pub(crate) fn trigger(&self, message: String) {
        if let Ok(mut m) = self.message.lock() {
            m.get_or_insert(message);
        }
        self.failed.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// The storage error that stopped the writer ("" if none).
    pub fn message(&self) -> String {
        self.message.lock().ok().and_then(|m| m.clone()).unwrap_or_default()
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Waits until a storage error stopped the writer; returns its message.
    pub async fn wait(&self) -> String {
        while !self.is_failed() {
            self.notify.notified().await;
        }
        self.message()
    }
}
