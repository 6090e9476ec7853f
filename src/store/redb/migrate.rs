//! Schema migrations, run at open inside the transaction that checks the version: a store of
//! an older schema is brought to `SCHEMA_VERSION` in place (one step per version), or the open
//! fails and the file is untouched.

use redb::{ReadableTable, WriteTransaction};

use super::StoreError;
use super::error::storage;
use super::records;
use super::schema::*;
use crate::model::DispatchStatus;

/// The oldest schema this hookd migrates from.
pub(super) const OLDEST_MIGRATED: u64 = 4;

/// Migrates from `from` to `SCHEMA_VERSION` within `tx`.
pub(super) fn migrate(tx: &WriteTransaction, from: u64) -> Result<(), StoreError> {
    let mut version = from;
    while version < SCHEMA_VERSION {
        match version {
            4 => v4_to_v5(tx)?,
            5 => v5_to_v6(tx)?,
            6 => v6_to_v7(tx)?,
            7 => v7_to_v8(tx)?,
            8 => v8_to_v9(tx)?,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "no migration from schema version {other}"
                )));
            }
        }
        version += 1;
        tracing::info!(schema_version = version, "migrated the store");
    }
    Ok(())
}

/// Schema 5 adds retention: `dispatches_finished` lists every ended dispatch by its end
/// time, and an event record carries its idempotency key (so the key expires with it).
fn v4_to_v5(tx: &WriteTransaction) -> Result<(), StoreError> {
    let states = tx.open_table(DISPATCH_STATES).map_err(storage)?;
    let mut finished = tx.open_table(DISPATCHES_FINISHED).map_err(storage)?;
    for entry in states.iter().map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        let s = records::decode_dispatch_state(v.value())?;
        if s.status != DispatchStatus::Active {
            let ended_ms = s.finished_ms.or(s.calls.last().map(|c| c.finished_ms)).unwrap_or(0);
            finished.insert((ended_ms, k.value()), ()).map_err(storage)?;
        }
    }
    let idem = tx.open_table(EVENT_IDEM).map_err(storage)?;
    let mut events = tx.open_table(EVENTS).map_err(storage)?;
    for entry in idem.iter().map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        let (user, key) = k.value();
        let answer: super::EventAnswer = serde_json::from_slice(v.value())
            .map_err(|e| StoreError::Corrupt(format!("event answer: {e}")))?;
        let event_key = (answer.created_ms, answer.id.as_str());
        let rewritten = match events.get(event_key).map_err(storage)? {
            Some(old) => {
                let header = records::decode_event_header(old.value())?;
                let json = records::event_json(old.value())?;
                Some(records::encode_event(user, Some(key), &header.dispatch_ids, json)?)
            }
            None => None,
        };
        if let Some(bytes) = rewritten {
            events.insert(event_key, bytes.as_slice()).map_err(storage)?;
        }
    }
    Ok(())
}

/// Dispatches one migrated `finished_groups` entry lists at most.
const MIGRATED_GROUP_IDS_MAX: usize = 512;

/// Schema 6 lists ended dispatches a group at a time (`finished_groups`) instead of one key
/// each: the schema-5 keys, in end-time order, become groups of up to 512.
fn v5_to_v6(tx: &WriteTransaction) -> Result<(), StoreError> {
    {
        let old = tx.open_table(DISPATCHES_FINISHED).map_err(storage)?;
        let mut groups = tx.open_table(FINISHED_GROUPS).map_err(storage)?;
        let mut ids: Vec<String> = Vec::with_capacity(MIGRATED_GROUP_IDS_MAX);
        let mut latest_ms = 0;
        for entry in old.iter().map_err(storage)? {
            let (k, _) = entry.map_err(storage)?;
            let (ended_ms, id) = k.value();
            ids.push(id.to_string());
            latest_ms = ended_ms;
            if ids.len() == MIGRATED_GROUP_IDS_MAX {
                ids.sort_unstable();
                super::batch::put_finished_group(&mut groups, latest_ms, &ids)?;
                ids.clear();
            }
        }
        ids.sort_unstable();
        super::batch::put_finished_group(&mut groups, latest_ms, &ids)?;
    }
    tx.delete_table(DISPATCHES_FINISHED).map_err(storage)?;
    Ok(())
}

/// Schema 7 signs deliveries: every webhook gets a signing key (`webhook_secrets`).
fn v6_to_v7(tx: &WriteTransaction) -> Result<(), StoreError> {
    let webhooks = tx.open_table(WEBHOOKS).map_err(storage)?;
    let mut secrets = tx.open_table(WEBHOOK_SECRETS).map_err(storage)?;
    for entry in webhooks.iter().map_err(storage)? {
        let (k, _) = entry.map_err(storage)?;
        let id = k.value();
        if secrets.get(id).map_err(storage)?.is_none() {
            let keys = crate::model::SigningKeys {
                current: crate::store::new_signing_key()?,
                previous: None,
            };
            secrets.insert(id, records::encode_signing_keys(&keys)?.as_slice()).map_err(storage)?;
        }
    }
    Ok(())
}

/// Schema 8 lists dispatches by status and event type: every state record gains its owner and
/// event type (from its request record), the status indexes and their counts are built from
/// the folded dispatches (the fold lists the waiting ones), and the plain lists they replace
/// are dropped.
fn v7_to_v8(tx: &WriteTransaction) -> Result<(), StoreError> {
    use std::collections::HashMap;
    let requests = tx.open_table(DISPATCHES).map_err(storage)?;
    let mut states = tx.open_table(DISPATCH_STATES).map_err(storage)?;
    let by_webhook = tx.open_table(DISPATCHES_BY_WEBHOOK_V7).map_err(storage)?;
    let mut by_user_status = tx.open_table(DISPATCHES_BY_USER_STATUS).map_err(storage)?;
    let mut by_webhook_status = tx.open_table(DISPATCHES_BY_WEBHOOK_STATUS).map_err(storage)?;
    let mut counts: HashMap<(String, u8, u8), u64> = HashMap::new();
    let mut listed: HashMap<String, records::StatsState> = HashMap::new();
    // The waiting ones are listed by the fold, as in every later run.
    let mut waiting = std::collections::HashSet::new();
    for entry in tx.open_table(WEBHOOK_PENDING).map_err(storage)?.iter().map_err(storage)? {
        let (_, v) = entry.map_err(storage)?;
        waiting.insert(v.value().1.to_string());
    }
    for entry in requests.iter().map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        let id = k.value();
        let Some(state) = states.get(id).map_err(storage)?.map(|s| s.value().to_vec()) else {
            continue;
        };
        let (user_id, event_type) = records::dispatch_owner(v.value())?;
        let mut s = records::decode_dispatch_state(&state)?;
        let (st, et) = (status_code(s.status), event_code(event_type));
        if !waiting.contains(id) {
            by_user_status.insert((user_id.as_str(), st, et, id), ()).map_err(storage)?;
            *counts.entry((user_id.clone(), st, et)).or_default() += 1;
        }
        let w = s.webhook_id.as_str();
        // Folded, or listed for the sweep of its deleted webhook.
        if by_webhook.get((w, id)).map_err(storage)?.is_some() {
            by_webhook_status.insert((w, st, et, id), ()).map_err(storage)?;
            listed.entry(w.to_string()).or_default().add_listed(st, et, 1)?;
        }
        s.owner = Some((user_id, event_type));
        states.insert(id, records::encode_dispatch_state(&s)?.as_slice()).map_err(storage)?;
    }
    let mut table = tx.open_table(DISPATCH_COUNTS).map_err(storage)?;
    for ((user, st, et), n) in counts {
        table.insert((user.as_str(), st, et), n).map_err(storage)?;
    }
    // A webhook's counts go in its stats record (a deleted one being swept has none).
    let mut stats = tx.open_table(WEBHOOK_STATS).map_err(storage)?;
    for (w, counted) in listed {
        let old = stats.get(w.as_str()).map_err(storage)?.map(|v| v.value().to_vec());
        if let Some(old) = old {
            let mut s = records::decode_stats(&old)?;
            s.listed = counted.listed;
            stats.insert(w.as_str(), records::encode_stats(&s)?.as_slice()).map_err(storage)?;
        }
    }
    drop((requests, states, by_webhook, by_user_status, by_webhook_status, table, stats));
    // The unfiltered lists merge the status indexes' ranges now.
    tx.delete_table(DISPATCHES_BY_USER_V7).map_err(storage)?;
    tx.delete_table(DISPATCHES_BY_WEBHOOK_V7).map_err(storage)?;
    Ok(())
}

/// Schema 9 versions the last two unversioned records: an event's answer under its
/// idempotency key (the same JSON behind a version byte) and a job's report (its status in a
/// header, so that a report's compare-and-set parses no object).
fn v8_to_v9(tx: &WriteTransaction) -> Result<(), StoreError> {
    let mut idem = tx.open_table(EVENT_IDEM).map_err(storage)?;
    let mut rewritten = Vec::new();
    for entry in idem.iter().map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        let (user, key) = k.value();
        let answer: super::EventAnswer = serde_json::from_slice(v.value())
            .map_err(|e| StoreError::Corrupt(format!("event answer: {e}")))?;
        rewritten
            .push(((user.to_string(), key.to_string()), records::encode_event_answer(&answer)?));
    }
    for ((user, key), bytes) in rewritten {
        idem.insert((user.as_str(), key.as_str()), bytes.as_slice()).map_err(storage)?;
    }
    let mut jobs = tx.open_table(JOBS).map_err(storage)?;
    let mut rewritten = Vec::new();
    for entry in jobs.iter().map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        let (user, kind, id) = k.value();
        let object_json = std::str::from_utf8(v.value())
            .map_err(|e| StoreError::Corrupt(format!("job {id}: {e}")))?
            .to_string();
        let job = super::StoredJob { status: legacy_job_status(&object_json), object_json };
        rewritten.push(((user.to_string(), kind, id.to_string()), records::encode_job(&job)?));
    }
    for ((user, kind, id), bytes) in rewritten {
        jobs.insert((user.as_str(), kind, id.as_str()), bytes.as_slice()).map_err(storage)?;
    }
    Ok(())
}

/// The `status` of a job object stored before schema 9 (a string, or none).
fn legacy_job_status(object_json: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct StatusOnly {
        #[serde(default)]
        status: Option<serde_json::Value>,
    }
    let s: StatusOnly = serde_json::from_str(object_json).ok()?;
    match s.status? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    }
}
