//! Ways a consumer could stall, lose or double-process, each against a real broker: pauses
//! across rebalances, panics, interrupted retries, configuration errors that must fail fast,
//! and a static member whose subscription changed.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{require_broker, Recorder, Running};
use kafka_stateful::codec::Utf8;
use kafka_stateful::{
    AssignmentStrategy, ConsumerConfig, ConsumerConfigBuilder, Error, ErrorPolicy, RetryPolicy,
    StatefulConsumer,
};

const WAIT: Duration = Duration::from_secs(60);

fn config(group: &str, topic: &str) -> ConsumerConfigBuilder {
    ConsumerConfig::builder(common::bootstrap(), group, [topic])
        .commit_interval(Duration::from_millis(200))
        .flush_interval(Duration::from_millis(100))
        .session_timeout(Duration::from_secs(10))
        .revoke_timeout(Duration::from_secs(5))
}

fn distinct(recorders: &[&Recorder]) -> usize {
    recorders
        .iter()
        .flat_map(|r| r.seen.lock().unwrap().clone())
        .collect::<BTreeSet<_>>()
        .len()
}

/// A partition whose queue is full (librdkafka stopped fetching it) when an eager rebalance
/// revokes it is fetched again after it, by whichever member gets it. (Before the consumer
/// split partition queues, a full queue paused the partition, and librdkafka kept the
/// pause across unassign/assign: librdkafka #1849.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partition_with_a_full_queue_before_a_rebalance_is_fetched_after_it() {
    require_broker!();
    common::init_tracing();
    let (topic, group) = (common::unique("paused"), common::unique("g"));
    common::create_topic(&topic, 2).await;
    common::produce(&topic, &common::records(2, 4, 400)).await;
    let slow = Arc::new(AtomicBool::new(true));
    let a = Recorder {
        slow: Some(slow.clone()),
        ..Recorder::default()
    };
    let b = Recorder::default();
    let build = |id: &str| {
        config(&group, &topic)
            .instance_id(id)
            .assignment(AssignmentStrategy::Range)
            .queue_capacity(5)
            .stats_interval(Duration::from_millis(100))
            .build()
            .unwrap()
    };
    let first = Running::start(StatefulConsumer::new(build("a"), Utf8, Utf8, a.clone()));
    common::wait_until(
        "records queued for both partitions of the slow member",
        WAIT,
        || {
            let s = first.stats.snapshot();
            s.partitions.len() == 2 && s.partitions.values().all(|p| p.queued > 0)
        },
    )
    .await;
    // An eager join revokes both (full) partitions and gives one back to the first member.
    let second = Running::start(StatefulConsumer::new(build("b"), Utf8, Utf8, b.clone()));
    common::wait_until("partitions split", WAIT, || {
        first.assigned().len() == 1 && second.assigned().len() == 1
    })
    .await;
    slow.store(false, Ordering::Relaxed);
    common::wait_until("every record handled after the rebalance", WAIT, || {
        distinct(&[&a, &b]) == 400
    })
    .await;
    first.stop().await.unwrap();
    second.stop().await.unwrap();
    assert_eq!(
        common::committed(&group, &topic, 2),
        common::end_offsets(&topic, 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handler_panic_is_skipped_under_skip_and_the_partition_goes_on() {
    require_broker!();
    common::init_tracing();
    let (topic, group) = (common::unique("panic-skip"), common::unique("g"));
    common::create_topic(&topic, 1).await;
    common::produce(&topic, &common::records(1, 3, 50)).await;
    let recorder = Recorder {
        panic_at: Some((0, 10)),
        ..Recorder::default()
    };
    let c = config(&group, &topic)
        .instance_id("ps-0")
        .error_policy(ErrorPolicy::Skip)
        .build()
        .unwrap();
    let running = Running::start(StatefulConsumer::new(c, Utf8, Utf8, recorder.clone()));
    common::wait_until("everything else handled", WAIT, || {
        recorder.seen.lock().unwrap().len() == 49
    })
    .await;
    common::wait_until("committed past the poison record", WAIT, || {
        common::committed(&group, &topic, 1) == vec![50]
    })
    .await;
    let skipped = running.stats.snapshot().partitions[&(topic.clone(), 0)].skipped;
    assert_eq!(skipped, 1, "the panicking record is counted as skipped");
    assert!(!running.join.is_finished(), "run() goes on under Skip");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handler_panic_under_fail_stops_run_naming_the_record() {
    require_broker!();
    common::init_tracing();
    let (topic, group) = (common::unique("panic-fail"), common::unique("g"));
    common::create_topic(&topic, 1).await;
    common::produce(&topic, &common::records(1, 3, 30)).await;
    let recorder = Recorder {
        panic_at: Some((0, 12)),
        ..Recorder::default()
    };
    let c = config(&group, &topic).instance_id("pf-0").build().unwrap();
    let running = Running::start(StatefulConsumer::new(c, Utf8, Utf8, recorder.clone()));
    let err = tokio::time::timeout(WAIT, running.join)
        .await
        .expect("run() ends instead of leaving a dead partition")
        .unwrap()
        .unwrap_err();
    match &err {
        Error::Panicked {
            topic: t,
            partition: 0,
            offset: 12,
            message,
            ..
        } => {
            assert_eq!(t, &topic);
            assert!(message.contains("handler bug at offset 12"), "{message}");
        }
        other => panic!("expected a panic error at offset 12, got {other}"),
    }
    assert_eq!(common::committed(&group, &topic, 1), vec![12]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handler_panic_is_dead_lettered_with_error_headers() {
    require_broker!();
    common::init_tracing();
    let (topic, group, dlq) = (
        common::unique("panic-dlq"),
        common::unique("g"),
        common::unique("dlq"),
    );
    common::create_topic(&topic, 1).await;
    common::create_topic(&dlq, 1).await;
    let records = common::records(1, 3, 20);
    common::produce(&topic, &records).await;
    let recorder = Recorder {
        panic_at: Some((0, 7)),
        ..Recorder::default()
    };
    let c = config(&group, &topic)
        .instance_id("pd-0")
        .error_policy(ErrorPolicy::DeadLetter(dlq.clone()))
        .build()
        .unwrap();
    let running = Running::start(StatefulConsumer::new(c, Utf8, Utf8, recorder.clone()));
    common::wait_until("committed to the end", WAIT, || {
        common::committed(&group, &topic, 1) == vec![20]
    })
    .await;
    assert_eq!(running.stats.snapshot().dead_lettered, 1);
    running.stop().await.unwrap();
    let dead = common::read_all(&dlq, 1);
    assert_eq!(dead.len(), 1);
    let (key, value, headers) = &dead[0];
    assert_eq!(key.as_deref(), Some(records[7].1.as_bytes()), "raw key");
    assert_eq!(value.as_deref(), Some(records[7].2.as_bytes()), "raw value");
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header("ks.error.topic").as_deref(), Some(topic.as_str()));
    assert_eq!(header("ks.error.partition").as_deref(), Some("0"));
    assert_eq!(header("ks.error.offset").as_deref(), Some("7"));
    assert_eq!(header("ks.error.kind").as_deref(), Some("panic"));
    assert!(header("ks.error.message").is_some_and(|m| m.contains("handler bug at offset 7")));
}

/// A shutdown while a record is being retried must leave that record uncommitted (under
/// `Skip` it used to be committed past, and lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopping_during_retries_leaves_the_record_uncommitted() {
    require_broker!();
    common::init_tracing();
    let (topic, group) = (common::unique("retry-stop"), common::unique("g"));
    common::create_topic(&topic, 1).await;
    common::produce(&topic, &common::records(1, 3, 10)).await;
    let failing = Recorder {
        fail_at: Some((0, 4)),
        ..Recorder::default()
    };
    let build = || {
        config(&group, &topic)
            .instance_id("rs-0")
            .error_policy(ErrorPolicy::Skip)
            .retry(RetryPolicy {
                max_retries: 100,
                initial_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(20),
            })
            .build()
            .unwrap()
    };
    let running = Running::start(StatefulConsumer::new(build(), Utf8, Utf8, failing.clone()));
    common::wait_until("record 4 retried a few times", WAIT, || {
        failing.attempts.lock().unwrap().get(&(0, 4)).copied() >= Some(3)
    })
    .await;
    // The backoff is now seconds long: stopping must not wait it out, nor skip the record.
    let started = std::time::Instant::now();
    running.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "shutdown raced the backoff: {:?}",
        started.elapsed()
    );
    assert_eq!(
        common::committed(&group, &topic, 1),
        vec![4],
        "the record being retried stays uncommitted"
    );
    let fixed = Recorder::default();
    let running = Running::start(StatefulConsumer::new(build(), Utf8, Utf8, fixed.clone()));
    common::wait_until("the rest handled after a restart", WAIT, || {
        fixed.seen.lock().unwrap().len() == 6
    })
    .await;
    running.stop().await.unwrap();
    assert_eq!(fixed.seen.lock().unwrap().first(), Some(&(0, 4)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_topic_fails_fast_with_a_clear_error() {
    require_broker!();
    common::init_tracing();
    let (topic, group) = (common::unique("nowhere"), common::unique("g"));
    let c = config(&group, &topic).instance_id("m-0").build().unwrap();
    let result = tokio::time::timeout(
        WAIT,
        StatefulConsumer::new(c, Utf8, Utf8, Recorder::default()).run(std::future::pending()),
    )
    .await
    .expect("run() fails instead of warning forever");
    let err = result.unwrap_err();
    assert!(
        matches!(&err, Error::TopicMissing { topic: t } if t == &topic),
        "{err}"
    );
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_offset_reset_error_fails_fast_with_a_clear_error() {
    require_broker!();
    common::init_tracing();
    let (topic, group) = (common::unique("noreset"), common::unique("g"));
    common::create_topic(&topic, 1).await;
    common::produce(&topic, &common::records(1, 3, 5)).await;
    let c = config(&group, &topic)
        .instance_id("r-0")
        .set("auto.offset.reset", "error")
        .build()
        .unwrap();
    let result = tokio::time::timeout(
        WAIT,
        StatefulConsumer::new(c, Utf8, Utf8, Recorder::default()).run(std::future::pending()),
    )
    .await
    .expect("run() fails instead of warning forever");
    let err = result.unwrap_err();
    assert!(matches!(&err, Error::NoValidOffset { .. }), "{err}");
}

/// The scenario of issue 13: a static member stopped (keeping its membership) and started
/// again with the same group and instance id but another topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn static_member_restarted_with_another_topic_consumes_it_or_fails_clearly() {
    require_broker!();
    common::init_tracing();
    let group = common::unique("g");
    let (old, new) = (common::unique("topic-a"), common::unique("topic-b"));
    common::create_topic(&old, 4).await;
    common::create_topic(&new, 4).await;
    common::produce(&old, &common::records(4, 8, 40)).await;
    common::produce(&new, &common::records(4, 8, 60)).await;

    let first = Recorder::default();
    let c = config(&group, &old).instance_id("pc-0").build().unwrap();
    let running = Running::start(StatefulConsumer::new(c, Utf8, Utf8, first.clone()));
    common::wait_until("old topic consumed", WAIT, || {
        first.seen.lock().unwrap().len() == 40
    })
    .await;
    running.stop().await.unwrap();

    // Same group and instance id, within the session timeout, another topic, with a store.
    let dir = tempfile::tempdir().unwrap();
    let second = Recorder {
        store: Some(common::counts_store()),
        ..Recorder::default()
    };
    let c = config(&group, &new)
        .instance_id("pc-0")
        .state_dir(dir.path())
        .store(&common::counts_store())
        .build()
        .unwrap();
    let running = Running::start(StatefulConsumer::new(c, Utf8, Utf8, second.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if second.seen.lock().unwrap().len() == 60 {
            running.stop().await.unwrap();
            break;
        }
        if running.join.is_finished() {
            let err = running.join.await.unwrap().unwrap_err();
            match &err {
                Error::ForeignAssignment {
                    group: g,
                    instance_id,
                    subscribed,
                    assigned,
                } => {
                    assert_eq!(g, &group);
                    assert_eq!(instance_id.as_deref(), Some("pc-0"));
                    assert_eq!(subscribed, &vec![new.clone()]);
                    assert_eq!(assigned, &vec![old.clone()]);
                    assert!(err.to_string().contains("LeaveGroup"), "{err}");
                }
                other => panic!("expected a foreign-assignment error, got {other}"),
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stalled: neither consumed {new} ({} of 60) nor failed",
            second.seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let handled_topics = second.topics.lock().unwrap().clone();
    assert!(
        !handled_topics.contains(&old),
        "a record of the old topic reached the handler"
    );
    let group_dir = dir.path().join(&group);
    let dirs: Vec<String> = std::fs::read_dir(&group_dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        dirs.iter().all(|d| !d.starts_with(&old)),
        "state directories for the old topic: {dirs:?}"
    );
}
