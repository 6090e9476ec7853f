//! hookd's tables on PostgreSQL and their versioned migrations, run at connect by whichever
//! node comes first (under an advisory lock, so racing nodes migrate once); a database whose
//! schema is newer than this binary's is refused.

use tokio_postgres::Client;

use crate::store::StoreError;

use super::pg_error;

/// The schema this hookd writes.
pub const SCHEMA_VERSION: i64 = 5;

/// Serializes migrations between nodes (any constant both sides agree on).
const MIGRATION_LOCK: i64 = 0x686f_6f6b_6400; // "hookd\0"

/// Migration `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 5] = [
    r#"
CREATE TABLE hookd_meta (name text PRIMARY KEY, value bigint NOT NULL);

-- Every webhook, its condition keys for the per-actor/task lists, and its signing keys.
-- `changes` in hookd_meta counts webhook writes: a node whose match index is older refreshes
-- it before matching (see mod.rs).
CREATE TABLE webhooks (
    id text PRIMARY KEY,
    user_id text NOT NULL,
    created_ms bigint NOT NULL,
    record bytea NOT NULL,
    is_enabled boolean NOT NULL,
    is_ad_hoc boolean NOT NULL,
    fired boolean NOT NULL DEFAULT false,
    idempotency_key text,
    signing_keys bytea NOT NULL,
    -- Dispatches retention deleted, and how the latest of them ended: the webhook's stats
    -- count them still.
    retained_count bigint NOT NULL DEFAULT 0,
    last_ended_status smallint,
    last_ended_ms bigint
);
CREATE INDEX webhooks_by_user ON webhooks (user_id, created_ms, id);
CREATE UNIQUE INDEX webhooks_by_idempotency_key ON webhooks (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE TABLE webhook_conditions (
    user_id text NOT NULL,
    kind smallint NOT NULL,
    value text NOT NULL,
    created_ms bigint NOT NULL,
    webhook_id text NOT NULL REFERENCES webhooks ON DELETE CASCADE,
    PRIMARY KEY (user_id, kind, value, created_ms, webhook_id)
);
-- Each user's webhook count: the row a create locks to keep `webhooks_per_user_max`.
CREATE TABLE user_webhooks (user_id text PRIMARY KEY, count bigint NOT NULL);

CREATE TABLE events (
    id text PRIMARY KEY,
    user_id text NOT NULL,
    created_ms bigint NOT NULL,
    idempotency_key text,
    -- The event as accepted, with its dispatch ids (records.rs).
    record bytea NOT NULL
);
CREATE INDEX events_by_time ON events (created_ms, id);
CREATE TABLE event_idem (
    user_id text NOT NULL,
    key text NOT NULL,
    event_id text NOT NULL,
    answer bytea NOT NULL,
    PRIMARY KEY (user_id, key)
);

-- A dispatch: its rendered request written once, its state rewritten per call (the
-- records of records.rs, as on redb; the columns are what queries filter and sort on). ACTIVE ones
-- (status 0) are the outbox, by shard (a hash of the target) and due time.
CREATE TABLE dispatches (
    id text PRIMARY KEY,
    user_id text NOT NULL,
    webhook_id text NOT NULL,
    created_ms bigint NOT NULL,
    event_type smallint NOT NULL,
    status smallint NOT NULL,
    request bytea NOT NULL,
    state bytea NOT NULL,
    next_due_ms bigint,
    finished_ms bigint,
    target text NOT NULL,
    shard smallint NOT NULL
);
CREATE INDEX dispatches_by_user ON dispatches (user_id, id);
CREATE INDEX dispatches_by_user_status ON dispatches (user_id, status, event_type, id);
CREATE INDEX dispatches_by_webhook ON dispatches (webhook_id, id);
CREATE INDEX dispatches_by_webhook_status ON dispatches (webhook_id, status, event_type, id);
CREATE INDEX dispatches_due ON dispatches (shard, target, next_due_ms, id) INCLUDE (user_id)
    WHERE status = 0;
CREATE INDEX dispatches_ended ON dispatches (finished_ms, id) WHERE status <> 0;

CREATE TABLE jobs (
    user_id text NOT NULL,
    kind smallint NOT NULL,
    id text NOT NULL,
    status text,
    object text NOT NULL,
    PRIMARY KEY (user_id, kind, id)
);

-- Delivery ownership: live nodes, and one lease per shard with a fencing epoch.
CREATE TABLE nodes (id text PRIMARY KEY, seen_at timestamptz NOT NULL);
CREATE TABLE shard_leases (
    shard smallint PRIMARY KEY,
    owner text,
    epoch bigint NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO shard_leases (shard) SELECT generate_series(0, 63);
"#,
    // The outbox leaves `dispatches`: a delivered row's entry in a partial index of that big
    // table stays until a vacuum of the whole table, and every walk stepped over them. A small
    // table of the ACTIVE ones, rows deleted when they end and vacuumed by hookd (outbox.rs),
    // keeps the walk proportional to the work waiting.
    r#"
CREATE TABLE outbox (
    id text PRIMARY KEY,
    shard smallint NOT NULL,
    target text NOT NULL,
    next_due_ms bigint NOT NULL,
    user_id text NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
    vacuum_truncate = false);
CREATE INDEX outbox_due ON outbox (shard, target, next_due_ms, id) INCLUDE (user_id);
INSERT INTO outbox SELECT id, shard, target, coalesce(next_due_ms, 0), user_id
    FROM dispatches WHERE status = 0;
DROP INDEX dispatches_due;
-- Recording a call rewrites a dispatch's status, state and finish time: with none of them
-- indexed and room left on its page, PostgreSQL updates the row in place (HOT) instead of
-- adding an entry to every index. Lists filtered by status read the user's or webhook's rows
-- in id order and filter them; retention walks dispatches by creation time.
DROP INDEX dispatches_by_user_status;
DROP INDEX dispatches_by_webhook_status;
DROP INDEX dispatches_ended;
CREATE INDEX dispatches_by_time ON dispatches (created_ms, id);
ALTER TABLE dispatches SET (fillfactor = 75);
"#,
    // Ids and targets compare byte by byte whatever the database's collation: ids sort in
    // creation order only so (a database made with an `en_US` locale put `a` before `B`), and
    // the skip scan over targets compares them on every step.
    // Bulk redeliveries: one job per webhook, its cursor moved in each chunk's transaction
    // (redelivery.rs); `node_id` runs it, and a live node takes it over once that one lapses.
    r#"
ALTER TABLE webhooks ALTER COLUMN id TYPE text COLLATE "C";
ALTER TABLE events ALTER COLUMN id TYPE text COLLATE "C";
ALTER TABLE dispatches ALTER COLUMN id TYPE text COLLATE "C",
    ALTER COLUMN target TYPE text COLLATE "C";
ALTER TABLE outbox ALTER COLUMN id TYPE text COLLATE "C",
    ALTER COLUMN target TYPE text COLLATE "C";
CREATE TABLE redeliveries (
    webhook_id text PRIMARY KEY,
    user_id text NOT NULL,
    status smallint NOT NULL,
    from_id text COLLATE "C" NOT NULL,
    until_id text COLLATE "C" NOT NULL,
    after_id text COLLATE "C",
    due_ms bigint NOT NULL,
    count bigint NOT NULL DEFAULT 0,
    node_id text NOT NULL
);
-- What retention deleted of each webhook's dispatches, which its stats keep counting, and how
-- the latest of them ended (retention.rs). Apart from `webhooks`, whose rows ingest holds
-- FOR SHARE: retention updates this after deleting dispatches, and never waits on those.
ALTER TABLE webhooks DROP COLUMN retained_count, DROP COLUMN last_ended_status,
    DROP COLUMN last_ended_ms;
CREATE TABLE webhook_retained (
    webhook_id text PRIMARY KEY,
    count bigint NOT NULL,
    last_id text COLLATE "C" NOT NULL,
    last_status smallint NOT NULL,
    last_finished_ms bigint
);
"#,
    // A dispatch row (about 1 KB: its request and state) is rewritten by each call's outcome.
    // With a quarter of each page free (fillfactor 75) only 40 % of those updates stayed on
    // their page in `burst`; the rest went to another page and added an entry to every index.
    // Half a page free keeps 87 % in place and halves the cost of recording outcomes
    // (BENCHMARKS.md, session 11). New pages only: existing rows stay where they are.
    // Retention walks dispatches by id, which begins with the creation time: the index by
    // creation time only cost every insert an entry.
    r#"
ALTER TABLE dispatches SET (fillfactor = 50);
DROP INDEX dispatches_by_time;
"#,
    // Retention walks events by id too (ids begin with their creation time).
    r#"
DROP INDEX events_by_time;
"#,
];

/// Creates or migrates the schema; refuses a newer one.
pub(super) async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg_error)?;
    let exists: bool = tx
        .query_one("SELECT to_regclass('hookd_meta') IS NOT NULL", &[])
        .await
        .map_err(pg_error)?
        .get(0);
    let from: i64 = if exists {
        let row = tx
            .query_opt("SELECT value FROM hookd_meta WHERE name = 'schema_version'", &[])
            .await
            .map_err(pg_error)?;
        row.map_or(0, |r| r.get(0))
    } else {
        0
    };
    if from > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "the database has hookd schema version {from}, newer than this hookd's {SCHEMA_VERSION}: run a newer hookd"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(from).unwrap_or(0)) {
        tx.batch_execute(sql).await.map_err(pg_error)?;
        let next = i64::try_from(version).unwrap_or(i64::MAX) + 1;
        tx.execute(
            "INSERT INTO hookd_meta (name, value) VALUES ('schema_version', $1)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            &[&next],
        )
        .await
        .map_err(pg_error)?;
        tracing::info!(schema_version = next, "migrated the PostgreSQL schema");
    }
    tx.execute(
        "INSERT INTO hookd_meta (name, value) VALUES ('changes', 0) ON CONFLICT DO NOTHING",
        &[],
    )
    .await
    .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)
}
