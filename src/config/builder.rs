//! [`ConsumerConfigBuilder`]: defaults, [`build`](ConsumerConfigBuilder::build) and the
//! checks that are not one concern's; the setters, with their concern's checks, are in the
//! child files (group and clients, memory, records, state, tables).

use std::fmt;
use std::time::Duration;

mod group;
mod memory;
mod records;
mod state;
mod tables;

use super::clients::check_override;
use super::*;
use state::{validate_standby, validate_stores};
use tables::validate_tables;

/// Default of [`ConsumerConfigBuilder::memory_budget`].
const DEFAULT_MEMORY_BUDGET: usize = 192 << 20;

/// Builder for [`ConsumerConfig`]; see each setter for defaults.
#[derive(Clone)]
pub struct ConsumerConfigBuilder {
    config: ConsumerConfig,
    membership: Membership,
    /// Whether `flush_interval` was set; otherwise it follows `commit_interval`.
    flush_interval_set: bool,
    /// Whether `commit_interval` was set; otherwise exactly-once shortens it.
    commit_interval_set: bool,
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
            commit_interval_set: false,
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
                // Until `sized_for` knows the partitions (tests and the driver keep this).
                table_cache_bytes: 8 << 20,
                key_concurrency: 1,
                batches: None,
                concurrency_lookahead: 10_000,
                flush_max_records: 1_000_000,
                flush_interval: Duration::from_secs(5),
                changelog_replication: -1,
                compression: Default::default(),
                standby: None,
                guarantee: ProcessingGuarantee::default(),
                consumer_overrides: Vec::new(),
                client_overrides: Vec::new(),
            },
        }
    }
}

impl ConsumerConfigBuilder {
    /// Validates and resolves the configuration.
    ///
    /// # Errors
    /// [`ConfigError`] for empty required values, an unset instance-id variable, invalid
    /// durations or capacities, duplicate stores, stores without a state dir or with more
    /// than one source topic, names that make an illegal changelog topic name, and overrides
    /// of properties the library owns.
    pub fn build(self) -> Result<ConsumerConfig, ConfigError> {
        let mut config = self.config;
        if config.guarantee.is_exactly_once() && !self.commit_interval_set {
            config.commit_interval = EXACTLY_ONCE_COMMIT_INTERVAL;
        }
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
    if let Some(batches) = c.batches {
        if batches.max_records == 0 {
            return invalid("batches.max_records", "0".into(), "must be at least 1");
        }
        if c.stores.iter().any(crate::state::StoreSpec::is_windowed) {
            return invalid(
                "batches",
                "with window stores".into(),
                "a window takes each record by its own event time, which a batch handler does not have: handle windows one record at a time",
            );
        }
        if c.key_concurrency > 1 {
            return invalid(
                "batches",
                format!("with key_concurrency {}", c.key_concurrency),
                "a batch is a run of a partition's records in offset order: use one or the other",
            );
        }
    }
    if c.key_concurrency > 1 {
        let serial_only = c.stores.iter().find_map(|s| {
            if s.name == crate::timer::TIMER_STORE {
                Some("timers and windows (a window closes on a timer)")
            } else if s.is_windowed() {
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
