//! Tables in the test driver: table topics in memory, piped records, tables read back.

use std::sync::{Arc, Mutex};

use super::*;
use crate::table::{
    DeadLetters, FeedRegistry, FeedSink, GlobalTables, MemoryTableSource, TableDef, TableEnv,
};

/// The driver's stand-in for the table reader thread: the running worker's feeds, by topic.
#[derive(Debug, Default)]
pub(super) struct DriverFeeds {
    sinks: Mutex<Vec<(String, i64, FeedSink)>>,
}

impl FeedRegistry for DriverFeeds {
    fn add(&self, topic: &str, _partition: i32, from: i64, sink: FeedSink) {
        let mut sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        sinks.retain(|(t, _, _)| t != topic);
        sinks.push((topic.to_string(), from, sink));
    }

    fn prune(&self, _topic: &str, _partition: i32) {}
}

impl DriverFeeds {
    /// Hands `batch` (records of `topic` from offset `batch.records[0].offset`) to the worker
    /// reading `topic`, unless its bootstrap read them already.
    fn send(&self, topic: &str, batch: RecordBatch) {
        let sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, from, sink)) = sinks.iter().find(|(t, _, _)| t == topic) {
            if batch.records.first().is_some_and(|r| r.offset >= *from) {
                sink.send(batch);
            }
        }
    }
}

/// The driver's tables.
pub(super) struct DriverTables {
    pub(super) source: Arc<MemoryTableSource>,
    pub(super) feeds: Arc<DriverFeeds>,
    pub(super) global: Arc<GlobalTables>,
    /// Piped co-partitioned records, handed to the worker with the next input record (so
    /// that the worker orders them by time) or before the tables are read.
    pub(super) pending: Vec<(String, RecordBatch)>,
}

impl DriverTables {
    /// Table topics with one partition, global tables opened (empty).
    pub(super) fn new(
        config: &Arc<ConsumerConfig>,
        capture: Arc<Capture>,
        memory: Arc<crate::state::memory::RocksMemory>,
    ) -> Result<(Self, TableEnv)> {
        let source = Arc::new(MemoryTableSource::new(1));
        let feeds = Arc::new(DriverFeeds::default());
        let sink = capture.clone();
        let dead_letters: DeadLetters = Arc::new(move |records| {
            futures::executor::block_on(sink.send_records(records)).map(|_| ())
        });
        let global = Arc::new(GlobalTables::open(
            config,
            source.as_ref(),
            dead_letters.clone(),
            &NoopListener,
            &memory,
        )?);
        let env = TableEnv {
            config: config.clone(),
            source: source.clone(),
            feeds: feeds.clone(),
            global: global.clone(),
            dead_letters,
            sink: Some(capture as Arc<dyn RecordSink>),
            listener: Arc::new(NoopListener),
            memory,
        };
        let tables = Self {
            source,
            feeds,
            global,
            pending: Vec::new(),
        };
        Ok((tables, env))
    }

    /// Hands the piped co-partitioned records to the worker.
    pub(super) fn deliver(&mut self) {
        for (topic, batch) in self.pending.drain(..) {
            self.feeds.send(&topic, batch);
        }
    }
}

impl<KC, VC, H> TestDriver<KC, VC, H>
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    fn tables(&mut self) -> Result<&mut DriverTables> {
        self.tables.as_mut().ok_or_else(|| {
            Error::from(crate::table::TableError::Unknown(
                "(no table declared)".to_string(),
            ))
        })
    }

    /// Produces a record to `table`'s topic (partition 0, the driver's partition). A global
    /// table applies it at once; a co-partitioned one gets it with the next input record,
    /// ordered by timestamp as the consumer orders them (an update without a timestamp goes
    /// first).
    ///
    /// # Errors
    /// The table's codecs' errors; for a global table, its error policy's.
    pub fn pipe_table<K: Send + 'static, V: Send + 'static>(
        &mut self,
        table: &TableDef<K, V>,
        record: TestRecord<K, V>,
    ) -> Result<()> {
        let key = record.key.as_ref().map(|k| table.encode_key(k)).transpose();
        let value = record
            .value
            .as_ref()
            .map(|v| table.encode_value(v))
            .transpose();
        let (key, value) = key.and_then(|k| Ok((k, value?))).map_err(|source| {
            crate::table::TableError::Codec {
                table: table.name().to_string(),
                source,
            }
        })?;
        self.pipe_table_raw(table.name(), key, value, record.timestamp)
    }

    /// [`pipe_table`](Self::pipe_table) with raw bytes (to test bad table records).
    ///
    /// # Errors
    /// For a global table, its error policy's.
    pub fn pipe_table_raw(
        &mut self,
        table: &str,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        timestamp: Option<i64>,
    ) -> Result<()> {
        let spec = self
            .shared
            .config
            .tables
            .iter()
            .find(|t| t.name == table)
            .cloned()
            .ok_or_else(|| crate::table::TableError::Unknown(table.to_string()))?;
        let tables = self.tables()?;
        let batch = tables
            .source
            .append(&spec.topic, 0, (timestamp, key, value));
        if spec.global {
            let index = tables
                .global
                .tables
                .iter()
                .position(|t| t.spec.name == table)
                .unwrap_or_default();
            return tables.global.apply(index, 0, &batch);
        }
        tables.pending.push((spec.topic, batch));
        Ok(())
    }

    /// Every entry of `table`, decoded, in encoded-key order, as a restart sees it: with every
    /// piped update (the partition is stopped, started — which reads the table topic to its
    /// end — and stopped again to read the store).
    ///
    /// # Errors
    /// RocksDB and codec errors.
    pub async fn read_table<K: Send + 'static, V: Send + 'static>(
        &mut self,
        table: &TableDef<K, V>,
    ) -> Result<Vec<(K, V)>> {
        let global = {
            let tables = self.tables()?;
            tables
                .global
                .tables
                .iter()
                .find(|t| t.spec.name == table.name())
                .map(|t| t.store.clone())
        };
        let entries = match global {
            Some(store) => store.entries(0)?,
            None => {
                self.tables()?.pending.clear(); // the restart reads them from the topic
                self.stop_gracefully().await?;
                self.start().await?;
                self.stop_gracefully().await?;
                let config = self.shared.config.clone();
                let specs: Vec<_> = config
                    .tables
                    .iter()
                    .filter(|t| !t.global)
                    .cloned()
                    .collect();
                let index = specs
                    .iter()
                    .position(|t| t.name == table.name())
                    .ok_or_else(|| crate::table::TableError::Unknown(table.name().to_string()))?;
                let path = self
                    .dir
                    .path()
                    .join(&config.group_id)
                    .join(format!("{}-0.tables", self.topic()));
                let entries = {
                    let store = crate::table::TableStore::open(
                        &path,
                        &specs,
                        WAIT,
                        &Default::default(),
                        0,
                    )?;
                    store.entries(index)?
                };
                self.start().await?;
                entries
            }
        };
        entries
            .iter()
            .map(|(k, v)| {
                table.decode(k, v).map_err(|source| {
                    Error::from(crate::table::TableError::Codec {
                        table: table.name().to_string(),
                        source,
                    })
                })
            })
            .collect()
    }
}
