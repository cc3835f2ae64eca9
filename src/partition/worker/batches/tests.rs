//! Batch mode through the test driver: runs cut by size in offset order, a poison record
//! found by bisection under each error policy (its neighbours handled exactly once), and
//! offsets stored with the sink's data.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::codec::{Bincode, Utf8};
use crate::testing::{TestDriver, TestRecord};
use crate::{
    BatchSettings, ConsumerConfig, ErrorPolicy, Handler, HandlerError, PartitionContext, Record,
    RetryPolicy, StoreDef,
};

/// Counts records per key in a store, one batch at a time; a batch holding the value
/// `poison` fails (after its good records were written: those writes must be dropped).
#[derive(Clone, Default)]
struct Sink {
    calls: Arc<Mutex<Vec<Vec<i64>>>>,
    stored: Option<i64>,
}

fn counts() -> StoreDef<String, u64> {
    StoreDef::new("counts", Utf8, Bincode::new())
}

impl Handler<String, String> for Sink {
    async fn handle(
        &self,
        record: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        self.handle_batch(vec![record], ctx).await
    }

    async fn handle_batch(
        &self,
        records: Vec<Record<String, String>>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        self.calls
            .lock()
            .unwrap()
            .push(records.iter().map(|r| r.offset).collect());
        let def = counts();
        let mut store = ctx.store(&def)?;
        for r in &records {
            let key = r.key.clone().ok_or("no key")?;
            let n = store.get(&key)?.unwrap_or(0) + 1;
            store.put(&key, &n)?;
        }
        if records.iter().any(|r| r.value.as_deref() == Some("poison")) {
            return Err("a poison record".into());
        }
        Ok(())
    }

    async fn stored_offset(&self, _: &str, _: i32) -> Result<Option<i64>, HandlerError> {
        Ok(self.stored)
    }
}

async fn driver(
    sink: Sink,
    policy: ErrorPolicy,
    max_records: usize,
) -> TestDriver<Utf8, Utf8, Sink> {
    let config = ConsumerConfig::builder("unused:9092", "g", ["pages"])
        .instance_id("i")
        .state_dir("/nonexistent")
        .store(&counts())
        .error_policy(policy)
        .retry(RetryPolicy {
            max_retries: 1,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
        })
        .batches(BatchSettings {
            max_records,
            max_wait: Duration::from_millis(20),
        })
        .build()
        .unwrap();
    TestDriver::new(config, Utf8, Utf8, sink).await.unwrap()
}

fn records(values: &[&str]) -> Vec<TestRecord<String, String>> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| TestRecord::new(format!("k{}", i % 3), v.to_string()))
        .collect()
}

async fn count_total(d: &mut TestDriver<Utf8, Utf8, Sink>) -> u64 {
    d.read(&counts())
        .await
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn records_arrive_in_runs_of_at_most_max_records_in_offset_order() {
    let sink = Sink::default();
    let mut d = driver(sink.clone(), ErrorPolicy::Fail, 4).await;
    d.send_all(records(&["a"; 10])).await.unwrap();
    let calls = sink.calls.lock().unwrap().clone();
    assert_eq!(calls, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
    assert_eq!(count_total(&mut d).await, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_record_is_found_by_splitting_and_skipped_alone() {
    let sink = Sink::default();
    let mut d = driver(sink.clone(), ErrorPolicy::Skip, 8).await;
    let mut values = vec!["ok"; 8];
    values[5] = "poison";
    d.send_all(records(&values)).await.unwrap();
    assert_eq!(d.skipped(), 1);
    // Every good record counted once: the failed attempts' writes were dropped.
    assert_eq!(count_total(&mut d).await, 7);
    let calls = sink.calls.lock().unwrap().clone();
    // Two attempts of the whole run, then halves, down to the poison record alone (tried
    // with retries) — never a good record lost or handed over with it once split off.
    assert_eq!(calls[0], (0..8).collect::<Vec<_>>());
    assert_eq!(calls[1], (0..8).collect::<Vec<_>>());
    assert!(calls.contains(&vec![0, 1, 2, 3]));
    assert_eq!(calls.iter().filter(|c| c.as_slice() == [5]).count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_record_is_dead_lettered_alone_and_its_neighbours_are_handled() {
    let mut d = driver(Sink::default(), ErrorPolicy::DeadLetter("dlq".into()), 8).await;
    let mut values = vec!["ok"; 6];
    values[2] = "poison";
    d.send_all(records(&values)).await.unwrap();
    let dead = d.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value.as_deref(), Some(&b"poison"[..]));
    assert_eq!(count_total(&mut d).await, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_record_under_fail_stops_with_its_offset_and_keeps_what_came_before() {
    let mut d = driver(Sink::default(), ErrorPolicy::Fail, 8).await;
    let mut values = vec!["ok"; 6];
    values[3] = "poison";
    let error = d.send_all(records(&values)).await.unwrap_err().to_string();
    assert!(error.contains("pages/0@3"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn records_before_the_offset_stored_with_the_data_are_not_handed_over() {
    let sink = Sink {
        stored: Some(3),
        ..Sink::default()
    };
    let mut d = driver(sink.clone(), ErrorPolicy::Fail, 8).await;
    d.send_all(records(&["a"; 5])).await.unwrap();
    assert_eq!(sink.calls.lock().unwrap().clone(), vec![vec![3, 4]]);
    assert_eq!(count_total(&mut d).await, 2);
}

#[test]
fn batch_mode_is_refused_with_key_concurrency() {
    let error = ConsumerConfig::builder("unused:9092", "g", ["pages"])
        .instance_id("i")
        .key_concurrency(4)
        .batches(BatchSettings::default())
        .build()
        .unwrap_err()
        .to_string();
    assert!(error.contains("batches"), "{error}");
}

#[test]
fn batch_mode_is_refused_with_windows_of_every_kind() {
    let window: crate::window::WindowDef<String, u64> = crate::window::WindowDef::tumbling(
        "per-minute",
        Duration::from_secs(60),
        Duration::ZERO,
        Utf8,
        Bincode::new(),
    );
    let error = ConsumerConfig::builder("unused:9092", "g", ["pages"])
        .instance_id("i")
        .state_dir("/nonexistent")
        .window(&window)
        .batches(BatchSettings::default())
        .build()
        .unwrap_err()
        .to_string();
    assert!(error.contains("window"), "{error}");
    let minute = Duration::from_secs(60);
    let sessions: crate::window::SessionDef<String, u64> =
        crate::window::SessionDef::new("sessions", minute, minute, Utf8, Bincode::new());
    let sliding: crate::window::SlidingDef<String, u64> =
        crate::window::SlidingDef::new("sliding", minute, minute, Utf8, Bincode::new());
    let builder = || {
        ConsumerConfig::builder("unused:9092", "g", ["pages"])
            .instance_id("i")
            .state_dir("/nonexistent")
    };
    for builder in [
        builder().session_window(&sessions),
        builder().sliding_window(&sliding),
    ] {
        let error = builder
            .batches(BatchSettings::default())
            .build()
            .unwrap_err()
            .to_string();
        assert!(error.contains("window"), "{error}");
    }
}
