//! Tables through the broker-free test driver: enrichment, time alignment, tombstones, bad
//! records under each policy, global tables, and rebuilding from the topic.

use crate::codec::{Bincode, Utf8};
use crate::testing::{TestDriver, TestRecord};
use crate::{
    ConsumerConfig, ErrorPolicy, Handler, HandlerError, PartitionContext, Record, StoreDef,
};

use super::TableDef;

/// Orders keyed by customer id, value = order id; stores, per order id, the customer name
/// the order saw in the table ("-" for none).
#[derive(Clone)]
struct Enrich {
    customers: TableDef<String, String>,
    seen: StoreDef<String, String>,
}

impl Handler<String, String> for Enrich {
    async fn handle(
        &self,
        r: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let customer = r.key.ok_or("no key")?;
        let order = r.value.ok_or("no value")?;
        let name = ctx.table(&self.customers)?.get(&customer)?;
        let name = name.unwrap_or_else(|| "-".to_string());
        ctx.store(&self.seen)?.put(&order, &name)?;
        Ok(())
    }
}

fn defs() -> (TableDef<String, String>, StoreDef<String, String>) {
    (
        TableDef::new("customers", "customers", Utf8, Utf8),
        StoreDef::new("seen", Utf8, Bincode::new()),
    )
}

async fn driver(global: bool, policy: ErrorPolicy) -> TestDriver<Utf8, Utf8, Enrich> {
    let (customers, seen) = defs();
    let builder = ConsumerConfig::builder("unused:9092", "g", ["orders"])
        .instance_id("i")
        .state_dir("/nonexistent")
        .store(&seen)
        .error_policy(policy);
    let builder = match global {
        true => builder.global_table(&customers),
        false => builder.table(&customers),
    };
    let handler = Enrich { customers, seen };
    TestDriver::new(builder.build().unwrap(), Utf8, Utf8, handler)
        .await
        .unwrap()
}

fn customer(id: &str, name: &str, ts: i64) -> TestRecord<String, String> {
    TestRecord::new(id.to_string(), name.to_string()).timestamp(ts)
}

fn order(customer: &str, order: &str, ts: i64) -> TestRecord<String, String> {
    TestRecord::new(customer.to_string(), order.to_string()).timestamp(ts)
}

async fn seen(d: &mut TestDriver<Utf8, Utf8, Enrich>) -> Vec<(String, String)> {
    d.read(&defs().1).await.unwrap()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn updates_apply_in_timestamp_order_with_the_orders_and_tombstones_delete() {
    let mut d = driver(false, ErrorPolicy::Fail).await;
    let (customers, _) = defs();
    // Earlier than the order: applied before it.
    d.pipe_table(&customers, customer("c1", "Ada", 100))
        .unwrap();
    d.send(order("c1", "o1", 200)).await.unwrap();
    // Later than the next order: that order still sees Ada; the one after sees Grace.
    d.pipe_table(&customers, customer("c1", "Grace", 300))
        .unwrap();
    d.send(order("c1", "o2", 250)).await.unwrap();
    d.send(order("c1", "o3", 350)).await.unwrap();
    // A tombstone deletes the customer.
    d.pipe_table(
        &customers,
        TestRecord::tombstone("c1".to_string()).timestamp(400),
    )
    .unwrap();
    d.send(order("c1", "o4", 450)).await.unwrap();
    assert_eq!(
        seen(&mut d).await,
        pairs(&[("o1", "Ada"), ("o2", "Ada"), ("o3", "Grace"), ("o4", "-")])
    );
    assert!(d.read_table(&customers).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_reads_only_the_tail_and_a_lost_disk_reads_the_whole_topic() {
    let mut d = driver(false, ErrorPolicy::Fail).await;
    let (customers, _) = defs();
    for i in 0..10 {
        d.pipe_table(&customers, customer(&format!("c{i}"), &format!("n{i}"), 10))
            .unwrap();
    }
    let expected: Vec<(String, String)> = (0..10)
        .map(|i| (format!("c{i}"), format!("n{i}")))
        .collect();
    assert_eq!(d.read_table(&customers).await.unwrap(), expected);
    d.crash().await.unwrap();
    assert_eq!(d.table_bootstrapped(), 0, "intact state: nothing to read");
    d.lose_disk().await.unwrap();
    assert_eq!(
        d.table_bootstrapped(),
        10,
        "no local state: the whole topic"
    );
    assert_eq!(d.read_table(&customers).await.unwrap(), expected);
    d.send(order("c3", "o1", 20)).await.unwrap();
    assert_eq!(seen(&mut d).await, pairs(&[("o1", "n3")]));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_table_records_follow_the_error_policy() {
    let (customers, _) = defs();
    let bad = Some(vec![0xff, 0xfe]); // not UTF-8

    let mut d = driver(false, ErrorPolicy::Skip).await;
    d.pipe_table_raw("customers", Some(b"c1".to_vec()), bad.clone(), Some(1))
        .unwrap();
    d.pipe_table(&customers, customer("c2", "Bob", 2)).unwrap();
    d.send(order("c2", "o1", 5)).await.unwrap();
    assert_eq!(d.skipped(), 1);
    assert_eq!(
        d.read_table(&customers).await.unwrap(),
        pairs(&[("c2", "Bob")])
    );
    assert_eq!(seen(&mut d).await, pairs(&[("o1", "Bob")]));

    let mut d = driver(false, ErrorPolicy::DeadLetter("dlq".into())).await;
    d.pipe_table_raw("customers", Some(b"c1".to_vec()), bad.clone(), Some(1))
        .unwrap();
    assert!(d.read_table(&customers).await.unwrap().is_empty());
    let dead = d.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value, bad);
    assert!(dead[0]
        .headers
        .contains(&("ks.error.topic".to_string(), b"customers".to_vec())));

    let mut d = driver(false, ErrorPolicy::Fail).await;
    d.pipe_table_raw("customers", Some(b"c1".to_vec()), bad, Some(1))
        .unwrap();
    let error = d.send(order("c1", "o1", 5)).await.unwrap_err().to_string();
    assert!(
        error.contains("customers/0@0"),
        "the error names the table record: {error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_global_table_is_read_at_once_and_kept_across_restarts() {
    let mut d = driver(true, ErrorPolicy::Fail).await;
    let (customers, _) = defs();
    d.pipe_table(&customers, customer("c1", "Ada", 100))
        .unwrap();
    d.send(order("c1", "o1", 50)).await.unwrap();
    d.crash().await.unwrap();
    d.send(order("c1", "o2", 60)).await.unwrap();
    assert_eq!(seen(&mut d).await, pairs(&[("o1", "Ada"), ("o2", "Ada")]));
    assert_eq!(
        d.read_table(&customers).await.unwrap(),
        pairs(&[("c1", "Ada")])
    );
}
