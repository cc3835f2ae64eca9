//! Where a partition's changelogs live, seen from the state layer: stamped entries written
//! and read back by store index. Kafka in production
//! ([`KafkaStateLog`](crate::changelog::KafkaStateLog)); memory in the broker-free test
//! driver and in unit tests ([`MemoryLog`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use super::checkpoint::SourcePosition;
use super::replay::{Entry, Stamp};
use super::restore::ChangelogPartition;
use super::StateError;

/// A boxed future of the log's appends.
pub(crate) type Appended<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<i64>, StateError>> + Send + 'a>>;

/// A changelog entry to write, borrowed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum EntryRef<'a> {
    Data {
        key: &'a [u8],
        value: Option<&'a [u8]>,
    },
    Flush {
        source: &'a SourcePosition,
        touched: &'a [String],
    },
    Epoch {
        source: &'a SourcePosition,
    },
}

impl EntryRef<'_> {
    pub(crate) fn to_owned(self) -> Entry {
        match self {
            EntryRef::Data { key, value } => Entry::Data {
                key: key.to_vec(),
                value: value.map(<[u8]>::to_vec),
            },
            EntryRef::Flush { source, touched } => Entry::Flush {
                source: source.clone(),
                touched: touched.to_vec(),
            },
            EntryRef::Epoch { source } => Entry::Epoch {
                source: source.clone(),
            },
        }
    }
}

/// The changelogs of every store of a consumer (one per store), all partitions.
pub(crate) trait StateLog: Send + Sync + std::fmt::Debug + 'static {
    /// Writes `records` (store index, stamp, entry) to `partition` of their stores'
    /// changelogs, in order, and waits until every one is acknowledged; returns their
    /// offsets in input order.
    fn append<'a>(
        &'a self,
        partition: i32,
        records: Vec<(usize, Stamp, EntryRef<'a>)>,
    ) -> Appended<'a>;

    /// Low and high watermark of a store's changelog partition. Blocking.
    fn watermarks(&self, store: usize, partition: i32) -> Result<(i64, i64), StateError>;

    /// Calls `apply` with every record in `[from, to)` of a store's changelog partition, in
    /// order (records removed by compaction are skipped). `Ok(false)`: `stop` said to stop.
    /// Blocking.
    fn read(
        &self,
        store: usize,
        partition: i32,
        from: i64,
        to: i64,
        stop: &dyn Fn() -> bool,
        apply: &mut dyn FnMut(i64, Stamp, Entry) -> Result<(), StateError>,
    ) -> Result<bool, StateError>;

    /// Checks that the source partition still holds the record before `source.next` with
    /// its timestamp (see [`StateError::SourceReplaced`]). Blocking.
    fn verify_source(
        &self,
        topic: &str,
        partition: i32,
        source: &SourcePosition,
    ) -> Result<(), StateError>;

    /// Waits for an append from a blocking thread.
    fn append_blocking(
        &self,
        partition: i32,
        records: Vec<(usize, Stamp, EntryRef<'_>)>,
    ) -> Result<Vec<i64>, StateError>;
}

/// One partition of a [`StateLog`], as restore reads and writes it.
pub(crate) struct LogPartition<'a> {
    pub(crate) log: &'a dyn StateLog,
    pub(crate) partition: i32,
    pub(crate) stop: &'a dyn Fn() -> bool,
}

impl ChangelogPartition for LogPartition<'_> {
    fn watermarks(&mut self, store: usize) -> Result<(i64, i64), StateError> {
        self.log.watermarks(store, self.partition)
    }

    fn read(
        &mut self,
        store: usize,
        from: i64,
        to: i64,
        apply: &mut dyn FnMut(i64, Stamp, Entry) -> Result<(), StateError>,
    ) -> Result<bool, StateError> {
        self.log
            .read(store, self.partition, from, to, self.stop, apply)
    }

    fn append(&mut self, records: Vec<(usize, Stamp, Entry)>) -> Result<Vec<i64>, StateError> {
        let refs = records
            .iter()
            .map(|(store, stamp, entry)| (*store, *stamp, entry_ref(entry)))
            .collect();
        self.log.append_blocking(self.partition, refs)
    }
}

/// The borrowed form of an owned entry.
pub(crate) fn entry_ref(entry: &Entry) -> EntryRef<'_> {
    match entry {
        Entry::Data { key, value } => EntryRef::Data {
            key,
            value: value.as_deref(),
        },
        Entry::Flush { source, touched } => EntryRef::Flush { source, touched },
        Entry::Epoch { source } => EntryRef::Epoch { source },
    }
}

/// Changelogs in memory: for the broker-free test driver and unit tests. Cheap to clone
/// (shared), so a test can "restart" a partition on the same log.
#[derive(Debug, Clone, Default)]
pub struct MemoryLog {
    logs: Arc<Mutex<Logs>>,
}

/// Records by store index and partition.
type Logs = HashMap<(usize, i32), Vec<(Stamp, Entry)>>;

impl MemoryLog {
    fn with<T>(&self, f: impl FnOnce(&mut Logs) -> T) -> T {
        f(&mut self.logs.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Records in a store's changelog partition (markers included).
    pub fn len(&self, store: usize, partition: i32) -> usize {
        self.with(|logs| logs.get(&(store, partition)).map_or(0, Vec::len))
    }

    /// Whether a store's changelog partition is empty.
    pub fn is_empty(&self, store: usize, partition: i32) -> bool {
        self.len(store, partition) == 0
    }

    /// The source position of the last flush marker in a store's changelog partition: what
    /// the last flush whose marker landed covers.
    #[cfg(test)]
    pub(crate) fn last_flush(&self, store: usize, partition: i32) -> Option<SourcePosition> {
        self.with(|logs| {
            logs.get(&(store, partition))?
                .iter()
                .rev()
                .find_map(|(_, e)| match e {
                    Entry::Flush { source, .. } => Some(source.clone()),
                    _ => None,
                })
        })
    }

    /// The data records of a store's changelog partition: key and value (`None`: a
    /// tombstone), in log order.
    pub fn data(&self, store: usize, partition: i32) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.with(|logs| {
            logs.get(&(store, partition))
                .into_iter()
                .flatten()
                .filter_map(|(_, e)| match e {
                    Entry::Data { key, value } => Some((key.clone(), value.clone())),
                    _ => None,
                })
                .collect()
        })
    }

    fn push(&self, partition: i32, records: Vec<(usize, Stamp, EntryRef<'_>)>) -> Vec<i64> {
        self.with(|logs| {
            records
                .into_iter()
                .map(|(store, stamp, entry)| {
                    let log = logs.entry((store, partition)).or_default();
                    log.push((stamp, entry.to_owned()));
                    log.len() as i64 - 1
                })
                .collect()
        })
    }
}

impl StateLog for MemoryLog {
    fn append<'a>(
        &'a self,
        partition: i32,
        records: Vec<(usize, Stamp, EntryRef<'a>)>,
    ) -> Appended<'a> {
        let offsets = self.push(partition, records);
        Box::pin(async move { Ok(offsets) })
    }

    fn watermarks(&self, store: usize, partition: i32) -> Result<(i64, i64), StateError> {
        Ok((0, self.len(store, partition) as i64))
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
        let records: Vec<(i64, Stamp, Entry)> = self.with(|logs| {
            logs.get(&(store, partition))
                .into_iter()
                .flatten()
                .enumerate()
                .skip(from.max(0) as usize)
                .take((to - from).max(0) as usize)
                .map(|(o, (s, e))| (o as i64, *s, e.clone()))
                .collect()
        });
        for (offset, stamp, entry) in records {
            if stop() {
                return Ok(false);
            }
            apply(offset, stamp, entry)?;
        }
        Ok(true)
    }

    fn verify_source(&self, _: &str, _: i32, _: &SourcePosition) -> Result<(), StateError> {
        Ok(())
    }

    fn append_blocking(
        &self,
        partition: i32,
        records: Vec<(usize, Stamp, EntryRef<'_>)>,
    ) -> Result<Vec<i64>, StateError> {
        Ok(self.push(partition, records))
    }
}
