//! Windows and timers end to end on the test driver (real worker, real RocksDB).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::codec::{Bincode, Json, Utf8};
use crate::testing::{TestDriver, TestRecord};
use crate::timer::{TimeKind, Timer};
use crate::{ConsumerConfig, Output, Record, StoreDef};
use crate::{Handler, HandlerError, PartitionContext};

type Counts = (u64, u64);

#[derive(Clone)]
struct UniqueVisitors {
    members: WindowDef<(String, String), ()>,
    counts: WindowDef<String, Counts>,
    output: Output<String, (i64, u64, u64)>,
    fired: StoreDef<String, u64>,
    closed: Arc<Mutex<Vec<(String, i64)>>>,
    /// What a "probe" record read of its page's counts in the window [0, 60 s).
    probes: Arc<Mutex<Vec<Option<Counts>>>>,
}

impl UniqueVisitors {
    fn new() -> Self {
        let minute = |name| (name, Duration::from_secs(60), Duration::from_secs(10));
        let (m, size, grace) = minute("members");
        let (c, _, _) = minute("counts");
        Self {
            members: WindowDef::tumbling(m, size, grace, Bincode::new(), Bincode::new()),
            counts: WindowDef::tumbling(c, size, grace, Utf8, Bincode::new()),
            output: Output::new("page-minutes", Utf8, Json::new()),
            fired: StoreDef::new("fired", Utf8, Bincode::new()),
            closed: Arc::default(),
            probes: Arc::default(),
        }
    }
}

impl Handler<String, String> for UniqueVisitors {
    async fn handle(
        &self,
        r: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let (page, user) = (r.key.ok_or("no page")?, r.value.ok_or("no user")?);
        if user == "probe" {
            let first = Window {
                start: 0,
                end: 60_000,
            };
            let seen = ctx.window(&self.counts)?.get(first, &page)?;
            self.probes.lock().unwrap().push(seen);
            return Ok(());
        }
        if user == "timer" {
            let at = ctx.event_time().unwrap_or(0);
            ctx.schedule(TimeKind::Wall, at, page.as_bytes())?;
            return Ok(());
        }
        let windows = ctx.window(&self.members)?.windows();
        for w in windows {
            let member = (page.clone(), user.clone());
            let new = {
                let mut members = ctx.window(&self.members)?;
                let new = members.get(w, &member)?.is_none();
                if new {
                    members.put(w, &member, &())?;
                }
                new
            };
            let mut counts = ctx.window(&self.counts)?;
            let (unique, views) = counts.get(w, &page)?.unwrap_or((0, 0));
            counts.put(w, &page, &(unique + u64::from(new), views + 1))?;
        }
        Ok(())
    }

    async fn on_window_closed(
        &self,
        closed: ClosedWindow,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        if closed.store != "counts" {
            return Ok(());
        }
        for (page, (unique, views)) in closed.entries(&self.counts)? {
            self.closed
                .lock()
                .unwrap()
                .push((page.clone(), closed.window.start));
            ctx.send(
                &self.output,
                Some(&page),
                Some(&(closed.window.start, unique, views)),
            )?;
        }
        Ok(())
    }

    async fn on_timer(&self, timer: Timer, ctx: &mut PartitionContext) -> Result<(), HandlerError> {
        let key = String::from_utf8(timer.key)?;
        let mut fired = ctx.store(&self.fired)?;
        let n = fired.get(&key)?.unwrap_or(0) + 1;
        fired.put(&key, &n)?;
        Ok(())
    }
}

fn config(h: &UniqueVisitors) -> crate::ConsumerConfigBuilder {
    ConsumerConfig::builder("unused:9092", "g", ["views"])
        .instance_id("i")
        .state_dir("unused")
        .window(&h.members)
        .window(&h.counts)
        .store(&h.fired)
}

async fn driver(h: &UniqueVisitors) -> TestDriver<Utf8, Utf8, UniqueVisitors> {
    let config = config(h).build().unwrap();
    TestDriver::new(config, Utf8, Utf8, h.clone())
        .await
        .unwrap()
}

fn view(page: &str, user: &str, secs: i64) -> TestRecord<String, String> {
    TestRecord::new(page.to_string(), user.to_string()).timestamp(secs * 1000)
}

fn results(d: &TestDriver<Utf8, Utf8, UniqueVisitors>) -> Vec<(String, (i64, u64, u64))> {
    d.sent_to("page-minutes")
        .iter()
        .map(|r| {
            (
                String::from_utf8(r.key.clone().unwrap()).unwrap(),
                serde_json::from_slice(r.value.as_ref().unwrap()).unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_close_once_with_their_final_counts_and_late_records_are_not_applied() {
    let h = UniqueVisitors::new();
    let mut d = driver(&h).await;
    for (page, user, secs) in [
        ("p1", "u1", 0),
        ("p1", "u2", 10),
        ("p1", "u1", 20),
        ("p2", "u3", 30),
    ] {
        d.send(view(page, user, secs)).await.unwrap();
    }
    // Out of order but within grace: still counted in window [0, 60).
    d.send(view("p1", "u3", 65)).await.unwrap();
    d.send(view("p1", "u9", 59)).await.unwrap();
    assert!(
        results(&d).is_empty(),
        "nothing closed before 60 s + 10 s grace"
    );
    d.send(view("p3", "u1", 71)).await.unwrap();
    let mut out = results(&d);
    out.sort();
    assert_eq!(
        out,
        vec![("p1".into(), (0, 3, 4)), ("p2".into(), (0, 1, 1))],
        "window [0, 60): p1 saw u1, u2, u9 in 4 views"
    );
    // Late: its window closed at 70 s.
    d.send(view("p1", "u7", 30)).await.unwrap();
    assert_eq!(d.late(), 1);
    // The closed window's entries are gone; the open window [60, 120) is there.
    let members = d.read_window(&h.members).await.unwrap();
    assert!(
        members.iter().all(|(w, _, _)| w.start == 60_000),
        "{members:?}"
    );
    assert_eq!(members.len(), 2, "(p1, u3) and (p3, u1)");
    // No restore brings the closed window back, nor closes it twice.
    d.crash().await.unwrap();
    d.lose_disk().await.unwrap();
    let members = d.read_window(&h.members).await.unwrap();
    assert!(
        members.iter().all(|(w, _, _)| w.start == 60_000),
        "{members:?}"
    );
    d.send(view("p1", "u1", 200)).await.unwrap();
    let mut out = results(&d);
    out.sort();
    assert_eq!(
        out.len(),
        4,
        "window [60, 120) closed for p1 and p3: {out:?}"
    );
    assert!(out.contains(&("p1".into(), (60_000, 1, 1))));
    assert!(out.contains(&("p3".into(), (60_000, 1, 1))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_window_reads_as_absent_before_the_flush_that_deletes_it() {
    let h = UniqueVisitors::new();
    let mut d = driver(&h).await;
    d.send(view("p1", "u1", 0)).await.unwrap();
    d.send(view("p1", "probe", 30)).await.unwrap();
    // Stream time 71 s closes [0, 60 s) (10 s grace); its entries are still in the store
    // until the next flush range-deletes them, but no read may see them.
    d.send(view("p2", "u2", 71)).await.unwrap();
    d.send(view("p1", "probe", 72)).await.unwrap();
    assert_eq!(*h.probes.lock().unwrap(), vec![Some((1, 1)), None]);
    assert_eq!(results(&d), vec![("p1".into(), (0, 1, 1))], "closed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_timers_fire_once_per_flushed_state_even_across_a_crash() {
    let h = UniqueVisitors::new();
    let mut d = driver(&h).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // The handler schedules a wall-clock timer at the record's timestamp, an hour ahead.
    d.send(TestRecord::new("t".to_string(), "timer".to_string()).timestamp(now + 3_600_000))
        .await
        .unwrap();
    d.flush().await.unwrap();
    d.advance_wall_clock(Duration::from_secs(60)).await.unwrap();
    assert!(d.read(&h.fired).await.unwrap().is_empty(), "not due yet");
    d.advance_wall_clock(Duration::from_secs(3600))
        .await
        .unwrap();
    // Fired, but not flushed: a crash fires it again, and its write counts once.
    d.crash().await.unwrap();
    d.advance_wall_clock(Duration::from_secs(1)).await.unwrap();
    assert_eq!(d.read(&h.fired).await.unwrap(), vec![("t".to_string(), 1)]);
    d.lose_disk().await.unwrap();
    d.advance_wall_clock(Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        d.read(&h.fired).await.unwrap(),
        vec![("t".to_string(), 1)],
        "a fired timer does not come back from the changelog"
    );
}

/// Reads of a window newer than every window in RocksDB skip RocksDB
/// (`state::window_bounds`): each read below would count a returning visitor again if the
/// bound were not raised by a flush, or not read back after a crash or a restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_counts_once_while_its_window_moves_to_rocksdb_and_back_from_a_restore() {
    let h = UniqueVisitors::new();
    // Every record starts a flush while the worker goes on: the next records' reads find
    // the flushed entries in the overlay, then in RocksDB.
    let config = config(&h).overlay_bytes(1).build().unwrap();
    let mut d = TestDriver::new(config, Utf8, Utf8, h.clone())
        .await
        .unwrap();
    for secs in 1..=5 {
        d.send(view("p1", "u1", secs)).await.unwrap();
    }
    d.send(view("p1", "u1", 10)).await.unwrap();
    d.flush().await.unwrap();
    // Window [0, 60 s) is in RocksDB now.
    d.send(view("p1", "u1", 20)).await.unwrap();
    // A window no flush has written yet.
    d.send(view("p1", "u1", 61)).await.unwrap();
    d.flush().await.unwrap();
    d.send(view("p1", "u1", 62)).await.unwrap();
    d.flush().await.unwrap();
    d.crash().await.unwrap();
    d.send(view("p1", "u1", 63)).await.unwrap();
    d.flush().await.unwrap();
    d.lose_disk().await.unwrap();
    d.send(view("p1", "u1", 64)).await.unwrap();
    let mut counts = d.read_window(&h.counts).await.unwrap();
    counts.sort_by_key(|(w, _, _)| w.start);
    let counts: Vec<(i64, String, Counts)> = counts
        .into_iter()
        .map(|(w, page, c)| (w.start, page, c))
        .collect();
    assert_eq!(
        counts,
        vec![(0, "p1".into(), (1, 7)), (60_000, "p1".into(), (1, 4))],
        "one visitor, in each window"
    );
}
