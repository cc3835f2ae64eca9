//! The user's hooks: traits with do-nothing defaults, called by the poll loop and by
//! restores. Nothing but std here, so every layer that calls them can import them.

use std::time::Duration;

/// Called on rebalances, on the poll-loop thread: return quickly (no I/O), or heartbeats and
/// other partitions' routing wait.
pub trait RebalanceListener: Send + Sync + 'static {
    /// Partitions were assigned; their workers restore state, then process.
    fn on_assigned(&self, _partitions: &[(String, i32)]) {}
    /// Partitions were revoked, after their in-flight records finished, their state was
    /// flushed and their offsets were committed.
    fn on_revoked(&self, _partitions: &[(String, i32)]) {}
}

/// Called during state restore, on the restoring partition's blocking thread. Return quickly.
pub trait RestoreListener: Send + Sync + 'static {
    /// Restore of a partition starts; `records` changelog records are to be read.
    fn on_restore_start(&self, _topic: &str, _partition: i32, _records: u64) {}
    /// A batch was applied.
    fn on_restore_progress(&self, _topic: &str, _partition: i32, _restored: u64, _remaining: u64) {}
    /// Restore finished; the partition's worker starts processing.
    fn on_restore_end(&self, _topic: &str, _partition: i32, _restored: u64, _elapsed: Duration) {}
    /// A partition this member kept as a standby replica was assigned to it, and its
    /// restore finished: `restored` changelog records were read on top of the replica
    /// (after [`on_restore_end`](Self::on_restore_end)).
    fn on_standby_promoted(
        &self,
        _topic: &str,
        _partition: i32,
        _restored: u64,
        _elapsed: Duration,
    ) {
    }
}

/// A listener that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopListener;

impl RebalanceListener for NoopListener {}
impl RestoreListener for NoopListener {}
