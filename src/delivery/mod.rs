//! The delivery engine: a scheduler that takes due dispatches from the store's outbox, calls
//! their targets within a global and a per-target in-flight bound, and hands every outcome
//! back to the writer. It keeps in memory only what is in flight; everything else is on disk,
//! so after a crash every ACTIVE dispatch is simply due again (at-least-once).
//!
//! `Scheduler` is the bookkeeping (what is in flight, what to take next) and `finish` records
//! one call's outcome; both take the time as an argument, so the seeded simulation
//! (tests/it/sim.rs) drives them with a manual clock. `Dispatcher::run` is the live loop.

pub mod policy;
mod schedule;
pub mod sender;
pub mod signing;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::model::{Dispatch, SigningKeys};
use crate::store::{Store, StoreError};
pub use schedule::{Pass, Scheduler};
use sender::{Sender, Sent};

/// The longest the scheduler sleeps without looking at the outbox; a backstop only, since
/// every commit that adds work wakes it.
const IDLE_POLL_MS: u64 = 1000;
/// After a failed store read, wait this long before the next pass.
const READ_ERROR_BACKOFF_MS: u64 = 100;

/// Records the outcome of one call to `d`: the policy decides, the writer commits.
pub async fn finish(
    store: &Store,
    d: &Dispatch,
    sent: Sent,
    retry_delays_ms: &[u64],
    jitter_unit: f64,
) -> Result<policy::Decision, StoreError> {
    let decision = policy::decide(
        sent.outcome,
        d.calls.len().saturating_sub(d.calls_before_redelivery) + 1,
        d.do_not_retry,
        retry_delays_ms,
        sent.call.finished_ms,
        jitter_unit,
    );
    store.record_call(d.id.clone(), sent.call, decision).await?;
    Ok(decision)
}

pub struct Dispatcher {
    pub store: Store,
    pub sender: Arc<Sender>,
    pub retry_delays_ms: Arc<Vec<u64>>,
    pub inflight_max: usize,
    pub per_target_inflight_max: usize,
    pub per_user_inflight_max: usize,
    /// After shutdown is asked for, calls in flight get this long to finish and be recorded.
    pub shutdown_grace_ms: u64,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Failed calls are logged at most once per target per `FAILED_CALL_LOG_EVERY_MS`.
    pub failure_log: Arc<FailureLog>,
}

/// A failed call is logged at info, but at most one line per target per this long (with the
/// count of those not logged), so that a dead target cannot flood the log.
const FAILED_CALL_LOG_EVERY_MS: u64 = 10_000;
/// Targets remembered for that; past it the memory starts over.
const FAILURE_LOG_TARGETS_MAX: usize = 10_000;

/// Per target: when a failed call was last logged, and how many since were not.
#[derive(Default)]
pub struct FailureLog {
    targets: std::sync::Mutex<HashMap<String, (u64, u64)>>,
}

impl FailureLog {
    /// `Some(n)`: log this failure, `n` others were not logged since the last line.
    fn sample(&self, target: &str, now_ms: u64) -> Option<u64> {
        let mut map = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= FAILURE_LOG_TARGETS_MAX && !map.contains_key(target) {
            map.clear();
        }
        let (last_ms, skipped) = map.entry(target.to_string()).or_insert((0, 0));
        if *last_ms != 0 && now_ms.saturating_sub(*last_ms) < FAILED_CALL_LOG_EVERY_MS {
            *skipped += 1;
            return None;
        }
        let n = *skipped;
        *last_ms = now_ms.max(1);
        *skipped = 0;
        Some(n)
    }
}

impl Dispatcher {
    /// Runs until `shutdown`; then lets calls in flight finish within the grace period.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let outbox_changed = self.store.outbox_changed();
        let mut scheduler = Scheduler::new(
            self.inflight_max,
            self.per_target_inflight_max,
            self.per_user_inflight_max,
        )
        .reading_signing_keys(self.sender.signs());
        let mut calls: JoinSet<()> = JoinSet::new();
        let mut flights: HashMap<tokio::task::Id, (String, String)> = HashMap::new();
        // Calls say here when their HTTP exchange is over, before their outcome is committed:
        // a target's slot is not held through the group commit. At most one message per call
        // in flight, so the bound is never reached.
        let (freed_tx, mut freed_rx) = mpsc::channel::<(String, String)>(self.inflight_max.max(1));
        tokio::pin!(shutdown);
        // One pass per wake-up: on new work, on a finished call, at the next due time.
        loop {
            let mut wait_ms = IDLE_POLL_MS;
            let now_ms = crate::sys::now_ms();
            match scheduler.take_due(&self.store, now_ms).await {
                Ok(pass) => {
                    if let Some(next) = pass.next_due_ms {
                        wait_ms = wait_ms.min(next.saturating_sub(now_ms));
                    }
                    for (target, d) in pass.calls {
                        let flight = (d.id.clone(), target.clone());
                        let keys = pass.signing.get(&d.webhook_id).cloned();
                        let task = calls.spawn(self.call(d, keys, target, freed_tx.clone()));
                        flights.insert(task.id(), flight);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the outbox");
                    wait_ms = READ_ERROR_BACKOFF_MS;
                }
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = outbox_changed.notified() => {}
                Some((id, target)) = freed_rx.recv() => {
                    scheduler.free_target(&id, &target);
                    while let Ok((id, target)) = freed_rx.try_recv() {
                        scheduler.free_target(&id, &target);
                    }
                }
                Some(done) = calls.join_next_with_id(), if !calls.is_empty() => {
                    // Calls answered by the same group commit end together: let the others
                    // finish too, so that one pass (one read) refills all their slots.
                    tokio::task::yield_now().await;
                    let mut done = Some(done);
                    while let Some(result) = done {
                        // A panicked call lands too: its dispatch is simply due again.
                        let task = match result {
                            Ok((task, ())) => task,
                            Err(e) => e.id(),
                        };
                        if let Some((id, target)) = flights.remove(&task) {
                            scheduler.land(&id, &target);
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

    /// One call and the recording of its outcome. The dispatch stays in flight until its
    /// outcome is committed, so no pass can pick it up again at its old due time.
    fn call(
        &self,
        d: Dispatch,
        signing: Option<Arc<SigningKeys>>,
        target: String,
        freed: mpsc::Sender<(String, String)>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let sender = self.sender.clone();
        let store = self.store.clone();
        let delays = self.retry_delays_ms.clone();
        let metrics = self.metrics.clone();
        let failure_log = self.failure_log.clone();
        async move {
            metrics.calls_in_flight.inc();
            let sent = sender.send(&d, signing.as_deref(), crate::sys::now_ms).await;
            metrics.calls_in_flight.dec();
            let _ = freed.try_send((d.id.clone(), target.clone()));
            let (status, error) = (sent.call.response_status, sent.call.error_message.clone());
            metrics.count_call(status);
            let failed_call = !status.is_some_and(|s| (200..300).contains(&s));
            let calls = d.calls.len() + 1;
            match finish(&store, &d, sent, &delays, crate::sys::random_unit()).await {
                Ok(decision) => {
                    tracing::debug!(
                        dispatch = %d.id, webhook = %d.webhook_id, %target, ?status, ?error,
                        ?decision, "call"
                    );
                    if decision == policy::Decision::Failed {
                        tracing::warn!(
                            dispatch = %d.id, webhook = %d.webhook_id, user = %d.user_id,
                            url = %d.request_url, calls, ?status, ?error,
                            "dispatch FAILED: no more retries"
                        );
                    } else if failed_call
                        && let Some(not_logged) = failure_log.sample(&target, crate::sys::now_ms())
                    {
                        tracing::info!(
                            dispatch = %d.id, webhook = %d.webhook_id, %target, ?status, ?error,
                            calls, ?decision, not_logged,
                            "call failed (at most one line per target every 10 s)"
                        );
                    }
                }
                Err(e) => tracing::warn!(
                    dispatch = %d.id, error = %e,
                    "call outcome not recorded; the dispatch will be called again"
                ),
            }
        }
    }
}
