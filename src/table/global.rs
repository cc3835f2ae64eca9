//! Global tables: every partition of the topic in one local store per table, bootstrapped
//! before any input partition is handled, then tailed by the table reader thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::bootstrap::{bootstrap, Bootstrapped, Part, Run, SendBlocking};
use super::source::TableSource;
use super::stats::GlobalTableCounters;
use super::store::{sort_out, TableStore};
use super::{TableError, TableSpec};
use crate::batch::RecordBatch;
use crate::config::{ConsumerConfig, ErrorPolicy};
use crate::error::Error;
use crate::observe::RestoreListener;
use crate::state::StateError;

/// Dead letters sent from a blocking thread; see [`SendBlocking`].
pub(crate) type DeadLetters = Arc<
    dyn Fn(Vec<crate::changelog::OutRecord>) -> Result<(), crate::changelog::ChangelogError>
        + Send
        + Sync,
>;

/// One global table.
#[derive(Debug)]
pub(crate) struct GlobalTable {
    pub(crate) spec: TableSpec,
    pub(crate) store: Arc<TableStore>,
    pub(crate) counters: Arc<GlobalTableCounters>,
}

/// The global tables of a consumer.
pub(crate) struct GlobalTables {
    pub(crate) tables: Vec<GlobalTable>,
    policy: ErrorPolicy,
    dead_letters: DeadLetters,
}

impl std::fmt::Debug for GlobalTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalTables")
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

impl GlobalTables {
    /// Opens every global table of `config` and reads each of its partitions up to its end
    /// offset as it is now. Blocking.
    ///
    /// # Errors
    /// A missing topic, a bad record under `ErrorPolicy::Fail`, read and RocksDB errors.
    pub(crate) fn open(
        config: &ConsumerConfig,
        source: &dyn TableSource,
        dead_letters: DeadLetters,
        listener: &dyn RestoreListener,
        memory: &crate::state::memory::RocksMemory,
    ) -> Result<Self, TableError> {
        let mut tables = Vec::new();
        for spec in config.tables.iter().filter(|t| t.global) {
            let Some(partitions) = source.partitions(&spec.topic)? else {
                return Err(TableError::TopicMissing {
                    table: spec.name.clone(),
                    topic: spec.topic.clone(),
                });
            };
            let path = global_dir(config, &spec.name);
            let (store, done) = open_one(
                &path,
                spec,
                partitions,
                (config, memory),
                source,
                &*dead_letters,
                listener,
            )?;
            tracing::info!(table = %spec.name, topic = %spec.topic, partitions, records = done.records,
                rate = done.rate(), "global table ready");
            tables.push(GlobalTable {
                spec: spec.clone(),
                store: Arc::new(store),
                counters: Arc::new(GlobalTableCounters {
                    name: spec.name.clone(),
                    topic: spec.topic.clone(),
                    bootstrapped: AtomicU64::new(done.records),
                    applied: AtomicU64::new(0),
                    skipped: AtomicU64::new(done.bad),
                    partitions: AtomicU64::new(partitions as u64),
                }),
            });
        }
        Ok(Self {
            tables,
            policy: config.error_policy.clone(),
            dead_letters,
        })
    }

    /// The counters `observe` reports, one per table.
    pub(crate) fn counters(&self) -> Vec<Arc<GlobalTableCounters>> {
        self.tables.iter().map(|t| t.counters.clone()).collect()
    }

    /// The stores handlers read.
    pub(crate) fn reads(&self) -> Vec<(String, Arc<TableStore>)> {
        self.tables
            .iter()
            .map(|t| (t.spec.name.clone(), t.store.clone()))
            .collect()
    }

    /// Partitions of global tables that `known` does not hold yet, with the offset to read
    /// them from: all of them at first, then partitions added to the topics.
    /// `partitions_of` gives a topic's partition count (`None`: unknown now).
    pub(crate) fn unread(
        &self,
        partitions_of: &dyn Fn(&str) -> Option<usize>,
        known: &[(String, i32)],
    ) -> Result<Vec<(usize, String, i32, i64)>, Error> {
        let mut out = Vec::new();
        for (index, table) in self.tables.iter().enumerate() {
            let topic = &table.spec.topic;
            let Some(count) = partitions_of(topic) else {
                continue;
            };
            let before = table
                .counters
                .partitions
                .swap(count as u64, Ordering::AcqRel);
            if count as u64 > before && before > 0 {
                tracing::info!(table = %table.spec.name, %topic, from = before, to = count,
                    "global table topic has new partitions: reading them");
            }
            for partition in 0..count as i32 {
                if !known.iter().any(|(t, p)| t == topic && *p == partition) {
                    let from = table.store.checkpoint(0, partition)?;
                    out.push((index, topic.clone(), partition, from));
                }
            }
        }
        Ok(out)
    }

    /// Applies records read by the table reader. Blocking (the reader's thread).
    ///
    /// # Errors
    /// A bad record under `ErrorPolicy::Fail` ([`TableError::BadRecord`]), dead-letter and
    /// RocksDB errors.
    pub(crate) fn apply(
        &self,
        index: usize,
        partition: i32,
        batch: &RecordBatch,
    ) -> Result<(), Error> {
        let table = &self.tables[index];
        let sorted = sort_out(
            &table.spec,
            partition,
            batch,
            0..batch.records.len(),
            &self.policy,
        );
        table.counters.skipped.fetch_add(
            sorted.skipped + sorted.dead_letters.len() as u64,
            Ordering::Relaxed,
        );
        if !sorted.dead_letters.is_empty() {
            (self.dead_letters)(sorted.dead_letters).map_err(TableError::from)?;
        }
        table
            .store
            .write(0, partition, &sorted.entries, sorted.next, true)
            .map_err(TableError::from)?;
        table
            .counters
            .applied
            .fetch_add(sorted.entries.len() as u64, Ordering::Relaxed);
        match sorted.failed {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }
}

/// A topic's partition count as `consumer` sees it in the metadata; `None` when unknown.
pub(crate) fn partition_count(consumer: &BaseConsumer, topic: &str) -> Option<usize> {
    match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
        Ok(metadata) => metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len()),
        Err(error) => {
            tracing::warn!(%topic, %error, "global table: metadata unavailable");
            None
        }
    }
}

/// `<state_dir>/<group>/global.<table>`.
fn global_dir(config: &ConsumerConfig, table: &str) -> std::path::PathBuf {
    config
        .state_dir
        .clone()
        .unwrap_or_default()
        .join(&config.group_id)
        .join(format!("global.{table}"))
}

/// Opens one global table's store and bootstraps it; a store whose checkpoint lies past its
/// topic's end (the topic was recreated) is wiped and read again.
fn open_one(
    path: &std::path::Path,
    spec: &TableSpec,
    partitions: usize,
    (config, memory): (&ConsumerConfig, &crate::state::memory::RocksMemory),
    source: &dyn TableSource,
    send: SendBlocking<'_>,
    listener: &dyn RestoreListener,
) -> Result<(TableStore, Bootstrapped), TableError> {
    let wait = config.revoke_timeout;
    for attempt in 0..2 {
        let store = TableStore::open(
            path,
            std::slice::from_ref(spec),
            wait,
            memory,
            config.table_cache_bytes,
        )?;
        let parts: Vec<Part<'_>> = (0..partitions as i32)
            .map(|partition| Part {
                index: 0,
                spec,
                partition,
            })
            .collect();
        let mut started = false;
        let mut progress = |done: u64, total: u64| {
            if started {
                listener.on_restore_progress(&spec.topic, -1, done, total.saturating_sub(done));
            } else {
                started = true;
                listener.on_restore_start(&spec.topic, -1, total);
            }
        };
        let mut run = Run {
            source,
            policy: &config.error_policy,
            send,
            stop: &|| false,
            progress: &mut progress,
        };
        match bootstrap(&store, &parts, &mut run) {
            Err(TableError::State(error @ StateError::CheckpointAhead { .. })) if attempt == 0 => {
                tracing::warn!(table = %spec.name, %error, "global table store does not match its topic (recreated?): reading it again");
                store.destroy()?;
            }
            Err(error) => return Err(error),
            Ok(done) => {
                let done = done.unwrap_or_default();
                listener.on_restore_end(&spec.topic, -1, done.records, done.elapsed);
                return Ok((store, done));
            }
        }
    }
    unreachable!("the second attempt returns")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Utf8;
    use crate::table::{MemoryTableSource, TableDef};

    #[test]
    fn partitions_added_to_a_global_tables_topic_are_read_from_their_start() {
        let dir = tempfile::tempdir().unwrap();
        let rates = TableDef::new("rates", "rates", Utf8, Utf8);
        let config = ConsumerConfig::builder("unused:9092", "g", ["orders"])
            .instance_id("i")
            .state_dir(dir.path())
            .global_table(&rates)
            .build()
            .unwrap();
        let source = MemoryTableSource::new(2);
        let none: DeadLetters = Arc::new(|_| Ok(()));
        let tables = GlobalTables::open(
            &config,
            &source,
            none,
            &crate::observe::NoopListener,
            &Default::default(),
        )
        .unwrap();
        let first = tables.unread(&|_| Some(2), &[]).unwrap();
        assert_eq!(
            first,
            vec![(0, "rates".into(), 0, 0), (0, "rates".into(), 1, 0)]
        );
        let known = [("rates".to_string(), 0), ("rates".to_string(), 1)];
        assert!(tables.unread(&|_| Some(2), &known).unwrap().is_empty());
        assert!(
            tables.unread(&|_| None, &known).unwrap().is_empty(),
            "metadata unknown"
        );
        assert_eq!(
            tables.unread(&|_| Some(3), &known).unwrap(),
            vec![(0, "rates".into(), 2, 0)],
            "a partition added to the topic"
        );
    }
}
