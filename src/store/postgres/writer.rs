//! Group commit on PostgreSQL: writer tasks take what is queued (up to `write_batch_max` ops)
//! and apply it in one transaction of batched statements, then answer each op. A transaction
//! that meets a deadlock, a serialization failure or a key another node inserted meanwhile is
//! retried whole; any other error answers the group with it (the node lives on: a database
//! restart is survived by reconnecting).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::{CHANGES, PgStore, db_i64, listen, pg_error, shard_of};
use crate::metrics::StatusLabels;
use crate::model::{Call, Decision};
use crate::store::codes::{event_code, job_code, status_code};
use crate::store::index::IndexChange;
use crate::store::{EncodedEvent, EventAnswer, IndexStamp, JobReport, StoreError, records};

/// Attempts at one group before its ops are answered with the error.
const ATTEMPTS_MAX: usize = 4;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(super) enum WriteOp {
    Ingest {
        events: Vec<EncodedEvent>,
        job: Option<JobReport>,
        /// The index version the events were matched against, checked in their transaction.
        stamp: Option<IndexStamp>,
        reply: Reply<Vec<EventAnswer>>,
    },
    /// A call's outcome, fenced by the lease its dispatch was taken under.
    RecordCall { dispatch_id: String, call: Call, decision: Decision, reply: Reply<()> },
}

/// One op's answer, sent once the group's commit is known.
enum Answer {
    Ingest(Result<Vec<EventAnswer>, StoreError>),
    Record(Result<(), StoreError>),
}

impl WriteOp {
    fn answer(self, answer: Answer) {
        match (self, answer) {
            (WriteOp::Ingest { reply, .. }, Answer::Ingest(a)) => drop(reply.send(a)),
            (WriteOp::RecordCall { reply, .. }, Answer::Record(a)) => drop(reply.send(a)),
            (WriteOp::Ingest { reply, .. }, Answer::Record(_)) => drop(reply.send(Err(mixed()))),
            (WriteOp::RecordCall { reply, .. }, Answer::Ingest(_)) => {
                drop(reply.send(Err(mixed())))
            }
        }
    }

    fn fail(self, e: &StoreError) {
        let e = StoreError::Storage(e.to_string());
        match self {
            WriteOp::Ingest { reply, .. } => drop(reply.send(Err(e))),
            WriteOp::RecordCall { reply, .. } => drop(reply.send(Err(e))),
        }
    }
}

fn mixed() -> StoreError {
    StoreError::Corrupt("a write answered with another op's answer".into())
}

/// The writer tasks' shared queue.
pub(super) struct Queue {
    pub rx: Mutex<mpsc::Receiver<WriteOp>>,
    pub batch_max: usize,
    /// Groups being applied now.
    pub applying: AtomicUsize,
    /// Signalled when a group is done.
    pub applied: Notify,
}

impl Queue {
    pub fn new(rx: mpsc::Receiver<WriteOp>, batch_max: usize) -> Queue {
        Queue {
            rx: Mutex::new(rx),
            batch_max: batch_max.max(1),
            applying: AtomicUsize::new(0),
            applied: Notify::new(),
        }
    }
}

/// Why a group is tried again.
pub(super) enum Failure {
    Retry(String),
    Error(StoreError),
}

pub(super) fn failure(e: tokio_postgres::Error) -> Failure {
    match e.code() {
        Some(c)
            if *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::T_R_SERIALIZATION_FAILURE =>
        {
            Failure::Retry(e.to_string())
        }
        _ => Failure::Error(pg_error(e)),
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure::Error(e)
    }
}

/// While another group is being applied, a writer starts a group only once it holds this many
/// rows' worth of ops (events and outcomes); until then it keeps gathering. Most of
/// PostgreSQL's cost of a group is per statement and per commit, so a few large groups cost
/// far less than many small ones; large requests (batches) still get groups in parallel.
const PARALLEL_GROUP_ROWS_MIN: usize = 64;

/// What an op adds to a group: its events, or one outcome.
fn rows(op: &WriteOp) -> usize {
    match op {
        WriteOp::Ingest { events, .. } => events.len().max(1),
        WriteOp::RecordCall { .. } => 1,
    }
}

/// Runs one writer task until the queue closes.
pub(super) async fn run(store: PgStore, queue: Arc<Queue>) {
    loop {
        let ops = {
            let mut rx = queue.rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut group_rows = rows(&first);
            let mut ops = vec![first];
            loop {
                while ops.len() < queue.batch_max {
                    match rx.try_recv() {
                        Ok(op) => {
                            group_rows += rows(&op);
                            ops.push(op);
                        }
                        Err(_) => break,
                    }
                }
                let busy = queue.applying.load(Ordering::SeqCst) > 0;
                if !busy || group_rows >= PARALLEL_GROUP_ROWS_MIN || ops.len() >= queue.batch_max {
                    break;
                }
                // Registered before the check below, so a group ending meanwhile is not missed.
                let applied = queue.applied.notified();
                tokio::pin!(applied);
                applied.as_mut().enable();
                if queue.applying.load(Ordering::SeqCst) == 0 {
                    continue;
                }
                tokio::select! {
                    op = rx.recv() => match op {
                        Some(op) => {
                            group_rows += rows(&op);
                            ops.push(op);
                        }
                        None => break,
                    },
                    () = &mut applied => {}
                }
            }
            queue.applying.fetch_add(1, Ordering::SeqCst);
            ops
        };
        store.apply(ops).await;
        queue.applying.fetch_sub(1, Ordering::SeqCst);
        queue.applied.notify_waiters();
    }
}

impl PgStore {
    async fn apply(&self, ops: Vec<WriteOp>) {
        let mut last = StoreError::Storage("no attempt".into());
        for attempt in 1..=ATTEMPTS_MAX {
            let started = std::time::Instant::now();
            match self.try_group(&ops).await {
                Ok((answers, fired, tally)) => {
                    if !fired.is_empty() {
                        self.inner.index.apply(fired);
                    }
                    tally.count(&self.inner.metrics, ops.len(), started);
                    self.work_added(Some(&tally.work_shards));
                    self.forget_taken(&ops);
                    for (op, answer) in ops.into_iter().zip(answers) {
                        op.answer(answer);
                    }
                    return;
                }
                Err(Failure::Retry(why)) => {
                    tracing::debug!(attempt, why, "retrying a write group");
                    last = StoreError::Storage(why);
                }
                Err(Failure::Error(e)) => {
                    last = e;
                    break;
                }
            }
        }
        self.forget_taken(&ops);
        for op in ops {
            op.fail(&last);
        }
    }

    /// The recorded (or refused) dispatches are no longer this node's to call.
    fn forget_taken(&self, ops: &[WriteOp]) {
        let mut taken = self.inner.taken.lock().unwrap_or_else(|p| p.into_inner());
        for op in ops {
            if let WriteOp::RecordCall { dispatch_id, .. } = op {
                taken.remove(dispatch_id);
            }
        }
    }

    /// One transaction for the group: each op's answer, and the ad-hoc webhooks that fired.
    async fn try_group(
        &self,
        ops: &[WriteOp],
    ) -> Result<(Vec<Answer>, Vec<IndexChange>, Tally), Failure> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(failure)?;
        let mut answers: Vec<Option<Result<Vec<EventAnswer>, StoreError>>> =
            (0..ops.len()).map(|_| None).collect();
        let matched: Vec<(usize, &EncodedEvent)> = ops
            .iter()
            .enumerate()
            .flat_map(|(i, op)| match op {
                WriteOp::Ingest { events, .. } => events.iter().map(move |e| (i, e)).collect(),
                WriteOp::RecordCall { .. } => Vec::new(),
            })
            .collect();
        let (replayed, checks, index_version) = tokio::try_join!(
            stored_answers(&tx, &matched),
            webhook_checks(&tx, &matched),
            index_version(&tx, ops)
        )?;
        // Events matched against an index behind a committed webhook write are matched again
        // by their callers: those writes were acknowledged before this read, maybe before the
        // events arrived, so the events must see them.
        for (i, op) in ops.iter().enumerate() {
            if let WriteOp::Ingest { stamp: Some(stamp), .. } = op
                && Some(stamp.0) != index_version
            {
                answers[i] = Some(Err(StoreError::StaleIndex));
            }
        }
        apply_job_reports(&tx, ops, &mut answers).await?;
        let events: Vec<(usize, &EncodedEvent)> =
            matched.into_iter().filter(|(i, _)| answers[*i].is_none()).collect();
        let mut plan = Plan::default();
        let mut firsts: HashMap<(&str, &str), EventAnswer> = HashMap::new();
        let mut per_op: Vec<Vec<EventAnswer>> = vec![Vec::new(); ops.len()];
        for (i, encoded) in &events {
            let e = &encoded.event;
            if let Some(key) = &e.idempotency_key {
                let k = (e.user_id.as_str(), key.as_str());
                if let Some(a) = replayed.get(&(e.user_id.clone(), key.clone())).or(firsts.get(&k))
                {
                    per_op[*i].push(a.clone());
                    continue;
                }
            }
            let answer = plan.add(encoded, &checks)?;
            if let Some(key) = &e.idempotency_key {
                firsts.insert((e.user_id.as_str(), key.as_str()), answer.clone());
            }
            per_op[*i].push(answer);
        }
        let mut tally = Tally {
            events: plan.e_id.len() as u64,
            created: plan.d_id.len() as u64,
            ended: [0; 2],
            work_shards: plan.work_shards(),
        };
        // New rows and outcomes touch different rows: both go out in one round trip.
        let ((), recorded) = tokio::try_join!(
            plan.write(&tx, &self.inner.node_id),
            self.record_calls(&tx, ops, &mut tally)
        )?;
        tx.commit().await.map_err(failure)?;
        let fired = plan
            .fired
            .iter()
            .filter_map(|id| checks.get(id)?.webhook.as_ref())
            .map(IndexChange::removing)
            .collect();
        let answers = ops
            .iter()
            .zip(answers.into_iter().zip(per_op))
            .zip(recorded)
            .map(|((op, (refused, made)), record)| match op {
                WriteOp::Ingest { .. } => Answer::Ingest(refused.unwrap_or(Ok(made))),
                WriteOp::RecordCall { .. } => Answer::Record(record),
            })
            .collect();
        Ok((answers, fired, tally))
    }
}

/// What a committed group did, for this node's metrics and its outbox walk.
pub(super) struct Tally {
    events: u64,
    created: u64,
    /// Dispatches ended: SUCCEEDED, FAILED.
    pub ended: [u64; 2],
    /// The shards of the dispatches it made ACTIVE or left ACTIVE (due again later).
    pub work_shards: Vec<i16>,
}

impl Tally {
    fn count(&self, m: &crate::metrics::Metrics, ops: usize, started: std::time::Instant) {
        m.events_accepted.inc_by(self.events);
        m.dispatches_created.inc_by(self.created);
        for (status, n) in [("SUCCEEDED", self.ended[0]), ("FAILED", self.ended[1])] {
            if n > 0 {
                m.dispatches_ended.get_or_create(&StatusLabels { status }).inc_by(n);
            }
        }
        m.group_commit_ops.observe(ops as f64);
        m.group_commit_seconds.observe(started.elapsed().as_secs_f64());
    }
}

/// Applies the job reports of the ops not answered yet. A job report stores only if the job's
/// status is still the one it was made from (else its op is answered `Conflict`).
async fn apply_job_reports(
    tx: &deadpool_postgres::Transaction<'_>,
    ops: &[WriteOp],
    answers: &mut [Option<Result<Vec<EventAnswer>, StoreError>>],
) -> Result<(), Failure> {
    for (i, op) in ops.iter().enumerate() {
        let WriteOp::Ingest { job: Some(job), .. } = op else { continue };
        if answers[i].is_some() {
            continue;
        }
        let kind = i16::from(job_code(job.kind));
        let applied = match &job.expected_status {
            Some(expected) => tx
                .execute(
                    &tx.prepare_cached(
                        "UPDATE jobs SET status = $4, object = $5
                         WHERE user_id = $1 AND kind = $2 AND id = $3 AND status = $6",
                    )
                    .await
                    .map_err(failure)?,
                    &[&job.user_id, &kind, &job.id, &job.status, &job.object_json, expected],
                )
                .await
                .map_err(failure)?,
            None => tx
                .execute(
                    &tx.prepare_cached(
                        "INSERT INTO jobs (user_id, kind, id, status, object)
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    )
                    .await
                    .map_err(failure)?,
                    &[&job.user_id, &kind, &job.id, &job.status, &job.object_json],
                )
                .await
                .map_err(failure)?,
        };
        if applied == 0 {
            answers[i] = Some(Err(StoreError::Conflict));
        }
    }
    Ok(())
}

/// The store's webhook index version (`hookd_meta.changes`), read when some op carries a stamp.
async fn index_version(
    tx: &deadpool_postgres::Transaction<'_>,
    ops: &[WriteOp],
) -> Result<Option<i64>, Failure> {
    if !ops.iter().any(|op| matches!(op, WriteOp::Ingest { stamp: Some(_), .. })) {
        return Ok(None);
    }
    let row = tx.query_one(&tx.prepare_cached(CHANGES).await.map_err(failure)?, &[]).await;
    Ok(Some(row.map_err(failure)?.get(0)))
}

/// The first answers of the keyed events whose keys are already stored.
async fn stored_answers(
    tx: &deadpool_postgres::Transaction<'_>,
    events: &[(usize, &EncodedEvent)],
) -> Result<HashMap<(String, String), EventAnswer>, Failure> {
    let (users, keys): (Vec<&str>, Vec<&str>) = events
        .iter()
        .filter_map(|(_, e)| Some((e.event.user_id.as_str(), e.event.idempotency_key.as_deref()?)))
        .unzip();
    let mut found = HashMap::new();
    if keys.is_empty() {
        return Ok(found);
    }
    let rows = tx
        .query(
            &tx.prepare_cached(
                "SELECT i.user_id, i.key, i.answer FROM event_idem i
             JOIN unnest($1::text[], $2::text[]) AS k(user_id, key)
               ON i.user_id = k.user_id AND i.key = k.key",
            )
            .await
            .map_err(failure)?,
            &[&users, &keys],
        )
        .await
        .map_err(failure)?;
    for row in rows {
        let answer = records::decode_event_answer(row.get(2))?;
        found.insert((row.get(0), row.get(1)), answer);
    }
    Ok(found)
}

/// What the group's transaction knows of a matched webhook, locked `FOR SHARE` so that a
/// racing delete or update waits for this commit (and then ends or sees what it made).
struct Check {
    /// Read only for an ad-hoc webhook (which this node's index drops once it fired).
    webhook: Option<crate::model::Webhook>,
    is_enabled: bool,
    fired: bool,
}

async fn webhook_checks(
    tx: &deadpool_postgres::Transaction<'_>,
    events: &[(usize, &EncodedEvent)],
) -> Result<HashMap<String, Check>, Failure> {
    let mut ids: Vec<&str> = events
        .iter()
        .flat_map(|(_, e)| e.event.dispatches.iter().map(|d| d.webhook_id.as_str()))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut checks = HashMap::new();
    if ids.is_empty() {
        return Ok(checks);
    }
    // In id order, so that two groups lock shared rows in one order.
    let rows = tx
        .query(
            &tx.prepare_cached(
                "SELECT id, is_enabled, fired, CASE WHEN is_ad_hoc THEN record END
             FROM webhooks WHERE id = ANY($1) ORDER BY id FOR SHARE",
            )
            .await
            .map_err(failure)?,
            &[&ids],
        )
        .await
        .map_err(failure)?;
    for row in rows {
        let webhook = match row.get::<_, Option<&[u8]>>(3) {
            Some(bytes) => Some(records::decode_webhook(bytes)?),
            None => None,
        };
        checks.insert(
            row.get::<_, String>(0),
            Check { webhook, is_enabled: row.get(1), fired: row.get(2) },
        );
    }
    Ok(checks)
}

/// The rows one group inserts, as columns for `unnest`.
#[derive(Default)]
struct Plan {
    d_id: Vec<String>,
    d_user: Vec<String>,
    d_webhook: Vec<String>,
    d_created: Vec<i64>,
    d_type: Vec<i16>,
    d_status: Vec<i16>,
    d_request: Vec<Vec<u8>>,
    d_state: Vec<Vec<u8>>,
    d_due: Vec<Option<i64>>,
    d_finished: Vec<Option<i64>>,
    d_target: Vec<String>,
    d_shard: Vec<i16>,
    e_id: Vec<String>,
    e_user: Vec<String>,
    e_created: Vec<i64>,
    e_key: Vec<Option<String>>,
    e_record: Vec<Vec<u8>>,
    k_user: Vec<String>,
    k_key: Vec<String>,
    k_event: Vec<String>,
    k_answer: Vec<Vec<u8>>,
    fired: HashSet<String>,
}

impl Plan {
    /// The shards of the ACTIVE dispatches it inserts, each once.
    fn work_shards(&self) -> Vec<i16> {
        let mut shards: Vec<i16> = self
            .d_shard
            .iter()
            .zip(&self.d_status)
            .filter(|(_, status)| **status == 0)
            .map(|(shard, _)| *shard)
            .collect();
        shards.sort_unstable();
        shards.dedup();
        shards
    }

    /// Adds the event and those of its dispatches whose webhook still takes them; its answer.
    fn add(
        &mut self,
        encoded: &EncodedEvent,
        checks: &HashMap<String, Check>,
    ) -> Result<EventAnswer, Failure> {
        let e = &encoded.event;
        let mut ids = Vec::with_capacity(e.dispatches.len());
        for (d, records) in e.dispatches.iter().zip(&encoded.dispatches) {
            // Deleted since it was matched (ids are never reused, so it is the user's own).
            let Some(check) = checks.get(&d.webhook_id) else { continue };
            // Disabled since (the test route calls a disabled one too).
            if !check.is_enabled && d.event_type != crate::model::EventType::Test {
                continue;
            }
            if d.fires_ad_hoc() && (check.fired || !self.fired.insert(d.webhook_id.clone())) {
                continue; // an ad-hoc webhook fires once
            }
            self.d_id.push(d.id.clone());
            self.d_user.push(d.user_id.clone());
            self.d_webhook.push(d.webhook_id.clone());
            self.d_created.push(db_i64(d.created_ms));
            self.d_type.push(i16::from(event_code(d.event_type)));
            self.d_status.push(i16::from(status_code(d.status)));
            self.d_request.push(records.request.clone());
            self.d_state.push(records.state.clone());
            self.d_due.push(d.next_due_ms.map(db_i64));
            self.d_finished.push(d.finished_ms.map(db_i64));
            self.d_shard.push(shard_of(&records.target));
            self.d_target.push(records.target.clone());
            ids.push(d.id.clone());
        }
        let answer = EventAnswer {
            id: e.id.clone(),
            created_ms: e.created_ms,
            event_type: e.event_type.as_str().to_string(),
            dispatch_ids: ids,
        };
        if let Some(record) = &e.record_json {
            let key = e.idempotency_key.as_deref();
            self.e_id.push(e.id.clone());
            self.e_user.push(e.user_id.clone());
            self.e_created.push(db_i64(e.created_ms));
            self.e_key.push(e.idempotency_key.clone());
            self.e_record.push(records::encode_event(
                &e.user_id,
                key,
                &answer.dispatch_ids,
                record,
            )?);
            if let Some(key) = key {
                self.k_user.push(e.user_id.clone());
                self.k_key.push(key.to_string());
                self.k_event.push(e.id.clone());
                self.k_answer.push(records::encode_event_answer(&answer)?);
            }
        }
        Ok(answer)
    }

    /// Sends the group's statements back to back in one pipeline (they touch different
    /// tables), then waits for all their answers.
    async fn write(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        node_id: &str,
    ) -> Result<(), Failure> {
        let prepared = |sql| async move { tx.prepare_cached(sql).await.map_err(failure) };
        let (fire, insert_rows, notify, insert_keys) = tokio::try_join!(
            prepared("UPDATE webhooks SET fired = true WHERE id = ANY($1)"),
            // Events, dispatches and their outbox rows in one statement.
            prepared(
                "WITH e AS (
                    INSERT INTO events (id, user_id, created_ms, idempotency_key, record)
                    SELECT * FROM unnest($13::text[], $14::text[], $15::int8[], $16::text[],
                        $17::bytea[])),
                 d AS (
                    INSERT INTO dispatches (id, user_id, webhook_id, created_ms, event_type,
                        status, request, state, next_due_ms, finished_ms, target, shard)
                    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[],
                        $5::int2[], $6::int2[], $7::bytea[], $8::bytea[], $9::int8[], $10::int8[],
                        $11::text[], $12::int2[])
                    RETURNING id, shard, target, next_due_ms, user_id, status)
                 INSERT INTO outbox SELECT id, shard, target, coalesce(next_due_ms, 0), user_id
                    FROM d WHERE status = 0"
            ),
            prepared("SELECT pg_notify($1, $2)"),
            prepared(
                "INSERT INTO event_idem (user_id, key, event_id, answer)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[])
                 ON CONFLICT DO NOTHING"
            ),
        )?;
        let fired: Vec<&String> = self.fired.iter().collect();
        let shards = self.work_shards();
        let woken = listen::payload(node_id, &shards);
        type Params<'a> = [&'a (dyn ToSql + Sync)];
        let fire_params: &Params = &[&fired];
        let row_params: &Params = &[
            &self.d_id,
            &self.d_user,
            &self.d_webhook,
            &self.d_created,
            &self.d_type,
            &self.d_status,
            &self.d_request,
            &self.d_state,
            &self.d_due,
            &self.d_finished,
            &self.d_target,
            &self.d_shard,
            &self.e_id,
            &self.e_user,
            &self.e_created,
            &self.e_key,
            &self.e_record,
        ];
        let notify_params: &Params = &[&listen::CHANNEL, &woken];
        let key_params: &Params = &[&self.k_user, &self.k_key, &self.k_event, &self.k_answer];
        let run = |skip: bool, stmt, params| async move {
            if skip { Ok(0) } else { tx.execute(stmt, params).await.map_err(failure) }
        };
        let (_, _, _, inserted) = tokio::try_join!(
            run(fired.is_empty(), &fire, fire_params),
            run(self.e_id.is_empty() && self.d_id.is_empty(), &insert_rows, row_params),
            run(shards.is_empty(), &notify, notify_params),
            run(self.k_key.is_empty(), &insert_keys, key_params),
        )?;
        if inserted != self.k_key.len() as u64 {
            // Another node stored one of these keys after this group looked: the next
            // attempt answers it with that node's answer.
            return Err(Failure::Retry("an idempotency key was taken meanwhile".into()));
        }
        Ok(())
    }
}
