//! The outbox on PostgreSQL: the `outbox` table holds one small row per ACTIVE dispatch (deleted
//! when it ends). A pass walks the shards this node holds that may have work (walk.rs) with a
//! skip scan over their targets (one index probe per target) and each target's first due rows;
//! the scheduler's picker chooses (delivery/schedule.rs), then the chosen dispatches are read
//! whole. Each taken dispatch remembers the epoch of its shard's lease, which fences the outcome
//! the writer records (writer.rs).
//!
//! A deleted row's index entry stays until a vacuum, and a walk steps over it; autovacuum looks
//! at a database about once a minute, far too seldom at thousands of deliveries a second, so
//! each node vacuums the table itself once it has deleted enough rows.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::outcomes::Taken;
use super::{PgStore, db_i64, from_db, pg_error, shard_of};
use crate::store::{Due, DuePicker, StoreError, records};

/// Due rows read per target in one pass (the picker takes at most its per-target room).
const ROWS_PER_TARGET_MAX: i64 = 32;
/// Rows one pass reads at most, over all targets.
const ROWS_PER_PASS_MAX: i64 = 8192;
/// Dispatches remembered with their lease epoch until their outcome; past this (calls that
/// never came back) the memory starts over and those outcomes are refused.
const TAKEN_MAX: usize = 100_000;
/// A node vacuums the outbox once it has deleted this many rows since its last vacuum...
const VACUUM_AFTER_ROWS: u64 = 2_000;
/// ...looking this often.
const VACUUM_CHECK_MS: u64 = 500;

const WALK: &str = "SELECT s.shard, t.target, c.id, c.user_id, c.next_due_ms
    FROM unnest($1::int2[]) WITH ORDINALITY AS s(shard, n)
    CROSS JOIN LATERAL (
        WITH RECURSIVE r(target) AS (
            (SELECT target FROM outbox WHERE shard = s.shard
             ORDER BY target LIMIT 1)
            UNION ALL
            SELECT (SELECT target FROM outbox WHERE shard = s.shard
                    AND target > r.target ORDER BY target LIMIT 1)
            FROM r WHERE r.target IS NOT NULL
        ) SELECT target FROM r WHERE target IS NOT NULL
    ) t
    CROSS JOIN LATERAL (
        SELECT id, user_id, next_due_ms FROM outbox d
        WHERE d.shard = s.shard AND d.target = t.target
          AND d.id NOT IN (SELECT unnest($2::text[]))
        ORDER BY d.next_due_ms, d.id LIMIT $3
    ) c
    ORDER BY s.n, t.target, c.next_due_ms, c.id
    LIMIT $4";

/// The chosen dispatches, whole, with their webhooks' signing keys when `$2`.
const LOAD: &str = "SELECT d.request, d.state, CASE WHEN $2 THEN w.signing_keys END
    FROM dispatches d LEFT JOIN webhooks w ON w.id = d.webhook_id COLLATE \"C\"
    WHERE d.id = ANY($1) AND d.status = 0";

impl PgStore {
    pub async fn due_dispatches<P: DuePicker>(&self, mut picker: P) -> Result<Due, StoreError> {
        let (mut shards, epochs) = {
            let held = self.inner.held.lock().unwrap_or_else(|p| p.into_inner());
            (held.usable(), held.epochs.clone())
        };
        let mut due = Due::default();
        if shards.is_empty() {
            return Ok(due);
        }
        // Round robin: from the shard after the one served last.
        if let Some(last) = picker.start_after() {
            let at = shard_of(last);
            let split = shards.partition_point(|s| *s <= at);
            shards.rotate_left(split);
        }
        let walked = {
            let mut walk = self.inner.walk_shards.lock().unwrap_or_else(|p| p.into_inner());
            walk.begin(&shards, std::time::Instant::now())
        };
        if walked.is_empty() {
            return Ok(due);
        }
        let in_flight: Vec<String> = {
            let taken = self.inner.taken.lock().unwrap_or_else(|p| p.into_inner());
            taken.keys().cloned().collect()
        };
        let client = self.client().await?;
        let rows = client
            .query(
                &client.prepare_cached(WALK).await.map_err(pg_error)?,
                &[&walked, &in_flight, &ROWS_PER_TARGET_MAX, &ROWS_PER_PASS_MAX],
            )
            .await
            .map_err(pg_error)?;
        {
            let found: std::collections::BTreeSet<i16> = rows.iter().map(|r| r.get(0)).collect();
            let cut_short = rows.len() >= ROWS_PER_PASS_MAX as usize;
            let mut walk = self.inner.walk_shards.lock().unwrap_or_else(|p| p.into_inner());
            walk.settle(&walked, &found, cut_short);
        }
        let now_ms = db_i64(picker.now_ms());
        let mut chosen: Vec<(String, i16)> = Vec::new();
        let mut i = 0;
        while i < rows.len() && !picker.is_full() {
            let target: String = rows[i].get(1);
            let end = rows[i..]
                .iter()
                .position(|r| r.get::<_, &str>(1) != target)
                .map_or(rows.len(), |n| i + n);
            let mut room = picker.target_room(&target);
            for row in &rows[i..end] {
                let due_ms: i64 = row.get::<_, Option<i64>>(4).unwrap_or(0);
                if due_ms > now_ms {
                    let due_ms = from_db(Some(due_ms)).unwrap_or(0);
                    due.next_due_ms = Some(due.next_due_ms.map_or(due_ms, |n| n.min(due_ms)));
                    break;
                }
                let id: &str = row.get(2);
                if picker.in_flight(id) {
                    continue;
                }
                if room == 0 || picker.is_full() || !picker.admit(row.get(3)) {
                    break;
                }
                chosen.push((id.to_string(), row.get(0)));
                room -= 1;
            }
            i = end;
        }
        if chosen.is_empty() {
            return Ok(due);
        }
        let ids: Vec<&str> = chosen.iter().map(|(id, _)| id.as_str()).collect();
        // The webhooks' signing keys come along when the deliveries are signed.
        let rows = client
            .query(
                &client.prepare_cached(LOAD).await.map_err(pg_error)?,
                &[&ids, &picker.wants_signing_keys()],
            )
            .await
            .map_err(pg_error)?;
        let mut by_id = HashMap::with_capacity(rows.len());
        for row in &rows {
            let state: &[u8] = row.get(1);
            let d = records::decode_dispatch(row.get(0), state)?;
            if let Some(keys) = row.get::<_, Option<&[u8]>>(2)
                && !due.signing.contains_key(&d.webhook_id)
            {
                due.signing
                    .insert(d.webhook_id.clone(), Arc::new(records::decode_signing_keys(keys)?));
            }
            by_id.insert(d.id.clone(), (d, state.to_vec()));
        }
        {
            let mut taken = self.inner.taken.lock().unwrap_or_else(|p| p.into_inner());
            if taken.len() + chosen.len() > TAKEN_MAX {
                taken.clear();
            }
            for (id, shard) in &chosen {
                if let (Some((d, state)), Some(epoch)) = (by_id.remove(id), epochs.get(shard)) {
                    taken.insert(id.clone(), Taken { shard: *shard, epoch: *epoch, state });
                    due.dispatches.push((d.target_key(), d));
                }
            }
        }
        Ok(due)
    }
}

impl PgStore {
    /// Vacuums the outbox table whenever this node has deleted enough of its rows, until the
    /// store is dropped or closed.
    pub(super) async fn vacuum_outbox(self) {
        loop {
            tokio::time::sleep(Duration::from_millis(VACUUM_CHECK_MS)).await;
            if Arc::strong_count(&self.inner) <= 1 || self.inner.closed.load(Ordering::SeqCst) {
                return;
            }
            let removed = self.inner.outbox_removed.load(Ordering::Relaxed);
            if removed < VACUUM_AFTER_ROWS {
                continue;
            }
            self.inner.outbox_removed.fetch_sub(removed, Ordering::Relaxed);
            let client = match self.client().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot vacuum the outbox");
                    continue;
                }
            };
            // Another node vacuuming it already does the job.
            if let Err(e) =
                client.batch_execute("VACUUM (SKIP_LOCKED, TRUNCATE false) outbox").await
            {
                tracing::warn!(error = %pg_error(e), "cannot vacuum the outbox");
            }
        }
    }
}
