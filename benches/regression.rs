//! Consume-path regression check against the previous release, as ratios to a raw rdkafka
//! consumer in the same run.
//!
//! ```text
//! cargo bench --bench regression
//! ```
//!
//! Why: commit 1a07555 made the consume path about 40% slower and nothing noticed until a
//! bisect. This bench repeats that bisect's measurement and compares it with
//! `benches/baseline.json`, the previous release's figures measured the same way (since
//! the batch reads of partition queues; before them, bcf941e's).
//!
//! Needs a broker at `$KAFKA_BOOTSTRAP` (default 127.0.0.1:9092). The topic
//! `bench-regression-views` (4 partitions, 1 000 000 JSON page views of ~80 B over 1 000
//! pages; `RECORDS` to change) is created and filled once, and reused while it holds the
//! records. Each of `BENCH_RUNS` rounds (default 3) reads it with a raw rdkafka
//! `BaseConsumer`, then with the library and no store, then with the library and a count per
//! page (a fresh group and state directory each). Prints one JSON line per figure (medians
//! and ranges, as `cargo bench --bench throughput` does) with the baseline's ratios and
//! `vs_baseline` (this run's rate ratio / the baseline's; `cpu_vs_baseline` likewise), then
//! a verdict line: `"REGRESSION"` (and exit status 1) when a figure's rate ratio is below
//! 0.8× the baseline's or its CPU ratio above 1.25×, `"ok"` otherwise (on a 2-core machine
//! the same build's ratios spread by ±15% run to run; 1a07555's regression was 0.63–0.67×).
//! Ratios, not absolute rates, are compared: the raw consumer of the same run absorbs the
//! machine's speed.

// Shared with the throughput bench, which uses all of it; this bench only part.
#[allow(dead_code)]
#[path = "throughput/measure.rs"]
mod measure;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_stateful::codec::{Bincode, Utf8};
use kafka_stateful::{
    ConsumerConfig, Handler, HandlerError, PartitionContext, Record, StatefulConsumer, StoreDef,
};
use measure::{raw, runs, Figure, Samples, Watch};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const TOPIC: &str = "bench-regression-views";
const PARTITIONS: i32 = 4;
const PAGES: u64 = 1_000;
/// A figure regressed when its rate ratio falls below this share of the baseline's...
const RATE_FLOOR: f64 = 0.8;
/// ...or its CPU ratio rises above this multiple of the baseline's.
const CPU_CEILING: f64 = 1.25;

/// Partitions and records (high minus low watermarks) of the topic, if it exists.
fn topic_state(bootstrap: &str) -> Option<(usize, u64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .ok()?;
    let md = c
        .fetch_metadata(Some(TOPIC), Duration::from_secs(10))
        .ok()?;
    let t = md.topics().first()?;
    if t.error().is_some() || t.partitions().is_empty() {
        return None;
    }
    let mut total = 0;
    for p in t.partitions() {
        let (lo, hi) = c
            .fetch_watermarks(TOPIC, p.id(), Duration::from_secs(10))
            .ok()?;
        total += (hi - lo) as u64;
    }
    Some((t.partitions().len(), total))
}

/// Page view `i`: key `/product/N` (N < 1 000, spread but not in order), a JSON value.
fn view(i: u64) -> (String, String) {
    let key = format!("/product/{}", i.wrapping_mul(2_654_435_761) % PAGES);
    let user = i.wrapping_mul(40_503) % 100_000;
    let referrer = ["search", "home", "email", "ad", "social"][(i % 5) as usize];
    let ts = 1_733_000_000_000u64 + i * 3;
    let value = format!(r#"{{"page":"{key}","user":"user-{user}","ts":{ts},"ref":"{referrer}"}}"#);
    (key, value)
}

/// Creates the topic if needed and tops it up to `n` records.
async fn ensure_topic(bootstrap: &str, n: u64) {
    let have = match topic_state(bootstrap) {
        Some((p, _)) if p != PARTITIONS as usize => {
            panic!("topic {TOPIC} has {p} partitions, not {PARTITIONS}: delete it")
        }
        Some((_, have)) => have,
        None => {
            let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .create()
                .unwrap();
            let topic = NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(1));
            for r in admin
                .create_topics(&[topic], &AdminOptions::new())
                .await
                .unwrap()
            {
                match r {
                    Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err(e) => panic!("create {TOPIC}: {e:?}"),
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            0
        }
    };
    if have >= n {
        return;
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "2000000")
        .create()
        .unwrap();
    let start = Instant::now();
    let mut pending = Vec::new();
    for i in have..n {
        let (key, value) = view(i);
        let record = FutureRecord::to(TOPIC).key(&key).payload(&value);
        pending.push(producer.send_result(record).unwrap());
        if pending.len() >= 100_000 || i + 1 == n {
            for p in pending.drain(..) {
                p.await.unwrap().unwrap();
            }
        }
    }
    eprintln!("filled {TOPIC} to {n} records in {:?}", start.elapsed());
}

/// Counts records; with a store, also counts per page (a get and a put per record).
#[derive(Clone)]
struct Count {
    seen: Arc<AtomicU64>,
    store: Option<StoreDef<String, u64>>,
}

impl Handler<String, String> for Count {
    async fn handle(
        &self,
        r: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        if let (Some(store), Some(key)) = (&self.store, &r.key) {
            let mut s = ctx.store(store)?;
            let n = s.get(key)?.unwrap_or(0) + 1;
            s.put(key, &n)?;
        }
        self.seen.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The library, default settings, in a fresh group and state directory, until `n` records
/// were handled.
async fn library(bootstrap: &str, n: u64, with_store: bool, group: String) -> Figure {
    let dir = tempfile::tempdir().unwrap();
    let store = with_store.then(|| StoreDef::new("counts", Utf8, Bincode::<u64>::new()));
    let mut builder = ConsumerConfig::builder(bootstrap, group, [TOPIC])
        .instance_id("bench-0")
        .state_dir(dir.path());
    if let Some(s) = &store {
        builder = builder.store(s);
    }
    let handler = Count {
        seen: Arc::default(),
        store,
    };
    let watch = Watch::start(handler.seen.clone(), n, Duration::from_secs(600));
    let consumer = StatefulConsumer::new(builder.build().unwrap(), Utf8, Utf8, handler);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(consumer.run(async move {
        let _ = rx.await;
    }));
    let figure = watch.figure().await;
    let _ = tx.send(());
    running.await.unwrap().unwrap();
    figure
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("regression: run with `cargo bench --bench regression` (needs a broker)");
        return;
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/baseline.json");
    let baseline: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect(path)).expect(path);
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let n = std::env::var("RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    ensure_topic(&bootstrap, n).await;

    let figures = [("no_store", false), ("count", true)];
    let mut samples: Vec<Samples> = figures.iter().map(|_| Samples::default()).collect();
    // Per figure: (rate ratio, CPU ratio) to the raw run of the same round.
    let mut ratios: Vec<Vec<(f64, f64)>> = figures.iter().map(|_| Vec::new()).collect();
    let pause = Duration::from_millis(500);
    for round in 0..runs() {
        let raw_run = raw(&bootstrap, TOPIC, n).await;
        for (i, (name, with_store)) in figures.iter().enumerate() {
            tokio::time::sleep(pause).await;
            let group = format!("regression-{name}-{}-{round}", std::process::id());
            let f = library(&bootstrap, n, *with_store, group).await;
            samples[i].push(raw_run, f);
            ratios[i].push((f.rate() / raw_run.rate(), f.cpu_us() / raw_run.cpu_us()));
        }
        tokio::time::sleep(pause).await;
    }

    let mut regressed = Vec::new();
    let mut verdicts = Vec::new();
    for (i, (name, _)) in figures.iter().enumerate() {
        let ratio = |key: &str| {
            baseline[name][key]
                .as_f64()
                .unwrap_or_else(|| panic!("{path}: no {name}.{key}"))
        };
        let (base_rate, base_cpu) = (ratio("rate_ratio_to_raw"), ratio("cpu_ratio_to_raw"));
        let rate = median(ratios[i].iter().map(|r| r.0).collect());
        let cpu = median(ratios[i].iter().map(|r| r.1).collect());
        let (vs, cpu_vs) = (rate / base_rate, cpu / base_cpu);
        if vs < RATE_FLOOR || cpu_vs > CPU_CEILING {
            regressed.push(format!("\"{name}\""));
        }
        let compared = format!("\"vs_baseline\":{vs:.3},\"cpu_vs_baseline\":{cpu_vs:.3}");
        samples[i].print(
            &format!("regression_{name}"),
            &format!(
                ",\"baseline_rate_ratio_to_raw\":{base_rate:.3},\
\"baseline_cpu_ratio_to_raw\":{base_cpu:.3},{compared}"
            ),
        );
        verdicts.push(format!("\"{name}\":{{{compared}}}"));
    }
    let verdict = if regressed.is_empty() {
        "ok"
    } else {
        "REGRESSION"
    };
    println!(
        "{{\"bench\":\"regression\",\"verdict\":\"{verdict}\",\"baseline_commit\":{},\
\"rate_floor\":{RATE_FLOOR},\"cpu_ceiling\":{CPU_CEILING},{},\"regressed\":[{}]}}",
        baseline["commit"],
        verdicts.join(","),
        regressed.join(",")
    );
    if !regressed.is_empty() {
        std::process::exit(1);
    }
}
