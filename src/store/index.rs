//! The match index: every live webhook in memory, by (user, condition kind, value), so that
//! matching an event reads no table and decodes nothing. It is built from the `webhooks` table
//! at open and changed by the writer after each commit, before any of the group's callers is
//! answered: a webhook whose create was acknowledged matches every event sent after that.
//! Matching may see a webhook deleted (or an ad-hoc one fired) a moment ago; the writer checks
//! both again inside the event's transaction, so that costs nothing but a dropped dispatch.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::model::{Condition, ConditionKind, EventData, EventType, Webhook};

/// One user's webhooks by condition kind, then by the condition's value.
#[derive(Default)]
struct UserIndex {
    by_kind: [HashMap<String, Vec<Arc<Webhook>>>; 3],
}

fn slot(kind: ConditionKind) -> usize {
    match kind {
        ConditionKind::Actor => 0,
        ConditionKind::ActorTask => 1,
        ConditionKind::ActorRun => 2,
    }
}

/// A change the writer applies after its commit.
pub(crate) enum IndexChange {
    Add(Arc<Webhook>),
    Remove { user_id: String, condition: Condition, id: String },
}

#[derive(Default)]
pub struct MatchIndex {
    users: RwLock<HashMap<String, UserIndex>>,
}

impl MatchIndex {
    /// Applies committed changes in order.
    pub(crate) fn apply(&self, changes: Vec<IndexChange>) {
        if changes.is_empty() {
            return;
        }
        // A poisoned lock only means a panic elsewhere mid-update; the map itself is whole.
        let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
        for change in changes {
            match change {
                IndexChange::Add(w) => {
                    let user = users.entry(w.user_id.clone()).or_default();
                    for (kind, value) in w.condition.keys() {
                        let list = user.by_kind[slot(kind)].entry(value.to_string()).or_default();
                        list.retain(|old| old.id != w.id);
                        list.push(w.clone());
                    }
                }
                IndexChange::Remove { user_id, condition, id } => {
                    let Some(user) = users.get_mut(&user_id) else { continue };
                    for (kind, value) in condition.keys() {
                        let map = &mut user.by_kind[slot(kind)];
                        if let Some(list) = map.get_mut(value) {
                            list.retain(|old| old.id != id);
                            if list.is_empty() {
                                map.remove(value);
                            }
                        }
                    }
                    if user.by_kind.iter().all(HashMap::is_empty) {
                        users.remove(&user_id);
                    }
                }
            }
        }
    }

    /// Replaces the whole index with `webhooks` (each one that can fire).
    pub(crate) fn replace(&self, webhooks: Vec<Arc<Webhook>>) {
        let fresh = MatchIndex::default();
        fresh.apply(webhooks.into_iter().map(IndexChange::Add).collect());
        let built = fresh.users.into_inner().unwrap_or_else(|p| p.into_inner());
        *self.users.write().unwrap_or_else(|p| p.into_inner()) = built;
    }

    /// Whether the user's webhook `id` is listed under `condition` (it exists and can fire).
    pub(crate) fn has(&self, user_id: &str, condition: &Condition, id: &str) -> bool {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        let Some(user) = users.get(user_id) else { return false };
        condition.keys().any(|(kind, value)| {
            user.by_kind[slot(kind)].get(value).is_some_and(|list| list.iter().any(|w| w.id == id))
        })
    }

    /// For each (event type, data), the user's webhooks it fires, oldest first; `None` as soon
    /// as they come to more than `total_max` in all (the request's dispatch budget), so an
    /// over-budget request costs no more than the budget.
    pub fn matches(
        &self,
        user_id: &str,
        events: &[(EventType, EventData)],
        total_max: usize,
    ) -> Option<Vec<Vec<Arc<Webhook>>>> {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        let user = users.get(user_id);
        let mut total = 0usize;
        let mut out = Vec::with_capacity(events.len());
        for (event_type, data) in events {
            let mut matched: Vec<Arc<Webhook>> = Vec::new();
            if let Some(user) = user {
                for (kind, value) in data.match_keys() {
                    for w in user.by_kind[slot(kind)].get(value).into_iter().flatten() {
                        if w.matches(*event_type, data) {
                            matched.push(w.clone());
                        }
                    }
                }
            }
            matched.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
            // A webhook with two conditions is listed under both: once is enough.
            matched.dedup_by(|a, b| a.id == b.id);
            // One event's matches are few (a user's webhooks): counted once they are known.
            total += matched.len();
            if total > total_max {
                return None;
            }
            out.push(matched);
        }
        Some(out)
    }
}

impl IndexChange {
    /// The change that takes `w` out (under the condition it is listed by).
    pub(crate) fn removing(w: &Webhook) -> IndexChange {
        IndexChange::Remove {
            user_id: w.user_id.clone(),
            condition: w.condition.clone(),
            id: w.id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::WebhookDraft;

    fn webhook(id: &str, user: &str, created_ms: u64, condition: Condition) -> Arc<Webhook> {
        let draft = WebhookDraft {
            event_types: vec![EventType::RunSucceeded],
            condition,
            request_url: "http://example.com/hook".into(),
            ..WebhookDraft::default()
        };
        Arc::new(Webhook::create(id.into(), user.into(), draft, created_ms).expect("valid"))
    }

    fn actor(a: &str) -> Condition {
        Condition { actor_id: Some(a.into()), ..Condition::default() }
    }

    fn run_of(a: &str, task: Option<&str>) -> EventData {
        EventData {
            actor_id: a.into(),
            actor_task_id: task.map(String::from),
            actor_run_id: Some("run1".into()),
            actor_build_id: None,
        }
    }

    fn ids(index: &MatchIndex, user: &str, t: EventType, data: EventData) -> Vec<String> {
        let got = index.matches(user, &[(t, data)], usize::MAX).expect("within the bound");
        got[0].iter().map(|w| w.id.clone()).collect()
    }

    #[test]
    fn adds_removes_and_moves_webhooks_and_keeps_users_apart() {
        let index = MatchIndex::default();
        let task = Condition { actor_task_id: Some("t1".into()), ..Condition::default() };
        index.apply(vec![
            IndexChange::Add(webhook("w2", "u1", 20, actor("a1"))),
            IndexChange::Add(webhook("w1", "u1", 10, actor("a1"))),
            IndexChange::Add(webhook("w3", "u1", 30, task.clone())),
            IndexChange::Add(webhook("w4", "u2", 5, actor("a1"))),
        ]);
        let ok = EventType::RunSucceeded;
        // Oldest first; a task-run event also matches the task's webhook.
        assert_eq!(ids(&index, "u1", ok, run_of("a1", None)), ["w1", "w2"]);
        assert_eq!(ids(&index, "u1", ok, run_of("a1", Some("t1"))), ["w1", "w2", "w3"]);
        assert_eq!(ids(&index, "u2", ok, run_of("a1", None)), ["w4"]);
        assert!(ids(&index, "u3", ok, run_of("a1", None)).is_empty());
        assert!(ids(&index, "u1", EventType::RunFailed, run_of("a1", None)).is_empty());
        // An update moves w2 to another actor; a delete removes w1.
        index.apply(vec![
            IndexChange::Remove { user_id: "u1".into(), condition: actor("a1"), id: "w2".into() },
            IndexChange::Add(webhook("w2", "u1", 20, actor("a2"))),
            IndexChange::Remove { user_id: "u1".into(), condition: actor("a1"), id: "w1".into() },
        ]);
        assert!(ids(&index, "u1", ok, run_of("a1", None)).is_empty());
        assert_eq!(ids(&index, "u1", ok, run_of("a2", None)), ["w2"]);
        // Adding the same id again replaces it instead of listing it twice.
        index.apply(vec![IndexChange::Add(webhook("w2", "u1", 20, actor("a2")))]);
        assert_eq!(ids(&index, "u1", ok, run_of("a2", None)), ["w2"]);
    }
}
