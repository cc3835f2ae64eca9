//! The poll loop: the only code that touches the group consumer, except the workers, which
//! each take their records from their partition's queue split off it. It polls (which
//! serves rebalance callbacks, commit results and statistics), commits, and drives revokes
//! and rejoins to completion. It never runs user code, never handles records, and never
//! waits for a worker without polling.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::commit;
use super::context::{complete_unassign, LoopContext, RevokePhase};
use super::errors::{classify_fetch_error, classify_poll_error, FetchErrorsSeen};
use crate::codec::Codec;
use crate::config::{CloseBehavior, ConsumerConfig};
use crate::error::Error;
use crate::handler::Handler;
use crate::partition::source::FetchError;
use crate::partition::supervisor::StopMode;

/// Upper bound of one blocking poll: how quickly shutdown, worker failures and commits are
/// noticed.
const POLL_TIMEOUT: Duration = Duration::from_millis(50);
/// Events (and stray records) taken per wake-up before commits get a turn.
const MAX_BATCH: usize = 1024;
/// How long a revoke or shutdown waits for the broker's answer to its final commit.
const COMMIT_RESULT_TIMEOUT: Duration = Duration::from_secs(15);
/// Rejoins tried when the group keeps assigning partitions of unsubscribed topics.
const MAX_FOREIGN_ASSIGNMENTS: u32 = 3;

type Ctx<KC, VC, H> = LoopContext<KC, VC, H>;

/// Leaving and rejoining the group after a foreign assignment.
enum Rejoin {
    Idle,
    Leaving { deadline: Instant },
}

pub(crate) struct PollLoop<KC: Codec, VC: Codec, H: Handler<KC::Item, VC::Item>> {
    /// Shared with the partition queues split off it (each holds a handle).
    pub(crate) consumer: Arc<BaseConsumer<Ctx<KC, VC, H>>>,
    pub(crate) config: Arc<ConsumerConfig>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) failures: mpsc::UnboundedReceiver<Error>,
    /// Errors librdkafka reported on partition queues, from their workers.
    pub(crate) partition_errors: mpsc::UnboundedReceiver<FetchError>,
    /// Partition errors already logged, so a retried one is logged once.
    fetch_errors_seen: FetchErrorsSeen,
    rejoin: Rejoin,
    /// Consecutive assignments that contained foreign partitions.
    foreign_streak: u32,
    metrics: crate::observe::metrics::Publisher,
    /// Under exactly-once: told the group's metadata after every poll (a commit sends the
    /// offsets with the generation the member is in).
    transactions: Option<Arc<crate::changelog::transaction::Transactions>>,
}

impl<KC, VC, H> PollLoop<KC, VC, H>
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    pub(crate) fn new(
        consumer: Arc<BaseConsumer<Ctx<KC, VC, H>>>,
        config: Arc<ConsumerConfig>,
        shutdown: CancellationToken,
        (failures, partition_errors): (
            mpsc::UnboundedReceiver<Error>,
            mpsc::UnboundedReceiver<FetchError>,
        ),
    ) -> Self {
        let transactions = consumer.context().supervisor().transactions();
        Self {
            transactions,
            consumer,
            config,
            shutdown,
            failures,
            partition_errors,
            fetch_errors_seen: Default::default(),
            rejoin: Rejoin::Idle,
            foreign_streak: 0,
            metrics: Default::default(),
        }
    }

    fn ctx(&self) -> &Ctx<KC, VC, H> {
        self.consumer.context()
    }

    /// Runs until shutdown or a fatal error, then stops the workers and closes.
    pub(crate) fn run(mut self) -> Result<(), Error> {
        self.subscribe()?;
        let result = self.poll_until_stopped();
        self.close(&result);
        result
    }

    fn subscribe(&self) -> Result<(), Error> {
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        self.consumer.subscribe(&topics)?;
        tracing::info!(group = %self.config.group_id, instance = ?self.config.instance_id, ?topics, "subscribed");
        Ok(())
    }

    fn poll_until_stopped(&mut self) -> Result<(), Error> {
        let mut last_commit = Instant::now();
        let mut last_publish = Instant::now();
        loop {
            if self.shutdown.is_cancelled() {
                return Ok(());
            }
            if let Ok(err) = self.failures.try_recv() {
                return Err(err);
            }
            while let Ok(error) = self.partition_errors.try_recv() {
                classify_fetch_error(
                    &self.consumer,
                    &self.config,
                    error,
                    (&self.consumer.context().stats, &mut self.fetch_errors_seen),
                )?;
            }
            self.poll_batch()?;
            if let Some(txn) = &self.transactions {
                if let Some(metadata) = self.consumer.group_metadata() {
                    txn.set_group_metadata(metadata);
                }
            }
            self.drive_revoke();
            self.ctx().supervisor().reap_lost();
            self.drive_rejoin()?;
            if last_commit.elapsed() >= self.config.commit_interval {
                let progress = self.ctx().supervisor().progress();
                commit::submit(&self.consumer, &progress);
                last_commit = Instant::now();
            }
            if last_publish.elapsed() >= self.config.stats_interval {
                let progress = self.ctx().supervisor().progress();
                self.metrics.publish(&progress);
                last_publish = Instant::now();
            }
        }
    }

    /// Serves the main queue for up to [`POLL_TIMEOUT`]: rebalance callbacks, commit
    /// results, statistics and errors. Records do not come here (every assigned partition's
    /// queue is split off to its worker), except those of partitions the group assigned by
    /// mistake (other topics, paused and never processed): they are dropped.
    fn poll_batch(&self) -> Result<(), Error> {
        let mut timeout = POLL_TIMEOUT;
        for _ in 0..MAX_BATCH {
            match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(msg)) => {
                    use rdkafka::message::Message;
                    tracing::debug!(
                        topic = msg.topic(),
                        partition = msg.partition(),
                        offset = msg.offset(),
                        "dropping a record of a partition without a worker"
                    );
                }
                Some(Err(error)) => {
                    return self.check_fatal().and_then(|()| {
                        let failure = self.ctx().last_failure();
                        classify_poll_error(&self.consumer, &self.config, error, failure)
                    });
                }
            }
            timeout = Duration::ZERO;
        }
        Ok(())
    }

    /// Moves a pending revoke forward: once its workers stopped, commit their final offsets;
    /// once the broker answered (or the deadline passed), release the partitions to
    /// librdkafka, which then completes the rebalance.
    fn drive_revoke(&self) {
        let Some(mut pending) = self.ctx().rebalance_state().pending_revoke.take() else {
            return;
        };
        let done = match pending.phase {
            RevokePhase::Draining => {
                if pending.stopping.poll_done() {
                    commit::submit(&self.consumer, &pending.stopping.progress());
                    pending.phase = RevokePhase::Committing {
                        deadline: Instant::now() + COMMIT_RESULT_TIMEOUT,
                    };
                }
                false
            }
            RevokePhase::Committing { deadline } => {
                let settled = pending
                    .stopping
                    .progress()
                    .iter()
                    .all(|(_, p)| !p.commit_in_flight());
                if !settled && Instant::now() >= deadline {
                    tracing::warn!(partitions = ?pending.partitions, "no answer to the revoke commit in time; the next owner may reprocess from the previous commit");
                }
                settled || Instant::now() >= deadline
            }
        };
        if !done {
            self.ctx().rebalance_state().pending_revoke = Some(pending);
            return;
        }
        self.ctx().supervisor().release(&pending.stopping);
        complete_unassign(&self.consumer, &pending.tpl);
        tracing::info!(partitions = ?pending.partitions, elapsed = ?pending.started.elapsed(), "partitions revoked: drained, flushed, committed");
        self.ctx().listener().on_revoked(&pending.partitions);
    }

    /// Foreign partitions (of topics not subscribed) are never processed: leave the group
    /// and join again so the coordinator recomputes the assignment; give up with a clear
    /// error when it keeps handing them out.
    fn drive_rejoin(&mut self) -> Result<(), Error> {
        match self.rejoin {
            Rejoin::Idle => {
                let (foreign, clean) = {
                    let mut state = self.ctx().rebalance_state();
                    let clean = std::mem::take(&mut state.clean_assignment);
                    (std::mem::take(&mut state.foreign), clean)
                };
                if clean {
                    self.foreign_streak = 0;
                }
                if foreign.is_empty() {
                    return Ok(());
                }
                self.foreign_streak += 1;
                if self.foreign_streak > MAX_FOREIGN_ASSIGNMENTS {
                    let mut assigned: Vec<String> =
                        foreign.iter().map(|(t, _)| t.clone()).collect();
                    assigned.sort_unstable();
                    assigned.dedup();
                    return Err(Error::ForeignAssignment {
                        group: self.config.group_id.clone(),
                        instance_id: self.config.instance_id.clone(),
                        subscribed: self.config.topics.clone(),
                        assigned,
                    });
                }
                tracing::warn!(
                    group = %self.config.group_id, attempt = self.foreign_streak,
                    foreign = ?foreign,
                    "leaving the group and joining again so the coordinator recomputes the assignment"
                );
                self.consumer.unsubscribe();
                self.rejoin = Rejoin::Leaving {
                    deadline: Instant::now() + self.leave_budget(),
                };
            }
            Rejoin::Leaving { deadline } => {
                let left = self.ctx().rebalance_state().pending_revoke.is_none()
                    && self.ctx().supervisor().assigned().is_empty()
                    && !has_member_id(&self.consumer);
                if left || Instant::now() >= deadline {
                    self.subscribe()?;
                    self.rejoin = Rejoin::Idle;
                }
            }
        }
        Ok(())
    }

    fn leave_budget(&self) -> Duration {
        self.config.revoke_timeout + self.config.flush_timeout + Duration::from_secs(30)
    }

    /// A fatal librdkafka error ends the consumer; fencing gets its own error.
    fn check_fatal(&self) -> Result<(), Error> {
        match self.consumer.client().fatal_error() {
            None => Ok(()),
            Some((rdkafka::types::RDKafkaErrorCode::FencedInstanceId, _)) => Err(Error::Fenced {
                instance_id: self.config.instance_id.clone().unwrap_or_default(),
            }),
            Some((code, reason)) => Err(Error::Fatal {
                code: format!("{code:?}"),
                reason,
            }),
        }
    }

    /// Serves the consumer until `done` holds or `deadline` passes.
    fn serve_until(&self, deadline: Instant, mut done: impl FnMut(&Self) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            let _ = self.consumer.poll(POLL_TIMEOUT);
            self.drive_revoke();
        }
    }

    /// Stops workers and commits, according to why the loop ended.
    fn close(&mut self, result: &Result<(), Error>) {
        self.stop_all(result);
        // The partition queues of stopped workers hold handles on the consumer: it is closed
        // where the last one is dropped, which should be here, on this thread, not on a
        // runtime thread (closing blocks).
        let released = self.serve_until(Instant::now() + self.leave_budget(), |l| {
            Arc::strong_count(&l.consumer) == 1
        });
        if !released {
            tracing::warn!("partition queues are still held after their workers stopped");
        }
        // Dropping the consumer closes it; librdkafka's closing revoke is completed in the
        // callback from here on. A static member does not send LeaveGroup then.
        self.ctx().set_closing();
    }

    fn stop_all(&mut self, result: &Result<(), Error>) {
        // Under exactly-once an aborted transaction took flushes of every partition with
        // it: nothing more is flushed or committed either.
        let fatal = matches!(
            result,
            Err(Error::Fenced { .. } | Error::Fatal { .. } | Error::Transaction { .. })
        );
        if fatal {
            // Fenced: another process owns our identity and maybe our partitions. Write
            // nothing more on their behalf: no flush, no commit.
            let all = self.ctx().supervisor().assigned();
            self.ctx().supervisor().lose(&all);
            self.serve_until(Instant::now() + self.leave_budget(), |l| {
                !l.ctx().supervisor().reap_lost()
            });
            return;
        }
        let budget = self.leave_budget();
        // A revoke under way completes first, so librdkafka's rebalance is not left hanging.
        self.serve_until(Instant::now() + budget, |l| {
            l.ctx().rebalance_state().pending_revoke.is_none()
        });
        if self.config.close == CloseBehavior::LeaveGroup {
            self.leave_group();
        }
        let all = self.ctx().supervisor().assigned();
        let mut stopping = self.ctx().supervisor().begin_stop(&all, StopMode::Graceful);
        self.serve_until(Instant::now() + budget, |_| stopping.poll_done());
        let progress = stopping.progress();
        commit::submit(&self.consumer, &progress);
        let answered = self.serve_until(Instant::now() + COMMIT_RESULT_TIMEOUT, |_| {
            progress.iter().all(|(_, p)| !p.commit_in_flight())
        });
        if !answered {
            tracing::warn!("no answer to the final commit in time; a restart may reprocess from the previous commit");
        }
        self.ctx().supervisor().release(&stopping);
        self.serve_until(Instant::now() + budget, |l| {
            !l.ctx().supervisor().reap_lost()
        });
        tracing::info!(group = %self.config.group_id, "consumer closed");
    }

    /// Unsubscribing makes even a static member leave; the revoke drains and commits as in
    /// any rebalance.
    ///
    /// librdkafka sends the LeaveGroup only once the unassignment it started after the
    /// revoke has completed, and a static member that is closed before then never sends it
    /// (KIP-345: no LeaveGroup on close). So the loop keeps serving the consumer until
    /// librdkafka has dropped its member id, which it does right as it issues the LeaveGroup;
    /// closing then waits for the broker's answer.
    fn leave_group(&self) {
        self.consumer.unsubscribe();
        let left = self.serve_until(Instant::now() + self.leave_budget(), |l| {
            l.ctx().rebalance_state().pending_revoke.is_none()
                && l.ctx().supervisor().assigned().is_empty()
                && !has_member_id(&l.consumer)
        });
        if !left {
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
