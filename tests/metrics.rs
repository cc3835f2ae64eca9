//! Metrics through the `metrics` facade, read back from a recorder: the values, not just
//! that something was recorded. One test per binary: the recorder is process-wide.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{require_broker, Counter, Running};
use kafka_stateful::codec::Utf8;
use kafka_stateful::{ConsumerConfig, StatefulConsumer};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;

/// Reads the recorder. Its snapshots reset what they read, and the consumer republishes
/// counters and gauges every stats interval: so each check takes one snapshot and keeps
/// the latest counter and gauge values and the histogram sample counts so far.
struct Reader {
    snapshotter: Snapshotter,
    topic: String,
    values: HashMap<(String, String), f64>,
    samples: HashMap<String, usize>,
    /// Consumer-wide counters (summed: a snapshot takes what accumulated since the last)
    /// and histograms (sample counts), by name and `kind` label.
    global: HashMap<String, f64>,
}

impl Reader {
    fn refresh(&mut self) {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let labels: Vec<_> = key.key().labels().collect();
            if !labels.iter().any(|l| l.key() == "topic") {
                let name = match labels.iter().find(|l| l.key() == "kind") {
                    Some(kind) => format!("{}{{kind={}}}", key.key().name(), kind.value()),
                    None => key.key().name().to_string(),
                };
                let value = match value {
                    DebugValue::Counter(c) => c as f64,
                    DebugValue::Histogram(h) => h.len() as f64,
                    DebugValue::Gauge(_) => 0.0,
                };
                *self.global.entry(name).or_default() += value;
                continue;
            }
            if !labels
                .iter()
                .any(|l| l.key() == "topic" && l.value() == self.topic)
            {
                continue;
            }
            let partition = labels
                .iter()
                .find(|l| l.key() == "partition")
                .map(|l| l.value().to_string())
                .unwrap_or_default();
            let name = key.key().name().to_string();
            match (key.kind(), value) {
                (MetricKind::Counter, DebugValue::Counter(c)) if c > 0 => {
                    self.values.insert((name, partition), c as f64);
                }
                (MetricKind::Gauge, DebugValue::Gauge(g)) => {
                    self.values.insert((name, partition), g.into_inner());
                }
                (MetricKind::Histogram, DebugValue::Histogram(h)) => {
                    *self.samples.entry(name).or_default() += h.len();
                }
                _ => {}
            }
        }
    }

    /// Sum over partitions of the latest value of a counter or gauge.
    fn total(&self, name: &str) -> Option<f64> {
        let values: Vec<f64> = self
            .values
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, v)| *v)
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    fn samples(&self, name: &str) -> usize {
        self.samples.get(name).copied().unwrap_or(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_report_handled_records_lag_flushes_and_handler_time_per_partition() {
    require_broker!();
    common::init_tracing();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let (topic, group, dir) = (
        common::unique("metrics"),
        common::unique("g"),
        tempfile::tempdir().unwrap(),
    );
    common::create_topic(&topic, 2).await;
    common::produce(&topic, &common::records(2, 10, 400)).await;
    let counter = Counter::default();
    let config = ConsumerConfig::builder(common::bootstrap(), &group, [&topic])
        .instance_id("metrics-0")
        .commit_interval(Duration::from_millis(200))
        .flush_interval(Duration::from_millis(200))
        .stats_interval(Duration::from_millis(200))
        .state_dir(dir.path())
        .store(&counter.store)
        .build()
        .unwrap();
    let running = Running::start(StatefulConsumer::new(config, Utf8, Utf8, counter.clone()));
    let mut metrics = Reader {
        snapshotter,
        topic: topic.clone(),
        values: HashMap::new(),
        samples: HashMap::new(),
        global: HashMap::new(),
    };
    common::wait_until(
        "400 handled, all committed, lag 0",
        Duration::from_secs(60),
        || {
            metrics.refresh();
            metrics.total("kafka_stateful_records_handled_total") == Some(400.0)
                && metrics.total("kafka_stateful_committed_offset") == Some(400.0)
                && metrics.total("kafka_stateful_consumer_lag_records") == Some(0.0)
                && metrics.total("kafka_stateful_processing_lag_records") == Some(0.0)
        },
    )
    .await;
    assert!(
        metrics.samples("kafka_stateful_flush_duration_seconds") >= 2,
        "a flush per partition at least"
    );
    assert!(metrics.samples("kafka_stateful_flush_records") >= 2);
    // One record in 32 is timed: 400 records over 2 partitions give at least 12 samples.
    assert!(metrics.samples("kafka_stateful_handler_duration_seconds") >= 12);
    assert_eq!(
        metrics.total("kafka_stateful_commit_failures_total"),
        None,
        "no failures"
    );
    assert_eq!(metrics.total("kafka_stateful_queued_records"), Some(0.0));
    let snapshot = running.stats.snapshot();
    assert!(snapshot.partitions.values().all(|p| p.handled == 200));
    assert!(snapshot
        .partitions
        .values()
        .all(|p| p.last_flush_records > 0 && p.last_flush_duration > Duration::ZERO));
    running.stop().await.unwrap();
    // Consumer-wide figures (no topic label): rebalances by kind, commit latency.
    metrics.refresh();
    let global = &metrics.global;
    assert!(
        global["kafka_stateful_rebalances_total{kind=assigned}"] >= 1.0,
        "{global:?}"
    );
    assert!(global["kafka_stateful_rebalance_partitions_total{kind=assigned}"] >= 2.0);
    assert!(global["kafka_stateful_rebalance_partitions_total{kind=revoked}"] >= 2.0);
    assert!(
        global["kafka_stateful_commit_duration_seconds"] >= 1.0,
        "commits timed"
    );
}
