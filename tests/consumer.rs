//! The consumer core against a real broker: commit-after-processing, static membership,
//! decoupled slow handlers, rebalances and fencing.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{require_broker, Recorder, Running};
use kafka_stateful::codec::Utf8;
use kafka_stateful::{
    AssignmentStrategy, CloseBehavior, ConsumerConfig, ConsumerConfigBuilder, Error,
    RebalanceListener, StatefulConsumer,
};

const WAIT: Duration = Duration::from_secs(60);

fn config(group: &str, topic: &str) -> ConsumerConfigBuilder {
    ConsumerConfig::builder(common::bootstrap(), group, [topic])
        .commit_interval(Duration::from_millis(200))
        .flush_interval(Duration::from_millis(100))
        .session_timeout(Duration::from_secs(10))
        .revoke_timeout(Duration::from_secs(5))
}

#[derive(Default, Clone)]
struct RebalanceCount(Arc<AtomicU64>);

impl RebalanceListener for RebalanceCount {
    fn on_assigned(&self, _: &[(String, i32)]) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn on_revoked(&self, _: &[(String, i32)]) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_record_is_handled_and_clean_shutdown_commits_end_offsets() {
    require_broker!();
    common::init_tracing();
    let (topic, group) = (common::unique("all"), common::unique("g"));
    common::create_topic(&topic, 3).await;
    let records = common::records(3, 10, 600);
    common::produce(&topic, &records).await;

    let recorder = Recorder::default();
    let c = config(&group, &topic).instance_id("all-0").build().unwrap();
    let running = Running::start(StatefulConsumer::new(c, Utf8, Utf8, recorder.clone()));
    let seen = recorder.seen.clone();
    common::wait_until("all records handled", WAIT, || {
        seen.lock().unwrap().len() >= 600
    })
    .await;
    running.stop().await.unwrap();

    let seen = recorder.seen.lock().unwrap().clone();
    let distinct: BTreeSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), 600, "every record handled");
    assert_eq!(seen.len(), 600, "none twice");
    for p in 0..3 {
        let offsets: Vec<i64> = seen
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, o)| *o)
            .collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "partition {p} handled in offset order"
        );
    }
    assert_eq!(
        common::committed(&group, &topic, 3),
        common::end_offsets(&topic, 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_handler_never_commits_its_record_and_a_restart_resumes_there() {
    require_broker!();
    common::init_tracing();
    let (topic, group) = (common::unique("fail"), common::unique("g"));
    common::create_topic(&topic, 1).await;
    common::produce(&topic, &common::records(1, 5, 50)).await;

    let poisoned = Recorder {
        fail_at: Some((0, 20)),
        ..Recorder::default()
    };
    let c = config(&group, &topic)
        .instance_id("fail-0")
        .build()
        .unwrap();
    let running = Running::start(StatefulConsumer::new(c, Utf8, Utf8, poisoned.clone()));
    let err = tokio::time::timeout(WAIT, running.join)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    match &err {
        Error::Handler {
            topic: t,
            partition: 0,
            offset: 20,
            ..
        } => assert_eq!(t, &topic),
        other => panic!("expected a handler error at offset 20, got {other}"),
    }
    assert!(
        err.to_string().contains("@20"),
        "error names the offset: {err}"
    );
    assert_eq!(
        common::committed(&group, &topic, 1),
        vec![20],
        "records before 20 are committed, 20 is not"
    );
    assert_eq!(poisoned.seen.lock().unwrap().len(), 20);

    let fixed = Recorder::default();
    let c = config(&group, &topic)
        .instance_id("fail-0")
        .build()
        .unwrap();
    let running = Running::start(StatefulConsumer::new(c, Utf8, Utf8, fixed.clone()));
    let seen = fixed.seen.clone();
    common::wait_until("rest handled", WAIT, || seen.lock().unwrap().len() >= 30).await;
    running.stop().await.unwrap();
    assert_eq!(
        fixed.seen.lock().unwrap().first(),
        Some(&(0, 20)),
        "restart resumes at the failed record"
    );
    assert_eq!(common::committed(&group, &topic, 1), vec![50]);
}

async fn restart_scenario(dynamic: bool) -> (u64, Vec<i32>, Vec<i32>) {
    let (topic, group) = (common::unique("static"), common::unique("g"));
    common::create_topic(&topic, 4).await;
    let build = |id: &str| {
        let b = config(&group, &topic).assignment(AssignmentStrategy::Range);
        let b = if dynamic {
            b.dynamic_membership()
        } else {
            b.instance_id(id)
        };
        b.build().unwrap()
    };
    let other_events = RebalanceCount::default();
    let other = Running::start(
        StatefulConsumer::new(build("m-1"), Utf8, Utf8, Recorder::default())
            .with_rebalance_listener(other_events.clone()),
    );
    let first = Running::start(StatefulConsumer::new(
        build("m-0"),
        Utf8,
        Utf8,
        Recorder::default(),
    ));
    common::wait_until("both members hold 2 partitions", WAIT, || {
        first.assigned().len() == 2 && other.assigned().len() == 2
    })
    .await;
    let before = first.assigned();
    let events_before = other_events.0.load(Ordering::SeqCst);
    first.stop().await.unwrap();
    let again = Running::start(StatefulConsumer::new(
        build("m-0"),
        Utf8,
        Utf8,
        Recorder::default(),
    ));
    common::wait_until("restarted member holds 2 partitions", WAIT, || {
        again.assigned().len() == 2
    })
    .await;
    let after = again.assigned();
    let other_events_during_restart = other_events.0.load(Ordering::SeqCst) - events_before;
    again.stop().await.unwrap();
    other.stop().await.unwrap();
    (other_events_during_restart, before, after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn static_member_restart_keeps_partitions_and_others_see_no_rebalance() {
    require_broker!();
    common::init_tracing();
    let (events, before, after) = restart_scenario(false).await;
    assert_eq!(before, after, "same partitions after restart");
    assert_eq!(events, 0, "the other member saw no revoke or assign");

    // The contrast: with dynamic membership the same restart rebalances the other member.
    let (events, _, _) = restart_scenario(true).await;
    assert!(events > 0, "dynamic membership rebalances on restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handler_slower_than_max_poll_interval_holds_up_only_its_partition() {
    require_broker!();
    common::init_tracing();
    let (topic, group) = (common::unique("slow"), common::unique("g"));
    common::create_topic(&topic, 2).await;
    common::produce(&topic, &common::records(2, 4, 400)).await;
    // Partition 0's handler takes 1.5 s per record: four records outlast max.poll.interval (6 s).
    let recorder = Recorder {
        delay: Some((0, Duration::from_millis(1500))),
        ..Recorder::default()
    };
    let c = config(&group, &topic)
        .instance_id("slow-0")
        .session_timeout(Duration::from_secs(6))
        .max_poll_interval(Duration::from_secs(6))
        // A revoke must fit in max.poll.interval.ms.
        .revoke_timeout(Duration::from_secs(2))
        .flush_timeout(Duration::from_secs(2))
        .queue_capacity(10)
        .build()
        .unwrap();
    let events = RebalanceCount::default();
    let running = Running::start(
        StatefulConsumer::new(c, Utf8, Utf8, recorder.clone())
            .with_rebalance_listener(events.clone()),
    );
    let seen = recorder.seen.clone();
    common::wait_until("partition 1 fully handled", WAIT, || {
        seen.lock().unwrap().iter().filter(|(p, _)| *p == 1).count() == 200
    })
    .await;
    // Outlast max.poll.interval while the slow handler runs, then check membership held.
    common::wait_until(
        "slow partition handled 6 records (9 s > max.poll.interval)",
        WAIT,
        || seen.lock().unwrap().iter().filter(|(p, _)| *p == 0).count() >= 6,
    )
    .await;
    assert_eq!(
        events.0.load(Ordering::SeqCst),
        1,
        "one assignment, never kicked out and re-assigned"
    );
    assert_eq!(running.assigned(), vec![0, 1]);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn second_process_with_same_instance_id_fences_the_first() {
    require_broker!();
    common::init_tracing();
    let (topic, group) = (common::unique("fence"), common::unique("g"));
    common::create_topic(&topic, 2).await;
    common::produce(&topic, &common::records(2, 4, 100)).await;
    let first_seen = Recorder::default();
    let c = config(&group, &topic).instance_id("twin").build().unwrap();
    let first = Running::start(StatefulConsumer::new(
        c.clone(),
        Utf8,
        Utf8,
        first_seen.clone(),
    ));
    let seen = first_seen.seen.clone();
    common::wait_until("first member handled everything", WAIT, || {
        seen.lock().unwrap().len() >= 100
    })
    .await;
    common::wait_until("first member committed", WAIT, || {
        common::committed(&group, &topic, 2) == common::end_offsets(&topic, 2)
    })
    .await;

    let second = Running::start(StatefulConsumer::new(c, Utf8, Utf8, Recorder::default()));
    let err = tokio::time::timeout(WAIT, first.join)
        .await
        .expect("first member stops")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Fenced { instance_id } if instance_id == "twin"),
        "{err}"
    );
    assert!(err.to_string().contains("twin"));
    assert_eq!(
        common::committed(&group, &topic, 2),
        common::end_offsets(&topic, 2),
        "nothing wrong committed"
    );
    second.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_out_moves_partitions_without_losing_records() {
    require_broker!();
    common::init_tracing();
    let (topic, group) = (common::unique("scale"), common::unique("g"));
    common::create_topic(&topic, 4).await;
    let a = Recorder {
        delay: Some((0, Duration::from_millis(2))),
        ..Recorder::default()
    };
    let b = Recorder::default();
    let build = |id: &str| {
        config(&group, &topic)
            .instance_id(id)
            .assignment(AssignmentStrategy::CooperativeSticky)
            .build()
            .unwrap()
    };
    let first = Running::start(StatefulConsumer::new(build("a"), Utf8, Utf8, a.clone()));
    common::wait_until("first member owns all", WAIT, || {
        first.assigned().len() == 4
    })
    .await;
    let records = common::records(4, 8, 2000);
    let (head, tail) = records.split_at(1000);
    common::produce(&topic, head).await;
    let second = Running::start(StatefulConsumer::new(build("b"), Utf8, Utf8, b.clone()));
    common::wait_until("partitions split", WAIT, || {
        first.assigned().len() == 2 && second.assigned().len() == 2
    })
    .await;
    common::produce(&topic, tail).await;
    let total = || {
        a.seen
            .lock()
            .unwrap()
            .iter()
            .chain(b.seen.lock().unwrap().iter())
            .copied()
            .collect::<BTreeSet<_>>()
            .len()
    };
    common::wait_until("all 2000 records handled", WAIT, || total() == 2000).await;
    first.stop().await.unwrap();
    second.stop().await.unwrap();
    let handled = a.seen.lock().unwrap().len() + b.seen.lock().unwrap().len();
    // Revoke commits synchronously after in-flight records finish: no duplicates at all.
    assert_eq!(handled, 2000, "duplicates: {}", handled - 2000);
    assert_eq!(
        common::committed(&group, &topic, 4),
        common::end_offsets(&topic, 4)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leave_on_close_hands_partitions_over_at_once() {
    require_broker!();
    common::init_tracing();
    let (topic, group) = (common::unique("leave"), common::unique("g"));
    common::create_topic(&topic, 2).await;
    let build = |id: &str, close| {
        config(&group, &topic)
            .instance_id(id)
            .session_timeout(Duration::from_secs(60))
            .close_behavior(close)
            .build()
            .unwrap()
    };
    let stay = Running::start(StatefulConsumer::new(
        build("s", CloseBehavior::KeepMembership),
        Utf8,
        Utf8,
        Recorder::default(),
    ));
    let leave = Running::start(StatefulConsumer::new(
        build("l", CloseBehavior::LeaveGroup),
        Utf8,
        Utf8,
        Recorder::default(),
    ));
    common::wait_until("split", WAIT, || {
        stay.assigned().len() == 1 && leave.assigned().len() == 1
    })
    .await;
    leave.stop().await.unwrap();
    // With a 60 s session timeout, only an explicit LeaveGroup moves the partition this fast.
    common::wait_until(
        "remaining member owns both",
        Duration::from_secs(45),
        || stay.assigned().len() == 2,
    )
    .await;
    stay.stop().await.unwrap();
}

/// Every offset below the committed one of each partition was handled (nothing committed
/// ahead of processing). Reads the committed offsets first, then what was handled.
fn assert_committed_only_handled(bootstrap: &str, group: &str, topic: &str, seen: &common::Seen) {
    let committed = common::committed_at(bootstrap, group, topic, 2);
    let seen: BTreeSet<(i32, i64)> = seen.lock().unwrap().iter().copied().collect();
    for (p, &c) in committed.iter().enumerate() {
        for o in 0..c.max(0) {
            assert!(
                seen.contains(&(p as i32, o)),
                "partition {p}: offset {c} committed but {o} was never handled"
            );
        }
    }
}

/// How long the broker stays down in the outage test.
const OUTAGE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_restart_while_consuming_resumes_without_loss_or_wrong_commits() {
    let Some(nisshi) = common::nisshi_binary() else {
        return;
    };
    common::init_tracing();
    // Its own broker, on its own port, with durable (SQLite) storage.
    let mut broker = common::DurableBroker::start(nisshi).await;
    let bootstrap = broker.bootstrap();
    let (topic, group) = (common::unique("outage"), common::unique("g"));
    common::create_topic_at(&bootstrap, &topic, 2).await;
    let records = common::records(2, 4, 600);
    let (before, after) = records.split_at(300);
    common::produce_at(&bootstrap, &topic, before).await;

    // Partition 0 is slow (10 ms per record), so fetched records are still being handled
    // when the broker dies.
    let recorder = Recorder {
        delay: Some((0, Duration::from_millis(10))),
        ..Recorder::default()
    };
    let config = ConsumerConfig::builder(&bootstrap, &group, [&topic])
        .instance_id("outage-0")
        .commit_interval(Duration::from_millis(200))
        .revoke_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut running = Running::start(StatefulConsumer::new(config, Utf8, Utf8, recorder.clone()));
    let handled_on = |p: i32| {
        let seen = recorder.seen.lock().unwrap();
        seen.iter().filter(|(q, _)| *q == p).count()
    };
    common::wait_until("partition 0 under way", WAIT, || handled_on(0) >= 20).await;

    broker.kill().await;
    let killed_at = std::time::Instant::now();
    let handled_at_kill = recorder.seen.lock().unwrap().len();
    // Workers keep handling what was fetched before the broker died. (Commits meanwhile wait
    // in librdkafka for the coordinator; they fail, and are counted, only when it gives up.)
    common::wait_until("fetched records handled during the outage", WAIT, || {
        recorder.seen.lock().unwrap().len() > handled_at_kill
    })
    .await;
    // The outage lasts 20 s (a duration of the scenario, not a wait for a condition):
    // run() must not return during any of it.
    let rest = OUTAGE.saturating_sub(killed_at.elapsed());
    let ended = tokio::time::timeout(rest, &mut running.join).await;
    assert!(
        ended.is_err(),
        "run() survives the outage, returned {ended:?}"
    );

    broker.resume().await;
    common::produce_at(&bootstrap, &topic, after).await;
    let distinct = || {
        let seen = recorder.seen.lock().unwrap();
        seen.iter().copied().collect::<BTreeSet<_>>().len()
    };
    // Waits for all 600, checking at every look that nothing unhandled was committed.
    common::wait_until(
        "processing to resume after the broker restart (600 records)",
        Duration::from_secs(90),
        || {
            assert_committed_only_handled(&bootstrap, &group, &topic, &recorder.seen);
            distinct() >= 600
        },
    )
    .await;
    running.stop().await.unwrap();

    assert_committed_only_handled(&bootstrap, &group, &topic, &recorder.seen);
    assert_eq!(
        common::committed_at(&bootstrap, &group, &topic, 2),
        common::end_offsets_at(&bootstrap, &topic, 2),
        "everything handled is committed after shutdown"
    );
    // At-least-once: every record handled; a record handled again is possible only past the
    // committed offset (checked above at every step), so duplicates are reported, not denied.
    assert_eq!(distinct(), 600, "every record handled");
    let handled = recorder.seen.lock().unwrap().len();
    eprintln!("outage: {} records handled twice", handled - 600);
}

/// Partitions each `on_revoked` call named, in order.
#[derive(Default, Clone)]
struct Revocations(Arc<std::sync::Mutex<Vec<i32>>>);

impl RebalanceListener for Revocations {
    fn on_revoked(&self, partitions: &[(String, i32)]) {
        let mut revoked = self.0.lock().unwrap();
        revoked.extend(partitions.iter().map(|(_, p)| *p));
    }
}

/// A static member owns 4 partitions and is handling records; a second static member joins.
/// Returns what the first member had revoked, what it kept, and what the second one got.
async fn join_scenario(strategy: AssignmentStrategy) -> (Vec<i32>, Vec<i32>, Vec<i32>) {
    let (topic, group) = (common::unique("join"), common::unique("g"));
    common::create_topic(&topic, 4).await;
    let build = |id: &str| {
        config(&group, &topic)
            .instance_id(id)
            .assignment(strategy)
            .build()
            .unwrap()
    };
    let (a, b) = (Recorder::default(), Recorder::default());
    let revoked = Revocations::default();
    let first = Running::start(
        StatefulConsumer::new(build("a"), Utf8, Utf8, a.clone())
            .with_rebalance_listener(revoked.clone()),
    );
    common::wait_until("first member owns all", WAIT, || {
        first.assigned().len() == 4
    })
    .await;
    let records = common::records(4, 8, 800);
    common::produce(&topic, &records[..400]).await;
    common::wait_until("first half handled", WAIT, || {
        a.seen.lock().unwrap().len() == 400
    })
    .await;

    let second = Running::start(StatefulConsumer::new(build("b"), Utf8, Utf8, b.clone()));
    common::wait_until("partitions split", WAIT, || {
        first.assigned().len() == 2 && second.assigned().len() == 2
    })
    .await;
    common::produce(&topic, &records[400..]).await;
    let total = || {
        let (a, b) = (a.seen.lock().unwrap(), b.seen.lock().unwrap());
        a.iter()
            .chain(b.iter())
            .copied()
            .collect::<BTreeSet<_>>()
            .len()
    };
    common::wait_until("all 800 records handled", WAIT, || total() == 800).await;
    // Taken before shutdown, which revokes what is left.
    let mut revoked_by_join = revoked.0.lock().unwrap().clone();
    revoked_by_join.sort_unstable();
    let (kept, moved) = (first.assigned(), second.assigned());
    first.stop().await.unwrap();
    second.stop().await.unwrap();
    let handled = a.seen.lock().unwrap().len() + b.seen.lock().unwrap().len();
    assert_eq!(handled, 800, "no record handled twice");
    assert_eq!(
        common::committed(&group, &topic, 4),
        common::end_offsets(&topic, 4)
    );
    (revoked_by_join, kept, moved)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cooperative_join_revokes_only_the_moved_partitions() {
    require_broker!();
    common::init_tracing();
    let (revoked, kept, moved) = join_scenario(AssignmentStrategy::CooperativeSticky).await;
    assert_eq!(
        revoked, moved,
        "only the partitions that moved to the new member were revoked"
    );
    assert!(
        kept.iter().all(|p| !revoked.contains(p)),
        "kept partitions {kept:?} were never revoked, so their workers never stopped"
    );

    // The contrast: an eager protocol revokes every partition on the same join.
    let (revoked, _, _) = join_scenario(AssignmentStrategy::Range).await;
    assert_eq!(revoked, vec![0, 1, 2, 3], "eager revokes everything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_report_the_committed_offsets_the_broker_holds() {
    require_broker!();
    common::init_tracing();
    let (topic, group) = (common::unique("stats"), common::unique("g"));
    common::create_topic(&topic, 3).await;
    common::produce(&topic, &common::records(3, 10, 300)).await;
    let end = common::end_offsets(&topic, 3);

    // Statistics off (an hour apart): the committed offsets in Stats can only come from the
    // results of this consumer's own commits.
    let recorder = Recorder::default();
    let c = config(&group, &topic)
        .instance_id("stats-0")
        .stats_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let running = Running::start(StatefulConsumer::new(c, Utf8, Utf8, recorder.clone()));
    let committed_in_stats = |running: &Running| -> Vec<i64> {
        let s = running.stats.snapshot();
        (0..3)
            .map(|p| {
                s.partitions
                    .get(&(topic.clone(), p))
                    .map_or(-2, |ps| ps.committed_next)
            })
            .collect()
    };
    common::wait_until(
        "Stats show every partition committed up to its end",
        WAIT,
        || committed_in_stats(&running) == end,
    )
    .await;
    assert_eq!(
        common::committed(&group, &topic, 3),
        committed_in_stats(&running),
        "Stats agree with what the broker returns for the group"
    );
    assert_eq!(running.stats.snapshot().commit_failures, 0);
    running.stop().await.unwrap();
    assert_eq!(recorder.seen.lock().unwrap().len(), 300);

    // With statistics on, lag is known and zero once caught up; a restart sees the
    // committed offsets at once, before committing anything itself.
    let c = config(&group, &topic)
        .instance_id("stats-0")
        .build()
        .unwrap();
    let running = Running::start(StatefulConsumer::new(c, Utf8, Utf8, Recorder::default()));
    common::wait_until("lag known and zero after a restart", WAIT, || {
        let s = running.stats.snapshot();
        s.partitions.len() == 3
            && s.partitions.iter().all(|((_, p), ps)| {
                ps.high_watermark == end[*p as usize]
                    && ps.committed_next == end[*p as usize]
                    && ps.committed_lag == 0
                    && ps.processed_lag == 0
            })
    })
    .await;
    running.stop().await.unwrap();
}

/// A partition whose handler is slow holds at most its queue budget in memory: librdkafka
/// stops fetching it (and nothing else) once its queue is full, and fetches again as the
/// worker takes records out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_partition_holds_at_most_its_queue_budget() {
    require_broker!();
    common::init_tracing();
    let (topic, group) = (common::unique("budget"), common::unique("g"));
    common::create_topic(&topic, 2).await;
    // 10 MB on each partition (1000 records of 10 KB): forty times the budget.
    let value = "x".repeat(10_000);
    let records: Vec<_> = (0..2000)
        .map(|i| (i % 2, format!("k{i}"), value.clone()))
        .collect();
    // Record batches of at most 64 KB: a broker returns a whole batch even past
    // max.partition.fetch.bytes, and librdkafka's default batch.size is 1 MB.
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .set("batch.size", "65536")
        .create()
        .unwrap();
    common::produce_with(&producer, &topic, &records).await;
    let recorder = Recorder {
        delay: Some((0, Duration::from_millis(20))),
        ..Recorder::default()
    };
    let budget = 256 << 10;
    let c = config(&group, &topic)
        .instance_id("budget-0")
        .queue_bytes(budget)
        .stats_interval(Duration::from_millis(100))
        .set("max.partition.fetch.bytes", "65536")
        .build()
        .unwrap();
    let running = Running::start(StatefulConsumer::new(c, Utf8, Utf8, recorder.clone()));
    let seen = recorder.seen.clone();
    let mut most = 0;
    common::wait_until("partition 1 fully handled", WAIT, || {
        if let Some(p0) = running.stats.snapshot().partitions.get(&(topic.clone(), 0)) {
            most = most.max(p0.queued_bytes);
        }
        seen.lock().unwrap().iter().filter(|(p, _)| *p == 1).count() == 1000
    })
    .await;
    let slow = seen.lock().unwrap().iter().filter(|(p, _)| *p == 0).count();
    assert!(
        slow < 1000,
        "partition 0 is slower than partition 1 ({slow} handled)"
    );
    // Its queue holds the budget plus at most one fetch response that was in flight when it
    // filled — up to the broker's per-partition response size (nisshi answers about 1 MB
    // whatever max.partition.fetch.bytes asks) —; its worker holds a batch of what the queue
    // held; and the figure adds librdkafka's queue as its last statistics (100 ms) saw it,
    // which can still count that batch. Unbounded, it would reach 10 MB.
    let response = (1 << 20) + 10_100;
    assert!(
        most > 0 && most <= 2 * (budget as u64 + response),
        "partition 0 held {most} bytes (budget {budget})"
    );
    running.stop().await.unwrap();
}
