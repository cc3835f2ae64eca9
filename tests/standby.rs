//! Standby replicas against the broker: a member lost for good is replaced by a member that
//! kept its partition warm (only the changelog tail restored, state exact); a standby never
//! applies a zombie's void records; the standby set follows the group's membership, stale
//! replicas are deleted after the cleanup delay, and a static restart moves nothing.
//!
//! The lost and zombie members run in child processes (this test binary re-run with
//! `KS_STANDBY_CHILD` set, see `standby_child`), so they die by SIGKILL or freeze by SIGSTOP.

#[path = "common/child.rs"]
mod child;
mod common;
#[path = "common/zombie.rs"]
#[allow(dead_code)]
mod zombie;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use child::ChildTest;
use common::{require_broker, CountSum, Running};
use kafka_stateful::changelog::changelog_topic;
use kafka_stateful::codec::Utf8;
use kafka_stateful::{ConsumerConfig, StandbyReplicas, StatefulConsumer};
use zombie::{noticed_since, Feed};

const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
const WEIGHT_VERSIONS: usize = 3;
const CHILD: ChildTest = ChildTest {
    name: "standby_child",
    var: "KS_STANDBY_CHILD",
};

fn config(topic: &str, group: &str, instance: &str, dir: &str, replicas: usize) -> ConsumerConfig {
    builder(topic, group, instance, dir, replicas)
        .build()
        .unwrap()
}

fn builder(
    topic: &str,
    group: &str,
    instance: &str,
    dir: &str,
    replicas: usize,
) -> kafka_stateful::ConsumerConfigBuilder {
    child::group_member_config(topic, group, instance, dir, SESSION_TIMEOUT)
        .commit_interval(Duration::from_millis(150))
        // Small, frequent flushes: a zombie resumed with records in its queue flushes at once.
        .flush_max_records(37)
        .flush_interval(Duration::from_millis(50))
        .standby_replicas(
            StandbyReplicas::new(replicas)
                .refresh_interval(Duration::from_millis(500))
                .cleanup_delay(Duration::from_secs(3)),
        )
}

/// A child member: `[topic, group, instance, dir, replicas]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_child() {
    let Some(([topic, group, instance, dir, replicas], probe)) = CHILD.args() else {
        return;
    };
    zombie::init_zombie_tracing(probe.clone());
    let handler = CountSum {
        probe: Some(probe.clone()),
        ..CountSum::new(&topic)
    };
    let config = config(&topic, &group, &instance, &dir, replicas.parse().unwrap());
    let consumer = StatefulConsumer::new(config, Utf8, Utf8, handler)
        .with_restore_listener(common::ProbeListener(probe.clone()));
    common::probe_stats(consumer.stats(), probe);
    consumer.run(std::future::pending()).await.unwrap();
}

/// Promotions reported to the restore listener: `(partition, records restored)`.
#[derive(Clone, Default)]
struct Promotions(Arc<Mutex<Vec<(i32, u64)>>>);

impl kafka_stateful::RestoreListener for Promotions {
    fn on_standby_promoted(&self, _: &str, partition: i32, restored: u64, _: Duration) {
        self.0.lock().unwrap().push((partition, restored));
    }
}

impl Promotions {
    fn of(&self, partition: i32) -> Option<u64> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|(p, _)| *p == partition)
            .map(|(_, n)| *n)
    }
}

/// An in-process member with its handler and promotions.
struct Member {
    running: Running,
    handler: CountSum,
    promotions: Promotions,
}

fn start(config: ConsumerConfig, topic: &str) -> Member {
    let (handler, promotions) = (CountSum::new(topic), Promotions::default());
    let running = Running::start(
        StatefulConsumer::new(config, Utf8, Utf8, handler.clone())
            .with_restore_listener(promotions.clone()),
    );
    Member {
        running,
        handler,
        promotions,
    }
}

impl Member {
    fn owned(&self) -> BTreeSet<i32> {
        let s = self.running.stats.snapshot();
        s.partitions
            .iter()
            .filter(|(_, p)| p.ready)
            .map(|((_, p), _)| *p)
            .collect()
    }

    fn standbys(&self) -> BTreeMap<i32, kafka_stateful::StandbyStats> {
        let s = self.running.stats.snapshot();
        s.standbys.iter().map(|((_, p), s)| (*p, *s)).collect()
    }

    fn assert_running(&self, who: &str) {
        assert!(!self.running.join.is_finished(), "{who}'s run() ended");
    }
}

/// Changelog records of partition `p`, both stores.
fn changelog_records(group: &str, p: i32) -> i64 {
    ["counts", "sums"]
        .iter()
        .map(|s| common::end_offsets_or_zero(&changelog_topic(group, s), p + 1)[p as usize])
        .sum()
}

/// A scenario's input: its topics (with weights for every key) and `records` records.
struct Scenario {
    seed: u64,
    dir: tempfile::TempDir,
    topic: String,
    group: String,
    workload: common::Workload,
}

impl Scenario {
    async fn start(name: &str, partitions: i32, keys: usize, records: usize) -> Self {
        common::init_tracing();
        let (_, seed) = common::Rng::from_env_or_clock("KS_STANDBY_SEED");
        println!("{name}: seed {seed} (KS_STANDBY_SEED={seed} reproduces the input)");
        let (topic, group) = (common::unique(name), common::unique("g"));
        common::create_workload_topics(&topic, partitions).await;
        let mut weights = common::Weights::new(partitions, keys, seed);
        common::produce(
            &common::weights_topic(&topic),
            &weights.all(WEIGHT_VERSIONS),
        )
        .await;
        let mut workload = common::Workload::new(partitions, keys, seed);
        common::produce(&topic, &workload.batch(records)).await;
        Self {
            seed,
            dir: common::test_dir(),
            topic,
            group,
            workload,
        }
    }

    /// Seed, test directory, topic and group.
    fn names(&self) -> (u64, std::path::PathBuf, String, String) {
        let dir = self.dir.path().to_path_buf();
        (self.seed, dir, self.topic.clone(), self.group.clone())
    }

    /// A member in a child process (static member `instance`, its own state directory),
    /// keeping `replicas` standby replicas.
    fn child(&self, instance: &str, replicas: usize) -> child::Child {
        let (state, replicas) = (dir_of(self.dir.path(), instance), replicas.to_string());
        let args = [
            self.topic.as_str(),
            &self.group,
            instance,
            &state,
            &replicas,
        ];
        CHILD.spawn(self.dir.path(), instance, &args)
    }
}

/// Every key's count and sum, as the handler last saw them, equals the produced records'.
fn assert_exact(workload: &common::Workload, handler: &CountSum, seed: u64) {
    let wrong = common::state_mismatches(&workload.expected(), &handler.last.lock().unwrap());
    assert!(
        wrong.is_empty(),
        "state after the promotion (seed {seed}): {} keys wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

fn dir_of(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_killed_for_good_is_replaced_by_its_standby_restoring_only_the_tail() {
    require_broker!();
    if CHILD.in_child() {
        return;
    }
    const PARTITIONS: i32 = 2;
    let scenario = Scenario::start("standby-lost", PARTITIONS, 4_000, 20_000).await;
    let (seed, dir, topic, group) = scenario.names();

    // A (a child) and B share the partitions; each keeps a replica of the other's.
    let mut a = scenario.child("standby-a", 1);
    let b = start(
        config(&topic, &group, "standby-b", &dir_of(dir.as_path(), "b"), 1),
        &topic,
    );
    let feed = Feed::start(&topic, scenario.workload, 50, Duration::from_millis(50));
    let mut lost = -1;
    common::wait_until(
        "A and B own a partition each, and B's replica of A's is caught up",
        Duration::from_secs(90),
        || {
            a.assert_alive("A");
            b.assert_running("B");
            let owned = b.owned();
            if owned.len() != 1 {
                return false;
            }
            lost = 1 - *owned.iter().next().unwrap();
            let committed = common::committed(&group, &topic, PARTITIONS);
            b.standbys()
                .get(&lost)
                .is_some_and(|s| s.records_read > 0 && s.lag < 2_000)
                && committed[lost as usize] > 20_000 / PARTITIONS as i64
        },
    )
    .await;
    let before = b.standbys()[&lost];
    let changelog_at_kill = changelog_records(&group, lost);
    a.kill();
    let killed = Instant::now();
    println!(
        "SIGKILL A (owner of partition {lost}): B's replica read {} records, lag {}; the \
         changelog holds {changelog_at_kill}",
        before.records_read, before.lag
    );
    common::wait_until(
        "B owns both partitions after A's session expired",
        Duration::from_secs(60),
        || {
            b.assert_running("B");
            b.owned().len() == PARTITIONS as usize
        },
    )
    .await;
    let resumed = killed.elapsed();
    let mut workload = feed.stop().await;
    common::produce(&topic, &workload.batch(2_000)).await;
    common::produce(&topic, &workload.one_per_key()).await;
    common::wait_until(
        "B processed and committed everything",
        Duration::from_secs(60),
        || {
            b.assert_running("B");
            common::committed(&group, &topic, PARTITIONS) == common::end_offsets(&topic, PARTITIONS)
        },
    )
    .await;
    let snapshot = b.running.stats.snapshot();
    let restored = snapshot.partitions[&(topic.clone(), lost)].restored_records;
    let promoted = b.promotions.of(lost);
    let b_handler = b.handler.clone();
    b.running.stop().await.unwrap();
    println!(
        "B handles partition {lost} {:.1} s after the kill; restored {restored} of \
         {changelog_at_kill} changelog records (promotion reported: {promoted:?}; promotions \
         {})",
        resumed.as_secs_f64(),
        snapshot.standby_promotions
    );
    assert_eq!(
        promoted,
        Some(restored),
        "the restore listener reports the promotion"
    );
    assert_eq!(snapshot.standby_promotions, 1);
    assert!(
        restored * 10 < changelog_at_kill as u64,
        "the promoted replica must restore only the tail: {restored} of {changelog_at_kill}"
    );
    assert_exact(&workload, &b_handler, seed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_never_applies_the_void_records_of_a_zombie() {
    require_broker!();
    if CHILD.in_child() {
        return;
    }
    const PARTITIONS: i32 = 1;
    let scenario = Scenario::start("standby-zombie", PARTITIONS, 2_000, 20_000).await;
    let (seed, dir, topic, group) = scenario.names();

    // A (a child) owns the partition; B and S join and keep replicas of it (two replicas in
    // a group of three: every member keeps what it does not own).
    let mut a = scenario.child("zombie-a", 2);
    let probe = a.probe.clone();
    let stderr = a.stderr.clone();
    common::wait_until(
        "A owns the partition and committed",
        Duration::from_secs(60),
        || {
            a.assert_alive("A");
            common::committed(&group, &topic, PARTITIONS)[0] >= 20_000
        },
    )
    .await;
    let feed = Feed::start(&topic, scenario.workload, 50, Duration::from_millis(50));
    let members: Vec<Member> = ["zombie-b", "zombie-s"]
        .iter()
        .map(|id| {
            start(
                config(&topic, &group, id, &dir_of(dir.as_path(), id), 2),
                &topic,
            )
        })
        .collect();
    common::wait_until(
        "B and S keep caught-up replicas of A's partition",
        Duration::from_secs(60),
        || {
            a.assert_alive("A");
            members.iter().all(|m| {
                m.assert_running("member");
                m.standbys()
                    .get(&0)
                    .is_some_and(|s| s.records_read > 0 && s.lag < 1_000)
            })
        },
    )
    .await;
    let log_a = common::read_probe(&probe);
    let epochs_a: BTreeSet<u64> = log_a.restored.iter().map(|(_, _, e)| *e).collect();

    // Freeze A past its session: the partition moves to B or S; the other keeps a replica.
    a.signal("STOP");
    let ends_at_freeze = common::end_offsets(&topic, PARTITIONS);
    common::wait_until(
        "another member owns the partition and committed past the freeze (A frozen)",
        Duration::from_secs(60),
        || {
            members.iter().any(|m| m.owned().contains(&0))
                && common::committed(&group, &topic, PARTITIONS)[0] >= ends_at_freeze[0]
        },
    )
    .await;
    let owner = members.iter().position(|m| m.owned().contains(&0)).unwrap();
    let standby = &members[1 - owner];
    let changelogs = [
        changelog_topic(&group, "counts"),
        changelog_topic(&group, "sums"),
    ];
    let at_wake: Vec<Vec<i64>> = changelogs
        .iter()
        .map(|t| common::end_offsets_or_zero(t, PARTITIONS))
        .collect();
    let wake_ms = common::now_ms();
    let log_from = std::fs::metadata(&stderr).map_or(0, |m| m.len() as usize);
    a.signal("CONT");
    common::wait_until(
        "the resumed zombie noticed",
        Duration::from_secs(30),
        || noticed_since(&probe, wake_ms, &stderr, log_from).covers(0) || !a.process.alive(),
    )
    .await;
    a.kill();
    let mut written = BTreeMap::new();
    for (t, from) in changelogs.iter().zip(&at_wake) {
        common::changelog_flush_records(t, PARTITIONS, from, &mut written);
    }
    let zombie_data: u64 = written
        .iter()
        .filter(|((_, e, _), _)| epochs_a.contains(e))
        .map(|(_, r)| r.data as u64)
        .sum();
    // A resumed zombie often notices before its next flush and writes nothing: late writes
    // of its epoch are appended too (copies of its last data records, as a zombie's flush
    // that lost the race would write them), so the rule is always exercised.
    let late = late_writes(&changelogs[0], &epochs_a, 50).await;
    assert!(
        late > 0,
        "A's epochs {epochs_a:?} wrote no data record to copy"
    );
    println!("the zombie wrote {zombie_data} data records after it was resumed; {late} late copies appended");
    let zombie_data = zombie_data + late;
    // Every record the zombie wrote follows its successor's epoch marker: the standby, which
    // read that marker before, must find each of them void (it reads them within seconds).
    let voided_all = common::wait_for(Duration::from_secs(30), || {
        standby
            .standbys()
            .get(&0)
            .is_some_and(|s| s.void_records >= zombie_data)
    })
    .await;
    let seen = standby.standbys()[&0];
    println!(
        "zombie writes in all: {zombie_data} (epochs {epochs_a:?}); the standby found {} void \
         records, read {}",
        seen.void_records, seen.records_read
    );
    assert!(
        voided_all,
        "the standby applied some of the zombie's {zombie_data} void records (it voided {})",
        seen.void_records
    );

    // The owner goes for good: the standby is promoted, restores only the tail, and is exact.
    let mut workload = feed.stop().await;
    let owner_member = members.into_iter().collect::<Vec<_>>();
    let (owner_member, standby) = {
        let mut it = owner_member.into_iter();
        let (first, second) = (it.next().unwrap(), it.next().unwrap());
        if owner == 0 {
            (first, second)
        } else {
            (second, first)
        }
    };
    let changelog_at_stop = changelog_records(&group, 0);
    owner_member.running.stop().await.unwrap();
    common::produce(&topic, &workload.one_per_key()).await;
    common::wait_until(
        "the standby was promoted and processed everything",
        Duration::from_secs(60),
        || {
            standby.assert_running("standby");
            common::committed(&group, &topic, PARTITIONS) == common::end_offsets(&topic, PARTITIONS)
        },
    )
    .await;
    let restored = standby.promotions.of(0);
    let handler = standby.handler.clone();
    standby.running.stop().await.unwrap();
    println!("promoted standby restored {restored:?} of {changelog_at_stop} changelog records");
    assert!(
        restored.is_some_and(|r| r * 10 < changelog_at_stop as u64),
        "the promoted standby must restore only the tail: {restored:?} of {changelog_at_stop}"
    );
    assert_exact(&workload, &handler, seed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_standby_set_follows_the_group_and_a_static_restart_moves_nothing() {
    require_broker!();
    if CHILD.in_child() {
        return;
    }
    const PARTITIONS: i32 = 4;
    let mut scenario = Scenario::start("standby-set", PARTITIONS, 400, 4_000).await;
    let (_, dir, topic, group) = scenario.names();
    // Cooperative-sticky: the placement model gives every partition one predicted heir.
    let member = |id: &str| {
        let config = builder(&topic, &group, id, &dir_of(dir.as_path(), id), 1)
            .assignment(kafka_stateful::AssignmentStrategy::CooperativeSticky)
            .build()
            .unwrap();
        start(config, &topic)
    };
    let all: BTreeSet<i32> = (0..PARTITIONS).collect();

    // Two members: each keeps a replica of every partition the other owns.
    let a = member("set-a");
    let b = member("set-b");
    common::wait_until(
        "A and B share the partitions and each keeps the other's",
        Duration::from_secs(60),
        || {
            let (oa, ob) = (a.owned(), b.owned());
            !oa.is_empty()
                && !ob.is_empty()
                && oa.union(&ob).copied().collect::<BTreeSet<_>>() == all
                && a.standbys().keys().copied().collect::<BTreeSet<_>>() == ob
                && b.standbys().keys().copied().collect::<BTreeSet<_>>() == oa
        },
    )
    .await;

    // A third member: one replica per partition, on its predicted heir, never its owner;
    // replicas no longer kept are deleted after the cleanup delay.
    let c = member("set-c");
    common::wait_until("C owns partitions", Duration::from_secs(60), || {
        !c.owned().is_empty()
    })
    .await;
    let members = [(&a, "set-a"), (&b, "set-b"), (&c, "set-c")];
    let placed = || {
        let owned: Vec<BTreeSet<i32>> = members.iter().map(|(m, _)| m.owned()).collect();
        let kept: Vec<BTreeSet<i32>> = members
            .iter()
            .map(|(m, _)| m.standbys().keys().copied().collect())
            .collect();
        (owned, kept)
    };
    let mut last = String::new();
    let settled = common::wait_for(Duration::from_secs(60), || {
        let (owned, kept) = placed();
        let disk: Vec<BTreeSet<i32>> = members
            .iter()
            .map(|(_, id)| partition_dirs(&dir.as_path().join(id), &group, &topic))
            .collect();
        last = format!("owned {owned:?}, kept {kept:?}, on disk {disk:?}");
        let owners_ok = owned.iter().all(|o| !o.is_empty())
            && owned.iter().map(BTreeSet::len).sum::<usize>() == PARTITIONS as usize;
        let once = all
            .iter()
            .all(|p| kept.iter().filter(|k| k.contains(p)).count() == 1);
        let never_owner = owned.iter().zip(&kept).all(|(o, k)| o.is_disjoint(k));
        let on_disk_ok = members
            .iter()
            .zip(owned.iter().zip(&kept))
            .all(|((_, id), (o, k))| {
                let expected: BTreeSet<i32> = o.union(k).copied().collect();
                partition_dirs(&dir.as_path().join(id), &group, &topic) == expected
            });
        owners_ok && once && never_owner && on_disk_ok
    })
    .await;
    assert!(
        settled,
        "three members: every partition must be kept exactly once, never by its owner, with \
         no other state left on disk; last seen: {last}"
    );
    let (owned_before, kept_before) = placed();
    println!("three members own {owned_before:?} and keep {kept_before:?}");

    // C restarts within its session: nothing moves, nothing is restored.
    let (assigned_a, assigned_b) = (
        a.running.stats.snapshot().assigned,
        b.running.stats.snapshot().assigned,
    );
    c.running.stop().await.unwrap();
    let c = member("set-c");
    let members = [(&a, "set-a"), (&b, "set-b"), (&c, "set-c")];
    common::wait_until(
        "C is back with its partitions",
        Duration::from_secs(30),
        || c.owned() == owned_before[2],
    )
    .await;
    common::produce(&topic, &scenario.workload.one_per_key()).await;
    common::wait_until(
        "everything committed after C's restart",
        Duration::from_secs(30),
        || common::committed(&group, &topic, PARTITIONS) == common::end_offsets(&topic, PARTITIONS),
    )
    .await;
    let snapshot = c.running.stats.snapshot();
    let restored: u64 = snapshot
        .partitions
        .values()
        .map(|p| p.restored_records)
        .sum();
    assert_eq!(restored, 0, "a static restart restores nothing");
    assert_eq!(snapshot.standby_promotions, 0);
    assert_eq!(
        a.running.stats.snapshot().assigned,
        assigned_a,
        "A saw no rebalance"
    );
    assert_eq!(
        b.running.stats.snapshot().assigned,
        assigned_b,
        "B saw no rebalance"
    );
    let owned_after: Vec<BTreeSet<i32>> = members.iter().map(|(m, _)| m.owned()).collect();
    assert_eq!(owned_after, owned_before, "a static restart moves nothing");
    let expected = scenario.workload.expected();
    let mut last = HashMapUnion::default();
    for (m, _) in &members {
        last.extend(&m.handler);
    }
    let wrong = common::state_mismatches(&expected, &last.0);
    assert!(
        wrong.is_empty(),
        "{} keys wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    for m in [a, b, c] {
        m.running.stop().await.unwrap();
    }
}

/// A changelog record to copy: key, value, headers.
type LateWrite = (Vec<u8>, Option<Vec<u8>>, Vec<(String, Vec<u8>)>);

/// Appends copies of the last `n` data records that `epochs` wrote to partition 0 of
/// `changelog` (same key, value and headers): a zombie's late writes. Returns how many.
async fn late_writes(changelog: &str, epochs: &BTreeSet<u64>, n: usize) -> u64 {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;
    let of_epoch = |headers: &[(String, Vec<u8>)]| {
        headers.iter().any(|(k, v)| {
            k == "ks"
                && std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.split('.').nth(1)?.parse::<u64>().ok())
                    .is_some_and(|e| epochs.contains(&e))
        })
    };
    let found: Vec<LateWrite> = common::read_all(changelog, 1)
        .into_iter()
        .filter_map(|(key, value, headers)| {
            let key = key.unwrap_or_default();
            (!key.starts_with(b"\0kafka-stateful/") && of_epoch(&headers))
                .then_some((key, value, headers))
        })
        .collect();
    let producer = common::producer_at(&common::bootstrap());
    let late = &found[found.len().saturating_sub(n)..];
    for (key, value, headers) in late {
        let mut owned = OwnedHeaders::new();
        for (k, v) in headers {
            owned = owned.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut record = FutureRecord::to(changelog)
            .partition(0)
            .key(key)
            .headers(owned);
        if let Some(v) = value {
            record = record.payload(v);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
    }
    late.len() as u64
}

/// Every key's last state seen by any member (each key lives in one partition, handled by
/// one member at the end).
#[derive(Default)]
struct HashMapUnion(std::collections::HashMap<String, (u64, u64)>);

impl HashMapUnion {
    fn extend(&mut self, handler: &CountSum) {
        for (k, v) in handler.last.lock().unwrap().iter() {
            let e = self.0.entry(k.clone()).or_default();
            if v.0 > e.0 {
                *e = *v;
            }
        }
    }
}

/// The partitions with a state directory under a member's state dir.
fn partition_dirs(state_dir: &Path, group: &str, topic: &str) -> BTreeSet<i32> {
    let prefix = format!("{topic}-");
    std::fs::read_dir(state_dir.join(group))
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix(&prefix)?.parse().ok()
        })
        .collect()
}
