//! Shared helpers of the integration tests: broker address, unique names, producing,
//! reading committed offsets, and waiting on conditions with deadlines.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_stateful::codec::{Bincode, Utf8};
use kafka_stateful::{Handler, HandlerError, PartitionContext, Record, StoreDef};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// `true` when a broker answers. Without one, tests skip with a printed reason — unless
/// `REQUIRE_KAFKA=1` (CI), where a missing broker fails the test.
pub fn broker_available() -> bool {
    let addr = bootstrap();
    let up = addr
        .parse::<std::net::SocketAddr>()
        .ok()
        .and_then(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok())
        .is_some();
    if !up {
        if std::env::var("REQUIRE_KAFKA").is_ok_and(|v| v == "1") {
            panic!("REQUIRE_KAFKA=1 but no broker answers at {addr}; run scripts/broker.sh");
        }
        eprintln!(
            "skipping: no Kafka broker at {addr} (run scripts/broker.sh, or set KAFKA_BOOTSTRAP)"
        );
    }
    up
}

macro_rules! require_broker {
    () => {
        if !common::broker_available() {
            return;
        }
    };
}
pub(crate) use require_broker;

pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap()
}

pub async fn create_topic(topic: &str, partitions: i32) {
    create_topic_at(&bootstrap(), topic, partitions).await
}

pub async fn create_topic_at(bootstrap: &str, topic: &str, partitions: i32) {
    let admin = admin(bootstrap);
    let res = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    for r in res {
        r.unwrap();
    }
    let t = topic.to_string();
    let b = bootstrap.to_string();
    wait_until("topic visible", Duration::from_secs(20), move || {
        partition_count_at(&b, &t) == Some(partitions as usize)
    })
    .await;
}

/// A topic's configuration as the broker describes it (name → value).
pub async fn topic_config(topic: &str) -> HashMap<String, String> {
    let described = admin(&bootstrap())
        .describe_configs(
            [&rdkafka::admin::ResourceSpecifier::Topic(topic)],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let resource = described.into_iter().next().unwrap().unwrap();
    resource
        .entries
        .into_iter()
        .filter_map(|e| Some((e.name, e.value?)))
        .collect()
}

pub async fn delete_topic(topic: &str) {
    let admin = admin(&bootstrap());
    for r in admin
        .delete_topics(&[topic], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
    let t = topic.to_string();
    wait_until("topic deleted", Duration::from_secs(20), move || {
        partition_count_at(&bootstrap(), &t).is_none()
    })
    .await;
}

pub fn partition_count_at(bootstrap: &str, topic: &str) -> Option<usize> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .ok()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(5)).ok()?;
    md.topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len())
}

pub fn producer_at(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// Produces `(partition, key, value)` records and waits for every ack.
pub async fn produce(topic: &str, records: &[(i32, String, String)]) {
    produce_at(&bootstrap(), topic, records).await
}

pub async fn produce_at(bootstrap: &str, topic: &str, records: &[(i32, String, String)]) {
    produce_with(&producer_at(bootstrap), topic, records).await
}

/// Produces with a producer configured by the caller and waits for every ack.
pub async fn produce_with(
    producer: &FutureProducer,
    topic: &str,
    records: &[(i32, String, String)],
) {
    let futures: Vec<_> = records
        .iter()
        .map(|(p, k, v)| {
            producer
                .send_result(FutureRecord::to(topic).partition(*p).key(k).payload(v))
                .unwrap()
        })
        .collect();
    for f in futures {
        f.await.unwrap().unwrap();
    }
}

/// `count` records spread round-robin over `partitions` partitions and `keys` keys.
pub fn records(partitions: i32, keys: usize, count: usize) -> Vec<(i32, String, String)> {
    (0..count)
        .map(|i| {
            (
                (i as i32) % partitions,
                format!("key-{}", i % keys),
                format!("value-{i}"),
            )
        })
        .collect()
}

pub fn end_offsets(topic: &str, partitions: i32) -> Vec<i64> {
    end_offsets_at(&bootstrap(), topic, partitions)
}

pub fn end_offsets_at(bootstrap: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect()
}

/// What the broker says of `group`: its state and members (client and host of each), for
/// a test's failure message.
pub fn describe_group(group: &str) -> String {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    match c.fetch_group_list(Some(group), Duration::from_secs(10)) {
        Ok(list) => list
            .groups()
            .iter()
            .map(|g| {
                let members: Vec<String> = g
                    .members()
                    .iter()
                    .map(|m| format!("{} ({}, {})", m.id(), m.client_id(), m.client_host()))
                    .collect();
                format!(
                    "group {} is {:?} with members {members:?}",
                    g.name(),
                    g.state()
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(error) => format!("group {group} could not be described: {error}"),
    }
}

/// Committed offsets of `group` (-1 where nothing is committed).
pub fn committed(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    committed_at(&bootstrap(), group, topic, partitions)
}

pub fn committed_at(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    committed_with(bootstrap, group, topic, partitions, "read_committed")
}

/// Committed offsets as a client with `isolation` (`read_committed`: librdkafka asks for
/// stable offsets only; `read_uncommitted` also sees those of an open transaction).
pub fn committed_with(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
    isolation: &str,
) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

/// Polls `cond` every 50 ms until it holds; panics naming `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    wait_until_or(what, timeout, cond, String::new).await;
}

/// [`wait_until`], the panic also saying what `explain` finds then (the state that did not
/// reach the condition).
pub async fn wait_until_or(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
    explain: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for: {what}\n{}",
                explain()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every handled record: `(partition, offset)`, in handling order.
pub type Seen = Arc<Mutex<Vec<(i32, i64)>>>;

/// Records every record it handles; fails on `fail_at` offsets, panics on `panic_at`.
#[derive(Clone, Default)]
pub struct Recorder {
    pub seen: Seen,
    pub fail_at: Option<(i32, i64)>,
    pub panic_at: Option<(i32, i64)>,
    pub delay: Option<(i32, Duration)>,
    /// While set, every record takes `SLOW` to handle.
    pub slow: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Topics of the records handled.
    pub topics: Arc<Mutex<std::collections::BTreeSet<String>>>,
    /// When set, each record's offset is written to this store under its key.
    pub store: Option<StoreDef<String, u64>>,
    /// Attempts per `(partition, offset)`, failed ones included.
    pub attempts: Arc<Mutex<HashMap<(i32, i64), u32>>>,
}

pub const SLOW: Duration = Duration::from_millis(30);

impl Handler<String, String> for Recorder {
    async fn handle(
        &self,
        r: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        *self
            .attempts
            .lock()
            .unwrap()
            .entry((r.partition, r.offset))
            .or_default() += 1;
        if self.fail_at == Some((r.partition, r.offset)) {
            return Err(format!("poison record at {}", r.offset).into());
        }
        if self.panic_at == Some((r.partition, r.offset)) {
            panic!("handler bug at offset {}", r.offset);
        }
        if let Some((p, d)) = self.delay {
            if p == r.partition {
                tokio::time::sleep(d).await;
            }
        }
        if self
            .slow
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
        {
            tokio::time::sleep(SLOW).await;
        }
        if let Some(def) = &self.store {
            let key = r.key.clone().unwrap_or_default();
            ctx.store(def)?.put(&key, &(r.offset as u64))?;
        }
        self.topics.lock().unwrap().insert(r.topic.to_string());
        self.seen.lock().unwrap().push((r.partition, r.offset));
        Ok(())
    }
}

/// The last `n` lines of the file at `path` (a probe or a log), for failure messages.
pub fn tail_lines(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn counts_store() -> StoreDef<String, u64> {
    StoreDef::new("counts", Utf8, Bincode::new())
}

/// Counts records per key in the `counts` store, and mirrors the last value it wrote per key
/// (what the store held after the record) so tests can compare with what was produced.
#[derive(Clone)]
pub struct Counter {
    pub store: StoreDef<String, u64>,
    pub last: Arc<Mutex<HashMap<String, u64>>>,
    pub handled: Arc<std::sync::atomic::AtomicU64>,
    pub delay: Option<Duration>,
}

impl Default for Counter {
    fn default() -> Self {
        Self {
            store: counts_store(),
            last: Arc::default(),
            handled: Arc::default(),
            delay: None,
        }
    }
}

impl Handler<String, String> for Counter {
    async fn handle(
        &self,
        r: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let key = r.key.ok_or("record without key")?;
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        let mut store = ctx.store(&self.store)?;
        let n = store.get(&key)?.unwrap_or(0) + 1;
        store.put(&key, &n)?;
        self.last.lock().unwrap().insert(key, n);
        self.handled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// How many records were produced per key.
pub fn expected_counts(records: &[(i32, String, String)]) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for (_, k, _) in records {
        *m.entry(k.clone()).or_insert(0) += 1;
    }
    m
}

/// A consumer running on its own task, stopped through a oneshot.
pub struct Running {
    pub stats: kafka_stateful::Stats,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub join: tokio::task::JoinHandle<kafka_stateful::Result<()>>,
}

impl Running {
    pub fn start<H: Handler<String, String>>(
        consumer: kafka_stateful::StatefulConsumer<Utf8, Utf8, H>,
    ) -> Self {
        let stats = consumer.stats();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let join = tokio::spawn(consumer.run(async move {
            let _ = rx.await;
        }));
        Self {
            stats,
            stop: Some(tx),
            join,
        }
    }

    /// Graceful shutdown; returns what `run` returned.
    pub async fn stop(mut self) -> kafka_stateful::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(90), self.join)
            .await
            .expect("shutdown timed out")
            .expect("run panicked")
    }

    pub fn assigned(&self) -> Vec<i32> {
        let s = self.stats.snapshot();
        s.partitions.keys().map(|(_, p)| *p).collect()
    }
}

/// The nisshi binary for tests that run their own broker: `$NISSHI_BIN`, else the one
/// `scripts/broker.sh` caches, else `nisshi` on the PATH. `None` skips such a test with a
/// printed reason — unless `REQUIRE_KAFKA=1`, where it fails.
pub fn nisshi_binary() -> Option<std::path::PathBuf> {
    let cache = std::env::var_os("KAFKA_STATEFUL_CACHE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| std::path::PathBuf::from(h).join(".cache/kafka-stateful"))
        });
    let found = std::env::var_os("NISSHI_BIN")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(cache.map(|c| c.join("nisshi-0.8.1/bin/nisshi")))
        .chain(std::env::var_os("PATH").into_iter().flat_map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nisshi"))
                .collect::<Vec<_>>()
        }))
        .find(|p| p.is_file());
    if found.is_none() {
        let why = "no nisshi binary (set NISSHI_BIN, or run scripts/broker.sh --install-nisshi)";
        if std::env::var("REQUIRE_KAFKA").is_ok_and(|v| v == "1") {
            panic!("REQUIRE_KAFKA=1 but {why}");
        }
        eprintln!("skipping: {why}");
    }
    found
}

/// A nisshi broker owned by one test, on its own port, storing everything in SQLite inside
/// a temporary directory, so that it can be stopped and started again on the same data.
pub struct DurableBroker {
    binary: std::path::PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<std::process::Child>,
    /// More `nisshi broker` arguments (TLS, authentication), from the next `resume` on.
    pub args: Vec<String>,
}

impl DurableBroker {
    pub async fn start(binary: std::path::PathBuf) -> Self {
        Self::start_with(binary, Vec::new()).await
    }

    /// A broker started with more `nisshi broker` arguments.
    pub async fn start_with(binary: std::path::PathBuf, args: Vec<String>) -> Self {
        // Ask the OS for a free port; the tiny window before nisshi binds it is acceptable.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut broker = Self {
            binary,
            dir: tempfile::tempdir().unwrap(),
            port,
            child: None,
            args,
        };
        broker.resume().await;
        broker
    }

    /// Runs `nisshi` with `args` (a subcommand such as `user create`) and checks it succeeded.
    pub fn command(&self, args: &[&str]) {
        let out = std::process::Command::new(&self.binary)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run nisshi");
        assert!(
            out.status.success(),
            "nisshi {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn listening(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    /// Starts the broker process on the existing data and waits until it accepts connections.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let url = format!("tcp://{}", self.bootstrap());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nisshi.log"))
            .unwrap();
        let child = std::process::Command::new(&self.binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://nisshi.db"])
            .args(["--group-initial-rebalance-delay", "0s"])
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start nisshi");
        self.child = Some(child);
        let log_path = self.dir.path().join("nisshi.log");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.listening() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "nisshi exited with {status}: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nisshi did not listen within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the broker process (SIGKILL: nothing is shut down cleanly) and waits until the
    /// port no longer accepts connections.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("broker not running");
        child.kill().unwrap();
        child.wait().unwrap();
        wait_until("broker port closed", Duration::from_secs(10), || {
            !self.listening()
        })
        .await;
    }
}

impl Drop for DurableBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A record read back from a topic: key, value and headers.
pub type ReadRecord = (Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Vec<u8>)>);

/// Every record of `topic` (all partitions) from the beginning to its current end.
pub fn read_all(topic: &str, partitions: i32) -> Vec<ReadRecord> {
    read_all_with(topic, partitions, to_read_record)
}

/// Key, value and headers of a message.
pub fn to_read_record(m: &rdkafka::message::BorrowedMessage<'_>) -> ReadRecord {
    use rdkafka::message::{Headers, Message};
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    (
        m.key().map(<[u8]>::to_vec),
        m.payload().map(<[u8]>::to_vec),
        headers,
    )
}

/// [`read_all`], keeping what `f` takes from each message.
pub fn read_all_with<T>(
    topic: &str,
    partitions: i32,
    mut f: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> T,
) -> Vec<T> {
    use rdkafka::message::Message;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let ends = end_offsets(topic, partitions);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut next = vec![0i64; partitions as usize];
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (0..partitions as usize).any(|p| next[p] < ends[p]) {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            next[m.partition() as usize] = m.offset() + 1;
            out.push(f(&m));
        }
    }
    out
}

/// Every record of `topic` that a `read_committed` reader sees, from the beginning to each
/// partition's end (its last stable offset). Transaction markers take offsets no reader
/// sees, so the read ends at the partitions' end-of-partition events, not at an offset.
pub fn read_committed(topic: &str, partitions: i32) -> Vec<ReadRecord> {
    use rdkafka::message::Message;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut ended = vec![false; partitions as usize];
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ended.iter().any(|e| !e) {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push((
                m.key().map(<[u8]>::to_vec),
                m.payload().map(<[u8]>::to_vec),
                Vec::new(),
            )),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => ended[p as usize] = true,
            _ => {}
        }
    }
    out
}

mod kill;
#[allow(unused_imports)]
pub use kill::*;
mod tls;
#[allow(unused_imports)]
pub use tls::*;
mod weights;
#[allow(unused_imports)]
pub use weights::*;
