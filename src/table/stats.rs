//! A global table's counters, a plain value: the table's bootstrap and reader count into
//! them and `observe` reports them, so it depends on neither.

use std::sync::atomic::AtomicU64;

/// Figures of one global table as it runs (reported as
/// [`GlobalTableStats`](crate::observe::GlobalTableStats)).
#[derive(Debug)]
pub(crate) struct GlobalTableCounters {
    pub(crate) name: String,
    pub(crate) topic: String,
    /// Records read by the bootstrap at start, and applied since.
    pub(crate) bootstrapped: AtomicU64,
    pub(crate) applied: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) partitions: AtomicU64,
}
