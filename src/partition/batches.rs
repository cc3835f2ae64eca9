//! How a batch handler's batches are cut ([`ConsumerConfigBuilder::batches`](crate::ConsumerConfigBuilder::batches)).

use std::time::Duration;

/// Batch mode: records of a partition handed to
/// [`Handler::handle_batch`](crate::Handler::handle_batch) together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// At most this many records per call.
    pub max_records: usize,
    /// A batch waits at most this long after its first record for more to arrive.
    pub max_wait: Duration,
}

impl Default for BatchSettings {
    /// 500 records or 100 ms, whichever comes first.
    fn default() -> Self {
        Self {
            max_records: 500,
            max_wait: Duration::from_millis(100),
        }
    }
}
