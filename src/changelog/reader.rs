//! Reading changelog (and source) partitions with consumers outside any group.
//!
//! Blocking: restores run on blocking threads, never on the poll loop. The clients are
//! pooled: a consumer instance creates at most as many as partitions restore at once, and
//! reuses them (each librdkafka client has its own threads and broker connections).
//! Transient errors (a broker restarting, a leader moving) are retried with backoff.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::ChangelogError;
use crate::config::ConsumerConfig;

const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);
/// A read that sees no record for this long while records are still expected fails
/// instead of hanging (the broker lost the partition, or the watermark was wrong).
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Transient errors are retried with backoff for up to this long.
const RETRY_BUDGET: Duration = Duration::from_secs(60);

/// Whether librdkafka or the broker may succeed on a later attempt.
pub(crate) fn is_transient(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::UnknownTopicOrPartition
        )
    )
}

/// Runs `attempt` until it succeeds, fails permanently, or transient failures outlast the
/// retry budget; backs off 100 ms, 200 ms, … up to 5 s in between.
pub(crate) fn with_retries<T>(
    what: &str,
    mut attempt: impl FnMut() -> Result<T, KafkaError>,
) -> Result<T, KafkaError> {
    let deadline = Instant::now() + RETRY_BUDGET;
    let mut backoff = Duration::from_millis(100);
    loop {
        match attempt() {
            Err(error) if is_transient(&error) && Instant::now() + backoff < deadline => {
                tracing::warn!(%error, ?backoff, "{what} failed; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// A consumer outside any group, for reading partitions from an offset.
pub(crate) struct Reader {
    consumer: BaseConsumer<ReaderContext>,
    /// Its settings reading uncommitted records, for the high watermark next to the last
    /// stable offset (created when first asked, under exactly-once only).
    uncommitted_settings: ClientConfig,
    uncommitted: std::sync::OnceLock<BaseConsumer<ReaderContext>>,
}

/// How long a restore waits for another producer's open transaction on a changelog
/// partition to end (the broker aborts it after its `transaction.timeout.ms`: 10 s for this
/// crate's producers, 60 s by default for others).
const PENDING_TRANSACTION_WAIT: Duration = Duration::from_secs(90);

/// librdkafka also reports each end of partition as a client error, which rdkafka's default
/// context logs at error level: here it is the expected end of a read.
struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::error!(target: "librdkafka", %error, "{reason}");
        }
    }
}

impl ConsumerContext for ReaderContext {}

impl Reader {
    fn new(config: &ConsumerConfig) -> Result<Self, KafkaError> {
        let mut settings = config.restore_consumer();
        // A read ends at the partition's end even when no record sits at `to - 1`: a
        // transaction's commit marker takes the last offset of a changelog written
        // transactionally, and `read_committed` ends at the last stable offset.
        settings.set("enable.partition.eof", "true");
        let mut uncommitted_settings = settings.clone();
        uncommitted_settings.set("isolation.level", "read_uncommitted");
        Ok(Self {
            consumer: settings.create_with_context(ReaderContext)?,
            uncommitted_settings,
            uncommitted: std::sync::OnceLock::new(),
        })
    }

    /// Low and high watermark of a partition.
    pub(crate) fn watermarks(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<(i64, i64), ChangelogError> {
        with_retries("reading watermarks", || {
            self.consumer
                .fetch_watermarks(topic, partition, WATERMARK_TIMEOUT)
        })
        .map_err(|source| ChangelogError::Read {
            topic: topic.to_string(),
            partition,
            source,
        })
    }

    /// Low watermark and last stable offset of a partition once no transaction is open on
    /// it: a restore under exactly-once that ended at the last stable offset while another
    /// producer's transaction is open (a member that died or froze mid-transaction) would
    /// miss what was committed after it. Waits (up to [`PENDING_TRANSACTION_WAIT`]) until
    /// the broker committed or aborted it.
    ///
    /// # Errors
    /// The transaction stayed open; reading the watermarks failed.
    pub(crate) fn stable_watermarks(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<(i64, i64), ChangelogError> {
        let read_err = |source| ChangelogError::Read {
            topic: topic.to_string(),
            partition,
            source,
        };
        let uncommitted = self.uncommitted_client(topic, partition)?;
        let started = Instant::now();
        let mut told = false;
        loop {
            let (low, stable) = self.watermarks(topic, partition)?;
            let (_, high) = with_retries("reading watermarks", || {
                uncommitted.fetch_watermarks(topic, partition, WATERMARK_TIMEOUT)
            })
            .map_err(read_err)?;
            if stable >= high {
                return Ok((low, stable));
            }
            if started.elapsed() >= PENDING_TRANSACTION_WAIT {
                return Err(ChangelogError::PendingTransaction {
                    topic: topic.to_string(),
                    partition,
                    stable,
                    high,
                });
            }
            if !told {
                tracing::warn!(%topic, partition, stable, high,
                    "a transaction is open on this changelog partition; waiting for it to end before restoring");
                told = true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Calls `apply` for every record in `[from, to)`, in order. `should_stop` is checked
    /// between polls so a revoke can abandon a long read; `Ok(false)` then. Records missing
    /// from the range (compaction, transaction markers, aborted records) are skipped; the
    /// read ends at the partition's end if that comes first; a read stalled for a minute
    /// fails.
    pub(crate) fn read<E>(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        to: i64,
        should_stop: &dyn Fn() -> bool,
        apply: &mut dyn FnMut(&BorrowedMessage<'_>) -> Result<(), E>,
    ) -> Result<bool, E>
    where
        E: From<ChangelogError>,
    {
        if from >= to {
            return Ok(true);
        }
        self.read_with(
            &self.consumer,
            (topic, partition),
            (from, to),
            should_stop,
            apply,
        )
    }

    fn uncommitted_client(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<&BaseConsumer<ReaderContext>, ChangelogError> {
        if let Some(client) = self.uncommitted.get() {
            return Ok(client);
        }
        let client = self
            .uncommitted_settings
            .create_with_context(ReaderContext)
            .map_err(|source| ChangelogError::Read {
                topic: topic.to_string(),
                partition,
                source,
            })?;
        Ok(self.uncommitted.get_or_init(|| client))
    }

    fn read_with<E>(
        &self,
        consumer: &BaseConsumer<ReaderContext>,
        (topic, partition): (&str, i32),
        (from, to): (i64, i64),
        should_stop: &dyn Fn() -> bool,
        apply: &mut dyn FnMut(&BorrowedMessage<'_>) -> Result<(), E>,
    ) -> Result<bool, E>
    where
        E: From<ChangelogError>,
    {
        let read_err = |source| ChangelogError::Read {
            topic: topic.to_string(),
            partition,
            source,
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(from))
            .map_err(|e| E::from(read_err(e)))?;
        consumer.assign(&tpl).map_err(|e| E::from(read_err(e)))?;
        let result = Self::read_assigned(consumer, to, should_stop, apply, &read_err);
        let _ = consumer.unassign();
        result
    }

    fn read_assigned<E>(
        consumer: &BaseConsumer<ReaderContext>,
        to: i64,
        should_stop: &dyn Fn() -> bool,
        apply: &mut dyn FnMut(&BorrowedMessage<'_>) -> Result<(), E>,
        read_err: &dyn Fn(KafkaError) -> ChangelogError,
    ) -> Result<bool, E>
    where
        E: From<ChangelogError>,
    {
        let mut last_progress = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            if should_stop() {
                return Ok(false);
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(msg)) => {
                    if msg.offset() >= to {
                        return Ok(true);
                    }
                    last_progress = Instant::now();
                    backoff = Duration::from_millis(100);
                    apply(&msg)?;
                    if msg.offset() + 1 >= to {
                        return Ok(true);
                    }
                }
                // Nothing more to read now: every record up to `to` (or up to the last stable
                // offset, past which nothing is committed) was handed over.
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(true),
                Some(Err(error)) if is_transient(&error) => {
                    tracing::warn!(%error, "changelog read failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Some(Err(error)) => return Err(read_err(error).into()),
                None if last_progress.elapsed() > STALL_TIMEOUT => {
                    tracing::error!(
                        to,
                        position = ?consumer.position().ok(),
                        "a read saw no record and no end of partition for a minute"
                    );
                    return Err(read_err(KafkaError::MessageConsumption(
                        RDKafkaErrorCode::OperationTimedOut,
                    ))
                    .into());
                }
                None => {}
            }
        }
    }
}

/// At most this many restore clients per consumer: each is a librdkafka client with its
/// own threads, connections and prefetch buffers, and 64 partitions restoring at once must
/// not make 64 of them. Restores beyond take turns (most read nothing and are quick).
const MAX_READERS: usize = 8;

/// Restore clients of one consumer instance, created on demand (up to [`MAX_READERS`]) and
/// reused.
#[derive(Clone)]
pub(crate) struct ReaderPool {
    config: Arc<ConsumerConfig>,
    idle: Arc<(Mutex<Idle>, std::sync::Condvar)>,
}

#[derive(Default)]
struct Idle {
    readers: Vec<Reader>,
    created: usize,
}

impl std::fmt::Debug for ReaderPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderPool").finish_non_exhaustive()
    }
}

/// A reader taken from the pool; goes back when dropped.
pub(crate) struct PooledReader {
    reader: Option<Reader>,
    pool: Arc<(Mutex<Idle>, std::sync::Condvar)>,
}

impl std::ops::Deref for PooledReader {
    type Target = Reader;
    fn deref(&self) -> &Reader {
        self.reader.as_ref().expect("present until dropped")
    }
}

impl Drop for PooledReader {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            let (idle, returned) = &*self.pool;
            idle.lock()
                .unwrap_or_else(|p| p.into_inner())
                .readers
                .push(reader);
            returned.notify_one();
        }
    }
}

impl ReaderPool {
    pub(crate) fn new(config: Arc<ConsumerConfig>) -> Self {
        Self {
            config,
            idle: Arc::default(),
        }
    }

    /// An idle reader, a new one while fewer than [`MAX_READERS`] exist, or the next one
    /// returned. Blocking.
    pub(crate) fn get(&self) -> Result<PooledReader, KafkaError> {
        let (idle, returned) = &*self.idle;
        let mut guard = idle.lock().unwrap_or_else(|p| p.into_inner());
        let reader = loop {
            if let Some(reader) = guard.readers.pop() {
                break reader;
            }
            if guard.created < MAX_READERS {
                guard.created += 1;
                drop(guard);
                match Reader::new(&self.config) {
                    Ok(reader) => break reader,
                    Err(error) => {
                        idle.lock().unwrap_or_else(|p| p.into_inner()).created -= 1;
                        return Err(error);
                    }
                }
            }
            guard = returned.wait(guard).unwrap_or_else(|p| p.into_inner());
        };
        Ok(PooledReader {
            reader: Some(reader),
            pool: self.idle.clone(),
        })
    }
}
