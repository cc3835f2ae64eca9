//! Reading a changelog partition from an offset to its end, with a consumer outside any group.
//!
//! Blocking: restore runs it on a blocking thread, never on the poll loop.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::ChangelogError;
use crate::config::ConsumerConfig;

const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);
/// A restore that sees no record for this long while records are still expected fails
/// instead of hanging (the broker lost the partition, or the watermark was wrong).
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Low and high watermark of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Watermarks {
    pub(crate) low: i64,
    pub(crate) high: i64,
}

pub(crate) struct ChangelogReader {
    consumer: BaseConsumer,
}

impl ChangelogReader {
    pub(crate) fn new(config: &ConsumerConfig) -> Result<Self, rdkafka::error::KafkaError> {
        Ok(Self {
            consumer: config.restore_consumer().create()?,
        })
    }

    pub(crate) fn watermarks(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Watermarks, ChangelogError> {
        let (low, high) = self
            .consumer
            .fetch_watermarks(topic, partition, WATERMARK_TIMEOUT)
            .map_err(|source| ChangelogError::Read {
                topic: topic.to_string(),
                partition,
                source,
            })?;
        Ok(Watermarks { low, high })
    }

    /// Calls `apply` for every record in `[from, to)`, in order. `should_stop` is checked
    /// between polls so a revoke can abandon a long restore.
    pub(crate) fn read<F, E>(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        to: i64,
        should_stop: &dyn Fn() -> bool,
        mut apply: F,
    ) -> Result<bool, E>
    where
        F: FnMut(&BorrowedMessage<'_>) -> Result<(), E>,
        E: From<ChangelogError>,
    {
        let read_err = |source| ChangelogError::Read {
            topic: topic.to_string(),
            partition,
            source,
        };
        if from >= to {
            return Ok(true);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(from))
            .map_err(|e| E::from(read_err(e)))?;
        self.consumer
            .assign(&tpl)
            .map_err(|e| E::from(read_err(e)))?;
        let mut next = from;
        let mut last_progress = Instant::now();
        while next < to {
            if should_stop() {
                return Ok(false);
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(msg)) => {
                    if msg.offset() >= to {
                        break;
                    }
                    next = msg.offset() + 1;
                    last_progress = Instant::now();
                    apply(&msg)?;
                }
                Some(Err(source)) => return Err(read_err(source).into()),
                None if last_progress.elapsed() > STALL_TIMEOUT => {
                    return Err(read_err(rdkafka::error::KafkaError::MessageConsumption(
                        rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                    ))
                    .into())
                }
                None => {}
            }
        }
        self.consumer.unassign().map_err(|e| E::from(read_err(e)))?;
        Ok(true)
    }
}

/// A header's value as decimal text.
pub(crate) fn header_str<'a>(msg: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    let headers = msg.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}
