//! Which of its shards a node's outbox walk probes. A probe costs an index descent whether the
//! shard has work or not, and one node holds all 64 shards while a few targets' work sits in
//! a few of them: so a walk probes the shards that had work at the last walk or got some since
//! (marked by this node's commits and by other nodes' notifications), and every held shard
//! at least once every `FULL_WALK_MS`, so that a lost mark only delays.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Every held shard is walked at least this often, whatever the marks say.
pub(super) const FULL_WALK_MS: u64 = 1000;

pub(super) struct WalkShards {
    /// Shards given work since the last walk began.
    marked: BTreeSet<i16>,
    /// Shards probed by every walk until one finds them empty.
    candidates: BTreeSet<i16>,
    /// When the next walk probes every held shard (`None`: the next one).
    full_walk_at: Option<Instant>,
}

impl WalkShards {
    pub(super) fn new() -> WalkShards {
        WalkShards { marked: BTreeSet::new(), candidates: BTreeSet::new(), full_walk_at: None }
    }

    /// Work was committed (or notified) in these shards.
    pub(super) fn mark(&mut self, shards: &[i16]) {
        self.marked.extend(shards);
    }

    /// Work may be anywhere (new leases, a redelivery, a reconnect): the next walk probes all.
    pub(super) fn mark_all(&mut self) {
        self.full_walk_at = None;
    }

    /// The shards to walk now, out of `held` and in its order.
    pub(super) fn begin(&mut self, held: &[i16], now: Instant) -> Vec<i16> {
        self.candidates.append(&mut self.marked);
        if self.full_walk_at.is_none_or(|at| now >= at) {
            self.full_walk_at = Some(now + Duration::from_millis(FULL_WALK_MS));
            return held.to_vec();
        }
        held.iter().copied().filter(|s| self.candidates.contains(s)).collect()
    }

    /// After a walk of `walked` found rows in `found`. A walk cut short by its row limit may
    /// not have reached some shards: it drops none.
    pub(super) fn settle(&mut self, walked: &[i16], found: &BTreeSet<i16>, cut_short: bool) {
        self.candidates.extend(found);
        if !cut_short {
            for s in walked.iter().filter(|s| !found.contains(s)) {
                self.candidates.remove(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(shards: &[i16]) -> BTreeSet<i16> {
        shards.iter().copied().collect()
    }

    #[test]
    fn walks_all_first_then_only_shards_with_work() {
        let (mut w, t0) = (WalkShards::new(), Instant::now());
        let held = [1, 2, 3, 4];
        assert_eq!(w.begin(&held, t0), held);
        w.settle(&held, &set(&[2]), false);
        assert_eq!(w.begin(&held, t0), [2]);
        w.settle(&[2], &set(&[]), false);
        assert_eq!(w.begin(&held, t0), Vec::<i16>::new());
        w.mark(&[4, 9]);
        assert_eq!(w.begin(&held, t0), [4], "marked and held");
    }

    #[test]
    fn a_mark_made_during_a_walk_is_kept_for_the_next() {
        let (mut w, t0) = (WalkShards::new(), Instant::now());
        let held = [1, 2, 3];
        let walked = w.begin(&held, t0);
        w.mark(&[3]); // committed while the walk ran, maybe after its snapshot
        w.settle(&walked, &set(&[]), false);
        assert_eq!(w.begin(&held, t0), [3]);
    }

    #[test]
    fn a_cut_short_walk_drops_nothing_and_all_are_walked_again_in_time() {
        let (mut w, t0) = (WalkShards::new(), Instant::now());
        let held = [1, 2, 3];
        let walked = w.begin(&held, t0);
        w.settle(&walked, &set(&[1]), false);
        w.mark(&[2, 3]);
        let walked = w.begin(&held, t0);
        w.settle(&walked, &set(&[1]), true);
        assert_eq!(w.begin(&held, t0), held);
        w.settle(&held, &set(&[]), false);
        assert_eq!(w.begin(&held, t0), Vec::<i16>::new());
        let later = t0 + Duration::from_millis(FULL_WALK_MS);
        assert_eq!(w.begin(&held, later), held, "every shard once a full-walk interval passed");
        w.mark_all();
        assert_eq!(w.begin(&held, later), held, "and after mark_all");
    }
}
