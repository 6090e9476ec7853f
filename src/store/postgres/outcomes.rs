//! Recording call outcomes on PostgreSQL, inside a writer group's transaction. A dispatch's state
//! as read when it was taken is kept in memory (`Taken`); the outcome is appended to it and
//! written only where the stored state is still that one and this node still holds the lease
//! (and epoch) it was taken under: one statement, no read. A dispatch whose state changed
//! meanwhile (its webhook deleted on some node) is read locked and recorded again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use super::writer::{Failure, Tally, WriteOp, failure};
use super::{PgStore, db_i64};
use crate::store::codes::status_code;
use crate::store::{StoreError, records};

/// A dispatch taken for a call and not yet recorded.
pub(super) struct Taken {
    pub shard: i16,
    /// The epoch of the shard's lease when it was taken: the outcome's fence.
    pub epoch: i64,
    /// The stored state as read when it was taken.
    pub state: Vec<u8>,
}

/// The fenced state updates, then the outbox follows what was written (ended rows leave it,
/// retried ones move to their next due time). A row is written only if its state is still the
/// one the outcome was appended to.
const WRITE_STATES: &str = "WITH w AS (
        UPDATE dispatches d SET state = u.state, status = u.status,
            next_due_ms = u.due, finished_ms = u.finished
        FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::int2[], $5::int8[], $6::int8[],
                    $7::int2[], $8::int8[]) AS u(id, old, state, status, due, finished, shard, epoch)
        JOIN shard_leases l ON l.shard = u.shard AND l.epoch = u.epoch
        WHERE d.id = u.id AND d.state = u.old AND l.owner = $9 AND l.expires_at > now()
        RETURNING d.id, d.status, d.next_due_ms),
     ended AS (DELETE FROM outbox o USING w WHERE o.id = w.id AND w.status <> 0),
     again AS (UPDATE outbox o SET next_due_ms = w.next_due_ms FROM w
        WHERE o.id = w.id AND w.status = 0)
     SELECT id, status FROM w";

/// One outcome to write: the op it answers, its dispatch, the state it was appended to.
struct Outcome<'a> {
    op: usize,
    dispatch_id: &'a str,
    shard: i16,
    epoch: i64,
    old: Vec<u8>,
}

/// The state updates of one group's calls, as columns for `unnest`.
#[derive(Default)]
struct Updates {
    id: Vec<String>,
    old: Vec<Vec<u8>>,
    state: Vec<Vec<u8>>,
    status: Vec<i16>,
    due: Vec<Option<i64>>,
    finished: Vec<Option<i64>>,
    shard: Vec<i16>,
    epoch: Vec<i64>,
}

impl PgStore {
    /// Appends each call to its dispatch's state and applies its decision where this node still
    /// holds the lease the dispatch was taken under; one answer per op (`Ok` for the other ops).
    pub(super) async fn record_calls(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        ops: &[WriteOp],
        tally: &mut Tally,
    ) -> Result<Vec<Result<(), StoreError>>, Failure> {
        let mut answers: Vec<Result<(), StoreError>> = ops.iter().map(|_| Ok(())).collect();
        let mut outcomes = Vec::new();
        {
            let taken = self.inner.taken.lock().unwrap_or_else(|p| p.into_inner());
            for (op, w) in ops.iter().enumerate() {
                let WriteOp::RecordCall { dispatch_id, .. } = w else { continue };
                match taken.get(dispatch_id) {
                    Some(t) => outcomes.push(Outcome {
                        op,
                        dispatch_id,
                        shard: t.shard,
                        epoch: t.epoch,
                        old: t.state.clone(),
                    }),
                    None => answers[op] = Err(lost()),
                }
            }
        }
        if outcomes.is_empty() {
            return Ok(answers);
        }
        let unwritten = self.write_outcomes(tx, ops, outcomes, tally).await?;
        if unwritten.is_empty() {
            return Ok(answers);
        }
        // Changed since taken, or fenced off: read those locked and try once more.
        let mut ids: Vec<&str> = unwritten.iter().map(|o| o.dispatch_id).collect();
        ids.sort_unstable();
        let rows = tx
            .query(
                &tx.prepare_cached(
                    "SELECT id, state FROM dispatches WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                )
                .await
                .map_err(failure)?,
                &[&ids],
            )
            .await
            .map_err(failure)?;
        let mut stored: HashMap<String, Vec<u8>> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        // Deleted meanwhile (retention): nothing to record.
        let again: Vec<Outcome> = unwritten
            .into_iter()
            .filter_map(|o| Some(Outcome { old: stored.remove(o.dispatch_id)?, ..o }))
            .collect();
        for o in self.write_outcomes(tx, ops, again, tally).await? {
            answers[o.op] = Err(lost());
        }
        Ok(answers)
    }

    /// Writes the outcomes in one statement; returns those it did not write (their `old` taken).
    async fn write_outcomes<'a>(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        ops: &[WriteOp],
        mut outcomes: Vec<Outcome<'a>>,
        tally: &mut Tally,
    ) -> Result<Vec<Outcome<'a>>, Failure> {
        if outcomes.is_empty() {
            return Ok(outcomes);
        }
        let mut u = Updates::default();
        let mut shard_of_id = HashMap::with_capacity(outcomes.len());
        for o in &mut outcomes {
            let WriteOp::RecordCall { call, decision, .. } = &ops[o.op] else { continue };
            let mut state = records::decode_dispatch_state(&o.old)?;
            state.record(call.clone(), *decision);
            shard_of_id.insert(o.dispatch_id, o.shard);
            u.id.push(o.dispatch_id.to_string());
            // Moved, not copied: an outcome not written is read again before a second try.
            u.old.push(std::mem::take(&mut o.old));
            u.state.push(records::encode_dispatch_state(&state)?);
            u.status.push(i16::from(status_code(state.status)));
            u.due.push(state.next_due_ms.map(db_i64));
            u.finished.push(state.finished_ms.map(db_i64));
            u.shard.push(o.shard);
            u.epoch.push(o.epoch);
        }
        let rows = tx
            .query(
                &tx.prepare_cached(WRITE_STATES).await.map_err(failure)?,
                &[
                    &u.id,
                    &u.old,
                    &u.state,
                    &u.status,
                    &u.due,
                    &u.finished,
                    &u.shard,
                    &u.epoch,
                    &self.inner.node_id,
                ],
            )
            .await
            .map_err(failure)?;
        let mut written = HashSet::with_capacity(rows.len());
        let mut ended = 0u64;
        for row in &rows {
            let id: &str = row.get(0);
            written.insert(id.to_string());
            let status: i16 = row.get(1);
            if status != 0 {
                ended += 1;
                tally.ended[usize::from(status == 2)] += 1;
            } else if let Some(shard) = shard_of_id.get(id) {
                tally.work_shards.push(*shard);
            }
        }
        self.inner.outbox_removed.fetch_add(ended, Ordering::Relaxed);
        Ok(outcomes.into_iter().filter(|o| !written.contains(o.dispatch_id)).collect())
    }
}

/// Why an outcome is not recorded: the node lost the dispatch's shard meanwhile.
fn lost() -> StoreError {
    StoreError::Refused("this node no longer holds the lease of the dispatch's shard".into())
}
