//! Dispatches on PostgreSQL: one by id, a single redelivery, the lists (per user or per webhook, filtered by
//! status and event type, by id which is `createdAt` order) with exact totals from the same
//! indexed columns, and the full scans tools and checks use.

use tokio_postgres::types::ToSql;

use super::{PgStore, db_i64, from_db, pg_error};
use crate::model::Dispatch;
use crate::store::codes::{event_code, status_code};
use crate::store::{DispatchFilter, DispatchScope, Page, PageRequest, StoreError, records};

fn decode(row: &tokio_postgres::Row) -> Result<Dispatch, StoreError> {
    records::decode_dispatch(row.get("request"), row.get("state"))
}

impl PgStore {
    pub async fn get_dispatch(
        &self,
        user_id: String,
        id: String,
    ) -> Result<Option<Dispatch>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT request, state FROM dispatches WHERE id = $1 AND user_id = $2",
                &[&id, &user_id],
            )
            .await
            .map_err(pg_error)?;
        row.as_ref().map(decode).transpose()
    }

    pub async fn list_dispatches(
        &self,
        user_id: String,
        scope: DispatchScope,
        filter: DispatchFilter,
        page: PageRequest,
    ) -> Result<Page<Dispatch>, StoreError> {
        let status = filter.status.map(|s| i16::from(status_code(s)));
        let event_type = filter.event_type.map(|t| i16::from(event_code(t)));
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&user_id];
        let mut wheres = vec!["user_id = $1".to_string()];
        let webhook_id;
        if let DispatchScope::Webhook(w) = &scope {
            webhook_id = w.clone();
            params.push(&webhook_id);
            wheres.push(format!("webhook_id = ${}", params.len()));
        }
        if let Some(s) = &status {
            params.push(s);
            wheres.push(format!("status = ${}", params.len()));
        }
        if let Some(t) = &event_type {
            params.push(t);
            wheres.push(format!("event_type = ${}", params.len()));
        }
        let filter_sql = wheres.join(" AND ");
        let client = self.client().await?;
        let total: i64 = client
            .query_one(&format!("SELECT count(*) FROM dispatches WHERE {filter_sql}"), &params)
            .await
            .map_err(pg_error)?
            .get(0);
        let (offset, limit) = (db_i64(page.offset), db_i64(page.limit));
        let order = if page.desc { "DESC" } else { "ASC" };
        params.push(&offset);
        params.push(&limit);
        let sql = format!(
            "SELECT request, state FROM dispatches WHERE {filter_sql}
             ORDER BY id {order} OFFSET ${} LIMIT ${}",
            params.len() - 1,
            params.len()
        );
        let rows = client.query(&sql, &params).await.map_err(pg_error)?;
        let items = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        Ok(Page { total: u64::try_from(total).unwrap_or(0), items })
    }

    /// Makes the user's ended dispatch ACTIVE again, due at `now_ms`.
    pub async fn redeliver(
        &self,
        user_id: String,
        dispatch_id: String,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let row = tx
            .query_opt(
                "SELECT state, webhook_id FROM dispatches WHERE id = $1 AND user_id = $2 FOR UPDATE",
                &[&dispatch_id, &user_id],
            )
            .await
            .map_err(pg_error)?
            .ok_or(StoreError::NotFound)?;
        let mut state = records::decode_dispatch_state(row.get(0))?;
        if state.status == crate::model::DispatchStatus::Active {
            return Err(crate::store::error::refused_active());
        }
        // Held until the commit, so that a racing delete ends this dispatch again.
        let webhook_id: String = row.get(1);
        let live = tx
            .query_opt("SELECT 1 FROM webhooks WHERE id = $1 FOR SHARE", &[&webhook_id])
            .await
            .map_err(pg_error)?;
        if live.is_none() {
            return Err(crate::store::error::refused_deleted());
        }
        state.reactivate(now_ms);
        let bytes = records::encode_dispatch_state(&state)?;
        super::redelivery::reactivate(&tx, &[dispatch_id], &[bytes], now_ms).await?;
        tx.commit().await.map_err(pg_error)?;
        self.work_added(None);
        Ok(())
    }

    /// Every outbox entry (the ACTIVE dispatches): (target, due_ms, id), in that order.
    pub async fn outbox_keys(&self) -> Result<Vec<(String, u64, String)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT target, next_due_ms, id FROM outbox ORDER BY target, next_due_ms, id",
                &[],
            )
            .await
            .map_err(pg_error)?;
        Ok(rows
            .iter()
            .map(|r| {
                let due: i64 = r.get(1);
                (r.get(0), from_db(Some(due)).unwrap_or(0), r.get(2))
            })
            .collect())
    }

    /// Every dispatch, in id order. A full scan, for checks and tools.
    pub async fn all_dispatches(&self) -> Result<Vec<Dispatch>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT request, state FROM dispatches ORDER BY id", &[])
            .await
            .map_err(pg_error)?;
        rows.iter().map(decode).collect()
    }
}
