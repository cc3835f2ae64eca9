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
//! 1. produces one changelog record per changed key (a tombstone per delete), stamped with
//!    the owner's epoch and the flush's sequence number, and waits for every acknowledgement;
//! 2. produces one flush marker per touched store (with the source offset the flush reaches)
//!    and waits for those;
//! 3. checks that its records follow this owner's previous ones in each changelog partition:
//!    any other record in between was written by another owner. A newer epoch there means
//!    this process was replaced (a zombie): nothing is applied, the partition stops
//!    ([`StateError::Fenced`]). An older one is a zombie's late write: void, and its keys are
//!    written again by the next flush;
//! 4. writes the values and each store's checkpoint `{changelog offset, epoch, seq, source
//!    offset}` in one atomic RocksDB `WriteBatch`;
//! 5. only then publishes the source offset as committable.
//!
//! # Restore, crashes and zombies — without Kafka transactions
//!
//! Each owner starts with an *epoch marker* above every epoch in the changelogs; replay
//! ignores records of an older epoch that follow a newer one, and a flush counts only if
//! every store it touched has its marker (the rules are in `replay`). So a flush that a crash
//! cut short, or that a zombie finished after its successor took over, never reaches the
//! state, and the keys it left behind are rewritten. After a restore the worker skips source
//! records below the restored source offset: their effect is already in the state. A crash
//! anywhere in the cycle therefore ends with every source record applied exactly once to the
//! state. Effects outside the state (producing elsewhere, calling services) are
//! at-least-once: a record can be handled again after a crash.
//!
//! A restore also checks identity: the record before each local checkpoint must be the
//! marker it names (else the changelog was recreated: wipe and replay), and the source topic
//! must still hold the last record the state reflects, with the same timestamp (else it was
//! recreated: [`StateError::SourceReplaced`]).

#[cfg(feature = "bench-internals")]
#[doc(hidden)]
pub mod bench;
pub(crate) mod checkpoint;
pub(crate) mod db;
mod flush;
mod key_order;
pub(crate) mod log;
pub(crate) mod memory;
mod overlay;
mod partition;
pub(crate) mod replay;
pub(crate) mod replica;
pub(crate) mod restore;
#[cfg(test)]
mod sim;
pub(crate) mod slot;
mod store;
pub mod ttl;
mod window_bounds;
pub(crate) mod window_keys;

pub(crate) use db::PartitionDb;
pub use log::MemoryLog;
pub(crate) use partition::partition_dir;
pub(crate) use partition::{FlushDone, FlushJob, PartitionState, StagedFlush, StateEnv};
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
    /// The TTL of a key-value store's entries, if it has one.
    pub(crate) expiry: Option<ttl::Expiry>,
}

impl StoreSpec {
    /// A window store's `size + grace` in milliseconds (`None` for other stores): a window
    /// starting at `start` is closed once stream time reaches `start + size + grace`.
    pub(crate) fn window_span(&self) -> Option<i64> {
        Some(
            self.window_field("size")?
                .saturating_add(self.window_field("grace")?),
        )
    }

    /// A window store's `size` in milliseconds.
    pub(crate) fn window_size(&self) -> Option<i64> {
        self.window_field("size")
    }

    /// A number recorded in a window store's format (`window;…;name=value;…`).
    fn window_field(&self, name: &str) -> Option<i64> {
        self.field("window", name)
    }

    /// A number recorded in the format of a store of `kind` (`kind;…;name=value;…`).
    pub(crate) fn field(&self, kind: &str, name: &str) -> Option<i64> {
        let mut fields = self.format.split(';');
        if fields.next() != Some(kind) {
            return None;
        }
        fields
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))?
            .parse()
            .ok()
    }

    /// Whether the store holds windows (tumbling, hopping, session or sliding): its
    /// records need their own event times, handled one at a time.
    pub(crate) fn is_windowed(&self) -> bool {
        ["window;", "session;", "sliding;"]
            .iter()
            .any(|kind| self.format.starts_with(kind))
    }
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
    /// The local database is damaged. Handled internally by deleting it and replaying the
    /// changelog; surfaced only if that fails.
    #[error("state directory {path} is damaged: {reason}")]
    Damaged {
        /// The partition's state directory.
        path: PathBuf,
        /// RocksDB's message.
        reason: String,
    },
    /// The record before the local checkpoint is not the marker the checkpoint names: the
    /// changelog topic was deleted and recreated. Handled internally by wiping and replaying.
    #[error("store {store} in {path}: changelog record {offset} is not the one this state was checkpointed at (changelog recreated?)")]
    ChangelogReplaced {
        /// The store.
        store: String,
        /// The partition's state directory.
        path: PathBuf,
        /// The changelog offset checked.
        offset: i64,
    },
    /// Another owner took over the changelogs while this one opened them. Retried internally.
    #[error("state {path}: another owner opened the changelogs at the same time (epoch {epoch})")]
    EpochConflict {
        /// The partition's state directory.
        path: PathBuf,
        /// This owner's epoch.
        epoch: u64,
    },
    /// Another owner wrote to this partition's changelog with a newer epoch: this process
    /// lost the partition (a zombie, e.g. after a pause longer than the session timeout).
    /// Nothing more is written or committed for it.
    #[error(
        "changelog {topic}/{partition}: another owner (epoch {newer_epoch}) took over from this \
         one (epoch {epoch}); this process stops writing for the partition"
    )]
    Fenced {
        /// The changelog topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// This owner's epoch.
        epoch: u64,
        /// The newer owner's epoch.
        newer_epoch: u64,
    },
    /// The source topic no longer holds the records the state was built from (deleted and
    /// recreated, or truncated). Processing would skip new records as "already applied".
    #[error(
        "source {topic}/{partition} was replaced: the state reflects it up to offset \
         {state_next}, but {found}; if the topic was recreated on purpose, delete the state \
         directories and the changelog topics (or use a new group id) to start over"
    )]
    SourceReplaced {
        /// The source topic.
        topic: String,
        /// The source partition.
        partition: i32,
        /// Next source offset the state reflects.
        state_next: i64,
        /// What the source topic holds instead.
        found: String,
    },
    /// A write to a window that is closed (stream time passed its end plus grace): the
    /// record is late.
    #[error("window [{start}, {end}) of store {store} is closed")]
    WindowClosed {
        /// The window store.
        store: String,
        /// The window's start.
        start: i64,
        /// The window's end.
        end: i64,
    },
    /// A feature that needs records of a partition handled one at a time (windows, timers,
    /// TTL stores) was used with key-level concurrency; `build()` refuses such a
    /// configuration, so this is only seen when a handler opens one anyway.
    #[error("{0} are not available with key_concurrency above 1")]
    NotWithConcurrency(&'static str),
    /// A handler scheduled a timer, but the consumer was built without
    /// [`ConsumerConfigBuilder::timers`](crate::ConsumerConfigBuilder::timers).
    #[error("timers are not declared: call ConsumerConfigBuilder::timers (windows do it too)")]
    TimersNotDeclared,
    /// Writing or reading the changelog failed.
    #[error(transparent)]
    Changelog(#[from] ChangelogError),
}
