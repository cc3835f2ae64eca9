//! Tailing table topics while the consumer runs: one reader outside the consumer group, on
//! its own thread, for every table partition this process keeps.
//!
//! Records of a co-partitioned table partition go, in batches, to the worker of the input
//! partition that reads it (a [`FeedSink`]); the worker applies them aligned with its input
//! (see `align`). Records of a global table are applied here. A feed whose worker falls
//! behind is paused (bounded memory) and resumed once drained to half its budget.
//!
//! A worker that must know the table holds every update up to a time `t` (see
//! [`table_sync_wait`](crate::ConsumerConfigBuilder::table_sync_wait)) asks for it with
//! [`FeedState::want`]: this thread then reads the partition's end offset at a wall-clock
//! time `s ≥ t`, and once it has handed over everything before that offset it confirms `s`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, Notify};

use super::global::GlobalTables;
use crate::batch::RecordBatch;
use crate::config::ConsumerConfig;
use crate::error::Error;

/// Bytes a feed may hold for its worker before its partition is paused.
const FEED_BYTES: usize = 8 << 20;
/// How long one poll of the reader blocks.
const POLL: Duration = Duration::from_millis(20);
/// How often the partition counts of global tables' topics are looked up.
const METADATA_REFRESH: Duration = Duration::from_secs(2);
/// A confirmation waits at most this long for offsets that never arrive (transaction
/// markers and compacted records occupy offsets without being delivered).
const CONFIRM_STALL: Duration = Duration::from_secs(1);

/// Milliseconds since the epoch.
pub(crate) fn wall_ms() -> i64 {
    crate::timer::wall_now()
}

/// What a feed's worker and this thread share.
#[derive(Debug, Default)]
pub(crate) struct FeedState {
    /// Bytes sent to the worker and not applied yet.
    pub(crate) queued_bytes: AtomicUsize,
    /// Wall-clock time up to which the worker has been handed every record the topic held.
    pub(crate) confirmed_ms: AtomicI64,
    /// Wall-clock time the worker wants confirmed.
    wanted_ms: AtomicI64,
    /// Woken when a confirmation arrives.
    pub(crate) confirmed: Notify,
}

impl FeedState {
    /// Asks the reader to confirm `at`.
    pub(crate) fn want(&self, at: i64) {
        self.wanted_ms.fetch_max(at, Ordering::AcqRel);
    }
}

/// The reader's end of a feed.
#[derive(Debug)]
pub(crate) struct FeedSink {
    tx: mpsc::UnboundedSender<RecordBatch>,
    pub(crate) state: Arc<FeedState>,
}

/// The worker's end of a feed.
#[derive(Debug)]
pub(crate) struct FeedReceiver {
    pub(crate) rx: mpsc::UnboundedReceiver<RecordBatch>,
    pub(crate) state: Arc<FeedState>,
}

/// A new feed.
pub(crate) fn feed() -> (FeedSink, FeedReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = Arc::new(FeedState::default());
    (
        FeedSink {
            tx,
            state: state.clone(),
        },
        FeedReceiver { rx, state },
    )
}

impl FeedSink {
    /// Hands records to the worker (the test driver pipes table records this way).
    pub(crate) fn send(&self, batch: RecordBatch) -> bool {
        self.state
            .queued_bytes
            .fetch_add(batch.bytes, Ordering::AcqRel);
        self.tx.send(batch).is_ok()
    }

    /// Confirms that everything up to `at` was handed over.
    pub(crate) fn confirm(&self, at: i64) {
        self.state.confirmed_ms.fetch_max(at, Ordering::AcqRel);
        self.state.confirmed.notify_waiters();
    }
}

enum Command {
    /// Start handing records of `(topic, partition)` from offset `from` to `sink`.
    Add {
        topic: String,
        partition: i32,
        from: i64,
        sink: FeedSink,
    },
    /// Stop feeding `sink`s of `(topic, partition)` whose worker is gone.
    Prune { topic: String, partition: i32 },
}

/// The reader thread of a consumer's tables; stopped when dropped.
#[derive(Debug)]
pub(crate) struct TableFeeds {
    commands: Mutex<std_mpsc::Sender<Command>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TableFeeds {
    /// Starts the reader. Global tables' partitions are read from their checkpoints on.
    pub(crate) fn start(
        config: &ConsumerConfig,
        global: Arc<GlobalTables>,
        failures: mpsc::UnboundedSender<Error>,
    ) -> Result<Self, Error> {
        let consumer: BaseConsumer = config.table_consumer().create()?;
        let (tx, rx) = std_mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let mut reader = Reader {
            consumer,
            commands: rx,
            partitions: HashMap::new(),
            global,
            failures,
            last_metadata: Instant::now(),
        };
        reader.add_global()?;
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("kafka-stateful-tables".into())
            .spawn(move || reader.run(&flag))
            .map_err(|e| Error::Fatal {
                code: "Thread".into(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            commands: Mutex::new(tx),
            stop,
            thread: Some(thread),
        })
    }

    fn send(&self, command: Command) {
        let _ = self
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(command);
    }

    /// Feeds `sink` the records of `(topic, partition)` from `from` on.
    pub(crate) fn add(&self, topic: &str, partition: i32, from: i64, sink: FeedSink) {
        self.send(Command::Add {
            topic: topic.to_string(),
            partition,
            from,
            sink,
        });
    }

    /// A worker of `(topic, partition)` went away: drop its sink (and the partition, if no
    /// other sink reads it).
    pub(crate) fn prune(&self, topic: &str, partition: i32) {
        self.send(Command::Prune {
            topic: topic.to_string(),
            partition,
        });
    }
}

impl Drop for TableFeeds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One sink of a partition, with the offset it wants next.
struct Sink {
    sink: FeedSink,
    next: i64,
    filling: Option<RecordBatch>,
}

/// Who reads a partition's records.
enum Target {
    /// Workers of input partitions (one per input topic using the table).
    Workers(Vec<Sink>),
    /// A global table (by index), applied here in batches.
    Global {
        index: usize,
        filling: Option<RecordBatch>,
    },
}

struct Partition {
    target: Target,
    /// Next offset this reader hands over.
    position: i64,
    paused: bool,
    /// A confirmation under way: the end offset read at wall time `.1`, and when.
    confirming: Option<(i64, i64, Instant)>,
}

struct Reader {
    consumer: BaseConsumer,
    commands: std_mpsc::Receiver<Command>,
    partitions: HashMap<(String, i32), Partition>,
    global: Arc<GlobalTables>,
    failures: mpsc::UnboundedSender<Error>,
    last_metadata: Instant,
}

impl Reader {
    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            if let Err(error) = self.round() {
                tracing::error!(%error, "table reader failed");
                let _ = self.failures.send(error);
                return;
            }
        }
    }

    fn round(&mut self) -> Result<(), Error> {
        while let Ok(command) = self.commands.try_recv() {
            self.command(command)?;
        }
        let mut taken = 0;
        let mut timeout = POLL;
        while taken < 4096 {
            match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(msg)) => route(&mut self.partitions, &msg),
                Some(Err(error)) => {
                    if crate::changelog::is_transient(&error) {
                        tracing::warn!(%error, "table reader: fetch failed; retrying");
                        break;
                    }
                    return Err(error.into());
                }
            }
            taken += 1;
            timeout = Duration::ZERO;
        }
        self.hand_over()?;
        self.flow_control();
        self.confirm();
        if self.last_metadata.elapsed() >= METADATA_REFRESH {
            self.add_global()?;
            self.last_metadata = Instant::now();
        }
        Ok(())
    }

    fn command(&mut self, command: Command) -> Result<(), Error> {
        match command {
            Command::Add {
                topic,
                partition,
                from,
                sink,
            } => {
                let sink = Sink {
                    sink,
                    next: from,
                    filling: None,
                };
                match self.partitions.get_mut(&(topic.clone(), partition)) {
                    Some(Partition {
                        target: Target::Workers(sinks),
                        position,
                        ..
                    }) => {
                        sinks.retain(|s| !s.sink.tx.is_closed());
                        sinks.push(sink);
                        if from < *position {
                            // A sink behind the others: read the partition again from there;
                            // each sink takes only what it has not had.
                            *position = from;
                            self.reassign(&topic, partition, from)?;
                        }
                    }
                    Some(_) => {}
                    None => self.start(topic, partition, from, Target::Workers(vec![sink]))?,
                }
            }
            Command::Prune { topic, partition } => {
                let key = (topic, partition);
                if let Some(Partition {
                    target: Target::Workers(sinks),
                    ..
                }) = self.partitions.get_mut(&key)
                {
                    sinks.retain(|s| !s.sink.tx.is_closed());
                    if sinks.is_empty() {
                        self.partitions.remove(&key);
                        let mut tpl = TopicPartitionList::new();
                        tpl.add_partition(&key.0, key.1);
                        self.consumer.incremental_unassign(&tpl)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn start(
        &mut self,
        topic: String,
        partition: i32,
        from: i64,
        target: Target,
    ) -> Result<(), Error> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition, Offset::Offset(from))?;
        self.consumer.incremental_assign(&tpl)?;
        self.partitions.insert(
            (topic, partition),
            Partition {
                target,
                position: from,
                paused: false,
                confirming: None,
            },
        );
        Ok(())
    }

    fn reassign(&self, topic: &str, partition: i32, from: i64) -> Result<(), Error> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        self.consumer.incremental_unassign(&tpl)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
        self.consumer.incremental_assign(&tpl)?;
        Ok(())
    }

    /// Starts reading partitions of global tables not read yet (new ones from offset 0).
    fn add_global(&mut self) -> Result<(), Error> {
        let consumer = &self.consumer;
        let partitions_of = |topic: &str| super::global::partition_count(consumer, topic);
        for (index, topic, partition, from) in
            self.global.unread(&partitions_of, &self.partitions_of())?
        {
            let target = Target::Global {
                index,
                filling: None,
            };
            self.start(topic, partition, from, target)?;
        }
        Ok(())
    }

    fn partitions_of(&self) -> Vec<(String, i32)> {
        self.partitions.keys().cloned().collect()
    }

    /// Sends the batches collected this round.
    fn hand_over(&mut self) -> Result<(), Error> {
        for ((_, partition), p) in &mut self.partitions {
            match &mut p.target {
                Target::Workers(sinks) => {
                    for s in sinks.iter_mut() {
                        if let Some(batch) = s.filling.take() {
                            s.sink.send(batch);
                        }
                    }
                }
                Target::Global { index, filling } => {
                    if let Some(batch) = filling.take() {
                        self.global.apply(*index, *partition, &batch)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Pauses partitions whose workers hold more than their budget; resumes them at half.
    fn flow_control(&mut self) {
        let (mut pause, mut resume) = (TopicPartitionList::new(), TopicPartitionList::new());
        for ((topic, partition), p) in &mut self.partitions {
            let Target::Workers(sinks) = &p.target else {
                continue;
            };
            let most = sinks
                .iter()
                .map(|s| s.sink.state.queued_bytes.load(Ordering::Acquire))
                .max()
                .unwrap_or(0);
            if !p.paused && most > FEED_BYTES {
                p.paused = true;
                pause.add_partition(topic, *partition);
            } else if p.paused && most * 2 <= FEED_BYTES {
                p.paused = false;
                resume.add_partition(topic, *partition);
            }
        }
        if pause.count() > 0 {
            let _ = self.consumer.pause(&pause);
        }
        if resume.count() > 0 {
            let _ = self.consumer.resume(&resume);
        }
    }

    /// Answers workers waiting for a confirmation (see the module docs).
    fn confirm(&mut self) {
        for ((topic, partition), p) in &mut self.partitions {
            let Target::Workers(sinks) = &p.target else {
                continue;
            };
            let wanted = sinks
                .iter()
                .filter(|s| {
                    s.sink.state.wanted_ms.load(Ordering::Acquire)
                        > s.sink.state.confirmed_ms.load(Ordering::Acquire)
                })
                .count();
            if wanted == 0 {
                continue;
            }
            let (end, at, since) = match p.confirming {
                Some(confirming) => confirming,
                None => {
                    let at = wall_ms();
                    match self
                        .consumer
                        .fetch_watermarks(topic, *partition, Duration::from_secs(5))
                    {
                        Ok((_, high)) => {
                            p.confirming = Some((high, at, Instant::now()));
                            (high, at, Instant::now())
                        }
                        Err(error) => {
                            tracing::warn!(%topic, partition, %error, "table reader: end offset unknown");
                            continue;
                        }
                    }
                }
            };
            // Offsets that are never delivered (transaction markers) must not hold a
            // confirmation forever; a paused partition is not stalled, just behind.
            let stalled = !p.paused && since.elapsed() >= CONFIRM_STALL;
            if p.position >= end || stalled {
                p.confirming = None;
                for s in sinks.iter() {
                    s.sink.confirm(at);
                }
            }
        }
    }
}

/// Adds a fetched record to the batches of its partition's readers.
fn route(
    partitions: &mut HashMap<(String, i32), Partition>,
    msg: &rdkafka::message::BorrowedMessage<'_>,
) {
    let key = (msg.topic().to_string(), msg.partition());
    let Some(p) = partitions.get_mut(&key) else {
        return; // pruned meanwhile
    };
    let offset = msg.offset();
    p.position = p.position.max(offset + 1);
    match &mut p.target {
        Target::Workers(sinks) => {
            for s in sinks.iter_mut().filter(|s| offset >= s.next) {
                s.filling.get_or_insert_with(RecordBatch::default).push(msg);
                s.next = offset + 1;
            }
        }
        Target::Global { filling, .. } => {
            filling.get_or_insert_with(RecordBatch::default).push(msg);
        }
    }
}
