//! The count-per-key job (no store, one store, two stores, or one store and a table join)
//! and how a stateful run is measured.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kafka_stateful::codec::{Bincode, RawBytes, Utf8};
use kafka_stateful::table::TableDef;
use kafka_stateful::{
    ConsumerConfig, Handler, HandlerError, Output, PartitionContext, ProcessingGuarantee, Record,
    StatefulConsumer, StoreDef,
};

use super::measure::{Figure, Watch};

/// Counts records; with stores, counts per key (and sums value sizes per key); with a
/// table, reads the key's row (a stream-table join) before counting.
#[derive(Clone)]
pub struct Count {
    pub seen: Arc<AtomicU64>,
    pub count: Option<StoreDef<String, u64>>,
    pub sum: Option<StoreDef<String, u64>>,
    pub join: Option<TableDef<String, Vec<u8>>>,
    /// Joins as of the record's time (a versioned table) instead of the latest value.
    pub as_of: bool,
    /// Sends each record's key and value here (one output record per input).
    pub echo: Option<Output<String, Vec<u8>>>,
}

impl Handler<String, Vec<u8>> for Count {
    async fn handle(
        &self,
        r: Record<String, Vec<u8>>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        if let Some(key) = &r.key {
            if let Some(table) = &self.join {
                let table = ctx.table(table)?;
                match self.as_of {
                    true => std::hint::black_box(table.at_record_time(key)?),
                    false => std::hint::black_box(table.get(key)?),
                };
            }
            if let Some(store) = &self.count {
                let mut s = ctx.store(store)?;
                let n = s.get(key)?.unwrap_or(0) + 1;
                s.put(key, &n)?;
            }
            if let Some(store) = &self.sum {
                let size = r.value.as_ref().map_or(0, Vec::len) as u64;
                let mut s = ctx.store(store)?;
                let n = s.get(key)?.unwrap_or(0) + size;
                s.put(key, &n)?;
            }
        }
        if let Some(echo) = &self.echo {
            ctx.send(echo, r.key.as_ref(), r.value.as_ref())?;
        }
        self.seen.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// What a stateful run is asked to do.
pub struct Job<'a> {
    pub bootstrap: &'a str,
    pub topic: &'a str,
    pub group: String,
    pub state_dir: &'a Path,
    pub stores: usize,
    /// The co-partitioned table topic to join with.
    pub table: Option<&'a str>,
    /// Join as of each record's time (a versioned table).
    pub as_of: bool,
    /// The topic each record is sent to (one output record per input).
    pub output: Option<&'a str>,
    pub guarantee: ProcessingGuarantee,
    /// Measure from when this many partitions are ready (restored, their tables
    /// bootstrapped) instead of from the first record: a partition handles records while
    /// others still bootstrap, and that bootstrap is not the per-record cost.
    pub measure_when_ready: Option<usize>,
}

pub struct Run {
    pub figure: Figure,
    /// Taken before shutdown (which releases the partitions).
    pub last: kafka_stateful::StatsSnapshot,
}

/// Runs `job` until `n` records were handled. Default settings, as a new user has them.
pub async fn stateful(job: &Job<'_>, n: u64) -> Run {
    let count = (job.stores >= 1).then(|| StoreDef::new("counts", Utf8, Bincode::<u64>::new()));
    let sum = (job.stores >= 2).then(|| StoreDef::new("sums", Utf8, Bincode::<u64>::new()));
    let join = job
        .table
        .map(|topic| TableDef::new("customers", topic, Utf8, RawBytes))
        .map(|def| match job.as_of {
            true => def.versioned(std::time::Duration::from_secs(30 * 86_400)),
            false => def,
        });
    let mut builder = ConsumerConfig::builder(job.bootstrap, &job.group, [job.topic])
        .instance_id("bench-0")
        .state_dir(job.state_dir)
        .processing_guarantee(job.guarantee);
    if let Ok(mb) = std::env::var("BENCH_MEMORY_BUDGET_MB") {
        builder = builder.memory_budget(mb.parse::<usize>().expect("a number of MiB") << 20);
    }
    for store in count.iter().chain(&sum) {
        builder = builder.store(store);
    }
    if let Some(table) = &join {
        builder = builder.table(table);
    }
    let handler = Count {
        seen: Arc::default(),
        count,
        sum,
        join,
        as_of: job.as_of,
        echo: job.output.map(|topic| Output::new(topic, Utf8, RawBytes)),
    };
    let consumer = StatefulConsumer::new(builder.build().unwrap(), Utf8, RawBytes, handler.clone());
    run_when_ready(consumer, &handler.seen, n, job.measure_when_ready).await
}

/// Runs `consumer` until `seen` reaches `n`, measured from its first record by a [`Watch`].
pub async fn run<KC, VC, H>(
    consumer: StatefulConsumer<KC, VC, H>,
    seen: &Arc<AtomicU64>,
    n: u64,
) -> Run
where
    KC: kafka_stateful::codec::Codec,
    VC: kafka_stateful::codec::Codec,
    H: Handler<KC::Item, VC::Item>,
{
    run_when_ready(consumer, seen, n, None).await
}

/// [`run`], measured from when `partitions` partitions are ready (if set).
pub async fn run_when_ready<KC, VC, H>(
    consumer: StatefulConsumer<KC, VC, H>,
    seen: &Arc<AtomicU64>,
    n: u64,
    partitions: Option<usize>,
) -> Run
where
    KC: kafka_stateful::codec::Codec,
    VC: kafka_stateful::codec::Codec,
    H: Handler<KC::Item, VC::Item>,
{
    let stats = consumer.stats();
    let budget = Duration::from_secs(600);
    let watch = match partitions {
        None => Watch::start(seen.clone(), n, budget),
        Some(expected) => {
            let stats = stats.clone();
            let ready = move || {
                let parts = stats.snapshot().partitions;
                parts.len() >= expected && parts.values().all(|p| p.ready)
            };
            Watch::start_when(seen.clone(), n, budget, Box::new(ready))
        }
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(consumer.run(async move {
        let _ = rx.await;
    }));
    let figure = watch.figure().await;
    let last = stats.snapshot();
    let _ = tx.send(());
    running.await.unwrap().unwrap();
    Run { figure, last }
}
