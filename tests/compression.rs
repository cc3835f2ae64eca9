//! What real topics hold, against a real broker: records compressed with every codec Kafka
//! has, and partitions the client cannot read past — which must end `run()` with an error
//! naming the partition and offset, never stall with nothing said.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
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
                let value = format!(r#"{{"codec":"{codec}","n":{i},"pad":"{}"}}"#, "x".repeat(64));
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

/// Appends one record batch (one uncompressed record) whose CRC is off by one bit, with a
/// Produce request (v3) written by hand — no client would produce it.
fn produce_batch_with_a_wrong_crc(topic: &str, partition: i32, key: &[u8], value: &[u8]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // RecordBatch v2, from `attributes` on (what the CRC covers).
    let mut tail = Vec::new();
    tail.extend(0i16.to_be_bytes()); // attributes: no compression
    tail.extend(0i32.to_be_bytes()); // last offset delta
    tail.extend(now.to_be_bytes()); // base timestamp
    tail.extend(now.to_be_bytes()); // max timestamp
    tail.extend((-1i64).to_be_bytes()); // producer id
    tail.extend((-1i16).to_be_bytes()); // producer epoch
    tail.extend((-1i32).to_be_bytes()); // base sequence
    tail.extend(1i32.to_be_bytes()); // record count
    tail.extend(record(key, value));
    let mut batch = Vec::new();
    batch.extend(0i64.to_be_bytes()); // base offset (the broker assigns it)
    batch.extend((4 + 1 + 4 + tail.len() as i32).to_be_bytes()); // batch length
    batch.extend(0i32.to_be_bytes()); // partition leader epoch
    batch.push(2); // magic
    batch.extend((crc32c(&tail) ^ 1).to_be_bytes());
    batch.extend(tail);

    let mut body = Vec::new();
    body.extend((-1i16).to_be_bytes()); // transactional id: null
    body.extend(1i16.to_be_bytes()); // acks
    body.extend(10_000i32.to_be_bytes()); // timeout
    body.extend(1i32.to_be_bytes()); // one topic
    body.extend((topic.len() as i16).to_be_bytes());
    body.extend(topic.as_bytes());
    body.extend(1i32.to_be_bytes()); // one partition
    body.extend(partition.to_be_bytes());
    body.extend((batch.len() as i32).to_be_bytes());
    body.extend(batch);
    let mut request = Vec::new();
    request.extend(0i16.to_be_bytes()); // api key: Produce
    request.extend(3i16.to_be_bytes()); // api version
    request.extend(7i32.to_be_bytes()); // correlation id
    request.extend(4i16.to_be_bytes());
    request.extend(b"test");
    request.extend(body);

    let mut stream = TcpStream::connect(common::bootstrap()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(&(request.len() as i32).to_be_bytes())
        .unwrap();
    stream.write_all(&request).unwrap();
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).unwrap();
    let mut response = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut response).unwrap();
    // correlation id, topics (1), name, partitions (1), index, then the error code.
    let error_at = 4 + 4 + 2 + topic.len() + 4 + 4;
    let error = i16::from_be_bytes([response[error_at], response[error_at + 1]]);
    assert_eq!(error, 0, "the broker refused the raw batch (error code {error})");
}

/// A record of a v2 batch: its fields, each length a zigzag varint.
fn record(key: &[u8], value: &[u8]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, n: i64) {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }
    let mut body = vec![0u8]; // attributes
    varint(&mut body, 0); // timestamp delta
    varint(&mut body, 0); // offset delta
    varint(&mut body, key.len() as i64);
    body.extend(key);
    varint(&mut body, value.len() as i64);
    body.extend(value);
    varint(&mut body, 0); // headers
    let mut out = Vec::new();
    varint(&mut out, body.len() as i64);
    out.extend(body);
    out
}

/// CRC-32C (Castagnoli), which record batches carry.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
