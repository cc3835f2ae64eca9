//! Restore: bring a partition's RocksDB up to its changelogs before the worker processes,
//! and take ownership of the changelogs with a new epoch.
//!
//! Runs on a blocking thread (never in the rebalance callback, never on the poll loop).
//!
//! 1. For each store, verify that the changelog is the one the local checkpoint was taken
//!    from (the record before the checkpoint must be the marker it names; otherwise the topic
//!    was recreated: wipe and replay), then read from the checkpoint (nothing local: from the
//!    beginning) to the end, applying confirmed flushes in batches bounded in bytes, each
//!    with its checkpoint, without the write-ahead log (a crash resumes from the last batch).
//! 2. Write an epoch marker above every epoch seen to each store's changelog.
//! 3. Read what landed between the end read in 1 and the marker (usually nothing; a zombie's
//!    late records otherwise), so the local state is exactly what a replay of the log up to
//!    the marker gives. A newer epoch there means another owner opened meanwhile: retry.
//! 4. Rewrite the current value of every key whose latest record is void (the repair flush).
//!
//! With intact local state this reads only the changelog tail, usually nothing.

use std::time::{Duration, Instant};

use super::checkpoint::{SourcePosition, StoreCheckpoint};
use super::db::{PartitionDb, StateBatch};
use super::replay::{resolve, Entry, Resolution, Stamp, StoreReplay};
use super::{StateError, StoreSpec};

/// Restored records are written to RocksDB in batches of about this many bytes.
const APPLY_BATCH_BYTES: usize = 4 << 20;

/// One partition's changelogs (index = store index): the seam between restore and Kafka.
pub(crate) trait ChangelogPartition {
    /// Low and high watermark of store `store`'s changelog partition.
    fn watermarks(&mut self, store: usize) -> Result<(i64, i64), StateError>;
    /// Calls `apply` with every record in `[from, to)`, in order (records removed by
    /// compaction are skipped). `Ok(false)`: the restore was asked to stop.
    fn read(
        &mut self,
        store: usize,
        from: i64,
        to: i64,
        apply: &mut dyn FnMut(i64, Stamp, Entry) -> Result<(), StateError>,
    ) -> Result<bool, StateError>;
    /// Produces `records` (store, stamp, entry) in order and waits for every ack; returns
    /// their offsets in input order.
    fn append(&mut self, records: Vec<(usize, Stamp, Entry)>) -> Result<Vec<i64>, StateError>;
}

/// What a finished restore found, and where the new owner starts.
#[derive(Debug, Clone)]
pub(crate) struct Restored {
    /// Changelog records read.
    pub(crate) records: u64,
    pub(crate) elapsed: Duration,
    /// How far the state reflects the source partition: records before `source.next` are
    /// already in it.
    pub(crate) source: SourcePosition,
    /// This owner's epoch.
    pub(crate) epoch: u64,
    /// Sequence number of the partition's next flush.
    pub(crate) next_seq: u64,
    /// Per store, the offset the next record this owner writes must get: anything else
    /// means another writer appended meanwhile.
    pub(crate) log_next: Vec<i64>,
}

impl Restored {
    pub(crate) fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.records as f64 / secs
        } else {
            0.0
        }
    }
}

/// Restore progress callbacks: `(restored, total)`.
pub(crate) type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Restores every store and takes ownership with a new epoch. `Ok(None)`: `stop` asked to
/// abandon it.
///
/// # Errors
/// [`StateError::CheckpointAhead`] / [`StateError::ChangelogReplaced`] when the local state
/// does not belong to this changelog (the caller wipes and restores again);
/// [`StateError::EpochConflict`] when another owner opened concurrently; changelog and
/// RocksDB errors otherwise.
pub(crate) fn restore(
    db: &PartitionDb,
    log: &mut dyn ChangelogPartition,
    stores: &[StoreSpec],
    progress: Progress<'_>,
) -> Result<Option<Restored>, StateError> {
    let started = Instant::now();
    let mut replays = Vec::with_capacity(stores.len());
    let mut plans = Vec::with_capacity(stores.len());
    let mut verify = Vec::with_capacity(stores.len());
    for (index, spec) in stores.iter().enumerate() {
        let checkpoint = db.checkpoint(index)?;
        let (low, high) = log.watermarks(index)?;
        if checkpoint.changelog_next > high {
            return Err(StateError::CheckpointAhead {
                store: spec.name.clone(),
                path: db.path().to_path_buf(),
                checkpoint: checkpoint.changelog_next,
                changelog_end: high,
            });
        }
        replays.push(StoreReplay::new(spec.name.clone(), checkpoint.clone()));
        plans.push((checkpoint.changelog_next.max(low), high));
        // The record before the checkpoint must be the marker it names: it is read with
        // the tail, in the same pass.
        let at = checkpoint.changelog_next - 1;
        verify.push((at >= low.max(0)).then_some((at, checkpoint.epoch)));
    }
    tracing::debug!(elapsed = ?started.elapsed(), "restore: watermarks read");
    let total: u64 = plans
        .iter()
        .map(|(from, to)| (to - from).max(0) as u64)
        .sum();
    let mut restored = 0u64;
    progress(0, total);
    for (index, &(from, to)) in plans.iter().enumerate() {
        let check = verify[index].map(|(at, epoch)| Verify {
            at,
            epoch,
            store: &stores[index].name,
            path: db.path(),
        });
        if !read_into(
            db,
            log,
            index,
            from,
            to,
            check,
            &mut replays[index],
            &mut |n| {
                restored += n;
                progress(restored, total);
            },
        )? {
            return Ok(None);
        }
    }

    // Take ownership: an epoch above every epoch seen, and the last complete flush as base.
    let plan = super::replay::plan(&replays);
    let epoch = plan.max_epoch + 1 + fresh_offset();
    let marker = Stamp {
        epoch,
        seq: plan.last_complete_seq,
    };
    let markers = (0..stores.len())
        .map(|i| {
            (
                i,
                marker,
                Entry::Epoch {
                    source: plan.source.clone(),
                },
            )
        })
        .collect();
    tracing::debug!(elapsed = ?started.elapsed(), records = restored, "restore: changelogs read");
    let marker_offsets = log.append(markers)?;
    tracing::debug!(elapsed = ?started.elapsed(), "restore: epoch markers written");

    // What landed between the read and the marker, and the marker itself. Usually the
    // marker got the offset right after the read: nothing to read, it is fed directly.
    for (index, &(_, high)) in plans.iter().enumerate() {
        let marker_offset = marker_offsets[index];
        if marker_offset == high {
            replays[index].push(
                marker_offset,
                marker,
                Entry::Epoch {
                    source: plan.source.clone(),
                },
            );
            apply_ready(db, index, &mut replays[index])?;
            continue;
        }
        let finished = read_into(
            db,
            log,
            index,
            high,
            marker_offset + 1,
            None,
            &mut replays[index],
            &mut |n| restored += n,
        )?;
        // Our own marker is not a restored record.
        restored = restored.saturating_sub(1);
        if !finished {
            return Ok(None);
        }
        if replays[index].max_epoch() > epoch {
            return Err(StateError::EpochConflict {
                path: db.path().to_path_buf(),
                epoch,
            });
        }
    }
    tracing::debug!(elapsed = ?started.elapsed(), "restore: tail after the markers read");
    let resolution = resolve(&mut replays);
    apply_resolution(db, &resolution)?;
    let mut log_next: Vec<i64> = marker_offsets.iter().map(|o| o + 1).collect();
    let mut next_seq = resolution.next_seq;
    if resolution.stores.iter().any(|o| !o.repair.is_empty()) {
        repair(db, log, stores, &resolution, epoch, next_seq, &mut log_next)?;
        next_seq += 1;
    }
    db.sync()?;
    tracing::debug!(elapsed = ?started.elapsed(), "restore: synced");
    Ok(Some(Restored {
        records: restored,
        elapsed: started.elapsed(),
        source: resolution.source,
        epoch,
        next_seq,
        log_next,
    }))
}

/// The record before a checkpoint must be the marker the checkpoint names. If the record
/// at that offset is something else, the changelog topic was deleted and recreated (and has
/// grown past the checkpoint): the local state belongs to another log. If it is gone
/// (compaction or retention), it cannot be checked, and the checkpoint is trusted.
pub(super) struct Verify<'a> {
    pub(super) at: i64,
    pub(super) epoch: u64,
    pub(super) store: &'a str,
    pub(super) path: &'a std::path::Path,
}

/// Reads `[from, to)` of one store into its replay, applying what becomes ready in batches.
/// Returns whether it finished (`false`: stopped).
#[allow(clippy::too_many_arguments)]
pub(super) fn read_into(
    db: &PartitionDb,
    log: &mut dyn ChangelogPartition,
    index: usize,
    from: i64,
    to: i64,
    verify: Option<Verify<'_>>,
    replay: &mut StoreReplay,
    counted: &mut dyn FnMut(u64),
) -> Result<bool, StateError> {
    let from = verify.as_ref().map_or(from, |v| v.at);
    if from >= to {
        return Ok(true);
    }
    let mut since_report = 0u64;
    let finished = log.read(index, from, to, &mut |offset, stamp, entry| {
        if let Some(v) = verify.as_ref().filter(|v| v.at == offset) {
            let is_marker = matches!(entry, Entry::Flush { .. } | Entry::Epoch { .. });
            if !is_marker || stamp.epoch != v.epoch {
                return Err(StateError::ChangelogReplaced {
                    store: v.store.to_string(),
                    path: v.path.to_path_buf(),
                    offset,
                });
            }
            return Ok(());
        }
        replay.push(offset, stamp, entry);
        since_report += 1;
        if replay.ready_bytes() >= APPLY_BATCH_BYTES {
            apply_ready(db, index, replay)?;
            counted(std::mem::take(&mut since_report));
        }
        Ok(())
    })?;
    counted(since_report);
    if replay.contradicted() {
        return Err(StateError::Damaged {
            path: db.path().to_path_buf(),
            reason: format!(
                "store {}: a flush this state applied early (as a standby replica) was voided \
                 by a later owner",
                replay.name
            ),
        });
    }
    if finished {
        apply_ready(db, index, replay)?;
    }
    Ok(finished)
}

pub(super) fn apply_ready(
    db: &PartitionDb,
    index: usize,
    replay: &mut StoreReplay,
) -> Result<(), StateError> {
    if let Some((data, checkpoint)) = replay.take_ready() {
        // RocksDB's memtable (a skip list) inserts keys in order much faster than random
        // keys (it reuses the previous insert's position): measured 31% of a cold restore's
        // CPU in skip-list searches before sorting. The sort is stable, so of two writes to
        // one key the later stays later.
        // Sorting indices (8 bytes each) moves less than sorting the entries; the index
        // breaks ties, so of two writes to one key the later stays later.
        let mut order: Vec<u32> = (0..data.len() as u32).collect();
        order
            .sort_unstable_by(|&a, &b| data[a as usize].0.cmp(&data[b as usize].0).then(a.cmp(&b)));
        db.write_restored(index, order.iter().map(|&i| &data[i as usize]), checkpoint)?;
    }
    Ok(())
}

fn apply_resolution(db: &PartitionDb, resolution: &Resolution) -> Result<(), StateError> {
    let mut batch = StateBatch::default();
    for (index, outcome) in resolution.stores.iter().enumerate() {
        if let Some((data, checkpoint)) = &outcome.apply {
            batch
                .entries
                .extend(data.iter().map(|(k, v)| (index, k.clone(), v.clone())));
            batch.checkpoints.push((index, checkpoint.clone()));
        }
    }
    db.write_unlogged(batch)
}

/// Writes the current value of every void key as this owner's first flush, so the latest
/// record of every key in the log is valid again.
fn repair(
    db: &PartitionDb,
    log: &mut dyn ChangelogPartition,
    stores: &[StoreSpec],
    resolution: &Resolution,
    epoch: u64,
    seq: u64,
    log_next: &mut [i64],
) -> Result<(), StateError> {
    let stamp = Stamp { epoch, seq };
    let touched: Vec<usize> = (0..resolution.stores.len())
        .filter(|&i| !resolution.stores[i].repair.is_empty())
        .collect();
    let names: Vec<String> = touched.iter().map(|&i| stores[i].name.clone()).collect();
    tracing::warn!(stores = ?names, "changelog holds records of an unfinished flush or of a previous owner; rewriting the current values of their keys");
    let mut records = Vec::new();
    for &index in &touched {
        for key in &resolution.stores[index].repair {
            let value = db.get(index, key)?;
            records.push((
                index,
                stamp,
                Entry::Data {
                    key: key.clone(),
                    value,
                },
            ));
        }
    }
    log.append(records)?;
    let markers = touched
        .iter()
        .map(|&i| {
            (
                i,
                stamp,
                Entry::Flush {
                    source: resolution.source.clone(),
                    touched: names.clone(),
                },
            )
        })
        .collect();
    let offsets = log.append(markers)?;
    let checkpoints = touched
        .iter()
        .zip(&offsets)
        .map(|(&index, offset)| {
            log_next[index] = offset + 1;
            (
                index,
                StoreCheckpoint::at(offset + 1, (epoch, seq), &resolution.source),
            )
        })
        .collect();
    db.write(StateBatch {
        entries: Vec::new(),
        checkpoints,
    })
}

/// A small random step added to a new epoch, so two owners opening at the same moment
/// (a zombie and its successor) do not pick the same epoch.
fn fresh_offset() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u64::from(nanos ^ std::process::id()) % 1024
}
