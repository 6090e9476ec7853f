//! The bytes that requests hold at once (bodies as read and decoded, dispatches as rendered),
//! shared by every connection: `limits.request_bytes_inflight_max`. A request charges what it
//! holds and is refused with a 503 when the budget is spent, instead of waiting (a request
//! waiting while holding a part of the budget could wait on another one forever).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes a parsed `serde_json::Value` tree may take per byte of its JSON text: a tree of
/// `[0,0,0,...]` holds a 72-byte value per 2 bytes of text, in a vector that may have doubled.
/// Parsing a text into a tree is charged this many bytes per byte, so concurrent parses stay
/// within the budget whatever the shape of their JSON.
pub const TREE_BYTES_PER_JSON_BYTE: usize = 80;

/// The shared budget.
#[derive(Debug)]
pub struct ByteBudget {
    used: AtomicUsize,
    max: usize,
}

/// Bytes charged to the budget by one request; given back when dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<ByteBudget>,
    bytes: usize,
}

impl ByteBudget {
    pub fn new(max: usize) -> Arc<ByteBudget> {
        Arc::new(ByteBudget { used: AtomicUsize::new(0), max })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// An empty charge, to grow as the request reads and renders.
    pub fn charge(self: &Arc<Self>) -> Charge {
        Charge { budget: self.clone(), bytes: 0 }
    }

    fn try_add(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.max)
            })
            .is_ok()
    }

    /// Bytes charged now, over all requests.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

impl Charge {
    /// Adds `bytes` to this request's charge; `false` (and nothing added) when the budget
    /// has no room for them.
    pub fn grow(&mut self, bytes: usize) -> bool {
        if self.budget.try_add(bytes) {
            self.bytes += bytes;
            true
        } else {
            false
        }
    }

    /// The bytes this charge holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The budget's size, for messages.
    pub fn budget_max(&self) -> usize {
        self.budget.max
    }

    /// Gives back `bytes` of this charge (what was freed early).
    pub fn shrink(&mut self, bytes: usize) {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        self.budget.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_stay_within_the_budget_and_are_given_back() {
        let budget = ByteBudget::new(100);
        let mut a = budget.charge();
        assert!(a.grow(60));
        let mut b = budget.charge();
        assert!(!b.grow(41), "over the budget");
        assert!(b.grow(40));
        assert_eq!(budget.used(), 100);
        a.shrink(10);
        assert_eq!(budget.used(), 90);
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
