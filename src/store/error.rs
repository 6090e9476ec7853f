//! The store's error type: what callers can act on, whichever backend holds the data.

use crate::model::FieldError;

/// A redelivery of a dispatch still being delivered.
pub(crate) fn refused_active() -> StoreError {
    StoreError::Refused("The dispatch is ACTIVE: it is being delivered.".into())
}

/// A redelivery of a dispatch whose webhook is gone.
pub(crate) fn refused_deleted() -> StoreError {
    StoreError::Refused("The dispatch's webhook was deleted: it is not delivered again.".into())
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The record does not exist or belongs to another user.
    #[error("record not found")]
    NotFound,
    /// The write breaks a rule that needs the stored state to check (e.g. changing `isAdHoc`).
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The record changed since it was read (a job's status moved); read again and retry.
    #[error("the record changed meanwhile")]
    Conflict,
    /// The record's state does not allow the change (redelivering an ACTIVE dispatch); the
    /// message says why.
    #[error("{0}")]
    Refused(String),
    /// The user already has this many webhooks (the limit).
    #[error("the user has reached the limit of {0} webhooks")]
    TooManyWebhooks(usize),
    /// The write queue is full.
    #[error("the write queue is full")]
    Busy,
    /// The writer has stopped (shutdown or an earlier storage failure); nothing was written.
    #[error("the store does not accept writes")]
    Unavailable,
    /// A commit failed: the writer has stopped (fail-stop) and the process is shutting down.
    #[error("the store failed and accepts no more writes: {0}")]
    Failed(String),
    /// An I/O or database error. The writer stops at the first one (fail-stop).
    #[error("storage error: {0}")]
    Storage(String),
    /// A record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The events were matched against a webhook index older than the store's (an
    /// `IndexStamp` behind a committed webhook write); nothing was written: match again with
    /// `Store::match_webhooks` and resubmit.
    #[error("the webhooks changed since the events were matched")]
    StaleIndex,
}
