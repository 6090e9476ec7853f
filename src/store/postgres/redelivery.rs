//! Bulk redelivery on PostgreSQL (`POST /v2/webhooks/{id}/redeliver`): a durable job row per
//! webhook (`redeliveries`) run a chunk at a time, each chunk one transaction under the job
//! row's lock. The dispatches a chunk makes ACTIVE, their outbox rows and the job's cursor past
//! them commit together, so a crash makes the job send none twice and skip none.
//!
//! The node that began a job runs it (in a task of its own, so a client that hangs up does not
//! stop it) and answers the request at its end. A node that lapses (not seen within the lease
//! TTL: killed, cut off) leaves its jobs to the first live node that looks; a chunk runs only
//! while the job row names its node, so a lapsed node that wakes up stops at its next chunk.

use std::time::Duration;

use tokio::sync::oneshot;

use super::{PgStore, db_i64, from_db, pg_error};
use crate::model::DispatchStatus;
use crate::store::codes::status_code;
use crate::store::{StoreError, records, window_ids};

/// Dispatches of the webhook a chunk looks at (in the window, any status): one chunk's
/// database time is bounded however long the window and however few of them match.
const CHUNK_SCANNED: i64 = 512;
/// A chunk that failed (the database restarting) is tried again after this.
const RETRY_MS: u64 = 1_000;

/// Where a job stands after a chunk.
enum Step {
    More,
    /// The window is done (or the webhook is gone): the job row is deleted. How many were
    /// made ACTIVE in all.
    Done(u64),
    /// Another node runs the job now (this one lapsed meanwhile).
    Lost,
}

/// Writes the reactivated `states` of the ended dispatches `ids`, ACTIVE and due at `due_ms`,
/// with their outbox rows, and tells every node (no shard named): a single redelivery and a
/// bulk one's chunk.
pub(super) async fn reactivate(
    tx: &deadpool_postgres::Transaction<'_>,
    ids: &[String],
    states: &[Vec<u8>],
    due_ms: u64,
) -> Result<(), StoreError> {
    tx.execute(
        "WITH d AS (
            UPDATE dispatches d SET state = u.state, status = 0, next_due_ms = $3,
                finished_ms = NULL
            FROM unnest($1::text[], $2::bytea[]) AS u(id, state) WHERE d.id = u.id
            RETURNING d.id, d.shard, d.target, d.next_due_ms, d.user_id)
         INSERT INTO outbox SELECT * FROM d
         ON CONFLICT (id) DO UPDATE SET next_due_ms = excluded.next_due_ms",
        &[&ids, &states, &db_i64(due_ms)],
    )
    .await
    .map_err(pg_error)?;
    tx.execute("SELECT pg_notify($1, '')", &[&super::listen::CHANNEL]).await.map_err(pg_error)?;
    Ok(())
}

impl PgStore {
    /// Records a job for the user's webhook and runs it; answers how many dispatches in
    /// `status` created within `window` were made ACTIVE, due at `now_ms`, once the last
    /// chunk committed. `NotFound` if the user has no such webhook, `Refused` while a job
    /// for it runs (on any node).
    pub async fn redeliver_all(
        &self,
        user_id: String,
        webhook_id: String,
        status: DispatchStatus,
        window: (u64, u64),
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let (from_id, until_id) = window_ids(window.0, window.1);
        {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_error)?;
            let owned = tx
                .query_opt(
                    "SELECT 1 FROM webhooks WHERE id = $1 AND user_id = $2 FOR SHARE",
                    &[&webhook_id, &user_id],
                )
                .await
                .map_err(pg_error)?;
            if owned.is_none() {
                return Err(StoreError::NotFound);
            }
            let begun = tx
                .execute(
                    "INSERT INTO redeliveries
                        (webhook_id, user_id, status, from_id, until_id, due_ms, node_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                    &[
                        &webhook_id,
                        &user_id,
                        &i16::from(status_code(status)),
                        &from_id,
                        &until_id,
                        &db_i64(now_ms),
                        &self.inner.node_id,
                    ],
                )
                .await
                .map_err(pg_error)?;
            if begun == 0 {
                return Err(StoreError::Refused(
                    "A redelivery of this webhook's dispatches is under way; retry once it ends."
                        .into(),
                ));
            }
            tx.commit().await.map_err(pg_error)?;
        }
        let (reply, answer) = oneshot::channel();
        tokio::spawn(self.clone().run_redelivery(webhook_id, Some(reply)));
        answer.await.unwrap_or(Err(StoreError::Unavailable))
    }

    /// Runs the job's chunks to its end (or until another node took it or this store closed),
    /// retrying a failed chunk; `reply` gets the count.
    async fn run_redelivery(
        self,
        webhook_id: String,
        reply: Option<oneshot::Sender<Result<u64, StoreError>>>,
    ) {
        let answer = loop {
            if self.inner.closed.load(std::sync::atomic::Ordering::SeqCst) {
                break Err(StoreError::Unavailable);
            }
            // Chunks of all jobs on this node take turns for a few slots, beside the writes.
            let step = match self.inner.redelivery_slots.acquire().await {
                Ok(_slot) => self.redelivery_chunk(&webhook_id).await,
                Err(_) => Err(StoreError::Unavailable),
            };
            match step {
                Ok(Step::More) => {}
                Ok(Step::Done(count)) => break Ok(count),
                Ok(Step::Lost) => break Err(StoreError::Unavailable),
                Err(e) => {
                    tracing::warn!(error = %e, webhook = %webhook_id, "a chunk of a bulk redelivery failed; trying again");
                    tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
                }
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(answer);
        }
    }

    /// One chunk of the job: the next `CHUNK_SCANNED` dispatches of the webhook in its window,
    /// those in the job's status made ACTIVE, and the cursor moved past them, in one
    /// transaction.
    async fn redelivery_chunk(&self, webhook_id: &str) -> Result<Step, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let Some(job) = tx
            .query_opt(
                "SELECT status, from_id, until_id, after_id, due_ms, count FROM redeliveries
                 WHERE webhook_id = $1 AND node_id = $2 FOR UPDATE",
                &[&webhook_id, &self.inner.node_id],
            )
            .await
            .map_err(pg_error)?
        else {
            return Ok(Step::Lost);
        };
        let status: i16 = job.get(0);
        let until_id: String = job.get(2);
        let after_id: String = job.get::<_, Option<String>>(3).unwrap_or_else(|| job.get(1));
        let due_ms = from_db(Some(job.get(4))).unwrap_or(0);
        let mut count = from_db(Some(job.get(5))).unwrap_or(0);
        // Held to the commit: a delete of the webhook waits, then ends what this made ACTIVE.
        let live = tx
            .query_opt("SELECT 1 FROM webhooks WHERE id = $1 FOR SHARE", &[&webhook_id])
            .await
            .map_err(pg_error)?;
        let scanned: Vec<String> = match live {
            None => Vec::new(),
            Some(_) => tx
                .query(
                    "SELECT id FROM dispatches WHERE webhook_id = $1 AND id > $2 AND id <= $3
                     ORDER BY id LIMIT $4",
                    &[&webhook_id, &after_id, &until_id, &CHUNK_SCANNED],
                )
                .await
                .map_err(pg_error)?
                .iter()
                .map(|r| r.get(0))
                .collect(),
        };
        let rows = tx
            .query(
                "SELECT id, state FROM dispatches WHERE id = ANY($1) AND status = $2 FOR UPDATE",
                &[&scanned, &status],
            )
            .await
            .map_err(pg_error)?;
        let (mut ids, mut states) = (Vec::new(), Vec::new());
        for row in &rows {
            let mut state = records::decode_dispatch_state(row.get(1))?;
            if i16::from(status_code(state.status)) != status {
                continue;
            }
            state.reactivate(due_ms);
            ids.push(row.get::<_, String>(0));
            states.push(records::encode_dispatch_state(&state)?);
        }
        if !ids.is_empty() {
            reactivate(&tx, &ids, &states, due_ms).await?;
            count += ids.len() as u64;
        }
        let done = i64::try_from(scanned.len()).unwrap_or(i64::MAX) < CHUNK_SCANNED;
        if done {
            tx.execute("DELETE FROM redeliveries WHERE webhook_id = $1", &[&webhook_id])
                .await
                .map_err(pg_error)?;
        } else {
            tx.execute(
                "UPDATE redeliveries SET after_id = $2, count = $3 WHERE webhook_id = $1",
                &[&webhook_id, &scanned.last(), &db_i64(count)],
            )
            .await
            .map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)?;
        if !ids.is_empty() {
            self.work_added(None);
        }
        Ok(if done { Step::Done(count) } else { Step::More })
    }

    /// Takes over the jobs of nodes that lapsed and runs them here (from the lease round).
    pub(super) async fn resume_redeliveries(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        let ttl_ms = self.inner.lease_ttl_ms as f64;
        let rows = client
            .query(
                "UPDATE redeliveries SET node_id = $1 WHERE node_id NOT IN (
                    SELECT id FROM nodes
                    WHERE seen_at > now() - make_interval(secs => $2::float8 / 1000))
                 RETURNING webhook_id",
                &[&self.inner.node_id, &ttl_ms],
            )
            .await
            .map_err(pg_error)?;
        if !rows.is_empty() {
            tracing::info!(
                webhooks = rows.len(),
                "resuming the bulk redeliveries of nodes that stopped"
            );
        }
        for row in rows {
            tokio::spawn(self.clone().run_redelivery(row.get(0), None));
        }
        Ok(())
    }
}
