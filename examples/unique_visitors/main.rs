//! Distinct visitors per product page per minute: the job this library exists for.
//!
//! Input: page views `{page, user, ts}` (JSON, keyed by page) on `--topic`. One-minute
//! tumbling windows on the view's own `ts` (event time), with 10 s of grace for views that
//! arrive out of order; later views are late: counted, not applied. Per page and minute the
//! job keeps the set of users seen (one key per `(page, user)`, so a record costs O(1) state
//! writes however many visitors a page has) and the number of views. When a minute closes,
//! `{page, window_start, unique_visitors, views}` goes to `--output` and to the log, and the
//! window's state is deleted (one range deletion at the next flush; its changelog records
//! age out by time, and a restore never brings a closed window back).
//!
//! ```text
//! cargo run --example unique_visitors -- --brokers 127.0.0.1:9092 --produce 20000 --exit-when-idle
//! ```
//!
//! `--http 127.0.0.1:8080` serves the counts while it runs (`curl
//! 127.0.0.1:8080/pages/page-7`: the page's open minutes on this member; see `http.rs`).
//!
//! `--produce N` first fills the topic with N views over ten simulated minutes: 1000 pages, a
//! long tail of users, some views out of order and some late. Run it again with the same
//! instance id: it resumes with 0 changelog records restored. Delete the state directory and
//! run it again: it restores from the changelog and goes on with the same results.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use kafka_stateful::codec::{Json, Utf8};
use kafka_stateful::{
    ConsumerConfig, RebalanceListener, RestoreListener, StatefulConsumer, StatsSnapshot,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

mod http;
mod job;

use job::{produce_views, UniqueVisitors, View};

struct Args {
    brokers: String,
    topic: String,
    output: String,
    group: String,
    state_dir: String,
    produce: usize,
    exit_when_idle: bool,
    /// Serve the per-page counts over HTTP on this address.
    http: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        brokers: "127.0.0.1:9092".into(),
        topic: "page-views-ts".into(),
        output: "page-minutes".into(),
        group: "unique-visitors".into(),
        state_dir: "./unique-visitors-state".into(),
        produce: 0,
        exit_when_idle: false,
        http: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--brokers" => args.brokers = value()?,
            "--topic" => args.topic = value()?,
            "--output" => args.output = value()?,
            "--group" => args.group = value()?,
            "--state-dir" => args.state_dir = value()?,
            "--produce" => args.produce = value()?.parse()?,
            "--exit-when-idle" => args.exit_when_idle = true,
            "--http" => args.http = Some(value()?),
            other => anyhow::bail!(
                "unknown flag {other}; flags: --brokers --topic --output --group --state-dir --produce N --exit-when-idle --http ADDR"
            ),
        }
    }
    Ok(args)
}

/// Ten simulated minutes of views: 1000 pages (a few popular), a long tail of users, 5% out
/// of order within the grace period, 1% late.
async fn fill(args: &Args) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .create()?;
    for topic in [&args.topic, &args.output] {
        // An existing topic is fine; other errors surface when producing.
        let _ = admin
            .create_topics(
                &[NewTopic::new(topic, 4, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await?;
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("linger.ms", "10")
        .create()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    // A second `--produce` continues the topic's event time: starting at "now" again would
    // make most of its views late for the windows the first run's views left open.
    let start = latest_view_time(args)?.map_or(now, |latest| now.max(latest + 1));
    produce_views(&producer, &args.topic, args.produce as u64, start).await?;
    println!("produced {} views to {}", args.produce, args.topic);
    Ok(())
}

/// The latest event time among the last views of the topic's partitions, if it has any.
fn latest_view_time(args: &Args) -> anyhow::Result<Option<i64>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", "unique-visitors-generator")
        .set("enable.auto.commit", "false")
        .create()?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(&args.topic), timeout)?;
    let mut last = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(&args.topic, partition.id(), timeout)?;
        if high > low {
            last.add_partition_offset(&args.topic, partition.id(), Offset::Offset(high - 1))?;
        }
    }
    let (mut wanted, mut latest) = (last.count(), None);
    consumer.assign(&last)?;
    let deadline = Instant::now() + timeout;
    while wanted > 0 && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        wanted -= 1;
        if let Some(view) = message?
            .payload()
            .and_then(|v| serde_json::from_slice::<View>(v).ok())
        {
            latest = latest.max(Some(view.ts));
        }
    }
    Ok(latest)
}

/// Bytes of the files under `dir`.
fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => dir_size(&e.path()),
                _ => e.metadata().map_or(0, |m| m.len()),
            })
            .sum()
    })
}

/// `HH:MM` (UTC) of a window start in milliseconds since the epoch.
fn minute_of(millis: i64) -> String {
    let minutes = millis.div_euclid(60_000).rem_euclid(24 * 60);
    format!("{:02}:{:02} UTC", minutes / 60, minutes % 60)
}

/// Every partition is processed and committed up to its end.
fn caught_up(s: &StatsSnapshot) -> bool {
    !s.partitions.is_empty()
        && s.partitions
            .values()
            .all(|p| p.ready && p.queued == 0 && p.high_watermark >= 0 && p.committed_lag == 0)
}

/// A progress line: on a terminal rewritten in place, otherwise one line per report.
fn progress(s: &StatsSnapshot, started: Instant) {
    use std::io::{IsTerminal, Write};
    let lag: i64 = s.partitions.values().map(|p| p.committed_lag.max(0)).sum();
    let restoring: u64 = s
        .partitions
        .values()
        .filter(|p| !p.ready)
        .map(|p| p.restore_total.saturating_sub(p.restore_done))
        .sum();
    let handled: u64 = s.partitions.values().map(|p| p.handled).sum();
    let line = format!(
        "[{:>5.1}s] partitions {} | handled {handled} | lag {lag} | restoring {restoring} left | late {}",
        started.elapsed().as_secs_f64(),
        s.partitions.len(),
        s.partitions.values().map(|p| p.late).sum::<u64>(),
    );
    let mut out = std::io::stderr();
    if out.is_terminal() {
        let _ = write!(out, "\r{line}   ");
    } else {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

/// When the first partitions were assigned, and when the last restore ended: the time from
/// assignment to processing, restore included, as the consumer's listeners report it.
#[derive(Clone, Default)]
struct Readiness(Arc<Mutex<(Option<Instant>, Option<Instant>)>>);

impl Readiness {
    fn ready_after(&self) -> Option<Duration> {
        let (assigned, restored) = *self.0.lock().unwrap_or_else(|p| p.into_inner());
        Some(restored?.saturating_duration_since(assigned?))
    }
}

impl RebalanceListener for Readiness {
    fn on_assigned(&self, _partitions: &[(String, i32)]) {
        let mut times = self.0.lock().unwrap_or_else(|p| p.into_inner());
        times.0.get_or_insert_with(Instant::now);
    }
}

impl RestoreListener for Readiness {
    fn on_restore_end(&self, _topic: &str, _partition: i32, _restored: u64, _took: Duration) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).1 = Some(Instant::now());
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // The progress lines and the summary are the output; the log shows problems
                // unless RUST_LOG asks for more (e.g. RUST_LOG=info,kafka_stateful=debug).
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let started = Instant::now();
    let args = parse_args()?;
    if args.produce > 0 {
        fill(&args).await?;
    }
    let handler = UniqueVisitors::new(&args.output);
    let (closed, samples) = (handler.closed.clone(), handler.samples.clone());
    let config = ConsumerConfig::builder(&args.brokers, &args.group, [&args.topic])
        .instance_id("unique-visitors-0")
        .state_dir(&args.state_dir)
        .window(&handler.members)
        .window(&handler.counts)
        .commit_interval(Duration::from_secs(1))
        .build()?;
    // From the first assignment until the last partition's restore ended, as the listeners
    // saw them (not sampled).
    let readiness = Readiness::default();
    let consumer = StatefulConsumer::new(config, Utf8, Json::<View>::new(), handler)
        .with_rebalance_listener(readiness.clone())
        .with_restore_listener(readiness.clone());
    let stats = consumer.stats();
    if let Some(addr) = &args.http {
        // Reads the state while the consumer runs: GET /pages/<page>, GET /partitions.
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!(
            "serving per-page counts on http://{}/pages/<page>",
            listener.local_addr()?
        );
        let counts = UniqueVisitors::new(&args.output).counts;
        tokio::spawn(http::serve(listener, consumer.query(), counts));
    }
    let last = Arc::new(Mutex::new(StatsSnapshot::default()));
    let exit_when_idle = args.exit_when_idle;
    let shutdown = {
        let last = last.clone();
        async move {
            let mut ticks = 0u64;
            // Listening from now on (a signal between two turns of the loop is not lost).
            let stop = kafka_stateful::shutdown_signal();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    () = &mut stop => break,
                }
                let s = stats.snapshot();
                ticks += 1;
                let done = exit_when_idle && caught_up(&s);
                if ticks.is_multiple_of(4) || done {
                    progress(&s, started);
                }
                *last.lock().unwrap_or_else(|p| p.into_inner()) = s;
                if done {
                    break;
                }
            }
        }
    };
    consumer.run(shutdown).await?;
    let last = last.lock().unwrap_or_else(|p| p.into_inner());
    let restored: u64 = last.partitions.values().map(|p| p.restored_records).sum();
    let late: u64 = last.partitions.values().map(|p| p.late).sum();
    let handled: u64 = last.partitions.values().map(|p| p.handled).sum();
    println!();
    println!("summary");
    println!("  views handled this run:       {handled}");
    println!("  late views (not applied):     {late}");
    println!(
        "  page-minutes closed and sent: {}",
        closed.load(Ordering::Relaxed)
    );
    println!(
        "  changelog records restored at start: {restored} (ready {} after the assignment)",
        match readiness.ready_after() {
            Some(d) => format!("{:.2} s", d.as_secs_f64()),
            None => "-".to_string(),
        }
    );
    println!(
        "  state on disk:                {:.1} MB in {}",
        dir_size(std::path::Path::new(&args.state_dir)) as f64 / 1e6,
        args.state_dir
    );
    println!(
        "  elapsed:                      {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!("  busiest page-minutes (sent to {}):", args.output);
    for row in samples.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        println!(
            "    {:<16} {} : {} unique visitors, {} views",
            row.page,
            minute_of(row.window_start),
            row.unique_visitors,
            row.views
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use kafka_stateful::codec::{Json, Utf8};
    use kafka_stateful::testing::{TestDriver, TestRecord};
    use kafka_stateful::ConsumerConfig;

    use super::job::{PageMinute, UniqueVisitors, View};

    type Driver = TestDriver<Utf8, Json<View>, UniqueVisitors>;

    const MINUTE: i64 = 60_000;

    async fn driver() -> Driver {
        let handler = UniqueVisitors::new("page-minutes");
        let config = ConsumerConfig::builder("unused:9092", "unique-visitors", ["page-views"])
            .instance_id("test")
            .state_dir("unused")
            .window(&handler.members)
            .window(&handler.counts)
            .build()
            .unwrap();
        TestDriver::new(config, Utf8, Json::new(), handler)
            .await
            .unwrap()
    }

    /// A view of `page` by `user` at `ms` (its event time, not the Kafka timestamp).
    async fn view(d: &mut Driver, page: &str, user: &str, ms: i64) {
        let view = View {
            page: page.into(),
            user: user.into(),
            ts: ms,
        };
        d.send(TestRecord::new(page.to_string(), view).timestamp(0))
            .await
            .unwrap();
    }

    fn results(d: &Driver) -> Vec<PageMinute> {
        d.sent_to("page-minutes")
            .iter()
            .map(|r| serde_json::from_slice(r.value.as_ref().unwrap()).unwrap())
            .collect()
    }

    fn row(page: &str, minute: i64, unique_visitors: u64, views: u64) -> PageMinute {
        PageMinute {
            page: page.into(),
            window_start: minute * MINUTE,
            unique_visitors,
            views,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_minute_reports_distinct_visitors_and_views() {
        let mut d = driver().await;
        view(&mut d, "/a", "ada", 1_000).await;
        view(&mut d, "/a", "bob", 30_000).await;
        view(&mut d, "/a", "ada", 59_000).await;
        view(&mut d, "/b", "ada", 59_500).await;
        assert!(results(&d).is_empty(), "minute 0 is still open");
        // Stream time passes the end of minute 0 plus its 10 s of grace.
        view(&mut d, "/a", "cy", 70_000).await;
        assert_eq!(results(&d), vec![row("/a", 0, 2, 3), row("/b", 0, 1, 1)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn out_of_order_views_count_within_the_grace_and_late_ones_do_not() {
        let mut d = driver().await;
        view(&mut d, "/a", "ada", 50_000).await;
        view(&mut d, "/a", "bob", 65_000).await; // minute 1; minute 0 still in its grace
        view(&mut d, "/a", "cy", 59_000).await; // out of order: counts for minute 0
        view(&mut d, "/a", "ada", 71_000).await; // closes minute 0
        view(&mut d, "/a", "dan", 2_000).await; // late: minute 0 closed
        assert_eq!(d.late(), 1);
        view(&mut d, "/a", "eve", 2 * MINUTE + 11_000).await; // closes minute 1
        assert_eq!(results(&d), vec![row("/a", 0, 2, 2), row("/a", 1, 2, 2)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_and_a_lost_disk_change_no_result() {
        let mut d = driver().await;
        view(&mut d, "/a", "ada", 1_000).await;
        view(&mut d, "/a", "bob", 2_000).await;
        d.flush().await.unwrap();
        view(&mut d, "/a", "ada", 3_000).await;
        d.crash().await.unwrap(); // the unflushed view is delivered again
        d.lose_disk().await.unwrap(); // the state comes back from the changelog
        view(&mut d, "/a", "cy", 80_000).await;
        assert_eq!(results(&d), vec![row("/a", 0, 2, 3)]);
    }
}
