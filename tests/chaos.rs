//! Fault injection over a group of processes: three children (this test binary re-run with
//! `KS_CHAOS_CHILD` set, see `chaos_child`) consume a 4-partition topic in one group, each
//! with its own static instance id and state directory, counting records per key into a
//! `counts` store and summing their values into a `sums` store.
//!
//! Each round produces more input, picks a random child, waits until it is processing, and
//! SIGKILLs it at a random moment. Rounds alternate between
//! - *quick*: the child is restarted at once; as a static member it gets its partitions back
//!   within the session timeout (6 s) and restarts on its own local state;
//! - *moved*: the child stays dead until the others took over its partitions (after the
//!   session timeout; they restore from the changelogs on top of whatever stale local state
//!   they had, or promote the standby replica they kept), then it is restarted and the
//!   group rebalances again.
//!
//! Every member keeps one standby replica per partition (placed by prediction: three
//! members, one replica), so promotions, replicas on stale local state and replicas handed
//! back and forth run under the same kills and the same final check.
//!
//! Every kill is classified from the child's probe file and the changelogs, as in
//! `crash.rs`. At the end all children are killed, one more record per key is produced, and
//! a fresh consumer (new instance id, empty state directory: it restores everything from the
//! changelogs) handles it: every key's count and sum must equal those computed from the
//! produced records, and the committed offsets must equal the end offsets.
//!
//! `KS_CHAOS_ROUNDS` (default 8) and `KS_CHAOS_SEED` (printed) change the rounds and seed;
//! `KS_KEEP_DIR=1` keeps the probe files, child logs and state directories.

#[path = "common/child.rs"]
mod child;
mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use child::{Child, ChildTest};
use common::{require_broker, CountSum, Running};
use kafka_stateful::changelog::changelog_topic;
use kafka_stateful::codec::Utf8;
use kafka_stateful::{AssignmentStrategy, ConsumerConfig, StandbyReplicas, StatefulConsumer};

const PARTITIONS: i32 = 4;
const KEYS: usize = 60;
const CHILDREN: usize = 3;
const DEFAULT_ROUNDS: u64 = 8;
const INITIAL_RECORDS: usize = 8000;
const RECORDS_PER_ROUND: usize = 6000;
/// Weights per key in the table before the first child starts, and new weights per round.
const WEIGHT_VERSIONS: usize = 50;
const WEIGHT_UPDATES_PER_ROUND: usize = 100;
/// Kill delays are uniform in `0..MAX_DELAY_MS` after the victim was seen processing.
const MAX_DELAY_MS: u64 = 1000;
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
const CHILD: ChildTest = ChildTest {
    name: "chaos_child",
    var: "KS_CHAOS_CHILD",
};

/// Members differ in key-level concurrency (`chaos-0`: one record at a time, `chaos-1`: 8
/// in flight, `chaos-2`: 3): partitions move between them with records finished out of
/// order in their changelogs.
fn concurrency_of(instance: &str) -> usize {
    match instance.rsplit('-').next() {
        Some("1") => 8,
        Some("2") => 3,
        _ => 1,
    }
}

fn config(topic: &str, group: &str, instance: &str, dir: &str) -> ConsumerConfig {
    child::group_member_config(topic, group, instance, dir, SESSION_TIMEOUT)
        .key_concurrency(concurrency_of(instance))
        .commit_interval(Duration::from_millis(200))
        .flush_max_records(50)
        .flush_interval(Duration::from_millis(100))
        // Cooperative-sticky as before: its placement is a guess (see `standby`), so moves
        // find warm replicas, stale ones and none.
        .assignment(AssignmentStrategy::CooperativeSticky)
        .standby_replicas(StandbyReplicas::new(1).refresh_interval(Duration::from_secs(1)))
        .build()
        .unwrap()
}

/// The child's body; a no-op unless run as a child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_child() {
    let Some(([topic, group, instance, dir], probe)) = CHILD.args() else {
        return;
    };
    common::init_probe_tracing(probe.clone());
    let handler = CountSum {
        delay: Some(Duration::from_millis(1)),
        delay_every: 3,
        probe: Some(probe.clone()),
        ..CountSum::new(&topic)
    };
    let consumer =
        StatefulConsumer::new(config(&topic, &group, &instance, &dir), Utf8, Utf8, handler)
            .with_restore_listener(common::ProbeListener(probe.clone()));
    common::probe_stats(consumer.stats(), probe);
    consumer.run(std::future::pending()).await.unwrap();
}

/// One child slot: its instance id and state dir stay, its process is replaced on restart.
struct Slot {
    instance: String,
    state_dir: String,
    /// Starts so far; names this process's probe and stderr files (`<slot>-<incarnation>`).
    incarnation: u32,
    child: Child,
}

struct Group {
    topic: String,
    group: String,
    dir: PathBuf,
    slots: Vec<Slot>,
}

impl Group {
    /// Starts a child in a new slot `i`: instance id `chaos-<i>`, state dir `state-<i>`.
    fn add(&mut self) {
        let i = self.slots.len();
        let instance = format!("chaos-{i}");
        let state_dir = self.dir.join(format!("state-{i}"));
        let state_dir = state_dir.to_str().unwrap().to_string();
        let child = self.start(i, 1, &instance, &state_dir);
        self.slots.push(Slot {
            instance,
            state_dir,
            incarnation: 1,
            child,
        });
    }

    /// Starts child `i` again on its slot's instance id and state dir (the previous process,
    /// killed already, is reaped).
    fn restart(&mut self, i: usize) {
        let slot = &self.slots[i];
        let child = self.start(i, slot.incarnation + 1, &slot.instance, &slot.state_dir);
        let slot = &mut self.slots[i];
        slot.incarnation += 1;
        slot.child = child;
    }

    fn start(&self, i: usize, incarnation: u32, instance: &str, state_dir: &str) -> Child {
        let name = format!("{i}-{incarnation}");
        let args = [self.topic.as_str(), &self.group, instance, state_dir];
        CHILD.spawn(&self.dir, &name, &args)
    }

    /// Panics (with the child's stderr) when a child that should run exited by itself.
    fn check_alive(&mut self, except: Option<usize>) {
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if Some(i) != except {
                slot.child.assert_alive(&slot.instance);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_random_members_of_a_group_neither_loses_nor_double_counts() {
    require_broker!();
    if CHILD.in_child() {
        return;
    }
    common::init_tracing();
    let test_started = Instant::now();
    let rounds: u64 = std::env::var("KS_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    let (mut rng, seed) = common::Rng::from_env_or_clock("KS_CHAOS_SEED");
    println!(
        "chaos: seed {seed} (KS_CHAOS_SEED={seed} reproduces victims, delays and input), \
         {rounds} rounds, {CHILDREN} processes, {PARTITIONS} partitions"
    );
    let dir = common::test_dir();
    let (topic, group_id) = (common::unique("chaos"), common::unique("g"));
    let changelogs = [
        changelog_topic(&group_id, "counts"),
        changelog_topic(&group_id, "sums"),
    ];
    common::create_workload_topics(&topic, PARTITIONS).await;
    let mut workload = common::Workload::new(PARTITIONS, KEYS, seed);
    let mut weights = common::Weights::new(PARTITIONS, KEYS, seed);
    common::produce(
        &common::weights_topic(&topic),
        &weights.all(WEIGHT_VERSIONS),
    )
    .await;
    common::produce(&topic, &workload.batch(INITIAL_RECORDS)).await;

    let mut group = Group {
        topic: topic.clone(),
        group: group_id.clone(),
        dir: dir.path().to_path_buf(),
        slots: Vec::new(),
    };
    for _ in 0..CHILDREN {
        group.add();
    }
    let (mut processing_kills, mut flush_kills, mut idle_kills) = (0, 0, 0);
    for round in 0..rounds {
        let moved = round % 2 == 1;
        let victim = rng.below(CHILDREN as u64) as usize;
        let probe = group.slots[victim].child.probe.clone();
        // The victim must own partitions when the round's input arrives, or the others may
        // process all of it first (a restarted member needs a few seconds to rejoin).
        let owned = common::wait_for(Duration::from_secs(30), || {
            group.check_alive(None);
            !common::read_probe(&probe)
                .held_at(common::now_ms())
                .is_empty()
        })
        .await;
        let from: Vec<Vec<i64>> = changelogs
            .iter()
            .map(|t| common::end_offsets_or_zero(t, PARTITIONS))
            .collect();
        let produced_ms = common::now_ms();
        common::produce(&topic, &workload.batch(RECORDS_PER_ROUND)).await;
        common::produce(
            &common::weights_topic(&topic),
            &weights.updates(WEIGHT_UPDATES_PER_ROUND),
        )
        .await;
        let ends = common::end_offsets(&topic, PARTITIONS);
        // A victim that is not seen processing (it lost its partitions meanwhile) is killed
        // all the same after the deadline; the verdict then says it was idle.
        let seen_processing = common::wait_for(Duration::from_secs(20), || {
            group.check_alive(None);
            common::read_probe(&probe).processed_since(produced_ms)
        })
        .await;
        let delay = rng.below(MAX_DELAY_MS);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        group.check_alive(None);
        let slot = &mut group.slots[victim];
        let (instance, incarnation, up) = (
            slot.instance.clone(),
            slot.incarnation,
            slot.child.started.elapsed(),
        );
        let kill_ms = common::now_ms();
        slot.child.kill(); // SIGKILL
        let log = common::read_probe(&slot.child.probe);
        let held = log.held_at(kill_ms);
        let mut flushes = BTreeMap::new();
        for (t, f) in changelogs.iter().zip(&from) {
            common::changelog_flush_records(t, PARTITIONS, f, &mut flushes);
        }
        let verdict = common::classify_kill(&log, kill_ms, &ends, &flushes, &held);
        if !verdict.processing.is_empty() {
            processing_kills += 1;
        }
        if !verdict.cut_flushes.is_empty() {
            flush_kills += 1;
        }
        if verdict.processing.is_empty() && verdict.cut_flushes.is_empty() {
            idle_kills += 1;
        }
        println!(
            "round {round} ({}): SIGKILL {instance} #{incarnation} (up {:.1} s) {delay} ms \
             after {}; held {held:?}; processing at kill {:?}; cut flushes {}",
            if moved { "moved" } else { "quick" },
            up.as_secs_f64(),
            match (owned, seen_processing) {
                (_, true) => "it was seen processing",
                (true, false) => "20 s without seeing it process",
                (false, false) => "30 s without it owning a partition",
            },
            verdict.processing,
            verdict.cut_flushes_text(changelogs.len()),
        );
        if !seen_processing {
            for p in &held {
                if let Some((t, text)) = log.stats.get(p) {
                    println!(
                        "  {instance} p{p} {} ms before the kill: {text}",
                        kill_ms.saturating_sub(*t)
                    );
                }
            }
        }
        if moved && !held.is_empty() {
            // Wait until the survivors own every partition the victim held.
            let waited = Instant::now();
            let survivors: Vec<PathBuf> = (0..CHILDREN)
                .filter(|i| *i != victim)
                .map(|i| group.slots[i].child.probe.clone())
                .collect();
            common::wait_until(
                "survivors took over the victim's partitions",
                Duration::from_secs(60),
                || {
                    group.check_alive(Some(victim));
                    let now = common::now_ms();
                    held.iter().all(|p| {
                        survivors
                            .iter()
                            .any(|s| common::read_probe(s).held_at(now).contains(p))
                    })
                },
            )
            .await;
            println!(
                "  survivors own {held:?} {:.1} s after the kill; restarting {instance}",
                waited.elapsed().as_secs_f64()
            );
        }
        group.restart(victim);
    }
    for slot in &group.slots {
        let log = common::read_probe(&slot.child.probe);
        if !log.warnings.is_empty() {
            println!(
                "  {} #{} warned: {:?}",
                slot.instance, slot.incarnation, log.warnings
            );
        }
    }
    println!(
        "chaos: {rounds} kills: during processing {processing_kills}, during a flush \
         {flush_kills}, idle {idle_kills}; {:.1} s",
        test_started.elapsed().as_secs_f64()
    );

    // The end: every child killed, then one record per key for a fresh consumer that
    // restores every partition from the changelogs.
    group.check_alive(None);
    for slot in &mut group.slots {
        slot.child.kill();
    }
    common::produce(&topic, &workload.one_per_key()).await;
    let final_started = Instant::now();
    let handler = CountSum::new(&topic);
    let final_dir = dir.path().join("state-final");
    let running = Running::start(StatefulConsumer::new(
        config(
            &topic,
            &group_id,
            "chaos-final",
            final_dir.to_str().unwrap(),
        ),
        Utf8,
        Utf8,
        handler.clone(),
    ));
    common::wait_until(
        "everything processed and committed",
        Duration::from_secs(120),
        || {
            common::committed(&group_id, &topic, PARTITIONS)
                == common::end_offsets(&topic, PARTITIONS)
        },
    )
    .await;
    running.stop().await.unwrap();
    println!(
        "final consumer (fresh state dir): {:.1} s",
        final_started.elapsed().as_secs_f64()
    );
    assert_eq!(
        common::committed(&group_id, &topic, PARTITIONS),
        common::end_offsets(&topic, PARTITIONS)
    );
    let stale = weights.mismatches(&handler.weights_seen.lock().unwrap());
    assert!(
        stale.is_empty(),
        "after {rounds} chaos rounds (seed {seed}), the weights table differs from its topic:\n{}",
        stale.join("\n")
    );
    let wrong = common::state_mismatches(&workload.expected(), &handler.last.lock().unwrap());
    assert!(
        wrong.is_empty(),
        "after {rounds} chaos rounds (seed {seed}), {} of {KEYS} keys are wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // Promotions of standby replicas in the children (restored records each).
    let promoted: Vec<u64> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| {
                    // `<ms> promoted <topic> <partition> <records>`
                    l.split_once(" promoted ")?
                        .1
                        .rsplit(' ')
                        .next()?
                        .parse()
                        .ok()
                })
                .collect::<Vec<u64>>()
        })
        .collect();
    println!(
        "chaos: {} records, every key's count and sum exact, committed == end; standby \
         replicas promoted {} times (records restored on promotion: {promoted:?}); {:.1} s",
        workload.produced.len(),
        promoted.len(),
        test_started.elapsed().as_secs_f64()
    );
}
