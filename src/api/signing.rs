//! hookd's signing-key routes: `GET /v2/webhooks/{id}/signing-secret` and
//! `POST /v2/webhooks/{id}/signing-secret/rotate` (optional body `{"key": "whsec_..."}`).
//! The key is shown only here, never in the webhook object, a list, a dispatch or a log.

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper::Response;
use serde_json::{Value, json};

use super::ApiState;
use super::body::json_response;
use super::error::ApiError;
use crate::config::User;
use crate::delivery::signing::{parse_secret, secret_text};
use crate::model::FieldError;
use crate::store::StoreError;

type Resp = Response<Full<Bytes>>;

pub async fn get(state: &ApiState, user: &User, id: String) -> Result<Resp, ApiError> {
    match state.store.signing_keys(user.id.clone(), id).await? {
        Some(keys) => Ok(key_response(&keys.current)),
        None => Err(super::webhooks::not_found()),
    }
}

pub async fn rotate(
    state: &ApiState,
    user: &User,
    id: String,
    body: &[u8],
) -> Result<Resp, ApiError> {
    let key = given_key(body)?;
    let keys = state
        .store
        .rotate_signing_key(
            user.id.clone(),
            id,
            key,
            crate::sys::now_ms(),
            state.signing_rotation_overlap_ms,
        )
        .await
        .map_err(|e| match e {
            StoreError::NotFound => super::webhooks::not_found(),
            other => other.into(),
        })?;
    Ok(key_response(&keys.current))
}

fn key_response(key: &[u8]) -> Resp {
    json_response(StatusCode::OK, &json!({"data": {"key": secret_text(key)}}))
}

/// The key a rotate body names; `None` for no body (a new random key).
fn given_key(body: &[u8]) -> Result<Option<Vec<u8>>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let fields = super::body::json_object(body)?;
    match fields.get("key") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => {
            parse_secret(text).map(Some).map_err(|reason| FieldError::new("key", reason).into())
        }
        Some(_) => Err(FieldError::new("key", "must be a string").into()),
    }
}
