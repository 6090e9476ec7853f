//! Seeded, deterministic simulation of the outbox: the real store and the real scheduler
//! bookkeeping (`Scheduler`, `finish`), a manual clock, a fake sender whose outcomes (2xx, 5xx,
//! timeout, 429 with Retry-After) come from the seed, and crashes that drop every in-memory
//! thing and reopen the file. After every step it checks: no acknowledged dispatch is lost,
//! none is called after it ended, calls never exceed the schedule, due times never go back,
//! and a dispatch has exactly one outbox key while ACTIVE and none after; every third step, that
//! every dispatch list (per user and per webhook, filtered by status and event type) lists
//! exactly the stored dispatches it should, with its exact total.
//!
//! `SIM_SEEDS=N` runs N seeds (default 1000); `SIM_SEED=S` runs only seed S.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use hookd::delivery::policy::Outcome;
use hookd::delivery::sender::Sent;
use hookd::delivery::{Scheduler, finish};
use hookd::model::{
    Call, Change, Condition, Dispatch, DispatchStatus, EventType, Webhook, WebhookDraft,
    WebhookPatch,
};
use hookd::store::{
    DispatchFilter, DispatchScope, NewEvent, PageRequest, Store, StoreLimits, WriterHandle,
};

const DELAYS: [u64; 3] = [100, 200, 400];
/// Retention in the simulation's clock: finished dispatches older than this may be deleted.
const RETENTION_MS: u64 = 5_000;

/// xorshift64*: small, seedable, good enough to pick steps.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What the simulation knows about one acknowledged dispatch.
#[derive(Debug, Clone)]
struct Known {
    webhook_id: String,
    ended: Option<DispatchStatus>,
    /// When it ended (its last call's finish).
    ended_ms: u64,
    calls: usize,
    /// Calls made before its latest redelivery (the schedule counts from there).
    calls_before_redelivery: usize,
    due_ms: u64,
    do_not_retry: bool,
}

/// Later than any id's time: a bulk redelivery of the whole history.
const WINDOW_END_MS: u64 = 62u64.pow(8) - 1;

fn open(path: &Path, seed: u64) -> (Store, WriterHandle) {
    // A tiny fold bound, so that folds happen (and crash) often; for every third seed a large
    // one, so that dispatches wait unfolded through redeliveries and retention.
    let limits = StoreLimits {
        write_queue_max: 1024,
        write_batch_max: 64,
        cache_bytes: 4 << 20,
        webhook_pending_max: if seed % 3 == 2 { 1000 } else { 7 },
        finished_max_age_ms: RETENTION_MS,
        store_bytes_max: 0,
    };
    Store::open(path, limits).expect("open store")
}

struct Sim {
    rng: Rng,
    seed: u64,
    path: std::path::PathBuf,
    store: Option<Store>,
    writer: Option<WriterHandle>,
    scheduler: Scheduler,
    /// The scheduler's bounds: calls per target and per user holding a slot.
    caps: (usize, usize),
    /// Calls in `pending` whose HTTP exchange has ended (their slots are free).
    freed: HashSet<String>,
    webhooks: Vec<Webhook>,
    /// Webhooks disabled now: the writer must drop the dispatches made for them.
    disabled: HashSet<String>,
    known: HashMap<String, Known>,
    pending: Vec<(String, Dispatch)>,
    now_ms: u64,
    next_id: u64,
    /// An ingest or a crash since the last check: per-webhook data is checked too.
    webhooks_changed: bool,
    /// Dispatches that ended before this may have been deleted by retention.
    retained_before_ms: u64,
    /// Steps taken so far.
    steps: u64,
    /// Webhooks deleted: their lists must stay empty.
    deleted: Vec<Webhook>,
}

impl Sim {
    fn store(&self) -> &Store {
        self.store.as_ref().expect("open")
    }

    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{:016}", self.next_id)
    }

    fn fail(&self, what: String) -> ! {
        panic!("simulation seed {} (rerun with SIM_SEED={}): {what}", self.seed, self.seed)
    }

    async fn ingest(&mut self) {
        self.webhooks_changed = true;
        let events = 1 + self.rng.below(3) as usize;
        let mut batch = Vec::new();
        for _ in 0..events {
            let event_type =
                [EventType::RunSucceeded, EventType::RunFailed][self.rng.below(2) as usize];
            let mut dispatches = Vec::new();
            for _ in 0..1 + self.rng.below(2) {
                let w = self.webhooks[self.rng.below(self.webhooks.len() as u64) as usize].clone();
                let id = self.id("d");
                dispatches.push(Dispatch {
                    id,
                    user_id: w.user_id.clone(),
                    webhook_id: w.id.clone(),
                    created_ms: self.now_ms,
                    status: DispatchStatus::Active,
                    event_type,
                    event_data_json: Some("{\"actorId\":\"a\",\"actorRunId\":\"r\"}".into()),
                    condition: w.condition.clone(),
                    request_url: w.request_url.clone(),
                    is_ad_hoc: false,
                    ignore_ssl_errors: false,
                    do_not_retry: w.do_not_retry,
                    body: "{}".into(),
                    headers: Vec::new(),
                    calls: Vec::new(),
                    next_due_ms: Some(self.now_ms),
                    finished_ms: None,
                    calls_before_redelivery: 0,
                });
            }
            let id = self.id("e");
            batch.push(NewEvent {
                id,
                user_id: "u".into(),
                created_ms: self.now_ms,
                event_type,
                idempotency_key: None,
                record_json: Some("{}".into()),
                dispatches,
            });
        }
        // Those for a disabled webhook are matched a moment before it was disabled: dropped.
        let planned: Vec<(String, String, bool)> = batch
            .iter()
            .flat_map(|e| {
                e.dispatches.iter().map(|d| (d.id.clone(), d.webhook_id.clone(), d.do_not_retry))
            })
            .filter(|(_, w, _)| !self.disabled.contains(w))
            .collect();
        match self.store().ingest(batch, None).await {
            Ok(answers) => {
                let created: Vec<&String> =
                    answers.iter().flat_map(|a| a.dispatch_ids.iter()).collect();
                let want: Vec<&String> = planned.iter().map(|(id, _, _)| id).collect();
                if created != want {
                    self.fail(format!("ingest created {created:?}, not {want:?}"));
                }
                for (id, webhook_id, do_not_retry) in planned {
                    let due_ms = self.now_ms;
                    let k = Known {
                        webhook_id,
                        ended: None,
                        ended_ms: 0,
                        calls: 0,
                        calls_before_redelivery: 0,
                        due_ms,
                        do_not_retry,
                    };
                    self.known.insert(id, k);
                }
            }
            Err(e) => self.fail(format!("ingest failed: {e}")),
        }
    }

    async fn pass(&mut self) {
        let store = self.store().clone();
        let pass = match self.scheduler.take_due(&store, self.now_ms).await {
            Ok(p) => p,
            Err(e) => self.fail(format!("take_due: {e}")),
        };
        for (target, d) in pass.calls {
            let Some(k) = self.known.get(&d.id) else {
                self.fail(format!("took unknown {}", d.id))
            };
            if k.ended.is_some() {
                self.fail(format!("{} taken after it ended {:?}", d.id, k.ended));
            }
            if d.next_due_ms.is_none_or(|due| due > self.now_ms) {
                self.fail(format!(
                    "{} taken before it was due ({:?} > {})",
                    d.id, d.next_due_ms, self.now_ms
                ));
            }
            if self.pending.iter().any(|(_, p)| p.id == d.id) {
                self.fail(format!("{} taken twice while in flight", d.id));
            }
            self.pending.push((target, d));
        }
        // The bounds hold: slots held per target and per user (two users share the targets).
        let mut per_target: HashMap<&str, usize> = HashMap::new();
        let mut per_user: HashMap<&str, usize> = HashMap::new();
        for (target, d) in self.pending.iter().filter(|(_, d)| !self.freed.contains(&d.id)) {
            *per_target.entry(target).or_default() += 1;
            *per_user.entry(&d.user_id).or_default() += 1;
        }
        if let Some((t, n)) = per_target.iter().find(|(_, n)| **n > self.caps.0) {
            self.fail(format!("{n} calls hold slots of target {t}; the bound is {}", self.caps.0));
        }
        if let Some((u, n)) = per_user.iter().find(|(_, n)| **n > self.caps.1) {
            self.fail(format!("{n} calls hold slots of user {u}; the bound is {}", self.caps.1));
        }
        for (u, n) in per_user {
            if self.scheduler.user_holding(u) != n {
                self.fail(format!(
                    "scheduler counts {} for {u}, {n} hold",
                    self.scheduler.user_holding(u)
                ));
            }
        }
    }

    /// A call's HTTP exchange ends before its outcome is recorded: its target's slot is free,
    /// but the dispatch must not be taken again until it lands (the pass checks that).
    fn exchange_one(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let i = self.rng.below(self.pending.len() as u64) as usize;
        let (target, d) = &self.pending[i];
        self.scheduler.free_target(&d.id, target);
        self.freed.insert(d.id.clone());
    }

    async fn complete_one(&mut self, force_ok: bool) {
        if self.pending.is_empty() {
            return;
        }
        let i = self.rng.below(self.pending.len() as u64) as usize;
        let (target, d) = self.pending.swap_remove(i);
        self.freed.remove(&d.id);
        let roll = self.rng.below(100);
        let took = self.rng.below(50);
        let (outcome, status, error) = match roll {
            _ if force_ok => (Outcome::Delivered, Some(200), None),
            0..40 => (Outcome::Delivered, Some(200), None),
            40..70 => {
                (Outcome::Failed { retry_after_ms: None }, Some(500), Some("HTTP 500".to_string()))
            }
            70..85 => {
                (Outcome::Failed { retry_after_ms: None }, None, Some("timed out".to_string()))
            }
            _ => (
                Outcome::Failed { retry_after_ms: Some(self.rng.below(5000)) },
                Some(429),
                Some("HTTP 429".to_string()),
            ),
        };
        let call = Call {
            started_ms: self.now_ms,
            finished_ms: self.now_ms + took,
            error_message: error,
            response_status: status,
            response_body: None,
        };
        let jitter = self.rng.unit();
        let decision = match finish(self.store(), &d, Sent { call, outcome }, &DELAYS, jitter).await
        {
            Ok(decision) => decision,
            Err(e) => self.fail(format!("finish: {e}")),
        };
        self.scheduler.land(&d.id, &target);
        let now = self.now_ms;
        let k = self.known.get_mut(&d.id).expect("known");
        k.calls += 1;
        k.ended_ms = now + took;
        match decision {
            hookd::model::Decision::Succeeded => k.ended = Some(DispatchStatus::Succeeded),
            hookd::model::Decision::Failed => k.ended = Some(DispatchStatus::Failed),
            hookd::model::Decision::RetryAt(due) => {
                let back = due < k.due_ms || due < now;
                let before = k.due_ms;
                k.due_ms = due;
                if back {
                    self.fail(format!(
                        "{}: due time went back from {before} to {due} at {now}",
                        d.id
                    ));
                }
            }
        }
    }

    async fn crash(&mut self) {
        self.webhooks_changed = true;
        // Everything in memory is gone: calls in flight are never recorded.
        self.pending.clear();
        self.freed.clear();
        (self.scheduler, self.caps) = new_scheduler(&mut self.rng);
        if let Some(w) = self.writer.take() {
            w.close().await;
        }
        // The file can be opened again only once the last handle is gone.
        self.store = None;
        let (store, writer) = open(&self.path, self.seed);
        self.store = Some(store);
        self.writer = Some(writer);
    }

    /// Retention at the simulation's time, until it has nothing more to do (it would go on
    /// by itself in later groups; waiting keeps the check's reads consistent).
    async fn retain(&mut self) {
        self.webhooks_changed = true;
        for round in 0.. {
            match self.store().retain(self.now_ms).await {
                Ok(false) => break,
                Ok(true) if round < 100 => {}
                Ok(true) => self.fail("retention never finishes".into()),
                Err(e) => self.fail(format!("retain: {e}")),
            }
        }
        self.retained_before_ms = self.retained_before_ms.max(self.now_ms - RETENTION_MS);
    }

    /// Redelivers an ended dispatch (one retention deleted is not found: nothing changes).
    async fn redeliver(&mut self) {
        let mut ended: Vec<String> = self
            .known
            .iter()
            .filter(|(_, k)| k.ended.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        if ended.is_empty() {
            return;
        }
        ended.sort();
        let id = ended[self.rng.below(ended.len() as u64) as usize].clone();
        let w = &self.known[&id].webhook_id;
        let deleted = self.deleted.iter().any(|x| &x.id == w);
        let user = self
            .webhooks
            .iter()
            .chain(&self.deleted)
            .find(|x| &x.id == w)
            .map(|x| x.user_id.clone())
            .expect("webhook");
        match self.store().redeliver(user, id.clone(), self.now_ms).await {
            Ok(()) => {
                let now = self.now_ms;
                let k = self.known.get_mut(&id).expect("known");
                k.ended = None;
                k.due_ms = now;
                k.calls_before_redelivery = k.calls;
            }
            Err(hookd::store::StoreError::NotFound)
                if self.known[&id].ended_ms < self.retained_before_ms => {}
            // Its webhook is deleted: it is not delivered again.
            Err(hookd::store::StoreError::Refused(_)) if deleted => {}
            Err(e) => self.fail(format!("redeliver {id}: {e}")),
        }
    }

    /// Redelivers a webhook's dispatches in one ended status, its whole history: each known
    /// one in that status must come back ACTIVE (unless retention deleted it), and the count
    /// says how many did.
    async fn redeliver_all(&mut self) {
        let w = self.webhooks[self.rng.below(self.webhooks.len() as u64) as usize].clone();
        let status =
            if self.rng.below(2) == 0 { DispatchStatus::Failed } else { DispatchStatus::Succeeded };
        let window = (0, WINDOW_END_MS);
        let asked = self.store().redeliver_all(
            w.user_id.clone(),
            w.id.clone(),
            status,
            window,
            self.now_ms,
        );
        let count = match asked.await {
            Ok(n) => n,
            Err(e) => self.fail(format!("redeliver_all {}: {e}", w.id)),
        };
        let stored: HashMap<String, Dispatch> = match self.store().all_dispatches().await {
            Ok(all) => all.into_iter().map(|d| (d.id.clone(), d)).collect(),
            Err(e) => self.fail(format!("all_dispatches: {e}")),
        };
        let (now, retained_before_ms) = (self.now_ms, self.retained_before_ms);
        let mut made_active = 0;
        let mut skipped = Vec::new();
        for (id, k) in self.known.iter_mut() {
            if k.webhook_id != w.id || k.ended != Some(status) {
                continue;
            }
            match stored.get(id) {
                Some(d) if d.status == DispatchStatus::Active => {
                    k.ended = None;
                    k.due_ms = now;
                    k.calls_before_redelivery = k.calls;
                    made_active += 1;
                }
                None if k.ended_ms < retained_before_ms => {}
                _ => skipped.push(id.clone()),
            }
        }
        if !skipped.is_empty() || made_active != count {
            self.fail(format!(
                "redeliver_all: {count} counted, {made_active} ACTIVE, skipped {skipped:?}"
            ));
        }
    }

    /// Disables an enabled webhook or enables a disabled one.
    async fn toggle(&mut self) {
        let w = self.webhooks[self.rng.below(self.webhooks.len() as u64) as usize].clone();
        let enable = self.disabled.contains(&w.id);
        let patch = WebhookPatch { is_enabled: Change::Set(enable), ..WebhookPatch::default() };
        match self.store().update_webhook(w.user_id.clone(), w.id.clone(), patch, self.now_ms).await
        {
            Ok((updated, _)) if updated.is_enabled == enable => {}
            Ok((updated, _)) => self.fail(format!("{} is_enabled {}", w.id, updated.is_enabled)),
            Err(e) => self.fail(format!("update_webhook: {e}")),
        }
        if enable {
            self.disabled.remove(&w.id);
        } else {
            self.disabled.insert(w.id);
        }
    }

    async fn check(&self) {
        let keys = match self.store().outbox_keys().await {
            Ok(k) => k,
            Err(e) => self.fail(format!("outbox_keys: {e}")),
        };
        let mut keyed: HashMap<&str, (&str, u64)> = HashMap::new();
        for (target, due, id) in &keys {
            if keyed.insert(id.as_str(), (target.as_str(), *due)).is_some() {
                self.fail(format!("{id} has two outbox keys"));
            }
        }
        let stored: HashMap<String, Dispatch> = match self.store().all_dispatches().await {
            Ok(all) => all.into_iter().map(|d| (d.id.clone(), d)).collect(),
            Err(e) => self.fail(format!("all_dispatches: {e}")),
        };
        for (id, k) in &self.known {
            let Some(d) = stored.get(id) else {
                if k.ended.is_some() && k.ended_ms < self.retained_before_ms {
                    continue; // deleted by retention
                }
                self.fail(format!("acknowledged dispatch {id} is lost"))
            };
            if d.calls.len() != k.calls {
                self.fail(format!("{id}: {} calls stored, {} recorded", d.calls.len(), k.calls));
            }
            let calls_max = if k.do_not_retry { 1 } else { DELAYS.len() + 1 };
            if d.calls.len() - k.calls_before_redelivery > calls_max {
                self.fail(format!(
                    "{id}: {} calls, the schedule allows {calls_max}",
                    d.calls.len()
                ));
            }
            match (k.ended, d.status) {
                (None, DispatchStatus::Active) => {
                    let Some((target, due)) = keyed.get(id.as_str()) else {
                        self.fail(format!("ACTIVE {id} has no outbox key"))
                    };
                    if Some(*due) != d.next_due_ms || *target != d.target_key() || *due != k.due_ms
                    {
                        self.fail(format!(
                            "{id}: key ({target}, {due}) vs record {:?}, known {}",
                            d.next_due_ms, k.due_ms
                        ));
                    }
                }
                (Some(want), got) if want == got => {
                    if keyed.contains_key(id.as_str()) || d.next_due_ms.is_some() {
                        self.fail(format!("ended {id} still has an outbox key"));
                    }
                }
                (want, got) => self.fail(format!("{id}: status {got:?}, expected {want:?}")),
            }
        }
        if keys.len() != self.known.values().filter(|k| k.ended.is_none()).count() {
            self.fail(format!("{} outbox keys for the ACTIVE dispatches", keys.len()));
        }
        // Per-webhook data after ingests and crashes (the other steps cannot change it).
        if self.webhooks_changed {
            self.check_webhooks(&stored).await;
        }
        // Every third check (they cost more than the rest of the check together).
        if self.steps.is_multiple_of(3) {
            self.check_filters(&stored).await;
        }
    }

    /// Deletes a webhook none of whose calls is in flight: its ACTIVE dispatches end FAILED
    /// with one more call ("Webhook was removed."); they all stay on their user's lists.
    async fn delete_one(&mut self) {
        let i = self.rng.below(self.webhooks.len() as u64) as usize;
        let w = self.webhooks[i].clone();
        if self.webhooks.len() == 1 || self.pending.iter().any(|(_, d)| d.webhook_id == w.id) {
            return;
        }
        if let Err(e) =
            self.store().delete_webhook(w.user_id.clone(), w.id.clone(), self.now_ms).await
        {
            self.fail(format!("delete_webhook {}: {e}", w.id));
        }
        let now = self.now_ms;
        for k in self.known.values_mut().filter(|k| k.webhook_id == w.id && k.ended.is_none()) {
            k.ended = Some(DispatchStatus::Failed);
            k.ended_ms = now;
            k.calls += 1;
        }
        self.webhooks.remove(i);
        self.deleted.push(w);
        self.webhooks_changed = true;
    }

    /// Every filtered list (per user and per webhook, by status and by event type) lists
    /// exactly the stored dispatches that match, in order, with the exact total; a page from
    /// the middle, newest first, is the same slice of them.
    async fn check_filters(&self, stored: &HashMap<String, Dispatch>) {
        let mut scopes: Vec<(String, DispatchScope)> =
            ["u", "v"].iter().map(|u| (u.to_string(), DispatchScope::User)).collect();
        for w in self.webhooks.iter().chain(&self.deleted) {
            scopes.push((w.user_id.clone(), DispatchScope::Webhook(w.id.clone())));
        }
        let mut filters: Vec<DispatchFilter> =
            [DispatchStatus::Active, DispatchStatus::Succeeded, DispatchStatus::Failed]
                .into_iter()
                .map(|s| DispatchFilter { status: Some(s), event_type: None })
                .collect();
        // By type alone, or by type and a status, as the seed picks.
        let status = [None, Some(DispatchStatus::Failed)][self.seed as usize % 2];
        let event_type = [EventType::RunSucceeded, EventType::RunFailed][self.steps as usize % 2];
        filters.push(DispatchFilter { status, event_type: Some(event_type) });
        let paged = (self.seed + self.steps) as usize % filters.len();
        for (user, scope) in &scopes {
            for (i, filter) in filters.iter().enumerate() {
                let mut want: Vec<&String> = stored
                    .values()
                    .filter(|d| &d.user_id == user)
                    .filter(|d| match scope {
                        // A deleted webhook's list is empty (the API answers 404 for it).
                        DispatchScope::Webhook(w) => {
                            &d.webhook_id == w && !self.deleted.iter().any(|x| &x.id == w)
                        }
                        DispatchScope::User => true,
                    })
                    .filter(|d| filter.status.is_none_or(|s| d.status == s))
                    .filter(|d| filter.event_type.is_none_or(|t| d.event_type == t))
                    .map(|d| &d.id)
                    .collect();
                want.sort();
                let all = PageRequest { offset: 0, limit: u64::MAX, desc: false };
                let got = self.list(user, scope, *filter, all).await;
                let got_ids: Vec<&String> = got.items.iter().map(|d| &d.id).collect();
                if got.total != want.len() as u64 || got_ids != want {
                    self.fail(format!(
                        "{scope:?} {filter:?}: listed {} {got_ids:?}, stored {want:?}",
                        got.total
                    ));
                }
                if i != paged {
                    continue;
                }
                let middle = PageRequest { offset: 1, limit: 2, desc: true };
                let got = self.list(user, scope, *filter, middle).await;
                let got_ids: Vec<&String> = got.items.iter().map(|d| &d.id).collect();
                let want_page: Vec<&String> = want.iter().rev().skip(1).take(2).copied().collect();
                if got.total != want.len() as u64 || got_ids != want_page {
                    self.fail(format!(
                        "{scope:?} {filter:?} desc offset 1 limit 2: {got_ids:?}, not {want_page:?}"
                    ));
                }
            }
        }
    }

    async fn list(
        &self,
        user: &str,
        scope: &DispatchScope,
        filter: DispatchFilter,
        page: PageRequest,
    ) -> hookd::store::Page<Dispatch> {
        match self.store().list_dispatches(user.into(), scope.clone(), filter, page).await {
            Ok(p) => p,
            Err(e) => self.fail(format!("list_dispatches {scope:?} {filter:?}: {e}")),
        }
    }

    /// Per-webhook stats and lists (folded every 7 dispatches, see `open`) count every
    /// acknowledged dispatch exactly once, in order, and `lastDispatch` is the latest one's.
    async fn check_webhooks(&self, stored: &HashMap<String, Dispatch>) {
        for w in &self.webhooks {
            let mut ids: Vec<&String> =
                self.known.iter().filter(|(_, k)| k.webhook_id == w.id).map(|(id, _)| id).collect();
            // Sim ids grow with creation, and the sim commits one ingest at a time.
            ids.sort();
            let (_, stats) = match self.store().get_webhook(w.user_id.clone(), w.id.clone()).await {
                Ok(Some(pair)) => pair,
                other => self.fail(format!("get_webhook {}: {other:?}", w.id)),
            };
            if stats.total_dispatches != ids.len() as u64 {
                self.fail(format!(
                    "{}: totalDispatches {}, {} acknowledged",
                    w.id,
                    stats.total_dispatches,
                    ids.len()
                ));
            }
            // The latest one's status, also when retention deleted it.
            let last_status = ids.last().map(|id| match stored.get(*id) {
                Some(d) => d.status,
                None => self.known[*id].ended.unwrap_or(DispatchStatus::Active),
            });
            if stats.last_dispatch.as_ref().map(|l| l.status) != last_status {
                self.fail(format!(
                    "{}: lastDispatch {:?}, latest {last_status:?}",
                    w.id, stats.last_dispatch
                ));
            }
            let page = PageRequest { offset: 0, limit: u64::MAX, desc: false };
            let scope = DispatchScope::Webhook(w.id.clone());
            let all = DispatchFilter::default();
            let listed =
                match self.store().list_dispatches(w.user_id.clone(), scope, all, page).await {
                    Ok(p) => p,
                    Err(e) => self.fail(format!("list_dispatches {}: {e}", w.id)),
                };
            let listed_ids: Vec<&String> = listed.items.iter().map(|d| &d.id).collect();
            ids.retain(|id| stored.contains_key(*id));
            if listed.total != ids.len() as u64 || listed_ids != ids {
                self.fail(format!(
                    "{}: listed {} ({listed_ids:?}), acknowledged {ids:?}",
                    w.id, listed.total
                ));
            }
        }
    }
}

/// A scheduler with random bounds: (scheduler, (per target, per user)).
fn new_scheduler(rng: &mut Rng) -> (Scheduler, (usize, usize)) {
    let inflight = 1 + rng.below(8) as usize;
    let per_target = 1 + rng.below(4) as usize;
    let per_user = 1 + rng.below(4) as usize;
    (Scheduler::new(inflight, per_target, per_user), (per_target, per_user))
}

async fn run_seed(seed: u64, base: &Path) -> (usize, usize) {
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    let path = dir.path().join("sim.redb");
    let (store, writer) = open(&path, seed);
    let mut rng = Rng::new(seed);
    let mut webhooks = Vec::new();
    for (i, do_not_retry) in [false, false, false, true].into_iter().enumerate() {
        let draft = WebhookDraft {
            event_types: vec![EventType::RunSucceeded],
            condition: Condition { actor_id: Some("a".into()), ..Condition::default() },
            request_url: format!("http://t{}.test/", i % 3),
            do_not_retry,
            ..WebhookDraft::default()
        };
        let user = if i % 2 == 0 { "u" } else { "v" };
        let w = Webhook::create(format!("w{i:016}"), user.into(), draft, 0).expect("valid webhook");
        store.create_webhook(w.clone(), usize::MAX).await.expect("create webhook");
        webhooks.push(w);
    }
    let (scheduler, caps) = new_scheduler(&mut rng);
    let mut sim = Sim {
        rng,
        seed,
        path,
        store: Some(store),
        writer: Some(writer),
        scheduler,
        caps,
        freed: HashSet::new(),
        webhooks,
        known: HashMap::new(),
        pending: Vec::new(),
        now_ms: 1_000_000,
        next_id: 0,
        webhooks_changed: false,
        retained_before_ms: 0,
        disabled: HashSet::new(),
        steps: 0,
        deleted: Vec::new(),
    };
    let steps = 20 + sim.rng.below(40);
    for _ in 0..steps {
        match sim.rng.below(100) {
            0..25 => sim.ingest().await,
            25..40 => sim.now_ms += sim.rng.below(3000),
            40..43 => sim.retain().await,
            43..44 => sim.toggle().await,
            44..45 => sim.redeliver().await,
            45..46 => sim.redeliver_all().await,
            46..47 => sim.delete_one().await,
            47..65 => sim.pass().await,
            65..90 => sim.complete_one(false).await,
            90..95 => sim.exchange_one(),
            _ => sim.crash().await,
        }
        sim.steps += 1;
        sim.check().await;
        sim.webhooks_changed = false;
    }
    // Drain: every call now succeeds; everything acknowledged must end.
    for _ in 0..1000 {
        if sim.known.values().all(|k| k.ended.is_some()) {
            break;
        }
        sim.now_ms += 10_000;
        sim.pass().await;
        while !sim.pending.is_empty() {
            sim.complete_one(true).await;
        }
        if sim.rng.below(2) == 0 {
            sim.retain().await;
        }
        sim.steps += 1;
        sim.check().await;
    }
    if !sim.known.values().all(|k| k.ended.is_some()) {
        sim.fail("dispatches never ended".into());
    }
    // The final statuses as `lastDispatch` and the filtered lists show them.
    sim.webhooks_changed = true;
    sim.steps = 0;
    sim.check().await;
    let stored = sim.store().all_dispatches().await.expect("all dispatches").len();
    // Nothing outlives the window: once every dispatch has ended and the window has passed,
    // retention leaves none (a listing it lost, or an id it skipped, would stay forever).
    let last_end_ms = sim.known.values().map(|k| k.ended_ms).max().unwrap_or(0);
    sim.now_ms = sim.now_ms.max(last_end_ms) + RETENTION_MS + 1;
    sim.retain().await;
    let left = sim.store().all_dispatches().await.expect("all dispatches").len();
    if left != 0 {
        sim.fail(format!("{left} ended dispatches outlived the retention window"));
    }
    // And no list keeps a key or a count of them.
    sim.check_filters(&HashMap::new()).await;
    if let Some(w) = sim.writer.take() {
        w.close().await;
    }
    (sim.known.len(), sim.known.len() - stored)
}

#[test]
fn outbox_simulation() {
    let base =
        if Path::new("/dev/shm").is_dir() { Path::new("/dev/shm") } else { Path::new("/tmp") };
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED is a number")],
        Err(_) => {
            let n: u64 =
                std::env::var("SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
            (0..n).collect()
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut dispatches = 0;
    let mut retained = 0;
    for &seed in &seeds {
        let (made, deleted) = runtime.block_on(run_seed(seed, base));
        dispatches += made;
        retained += deleted;
    }
    println!(
        "outbox simulation: {} seeds, {dispatches} dispatches ({retained} deleted by retention), all invariants held",
        seeds.len()
    );
    assert!(seeds.len() < 100 || retained > 0, "retention never ran");
}
