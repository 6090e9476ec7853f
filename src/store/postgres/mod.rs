//! The PostgreSQL backend, for several hookd nodes on one database: every node serves the
//! whole API; the database resolves races (row locks, unique keys) and holds every record.
//! `tokio_postgres` is named only under this folder.
//!
//! Each node keeps its own match index in memory. `hookd_meta.changes` counts webhook writes
//! (bumped in each one's transaction): after its own write a node applies the change to its
//! index, and when the count moved otherwise (another node wrote) it reloads the index.
//!
//! A delete ends its webhook's ACTIVE dispatches in its own transaction (redb ends them a
//! chunk at a time in later groups).

mod dispatches;
mod leases;
mod listen;
mod outbox;
mod outcomes;
mod redelivery;
mod retention;
mod schema;
mod walk;
mod webhooks;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use tokio_postgres::NoTls;

use super::index::{IndexChange, MatchIndex};
use super::{
    EncodedEvent, EventAnswer, Fatal, Freshness, IndexStamp, JobReport, Matches, StoreError,
    StoreLimits, records,
};
use crate::metrics::Metrics;
use crate::model::{EventData, EventType};

/// The count of webhook writes ever committed: the version of the webhooks a match index
/// reflects.
const CHANGES: &str = "SELECT value FROM hookd_meta WHERE name = 'changes'";

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

/// Times and counts as PostgreSQL's `bigint` (saturating: no stored value comes near it).
pub(super) fn db_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored `bigint` time back (`None` for NULL or a negative value).
pub(super) fn from_db(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Storage(format!("PostgreSQL connection: {e}"))
}

/// Chunks of bulk redeliveries a node runs at once (redelivery.rs), whatever the jobs.
const REDELIVERY_CHUNKS_AT_ONCE: usize = 2;

/// Writer tasks per node (writer.rs): groups applied at once, when the queue holds enough.
const WRITER_TASKS: usize = 4;

/// Targets are spread over this many shards, each delivered by one node at a time (the
/// migration makes one lease row each). A pass reads each owned shard's targets with one
/// index probe, so fewer shards make cheaper passes; 64 still spreads work over many nodes.
pub(super) const SHARDS: u16 = 64;

/// The shard of a target: FNV-1a of its text, so every node and version computes the same.
pub(super) fn shard_of(target: &str) -> i16 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in target.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    i16::try_from(h % u64::from(SHARDS)).unwrap_or(0)
}

/// Cheap to clone; all clones share the pool and the match index.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    writes: mpsc::Sender<writer::WriteOp>,
    /// This process's name in `nodes` and `shard_leases` (random per start).
    node_id: String,
    lease_ttl_ms: u64,
    held: std::sync::Mutex<leases::Held>,
    /// Set by a clean stop: no lease is renewed or taken after it.
    closed: std::sync::atomic::AtomicBool,
    /// Dispatches taken for a call and not yet recorded.
    taken: std::sync::Mutex<HashMap<String, outcomes::Taken>>,
    index: MatchIndex,
    /// `hookd_meta.changes` as the index reflects it.
    index_changes: AtomicI64,
    /// Held while the index is reloaded, so that concurrent reloads do not race.
    reloading: Mutex<()>,
    /// Freshness checks begun and the number of the last one done (`fresh_index`).
    checks_started: AtomicU64,
    checks_done: AtomicU64,
    checking: Mutex<()>,
    metrics: Arc<Metrics>,
    fatal: Arc<Fatal>,
    outbox_changed: Arc<Notify>,
    /// The shards the next outbox walk probes (walk.rs).
    walk_shards: std::sync::Mutex<walk::WalkShards>,
    /// Outbox rows this node deleted since its last vacuum of the table (outbox.rs).
    outbox_removed: AtomicU64,
    /// Turns for the chunks of bulk redeliveries (`REDELIVERY_CHUNKS_AT_ONCE`).
    redelivery_slots: tokio::sync::Semaphore,
    /// Finished dispatches older than this are deleted (retention.rs); 0 keeps them.
    finished_max_age_ms: u64,
    /// The latest time retention was told, and the wake-up of its task.
    retention_tick_ms: AtomicU64,
    retention_wake: Notify,
    retention_walk: Mutex<retention::Walk>,
}

impl PgStore {
    /// Connects (at most `connections_max` connections), creates or migrates the schema,
    /// loads the match index and starts the writer tasks.
    pub async fn open(
        url: &str,
        connections_max: usize,
        lease_ttl_ms: u64,
        limits: StoreLimits,
    ) -> Result<PgStore, StoreError> {
        let node_id =
            crate::sys::new_id().map_err(|e| StoreError::Storage(format!("random source: {e}")))?;
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Storage(format!("postgres_url: {e}")))?;
        // hookd's statements are short; the outbox walk's cost estimate passes the JIT
        // threshold, and compiling it took ten times as long as running it.
        let options = format!("{} -c jit=off", config.get_options().unwrap_or_default());
        config.options(options.trim_start());
        let listen_config = config.clone();
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
        let (writes, rx) = mpsc::channel(limits.write_queue_max.max(1));
        let store = PgStore {
            inner: Arc::new(Inner {
                pool,
                writes,
                node_id,
                lease_ttl_ms: lease_ttl_ms.max(30),
                held: std::sync::Mutex::new(leases::Held::default()),
                closed: std::sync::atomic::AtomicBool::new(false),
                taken: std::sync::Mutex::new(HashMap::new()),
                index: MatchIndex::default(),
                index_changes: AtomicI64::new(-1),
                reloading: Mutex::new(()),
                checks_started: AtomicU64::new(0),
                checks_done: AtomicU64::new(0),
                checking: Mutex::new(()),
                metrics: Arc::new(Metrics::default()),
                fatal: Arc::new(Fatal::default()),
                outbox_changed: Arc::new(Notify::new()),
                walk_shards: std::sync::Mutex::new(walk::WalkShards::new()),
                outbox_removed: AtomicU64::new(0),
                redelivery_slots: tokio::sync::Semaphore::new(REDELIVERY_CHUNKS_AT_ONCE),
                finished_max_age_ms: limits.finished_max_age_ms,
                retention_tick_ms: AtomicU64::new(0),
                retention_wake: Notify::new(),
                retention_walk: Mutex::new(retention::Walk::default()),
            }),
        };
        store.reload_index().await?;
        let queue = Arc::new(writer::Queue::new(rx, limits.write_batch_max));
        for _ in 0..WRITER_TASKS {
            tokio::spawn(writer::run(store.clone(), queue.clone()));
        }
        // Hold this node's share of the shards before the first pass looks.
        if let Err(e) = store.lease_round().await {
            tracing::warn!(error = %e, "cannot take delivery leases yet");
        }
        tokio::spawn(store.clone().hold_leases());
        tokio::spawn(store.clone().vacuum_outbox());
        tokio::spawn(store.clone().listen(listen_config));
        if limits.finished_max_age_ms > 0 {
            tokio::spawn(store.clone().run_retention());
        }
        Ok(store)
    }

    /// Stores events with their dispatches and outbox rows (and a job report) in one group
    /// transaction; the answer comes after its commit.
    pub async fn ingest(
        &self,
        events: Vec<EncodedEvent>,
        job: Option<JobReport>,
        stamp: Option<IndexStamp>,
    ) -> Result<Vec<EventAnswer>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.write(writer::WriteOp::Ingest { events, job, stamp, reply })?;
        answer.await.unwrap_or(Err(StoreError::Unavailable))
    }

    /// Appends a call to a dispatch and applies the decision, if this node still holds the
    /// lease the dispatch was taken under (`Refused` otherwise: another node calls it again).
    pub async fn record_call(
        &self,
        dispatch_id: String,
        call: crate::model::Call,
        decision: crate::model::Decision,
    ) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.write(writer::WriteOp::RecordCall { dispatch_id, call, decision, reply })?;
        answer.await.unwrap_or(Err(StoreError::Unavailable))
    }

    /// Work was committed in `shards` (`None`: anywhere): the dispatcher's next walk looks
    /// there, and it is woken.
    fn work_added(&self, shards: Option<&[i16]>) {
        {
            let mut walk = self.inner.walk_shards.lock().unwrap_or_else(|p| p.into_inner());
            match shards {
                Some(shards) => walk.mark(shards),
                None => walk.mark_all(),
            }
        }
        self.inner.outbox_changed.notify_one();
    }

    fn write(&self, op: writer::WriteOp) -> Result<(), StoreError> {
        self.inner.writes.try_send(op).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Busy,
            mpsc::error::TrySendError::Closed(_) => StoreError::Unavailable,
        })
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
        let changes: i64 = tx.query_one(CHANGES, &[]).await.map_err(pg_error)?.get(0);
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

    /// Matches from memory: once the index holds every webhook write committed before this
    /// call (`fresh_index`), or at once with the index's version for the writer to check.
    pub async fn match_webhooks(
        &self,
        user_id: &str,
        events: &[(EventType, EventData)],
        total_max: usize,
        freshness: Freshness,
    ) -> Result<Option<(Matches, Option<IndexStamp>)>, StoreError> {
        let stamp = match freshness {
            Freshness::Checked => {
                self.fresh_index().await?;
                None
            }
            // Read before matching: the index is replaced before its version is, so the
            // stamp is never newer than the index matched (at worst older: a needless retry).
            Freshness::AtWrite => Some(IndexStamp(self.inner.index_changes.load(Ordering::SeqCst))),
        };
        Ok(self.inner.index.matches(user_id, events, total_max).map(|m| (m, stamp)))
    }

    /// Makes sure the index is at least as new as the change count read after this call
    /// began. Callers that arrive while a check runs share the next one, so a burst of
    /// ingests costs one small read per round trip, not one each.
    async fn fresh_index(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let arrived = inner.checks_started.load(Ordering::SeqCst);
        let _one = inner.checking.lock().await;
        // A check numbered above `arrived` began after this call did: its answer will do.
        if inner.checks_done.load(Ordering::SeqCst) > arrived {
            return Ok(());
        }
        let mine = inner.checks_started.fetch_add(1, Ordering::SeqCst) + 1;
        let client = self.client().await?;
        let changes: i64 = client
            .query_one(&client.prepare_cached(CHANGES).await.map_err(pg_error)?, &[])
            .await
            .map_err(pg_error)?
            .get(0);
        if changes != inner.index_changes.load(Ordering::SeqCst) {
            self.reload_index().await?;
        }
        inner.checks_done.store(mine, Ordering::SeqCst);
        Ok(())
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
            .query_one("SELECT (SELECT count(*) FROM webhooks), (SELECT count(*) FROM outbox)", &[])
            .await
            .map_err(pg_error)?;
        let n = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        Ok((n(0), n(1)))
    }
}

impl PgStore {
    /// `hookd backup` copies a redb file; a PostgreSQL database is copied with `pg_dump`.
    pub async fn backup(&self, _path: std::path::PathBuf) -> Result<u64, StoreError> {
        Err(StoreError::Storage("on PostgreSQL, back up with pg_dump".into()))
    }

    /// This node's gauges: the ACTIVE dispatches of the shards it holds and how late the
    /// earliest due of them is (summed and maxed over nodes, they describe the whole outbox).
    pub async fn refresh_gauges(&self, now_ms: u64) -> Result<(), StoreError> {
        let shards = self.inner.held.lock().unwrap_or_else(|p| p.into_inner()).usable();
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT count(*), min(next_due_ms) FROM outbox WHERE shard = ANY($1)",
                &[&shards],
            )
            .await
            .map_err(pg_error)?;
        let m = &self.inner.metrics;
        m.dispatches_active.set(row.get::<_, i64>(0));
        let oldest_due_ms = from_db(row.get::<_, Option<i64>>(1));
        let late_ms = oldest_due_ms.map_or(0, |due| now_ms.saturating_sub(due));
        m.oldest_due_age_seconds.set(late_ms as f64 / 1000.0);
        Ok(())
    }
}
