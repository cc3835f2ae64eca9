//! The poll loop: the only code that touches the group consumer. It polls (which also serves
//! rebalance callbacks and heartbeats), routes records to partition queues, pauses and
//! resumes partitions, and commits. It never runs user code.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::context::{commit, LoopContext};
use crate::codec::Codec;
use crate::config::{CloseBehavior, ConsumerConfig};
use crate::error::Error;
use crate::handler::Handler;
use crate::partition::router::TopicPartition;
use crate::partition::supervisor::StopMode;

/// Upper bound of one blocking poll: how quickly shutdown, worker failures, resumes and
/// commits are noticed when no records arrive.
const POLL_TIMEOUT: Duration = Duration::from_millis(50);
/// Poll timeout while some partition is paused: its queue drains in milliseconds, and
/// waiting [`POLL_TIMEOUT`] before moving its overflow in would leave its worker idle.
const BACKLOG_POLL_TIMEOUT: Duration = Duration::from_millis(1);
/// Records taken per wake-up before flow control and commits get a turn.
const MAX_BATCH: usize = 1024;

type Ctx<KC, VC, H> = LoopContext<KC, VC, H>;

pub(crate) struct PollLoop<KC: Codec, VC: Codec, H: Handler<KC::Item, VC::Item>> {
    pub(crate) consumer: BaseConsumer<Ctx<KC, VC, H>>,
    pub(crate) config: Arc<ConsumerConfig>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) failures: mpsc::UnboundedReceiver<Error>,
}

impl<KC, VC, H> PollLoop<KC, VC, H>
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    /// Runs until shutdown or a fatal error, then stops the workers and closes.
    pub(crate) fn run(mut self) -> Result<(), Error> {
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        self.consumer.subscribe(&topics)?;
        tracing::info!(group = %self.config.group_id, instance = ?self.config.instance_id, ?topics, "subscribed");
        let result = self.poll_until_stopped();
        self.close(&result);
        result
    }

    fn poll_until_stopped(&mut self) -> Result<(), Error> {
        let mut last_commit = Instant::now();
        loop {
            if self.shutdown.is_cancelled() {
                return Ok(());
            }
            if let Ok(err) = self.failures.try_recv() {
                return Err(err);
            }
            self.poll_batch()?;
            self.flow_control();
            if last_commit.elapsed() >= self.config.commit_interval {
                self.commit_all(CommitMode::Async);
                last_commit = Instant::now();
            }
        }
    }

    /// Waits up to [`POLL_TIMEOUT`] for a record, then takes what else is ready.
    fn poll_batch(&self) -> Result<(), Error> {
        let backlog = self.consumer.context().supervisor().router.has_backlog();
        let mut timeout = if backlog {
            BACKLOG_POLL_TIMEOUT
        } else {
            POLL_TIMEOUT
        };
        let mut batch = Vec::new();
        while batch.len() < MAX_BATCH {
            match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(msg)) => batch.push(msg),
                Some(Err(error)) => {
                    self.check_fatal()?;
                    // Transient: librdkafka retries by itself. Connection failures are already
                    // logged by librdkafka (through rdkafka's log), so they stay at debug here.
                    let connection = matches!(
                        error.rdkafka_error_code(),
                        Some(
                            RDKafkaErrorCode::BrokerTransportFailure
                                | RDKafkaErrorCode::AllBrokersDown
                        )
                    );
                    if connection {
                        tracing::debug!(%error, "consumer error");
                    } else {
                        tracing::warn!(%error, "consumer error");
                    }
                    break;
                }
            }
            timeout = Duration::ZERO;
        }
        if !batch.is_empty() {
            self.route(batch);
        }
        Ok(())
    }

    fn route(&self, batch: Vec<BorrowedMessage<'_>>) {
        let mut to_pause = TopicPartitionList::new();
        {
            let mut supervisor = self.consumer.context().supervisor();
            for msg in batch {
                let tp: TopicPartition = (msg.topic().to_string(), msg.partition());
                if let Some((topic, partition)) = supervisor.router.route(&tp, msg.detach()) {
                    to_pause.add_partition(&topic, partition);
                }
            }
        }
        if to_pause.count() > 0 {
            tracing::debug!(partitions = ?to_pause, "queue full: pausing");
            self.consumer.context().stats_inner().pauses.fetch_add(
                to_pause.count() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            if let Err(error) = self.consumer.pause(&to_pause) {
                tracing::warn!(%error, "pause failed; records are kept in the overflow");
            }
        }
    }

    fn flow_control(&self) {
        let resume = self.consumer.context().supervisor().router.drain_overflow();
        if resume.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &resume {
            tpl.add_partition(topic, *partition);
        }
        tracing::debug!(partitions = ?tpl, "queue drained: resuming");
        if let Err(error) = self.consumer.resume(&tpl) {
            tracing::warn!(%error, "resume failed");
        }
    }

    fn commit_all(&self, mode: CommitMode) {
        let progress: Vec<_> = {
            let supervisor = self.consumer.context().supervisor();
            supervisor
                .progress()
                .map(|(tp, p)| (tp.clone(), p.clone()))
                .collect()
        };
        if let Err(error) = commit(&self.consumer, &progress, mode) {
            tracing::warn!(%error, "offset commit failed");
        }
    }

    /// A fatal librdkafka error ends the consumer; fencing gets its own error.
    fn check_fatal(&self) -> Result<(), Error> {
        match self.consumer.client().fatal_error() {
            None => Ok(()),
            Some((RDKafkaErrorCode::FencedInstanceId, _)) => Err(Error::Fenced {
                instance_id: self.config.instance_id.clone().unwrap_or_default(),
            }),
            Some((code, reason)) => Err(Error::Fatal {
                code: format!("{code:?}"),
                reason,
            }),
        }
    }

    /// Stops workers and commits, according to why the loop ended.
    fn close(&mut self, result: &Result<(), Error>) {
        let fatal = matches!(result, Err(Error::Fenced { .. } | Error::Fatal { .. }));
        if fatal {
            // Fenced: another process owns our identity and maybe our partitions. Write
            // nothing more on their behalf: no flush, no commit.
            let all = self.consumer.context().supervisor().assigned();
            self.consumer
                .context()
                .supervisor()
                .stop(&all, StopMode::Abort);
            return;
        }
        if self.config.close == CloseBehavior::LeaveGroup {
            self.leave_group();
        }
        let all = self.consumer.context().supervisor().assigned();
        let stopped = self
            .consumer
            .context()
            .supervisor()
            .stop(&all, StopMode::Graceful);
        if let Err(error) = commit(&self.consumer, &stopped, CommitMode::Sync) {
            tracing::warn!(%error, "final commit failed");
        }
        tracing::info!(group = %self.config.group_id, "consumer closed");
        // Dropping the consumer closes it; a static member does not send LeaveGroup then.
    }

    /// Unsubscribing makes even a static member leave; the revoke callback drains and
    /// commits as in any rebalance.
    ///
    /// librdkafka sends the LeaveGroup only once the unassignment it started after the
    /// revoke callback has completed, and a static member that is closed before then never
    /// sends it (KIP-345: no LeaveGroup on close). So the loop keeps serving the consumer until
    /// librdkafka has dropped its member id, which it does right as it issues the LeaveGroup;
    /// closing then waits for the broker's answer.
    fn leave_group(&self) {
        self.consumer.unsubscribe();
        let deadline = Instant::now() + self.config.revoke_timeout + Duration::from_secs(30);
        while (!self.consumer.context().supervisor().assigned().is_empty()
            || has_member_id(&self.consumer))
            && Instant::now() < deadline
        {
            let _ = self.consumer.poll(POLL_TIMEOUT);
        }
        if has_member_id(&self.consumer) {
            tracing::warn!(group = %self.config.group_id, "LeaveGroup not issued before the deadline; partitions move after the session timeout");
        }
    }
}

/// Whether librdkafka still holds a group member id (it drops it when it leaves the group).
/// rdkafka has no safe wrapper for `rd_kafka_memberid`.
#[allow(unsafe_code)]
fn has_member_id<C: rdkafka::consumer::ConsumerContext>(consumer: &BaseConsumer<C>) -> bool {
    use rdkafka::bindings::{rd_kafka_mem_free, rd_kafka_memberid};
    let client = consumer.client();
    // SAFETY: the handle is valid for the lifetime of `consumer`. `rd_kafka_memberid` returns
    // NULL or a NUL-terminated string the caller owns; it is read, then freed exactly once
    // with `rd_kafka_mem_free`, as librdkafka documents.
    unsafe {
        let id = rd_kafka_memberid(client.native_ptr());
        if id.is_null() {
            return false;
        }
        let present = !std::ffi::CStr::from_ptr(id).to_bytes().is_empty();
        rd_kafka_mem_free(client.native_ptr(), id.cast());
        present
    }
}
