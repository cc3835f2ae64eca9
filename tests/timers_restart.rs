//! Timers survive a SIGKILL: scheduled ones fire after the restart, and a firing whose flush
//! a kill prevented fires again with its state effect applied once.
//!
//! The handler (`common/timers.rs`) schedules a stream-time or wall-clock timer per record
//! and, when one fires, increments the key's count in a `fired` store and sends a `Firing`
//! (who fired it, the count after the increment, the clock at the firing) to an output
//! topic. `src/timer.rs` documents a firing — the timer's removal and its effects — as flushed
//! atomically with the rest of the state: a crash before that flush fires the timer again;
//! its output is at-least-once, its state writes exactly once. So:
//!
//! 1. a child process (this binary re-run with `KS_TIMERS_CHILD`) schedules every timer; its
//!    state is flushed and committed, and it is SIGKILLed before any is due;
//! 2. a second child (same instance id and state directory, flushing only every 60 s) fires
//!    every timer once its time has come and is SIGKILLed before it flushed anything;
//! 3. a consumer in this process restarts on the same state and fires every timer again;
//! 4. a last restart fires nothing, and no timer is pending.
//!
//! Each timer is sent exactly twice (by runs 2 and 3), never before it was due, and every
//! firing counts 1: the lost firing's state write was not kept.

mod common;
#[path = "common/timers.rs"]
mod timers;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{require_broker, KillOnDrop, Probe, Running};
use kafka_stateful::codec::Utf8;
use kafka_stateful::StatefulConsumer;
use timers::{config, schedules, ticks, wait_committed_to_end, Firing, Scheduler};
use timers::{BASE, KEYS, MINUTE, WAIT};

/// The child's body; a no-op unless run as the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_child() {
    let Ok(spec) = std::env::var("KS_TIMERS_CHILD") else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [topic, out, group, dir, probe, instance, flush_ms] = parts[..] else {
        panic!("bad KS_TIMERS_CHILD {spec:?}");
    };
    let probe = Probe::create(Path::new(probe));
    common::init_probe_tracing(probe.clone());
    let handler = Scheduler {
        probe: Some(probe),
        ..Scheduler::new(instance, out)
    };
    let flush = Duration::from_millis(flush_ms.parse().unwrap());
    let config = config(topic, group, "timers-0", Path::new(dir), flush);
    let consumer = StatefulConsumer::new(config, Utf8, Utf8, handler);
    consumer.run(std::future::pending()).await.unwrap();
}

/// The child's probe lines `<ms> <what> …` of `what`.
fn probed(probe: &str, what: &str) -> usize {
    let text = std::fs::read_to_string(probe).unwrap_or_default();
    let of = |l: &&str| l.split(' ').nth(1) == Some(what);
    text.lines().filter(of).count()
}

/// Waits until the child probed `count` lines of `what`; fails if it exits.
async fn wait_probed(child: &mut KillOnDrop, probe: &str, what: &str, count: usize) {
    let awaited = format!("{count} probe lines \"{what}\" from the child");
    common::wait_until(&awaited, WAIT, || {
        assert!(child.alive(), "the child exited");
        probed(probe, what) == count
    })
    .await;
}

fn firings(out: &str) -> Vec<Firing> {
    common::read_all(out, 1)
        .into_iter()
        .map(|(_, v, _)| serde_json::from_slice(&v.unwrap()).unwrap())
        .collect()
}

fn spawn_child(spec: &[&str], stderr: &Path) -> KillOnDrop {
    let child = Command::new(common::self_exe())
        .args(["--exact", "timers_child", "--nocapture", "--test-threads=1"])
        .env("KS_TIMERS_CHILD", spec.join("|"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap();
    KillOnDrop(Some(child))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timers_scheduled_before_a_sigkill_fire_after_the_restart_and_count_once() {
    require_broker!();
    if std::env::var("KS_TIMERS_CHILD").is_ok() {
        return;
    }
    common::init_tracing();
    let (topic, out, group, dir) = (
        common::unique("timers"),
        common::unique("fired"),
        common::unique("g"),
        common::test_dir(),
    );
    common::create_topic(&topic, 2).await;
    common::create_topic(&out, 1).await;
    let state = dir.path().join("state");
    let state_dir = state.to_str().unwrap();
    let file = |name: &str| dir.path().join(name);
    let path = |name: &str| file(name).to_str().unwrap().to_string();

    // 1. The first child schedules every timer, flushes and commits; SIGKILL before any is due.
    let probe1 = path("probe-1.log");
    let spec = [&topic, &out, &group, state_dir, &probe1, "first", "100"];
    let mut first = spawn_child(&spec, &file("child-1.stderr"));
    wait_probed(&mut first, &probe1, "assigned", 2).await;
    let wall_at = common::now_ms() as i64 + 8_000;
    common::produce(&topic, &schedules(wall_at)).await;
    wait_committed_to_end(&group, &topic).await; // committed only once flushed
    assert!(
        (common::now_ms() as i64) < wall_at,
        "the wall-clock timers came due before the first child was killed: test too slow"
    );
    first.kill();
    assert_eq!(
        probed(&probe1, "fired"),
        0,
        "no timer fires before it is due"
    );

    // 2. The second child fires every timer when due; SIGKILL before it flushes anything.
    let probe2 = path("probe-2.log");
    let spec = [&topic, &out, &group, state_dir, &probe2, "second", "60000"];
    let mut second = spawn_child(&spec, &file("child-2.stderr"));
    wait_probed(&mut second, &probe2, "assigned", 2).await;
    common::produce(&topic, &ticks(BASE + 100 * MINUTE)).await;
    // Its firings count once their output is acknowledged (the probe line comes before).
    common::wait_until(
        "every firing of the second child in the output topic",
        WAIT,
        || {
            assert!(second.alive(), "the second child exited");
            let by_second = firings(&out).into_iter().filter(|f| f.instance == "second");
            by_second.count() == 2 * KEYS as usize
        },
    )
    .await;
    second.kill();
    assert!(
        common::read_probe(Path::new(&probe2)).flushed.is_empty(),
        "the second child flushed before the kill: its firings could be durable"
    );

    // 3. A restart on the same state: the firings were lost with the kill, so each fires again.
    let third = Scheduler::new("third", &out);
    let cfg = config(
        &topic,
        &group,
        "timers-0",
        &state,
        Duration::from_millis(100),
    );
    let running = Running::start(StatefulConsumer::new(
        cfg.clone(),
        Utf8,
        Utf8,
        third.clone(),
    ));
    common::wait_until("every timer fired again after the restart", WAIT, || {
        third.fired().len() == 2 * KEYS as usize
    })
    .await;
    wait_committed_to_end(&group, &topic).await;
    running.stop().await.unwrap();

    // 4. Once a firing is flushed, no restart fires the timer again.
    let fourth = Scheduler::new("fourth", &out);
    let running = Running::start(StatefulConsumer::new(cfg, Utf8, Utf8, fourth.clone()));
    common::produce(&topic, &ticks(BASE + 200 * MINUTE)).await;
    wait_committed_to_end(&group, &topic).await;
    let pending: Vec<u64> = running
        .stats
        .snapshot()
        .partitions
        .values()
        .map(|p| p.timers)
        .collect();
    running.stop().await.unwrap();
    assert_eq!(pending, vec![0, 0], "no timer left pending");
    assert_eq!(fourth.fired(), vec![], "a flushed firing never fires again");

    let firings = firings(&out);
    for k in 0..KEYS {
        for kind in ["stream", "wall"] {
            let key = format!("{kind}-{k}");
            let of_key: Vec<&Firing> = firings.iter().filter(|f| f.key == key).collect();
            let by: Vec<&str> = of_key.iter().map(|f| f.instance.as_str()).collect();
            assert_eq!(
                by,
                ["second", "third"],
                "{key} fires once per run that did not flush its firing"
            );
            for f in of_key {
                assert_eq!(
                    f.count, 1,
                    "{key}: the firing's state write applied once: {f:?}"
                );
                assert_eq!(f.kind, kind);
                assert!(f.clock >= f.at, "{key} fired before it was due: {f:?}");
            }
        }
    }
}
