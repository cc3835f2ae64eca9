//! A table's local store: a RocksDB column family per table, each table partition's
//! checkpoint (its next offset) in the same atomic batches as the data, and the rules for
//! records that cannot be decoded.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{checkpoint_key, TableError, TableSpec};
use crate::batch::RecordBatch;
use crate::changelog::OutRecord;
use crate::codec::CodecError;
use crate::config::ErrorPolicy;
use crate::state::memory::RocksMemory;
use crate::state::{KeyValues, PartitionDb, StateError};

/// The tables of one RocksDB: an input partition's co-partitioned tables, or one global
/// table. Reads need no lock (RocksDB is safe to read while it is written).
#[derive(Debug)]
pub(crate) struct TableStore {
    db: PartitionDb,
    names: Vec<String>,
}

impl TableStore {
    /// Opens (creating if needed) the tables' database at `path`, waiting up to `wait` for
    /// this process to release it. A damaged database is rebuilt by reading the topics again.
    pub(crate) fn open(
        path: &Path,
        specs: &[TableSpec],
        wait: Duration,
        memory: &RocksMemory,
    ) -> Result<Self, StateError> {
        let stores: Vec<_> = specs.iter().map(TableSpec::store_spec).collect();
        Ok(Self {
            db: PartitionDb::open(path, &stores, wait, memory)?,
            names: specs.iter().map(|s| s.name.clone()).collect(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        self.db.path()
    }

    /// The next offset of `table`'s `partition` to apply: 0 when it has none.
    pub(crate) fn checkpoint(&self, table: usize, partition: i32) -> Result<i64, StateError> {
        let key = checkpoint_key(&self.names[table], partition);
        match self.db.meta(&key)? {
            None => Ok(0),
            Some(bytes) => {
                bytes
                    .try_into()
                    .map(i64::from_be_bytes)
                    .map_err(|_| StateError::CorruptMetadata {
                        path: self.db.path().to_path_buf(),
                        reason: format!("checkpoint {key} is not 8 bytes"),
                    })
            }
        }
    }

    /// Writes `entries` of `table` with the partition's new checkpoint `next`, atomically;
    /// without the write-ahead log unless `logged` (a bootstrap syncs once at its end).
    pub(crate) fn write(
        &self,
        table: usize,
        partition: i32,
        entries: &[(&[u8], Option<&[u8]>)],
        next: i64,
        logged: bool,
    ) -> Result<(), StateError> {
        let key = checkpoint_key(&self.names[table], partition);
        // RocksDB's memtable inserts keys in order faster (see `state::restore`); the sort is
        // stable, so of two records of one key the later stays later.
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_by(|&a, &b| entries[a].0.cmp(entries[b].0));
        self.db.write_entries(
            table,
            order.iter().map(|&i| entries[i]),
            &[(key.as_str(), next.to_be_bytes().to_vec())],
            logged,
        )
    }

    /// Closes the database and deletes it (a table topic recreated under it).
    pub(crate) fn destroy(self) -> Result<(), StateError> {
        self.db.destroy()
    }

    pub(crate) fn get_with<T>(
        &self,
        table: usize,
        key: &[u8],
        f: impl FnOnce(&[u8]) -> T,
    ) -> Result<Option<T>, StateError> {
        self.db.get_with(table, key, f)
    }

    /// Every entry of a table, in key order (the test driver reads tables back).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn entries(&self, table: usize) -> Result<KeyValues, StateError> {
        self.db.prefix(table, b"")
    }
}

/// What applying a run of table records comes to.
pub(crate) struct Sorted<'b> {
    /// Entries to write (`None`: a tombstone).
    pub(crate) entries: Vec<(&'b [u8], Option<&'b [u8]>)>,
    /// Bad records to produce to the dead-letter topic before the checkpoint passes them.
    pub(crate) dead_letters: Vec<OutRecord>,
    /// Bad records left out under `Skip`.
    pub(crate) skipped: u64,
    /// The checkpoint after the run (the first bad record's offset under `Fail`).
    pub(crate) next: i64,
    /// A bad record under `Fail`: the table stops before it.
    pub(crate) failed: Option<TableError>,
}

/// Sorts the records `batch.records[from..to]` of `spec`'s `partition` into entries to write
/// and bad records, as `policy` says.
pub(crate) fn sort_out<'b>(
    spec: &TableSpec,
    partition: i32,
    batch: &'b RecordBatch,
    range: std::ops::Range<usize>,
    policy: &ErrorPolicy,
) -> Sorted<'b> {
    let mut sorted = Sorted {
        entries: Vec::with_capacity(range.len()),
        dead_letters: Vec::new(),
        skipped: 0,
        next: -1,
        failed: None,
    };
    for r in &batch.records[range] {
        let (key, value) = (batch.key(r), batch.value(r));
        let checked = match key {
            None => Err(CodecError::new("table", "record without a key")),
            Some(_) => {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (spec.check)(key, value)))
                    .unwrap_or_else(|_| Err(CodecError::new("table", "codec panicked")))
            }
        };
        match (checked, policy) {
            (Ok(()), _) => sorted.entries.push((key.unwrap_or_default(), value)),
            (Err(source), ErrorPolicy::Fail) => {
                sorted.next = r.offset;
                sorted.failed = Some(TableError::BadRecord {
                    topic: spec.topic.clone(),
                    partition,
                    offset: r.offset,
                    source,
                });
                return sorted;
            }
            (Err(error), ErrorPolicy::Skip) => {
                tracing::warn!(table = %spec.name, topic = %spec.topic, partition, offset = r.offset,
                    %error, "skipping a table record that cannot be decoded");
                sorted.skipped += 1;
            }
            (Err(error), ErrorPolicy::DeadLetter(dlq)) => {
                tracing::warn!(table = %spec.name, topic = %spec.topic, partition, offset = r.offset,
                    dead_letter_topic = %dlq, %error, "dead-lettering a table record that cannot be decoded");
                sorted.dead_letters.push(batch.dead_letter(
                    r,
                    dlq,
                    (&spec.topic, partition),
                    "decode",
                    &error.to_string(),
                ));
            }
        }
        sorted.next = r.offset + 1;
    }
    sorted
}

/// The tables a handler can read: its input partition's co-partitioned tables and the
/// global ones. Shared with the worker that applies the co-partitioned ones.
#[derive(Debug, Clone, Default)]
pub(crate) struct TableReads {
    pub(crate) partition: Option<Arc<TableStore>>,
    pub(crate) global: Vec<(String, Arc<TableStore>)>,
}

/// One table of a [`TableReads`].
pub(crate) struct TableRef<'a> {
    store: &'a TableStore,
    index: usize,
}

impl TableReads {
    pub(crate) fn find(&self, name: &str) -> Option<TableRef<'_>> {
        if let Some(store) = &self.partition {
            if let Some(index) = store.names.iter().position(|n| n == name) {
                return Some(TableRef { store, index });
            }
        }
        self.global
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, store)| TableRef { store, index: 0 })
    }
}

impl TableRef<'_> {
    pub(crate) fn get_with<T>(
        &self,
        key: &[u8],
        f: impl FnOnce(&[u8]) -> T,
    ) -> Result<Option<T>, TableError> {
        Ok(self.store.get_with(self.index, key, f)?)
    }

    pub(crate) fn prefix(&self, prefix: &[u8]) -> Result<KeyValues, TableError> {
        Ok(self.store.db.prefix(self.index, prefix)?)
    }
}
