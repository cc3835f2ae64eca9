//! Consumer throughput against a broker, as ratios to a raw rdkafka consumer in the same run.
//!
//! `cargo bench --bench throughput` (broker at `$KAFKA_BOOTSTRAP`, default 127.0.0.1:9092;
//! `BENCH_RECORDS` records of 100 bytes, default 1 000 000, over 4 partitions). Prints one JSON
//! line per figure: wall-clock records/s and this process's CPU time per record.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_stateful::codec::{Bincode, RawBytes, Utf8};
use kafka_stateful::{
    ConsumerConfig, Handler, HandlerError, PartitionContext, Record, StatefulConsumer, StoreDef,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// CPU time (user + system) of this process, from /proc/self/stat (clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

struct Figure {
    name: &'static str,
    records: u64,
    wall: Duration,
    cpu: Duration,
    /// Partition pauses (queue full) during the run.
    pauses: u64,
}

impl Figure {
    fn rate(&self) -> f64 {
        self.records as f64 / self.wall.as_secs_f64()
    }
    fn cpu_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.records as f64
    }
    fn print(&self, raw: &Figure) {
        println!(
            "{{\"bench\":\"{}\",\"records\":{},\"records_per_s\":{:.0},\"cpu_us_per_record\":{:.3},\"rate_ratio_to_raw\":{:.3},\"cpu_ratio_to_raw\":{:.3},\"pauses\":{}}}",
            self.name, self.records, self.rate(), self.cpu_us(), self.rate() / raw.rate(), self.cpu_us() / raw.cpu_us(), self.pauses
        );
    }
}

fn raw_consumer(bootstrap: &str, topic: &str, n: u64) -> Figure {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("raw-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // The value kafka-stateful sets on its consumers, so both fetch alike.
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut seen = 0;
    // Wait for the first record before timing: group join is not throughput.
    while c
        .poll(Duration::from_millis(100))
        .is_none_or(|m| m.is_err())
    {}
    seen += 1;
    let (start, cpu0) = (Instant::now(), cpu_time());
    while seen < n {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            seen += 1;
        }
    }
    Figure {
        name: "raw_rdkafka_base_consumer",
        records: n - 1,
        wall: start.elapsed(),
        cpu: cpu_time() - cpu0,
        pauses: 0,
    }
}

#[derive(Clone)]
struct Count(Arc<AtomicU64>, Option<StoreDef<String, u64>>);

impl Handler<String, Vec<u8>> for Count {
    async fn handle(
        &self,
        r: Record<String, Vec<u8>>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        if let (Some(store), Some(key)) = (&self.1, r.key) {
            let mut s = ctx.store(store)?;
            let n = s.get(&key)?.unwrap_or(0) + 1;
            s.put(&key, &n)?;
        }
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

async fn stateful(
    name: &'static str,
    queue_capacity: usize,
    bootstrap: &str,
    topic: &str,
    n: u64,
    with_store: bool,
) -> Figure {
    let dir = tempfile::tempdir().unwrap();
    let store = with_store.then(|| StoreDef::new("counts", Utf8, Bincode::<u64>::new()));
    let mut builder =
        ConsumerConfig::builder(bootstrap, format!("{name}-{}", std::process::id()), [topic])
            .instance_id("bench-0")
            .queue_capacity(queue_capacity)
            .state_dir(dir.path());
    if let Some(s) = &store {
        builder = builder.store(s);
    }
    let count = Count(Arc::default(), store);
    let consumer = StatefulConsumer::new(builder.build().unwrap(), Utf8, RawBytes, count.clone());
    let seen = count.0.clone();
    let stats = consumer.stats();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(consumer.run(async move {
        let _ = rx.await;
    }));
    while seen.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (start, cpu0, first) = (Instant::now(), cpu_time(), seen.load(Ordering::Relaxed));
    while seen.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut figure = Figure {
        name,
        records: n - first,
        wall: start.elapsed(),
        cpu: cpu_time() - cpu0,
        pauses: 0,
    };
    let _ = tx.send(());
    run.await.unwrap().unwrap();
    figure.pauses = stats.snapshot().pauses;
    figure
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("throughput: run with `cargo bench --bench throughput` (needs a broker)");
        return;
    }
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let n: u64 = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let topic = format!("bench-{}", std::process::id());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    for r in admin
        .create_topics(
            &[NewTopic::new(&topic, 4, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
    {
        r.unwrap();
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let payload = vec![b'x'; 100];
    let mut pending = Vec::with_capacity(n as usize);
    for i in 0..n {
        let key = format!("key-{}", i % 1000);
        pending.push(
            producer
                .send_result(FutureRecord::to(&topic).key(&key).payload(&payload))
                .unwrap(),
        );
    }
    for p in futures::future::join_all(pending).await {
        p.unwrap().unwrap();
    }
    let raw = {
        let (b, t) = (bootstrap.clone(), topic.clone());
        tokio::task::spawn_blocking(move || raw_consumer(&b, &t, n))
            .await
            .unwrap()
    };
    raw.print(&raw);
    // The default queue capacity (10 000) and Kafka Streams' 1000 (see
    // `ConsumerConfigBuilder::queue_capacity` on what a pause costs in librdkafka).
    for (name, queue, store) in [
        ("kafka_stateful_stateless_q1000", 1000, false),
        ("kafka_stateful_stateless_q10000", 10_000, false),
        ("kafka_stateful_counting_store_q1000", 1000, true),
        ("kafka_stateful_counting_store_q10000", 10_000, true),
    ] {
        stateful(name, queue, &bootstrap, &topic, n, store)
            .await
            .print(&raw);
    }
}
