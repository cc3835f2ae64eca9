//! Scale-out and failover of stateful members, each a process of its own.
//!
//! ```text
//! cargo bench --bench failover
//! ```
//!
//! Needs a broker at `$KAFKA_BOOTSTRAP` (default 127.0.0.1:9092; `scripts/broker.sh`). One
//! topic of 8 partitions holds 1 000 000 records over 500 000 keys (`FAILOVER_RECORDS`,
//! `FAILOVER_KEYS`); every member counts and sums per key into two stores, so the group's
//! state is 1 000 000 keys in all. Prints one JSON line per figure:
//!
//! - `scale`: aggregate throughput of 1, 2 and 3 members (a fresh group each, from the start
//!   of the topic; first record handled to last, across members);
//! - `failover`: 3 members hold the state and handle a steady stream (5 000 records/s), then
//!   one is killed with SIGKILL for good; for the partitions it owned: the time from the
//!   kill (the broker expires the member 3–6 s later: the session timeout counts from its
//!   last heartbeat, every 3 s) and from their new assignment to the first record handled
//!   again, and the changelog records restored — without standby replicas, with
//!   one (the group then uses `range` by default), and with one under `cooperative-sticky`.

#[path = "failover/member.rs"]
mod member;
#[path = "throughput/topics.rs"]
#[allow(dead_code)]
mod topics;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use member::{now_ms, SESSION_TIMEOUT};
use topics::env_u64;

const PARTITIONS: i32 = 8;
const FEED_PER_SECOND: u64 = 5_000;

struct Run {
    bootstrap: String,
    topic: String,
    id: u32,
    dir: tempfile::TempDir,
    records: u64,
    keys: u64,
}

/// A member process, killed when dropped.
struct Member {
    child: Child,
    probe: PathBuf,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A member's probe, parsed.
#[derive(Default, Debug)]
struct Events {
    lines: Vec<(String, u64, Vec<u64>)>,
}

impl Events {
    fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let kind = f.next()?.to_string();
                let ms = f.next()?.parse().ok()?;
                Some((kind, ms, f.filter_map(|x| x.parse().ok()).collect()))
            })
            .collect();
        Self { lines }
    }
    fn of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = (u64, &'a [u64])> + 'a {
        self.lines
            .iter()
            .filter(move |(k, _, _)| k == kind)
            .map(|(_, ms, v)| (*ms, v.as_slice()))
    }
    fn handled(&self) -> u64 {
        self.of("count").last().map_or(0, |(_, v)| v[0])
    }
    /// The partitions it owns after its last rebalance event.
    fn owned(&self) -> Vec<i32> {
        let mut owned = std::collections::BTreeSet::new();
        for (k, _, v) in &self.lines {
            match k.as_str() {
                "assigned" => owned.insert(v[0] as i32),
                "revoked" => owned.remove(&(v[0] as i32)),
                _ => false,
            };
        }
        owned.into_iter().collect()
    }
    fn standby(&self) -> Option<(u64, u64)> {
        self.of("standby").last().map(|(_, v)| (v[0], v[1]))
    }
}

impl Run {
    fn spawn(&self, group: &str, instance: &str, standbys: usize, sticky: bool) -> Member {
        let dir = self.dir.path().join(group).join(instance);
        let probe = self.dir.path().join(format!("{group}-{instance}.probe"));
        let spec = format!(
            "{}|{group}|{instance}|{}|{standbys}|{}|{}",
            self.topic,
            dir.display(),
            u8::from(sticky),
            probe.display()
        );
        let child = Command::new(std::env::current_exe().unwrap())
            .arg("--bench")
            .env("FAILOVER_MEMBER", spec)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Member { child, probe }
    }

    /// Aggregate throughput of `n` members from the start of the topic.
    async fn scale(&self, n: usize) {
        let group = format!("failover-scale{n}-{}", self.id);
        let members: Vec<Member> = (0..n)
            .map(|i| self.spawn(&group, &format!("m{i}"), 0, false))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let events: Vec<Events> = members.iter().map(|m| Events::read(&m.probe)).collect();
            let handled: u64 = events.iter().map(Events::handled).sum();
            if handled >= self.records {
                let first = events
                    .iter()
                    .filter_map(|e| e.of("first").map(|(ms, _)| ms).min())
                    .min();
                let last = events
                    .iter()
                    .filter_map(|e| e.of("count").last().map(|(ms, _)| ms))
                    .max();
                let secs = (last.unwrap() - first.unwrap()) as f64 / 1000.0;
                println!(
                    "{{\"bench\":\"failover_scale\",\"members\":{n},\"records\":{},\"seconds\":{secs:.2},\"records_per_s\":{:.0}}}",
                    self.records,
                    self.records as f64 / secs
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "scale {n}: only {handled} handled"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Three members, one killed for good; `standbys` replicas; `sticky`: cooperative-sticky
    /// chosen explicitly (with standbys the default is range).
    async fn failover(&self, standbys: usize, sticky: bool) {
        let group = format!("failover-kill{standbys}{}-{}", u8::from(sticky), self.id);
        let mut members: Vec<Option<Member>> = (0..3)
            .map(|i| Some(self.spawn(&group, &format!("m{i}"), standbys, sticky)))
            .collect();
        let probes: Vec<PathBuf> = members
            .iter()
            .map(|m| m.as_ref().unwrap().probe.clone())
            .collect();
        let ready = Instant::now() + Duration::from_secs(600);
        loop {
            let events: Vec<Events> = probes.iter().map(|p| Events::read(p)).collect();
            let handled: u64 = events.iter().map(Events::handled).sum();
            let warm = standbys == 0
                || events
                    .iter()
                    .all(|e| e.standby().is_some_and(|(n, lag)| n > 0 && lag < 5_000));
            if handled >= self.records && warm {
                break;
            }
            assert!(Instant::now() < ready, "failover: only {handled} handled");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let feed = Feed::start(&self.bootstrap, &self.topic, self.keys, self.records);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let victim = 2;
        let lost = Events::read(&probes[victim]).owned();
        let kept: Vec<Option<(u64, u64)>> =
            probes.iter().map(|p| Events::read(p).standby()).collect();
        members[victim] = None;
        let killed = now_ms();
        // Each lost partition: (assigned at, restored records, first handled at).
        let deadline = Instant::now() + Duration::from_secs(300);
        let moved = loop {
            let mut moved: BTreeMap<i32, (u64, u64, u64, usize)> = BTreeMap::new();
            for (member, p) in probes.iter().enumerate().take(victim) {
                let e = Events::read(p);
                for &lp in &lost {
                    let after = |kind| {
                        e.of(kind)
                            .filter(|(ms, v)| *ms >= killed && v[0] as i32 == lp)
                            .map(|(ms, v)| (ms, v.to_vec()))
                            .next()
                    };
                    if let (Some((at, _)), Some((_, r)), Some((first, _))) =
                        (after("assigned"), after("restored"), after("first"))
                    {
                        moved.insert(lp, (at, r[1], first, member));
                    }
                }
            }
            if moved.len() == lost.len() {
                break moved;
            }
            assert!(
                Instant::now() < deadline,
                "failover: lost partitions not handled again: {moved:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        feed.stop().await;
        let restored: u64 = moved.values().map(|m| m.1).sum();
        // The lost partitions' share of the state: 2 stores × their keys.
        let store = 2 * self.keys * lost.len() as u64 / PARTITIONS as u64;
        let from_kill = moved.values().map(|m| m.2 - killed).max().unwrap();
        let from_assign = moved.values().map(|m| m.2 - m.0).max().unwrap();
        println!(
            "{{\"bench\":\"failover\",\"standby_replicas\":{standbys},\"assignment\":\"{}\",\"lost_partitions\":{lost:?},\"records_restored\":{restored},\"store_entries\":{store},\"restored_pct\":{:.3},\"session_timeout_ms\":{},\"ms_kill_to_handled\":{from_kill},\"ms_from_assignment\":{from_assign},\"standbys_at_kill\":\"{kept:?}\",\"ms_kill_to_assignment\":{},\"new_owner_and_restored\":\"{:?}\"}}",
            if sticky || standbys == 0 { "cooperative-sticky" } else { "range" },
            100.0 * restored as f64 / store as f64,
            SESSION_TIMEOUT.as_millis(),
            moved.values().map(|m| m.0 - killed).min().unwrap(),
            moved.iter().map(|(p, m)| (p, m.3, m.1)).collect::<Vec<_>>()
        );
    }
}

/// A steady stream of records on its own task.
struct Feed {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    join: tokio::task::JoinHandle<()>,
}

impl Feed {
    fn start(bootstrap: &str, topic: &str, keys: u64, from: u64) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (b, t, s) = (bootstrap.to_string(), topic.to_string(), stop.clone());
        let join = tokio::spawn(async move {
            let mut i = from;
            let chunk = FEED_PER_SECOND / 10;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let start = i;
                topics::produce(&b, &t, chunk, |n| {
                    (topics::key_of(start + n, keys), vec![b'x'; 100])
                })
                .await;
                i += chunk;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { stop, join }
    }
    async fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.join.await;
    }
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("failover: run with `cargo bench --bench failover` (needs a broker)");
        return;
    }
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    if let Ok(spec) = std::env::var("FAILOVER_MEMBER") {
        member::run(&spec, &bootstrap).await;
        return;
    }
    let run = Run {
        topic: format!("bench-failover-{}", std::process::id()),
        id: std::process::id(),
        dir: tempfile::tempdir().unwrap(),
        records: env_u64("FAILOVER_RECORDS", 1_000_000),
        keys: env_u64("FAILOVER_KEYS", 500_000),
        bootstrap,
    };
    topics::fill(
        &run.bootstrap,
        &run.topic,
        PARTITIONS,
        run.records,
        run.keys,
        100,
    )
    .await;
    if std::env::var("FAILOVER_ONLY").map_or(true, |o| o == "scale") {
        for n in 1..=3 {
            run.scale(n).await;
        }
    }
    if std::env::var("FAILOVER_ONLY").map_or(true, |o| o == "kill") {
        run.failover(0, false).await;
        run.failover(1, false).await;
        run.failover(1, true).await;
    }
}
