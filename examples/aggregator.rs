//! The smallest stateful job: counts page views per user in a RocksDB store backed by a
//! changelog topic. Fills the topic with `--produce N` synthetic views first, then consumes
//! until Ctrl-C, or with `--exit-when-idle` until every partition is processed and committed
//! up to its end, and prints a short summary.
//!
//! Run it (a broker must listen on --brokers; `scripts/broker.sh` starts one):
//!
//! ```text
//! cargo run --example aggregator -- --brokers 127.0.0.1:9092 --topic page-views --produce 10000 --exit-when-idle
//! ```
//!
//! Run it twice: the second run restores its state from the local checkpoint (0 changelog
//! records replayed) and keeps counting where it stopped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use kafka_stateful::codec::{Bincode, Json, Utf8};
use kafka_stateful::{
    ConsumerConfig, Handler, HandlerError, PartitionContext, Record, StatefulConsumer,
    StatsSnapshot, StoreDef,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct PageView {
    user: String,
    page: String,
}

struct CountViews {
    views: StoreDef<String, u64>,
    handled: Arc<AtomicU64>,
    /// Each user's count as last written, for the summary (users seen in this run).
    latest: Arc<Mutex<HashMap<String, u64>>>,
}

impl Handler<String, PageView> for CountViews {
    async fn handle(
        &self,
        record: Record<String, PageView>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let Some(view) = record.value else {
            return Ok(());
        };
        let mut views = ctx.store(&self.views)?;
        let count = views.get(&view.user)?.unwrap_or(0) + 1;
        views.put(&view.user, &count)?;
        self.handled.fetch_add(1, Ordering::Relaxed);
        self.latest
            .lock()
            .map_err(|_| "summary lock poisoned")?
            .insert(view.user, count);
        Ok(())
    }
}

struct Args {
    brokers: String,
    topic: String,
    group: String,
    state_dir: String,
    produce: usize,
    exit_when_idle: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        brokers: "127.0.0.1:9092".into(),
        topic: "page-views".into(),
        group: "aggregator".into(),
        state_dir: "./aggregator-state".into(),
        produce: 0,
        exit_when_idle: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--brokers" => args.brokers = value()?,
            "--topic" => args.topic = value()?,
            "--group" => args.group = value()?,
            "--state-dir" => args.state_dir = value()?,
            "--produce" => args.produce = value()?.parse()?,
            "--exit-when-idle" => args.exit_when_idle = true,
            other => anyhow::bail!("unknown flag {other}; flags: --brokers --topic --group --state-dir --produce N --exit-when-idle"),
        }
    }
    Ok(args)
}

async fn fill(args: &Args) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .create()?;
    // An existing topic is fine; other errors surface when producing.
    let _ = admin
        .create_topics(
            &[NewTopic::new(&args.topic, 4, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .create()?;
    let mut pending = Vec::new();
    for i in 0..args.produce {
        // A skewed audience: a few heavy users, a long tail.
        let spread = (i as u64).wrapping_mul(2_654_435_761) % 1000;
        let user = format!("user-{}", spread * spread / 10_000);
        let value = serde_json::to_vec(&PageView {
            user: user.clone(),
            page: format!("/page/{}", i % 7),
        })?;
        let record = FutureRecord::to(&args.topic).key(&user).payload(&value);
        pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
    }
    for delivery in futures::future::join_all(pending).await {
        delivery?.map_err(|(e, _)| e)?;
    }
    println!("produced {} page views to {}", args.produce, args.topic);
    Ok(())
}

/// Every assigned partition is processed and committed up to its end.
fn caught_up(s: &StatsSnapshot) -> bool {
    !s.partitions.is_empty()
        && s.partitions
            .values()
            .all(|p| p.ready && p.queued == 0 && p.high_watermark >= 0 && p.committed_lag == 0)
}

fn print_summary(
    handled: u64,
    latest: &HashMap<String, u64>,
    last: &StatsSnapshot,
    elapsed: Duration,
) {
    let restored: u64 = last.partitions.values().map(|p| p.restored_records).sum();
    let mut top: Vec<(&String, &u64)> = latest.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    println!("summary");
    println!("  views counted this run:  {handled}");
    println!("  users seen this run:     {}", latest.len());
    println!("  changelog records restored at start: {restored}");
    println!("  elapsed:                 {:.1} s", elapsed.as_secs_f64());
    println!("  top users (total views):");
    for (user, views) in top.into_iter().take(5) {
        println!("    {user:<12} {views}");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,librdkafka=warn".into()),
        )
        .init();
    let started = Instant::now();
    let args = parse_args()?;
    if args.produce > 0 {
        fill(&args).await?;
    }
    let views: StoreDef<String, u64> = StoreDef::new("views", Utf8, Bincode::new());
    let config = ConsumerConfig::builder(&args.brokers, &args.group, [&args.topic])
        .instance_id("aggregator-0")
        .state_dir(&args.state_dir)
        .store(&views)
        .commit_interval(Duration::from_secs(1))
        .build()?;
    let handled = Arc::new(AtomicU64::new(0));
    let latest = Arc::new(Mutex::new(HashMap::new()));
    let consumer = StatefulConsumer::new(
        config,
        Utf8,
        Json::<PageView>::new(),
        CountViews {
            views,
            handled: handled.clone(),
            latest: latest.clone(),
        },
    );
    let stats = consumer.stats();
    let last = Arc::new(Mutex::new(StatsSnapshot::default()));
    let exit_when_idle = args.exit_when_idle;
    let shutdown = {
        let last = last.clone();
        async move {
            if exit_when_idle {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let s = stats.snapshot();
                    let done = caught_up(&s);
                    *last.lock().unwrap_or_else(|p| p.into_inner()) = s;
                    if done {
                        break;
                    }
                }
            } else {
                kafka_stateful::shutdown_signal().await;
                *last.lock().unwrap_or_else(|p| p.into_inner()) = stats.snapshot();
            }
        }
    };
    consumer.run(shutdown).await?;
    let latest = latest.lock().unwrap_or_else(|p| p.into_inner());
    let last = last.lock().unwrap_or_else(|p| p.into_inner());
    print_summary(
        handled.load(Ordering::Relaxed),
        &latest,
        &last,
        started.elapsed(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use kafka_stateful::testing::{TestDriver, TestRecord};

    use super::*;

    fn view(user: &str) -> TestRecord<String, PageView> {
        let view = PageView {
            user: user.into(),
            page: "/".into(),
        };
        TestRecord::new(user.to_string(), view)
    }

    async fn driver(views: &StoreDef<String, u64>) -> TestDriver<Utf8, Json<PageView>, CountViews> {
        let config = ConsumerConfig::builder("unused:9092", "aggregator", ["page-views"])
            .instance_id("test")
            .state_dir("unused")
            .store(views)
            .build()
            .unwrap();
        let handler = CountViews {
            views: views.clone(),
            handled: Arc::default(),
            latest: Arc::default(),
        };
        TestDriver::new(config, Utf8, Json::new(), handler)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_views_per_user() {
        let views = StoreDef::new("views", Utf8, Bincode::<u64>::new());
        let mut driver = driver(&views).await;
        for user in ["ada", "bob", "ada"] {
            driver.send(view(user)).await.unwrap();
        }
        let counts = driver.read(&views).await.unwrap();
        assert_eq!(counts, vec![("ada".into(), 2), ("bob".into(), 1)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_neither_loses_nor_double_counts_a_view() {
        let views = StoreDef::new("views", Utf8, Bincode::<u64>::new());
        let mut driver = driver(&views).await;
        driver.send(view("ada")).await.unwrap();
        driver.flush().await.unwrap();
        driver.send(view("ada")).await.unwrap();
        driver.crash().await.unwrap(); // the unflushed view is delivered again
        driver.lose_disk().await.unwrap(); // rebuilt from the changelog
        assert_eq!(driver.read(&views).await.unwrap(), vec![("ada".into(), 2)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tombstone_counts_nothing() {
        let views = StoreDef::new("views", Utf8, Bincode::<u64>::new());
        let mut driver = driver(&views).await;
        driver
            .send(TestRecord::tombstone("ada".to_string()))
            .await
            .unwrap();
        assert!(driver.read(&views).await.unwrap().is_empty());
    }
}
