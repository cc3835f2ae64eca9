//! SIGTERM, as Kubernetes, systemd and `docker stop` send it before they kill, to a job with
//! state and output records that runs `run(shutdown_signal())` in a child process while it
//! works through a backlog: the job finishes its in-flight records, flushes, commits and
//! exits on its own within the revoke bound; its restart (same static member, same state
//! directory) restores no changelog record, handles no record twice and sends no output
//! twice, and ends with every key's state exact.

#[path = "common/child.rs"]
mod child;
mod common;

use std::time::{Duration, Instant};

use child::ChildTest;
use common::{require_broker, CountSum, Running};
use kafka_stateful::codec::Utf8;
use kafka_stateful::{ConsumerConfig, StatefulConsumer};

const PARTITIONS: i32 = 2;
const KEYS: usize = 20;
const RECORDS: usize = 6000;
const CHILD: ChildTest = ChildTest {
    name: "sigterm_child",
    var: "KS_SIGTERM_CHILD",
};

fn config(topic: &str, group: &str, dir: &str) -> ConsumerConfig {
    child::count_sum_config(topic, group, "sigterm-0", dir)
        .session_timeout(Duration::from_secs(30))
        // Long intervals: what is durable and committed at the end comes from the shutdown.
        .commit_interval(Duration::from_secs(10))
        .flush_interval(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The child's body; a no-op unless run as the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_child() {
    let Some(([topic, group, dir], probe)) = CHILD.args() else {
        return;
    };
    common::init_probe_tracing(probe.clone());
    let handler = CountSum {
        // About 0.5 ms per record: the backlog lasts a few seconds.
        delay: Some(Duration::from_millis(1)),
        delay_every: 2,
        probe: Some(probe.clone()),
        echo: Some(common::echo(&topic)),
        ..CountSum::new(&topic)
    };
    let consumer = StatefulConsumer::new(config(&topic, &group, &dir), Utf8, Utf8, handler);
    consumer
        .run(kafka_stateful::shutdown_signal())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_flushes_commits_and_the_restart_restores_and_repeats_nothing() {
    require_broker!();
    if CHILD.in_child() {
        return;
    }
    common::init_tracing();
    let (topic, group, dir) = (
        common::unique("sigterm"),
        common::unique("g"),
        common::test_dir(),
    );
    let state_dir = dir.path().join("state").to_str().unwrap().to_string();
    common::create_workload_topics(&topic, PARTITIONS).await;
    common::create_topic(&common::echo_topic(&topic), PARTITIONS).await;
    let mut workload = common::Workload::new(PARTITIONS, KEYS, 7);
    let mut weights = common::Weights::new(PARTITIONS, KEYS, 7);
    common::produce(&common::weights_topic(&topic), &weights.all(10)).await;
    common::produce(&topic, &workload.batch(RECORDS)).await;

    let mut job = CHILD.spawn(dir.path(), "job", &[&topic, &group, &state_dir]);
    // Stop it in the middle of the backlog, while records are being handled.
    common::wait_until("the job handles records", Duration::from_secs(60), || {
        job.assert_alive("the job");
        common::read_probe(&job.probe).processing.len() >= 10
    })
    .await;
    job.signal("TERM");
    let signalled = Instant::now();
    let mut status = None;
    common::wait_until(
        "the job exits after SIGTERM",
        Duration::from_secs(20),
        || {
            status = job.process.child().try_wait().unwrap();
            status.is_some()
        },
    )
    .await;
    let status = status.expect("exited");
    assert!(status.success(), "exit {status}:\n{}", job.stderr_tail());
    let committed = common::committed(&group, &topic, PARTITIONS);
    let ends = common::end_offsets(&topic, PARTITIONS);
    println!(
        "sigterm: exited {:.2} s after the signal; committed {committed:?} of {ends:?}",
        signalled.elapsed().as_secs_f64()
    );
    assert!(
        committed.iter().zip(&ends).any(|(c, e)| c < e),
        "the signal came after the backlog was done: the test proved nothing"
    );

    // The restart: one more record per key so that it sees every key's state.
    common::produce(&topic, &workload.one_per_key()).await;
    let handler = CountSum {
        echo: Some(common::echo(&topic)),
        ..CountSum::new(&topic)
    };
    let running = Running::start(StatefulConsumer::new(
        config(&topic, &group, &state_dir),
        Utf8,
        Utf8,
        handler.clone(),
    ));
    common::wait_until(
        "everything processed and committed",
        Duration::from_secs(120),
        || common::committed(&group, &topic, PARTITIONS) == common::end_offsets(&topic, PARTITIONS),
    )
    .await;
    let restored: u64 = running
        .stats
        .snapshot()
        .partitions
        .values()
        .map(|p| p.restored_records)
        .sum();
    running.stop().await.unwrap();
    assert_eq!(restored, 0, "a graceful stop leaves nothing to restore");
    let wrong = common::state_mismatches(&workload.expected(), &handler.last.lock().unwrap());
    assert!(
        wrong.is_empty(),
        "keys wrong after SIGTERM:\n{}",
        wrong.join("\n")
    );
    let repeated = common::every_record_echoed_at_least_once(&topic, PARTITIONS);
    assert_eq!(
        repeated, 0,
        "an output was sent twice after a graceful stop"
    );
}
