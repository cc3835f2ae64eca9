//! Exactly-once under SIGKILL and a zombie, on a broker with transactions
//! (`KAFKA_TXN_BOOTSTRAP`, default `127.0.0.1:9094`; `scripts/txn-broker.sh` starts tansu
//! there). Every test of this binary talks to that broker.
//!
//! The workload is the crash harness's (`crash.rs`): a child process (this binary re-run)
//! counts records per key into `counts`, sums values into `sums`, reads each key's weight in
//! a co-partitioned table, and sends one output record per input, `"<partition>:<offset>"`.
//! Under [`ProcessingGuarantee::ExactlyOnce`] the children are SIGKILLed at random moments,
//! or frozen past their session timeout while another member takes over and then resumed (a
//! zombie). At the end a consumer in this process handles one more record per key, and:
//! - every input's output is on the output topic **exactly once** for a `read_committed`
//!   reader (under at-least-once the same kills leave duplicates: `crash.rs` counts them);
//! - every key's count and sum equal those computed from the produced records;
//! - the committed offsets equal the end offsets.
//!
//! `KS_EOS_ROUNDS` (default 4) and `KS_CRASH_SEED` set the kill rounds and the seed.

#[path = "common/child.rs"]
mod child;
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use child::ChildTest;
use common::{CountSum, Running};
use kafka_stateful::codec::Utf8;
use kafka_stateful::{AssignmentStrategy, ConsumerConfig, ProcessingGuarantee, StatefulConsumer};

const PARTITIONS: i32 = 2;
const KEYS: usize = 40;
const DEFAULT_ROUNDS: u64 = 4;
const INITIAL_RECORDS: usize = 6000;
const RECORDS_PER_ROUND: usize = 3000;
const MAX_DELAY_MS: u64 = 1000;
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
const CHILD: ChildTest = ChildTest {
    name: "eos_child",
    var: "KS_EOS_CHILD",
};

/// One scenario at a time: while a member of one group is frozen, tansu 0.6 answers other
/// groups' joins late (seen as children that never got partitions when the scenarios ran
/// in parallel).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every helper of `common` (and every child) talks to the transactional broker.
fn use_txn_broker() {
    let bootstrap =
        std::env::var("KAFKA_TXN_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9094".into());
    std::env::set_var("KAFKA_BOOTSTRAP", bootstrap);
}

/// The crash harness's consumer without its weights table: tansu 0.6 answers a ListOffsets
/// with one past the *first* offset of a partition's last record batch, so a table
/// bootstrap (read up to that watermark) misses the rest of the batch. Changelogs are not
/// affected: under exactly-once a restore reads to the end of the partition as the fetch
/// responses give it (the last stable offset), not to a watermark.
fn eos_config(topic: &str, group: &str, instance: &str, dir: &str) -> ConsumerConfig {
    let builder = ConsumerConfig::builder(common::bootstrap(), group, [topic]);
    // `dynamic-…`: a dynamic member (tansu 0.6 never evicts a frozen static member, so the
    // zombie test's members are dynamic; the generation and the transaction timeout fence
    // a zombie then, as for any dynamic member).
    let builder = match instance.starts_with("dynamic-") {
        true => builder.dynamic_membership(),
        false => builder.instance_id(instance),
    };
    builder
        .state_dir(dir)
        .store(&common::counts_store())
        .store(&common::sums_store())
        .processing_guarantee(ProcessingGuarantee::ExactlyOnce)
        // tansu 0.6: static membership works with the eager protocols only.
        .assignment(AssignmentStrategy::Range)
        .session_timeout(SESSION_TIMEOUT)
        // Small flushes: kills land between, inside and after transactions.
        .flush_max_records(37)
        .build()
        .unwrap()
}

/// The child's body; a no-op unless run as the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eos_child() {
    let Some(([topic, group, instance, dir], probe)) = CHILD.args() else {
        return;
    };
    common::init_probe_tracing(probe.clone());
    let handler = CountSum {
        delay: Some(Duration::from_millis(1)),
        delay_every: 3,
        probe: Some(probe.clone()),
        echo: Some(common::echo(&topic)),
        without_weights: true,
        ..CountSum::new(&topic)
    };
    let consumer = StatefulConsumer::new(
        eos_config(&topic, &group, &instance, &dir),
        Utf8,
        Utf8,
        handler,
    )
    .with_restore_listener(common::ProbeListener(probe));
    // SIGTERM stops it gracefully (its last transaction committed); SIGKILL does not.
    consumer
        .run(kafka_stateful::shutdown_signal())
        .await
        .unwrap();
}

/// Waits until `child` handles records.
async fn wait_processing(child: &mut child::Child, who: &str, within: Duration) {
    common::wait_until(&format!("{who} processing"), within, || {
        child.assert_alive(who);
        !common::read_probe(&child.probe).processing.is_empty()
    })
    .await;
}

/// Stops a child gracefully and waits until it exited. tansu 0.6 never aborts a transaction
/// its producer left open (no transaction timeout): a dynamic member SIGKILLed last would
/// leave its changelog's last stable offset stuck (restores would wait, see
/// `Reader::stable_watermarks`), so the scenarios with dynamic members end with SIGTERM.
async fn stop_gracefully(child: &mut child::Child, who: &str) {
    child.signal("TERM");
    common::wait_until(
        &format!("{who} stopped after SIGTERM"),
        Duration::from_secs(60),
        || !child.process.alive(),
    )
    .await;
}

struct Scenario {
    /// One record per batch: tansu 0.6 answers a ListOffsets with one past the first offset
    /// of a partition's last batch, and a restore checks its checkpoint against the source
    /// partition's end (a checkpoint past it means the topic was recreated).
    producer: rdkafka::producer::FutureProducer,
    topic: String,
    group: String,
    dir: tempfile::TempDir,
    workload: common::Workload,
    rng: common::Rng,
    seed: u64,
}

impl Scenario {
    async fn new() -> Self {
        let (rng, seed) = common::Rng::from_env_or_clock("KS_CRASH_SEED");
        let topic = common::unique("eos");
        common::create_topic(&topic, PARTITIONS).await;
        common::create_topic(&common::echo_topic(&topic), PARTITIONS).await;
        let mut workload = common::Workload::new(PARTITIONS, KEYS, seed);
        let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", common::bootstrap())
            .set("batch.num.messages", "1")
            .create()
            .unwrap();
        common::produce_with(&producer, &topic, &workload.batch(INITIAL_RECORDS)).await;
        Self {
            producer,
            topic,
            group: common::unique("g"),
            dir: common::test_dir(),
            workload,
            rng,
            seed,
        }
    }

    fn state_dir(&self, member: &str) -> String {
        self.dir.path().join(member).to_str().unwrap().to_string()
    }

    fn spawn(&self, name: &str, instance: &str) -> child::Child {
        CHILD.spawn(
            self.dir.path(),
            name,
            &[
                &self.topic,
                &self.group,
                instance,
                &self.state_dir(instance),
            ],
        )
    }

    async fn produce_round(&mut self) {
        let records = self.workload.batch(RECORDS_PER_ROUND);
        common::produce_with(&self.producer, &self.topic, &records).await;
    }

    /// Each partition's end offset: the records produced to it (the input topic is not
    /// transactional, so its offsets are dense; tansu's ListOffsets is not reliable).
    fn ends(&self) -> Vec<i64> {
        (0..PARTITIONS)
            .map(|p| {
                self.workload
                    .produced
                    .iter()
                    .filter(|(q, _, _)| *q == p)
                    .count() as i64
            })
            .collect()
    }

    fn all_committed(&self) -> bool {
        common::committed(&self.group, &self.topic, PARTITIONS) == self.ends()
    }

    /// One more record per key, handled by a consumer in this process until everything is
    /// committed; then the checks of the module docs. `instance` picks whose state
    /// directory it starts from.
    async fn finish(mut self, instance: &str) {
        let records = self.workload.one_per_key();
        common::produce_with(&self.producer, &self.topic, &records).await;
        let handler = CountSum {
            echo: Some(common::echo(&self.topic)),
            without_weights: true,
            ..CountSum::new(&self.topic)
        };
        let running = Running::start(StatefulConsumer::new(
            eos_config(
                &self.topic,
                &self.group,
                instance,
                &self.state_dir(instance),
            ),
            Utf8,
            Utf8,
            handler.clone(),
        ));
        common::wait_until_or(
            "everything handled and committed",
            Duration::from_secs(120),
            || self.all_committed(),
            || {
                format!(
                    "committed {:?} ({:?} read uncommitted), ends {:?}; {}; \
                     transactions committed {}, aborted {}; the consumer's partitions: {:#?}",
                    common::committed(&self.group, &self.topic, PARTITIONS),
                    common::committed_with(
                        &common::bootstrap(),
                        &self.group,
                        &self.topic,
                        PARTITIONS,
                        "read_uncommitted"
                    ),
                    self.ends(),
                    common::describe_group(&self.group),
                    running.stats.snapshot().transactions_committed,
                    running.stats.snapshot().transactions_aborted,
                    running.stats.snapshot().partitions
                )
            },
        )
        .await;
        let committed_transactions = running.stats.snapshot().transactions_committed;
        running.stop().await.unwrap();
        assert!(committed_transactions > 0, "no transaction was committed");
        let wrong =
            common::state_mismatches(&self.workload.expected(), &handler.last.lock().unwrap());
        assert!(
            wrong.is_empty(),
            "(seed {}) {} of {KEYS} keys are wrong:\n{}",
            self.seed,
            wrong.len(),
            wrong.join("\n")
        );
        let outputs = every_record_echoed_exactly_once(&self.topic, &self.ends());
        println!(
            "exactly-once: {} inputs, {outputs} outputs (each once), every key's count and sum exact",
            self.workload.produced.len()
        );
    }
}

/// Every input record's output (`"<partition>:<offset>"`) is on the output topic once for a
/// `read_committed` reader: none missing, none twice. Returns how many there are.
fn every_record_echoed_exactly_once(topic: &str, ends: &[i64]) -> usize {
    let echoed = common::read_committed(&common::echo_topic(topic), PARTITIONS);
    let mut seen = HashMap::<String, usize>::new();
    for (_, value, _) in &echoed {
        *seen
            .entry(String::from_utf8(value.clone().unwrap_or_default()).unwrap())
            .or_default() += 1;
    }
    let inputs: Vec<String> = (0..PARTITIONS)
        .flat_map(|p| (0..ends[p as usize]).map(move |o| format!("{p}:{o}")))
        .collect();
    let missing: Vec<&String> = inputs.iter().filter(|i| !seen.contains_key(*i)).collect();
    let mut twice: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    twice.sort();
    assert!(
        missing.is_empty() && twice.is_empty(),
        "{} inputs without output (e.g. {:?}), {} with more than one (e.g. {:?})",
        missing.len(),
        &missing[..missing.len().min(10)],
        twice.len(),
        &twice[..twice.len().min(10)]
    );
    assert_eq!(echoed.len(), inputs.len());
    echoed.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_at_random_moments_every_output_appears_once_and_state_is_exact() {
    use_txn_broker();
    common::require_broker!();
    if CHILD.in_child() {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().await;
    common::init_tracing();
    let started = Instant::now();
    let rounds: u64 = std::env::var("KS_EOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    let mut s = Scenario::new().await;
    println!(
        "exactly-once: seed {} (KS_CRASH_SEED), {rounds} SIGKILL rounds",
        s.seed
    );
    for round in 0..rounds {
        let mut child = s.spawn(&round.to_string(), "eos-0");
        let who = format!("the child of round {round}");
        s.produce_round().await;
        common::wait_until(
            "the child processing and flushed (committed) once",
            Duration::from_secs(60),
            || {
                child.assert_alive(&who);
                let log = common::read_probe(&child.probe);
                !log.processing.is_empty() && !log.flushed.is_empty()
            },
        )
        .await;
        s.produce_round().await;
        let delay = s.rng.below(MAX_DELAY_MS);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.assert_alive(&who);
        child.kill();
        let log = common::read_probe(&child.probe);
        println!(
            "round {round}: SIGKILL {delay} ms after it had committed once; offsets it handled \
             (every 50th): {}; committed then: {:?} of {:?}",
            log.processing.len(),
            common::committed(&s.group, &s.topic, PARTITIONS),
            s.ends()
        );
    }
    s.finish("eos-0").await;
    println!(
        "exactly-once SIGKILL test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_zombie_resumed_after_its_partitions_moved_sends_nothing_twice() {
    use_txn_broker();
    common::require_broker!();
    if CHILD.in_child() {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().await;
    common::init_tracing();
    let started = Instant::now();
    let mut s = Scenario::new().await;
    let mut a = s.spawn("a", "dynamic-a");
    wait_processing(&mut a, "A", Duration::from_secs(60)).await;
    s.produce_round().await;
    a.signal("STOP");
    common::wait_until("A stopped", Duration::from_secs(5), || a.stopped()).await;
    let frozen = Instant::now();
    // B takes A's partitions once A's session timed out, and handles what A left.
    let mut b = s.spawn("b", "dynamic-b");
    s.produce_round().await;
    wait_processing(&mut b, "B", Duration::from_secs(90)).await;
    println!(
        "A frozen for {:.1} s while B took over; resuming A",
        frozen.elapsed().as_secs_f64()
    );
    a.signal("CONT");
    s.produce_round().await;
    // A's open transaction must not commit: its producer's transaction timed out, its
    // offsets carry an old generation, and its partitions are lost. B handles everything.
    common::wait_until("B handled everything", Duration::from_secs(120), || {
        b.assert_alive("B");
        s.all_committed()
    })
    .await;
    let a_alive = a.process.alive();
    println!(
        "after SIGCONT A {}; its stderr ends:\n{}",
        if a_alive { "still runs" } else { "ended" },
        a.stderr_tail()
    );
    a.kill();
    stop_gracefully(&mut b, "B").await;
    s.finish("dynamic-b").await;
    println!(
        "exactly-once zombie test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// A second member joins while the first handles a backlog: the first's partitions are
/// revoked (eager), its last flushes commit in a transaction inside the revoke, and the
/// partitions the second member gets continue from there: no output repeated or missing.
/// (Dynamic members: tansu 0.6 never evicts a static member that stopped answering, and the
/// final run must get the killed members' partitions.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revokes_hand_partitions_over_without_a_repeated_or_missing_output() {
    use_txn_broker();
    common::require_broker!();
    if CHILD.in_child() {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().await;
    common::init_tracing();
    let started = Instant::now();
    let mut s = Scenario::new().await;
    let mut a = s.spawn("a", "dynamic-a");
    wait_processing(&mut a, "A", Duration::from_secs(60)).await;
    s.produce_round().await;
    let mut b = s.spawn("b", "dynamic-b");
    let (probe_a, probe_b) = (a.probe.clone(), b.probe.clone());
    common::wait_until_or(
        "a rebalance: A revoked and both members processing",
        Duration::from_secs(90),
        || {
            a.assert_alive("A");
            b.assert_alive("B");
            let (log_a, log_b) = (common::read_probe(&a.probe), common::read_probe(&b.probe));
            log_a.ownership.iter().any(|(_, _, what)| what == "revoked")
                && !log_b.processing.is_empty()
        },
        || {
            let tail = |path: &std::path::Path| {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(15)..].join("\n")
            };
            format!(
                "A's probe, last lines:\n{}\nB's probe, last lines:\n{}",
                tail(&probe_a),
                tail(&probe_b)
            )
        },
    )
    .await;
    s.produce_round().await;
    common::wait_until(
        "A and B handled everything",
        Duration::from_secs(120),
        || {
            a.assert_alive("A");
            b.assert_alive("B");
            s.all_committed()
        },
    )
    .await;
    let revoked: Vec<i32> = common::read_probe(&a.probe)
        .ownership
        .iter()
        .filter(|(_, _, what)| what == "revoked")
        .map(|(_, p, _)| *p)
        .collect();
    println!(
        "A's partitions revoked: {revoked:?}; everything committed after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // A last backlog; the final run (A's directory) restores the partition B wrote from
    // its changelog.
    s.produce_round().await;
    stop_gracefully(&mut a, "A").await;
    stop_gracefully(&mut b, "B").await;
    s.finish("dynamic-a").await;
    println!(
        "exactly-once revoke test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
