//! The single writer thread: owns every write transaction and commits in groups. It takes one
//! operation, drains what else is queued (up to `write_batch_max`), applies them all in one
//! transaction, commits once (one fsync), then answers each. A storage error is fail-stop:
//! every pending operation gets an error and the thread ends, so the process exits non-zero.

use std::sync::Arc;
use std::thread::JoinHandle;

use redb::{Database, ReadableTable, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::error::storage;
use super::records::StatsState;
use super::schema::*;
use super::{Created, EventAnswer, Fatal, JobReport, NewEvent, StoreError, records};
use crate::model::{
    Call, Decision, Dispatch, DispatchStatus, EventType, LastDispatch, Webhook, WebhookPatch,
    WebhookStats,
};

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(crate) enum WriteOp {
    CreateWebhook {
        webhook: Webhook,
        reply: Reply<Created>,
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
        events: Vec<NewEvent>,
        job: Option<JobReport>,
        reply: Reply<Vec<EventAnswer>>,
    },
    RecordCall {
        dispatch_id: String,
        call: Call,
        decision: Decision,
        reply: Reply<()>,
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
}

impl WriterHandle {
    /// Asks the writer to commit what is queued and stop, and waits for it.
    pub async fn close(mut self) {
        let _ = self.writes.send(WriteOp::Close).await;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
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
) -> Result<WriterHandle, StoreError> {
    let thread = std::thread::Builder::new()
        .name("hookd-writer".into())
        .spawn(move || run(&db, rx, batch_max.max(1), &fatal, &outbox_changed))
        .map_err(|e| StoreError::Storage(format!("cannot start the writer thread: {e}")))?;
    Ok(WriterHandle { thread: Some(thread), writes })
}

fn run(
    db: &Database,
    mut rx: mpsc::Receiver<WriteOp>,
    batch_max: usize,
    fatal: &Fatal,
    outbox_changed: &tokio::sync::Notify,
) {
    let mut batch: Vec<WriteOp> = Vec::with_capacity(batch_max);
    // Ends on Close, when every sender is gone, or at the first storage error.
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let closing = batch.iter().any(|op| matches!(op, WriteOp::Close));
        match commit_batch(db, &mut batch, fatal) {
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
) -> Result<bool, StoreError> {
    let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
    let mut outbox_grew = false;
    let mut ops = batch.drain(..);
    let result = (|| {
        let mut tx = db.begin_write().map_err(storage)?;
        // Quick-repair saves the allocator state with each commit, so that opening after a
        // crash takes milliseconds instead of a full repair (seconds per GiB). Its cost is
        // one more fsync per group commit, shared by the whole group.
        tx.set_quick_repair(true);
        for op in ops.by_ref() {
            let (answer, failure) = apply(&tx, op, &mut outbox_grew);
            answers.extend(answer);
            if let Some(e) = failure {
                return Err(e);
            }
        }
        tx.commit().map_err(storage)
    })();
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

/// An answer for an op that is not applied; with the commit error it becomes `Failed`.
fn reject(op: WriteOp) -> Option<Answer> {
    Some(match op {
        WriteOp::Close => return None,
        WriteOp::CreateWebhook { reply, .. } => answer(reply, Err(StoreError::Unavailable)),
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
fn apply(
    tx: &WriteTransaction,
    op: WriteOp,
    outbox_grew: &mut bool,
) -> (Option<Answer>, Option<StoreError>) {
    match op {
        WriteOp::Close => {
            // The stop is clean: the next open says so (a kill leaves this at 0).
            let marked = (|| {
                let mut meta = tx.open_table(META).map_err(storage)?;
                meta.insert(META_CLEAN_CLOSE, 1).map_err(storage)?;
                Ok::<(), StoreError>(())
            })();
            (None, marked.err())
        }
        WriteOp::CreateWebhook { webhook, reply } => settle(reply, create(tx, webhook)),
        WriteOp::UpdateWebhook { user_id, id, patch, now_ms, reply } => {
            settle(reply, update(tx, &user_id, &id, &patch, now_ms))
        }
        WriteOp::DeleteWebhook { user_id, id, now_ms, reply } => {
            settle(reply, delete(tx, &user_id, &id, now_ms))
        }
        WriteOp::Ingest { events, job, reply } => {
            settle(reply, ingest(tx, events, job.as_ref(), outbox_grew))
        }
        WriteOp::RecordCall { dispatch_id, call, decision, reply } => {
            settle(reply, record_call(tx, &dispatch_id, call, decision, outbox_grew))
        }
    }
}

/// Outer `Err`: storage failure (aborts the batch). Inner: this op's own answer.
type OpResult<T> = Result<Result<T, StoreError>, StoreError>;

fn load(tx: &WriteTransaction, id: &str) -> Result<Option<(Webhook, WebhookStats)>, StoreError> {
    let webhooks = tx.open_table(WEBHOOKS).map_err(storage)?;
    let stats = tx.open_table(WEBHOOK_STATS).map_err(storage)?;
    super::read_webhook(&webhooks, &stats, id)
}

fn create(tx: &WriteTransaction, w: Webhook) -> OpResult<Created> {
    if let Some(key) = &w.idempotency_key {
        let existing = {
            let idem = tx.open_table(WEBHOOK_IDEM).map_err(storage)?;
            idem.get((w.user_id.as_str(), key.as_str()))
                .map_err(storage)?
                .map(|v| v.value().to_string())
        };
        if let Some(id) = existing {
            let Some((webhook, stats)) = load(tx, &id)? else {
                return Err(StoreError::Corrupt(format!("idempotency key points at missing {id}")));
            };
            return Ok(Ok(Created { webhook, stats, replayed: true }));
        }
        let mut idem = tx.open_table(WEBHOOK_IDEM).map_err(storage)?;
        idem.insert((w.user_id.as_str(), key.as_str()), w.id.as_str()).map_err(storage)?;
    }
    let bytes = records::encode_webhook(&w)?;
    debug_assert!(records::decode_webhook(&bytes).is_ok_and(|d| d == w));
    tx.open_table(WEBHOOKS)
        .map_err(storage)?
        .insert(w.id.as_str(), bytes.as_slice())
        .map_err(storage)?;
    tx.open_table(WEBHOOKS_BY_USER)
        .map_err(storage)?
        .insert((w.user_id.as_str(), w.created_ms, w.id.as_str()), ())
        .map_err(storage)?;
    index_condition(tx, &w, true)?;
    Ok(Ok(Created { webhook: w, stats: WebhookStats::default(), replayed: false }))
}

fn index_condition(tx: &WriteTransaction, w: &Webhook, insert: bool) -> Result<(), StoreError> {
    let mut index = tx.open_table(WEBHOOK_MATCH).map_err(storage)?;
    for (kind, value) in w.condition.keys() {
        let key = (w.user_id.as_str(), kind_code(kind), value, w.created_ms, w.id.as_str());
        if insert {
            index.insert(key, ()).map_err(storage)?;
        } else {
            index.remove(key).map_err(storage)?;
        }
    }
    Ok(())
}

fn update(
    tx: &WriteTransaction,
    user_id: &str,
    id: &str,
    patch: &WebhookPatch,
    now_ms: u64,
) -> OpResult<(Webhook, WebhookStats)> {
    let Some((old, stats)) = load(tx, id)? else { return Ok(Err(StoreError::NotFound)) };
    if old.user_id != user_id {
        return Ok(Err(StoreError::NotFound));
    }
    let new = match old.patched(patch, now_ms) {
        Ok(w) => w,
        Err(e) => return Ok(Err(StoreError::Invalid(e))),
    };
    if new.condition != old.condition {
        index_condition(tx, &old, false)?;
        index_condition(tx, &new, true)?;
    }
    let bytes = records::encode_webhook(&new)?;
    tx.open_table(WEBHOOKS).map_err(storage)?.insert(id, bytes.as_slice()).map_err(storage)?;
    Ok(Ok((new, stats)))
}

fn delete(tx: &WriteTransaction, user_id: &str, id: &str, now_ms: u64) -> OpResult<()> {
    let Some((w, _)) = load(tx, id)? else { return Ok(Err(StoreError::NotFound)) };
    if w.user_id != user_id {
        return Ok(Err(StoreError::NotFound));
    }
    tx.open_table(WEBHOOKS).map_err(storage)?.remove(id).map_err(storage)?;
    tx.open_table(WEBHOOK_STATS).map_err(storage)?.remove(id).map_err(storage)?;
    tx.open_table(WEBHOOKS_BY_USER)
        .map_err(storage)?
        .remove((user_id, w.created_ms, id))
        .map_err(storage)?;
    index_condition(tx, &w, false)?;
    tx.open_table(WEBHOOK_FIRED).map_err(storage)?.remove(id).map_err(storage)?;
    // Its dispatches stay readable; the ACTIVE ones end now.
    let active: Vec<String> = {
        let by_webhook = tx.open_table(DISPATCHES_BY_WEBHOOK).map_err(storage)?;
        let range = by_webhook.range((id, 0u64, "")..=(id, u64::MAX, ID_MAX)).map_err(storage)?;
        let mut ids = Vec::new();
        for entry in range {
            let (k, _) = entry.map_err(storage)?;
            ids.push(k.value().2.to_string());
        }
        ids
    };
    for dispatch_id in active {
        let Some(mut d) = load_dispatch(tx, &dispatch_id)? else { continue };
        if d.status != DispatchStatus::Active {
            continue;
        }
        unqueue(tx, &d)?;
        d.calls.push(Call {
            started_ms: now_ms,
            finished_ms: now_ms,
            error_message: Some("Webhook was removed.".into()),
            response_status: None,
            response_body: None,
        });
        d.status = DispatchStatus::Failed;
        d.next_due_ms = None;
        d.finished_ms = Some(now_ms);
        save_dispatch(tx, &d)?;
    }
    if let Some(key) = &w.idempotency_key {
        // The key is free again: Apify dedupes only against the user's existing webhooks.
        tx.open_table(WEBHOOK_IDEM)
            .map_err(storage)?
            .remove((user_id, key.as_str()))
            .map_err(storage)?;
    }
    Ok(Ok(()))
}

fn load_dispatch(tx: &WriteTransaction, id: &str) -> Result<Option<Dispatch>, StoreError> {
    let created =
        tx.open_table(DISPATCH_IDS).map_err(storage)?.get(id).map_err(storage)?.map(|v| v.value());
    let Some(created) = created else { return Ok(None) };
    let table = tx.open_table(DISPATCHES).map_err(storage)?;
    let got = table.get((created, id)).map_err(storage)?;
    got.map(|b| records::decode_dispatch(b.value())).transpose()
}

/// Stores a dispatch record (its id locator is written once, when it is created).
fn save_dispatch(tx: &WriteTransaction, d: &Dispatch) -> Result<(), StoreError> {
    let bytes = records::encode_dispatch(d)?;
    tx.open_table(DISPATCHES)
        .map_err(storage)?
        .insert((d.created_ms, d.id.as_str()), bytes.as_slice())
        .map_err(storage)?;
    Ok(())
}

/// Removes the dispatch's outbox key (it has one exactly while ACTIVE).
fn unqueue(tx: &WriteTransaction, d: &Dispatch) -> Result<(), StoreError> {
    if let Some(due) = d.next_due_ms {
        let target = d.target_key();
        tx.open_table(OUTBOX)
            .map_err(storage)?
            .remove((target.as_str(), due, d.id.as_str()))
            .map_err(storage)?;
    }
    Ok(())
}

fn enqueue(tx: &WriteTransaction, d: &Dispatch, due: u64) -> Result<(), StoreError> {
    let target = d.target_key();
    tx.open_table(OUTBOX)
        .map_err(storage)?
        .insert((target.as_str(), due, d.id.as_str()), d.created_ms)
        .map_err(storage)?;
    Ok(())
}

fn load_stats(tx: &WriteTransaction, webhook_id: &str) -> Result<StatsState, StoreError> {
    let table = tx.open_table(WEBHOOK_STATS).map_err(storage)?;
    let got = table.get(webhook_id).map_err(storage)?;
    Ok(match got {
        Some(b) => records::decode_stats(b.value())?,
        None => StatsState { stats: WebhookStats::default(), last_id: None },
    })
}

fn save_stats(tx: &WriteTransaction, webhook_id: &str, s: &StatsState) -> Result<(), StoreError> {
    let bytes = records::encode_stats(s)?;
    tx.open_table(WEBHOOK_STATS)
        .map_err(storage)?
        .insert(webhook_id, bytes.as_slice())
        .map_err(storage)?;
    Ok(())
}

/// Keeps `lastDispatch` in step when the webhook's latest dispatch changes status.
fn follow_last_dispatch(tx: &WriteTransaction, d: &Dispatch) -> Result<(), StoreError> {
    if tx
        .open_table(WEBHOOKS)
        .map_err(storage)?
        .get(d.webhook_id.as_str())
        .map_err(storage)?
        .is_none()
    {
        return Ok(());
    }
    let mut s = load_stats(tx, &d.webhook_id)?;
    if s.last_id.as_deref() == Some(d.id.as_str()) {
        s.stats.last_dispatch = Some(LastDispatch { status: d.status, finished_ms: d.finished_ms });
        save_stats(tx, &d.webhook_id, &s)?;
    }
    Ok(())
}

fn job_status(object_json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(object_json).ok()?;
    v.get("status")?.as_str().map(String::from)
}

fn ingest(
    tx: &WriteTransaction,
    events: Vec<NewEvent>,
    job: Option<&JobReport>,
    outbox_grew: &mut bool,
) -> OpResult<Vec<EventAnswer>> {
    if let Some(job) = job {
        let key = (job.user_id.as_str(), job_code(job.kind), job.id.as_str());
        let current = {
            let jobs = tx.open_table(JOBS).map_err(storage)?;
            let got = jobs.get(key).map_err(storage)?;
            got.map(|b| String::from_utf8_lossy(b.value()).into_owned())
        };
        if current.as_deref().and_then(job_status) != job.expected_status {
            return Ok(Err(StoreError::Conflict));
        }
        tx.open_table(JOBS)
            .map_err(storage)?
            .insert(key, job.object_json.as_bytes())
            .map_err(storage)?;
    }
    let mut answers = Vec::with_capacity(events.len());
    for event in events {
        if let Some(key) = &event.idempotency_key {
            let idem = tx.open_table(EVENT_IDEM).map_err(storage)?;
            let first = idem.get((event.user_id.as_str(), key.as_str())).map_err(storage)?;
            if let Some(b) = first {
                let a: EventAnswer = serde_json::from_slice(b.value())
                    .map_err(|e| StoreError::Corrupt(format!("event answer: {e}")))?;
                answers.push(a);
                continue;
            }
        }
        let mut ids = Vec::with_capacity(event.dispatches.len());
        for d in event.dispatches {
            // Deleted since it was matched: the event no longer reaches it. (It is the user's:
            // it was matched through the user's own index, and ids are never reused.)
            let exists = tx
                .open_table(WEBHOOKS)
                .map_err(storage)?
                .get(d.webhook_id.as_str())
                .map_err(storage)?
                .is_some();
            if !exists {
                continue;
            }
            if d.is_ad_hoc && d.event_type != EventType::Test {
                let mut fired = tx.open_table(WEBHOOK_FIRED).map_err(storage)?;
                if fired.insert(d.webhook_id.as_str(), ()).map_err(storage)?.is_some() {
                    continue; // an ad-hoc webhook fires once
                }
            }
            save_dispatch(tx, &d)?;
            tx.open_table(DISPATCH_IDS)
                .map_err(storage)?
                .insert(d.id.as_str(), d.created_ms)
                .map_err(storage)?;
            tx.open_table(DISPATCHES_BY_USER)
                .map_err(storage)?
                .insert((d.user_id.as_str(), d.created_ms, d.id.as_str()), ())
                .map_err(storage)?;
            tx.open_table(DISPATCHES_BY_WEBHOOK)
                .map_err(storage)?
                .insert((d.webhook_id.as_str(), d.created_ms, d.id.as_str()), ())
                .map_err(storage)?;
            if d.status == DispatchStatus::Active
                && let Some(due) = d.next_due_ms
            {
                enqueue(tx, &d, due)?;
                *outbox_grew = true;
            }
            let mut s = load_stats(tx, &d.webhook_id)?;
            s.stats.total_dispatches += 1;
            s.stats.last_dispatch =
                Some(LastDispatch { status: d.status, finished_ms: d.finished_ms });
            s.last_id = Some(d.id.clone());
            save_stats(tx, &d.webhook_id, &s)?;
            ids.push(d.id);
        }
        let a = EventAnswer {
            id: event.id.clone(),
            created_ms: event.created_ms,
            event_type: event.event_type.as_str().to_string(),
            dispatch_ids: ids,
        };
        if let Some(record) = &event.record_json {
            // Version byte, then the event's JSON as it is (it is JSON already: no second encoding).
            let ids = serde_json::to_string(&a.dispatch_ids)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let stored = format!("\u{1}{{\"dispatchIds\":{ids},\"event\":{record}}}");
            tx.open_table(EVENTS)
                .map_err(storage)?
                .insert((event.created_ms, event.id.as_str()), stored.as_bytes())
                .map_err(storage)?;
        }
        if let Some(key) = &event.idempotency_key {
            let bytes = serde_json::to_vec(&a).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            tx.open_table(EVENT_IDEM)
                .map_err(storage)?
                .insert((event.user_id.as_str(), key.as_str()), bytes.as_slice())
                .map_err(storage)?;
        }
        answers.push(a);
    }
    Ok(Ok(answers))
}

fn record_call(
    tx: &WriteTransaction,
    dispatch_id: &str,
    call: Call,
    decision: Decision,
    outbox_grew: &mut bool,
) -> OpResult<()> {
    let Some(mut d) = load_dispatch(tx, dispatch_id)? else { return Ok(Ok(())) };
    let finished_ms = call.finished_ms;
    d.calls.push(call);
    // A dispatch that ended while its call was in flight (its webhook was deleted) keeps
    // its end: the call is recorded, nothing is scheduled.
    if d.status == DispatchStatus::Active {
        unqueue(tx, &d)?;
        match decision {
            Decision::RetryAt(due) => {
                d.next_due_ms = Some(due);
                enqueue(tx, &d, due)?;
                *outbox_grew = true;
            }
            Decision::Succeeded | Decision::Failed => {
                d.status = if decision == Decision::Succeeded {
                    DispatchStatus::Succeeded
                } else {
                    DispatchStatus::Failed
                };
                d.next_due_ms = None;
                d.finished_ms = Some(finished_ms);
            }
        }
    }
    save_dispatch(tx, &d)?;
    follow_last_dispatch(tx, &d)?;
    Ok(Ok(()))
}
