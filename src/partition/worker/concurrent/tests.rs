//! Key-level concurrency through the broker-free test driver: per-key order under random
//! latencies, exactly-once state across a crash with records finished out of order, retries
//! and failures per key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::codec::{Bincode, Utf8};
use crate::testing::{TestDriver, TestRecord};
use crate::{
    ConsumerConfig, ErrorPolicy, Handler, HandlerError, PartitionContext, Record, RetryPolicy,
    StoreDef,
};

/// Counts records per key; sleeps as the value says (`"<ms>"`, or `"fail:<n>"`: fails its
/// first `n` attempts, `"panic"`); logs `(key, offset)` in handling order and the most
/// records it ever had in flight.
#[derive(Clone, Default)]
struct Slow {
    log: Arc<Mutex<Vec<(String, i64)>>>,
    attempts: Arc<Mutex<HashMap<i64, u32>>>,
    in_flight: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

fn counts() -> StoreDef<String, u64> {
    StoreDef::new("counts", Utf8, Bincode::new())
}

impl Handler<String, String> for Slow {
    async fn handle(
        &self,
        r: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let key = r.key.clone().unwrap_or_default();
        let value = r.value.clone().unwrap_or_default();
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            let a = attempts.entry(r.offset).or_default();
            *a += 1;
            *a
        };
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let result = async {
            if value == "panic" {
                panic!("boom at {}", r.offset);
            }
            if let Some(n) = value.strip_prefix("fail:") {
                if attempt <= n.parse::<u32>()? {
                    return Err(format!("attempt {attempt} fails").into());
                }
            } else if let Ok(ms) = value.parse::<u64>() {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let def = counts();
            let mut counts = ctx.store(&def)?;
            let n = counts.get(&key)?.unwrap_or(0) + 1;
            counts.put(&key, &n)?;
            self.log.lock().unwrap().push((key.clone(), r.offset));
            Ok(())
        }
        .await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

async fn driver(limit: usize, policy: ErrorPolicy) -> (TestDriver<Utf8, Utf8, Slow>, Slow) {
    let config = ConsumerConfig::builder("unused:9092", "g", ["t"])
        .instance_id("i")
        .state_dir("/nonexistent")
        .store(&counts())
        .key_concurrency(limit)
        .flush_interval(Duration::from_millis(20))
        .error_policy(policy)
        .retry(RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(100),
        })
        .build()
        .unwrap();
    let handler = Slow::default();
    let driver = TestDriver::new(config, Utf8, Utf8, handler.clone())
        .await
        .unwrap();
    (driver, handler)
}

fn record(key: &str, value: &str) -> TestRecord<String, String> {
    TestRecord::new(key.to_string(), value.to_string())
}

/// splitmix64, for latencies from a seed.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[tokio::test(flavor = "multi_thread")]
async fn records_of_a_key_stay_in_order_under_random_latencies_while_keys_overlap() {
    for seed in 0..5u64 {
        let (mut d, h) = driver(8, ErrorPolicy::Fail).await;
        let keys: Vec<String> = (0..120u64)
            .map(|i| format!("k{}", mix(seed * 1000 + i) % 7))
            .collect();
        let records: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| record(k, &(mix(i as u64 ^ seed) % 15).to_string()))
            .collect();
        let mut expected: HashMap<String, u64> = HashMap::new();
        for k in &keys {
            *expected.entry(k.clone()).or_default() += 1;
        }
        d.send_all(records).await.unwrap();
        let log = h.log.lock().unwrap().clone();
        let mut last: HashMap<String, i64> = HashMap::new();
        for (key, offset) in &log {
            if let Some(prev) = last.insert(key.clone(), *offset) {
                assert!(
                    prev < *offset,
                    "seed {seed}: {key} handled {offset} after {prev}"
                );
            }
        }
        assert!(
            h.most.load(Ordering::SeqCst) > 1,
            "seed {seed}: records never overlapped"
        );
        assert!(
            h.most.load(Ordering::SeqCst) <= 8,
            "seed {seed}: more than the limit in flight"
        );
        let mut got: Vec<(String, u64)> = d.read(&counts()).await.unwrap();
        got.sort();
        let mut want: Vec<(String, u64)> = expected.into_iter().collect();
        want.sort();
        assert_eq!(got, want, "seed {seed}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_after_out_of_order_records_were_flushed_applies_none_of_them_twice() {
    let (mut d, h) = driver(8, ErrorPolicy::Fail).await;
    // Offset 0 (key "slow") runs long; the other keys finish and are flushed around it.
    let mut records = vec![record("slow", "3000")];
    records.extend((0..20).map(|i| record(&format!("k{}", i % 4), "0")));
    d.submit(records).unwrap();
    let log = h.log.clone();
    d.wait_for("the fast records handled", |_| {
        log.lock().unwrap().len() == 20
    })
    .await
    .unwrap();
    // A flush covering all of them lands (its marker in the changelog) while offset 0 is
    // still running. (A flush of only some of them would leave the rest to be applied
    // again, rightly, and fewer skipped.)
    let changelog = d.changelog().clone();
    d.wait_for("a flush of all the finished records", |p| {
        let flushed = changelog.last_flush(0, 0);
        p.durable_next <= 0 && flushed.is_some_and(|f| (1..=20).all(|o| f.covers(o)))
    })
    .await
    .unwrap();
    d.crash().await.unwrap(); // offsets 0..=20 are delivered again
    d.wait_for("everything handled again", |p| p.processed_next == 21)
        .await
        .unwrap();
    assert_eq!(
        d.skipped(),
        20,
        "the redelivered finished records are skipped"
    );
    let mut got = d.read(&counts()).await.unwrap();
    got.sort();
    let want: Vec<(String, u64)> = vec![
        ("k0".into(), 5),
        ("k1".into(), 5),
        ("k2".into(), 5),
        ("k3".into(), 5),
        ("slow".into(), 1),
    ];
    assert_eq!(
        got, want,
        "the finished records were recognised and not applied twice"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_hold_up_only_their_key_and_failures_name_the_key() {
    let (mut d, h) = driver(4, ErrorPolicy::Fail).await;
    let mut records = vec![record("flaky", "fail:2")];
    records.extend((0..6).map(|i| record(&format!("k{i}"), "0")));
    d.send_all(records).await.unwrap();
    let log = h.log.lock().unwrap().clone();
    assert_eq!(log.len(), 7);
    assert_eq!(
        log.last().unwrap().0,
        "flaky",
        "other keys finished during its backoff: {log:?}"
    );
    // A panic under Fail stops the partition with an error naming the record's key.
    let error = d
        .send_all(vec![record("hot", "panic"), record("x", "0")])
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("@7") && text.contains("(key \"hot\")"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_is_an_error_of_its_record_and_a_single_hot_key_runs_serially() {
    let (mut d, h) = driver(16, ErrorPolicy::Skip).await;
    let mut records: Vec<_> = (0..30).map(|_| record("hot", "2")).collect();
    records.insert(10, record("other", "panic"));
    d.send_all(records).await.unwrap();
    assert_eq!(
        h.most.load(Ordering::SeqCst),
        2,
        "one hot record and the panicking one at most"
    );
    assert_eq!(d.skipped(), 1);
    assert_eq!(
        d.read(&counts()).await.unwrap(),
        vec![("hot".to_string(), 30)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoke_waits_for_the_records_in_flight_and_a_lost_partition_keeps_none_of_them() {
    // Revoke (graceful stop): the records in flight finish, are flushed and committed.
    let (mut d, h) = driver(8, ErrorPolicy::Fail).await;
    let records: Vec<_> = (0..8).map(|i| record(&format!("k{i}"), "300")).collect();
    d.submit(records).unwrap();
    let in_flight = h.in_flight.clone();
    d.wait_for("records in flight", |_| {
        in_flight.load(Ordering::SeqCst) == 8
    })
    .await
    .unwrap();
    d.flush().await.unwrap(); // stops gracefully, then assigns again
    assert_eq!(
        h.log.lock().unwrap().len(),
        8,
        "none handled twice, none lost"
    );
    assert_eq!(d.read(&counts()).await.unwrap().len(), 8);

    // Lost: the records in flight are cancelled and nothing of theirs is kept; they are
    // delivered again to the next owner (here, the same worker assigned again).
    let (mut d, h) = driver(8, ErrorPolicy::Fail).await;
    let records: Vec<_> = (0..8).map(|i| record(&format!("k{i}"), "300")).collect();
    d.submit(records).unwrap();
    let in_flight = h.in_flight.clone();
    d.wait_for("records in flight", |_| {
        in_flight.load(Ordering::SeqCst) == 8
    })
    .await
    .unwrap();
    d.lose_partition().await.unwrap();
    d.wait_for("everything handled by the next owner", |p| {
        p.processed_next == 8
    })
    .await
    .unwrap();
    assert_eq!(
        h.log.lock().unwrap().len(),
        8,
        "the cancelled records count once, on the next owner"
    );
    let mut got = d.read(&counts()).await.unwrap();
    got.sort();
    assert_eq!(
        got,
        (0..8).map(|i| (format!("k{i}"), 1)).collect::<Vec<_>>()
    );
}
