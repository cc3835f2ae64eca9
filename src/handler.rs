//! The user's handler and what it receives: a typed record and its partition's context
//! ([`PartitionContext`], in `context.rs`).

use std::fmt;
use std::future::Future;
use std::sync::Arc;

pub use crate::context::PartitionContext;
use crate::timer::Timer;
use crate::window::ClosedWindow;

/// Error returned by a handler; any error type converts into it with `?`.
///
/// Errors are *retryable* by default: the [`RetryPolicy`](crate::RetryPolicy) retries the
/// record before the [`ErrorPolicy`](crate::ErrorPolicy) applies. Wrap an error that no
/// retry can fix with [`fatal`] to skip the retries.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A handler error that retrying cannot fix (bad data, a bug): the record goes to the
/// [`ErrorPolicy`](crate::ErrorPolicy) at once. Build it with [`fatal`].
#[derive(Debug)]
pub struct FatalError(HandlerError);

impl fmt::Display for FatalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for FatalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

/// Marks `error` as fatal: not retried.
///
/// ```
/// use kafka_stateful::{fatal, HandlerError};
/// fn parse(text: &str) -> Result<u64, HandlerError> {
///     text.parse().map_err(fatal) // no retry parses it better
/// }
/// assert!(kafka_stateful::is_fatal(&parse("x").unwrap_err()));
/// ```
pub fn fatal(error: impl Into<HandlerError>) -> HandlerError {
    Box::new(FatalError(error.into()))
}

/// Marks `error` as retryable (what every error is unless wrapped with [`fatal`]); for
/// handlers that want to say so.
pub fn retryable(error: impl Into<HandlerError>) -> HandlerError {
    error.into()
}

/// Whether `error` was marked with [`fatal`].
pub fn is_fatal(error: &HandlerError) -> bool {
    error.downcast_ref::<FatalError>().is_some()
}

/// A decoded source record.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Record<K, V> {
    /// Source topic.
    pub topic: Arc<str>,
    /// Source partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Timestamp in milliseconds since the epoch, when the broker provides one.
    pub timestamp: Option<i64>,
    /// Decoded key; `None` for a record without a key.
    pub key: Option<K>,
    /// Decoded value; `None` for a record without a value (a tombstone).
    pub value: Option<V>,
    /// Headers as sent (`None` value: a header without a value).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Processes records of one partition at a time, in offset order.
///
/// `handle` runs on the partition's worker task, never on the poll loop, so it may be slow or
/// await I/O without endangering group membership. The record counts as processed — and its
/// state writes are kept — only when the returned future resolves to `Ok`. If the partition
/// is revoked while `handle` runs, the future gets up to the revoke timeout to finish and is
/// then dropped; its writes are discarded and the record is handled again by the next owner.
///
/// Side effects outside the partition's stores (calling services, [output
/// records](crate::output)) are at-least-once: after a crash a record can be handled
/// twice. State writes through [`PartitionContext::store`] are applied exactly once.
///
/// # Lifecycle
///
/// [`on_assigned`](Self::on_assigned) runs when a partition arrives, after its state is
/// restored and before its first record; [`on_revoked`](Self::on_revoked) when it leaves
/// normally (rebalance or shutdown), after its last record and before the final flush, so
/// its store writes are kept; [`on_lost`](Self::on_lost) when it was lost (session expired,
/// or this process was fenced) — another member may own it already, so its writes are
/// discarded. All three run on the partition's worker, never on the poll thread, with
/// store access, and within the revoke timeout (past it they are cancelled). An error
/// from `on_assigned` or `on_revoked` stops the consumer, like a record's error under
/// [`ErrorPolicy::Fail`](crate::ErrorPolicy::Fail); `on_lost` errors are logged.
pub trait Handler<K, V>: Send + Sync + 'static {
    /// Handles one record.
    fn handle(
        &self,
        record: Record<K, V>,
        ctx: &mut PartitionContext,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// In batch mode ([`ConsumerConfigBuilder::batches`](crate::ConsumerConfigBuilder::batches)):
    /// handles a run of one partition's records at once, in offset order — a sink writing
    /// many rows in one call. The batch's state writes join the state together when it
    /// returns `Ok`, and its records become committable then (once its output records are
    /// acknowledged); an `Err` drops its writes and outputs, and the batch is retried as the
    /// [`RetryPolicy`](crate::RetryPolicy) says, then split in halves until the record that
    /// fails is found, which the error policy handles alone. So a sink must tolerate a
    /// record handed to it again (idempotent writes, or offsets stored with the data: see
    /// [`stored_offset`](Self::stored_offset)). Windows and `Table::at_record_time` need a
    /// record's own time: a consumer with window stores refuses batch mode, and
    /// `at_record_time` fails here (`Table::as_of` with each record's timestamp works). The default hands the records to [`handle`](Self::handle) one by one.
    fn handle_batch(
        &self,
        records: Vec<Record<K, V>>,
        ctx: &mut PartitionContext,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send
    where
        K: Send,
        V: Send,
    {
        async move {
            for record in records {
                self.handle(record, ctx).await?;
            }
            Ok(())
        }
    }

    /// Offsets stored with the data: where a sink that writes each partition's next offset
    /// in its own transaction with its rows says `topic`/`partition` continues. Called when
    /// the partition is assigned, before its first record: records before the returned
    /// offset are not handed to the handler again, whatever the group's committed offset
    /// (which the consumer still commits, for lag). `Ok(None)` (the default): start from
    /// the committed offset. A stored offset *behind* the committed one cannot be honoured
    /// (those records are not fetched again) and ends `run()` with an error naming both.
    fn stored_offset(
        &self,
        _topic: &str,
        _partition: i32,
    ) -> impl Future<Output = Result<Option<i64>, HandlerError>> + Send {
        async { Ok(None) }
    }

    /// The record's event time in milliseconds since the epoch: by default the Kafka
    /// timestamp. Override it to take the time from the value (`None`: the record has no
    /// event time and does not move stream time). Stream time, the highest event time of the
    /// partition's processed records, drives windows and stream-time timers, and survives
    /// restarts with the state.
    fn event_time(&self, record: &Record<K, V>) -> Option<i64> {
        record.timestamp
    }

    /// A timer scheduled with [`PartitionContext::schedule`] is due; runs on the
    /// partition's worker between records, with store access and output records. Its
    /// writes are kept and the timer removed only if it returns `Ok`; an error stops the
    /// consumer under [`ErrorPolicy::Fail`](crate::ErrorPolicy::Fail), and is logged (the
    /// timer dropped) otherwise. Does nothing by default.
    fn on_timer(
        &self,
        _timer: Timer,
        _ctx: &mut PartitionContext,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        async { Ok(()) }
    }

    /// A window of a [window store](crate::window) closed: `closed` holds its final entries
    /// (decode them with [`ClosedWindow::entries`]). Send results from here with
    /// [`PartitionContext::send`]. The window's entries are deleted after it returns `Ok`.
    /// Runs like a timer (see [`on_timer`](Self::on_timer)). Does nothing by default.
    fn on_window_closed(
        &self,
        _closed: ClosedWindow,
        _ctx: &mut PartitionContext,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        async { Ok(()) }
    }

    /// A partition arrived and its state is restored. Does nothing by default.
    fn on_assigned(
        &self,
        _ctx: &mut PartitionContext,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        async { Ok(()) }
    }

    /// A partition leaves this consumer; its writes here are flushed with the rest. Does
    /// nothing by default.
    fn on_revoked(
        &self,
        _ctx: &mut PartitionContext,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        async { Ok(()) }
    }

    /// A partition was lost; nothing written here is kept. Does nothing by default.
    fn on_lost(
        &self,
        _ctx: &mut PartitionContext,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        async { Ok(()) }
    }
}
