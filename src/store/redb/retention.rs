//! Retention: finished dispatches (SUCCEEDED or FAILED) older than `finished_max_age_ms` by
//! the time they ended are deleted with their lists' entries, and then the events all of whose
//! dispatches are gone, with their idempotency answers. Deleting happens a chunk per group
//! commit, in the same transactions as the writes, so ingest never waits behind a long delete
//! and a crash leaves every record either whole or gone. Freed pages are reused by redb, so
//! under a steady load the file stops growing once the window is full.
//!
//! The size guard: while the file is larger than `store_bytes_max`, every dispatch a group
//! creates lets retention delete one more finished dispatch, the oldest first, whatever its
//! age, so the records in the file stop growing.
//!
//! `webhook.stats.totalDispatches` keeps counting deleted dispatches (it is a folded count);
//! when the latest dispatch of a webhook goes, its end is copied into the stats so
//! `lastDispatch` still shows it.

use std::sync::atomic::{AtomicU64, Ordering};

use redb::ReadableTable;

use super::StoreError;
use super::batch::Batch;
use super::error::storage;
use super::records;
use crate::model::DispatchStatus;

/// Finished dispatches one group deletes at most (about a millisecond of writer time).
pub(crate) const DISPATCHES_PER_GROUP_MAX: usize = 512;
/// Dispatches the size guard may owe at most.
const GUARD_QUOTA_MAX: u64 = 64 * 1024;
/// Events (plus their dispatch ids, each looked up) one group reads at most.
const EVENT_READS_PER_GROUP_MAX: usize = 2048;

/// What the ticker tells the writer: the time of the latest tick. An atomic, so a tick
/// reaches a busy writer even when its queue is full.
#[derive(Debug, Default)]
pub struct RetentionSignal {
    pub(crate) tick_ms: AtomicU64,
}

/// The writer's retention state between groups.
pub(crate) struct Retention {
    /// 0: finished dispatches are kept until the size guard needs room.
    pub finished_max_age_ms: u64,
    pub signal: std::sync::Arc<RetentionSignal>,
    /// The store file and `store_bytes_max` (0: no bound); its length is read each group
    /// while there is a bound (a `stat`, microseconds).
    file: Option<std::path::PathBuf>,
    store_bytes_max: u64,
    /// The tick being worked on (0: none yet).
    now_ms: u64,
    /// More may be due: keep deleting in the next group without waiting for an op.
    pub busy: bool,
    /// Dispatches the size guard may still delete whatever their age.
    guard_quota: u64,
    /// The event scan resumes after this key; `None`: from the oldest.
    events_after: Option<(u64, String)>,
}

/// What one group's chunk did.
#[derive(Debug, Default)]
pub(crate) struct Deleted {
    pub dispatches: u64,
    pub events: u64,
}

impl Retention {
    pub(crate) fn new(
        finished_max_age_ms: u64,
        signal: std::sync::Arc<RetentionSignal>,
        file: Option<std::path::PathBuf>,
        store_bytes_max: u64,
    ) -> Retention {
        Retention {
            finished_max_age_ms,
            signal,
            file,
            store_bytes_max,
            now_ms: 0,
            busy: false,
            guard_quota: 0,
            events_after: None,
        }
    }

    /// Deletes one chunk in this group, if retention has work: after a new tick, while the
    /// last chunk found more, or while the size guard has quota. `created` is how many
    /// dispatches this group made.
    pub(crate) fn chunk(
        &mut self,
        b: &mut Batch<'_, '_>,
        created: usize,
    ) -> Result<Deleted, StoreError> {
        let tick = self.signal.tick_ms.load(Ordering::Acquire);
        if tick > self.now_ms {
            self.now_ms = tick;
            self.busy = true;
        }
        let over_size = self.over_size();
        if over_size {
            // Capped: while nothing is finished, quota must not pile up for later.
            self.guard_quota = (self.guard_quota + created as u64).min(GUARD_QUOTA_MAX);
            if self.guard_quota > 0 {
                self.busy = true;
            }
        } else {
            self.guard_quota = 0;
        }
        if !self.busy {
            return Ok(Deleted::default());
        }
        if self.now_ms == 0 {
            // The guard needs no clock; the events' cutoff does: until the first tick, now.
            self.now_ms = crate::sys::now_ms();
        }
        let cutoff_ms = match self.finished_max_age_ms {
            0 => None,
            age => Some(self.now_ms.saturating_sub(age)),
        };
        let (dispatches, dispatches_done) = self.dispatches(b, cutoff_ms)?;
        // Under the guard, an event may go as soon as its dispatches are gone.
        let event_cutoff_ms = if over_size { Some(self.now_ms) } else { cutoff_ms };
        // An event created after the oldest listed group of finished dispatches ended may have a
        // dispatch left (a dispatch ends no earlier than its event was made): scanning past
        // that would read, again and again, events whose dispatches are waiting their turn.
        let frontier_ms = b.finished_groups.first().map_err(storage)?.map(|(k, _)| k.value().0);
        let event_cutoff_ms = match (event_cutoff_ms, frontier_ms) {
            (Some(c), Some(f)) => Some(c.min(f)),
            (c, _) => c,
        };
        let (events, events_done) = match event_cutoff_ms {
            Some(c) => self.events(b, c)?,
            None => (0, true),
        };
        self.busy = !(dispatches_done && events_done);
        Ok(Deleted { dispatches, events })
    }

    fn over_size(&self) -> bool {
        self.store_bytes_max > 0
            && self
                .file
                .as_ref()
                .and_then(|f| std::fs::metadata(f).ok())
                .is_some_and(|m| m.len() > self.store_bytes_max)
    }

    /// Deletes the oldest finished dispatches that are due; `true` when none is left due.
    fn dispatches(
        &mut self,
        b: &mut Batch<'_, '_>,
        cutoff_ms: Option<u64>,
    ) -> Result<(u64, bool), StoreError> {
        // Only a dispatch already folded into its webhook's stats and list may go (else the
        // count and the list would lose it). Every id below the least waiting one is folded.
        let least_waiting = b
            .tail
            .least_id()
            .into_iter()
            .chain(b.new_pending.iter().map(|(_, d, _)| d.as_str()))
            .min()
            .map(str::to_string);
        // (listed end time, id) of each dispatch taken; the groups taken whole; the group
        // taken in part, with the ids it keeps.
        let mut due: Vec<(u64, String)> = Vec::new();
        let mut emptied: Vec<(u64, String)> = Vec::new();
        let mut kept: Option<((u64, String), Vec<String>)> = None;
        let mut done = true;
        for entry in b.finished_groups.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let (listed_ms, first) = k.value();
            let aged = cutoff_ms.is_some_and(|c| listed_ms < c);
            if !aged && self.guard_quota == 0 {
                break;
            }
            let ids = std::str::from_utf8(v.value())
                .map_err(|_| StoreError::Corrupt("finished group: not UTF-8".into()))?;
            let room = DISPATCHES_PER_GROUP_MAX - due.len();
            let (taken, left) =
                self.take_ids(ids, aged, least_waiting.as_deref(), room, &mut b.fold_now);
            due.extend(taken.iter().map(|id| (listed_ms, id.to_string())));
            if !left.is_empty() {
                if !taken.is_empty() {
                    let left = left.iter().map(|id| id.to_string()).collect();
                    kept = Some(((listed_ms, first.to_string()), left));
                }
                done = false;
                break;
            }
            emptied.push((listed_ms, first.to_string()));
        }
        for (listed_ms, first) in &emptied {
            b.finished_groups.remove((*listed_ms, first.as_str())).map_err(storage)?;
        }
        if let Some(((listed_ms, first), left)) = kept {
            // Taken in part: the rest stays listed under its own first id.
            b.finished_groups.remove((listed_ms, first.as_str())).map_err(storage)?;
            super::batch::put_finished_group(&mut b.finished_groups, listed_ms, &left)?;
        }
        let mut deleted = 0;
        for (listed_ms, id) in &due {
            deleted += u64::from(delete_dispatch(b, *listed_ms, id)?);
        }
        Ok((deleted, done))
    }

    /// Splits one listed group's ids into those that may go now and the rest, which start at
    /// the first that may not: the chunk is full (`room`), the id is not folded yet (then
    /// `fold_now` is set), or the guard's quota is spent for a group not aged.
    fn take_ids<'a>(
        &mut self,
        ids: &'a str,
        aged: bool,
        least_waiting: Option<&str>,
        room: usize,
        fold_now: &mut bool,
    ) -> (Vec<&'a str>, Vec<&'a str>) {
        let all: Vec<&str> = ids.split('\n').collect();
        let mut taken = 0;
        for id in &all {
            let waiting = least_waiting.is_some_and(|least| *id >= least);
            if waiting {
                // Fold in this group; the next one carries on.
                *fold_now = true;
            }
            if taken == room || waiting || (!aged && self.guard_quota == 0) {
                break;
            }
            if !aged {
                self.guard_quota -= 1;
            }
            taken += 1;
        }
        let (now, rest) = all.split_at(taken);
        (now.to_vec(), rest.to_vec())
    }

    /// Deletes events older than `cutoff_ms` none of whose dispatches is left, resuming where
    /// the last group stopped; `true` when the scan reached the cutoff.
    fn events(&mut self, b: &mut Batch<'_, '_>, cutoff_ms: u64) -> Result<(u64, bool), StoreError> {
        let mut gone = Vec::new();
        let mut reads = 0;
        let mut last = None;
        let mut done = true;
        {
            let start = match &self.events_after {
                Some((ms, id)) => std::ops::Bound::Excluded((*ms, id.as_str())),
                None => std::ops::Bound::Unbounded,
            };
            let range = b
                .events
                .range::<(u64, &str)>((start, std::ops::Bound::Unbounded))
                .map_err(storage)?;
            for entry in range {
                let (k, v) = entry.map_err(storage)?;
                let (created_ms, id) = k.value();
                if created_ms >= cutoff_ms {
                    break;
                }
                if reads >= EVENT_READS_PER_GROUP_MAX {
                    done = false;
                    break;
                }
                let header = records::decode_event_header(v.value())?;
                reads += 1 + header.dispatch_ids.len();
                let mut left = false;
                for d in &header.dispatch_ids {
                    if b.dispatch_states.get(d.as_str()).map_err(storage)?.is_some() {
                        left = true;
                        break;
                    }
                }
                if !left {
                    gone.push((created_ms, id.to_string(), header));
                }
                last = Some((created_ms, id.to_string()));
            }
        }
        for (created_ms, id, header) in &gone {
            b.events.remove((*created_ms, id.as_str())).map_err(storage)?;
            if let Some(key) = &header.idempotency_key {
                let idem = (header.user_id.as_str(), key.as_str());
                let ours = match b.event_idem.get(idem).map_err(storage)? {
                    Some(v) => records::event_answer_id(v.value())? == *id,
                    None => false,
                };
                if ours {
                    b.event_idem.remove(idem).map_err(storage)?;
                }
            }
        }
        self.events_after = if done { None } else { last };
        Ok((gone.len() as u64, done))
    }
}

/// Deletes one finished dispatch listed as ended by `listed_ms`: request, state and its list
/// entries. When it is its webhook's latest, its end is kept in the webhook's stats. A
/// dispatch that is ACTIVE again, or ended later than its listing (it is listed again), or
/// gone already, stays as it is: `false`.
fn delete_dispatch(b: &mut Batch<'_, '_>, listed_ms: u64, id: &str) -> Result<bool, StoreError> {
    let state = match b.dispatch_states.get(id).map_err(storage)? {
        Some(v) => records::decode_dispatch_state(v.value())?,
        None => return Ok(false),
    };
    let relisted = state.finished_ms.is_some_and(|f| f > listed_ms);
    if state.status == DispatchStatus::Active || relisted {
        return Ok(false);
    }
    b.dispatch_states.remove(id).map_err(storage)?;
    b.index_deleted(id, &state)?;
    b.dispatches.remove(id).map_err(storage)?;
    if let Some((stats, changed)) = b.stats(&state.webhook_id)?
        && stats.last_id.as_deref() == Some(id)
    {
        stats.last_ended = Some((state.status, state.finished_ms));
        *changed = true;
    }
    Ok(true)
}
