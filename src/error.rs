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
    #[error("cannot decode {topic}/{partition}@{offset}: {source}")]
    Decode {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// Offset of the record that failed; it and everything after it stays uncommitted.
        offset: i64,
        /// The codec's error.
        source: CodecError,
    },

    /// The handler failed on a record (after retries) and the error policy is `Fail`.
    #[error("handler failed on {topic}/{partition}@{offset}: {source}")]
    Handler {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// Offset of the record that failed; it and everything after it stays uncommitted.
        offset: i64,
        /// The handler's error.
        source: HandlerError,
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

    /// A partition worker panicked (a bug in the handler or in this crate).
    #[error("worker for {topic}/{partition} panicked")]
    WorkerPanicked {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
    },
}
