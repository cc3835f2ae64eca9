//! Tables: a co-partitioned table's bootstrap (cold: empty state directory; warm: intact),
//! and a stream-table join next to count per key alone over the same orders.

use super::count::{stateful, Job};
use super::measure::{raw, runs, spread, Samples};
use super::topics::{env_u64, fill, key_of, produce};
use super::Bench;

pub async fn tables(b: &Bench) {
    let customers = env_u64("BENCH_TABLE_KEYS", 200_000);
    let rows = env_u64("BENCH_TABLE_RECORDS", 500_000);
    // 100-byte rows fit the read cache's entries (126 bytes); larger rows are held behind
    // a pointer, one more memory access per lookup.
    let row_bytes = env_u64("BENCH_TABLE_ROW_BYTES", 100) as usize;
    let n = env_u64("BENCH_ORDER_RECORDS", 1_000_000);
    let (table, orders) = (b.topic("customers"), b.topic("orders"));
    // Both produced with the same (librdkafka's default) partitioner: co-partitioned.
    fill(&b.bootstrap, &table, 4, rows, customers, row_bytes).await;
    fill(&b.bootstrap, &orders, 4, n, customers, 100).await;
    let (mut count, mut join, mut as_of) =
        (Samples::default(), Samples::default(), Samples::default());
    let (mut ratio, mut as_of_ratio, mut cold_rates, mut cold_rows) =
        (Vec::new(), Vec::new(), Vec::new(), 0);
    let mut last = None;
    for _ in 0..runs() {
        let raw_run = raw(&b.bootstrap, &orders, n).await;
        let (group, dir) = b.fresh("count");
        let counted = stateful(&order_job(b, &orders, &table, group, &dir, Join::None), n)
            .await
            .figure;
        let (group, dir) = b.fresh("join");
        let run = stateful(
            &order_job(b, &orders, &table, group.clone(), &dir, Join::Latest),
            n,
        )
        .await;
        let parts = run.last.partitions.values();
        cold_rates.push(parts.clone().map(|p| p.table_bootstrap_rate).sum::<f64>());
        cold_rows = parts.map(|p| p.table_bootstrapped).sum::<u64>();
        ratio.push(run.figure.cpu_us() / counted.cpu_us() * 1000.0);
        count.push(raw_run, counted);
        join.push(raw_run, run.figure);
        let (as_of_group, as_of_dir) = b.fresh("asof");
        let versioned = stateful(
            &order_job(b, &orders, &table, as_of_group, &as_of_dir, Join::AsOf),
            n,
        )
        .await;
        as_of_ratio.push(versioned.figure.cpu_us() / counted.cpu_us() * 1000.0);
        as_of.push(raw_run, versioned.figure);
        last = Some((group, dir));
    }
    count.print("kafka_stateful_orders_count_per_key", "");
    join.print(
        "kafka_stateful_orders_join_and_count",
        &spread("join_cpu_per_mille_of_count", ratio),
    );
    as_of.print(
        "kafka_stateful_orders_as_of_join_and_count",
        &spread("join_cpu_per_mille_of_count", as_of_ratio),
    );
    // Partitions bootstrap in parallel: the rate is the sum of theirs.
    println!(
        "{{\"bench\":\"kafka_stateful_table_cold_bootstrap\",\"runs\":{},\"table_records\":{cold_rows},\"orders\":{n}{}}}",
        cold_rates.len(),
        spread("bootstrap_records_per_s", cold_rates)
    );
    // The last join's group again, on its intact directory, after new table rows and
    // orders: only the table's tail is read.
    let (group, dir) = last.expect("a run");
    let (mut tail, mut first) = (0, Vec::new());
    for _ in 0..runs() {
        produce(&b.bootstrap, &table, 1_000, |i| {
            (key_of(i, customers), vec![b'y'; 100])
        })
        .await;
        produce(&b.bootstrap, &orders, 1_000, |i| {
            (key_of(i, customers), vec![b'x'; 100])
        })
        .await;
        let run = stateful(
            &order_job(b, &orders, &table, group.clone(), &dir, Join::Latest),
            1_000,
        )
        .await;
        tail += run
            .last
            .partitions
            .values()
            .map(|p| p.table_bootstrapped)
            .sum::<u64>();
        first.push(run.figure.to_first_record.as_secs_f64() * 1e3);
    }
    println!(
        "{{\"bench\":\"kafka_stateful_table_warm_bootstrap\",\"runs\":{},\"table_records_read\":{tail},\"table_records_appended\":{}{}}}",
        first.len(),
        1_000 * first.len(),
        spread("start_to_first_record_ms", first)
    );
}

/// How an order job reads the table.
#[derive(Clone, Copy, PartialEq)]
enum Join {
    None,
    /// `get`: the latest value.
    Latest,
    /// `at_record_time` on a versioned table.
    AsOf,
}

/// Count per key over `orders`, joined with `table` as `join` says.
fn order_job<'a>(
    b: &'a Bench,
    orders: &'a str,
    table: &'a str,
    group: String,
    dir: &'a std::path::Path,
    join: Join,
) -> Job<'a> {
    let mut job = b.job(orders, group, dir, 1);
    job.table = (join != Join::None).then_some(table);
    job.as_of = join == Join::AsOf;
    // The join's cost per record, not its table's bootstrap (a figure of its own below),
    // which other partitions may still run while the first ones handle records.
    job.measure_when_ready = Some(4);
    job
}
