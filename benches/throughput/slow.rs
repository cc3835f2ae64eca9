//! Slow handlers and key-level concurrency (`BENCH_ONLY=slow`): one partition, a handler
//! that awaits 20 ms (a service call) and then reads and writes its record's key, over 1,
//! 10, 100 and 10 000 keys (uniform) and 10 000 keys skewed 80/20, with `key_concurrency`
//! 1, 16, 64 and 256. A combination handles up to 50 000 records but stops after about
//! 10 s at its goal rate (at 50 records/s, one key or limit 1 would take 17 minutes for
//! 50 000). Then the same handler without the wait, at limits 1 and 64, for the CPU a
//! record costs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_stateful::codec::{Bincode, RawBytes, Utf8};
use kafka_stateful::{
    ConsumerConfig, Handler, HandlerError, PartitionContext, Record, StatefulConsumer, StoreDef,
};

const RECORDS: u64 = 50_000;
const CPU_RECORDS: u64 = 1_000_000;
const WAIT: Duration = Duration::from_millis(20);

#[derive(Clone)]
struct Slow {
    store: StoreDef<String, u64>,
    wait: Option<Duration>,
    seen: Arc<AtomicU64>,
    /// When (wall clock, process CPU) the first record and the `stop_at`-th record were
    /// handled: taken by the handler itself, so a busy runtime cannot delay them.
    first: Arc<std::sync::OnceLock<(Instant, Duration)>>,
    last: Arc<std::sync::OnceLock<(Instant, Duration)>>,
    stop_at: u64,
    /// Handler durations, µs.
    latencies: Arc<Mutex<Vec<u32>>>,
}

impl Handler<String, Vec<u8>> for Slow {
    async fn handle(
        &self,
        r: Record<String, Vec<u8>>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let started = Instant::now();
        if let Some(wait) = self.wait {
            tokio::time::sleep(wait).await;
        }
        let key = r.key.unwrap_or_default();
        let mut store = ctx.store(&self.store)?;
        let n = store.get(&key)?.unwrap_or(0) + 1;
        store.put(&key, &n)?;
        if self.wait.is_some() {
            let us = started.elapsed().as_micros() as u32;
            self.latencies.lock().unwrap().push(us);
        }
        let seen = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if seen == 1 {
            let _ = self.first.set((Instant::now(), super::measure::cpu_time()));
        }
        if seen == self.stop_at {
            let _ = self.last.set((Instant::now(), super::measure::cpu_time()));
        }
        Ok(())
    }
}

/// A key distribution: its name, distinct keys, and the key of the `i`-th record.
struct Keys {
    name: &'static str,
    distinct: u64,
    skewed: bool,
}

impl Keys {
    fn key(&self, i: u64) -> String {
        let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
        let k = if self.skewed {
            // 80% of the records on the first 20% of the keys.
            let hot = self.distinct / 5;
            if h % 10 < 8 {
                (h / 10) % hot
            } else {
                hot + (h / 10) % (self.distinct - hot)
            }
        } else {
            h % self.distinct
        };
        format!("key-{k}")
    }

    /// Records/s the goal asks for at `limit`: 80% of `min(limit, keys)` × 50/s, up
    /// to 10 000/s.
    fn goal(&self, limit: u64) -> f64 {
        (0.8 * limit.min(self.distinct) as f64 * 50.0).min(10_000.0)
    }
}

async fn fill_one_partition(bootstrap: &str, topic: &str, keys: &Keys, records: u64) {
    super::topics::create_topic(bootstrap, topic, 1).await;
    super::topics::produce(bootstrap, topic, records, |i| (keys.key(i), b"x".to_vec())).await;
}

struct Measured {
    records: u64,
    wall: Duration,
    cpu: Duration,
    latencies: Vec<u32>,
    max_committed_lag: i64,
    peak_rss_mb: f64,
}

async fn run(
    bootstrap: &str,
    topic: &str,
    group: &str,
    dir: &std::path::Path,
    limit: usize,
    wait: Option<Duration>,
    stop_after: (u64, Duration),
) -> Measured {
    let store = StoreDef::new("counts", Utf8, Bincode::<u64>::new());
    let config = ConsumerConfig::builder(bootstrap, group, [topic])
        .instance_id("bench-slow")
        .state_dir(dir.join(group))
        .store(&store)
        .key_concurrency(limit)
        .commit_interval(Duration::from_millis(500))
        .build()
        .unwrap();
    let (n, budget) = stop_after;
    let handler = Slow {
        store,
        wait,
        seen: Arc::default(),
        first: Arc::default(),
        last: Arc::default(),
        stop_at: n,
        latencies: Arc::default(),
    };
    let consumer = StatefulConsumer::new(config, Utf8, RawBytes, handler.clone());
    let stats = consumer.stats();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(consumer.run(async move {
        let _ = rx.await;
    }));
    while handler.first.get().is_none() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    super::measure::reset_peak_rss();
    let (started, cpu0) = *handler.first.get().expect("set");
    let mut max_lag = 0;
    while handler.last.get().is_none() && started.elapsed() < budget {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let snapshot = stats.snapshot();
        for p in snapshot.partitions.values() {
            max_lag = max_lag.max(p.processed_next.max(0) - p.committed_next.max(0));
        }
    }
    // Ended at the `n`-th record, or (a slow combination) at the time budget.
    let (ended, cpu1, records) = match handler.last.get() {
        Some(&(at, cpu)) => (at, cpu, n - 1),
        None => (
            Instant::now(),
            super::measure::cpu_time(),
            handler.seen.load(Ordering::Relaxed) - 1,
        ),
    };
    let measured = Measured {
        records,
        wall: ended - started,
        cpu: cpu1 - cpu0,
        latencies: std::mem::take(&mut handler.latencies.lock().unwrap()),
        max_committed_lag: max_lag,
        peak_rss_mb: super::measure::peak_rss_mb(),
    };
    let _ = tx.send(());
    join.await.unwrap().unwrap();
    measured
}

fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

pub async fn slow_handlers(bootstrap: &str, id: u32, dir: &std::path::Path, cpu_only: bool) {
    let distributions = [
        Keys {
            name: "1",
            distinct: 1,
            skewed: false,
        },
        Keys {
            name: "10",
            distinct: 10,
            skewed: false,
        },
        Keys {
            name: "100",
            distinct: 100,
            skewed: false,
        },
        Keys {
            name: "10000",
            distinct: 10_000,
            skewed: false,
        },
        Keys {
            name: "10000_skewed",
            distinct: 10_000,
            skewed: true,
        },
    ];
    for keys in &distributions {
        let topic = format!("bench-slow-{}-{id}", keys.name);
        if cpu_only {
            continue;
        }
        fill_one_partition(bootstrap, &topic, keys, RECORDS).await;
        for limit in [1u64, 16, 64, 256] {
            let goal = keys.goal(limit);
            // Up to 50 000 records, about 10 s at the goal rate.
            let n = RECORDS.min((goal * 10.0) as u64).max(200);
            let group = format!("slow-{}-{limit}-{id}", keys.name);
            let m = run(
                bootstrap,
                &topic,
                &group,
                dir,
                limit as usize,
                Some(WAIT),
                (n, Duration::from_secs(30)),
            )
            .await;
            let mut latencies = m.latencies;
            latencies.sort_unstable();
            let rate = m.records as f64 / m.wall.as_secs_f64();
            println!(
                "{{\"bench\":\"slow_handler_{}_keys_limit_{limit}\",\"records\":{},\"records_per_s\":{rate:.0},\"goal_records_per_s\":{goal:.0},\"goal_met\":{},\"handler_p50_ms\":{:.1},\"handler_p99_ms\":{:.1},\"max_uncommitted_records\":{},\"peak_rss_mb\":{:.0}}}",
                keys.name,
                m.records,
                rate >= goal,
                percentile_ms(&latencies, 0.5),
                percentile_ms(&latencies, 0.99),
                m.max_committed_lag,
                m.peak_rss_mb
            );
        }
    }
    // CPU per record without the wait: concurrency must not make a fast handler costly.
    // 1 000 000 records a run (CPU time is counted in 10 ms ticks), limits alternating over
    // three rounds so that drift of the machine cancels.
    let topic = format!("bench-slow-cpu-{id}");
    let uniform = Keys {
        name: "cpu",
        distinct: 10_000,
        skewed: false,
    };
    fill_one_partition(bootstrap, &topic, &uniform, CPU_RECORDS).await;
    let mut cpu = Vec::new();
    for (round, limit) in [1usize, 64, 1, 64, 1, 64].into_iter().enumerate() {
        let group = format!("slow-cpu-{limit}-{round}-{id}");
        let m = run(
            bootstrap,
            &topic,
            &group,
            dir,
            limit,
            None,
            (CPU_RECORDS, Duration::from_secs(60)),
        )
        .await;
        let us = m.cpu.as_secs_f64() * 1e6 / m.records.max(1) as f64;
        cpu.push(us);
        println!(
            "{{\"bench\":\"cpu_handler_10000_keys_limit_{limit}\",\"records\":{},\"records_per_s\":{:.0},\"cpu_us_per_record\":{us:.3}}}",
            m.records,
            m.records as f64 / m.wall.as_secs_f64()
        );
    }
    let mut ratios: Vec<f64> = cpu.chunks(2).map(|pair| pair[1] / pair[0]).collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "{{\"bench\":\"cpu_handler_limit_64_vs_1\",\"cpu_ratio_median\":{:.2},\"cpu_ratios\":{ratios:.2?},\"goal\":1.2}}",
        ratios[ratios.len() / 2]
    );
}
