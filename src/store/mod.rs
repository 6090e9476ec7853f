//! The store: every operation hookd needs of its data, with model types in and out, whichever
//! backend holds the data. `Store` is cheap to clone and sends each call to the backend chosen
//! at open: `redb/` (one file, a single writer thread). A backend's types and its engine's name
//! stay in its own folder; the rules (model.rs) and the scheduling (delivery/) stay out of it.
//!
//! The contract every backend keeps: a write answers `Ok` only once it is committed; a read
//! sees every write answered before it began; each ACTIVE dispatch has exactly one outbox entry
//! and an ended one none; a user's calls never see another user's records.

mod codes;
mod error;
mod index;
mod postgres;
mod records;
mod redb;
mod types;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Notify;

// Aliased: inside this module `redb` would be ambiguous with the crate of that name.
use self::redb as embedded;
pub use embedded::{CheckReport, PlainFile, SCHEMA_VERSION, check_file};
pub use error::StoreError;
pub use types::*;

use crate::metrics::Metrics;
use crate::model::{
    Call, Decision, Dispatch, DispatchStatus, EventData, EventType, JobKind, SigningKeys, Webhook,
    WebhookPatch, WebhookStats,
};

/// The bytes under a redb file: the seam where tests put a disk that fails. `PlainFile` is
/// the real file.
pub trait FileIo: std::fmt::Debug + Send + Sync + 'static {
    fn len_bytes(&self) -> std::io::Result<u64>;
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()>;
    /// New bytes read as zeros.
    fn set_len(&self, len: u64) -> std::io::Result<()>;
    fn sync_data(&self) -> std::io::Result<()>;
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()>;
}

/// Where a redb store lives: its file, or other bytes standing for it (fault injection).
#[derive(Debug)]
pub enum Storage {
    File,
    Io(Box<dyn FileIo>),
}

/// Cheap to clone; all clones share the backend (its database and its writer).
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Redb(embedded::RedbStore),
    Postgres(postgres::PgStore),
}

/// Stops a store's writer: see [`WriterHandle::close`].
pub struct WriterHandle {
    inner: WriterInner,
}

enum WriterInner {
    Redb(embedded::WriterHandle),
    /// Writes are answered after their commit: closing gives up the node's delivery leases.
    Postgres(postgres::PgStore),
}

impl WriterHandle {
    /// Commits what is queued, stops the writer and waits for it.
    pub async fn close(self) {
        match self.inner {
            WriterInner::Redb(w) => w.close().await,
            WriterInner::Postgres(store) => store.close().await,
        }
    }
}

/// The call `$call` on whichever backend `$store` has.
macro_rules! on_backend {
    ($store:expr, $b:ident => $call:expr) => {
        match &$store.backend {
            Backend::Redb($b) => $call,
            Backend::Postgres($b) => $call,
        }
    };
}

impl Store {
    /// Opens (or creates) the redb store file at `path`, repairing it after a crash, and
    /// starts its writer.
    pub fn open(path: &Path, limits: StoreLimits) -> Result<(Store, WriterHandle), StoreError> {
        Store::open_on(Storage::File, path, limits)
    }

    /// Like [`Store::open`], on the given storage.
    pub fn open_on(
        storage: Storage,
        path: &Path,
        limits: StoreLimits,
    ) -> Result<(Store, WriterHandle), StoreError> {
        let (store, writer) = embedded::RedbStore::open_on(storage, path, limits)?;
        Ok((
            Store { backend: Backend::Redb(store) },
            WriterHandle { inner: WriterInner::Redb(writer) },
        ))
    }

    /// Connects to the PostgreSQL database at `url` (at most `connections_max` connections),
    /// creating or migrating hookd's schema in it; refuses a schema newer than this hookd's.
    /// Delivery is shared between the nodes on the database by leases that lapse after
    /// `lease_ttl_ms` without renewal.
    pub async fn open_postgres(
        url: &str,
        connections_max: usize,
        lease_ttl_ms: u64,
        limits: StoreLimits,
    ) -> Result<(Store, WriterHandle), StoreError> {
        let store = postgres::PgStore::open(url, connections_max, lease_ttl_ms, limits).await?;
        Ok((
            Store { backend: Backend::Postgres(store.clone()) },
            WriterHandle { inner: WriterInner::Postgres(store) },
        ))
    }

    /// Stores a new webhook (with a new signing key), or returns the one an earlier create
    /// with the same `idempotencyKey` made. `TooManyWebhooks` when the user already has
    /// `webhooks_max`, checked in the create's transaction so racing creates cannot pass it.
    pub async fn create_webhook(
        &self,
        webhook: Webhook,
        webhooks_max: usize,
    ) -> Result<Created, StoreError> {
        let signing_key = new_signing_key()?;
        on_backend!(self, b => b.create_webhook(webhook, signing_key, webhooks_max).await)
    }

    /// Applies `patch` to the user's webhook (rules: `Webhook::patched`).
    pub async fn update_webhook(
        &self,
        user_id: String,
        id: String,
        patch: WebhookPatch,
        now_ms: u64,
    ) -> Result<(Webhook, WebhookStats), StoreError> {
        on_backend!(self, b => b.update_webhook(user_id, id, patch, now_ms).await)
    }

    /// Deletes the webhook; its ACTIVE dispatches end FAILED (`model::webhook_removed_call`).
    pub async fn delete_webhook(
        &self,
        user_id: String,
        id: String,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        on_backend!(self, b => b.delete_webhook(user_id, id, now_ms).await)
    }

    /// The user's webhook `id`; another user's webhook is `None` too.
    pub async fn get_webhook(
        &self,
        user_id: String,
        id: String,
    ) -> Result<Option<(Webhook, WebhookStats)>, StoreError> {
        on_backend!(self, b => b.get_webhook(user_id, id).await)
    }

    /// A page of the user's webhooks in `createdAt` order, with the exact total.
    pub async fn list_webhooks(
        &self,
        user_id: String,
        scope: WebhookScope,
        page: PageRequest,
    ) -> Result<Page<(Webhook, WebhookStats)>, StoreError> {
        on_backend!(self, b => b.list_webhooks(user_id, scope, page).await)
    }

    /// For each (event type, data), the user's webhooks it fires, oldest first; `None` past
    /// `total_max` matches. From memory, which holds every webhook write acknowledged before
    /// this call (on any node): made sure of before matching with `Freshness::Checked`, or by
    /// the write with `Freshness::AtWrite` (the stamp to pass to `ingest_encoded`).
    pub async fn match_webhooks(
        &self,
        user_id: &str,
        events: &[(EventType, EventData)],
        total_max: usize,
        freshness: Freshness,
    ) -> Result<Option<(Matches, Option<IndexStamp>)>, StoreError> {
        match &self.backend {
            Backend::Redb(b) => Ok(b.match_webhooks(user_id, events, total_max).map(|m| (m, None))),
            Backend::Postgres(b) => b.match_webhooks(user_id, events, total_max, freshness).await,
        }
    }

    /// The webhook's signing keys, if the user has that webhook.
    pub async fn signing_keys(
        &self,
        user_id: String,
        id: String,
    ) -> Result<Option<SigningKeys>, StoreError> {
        on_backend!(self, b => b.signing_keys(user_id, id).await)
    }

    /// Makes `key` (or a new random one) the webhook's current signing key; the one before
    /// keeps signing beside it until `now_ms + overlap_ms`. `NotFound` unless the user has it.
    pub async fn rotate_signing_key(
        &self,
        user_id: String,
        id: String,
        key: Option<Vec<u8>>,
        now_ms: u64,
        overlap_ms: u64,
    ) -> Result<SigningKeys, StoreError> {
        let key = match key {
            Some(k) => k,
            None => new_signing_key()?,
        };
        on_backend!(self, b => b.rotate_signing_key(user_id, id, key, now_ms, overlap_ms).await)
    }

    /// Stores events with their dispatches and outbox entries (and a job report) in one
    /// transaction. A job report whose status moved meanwhile: `Conflict`, nothing written.
    pub async fn ingest(
        &self,
        events: Vec<NewEvent>,
        job: Option<JobReport>,
    ) -> Result<Vec<EventAnswer>, StoreError> {
        let encoded = events.into_iter().map(EncodedEvent::new).collect::<Result<_, _>>()?;
        self.ingest_encoded(encoded, job, None).await
    }

    /// `ingest` of events encoded by the caller (`EncodedEvent::new`), which may do that on
    /// a thread of its choosing, and matched with `stamp` (see `Freshness::AtWrite`).
    pub async fn ingest_encoded(
        &self,
        events: Vec<EncodedEvent>,
        job: Option<JobReport>,
        stamp: Option<IndexStamp>,
    ) -> Result<Vec<EventAnswer>, StoreError> {
        match &self.backend {
            Backend::Redb(b) => b.ingest(events, job).await,
            Backend::Postgres(b) => b.ingest(events, job, stamp).await,
        }
    }

    /// The latest reported run or build object, as stored.
    pub async fn get_job(
        &self,
        user_id: String,
        kind: JobKind,
        id: String,
    ) -> Result<Option<StoredJob>, StoreError> {
        on_backend!(self, b => b.get_job(user_id, kind, id).await)
    }

    /// The user's dispatch `id`.
    pub async fn get_dispatch(
        &self,
        user_id: String,
        id: String,
    ) -> Result<Option<Dispatch>, StoreError> {
        on_backend!(self, b => b.get_dispatch(user_id, id).await)
    }

    /// A page of the user's dispatches (all, or one webhook's; those `filter` keeps) in
    /// `createdAt` order, with the exact total.
    pub async fn list_dispatches(
        &self,
        user_id: String,
        scope: DispatchScope,
        filter: DispatchFilter,
        page: PageRequest,
    ) -> Result<Page<Dispatch>, StoreError> {
        on_backend!(self, b => b.list_dispatches(user_id, scope, filter, page).await)
    }

    /// One scheduler pass: the backend walks its outbox (targets in order from just after
    /// `picker.start_after()`, round robin; each target's entries in due order up to now) and
    /// `picker` chooses (delivery/schedule.rs).
    pub async fn due_dispatches<P: DuePicker>(&self, picker: P) -> Result<Due, StoreError> {
        on_backend!(self, b => b.due_dispatches(picker).await)
    }

    /// Appends a call to a dispatch and applies the decision (next due time, or its end).
    pub async fn record_call(
        &self,
        dispatch_id: String,
        call: Call,
        decision: Decision,
    ) -> Result<(), StoreError> {
        on_backend!(self, b => b.record_call(dispatch_id, call, decision).await)
    }

    /// Makes the user's ended dispatch ACTIVE again, due at `now_ms`, its retry schedule
    /// restarted. `NotFound` unless the user has it; `Refused` while it is ACTIVE or once its
    /// webhook is deleted.
    pub async fn redeliver(
        &self,
        user_id: String,
        dispatch_id: String,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        on_backend!(self, b => b.redeliver(user_id, dispatch_id, now_ms).await)
    }

    /// Makes the webhook's dispatches in `status` created from `window.0` to `window.1` ACTIVE
    /// again, in chunks; answers how many once the last chunk is committed. `NotFound` if the
    /// user has no such webhook; `Refused` while an earlier one for the webhook runs.
    pub async fn redeliver_all(
        &self,
        user_id: String,
        webhook_id: String,
        status: DispatchStatus,
        window: (u64, u64),
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        on_backend!(self, b => b.redeliver_all(user_id, webhook_id, status, window, now_ms).await)
    }

    /// Tells the backend the time for retention and wakes it if idle; about once a second.
    pub fn retention_tick(&self, now_ms: u64) {
        on_backend!(self, b => b.retention_tick(now_ms))
    }

    /// Like [`Store::retention_tick`], and waits for the first chunk. `true`: more to do.
    pub async fn retain(&self, now_ms: u64) -> Result<bool, StoreError> {
        on_backend!(self, b => b.retain(now_ms).await)
    }

    /// Whether a match made with `Freshness::AtWrite` may be refused as `StaleIndex` (the
    /// caller then keeps what it needs to match again).
    pub fn checks_matches_at_write(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Which backend holds the data: `redb` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Redb(_) => "redb",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The store file's length in bytes (`None` where there is no file).
    pub fn file_bytes(&self) -> Option<u64> {
        on_backend!(self, b => b.file_bytes())
    }

    /// Writes a consistent copy of the store, as it is now, to a new file at `path`; returns
    /// the entries copied. Writes go on meanwhile.
    pub async fn backup(&self, path: PathBuf) -> Result<u64, StoreError> {
        on_backend!(self, b => b.backup(path).await)
    }

    /// How many webhooks are stored and how many dispatches are ACTIVE.
    pub async fn counts(&self) -> Result<(u64, u64), StoreError> {
        on_backend!(self, b => b.counts().await)
    }

    /// The process's metrics (the backend counts into them).
    pub fn metrics(&self) -> Arc<Metrics> {
        on_backend!(self, b => b.metrics())
    }

    /// Refreshes the gauges the store knows exactly (ACTIVE dispatches, the oldest due one's
    /// wait, the file size).
    pub async fn refresh_gauges(&self, now_ms: u64) -> Result<(), StoreError> {
        on_backend!(self, b => b.refresh_gauges(now_ms).await)
    }

    /// Notified after every commit that added outbox entries.
    pub fn outbox_changed(&self) -> Arc<Notify> {
        on_backend!(self, b => b.outbox_changed())
    }

    /// Set when a storage error stopped the store.
    pub fn fatal(&self) -> Arc<Fatal> {
        on_backend!(self, b => b.fatal())
    }

    /// Every outbox entry, in order: (target, due_ms, dispatch id). A full scan, for checks.
    pub async fn outbox_keys(&self) -> Result<Vec<(String, u64, String)>, StoreError> {
        on_backend!(self, b => b.outbox_keys().await)
    }

    /// Every dispatch, in id order. A full scan, for checks.
    pub async fn all_dispatches(&self) -> Result<Vec<Dispatch>, StoreError> {
        on_backend!(self, b => b.all_dispatches().await)
    }
}

/// A new random signing key.
pub(crate) fn new_signing_key() -> Result<Vec<u8>, StoreError> {
    let mut key = vec![0u8; crate::delivery::signing::KEY_BYTES];
    crate::sys::random_bytes(&mut key)
        .map_err(|e| StoreError::Storage(format!("random source: {e}")))?;
    Ok(key)
}
