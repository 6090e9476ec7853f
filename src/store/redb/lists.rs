//! The dispatch lists, filtered (`?status=`, `?eventType=`) or not: a page merged in id order
//! from the status indexes' ranges (status_index.rs), one per (status, event type) the filter
//! keeps, and the waiting dispatches from the mirror (pending.rs); the total from the counts.
//! The cost grows with the offset and the page, not with the history.

use redb::ReadTransaction;

use super::error::storage;
use super::pending::PendingInner;
use super::schema::*;
use super::{DispatchFilter, DispatchScope, PageRequest, StoreError, records};

type Ids<'a> = Box<dyn Iterator<Item = Result<String, StoreError>> + 'a>;

/// The total and the page's dispatch ids of the user's dispatches in `scope` that `filter`
/// keeps.
pub(super) fn page(
    rtx: &ReadTransaction,
    waiting: &PendingInner,
    user_id: &str,
    scope: &DispatchScope,
    filter: DispatchFilter,
    page: PageRequest,
) -> Result<(u64, Vec<String>), StoreError> {
    // Another user's webhook lists nothing (not even a total).
    if let DispatchScope::Webhook(w) = scope {
        let webhooks = rtx.open_table(WEBHOOKS).map_err(storage)?;
        let owned = match webhooks.get(w.as_str()).map_err(storage)? {
            Some(v) => records::decode_webhook(v.value())?.user_id == user_id,
            None => false,
        };
        if !owned {
            return Ok((0, Vec::new()));
        }
    }
    let statuses: Vec<u8> = match filter.status {
        Some(s) => vec![status_code(s)],
        None => (0..=STATUS_CODE_MAX).collect(),
    };
    let types: Vec<u8> = match filter.event_type {
        Some(t) => vec![event_code(t)],
        None => (0..=EVENT_CODE_MAX).collect(),
    };
    let keys: Vec<(u8, u8)> =
        statuses.iter().flat_map(|s| types.iter().map(move |t| (*s, *t))).collect();
    let (table, owner, waiting_ids) = match scope {
        DispatchScope::User => (DISPATCHES_BY_USER_STATUS, user_id, waiting.user_ids(user_id)),
        DispatchScope::Webhook(w) => (DISPATCHES_BY_WEBHOOK_STATUS, w.as_str(), waiting.ids(w)),
    };
    // The waiting ones, by the key the mirror holds for them.
    let mut tail: Vec<String> = waiting_ids
        .iter()
        .filter(|id| matches!(waiting.key(id), Some(Some(k)) if keys.contains(&k)))
        .cloned()
        .collect();
    tail.sort_unstable();
    let mut total = tail.len() as u64;
    match scope {
        DispatchScope::User => {
            let counts = rtx.open_table(DISPATCH_COUNTS).map_err(storage)?;
            for (st, et) in &keys {
                total += counts.get((owner, *st, *et)).map_err(storage)?.map_or(0, |v| v.value());
            }
        }
        DispatchScope::Webhook(w) => {
            let stats = rtx.open_table(WEBHOOK_STATS).map_err(storage)?;
            if let Some(v) = stats.get(w.as_str()).map_err(storage)? {
                let s = records::decode_stats(v.value())?;
                total += keys.iter().map(|(st, et)| s.listed(*st, *et)).sum::<u64>();
            }
        }
    }
    let index = rtx.open_table(table).map_err(storage)?;
    let mut streams: Vec<Ids<'_>> = Vec::with_capacity(keys.len() + 1);
    for (st, et) in keys {
        let range = index.range((owner, st, et, "")..=(owner, st, et, ID_MAX)).map_err(storage)?;
        let ids = range.map(|e| e.map(|(k, _)| k.value().3.to_string()).map_err(storage));
        streams.push(if page.desc { Box::new(ids.rev()) } else { Box::new(ids) });
    }
    if page.desc {
        tail.reverse();
    }
    streams.push(Box::new(tail.into_iter().map(Ok)));
    let offset = usize::try_from(page.offset).unwrap_or(usize::MAX);
    let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
    let merged = Merge { heads: Vec::new(), streams, desc: page.desc };
    let ids = merged.skip(offset).take(limit).collect::<Result<Vec<_>, _>>()?;
    Ok((total, ids))
}

/// Streams each in id order (descending when `desc`), with no id in two of them, merged.
struct Merge<'a> {
    /// Each stream's next id; empty until the first `next`.
    heads: Vec<Option<String>>,
    streams: Vec<Ids<'a>>,
    desc: bool,
}

impl Iterator for Merge<'_> {
    type Item = Result<String, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.heads.len() < self.streams.len() {
            for stream in &mut self.streams[self.heads.len()..] {
                match stream.next().transpose() {
                    Ok(head) => self.heads.push(head),
                    Err(e) => return Some(Err(e)),
                }
            }
        }
        let mut pick: Option<usize> = None;
        for (i, head) in self.heads.iter().enumerate() {
            let Some(id) = head else { continue };
            let better = match pick.and_then(|p| self.heads[p].as_ref()) {
                None => true,
                Some(best) => (id < best) != self.desc,
            };
            if better {
                pick = Some(i);
            }
        }
        let i = pick?;
        let next = match self.streams[i].next().transpose() {
            Ok(next) => next,
            Err(e) => return Some(Err(e)),
        };
        std::mem::replace(&mut self.heads[i], next).map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(streams: &[&[&str]], desc: bool) -> Vec<String> {
        let streams = streams
            .iter()
            .map(|s| {
                let ids: Vec<Result<String, StoreError>> =
                    s.iter().map(|id| Ok(id.to_string())).collect();
                Box::new(ids.into_iter()) as Ids<'_>
            })
            .collect();
        Merge { heads: Vec::new(), streams, desc }.collect::<Result<_, _>>().expect("no error")
    }

    #[test]
    fn streams_merge_in_id_order_both_ways() {
        assert_eq!(merged(&[&["a", "d"], &[], &["b", "c", "e"]], false), ["a", "b", "c", "d", "e"]);
        assert_eq!(merged(&[&["d", "a"], &["e", "c", "b"], &[]], true), ["e", "d", "c", "b", "a"]);
        assert!(merged(&[&[], &[]], false).is_empty());
    }
}
