//! One task per assigned partition: restore state, then decode and handle records in offset
//! order, flush state, publish durable offsets.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::message::{Headers, Message, OwnedMessage};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::policy::{dead_letter, panic_message, Failure};
use crate::changelog::ChangelogWriter;
use crate::codec::{Codec, CodecError};
use crate::config::{ConsumerConfig, ErrorPolicy};
use crate::error::Error;
use crate::handler::{Handler, PartitionContext, Record};
use crate::observe::StatsInner;
use crate::offset::{OffsetTracker, PartitionProgress};
use crate::state::{PartitionState, StateEnv};

/// What all workers of a consumer share.
pub(crate) struct Shared<KC, VC, H> {
    pub(crate) config: Arc<ConsumerConfig>,
    pub(crate) key_codec: KC,
    pub(crate) value_codec: VC,
    pub(crate) handler: H,
    pub(crate) state_env: Option<StateEnv>,
    pub(crate) producer: Option<ChangelogWriter>,
    pub(crate) stats: Arc<StatsInner>,
    /// A worker that cannot go on reports here; the poll loop stops the consumer.
    pub(crate) failures: mpsc::UnboundedSender<Error>,
}

/// How the processing of one record ended.
enum Outcome {
    Done,
    /// The revoke timeout ran out while the handler ran: stop without this record.
    Cancelled,
}

pub(crate) struct Worker<KC: Codec, VC: Codec, H> {
    shared: Arc<Shared<KC, VC, H>>,
    topic: String,
    partition: i32,
    progress: Arc<PartitionProgress>,
    stop: CancellationToken,
    tracker: OffsetTracker,
    /// Source offsets below this are already in the restored state.
    skip_below: i64,
    since_flush: usize,
    last_flush: Instant,
}

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
        stop: CancellationToken,
    ) -> Self {
        Self {
            shared,
            topic,
            partition,
            progress,
            stop,
            tracker: OffsetTracker::default(),
            skip_below: -1,
            since_flush: 0,
            last_flush: Instant::now(),
        }
    }

    /// Runs until stopped or until its queue closes; reports a fatal error to the poll loop.
    /// A panic outside the handler and codecs (those are errors of their record) is reported
    /// too: a worker never ends silently while its partition looks idle.
    pub(crate) async fn run(mut self, rx: mpsc::Receiver<OwnedMessage>) {
        let (topic, partition) = (self.topic.clone(), self.partition);
        let result = match std::panic::AssertUnwindSafe(self.run_inner(rx))
            .catch_unwind()
            .await
        {
            Ok(result) => result,
            Err(payload) => Err(Error::WorkerPanicked {
                topic: topic.clone(),
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

    async fn run_inner(&mut self, mut rx: mpsc::Receiver<OwnedMessage>) -> Result<(), Error> {
        let Some(mut ctx) = self.open_state().await? else {
            return Ok(()); // revoked while restoring
        };
        self.progress.ready.store(true, Ordering::Release);
        let flush_interval = self.shared.config.flush_interval;
        let mut ticker = tokio::time::interval(flush_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    self.progress.queued.fetch_sub(1, Ordering::Relaxed);
                    match self.process(&msg, &mut ctx).await? {
                        Outcome::Done => {}
                        Outcome::Cancelled => break,
                    }
                    if self.since_flush >= self.shared.config.flush_max_records
                        || self.last_flush.elapsed() >= flush_interval
                    {
                        self.flush(&mut ctx).await?;
                    }
                }
                _ = ticker.tick() => {
                    if self.last_flush.elapsed() >= flush_interval {
                        self.flush(&mut ctx).await?;
                    }
                }
            }
        }
        self.flush(&mut ctx).await
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
        let opened = tokio::task::spawn_blocking(move || {
            PartitionState::open(&env, &topic, partition, &|| stop.is_cancelled())
        })
        .await
        .map_err(|e| Error::WorkerPanicked {
            topic: self.topic.clone(),
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
        self.progress
            .restored_records
            .store(restored.records, Ordering::Relaxed);
        self.progress
            .restore_rate_bits
            .store(restored.rate().to_bits(), Ordering::Relaxed);
        Ok(Some(PartitionContext::new(
            self.topic.clone(),
            self.partition,
            Some(state),
        )))
    }

    /// Flushes state (if any) and publishes the durable offset.
    async fn flush(&mut self, ctx: &mut PartitionContext) -> Result<(), Error> {
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

    fn finish(&mut self, msg: &OwnedMessage, ctx: &PartitionContext) {
        let offset = msg.offset();
        self.tracker
            .finish(offset, msg.timestamp().to_millis().unwrap_or(-1));
        self.since_flush += 1;
        self.progress
            .processed_next
            .store(offset + 1, Ordering::Relaxed);
        // Nothing unflushed: the record's effects (none in state) are already durable.
        if ctx.state().is_none_or(|s| s.dirty_keys() == 0) {
            if let Some(position) = self.tracker.committable() {
                self.progress.set_durable(position.next);
            }
        }
    }

    async fn process(
        &mut self,
        msg: &OwnedMessage,
        ctx: &mut PartitionContext,
    ) -> Result<Outcome, Error> {
        let offset = msg.offset();
        if offset < self.skip_below {
            // Its effect is already in the restored state: applying it again would double it.
            self.progress.skipped.fetch_add(1, Ordering::Relaxed);
            self.finish(msg, ctx);
            return Ok(Outcome::Done);
        }
        let retry = self.shared.config.retry;
        let mut backoff = retry.initial_backoff;
        let mut attempt = 0;
        let failure = loop {
            let decoded =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.decode(msg)));
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
            let handled = std::panic::AssertUnwindSafe(self.shared.handler.handle(record, ctx))
                .catch_unwind();
            let result = tokio::select! {
                biased;
                r = handled => r,
                () = cancel_after_stop(&self.stop, self.shared.config.revoke_timeout) => {
                    tracing::warn!(topic = %self.topic, partition = self.partition, offset,
                        "revoke timeout: cancelled the in-flight handler; the record stays uncommitted");
                    discard_staged(ctx);
                    return Ok(Outcome::Cancelled);
                }
            };
            let error = match result {
                Ok(Ok(())) => {
                    if let Some(state) = ctx.state_mut() {
                        state.overlay_mut().commit_staged();
                    }
                    self.shared.stats.processed.fetch_add(1, Ordering::Relaxed);
                    self.finish(msg, ctx);
                    return Ok(Outcome::Done);
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
            if attempt >= retry.max_retries {
                break Failure::Handler(error);
            }
            attempt += 1;
            tracing::warn!(topic = %self.topic, partition = self.partition, offset, attempt, %error, "handler failed; retrying");
            // A revoke or shutdown interrupts the retries: the record is then neither
            // skipped, dead-lettered nor failed, but left uncommitted for the next owner.
            tokio::select! {
                biased;
                () = self.stop.cancelled() => {
                    tracing::info!(topic = %self.topic, partition = self.partition, offset,
                        "stopping during retries: the record stays uncommitted");
                    return Ok(Outcome::Cancelled);
                }
                () = tokio::time::sleep(backoff) => {}
            }
            if self.stop.is_cancelled() {
                return Ok(Outcome::Cancelled);
            }
            backoff = (backoff * 2).min(retry.max_backoff);
        };
        self.apply_policy(msg, failure, ctx).await?;
        Ok(Outcome::Done)
    }

    fn decode(&self, msg: &OwnedMessage) -> Result<Record<KC::Item, VC::Item>, CodecError> {
        let key = msg
            .key()
            .map(|b| self.shared.key_codec.decode(b))
            .transpose()?;
        let value = msg
            .payload()
            .map(|b| self.shared.value_codec.decode(b))
            .transpose()?;
        let headers = msg
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Record {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: msg.offset(),
            timestamp: msg.timestamp().to_millis(),
            key,
            value,
            headers,
        })
    }

    async fn apply_policy(
        &mut self,
        msg: &OwnedMessage,
        failure: Failure,
        ctx: &mut PartitionContext,
    ) -> Result<(), Error> {
        let (topic, partition, offset) = (self.topic.clone(), self.partition, msg.offset());
        match &self.shared.config.error_policy {
            ErrorPolicy::Fail => {
                // The record is still pending in the tracker, so this flush makes everything
                // before it durable and leaves it and what follows uncommitted.
                self.flush(ctx).await?;
                Err(failure.into_error(topic, partition, offset))
            }
            ErrorPolicy::Skip => {
                tracing::warn!(%topic, partition, offset, kind = failure.kind(), error = %failure.message(), "skipping record");
                self.progress.skipped.fetch_add(1, Ordering::Relaxed);
                self.finish(msg, ctx);
                Ok(())
            }
            ErrorPolicy::DeadLetter(dlq) => {
                let Some(producer) = &self.shared.producer else {
                    unreachable!("a producer is created whenever a dead-letter topic is configured")
                };
                let record = dead_letter(dlq, msg, &failure);
                producer
                    .send_all(vec![record])
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
                self.finish(msg, ctx);
                Ok(())
            }
        }
    }
}

fn discard_staged(ctx: &mut PartitionContext) {
    if let Some(state) = ctx.state_mut() {
        state.overlay_mut().discard_staged();
    }
}

/// Resolves `timeout` after `stop` is cancelled; never before.
async fn cancel_after_stop(stop: &CancellationToken, timeout: Duration) {
    stop.cancelled().await;
    tokio::time::sleep(timeout).await;
}
