//! The delivery engine: a scheduler that takes due dispatches from the store's outbox, calls
//! their targets within a global and a per-target in-flight bound, and hands every outcome
//! back to the writer. It keeps in memory only what is in flight; everything else is on disk,
//! so after a crash every ACTIVE dispatch is simply due again (at-least-once).

pub mod policy;
pub mod sender;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::store::{DueRequest, Store};
use sender::Sender;

/// The longest the scheduler sleeps without looking at the outbox; a backstop only, since
/// every commit that adds work wakes it.
const IDLE_POLL_MS: u64 = 1000;
/// After a failed store read, wait this long before the next pass.
const READ_ERROR_BACKOFF_MS: u64 = 100;

pub struct Dispatcher {
    pub store: Store,
    pub sender: Arc<Sender>,
    pub retry_delays_ms: Arc<Vec<u64>>,
    pub inflight_max: usize,
    pub per_target_inflight_max: usize,
    /// After shutdown is asked for, calls in flight get this long to finish and be recorded.
    pub shutdown_grace_ms: u64,
}

/// A call in flight: its dispatch id and target.
struct Flight {
    id: String,
    target: String,
}

impl Dispatcher {
    /// Runs until `shutdown`; then lets calls in flight finish within the grace period.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let outbox_changed = self.store.outbox_changed();
        let mut in_flight: HashSet<String> = HashSet::new();
        let mut per_target: HashMap<String, usize> = HashMap::new();
        let mut calls: JoinSet<()> = JoinSet::new();
        let mut flights: HashMap<tokio::task::Id, Flight> = HashMap::new();
        let mut start_after: Option<String> = None;
        tokio::pin!(shutdown);
        // One pass per wake-up: on new work, on a finished call, at the next due time.
        loop {
            let mut wait_ms = IDLE_POLL_MS;
            let free = self.inflight_max.saturating_sub(in_flight.len());
            if free > 0 {
                let now_ms = crate::sys::now_ms();
                let req = DueRequest {
                    now_ms,
                    in_flight: in_flight.clone(),
                    per_target: per_target.clone(),
                    per_target_max: self.per_target_inflight_max,
                    take_max: free,
                    start_after: start_after.clone(),
                };
                match self.store.due_dispatches(req).await {
                    Ok(due) => {
                        if let Some(next) = due.next_due_ms {
                            wait_ms = wait_ms.min(next.saturating_sub(now_ms));
                        }
                        if let Some((target, _)) = due.dispatches.last() {
                            start_after = Some(target.clone());
                        }
                        for (target, d) in due.dispatches {
                            in_flight.insert(d.id.clone());
                            *per_target.entry(target.clone()).or_default() += 1;
                            let flight = Flight { id: d.id.clone(), target: target.clone() };
                            let task = calls.spawn(self.call(d, target));
                            flights.insert(task.id(), flight);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the outbox");
                        wait_ms = READ_ERROR_BACKOFF_MS;
                    }
                }
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = outbox_changed.notified() => {}
                Some(done) = calls.join_next_with_id(), if !calls.is_empty() => {
                    let mut done = Some(done);
                    while let Some(result) = done {
                        // A panicked call lands too: its dispatch is simply due again.
                        let task = match result {
                            Ok((task, ())) => task,
                            Err(e) => e.id(),
                        };
                        if let Some(f) = flights.remove(&task) {
                            land(f, &mut in_flight, &mut per_target);
                        }
                        done = calls.try_join_next_with_id();
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
            }
        }
        let grace = Duration::from_millis(self.shutdown_grace_ms);
        let drained =
            tokio::time::timeout(grace, async { while calls.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            // Not recorded: these dispatches are still due and are called again on the next start.
            tracing::warn!(calls = calls.len(), "calls still in flight after the grace period");
            calls.abort_all();
        }
    }

    /// One call and the recording of its outcome.
    fn call(
        &self,
        d: crate::model::Dispatch,
        target: String,
    ) -> impl Future<Output = ()> + Send + 'static {
        let sender = self.sender.clone();
        let store = self.store.clone();
        let delays = self.retry_delays_ms.clone();
        async move {
            let sent = sender.send(&d, crate::sys::now_ms).await;
            let decision = policy::decide(
                sent.outcome,
                d.calls.len() + 1,
                d.do_not_retry,
                &delays,
                sent.call.finished_ms,
                crate::sys::random_unit(),
            );
            tracing::debug!(
                dispatch = %d.id, webhook = %d.webhook_id, %target,
                status = ?sent.call.response_status, error = ?sent.call.error_message,
                ?decision, "call"
            );
            // The dispatch stays in flight until its outcome is committed, so no pass can
            // pick it up again at its old due time.
            if let Err(e) = store.record_call(d.id.clone(), sent.call, decision).await {
                tracing::warn!(dispatch = %d.id, error = %e, "call outcome not recorded; it will be called again");
            }
        }
    }
}

fn land(f: Flight, in_flight: &mut HashSet<String>, per_target: &mut HashMap<String, usize>) {
    in_flight.remove(&f.id);
    if let Some(n) = per_target.get_mut(&f.target) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            per_target.remove(&f.target);
        }
    }
}
