//! Backups and offline checks. A backup is a new store file holding every table as one read
//! transaction saw them: a consistent snapshot taken while the daemon runs (the writer goes
//! on; the snapshot only pins the pages it reads). A check opens a copy of a file (so the file
//! itself is never repaired or migrated), verifies redb's checksums, and decodes every record
//! and the outbox's invariants.

use std::path::Path;

use redb::{
    Database, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, Value,
};

use super::error::storage;
use super::records;
use super::schema::*;
use super::{StoreError, create_private};
use crate::model::DispatchStatus;

/// Entries copied per transaction of the new file (its commits are not fsynced until the last).
const COPY_CHUNK_ENTRIES: usize = 10_000;

/// Copies every table of the snapshot `rtx` into a new store file at `path`.
pub(super) fn write_backup(rtx: &ReadTransaction, path: &Path) -> Result<u64, StoreError> {
    create_private(path)?;
    let db = Database::builder().create(path).map_err(storage)?;
    let mut entries = 0;
    entries += copy(rtx, &db, META)?;
    entries += copy(rtx, &db, WEBHOOKS)?;
    entries += copy(rtx, &db, WEBHOOKS_BY_USER)?;
    entries += copy(rtx, &db, WEBHOOK_MATCH)?;
    entries += copy(rtx, &db, WEBHOOK_IDEM)?;
    entries += copy(rtx, &db, WEBHOOK_STATS)?;
    entries += copy(rtx, &db, WEBHOOK_FIRED)?;
    entries += copy(rtx, &db, EVENTS)?;
    entries += copy(rtx, &db, EVENT_IDEM)?;
    entries += copy(rtx, &db, DISPATCHES)?;
    entries += copy(rtx, &db, DISPATCH_STATES)?;
    entries += copy(rtx, &db, OUTBOX)?;
    entries += copy(rtx, &db, WEBHOOK_PENDING)?;
    entries += copy(rtx, &db, WEBHOOK_SWEEPS)?;
    entries += copy(rtx, &db, WEBHOOK_SECRETS)?;
    entries += copy(rtx, &db, FINISHED_GROUPS)?;
    entries += copy(rtx, &db, JOBS)?;
    entries += copy(rtx, &db, REDELIVERIES)?;
    entries += copy(rtx, &db, DISPATCHES_BY_USER_STATUS)?;
    entries += copy(rtx, &db, DISPATCHES_BY_WEBHOOK_STATUS)?;
    entries += copy(rtx, &db, DISPATCH_COUNTS)?;
    // The copy was closed cleanly by definition; the last commit is durable.
    let mut tx = db.begin_write().map_err(storage)?;
    tx.set_durability(Durability::Immediate).map_err(storage)?;
    tx.open_table(META).map_err(storage)?.insert(META_CLEAN_CLOSE, 1).map_err(storage)?;
    tx.commit().map_err(storage)?;
    Ok(entries)
}

fn copy<K: Key + 'static, V: Value + 'static>(
    rtx: &ReadTransaction,
    db: &Database,
    table: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    let source = rtx.open_table(table).map_err(storage)?;
    let mut rows = source.iter().map_err(storage)?;
    let mut copied = 0;
    loop {
        let mut tx = db.begin_write().map_err(storage)?;
        tx.set_durability(Durability::None).map_err(storage)?;
        let mut n = 0;
        {
            let mut target = tx.open_table(table).map_err(storage)?;
            for row in rows.by_ref() {
                let (k, v) = row.map_err(storage)?;
                target.insert(k.value(), v.value()).map_err(storage)?;
                n += 1;
                if n == COPY_CHUNK_ENTRIES {
                    break;
                }
            }
        }
        tx.commit().map_err(storage)?;
        copied += n as u64;
        if n < COPY_CHUNK_ENTRIES {
            return Ok(copied);
        }
    }
}

/// What a check found in a store that opened.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub webhooks: u64,
    pub dispatches: u64,
    pub active: u64,
    pub events: u64,
    pub problems: Vec<String>,
}

/// Decodes every record of an open store and checks the outbox: each ACTIVE dispatch has its
/// one key, each key names an ACTIVE dispatch, each ended one is listed for retention.
pub(super) fn verify(db: &Database) -> Result<CheckReport, StoreError> {
    let rtx = db.begin_read().map_err(storage)?;
    let mut r = CheckReport::default();
    let webhooks = rtx.open_table(WEBHOOKS).map_err(storage)?;
    let secrets = rtx.open_table(WEBHOOK_SECRETS).map_err(storage)?;
    for row in webhooks.iter().map_err(storage)? {
        let (k, v) = row.map_err(storage)?;
        if let Err(e) = records::decode_webhook(v.value()) {
            r.problems.push(format!("webhook {}: {e}", k.value()));
        }
        match secrets.get(k.value()).map_err(storage)? {
            Some(s) => {
                if let Err(e) = records::decode_signing_keys(s.value()) {
                    r.problems.push(format!("webhook {}: {e}", k.value()));
                }
            }
            None => r.problems.push(format!("webhook {} has no signing keys", k.value())),
        }
        r.webhooks += 1;
    }
    let stats = rtx.open_table(WEBHOOK_STATS).map_err(storage)?;
    for row in stats.iter().map_err(storage)? {
        let (k, v) = row.map_err(storage)?;
        if let Err(e) = records::decode_stats(v.value()) {
            r.problems.push(format!("webhook stats {}: {e}", k.value()));
        }
    }
    let requests = rtx.open_table(DISPATCHES).map_err(storage)?;
    let states = rtx.open_table(DISPATCH_STATES).map_err(storage)?;
    let outbox = rtx.open_table(OUTBOX).map_err(storage)?;
    // Every id listed for retention (an offline check may hold them all in memory).
    let mut listed = std::collections::HashSet::new();
    for row in rtx.open_table(FINISHED_GROUPS).map_err(storage)?.iter().map_err(storage)? {
        let (_, v) = row.map_err(storage)?;
        listed.extend(v.value().split(|&b| b == b'\n').map(<[u8]>::to_vec));
    }
    for row in states.iter().map_err(storage)? {
        let (k, v) = row.map_err(storage)?;
        let id = k.value();
        r.dispatches += 1;
        let request = requests.get(id).map_err(storage)?;
        let decoded = match &request {
            Some(req) => records::decode_dispatch(req.value(), v.value()),
            None => Err(StoreError::Corrupt("no request record".into())),
        };
        let s = match records::decode_dispatch_state(v.value()) {
            Ok(s) => s,
            Err(e) => {
                r.problems.push(format!("dispatch {id}: {e}"));
                continue;
            }
        };
        if let Err(e) = decoded {
            r.problems.push(format!("dispatch {id}: {e}"));
        }
        if s.status == DispatchStatus::Active {
            r.active += 1;
            let keyed = match s.next_due_ms {
                Some(due) => outbox.get((s.target.as_str(), due, id)).map_err(storage)?.is_some(),
                None => false,
            };
            if !keyed {
                r.problems.push(format!("ACTIVE dispatch {id} has no outbox key"));
            }
        } else {
            if !listed.contains(id.as_bytes()) {
                r.problems.push(format!("ended dispatch {id} is not listed for retention"));
            }
        }
    }
    if outbox.len().map_err(storage)? != r.active {
        r.problems.push(format!(
            "{} outbox keys for {} ACTIVE dispatches",
            outbox.len().map_err(storage)?,
            r.active
        ));
    }
    let events = rtx.open_table(EVENTS).map_err(storage)?;
    for row in events.iter().map_err(storage)? {
        let (k, v) = row.map_err(storage)?;
        if let Err(e) = records::decode_event_header(v.value()) {
            r.problems.push(format!("event {}: {e}", k.value().1));
        }
        r.events += 1;
    }
    let answers = rtx.open_table(EVENT_IDEM).map_err(storage)?;
    for row in answers.iter().map_err(storage)? {
        let (k, v) = row.map_err(storage)?;
        if let Err(e) = records::decode_event_answer(v.value()) {
            r.problems.push(format!("idempotency key {}: {e}", k.value().1));
        }
    }
    let jobs = rtx.open_table(JOBS).map_err(storage)?;
    for row in jobs.iter().map_err(storage)? {
        let (k, v) = row.map_err(storage)?;
        if let Err(e) = records::decode_job(v.value()) {
            r.problems.push(format!("job {}: {e}", k.value().2));
        }
    }
    Ok(r)
}
