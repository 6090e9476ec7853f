//! redb's errors as the store's: a storage error stops the writer (fail-stop).

use crate::store::StoreError;

/// Any redb error as a storage error.
pub(crate) fn storage<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Storage(e.into().to_string())
}
