//! The numbers hookd stores for condition kinds, event types, dispatch statuses and job kinds,
//! the same in every backend. They are in the data: a code never changes meaning, and the lists
//! are spelled out here, apart from the model's, so that no change there changes them.

use crate::model::{ConditionKind, DispatchStatus, EventType, JobKind};

pub fn kind_code(kind: ConditionKind) -> u8 {
    match kind {
        ConditionKind::Actor => 1,
        ConditionKind::ActorTask => 2,
        ConditionKind::ActorRun => 3,
    }
}

/// Every event type in code order (a code is its position).
const EVENT_TYPES: [EventType; 12] = [
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
    EventType::Test,
];
/// Event type codes run from 0 to this, inclusive.
pub const EVENT_CODE_MAX: u8 = EVENT_TYPES.len() as u8 - 1;

pub fn event_code(t: EventType) -> u8 {
    EVENT_TYPES.iter().position(|e| *e == t).map_or(EVENT_CODE_MAX, |i| i as u8)
}

pub fn event_of_code(code: u8) -> Option<EventType> {
    EVENT_TYPES.get(usize::from(code)).copied()
}

/// Status codes run from 0 to this, inclusive.
pub const STATUS_CODE_MAX: u8 = 2;

pub fn status_of_code(code: u8) -> Option<DispatchStatus> {
    match code {
        0 => Some(DispatchStatus::Active),
        1 => Some(DispatchStatus::Succeeded),
        2 => Some(DispatchStatus::Failed),
        _ => None,
    }
}

pub fn status_code(s: DispatchStatus) -> u8 {
    match s {
        DispatchStatus::Active => 0,
        DispatchStatus::Succeeded => 1,
        DispatchStatus::Failed => 2,
    }
}

pub fn job_code(kind: JobKind) -> u8 {
    match kind {
        JobKind::Run => 1,
        JobKind::Build => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_has_its_own_code() {
        let mut codes: Vec<u8> = EVENT_TYPES.iter().map(|t| event_code(*t)).collect();
        assert_eq!(codes, (0..=EVENT_CODE_MAX).collect::<Vec<_>>());
        codes.dedup();
        for code in 0..=EVENT_CODE_MAX {
            assert_eq!(event_of_code(code).map(event_code), Some(code));
        }
        assert_eq!(event_of_code(EVENT_CODE_MAX + 1), None);
        let statuses = [DispatchStatus::Active, DispatchStatus::Succeeded, DispatchStatus::Failed];
        assert_eq!(statuses.map(status_code), [0, 1, STATUS_CODE_MAX]);
    }
}
