//! Output records: what handlers (and lifecycle hooks) send to other topics.
//!
//! An [`Output`] names a topic and the codecs of its keys and values. A handler sends with
//! [`PartitionContext::send`](crate::PartitionContext::send); the records are staged with
//! the record being handled, like its state writes, and produced when its handler returns
//! `Ok`. The record counts as processed — its state writes are kept and its offset may be
//! committed — only once every one of its output records is acknowledged (`acks=all`,
//! idempotent producer, so order per output partition follows the order of sends). A send
//! that fails is an error of the record: the [`ErrorPolicy`](crate::ErrorPolicy) decides,
//! and its state writes are discarded. Output is therefore never lost, and at-least-once: a
//! crash or a lost partition after the acknowledgement and before the commit hands the
//! record to a handler again, which sends again.
//!
//! Cost: one acknowledgement round trip per record that sends (a few milliseconds with
//! `linger.ms=5`); jobs that send on every record should expect that rate.

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
