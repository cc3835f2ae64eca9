//! Changelog topics: the durable copy of every store, from which state is restored.
//!
//! Each store has one compacted topic, `<group>-<store>-changelog`, with the source topic's
//! partition count; partition `p` of the changelog backs source partition `p`.
//!
//! # Records
//!
//! A flush writes, per touched store, one record per changed key (a tombstone for a delete)
//! and then — only after every data record of the flush is acknowledged — one *flush marker*
//! per touched store. Each owner of a partition starts by writing an *epoch marker*. The
//! layout is in [`format`]; why markers and epochs make flushes atomic across stores and
//! fence zombies without Kafka transactions is in [`crate::state`].

pub(crate) mod format;
mod kafka;
mod produce;
mod reader;
mod topics;
pub(crate) mod transaction;
mod writer;

pub(crate) use kafka::KafkaStateLog;
pub(crate) use produce::OutRef;
pub(crate) use reader::{is_transient, PooledReader, ReaderPool};
pub(crate) use topics::{ensure_changelogs, partition_count, source_partition_count};
#[cfg(any(test, feature = "testing"))]
pub(crate) use writer::HeldAck;
pub(crate) use writer::{ChangelogWriter, OutRecord, Pending, RecordSink};

use rdkafka::error::KafkaError;

/// The changelog topic of `store` in `group`.
pub fn changelog_topic(group: &str, store: &str) -> String {
    format!("{group}-{store}-changelog")
}

/// A changelog topic could not be created, verified, written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChangelogError {
    /// The source topic does not exist (or has no partitions), so the changelog cannot be sized.
    #[error("source topic {topic} does not exist")]
    SourceTopicMissing {
        /// The source topic.
        topic: String,
    },
    /// An existing changelog topic has another partition count than the source topic.
    #[error(
        "changelog topic {topic} has {found} partitions but source topic has {expected}; \
         changelog partition p must back source partition p (delete or fix the changelog topic)"
    )]
    PartitionMismatch {
        /// The changelog topic.
        topic: String,
        /// The source topic's partition count.
        expected: usize,
        /// The changelog topic's partition count.
        found: usize,
    },
    /// Creating or describing a topic failed.
    #[error("changelog topic {topic}: {source}")]
    Admin {
        /// The changelog topic.
        topic: String,
        /// The client's error.
        source: KafkaError,
    },
    /// A changelog record was not acknowledged.
    #[error("cannot write changelog {topic}/{partition}: {source}")]
    Produce {
        /// The changelog topic.
        topic: String,
        /// The changelog partition.
        partition: i32,
        /// The producer's error.
        source: KafkaError,
    },
    /// Reading a changelog partition failed.
    #[error("cannot read changelog {topic}/{partition}: {source}")]
    Read {
        /// The changelog topic.
        topic: String,
        /// The changelog partition.
        partition: i32,
        /// The consumer's error.
        source: KafkaError,
    },
    /// Records could not be produced: the member's transactions stopped (exactly-once).
    #[error("cannot write {topic}/{partition}: the transaction was aborted: {reason}")]
    Transaction {
        /// The topic.
        topic: String,
        /// The partition (-1: chosen by the partitioner).
        partition: i32,
        /// Why the transaction was aborted.
        reason: String,
    },
    /// Exactly-once: a transaction of another producer stayed open on a changelog
    /// partition longer than a restore waits (its records from `stable` to `high` are
    /// neither committed nor aborted).
    #[error(
        "changelog {topic}/{partition} has a transaction open from offset {stable} (end \
         {high}) that did not end in time; its producer died or froze, and the broker aborts \
         it after its transaction.timeout.ms"
    )]
    PendingTransaction {
        /// The changelog topic.
        topic: String,
        /// The changelog partition.
        partition: i32,
        /// Its last stable offset.
        stable: i64,
        /// Its high watermark.
        high: i64,
    },
    /// A changelog record lacks the crate's headers (written by something else?).
    #[error("changelog {topic}/{partition}@{offset} is malformed: {reason}")]
    Malformed {
        /// The changelog topic.
        topic: String,
        /// The changelog partition.
        partition: i32,
        /// The record's offset.
        offset: i64,
        /// What is wrong.
        reason: String,
    },
}
