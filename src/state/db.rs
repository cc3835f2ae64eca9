//! One RocksDB per assigned partition: a column family per store and one for metadata
//! (each store's format and checkpoint), written together in atomic batches.

use std::path::{Path, PathBuf};

use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use super::{KeyValues, StateError, StoreSpec};

const META_CF: &str = "kafka-stateful.meta";

fn store_cf(name: &str) -> String {
    format!("store.{name}")
}

/// Where a store's state stands relative to its changelog and the source partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoreCheckpoint {
    /// Next changelog offset to read: everything before it is in RocksDB.
    pub(crate) changelog_next: i64,
    /// Flush sequence number of the last flush applied.
    pub(crate) seq: u64,
    /// Next source offset: every source record before it is reflected in the state.
    pub(crate) source_next: i64,
}

impl StoreCheckpoint {
    /// No local state: replay the whole changelog.
    pub(crate) const EMPTY: Self = Self {
        changelog_next: 0,
        seq: 0,
        source_next: -1,
    };
}

/// Writes to apply atomically: store entries (`None` deletes) and checkpoints.
#[derive(Debug, Default)]
pub(crate) struct StateBatch {
    pub(crate) entries: Vec<(usize, Vec<u8>, Option<Vec<u8>>)>,
    pub(crate) checkpoints: Vec<(usize, StoreCheckpoint)>,
}

pub(crate) struct PartitionDb {
    db: DB,
    path: PathBuf,
    stores: Vec<String>,
}

impl std::fmt::Debug for PartitionDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionDb")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl PartitionDb {
    /// Opens (creating if needed) the database at `path` and checks each store's format.
    ///
    /// # Errors
    /// [`StateError::Locked`] when another process (or another consumer in this one) has it
    /// open; [`StateError::FormatMismatch`] when a store was written with other codecs.
    pub(crate) fn open(path: &Path, specs: &[StoreSpec]) -> Result<Self, StateError> {
        std::fs::create_dir_all(path).map_err(|source| StateError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
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
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, descriptors).map_err(|source| {
            if source.to_string().to_lowercase().contains("lock") {
                StateError::Locked {
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
        let this = Self {
            db,
            path: path.to_path_buf(),
            stores: specs.iter().map(|s| store_cf(&s.name)).collect(),
        };
        this.check_formats(specs)?;
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
            .get_cf(self.cf(&self.stores[store])?, key)
            .map_err(self.db_err())
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

    /// Applies `batch` atomically: data and checkpoints land together or not at all.
    pub(crate) fn write(&self, batch: StateBatch) -> Result<(), StateError> {
        let mut wb = WriteBatch::default();
        for (store, key, value) in batch.entries {
            let cf = self.cf(&self.stores[store])?;
            match value {
                Some(v) => wb.put_cf(cf, key, v),
                None => wb.delete_cf(cf, key),
            }
        }
        let meta = self.cf(META_CF)?;
        for (store, checkpoint) in batch.checkpoints {
            let bytes =
                serde_json::to_vec(&checkpoint).map_err(|e| StateError::CorruptMetadata {
                    path: self.path.clone(),
                    reason: e.to_string(),
                })?;
            wb.put_cf(meta, format!("checkpoint/{}", self.stores[store]), bytes);
        }
        self.db.write(wb).map_err(self.db_err())
    }

    /// Closes the database and deletes its directory.
    pub(crate) fn destroy(self) -> Result<(), StateError> {
        let path = self.path.clone();
        drop(self.db);
        std::fs::remove_dir_all(&path).map_err(|source| StateError::Io { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, format: &str) -> StoreSpec {
        StoreSpec {
            name: name.into(),
            format: format.into(),
        }
    }

    #[test]
    fn batch_writes_data_and_checkpoint_together() {
        let dir = tempfile::tempdir().unwrap();
        let db = PartitionDb::open(dir.path(), &[spec("counts", "f")]).unwrap();
        assert_eq!(db.checkpoint(0).unwrap(), StoreCheckpoint::EMPTY);
        let ck = StoreCheckpoint {
            changelog_next: 7,
            seq: 2,
            source_next: 40,
        };
        db.write(StateBatch {
            entries: vec![
                (0, b"a".to_vec(), Some(b"1".to_vec())),
                (0, b"b".to_vec(), None),
            ],
            checkpoints: vec![(0, ck)],
        })
        .unwrap();
        drop(db);
        let db = PartitionDb::open(dir.path(), &[spec("counts", "f")]).unwrap();
        assert_eq!(db.get(0, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(db.checkpoint(0).unwrap(), ck);
    }

    #[test]
    fn second_open_is_a_lock_error_and_format_change_is_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let db = PartitionDb::open(dir.path(), &[spec("s", "v1")]).unwrap();
        let err = PartitionDb::open(dir.path(), &[spec("s", "v1")]).unwrap_err();
        assert!(matches!(err, StateError::Locked { .. }), "{err}");
        drop(db);
        let err = PartitionDb::open(dir.path(), &[spec("s", "v2")]).unwrap_err();
        assert!(matches!(err, StateError::FormatMismatch { .. }), "{err}");
    }

    #[test]
    fn prefix_scan_stops_at_prefix_end() {
        let dir = tempfile::tempdir().unwrap();
        let db = PartitionDb::open(dir.path(), &[spec("s", "f")]).unwrap();
        let entries = ["a/1", "a/2", "b/1"]
            .iter()
            .map(|k| (0, k.as_bytes().to_vec(), Some(vec![1])))
            .collect();
        db.write(StateBatch {
            entries,
            checkpoints: vec![],
        })
        .unwrap();
        let keys: Vec<_> = db
            .prefix(0, b"a/")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"a/1".to_vec(), b"a/2".to_vec()]);
    }
}
