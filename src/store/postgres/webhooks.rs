//! Webhooks, their signing keys and reported jobs on PostgreSQL. A create locks its user's
//! `user_webhooks` row (so racing creates cannot pass `webhooks_per_user_max`) and inserts under
//! the unique (user, idempotencyKey) index (so racing creates with one key make one webhook);
//! every webhook write bumps `hookd_meta.changes` in its transaction (mod.rs).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{PgStore, db_i64, from_db, pg_error};
use crate::model::{JobKind, LastDispatch, SigningKeys, Webhook, WebhookPatch, WebhookStats};
use crate::store::codes::{job_code, kind_code, status_of_code};
use crate::store::index::IndexChange;
use crate::store::{Created, Page, PageRequest, StoreError, StoredJob, WebhookScope, records};

/// A webhook with what its stats are made of: the dispatches it has (and those retention
/// deleted), and the latest one's status.
const WITH_STATS: &str = "SELECT w.record, coalesce(r.count, 0) AS retained_count,
        r.last_status AS last_ended_status, r.last_finished_ms AS last_ended_ms,
        c.n, l.status AS last_status, l.finished_ms AS last_finished_ms
    FROM webhooks w
    LEFT JOIN webhook_retained r ON r.webhook_id = w.id
    CROSS JOIN LATERAL (SELECT count(*) AS n FROM dispatches d WHERE d.webhook_id = w.id) c
    LEFT JOIN LATERAL (SELECT status, finished_ms FROM dispatches d WHERE d.webhook_id = w.id
        ORDER BY d.id DESC LIMIT 1) l ON true";

fn status(code: i16) -> Result<crate::model::DispatchStatus, StoreError> {
    u8::try_from(code)
        .ok()
        .and_then(status_of_code)
        .ok_or_else(|| StoreError::Corrupt(format!("dispatch status code {code}")))
}

/// A `WITH_STATS` row as the webhook and its stats.
fn with_stats(row: &Row) -> Result<(Webhook, WebhookStats), StoreError> {
    let webhook = records::decode_webhook(row.get("record"))?;
    let total = row.get::<_, i64>("n") + row.get::<_, i64>("retained_count");
    let last_dispatch = match row.get::<_, Option<i16>>("last_status") {
        Some(code) => Some(LastDispatch {
            status: status(code)?,
            finished_ms: from_db(row.get("last_finished_ms")),
        }),
        None => match row.get::<_, Option<i16>>("last_ended_status") {
            Some(code) => Some(LastDispatch {
                status: status(code)?,
                finished_ms: from_db(row.get("last_ended_ms")),
            }),
            None => None,
        },
    };
    let stats = WebhookStats { total_dispatches: u64::try_from(total).unwrap_or(0), last_dispatch };
    Ok((webhook, stats))
}

/// Lists `w` under each of its condition keys (the per-actor and per-task lists).
async fn insert_conditions(
    tx: &deadpool_postgres::Transaction<'_>,
    w: &Webhook,
) -> Result<(), StoreError> {
    for (kind, value) in w.condition.keys() {
        let code = i16::from(kind_code(kind));
        tx.execute(
            "INSERT INTO webhook_conditions (user_id, kind, value, created_ms, webhook_id)
             VALUES ($1, $2, $3, $4, $5)",
            &[&w.user_id, &code, &value, &db_i64(w.created_ms), &w.id],
        )
        .await
        .map_err(pg_error)?;
    }
    Ok(())
}

/// Counts one more webhook write; the count it now has.
async fn bump_changes(tx: &deadpool_postgres::Transaction<'_>) -> Result<i64, StoreError> {
    let row = tx
        .query_one(
            "UPDATE hookd_meta SET value = value + 1 WHERE name = 'changes' RETURNING value",
            &[],
        )
        .await
        .map_err(pg_error)?;
    Ok(row.get(0))
}

impl PgStore {
    pub async fn create_webhook(
        &self,
        w: Webhook,
        signing_key: Vec<u8>,
        webhooks_max: usize,
    ) -> Result<Created, StoreError> {
        if let Some(found) = self.by_idempotency_key(&w).await? {
            return Ok(found);
        }
        if webhooks_max == 0 {
            return Err(StoreError::TooManyWebhooks(webhooks_max));
        }
        let keys =
            records::encode_signing_keys(&SigningKeys { current: signing_key, previous: None })?;
        let record = records::encode_webhook(&w)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let counted = tx
            .query_opt(
                "INSERT INTO user_webhooks (user_id, count) VALUES ($1, 1)
                 ON CONFLICT (user_id) DO UPDATE SET count = user_webhooks.count + 1
                 WHERE user_webhooks.count < $2
                 RETURNING count",
                &[&w.user_id, &db_i64(webhooks_max as u64)],
            )
            .await
            .map_err(pg_error)?;
        if counted.is_none() {
            return Err(StoreError::TooManyWebhooks(webhooks_max));
        }
        let inserted = tx
            .query_opt(
                "INSERT INTO webhooks
                    (id, user_id, created_ms, record, is_enabled, is_ad_hoc, idempotency_key, signing_keys)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
                 RETURNING id",
                &[
                    &w.id,
                    &w.user_id,
                    &db_i64(w.created_ms),
                    &record,
                    &w.is_enabled,
                    &w.is_ad_hoc,
                    &w.idempotency_key,
                    &keys,
                ],
            )
            .await
            .map_err(pg_error)?;
        if inserted.is_none() {
            // A racing create with the same key committed first: its webhook is the answer.
            drop(tx);
            return self
                .by_idempotency_key(&w)
                .await?
                .ok_or_else(|| StoreError::Corrupt("idempotency key without its webhook".into()));
        }
        insert_conditions(&tx, &w).await?;
        let changes = bump_changes(&tx).await?;
        tx.commit().await.map_err(pg_error)?;
        let change =
            if w.is_enabled { vec![IndexChange::Add(Arc::new(w.clone()))] } else { vec![] };
        self.index_after(changes, change).await?;
        Ok(Created { webhook: w, stats: WebhookStats::default(), replayed: false })
    }

    /// The webhook an earlier create with `w`'s idempotency key made, as a replayed create.
    async fn by_idempotency_key(&self, w: &Webhook) -> Result<Option<Created>, StoreError> {
        let Some(key) = &w.idempotency_key else { return Ok(None) };
        let client = self.client().await?;
        let sql = format!("{WITH_STATS} WHERE w.user_id = $1 AND w.idempotency_key = $2");
        let row = client.query_opt(&sql, &[&w.user_id, key]).await.map_err(pg_error)?;
        match row {
            Some(row) => {
                let (webhook, stats) = with_stats(&row)?;
                Ok(Some(Created { webhook, stats, replayed: true }))
            }
            None => Ok(None),
        }
    }

    pub async fn update_webhook(
        &self,
        user_id: String,
        id: String,
        patch: WebhookPatch,
        now_ms: u64,
    ) -> Result<(Webhook, WebhookStats), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let row = tx
            .query_opt(
                "SELECT record, fired FROM webhooks WHERE id = $1 AND user_id = $2 FOR UPDATE",
                &[&id, &user_id],
            )
            .await
            .map_err(pg_error)?
            .ok_or(StoreError::NotFound)?;
        let old = records::decode_webhook(row.get("record"))?;
        let fired: bool = row.get("fired");
        let new = old.patched(&patch, now_ms)?;
        let record = records::encode_webhook(&new)?;
        tx.execute(
            "UPDATE webhooks SET record = $2, is_enabled = $3 WHERE id = $1",
            &[&id, &record, &new.is_enabled],
        )
        .await
        .map_err(pg_error)?;
        if new.condition != old.condition {
            tx.execute("DELETE FROM webhook_conditions WHERE webhook_id = $1", &[&id])
                .await
                .map_err(pg_error)?;
            insert_conditions(&tx, &new).await?;
        }
        let changes = bump_changes(&tx).await?;
        let sql = format!("{WITH_STATS} WHERE w.id = $1");
        let (webhook, stats) = with_stats(&tx.query_one(&sql, &[&id]).await.map_err(pg_error)?)?;
        tx.commit().await.map_err(pg_error)?;
        let mut change = vec![IndexChange::removing(&old)];
        // A fired ad-hoc webhook never fires again; a disabled one not until enabled.
        if new.is_enabled && !(new.is_ad_hoc && fired) {
            change.push(IndexChange::Add(Arc::new(new)));
        }
        self.index_after(changes, change).await?;
        Ok((webhook, stats))
    }

    /// Deletes the webhook and ends its ACTIVE dispatches FAILED in the same transaction. An
    /// ingest that matched it holds its row `FOR SHARE`: the delete waits for that commit and
    /// then ends what it made too.
    pub async fn delete_webhook(
        &self,
        user_id: String,
        id: String,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let row = tx
            .query_opt(
                "DELETE FROM webhooks WHERE id = $1 AND user_id = $2 RETURNING record",
                &[&id, &user_id],
            )
            .await
            .map_err(pg_error)?
            .ok_or(StoreError::NotFound)?;
        let w = records::decode_webhook(row.get("record"))?;
        tx.execute("UPDATE user_webhooks SET count = count - 1 WHERE user_id = $1", &[&user_id])
            .await
            .map_err(pg_error)?;
        let active = tx
            .query(
                "SELECT id, state FROM dispatches WHERE webhook_id = $1 AND status = 0
                 ORDER BY id FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(pg_error)?;
        let mut ended_ids = Vec::with_capacity(active.len());
        let mut ended_states = Vec::with_capacity(active.len());
        for row in &active {
            let mut state = records::decode_dispatch_state(row.get(1))?;
            if state.end_removed(now_ms) {
                ended_ids.push(row.get::<_, String>(0));
                ended_states.push(records::encode_dispatch_state(&state)?);
            }
        }
        if !ended_ids.is_empty() {
            tx.execute(
                "UPDATE dispatches d SET state = u.state, status = 2, next_due_ms = NULL,
                    finished_ms = $3
                 FROM unnest($1::text[], $2::bytea[]) AS u(id, state) WHERE d.id = u.id",
                &[&ended_ids, &ended_states, &db_i64(now_ms)],
            )
            .await
            .map_err(pg_error)?;
            tx.execute("DELETE FROM outbox WHERE id = ANY($1)", &[&ended_ids])
                .await
                .map_err(pg_error)?;
            self.inner.outbox_removed.fetch_add(ended_ids.len() as u64, Ordering::Relaxed);
        }
        tx.execute("DELETE FROM webhook_retained WHERE webhook_id = $1", &[&id])
            .await
            .map_err(pg_error)?;
        let changes = bump_changes(&tx).await?;
        tx.commit().await.map_err(pg_error)?;
        self.index_after(changes, vec![IndexChange::removing(&w)]).await
    }

    pub async fn get_webhook(
        &self,
        user_id: String,
        id: String,
    ) -> Result<Option<(Webhook, WebhookStats)>, StoreError> {
        let client = self.client().await?;
        let sql = format!("{WITH_STATS} WHERE w.id = $1 AND w.user_id = $2");
        let row = client.query_opt(&sql, &[&id, &user_id]).await.map_err(pg_error)?;
        row.as_ref().map(with_stats).transpose()
    }

    pub async fn list_webhooks(
        &self,
        user_id: String,
        scope: WebhookScope,
        page: PageRequest,
    ) -> Result<Page<(Webhook, WebhookStats)>, StoreError> {
        let client = self.client().await?;
        let order = if page.desc { "DESC" } else { "ASC" };
        let (offset, limit) = (db_i64(page.offset), db_i64(page.limit));
        let (total, rows) = match &scope {
            WebhookScope::All => {
                let total: i64 = client
                    .query_one("SELECT count(*) FROM webhooks WHERE user_id = $1", &[&user_id])
                    .await
                    .map_err(pg_error)?
                    .get(0);
                let sql = format!(
                    "{WITH_STATS} WHERE w.user_id = $1
                     ORDER BY w.created_ms {order}, w.id {order} OFFSET $2 LIMIT $3"
                );
                let params: [&(dyn ToSql + Sync); 3] = [&user_id, &offset, &limit];
                (total, client.query(&sql, &params).await.map_err(pg_error)?)
            }
            WebhookScope::Condition(kind, value) => {
                let code = i16::from(kind_code(*kind));
                let total: i64 = client
                    .query_one(
                        "SELECT count(*) FROM webhook_conditions
                         WHERE user_id = $1 AND kind = $2 AND value = $3",
                        &[&user_id, &code, value],
                    )
                    .await
                    .map_err(pg_error)?
                    .get(0);
                let sql = format!(
                    "{WITH_STATS} JOIN webhook_conditions k ON k.webhook_id = w.id
                     WHERE k.user_id = $1 AND k.kind = $2 AND k.value = $3
                     ORDER BY k.created_ms {order}, k.webhook_id {order} OFFSET $4 LIMIT $5"
                );
                let params: [&(dyn ToSql + Sync); 5] = [&user_id, &code, value, &offset, &limit];
                (total, client.query(&sql, &params).await.map_err(pg_error)?)
            }
        };
        let items = rows.iter().map(with_stats).collect::<Result<Vec<_>, _>>()?;
        Ok(Page { total: u64::try_from(total).unwrap_or(0), items })
    }

    pub async fn signing_keys(
        &self,
        user_id: String,
        id: String,
    ) -> Result<Option<SigningKeys>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT signing_keys FROM webhooks WHERE id = $1 AND user_id = $2",
                &[&id, &user_id],
            )
            .await
            .map_err(pg_error)?;
        row.map(|r| records::decode_signing_keys(r.get(0))).transpose()
    }

    pub async fn rotate_signing_key(
        &self,
        user_id: String,
        id: String,
        key: Vec<u8>,
        now_ms: u64,
        overlap_ms: u64,
    ) -> Result<SigningKeys, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let row = tx
            .query_opt(
                "SELECT signing_keys FROM webhooks WHERE id = $1 AND user_id = $2 FOR UPDATE",
                &[&id, &user_id],
            )
            .await
            .map_err(pg_error)?
            .ok_or(StoreError::NotFound)?;
        let rotated = records::decode_signing_keys(row.get(0))?.rotated(key, now_ms, overlap_ms);
        let bytes = records::encode_signing_keys(&rotated)?;
        tx.execute("UPDATE webhooks SET signing_keys = $2 WHERE id = $1", &[&id, &bytes])
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(rotated)
    }

    pub async fn get_job(
        &self,
        user_id: String,
        kind: JobKind,
        id: String,
    ) -> Result<Option<StoredJob>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT status, object FROM jobs WHERE user_id = $1 AND kind = $2 AND id = $3",
                &[&user_id, &i16::from(job_code(kind)), &id],
            )
            .await
            .map_err(pg_error)?;
        Ok(row.map(|r| StoredJob { status: r.get(0), object_json: r.get(1) }))
    }
}
