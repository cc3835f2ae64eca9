//! Producing changelog (and dead-letter) records and waiting for their acknowledgements.
//!
//! One idempotent producer per consumer instance (`acks=all`, so retries neither duplicate
//! nor reorder records). Delivery reports are counted per send call through one shared
//! acknowledgement object, rather than one future per record: a flush of 100 000 records
//! costs 100 000 produce calls and reference-count increments, not 100 000 channels.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use tokio::sync::Notify;

use super::produce::{HandleProducer, Headers, OutRef, TopicRef};
use super::ChangelogError;

/// One record to produce, owned.
#[derive(Debug, Clone)]
pub(crate) struct OutRecord {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    /// `None` only for dead letters of key-less records.
    pub(crate) key: Option<Vec<u8>>,
    /// `None` is a tombstone.
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
}

/// The acknowledgements of one send call.
#[derive(Default)]
pub(crate) struct Acks {
    state: Mutex<AckState>,
    done: Notify,
}

#[derive(Default)]
struct AckState {
    /// Per partition, the indices of sent records in send order (delivery reports of a
    /// partition arrive in that order).
    queues: Vec<((String, i32), VecDeque<usize>)>,
    offsets: Vec<i64>,
    remaining: usize,
    error: Option<(String, i32, KafkaError)>,
}

impl AckState {
    fn acked(&mut self, topic: &str, partition: i32, result: Result<i64, KafkaError>) {
        self.remaining = self.remaining.saturating_sub(1);
        let index = self
            .queues
            .iter_mut()
            .find(|((t, p), _)| t == topic && *p == partition)
            .and_then(|(_, q)| q.pop_front());
        match (result, index) {
            (Ok(offset), Some(index)) => self.offsets[index] = offset,
            (Ok(_), None) => {}
            (Err(error), _) => {
                self.error
                    .get_or_insert_with(|| (topic.to_string(), partition, error));
            }
        }
    }
}

pub(crate) struct AckContext;

impl ClientContext for AckContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{log_message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, "{log_message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
        }
    }
}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Arc<Acks>;

    /// Runs on the producer's polling thread.
    fn delivery(&self, result: &DeliveryResult<'_>, acks: Arc<Acks>) {
        let (topic, partition, outcome) = match result {
            Ok(msg) => (msg.topic(), msg.partition(), Ok(msg.offset())),
            Err((error, msg)) => (msg.topic(), msg.partition(), Err(error.clone())),
        };
        let finished = {
            let mut state = acks.state.lock().unwrap_or_else(|p| p.into_inner());
            state.acked(topic, partition, outcome);
            state.remaining == 0
        };
        if finished {
            acks.done.notify_one();
        }
    }
}

/// A shared idempotent producer; cheap to clone.
#[derive(Clone)]
pub(crate) struct ChangelogWriter {
    producer: Arc<HandleProducer<AckContext>>,
}

impl std::fmt::Debug for ChangelogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangelogWriter").finish_non_exhaustive()
    }
}

impl ChangelogWriter {
    /// The producer (for its transactional calls).
    pub(crate) fn producer(&self) -> &ThreadedProducer<AckContext> {
        self.producer.producer()
    }

    /// # Errors
    /// When librdkafka rejects the configuration.
    pub(crate) fn new(config: &ClientConfig) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: Arc::new(HandleProducer::new(config.create_with_context(AckContext)?)),
        })
    }

    /// Connects the producer to the cluster now. librdkafka connects lazily, and an
    /// idempotent producer that finds no connection when it asks for its producer id retries
    /// only 500 ms later: the first restore's epoch markers waited for that (seen as cold
    /// restores taking 0.8 s longer, one run in two). Errors are left to the first send.
    pub(crate) async fn connect(&self) {
        let producer = self.producer.clone();
        let fetched = tokio::task::spawn_blocking(move || {
            producer
                .producer()
                .client()
                .fetch_metadata(None, std::time::Duration::from_secs(10))
                .map(drop)
        })
        .await;
        if let Ok(Err(error)) = fetched {
            tracing::debug!(%error, "producer could not connect yet");
        }
    }

    /// Produces owned records; see [`send`](Self::send).
    ///
    /// # Errors
    /// The first record that was not acknowledged.
    pub(crate) async fn send_all(
        &self,
        records: Vec<OutRecord>,
    ) -> Result<Vec<i64>, ChangelogError> {
        self.send(refs_of(&records)).await
    }

    /// Produces `records` and waits until every one is acknowledged; returns their offsets
    /// in input order. Records are enqueued in order, so within a partition they land in
    /// order (idempotence keeps that through retries).
    ///
    /// # Errors
    /// The first record that was not acknowledged.
    pub(crate) async fn send<'a>(
        &self,
        records: impl IntoIterator<Item = OutRef<'a>>,
    ) -> Result<Vec<i64>, ChangelogError> {
        self.enqueue(records).await?.wait().await
    }

    /// Hands `records` to the producer (in order; waiting only while its local queue is
    /// full) without waiting for their acknowledgements, which [`Pending::wait`] gives.
    ///
    /// # Errors
    /// A record the producer refused at once (too large, unknown partition…); those before
    /// it are in flight and their acknowledgements go nowhere.
    pub(crate) async fn enqueue<'a>(
        &self,
        records: impl IntoIterator<Item = OutRef<'a>>,
    ) -> Result<Pending, ChangelogError> {
        let records: Vec<OutRef<'a>> = records.into_iter().collect();
        let acks = Arc::new(Acks::default());
        {
            // The whole plan is in place before the first delivery report can arrive.
            let mut state = acks.state.lock().unwrap_or_else(|p| p.into_inner());
            for (index, record) in records.iter().enumerate() {
                // A record the partitioner places is reported with the partition it got,
                // which no queue could name: its offset is not asked for (output records),
                // and skipping it here keeps a send of one output record cheap.
                if record.partition < 0 {
                    continue;
                }
                let position = state
                    .queues
                    .iter()
                    .position(|((t, p), _)| t == record.topic && *p == record.partition);
                let queue = match position {
                    Some(i) => &mut state.queues[i].1,
                    None => {
                        let tp = (record.topic.to_string(), record.partition);
                        state.queues.push((tp, VecDeque::new()));
                        &mut state.queues.last_mut().expect("just pushed").1
                    }
                };
                queue.push_back(index);
            }
            state.offsets = vec![-1; records.len()];
            state.remaining = records.len();
        }
        let (mut topic, created_ms) = (None, crate::timer::wall_now());
        for record in &records {
            self.produce(record, &acks, &mut topic, created_ms)
                .await
                .map_err(|source| ChangelogError::Produce {
                    topic: record.topic.to_string(),
                    partition: record.partition,
                    source,
                })?;
        }
        Ok(Pending {
            acks,
            deferred: Vec::new(),
        })
    }

    /// Hands one record to the producer, its delivery report going to `acks`; waits (and
    /// retries) while the producer's local queue is full. `topic` keeps the handle of the
    /// last topic produced to: consecutive records of one topic look it up once. The
    /// record's timestamp is `created_ms`, read once per send call.
    async fn produce<'a, 's>(
        &'s self,
        record: &OutRef<'a>,
        acks: &Arc<Acks>,
        topic: &mut Option<(&'a str, TopicRef<'s>)>,
        created_ms: i64,
    ) -> Result<(), KafkaError> {
        let handle = match topic {
            Some((name, handle)) if *name == record.topic => handle.clone(),
            _ => {
                let handle = self.producer.topic(record.topic)?;
                *topic = Some((record.topic, handle.clone()));
                handle
            }
        };
        let mut opaque = acks.clone();
        loop {
            match self.producer.produce(&handle, record, created_ms, opaque) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    // The local queue is full: let librdkafka send some, then retry.
                    opaque = returned;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((source, _)) => return Err(source),
            }
        }
    }
}

impl ChangelogWriter {
    /// Produces `records` as part of `group`'s acknowledgements when they can join it (every
    /// record placed by the partitioner, whose offsets nobody asks for): `Ok(None)`, and
    /// waiting for `group` waits for them too. Otherwise on their own, like
    /// [`enqueue`](Self::enqueue). A record refused at once is an error; those before it
    /// are in flight.
    pub(crate) async fn enqueue_joining(
        &self,
        records: Vec<OutRecord>,
        group: Option<Pending>,
    ) -> Result<Option<Pending>, ChangelogError> {
        let group = match group {
            Some(group) if group.deferred.is_empty() && records.iter().all(|r| r.partition < 0) => {
                group
            }
            _ => return self.enqueue(refs_of(&records)).await.map(Some),
        };
        let total = records.len();
        group
            .acks
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remaining += total;
        let (mut topic, created_ms) = (None, crate::timer::wall_now());
        for (sent, record) in refs_of(&records).enumerate() {
            if let Err(source) = self
                .produce(&record, &group.acks, &mut topic, created_ms)
                .await
            {
                // The records not sent will never be acknowledged.
                let finished = {
                    let mut state = group.acks.state.lock().unwrap_or_else(|p| p.into_inner());
                    state.remaining = state.remaining.saturating_sub(total - sent);
                    state.remaining == 0
                };
                if finished {
                    group.acks.done.notify_one();
                }
                return Err(ChangelogError::Produce {
                    topic: record.topic.to_string(),
                    partition: record.partition,
                    source,
                });
            }
        }
        Ok(None)
    }
}

/// Records handed to the producer whose acknowledgements may still be on their way.
#[must_use = "records are durable only once their acknowledgements arrived"]
pub(crate) struct Pending {
    acks: Arc<Acks>,
    /// Records not handed to the producer yet: under exactly-once a record's outputs are
    /// produced by the flush that commits its offset, in the same transaction.
    deferred: Vec<OutRecord>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl Pending {
    /// Already acknowledged (a sink without a producer behind it).
    pub(crate) fn acknowledged() -> Self {
        Self {
            acks: Arc::default(),
            deferred: Vec::new(),
        }
    }

    /// Another handle on the same acknowledgements (records may join them with
    /// [`ChangelogWriter::enqueue_joining`]); a deferred record is not shared.
    pub(crate) fn share(&self) -> Self {
        Self {
            acks: self.acks.clone(),
            deferred: Vec::new(),
        }
    }

    /// Records to be produced later, by whoever takes them ([`take_deferred`](Self::take_deferred)).
    pub(crate) fn deferred(records: Vec<OutRecord>) -> Self {
        Self {
            acks: Arc::default(),
            deferred: records,
        }
    }

    /// Key and value bytes of the records not produced yet.
    pub(crate) fn deferred_bytes(&self) -> usize {
        self.deferred
            .iter()
            .map(|r| r.key.as_ref().map_or(0, Vec::len) + r.value.as_ref().map_or(0, Vec::len))
            .sum()
    }

    /// The records not produced yet.
    pub(crate) fn take_deferred(&mut self) -> Vec<OutRecord> {
        std::mem::take(&mut self.deferred)
    }

    /// Not acknowledged until the returned handle is released (the test driver withholds
    /// acknowledgements).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn held() -> (Self, HeldAck) {
        let acks = Arc::new(Acks::default());
        acks.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remaining = 1;
        (
            Self {
                acks: acks.clone(),
                deferred: Vec::new(),
            },
            HeldAck(acks),
        )
    }

    /// Waits until every record is acknowledged; their offsets in input order.
    ///
    /// # Errors
    /// The first record that was not acknowledged.
    pub(crate) async fn wait(self) -> Result<Vec<i64>, ChangelogError> {
        if let Some(record) = self.deferred.first() {
            return Err(ChangelogError::Produce {
                topic: record.topic.clone(),
                partition: record.partition,
                source: KafkaError::Canceled,
            });
        }
        let acks = self.acks;
        loop {
            let notified = acks.done.notified();
            {
                let mut state = acks.state.lock().unwrap_or_else(|p| p.into_inner());
                if state.remaining == 0 {
                    if let Some((topic, partition, source)) = state.error.take() {
                        return Err(ChangelogError::Produce {
                            topic,
                            partition,
                            source,
                        });
                    }
                    return Ok(std::mem::take(&mut state.offsets));
                }
            }
            notified.await;
        }
    }
}

/// The acknowledgement of a [`Pending::held`], given by [`HeldAck::release`].
#[cfg(any(test, feature = "testing"))]
pub(crate) struct HeldAck(Arc<Acks>);

#[cfg(any(test, feature = "testing"))]
impl HeldAck {
    pub(crate) fn release(self) {
        self.0
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remaining = 0;
        self.0.done.notify_one();
    }
}

/// Where records other than changelog entries go (dead letters): Kafka, or a capture in the
/// test driver.
pub(crate) trait RecordSink: Send + Sync + 'static {
    /// Produces `records` and waits for every acknowledgement; offsets in input order.
    fn send_records(
        &self,
        records: Vec<OutRecord>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Vec<i64>, ChangelogError>> + Send + '_>,
    >;

    /// Produces `records` without waiting for their acknowledgements (a sink that has
    /// nothing to wait for sends them at once).
    fn enqueue_records(
        &self,
        records: Vec<OutRecord>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Pending, ChangelogError>> + Send + '_>,
    > {
        Box::pin(async move {
            self.send_records(records).await?;
            Ok(Pending::acknowledged())
        })
    }

    /// Produces `records` without waiting, joining `group`'s acknowledgements where the sink
    /// can (`Ok(None)`: waiting for `group` covers them); else as
    /// [`enqueue_records`](Self::enqueue_records) does.
    fn enqueue_joining(
        &self,
        records: Vec<OutRecord>,
        group: Option<Pending>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Option<Pending>, ChangelogError>> + Send + '_>,
    > {
        let _ = group;
        Box::pin(async move { self.enqueue_records(records).await.map(Some) })
    }
}

/// Borrowed views of owned records, for [`ChangelogWriter::send`].
pub(crate) fn refs_of(records: &[OutRecord]) -> impl Iterator<Item = OutRef<'_>> {
    records.iter().map(|r| OutRef {
        topic: &r.topic,
        partition: r.partition,
        key: r.key.as_deref(),
        value: r.value.as_deref(),
        headers: Headers::List(&r.headers),
    })
}

impl RecordSink for ChangelogWriter {
    fn enqueue_joining(
        &self,
        records: Vec<OutRecord>,
        group: Option<Pending>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Option<Pending>, ChangelogError>> + Send + '_>,
    > {
        Box::pin(ChangelogWriter::enqueue_joining(self, records, group))
    }

    fn enqueue_records(
        &self,
        records: Vec<OutRecord>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Pending, ChangelogError>> + Send + '_>,
    > {
        Box::pin(async move { self.enqueue(refs_of(&records)).await })
    }

    fn send_records(
        &self,
        records: Vec<OutRecord>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Vec<i64>, ChangelogError>> + Send + '_>,
    > {
        Box::pin(self.send_all(records))
    }
}
