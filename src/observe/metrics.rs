//! Metrics through the [`metrics`](https://docs.rs/metrics) facade: install any recorder
//! (Prometheus, StatsD, OpenTelemetry…) in the application, or enable this crate's
//! `prometheus` feature for a ready scrape endpoint. Without a recorder they cost nothing.
//!
//! Every metric is labelled with `topic` and `partition`. Gauges and counters are published
//! from the same figures as [`Stats`](crate::Stats), once per `stats_interval`, by the poll
//! loop; histograms are recorded where they happen.
//!
//! | name | kind | what |
//! |---|---|---|
//! | `kafka_stateful_records_handled_total` | counter | records the handler processed successfully |
//! | `kafka_stateful_records_skipped_total` | counter | records skipped (bad input under `Skip`, or already in restored state) |
//! | `kafka_stateful_records_dead_lettered_total` | counter | records sent to the dead-letter topic |
//! | `kafka_stateful_records_late_total` | counter | records late for every window they fall in (never applied) |
//! | `kafka_stateful_commit_failures_total` | counter | offset commits that failed (each is retried) |
//! | `kafka_stateful_restored_records_total` | counter | changelog records replayed by restores |
//! | `kafka_stateful_consumer_lag_records` | gauge | high watermark − committed offset |
//! | `kafka_stateful_processing_lag_records` | gauge | high watermark − next offset to process |
//! | `kafka_stateful_committed_offset` | gauge | offset the broker confirmed for the group |
//! | `kafka_stateful_queued_records` / `kafka_stateful_queued_bytes` | gauge | what waits in the partition's queue |
//! | `kafka_stateful_records_per_second` | gauge | handling rate over the last stats interval |
//! | `kafka_stateful_restore_remaining_records` | gauge | changelog records left to restore |
//! | `kafka_stateful_standby_lag_records` | gauge | a standby replica's changelog records behind the ends (what a promotion would read); 0 once it is no longer kept |
//! | `kafka_stateful_standby_promotions_total` | counter | standby replicas whose partition was assigned here |
//! | `kafka_stateful_flush_duration_seconds` | histogram | flush: changelog produce, acknowledgements, RocksDB write |
//! | `kafka_stateful_flush_records` | histogram | changelog data records per flush |
//! | `kafka_stateful_handler_duration_seconds` | histogram | handler time per record (one record in 32 is timed) |
//! | `kafka_stateful_transactions_total` | counter | exactly-once transactions, by `outcome` (`committed`, `aborted`); no partition labels |

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram, Histogram};

use crate::offset::PartitionProgress;
use crate::offset::TopicPartition;

/// Serves every metric recorded through the `metrics` facade (this crate's and the
/// application's) for Prometheus at `http://<addr>/metrics`, by installing
/// `metrics-exporter-prometheus` as the process's recorder. Call it once, inside a tokio
/// runtime, before the consumer runs.
///
/// # Errors
/// When another recorder is installed already, or the address cannot be bound.
#[cfg(feature = "prometheus")]
pub fn serve_prometheus(
    addr: std::net::SocketAddr,
) -> Result<(), metrics_exporter_prometheus::BuildError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
}

/// One record in this many is timed for the handler histogram.
pub(crate) const HANDLER_SAMPLE: u64 = 32;

fn labels(topic: &str, partition: i32) -> [(&'static str, String); 2] {
    [
        ("topic", topic.to_string()),
        ("partition", partition.to_string()),
    ]
}

/// The handler-duration histogram of one partition.
pub(crate) fn handler_histogram(topic: &str, partition: i32) -> Histogram {
    histogram!(
        "kafka_stateful_handler_duration_seconds",
        &labels(topic, partition)
    )
}

/// Records a finished flush.
pub(crate) fn flush_finished(topic: &str, partition: i32, elapsed: Duration, records: usize) {
    let labels = labels(topic, partition);
    histogram!("kafka_stateful_flush_duration_seconds", &labels).record(elapsed.as_secs_f64());
    histogram!("kafka_stateful_flush_records", &labels).record(records as f64);
}

/// Publishes the per-partition figures, and computes handling rates.
#[derive(Debug, Default)]
pub(crate) struct Publisher {
    last: HashMap<TopicPartition, (u64, Instant)>,
}

impl Publisher {
    pub(crate) fn publish(&mut self, partitions: &[(TopicPartition, Arc<PartitionProgress>)]) {
        let now = Instant::now();
        self.last
            .retain(|tp, _| partitions.iter().any(|(p, _)| p == tp));
        for ((topic, partition), p) in partitions {
            let handled = p.handled.load(Ordering::Relaxed);
            let (before, at) = self
                .last
                .insert((topic.clone(), *partition), (handled, now))
                .unwrap_or((handled, now));
            let secs = now.duration_since(at).as_secs_f64();
            let rate = if secs > 0.0 {
                handled.saturating_sub(before) as f64 / secs
            } else {
                0.0
            };
            p.rate_bits.store(rate.to_bits(), Ordering::Relaxed);
            publish_partition(topic, *partition, p, rate);
        }
    }
}

fn publish_partition(topic: &str, partition: i32, p: &PartitionProgress, rate: f64) {
    let labels = labels(topic, partition);
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    counter!("kafka_stateful_records_handled_total", &labels).absolute(load(&p.handled));
    counter!("kafka_stateful_records_skipped_total", &labels).absolute(load(&p.skipped));
    counter!("kafka_stateful_records_dead_lettered_total", &labels)
        .absolute(load(&p.dead_lettered));
    counter!("kafka_stateful_records_late_total", &labels).absolute(load(&p.late));
    counter!("kafka_stateful_commit_failures_total", &labels).absolute(load(&p.commit_failures));
    counter!("kafka_stateful_restored_records_total", &labels).absolute(load(&p.restored_records));
    let high = p.high_watermark.load(Ordering::Relaxed);
    let committed = p.committed_next.load(Ordering::Relaxed);
    let processed = p.processed_next.load(Ordering::Relaxed).max(committed);
    if high >= 0 {
        gauge!("kafka_stateful_consumer_lag_records", &labels)
            .set((high - committed.max(0)).max(0) as f64);
        gauge!("kafka_stateful_processing_lag_records", &labels)
            .set((high - processed.max(0)).max(0) as f64);
    }
    gauge!("kafka_stateful_committed_offset", &labels).set(committed as f64);
    gauge!("kafka_stateful_queued_records", &labels).set(p.queue.waiting_records() as f64);
    gauge!("kafka_stateful_queued_bytes", &labels).set(p.queue.waiting_bytes() as f64);
    gauge!("kafka_stateful_records_per_second", &labels).set(rate);
    let remaining = load(&p.restore_total).saturating_sub(load(&p.restore_done));
    let restoring = !p.ready.load(Ordering::Relaxed);
    gauge!("kafka_stateful_restore_remaining_records", &labels).set(if restoring {
        remaining as f64
    } else {
        0.0
    });
}

/// A standby replica's lag after a pass (0 once it is dropped or promoted).
/// A rebalance event of `kind` (`assigned`, `revoked`, `lost`) moved `partitions`.
pub(crate) fn rebalance(kind: &'static str, partitions: usize) {
    counter!("kafka_stateful_rebalances_total", "kind" => kind).increment(1);
    counter!("kafka_stateful_rebalance_partitions_total", "kind" => kind)
        .increment(partitions as u64);
}

/// A handler call failed (every attempt counts, retried or not).
pub(crate) fn handler_error(topic: &str, partition: i32) {
    counter!(
        "kafka_stateful_handler_errors_total",
        &labels(topic, partition)
    )
    .increment(1);
}

/// A failed record is tried again.
pub(crate) fn handler_retry(topic: &str, partition: i32) {
    counter!(
        "kafka_stateful_handler_retries_total",
        &labels(topic, partition)
    )
    .increment(1);
}

/// From submitting offsets to the broker's answer.
pub(crate) fn commit_finished(elapsed: Duration) {
    histogram!("kafka_stateful_commit_duration_seconds").record(elapsed.as_secs_f64());
}

/// One more error librdkafka reported while fetching a partition.
pub(crate) fn fetch_error(topic: &str, partition: i32, code: &str) {
    let [topic, partition] = labels(topic, partition);
    counter!(
        "kafka_stateful_fetch_errors_total",
        &[topic, partition, ("code", code.to_string())]
    )
    .increment(1);
}

pub(crate) fn standby_lag(topic: &str, partition: i32, lag: u64) {
    gauge!(
        "kafka_stateful_standby_lag_records",
        &labels(topic, partition)
    )
    .set(lag as f64);
}

/// A standby replica was promoted.
pub(crate) fn standby_promoted(topic: &str, partition: i32) {
    counter!(
        "kafka_stateful_standby_promotions_total",
        &labels(topic, partition)
    )
    .increment(1);
}
