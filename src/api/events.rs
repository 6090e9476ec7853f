//! hookd's own routes for job events: `POST /v2/webhook-events` (one event or an array, all
//! or nothing) and the run and build state reports `PUT`/`GET /v2/actor-runs/{id}` and
//! `/v2/actor-builds/{id}`, which raise the events a status change implies.

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper::Response;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::ApiState;
use super::body::budget_spent;
use super::body::json_response;
use super::budget::Charge;
use super::error::ApiError;
use super::render::{EventParts, Renderer};
use crate::config::User;
use crate::model::{
    EventData, EventType, FieldError, JOB_STATUSES, JobKind, Webhook, format_timestamp_ms,
    job_transition_events, parse_timestamp_ms,
};
use crate::store::{EventAnswer, JobReport, NewEvent, StoreError};

type Resp = Response<Full<Bytes>>;

/// Events in one ingest request.
pub const EVENTS_PER_REQUEST_MAX: usize = 1000;
const ID_CHARS_MAX: usize = 128;
const IDEMPOTENCY_KEY_CHARS_MAX: usize = 128;
/// A job report retries this often when another report for the same job wins the race.
const JOB_REPORT_ATTEMPTS_MAX: usize = 8;

/// One validated event.
struct Incoming {
    event_type: EventType,
    data: EventData,
    data_json: Value,
    resource: Value,
    /// The most bytes one template variable of this event can render to: the compact JSON of
    /// its resource or eventData, whichever is larger.
    value_bytes_max: usize,
    created_ms: u64,
    idempotency_key: Option<String>,
}

fn invalid(prefix: &str, field: &'static str, reason: impl Into<String>) -> ApiError {
    ApiError::InvalidInput(format!("{prefix}{}", FieldError::new(field, reason)))
}

fn id_field(
    m: &Map<String, Value>,
    key: &str,
    field: &'static str,
    required: bool,
    prefix: &str,
) -> Result<Option<String>, ApiError> {
    match m.get(key) {
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= ID_CHARS_MAX => {
            Ok(Some(s.clone()))
        }
        None | Some(Value::Null) if !required => Ok(None),
        None | Some(Value::Null) => Err(invalid(prefix, field, "is required")),
        Some(_) => Err(invalid(
            prefix,
            field,
            format!("must be a non-empty string of at most {ID_CHARS_MAX} characters"),
        )),
    }
}

/// `eventData` for a run or build event, and its canonical JSON (Apify's key order; a run's
/// `actorTaskId` only when it came from a task).
fn event_data(kind: JobKind, data: &EventData) -> Value {
    let mut m = Map::new();
    m.insert("actorId".into(), json!(data.actor_id));
    match kind {
        JobKind::Run => {
            if let Some(t) = &data.actor_task_id {
                m.insert("actorTaskId".into(), json!(t));
            }
            m.insert("actorRunId".into(), json!(data.actor_run_id));
        }
        JobKind::Build => {
            m.insert("actorBuildId".into(), json!(data.actor_build_id));
        }
    }
    Value::Object(m)
}

fn kind_of(t: EventType) -> JobKind {
    match t {
        EventType::BuildCreated
        | EventType::BuildSucceeded
        | EventType::BuildFailed
        | EventType::BuildAborted
        | EventType::BuildTimedOut => JobKind::Build,
        _ => JobKind::Run,
    }
}

/// Bytes of the default payload besides the resource and eventData it copies: the keys, the
/// user id, the time and the event type (generously).
const DEFAULT_PAYLOAD_OVERHEAD_BYTES: usize = 512;

/// The length of `v`'s compact JSON, without building the text.
fn json_len(v: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// How many bytes one variable of the event can render to; refuses (413) an event whose
/// default payload, which copies its resource and eventData whole, could not be rendered
/// within `output_bytes_max`: better refused now than accepted and FAILED at once.
fn value_bytes_max(
    prefix: &str,
    data_json: &Value,
    resource: &Value,
    output_bytes_max: usize,
) -> Result<usize, ApiError> {
    let (data_bytes, resource_bytes) = (json_len(data_json), json_len(resource));
    if resource_bytes + data_bytes + DEFAULT_PAYLOAD_OVERHEAD_BYTES > output_bytes_max {
        return Err(ApiError::Limit {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "request-too-large",
            message: format!(
                "{prefix}The resource is {resource_bytes} bytes of JSON, so the default payload would be larger than the render limit of {output_bytes_max} bytes (limits.template_output_bytes_max). Nothing was stored"
            ),
        });
    }
    Ok(resource_bytes.max(data_bytes).max(DEFAULT_PAYLOAD_OVERHEAD_BYTES))
}

fn parse_event(
    v: &Value,
    prefix: &str,
    now_ms: u64,
    output_bytes_max: usize,
) -> Result<Incoming, ApiError> {
    let Some(m) = v.as_object() else {
        return Err(ApiError::InvalidRequest(format!("{prefix}An event must be a JSON object")));
    };
    let event_type = match m.get("eventType") {
        Some(Value::String(s)) => EventType::parse_subscribable(s).ok_or_else(|| {
            invalid(
                prefix,
                "eventType",
                format!("is {s:?}, which is not a run or build event type"),
            )
        })?,
        None | Some(Value::Null) => return Err(invalid(prefix, "eventType", "is required")),
        Some(_) => return Err(invalid(prefix, "eventType", "must be a string")),
    };
    let kind = kind_of(event_type);
    let Some(dm) = m.get("eventData").and_then(Value::as_object) else {
        return Err(invalid(prefix, "eventData", "must be an object"));
    };
    let actor_id = id_field(dm, "actorId", "eventData.actorId", true, prefix)?.unwrap_or_default();
    let data = match kind {
        JobKind::Run => EventData {
            actor_id,
            actor_task_id: id_field(dm, "actorTaskId", "eventData.actorTaskId", false, prefix)?,
            actor_run_id: id_field(dm, "actorRunId", "eventData.actorRunId", true, prefix)?,
            actor_build_id: None,
        },
        JobKind::Build => EventData {
            actor_id,
            actor_build_id: id_field(dm, "actorBuildId", "eventData.actorBuildId", true, prefix)?,
            ..EventData::default()
        },
    };
    let resource = match m.get("resource") {
        None | Some(Value::Null) => Value::Null,
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return Err(invalid(prefix, "resource", "must be an object or null")),
    };
    let created_ms = match m.get("createdAt") {
        None | Some(Value::Null) => now_ms,
        Some(Value::String(s)) => parse_timestamp_ms(s).ok_or_else(|| {
            invalid(
                prefix,
                "createdAt",
                "must be an ISO-8601 time such as 2026-11-22T13:14:15.123Z, with an offset (if any) within ±18:00",
            )
        })?,
        Some(_) => return Err(invalid(prefix, "createdAt", "must be a string")),
    };
    let idempotency_key = match m.get("idempotencyKey") {
        None | Some(Value::Null) => None,
        Some(Value::String(s))
            if !s.is_empty() && s.chars().count() <= IDEMPOTENCY_KEY_CHARS_MAX =>
        {
            Some(s.clone())
        }
        Some(_) => {
            return Err(invalid(
                prefix,
                "idempotencyKey",
                format!("must be a string of 1 to {IDEMPOTENCY_KEY_CHARS_MAX} characters"),
            ));
        }
    };
    let data_json = event_data(kind, &data);
    let value_bytes_max = value_bytes_max(prefix, &data_json, &resource, output_bytes_max)?;
    Ok(Incoming {
        event_type,
        data,
        data_json,
        resource,
        value_bytes_max,
        created_ms,
        idempotency_key,
    })
}

/// Requests whose render is bounded by this many bytes render on their own task; larger ones
/// go to the render pool (a thread hop costs more than rendering a few small payloads).
const INLINE_RENDER_BYTES_MAX: usize = 256 * 1024;

/// Matches and renders events into what the writer stores in one transaction, within the
/// request's budgets: dispatches (checked before any rendering) and rendered bytes (checked
/// as it renders, so an over-budget request stops early).
async fn prepare(
    state: &ApiState,
    user: &User,
    events: Vec<Incoming>,
    charge: Charge,
) -> Result<(Vec<NewEvent>, Charge), ApiError> {
    let keys: Vec<_> = events.iter().map(|e| (e.event_type, e.data.clone())).collect();
    let matches = state.store.match_webhooks(&user.id, &keys);
    let limits = &state.limits;
    let dispatches: usize = matches.iter().map(Vec::len).sum();
    if dispatches > limits.dispatches_per_request_max {
        return Err(ApiError::Limit {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "request-too-large",
            message: format!(
                "This request would create {dispatches} dispatches (events times matching webhooks); at most {} are allowed in one request (limits.dispatches_per_request_max). Nothing was stored",
                limits.dispatches_per_request_max
            ),
        });
    }
    let cost = events
        .iter()
        .zip(&matches)
        .flat_map(|(e, ws)| ws.iter().map(|w| state.renderer.cost_bytes(w, e.value_bytes_max)))
        .fold(0usize, usize::saturating_add);
    let job = RenderJob {
        renderer: state.renderer.clone(),
        user_id: user.id.clone(),
        events,
        matches,
        rendered_bytes_max: limits.rendered_bytes_per_request_max,
        charge,
    };
    if cost <= INLINE_RENDER_BYTES_MAX {
        job.run()
    } else {
        state.render_pool.run(move || job.run()).await.map_err(ApiError::Internal)?
    }
}

/// The rendering of one request's events, runnable on any thread.
struct RenderJob {
    renderer: Arc<Renderer>,
    user_id: String,
    events: Vec<Incoming>,
    matches: Vec<Vec<Arc<Webhook>>>,
    rendered_bytes_max: usize,
    /// The rendered bytes are held until the request is answered: charged here as rendered.
    charge: Charge,
}

/// The stored form of an accepted event (the same keys, in the same order, as the API shows).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventRecord<'a> {
    user_id: &'a str,
    created_at: String,
    event_type: &'a str,
    event_data: &'a Value,
    resource: &'a Value,
}

impl RenderJob {
    fn run(mut self) -> Result<(Vec<NewEvent>, Charge), ApiError> {
        let now_ms = crate::sys::now_ms();
        let mut rendered_bytes = 0usize;
        let mut out = Vec::with_capacity(self.events.len());
        for (e, webhooks) in self.events.into_iter().zip(self.matches) {
            let record = serde_json::to_string(&EventRecord {
                user_id: &self.user_id,
                created_at: format_timestamp_ms(e.created_ms),
                event_type: e.event_type.as_str(),
                event_data: &e.data_json,
                resource: &e.resource,
            })
            .map_err(|err| ApiError::Internal(format!("event record: {err}")))?;
            let parts =
                EventParts::new(&self.user_id, e.created_ms, e.event_type, e.data_json, e.resource);
            let mut dispatches = Vec::with_capacity(webhooks.len());
            for w in &webhooks {
                let d = self.renderer.dispatch(new_id(now_ms)?, w, &parts, now_ms);
                let bytes =
                    d.body.len() + d.headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>();
                rendered_bytes += bytes;
                if rendered_bytes > self.rendered_bytes_max {
                    return Err(ApiError::Limit {
                        status: StatusCode::PAYLOAD_TOO_LARGE,
                        kind: "request-too-large",
                        message: format!(
                            "The dispatches of this request render to more than {} bytes (limits.rendered_bytes_per_request_max). Nothing was stored",
                            self.rendered_bytes_max
                        ),
                    });
                }
                if !self.charge.grow(bytes) {
                    return Err(budget_spent(self.charge.budget_max()));
                }
                dispatches.push(d);
            }
            out.push(NewEvent {
                id: new_id(now_ms)?,
                user_id: self.user_id.clone(),
                created_ms: e.created_ms,
                event_type: e.event_type,
                idempotency_key: e.idempotency_key,
                record_json: Some(record),
                dispatches,
            });
        }
        Ok((out, self.charge))
    }
}

/// A time-ordered id (the store appends dispatches in id order).
fn new_id(now_ms: u64) -> Result<String, ApiError> {
    crate::sys::new_time_id(now_ms).map_err(|e| ApiError::Internal(format!("random source: {e}")))
}

fn answer_json(a: &EventAnswer) -> Value {
    json!({
        "id": a.id,
        "createdAt": format_timestamp_ms(a.created_ms),
        "eventType": a.event_type,
        "dispatchIds": a.dispatch_ids,
    })
}

/// `POST /v2/webhook-events`.
pub async fn ingest(
    state: &ApiState,
    user: &User,
    body: Value,
    charge: Charge,
) -> Result<Resp, ApiError> {
    let now_ms = crate::sys::now_ms();
    let (items, is_array) = match body {
        Value::Array(items) => (items, true),
        v @ Value::Object(_) => (vec![v], false),
        _ => {
            return Err(ApiError::InvalidRequest(
                "The request body must be an event object or an array of them".into(),
            ));
        }
    };
    if items.is_empty() {
        return Err(ApiError::InvalidRequest("The array of events is empty".into()));
    }
    if items.len() > EVENTS_PER_REQUEST_MAX {
        return Err(ApiError::InvalidRequest(format!(
            "At most {EVENTS_PER_REQUEST_MAX} events fit in one request; this one has {}",
            items.len()
        )));
    }
    let mut events = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let prefix = if is_array { format!("Event {i}: ") } else { String::new() };
        events.push(parse_event(item, &prefix, now_ms, state.limits.template_output_bytes_max)?);
    }
    let (prepared, _rendered) = prepare(state, user, events, charge).await?;
    let answers = state.store.ingest(prepared, None).await?;
    let data = if is_array {
        Value::Array(answers.iter().map(answer_json).collect())
    } else {
        answers.first().map(answer_json).unwrap_or(Value::Null)
    };
    Ok(json_response(StatusCode::ACCEPTED, &json!({"data": data})))
}

fn not_found(kind: JobKind) -> ApiError {
    ApiError::NotFound(match kind {
        JobKind::Run => "Actor run was not found".into(),
        JobKind::Build => "Actor build was not found".into(),
    })
}

/// `GET /v2/actor-runs/{id}`, `GET /v2/actor-builds/{id}`.
pub async fn get_job(
    state: &ApiState,
    user: &User,
    kind: JobKind,
    id: String,
) -> Result<Resp, ApiError> {
    let Some(text) = state.store.get_job(user.id.clone(), kind, id).await? else {
        return Err(not_found(kind));
    };
    let object: Value =
        serde_json::from_str(&text).map_err(|e| ApiError::Internal(format!("stored job: {e}")))?;
    Ok(json_response(StatusCode::OK, &json!({"data": object})))
}

/// `PUT /v2/actor-runs/{id}`, `PUT /v2/actor-builds/{id}`: store the job's latest state and
/// raise the events its status change implies (SPEC 4.3), in one transaction.
pub async fn put_job(
    state: &ApiState,
    user: &User,
    kind: JobKind,
    id: String,
    body: Map<String, Value>,
) -> Result<Resp, ApiError> {
    let actor_id = id_field(&body, "actId", "actId", true, "")?.unwrap_or_default();
    let status = match body.get("status") {
        Some(Value::String(s)) if JOB_STATUSES.contains(&s.as_str()) => s.clone(),
        Some(_) => {
            return Err(invalid(
                "",
                "status",
                format!("must be one of {}", JOB_STATUSES.join(", ")),
            ));
        }
        None => return Err(invalid("", "status", "is required")),
    };
    let task_id = match kind {
        JobKind::Run => id_field(&body, "actorTaskId", "actorTaskId", false, "")?,
        JobKind::Build => None,
    };
    if id.chars().count() > ID_CHARS_MAX {
        return Err(not_found(kind));
    }
    // The stored object is what was given, with its id and owner.
    let mut object = Map::new();
    object.insert("id".into(), json!(id));
    object.insert("userId".into(), json!(user.id));
    for (k, v) in body {
        if k != "id" && k != "userId" {
            object.insert(k, v);
        }
    }
    let object = Value::Object(object);
    let value_bytes_max =
        value_bytes_max("", &Value::Null, &object, state.limits.template_output_bytes_max)?;
    let data = EventData {
        actor_id,
        actor_task_id: task_id,
        actor_run_id: (kind == JobKind::Run).then(|| id.clone()),
        actor_build_id: (kind == JobKind::Build).then(|| id.clone()),
    };
    let data_json = event_data(kind, &data);
    for _ in 0..JOB_REPORT_ATTEMPTS_MAX {
        let previous = state.store.get_job(user.id.clone(), kind, id.clone()).await?;
        let previous_status = previous
            .as_deref()
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
            .and_then(|v| v.get("status").and_then(Value::as_str).map(String::from));
        let raised = job_transition_events(kind, previous_status.as_deref(), &status)
            .map_err(|e| ApiError::Conflict("invalid-state-transition", e.to_string()))?;
        let now_ms = crate::sys::now_ms();
        let events = raised
            .into_iter()
            .map(|event_type| Incoming {
                event_type,
                data: data.clone(),
                data_json: data_json.clone(),
                resource: object.clone(),
                value_bytes_max,
                created_ms: now_ms,
                idempotency_key: None,
            })
            .collect();
        let (prepared, _rendered) =
            prepare(state, user, events, state.request_bytes.charge()).await?;
        let report = JobReport {
            user_id: user.id.clone(),
            kind,
            id: id.clone(),
            expected_status: previous_status,
            object_json: object.to_string(),
        };
        match state.store.ingest(prepared, Some(report)).await {
            Ok(_) => return Ok(json_response(StatusCode::OK, &json!({"data": object}))),
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict.into())
}
