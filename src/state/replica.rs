//! A standby replica of one partition's state: its stores kept up to their changelogs by a
//! member that does not own the partition (see [`crate::standby`]).
//!
//! A replica uses the partition's own directory and checkpoint format, and applies changelog
//! records with the restore's rules ([`super::replay`]): data waits for its flush marker,
//! records of an older epoch after a newer one are void, an epoch marker settles the flushes
//! before it. It differs from a restore in three ways:
//! - it never writes: no epoch marker, no repair flush (the owner does both);
//! - it never settles the end of the log as a restore does: data whose marker has not
//!   arrived yet stays unapplied (in memory), because the owner may still be writing it; a
//!   flush complete in every store it touched is applied at the end of the pass, marked
//!   *unsettled* until a later record confirms it ([`release_complete`]);
//! - it keeps its replay between passes and reads only what the changelogs gained since.
//!
//! What it has applied is checkpointed like a restore's batches, so the owner-to-be opens the
//! directory with the normal restore, which reads only the records after that checkpoint.

use std::path::PathBuf;

use super::db::PartitionDb;
use super::replay::{release_complete, StoreReplay};
use super::restore::{apply_ready, read_into, ChangelogPartition, Verify};
use super::{StateEnv, StateError, StoreSpec};

/// A replica's open database and, per store, its replay and next changelog offset to read.
#[derive(Debug)]
pub(crate) struct Replica {
    db: PartitionDb,
    replays: Vec<StoreReplay>,
    /// Per store, the next offset to read; `None` before the first pass (which starts at the
    /// checkpoint and checks the marker before it, as a restore does).
    next: Vec<Option<i64>>,
    /// Changelog records read since it was opened.
    records_read: u64,
}

/// Where a replica stands after a pass.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Pass {
    /// Changelog records read since the replica was opened.
    pub(crate) records_read: u64,
    /// Records behind the changelog ends (what a promotion would read), all stores.
    pub(crate) lag: u64,
    /// Data records found void since the replica opened (a zombie's writes after its
    /// successor's epoch marker, or flushes that never completed), all stores.
    pub(crate) voided: u64,
}

impl Replica {
    /// Opens the partition's directory as a replica (creating it if missing). Blocking.
    ///
    /// # Errors
    /// [`StateError::Locked`] while an owner in this or another process has it open; format
    /// and RocksDB errors.
    pub(crate) fn open(env: &StateEnv, path: PathBuf) -> Result<Self, StateError> {
        let config = &env.config;
        let db = PartitionDb::open(
            &path,
            &config.stores,
            std::time::Duration::ZERO,
            &env.memory,
        )?;
        Self::new(db, &config.stores)
    }

    /// A replica continuing from what `db` holds.
    ///
    /// # Errors
    /// RocksDB errors reading the checkpoints.
    pub(crate) fn new(db: PartitionDb, stores: &[StoreSpec]) -> Result<Self, StateError> {
        let replays = stores
            .iter()
            .enumerate()
            .map(|(index, spec)| Ok(StoreReplay::new(spec.name.clone(), db.checkpoint(index)?)))
            .collect::<Result<Vec<_>, StateError>>()?;
        Ok(Self {
            next: vec![None; replays.len()],
            db,
            replays,
            records_read: 0,
        })
    }

    /// Its database (the simulation checks what it holds).
    #[cfg(test)]
    pub(crate) fn db(&self) -> &PartitionDb {
        &self.db
    }

    /// Reads what each store's changelog gained since the last pass, applies every flush
    /// that is confirmed, then every flush complete in all the stores it touched (early:
    /// see [`release_complete`]). `Ok(None)`: the changelog's reader was stopped (the
    /// partition is being promoted) and the pass abandoned.
    ///
    /// # Errors
    /// [`StateError::CheckpointAhead`] / [`StateError::ChangelogReplaced`] when the local
    /// state does not belong to the changelog, [`StateError::Damaged`] when a flush applied
    /// early was voided (the caller wipes the replica); changelog and RocksDB errors.
    pub(crate) fn catch_up(
        &mut self,
        changelog: &mut dyn ChangelogPartition,
    ) -> Result<Option<Pass>, StateError> {
        let mut ends = Vec::with_capacity(self.replays.len());
        for (index, replay) in self.replays.iter_mut().enumerate() {
            let (low, high) = changelog.watermarks(index)?;
            let (from, verify) = match self.next[index] {
                Some(next) => (next, None),
                // The first pass starts at the checkpoint, and checks the marker before it.
                None => {
                    let checkpoint = self.db.checkpoint(index)?;
                    let at = checkpoint.changelog_next - 1;
                    let verify = (at >= low.max(0)).then_some((at, checkpoint.epoch));
                    (checkpoint.changelog_next, verify)
                }
            };
            if from > high {
                return Err(StateError::CheckpointAhead {
                    store: replay.name.clone(),
                    path: self.db.path().to_path_buf(),
                    checkpoint: from,
                    changelog_end: high,
                });
            }
            let name = replay.name.clone();
            let verify = verify.map(|(at, epoch)| Verify {
                at,
                epoch,
                store: &name,
                path: self.db.path(),
            });
            let records_read = &mut self.records_read;
            let finished = read_into(
                &self.db,
                changelog,
                index,
                from.max(low),
                high,
                verify,
                replay,
                &mut |n| *records_read += n,
            )?;
            if !finished {
                return Ok(None);
            }
            self.next[index] = Some(high);
            ends.push(high);
        }
        release_complete(&mut self.replays);
        let mut pass = Pass {
            records_read: self.records_read,
            ..Pass::default()
        };
        for (index, replay) in self.replays.iter_mut().enumerate() {
            apply_ready(&self.db, index, replay)?;
            // A replica never repairs (the owner does): it must not collect void keys.
            replay.forget_void_keys();
            pass.lag += (ends[index] - replay.applied_next()).max(0) as u64;
            pass.voided += replay.voided();
        }
        Ok(Some(pass))
    }

    /// Persists what was applied (replicas write without the write-ahead log) and closes
    /// the database, keeping its files (the owner-to-be opens them).
    ///
    /// # Errors
    /// RocksDB errors persisting the memtables; the replica is closed anyway.
    pub(crate) fn close(self) -> Result<(), StateError> {
        self.db.sync()
    }

    /// Closes the database and deletes its directory.
    ///
    /// # Errors
    /// When the directory cannot be removed.
    pub(crate) fn destroy(self) -> Result<(), StateError> {
        self.db.destroy()
    }
}
