//! Page views counted per page into SQLite by a batch handler, exactly once: each batch is
//! one SQLite transaction holding the rows and the partition's next offset, and on
//! assignment the consumer starts each partition from the offset stored there
//! (`Handler::stored_offset`), not from the group's.
//!
//! ```sh
//! cargo run --example page_counts_sqlite -- --produce 200000 --exit-when-idle
//! ```
//!
//! Flags: `--brokers` (default 127.0.0.1:9092), `--topic` (page-views-sqlite), `--group`,
//! `--db` (./page-counts.db), `--produce N` (first publish N views over 1,000 pages, 4
//! partitions), `--batch N` (max records per batch, default 500), `--wait-ms` (max wait
//! for a batch, default 100), `--exit-when-idle`. Run it again, kill it (even with
//! SIGKILL) in the middle: the totals in the database stay exact.

#[path = "sink.rs"]
mod sink;

use std::time::{Duration, Instant};

use kafka_stateful::codec::Utf8;
use kafka_stateful::{BatchSettings, ConsumerConfig, StatefulConsumer, StatsSnapshot};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use sink::PageCounts;

struct Args {
    brokers: String,
    topic: String,
    group: String,
    db: String,
    produce: u64,
    batch: usize,
    wait_ms: u64,
    exit_when_idle: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        brokers: "127.0.0.1:9092".into(),
        topic: "page-views-sqlite".into(),
        group: "page-counts-sqlite".into(),
        db: "./page-counts.db".into(),
        produce: 0,
        batch: 500,
        wait_ms: 100,
        exit_when_idle: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--brokers" => args.brokers = value()?,
            "--topic" => args.topic = value()?,
            "--group" => args.group = value()?,
            "--db" => args.db = value()?,
            "--produce" => args.produce = value()?.parse()?,
            "--batch" => args.batch = value()?.parse()?,
            "--wait-ms" => args.wait_ms = value()?.parse()?,
            "--exit-when-idle" => args.exit_when_idle = true,
            other => anyhow::bail!(
                "unknown flag {other}; flags: --brokers --topic --group --db --produce N --batch N --wait-ms MS --exit-when-idle"
            ),
        }
    }
    Ok(args)
}

/// Creates the topic (4 partitions; an existing one is kept) and produces `n` views of
/// `page-<0..1000>`.
async fn produce(args: &Args) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .create()?;
    let topic = NewTopic::new(&args.topic, 4, TopicReplication::Fixed(1));
    let _ = admin.create_topics([&topic], &AdminOptions::new()).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("linger.ms", "5")
        .create()?;
    let mut pending = Vec::with_capacity(10_000);
    for i in 0..args.produce {
        let page = format!("page-{}", (i * 7919) % 1000);
        let user = format!("user-{}", i % 5000);
        let record = FutureRecord::to(&args.topic).key(&page).payload(&user);
        pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
        if pending.len() == 10_000 {
            for ack in pending.drain(..) {
                ack.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for ack in pending {
        ack.await?.map_err(|(e, _)| e)?;
    }
    println!("produced {} page views to {}", args.produce, args.topic);
    Ok(())
}

/// Every partition handled up to its end and committed.
fn caught_up(s: &StatsSnapshot) -> bool {
    !s.partitions.is_empty()
        && s.partitions
            .values()
            .all(|p| p.ready && p.queued == 0 && p.high_watermark >= 0 && p.committed_lag == 0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = parse_args()?;
    if args.produce > 0 {
        produce(&args).await?;
    }
    let sink = PageCounts::open(std::path::Path::new(&args.db))?;
    let (batches, rows) = (sink.batches.clone(), sink.rows.clone());
    let config = ConsumerConfig::builder(&args.brokers, &args.group, [&args.topic])
        .instance_id("page-counts-0")
        .batches(BatchSettings {
            max_records: args.batch,
            max_wait: Duration::from_millis(args.wait_ms),
        })
        .build()?;
    let consumer = StatefulConsumer::new(config, Utf8, Utf8, sink);
    let stats = consumer.stats();
    let started = Instant::now();
    let exit_when_idle = args.exit_when_idle;
    let shutdown = async move {
        let stop = kafka_stateful::shutdown_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = &mut stop => break,
            }
            if exit_when_idle && caught_up(&stats.snapshot()) {
                break;
            }
        }
    };
    consumer.run(shutdown).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let (batches, rows) = (
        batches.load(std::sync::atomic::Ordering::Relaxed),
        rows.load(std::sync::atomic::Ordering::Relaxed),
    );
    let db = std::path::Path::new(&args.db);
    let counts = PageCounts::counts(db)?;
    let offsets = PageCounts::offsets(db, &args.topic)?;
    println!();
    println!("summary");
    println!("  views written this run:   {rows} in {batches} batches (SQLite transactions), {:.0} per batch", rows as f64 / batches.max(1) as f64);
    println!(
        "  views in the database:    {} over {} pages",
        counts.values().sum::<u64>(),
        counts.len()
    );
    println!("  offsets stored with them: {offsets:?}");
    println!(
        "  elapsed:                  {elapsed:.1} s (from the start, including the group join)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::sink::PageCounts;
    use kafka_stateful::codec::Utf8;
    use kafka_stateful::testing::{TestDriver, TestRecord};
    use kafka_stateful::{BatchSettings, ConsumerConfig};

    #[tokio::test(flavor = "multi_thread")]
    async fn batches_land_in_sqlite_with_their_offsets_and_a_restart_skips_what_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counts.db");
        let config = || {
            ConsumerConfig::builder("unused:9092", "g", ["views"])
                .instance_id("i")
                .batches(BatchSettings::default())
                .build()
                .unwrap()
        };
        let views = |n: usize| {
            (0..n)
                .map(|i| TestRecord::new(format!("page-{}", i % 3), "u".to_string()))
                .collect::<Vec<_>>()
        };
        let sink = PageCounts::open(&path).unwrap();
        let mut d = TestDriver::new(config(), Utf8, Utf8, sink).await.unwrap();
        d.send_all(views(9)).await.unwrap();
        assert_eq!(PageCounts::counts(&path).unwrap()["page-0"], 3);
        assert_eq!(PageCounts::offsets(&path, "views").unwrap()[&0], 9);
        // A crash before the group commit: the records come again, the sink's stored offset
        // says they are in already.
        d.crash().await.unwrap();
        d.send_all(views(3)).await.unwrap();
        let counts = PageCounts::counts(&path).unwrap();
        assert_eq!(counts.values().sum::<u64>(), 12);
        assert_eq!(PageCounts::offsets(&path, "views").unwrap()[&0], 12);
    }
}
