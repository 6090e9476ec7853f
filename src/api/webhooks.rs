//! The webhook routes: request fields checked one by one into model types, and the Apify
//! webhook object out.

use bytes::Bytes;
use http::{StatusCode, header};
use http_body_util::Full;
use hyper::Response;
use serde_json::{Map, Value, json};

use super::body::{empty_response, json_response, page_response};
use super::error::ApiError;
use super::routes::Query;
use super::{ApiState, LIST_LIMIT_MAX};
use crate::config::{Limits, User};
use crate::model::{
    Change, Condition, ConditionKind, EventType, FieldError, Webhook, WebhookDraft, WebhookPatch,
    WebhookStats, format_timestamp_ms,
};
use crate::store::WebhookScope;
use crate::template::Template;

const REQUEST_URL_CHARS_MAX: usize = 500;
const DESCRIPTION_CHARS_MAX: usize = 320;
const IDEMPOTENCY_KEY_CHARS_MAX: usize = 128;
const CONDITION_ID_CHARS_MAX: usize = 128;

type Resp = Response<Full<Bytes>>;

pub async fn list(
    state: &ApiState,
    user: &User,
    scope: WebhookScope,
    query: &Query,
) -> Result<Resp, ApiError> {
    let page = query.page(LIST_LIMIT_MAX)?;
    let result = state.store.list_webhooks(user.id.clone(), scope, page).await?;
    Ok(page_response(
        result.total,
        &page,
        result.items.iter().map(|(w, s)| webhook_json(w, s, false)).collect(),
    ))
}

pub async fn get(state: &ApiState, user: &User, id: String) -> Result<Resp, ApiError> {
    match state.store.get_webhook(user.id.clone(), id).await? {
        Some((w, s)) => {
            Ok(json_response(StatusCode::OK, &json!({"data": webhook_json(&w, &s, true)})))
        }
        None => Err(not_found()),
    }
}

pub fn not_found() -> ApiError {
    ApiError::NotFound("Webhook was not found".into())
}

/// `POST /v2/webhooks`, or a scoped create whose condition defaults from the path.
pub async fn create(
    state: &ApiState,
    user: &User,
    body: Map<String, Value>,
    scope: Option<(ConditionKind, String)>,
) -> Result<Resp, ApiError> {
    let draft = parse_create(&body, scope, &state.limits)?;
    let id = crate::sys::new_id().map_err(|e| ApiError::Internal(e.to_string()))?;
    let webhook = Webhook::create(id, user.id.clone(), draft, crate::sys::now_ms())?;
    let created = state.store.create_webhook(webhook, state.limits.webhooks_per_user_max).await?;
    let location = format!("/v2/webhooks/{}", created.webhook.id);
    let mut resp = json_response(
        StatusCode::CREATED,
        &json!({"data": webhook_json(&created.webhook, &created.stats, true)}),
    );
    if let Ok(v) = header::HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

pub async fn update(
    state: &ApiState,
    user: &User,
    id: String,
    body: Map<String, Value>,
) -> Result<Resp, ApiError> {
    let patch = parse_patch(&body, &state.limits)?;
    // Templates are checked against the flag they will be rendered with, which may be the
    // stored one. (A concurrent update that flips the flag in between is not re-checked.)
    let touches_templates = patch.payload_template != Change::Keep
        || patch.headers_template != Change::Keep
        || patch.should_interpolate_strings != Change::Keep;
    if touches_templates {
        let Some((current, _)) = state.store.get_webhook(user.id.clone(), id.clone()).await? else {
            return Err(not_found());
        };
        let interpolate = match patch.should_interpolate_strings {
            Change::Keep => current.should_interpolate_strings,
            Change::Reset => false,
            Change::Set(b) => b,
        };
        let payload = match &patch.payload_template {
            Change::Keep => Some(current.payload_template.as_str()),
            Change::Reset => None,
            Change::Set(t) => Some(t.as_str()),
        };
        let headers = match &patch.headers_template {
            Change::Keep => current.headers_template.as_deref(),
            Change::Reset => None,
            Change::Set(t) => Some(t.as_str()),
        };
        check_templates(payload, headers, interpolate, &state.limits)?;
    }
    let (w, s) = state
        .store
        .update_webhook(user.id.clone(), id, patch, crate::sys::now_ms())
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound => not_found(),
            other => other.into(),
        })?;
    Ok(json_response(StatusCode::OK, &json!({"data": webhook_json(&w, &s, true)})))
}

pub async fn delete(state: &ApiState, user: &User, id: String) -> Result<Resp, ApiError> {
    state.store.delete_webhook(user.id.clone(), id, crate::sys::now_ms()).await.map_err(
        |e| match e {
            crate::store::StoreError::NotFound => not_found(),
            other => other.into(),
        },
    )?;
    Ok(empty_response(StatusCode::NO_CONTENT))
}

/// A condition as JSON: only the keys it has.
pub fn condition_json(c: &Condition) -> Value {
    let mut condition = Map::new();
    if let Some(v) = &c.actor_id {
        condition.insert("actorId".into(), json!(v));
    }
    if let Some(v) = &c.actor_task_id {
        condition.insert("actorTaskId".into(), json!(v));
    }
    if let Some(v) = &c.actor_run_id {
        condition.insert("actorRunId".into(), json!(v));
    }
    Value::Object(condition)
}

/// The Apify webhook object; list items leave out the templates.
pub fn webhook_json(w: &Webhook, stats: &WebhookStats, full: bool) -> Value {
    let last_dispatch = stats.last_dispatch.as_ref().map(|l| {
        json!({
            "status": l.status.as_str(),
            "finishedAt": l.finished_ms.map(format_timestamp_ms),
            "removedAt": null,
        })
    });
    let mut o = Map::new();
    o.insert("id".into(), json!(w.id));
    o.insert("createdAt".into(), json!(format_timestamp_ms(w.created_ms)));
    o.insert("modifiedAt".into(), json!(format_timestamp_ms(w.modified_ms)));
    o.insert("userId".into(), json!(w.user_id));
    o.insert("isAdHoc".into(), json!(w.is_ad_hoc));
    o.insert("shouldInterpolateStrings".into(), json!(w.should_interpolate_strings));
    o.insert(
        "eventTypes".into(),
        Value::Array(w.event_types.iter().map(|t| json!(t.as_str())).collect()),
    );
    o.insert("condition".into(), condition_json(&w.condition));
    o.insert("ignoreSslErrors".into(), json!(w.ignore_ssl_errors));
    o.insert("doNotRetry".into(), json!(w.do_not_retry));
    o.insert("requestUrl".into(), json!(w.request_url));
    if full {
        o.insert("payloadTemplate".into(), json!(w.payload_template));
        o.insert("headersTemplate".into(), json!(w.headers_template));
    }
    o.insert("description".into(), json!(w.description));
    o.insert("isEnabled".into(), json!(w.is_enabled));
    o.insert("actionType".into(), json!("HTTP_REQUEST"));
    o.insert("isApifyIntegration".into(), json!(false));
    o.insert("lastDispatch".into(), last_dispatch.unwrap_or(Value::Null));
    o.insert("stats".into(), json!({"totalDispatches": stats.total_dispatches}));
    Value::Object(o)
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ApiError {
    FieldError::new(field, reason).into()
}

/// A field's value: absent and `null` are both `None`.
fn field<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.get(name).filter(|v| !v.is_null())
}

fn change<T>(
    body: &Map<String, Value>,
    name: &'static str,
    parse: impl FnOnce(&Value) -> Result<T, ApiError>,
) -> Result<Change<T>, ApiError> {
    match body.get(name) {
        None => Ok(Change::Keep),
        Some(Value::Null) => Ok(Change::Reset),
        Some(v) => parse(v).map(Change::Set),
    }
}

fn bool_of(name: &'static str) -> impl Fn(&Value) -> Result<bool, ApiError> {
    move |v| v.as_bool().ok_or_else(|| invalid(name, "must be a boolean"))
}

fn string_of(name: &'static str, chars_max: usize) -> impl Fn(&Value) -> Result<String, ApiError> {
    move |v| {
        let s = v.as_str().ok_or_else(|| invalid(name, "must be a string"))?;
        if s.chars().count() > chars_max {
            return Err(invalid(name, format!("must be at most {chars_max} characters long")));
        }
        Ok(s.to_string())
    }
}

fn event_types_of(v: &Value) -> Result<Vec<EventType>, ApiError> {
    let items = v.as_array().ok_or_else(|| invalid("eventTypes", "must be an array of strings"))?;
    if items.is_empty() {
        return Err(invalid("eventTypes", "must list at least one event type"));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let s =
            item.as_str().ok_or_else(|| invalid("eventTypes", "must be an array of strings"))?;
        let t = EventType::parse_subscribable(s).ok_or_else(|| {
            invalid(
                "eventTypes",
                format!(
                    "contains {s:?}, which is not one of {}",
                    EventType::SUBSCRIBABLE.map(|t| t.as_str()).join(", ")
                ),
            )
        })?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

fn condition_of(v: &Value) -> Result<Condition, ApiError> {
    let m = v.as_object().ok_or_else(|| invalid("condition", "must be an object"))?;
    let id = |key: &'static str, field_name: &'static str| -> Result<Option<String>, ApiError> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s))
                if !s.is_empty() && s.chars().count() <= CONDITION_ID_CHARS_MAX =>
            {
                Ok(Some(s.clone()))
            }
            Some(_) => Err(invalid(
                field_name,
                format!(
                    "must be a non-empty string of at most {CONDITION_ID_CHARS_MAX} characters"
                ),
            )),
        }
    };
    let c = Condition {
        actor_id: id("actorId", "condition.actorId")?,
        actor_task_id: id("actorTaskId", "condition.actorTaskId")?,
        actor_run_id: id("actorRunId", "condition.actorRunId")?,
    };
    if c.is_empty() {
        return Err(invalid(
            "condition",
            "must have at least one of actorId, actorTaskId, actorRunId",
        ));
    }
    Ok(c)
}

/// An absolute http or https URL with a host; no spaces or control characters.
fn request_url_of(v: &Value) -> Result<String, ApiError> {
    const RULE: &str = "must be an absolute http or https URL";
    let s = string_of("requestUrl", REQUEST_URL_CHARS_MAX)(v)?;
    if s.bytes().any(|b| b <= b' ' || b == 0x7f) || !s.is_ascii() {
        return Err(invalid("requestUrl", RULE));
    }
    let lower = s.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .ok_or_else(|| invalid("requestUrl", RULE))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let (inside, after) = v6.split_once(']').ok_or_else(|| invalid("requestUrl", RULE))?;
        if inside.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(invalid("requestUrl", RULE));
        }
        (inside, after.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    let host_ok = !host.is_empty()
        && (host_port.starts_with('[')
            || host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)));
    let port_ok = port.is_none_or(|p| p.is_empty() || p.parse::<u16>().is_ok());
    if !host_ok || !port_ok {
        return Err(invalid("requestUrl", RULE));
    }
    // What the sender will parse: a URL it cannot parse would fail at every call.
    let uri: http::Uri = s.parse().map_err(|_| invalid("requestUrl", RULE))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("requestUrl", RULE));
    }
    Ok(s)
}

fn check_templates(
    payload: Option<&str>,
    headers: Option<&str>,
    interpolate: bool,
    limits: &Limits,
) -> Result<(), ApiError> {
    let variables_max = limits.template_variables_max;
    let too_many = |name: &'static str, n: usize| {
        invalid(
            name,
            format!(
                "has {n} variables; at most {variables_max} are allowed (limits.template_variables_max)"
            ),
        )
    };
    if let Some(t) = payload {
        let parsed = Template::parse(t, interpolate)
            .map_err(|e| invalid("payloadTemplate", format!("is not a valid template: {e}")))?;
        if parsed.variable_count() > variables_max {
            return Err(too_many("payloadTemplate", parsed.variable_count()));
        }
    }
    if let Some(t) = headers {
        let parsed = Template::parse_headers(t, interpolate)
            .map_err(|e| invalid("headersTemplate", format!("is not a valid template: {e}")))?;
        if parsed.variable_count() > variables_max {
            return Err(too_many("headersTemplate", parsed.variable_count()));
        }
    }
    Ok(())
}

/// `""` means "not set" for both templates.
fn template_of(
    name: &'static str,
    bytes_max: usize,
) -> impl Fn(&Value) -> Result<Option<String>, ApiError> {
    move |v| {
        let s = v.as_str().ok_or_else(|| invalid(name, "must be a string"))?;
        if s.len() > bytes_max {
            return Err(invalid(
                name,
                format!(
                    "is {} bytes long; at most {bytes_max} bytes are allowed (limits.template_bytes_max)",
                    s.len()
                ),
            ));
        }
        Ok(if s.is_empty() { None } else { Some(s.to_string()) })
    }
}

fn parse_create(
    body: &Map<String, Value>,
    scope: Option<(ConditionKind, String)>,
    limits: &Limits,
) -> Result<WebhookDraft, ApiError> {
    let template_bytes_max = limits.template_bytes_max;
    let event_types = match field(body, "eventTypes") {
        Some(v) => event_types_of(v)?,
        None => return Err(invalid("eventTypes", "is required")),
    };
    let mut condition = match (field(body, "condition"), &scope) {
        (Some(v), _) => {
            if let (Some(m), Some(_)) = (v.as_object(), &scope) {
                // The path supplies the key: a body condition may be otherwise empty.
                if m.values().all(Value::is_null) { Condition::default() } else { condition_of(v)? }
            } else {
                condition_of(v)?
            }
        }
        (None, Some(_)) => Condition::default(),
        (None, None) => return Err(invalid("condition", "is required")),
    };
    if let Some((kind, id)) = scope {
        let slot = match kind {
            ConditionKind::Actor => &mut condition.actor_id,
            ConditionKind::ActorTask => &mut condition.actor_task_id,
            ConditionKind::ActorRun => &mut condition.actor_run_id,
        };
        slot.get_or_insert(id);
    }
    let request_url = match field(body, "requestUrl") {
        Some(v) => request_url_of(v)?,
        None => return Err(invalid("requestUrl", "is required")),
    };
    let opt_bool = |name: &'static str| field(body, name).map(bool_of(name)).transpose();
    let should_interpolate_strings = opt_bool("shouldInterpolateStrings")?.unwrap_or(false);
    let payload_template = field(body, "payloadTemplate")
        .map(template_of("payloadTemplate", template_bytes_max))
        .transpose()?
        .flatten();
    let headers_template = field(body, "headersTemplate")
        .map(template_of("headersTemplate", template_bytes_max))
        .transpose()?
        .flatten();
    check_templates(
        Some(payload_template.as_deref().unwrap_or(crate::model::DEFAULT_PAYLOAD_TEMPLATE)),
        headers_template.as_deref(),
        should_interpolate_strings,
        limits,
    )?;
    let idempotency_key = field(body, "idempotencyKey")
        .map(string_of("idempotencyKey", IDEMPOTENCY_KEY_CHARS_MAX))
        .transpose()?;
    if idempotency_key.as_deref() == Some("") {
        return Err(invalid("idempotencyKey", "must not be empty"));
    }
    Ok(WebhookDraft {
        is_ad_hoc: opt_bool("isAdHoc")?.unwrap_or(false),
        event_types,
        condition,
        ignore_ssl_errors: opt_bool("ignoreSslErrors")?.unwrap_or(false),
        do_not_retry: opt_bool("doNotRetry")?.unwrap_or(false),
        request_url,
        payload_template,
        headers_template,
        description: field(body, "description")
            .map(string_of("description", DESCRIPTION_CHARS_MAX))
            .transpose()?,
        should_interpolate_strings,
        idempotency_key,
        is_enabled: opt_bool("isEnabled")?.unwrap_or(true),
    })
}

fn parse_patch(body: &Map<String, Value>, limits: &Limits) -> Result<WebhookPatch, ApiError> {
    // An empty template means "back to the default", like null.
    let template = |name: &'static str| -> Result<Change<String>, ApiError> {
        Ok(match change(body, name, template_of(name, limits.template_bytes_max))? {
            Change::Set(None) => Change::Reset,
            Change::Set(Some(t)) => Change::Set(t),
            Change::Keep => Change::Keep,
            Change::Reset => Change::Reset,
        })
    };
    Ok(WebhookPatch {
        is_ad_hoc: change(body, "isAdHoc", bool_of("isAdHoc"))?,
        event_types: change(body, "eventTypes", event_types_of)?,
        condition: change(body, "condition", condition_of)?,
        ignore_ssl_errors: change(body, "ignoreSslErrors", bool_of("ignoreSslErrors"))?,
        do_not_retry: change(body, "doNotRetry", bool_of("doNotRetry"))?,
        request_url: change(body, "requestUrl", request_url_of)?,
        payload_template: template("payloadTemplate")?,
        headers_template: template("headersTemplate")?,
        description: change(body, "description", string_of("description", DESCRIPTION_CHARS_MAX))?,
        should_interpolate_strings: change(
            body,
            "shouldInterpolateStrings",
            bool_of("shouldInterpolateStrings"),
        )?,
        is_enabled: change(body, "isEnabled", bool_of("isEnabled"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_urls() {
        for ok in [
            "http://a.com",
            "https://example.com/hook?x=1#f",
            "http://127.0.0.1:8080/x",
            "https://user:pw@host.io:443/",
            "http://[::1]:9/x",
            "HTTP://EXAMPLE.COM/",
        ] {
            assert!(request_url_of(&json!(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/relative",
            "ftp://x.com",
            "http://",
            "http:///x",
            "http://a b.com",
            "javascript:alert(1)",
            "http://x.com:99999/",
            "http://[zz]/",
            "https://ex\u{e9}.com",
            "http://x.com/\n",
            "http://127.0.0.1:8080\\@evil/",
            "http://a.com\\x",
        ] {
            assert!(request_url_of(&json!(bad)).is_err(), "{bad:?}");
        }
        let long = format!("http://x.com/{}", "a".repeat(500));
        assert!(request_url_of(&json!(long)).is_err());
    }
}
