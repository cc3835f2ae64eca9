//! Consumer throughput against a broker, as ratios to a raw rdkafka consumer in the same run.
//!
//! ```text
//! cargo bench --bench throughput
//! ```
//!
//! Needs a broker at `$KAFKA_BOOTSTRAP` (default 127.0.0.1:9092; `scripts/broker.sh`). Prints
//! one JSON line per figure: wall-clock records/s, this process's CPU time per record, both as
//! ratios to a raw rdkafka `BaseConsumer` reading the same topic in the same run, partition
//! pauses, and peak RSS while the figure ran. Topics (4 partitions each):
//!
//! - `a`: `BENCH_RECORDS` (default 1 000 000) records of 100 B over 1 000 keys;
//! - `b`: `BENCH_WIDE_RECORDS` (default 500 000) records of 100 B over 200 000 keys;
//! - `c`: `BENCH_LARGE_RECORDS` (default 20 000) records of 10 KB over 1 000 keys;
//! - `v`: `BENCH_VIEW_RECORDS` (default 500 000) page views (JSON, ~70 B) for the
//!   unique-visitors example's job: 1 000 pages, 100 000 users, one-minute windows.
//!
//! With `BENCH_QUIX=<python>` (a Python with `benches/requirements-quix.txt` installed), the
//! same count-per-key job runs in Quix Streams on topics `a` and `b` for comparison.

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

#[path = "throughput/slow.rs"]
mod slow;
#[path = "throughput/visitors.rs"]
mod visitors;

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

/// Resets the peak-RSS counter of this process (Linux: `clear_refs` 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak RSS since the last reset, in MB.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Figure {
    name: String,
    records: u64,
    wall: Duration,
    cpu: Duration,
    peak_rss_mb: f64,
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
            "{{\"bench\":\"{}\",\"records\":{},\"records_per_s\":{:.0},\"cpu_us_per_record\":{:.3},\"rate_ratio_to_raw\":{:.3},\"cpu_ratio_to_raw\":{:.3},\"peak_rss_mb\":{:.0}}}",
            self.name, self.records, self.rate(), self.cpu_us(), self.rate() / raw.rate(), self.cpu_us() / raw.cpu_us(), self.peak_rss_mb
        );
    }
}

fn raw_consumer(bootstrap: &str, topic: &str, n: u64, name: &str) -> Figure {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("raw-{name}-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // The value kafka-stateful sets on its consumers, so both fetch alike.
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    // Wait for the first record before timing: group join is not throughput.
    while c
        .poll(Duration::from_millis(100))
        .is_none_or(|m| m.is_err())
    {}
    reset_peak_rss();
    let mut seen = 1;
    let (start, cpu0) = (Instant::now(), cpu_time());
    while seen < n {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            seen += 1;
        }
    }
    Figure {
        name: name.to_string(),
        records: n - 1,
        wall: start.elapsed(),
        cpu: cpu_time() - cpu0,
        peak_rss_mb: peak_rss_mb(),
    }
}

/// Counts records; with stores, counts per key (and sums value sizes per key).
#[derive(Clone)]
struct Count {
    seen: Arc<AtomicU64>,
    count: Option<StoreDef<String, u64>>,
    sum: Option<StoreDef<String, u64>>,
}

impl Handler<String, Vec<u8>> for Count {
    async fn handle(
        &self,
        r: Record<String, Vec<u8>>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        if let Some(key) = &r.key {
            if let Some(store) = &self.count {
                let mut s = ctx.store(store)?;
                let n = s.get(key)?.unwrap_or(0) + 1;
                s.put(key, &n)?;
            }
            if let Some(store) = &self.sum {
                let size = r.value.as_ref().map_or(0, Vec::len) as u64;
                let mut s = ctx.store(store)?;
                let n = s.get(key)?.unwrap_or(0) + size;
                s.put(key, &n)?;
            }
        }
        self.seen.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// What a stateful run is asked to do.
struct Job<'a> {
    name: &'a str,
    bootstrap: &'a str,
    topic: &'a str,
    group: String,
    state_dir: &'a std::path::Path,
    stores: usize,
}

struct Run {
    figure: Figure,
    /// Taken before shutdown (which releases the partitions).
    last: kafka_stateful::StatsSnapshot,
    /// From the assignment to the first record handled.
    assigned_to_first_record: Duration,
}

/// Notes when partitions were last assigned.
#[derive(Clone, Default)]
struct AssignedAt(Arc<std::sync::Mutex<Option<Instant>>>);

impl kafka_stateful::RebalanceListener for AssignedAt {
    fn on_assigned(&self, partitions: &[(String, i32)]) {
        if !partitions.is_empty() {
            *self.0.lock().unwrap() = Some(Instant::now());
        }
    }
}

/// `BENCH_ONLY=<part of a figure name>` runs only matching stateful figures (profiling).
fn selected(name: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| name.contains(&only))
}

async fn stateful(job: &Job<'_>, n: u64) -> Run {
    let count = (job.stores >= 1).then(|| StoreDef::new("counts", Utf8, Bincode::<u64>::new()));
    let sum = (job.stores >= 2).then(|| StoreDef::new("sums", Utf8, Bincode::<u64>::new()));
    let mut builder = ConsumerConfig::builder(job.bootstrap, &job.group, [job.topic])
        .instance_id("bench-0")
        .state_dir(job.state_dir)
        .set(
            "statistics.interval.ms",
            std::env::var("BENCH_STATS_MS").unwrap_or("1000".into()),
        );
    for store in count.iter().chain(&sum) {
        builder = builder.store(store);
    }
    let handler = Count {
        seen: Arc::default(),
        count,
        sum,
    };
    let assigned_at = AssignedAt::default();
    let consumer = StatefulConsumer::new(builder.build().unwrap(), Utf8, RawBytes, handler.clone())
        .with_rebalance_listener(assigned_at.clone());
    let stats = consumer.stats();
    measure(job.name, &handler.seen, n, &stats, &assigned_at, |stop| {
        tokio::spawn(consumer.run(async move {
            let _ = stop.await;
        }))
    })
    .await
}

/// Runs a consumer (started by `start`, stopped through the channel it is given) until `seen`
/// reaches `n`; measures from its first record handled.
async fn measure(
    name: &str,
    seen: &AtomicU64,
    n: u64,
    stats: &kafka_stateful::Stats,
    assigned_at: &AssignedAt,
    start: impl FnOnce(
        tokio::sync::oneshot::Receiver<()>,
    ) -> tokio::task::JoinHandle<kafka_stateful::Result<()>>,
) -> Run {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = start(rx);
    while seen.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let assigned_to_first_record = assigned_at
        .0
        .lock()
        .unwrap()
        .map_or(Duration::ZERO, |at| at.elapsed());
    if let Ok(marker) = std::env::var("BENCH_PROFILE_MARK") {
        // For `perf record -p`: the measured part starts now.
        let _ = std::fs::write(&marker, std::process::id().to_string());
    }
    reset_peak_rss();
    let (started, cpu0, first) = (Instant::now(), cpu_time(), seen.load(Ordering::Relaxed));
    while seen.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let figure = Figure {
        name: name.to_string(),
        records: n - first,
        wall: started.elapsed(),
        cpu: cpu_time() - cpu0,
        peak_rss_mb: peak_rss_mb(),
    };
    let last = stats.snapshot();
    let _ = tx.send(());
    run.await.unwrap().unwrap();
    Run {
        figure,
        last,
        assigned_to_first_record,
    }
}

async fn create_topic(bootstrap: &str, topic: &str) {
    create_topic_with(bootstrap, topic, 4).await
}

async fn create_topic_with(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for r in admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
    {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err(e) => panic!("create {topic}: {e:?}"),
        }
    }
}

async fn fill(bootstrap: &str, topic: &str, n: u64, keys: u64, value_size: usize) {
    create_topic(bootstrap, topic).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "2000000")
        .create()
        .unwrap();
    let payload = vec![b'x'; value_size];
    let mut pending = Vec::new();
    for i in 0..n {
        // Keys spread evenly but not in order, so each partition sees every key range.
        let key = format!("page-{}", i.wrapping_mul(2_654_435_761) % keys);
        pending.push(
            producer
                .send_result(FutureRecord::to(topic).key(&key).payload(&payload))
                .unwrap(),
        );
        if pending.len() >= 100_000 {
            for p in futures::future::join_all(pending.drain(..)).await {
                p.unwrap().unwrap();
            }
        }
    }
    for p in futures::future::join_all(pending).await {
        p.unwrap().unwrap();
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The count-per-key job in Quix Streams, when `BENCH_QUIX` names a Python that has it.
fn quix(bootstrap: &str, topic: &str, n: u64, name: &str, raw: &Figure) {
    let Ok(python) = std::env::var("BENCH_QUIX") else {
        println!("{{\"bench\":\"{name}\",\"skipped\":\"set BENCH_QUIX to a python with benches/requirements-quix.txt\"}}");
        return;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/quix_count.py");
    let output = std::process::Command::new(python)
        .args([script, "--brokers", bootstrap, "--topic", topic])
        .args(["--records", &n.to_string(), "--name", name])
        .stderr(std::process::Stdio::inherit())
        .output();
    let line = output
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().last().map(str::to_string));
    let Some(line) = line else {
        println!("{{\"bench\":\"{name}\",\"skipped\":\"quix_count.py failed\"}}");
        return;
    };
    let field = |key: &str| -> f64 {
        line.split(&format!("\"{key}\":"))
            .nth(1)
            .and_then(|rest| rest.split([',', '}']).next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let (rate, cpu) = (field("records_per_s"), field("cpu_us_per_record"));
    println!(
        "{{\"bench\":\"{name}\",\"records\":{},\"records_per_s\":{rate:.0},\"cpu_us_per_record\":{cpu:.3},\"rate_ratio_to_raw\":{:.3},\"cpu_ratio_to_raw\":{:.3},\"peak_rss_mb\":{:.0}}}",
        field("records"), rate / raw.rate(), cpu / raw.cpu_us(), field("peak_rss_mb")
    );
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("throughput: run with `cargo bench --bench throughput` (needs a broker)");
        return;
    }
    // Logs only when asked (`RUST_LOG`): the figures are the output.
    if std::env::var("RUST_LOG").is_ok() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let id = std::process::id();
    let (n_a, n_b, n_c) = (
        env_u64("BENCH_RECORDS", 1_000_000),
        env_u64("BENCH_WIDE_RECORDS", 500_000),
        env_u64("BENCH_LARGE_RECORDS", 20_000),
    );
    let (a, b, c) = (
        format!("bench-a-{id}"),
        format!("bench-b-{id}"),
        format!("bench-c-{id}"),
    );
    let raw_on = |topic: &str, n: u64, name: &str| {
        let (b, t, name) = (bootstrap.clone(), topic.to_string(), name.to_string());
        tokio::task::spawn_blocking(move || raw_consumer(&b, &t, n, &name))
    };
    let dir = tempfile::tempdir().unwrap();

    if let Ok(only) = std::env::var("BENCH_ONLY") {
        if only.starts_with("slow") {
            // `slow_cpu`: only the CPU per record at limit 1 and 64.
            slow::slow_handlers(&bootstrap, id, dir.path(), only == "slow_cpu").await;
            return;
        }
    }

    let name = "kafka_stateful_unique_visitors";
    if selected(name) {
        let n_v = env_u64("BENCH_VIEW_RECORDS", 500_000);
        let v = format!("bench-v-{id}");
        visitors::fill_views(&bootstrap, &v, n_v).await;
        let raw_v = raw_on(&v, n_v, "raw_rdkafka_page_views").await.unwrap();
        raw_v.print(&raw_v);
        let group = format!("{name}-{id}");
        visitors::unique_visitors(name, &bootstrap, &v, &group, dir.path(), n_v)
            .await
            .figure
            .print(&raw_v);
        if std::env::var("BENCH_ONLY").is_ok() {
            return;
        }
    }

    fill(&bootstrap, &a, n_a, 1_000, 100).await;
    let wide_keys = env_u64("BENCH_WIDE_KEYS", 200_000);
    fill(&bootstrap, &b, n_b, wide_keys, 100).await;
    fill(&bootstrap, &c, n_c, 1_000, 10_000).await;

    let raw_a = raw_on(&a, n_a, "raw_rdkafka_1k_keys_100b").await.unwrap();
    raw_a.print(&raw_a);
    for (name, stores) in [
        ("kafka_stateful_no_store", 0),
        ("kafka_stateful_count_1k_keys", 1),
        ("kafka_stateful_count_and_sum_1k_keys", 2),
    ] {
        if !selected(name) {
            continue;
        }
        let j = Job {
            name,
            bootstrap: &bootstrap,
            topic: &a,
            group: format!("{name}-{id}"),
            state_dir: dir.path(),
            stores,
        };
        stateful(&j, n_a).await.figure.print(&raw_a);
    }
    if std::env::var("BENCH_ONLY").is_err() {
        quix(&bootstrap, &a, n_a, "quix_streams_count_1k_keys", &raw_a);
    }

    let raw_b = raw_on(&b, n_b, "raw_rdkafka_200k_keys_100b").await.unwrap();
    raw_b.print(&raw_b);
    let wide = Job {
        name: "kafka_stateful_count_200k_keys",
        bootstrap: &bootstrap,
        topic: &b,
        group: format!("wide-{id}"),
        state_dir: dir.path(),
        stores: 1,
    };
    if selected(wide.name) || selected("restore") {
        stateful(&wide, n_b).await.figure.print(&raw_b);
    }
    if std::env::var("BENCH_ONLY").is_err() {
        quix(&bootstrap, &b, n_b, "quix_streams_count_200k_keys", &raw_b);
    } else if !selected("restore") {
        return;
    }

    // Cold restore: the same group and instance on an empty state directory replays the
    // whole changelog; warm restart: again on the restored directory, 0 records restored.
    fill(&bootstrap, &b, 1_000, wide_keys, 100).await;
    let cold_dir = tempfile::tempdir().unwrap();
    let cold = stateful(
        &Job {
            state_dir: cold_dir.path(),
            ..wide_clone(&wide)
        },
        1_000,
    )
    .await;
    let restored: u64 = cold
        .last
        .partitions
        .values()
        .map(|p| p.restored_records)
        .sum();
    let rates: Vec<f64> = cold
        .last
        .partitions
        .values()
        .map(|p| p.restore_rate)
        .collect();
    // Partitions restore in parallel: the apply rate is the sum of their rates.
    println!(
        "{{\"bench\":\"kafka_stateful_cold_restore\",\"restored_records\":{restored},\"restore_records_per_s\":{:.0},\"partition_restore_rates_per_s\":{rates:.0?},\"assigned_to_first_record_ms\":{}}}",
        rates.iter().sum::<f64>(),
        cold.assigned_to_first_record.as_millis()
    );
    fill(&bootstrap, &b, 1_000, wide_keys, 100).await;
    let warm = stateful(
        &Job {
            state_dir: cold_dir.path(),
            ..wide_clone(&wide)
        },
        1_000,
    )
    .await;
    let restored: u64 = warm
        .last
        .partitions
        .values()
        .map(|p| p.restored_records)
        .sum();
    println!(
        "{{\"bench\":\"kafka_stateful_warm_restart\",\"restored_records\":{restored},\"assigned_to_first_record_ms\":{}}}",
        warm.assigned_to_first_record.as_millis()
    );

    let raw_c = raw_on(&c, n_c, "raw_rdkafka_10kb_values").await.unwrap();
    raw_c.print(&raw_c);
    for (name, stores) in [
        ("kafka_stateful_no_store_10kb_values", 0),
        ("kafka_stateful_count_1k_keys_10kb_values", 1),
    ] {
        let j = Job {
            name,
            bootstrap: &bootstrap,
            topic: &c,
            group: format!("{name}-{id}"),
            state_dir: dir.path(),
            stores,
        };
        stateful(&j, n_c).await.figure.print(&raw_c);
    }
}

fn wide_clone<'a>(job: &Job<'a>) -> Job<'a> {
    Job {
        name: job.name,
        bootstrap: job.bootstrap,
        topic: job.topic,
        group: job.group.clone(),
        state_dir: job.state_dir,
        stores: job.stores,
    }
}
