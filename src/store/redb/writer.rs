//! The single writer thread: owns every write transaction and commits in groups. It takes one
//! operation, drains what else is queued (up to `write_batch_max`), applies them all in one
//! transaction, commits once (one fsync), then answers each. A storage error is fail-stop:
//! every pending operation gets an error and the thread ends, so the process exits non-zero.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use redb::Database;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};

use super::batch::Batch;
use super::error::storage;
use super::index::MatchIndex;
use super::lastrun::LastRun;
use super::ops::{
    OpResult, create, delete, ingest, record_call, redeliver, rotate_signing_key, update,
};
use super::pending::Pending;
use super::redelivery::{self, Redelivery};
use super::retention::Retention;
use super::schema::*;
use super::{Created, EncodedEvent, EventAnswer, Fatal, JobReport, StoreError};
use crate::metrics::{Metrics, RecordLabels, StatusLabels};
use crate::model::{Call, Decision, SigningKeys, Webhook, WebhookPatch, WebhookStats};

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(crate) enum WriteOp {
    CreateWebhook {
        webhook: Webhook,
        /// Its signing key (unused when an earlier create with the same key answers).
        signing_key: Vec<u8>,
        webhooks_max: usize,
        reply: Reply<Created>,
    },
    /// Makes `key` the webhook's current signing key; the one before signs beside it until
    /// `now_ms + overlap_ms`.
    RotateSigningKey {
        user_id: String,
        id: String,
        key: Vec<u8>,
        now_ms: u64,
        overlap_ms: u64,
        reply: Reply<SigningKeys>,
    },
    UpdateWebhook {
        user_id: String,
        id: String,
        patch: WebhookPatch,
        now_ms: u64,
        reply: Reply<(Webhook, WebhookStats)>,
    },
    DeleteWebhook {
        user_id: String,
        id: String,
        now_ms: u64,
        reply: Reply<()>,
    },
    Ingest {
        events: Vec<EncodedEvent>,
        job: Option<JobReport>,
        reply: Reply<Vec<EventAnswer>>,
    },
    RecordCall {
        dispatch_id: String,
        call: Call,
        decision: Decision,
        reply: Reply<()>,
    },
    /// Makes an ended dispatch ACTIVE again, due at `now_ms`, its retry schedule restarted.
    Redeliver {
        user_id: String,
        dispatch_id: String,
        now_ms: u64,
        reply: Reply<()>,
    },
    /// Starts redelivering the webhook's dispatches in `status` created in the window; the
    /// reply (how many were made ACTIVE) comes once the job's last chunk is committed.
    RedeliverAll {
        job: Redelivery,
        reply: Reply<u64>,
    },
    /// Wakes the writer for retention (the ticker's time is in `RetentionSignal`); the reply,
    /// if asked for, says whether retention has more to do after this group.
    Tick {
        reply: Option<Reply<bool>>,
    },
    /// Commit what came before, then stop.
    Close,
}

/// An answer computed inside the transaction, sent only once the commit is known.
type Answer = Box<dyn FnOnce(Option<&StoreError>) + Send>;

fn answer<T: Send + 'static>(reply: Reply<T>, result: Result<T, StoreError>) -> Answer {
    Box::new(move |commit_error: Option<&StoreError>| {
        let _ = match commit_error {
            None => reply.send(result),
            Some(e) => reply.send(Err(StoreError::Failed(e.to_string()))),
        };
    })
}

/// Joins the writer thread; see [`WriterHandle::close`].
pub struct WriterHandle {
    thread: Option<JoinHandle<()>>,
    writes: mpsc::Sender<WriteOp>,
    last_run: Option<LastRun>,
}

impl WriterHandle {
    pub(super) fn recording_close(mut self, last_run: Option<LastRun>) -> WriterHandle {
        self.last_run = last_run;
        self
    }

    /// Asks the writer to commit what is queued and stop, and waits for it; then records
    /// beside the file that hookd closed it.
    pub async fn close(mut self) {
        let _ = self.writes.send(WriteOp::Close).await;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        if let Some(Err(e)) = self.last_run.as_ref().map(LastRun::mark_closed) {
            tracing::warn!(error = %e, "cannot record the close beside the store file");
        }
    }
}

pub(crate) fn spawn(
    db: Arc<Database>,
    writes: mpsc::Sender<WriteOp>,
    rx: mpsc::Receiver<WriteOp>,
    batch_max: usize,
    fatal: Arc<Fatal>,
    outbox_changed: Arc<tokio::sync::Notify>,
    mut state: WriterState,
) -> Result<WriterHandle, StoreError> {
    let thread = std::thread::Builder::new()
        .name("hookd-writer".into())
        .spawn(move || run(&db, rx, batch_max.max(1), &fatal, &outbox_changed, &mut state))
        .map_err(|e| StoreError::Storage(format!("cannot start the writer thread: {e}")))?;
    Ok(WriterHandle { thread: Some(thread), writes, last_run: None })
}

fn run(
    db: &Database,
    mut rx: mpsc::Receiver<WriteOp>,
    batch_max: usize,
    fatal: &Fatal,
    outbox_changed: &tokio::sync::Notify,
    state: &mut WriterState,
) {
    let mut batch: Vec<WriteOp> = Vec::with_capacity(batch_max);
    // Ends on Close, when every sender is gone, or at the first storage error. While deleted
    // webhooks are being swept or retention has work, it does not wait for ops: an empty
    // batch sweeps or deletes a chunk.
    loop {
        let idle =
            state.sweeps.is_empty() && !state.retention.busy && state.redeliveries.is_empty();
        let first = if idle {
            rx.blocking_recv()
        } else {
            match rx.try_recv() {
                Ok(op) => Some(op),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => return,
            }
        };
        if first.is_none() && idle {
            return;
        }
        batch.extend(first);
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let closing = batch.iter().any(|op| matches!(op, WriteOp::Close));
        match commit_batch(db, &mut batch, fatal, state) {
            Ok(true) => outbox_changed.notify_one(),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "storage error; the store stops accepting writes");
                return;
            }
        }
        if closing {
            return;
        }
    }
}

/// Applies `batch` in one transaction and commits; answers every op either way.
/// `Ok(true)`: the commit added outbox keys. On a storage error `fatal` is set before any
/// caller hears back, so every caller of a failed or later write sees `StoreError::Failed`.
fn commit_batch(
    db: &Database,
    batch: &mut Vec<WriteOp>,
    fatal: &Fatal,
    state: &mut WriterState,
) -> Result<bool, StoreError> {
    let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
    let mut outbox_grew = false;
    let mut index_changes = Vec::new();
    let mut ticks = Vec::new();
    let mut started_jobs: Vec<(Redelivery, Reply<u64>)> = Vec::new();
    let mut deleted_now = super::retention::Deleted::default();
    let started = std::time::Instant::now();
    let ops_count = batch.len();
    let mut counts = (0u64, 0u64, [0u64; 2]);
    let mut ops = batch.drain(..);
    let result = (|| {
        let mut tx = db.begin_write().map_err(storage)?;
        // Quick-repair saves the allocator state with each commit, so that opening after a
        // crash takes milliseconds instead of a full repair (seconds per GiB). Its cost is
        // one more fsync per group commit, shared by the whole group.
        tx.set_quick_repair(true);
        let ((new_pending, mut waiting_keys), deleted, next_seq, folding, user_delta) = {
            let tail = state.pending.read();
            let mut b =
                Batch::open(&tx, &tail, &state.index, &state.user_webhooks, state.next_seq)?;
            for op in ops.by_ref() {
                let op = match op {
                    WriteOp::Tick { reply } => {
                        ticks.extend(reply);
                        continue;
                    }
                    WriteOp::RedeliverAll { job, reply } => {
                        let starting =
                            started_jobs.iter().any(|(j, _)| j.webhook_id == job.webhook_id);
                        match redelivery::begin(&mut b, job, starting)? {
                            Ok(job) => started_jobs.push((job, reply)),
                            Err(e) => answers.push(answer(reply, Err(e))),
                        }
                        continue;
                    }
                    op => op,
                };
                let (answer, failure) = apply(&mut b, op);
                answers.extend(answer);
                if let Some(e) = failure {
                    return Err(e);
                }
            }
            let finished = sweep_chunk(&mut b, &state.sweeps)?;
            for job in redelivery::chunk(&mut b, &mut state.redeliveries)? {
                if let Some(reply) = state.redelivery_replies.remove(&job.webhook_id) {
                    answers.push(answer(reply, Ok(job.count)));
                }
            }
            let created = b.new_pending.len();
            deleted_now = state.retention.chunk(&mut b, created)?;
            let folding = b.fold_now || tail.len() + b.new_pending.len() >= state.pending_max;
            if folding {
                let started = std::time::Instant::now();
                b.fold()?;
                tracing::debug!(
                    dispatches = tail.len() + b.new_pending.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "folded per-webhook stats and lists"
                );
            }
            b.flush_stats()?;
            b.flush_counts()?;
            b.flush_finished()?;
            outbox_grew = b.outbox_grew;
            counts = (b.events_stored, b.new_pending.len() as u64, b.ended);
            index_changes = std::mem::take(&mut b.index_changes);
            state.sweeps.retain(|(w, _)| !finished.contains(w));
            state.sweeps.append(&mut b.new_sweeps);
            (
                (std::mem::take(&mut b.new_pending), std::mem::take(&mut b.waiting_keys)),
                std::mem::take(&mut b.deleted),
                b.next_seq,
                folding,
                std::mem::take(&mut b.user_webhooks_delta),
            )
        };
        // See pending.rs: readers must see the folded tables with an empty mirror, or the
        // unfolded ones with the full mirror; so a folding commit happens under the write lock.
        let mut mirror = if folding { Some(state.pending.write()) } else { None };
        // Set before the commit that adds a sweep, cleared after the one that ends the last.
        if !state.sweeps.is_empty() {
            state.sweeping.store(true, Ordering::Release);
        }
        tx.commit().map_err(storage)?;
        if state.sweeps.is_empty() {
            state.sweeping.store(false, Ordering::Release);
        }
        let mut mirror = mirror.take().unwrap_or_else(|| state.pending.write());
        if folding {
            mirror.clear();
        } else {
            for (w, d, u) in new_pending {
                // Taken out, so that only the keys of earlier groups' dispatches are left below.
                let key = waiting_keys.remove(&d).flatten();
                mirror.add(w, u, d, key);
            }
            for (d, key) in waiting_keys {
                mirror.set_key(&d, key);
            }
        }
        for w in &deleted {
            mirror.forget_webhook(w);
        }
        state.next_seq = next_seq;
        for (job, reply) in started_jobs.drain(..) {
            state.redelivery_replies.insert(job.webhook_id.clone(), reply);
            state.redeliveries.push(job);
        }
        for (user, delta) in user_delta {
            let count = state.user_webhooks.entry(user).or_default();
            *count = count.saturating_add_signed(delta);
        }
        Ok(())
    })();
    if result.is_ok() {
        // Before any answer: an acknowledged create matches every event sent after it.
        state.index.apply(index_changes);
        let m = &state.metrics;
        let (events, created, ended) = counts;
        m.events_accepted.inc_by(events);
        m.dispatches_created.inc_by(created);
        for (status, n) in [("SUCCEEDED", ended[0]), ("FAILED", ended[1])] {
            if n > 0 {
                m.dispatches_ended.get_or_create(&StatusLabels { status }).inc_by(n);
            }
        }
        for (record, n) in [("dispatch", deleted_now.dispatches), ("event", deleted_now.events)] {
            if n > 0 {
                m.retention_deleted.get_or_create(&RecordLabels { record }).inc_by(n);
            }
        }
        m.group_commit_ops.observe(ops_count as f64);
        m.group_commit_seconds.observe(started.elapsed().as_secs_f64());
    }
    let busy = state.retention.busy;
    for reply in ticks {
        answers.push(answer(reply, Ok(busy)));
    }
    if let Err(e) = &result {
        // Ops the failed transaction never reached are failed the same way.
        answers.extend(ops.filter_map(reject));
        fatal.trigger(e.to_string());
    } else {
        drop(ops);
    }
    let err = result.as_ref().err();
    for a in answers {
        a(err);
    }
    result.map(|()| outbox_grew)
}

/// What the writer keeps between groups, and what it shares with readers.
pub(crate) struct WriterState {
    pub index: Arc<MatchIndex>,
    pub pending: Arc<Pending>,
    /// The next `webhook_pending` key.
    pub next_seq: u64,
    /// Fold when this many dispatches wait (`limits.webhook_pending_max`).
    pub pending_max: usize,
    /// Deleted webhooks whose dispatches are still being ended: (id, time of the delete).
    pub sweeps: Vec<(String, u64)>,
    /// Shared with the store's readers: set while `sweeps` is not empty.
    pub sweeping: Arc<AtomicBool>,
    /// Webhooks per user (for `limits.webhooks_per_user_max`), counted at open.
    pub user_webhooks: HashMap<String, usize>,
    pub retention: Retention,
    pub metrics: Arc<Metrics>,
    /// Bulk redeliveries under way, and the requests waiting for their counts.
    pub redeliveries: Vec<Redelivery>,
    pub redelivery_replies: HashMap<String, Reply<u64>>,
}

/// Dispatches one group ends for deleted webhooks (a delete itself ends this many inline, so
/// a webhook with fewer is done in its own commit). About a millisecond of writer time.
pub(crate) const SWEEP_CHUNK_DISPATCHES: usize = 1024;

/// Sweeps the oldest deleted webhooks, one chunk in all; returns those finished.
fn sweep_chunk(b: &mut Batch<'_, '_>, sweeps: &[(String, u64)]) -> Result<Vec<String>, StoreError> {
    let mut budget = SWEEP_CHUNK_DISPATCHES;
    let mut finished = Vec::new();
    for (webhook_id, removed_ms) in sweeps {
        if budget == 0 {
            break;
        }
        if b.sweep(webhook_id, *removed_ms, &mut budget)? {
            b.webhook_sweeps.remove(webhook_id.as_str()).map_err(storage)?;
            finished.push(webhook_id.clone());
        }
    }
    Ok(finished)
}

/// An answer for an op that is not applied; with the commit error it becomes `Failed`.
fn reject(op: WriteOp) -> Option<Answer> {
    Some(match op {
        WriteOp::Close => return None,
        WriteOp::Tick { reply: None } => return None,
        WriteOp::Tick { reply: Some(reply) } => answer(reply, Err(StoreError::Unavailable)),
        WriteOp::CreateWebhook { reply, .. } => answer(reply, Err(StoreError::Unavailable)),
        WriteOp::RotateSigningKey { reply, .. } => answer(reply, Err(StoreError::Unavailable)),
        WriteOp::Redeliver { reply, .. } => answer(reply, Err(StoreError::Unavailable)),
        WriteOp::RedeliverAll { reply, .. } => answer(reply, Err(StoreError::Unavailable)),
        WriteOp::UpdateWebhook { reply, .. } => answer(reply, Err(StoreError::Unavailable)),
        WriteOp::DeleteWebhook { reply, .. } => answer(reply, Err(StoreError::Unavailable)),
        WriteOp::Ingest { reply, .. } => answer(reply, Err(StoreError::Unavailable)),
        WriteOp::RecordCall { reply, .. } => answer(reply, Err(StoreError::Unavailable)),
    })
}

/// The answer of an op, and the storage error that aborts the batch, if one happened.
fn settle<T: Send + 'static>(
    reply: Reply<T>,
    r: OpResult<T>,
) -> (Option<Answer>, Option<StoreError>) {
    match r {
        Ok(own) => (Some(answer(reply, own)), None),
        Err(e) => (Some(answer(reply, Err(StoreError::Unavailable))), Some(e)),
    }
}

/// Applies one op. A rule it breaks is its own answer; only storage errors abort the batch.
fn apply(b: &mut Batch<'_, '_>, op: WriteOp) -> (Option<Answer>, Option<StoreError>) {
    match op {
        // Taken apart by `commit_batch` before they get here.
        WriteOp::Tick { .. } => (None, None),
        WriteOp::RedeliverAll { reply, .. } => {
            (Some(answer(reply, Err(StoreError::Storage("redelivery routed late".into())))), None)
        }
        WriteOp::Close => {
            // The stop is clean: the next open says so (a kill leaves this at 0).
            let marked = b.meta.insert(META_CLEAN_CLOSE, 1).map(|_| ()).map_err(storage);
            (None, marked.err())
        }
        WriteOp::CreateWebhook { webhook, signing_key, webhooks_max, reply } => {
            settle(reply, create(b, webhook, signing_key, webhooks_max))
        }
        WriteOp::Redeliver { user_id, dispatch_id, now_ms, reply } => {
            settle(reply, redeliver(b, &user_id, &dispatch_id, now_ms))
        }
        WriteOp::RotateSigningKey { user_id, id, key, now_ms, overlap_ms, reply } => {
            settle(reply, rotate_signing_key(b, &user_id, &id, key, now_ms, overlap_ms))
        }
        WriteOp::UpdateWebhook { user_id, id, patch, now_ms, reply } => {
            settle(reply, update(b, &user_id, &id, &patch, now_ms))
        }
        WriteOp::DeleteWebhook { user_id, id, now_ms, reply } => {
            settle(reply, delete(b, &user_id, &id, now_ms))
        }
        WriteOp::Ingest { events, job, reply } => settle(reply, ingest(b, events, job.as_ref())),
        WriteOp::RecordCall { dispatch_id, call, decision, reply } => {
            settle(reply, record_call(b, &dispatch_id, call, decision))
        }
    }
}
