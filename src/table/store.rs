//! A table's local store: a RocksDB column family per table, each table partition's
//! checkpoint (its next offset) in the same atomic batches as the data, and the rules for
//! records that cannot be decoded.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::cache::{Cached, ReadCache};
use super::{checkpoint_key, versions, TableError, TableSpec};
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

/// A versioned table's column family of versions ([`super::versions`]).
#[derive(Debug)]
struct History {
    store: usize,
    retention_ms: i64,
    /// The newest timestamp written (`i64::MIN`: none), persisted with each batch.
    newest: AtomicI64,
    /// A bound at or below every version's timestamp (`i64::MAX`: none written; `i64::MIN`:
    /// unknown, a store from before it was kept), persisted with each batch. While the
    /// horizon stays below it, nothing can be pruned.
    oldest: AtomicI64,
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

/// A stored version: its time and value (`None`: a tombstone).
#[cfg(test)]
type Version = (i64, Option<Vec<u8>>);

/// A version key to write, with its stored bytes (`None`: delete it).
type VersionWrite = (Vec<u8>, Option<Vec<u8>>);

/// A record to apply to a table: key, value (`None`: a tombstone) and timestamp.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'b> {
    pub(crate) key: &'b [u8],
    pub(crate) value: Option<&'b [u8]>,
    /// The record's timestamp (0 when it has none).
    pub(crate) time: i64,
}

/// What an as-of lookup found.
pub(crate) enum AsOf<T> {
    /// The version at or before the time (`None`: absent or deleted then).
    Found(Option<T>),
    /// The time is before the history the table keeps: `oldest` is the earliest time it
    /// answers for.
    TooOld { oldest: i64 },
    /// The table keeps no versions.
    NotVersioned,
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
            cache.written(stores[0].1.iter().copied());
        }
        if let (Some(history), Some((top, bottom))) = (&layout.versions, newest) {
            // Lookups see the new horizon only once the versions it prunes are gone.
            history.newest.fetch_max(top, Ordering::Relaxed);
            history.oldest.fetch_min(bottom, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The version puts and deletes for `entries` (visited in key order, `order`): each
    /// written key's versions, old and new, pruned to what lookups from `horizon` on need.
    /// When `nothing_to_prune` (every version, stored or new, is after the horizon), a key
    /// whose new versions all come after its newest one needs no read of its history: they
    /// are added and its head moves.
    fn version_writes(
        &self,
        layout: &Layout,
        store: usize,
        order: &[usize],
        entries: &[Entry<'_>],
        horizon: i64,
        nothing_to_prune: bool,
    ) -> Result<(Vec<VersionWrite>, Vec<VersionWrite>), StateError> {
        let mut writes = Vec::with_capacity(order.len());
        let mut heads = Vec::new();
        let mut i = 0;
        while i < order.len() {
            let key = entries[order[i]].key;
            let run = order[i..]
                .iter()
                .take_while(|&&j| entries[j].key == key)
                .count();
            // time → the version's bytes, whether RocksDB holds that time, and whether
            // this batch writes it (the later record of one time wins).
            let mut by_time: BTreeMap<i64, (Vec<u8>, bool, bool)> = BTreeMap::new();
            // A key without a head has no versions (the newest is never pruned): a
            // bootstrap's first write of each key skips the history seek (an iterator per
            // key, most of a versioned bootstrap's cost), as does a key only appended to.
            let first_new = order[i..i + run]
                .iter()
                .map(|&j| entries[j].time)
                .min()
                .unwrap_or(i64::MIN);
            let appended = |newest: i64| nothing_to_prune && newest < first_new;
            if self
                .head_time(layout, key)?
                .is_some_and(|newest| !appended(newest))
            {
                for (k, v) in self.db.prefix(store, &versions::prefix(key))? {
                    if let Some(t) = versions::time_of(&k) {
                        by_time.insert(t, (v, true, false));
                    }
                }
            }
            for &j in &order[i..i + run] {
                let e = entries[j];
                let time = e.time;
                let in_db = by_time.get(&time).is_some_and(|v| v.1);
                by_time.insert(time, (versions::encode(e.value), in_db, true));
            }
            // The newest version changed: the head follows (see `versions`).
            if let Some((&time, (bytes, _, true))) = by_time.last_key_value() {
                heads.push((key.to_vec(), Some(versions::encode_head(time, bytes))));
            }
            let times: Vec<(i64, bool)> = by_time
                .iter()
                .map(|(&t, (v, _, _))| (t, versions::decode(v).is_none()))
                .collect();
            let kept = versions::first_kept(&times, horizon);
            for (n, (time, (bytes, in_db, written))) in by_time.into_iter().enumerate() {
                if n < kept && in_db {
                    writes.push((versions::key(key, time), None));
                } else if n >= kept && written {
                    writes.push((versions::key(key, time), Some(bytes)));
                }
            }
            i += run;
        }
        Ok((heads, writes))
    }

    /// The time of `key`'s newest version, from its head (without caching the answer).
    fn head_time(&self, layout: &Layout, key: &[u8]) -> Result<Option<i64>, StateError> {
        let time = |head: &[u8]| versions::decode_head(head).map_or(i64::MAX, |(t, _)| t);
        if let Some(cached) = layout.cache.as_ref().and_then(|c| c.peek(key)) {
            return Ok(cached.as_deref().map(time));
        }
        self.db.get_with(layout.latest, key, time)
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
        let Some(latest) = self.latest(table, key)? else {
            return Ok(None);
        };
        Ok(match layout.versions {
            None => Some(f(&latest)),
            Some(_) => versions::decode_head(&latest)
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
            None => Ok(self.db.get(layout.latest, key)?.map(Arc::from)),
        }
    }

    /// `f` of the value `key` had at `time` in a versioned table.
    pub(crate) fn as_of_with<T>(
        &self,
        table: usize,
        key: &[u8],
        time: i64,
        f: impl Fn(&[u8]) -> T,
    ) -> Result<AsOf<T>, StateError> {
        let Some(history) = &self.tables[table].versions else {
            return Ok(AsOf::NotVersioned);
        };
        let newest = history.newest.load(Ordering::Relaxed);
        if newest != i64::MIN {
            let oldest = newest.saturating_sub(history.retention_ms);
            if time < oldest {
                return Ok(AsOf::TooOld { oldest });
            }
        }
        // The head answers for times at or after the key's newest version (and says when a
        // key has no version at all); earlier times seek.
        let head = self
            .latest(table, key)?
            .map(|head| match versions::decode_head(&head) {
                Some((newest, stored)) if newest <= time => Ok(versions::decode(stored).map(&f)),
                _ => Err(()),
            });
        let found = match head {
            None => None,
            Some(Ok(found)) => found,
            Some(Err(())) => self
                .db
                .last_at_or_before_with(
                    history.store,
                    &versions::prefix(key),
                    &versions::key(key, time),
                    |stored| versions::decode(stored).map(&f),
                )?
                .flatten(),
        };
        Ok(AsOf::Found(found))
    }

    /// Every entry of a table, in key order (the test driver reads tables back).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn entries(&self, table: usize) -> Result<KeyValues, StateError> {
        self.prefix(table, b"")
    }

    /// The stored versions of a versioned table's `key`: `(time, value)` in time order.
    #[cfg(test)]
    pub(crate) fn versions_of(&self, table: usize, key: &[u8]) -> Result<Vec<Version>, StateError> {
        let Some(history) = &self.tables[table].versions else {
            return Ok(Vec::new());
        };
        Ok(self
            .db
            .prefix(history.store, &versions::prefix(key))?
            .into_iter()
            .filter_map(|(k, v)| {
                Some((
                    versions::time_of(&k)?,
                    versions::decode(&v).map(<[u8]>::to_vec),
                ))
            })
            .collect())
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

/// What applying a run of table records comes to.
pub(crate) struct Sorted<'b> {
    /// Entries to write (`None`: a tombstone).
    pub(crate) entries: Vec<Entry<'b>>,
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
            (Ok(()), _) => sorted.entries.push(Entry {
                key: key.unwrap_or_default(),
                value,
                time: r.timestamp.unwrap_or(0),
            }),
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
            if let Some(index) = store.tables.iter().position(|t| t.name == name) {
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

    pub(crate) fn as_of_with<T>(
        &self,
        key: &[u8],
        time: i64,
        f: impl Fn(&[u8]) -> T,
    ) -> Result<AsOf<T>, TableError> {
        Ok(self.store.as_of_with(self.index, key, time, f)?)
    }

    pub(crate) fn prefix(&self, prefix: &[u8]) -> Result<KeyValues, TableError> {
        Ok(self.store.prefix(self.index, prefix)?)
    }
}
