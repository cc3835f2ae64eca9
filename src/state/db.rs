//! One RocksDB per assigned partition: a column family per store and one for metadata
//! (each store's format and checkpoint), written together in atomic batches.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::checkpoint::StoreCheckpoint;
use super::memory::RocksMemory;
use super::{KeyValues, StateError, StoreSpec};
use rocksdb::{ColumnFamilyDescriptor, ErrorKind, IteratorMode, WriteBatch, WriteOptions, DB};

const META_CF: &str = "kafka-stateful.meta";

fn store_cf(name: &str) -> String {
    format!("store.{name}")
}

/// A store's entries to write, borrowed (`None` deletes).
pub(crate) type StoreWrites<'a> = (usize, Vec<(&'a [u8], Option<&'a [u8]>)>);

/// Writes to apply atomically: store entries (`None` deletes) and checkpoints.
#[derive(Debug, Default)]
pub(crate) struct StateBatch {
    pub(crate) entries: Vec<(usize, Vec<u8>, Option<Vec<u8>>)>,
    pub(crate) checkpoints: Vec<(usize, StoreCheckpoint)>,
}

/// State directories open in this process. RocksDB's lock cannot tell an aborted worker of
/// this process that has not closed its database yet from another process; this can.
static OPEN_HERE: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

fn open_here() -> std::sync::MutexGuard<'static, Option<HashSet<PathBuf>>> {
    OPEN_HERE.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct PartitionDb {
    db: DB,
    path: PathBuf,
    stores: Vec<String>,
    /// Per store: a window store's closing rule and the windows already deleted.
    windows: Vec<Option<ClosedWindows>>,
    /// The options of every point read, made once: `get_cf` would allocate and free a
    /// RocksDB `ReadOptions` per read (1.3% of the CPU of a job whose reads all miss).
    point_read: rocksdb::ReadOptions,
    /// Declared after `db`: fields drop in order, so the path leaves the registry only once
    /// RocksDB has released its lock.
    _registration: Registration,
}

/// The windows of a window store that are closed, deleted by range when a checkpoint
/// carries the stream time past them. A window starting at `start` is closed once stream
/// time reaches `start + span` (`span` = size + grace).
#[derive(Debug)]
struct ClosedWindows {
    span: i64,
    /// Window starts below this were deleted by this process (`i64::MIN`: none yet).
    deleted_below: AtomicI64,
}

impl ClosedWindows {
    /// The first window start still open at `stream_time`, if it is past what was deleted.
    fn next_bound(&self, stream_time: i64) -> Option<i64> {
        if stream_time < 0 {
            return None;
        }
        let bound = stream_time.saturating_sub(self.span).saturating_add(1);
        (bound > self.deleted_below.load(Ordering::Relaxed)).then_some(bound)
    }
}

/// An atomic batch being built, and the windows its checkpoints close (deleted last by
/// [`PartitionDb::commit`]).
struct Pending {
    wb: WriteBatch,
    closing: Vec<(usize, i64)>,
}

/// A path's entry in [`OPEN_HERE`], removed on drop.
struct Registration(PathBuf);

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(set) = open_here().as_mut() {
            set.remove(&self.0);
        }
    }
}

impl std::fmt::Debug for PartitionDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionDb")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn is_lock_error(error: &rocksdb::Error) -> bool {
    // RocksDB says "IO error: While lock file: <dir>/LOCK: Resource temporarily unavailable"
    // for another process, and "IO error: lock hold by current process, ...: <dir>/LOCK: No
    // locks available" for this one. (Matching on "lock" alone would also match "block".)
    let message = error.to_string();
    error.kind() == ErrorKind::IOError
        && (message.contains("While lock file") || message.contains("lock hold by current process"))
}

/// Whether the database files themselves are damaged or unreadable (as opposed to the
/// file system failing): then the directory is rebuilt from the changelog.
fn is_damaged(error: &rocksdb::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Corruption | ErrorKind::InvalidArgument | ErrorKind::NotSupported
    )
}

impl PartitionDb {
    /// Opens (creating if needed) the database at `path` and checks each store's format.
    ///
    /// A database this process still has open (a worker of the same partition that was
    /// aborted and has not closed it yet) is waited for, up to `wait`. A damaged database is
    /// deleted, with a warning, and an empty one is created: the changelog rebuilds it.
    ///
    /// # Errors
    /// [`StateError::Locked`] when another process has it open (or this one still has after
    /// `wait`); [`StateError::FormatMismatch`] when a store was written with other codecs.
    pub(crate) fn open(
        path: &Path,
        specs: &[StoreSpec],
        wait: Duration,
        memory: &RocksMemory,
    ) -> Result<Self, StateError> {
        let deadline = Instant::now() + wait;
        loop {
            match Self::open_once(path, specs, memory) {
                Err(StateError::Locked { .. })
                    if open_here().as_ref().is_some_and(|s| s.contains(path))
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(StateError::Damaged { reason, .. }) => {
                    tracing::warn!(path = %path.display(), %reason,
                        "local state is damaged: deleting it; the changelog rebuilds it");
                    std::fs::remove_dir_all(path).map_err(|source| StateError::Io {
                        path: path.to_path_buf(),
                        source,
                    })?;
                    return Self::open_once(path, specs, memory);
                }
                other => return other,
            }
        }
    }

    fn open_once(
        path: &Path,
        specs: &[StoreSpec],
        memory: &RocksMemory,
    ) -> Result<Self, StateError> {
        std::fs::create_dir_all(path).map_err(|source| StateError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let opts = memory.database();
        // Column families of stores no longer declared must be opened too, or RocksDB refuses.
        let mut cfs: Vec<String> = DB::list_cf(&opts, path).unwrap_or_default();
        for name in
            std::iter::once(META_CF.to_string()).chain(specs.iter().map(|s| store_cf(&s.name)))
        {
            if !cfs.contains(&name) {
                cfs.push(name);
            }
        }
        let descriptors = cfs
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(name, memory.column_family()));
        let db = DB::open_cf_descriptors(&opts, path, descriptors).map_err(|source| {
            if is_lock_error(&source) {
                StateError::Locked {
                    path: path.to_path_buf(),
                    reason: source.to_string(),
                }
            } else if is_damaged(&source) {
                StateError::Damaged {
                    path: path.to_path_buf(),
                    reason: source.to_string(),
                }
            } else {
                StateError::Db {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        open_here()
            .get_or_insert_with(HashSet::new)
            .insert(path.to_path_buf());
        let this = Self {
            db,
            path: path.to_path_buf(),
            stores: specs.iter().map(|s| store_cf(&s.name)).collect(),
            windows: specs
                .iter()
                .map(|s| {
                    s.window_span().map(|span| ClosedWindows {
                        span,
                        deleted_below: AtomicI64::new(i64::MIN),
                    })
                })
                .collect(),
            point_read: rocksdb::ReadOptions::default(),
            _registration: Registration(path.to_path_buf()),
        };
        this.check_formats(specs)?;
        for store in 0..specs.len() {
            if let Err(StateError::CorruptMetadata { reason, .. }) = this.checkpoint(store) {
                return Err(StateError::Damaged {
                    path: path.to_path_buf(),
                    reason,
                });
            }
        }
        Ok(this)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StateError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StateError::CorruptMetadata {
                path: self.path.clone(),
                reason: format!("column family {name} is missing"),
            })
    }

    fn db_err(&self) -> impl Fn(rocksdb::Error) -> StateError + '_ {
        move |source| StateError::Db {
            path: self.path.clone(),
            source,
        }
    }

    fn check_formats(&self, specs: &[StoreSpec]) -> Result<(), StateError> {
        let meta = self.cf(META_CF)?;
        for spec in specs {
            let key = format!("format/{}", spec.name);
            match self.db.get_cf(meta, &key).map_err(self.db_err())? {
                Some(found) if found != spec.format.as_bytes() => {
                    return Err(StateError::FormatMismatch {
                        store: spec.name.clone(),
                        path: self.path.clone(),
                        found: String::from_utf8_lossy(&found).into_owned(),
                        expected: spec.format.clone(),
                    })
                }
                Some(_) => {}
                None => self
                    .db
                    .put_cf(meta, &key, spec.format.as_bytes())
                    .map_err(self.db_err())?,
            }
        }
        Ok(())
    }

    /// The store's checkpoint; [`StoreCheckpoint::EMPTY`] when it has none.
    pub(crate) fn checkpoint(&self, store: usize) -> Result<StoreCheckpoint, StateError> {
        let key = format!("checkpoint/{}", self.stores[store]);
        match self
            .db
            .get_cf(self.cf(META_CF)?, key)
            .map_err(self.db_err())?
        {
            None => Ok(StoreCheckpoint::EMPTY),
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| StateError::CorruptMetadata {
                    path: self.path.clone(),
                    reason: format!("checkpoint of {}: {e}", self.stores[store]),
                })
            }
        }
    }

    pub(crate) fn get(&self, store: usize, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.db
            .get_cf_opt(self.cf(&self.stores[store])?, key, &self.point_read)
            .map_err(self.db_err())
    }

    /// Applies `f` to the value of `key` in place (RocksDB's pinned slice: no copy).
    pub(crate) fn get_with<T>(
        &self,
        store: usize,
        key: &[u8],
        f: impl FnOnce(&[u8]) -> T,
    ) -> Result<Option<T>, StateError> {
        let value = self
            .db
            .get_pinned_cf_opt(self.cf(&self.stores[store])?, key, &self.point_read)
            .map_err(self.db_err())?;
        Ok(value.map(|v| f(&v)))
    }

    /// Calls `f` with every entry of a store, in key order, without collecting them.
    pub(crate) fn for_each(
        &self,
        store: usize,
        mut f: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), StateError> {
        for item in self
            .db
            .iterator_cf(self.cf(&self.stores[store])?, IteratorMode::Start)
        {
            let (k, v) = item.map_err(self.db_err())?;
            f(&k, &v);
        }
        Ok(())
    }

    /// Entries whose key starts with `prefix`, in key order.
    pub(crate) fn prefix(&self, store: usize, prefix: &[u8]) -> Result<KeyValues, StateError> {
        let iter = self.db.iterator_cf(
            self.cf(&self.stores[store])?,
            IteratorMode::From(prefix, rocksdb::Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item.map_err(self.db_err())?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    /// The window stores among `checkpoints` whose stream time closed windows that are not
    /// deleted yet, with the first window start still open.
    fn closing_windows(&self, checkpoints: &[(usize, StoreCheckpoint)]) -> Vec<(usize, i64)> {
        checkpoints
            .iter()
            .filter_map(|(store, checkpoint)| {
                let windows = self.windows.get(*store)?.as_ref()?;
                Some((*store, windows.next_bound(checkpoint.stream_time)?))
            })
            .collect()
    }

    /// Starts an atomic batch with `batch`'s entries and checkpoints and `meta`; more
    /// entries may be added before [`commit`](Self::commit).
    fn batch(&self, batch: StateBatch, meta: &[(&str, Vec<u8>)]) -> Result<Pending, StateError> {
        let closing = self.closing_windows(&batch.checkpoints);
        let mut wb = WriteBatch::default();
        for (store, key, value) in &batch.entries {
            self.put_entries(&mut wb, *store, [(key.as_slice(), value.as_deref())])?;
        }
        let meta_cf = self.cf(META_CF)?;
        for (store, checkpoint) in batch.checkpoints {
            let bytes =
                serde_json::to_vec(&checkpoint).map_err(|e| StateError::CorruptMetadata {
                    path: self.path.clone(),
                    reason: e.to_string(),
                })?;
            wb.put_cf(meta_cf, format!("checkpoint/{}", self.stores[store]), bytes);
        }
        for (key, value) in meta {
            wb.put_cf(meta_cf, key, value);
        }
        Ok(Pending { wb, closing })
    }

    /// Adds entries of `store` to `wb` (`None` deletes).
    fn put_entries<'a>(
        &self,
        wb: &mut WriteBatch,
        store: usize,
        entries: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> Result<(), StateError> {
        let cf = self.cf(&self.stores[store])?;
        for (key, value) in entries {
            match value {
                Some(v) => wb.put_cf(cf, key, v),
                None => wb.delete_cf(cf, key),
            }
        }
        Ok(())
    }

    /// Writes `pending` atomically (with or without the write-ahead log). Last in the batch,
    /// every window its checkpoints closed is deleted, one range per store: closing costs no
    /// read and no tombstone per entry, and a restored batch loses the closed windows' entries
    /// it brought back.
    fn commit(&self, pending: Pending, logged: bool) -> Result<(), StateError> {
        let Pending { mut wb, closing } = pending;
        for (store, bound) in &closing {
            let cf = self.cf(&self.stores[*store])?;
            wb.delete_range_cf(cf, [0u8; 8], super::window_keys::start_prefix(*bound));
        }
        let mut options = WriteOptions::default();
        options.disable_wal(!logged);
        self.db.write_opt(wb, &options).map_err(self.db_err())?;
        for (store, bound) in closing {
            if let Some(Some(windows)) = self.windows.get(store) {
                windows.deleted_below.fetch_max(bound, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Applies `batch` atomically: data and checkpoints land together or not at all.
    pub(crate) fn write(&self, batch: StateBatch) -> Result<(), StateError> {
        self.write_with_meta(batch, &[])
    }

    /// [`write`](Self::write), plus partition metadata in the same atomic batch.
    pub(crate) fn write_with_meta(
        &self,
        batch: StateBatch,
        meta: &[(&str, Vec<u8>)],
    ) -> Result<(), StateError> {
        self.commit(self.batch(batch, meta)?, true)
    }

    /// Applies a flush atomically: `entries` of every store (read in place, not copied into a
    /// [`StateBatch`] first) and the checkpoints.
    pub(crate) fn write_flush(
        &self,
        entries: &[super::overlay::Entries],
        checkpoints: Vec<(usize, StoreCheckpoint)>,
    ) -> Result<(), StateError> {
        let checkpoints_only = StateBatch {
            entries: Vec::new(),
            checkpoints,
        };
        let mut pending = self.batch(checkpoints_only, &[])?;
        for (store, store_entries) in entries.iter().enumerate() {
            // In key order: RocksDB's memtable (a skip list) inserts sorted keys much faster
            // than the hash map's order (`benches/micro.rs` flush_batch: 20 → 15 ms).
            let sorted = super::key_order::in_key_order(
                store_entries.iter().map(|(k, v)| (&k[..], v.as_deref())),
            );
            self.put_entries(&mut pending.wb, store, sorted)?;
        }
        self.commit(pending, true)
    }

    /// A partition metadata value written with [`write_with_meta`](Self::write_with_meta)
    /// or [`write_stores`](Self::write_stores).
    pub(crate) fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.db
            .get_cf(self.cf(META_CF)?, key)
            .map_err(self.db_err())
    }

    /// Writes entries of several stores (`None` deletes) and metadata in one atomic batch;
    /// without the write-ahead log unless `logged` (see
    /// [`write_unlogged`](Self::write_unlogged) for what a crash then loses).
    pub(crate) fn write_stores<'a>(
        &self,
        stores: &[StoreWrites<'a>],
        meta: &[(&str, Vec<u8>)],
        logged: bool,
    ) -> Result<(), StateError> {
        let mut pending = self.batch(StateBatch::default(), meta)?;
        for (store, entries) in stores {
            self.put_entries(&mut pending.wb, *store, entries.iter().copied())?;
        }
        self.commit(pending, logged)
    }

    /// Entries of a window store whose window starts in `from..=to` and whose key after the
    /// start is `key`: `(start, value)` in start order (queries).
    pub(crate) fn range_with_suffix(
        &self,
        store: usize,
        (from, to): (i64, i64),
        key: &[u8],
    ) -> Result<Vec<(i64, Vec<u8>)>, StateError> {
        let lower = super::window_keys::start_prefix(from);
        let iter = self.db.iterator_cf(
            self.cf(&self.stores[store])?,
            IteratorMode::From(&lower, rocksdb::Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item.map_err(self.db_err())?;
            let Some(start) = super::window_keys::start_of(&k) else {
                continue;
            };
            if start > to {
                break;
            }
            if &k[8..] == key {
                out.push((start, v.into_vec()));
            }
        }
        Ok(out)
    }

    /// `f` of the value of the last key `≤ bound` of `store`, if that key starts with
    /// `prefix`: one backward seek (a versioned table's "value as of a time").
    pub(crate) fn last_at_or_before_with<T>(
        &self,
        store: usize,
        prefix: &[u8],
        bound: &[u8],
        f: impl FnOnce(&[u8]) -> T,
    ) -> Result<Option<T>, StateError> {
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_lower_bound(prefix.to_vec());
        let mut iter = self
            .db
            .raw_iterator_cf_opt(self.cf(&self.stores[store])?, options);
        iter.seek_for_prev(bound);
        if let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            if key.starts_with(prefix) {
                return Ok(Some(f(value)));
            }
        }
        iter.status().map_err(self.db_err())?;
        Ok(None)
    }

    /// The last key of `store`, if any: one seek to its end.
    pub(crate) fn last_key(&self, store: usize) -> Result<Option<Vec<u8>>, StateError> {
        let mut iter = self.db.raw_iterator_cf(self.cf(&self.stores[store])?);
        iter.seek_to_last();
        if let Some(key) = iter.key() {
            return Ok(Some(key.to_vec()));
        }
        iter.status().map_err(self.db_err())?;
        Ok(None)
    }

    /// Applies `batch` atomically without the write-ahead log, for restores: a crash loses
    /// the latest of these batches whole (data and checkpoint together), and the restore
    /// resumes from an earlier checkpoint. Call [`sync`](Self::sync) when the restore ends.
    pub(crate) fn write_unlogged(&self, batch: StateBatch) -> Result<(), StateError> {
        self.commit(self.batch(batch, &[])?, false)
    }

    /// [`write_unlogged`](Self::write_unlogged) of one store's restored entries, read in
    /// place.
    pub(crate) fn write_restored<'a>(
        &self,
        store: usize,
        entries: impl Iterator<Item = &'a (Vec<u8>, Option<Vec<u8>>)>,
        checkpoint: StoreCheckpoint,
    ) -> Result<(), StateError> {
        let checkpoint_only = StateBatch {
            entries: Vec::new(),
            checkpoints: vec![(store, checkpoint)],
        };
        let mut pending = self.batch(checkpoint_only, &[])?;
        let entries = entries.map(|(k, v)| (k.as_slice(), v.as_deref()));
        self.put_entries(&mut pending.wb, store, entries)?;
        self.commit(pending, false)
    }

    /// Persists everything written without the write-ahead log.
    pub(crate) fn sync(&self) -> Result<(), StateError> {
        self.db.flush().map_err(self.db_err())?;
        for name in &self.stores {
            self.db.flush_cf(self.cf(name)?).map_err(self.db_err())?;
        }
        self.db.flush_cf(self.cf(META_CF)?).map_err(self.db_err())
    }

    /// Closes the database and deletes its directory.
    pub(crate) fn destroy(self) -> Result<(), StateError> {
        let path = self.path.clone();
        drop(self);
        std::fs::remove_dir_all(&path).map_err(|source| StateError::Io { path, source })
    }
}

#[cfg(test)]
mod tests;
