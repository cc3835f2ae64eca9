//! Exactly-once: one Kafka transaction per member and commit interval (exactly-once v2,
//! KIP-447), holding every partition's changelog records, output records, dead letters and
//! consumed offsets.
//!
//! # How the partitions' flushes meet
//!
//! Each partition worker flushes on its own, as under at-least-once. Under exactly-once a
//! flush is a *unit*: it enters the open transaction ([`Transactions::enter`], a shared
//! read lock on a gate), produces its output records and its changelog records, registers
//! the offset its records reach, and leaves. One coordinator thread (rdkafka's
//! transactional calls block) commits every interval: it takes the gate exclusively — no
//! unit is half-produced then — sends the registered offsets with the consumer's group
//! metadata (`send_offsets_to_transaction`, so the broker refuses the offsets of a member
//! of an old generation), commits, and begins the next transaction. A unit waits for the
//! commit of its transaction ([`Transactions::committed`]) before its flush writes RocksDB:
//! local state never holds what an abort could take back, and a restore (reading
//! `read_committed`) never sees an aborted flush.
//!
//! A unit's outputs, changelog records and offsets are therefore always in the same
//! transaction, so a crash after any commit leaves the offsets where the outputs and the
//! state are: the records after them are handled again, their outputs were aborted.
//!
//! # Failures
//!
//! A unit dropped before it finished (its worker was aborted: a lost partition, a fatal
//! error), a lost partition ([`Transactions::poison`]) or a commit that fails makes the
//! coordinator abort the open transaction. The consumer then ends with
//! `Error::Transaction`: every partition's flushes of that transaction are gone, and the next
//! start resumes from the committed transaction, restoring state from RocksDB and the
//! changelogs (exactly what the crash tests do). Rewinding the live consumer to the committed
//! offsets instead (Kafka Streams' "task migrated") is left for later.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{watch, OwnedRwLockReadGuard, RwLock};

use super::writer::{refs_of, ChangelogWriter, OutRecord, Pending};
use super::ChangelogError;

mod sink;
use crate::offset::{PartitionProgress, TransactionCounts};
pub(crate) use sink::{aborted, TransactionalSink};

/// How long one transactional call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A commit that fails with a retriable error is tried this many times in all.
const COMMIT_ATTEMPTS: u32 = 5;

/// Why the transactions of this member stopped: the open one was aborted.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct TxnFailed(pub(crate) Arc<str>);

/// A failed transactional call.
#[derive(Debug)]
pub(crate) struct TxnError {
    pub(crate) message: String,
    /// The same call may succeed when repeated.
    pub(crate) retriable: bool,
}

impl From<KafkaError> for TxnError {
    fn from(error: KafkaError) -> Self {
        let retriable = match &error {
            KafkaError::Transaction(e) => e.is_retriable(),
            _ => false,
        };
        Self {
            message: error.to_string(),
            retriable,
        }
    }
}

/// The blocking transactional calls: the producer's, or a fake in unit tests.
pub(crate) trait TxnClient: Send + Sync + 'static {
    fn begin(&self) -> Result<(), TxnError>;
    /// Adds the consumed offsets (topic, partition, next offset) to the open transaction
    /// with the group's current metadata.
    fn send_offsets(&self, offsets: &[(String, i32, i64)]) -> Result<(), TxnError>;
    fn commit(&self) -> Result<(), TxnError>;
    fn abort(&self) -> Result<(), TxnError>;
}

/// The transactional producer, and the group metadata the poll loop keeps current.
pub(crate) struct KafkaTxnClient {
    writer: ChangelogWriter,
    group: Mutex<Option<ConsumerGroupMetadata>>,
}

impl KafkaTxnClient {
    /// Registers the producer's transactional id with the broker (fencing an earlier
    /// producer with the same id: its open transaction is aborted). Blocking.
    pub(crate) fn init(writer: ChangelogWriter) -> Result<Self, TxnError> {
        writer.producer().init_transactions(CALL_TIMEOUT)?;
        Ok(Self {
            writer,
            group: Mutex::new(None),
        })
    }
}

impl TxnClient for KafkaTxnClient {
    fn begin(&self) -> Result<(), TxnError> {
        Ok(self.writer.producer().begin_transaction()?)
    }

    fn send_offsets(&self, offsets: &[(String, i32, i64)]) -> Result<(), TxnError> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, next) in offsets {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))
                .map_err(TxnError::from)?;
        }
        let group = self.group.lock().unwrap_or_else(|p| p.into_inner());
        let Some(group) = group.as_ref() else {
            return Err(TxnError {
                message: "offsets to commit before the consumer joined its group".into(),
                retriable: false,
            });
        };
        Ok(self
            .writer
            .producer()
            .send_offsets_to_transaction(&tpl, group, CALL_TIMEOUT)?)
    }

    fn commit(&self) -> Result<(), TxnError> {
        Ok(self.writer.producer().commit_transaction(CALL_TIMEOUT)?)
    }

    fn abort(&self) -> Result<(), TxnError> {
        Ok(self.writer.producer().abort_transaction(CALL_TIMEOUT)?)
    }
}

/// What the open transaction holds so far.
#[derive(Default)]
struct Open {
    /// The open transaction's number (from 1).
    seq: u64,
    /// Per partition, the offset its units reached, and its progress.
    offsets: BTreeMap<(String, i32), (i64, Arc<PartitionProgress>)>,
    /// A unit entered since the last commit.
    entered: bool,
    poisoned: Option<String>,
    urgent: bool,
    stopping: bool,
}

/// The latest commit, or why transactions stopped.
#[derive(Debug, Clone, Default)]
struct Outcome {
    committed: u64,
    failed: Option<TxnFailed>,
}

/// The member's transactions: the gate units enter, and the coordinator that commits them.
pub(crate) struct Transactions {
    client: Arc<dyn TxnClient>,
    /// The Kafka client: group metadata goes to it, and its producer produces a unit's
    /// records (`None` only in unit tests, whose units produce nothing).
    kafka: Option<Arc<KafkaTxnClient>>,
    gate: Arc<RwLock<()>>,
    open: Mutex<Open>,
    wake: Condvar,
    outcome: watch::Sender<Outcome>,
    interval: Duration,
    /// A coordinator that did not run for longer than this (the process was frozen, or
    /// starved) must assume its member was evicted: the session timeout.
    unresponsive_after: Duration,
    counts: Arc<TransactionCounts>,
}

impl std::fmt::Debug for Transactions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transactions")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Transactions {
    /// Transactions through `client`, committed every `interval`.
    pub(crate) fn new(client: Arc<dyn TxnClient>, interval: Duration) -> Self {
        Self {
            client,
            kafka: None,
            gate: Arc::default(),
            open: Mutex::new(Open {
                seq: 1,
                ..Open::default()
            }),
            wake: Condvar::new(),
            outcome: watch::Sender::new(Outcome::default()),
            interval,
            unresponsive_after: Duration::MAX,
            counts: Arc::default(),
        }
    }

    /// Transactions of the Kafka producer `client`, counted in `counts`, of a member with
    /// this session timeout.
    pub(crate) fn kafka(
        client: KafkaTxnClient,
        interval: Duration,
        counts: Arc<TransactionCounts>,
        session_timeout: Duration,
    ) -> Self {
        let client = Arc::new(client);
        Self {
            kafka: Some(client.clone()),
            counts,
            ..Self::new(client, interval).unresponsive_after(session_timeout)
        }
    }

    /// Aborts instead of committing after the coordinator did not run for longer than
    /// `limit` (see [`run`](Self::run)).
    pub(crate) fn unresponsive_after(mut self, limit: Duration) -> Self {
        self.unresponsive_after = limit;
        self
    }

    /// The consumer's current group metadata (the poll loop sets it after every poll, so a
    /// commit carries the generation the member is in).
    pub(crate) fn set_group_metadata(&self, metadata: ConsumerGroupMetadata) {
        if let Some(kafka) = &self.kafka {
            *kafka.group.lock().unwrap_or_else(|p| p.into_inner()) = Some(metadata);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enters the open transaction: what the unit produces and registers is committed or
    /// aborted together. Waits while a commit is under way.
    ///
    /// # Errors
    /// Transactions stopped (an abort).
    pub(crate) async fn enter(self: &Arc<Self>) -> Result<Unit, TxnFailed> {
        let guard = self.gate.clone().read_owned().await;
        if let Some(failed) = self.outcome.borrow().failed.clone() {
            return Err(failed);
        }
        let mut open = self.lock();
        open.entered = true;
        Ok(Unit {
            txn: self.clone(),
            seq: open.seq,
            finished: false,
            _guard: guard,
        })
    }

    /// [`enter`](Self::enter) from a blocking thread.
    pub(crate) fn enter_blocking(self: &Arc<Self>) -> Result<Unit, TxnFailed> {
        futures::executor::block_on(self.enter())
    }

    /// Waits until transaction `seq` committed.
    ///
    /// # Errors
    /// It was aborted.
    pub(crate) async fn committed(&self, seq: u64) -> Result<(), TxnFailed> {
        let mut outcome = self.outcome.subscribe();
        loop {
            {
                let now = outcome.borrow_and_update();
                if now.committed >= seq {
                    return Ok(());
                }
                if let Some(failed) = &now.failed {
                    return Err(failed.clone());
                }
            }
            if outcome.changed().await.is_err() {
                return Err(TxnFailed("transactions closed".into()));
            }
        }
    }

    /// Commits as soon as possible rather than at the end of the interval (a revoke or a
    /// shutdown waits for it).
    pub(crate) fn commit_soon(&self) {
        self.lock().urgent = true;
        self.wake.notify_all();
    }

    /// The open transaction must not commit: it is aborted, and transactions stop.
    pub(crate) fn poison(&self, why: String) {
        self.lock().poisoned.get_or_insert(why);
        self.wake.notify_all();
    }

    /// Transactions committed and aborted so far.
    #[cfg(test)]
    fn counts(&self) -> (u64, u64) {
        (
            self.counts.committed.load(Ordering::Relaxed),
            self.counts.aborted.load(Ordering::Relaxed),
        )
    }

    /// Starts the coordinator thread; `on_failure` hears why transactions stopped.
    ///
    /// # Errors
    /// The thread could not be started.
    pub(crate) fn start(
        self: &Arc<Self>,
        on_failure: impl Fn(TxnFailed) + Send + 'static,
    ) -> std::io::Result<Coordinator> {
        let txn = self.clone();
        let thread = std::thread::Builder::new()
            .name("kafka-stateful-txn".into())
            .spawn(move || txn.run(&on_failure))?;
        Ok(Coordinator {
            txn: self.clone(),
            thread: Some(thread),
        })
    }

    fn run(&self, on_failure: &dyn Fn(TxnFailed)) {
        if let Err(error) = self.client.begin() {
            return self.fail(format!("begin transaction: {}", error.message), on_failure);
        }
        let mut last = Instant::now();
        let mut turn_ended = Instant::now();
        loop {
            self.wait_for_turn(last);
            last = Instant::now();
            // A turn comes at least every interval. A much longer silence means the process
            // was frozen (SIGSTOP, a VM pause) or starved past the session timeout: the group
            // has evicted this member and another may own its partitions, while librdkafka
            // has not noticed yet. Committing now would publish a zombie's work (a broker
            // that checks the generation refuses its offsets; one that does not, and whose
            // transaction did not time out, would not), so it is aborted instead.
            // (Measured between turns only: inside one, a long wait for the gate is units
            // producing, not a freeze. A freeze that lands inside a turn is left to the
            // broker: the generation check and the transaction timeout.)
            let silent = last.saturating_duration_since(turn_ended);
            if silent > self.unresponsive_after {
                return self.abort(
                    format!(
                        "this member did not run for {silent:?}, longer than its session \
                         timeout ({:?}): its partitions may belong to another member by now",
                        self.unresponsive_after
                    ),
                    on_failure,
                );
            }
            let _exclusive = futures::executor::block_on(self.gate.clone().write_owned());
            let (seq, offsets, entered, poisoned, stopping) = {
                let mut open = self.lock();
                (
                    open.seq,
                    std::mem::take(&mut open.offsets),
                    std::mem::take(&mut open.entered),
                    open.poisoned.clone(),
                    open.stopping,
                )
            };
            if let Some(why) = poisoned {
                return self.abort(why, on_failure);
            }
            if entered || !offsets.is_empty() {
                let committing = Instant::now();
                if let Err(error) = self.commit(&offsets) {
                    return self.abort(error, on_failure);
                }
                for (next, progress) in offsets.values() {
                    progress.commit_succeeded(*next);
                }
                self.counts.committed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("kafka_stateful_transactions_total", "outcome" => "committed")
                    .increment(1);
                self.lock().seq = seq + 1;
                // The next transaction is open before a waiter hears of this one's commit.
                let begun = self.client.begin();
                self.outcome.send_modify(|o| o.committed = seq);
                if let Err(error) = begun {
                    return self.fail(format!("begin transaction: {}", error.message), on_failure);
                }
                tracing::debug!(
                    seq,
                    partitions = offsets.len(),
                    elapsed = ?committing.elapsed(),
                    "transaction committed"
                );
            }
            turn_ended = Instant::now();
            if stopping {
                // A unit entering from now on would wait for a commit that never comes.
                self.outcome.send_modify(|o| {
                    o.failed
                        .get_or_insert(TxnFailed("the consumer closed".into()));
                });
                return;
            }
        }
    }

    /// Sleeps until the interval passed since `last`, or a commit is wanted sooner.
    fn wait_for_turn(&self, last: Instant) {
        let mut open = self.lock();
        loop {
            let left = self.interval.saturating_sub(last.elapsed());
            if open.stopping || open.urgent || open.poisoned.is_some() || left.is_zero() {
                open.urgent = false;
                return;
            }
            open = self
                .wake
                .wait_timeout(open, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn commit(
        &self,
        offsets: &BTreeMap<(String, i32), (i64, Arc<PartitionProgress>)>,
    ) -> Result<(), String> {
        let offsets: Vec<(String, i32, i64)> = offsets
            .iter()
            .map(|((topic, partition), (next, _))| (topic.clone(), *partition, *next))
            .collect();
        if !offsets.is_empty() {
            self.client.send_offsets(&offsets).map_err(|e| {
                format!(
                    "sending offsets {offsets:?} to the transaction: {}",
                    e.message
                )
            })?;
        }
        let mut attempt = 1;
        loop {
            match self.client.commit() {
                Ok(()) => return Ok(()),
                Err(error) if error.retriable && attempt < COMMIT_ATTEMPTS => {
                    tracing::warn!(error = %error.message, attempt, "transaction commit failed; retrying");
                    attempt += 1;
                }
                Err(error) => return Err(format!("committing the transaction: {}", error.message)),
            }
        }
    }

    fn abort(&self, why: String, on_failure: &dyn Fn(TxnFailed)) {
        tracing::error!(reason = %why, "aborting the open transaction");
        if let Err(error) = self.client.abort() {
            tracing::warn!(error = %error.message, "the transaction could not be aborted; the broker aborts it after transaction.timeout.ms");
        }
        self.counts.aborted.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("kafka_stateful_transactions_total", "outcome" => "aborted").increment(1);
        self.fail(why, on_failure);
    }

    fn fail(&self, why: String, on_failure: &dyn Fn(TxnFailed)) {
        let failed = TxnFailed(why.into());
        // The consumer hears it before any waiter does.
        on_failure(failed.clone());
        self.outcome.send_modify(|o| o.failed = Some(failed));
    }
}

/// A unit of the open transaction (see the module docs). Dropped without
/// [`finish`](Self::finish), it aborts the transaction.
pub(crate) struct Unit {
    txn: Arc<Transactions>,
    seq: u64,
    finished: bool,
    _guard: OwnedRwLockReadGuard<()>,
}

impl std::fmt::Debug for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unit").field("seq", &self.seq).finish()
    }
}

impl Unit {
    /// Produces `records` in the transaction; their acknowledgements through the result.
    ///
    /// # Errors
    /// A record the producer refused at once.
    pub(crate) async fn send(&self, records: Vec<OutRecord>) -> Result<Pending, ChangelogError> {
        let Some(kafka) = &self.txn.kafka else {
            return Ok(Pending::acknowledged());
        };
        kafka.writer.enqueue(refs_of(&records)).await
    }

    /// The records of `topic`/`partition` before `next` are done once this transaction
    /// commits: its offset is committed with it.
    pub(crate) fn register(
        &self,
        topic: &str,
        partition: i32,
        next: i64,
        progress: Arc<PartitionProgress>,
    ) {
        let mut open = self.txn.lock();
        let entry = open
            .offsets
            .entry((topic.to_string(), partition))
            .or_insert((next, progress));
        entry.0 = entry.0.max(next);
    }

    /// Leaves the transaction; returns its number, for [`Transactions::committed`].
    pub(crate) fn finish(mut self) -> u64 {
        self.finished = true;
        self.seq
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        if !self.finished {
            self.txn
                .poison("a flush was cut off inside its transaction".into());
        }
    }
}

/// The coordinator thread; [`stop`](Self::stop) commits what is registered and ends it.
pub(crate) struct Coordinator {
    txn: Arc<Transactions>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator").finish_non_exhaustive()
    }
}

impl Coordinator {
    /// Commits what the open transaction holds, then stops. Blocking.
    pub(crate) fn stop(mut self) {
        self.txn.lock().stopping = true;
        self.txn.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.txn.lock().stopping = true;
        self.txn.wake.notify_all();
    }
}

#[cfg(test)]
mod tests;
