//! hookd's own routes for job events: `POST /v2/webhook-events` (one event or an array, all
//! or nothing) and the run and build state reports `PUT`/`GET /v2/actor-runs/{id}` and
//! `/v2/actor-builds/{id}`, which raise the events a status change implies.

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper::Response;
use std::sync::Arc;

use serde_json::{Value, json};

use super::ApiState;
use super::body::budget_spent;
use super::body::{json_response, json_text_response};
use super::budget::Charge;
use super::error::ApiError;
use super::event_input::{
    ID_CHARS_MAX, Incoming, event_data, id_field, invalid, parse_event, parse_job_body,
    split_events, value_bytes_max,
};
use super::render::{Compiled, EventParts, Renderer};
use crate::config::User;
use crate::model::{
    EventData, JOB_STATUSES, JobKind, Webhook, format_timestamp_ms, job_transition_events,
};
use crate::store::{
    EncodedEvent, EventAnswer, Freshness, IndexStamp, JobReport, NewEvent, StoreError,
};
use crate::template::TemplateError;

type Resp = Response<Full<Bytes>>;

/// A job report retries this often when another report for the same job wins the race.
const JOB_REPORT_ATTEMPTS_MAX: usize = 8;

/// Requests whose render is bounded by this many bytes render on their own task; larger ones
/// go to the render pool (a thread hop costs more than rendering a few small payloads).
const INLINE_RENDER_BYTES_MAX: usize = 256 * 1024;

/// Matches, renders and encodes events into what the writer stores in one transaction, within
/// the request's budgets: dispatches (checked before any rendering) and rendered bytes (checked
/// as it renders, so an over-budget request stops early).
async fn prepare(
    state: &ApiState,
    user: &User,
    events: Vec<Incoming>,
    charge: Charge,
    freshness: Freshness,
) -> Result<Prepared, ApiError> {
    let keys: Vec<_> = events.iter().map(|e| (e.event_type, e.data.clone())).collect();
    let limits = &state.limits;
    let max = limits.dispatches_per_request_max;
    let Some((matches, stamp)) =
        state.store.match_webhooks(&user.id, &keys, max, freshness).await?
    else {
        return Err(ApiError::Limit {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "request-too-large",
            message: format!(
                "This request would create more than {max} dispatches (events times matching webhooks), the limit of one request (limits.dispatches_per_request_max). Nothing was stored"
            ),
        });
    };
    // Each matched webhook's templates, looked up once for the cost and the render.
    let matches: Vec<Vec<Matched>> = matches
        .into_iter()
        .map(|ws| ws.into_iter().map(|w| (state.renderer.compiled(&w), w)).collect())
        .collect();
    let cost = events
        .iter()
        .zip(&matches)
        .flat_map(|(e, ws)| ws.iter().map(|(c, w)| Renderer::cost_bytes(c, w, e.value_bytes_max)))
        .fold(0usize, usize::saturating_add);
    let job = RenderJob {
        renderer: state.renderer.clone(),
        user_id: user.id.clone(),
        events,
        matches,
        rendered_bytes_max: limits.rendered_bytes_per_request_max,
        charge,
    };
    let (events, charge) = if cost <= INLINE_RENDER_BYTES_MAX {
        job.run()
    } else {
        state.render_pool.run(move || job.run()).await.map_err(ApiError::Internal)?
    }?;
    Ok(Prepared { events, charge, stamp })
}

/// A request's events ready for the writer.
struct Prepared {
    events: Vec<EncodedEvent>,
    /// The rendered bytes, held until the request is answered.
    charge: Charge,
    /// The index version they were matched against, when the writer checks it.
    stamp: Option<IndexStamp>,
}

/// A matched webhook with its templates (or why they do not parse).
type Matched = (Result<Arc<Compiled>, TemplateError>, Arc<Webhook>);

/// The rendering of one request's events, runnable on any thread.
struct RenderJob {
    renderer: Arc<Renderer>,
    user_id: String,
    events: Vec<Incoming>,
    matches: Vec<Vec<Matched>>,
    rendered_bytes_max: usize,
    /// The rendered bytes are held until the request is answered: charged here as rendered.
    charge: Charge,
}

/// The stored form of an accepted event: the same keys, in the same order, as the API shows
/// (the resource copied as its compact text).
fn event_record(user_id: &str, e: &Incoming) -> String {
    format!(
        "{{\"userId\":{},\"createdAt\":\"{}\",\"eventType\":\"{}\",\"eventData\":{},\"resource\":{}}}",
        json!(user_id),
        format_timestamp_ms(e.created_ms),
        e.event_type.as_str(),
        e.data_json,
        e.resource.text()
    )
}

impl RenderJob {
    fn run(mut self) -> Result<(Vec<EncodedEvent>, Charge), ApiError> {
        let now_ms = crate::sys::now_ms();
        let mut rendered_bytes = 0usize;
        let mut out = Vec::with_capacity(self.events.len());
        for (e, webhooks) in self.events.into_iter().zip(self.matches) {
            let record = event_record(&self.user_id, &e);
            let parts =
                EventParts::new(&self.user_id, e.created_ms, e.event_type, e.data_json, e.resource);
            let mut dispatches = Vec::with_capacity(webhooks.len());
            for (compiled, w) in &webhooks {
                let d = self.renderer.dispatch_with(new_id(now_ms)?, w, compiled, &parts, now_ms);
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
            let body_bytes: usize = dispatches.iter().map(|d| d.body.len()).sum();
            // Encoded here, with the render, since it too takes time in proportion to the bodies.
            let encoded = EncodedEvent::new(NewEvent {
                id: new_id(now_ms)?,
                user_id: self.user_id.clone(),
                created_ms: e.created_ms,
                event_type: e.event_type,
                idempotency_key: e.idempotency_key,
                record_json: Some(record),
                dispatches,
            })?;
            // The bodies moved into the records, which escape them and so may be larger.
            if !self.charge.grow(encoded.encoded_bytes().saturating_sub(body_bytes)) {
                return Err(budget_spent(self.charge.budget_max()));
            }
            out.push(encoded);
        }
        Ok((out, self.charge))
    }
}

/// Bodies up to this size are parsed on the request's task; larger ones on the render pool.
const INLINE_PARSE_BYTES_MAX: usize = 64 * 1024;

/// Runs `parse` on `body`: on the request's own task when the body is small, else on the
/// render pool, since parsing takes time in proportion to the bytes (megabytes of them would
/// hold an async worker, and with it other users' requests).
async fn off_workers<T: Send + 'static>(
    state: &ApiState,
    body: Vec<u8>,
    mut charge: Charge,
    parse: impl FnOnce(&[u8], &mut Charge) -> Result<T, ApiError> + Send + 'static,
) -> Result<(T, Charge), ApiError> {
    if body.len() <= INLINE_PARSE_BYTES_MAX {
        return Ok((parse(&body, &mut charge)?, charge));
    }
    let job = move || parse(&body, &mut charge).map(|t| (t, charge));
    state.render_pool.run(job).await.map_err(ApiError::Internal)?
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
    body: Vec<u8>,
    charge: Charge,
) -> Result<Resp, ApiError> {
    let now_ms = crate::sys::now_ms();
    let output_bytes_max = state.limits.template_output_bytes_max;
    let ((events, is_array), charge) = off_workers(state, body, charge, move |body, charge| {
        let (items, is_array) = split_events(body)?;
        let mut events = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let prefix = if is_array { format!("Event {i}: ") } else { String::new() };
            events.push(parse_event(item, &prefix, now_ms, output_bytes_max, charge)?);
        }
        Ok((events, is_array))
    })
    .await?;
    // Where the write checks the match (PostgreSQL), a match made against an index that was
    // behind is made again, after a check, from a copy of the events.
    let again = state.store.checks_matches_at_write().then(|| events.clone());
    let charged_bytes = charge.bytes();
    let first = prepare(state, user, events, charge, Freshness::AtWrite).await?;
    let (answers, _rendered) =
        match (state.store.ingest_encoded(first.events, None, first.stamp).await, again) {
            (Err(StoreError::StaleIndex), Some(events)) => {
                let mut charge = first.charge;
                charge.shrink(charge.bytes().saturating_sub(charged_bytes));
                let p = prepare(state, user, events, charge, Freshness::Checked).await?;
                (state.store.ingest_encoded(p.events, None, None).await?, p.charge)
            }
            (answers, _) => (answers?, first.charge),
        };
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
    let Some(job) = state.store.get_job(user.id.clone(), kind, id).await? else {
        return Err(not_found(kind));
    };
    Ok(json_text_response(StatusCode::OK, format!("{{\"data\":{}}}", job.object_json)))
}

/// `PUT /v2/actor-runs/{id}`, `PUT /v2/actor-builds/{id}`: store the job's latest state and
/// raise the events its status change implies (SPEC 4.3), in one transaction.
pub async fn put_job(
    state: &ApiState,
    user: &User,
    kind: JobKind,
    id: String,
    body: Vec<u8>,
) -> Result<Resp, ApiError> {
    if id.chars().count() > ID_CHARS_MAX {
        return Err(not_found(kind));
    }
    // The stored object is what was given, with its id and owner.
    let (job_id, user_id) = (id.clone(), user.id.clone());
    let (job, _charge) = off_workers(state, body, state.request_bytes.charge(), move |b, c| {
        parse_job_body(b, &job_id, &user_id, c)
    })
    .await?;
    let body = &job.fields;
    let actor_id = id_field(body, "actId", "actId", true, "")?.unwrap_or_default();
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
        JobKind::Run => id_field(body, "actorTaskId", "actorTaskId", false, "")?,
        JobKind::Build => None,
    };
    let object = job.object;
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
        let previous_status = previous.and_then(|j| j.status);
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
        let charge = state.request_bytes.charge();
        let prepared = prepare(state, user, events, charge, Freshness::Checked).await?;
        let report = JobReport {
            user_id: user.id.clone(),
            kind,
            id: id.clone(),
            expected_status: previous_status,
            status: status.clone(),
            object_json: object.text().to_string(),
        };
        match state.store.ingest_encoded(prepared.events, Some(report), None).await {
            Ok(_) => {
                let body = format!("{{\"data\":{}}}", object.text());
                return Ok(json_text_response(StatusCode::OK, body));
            }
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict.into())
}
