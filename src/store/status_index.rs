//! The status indexes behind the filtered dispatch lists (schema 8): every dispatch is listed
//! under (user, status, event type) from its creation, and under (webhook, status, event type)
//! once folded (pending.rs), with a count per key in `dispatch_counts` for exact totals.
//!
//! The user's index is kept in the transaction that creates a dispatch or changes its status:
//! a user's new dispatches append to a few ranges, which costs little. The webhook's is folded
//! like `dispatches_by_webhook`, since with many webhooks each new dispatch would dirty a
//! random leaf; a waiting dispatch's status changes are kept in the mirror instead (its
//! `WaitingKey`), and the fold lists it under the status it has then.

use redb::ReadableTable;

use super::StoreError;
use super::batch::Batch;
use super::error::storage;
use super::records::DispatchState;
use super::schema::{SCOPE_USER, SCOPE_WEBHOOK, event_code, status_code};
use crate::model::{DispatchStatus, EventType};

impl Batch<'_, '_> {
    /// A new dispatch: listed under its user now, under its webhook at the fold.
    pub(super) fn index_new(
        &mut self,
        user_id: &str,
        status: DispatchStatus,
        event_type: EventType,
        dispatch_id: &str,
    ) -> Result<(), StoreError> {
        let (st, et) = (status_code(status), event_code(event_type));
        self.by_user_status.insert((user_id, st, et, dispatch_id), ()).map_err(storage)?;
        self.count(SCOPE_USER, user_id, st, et, 1);
        self.waiting_keys.insert(dispatch_id.to_string(), Some((st, et)));
        Ok(())
    }

    /// The dispatch's status changed from `was` to `s.status`: its keys move.
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
        self.by_user_status.remove((user_id, old, et, dispatch_id)).map_err(storage)?;
        self.by_user_status.insert((user_id, new, et, dispatch_id), ()).map_err(storage)?;
        self.count(SCOPE_USER, user_id, old, et, -1);
        self.count(SCOPE_USER, user_id, new, et, 1);
        if self.is_waiting(dispatch_id) {
            self.waiting_keys.insert(dispatch_id.to_string(), Some((new, et)));
            return Ok(());
        }
        // Listed under its webhook unless that was deleted (its sweep unlists it first).
        let w = s.webhook_id.as_str();
        if self.by_webhook_status.remove((w, old, et, dispatch_id)).map_err(storage)?.is_some() {
            self.by_webhook_status.insert((w, new, et, dispatch_id), ()).map_err(storage)?;
            self.count(SCOPE_WEBHOOK, w, old, et, -1);
            self.count(SCOPE_WEBHOOK, w, new, et, 1);
        }
        Ok(())
    }

    /// The dispatch is deleted (retention, which takes only folded ones): its keys go.
    pub(super) fn index_deleted(
        &mut self,
        dispatch_id: &str,
        s: &DispatchState,
    ) -> Result<(), StoreError> {
        let (user_id, event_type) = owner(dispatch_id, s)?;
        let (st, et) = (status_code(s.status), event_code(event_type));
        if self.by_user_status.remove((user_id, st, et, dispatch_id)).map_err(storage)?.is_some() {
            self.count(SCOPE_USER, user_id, st, et, -1);
        }
        // Retention takes only folded dispatches (it folds first), so it is listed there.
        self.unlist_from_webhook(dispatch_id, s)
    }

    /// Removes the dispatch's key from its webhook's index (and from the count).
    pub(super) fn unlist_from_webhook(
        &mut self,
        dispatch_id: &str,
        s: &DispatchState,
    ) -> Result<(), StoreError> {
        let (_, event_type) = owner(dispatch_id, s)?;
        let (st, et) = (status_code(s.status), event_code(event_type));
        let w = s.webhook_id.as_str();
        if self.by_webhook_status.remove((w, st, et, dispatch_id)).map_err(storage)?.is_some() {
            self.count(SCOPE_WEBHOOK, w, st, et, -1);
        }
        Ok(())
    }

    /// The fold lists a waiting dispatch under its webhook with the key it has now.
    pub(super) fn index_folded(
        &mut self,
        webhook_id: &str,
        dispatch_id: &str,
    ) -> Result<(), StoreError> {
        let key = match self.waiting_keys.get(dispatch_id).copied().or(self.tail.key(dispatch_id)) {
            Some(key) => key,
            // Not in the mirror (it should be): its state says.
            None => match self.load_state(dispatch_id)? {
                Some(s) => Some((status_code(s.status), event_code(owner(dispatch_id, &s)?.1))),
                None => None,
            },
        };
        if let Some((st, et)) = key {
            self.by_webhook_status
                .insert((webhook_id, st, et, dispatch_id), ())
                .map_err(storage)?;
            self.count(SCOPE_WEBHOOK, webhook_id, st, et, 1);
        }
        Ok(())
    }

    /// A deleted webhook's counts go with it (its index keys go with its sweep).
    pub(super) fn drop_webhook_counts(&mut self, webhook_id: &str) -> Result<(), StoreError> {
        self.count_deltas
            .retain(|(scope, owner, _, _), _| !(*scope == SCOPE_WEBHOOK && owner == webhook_id));
        let lo = (SCOPE_WEBHOOK, webhook_id, 0u8, 0u8);
        let hi = (SCOPE_WEBHOOK, webhook_id, u8::MAX, u8::MAX);
        self.dispatch_counts.retain_in(lo..=hi, |_, _| false).map_err(storage)?;
        Ok(())
    }

    /// Writes this group's count changes, once per key.
    pub(super) fn flush_counts(&mut self) -> Result<(), StoreError> {
        let mut deltas: Vec<_> = std::mem::take(&mut self.count_deltas).into_iter().collect();
        deltas.sort_unstable();
        for ((scope, owner, st, et), delta) in deltas {
            if delta == 0 || (scope == SCOPE_WEBHOOK && self.deleted.contains(&owner)) {
                continue;
            }
            let key = (scope, owner.as_str(), st, et);
            let was = self.dispatch_counts.get(key).map_err(storage)?.map_or(0, |v| v.value());
            let now = was.saturating_add_signed(delta);
            if now == 0 {
                self.dispatch_counts.remove(key).map_err(storage)?;
            } else {
                self.dispatch_counts.insert(key, now).map_err(storage)?;
            }
        }
        Ok(())
    }

    /// Whether the dispatch waits to be folded (as of the last commit, or new in this group).
    fn is_waiting(&self, dispatch_id: &str) -> bool {
        self.waiting_keys.contains_key(dispatch_id) || self.tail.key(dispatch_id).is_some()
    }

    fn count(&mut self, scope: u8, owner: &str, status: u8, event_type: u8, delta: i64) {
        *self.count_deltas.entry((scope, owner.to_string(), status, event_type)).or_default() +=
            delta;
    }
}

/// The owner and event type a schema-8 state record carries.
fn owner<'s>(dispatch_id: &str, s: &'s DispatchState) -> Result<(&'s str, EventType), StoreError> {
    s.owner
        .as_ref()
        .map(|(u, t)| (u.as_str(), *t))
        .ok_or_else(|| StoreError::Corrupt(format!("dispatch {dispatch_id}: state without owner")))
}
