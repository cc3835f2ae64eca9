//! [`ConsumerConfigBuilder`] setters for state (stores, windows, timers, flushes, changelogs,
//! standby replicas) and the checks of stores and standbys.

use std::path::PathBuf;
use std::time::Duration;

use super::ConsumerConfigBuilder;
use crate::config::{ConfigError, ConsumerConfig};

impl ConsumerConfigBuilder {
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

    /// Declares a session window store ([`crate::window::SessionDef`]); enables timers.
    pub fn session_window<K: Send + 'static, V: Send + 'static>(
        mut self,
        sessions: &crate::window::SessionDef<K, V>,
    ) -> Self {
        self.config.stores.push(sessions.spec());
        self.timers()
    }

    /// Declares a sliding window store ([`crate::window::SlidingDef`]); enables timers.
    pub fn sliding_window<K: Send + 'static, V: Send + 'static>(
        mut self,
        sliding: &crate::window::SlidingDef<K, V>,
    ) -> Self {
        self.config.stores.push(sliding.spec());
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

    /// Replication factor of created changelog topics (default -1: the broker's default).
    pub fn changelog_replication(mut self, factor: i32) -> Self {
        self.config.changelog_replication = factor;
        self
    }

    /// How the records this consumer produces — changelog records and markers, dead letters,
    /// output records — are compressed (default [`Compression::Lz4`](crate::config::Compression::Lz4): little CPU, changelogs
    /// several times smaller to store and to restore). What it reads may use any codec.
    pub fn compression(mut self, compression: crate::config::Compression) -> Self {
        self.config.compression = compression;
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
}

/// Stores need a state dir, exactly one source topic (changelog partition `p` backs source
/// partition `p`, so two source topics would share changelog partitions), and names that make
/// a legal changelog topic name `<group>-<store>-changelog`.
pub(super) fn validate_stores(c: &ConsumerConfig) -> Result<(), ConfigError> {
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

/// Standby replicas copy stores, and are placed by the members' instance ids.
pub(super) fn validate_standby(
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
