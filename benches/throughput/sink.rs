//! A batch sink (`BENCH_ONLY=sink`): a handler that costs 5 ms per call plus 5 µs per row
//! (an awaited database round trip), over 4 partitions, in batch mode
//! (`ConsumerConfigBuilder::batches`, 500 records / 100 ms) and one record per call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use kafka_stateful::codec::{RawBytes, Utf8};
use kafka_stateful::{
    BatchSettings, ConsumerConfig, Handler, HandlerError, PartitionContext, Record,
    StatefulConsumer,
};

use super::measure::{runs, spread};
use super::topics::{env_u64, fill};

const PER_CALL: Duration = Duration::from_millis(5);
const PER_ROW: Duration = Duration::from_micros(5);

#[derive(Clone, Default)]
struct Sink {
    seen: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
    first: Arc<OnceLock<Instant>>,
    last: Arc<OnceLock<Instant>>,
    stop_at: u64,
}

impl Handler<String, Vec<u8>> for Sink {
    async fn handle(
        &self,
        record: Record<String, Vec<u8>>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        self.handle_batch(vec![record], ctx).await
    }

    async fn handle_batch(
        &self,
        records: Vec<Record<String, Vec<u8>>>,
        _ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let _ = self.first.set(Instant::now());
        tokio::time::sleep(PER_CALL + PER_ROW * records.len() as u32).await;
        self.calls.fetch_add(1, Ordering::Relaxed);
        let seen = self.seen.fetch_add(records.len() as u64, Ordering::Relaxed);
        if seen + records.len() as u64 >= self.stop_at {
            let _ = self.last.set(Instant::now());
        }
        Ok(())
    }
}

/// Records/s and records per call of one run over `n` records of `topic`.
async fn run(
    bootstrap: &str,
    topic: &str,
    group: &str,
    batches: Option<BatchSettings>,
    n: u64,
) -> (f64, f64) {
    let mut builder = ConsumerConfig::builder(bootstrap, group, [topic]).instance_id("bench-sink");
    if let Some(settings) = batches {
        builder = builder.batches(settings);
    }
    let sink = Sink {
        stop_at: n,
        ..Sink::default()
    };
    let consumer = StatefulConsumer::new(builder.build().unwrap(), Utf8, RawBytes, sink.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(consumer.run(async move {
        let _ = rx.await;
    }));
    while sink.last.get().is_none() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (first, last) = (
        *sink.first.get().expect("set"),
        *sink.last.get().expect("set"),
    );
    let _ = tx.send(());
    join.await.unwrap().unwrap();
    let records = sink.seen.load(Ordering::Relaxed) as f64;
    let calls = sink.calls.load(Ordering::Relaxed) as f64;
    (records / (last - first).as_secs_f64(), records / calls)
}

pub async fn sink(bootstrap: &str, id: u32) {
    let n = env_u64("BENCH_SINK_RECORDS", 400_000);
    let single = env_u64("BENCH_SINK_SINGLE_RECORDS", 2_000);
    let settings = BatchSettings::default();
    let (batched_topic, single_topic) = (
        format!("bench-sink-{id}"),
        format!("bench-sink-single-{id}"),
    );
    fill(bootstrap, &batched_topic, 4, n, 1_000, 100).await;
    fill(bootstrap, &single_topic, 4, single, 1_000, 100).await;
    let (mut batched, mut per_call, mut one) = (Vec::new(), Vec::new(), Vec::new());
    for run_no in 0..runs() {
        let (rate, rows) = run(
            bootstrap,
            &batched_topic,
            &format!("bench-sink-{id}-{run_no}"),
            Some(settings),
            n,
        )
        .await;
        batched.push(rate);
        per_call.push(rows);
        let (rate, _) = run(
            bootstrap,
            &single_topic,
            &format!("bench-sink-single-{id}-{run_no}"),
            None,
            single,
        )
        .await;
        one.push(rate);
    }
    println!(
        "{{\"bench\":\"kafka_stateful_batch_sink\",\"runs\":{},\"partitions\":4,\"sink_cost\":\"5 ms per call + 5 us per row\",\"batch_max_records\":{},\"batch_max_wait_ms\":{},\"records\":{n}{}{}{}}}",
        batched.len(),
        settings.max_records,
        settings.max_wait.as_millis(),
        spread("records_per_s", batched),
        spread("records_per_call", per_call),
        spread("one_record_per_call_records_per_s", one),
    );
}
