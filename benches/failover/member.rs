//! A member process of the failover bench: counts and sums per key into two stores, and
//! writes what the driver measures to its probe file, one event per line:
//!
//! - `assigned <ms> <p>` / `revoked <ms> <p>`: rebalances;
//! - `first <ms> <p>`: the first record handled after each assignment of `p`;
//! - `restored <ms> <p> <records> <elapsed ms>`: a finished restore;
//! - `promoted <ms> <p> <records>`: a standby replica promoted;
//! - `count <ms> <handled>`: records handled so far (every 50 ms while it changes);
//! - `standby <ms> <replicas> <lag>`: standby replicas kept and their total lag (every 200 ms).

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_stateful::codec::{Bincode, Utf8};
use kafka_stateful::{
    ConsumerConfig, Handler, HandlerError, PartitionContext, RebalanceListener, Record,
    RestoreListener, StandbyReplicas, StatefulConsumer, StoreDef,
};

pub const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[derive(Clone)]
struct Probe(Arc<Mutex<std::fs::File>>);

impl Probe {
    fn line(&self, text: &str) {
        let mut f = self.0.lock().unwrap();
        let _ = writeln!(f, "{text}");
    }
}

struct CountSum {
    counts: StoreDef<String, u64>,
    sums: StoreDef<String, u64>,
    handled: Arc<AtomicU64>,
    /// Partitions that handled a record since their last assignment.
    seen: Arc<Mutex<HashSet<i32>>>,
    probe: Probe,
}

impl Handler<String, Vec<u8>> for CountSum {
    async fn handle(
        &self,
        r: Record<String, Vec<u8>>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let key = r.key.ok_or("no key")?;
        let n = r.value.map_or(0, |v| v.len() as u64);
        let mut counts = ctx.store(&self.counts)?;
        let count = counts.get(&key)?.unwrap_or(0);
        counts.put(&key, &(count + 1))?;
        let mut sums = ctx.store(&self.sums)?;
        let sum = sums.get(&key)?.unwrap_or(0);
        sums.put(&key, &(sum + n))?;
        self.handled.fetch_add(1, Ordering::Relaxed);
        if self.seen.lock().unwrap().insert(r.partition) {
            self.probe
                .line(&format!("first {} {}", now_ms(), r.partition));
        }
        Ok(())
    }
}

struct Listener {
    seen: Arc<Mutex<HashSet<i32>>>,
    probe: Probe,
}

impl RebalanceListener for Listener {
    fn on_assigned(&self, partitions: &[(String, i32)]) {
        let mut seen = self.seen.lock().unwrap();
        for (_, p) in partitions {
            seen.remove(p);
            self.probe.line(&format!("assigned {} {p}", now_ms()));
        }
    }
    fn on_revoked(&self, partitions: &[(String, i32)]) {
        for (_, p) in partitions {
            self.probe.line(&format!("revoked {} {p}", now_ms()));
        }
    }
}

impl RestoreListener for Listener {
    fn on_restore_end(&self, _: &str, partition: i32, records: u64, elapsed: Duration) {
        self.probe.line(&format!(
            "restored {} {partition} {records} {}",
            now_ms(),
            elapsed.as_millis()
        ));
    }
    fn on_standby_promoted(&self, _: &str, partition: i32, records: u64, _: Duration) {
        self.probe
            .line(&format!("promoted {} {partition} {records}", now_ms()));
    }
}

/// Runs a member until killed:
/// `FAILOVER_MEMBER=<topic>|<group>|<instance>|<dir>|<standbys>|<sticky>|<probe>`; `sticky`
/// `1` chooses cooperative-sticky explicitly (else the default).
pub async fn run(spec: &str, bootstrap: &str) {
    let f: Vec<&str> = spec.split('|').collect();
    let [topic, group, instance, dir, standbys, sticky, probe] = f[..] else {
        panic!("bad FAILOVER_MEMBER {spec:?}");
    };
    let probe = Probe(Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(probe)
            .unwrap(),
    )));
    let counts = StoreDef::new("counts", Utf8, Bincode::<u64>::new());
    let sums = StoreDef::new("sums", Utf8, Bincode::<u64>::new());
    let mut config = ConsumerConfig::builder(bootstrap, group, [topic])
        .instance_id(instance)
        .session_timeout(SESSION_TIMEOUT)
        .state_dir(dir)
        .store(&counts)
        .store(&sums);
    if sticky == "1" {
        config = config.assignment(kafka_stateful::AssignmentStrategy::CooperativeSticky);
    }
    let standbys: usize = standbys.parse().unwrap();
    if standbys > 0 {
        config = config.standby_replicas(
            StandbyReplicas::new(standbys).refresh_interval(Duration::from_secs(1)),
        );
    }
    let (handled, seen) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(Mutex::new(HashSet::new())),
    );
    let handler = CountSum {
        counts,
        sums,
        handled: handled.clone(),
        seen: seen.clone(),
        probe: probe.clone(),
    };
    let consumer = StatefulConsumer::new(
        config.build().unwrap(),
        Utf8,
        kafka_stateful::codec::RawBytes,
        handler,
    )
    .with_rebalance_listener(Listener {
        seen: seen.clone(),
        probe: probe.clone(),
    })
    .with_restore_listener(Listener {
        seen,
        probe: probe.clone(),
    });
    let stats = consumer.stats();
    let reporter = probe.clone();
    tokio::spawn(async move {
        let (mut last, mut tick) = (u64::MAX, 0u64);
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let n = handled.load(Ordering::Relaxed);
            if n != last {
                reporter.line(&format!("count {} {n}", now_ms()));
                last = n;
            }
            tick += 1;
            if tick % 4 == 0 {
                let s = stats.snapshot();
                let lag: u64 = s.standbys.values().map(|s| s.lag).sum();
                reporter.line(&format!("standby {} {} {lag}", now_ms(), s.standbys.len()));
            }
        }
    });
    consumer.run(std::future::pending()).await.unwrap();
}
