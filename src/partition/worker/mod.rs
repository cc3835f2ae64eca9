//! One task per assigned partition: restore state, then decode and handle records in offset
//! order, flush state, publish durable offsets.
//!
//! The per-record path is kept short: records arrive in batches; a handler that completes
//! without waiting (most state updates) is polled once, with no timer or cancellation
//! future set up; counters visible to other threads are published once per batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::policy::{dead_letter, panic_message, Failure};
use super::source::Source;
use crate::batch::{RawRecord, RecordBatch};
use crate::changelog::{Pending, RecordSink};
use crate::codec::{Codec, CodecError};
use crate::config::{ConsumerConfig, ErrorPolicy};
use crate::error::Error;
use crate::handler::{Handler, PartitionContext, Record};
use crate::observe::StatsInner;
use crate::offset::{OffsetTracker, PartitionProgress};
use crate::state::checkpoint::SourcePosition;
use crate::state::{PartitionState, StateEnv};
use crate::timer::{Owner, TimeKind, Timer};

mod batches;
mod concurrent;
mod flush;
mod records;
mod tables;
mod timers;
mod transactional;

use flush::{finished, InFlight};

/// What all workers of a consumer share.
pub(crate) struct Shared<KC, VC, H> {
    pub(crate) config: Arc<ConsumerConfig>,
    pub(crate) key_codec: KC,
    pub(crate) value_codec: VC,
    pub(crate) handler: H,
    pub(crate) state_env: Option<StateEnv>,
    /// Tables (co-partitioned and global), when declared.
    pub(crate) tables: Option<crate::table::TableEnv>,
    /// Where dead letters go.
    pub(crate) producer: Option<Arc<dyn RecordSink>>,
    pub(crate) stats: Arc<StatsInner>,
    /// A worker that cannot go on reports here; the poll loop stops the consumer.
    pub(crate) failures: mpsc::UnboundedSender<Error>,
    /// Added to the system clock for wall-clock timers (the test driver moves time).
    pub(crate) clock_offset_ms: std::sync::atomic::AtomicI64,
    /// The standby keeper, when standby replicas are on: a worker claims its partition from
    /// it before opening the state.
    pub(crate) standbys: Option<Arc<crate::standby::Standbys>>,
    /// The partitions queries can read ([`crate::query`]).
    pub(crate) queries: Arc<crate::query::registry::QueryRegistry>,
    /// Under exactly-once: the member's transactions, which every flush enters.
    pub(crate) transactions: Option<Arc<crate::changelog::transaction::Transactions>>,
}

/// Tells a worker to stop: a flag checked between records (an atomic load) and a token for
/// waiting (`CancellationToken::is_cancelled` takes a lock). One shared allocation: a record
/// in flight holds a clone, and cloning a `CancellationToken` takes a lock too.
#[derive(Debug, Clone, Default)]
pub(crate) struct StopSignal(Arc<StopInner>);

#[derive(Debug, Default)]
struct StopInner {
    flag: AtomicBool,
    lost: AtomicBool,
    token: CancellationToken,
}

impl StopSignal {
    pub(crate) fn stop(&self) {
        self.0.flag.store(true, Ordering::Release);
        self.0.token.cancel();
    }

    /// Stops a partition that was lost: nothing more is flushed or kept, the in-flight
    /// handler is cancelled at once.
    pub(crate) fn lose(&self) {
        self.0.lost.store(true, Ordering::Release);
        self.stop();
    }

    fn is_lost(&self) -> bool {
        self.0.lost.load(Ordering::Acquire)
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.0.flag.load(Ordering::Acquire)
    }

    async fn stopped(&self) {
        self.0.token.cancelled().await;
    }
}

/// The lifecycle hooks of [`Handler`].
#[derive(Debug, Clone, Copy)]
enum Hook {
    Assigned,
    Revoked,
    Lost,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::Assigned => "on_assigned",
            Hook::Revoked => "on_revoked",
            Hook::Lost => "on_lost",
        }
    }
}

/// How the processing of one record ended.
enum Outcome {
    Done,
    /// The worker is stopping: this record (and what follows) stays uncommitted.
    Cancelled,
}

pub(crate) struct Worker<KC: Codec, VC: Codec, H> {
    shared: Arc<Shared<KC, VC, H>>,
    topic: Arc<str>,
    partition: i32,
    progress: Arc<PartitionProgress>,
    stop: StopSignal,
    tracker: OffsetTracker,
    /// Source records the restored state reflects already (their effect would be doubled).
    applied: crate::state::checkpoint::SourcePosition,
    /// The offset the handler's sink stored with its data, until the first record is
    /// checked against it (see [`Handler::stored_offset`]).
    stored_next: Option<i64>,
    since_flush: usize,
    last_flush: Instant,
    /// The flush in flight, with the source offset it makes durable.
    in_flight: Option<(InFlight, i64)>,
    /// Output records sent since the last flush started (acknowledged by the next one).
    outputs: super::outputs::OutputsInFlight,
    /// When the flush in flight started.
    flush_started: Instant,
    /// Records seen, for sampling the handler-duration histogram.
    sampled: u64,
    handler_duration: metrics::Histogram,
    /// The partition's co-partitioned tables (and the global ones' reads).
    tables: Option<crate::table::PartitionTables>,
    /// Records in flight under key-level concurrency (`key_concurrency > 1`).
    concurrent: Option<concurrent::Concurrent>,
    /// This partition taken from the standby keeper (when standbys are on); released when
    /// the worker is dropped, after its state closed.
    standby_claim: Option<crate::standby::Claim>,
}

/// What woke the worker.
enum Event {
    Flushed(Result<Option<crate::state::FlushDone>, Error>),
    Batch(Option<RecordBatch>),
    /// A record in flight (key-level concurrency) ended.
    Finished(Box<concurrent::Finished>),
    /// Table updates arrived.
    Tables,
    /// The partition is stopping (checked at the top of the loop).
    Stop,
    Tick,
    /// Time to look for due wall-clock timers.
    WallTick,
}

/// How often wall-clock timers are looked for.
const WALL_TIMER_TICK: Duration = Duration::from_millis(100);

impl<KC, VC, H> Worker<KC, VC, H>
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    pub(crate) fn new(
        shared: Arc<Shared<KC, VC, H>>,
        (topic, partition): (String, i32),
        progress: Arc<PartitionProgress>,
        stop: StopSignal,
    ) -> Self {
        let topic_label = topic.clone();
        let standby_claim = shared
            .standbys
            .as_ref()
            .map(|s| s.claim(&(topic.clone(), partition)));
        Self {
            shared,
            topic: topic.into(),
            partition,
            progress,
            stop,
            tracker: OffsetTracker::default(),
            applied: crate::state::checkpoint::SourcePosition::NONE,
            stored_next: None,
            since_flush: 0,
            last_flush: Instant::now(),
            in_flight: None,
            outputs: Default::default(),
            flush_started: Instant::now(),
            sampled: 0,
            handler_duration: crate::observe::metrics::handler_histogram(&topic_label, partition),
            tables: None,
            concurrent: None,
            standby_claim,
        }
    }

    /// Runs until stopped or until its queue closes; reports a fatal error to the poll loop.
    /// A panic outside the handler and codecs (those are errors of their record) is reported
    /// too: a worker never ends silently while its partition looks idle.
    pub(crate) async fn run(mut self, source: Source) {
        let (topic, partition) = (self.topic.clone(), self.partition);
        let result = match std::panic::AssertUnwindSafe(self.run_inner(source))
            .catch_unwind()
            .await
        {
            Ok(result) => result,
            Err(payload) => Err(Error::WorkerPanicked {
                topic: topic.to_string(),
                partition,
                message: panic_message(payload.as_ref()),
            }),
        };
        match result {
            Ok(()) => {}
            Err(Error::State(err @ crate::StateError::Fenced { .. })) => {
                // Another owner took over the partition: this process is a zombie for it.
                // Nothing more is written or committed for it; librdkafka revokes it (as
                // lost) once the coordinator's verdict reaches this member.
                tracing::warn!(%topic, partition, error = %err, "partition fenced: stopped writing and committing it");
                self.progress.fenced.store(true, Ordering::Release);
            }
            Err(err) => {
                tracing::error!(%topic, partition, error = %err, "partition worker failed");
                let _ = self.shared.failures.send(err);
            }
        }
    }

    async fn run_inner(&mut self, mut source: Source) -> Result<(), Error> {
        // Queries see the partition as opening until its state is restored, and not at all
        // once this worker ends.
        let queries = self
            .shared
            .queries
            .opening(self.topic.clone(), self.partition);
        let Some(mut ctx) = self.open_state().await? else {
            return Ok(()); // revoked while restoring
        };
        if !self.open_tables(&mut ctx).await? {
            return Ok(()); // revoked while bootstrapping tables
        }
        self.load_stored_offset().await?;
        if let Some(db) = ctx.with_state(|state| state.db()) {
            queries.ready(db);
        }
        self.run_hook(Hook::Assigned, &mut ctx).await?;
        let config = self.shared.config.clone();
        if config.key_concurrency > 1 {
            let start = self.tracker.committable().unwrap_or(SourcePosition::NONE);
            self.concurrent = Some(concurrent::Concurrent::new(&config, start, &mut ctx));
        }
        self.progress.ready.store(true, Ordering::Release);
        let flush_interval = self.shared.config.flush_interval;
        let mut ticker = tokio::time::interval(flush_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let has_timers = ctx.state().is_some_and(|s| s.has_timers());
        let mut wall_ticker = tokio::time::interval(WALL_TIMER_TICK);
        wall_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Timers that came due while the partition was away fire before its records.
        self.fire_timers(TimeKind::Stream, ctx.stream_time(), &mut ctx)
            .await?;
        loop {
            // A stop wakes an idle worker; the flag makes it win over records still queued.
            // Records in flight get the revoke timeout to end (unless the partition was lost).
            if self.stop.is_stopped() && !self.draining() {
                break;
            }
            let takes_batches = !self.stop.is_stopped()
                && self
                    .concurrent
                    .as_ref()
                    .is_none_or(|c| c.accepts_more(config.concurrency_lookahead));
            let event = tokio::select! {
                biased;
                done = finished(&mut self.in_flight) => Event::Flushed(done),
                // Table updates first: handed over before an input record, they are ordered
                // with it by time (see `tables_arrived`).
                () = tables::arrived(&mut self.tables) => Event::Tables,
                ended = concurrent::next_finished(&mut self.concurrent) => Event::Finished(Box::new(ended)),
                batch = source.next(), if takes_batches => Event::Batch(batch),
                () = self.stop.stopped(), if !self.stop.is_stopped() => Event::Stop,
                _ = ticker.tick() => Event::Tick,
                _ = wall_ticker.tick(), if has_timers => Event::WallTick,
            };
            match event {
                Event::Batch(None) => break,
                Event::Flushed(done) => {
                    let next = self.in_flight.take().map_or(-1, |(_, next)| next);
                    self.complete_flush(done?, next, &mut ctx)?;
                }
                Event::Batch(Some(batch)) if self.concurrent.is_some() => {
                    self.enqueue(batch, &mut ctx).await?;
                    self.after_concurrent(&mut ctx).await?;
                }
                Event::Finished(ended) => {
                    self.finished(*ended, &mut ctx).await?;
                    self.after_concurrent(&mut ctx).await?;
                }
                Event::Batch(Some(batch)) if config.batches.is_some() => {
                    let (outcome, closed) =
                        self.gather_and_handle(batch, &mut source, &mut ctx).await?;
                    if matches!(outcome, Outcome::Cancelled) || closed {
                        break;
                    }
                    self.tables_arrived(&source).await?;
                    if self.flush_due(&mut ctx) {
                        self.start_flush(&mut ctx).await?;
                    }
                }
                Event::Batch(Some(batch)) => {
                    let queue = self.progress.queue.clone();
                    queue
                        .taken_records
                        .store(batch.records.len(), Ordering::Relaxed);
                    queue.taken_bytes.store(batch.bytes, Ordering::Relaxed);
                    let outcome = self.process_batch(&batch, &mut ctx).await;
                    queue.taken_records.store(0, Ordering::Relaxed);
                    queue.taken_bytes.store(0, Ordering::Relaxed);
                    if matches!(outcome?, Outcome::Cancelled) {
                        break;
                    }
                    // Caught up with the input: table updates held back for it apply now.
                    self.tables_arrived(&source).await?;
                    if self.flush_due(&mut ctx) {
                        self.start_flush(&mut ctx).await?;
                    }
                }
                Event::Tables => self.tables_arrived(&source).await?,
                Event::Stop => {}
                Event::Tick => {
                    if self.last_flush.elapsed() >= flush_interval {
                        self.start_flush(&mut ctx).await?;
                    }
                }
                Event::WallTick => {
                    let offset = self.shared.clock_offset_ms.load(Ordering::Relaxed);
                    ctx.set_wall_offset(offset);
                    let now = crate::timer::wall_now() + offset;
                    self.fire_timers(TimeKind::Wall, now, &mut ctx).await?;
                    self.progress.wall_ticks.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if self.stop.is_lost() {
            // Another member may own the partition already: keep nothing.
            self.in_flight = None;
            self.run_hook(Hook::Lost, &mut ctx).await?;
            return Ok(());
        }
        self.run_hook(Hook::Revoked, &mut ctx).await?;
        self.flush(&mut ctx).await
    }

    /// How far the partition's finished records reach (what a flush makes durable).
    fn committable(&self) -> Option<SourcePosition> {
        match &self.concurrent {
            Some(c) => c.scheduler.completion.committable(),
            None => self.tracker.committable(),
        }
    }

    /// Stopping gracefully with records in flight: they get the revoke timeout to end.
    fn draining(&self) -> bool {
        !self.stop.is_lost() && self.concurrent.as_ref().is_some_and(|c| c.is_running())
    }

    /// After records in flight started or ended: under `Fail`, once a failed record's
    /// companions in flight have ended, what finished before it is flushed and the worker
    /// fails; otherwise a flush starts when due.
    async fn after_concurrent(&mut self, ctx: &mut PartitionContext) -> Result<(), Error> {
        if let Some(error) = self.failed_and_idle() {
            self.flush(ctx).await?;
            return Err(error);
        }
        if self.flush_due(ctx) {
            self.start_flush(ctx).await?;
        }
        Ok(())
    }

    /// Under `ErrorPolicy::Fail`, a record in flight failed and the others have ended.
    fn failed_and_idle(&mut self) -> Option<Error> {
        let c = self.concurrent.as_mut()?;
        if c.is_running() {
            return None;
        }
        c.failed.take()
    }

    /// Runs a lifecycle hook within the revoke timeout; its store writes are kept when it
    /// succeeds (and the partition was not lost).
    async fn run_hook(&mut self, hook: Hook, ctx: &mut PartitionContext) -> Result<(), Error> {
        let handler = &self.shared.handler;
        let timeout = self.shared.config.revoke_timeout;
        let result = {
            let call = async {
                match hook {
                    Hook::Assigned => handler.on_assigned(ctx).await,
                    Hook::Revoked => handler.on_revoked(ctx).await,
                    Hook::Lost => handler.on_lost(ctx).await,
                }
            };
            let call = std::panic::AssertUnwindSafe(call).catch_unwind();
            tokio::time::timeout(timeout, call).await
        };
        let error = match result {
            Ok(Ok(Ok(()))) if !matches!(hook, Hook::Lost) => match self.send_outbox(ctx).await {
                Ok(()) => {
                    ctx.commit_staged();
                    return Ok(());
                }
                Err(error) => Some(format!("its output was not acknowledged: {error}")),
            },
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(e))) => Some(e.to_string()),
            Ok(Err(payload)) => Some(format!("panicked: {}", panic_message(payload.as_ref()))),
            Err(_) => Some(format!(
                "did not finish within the revoke timeout ({timeout:?})"
            )),
        };
        ctx.discard_staged();
        let Some(message) = error else {
            return Ok(());
        };
        let name = hook.name();
        if matches!(hook, Hook::Lost) {
            tracing::warn!(topic = %self.topic, partition = self.partition, hook = name, %message, "lifecycle hook failed");
            return Ok(());
        }
        Err(Error::Hook {
            topic: self.topic.to_string(),
            partition: self.partition,
            hook: name,
            message,
        })
    }
}

/// Resolves `timeout` after `stop` is signalled (at once for a lost partition); never before.
async fn cancel_after_stop(stop: &StopSignal, timeout: Duration) {
    stop.stopped().await;
    if !stop.is_lost() {
        tokio::time::sleep(timeout).await;
    }
}
