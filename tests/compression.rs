//! What real topics hold, against a real broker: records compressed with every codec Kafka
//! has, and partitions the client cannot read past — which must end `run()` with an error
//! naming the partition and offset, never stall with nothing said.

mod common;

use std::time::Duration;

use common::{require_broker, Counter, Running};
use kafka_stateful::codec::Utf8;
use kafka_stateful::{ConsumerConfig, ConsumerConfigBuilder, Error, StatefulConsumer};
use rdkafka::ClientConfig;

const WAIT: Duration = Duration::from_secs(60);
const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

fn config(group: &str, topic: &str, dir: &std::path::Path) -> ConsumerConfigBuilder {
    ConsumerConfig::builder(common::bootstrap(), group, [topic])
        .instance_id("codec-0")
        .state_dir(dir)
        .store(&common::counts_store())
        .commit_interval(Duration::from_millis(200))
        .flush_interval(Duration::from_millis(100))
        .session_timeout(Duration::from_secs(10))
}

/// Records produced by other clients with each codec (one producer per codec, as producers
/// in the wild differ) are all handled, and counted exactly in the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_of_every_compression_codec_are_handled() {
    require_broker!();
    common::init_tracing();
    let (topic, group) = (common::unique("codecs"), common::unique("g"));
    common::create_topic(&topic, 4).await;
    let mut all = Vec::new();
    for codec in CODECS {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", common::bootstrap())
            .set("compression.type", codec)
            .set("linger.ms", "20")
            .create()
            .unwrap_or_else(|e| panic!("a {codec} producer: {e}"));
        let records: Vec<_> = (0..400)
            .map(|i| {
                let key = format!("{codec}-{}", i % 10);
                // Repetitive JSON, as compressed topics usually hold; a key stays on one
                // partition (state is per partition).
                let value = format!(
                    r#"{{"codec":"{codec}","n":{i},"pad":"{}"}}"#,
                    "x".repeat(64)
                );
                ((i % 10) % 4, key, value)
            })
            .collect();
        common::produce_with(&producer, &topic, &records).await;
        all.extend(records);
    }
    let dir = tempfile::tempdir().unwrap();
    let counter = Counter::default();
    let c = config(&group, &topic, dir.path()).build().unwrap();
    let running = Running::start(StatefulConsumer::new(c, Utf8, Utf8, counter.clone()));
    let total = all.len() as u64;
    let handled = counter.handled.clone();
    let stats = running.stats.clone();
    common::wait_until("every compressed record handled", WAIT, || {
        handled.load(std::sync::atomic::Ordering::Relaxed) == total
    })
    .await;
    assert_eq!(*counter.last.lock().unwrap(), common::expected_counts(&all));
    assert_eq!(stats.snapshot().fetch_errors, 0);
    running.stop().await.unwrap();
}

/// A topic deleted under a running consumer: its partitions can never be fetched again.
/// `run()` ends naming the topic instead of idling with nothing said.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_topic_deleted_under_the_consumer_ends_run_naming_it() {
    require_broker!();
    common::init_tracing();
    let (topic, group) = (common::unique("deleted"), common::unique("g"));
    common::create_topic(&topic, 2).await;
    let records = common::records(2, 4, 20);
    common::produce(&topic, &records).await;
    let dir = tempfile::tempdir().unwrap();
    let counter = Counter::default();
    let c = config(&group, &topic, dir.path()).build().unwrap();
    let consumer = StatefulConsumer::new(c, Utf8, Utf8, counter.clone());
    let stats = consumer.stats();
    let run = tokio::spawn(consumer.run(std::future::pending()));
    let handled = counter.handled.clone();
    common::wait_until("records handled", WAIT, || {
        handled.load(std::sync::atomic::Ordering::Relaxed) == records.len() as u64
    })
    .await;
    common::delete_topic(&topic).await;
    let result = tokio::time::timeout(WAIT, run)
        .await
        .expect("run() ends instead of idling on a deleted topic")
        .unwrap();
    let err = result.unwrap_err();
    assert!(
        matches!(&err, Error::TopicMissing { topic: t } if t == &topic),
        "{err}"
    );
    eprintln!("fetch errors counted: {}", stats.snapshot().fetch_errors);
}
