//! Reading state from outside the handler (interactive queries).
//!
//! [`StatefulConsumer::query`](crate::StatefulConsumer::query) gives a [`StateQuery`]: cheap
//! to clone, usable from any task (an HTTP handler, a dashboard) while the consumer runs. It
//! reads the stores of the partitions this member owns, from RocksDB:
//!
//! - **What it reads**: what the partition has *flushed* — never a half-applied record, and
//!   never a record whose effects are not durable yet. Staleness: up to the flush interval
//!   (`flush_interval`, default 1 s) plus one flush behind the handler.
//! - **Not this member's key**: a key whose partition another member owns is
//!   [`QueryError::NotOwned`], naming the owner when the group tells (the member that wrote
//!   the partition's changelog last, as standby placement finds it) — never "absent".
//! - **Not available yet**: a partition assigned here but still restoring its state (after a
//!   restart, a rebalance, a lost disk) is [`QueryError::NotReady`], never an empty or stale
//!   answer presented as current.
//! - **Finding a key's partition**: [`get`](StateQuery::get) locates the partition of a store
//!   keyed like its input topic with the producers' [`Partitioner`] (librdkafka's CRC-32 by
//!   default; [`with_partitioner`](StateQuery::with_partitioner) for Java producers' murmur2).
//!   [`get_in`](StateQuery::get_in), [`prefix`](StateQuery::prefix) and
//!   [`windows`](StateQuery::windows) take the partition;
//!   [`windows_of`](StateQuery::windows_of) and [`sessions_of`](StateQuery::sessions_of)
//!   locate it like `get`.
//!
//! TTL stores answer with entries not swept yet (expired ones included until their sweep);
//! standby replicas are not read.

mod partitioner;
pub(crate) mod registry;
mod sessions;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::codec::CodecError;
use crate::config::ConsumerConfig;
use crate::state::{StateError, StoreDef};
use crate::window::WindowDef;
pub use partitioner::Partitioner;
use registry::{QueryRegistry, Slot};

/// A query could not be answered here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// Another member owns the key's partition (or none does right now).
    #[error("{topic}/{partition} is not owned by this member{}", owner.as_ref().map_or(String::new(), |o| format!("; {o} owns it")))]
    NotOwned {
        /// The input topic.
        topic: String,
        /// The key's partition.
        partition: i32,
        /// The owner's `group.instance.id`, when the group says.
        owner: Option<String>,
    },
    /// The partition is assigned here but its state is still being restored.
    #[error("{topic}/{partition} is not available yet: its state is being restored")]
    NotReady {
        /// The input topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
    /// The store was not declared on this consumer.
    #[error("store {0:?} is not declared on this consumer")]
    UnknownStore(String),
    /// `get` needs the topic: the consumer reads several.
    #[error("the consumer reads several topics ({0}): use get_in with the topic and partition")]
    AmbiguousTopic(String),
    /// A key could not be encoded or a value decoded.
    #[error("store {store}: {source}")]
    Codec {
        /// The store.
        store: String,
        /// The codec's error.
        source: CodecError,
    },
    /// Reading RocksDB, or asking the cluster, failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The cluster could not be asked for a partition count or an owner.
    #[error("cannot ask the cluster: {0}")]
    Cluster(String),
}

/// A read-only handle on this member's state; see the [module docs](self).
#[derive(Clone)]
pub struct StateQuery {
    registry: Arc<QueryRegistry>,
    config: Arc<ConsumerConfig>,
    partitioner: Partitioner,
    cluster: Arc<Mutex<Cluster>>,
}

impl std::fmt::Debug for StateQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateQuery")
            .field("partitioner", &self.partitioner)
            .finish_non_exhaustive()
    }
}

/// What the handle asks the cluster, cached.
#[derive(Default)]
struct Cluster {
    reader: Option<crate::standby::group::GroupReader>,
    partitions: HashMap<String, i32>,
}

impl StateQuery {
    pub(crate) fn new(registry: Arc<QueryRegistry>, config: Arc<ConsumerConfig>) -> Self {
        Self {
            registry,
            config,
            partitioner: Partitioner::default(),
            cluster: Arc::default(),
        }
    }

    /// Locates keys with `partitioner` (default: [`Partitioner::Crc32`], librdkafka's).
    #[must_use]
    pub fn with_partitioner(mut self, partitioner: Partitioner) -> Self {
        self.partitioner = partitioner;
        self
    }

    /// The partitions assigned to this member: `(topic, partition, ready)`.
    pub fn partitions(&self) -> Vec<(String, i32, bool)> {
        self.registry.partitions()
    }

    /// The value of `key` in `store`, from the partition of the input topic that `key` is
    /// produced to (the store must be keyed like the topic: same key bytes).
    ///
    /// # Errors
    /// [`QueryError::NotOwned`], [`QueryError::NotReady`], [`QueryError::AmbiguousTopic`]
    /// with several input topics, codec, RocksDB and cluster errors.
    pub async fn get<K: Send + 'static, V: Send + 'static>(
        &self,
        store: &StoreDef<K, V>,
        key: &K,
    ) -> Result<Option<V>, QueryError> {
        self.store_index(store.name())?;
        let encoded = store.encode_key(key).map_err(codec_err(store.name()))?;
        let (topic, partition) = self.locate(&encoded).await?;
        self.get_encoded(store, (&topic, partition), &encoded).await
    }

    /// The value of `key` in `store` of `(topic, partition)`.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn get_in<K: Send + 'static, V: Send + 'static>(
        &self,
        store: &StoreDef<K, V>,
        (topic, partition): (&str, i32),
        key: &K,
    ) -> Result<Option<V>, QueryError> {
        let encoded = store.encode_key(key).map_err(codec_err(store.name()))?;
        self.get_encoded(store, (topic, partition), &encoded).await
    }

    async fn get_encoded<K: Send + 'static, V: Send + 'static>(
        &self,
        store: &StoreDef<K, V>,
        tp: (&str, i32),
        encoded: &[u8],
    ) -> Result<Option<V>, QueryError> {
        self.read(store, tp, |db, index| {
            db.get_with(index, encoded, |v| store.decode_value(v))
        })
        .await?
        .transpose()
        .map_err(codec_err(store.name()))
    }

    /// The entries of `store` in `(topic, partition)` whose *encoded* key starts with
    /// `prefix`, in encoded-key order (`b""`: all of them). Collects into memory.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn prefix<K: Send + 'static, V: Send + 'static>(
        &self,
        store: &StoreDef<K, V>,
        (topic, partition): (&str, i32),
        prefix: &[u8],
    ) -> Result<Vec<(K, V)>, QueryError> {
        let entries = self
            .read(store, (topic, partition), |db, index| {
                db.prefix(index, prefix)
            })
            .await?;
        entries
            .iter()
            .map(|(k, v)| store.decode(k, v))
            .collect::<Result<_, _>>()
            .map_err(codec_err(store.name()))
    }

    /// [`windows`](Self::windows) in the partition of the input topic that `key` is produced
    /// to (the window store keyed like the topic).
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn windows_of<K: Send + 'static, V: Send + 'static>(
        &self,
        window: &WindowDef<K, V>,
        key: &K,
        range: (i64, i64),
    ) -> Result<Vec<(i64, V)>, QueryError> {
        self.store_index(window.name())?;
        let encoded = window.query_key(key).map_err(codec_err(window.name()))?;
        let (topic, partition) = self.locate(&encoded).await?;
        self.windows(window, (&topic, partition), key, range).await
    }

    /// The input topic and partition a key encoded as `key` is produced to, with this
    /// handle's [`Partitioner`] (the consumer must read one topic).
    ///
    /// # Errors
    /// [`QueryError::AmbiguousTopic`], cluster errors.
    pub async fn partition_of(&self, key: &[u8]) -> Result<(String, i32), QueryError> {
        self.locate(key).await
    }

    async fn locate(&self, encoded: &[u8]) -> Result<(String, i32), QueryError> {
        let [topic] = self.config.topics.as_slice() else {
            return Err(QueryError::AmbiguousTopic(self.config.topics.join(", ")));
        };
        let partitions = self.partition_count(topic).await?;
        Ok((
            topic.clone(),
            self.partitioner.partition(encoded, partitions),
        ))
    }

    /// The aggregates of `key` in the windows of `window` starting in `from..=to`
    /// (milliseconds), from `(topic, partition)`: `(window start, value)` in start order.
    /// Closed windows are gone once deleted.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn windows<K: Send + 'static, V: Send + 'static>(
        &self,
        window: &WindowDef<K, V>,
        (topic, partition): (&str, i32),
        key: &K,
        (from, to): (i64, i64),
    ) -> Result<Vec<(i64, V)>, QueryError> {
        let encoded = window.query_key(key).map_err(codec_err(window.name()))?;
        let found = self
            .read_store(window.name(), (topic, partition), |db, index| {
                db.range_with_suffix(index, (from, to), &encoded)
            })
            .await?;
        found
            .into_iter()
            .map(|(start, v)| Ok((start, window.decode_value(&v)?)))
            .collect::<Result<_, CodecError>>()
            .map_err(codec_err(window.name()))
    }

    async fn read<K: Send + 'static, V: Send + 'static, T>(
        &self,
        store: &StoreDef<K, V>,
        tp: (&str, i32),
        f: impl FnOnce(&crate::state::db::PartitionDb, usize) -> Result<T, StateError>,
    ) -> Result<T, QueryError> {
        self.read_store(store.name(), tp, f).await
    }

    async fn read_store<T>(
        &self,
        name: &str,
        (topic, partition): (&str, i32),
        f: impl FnOnce(&crate::state::db::PartitionDb, usize) -> Result<T, StateError>,
    ) -> Result<T, QueryError> {
        let index = self.store_index(name)?;
        match self.registry.slot(topic, partition) {
            Some(Slot::Ready(db)) => Ok(f(&db, index)?),
            Some(Slot::Opening) => Err(QueryError::NotReady {
                topic: topic.to_string(),
                partition,
            }),
            // The owner is best effort: a changelog not created yet (no owner ever) or a
            // cluster that does not answer leaves it unnamed.
            None => Err(QueryError::NotOwned {
                topic: topic.to_string(),
                partition,
                owner: self
                    .owner_of(topic, partition)
                    .await
                    .unwrap_or_else(|error| {
                        tracing::debug!(%topic, partition, %error, "no owner found");
                        None
                    }),
            }),
        }
    }

    fn store_index(&self, name: &str) -> Result<usize, QueryError> {
        self.config
            .stores
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| QueryError::UnknownStore(name.to_string()))
    }

    /// The member that owns `(topic, partition)`, as the group tells: the writer of the
    /// partition's last changelog record (`None`: not known).
    ///
    /// # Errors
    /// [`QueryError::Cluster`] when the cluster cannot be asked.
    pub async fn owner_of(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<String>, QueryError> {
        if self.config.stores.is_empty() {
            return Ok(None);
        }
        let (cluster, config, topic) =
            (self.cluster.clone(), self.config.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            let mut cluster = cluster.lock().unwrap_or_else(|p| p.into_inner());
            let reader = cluster.reader(&config)?;
            let tp = (topic, partition);
            let view = reader
                .view(std::slice::from_ref(&tp))
                .map_err(|e| QueryError::Cluster(e.to_string()))?;
            Ok(view.owners.get(&tp).cloned())
        })
        .await
        .map_err(|e| QueryError::Cluster(e.to_string()))?
    }

    async fn partition_count(&self, topic: &str) -> Result<i32, QueryError> {
        let (cluster, config, topic) =
            (self.cluster.clone(), self.config.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            let mut cluster = cluster.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(&n) = cluster.partitions.get(&topic) {
                return Ok(n);
            }
            let n = cluster
                .reader(&config)?
                .partition_count(&topic)
                .map_err(|e| QueryError::Cluster(e.to_string()))?
                .ok_or_else(|| QueryError::Cluster(format!("topic {topic} does not exist")))?;
            cluster.partitions.insert(topic, n);
            Ok(n)
        })
        .await
        .map_err(|e| QueryError::Cluster(e.to_string()))?
    }
}

impl Cluster {
    fn reader(
        &mut self,
        config: &ConsumerConfig,
    ) -> Result<&mut crate::standby::group::GroupReader, QueryError> {
        if self.reader.is_none() {
            let reader = crate::standby::group::GroupReader::new(config)
                .map_err(|e| QueryError::Cluster(e.to_string()))?;
            self.reader = Some(reader);
        }
        Ok(self.reader.as_mut().expect("set above"))
    }
}

fn codec_err(store: &str) -> impl Fn(CodecError) -> QueryError + '_ {
    move |source| QueryError::Codec {
        store: store.to_string(),
        source,
    }
}
