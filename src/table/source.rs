//! Where table records are read from at bootstrap: Kafka, or memory in the test driver.

use std::sync::Arc;

use super::TableError;
use crate::batch::RecordBatch;
use crate::changelog::{partition_count, ChangelogError, ReaderPool};
use crate::config::ConsumerConfig;

/// Bootstrap reads are handed over (and written, with their checkpoint) in batches of about
/// this many bytes: large enough for RocksDB to write efficiently, small enough that a
/// bootstrap cut short loses little.
const READ_BATCH_BYTES: usize = 1 << 20;

/// A table topic as the bootstrap reads it. Blocking: called on blocking threads.
pub(crate) trait TableSource: Send + Sync + std::fmt::Debug + 'static {
    /// Partition count of `topic`, `None` when it does not exist.
    fn partitions(&self, topic: &str) -> Result<Option<usize>, ChangelogError>;

    /// Low and high watermark of a partition.
    fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), ChangelogError>;

    /// Calls `apply` with the records in `[from, to)` of a partition, in batches, in order.
    /// `Ok(false)`: `stop` said to stop.
    fn read(
        &self,
        topic: &str,
        partition: i32,
        range: (i64, i64),
        stop: &dyn Fn() -> bool,
        apply: &mut dyn FnMut(&RecordBatch) -> Result<(), TableError>,
    ) -> Result<bool, TableError>;
}

/// Table topics on Kafka, read with the consumer's pooled restore clients.
#[derive(Debug, Clone)]
pub(crate) struct KafkaTableSource {
    pub(crate) config: Arc<ConsumerConfig>,
    pub(crate) readers: ReaderPool,
}

impl KafkaTableSource {
    fn reader(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<crate::changelog::PooledReader, ChangelogError> {
        self.readers.get().map_err(|source| ChangelogError::Read {
            topic: topic.to_string(),
            partition,
            source,
        })
    }
}

impl TableSource for KafkaTableSource {
    fn partitions(&self, topic: &str) -> Result<Option<usize>, ChangelogError> {
        partition_count(&self.config, topic)
    }

    fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), ChangelogError> {
        self.reader(topic, partition)?.watermarks(topic, partition)
    }

    fn read(
        &self,
        topic: &str,
        partition: i32,
        (from, to): (i64, i64),
        stop: &dyn Fn() -> bool,
        apply: &mut dyn FnMut(&RecordBatch) -> Result<(), TableError>,
    ) -> Result<bool, TableError> {
        let reader = self.reader(topic, partition)?;
        let mut batch = RecordBatch::default();
        let finished = reader.read(topic, partition, from, to, stop, &mut |msg| {
            batch.push(msg);
            if batch.bytes >= READ_BATCH_BYTES {
                apply(&std::mem::take(&mut batch))?;
            }
            Ok::<(), TableError>(())
        })?;
        if finished && !batch.records.is_empty() {
            apply(&batch)?;
        }
        Ok(finished)
    }
}

/// Table topics in memory, for the broker-free test driver.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
pub(crate) struct MemoryTableSource {
    /// Records by topic and partition: (timestamp, key, value).
    topics: std::sync::Mutex<std::collections::HashMap<(String, i32), Vec<MemoryRecord>>>,
    /// Partition count of every table topic.
    pub(crate) partitions: usize,
}

/// A table record held in memory: timestamp, key, value.
#[cfg(any(test, feature = "testing"))]
pub(crate) type MemoryRecord = (Option<i64>, Option<Vec<u8>>, Option<Vec<u8>>);

#[cfg(any(test, feature = "testing"))]
impl MemoryTableSource {
    pub(crate) fn new(partitions: usize) -> Self {
        Self {
            topics: Default::default(),
            partitions,
        }
    }

    /// Appends a record; returns it as a one-record batch at its offset.
    pub(crate) fn append(&self, topic: &str, partition: i32, record: MemoryRecord) -> RecordBatch {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let log = topics.entry((topic.to_string(), partition)).or_default();
        let mut batch = RecordBatch::default();
        batch.push_raw(
            log.len() as i64,
            record.1.as_deref(),
            record.2.as_deref(),
            &[],
        );
        batch.set_last_timestamp(record.0);
        log.push(record);
        batch
    }
}

#[cfg(any(test, feature = "testing"))]
impl TableSource for MemoryTableSource {
    fn partitions(&self, _topic: &str) -> Result<Option<usize>, ChangelogError> {
        Ok(Some(self.partitions))
    }

    fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), ChangelogError> {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let len = topics
            .get(&(topic.to_string(), partition))
            .map_or(0, Vec::len);
        Ok((0, len as i64))
    }

    fn read(
        &self,
        topic: &str,
        partition: i32,
        (from, to): (i64, i64),
        _stop: &dyn Fn() -> bool,
        apply: &mut dyn FnMut(&RecordBatch) -> Result<(), TableError>,
    ) -> Result<bool, TableError> {
        let mut batch = RecordBatch::default();
        {
            let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            let log = topics.get(&(topic.to_string(), partition));
            for (offset, (ts, key, value)) in log.into_iter().flatten().enumerate() {
                let offset = offset as i64;
                if offset >= from && offset < to {
                    batch.push_raw(offset, key.as_deref(), value.as_deref(), &[]);
                    batch.set_last_timestamp(*ts);
                }
            }
        }
        if !batch.records.is_empty() {
            apply(&batch)?;
        }
        Ok(true)
    }
}
