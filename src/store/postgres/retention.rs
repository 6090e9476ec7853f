//! Retention on PostgreSQL: finished dispatches that ended more than `finished_max_age_ms` ago
//! are deleted, then the events none of whose dispatches is left, with their idempotency
//! answers. One node at a time works (an advisory lock per chunk; the others skip their tick)
//! and each chunk is one short transaction, so ingest never waits behind a long delete.
//!
//! Dispatches are walked by id, which begins with the creation time (a dispatch ends after it
//! was made, so every one due is created before the cutoff), from where the last chunk
//! stopped; a tick starts the walk over. A webhook's stats keep counting what was deleted
//! (`webhook_retained`) and remember how its latest deleted dispatch ended, shown once none is
//! left.
//!
//! `store_bytes_max` bounds a redb file; on PostgreSQL the database's size is the server's to
//! watch.

use std::sync::atomic::Ordering;

use super::{PgStore, db_i64, from_db, pg_error};
use crate::metrics::RecordLabels;
use crate::store::{StoreError, records};

/// Dispatches (or events) one chunk looks at.
const CHUNK_ROWS: i64 = 512;
/// Distinguishes retention's advisory lock from others on the database ("hookd" + 1).
const RETENTION_LOCK: i64 = 0x686f_6f6b_6401;

/// Deletes the finished dispatches among the next `CHUNK_ROWS` after the id `$1` whose ids are
/// below `$2` (created before the cutoff `$3`) that ended before `$3`; folds them into their
/// webhooks' stats; answers the rows looked at, the cursor after them and how many went.
const DISPATCHES_CHUNK: &str = "WITH scanned AS (
        SELECT id FROM dispatches WHERE id > $1 AND id < $2 ORDER BY id LIMIT $4),
    gone AS (
        DELETE FROM dispatches d USING scanned s
        WHERE d.id = s.id AND d.status <> 0 AND d.finished_ms < $3
        RETURNING d.webhook_id, d.id, d.status, d.finished_ms),
    latest AS (
        SELECT DISTINCT ON (webhook_id) webhook_id, id, status, finished_ms,
            count(*) OVER (PARTITION BY webhook_id) AS n
        FROM gone ORDER BY webhook_id, id DESC),
    folded AS (
        INSERT INTO webhook_retained AS r
            (webhook_id, count, last_id, last_status, last_finished_ms)
        SELECT webhook_id, n, id, status, finished_ms FROM latest l
        WHERE EXISTS (SELECT 1 FROM webhooks w WHERE w.id = l.webhook_id)
        ON CONFLICT (webhook_id) DO UPDATE SET count = r.count + excluded.count,
            last_status = CASE WHEN excluded.last_id > r.last_id
                THEN excluded.last_status ELSE r.last_status END,
            last_finished_ms = CASE WHEN excluded.last_id > r.last_id
                THEN excluded.last_finished_ms ELSE r.last_finished_ms END,
            last_id = greatest(r.last_id, excluded.last_id))
    SELECT (SELECT count(*) FROM scanned), (SELECT max(id) FROM scanned),
        (SELECT count(*) FROM gone)";

/// Where this node's walk stands.
#[derive(Default)]
pub(super) struct Walk {
    /// The tick being worked on (0: none yet).
    now_ms: u64,
    /// The dispatch walk resumes after this id; `None`: from the oldest.
    dispatches_after: Option<String>,
    dispatches_done: bool,
    /// The event walk resumes after this id; `None`: from the oldest.
    events_after: Option<String>,
    events_done: bool,
}

impl PgStore {
    /// Tells the node the time for retention; its retention task works until it is done.
    pub fn retention_tick(&self, now_ms: u64) {
        if self.inner.finished_max_age_ms > 0 {
            self.inner.retention_tick_ms.fetch_max(now_ms, Ordering::AcqRel);
            self.inner.retention_wake.notify_one();
        }
    }

    /// Runs one chunk of retention for the time `now_ms`; `true`: more to do.
    pub async fn retain(&self, now_ms: u64) -> Result<bool, StoreError> {
        if self.inner.finished_max_age_ms == 0 {
            return Ok(false);
        }
        self.inner.retention_tick_ms.fetch_max(now_ms, Ordering::AcqRel);
        self.retention_chunk().await
    }

    /// The node's retention task: after each tick, chunks until the walk is done.
    pub(super) async fn run_retention(self) {
        loop {
            self.inner.retention_wake.notified().await;
            if self.inner.closed.load(Ordering::SeqCst) {
                return;
            }
            loop {
                match self.retention_chunk().await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "retention failed; trying again at the next tick");
                        break;
                    }
                }
                if self.inner.closed.load(Ordering::SeqCst) {
                    return;
                }
            }
        }
    }

    /// One chunk: dispatches until their walk is done, then events. `true`: more to do (for
    /// this tick); `false` also when another node holds retention's lock.
    async fn retention_chunk(&self) -> Result<bool, StoreError> {
        let tick_ms = self.inner.retention_tick_ms.load(Ordering::Acquire);
        let mut walk = self.inner.retention_walk.lock().await;
        if tick_ms > walk.now_ms {
            *walk = Walk { now_ms: tick_ms, ..Walk::default() };
        }
        if walk.dispatches_done && walk.events_done {
            return Ok(false);
        }
        let cutoff_ms = db_i64(walk.now_ms.saturating_sub(self.inner.finished_max_age_ms));
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let locked: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&RETENTION_LOCK])
            .await
            .map_err(pg_error)?
            .get(0);
        if !locked {
            return Ok(false);
        }
        let (kind, deleted) = if walk.dispatches_done {
            ("event", self.events_chunk(&tx, &mut walk, cutoff_ms).await?)
        } else {
            ("dispatch", self.dispatches_chunk(&tx, &mut walk, cutoff_ms).await?)
        };
        tx.commit().await.map_err(pg_error)?;
        if deleted > 0 {
            let m = &self.inner.metrics;
            m.retention_deleted.get_or_create(&RecordLabels { record: kind }).inc_by(deleted);
        }
        Ok(!(walk.dispatches_done && walk.events_done))
    }

    async fn dispatches_chunk(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        walk: &mut Walk,
        cutoff_ms: i64,
    ) -> Result<u64, StoreError> {
        let after_id = walk.dispatches_after.clone().unwrap_or_default();
        // Ids begin with their creation time: those below the cutoff's prefix were made before it.
        let below_id = crate::sys::time_id_prefix(from_db(Some(cutoff_ms)).unwrap_or(0));
        let row = tx
            .query_one(DISPATCHES_CHUNK, &[&after_id, &below_id, &cutoff_ms, &CHUNK_ROWS])
            .await
            .map_err(pg_error)?;
        let scanned: i64 = row.get(0);
        if let Some(id) = row.get::<_, Option<String>>(1) {
            walk.dispatches_after = Some(id);
        }
        walk.dispatches_done = scanned < CHUNK_ROWS;
        Ok(from_db(Some(row.get(2))).unwrap_or(0))
    }

    /// Deletes the events among the next `CHUNK_ROWS` created before the cutoff none of whose
    /// dispatches is left, with their idempotency answers.
    async fn events_chunk(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        walk: &mut Walk,
        cutoff_ms: i64,
    ) -> Result<u64, StoreError> {
        let after_id = walk.events_after.clone().unwrap_or_default();
        // Ids begin with their creation time: those below the cutoff's prefix were made before it.
        let below_id = crate::sys::time_id_prefix(from_db(Some(cutoff_ms)).unwrap_or(0));
        let rows = tx
            .query(
                "SELECT id, record FROM events WHERE id > $1 AND id < $2 ORDER BY id LIMIT $3",
                &[&after_id, &below_id, &CHUNK_ROWS],
            )
            .await
            .map_err(pg_error)?;
        walk.events_done = (rows.len() as i64) < CHUNK_ROWS;
        if let Some(last) = rows.last() {
            walk.events_after = Some(last.get(0));
        }
        let mut dispatch_ids = Vec::new();
        let mut headers = Vec::with_capacity(rows.len());
        for row in &rows {
            let header = records::decode_event_header(row.get(1))?;
            dispatch_ids.extend(header.dispatch_ids.iter().cloned());
            headers.push((row.get::<_, String>(0), header.dispatch_ids));
        }
        let left: std::collections::HashSet<String> = tx
            .query("SELECT id FROM dispatches WHERE id = ANY($1)", &[&dispatch_ids])
            .await
            .map_err(pg_error)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let gone: Vec<String> = headers
            .into_iter()
            .filter(|(_, ids)| !ids.iter().any(|d| left.contains(d)))
            .map(|(id, _)| id)
            .collect();
        if gone.is_empty() {
            return Ok(0);
        }
        let n: i64 = tx
            .query_one(
                "WITH e AS (DELETE FROM events WHERE id = ANY($1)
                    RETURNING id, user_id, idempotency_key),
                 k AS (DELETE FROM event_idem k USING e
                    WHERE k.user_id = e.user_id AND k.key = e.idempotency_key
                      AND k.event_id = e.id)
                 SELECT count(*) FROM e",
                &[&gone],
            )
            .await
            .map_err(pg_error)?
            .get(0);
        Ok(from_db(Some(n)).unwrap_or(0))
    }
}
