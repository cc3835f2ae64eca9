//! Bench topics: creation and filling.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for r in admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
    {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err(e) => panic!("create {topic}: {e:?}"),
        }
    }
}

pub fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "2000000")
        .create()
        .unwrap()
}

/// The key of record `i` among `keys`: spread evenly but not in order, so that each
/// partition sees every key range.
pub fn key_of(i: u64, keys: u64) -> String {
    format!("page-{}", i.wrapping_mul(2_654_435_761) % keys)
}

/// Creates `topic` with `partitions` partitions and appends `n` records over `keys` keys
/// with values of `value_size` bytes.
pub async fn fill(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    n: u64,
    keys: u64,
    value_size: usize,
) {
    create_topic(bootstrap, topic, partitions).await;
    let payload = vec![b'x'; value_size];
    produce(bootstrap, topic, n, |i| (key_of(i, keys), payload.clone())).await;
}

/// Appends `n` records `record(i)` = (key, value) to `topic`.
pub async fn produce(
    bootstrap: &str,
    topic: &str,
    n: u64,
    mut record: impl FnMut(u64) -> (String, Vec<u8>),
) {
    let producer = producer(bootstrap);
    let mut pending = Vec::new();
    for i in 0..n {
        let (key, value) = record(i);
        pending.push(
            producer
                .send_result(FutureRecord::to(topic).key(&key).payload(&value))
                .unwrap(),
        );
        if pending.len() >= 100_000 {
            for p in futures::future::join_all(pending.drain(..)).await {
                p.unwrap().unwrap();
            }
        }
    }
    for p in futures::future::join_all(pending).await {
        p.unwrap().unwrap();
    }
}
