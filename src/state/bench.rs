//! Entry points for the micro benchmarks (`benches/micro.rs`, feature `bench-internals`):
//! the overlay, the offset tracker and a flush's RocksDB batch, measured without a broker so
//! that regressions show in seconds. Not part of the API: hidden, and only built with the
//! feature.

use std::time::Duration;

use super::checkpoint::{SourcePosition, StoreCheckpoint};
use super::db::PartitionDb;
use super::overlay::{Entries, Lookup, Overlay};
use super::StoreSpec;
use crate::offset::OffsetTracker;

/// A one-store write overlay.
#[derive(Debug)]
pub struct OverlayBench(Overlay);

impl Default for OverlayBench {
    fn default() -> Self {
        Self(Overlay::new(1))
    }
}

impl OverlayBench {
    /// One record's write: staged, then committed with the record.
    pub fn update(&mut self, key: &[u8], value: &[u8]) {
        self.0.write(0, key.to_vec(), Some(value.to_vec()));
        self.0.commit_staged();
    }

    /// Whether `key` was written since the last flush.
    pub fn read(&self, key: &[u8]) -> bool {
        matches!(self.0.get(0, key), Lookup::Written(_))
    }

    /// Hands everything to a flush and ends it; returns how many keys it held.
    pub fn flush(&mut self) -> usize {
        let flushing = self.0.start_flush();
        let keys = flushing[0].len();
        drop(flushing);
        self.0.end_flush();
        keys
    }
}

/// A partition's offset tracker.
#[derive(Debug)]
pub struct OffsetBench(OffsetTracker);

impl Default for OffsetBench {
    fn default() -> Self {
        Self(OffsetTracker::starting_at(SourcePosition::NONE))
    }
}

impl OffsetBench {
    /// The record at `offset` finished; returns the offset now committable.
    pub fn finish(&mut self, offset: i64) -> i64 {
        self.0.finish(offset, offset, offset);
        self.0.committable().map_or(-1, |p| p.next)
    }
}

/// A partition database (one store) in a temporary directory.
#[derive(Debug)]
pub struct FlushBatchBench {
    db: PartitionDb,
    _dir: tempfile::TempDir,
    flushes: i64,
}

impl Default for FlushBatchBench {
    fn default() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let spec = StoreSpec {
            name: "bench".into(),
            format: "bench".into(),
            expiry: None,
        };
        let db = PartitionDb::open(dir.path(), &[spec], Duration::ZERO, &Default::default())
            .expect("open RocksDB");
        Self {
            db,
            _dir: dir,
            flushes: 0,
        }
    }
}

impl FlushBatchBench {
    /// Writes `entries` (a flush's map) with a checkpoint in one atomic batch, through the
    /// same code as a flush.
    pub fn write(&mut self, entries: &[(Vec<u8>, Vec<u8>)]) {
        self.flushes += 1;
        let checkpoint = StoreCheckpoint {
            changelog_next: self.flushes,
            epoch: 1,
            seq: self.flushes as u64,
            source_next: self.flushes,
            ..StoreCheckpoint::EMPTY
        };
        let map: Entries = entries
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        self.db
            .write_flush(&[map], vec![(0, checkpoint)])
            .expect("RocksDB write");
    }
}

/// A flush's sort into key order ([`super::key_order::in_key_order`]); returns how many
/// entries came out, so the work is not optimized away.
pub fn sort_in_key_order(keys: &[Vec<u8>]) -> usize {
    super::key_order::in_key_order(keys.iter().map(|k| (&k[..], None))).count()
}
