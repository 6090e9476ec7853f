//! Reading ingest bodies and job reports without a tree of what the client sent: the body is
//! split into borrowed raw fields (`serde_json::value::RawValue`), the small fields (event
//! type, ids, times) are parsed on their own within a size bound, and the resource stays
//! compact JSON text (`RawJson`), which templates read by path. So the memory a request takes
//! is a small multiple of its bytes, whatever the shape of its JSON.

use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::body::budget_spent;
use super::budget::{Charge, TREE_BYTES_PER_JSON_BYTE};
use super::error::ApiError;
use crate::model::{EventData, EventType, FieldError, JobKind, parse_timestamp_ms};
use crate::template::{RawJson, compact_valid, nests_deeper_than};

/// How deep a copied value may nest (what `serde_json` allows when it parses into values).
const NESTING_MAX: usize = 128;

/// Refuses a value (already checked to be valid JSON) that nests deeper than `NESTING_MAX`:
/// a later parse of a part of it into values would fail there.
fn check_depth(text: &str) -> Result<(), String> {
    if nests_deeper_than(text, NESTING_MAX) {
        return Err(format!("it nests deeper than {NESTING_MAX} levels"));
    }
    Ok(())
}

/// Events in one ingest request.
pub const EVENTS_PER_REQUEST_MAX: usize = 1000;
pub const ID_CHARS_MAX: usize = 128;
const IDEMPOTENCY_KEY_CHARS_MAX: usize = 128;
/// Bytes of one small field (`eventType`, `eventData`, `createdAt`, ...): these are parsed
/// into values, so they are bounded (and the parse is charged to the request's budget); only
/// the resource may be large, and it is never parsed into values.
pub const SMALL_FIELD_BYTES_MAX: usize = 16 * 1024;
/// Bytes of the default payload besides the resource and eventData it copies: the keys, the
/// user id, the time and the event type (generously).
const DEFAULT_PAYLOAD_OVERHEAD_BYTES: usize = 512;

/// One validated event.
#[derive(Clone)]
pub struct Incoming {
    pub event_type: EventType,
    pub data: EventData,
    pub data_json: Value,
    pub resource: RawJson,
    /// The most bytes one template variable of this event can render to: the compact JSON of
    /// its resource or eventData, whichever is larger.
    pub value_bytes_max: usize,
    pub created_ms: u64,
    pub idempotency_key: Option<String>,
}

pub fn invalid(prefix: &str, field: &'static str, reason: impl Into<String>) -> ApiError {
    ApiError::InvalidInput(format!("{prefix}{}", FieldError::new(field, reason)))
}

fn not_json(e: impl fmt::Display) -> ApiError {
    ApiError::InvalidRequest(format!("The request body is not valid JSON: {e}"))
}

/// A small field parsed into a value (`Null` when absent or `null`); the tree it may take is
/// charged to the request while it is parsed.
fn small(
    raw: Option<&RawValue>,
    field: &'static str,
    prefix: &str,
    charge: &mut Charge,
) -> Result<Value, ApiError> {
    let Some(raw) = raw else { return Ok(Value::Null) };
    if raw.get().len() > SMALL_FIELD_BYTES_MAX {
        return Err(invalid(
            prefix,
            field,
            format!("is larger than {SMALL_FIELD_BYTES_MAX} bytes"),
        ));
    }
    let tree_bytes = raw.get().len() * TREE_BYTES_PER_JSON_BYTE;
    if !charge.grow(tree_bytes) {
        return Err(budget_spent(charge.budget_max()));
    }
    let parsed = serde_json::from_str(raw.get())
        .map_err(|e| ApiError::InvalidRequest(format!("{prefix}Field \"{field}\": {e}")));
    charge.shrink(tree_bytes);
    parsed
}

pub fn id_field(
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
pub fn event_data(kind: JobKind, data: &EventData) -> Value {
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

/// How many bytes one variable of the event can render to; refuses (413) an event whose
/// default payload, which copies its resource and eventData whole, could not be rendered
/// within `output_bytes_max`: better refused now than accepted and FAILED at once.
pub fn value_bytes_max(
    prefix: &str,
    data_json: &Value,
    resource: &RawJson,
    output_bytes_max: usize,
) -> Result<usize, ApiError> {
    let (data_bytes, resource_bytes) = (data_json.to_string().len(), resource.text().len());
    if resource_bytes + data_bytes + DEFAULT_PAYLOAD_OVERHEAD_BYTES > output_bytes_max {
        return Err(ApiError::Limit {
            status: http::StatusCode::PAYLOAD_TOO_LARGE,
            kind: "request-too-large",
            message: format!(
                "{prefix}The resource is {resource_bytes} bytes of JSON, so the default payload would be larger than the render limit of {output_bytes_max} bytes (limits.template_output_bytes_max). Nothing was stored"
            ),
        });
    }
    Ok(resource_bytes.max(data_bytes).max(DEFAULT_PAYLOAD_OVERHEAD_BYTES))
}

/// An event as sent: each field's raw JSON, borrowed from the body. Other fields are skipped
/// without being stored.
#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(rename = "eventType", borrow, default)]
    event_type: Option<&'a RawValue>,
    #[serde(rename = "eventData", borrow, default)]
    event_data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    resource: Option<&'a RawValue>,
    #[serde(rename = "createdAt", borrow, default)]
    created_at: Option<&'a RawValue>,
    #[serde(rename = "idempotencyKey", borrow, default)]
    idempotency_key: Option<&'a RawValue>,
}

/// The body of `POST /v2/webhook-events`: one event or an array of them (at most
/// `EVENTS_PER_REQUEST_MAX`), each still raw; `true` for an array.
pub fn split_events(body: &[u8]) -> Result<(Vec<&RawValue>, bool), ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::InvalidRequest(format!("The request body is not valid UTF-8: {e}"))
    })?;
    let trimmed = text.trim_start_matches([' ', '\t', '\n', '\r']);
    if trimmed.is_empty() {
        return Err(ApiError::InvalidRequest("The request body is empty".into()));
    }
    if trimmed.starts_with('{') {
        let one: &RawValue = serde_json::from_str(text).map_err(not_json)?;
        return Ok((vec![one], false));
    }
    if !trimmed.starts_with('[') {
        serde_json::from_str::<IgnoredAny>(text).map_err(not_json)?;
        return Err(ApiError::InvalidRequest(
            "The request body must be an event object or an array of them".into(),
        ));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let (items, count) = de.deserialize_seq(BoundedSeq).map_err(not_json)?;
    de.end().map_err(not_json)?;
    if count == 0 {
        return Err(ApiError::InvalidRequest("The array of events is empty".into()));
    }
    if count > EVENTS_PER_REQUEST_MAX {
        return Err(ApiError::InvalidRequest(format!(
            "At most {EVENTS_PER_REQUEST_MAX} events fit in one request; this one has {count}"
        )));
    }
    Ok((items, true))
}

/// The elements of an array as raw values, keeping at most `EVENTS_PER_REQUEST_MAX` (the rest
/// are only counted), and how many there are.
struct BoundedSeq;

impl<'de> Visitor<'de> for BoundedSeq {
    type Value = (Vec<&'de RawValue>, usize);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of events")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        let mut count = 0;
        while count < EVENTS_PER_REQUEST_MAX {
            let Some(item) = seq.next_element::<&'de RawValue>()? else { break };
            items.push(item);
            count += 1;
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {
            count += 1;
        }
        Ok((items, count))
    }
}

/// One event of an ingest body.
pub fn parse_event(
    raw: &RawValue,
    prefix: &str,
    now_ms: u64,
    output_bytes_max: usize,
    charge: &mut Charge,
) -> Result<Incoming, ApiError> {
    if !raw.get().starts_with('{') {
        return Err(ApiError::InvalidRequest(format!("{prefix}An event must be a JSON object")));
    }
    let m: RawEvent<'_> = serde_json::from_str(raw.get())
        .map_err(|e| ApiError::InvalidRequest(format!("{prefix}{e}")))?;
    let event_type = match small(m.event_type, "eventType", prefix, charge)? {
        Value::String(s) => EventType::parse_subscribable(&s).ok_or_else(|| {
            invalid(
                prefix,
                "eventType",
                format!("is {s:?}, which is not a run or build event type"),
            )
        })?,
        Value::Null => return Err(invalid(prefix, "eventType", "is required")),
        _ => return Err(invalid(prefix, "eventType", "must be a string")),
    };
    let kind = kind_of(event_type);
    let Value::Object(dm) = small(m.event_data, "eventData", prefix, charge)? else {
        return Err(invalid(prefix, "eventData", "must be an object"));
    };
    let actor_id = id_field(&dm, "actorId", "eventData.actorId", true, prefix)?.unwrap_or_default();
    let data = match kind {
        JobKind::Run => EventData {
            actor_id,
            actor_task_id: id_field(&dm, "actorTaskId", "eventData.actorTaskId", false, prefix)?,
            actor_run_id: id_field(&dm, "actorRunId", "eventData.actorRunId", true, prefix)?,
            actor_build_id: None,
        },
        JobKind::Build => EventData {
            actor_id,
            actor_build_id: id_field(&dm, "actorBuildId", "eventData.actorBuildId", true, prefix)?,
            ..EventData::default()
        },
    };
    let resource = match m.resource {
        None => RawJson::from_compact("null".into()),
        Some(r) if r.get().starts_with('{') => {
            // Valid as far as the body's parse goes; the nesting limit is checked here.
            check_depth(r.get()).map_err(|e| {
                ApiError::InvalidRequest(format!("{prefix}The resource is not valid JSON: {e}"))
            })?;
            RawJson::from_compact(compact_valid(r.get()))
        }
        Some(_) => return Err(invalid(prefix, "resource", "must be an object or null")),
    };
    let created_ms = match small(m.created_at, "createdAt", prefix, charge)? {
        Value::Null => now_ms,
        Value::String(s) => parse_timestamp_ms(&s).ok_or_else(|| {
            invalid(
                prefix,
                "createdAt",
                "must be an ISO-8601 time such as 2026-11-22T13:14:15.123Z, with an offset (if any) within ±18:00",
            )
        })?,
        _ => return Err(invalid(prefix, "createdAt", "must be a string")),
    };
    let idempotency_key = match small(m.idempotency_key, "idempotencyKey", prefix, charge)? {
        Value::Null => None,
        Value::String(s) if !s.is_empty() && s.chars().count() <= IDEMPOTENCY_KEY_CHARS_MAX => {
            Some(s)
        }
        _ => {
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

/// A job report's body: its small fields parsed, and the job object to store (what was sent,
/// with `id` and `userId` first and set by hookd) as compact JSON text.
pub struct JobBody {
    pub fields: Map<String, Value>,
    pub object: RawJson,
}

/// The fields of a job report that hookd reads; the others are only copied.
const JOB_FIELDS: [&str; 3] = ["actId", "status", "actorTaskId"];

/// Reads a job report: an object whose members are kept in order (a repeated name keeps its
/// first place and its last value, as `JSON.parse` does) and copied as compact text.
pub fn parse_job_body(
    body: &[u8],
    id: &str,
    user_id: &str,
    charge: &mut Charge,
) -> Result<JobBody, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::InvalidRequest(format!("The request body is not valid UTF-8: {e}"))
    })?;
    let trimmed = text.trim_start_matches([' ', '\t', '\n', '\r']);
    if trimmed.is_empty() {
        return Err(ApiError::InvalidRequest(
            "The request body must be a JSON object, but it is empty".into(),
        ));
    }
    if !trimmed.starts_with('{') {
        serde_json::from_str::<IgnoredAny>(text).map_err(not_json)?;
        return Err(ApiError::InvalidRequest("The request body must be a JSON object".into()));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let members = de.deserialize_map(Members).map_err(not_json)?;
    de.end().map_err(not_json)?;
    let mut fields = Map::new();
    let mut object = String::with_capacity(text.len() + 64);
    object.push_str(&format!("{{\"id\":{},\"userId\":{}", json!(id), json!(user_id)));
    for (name, raw) in members {
        if let Some(&field) = JOB_FIELDS.iter().find(|f| **f == name) {
            fields.insert(name.clone(), small(Some(raw), field, "", charge)?);
        }
        if name == "id" || name == "userId" {
            continue;
        }
        check_depth(raw.get()).map_err(not_json)?;
        let value = compact_valid(raw.get());
        object.push_str(&format!(",{}:{value}", json!(name)));
    }
    object.push('}');
    Ok(JobBody { fields, object: RawJson::from_compact(object) })
}

/// An object's members in order, each raw; a repeated name keeps its first place.
struct Members;

impl<'de> Visitor<'de> for Members {
    type Value = Vec<(String, &'de RawValue)>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: Vec<(String, &'de RawValue)> = Vec::new();
        let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        while let Some(name) = map.next_key::<String>()? {
            let value: &'de RawValue = map.next_value()?;
            match at.get(&name) {
                Some(&i) => out[i].1 = value,
                None => {
                    at.insert(name.clone(), out.len());
                    out.push((name, value));
                }
            }
        }
        Ok(out)
    }
}
