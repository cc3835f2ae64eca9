//! The processing guarantee: what a crash, a zombie or a rebalance may do to the records a
//! consumer sends.

use std::time::Duration;

/// What a crash, a zombie or a rebalance may do to the effects of a record
/// ([`ConsumerConfigBuilder::processing_guarantee`](crate::ConsumerConfigBuilder::processing_guarantee)).
///
/// State is exact under both: a record is never applied twice to a store. They differ in
/// what readers of the topics this consumer produces to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ProcessingGuarantee {
    /// Output records are produced while handling goes on and a record's offset is
    /// committed once its state and outputs are durable. A crash, or a member that lost
    /// its partitions, makes the next owner handle the records after the last commit again,
    /// which send again: outputs may repeat, never go missing.
    #[default]
    AtLeastOnce,
    /// Kafka transactions (exactly-once v2, KIP-447): per commit interval one transaction
    /// per member holds the changelog records, the output records and dead letters, and
    /// the consumed offsets, so a reader with `isolation.level=read_committed` sees each
    /// input's outputs once, across crashes and zombies. Everything is read back with
    /// `read_committed` (source, changelogs, tables). Outputs become visible when their
    /// transaction commits: one commit interval (default 100 ms under this guarantee) of
    /// latency. A transaction that cannot commit (a fenced producer, a lost partition, a
    /// handler failure under `ErrorPolicy::Fail`) is aborted and `run()` ends with
    /// [`Error::Transaction`](crate::Error::Transaction): the next start resumes from the last
    /// committed transaction. Needs a broker with transactions.
    ExactlyOnce,
}

impl ProcessingGuarantee {
    /// Whether this is [`ExactlyOnce`](Self::ExactlyOnce).
    pub fn is_exactly_once(self) -> bool {
        self == Self::ExactlyOnce
    }
}

/// The commit interval under exactly-once unless one is set (Kafka Streams uses 100 ms): a
/// transaction's outputs are visible to `read_committed` readers only once it commits.
pub(crate) const EXACTLY_ONCE_COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// `transaction.timeout.ms` (Kafka Streams uses 10 s under exactly-once): a transaction left
/// open longer (its member froze or died) is aborted by the broker.
pub(crate) const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);
