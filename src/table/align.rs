//! The co-partitioned tables of one input partition, on its worker: bootstrap at
//! assignment, then table updates applied in timestamp order with the input records.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bootstrap::{bootstrap, Bootstrapped, Part, Run};
use super::feed::{feed, FeedReceiver, FeedSink};
use super::global::{DeadLetters, GlobalTables};
use super::source::TableSource;
use super::store::{sort_out, TableReads, TableStore};
use super::{TableError, TableSpec};
use crate::batch::RecordBatch;
use crate::changelog::RecordSink;
use crate::config::{ConsumerConfig, ErrorPolicy};
use crate::observe::RestoreListener;
use crate::state::StateError;

/// Where running table partitions get their records from: the table reader thread, or the
/// test driver.
pub(crate) trait FeedRegistry: Send + Sync + std::fmt::Debug + 'static {
    /// Feeds `sink` the records of `(topic, partition)` from offset `from` on.
    fn add(&self, topic: &str, partition: i32, from: i64, sink: FeedSink);
    /// The worker reading `(topic, partition)` went away.
    fn prune(&self, topic: &str, partition: i32);
}

impl FeedRegistry for super::TableFeeds {
    fn add(&self, topic: &str, partition: i32, from: i64, sink: FeedSink) {
        super::TableFeeds::add(self, topic, partition, from, sink);
    }
    fn prune(&self, topic: &str, partition: i32) {
        super::TableFeeds::prune(self, topic, partition);
    }
}

/// What every partition's tables share.
#[derive(Clone)]
pub(crate) struct TableEnv {
    pub(crate) config: Arc<ConsumerConfig>,
    pub(crate) source: Arc<dyn TableSource>,
    pub(crate) feeds: Arc<dyn FeedRegistry>,
    pub(crate) global: Arc<GlobalTables>,
    /// Dead letters from blocking threads (bootstrap) and from the worker.
    pub(crate) dead_letters: DeadLetters,
    pub(crate) sink: Option<Arc<dyn RecordSink>>,
    pub(crate) listener: Arc<dyn RestoreListener>,
    /// The RocksDB memory every partition shares.
    pub(crate) memory: Arc<crate::state::memory::RocksMemory>,
}

impl std::fmt::Debug for TableEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableEnv").finish_non_exhaustive()
    }
}

/// One co-partitioned table's running partition.
#[derive(Debug)]
struct Feed {
    index: usize,
    receiver: FeedReceiver,
    /// Batches received, with how far each was applied.
    buffered: VecDeque<(RecordBatch, usize)>,
}

impl Feed {
    /// The timestamp of the next update to apply, if one is buffered and has one.
    fn head_time(&self) -> Option<i64> {
        let (batch, from) = self.buffered.front()?;
        batch.records.get(*from)?.timestamp
    }
}

/// The tables of one input partition.
pub(crate) struct PartitionTables {
    store: Option<Arc<TableStore>>,
    specs: Vec<TableSpec>,
    partition: i32,
    feeds: Vec<Feed>,
    registry: Arc<dyn FeedRegistry>,
    reads: TableReads,
    sync_wait: Duration,
    policy: ErrorPolicy,
    sink: Option<Arc<dyn RecordSink>>,
    /// Bad table records skipped or dead-lettered while running.
    pub(crate) bad: u64,
    /// The highest timestamp of the input records aligned so far (-1: none yet): updates up
    /// to it apply while no input waits.
    input_time: i64,
}

impl std::fmt::Debug for PartitionTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionTables")
            .field("partition", &self.partition)
            .field("tables", &self.specs)
            .finish_non_exhaustive()
    }
}

impl Drop for PartitionTables {
    fn drop(&mut self) {
        // Closing the receivers marks the sinks dead; the reader drops them.
        for feed in &mut self.feeds {
            feed.receiver.rx.close();
        }
        for spec in &self.specs {
            self.registry.prune(&spec.topic, self.partition);
        }
    }
}

/// `<state_dir>/<group>/<topic>-<partition>.tables`.
pub(crate) fn tables_dir(
    config: &ConsumerConfig,
    topic: &str,
    partition: i32,
) -> std::path::PathBuf {
    config
        .state_dir
        .clone()
        .unwrap_or_default()
        .join(&config.group_id)
        .join(format!("{topic}-{partition}.tables"))
}

impl PartitionTables {
    /// Checks co-partitioning, opens input partition `(topic, partition)`'s tables and reads
    /// each to its end offset as it is now, then starts feeding them. Blocking. `Ok(None)`:
    /// `stop` abandoned the bootstrap.
    ///
    /// # Errors
    /// [`TableError::CoPartitioning`], [`TableError::TopicMissing`], bad records under
    /// `Fail`, read and RocksDB errors.
    pub(crate) fn open(
        env: &TableEnv,
        (topic, partition): (&str, i32),
        stop: &dyn Fn() -> bool,
        on_progress: &dyn Fn(u64, u64),
    ) -> Result<Option<(Self, Bootstrapped)>, TableError> {
        let config = &env.config;
        let specs: Vec<TableSpec> = config
            .tables
            .iter()
            .filter(|t| !t.global)
            .cloned()
            .collect();
        let mut reads = TableReads {
            partition: None,
            global: env.global.reads(),
        };
        if specs.is_empty() {
            let tables = Self::running(None, specs, partition, env, reads);
            return Ok(Some((tables, Bootstrapped::default())));
        }
        check_copartitioned(env.source.as_ref(), &specs, topic)?;
        let path = tables_dir(config, topic, partition);
        let wait = config.revoke_timeout + config.flush_timeout;
        let _span = tracing::info_span!("table bootstrap", %topic, partition).entered();
        for attempt in 0..2 {
            let store =
                TableStore::open(&path, &specs, wait, &env.memory, config.table_cache_bytes)?;
            let parts: Vec<Part<'_>> = specs
                .iter()
                .enumerate()
                .map(|(index, spec)| Part {
                    index,
                    spec,
                    partition,
                })
                .collect();
            let listener = env.listener.as_ref();
            let label = specs[0].topic.as_str();
            let mut started = false;
            let mut progress = |done: u64, total: u64| {
                on_progress(done, total);
                if started {
                    listener.on_restore_progress(
                        label,
                        partition,
                        done,
                        total.saturating_sub(done),
                    );
                } else {
                    started = true;
                    listener.on_restore_start(label, partition, total);
                    tracing::info!(records = total, "table bootstrap started");
                }
            };
            let mut run = Run {
                source: env.source.as_ref(),
                policy: &config.error_policy,
                send: &*env.dead_letters,
                stop,
                progress: &mut progress,
            };
            match bootstrap(&store, &parts, &mut run) {
                Err(TableError::State(error @ StateError::CheckpointAhead { .. }))
                    if attempt == 0 =>
                {
                    tracing::warn!(%error, "local tables do not match their topics (recreated?): reading them again");
                    store.destroy()?;
                }
                Err(error) => return Err(error),
                Ok(None) => return Ok(None),
                Ok(Some(done)) => {
                    if done.records > 0 {
                        // Lookups read the bootstrapped rows from SST files (bloom filters,
                        // block cache) rather than from large memtables: a point read in a
                        // memtable of 100k+ entries is a long skip-list search.
                        store.flush_memtables()?;
                    }
                    listener.on_restore_end(label, partition, done.records, done.elapsed);
                    tracing::info!(
                        records = done.records,
                        rate = done.rate(),
                        "tables bootstrapped"
                    );
                    let store = Arc::new(store);
                    reads.partition = Some(store.clone());
                    let mut tables = Self::running(Some(store), specs, partition, env, reads);
                    tables.bad = done.bad;
                    return Ok(Some((tables, done)));
                }
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Starts feeding the bootstrapped tables from their checkpoints.
    fn running(
        store: Option<Arc<TableStore>>,
        specs: Vec<TableSpec>,
        partition: i32,
        env: &TableEnv,
        reads: TableReads,
    ) -> Self {
        let mut feeds = Vec::with_capacity(specs.len());
        if let Some(store) = &store {
            for (index, spec) in specs.iter().enumerate() {
                let (sink, receiver) = feed();
                let from = store.checkpoint(index, partition).unwrap_or(0);
                env.feeds.add(&spec.topic, partition, from, sink);
                feeds.push(Feed {
                    index,
                    receiver,
                    buffered: VecDeque::new(),
                });
            }
        }
        Self {
            store,
            specs,
            partition,
            feeds,
            registry: env.feeds.clone(),
            reads,
            sync_wait: env.config.table_sync_wait,
            policy: env.config.error_policy.clone(),
            sink: env.sink.clone(),
            bad: 0,
            input_time: -1,
        }
    }

    /// What handlers of this partition read.
    pub(crate) fn reads(&self) -> &TableReads {
        &self.reads
    }

    /// Whether this partition has co-partitioned tables (to align with).
    pub(crate) fn is_aligned(&self) -> bool {
        !self.feeds.is_empty()
    }

    /// Takes in what the reader handed over.
    fn receive(&mut self) {
        for feed in &mut self.feeds {
            while let Ok(batch) = feed.receiver.rx.try_recv() {
                feed.buffered.push_back((batch, 0));
            }
        }
    }

    /// Resolves when the reader hands over records; never when there are no tables.
    pub(crate) async fn arrived(&mut self) {
        if self.feeds.is_empty() {
            return std::future::pending().await;
        }
        let (batch, index) = {
            let recv = self
                .feeds
                .iter_mut()
                .map(|f| Box::pin(f.receiver.rx.recv()));
            let (batch, index, _) = futures::future::select_all(recv).await;
            (batch, index)
        };
        match batch {
            Some(batch) => self.feeds[index].buffered.push_back((batch, 0)),
            // The reader stopped feeding (it reports why to the poll loop): nothing more
            // arrives.
            None => std::future::pending().await,
        }
    }

    /// While no input record waits: applies the updates handed over that are not later
    /// than the input so far. Later ones wait for an input record that reaches their time,
    /// so that the lower timestamp goes first even when the update was fetched first.
    pub(crate) async fn apply_idle(&mut self) -> Result<(), TableError> {
        self.receive();
        self.apply_until(Some(self.input_time)).await
    }

    /// The synchronous part of [`align`](Self::align): takes in what the reader handed over
    /// and notes the input's time. `true` when that was all there was to do (nothing
    /// buffered to apply, no confirmation to wait for), the usual case between two table
    /// updates: the worker then skips the asynchronous call (a future per input record).
    pub(crate) fn aligned_now(&mut self, t: Option<i64>) -> bool {
        if self.feeds.is_empty() {
            return true;
        }
        if !self.sync_wait.is_zero() {
            return false;
        }
        self.take_in(t);
        self.feeds.iter().all(|f| f.buffered.is_empty())
    }

    /// Takes in what the reader handed over and notes the input's time `t`.
    fn take_in(&mut self, t: Option<i64>) {
        self.receive();
        if let Some(t) = t {
            self.input_time = self.input_time.max(t);
        }
    }

    /// Before an input record with timestamp `t`: applies the updates handed over with a
    /// timestamp `≤ t`, after waiting (up to `table_sync_wait`) for the reader to confirm it
    /// handed over everything the topics held at `t`.
    pub(crate) async fn align(&mut self, t: Option<i64>) -> Result<(), TableError> {
        if self.feeds.is_empty() {
            return Ok(());
        }
        self.take_in(t);
        if let (Some(t), false) = (t, self.sync_wait.is_zero()) {
            self.wait_confirmed(t).await;
        }
        self.apply_until(t).await
    }

    /// Waits until every feed confirmed `t`, or `table_sync_wait` passed.
    async fn wait_confirmed(&mut self, t: i64) {
        let deadline = Instant::now() + self.sync_wait;
        for i in 0..self.feeds.len() {
            let state = self.feeds[i].receiver.state.clone();
            while state.confirmed_ms.load(Ordering::Acquire) < t {
                // An update later than `t` is buffered: what follows it in the topic applies
                // after it anyway, so there is nothing to wait for.
                if self.feeds[i].head_time().is_some_and(|ts| ts > t) {
                    break;
                }
                let notified = state.confirmed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                state.want(t);
                if state.confirmed_ms.load(Ordering::Acquire) >= t {
                    break;
                }
                if tokio::time::timeout_at(deadline.into(), notified)
                    .await
                    .is_err()
                {
                    tracing::debug!(
                        partition = self.partition,
                        t,
                        "table_sync_wait passed before the table reader confirmed"
                    );
                    return;
                }
                self.receive();
            }
        }
        // Everything confirmed was sent before the confirmation.
        self.receive();
    }

    /// Applies buffered updates in offset order while their timestamp is `≤ t` (all of them
    /// for `None`; an update without a timestamp always), each table's run in one RocksDB
    /// batch with its checkpoint.
    async fn apply_until(&mut self, t: Option<i64>) -> Result<(), TableError> {
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        for i in 0..self.feeds.len() {
            loop {
                let feed = &mut self.feeds[i];
                let Some((batch, from)) = feed.buffered.front() else {
                    break;
                };
                let due = batch.records[*from..]
                    .iter()
                    .take_while(|r| match (t, r.timestamp) {
                        (Some(t), Some(ts)) => ts <= t,
                        _ => true,
                    })
                    .take(4096) // bounded RocksDB batches
                    .count();
                if due == 0 {
                    break;
                }
                let (from, to) = (*from, *from + due);
                let spec = &self.specs[feed.index];
                let sorted = sort_out(spec, self.partition, batch, from..to, &self.policy);
                self.bad += sorted.skipped + sorted.dead_letters.len() as u64;
                if !sorted.dead_letters.is_empty() {
                    let Some(sink) = &self.sink else {
                        unreachable!("every consumer has a producer");
                    };
                    sink.send_records(sorted.dead_letters).await?;
                }
                store.write(
                    feed.index,
                    self.partition,
                    &sorted.entries,
                    sorted.next,
                    true,
                )?;
                if let Some(error) = sorted.failed {
                    return Err(error);
                }
                let bytes: usize = batch.records[from..to]
                    .iter()
                    .map(|r| batch.record_bytes(r))
                    .sum();
                feed.receiver
                    .state
                    .queued_bytes
                    .fetch_sub(bytes, Ordering::AcqRel);
                if to == batch.records.len() {
                    feed.buffered.pop_front();
                } else if let Some(front) = feed.buffered.front_mut() {
                    front.1 = to;
                }
            }
        }
        Ok(())
    }
}

/// Every co-partitioned table's topic must have `input`'s partition count.
fn check_copartitioned(
    source: &dyn TableSource,
    specs: &[TableSpec],
    input: &str,
) -> Result<(), TableError> {
    let Some(input_partitions) = source.partitions(input)? else {
        return Ok(()); // the consumer reports a missing input topic itself
    };
    for spec in specs {
        match source.partitions(&spec.topic)? {
            None => {
                return Err(TableError::TopicMissing {
                    table: spec.name.clone(),
                    topic: spec.topic.clone(),
                })
            }
            Some(n) if n != input_partitions => {
                return Err(TableError::CoPartitioning {
                    table: spec.name.clone(),
                    table_topic: spec.topic.clone(),
                    table_partitions: n,
                    input_topic: input.to_string(),
                    input_partitions,
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Checks co-partitioning of every input topic at start.
pub(crate) fn check_all(
    source: &dyn TableSource,
    config: &ConsumerConfig,
) -> Result<(), TableError> {
    let specs: Vec<TableSpec> = config
        .tables
        .iter()
        .filter(|t| !t.global)
        .cloned()
        .collect();
    if specs.is_empty() {
        return Ok(());
    }
    for topic in &config.topics {
        check_copartitioned(source, &specs, topic)?;
    }
    Ok(())
}
