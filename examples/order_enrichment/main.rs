//! Order enrichment: an order service that keeps the customers of the partitions it owns
//! locally — a co-partitioned table.
//!
//! Input: orders `{id, customer, amount_cents, ts}` (JSON, keyed by customer id) on
//! `--orders`. The customers `{id, name, tier}` (JSON, keyed by id) are on the compacted
//! topic `--customers`, which has as many partitions as the orders and is produced with the
//! same partitioner, so customer `c` and its orders share a partition number. For each
//! orders partition it owns, the job keeps that partition of the customers topic in RocksDB
//! (read to its end before the partition's first order; then kept up to date, each update
//! applied before the orders with a later timestamp). Each order is looked up there; with
//! its customer it adds to the customer's running total (a store) and goes to `--output`
//! with name, tier and total; without one (unknown or deleted) it goes there with
//! `customer_name: null` and is counted.
//!
//! ```text
//! cargo run --example order_enrichment -- --brokers 127.0.0.1:9092 --produce 20000 --exit-when-idle
//! ```
//!
//! `--produce N` first publishes 2000 customers, then N orders, with tier changes and
//! deletions between them. Run it again with the same instance id: it reads only the table
//! records added since (none without `--produce`). Delete the state directory and run it
//! again: it reads the whole customers topic again, and the totals come back from their
//! changelog. The first run reads the table to its end before the first order, so orders
//! produced before a customer's change see it too; time alignment shows on changes that
//! arrive while the job runs.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use kafka_stateful::codec::{Json, Utf8};
use kafka_stateful::{ConsumerConfig, RebalanceListener, StatefulConsumer, StatsSnapshot};

mod job;

use job::{Order, OrderEnrichment};

struct Args {
    brokers: String,
    orders: String,
    customers: String,
    output: String,
    group: String,
    state_dir: String,
    produce: u64,
    exit_when_idle: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        brokers: "127.0.0.1:9092".into(),
        orders: "orders".into(),
        customers: "customers".into(),
        output: "enriched-orders".into(),
        group: "order-enrichment".into(),
        state_dir: "./order-enrichment-state".into(),
        produce: 0,
        exit_when_idle: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--brokers" => args.brokers = value()?,
            "--orders" => args.orders = value()?,
            "--customers" => args.customers = value()?,
            "--output" => args.output = value()?,
            "--group" => args.group = value()?,
            "--state-dir" => args.state_dir = value()?,
            "--produce" => args.produce = value()?.parse()?,
            "--exit-when-idle" => args.exit_when_idle = true,
            other => anyhow::bail!(
                "unknown flag {other}; flags: --brokers --orders --customers --output --group --state-dir --produce N --exit-when-idle"
            ),
        }
    }
    Ok(args)
}

/// The topics, then customers and orders (see [`job::produce`]).
async fn fill(args: &Args) -> anyhow::Result<()> {
    let topics = [&*args.customers, &args.orders, &args.output];
    let p = job::produce(&args.brokers, topics, args.produce).await?;
    println!(
        "produced {} customers, {} tier changes and {} deletions to {}, {} orders to {}",
        p.customers, p.updates, p.deletions, args.customers, p.orders, args.orders
    );
    Ok(())
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

/// Every partition is processed and committed up to its end.
fn caught_up(s: &StatsSnapshot) -> bool {
    !s.partitions.is_empty()
        && s.partitions
            .values()
            .all(|p| p.ready && p.queued == 0 && p.high_watermark >= 0 && p.committed_lag == 0)
}

/// A progress line: on a terminal rewritten in place, otherwise one line per report.
fn progress(s: &StatsSnapshot, started: Instant, without_customer: u64) {
    use std::io::{IsTerminal, Write};
    let lag: i64 = s.partitions.values().map(|p| p.committed_lag.max(0)).sum();
    let bootstrapping: u64 = s
        .partitions
        .values()
        .filter(|p| !p.ready)
        .map(|p| p.table_bootstrap_remaining)
        .sum();
    let handled: u64 = s.partitions.values().map(|p| p.handled).sum();
    let line = format!(
        "[{:>5.1}s] partitions {} | handled {handled} | lag {lag} | table bootstrap {bootstrapping} left | without customer {without_customer}",
        started.elapsed().as_secs_f64(),
        s.partitions.len(),
    );
    let mut out = std::io::stderr();
    if out.is_terminal() {
        let _ = write!(out, "\r{line}   ");
    } else {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

/// Notes when partitions were first assigned (the start of "ready after the assignment").
#[derive(Clone, Default)]
struct FirstAssignment(Arc<OnceLock<Instant>>);

impl RebalanceListener for FirstAssignment {
    fn on_assigned(&self, partitions: &[(String, i32)]) {
        if !partitions.is_empty() {
            let _ = self.0.set(Instant::now());
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,order_enrichment=info".into()),
        )
        .init();
    let started = Instant::now();
    let args = parse_args()?;
    if args.produce > 0 {
        fill(&args).await?;
    }
    let handler = OrderEnrichment::new(&args.customers, &args.output);
    let (handled, without, top) = (
        handler.handled.clone(),
        handler.without_customer.clone(),
        handler.top.clone(),
    );
    let older = handler.older_version.clone();
    let config = ConsumerConfig::builder(&args.brokers, &args.group, [&args.orders])
        .instance_id("order-enrichment-0")
        .state_dir(&args.state_dir)
        .table(&handler.customers)
        .store(&handler.totals)
        .commit_interval(Duration::from_secs(1))
        .build()?;
    let assigned = FirstAssignment::default();
    let consumer = StatefulConsumer::new(config, Utf8, Json::<Order>::new(), handler)
        .with_rebalance_listener(assigned.clone());
    let stats = consumer.stats();
    let last = Arc::new(Mutex::new(StatsSnapshot::default()));
    let exit_when_idle = args.exit_when_idle;
    // From the first assignment until every partition has its table and is processing.
    let ready_after = Arc::new(OnceLock::<Duration>::new());
    // When the first orders were seen handled and when the count last grew (sampled).
    let handling = Arc::new(Mutex::new(None::<(Instant, u64, Instant, u64)>));
    let shutdown = {
        let (last, ready_after, without) = (last.clone(), ready_after.clone(), without.clone());
        let (handling, counted) = (handling.clone(), handled.clone());
        async move {
            let mut ticks = 0u64;
            // Listening from now on (a signal between two turns of the loop is not lost).
            let stop = kafka_stateful::shutdown_signal();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    () = &mut stop => break,
                }
                let s = stats.snapshot();
                ticks += 1;
                let n = counted.load(Ordering::Relaxed);
                let mut h = handling.lock().unwrap_or_else(|p| p.into_inner());
                match h.as_mut() {
                    None if n > 0 => *h = Some((Instant::now(), n, Instant::now(), n)),
                    Some((_, _, grew, seen)) if n > *seen => (*grew, *seen) = (Instant::now(), n),
                    _ => {}
                }
                drop(h);
                if let Some(at) = assigned.0.get() {
                    if !s.partitions.is_empty() && s.partitions.values().all(|p| p.ready) {
                        let _ = ready_after.set(at.elapsed());
                    }
                }
                let done = exit_when_idle && caught_up(&s);
                if ticks.is_multiple_of(20) || done {
                    progress(&s, started, without.load(Ordering::Relaxed));
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
    let bootstrapped: u64 = last.partitions.values().map(|p| p.table_bootstrapped).sum();
    let (handled, without) = (
        handled.load(Ordering::Relaxed),
        without.load(Ordering::Relaxed),
    );
    // Sampled every 50 ms.
    let ready = ready_after.get().map(|d| d.as_secs_f64());
    let state = dir_size(std::path::Path::new(&args.state_dir)) as f64 / 1e6;
    println!();
    println!("summary");
    println!("  orders handled this run:      {handled}");
    println!("  orders without customer:      {without}");
    println!(
        "  joined as of the order time:  {handled} ({} read an older customer version than the latest, which `get` would have joined)",
        older.load(Ordering::Relaxed)
    );
    println!("  table records bootstrapped:   {bootstrapped} (customer records read before the first order: the whole topic with a fresh state directory, those added since with an intact one)");
    match ready {
        Some(s) => println!("  ready after the assignment:   {s:.2} s"),
        None => println!("  ready after the assignment:   -"),
    }
    // From the sample that first saw orders handled to the one that saw the last (50 ms
    // apart): a lower bound on the rate for short runs.
    if let Some((first, at_first, grew, seen)) = *handling.lock().unwrap_or_else(|p| p.into_inner())
    {
        if seen > at_first {
            let span = (grew - first).as_secs_f64();
            let rate = (seen - at_first) as f64 / span;
            println!("  handled at:                   {rate:.0} orders/s");
        }
    }
    println!(
        "  state on disk:                {state:.1} MB in {}",
        args.state_dir
    );
    println!(
        "  elapsed:                      {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!("  top customers by total:  (of those that ordered in this run)");
    for customer in top.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        println!("    {customer}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use kafka_stateful::codec::{Json, Utf8};
    use kafka_stateful::table::TableDef;
    use kafka_stateful::testing::{TestDriver, TestRecord};
    use kafka_stateful::{ConsumerConfig, StoreDef};

    use super::job::{Customer, EnrichedOrder, Order, OrderEnrichment};

    /// The job on the broker-free driver, and its table, store and counter.
    struct Job {
        d: TestDriver<Utf8, Json<Order>, OrderEnrichment>,
        customers: TableDef<String, Customer>,
        totals: StoreDef<String, u64>,
        without_customer: Arc<AtomicU64>,
    }

    async fn job() -> Job {
        let handler = OrderEnrichment::new("customers", "enriched-orders");
        let (customers, totals) = (handler.customers.clone(), handler.totals.clone());
        let without_customer = handler.without_customer.clone();
        let config = ConsumerConfig::builder("unused:9092", "order-enrichment", ["orders"])
            .instance_id("test")
            .state_dir("unused")
            .table(&customers)
            .store(&totals)
            .build()
            .unwrap();
        let d = TestDriver::new(config, Utf8, Json::new(), handler).await;
        let d = d.unwrap();
        Job {
            d,
            customers,
            totals,
            without_customer,
        }
    }

    fn customer(id: &str, name: &str, tier: &str) -> Customer {
        let (id, name, tier) = (id.into(), name.into(), tier.into());
        Customer { id, name, tier }
    }

    impl Job {
        /// Publishes `c` (or, with `None`, a tombstone for `id`) to the customers topic.
        fn publish(&mut self, id: &str, c: Option<Customer>, ts: i64) {
            let record = match c {
                Some(c) => TestRecord::new(id.to_string(), c),
                None => TestRecord::tombstone(id.to_string()),
            };
            let record = record.timestamp(ts);
            self.d.pipe_table(&self.customers, record).unwrap();
        }

        async fn order(&mut self, id: &str, customer: &str, amount_cents: u64, ts: i64) {
            let (id, customer) = (id.to_string(), customer.to_string());
            let record = TestRecord::new(
                customer.clone(),
                Order {
                    id,
                    customer,
                    amount_cents,
                    ts,
                },
            );
            self.d.send(record.timestamp(ts)).await.unwrap();
        }

        /// Every enriched order sent: `"id: name, tier, total"`, or `"id: -"` (no customer).
        fn sent(&self) -> Vec<String> {
            let sent = self.d.sent_to("enriched-orders");
            let decode = |v: &Option<Vec<u8>>| -> EnrichedOrder {
                serde_json::from_slice(v.as_deref().unwrap()).unwrap()
            };
            let show = |e: EnrichedOrder| match (e.customer_name, e.tier, e.customer_total_cents) {
                (Some(name), Some(tier), Some(total)) => {
                    format!("{}: {name}, {tier}, {total}", e.id)
                }
                _ => format!("{}: -", e.id),
            };
            sent.iter().map(|r| show(decode(&r.value))).collect()
        }

        async fn totals(&mut self) -> Vec<(String, u64)> {
            self.d.read(&self.totals).await.unwrap()
        }
    }

    fn totals(items: &[(&str, u64)]) -> Vec<(String, u64)> {
        items.iter().map(|(c, t)| (c.to_string(), *t)).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_order_is_enriched_with_its_customer_and_the_totals_add_up() {
        let mut j = job().await;
        j.publish("c1", Some(customer("c1", "Ada Lovelace", "gold")), 10);
        j.publish("c2", Some(customer("c2", "Alan Turing", "bronze")), 10);
        j.order("o1", "c1", 1_000, 20).await;
        j.order("o2", "c2", 500, 21).await;
        j.order("o3", "c1", 250, 22).await;
        let expected = [
            "o1: Ada Lovelace, gold, 1000",
            "o2: Alan Turing, bronze, 500",
            "o3: Ada Lovelace, gold, 1250",
        ];
        assert_eq!(j.sent(), expected);
        assert_eq!(j.totals().await, totals(&[("c1", 1_250), ("c2", 500)]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_order_of_a_deleted_customer_is_sent_without_customer_and_not_totalled() {
        let mut j = job().await;
        j.publish("c1", Some(customer("c1", "Ada Lovelace", "gold")), 10);
        j.order("o1", "c1", 1_000, 20).await;
        j.publish("c1", None, 30);
        j.order("o2", "c1", 700, 40).await;
        j.order("o3", "c9", 300, 41).await; // never a customer
        assert_eq!(j.sent(), ["o1: Ada Lovelace, gold, 1000", "o2: -", "o3: -"]);
        assert_eq!(j.without_customer.load(Ordering::Relaxed), 2);
        assert_eq!(j.totals().await, totals(&[("c1", 1_000)]));
        assert!(j.d.read_table(&j.customers).await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_update_earlier_than_an_order_is_seen_by_it_and_a_later_one_is_not() {
        let mut j = job().await;
        j.publish("c1", Some(customer("c1", "Ada Lovelace", "bronze")), 10);
        j.publish("c1", Some(customer("c1", "Ada Lovelace", "silver")), 100); // before o1
        j.publish("c1", Some(customer("c1", "Ada King", "gold")), 300); // after o1
        j.order("o1", "c1", 1_000, 200).await;
        j.order("o2", "c1", 1_000, 300).await; // at the update's time: sees it
        let expected = ["o1: Ada Lovelace, silver, 1000", "o2: Ada King, gold, 2000"];
        assert_eq!(j.sent(), expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_and_a_lost_disk_change_no_total() {
        let mut j = job().await;
        let ada = customer("c1", "Ada Lovelace", "gold");
        j.publish("c1", Some(ada.clone()), 10);
        j.order("o1", "c1", 1_000, 20).await;
        j.order("o2", "c1", 2_000, 30).await;
        j.d.flush().await.unwrap();
        j.order("o3", "c1", 300, 40).await;
        j.d.crash().await.unwrap(); // o3 was not durable: it is handled again
        j.d.lose_disk().await.unwrap(); // totals from their changelog, table from its topic
        assert_eq!(
            j.d.table_bootstrapped(),
            1,
            "the customers topic is read again"
        );
        j.order("o4", "c1", 40, 50).await;
        // Output is at-least-once: o3 may be sent twice, never with another total.
        let mut sent = j.sent();
        sent.dedup();
        let expected = [
            "o1: Ada Lovelace, gold, 1000",
            "o2: Ada Lovelace, gold, 3000",
            "o3: Ada Lovelace, gold, 3300",
            "o4: Ada Lovelace, gold, 3340",
        ];
        assert_eq!(sent, expected);
        assert_eq!(j.totals().await, totals(&[("c1", 3_340)]));
        assert_eq!(
            j.d.read_table(&j.customers).await.unwrap(),
            [("c1".to_string(), ada)]
        );
    }
}
