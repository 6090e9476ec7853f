//! Every table of `hookd.redb`, its key encoding, and the schema version.
//! Keys are fixed-order tuples so that range scans give pages in `createdAt` order.

use redb::TableDefinition;

pub use crate::store::codes::*;

/// Bumped on any incompatible change; a file with a newer version is refused, an older one is
/// migrated in place at open (`migrate.rs`).
pub const SCHEMA_VERSION: u64 = 9;
pub const META_SCHEMA_VERSION: &str = "schema_version";
/// 1 when the writer's last commit was the one it makes on a clean stop; 0 while running.
pub const META_CLEAN_CLOSE: &str = "clean_close";

/// name -> value (schema version).
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// webhook id -> versioned webhook record (records.rs).
pub const WEBHOOKS: TableDefinition<&str, &[u8]> = TableDefinition::new("webhooks");
/// (user, created_ms, webhook id) -> (): the user's webhooks in `createdAt` order.
pub const WEBHOOKS_BY_USER: TableDefinition<(&str, u64, &str), ()> =
    TableDefinition::new("webhooks_by_user");
/// (user, condition kind, value, created_ms, webhook id) -> (): matching and per-actor lists.
pub const WEBHOOK_MATCH: TableDefinition<(&str, u8, &str, u64, &str), ()> =
    TableDefinition::new("webhook_match");
/// (user, idempotency key) -> webhook id.
pub const WEBHOOK_IDEM: TableDefinition<(&str, &str), &str> = TableDefinition::new("webhook_idem");
/// webhook id -> versioned stats record (folded totalDispatches and the latest dispatch id).
/// Every webhook has one from its create to its delete.
pub const WEBHOOK_STATS: TableDefinition<&str, &[u8]> = TableDefinition::new("webhook_stats");

/// Upper bound for the id part of a range: ids are `[A-Za-z0-9]`, all below `~`.
pub const ID_MAX: &str = "~";

/// webhook id -> (): ad-hoc webhooks that have fired their one dispatch.
pub const WEBHOOK_FIRED: TableDefinition<&str, ()> = TableDefinition::new("webhook_fired");
/// (created_ms, event id) -> the event as accepted, with its dispatch ids. Keys grow with
/// time, so inserts append instead of touching a random leaf per event.
pub const EVENTS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("events");
/// (user, idempotency key) -> the 202 answer of the event that first used the key.
pub const EVENT_IDEM: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("event_idem");
/// dispatch id -> versioned request record (rendered body and headers, target, webhook,
/// event): written once. Ids begin with their creation time (`sys::new_time_id`), so inserts
/// append instead of touching a random leaf per dispatch, and id order is `createdAt` order.
pub const DISPATCHES: TableDefinition<&str, &[u8]> = TableDefinition::new("dispatches");
/// dispatch id -> versioned state record (status, calls, next due time): rewritten per call.
pub const DISPATCH_STATES: TableDefinition<&str, &[u8]> = TableDefinition::new("dispatch_states");
/// Schemas 4 to 7: (user, dispatch id) -> (). Read and dropped by the migration to 8.
pub const DISPATCHES_BY_USER_V7: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("dispatches_by_user");
/// Schemas 4 to 7: (webhook id, dispatch id) -> (), the folded ones. Read and dropped by the
/// migration to 8.
pub const DISPATCHES_BY_WEBHOOK_V7: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("dispatches_by_webhook");
/// The outbox: (target, due_ms, dispatch id) -> (). A dispatch has exactly one key here while
/// it is ACTIVE. Partitioned by target (`scheme://host:port`) so the scheduler takes due work
/// per target, within each target's in-flight bound.
pub const OUTBOX: TableDefinition<(&str, u64, &str), ()> = TableDefinition::new("outbox");
/// Commit sequence number -> (webhook id, dispatch id): dispatches not yet folded into
/// `webhook_stats` and the status indexes (pending.rs). Appended by the ingest commit,
/// emptied by the folding commit.
pub const WEBHOOK_PENDING: TableDefinition<u64, (&str, &str)> =
    TableDefinition::new("webhook_pending");
/// Deleted webhook id -> the time of the delete (ms): webhooks whose ACTIVE dispatches are
/// still being ended, a chunk per group commit, so one delete never holds the writer for long.
/// (Added after schema 4 was released; created at open when missing.)
pub const WEBHOOK_SWEEPS: TableDefinition<&str, u64> = TableDefinition::new("webhook_sweeps");
/// Schema 5 only: (finished_ms, dispatch id) -> (), one key per ended dispatch. Schema 6
/// lists them in `FINISHED_GROUPS` instead; the migration reads this and drops it.
pub const DISPATCHES_FINISHED: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("dispatches_finished");
/// (the latest end time among them, the first id) -> the ids, sorted and `\n`-separated, of the
/// SUCCEEDED or FAILED dispatches one group commit ended: retention finds the oldest ended
/// without a scan, and listing them costs one insert per group commit, not one per dispatch.
/// An id may be listed again after it ended again (it was made ACTIVE in between); retention
/// skips a listing older than the dispatch's end. (Schema 6.)
pub const FINISHED_GROUPS: TableDefinition<(u64, &str), &[u8]> =
    TableDefinition::new("finished_groups");
/// webhook id -> versioned signing keys record: the key that signs its deliveries, and the one
/// it replaced while that still signs beside it. Every webhook has one from create to delete.
/// (Schema 7.)
pub const WEBHOOK_SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("webhook_secrets");
/// webhook id -> versioned redelivery record: a bulk redelivery of that webhook's ended
/// dispatches under way (redelivery.rs), at most one per webhook. (Added in schema 7's
/// lifetime; created at open when missing.)
pub const REDELIVERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("redeliveries");
/// (user, status, event type, dispatch id) -> (): the user's dispatches by status and type (a
/// list page merges the ranges it keeps); a dispatch's key moves in the transaction that
/// changes its status. (Schema 8.)
pub const DISPATCHES_BY_USER_STATUS: TableDefinition<(&str, u8, u8, &str), ()> =
    TableDefinition::new("dispatches_by_user_status");
/// (webhook id, status, event type, dispatch id) -> (): the folded dispatches of a webhook by
/// status and type (a new one is listed by the fold, pending.rs; a listed one's key moves in
/// the transaction that changes its status; a deleted webhook's stay until its sweep). (Schema 8.)
pub const DISPATCHES_BY_WEBHOOK_STATUS: TableDefinition<(&str, u8, u8, &str), ()> =
    TableDefinition::new("dispatches_by_webhook_status");
/// (user, status, event type) -> how many keys `dispatches_by_user_status` holds under it: the
/// exact `total` of a list without counting it. (A webhook's are in its stats record.)
/// (Schema 8.)
pub const DISPATCH_COUNTS: TableDefinition<(&str, u8, u8), u64> =
    TableDefinition::new("dispatch_counts");

/// (user, job kind, job id) -> the latest reported run or build object (JSON).
pub const JOBS: TableDefinition<(&str, u8, &str), &[u8]> = TableDefinition::new("jobs");
