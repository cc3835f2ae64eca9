//! Opening the partition's state, and flushing it: when a flush is due, starting one as
//! its own task while processing goes on, and completing it (publishing durable offsets).

use super::*;
use crate::partition::outputs::Sent;
use crate::state::checkpoint::SourcePosition;
use crate::state::FlushDone;

use crate::state::FlushJob as StateFlush;

impl<KC, VC, H> Worker<KC, VC, H>
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    pub(super) fn flush_due(&self, ctx: &mut PartitionContext) -> bool {
        let config = &self.shared.config;
        self.since_flush >= config.flush_max_records
            || self.last_flush.elapsed() >= config.flush_interval
            || self.outputs.deferred_bytes() >= config.overlay_bytes
            || ctx
                .with_state(|s| s.overlay_bytes() >= config.overlay_bytes)
                .unwrap_or(false)
    }

    /// Starts a flush that runs while processing goes on. With one already in flight it
    /// waits for that one only when the overlay is over its byte budget (back-pressure);
    /// otherwise the new writes wait for the next turn.
    pub(super) async fn start_flush(&mut self, ctx: &mut PartitionContext) -> Result<(), Error> {
        if let Some((job, next)) = self.in_flight.take() {
            let budget = self.shared.config.overlay_bytes;
            let over_budget = ctx
                .with_state(|s| s.overlay_bytes() >= budget)
                .unwrap_or(false);
            if !over_budget {
                self.in_flight = Some((job, next));
                return Ok(());
            }
            let done = settle(job).await?;
            self.complete_flush(done, next, ctx)?;
        }
        self.since_flush = 0;
        self.last_flush = Instant::now();
        let Some(position) = self.committable() else {
            return Ok(());
        };
        let Some(flush) = self.begin_flush(ctx, &position, false) else {
            self.progress.set_durable(position.next);
            return Ok(());
        };
        self.flush_started = Instant::now();
        // Its own task: it makes progress (acknowledgements, the RocksDB write) while this
        // worker is busy with a batch, not only between batches.
        self.in_flight = Some((AbortOnDropHandle::new(tokio::spawn(flush)), position.next));
        Ok(())
    }

    /// The flush of everything up to `position`: the state's unflushed writes and the
    /// outputs sent since the last flush. `None` when there is nothing to flush. Under
    /// exactly-once it is a unit of the member's transaction; `urgent` asks for that
    /// transaction to be committed without waiting for the interval.
    fn begin_flush(
        &mut self,
        ctx: &mut PartitionContext,
        position: &SourcePosition,
        urgent: bool,
    ) -> Option<FlushFuture> {
        let outputs = self.outputs.take();
        if let Some(txn) = self.shared.transactions.clone() {
            let job = ctx
                .with_state(|state| state.start_staged_flush(position.clone()))
                .flatten();
            if job.is_none() && outputs.is_empty() {
                return None;
            }
            return Some(Box::pin(self.transactional_flush_job(
                txn,
                outputs,
                job,
                position.next,
                urgent,
            )));
        }
        let job = ctx
            .with_state(|state| state.start_flush(position.clone()))
            .flatten();
        if job.is_none() && outputs.is_empty() {
            return None;
        }
        Some(Box::pin(self.flush_job(outputs, job)))
    }

    /// Waits for the output records' acknowledgements, then flushes the state: a flush
    /// makes a record durable only with its outputs, and writes nothing if one was lost.
    fn flush_job(
        &self,
        outputs: Sent,
        job: Option<StateFlush>,
    ) -> impl std::future::Future<Output = Result<Option<FlushDone>, Error>> + Send + 'static {
        let (topic, partition) = (self.topic.clone(), self.partition);
        async move {
            outputs
                .acknowledged()
                .await
                .map_err(|(offset, error)| Error::Output {
                    topic: topic.to_string(),
                    partition,
                    offset,
                    key: None,
                    source: Box::new(error),
                })?;
            match job {
                Some(job) => Ok(Some(job.await?)),
                None => Ok(None),
            }
        }
    }

    pub(super) fn complete_flush(
        &mut self,
        done: Option<FlushDone>,
        next: i64,
        ctx: &mut PartitionContext,
    ) -> Result<(), Error> {
        let Some(done) = done else {
            // Only output records were waited for.
            self.progress.set_durable(next);
            return Ok(());
        };
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
        ctx.with_state(|state| state.finish_flush(done))
            .transpose()?;
        self.progress.set_durable(next);
        Ok(())
    }

    /// Opens and restores the partition's state on a blocking thread. `None` when the
    /// partition was revoked before the restore finished.
    pub(super) async fn open_state(&mut self) -> Result<Option<PartitionContext>, Error> {
        let Some(env) = self.shared.state_env.clone() else {
            return Ok(Some(PartitionContext::new(
                self.topic.clone(),
                self.partition,
                None,
            )));
        };
        let (topic, partition, stop) = (self.topic.clone(), self.partition, self.stop.clone());
        let progress = self.progress.clone();
        let claim = self.standby_claim.take();
        let stats = self.shared.stats.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let on_progress = |done: u64, total: u64| {
                let _ = progress.restore_started.set(Instant::now());
                progress.restore_total.store(total, Ordering::Relaxed);
                progress.restore_done.store(done, Ordering::Relaxed);
            };
            // A standby replica of this partition is closed first; the restore then reads
            // only what follows its checkpoint.
            let promoted = claim.as_ref().is_some_and(|c| c.take_replica());
            let opened =
                PartitionState::open(&env, &topic, partition, &|| stop.is_stopped(), &on_progress);
            if let (true, Ok(Some((_, restored)))) = (promoted, &opened) {
                crate::standby::report_promotion(&env, &stats, (&topic, partition), restored);
            }
            opened.map(|o| o.map(|(state, restored)| (state, restored, claim)))
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
        let Some((state, restored, claim)) = opened else {
            return Ok(None);
        };
        self.standby_claim = claim;
        self.applied = restored.source.clone();
        let stream_time = restored.source.stream_time;
        // Writes without a new record (timers, hooks) are flushed at the restored position.
        self.tracker = OffsetTracker::starting_at(restored.source.clone());
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
    pub(super) async fn flush(&mut self, ctx: &mut PartitionContext) -> Result<(), Error> {
        if self.stop.is_lost() {
            return Ok(());
        }
        if let Some((job, next)) = self.in_flight.take() {
            let done = settle(job).await?;
            self.complete_flush(done, next, ctx)?;
        }
        self.since_flush = 0;
        self.last_flush = Instant::now();
        let Some(position) = self.committable() else {
            return Ok(());
        };
        // The state is locked only to start and to finish the flush (records in flight
        // share it under key-level concurrency), never while waiting for it.
        if let Some(flush) = self.begin_flush(ctx, &position, true) {
            if let Some(done) = flush.await? {
                ctx.with_state(|state| state.finish_flush(done))
                    .transpose()?;
            }
        }
        self.progress.set_durable(position.next);
        Ok(())
    }
}

/// A flush, before it runs.
type FlushFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<FlushDone>, Error>> + Send>>;

/// A flush running as its own task (outputs' acknowledgements, then the state's flush, if
/// the partition has state); aborted if the worker goes away first.
pub(super) type InFlight = AbortOnDropHandle<Result<Option<FlushDone>, Error>>;

/// Resolves when the flush in flight finished; never while there is none.
pub(super) async fn finished(
    in_flight: &mut Option<(InFlight, i64)>,
) -> Result<Option<FlushDone>, Error> {
    match in_flight {
        Some((task, _)) => flatten(task.await),
        None => std::future::pending().await,
    }
}

pub(super) async fn settle(task: InFlight) -> Result<Option<FlushDone>, Error> {
    flatten(task.await)
}

pub(super) fn flatten(
    joined: Result<Result<Option<FlushDone>, Error>, tokio::task::JoinError>,
) -> Result<Option<FlushDone>, Error> {
    joined.unwrap_or_else(|e| {
        Err(crate::StateError::CorruptMetadata {
            path: std::path::PathBuf::new(),
            reason: format!("flush task ended abnormally: {e}"),
        }
        .into())
    })
}
