//! Starts a worker per assigned partition and stops them on revoke and shutdown.
//!
//! Owned by the poll loop (through the consumer context), so only the poll-loop thread
//! touches it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::OwnedMessage;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::router::{Router, TopicPartition};
use super::worker::{Shared, Worker};
use crate::codec::Codec;
use crate::handler::Handler;
use crate::offset::PartitionProgress;

/// Extra time, on top of the revoke timeout, for the final flush of a stopping worker.
const FLUSH_GRACE: Duration = Duration::from_secs(30);

struct WorkerHandle {
    stop: CancellationToken,
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

pub(crate) struct Supervisor<KC: Codec, VC: Codec, H> {
    pub(crate) router: Router<OwnedMessage>,
    workers: HashMap<TopicPartition, WorkerHandle>,
    shared: Arc<Shared<KC, VC, H>>,
    runtime: Handle,
}

impl<KC, VC, H> Supervisor<KC, VC, H>
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    pub(crate) fn new(shared: Arc<Shared<KC, VC, H>>, runtime: Handle) -> Self {
        Self {
            router: Router::new(shared.config.queue_capacity),
            workers: HashMap::new(),
            shared,
            runtime,
        }
    }

    /// Starts workers for newly assigned partitions (already running ones are kept).
    pub(crate) fn assign(&mut self, partitions: &[TopicPartition]) {
        for tp in partitions {
            if self.workers.contains_key(tp) {
                continue;
            }
            let progress = Arc::new(PartitionProgress::default());
            let rx = self.router.open(tp.clone(), progress.clone());
            let stop = CancellationToken::new();
            let worker = Worker::new(
                self.shared.clone(),
                tp.clone(),
                progress.clone(),
                stop.clone(),
            );
            let join = self.runtime.spawn(worker.run(rx));
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
        }
        self.shared.stats.assigned.fetch_add(
            partitions.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Stops the workers of `partitions` (all of them in parallel) and waits for them.
    /// Returns the partitions' progress, for the final commit.
    pub(crate) fn stop(
        &mut self,
        partitions: &[TopicPartition],
        mode: StopMode,
    ) -> Vec<(TopicPartition, Arc<PartitionProgress>)> {
        let mut stopping = Vec::new();
        for tp in partitions {
            self.router.close(tp);
            if let Some(handle) = self.workers.remove(tp) {
                handle.stop.cancel();
                if mode == StopMode::Abort {
                    handle.join.abort();
                }
                stopping.push((tp.clone(), handle));
            }
        }
        let budget = self.shared.config.revoke_timeout + FLUSH_GRACE;
        let joins = stopping.iter_mut().map(|(_, h)| &mut h.join);
        let finished = self.runtime.block_on(async {
            tokio::time::timeout(budget, futures::future::join_all(joins)).await
        });
        if finished.is_err() {
            tracing::error!(
                ?budget,
                "workers did not stop in time; aborting them without a final flush"
            );
            for (_, handle) in &stopping {
                handle.join.abort();
            }
        }
        for (tp, _) in &stopping {
            self.shared.stats.partitions_remove(tp);
        }
        self.shared
            .stats
            .revoked
            .fetch_add(stopping.len() as u64, std::sync::atomic::Ordering::Relaxed);
        stopping
            .into_iter()
            .map(|(tp, h)| (tp, h.progress))
            .collect()
    }

    pub(crate) fn assigned(&self) -> Vec<TopicPartition> {
        self.workers.keys().cloned().collect()
    }

    /// Progress of every running worker, for interval commits.
    pub(crate) fn progress(
        &self,
    ) -> impl Iterator<Item = (&TopicPartition, &Arc<PartitionProgress>)> {
        self.workers.iter().map(|(tp, h)| (tp, &h.progress))
    }
}
