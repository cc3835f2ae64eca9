//! The state of one assigned partition: open + restore, and the flush cycle.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::checkpoint::SourcePosition;
use super::db::PartitionDb;
use super::flush::{judge_gap, FlushPlan, Gap, GapVerdict};
use super::log::{EntryRef, LogPartition, StateLog};
use super::overlay::Overlay;
use super::replay::Stamp;
use super::restore::{restore, Restored};
use super::window_bounds::{newest_starts, FlushedWindows};
use super::StateError;
use crate::config::ConsumerConfig;
use crate::observe::RestoreListener;

mod timers;

use crate::timer::Timers;
use timers::{load_timers, sweeping};

/// Opens tried when the local state turns out not to match the changelog (wiped and
/// replayed) or another owner opened at the same moment.
const OPEN_ATTEMPTS: usize = 3;

/// What every partition's state shares.
#[derive(Clone)]
pub(crate) struct StateEnv {
    pub(crate) config: Arc<ConsumerConfig>,
    /// The stores' changelogs.
    pub(crate) log: Arc<dyn StateLog>,
    pub(crate) listener: Arc<dyn RestoreListener>,
    /// The RocksDB memory every partition shares.
    pub(crate) memory: Arc<super::memory::RocksMemory>,
}

/// A partition's stores: RocksDB, the unflushed overlay, and the flush bookkeeping.
#[derive(Debug)]
pub(crate) struct PartitionState {
    pub(super) db: Arc<PartitionDb>,
    pub(super) overlay: Overlay,
    config: Arc<ConsumerConfig>,
    log: Arc<dyn StateLog>,
    partition: i32,
    /// This owner's epoch: every record it writes carries it.
    epoch: u64,
    next_seq: u64,
    /// Per store, the offset this owner's next changelog record must get.
    log_next: Vec<i64>,
    /// How far the flushed state reflects the source partition.
    source: SourcePosition,
    /// Pending timers (when declared), and the changes the current record staged.
    timers: Option<(usize, Timers)>,
    staged_timers: Vec<(bool, crate::timer::Entry)>,
    /// Window closes (store, window start) known to have a pending timer: a window store's
    /// `put` asks this before building the timer key. Cleared whenever a timer is removed.
    closes_known: Vec<(usize, i64)>,
    /// Per store, whether its TTL sweep timer is pending (committed).
    sweeping: Vec<bool>,
    /// The newest window each window store has in RocksDB: reads of later windows skip it.
    flushed_windows: FlushedWindows,
}

/// `<state_dir>/<group>/<topic>-<partition>`.
pub(crate) fn partition_dir(
    config: &ConsumerConfig,
    topic: &str,
    partition: i32,
) -> Option<PathBuf> {
    Some(
        config
            .state_dir
            .as_ref()?
            .join(&config.group_id)
            .join(format!("{topic}-{partition}")),
    )
}

impl PartitionState {
    /// The partition's database, for queries (they read what is flushed).
    pub(crate) fn db(&self) -> Arc<PartitionDb> {
        self.db.clone()
    }

    /// Opens the partition's database, restores it from the changelogs and takes ownership
    /// of them with a new epoch. Blocking. `Ok(None)` when `stop` abandoned the restore
    /// (the partition was revoked meanwhile).
    ///
    /// # Errors
    /// Lock, format, RocksDB and changelog errors; [`StateError::SourceReplaced`] when the
    /// source topic no longer holds what the state was built from.
    pub(crate) fn open(
        env: &StateEnv,
        topic: &str,
        partition: i32,
        stop: &dyn Fn() -> bool,
        on_progress: &dyn Fn(u64, u64),
    ) -> Result<Option<(Self, Restored)>, StateError> {
        let _span = tracing::info_span!("restore", %topic, partition).entered();
        let config = &env.config;
        let Some(path) = partition_dir(config, topic, partition) else {
            return Err(StateError::CorruptMetadata {
                path: PathBuf::new(),
                reason: "no state_dir configured".into(),
            });
        };
        // An aborted worker of this partition in this process may still be closing it.
        let wait = config.revoke_timeout + config.flush_timeout;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let db = PartitionDb::open(&path, &config.stores, wait, &env.memory)?;
            let mut log = LogPartition {
                log: env.log.as_ref(),
                partition,
                stop,
            };
            let listener = env.listener.as_ref();
            let mut started = false;
            let mut progress = |restored: u64, total: u64| {
                on_progress(restored, total);
                if started {
                    listener.on_restore_progress(
                        topic,
                        partition,
                        restored,
                        total.saturating_sub(restored),
                    );
                } else {
                    started = true;
                    listener.on_restore_start(topic, partition, total);
                    tracing::info!(%topic, partition, records = total, "restore started");
                }
            };
            match restore(&db, &mut log, &config.stores, &mut progress) {
                Err(
                    error @ (StateError::CheckpointAhead { .. }
                    | StateError::ChangelogReplaced { .. }
                    | StateError::Damaged { .. }),
                ) if attempt < OPEN_ATTEMPTS => {
                    tracing::warn!(path = %path.display(), %error,
                        "local state does not match the changelog: wiping it and replaying the changelog");
                    db.destroy()?;
                }
                Err(error @ StateError::EpochConflict { .. }) if attempt < OPEN_ATTEMPTS => {
                    tracing::warn!(path = %path.display(), %error, "another owner opened this partition at the same moment; opening again");
                    drop(db);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(error) => return Err(error),
                Ok(None) => return Ok(None),
                Ok(Some(restored)) => {
                    listener.on_restore_end(topic, partition, restored.records, restored.elapsed);
                    tracing::info!(
                        %topic, partition, records = restored.records, rate = restored.rate(),
                        source_next = restored.source.next, epoch = restored.epoch, "restore finished"
                    );
                    env.log.verify_source(topic, partition, &restored.source)?;
                    let timers = load_timers(&db, config)?;
                    let sweeping = sweeping(config, timers.as_ref());
                    let flushed_windows = FlushedWindows::open(&db, &config.stores)?;
                    let state = Self {
                        db: Arc::new(db),
                        overlay: Overlay::new(config.stores.len()),
                        config: config.clone(),
                        log: env.log.clone(),
                        partition,
                        epoch: restored.epoch,
                        next_seq: restored.next_seq,
                        log_next: restored.log_next.clone(),
                        source: restored.source.clone(),
                        timers,
                        staged_timers: Vec::new(),
                        closes_known: Vec::new(),
                        sweeping,
                        flushed_windows,
                    };
                    return Ok(Some((state, restored)));
                }
            }
        }
    }

    pub(crate) fn store_index(&self, name: &str) -> Option<usize> {
        self.config.stores.iter().position(|s| s.name == name)
    }

    /// The current record (or timer, or hook) succeeded: its writes join the overlay.
    pub(crate) fn commit_staged(&mut self) {
        self.overlay.commit_staged();
        if let Some((_, timers)) = &mut self.timers {
            for (insert, entry) in self.staged_timers.drain(..) {
                if entry.2 == crate::timer::Owner::Expiry {
                    let name = std::str::from_utf8(&entry.3).unwrap_or_default();
                    if let Some(index) = self.config.stores.iter().position(|s| s.name == name) {
                        self.sweeping[index] = insert;
                    }
                }
                if insert {
                    timers.insert(entry);
                } else {
                    timers.remove(&entry);
                    self.closes_known.clear();
                }
            }
        }
    }

    /// The writes of a record that succeeded while others ran (key-level concurrency) join
    /// the overlay; no timers are staged that way.
    pub(crate) fn commit_writes(
        &mut self,
        writes: impl IntoIterator<Item = super::overlay::Write>,
    ) {
        self.overlay.commit(writes);
    }

    /// The current record failed: forget its writes.
    pub(crate) fn discard_staged(&mut self) {
        self.overlay.discard_staged();
        self.staged_timers.clear();
    }

    /// Reads a key of a store through the overlay (staged, pending, in flight, RocksDB).
    /// Applies `f` to the value of `key` where it lies (overlay or RocksDB), without a copy.
    pub(crate) fn read_with<T>(
        &self,
        store: usize,
        key: &[u8],
        f: impl FnOnce(&[u8]) -> T,
    ) -> Result<Option<T>, StateError> {
        match self.overlay.get(store, key) {
            super::overlay::Lookup::Written(value) => Ok(value.map(f)),
            super::overlay::Lookup::Unknown if self.flushed_windows.none_in_db(store, key) => {
                Ok(None)
            }
            super::overlay::Lookup::Unknown => self.db.get_with(store, key, f),
        }
    }

    /// Stages a write of the current record.
    pub(crate) fn write(&mut self, store: usize, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.overlay.write(store, key, value);
    }

    /// Entries of a store under `prefix`, through the overlay, in key order.
    pub(crate) fn prefix(
        &self,
        store: usize,
        prefix: &[u8],
    ) -> Result<super::KeyValues, StateError> {
        let base = self.db.prefix(store, prefix)?;
        Ok(self.overlay.merge_prefix(store, prefix, base, &[]))
    }

    /// A store's declaration (window stores record their sizes in its format).
    pub(crate) fn store_spec(&self, store: usize) -> Option<&super::StoreSpec> {
        self.config.stores.get(store)
    }

    /// Distinct keys waiting for a flush.
    pub(crate) fn dirty_keys(&self) -> usize {
        self.overlay.dirty_keys()
    }

    /// Approximate bytes waiting for a flush.
    pub(crate) fn overlay_bytes(&self) -> usize {
        self.overlay.bytes()
    }

    /// Starts making everything in the overlay durable: changelog data, acks, markers, acks,
    /// a check that no other writer appended meanwhile, then one RocksDB batch with the
    /// checkpoints. The returned job owns what it needs, so the worker keeps processing into
    /// a fresh overlay while it runs (reads see the entries in flight); hand its result to
    /// [`finish_flush`](Self::finish_flush). `source` is how far the flushed records reach.
    /// `None`: nothing to flush. At most one job may be in flight.
    pub(crate) fn start_flush(&mut self, source: SourcePosition) -> Option<FlushJob> {
        let run = self.flush_run(source, true)?;
        Some(Box::pin(async move { run.append().await?.write().await }))
    }

    /// [`start_flush`](Self::start_flush) in two steps, for a flush inside a Kafka
    /// transaction: the job appends the changelog records and hands back what writes them
    /// to RocksDB, which must wait until the transaction committed. Offsets between this
    /// owner's flushes are not checked for another writer's records: transaction markers
    /// take offsets, and the transaction fences other writers.
    pub(crate) fn start_staged_flush(&mut self, source: SourcePosition) -> Option<StagedFlush> {
        let run = self.flush_run(source, false)?;
        Some(Box::pin(run.append()))
    }

    fn flush_run(&mut self, source: SourcePosition, check_gaps: bool) -> Option<FlushRun> {
        if self.overlay.dirty_keys() == 0 {
            return None;
        }
        let stamp = Stamp {
            epoch: self.epoch,
            seq: self.next_seq,
        };
        let plan = FlushPlan::new(self.overlay.start_flush(), stamp, source)?;
        self.next_seq += 1;
        let job = FlushRun {
            plan,
            db: self.db.clone(),
            log: self.log.clone(),
            names: self.config.stores.iter().map(|s| s.name.clone()).collect(),
            partition: self.partition,
            log_next: self.log_next.clone(),
            check_gaps,
            windowed: self.flushed_windows.windowed(),
        };
        Some(job)
    }

    /// Applies a finished flush job: its entries are in RocksDB, the keys another writer left
    /// void are queued for rewriting.
    ///
    /// # Errors
    /// RocksDB errors reading the values to rewrite.
    pub(crate) fn finish_flush(&mut self, done: FlushDone) -> Result<(), StateError> {
        // Before the flushed entries leave the overlay: reads of their windows ask RocksDB.
        self.flushed_windows.flushed(&done.newest_windows);
        self.overlay.end_flush();
        self.log_next = done.log_next;
        self.source = done.source;
        // Keys whose latest changelog record is another writer's void record: the next
        // flush writes their current values again.
        for (store, key) in done.repair {
            if matches!(
                self.overlay.get(store, &key),
                super::overlay::Lookup::Unknown
            ) {
                let value = self.db.get(store, &key)?;
                self.overlay.write(store, key, value);
            }
        }
        self.overlay.commit_staged();
        Ok(())
    }
}

/// A flush in flight (see [`PartitionState::start_flush`]).
///
/// # Errors
/// [`StateError::Fenced`] when another owner wrote to the changelog since this one opened it
/// (nothing is applied locally); changelog or RocksDB errors. The partition must then stop
/// without committing.
pub(crate) type FlushJob =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<FlushDone, StateError>> + Send>>;

/// The first step of a staged flush: its changelog records appended and acknowledged.
pub(crate) type StagedFlush =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Appended, StateError>> + Send>>;

/// A flush whose changelog records are appended; [`write`](Self::write) makes it local.
pub(crate) struct Appended {
    run: FlushRun,
    repair: Vec<(usize, Vec<u8>)>,
    checkpoints: Vec<(usize, super::checkpoint::StoreCheckpoint)>,
}

impl std::fmt::Debug for Appended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appended")
            .field("records", &self.run.plan.records())
            .finish_non_exhaustive()
    }
}

/// What a finished flush job hands back.
#[derive(Debug)]
pub(crate) struct FlushDone {
    log_next: Vec<i64>,
    repair: Vec<(usize, Vec<u8>)>,
    source: SourcePosition,
    records: usize,
    /// Per store, the newest window start the flush wrote (window stores).
    newest_windows: Vec<Option<i64>>,
}

impl FlushDone {
    /// Changelog data records the flush wrote.
    pub(crate) fn records(&self) -> usize {
        self.records
    }
}

/// Everything a flush job needs, owned.
struct FlushRun {
    plan: FlushPlan,
    db: Arc<PartitionDb>,
    log: Arc<dyn StateLog>,
    names: Vec<String>,
    partition: i32,
    log_next: Vec<i64>,
    /// Whether offsets between this owner's records are checked for another writer's.
    check_gaps: bool,
    /// Which stores are window stores.
    windowed: Vec<bool>,
}

impl FlushRun {
    async fn append(mut self) -> Result<Appended, StateError> {
        let plan = &self.plan;
        let data = plan
            .data()
            .map(|(store, key, value)| (store, plan.stamp, EntryRef::Data { key, value }))
            .collect();
        let data_offsets = self.log.append(self.partition, data).await?;
        let markers = plan.markers(&self.names);
        let markers = markers
            .iter()
            .map(|(store, entry)| (*store, plan.stamp, super::log::entry_ref(entry)))
            .collect();
        let marker_offsets = self.log.append(self.partition, markers).await?;
        let mut repair = Vec::new();
        let gaps = match self.check_gaps {
            true => plan.gaps(&data_offsets, &marker_offsets, &self.log_next),
            false => Vec::new(),
        };
        for gap in gaps {
            match self.inspect_gap(&gap).await? {
                GapVerdict::Fenced { newer_epoch } => {
                    return Err(StateError::Fenced {
                        topic: self.names[gap.store].clone(),
                        partition: self.partition,
                        epoch: plan.stamp.epoch,
                        newer_epoch,
                    })
                }
                GapVerdict::Repair(keys) => {
                    tracing::warn!(
                        store = %self.names[gap.store], partition = self.partition,
                        from = gap.from, to = gap.to, void_keys = keys.len(),
                        "a previous owner wrote to the changelog after this one took over; \
                         its records are void, their keys are written again"
                    );
                    repair.extend(keys.into_iter().map(|k| (gap.store, k)));
                }
            }
        }
        let checkpoints = plan.checkpoints(&marker_offsets, &mut self.log_next);
        Ok(Appended {
            run: self,
            repair,
            checkpoints,
        })
    }
}

impl Appended {
    /// Writes the flushed entries and the checkpoints to RocksDB in one batch.
    pub(crate) async fn write(self) -> Result<FlushDone, StateError> {
        let Appended {
            run,
            repair,
            checkpoints,
        } = self;
        let plan = &run.plan;
        let (db, entries, windowed) = (run.db.clone(), plan.entries.clone(), run.windowed.clone());
        let newest_windows = tokio::task::spawn_blocking(move || {
            db.write_flush(&entries, checkpoints)
                .map(|()| newest_starts(&entries, &windowed))
        })
        .await
        .map_err(|_| StateError::CorruptMetadata {
            path: run.db.path().to_path_buf(),
            reason: "flush write panicked".into(),
        })??;
        tracing::debug!(
            partition = run.partition,
            seq = plan.stamp.seq,
            records = plan.records(),
            source_next = plan.source.next,
            "flushed state"
        );
        Ok(FlushDone {
            log_next: run.log_next,
            repair,
            records: run.plan.records(),
            source: run.plan.source,
            newest_windows,
        })
    }
}

impl FlushRun {
    /// Reads the records in `gap` (another writer appended to the changelog partition since
    /// this owner's last record) and judges them.
    async fn inspect_gap(&self, gap: &Gap) -> Result<GapVerdict, StateError> {
        let (log, partition, epoch) = (self.log.clone(), self.partition, self.plan.stamp.epoch);
        let gap = Gap {
            store: gap.store,
            from: gap.from,
            to: gap.to,
            ours: gap.ours.clone(),
        };
        tokio::task::spawn_blocking(move || -> Result<GapVerdict, StateError> {
            let mut records = Vec::new();
            log.read(
                gap.store,
                partition,
                gap.from,
                gap.to,
                &|| false,
                &mut |o, s, e| {
                    records.push((o, s, e));
                    Ok(())
                },
            )?;
            Ok(judge_gap(&gap, epoch, records))
        })
        .await
        .map_err(|_| StateError::CorruptMetadata {
            path: self.db.path().to_path_buf(),
            reason: "changelog gap inspection panicked".into(),
        })?
    }
}
