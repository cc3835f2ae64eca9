//! [`PartitionContext`]: what a handler works with besides its record — its partition's
//! stores, windows, tables, timers and output records.

use std::fmt;
use std::sync::Arc;

use crate::changelog::OutRecord;
use crate::codec::CodecError;
use crate::output::Output;
use crate::state::slot::StateSlot;
use crate::state::{PartitionState, StateError, Store, StoreDef};
use crate::table::{Table, TableDef, TableError, TableReads};
use crate::timer::TimeKind;
use crate::window::{
    SessionDef, SessionStore, SlidingDef, SlidingStore, WindowAccess, WindowDef, WindowStore,
};

/// The partition a handler works on, its state stores, and its output.
pub struct PartitionContext {
    topic: Arc<str>,
    partition: i32,
    state: Option<StateSlot>,
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
            state: state.map(StateSlot::Owned),
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
        Table::open(table, &self.tables, self.event_time)
    }

    /// Opens a declared window store of this partition for the current record.
    ///
    /// # Errors
    /// [`StateError::UnknownStore`] when `window` was not declared on the builder.
    pub fn window<'a, K: Send + 'static, V: Send + 'static>(
        &'a mut self,
        window: &'a WindowDef<K, V>,
    ) -> Result<WindowStore<'a, K, V>, StateError> {
        Ok(WindowStore::open(window, self.windowed(window.name())?))
    }

    /// Opens a declared session window store ([`crate::window::SessionDef`]) for the
    /// current record.
    ///
    /// # Errors
    /// [`StateError::UnknownStore`] when `sessions` was not declared on the builder.
    pub fn session_window<'a, K: Send + 'static, V: Send + 'static>(
        &'a mut self,
        sessions: &'a SessionDef<K, V>,
    ) -> Result<SessionStore<'a, K, V>, StateError> {
        Ok(SessionStore::open(
            sessions,
            self.windowed(sessions.name())?,
        ))
    }

    /// Opens a declared sliding window store ([`crate::window::SlidingDef`]) for the
    /// current record.
    ///
    /// # Errors
    /// [`StateError::UnknownStore`] when `sliding` was not declared on the builder.
    pub fn sliding_window<'a, K: Send + 'static, V: Send + 'static>(
        &'a mut self,
        sliding: &'a SlidingDef<K, V>,
    ) -> Result<SlidingStore<'a, K, V>, StateError> {
        Ok(SlidingStore::open(sliding, self.windowed(sliding.name())?))
    }

    /// What every window store reads: the partition's state, stream time, the record's
    /// event time, and its late flag.
    fn windowed(&mut self, store: &str) -> Result<WindowAccess<'_>, StateError> {
        let times = (self.stream_time, self.event_time);
        match &mut self.state {
            Some(StateSlot::Owned(state)) => WindowAccess::new(store, state, times, &mut self.late),
            Some(StateSlot::Shared { .. }) => Err(StateError::NotWithConcurrency("windows")),
            None => Err(StateError::UnknownStore(store.to_string())),
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

    /// The event time of the record being handled ([`Handler::event_time`](crate::Handler::event_time)).
    pub fn event_time(&self) -> Option<i64> {
        self.event_time
    }

    /// Schedules a timer for this partition: [`Handler::on_timer`](crate::Handler::on_timer) runs once `at` has come on
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
            Some(StateSlot::Owned(state)) => state.stage_timer(insert, entry),
            Some(StateSlot::Shared { .. }) => Err(StateError::NotWithConcurrency("timers")),
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
    /// partitioner) when the current record's handler returns `Ok`, without waiting for the
    /// broker; the record's offset is committed only once it is acknowledged (the flush that
    /// makes the record durable waits for it). See [`crate::output`].
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

    /// Whether the current record staged no output record.
    pub(crate) fn outbox_is_empty(&self) -> bool {
        self.outbox.is_empty()
    }

    /// The source topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub(crate) fn topic_arc(&self) -> Arc<str> {
        self.topic.clone()
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
            Some(slot) => {
                let clock = crate::state::ttl::Clock {
                    stream_time: self.stream_time,
                    wall_offset: self.wall_offset,
                };
                Store::open(store, slot.target(), clock)
            }
            None => Err(StateError::UnknownStore(store.name().to_string())),
        }
    }

    /// The partition's state when this context owns it (records one at a time).
    pub(crate) fn state_mut(&mut self) -> Option<&mut PartitionState> {
        self.state.as_mut().and_then(StateSlot::owned_mut)
    }

    /// See [`state_mut`](Self::state_mut).
    pub(crate) fn state(&self) -> Option<&PartitionState> {
        self.state.as_ref().and_then(StateSlot::owned)
    }

    /// Runs `f` on the partition's state, owned or shared; `None` without stores.
    pub(crate) fn with_state<R>(&mut self, f: impl FnOnce(&mut PartitionState) -> R) -> Option<R> {
        self.state.as_mut().map(|slot| slot.with(f))
    }

    /// The current record (or hook, or timer) succeeded: its state writes are kept.
    pub(crate) fn commit_staged(&mut self) {
        if let Some(slot) = &mut self.state {
            slot.commit_staged();
        }
    }

    /// The current record failed: its state writes and output records are dropped.
    pub(crate) fn discard_staged(&mut self) {
        if let Some(slot) = &mut self.state {
            slot.discard_staged();
        }
        self.outbox.clear();
    }

    /// Shares the partition's state with records in flight (key-level concurrency): this
    /// context keeps its own staged writes from now on. `None` without stores.
    pub(crate) fn share_state(&mut self) -> Option<Arc<std::sync::Mutex<PartitionState>>> {
        StateSlot::share(&mut self.state)
    }

    /// A context for one record in flight next to others: the partition's shared state
    /// with writes of its own, its tables, its clocks.
    pub(crate) fn for_record(
        &self,
        shared: Option<&Arc<std::sync::Mutex<PartitionState>>>,
    ) -> Self {
        Self {
            topic: self.topic.clone(),
            partition: self.partition,
            state: shared.map(|s| StateSlot::shared(s.clone())),
            outbox: Vec::new(),
            stream_time: self.stream_time,
            event_time: None,
            late: false,
            wall_offset: self.wall_offset,
            tables: self.tables.clone(),
        }
    }
}
