//! Output records: what handlers (and lifecycle hooks) send to other topics.
//!
//! An [`Output`] names a topic and the codecs of its keys and values. A handler sends with
//! [`PartitionContext::send`](crate::PartitionContext::send); the records are staged with
//! the record being handled, like its state writes, and handed to the producer when its
//! handler returns `Ok` — handling goes on at once, without waiting for the broker. The
//! record counts as processed — its offset may be committed — only once its state writes
//! and every one of its output records are durable: the flush that makes the record's
//! offset durable first waits for the acknowledgements of the output records sent before
//! it (`acks=all`, idempotent producer, so order per output partition follows the order of
//! sends). Output is therefore never lost, and at-least-once: a crash or a lost partition
//! after the acknowledgement and before the commit hands the record to a handler again,
//! which sends again.
//!
//! A send the producer refuses at once (a record too large, an unknown partition) is an
//! error of the record: the [`ErrorPolicy`](crate::ErrorPolicy) decides, and its state writes
//! are discarded. An acknowledgement that never comes (the producer gave up after
//! `delivery.timeout.ms`, the topic was deleted, access was refused) ends `run()` with
//! [`Error::Output`](crate::Error::Output) naming the first record whose output was lost:
//! nothing from it on is committed. What waits in the producer is bounded by its queue
//! (half a share of the memory budget).
//!
//! Cost: one acknowledgement wait per flush (every `flush_interval`, and before each
//! commit), not per record.

use std::fmt;
use std::sync::Arc;

use crate::codec::{Codec, CodecError};

/// Encoded key and value of an output record.
pub(crate) type EncodedRecord = (Option<Vec<u8>>, Option<Vec<u8>>);

/// A typed output topic. Cheap to clone.
///
/// ```
/// use kafka_stateful::{codec::{Json, Utf8}, Output};
/// let results: Output<String, u64> = Output::new("page-counts", Utf8, Json::new());
/// assert_eq!(results.topic(), "page-counts");
/// ```
pub struct Output<K: Send + 'static, V: Send + 'static> {
    topic: Arc<str>,
    key: Arc<dyn Codec<Item = K>>,
    value: Arc<dyn Codec<Item = V>>,
}

impl<K: Send + 'static, V: Send + 'static> Clone for Output<K, V> {
    fn clone(&self) -> Self {
        Self {
            topic: self.topic.clone(),
            key: self.key.clone(),
            value: self.value.clone(),
        }
    }
}

impl<K: Send + 'static, V: Send + 'static> fmt::Debug for Output<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Output")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl<K: Send + 'static, V: Send + 'static> Output<K, V> {
    /// Records to `topic`, keys and values encoded with these codecs.
    pub fn new(topic: &str, key: impl Codec<Item = K>, value: impl Codec<Item = V>) -> Self {
        Self {
            topic: topic.into(),
            key: Arc::new(key),
            value: Arc::new(value),
        }
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub(crate) fn encode(
        &self,
        key: Option<&K>,
        value: Option<&V>,
    ) -> Result<EncodedRecord, CodecError> {
        Ok((
            key.map(|k| self.key.encode(k)).transpose()?,
            value.map(|v| self.value.encode(v)).transpose()?,
        ))
    }
}
