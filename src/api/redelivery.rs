//! hookd's bulk redelivery: `POST /v2/webhooks/{id}/redeliver` with an optional body
//! `{"status": "FAILED" | "SUCCEEDED", "since": ISO, "until": ISO}` (status FAILED, the whole
//! history by default) makes the webhook's matching dispatches ACTIVE again, due at once, and
//! answers `{"data": {"count": N}}` once all are.

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper::Response;
use serde_json::{Map, Value, json};

use super::ApiState;
use super::body::json_response;
use super::error::ApiError;
use crate::config::User;
use crate::model::{DispatchStatus, FieldError, parse_timestamp_ms};
use crate::store::StoreError;

type Resp = Response<Full<Bytes>>;

/// What to redeliver: dispatches in `status` created from `since_ms` to `until_ms`.
#[derive(Debug, PartialEq, Eq)]
pub struct Selection {
    pub status: DispatchStatus,
    pub since_ms: u64,
    pub until_ms: u64,
}

pub async fn redeliver_all(
    state: &ApiState,
    user: &User,
    id: String,
    body: &[u8],
) -> Result<Resp, ApiError> {
    let now_ms = crate::sys::now_ms();
    let fields = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        super::body::json_object(body)?
    };
    let s = selection(&fields, now_ms)?;
    let count = state
        .store
        .redeliver_all(user.id.clone(), id, s.status, (s.since_ms, s.until_ms), now_ms)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => super::webhooks::not_found(),
            other => other.into(),
        })?;
    Ok(json_response(StatusCode::OK, &json!({"data": {"count": count}})))
}

/// The body's fields checked: a status of an ended dispatch, times in ISO-8601, `since` not
/// after `until`; `until` defaults to `now_ms`.
pub fn selection(fields: &Map<String, Value>, now_ms: u64) -> Result<Selection, ApiError> {
    if let Some(name) = fields.keys().find(|k| !matches!(k.as_str(), "status" | "since" | "until"))
    {
        return Err(ApiError::InvalidInput(format!(
            "Field {name} is not a field of a redelivery (status, since, until)"
        )));
    }
    let status = match fields.get("status") {
        None | Some(Value::Null) => DispatchStatus::Failed,
        Some(Value::String(s)) if s == "FAILED" => DispatchStatus::Failed,
        Some(Value::String(s)) if s == "SUCCEEDED" => DispatchStatus::Succeeded,
        Some(_) => return Err(FieldError::new("status", "must be FAILED or SUCCEEDED").into()),
    };
    let time = |name: &'static str, default: u64| match fields.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::String(s)) => parse_timestamp_ms(s).ok_or_else(|| {
            FieldError::new(name, "must be an ISO-8601 time such as 2026-12-01T00:00:00.000Z")
        }),
        Some(_) => Err(FieldError::new(name, "must be an ISO-8601 time string")),
    };
    let since_ms = time("since", 0).map_err(ApiError::from)?;
    let until_ms = time("until", now_ms).map_err(ApiError::from)?;
    if since_ms > until_ms {
        return Err(FieldError::new("since", "must not be after until").into());
    }
    Ok(Selection { status, since_ms, until_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_selection_defaults_to_every_failed_dispatch_until_now() {
        let s = selection(&Map::new(), 5_000).unwrap();
        assert_eq!(s, Selection { status: DispatchStatus::Failed, since_ms: 0, until_ms: 5_000 });
        let s = selection(
            &fields(json!({"status": "SUCCEEDED", "since": "1970-01-01T00:00:01.000Z",
                "until": "1970-01-01T00:00:02Z"})),
            0,
        )
        .unwrap();
        assert_eq!(
            s,
            Selection { status: DispatchStatus::Succeeded, since_ms: 1000, until_ms: 2000 }
        );
    }

    #[test]
    fn a_bad_selection_names_its_field() {
        for (body, field) in [
            (json!({"status": "ACTIVE"}), "status"),
            (json!({"status": 1}), "status"),
            (json!({"since": "yesterday"}), "since"),
            (json!({"until": 5}), "until"),
            (json!({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}), "since"),
            (json!({"statuses": ["FAILED"]}), "statuses"),
        ] {
            let e = selection(&fields(body.clone()), 0).unwrap_err();
            assert!(format!("{e:?}").contains(field), "{body}: {e:?}");
        }
    }
}
