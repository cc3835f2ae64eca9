//! The rdkafka consumer context: the glue between librdkafka's callbacks and the poll loop.
//!
//! Every callback runs inside `poll()` on the poll-loop thread. None of them blocks:
//! - assign: start workers (each restores its state before processing, off this thread);
//! - revoke: tell the revoked partitions' workers to stop and *defer* librdkafka's unassign
//!   until they have drained, flushed and committed ([`PendingRevoke`], driven by the poll
//!   loop). Meanwhile the loop keeps fetching, routing and committing the partitions that
//!   stay (cooperative rebalances), and librdkafka holds the rebalance until the unassign;
//! - commit results update each partition's committed offset ([`commit::record_result`]);
//! - statistics give each partition's high watermark.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::TopicPartitionList;

use super::commit;
use super::subscription::Subscription;
use crate::codec::Codec;
use crate::handler::Handler;
use crate::observe::{RebalanceListener, StatsInner};
use crate::offset::TopicPartition;
use crate::partition::source::{FetchError, Source};
use crate::partition::supervisor::{StopMode, Stopping, Supervisor};

/// Splits a partition's queue off the consumer: its records' source for the worker.
type Splitter = Box<dyn Fn(&str, i32) -> Option<Source> + Send + Sync>;

/// A revoke whose workers are draining; librdkafka's unassign waits for it.
pub(crate) struct PendingRevoke {
    /// The revoked partitions as librdkafka listed them (owned copy: the event's list is
    /// freed when the callback returns).
    pub(crate) tpl: TopicPartitionList,
    pub(crate) partitions: Vec<TopicPartition>,
    pub(crate) stopping: Stopping,
    pub(crate) phase: RevokePhase,
    pub(crate) started: Instant,
}

/// Where a pending revoke stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RevokePhase {
    /// Waiting for the workers to finish their in-flight record and final flush.
    Draining,
    /// Final offsets submitted; waiting for the broker's answer until the deadline.
    Committing { deadline: Instant },
}

/// What the rebalance callbacks leave for the poll loop.
#[derive(Default)]
pub(crate) struct RebalanceState {
    pub(crate) pending_revoke: Option<PendingRevoke>,
    /// Partitions of topics this consumer did not subscribe to, from the last assignment.
    pub(crate) foreign: Vec<TopicPartition>,
    /// Set when an assignment gave this consumer partitions and none of them was foreign.
    pub(crate) clean_assignment: bool,
}

pub(crate) struct LoopContext<KC: Codec, VC: Codec, H> {
    /// Splits a partition's queue off the consumer this context belongs to (it owns the
    /// context, so the closure holds it weakly); set right after the consumer is created.
    splitter: std::sync::OnceLock<Splitter>,
    /// Errors librdkafka reports on a partition's queue, sent by its worker to the poll
    /// loop, which decides (see `errors`).
    errors: tokio::sync::mpsc::UnboundedSender<FetchError>,
    supervisor: Mutex<Supervisor<KC, VC, H>>,
    rebalance: Mutex<RebalanceState>,
    subscription: Subscription,
    listener: Arc<dyn RebalanceListener>,
    pub(crate) stats: Arc<StatsInner>,
    /// Set once the poll loop has stopped every worker and the consumer is being dropped:
    /// librdkafka's closing revoke must then be completed at once, or the close never ends.
    closing: AtomicBool,
    /// The last connection failure librdkafka logged (a TLS handshake or SASL error says
    /// why only in its log line; the error event carries just a code).
    last_failure: Mutex<Option<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only the poll thread locks these; a panic there ends the consumer anyway.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<KC, VC, H> LoopContext<KC, VC, H>
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    pub(crate) fn new(
        supervisor: Supervisor<KC, VC, H>,
        subscription: Subscription,
        (listener, stats): (Arc<dyn RebalanceListener>, Arc<StatsInner>),
        errors: tokio::sync::mpsc::UnboundedSender<FetchError>,
    ) -> Self {
        Self {
            splitter: std::sync::OnceLock::new(),
            errors,
            supervisor: Mutex::new(supervisor),
            rebalance: Mutex::new(RebalanceState::default()),
            subscription,
            listener,
            stats,
            closing: AtomicBool::new(false),
            last_failure: Mutex::new(None),
        }
    }

    /// Gives the context a handle on its consumer (for splitting partition queues).
    pub(crate) fn set_consumer(
        &self,
        consumer: &Arc<BaseConsumer<Self>>,
        queue_bytes: usize,
        batch_reads: bool,
    ) {
        let consumer = Arc::downgrade(consumer);
        let errors = self.errors.clone();
        let _ = self.splitter.set(Box::new(move |topic, partition| {
            let consumer = consumer.upgrade()?;
            let queue = consumer.split_partition_queue(topic, partition)?;
            Some(Source::kafka(
                &consumer,
                queue,
                (topic.to_string(), partition),
                errors.clone(),
                (queue_bytes, batch_reads),
            ))
        }));
    }

    /// Why the last connection to a broker failed, as librdkafka logged it.
    pub(crate) fn last_failure(&self) -> Option<String> {
        lock(&self.last_failure).clone()
    }

    /// From now on revokes are completed inside the callback (see `closing`).
    pub(crate) fn set_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    pub(crate) fn listener(&self) -> &dyn RebalanceListener {
        self.listener.as_ref()
    }

    /// Never hold this across `consumer.poll()`: the callbacks lock it too.
    pub(crate) fn supervisor(&self) -> MutexGuard<'_, Supervisor<KC, VC, H>> {
        lock(&self.supervisor)
    }

    /// Never hold this across `consumer.poll()`: the callbacks lock it too.
    pub(crate) fn rebalance_state(&self) -> MutexGuard<'_, RebalanceState> {
        lock(&self.rebalance)
    }

    fn on_assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let all = partitions_of(tpl);
        crate::observe::metrics::rebalance("assigned", all.len());
        let (own, foreign): (Vec<_>, Vec<_>) = all
            .iter()
            .cloned()
            .partition(|(topic, _)| self.subscription.matches(topic));
        // Each new partition's queue is split off the main queue before the partition is
        // assigned, so none of its records reaches the main queue (see `partition::source`).
        let sources = self.split_queues(&own);
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        };
        if let Err(error) = result {
            tracing::error!(%error, "assign failed");
        }
        // librdkafka keeps an application pause across unassign/assign (librdkafka #1849):
        // a partition paused before it was revoked would come back paused and never be
        // fetched again. Start every partition of ours fetching; never fetch foreign ones.
        if !own.is_empty() {
            if let Err(error) = consumer.resume(&list_of(&own)) {
                tracing::warn!(%error, "resume of assigned partitions failed");
            }
        }
        if !foreign.is_empty() {
            tracing::error!(
                subscribed = ?self.subscription.topics(), assigned = ?foreign,
                "the group assigned partitions of topics this consumer does not subscribe to; \
                 they are not processed"
            );
            if let Err(error) = consumer.pause(&list_of(&foreign)) {
                tracing::warn!(%error, "pausing foreign partitions failed");
            }
        }
        tracing::info!(partitions = ?own, "partitions assigned");
        self.supervisor().assign(sources);
        {
            let mut state = self.rebalance_state();
            state.clean_assignment = !own.is_empty() && foreign.is_empty();
            state.foreign.extend(foreign);
        }
        self.listener.on_assigned(&own);
    }

    /// The split queues of the partitions of `own` that have no worker yet.
    fn split_queues(&self, own: &[TopicPartition]) -> Vec<(TopicPartition, Source)> {
        let Some(split) = self.splitter.get() else {
            tracing::error!("partitions assigned before the consumer was set up");
            return Vec::new();
        };
        let running = self.supervisor().assigned();
        own.iter()
            .filter(|tp| !running.contains(tp))
            .filter_map(|tp| match split(&tp.0, tp.1) {
                Some(source) => Some((tp.clone(), source)),
                None => {
                    tracing::error!(topic = %tp.0, partition = tp.1, "cannot split the partition's queue");
                    None
                }
            })
            .collect()
    }

    fn on_revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let partitions = partitions_of(tpl);
        let lost = consumer.assignment_lost();
        tracing::info!(?partitions, lost, "partitions revoked; draining");
        let kind = if lost { "lost" } else { "revoked" };
        crate::observe::metrics::rebalance(kind, partitions.len());
        self.rebalance_state()
            .foreign
            .retain(|tp| !partitions.contains(tp));
        if lost || self.closing.load(Ordering::Acquire) {
            // Closing: every worker was stopped and committed already.
            // Lost partitions (session expired) may already belong to another member: write
            // nothing more for them, commit nothing, hand them back at once.
            self.supervisor().lose(&partitions);
            complete_unassign(consumer, tpl);
            self.listener.on_revoked(&partitions);
            return;
        }
        let stopping = self
            .supervisor()
            .begin_stop(&partitions, StopMode::Graceful);
        self.rebalance_state().pending_revoke = Some(PendingRevoke {
            tpl: tpl.clone(),
            partitions,
            stopping,
            phase: RevokePhase::Draining,
            started: Instant::now(),
        });
    }
}

/// Tells librdkafka the revoked partitions are released, completing its side of the rebalance.
pub(crate) fn complete_unassign<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tpl: &TopicPartitionList,
) {
    let result = match consumer.rebalance_protocol() {
        RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
        _ => consumer.unassign(),
    };
    if let Err(error) = result {
        tracing::warn!(%error, "unassign failed");
    }
}

pub(crate) fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

pub(crate) fn list_of(partitions: &[TopicPartition]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in partitions {
        tpl.add_partition(topic, *partition);
    }
    tpl
}

impl<KC: Codec, VC: Codec, H: Send + Sync + 'static> ClientContext for LoopContext<KC, VC, H> {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if fac == "FAIL" && super::connect::is_problem(level) {
            *lock(&self.last_failure) = Some(log_message.to_string());
        }
        if fac == "ERROR" {
            if let Some(error) = super::errors::partition_error_logged(log_message) {
                let _ = self.errors.send(error);
            }
        }
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

    /// High watermarks for lag, from librdkafka's periodic statistics.
    fn stats(&self, statistics: Statistics) {
        for (name, topic) in &statistics.topics {
            for (&partition, p) in &topic.partitions {
                if partition < 0 || p.hi_offset < 0 {
                    continue;
                }
                if let Some(progress) = self.stats.progress_of(&(name.clone(), partition)) {
                    progress
                        .high_watermark
                        .store(p.hi_offset, std::sync::atomic::Ordering::Relaxed);
                    // What waits in the partition's (split) queue in librdkafka.
                    let queue = &progress.queue;
                    queue.records.store(
                        p.fetchq_cnt.max(0) as usize,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    queue
                        .bytes
                        .store(p.fetchq_size as usize, std::sync::atomic::Ordering::Relaxed);
                    // The group's committed offset as librdkafka fetched it at assignment
                    // (and after each commit): known before this consumer commits anything.
                    if p.committed_offset >= 0 {
                        progress.commit_succeeded(p.committed_offset);
                    }
                }
            }
        }
    }
}

impl<KC, VC, H> ConsumerContext for LoopContext<KC, VC, H>
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    /// Replaces rdkafka's default, which assigns and unassigns inside the callback: a revoke
    /// must wait for its workers, and waiting here would stop the poll loop (no fetching for
    /// the partitions that stay, no commits, no shutdown) for up to the revoke timeout.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.on_assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.on_revoke(consumer, tpl),
            other => {
                let code: rdkafka::types::RDKafkaErrorCode = other.into();
                tracing::warn!(%code, "rebalance error; unassigning");
                complete_unassign(consumer, tpl);
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        commit::record_result(&self.stats, &result, offsets);
    }
}
