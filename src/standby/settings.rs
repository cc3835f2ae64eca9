//! The standby setting, a plain value: `config` holds it and the keeper reads it, so it
//! depends on neither.

use std::time::Duration;

/// Standby replicas: how many warm copies of each partition the group keeps besides its
/// owner, and how this member keeps its share. Set with
/// [`ConsumerConfigBuilder::standby_replicas`](crate::ConsumerConfigBuilder::standby_replicas).
///
/// ```
/// use std::time::Duration;
/// use kafka_stateful::StandbyReplicas;
/// let standbys = StandbyReplicas::new(1).cleanup_delay(Duration::from_secs(600));
/// # let _ = standbys;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyReplicas {
    pub(crate) replicas: usize,
    pub(crate) cleanup_delay: Duration,
    pub(crate) refresh: Duration,
}

impl StandbyReplicas {
    /// `replicas` warm copies of each partition on other members (like Kafka Streams'
    /// `num.standby.replicas`). Defaults: stale directories deleted after 10 minutes, the
    /// group's membership read every 5 seconds.
    pub fn new(replicas: usize) -> Self {
        Self {
            replicas,
            cleanup_delay: Duration::from_secs(600),
            refresh: Duration::from_secs(5),
        }
    }

    /// How long the directory of a partition this member neither owns nor keeps stays on
    /// disk (it may come back). Kafka Streams' `state.cleanup.delay.ms`.
    pub fn cleanup_delay(mut self, delay: Duration) -> Self {
        self.cleanup_delay = delay;
        self
    }

    /// How often the group's members and owners are read to recompute the replicas (they
    /// are also recomputed whenever this member's assignment changes).
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh = interval;
        self
    }
}
