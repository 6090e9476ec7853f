//! Dispatches not yet folded into the per-webhook and per-user tables (`webhook_stats`, the
//! status indexes). Writing those per event costs a B-tree leaf per event and per table (a
//! random one when events spread over many webhooks), and a status index key would move again
//! when the dispatch ends a moment later; so the ingest commit appends each new dispatch to the
//! `webhook_pending` table instead (an append, cheap) and to this in-memory mirror, which also
//! follows each one's status; when `limits.webhook_pending_max` are waiting, one commit folds
//! them all in, sorted, so many of them share leaves. Readers add the waiting ones to what the
//! tables say.
//!
//! Consistency: the writer changes this mirror only after its commit, and holds the write lock
//! across a folding commit, while readers hold the read lock across their read transaction. So
//! a reader sees the folded tables with an empty mirror or the unfolded tables with the full
//! one, never a dispatch twice or not at all.

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A waiting dispatch's (status, event type) codes (schema.rs) as of the last commit, which
/// the lists read from here (`None`: unknown, its state is gone).
pub(crate) type WaitingKey = Option<(u8, u8)>;

/// Waiting dispatch ids per webhook and per user, in commit order, and each one's owner and key.
#[derive(Default)]
pub(crate) struct PendingInner {
    by_webhook: HashMap<String, Vec<String>>,
    by_user: HashMap<String, Vec<String>>,
    /// Dispatch id -> (user, key).
    entries: HashMap<String, (String, WaitingKey)>,
    len: usize,
    /// At most the least dispatch id waiting (not raised when a webhook's entries are
    /// forgotten), so an id below it is surely folded.
    least_id: Option<String>,
}

impl PendingInner {
    /// The webhook's waiting dispatch ids, oldest first.
    pub(crate) fn ids(&self, webhook_id: &str) -> &[String] {
        self.by_webhook.get(webhook_id).map_or(&[], Vec::as_slice)
    }

    /// The user's waiting dispatch ids, oldest first.
    pub(crate) fn user_ids(&self, user_id: &str) -> &[String] {
        self.by_user.get(user_id).map_or(&[], Vec::as_slice)
    }

    /// The dispatch's key if it waits (outer `None`: it is folded, or unknown).
    pub(crate) fn key(&self, dispatch_id: &str) -> Option<WaitingKey> {
        self.entries.get(dispatch_id).map(|(_, key)| *key)
    }

    /// The owner and key of a waiting dispatch.
    pub(crate) fn entry(&self, dispatch_id: &str) -> Option<(&str, WaitingKey)> {
        self.entries.get(dispatch_id).map(|(user, key)| (user.as_str(), *key))
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn add(
        &mut self,
        webhook_id: String,
        user_id: String,
        dispatch_id: String,
        key: WaitingKey,
    ) {
        if self.least_id.as_ref().is_none_or(|least| dispatch_id < *least) {
            self.least_id = Some(dispatch_id.clone());
        }
        match self.by_user.get_mut(&user_id) {
            Some(ids) => ids.push(dispatch_id.clone()),
            None => {
                self.by_user.insert(user_id.clone(), vec![dispatch_id.clone()]);
            }
        }
        self.entries.insert(dispatch_id.clone(), (user_id, key));
        self.by_webhook.entry(webhook_id).or_default().push(dispatch_id);
        self.len += 1;
    }

    /// A waiting dispatch's key after a commit changed its status.
    pub(crate) fn set_key(&mut self, dispatch_id: &str, key: WaitingKey) {
        if let Some((_, k)) = self.entries.get_mut(dispatch_id) {
            *k = key;
        }
    }

    /// No dispatch id below this one waits to be folded (`None`: none waits).
    pub(crate) fn least_id(&self) -> Option<&str> {
        self.least_id.as_deref()
    }

    /// A deleted webhook's waiting dispatches leave its list (they stay on their user's, and
    /// the fold still lists them there).
    pub(crate) fn forget_webhook(&mut self, webhook_id: &str) {
        if let Some(ids) = self.by_webhook.remove(webhook_id) {
            self.len -= ids.len();
        }
    }

    pub(crate) fn clear(&mut self) {
        self.by_webhook.clear();
        self.by_user.clear();
        self.entries.clear();
        self.len = 0;
        self.least_id = None;
    }
}

#[derive(Default)]
pub(crate) struct Pending {
    inner: RwLock<PendingInner>,
}

impl Pending {
    // A poisoned lock only means a panic elsewhere mid-update of plain maps; use them as is.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, PendingInner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, PendingInner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
}
