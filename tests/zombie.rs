//! A zombie: a consumer process frozen (SIGSTOP) past its session timeout while it holds
//! partitions and processes a stream, replaced meanwhile by another member, then resumed
//! (SIGCONT). It may finish a flush or a commit it had started, or start new ones, on
//! partitions that are no longer its own. That must neither lose a record nor apply one
//! twice.
//!
//! 1. Child process A (this test binary re-run with `KS_ZOMBIE_CHILD` set, see
//!    `zombie_child`; static member `zombie-a`, its own state directory) counts records per
//!    key into a `counts` store and sums their values into a `sums` store, with small
//!    frequent flushes and commits, while records arrive steadily (2000/s). It writes a probe
//!    file (sampled offsets, the library's restores, flushes and warnings, ownership hooks,
//!    per-partition stats) and logs the library's and librdkafka's INFO to stderr.
//! 2. Once A flushed a few times and committed on both partitions and is processing (past
//!    its initial backlog, in steady state), it is frozen with SIGSTOP; records keep
//!    arriving.
//! 3. Consumer B (this process, static member `zombie-b`, empty state directory) joins the
//!    group; after A's session expired it owns both partitions, restores A's flushed state
//!    from the changelogs (writing a newer epoch) and processes: A stays frozen until B
//!    committed everything produced before the freeze.
//! 4. A is resumed with SIGCONT while B processes the stream, and is awaited until the
//!    worker of every partition it held stopped (a flush fenced by B's epoch, or a revoke
//!    hook); then it is killed (no chance to rejoin and become a legitimate owner). The
//!    changelog records A wrote after it was resumed (void: an older epoch after a newer
//!    one) are counted and printed; the group's committed offsets must never move backwards
//!    (a zombie's stale commit must be refused).
//! 5. A final round of records (one per key last) is handled by B; B is stopped and a
//!    consumer with B's instance id on an *empty* state directory (C: the changelogs are the
//!    only truth) handles one more record per key. Every key's count and sum seen by B and by
//!    C must equal those computed from the produced records (exactly once), and the committed
//!    offsets must equal the end offsets.
//! 6. Last, the zombie's lost partitions must have been wound down as lost: `on_lost`, not
//!    `on_revoked` followed by a flush (the graceful path, which writes on behalf of a
//!    partition another member owns).
//!
//! `KS_ZOMBIE_SEED` (printed) reproduces the input; `KS_KEEP_DIR=1` keeps the probe file,
//! the child's stderr and the state directories.

#[path = "common/child.rs"]
mod child;
mod common;
#[path = "common/zombie.rs"]
mod zombie;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use child::ChildTest;
use common::{require_broker, CountSum, Running};
use kafka_stateful::changelog::changelog_topic;
use kafka_stateful::codec::Utf8;
use kafka_stateful::{ConsumerConfig, StatefulConsumer};
use zombie::{noticed_since, probe_since, CommitWatch, Feed};

const PARTITIONS: i32 = 2;
const KEYS: usize = 40;
/// Records before A starts.
const INITIAL_RECORDS: usize = 2000;
/// Weights per key in the table before A starts.
const WEIGHT_VERSIONS: usize = 10;
/// From A's start until the zombie is killed, records arrive steadily: this many every
/// [`FEED_EVERY`] (2000/s), so A is processing and flushing when it is frozen and B when A
/// is resumed.
const FEED_CHUNK: usize = 100;
const FEED_EVERY: Duration = Duration::from_millis(50);
/// Records of the final round (before one record per key).
const FINAL_RECORDS: usize = 2000;
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// Flushes per partition before A is frozen: past its initial backlog, in steady state.
const STEADY_FLUSHES: usize = 5;
const CHILD: ChildTest = ChildTest {
    name: "zombie_child",
    var: "KS_ZOMBIE_CHILD",
};

fn config(topic: &str, group: &str, instance: &str, dir: &str) -> ConsumerConfig {
    child::group_member_config(topic, group, instance, dir, SESSION_TIMEOUT)
        .commit_interval(Duration::from_millis(150))
        // Small, frequent flushes: the freeze lands with a flush in flight or about to start.
        .flush_max_records(37)
        .flush_interval(Duration::from_millis(50))
        .build()
        .unwrap()
}

/// Child A's body; a no-op unless run as the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_child() {
    let Some(([topic, group, instance, dir], probe)) = CHILD.args() else {
        return;
    };
    zombie::init_zombie_tracing(probe.clone());
    let handler = CountSum {
        probe: Some(probe.clone()),
        ..CountSum::new(&topic)
    };
    let consumer =
        StatefulConsumer::new(config(&topic, &group, &instance, &dir), Utf8, Utf8, handler);
    common::probe_stats(consumer.stats(), probe);
    consumer.run(std::future::pending()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_then_resumed_zombie_neither_loses_nor_double_applies() {
    require_broker!();
    if CHILD.in_child() {
        return;
    }
    common::init_tracing();
    let test_started = Instant::now();
    let (_, seed) = common::Rng::from_env_or_clock("KS_ZOMBIE_SEED");
    println!("zombie: seed {seed} (KS_ZOMBIE_SEED={seed} reproduces the input)");
    let dir = common::test_dir();
    let (topic, group) = (common::unique("zombie"), common::unique("g"));
    let changelogs = [
        changelog_topic(&group, "counts"),
        changelog_topic(&group, "sums"),
    ];
    let state = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (state_a, state_b, state_c) = (state("state-a"), state("state-b"), state("state-c"));
    common::create_workload_topics(&topic, PARTITIONS).await;
    let mut workload = common::Workload::new(PARTITIONS, KEYS, seed);
    let mut weights = common::Weights::new(PARTITIONS, KEYS, seed);
    common::produce(
        &common::weights_topic(&topic),
        &weights.all(WEIGHT_VERSIONS),
    )
    .await;
    common::produce(&topic, &workload.batch(INITIAL_RECORDS)).await;

    // 1. A consumes a steady stream, flushes and commits.
    let mut a = CHILD.spawn(dir.path(), "a", &[&topic, &group, "zombie-a", &state_a]);
    let (probe, stderr) = (a.probe.clone(), a.stderr.clone());
    let feed = Feed::start(&topic, workload, FEED_CHUNK, FEED_EVERY);
    let phase = Instant::now();
    common::wait_until(
        "A flushed a few times and committed on both partitions, and is processing",
        Duration::from_secs(60),
        || {
            a.assert_alive("A");
            let log = common::read_probe(&probe);
            let flushes = |p: i32| log.flushed.iter().filter(|f| f.1 == p).count();
            (0..PARTITIONS).all(|p| flushes(p) >= STEADY_FLUSHES)
                && log.processed_since(common::now_ms().saturating_sub(common::ACTIVE_WINDOW_MS))
                && common::committed(&group, &topic, PARTITIONS)
                    .iter()
                    .all(|&c| c > 0)
        },
    )
    .await;
    println!(
        "A flushed {STEADY_FLUSHES}+ times and committed on both partitions after {:.1} s",
        phase.elapsed().as_secs_f64()
    );

    // 2. Freeze A while records keep arriving.
    a.assert_alive("A");
    let freeze_ms = common::now_ms();
    a.signal("STOP");
    common::wait_until("A stopped (SIGSTOP)", Duration::from_secs(5), || {
        a.stopped()
    })
    .await;
    let ends_at_freeze = common::end_offsets(&topic, PARTITIONS);
    let committed_at_freeze = common::committed(&group, &topic, PARTITIONS);
    let log_a = common::read_probe(&probe);
    let held = log_a.held_at(freeze_ms);
    let epochs_a: BTreeSet<(i32, u64)> = log_a.restored.iter().map(|(_, p, e)| (*p, *e)).collect();
    println!(
        "SIGSTOP A: held {held:?} (epochs {epochs_a:?}); {}; end offsets {ends_at_freeze:?}, \
         committed {committed_at_freeze:?}",
        zombie::last_activity(&log_a, freeze_ms)
    );
    assert_eq!(
        held,
        (0..PARTITIONS).collect::<Vec<_>>(),
        "A must hold every partition when it is frozen"
    );

    // 3. B joins; after A's session expired it owns both partitions, and it processes past
    // everything produced before the freeze while A stays frozen.
    let phase = Instant::now();
    let handler_b = CountSum::new(&topic);
    let b = Running::start(StatefulConsumer::new(
        config(&topic, &group, "zombie-b", &state_b),
        Utf8,
        Utf8,
        handler_b.clone(),
    ));
    common::wait_until(
        "B owns both partitions and committed past everything produced before the freeze \
         (A frozen)",
        Duration::from_secs(60),
        || {
            assert!(!b.join.is_finished(), "B's run() ended");
            let ready = b
                .stats
                .snapshot()
                .partitions
                .values()
                .filter(|s| s.ready)
                .count();
            ready == PARTITIONS as usize
                && common::committed(&group, &topic, PARTITIONS)
                    .iter()
                    .zip(&ends_at_freeze)
                    .all(|(c, e)| c >= e)
        },
    )
    .await;
    let snapshot = b.stats.snapshot();
    println!(
        "B took over after {:.1} s (A frozen {:.1} s): restored {:?} changelog records, \
         committed {:?}",
        phase.elapsed().as_secs_f64(),
        (common::now_ms() - freeze_ms) as f64 / 1000.0,
        snapshot
            .partitions
            .iter()
            .map(|((_, p), s)| (*p, s.restored_records))
            .collect::<Vec<_>>(),
        common::committed(&group, &topic, PARTITIONS)
    );
    let mut commits = CommitWatch::new(&group, &topic, PARTITIONS);

    // 4. Resume A while B processes the stream; wait until A noticed for every partition.
    let changelog_at_wake: Vec<Vec<i64>> = changelogs
        .iter()
        .map(|t| common::end_offsets_or_zero(t, PARTITIONS))
        .collect();
    let wake_ms = common::now_ms();
    let log_from = std::fs::metadata(&stderr).map_or(0, |m| m.len() as usize);
    a.signal("CONT");
    let phase = Instant::now();
    let mut exited = None;
    let stopped = common::wait_for(Duration::from_secs(30), || {
        commits.check("while the zombie was awake");
        if let Some(status) = a.process.child().try_wait().unwrap() {
            exited = Some(status);
            return true;
        }
        let noticed = noticed_since(&probe, wake_ms, &stderr, log_from);
        held.iter().all(|p| noticed.covers(*p))
    })
    .await;
    assert!(
        stopped,
        "timed out after 30 s waiting for the resumed zombie A to stop the worker of every \
         partition it held ({held:?}) (fenced flush, on_lost or on_revoked), or to exit; it \
         noticed: {:?}; its probe since SIGCONT:\n{}",
        noticed_since(&probe, wake_ms, &stderr, log_from),
        probe_since(&probe, wake_ms)
    );
    let noticed_after = phase.elapsed();
    let noticed = noticed_since(&probe, wake_ms, &stderr, log_from);
    // The zombie stopped touching the partitions it noticed; give it no chance to rejoin and
    // become a legitimate owner again (the crash and chaos tests cover that).
    a.kill();
    let mut workload = feed.stop().await;
    let mut written = BTreeMap::new();
    for (t, from) in changelogs.iter().zip(&changelog_at_wake) {
        common::changelog_flush_records(t, PARTITIONS, from, &mut written);
    }
    let zombie_writes: Vec<String> = written
        .iter()
        .filter(|((p, e, _), _)| epochs_a.contains(&(*p, *e)))
        .map(|((p, e, s), r)| {
            format!(
                "p{p} epoch {e} seq {s}: {} data + {} markers",
                r.data, r.markers
            )
        })
        .collect();
    println!(
        "SIGCONT A: its workers stopped after {:.2} s{}: fenced flush on {:?}, on_lost on {:?}, \
         on_revoked on {:?}; librdkafka revoked (lost?) {:?}; failed commits {:?}; restored \
         again {:?}; changelog records A wrote after it was resumed (void: older epoch): \
         {zombie_writes:?}; A's warnings: {:?}; librdkafka's: {:?}",
        noticed_after.as_secs_f64(),
        exited.map_or(String::new(), |s| format!(" (exited: {s})")),
        noticed.fenced,
        noticed.lost,
        noticed.revoked,
        noticed.revoke_lost,
        noticed.commit_failed,
        noticed.reassigned,
        noticed.warnings,
        noticed.librdkafka
    );

    // 5. A final round for B, one record per key last.
    let phase = Instant::now();
    common::produce(&topic, &workload.batch(FINAL_RECORDS)).await;
    common::produce(&topic, &workload.one_per_key()).await;
    common::wait_until(
        "B processed and committed everything",
        Duration::from_secs(60),
        || {
            assert!(!b.join.is_finished(), "B's run() ended");
            commits.check("after the zombie was killed") == common::end_offsets(&topic, PARTITIONS)
        },
    )
    .await;
    let b_stats = b.stats.snapshot();
    b.stop().await.unwrap();
    println!(
        "B caught up in {:.1} s; B's commit failures: {}",
        phase.elapsed().as_secs_f64(),
        b_stats.commit_failures
    );
    let expected = workload.expected();
    let stale = weights.mismatches(&handler_b.weights_seen.lock().unwrap());
    assert!(
        stale.is_empty(),
        "weights table of B:\n{}",
        stale.join("\n")
    );
    let wrong = common::state_mismatches(&expected, &handler_b.last.lock().unwrap());
    assert!(
        wrong.is_empty(),
        "B's state after the zombie (seed {seed}): {} of {KEYS} keys are wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // C: B's instance id (it gets B's assignment at once) on an empty state directory, so
    // the state it sees is exactly what the changelogs hold.
    let phase = Instant::now();
    common::produce(&topic, &workload.one_per_key()).await;
    let handler_c = CountSum::new(&topic);
    let c = Running::start(StatefulConsumer::new(
        config(&topic, &group, "zombie-b", &state_c),
        Utf8,
        Utf8,
        handler_c.clone(),
    ));
    common::wait_until(
        "C (empty state dir) processed and committed everything",
        Duration::from_secs(60),
        || {
            assert!(!c.join.is_finished(), "C's run() ended");
            commits.check("fresh consumer C") == common::end_offsets(&topic, PARTITIONS)
        },
    )
    .await;
    let c_restored: u64 = c
        .stats
        .snapshot()
        .partitions
        .values()
        .map(|s| s.restored_records)
        .sum();
    c.stop().await.unwrap();
    assert_eq!(
        common::committed(&group, &topic, PARTITIONS),
        common::end_offsets(&topic, PARTITIONS)
    );
    let expected = workload.expected();
    let stale = weights.mismatches(&handler_c.weights_seen.lock().unwrap());
    assert!(
        stale.is_empty(),
        "weights table of C:\n{}",
        stale.join("\n")
    );
    let wrong = common::state_mismatches(&expected, &handler_c.last.lock().unwrap());
    assert!(
        wrong.is_empty(),
        "state restored from the changelogs after the zombie (seed {seed}): {} of {KEYS} keys \
         are wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // 6. The zombie's lost partitions must be wound down as lost: `on_lost`, nothing flushed or
    // kept. A graceful revoke (`on_revoked`, whose writes and output are kept, then a flush)
    // on a partition another member owns is the zombie writing on its behalf.
    let revoked_while_lost = noticed.revoked_while_lost();
    let written_while_lost: Vec<&String> = zombie_writes
        .iter()
        .filter(|w| {
            revoked_while_lost
                .iter()
                .any(|p| w.starts_with(&format!("p{p} ")))
        })
        .collect();
    assert!(
        revoked_while_lost.is_empty(),
        "the zombie's assignment was revoked as lost (librdkafka: lost=true) but partition(s) \
         {revoked_while_lost:?} ran on_revoked instead of on_lost: the graceful path (hook \
         writes kept, output sent, then a final flush unless the lost flag was seen by then); \
         changelog records it wrote for them after it was resumed: {written_while_lost:?} \
         (state stayed exact: {}); the zombie's probe since SIGCONT:\n{}",
        if written_while_lost.is_empty() {
            "nothing was written"
        } else {
            "B's newer epoch fenced the flush"
        },
        probe_since(&probe, wake_ms)
    );
    println!(
        "zombie: {} records; C restored {c_restored} changelog records, done in {:.1} s; every \
         key's count and sum exact for B and for C, committed == end; {:.1} s",
        workload.produced.len(),
        phase.elapsed().as_secs_f64(),
        test_started.elapsed().as_secs_f64()
    );
}
