//! As-of joins against a real broker: every order reads the customer version it was produced
//! against, on its first handling and on every replay after a SIGKILL.
//!
//! Customers are updated in rounds and orders produced between the rounds, with timestamps
//! taken from the clock at production (strictly increasing), so the version an order must
//! read is the latest update of its customer produced before it. Several rounds wait in the
//! topics before the first member starts (a backlog read after a table bootstrap that holds
//! the later versions); then a member in a child process (this binary re-run, see
//! `asof_child`) is SIGKILLed at random moments while more rounds are produced, and
//! restarted. The child logs every handling to its probe file; every line must name the
//! expected version, and every order must have been handled.
//!
//! `KS_ASOF_ROUNDS` (default 3) sets the kill rounds, `KS_ASOF_SEED` the seed (printed);
//! `KS_KEEP_DIR=1` keeps probe files and child logs.

#[path = "common/child.rs"]
mod child;
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use child::ChildTest;
use common::{require_broker, Probe, Rng};
use kafka_stateful::codec::Utf8;
use kafka_stateful::table::TableDef;
use kafka_stateful::{
    ConsumerConfig, ConsumerConfigBuilder, Handler, HandlerError, PartitionContext, Record,
    StatefulConsumer,
};
use rdkafka::producer::{FutureProducer, FutureRecord};

const PARTITIONS: i32 = 2;
const CUSTOMERS: usize = 12;
const ORDERS_PER_ROUND: usize = 150;
const BACKLOG_ROUNDS: usize = 4;
const DEFAULT_KILL_ROUNDS: u64 = 3;
const MAX_DELAY_MS: u64 = 1_200;

const CHILD: ChildTest = ChildTest {
    name: "asof_child",
    var: "KS_ASOF_CHILD",
};

fn customers_table(topic: &str) -> TableDef<String, String> {
    TableDef::new("customers", topic, Utf8, Utf8).versioned(Duration::from_secs(86_400))
}

/// Orders keyed by customer id (value: order id): logs `join <order> <version>` for every
/// handling, `-` when the customer had no version then.
struct Join {
    customers: TableDef<String, String>,
    probe: Arc<Probe>,
}

impl Handler<String, String> for Join {
    async fn handle(
        &self,
        r: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let customer = r.key.ok_or("no key")?;
        let order = r.value.ok_or("no value")?;
        let version = ctx.table(&self.customers)?.at_record_time(&customer)?;
        let version = version.unwrap_or_else(|| "-".to_string());
        self.probe.line(&format!("join {order} {version}"));
        Ok(())
    }
}

fn config(
    orders: &str,
    customers: &TableDef<String, String>,
    group: &str,
    dir: &str,
) -> ConsumerConfigBuilder {
    ConsumerConfig::builder(common::bootstrap(), group, [orders])
        .instance_id("asof-0")
        .session_timeout(Duration::from_secs(10))
        .commit_interval(Duration::from_millis(500))
        .revoke_timeout(Duration::from_secs(5))
        // An order waits until the table reader holds what the topic had at its time.
        .table_sync_wait(Duration::from_secs(2))
        .state_dir(dir)
        .table(customers)
}

/// The child's body; a no-op unless run as the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asof_child() {
    let Some(([orders, customers, group, dir], probe)) = CHILD.args::<4>() else {
        return;
    };
    let customers = customers_table(&customers);
    let config = config(&orders, &customers, &group, &dir).build().unwrap();
    let handler = Join { customers, probe };
    let consumer = StatefulConsumer::new(config, Utf8, Utf8, handler);
    consumer.run(std::future::pending()).await.unwrap();
}

/// Produces customer updates and orders with strictly increasing clock timestamps and
/// remembers the version each order must read.
struct Rounds {
    producer: FutureProducer,
    orders: String,
    customers: String,
    last_ts: i64,
    round: usize,
    next_order: usize,
    /// Customer → its current version (`-`: deleted or none yet).
    current: Vec<String>,
    /// Order id → the version it must read.
    expected: HashMap<String, String>,
    rng: Rng,
}

impl Rounds {
    fn ts(&mut self) -> i64 {
        self.last_ts = (common::now_ms() as i64).max(self.last_ts + 1);
        self.last_ts
    }

    async fn send(&mut self, topic: &str, key: &str, value: Option<&str>) -> i32 {
        let c: usize = key.trim_start_matches('c').parse().unwrap();
        let partition = (c % PARTITIONS as usize) as i32;
        let ts = self.ts();
        let mut record = FutureRecord::to(topic)
            .partition(partition)
            .key(key)
            .timestamp(ts);
        if let Some(v) = value {
            record = record.payload(v);
        }
        let topic = topic.to_string();
        let ack = self.producer.send_result(record).unwrap();
        ack.await
            .unwrap()
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
        partition
    }

    /// One round: every customer updated (customer 0 deleted every third round), then the
    /// orders of the round.
    async fn produce_round(&mut self) {
        let r = self.round;
        self.round += 1;
        for c in 0..CUSTOMERS {
            let key = format!("c{c}");
            let version = (c != 0 || r % 3 != 2).then(|| format!("c{c}-v{r}"));
            let topic = self.customers.clone();
            self.send(&topic, &key, version.as_deref()).await;
            self.current[c] = version.unwrap_or_else(|| "-".to_string());
        }
        for _ in 0..ORDERS_PER_ROUND {
            let c = self.rng.below(CUSTOMERS as u64) as usize;
            let order = format!("o{}", self.next_order);
            self.next_order += 1;
            let topic = self.orders.clone();
            self.send(&topic, &format!("c{c}"), Some(&order)).await;
            self.expected.insert(order, self.current[c].clone());
        }
    }
}

/// `(order, version)` of every handling logged in `dir`'s probe files.
fn handlings(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("probe-")
        {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let mut words = line.split(' ').skip(1);
            if words.next() == Some("join") {
                if let (Some(order), Some(version)) = (words.next(), words.next()) {
                    out.push((order.to_string(), version.to_string()));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_as_of_joins_read_the_version_each_order_was_produced_against() {
    require_broker!();
    if CHILD.in_child() {
        return;
    }
    common::init_tracing();
    let kill_rounds: u64 = std::env::var("KS_ASOF_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_KILL_ROUNDS);
    let (rng, seed) = Rng::from_env_or_clock("KS_ASOF_SEED");
    println!("as-of: seed {seed}, {kill_rounds} kill rounds");
    let orders = common::unique("asof-orders");
    let customers = common::unique("asof-customers");
    let group = common::unique("asof-group");
    common::create_topic(&orders, PARTITIONS).await;
    common::create_topic(&customers, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap().to_string();
    let mut rounds = Rounds {
        producer: common::producer_at(&common::bootstrap()),
        orders: orders.clone(),
        customers: customers.clone(),
        last_ts: 0,
        round: 0,
        next_order: 0,
        current: vec!["-".to_string(); CUSTOMERS],
        expected: HashMap::new(),
        rng,
    };
    let mut delays = Rng::from_seed(seed ^ 0x5eed);
    // A backlog: the first member's table bootstrap reads every later version first.
    for _ in 0..BACKLOG_ROUNDS {
        rounds.produce_round().await;
    }
    let args = [
        orders.as_str(),
        customers.as_str(),
        group.as_str(),
        state.as_str(),
    ];
    for k in 0..kill_rounds {
        let mut child = CHILD.spawn(dir.path(), &format!("{k}"), &args);
        let probe = child.probe.clone();
        // A live round while it runs (so there is always something to handle); the kill
        // lands at a random moment after its first handling, inside or after the round.
        let produce = rounds.produce_round();
        tokio::pin!(produce);
        let mut produced = false;
        let handles = common::wait_until(
            "the child handles an order",
            Duration::from_secs(60),
            || {
                std::fs::read_to_string(&probe)
                    .unwrap_or_default()
                    .contains(" join ")
            },
        );
        tokio::pin!(handles);
        loop {
            tokio::select! {
                () = &mut produce, if !produced => produced = true,
                () = &mut handles => break,
            }
        }
        let delay = Duration::from_millis(delays.below(MAX_DELAY_MS));
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut produce, if !produced => produced = true,
                () = &mut sleep => break,
            }
        }
        child.assert_alive(&format!("child {k}"));
        child.kill();
        println!(
            "round {k}: SIGKILL {delay:?} after its first handling (round produced: {produced})"
        );
        if !produced {
            produce.await;
        }
    }
    // A last member handles everything, with one more live round.
    let mut last = CHILD.spawn(dir.path(), "final", &args);
    rounds.produce_round().await;
    let ends = common::end_offsets(&orders, PARTITIONS);
    common::wait_until(
        "the last member commits every order",
        Duration::from_secs(120),
        || common::committed(&group, &orders, PARTITIONS) == ends,
    )
    .await;
    last.assert_alive("final child");
    last.kill();

    let handled = handlings(dir.path());
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut wrong = Vec::new();
    for (order, version) in &handled {
        *seen.entry(order).or_default() += 1;
        let want = &rounds.expected[order];
        if version != want {
            wrong.push(format!("{order} read {version}, produced against {want}"));
        }
    }
    let replays = handled.len() - seen.len();
    println!(
        "as-of: {} orders, {} handlings ({replays} replays), {} wrong",
        rounds.expected.len(),
        handled.len(),
        wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "{} of {} handlings read another version (seed {seed}):\n{}",
        wrong.len(),
        handled.len(),
        wrong[..wrong.len().min(20)].join("\n")
    );
    let missing: Vec<_> = rounds
        .expected
        .keys()
        .filter(|o| !seen.contains_key(o.as_str()))
        .collect();
    assert!(missing.is_empty(), "orders never handled: {missing:?}");
    if std::env::var("KS_KEEP_DIR").is_ok() {
        println!("kept {}", dir.keep().display());
    }
}

/// An update produced *after* an order but timestamped *before* it: the order's first
/// handling cannot have seen it (it was not in the topic yet), so it read the version before;
/// a later order, and any replay of the first one, read the late update — the topic's
/// history changed under it. Kafka Streams' versioned stores behave the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_out_of_order_update_is_read_by_later_orders_not_by_the_order_handled_before_it() {
    require_broker!();
    if CHILD.in_child() {
        return;
    }
    let orders = common::unique("asof-ooo-orders");
    let customers = common::unique("asof-ooo-customers");
    let group = common::unique("asof-ooo-group");
    common::create_topic(&orders, 1).await;
    common::create_topic(&customers, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let table = customers_table(&customers);
    let probe_path = dir.path().join("probe-ooo.log");
    let probe = Probe::create(&probe_path);
    let producer = common::producer_at(&common::bootstrap());
    let send = |topic: &str, key: &str, value: &str, ts: i64| {
        let record = FutureRecord::to(topic)
            .partition(0)
            .key(key)
            .payload(value)
            .timestamp(ts);
        let ack = producer.send_result(record).unwrap();
        async move { ack.await.unwrap().unwrap() }
    };
    // Clock timestamps: with `table_sync_wait`, an order waits until the table reader holds
    // what the topic had at the order's time, so each order below sees every update
    // produced before it.
    let t0 = common::now_ms() as i64;
    send(&customers, "c1", "v1", t0).await;
    send(&orders, "c1", "o1", t0 + 300).await;
    let config = config(
        &orders,
        &table,
        &group,
        dir.path().join("state").to_str().unwrap(),
    )
    .build()
    .unwrap();
    let handler = Join {
        customers: table.clone(),
        probe: probe.clone(),
    };
    let running = common::Running::start(StatefulConsumer::new(config, Utf8, Utf8, handler));
    let logged = |order: &str| {
        std::fs::read_to_string(&probe_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.split_once(&format!(" join {order} "))
                    .map(|(_, v)| v.to_string())
            })
            .collect::<Vec<_>>()
    };
    common::wait_until("o1 handled", Duration::from_secs(60), || {
        !logged("o1").is_empty()
    })
    .await;
    // Arrives after o1 was handled, timestamped before it.
    send(&customers, "c1", "late", t0 + 200).await;
    let o2_time = (common::now_ms() as i64).max(t0 + 400) + 1;
    send(&orders, "c1", "o2", o2_time).await;
    common::wait_until("o2 handled", Duration::from_secs(60), || {
        !logged("o2").is_empty()
    })
    .await;
    assert_eq!(
        logged("o1"),
        ["v1"],
        "o1 was handled before the late update existed"
    );
    assert_eq!(
        logged("o2"),
        ["late"],
        "o2 reads the latest version at or before its time"
    );
    running.stop().await.unwrap();
}
