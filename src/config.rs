//! Consumer configuration: a builder that validates, and the only place where rdkafka
//! properties are derived.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;

use crate::state::StoreSpec;

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
    pub(crate) flush_max_records: usize,
    pub(crate) flush_interval: Duration,
    pub(crate) changelog_replication: i32,
    consumer_overrides: Vec<(String, String)>,
    client_overrides: Vec<(String, String)>,
}

/// Builder for [`ConsumerConfig`]; see each setter for defaults.
#[derive(Clone)]
pub struct ConsumerConfigBuilder {
    config: ConsumerConfig,
    membership: Membership,
    /// Whether `flush_interval` was set; otherwise it follows `commit_interval`.
    flush_interval_set: bool,
}

/// Keys the library sets itself: overriding them would break a guarantee.
const OWNED_KEYS: &[(&str, &str)] = &[
    (
        "enable.auto.commit",
        "offsets are committed only after a record's effects are durable",
    ),
    (
        "enable.auto.offset.store",
        "the library stores offsets only after processing",
    ),
    (
        "auto.commit.interval.ms",
        "use ConsumerConfigBuilder::commit_interval",
    ),
    ("group.id", "use ConsumerConfig::builder"),
    ("group.instance.id", "use ConsumerConfigBuilder::membership"),
    ("bootstrap.servers", "use ConsumerConfig::builder"),
    (
        "partition.assignment.strategy",
        "use ConsumerConfigBuilder::assignment",
    ),
    (
        "session.timeout.ms",
        "use ConsumerConfigBuilder::session_timeout",
    ),
    (
        "max.poll.interval.ms",
        "use ConsumerConfigBuilder::max_poll_interval",
    ),
    (
        "enable.partition.eof",
        "the poll loop relies on it being off",
    ),
    (
        "group.protocol",
        "the classic group protocol is required for static membership here",
    ),
    (
        "transactional.id",
        "changelog writes are not transactional; see the crate docs",
    ),
];

fn is_secret(key: &str) -> bool {
    key.contains("password")
        || key.contains("secret")
        || key.contains("jaas")
        || key.contains("key.pem")
}

impl ConsumerConfig {
    /// Starts a configuration for `group_id` consuming `topics` from `bootstrap_servers`.
    ///
    /// Defaults: static membership with the instance id from `$HOSTNAME`,
    /// `cooperative-sticky`, session timeout 45 s, max poll interval 5 min, commit every 5 s,
    /// partition queues of 100 000 records or 16 MiB (256 MiB in all), revoke timeout 30 s,
    /// fail on bad records.
    pub fn builder<T: Into<String>>(
        bootstrap_servers: impl Into<String>,
        group_id: impl Into<String>,
        topics: impl IntoIterator<Item = T>,
    ) -> ConsumerConfigBuilder {
        ConsumerConfigBuilder {
            membership: Membership::StaticFromEnv("HOSTNAME".into()),
            flush_interval_set: false,
            config: ConsumerConfig {
                bootstrap_servers: bootstrap_servers.into(),
                group_id: group_id.into(),
                topics: topics.into_iter().map(Into::into).collect(),
                instance_id: None,
                // Long enough for a pod to be rescheduled and restarted (typically 10-30 s)
                // without the coordinator declaring the static member dead and moving its
                // partitions; short enough that a crashed member's partitions do move.
                session_timeout: Duration::from_secs(45),
                max_poll_interval: Duration::from_secs(300),
                commit_interval: Duration::from_secs(5),
                queue_capacity: 100_000,
                queue_bytes: 16 << 20,
                total_queue_bytes: 256 << 20,
                overlay_bytes: 64 << 20,
                assignment: AssignmentStrategy::default(),
                revoke_timeout: Duration::from_secs(30),
                flush_timeout: Duration::from_secs(30),
                missing_topics: MissingTopics::default(),
                stats_interval: Duration::from_secs(1),
                close: CloseBehavior::default(),
                error_policy: ErrorPolicy::default(),
                late_policy: LatePolicy::default(),
                retry: RetryPolicy::default(),
                state_dir: None,
                stores: Vec::new(),
                flush_max_records: 1_000_000,
                flush_interval: Duration::from_secs(5),
                changelog_replication: -1,
                consumer_overrides: Vec::new(),
                client_overrides: Vec::new(),
            },
        }
    }

    /// The consumer group.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// The resolved `group.instance.id`, `None` for dynamic membership.
    pub fn instance_id(&self) -> Option<&str> {
        self.instance_id.as_deref()
    }

    fn base_client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        for (k, v) in &self.client_overrides {
            c.set(k, v);
        }
        c
    }

    /// The group consumer's rdkafka configuration.
    pub(crate) fn group_consumer(&self) -> ClientConfig {
        let mut c = self.base_client();
        c.set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "partition.assignment.strategy",
                self.assignment.rdkafka_name(),
            )
            .set("session.timeout.ms", millis(self.session_timeout))
            .set("max.poll.interval.ms", millis(self.max_poll_interval))
            // librdkafka's default (1000 ms) stalls a partition's fetching for a whole second
            // whenever its prefetch queue was over threshold, although the poll loop empties
            // that queue within milliseconds: measured 150k records/s with it and 950k
            // records/s with 10 ms (benches/throughput.rs). The thresholds still bound memory.
            // Overridable with `set`.
            .set("fetch.queue.backoff.ms", "10")
            // High watermarks for lag in `Stats` come from librdkafka's statistics.
            .set("statistics.interval.ms", millis(self.stats_interval));
        if let Some(id) = &self.instance_id {
            c.set("group.instance.id", id);
        }
        for (k, v) in &self.consumer_overrides {
            c.set(k, v);
        }
        c
    }

    /// The producer for changelog and dead-letter records: acks from all replicas, and
    /// idempotence so retries neither duplicate nor reorder records.
    pub(crate) fn producer(&self) -> ClientConfig {
        let mut c = self.base_client();
        c.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            // A flush enqueues all its records at once; librdkafka's default local queue
            // (100 000 messages) would make large flushes wait on it.
            .set("queue.buffering.max.messages", "1000000");
        c
    }

    /// A consumer without a group, for reading changelogs and watermarks.
    pub(crate) fn restore_consumer(&self) -> ClientConfig {
        let mut c = self.base_client();
        // librdkafka needs a group.id for assign(); the group is never joined (no
        // subscribe) and nothing is committed to it.
        c.set("group.id", format!("{}.restore", self.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest");
        c
    }

    /// Admin client for changelog topics.
    pub(crate) fn admin(&self) -> ClientConfig {
        self.base_client()
    }
}

fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

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
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.config.commit_interval = interval;
        self
    }

    /// Records buffered per partition before the partition is paused (default 100 000).
    ///
    /// Fetched records wait in a per-partition queue for the partition's worker. A partition
    /// is paused when its queue holds more than this many records or more than
    /// [`queue_bytes`](Self::queue_bytes), or when all queues together hold more than
    /// [`total_queue_bytes`](Self::total_queue_bytes); it resumes once its queue drained to
    /// half. Nothing fetched is dropped. Pausing is not free in librdkafka: it discards the
    /// partition's prefetched records, which are fetched again on resume, so the limits are
    /// sized to absorb librdkafka's bursts when the handler keeps up (`cargo bench --bench
    /// throughput` reports pauses).
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.config.queue_capacity = capacity;
        self
    }

    /// Bytes buffered per partition before the partition is paused (default 16 MiB): keys,
    /// values and headers of the queued records plus 64 bytes each.
    pub fn queue_bytes(mut self, bytes: usize) -> Self {
        self.config.queue_bytes = bytes;
        self
    }

    /// Bytes buffered across all partitions of this consumer before the fullest partitions
    /// are paused (default 256 MiB). With librdkafka's own prefetch
    /// (`queued.max.messages.kbytes`, 64 MiB by default) this bounds the memory fetched
    /// records take.
    pub fn total_queue_bytes(mut self, bytes: usize) -> Self {
        self.config.total_queue_bytes = bytes;
        self
    }

    /// Bytes of unflushed state writes per partition before a flush is started early
    /// (default 64 MiB): keys and values in the write overlay.
    pub fn overlay_bytes(mut self, bytes: usize) -> Self {
        self.config.overlay_bytes = bytes;
        self
    }

    /// Assignment protocol (default cooperative-sticky).
    pub fn assignment(mut self, strategy: AssignmentStrategy) -> Self {
        self.config.assignment = strategy;
        self
    }

    /// How long a revoke or shutdown waits for an in-flight handler before cancelling it
    /// (default 30 s). A cancelled record is neither flushed nor committed.
    pub fn revoke_timeout(mut self, timeout: Duration) -> Self {
        self.config.revoke_timeout = timeout;
        self
    }

    /// How long a stopping worker may take for its final flush after its in-flight record
    /// finished or was cancelled (default 30 s); past it the worker is aborted and its
    /// unflushed records stay uncommitted.
    ///
    /// `revoke_timeout + flush_timeout` bounds a revoke, and must stay below
    /// `max_poll_interval`: the group coordinator waits at most that long (the rebalance
    /// timeout) for a member to complete a rebalance.
    pub fn flush_timeout(mut self, timeout: Duration) -> Self {
        self.config.flush_timeout = timeout;
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

    /// Policy for undecodable records and failing handlers (default [`ErrorPolicy::Fail`]).
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.config.error_policy = policy;
        self
    }

    /// What to do with records late for every window they fall in (default
    /// [`LatePolicy::Drop`]).
    pub fn late_records(mut self, policy: LatePolicy) -> Self {
        self.config.late_policy = policy;
        self
    }

    /// Handler retries before the error policy applies (default: none).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.config.retry = retry;
        self
    }

    /// Root directory of local state; required when stores are declared.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.state_dir = Some(dir.into());
        self
    }

    /// Declares a store; handlers reach it with
    /// [`PartitionContext::store`](crate::PartitionContext::store).
    pub fn store<K: Send + 'static, V: Send + 'static>(
        mut self,
        store: &crate::StoreDef<K, V>,
    ) -> Self {
        let spec = store.spec();
        let expires = spec.expiry.is_some();
        self.config.stores.push(spec);
        // Expired entries are deleted by a sweep timer.
        if expires {
            self.timers()
        } else {
            self
        }
    }

    /// Declares a window store ([`crate::window`]); enables timers (window closes are
    /// timers).
    pub fn window<K: Send + 'static, V: Send + 'static>(
        mut self,
        window: &crate::window::WindowDef<K, V>,
    ) -> Self {
        self.config.stores.push(window.spec());
        self.timers()
    }

    /// Enables timers ([`crate::timer`]): an internal store `ks.timers` with its changelog
    /// (`<group>-ks.timers-changelog`). Needs a state directory; windows call it for you.
    pub fn timers(mut self) -> Self {
        if !self
            .config
            .stores
            .iter()
            .any(|s| s.name == crate::timer::TIMER_STORE)
        {
            self.config.stores.push(crate::state::StoreSpec {
                name: crate::timer::TIMER_STORE.to_string(),
                format: "timers;version=1".to_string(),
                expiry: None,
            });
        }
        self
    }

    /// Flush state after this many processed records (default 1 000 000).
    ///
    /// Flushes are mostly driven by time ([`flush_interval`](Self::flush_interval)) and by
    /// the write overlay's byte budget ([`overlay_bytes`](Self::overlay_bytes)): the longer a
    /// flush interval, the more updates to one key are combined into one changelog record
    /// (`cargo bench --bench throughput`: counting 500 000 records over 200 000 keys writes
    /// a changelog record for most records with 10 000-record flushes).
    pub fn flush_max_records(mut self, records: usize) -> Self {
        self.config.flush_max_records = records;
        self
    }

    /// Flush state at least this often while records arrive (default: the
    /// [`commit_interval`](Self::commit_interval), 5 s unless set). A longer interval combines
    /// more updates of a key into one changelog record; a commit waits for the flush.
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.config.flush_interval = interval;
        self.flush_interval_set = true;
        self
    }

    /// Replication factor of created changelog topics (default -1: the broker's default).
    pub fn changelog_replication(mut self, factor: i32) -> Self {
        self.config.changelog_replication = factor;
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

    /// Validates and resolves the configuration.
    ///
    /// # Errors
    /// [`ConfigError`] for empty required values, an unset instance-id variable, invalid
    /// durations or capacities, duplicate stores, stores without a state dir or with more
    /// than one source topic, names that make an illegal changelog topic name, and overrides
    /// of properties the library owns.
    pub fn build(self) -> Result<ConsumerConfig, ConfigError> {
        let mut config = self.config;
        if !self.flush_interval_set {
            config.flush_interval = config.commit_interval;
        }
        if config.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::Empty("bootstrap servers"));
        }
        if config.group_id.trim().is_empty() {
            return Err(ConfigError::Empty("group id"));
        }
        if config.topics.is_empty() || config.topics.iter().any(|t| t.trim().is_empty()) {
            return Err(ConfigError::Empty("topics"));
        }
        config.instance_id = match self.membership {
            Membership::Static(id) if id.trim().is_empty() => {
                return Err(ConfigError::Empty("group.instance.id"))
            }
            Membership::Static(id) => Some(id),
            Membership::StaticFromEnv(var) => match std::env::var(&var) {
                Ok(id) if !id.trim().is_empty() => Some(id),
                _ => return Err(ConfigError::MissingInstanceIdEnv { var }),
            },
            Membership::Dynamic => None,
        };
        validate_ranges(&config)?;
        crate::consumer::Subscription::new(&config.topics)?;
        for (key, value) in config
            .consumer_overrides
            .iter()
            .chain(&config.client_overrides)
        {
            check_override(key, value)?;
        }
        let mut names: Vec<&str> = config.stores.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::DuplicateStore(w[0].to_string()));
        }
        if !config.stores.is_empty() {
            validate_stores(&config)?;
        }
        Ok(config)
    }
}

/// Stores need a state dir, exactly one source topic (changelog partition `p` backs source
/// partition `p`, so two source topics would share changelog partitions), and names that make
/// a legal changelog topic name `<group>-<store>-changelog`.
fn validate_stores(c: &ConsumerConfig) -> Result<(), ConfigError> {
    if c.state_dir.is_none() {
        return Err(ConfigError::Empty(
            "state_dir (required when stores are declared)",
        ));
    }
    if c.topics.len() != 1 {
        return Err(ConfigError::Invalid {
            name: "topics",
            value: c.topics.join(","),
            reason: "a consumer with stores reads exactly one source topic",
        });
    }
    let legal = |s: &str| {
        s.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'))
    };
    if !legal(&c.group_id) {
        return Err(ConfigError::Invalid {
            name: "group id",
            value: c.group_id.clone(),
            reason: "with stores, the group id is part of changelog topic names: use only ASCII letters, digits, '.', '_' and '-'",
        });
    }
    for store in &c.stores {
        if store.name.starts_with("ks.") && store.name != crate::timer::TIMER_STORE {
            return Err(ConfigError::Invalid {
                name: "store name",
                value: store.name.clone(),
                reason: "names starting with \"ks.\" are reserved for the library's own stores",
            });
        }
        if store.name.is_empty() || !legal(&store.name) {
            return Err(ConfigError::Invalid {
                name: "store name",
                value: store.name.clone(),
                reason: "part of the changelog topic name: use only ASCII letters, digits, '.', '_' and '-'",
            });
        }
        let topic = crate::changelog::changelog_topic(&c.group_id, &store.name);
        if topic.len() > 249 {
            return Err(ConfigError::Invalid {
                name: "store name",
                value: store.name.clone(),
                reason: "the changelog topic name <group>-<store>-changelog exceeds Kafka's 249 characters",
            });
        }
    }
    Ok(())
}

fn validate_ranges(c: &ConsumerConfig) -> Result<(), ConfigError> {
    let invalid = |name, value: String, reason| {
        Err(ConfigError::Invalid {
            name,
            value,
            reason,
        })
    };
    for (name, value) in [
        ("queue_capacity", c.queue_capacity),
        ("queue_bytes", c.queue_bytes),
        ("total_queue_bytes", c.total_queue_bytes),
        ("overlay_bytes", c.overlay_bytes),
    ] {
        if value == 0 {
            return invalid(name, "0".into(), "must be at least 1");
        }
    }
    if c.flush_max_records == 0 {
        return invalid("flush_max_records", "0".into(), "must be at least 1");
    }
    if c.session_timeout < Duration::from_secs(1) {
        return invalid(
            "session_timeout",
            format!("{:?}", c.session_timeout),
            "must be at least 1 s",
        );
    }
    if c.max_poll_interval < c.session_timeout {
        return invalid(
            "max_poll_interval",
            format!("{:?}", c.max_poll_interval),
            "must be at least the session timeout",
        );
    }
    for (name, d) in [
        ("commit_interval", c.commit_interval),
        ("flush_interval", c.flush_interval),
        ("revoke_timeout", c.revoke_timeout),
        ("flush_timeout", c.flush_timeout),
        ("stats_interval", c.stats_interval),
    ] {
        if d.is_zero() {
            return invalid(name, "0s".into(), "must be positive");
        }
    }
    if c.revoke_timeout + c.flush_timeout >= c.max_poll_interval {
        return invalid(
            "revoke_timeout + flush_timeout",
            format!("{:?}", c.revoke_timeout + c.flush_timeout),
            "must be below max_poll_interval: the coordinator waits at most that long for a member to finish a rebalance, and would remove it from the group",
        );
    }
    if c.missing_topics == MissingTopics::Wait && !c.stores.is_empty() {
        return invalid(
            "missing_topics",
            "Wait".into(),
            "a consumer with stores sizes its changelogs from the source topic, which must exist at start",
        );
    }
    if let ErrorPolicy::DeadLetter(topic) = &c.error_policy {
        if topic.trim().is_empty() || c.topics.contains(topic) {
            return invalid(
                "dead letter topic",
                topic.clone(),
                "must be non-empty and not a source topic",
            );
        }
    }
    Ok(())
}

fn check_override(key: &str, value: &str) -> Result<(), ConfigError> {
    if let Some((_, reason)) = OWNED_KEYS.iter().find(|(k, _)| *k == key) {
        // Setting a library-owned key to the value the library uses anyway is harmless.
        let harmless = matches!(
            (key, value),
            ("enable.auto.commit", "false") | ("enable.auto.offset.store", "false")
        );
        if !harmless {
            return Err(ConfigError::ForbiddenOverride {
                key: key.to_string(),
                value: if is_secret(key) {
                    "***".into()
                } else {
                    value.to_string()
                },
                reason,
            });
        }
    }
    Ok(())
}

fn redacted(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), if is_secret(k) { "***" } else { v.as_str() }))
        .collect()
}

impl fmt::Debug for ConsumerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("group_id", &self.group_id)
            .field("topics", &self.topics)
            .field("instance_id", &self.instance_id)
            .field("session_timeout", &self.session_timeout)
            .field("max_poll_interval", &self.max_poll_interval)
            .field("commit_interval", &self.commit_interval)
            .field("queue_capacity", &self.queue_capacity)
            .field("queue_bytes", &self.queue_bytes)
            .field("total_queue_bytes", &self.total_queue_bytes)
            .field("overlay_bytes", &self.overlay_bytes)
            .field("assignment", &self.assignment)
            .field("revoke_timeout", &self.revoke_timeout)
            .field("flush_timeout", &self.flush_timeout)
            .field("missing_topics", &self.missing_topics)
            .field("stats_interval", &self.stats_interval)
            .field("close", &self.close)
            .field("error_policy", &self.error_policy)
            .field("late_policy", &self.late_policy)
            .field("retry", &self.retry)
            .field("state_dir", &self.state_dir)
            .field("stores", &self.stores)
            .field("flush_max_records", &self.flush_max_records)
            .field("flush_interval", &self.flush_interval)
            .field("consumer_overrides", &redacted(&self.consumer_overrides))
            .field("client_overrides", &redacted(&self.client_overrides))
            .finish()
    }
}

impl fmt::Debug for ConsumerConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerConfigBuilder")
            .field("membership", &self.membership)
            .field("config", &self.config)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> ConsumerConfigBuilder {
        ConsumerConfig::builder("127.0.0.1:9092", "g", ["t"]).instance_id("i-0")
    }

    #[test]
    fn defaults_give_static_membership_and_manual_commits() {
        let c = builder().build().unwrap();
        let rd = c.group_consumer();
        assert_eq!(rd.get("group.instance.id"), Some("i-0"));
        assert_eq!(rd.get("enable.auto.commit"), Some("false"));
        assert_eq!(rd.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(
            rd.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(rd.get("session.timeout.ms"), Some("45000"));
    }

    #[test]
    fn flushes_follow_the_commit_interval_unless_set() {
        let second = Duration::from_secs(1);
        let c = builder().commit_interval(second).build().unwrap();
        assert_eq!(c.flush_interval, second, "a commit waits for the flush");
        let c = builder()
            .flush_interval(Duration::from_secs(10))
            .commit_interval(second)
            .build()
            .unwrap();
        assert_eq!(c.flush_interval, Duration::from_secs(10));
        assert_eq!(builder().build().unwrap().flush_interval, 5 * second);
    }

    #[test]
    fn auto_commit_override_is_rejected() {
        let err = builder()
            .set("enable.auto.commit", "true")
            .build()
            .unwrap_err();
        assert!(
            matches!(err, ConfigError::ForbiddenOverride { ref key, .. } if key == "enable.auto.commit")
        );
        assert!(builder().set("enable.auto.commit", "false").build().is_ok());
        let err = builder()
            .set_all_clients("group.instance.id", "x")
            .build()
            .unwrap_err();
        assert!(matches!(err, ConfigError::ForbiddenOverride { .. }));
        assert!(builder().set("fetch.max.bytes", "1048576").build().is_ok());
    }

    #[test]
    fn instance_id_from_env_is_required_unless_dynamic() {
        let var = "KAFKA_STATEFUL_TEST_UNSET_VAR";
        let err = builder()
            .membership(Membership::StaticFromEnv(var.into()))
            .build()
            .unwrap_err();
        assert!(
            matches!(err, ConfigError::MissingInstanceIdEnv { .. }),
            "{err}"
        );
        let c = builder().dynamic_membership().build().unwrap();
        assert_eq!(c.instance_id(), None);
        assert_eq!(c.group_consumer().get("group.instance.id"), None);
        let c = builder()
            .membership(Membership::StaticFromEnv("PATH".into()))
            .build()
            .unwrap();
        assert!(c.instance_id().is_some());
    }

    #[test]
    fn invalid_values_are_rejected() {
        assert!(ConsumerConfig::builder("", "g", ["t"])
            .instance_id("i")
            .build()
            .is_err());
        assert!(ConsumerConfig::builder("b", "g", Vec::<String>::new())
            .instance_id("i")
            .build()
            .is_err());
        assert!(builder().queue_capacity(0).build().is_err());
        assert!(builder().instance_id(" ").build().is_err());
        assert!(builder()
            .session_timeout(Duration::from_secs(60))
            .max_poll_interval(Duration::from_secs(30))
            .build()
            .is_err());
        assert!(builder()
            .error_policy(ErrorPolicy::DeadLetter("t".into()))
            .build()
            .is_err());
    }

    #[test]
    fn a_revoke_must_fit_in_max_poll_interval() {
        // Default: 30 s + 30 s < 5 min.
        assert!(builder().build().is_ok());
        let err = builder()
            .session_timeout(Duration::from_secs(10))
            .max_poll_interval(Duration::from_secs(20))
            .revoke_timeout(Duration::from_secs(5))
            .flush_timeout(Duration::from_secs(15))
            .build()
            .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    name: "revoke_timeout + flush_timeout",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("max_poll_interval"), "{err}");
        assert!(builder()
            .session_timeout(Duration::from_secs(10))
            .max_poll_interval(Duration::from_secs(21))
            .revoke_timeout(Duration::from_secs(5))
            .flush_timeout(Duration::from_secs(15))
            .build()
            .is_ok());
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = builder()
            .set_all_clients("sasl.password", "hunter2")
            .build()
            .unwrap();
        let printed = format!("{c:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("sasl.password"));
    }

    #[test]
    fn stores_need_a_state_dir_one_source_topic_and_legal_names() {
        use crate::codec::{Bincode, Utf8};
        let counts = crate::StoreDef::new("counts", Utf8, Bincode::<u64>::new());
        let stateful = |b: ConsumerConfigBuilder| b.state_dir("/tmp/ks").store(&counts);
        assert!(stateful(builder()).build().is_ok());
        assert!(matches!(
            builder().store(&counts).build(),
            Err(ConfigError::Empty(_))
        ));
        let two_topics = ConsumerConfig::builder("b:9092", "g", ["t1", "t2"]).instance_id("i");
        assert!(matches!(
            stateful(two_topics).build(),
            Err(ConfigError::Invalid { name: "topics", .. })
        ));
        let bad_group = ConsumerConfig::builder("b:9092", "my group", ["t"]).instance_id("i");
        assert!(matches!(
            stateful(bad_group).build(),
            Err(ConfigError::Invalid {
                name: "group id",
                ..
            })
        ));
        let bad_store = crate::StoreDef::new("a/b", Utf8, Bincode::<u64>::new());
        assert!(matches!(
            builder().state_dir("/tmp/ks").store(&bad_store).build(),
            Err(ConfigError::Invalid {
                name: "store name",
                ..
            })
        ));
        // Without stores, group ids are free-form: nothing derives topic names from them.
        let plain = ConsumerConfig::builder("b:9092", "my group", ["t1", "t2"]).instance_id("i");
        assert!(plain.build().is_ok());
    }
}
