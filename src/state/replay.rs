//! Replay bookkeeping: which changelog records may be applied to the state, and which are
//! *void* and must be repaired. Pure logic, no Kafka and no RocksDB, so every crash point and
//! every interleaving of two owners can be tested in-process (see `replay_sim`).
//!
//! # The rules
//!
//! Each owner of a partition (each open of its state) writes an *epoch marker* to every
//! store's changelog partition before it processes anything, with an epoch higher than any
//! it found there, and the sequence number of the last flush it found complete (`base`).
//! Every record carries its writer's epoch and flush sequence number.
//!
//! A flush writes its data records to each touched store, waits for their acks, then writes a
//! *flush marker* to each touched store. Flushes of one owner run one at a time, so within an
//! epoch only the last flush can be incomplete.
//!
//! Replay reads each store's log in order and tracks the highest epoch seen:
//! - a record of an older epoch than one already seen is void (a zombie's late write, or a
//!   flush an owner could not finish before another took over);
//! - data waits in the store's *tail* until a flush marker of its flush confirms it; the last
//!   confirmed flush of a store is *held* until every store it touched is read, because it is
//!   complete only if every touched store has its marker;
//! - an epoch marker settles what came before it: held or tail data of flushes up to `base`
//!   is applied, later ones are void;
//! - at the end, tail data is void (its flush never got a marker) and a held flush that some
//!   touched store lacks is void.
//!
//! Void records stay in the log, so keys whose latest record is void are *repaired*: the new
//! owner writes their current values again as its first flush, so a later replay — and
//! compaction, which keeps only the latest record per key — always ends on a valid value.

use std::collections::BTreeSet;

use super::checkpoint::{SourcePosition, StoreCheckpoint};

/// `(key, value)`; `None` is a tombstone.
pub(crate) type KeyValue = (Vec<u8>, Option<Vec<u8>>);

/// The epoch and flush sequence number every changelog record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stamp {
    pub(crate) epoch: u64,
    pub(crate) seq: u64,
}

/// A decoded changelog record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A store entry written by flush `stamp.seq`.
    Data {
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    },
    /// The end of flush `stamp.seq` in this store.
    Flush {
        source: SourcePosition,
        touched: Vec<String>,
    },
    /// A new owner; `stamp.seq` is the last flush it found complete (older flushes after it
    /// are void).
    Epoch { source: SourcePosition },
}

#[derive(Debug)]
struct Held {
    stamp: Stamp,
    source: SourcePosition,
    touched: Vec<String>,
    /// Offset after the flush's marker.
    changelog_next: i64,
    data: Vec<KeyValue>,
}

/// Replay state of one store.
#[derive(Debug)]
pub(crate) struct StoreReplay {
    pub(crate) name: String,
    checkpoint: StoreCheckpoint,
    /// Highest epoch seen in this store (from the checkpoint on).
    epoch: u64,
    tail: Vec<(Stamp, KeyValue)>,
    held: Option<Held>,
    ready: Vec<KeyValue>,
    ready_checkpoint: Option<StoreCheckpoint>,
    /// Highest flush sequence number with a valid marker in this store.
    marked_seq: u64,
    /// Highest sequence number seen at all, void records included.
    max_seq: u64,
    max_epoch: u64,
    source: SourcePosition,
    void_keys: BTreeSet<Vec<u8>>,
    /// Data records found void so far.
    voided: u64,
    /// The seq of a flush applied before a later record of this store confirmed it
    /// ([`release_complete`]); a later flush marker settles it, an epoch marker whose base
    /// is below it contradicts it.
    unsettled: Option<u64>,
    /// An epoch marker voided a flush already applied early: the state must be rebuilt.
    contradicted: bool,
    /// Approximate bytes in `ready`.
    ready_bytes: usize,
}

impl StoreReplay {
    pub(crate) fn new(name: impl Into<String>, checkpoint: StoreCheckpoint) -> Self {
        Self {
            name: name.into(),
            checkpoint: checkpoint.clone(),
            epoch: checkpoint.epoch,
            tail: Vec::new(),
            held: None,
            ready: Vec::new(),
            ready_checkpoint: None,
            marked_seq: checkpoint.seq,
            max_seq: checkpoint.seq,
            max_epoch: checkpoint.epoch,
            source: SourcePosition {
                next: checkpoint.source_next,
                last_timestamp: checkpoint.source_timestamp,
                stream_time: checkpoint.stream_time,
                done: checkpoint.source_done.clone(),
            },
            void_keys: BTreeSet::new(),
            voided: 0,
            unsettled: checkpoint.unsettled.then_some(checkpoint.seq),
            contradicted: false,
            ready_bytes: 0,
        }
    }

    /// Feeds the record at changelog `offset`.
    pub(crate) fn push(&mut self, offset: i64, stamp: Stamp, entry: Entry) {
        self.max_seq = self.max_seq.max(stamp.seq);
        self.max_epoch = self.max_epoch.max(stamp.epoch);
        if stamp.epoch < self.epoch {
            if let Entry::Data { key, .. } = entry {
                self.voided += 1;
                self.void_keys.insert(key);
            }
            return;
        }
        if stamp.epoch > self.epoch {
            self.epoch = stamp.epoch;
        }
        match entry {
            Entry::Data { key, value } => self.tail.push((stamp, (key, value))),
            Entry::Flush { source, touched } => self.push_flush(offset, stamp, source, touched),
            Entry::Epoch { source } => self.push_epoch(offset, stamp, source),
        }
    }

    fn push_flush(
        &mut self,
        offset: i64,
        stamp: Stamp,
        source: SourcePosition,
        touched: Vec<String>,
    ) {
        // A later flush marker proves the held flush complete everywhere: flushes of one
        // owner start only after the previous one's markers were acknowledged.
        self.unsettled = None;
        if let Some(held) = self.held.take() {
            self.release(held);
        }
        self.marked_seq = self.marked_seq.max(stamp.seq);
        // Data of this flush, and — where compaction removed their markers — of earlier ones.
        let tail = std::mem::take(&mut self.tail);
        let data = if tail.iter().all(|(s, _)| s.seq <= stamp.seq) {
            tail.into_iter().map(|(_, kv)| kv).collect()
        } else {
            let (data, later): (Vec<_>, Vec<_>) =
                tail.into_iter().partition(|(s, _)| s.seq <= stamp.seq);
            self.tail = later;
            data.into_iter().map(|(_, kv)| kv).collect()
        };
        self.held = Some(Held {
            stamp,
            source,
            touched,
            changelog_next: offset + 1,
            data,
        });
    }

    fn push_epoch(&mut self, offset: i64, stamp: Stamp, source: SourcePosition) {
        let base = stamp.seq;
        if self.unsettled.take().is_some_and(|seq| seq > base) {
            self.contradicted = true;
        }
        if let Some(held) = self.held.take() {
            if held.stamp.seq <= base {
                self.release(held);
            } else {
                self.voided += held.data.len() as u64;
                self.void_keys
                    .extend(held.data.into_iter().map(|(key, _)| key));
            }
        }
        for (s, (key, value)) in std::mem::take(&mut self.tail) {
            if s.seq <= base {
                self.ready_bytes += key.len() + value.as_ref().map_or(0, Vec::len);
                self.ready.push((key, value));
            } else {
                self.voided += 1;
                self.void_keys.insert(key);
            }
        }
        // Flushes after `base` of older epochs are void, whatever markers they got.
        self.marked_seq = base;
        self.source = std::mem::replace(&mut self.source, SourcePosition::NONE).max(source);
        self.ready_checkpoint = Some(self.checkpoint_at(offset + 1, stamp.epoch, base));
    }

    fn checkpoint_at(&self, changelog_next: i64, epoch: u64, seq: u64) -> StoreCheckpoint {
        let seq = seq.max(
            self.ready_checkpoint
                .as_ref()
                .map_or(self.checkpoint.seq, |c| c.seq),
        );
        StoreCheckpoint::at(changelog_next, (epoch, seq), &self.source)
    }

    fn release(&mut self, held: Held) {
        // A void key stays marked for repair even if a valid record follows it: rewriting
        // its current value is harmless, and cheaper than tracking which record came last.
        self.ready_bytes += held
            .data
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum::<usize>();
        if self.ready.is_empty() {
            self.ready = held.data;
        } else {
            self.ready.extend(held.data);
        }
        self.source = std::mem::replace(&mut self.source, SourcePosition::NONE).max(held.source);
        self.ready_checkpoint =
            Some(self.checkpoint_at(held.changelog_next, held.stamp.epoch, held.stamp.seq));
    }

    /// Records that are safe to apply now, with the checkpoint to write with them.
    pub(crate) fn take_ready(&mut self) -> Option<(Vec<KeyValue>, StoreCheckpoint)> {
        let checkpoint = self.ready_checkpoint.take()?;
        self.checkpoint = checkpoint.clone();
        self.ready_bytes = 0;
        Some((std::mem::take(&mut self.ready), checkpoint))
    }

    /// Approximate bytes waiting in `ready`, for batching.
    pub(crate) fn ready_bytes(&self) -> usize {
        self.ready_bytes
    }

    /// The changelog offset after the last record applied (with its checkpoint).
    pub(crate) fn applied_next(&self) -> i64 {
        self.checkpoint.changelog_next
    }

    /// Whether an epoch marker voided a flush this replay (or the state it started from)
    /// applied early: a replay of the whole log would not have applied it.
    pub(crate) fn contradicted(&self) -> bool {
        self.contradicted
    }

    /// Data records found void so far (a zombie's, or an unfinished flush's).
    pub(crate) fn voided(&self) -> u64 {
        self.voided
    }

    /// Forgets which keys were void: a standby replica never repairs them (the owner does),
    /// and must not collect them forever.
    pub(crate) fn forget_void_keys(&mut self) {
        self.void_keys.clear();
    }

    /// Highest epoch seen in this store, void records included.
    pub(crate) fn max_epoch(&self) -> u64 {
        self.max_epoch
    }

    /// Whether the held flush is complete in every store it touched.
    fn held_complete(&self, stores: &[StoreReplay]) -> bool {
        self.held.as_ref().is_none_or(|held| {
            held.touched.iter().all(|name| {
                // A touched store no longer declared cannot be checked, nor is it replayed.
                stores
                    .iter()
                    .find(|s| &s.name == name)
                    .is_none_or(|s| s.has_flush(held.stamp.seq))
            })
        })
    }

    fn has_flush(&self, seq: u64) -> bool {
        self.marked_seq >= seq
    }
}

/// Applies each store's held flush that is complete in every store it touched, without
/// waiting for a later record of its store to confirm it: what a standby replica does at the
/// end of a pass, so that a quiet partition's last flush does not wait for the next one.
/// Replay rules are deterministic in log order, and a full replay would still hold such a
/// flush, so the release is recorded as *unsettled*: the next flush marker settles it; an
/// epoch marker whose base is below it (an owner that took over without seeing it complete)
/// makes the replay [`contradicted`](StoreReplay::contradicted), and the state is rebuilt.
pub(crate) fn release_complete(stores: &mut [StoreReplay]) {
    let complete: Vec<bool> = stores
        .iter()
        .map(|s| s.held.is_some() && s.held_complete(stores))
        .collect();
    for (store, complete) in stores.iter_mut().zip(complete) {
        if !complete {
            continue;
        }
        let held = store.held.take().expect("checked above");
        let seq = held.stamp.seq;
        store.release(held);
        store.unsettled = Some(seq);
        if let Some(checkpoint) = &mut store.ready_checkpoint {
            checkpoint.unsettled = true;
        }
    }
}

/// What to do with one store once every store's changelog was read.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct StoreOutcome {
    /// Records to apply, with the checkpoint to write with them.
    pub(crate) apply: Option<(Vec<KeyValue>, StoreCheckpoint)>,
    /// Keys whose latest changelog record is void: the new owner rewrites their values.
    pub(crate) repair: BTreeSet<Vec<u8>>,
}

/// The decision for the whole partition.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Resolution {
    pub(crate) stores: Vec<StoreOutcome>,
    /// Highest epoch in any store: the next owner's epoch must be above it.
    pub(crate) max_epoch: u64,
    /// The last flush found complete: the `base` of the next epoch marker.
    pub(crate) last_complete_seq: u64,
    /// Sequence number for the next flush (above every sequence number seen, void included).
    pub(crate) next_seq: u64,
    /// How far the restored state reflects the source partition.
    pub(crate) source: SourcePosition,
}

/// What a new owner needs before it writes its epoch marker: computed without deciding
/// anything, since more records may still arrive before the marker.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) max_epoch: u64,
    pub(crate) last_complete_seq: u64,
    pub(crate) source: SourcePosition,
}

/// The [`Plan`] of the stores as read so far.
pub(crate) fn plan(stores: &[StoreReplay]) -> Plan {
    let mut last_complete_seq = 0;
    let mut source = SourcePosition::NONE;
    for store in stores {
        let mut marked = store.marked_seq;
        let mut store_source = store.source.clone();
        if let Some(held) = &store.held {
            if store.held_complete(stores) {
                store_source = store_source.max(held.source.clone());
            } else {
                marked = store
                    .ready_checkpoint
                    .as_ref()
                    .map_or(store.checkpoint.seq, |c| c.seq);
            }
        }
        last_complete_seq = last_complete_seq.max(marked);
        source = source.max(store_source);
    }
    Plan {
        max_epoch: stores.iter().map(|s| s.max_epoch).max().unwrap_or(0),
        last_complete_seq,
        source,
    }
}

/// Decides, across all stores of a partition, whether each store's held flush applies.
pub(crate) fn resolve(stores: &mut [StoreReplay]) -> Resolution {
    let complete: Vec<bool> = stores.iter().map(|s| s.held_complete(stores)).collect();
    let mut outcomes = Vec::with_capacity(stores.len());
    let mut last_complete_seq = 0;
    for (store, complete) in stores.iter_mut().zip(complete) {
        if let Some(held) = store.held.take() {
            if complete {
                store.release(held);
            } else {
                store
                    .void_keys
                    .extend(held.data.into_iter().map(|(key, _)| key));
                // Its marker does not count: the flush is rolled back.
                store.marked_seq = store
                    .ready_checkpoint
                    .as_ref()
                    .map_or(store.checkpoint.seq, |c| c.seq);
            }
        }
        for (_, (key, _)) in std::mem::take(&mut store.tail) {
            store.void_keys.insert(key);
        }
        last_complete_seq = last_complete_seq.max(store.marked_seq);
        outcomes.push(StoreOutcome {
            apply: store.take_ready(),
            repair: std::mem::take(&mut store.void_keys),
        });
    }
    Resolution {
        stores: outcomes,
        max_epoch: stores.iter().map(|s| s.max_epoch).max().unwrap_or(0),
        last_complete_seq,
        next_seq: stores.iter().map(|s| s.max_seq).max().unwrap_or(0) + 1,
        source: stores
            .iter()
            .map(|s| s.source.clone())
            .fold(SourcePosition::NONE, SourcePosition::max),
    }
}

#[cfg(test)]
mod tests;
