//! Batch mode ([`ConsumerConfigBuilder::batches`](crate::ConsumerConfigBuilder::batches)):
//! records gathered into runs handed to [`Handler::handle_batch`], a failing run split until
//! the record that fails is found, and offsets stored with a sink's data.

use super::records::{decode, enqueue_outbox};
use super::*;

/// A gathered record: its fetched batch and its index there.
type Item = (usize, usize);

/// How one call of `handle_batch` on a run of records ended.
enum Ran {
    Handled(Option<Pending>),
    Cancelled,
    /// The record at this index of the run cannot be decoded: the run is cut around it.
    Undecodable(usize, CodecError),
    Failed(Failure),
}

impl<KC, VC, H> Worker<KC, VC, H>
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    /// Asks the handler where its sink stored this partition's next offset; records before
    /// it count as applied (not handed to the handler again).
    pub(super) async fn load_stored_offset(&mut self) -> Result<(), Error> {
        let called = self
            .shared
            .handler
            .stored_offset(&self.topic, self.partition);
        let called = std::panic::AssertUnwindSafe(called).catch_unwind();
        let timeout = self.shared.config.revoke_timeout;
        let message = match tokio::time::timeout(timeout, called).await {
            Ok(Ok(Ok(None))) => return Ok(()),
            Ok(Ok(Ok(Some(next)))) => {
                tracing::info!(topic = %self.topic, partition = self.partition, next,
                    "starting after the offset stored with the sink's data");
                self.stored_next = Some(next);
                if next > self.applied.next {
                    self.applied.next = next;
                }
                return Ok(());
            }
            Ok(Ok(Err(e))) => e.to_string(),
            Ok(Err(payload)) => format!("panicked: {}", panic_message(payload.as_ref())),
            Err(_) => format!("did not answer within the revoke timeout ({timeout:?})"),
        };
        Err(Error::Hook {
            topic: self.topic.to_string(),
            partition: self.partition,
            hook: "stored_offset",
            message,
        })
    }

    /// The first record fetched must not lie past the stored offset: the records between
    /// were committed to the group but are missing from the sink.
    fn check_stored_offset(&mut self, first: i64) -> Result<(), Error> {
        match self.stored_next.take() {
            Some(stored) if stored >= 0 && first > stored => Err(Error::StoredOffsetBehind {
                topic: self.topic.to_string(),
                partition: self.partition,
                stored,
                fetched: first,
            }),
            _ => Ok(()),
        }
    }

    /// Gathers records after `first` until the batch is full, its wait is over, its bytes
    /// reach the partition's queue budget or the worker stops, then hands them to the
    /// handler in runs of at most `max_records`. `Ok(None)`: the source closed meanwhile.
    pub(super) async fn gather_and_handle(
        &mut self,
        first: RecordBatch,
        source: &mut Source,
        ctx: &mut PartitionContext,
    ) -> Result<(Outcome, bool), Error> {
        let settings = self.shared.config.batches.unwrap_or_default();
        let budget = self.shared.config.queue_bytes.max(1);
        let deadline = tokio::time::Instant::now() + settings.max_wait;
        let (mut records, mut bytes) = (first.records.len(), first.bytes);
        let mut batches = vec![first];
        let mut closed = false;
        while records < settings.max_records && bytes < budget && !self.stop.is_stopped() {
            tokio::select! {
                biased;
                () = self.stop.stopped() => break,
                batch = source.next() => match batch {
                    Some(batch) => {
                        records += batch.records.len();
                        bytes += batch.bytes;
                        batches.push(batch);
                    }
                    None => {
                        closed = true;
                        break;
                    }
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let items: Vec<Item> = batches
            .iter()
            .enumerate()
            .flat_map(|(b, batch)| (0..batch.records.len()).map(move |r| (b, r)))
            .collect();
        let queue = self.progress.queue.clone();
        queue.taken_records.store(items.len(), Ordering::Relaxed);
        queue.taken_bytes.store(bytes, Ordering::Relaxed);
        let mut outcome = Outcome::Done;
        let mut handled = 0;
        for run in items.chunks(settings.max_records) {
            let (ran, counted) = self.handle_run(&batches, run, ctx).await?;
            handled += counted;
            if matches!(ran, Outcome::Cancelled) {
                outcome = Outcome::Cancelled;
                break;
            }
        }
        queue.taken_records.store(0, Ordering::Relaxed);
        queue.taken_bytes.store(0, Ordering::Relaxed);
        self.fire_timers(TimeKind::Stream, ctx.stream_time(), ctx)
            .await?;
        self.after_records(handled, ctx);
        Ok((outcome, closed))
    }

    /// One run: the records already applied are passed over, the rest handed to the handler
    /// at once; a run that keeps failing is split in halves (each half tried once, a single
    /// record with the retries the policy allows) until the error policy can take the record
    /// that fails. Returns how many records were handled.
    async fn handle_run(
        &mut self,
        batches: &[RecordBatch],
        run: &[Item],
        ctx: &mut PartitionContext,
    ) -> Result<(Outcome, u64), Error> {
        let raw = |&(b, r): &Item| (&batches[b], &batches[b].records[r]);
        let mut todo = Vec::with_capacity(run.len());
        for item in run {
            let (_, record) = raw(item);
            if self.stored_next.is_some() {
                self.check_stored_offset(record.offset)?;
            }
            if self.applied.covers(record.offset) {
                self.progress.skipped.fetch_add(1, Ordering::Relaxed);
                self.finish(record, ctx.stream_time());
            } else {
                todo.push(*item);
            }
        }
        let Some(last) = todo.last() else {
            return Ok((Outcome::Done, 0));
        };
        // Table updates up to the run's last record apply before it.
        if !self.tables_aligned_now(raw(last).1) {
            self.align_tables(raw(last).1).await?;
        }
        let mut handled = 0;
        // Ranges of `todo` to try, last pushed first; `true`: with retries.
        let mut stack = vec![(0, todo.len(), true)];
        while let Some((lo, hi, retries)) = stack.pop() {
            if lo >= hi {
                continue;
            }
            let part = &todo[lo..hi];
            let retries = retries || part.len() == 1;
            match self.try_run(batches, part, ctx, retries).await {
                Ran::Handled(sent) => {
                    let (_, last) = raw(&part[part.len() - 1]);
                    if let Some(sent) = sent {
                        self.outputs.push(last.offset, sent);
                    }
                    ctx.commit_staged();
                    for item in part {
                        self.finish(raw(item).1, ctx.stream_time());
                    }
                    handled += part.len() as u64;
                }
                Ran::Cancelled => return Ok((Outcome::Cancelled, handled)),
                Ran::Undecodable(at, error) if part.len() == 1 => {
                    let (batch, record) = raw(&part[at]);
                    self.apply_policy(batch, record, Failure::Decode(error), ctx)
                        .await?;
                }
                Ran::Undecodable(at, _) => {
                    stack.push((lo + at + 1, hi, false));
                    stack.push((lo + at, lo + at + 1, true));
                    stack.push((lo, lo + at, false));
                }
                Ran::Failed(failure) if part.len() == 1 => {
                    let (batch, record) = raw(&part[0]);
                    self.apply_policy(batch, record, failure, ctx).await?;
                }
                Ran::Failed(failure) => {
                    tracing::warn!(topic = %self.topic, partition = self.partition,
                        records = part.len(), first = raw(&part[0]).1.offset,
                        error = %failure.message(), "batch failed; splitting it to find the record that fails");
                    let mid = lo + part.len() / 2;
                    stack.push((mid, hi, false));
                    stack.push((lo, mid, false));
                }
            }
        }
        Ok((Outcome::Done, handled))
    }

    /// Decodes `part` and calls `handle_batch` on it, retrying as the policy says when
    /// `retries`; sends its output records when it succeeded.
    async fn try_run(
        &mut self,
        batches: &[RecordBatch],
        part: &[Item],
        ctx: &mut PartitionContext,
        retries: bool,
    ) -> Ran {
        let shared = self.shared.clone();
        let retry = shared.config.retry;
        let (mut attempt, mut backoff) = (0, retry.initial_backoff);
        let stream_time_before = ctx.stream_time();
        loop {
            let mut records = Vec::with_capacity(part.len());
            let mut newest = stream_time_before;
            for (at, &(b, r)) in part.iter().enumerate() {
                let (batch, raw) = (&batches[b], &batches[b].records[r]);
                let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    decode(&shared, ctx.topic_arc(), self.partition, batch, raw)
                }));
                match decoded {
                    Ok(Ok(record)) => {
                        newest = newest.max(shared.handler.event_time(&record).unwrap_or(-1));
                        records.push(record);
                    }
                    Ok(Err(error)) => return Ran::Undecodable(at, error),
                    Err(payload) => {
                        let message = panic_message(payload.as_ref());
                        return Ran::Undecodable(at, CodecError::new("codec", message));
                    }
                }
            }
            // A batch has no single record time: windows and at_record_time refuse it.
            ctx.set_event_time(None);
            ctx.set_stream_time(newest);
            let call = shared.handler.handle_batch(records, ctx);
            let call = std::panic::AssertUnwindSafe(call).catch_unwind();
            let result = tokio::select! {
                biased;
                r = call => Some(r),
                () = super::cancel_after_stop(&self.stop, shared.config.revoke_timeout) => None,
            };
            let error = match result {
                None => {
                    tracing::warn!(topic = %self.topic, partition = self.partition,
                        "revoke timeout: cancelled the batch handler; its records stay uncommitted");
                    ctx.discard_staged();
                    ctx.set_stream_time(stream_time_before);
                    return Ran::Cancelled;
                }
                Some(Ok(Ok(()))) => match enqueue_outbox(&shared, ctx, None).await {
                    Ok(sent) => return Ran::Handled(sent),
                    Err(error) => {
                        ctx.discard_staged();
                        ctx.set_stream_time(stream_time_before);
                        return Ran::Failed(Failure::Output(error));
                    }
                },
                Some(Ok(Err(error))) => error,
                Some(Err(payload)) => {
                    ctx.discard_staged();
                    ctx.set_stream_time(stream_time_before);
                    crate::observe::metrics::handler_error(ctx.topic(), self.partition);
                    let message = format!("handler panicked: {}", panic_message(payload.as_ref()));
                    return Ran::Failed(Failure::Panic(message));
                }
            };
            ctx.discard_staged();
            ctx.set_stream_time(stream_time_before);
            crate::observe::metrics::handler_error(ctx.topic(), self.partition);
            if !retries || attempt >= retry.max_retries || crate::handler::is_fatal(&error) {
                return Ran::Failed(Failure::Handler(error));
            }
            attempt += 1;
            crate::observe::metrics::handler_retry(ctx.topic(), self.partition);
            tracing::warn!(topic = %self.topic, partition = self.partition, records = part.len(),
                attempt, %error, "batch handler failed; retrying");
            tokio::select! {
                biased;
                () = self.stop.stopped() => return Ran::Cancelled,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(retry.max_backoff);
        }
    }
}

#[cfg(test)]
#[path = "batches/tests.rs"]
mod tests;
