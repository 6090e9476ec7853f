//! The store: one redb file (`data_dir/hookd.redb`). Reads run in short read transactions on
//! the blocking pool; every write goes to the single writer thread (writer.rs) and is answered
//! only after its group's commit. `redb` is named only under this folder.

mod error;
mod records;
mod schema;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::{Notify, mpsc, oneshot};

pub use error::StoreError;
use error::storage;
use schema::*;
use writer::WriteOp;
pub use writer::WriterHandle;

use crate::model::{ConditionKind, Webhook, WebhookPatch, WebhookStats};

/// redb's page cache; the store is small and the OS caches the file too.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

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

/// Set once by the writer when a storage error stops it; the app waits on it to exit non-zero.
#[derive(Debug, Default)]
pub struct Fatal {
    failed: AtomicBool,
    notify: Notify,
    message: std::sync::Mutex<Option<String>>,
}

impl Fatal {
    fn trigger(&self, message: String) {
        if let Ok(mut m) = self.message.lock() {
            m.get_or_insert(message);
        }
        self.failed.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Waits until a storage error stopped the writer; returns its message.
    pub async fn wait(&self) -> String {
        while !self.is_failed() {
            self.notify.notified().await;
        }
        self.message.lock().ok().and_then(|m| m.clone()).unwrap_or_default()
    }
}

/// Cheap to clone; all clones share the database and the writer.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    writes: mpsc::Sender<WriteOp>,
    fatal: Arc<Fatal>,
}

impl Store {
    /// Opens (or creates) the store file, repairing it after a crash, and starts the writer.
    pub fn open(
        path: &Path,
        write_queue_max: usize,
        write_batch_max: usize,
    ) -> Result<(Store, WriterHandle), StoreError> {
        let db = Database::builder().set_cache_size(CACHE_BYTES).create(path).map_err(storage)?;
        init_schema(&db)?;
        let db = Arc::new(db);
        let fatal = Arc::new(Fatal::default());
        let (tx, rx) = mpsc::channel(write_queue_max);
        let handle = writer::spawn(db.clone(), tx.clone(), rx, write_batch_max, fatal.clone())?;
        Ok((Store { db, writes: tx, fatal }, handle))
    }

    pub fn fatal(&self) -> Arc<Fatal> {
        self.fatal.clone()
    }

    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteOp,
    ) -> Result<T, StoreError> {
        if self.fatal.is_failed() {
            return Err(StoreError::Unavailable);
        }
        let (reply, answer) = oneshot::channel();
        self.writes.try_send(make(reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Busy,
            mpsc::error::TrySendError::Closed(_) => StoreError::Unavailable,
        })?;
        // A dropped reply means the writer stopped before committing this op.
        answer.await.unwrap_or(Err(StoreError::Unavailable))
    }

    /// Stores a new webhook, or returns the one an earlier create with the same key made.
    pub async fn create_webhook(&self, webhook: Webhook) -> Result<Created, StoreError> {
        self.write(|reply| WriteOp::CreateWebhook { webhook, reply }).await
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

    pub async fn delete_webhook(&self, user_id: String, id: String) -> Result<(), StoreError> {
        self.write(|reply| WriteOp::DeleteWebhook { user_id, id, reply }).await
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

    /// The user's webhook `id`; another user's webhook is `None` too.
    pub async fn get_webhook(
        &self,
        user_id: String,
        id: String,
    ) -> Result<Option<(Webhook, WebhookStats)>, StoreError> {
        self.read(move |rtx| {
            let webhooks = rtx.open_table(WEBHOOKS).map_err(storage)?;
            let stats = rtx.open_table(WEBHOOK_STATS).map_err(storage)?;
            match read_webhook(&webhooks, &stats, &id)? {
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
        self.read(move |rtx| {
            let webhooks = rtx.open_table(WEBHOOKS).map_err(storage)?;
            let stats = rtx.open_table(WEBHOOK_STATS).map_err(storage)?;
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
                if let Some(pair) = read_webhook(&webhooks, &stats, &id)? {
                    items.push(pair);
                }
            }
            Ok(Page { total, items })
        })
        .await
    }
}

/// The ids of one page of an index range.
fn page_ids<K: redb::Key + 'static>(
    range: redb::Range<'_, K, ()>,
    page: PageRequest,
    id_of: impl Fn(K::SelfType<'_>) -> String,
) -> Result<Vec<String>, StoreError> {
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

fn read_webhook(
    webhooks: &impl ReadableTable<&'static str, &'static [u8]>,
    stats: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<(Webhook, WebhookStats)>, StoreError> {
    let Some(bytes) = webhooks.get(id).map_err(storage)? else {
        return Ok(None);
    };
    let w = records::decode_webhook(bytes.value())?;
    let s = match stats.get(id).map_err(storage)? {
        Some(b) => records::decode_stats(b.value())?,
        None => WebhookStats::default(),
    };
    Ok(Some((w, s)))
}

fn init_schema(db: &Database) -> Result<(), StoreError> {
    let tx = db.begin_write().map_err(storage)?;
    {
        let mut meta = tx.open_table(META).map_err(storage)?;
        let version = meta.get(META_SCHEMA_VERSION).map_err(storage)?.map(|v| v.value());
        match version {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::Corrupt(format!(
                    "the store has schema version {v}; this hookd reads up to {SCHEMA_VERSION}"
                )));
            }
            Some(_) => {}
            None => {
                meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION).map_err(storage)?;
            }
        }
        tx.open_table(WEBHOOKS).map_err(storage)?;
        tx.open_table(WEBHOOKS_BY_USER).map_err(storage)?;
        tx.open_table(WEBHOOK_MATCH).map_err(storage)?;
        tx.open_table(WEBHOOK_IDEM).map_err(storage)?;
        tx.open_table(WEBHOOK_STATS).map_err(storage)?;
    }
    tx.commit().map_err(storage)?;
    Ok(())
}
