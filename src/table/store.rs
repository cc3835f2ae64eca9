//! A table's local store: a RocksDB column family per table, each table partition's
//! checkpoint (its next offset) in the same atomic batches as the data, and the rules for
//! records that cannot be decoded.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use super::cache::{Cached, ReadCache};
use super::{checkpoint_key, versions, TableSpec};
use crate::state::memory::RocksMemory;
use crate::state::{KeyValues, PartitionDb, StateError};

mod history;
mod reads;
mod sort;

pub(crate) use history::AsOf;
use history::History;
pub(crate) use reads::{TableReads, TableRef};
pub(crate) use sort::sort_out;

/// The tables of one RocksDB: an input partition's co-partitioned tables, or one global
/// table. Reads need no lock (RocksDB is safe to read while it is written).
#[derive(Debug)]
pub(crate) struct TableStore {
    db: PartitionDb,
    tables: Vec<Layout>,
}

/// Where one table lives in its database.
#[derive(Debug)]
struct Layout {
    name: String,
    /// The column family of latest values.
    latest: usize,
    /// A versioned table's history.
    versions: Option<History>,
    /// The latest values in memory (see [`super::cache`]); `None` when sized to nothing.
    cache: Option<ReadCache>,
}

impl Layout {
    fn checkpoint_key(&self, partition: i32) -> String {
        checkpoint_key(&self.name, partition)
    }

    fn newest_key(&self) -> String {
        format!("table/{}/newest", self.name)
    }

    fn oldest_key(&self) -> String {
        format!("table/{}/oldest", self.name)
    }
}

/// A record to apply to a table: key, value (`None`: a tombstone) and timestamp.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'b> {
    pub(crate) key: &'b [u8],
    pub(crate) value: Option<&'b [u8]>,
    /// The record's timestamp (0 when it has none).
    pub(crate) time: i64,
}

impl TableStore {
    /// Opens (creating if needed) the tables' database at `path`, waiting up to `wait` for
    /// this process to release it, with read caches of `cache_bytes` in all. A damaged
    /// database is rebuilt by reading the topics again.
    pub(crate) fn open(
        path: &Path,
        specs: &[TableSpec],
        wait: Duration,
        memory: &RocksMemory,
        cache_bytes: usize,
    ) -> Result<Self, StateError> {
        let mut stores: Vec<_> = specs.iter().map(TableSpec::store_spec).collect();
        let mut tables = Vec::with_capacity(specs.len());
        for (latest, spec) in specs.iter().enumerate() {
            let versions = spec.history.map(|retention| {
                stores.push(spec.versions_spec());
                History {
                    store: stores.len() - 1,
                    retention_ms: i64::try_from(retention.as_millis()).unwrap_or(i64::MAX),
                    newest: AtomicI64::new(i64::MIN),
                    oldest: AtomicI64::new(i64::MAX),
                }
            });
            tables.push(Layout {
                name: spec.name.clone(),
                latest,
                versions,
                cache: ReadCache::new(cache_bytes / specs.len()),
            });
        }
        let db = match PartitionDb::open(path, &stores, wait, memory) {
            // Tables are copies of their topics: one declared with other codecs, or made
            // versioned (or plain), is read again from its topic.
            Err(StateError::FormatMismatch {
                store,
                found,
                expected,
                ..
            }) => {
                tracing::warn!(path = %path.display(), %store, %found, %expected,
                    "a table's declaration changed: reading its topic again");
                std::fs::remove_dir_all(path).map_err(|source| StateError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
                PartitionDb::open(path, &stores, wait, memory)?
            }
            opened => opened?,
        };
        for table in &tables {
            if let Some(history) = &table.versions {
                if let Some(bytes) = db.meta(&table.newest_key())? {
                    let newest = read_i64(&db, &table.newest_key(), bytes)?;
                    history.newest.store(newest, Ordering::Relaxed);
                    let oldest = match db.meta(&table.oldest_key())? {
                        Some(bytes) => read_i64(&db, &table.oldest_key(), bytes)?,
                        None => i64::MIN,
                    };
                    history.oldest.store(oldest, Ordering::Relaxed);
                }
            }
        }
        Ok(Self { db, tables })
    }

    pub(crate) fn path(&self) -> &Path {
        self.db.path()
    }

    /// The next offset of `table`'s `partition` to apply: 0 when it has none.
    pub(crate) fn checkpoint(&self, table: usize, partition: i32) -> Result<i64, StateError> {
        let key = self.tables[table].checkpoint_key(partition);
        match self.db.meta(&key)? {
            None => Ok(0),
            Some(bytes) => read_i64(&self.db, &key, bytes),
        }
    }

    /// Writes `entries` of `table` (and their versions, if it keeps them) with the
    /// partition's new checkpoint `next`, atomically; without the write-ahead log unless
    /// `logged` (a bootstrap syncs once at its end).
    pub(crate) fn write(
        &self,
        table: usize,
        partition: i32,
        entries: &[Entry<'_>],
        next: i64,
        logged: bool,
    ) -> Result<(), StateError> {
        let layout = &self.tables[table];
        let mut meta = vec![(
            layout.checkpoint_key(partition),
            next.to_be_bytes().to_vec(),
        )];
        // RocksDB's memtable inserts keys in order faster (see `state::restore`); the sort is
        // stable, so of two records of one key the later stays later.
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_by(|&a, &b| entries[a].key.cmp(entries[b].key));
        let mut newest = None;
        let (heads, versions) = match &layout.versions {
            None => (Vec::new(), Vec::new()),
            Some(history) => {
                let top = entries
                    .iter()
                    .map(|e| e.time)
                    .fold(history.newest.load(Ordering::Relaxed), i64::max);
                let bottom = entries
                    .iter()
                    .map(|e| e.time)
                    .fold(history.oldest.load(Ordering::Relaxed), i64::min);
                newest = Some((top, bottom));
                meta.push((layout.newest_key(), top.to_be_bytes().to_vec()));
                meta.push((layout.oldest_key(), bottom.to_be_bytes().to_vec()));
                let horizon = top.saturating_sub(history.retention_ms);
                let nothing_to_prune = horizon < bottom;
                self.version_writes(
                    layout,
                    history.store,
                    &order,
                    entries,
                    horizon,
                    nothing_to_prune,
                )?
            }
        };
        // A versioned table's latest values are its heads (see `versions`).
        let latest: Vec<_> = match layout.versions {
            None => order
                .iter()
                .map(|&i| (entries[i].key, entries[i].value))
                .collect(),
            Some(_) => heads
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_deref()))
                .collect(),
        };
        let mut stores = vec![(layout.latest, latest)];
        if let Some(history) = &layout.versions {
            let refs = versions
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_deref()))
                .collect();
            stores.push((history.store, refs));
        }
        let meta: Vec<(&str, Vec<u8>)> =
            meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        self.db.write_stores(&stores, &meta, logged)?;
        if let Some(cache) = &layout.cache {
            if cache.written(stores[0].1.iter().copied()) {
                tracing::warn!(
                    table = %layout.name,
                    path = %self.path().display(),
                    "the table's read cache is full: a lookup of a row left out is a RocksDB \
                     point read (slower joins); a larger memory_budget holds the table in memory"
                );
            }
        }
        if let (Some(history), Some((top, bottom))) = (&layout.versions, newest) {
            // Lookups see the new horizon only once the versions it prunes are gone.
            history.newest.fetch_max(top, Ordering::Relaxed);
            history.oldest.fetch_min(bottom, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Latest values whose key starts with `prefix` (a versioned table's heads decoded, its
    /// deleted keys left out).
    fn prefix(&self, table: usize, prefix: &[u8]) -> Result<KeyValues, StateError> {
        let layout = &self.tables[table];
        let entries = self.db.prefix(layout.latest, prefix)?;
        Ok(match layout.versions {
            None => entries,
            Some(_) => entries
                .into_iter()
                .filter_map(|(k, head)| {
                    let value = versions::decode(versions::decode_head(&head)?.1)?.to_vec();
                    Some((k, value))
                })
                .collect(),
        })
    }

    /// Writes the memtables to SST files (after a bootstrap).
    pub(crate) fn flush_memtables(&self) -> Result<(), StateError> {
        self.db.sync()
    }

    /// Closes the database and deletes it (a table topic recreated under it).
    pub(crate) fn destroy(self) -> Result<(), StateError> {
        self.db.destroy()
    }

    /// `f` of `key`'s latest value: applied last, or on a versioned table the version with
    /// the highest timestamp.
    pub(crate) fn get_with<T>(
        &self,
        table: usize,
        key: &[u8],
        f: impl FnOnce(&[u8]) -> T,
    ) -> Result<Option<T>, StateError> {
        let layout = &self.tables[table];
        let latest = self.latest(table, key)?;
        let Some(latest) = latest.as_deref() else {
            return Ok(None);
        };
        Ok(match layout.versions {
            None => Some(f(latest)),
            Some(_) => versions::decode_head(latest)
                .and_then(|(_, stored)| versions::decode(stored))
                .map(f),
        })
    }

    /// The bytes of `key` in `table`'s latest-value column family (a versioned table's
    /// head), through the table's read cache.
    fn latest(&self, table: usize, key: &[u8]) -> Result<Cached, StateError> {
        let layout = &self.tables[table];
        match &layout.cache {
            Some(cache) => cache.get_or_read(key, || self.db.get(layout.latest, key)),
            None => Ok(Cached::of(self.db.get(layout.latest, key)?.as_deref())),
        }
    }

    /// Every entry of a table, in key order (the test driver reads tables back).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn entries(&self, table: usize) -> Result<KeyValues, StateError> {
        self.prefix(table, b"")
    }
}

fn read_i64(db: &PartitionDb, key: &str, bytes: Vec<u8>) -> Result<i64, StateError> {
    bytes
        .try_into()
        .map(i64::from_be_bytes)
        .map_err(|_| StateError::CorruptMetadata {
            path: db.path().to_path_buf(),
            reason: format!("{key} is not 8 bytes"),
        })
}
