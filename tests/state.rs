//! State stores against a real broker: restore from checkpoints, moves, crashes,
//! write-combining, recreated changelogs and clear errors.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{require_broker, Counter, Running};
use kafka_stateful::changelog::{changelog_topic, ChangelogError};
use kafka_stateful::codec::Utf8;
use kafka_stateful::{
    CloseBehavior, ConsumerConfig, ConsumerConfigBuilder, Error, StateError, StatefulConsumer,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(60);

fn config(group: &str, topic: &str, dir: &Path, counter: &Counter) -> ConsumerConfigBuilder {
    ConsumerConfig::builder(common::bootstrap(), group, [topic])
        .commit_interval(Duration::from_millis(200))
        .flush_interval(Duration::from_millis(100))
        .session_timeout(Duration::from_secs(10))
        .revoke_timeout(Duration::from_secs(5))
        .state_dir(dir)
        .store(&counter.store)
}

fn handled(c: &Counter) -> u64 {
    c.handled.load(Ordering::Relaxed)
}

/// Asserts that the counter's last written value equals the produced count for every key.
fn assert_counts(counter: &Counter, expected: &HashMap<String, u64>) {
    let last = counter.last.lock().unwrap();
    for (key, n) in expected {
        assert_eq!(last.get(key), Some(n), "count of {key}");
    }
}

/// Data records (markers excluded) in a changelog partition.
fn changelog_data_records(topic: &str, partition: i32) -> usize {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .set("group.id", common::unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let (_, high) = c
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let (mut data, mut next) = (0, 0);
    let deadline = Instant::now() + WAIT;
    while next < high {
        assert!(Instant::now() < deadline, "reading changelog timed out");
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            next = m.offset() + 1;
            if !m.key().unwrap_or_default().starts_with(b"\0kafka-stateful") {
                data += 1;
            }
        }
    }
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn static_restart_with_intact_state_restores_zero_changelog_records() {
    require_broker!();
    common::init_tracing();
    let (topic, group, dir) = (
        common::unique("restart"),
        common::unique("g"),
        tempfile::tempdir().unwrap(),
    );
    common::create_topic(&topic, 2).await;
    let first_batch = common::records(2, 10, 300);
    common::produce(&topic, &first_batch).await;
    let counter = Counter::default();
    let running = Running::start(StatefulConsumer::new(
        config(&group, &topic, dir.path(), &counter)
            .instance_id("r-0")
            .build()
            .unwrap(),
        Utf8,
        Utf8,
        counter.clone(),
    ));
    common::wait_until("first batch counted", WAIT, || handled(&counter) == 300).await;
    running.stop().await.unwrap();

    let second_batch = common::records(2, 10, 200);
    common::produce(&topic, &second_batch).await;
    let counter2 = Counter::default();
    let running = Running::start(StatefulConsumer::new(
        config(&group, &topic, dir.path(), &counter2)
            .instance_id("r-0")
            .build()
            .unwrap(),
        Utf8,
        Utf8,
        counter2.clone(),
    ));
    common::wait_until("second batch counted", WAIT, || handled(&counter2) == 200).await;
    let snapshot = running.stats.snapshot();
    let restored: u64 = snapshot
        .partitions
        .values()
        .map(|p| p.restored_records)
        .sum();
    println!("changelog records restored after static restart: {restored}");
    assert_eq!(snapshot.partitions.len(), 2, "same partitions back");
    assert_eq!(restored, 0, "intact local state: nothing replayed");
    running.stop().await.unwrap();
    let all: Vec<_> = first_batch.iter().chain(&second_batch).cloned().collect();
    assert_counts(&counter2, &common::expected_counts(&all));
    assert_eq!(
        common::committed(&group, &topic, 2),
        common::end_offsets(&topic, 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moved_partition_is_rebuilt_from_the_changelog_on_an_empty_state_dir() {
    require_broker!();
    common::init_tracing();
    let (topic, group) = (common::unique("move"), common::unique("g"));
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::create_topic(&topic, 1).await;
    let first = common::records(1, 50, 5000);
    common::produce(&topic, &first).await;
    let a = Counter::default();
    let running = Running::start(StatefulConsumer::new(
        config(&group, &topic, dir_a.path(), &a)
            .instance_id("a")
            .flush_max_records(100)
            .close_behavior(CloseBehavior::LeaveGroup)
            .build()
            .unwrap(),
        Utf8,
        Utf8,
        a.clone(),
    ));
    common::wait_until("owner A counted", WAIT, || handled(&a) == 5000).await;
    running.stop().await.unwrap();

    // One more record per key, so B's final value of every key is observable.
    let second = common::records(1, 50, 50);
    common::produce(&topic, &second).await;
    let b = Counter::default();
    let running = Running::start(StatefulConsumer::new(
        config(&group, &topic, dir_b.path(), &b)
            .instance_id("b")
            .build()
            .unwrap(),
        Utf8,
        Utf8,
        b.clone(),
    ));
    common::wait_until("owner B counted", WAIT, || handled(&b) == 50).await;
    let p = running.stats.snapshot().partitions[&(topic.clone(), 0)].clone();
    println!(
        "full restore: {} changelog records at {:.0} records/s",
        p.restored_records, p.restore_rate
    );
    assert!(p.restored_records > 0, "B replayed the changelog");
    running.stop().await.unwrap();
    let all: Vec<_> = first.iter().chain(&second).cloned().collect();
    assert_counts(&b, &common::expected_counts(&all));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_updates_to_one_key_between_flushes_write_one_changelog_record() {
    require_broker!();
    common::init_tracing();
    let (topic, group, dir) = (
        common::unique("combine"),
        common::unique("g"),
        tempfile::tempdir().unwrap(),
    );
    common::create_topic(&topic, 1).await;
    let records: Vec<_> = (0..100)
        .map(|i| (0, "hot".to_string(), i.to_string()))
        .collect();
    common::produce(&topic, &records).await;
    let counter = Counter::default();
    let running = Running::start(StatefulConsumer::new(
        config(&group, &topic, dir.path(), &counter)
            .instance_id("c-0")
            .flush_interval(Duration::from_secs(3600))
            .flush_max_records(1000)
            .build()
            .unwrap(),
        Utf8,
        Utf8,
        counter.clone(),
    ));
    common::wait_until("100 updates", WAIT, || handled(&counter) == 100).await;
    running.stop().await.unwrap(); // the shutdown flush
    assert_eq!(
        changelog_data_records(&changelog_topic(&group, "counts"), 0),
        1
    );
    assert_counts(&counter, &HashMap::from([("hot".to_string(), 100)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recreated_changelog_topic_wipes_local_state_and_rebuilds() {
    require_broker!();
    common::init_tracing();
    let (topic, group, dir) = (
        common::unique("recreate"),
        common::unique("g"),
        tempfile::tempdir().unwrap(),
    );
    common::create_topic(&topic, 1).await;
    common::produce(&topic, &common::records(1, 5, 100)).await;
    let counter = Counter::default();
    let build = |c: &Counter| {
        config(&group, &topic, dir.path(), c)
            .instance_id("w-0")
            .build()
            .unwrap()
    };
    let running = Running::start(StatefulConsumer::new(
        build(&counter),
        Utf8,
        Utf8,
        counter.clone(),
    ));
    common::wait_until("counted", WAIT, || handled(&counter) == 100).await;
    running.stop().await.unwrap();

    let changelog = changelog_topic(&group, "counts");
    common::delete_topic(&changelog).await;
    common::create_topic(&changelog, 1).await;
    let later = common::records(1, 5, 10);
    common::produce(&topic, &later).await;
    let counter2 = Counter::default();
    let running = Running::start(StatefulConsumer::new(
        build(&counter2),
        Utf8,
        Utf8,
        counter2.clone(),
    ));
    common::wait_until("new records counted", WAIT, || handled(&counter2) == 10).await;
    running.stop().await.unwrap();
    // The local checkpoint pointed past the new, empty changelog: the state was wiped and
    // rebuilt from it (empty), so counting starts again from the new records only.
    assert_counts(&counter2, &common::expected_counts(&later));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changelog_with_wrong_partition_count_is_a_clear_error() {
    require_broker!();
    let (topic, group, dir) = (
        common::unique("wrongpc"),
        common::unique("g"),
        tempfile::tempdir().unwrap(),
    );
    common::create_topic(&topic, 2).await;
    common::create_topic(&changelog_topic(&group, "counts"), 3).await;
    let counter = Counter::default();
    let c = config(&group, &topic, dir.path(), &counter)
        .instance_id("x")
        .build()
        .unwrap();
    let err = StatefulConsumer::new(c, Utf8, Utf8, counter)
        .run(std::future::pending())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Changelog(ChangelogError::PartitionMismatch {
                expected: 2,
                found: 3,
                ..
            })
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_dir_locked_by_another_process_is_a_clear_error() {
    require_broker!();
    let (topic, group, dir) = (
        common::unique("locked"),
        common::unique("g"),
        tempfile::tempdir().unwrap(),
    );
    common::create_topic(&topic, 1).await;
    let partition_dir = dir.path().join(&group).join(format!("{topic}-0"));
    let _held = rocksdb::DB::open_default(&partition_dir).unwrap();
    let counter = Counter::default();
    let c = config(&group, &topic, dir.path(), &counter)
        .instance_id("l")
        .build()
        .unwrap();
    let result = tokio::time::timeout(
        WAIT,
        StatefulConsumer::new(c, Utf8, Utf8, counter).run(std::future::pending()),
    )
    .await
    .expect("run ends with the lock error instead of hanging");
    let err = result.unwrap_err();
    assert!(
        matches!(&err, Error::State(StateError::Locked { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("locked"), "{err}");
}

/// Writes each record's value under its key in `kv`, deleting the key for the value `del`.
#[derive(Clone)]
struct KeyValues {
    store: kafka_stateful::StoreDef<String, String>,
    handled: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl kafka_stateful::Handler<String, String> for KeyValues {
    async fn handle(
        &self,
        r: kafka_stateful::Record<String, String>,
        ctx: &mut kafka_stateful::PartitionContext,
    ) -> Result<(), kafka_stateful::HandlerError> {
        let key = r.key.ok_or("record without key")?;
        let mut store = ctx.store(&self.store)?;
        match r.value.as_deref() {
            Some("del") => store.delete(&key)?,
            value => store.put(&key, &value.unwrap_or_default().to_string())?,
        }
        self.handled.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// What the changelog producer hands librdkafka (through its own topic handles, not
/// rdkafka's `send`) reaches the topic as the format says: the store key, the value's bytes
/// (an empty value stays empty, a delete is a tombstone) and exactly one `ks` stamp header on
/// a data record; markers with their own headers. And a restore from it reads it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changelog_records_carry_the_key_the_value_bytes_one_stamp_header_and_their_creation_time()
{
    require_broker!();
    common::init_tracing();
    let (topic, group) = (common::unique("layout"), common::unique("g"));
    let (dir, fresh) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::create_topic(&topic, 1).await;
    let records: Vec<(i32, String, String)> = [("a", "1"), ("b", ""), ("c", "x"), ("c", "del")]
        .iter()
        .map(|(k, v)| (0, k.to_string(), v.to_string()))
        .collect();
    common::produce(&topic, &records).await;
    let handler = KeyValues {
        store: kafka_stateful::StoreDef::new("kv", Utf8, Utf8),
        handled: Default::default(),
    };
    let start = |dir: &Path, handler: &KeyValues| {
        let consumer = StatefulConsumer::new(
            ConsumerConfig::builder(common::bootstrap(), &group, [topic.as_str()])
                .instance_id("layout-0")
                .session_timeout(Duration::from_secs(10))
                .state_dir(dir)
                .store(&handler.store)
                .build()
                .unwrap(),
            Utf8,
            Utf8,
            handler.clone(),
        );
        let query = consumer.query();
        (Running::start(consumer), query)
    };
    let started_ms = common::now_ms() as i64;
    let (running, _) = start(dir.path(), &handler);
    common::wait_until("4 records", WAIT, || {
        handler.handled.load(Ordering::Relaxed) == 4
    })
    .await;
    running.stop().await.unwrap(); // the shutdown flush
    let stopped_ms = common::now_ms() as i64;

    let timed = common::read_all_with(&changelog_topic(&group, "kv"), 1, |m| {
        use rdkafka::message::Message;
        (common::to_read_record(m), m.timestamp())
    });
    // Every record is stamped with its creation time: a window store's changelog is
    // `compact,delete`, and a wrong time would let the broker's retention delete its records.
    for (_, timestamp) in &timed {
        assert!(
            matches!(timestamp, rdkafka::message::Timestamp::CreateTime(t)
                if (started_ms..=stopped_ms).contains(t)),
            "{timestamp:?} is a creation time between {started_ms} and {stopped_ms}"
        );
    }
    let log: Vec<_> = timed.into_iter().map(|(record, _)| record).collect();
    let (markers, data): (Vec<_>, Vec<_>) = log.iter().partition(|(k, _, _)| {
        k.as_deref()
            .unwrap_or_default()
            .starts_with(b"\0kafka-stateful")
    });
    let stamp = |headers: &[(String, Vec<u8>)]| -> String {
        let stamps: Vec<_> = headers.iter().filter(|(n, _)| n == "ks").collect();
        assert_eq!(stamps.len(), 1, "one ks header in {headers:?}");
        String::from_utf8(stamps[0].1.clone()).unwrap()
    };
    let mut values: HashMap<String, Option<Vec<u8>>> = HashMap::new();
    for (key, value, headers) in &data {
        assert_eq!(
            headers.len(),
            1,
            "a data record's only header is its stamp: {headers:?}"
        );
        let stamp = stamp(headers);
        let parts: Vec<&str> = stamp.split('.').collect();
        assert!(
            parts.len() == 3
                && parts[0] == "2"
                && parts[1..].iter().all(|p| p.parse::<u64>().is_ok()),
            "stamp {stamp:?} is 2.<epoch>.<seq>"
        );
        values.insert(
            String::from_utf8(key.clone().unwrap()).unwrap(),
            value.clone(),
        );
    }
    assert_eq!(
        values,
        HashMap::from([
            ("a".to_string(), Some(b"1".to_vec())),
            ("b".to_string(), Some(Vec::new())),
            ("c".to_string(), None),
        ]),
        "key, value bytes and tombstone of each data record"
    );
    assert!(!markers.is_empty(), "an epoch marker and a flush marker");
    for (_, value, headers) in &markers {
        assert_eq!(value, &None);
        stamp(headers);
        assert!(
            headers.iter().any(|(n, _)| n == "ks.source-offset"),
            "a marker names its source offset: {headers:?}"
        );
    }

    // A member without local state restores exactly those values from it.
    let (running, query) = start(fresh.path(), &handler);
    common::wait_until("the partition restored and queryable", WAIT, || {
        query.partitions().iter().any(|(_, _, ready)| *ready)
    })
    .await;
    let mut restored = Vec::new();
    for key in ["a", "b", "c"] {
        restored.push(query.get(&handler.store, &key.to_string()).await.unwrap());
    }
    assert_eq!(
        restored,
        [Some("1".to_string()), Some(String::new()), None],
        "restored values"
    );
    assert_eq!(
        handler.handled.load(Ordering::Relaxed),
        4,
        "nothing handled again"
    );
    running.stop().await.unwrap();
}
