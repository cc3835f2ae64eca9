//! Committing durable offsets, and learning the broker's answer for every commit.
//!
//! Every commit — on the interval, on revoke, on shutdown — is submitted asynchronously with
//! librdkafka's `rd_kafka_commit_queue`, with the consumer's own queue as the reply queue. The
//! result comes back as an offset-commit event that the poll loop's next `poll()` hands to
//! [`ConsumerContext::commit_callback`](rdkafka::consumer::ConsumerContext::commit_callback),
//! on the poll thread, which calls [`record_result`]. `Stats` therefore shows what the broker
//! confirmed, never what was merely sent.
//!
//! Why not rdkafka's own `commit`: with `CommitMode::Async` it calls `rd_kafka_commit`
//! without a reply queue, so librdkafka never reports the result (rust-rdkafka #856; fixed
//! upstream only in an unreleased pull request). With `CommitMode::Sync` the poll thread
//! would block for a round trip on every interval, and without a deadline while the group
//! coordinator is unreachable (librdkafka queues the commit until it finds one), which
//! would stop routing, rebalances and shutdown during a broker outage. "Synchronous"
//! commits on revoke and shutdown are therefore an asynchronous submission followed by
//! polling until the result is known or a deadline passes.

use std::sync::Arc;
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::observe::StatsInner;
use crate::offset::PartitionProgress;
use crate::offset::TopicPartition;

/// Submits the durable offsets of `partitions` that the broker does not have yet and that
/// are not already in flight. Returns how many partitions were submitted.
pub(crate) fn submit<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: &[(TopicPartition, Arc<PartitionProgress>)],
) -> usize {
    let mut tpl = TopicPartitionList::new();
    let mut sent = Vec::new();
    for ((topic, partition), progress) in partitions {
        if let Some(next) = progress.to_commit() {
            if tpl
                .add_partition_offset(topic, *partition, Offset::Offset(next))
                .is_ok()
            {
                sent.push((progress, next));
            }
        }
    }
    if sent.is_empty() {
        return 0;
    }
    match commit_queued(consumer, &tpl) {
        Ok(()) => {
            for (progress, next) in &sent {
                progress.commit_submitted(*next);
            }
            COMMIT_SUBMITTED.with(|at| at.set(Some(Instant::now())));
            tracing::debug!(offsets = ?tpl, "commit submitted");
            sent.len()
        }
        Err(error) => {
            tracing::warn!(%error, offsets = ?tpl, "offset commit could not be submitted; retried on the next interval");
            for (progress, next) in &sent {
                progress.commit_failed(*next);
            }
            0
        }
    }
}

thread_local! {
    /// When the poll thread submitted the commit whose result is awaited.
    static COMMIT_SUBMITTED: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// Applies a commit result to the partitions' progress: confirmed offsets become the
/// committed position; failures are logged with topic, partition and offset, and counted.
pub(crate) fn record_result(
    stats: &StatsInner,
    result: &KafkaResult<()>,
    offsets: &TopicPartitionList,
) {
    tracing::debug!(?result, ?offsets, "commit result");
    // Submits and results both happen on the poll thread, one commit in flight at a time.
    if let Some(at) = COMMIT_SUBMITTED.with(|at| at.take()) {
        crate::observe::metrics::commit_finished(at.elapsed());
    }
    for element in offsets.elements() {
        let Offset::Offset(next) = element.offset() else {
            continue;
        };
        let tp = (element.topic().to_string(), element.partition());
        let outcome = match (result, element.error()) {
            (Ok(()), Ok(())) => Ok(()),
            (_, Err(error)) => Err(error),
            (Err(error), Ok(())) => Err(error.clone()),
        };
        let progress = stats.progress_of(&tp);
        match outcome {
            Ok(()) => {
                if let Some(progress) = progress {
                    progress.commit_succeeded(next);
                }
            }
            Err(error) => {
                stats
                    .commit_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    topic = %tp.0, partition = tp.1, offset = next, %error,
                    "offset commit failed; the next interval retries it"
                );
                if let Some(progress) = progress {
                    progress.commit_failed(next);
                }
            }
        }
    }
    if let Err(error) = result {
        if offsets.count() == 0 {
            tracing::warn!(%error, "offset commit failed");
        }
    }
}

/// `rd_kafka_commit_queue` with the consumer queue as the reply queue (see the module docs).
#[allow(unsafe_code)]
fn commit_queued<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    offsets: &TopicPartitionList,
) -> KafkaResult<()> {
    use rdkafka::bindings as rdsys;
    use rdkafka::error::IsError;
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` is valid for the lifetime of `consumer`. `rd_kafka_queue_get_consumer`
    // returns a new reference to the consumer queue (NULL without a group), released with
    // `rd_kafka_queue_destroy` after the call; librdkafka keeps its own reference for the
    // reply (RD_KAFKA_REPLYQ). `offsets` is a valid list that librdkafka copies. No callback
    // and no opaque are passed, so the result is delivered only as an event on that queue.
    let err = unsafe {
        let queue = rdsys::rd_kafka_queue_get_consumer(rk);
        if queue.is_null() {
            return Err(KafkaError::ConsumerCommit(
                RDKafkaErrorCode::InvalidArgument,
            ));
        }
        let err =
            rdsys::rd_kafka_commit_queue(rk, offsets.ptr(), queue, None, std::ptr::null_mut());
        rdsys::rd_kafka_queue_destroy(queue);
        err
    };
    if err.is_error() {
        Err(KafkaError::ConsumerCommit(err.into()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    #[test]
    fn results_set_the_committed_offset_and_failures_are_counted_and_retried() {
        let stats = StatsInner::default();
        let progress = Arc::new(PartitionProgress::default());
        stats.partitions_insert(("t".into(), 0), progress.clone());
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset("t", 0, Offset::Offset(5))
            .unwrap();

        progress.set_durable(5);
        progress.commit_submitted(5);
        let timed_out = Err(KafkaError::ConsumerCommit(
            RDKafkaErrorCode::RequestTimedOut,
        ));
        record_result(&stats, &timed_out, &offsets);
        assert_eq!(progress.committed_next.load(Ordering::Relaxed), -1);
        assert_eq!(progress.commit_failures.load(Ordering::Relaxed), 1);
        assert_eq!(stats.commit_failures.load(Ordering::Relaxed), 1);
        assert_eq!(progress.to_commit(), Some(5), "a failed commit is retried");

        progress.commit_submitted(5);
        record_result(&stats, &Ok(()), &offsets);
        assert_eq!(progress.committed_next.load(Ordering::Relaxed), 5);
        assert_eq!(progress.to_commit(), None, "nothing is committed twice");
    }
}
