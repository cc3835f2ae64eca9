//! Measuring: process CPU and peak RSS, a watcher thread that timestamps the first and the
//! n-th record handled, the raw rdkafka consumer every figure is compared with, and the
//! median and range over several interleaved runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// CPU time (user + system) of this process, from /proc/self/stat (clock ticks of 10 ms).
pub fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Resets the peak-RSS counter of this process (Linux: `clear_refs` 5).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak RSS since the last reset, in MB.
pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One measured run: records between the first and the last handled, wall and CPU time
/// between them.
#[derive(Debug, Clone, Copy)]
pub struct Figure {
    pub records: u64,
    pub wall: Duration,
    pub cpu: Duration,
    pub peak_rss_mb: f64,
    /// From the start of the run (consumer created) to its first record.
    pub to_first_record: Duration,
    /// Peak RSS before the first record (since the previous reset: in a fresh process,
    /// its startup).
    pub startup_peak_rss_mb: f64,
}

impl Figure {
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.wall.as_secs_f64()
    }
    pub fn cpu_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.records as f64
    }
}

/// Timestamps (wall, process CPU) of the first and the `n`-th record counted in `seen`,
/// taken by an OS thread that polls every millisecond: a busy async runtime (the consumer
/// under test runs on it) cannot delay them, as it could a task of its own. (Every 100 µs
/// cost the measured process a few percent of CPU in wake-ups: 1 ms is 0.1% of a 1 s run.)
pub struct Watch {
    thread: std::thread::JoinHandle<Option<Figure>>,
}

impl Watch {
    /// Watches `seen` until it reaches `n` or `budget` has passed since the first record.
    pub fn start(seen: Arc<AtomicU64>, n: u64, budget: Duration) -> Self {
        Self::start_when(seen, n, budget, Box::new(|| true))
    }

    /// Like [`start`](Self::start), measuring from the first record seen once `ready` holds.
    pub fn start_when(
        seen: Arc<AtomicU64>,
        n: u64,
        budget: Duration,
        ready: Box<dyn Fn() -> bool + Send>,
    ) -> Self {
        let created = Instant::now();
        let thread = std::thread::spawn(move || {
            let tick = Duration::from_millis(1);
            while seen.load(Ordering::Relaxed) == 0 || !ready() {
                if created.elapsed() > Duration::from_secs(300) {
                    return None;
                }
                std::thread::sleep(tick);
            }
            let (first, cpu0, seen0) = (Instant::now(), cpu_time(), seen.load(Ordering::Relaxed));
            let to_first_record = first - created;
            let startup_peak_rss_mb = peak_rss_mb();
            reset_peak_rss();
            if let Ok(marker) = std::env::var("BENCH_PROFILE_MARK") {
                // For `perf record -p`: the measured part starts now.
                let _ = std::fs::write(&marker, std::process::id().to_string());
            }
            while seen.load(Ordering::Relaxed) < n && first.elapsed() < budget {
                std::thread::sleep(tick);
            }
            Some(Figure {
                records: seen.load(Ordering::Relaxed).min(n) - seen0,
                wall: first.elapsed(),
                cpu: cpu_time() - cpu0,
                peak_rss_mb: peak_rss_mb(),
                to_first_record,
                startup_peak_rss_mb,
            })
        });
        Self { thread }
    }

    /// The figure, once the watched count reached `n`.
    pub async fn figure(self) -> Figure {
        tokio::task::spawn_blocking(move || self.thread.join().expect("watch thread"))
            .await
            .expect("join")
            .expect("no record within 300 s")
    }
}

/// A raw rdkafka `BaseConsumer` in a fresh group reading `n` records of `topic`.
pub fn raw_consumer(bootstrap: &str, topic: &str, n: u64) -> Figure {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let created = Instant::now();
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!(
                "raw-{topic}-{}-{}",
                std::process::id(),
                RUN.fetch_add(1, Ordering::Relaxed)
            ),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // The value kafka-stateful sets on its consumers, so both fetch alike.
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    // Wait for the first record before timing: group join is not throughput.
    while c
        .poll(Duration::from_millis(100))
        .is_none_or(|m| m.is_err())
    {}
    let to_first_record = created.elapsed();
    let startup_peak_rss_mb = peak_rss_mb();
    reset_peak_rss();
    let mut seen = 1;
    let (start, cpu0) = (Instant::now(), cpu_time());
    while seen < n {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            seen += 1;
        }
    }
    Figure {
        records: n - 1,
        wall: start.elapsed(),
        cpu: cpu_time() - cpu0,
        peak_rss_mb: peak_rss_mb(),
        to_first_record,
        startup_peak_rss_mb,
    }
}

/// [`raw_consumer`] off the async runtime.
pub async fn raw(bootstrap: &str, topic: &str, n: u64) -> Figure {
    let (b, t) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || raw_consumer(&b, &t, n))
        .await
        .unwrap()
}

/// Runs per figure: `BENCH_RUNS` (default 3).
pub fn runs() -> usize {
    std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1)
}

fn median_and_range(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    (median, values[0], values[n - 1])
}

/// Runs of one figure, each paired with the raw consumer's run just before it.
#[derive(Default)]
pub struct Samples {
    pairs: Vec<(Figure, Figure)>,
}

impl Samples {
    pub fn push(&mut self, raw: Figure, measured: Figure) {
        self.pairs.push((raw, measured));
    }

    /// One JSON line: medians and `[min, max]` of the rate, the CPU per record and their
    /// ratios to the paired raw runs, the highest peak RSS, and the median time to the first
    /// record (also relative to the raw consumer's).
    pub fn print(&self, name: &str, extra: &str) {
        let of = |f: &dyn Fn(&(Figure, Figure)) -> f64| {
            median_and_range(self.pairs.iter().map(f).collect())
        };
        let rate = of(&|(_, m)| m.rate());
        let cpu = of(&|(_, m)| m.cpu_us());
        let rate_ratio = of(&|(r, m)| m.rate() / r.rate());
        let cpu_ratio = of(&|(r, m)| m.cpu_us() / r.cpu_us());
        let raw_rate = of(&|(r, _)| r.rate());
        let raw_cpu = of(&|(r, _)| r.cpu_us());
        let first = of(&|(_, m)| m.to_first_record.as_secs_f64() * 1e3);
        let first_vs_raw =
            of(&|(r, m)| (m.to_first_record.as_secs_f64() - r.to_first_record.as_secs_f64()) * 1e3);
        let rss = self
            .pairs
            .iter()
            .map(|(_, m)| m.peak_rss_mb)
            .fold(0.0, f64::max);
        let records = self.pairs.first().map_or(0, |(_, m)| m.records);
        println!(
            "{{\"bench\":\"{name}\",\"runs\":{},\"records\":{records},\
\"records_per_s\":{:.0},\"records_per_s_range\":[{:.0},{:.0}],\
\"cpu_us_per_record\":{:.3},\"cpu_us_range\":[{:.3},{:.3}],\
\"rate_ratio_to_raw\":{:.3},\"rate_ratio_range\":[{:.3},{:.3}],\
\"cpu_ratio_to_raw\":{:.3},\"cpu_ratio_range\":[{:.3},{:.3}],\
\"raw_records_per_s\":{:.0},\"raw_cpu_us_per_record\":{:.3},\
\"first_record_ms\":{:.0},\"first_record_ms_after_raw\":{:.0},\
\"peak_rss_mb\":{rss:.0}{extra}}}",
            self.pairs.len(),
            rate.0,
            rate.1,
            rate.2,
            cpu.0,
            cpu.1,
            cpu.2,
            rate_ratio.0,
            rate_ratio.1,
            rate_ratio.2,
            cpu_ratio.0,
            cpu_ratio.1,
            cpu_ratio.2,
            raw_rate.0,
            raw_cpu.0,
            first.0,
            first_vs_raw.0,
        );
    }
}

/// Median and range of plain values, as a JSON fragment `"name":m,"name_range":[lo,hi]`.
pub fn spread(name: &str, values: Vec<f64>) -> String {
    let (m, lo, hi) = median_and_range(values);
    format!(",\"{name}\":{m:.0},\"{name}_range\":[{lo:.0},{hi:.0}]")
}

/// Two figures and a size on one line, for a child process to hand to its parent.
pub fn format_pair(raw: &Figure, measured: &Figure, mb: f64) -> String {
    let f = |x: &Figure| {
        format!(
            "{} {} {} {} {}",
            x.records,
            x.wall.as_nanos(),
            x.cpu.as_nanos(),
            x.peak_rss_mb,
            x.to_first_record.as_nanos()
        )
    };
    format!("pair {} {} {mb}", f(raw), f(measured))
}

/// The inverse of [`format_pair`].
pub fn parse_pair(line: &str) -> Option<(Figure, Figure, f64)> {
    let fields: Vec<&str> = line.lines().last()?.split_whitespace().collect();
    if fields.first() != Some(&"pair") || fields.len() != 12 {
        return None;
    }
    let figure = |at: usize| -> Option<Figure> {
        let nanos = |i: usize| fields[at + i].parse::<u64>().ok().map(Duration::from_nanos);
        Some(Figure {
            records: fields[at].parse().ok()?,
            wall: nanos(1)?,
            cpu: nanos(2)?,
            peak_rss_mb: fields[at + 3].parse().ok()?,
            to_first_record: nanos(4)?,
            startup_peak_rss_mb: 0.0,
        })
    };
    Some((figure(1)?, figure(6)?, fields[11].parse().ok()?))
}
