//! Redelivering a webhook's ended dispatches in bulk (`POST /v2/webhooks/{id}/redeliver`): a
//! durable job per webhook (table `redeliveries`) of which the writer runs a chunk per group
//! commit, so one request never holds the writer for long, and a crash resumes the job where
//! the last commit left it: a dispatch made ACTIVE and the job's cursor past it are written in
//! the same commit, so none is sent again by the job and none is skipped.

use std::ops::Bound;

use redb::{ReadableDatabase, ReadableTable};

use serde::{Deserialize, Serialize};

use super::StoreError;
use super::batch::Batch;
use super::error::storage;
use super::records::{self, DispatchState};
use super::schema::{EVENT_CODE_MAX, REDELIVERIES, status_code};
use crate::model::DispatchStatus;
use crate::store::window_ids;

/// Dispatches looked at per group commit, over all jobs: the writer time a group spends here
/// is bounded however many jobs run and however long their windows are.
pub(super) const CHUNK_DISPATCHES: usize = 256;

/// A bulk redelivery under way.
#[derive(Debug, Clone)]
pub struct Redelivery {
    pub webhook_id: String,
    pub user_id: String,
    /// Dispatches in this status are made ACTIVE again.
    pub status: DispatchStatus,
    /// The window, as dispatch ids (which begin with their creation time).
    pub from_id: String,
    pub until_id: String,
    /// The last id looked at, once a chunk ran.
    pub after_id: Option<String>,
    /// When the redelivered dispatches are due.
    pub due_ms: u64,
    /// How many were made ACTIVE so far.
    pub count: u64,
}

/// Makes an ended dispatch ACTIVE again, due at `due_ms`, its schedule restarted and its calls
/// kept; the same for a single redelivery and a bulk one.
pub(super) fn reactivate(
    b: &mut Batch<'_, '_>,
    dispatch_id: &str,
    mut s: DispatchState,
    due_ms: u64,
) -> Result<(), StoreError> {
    let was = s.status;
    s.reactivate(due_ms);
    b.enqueue(dispatch_id, &s.target.clone(), due_ms)?;
    b.save_state(dispatch_id, &s, was)
}

impl Redelivery {
    /// A job not yet started: the user's dispatches of the webhook in `status` created within
    /// `(since_ms, until_ms)`, due at `now_ms`.
    pub(super) fn new(
        user_id: String,
        webhook_id: String,
        status: DispatchStatus,
        (since_ms, until_ms): (u64, u64),
        now_ms: u64,
    ) -> Redelivery {
        let (from_id, until_id) = window_ids(since_ms, until_ms);
        Redelivery {
            webhook_id,
            user_id,
            status,
            from_id,
            until_id,
            after_id: None,
            due_ms: now_ms,
            count: 0,
        }
    }
}

/// Records a new job (its chunks run from the next group on), or says why not: the user has
/// no such webhook (`NotFound`), or a job for it runs or is `starting` in this group
/// (`Refused`). Outer `Err`: storage.
pub(super) fn begin(
    b: &mut Batch<'_, '_>,
    job: Redelivery,
    starting: bool,
) -> Result<Result<Redelivery, StoreError>, StoreError> {
    let w = job.webhook_id.as_str();
    let owned = match b.webhooks.get(w).map_err(storage)? {
        Some(bytes) => records::decode_webhook(bytes.value())?.user_id == job.user_id,
        None => false,
    };
    if !owned || b.deleted.iter().any(|d| d == w) {
        return Ok(Err(StoreError::NotFound));
    }
    if starting || b.redeliveries.get(w).map_err(storage)?.is_some() {
        return Ok(Err(StoreError::Refused(
            "A redelivery of this webhook's dispatches is under way; retry once it ends.".into(),
        )));
    }
    let bytes = encode_redelivery(&job)?;
    b.redeliveries.insert(w, bytes.as_slice()).map_err(storage)?;
    // The job walks the webhook's folded list: fold the waiting dispatches into it now.
    b.fold_now = true;
    Ok(Ok(job))
}

/// Runs a chunk of the jobs: each gets an equal share of the chunk (at least one dispatch), in
/// turn from where the last chunk stopped, so a small job started behind a large one ends
/// within a few groups instead of after it. Returns the jobs that ended (their record
/// deleted), with their counts.
pub(super) fn chunk(
    b: &mut Batch<'_, '_>,
    jobs: &mut Vec<Redelivery>,
) -> Result<Vec<Redelivery>, StoreError> {
    let share = (CHUNK_DISPATCHES / jobs.len().max(1)).max(1);
    let mut budget = CHUNK_DISPATCHES;
    let mut ended = Vec::new();
    let mut i = 0;
    let mut served = 0;
    while i < jobs.len() && budget > 0 {
        let mut job_budget = share.min(budget);
        let given = job_budget;
        let done = step(b, &mut jobs[i], &mut job_budget)?;
        budget -= given - job_budget;
        if done {
            b.redeliveries.remove(jobs[i].webhook_id.as_str()).map_err(storage)?;
            ended.push(jobs.remove(i));
        } else {
            let bytes = encode_redelivery(&jobs[i])?;
            b.redeliveries
                .insert(jobs[i].webhook_id.as_str(), bytes.as_slice())
                .map_err(storage)?;
            i += 1;
            served += 1;
        }
    }
    // Those not reached go first next time.
    if !jobs.is_empty() {
        let n = jobs.len();
        jobs.rotate_left(served % n);
    }
    Ok(ended)
}

/// Redelivers up to `budget` more of the job's dispatches, read from its webhook's status
/// index (so the cost is the matches', not the history's); `true` once its window is done or
/// its webhook is gone.
fn step(
    b: &mut Batch<'_, '_>,
    job: &mut Redelivery,
    budget: &mut usize,
) -> Result<bool, StoreError> {
    let w = job.webhook_id.as_str();
    if b.deleted.iter().any(|d| d == w) || b.stats(w)?.is_none() {
        return Ok(true);
    }
    let from = job.after_id.as_deref().unwrap_or(job.from_id.as_str());
    let st = status_code(job.status);
    let mut ids: Vec<String> = Vec::new();
    for et in 0..=EVENT_CODE_MAX {
        let lower = match &job.after_id {
            Some(_) => Bound::Excluded((w, st, et, from)),
            None => Bound::Included((w, st, et, from)),
        };
        let upper = Bound::Included((w, st, et, job.until_id.as_str()));
        for entry in b.by_webhook_status.range((lower, upper)).map_err(storage)?.take(*budget) {
            let (k, _) = entry.map_err(storage)?;
            ids.push(k.value().3.to_string());
        }
    }
    ids.sort_unstable();
    ids.truncate(*budget);
    let asked = *budget;
    for id in &ids {
        if let Some(s) = b.load_state(id)?
            && s.status == job.status
        {
            reactivate(b, id, s, job.due_ms)?;
            job.count += 1;
        }
    }
    *budget -= ids.len();
    job.after_id = ids.last().cloned().or(job.after_id.take());
    Ok(ids.len() < asked)
}

/// The jobs under way, oldest window first, as the last run left them.
pub(super) fn load(db: &redb::Database) -> Result<Vec<Redelivery>, StoreError> {
    let rtx = db.begin_read().map_err(storage)?;
    let table = rtx.open_table(REDELIVERIES).map_err(storage)?;
    let mut jobs = Vec::new();
    for entry in table.iter().map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        jobs.push(decode_redelivery(k.value(), v.value())?);
    }
    Ok(jobs)
}

#[derive(Serialize, Deserialize)]
struct RedeliveryV1 {
    user_id: String,
    status: String,
    /// The last dispatch id looked at; `None` before the first chunk.
    after_id: Option<String>,
    from_id: String,
    until_id: String,
    due_ms: u64,
    count: u64,
}

pub(super) fn encode_redelivery(r: &Redelivery) -> Result<Vec<u8>, StoreError> {
    records::encode_v1(&RedeliveryV1 {
        user_id: r.user_id.clone(),
        status: r.status.as_str().to_string(),
        after_id: r.after_id.clone(),
        from_id: r.from_id.clone(),
        until_id: r.until_id.clone(),
        due_ms: r.due_ms,
        count: r.count,
    })
}

pub(super) fn decode_redelivery(webhook_id: &str, bytes: &[u8]) -> Result<Redelivery, StoreError> {
    let r: RedeliveryV1 = records::decode_v1("redelivery", bytes)?;
    Ok(Redelivery {
        webhook_id: webhook_id.to_string(),
        user_id: r.user_id,
        status: records::status_of(&r.status)?,
        after_id: r.after_id,
        from_id: r.from_id,
        until_id: r.until_id,
        due_ms: r.due_ms,
        count: r.count,
    })
}
