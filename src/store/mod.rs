//! The store: one redb file (`data_dir/hookd.redb`). Reads run in short read transactions on
//! the blocking pool; every write goes to the single writer thread (writer.rs) and is answered
//! only after its group's commit. `redb` is named only under this folder.

mod backup;
mod batch;
mod error;
mod index;
mod lastrun;
mod migrate;
mod pending;
mod records;
mod redelivery;
mod retention;
mod schema;
mod writer;

/// The schema this hookd writes (older ones are migrated at open).
pub use schema::SCHEMA_VERSION;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tokio::sync::{Notify, mpsc, oneshot};

pub use backup::CheckReport;
pub use error::StoreError;
use lastrun::LastRun;
use retention::{Retention, RetentionSignal};

use crate::metrics::Metrics;

/// Targets the oldest-due gauge looks at (one short read per target at each scrape).
const OLDEST_DUE_TARGETS_MAX: usize = 10_000;
use error::storage;
use error::storage as storage_error;
use index::MatchIndex;
use pending::{Pending, PendingInner};
use schema::*;
use writer::WriteOp;
pub use writer::WriterHandle;

use std::collections::{HashMap, HashSet};

use crate::model::{
    Call, ConditionKind, Decision, Dispatch, EventData, EventType, JobKind, SigningKeys, Webhook,
    WebhookPatch, WebhookStats,
};

pub use redb::StorageBackend;
pub use redb::backends::FileBackend;

/// Where the database lives: the file at the path, or a custom backend over it (fault
/// injection in tests; redb's `StorageBackend` seam).
#[derive(Debug)]
pub enum Storage {
    File,
    Backend(Box<dyn StorageBackend>),
}

/// A boxed backend is a backend.
#[derive(Debug)]
struct Boxed(Box<dyn StorageBackend>);

impl StorageBackend for Boxed {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.0.close()
    }
    fn try_lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.0.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.0.try_lock_shared_range(start, end)
    }
    fn lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.0.lock_range(start, end)
    }
    fn lock_shared_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.0.lock_shared_range(start, end)
    }
    fn unlock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.0.unlock_range(start, end)
    }
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

/// The 202 answer for one event.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EventAnswer {
    pub id: String,
    pub created_ms: u64,
    pub event_type: String,
    pub dispatch_ids: Vec<String>,
}

/// A run or build state report, stored only if the job's status is still `expected_status`.
#[derive(Debug)]
pub struct JobReport {
    pub user_id: String,
    pub kind: JobKind,
    pub id: String,
    pub expected_status: Option<String>,
    pub object_json: String,
}

/// Which dispatches a list covers.
#[derive(Clone, Debug)]
pub enum DispatchScope {
    User,
    Webhook(String),
}

/// What the scheduler asks for in one pass.
#[derive(Clone, Debug, Default)]
pub struct DueRequest {
    pub now_ms: u64,
    /// Dispatches being called now: not due again until their outcome is recorded. Shared, not
    /// copied: the scheduler passes its own set for the length of one read.
    pub in_flight: Arc<HashSet<String>>,
    /// Calls in flight per target.
    pub per_target: Arc<HashMap<String, usize>>,
    pub per_target_max: usize,
    /// Calls in flight per user (the dispatch's owner).
    pub per_user: Arc<HashMap<String, usize>>,
    pub per_user_max: usize,
    /// At most this many dispatches in all.
    pub take_max: usize,
    /// Targets are served from just after this one, round robin, so no target is always first.
    pub start_after: Option<String>,
    /// Read the due webhooks' signing keys into `Due::signing`.
    pub signing_keys: bool,
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

/// Cheap to clone; all clones share the database and the writer.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    writes: mpsc::Sender<WriteOp>,
    fatal: Arc<Fatal>,
    outbox_changed: Arc<Notify>,
    index: Arc<MatchIndex>,
    pending: Arc<Pending>,
    /// Set while deleted webhooks are being swept (so a scheduler pass looks at
    /// `webhook_sweeps` only then).
    sweeping: Arc<AtomicBool>,
    retention: Arc<RetentionSignal>,
    metrics: Arc<Metrics>,
    /// The store file, when on a plain file.
    file: Option<std::path::PathBuf>,
}

impl Store {
    /// Opens (or creates) the store file, repairing it after a crash, and starts the writer.
    pub fn open(path: &Path, limits: StoreLimits) -> Result<(Store, WriterHandle), StoreError> {
        Store::open_on(Storage::File, path, limits)
    }

    /// Like [`Store::open`], on the given storage. A damaged file is an error, never a panic:
    /// redb may panic on pages that are not what they claim to be, so the open runs under
    /// `catch_unwind`.
    pub fn open_on(
        storage: Storage,
        path: &Path,
        limits: StoreLimits,
    ) -> Result<(Store, WriterHandle), StoreError> {
        without_panics(|| Store::open_unguarded(storage, path, limits))
    }

    fn open_unguarded(
        storage: Storage,
        path: &Path,
        limits: StoreLimits,
    ) -> Result<(Store, WriterHandle), StoreError> {
        let mut builder = Database::builder();
        builder.set_cache_size(limits.cache_bytes);
        let last_run = match &storage {
            Storage::File => Some(LastRun::beside(path)),
            Storage::Backend(_) => None,
        };
        let verify = last_run.as_ref().is_some_and(|l| left_unclean(path) && !l.crashed_in_place());
        builder.set_check_integrity_on_open(verify);
        let announced = AtomicBool::new(false);
        builder.set_repair_callback(move |session| {
            // Called when the last shutdown was unclean (kill -9, crash, power loss) and the
            // saved allocator state cannot be used, or when the file is verified.
            if !announced.swap(true, Ordering::SeqCst) {
                if verify {
                    tracing::warn!(
                        "the store file was not closed cleanly and is not the file hookd last ran on here (a copy, or a restore); verifying every page before using it"
                    );
                } else {
                    tracing::warn!("the store was not closed cleanly; repairing it");
                }
            }
            tracing::debug!(progress = session.progress(), "repair");
        });
        let (db, file) = match storage {
            Storage::File => {
                create_private(path)?;
                let db = builder.create(path).map_err(|e| match verify {
                    false => storage_error(e),
                    true => StoreError::Corrupt(format!(
                        "{e}; the file was not closed cleanly and is not the file hookd last ran on here: a copy made while hookd wrote to it can be torn like this, so restore a copy made by `hookd backup`"
                    )),
                })?;
                if let Some(Err(e)) = last_run.as_ref().map(LastRun::mark_running) {
                    tracing::warn!(error = %e, "cannot record the open beside the store file; the next start after a crash verifies the whole file");
                }
                (db, Some(path.to_path_buf()))
            }
            Storage::Backend(b) => {
                (builder.create_with_backend(Boxed(b)).map_err(storage_error)?, None)
            }
        };
        init_schema(&db)?;
        let index = Arc::new(load_index(&db)?);
        let (pending, next_seq) = load_pending(&db)?;
        let sweeps = load_sweeps(&db)?;
        let redeliveries = redelivery::load(&db)?;
        if !redeliveries.is_empty() {
            tracing::info!(
                webhooks = redeliveries.len(),
                "resuming the bulk redeliveries the last run left under way"
            );
        }
        let sweeping = Arc::new(AtomicBool::new(!sweeps.is_empty()));
        let pending = Arc::new(pending);
        let db = Arc::new(db);
        let fatal = Arc::new(Fatal::default());
        let outbox_changed = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel(limits.write_queue_max);
        let retention = Arc::new(RetentionSignal::default());
        let metrics = Arc::new(Metrics::default());
        let handle = writer::spawn(
            db.clone(),
            tx.clone(),
            rx,
            limits.write_batch_max,
            fatal.clone(),
            outbox_changed.clone(),
            writer::WriterState {
                index: index.clone(),
                pending: pending.clone(),
                next_seq,
                pending_max: limits.webhook_pending_max.max(1),
                sweeps,
                sweeping: sweeping.clone(),
                user_webhooks: count_user_webhooks(&db)?,
                retention: Retention::new(
                    limits.finished_max_age_ms,
                    retention.clone(),
                    file.clone(),
                    limits.store_bytes_max,
                ),
                metrics: metrics.clone(),
                redeliveries,
                redelivery_replies: HashMap::new(),
            },
        )?;
        let handle = handle.recording_close(last_run);
        let store = Store {
            db,
            writes: tx,
            fatal,
            outbox_changed,
            index,
            pending,
            sweeping,
            retention,
            metrics,
            file,
        };
        Ok((store, handle))
    }

    /// Tells the writer the time for retention (and whether the file is past
    /// `store_bytes_max`) and wakes it if it is idle. Called about once a second; a full
    /// queue is fine: the writer is then busy and reads the time in its next group.
    pub fn retention_tick(&self, now_ms: u64) {
        self.signal_retention(now_ms);
        let _ = self.writes.try_send(WriteOp::Tick { reply: None });
    }

    /// Like [`Store::retention_tick`], and waits for the group that runs the first chunk.
    /// `true`: retention has more to do (it goes on by itself in the next groups).
    pub async fn retain(&self, now_ms: u64) -> Result<bool, StoreError> {
        self.signal_retention(now_ms);
        self.write(|reply| WriteOp::Tick { reply: Some(reply) }).await
    }

    fn signal_retention(&self, now_ms: u64) {
        self.retention.tick_ms.fetch_max(now_ms, Ordering::AcqRel);
    }

    /// The store file's length in bytes (`None` on a custom backend).
    pub fn file_bytes(&self) -> Option<u64> {
        self.file.as_ref().and_then(|f| std::fs::metadata(f).ok()).map(|m| m.len())
    }

    /// Writes a consistent copy of the store, as it is now, to a new file at `path` (which must
    /// not exist); returns the entries copied. Writes go on meanwhile.
    pub async fn backup(&self, path: std::path::PathBuf) -> Result<u64, StoreError> {
        self.read(move |rtx| backup::write_backup(rtx, &path)).await
    }

    /// How many webhooks are stored and how many dispatches are ACTIVE (one outbox key each).
    pub async fn counts(&self) -> Result<(u64, u64), StoreError> {
        self.read(|rtx| {
            let webhooks = rtx.open_table(WEBHOOKS).map_err(storage)?.len().map_err(storage)?;
            let active = rtx.open_table(OUTBOX).map_err(storage)?.len().map_err(storage)?;
            Ok((webhooks, active))
        })
        .await
    }

    /// The process's metrics (the writer counts into them).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Refreshes the gauges the store knows exactly: ACTIVE dispatches (one outbox key
    /// each), how long the oldest due one has waited, the file size. The oldest due time is
    /// the least of each target's first key (a skip scan over at most
    /// `OLDEST_DUE_TARGETS_MAX` targets).
    pub async fn refresh_gauges(&self, now_ms: u64) -> Result<(), StoreError> {
        let (active, oldest_due_ms) = self
            .read(|rtx| {
                let outbox = rtx.open_table(OUTBOX).map_err(storage)?;
                let active = outbox.len().map_err(storage)?;
                let mut oldest: Option<u64> = None;
                let mut after: Option<String> = None;
                for _ in 0..OLDEST_DUE_TARGETS_MAX {
                    let first = match &after {
                        None => outbox.iter().map_err(storage)?.next(),
                        // Past every key of target t: the first key of the next target.
                        Some(t) => {
                            outbox.range((t.as_str(), u64::MAX, ID_MAX)..).map_err(storage)?.next()
                        }
                    };
                    let Some(entry) = first else { break };
                    let (k, _) = entry.map_err(storage)?;
                    let (target, due, _) = k.value();
                    oldest = Some(oldest.map_or(due, |o| o.min(due)));
                    after = Some(target.to_string());
                }
                Ok((active, oldest))
            })
            .await?;
        let m = &self.metrics;
        m.dispatches_active.set(i64::try_from(active).unwrap_or(i64::MAX));
        let late_ms = oldest_due_ms.map_or(0, |due| now_ms.saturating_sub(due));
        m.oldest_due_age_seconds.set(late_ms as f64 / 1000.0);
        if let Some(len) = self.file_bytes() {
            m.store_file_bytes.set(i64::try_from(len).unwrap_or(i64::MAX));
        }
        Ok(())
    }

    /// Notified after every commit that added outbox keys.
    pub fn outbox_changed(&self) -> Arc<Notify> {
        self.outbox_changed.clone()
    }

    pub fn fatal(&self) -> Arc<Fatal> {
        self.fatal.clone()
    }

    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteOp,
    ) -> Result<T, StoreError> {
        if self.fatal.is_failed() {
            return Err(StoreError::Failed(self.fatal.message()));
        }
        let (reply, answer) = oneshot::channel();
        self.writes.try_send(make(reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Busy,
            mpsc::error::TrySendError::Closed(_) => StoreError::Unavailable,
        })?;
        // A dropped reply means the writer stopped before committing this op.
        answer.await.unwrap_or_else(|_| {
            Err(if self.fatal.is_failed() {
                StoreError::Failed(self.fatal.message())
            } else {
                StoreError::Unavailable
            })
        })
    }

    /// Stores a new webhook, or returns the one an earlier create with the same key made.
    /// Refused with `TooManyWebhooks` when the user already has `webhooks_max` (checked in
    /// the writer's transaction, so racing creates cannot pass it).
    pub async fn create_webhook(
        &self,
        webhook: Webhook,
        webhooks_max: usize,
    ) -> Result<Created, StoreError> {
        let signing_key = new_signing_key()?;
        self.write(|reply| WriteOp::CreateWebhook { webhook, signing_key, webhooks_max, reply })
            .await
    }

    /// Makes the user's ended dispatch ACTIVE again, due at `now_ms`, with its retry schedule
    /// restarted. `NotFound` unless the user has it; `Refused` while it is ACTIVE or once its
    /// webhook is deleted.
    pub async fn redeliver(
        &self,
        user_id: String,
        dispatch_id: String,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.write(|reply| WriteOp::Redeliver { user_id, dispatch_id, now_ms, reply }).await
    }

    /// Makes the webhook's dispatches in `status` that were created from `since_ms` to
    /// `until_ms` ACTIVE again, in chunks over later group commits; answers how many once the
    /// last chunk is committed. `NotFound` if the user has no such webhook; `Refused` while an
    /// earlier one for the webhook runs.
    pub async fn redeliver_all(
        &self,
        user_id: String,
        webhook_id: String,
        status: crate::model::DispatchStatus,
        (since_ms, until_ms): (u64, u64),
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        self.write(|reply| WriteOp::RedeliverAll {
            user_id,
            webhook_id,
            status,
            since_ms,
            until_ms,
            now_ms,
            reply,
        })
        .await
    }

    /// The webhook's signing keys, if the user has that webhook.
    pub async fn signing_keys(
        &self,
        user_id: String,
        id: String,
    ) -> Result<Option<SigningKeys>, StoreError> {
        self.read(move |rtx| {
            let webhooks = rtx.open_table(WEBHOOKS).map_err(storage)?;
            let owned = match webhooks.get(id.as_str()).map_err(storage)? {
                Some(bytes) => records::decode_webhook(bytes.value())?.user_id == user_id,
                None => false,
            };
            if !owned {
                return Ok(None);
            }
            let secrets = rtx.open_table(WEBHOOK_SECRETS).map_err(storage)?;
            let got = secrets.get(id.as_str()).map_err(storage)?;
            got.map(|v| records::decode_signing_keys(v.value())).transpose()
        })
        .await
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
        self.write(|reply| WriteOp::RotateSigningKey {
            user_id,
            id,
            key,
            now_ms,
            overlap_ms,
            reply,
        })
        .await
    }

    pub async fn update_webhook(
        &self,
        user_id: String,
        id: String,
        patch: WebhookPatch,
        now_ms: u64,
    ) -> Result<(Webhook, WebhookStats), StoreError> {
        self.write(|reply| WriteOp::UpdateWebhook { user_id, id, patch, now_ms, reply }).await
    }

    /// Deletes the webhook; its ACTIVE dispatches end FAILED ("Webhook was removed.").
    pub async fn delete_webhook(
        &self,
        user_id: String,
        id: String,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.write(|reply| WriteOp::DeleteWebhook { user_id, id, now_ms, reply }).await
    }

    /// Stores events and their dispatches (and a job report) in one transaction.
    /// With a job report whose status moved meanwhile: `Conflict`, nothing written.
    pub async fn ingest(
        &self,
        events: Vec<NewEvent>,
        job: Option<JobReport>,
    ) -> Result<Vec<EventAnswer>, StoreError> {
        // Encoding here, on the caller's task, keeps it off the single writer thread.
        let mut encoded = Vec::with_capacity(events.len());
        for event in events {
            let mut dispatches = Vec::with_capacity(event.dispatches.len());
            for d in &event.dispatches {
                let state = records::state_of(d);
                dispatches.push(writer::EncodedDispatch {
                    request: records::encode_dispatch_request(d)?,
                    state: records::encode_dispatch_state(&state)?,
                    target: state.target,
                });
            }
            encoded.push(writer::EncodedEvent { event, dispatches });
        }
        self.write(|reply| WriteOp::Ingest { events: encoded, job, reply }).await
    }

    /// Appends a call to a dispatch and applies the decision (next due time, or its end).
    pub async fn record_call(
        &self,
        dispatch_id: String,
        call: Call,
        decision: Decision,
    ) -> Result<(), StoreError> {
        self.write(|reply| WriteOp::RecordCall { dispatch_id, call, decision, reply }).await
    }

    /// For each (event type, data), the user's webhooks it fires, oldest first: from memory
    /// (index.rs), with no read transaction.
    /// The webhooks each event fires (see `MatchIndex::matches`); `None` past `total_max`.
    pub fn match_webhooks(
        &self,
        user_id: &str,
        events: &[(EventType, EventData)],
        total_max: usize,
    ) -> Option<Vec<Vec<Arc<Webhook>>>> {
        self.index.matches(user_id, events, total_max)
    }

    pub async fn get_dispatch(
        &self,
        user_id: String,
        id: String,
    ) -> Result<Option<Dispatch>, StoreError> {
        self.read(move |rtx| {
            let requests = rtx.open_table(DISPATCHES).map_err(storage)?;
            let states = rtx.open_table(DISPATCH_STATES).map_err(storage)?;
            Ok(read_dispatch(&requests, &states, &id)?.filter(|d| d.user_id == user_id))
        })
        .await
    }

    /// A page of the user's dispatches (all, or one webhook's) in `createdAt` order.
    pub async fn list_dispatches(
        &self,
        user_id: String,
        scope: DispatchScope,
        page: PageRequest,
    ) -> Result<Page<Dispatch>, StoreError> {
        self.read_with_pending(move |rtx, waiting| {
            let (total, ids) = match &scope {
                DispatchScope::User => {
                    let index = rtx.open_table(DISPATCHES_BY_USER).map_err(storage)?;
                    let lo = (user_id.as_str(), "");
                    let hi = (user_id.as_str(), ID_MAX);
                    let total = index.range(lo..=hi).map_err(storage)?.count() as u64;
                    let range = index.range(lo..=hi).map_err(storage)?;
                    (total, page_ids(range, page, |k| k.1.to_string())?)
                }
                DispatchScope::Webhook(webhook_id) => {
                    // The folded ones from the index, merged with those not yet folded.
                    let index = rtx.open_table(DISPATCHES_BY_WEBHOOK).map_err(storage)?;
                    let lo = (webhook_id.as_str(), "");
                    let hi = (webhook_id.as_str(), ID_MAX);
                    let mut tail = waiting.ids(webhook_id).to_vec();
                    tail.sort();
                    let folded = index.range(lo..=hi).map_err(storage)?.count() as u64;
                    let range = index.range(lo..=hi).map_err(storage)?;
                    (folded + tail.len() as u64, merged_page_ids(range, tail, page)?)
                }
            };
            let requests = rtx.open_table(DISPATCHES).map_err(storage)?;
            let states = rtx.open_table(DISPATCH_STATES).map_err(storage)?;
            let mut items = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(d) = read_dispatch(&requests, &states, &id)?
                    && d.user_id == user_id
                {
                    items.push(d);
                }
            }
            Ok(Page { total, items })
        })
        .await
    }

    /// Due dispatches for one scheduler pass: per target, skipping those in flight, at most
    /// `per_target_max` in flight per target, `per_user_max` per user and `take_max` in all.
    /// A target at its bound is not read at all, so a dead target's backlog costs a pass
    /// nothing; a target whose next due dispatch belongs to a user at its bound is left after
    /// that one read, until the next pass.
    pub async fn due_dispatches(&self, req: DueRequest) -> Result<Due, StoreError> {
        let sweeping = self.sweeping.load(Ordering::Acquire);
        self.read(move |rtx| {
            let outbox = rtx.open_table(OUTBOX).map_err(storage)?;
            let requests = rtx.open_table(DISPATCHES).map_err(storage)?;
            let states = rtx.open_table(DISPATCH_STATES).map_err(storage)?;
            let secrets = rtx.open_table(WEBHOOK_SECRETS).map_err(storage)?;
            // Deleted webhooks whose ACTIVE dispatches the writer is still ending: not called.
            let sweeps = if sweeping {
                Some(rtx.open_table(WEBHOOK_SWEEPS).map_err(storage)?)
            } else {
                None
            };
            let mut due = Due::default();
            let mut taken_per_user: HashMap<String, usize> = HashMap::new();
            let start = req.start_after.clone().map(|t| t + "\u{0}").unwrap_or_default();
            // Two sweeps: targets after `start_after`, then from the first target up to it.
            for (from, until) in [(start.clone(), None), (String::new(), Some(start))] {
                let mut next_target = from;
                loop {
                    if due.dispatches.len() >= req.take_max {
                        return Ok(due);
                    }
                    let first = outbox
                        .range((next_target.as_str(), 0u64, "")..)
                        .map_err(storage)?
                        .next()
                        .transpose()
                        .map_err(storage)?;
                    let Some((key, _)) = first else { break };
                    let target = key.value().0.to_string();
                    if until.as_ref().is_some_and(|u| target >= *u) {
                        break;
                    }
                    next_target = format!("{target}\u{0}");
                    let busy = req.per_target.get(&target).copied().unwrap_or(0);
                    if busy >= req.per_target_max {
                        continue;
                    }
                    let mut free = req.per_target_max - busy;
                    let lo = (target.as_str(), 0u64, "");
                    let hi = (target.as_str(), u64::MAX, ID_MAX);
                    for entry in outbox.range(lo..=hi).map_err(storage)? {
                        let (k, _) = entry.map_err(storage)?;
                        let (_, due_ms, id) = k.value();
                        if due_ms > req.now_ms {
                            due.next_due_ms =
                                Some(due.next_due_ms.map_or(due_ms, |n| n.min(due_ms)));
                            break;
                        }
                        if req.in_flight.contains(id) {
                            continue;
                        }
                        if free == 0 || due.dispatches.len() >= req.take_max {
                            break;
                        }
                        let Some(d) = read_dispatch(&requests, &states, id)? else {
                            return Err(StoreError::Corrupt(format!("outbox names missing {id}")));
                        };
                        let swept = match &sweeps {
                            Some(t) => t.get(d.webhook_id.as_str()).map_err(storage)?.is_some(),
                            None => false,
                        };
                        if swept {
                            // Ended within moments; the target's other work waits for that.
                            break;
                        }
                        let user_busy = req.per_user.get(&d.user_id).copied().unwrap_or(0)
                            + taken_per_user.get(&d.user_id).copied().unwrap_or(0);
                        if user_busy >= req.per_user_max {
                            // Its owner has every slot it may hold: leave the target for now
                            // (a later pass takes it once that user's calls end).
                            break;
                        }
                        *taken_per_user.entry(d.user_id.clone()).or_default() += 1;
                        if req.signing_keys
                            && !due.signing.contains_key(&d.webhook_id)
                            && let Some(v) = secrets.get(d.webhook_id.as_str()).map_err(storage)?
                        {
                            let keys = records::decode_signing_keys(v.value())?;
                            due.signing.insert(d.webhook_id.clone(), Arc::new(keys));
                        }
                        due.dispatches.push((target.clone(), d));
                        free -= 1;
                    }
                }
            }
            Ok(due)
        })
        .await
    }

    /// Every outbox key, in order: (target, due_ms, dispatch id). A full scan, for checks and
    /// tools (the simulation checks it after every step), not for the hot path.
    pub async fn outbox_keys(&self) -> Result<Vec<(String, u64, String)>, StoreError> {
        self.read(|rtx| {
            let outbox = rtx.open_table(OUTBOX).map_err(storage)?;
            let mut keys = Vec::new();
            for entry in outbox.iter().map_err(storage)? {
                let (k, _) = entry.map_err(storage)?;
                let (target, due, id) = k.value();
                keys.push((target.to_string(), due, id.to_string()));
            }
            Ok(keys)
        })
        .await
    }

    /// Every dispatch, in id order. A full scan, for checks and tools, not for the hot path.
    pub async fn all_dispatches(&self) -> Result<Vec<Dispatch>, StoreError> {
        self.read(|rtx| {
            let requests = rtx.open_table(DISPATCHES).map_err(storage)?;
            let states = rtx.open_table(DISPATCH_STATES).map_err(storage)?;
            let mut out = Vec::new();
            for entry in requests.iter().map_err(storage)? {
                let (k, _) = entry.map_err(storage)?;
                if let Some(d) = read_dispatch(&requests, &states, k.value())? {
                    out.push(d);
                }
            }
            Ok(out)
        })
        .await
    }

    /// The latest reported run or build object, as stored.
    pub async fn get_job(
        &self,
        user_id: String,
        kind: JobKind,
        id: String,
    ) -> Result<Option<String>, StoreError> {
        self.read(move |rtx| {
            let jobs = rtx.open_table(JOBS).map_err(storage)?;
            let got = jobs.get((user_id.as_str(), job_code(kind), id.as_str())).map_err(storage)?;
            got.map(|b| {
                String::from_utf8(b.value().to_vec())
                    .map_err(|e| StoreError::Corrupt(format!("job {id}: {e}")))
            })
            .transpose()
        })
        .await
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            // The read transaction lives only for this closure: a long-lived one would pin
            // freed pages and grow the file.
            let rtx = db.begin_read().map_err(storage)?;
            f(&rtx)
        })
        .await
        .map_err(|e| StoreError::Storage(format!("read task: {e}")))?
    }

    /// Like `read`, with the mirror of dispatches not yet folded, consistent with the read
    /// transaction (pending.rs).
    async fn read_with_pending<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction, &PendingInner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        let pending = self.pending.clone();
        tokio::task::spawn_blocking(move || {
            let waiting = pending.read();
            let rtx = db.begin_read().map_err(storage)?;
            f(&rtx, &waiting)
        })
        .await
        .map_err(|e| StoreError::Storage(format!("read task: {e}")))?
    }

    /// The user's webhook `id`; another user's webhook is `None` too.
    pub async fn get_webhook(
        &self,
        user_id: String,
        id: String,
    ) -> Result<Option<(Webhook, WebhookStats)>, StoreError> {
        self.read_with_pending(move |rtx, waiting| {
            let tables = WebhookTables::open(rtx)?;
            match tables.read(&id, waiting)? {
                Some((w, s)) if w.user_id == user_id => Ok(Some((w, s))),
                _ => Ok(None),
            }
        })
        .await
    }

    /// A page of the user's webhooks in `createdAt` order.
    pub async fn list_webhooks(
        &self,
        user_id: String,
        scope: WebhookScope,
        page: PageRequest,
    ) -> Result<Page<(Webhook, WebhookStats)>, StoreError> {
        self.read_with_pending(move |rtx, waiting| {
            let tables = WebhookTables::open(rtx)?;
            let ids: Vec<String>;
            let total: u64;
            match &scope {
                WebhookScope::All => {
                    let index = rtx.open_table(WEBHOOKS_BY_USER).map_err(storage)?;
                    let lo = (user_id.as_str(), 0u64, "");
                    let hi = (user_id.as_str(), u64::MAX, ID_MAX);
                    total = index.range(lo..=hi).map_err(storage)?.count() as u64;
                    let range = index.range(lo..=hi).map_err(storage)?;
                    ids = page_ids(range, page, |k| k.2.to_string())?;
                }
                WebhookScope::Condition(kind, value) => {
                    let index = rtx.open_table(WEBHOOK_MATCH).map_err(storage)?;
                    let code = kind_code(*kind);
                    let lo = (user_id.as_str(), code, value.as_str(), 0u64, "");
                    let hi = (user_id.as_str(), code, value.as_str(), u64::MAX, ID_MAX);
                    total = index.range(lo..=hi).map_err(storage)?.count() as u64;
                    let range = index.range(lo..=hi).map_err(storage)?;
                    ids = page_ids(range, page, |k| k.4.to_string())?;
                }
            }
            let mut items = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(pair) = tables.read(&id, waiting)? {
                    items.push(pair);
                }
            }
            Ok(Page { total, items })
        })
        .await
    }
}

/// What `id_of` picks from each key of one page of an index range.
fn page_ids<K: redb::Key + 'static, T>(
    range: redb::Range<'_, K, ()>,
    page: PageRequest,
    id_of: impl Fn(K::SelfType<'_>) -> T,
) -> Result<Vec<T>, StoreError> {
    let offset = usize::try_from(page.offset).unwrap_or(usize::MAX);
    let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
    let mut out = Vec::new();
    let mut take = |entry: Result<
        (redb::AccessGuard<'_, K>, redb::AccessGuard<'_, ()>),
        redb::StorageError,
    >|
     -> Result<(), StoreError> {
        let (k, _) = entry.map_err(storage)?;
        out.push(id_of(k.value()));
        Ok(())
    };
    if page.desc {
        for e in range.rev().skip(offset).take(limit) {
            take(e)?;
        }
    } else {
        for e in range.skip(offset).take(limit) {
            take(e)?;
        }
    }
    Ok(out)
}

fn read_dispatch(
    requests: &impl ReadableTable<&'static str, &'static [u8]>,
    states: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<Dispatch>, StoreError> {
    let Some(request) = requests.get(id).map_err(storage)? else {
        return Ok(None);
    };
    let Some(state) = states.get(id).map_err(storage)? else {
        return Err(StoreError::Corrupt(format!("dispatch {id} has no state")));
    };
    records::decode_dispatch(request.value(), state.value()).map(Some)
}

/// A webhook's stats from its folded record, its dispatches not yet folded (oldest first),
/// and the state of its latest dispatch (`lastDispatch`).
fn webhook_stats(
    folded: &records::StatsState,
    waiting: &[String],
    state_of: impl Fn(&str) -> Result<Option<records::DispatchState>, StoreError>,
) -> Result<WebhookStats, StoreError> {
    let last_id = waiting.last().or(folded.last_id.as_ref());
    let last_dispatch = match last_id {
        Some(id) => match state_of(id)? {
            Some(s) => {
                Some(crate::model::LastDispatch { status: s.status, finished_ms: s.finished_ms })
            }
            // Deleted by retention: its end was copied into the stats.
            None if waiting.is_empty() => folded
                .last_ended
                .map(|(status, finished_ms)| crate::model::LastDispatch { status, finished_ms }),
            None => None,
        },
        None => None,
    };
    Ok(WebhookStats { total_dispatches: folded.total + waiting.len() as u64, last_dispatch })
}

/// The tables a webhook is read from.
struct WebhookTables {
    webhooks: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    stats: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    states: redb::ReadOnlyTable<&'static str, &'static [u8]>,
}

impl WebhookTables {
    fn open(rtx: &redb::ReadTransaction) -> Result<WebhookTables, StoreError> {
        Ok(WebhookTables {
            webhooks: rtx.open_table(WEBHOOKS).map_err(storage)?,
            stats: rtx.open_table(WEBHOOK_STATS).map_err(storage)?,
            states: rtx.open_table(DISPATCH_STATES).map_err(storage)?,
        })
    }

    fn read(
        &self,
        id: &str,
        waiting: &PendingInner,
    ) -> Result<Option<(Webhook, WebhookStats)>, StoreError> {
        let Some(bytes) = self.webhooks.get(id).map_err(storage)? else {
            return Ok(None);
        };
        let w = records::decode_webhook(bytes.value())?;
        let folded = match self.stats.get(id).map_err(storage)? {
            Some(b) => records::decode_stats(b.value())?,
            None => records::StatsState::default(),
        };
        let stats = webhook_stats(&folded, waiting.ids(id), |d| {
            let got = self.states.get(d).map_err(storage)?;
            got.map(|b| records::decode_dispatch_state(b.value())).transpose()
        })?;
        Ok(Some((w, stats)))
    }
}

/// One page of the ids of an index range merged with `tail` (sorted, disjoint from it).
fn merged_page_ids(
    range: redb::Range<'_, (&'static str, &'static str), ()>,
    tail: Vec<String>,
    page: PageRequest,
) -> Result<Vec<String>, StoreError> {
    let offset = usize::try_from(page.offset).unwrap_or(usize::MAX);
    let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
    let ids = range.map(|e| e.map(|(k, _)| k.value().1.to_string()).map_err(storage));
    let mut out = Vec::new();
    if page.desc {
        let merged = merge_sorted(ids.rev(), tail.into_iter().rev(), |a, b| a > b);
        for id in merged.skip(offset).take(limit) {
            out.push(id?);
        }
    } else {
        let merged = merge_sorted(ids, tail.into_iter(), |a, b| a < b);
        for id in merged.skip(offset).take(limit) {
            out.push(id?);
        }
    }
    Ok(out)
}

/// Two sequences, each ordered by `first`, merged into one.
fn merge_sorted<A, B>(
    a: A,
    b: B,
    first: impl Fn(&str, &str) -> bool,
) -> impl Iterator<Item = Result<String, StoreError>>
where
    A: Iterator<Item = Result<String, StoreError>>,
    B: Iterator<Item = String>,
{
    let mut a = a.peekable();
    let mut b = b.peekable();
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(Ok(x)), Some(y)) if !first(x, y) => b.next().map(Ok),
        (Some(_), _) => a.next(),
        (None, Some(_)) => b.next().map(Ok),
        (None, None) => None,
    })
}

/// The dispatches not yet folded, and the next `webhook_pending` key.
fn load_pending(db: &Database) -> Result<(Pending, u64), StoreError> {
    let rtx = db.begin_read().map_err(storage)?;
    let table = rtx.open_table(WEBHOOK_PENDING).map_err(storage)?;
    let pending = Pending::default();
    let mut next_seq = 0;
    {
        let mut mirror = pending.write();
        for entry in table.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let (w, d) = v.value();
            mirror.add(w.to_string(), d.to_string());
            next_seq = k.value() + 1;
        }
    }
    Ok((pending, next_seq))
}

/// Checks the store file at `path` without changing it: a copy is opened (repaired and
/// migrated if it needs to be), redb's checksums verified, every record decoded and the
/// outbox's invariants checked. `Err`: the file cannot be opened at all, and why.
pub fn check_file(path: &Path) -> Result<CheckReport, StoreError> {
    if !path.is_file() {
        return Err(StoreError::Storage(format!("{} is not a file", path.display())));
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let copy = dir.join(format!(
        ".{}.check-{}",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| {
        std::fs::copy(path, &copy).map_err(|e| {
            StoreError::Storage(format!("cannot copy {} to check it: {e}", path.display()))
        })?;
        without_panics(|| {
            let mut db = Database::builder().create(&copy).map_err(storage_error)?;
            if !db.check_integrity().map_err(|e| StoreError::Corrupt(e.to_string()))? {
                return Err(StoreError::Corrupt("redb's integrity check failed".into()));
            }
            init_schema(&db)?;
            backup::verify(&db)
        })
    })();
    let _ = std::fs::remove_file(&copy);
    result
}

/// Runs `f`, turning a panic (redb's, on a damaged file) into an error. The panic message is
/// kept for the error and not printed.
fn without_panics<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    static HOOK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = HOOK.lock().unwrap_or_else(|p| p.into_inner());
    let message = Arc::new(std::sync::Mutex::new(String::new()));
    let seen = message.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line()));
        if let Ok(mut m) = seen.lock() {
            *m = format!("{payload}{}", at.unwrap_or_default());
        }
    }));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    result.unwrap_or_else(|_| {
        let m = message.lock().map(|m| m.clone()).unwrap_or_default();
        Err(StoreError::Corrupt(format!("the store file is damaged; redb failed reading it: {m}")))
    })
}

/// Creates the store file empty and readable by its owner only (it holds header templates,
/// which carry secrets), unless it exists; redb initialises an empty file.
/// Whether the file at `path` exists and was not closed cleanly (or cannot be read as a store:
/// then the verifying open reports why).
fn left_unclean(path: &Path) -> bool {
    if std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
        return false;
    }
    // A read-only open refuses, without changing the file, exactly the files that need repair.
    Database::builder().open_read_only(path).is_err()
}

fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Storage(format!("cannot create {}: {e}", path.display()))),
    }
}

/// How many webhooks each user has.
fn count_user_webhooks(db: &Database) -> Result<HashMap<String, usize>, StoreError> {
    let rtx = db.begin_read().map_err(storage)?;
    let table = rtx.open_table(WEBHOOKS_BY_USER).map_err(storage)?;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for entry in table.iter().map_err(storage)? {
        let (k, _) = entry.map_err(storage)?;
        let (user, _, _) = k.value();
        match counts.get_mut(user) {
            Some(n) => *n += 1,
            None => {
                counts.insert(user.to_string(), 1);
            }
        }
    }
    Ok(counts)
}

/// Deleted webhooks whose dispatches are still being ended, oldest first.
fn load_sweeps(db: &Database) -> Result<Vec<(String, u64)>, StoreError> {
    let rtx = db.begin_read().map_err(storage)?;
    let table = rtx.open_table(WEBHOOK_SWEEPS).map_err(storage)?;
    let mut sweeps = Vec::new();
    for entry in table.iter().map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        sweeps.push((k.value().to_string(), v.value()));
    }
    Ok(sweeps)
}

/// Every webhook that can still fire, for the match index.
/// A new signing key from the OS random source.
pub(super) fn new_signing_key() -> Result<Vec<u8>, StoreError> {
    let mut key = vec![0u8; crate::delivery::signing::KEY_BYTES];
    crate::sys::random_bytes(&mut key)
        .map_err(|e| StoreError::Storage(format!("random source: {e}")))?;
    Ok(key)
}

fn load_index(db: &Database) -> Result<MatchIndex, StoreError> {
    let rtx = db.begin_read().map_err(storage)?;
    let webhooks = rtx.open_table(WEBHOOKS).map_err(storage)?;
    let fired = rtx.open_table(WEBHOOK_FIRED).map_err(storage)?;
    let mut changes = Vec::new();
    for entry in webhooks.iter().map_err(storage)? {
        let (_, v) = entry.map_err(storage)?;
        let w = records::decode_webhook(v.value())?;
        if !w.is_enabled || (w.is_ad_hoc && fired.get(w.id.as_str()).map_err(storage)?.is_some()) {
            continue;
        }
        changes.push(index::IndexChange::Add(Arc::new(w)));
    }
    let index = MatchIndex::default();
    index.apply(changes);
    Ok(index)
}

/// Opens every table, creating those missing.
fn for_each_table(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(WEBHOOKS).map_err(storage)?;
    tx.open_table(WEBHOOKS_BY_USER).map_err(storage)?;
    tx.open_table(WEBHOOK_MATCH).map_err(storage)?;
    tx.open_table(WEBHOOK_IDEM).map_err(storage)?;
    tx.open_table(WEBHOOK_STATS).map_err(storage)?;
    tx.open_table(WEBHOOK_FIRED).map_err(storage)?;
    tx.open_table(EVENTS).map_err(storage)?;
    tx.open_table(EVENT_IDEM).map_err(storage)?;
    tx.open_table(DISPATCHES).map_err(storage)?;
    tx.open_table(DISPATCH_STATES).map_err(storage)?;
    tx.open_table(DISPATCHES_BY_USER).map_err(storage)?;
    tx.open_table(DISPATCHES_BY_WEBHOOK).map_err(storage)?;
    tx.open_table(OUTBOX).map_err(storage)?;
    tx.open_table(JOBS).map_err(storage)?;
    tx.open_table(WEBHOOK_SWEEPS).map_err(storage)?;
    tx.open_table(WEBHOOK_PENDING).map_err(storage)?;
    tx.open_table(FINISHED_GROUPS).map_err(storage)?;
    tx.open_table(WEBHOOK_SECRETS).map_err(storage)?;
    tx.open_table(REDELIVERIES).map_err(storage)?;
    Ok(())
}

fn init_schema(db: &Database) -> Result<(), StoreError> {
    let mut tx = db.begin_write().map_err(storage)?;
    // Like every writer commit: this one saves the allocator state, so that a kill before
    // the writer's first commit does not leave a full repair (seconds per GiB) for the next
    // start.
    tx.set_quick_repair(true);
    {
        let mut meta = tx.open_table(META).map_err(storage)?;
        let version = meta.get(META_SCHEMA_VERSION).map_err(storage)?.map(|v| v.value());
        match version {
            Some(v) if !(migrate::OLDEST_MIGRATED..=SCHEMA_VERSION).contains(&v) => {
                return Err(StoreError::Corrupt(format!(
                    "the store has schema version {v}; this hookd reads versions {} to {SCHEMA_VERSION}",
                    migrate::OLDEST_MIGRATED
                )));
            }
            Some(v) => {
                if v < SCHEMA_VERSION {
                    // Tables added since are created first (below, as at every open).
                    for_each_table(&tx)?;
                    migrate::migrate(&tx, v)?;
                    meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION).map_err(storage)?;
                }
                // Set by the writer's last commit on a clean stop; cleared for this run.
                let clean = meta.get(META_CLEAN_CLOSE).map_err(storage)?.map(|v| v.value());
                if clean == Some(1) {
                    tracing::info!("the last run closed the store cleanly");
                } else {
                    tracing::warn!(
                        "the last run did not close the store cleanly; every ACTIVE dispatch is due again"
                    );
                }
            }
            None => {
                meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION).map_err(storage)?;
            }
        }
        meta.insert(META_CLEAN_CLOSE, 0).map_err(storage)?;
    }
    for_each_table(&tx)?;
    tx.commit().map_err(storage)?;
    Ok(())
}
