//! The scheduler's choices: what is in flight, and which due dispatches a pass takes. Per
//! target and per user at most a bound in flight, round robin over targets, nothing taken twice.
//! The store walks its outbox and asks `PassPicker` at each step, so these rules are the same
//! on every backend.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::model::{Dispatch, SigningKeys};
use crate::store::{DuePicker, Store, StoreError};

/// What is in flight, and the choice of what to call next.
pub struct Scheduler {
    // Shared with the store's read for the length of a pass (no copy); changed only between
    // passes, when this is the only reference, so `make_mut` never copies either.
    in_flight: Arc<HashSet<String>>,
    per_target: Arc<HashMap<String, usize>>,
    per_user: Arc<HashMap<String, usize>>,
    /// Dispatches in flight whose call still holds a slot of its target and of its user:
    /// dispatch id -> user id.
    holding: HashMap<String, String>,
    start_after: Option<String>,
    inflight_max: usize,
    per_target_inflight_max: usize,
    per_user_inflight_max: usize,
    signing_keys: bool,
}

/// One pass's work: dispatches to call now (already counted in flight) and the next due time.
pub struct Pass {
    pub calls: Vec<(String, Dispatch)>,
    pub next_due_ms: Option<u64>,
    /// The signing keys of the calls' webhooks, by webhook id.
    pub signing: HashMap<String, Arc<SigningKeys>>,
}

impl Scheduler {
    pub fn new(
        inflight_max: usize,
        per_target_inflight_max: usize,
        per_user_inflight_max: usize,
    ) -> Scheduler {
        Scheduler {
            in_flight: Arc::new(HashSet::new()),
            per_target: Arc::new(HashMap::new()),
            per_user: Arc::new(HashMap::new()),
            holding: HashMap::new(),
            start_after: None,
            inflight_max,
            per_target_inflight_max,
            per_user_inflight_max,
            signing_keys: true,
        }
    }

    /// Whether passes read the due webhooks' signing keys (not when calls are not signed).
    pub fn reading_signing_keys(mut self, read: bool) -> Scheduler {
        self.signing_keys = read;
        self
    }

    /// Takes the dispatches due at `now_ms` that fit the bounds, and marks them in flight.
    pub async fn take_due(&mut self, store: &Store, now_ms: u64) -> Result<Pass, StoreError> {
        let free = self.inflight_max.saturating_sub(self.in_flight.len());
        if free == 0 {
            return Ok(Pass { calls: Vec::new(), next_due_ms: None, signing: HashMap::new() });
        }
        let due = store
            .due_dispatches(PassPicker {
                now_ms,
                in_flight: self.in_flight.clone(),
                per_target: self.per_target.clone(),
                per_target_max: self.per_target_inflight_max,
                per_user: self.per_user.clone(),
                per_user_max: self.per_user_inflight_max,
                taken_per_user: HashMap::new(),
                taken: 0,
                take_max: free,
                start_after: self.start_after.clone(),
                signing_keys: self.signing_keys,
            })
            .await?;
        if let Some((target, _)) = due.dispatches.last() {
            self.start_after = Some(target.clone());
        }
        let in_flight = Arc::make_mut(&mut self.in_flight);
        let per_target = Arc::make_mut(&mut self.per_target);
        let per_user = Arc::make_mut(&mut self.per_user);
        for (target, d) in &due.dispatches {
            in_flight.insert(d.id.clone());
            self.holding.insert(d.id.clone(), d.user_id.clone());
            *per_target.entry(target.clone()).or_default() += 1;
            *per_user.entry(d.user_id.clone()).or_default() += 1;
        }
        Ok(Pass { calls: due.dispatches, next_due_ms: due.next_due_ms, signing: due.signing })
    }

    /// A call's HTTP exchange ended: its target may take another call, though its outcome is
    /// not committed yet (the dispatch stays in flight until it is). Once per call at most.
    pub fn free_target(&mut self, id: &str, target: &str) {
        let Some(user) = self.holding.remove(id) else {
            return;
        };
        release(Arc::make_mut(&mut self.per_target), target);
        release(Arc::make_mut(&mut self.per_user), &user);
    }

    /// A call ended and its outcome is committed (or given up): the dispatch may be taken again.
    pub fn land(&mut self, id: &str, target: &str) {
        self.free_target(id, target);
        Arc::make_mut(&mut self.in_flight).remove(id);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Calls holding a slot of `user` now.
    pub fn user_holding(&self, user: &str) -> usize {
        self.per_user.get(user).copied().unwrap_or(0)
    }
}

/// One slot of `key` is free again; a count of zero leaves the map.
fn release(counts: &mut HashMap<String, usize>, key: &str) {
    if let Some(n) = counts.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// One pass's questions to the store, answered from the scheduler's counts as they were when
/// the pass began plus what the pass took.
struct PassPicker {
    now_ms: u64,
    // Shared with the scheduler for the length of one read: no copy.
    in_flight: Arc<HashSet<String>>,
    per_target: Arc<HashMap<String, usize>>,
    per_target_max: usize,
    per_user: Arc<HashMap<String, usize>>,
    per_user_max: usize,
    taken_per_user: HashMap<String, usize>,
    taken: usize,
    take_max: usize,
    start_after: Option<String>,
    signing_keys: bool,
}

impl DuePicker for PassPicker {
    fn now_ms(&self) -> u64 {
        self.now_ms
    }

    fn start_after(&self) -> Option<&str> {
        self.start_after.as_deref()
    }

    fn is_full(&self) -> bool {
        self.taken >= self.take_max
    }

    fn target_room(&self, target: &str) -> usize {
        let busy = self.per_target.get(target).copied().unwrap_or(0);
        self.per_target_max.saturating_sub(busy)
    }

    fn in_flight(&self, id: &str) -> bool {
        self.in_flight.contains(id)
    }

    fn admit(&mut self, user_id: &str) -> bool {
        let user_busy = self.per_user.get(user_id).copied().unwrap_or(0)
            + self.taken_per_user.get(user_id).copied().unwrap_or(0);
        if user_busy >= self.per_user_max {
            // Its owner has every slot it may hold: leave the target for now (a later pass
            // takes it once that user's calls end).
            return false;
        }
        *self.taken_per_user.entry(user_id.to_string()).or_default() += 1;
        self.taken += 1;
        true
    }

    fn wants_signing_keys(&self) -> bool {
        self.signing_keys
    }
}
