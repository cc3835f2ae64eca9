//! Output of a record whose partition is revoked while its handler runs: never sent, never
//! committed past; the partition's next owner handles the record again and sends its output.
//! (`output.rs` covers a record whose handler fails.)
//!
//! Each of two partitions gets 15 records; the one at offset 10 is marked `block`. The
//! handler counts records per key in a store and sends `{instance, partition, offset, key,
//! count}` for every record; on a `block` record it sends first, then waits for its
//! consumer's gate to open. Consumer A (revoke timeout 1 s) owns both partitions, handles and
//! commits offsets 0-9 (produced first), then blocks on both marked records: nothing of
//! offset 10 is sent. Consumer B (empty state directory, its gate closed too) joins with cooperative
//! rebalancing and takes one partition P: A's handler of (P, 10) is cancelled at the revoke
//! timeout, B restores P from the changelog and blocks on (P, 10) in turn — still nothing
//! committed past it, nothing of it sent. Once B's gate opens, B's output of (P, 10) must be
//! in the output topic whenever the committed offset of P is past 10, and A's output of
//! (P, 10) must never appear. A's gate opens last, and A completes the partition it kept.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{require_broker, Running};
use kafka_stateful::codec::{Bincode, Json, Utf8};
use kafka_stateful::{
    ConsumerConfig, Handler, HandlerError, Output, PartitionContext, Record, StatefulConsumer,
    StoreDef,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(60);
const PER_PARTITION: i64 = 15;
const BLOCKING_OFFSET: i64 = 10;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Sent {
    instance: String,
    partition: i32,
    offset: i64,
    key: String,
    /// The key's count after this record.
    count: u64,
}

#[derive(Clone)]
struct GatedEmitter {
    instance: String,
    counts: StoreDef<String, u64>,
    output: Output<String, Sent>,
    gate: watch::Receiver<bool>,
    /// `(partition, offset)` of the `block` records this consumer is waiting in.
    waiting: Arc<Mutex<BTreeSet<(i32, i64)>>>,
}

impl Handler<String, String> for GatedEmitter {
    async fn handle(
        &self,
        r: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let key = r.key.ok_or("no key")?;
        let count = {
            let mut counts = ctx.store(&self.counts)?;
            let n = counts.get(&key)?.unwrap_or(0) + 1;
            counts.put(&key, &n)?;
            n
        };
        let sent = Sent {
            instance: self.instance.clone(),
            partition: r.partition,
            offset: r.offset,
            key: key.clone(),
            count,
        };
        ctx.send(&self.output, Some(&key), Some(&sent))?;
        if r.value.as_deref() == Some("block") {
            self.waiting.lock().unwrap().insert((r.partition, r.offset));
            let mut gate = self.gate.clone();
            gate.wait_for(|open| *open).await?;
        }
        Ok(())
    }
}

fn sent(out: &str) -> Vec<Sent> {
    common::read_all(out, 1)
        .into_iter()
        .map(|(_, v, _)| serde_json::from_slice(&v.unwrap()).unwrap())
        .collect()
}

fn of(sent: &[Sent], partition: i32, offset: i64) -> Vec<String> {
    sent.iter()
        .filter(|s| (s.partition, s.offset) == (partition, offset))
        .map(|s| s.instance.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_records_output_is_never_committed_past_and_its_next_owner_sends_it() {
    require_broker!();
    common::init_tracing();
    let (topic, out, group) = (
        common::unique("revoke-src"),
        common::unique("revoke-out"),
        common::unique("g"),
    );
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::create_topic(&topic, 2).await;
    common::create_topic(&out, 1).await;
    let record = |p: i32, i: i64| {
        let value = if i == BLOCKING_OFFSET {
            "block"
        } else {
            "plain"
        };
        (p, format!("key-{p}-{}", i % 3), value.to_string())
    };
    let (head, tail): (Vec<_>, Vec<_>) = (0..2)
        .flat_map(|p| (0..PER_PARTITION).map(move |i| (p, i)))
        .partition(|(_, i)| *i < BLOCKING_OFFSET);
    let head: Vec<_> = head.into_iter().map(|(p, i)| record(p, i)).collect();
    let tail: Vec<_> = tail.into_iter().map(|(p, i)| record(p, i)).collect();
    let consumer = |instance: &str, dir: &std::path::Path, gate| {
        let handler = GatedEmitter {
            instance: instance.to_string(),
            counts: StoreDef::new("counts", Utf8, Bincode::new()),
            output: Output::new(&out, Utf8, Json::new()),
            gate,
            waiting: Arc::default(),
        };
        let config = ConsumerConfig::builder(common::bootstrap(), &group, [&topic])
            .instance_id(instance)
            .session_timeout(Duration::from_secs(10))
            .revoke_timeout(Duration::from_secs(1))
            .commit_interval(Duration::from_millis(200))
            .flush_interval(Duration::from_millis(100))
            .state_dir(dir)
            .store(&handler.counts)
            .build()
            .unwrap();
        let waiting = handler.waiting.clone();
        (StatefulConsumer::new(config, Utf8, Utf8, handler), waiting)
    };
    let at_block = vec![BLOCKING_OFFSET; 2];

    // A owns both partitions and waits in both marked records.
    let (open_a, gate) = watch::channel(false);
    let (consumer_a, waiting_a) = consumer("a", dir_a.path(), gate);
    let a = Running::start(consumer_a);
    // The records before the marked ones first, so that they are flushed and committed (a
    // flush waits for the end of the batch being handled).
    common::produce(&topic, &head).await;
    common::wait_until(
        "A committed the records before the marked ones",
        WAIT,
        || common::committed(&group, &topic, 2) == at_block,
    )
    .await;
    common::produce(&topic, &tail).await;
    common::wait_until("A waiting in both marked records", WAIT, || {
        waiting_a.lock().unwrap().len() == 2
    })
    .await;
    let before = sent(&out);
    assert_eq!(before.len(), 2 * BLOCKING_OFFSET as usize, "{before:?}");
    assert!(
        before.iter().all(|s| s.offset < BLOCKING_OFFSET),
        "a record's output is sent only once its handler returns: {before:?}"
    );

    // B joins and takes one partition; A's handler of its marked record is cancelled.
    let (open_b, gate) = watch::channel(false);
    let (consumer_b, waiting_b) = consumer("b", dir_b.path(), gate);
    let b = Running::start(consumer_b);
    common::wait_until(
        "B waiting in the moved partition's marked record",
        WAIT,
        || waiting_b.lock().unwrap().len() == 1 && a.assigned().len() == 1,
    )
    .await;
    let (moved, kept) = (b.assigned()[0], a.assigned()[0]);
    let moved_index = moved as usize;
    let restored = b.stats.snapshot().partitions[&(topic.clone(), moved)].restored_records;
    assert!(
        restored > 0,
        "B restored partition {moved} from the changelog"
    );
    assert_eq!(
        common::committed(&group, &topic, 2),
        at_block,
        "nothing committed past a record whose handling is not finished"
    );
    assert!(
        of(&sent(&out), moved, BLOCKING_OFFSET).is_empty(),
        "nothing of it sent"
    );

    // B's handler returns: its output is acknowledged before the offset moves past it.
    open_b.send(true).unwrap();
    let end = common::end_offsets(&topic, 2);
    common::wait_until("the moved partition committed to its end", WAIT, || {
        let committed = common::committed(&group, &topic, 2);
        if committed[moved_index] > BLOCKING_OFFSET {
            assert_eq!(
                of(&sent(&out), moved, BLOCKING_OFFSET),
                ["b"],
                "committed {committed:?}: past ({moved}, {BLOCKING_OFFSET}) before its output"
            );
        }
        committed[moved_index] == end[moved_index]
    })
    .await;
    assert_eq!(
        common::committed(&group, &topic, 2)[kept as usize],
        BLOCKING_OFFSET,
        "A's partition stays at its blocked record"
    );

    // A's gate opens: it finishes the partition it kept.
    open_a.send(true).unwrap();
    common::wait_until("everything committed", WAIT, || {
        common::committed(&group, &topic, 2) == end
    })
    .await;
    b.stop().await.unwrap();
    a.stop().await.unwrap();

    let all = sent(&out);
    for p in 0..2 {
        for offset in 0..PER_PARTITION {
            let owner = if p == moved && offset >= BLOCKING_OFFSET {
                "b"
            } else {
                "a"
            };
            assert_eq!(
                of(&all, p, offset),
                [owner],
                "({p}, {offset}): sent once, by its owner when it returned"
            );
        }
    }
    // The cancelled attempt's state write was discarded with its output: counts are exact.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for s in &all {
        last.insert(s.key.clone(), s.count);
    }
    let expected = common::expected_counts(&[head, tail].concat());
    assert_eq!(last, expected.into_iter().collect());
}
