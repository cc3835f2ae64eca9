//! The changelogs of one partition on Kafka: what restore reads and writes through
//! [`ChangelogPartition`](crate::state::restore::ChangelogPartition).

use super::format::{decode, encode};
use super::reader::PooledReader;
use super::{ChangelogWriter, OutRecord};
use crate::state::replay::{Entry, Stamp};
use crate::state::restore::ChangelogPartition;
use crate::state::StateError;

pub(crate) struct KafkaChangelog<'a> {
    pub(crate) reader: PooledReader,
    pub(crate) writer: &'a ChangelogWriter,
    /// The changelog topic of each store, by store index.
    pub(crate) topics: &'a [String],
    pub(crate) partition: i32,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) stop: &'a dyn Fn() -> bool,
}

impl ChangelogPartition for KafkaChangelog<'_> {
    fn watermarks(&mut self, store: usize) -> Result<(i64, i64), StateError> {
        Ok(self
            .reader
            .watermarks(&self.topics[store], self.partition)?)
    }

    fn read(
        &mut self,
        store: usize,
        from: i64,
        to: i64,
        apply: &mut dyn FnMut(i64, Stamp, Entry) -> Result<(), StateError>,
    ) -> Result<bool, StateError> {
        self.reader.read(
            &self.topics[store],
            self.partition,
            from,
            to,
            self.stop,
            &mut |msg| {
                let (stamp, entry) = decode(msg)?;
                apply(rdkafka::message::Message::offset(msg), stamp, entry)
            },
        )
    }

    fn append(&mut self, records: Vec<(usize, Stamp, Entry)>) -> Result<Vec<i64>, StateError> {
        let out = records
            .iter()
            .map(|(store, stamp, entry)| {
                to_out_record(&self.topics[*store], self.partition, *stamp, entry)
            })
            .collect();
        Ok(self.runtime.block_on(self.writer.send_all(out))?)
    }
}

/// The Kafka record of a changelog entry.
pub(crate) fn to_out_record(topic: &str, partition: i32, stamp: Stamp, entry: &Entry) -> OutRecord {
    let (key, value, headers) = encode(stamp, entry);
    OutRecord {
        topic: topic.to_string(),
        partition,
        key: Some(key),
        value,
        headers: headers
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    }
}
