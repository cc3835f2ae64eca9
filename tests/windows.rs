//! Windows (tumbling, session and sliding), late records and window close against a real
//! broker: the output topic holds exactly the rows an independent computation gives,
//! closing a tumbling window writes no changelog tombstones (the topic expires them by
//! time), and a restore on an empty disk brings no closed window of any kind back.

mod common;
#[path = "common/page_minutes.rs"]
mod page_minutes;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{require_broker, Running};
use kafka_stateful::changelog::changelog_topic;
use kafka_stateful::codec::Utf8;
use kafka_stateful::{ConsumerConfig, StatefulConsumer};
use page_minutes::{expected, open_sessions, PageMinutes, Row, MINUTE};

const WAIT: Duration = Duration::from_secs(90);

fn read_rows(topic: &str) -> Vec<Row> {
    common::read_all(topic, 1)
        .into_iter()
        .map(|(_, v, _)| serde_json::from_slice(&v.unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn windows_emit_exactly_the_expected_rows_late_records_are_counted_and_closed_windows_stay_closed(
) {
    require_broker!();
    common::init_tracing();
    let (topic, out, group) = (
        common::unique("visits"),
        common::unique("minutes"),
        common::unique("g"),
    );
    common::create_topic(&topic, 2).await;
    common::create_topic(&out, 1).await;
    // Eight minutes of views over 20 pages and 30 users; every 11th view 8 s out of order
    // (within grace), every 37th 95 s late.
    let base = 1_700_000_000_000i64 / MINUTE * MINUTE;
    let mut events = Vec::new();
    for i in 0..2000i64 {
        let page = format!("p{}", i * 7 % 20);
        let partition = (i * 7 % 20 % 2) as i32;
        let user = format!("u{}", i * 13 % 30);
        let mut ts = base + i * 8 * MINUTE / 2000;
        if i % 11 == 0 {
            ts -= 8_000;
        }
        if i % 37 == 0 {
            ts -= 95_000;
        }
        events.push((partition, page, user, ts));
    }
    let produced: Vec<(i32, String, String)> = events
        .iter()
        .map(|(p, page, user, ts)| (*p, page.clone(), format!("{user}@{ts}")))
        .collect();
    common::produce(&topic, &produced).await;
    let (rows, late) = expected(events.iter().cloned());
    assert!(
        late > 10 && rows.len() > 100,
        "a meaningful input: {late} late, {} rows",
        rows.len()
    );

    let open = open_sessions(events.iter().cloned());
    let handler = PageMinutes::new(&out);
    let build = |dir: &std::path::Path| {
        let builder = ConsumerConfig::builder(common::bootstrap(), &group, [&topic])
            .instance_id("w-0")
            .commit_interval(Duration::from_millis(200))
            .flush_interval(Duration::from_millis(200))
            .state_dir(dir);
        handler.declare(builder).build().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let consumer = StatefulConsumer::new(build(dir.path()), Utf8, Utf8, handler.clone());
    let query = consumer.query();
    let running = Running::start(consumer);
    common::wait_until("every row of a closed window sent", WAIT, || {
        read_rows(&out).len() >= rows.len()
    })
    .await;
    common::wait_until("everything committed", WAIT, || {
        common::committed(&group, &topic, 2) == common::end_offsets(&topic, 2)
    })
    .await;
    // The sessions still open, read from outside the handler once flushed.
    let page = open.keys().next().unwrap().clone();
    let want: Vec<(i64, i64, u64)> = open[&page].clone();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        // Pages are produced to partition `<page number> % 2`, not by the partitioner.
        let partition = page[1..].parse::<i32>().unwrap() % 2;
        let got = query
            .sessions(&handler.sessions, (&topic, partition), &page)
            .await
            .map(|sessions| {
                let got: Vec<(i64, i64, u64)> = sessions
                    .into_iter()
                    .map(|(w, v)| (w.start, w.end, v))
                    .collect();
                got
            });
        if matches!(&got, Ok(got) if *got == want) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{page}'s open sessions as queried: {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let counted_late: u64 = running
        .stats
        .snapshot()
        .partitions
        .values()
        .map(|p| p.late)
        .sum();
    running.stop().await.unwrap();
    let sent = read_rows(&out);
    assert_eq!(
        sent.len(),
        rows.len(),
        "no row twice in a run without crashes"
    );
    assert_eq!(sent.into_iter().collect::<BTreeSet<_>>(), rows);
    assert_eq!(counted_late, late as u64, "late records counted");

    // Closing a window writes nothing to its changelog: no tombstone per member (the
    // handler deletes none), and the topic expires closed windows' records by time.
    let members_log = changelog_topic(&group, "members");
    let tombstones = common::read_all(&members_log, 2)
        .into_iter()
        .filter(|(key, value, _)| {
            value.is_none() && !key.as_ref().unwrap().starts_with(b"\0kafka-stateful")
        })
        .count();
    assert_eq!(tombstones, 0, "closing windows wrote tombstones");
    let config = common::topic_config(&members_log).await;
    assert_eq!(
        config.get("cleanup.policy").map(String::as_str),
        Some("compact,delete")
    );
    let retention: i64 = config["retention.ms"].parse().unwrap();
    assert_eq!(
        retention,
        MINUTE + page_minutes::GRACE + 24 * 3600 * 1000,
        "size + grace + a day"
    );
    let closed: BTreeSet<(u8, String, i64)> = rows.iter().map(Row::window).collect();

    // A new owner on an empty disk restores, and no closed window comes back or closes again.
    let empty = tempfile::tempdir().unwrap();
    let running = Running::start(StatefulConsumer::new(
        build(empty.path()),
        Utf8,
        Utf8,
        handler.clone(),
    ));
    common::wait_until("restored", WAIT, || {
        let s = running.stats.snapshot();
        s.partitions.len() == 2 && s.partitions.values().all(|p| p.ready)
    })
    .await;
    let restored: u64 = running
        .stats
        .snapshot()
        .partitions
        .values()
        .map(|p| p.restored_records)
        .sum();
    // One more view far ahead closes every window still open; only those may be new.
    common::produce(
        &topic,
        &[(0, "p0".into(), format!("u0@{}", base + 100 * MINUTE))],
    )
    .await;
    common::wait_until("the last view handled", WAIT, || {
        running
            .stats
            .snapshot()
            .partitions
            .values()
            .map(|p| p.handled)
            .sum::<u64>()
            == 1
    })
    .await;
    running.stop().await.unwrap();
    assert!(restored > 0, "state came back from the changelog");
    let again: Vec<Row> = read_rows(&out);
    let new_rows: Vec<&Row> = again.iter().skip(rows.len()).collect();
    assert!(
        new_rows.iter().all(|r| !closed.contains(&r.window())),
        "a closed window was reported again after the restore: {new_rows:?}"
    );
}
