//! The status indexes behind the dispatch lists (schema 8): every dispatch is listed under
//! (user, status, event type) and under (webhook, status, event type), with a count per key
//! for exact totals (a user's in `dispatch_counts`, a webhook's in its stats record).
//!
//! Both are folded (pending.rs): a new dispatch waits in `webhook_pending` and the mirror, its
//! status changes are followed there (its `WaitingKey`), and the fold lists it under the
//! status it has then. So a dispatch delivered before its fold (most are) costs the indexes
//! one sorted insert each; kept per event, the user's index cost 6 % of `burst` in key moves,
//! and the webhook's 23 % with 100,000 webhooks in random leaves. A folded dispatch's keys
//! move in the transaction that changes its status.

use redb::ReadableTable;

use super::StoreError;
use super::batch::Batch;
use super::error::storage;
use super::records::DispatchState;
use super::schema::{EVENT_CODE_MAX, STATUS_CODE_MAX, event_code, status_code};
use crate::model::{DispatchStatus, EventType};

const EVENT_CODES: usize = EVENT_CODE_MAX as usize + 1;
/// (status, event type) pairs: the counts an owner has.
pub(super) const COUNT_KEYS: usize = (STATUS_CODE_MAX as usize + 1) * EVENT_CODES;

/// Count changes per user, per (status, type).
pub(super) type CountDeltas = std::collections::HashMap<String, [i64; COUNT_KEYS]>;

impl Batch<'_, '_> {
    /// A new dispatch: its key waits with it until the fold.
    pub(super) fn index_new(
        &mut self,
        status: DispatchStatus,
        event_type: EventType,
        dispatch_id: &str,
    ) {
        let key = (status_code(status), event_code(event_type));
        self.waiting_keys.insert(dispatch_id.to_string(), Some(key));
    }

    /// The dispatch's status changed from `was` to `s.status`: its keys move (in the mirror
    /// while it waits).
    pub(super) fn index_moved(
        &mut self,
        dispatch_id: &str,
        s: &DispatchState,
        was: DispatchStatus,
    ) -> Result<(), StoreError> {
        if was == s.status {
            return Ok(());
        }
        let (user_id, event_type) = owner(dispatch_id, s)?;
        let (old, new, et) = (status_code(was), status_code(s.status), event_code(event_type));
        if self.is_waiting(dispatch_id) {
            self.waiting_keys.insert(dispatch_id.to_string(), Some((new, et)));
            return Ok(());
        }
        if self.by_user_status.remove((user_id, old, et, dispatch_id)).map_err(storage)?.is_some() {
            self.by_user_status.insert((user_id, new, et, dispatch_id), ()).map_err(storage)?;
            self.count_user(user_id, old, et, -1);
            self.count_user(user_id, new, et, 1);
        }
        // Listed under its webhook unless its sweep unlisted it.
        let w = s.webhook_id.as_str();
        if self.by_webhook_status.remove((w, old, et, dispatch_id)).map_err(storage)?.is_some() {
            self.by_webhook_status.insert((w, new, et, dispatch_id), ()).map_err(storage)?;
            self.count_webhook(w, old, et, -1)?;
            self.count_webhook(w, new, et, 1)?;
        }
        Ok(())
    }

    /// The dispatch is deleted (retention, which takes only folded ones): its keys go.
    pub(super) fn index_deleted(
        &mut self,
        dispatch_id: &str,
        s: &DispatchState,
    ) -> Result<(), StoreError> {
        // Retention takes only folded dispatches (it folds first), so they are listed.
        let (user_id, event_type) = owner(dispatch_id, s)?;
        let (st, et) = (status_code(s.status), event_code(event_type));
        if self.by_user_status.remove((user_id, st, et, dispatch_id)).map_err(storage)?.is_some() {
            self.count_user(user_id, st, et, -1);
        }
        let w = s.webhook_id.as_str();
        if self.by_webhook_status.remove((w, st, et, dispatch_id)).map_err(storage)?.is_some() {
            self.count_webhook(w, st, et, -1)?;
        }
        Ok(())
    }

    /// The fold lists a waiting dispatch under its webhook if `listed` (the webhook exists, or
    /// its sweep is on), with the key it has now, and adds its user key to `user_keys`, which
    /// `index_folded_users` inserts in key order (in the fold's webhook order they would land
    /// all over the user's ranges, splitting leaves in the middle). `users` holds the owners of
    /// this group's new dispatches.
    pub(super) fn index_folded(
        &mut self,
        webhook_id: &str,
        dispatch_id: &str,
        listed: bool,
        users: &std::collections::HashMap<&str, &str>,
        user_keys: &mut Vec<(String, u8, u8, String)>,
    ) -> Result<(), StoreError> {
        // The mirror outlives this batch: what it lends is not a borrow of `self`.
        let tail = self.tail;
        let (tail_user, tail_key) = tail.entry(dispatch_id).unzip();
        let waiting = self.waiting_keys.get(dispatch_id).copied().or(tail_key);
        let user = tail_user.or_else(|| users.get(dispatch_id).copied());
        let loaded: String;
        let (key, user) = match (waiting, user) {
            (Some(key), Some(user)) => (key, user),
            // Not in the mirror (it should be): its state says.
            _ => match self.load_state(dispatch_id)? {
                Some(s) => {
                    let (user, t) = owner(dispatch_id, &s)?;
                    loaded = user.to_string();
                    (Some((status_code(s.status), event_code(t))), loaded.as_str())
                }
                None => (None, ""),
            },
        };
        let Some((st, et)) = key else { return Ok(()) };
        user_keys.push((user.to_string(), st, et, dispatch_id.to_string()));
        if listed {
            self.by_webhook_status
                .insert((webhook_id, st, et, dispatch_id), ())
                .map_err(storage)?;
            self.count_webhook(webhook_id, st, et, 1)?;
        }
        Ok(())
    }

    /// The fold's user keys, inserted in key order.
    pub(super) fn index_folded_users(
        &mut self,
        mut user_keys: Vec<(String, u8, u8, String)>,
    ) -> Result<(), StoreError> {
        user_keys.sort_unstable();
        for (user, st, et, id) in &user_keys {
            self.by_user_status
                .insert((user.as_str(), *st, *et, id.as_str()), ())
                .map_err(storage)?;
            self.count_user(user, *st, *et, 1);
        }
        Ok(())
    }

    /// Writes this group's changes to the users' counts, once per key.
    pub(super) fn flush_counts(&mut self) -> Result<(), StoreError> {
        let mut deltas: Vec<_> = std::mem::take(&mut self.count_deltas).into_iter().collect();
        deltas.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (user, per_key) in deltas {
            for (i, delta) in per_key.into_iter().enumerate() {
                if delta == 0 {
                    continue;
                }
                let key = (user.as_str(), (i / EVENT_CODES) as u8, (i % EVENT_CODES) as u8);
                let was = self.dispatch_counts.get(key).map_err(storage)?.map_or(0, |v| v.value());
                match was.checked_add_signed(delta) {
                    Some(0) => {
                        self.dispatch_counts.remove(key).map_err(storage)?;
                    }
                    Some(now) => {
                        self.dispatch_counts.insert(key, now).map_err(storage)?;
                    }
                    None => {
                        return Err(StoreError::Corrupt(format!(
                            "dispatch count {key:?} is {was}, less than {}",
                            -delta
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether the dispatch waits to be folded (as of the last commit, or new in this group).
    fn is_waiting(&self, dispatch_id: &str) -> bool {
        self.waiting_keys.contains_key(dispatch_id) || self.tail.key(dispatch_id).is_some()
    }

    fn count_user(&mut self, user_id: &str, status: u8, event_type: u8, delta: i64) {
        let per_key = match self.count_deltas.get_mut(user_id) {
            Some(per_key) => per_key,
            None => self.count_deltas.entry(user_id.to_string()).or_insert([0; COUNT_KEYS]),
        };
        per_key[usize::from(status) * EVENT_CODES + usize::from(event_type)] += delta;
    }

    /// In the webhook's stats record, written once per group; a deleted webhook has none.
    fn count_webhook(
        &mut self,
        webhook_id: &str,
        status: u8,
        event_type: u8,
        delta: i64,
    ) -> Result<(), StoreError> {
        if let Some((stats, changed)) = self.stats(webhook_id)? {
            stats.add_listed(status, event_type, delta)?;
            *changed = true;
        }
        Ok(())
    }
}

/// The owner and event type a schema-8 state record carries.
fn owner<'s>(dispatch_id: &str, s: &'s DispatchState) -> Result<(&'s str, EventType), StoreError> {
    s.owner
        .as_ref()
        .map(|(u, t)| (u.as_str(), *t))
        .ok_or_else(|| StoreError::Corrupt(format!("dispatch {dispatch_id}: state without owner")))
}
