//! Tables against a real broker: bootstrap before the first record, warm restarts that read
//! only the tail, time alignment (each case), tombstones, co-partitioning errors, and global
//! tables on two members, including a partition added to their topic.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{require_broker, Running};
use kafka_stateful::codec::Utf8;
use kafka_stateful::table::{TableDef, TableError};
use kafka_stateful::{
    ConsumerConfig, ConsumerConfigBuilder, Error, Handler, HandlerError, PartitionContext, Record,
    StatefulConsumer,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureRecord;
use rdkafka::ClientConfig;

const WAIT: Duration = Duration::from_secs(60);

/// Orders keyed by customer id (value: order id); remembers, per order, the customer the
/// table held for it (`None`: not found).
#[derive(Clone)]
struct Enrich {
    customers: TableDef<String, String>,
    seen: Arc<Mutex<HashMap<String, Option<String>>>>,
}

impl Enrich {
    fn new(customers: &TableDef<String, String>) -> Self {
        Self {
            customers: customers.clone(),
            seen: Arc::default(),
        }
    }

    fn seen(&self, order: &str) -> Option<Option<String>> {
        self.seen.lock().unwrap().get(order).cloned()
    }

    fn handled(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Handler<String, String> for Enrich {
    async fn handle(
        &self,
        r: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let customer = r.key.ok_or("no key")?;
        let name = ctx.table(&self.customers)?.get(&customer)?;
        self.seen
            .lock()
            .unwrap()
            .insert(r.value.ok_or("no value")?, name);
        Ok(())
    }
}

fn config(group: &str, orders: &str, dir: &Path, instance: &str) -> ConsumerConfigBuilder {
    ConsumerConfig::builder(common::bootstrap(), group, [orders])
        .instance_id(instance)
        .commit_interval(Duration::from_millis(200))
        .session_timeout(Duration::from_secs(10))
        .revoke_timeout(Duration::from_secs(5))
        .state_dir(dir)
}

/// Produces `(partition, key, value, timestamp)` records (a `None` value is a tombstone)
/// and waits for every ack.
async fn produce_at(topic: &str, records: &[(i32, String, Option<String>, i64)]) {
    let producer = common::producer_at(&common::bootstrap());
    let sends: Vec<_> = records
        .iter()
        .map(|(p, k, v, ts)| {
            let mut record = FutureRecord::to(topic).partition(*p).key(k).timestamp(*ts);
            if let Some(v) = v {
                record = record.payload(v);
            }
            producer.send_result(record).unwrap()
        })
        .collect();
    for s in sends {
        s.await.unwrap().unwrap();
    }
}

fn now_ms() -> i64 {
    common::now_ms() as i64
}

fn table_bootstrapped(stats: &kafka_stateful::Stats) -> u64 {
    stats
        .snapshot()
        .partitions
        .values()
        .map(|p| p.table_bootstrapped)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_table_is_read_before_the_first_order_and_a_warm_restart_reads_only_the_tail() {
    require_broker!();
    common::init_tracing();
    let (orders, customers_topic, group, dir) = (
        common::unique("orders"),
        common::unique("customers"),
        common::unique("g"),
        common::test_dir(),
    );
    common::create_topic(&orders, 2).await;
    common::create_topic(&customers_topic, 2).await;
    let t0 = now_ms();
    // 300 customers, then one order each: the table must be complete for the first order.
    let customers: Vec<_> = (0..300)
        .map(|i| (i % 2, format!("c{i}"), Some(format!("name-{i}")), t0))
        .collect();
    produce_at(&customers_topic, &customers).await;
    let order_records: Vec<_> = (0..300)
        .map(|i| (i % 2, format!("c{i}"), Some(format!("o{i}")), t0 + 1))
        .collect();
    produce_at(&orders, &order_records).await;

    let table = TableDef::new("customers", &customers_topic, Utf8, Utf8);
    let handler = Enrich::new(&table);
    let running = Running::start(StatefulConsumer::new(
        config(&group, &orders, dir.path(), "i-0")
            .table(&table)
            .build()
            .unwrap(),
        Utf8,
        Utf8,
        handler.clone(),
    ));
    common::wait_until("300 orders handled", WAIT, || handler.handled() == 300).await;
    for i in 0..300 {
        assert_eq!(
            handler.seen(&format!("o{i}")),
            Some(Some(format!("name-{i}"))),
            "order o{i} was handled before its customer was in the table"
        );
    }
    assert_eq!(table_bootstrapped(&running.stats), 300);
    running.stop().await.unwrap();

    // While it is down: 10 updates and a deletion, then an order for each.
    let t1 = now_ms();
    let mut changes: Vec<_> = (0..10)
        .map(|i| (i % 2, format!("c{i}"), Some(format!("renamed-{i}")), t1))
        .collect();
    changes.push((10 % 2, "c10".to_string(), None, t1));
    produce_at(&customers_topic, &changes).await;
    let later: Vec<_> = (0..11)
        .map(|i| (i % 2, format!("c{i}"), Some(format!("p{i}")), t1 + 1))
        .collect();
    produce_at(&orders, &later).await;
    let handler = Enrich::new(&table);
    let running = Running::start(StatefulConsumer::new(
        config(&group, &orders, dir.path(), "i-0")
            .table(&table)
            .build()
            .unwrap(),
        Utf8,
        Utf8,
        handler.clone(),
    ));
    common::wait_until("11 more orders handled", WAIT, || handler.handled() == 11).await;
    assert_eq!(
        table_bootstrapped(&running.stats),
        11,
        "a restart with intact state reads only the records added since"
    );
    for i in 0..10 {
        assert_eq!(
            handler.seen(&format!("p{i}")),
            Some(Some(format!("renamed-{i}")))
        );
    }
    assert_eq!(handler.seen("p10"), Some(None), "the tombstone deleted c10");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn updates_are_aligned_with_orders_by_timestamp_and_never_applied_retroactively() {
    require_broker!();
    common::init_tracing();
    let (orders, customers_topic, group, dir) = (
        common::unique("orders"),
        common::unique("customers"),
        common::unique("g"),
        common::test_dir(),
    );
    common::create_topic(&orders, 1).await;
    common::create_topic(&customers_topic, 1).await;
    let update = |name: &str, ts: i64| vec![(0, "c1".to_string(), Some(name.to_string()), ts)];
    let order = |id: &str, ts: i64| vec![(0, "c1".to_string(), Some(id.to_string()), ts)];
    produce_at(&customers_topic, &update("v1", now_ms())).await;
    let table = TableDef::new("customers", &customers_topic, Utf8, Utf8);
    let handler = Enrich::new(&table);
    let running = Running::start(StatefulConsumer::new(
        config(&group, &orders, dir.path(), "i-0")
            .table(&table)
            // Wait for the table reader to confirm it holds what the topic held at each
            // order's time: case (a) then does not depend on which reader fetches first.
            .table_sync_wait(Duration::from_secs(10))
            .build()
            .unwrap(),
        Utf8,
        Utf8,
        handler.clone(),
    ));
    let ready = |s: &kafka_stateful::Stats| s.snapshot().partitions.values().any(|p| p.ready);
    common::wait_until("partition ready", WAIT, || ready(&running.stats)).await;

    // (a) An update earlier than the order, produced before it: the order sees it.
    let t = now_ms();
    produce_at(&customers_topic, &update("v2", t)).await;
    produce_at(&orders, &order("a", t + 1)).await;
    common::wait_until("order a", WAIT, || handler.seen("a").is_some()).await;
    assert_eq!(
        handler.seen("a"),
        Some(Some("v2".into())),
        "(a) earlier update"
    );

    // (c) An update produced after an order with an earlier timestamp than that order: the
    // order keeps what it saw; the next order sees the update.
    let t = now_ms();
    produce_at(&orders, &order("c-first", t)).await;
    common::wait_until("order c-first", WAIT, || handler.seen("c-first").is_some()).await;
    produce_at(&customers_topic, &update("v3", t - 1)).await;
    produce_at(&orders, &order("c-next", t + 1)).await;
    common::wait_until("order c-next", WAIT, || handler.seen("c-next").is_some()).await;
    assert_eq!(
        handler.seen("c-first"),
        Some(Some("v2".into())),
        "(c) not retroactive"
    );
    assert_eq!(
        handler.seen("c-next"),
        Some(Some("v3".into())),
        "(c) applied next"
    );

    // (b) An update later than the order, even produced (and fetched) first: the order does
    // not see it; an order at or after its time does.
    let t = now_ms();
    produce_at(&customers_topic, &update("v4", t + 60_000)).await;
    produce_at(&orders, &order("b", t)).await;
    common::wait_until("order b", WAIT, || handler.seen("b").is_some()).await;
    assert_eq!(
        handler.seen("b"),
        Some(Some("v3".into())),
        "(b) later update"
    );
    produce_at(&orders, &order("b-later", t + 60_000)).await;
    common::wait_until("order b-later", WAIT, || handler.seen("b-later").is_some()).await;
    assert_eq!(handler.seen("b-later"), Some(Some("v4".into())));
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_topic_with_another_partition_count_fails_run_naming_both_topics() {
    require_broker!();
    common::init_tracing();
    let (orders, customers_topic, group, dir) = (
        common::unique("orders"),
        common::unique("customers"),
        common::unique("g"),
        common::test_dir(),
    );
    common::create_topic(&orders, 2).await;
    common::create_topic(&customers_topic, 3).await;
    let table = TableDef::new("customers", &customers_topic, Utf8, Utf8);
    let consumer = StatefulConsumer::new(
        config(&group, &orders, dir.path(), "i-0")
            .table(&table)
            .build()
            .unwrap(),
        Utf8,
        Utf8,
        Enrich::new(&table),
    );
    let result = tokio::time::timeout(WAIT, consumer.run(std::future::pending()))
        .await
        .expect("run() must fail fast");
    match result {
        Err(Error::Table(e @ TableError::CoPartitioning { .. })) => {
            let text = e.to_string();
            assert!(
                text.contains(&orders) && text.contains(&customers_topic),
                "{text}"
            );
            assert!(
                text.contains("has 3 partitions") && text.contains("has 2"),
                "{text}"
            );
        }
        other => panic!("expected a co-partitioning error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_global_table_on_two_members_sees_every_key_and_a_new_partition_of_its_topic() {
    require_broker!();
    common::init_tracing();
    let (orders, rates, group, dir) = (
        common::unique("orders"),
        common::unique("rates"),
        common::unique("g"),
        common::test_dir(),
    );
    common::create_topic(&orders, 4).await;
    common::create_topic(&rates, 2).await;
    let t0 = now_ms();
    // 50 keys in the global table, spread over both of its partitions.
    let entries: Vec<_> = (0..50)
        .map(|i| (i % 2, format!("k{i}"), Some(format!("rate-{i}")), t0))
        .collect();
    produce_at(&rates, &entries).await;
    let table = TableDef::new("rates", &rates, Utf8, Utf8);
    let members: Vec<(Enrich, Running)> = (0..2)
        .map(|m| {
            let handler = Enrich::new(&table);
            let cfg = config(
                &group,
                &orders,
                &dir.path().join(format!("m{m}")),
                &format!("i-{m}"),
            )
            .global_table(&table)
            .build()
            .unwrap();
            let running = Running::start(StatefulConsumer::new(cfg, Utf8, Utf8, handler.clone()));
            (handler, running)
        })
        .collect();
    common::wait_until("both members own partitions", WAIT, || {
        members.iter().all(|(_, r)| !r.assigned().is_empty())
            && members
                .iter()
                .map(|(_, r)| r.assigned().len())
                .sum::<usize>()
                == 4
    })
    .await;
    // Every order key is a table key; orders land on every input partition, so both members
    // look up keys from both table partitions.
    let order_records: Vec<_> = (0..200)
        .map(|i| (i % 4, format!("k{}", i % 50), Some(format!("o{i}")), t0 + 1))
        .collect();
    produce_at(&orders, &order_records).await;
    let total = || members.iter().map(|(h, _)| h.handled()).sum::<usize>();
    common::wait_until("200 orders handled", WAIT, || total() == 200).await;
    for (m, (handler, _)) in members.iter().enumerate() {
        assert!(handler.handled() > 0, "member {m} handled nothing");
        for (order, seen) in handler.seen.lock().unwrap().iter() {
            let i: usize = order[1..].parse().unwrap();
            assert_eq!(
                seen,
                &Some(format!("rate-{}", i % 50)),
                "member {m}, order {order}"
            );
        }
    }

    // A partition added to the table topic is read by every member — where the broker can
    // add partitions (nisshi 0.8.1 cannot; Apache Kafka can: the GitHub workflow runs this).
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .create()
        .unwrap();
    let added = admin
        .create_partitions(&[NewPartitions::new(&rates, 3)], &AdminOptions::new())
        .await;
    if let Err(rdkafka::error::KafkaError::AdminOp(
        rdkafka::types::RDKafkaErrorCode::UnsupportedFeature,
    )) = added
    {
        println!("the broker cannot add partitions (CreatePartitions): the new-partition part is not run here");
        for (_, running) in members {
            running.stop().await.unwrap();
        }
        return;
    }
    for r in added.unwrap() {
        r.unwrap();
    }
    produce_at(
        &rates,
        &[(
            2,
            "fresh".to_string(),
            Some("rate-new".to_string()),
            now_ms(),
        )],
    )
    .await;
    common::wait_until("every member reads the new partition", WAIT, || {
        members.iter().all(|(_, r)| {
            r.stats
                .snapshot()
                .global_tables
                .get("rates")
                .is_some_and(|g| g.partitions == 3 && g.applied >= 1)
        })
    })
    .await;
    let more: Vec<_> = (0..4)
        .map(|p| (p, "fresh".to_string(), Some(format!("n{p}")), now_ms()))
        .collect();
    produce_at(&orders, &more).await;
    common::wait_until("4 more orders handled", WAIT, || total() == 204).await;
    for p in 0..4 {
        let seen = members.iter().find_map(|(h, _)| h.seen(&format!("n{p}")));
        assert_eq!(seen, Some(Some("rate-new".into())), "order n{p}");
    }
    for (_, running) in members {
        running.stop().await.unwrap();
    }
}
