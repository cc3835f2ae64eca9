//! The unique-visitors example's job (`examples/unique_visitors/job.rs`, compiled in here
//! unchanged): JSON views over 1 000 pages and 100 000 users, two one-minute window stores on
//! event time, closed minutes sent to an output topic.

use std::path::Path;
use std::time::Duration;

use kafka_stateful::codec::{Json, Utf8};
use kafka_stateful::{ConsumerConfig, StatefulConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

#[allow(dead_code)] // the example's summary fields
#[path = "../../examples/unique_visitors/job.rs"]
mod job;

use super::count::{run, Run};
use super::topics::create_topic;

/// Fills `topic` with `n` generated views, keyed by page, as the example's `--produce` does.
pub async fn fill_views(bootstrap: &str, topic: &str, n: u64) {
    create_topic(bootstrap, topic, 4).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    job::produce_views(&producer, topic, n, start)
        .await
        .unwrap();
}

/// Runs the job over the `n` views of `topic`.
pub async fn unique_visitors(
    bootstrap: &str,
    topic: &str,
    group: &str,
    state_dir: &Path,
    n: u64,
) -> Run {
    let output = format!("{topic}-minutes");
    create_topic(bootstrap, &output, 4).await;
    let handler = job::UniqueVisitors::new(&output);
    let config = ConsumerConfig::builder(bootstrap, group, [topic])
        .instance_id("bench-visitors-0")
        .state_dir(state_dir)
        .window(&handler.members)
        .window(&handler.counts)
        .commit_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let handled = handler.handled.clone();
    let consumer = StatefulConsumer::new(config, Utf8, Json::<job::View>::new(), handler);
    run(consumer, &handled, n).await
}
