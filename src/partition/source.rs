//! Where a partition worker takes its records from: the partition's own librdkafka queue
//! (the consumer), or a channel (the broker-free test driver).
//!
//! Each assigned partition's fetch queue is split off the consumer's main queue
//! (`rd_kafka_queue_get_partition` + forwarding to none, before the partition is
//! assigned, so no record of it ever reaches the main queue), and the worker polls it
//! itself: the poll thread serves only rebalances, commits and statistics, and every
//! worker consumes on its own thread of the runtime. librdkafka bounds each partition's
//! queue (`queued.max.messages.kbytes` applies per partition with split queues) and simply
//! stops fetching a partition whose worker falls behind — no pause that discards prefetched
//! records, no copy on a shared thread.
//!
//! Wake-ups: the queue's non-empty callback (it fires when the queue goes from empty to not
//! empty) notifies the worker through a `Notify`, which keeps a permit when nobody waits,
//! and the worker registers before it looks at the queue — so a record that arrives between
//! the look and the wait is not missed. As a safety net against a lost wake-up (a queue
//! handle of a previous worker of the same partition unregistering the callback as it is
//! dropped) the worker looks again every [`RECHECK`] anyway.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use tokio::sync::{mpsc, Notify};

use super::fetch::{BatchQueue, FetchQueue};
use crate::batch::RecordBatch;
use crate::offset::TopicPartition;

/// Bytes taken from a queue at once (at most the partition's queue budget too).
const MAX_BYTES: usize = 1 << 20;
/// How often an idle worker looks at its queue without a wake-up.
const RECHECK: Duration = Duration::from_millis(100);

/// An error librdkafka reported on a partition's queue (a batch it cannot decompress or
/// parse, an offset out of range, a refused topic…), for the poll loop, which owns the
/// consumer and so can tell the offset the partition is stuck at.
#[derive(Debug)]
pub(crate) struct FetchError {
    pub(crate) partition: TopicPartition,
    pub(crate) error: KafkaError,
}

/// A worker's end of its partition's records.
pub(crate) enum Source {
    /// The partition's split librdkafka queue; errors go to the poll loop, which decides.
    Kafka {
        queue: Box<dyn FetchQueue>,
        wake: Arc<Notify>,
        errors: mpsc::UnboundedSender<FetchError>,
        partition: TopicPartition,
        /// Bytes taken at once: at most the partition's queue budget.
        max_bytes: usize,
    },
    /// Batches handed over by the test driver; closed when the partition stops.
    #[cfg(any(test, feature = "testing"))]
    Channel(mpsc::UnboundedReceiver<RecordBatch>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Kafka { .. } => "Source::Kafka",
            #[cfg(any(test, feature = "testing"))]
            Self::Channel(_) => "Source::Channel",
        })
    }
}

impl Source {
    /// A source on `queue`, split off `consumer`'s queue for `partition`, woken by its
    /// non-empty callback and read in batches (`batch_reads`) or one record per call.
    pub(crate) fn kafka<C: ConsumerContext + 'static>(
        consumer: &BaseConsumer<C>,
        mut queue: PartitionQueue<C>,
        partition: TopicPartition,
        errors: mpsc::UnboundedSender<FetchError>,
        (queue_bytes, batch_reads): (usize, bool),
    ) -> Self {
        let wake = Arc::new(Notify::new());
        let notify = wake.clone();
        queue.set_nonempty_callback(move || notify.notify_one());
        let queue: Box<dyn FetchQueue> = if batch_reads {
            match BatchQueue::new(consumer, queue, &partition.0, partition.1) {
                Ok(batches) => Box::new(batches),
                Err(queue) => {
                    tracing::warn!(topic = %partition.0, partition = partition.1,
                        "no second handle on the partition's queue: reading one record at a time");
                    Box::new(queue)
                }
            }
        } else {
            Box::new(queue)
        };
        Self::Kafka {
            queue,
            wake,
            errors,
            partition,
            max_bytes: queue_bytes.min(MAX_BYTES),
        }
    }

    /// The next batch of records; `None` when the source is closed (the driver stopped
    /// the partition). Waits while there is nothing; safe to drop while waiting (nothing is
    /// taken from the queue before it returns).
    pub(crate) async fn next(&mut self) -> Option<RecordBatch> {
        match self {
            #[cfg(any(test, feature = "testing"))]
            Self::Channel(rx) => rx.recv().await,
            Self::Kafka {
                queue,
                wake,
                errors,
                partition,
                max_bytes,
            } => loop {
                let woken = wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                let mut batch = RecordBatch::default();
                if let Err(error) = queue.fill(&mut batch, *max_bytes) {
                    // The poll loop decides (end the consumer, or count and log once); the
                    // records taken before the error are handled first.
                    let _ = errors.send(FetchError {
                        partition: partition.clone(),
                        error,
                    });
                }
                if !batch.records.is_empty() {
                    return Some(batch);
                }
                let _ = tokio::time::timeout(RECHECK, woken).await;
            },
        }
    }

    /// Whether records wait already (only known for a channel; a Kafka queue is looked at
    /// when the worker asks for the next batch).
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            #[cfg(any(test, feature = "testing"))]
            Self::Channel(rx) => rx.is_empty(),
            Self::Kafka { .. } => true,
        }
    }
}
