//! The zombie test's (`zombie.rs`) helpers: the zombie's own account of what it did after
//! it was resumed (its tracing set-up: a probe and an INFO log on stderr, and the parsing of
//! both), a steady stream of input, and a watch on the committed offsets. Included with
//! `#[path]` by that test only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::common::{self, Probe, ProbeLayer, ProbeLog, Workload};
use rdkafka::producer::FutureRecord;

/// The child's tracing: the probe as in the crash test ([`common::init_probe_tracing`]),
/// plus the library's and librdkafka's INFO and up on stderr (a file): how the zombie
/// learned what happened to its partitions (the library's revokes with their `lost` flag,
/// librdkafka's warnings; read back by [`noticed_since`]).
pub fn init_zombie_tracing(probe: Arc<Probe>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let probe_filter = tracing_subscriber::filter::Targets::new()
        .with_target("kafka_stateful", tracing::Level::DEBUG);
    let log_filter = tracing_subscriber::filter::Targets::new()
        .with_target("kafka_stateful", tracing::Level::INFO)
        .with_target("librdkafka", tracing::Level::INFO);
    tracing_subscriber::registry()
        .with(ProbeLayer(probe).with_filter(probe_filter))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::io::stderr)
                .with_filter(log_filter),
        )
        .init();
}

/// What the zombie was doing when it was frozen at `freeze_ms`: its last sampled record and
/// its last flush per partition, and how long before.
pub fn last_activity(log: &ProbeLog, freeze_ms: u64) -> String {
    let last_processed: BTreeMap<i32, (u64, i64)> = log
        .processing
        .iter()
        .map(|(t, p, o)| (*p, (*t, *o)))
        .collect();
    let last_flushed: BTreeMap<i32, (u64, u64)> = log
        .flushed
        .iter()
        .map(|(t, p, _, s)| (*p, (*t, *s)))
        .collect();
    format!(
        "last sampled record per partition {}; last flush {}",
        last_processed
            .iter()
            .map(|(p, (t, o))| format!(
                "p{p} offset {o} {} ms before",
                freeze_ms.saturating_sub(*t)
            ))
            .collect::<Vec<_>>()
            .join(", "),
        last_flushed
            .iter()
            .map(|(p, (t, s))| format!("p{p} seq {s} {} ms before", freeze_ms.saturating_sub(*t)))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// What the zombie did about its partitions after it was resumed, from its probe (hooks,
/// the library's warnings, stats) and its log on stderr (librdkafka's verdict).
#[derive(Debug, Default)]
pub struct Noticed {
    /// Partitions whose flush found a newer epoch ("partition fenced").
    pub fenced: BTreeSet<i32>,
    /// Partitions whose `on_lost` hook ran.
    pub lost: BTreeSet<i32>,
    /// Partitions whose `on_revoked` hook ran before any new assignment of them: the worker
    /// took the graceful path (hook, flush) for its old assignment.
    pub revoked: BTreeSet<i32>,
    /// Partitions a commit failed for, with the errors.
    pub commit_failed: BTreeMap<i32, BTreeSet<String>>,
    /// Partitions it restored again (a new, legitimate assignment after it rejoined).
    pub reassigned: BTreeSet<i32>,
    /// Every warning or error message of the library, deduplicated, in order.
    pub warnings: Vec<String>,
    /// Per partition, whether the first revoke of it in the log was of a lost assignment
    /// (`lost=true`: session expired, another member may own it).
    pub revoke_lost: BTreeMap<i32, bool>,
    /// librdkafka's warnings and errors, deduplicated, in order.
    pub librdkafka: Vec<String>,
}

impl Noticed {
    /// The partition's worker stopped: its flush was fenced, or a revoke hook ran.
    pub fn covers(&self, p: i32) -> bool {
        self.fenced.contains(&p) || self.lost.contains(&p) || self.revoked.contains(&p)
    }

    /// Partitions whose lost assignment was handled as a graceful revoke (`on_revoked`, and a
    /// flush unless the lost flag was seen by then) instead of `on_lost`.
    pub fn revoked_while_lost(&self) -> Vec<i32> {
        self.revoked
            .iter()
            .filter(|p| self.revoke_lost.get(p) == Some(&true) && !self.lost.contains(p))
            .copied()
            .collect()
    }
}

fn field<'a>(fields: &'a str, name: &str) -> Option<&'a str> {
    fields
        .split('|')
        .find_map(|f| f.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
}

/// Reads the probe lines written at or after `since_ms`, and the stderr log from byte
/// `log_from` (its length when the process was resumed: nothing is written while stopped).
pub fn noticed_since(probe: &Path, since_ms: u64, log: &Path, log_from: usize) -> Noticed {
    let text = std::fs::read_to_string(probe).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let mut out = Noticed::default();
    let mut first_ownership: BTreeMap<i32, String> = BTreeMap::new();
    for line in complete.lines() {
        let mut words = line.splitn(3, ' ');
        let (Some(ms), Some(kind), Some(rest)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        if ms.parse::<u64>().map_or(true, |ms| ms < since_ms) {
            continue;
        }
        let partition = || field(rest, "partition").and_then(|p| p.parse::<i32>().ok());
        match kind {
            "lost" | "revoked" | "assigned" => {
                if let Ok(p) = rest.trim().parse::<i32>() {
                    first_ownership.entry(p).or_insert_with(|| kind.to_string());
                    if kind == "lost" {
                        out.lost.insert(p);
                    }
                }
            }
            "stats" => {
                let fenced = rest.contains("fenced=true");
                if let (true, Some(Ok(p))) = (fenced, rest.split(' ').next().map(str::parse)) {
                    out.fenced.insert(p);
                }
            }
            "event" => {
                let (level, message) = {
                    let mut it = rest.split('|');
                    (it.next().unwrap_or(""), it.next().unwrap_or(""))
                };
                if message.starts_with("partition fenced") {
                    if let Some(p) = partition() {
                        out.fenced.insert(p);
                    }
                }
                if message.starts_with("offset commit failed") {
                    if let Some(p) = partition() {
                        let error = field(rest, "error").unwrap_or("?").to_string();
                        out.commit_failed.entry(p).or_default().insert(error);
                    }
                }
                if message == "restore finished" {
                    if let Some(p) = partition() {
                        out.reassigned.insert(p);
                    }
                }
                if (level == "WARN" || level == "ERROR")
                    && !out.warnings.iter().any(|w| w == message)
                {
                    out.warnings.push(message.to_string());
                }
            }
            _ => {}
        }
    }
    out.revoked = first_ownership
        .into_iter()
        .filter(|(_, kind)| kind == "revoked")
        .map(|(p, _)| p)
        .collect();
    let log = std::fs::read(log).unwrap_or_default();
    let log = String::from_utf8_lossy(log.get(log_from..).unwrap_or_default());
    for line in log.lines() {
        if let Some(rest) = line.split_once("partitions revoked; draining partitions=[") {
            let (list, tail) = rest.1.split_once(']').unwrap_or((rest.1, ""));
            let lost = tail.contains("lost=true");
            for element in list.split("), (") {
                let number = element
                    .trim_end_matches(')')
                    .rsplit(", ")
                    .next()
                    .unwrap_or("");
                if let Ok(p) = number.trim().parse::<i32>() {
                    out.revoke_lost.entry(p).or_insert(lost);
                }
            }
        }
        if line.contains(" librdkafka: ") && (line.contains(" WARN ") || line.contains(" ERROR ")) {
            let message = line
                .split_once(" librdkafka: ")
                .map_or(line, |(_, m)| m)
                .to_string();
            if !out.librdkafka.contains(&message) {
                out.librdkafka.push(message);
            }
        }
    }
    out
}

/// The probe's lines written at or after `since_ms`, without the sampled records.
pub fn probe_since(probe: &Path, since_ms: u64) -> String {
    std::fs::read_to_string(probe)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.split(' ').next().and_then(|ms| ms.parse::<u64>().ok()) >= Some(since_ms)
                && !l.contains(" processing ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A steady stream of input on its own task: `chunk` records of `workload` every `every`
/// (each chunk acknowledged before the next), until stopped; hands the workload (which
/// remembers every record produced) back.
pub struct Feed {
    stop: Arc<AtomicBool>,
    join: tokio::task::JoinHandle<Workload>,
}

impl Feed {
    pub fn start(topic: &str, mut workload: Workload, chunk: usize, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (topic, stopping) = (topic.to_string(), stop.clone());
        let join = tokio::spawn(async move {
            let producer = common::producer_at(&common::bootstrap());
            let mut tick = tokio::time::interval(every);
            while !stopping.load(Ordering::Relaxed) {
                tick.tick().await;
                let sends: Vec<_> = workload
                    .batch(chunk)
                    .iter()
                    .map(|(p, k, v)| {
                        producer
                            .send_result(FutureRecord::to(&topic).partition(*p).key(k).payload(v))
                            .unwrap()
                    })
                    .collect();
                for send in sends {
                    send.await.unwrap().unwrap();
                }
            }
            workload
        });
        Self { stop, join }
    }

    pub async fn stop(self) -> Workload {
        self.stop.store(true, Ordering::Relaxed);
        self.join.await.unwrap()
    }
}

/// Polls the group's committed offsets and fails when one moves backwards.
pub struct CommitWatch {
    group: String,
    topic: String,
    partitions: i32,
    highest: Vec<i64>,
}

impl CommitWatch {
    /// Watches from the offsets committed now.
    pub fn new(group: &str, topic: &str, partitions: i32) -> Self {
        Self {
            group: group.to_string(),
            topic: topic.to_string(),
            partitions,
            highest: common::committed(group, topic, partitions),
        }
    }

    /// The committed offsets now; panics, naming `what` was going on, when one is lower than
    /// at a previous check.
    pub fn check(&mut self, what: &str) -> Vec<i64> {
        let now = common::committed(&self.group, &self.topic, self.partitions);
        for (p, (highest, now)) in self.highest.iter_mut().zip(&now).enumerate() {
            assert!(
                now >= highest,
                "{what}: the committed offset of partition {p} moved backwards from {highest} \
                 to {now} (a stale commit was accepted)"
            );
            *highest = *now;
        }
        now
    }
}
