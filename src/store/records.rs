//! Versioned records and their conversion to model types, the same bytes in every backend. A record is one version
//! byte followed by the JSON of that version's struct. Serde here is a compatibility promise:
//! add a new version rather than changing an old one. (A leading byte, not an internally tagged
//! enum: serde buffers every field of a tagged enum before decoding it, which is slow.)

use serde::{Deserialize, Serialize};

use super::codes::{event_code, event_of_code};
use super::{EventAnswer, StoreError, StoredJob};
use crate::model::{
    Call, Condition, Decision, Dispatch, DispatchStatus, EventType, SigningKeys, Webhook,
};

const V1: u8 = 1;

pub(crate) fn encode_v1<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(256);
    out.push(V1);
    serde_json::to_writer(&mut out, value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(out)
}

pub(crate) fn decode_v1<'a, T: Deserialize<'a>>(
    what: &str,
    bytes: &'a [u8],
) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&V1, json)) => {
            serde_json::from_slice(json).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
        }
        Some((v, _)) => Err(StoreError::Corrupt(format!("{what}: unknown record version {v}"))),
        None => Err(StoreError::Corrupt(format!("{what}: empty record"))),
    }
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
    /// Absent in records written before webhooks could be disabled.
    #[serde(default = "enabled")]
    is_enabled: bool,
}

fn enabled() -> bool {
    true
}

#[derive(Serialize, Deserialize)]
struct ConditionV1 {
    actor_id: Option<String>,
    actor_task_id: Option<String>,
    actor_run_id: Option<String>,
}

pub fn encode_webhook(w: &Webhook) -> Result<Vec<u8>, StoreError> {
    let rec = WebhookV1 {
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
        is_enabled: w.is_enabled,
    };
    encode_v1(&rec)
}

pub fn decode_webhook(bytes: &[u8]) -> Result<Webhook, StoreError> {
    let r: WebhookV1 = decode_v1("webhook", bytes)?;
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
        is_enabled: r.is_enabled,
    })
}

#[derive(Serialize, Deserialize)]
struct StatsV1 {
    total: u64,
    last_id: Option<String>,
    last_status: Option<String>,
    last_finished_ms: Option<u64>,
    /// (status code, event type code, keys) of the webhook's status index (schema 8).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    listed: Vec<(u8, u8, u64)>,
}

/// A webhook's folded stats: how many dispatches, and the id of the latest one (whose state
/// `lastDispatch` shows, read when the webhook is read).
#[derive(Clone, Debug, Default)]
pub struct StatsState {
    pub total: u64,
    pub last_id: Option<String>,
    /// The end of the latest dispatch, copied here only when retention deleted that dispatch
    /// (its state is then gone): status and finish time.
    pub last_ended: Option<(DispatchStatus, Option<u64>)>,
    /// How many keys the webhook's status index holds per (status, event type) code, the
    /// nonzero ones in order: the exact totals of its lists. Kept here, not in a table of its
    /// own, because the fold writes this record anyway: a separate count would be one more
    /// random leaf per webhook.
    pub listed: Vec<(u8, u8, u64)>,
}

impl StatsState {
    /// The keys listed under (status, event type).
    pub fn listed(&self, status: u8, event_type: u8) -> u64 {
        self.listed.iter().find(|(s, t, _)| (*s, *t) == (status, event_type)).map_or(0, |l| l.2)
    }

    /// Counts `delta` more keys under (status, event type); `Err` if that goes below zero.
    pub fn add_listed(&mut self, status: u8, event_type: u8, delta: i64) -> Result<(), StoreError> {
        let at = self.listed.binary_search_by(|(s, t, _)| (*s, *t).cmp(&(status, event_type)));
        let was = at.map_or(0, |i| self.listed[i].2);
        let now = was.checked_add_signed(delta).ok_or_else(|| {
            StoreError::Corrupt(format!("webhook count ({status}, {event_type}) {was} {delta:+}"))
        })?;
        match (at, now) {
            (Ok(i), 0) => {
                self.listed.remove(i);
            }
            (Ok(i), n) => self.listed[i].2 = n,
            (Err(_), 0) => {}
            (Err(i), n) => self.listed.insert(i, (status, event_type, n)),
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct SigningKeysV1 {
    /// Base64 of the key bytes.
    current: String,
    previous: Option<String>,
    previous_until_ms: Option<u64>,
}

pub fn encode_signing_keys(k: &SigningKeys) -> Result<Vec<u8>, StoreError> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    encode_v1(&SigningKeysV1 {
        current: b64.encode(&k.current),
        previous: k.previous.as_ref().map(|(key, _)| b64.encode(key)),
        previous_until_ms: k.previous.as_ref().map(|(_, until_ms)| *until_ms),
    })
}

pub fn decode_signing_keys(bytes: &[u8]) -> Result<SigningKeys, StoreError> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let r: SigningKeysV1 = decode_v1("signing keys", bytes)?;
    let key = |text: &str| {
        b64.decode(text).map_err(|_| StoreError::Corrupt("signing keys: not base64".into()))
    };
    let previous = match (r.previous, r.previous_until_ms) {
        (Some(k), Some(until_ms)) => Some((key(&k)?, until_ms)),
        _ => None,
    };
    Ok(SigningKeys { current: key(&r.current)?, previous })
}

pub fn encode_stats(s: &StatsState) -> Result<Vec<u8>, StoreError> {
    // The latest status is read from the latest dispatch's state instead of being copied here
    // on every call; it is written here only once retention deleted that dispatch.
    let rec = StatsV1 {
        total: s.total,
        last_id: s.last_id.clone(),
        last_status: s.last_ended.map(|(status, _)| status.as_str().to_string()),
        last_finished_ms: s.last_ended.and_then(|(_, ms)| ms),
        listed: s.listed.clone(),
    };
    encode_v1(&rec)
}

pub(crate) fn status_of(s: &str) -> Result<DispatchStatus, StoreError> {
    Ok(match s {
        "ACTIVE" => DispatchStatus::Active,
        "SUCCEEDED" => DispatchStatus::Succeeded,
        "FAILED" => DispatchStatus::Failed,
        other => return Err(StoreError::Corrupt(format!("dispatch status {other}"))),
    })
}

pub fn decode_stats(bytes: &[u8]) -> Result<StatsState, StoreError> {
    let StatsV1 { total, last_id, last_status, last_finished_ms, listed } =
        decode_v1("stats", bytes)?;
    // Before schema 5 these fields were always empty (or, in older files, a copy of the
    // latest state, which that state itself supersedes while it exists).
    let last_ended = match last_status {
        Some(s) => Some((status_of(&s)?, last_finished_ms)),
        None => None,
    };
    Ok(StatsState { total, last_id, last_ended, listed })
}

/// The part of a dispatch that never changes: written once, when it is made.
#[derive(Serialize, Deserialize)]
struct DispatchRequestV1 {
    id: String,
    user_id: String,
    webhook_id: String,
    created_ms: u64,
    event_type: String,
    event_data: Option<String>,
    condition: ConditionV1,
    request_url: String,
    is_ad_hoc: bool,
    ignore_ssl_errors: bool,
    do_not_retry: bool,
    body: String,
    headers: Vec<(String, String)>,
}

/// The part of a dispatch that each call changes, kept apart so that recording a call
/// rewrites tens of bytes instead of the payload. It repeats the webhook and the target,
/// which the writer needs (stats, outbox keys) without reading the request, and (schema 8)
/// the owner and event type, which key the status indexes a status change moves it in.
#[derive(Serialize, Deserialize)]
struct DispatchStateV1 {
    webhook_id: String,
    /// Absent before schema 8 (its migration writes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event_type: Option<u8>,
    target: String,
    status: String,
    calls: Vec<CallV1>,
    next_due_ms: Option<u64>,
    finished_ms: Option<u64>,
    /// Calls made before the latest redelivery (absent: never redelivered).
    #[serde(default, skip_serializing_if = "is_zero")]
    calls_before_redelivery: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize)]
struct CallV1 {
    started_ms: u64,
    finished_ms: u64,
    error_message: Option<String>,
    response_status: Option<u16>,
    response_body: Option<String>,
}

/// What the writer reads and rewrites when a call ends or a dispatch is ended.
pub struct DispatchState {
    pub webhook_id: String,
    /// The owner and event type (`None` only in a record older than schema 8).
    pub owner: Option<(String, EventType)>,
    /// The outbox partition (`Dispatch::target_key`).
    pub target: String,
    pub status: DispatchStatus,
    pub calls: Vec<Call>,
    pub next_due_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// Calls made before the latest redelivery: the retry schedule counts from there.
    pub calls_before_redelivery: usize,
}

impl DispatchState {
    /// ACTIVE again, due at `due_ms`, its retry schedule counted from here (a redelivery).
    pub fn reactivate(&mut self, due_ms: u64) {
        self.status = DispatchStatus::Active;
        self.finished_ms = None;
        self.next_due_ms = Some(due_ms);
        self.calls_before_redelivery = self.calls.len();
    }

    /// Ends an ACTIVE dispatch FAILED because its webhook was deleted at `at_ms`
    /// (`Call::webhook_removed`); `false` if it had ended already.
    pub fn end_removed(&mut self, at_ms: u64) -> bool {
        if self.status != DispatchStatus::Active {
            return false;
        }
        self.calls.push(Call::webhook_removed(at_ms));
        self.status = DispatchStatus::Failed;
        self.next_due_ms = None;
        self.finished_ms = Some(at_ms);
        true
    }

    /// Appends a call and applies the decision: the next due time, or the end. A dispatch
    /// that ended while its call was in flight (its webhook was deleted) keeps its end.
    pub fn record(&mut self, call: Call, decision: Decision) {
        let finished_ms = call.finished_ms;
        self.calls.push(call);
        if self.status != DispatchStatus::Active {
            return;
        }
        match decision {
            Decision::RetryAt(due) => self.next_due_ms = Some(due),
            Decision::Succeeded | Decision::Failed => {
                self.status = if decision == Decision::Succeeded {
                    DispatchStatus::Succeeded
                } else {
                    DispatchStatus::Failed
                };
                self.next_due_ms = None;
                self.finished_ms = Some(finished_ms);
            }
        }
    }
}

pub fn encode_dispatch_request(d: &Dispatch) -> Result<Vec<u8>, StoreError> {
    let rec = DispatchRequestV1 {
        id: d.id.clone(),
        user_id: d.user_id.clone(),
        webhook_id: d.webhook_id.clone(),
        created_ms: d.created_ms,
        event_type: d.event_type.as_str().to_string(),
        event_data: d.event_data_json.clone(),
        condition: ConditionV1 {
            actor_id: d.condition.actor_id.clone(),
            actor_task_id: d.condition.actor_task_id.clone(),
            actor_run_id: d.condition.actor_run_id.clone(),
        },
        request_url: d.request_url.clone(),
        is_ad_hoc: d.is_ad_hoc,
        ignore_ssl_errors: d.ignore_ssl_errors,
        do_not_retry: d.do_not_retry,
        body: d.body.clone(),
        headers: d.headers.clone(),
    };
    encode_v1(&rec)
}

/// The state of a new dispatch.
pub fn state_of(d: &Dispatch) -> DispatchState {
    DispatchState {
        webhook_id: d.webhook_id.clone(),
        owner: Some((d.user_id.clone(), d.event_type)),
        target: d.target_key(),
        status: d.status,
        calls: d.calls.clone(),
        next_due_ms: d.next_due_ms,
        finished_ms: d.finished_ms,
        calls_before_redelivery: d.calls_before_redelivery,
    }
}

pub fn encode_dispatch_state(s: &DispatchState) -> Result<Vec<u8>, StoreError> {
    let rec = DispatchStateV1 {
        webhook_id: s.webhook_id.clone(),
        user_id: s.owner.as_ref().map(|(u, _)| u.clone()),
        event_type: s.owner.as_ref().map(|(_, t)| event_code(*t)),
        target: s.target.clone(),
        status: s.status.as_str().to_string(),
        calls: s
            .calls
            .iter()
            .map(|c| CallV1 {
                started_ms: c.started_ms,
                finished_ms: c.finished_ms,
                error_message: c.error_message.clone(),
                response_status: c.response_status,
                response_body: c.response_body.clone(),
            })
            .collect(),
        next_due_ms: s.next_due_ms,
        finished_ms: s.finished_ms,
        calls_before_redelivery: s.calls_before_redelivery,
    };
    encode_v1(&rec)
}

pub fn decode_dispatch_state(bytes: &[u8]) -> Result<DispatchState, StoreError> {
    let r: DispatchStateV1 = decode_v1("dispatch state", bytes)?;
    let owner = match (r.user_id, r.event_type) {
        (Some(user), Some(code)) => Some((
            user,
            event_of_code(code)
                .ok_or_else(|| StoreError::Corrupt(format!("dispatch event type code {code}")))?,
        )),
        _ => None,
    };
    Ok(DispatchState {
        owner,
        status: status_of(&r.status)?,
        webhook_id: r.webhook_id,
        target: r.target,
        calls: r
            .calls
            .into_iter()
            .map(|c| Call {
                started_ms: c.started_ms,
                finished_ms: c.finished_ms,
                error_message: c.error_message,
                response_status: c.response_status,
                response_body: c.response_body,
            })
            .collect(),
        next_due_ms: r.next_due_ms,
        finished_ms: r.finished_ms,
        calls_before_redelivery: r.calls_before_redelivery,
    })
}

/// A state record's status, owner and event type alone (`None` for a record older than
/// schema 8): the rest is skipped, not built, so the mirror of waiting dispatches loads fast
/// at open.
pub fn decode_state_key(
    bytes: &[u8],
) -> Result<Option<(DispatchStatus, String, EventType)>, StoreError> {
    #[derive(Deserialize)]
    struct KeyOnly<'a> {
        #[serde(borrow)]
        status: std::borrow::Cow<'a, str>,
        #[serde(default)]
        user_id: Option<String>,
        #[serde(default)]
        event_type: Option<u8>,
    }
    let r: KeyOnly<'_> = decode_v1("dispatch state", bytes)?;
    let status = status_of(&r.status)?;
    match (r.user_id, r.event_type) {
        (Some(user), Some(code)) => match event_of_code(code) {
            Some(t) => Ok(Some((status, user, t))),
            None => Err(StoreError::Corrupt(format!("dispatch event type code {code}"))),
        },
        _ => Ok(None),
    }
}

/// A whole dispatch from its two records.
pub fn decode_dispatch(request: &[u8], state: &[u8]) -> Result<Dispatch, StoreError> {
    let r: DispatchRequestV1 = decode_v1("dispatch", request)?;
    let s = decode_dispatch_state(state)?;
    let event_type = stored_event_type(&r.event_type)?;
    Ok(Dispatch {
        status: s.status,
        id: r.id,
        user_id: r.user_id,
        webhook_id: r.webhook_id,
        created_ms: r.created_ms,
        event_type,
        event_data_json: r.event_data,
        condition: Condition {
            actor_id: r.condition.actor_id,
            actor_task_id: r.condition.actor_task_id,
            actor_run_id: r.condition.actor_run_id,
        },
        request_url: r.request_url,
        is_ad_hoc: r.is_ad_hoc,
        ignore_ssl_errors: r.ignore_ssl_errors,
        do_not_retry: r.do_not_retry,
        body: r.body,
        headers: r.headers,
        calls: s.calls,
        next_due_ms: s.next_due_ms,
        finished_ms: s.finished_ms,
        calls_before_redelivery: s.calls_before_redelivery,
    })
}

/// Who owns a stored dispatch: the one field of its request record retention needs (the body
/// is skipped, not decoded).
pub fn dispatch_user(request: &[u8]) -> Result<String, StoreError> {
    #[derive(Deserialize)]
    struct UserOnly {
        user_id: String,
    }
    let r: UserOnly = decode_v1("dispatch request", request)?;
    Ok(r.user_id)
}

/// The owner and event type of a stored dispatch request.
pub fn dispatch_owner(request: &[u8]) -> Result<(String, EventType), StoreError> {
    #[derive(Deserialize)]
    struct OwnerOnly {
        user_id: String,
        event_type: String,
    }
    let r: OwnerOnly = decode_v1("dispatch request", request)?;
    Ok((r.user_id, stored_event_type(&r.event_type)?))
}

fn stored_event_type(t: &str) -> Result<EventType, StoreError> {
    match t {
        "TEST" => Ok(EventType::Test),
        t => EventType::parse_subscribable(t)
            .ok_or_else(|| StoreError::Corrupt(format!("dispatch event type {t}"))),
    }
}

/// The part of a stored event retention needs.
#[derive(Debug, PartialEq, Eq, Deserialize)]
pub struct EventHeader {
    #[serde(rename = "u")]
    pub user_id: String,
    #[serde(rename = "k")]
    pub idempotency_key: Option<String>,
    #[serde(rename = "d")]
    pub dispatch_ids: Vec<String>,
}

/// An event as stored (schema 5): version byte 2, a one-line JSON header (owner, idempotency
/// key, dispatch ids: what retention reads), a newline, then the event's JSON as accepted.
pub fn encode_event(
    user_id: &str,
    idempotency_key: Option<&str>,
    dispatch_ids: &[String],
    event_json: &str,
) -> Result<Vec<u8>, StoreError> {
    let header = serde_json::json!({"u": user_id, "k": idempotency_key, "d": dispatch_ids});
    let mut out = Vec::with_capacity(event_json.len() + 64 + 20 * dispatch_ids.len());
    out.push(EVENT_V2);
    // Compact JSON escapes every newline inside strings, so the first newline ends the header.
    serde_json::to_writer(&mut out, &header).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    out.push(b'\n');
    out.extend_from_slice(event_json.as_bytes());
    Ok(out)
}

const EVENT_V2: u8 = 2;

/// The header of a stored event, of either version: schema 4 wrote version 1,
/// `{"dispatchIds":[..],"event":{"userId":..,..}}` without the idempotency key (the migration
/// rewrites those that had one).
pub fn decode_event_header(bytes: &[u8]) -> Result<EventHeader, StoreError> {
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("event: {e}"));
    match bytes.split_first() {
        Some((&EVENT_V2, rest)) => {
            let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            serde_json::from_slice(&rest[..end]).map_err(corrupt)
        }
        Some((&V1, json)) => {
            #[derive(Deserialize)]
            struct Owner {
                #[serde(rename = "userId")]
                user_id: String,
            }
            #[derive(Deserialize)]
            struct EventV1 {
                #[serde(rename = "dispatchIds")]
                dispatch_ids: Vec<String>,
                event: Owner,
            }
            let e: EventV1 = serde_json::from_slice(json).map_err(corrupt)?;
            Ok(EventHeader {
                user_id: e.event.user_id,
                idempotency_key: None,
                dispatch_ids: e.dispatch_ids,
            })
        }
        Some((v, _)) => Err(StoreError::Corrupt(format!("event: unknown record version {v}"))),
        None => Err(StoreError::Corrupt("event: empty record".into())),
    }
}

/// The event's JSON as accepted, from a stored event of either version.
pub fn event_json(bytes: &[u8]) -> Result<&str, StoreError> {
    let json = match bytes.split_first() {
        Some((&EVENT_V2, rest)) => {
            let end = rest.iter().position(|&b| b == b'\n').map_or(rest.len(), |i| i + 1);
            &rest[end..]
        }
        Some((&V1, json)) => {
            #[derive(Deserialize)]
            struct EventV1<'a> {
                #[serde(borrow)]
                event: &'a serde_json::value::RawValue,
            }
            let e: EventV1<'_> = serde_json::from_slice(json)
                .map_err(|e| StoreError::Corrupt(format!("event: {e}")))?;
            return Ok(e.event.get());
        }
        _ => return Err(StoreError::Corrupt("event: unknown record version".into())),
    };
    std::str::from_utf8(json).map_err(|e| StoreError::Corrupt(format!("event: {e}")))
}

/// A job's latest report (schema 9): version byte 1, a one-line JSON header with its status
/// (so a report's compare-and-set reads no object), a newline, then the object as reported.
pub fn encode_job(job: &StoredJob) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(job.object_json.len() + 32);
    out.push(V1);
    serde_json::to_writer(&mut out, &JobHeader { status: job.status.clone() })
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    out.push(b'\n');
    out.extend_from_slice(job.object_json.as_bytes());
    Ok(out)
}

#[derive(Serialize, Deserialize)]
struct JobHeader {
    #[serde(rename = "s")]
    status: Option<String>,
}

pub fn decode_job(bytes: &[u8]) -> Result<StoredJob, StoreError> {
    let corrupt = |e: String| StoreError::Corrupt(format!("job: {e}"));
    let Some((&V1, rest)) = bytes.split_first() else {
        return Err(corrupt("unknown record version".into()));
    };
    let end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| corrupt("no header".into()))?;
    let header: JobHeader =
        serde_json::from_slice(&rest[..end]).map_err(|e| corrupt(e.to_string()))?;
    let object_json = std::str::from_utf8(&rest[end + 1..]).map_err(|e| corrupt(e.to_string()))?;
    Ok(StoredJob { status: header.status, object_json: object_json.to_string() })
}

/// An event's first 202 answer, kept under its idempotency key (schema 9: versioned).
pub fn encode_event_answer(answer: &EventAnswer) -> Result<Vec<u8>, StoreError> {
    encode_v1(answer)
}

pub fn decode_event_answer(bytes: &[u8]) -> Result<EventAnswer, StoreError> {
    decode_v1("event answer", bytes)
}

/// The event id of a stored answer, without reading the rest into values.
pub fn event_answer_id(bytes: &[u8]) -> Result<String, StoreError> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: String,
    }
    decode_v1::<IdOnly>("event answer", bytes).map(|a| a.id)
}
