//! A replica's figures, a plain value: the keeper fills them in and `observe` reports them,
//! so it depends on neither.

/// A standby replica's figures (see [`StatsSnapshot::standbys`](crate::StatsSnapshot)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StandbyStats {
    /// Changelog records behind the changelogs' ends, all stores: what a promotion would
    /// read now.
    pub lag: u64,
    /// Changelog records read since the replica was opened.
    pub records_read: u64,
    /// Changelog data records it did not apply because the restore rules make them void: a
    /// zombie's writes after its successor took over, or a flush that never completed.
    pub void_records: u64,
}
