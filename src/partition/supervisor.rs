//! Starts a worker per assigned partition and stops them on revoke and shutdown.
//!
//! Owned by the poll loop (through the consumer context), so only the poll-loop thread
//! touches it. Stopping never blocks the caller: [`Supervisor::begin_stop`] signals the
//! workers and returns a [`Stopping`] set that the poll loop drives to completion while it
//! keeps serving the partitions that stay.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::source::Source;
use super::worker::{Shared, StopSignal, Worker};
use crate::codec::Codec;
use crate::handler::Handler;
use crate::offset::PartitionProgress;
use crate::offset::TopicPartition;

struct WorkerHandle {
    stop: StopSignal,
    join: JoinHandle<()>,
    progress: Arc<PartitionProgress>,
}

/// How to stop workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopMode {
    /// Let in-flight records finish (up to the revoke timeout), flush, publish offsets.
    Graceful,
    /// Abort at once without flushing: the member was fenced or lost its partitions, so
    /// another member may already own them and nothing may be written on their behalf.
    Abort,
}

/// Workers told to stop, not yet known to have stopped.
pub(crate) struct Stopping {
    workers: Vec<(TopicPartition, WorkerHandle)>,
    deadline: Instant,
}

impl Stopping {
    /// Whether every worker finished, or the budget ran out (the rest are then aborted
    /// without a final flush, and their records stay uncommitted).
    pub(crate) fn poll_done(&mut self) -> bool {
        if self.workers.iter().all(|(_, h)| h.join.is_finished()) {
            return true;
        }
        if Instant::now() < self.deadline {
            return false;
        }
        let late: Vec<_> = self
            .workers
            .iter()
            .filter(|(_, h)| !h.join.is_finished())
            .map(|(tp, _)| tp.clone())
            .collect();
        tracing::error!(
            partitions = ?late,
            "workers did not stop within revoke_timeout + flush_timeout; aborting them without a final flush"
        );
        for (_, handle) in &self.workers {
            handle.join.abort();
        }
        true
    }

    /// The stopped partitions and their progress, for the final commit.
    pub(crate) fn progress(&self) -> Vec<(TopicPartition, Arc<PartitionProgress>)> {
        self.workers
            .iter()
            .map(|(tp, h)| (tp.clone(), h.progress.clone()))
            .collect()
    }
}

pub(crate) struct Supervisor<KC: Codec, VC: Codec, H> {
    workers: HashMap<TopicPartition, WorkerHandle>,
    /// Workers of lost partitions, winding down without flushing; kept so that each is
    /// joined, or aborted past its deadline.
    lost: Vec<Stopping>,
    shared: Arc<Shared<KC, VC, H>>,
    runtime: Handle,
}

impl<KC, VC, H> Supervisor<KC, VC, H>
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    /// The member's transactions, under exactly-once.
    pub(crate) fn transactions(&self) -> Option<Arc<crate::changelog::transaction::Transactions>> {
        self.shared.transactions.clone()
    }

    pub(crate) fn new(shared: Arc<Shared<KC, VC, H>>, runtime: Handle) -> Self {
        Self {
            workers: HashMap::new(),
            lost: Vec::new(),
            shared,
            runtime,
        }
    }

    /// Starts a worker for each newly assigned partition, on its records' source (already
    /// running ones are kept).
    pub(crate) fn assign(&mut self, partitions: Vec<(TopicPartition, Source)>) {
        if let Some(standbys) = &self.shared.standbys {
            standbys.assignment_seen();
        }
        for (tp, source) in partitions {
            if self.workers.contains_key(&tp) {
                continue;
            }
            let progress = Arc::new(PartitionProgress::default());
            let stop = StopSignal::default();
            let worker = Worker::new(
                self.shared.clone(),
                tp.clone(),
                progress.clone(),
                stop.clone(),
            );
            let span = tracing::info_span!("partition", topic = %tp.0, partition = tp.1);
            let join = self
                .runtime
                .spawn(tracing::Instrument::instrument(worker.run(source), span));
            self.shared
                .stats
                .partitions_insert(tp.clone(), progress.clone());
            self.workers.insert(
                tp.clone(),
                WorkerHandle {
                    stop,
                    join,
                    progress,
                },
            );
            self.shared
                .stats
                .assigned
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Tells the workers of `partitions` to stop, without waiting: they take no more
    /// records, in-flight records get the revoke timeout, then each flushes and publishes its
    /// durable offset. Drive the result with [`Stopping::poll_done`].
    pub(crate) fn begin_stop(&mut self, partitions: &[TopicPartition], mode: StopMode) -> Stopping {
        let mut workers = Vec::new();
        for tp in partitions {
            // One signal, lost or not: a worker woken by a plain stop must already see
            // whether the partition was lost (it used to run `on_revoked` and flush a lost
            // partition when it won that race, as tests/zombie.rs showed).
            if let Some(handle) = self.workers.remove(tp) {
                match mode {
                    StopMode::Graceful => handle.stop.stop(),
                    // The worker cancels its in-flight handler, runs `on_lost` and exits
                    // without flushing; it is aborted if it outlasts the deadline.
                    StopMode::Abort => handle.stop.lose(),
                }
                workers.push((tp.clone(), handle));
            }
        }
        let config = &self.shared.config;
        Stopping {
            workers,
            deadline: Instant::now() + config.revoke_timeout + config.flush_timeout,
        }
    }

    /// Forgets stopped partitions once their final commit is known.
    pub(crate) fn release(&self, stopped: &Stopping) {
        for (tp, _) in &stopped.workers {
            self.shared.stats.partitions_remove(tp);
        }
        self.shared.stats.revoked.fetch_add(
            stopped.workers.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Releases lost partitions at once; their workers wind down in the background.
    pub(crate) fn lose(&mut self, partitions: &[TopicPartition]) {
        // Under exactly-once the open transaction may hold their flushes: it must not
        // commit on behalf of partitions another member may own by now.
        if let Some(txn) = &self.shared.transactions {
            if partitions.iter().any(|tp| self.workers.contains_key(tp)) {
                txn.poison(format!("partitions lost: {partitions:?}"));
            }
        }
        let stopping = self.begin_stop(partitions, StopMode::Abort);
        self.release(&stopping);
        self.lost.push(stopping);
    }

    /// Forgets the workers of lost partitions that finished (or aborts them past their
    /// deadline). Returns whether some are still winding down.
    pub(crate) fn reap_lost(&mut self) -> bool {
        self.lost.retain_mut(|s| !s.poll_done());
        !self.lost.is_empty()
    }

    pub(crate) fn assigned(&self) -> Vec<TopicPartition> {
        self.workers.keys().cloned().collect()
    }

    /// Progress of every running worker, for interval commits.
    pub(crate) fn progress(&self) -> Vec<(TopicPartition, Arc<PartitionProgress>)> {
        self.workers
            .iter()
            .map(|(tp, h)| (tp.clone(), h.progress.clone()))
            .collect()
    }
}
