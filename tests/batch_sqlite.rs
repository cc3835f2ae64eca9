//! A batch sink writing into SQLite, SIGKILLed at random moments: every page's count in the
//! database is exact.
//!
//! The sink is the `page_counts_sqlite` example's (`examples/page_counts_sqlite/sink.rs`):
//! each batch is one SQLite transaction holding the counts and the partition's next offset,
//! and a restarted member starts each partition from that stored offset. A child process
//! (this binary re-run, see `batch_sqlite_child`) runs it while page views are produced;
//! it is SIGKILLed a random delay after it wrote a batch, and restarted, several times.
//! Finally a member catches up with the topic, and the database must hold, per page, exactly
//! the views produced — none lost, none counted twice — with the group's committed offsets
//! never ahead of the stored ones.
//!
//! `KS_BATCH_ROUNDS` (default 4) sets the kill rounds, `KS_BATCH_SEED` the seed (printed);
//! `KS_KEEP_DIR=1` keeps the database, probe files and child logs.

#[path = "common/child.rs"]
mod child;
mod common;
#[path = "../examples/page_counts_sqlite/sink.rs"]
mod sink;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use child::ChildTest;
use common::{require_broker, Rng};
use kafka_stateful::codec::Utf8;
use kafka_stateful::{BatchSettings, ConsumerConfig, StatefulConsumer};
use rdkafka::producer::FutureRecord;
use sink::PageCounts;

const PARTITIONS: i32 = 3;
const PAGES: u64 = 50;
const DEFAULT_ROUNDS: u64 = 4;
const MAX_DELAY_MS: u64 = 800;
/// The feed sends this many views every 20 ms.
const FEED_CHUNK: usize = 100;

const CHILD: ChildTest = ChildTest {
    name: "batch_sqlite_child",
    var: "KS_BATCH_CHILD",
};

/// The child's body; a no-op unless run as the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_sqlite_child() {
    let Some(([topic, group, db], _probe)) = CHILD.args::<3>() else {
        return;
    };
    let config = ConsumerConfig::builder(common::bootstrap(), &group, [&topic])
        .instance_id("batch-sqlite-0")
        .session_timeout(Duration::from_secs(10))
        .commit_interval(Duration::from_millis(200))
        .batches(BatchSettings {
            max_records: 200,
            max_wait: Duration::from_millis(30),
        })
        .build()
        .unwrap();
    let sink = PageCounts::open(Path::new(&db)).unwrap();
    let consumer = StatefulConsumer::new(config, Utf8, Utf8, sink);
    consumer.run(std::future::pending()).await.unwrap();
}

/// Produces `FEED_CHUNK` views every 20 ms until `stop`; counts what was acknowledged per
/// page into `produced`.
fn feed(
    topic: &str,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<HashMap<String, u64>> {
    let topic = topic.to_string();
    tokio::spawn(async move {
        let producer = common::producer_at(&common::bootstrap());
        let mut produced: HashMap<String, u64> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let pages: Vec<String> = (0..FEED_CHUNK)
                .map(|_| format!("page-{}", rng.below(PAGES)))
                .collect();
            let acks: Vec<_> = pages
                .iter()
                .map(|page| {
                    let p = (page[5..].parse::<u64>().unwrap() % PARTITIONS as u64) as i32;
                    let record = FutureRecord::to(&topic).partition(p).key(page).payload("u");
                    producer.send_result(record).unwrap()
                })
                .collect();
            for (ack, page) in acks.into_iter().zip(pages) {
                ack.await.unwrap().unwrap();
                *produced.entry(page).or_default() += 1;
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        produced
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_batch_sink_keeps_exact_counts_in_sqlite() {
    require_broker!();
    if CHILD.in_child() {
        return;
    }
    common::init_tracing();
    let rounds: u64 = std::env::var("KS_BATCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    let (rng, seed) = Rng::from_env_or_clock("KS_BATCH_SEED");
    println!("batch sqlite: seed {seed}, {rounds} kill rounds");
    let mut delays = Rng::from_seed(seed ^ 0xba7c);
    let topic = common::unique("batch-sqlite");
    let group = common::unique("batch-sqlite-group");
    common::create_topic(&topic, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("counts.db");
    let db_arg = db.to_str().unwrap().to_string();
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let feeding = feed(&topic, rng, stop.clone(), sent.clone());
    let args = [topic.as_str(), group.as_str(), db_arg.as_str()];
    let stored = |db: &Path| -> i64 {
        PageCounts::offsets(db, &topic)
            .map(|o| o.values().sum())
            .unwrap_or(0)
    };
    for k in 0..rounds {
        let mut child = CHILD.spawn(dir.path(), &format!("{k}"), &args);
        let before = stored(&db);
        common::wait_until(
            "the child writes a batch (or dies)",
            Duration::from_secs(60),
            || stored(&db) > before || !child.process.alive(),
        )
        .await;
        child.assert_alive(&format!("child {k}"));
        let delay = Duration::from_millis(delays.below(MAX_DELAY_MS));
        tokio::time::sleep(delay).await;
        child.assert_alive(&format!("child {k}"));
        child.kill();
        println!(
            "round {k}: SIGKILL {delay:?} after a batch; {} views produced, {} stored",
            sent.load(Ordering::Relaxed),
            stored(&db)
        );
    }
    let mut last = CHILD.spawn(dir.path(), "final", &args);
    common::wait_until(
        "the last member writes a batch",
        Duration::from_secs(60),
        || stored(&db) > 0,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let produced = feeding.await.unwrap();
    let ends = common::end_offsets(&topic, PARTITIONS);
    let want: i64 = ends.iter().sum();
    common::wait_until(
        "the database stores every view's offset",
        Duration::from_secs(120),
        || stored(&db) == want,
    )
    .await;
    // The group commits after the database: never ahead of what it stores.
    let committed = common::committed(&group, &topic, PARTITIONS);
    let offsets = PageCounts::offsets(&db, &topic).unwrap();
    for (p, c) in committed.iter().enumerate() {
        assert!(
            *c <= offsets[&(p as i32)],
            "group offset {c} ahead of the stored one for partition {p}"
        );
    }
    last.assert_alive("final child");
    last.kill();
    let counts = PageCounts::counts(&db).unwrap();
    let wrong: Vec<_> = produced
        .iter()
        .filter(|(page, n)| counts.get(*page) != Some(n))
        .map(|(page, n)| format!("{page}: produced {n}, counted {:?}", counts.get(page)))
        .collect();
    println!(
        "batch sqlite: {} views produced, {} counted, {} pages wrong",
        produced.values().sum::<u64>(),
        counts.values().sum::<u64>(),
        wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "counts differ (seed {seed}):\n{}",
        wrong.join("\n")
    );
    assert_eq!(counts.len(), produced.len());
    if std::env::var("KS_KEEP_DIR").is_ok() {
        println!("kept {}", dir.keep().display());
    }
}
