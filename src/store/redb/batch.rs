//! One group commit's view of the store: every table opened once, and what the group changed
//! that is applied only after its commit (new per-webhook entries, deleted webhooks, stats,
//! index changes, sweeps). The writer's ops (`writer.rs`) work through it.

use std::collections::HashMap;

use redb::{ReadableTable, Table, WriteTransaction};

use super::StoreError;
use super::error::storage;
use super::index::{IndexChange, MatchIndex};
use super::pending::{PendingInner, WaitingKey};
use super::records::{self, DispatchState, StatsState};
use super::schema::*;
use super::status_index::CountDeltas;
use crate::model::{DispatchStatus, Webhook, WebhookStats};

/// Every table, opened once per group commit (opening a table looks it up in redb's table
/// tree: doing that per insert cost more than the inserts), and the stats the group changed,
/// written once per webhook just before the commit instead of once per dispatch.
pub(super) struct Batch<'t, 'p> {
    pub(super) meta: Table<'t, &'static str, u64>,
    pub(super) webhooks: Table<'t, &'static str, &'static [u8]>,
    pub(super) webhooks_by_user: Table<'t, (&'static str, u64, &'static str), ()>,
    pub(super) webhook_match: Table<'t, (&'static str, u8, &'static str, u64, &'static str), ()>,
    pub(super) webhook_idem: Table<'t, (&'static str, &'static str), &'static str>,
    pub(super) webhook_stats: Table<'t, &'static str, &'static [u8]>,
    pub(super) webhook_fired: Table<'t, &'static str, ()>,
    pub(super) events: Table<'t, (u64, &'static str), &'static [u8]>,
    pub(super) event_idem: Table<'t, (&'static str, &'static str), &'static [u8]>,
    pub(super) dispatches: Table<'t, &'static str, &'static [u8]>,
    pub(super) dispatch_states: Table<'t, &'static str, &'static [u8]>,
    pub(super) by_user_status: Table<'t, (&'static str, u8, u8, &'static str), ()>,
    pub(super) by_webhook_status: Table<'t, (&'static str, u8, u8, &'static str), ()>,
    pub(super) dispatch_counts: Table<'t, (&'static str, u8, u8), u64>,
    /// This group's changes to `dispatch_counts`, written once per key before the commit.
    pub(super) count_deltas: CountDeltas,
    /// Keys of waiting (unfolded) dispatches set in this group: the new ones' and changed
    /// ones', for the fold and, after the commit, the mirror.
    pub(super) waiting_keys: HashMap<String, WaitingKey>,
    pub(super) outbox: Table<'t, (&'static str, u64, &'static str), ()>,
    pub(super) jobs: Table<'t, (&'static str, u8, &'static str), &'static [u8]>,
    pub(super) webhook_secrets: Table<'t, &'static str, &'static [u8]>,
    pub(super) webhook_pending: Table<'t, u64, (&'static str, &'static str)>,
    pub(super) webhook_sweeps: Table<'t, &'static str, u64>,
    pub(super) redeliveries: Table<'t, &'static str, &'static [u8]>,
    pub(super) finished_groups: Table<'t, (u64, &'static str), &'static [u8]>,
    /// Dispatches this group ended, with their end times: one `finished_groups` entry at the
    /// end of the group.
    pub(super) finished: Vec<(u64, String)>,
    /// Webhooks disabled in this group (the match index drops them once it commits).
    pub(super) disabled: Vec<String>,
    /// Fold in this group whatever the count (a delete needs its waiting dispatches listed).
    pub(super) fold_now: bool,
    /// Webhooks deleted in this group whose sweep goes on in later groups.
    pub(super) new_sweeps: Vec<(String, u64)>,
    /// Dispatches waiting to be folded as of the last commit (only the writer changes it).
    pub(super) tail: &'p PendingInner,
    /// The match index as of the last commit.
    pub(super) index: &'p MatchIndex,
    /// Webhooks per user as of the last commit, and this group's changes to them.
    pub(super) user_webhooks: &'p HashMap<String, usize>,
    pub(super) user_webhooks_delta: HashMap<String, isize>,
    /// This group's new dispatches (webhook id, dispatch id, user id), in order, for the mirror.
    pub(super) new_pending: Vec<(String, String, String)>,
    /// The next `webhook_pending` key.
    pub(super) next_seq: u64,
    /// Webhooks deleted in this group (their waiting entries leave the mirror).
    pub(super) deleted: Vec<String>,
    /// Stats read or changed in this group: webhook id -> (stats, changed), `None` for a
    /// webhook that does not exist.
    pub(super) stats: HashMap<String, Option<(StatsState, bool)>>,
    pub(super) outbox_grew: bool,
    /// Events stored in this group (not idempotent repeats), and dispatches ended
    /// (SUCCEEDED, FAILED): for the metrics, counted once the group is committed.
    pub(super) events_stored: u64,
    pub(super) ended: [u64; 2],
    /// Match-index changes, applied once the group is committed.
    pub(super) index_changes: Vec<IndexChange>,
}

impl<'t, 'p> Batch<'t, 'p> {
    pub(super) fn open(
        tx: &'t WriteTransaction,
        tail: &'p PendingInner,
        index: &'p MatchIndex,
        user_webhooks: &'p HashMap<String, usize>,
        next_seq: u64,
    ) -> Result<Batch<'t, 'p>, StoreError> {
        Ok(Batch {
            index,
            user_webhooks,
            user_webhooks_delta: HashMap::new(),
            webhook_pending: tx.open_table(WEBHOOK_PENDING).map_err(storage)?,
            webhook_sweeps: tx.open_table(WEBHOOK_SWEEPS).map_err(storage)?,
            redeliveries: tx.open_table(REDELIVERIES).map_err(storage)?,
            finished_groups: tx.open_table(FINISHED_GROUPS).map_err(storage)?,
            finished: Vec::new(),
            fold_now: false,
            disabled: Vec::new(),
            new_sweeps: Vec::new(),
            tail,
            new_pending: Vec::new(),
            next_seq,
            deleted: Vec::new(),
            meta: tx.open_table(META).map_err(storage)?,
            webhooks: tx.open_table(WEBHOOKS).map_err(storage)?,
            webhooks_by_user: tx.open_table(WEBHOOKS_BY_USER).map_err(storage)?,
            webhook_match: tx.open_table(WEBHOOK_MATCH).map_err(storage)?,
            webhook_idem: tx.open_table(WEBHOOK_IDEM).map_err(storage)?,
            webhook_stats: tx.open_table(WEBHOOK_STATS).map_err(storage)?,
            webhook_fired: tx.open_table(WEBHOOK_FIRED).map_err(storage)?,
            events: tx.open_table(EVENTS).map_err(storage)?,
            event_idem: tx.open_table(EVENT_IDEM).map_err(storage)?,
            dispatches: tx.open_table(DISPATCHES).map_err(storage)?,
            dispatch_states: tx.open_table(DISPATCH_STATES).map_err(storage)?,
            by_user_status: tx.open_table(DISPATCHES_BY_USER_STATUS).map_err(storage)?,
            by_webhook_status: tx.open_table(DISPATCHES_BY_WEBHOOK_STATUS).map_err(storage)?,
            dispatch_counts: tx.open_table(DISPATCH_COUNTS).map_err(storage)?,
            count_deltas: Default::default(),
            waiting_keys: HashMap::new(),
            outbox: tx.open_table(OUTBOX).map_err(storage)?,
            jobs: tx.open_table(JOBS).map_err(storage)?,
            webhook_secrets: tx.open_table(WEBHOOK_SECRETS).map_err(storage)?,
            stats: HashMap::new(),
            outbox_grew: false,
            events_stored: 0,
            ended: [0; 2],
            index_changes: Vec::new(),
        })
    }

    /// The webhook's stats as this group sees them; `None` if the webhook does not exist. Every
    /// webhook has a stats record from its create to its delete, so this one small lookup also
    /// answers "does it still exist" on the ingest path, without reading the webhook.
    pub(super) fn stats(
        &mut self,
        webhook_id: &str,
    ) -> Result<Option<&mut (StatsState, bool)>, StoreError> {
        if !self.stats.contains_key(webhook_id) {
            let got = self.webhook_stats.get(webhook_id).map_err(storage)?;
            let s = match got {
                Some(b) => Some((records::decode_stats(b.value())?, false)),
                None => None,
            };
            self.stats.insert(webhook_id.to_string(), s);
        }
        Ok(self.stats.get_mut(webhook_id).and_then(Option::as_mut))
    }

    /// Writes the changed stats (a deleted webhook's entry is `None`).
    pub(super) fn flush_stats(&mut self) -> Result<(), StoreError> {
        let mut changed: Vec<_> = std::mem::take(&mut self.stats).into_iter().collect();
        // In key order: after a fold there may be thousands, and order keeps the tree walk local.
        changed.sort_by(|a, b| a.0.cmp(&b.0));
        for (id, entry) in changed {
            if let Some((s, true)) = entry {
                let bytes = records::encode_stats(&s)?;
                self.webhook_stats.insert(id.as_str(), bytes.as_slice()).map_err(storage)?;
            }
        }
        Ok(())
    }

    /// Whether the stored webhook `id` is disabled (`false` if there is none).
    pub(super) fn is_disabled(&self, id: &str) -> Result<bool, StoreError> {
        match self.webhooks.get(id).map_err(storage)? {
            Some(bytes) => Ok(!records::decode_webhook(bytes.value())?.is_enabled),
            None => Ok(false),
        }
    }

    pub(super) fn load(&mut self, id: &str) -> Result<Option<(Webhook, WebhookStats)>, StoreError> {
        let Some(bytes) = self.webhooks.get(id).map_err(storage)? else {
            return Ok(None);
        };
        let w = records::decode_webhook(bytes.value())?;
        drop(bytes);
        let folded = self.stats(id)?.map(|(s, _)| s.clone()).unwrap_or_default();
        let waiting = self.waiting_ids(id);
        let stats = super::webhook_stats(&folded, &waiting, |d| {
            let got = self.dispatch_states.get(d).map_err(storage)?;
            got.map(|b| records::decode_dispatch_state(b.value())).transpose()
        })?;
        Ok(Some((w, stats)))
    }

    /// The webhook's dispatches not yet folded, oldest first (earlier groups, then this one).
    pub(super) fn waiting_ids(&self, webhook_id: &str) -> Vec<String> {
        let mut ids = self.tail.ids(webhook_id).to_vec();
        ids.extend(
            self.new_pending.iter().filter(|(w, _, _)| w == webhook_id).map(|(_, d, _)| d.clone()),
        );
        ids
    }

    /// Folds every waiting dispatch into `webhook_stats` and `dispatches_by_webhook_status`,
    /// in commit order, and empties `webhook_pending`. Those of deleted webhooks are dropped
    /// (or listed for their sweep).
    pub(super) fn fold(&mut self) -> Result<(), StoreError> {
        let mut rows = Vec::with_capacity(self.tail.len() + self.new_pending.len());
        for entry in self.webhook_pending.iter().map_err(storage)? {
            let (_, v) = entry.map_err(storage)?;
            let (w, d) = v.value();
            rows.push((w.to_string(), d.to_string()));
        }
        // By webhook (stably, so each webhook's own keep their commit order): the stats and
        // index inserts then walk the trees in key order instead of jumping about.
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let new_pending = std::mem::take(&mut self.new_pending);
        let users: HashMap<&str, &str> =
            new_pending.iter().map(|(_, d, u)| (d.as_str(), u.as_str())).collect();
        let mut user_keys = Vec::with_capacity(rows.len());
        for (w, d) in rows {
            let listed = match self.stats(&w)? {
                Some((s, changed)) => {
                    s.total += 1;
                    s.last_id = Some(d.clone());
                    s.last_ended = None;
                    *changed = true;
                    true
                }
                // A deleted webhook still being swept: list it where the sweep looks.
                None => self.webhook_sweeps.get(w.as_str()).map_err(storage)?.is_some(),
            };
            self.index_folded(&w, &d, listed, &users, &mut user_keys)?;
        }
        drop(users);
        self.index_folded_users(user_keys)?;
        self.new_pending = new_pending;
        self.webhook_pending.retain(|_, _| false).map_err(storage)?;
        Ok(())
    }

    /// Ends the dispatch if it is still ACTIVE: its webhook was removed at `removed_ms`.
    pub(super) fn end_removed(
        &mut self,
        dispatch_id: &str,
        removed_ms: u64,
    ) -> Result<(), StoreError> {
        let Some(mut s) = self.load_state(dispatch_id)? else { return Ok(()) };
        if s.status != DispatchStatus::Active {
            return Ok(());
        }
        self.unqueue(dispatch_id, &s)?;
        s.end_removed(removed_ms);
        self.mark_finished(dispatch_id, removed_ms, DispatchStatus::Failed)?;
        self.save_state(dispatch_id, &s, DispatchStatus::Active)
    }

    /// Lists an ended dispatch for retention, by the time it ended (written by
    /// `flush_finished` with the others of this group).
    pub(super) fn mark_finished(
        &mut self,
        dispatch_id: &str,
        finished_ms: u64,
        status: DispatchStatus,
    ) -> Result<(), StoreError> {
        self.finished.push((finished_ms, dispatch_id.to_string()));
        self.ended[usize::from(status != DispatchStatus::Succeeded)] += 1;
        Ok(())
    }

    /// Writes the dispatches this group ended as one `finished_groups` entry.
    pub(super) fn flush_finished(&mut self) -> Result<(), StoreError> {
        let finished = std::mem::take(&mut self.finished);
        let Some(latest_ms) = finished.iter().map(|(ms, _)| *ms).max() else { return Ok(()) };
        let mut ids: Vec<String> = finished.into_iter().map(|(_, id)| id).collect();
        ids.sort_unstable();
        ids.dedup();
        put_finished_group(&mut self.finished_groups, latest_ms, &ids)
    }

    /// One chunk of a deleted webhook's sweep: ends up to `budget` of its listed dispatches
    /// and drops their list entries (nothing reads a deleted webhook's list; its counts went
    /// with its stats record).
    /// `true` when the list is empty.
    pub(super) fn sweep(
        &mut self,
        webhook_id: &str,
        removed_ms: u64,
        budget: &mut usize,
    ) -> Result<bool, StoreError> {
        let mut keys = Vec::new();
        let range = (webhook_id, 0, 0, "")..=(webhook_id, u8::MAX, u8::MAX, ID_MAX);
        for entry in self.by_webhook_status.range(range).map_err(storage)?.take(*budget) {
            let (k, _) = entry.map_err(storage)?;
            let (_, st, et, id) = k.value();
            keys.push((st, et, id.to_string()));
        }
        let asked = *budget;
        // Unlisted first, so ending it lists it nowhere.
        for (st, et, id) in &keys {
            self.by_webhook_status.remove((webhook_id, *st, *et, id.as_str())).map_err(storage)?;
            self.end_removed(id, removed_ms)?;
        }
        *budget -= keys.len();
        Ok(keys.len() < asked)
    }

    pub(super) fn load_state(
        &self,
        dispatch_id: &str,
    ) -> Result<Option<DispatchState>, StoreError> {
        let got = self.dispatch_states.get(dispatch_id).map_err(storage)?;
        got.map(|b| records::decode_dispatch_state(b.value())).transpose()
    }

    /// Writes the dispatch's state, which had status `was` (its index keys move with it).
    pub(super) fn save_state(
        &mut self,
        dispatch_id: &str,
        s: &DispatchState,
        was: DispatchStatus,
    ) -> Result<(), StoreError> {
        let bytes = records::encode_dispatch_state(s)?;
        self.dispatch_states.insert(dispatch_id, bytes.as_slice()).map_err(storage)?;
        self.index_moved(dispatch_id, s, was)
    }

    /// Removes the dispatch's outbox key (it has one exactly while ACTIVE).
    pub(super) fn unqueue(
        &mut self,
        dispatch_id: &str,
        s: &DispatchState,
    ) -> Result<(), StoreError> {
        if let Some(due) = s.next_due_ms {
            self.outbox.remove((s.target.as_str(), due, dispatch_id)).map_err(storage)?;
        }
        Ok(())
    }

    pub(super) fn enqueue(
        &mut self,
        dispatch_id: &str,
        target: &str,
        due: u64,
    ) -> Result<(), StoreError> {
        self.outbox.insert((target, due, dispatch_id), ()).map_err(storage)?;
        self.outbox_grew = true;
        Ok(())
    }

    pub(super) fn index_condition(&mut self, w: &Webhook, insert: bool) -> Result<(), StoreError> {
        for (kind, value) in w.condition.keys() {
            let key = (w.user_id.as_str(), kind_code(kind), value, w.created_ms, w.id.as_str());
            if insert {
                self.webhook_match.insert(key, ()).map_err(storage)?;
            } else {
                self.webhook_match.remove(key).map_err(storage)?;
            }
        }
        Ok(())
    }
}

/// Lists `ids` (sorted) as ended at or before `latest_ms`, merged with an entry already under
/// the same key (the same first id ending twice within a millisecond of a clock step back).
pub(super) fn put_finished_group(
    table: &mut Table<'_, (u64, &'static str), &'static [u8]>,
    latest_ms: u64,
    ids: &[String],
) -> Result<(), StoreError> {
    let Some(first) = ids.first() else { return Ok(()) };
    let existing = table.get((latest_ms, first.as_str())).map_err(storage)?.map(|v| {
        String::from_utf8_lossy(v.value()).split('\n').map(str::to_string).collect::<Vec<_>>()
    });
    let value = match existing {
        Some(mut merged) => {
            merged.extend_from_slice(ids);
            merged.sort_unstable();
            merged.dedup();
            merged.join("\n")
        }
        None => ids.join("\n"),
    };
    table.insert((latest_ms, first.as_str()), value.as_bytes()).map_err(storage)?;
    Ok(())
}
