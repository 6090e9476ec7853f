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
    /// A disabled webhook matches no event; its history and ACTIVE dispatches stay.
    pub is_enabled: bool,
}

/// A webhook's signing keys: the current one, and the one it replaced with the time until
/// which that one still signs beside it. Its `Debug` shows no key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKeys {
    pub current: Vec<u8>,
    pub previous: Option<(Vec<u8>, u64)>,
}

impl SigningKeys {
    /// The keys that sign a call made at `now_ms`, the current one first.
    pub fn signing_at(&self, now_ms: u64) -> impl Iterator<Item = &[u8]> {
        let previous = self.previous.as_ref().filter(|(_, until_ms)| now_ms < *until_ms);
        std::iter::once(self.current.as_slice()).chain(previous.map(|(k, _)| k.as_slice()))
    }

    /// The keys after a rotation at `now_ms` to `new_key`: the current one keeps signing
    /// until `now_ms + overlap_ms`.
    pub fn rotated(&self, new_key: Vec<u8>, now_ms: u64, overlap_ms: u64) -> SigningKeys {
        let until_ms = now_ms.saturating_add(overlap_ms);
        SigningKeys { current: new_key, previous: Some((self.current.clone(), until_ms)) }
    }
}

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKeys(..)")
    }
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
#[derive(Clone, Debug)]
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
    pub is_enabled: bool,
}

impl Default for WebhookDraft {
    /// Apify's defaults: enabled, everything else off or empty.
    fn default() -> WebhookDraft {
        WebhookDraft {
            is_ad_hoc: false,
            event_types: Vec::new(),
            condition: Condition::default(),
            ignore_ssl_errors: false,
            do_not_retry: false,
            request_url: String::new(),
            payload_template: None,
            headers_template: None,
            description: None,
            should_interpolate_strings: false,
            idempotency_key: None,
            is_enabled: true,
        }
    }
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
    pub is_enabled: Change<bool>,
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
            is_enabled: draft.is_enabled,
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
        apply(&mut w.is_enabled, &patch.is_enabled, true);
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

/// What an event is about: the fields a condition is compared with (`eventData`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventData {
    pub actor_id: String,
    pub actor_task_id: Option<String>,
    pub actor_run_id: Option<String>,
    pub actor_build_id: Option<String>,
}

impl EventData {
    /// Whether `condition` holds for this event: every key it gives must equal ours.
    pub fn satisfies(&self, condition: &Condition) -> bool {
        fn eq(want: &Option<String>, have: &Option<String>) -> bool {
            match want {
                None => true,
                Some(w) => have.as_ref() == Some(w),
            }
        }
        condition.actor_id.as_ref().is_none_or(|a| *a == self.actor_id)
            && eq(&condition.actor_task_id, &self.actor_task_id)
            && eq(&condition.actor_run_id, &self.actor_run_id)
    }

    /// The (kind, value) index prefixes whose webhooks can match this event.
    pub fn match_keys(&self) -> impl Iterator<Item = (ConditionKind, &str)> {
        [
            (ConditionKind::Actor, Some(self.actor_id.as_str())),
            (ConditionKind::ActorTask, self.actor_task_id.as_deref()),
            (ConditionKind::ActorRun, self.actor_run_id.as_deref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
    }
}

impl Webhook {
    /// Whether an event of `event_type` about `data` fires this webhook (ad-hoc state aside).
    pub fn matches(&self, event_type: EventType, data: &EventData) -> bool {
        self.event_types.contains(&event_type) && data.satisfies(&self.condition)
    }
}

/// One delivery attempt, as recorded in a dispatch's `calls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub started_ms: u64,
    pub finished_ms: u64,
    pub error_message: Option<String>,
    pub response_status: Option<u16>,
    pub response_body: Option<String>,
}

/// A webhook dispatch: one event delivered to one webhook, with its rendered request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatch {
    pub id: String,
    pub user_id: String,
    pub webhook_id: String,
    pub created_ms: u64,
    pub status: DispatchStatus,
    pub event_type: EventType,
    /// `eventData` as sent (null for TEST).
    pub event_data_json: Option<String>,
    /// The webhook as it was when the dispatch was made.
    pub condition: Condition,
    pub request_url: String,
    pub is_ad_hoc: bool,
    pub ignore_ssl_errors: bool,
    pub do_not_retry: bool,
    /// The rendered payload; every retry sends these bytes.
    pub body: String,
    /// The rendered headers template (reserved headers are added when sending).
    pub headers: Vec<(String, String)>,
    pub calls: Vec<Call>,
    /// When the next call is due; `None` once the dispatch has ended.
    pub next_due_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// Calls made before the latest redelivery: the retry schedule counts the calls after.
    pub calls_before_redelivery: usize,
}

impl Call {
    /// The call that ends an ACTIVE dispatch FAILED when its webhook is deleted at `at_ms`.
    pub fn webhook_removed(at_ms: u64) -> Call {
        Call {
            started_ms: at_ms,
            finished_ms: at_ms,
            error_message: Some("Webhook was removed.".into()),
            response_status: None,
            response_body: None,
        }
    }
}

impl Dispatch {
    /// Whether storing this dispatch spends its webhook's one firing: an ad-hoc webhook fires
    /// for one event only (a TEST dispatch does not count).
    pub fn fires_ad_hoc(&self) -> bool {
        self.is_ad_hoc && self.event_type != EventType::Test
    }

    /// The outbox partition: scheme, host and port of the target, lowercase.
    pub fn target_key(&self) -> String {
        target_key(&self.request_url)
    }
}

/// `scheme://host:port` of a URL, lowercase; the unit of per-target fairness.
pub fn target_key(url: &str) -> String {
    let lower = url.to_ascii_lowercase();
    let (scheme, rest) = lower.split_once("://").unwrap_or(("http", lower.as_str()));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let has_port = match host_port.rfind(']') {
        Some(close) => host_port[close..].contains(':'),
        None => host_port.contains(':'),
    };
    if has_port {
        format!("{scheme}://{host_port}")
    } else {
        let port = if scheme == "https" { 443 } else { 80 };
        format!("{scheme}://{host_port}:{port}")
    }
}

/// What happens to a dispatch after a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Succeeded,
    RetryAt(u64),
    Failed,
}

/// Statuses of Actor runs and builds (`ActorJobStatus`).
pub const JOB_STATUSES: [&str; 8] =
    ["READY", "RUNNING", "SUCCEEDED", "FAILED", "TIMING-OUT", "TIMED-OUT", "ABORTING", "ABORTED"];

/// Runs or builds: which event family a state report raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    Run,
    Build,
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "SUCCEEDED" | "FAILED" | "TIMED-OUT" | "ABORTED")
}

/// A report that would move a job from one terminal status to another.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("A {kind} cannot go from {from} to {to}")]
pub struct InvalidTransition {
    pub kind: &'static str,
    pub from: String,
    pub to: String,
}

/// The events a job's status change raises (SPEC 4.3). `previous` is `None` on the first report.
pub fn job_transition_events(
    kind: JobKind,
    previous: Option<&str>,
    next: &str,
) -> Result<Vec<EventType>, InvalidTransition> {
    let terminal_event = |status: &str| -> Option<EventType> {
        Some(match (kind, status) {
            (JobKind::Run, "SUCCEEDED") => EventType::RunSucceeded,
            (JobKind::Run, "FAILED") => EventType::RunFailed,
            (JobKind::Run, "TIMED-OUT") => EventType::RunTimedOut,
            (JobKind::Run, "ABORTED") => EventType::RunAborted,
            (JobKind::Build, "SUCCEEDED") => EventType::BuildSucceeded,
            (JobKind::Build, "FAILED") => EventType::BuildFailed,
            (JobKind::Build, "TIMED-OUT") => EventType::BuildTimedOut,
            (JobKind::Build, "ABORTED") => EventType::BuildAborted,
            _ => return None,
        })
    };
    let created = match kind {
        JobKind::Run => EventType::RunCreated,
        JobKind::Build => EventType::BuildCreated,
    };
    match previous {
        None => Ok([Some(created), terminal_event(next)].into_iter().flatten().collect()),
        Some(prev) if prev == next => Ok(Vec::new()),
        Some(prev) if is_terminal(prev) && is_terminal(next) => Err(InvalidTransition {
            kind: match kind {
                JobKind::Run => "run",
                JobKind::Build => "build",
            },
            from: prev.to_string(),
            to: next.to_string(),
        }),
        Some(prev) if is_terminal(prev) => Ok(match (kind, next) {
            (JobKind::Run, "READY" | "RUNNING") => vec![EventType::RunResurrected],
            _ => Vec::new(),
        }),
        Some(_) => Ok(terminal_event(next).into_iter().collect()),
    }
}

/// Parses an ISO-8601 UTC timestamp (`2026-11-22T13:14:15.123Z`, or with `+HH:MM`) to epoch ms.
pub fn parse_timestamp_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = s.get(r)?;
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo)
        || d == 0
        || d > days_in_month(y, mo)
        || h > 23
        || mi > 59
        || sec > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0u64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = s.get(start..i)?;
        if frac.is_empty() {
            return None;
        }
        let padded: String = frac.chars().chain("000".chars()).take(3).collect();
        millis = padded.parse().ok()?;
    }
    let offset_min: i64 = match s.get(i..)? {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) && &tz[3..4] == ":" => {
            let oh = num(i + 1..i + 3)? as i64;
            let om = num(i + 4..i + 6)? as i64;
            // Real offsets lie within -12:00..+14:00; ISO 8601 and RFC 3339 readers accept up
            // to 18:00, so anything beyond is a typo (and "+99:99" would shift days).
            if om > 59 || oh * 60 + om > 18 * 60 {
                return None;
            }
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (oh * 60 + om)
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d)?;
    let secs = days * 86_400 + (h * 3600 + mi * 60 + sec.min(59)) as i64 - offset_min * 60;
    u64::try_from(secs).ok()?.checked_mul(1000)?.checked_add(millis)
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// (year, month, day) to days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: u64, m: u64, d: u64) -> Option<i64> {
    let y = i64::try_from(y).ok()? - i64::from(m <= 2);
    let (m, d) = (m as i64, d as i64);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

#[cfg(test)]
mod event_tests {
    use super::*;

    #[test]
    fn timestamps_parse_back() {
        for ms in [0u64, 951_782_400_123, 1_795_353_255_123, 4_102_444_800_000] {
            assert_eq!(parse_timestamp_ms(&format_timestamp_ms(ms)), Some(ms));
        }
        assert_eq!(parse_timestamp_ms("2026-11-22T13:14:15Z"), Some(1_795_353_255_000));
        assert_eq!(parse_timestamp_ms("2026-11-22T14:14:15.1+01:00"), Some(1_795_353_255_100));
        assert_eq!(parse_timestamp_ms("2026-11-23T07:14:15+18:00"), Some(1_795_353_255_000));
        assert_eq!(parse_timestamp_ms("2026-11-21T19:14:15-18:00"), Some(1_795_353_255_000));
        for bad in [
            "",
            "2026-11-22",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-22T13:14:15",
            "x026-11-22T13:14:15Z",
            "2026-11-22T13:14:15.Z",
            "2026-11-22T13:14:15+18:01",
            "2026-11-22T13:14:15-99:99",
            "2026-11-22T13:14:15+01:60",
        ] {
            assert_eq!(parse_timestamp_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn target_keys() {
        assert_eq!(target_key("https://Example.com/x"), "https://example.com:443");
        assert_eq!(target_key("http://a.b:8080/x?y"), "http://a.b:8080");
        assert_eq!(target_key("http://u:p@h/x"), "http://h:80");
        assert_eq!(target_key("http://[::1]/x"), "http://[::1]:80");
        assert_eq!(target_key("http://[::1]:9/x"), "http://[::1]:9");
    }

    #[test]
    fn conditions_match_exactly_the_right_events() {
        let run = EventData {
            actor_id: "A".into(),
            actor_task_id: Some("T".into()),
            actor_run_id: Some("R".into()),
            actor_build_id: None,
        };
        let build = EventData {
            actor_id: "A".into(),
            actor_build_id: Some("B".into()),
            ..Default::default()
        };
        let c = |a: Option<&str>, t: Option<&str>, r: Option<&str>| Condition {
            actor_id: a.map(Into::into),
            actor_task_id: t.map(Into::into),
            actor_run_id: r.map(Into::into),
        };
        assert!(run.satisfies(&c(Some("A"), None, None)));
        assert!(build.satisfies(&c(Some("A"), None, None)));
        assert!(run.satisfies(&c(None, Some("T"), None)));
        assert!(!build.satisfies(&c(None, Some("T"), None)));
        assert!(run.satisfies(&c(None, None, Some("R"))));
        assert!(!run.satisfies(&c(Some("X"), None, None)));
        assert!(!run.satisfies(&c(Some("A"), Some("X"), None)));
        assert!(run.satisfies(&c(Some("A"), Some("T"), Some("R"))));
    }

    #[test]
    fn job_status_sequences_raise_the_right_events() {
        use EventType::*;
        let run = |prev: Option<&str>, next: &str| job_transition_events(JobKind::Run, prev, next);
        let build =
            |prev: Option<&str>, next: &str| job_transition_events(JobKind::Build, prev, next);
        assert_eq!(run(None, "READY"), Ok(vec![RunCreated]));
        assert_eq!(run(None, "RUNNING"), Ok(vec![RunCreated]));
        assert_eq!(run(None, "SUCCEEDED"), Ok(vec![RunCreated, RunSucceeded]));
        assert_eq!(run(Some("READY"), "RUNNING"), Ok(vec![]));
        assert_eq!(run(Some("RUNNING"), "RUNNING"), Ok(vec![]));
        assert_eq!(run(Some("RUNNING"), "SUCCEEDED"), Ok(vec![RunSucceeded]));
        assert_eq!(run(Some("RUNNING"), "FAILED"), Ok(vec![RunFailed]));
        assert_eq!(run(Some("TIMING-OUT"), "TIMED-OUT"), Ok(vec![RunTimedOut]));
        assert_eq!(run(Some("ABORTING"), "ABORTED"), Ok(vec![RunAborted]));
        assert_eq!(run(Some("RUNNING"), "TIMING-OUT"), Ok(vec![]));
        assert_eq!(run(Some("SUCCEEDED"), "RUNNING"), Ok(vec![RunResurrected]));
        assert_eq!(run(Some("FAILED"), "READY"), Ok(vec![RunResurrected]));
        assert_eq!(run(Some("ABORTED"), "ABORTING"), Ok(vec![]));
        assert_eq!(run(Some("SUCCEEDED"), "SUCCEEDED"), Ok(vec![]));
        assert!(run(Some("SUCCEEDED"), "FAILED").is_err());
        assert!(run(Some("TIMED-OUT"), "ABORTED").is_err());
        assert_eq!(build(None, "RUNNING"), Ok(vec![BuildCreated]));
        assert_eq!(build(None, "FAILED"), Ok(vec![BuildCreated, BuildFailed]));
        assert_eq!(build(Some("RUNNING"), "SUCCEEDED"), Ok(vec![BuildSucceeded]));
        assert_eq!(build(Some("RUNNING"), "TIMED-OUT"), Ok(vec![BuildTimedOut]));
        assert_eq!(build(Some("RUNNING"), "ABORTED"), Ok(vec![BuildAborted]));
        assert_eq!(build(Some("SUCCEEDED"), "RUNNING"), Ok(vec![]));
        assert!(build(Some("FAILED"), "SUCCEEDED").is_err());
    }
}
