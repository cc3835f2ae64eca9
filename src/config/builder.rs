//! [`ConsumerConfigBuilder`]: defaults, setters and validation.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::clients::check_override;
use super::*;

/// Default of [`ConsumerConfigBuilder::memory_budget`].
const DEFAULT_MEMORY_BUDGET: usize = 192 << 20;

/// Builder for [`ConsumerConfig`]; see each setter for defaults.
#[derive(Clone)]
pub struct ConsumerConfigBuilder {
    config: ConsumerConfig,
    membership: Membership,
    /// Whether `flush_interval` was set; otherwise it follows `commit_interval`.
    flush_interval_set: bool,
    assignment_set: bool,
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
            assignment_set: false,
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
                memory_budget: DEFAULT_MEMORY_BUDGET,
                sizes_set: SizesSet::default(),
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
                tables: Vec::new(),
                table_sync_wait: Duration::ZERO,
                key_concurrency: 1,
                concurrency_lookahead: 10_000,
                flush_max_records: 1_000_000,
                flush_interval: Duration::from_secs(5),
                changelog_replication: -1,
                standby: None,
                consumer_overrides: Vec::new(),
                client_overrides: Vec::new(),
            },
        }
    }
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

    /// Records fetched ahead per partition (default 100 000; librdkafka's
    /// `queued.min.messages`).
    ///
    /// Each assigned partition's records wait in its own librdkafka queue, which its worker
    /// polls. librdkafka keeps fetching a partition until its queue holds this many records
    /// or [`queue_bytes`](Self::queue_bytes), and then simply stops until the worker takes
    /// records out: a slow partition holds its budget and no more, and no other partition
    /// waits for it. Nothing fetched is dropped.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.config.queue_capacity = capacity;
        self
    }

    /// Bytes fetched ahead per partition (librdkafka's `queued.max.messages.kbytes`, which
    /// applies per partition with the partition queues this consumer uses). Default: the
    /// fetched-records share of the [`memory_budget`](Self::memory_budget) divided by the
    /// subscribed topics' partitions, between 256 KiB and 16 MiB.
    ///
    /// The bound is librdkafka's: a fetch already in flight when the queue fills still
    /// lands, so a queue can exceed it by one fetch response — `max.partition.fetch.bytes`,
    /// or one whole record batch as the producer wrote it when that is larger (brokers
    /// never split a batch). The worker also holds the batch it took out, at most this much.
    pub fn queue_bytes(mut self, bytes: usize) -> Self {
        self.config.queue_bytes = bytes;
        self.config.sizes_set.queue_bytes = true;
        self
    }

    /// Bytes fetched ahead across all partitions, divided among the subscribed topics'
    /// partitions when [`queue_bytes`](Self::queue_bytes) is not set (default: a quarter of
    /// the [`memory_budget`](Self::memory_budget)).
    pub fn total_queue_bytes(mut self, bytes: usize) -> Self {
        self.config.total_queue_bytes = bytes;
        self.config.sizes_set.total_queue_bytes = true;
        self
    }

    /// Bytes of unflushed state writes per partition before a flush is started early
    /// (default 64 MiB): keys and values in the write overlay.
    pub fn overlay_bytes(mut self, bytes: usize) -> Self {
        self.config.overlay_bytes = bytes;
        self.config.sizes_set.overlay_bytes = true;
        self
    }

    /// The consumer's memory budget in bytes (default 192 MiB), in four equal shares:
    /// RocksDB's block cache and RocksDB's memtables (each shared by every partition's
    /// database, as one `Cache` and one `WriteBufferManager`), fetched records waiting for
    /// their partition's worker, and unflushed state writes. The last two are divided among
    /// the partitions of the subscribed topics (known at start), unless set with
    /// [`queue_bytes`](Self::queue_bytes), [`total_queue_bytes`](Self::total_queue_bytes) or
    /// [`overlay_bytes`](Self::overlay_bytes): a consumer of 64 partitions does not hold 64
    /// times the memory of one. The process also has librdkafka's and the runtime's own
    /// memory (some tens of MB).
    pub fn memory_budget(mut self, bytes: usize) -> Self {
        self.config.memory_budget = bytes;
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

    /// Declares a co-partitioned table ([`crate::table`]): for each input partition `p`,
    /// partition `p` of `table`'s topic is kept locally, read before the partition's first
    /// record and then in timestamp order with its records. The table topic needs the input
    /// topics' partition count and partitioner. Needs a state directory.
    pub fn table<K: Send + 'static, V: Send + 'static>(
        mut self,
        table: &crate::table::TableDef<K, V>,
    ) -> Self {
        self.config.tables.push(table.spec(false));
        self
    }

    /// Declares a global table ([`crate::table`]): every partition of `table`'s topic is kept
    /// locally, read before any input partition is handled, and readable from every
    /// partition. Needs a state directory.
    pub fn global_table<K: Send + 'static, V: Send + 'static>(
        mut self,
        table: &crate::table::TableDef<K, V>,
    ) -> Self {
        self.config.tables.push(table.spec(true));
        self
    }

    /// How long an input record may wait for its co-partitioned tables to confirm that they
    /// hold every update their topics had at the record's timestamp (default 0: do not
    /// wait; updates fetched by then are applied, later ones after the record). With a wait,
    /// an update produced before an order is applied before the order even when the order
    /// was fetched first; live records then wait about one round trip to the broker. See
    /// [`crate::table`].
    pub fn table_sync_wait(mut self, wait: Duration) -> Self {
        self.config.table_sync_wait = wait;
        self
    }

    /// Key-level concurrency (default 1: the records of a partition are handled one at a
    /// time, in offset order). With `n > 1`, up to `n` records of a partition are in flight
    /// at once — records of one key (a missing key is one key) still one at a time, in
    /// offset order — for handlers that wait on something (a service call per record):
    /// a hot key runs at serial speed without holding up the other keys. See the README's
    /// "Slow handlers".
    ///
    /// A record's state writes join the partition's state when it succeeds (its output
    /// records acknowledged), all at once; other records see them from then on. Reading or
    /// writing another key than the record's own is allowed but not ordered with that key's
    /// records. The committed offset is the lowest unfinished one, after a flush of
    /// everything finished; the records finished after it are recorded with the state, so a
    /// restart or a new owner does not apply them twice. Windows, timers and TTL stores need
    /// records one at a time and are refused by [`build`](Self::build).
    pub fn key_concurrency(mut self, records: usize) -> Self {
        self.config.key_concurrency = records;
        self
    }

    /// With [`key_concurrency`](Self::key_concurrency): a record starts only if its offset is
    /// less than this many past the lowest unfinished offset of its partition (default
    /// 10 000), so a stuck key bounds the records held and replayed after a crash.
    pub fn concurrency_lookahead(mut self, records: usize) -> Self {
        self.config.concurrency_lookahead = records;
        self
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

    /// Keep warm standby replicas of partitions this member does not own, so that a member
    /// lost for good is replaced without a full restore (see the README's "Standby
    /// replicas"). Needs stores and static membership.
    ///
    /// Unless [`assignment`](Self::assignment) is set, the group then uses `range`: where
    /// it moves a lost member's partitions follows from the members' instance ids alone, so
    /// replicas are placed exactly. librdkafka's sticky assignors hand a lost member's
    /// partitions out in an order that cannot be predicted (which members receive them can),
    /// so with `cooperative-sticky` a promotion may find the replica on another member and
    /// restore the whole changelog.
    pub fn standby_replicas(mut self, standbys: crate::StandbyReplicas) -> Self {
        self.config.standby = Some(standbys);
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
        if config.standby.is_some() && !self.assignment_set {
            config.assignment = AssignmentStrategy::Range;
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
        if !config.tables.is_empty() {
            validate_tables(&config)?;
        }
        if let Some(standby) = &config.standby {
            validate_standby(&config, standby)?;
        }
        Ok(config)
    }
}

/// Standby replicas copy stores, and are placed by the members' instance ids.
fn validate_standby(
    c: &ConsumerConfig,
    standby: &crate::StandbyReplicas,
) -> Result<(), ConfigError> {
    let invalid = |reason| ConfigError::Invalid {
        name: "standby_replicas",
        value: standby.replicas.to_string(),
        reason,
    };
    if standby.replicas == 0 {
        return Err(invalid("at least 1 (leave it unset for none)"));
    }
    if c.stores.is_empty() {
        return Err(invalid(
            "standby replicas copy stores: declare at least one",
        ));
    }
    if c.instance_id.is_none() {
        return Err(invalid(
            "standby replicas need static membership (they are placed by group.instance.id)",
        ));
    }
    if standby.refresh.is_zero() {
        return Err(invalid("the refresh interval must be positive"));
    }
    Ok(())
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

/// Tables need a state dir, names that make a directory or column family name, distinct
/// names and topics, and topics that are not input topics.
fn validate_tables(c: &ConsumerConfig) -> Result<(), ConfigError> {
    if c.state_dir.is_none() {
        return Err(ConfigError::Empty(
            "state_dir (required when tables are declared)",
        ));
    }
    let legal = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'))
    };
    for (i, table) in c.tables.iter().enumerate() {
        if !legal(&table.name) {
            return Err(ConfigError::Invalid {
                name: "table name",
                value: table.name.clone(),
                reason: "names a local directory: use only ASCII letters, digits, '.', '_' and '-'",
            });
        }
        if c.tables[..i].iter().any(|t| t.name == table.name) {
            return Err(ConfigError::DuplicateStore(table.name.clone()));
        }
        if c.tables[..i].iter().any(|t| t.topic == table.topic) {
            return Err(ConfigError::Invalid {
                name: "table topic",
                value: table.topic.clone(),
                reason:
                    "two tables read the same topic: declare it once and read it from both places",
            });
        }
        if c.topics.contains(&table.topic) {
            return Err(ConfigError::Invalid {
                name: "table topic",
                value: table.topic.clone(),
                reason: "is also an input topic: a table is read by the library, not by the group",
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
        ("memory_budget", c.memory_budget),
    ] {
        if value == 0 {
            return invalid(name, "0".into(), "must be at least 1");
        }
    }
    if c.key_concurrency == 0 || c.concurrency_lookahead == 0 {
        return invalid(
            "key_concurrency / concurrency_lookahead",
            format!("{} / {}", c.key_concurrency, c.concurrency_lookahead),
            "must be at least 1",
        );
    }
    if c.key_concurrency > 1 {
        let serial_only = c.stores.iter().find_map(|s| {
            if s.name == crate::timer::TIMER_STORE {
                Some("timers and windows (a window closes on a timer)")
            } else if s.format.starts_with("window;") {
                Some("windows")
            } else if s.expiry.is_some() {
                Some("TTL stores (their sweeps are timers)")
            } else {
                None
            }
        });
        if let Some(feature) = serial_only {
            return Err(ConfigError::Invalid {
                name: "key_concurrency",
                value: format!("{} with {feature}", c.key_concurrency),
                reason: "windows, timers and TTL stores follow a partition's stream time,                          which needs records handled one at a time: use key_concurrency(1)                          for this consumer",
            });
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

impl fmt::Debug for ConsumerConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerConfigBuilder")
            .field("membership", &self.membership)
            .field("config", &self.config)
            .finish()
    }
}
