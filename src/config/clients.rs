//! The rdkafka properties of each client, derived from a [`ConsumerConfig`] (the only place
//! they are), and the overrides users may not set.

use std::fmt;
use std::time::Duration;

use rdkafka::ClientConfig;

use super::*;

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
        "isolation.level",
        "records are read committed: aborted transactions' records are never state or input",
    ),
    (
        "transactional.id",
        "use ConsumerConfigBuilder::processing_guarantee(ProcessingGuarantee::ExactlyOnce)",
    ),
];

fn is_secret(key: &str) -> bool {
    key.contains("password")
        || key.contains("passphrase")
        || key.contains("secret")
        || key.contains("jaas")
        || key.contains("key.pem")
        || key == "ssl_key"
        // Its `key=value` pairs may carry a client secret or a token.
        || key == "sasl.oauthbearer.config"
}

impl ConsumerConfig {
    /// The consumer group.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// The resolved `group.instance.id`, `None` for dynamic membership.
    pub fn instance_id(&self) -> Option<&str> {
        self.instance_id.as_deref()
    }

    /// A client property as the user set it for every client (or else for the group
    /// consumer); the last setting wins, as in librdkafka.
    pub(crate) fn client_property(&self, key: &str) -> Option<&str> {
        self.client_overrides
            .iter()
            .rev()
            .chain(self.consumer_overrides.iter().rev())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn base_client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        // librdkafka's warnings too (rdkafka derives the level from the `log` crate, which
        // this crate does not use, and would pass errors only): a failed TLS handshake or
        // login is explained in a warning-level `FAIL` line.
        c.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
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
            // librdkafka's default, said here because exactly-once depends on it: records of
            // aborted transactions (a zombie's, a crashed member's) are never handled.
            .set("isolation.level", "read_committed")
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
            // librdkafka keeps one fetch in flight per broker. When a partition's queue is
            // full it leaves the fetch, and the fetch of the partitions that caught up is held
            // by the broker for up to this long (default 500 ms) — while the worker empties
            // the full queue and waits, idle, for a fetch that can refill it. Since the
            // partition queues were split (1a07555) that made the common path ~40% slower
            // (bisected with benches/regression.rs: no store 0.70× → 0.40× the raw
            // consumer's rate, at the same CPU per record). 50 ms measured best of 10/50/100;
            // an idle consumer sends ~20 fetches a second per broker instead of 2.
            .set("fetch.wait.max.ms", "50")
            // High watermarks for lag in `Stats` come from librdkafka's statistics.
            .set("statistics.interval.ms", millis(self.stats_interval))
            // What each partition's queue may hold before librdkafka stops fetching it (per
            // partition: the consumer splits every partition's queue off the main one).
            .set(
                "queued.max.messages.kbytes",
                (self.queue_bytes / 1024).max(64).to_string(),
            )
            .set("queued.min.messages", self.queue_capacity.to_string());
        if let Some(id) = &self.instance_id {
            c.set("group.instance.id", id);
            // Apache Kafka names members `<client.id>-<uuid>`: with the instance id as
            // client id, every member can tell who the group's members are (standby
            // placement reads them) unless the user chose another client id.
            if !self.overrides_key("client.id") {
                c.set("client.id", id);
            }
        }
        for (k, v) in &self.consumer_overrides {
            c.set(k, v);
        }
        c
    }

    fn overrides_key(&self, key: &str) -> bool {
        self.consumer_overrides
            .iter()
            .chain(&self.client_overrides)
            .any(|(k, _)| k == key)
    }

    /// A client of the group that never joins it: reads the group's members and the
    /// changelogs' last records for standby placement.
    pub(crate) fn group_reader(&self) -> ClientConfig {
        let mut c = self.base_client();
        c.set("group.id", &self.group_id)
            .set("enable.auto.commit", "false");
        c
    }

    /// The producer for changelog and dead-letter records: acks from all replicas, and
    /// idempotence so retries neither duplicate nor reorder records.
    pub(crate) fn producer(&self) -> ClientConfig {
        let mut c = self.base_client();
        c.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("compression.type", self.compression.as_rdkafka())
            .set("linger.ms", "5")
            // A flush enqueues all its records at once; librdkafka's default local queue
            // (100 000 messages) would make large flushes wait on it.
            .set("queue.buffering.max.messages", "1000000")
            // Output records are produced while handling goes on: what waits in the
            // producer is bounded in bytes (half a share of the memory budget; librdkafka's
            // default is 1 GiB), and a full queue makes the next send wait.
            .set(
                "queue.buffering.max.kbytes",
                (self.budget_share() / 2 / 1024).max(4096).to_string(),
            );
        c
    }

    /// The transactional producer of an exactly-once consumer: [`producer`](Self::producer)
    /// with a transactional id and the transaction timeout.
    pub(crate) fn transactional_producer(&self, transactional_id: &str) -> ClientConfig {
        let mut c = self.producer();
        c.set("transactional.id", transactional_id).set(
            "transaction.timeout.ms",
            millis(super::TRANSACTION_TIMEOUT.max(self.commit_interval * 10)),
        );
        c
    }

    /// `<group>-<instance id>` for a static member: the same member after a restart fences
    /// the producer of its previous incarnation (a zombie's open transaction is aborted).
    /// A dynamic member gets a fresh id per call; the group generation fences it.
    pub(crate) fn transactional_id(&self) -> String {
        match &self.instance_id {
            Some(id) => format!("{}-{id}", self.group_id),
            None => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                format!("{}-{}-{nanos:x}", self.group_id, std::process::id())
            }
        }
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
            // Changelogs written in transactions: an aborted flush is never restored.
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            // A read ends at a known offset, and librdkafka has already asked for what follows:
            // a fetch that the broker holds for up to this long, which the next read on this
            // client (another changelog) waits behind. The 500 ms default made every restore
            // of a consumer with several stores last a second with nothing to read.
            .set("fetch.wait.max.ms", "10")
            // Restores read in turns on a few pooled clients: a moderate prefetch each.
            .set("queued.max.messages.kbytes", "16384");
        c
    }

    /// The reader of table topics while the consumer runs: outside any group, never
    /// committing. Short fetch waits keep table updates close behind their topic.
    pub(crate) fn table_consumer(&self) -> ClientConfig {
        let mut c = self.restore_consumer();
        c.set("group.id", format!("{}.tables", self.group_id))
            .set("fetch.wait.max.ms", "100");
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

pub(super) fn check_override(key: &str, value: &str) -> Result<(), ConfigError> {
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
            .field("memory_budget", &self.memory_budget)
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
            .field("tables", &self.tables)
            .field("table_sync_wait", &self.table_sync_wait)
            .field("key_concurrency", &self.key_concurrency)
            .field("standby", &self.standby)
            .field("guarantee", &self.guarantee)
            .field("concurrency_lookahead", &self.concurrency_lookahead)
            .field("flush_max_records", &self.flush_max_records)
            .field("flush_interval", &self.flush_interval)
            .field("consumer_overrides", &redacted(&self.consumer_overrides))
            .field("client_overrides", &redacted(&self.client_overrides))
            .finish()
    }
}
