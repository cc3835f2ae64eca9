//! Session and sliding windows end to end on the test driver (real worker, real RocksDB,
//! crashes and a lost disk).

use std::time::Duration;

use super::*;
use crate::codec::{Bincode, Json, Utf8};
use crate::testing::{TestDriver, TestRecord};
use crate::{ConsumerConfig, Output, Record};
use crate::{Handler, HandlerError, PartitionContext};

/// `(store, user, start, end)` and the session's views, or a sliding window's record times.
type Row = (String, String, i64, i64, Vec<i64>);

#[derive(Clone)]
struct Activity {
    /// Views per user session (30 s gap, 10 s grace).
    sessions: SessionDef<String, u64>,
    /// The times of a user's views within 10 s of each other (no grace).
    recent: SlidingDef<String, i64>,
    output: Output<String, Row>,
}

impl Activity {
    fn new() -> Self {
        let secs = Duration::from_secs;
        Self {
            sessions: SessionDef::new("sessions", secs(30), secs(10), Utf8, Bincode::new()),
            recent: SlidingDef::new("recent", secs(10), secs(0), Utf8, Bincode::new()),
            output: Output::new("closed", Utf8, Json::new()),
        }
    }
}

impl Handler<String, String> for Activity {
    async fn handle(
        &self,
        r: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let user = r.key.ok_or("no user")?;
        let time = ctx.event_time().ok_or("no time")?;
        ctx.session_window(&self.sessions)?.aggregate(
            &user,
            |a, b| a + b,
            |views| views.unwrap_or(0) + 1,
        )?;
        ctx.sliding_window(&self.recent)?.add(&user, &time)?;
        Ok(())
    }

    async fn on_window_closed(
        &self,
        closed: ClosedWindow,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let (start, end) = (closed.window.start, closed.window.end);
        let row = if closed.store == self.sessions.name() {
            let [(user, views)] = &closed.entries(&self.sessions)?[..] else {
                return Err("a session has one entry".into());
            };
            (
                "sessions".into(),
                user.clone(),
                start,
                end,
                vec![*views as i64],
            )
        } else {
            let records = closed.entries(&self.recent)?;
            let user = records.first().ok_or("an empty sliding window")?.0.clone();
            let times = records.into_iter().map(|(_, t)| t).collect();
            ("recent".into(), user, start, end, times)
        };
        ctx.send(&self.output, Some(&row.1), Some(&row))?;
        Ok(())
    }
}

async fn driver(h: &Activity) -> TestDriver<Utf8, Utf8, Activity> {
    let config = ConsumerConfig::builder("unused:9092", "g", ["views"])
        .instance_id("i")
        .state_dir("unused")
        .session_window(&h.sessions)
        .sliding_window(&h.recent)
        .build()
        .unwrap();
    TestDriver::new(config, Utf8, Utf8, h.clone())
        .await
        .unwrap()
}

fn view(user: &str, millis: i64) -> TestRecord<String, String> {
    TestRecord::new(user.to_string(), "page".to_string()).timestamp(millis)
}

/// The distinct rows `store` sent for `user` (a crash sends a closed window's row again
/// when the close was not flushed: output is at-least-once).
fn closed(d: &TestDriver<Utf8, Utf8, Activity>, store: &str, user: &str) -> Vec<Row> {
    let rows: std::collections::BTreeSet<Row> = d
        .sent_to("closed")
        .iter()
        .map(|r| serde_json::from_slice(r.value.as_ref().unwrap()).unwrap())
        .filter(|r: &Row| r.0 == store && r.1 == user)
        .collect();
    rows.into_iter().collect()
}

fn sessions(d: &TestDriver<Utf8, Utf8, Activity>) -> Vec<Row> {
    closed(d, "sessions", "u1")
}

fn row(store: &str, user: &str, start: i64, end: i64, numbers: &[i64]) -> Row {
    (store.into(), user.into(), start, end, numbers.to_vec())
}

fn window(start: i64, end: i64) -> Window {
    Window { start, end }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_bridging_two_sessions_merges_them_and_the_superseded_never_come_back() {
    let h = Activity::new();
    let mut d = driver(&h).await;
    for at in [0, 10_000, 50_000] {
        d.send(view("u1", at)).await.unwrap();
    }
    assert_eq!(
        d.read_sessions(&h.sessions).await.unwrap(),
        vec![
            (window(0, 10_001), "u1".to_string(), 2),
            (window(50_000, 50_001), "u1".to_string(), 1),
        ],
        "40 s apart: two sessions"
    );
    // Out of order, within 30 s of both: one session of four views.
    d.send(view("u1", 30_000)).await.unwrap();
    let merged = vec![(window(0, 50_001), "u1".to_string(), 4)];
    assert_eq!(d.read_sessions(&h.sessions).await.unwrap(), merged);
    d.crash().await.unwrap();
    d.lose_disk().await.unwrap();
    assert_eq!(
        d.read_sessions(&h.sessions).await.unwrap(),
        merged,
        "restored from the changelog: the superseded sessions stay deleted"
    );
    assert!(sessions(&d).is_empty(), "nothing closed yet");
    // Stream time 90 001 ms passes 50 000 + 30 s gap + 10 s grace: the session closes once.
    d.send(view("u2", 90_001)).await.unwrap();
    let rows = vec![row("sessions", "u1", 0, 50_001, &[4])];
    assert_eq!(sessions(&d), rows);
    assert_eq!(
        d.read_sessions(&h.sessions).await.unwrap(),
        vec![(window(90_001, 90_002), "u2".to_string(), 1)],
        "the closed session is deleted"
    );
    // Its own session would have closed at 40 s + 30 s gap + 10 s grace: late, not applied.
    d.send(view("u1", 40_000)).await.unwrap();
    assert_eq!(d.late(), 1);
    d.crash().await.unwrap();
    d.lose_disk().await.unwrap();
    d.send(view("u2", 95_000)).await.unwrap();
    assert_eq!(sessions(&d), rows, "no restore reopens or closes it again");
    assert_eq!(
        d.read_sessions(&h.sessions).await.unwrap(),
        vec![(window(90_001, 95_001), "u2".to_string(), 2)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_windows_are_the_distinct_record_sets_within_the_time_difference() {
    let h = Activity::new();
    let mut d = driver(&h).await;
    for at in [0, 5_000, 11_000] {
        d.send(view("slide", at)).await.unwrap();
    }
    d.crash().await.unwrap();
    d.lose_disk().await.unwrap();
    // A record far ahead closes every window of "slide".
    d.send(view("other", 100_000)).await.unwrap();
    let slide = |d: &TestDriver<Utf8, Utf8, Activity>| closed(d, "recent", "slide");
    assert_eq!(
        slide(&d),
        vec![
            // Left windows [t - 10 s, t] and right windows [t + 1, t + 1 + 10 s], as
            // [start, end + 1); no right window of 11 s (empty).
            row("recent", "slide", -10_000, 1, &[0]),
            row("recent", "slide", -5_000, 5_001, &[0, 5_000]),
            row("recent", "slide", 1, 10_002, &[5_000]),
            row("recent", "slide", 1_000, 11_001, &[5_000, 11_000]),
            row("recent", "slide", 5_001, 15_002, &[11_000]),
        ]
    );
    let kept: Vec<(i64, String, i64)> = d.read_sliding(&h.recent).await.unwrap();
    assert_eq!(
        kept,
        vec![(100_000, "other".to_string(), 100_000)],
        "a record is deleted once the last window holding it closed"
    );
    // Every window that could hold 89 000 closed at 100 000 (89 000 + 10 s + 1 ms).
    d.send(view("slide", 89_000)).await.unwrap();
    assert_eq!(
        d.late(),
        1,
        "late for the sliding windows (its session is open)"
    );
    d.crash().await.unwrap();
    d.lose_disk().await.unwrap();
    d.send(view("other", 200_000)).await.unwrap();
    assert_eq!(slide(&d).len(), 5, "no restore reopens a window");
    let all = d.sent_to("closed").len();
    d.send(view("other", 300_000)).await.unwrap();
    let new: Vec<Row> = d.sent_to("closed")[all..]
        .iter()
        .map(|r| serde_json::from_slice(r.value.as_ref().unwrap()).unwrap())
        .collect();
    assert_eq!(
        new,
        vec![
            row("recent", "other", 190_000, 200_001, &[200_000]),
            row("sessions", "other", 200_000, 200_001, &[1]),
        ],
        "only what 300 s closes (200 s has no right window)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_own_window_closed_still_joins_the_open_windows_after_it() {
    let h = Activity::new();
    let mut d = driver(&h).await;
    d.send(view("slide", 0)).await.unwrap();
    d.send(view("slide", 20_000)).await.unwrap();
    // Its left window [2 s, 12 s] closed at 12 001; [10 s, 20 s] is open.
    d.send(view("slide", 12_000)).await.unwrap();
    d.send(view("other", 100_000)).await.unwrap();
    assert_eq!(
        closed(&d, "recent", "slide"),
        vec![
            row("recent", "slide", -10_000, 1, &[0]),
            row("recent", "slide", 10_000, 20_001, &[12_000, 20_000]),
            row("recent", "slide", 12_001, 22_002, &[20_000]),
        ],
        "no window [2 s, 12 s] (closed when 12 s arrived); the right window of 12 s is 20 s"
    );
    assert_eq!(d.late(), 0);
}

/// Records which stores' windows closed.
#[derive(Clone)]
struct Silent {
    quiet: WindowDef<String, u64>,
    loud: WindowDef<String, u64>,
    closes: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Handler<String, String> for Silent {
    async fn handle(
        &self,
        r: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let key = r.key.ok_or("no key")?;
        for def in [&self.quiet, &self.loud] {
            for w in ctx.window(def)?.windows() {
                ctx.window(def)?.put(w, &key, &1)?;
            }
        }
        Ok(())
    }

    async fn on_window_closed(
        &self,
        closed: ClosedWindow,
        _ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        self.closes.lock().unwrap().push(closed.store);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_window_store_closes_without_a_callback_and_is_still_deleted() {
    let minute = Duration::from_secs(60);
    let h = Silent {
        quiet: WindowDef::tumbling("quiet", minute, Duration::ZERO, Utf8, Bincode::new())
            .closes_silently(),
        loud: WindowDef::tumbling("loud", minute, Duration::ZERO, Utf8, Bincode::new()),
        closes: Default::default(),
    };
    let config = ConsumerConfig::builder("unused:9092", "g", ["views"])
        .instance_id("i")
        .state_dir("unused")
        .window(&h.quiet)
        .window(&h.loud)
        .build()
        .unwrap();
    let mut d = TestDriver::new(config, Utf8, Utf8, h.clone())
        .await
        .unwrap();
    d.send(view("a", 0)).await.unwrap();
    d.send(view("b", 61_000)).await.unwrap();
    assert_eq!(*h.closes.lock().unwrap(), vec!["loud".to_string()]);
    let quiet = d.read_window(&h.quiet).await.unwrap();
    assert_eq!(quiet, vec![(window(60_000, 120_000), "b".to_string(), 1)]);
}
