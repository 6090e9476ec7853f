//! API errors: each maps to a status and an Apify error body `{"error": {"type", "message"}}`.
//! Internal errors are logged with a request id and answered with an opaque 500.

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper::Response;

use super::body::json_response;
use crate::model::FieldError;
use crate::store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    /// 400 `invalid-request`: the body is not JSON, or not the JSON shape required.
    InvalidRequest(String),
    /// 400 `invalid-input`: a field breaks a rule.
    InvalidInput(String),
    TokenNotProvided,
    InvalidToken,
    NotFound(String),
    MethodNotAllowed(String),
    /// 409 with the given error type.
    Conflict(&'static str, String),
    TooLarge(usize),
    /// A configured budget was hit: the message names the limit and its value.
    Limit {
        status: StatusCode,
        kind: &'static str,
        message: String,
    },
    UnsupportedEncoding(String),
    RequestTimeout,
    /// 503: the store refuses writes (shutting down, or stopped by a storage error).
    Unavailable(String),
    Internal(String),
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> ApiError {
        ApiError::InvalidInput(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound => ApiError::NotFound("Webhook was not found".into()),
            StoreError::Invalid(f) => f.into(),
            StoreError::Conflict => ApiError::Conflict(
                "concurrent-modification",
                "The record was changed by another request; retry".into(),
            ),
            StoreError::Refused(m) => ApiError::Conflict("invalid-state", m),
            StoreError::TooManyWebhooks(max) => ApiError::Limit {
                status: StatusCode::BAD_REQUEST,
                kind: "too-many-webhooks",
                message: format!(
                    "You have reached the limit of {max} webhooks (limits.webhooks_per_user_max); delete some before creating more"
                ),
            },
            StoreError::Busy => ApiError::Unavailable("The server is busy; retry later".into()),
            StoreError::Unavailable => {
                ApiError::Unavailable("The store does not accept writes at the moment".into())
            }
            e @ StoreError::Failed(_) => ApiError::Unavailable(format!(
                "{e}; this write may or may not have been stored, so retry it (with its idempotencyKey) once hookd is back"
            )),
            StoreError::Storage(m) | StoreError::Corrupt(m) => ApiError::Internal(m),
            // Answered by matching again (api/events.rs); reaching here is a bug.
            e @ StoreError::StaleIndex => ApiError::Internal(e.to_string()),
        }
    }
}

impl ApiError {
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let (status, kind, message) = match self {
            ApiError::InvalidRequest(m) => (StatusCode::BAD_REQUEST, "invalid-request", m),
            ApiError::InvalidInput(m) => (StatusCode::BAD_REQUEST, "invalid-input", m),
            ApiError::TokenNotProvided => (
                StatusCode::UNAUTHORIZED,
                "token-not-provided",
                "Authentication token was not provided".into(),
            ),
            ApiError::InvalidToken => (
                StatusCode::UNAUTHORIZED,
                "invalid-token",
                "Authentication token is not valid".into(),
            ),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "record-not-found", m),
            ApiError::MethodNotAllowed(allowed) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                format!(
                    "This API endpoint can only be accessed using the following HTTP methods: {allowed}"
                ),
            ),
            ApiError::Conflict(kind, m) => (StatusCode::CONFLICT, kind, m),
            ApiError::Limit { status, kind, message } => (status, kind, message),
            ApiError::TooLarge(max) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "request-too-large",
                format!("The request body is larger than the limit of {max} bytes"),
            ),
            ApiError::UnsupportedEncoding(enc) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-content-encoding",
                format!(
                    "Content-Encoding {enc:?} is not supported; use gzip, br, deflate or identity"
                ),
            ),
            ApiError::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                "The request body did not arrive in time".into(),
            ),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "service-unavailable", m),
            ApiError::Internal(detail) => {
                let request_id = crate::sys::new_id().unwrap_or_default();
                tracing::error!(%request_id, %detail, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal-server-error",
                    format!("Internal server error (request id {request_id})"),
                )
            }
        };
        let body = serde_json::json!({"error": {"type": kind, "message": message}});
        json_response(status, &body)
    }
}
