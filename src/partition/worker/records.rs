//! Records: decoding, calling the handler, late records and the error policy.

use super::*;

impl<KC, VC, H> Worker<KC, VC, H>
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    pub(super) async fn process_batch(
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
                    // Checked here, not only inside `fire_timers`: no future per record
                    // when no timer is due.
                    let now = ctx.stream_time();
                    if counted
                        && ctx
                            .state()
                            .is_some_and(|s| s.timer_due(TimeKind::Stream, now))
                    {
                        self.fire_timers(TimeKind::Stream, now, ctx).await?;
                    }
                }
                (Outcome::Cancelled, _) => {
                    outcome = Outcome::Cancelled;
                    break;
                }
            }
        }
        self.after_records(handled, ctx);
        Ok(outcome)
    }

    /// After a run of records: counts the handled ones and publishes how far the
    /// partition got (committable, and durable when nothing is left unflushed).
    pub(super) fn after_records(&mut self, handled: u64, ctx: &mut PartitionContext) {
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
        if let Some(position) = self.committable() {
            self.progress
                .processed_next
                .store(position.next, Ordering::Relaxed);
            // Nothing unflushed, no flush in flight, no output unacknowledged: the records'
            // effects are already durable.
            if self.nothing_pending(ctx) {
                self.progress.set_durable(position.next);
            }
        }
    }

    /// Whether every effect of the records handled so far is durable: no state write waits
    /// for a flush, no flush is in flight (its writes are not in RocksDB yet, though no
    /// longer counted as dirty) and no output record waits for its acknowledgement. Only
    /// then may the position move without a flush.
    pub(super) fn nothing_pending(&self, ctx: &mut PartitionContext) -> bool {
        self.in_flight.is_none()
            && self.outputs.is_empty()
            && ctx.with_state(|s| s.dirty_keys() == 0).unwrap_or(true)
    }

    pub(super) fn finish(&mut self, record: &RawRecord, stream_time: i64) {
        self.tracker
            .finish(record.offset, record.timestamp.unwrap_or(-1), stream_time);
        self.since_flush += 1;
    }

    /// Processes one record; the flag says whether it counts as handled.
    pub(super) async fn process(
        &mut self,
        batch: &RecordBatch,
        raw: &RawRecord,
        ctx: &mut PartitionContext,
    ) -> Result<(Outcome, bool), Error> {
        if !self.tables_aligned_now(raw) {
            self.align_tables(raw).await?;
        }
        if self.applied.covers(raw.offset) {
            // Its effect is already in the restored state: applying it again would double it.
            self.progress.skipped.fetch_add(1, Ordering::Relaxed);
            self.finish(raw, ctx.stream_time());
            return Ok((Outcome::Done, false));
        }
        let stream_time_before = ctx.stream_time();
        self.sampled += 1;
        let timed = self
            .sampled
            .is_multiple_of(crate::observe::metrics::HANDLER_SAMPLE)
            .then_some(&self.handler_duration);
        // Records handled one after another join one acknowledgement group until the next
        // flush takes it (one shared count, not one per record).
        let group = self.outputs.open_group();
        let attempted = attempt(&self.shared, &self.stop, (batch, raw), ctx, (timed, group)).await;
        match attempted {
            Attempted::Handled(sent) => {
                if let Some(sent) = sent {
                    self.outputs.push(raw.offset, sent);
                }
                ctx.commit_staged();
                if ctx.take_late() {
                    self.late(batch, raw).await?;
                }
                self.finish(raw, ctx.stream_time());
                Ok((Outcome::Done, true))
            }
            Attempted::Cancelled => Ok((Outcome::Cancelled, false)),
            Attempted::Failed(failure) => {
                // A record that was not applied does not move stream time.
                ctx.set_stream_time(stream_time_before);
                self.apply_policy(batch, raw, failure, ctx).await?;
                Ok((Outcome::Done, false))
            }
        }
    }

    /// A record was late for every window it falls in: count it, and dead-letter it if
    /// configured.
    pub(super) async fn late(&self, batch: &RecordBatch, raw: &RawRecord) -> Result<(), Error> {
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
                key: crate::error::shown_key(batch.key(raw)),
                source: Box::new(e),
            })?;
        Ok(())
    }

    pub(super) async fn apply_policy(
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
                Err(failure.into_error(topic, partition, (offset, batch.key(raw))))
            }
            ErrorPolicy::Skip => {
                tracing::warn!(%topic, partition, offset, kind = failure.kind(), error = %failure.message(), "skipping record");
                self.progress.skipped.fetch_add(1, Ordering::Relaxed);
                self.finish(raw, ctx.stream_time());
                Ok(())
            }
            ErrorPolicy::DeadLetter(dlq) => {
                send_dead_letter(
                    &self.shared,
                    dlq,
                    (&self.topic, partition),
                    (batch, raw),
                    &failure,
                )
                .await?;
                self.progress.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.finish(raw, ctx.stream_time());
                Ok(())
            }
        }
    }
}

/// How a record's attempts ended.
pub(super) enum Attempted {
    /// The handler succeeded and its output records were handed to the producer (their
    /// acknowledgements are in `Sent`, for the flush to wait for); its state writes are
    /// still staged in its context (the caller keeps them).
    Handled(Option<Pending>),
    /// The worker is stopping: the record stays uncommitted (its writes are dropped).
    Cancelled,
    /// It failed (decode, handler, panic, output) after the retries the policy allows; its
    /// writes are dropped. The error policy decides what follows.
    Failed(Failure),
}

/// Decodes a record, runs the handler (retrying as configured, never past a stop) and
/// sends its output records; times the handler into `timed` when given. Used for records
/// one at a time and for records in flight under key-level concurrency alike.
pub(super) async fn attempt<KC, VC, H>(
    shared: &Shared<KC, VC, H>,
    stop: &StopSignal,
    (batch, raw): (&RecordBatch, &RawRecord),
    ctx: &mut PartitionContext,
    (timed, group): (Option<&metrics::Histogram>, Option<Pending>),
) -> Attempted
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    let (partition, offset) = (ctx.partition(), raw.offset);
    let stream_time_before = ctx.stream_time();
    let retry = shared.config.retry;
    let mut backoff = retry.initial_backoff;
    let mut attempt = 0;
    loop {
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decode(shared, ctx.topic_arc(), partition, batch, raw)
        }));
        let record = match decoded {
            Ok(Ok(record)) => record,
            Ok(Err(e)) => return Attempted::Failed(Failure::Decode(e)),
            Err(payload) => {
                let message = format!("codec panicked: {}", panic_message(payload.as_ref()));
                return Attempted::Failed(Failure::Panic(message));
            }
        };
        let event_time = shared.handler.event_time(&record);
        ctx.set_event_time(event_time);
        ctx.set_stream_time(stream_time_before.max(event_time.unwrap_or(-1)));
        let started = timed.map(|_| Instant::now());
        let called = call_handler(shared, stop, record, ctx).await;
        if let (Some(histogram), Some(started)) = (timed, started) {
            histogram.record(started.elapsed().as_secs_f64());
        }
        let Some(result) = called else {
            tracing::warn!(
                topic = ctx.topic(),
                partition,
                offset,
                "revoke timeout: cancelled the in-flight handler; the record stays uncommitted"
            );
            ctx.discard_staged();
            return Attempted::Cancelled;
        };
        let error = match result {
            // Its output is produced now and acknowledged by the flush that makes the
            // record durable; one the producer refuses at once is the record's error.
            // Most records send nothing: no asynchronous call for them.
            Ok(Ok(())) if ctx.outbox_is_empty() => return Attempted::Handled(None),
            Ok(Ok(())) => {
                match enqueue_outbox(shared, ctx, group.as_ref().map(Pending::share)).await {
                    Ok(sent) => return Attempted::Handled(sent),
                    Err(error) => {
                        ctx.discard_staged();
                        return Attempted::Failed(Failure::Output(error));
                    }
                }
            }
            Ok(Err(e)) => e,
            Err(payload) => {
                ctx.discard_staged();
                crate::observe::metrics::handler_error(ctx.topic(), partition);
                let message = format!("handler panicked: {}", panic_message(payload.as_ref()));
                return Attempted::Failed(Failure::Panic(message));
            }
        };
        ctx.discard_staged();
        crate::observe::metrics::handler_error(ctx.topic(), partition);
        if attempt >= retry.max_retries || crate::handler::is_fatal(&error) {
            return Attempted::Failed(Failure::Handler(error));
        }
        attempt += 1;
        crate::observe::metrics::handler_retry(ctx.topic(), partition);
        tracing::warn!(topic = ctx.topic(), partition, offset, attempt, %error, "handler failed; retrying");
        // A revoke or shutdown interrupts the retries: the record is then neither skipped,
        // dead-lettered nor failed, but left uncommitted for the next owner.
        tokio::select! {
            biased;
            () = stop.stopped() => {
                tracing::info!(topic = ctx.topic(), partition, offset,
                    "stopping during retries: the record stays uncommitted");
                return Attempted::Cancelled;
            }
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(retry.max_backoff);
    }
}

/// Runs the handler, catching a panic. A handler that completes on its first poll (no
/// waiting) costs no timer; one that waits races the revoke timeout once the worker is told
/// to stop. `None`: cancelled by the revoke timeout.
async fn call_handler<KC, VC, H>(
    shared: &Shared<KC, VC, H>,
    stop: &StopSignal,
    record: Record<KC::Item, VC::Item>,
    ctx: &mut PartitionContext,
) -> Option<std::thread::Result<Result<(), crate::HandlerError>>>
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    let handled = std::panic::AssertUnwindSafe(shared.handler.handle(record, ctx)).catch_unwind();
    let mut handled = std::pin::pin!(handled);
    if let Poll::Ready(result) = futures::poll!(handled.as_mut()) {
        return Some(result);
    }
    tokio::select! {
        biased;
        r = handled => Some(r),
        () = cancel_after_stop(stop, shared.config.revoke_timeout) => None,
    }
}

/// Decodes a fetched record with the consumer's codecs.
pub(super) fn decode<KC, VC, H>(
    shared: &Shared<KC, VC, H>,
    topic: Arc<str>,
    partition: i32,
    batch: &RecordBatch,
    raw: &RawRecord,
) -> Result<Record<KC::Item, VC::Item>, CodecError>
where
    KC: Codec,
    VC: Codec,
{
    let key = batch
        .key(raw)
        .map(|b| shared.key_codec.decode(b))
        .transpose()?;
    let value = batch
        .value(raw)
        .map(|b| shared.value_codec.decode(b))
        .transpose()?;
    let headers = batch
        .headers(raw)
        .map(|(k, v)| (k.to_string(), v.map(<[u8]>::to_vec)))
        .collect();
    Ok(Record {
        topic,
        partition,
        offset: raw.offset,
        timestamp: raw.timestamp,
        key,
        value,
        headers,
    })
}

/// Produces a failed record to the dead-letter topic and waits for the acknowledgement.
pub(super) async fn send_dead_letter<KC, VC, H>(
    shared: &Shared<KC, VC, H>,
    dlq: &str,
    (topic, partition): (&str, i32),
    (batch, raw): (&RecordBatch, &RawRecord),
    failure: &Failure,
) -> Result<(), Error> {
    let Some(producer) = &shared.producer else {
        unreachable!("a producer is created whenever a dead-letter topic is configured")
    };
    let record = dead_letter(dlq, topic, partition, batch, raw, failure);
    producer
        .send_records(vec![record])
        .await
        .map_err(|e| Error::DeadLetter {
            topic: topic.to_string(),
            partition,
            offset: raw.offset,
            dead_letter_topic: dlq.to_string(),
            source: match e {
                crate::changelog::ChangelogError::Produce { source, .. } => Box::new(source),
                _ => Box::new(rdkafka::error::KafkaError::Canceled),
            },
        })?;
    tracing::warn!(%topic, partition, offset = raw.offset, dead_letter_topic = %dlq,
        error = %failure.message(), "record dead-lettered");
    shared.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Hands the output records the current record staged to the producer; their
/// acknowledgements are waited for by the next flush (see `partition::outputs`).
/// `None` also when they joined `group` (see `RecordSink::enqueue_joining`).
pub(super) async fn enqueue_outbox<KC, VC, H>(
    shared: &Shared<KC, VC, H>,
    ctx: &mut PartitionContext,
    group: Option<Pending>,
) -> Result<Option<Pending>, crate::changelog::ChangelogError> {
    let outbox = ctx.take_outbox();
    if outbox.is_empty() {
        return Ok(None);
    }
    let Some(producer) = &shared.producer else {
        unreachable!("every consumer has a producer");
    };
    producer.enqueue_joining(outbox, group).await
}

/// Produces the output records the current record staged and waits for their
/// acknowledgements (lifecycle hooks and timers, which have no record to commit after).
pub(super) async fn send_outbox<KC, VC, H>(
    shared: &Shared<KC, VC, H>,
    ctx: &mut PartitionContext,
) -> Result<(), crate::changelog::ChangelogError> {
    let outbox = ctx.take_outbox();
    if outbox.is_empty() {
        return Ok(());
    }
    let Some(producer) = &shared.producer else {
        unreachable!("every consumer has a producer");
    };
    producer.send_records(outbox).await.map(|_| ())
}
