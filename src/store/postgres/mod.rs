//! The PostgreSQL backend, for several hookd nodes on one database: every node serves the
//! whole API; the database resolves races (row locks, unique keys) and holds every record.
//! `tokio_postgres` is named only under this folder.
//!
//! Each node keeps its own match index in memory. `hookd_meta.changes` counts webhook writes
//! (bumped in each one's transaction): after its own write a node applies the change to its
//! index, and when the count moved otherwise (another node wrote) it reloads the index.
//!
//! Under way (issue 12): webhooks, signing keys and jobs are here; ingest, the outbox and
//! delivery with leases, retention and the rest answer `Unavailable` until they land.

mod schema;
mod webhooks;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{Mutex, Notify};
use tokio_postgres::NoTls;

use super::index::{IndexChange, MatchIndex};
use super::{Fatal, StoreError, records};
use crate::metrics::Metrics;
use crate::model::{EventData, EventType, Webhook};

/// A PostgreSQL error as the store's (fail-stop is the caller's choice: a node survives a
/// database restart by reconnecting).
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => {
            StoreError::Storage(format!("PostgreSQL: {} ({})", db.message(), db.code().code()))
        }
        None => StoreError::Storage(format!("PostgreSQL: {e}")),
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Storage(format!("PostgreSQL connection: {e}"))
}

/// Cheap to clone; all clones share the pool and the match index.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    index: MatchIndex,
    /// `hookd_meta.changes` as the index reflects it.
    index_changes: AtomicI64,
    /// Held while the index is reloaded, so that concurrent reloads do not race.
    reloading: Mutex<()>,
    metrics: Arc<Metrics>,
    fatal: Arc<Fatal>,
    outbox_changed: Arc<Notify>,
}

impl PgStore {
    /// Connects (at most `connections_max` connections), creates or migrates the schema and
    /// loads the match index.
    pub async fn open(url: &str, connections_max: usize) -> Result<PgStore, StoreError> {
        let config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Storage(format!("postgres_url: {e}")))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(connections_max.max(1))
            .build()
            .map_err(|e| StoreError::Storage(format!("PostgreSQL pool: {e}")))?;
        {
            let mut client = pool.get().await.map_err(pool_error)?;
            schema::migrate(&mut client).await?;
        }
        let store = PgStore {
            inner: Arc::new(Inner {
                pool,
                index: MatchIndex::default(),
                index_changes: AtomicI64::new(-1),
                reloading: Mutex::new(()),
                metrics: Arc::new(Metrics::default()),
                fatal: Arc::new(Fatal::default()),
                outbox_changed: Arc::new(Notify::new()),
            }),
        };
        store.reload_index().await?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.inner.pool.get().await.map_err(pool_error)
    }

    /// Rebuilds the match index from the webhooks table, with the change count it reflects
    /// (both read in one snapshot).
    async fn reload_index(&self) -> Result<(), StoreError> {
        let _one = self.inner.reloading.lock().await;
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_error)?;
        let changes: i64 = tx
            .query_one("SELECT value FROM hookd_meta WHERE name = 'changes'", &[])
            .await
            .map_err(pg_error)?
            .get(0);
        let rows = tx
            .query(
                "SELECT record FROM webhooks WHERE is_enabled AND NOT (is_ad_hoc AND fired)",
                &[],
            )
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        let mut webhooks = Vec::with_capacity(rows.len());
        for row in rows {
            webhooks.push(Arc::new(records::decode_webhook(row.get(0))?));
        }
        self.inner.index.replace(webhooks);
        self.inner.index_changes.store(changes, Ordering::SeqCst);
        Ok(())
    }

    /// After this node's webhook write committed as change `changes`: the index takes
    /// `change` if it was at the change before; otherwise another node wrote meanwhile and
    /// the index is reloaded.
    async fn index_after(&self, changes: i64, change: Vec<IndexChange>) -> Result<(), StoreError> {
        let was = self.inner.index_changes.load(Ordering::SeqCst);
        if was == changes - 1
            && self
                .inner
                .index_changes
                .compare_exchange(was, changes, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.inner.index.apply(change);
            return Ok(());
        }
        self.reload_index().await
    }

    pub fn match_webhooks(
        &self,
        user_id: &str,
        events: &[(EventType, EventData)],
        total_max: usize,
    ) -> Option<Vec<Vec<Arc<Webhook>>>> {
        self.inner.index.matches(user_id, events, total_max)
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    pub fn outbox_changed(&self) -> Arc<Notify> {
        self.inner.outbox_changed.clone()
    }

    pub fn fatal(&self) -> Arc<Fatal> {
        self.inner.fatal.clone()
    }

    /// No file: the database's size is PostgreSQL's to report.
    pub fn file_bytes(&self) -> Option<u64> {
        None
    }

    /// How many webhooks are stored and how many dispatches are ACTIVE.
    pub async fn counts(&self) -> Result<(u64, u64), StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM webhooks), (SELECT count(*) FROM dispatches WHERE status = 0)",
                &[],
            )
            .await
            .map_err(pg_error)?;
        let n = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        Ok((n(0), n(1)))
    }
}

/// What is not built on PostgreSQL yet (issue 12, step 2).
pub(super) fn not_yet(what: &str) -> StoreError {
    StoreError::Storage(format!("{what} is not available on PostgreSQL yet"))
}

/// The operations still to come on PostgreSQL (see the module's doc).
impl PgStore {
    pub async fn ingest(
        &self,
        _events: Vec<super::NewEvent>,
        _job: Option<super::JobReport>,
    ) -> Result<Vec<super::EventAnswer>, StoreError> {
        Err(not_yet("ingest"))
    }

    pub async fn record_call(
        &self,
        _dispatch_id: String,
        _call: crate::model::Call,
        _decision: crate::model::Decision,
    ) -> Result<(), StoreError> {
        Err(not_yet("delivery"))
    }

    pub async fn get_dispatch(
        &self,
        _user_id: String,
        _id: String,
    ) -> Result<Option<crate::model::Dispatch>, StoreError> {
        Err(not_yet("dispatches"))
    }

    pub async fn list_dispatches(
        &self,
        _user_id: String,
        _scope: super::DispatchScope,
        _filter: super::DispatchFilter,
        _page: super::PageRequest,
    ) -> Result<super::Page<crate::model::Dispatch>, StoreError> {
        Err(not_yet("dispatches"))
    }

    pub async fn due_dispatches<P: super::DuePicker>(
        &self,
        _picker: P,
    ) -> Result<super::Due, StoreError> {
        Err(not_yet("delivery"))
    }

    pub async fn redeliver(
        &self,
        _user_id: String,
        _dispatch_id: String,
        _now_ms: u64,
    ) -> Result<(), StoreError> {
        Err(not_yet("redelivery"))
    }

    pub async fn redeliver_all(
        &self,
        _user_id: String,
        _webhook_id: String,
        _status: crate::model::DispatchStatus,
        _window: (u64, u64),
        _now_ms: u64,
    ) -> Result<u64, StoreError> {
        Err(not_yet("redelivery"))
    }

    pub fn retention_tick(&self, _now_ms: u64) {}

    pub async fn retain(&self, _now_ms: u64) -> Result<bool, StoreError> {
        Err(not_yet("retention"))
    }

    pub async fn backup(&self, _path: std::path::PathBuf) -> Result<u64, StoreError> {
        Err(StoreError::Storage("on PostgreSQL, back up with pg_dump".into()))
    }

    pub async fn refresh_gauges(&self, _now_ms: u64) -> Result<(), StoreError> {
        let (_, active) = self.counts().await?;
        self.inner.metrics.dispatches_active.set(i64::try_from(active).unwrap_or(i64::MAX));
        Ok(())
    }

    pub async fn outbox_keys(&self) -> Result<Vec<(String, u64, String)>, StoreError> {
        Err(not_yet("the outbox"))
    }

    pub async fn all_dispatches(&self) -> Result<Vec<crate::model::Dispatch>, StoreError> {
        Err(not_yet("dispatches"))
    }
}
