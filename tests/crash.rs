//! Crash consistency, with proof of where each kill landed.
//!
//! A child process (this test binary re-run with `KS_CRASH_CHILD` set, see `crash_child`)
//! counts records per key into a `counts` store and sums their values into a `sums` store,
//! and appends to a probe file: every 50th source offset its handler processes, and the
//! library's restore and flush events (a tracing layer; "flushed state" is a flush's last
//! step, after its RocksDB batch).
//!
//! Each round starts a child, produces more input, waits until the child is processing and
//! has flushed at least once, SIGKILLs it after a random delay and classifies the kill:
//! - *during processing*: the child processed a record within 250 ms before the kill and
//!   records after it were waiting (lag > 0);
//! - *during a flush*: the changelogs hold records of a flush of the child's epoch whose
//!   "flushed state" was never logged (it had started, and did not end).
//!
//! The handler also reads each record's key in a co-partitioned `weights` table, which gets
//! new weights every round: a missing weight fails the child. Every third round deletes the
//! child's local tables first and kills it while it reads them again (*during a table
//! bootstrap*: the kill came after a "table bootstrap started" and before its end).
//!
//! Finally a consumer in this process handles one more record per key: every key's count and
//! sum must equal those computed from the produced records (exactly once), every key's
//! weight the latest produced (the table equals its topic) with only the table's tail read,
//! and the committed offsets must equal the end offsets. `KS_CRASH_ROUNDS` and `KS_CRASH_SEED` override the
//! round count and the seed (printed); `KS_KEEP_DIR=1` keeps the probe files and child logs.

#[path = "common/child.rs"]
mod child;
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use child::ChildTest;
use common::{require_broker, CountSum, Running};
use kafka_stateful::changelog::changelog_topic;
use kafka_stateful::codec::Utf8;
use kafka_stateful::{ConsumerConfig, StatefulConsumer};

const PARTITIONS: i32 = 2;
const KEYS: usize = 40;
const DEFAULT_ROUNDS: u64 = 8;
const INITIAL_RECORDS: usize = 16000;
const RECORDS_PER_ROUND: usize = 3000;
/// In odd rounds, kill delays are uniform in `0..MAX_DELAY_MS` after the child was seen
/// processing and having flushed (even rounds kill inside a fresh backlog).
const MAX_DELAY_MS: u64 = 1000;
/// Weights per key in the table at start (a table bootstrap of `KEYS ×` this many records
/// takes long enough to be killed in), and new weights per round.
const WEIGHT_VERSIONS: usize = 2500;
const WEIGHT_UPDATES_PER_ROUND: usize = 40;
const CHILD: ChildTest = ChildTest {
    name: "crash_child",
    var: "KS_CRASH_CHILD",
};

fn child_config(topic: &str, group: &str, dir: &str, concurrency: usize) -> ConsumerConfig {
    child::count_sum_config(topic, group, "crash-0", dir)
        .key_concurrency(concurrency)
        .session_timeout(Duration::from_secs(10))
        .commit_interval(Duration::from_millis(150))
        // Small, frequent flushes so kills land before, during and after flushes and commits.
        .flush_max_records(37)
        .flush_interval(Duration::from_millis(50))
        .build()
        .unwrap()
}

/// The child's body; a no-op unless run as the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Some(([topic, group, dir, concurrency], probe)) = CHILD.args() else {
        return;
    };
    let concurrency: usize = concurrency.parse().unwrap();
    common::init_probe_tracing(probe.clone());
    let handler = CountSum {
        // About 0.4 ms per record: a batch (up to 1024 records) takes a few hundred ms.
        delay: Some(Duration::from_millis(1)),
        delay_every: 3,
        probe: Some(probe.clone()),
        echo: with_outputs().then(|| common::echo(&topic)),
        ..CountSum::new(&topic)
    };
    let config = child_config(&topic, &group, &dir, concurrency);
    let consumer = StatefulConsumer::new(config, Utf8, Utf8, handler)
        .with_restore_listener(common::ProbeListener(probe));
    consumer.run(std::future::pending()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_random_moments_neither_loses_nor_double_counts() {
    crash_rounds(1).await;
}

/// The same with 16 records of a partition in flight (different keys): records finish out
/// of order, flushes hold records finished above the lowest unfinished one, and a restart
/// must recognise them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_with_key_concurrency_neither_loses_nor_double_counts() {
    crash_rounds(16).await;
}

async fn crash_rounds(concurrency: usize) {
    require_broker!();
    if CHILD.in_child() {
        return;
    }
    common::init_tracing();
    let test_started = Instant::now();
    let rounds: u64 = std::env::var("KS_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    let (mut rng, seed) = common::Rng::from_env_or_clock("KS_CRASH_SEED");
    println!(
        "crash: seed {seed} (KS_CRASH_SEED={seed} reproduces delays and input), {rounds} rounds, \
         key concurrency {concurrency}"
    );
    let (topic, group, dir) = (
        common::unique("crash"),
        common::unique("g"),
        common::test_dir(),
    );
    let state_dir = dir.path().join("state").to_str().unwrap().to_string();
    let changelogs = [
        changelog_topic(&group, "counts"),
        changelog_topic(&group, "sums"),
    ];
    common::create_workload_topics(&topic, PARTITIONS).await;
    common::create_topic(&common::echo_topic(&topic), PARTITIONS).await;
    let mut workload = common::Workload::new(PARTITIONS, KEYS, seed);
    let mut weights = common::Weights::new(PARTITIONS, KEYS, seed);
    common::produce(
        &common::weights_topic(&topic),
        &weights.all(WEIGHT_VERSIONS),
    )
    .await;
    common::produce(&topic, &workload.batch(INITIAL_RECORDS)).await;

    let (mut during_processing, mut during_flush, mut both, mut neither) = (0, 0, 0, 0);
    let (mut bootstrap_rounds, mut during_bootstrap) = (0, 0);
    // A kill that cut a flush before all its markers were in the changelogs leaves records
    // of an unfinished flush: the next start must find them and rewrite their keys.
    let (mut repair_expected, mut repair_agrees) = (None::<bool>, 0);
    for round in 0..rounds {
        let from: Vec<Vec<i64>> = changelogs
            .iter()
            .map(|t| common::end_offsets_or_zero(t, PARTITIONS))
            .collect();
        // Not the last round: the final run must start from intact tables.
        let bootstrap_round = round % 3 == 2 && round + 1 < rounds;
        if bootstrap_round {
            // The child reads its tables again from the topic: kill it meanwhile.
            for p in 0..PARTITIONS {
                let tables = Path::new(&state_dir)
                    .join(&group)
                    .join(format!("{topic}-{p}.tables"));
                let _ = std::fs::remove_dir_all(tables);
            }
        }
        let mut child = CHILD.spawn(
            dir.path(),
            &round.to_string(),
            &[&topic, &group, &state_dir, &concurrency.to_string()],
        );
        let who = format!("the child of round {round}");
        // More input while the child starts, so every round has a backlog, and new weights.
        common::produce(&topic, &workload.batch(RECORDS_PER_ROUND)).await;
        common::produce(
            &common::weights_topic(&topic),
            &weights.updates(WEIGHT_UPDATES_PER_ROUND),
        )
        .await;
        if bootstrap_round {
            bootstrap_rounds += 1;
            let weights_topic = common::weights_topic(&topic);
            let landed =
                kill_during_table_bootstrap(&mut child, &who, &weights_topic, &mut rng).await;
            during_bootstrap += u32::from(landed);
            println!("round {round}: tables deleted; SIGKILL during their bootstrap: {landed}");
            continue;
        }
        common::wait_until(
            "child processing and flushed at least once",
            Duration::from_secs(60),
            || {
                child.assert_alive(&who);
                let log = common::read_probe(&child.probe);
                !log.processing.is_empty() && !log.flushed.is_empty()
            },
        )
        .await;
        let ready = child.started.elapsed();
        // A fresh backlog once the child got going (it may have caught up with the first
        // one already), so that a kill can land while it handles records.
        common::produce(&topic, &workload.batch(RECORDS_PER_ROUND)).await;
        let ends = common::end_offsets(&topic, PARTITIONS);
        let delay = if round % 2 == 0 {
            // Half the rounds: at a random point inside that backlog, while records of it
            // are being handled (a timed delay alone can miss it on a fast machine).
            let p = ((round / 2) % PARTITIONS as u64) as i32;
            let started = Instant::now();
            let handled = |log: &common::ProbeLog| {
                log.processing
                    .iter()
                    .filter(|(_, q, _)| *q == p)
                    .map(|(_, _, o)| *o)
                    .max()
                    .unwrap_or(0)
            };
            let from = handled(&common::read_probe(&child.probe));
            let left = (ends[p as usize] - from).max(0) as u64;
            // Probes are written every PROBE_EVERY offsets: a target between two probe
            // points past the last one the backlog has would never be seen (the child may
            // have handled the whole backlog before `from` was read).
            let last_probe =
                (ends[p as usize] - 1).max(0) / common::PROBE_EVERY * common::PROBE_EVERY;
            let target = (from + rng.below(left * 3 / 4 + 1) as i64).min(last_probe)
                / common::PROBE_EVERY
                * common::PROBE_EVERY;
            while handled(&common::read_probe(&child.probe)) < target {
                child.assert_alive(&who);
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "{who} did not reach offset {target} of partition {p} in 60 s (from {from}); \
                     its probe ends:\n{}\nits stderr ends:\n{}",
                    common::tail_lines(&child.probe, 15),
                    child.stderr_tail()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            started.elapsed().as_millis() as u64
        } else {
            // The other half: a random moment after the child got going.
            let delay = rng.below(MAX_DELAY_MS);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            delay
        };
        child.assert_alive(&who);
        let kill_ms = common::now_ms();
        child.kill(); // SIGKILL
        let log = common::read_probe(&child.probe);
        let mut flushes = BTreeMap::new();
        for (t, f) in changelogs.iter().zip(&from) {
            common::changelog_flush_records(t, PARTITIONS, f, &mut flushes);
        }
        let held = log.held_at(kill_ms);
        let verdict = common::classify_kill(&log, kill_ms, &ends, &flushes, &held);
        match (
            !verdict.processing.is_empty(),
            !verdict.cut_flushes.is_empty(),
        ) {
            (true, true) => both += 1,
            (true, false) => during_processing += 1,
            (false, true) => during_flush += 1,
            (false, false) => neither += 1,
        }
        let lag: Vec<String> = (0..PARTITIONS)
            .map(|p| {
                let last = log
                    .processing
                    .iter()
                    .filter(|(t, q, _)| *q == p && *t <= kill_ms)
                    .map(|(_, _, o)| *o)
                    .max();
                match last {
                    Some(o) => format!("p{p} at ~{o} of {}", ends[p as usize]),
                    None => format!("p{p} idle, end {}", ends[p as usize]),
                }
            })
            .collect();
        let mut warnings = log.warnings.clone();
        warnings.dedup();
        let repaired = !log.repaired.is_empty();
        if let Some(expected) = repair_expected {
            repair_agrees += u32::from(expected == repaired);
            println!(
                "round {round}: restart rewrote an unfinished flush's keys: {repaired} \
                 (expected from the previous kill: {expected})"
            );
        }
        repair_expected = Some(
            verdict
                .cut_flushes
                .iter()
                .any(|(_, r)| r.markers < changelogs.len()),
        );
        println!(
            "round {round}: processing+flushed after {:.1} s, SIGKILL {delay} ms later; \
             processing at kill: {:?} ({}); flushes completed: {}; cut flushes: {}; \
             library warnings: {warnings:?}",
            ready.as_secs_f64(),
            verdict.processing,
            lag.join(", "),
            verdict.flushes,
            verdict.cut_flushes_text(changelogs.len()),
        );
    }
    println!(
        "crash: {rounds} kills: during processing only {during_processing}, during a flush \
         only {during_flush}, during processing and a flush {both}, neither {neither}; \
         restarts whose repair matched the previous kill's cut flush: {repair_agrees} of \
         {}; committed before the final run: {:?}",
        rounds.saturating_sub(1),
        common::committed(&group, &topic, PARTITIONS)
    );
    assert!(
        during_processing + both >= 1,
        "no kill landed while records were being processed (seed {seed})"
    );
    println!("crash: {during_bootstrap} of {bootstrap_rounds} table bootstrap rounds killed during the bootstrap");
    assert!(
        bootstrap_rounds == 0 || during_bootstrap >= 1,
        "no kill landed during a table bootstrap (seed {seed})"
    );

    // One record per key last, so the final in-process run observes every key's state.
    common::produce(&topic, &workload.one_per_key()).await;
    let handler = CountSum {
        echo: with_outputs().then(|| common::echo(&topic)),
        ..CountSum::new(&topic)
    };
    let final_started = Instant::now();
    let running = Running::start(StatefulConsumer::new(
        child_config(&topic, &group, &state_dir, concurrency),
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
    let table_read: u64 = running
        .stats
        .snapshot()
        .partitions
        .values()
        .map(|p| p.table_bootstrapped)
        .sum();
    running.stop().await.unwrap();
    println!(
        "final run: {:.1} s; table records read at start: {table_read} of {} produced",
        final_started.elapsed().as_secs_f64(),
        weights.produced
    );
    assert!(
        table_read < weights.produced,
        "a restart with intact tables must read only their tail ({table_read} of {})",
        weights.produced
    );
    let stale = weights.mismatches(&handler.weights_seen.lock().unwrap());
    assert!(
        stale.is_empty(),
        "after {rounds} SIGKILL rounds (seed {seed}), the weights table differs from its topic:\n{}",
        stale.join("\n")
    );
    assert_eq!(
        common::committed(&group, &topic, PARTITIONS),
        common::end_offsets(&topic, PARTITIONS)
    );
    let wrong = common::state_mismatches(&workload.expected(), &handler.last.lock().unwrap());
    assert!(
        wrong.is_empty(),
        "after {rounds} SIGKILL rounds (seed {seed}), {} of {KEYS} keys are wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    if with_outputs() {
        let repeated = common::every_record_echoed_at_least_once(&topic, PARTITIONS);
        println!("crash: every record's output sent ({repeated} repeated after kills)");
    }
    println!(
        "crash: {} records, every key's count and sum exact, committed == end; {:.1} s",
        workload.produced.len(),
        test_started.elapsed().as_secs_f64()
    );
}

/// The children also send one output record per input, and every input's output must be
/// on the output topic at the end (at-least-once under SIGKILL); `KS_CRASH_OUTPUTS=0` turns
/// it off. (It was off by default while the harness could wait for an offset it never
/// probes, which looked like output traffic slowing the children.)
fn with_outputs() -> bool {
    std::env::var("KS_CRASH_OUTPUTS").map_or(true, |v| v != "0")
}

/// Waits (polling the probe every 2 ms) until the child starts reading a table partition
/// again (its restore listener's `restore-start <weights topic>`), SIGKILLs it 0–30 ms
/// later, and says whether the kill landed before every table bootstrap it started ended.
async fn kill_during_table_bootstrap(
    child: &mut child::Child,
    who: &str,
    weights: &str,
    rng: &mut common::Rng,
) -> bool {
    let (start, end) = (
        format!("restore-start {weights} "),
        format!("restore-end {weights} "),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        child.assert_alive(who);
        let text = std::fs::read_to_string(&child.probe).unwrap_or_default();
        if text.contains(&start) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{who} never started a table bootstrap"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(rng.below(30))).await;
    child.kill();
    let text = std::fs::read_to_string(&child.probe).unwrap_or_default();
    text.matches(&end).count() < text.matches(&start).count()
}
