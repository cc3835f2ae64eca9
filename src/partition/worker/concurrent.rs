//! Key-level concurrency on the worker ([`crate::partition::scheduler`] decides what
//! starts): records of different keys in flight at once on the worker's task, each with a
//! context of its own whose state writes join the partition's overlay only when the record
//! succeeds (its output acknowledged), so a flush holds all of a record's writes or none.

use std::sync::Mutex;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt as _;

use super::records::{attempt, send_dead_letter, Attempted};
use super::*;
use crate::partition::scheduler::{Key, KeyScheduler, Pending};
use crate::state::PartitionState;

/// The records of a partition in flight, and the scheduler that starts them.
pub(super) struct Concurrent {
    pub(super) scheduler: KeyScheduler,
    /// Behind a mutex only to make the worker `Sync` (a future in flight need not be): it
    /// is reached through `get_mut`, never locked.
    running: Mutex<FuturesUnordered<BoxFuture<'static, Finished>>>,
    /// The partition's state, shared with the records in flight (`None` without stores).
    state: Option<Arc<Mutex<PartitionState>>>,
    /// Under `ErrorPolicy::Fail`, the first failure: nothing starts after it, and the
    /// worker fails once the records in flight are done.
    pub(super) failed: Option<Error>,
    /// Records settled since their counts were last published.
    tally: Tally,
}

/// Counts of settled records not yet published, and the bytes of the records held.
#[derive(Debug, Default)]
struct Tally {
    handled: u64,
    held_bytes: usize,
}

/// A record in flight that ended.
pub(super) struct Finished {
    key: Key,
    pending: Pending,
    ctx: PartitionContext,
    ended: Ended,
}

/// How a record in flight ended.
enum Ended {
    /// Handled; its output records' acknowledgements, if it sent any.
    Handled(Option<crate::changelog::Pending>),
    /// Failed, and skipped or dead-lettered as the error policy says.
    Skipped,
    DeadLettered,
    /// Failed under `ErrorPolicy::Fail`.
    Failed(Failure),
    /// Its dead letter could not be produced.
    DeadLetterFailed(Error),
    /// The partition is stopping: it stays unfinished.
    Cancelled,
}

impl Concurrent {
    /// Takes over `ctx`'s state (shared from now on) for records in flight, starting after
    /// `start`.
    pub(super) fn new(
        config: &ConsumerConfig,
        start: SourcePosition,
        ctx: &mut PartitionContext,
    ) -> Self {
        Self {
            scheduler: KeyScheduler::new(
                config.key_concurrency,
                config.concurrency_lookahead,
                start,
            ),
            running: Mutex::default(),
            state: ctx.share_state(),
            failed: None,
            tally: Tally::default(),
        }
    }

    /// Whether to take in more fetched records: not while enough wait already (the
    /// partition's queue then fills, and librdkafka stops fetching it).
    pub(super) fn accepts_more(&self, lookahead: usize) -> bool {
        self.failed.is_none() && self.scheduler.waiting() < lookahead
    }

    pub(super) fn is_running(&self) -> bool {
        self.scheduler.running() > 0
    }

    fn running(&mut self) -> &mut FuturesUnordered<BoxFuture<'static, Finished>> {
        self.running
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Resolves with the next record in flight that ended; never while none runs.
pub(super) async fn next_finished(concurrent: &mut Option<Concurrent>) -> Finished {
    match concurrent {
        Some(c) if c.is_running() => match c.running().next().await {
            Some(finished) => finished,
            None => std::future::pending().await,
        },
        _ => std::future::pending().await,
    }
}

impl<KC, VC, H> Worker<KC, VC, H>
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    /// Takes in a fetched batch and starts what may start.
    pub(super) async fn enqueue(
        &mut self,
        batch: RecordBatch,
        ctx: &mut PartitionContext,
    ) -> Result<(), Error> {
        let batch = Arc::new(batch);
        let Some(c) = self.concurrent.as_mut() else {
            return Ok(());
        };
        for index in 0..batch.records.len() {
            let pending = Pending {
                batch: batch.clone(),
                index,
            };
            c.tally.held_bytes += batch.record_bytes(&batch.records[index]);
            if !c.scheduler.push(pending, &self.applied) {
                c.tally.held_bytes -= batch.record_bytes(&batch.records[index]);
                // Its effect is already in the restored state.
                self.progress.skipped.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.start_ready(ctx).await
    }

    /// Publishes how far the partition's records are processed (and durable when nothing is
    /// left to flush) and the counts of the records settled since the last time; once per
    /// batch of records, not per record (the counters are shared with other threads).
    fn publish_progress(&mut self, ctx: &mut PartitionContext) {
        let Some(c) = self.concurrent.as_mut() else {
            return;
        };
        let handled = std::mem::take(&mut c.tally.handled);
        self.progress.handled.fetch_add(handled, Ordering::Relaxed);
        self.shared
            .stats
            .processed
            .fetch_add(handled, Ordering::Relaxed);
        let queue = &self.progress.queue;
        let held = c.scheduler.waiting() + c.scheduler.running();
        queue.taken_records.store(held, Ordering::Relaxed);
        queue
            .taken_bytes
            .store(c.tally.held_bytes, Ordering::Relaxed);
        let Some(next) = c.scheduler.completion.next() else {
            return;
        };
        self.progress.processed_next.store(next, Ordering::Relaxed);
        // Nothing unflushed, no flush in flight, no output unacknowledged: the records'
        // effects are durable already.
        if self.nothing_pending(ctx) {
            self.progress.set_durable(next);
        }
    }

    /// Starts the records the scheduler allows (none once stopping or failed). A record
    /// whose handler completes without waiting is settled at once, without being queued
    /// with the records in flight.
    pub(super) async fn start_ready(&mut self, ctx: &mut PartitionContext) -> Result<(), Error> {
        loop {
            if self.stop.is_stopped() {
                break;
            }
            let Some(c) = self.concurrent.as_mut() else {
                break;
            };
            if c.failed.is_some() {
                break;
            }
            let Some((key, pending)) = c.scheduler.next() else {
                break;
            };
            let state = c.state.clone();
            // Table updates up to the record's time apply before it starts.
            if !self.tables_aligned_now(pending.raw()) {
                self.align_tables(pending.raw()).await?;
            }
            let record_ctx = ctx.for_record(state.as_ref());
            let mut run: BoxFuture<'static, Finished> = Box::pin(run_one(
                self.shared.clone(),
                self.stop.clone(),
                (key, pending),
                record_ctx,
            ));
            match futures::poll!(run.as_mut()) {
                std::task::Poll::Ready(finished) => self.settle(finished, ctx),
                std::task::Poll::Pending => {
                    if let Some(c) = self.concurrent.as_mut() {
                        c.running().push(run);
                    }
                }
            }
        }
        self.publish_progress(ctx);
        Ok(())
    }

    /// Records in flight ended (`first`, and any other that ended meanwhile): their writes
    /// are kept or the error policy applies; then what may start starts.
    pub(super) async fn finished(
        &mut self,
        first: Finished,
        ctx: &mut PartitionContext,
    ) -> Result<(), Error> {
        self.settle(first, ctx);
        while let Some(Some(finished)) = self
            .concurrent
            .as_mut()
            .map(|c| c.running().next().now_or_never().flatten())
        {
            self.settle(finished, ctx);
        }
        self.start_ready(ctx).await
    }

    /// One record in flight ended: its writes join the state, or the error policy applies.
    fn settle(&mut self, finished: Finished, ctx: &mut PartitionContext) {
        let Finished {
            key,
            pending,
            ctx: mut record_ctx,
            ended,
        } = finished;
        let Some(c) = self.concurrent.as_mut() else {
            return;
        };
        let raw = pending.raw();
        c.tally.held_bytes -= pending.batch.record_bytes(raw);
        let stream_time = record_ctx.stream_time();
        let finish = match ended {
            Ended::Handled(sent) => {
                if let Some(sent) = sent {
                    self.outputs.push(raw.offset, sent);
                }
                record_ctx.commit_staged();
                ctx.set_stream_time(ctx.stream_time().max(stream_time));
                c.tally.handled += 1;
                true
            }
            Ended::Skipped => {
                self.progress.skipped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ended::DeadLettered => {
                self.progress.dead_lettered.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ended::Failed(failure) => {
                let error = failure.into_error(
                    self.topic.to_string(),
                    self.partition,
                    (raw.offset, pending.batch.key(raw)),
                );
                c.failed.get_or_insert(error);
                false
            }
            Ended::DeadLetterFailed(error) => {
                c.failed.get_or_insert(error);
                false
            }
            Ended::Cancelled => false,
        };
        if finish {
            c.scheduler.finish(key, raw.offset, stream_time);
            self.since_flush += 1;
        } else {
            c.scheduler.abandon(key);
        }
    }
}

/// One record in flight: attempts it with its own context, then applies the error policy's
/// `Skip` or `DeadLetter` itself (so that only its key waits for a dead letter's
/// acknowledgement); `Fail` is left to the worker.
async fn run_one<KC, VC, H>(
    shared: Arc<Shared<KC, VC, H>>,
    stop: StopSignal,
    (key, pending): (Key, Pending),
    mut ctx: PartitionContext,
) -> Finished
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    let batch = pending.batch.clone();
    let raw = pending.raw();
    let ended = match attempt(&shared, &stop, (&batch, raw), &mut ctx, (None, None)).await {
        Attempted::Handled(sent) => Ended::Handled(sent),
        Attempted::Cancelled => Ended::Cancelled,
        Attempted::Failed(failure) => {
            let (topic, partition, offset) = (ctx.topic().to_string(), ctx.partition(), raw.offset);
            match &shared.config.error_policy {
                ErrorPolicy::Fail => Ended::Failed(failure),
                ErrorPolicy::Skip => {
                    tracing::warn!(%topic, partition, offset, kind = failure.kind(),
                        error = %failure.message(), "skipping record");
                    Ended::Skipped
                }
                ErrorPolicy::DeadLetter(dlq) => {
                    let sent = send_dead_letter(
                        &shared,
                        dlq,
                        (&topic, partition),
                        (&batch, raw),
                        &failure,
                    );
                    match sent.await {
                        Ok(()) => Ended::DeadLettered,
                        Err(error) => Ended::DeadLetterFailed(error),
                    }
                }
            }
        }
    };
    Finished {
        key,
        pending,
        ctx,
        ended,
    }
}

#[cfg(test)]
mod tests;
