//! Offset bookkeeping: what may be committed for each partition.
//!
//! A partition's committable offset is `last fully processed and durable offset + 1`. The
//! worker owns an [`OffsetTracker`] (which records may count as done) and publishes the
//! durable position through [`PartitionProgress`]; the poll loop reads it and commits.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::state::checkpoint::{DoneSet, SourcePosition};

/// How far a partition's records are finished. A worker handles its records one at a time,
/// in offset order, so the next offset to commit is one past the last finished record;
/// gaps in offsets (compacted or transactional topics) need no bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    last: Option<SourcePosition>,
}

impl OffsetTracker {
    /// A tracker whose records before `position.next` are finished already (restored).
    pub(crate) fn starting_at(position: SourcePosition) -> Self {
        Self {
            last: (position.next >= 0).then_some(position),
        }
    }

    /// The record at `offset` (with this timestamp, -1 if none) finished: handled, skipped
    /// or dead-lettered; `stream_time` is the partition's stream time after it.
    pub(crate) fn finish(&mut self, offset: i64, timestamp: i64, stream_time: i64) {
        self.last = Some(SourcePosition {
            next: offset + 1,
            last_timestamp: timestamp,
            stream_time,
            done: DoneSet::EMPTY,
        });
    }

    /// The offset to commit once everything finished so far is durable, with the
    /// timestamp of the record before it. `None` until something finished.
    pub(crate) fn committable(&self) -> Option<SourcePosition> {
        self.last.clone()
    }
}

/// Transactions of an exactly-once member, committed and aborted.
#[derive(Debug, Default)]
pub(crate) struct TransactionCounts {
    pub(crate) committed: AtomicU64,
    pub(crate) aborted: AtomicU64,
}

/// A topic and partition.
pub(crate) type TopicPartition = (String, i32);

/// What waits for one partition's handler: in librdkafka's queue (from its statistics)
/// and in the batch its worker took out and has not handled yet.
#[derive(Debug, Default)]
pub(crate) struct QueueGauge {
    pub(crate) bytes: AtomicUsize,
    pub(crate) records: AtomicUsize,
    pub(crate) taken_bytes: AtomicUsize,
    pub(crate) taken_records: AtomicUsize,
}

impl QueueGauge {
    /// Records waiting in all.
    pub(crate) fn waiting_records(&self) -> usize {
        self.records.load(Ordering::Relaxed) + self.taken_records.load(Ordering::Relaxed)
    }

    /// Bytes waiting in all.
    pub(crate) fn waiting_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed) + self.taken_bytes.load(Ordering::Relaxed)
    }
}

/// How long a commit result may take before the commit counts as failed and is sent again.
const COMMIT_ANSWER_DEADLINE_MS: u64 = 30_000;

/// Milliseconds on a monotonic clock.
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// A partition's progress, written by its worker and read by the poll loop and stats.
#[derive(Debug)]
pub(crate) struct PartitionProgress {
    /// Next offset whose effects are not yet durable: what may be committed. -1: nothing yet.
    durable_next: AtomicI64,
    /// Next offset not yet processed (may be ahead of `durable_next` until a flush).
    pub(crate) processed_next: AtomicI64,
    /// Last offset the broker confirmed as committed for this group. -1: nothing yet.
    pub(crate) committed_next: AtomicI64,
    /// Offset of the commit whose result is still awaited; at most `committed_next` when none
    /// is in flight (a failed commit resets it, so the next interval retries).
    commit_sent: AtomicI64,
    /// When the commit in flight was submitted (milliseconds, [`now_ms`]).
    commit_sent_at_ms: AtomicU64,
    /// Commits of this partition the broker (or the client) rejected.
    pub(crate) commit_failures: AtomicU64,
    /// High watermark of the source partition, from the client's statistics. -1: unknown.
    pub(crate) high_watermark: AtomicI64,
    /// What waits for this partition's handler: librdkafka's queue (from statistics) and
    /// the worker's batch.
    pub(crate) queue: Arc<QueueGauge>,
    /// Changelog records replayed by the last restore.
    pub(crate) restored_records: AtomicU64,
    /// Restore rate of the last restore, records/s (f64 bits).
    pub(crate) restore_rate_bits: AtomicU64,
    /// Set once restore finished and the worker processes records.
    pub(crate) ready: AtomicBool,
    /// Records skipped (bad input under `Skip`, or already in restored state).
    pub(crate) skipped: AtomicU64,
    /// Another owner took over the partition's changelogs: never commit for it again.
    pub(crate) fenced: AtomicBool,
    /// Records handled (by the handler, successfully).
    pub(crate) handled: AtomicU64,
    /// Records sent to the dead-letter topic.
    pub(crate) dead_lettered: AtomicU64,
    /// Records late for every window they fall in.
    pub(crate) late: AtomicU64,
    /// Pending timers.
    pub(crate) timers: AtomicU64,
    /// Times the worker looked for due wall-clock timers.
    pub(crate) wall_ticks: AtomicU64,
    /// Records handled per second over the last stats interval (f64 bits).
    pub(crate) rate_bits: AtomicU64,
    /// Duration (µs) and data records of the last flush.
    pub(crate) last_flush_us: AtomicU64,
    pub(crate) last_flush_records: AtomicU64,
    /// Restore progress: changelog records to read in all, and read so far.
    pub(crate) restore_total: AtomicU64,
    pub(crate) restore_done: AtomicU64,
    pub(crate) restore_started: std::sync::OnceLock<std::time::Instant>,
    /// Table bootstrap progress: records to read in all, and read so far.
    pub(crate) table_total: AtomicU64,
    pub(crate) table_done: AtomicU64,
    /// Table records read by the bootstrap at assignment, and its rate (f64 bits).
    pub(crate) table_bootstrapped: AtomicU64,
    pub(crate) table_rate_bits: AtomicU64,
}

impl Default for PartitionProgress {
    fn default() -> Self {
        Self {
            durable_next: AtomicI64::new(-1),
            processed_next: AtomicI64::new(-1),
            committed_next: AtomicI64::new(-1),
            commit_sent: AtomicI64::new(-1),
            commit_sent_at_ms: AtomicU64::new(0),
            commit_failures: AtomicU64::new(0),
            high_watermark: AtomicI64::new(-1),
            queue: Arc::default(),
            restored_records: AtomicU64::new(0),
            restore_rate_bits: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            skipped: AtomicU64::new(0),
            fenced: AtomicBool::new(false),
            handled: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            late: AtomicU64::new(0),
            timers: AtomicU64::new(0),
            wall_ticks: AtomicU64::new(0),
            rate_bits: AtomicU64::new(0),
            last_flush_us: AtomicU64::new(0),
            last_flush_records: AtomicU64::new(0),
            restore_total: AtomicU64::new(0),
            restore_done: AtomicU64::new(0),
            restore_started: std::sync::OnceLock::new(),
            table_total: AtomicU64::new(0),
            table_done: AtomicU64::new(0),
            table_bootstrapped: AtomicU64::new(0),
            table_rate_bits: AtomicU64::new(0),
        }
    }
}

impl PartitionProgress {
    /// Publishes a new durable position; never moves backwards.
    pub(crate) fn set_durable(&self, next: i64) {
        self.durable_next.fetch_max(next, Ordering::AcqRel);
    }

    /// What the poll loop should commit: the durable position, unless the broker already
    /// has it or a commit of it is in flight.
    pub(crate) fn to_commit(&self) -> Option<i64> {
        if self.fenced.load(Ordering::Acquire) {
            return None;
        }
        let durable = self.durable_next.load(Ordering::Acquire);
        let committed = self.committed_next.load(Ordering::Acquire);
        let sent = self.commit_sent.load(Ordering::Acquire);
        // A result that never came (librdkafka lost it, or the coordinator never answered)
        // must not block commits of this partition forever: past the deadline the commit
        // counts as failed and is sent again.
        let unanswered = sent > committed
            && now_ms().saturating_sub(self.commit_sent_at_ms.load(Ordering::Acquire))
                >= COMMIT_ANSWER_DEADLINE_MS;
        if unanswered {
            tracing::warn!(
                offset = sent,
                "no answer to an offset commit for 30 s: sending it again"
            );
            self.commit_failed(sent);
        }
        let sent = self.commit_sent.load(Ordering::Acquire);
        (durable >= 0 && durable > committed && durable > sent).then_some(durable)
    }

    /// A commit of `next` was submitted; its result is awaited.
    pub(crate) fn commit_submitted(&self, next: i64) {
        self.commit_sent.fetch_max(next, Ordering::AcqRel);
        self.commit_sent_at_ms.store(now_ms(), Ordering::Release);
    }

    /// The broker confirmed `next` as this partition's committed offset.
    pub(crate) fn commit_succeeded(&self, next: i64) {
        self.committed_next.fetch_max(next, Ordering::AcqRel);
    }

    /// The commit of `next` failed: count it, and let the next interval retry it.
    pub(crate) fn commit_failed(&self, next: i64) {
        self.commit_failures.fetch_add(1, Ordering::Relaxed);
        let committed = self.committed_next.load(Ordering::Acquire);
        let _ =
            self.commit_sent
                .compare_exchange(next, committed, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Whether a submitted commit still awaits its result.
    pub(crate) fn commit_in_flight(&self) -> bool {
        self.commit_sent.load(Ordering::Acquire) > self.committed_next.load(Ordering::Acquire)
    }

    pub(crate) fn durable_next(&self) -> i64 {
        self.durable_next.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_committable_before_a_record_finishes_and_gaps_do_not_block() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.committable(), None);
        // Compacted topics and transaction markers leave holes: 3, 7, 20.
        for o in [3, 7, 20] {
            t.finish(o, 1000 + o, 2000 + o);
        }
        assert_eq!(
            t.committable(),
            Some(SourcePosition {
                next: 21,
                last_timestamp: 1020,
                stream_time: 2020,
                done: DoneSet::EMPTY,
            })
        );
    }

    #[test]
    fn durable_position_never_moves_back_and_is_committed_once() {
        let p = PartitionProgress::default();
        assert_eq!(p.to_commit(), None);
        p.set_durable(8);
        p.set_durable(5);
        assert_eq!(p.to_commit(), Some(8));
        p.commit_submitted(8);
        assert_eq!(p.to_commit(), None, "in flight: not sent again");
        assert!(p.commit_in_flight());
        p.commit_succeeded(8);
        assert!(!p.commit_in_flight());
        assert_eq!(p.to_commit(), None, "already committed: not sent again");
        p.set_durable(9);
        assert_eq!(p.to_commit(), Some(9));
    }

    #[test]
    fn a_failed_commit_is_counted_and_retried() {
        let p = PartitionProgress::default();
        p.set_durable(4);
        p.commit_submitted(4);
        p.commit_failed(4);
        assert_eq!(p.commit_failures.load(Ordering::Relaxed), 1);
        assert!(!p.commit_in_flight());
        assert_eq!(p.to_commit(), Some(4), "retried on the next interval");
        // A late failure of an older commit does not cancel a newer one in flight.
        p.set_durable(6);
        p.commit_submitted(6);
        p.commit_failed(4);
        assert!(p.commit_in_flight());
    }
}
