//! [`ConsumerConfigBuilder`] setters for the group: membership, protocol and timing, and the
//! raw client properties.

use std::time::Duration;

use super::ConsumerConfigBuilder;
use crate::config::{
    AssignmentStrategy, CloseBehavior, Membership, MissingTopics, ProcessingGuarantee,
};

impl ConsumerConfigBuilder {
    /// Membership (default: static, instance id from `$HOSTNAME`).
    pub fn membership(mut self, membership: Membership) -> Self {
        self.membership = membership;
        self
    }

    /// Static membership with an explicit `group.instance.id`.
    pub fn instance_id(self, id: impl Into<String>) -> Self {
        self.membership(Membership::Static(id.into()))
    }

    /// Dynamic membership, chosen explicitly: restarts cause rebalances and state moves.
    pub fn dynamic_membership(self) -> Self {
        self.membership(Membership::Dynamic)
    }

    /// `session.timeout.ms` (default 45 s): how long a silent static member keeps its
    /// partitions. Must exceed a restart.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.config.session_timeout = timeout;
        self
    }

    /// `max.poll.interval.ms` (default 5 min). The poll loop never runs handlers, so slow
    /// handlers do not count against it.
    pub fn max_poll_interval(mut self, interval: Duration) -> Self {
        self.config.max_poll_interval = interval;
        self
    }

    /// How often durable offsets are committed (default 5 s). Commits also happen on revoke
    /// and on shutdown. Only flushed records can be committed, so unless
    /// [`flush_interval`](Self::flush_interval) is set, state is flushed at this interval too
    /// (as Kafka Streams flushes on `commit.interval.ms`).
    ///
    /// Under [`ProcessingGuarantee::ExactlyOnce`] the default is 100 ms: each interval
    /// commits one transaction, and its outputs are visible to `read_committed` readers only
    /// then.
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.config.commit_interval = interval;
        self.commit_interval_set = true;
        self
    }

    /// At-least-once (the default) or exactly-once through Kafka transactions; see
    /// [`ProcessingGuarantee`]. Exactly-once needs a broker with transactions; its
    /// transactional id is `<group>-<group.instance.id>` for a static member (a restarted
    /// member fences its previous incarnation's producer), a fresh one per run for a dynamic
    /// member (fenced by the group generation instead, KIP-447).
    pub fn processing_guarantee(mut self, guarantee: ProcessingGuarantee) -> Self {
        self.config.guarantee = guarantee;
        self
    }

    /// Assignment protocol (default cooperative-sticky; `range` with
    /// [`standby_replicas`](Self::standby_replicas)).
    pub fn assignment(mut self, strategy: AssignmentStrategy) -> Self {
        self.config.assignment = strategy;
        self.assignment_set = true;
        self
    }

    /// How long a revoke or shutdown waits for an in-flight handler before cancelling it
    /// (default 30 s). A cancelled record is neither flushed nor committed.
    pub fn revoke_timeout(mut self, timeout: Duration) -> Self {
        self.config.revoke_timeout = timeout;
        self
    }

    /// What to do when a subscribed topic does not exist (default [`MissingTopics::Fail`]).
    pub fn missing_topics(mut self, policy: MissingTopics) -> Self {
        self.config.missing_topics = policy;
        self
    }

    /// How often librdkafka reports statistics, from which `Stats` takes each partition's
    /// high watermark and lag (default 1 s).
    pub fn stats_interval(mut self, interval: Duration) -> Self {
        self.config.stats_interval = interval;
        self
    }

    /// What closing tells the group (default: a static member keeps its membership).
    pub fn close_behavior(mut self, close: CloseBehavior) -> Self {
        self.config.close = close;
        self
    }

    /// A raw librdkafka property for the group consumer (fetch sizes, …). Properties that
    /// would break a guarantee are rejected by [`build`](Self::build).
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config
            .consumer_overrides
            .push((key.into(), value.into()));
        self
    }

    /// A raw librdkafka property for every client (security settings, …).
    pub fn set_all_clients(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config
            .client_overrides
            .push((key.into(), value.into()));
        self
    }
}
