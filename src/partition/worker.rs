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

use super::batch::{RawRecord, RecordBatch};
use super::policy::{dead_letter, panic_message, Failure};
use super::router::QueueGauge;
use crate::changelog::RecordSink;
use crate::codec::{Codec, CodecError};
use crate::config::{ConsumerConfig, ErrorPolicy};
use crate::error::Error;
use crate::handler::{Handler, PartitionContext, Record};
use crate::observe::StatsInner;
use crate::offset::{OffsetTracker, PartitionProgress};
use crate::state::{PartitionState, StateEnv};
use crate::timer::{Owner, TimeKind, Timer};

/// What all workers of a consumer share.
pub(crate) struct Shared<KC, VC, H> {
    pub(crate) config: Arc<ConsumerConfig>,
    pub(crate) key_codec: KC,
    pub(crate) value_codec: VC,
    pub(crate) handler: H,
    pub(crate) state_env: Option<StateEnv>,
    /// Where dead letters go.
    pub(crate) producer: Option<Arc<dyn RecordSink>>,
    pub(crate) stats: Arc<StatsInner>,
    /// A worker that cannot go on reports here; the poll loop stops the consumer.
    pub(crate) failures: mpsc::UnboundedSender<Error>,
    /// Added to the system clock for wall-clock timers (the test driver moves time).
    pub(crate) clock_offset_ms: std::sync::atomic::AtomicI64,
}

/// Tells a worker to stop: a flag checked between records (an atomic load) and a token for
/// waiting (`CancellationToken::is_cancelled` takes a lock).
#[derive(Debug, Clone, Default)]
pub(crate) struct StopSignal {
    flag: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
    token: CancellationToken,
}

impl StopSignal {
    pub(crate) fn stop(&self) {
        self.flag.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Stops a partition that was lost: nothing more is flushed or kept, the in-flight
    /// handler is cancelled at once.
    pub(crate) fn lose(&self) {
        self.lost.store(true, Ordering::Release);
        self.stop();
    }

    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    async fn stopped(&self) {
        self.token.cancelled().await;
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
    gauge: Arc<QueueGauge>,
    stop: StopSignal,
    tracker: OffsetTracker,
    /// Source offsets below this are already in the restored state.
    skip_below: i64,
    since_flush: usize,
    last_flush: Instant,
    /// The flush in flight, with the source offset it makes durable.
    in_flight: Option<(InFlight, i64)>,
    /// When the flush in flight started.
    flush_started: Instant,
    /// Records seen, for sampling the handler-duration histogram.
    sampled: u64,
    handler_duration: metrics::Histogram,
}

/// What woke the worker.
enum Event {
    Flushed(Result<crate::state::FlushDone, crate::StateError>),
    Batch(Option<RecordBatch>),
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
        gauge: Arc<QueueGauge>,
        stop: StopSignal,
    ) -> Self {
        let topic_label = topic.clone();
        Self {
            shared,
            topic: topic.into(),
            partition,
            progress,
            gauge,
            stop,
            tracker: OffsetTracker::default(),
            skip_below: -1,
            since_flush: 0,
            last_flush: Instant::now(),
            in_flight: None,
            flush_started: Instant::now(),
            sampled: 0,
            handler_duration: crate::observe::metrics::handler_histogram(&topic_label, partition),
        }
    }

    /// Runs until stopped or until its queue closes; reports a fatal error to the poll loop.
    /// A panic outside the handler and codecs (those are errors of their record) is reported
    /// too: a worker never ends silently while its partition looks idle.
    pub(crate) async fn run(mut self, rx: mpsc::UnboundedReceiver<RecordBatch>) {
        let (topic, partition) = (self.topic.clone(), self.partition);
        let result = match std::panic::AssertUnwindSafe(self.run_inner(rx))
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

    async fn run_inner(
        &mut self,
        mut rx: mpsc::UnboundedReceiver<RecordBatch>,
    ) -> Result<(), Error> {
        let Some(mut ctx) = self.open_state().await? else {
            return Ok(()); // revoked while restoring
        };
        self.run_hook(Hook::Assigned, &mut ctx).await?;
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
            // Stopping also closes the queue (the router drops its end), which wakes an idle
            // worker; the flag makes a stop win over records still queued.
            if self.stop.is_stopped() {
                break;
            }
            let event = tokio::select! {
                biased;
                done = finished(&mut self.in_flight) => Event::Flushed(done),
                batch = rx.recv() => Event::Batch(batch),
                _ = ticker.tick() => Event::Tick,
                _ = wall_ticker.tick(), if has_timers => Event::WallTick,
            };
            match event {
                Event::Batch(None) => break,
                Event::Flushed(done) => {
                    let next = self.in_flight.take().map_or(-1, |(_, next)| next);
                    self.complete_flush(done?, next, &mut ctx)?;
                }
                Event::Batch(Some(batch)) => {
                    let outcome = self.process_batch(&batch, &mut ctx).await;
                    self.gauge.taken(batch.records.len(), batch.bytes);
                    if matches!(outcome?, Outcome::Cancelled) {
                        break;
                    }
                    if self.flush_due(&ctx) {
                        self.start_flush(&mut ctx).await?;
                    }
                }
                Event::Tick => {
                    if self.last_flush.elapsed() >= flush_interval {
                        self.start_flush(&mut ctx).await?;
                    }
                }
                Event::WallTick => {
                    let offset = self.shared.clock_offset_ms.load(Ordering::Relaxed);
                    ctx.set_wall_offset(offset);
                    let now = wall_clock_ms() + offset;
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
                    if let Some(state) = ctx.state_mut() {
                        state.commit_staged();
                    }
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
        discard_staged(ctx);
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

    fn flush_due(&self, ctx: &PartitionContext) -> bool {
        let config = &self.shared.config;
        self.since_flush >= config.flush_max_records
            || ctx
                .state()
                .is_some_and(|s| s.overlay_bytes() >= config.overlay_bytes)
            || self.last_flush.elapsed() >= config.flush_interval
    }

    /// Starts a flush that runs while processing goes on. With one already in flight it
    /// waits for that one only when the overlay is over its byte budget (back-pressure);
    /// otherwise the new writes wait for the next turn.
    async fn start_flush(&mut self, ctx: &mut PartitionContext) -> Result<(), Error> {
        if let Some((job, next)) = self.in_flight.take() {
            let over_budget = ctx
                .state()
                .is_some_and(|s| s.overlay_bytes() >= self.shared.config.overlay_bytes);
            if !over_budget {
                self.in_flight = Some((job, next));
                return Ok(());
            }
            let done = settle(job).await?;
            self.complete_flush(done, next, ctx)?;
        }
        self.since_flush = 0;
        self.last_flush = Instant::now();
        let Some(position) = self.tracker.committable() else {
            return Ok(());
        };
        match ctx
            .state_mut()
            .and_then(|state| state.start_flush(position))
        {
            Some(job) => {
                self.flush_started = Instant::now();
                // Its own task: it makes progress (acknowledgements, the RocksDB write) while
                // this worker is busy with a batch, not only between batches.
                let task = AbortOnDropHandle::new(tokio::spawn(job));
                self.in_flight = Some((task, position.next));
            }
            None => self.progress.set_durable(position.next),
        }
        Ok(())
    }

    fn complete_flush(
        &mut self,
        done: crate::state::FlushDone,
        next: i64,
        ctx: &mut PartitionContext,
    ) -> Result<(), Error> {
        let elapsed = self.flush_started.elapsed();
        self.progress
            .last_flush_us
            .store(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.progress
            .last_flush_records
            .store(done.records() as u64, Ordering::Relaxed);
        crate::observe::metrics::flush_finished(
            &self.topic,
            self.partition,
            elapsed,
            done.records(),
        );
        if let Some(state) = ctx.state_mut() {
            state.finish_flush(done)?;
        }
        self.progress.set_durable(next);
        Ok(())
    }

    async fn process_batch(
        &mut self,
        batch: &RecordBatch,
        ctx: &mut PartitionContext,
    ) -> Result<Outcome, Error> {
        let mut handled = 0u64;
        let mut outcome = Outcome::Done;
        for record in &batch.records {
            if self.stop.is_stopped() {
                outcome = Outcome::Cancelled;
                break;
            }
            match self.process(batch, record, ctx).await? {
                (Outcome::Done, counted) => {
                    handled += u64::from(counted);
                    if counted {
                        self.fire_timers(TimeKind::Stream, ctx.stream_time(), ctx)
                            .await?;
                    }
                }
                (Outcome::Cancelled, _) => {
                    outcome = Outcome::Cancelled;
                    break;
                }
            }
        }
        self.shared
            .stats
            .processed
            .fetch_add(handled, Ordering::Relaxed);
        self.progress.handled.fetch_add(handled, Ordering::Relaxed);
        if let Some(state) = ctx.state() {
            self.progress
                .timers
                .store(state.pending_timers() as u64, Ordering::Relaxed);
        }
        if let Some(position) = self.tracker.committable() {
            self.progress
                .processed_next
                .store(position.next, Ordering::Relaxed);
            // Nothing unflushed: the records' effects (none in state) are already durable.
            if ctx.state().is_none_or(|s| s.dirty_keys() == 0) {
                self.progress.set_durable(position.next);
            }
        }
        Ok(outcome)
    }

    /// Opens and restores the partition's state on a blocking thread. `None` when the
    /// partition was revoked before the restore finished.
    async fn open_state(&mut self) -> Result<Option<PartitionContext>, Error> {
        let Some(env) = self.shared.state_env.clone() else {
            return Ok(Some(PartitionContext::new(
                self.topic.clone(),
                self.partition,
                None,
            )));
        };
        let (topic, partition, stop) = (self.topic.clone(), self.partition, self.stop.clone());
        let progress = self.progress.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let on_progress = |done: u64, total: u64| {
                let _ = progress.restore_started.set(Instant::now());
                progress.restore_total.store(total, Ordering::Relaxed);
                progress.restore_done.store(done, Ordering::Relaxed);
            };
            PartitionState::open(&env, &topic, partition, &|| stop.is_stopped(), &on_progress)
        })
        .await
        .map_err(|e| Error::WorkerPanicked {
            topic: self.topic.to_string(),
            partition,
            message: if e.is_panic() {
                panic_message(e.into_panic().as_ref())
            } else {
                "restore cancelled".into()
            },
        })??;
        let Some((state, restored)) = opened else {
            return Ok(None);
        };
        self.skip_below = state.restored_source_next();
        let stream_time = restored.source.stream_time;
        // Writes without a new record (timers, hooks) are flushed at the restored position.
        self.tracker = OffsetTracker::starting_at(restored.source);
        self.progress
            .restored_records
            .store(restored.records, Ordering::Relaxed);
        self.progress
            .restore_rate_bits
            .store(restored.rate().to_bits(), Ordering::Relaxed);
        let mut ctx = PartitionContext::new(self.topic.clone(), self.partition, Some(state));
        ctx.set_stream_time(stream_time);
        ctx.set_wall_offset(self.shared.clock_offset_ms.load(Ordering::Relaxed));
        Ok(Some(ctx))
    }

    /// Completes the flush in flight, flushes what is left and publishes the durable offset.
    async fn flush(&mut self, ctx: &mut PartitionContext) -> Result<(), Error> {
        if self.stop.is_lost() {
            return Ok(());
        }
        if let Some((job, next)) = self.in_flight.take() {
            let done = settle(job).await?;
            self.complete_flush(done, next, ctx)?;
        }
        self.since_flush = 0;
        self.last_flush = Instant::now();
        let Some(position) = self.tracker.committable() else {
            return Ok(());
        };
        if let Some(state) = ctx.state_mut() {
            state.flush(position).await?;
        }
        self.progress.set_durable(position.next);
        Ok(())
    }

    fn finish(&mut self, record: &RawRecord, stream_time: i64) {
        self.tracker
            .finish(record.offset, record.timestamp.unwrap_or(-1), stream_time);
        self.since_flush += 1;
    }

    /// Processes one record; the flag says whether it counts as handled.
    async fn process(
        &mut self,
        batch: &RecordBatch,
        raw: &RawRecord,
        ctx: &mut PartitionContext,
    ) -> Result<(Outcome, bool), Error> {
        let offset = raw.offset;
        if offset < self.skip_below {
            // Its effect is already in the restored state: applying it again would double it.
            self.progress.skipped.fetch_add(1, Ordering::Relaxed);
            self.finish(raw, ctx.stream_time());
            return Ok((Outcome::Done, false));
        }
        let stream_time_before = ctx.stream_time();
        let retry = self.shared.config.retry;
        let mut backoff = retry.initial_backoff;
        let mut attempt = 0;
        let failure = loop {
            let decoded =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.decode(batch, raw)));
            let record = match decoded {
                Ok(Ok(record)) => record,
                Ok(Err(e)) => break Failure::Decode(e),
                Err(payload) => {
                    break Failure::Panic(format!(
                        "codec panicked: {}",
                        panic_message(payload.as_ref())
                    ))
                }
            };
            let event_time = self.shared.handler.event_time(&record);
            ctx.set_event_time(event_time);
            ctx.set_stream_time(stream_time_before.max(event_time.unwrap_or(-1)));
            self.sampled += 1;
            let timed = self
                .sampled
                .is_multiple_of(crate::observe::metrics::HANDLER_SAMPLE)
                .then(Instant::now);
            let called = self.call_handler(record, ctx).await;
            if let Some(started) = timed {
                self.handler_duration
                    .record(started.elapsed().as_secs_f64());
            }
            let Some(result) = called else {
                tracing::warn!(topic = %self.topic, partition = self.partition, offset,
                    "revoke timeout: cancelled the in-flight handler; the record stays uncommitted");
                discard_staged(ctx);
                return Ok((Outcome::Cancelled, false));
            };
            let error = match result {
                Ok(Ok(())) => {
                    // Its output first: the record counts only once that is acknowledged.
                    if let Err(error) = self.send_outbox(ctx).await {
                        discard_staged(ctx);
                        break Failure::Output(error);
                    }
                    if let Some(state) = ctx.state_mut() {
                        state.commit_staged();
                    }
                    if ctx.take_late() {
                        self.late(batch, raw).await?;
                    }
                    self.finish(raw, ctx.stream_time());
                    return Ok((Outcome::Done, true));
                }
                Ok(Err(e)) => e,
                Err(payload) => {
                    discard_staged(ctx);
                    break Failure::Panic(format!(
                        "handler panicked: {}",
                        panic_message(payload.as_ref())
                    ));
                }
            };
            discard_staged(ctx);
            if attempt >= retry.max_retries || crate::handler::is_fatal(&error) {
                break Failure::Handler(error);
            }
            attempt += 1;
            tracing::warn!(topic = %self.topic, partition = self.partition, offset, attempt, %error, "handler failed; retrying");
            // A revoke or shutdown interrupts the retries: the record is then neither
            // skipped, dead-lettered nor failed, but left uncommitted for the next owner.
            tokio::select! {
                biased;
                () = self.stop.stopped() => {
                    tracing::info!(topic = %self.topic, partition = self.partition, offset,
                        "stopping during retries: the record stays uncommitted");
                    return Ok((Outcome::Cancelled, false));
                }
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(retry.max_backoff);
        };
        // A record that was not applied does not move stream time.
        ctx.set_stream_time(stream_time_before);
        self.apply_policy(batch, raw, failure, ctx).await?;
        Ok((Outcome::Done, false))
    }

    /// A record was late for every window it falls in: count it, and dead-letter it if
    /// configured.
    async fn late(&self, batch: &RecordBatch, raw: &RawRecord) -> Result<(), Error> {
        self.progress.late.fetch_add(1, Ordering::Relaxed);
        let crate::LatePolicy::DeadLetter(dlq) = &self.shared.config.late_policy else {
            return Ok(());
        };
        let Some(producer) = &self.shared.producer else {
            unreachable!("every consumer has a producer");
        };
        let failure = Failure::Late;
        let record = dead_letter(dlq, &self.topic, self.partition, batch, raw, &failure);
        producer
            .send_records(vec![record])
            .await
            .map_err(|e| Error::Output {
                topic: self.topic.to_string(),
                partition: self.partition,
                offset: raw.offset,
                source: Box::new(e),
            })?;
        Ok(())
    }

    /// Fires every timer of `kind` due at `now`, earliest first (see [`crate::timer`]).
    async fn fire_timers(
        &mut self,
        kind: TimeKind,
        now: i64,
        ctx: &mut PartitionContext,
    ) -> Result<(), Error> {
        while let Some(entry) = ctx.state().and_then(|s| s.next_timer(kind, now)) {
            ctx.stage_timer(false, entry.clone())?;
            let (_, at, owner, key) = entry.clone();
            let outcome = match owner {
                Owner::Handler => {
                    let timer = Timer { kind, at, key };
                    let call = self.shared.handler.on_timer(timer, ctx);
                    match std::panic::AssertUnwindSafe(call).catch_unwind().await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(payload) => {
                            Err(format!("panicked: {}", panic_message(payload.as_ref())))
                        }
                    }
                }
                Owner::Window => crate::window::close(&self.shared.handler, &key, at, ctx)
                    .await
                    .map_err(|e| e.to_string()),
                Owner::Expiry => {
                    let now = match kind {
                        TimeKind::Stream => ctx.stream_time(),
                        _ => ctx.wall_now(),
                    };
                    match ctx.state_mut().map(|s| s.sweep_expired(&key, now)) {
                        Some(Ok(expired)) => {
                            tracing::debug!(topic = %self.topic, partition = self.partition,
                                store = %String::from_utf8_lossy(&key), expired, "expired entries deleted");
                            Ok(())
                        }
                        Some(Err(e)) => Err(e.to_string()),
                        None => Ok(()),
                    }
                }
            };
            let outcome = match outcome {
                Ok(()) => self.send_outbox(ctx).await.map_err(|e| e.to_string()),
                failed => failed,
            };
            match outcome {
                Ok(()) => {
                    if let Some(state) = ctx.state_mut() {
                        state.commit_staged();
                    }
                }
                Err(message) => {
                    discard_staged(ctx);
                    if matches!(self.shared.config.error_policy, ErrorPolicy::Fail) {
                        return Err(Error::Timer {
                            topic: self.topic.to_string(),
                            partition: self.partition,
                            at,
                            message,
                        });
                    }
                    tracing::warn!(topic = %self.topic, partition = self.partition, at, %message,
                        "timer failed; dropping it");
                    ctx.stage_timer(false, entry)?;
                    if let Some(state) = ctx.state_mut() {
                        state.commit_staged();
                    }
                }
            }
        }
        Ok(())
    }

    /// Produces the output records the current record staged and waits for their
    /// acknowledgements.
    async fn send_outbox(
        &self,
        ctx: &mut PartitionContext,
    ) -> Result<(), crate::changelog::ChangelogError> {
        let outbox = ctx.take_outbox();
        if outbox.is_empty() {
            return Ok(());
        }
        let Some(producer) = &self.shared.producer else {
            unreachable!("every consumer has a producer");
        };
        producer.send_records(outbox).await.map(|_| ())
    }

    /// Runs the handler, catching a panic. A handler that completes on its first poll (no
    /// waiting) costs no timer; one that waits races the revoke timeout once the worker is
    /// told to stop. `None`: cancelled by the revoke timeout.
    async fn call_handler(
        &self,
        record: Record<KC::Item, VC::Item>,
        ctx: &mut PartitionContext,
    ) -> Option<std::thread::Result<Result<(), crate::HandlerError>>> {
        let handled =
            std::panic::AssertUnwindSafe(self.shared.handler.handle(record, ctx)).catch_unwind();
        let mut handled = std::pin::pin!(handled);
        if let Poll::Ready(result) = futures::poll!(handled.as_mut()) {
            return Some(result);
        }
        tokio::select! {
            biased;
            r = handled => Some(r),
            () = cancel_after_stop(&self.stop, self.shared.config.revoke_timeout) => None,
        }
    }

    fn decode(
        &self,
        batch: &RecordBatch,
        raw: &RawRecord,
    ) -> Result<Record<KC::Item, VC::Item>, CodecError> {
        let key = batch
            .key(raw)
            .map(|b| self.shared.key_codec.decode(b))
            .transpose()?;
        let value = batch
            .value(raw)
            .map(|b| self.shared.value_codec.decode(b))
            .transpose()?;
        let headers = batch
            .headers(raw)
            .map(|(k, v)| (k.to_string(), v.map(<[u8]>::to_vec)))
            .collect();
        Ok(Record {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: raw.offset,
            timestamp: raw.timestamp,
            key,
            value,
            headers,
        })
    }

    async fn apply_policy(
        &mut self,
        batch: &RecordBatch,
        raw: &RawRecord,
        failure: Failure,
        ctx: &mut PartitionContext,
    ) -> Result<(), Error> {
        let (topic, partition, offset) = (self.topic.to_string(), self.partition, raw.offset);
        match &self.shared.config.error_policy {
            ErrorPolicy::Fail => {
                // The tracker ends before this record, so this flush makes everything before
                // it durable and leaves it and what follows uncommitted.
                self.flush(ctx).await?;
                Err(failure.into_error(topic, partition, offset))
            }
            ErrorPolicy::Skip => {
                tracing::warn!(%topic, partition, offset, kind = failure.kind(), error = %failure.message(), "skipping record");
                self.progress.skipped.fetch_add(1, Ordering::Relaxed);
                self.finish(raw, ctx.stream_time());
                Ok(())
            }
            ErrorPolicy::DeadLetter(dlq) => {
                let Some(producer) = &self.shared.producer else {
                    unreachable!("a producer is created whenever a dead-letter topic is configured")
                };
                let record = dead_letter(dlq, &topic, partition, batch, raw, &failure);
                producer
                    .send_records(vec![record])
                    .await
                    .map_err(|e| Error::DeadLetter {
                        topic: topic.clone(),
                        partition,
                        offset,
                        dead_letter_topic: dlq.clone(),
                        source: match e {
                            crate::changelog::ChangelogError::Produce { source, .. } => {
                                Box::new(source)
                            }
                            _ => Box::new(rdkafka::error::KafkaError::Canceled),
                        },
                    })?;
                tracing::warn!(%topic, partition, offset, dead_letter_topic = %dlq, error = %failure.message(), "record dead-lettered");
                self.shared
                    .stats
                    .dead_lettered
                    .fetch_add(1, Ordering::Relaxed);
                self.progress.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.finish(raw, ctx.stream_time());
                Ok(())
            }
        }
    }
}

fn discard_staged(ctx: &mut PartitionContext) {
    if let Some(state) = ctx.state_mut() {
        state.discard_staged();
    }
    ctx.take_outbox();
}

/// Milliseconds since the epoch, for wall-clock timers.
fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Resolves `timeout` after `stop` is signalled (at once for a lost partition); never before.
async fn cancel_after_stop(stop: &StopSignal, timeout: Duration) {
    stop.stopped().await;
    if !stop.is_lost() {
        tokio::time::sleep(timeout).await;
    }
}

/// A flush running as its own task; aborted if the worker goes away first.
type InFlight = AbortOnDropHandle<Result<crate::state::FlushDone, crate::StateError>>;

/// Resolves when the flush in flight finished; never while there is none.
async fn finished(
    in_flight: &mut Option<(InFlight, i64)>,
) -> Result<crate::state::FlushDone, crate::StateError> {
    match in_flight {
        Some((task, _)) => flatten(task.await),
        None => std::future::pending().await,
    }
}

async fn settle(task: InFlight) -> Result<crate::state::FlushDone, crate::StateError> {
    flatten(task.await)
}

fn flatten(
    joined: Result<Result<crate::state::FlushDone, crate::StateError>, tokio::task::JoinError>,
) -> Result<crate::state::FlushDone, crate::StateError> {
    joined.unwrap_or_else(|e| {
        Err(crate::StateError::CorruptMetadata {
            path: std::path::PathBuf::new(),
            reason: format!("flush task ended abnormally: {e}"),
        })
    })
}
