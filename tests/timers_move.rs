//! A partition's timers move with it: scheduled by one consumer, they fire on the next owner.
//!
//! Consumer A owns both partitions and schedules a stream-time and a wall-clock timer per key
//! (handler in `common/timers.rs`); its state is flushed and committed. Consumer B, with its
//! own empty state directory, joins with cooperative rebalancing and takes one partition,
//! restoring it — the timers included — from the changelogs. Once stream time and the wall
//! clock reach them, each timer fires exactly once, when due, on the consumer owning its
//! partition: the moved partition's timers (of both kinds) on B, the others on A.

mod common;
#[path = "common/timers.rs"]
mod timers;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{require_broker, Running};
use kafka_stateful::codec::Utf8;
use kafka_stateful::StatefulConsumer;
use timers::{config, schedules, ticks, wait_committed_to_end, Scheduler};
use timers::{BASE, KEYS, MINUTE, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitions_timers_fire_on_its_new_owner_after_it_moves() {
    require_broker!();
    common::init_tracing();
    let (topic, out, group) = (
        common::unique("timers-move"),
        common::unique("fired"),
        common::unique("g"),
    );
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::create_topic(&topic, 2).await;
    common::create_topic(&out, 1).await;
    let flush = Duration::from_millis(100);
    let a = Scheduler::new("a", &out);
    let running_a = Running::start(StatefulConsumer::new(
        config(&topic, &group, "a", dir_a.path(), flush),
        Utf8,
        Utf8,
        a.clone(),
    ));
    common::wait_until("A owns both partitions", WAIT, || {
        let s = running_a.stats.snapshot();
        s.partitions.len() == 2 && s.partitions.values().all(|p| p.ready)
    })
    .await;
    let wall_at = common::now_ms() as i64 + 15_000;
    common::produce(&topic, &schedules(wall_at)).await;
    wait_committed_to_end(&group, &topic).await; // committed only once flushed

    let b = Scheduler::new("b", &out);
    let running_b = Running::start(StatefulConsumer::new(
        config(&topic, &group, "b", dir_b.path(), flush),
        Utf8,
        Utf8,
        b.clone(),
    ));
    common::wait_until("one partition moved to B and restored", WAIT, || {
        let s = running_b.stats.snapshot();
        running_a.assigned().len() == 1
            && s.partitions.len() == 1
            && s.partitions.values().all(|p| p.ready)
    })
    .await;
    let (kept, moved) = (running_a.assigned()[0], running_b.assigned()[0]);
    let restored = running_b.stats.snapshot().partitions[&(topic.clone(), moved)].restored_records;
    assert!(
        restored > 0,
        "B restored partition {moved} from the changelogs"
    );
    assert!(
        (common::now_ms() as i64) < wall_at,
        "the wall-clock timers came due before the partition moved: test too slow"
    );
    assert!(
        a.fired().is_empty() && b.fired().is_empty(),
        "nothing due yet"
    );

    common::produce(&topic, &ticks(BASE + 100 * MINUTE)).await;
    common::wait_until("every timer fired", WAIT, || {
        a.fired().len() + b.fired().len() == 2 * KEYS as usize
    })
    .await;
    running_b.stop().await.unwrap();
    running_a.stop().await.unwrap();

    let (on_a, on_b) = (a.fired(), b.fired());
    println!(
        "moved partition {moved} (restored {restored} changelog records); fired on A: {}, on B: {}",
        on_a.len(),
        on_b.len()
    );
    assert!(
        on_a.iter().all(|f| f.partition == kept),
        "A fired only its own partition's timers: {on_a:?}"
    );
    assert!(
        on_b.iter().all(|f| f.partition == moved),
        "B fired only the moved partition's timers: {on_b:?}"
    );
    let mut keys: Vec<&str> = on_a.iter().chain(&on_b).map(|f| f.key.as_str()).collect();
    keys.sort_unstable();
    let mut want: Vec<String> = (0..KEYS)
        .flat_map(|k| [format!("stream-{k}"), format!("wall-{k}")])
        .collect();
    want.sort_unstable();
    assert_eq!(keys, want, "every timer fired exactly once");
    let kinds_on_b: BTreeSet<&str> = on_b.iter().map(|f| f.kind.as_str()).collect();
    assert_eq!(
        kinds_on_b,
        ["stream", "wall"].into(),
        "both kinds of timers moved with the partition"
    );
    assert!(
        on_a.iter()
            .chain(&on_b)
            .all(|f| f.count == 1 && f.clock >= f.at),
        "each timer fired when due, its state write applied once: {on_a:?} {on_b:?}"
    );
}
