//! Consumer configuration: a builder that validates, and the only place where rdkafka
//! properties are derived.

use std::path::PathBuf;
use std::time::Duration;

use crate::state::StoreSpec;

mod builder;
mod clients;
mod compression;
mod guarantee;
#[cfg(test)]
mod tests;

pub use builder::ConsumerConfigBuilder;
pub use compression::Compression;
pub use guarantee::ProcessingGuarantee;
pub(crate) use guarantee::{EXACTLY_ONCE_COMMIT_INTERVAL, TRANSACTION_TIMEOUT};

/// The configuration was rejected by [`ConsumerConfigBuilder::build`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A required value is empty.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// Static membership takes the instance id from an environment variable that is not set.
    #[error("group.instance.id: environment variable {var} is not set (or not unicode); set it, or choose dynamic membership explicitly")]
    MissingInstanceIdEnv {
        /// The variable that was read.
        var: String,
    },
    /// A value is out of its allowed range.
    #[error("{name} = {value:?} is invalid: {reason}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// The rejected value.
        value: String,
        /// What is allowed.
        reason: &'static str,
    },
    /// A raw rdkafka override would break one of the library's guarantees.
    #[error("rdkafka property {key}={value:?} is not allowed: {reason}")]
    ForbiddenOverride {
        /// The property.
        key: String,
        /// The rejected value.
        value: String,
        /// Why the library owns it.
        reason: &'static str,
    },
    /// Two stores share a name.
    #[error("store {0:?} is declared twice")]
    DuplicateStore(String),
}

/// How this consumer identifies itself to the group coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Membership {
    /// Static membership with this `group.instance.id`.
    Static(String),
    /// Static membership with the `group.instance.id` read from an environment variable
    /// (`HOSTNAME` in a Kubernetes StatefulSet gives stable ids like `app-0`).
    StaticFromEnv(String),
    /// Dynamic membership: every restart is a new member and triggers a rebalance.
    Dynamic,
}

/// Partition assignment protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AssignmentStrategy {
    /// Eager `range` assignment: every rebalance revokes all partitions, then assigns.
    Range,
    /// Eager `roundrobin` assignment.
    RoundRobin,
    /// Cooperative-incremental `cooperative-sticky`: only moved partitions are revoked.
    #[default]
    CooperativeSticky,
}

impl AssignmentStrategy {
    fn rdkafka_name(self) -> &'static str {
        match self {
            Self::Range => "range",
            Self::RoundRobin => "roundrobin",
            Self::CooperativeSticky => "cooperative-sticky",
        }
    }
}

/// What a closing consumer tells the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CloseBehavior {
    /// Static members stay in the group until `session.timeout.ms` expires, so a restart
    /// within that time keeps its partitions. (Dynamic members always leave.)
    #[default]
    KeepMembership,
    /// Leave the group on close so partitions move at once (scale-down).
    LeaveGroup,
}

/// What to do with a record that cannot be decoded or whose handler keeps failing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ErrorPolicy {
    /// Stop the consumer with an error naming topic, partition and offset; nothing at or after
    /// that offset is committed, so a restart retries it.
    #[default]
    Fail,
    /// Log, count, commit past it.
    Skip,
    /// Produce the raw record with `ks.error.*` headers to this topic, then commit past it.
    DeadLetter(String),
}

/// What to do when a subscribed topic does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MissingTopics {
    /// `run()` returns [`Error::TopicMissing`](crate::Error::TopicMissing) at start, and when a
    /// topic disappears while consuming (as Kafka Streams does).
    #[default]
    Fail,
    /// Keep running and consume the topic once it exists (librdkafka logs a warning on each
    /// metadata refresh meanwhile). Not allowed with stores: changelogs are sized from it.
    Wait,
}

/// What happens to a record that is late for every window it falls in (see
/// [`crate::window`]): it is never applied, and always counted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LatePolicy {
    /// Dropped (and counted).
    #[default]
    Drop,
    /// The raw record is produced to this topic with `ks.error.kind=late` (and counted).
    DeadLetter(String),
}

/// Retries of a failing handler before the [`ErrorPolicy`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0: no retry).
    pub max_retries: u32,
    /// Backoff before the first retry; doubled each time.
    pub initial_backoff: Duration,
    /// Upper bound of the backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 0,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Which memory sizes were set explicitly on the builder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SizesSet {
    pub(crate) queue_bytes: bool,
    pub(crate) total_queue_bytes: bool,
    pub(crate) overlay_bytes: bool,
}

impl ConsumerConfig {
    /// The share of the memory budget for each of its four uses: RocksDB's block cache,
    /// RocksDB's memtables, fetched records waiting for their workers, and unflushed state.
    fn budget_share(&self) -> usize {
        self.memory_budget / 4
    }

    /// RocksDB's shared block cache (see [`crate::ConsumerConfigBuilder::memory_budget`]):
    /// the cache share, less what the tables' read caches take of it.
    pub(crate) fn rocks_cache_bytes(&self) -> usize {
        self.budget_share() - self.table_caches_share()
    }

    /// With tables declared, five sixths of the cache share go to their read caches: a
    /// table read served from memory costs a small fraction of a RocksDB point read (see
    /// `table::cache`), and RocksDB then reads the tables only on misses. The sixth left
    /// (8 MiB of the default budget) keeps the stores' index and filter blocks cached.
    fn table_caches_share(&self) -> usize {
        match self.tables.is_empty() {
            true => 0,
            false => self.budget_share() / 6 * 5,
        }
    }

    /// RocksDB's memtables, all partitions together.
    pub(crate) fn rocks_write_bytes(&self) -> usize {
        self.budget_share()
    }

    /// This configuration with the queue and overlay sizes the user did not set derived
    /// from the memory budget for `partitions` partitions (the most this consumer can own):
    /// memory follows the budget, not the partition count.
    pub(crate) fn sized_for(&self, partitions: usize) -> Self {
        let mut c = self.clone();
        let share = c.budget_share();
        let per_partition = share / partitions.max(1);
        if !c.sizes_set.total_queue_bytes {
            c.total_queue_bytes = share;
        }
        if !c.sizes_set.queue_bytes {
            c.queue_bytes = (c.total_queue_bytes / partitions.max(1)).clamp(256 << 10, 16 << 20);
        }
        if !c.sizes_set.overlay_bytes {
            c.overlay_bytes = per_partition.clamp(1 << 20, 64 << 20);
        }
        // One table store per partition (its co-partitioned tables) and one per global table.
        let globals = c.tables.iter().filter(|t| t.global).count();
        let copartitioned = c.tables.len() > globals;
        let stores = globals + if copartitioned { partitions.max(1) } else { 0 };
        c.table_cache_bytes = c.table_caches_share() / stores.max(1);
        c
    }
}

/// Validated configuration; build it with [`ConsumerConfig::builder`].
#[derive(Clone)]
pub struct ConsumerConfig {
    pub(crate) bootstrap_servers: String,
    pub(crate) group_id: String,
    pub(crate) topics: Vec<String>,
    /// `None` for dynamic membership.
    pub(crate) instance_id: Option<String>,
    pub(crate) session_timeout: Duration,
    pub(crate) max_poll_interval: Duration,
    pub(crate) commit_interval: Duration,
    pub(crate) queue_capacity: usize,
    pub(crate) queue_bytes: usize,
    pub(crate) total_queue_bytes: usize,
    pub(crate) overlay_bytes: usize,
    /// The consumer's memory budget, and which of the sizes above the user set (the others
    /// are derived from the budget when the partition count is known).
    pub(crate) memory_budget: usize,
    pub(crate) sizes_set: SizesSet,
    pub(crate) assignment: AssignmentStrategy,
    pub(crate) revoke_timeout: Duration,
    pub(crate) flush_timeout: Duration,
    pub(crate) missing_topics: MissingTopics,
    pub(crate) stats_interval: Duration,
    pub(crate) close: CloseBehavior,
    pub(crate) error_policy: ErrorPolicy,
    pub(crate) late_policy: LatePolicy,
    pub(crate) retry: RetryPolicy,
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) stores: Vec<StoreSpec>,
    pub(crate) tables: Vec<crate::table::TableSpec>,
    /// How long an input record waits for its co-partitioned tables to confirm they hold
    /// every update up to its timestamp.
    pub(crate) table_sync_wait: Duration,
    /// The read caches of one table store: a partition's co-partitioned tables, or one
    /// global table (derived from the memory budget when the partition count is known).
    pub(crate) table_cache_bytes: usize,
    /// Records of one partition in flight at once (different keys only); 1: one at a time.
    pub(crate) key_concurrency: usize,
    /// Batch mode ([`ConsumerConfigBuilder::batches`]): `None` hands records one at a time.
    pub(crate) batches: Option<crate::partition::batches::BatchSettings>,
    /// With key-level concurrency: how far past the lowest unfinished offset a record may
    /// start.
    pub(crate) concurrency_lookahead: usize,
    pub(crate) flush_max_records: usize,
    pub(crate) flush_interval: Duration,
    pub(crate) changelog_replication: i32,
    /// How the records this consumer produces are compressed.
    pub(crate) compression: Compression,
    pub(crate) standby: Option<crate::standby::StandbyReplicas>,
    /// At-least-once, or exactly-once through Kafka transactions.
    pub(crate) guarantee: ProcessingGuarantee,
    consumer_overrides: Vec<(String, String)>,
    client_overrides: Vec<(String, String)>,
}
