//! The single writer thread: owns every write transaction and commits in groups. It takes one
//! operation, drains what else is queued (up to `write_batch_max`), applies them all in one
//! transaction, commits once (one fsync), then answers each. A storage error is fail-stop:
//! every pending operation gets an error and the thread ends, so the process exits non-zero.

use std::sync::Arc;
use std::thread::JoinHandle;

use redb::{Database, ReadableTable, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::error::storage;
use super::schema::*;
use super::{Created, Fatal, StoreError, records};
use crate::model::{Webhook, WebhookPatch, WebhookStats};

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
            Some(e) => reply.send(Err(StoreError::Storage(e.to_string()))),
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
) -> Result<WriterHandle, StoreError> {
    let thread = std::thread::Builder::new()
        .name("hookd-writer".into())
        .spawn(move || run(&db, rx, batch_max.max(1), &fatal))
        .map_err(|e| StoreError::Storage(format!("cannot start the writer thread: {e}")))?;
    Ok(WriterHandle { thread: Some(thread), writes })
}

fn run(db: &Database, mut rx: mpsc::Receiver<WriteOp>, batch_max: usize, fatal: &Fatal) {
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
        if let Err(e) = commit_batch(db, &mut batch) {
            tracing::error!(error = %e, "storage error; the store stops accepting writes");
            fatal.trigger(e.to_string());
            return;
        }
        if closing {
            return;
        }
    }
}

/// Applies `batch` in one transaction and commits; answers every op either way.
fn commit_batch(db: &Database, batch: &mut Vec<WriteOp>) -> Result<(), StoreError> {
    let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
    let result = (|| {
        let tx = db.begin_write().map_err(storage)?;
        for op in batch.drain(..) {
            if let Some(a) = apply(&tx, op)? {
                answers.push(a);
            }
        }
        tx.commit().map_err(storage)
    })();
    // Ops never reached by a failed transaction drop their reply: the caller sees Unavailable.
    batch.clear();
    let err = result.as_ref().err();
    for a in answers {
        a(err);
    }
    result
}

/// Applies one op. A rule it breaks is its own answer; only storage errors abort the batch.
fn apply(tx: &WriteTransaction, op: WriteOp) -> Result<Option<Answer>, StoreError> {
    Ok(Some(match op {
        WriteOp::Close => return Ok(None),
        WriteOp::CreateWebhook { webhook, reply } => answer(reply, create(tx, webhook)?),
        WriteOp::UpdateWebhook { user_id, id, patch, now_ms, reply } => {
            answer(reply, update(tx, &user_id, &id, &patch, now_ms)?)
        }
        WriteOp::DeleteWebhook { user_id, id, reply } => answer(reply, delete(tx, &user_id, &id)?),
    }))
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

fn delete(tx: &WriteTransaction, user_id: &str, id: &str) -> OpResult<()> {
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
    if let Some(key) = &w.idempotency_key {
        // The key is free again: Apify dedupes only against the user's existing webhooks.
        tx.open_table(WEBHOOK_IDEM)
            .map_err(storage)?
            .remove((user_id, key.as_str()))
            .map_err(storage)?;
    }
    Ok(Ok(()))
}
