//! Observability: rebalance and restore listeners, a stats snapshot, and [`metrics`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::offset::PartitionProgress;
use crate::table::GlobalTableCounters;

mod listener;
pub mod metrics;

pub use listener::{NoopListener, RebalanceListener, RestoreListener};

/// Figures of one assigned partition.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PartitionStats {
    /// Next offset not yet processed; -1 before the first record.
    pub processed_next: i64,
    /// Next offset whose effects are not yet durable (what a commit would send); -1: none.
    pub durable_next: i64,
    /// The committed offset the broker confirmed for the group; -1 before the first commit.
    pub committed_next: i64,
    /// Commits of this partition that failed (each is retried).
    pub commit_failures: u64,
    /// High watermark (end offset) of the partition, from the client's statistics (refreshed
    /// every `stats_interval` while the partition is fetched); -1 until known.
    pub high_watermark: i64,
    /// Records after the committed offset: `high_watermark - committed_next` (from the start
    /// of the partition before the first commit); -1 until the high watermark is known.
    pub committed_lag: i64,
    /// Records not yet processed: `high_watermark - processed_next`; -1 until known.
    pub processed_lag: i64,
    /// Records fetched and not handled yet: in the partition's librdkafka queue (from its
    /// statistics, updated every `stats_interval`) and in the batch its worker is on. A
    /// partition whose queue holds its budget is not fetched until its worker takes records
    /// out.
    pub queued: u64,
    /// Bytes of those records (librdkafka's count for its queue, keys, values and headers
    /// plus 64 bytes each for the batch).
    pub queued_bytes: u64,
    /// Whether restore finished and records are processed.
    pub ready: bool,
    /// Changelog records replayed by the restore at assignment.
    pub restored_records: u64,
    /// Restore rate, changelog records per second.
    pub restore_rate: f64,
    /// Records skipped: already in restored state, or bad input under `ErrorPolicy::Skip`.
    pub skipped: u64,
    /// Another owner took over this partition's changelogs (this process was a zombie for
    /// it): it is no longer processed or committed here until it is assigned again.
    pub fenced: bool,
    /// Records handled successfully.
    pub handled: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Records late for every window they fall in (never applied).
    pub late: u64,
    /// Pending timers (window closes included).
    pub timers: u64,
    /// Records handled per second over the last stats interval.
    pub records_per_second: f64,
    /// Duration of the last flush (changelog produce, acknowledgements, RocksDB write).
    pub last_flush_duration: Duration,
    /// Changelog data records the last flush wrote.
    pub last_flush_records: u64,
    /// Restore progress while restoring (before `ready`): records read and to read in all.
    pub restore_done: u64,
    /// See [`restore_done`](Self::restore_done).
    pub restore_total: u64,
    /// Estimated time left of the restore at its current rate; `None` when not restoring
    /// (or no rate yet).
    pub restore_eta: Option<Duration>,
    /// Co-partitioned table records read by the bootstrap at assignment (see
    /// [`crate::table`]), and its rate in records per second.
    pub table_bootstrapped: u64,
    /// See [`table_bootstrapped`](Self::table_bootstrapped).
    pub table_bootstrap_rate: f64,
    /// Table records left to read before the partition's first record (while bootstrapping).
    pub table_bootstrap_remaining: u64,
}

/// Figures of one global table ([`crate::table`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GlobalTableStats {
    /// Its topic.
    pub topic: String,
    /// Partitions of the topic being read.
    pub partitions: u64,
    /// Records read by the bootstrap at start.
    pub bootstrapped: u64,
    /// Records applied since.
    pub applied: u64,
    /// Records that could not be decoded (skipped or dead-lettered).
    pub skipped: u64,
}

/// A point-in-time view of the consumer.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Assigned partitions, by `(topic, partition)`.
    pub partitions: BTreeMap<(String, i32), PartitionStats>,
    /// Records handled successfully since start.
    pub processed: u64,
    /// Partitions assigned since start.
    pub assigned: u64,
    /// Partitions revoked since start.
    pub revoked: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Offset commits that failed, across partitions.
    pub commit_failures: u64,
    /// Global tables, by name.
    pub global_tables: BTreeMap<String, GlobalTableStats>,
    /// Standby replicas this member keeps (see
    /// [`StandbyReplicas`](crate::StandbyReplicas)), by `(topic, partition)`.
    pub standbys: BTreeMap<(String, i32), crate::StandbyStats>,
    /// Partitions assigned here that were standby replicas (warm when assigned).
    pub standby_promotions: u64,
    /// Errors librdkafka reported while fetching a partition (each retry counts). Those that
    /// cannot heal (an unreadable batch, an offset out of range without a reset policy, a
    /// refused topic) end [`run`](crate::StatefulConsumer::run) with an error.
    pub fetch_errors: u64,
    /// Exactly-once: transactions committed since start.
    pub transactions_committed: u64,
    /// Exactly-once: transactions aborted (each ends `run` with
    /// [`Error::Transaction`](crate::Error::Transaction)).
    pub transactions_aborted: u64,
}

#[derive(Debug, Default)]
pub(crate) struct StatsInner {
    pub(crate) partitions: Mutex<BTreeMap<(String, i32), Arc<PartitionProgress>>>,
    pub(crate) processed: AtomicU64,
    pub(crate) assigned: AtomicU64,
    pub(crate) revoked: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) commit_failures: AtomicU64,
    global_tables: Mutex<Vec<Arc<GlobalTableCounters>>>,
    standbys: Mutex<BTreeMap<(String, i32), crate::StandbyStats>>,
    pub(crate) standby_promotions: AtomicU64,
    pub(crate) fetch_errors: AtomicU64,
    /// Transactions committed and aborted (exactly-once).
    pub(crate) transactions: Arc<crate::offset::TransactionCounts>,
}

impl StatsInner {
    pub(crate) fn set_global_tables(&self, tables: Vec<Arc<GlobalTableCounters>>) {
        *self
            .global_tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = tables;
    }

    fn global_table_stats(&self) -> BTreeMap<String, GlobalTableStats> {
        let tables = self
            .global_tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        tables
            .iter()
            .map(|t| {
                let stats = GlobalTableStats {
                    topic: t.topic.clone(),
                    partitions: load(&t.partitions),
                    bootstrapped: load(&t.bootstrapped),
                    applied: load(&t.applied),
                    skipped: load(&t.skipped),
                };
                (t.name.clone(), stats)
            })
            .collect()
    }

    fn partitions(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<(String, i32), Arc<PartitionProgress>>> {
        // A panic while holding this lock cannot leave the map inconsistent: use it anyway.
        self.partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn partitions_insert(&self, tp: (String, i32), progress: Arc<PartitionProgress>) {
        self.partitions().insert(tp, progress);
    }

    pub(crate) fn partitions_remove(&self, tp: &(String, i32)) {
        self.partitions().remove(tp);
    }

    pub(crate) fn standby_set(&self, tp: (String, i32), stats: crate::StandbyStats) {
        self.standbys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tp, stats);
    }

    pub(crate) fn standby_remove(&self, tp: &(String, i32)) {
        self.standbys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tp);
    }

    pub(crate) fn progress_of(&self, tp: &(String, i32)) -> Option<Arc<PartitionProgress>> {
        self.partitions().get(tp).cloned()
    }
}

/// Time left of a running restore at its rate so far.
fn restore_eta(p: &PartitionProgress) -> Option<Duration> {
    if p.ready.load(Ordering::Relaxed) {
        return None;
    }
    let (done, total) = (
        p.restore_done.load(Ordering::Relaxed),
        p.restore_total.load(Ordering::Relaxed),
    );
    let started = p.restore_started.get()?;
    let elapsed = started.elapsed().as_secs_f64();
    if done == 0 || elapsed <= 0.0 {
        return None;
    }
    let rate = done as f64 / elapsed;
    Some(Duration::from_secs_f64(
        total.saturating_sub(done) as f64 / rate,
    ))
}

/// A cheap handle to the consumer's figures; take it before `run` and read it any time.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub(crate) inner: Arc<StatsInner>,
}

impl Stats {
    /// The current figures.
    pub fn snapshot(&self) -> StatsSnapshot {
        let inner = &self.inner;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let partitions = inner
            .partitions()
            .iter()
            .map(|(tp, p)| {
                let high_watermark = p.high_watermark.load(Ordering::Relaxed);
                let processed_next = p.processed_next.load(Ordering::Relaxed);
                let committed_next = p.committed_next.load(Ordering::Relaxed);
                let lag = |next: i64| {
                    if high_watermark < 0 {
                        -1
                    } else {
                        (high_watermark - next.max(0)).max(0)
                    }
                };
                let stats = PartitionStats {
                    processed_next,
                    durable_next: p.durable_next(),
                    committed_next,
                    commit_failures: load(&p.commit_failures),
                    high_watermark,
                    committed_lag: lag(committed_next),
                    processed_lag: lag(processed_next.max(committed_next)),
                    queued: p.queue.waiting_records() as u64,
                    queued_bytes: p.queue.waiting_bytes() as u64,
                    ready: p.ready.load(Ordering::Relaxed),
                    restored_records: load(&p.restored_records),
                    restore_rate: f64::from_bits(load(&p.restore_rate_bits)),
                    skipped: load(&p.skipped),
                    fenced: p.fenced.load(Ordering::Relaxed),
                    handled: load(&p.handled),
                    dead_lettered: load(&p.dead_lettered),
                    late: load(&p.late),
                    timers: load(&p.timers),
                    records_per_second: f64::from_bits(load(&p.rate_bits)),
                    last_flush_duration: Duration::from_micros(load(&p.last_flush_us)),
                    last_flush_records: load(&p.last_flush_records),
                    restore_done: load(&p.restore_done),
                    restore_total: load(&p.restore_total),
                    restore_eta: restore_eta(p),
                    table_bootstrapped: load(&p.table_bootstrapped),
                    table_bootstrap_rate: f64::from_bits(load(&p.table_rate_bits)),
                    table_bootstrap_remaining: load(&p.table_total)
                        .saturating_sub(load(&p.table_done)),
                };
                (tp.clone(), stats)
            })
            .collect();
        StatsSnapshot {
            partitions,
            processed: load(&inner.processed),
            assigned: load(&inner.assigned),
            revoked: load(&inner.revoked),
            dead_lettered: load(&inner.dead_lettered),
            commit_failures: load(&inner.commit_failures),
            global_tables: inner.global_table_stats(),
            standbys: inner
                .standbys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            standby_promotions: load(&inner.standby_promotions),
            fetch_errors: load(&inner.fetch_errors),
            transactions_committed: load(&inner.transactions.committed),
            transactions_aborted: load(&inner.transactions.aborted),
        }
    }
}
