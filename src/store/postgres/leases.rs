//! Who delivers what: every target hashes into one of `SHARDS` shards, and each shard is
//! delivered by the one node holding its lease. A node renews its leases every third of
//! `lease_ttl_ms`, takes free or expired ones up to its share (shards over live nodes) and gives
//! up the ones over it. Taking a lease bumps its epoch; every outcome a node records is fenced
//! by the epoch it took the dispatch under, so a node that lost a shard (killed, cut off, or
//! slower than its TTL) cannot record into it any more.
//!
//! The node's own belief never outlasts the database's: a round that starts at local instant
//! `t0` counts its leases valid until `t0 + ttl`, and the database's expiry is `now() + ttl`
//! at a later moment.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{PgStore, SHARDS, db_i64, pg_error};
use crate::store::StoreError;

/// The leases a node holds: shard -> epoch, and until when it may use them.
#[derive(Default)]
pub(super) struct Held {
    pub epochs: HashMap<i16, i64>,
    pub valid_until: Option<Instant>,
}

impl Held {
    /// The shards usable now, in order.
    pub fn usable(&self) -> Vec<i16> {
        if self.valid_until.is_none_or(|v| Instant::now() >= v) {
            return Vec::new();
        }
        let mut shards: Vec<i16> = self.epochs.keys().copied().collect();
        shards.sort_unstable();
        shards
    }
}

impl PgStore {
    /// Renews, takes and gives up leases until the store is dropped; a failed round is logged
    /// and retried (the leases then lapse on their own).
    pub(super) async fn hold_leases(self) {
        let round = Duration::from_millis((self.inner.lease_ttl_ms / 3).max(10));
        loop {
            if let Err(e) = self.lease_round().await {
                tracing::warn!(error = %e, "cannot renew the delivery leases");
            } else if let Err(e) = self.resume_redeliveries().await {
                tracing::warn!(error = %e, "cannot look for bulk redeliveries to take over");
            }
            tokio::time::sleep(round).await;
            if std::sync::Arc::strong_count(&self.inner) <= 1
                || self.inner.closed.load(std::sync::atomic::Ordering::SeqCst)
            {
                return;
            }
        }
    }

    pub(super) async fn lease_round(&self) -> Result<(), StoreError> {
        if self.inner.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let t0 = Instant::now();
        let inner = &self.inner;
        let ttl_ms = db_i64(inner.lease_ttl_ms);
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO nodes (id, seen_at) VALUES ($1, now())
                 ON CONFLICT (id) DO UPDATE SET seen_at = now()",
                &[&inner.node_id],
            )
            .await
            .map_err(pg_error)?;
        let live: i64 = client
            .query_one(
                "SELECT count(*) FROM nodes WHERE seen_at > now() - make_interval(secs => $1::float8 / 1000)",
                &[&(ttl_ms as f64)],
            )
            .await
            .map_err(pg_error)?
            .get(0);
        let share = usize::from(SHARDS).div_ceil(usize::try_from(live.max(1)).unwrap_or(1));
        let (shards, epochs): (Vec<i16>, Vec<i64>) = {
            let held = inner.held.lock().unwrap_or_else(|p| p.into_inner());
            held.epochs.iter().map(|(s, e)| (*s, *e)).unzip()
        };
        let renewed = client
            .query(
                "UPDATE shard_leases l SET expires_at = now() + make_interval(secs => $4::float8 / 1000)
                 FROM unnest($2::int2[], $3::int8[]) AS m(shard, epoch)
                 WHERE l.shard = m.shard AND l.epoch = m.epoch AND l.owner = $1
                   AND l.expires_at > now()
                 RETURNING l.shard, l.epoch",
                &[&inner.node_id, &shards, &epochs, &(ttl_ms as f64)],
            )
            .await
            .map_err(pg_error)?;
        let mut mine: HashMap<i16, i64> = renewed.iter().map(|r| (r.get(0), r.get(1))).collect();
        if mine.len() > share {
            // Over this node's share (a node joined): give up the highest ones; they stop
            // here first, then lapse in the database for the others to take.
            let mut extra: Vec<i16> = mine.keys().copied().collect();
            extra.sort_unstable();
            let extra = extra.split_off(share);
            for s in &extra {
                mine.remove(s);
            }
            self.set_held(mine.clone(), t0);
            client
                .execute(
                    "UPDATE shard_leases SET expires_at = '-infinity'
                     WHERE shard = ANY($2) AND owner = $1",
                    &[&inner.node_id, &extra],
                )
                .await
                .map_err(pg_error)?;
        } else if mine.len() < share {
            let need = i64::try_from(share - mine.len()).unwrap_or(0);
            let taken = client
                .query(
                    "UPDATE shard_leases SET owner = $1, epoch = epoch + 1,
                        expires_at = now() + make_interval(secs => $3::float8 / 1000)
                     WHERE shard IN (SELECT shard FROM shard_leases WHERE expires_at < now()
                                     ORDER BY shard LIMIT $2 FOR UPDATE SKIP LOCKED)
                     RETURNING shard, epoch",
                    &[&inner.node_id, &need, &(ttl_ms as f64)],
                )
                .await
                .map_err(pg_error)?;
            let took = !taken.is_empty();
            mine.extend(taken.iter().map(|r| (r.get::<_, i16>(0), r.get::<_, i64>(1))));
            self.set_held(mine, t0);
            if took {
                // Work may be waiting in the new shards.
                self.work_added(None);
            }
        } else {
            self.set_held(mine, t0);
        }
        Ok(())
    }

    /// On a clean stop (delivery has stopped): gives up every lease at once, so the live
    /// nodes take the shards over at their next round instead of after the TTL.
    pub async fn close(&self) {
        self.inner.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        *self.inner.held.lock().unwrap_or_else(|p| p.into_inner()) = Held::default();
        let released = async {
            let client = self.client().await?;
            client
                .execute(
                    "UPDATE shard_leases SET expires_at = '-infinity' WHERE owner = $1",
                    &[&self.inner.node_id],
                )
                .await
                .map_err(pg_error)?;
            client
                .execute("DELETE FROM nodes WHERE id = $1", &[&self.inner.node_id])
                .await
                .map_err(pg_error)?;
            Ok::<(), StoreError>(())
        };
        if let Err(e) = released.await {
            tracing::warn!(error = %e, "cannot give up the delivery leases; they lapse on their own");
        }
    }

    fn set_held(&self, epochs: HashMap<i16, i64>, t0: Instant) {
        let valid_until = t0 + Duration::from_millis(self.inner.lease_ttl_ms);
        let mut held = self.inner.held.lock().unwrap_or_else(|p| p.into_inner());
        *held = Held { epochs, valid_until: Some(valid_until) };
    }
}
