//! The rdkafka consumer context: rebalance callbacks glue the group protocol to the
//! supervisor. They run inside `poll()` on the poll-loop thread.

use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

use crate::codec::Codec;
use crate::handler::Handler;
use crate::observe::{RebalanceListener, StatsInner};
use crate::offset::PartitionProgress;
use crate::partition::router::TopicPartition;
use crate::partition::supervisor::{StopMode, Supervisor};

pub(crate) struct LoopContext<KC: Codec, VC: Codec, H> {
    supervisor: Mutex<Supervisor<KC, VC, H>>,
    listener: Arc<dyn RebalanceListener>,
    stats: Arc<StatsInner>,
}

impl<KC, VC, H> LoopContext<KC, VC, H>
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    pub(crate) fn new(
        supervisor: Supervisor<KC, VC, H>,
        listener: Arc<dyn RebalanceListener>,
        stats: Arc<StatsInner>,
    ) -> Self {
        Self {
            supervisor: Mutex::new(supervisor),
            listener,
            stats,
        }
    }

    pub(crate) fn stats_inner(&self) -> &StatsInner {
        &self.stats
    }

    /// Never hold this across `consumer.poll()`: the callbacks lock it too.
    pub(crate) fn supervisor(&self) -> MutexGuard<'_, Supervisor<KC, VC, H>> {
        self.supervisor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub(crate) fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// Commits the durable offsets of `partitions` that moved since their last commit.
pub(crate) fn commit<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: &[(TopicPartition, Arc<PartitionProgress>)],
    mode: CommitMode,
) -> KafkaResult<()> {
    let mut tpl = TopicPartitionList::new();
    let mut sent = Vec::new();
    for ((topic, partition), progress) in partitions {
        if let Some(next) = progress.to_commit() {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(next))?;
            sent.push((progress, next));
        }
    }
    if tpl.count() == 0 {
        return Ok(());
    }
    consumer.commit(&tpl, mode)?;
    if matches!(mode, CommitMode::Sync) {
        for (progress, next) in sent {
            progress
                .committed_next
                .fetch_max(next, std::sync::atomic::Ordering::AcqRel);
        }
        tracing::debug!(offsets = ?tpl, "committed");
    }
    Ok(())
}

impl<KC: Codec, VC: Codec, H: Send + Sync + 'static> ClientContext for LoopContext<KC, VC, H> {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", fac, "{log_message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, "{log_message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
        }
    }
}

impl<KC, VC, H> ConsumerContext for LoopContext<KC, VC, H>
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    /// Revoke: stop routing, let in-flight records finish, flush, commit synchronously —
    /// all before librdkafka hands the partitions to someone else.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let partitions = partitions_of(tpl);
                let lost = consumer.assignment_lost();
                let _span = tracing::info_span!("revoke", ?partitions, lost).entered();
                // Lost partitions (session expired) may already belong to another member.
                let mode = if lost {
                    StopMode::Abort
                } else {
                    StopMode::Graceful
                };
                let stopped = self.supervisor().stop(&partitions, mode);
                if !lost {
                    if let Err(error) = commit(consumer, &stopped, CommitMode::Sync) {
                        tracing::warn!(%error, "commit on revoke failed; the next owner reprocesses from the last commit");
                    }
                }
                tracing::info!("partitions revoked");
                self.listener.on_revoked(&partitions);
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance error"),
        }
    }

    /// Assign: start workers; each restores its state before processing, off this thread.
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions = partitions_of(tpl);
            tracing::info!(?partitions, "partitions assigned");
            self.supervisor().assign(&partitions);
            self.listener.on_assigned(&partitions);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                for e in offsets.elements() {
                    if let (Offset::Offset(next), Some(progress)) = (
                        e.offset(),
                        self.stats
                            .progress_of(&(e.topic().to_string(), e.partition())),
                    ) {
                        progress
                            .committed_next
                            .fetch_max(next, std::sync::atomic::Ordering::AcqRel);
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "offset commit failed; retried on the next interval")
            }
        }
    }
}
