//! The user's handler and what it receives: a typed record and its partition's context.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::state::{PartitionState, StateError, Store, StoreDef};

/// Error returned by a handler; any error type converts into it with `?`.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync + 'static>;

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
/// Side effects outside the partition's stores (producing, calling services) are
/// at-least-once: after a crash a record can be handled twice. State writes through
/// [`PartitionContext::store`] are applied exactly once.
pub trait Handler<K, V>: Send + Sync + 'static {
    /// Handles one record.
    fn handle(
        &self,
        record: Record<K, V>,
        ctx: &mut PartitionContext,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// The partition a handler works on, and its state stores.
pub struct PartitionContext {
    topic: Arc<str>,
    partition: i32,
    state: Option<PartitionState>,
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
        }
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
            Some(state) => Store::open(store, state),
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
