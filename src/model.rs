//! Domain types shared by the API and the store: webhooks, conditions, event types, timestamps.
//! Pure: no I/O, no clock; time arrives as an argument in milliseconds since the epoch.

use std::fmt;

/// Length of every id hookd makes (Apify's `cryptoRandomObjectId` shape).
pub const ID_LEN: usize = 17;
/// Alphabet of generated ids.
pub const ID_ALPHABET: &[u8; 62] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Apify's default payload template, byte for byte (`@apify/consts` WEBHOOK_DEFAULT_PAYLOAD_TEMPLATE).
pub const DEFAULT_PAYLOAD_TEMPLATE: &str = "{\n    \"userId\": {{userId}},\n    \"createdAt\": {{createdAt}},\n    \"eventType\": {{eventType}},\n    \"eventData\": {{eventData}},\n    \"resource\": {{resource}}\n}";

/// The job event types a webhook can subscribe to. `TEST` exists only for the test route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    RunCreated,
    RunSucceeded,
    RunFailed,
    RunAborted,
    RunTimedOut,
    RunResurrected,
    BuildCreated,
    BuildSucceeded,
    BuildFailed,
    BuildAborted,
    BuildTimedOut,
    Test,
}

impl EventType {
    /// Every type a webhook may list in `eventTypes` (all but `TEST`).
    pub const SUBSCRIBABLE: [EventType; 11] = [
        EventType::RunCreated,
        EventType::RunSucceeded,
        EventType::RunFailed,
        EventType::RunAborted,
        EventType::RunTimedOut,
        EventType::RunResurrected,
        EventType::BuildCreated,
        EventType::BuildSucceeded,
        EventType::BuildFailed,
        EventType::BuildAborted,
        EventType::BuildTimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::RunCreated => "ACTOR.RUN.CREATED",
            EventType::RunSucceeded => "ACTOR.RUN.SUCCEEDED",
            EventType::RunFailed => "ACTOR.RUN.FAILED",
            EventType::RunAborted => "ACTOR.RUN.ABORTED",
            EventType::RunTimedOut => "ACTOR.RUN.TIMED_OUT",
            EventType::RunResurrected => "ACTOR.RUN.RESURRECTED",
            EventType::BuildCreated => "ACTOR.BUILD.CREATED",
            EventType::BuildSucceeded => "ACTOR.BUILD.SUCCEEDED",
            EventType::BuildFailed => "ACTOR.BUILD.FAILED",
            EventType::BuildAborted => "ACTOR.BUILD.ABORTED",
            EventType::BuildTimedOut => "ACTOR.BUILD.TIMED_OUT",
            EventType::Test => "TEST",
        }
    }

    /// Parses one of the 11 subscribable types; `TEST` and anything else is `None`.
    pub fn parse_subscribable(s: &str) -> Option<EventType> {
        EventType::SUBSCRIBABLE.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which condition key an index entry or a list route is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionKind {
    Actor,
    ActorTask,
    ActorRun,
}

/// A webhook's condition: every key given must equal the event's field of the same name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Condition {
    pub actor_id: Option<String>,
    pub actor_task_id: Option<String>,
    pub actor_run_id: Option<String>,
}

impl Condition {
    pub fn is_empty(&self) -> bool {
        self.actor_id.is_none() && self.actor_task_id.is_none() && self.actor_run_id.is_none()
    }

    /// The (kind, value) pairs this condition is indexed under.
    pub fn keys(&self) -> impl Iterator<Item = (ConditionKind, &str)> {
        [
            (ConditionKind::Actor, self.actor_id.as_deref()),
            (ConditionKind::ActorTask, self.actor_task_id.as_deref()),
            (ConditionKind::ActorRun, self.actor_run_id.as_deref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
    }
}

/// A stored webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    pub id: String,
    pub user_id: String,
    pub created_ms: u64,
    pub modified_ms: u64,
    pub is_ad_hoc: bool,
    pub event_types: Vec<EventType>,
    pub condition: Condition,
    pub ignore_ssl_errors: bool,
    pub do_not_retry: bool,
    pub request_url: String,
    pub payload_template: String,
    pub headers_template: Option<String>,
    pub description: Option<String>,
    pub should_interpolate_strings: bool,
    pub idempotency_key: Option<String>,
}

/// Counters kept beside a webhook (`stats`, `lastDispatch`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebhookStats {
    pub total_dispatches: u64,
    pub last_dispatch: Option<LastDispatch>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastDispatch {
    pub status: DispatchStatus,
    pub finished_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DispatchStatus {
    Active,
    Succeeded,
    Failed,
}

impl DispatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DispatchStatus::Active => "ACTIVE",
            DispatchStatus::Succeeded => "SUCCEEDED",
            DispatchStatus::Failed => "FAILED",
        }
    }
}

/// The fields of a create request, already checked one by one; defaults applied.
#[derive(Clone, Debug, Default)]
pub struct WebhookDraft {
    pub is_ad_hoc: bool,
    pub event_types: Vec<EventType>,
    pub condition: Condition,
    pub ignore_ssl_errors: bool,
    pub do_not_retry: bool,
    pub request_url: String,
    pub payload_template: Option<String>,
    pub headers_template: Option<String>,
    pub description: Option<String>,
    pub should_interpolate_strings: bool,
    pub idempotency_key: Option<String>,
}

/// One field of a partial update: absent keeps the value, `null` resets it to its default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Change<T> {
    #[default]
    Keep,
    Reset,
    Set(T),
}

/// A partial update (`PUT /v2/webhooks/{id}`).
#[derive(Clone, Debug, Default)]
pub struct WebhookPatch {
    pub is_ad_hoc: Change<bool>,
    pub event_types: Change<Vec<EventType>>,
    pub condition: Change<Condition>,
    pub ignore_ssl_errors: Change<bool>,
    pub do_not_retry: Change<bool>,
    pub request_url: Change<String>,
    pub payload_template: Change<String>,
    pub headers_template: Change<String>,
    pub description: Change<String>,
    pub should_interpolate_strings: Change<bool>,
}

/// A rule broken by a combination of fields; `field` is the API field name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Field \"{field}\" {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> FieldError {
        FieldError { field, reason: reason.into() }
    }
}

fn check_whole(w: &Webhook) -> Result<(), FieldError> {
    if w.event_types.is_empty() {
        return Err(FieldError::new("eventTypes", "must list at least one event type"));
    }
    if w.condition.is_empty() {
        return Err(FieldError::new(
            "condition",
            "must have at least one of actorId, actorTaskId, actorRunId",
        ));
    }
    if w.is_ad_hoc && w.condition.actor_run_id.is_none() {
        return Err(FieldError::new("isAdHoc", "requires condition.actorRunId"));
    }
    if w.request_url.is_empty() {
        return Err(FieldError::new("requestUrl", "is required"));
    }
    Ok(())
}

impl Webhook {
    /// A new webhook from a checked draft.
    pub fn create(
        id: String,
        user_id: String,
        draft: WebhookDraft,
        now_ms: u64,
    ) -> Result<Webhook, FieldError> {
        let w = Webhook {
            id,
            user_id,
            created_ms: now_ms,
            modified_ms: now_ms,
            is_ad_hoc: draft.is_ad_hoc,
            event_types: draft.event_types,
            condition: draft.condition,
            ignore_ssl_errors: draft.ignore_ssl_errors,
            do_not_retry: draft.do_not_retry,
            request_url: draft.request_url,
            payload_template: draft
                .payload_template
                .unwrap_or_else(|| DEFAULT_PAYLOAD_TEMPLATE.to_string()),
            headers_template: draft.headers_template,
            description: draft.description,
            should_interpolate_strings: draft.should_interpolate_strings,
            idempotency_key: draft.idempotency_key,
        };
        check_whole(&w)?;
        Ok(w)
    }

    /// This webhook with `patch` applied; `modifiedAt` becomes `now_ms` (never earlier than before).
    pub fn patched(&self, patch: &WebhookPatch, now_ms: u64) -> Result<Webhook, FieldError> {
        fn apply<T: Clone>(cur: &mut T, change: &Change<T>, default: T) {
            match change {
                Change::Keep => {}
                Change::Reset => *cur = default,
                Change::Set(v) => *cur = v.clone(),
            }
        }
        fn apply_opt<T: Clone>(cur: &mut Option<T>, change: &Change<T>) {
            match change {
                Change::Keep => {}
                Change::Reset => *cur = None,
                Change::Set(v) => *cur = Some(v.clone()),
            }
        }
        let mut w = self.clone();
        let mut is_ad_hoc = w.is_ad_hoc;
        apply(&mut is_ad_hoc, &patch.is_ad_hoc, false);
        if is_ad_hoc != w.is_ad_hoc {
            return Err(FieldError::new("isAdHoc", "cannot be changed"));
        }
        if patch.event_types == Change::Reset {
            return Err(FieldError::new("eventTypes", "cannot be null"));
        }
        if patch.condition == Change::Reset {
            return Err(FieldError::new("condition", "cannot be null"));
        }
        if patch.request_url == Change::Reset {
            return Err(FieldError::new("requestUrl", "cannot be null"));
        }
        apply(&mut w.event_types, &patch.event_types, Vec::new());
        apply(&mut w.condition, &patch.condition, Condition::default());
        apply(&mut w.ignore_ssl_errors, &patch.ignore_ssl_errors, false);
        apply(&mut w.do_not_retry, &patch.do_not_retry, false);
        apply(&mut w.request_url, &patch.request_url, String::new());
        apply(
            &mut w.payload_template,
            &patch.payload_template,
            DEFAULT_PAYLOAD_TEMPLATE.to_string(),
        );
        apply_opt(&mut w.headers_template, &patch.headers_template);
        apply_opt(&mut w.description, &patch.description);
        apply(&mut w.should_interpolate_strings, &patch.should_interpolate_strings, false);
        w.modified_ms = now_ms.max(self.modified_ms);
        check_whole(&w)?;
        Ok(w)
    }
}

/// Formats epoch milliseconds as UTC ISO-8601 with milliseconds and `Z`.
pub fn format_timestamp_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_as_utc_iso_with_millis() {
        assert_eq!(format_timestamp_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_timestamp_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(format_timestamp_ms(1_795_353_255_123), "2026-11-22T13:14:15.123Z");
    }

    #[test]
    fn event_types_round_trip_and_test_is_not_subscribable() {
        for t in EventType::SUBSCRIBABLE {
            assert_eq!(EventType::parse_subscribable(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse_subscribable("TEST"), None);
        assert_eq!(EventType::parse_subscribable("ACTOR.RUN.TIMED-OUT"), None);
    }
}
