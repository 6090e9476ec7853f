//! The redb backend: one file (`data_dir/hookd.redb`). Reads run in short read transactions on
//! the blocking pool; every write goes to the single writer thread (writer.rs) and is answered
//! only after its group's commit. `redb` is named only under this folder.

mod backup;
mod batch;
mod error;
mod lastrun;
mod lists;
mod migrate;
mod open;
mod ops;
mod pending;
mod reads;
mod redelivery;
mod retention;
mod schema;
mod status_index;
mod writer;

/// The schema this hookd writes (older ones are migrated at open).
pub use schema::SCHEMA_VERSION;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{Database, ReadableTable, ReadableTableMetadata};
use tokio::sync::{Notify, mpsc, oneshot};

pub use super::{StoreError, types::*};
use super::{index, records};
pub use backup::CheckReport;
use retention::RetentionSignal;

use crate::metrics::Metrics;

/// Targets the oldest-due gauge looks at (one short read per target at each scrape).
const OLDEST_DUE_TARGETS_MAX: usize = 10_000;
use error::storage;
use index::MatchIndex;
use pending::Pending;
use schema::*;
use writer::WriteOp;
pub use writer::WriterHandle;

use crate::model::{
    Call, Decision, EventData, EventType, SigningKeys, Webhook, WebhookPatch, WebhookStats,
};

use super::Storage;
use open::create_private;
pub use open::{PlainFile, check_file};
use reads::webhook_stats;

/// Cheap to clone; all clones share the database and the writer.
#[derive(Clone)]
pub struct RedbStore {
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

impl RedbStore {
    /// Tells the writer the time for retention (and whether the file is past
    /// `store_bytes_max`) and wakes it if it is idle. Called about once a second; a full
    /// queue is fine: the writer is then busy and reads the time in its next group.
    pub fn retention_tick(&self, now_ms: u64) {
        self.signal_retention(now_ms);
        let _ = self.writes.try_send(WriteOp::Tick { reply: None });
    }

    /// Like [`RedbStore::retention_tick`], and waits for the group that runs the first chunk.
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

    pub async fn create_webhook(
        &self,
        webhook: Webhook,
        signing_key: Vec<u8>,
        webhooks_max: usize,
    ) -> Result<Created, StoreError> {
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
        window: (u64, u64),
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let job = redelivery::Redelivery::new(user_id, webhook_id, status, window, now_ms);
        self.write(|reply| WriteOp::RedeliverAll { job, reply }).await
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
        key: Vec<u8>,
        now_ms: u64,
        overlap_ms: u64,
    ) -> Result<SigningKeys, StoreError> {
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
        events: Vec<EncodedEvent>,
        job: Option<JobReport>,
    ) -> Result<Vec<EventAnswer>, StoreError> {
        self.write(|reply| WriteOp::Ingest { events, job, reply }).await
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
}
