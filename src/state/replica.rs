//! A standby replica of one partition's state: its stores kept up to their changelogs by a
//! member that does not own the partition (see [`crate::standby`]).
//!
//! A replica uses the partition's own directory and checkpoint format, and applies changelog
//! records with the restore's rules ([`super::replay`]): data waits for its flush marker,
//! records of an older epoch after a newer one are void, an epoch marker settles the flushes
//! before it. It differs from a restore in three ways:
//! - it never writes: no epoch marker, no repair flush (the owner does both);
//! - it never settles the end of the log: the last confirmed flush of each store, and data
//!   whose marker has not arrived yet, stay unapplied (in memory) until later records
//!   confirm them, because the owner may still be writing them;
//! - it keeps its replay between passes and reads only what the changelogs gained since.
//!
//! What it has applied is checkpointed like a restore's batches, so the owner-to-be opens the
//! directory with the normal restore, which reads only the records after that checkpoint.

use std::path::PathBuf;

use super::db::PartitionDb;
use super::log::{LogPartition, StateLog};
use super::replay::StoreReplay;
use super::restore::{read_into, Verify};
use super::{StateEnv, StateError};

/// A replica's open database and, per store, its replay and next changelog offset to read.
#[derive(Debug)]
pub(crate) struct Replica {
    db: PartitionDb,
    partition: i32,
    stores: Vec<Tail>,
}

#[derive(Debug)]
struct Tail {
    replay: StoreReplay,
    /// Next offset to read; `None` before the first pass (which starts at the checkpoint
    /// and checks the marker before it, as a restore does).
    next: Option<i64>,
    /// Records a promotion would read now: changelog end − checkpoint.
    lag: u64,
}

/// What one pass read.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Pass {
    /// Changelog records read.
    pub(crate) records: u64,
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
    pub(crate) fn open(env: &StateEnv, path: PathBuf, partition: i32) -> Result<Self, StateError> {
        let config = &env.config;
        let db = PartitionDb::open(
            &path,
            &config.stores,
            std::time::Duration::ZERO,
            &env.memory,
        )?;
        let stores = config
            .stores
            .iter()
            .enumerate()
            .map(|(index, spec)| {
                Ok(Tail {
                    replay: StoreReplay::new(spec.name.clone(), db.checkpoint(index)?),
                    next: None,
                    lag: 0,
                })
            })
            .collect::<Result<_, StateError>>()?;
        Ok(Self {
            db,
            partition,
            stores,
        })
    }

    /// Reads what each store's changelog gained since the last pass and applies every flush
    /// that is confirmed. `stop` abandons the pass (the partition is being promoted).
    ///
    /// # Errors
    /// [`StateError::CheckpointAhead`] / [`StateError::ChangelogReplaced`] when the local
    /// state does not belong to the changelog (the caller wipes the replica); changelog and
    /// RocksDB errors.
    pub(crate) fn catch_up(
        &mut self,
        log: &dyn StateLog,
        names: &[String],
        stop: &dyn Fn() -> bool,
    ) -> Result<Pass, StateError> {
        let mut pass = Pass::default();
        let mut changelog = LogPartition {
            log,
            partition: self.partition,
            stop,
        };
        for (index, tail) in self.stores.iter_mut().enumerate() {
            let (low, high) = log.watermarks(index, self.partition)?;
            let checkpoint = self.db.checkpoint(index)?;
            let from = tail.next.unwrap_or(checkpoint.changelog_next);
            if from > high {
                return Err(StateError::CheckpointAhead {
                    store: names[index].clone(),
                    path: self.db.path().to_path_buf(),
                    checkpoint: from,
                    changelog_end: high,
                });
            }
            let at = checkpoint.changelog_next - 1;
            let verify = (tail.next.is_none() && at >= low.max(0)).then_some(Verify {
                at,
                epoch: checkpoint.epoch,
                store: &names[index],
                path: self.db.path(),
            });
            let finished = read_into(
                &self.db,
                &mut changelog,
                index,
                from.max(low),
                high,
                verify,
                &mut tail.replay,
                &mut |n| pass.records += n,
            )?;
            if !finished {
                return Ok(pass);
            }
            tail.next = Some(high);
            tail.replay.forget_void_keys();
            let applied = self.db.checkpoint(index)?.changelog_next;
            tail.lag = (high - applied).max(0) as u64;
            pass.lag += tail.lag;
            pass.voided += tail.replay.voided();
        }
        Ok(pass)
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
