//! The store's reads: dispatches, webhooks, jobs and the scheduler's due work, each in one
//! short read transaction on the blocking pool (a long-lived one would pin freed pages).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use redb::{ReadableDatabase, ReadableTable};

use super::error::storage;
use super::pending::PendingInner;
use super::schema::*;
use super::*;
use crate::model::{Dispatch, JobKind, Webhook, WebhookStats};

impl RedbStore {
    pub async fn get_dispatch(
        &self,
        user_id: String,
        id: String,
    ) -> Result<Option<Dispatch>, StoreError> {
        self.read(move |rtx| {
            let requests = rtx.open_table(DISPATCHES).map_err(storage)?;
            let states = rtx.open_table(DISPATCH_STATES).map_err(storage)?;
            Ok(read_dispatch(&requests, &states, &id)?.filter(|d| d.user_id == user_id))
        })
        .await
    }

    /// A page of the user's dispatches (all, or one webhook's; those `filter` keeps) in
    /// `createdAt` order.
    pub async fn list_dispatches(
        &self,
        user_id: String,
        scope: DispatchScope,
        filter: DispatchFilter,
        page: PageRequest,
    ) -> Result<Page<Dispatch>, StoreError> {
        self.read_with_pending(move |rtx, waiting| {
            let (total, ids) = super::lists::page(rtx, waiting, &user_id, &scope, filter, page)?;
            let requests = rtx.open_table(DISPATCHES).map_err(storage)?;
            let states = rtx.open_table(DISPATCH_STATES).map_err(storage)?;
            let mut items = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(d) = read_dispatch(&requests, &states, &id)?
                    && d.user_id == user_id
                {
                    items.push(d);
                }
            }
            Ok(Page { total, items })
        })
        .await
    }

    /// One scheduler pass (see [`DuePicker`]). A target the picker gives no room is not read
    /// at all, so a dead target's backlog costs a pass one seek.
    pub async fn due_dispatches<P: DuePicker>(&self, mut picker: P) -> Result<Due, StoreError> {
        let sweeping = self.sweeping.load(Ordering::Acquire);
        self.read(move |rtx| {
            let outbox = rtx.open_table(OUTBOX).map_err(storage)?;
            let requests = rtx.open_table(DISPATCHES).map_err(storage)?;
            let states = rtx.open_table(DISPATCH_STATES).map_err(storage)?;
            let secrets = rtx.open_table(WEBHOOK_SECRETS).map_err(storage)?;
            // Deleted webhooks whose ACTIVE dispatches the writer is still ending: not called.
            let sweeps = if sweeping {
                Some(rtx.open_table(WEBHOOK_SWEEPS).map_err(storage)?)
            } else {
                None
            };
            let mut due = Due::default();
            let now_ms = picker.now_ms();
            let start = picker.start_after().map(|t| format!("{t}\u{0}")).unwrap_or_default();
            // Two sweeps: targets after `start_after`, then from the first target up to it.
            for (from, until) in [(start.clone(), None), (String::new(), Some(start))] {
                let mut next_target = from;
                loop {
                    if picker.is_full() {
                        return Ok(due);
                    }
                    let first = outbox
                        .range((next_target.as_str(), 0u64, "")..)
                        .map_err(storage)?
                        .next()
                        .transpose()
                        .map_err(storage)?;
                    let Some((key, _)) = first else { break };
                    let target = key.value().0.to_string();
                    if until.as_ref().is_some_and(|u| target >= *u) {
                        break;
                    }
                    next_target = format!("{target}\u{0}");
                    let mut room = picker.target_room(&target);
                    if room == 0 {
                        continue;
                    }
                    let lo = (target.as_str(), 0u64, "");
                    let hi = (target.as_str(), u64::MAX, ID_MAX);
                    for entry in outbox.range(lo..=hi).map_err(storage)? {
                        let (k, _) = entry.map_err(storage)?;
                        let (_, due_ms, id) = k.value();
                        if due_ms > now_ms {
                            due.next_due_ms =
                                Some(due.next_due_ms.map_or(due_ms, |n| n.min(due_ms)));
                            break;
                        }
                        if picker.in_flight(id) {
                            continue;
                        }
                        if room == 0 || picker.is_full() {
                            break;
                        }
                        let Some(d) = read_dispatch(&requests, &states, id)? else {
                            return Err(StoreError::Corrupt(format!("outbox names missing {id}")));
                        };
                        let swept = match &sweeps {
                            Some(t) => t.get(d.webhook_id.as_str()).map_err(storage)?.is_some(),
                            None => false,
                        };
                        // A swept one ends within moments; the target's other work waits.
                        if swept || !picker.admit(&d.user_id) {
                            break;
                        }
                        if picker.wants_signing_keys()
                            && !due.signing.contains_key(&d.webhook_id)
                            && let Some(v) = secrets.get(d.webhook_id.as_str()).map_err(storage)?
                        {
                            let keys = records::decode_signing_keys(v.value())?;
                            due.signing.insert(d.webhook_id.clone(), Arc::new(keys));
                        }
                        due.dispatches.push((target.clone(), d));
                        room -= 1;
                    }
                }
            }
            Ok(due)
        })
        .await
    }

    /// Every outbox key, in order: (target, due_ms, dispatch id). A full scan, for checks and
    /// tools (the simulation checks it after every step), not for the hot path.
    pub async fn outbox_keys(&self) -> Result<Vec<(String, u64, String)>, StoreError> {
        self.read(|rtx| {
            let outbox = rtx.open_table(OUTBOX).map_err(storage)?;
            let mut keys = Vec::new();
            for entry in outbox.iter().map_err(storage)? {
                let (k, _) = entry.map_err(storage)?;
                let (target, due, id) = k.value();
                keys.push((target.to_string(), due, id.to_string()));
            }
            Ok(keys)
        })
        .await
    }

    /// Every dispatch, in id order. A full scan, for checks and tools, not for the hot path.
    pub async fn all_dispatches(&self) -> Result<Vec<Dispatch>, StoreError> {
        self.read(|rtx| {
            let requests = rtx.open_table(DISPATCHES).map_err(storage)?;
            let states = rtx.open_table(DISPATCH_STATES).map_err(storage)?;
            let mut out = Vec::new();
            for entry in requests.iter().map_err(storage)? {
                let (k, _) = entry.map_err(storage)?;
                if let Some(d) = read_dispatch(&requests, &states, k.value())? {
                    out.push(d);
                }
            }
            Ok(out)
        })
        .await
    }

    /// The latest reported run or build object, as stored.
    pub async fn get_job(
        &self,
        user_id: String,
        kind: JobKind,
        id: String,
    ) -> Result<Option<StoredJob>, StoreError> {
        self.read(move |rtx| {
            let jobs = rtx.open_table(JOBS).map_err(storage)?;
            let got = jobs.get((user_id.as_str(), job_code(kind), id.as_str())).map_err(storage)?;
            got.map(|b| records::decode_job(b.value())).transpose()
        })
        .await
    }

    pub(super) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            // The read transaction lives only for this closure: a long-lived one would pin
            // freed pages and grow the file.
            let rtx = db.begin_read().map_err(storage)?;
            f(&rtx)
        })
        .await
        .map_err(|e| StoreError::Storage(format!("read task: {e}")))?
    }

    /// Like `read`, with the mirror of dispatches not yet folded, consistent with the read
    /// transaction (pending.rs).
    pub(super) async fn read_with_pending<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction, &PendingInner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        let pending = self.pending.clone();
        tokio::task::spawn_blocking(move || {
            let waiting = pending.read();
            let rtx = db.begin_read().map_err(storage)?;
            f(&rtx, &waiting)
        })
        .await
        .map_err(|e| StoreError::Storage(format!("read task: {e}")))?
    }

    /// The user's webhook `id`; another user's webhook is `None` too.
    pub async fn get_webhook(
        &self,
        user_id: String,
        id: String,
    ) -> Result<Option<(Webhook, WebhookStats)>, StoreError> {
        self.read_with_pending(move |rtx, waiting| {
            let tables = WebhookTables::open(rtx)?;
            match tables.read(&id, waiting)? {
                Some((w, s)) if w.user_id == user_id => Ok(Some((w, s))),
                _ => Ok(None),
            }
        })
        .await
    }

    /// A page of the user's webhooks in `createdAt` order.
    pub async fn list_webhooks(
        &self,
        user_id: String,
        scope: WebhookScope,
        page: PageRequest,
    ) -> Result<Page<(Webhook, WebhookStats)>, StoreError> {
        self.read_with_pending(move |rtx, waiting| {
            let tables = WebhookTables::open(rtx)?;
            let ids: Vec<String>;
            let total: u64;
            match &scope {
                WebhookScope::All => {
                    let index = rtx.open_table(WEBHOOKS_BY_USER).map_err(storage)?;
                    let lo = (user_id.as_str(), 0u64, "");
                    let hi = (user_id.as_str(), u64::MAX, ID_MAX);
                    total = index.range(lo..=hi).map_err(storage)?.count() as u64;
                    let range = index.range(lo..=hi).map_err(storage)?;
                    ids = page_ids(range, page, |k| k.2.to_string())?;
                }
                WebhookScope::Condition(kind, value) => {
                    let index = rtx.open_table(WEBHOOK_MATCH).map_err(storage)?;
                    let code = kind_code(*kind);
                    let lo = (user_id.as_str(), code, value.as_str(), 0u64, "");
                    let hi = (user_id.as_str(), code, value.as_str(), u64::MAX, ID_MAX);
                    total = index.range(lo..=hi).map_err(storage)?.count() as u64;
                    let range = index.range(lo..=hi).map_err(storage)?;
                    ids = page_ids(range, page, |k| k.4.to_string())?;
                }
            }
            let mut items = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(pair) = tables.read(&id, waiting)? {
                    items.push(pair);
                }
            }
            Ok(Page { total, items })
        })
        .await
    }
}

/// What `id_of` picks from each key of one page of an index range.
pub(super) fn page_ids<K: redb::Key + 'static, T>(
    range: redb::Range<'_, K, ()>,
    page: PageRequest,
    id_of: impl Fn(K::SelfType<'_>) -> T,
) -> Result<Vec<T>, StoreError> {
    let offset = usize::try_from(page.offset).unwrap_or(usize::MAX);
    let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
    let mut out = Vec::new();
    let mut take = |entry: Result<
        (redb::AccessGuard<'_, K>, redb::AccessGuard<'_, ()>),
        redb::StorageError,
    >|
     -> Result<(), StoreError> {
        let (k, _) = entry.map_err(storage)?;
        out.push(id_of(k.value()));
        Ok(())
    };
    if page.desc {
        for e in range.rev().skip(offset).take(limit) {
            take(e)?;
        }
    } else {
        for e in range.skip(offset).take(limit) {
            take(e)?;
        }
    }
    Ok(out)
}

pub(super) fn read_dispatch(
    requests: &impl ReadableTable<&'static str, &'static [u8]>,
    states: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<Dispatch>, StoreError> {
    let Some(request) = requests.get(id).map_err(storage)? else {
        return Ok(None);
    };
    let Some(state) = states.get(id).map_err(storage)? else {
        return Err(StoreError::Corrupt(format!("dispatch {id} has no state")));
    };
    records::decode_dispatch(request.value(), state.value()).map(Some)
}

/// A webhook's stats from its folded record, its dispatches not yet folded (oldest first),
/// and the state of its latest dispatch (`lastDispatch`).
pub(super) fn webhook_stats(
    folded: &records::StatsState,
    waiting: &[String],
    state_of: impl Fn(&str) -> Result<Option<records::DispatchState>, StoreError>,
) -> Result<WebhookStats, StoreError> {
    let last_id = waiting.last().or(folded.last_id.as_ref());
    let last_dispatch = match last_id {
        Some(id) => match state_of(id)? {
            Some(s) => {
                Some(crate::model::LastDispatch { status: s.status, finished_ms: s.finished_ms })
            }
            // Deleted by retention: its end was copied into the stats.
            None if waiting.is_empty() => folded
                .last_ended
                .map(|(status, finished_ms)| crate::model::LastDispatch { status, finished_ms }),
            None => None,
        },
        None => None,
    };
    Ok(WebhookStats { total_dispatches: folded.total + waiting.len() as u64, last_dispatch })
}

/// The tables a webhook is read from.
struct WebhookTables {
    webhooks: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    stats: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    states: redb::ReadOnlyTable<&'static str, &'static [u8]>,
}

impl WebhookTables {
    fn open(rtx: &redb::ReadTransaction) -> Result<WebhookTables, StoreError> {
        Ok(WebhookTables {
            webhooks: rtx.open_table(WEBHOOKS).map_err(storage)?,
            stats: rtx.open_table(WEBHOOK_STATS).map_err(storage)?,
            states: rtx.open_table(DISPATCH_STATES).map_err(storage)?,
        })
    }

    fn read(
        &self,
        id: &str,
        waiting: &PendingInner,
    ) -> Result<Option<(Webhook, WebhookStats)>, StoreError> {
        let Some(bytes) = self.webhooks.get(id).map_err(storage)? else {
            return Ok(None);
        };
        let w = records::decode_webhook(bytes.value())?;
        let folded = match self.stats.get(id).map_err(storage)? {
            Some(b) => records::decode_stats(b.value())?,
            None => records::StatsState::default(),
        };
        let stats = webhook_stats(&folded, waiting.ids(id), |d| {
            let got = self.states.get(d).map_err(storage)?;
            got.map(|b| records::decode_dispatch_state(b.value())).transpose()
        })?;
        Ok(Some((w, stats)))
    }
}
