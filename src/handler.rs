//! The user's handler and what it receives: a typed record and its partition's context.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::changelog::OutRecord;
use crate::codec::CodecError;
use crate::output::Output;
use crate::state::{PartitionState, StateError, Store, StoreDef};
use crate::table::{Table, TableDef, TableError, TableReads};
use crate::timer::{TimeKind, Timer};
use crate::window::{ClosedWindow, WindowDef, WindowStore};

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

/// The partition a handler works on, its state stores, and its output.
pub struct PartitionContext {
    topic: Arc<str>,
    partition: i32,
    state: Option<PartitionState>,
    /// Output records of the record being handled, sent when its handler succeeds.
    outbox: Vec<OutRecord>,
    /// Highest event time of the partition's processed records (the current one included).
    stream_time: i64,
    /// Event time of the record being handled.
    event_time: Option<i64>,
    /// Set when the current record turned out late for a window.
    late: bool,
    /// Added to the system clock (the test driver moves the wall clock).
    wall_offset: i64,
    /// The tables handlers of this partition read.
    tables: TableReads,
}

impl fmt::Debug for PartitionContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionContext")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("stateful", &self.state.is_some())
            .finish()
    }
}

impl PartitionContext {
    pub(crate) fn new(topic: Arc<str>, partition: i32, state: Option<PartitionState>) -> Self {
        Self {
            topic,
            partition,
            state,
            outbox: Vec::new(),
            stream_time: -1,
            event_time: None,
            late: false,
            wall_offset: 0,
            tables: TableReads::default(),
        }
    }

    pub(crate) fn set_tables(&mut self, tables: TableReads) {
        self.tables = tables;
    }

    /// Opens a declared table ([`crate::table`]): the partition's own partition of a
    /// co-partitioned table, or a global table.
    ///
    /// # Errors
    /// [`TableError::Unknown`] when `table` was not declared on the builder.
    pub fn table<'a, K: Send + 'static, V: Send + 'static>(
        &'a self,
        table: &'a TableDef<K, V>,
    ) -> Result<Table<'a, K, V>, TableError> {
        Table::open(table, &self.tables)
    }

    /// Opens a declared window store of this partition for the current record.
    ///
    /// # Errors
    /// [`StateError::UnknownStore`] when `window` was not declared on the builder.
    pub fn window<'a, K: Send + 'static, V: Send + 'static>(
        &'a mut self,
        window: &'a WindowDef<K, V>,
    ) -> Result<WindowStore<'a, K, V>, StateError> {
        let (stream_time, event_time) = (self.stream_time, self.event_time);
        match &mut self.state {
            Some(state) => {
                WindowStore::open(window, state, stream_time, event_time, &mut self.late)
            }
            None => Err(StateError::UnknownStore(window.name().to_string())),
        }
    }

    /// Whether the current record was late for a window; resets the flag.
    pub(crate) fn take_late(&mut self) -> bool {
        std::mem::take(&mut self.late)
    }

    /// The partition's stream time: the highest event time of its processed records, the
    /// current one included (milliseconds since the epoch; `-1` before any). It never goes
    /// back, and survives restarts and moves with the state.
    pub fn stream_time(&self) -> i64 {
        self.stream_time
    }

    /// The event time of the record being handled ([`Handler::event_time`]).
    pub fn event_time(&self) -> Option<i64> {
        self.event_time
    }

    /// Schedules a timer for this partition: [`Handler::on_timer`] runs once `at` has come on
    /// the `kind` clock (milliseconds since the epoch). Scheduling the same `(kind, at, key)`
    /// twice schedules it once. Kept only if the current record succeeds.
    ///
    /// # Errors
    /// [`StateError::TimersNotDeclared`] without
    /// [`ConsumerConfigBuilder::timers`](crate::ConsumerConfigBuilder::timers).
    pub fn schedule(&mut self, kind: TimeKind, at: i64, key: &[u8]) -> Result<(), StateError> {
        self.stage_timer(true, (kind, at, crate::timer::Owner::Handler, key.to_vec()))
    }

    /// Cancels a timer scheduled with [`schedule`](Self::schedule).
    ///
    /// # Errors
    /// [`StateError::TimersNotDeclared`].
    pub fn cancel(&mut self, kind: TimeKind, at: i64, key: &[u8]) -> Result<(), StateError> {
        self.stage_timer(
            false,
            (kind, at, crate::timer::Owner::Handler, key.to_vec()),
        )
    }

    pub(crate) fn stage_timer(
        &mut self,
        insert: bool,
        entry: crate::timer::Entry,
    ) -> Result<(), StateError> {
        match &mut self.state {
            Some(state) => state.stage_timer(insert, entry),
            None => Err(StateError::TimersNotDeclared),
        }
    }

    pub(crate) fn set_stream_time(&mut self, stream_time: i64) {
        self.stream_time = stream_time;
    }

    pub(crate) fn set_wall_offset(&mut self, offset: i64) {
        self.wall_offset = offset;
    }

    /// The wall clock (milliseconds since the epoch) of wall-clock timers and TTLs.
    pub(crate) fn wall_now(&self) -> i64 {
        crate::timer::wall_now() + self.wall_offset
    }

    pub(crate) fn set_event_time(&mut self, event_time: Option<i64>) {
        self.event_time = event_time;
    }

    /// Sends a record to `output`'s topic (partitioned by its key, by the producer's default
    /// partitioner) once the current record's handler returns `Ok`; the current record
    /// counts as processed only when it is acknowledged. See [`crate::output`].
    ///
    /// # Errors
    /// The codecs' errors.
    pub fn send<K: Send + 'static, V: Send + 'static>(
        &mut self,
        output: &Output<K, V>,
        key: Option<&K>,
        value: Option<&V>,
    ) -> Result<(), CodecError> {
        self.send_to(output, -1, key, value)
    }

    /// [`send`](Self::send) to a chosen partition of the output topic.
    ///
    /// # Errors
    /// The codecs' errors.
    pub fn send_to<K: Send + 'static, V: Send + 'static>(
        &mut self,
        output: &Output<K, V>,
        partition: i32,
        key: Option<&K>,
        value: Option<&V>,
    ) -> Result<(), CodecError> {
        let (key, value) = output.encode(key, value)?;
        self.outbox.push(OutRecord {
            topic: output.topic().to_string(),
            partition,
            key,
            value,
            headers: Vec::new(),
        });
        Ok(())
    }

    /// The output records staged by the current record (or hook).
    pub(crate) fn take_outbox(&mut self) -> Vec<OutRecord> {
        std::mem::take(&mut self.outbox)
    }

    /// The source topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The source partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Opens a declared store of this partition.
    ///
    /// # Errors
    /// [`StateError::UnknownStore`] when `store` was not declared on the builder.
    pub fn store<'a, K: Send + 'static, V: Send + 'static>(
        &'a mut self,
        store: &'a StoreDef<K, V>,
    ) -> Result<Store<'a, K, V>, StateError> {
        match &mut self.state {
            Some(state) => {
                let clock = crate::state::ttl::Clock {
                    stream_time: self.stream_time,
                    wall_offset: self.wall_offset,
                };
                Store::open(store, state, clock)
            }
            None => Err(StateError::UnknownStore(store.name().to_string())),
        }
    }

    pub(crate) fn state_mut(&mut self) -> Option<&mut PartitionState> {
        self.state.as_mut()
    }

    pub(crate) fn state(&self) -> Option<&PartitionState> {
        self.state.as_ref()
    }
}
