//! The writer's operations, each applied to one group's `Batch`: a rule an op breaks is its
//! own answer (the inner `Err`); a storage error (the outer one) aborts the whole group.

use std::sync::Arc;

use redb::ReadableTable;

use super::batch::Batch;
use super::error::storage;
use super::index::IndexChange;
use super::records::StatsState;
use super::redelivery;
use super::schema::*;
use super::writer::SWEEP_CHUNK_DISPATCHES;
use super::{Created, EventAnswer, JobReport, StoreError, records};
use crate::model::{
    Call, Decision, DispatchStatus, EventType, SigningKeys, Webhook, WebhookPatch, WebhookStats,
};
use crate::store::EncodedEvent;

/// Outer `Err`: storage failure (aborts the batch). Inner: this op's own answer.
pub(super) type OpResult<T> = Result<Result<T, StoreError>, StoreError>;

pub(super) fn create(
    b: &mut Batch<'_, '_>,
    w: Webhook,
    signing_key: Vec<u8>,
    webhooks_max: usize,
) -> OpResult<Created> {
    if let Some(key) = &w.idempotency_key {
        let existing = b
            .webhook_idem
            .get((w.user_id.as_str(), key.as_str()))
            .map_err(storage)?
            .map(|v| v.value().to_string());
        if let Some(id) = existing {
            let Some((webhook, stats)) = b.load(&id)? else {
                return Err(StoreError::Corrupt(format!("idempotency key points at missing {id}")));
            };
            return Ok(Ok(Created { webhook, stats, replayed: true }));
        }
    }
    let delta = b.user_webhooks_delta.get(&w.user_id).copied().unwrap_or(0);
    let count = b.user_webhooks.get(&w.user_id).copied().unwrap_or(0).saturating_add_signed(delta);
    if count >= webhooks_max {
        return Ok(Err(StoreError::TooManyWebhooks(webhooks_max)));
    }
    *b.user_webhooks_delta.entry(w.user_id.clone()).or_default() += 1;
    if let Some(key) = &w.idempotency_key {
        b.webhook_idem
            .insert((w.user_id.as_str(), key.as_str()), w.id.as_str())
            .map_err(storage)?;
    }
    let bytes = records::encode_webhook(&w)?;
    debug_assert!(records::decode_webhook(&bytes).is_ok_and(|d| d == w));
    b.webhooks.insert(w.id.as_str(), bytes.as_slice()).map_err(storage)?;
    let keys = records::encode_signing_keys(&SigningKeys { current: signing_key, previous: None })?;
    b.webhook_secrets.insert(w.id.as_str(), keys.as_slice()).map_err(storage)?;
    b.webhooks_by_user
        .insert((w.user_id.as_str(), w.created_ms, w.id.as_str()), ())
        .map_err(storage)?;
    b.index_condition(&w, true)?;
    if w.is_enabled {
        b.index_changes.push(IndexChange::Add(Arc::new(w.clone())));
    }
    b.stats.insert(w.id.clone(), Some((StatsState::default(), true)));
    Ok(Ok(Created { webhook: w, stats: WebhookStats::default(), replayed: false }))
}

pub(super) fn update(
    b: &mut Batch<'_, '_>,
    user_id: &str,
    id: &str,
    patch: &WebhookPatch,
    now_ms: u64,
) -> OpResult<(Webhook, WebhookStats)> {
    let Some((old, stats)) = b.load(id)? else { return Ok(Err(StoreError::NotFound)) };
    if old.user_id != user_id {
        return Ok(Err(StoreError::NotFound));
    }
    let new = match old.patched(patch, now_ms) {
        Ok(w) => w,
        Err(e) => return Ok(Err(StoreError::Invalid(e))),
    };
    if new.condition != old.condition {
        b.index_condition(&old, false)?;
        b.index_condition(&new, true)?;
    }
    let bytes = records::encode_webhook(&new)?;
    b.webhooks.insert(id, bytes.as_slice()).map_err(storage)?;
    b.index_changes.push(IndexChange::removing(&old));
    // A fired ad-hoc webhook stays out of the index: it never fires again; nor does a
    // disabled one until it is enabled again.
    if !new.is_enabled {
        b.disabled.push(id.to_string());
        return Ok(Ok((new, stats)));
    }
    // Enabled again within this group: events after this op match it.
    b.disabled.retain(|d| d != id);
    if !(new.is_ad_hoc && b.webhook_fired.get(id).map_err(storage)?.is_some()) {
        b.index_changes.push(IndexChange::Add(Arc::new(new.clone())));
    }
    Ok(Ok((new, stats)))
}

pub(super) fn delete(b: &mut Batch<'_, '_>, user_id: &str, id: &str, now_ms: u64) -> OpResult<()> {
    let Some((w, _)) = b.load(id)? else { return Ok(Err(StoreError::NotFound)) };
    if w.user_id != user_id {
        return Ok(Err(StoreError::NotFound));
    }
    b.webhooks.remove(id).map_err(storage)?;
    b.webhook_secrets.remove(id).map_err(storage)?;
    *b.user_webhooks_delta.entry(user_id.to_string()).or_default() -= 1;
    b.webhook_stats.remove(id).map_err(storage)?;
    b.stats.insert(id.to_string(), None);
    b.webhooks_by_user.remove((user_id, w.created_ms, id)).map_err(storage)?;
    b.index_condition(&w, false)?;
    b.index_changes.push(IndexChange::removing(&w));
    b.webhook_fired.remove(id).map_err(storage)?;
    // Its dispatches stay readable by id; the ACTIVE ones end: up to a chunk now (the
    // unfolded ones first, then its list), the rest in later groups (`sweep_chunk`), so a
    // webhook with a long history never holds the writer.
    let waiting = b.waiting_ids(id);
    b.deleted.push(id.to_string());
    let mut budget = SWEEP_CHUNK_DISPATCHES;
    let inline = waiting.len().min(budget);
    for dispatch_id in &waiting[..inline] {
        b.end_removed(dispatch_id, now_ms)?;
    }
    budget -= inline;
    if waiting.len() > inline {
        // The rest are listed by this group's fold, where the sweep finds them.
        b.fold_now = true;
    }
    let listed_done = b.sweep(id, now_ms, &mut budget)?;
    if !(listed_done && waiting.len() == inline) {
        b.webhook_sweeps.insert(id, now_ms).map_err(storage)?;
        b.new_sweeps.push((id.to_string(), now_ms));
    }
    if let Some(key) = &w.idempotency_key {
        // The key is free again: Apify dedupes only against the user's existing webhooks.
        b.webhook_idem.remove((user_id, key.as_str())).map_err(storage)?;
    }
    Ok(Ok(()))
}

/// An ended dispatch of the user's becomes ACTIVE again, due now, with its calls kept and its
/// retry schedule counted from here. Its listing for retention stays (retention skips a
/// dispatch that is ACTIVE, or ended after it was listed); it is listed again when it ends.
pub(super) fn redeliver(
    b: &mut Batch<'_, '_>,
    user_id: &str,
    dispatch_id: &str,
    now_ms: u64,
) -> OpResult<()> {
    let owner = match b.dispatches.get(dispatch_id).map_err(storage)? {
        Some(v) => Some(records::dispatch_user(v.value())?),
        None => None,
    };
    if owner.as_deref() != Some(user_id) {
        return Ok(Err(StoreError::NotFound));
    }
    let Some(s) = b.load_state(dispatch_id)? else { return Ok(Err(StoreError::NotFound)) };
    if s.status == DispatchStatus::Active {
        return Ok(Err(crate::store::error::refused_active()));
    }
    if b.deleted.contains(&s.webhook_id) || b.stats(&s.webhook_id)?.is_none() {
        return Ok(Err(crate::store::error::refused_deleted()));
    }
    redelivery::reactivate(b, dispatch_id, s, now_ms)?;
    Ok(Ok(()))
}

pub(super) fn rotate_signing_key(
    b: &mut Batch<'_, '_>,
    user_id: &str,
    id: &str,
    key: Vec<u8>,
    now_ms: u64,
    overlap_ms: u64,
) -> OpResult<SigningKeys> {
    let owned = match b.webhooks.get(id).map_err(storage)? {
        Some(bytes) => records::decode_webhook(bytes.value())?.user_id == user_id,
        None => false,
    };
    if !owned {
        return Ok(Err(StoreError::NotFound));
    }
    let Some(old) = b.webhook_secrets.get(id).map_err(storage)?.map(|v| v.value().to_vec()) else {
        return Err(StoreError::Corrupt(format!("webhook {id} has no signing keys")));
    };
    let keys = records::decode_signing_keys(&old)?.rotated(key, now_ms, overlap_ms);
    let bytes = records::encode_signing_keys(&keys)?;
    b.webhook_secrets.insert(id, bytes.as_slice()).map_err(storage)?;
    Ok(Ok(keys))
}

pub(super) fn ingest(
    b: &mut Batch<'_, '_>,
    events: Vec<EncodedEvent>,
    job: Option<&JobReport>,
) -> OpResult<Vec<EventAnswer>> {
    if let Some(job) = job {
        let key = (job.user_id.as_str(), job_code(job.kind), job.id.as_str());
        let current = match b.jobs.get(key).map_err(storage)? {
            Some(v) => records::decode_job(v.value())?.status,
            None => None,
        };
        if current != job.expected_status {
            return Ok(Err(StoreError::Conflict));
        }
        let record = records::encode_job(&super::StoredJob {
            status: Some(job.status.clone()),
            object_json: job.object_json.clone(),
        })?;
        b.jobs.insert(key, record.as_slice()).map_err(storage)?;
    }
    let mut answers = Vec::with_capacity(events.len());
    for EncodedEvent { event, dispatches } in events {
        if let Some(key) = &event.idempotency_key {
            let first =
                b.event_idem.get((event.user_id.as_str(), key.as_str())).map_err(storage)?;
            if let Some(v) = first {
                answers.push(records::decode_event_answer(v.value())?);
                continue;
            }
        }
        let mut ids = Vec::with_capacity(dispatches.len());
        for (d, encoded) in event.dispatches.iter().zip(&dispatches) {
            // Deleted since it was matched: the event no longer reaches it. (It is the user's:
            // it was matched through the user's own index, and ids are never reused.)
            // Listed in the match index under the condition it was matched by: it exists (unless
            // deleted earlier in this group). Otherwise ask its stats record, which every
            // existing webhook has (a fired ad-hoc one is not listed; an update may have moved it).
            let listed = b.index.has(&d.user_id, &d.condition, &d.webhook_id);
            if b.deleted.contains(&d.webhook_id) || (!listed && b.stats(&d.webhook_id)?.is_none()) {
                continue;
            }
            // Disabled since it was matched (the test route calls a disabled one too).
            if d.event_type != EventType::Test
                && (b.disabled.contains(&d.webhook_id)
                    || (!listed && b.is_disabled(&d.webhook_id)?))
            {
                continue;
            }
            if d.fires_ad_hoc() {
                if b.webhook_fired.insert(d.webhook_id.as_str(), ()).map_err(storage)?.is_some() {
                    continue; // an ad-hoc webhook fires once
                }
                // Under its condition as stored now (an update may have moved it since).
                if let Some((w, _)) = b.load(&d.webhook_id)? {
                    b.index_changes.push(IndexChange::removing(&w));
                }
            }
            let id = d.id.as_str();
            b.dispatches.insert(id, encoded.request.as_slice()).map_err(storage)?;
            b.dispatch_states.insert(id, encoded.state.as_slice()).map_err(storage)?;
            b.index_new(d.status, d.event_type, id);
            if d.status == DispatchStatus::Active
                && let Some(due) = d.next_due_ms
            {
                b.enqueue(id, &encoded.target, due)?;
            }
            if d.status != DispatchStatus::Active {
                b.mark_finished(id, d.finished_ms.unwrap_or(d.created_ms), d.status)?;
            }
            // The webhook's stats and list entry are folded in later (pending.rs).
            b.webhook_pending.insert(b.next_seq, (d.webhook_id.as_str(), id)).map_err(storage)?;
            b.next_seq += 1;
            b.new_pending.push((d.webhook_id.clone(), d.id.clone(), d.user_id.clone()));
            ids.push(d.id.clone());
        }
        let a = EventAnswer {
            id: event.id.clone(),
            created_ms: event.created_ms,
            event_type: event.event_type.as_str().to_string(),
            dispatch_ids: ids,
        };
        if let Some(record) = &event.record_json {
            let stored = records::encode_event(
                &event.user_id,
                event.idempotency_key.as_deref(),
                &a.dispatch_ids,
                record,
            )?;
            b.events
                .insert((event.created_ms, event.id.as_str()), stored.as_slice())
                .map_err(storage)?;
        }
        b.events_stored += 1;
        if let Some(key) = &event.idempotency_key {
            let bytes = records::encode_event_answer(&a)?;
            b.event_idem
                .insert((event.user_id.as_str(), key.as_str()), bytes.as_slice())
                .map_err(storage)?;
        }
        answers.push(a);
    }
    Ok(Ok(answers))
}

pub(super) fn record_call(
    b: &mut Batch<'_, '_>,
    dispatch_id: &str,
    call: Call,
    decision: Decision,
) -> OpResult<()> {
    let Some(mut s) = b.load_state(dispatch_id)? else { return Ok(Ok(())) };
    let finished_ms = call.finished_ms;
    let was = s.status;
    s.calls.push(call);
    // A dispatch that ended while its call was in flight (its webhook was deleted) keeps
    // its end: the call is recorded, nothing is scheduled.
    if s.status == DispatchStatus::Active {
        b.unqueue(dispatch_id, &s)?;
        match decision {
            Decision::RetryAt(due) => {
                s.next_due_ms = Some(due);
                b.enqueue(dispatch_id, &s.target.clone(), due)?;
            }
            Decision::Succeeded | Decision::Failed => {
                s.status = if decision == Decision::Succeeded {
                    DispatchStatus::Succeeded
                } else {
                    DispatchStatus::Failed
                };
                s.next_due_ms = None;
                s.finished_ms = Some(finished_ms);
                b.mark_finished(dispatch_id, finished_ms, s.status)?;
            }
        }
    }
    b.save_state(dispatch_id, &s, was)?;
    Ok(Ok(()))
}
