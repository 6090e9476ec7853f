//! The dispatch routes: `POST /v2/webhooks/{id}/test`, the dispatch lists and one dispatch,
//! and the Apify dispatch object.

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper::Response;
use serde_json::{Value, json};

use super::body::{json_response, page_response};
use super::error::ApiError;
use super::render::EventParts;
use super::routes::Query;
use super::webhooks::{condition_json, not_found};
use super::{ApiState, LIST_LIMIT_MAX};
use crate::config::User;
use crate::model::{Dispatch, DispatchStatus, EventType, format_timestamp_ms};
use crate::store::{DispatchFilter, DispatchScope, NewEvent};
use crate::template::RawJson;

type Resp = Response<Full<Bytes>>;

/// The Apify dispatch object.
pub fn dispatch_json(d: &Dispatch) -> Value {
    let event_data = d
        .event_data_json
        .as_deref()
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
        .unwrap_or(Value::Null);
    let calls: Vec<Value> = d
        .calls
        .iter()
        .map(|c| {
            json!({
                "startedAt": format_timestamp_ms(c.started_ms),
                "finishedAt": format_timestamp_ms(c.finished_ms),
                "errorMessage": c.error_message,
                "responseStatus": c.response_status,
                "responseBody": c.response_body,
            })
        })
        .collect();
    // hookd's: when the next call is due (null once it ended).
    let next_call_at =
        d.next_due_ms.filter(|_| d.status == DispatchStatus::Active).map(format_timestamp_ms);
    json!({
        "id": d.id,
        "userId": d.user_id,
        "webhookId": d.webhook_id,
        "createdAt": format_timestamp_ms(d.created_ms),
        "status": d.status.as_str(),
        "eventType": d.event_type.as_str(),
        "eventData": event_data,
        "webhook": {
            "actionType": "HTTP_REQUEST",
            "condition": condition_json(&d.condition),
            "requestUrl": d.request_url,
            "isAdHoc": d.is_ad_hoc,
        },
        "calls": calls,
        "nextCallAt": next_call_at,
    })
}

/// The dispatch object with hookd's `request`: the stored body text and headers, as every call
/// sends them (the headers hookd adds per call, `X-Apify-*` and the signature, are not stored).
fn dispatch_with_request_json(d: &Dispatch) -> Value {
    let mut v = dispatch_json(d);
    let headers: serde_json::Map<String, Value> =
        d.headers.iter().map(|(k, val)| (k.clone(), json!(val))).collect();
    v["request"] = json!({"body": d.body, "headers": headers});
    v
}

fn dispatch_not_found() -> ApiError {
    ApiError::NotFound("Webhook dispatch was not found".into())
}

/// `POST /v2/webhooks/{id}/test`: a TEST dispatch with a dummy resource; any body is ignored.
pub async fn test(state: &ApiState, user: &User, id: String) -> Result<Resp, ApiError> {
    let Some((w, _)) = state.store.get_webhook(user.id.clone(), id).await? else {
        return Err(not_found());
    };
    let now_ms = crate::sys::now_ms();
    let resource = json!({
        "message": "This is a test dispatch from hookd.",
        "webhookId": w.id,
    });
    let parts = EventParts::new(
        &user.id,
        now_ms,
        EventType::Test,
        Value::Null,
        RawJson::from_value(&resource),
    );
    let dispatch_id =
        crate::sys::new_time_id(now_ms).map_err(|e| ApiError::Internal(e.to_string()))?;
    let d = state.renderer.dispatch(dispatch_id, &w, &parts, now_ms);
    let event = NewEvent {
        id: crate::sys::new_time_id(now_ms).map_err(|e| ApiError::Internal(e.to_string()))?,
        user_id: user.id.clone(),
        created_ms: now_ms,
        event_type: EventType::Test,
        idempotency_key: None,
        record_json: None,
        dispatches: vec![d.clone()],
    };
    let answers = state.store.ingest(vec![event], None).await?;
    // The webhook was deleted in between: nothing was created.
    if answers.first().is_none_or(|a| a.dispatch_ids.is_empty()) {
        return Err(not_found());
    }
    Ok(json_response(StatusCode::CREATED, &json!({"data": dispatch_json(&d)})))
}

pub async fn list(
    state: &ApiState,
    user: &User,
    scope: DispatchScope,
    query: &Query,
) -> Result<Resp, ApiError> {
    let page = query.page(LIST_LIMIT_MAX)?;
    let filter = dispatch_filter(query)?;
    if let DispatchScope::Webhook(id) = &scope
        && state.store.get_webhook(user.id.clone(), id.clone()).await?.is_none()
    {
        return Err(not_found());
    }
    let result = state.store.list_dispatches(user.id.clone(), scope, filter, page).await?;
    Ok(page_response(result.total, &page, result.items.iter().map(dispatch_json).collect()))
}

/// hookd's filters on the dispatch lists: `status` and `eventType` (empty: no filter).
fn dispatch_filter(query: &Query) -> Result<DispatchFilter, ApiError> {
    let status = match query.get("status") {
        None | Some("") => None,
        Some(v) => Some(
            [DispatchStatus::Active, DispatchStatus::Succeeded, DispatchStatus::Failed]
                .into_iter()
                .find(|s| s.as_str() == v)
                .ok_or_else(|| {
                    ApiError::InvalidInput(format!(
                        "Query parameter \"status\" must be one of ACTIVE, SUCCEEDED, FAILED (got \"{v}\")"
                    ))
                })?,
        ),
    };
    let event_type = match query.get("eventType") {
        None | Some("") => None,
        Some("TEST") => Some(EventType::Test),
        Some(v) => Some(EventType::parse_subscribable(v).ok_or_else(|| {
            ApiError::InvalidInput(format!(
                "Query parameter \"eventType\" must be an event type such as ACTOR.RUN.SUCCEEDED, or TEST (got \"{v}\")"
            ))
        })?),
    };
    Ok(DispatchFilter { status, event_type })
}

pub async fn get(state: &ApiState, user: &User, id: String) -> Result<Resp, ApiError> {
    match state.store.get_dispatch(user.id.clone(), id).await? {
        Some(d) => {
            Ok(json_response(StatusCode::OK, &json!({"data": dispatch_with_request_json(&d)})))
        }
        None => Err(dispatch_not_found()),
    }
}

/// `POST /v2/webhook-dispatches/{id}/redeliver` (hookd's): an ended dispatch is delivered
/// again, the same bytes, due now with its retry schedule restarted; 409 while it is ACTIVE or
/// once its webhook is deleted.
pub async fn redeliver(state: &ApiState, user: &User, id: String) -> Result<Resp, ApiError> {
    let now_ms = crate::sys::now_ms();
    state.store.redeliver(user.id.clone(), id.clone(), now_ms).await.map_err(|e| match e {
        crate::store::StoreError::NotFound => dispatch_not_found(),
        other => other.into(),
    })?;
    match state.store.get_dispatch(user.id.clone(), id).await? {
        Some(d) => Ok(json_response(StatusCode::OK, &json!({"data": dispatch_json(&d)}))),
        None => Err(dispatch_not_found()),
    }
}
