//! Consumer throughput against a broker, as ratios to a raw rdkafka consumer in the same run.
//!
//! ```text
//! cargo bench --bench throughput
//! ```
//!
//! Needs a broker at `$KAFKA_BOOTSTRAP` (default 127.0.0.1:9092; `scripts/broker.sh`). Prints
//! one JSON line per figure. Every figure is measured `BENCH_RUNS` times (default 3); each
//! run is preceded by a run of a raw rdkafka `BaseConsumer` (a fresh group) on the same
//! topic, so machine drift hits both alike, and the line gives the median and `[min, max]`
//! of the records/s, the CPU time per record (this process, user + system), their ratios
//! to the paired raw run, the peak RSS, and the time from creating the consumer to its
//! first record (also relative to the raw consumer's). A watcher thread timestamps the
//! first and the last record counted by the handler, so a busy runtime cannot stretch the
//! figures. Default settings throughout, as a new user has them. Sections (`BENCH_ONLY`
//! picks some, comma-separated):
//!
//! - `no_store`: 1 000 000 records of 100 B over 1 000 keys (`BENCH_RECORDS`), at 4, 16
//!   and 64 partitions: no store, count per key, count and sum per key (4 partitions);
//! - `keys`: count per key over 1 000 000 records and as many keys (`BENCH_WIDE_KEYS`);
//!   then a cold restore of that store's changelog (empty state directory) and a warm
//!   restart (intact directory);
//! - `visitors`: the unique-visitors example's job over 500 000 page views
//!   (`BENCH_VIEW_RECORDS`; 1 000 pages, 100 000 users, one-minute windows);
//! - `scale`: count per key, 400 000 records over 100 000 keys, at 4, 16 and 64 partitions
//!   (memory follows the data, not the partition count), each run in a child process so
//!   that its peak RSS is a fresh process's;
//! - `tables`: a table of 500 000 rows of 100 bytes (`BENCH_TABLE_ROW_BYTES`) over 200 000
//!   customers, bootstrapped cold and warm,
//!   and a stream-table join (read the order's customer, then count per key) next to count
//!   per key alone over 1 000 000 orders;
//! - `large`: 20 000 records of 10 KB;
//! - `outputs`: count per key with one output record per input, pipelined (at-least-once)
//!   and exactly-once, next to count per key alone, on the broker with transactions
//!   (`$KAFKA_TXN_BOOTSTRAP`, `scripts/txn-broker.sh`), see `throughput/outputs.rs`;
//! - `sink` (only with `BENCH_ONLY=sink`): a batch sink that costs 5 ms per call plus 5 µs
//!   per row, in batch mode and one record per call, see `throughput/sink.rs`.
//! - `slow` (only with `BENCH_ONLY=slow` or `slow_cpu`): key-level concurrency with a
//!   handler that waits 20 ms, see `throughput/slow.rs`.
//!
//! `BENCH_MEMORY_BUDGET_MB` sets the stateful runs' memory budget (default: the library's).
//!
//! With `BENCH_QUIX=<python>` (a Python with `benches/requirements-quix.txt` installed), the
//! same count-per-key job runs in Quix Streams for comparison.

use std::path::Path;

#[path = "throughput/count.rs"]
mod count;
#[path = "throughput/measure.rs"]
mod measure;
#[path = "throughput/outputs.rs"]
mod outputs;
#[path = "throughput/quix.rs"]
mod quix;
#[path = "throughput/sink.rs"]
mod sink;
#[path = "throughput/slow.rs"]
mod slow;
#[path = "throughput/tables.rs"]
mod tables;
#[path = "throughput/topics.rs"]
mod topics;
#[path = "throughput/visitors.rs"]
mod visitors;

use count::{stateful, Job};
use measure::{raw, runs, spread, Samples};
use topics::{env_u64, fill};

/// What the whole bench shares: the broker, names unique to this process, a state root.
pub struct Bench {
    bootstrap: String,
    id: u32,
    dir: tempfile::TempDir,
    /// Groups and state directories are fresh per run: every run reads from the start.
    runs: std::sync::atomic::AtomicU32,
}

impl Bench {
    fn topic(&self, name: &str) -> String {
        format!("bench-{name}-{}", self.id)
    }
    /// A fresh group name and state directory.
    fn fresh(&self, name: &str) -> (String, std::path::PathBuf) {
        let run = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let group = format!("{name}-{}-{run}", self.id);
        let dir = self.dir.path().join(&group);
        (group, dir)
    }
    fn job<'a>(&'a self, topic: &'a str, group: String, dir: &'a Path, stores: usize) -> Job<'a> {
        Job {
            bootstrap: &self.bootstrap,
            topic,
            group,
            state_dir: dir,
            stores,
            table: None,
            as_of: false,
            output: None,
            guarantee: Default::default(),
            measure_when_ready: None,
        }
    }
}

/// Whether `BENCH_ONLY` (unset: every section; else a comma-separated list) names `section`.
fn selected(section: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only.split(',').any(|s| s == section))
}

/// No store, count, count and sum: the library's own cost, at 4 and 16 partitions.
async fn no_store(b: &Bench) {
    let n = env_u64("BENCH_RECORDS", 1_000_000);
    for partitions in [4, 16, 64] {
        let topic = b.topic(&format!("a{partitions}"));
        fill(&b.bootstrap, &topic, partitions, n, 1_000, 100).await;
        let jobs: &[(&str, usize)] = if partitions == 4 {
            &[
                ("no_store", 0),
                ("count_1k_keys", 1),
                ("count_and_sum_1k_keys", 2),
            ]
        } else {
            &[("no_store", 0)]
        };
        let mut samples: Vec<Samples> = jobs.iter().map(|_| Samples::default()).collect();
        for _ in 0..runs() {
            let raw_run = raw(&b.bootstrap, &topic, n).await;
            for ((name, stores), s) in jobs.iter().zip(&mut samples) {
                let (group, dir) = b.fresh(name);
                let run = stateful(&b.job(&topic, group, &dir, *stores), n).await;
                s.push(raw_run, run.figure);
            }
        }
        for ((name, _), s) in jobs.iter().zip(&samples) {
            s.print(&format!("kafka_stateful_{name}_{partitions}p"), "");
        }
        if partitions == 4 {
            let raw_run = raw(&b.bootstrap, &topic, n).await;
            quix::quix(
                &b.bootstrap,
                &topic,
                n,
                "quix_streams_count_1k_keys",
                &raw_run,
            );
        }
    }
}

/// Count per key over a million keys, then cold and warm restores of its changelog.
async fn keys(b: &Bench) {
    let keys = env_u64("BENCH_WIDE_KEYS", 1_000_000);
    let n = env_u64("BENCH_WIDE_RECORDS", 1_000_000);
    let topic = b.topic("keys");
    fill(&b.bootstrap, &topic, 4, n, keys, 100).await;
    let mut samples = Samples::default();
    let mut last = None;
    for _ in 0..runs() {
        let raw_run = raw(&b.bootstrap, &topic, n).await;
        let (group, dir) = b.fresh("count_1m_keys");
        let run = stateful(&b.job(&topic, group.clone(), &dir, 1), n).await;
        samples.push(raw_run, run.figure);
        last = Some(group);
    }
    samples.print(&format!("kafka_stateful_count_{keys}_keys"), "");

    // The last run's group on empty state directories: each replays the whole changelog.
    // A thousand new records per run give it something to handle after the restore.
    let group = last.expect("a run");
    let (mut rates, mut restored, mut first) = (Vec::new(), 0, Vec::new());
    let mut warm_dir = None;
    for _ in 0..runs() {
        topics::produce(&b.bootstrap, &topic, 1_000, |i| {
            (topics::key_of(i, keys), vec![b'x'; 100])
        })
        .await;
        let (_, dir) = b.fresh("cold");
        let run = stateful(&b.job(&topic, group.clone(), &dir, 1), 1_000).await;
        let parts = run.last.partitions.values();
        rates.push(parts.clone().map(|p| p.restore_rate).sum::<f64>());
        restored = parts.map(|p| p.restored_records).sum::<u64>();
        first.push(run.figure.to_first_record.as_secs_f64() * 1e3);
        warm_dir = Some(dir);
    }
    // Partitions restore in parallel: the apply rate is the sum of their rates.
    println!(
        "{{\"bench\":\"kafka_stateful_cold_restore\",\"runs\":{},\"restored_records\":{restored}{}{}}}",
        rates.len(),
        spread("restore_records_per_s", rates),
        spread("start_to_first_record_ms", first)
    );
    let dir = warm_dir.expect("a run");
    let (mut restored, mut first) = (0, Vec::new());
    for _ in 0..runs() {
        topics::produce(&b.bootstrap, &topic, 1_000, |i| {
            (topics::key_of(i, keys), vec![b'x'; 100])
        })
        .await;
        let run = stateful(&b.job(&topic, group.clone(), &dir, 1), 1_000).await;
        restored += run
            .last
            .partitions
            .values()
            .map(|p| p.restored_records)
            .sum::<u64>();
        first.push(run.figure.to_first_record.as_secs_f64() * 1e3);
    }
    println!(
        "{{\"bench\":\"kafka_stateful_warm_restart\",\"runs\":{},\"restored_records\":{restored}{}}}",
        first.len(),
        spread("start_to_first_record_ms", first)
    );
}

async fn unique_visitors(b: &Bench) {
    let n = env_u64("BENCH_VIEW_RECORDS", 500_000);
    let topic = b.topic("views");
    visitors::fill_views(&b.bootstrap, &topic, n).await;
    let mut samples = Samples::default();
    for _ in 0..runs() {
        let raw_run = raw(&b.bootstrap, &topic, n).await;
        let (group, dir) = b.fresh("visitors");
        let run = visitors::unique_visitors(&b.bootstrap, &topic, &group, &dir, n).await;
        samples.push(raw_run, run.figure);
    }
    samples.print("kafka_stateful_unique_visitors", "");
}

/// One consumer, one store, 100 000 keys, at 4, 16 and 64 partitions. Each run is a
/// child process of its own (the consumer, then a raw run), so that its peak RSS — from the
/// process's start — is what a new user's process would show, not what earlier figures
/// left mapped.
async fn scale(b: &Bench) {
    let n = env_u64("BENCH_SCALE_RECORDS", 400_000);
    for partitions in [4, 16, 64] {
        let topic = b.topic(&format!("scale{partitions}"));
        fill(&b.bootstrap, &topic, partitions, n, 100_000, 100).await;
        let mut samples = Samples::default();
        let mut disk = Vec::new();
        for _ in 0..runs() {
            let output = std::process::Command::new(std::env::current_exe().unwrap())
                .arg("--bench")
                .env("BENCH_SCALE_CHILD", &topic)
                .env("BENCH_SCALE_RECORDS", n.to_string())
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("scale child");
            assert!(output.status.success(), "scale child failed");
            let line = String::from_utf8_lossy(&output.stdout);
            let (raw_run, run, mb) = measure::parse_pair(line.trim()).expect("a scale pair");
            samples.push(raw_run, run);
            disk.push(mb);
        }
        samples.print(
            &format!("kafka_stateful_count_100k_keys_{partitions}p"),
            &format!(
                ",\"partitions\":{partitions}{}",
                spread("state_on_disk_mb", disk)
            ),
        );
    }
}

/// A scale run in a child process: prints the raw and the consumer's figures.
async fn scale_child(b: &Bench, topic: &str) {
    let n = env_u64("BENCH_SCALE_RECORDS", 400_000);
    // The consumer first: nothing ran in this process before it, so its peak RSS counts
    // from the process's start, startup included.
    let (group, dir) = b.fresh("scale");
    let mut figure = stateful(&b.job(topic, group, &dir, 1), n).await.figure;
    figure.peak_rss_mb = figure.peak_rss_mb.max(figure.startup_peak_rss_mb);
    let raw_run = raw(&b.bootstrap, topic, n).await;
    println!("{}", measure::format_pair(&raw_run, &figure, dir_mb(&dir)));
}

/// Bytes under `dir`, in MB.
fn dir_mb(dir: &Path) -> f64 {
    fn walk(dir: &Path) -> u64 {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
    }
    walk(dir) as f64 / 1e6
}

async fn large_values(b: &Bench) {
    let n = env_u64("BENCH_LARGE_RECORDS", 20_000);
    let topic = b.topic("large");
    fill(&b.bootstrap, &topic, 4, n, 1_000, 10_000).await;
    let jobs = [
        ("no_store_10kb_values", 0),
        ("count_1k_keys_10kb_values", 1),
    ];
    let mut samples = [Samples::default(), Samples::default()];
    for _ in 0..runs() {
        let raw_run = raw(&b.bootstrap, &topic, n).await;
        for ((name, stores), s) in jobs.iter().zip(&mut samples) {
            let (group, dir) = b.fresh(name);
            s.push(
                raw_run,
                stateful(&b.job(&topic, group, &dir, *stores), n)
                    .await
                    .figure,
            );
        }
    }
    for ((name, _), s) in jobs.iter().zip(&samples) {
        s.print(&format!("kafka_stateful_{name}"), "");
    }
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
    let b = Bench {
        bootstrap: std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        id: std::process::id(),
        dir: tempfile::tempdir().unwrap(),
        runs: Default::default(),
    };
    if let Ok(topic) = std::env::var("BENCH_SCALE_CHILD") {
        scale_child(&b, &topic).await;
        return;
    }
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        if only == "sink" {
            sink::sink(&b.bootstrap, b.id).await;
            return;
        }
        if only.starts_with("slow") {
            // `slow_cpu`: only the CPU per record at limit 1 and 64.
            slow::slow_handlers(&b.bootstrap, b.id, b.dir.path(), only == "slow_cpu").await;
            return;
        }
    }
    if selected("no_store") {
        no_store(&b).await;
    }
    if selected("visitors") {
        unique_visitors(&b).await;
    }
    if selected("keys") {
        keys(&b).await;
    }
    if selected("tables") {
        tables::tables(&b).await;
    }
    if selected("scale") {
        scale(&b).await;
    }
    if selected("large") {
        large_values(&b).await;
    }
    if selected("outputs") {
        outputs::outputs(&b).await;
    }
}
