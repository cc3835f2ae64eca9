//! Tables: reference data the handler reads, kept locally from a compacted topic.
//!
//! The other half of local state: where a [store](crate::StoreDef) holds what the handler
//! *computes*, a table holds what it *looks up* — an order service's customers, a
//! product catalogue. A [`TableDef`] names a topic keyed like the lookups (say, customer id);
//! the library reads that topic into RocksDB and the handler reads it with
//! [`PartitionContext::table`](crate::PartitionContext::table). The topic is the table's
//! changelog: nothing else is written, and updating the table means producing to its topic
//! (a record with a value sets a key, a record without one — a tombstone — deletes it).
//!
//! # Co-partitioned tables
//!
//! Declared with [`ConsumerConfigBuilder::table`](crate::ConsumerConfigBuilder::table). For
//! each input partition `p` this consumer owns, it keeps partition `p` of the table topic,
//! read by the library's own reader (the table topic is not subscribed by the group). So the
//! table topic must have as many partitions as every input topic, and both must be produced
//! with the same partitioner, so that a customer's orders and the customer land in the same
//! partition number (`run()` checks the counts at start and on every assignment; the
//! partitioner it cannot check: see the README).
//!
//! - **Bootstrap.** No record of input partition `p` is handled before table partition `p` was
//!   read up to its end offset as it was at the assignment. A restart with the state
//!   directory intact reads only what was added since the local checkpoint; a new owner
//!   reads the whole partition, in batches of about 4 MiB, each written to RocksDB with the
//!   table's checkpoint in one atomic batch (so a bootstrap cut short by a crash resumes
//!   after its last batch).
//! - **Time alignment while running.** Before an input record with timestamp `t` is handled,
//!   the fetched table updates of its partition with a timestamp `≤ t` are applied, in offset
//!   order; a later update waits for an input record that reaches its time: the lower
//!   timestamp goes first, as in Kafka Streams, even when the update was fetched first. While
//!   no input record waits, the updates not later than the input so far are applied. An
//!   update is never applied retroactively: an order handled before its customer's update
//!   was fetched saw the older customer. (A restart or a new owner reads the table to its
//!   end first, whatever the timestamps.)
//!   [`table_sync_wait`](crate::ConsumerConfigBuilder::table_sync_wait) (default 0: do not
//!   wait) makes an input record wait up to that long until the table reader has confirmed
//!   that it holds every update that was in the table topic when the record's time had come
//!   — so an update produced before an order is applied before that order, even when the
//!   order was fetched first.
//! - **As-of reads.** A table declared with [`TableDef::versioned`] also keeps every value
//!   each key had, by timestamp; [`Table::at_record_time`] reads the version of the current
//!   record's time and [`Table::as_of`] that of any time. Unlike [`Table::get`] (the
//!   member's copy *now*, which after a bootstrap holds updates later than a backlog's
//!   records), the answer does not depend on how far the table was read: a backlog and a
//!   replay after a crash read what a live first handling read. The versions are a second
//!   column family (key, timestamp → value) in the partition's table database; those older
//!   than the history retention behind the newest timestamp are pruned as their keys are
//!   written again, and a lookup before that horizon is [`TableError::TooOld`].
//! - **Crash safety.** Each applied batch of table records is written to RocksDB together
//!   with the table's checkpoint (its next offset), so after a crash the table equals the
//!   topic up to the checkpoint and only the rest is read.
//! - **Bad records.** A table record whose key or value the table's codecs cannot decode goes
//!   to the [`ErrorPolicy`](crate::ErrorPolicy), during the bootstrap as while running:
//!   `Fail` stops `run()` with [`TableError::BadRecord`] naming topic, partition and offset;
//!   `Skip` leaves it out (logged, counted as skipped); `DeadLetter` produces it to the
//!   dead-letter topic with `ks.error.*` headers.
//!
//! # Global tables
//!
//! Declared with [`ConsumerConfigBuilder::global_table`](crate::ConsumerConfigBuilder::global_table):
//! every member reads *every* partition of the topic into one local store, fully (to the
//! end offsets at start) before any input partition is handled, then keeps reading it;
//! every partition's handler can read it. For small reference data that is not keyed like
//! the input (a currency table, feature flags). Updates are applied as they are read, not
//! aligned with input time. Partitions added to the topic later are picked up.
//!
//! # Storage
//!
//! Co-partitioned tables of input partition `p` of topic `t` live in one RocksDB at
//! `<state_dir>/<group>/<t>-<p>.tables/` (a column family per table), global tables at
//! `<state_dir>/<group>/global.<table>/`. Values are kept as produced and decoded on read;
//! lookups encode the key with the table's key codec, which must give the bytes the table
//! topic's producer wrote (use the same codec on both sides).

mod align;
mod bootstrap;
mod cache;
mod feed;
mod global;
mod source;
mod stats;
mod store;
mod versions;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::changelog::ChangelogError;
use crate::codec::{Codec, CodecError};
use crate::state::StateError;

pub(crate) use align::{check_all, tables_dir, PartitionTables, TableEnv};
// The test driver feeds tables itself.
#[cfg(any(test, feature = "testing"))]
pub(crate) use align::FeedRegistry;
#[cfg(any(test, feature = "testing"))]
pub(crate) use feed::FeedSink;
pub(crate) use feed::TableFeeds;
pub(crate) use global::{DeadLetters, GlobalTables};
#[cfg(any(test, feature = "testing"))]
pub(crate) use source::MemoryTableSource;
pub(crate) use source::{KafkaTableSource, TableSource};
pub(crate) use stats::GlobalTableCounters;
pub(crate) use store::TableReads;
#[cfg(any(test, feature = "testing"))]
pub(crate) use store::TableStore;

/// A table declaration: a name (its local store), the topic it is read from, and codecs for
/// keys and values. Declare it on the builder with
/// [`table`](crate::ConsumerConfigBuilder::table) or
/// [`global_table`](crate::ConsumerConfigBuilder::global_table) and read it with
/// [`PartitionContext::table`](crate::PartitionContext::table). Cheap to clone.
///
/// ```
/// use kafka_stateful::codec::{Json, Utf8};
/// use kafka_stateful::table::TableDef;
/// #[derive(serde::Deserialize, serde::Serialize)]
/// struct Customer { name: String }
/// let customers: TableDef<String, Customer> = TableDef::new("customers", "customers", Utf8, Json::new());
/// assert_eq!(customers.topic(), "customers");
/// ```
pub struct TableDef<K: Send + 'static, V: Send + 'static> {
    name: Arc<str>,
    topic: Arc<str>,
    key: Arc<dyn Codec<Item = K>>,
    value: Arc<dyn Codec<Item = V>>,
    history: Option<Duration>,
}

impl<K: Send + 'static, V: Send + 'static> Clone for TableDef<K, V> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            topic: self.topic.clone(),
            key: self.key.clone(),
            value: self.value.clone(),
            history: self.history,
        }
    }
}

impl<K: Send + 'static, V: Send + 'static> fmt::Debug for TableDef<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableDef")
            .field("name", &self.name)
            .field("topic", &self.topic)
            .field("history", &self.history)
            .finish_non_exhaustive()
    }
}

impl<K: Send + 'static, V: Send + 'static> TableDef<K, V> {
    /// A table called `name` (letters, digits, `.`, `_`, `-`: it names a local directory or
    /// column family) holding the latest value per key of `topic`.
    pub fn new(
        name: &str,
        topic: &str,
        key: impl Codec<Item = K>,
        value: impl Codec<Item = V>,
    ) -> Self {
        Self {
            name: name.into(),
            topic: topic.into(),
            key: Arc::new(key),
            value: Arc::new(value),
            history: None,
        }
    }

    /// Keeps every value each key had, by timestamp, so that handlers can read the table
    /// *as of* a record's time ([`Table::at_record_time`], [`Table::as_of`]): the same
    /// answer on the first handling and on every replay, whether the version came from the
    /// bootstrap, the live feed or a restore. Versions older than `history` behind the
    /// newest timestamp of the table partition are pruned as their keys are written again
    /// (the newest of them stays: it answers up to the next version); a lookup before that
    /// horizon fails with [`TableError::TooOld`]. Co-partitioned tables only. Making a table
    /// versioned reads its topic again, once, to fill the history.
    #[must_use]
    pub fn versioned(mut self, history: Duration) -> Self {
        self.history = Some(history);
        self
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topic the table is read from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub(crate) fn spec(&self, global: bool) -> TableSpec {
        let (key, value) = (self.key.clone(), self.value.clone());
        TableSpec {
            name: self.name.to_string(),
            topic: self.topic.to_string(),
            format: format!(
                "table;topic={};key={};value={};version=1{}",
                self.topic,
                self.key.name(),
                self.value.name(),
                // A versioned table's latest values are heads (time and version).
                if self.history.is_some() { ";heads" } else { "" }
            ),
            global,
            history: self.history,
            check: Arc::new(move |k: Option<&[u8]>, v: Option<&[u8]>| {
                k.map(|k| key.decode(k)).transpose()?;
                v.map(|v| value.decode(v)).transpose()?;
                Ok(())
            }),
        }
    }

    /// Encodes a key as the table topic holds it (the test driver pipes records).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn encode_key(&self, key: &K) -> Result<Vec<u8>, CodecError> {
        self.key.encode(key)
    }

    /// Encodes a value as the table topic holds it.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn encode_value(&self, value: &V) -> Result<Vec<u8>, CodecError> {
        self.value.encode(value)
    }

    /// Decodes a raw table entry (the test driver reads tables back).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn decode(&self, key: &[u8], value: &[u8]) -> Result<(K, V), CodecError> {
        Ok((self.key.decode(key)?, self.value.decode(value)?))
    }
}

/// Decodes a table record's key and value to find out whether they are valid, without
/// knowing their types.
type RecordCheck =
    Arc<dyn Fn(Option<&[u8]>, Option<&[u8]>) -> Result<(), CodecError> + Send + Sync>;

/// A table as declared in the configuration.
#[derive(Clone)]
pub(crate) struct TableSpec {
    pub(crate) name: String,
    pub(crate) topic: String,
    /// Codec names, topic and version, recorded in the local store.
    pub(crate) format: String,
    pub(crate) global: bool,
    /// A versioned table's history retention.
    pub(crate) history: Option<Duration>,
    pub(crate) check: RecordCheck,
}

impl fmt::Debug for TableSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableSpec")
            .field("name", &self.name)
            .field("topic", &self.topic)
            .field("global", &self.global)
            .finish_non_exhaustive()
    }
}

impl TableSpec {
    pub(crate) fn store_spec(&self) -> crate::state::StoreSpec {
        crate::state::StoreSpec {
            name: self.name.clone(),
            format: self.format.clone(),
            expiry: None,
        }
    }

    /// The column family of a versioned table's versions (`#` cannot be in a table name).
    pub(crate) fn versions_spec(&self) -> crate::state::StoreSpec {
        crate::state::StoreSpec {
            name: format!("{}#versions", self.name),
            format: format!("{};versions=1", self.format),
            expiry: None,
        }
    }
}

/// A table could not be read, checked or kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// A handler read a table that was not declared on the builder.
    #[error("table {0:?} was not declared with ConsumerConfigBuilder::table or global_table")]
    Unknown(String),
    /// The table topic does not exist.
    #[error("topic {topic} of table {table} does not exist")]
    TopicMissing {
        /// The table.
        table: String,
        /// Its topic.
        topic: String,
    },
    /// A co-partitioned table's topic has another partition count than an input topic: the
    /// table partition of an input partition would hold other keys than its records.
    #[error(
        "table {table}: topic {table_topic} has {table_partitions} partitions but input topic \
         {input_topic} has {input_partitions}; a co-partitioned table needs the same partition \
         count (and the same partitioner) as every input topic — repartition one of them, or \
         declare the table with global_table"
    )]
    CoPartitioning {
        /// The table.
        table: String,
        /// Its topic.
        table_topic: String,
        /// The table topic's partition count.
        table_partitions: usize,
        /// The input topic.
        input_topic: String,
        /// The input topic's partition count.
        input_partitions: usize,
    },
    /// A table record's key or value could not be decoded and the error policy is `Fail`.
    #[error("table record {topic}/{partition}@{offset} cannot be decoded: {source}")]
    BadRecord {
        /// The table topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The record's offset; the table stops before it.
        offset: i64,
        /// The codec's error.
        source: CodecError,
    },
    /// A key could not be encoded, or a stored value decoded, on a read.
    #[error("table {table}: {source}")]
    Codec {
        /// The table.
        table: String,
        /// The codec's error.
        source: CodecError,
    },
    /// An as-of lookup on a table not declared with [`TableDef::versioned`].
    #[error("table {0:?} keeps no versions: declare it with TableDef::versioned to read it as of a time")]
    NotVersioned(String),
    /// An as-of lookup at a time the table's history no longer covers.
    #[error(
        "table {table}: a lookup as of {time} is older than the history the table keeps \
         (it answers from {oldest} on; raise TableDef::versioned's history)"
    )]
    TooOld {
        /// The table.
        table: String,
        /// The time asked for (milliseconds since the epoch).
        time: i64,
        /// The earliest time the table answers for now.
        oldest: i64,
    },
    /// [`Table::at_record_time`] for a record without a timestamp.
    #[error("table {0}: the record has no timestamp to read the table as of")]
    NoRecordTime(String),
    /// The table's local store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// Reading the table topic (or dead-lettering one of its records) failed.
    #[error(transparent)]
    Read(#[from] ChangelogError),
}

/// A typed view of a table for the current record; see the [module docs](self).
pub struct Table<'a, K: Send + 'static, V: Send + 'static> {
    def: &'a TableDef<K, V>,
    reads: store::TableRef<'a>,
    /// The event time of the record being handled.
    record_time: Option<i64>,
}

impl<K: Send + 'static, V: Send + 'static> fmt::Debug for Table<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("name", &self.def.name)
            .finish_non_exhaustive()
    }
}

impl<'a, K: Send + 'static, V: Send + 'static> Table<'a, K, V> {
    pub(crate) fn open(
        def: &'a TableDef<K, V>,
        reads: &'a TableReads,
        record_time: Option<i64>,
    ) -> Result<Self, TableError> {
        let reads = reads
            .find(&def.name)
            .ok_or_else(|| TableError::Unknown(def.name.to_string()))?;
        Ok(Self {
            def,
            reads,
            record_time,
        })
    }

    fn codec_err(&self) -> impl Fn(CodecError) -> TableError + '_ {
        |source| TableError::Codec {
            table: self.def.name.to_string(),
            source,
        }
    }

    /// The latest value of `key` in the table, if any.
    ///
    /// # Errors
    /// Codec or RocksDB errors.
    pub fn get(&self, key: &K) -> Result<Option<V>, TableError> {
        let key = self.def.key.encode(key).map_err(self.codec_err())?;
        self.reads
            .get_with(&key, |v| self.def.value.decode(v))?
            .transpose()
            .map_err(self.codec_err())
    }

    /// The value `key` had at the current record's event time
    /// ([`Handler::event_time`](crate::Handler::event_time), by default its timestamp): the
    /// latest version with a timestamp `≤` it, `None` when there was none or the latest was
    /// a tombstone. See [`as_of`](Self::as_of).
    ///
    /// # Errors
    /// As [`as_of`](Self::as_of); [`TableError::NoRecordTime`] for a record without a time.
    pub fn at_record_time(&self, key: &K) -> Result<Option<V>, TableError> {
        let time = self
            .record_time
            .ok_or_else(|| TableError::NoRecordTime(self.def.name.to_string()))?;
        self.as_of(key, time)
    }

    /// The value `key` had at `time` (milliseconds since the epoch): the latest version with
    /// a timestamp `≤ time` that the table holds (`None`: none, or a tombstone). Unlike
    /// [`get`](Self::get), the answer does not depend on how far the table was read: a
    /// record handled again after a crash reads what it read the first time, unless an
    /// update *older* than `time` was produced to the table topic in between.
    ///
    /// # Errors
    /// [`TableError::NotVersioned`] unless the table was declared with
    /// [`TableDef::versioned`]; [`TableError::TooOld`] for a time before its history;
    /// codec or RocksDB errors.
    pub fn as_of(&self, key: &K, time: i64) -> Result<Option<V>, TableError> {
        let encoded = self.def.key.encode(key).map_err(self.codec_err())?;
        match self
            .reads
            .as_of_with(&encoded, time, |v| self.def.value.decode(v))?
        {
            store::AsOf::Found(value) => value.transpose().map_err(self.codec_err()),
            store::AsOf::TooOld { oldest } => Err(TableError::TooOld {
                table: self.def.name.to_string(),
                time,
                oldest,
            }),
            store::AsOf::NotVersioned => Err(TableError::NotVersioned(self.def.name.to_string())),
        }
    }

    /// Entries whose *encoded* key starts with `prefix`, in encoded-key order (meaningful
    /// with [`Utf8`](crate::codec::Utf8) or [`RawBytes`](crate::codec::RawBytes) keys).
    /// Collects into memory: keep prefixes selective.
    ///
    /// # Errors
    /// Codec or RocksDB errors.
    pub fn prefix(&self, prefix: &[u8]) -> Result<Vec<(K, V)>, TableError> {
        self.reads
            .prefix(prefix)?
            .into_iter()
            .map(|(k, v)| {
                Ok((
                    self.def.key.decode(&k).map_err(self.codec_err())?,
                    self.def.value.decode(&v).map_err(self.codec_err())?,
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod driven;
#[cfg(test)]
mod driven_asof;

/// The meta key of a table partition's checkpoint (its next offset).
fn checkpoint_key(table: &str, partition: i32) -> String {
    format!("table/{table}/{partition}")
}
