//! Crash consistency: a child process counting records into a store is killed with SIGKILL
//! at varied moments, restarted, and at the end every key's count equals what was produced.
//!
//! The child is this test binary re-run with `KS_CRASH_CHILD` set (see `crash_child`).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{require_broker, Counter, Running};
use kafka_stateful::codec::Utf8;
use kafka_stateful::{ConsumerConfig, StatefulConsumer};

const ROUNDS: u64 = 6;

fn child_config(topic: &str, group: &str, dir: &str, counter: &Counter) -> ConsumerConfig {
    ConsumerConfig::builder(common::bootstrap(), group, [topic])
        .instance_id("crash-0")
        .session_timeout(Duration::from_secs(10))
        .commit_interval(Duration::from_millis(150))
        // Small, frequent flushes so kills land before, during and after flushes and commits.
        .flush_max_records(37)
        .flush_interval(Duration::from_millis(50))
        .state_dir(dir)
        .store(&counter.store)
        .build()
        .unwrap()
}

/// The child's body; a no-op unless run as the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(spec) = std::env::var("KS_CRASH_CHILD") else {
        return;
    };
    let mut parts = spec.split('|');
    let (topic, group, dir) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let counter = Counter {
        delay: Some(Duration::from_micros(300)),
        ..Counter::default()
    };
    let consumer = StatefulConsumer::new(
        child_config(topic, group, dir, &counter),
        Utf8,
        Utf8,
        counter,
    );
    consumer.run(std::future::pending()).await.unwrap();
}

fn spawn_child(topic: &str, group: &str, dir: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("KS_CRASH_CHILD", format!("{topic}|{group}|{dir}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_random_moments_neither_loses_nor_double_counts() {
    require_broker!();
    if std::env::var("KS_CRASH_CHILD").is_ok() {
        return;
    }
    common::init_tracing();
    let (topic, group, dir) = (
        common::unique("crash"),
        common::unique("g"),
        tempfile::tempdir().unwrap(),
    );
    let dir_str = dir.path().to_str().unwrap().to_string();
    common::create_topic(&topic, 2).await;
    let mut produced = common::records(2, 40, 8000);
    common::produce(&topic, &produced).await;

    // Pseudo-random kill delays from the clock; the seed is printed for reproduction.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("kill seed {seed}");
    let mut rounds = 0;
    for round in 0..ROUNDS {
        let mut child = spawn_child(&topic, &group, &dir_str);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // The child needs ~3 s to join; kill between 3 and 6 s: before, during and after work.
        let kill_after = Duration::from_millis(3000 + (seed >> 33) % 3000);
        let started = Instant::now();
        while started.elapsed() < kill_after {
            assert!(
                child.try_wait().unwrap().is_none(),
                "child exited by itself in round {round}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        rounds += 1;
        // More input between crashes, so later rounds have work mid-stream.
        let more = common::records(2, 40, 500);
        common::produce(&topic, &more).await;
        produced.extend(more);
    }
    println!(
        "kill rounds: {rounds}, committed before final run: {:?}",
        common::committed(&group, &topic, 2)
    );

    // One record per key last, so the final in-process run observes every key's count.
    let probes: Vec<_> = (0..40)
        .map(|k| (k % 2, format!("key-{k}"), "probe".to_string()))
        .collect();
    common::produce(&topic, &probes).await;
    produced.extend(probes);
    let counter = Counter::default();
    let running = Running::start(StatefulConsumer::new(
        child_config(&topic, &group, &dir_str, &counter),
        Utf8,
        Utf8,
        counter.clone(),
    ));
    common::wait_until(
        "everything processed and committed",
        Duration::from_secs(120),
        || common::committed(&group, &topic, 2) == common::end_offsets(&topic, 2),
    )
    .await;
    running.stop().await.unwrap();
    let expected = common::expected_counts(&produced);
    let last = counter.last.lock().unwrap();
    for (key, n) in &expected {
        assert_eq!(
            last.get(key),
            Some(n),
            "count of {key} after {rounds} SIGKILL rounds"
        );
    }
}
