//! The changelogs on Kafka: the [`StateLog`] of a consumer with stores.

use super::format::{decode, encode, stamp_header, HEADER_OWNER, HEADER_STAMP};
use super::produce::Headers;
use super::reader::ReaderPool;
use super::{ChangelogError, ChangelogWriter, OutRef};
use crate::state::checkpoint::SourcePosition;
use crate::state::log::{Appended, EntryRef, StateLog};
use crate::state::replay::{Entry, Stamp};
use crate::state::StateError;

/// How long the check of the source record before a checkpoint may take.
const VERIFY_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Changelog topics by store index, written with the consumer's producer and read with its
/// pooled restore clients.
#[derive(Debug, Clone)]
pub(crate) struct KafkaStateLog {
    pub(crate) writer: ChangelogWriter,
    pub(crate) readers: ReaderPool,
    /// The changelog topic of each store, by store index.
    pub(crate) topics: Vec<String>,
    /// This member's `group.instance.id`, written on its markers.
    pub(crate) owner: Option<String>,
    /// Under exactly-once: the member's transactions. A flush appends inside the unit its
    /// worker entered; [`append_blocking`](StateLog::append_blocking) (an epoch marker when a
    /// partition opens) enters a unit of its own.
    pub(crate) transactions: Option<std::sync::Arc<super::transaction::Transactions>>,
}

impl KafkaStateLog {
    fn reader(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<super::reader::PooledReader, ChangelogError> {
        self.readers.get().map_err(|source| ChangelogError::Read {
            topic: topic.to_string(),
            partition,
            source,
        })
    }
}

/// A marker's key and headers, in the Kafka record layout ([`encode`]), with the owner.
fn encode_marker(
    stamp: Stamp,
    marker: EntryRef<'_>,
    owner: Option<&str>,
) -> (Vec<u8>, MarkerHeaders) {
    let (key, _, headers) = encode(stamp, &marker.to_owned());
    let mut headers: MarkerHeaders = headers
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    if let Some(owner) = owner {
        headers.push((HEADER_OWNER.to_string(), owner.as_bytes().to_vec()));
    }
    (key, headers)
}

/// A marker's header names and values, owned (markers are few; data records borrow).
type MarkerHeaders = Vec<(String, Vec<u8>)>;

impl StateLog for KafkaStateLog {
    fn append<'a>(
        &'a self,
        partition: i32,
        records: Vec<(usize, Stamp, EntryRef<'a>)>,
    ) -> Appended<'a> {
        Box::pin(async move {
            // The hot path is data records: they share their flush's stamp header, written
            // once here and borrowed by each record. Markers are few and own their headers.
            let mut stamps: Vec<(Stamp, Vec<u8>)> = Vec::new();
            let mut markers: Vec<(Vec<u8>, MarkerHeaders)> = Vec::new();
            for (_, stamp, entry) in &records {
                if !stamps.iter().any(|(s, _)| s == stamp) {
                    stamps.push((*stamp, stamp_header(*stamp)));
                }
                if !matches!(entry, EntryRef::Data { .. }) {
                    markers.push(encode_marker(*stamp, *entry, self.owner.as_deref()));
                }
            }
            let mut markers = markers.iter();
            let refs = records.into_iter().map(|(store, stamp, entry)| {
                let (key, value, headers) = match entry {
                    EntryRef::Data { key, value } => {
                        let header = &stamps.iter().find(|(s, _)| *s == stamp).expect("noted").1;
                        (key, value, Headers::One(HEADER_STAMP, header))
                    }
                    EntryRef::Flush { .. } | EntryRef::Epoch { .. } => {
                        let (key, headers) = markers.next().expect("noted");
                        (&key[..], None, Headers::List(headers))
                    }
                };
                OutRef {
                    topic: &self.topics[store],
                    partition,
                    key: Some(key),
                    value,
                    headers,
                }
            });
            Ok(self.writer.send(refs).await?)
        })
    }

    fn watermarks(&self, store: usize, partition: i32) -> Result<(i64, i64), StateError> {
        let topic = &self.topics[store];
        let reader = self.reader(topic, partition)?;
        // Under exactly-once the end of a changelog is its last stable offset, once no other
        // producer's transaction is open on it.
        Ok(match self.transactions {
            Some(_) => reader.stable_watermarks(topic, partition)?,
            None => reader.watermarks(topic, partition)?,
        })
    }

    fn read(
        &self,
        store: usize,
        partition: i32,
        from: i64,
        to: i64,
        stop: &dyn Fn() -> bool,
        apply: &mut dyn FnMut(i64, Stamp, Entry) -> Result<(), StateError>,
    ) -> Result<bool, StateError> {
        let topic = &self.topics[store];
        let reader = self.reader(topic, partition)?;
        reader.read(topic, partition, from, to, stop, &mut |msg| {
            let (stamp, entry) = decode(msg)?;
            apply(rdkafka::message::Message::offset(msg), stamp, entry)
        })
    }

    fn verify_source(
        &self,
        topic: &str,
        partition: i32,
        source: &SourcePosition,
    ) -> Result<(), StateError> {
        if source.next <= 0 {
            return Ok(());
        }
        let reader = self.reader(topic, partition)?;
        let (low, high) = reader.watermarks(topic, partition)?;
        let replaced = |found: String| StateError::SourceReplaced {
            topic: topic.to_string(),
            partition,
            state_next: source.next,
            found,
        };
        if source.next > high {
            return Err(replaced(format!("the partition ends at offset {high}")));
        }
        let last = source.next - 1;
        if source.last_timestamp < 0 || last < low {
            return Ok(());
        }
        let mut timestamp = None;
        // A sanity check: a record that cannot be read in time (seen on tansu 0.6, whose
        // fetches of a partition sometimes return nothing for a while) is not a reason to
        // stop the partition; the check is skipped, with a warning.
        let deadline = std::time::Instant::now() + VERIFY_LIMIT;
        let out_of_time = || std::time::Instant::now() >= deadline;
        let read = reader.read(topic, partition, last, last + 1, &out_of_time, &mut |msg| {
            use rdkafka::message::Message;
            if msg.offset() == last {
                timestamp = msg.timestamp().to_millis();
            }
            Ok::<(), StateError>(())
        })?;
        if !read {
            tracing::warn!(%topic, partition, offset = last,
                "the source record before the checkpoint could not be read in time; \
                 not checking whether the source topic was replaced");
        }
        match timestamp {
            Some(ts) if ts != source.last_timestamp => Err(replaced(format!(
                "the record at offset {last} has timestamp {ts}, the state was built from one with {}",
                source.last_timestamp
            ))),
            _ => Ok(()),
        }
    }

    fn append_blocking(
        &self,
        partition: i32,
        records: Vec<(usize, Stamp, EntryRef<'_>)>,
    ) -> Result<Vec<i64>, StateError> {
        let unit = match &self.transactions {
            Some(txn) => Some(
                txn.enter_blocking()
                    .map_err(|failed| StateError::from(super::transaction::aborted(&[], failed)))?,
            ),
            None => None,
        };
        let offsets =
            tokio::runtime::Handle::current().block_on(self.append(partition, records))?;
        if let Some(unit) = unit {
            unit.finish();
        }
        Ok(offsets)
    }
}
