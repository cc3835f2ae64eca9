//! The order-enrichment job itself: its records, its handler, and the customers and orders
//! it generates.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_stateful::codec::{Bincode, Json, Utf8};
use kafka_stateful::table::TableDef;
use kafka_stateful::{Handler, HandlerError, Output, PartitionContext, Record, StoreDef};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

/// A customer: the value of the compacted customers topic, keyed by `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    pub id: String,
    pub name: String,
    /// "gold", "silver" or "bronze".
    pub tier: String,
}

/// An order, keyed by its customer's id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub customer: String,
    pub amount_cents: u64,
    /// Milliseconds since the epoch (also the record's timestamp).
    pub ts: i64,
}

/// An order with what the table held for its customer when it was handled: the customer's
/// fields and running total, or `None` when the customer was unknown or deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrichedOrder {
    pub id: String,
    pub customer: String,
    pub amount_cents: u64,
    pub ts: i64,
    pub customer_name: Option<String>,
    pub tier: Option<String>,
    /// The customer's total of all orders so far, this one included.
    pub customer_total_cents: Option<u64>,
}

/// A customer's total, for the summary.
#[derive(Debug, Clone, PartialEq)]
pub struct TopCustomer {
    pub id: String,
    pub name: String,
    pub tier: String,
    pub total_cents: u64,
}

/// Enriches each order with its customer from the co-partitioned `customers` table and
/// keeps a running total per customer.
pub struct OrderEnrichment {
    pub customers: TableDef<String, Customer>,
    pub totals: StoreDef<String, u64>,
    output: Output<String, EnrichedOrder>,
    /// Orders handled.
    pub handled: Arc<AtomicU64>,
    /// Orders whose customer was not in the table (unknown or deleted).
    pub without_customer: Arc<AtomicU64>,
    /// Orders whose customer as of the order's time differs from the member's latest copy
    /// (what a latest-value `get` would have joined them with).
    pub older_version: Arc<AtomicU64>,
    /// The five customers with the highest totals among those that ordered in this run.
    pub top: Arc<Mutex<Vec<TopCustomer>>>,
}

impl std::fmt::Display for TopCustomer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (id, name, tier, c) = (&self.id, &self.name, &self.tier, self.total_cents);
        write!(f, "{id:<6} {name:<18} {tier:<6} {}.{:02}", c / 100, c % 100)
    }
}

impl OrderEnrichment {
    pub fn new(customers_topic: &str, output_topic: &str) -> Self {
        Self {
            // The producer writes keys as UTF-8 and values as JSON: the same codecs here.
            // Versioned: each order joins the customer as it was at the order's time, on
            // its first handling and on any replay; a month of history is kept.
            customers: TableDef::new("customers", customers_topic, Utf8, Json::new())
                .versioned(Duration::from_secs(30 * 86_400)),
            totals: StoreDef::new("totals", Utf8, Bincode::new()),
            output: Output::new(output_topic, Utf8, Json::new()),
            handled: Arc::default(),
            without_customer: Arc::default(),
            older_version: Arc::default(),
            top: Arc::default(),
        }
    }

    fn rank(&self, customer: &Customer, total_cents: u64) {
        let mut top = self.top.lock().unwrap_or_else(|p| p.into_inner());
        top.retain(|t| t.id != customer.id);
        top.push(TopCustomer {
            id: customer.id.clone(),
            name: customer.name.clone(),
            tier: customer.tier.clone(),
            total_cents,
        });
        top.sort_by(|a, b| b.total_cents.cmp(&a.total_cents).then(a.id.cmp(&b.id)));
        top.truncate(5);
    }
}

impl Handler<String, Order> for OrderEnrichment {
    async fn handle(
        &self,
        record: Record<String, Order>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        self.handled.fetch_add(1, Ordering::Relaxed);
        let Some(order) = record.value else {
            return Ok(());
        };
        // The customer as of the order's timestamp, wherever that version was read from.
        let table = ctx.table(&self.customers)?;
        let customer = table.at_record_time(&order.customer)?;
        if customer != table.get(&order.customer)? {
            self.older_version.fetch_add(1, Ordering::Relaxed);
        }
        let mut enriched = EnrichedOrder {
            id: order.id,
            customer: order.customer,
            amount_cents: order.amount_cents,
            ts: order.ts,
            customer_name: None,
            tier: None,
            customer_total_cents: None,
        };
        match customer {
            Some(customer) => {
                let mut totals = ctx.store(&self.totals)?;
                let total = totals.get(&enriched.customer)?.unwrap_or(0) + order.amount_cents;
                totals.put(&enriched.customer, &total)?;
                self.rank(&customer, total);
                enriched.customer_name = Some(customer.name);
                enriched.tier = Some(customer.tier);
                enriched.customer_total_cents = Some(total);
            }
            None => {
                self.without_customer.fetch_add(1, Ordering::Relaxed);
            }
        }
        ctx.send(&self.output, Some(&enriched.customer), Some(&enriched))?;
        Ok(())
    }
}

/// Customers `c0..c1999`.
pub const CUSTOMERS: u64 = 2_000;
const TIERS: [&str; 3] = ["gold", "silver", "bronze"];
const FIRST: [&str; 8] = [
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken",
];
const LAST: [&str; 8] = [
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
];

/// A well-mixed 64-bit hash (splitmix64's finalizer).
fn mix(x: u64) -> u64 {
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Customer `i` as first published: its name and tier follow from its id.
pub fn generated_customer(i: u64) -> Customer {
    let r = mix(i);
    Customer {
        id: format!("c{i}"),
        name: format!("{} {}", FIRST[r as usize % 8], LAST[(r >> 8) as usize % 8]),
        tier: TIERS[(r >> 16) as usize % 3].to_string(),
    }
}

/// Order `i` of a run that started at `start` (ms): ids unique per run, a few customers
/// order much more than the rest, 5.00 to 499.99.
pub fn generated_order(i: u64, start: i64) -> Order {
    let r = mix(i ^ (start as u64).rotate_left(32));
    let c = (r >> 8) % CUSTOMERS;
    Order {
        id: format!("o{start}-{i}"),
        customer: format!("c{}", c * c / CUSTOMERS),
        amount_cents: 500 + (r >> 32) % 49_500,
        ts: start + 1 + i as i64,
    }
}

/// A record's JSON.
fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("a record encodes")
}

/// What [`produce_orders`] produced.
#[derive(Debug, Default)]
pub struct Produced {
    pub customers: u64,
    pub updates: u64,
    pub deletions: u64,
    pub orders: u64,
}

/// Sends records and waits for their acknowledgements, at most 50 000 in flight (within
/// librdkafka's default local queue).
struct Sender<'a> {
    producer: &'a FutureProducer,
    pending: Vec<DeliveryFuture>,
}

impl Sender<'_> {
    /// A record with an explicit timestamp; `None` is a tombstone.
    async fn send(
        &mut self,
        topic: &str,
        key: &str,
        value: Option<Vec<u8>>,
        ts: i64,
    ) -> Result<(), KafkaError> {
        let mut record = FutureRecord::<str, [u8]>::to(topic).key(key).timestamp(ts);
        if let Some(value) = &value {
            record = record.payload(value);
        }
        let delivery = self.producer.send_result(record).map_err(|(e, _)| e)?;
        self.pending.push(delivery);
        if self.pending.len() >= 50_000 {
            self.settle().await?;
        }
        Ok(())
    }

    async fn settle(&mut self) -> Result<(), KafkaError> {
        for delivery in futures::future::join_all(self.pending.drain(..)).await {
            delivery
                .map_err(|_| KafkaError::Canceled)?
                .map_err(|(e, _)| e)?;
        }
        Ok(())
    }
}

/// Creates `[customers, orders, output]` (4 partitions each, customers compacted; existing
/// ones are kept), then produces every customer and `n` orders (see [`produce_orders`]),
/// starting at the current time: a second run continues with new order ids.
pub async fn produce(brokers: &str, topics: [&str; 3], n: u64) -> anyhow::Result<Produced> {
    let [customers, orders, output] = topics;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new = |topic| NewTopic::new(topic, 4, TopicReplication::Fixed(1));
    let topics = [
        new(customers).set("cleanup.policy", "compact"),
        new(orders),
        new(output),
    ];
    // An existing topic is fine; other errors surface when producing (and a partition count
    // that differs from the orders' fails `run()` with TableError::CoPartitioning).
    let _ = admin.create_topics(&topics, &AdminOptions::new()).await?;
    // One producer, so one partitioner for customers and orders: librdkafka's default
    // (consistent_random, CRC32 of the key). A customer and its orders land in the same
    // partition number. Were the customers produced by a Java client (murmur2), this producer
    // would need `partitioner=murmur2_random` to match it.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "10")
        .create()?;
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    Ok(produce_orders(&producer, customers, orders, n, start).await?)
}

/// Publishes every customer (timestamp `start`; again on each run, which brings deleted ones
/// back), then `n` orders (timestamps `start + 1`, `start + 2`, …: one simulated millisecond
/// apart, ahead of the wall clock for large `n`); after each tenth of the orders but the last, 20 customers change tier
/// and 5 are deleted (tombstones), timestamped with the next order's time (so that order and
/// the following ones are the first to see the change). Each key goes to the partition the
/// producer's partitioner picks: use one producer configuration for both topics.
pub async fn produce_orders(
    producer: &FutureProducer,
    customers_topic: &str,
    orders_topic: &str,
    n: u64,
    start: i64,
) -> Result<Produced, KafkaError> {
    let mut out = Sender {
        producer,
        pending: Vec::new(),
    };
    let mut produced = Produced::default();
    // The customers as published so far (`None`: deleted), to change a tier to another one.
    let mut current: Vec<Option<Customer>> = (0..CUSTOMERS)
        .map(|i| Some(generated_customer(i)))
        .collect();
    for customer in current.iter().flatten() {
        out.send(customers_topic, &customer.id, Some(json(customer)), start)
            .await?;
        produced.customers += 1;
    }
    for i in 0..n {
        let order = generated_order(i, start);
        let tenth = i * 10 / n.max(1);
        if i > 0 && tenth != (i - 1) * 10 / n.max(1) {
            for j in 0..25u64 {
                let r = mix((start as u64) ^ (tenth << 40) ^ (j << 20) ^ 0x5eed);
                let index = (r % CUSTOMERS) as usize;
                let id = format!("c{index}");
                if j < 20 {
                    let Some(customer) = current[index].as_mut() else {
                        continue; // deleted earlier in this run: nothing to update
                    };
                    let next = TIERS
                        .iter()
                        .position(|t| *t == customer.tier)
                        .map_or(0, |t| t + 1);
                    customer.tier = TIERS[next % 3].to_string();
                    out.send(customers_topic, &id, Some(json(&*customer)), order.ts)
                        .await?;
                    produced.updates += 1;
                } else {
                    current[index] = None;
                    out.send(customers_topic, &id, None, order.ts).await?;
                    produced.deletions += 1;
                }
            }
        }
        out.send(orders_topic, &order.customer, Some(json(&order)), order.ts)
            .await?;
        produced.orders += 1;
    }
    out.settle().await?;
    Ok(produced)
}
