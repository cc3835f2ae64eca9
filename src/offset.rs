//! Offset bookkeeping: what may be committed for each partition.
//!
//! A partition's committable offset is `last fully processed and durable offset + 1`. The
//! worker owns an [`OffsetTracker`] (which records may count as done) and publishes the
//! durable position through [`PartitionProgress`]; the poll loop reads it and commits.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

/// Tracks which fetched records are finished, tolerating gaps (compacted or transactional
/// topics skip offsets) and out-of-order completion.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    /// Started but not finished.
    pending: BTreeSet<i64>,
    /// One past the highest finished offset.
    high: Option<i64>,
}

impl OffsetTracker {
    /// A record was handed to the handler.
    pub(crate) fn start(&mut self, offset: i64) {
        self.pending.insert(offset);
    }

    /// A record's handler returned (or the record was skipped by policy).
    pub(crate) fn finish(&mut self, offset: i64) {
        self.pending.remove(&offset);
        self.high = Some(self.high.map_or(offset + 1, |h| h.max(offset + 1)));
    }

    /// The offset to commit once everything finished so far is durable: the lowest
    /// unfinished offset if any is pending, else one past the highest finished offset.
    /// `None` until something finished.
    pub(crate) fn committable(&self) -> Option<i64> {
        match (self.pending.first(), self.high) {
            (Some(&low), Some(high)) => Some(low.min(high)),
            (None, high) => high,
            (Some(_), None) => None,
        }
    }
}

/// A partition's progress, written by its worker and read by the poll loop and stats.
#[derive(Debug)]
pub(crate) struct PartitionProgress {
    /// Next offset whose effects are not yet durable: what may be committed. -1: nothing yet.
    durable_next: AtomicI64,
    /// Next offset not yet processed (may be ahead of `durable_next` until a flush).
    pub(crate) processed_next: AtomicI64,
    /// Last offset committed by the poll loop. -1: nothing yet.
    pub(crate) committed_next: AtomicI64,
    /// Records waiting in this partition's queue.
    pub(crate) queued: AtomicU64,
    /// Whether the poll loop paused fetching for this partition.
    pub(crate) paused: AtomicBool,
    /// Changelog records replayed by the last restore.
    pub(crate) restored_records: AtomicU64,
    /// Restore rate of the last restore, records/s (f64 bits).
    pub(crate) restore_rate_bits: AtomicU64,
    /// Set once restore finished and the worker processes records.
    pub(crate) ready: AtomicBool,
    /// Records skipped (bad input under `Skip`, or already in restored state).
    pub(crate) skipped: AtomicU64,
}

impl Default for PartitionProgress {
    fn default() -> Self {
        Self {
            durable_next: AtomicI64::new(-1),
            processed_next: AtomicI64::new(-1),
            committed_next: AtomicI64::new(-1),
            queued: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            restored_records: AtomicU64::new(0),
            restore_rate_bits: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            skipped: AtomicU64::new(0),
        }
    }
}

impl PartitionProgress {
    /// Publishes a new durable position; never moves backwards.
    pub(crate) fn set_durable(&self, next: i64) {
        self.durable_next.fetch_max(next, Ordering::AcqRel);
    }

    /// What the poll loop should commit, if it differs from the last commit.
    pub(crate) fn to_commit(&self) -> Option<i64> {
        let durable = self.durable_next.load(Ordering::Acquire);
        (durable >= 0 && durable > self.committed_next.load(Ordering::Acquire)).then_some(durable)
    }

    pub(crate) fn durable_next(&self) -> i64 {
        self.durable_next.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_committable_before_a_record_finishes() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.committable(), None);
        t.start(5);
        assert_eq!(t.committable(), None);
        t.finish(5);
        assert_eq!(t.committable(), Some(6));
    }

    #[test]
    fn out_of_order_completion_commits_only_the_finished_prefix() {
        let mut t = OffsetTracker::default();
        for o in 10..15 {
            t.start(o);
        }
        t.finish(12);
        t.finish(13);
        assert_eq!(t.committable(), Some(10), "10 and 11 are still running");
        t.finish(10);
        assert_eq!(t.committable(), Some(11));
        t.finish(11);
        assert_eq!(t.committable(), Some(14));
        t.finish(14);
        assert_eq!(t.committable(), Some(15));
    }

    #[test]
    fn gaps_in_offsets_do_not_block_commits() {
        // Compacted topics and transaction markers leave holes: 3, 7, 20.
        let mut t = OffsetTracker::default();
        for o in [3, 7, 20] {
            t.start(o);
            t.finish(o);
        }
        assert_eq!(t.committable(), Some(21));
    }

    #[test]
    fn durable_position_never_moves_back_and_is_committed_once() {
        let p = PartitionProgress::default();
        assert_eq!(p.to_commit(), None);
        p.set_durable(8);
        p.set_durable(5);
        assert_eq!(p.to_commit(), Some(8));
        p.committed_next.store(8, Ordering::Release);
        assert_eq!(p.to_commit(), None);
    }
}
