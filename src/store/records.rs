//! Versioned on-disk records and their conversion to model types. Serde here is a
//! compatibility promise: add a new version variant rather than changing an old one.

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::model::{Condition, DispatchStatus, EventType, LastDispatch, Webhook, WebhookStats};

#[derive(Serialize, Deserialize)]
#[serde(tag = "v")]
enum WebhookRecord {
    #[serde(rename = "1")]
    V1(WebhookV1),
}

#[derive(Serialize, Deserialize)]
struct WebhookV1 {
    id: String,
    user_id: String,
    created_ms: u64,
    modified_ms: u64,
    is_ad_hoc: bool,
    event_types: Vec<String>,
    condition: ConditionV1,
    ignore_ssl_errors: bool,
    do_not_retry: bool,
    request_url: String,
    payload_template: String,
    headers_template: Option<String>,
    description: Option<String>,
    should_interpolate_strings: bool,
    idempotency_key: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct ConditionV1 {
    actor_id: Option<String>,
    actor_task_id: Option<String>,
    actor_run_id: Option<String>,
}

pub fn encode_webhook(w: &Webhook) -> Result<Vec<u8>, StoreError> {
    let rec = WebhookRecord::V1(WebhookV1 {
        id: w.id.clone(),
        user_id: w.user_id.clone(),
        created_ms: w.created_ms,
        modified_ms: w.modified_ms,
        is_ad_hoc: w.is_ad_hoc,
        event_types: w.event_types.iter().map(|t| t.as_str().to_string()).collect(),
        condition: ConditionV1 {
            actor_id: w.condition.actor_id.clone(),
            actor_task_id: w.condition.actor_task_id.clone(),
            actor_run_id: w.condition.actor_run_id.clone(),
        },
        ignore_ssl_errors: w.ignore_ssl_errors,
        do_not_retry: w.do_not_retry,
        request_url: w.request_url.clone(),
        payload_template: w.payload_template.clone(),
        headers_template: w.headers_template.clone(),
        description: w.description.clone(),
        should_interpolate_strings: w.should_interpolate_strings,
        idempotency_key: w.idempotency_key.clone(),
    });
    serde_json::to_vec(&rec).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub fn decode_webhook(bytes: &[u8]) -> Result<Webhook, StoreError> {
    let WebhookRecord::V1(r) =
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("webhook: {e}")))?;
    let event_types = r
        .event_types
        .iter()
        .map(|s| {
            EventType::parse_subscribable(s)
                .ok_or_else(|| StoreError::Corrupt(format!("webhook {}: event type {s}", r.id)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Webhook {
        id: r.id,
        user_id: r.user_id,
        created_ms: r.created_ms,
        modified_ms: r.modified_ms,
        is_ad_hoc: r.is_ad_hoc,
        event_types,
        condition: Condition {
            actor_id: r.condition.actor_id,
            actor_task_id: r.condition.actor_task_id,
            actor_run_id: r.condition.actor_run_id,
        },
        ignore_ssl_errors: r.ignore_ssl_errors,
        do_not_retry: r.do_not_retry,
        request_url: r.request_url,
        payload_template: r.payload_template,
        headers_template: r.headers_template,
        description: r.description,
        should_interpolate_strings: r.should_interpolate_strings,
        idempotency_key: r.idempotency_key,
    })
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "v")]
enum StatsRecord {
    #[serde(rename = "1")]
    V1 { total: u64, last_status: Option<String>, last_finished_ms: Option<u64> },
}

#[allow(dead_code)] // written by the delivery engine
pub fn encode_stats(s: &WebhookStats) -> Result<Vec<u8>, StoreError> {
    let rec = StatsRecord::V1 {
        total: s.total_dispatches,
        last_status: s.last_dispatch.as_ref().map(|l| l.status.as_str().to_string()),
        last_finished_ms: s.last_dispatch.as_ref().and_then(|l| l.finished_ms),
    };
    serde_json::to_vec(&rec).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub fn decode_stats(bytes: &[u8]) -> Result<WebhookStats, StoreError> {
    let StatsRecord::V1 { total, last_status, last_finished_ms } =
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("stats: {e}")))?;
    let last_dispatch = match last_status.as_deref() {
        None => None,
        Some(s) => {
            let status = match s {
                "ACTIVE" => DispatchStatus::Active,
                "SUCCEEDED" => DispatchStatus::Succeeded,
                "FAILED" => DispatchStatus::Failed,
                other => return Err(StoreError::Corrupt(format!("stats: status {other}"))),
            };
            Some(LastDispatch { status, finished_ms: last_finished_ms })
        }
    };
    Ok(WebhookStats { total_dispatches: total, last_dispatch })
}
