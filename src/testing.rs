//! Running a [`Handler`] without a broker (cargo feature `testing`).
//!
//! [`TestDriver`] runs the consumer's own partition worker — decoding with your codecs,
//! retries, error policies, panics, lifecycle hooks, real RocksDB stores in a temporary
//! directory, flushes and restores — on one partition, with the changelogs in memory and
//! dead letters captured. Records are built in the test with [`TestRecord`]. A test can
//! flush, crash (unflushed writes are lost, records after the last durable offset are
//! delivered again, as Kafka would after a restart), lose the disk (restore from the
//! changelog alone), and read the stores back.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread")] async fn main() -> kafka_stateful::Result<()> {
//! use kafka_stateful::codec::{Bincode, Utf8};
//! use kafka_stateful::testing::{TestDriver, TestRecord};
//! use kafka_stateful::{ConsumerConfig, Handler, HandlerError, PartitionContext, Record, StoreDef};
//!
//! struct CountViews { views: StoreDef<String, u64> }
//! impl Handler<String, String> for CountViews {
//!     async fn handle(&self, r: Record<String, String>, ctx: &mut PartitionContext) -> Result<(), HandlerError> {
//!         let Some(user) = r.value else { return Ok(()) };
//!         let mut views = ctx.store(&self.views)?;
//!         let n = views.get(&user)?.unwrap_or(0) + 1;
//!         views.put(&user, &n)
//!             .map_err(Into::into)
//!     }
//! }
//!
//! let views = StoreDef::new("views", Utf8, Bincode::<u64>::new());
//! let config = ConsumerConfig::builder("unused:9092", "test", ["page-views"])
//!     .instance_id("test")
//!     .state_dir(std::env::temp_dir()) // replaced by a temporary directory
//!     .store(&views)
//!     .build()?;
//! let mut driver = TestDriver::new(config, Utf8, Utf8, CountViews { views: views.clone() }).await?;
//! driver.send(TestRecord::new("p1".to_string(), "ada".to_string())).await?;
//! driver.send(TestRecord::new("p2".to_string(), "ada".to_string())).await?;
//! driver.crash().await?; // nothing was flushed: both records are delivered again
//! assert_eq!(driver.read(&views).await?, vec![("ada".to_string(), 2)]);
//! # Ok(()) }
//! ```

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::batch::RecordBatch;
use crate::changelog::{ChangelogError, OutRecord, RecordSink};
use crate::codec::Codec;
use crate::config::ConsumerConfig;
use crate::error::{Error, Result};
use crate::handler::Handler;
use crate::observe::{NoopListener, StatsInner};
use crate::offset::PartitionProgress;
use crate::partition::worker::{Shared, StopSignal, Worker};
use crate::state::{MemoryLog, StateEnv, StoreDef};

/// How long the driver waits for the worker before giving up (a handler that never returns).
const WAIT: Duration = Duration::from_secs(30);

/// A record to hand to a [`TestDriver`]: key and value in their decoded types, encoded with
/// the driver's codecs.
#[derive(Debug, Clone)]
pub struct TestRecord<K, V> {
    key: Option<K>,
    value: Option<V>,
    timestamp: Option<i64>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl<K, V> TestRecord<K, V> {
    /// A record with a key and a value.
    pub fn new(key: K, value: V) -> Self {
        Self {
            key: Some(key),
            value: Some(value),
            timestamp: None,
            headers: Vec::new(),
        }
    }

    /// A record with a key and no value (a tombstone).
    pub fn tombstone(key: K) -> Self {
        Self {
            key: Some(key),
            value: None,
            timestamp: None,
            headers: Vec::new(),
        }
    }

    /// A record without a key.
    pub fn unkeyed(value: V) -> Self {
        Self {
            key: None,
            value: Some(value),
            timestamp: None,
            headers: Vec::new(),
        }
    }

    /// Its timestamp, in milliseconds since the epoch.
    pub fn timestamp(mut self, millis: i64) -> Self {
        self.timestamp = Some(millis);
        self
    }

    /// Adds a header.
    pub fn header(mut self, key: impl Into<String>, value: Option<Vec<u8>>) -> Self {
        self.headers.push((key.into(), value));
        self
    }
}

/// A record the driver captured instead of producing it (an output record or a dead letter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedRecord {
    /// The topic it was for.
    pub topic: String,
    /// Raw key.
    pub key: Option<Vec<u8>>,
    /// Raw value.
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

#[derive(Default)]
struct Capture(
    Mutex<Vec<OutRecord>>,
    std::sync::atomic::AtomicBool,
    /// While set, enqueued records wait for their acknowledgement (see `hold_acks`).
    Mutex<Option<Vec<crate::changelog::HeldAck>>>,
);

impl RecordSink for Capture {
    fn send_records(
        &self,
        records: Vec<OutRecord>,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = std::result::Result<Vec<i64>, ChangelogError>>
                + Send
                + '_,
        >,
    > {
        if self.1.load(Ordering::Acquire) {
            let topic = records.first().map(|r| r.topic.clone()).unwrap_or_default();
            return Box::pin(async move {
                Err(ChangelogError::Produce {
                    topic,
                    partition: -1,
                    source: rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::MessageTimedOut,
                    ),
                })
            });
        }
        let mut captured = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let first = captured.len() as i64;
        let offsets = (first..first + records.len() as i64).collect();
        captured.extend(records);
        Box::pin(async move { Ok(offsets) })
    }

    fn enqueue_records(
        &self,
        records: Vec<OutRecord>,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = std::result::Result<crate::changelog::Pending, ChangelogError>,
                > + Send
                + '_,
        >,
    > {
        let mut held = self.2.lock().unwrap_or_else(|p| p.into_inner());
        let Some(held) = held.as_mut() else {
            drop(held);
            return Box::pin(async move {
                self.send_records(records).await?;
                Ok(crate::changelog::Pending::acknowledged())
            });
        };
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(records);
        let (pending, ack) = crate::changelog::Pending::held();
        held.push(ack);
        Box::pin(async move { Ok(pending) })
    }
}

/// An encoded record kept for delivery after a crash.
type Sent = (
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<i64>,
    Vec<(String, Option<Vec<u8>>)>,
);

struct Running {
    tx: mpsc::UnboundedSender<RecordBatch>,
    stop: StopSignal,
    join: tokio::task::JoinHandle<()>,
    progress: Arc<PartitionProgress>,
}

/// Runs a [`Handler`] on one partition without a broker; see the [module docs](self).
pub struct TestDriver<KC: Codec, VC: Codec, H> {
    shared: Arc<Shared<KC, VC, H>>,
    log: MemoryLog,
    capture: Arc<Capture>,
    failures: mpsc::UnboundedReceiver<Error>,
    running: Option<Running>,
    sent: Vec<Sent>,
    next_offset: i64,
    /// What Kafka would hold as the committed offset: the last durable one.
    committed: i64,
    dir: tempfile::TempDir,
    tables: Option<tables::DriverTables>,
}

impl<KC: Codec, VC: Codec, H> std::fmt::Debug for TestDriver<KC, VC, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDriver")
            .field("next_offset", &self.next_offset)
            .field("committed", &self.committed)
            .finish_non_exhaustive()
    }
}

impl<KC, VC, H> TestDriver<KC, VC, H>
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    /// A driver for partition 0 of the configuration's first topic. Its state directory is
    /// a new temporary directory (the configured one is not used). Call from a
    /// multi-threaded tokio runtime.
    ///
    /// # Errors
    /// Errors opening the state, or of the handler's `on_assigned`.
    pub async fn new(
        config: ConsumerConfig,
        key_codec: KC,
        value_codec: VC,
        handler: H,
    ) -> Result<Self> {
        let dir = tempfile::tempdir().map_err(|source| crate::StateError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
        let mut config = config;
        config.state_dir = Some(dir.path().to_path_buf());
        let config = Arc::new(config);
        let log = MemoryLog::default();
        let capture = Arc::new(Capture::default());
        let (failures_tx, failures) = mpsc::unbounded_channel();
        let memory = Arc::new(crate::state::memory::RocksMemory::default());
        let state_env = (!config.stores.is_empty()).then(|| StateEnv {
            config: config.clone(),
            log: Arc::new(log.clone()),
            listener: Arc::new(NoopListener),
            memory: memory.clone(),
        });
        let (tables, table_env) = match config.tables.is_empty() {
            true => (None, None),
            false => {
                let (tables, env) = tables::DriverTables::new(&config, capture.clone(), memory)?;
                (Some(tables), Some(env))
            }
        };
        let shared = Arc::new(Shared {
            config,
            key_codec,
            value_codec,
            handler,
            state_env,
            tables: table_env,
            producer: Some(capture.clone() as Arc<dyn RecordSink>),
            stats: Arc::new(StatsInner::default()),
            failures: failures_tx,
            clock_offset_ms: Default::default(),
            standbys: None,
            queries: Arc::default(),
            transactions: None,
        });
        let mut driver = Self {
            shared,
            log,
            capture,
            failures,
            running: None,
            sent: Vec::new(),
            next_offset: 0,
            committed: 0,
            dir,
            tables,
        };
        driver.start().await?;
        Ok(driver)
    }

    fn topic(&self) -> String {
        self.shared.config.topics[0].clone()
    }

    async fn start(&mut self) -> Result<()> {
        let progress = Arc::new(PartitionProgress::default());
        let stop = StopSignal::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Worker::new(
            self.shared.clone(),
            (self.topic(), 0),
            progress.clone(),
            stop.clone(),
        );
        let join = tokio::spawn(worker.run(crate::partition::source::Source::Channel(rx)));
        self.running = Some(Running {
            tx,
            stop,
            join,
            progress: progress.clone(),
        });
        self.wait("the partition to be ready", || {
            progress.ready.load(Ordering::Acquire)
        })
        .await?;
        // Kafka delivers again everything after the committed offset.
        let again: Vec<Sent> = self
            .sent
            .iter()
            .filter(|s| s.0 >= self.committed)
            .cloned()
            .collect();
        for record in again {
            self.deliver(record).await?;
        }
        Ok(())
    }

    async fn wait(&mut self, what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(error) = self.failures.try_recv() {
                return Err(error);
            }
            if done() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Fatal {
                    code: "TestDriver".into(),
                    reason: format!("timed out waiting for {what}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn deliver(&mut self, record: Sent) -> Result<()> {
        let (offset, key, value, timestamp, headers) = record;
        let mut batch = RecordBatch::default();
        let header_refs: Vec<(&str, Option<&[u8]>)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        batch.push_raw(offset, key.as_deref(), value.as_deref(), &header_refs);
        batch.set_last_timestamp(timestamp);
        if let Some(tables) = &mut self.tables {
            // Handed over together with the record: the worker orders them by time.
            tables.deliver();
        }
        let Some(running) = &self.running else {
            return Ok(());
        };
        let progress = running.progress.clone();
        let _ = running.tx.send(batch);
        self.wait("the record to be processed", || {
            progress.processed_next.load(Ordering::Acquire) > offset
        })
        .await
    }

    /// Hands a record to the handler (the next offset of the partition) and waits until it
    /// was processed.
    ///
    /// # Errors
    /// What `run()` would return for it: under [`ErrorPolicy::Fail`](crate::ErrorPolicy::Fail)
    /// the record's decode, handler or panic error; state and codec errors.
    pub async fn send(&mut self, record: TestRecord<KC::Item, VC::Item>) -> Result<()> {
        let (_, key, value, timestamp, headers) = self.encode(record)?;
        self.send_raw(key, value, timestamp, headers).await
    }

    /// A record encoded with the driver's codecs (its offset left at -1).
    fn encode(&self, record: TestRecord<KC::Item, VC::Item>) -> Result<Sent> {
        let key = record
            .key
            .as_ref()
            .map(|k| self.shared.key_codec.encode(k))
            .transpose()
            .map_err(|e| Error::Fatal {
                code: "TestDriver".into(),
                reason: format!("cannot encode the key: {e}"),
            })?;
        let value = record
            .value
            .as_ref()
            .map(|v| self.shared.value_codec.encode(v))
            .transpose()
            .map_err(|e| Error::Fatal {
                code: "TestDriver".into(),
                reason: format!("cannot encode the value: {e}"),
            })?;
        Ok((-1, key, value, record.timestamp, record.headers))
    }

    /// Hands raw bytes to the handler (to test what the codecs make of bad input).
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn send_raw(
        &mut self,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        timestamp: Option<i64>,
        headers: Vec<(String, Option<Vec<u8>>)>,
    ) -> Result<()> {
        let offset = self.next_offset;
        self.next_offset += 1;
        let record = (offset, key, value, timestamp, headers);
        self.sent.push(record.clone());
        self.deliver(record).await
    }

    /// Stops the partition gracefully (`on_revoked`, final flush, the offsets count as
    /// committed) and assigns it again (restore from the local state: nothing to replay).
    ///
    /// # Errors
    /// Flush, restore and hook errors.
    pub async fn flush(&mut self) -> Result<()> {
        self.stop_gracefully().await?;
        self.start().await
    }

    async fn stop_gracefully(&mut self) -> Result<()> {
        if let Some(running) = self.running.take() {
            running.stop.stop();
            drop(running.tx);
            let _ = running.join.await;
            if let Ok(error) = self.failures.try_recv() {
                return Err(error);
            }
            self.committed = running.progress.durable_next().max(self.committed);
        }
        Ok(())
    }

    /// Kills the partition's worker (SIGKILL-like: unflushed writes are lost) and assigns the
    /// partition again: it restores from the local state and the changelog, and the records
    /// after the last durable offset are delivered again.
    ///
    /// # Errors
    /// Restore and hook errors.
    pub async fn crash(&mut self) -> Result<()> {
        self.kill().await;
        self.start().await
    }

    async fn kill(&mut self) {
        if let Some(running) = self.running.take() {
            running.join.abort();
            let _ = running.join.await;
            self.committed = running.progress.durable_next().max(self.committed);
        }
    }

    /// As [`crash`](Self::crash), and the local state directory is deleted too: the state
    /// is rebuilt from the (in-memory) changelog alone, as on a new owner.
    ///
    /// # Errors
    /// Restore and hook errors.
    pub async fn lose_disk(&mut self) -> Result<()> {
        self.kill().await;
        let dir = self.dir.path().join(&self.shared.config.group_id);
        let _ = std::fs::remove_dir_all(dir);
        self.start().await
    }

    /// Every entry of a window store, decoded, ordered by window start, then encoded key.
    /// Flushes first (see [`flush`](Self::flush)).
    ///
    /// # Errors
    /// Flush, RocksDB and codec errors.
    pub async fn read_window<K: Send + 'static, V: Send + 'static>(
        &mut self,
        window: &crate::window::WindowDef<K, V>,
    ) -> Result<Vec<(crate::window::Window, K, V)>> {
        let raw = self.read_raw(window.name()).await?;
        raw.iter()
            .map(|(k, v)| {
                window
                    .decode_entry(k, v)
                    .map_err(|e| codec_error(window.name(), e))
            })
            .collect()
    }

    /// Every session of a session store (its bounds, key and aggregate), ordered by key,
    /// then end. Flushes first (see [`flush`](Self::flush)).
    ///
    /// # Errors
    /// Flush, RocksDB and codec errors.
    pub async fn read_sessions<K: Send + 'static, V: Send + 'static>(
        &mut self,
        sessions: &crate::window::SessionDef<K, V>,
    ) -> Result<Vec<(crate::window::Window, K, V)>> {
        let raw = self.read_raw(sessions.name()).await?;
        let name = sessions.name();
        raw.iter()
            .map(|(k, v)| {
                sessions
                    .decode_entry(k, v)
                    .map_err(|e| codec_error(name, e))
            })
            .collect()
    }

    /// Every record a sliding window store still keeps (its time, key and value), ordered
    /// by key, then time. Flushes first (see [`flush`](Self::flush)).
    ///
    /// # Errors
    /// Flush, RocksDB and codec errors.
    pub async fn read_sliding<K: Send + 'static, V: Send + 'static>(
        &mut self,
        sliding: &crate::window::SlidingDef<K, V>,
    ) -> Result<Vec<(i64, K, V)>> {
        let raw = self.read_raw(sliding.name()).await?;
        let name = sliding.name();
        raw.iter()
            .map(|(k, v)| sliding.decode_entry(k, v).map_err(|e| codec_error(name, e)))
            .collect()
    }

    async fn read_raw(&mut self, name: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.stop_gracefully().await?;
        let config = &self.shared.config;
        let index = config
            .stores
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| crate::StateError::UnknownStore(name.to_string()))?;
        let path = crate::state::partition_dir(config, &self.topic(), 0).unwrap_or_default();
        let entries = {
            let db =
                crate::state::PartitionDb::open(&path, &config.stores, WAIT, &Default::default())?;
            db.prefix(index, b"")?
        };
        self.start().await?;
        Ok(entries)
    }

    /// Every entry of `store`, decoded, in key order of the encoded keys. Flushes first
    /// (see [`flush`](Self::flush)).
    ///
    /// # Errors
    /// Flush, RocksDB and codec errors.
    pub async fn read<K: Send + 'static, V: Send + 'static>(
        &mut self,
        store: &StoreDef<K, V>,
    ) -> Result<Vec<(K, V)>> {
        self.stop_gracefully().await?;
        let config = &self.shared.config;
        let index = config
            .stores
            .iter()
            .position(|s| s.name == store.name())
            .ok_or_else(|| crate::StateError::UnknownStore(store.name().to_string()))?;
        let path = crate::state::partition_dir(config, &self.topic(), 0).unwrap_or_default();
        let entries = {
            let db =
                crate::state::PartitionDb::open(&path, &config.stores, WAIT, &Default::default())?;
            db.prefix(index, b"")?
        };
        let decoded = entries
            .iter()
            .map(|(k, v)| {
                store.decode(k, v).map_err(|source| {
                    Error::from(crate::StateError::Codec {
                        store: store.name().to_string(),
                        source,
                    })
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.start().await?;
        Ok(decoded)
    }

    /// Moves the wall clock of wall-clock timers forward by `by`, and waits until the worker
    /// has looked for due timers (and fired them).
    ///
    /// # Errors
    /// What firing a timer returned.
    pub async fn advance_wall_clock(&mut self, by: Duration) -> Result<()> {
        self.shared
            .clock_offset_ms
            .fetch_add(by.as_millis() as i64, Ordering::Relaxed);
        let Some(running) = &self.running else {
            return Ok(());
        };
        let progress = running.progress.clone();
        let ticks = progress.wall_ticks.load(Ordering::Acquire);
        self.wait("the worker to look for due timers", || {
            progress.wall_ticks.load(Ordering::Acquire) >= ticks + 2
        })
        .await
    }

    /// Records late for every window they fall in, counted by the current worker.
    pub fn late(&self) -> u64 {
        self.running
            .as_ref()
            .map_or(0, |r| r.progress.late.load(Ordering::Relaxed))
    }

    /// Changelog records the last restore replayed.
    pub fn restored_records(&self) -> u64 {
        self.running
            .as_ref()
            .map_or(0, |r| r.progress.restored_records.load(Ordering::Relaxed))
    }

    /// Co-partitioned table records the current worker's bootstrap read.
    pub fn table_bootstrapped(&self) -> u64 {
        self.running
            .as_ref()
            .map_or(0, |r| r.progress.table_bootstrapped.load(Ordering::Relaxed))
    }

    /// Records skipped (bad input under `ErrorPolicy::Skip`, or already in restored state)
    /// by the current worker.
    pub fn skipped(&self) -> u64 {
        self.running
            .as_ref()
            .map_or(0, |r| r.progress.skipped.load(Ordering::Relaxed))
    }

    /// Dead letters sent so far (to the configured dead-letter topic).
    pub fn dead_letters(&self) -> Vec<CapturedRecord> {
        match &self.shared.config.error_policy {
            crate::ErrorPolicy::DeadLetter(topic) => self.sent_to(topic),
            _ => Vec::new(),
        }
    }

    /// Records sent so far to `topic` (output records, or dead letters), acknowledged.
    pub fn sent_to(&self, topic: &str) -> Vec<CapturedRecord> {
        self.capture
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|r| r.topic == topic)
            .map(|r| CapturedRecord {
                topic: r.topic.clone(),
                key: r.key.clone(),
                value: r.value.clone(),
                headers: r.headers.clone(),
            })
            .collect()
    }

    /// While `hold` is set, output records sent by handlers (not dead letters) are captured
    /// at once but acknowledged only when it is cleared: what a slow broker does to
    /// pipelined outputs. A crash meanwhile loses their acknowledgements.
    pub fn hold_acks(&self, hold: bool) {
        let mut held = self.capture.2.lock().unwrap_or_else(|p| p.into_inner());
        match (hold, held.take()) {
            (true, previous) => *held = Some(previous.unwrap_or_default()),
            (false, Some(acks)) => acks
                .into_iter()
                .for_each(crate::changelog::HeldAck::release),
            (false, None) => {}
        }
    }

    /// From now on, sends of output records and dead letters fail (`true`) or succeed again.
    pub fn fail_sends(&self, fail: bool) {
        self.capture.1.store(fail, Ordering::Release);
    }

    /// The in-memory changelogs (by store index, partition 0).
    pub fn changelog(&self) -> &MemoryLog {
        &self.log
    }
}

impl<KC: Codec, VC: Codec, H> Drop for TestDriver<KC, VC, H> {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.join.abort();
        }
    }
}

mod many;
mod tables;
#[cfg(test)]
mod tests;

pub use many::Progress;

fn codec_error(store: &str, source: crate::CodecError) -> Error {
    Error::from(crate::StateError::Codec {
        store: store.to_string(),
        source,
    })
}
