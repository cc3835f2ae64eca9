//! The crate's top-level error and `Result` alias.
//!
//! Each layer has its own error enum ([`ConfigError`], [`CodecError`], [`StateError`],
//! [`ChangelogError`]); [`Error`] wraps them and adds the failures of the consumer itself.

use rdkafka::error::KafkaError;

use crate::changelog::ChangelogError;
use crate::codec::CodecError;
use crate::config::ConfigError;
use crate::handler::HandlerError;
use crate::state::StateError;

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why [`StatefulConsumer::run`](crate::StatefulConsumer::run) stopped, or why it could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration was rejected.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// The Kafka client reported an error the consumer cannot recover from.
    #[error("kafka client error: {0}")]
    Kafka(#[from] KafkaError),

    /// Another live process joined the group with the same `group.instance.id`; the broker
    /// fenced this one. Two processes must never share an instance id.
    #[error(
        "fenced: another consumer joined group with the same group.instance.id {instance_id:?}; \
         each process needs its own instance id"
    )]
    Fenced {
        /// The instance id both processes used.
        instance_id: String,
    },

    /// librdkafka raised a fatal error; the client cannot be used any more.
    #[error("fatal kafka error {code}: {reason}")]
    Fatal {
        /// librdkafka's error code name.
        code: String,
        /// librdkafka's description.
        reason: String,
    },

    /// A record could not be decoded and the error policy is `Fail`.
    #[error(
        "cannot decode {topic}/{partition}@{offset}{}: {source}",
        key_text(key)
    )]
    Decode {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// Offset of the record that failed; it and everything after it stays uncommitted.
        offset: i64,
        /// The record's key (lossy UTF-8, at most 100 characters); `None` without one.
        key: Option<String>,
        /// The codec's error.
        source: CodecError,
    },

    /// The handler failed on a record (after retries) and the error policy is `Fail`.
    #[error(
        "handler failed on {topic}/{partition}@{offset}{}: {source}",
        key_text(key)
    )]
    Handler {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// Offset of the record that failed; it and everything after it stays uncommitted.
        offset: i64,
        /// The record's key (lossy UTF-8, at most 100 characters); `None` without one.
        key: Option<String>,
        /// The handler's error.
        source: HandlerError,
    },

    /// The handler or a codec panicked on a record and the error policy is `Fail`.
    #[error("panic on {topic}/{partition}@{offset}{}: {message}", key_text(key))]
    Panicked {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// Offset of the record; it and everything after it stays uncommitted.
        offset: i64,
        /// The record's key (lossy UTF-8, at most 100 characters); `None` without one.
        key: Option<String>,
        /// The panic's message.
        message: String,
    },

    /// Exactly-once: the member's open transaction was aborted (a producer fenced by a newer
    /// incarnation, offsets refused for an old group generation, a lost partition, a flush
    /// that failed). Its changelog records, outputs and offsets are gone; the next start
    /// resumes from the last committed transaction.
    #[error("the transaction was aborted: {reason}")]
    Transaction {
        /// Why.
        reason: String,
    },

    /// A lifecycle hook of the handler (`on_assigned`, `on_revoked`) failed, panicked or
    /// outlasted the revoke timeout.
    #[error("{hook} failed for {topic}/{partition}: {message}")]
    Hook {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// The hook.
        hook: &'static str,
        /// What went wrong.
        message: String,
    },

    /// A timer's `on_timer` (or a window's close) failed, and the error policy is `Fail`.
    #[error("timer at {at} of {topic}/{partition} failed: {message}")]
    Timer {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// The timer's time.
        at: i64,
        /// What went wrong.
        message: String,
    },

    /// An output record of a record was not acknowledged, and the error policy is `Fail`.
    #[error(
        "output of {topic}/{partition}@{offset}{} was not acknowledged: {source}",
        key_text(key)
    )]
    Output {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// Offset of the record; it and everything after it stays uncommitted.
        offset: i64,
        /// The record's key (lossy UTF-8, at most 100 characters); `None` without one.
        key: Option<String>,
        /// The producer's error (boxed: it would make every `Result<_, Error>` large).
        source: Box<ChangelogError>,
    },

    /// Producing a failed record to the dead-letter topic failed.
    #[error("cannot dead-letter {topic}/{partition}@{offset} to {dead_letter_topic}: {source}")]
    DeadLetter {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// Offset of the record.
        offset: i64,
        /// The configured dead-letter topic.
        dead_letter_topic: String,
        /// The producer's error (boxed: it would make every `Result<_, Error>` large).
        source: Box<KafkaError>,
    },

    /// A partition's state store failed.
    #[error(transparent)]
    State(#[from] StateError),

    /// A changelog topic could not be created, verified, written or read.
    #[error(transparent)]
    Changelog(#[from] ChangelogError),

    /// A table could not be read or kept, its topic is not co-partitioned with an input
    /// topic, or one of its records is bad under `ErrorPolicy::Fail`.
    #[error(transparent)]
    Table(#[from] crate::table::TableError),

    /// A partition worker panicked outside the handler and codecs (a bug in this crate).
    /// Panics of the handler or a codec are errors of their record ([`Error::Handler`],
    /// [`Error::Decode`]) and follow the error policy.
    #[error("worker for {topic}/{partition} panicked: {message}")]
    WorkerPanicked {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// The panic's message.
        message: String,
    },

    /// The group keeps assigning this consumer partitions of topics it did not subscribe to.
    ///
    /// A static member that restarts within the session timeout with a changed subscription
    /// can be handed its previous assignment back; so can two jobs sharing a group id by
    /// mistake. The consumer left and rejoined the group to have the assignment recomputed,
    /// and the coordinator kept the foreign topics.
    #[error(
        "group {group:?} (group.instance.id {instance_id:?}) keeps assigning topics {assigned:?} \
         although this consumer subscribes to {subscribed:?}; use a new instance id for the new \
         subscription, or stop the old one with CloseBehavior::LeaveGroup before changing it, \
         and make sure no other job uses this group id"
    )]
    ForeignAssignment {
        /// The consumer group.
        group: String,
        /// The static member's instance id (`None`: dynamic membership).
        instance_id: Option<String>,
        /// What this consumer subscribed to.
        subscribed: Vec<String>,
        /// The foreign topics the group assigned.
        assigned: Vec<String>,
    },

    /// A subscribed topic does not exist (at start, or it was deleted while consuming).
    #[error(
        "topic {topic:?} does not exist: create it, fix the subscription, or choose \
         MissingTopics::Wait to wait for it"
    )]
    TopicMissing {
        /// The topic (or the subscription, when the broker did not say which).
        topic: String,
    },

    /// The broker refused this principal access to a topic, the group or the cluster.
    #[error("not authorized ({code}): {reason}; grant the principal read access to the topics and the group")]
    NotAuthorized {
        /// librdkafka's error code name.
        code: String,
        /// librdkafka's description.
        reason: String,
    },

    /// librdkafka cannot read a partition past an offset: a batch it cannot decompress or
    /// parse, or that the broker reports corrupt. Retrying would fetch the same batch forever,
    /// so the consumer stops; nothing at or after `offset` was handled or committed.
    #[error(
        "cannot read {topic}[{partition}] at offset {offset}: {reason} ({code}); nothing from \
         this offset on was handled or committed"
    )]
    Fetch {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// The offset the partition is stuck at (the next one to read; -1 if unknown).
        offset: i64,
        /// librdkafka's error code name.
        code: String,
        /// What went wrong, and what to check.
        reason: String,
    },

    /// The client cannot talk to the cluster at all: a TLS handshake failed (unknown CA,
    /// expired or mismatched certificate) or SASL authentication was refused. It would only
    /// retry the same handshake, looking like an idle consumer, so it stops.
    #[error(
        "cannot connect to the cluster ({code}): {reason}; check security.protocol, \
         ssl.ca.location and the certificates, sasl.mechanism, sasl.username and sasl.password"
    )]
    Connection {
        /// librdkafka's error code name.
        code: String,
        /// librdkafka's description of the last failure.
        reason: String,
    },

    /// [`Handler::stored_offset`](crate::Handler::stored_offset) returned an offset behind
    /// the first record fetched for the partition (the group's committed offset): the
    /// records between were committed to the group but are not in the sink. Reset the
    /// group's offset to the stored one (`kafka-consumer-groups --reset-offsets`) or repair
    /// the sink.
    #[error(
        "{topic}/{partition}: the sink stored offset {stored} but the group continues at \
         {fetched}; records {stored}..{fetched} are missing from the sink"
    )]
    StoredOffsetBehind {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// The offset the sink stored.
        stored: i64,
        /// The first offset fetched.
        fetched: i64,
    },

    /// `auto.offset.reset=error` was set and a partition has no valid committed offset.
    #[error("a partition has no valid committed offset and auto.offset.reset=error: {reason}")]
    NoValidOffset {
        /// librdkafka's description.
        reason: String,
    },
}

/// ` (key "…")` for an error message, or nothing without a key.
fn key_text(key: &Option<String>) -> String {
    key.as_ref()
        .map_or(String::new(), |k| format!(" (key {k:?})"))
}

/// A record key as errors show it: lossy UTF-8, at most 100 characters.
pub(crate) fn shown_key(key: Option<&[u8]>) -> Option<String> {
    key.map(|k| String::from_utf8_lossy(k).chars().take(100).collect())
}
