//! Per-partition state: RocksDB stores backed by compacted changelog topics.
//!
//! # Layout
//!
//! Each assigned partition has one RocksDB at `<state_dir>/<group>/<topic>-<partition>/`
//! with a column family per store and one for metadata (store formats and checkpoints).
//! Revoked partitions are closed but their directories stay, so a partition that comes back
//! restores only its changelog tail. Directories of partitions this instance no longer owns
//! are not deleted automatically: a partition may return after the next rebalance, and
//! deleting is cheap to do from outside (`<state_dir>/<group>/<topic>-<partition>` of a
//! stopped consumer can be removed at any time; the next owner replays the changelog).
//!
//! # Flush
//!
//! Writes go to an in-memory overlay, combined per key. A flush (on record count, on time,
//! before each commit, on revoke and on shutdown):
//! 1. produces one changelog record per changed key (a tombstone per delete) with the source
//!    offset in a header, and waits for every acknowledgement;
//! 2. produces one marker per touched store and waits for those;
//! 3. writes the values and each store's checkpoint `{changelog offset, source offset}` in one
//!    atomic RocksDB `WriteBatch`;
//! 4. only then publishes the source offset as committable.
//!
//! # Restore and crashes
//!
//! See [`replay`](self) for why markers make a flush atomic. After a restore the worker skips
//! source records below the restored source offset: their effect is already in the state.
//! A crash anywhere in the cycle therefore ends with every source record applied exactly once
//! to the state. Effects outside the state (producing elsewhere, calling services) are
//! at-least-once: a record can be handled again after a crash.
//!
//! There is no fencing of a *zombie* writer (a process that lost its partition but still
//! flushes): that needs Kafka transactions, which the changelog does not use.

mod db;
mod overlay;
mod partition;
mod replay;
mod restore;
mod store;

pub(crate) use partition::{PartitionState, StateEnv};
pub use store::{Store, StoreDef};

use std::path::PathBuf;

/// Raw `(key, value)` pairs of a store, in key order.
pub(crate) type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

use crate::changelog::ChangelogError;
use crate::codec::CodecError;

/// A store as declared in the configuration: its name and its recorded format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoreSpec {
    pub(crate) name: String,
    /// Codec names and the store's version, e.g. `key=utf8;value=bincode2;version=1`.
    pub(crate) format: String,
}

/// A state store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The partition's database is open in another process (or another consumer).
    #[error("state directory {path} is locked by another process: {reason}")]
    Locked {
        /// The partition's state directory.
        path: PathBuf,
        /// RocksDB's message.
        reason: String,
    },
    /// The store was written with other codecs or another version.
    #[error(
        "store {store} in {path} has format {found:?}, this consumer expects {expected:?}; \
             delete the directory to rebuild it from the changelog, or use matching codecs"
    )]
    FormatMismatch {
        /// The store.
        store: String,
        /// The partition's state directory.
        path: PathBuf,
        /// The recorded format.
        found: String,
        /// The configured format.
        expected: String,
    },
    /// The local checkpoint points past the changelog's end (topic recreated or truncated).
    /// Handled internally by wiping and replaying; surfaced only if that fails.
    #[error(
        "store {store} in {path}: checkpoint {checkpoint} is past changelog end {changelog_end}"
    )]
    CheckpointAhead {
        /// The store.
        store: String,
        /// The partition's state directory.
        path: PathBuf,
        /// Changelog offset in the checkpoint.
        checkpoint: i64,
        /// The changelog partition's high watermark.
        changelog_end: i64,
    },
    /// A handler used a store that was not declared on the builder.
    #[error("store {0:?} was not declared with ConsumerConfigBuilder::store")]
    UnknownStore(String),
    /// A state key or value could not be encoded or decoded.
    #[error("store {store}: {source}")]
    Codec {
        /// The store.
        store: String,
        /// The codec's error.
        source: CodecError,
    },
    /// RocksDB failed.
    #[error("rocksdb {path}: {source}")]
    Db {
        /// The partition's state directory.
        path: PathBuf,
        /// RocksDB's error.
        source: rocksdb::Error,
    },
    /// A file-system operation on the state directory failed.
    #[error("state directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The store's metadata is unreadable.
    #[error("state metadata in {path} is corrupt: {reason}")]
    CorruptMetadata {
        /// The partition's state directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing or reading the changelog failed.
    #[error(transparent)]
    Changelog(#[from] ChangelogError),
}
