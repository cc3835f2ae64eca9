//! SIGKILL while windows are closing and their results are being sent.
//!
//! A child process (this binary re-run with `KS_WCRASH_CHILD`, see `windows_crash_child`)
//! runs the page-minutes job (`common/page_minutes.rs`) on event time from the value
//! (`"<user>@<ts>"`): distinct users (one member entry per `(page, user)`) and views per page
//! and one-minute tumbling window (10 s grace), views per page session (20 s gap; sessions
//! merge when an out-of-order view bridges them) and per page sliding window (5 s), and
//! sends each closed window's row to an output topic. Every third round starts on an empty
//! state directory (a lost disk: everything restores from the changelogs).
//! Event time advances 1 s per view, so each partition closes a window every ~30 views;
//! some views are 8 s out of order (within grace), some 150 s late.
//!
//! Each round starts a child, feeds it ~1200 views/s (more than it handles: it sleeps 1 ms
//! on every other view, so it is always behind and closing windows), waits until it closed a
//! window and flushed (so restarts begin mid-stream), SIGKILLs it after a random delay
//! (seeded, seed printed) and checks where the kill landed: a window closed within 100 ms
//! before it, and windows closed since the last completed flush (results sent, not durable).
//! At least a third of the kills must land so. Finally one view per partition far in the future closes every window and
//! a consumer in this process catches up on the same state. The output must hold every
//! window's result with exactly the values computed independently from the input read back
//! from its topic: duplicates allowed (output is at-least-once), none missing, none wrong (a
//! view applied twice, or a late one applied, would change a count).
//!
//! `KS_WCRASH_ROUNDS` (default 6) and `KS_WCRASH_SEED` set rounds and seed (the seed fixes
//! views and delays; how many views a round feeds depends on timing); `KS_KEEP_DIR=1` keeps
//! probe files and child logs.

mod common;
#[path = "common/page_minutes.rs"]
mod page_minutes;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{require_broker, KillOnDrop, Probe, Rng, Running};
use kafka_stateful::codec::Utf8;
use kafka_stateful::{ConsumerConfig, StatefulConsumer};
use page_minutes::{expected, parse, PageMinutes, Row, MINUTE};
use rdkafka::producer::FutureRecord;
use tokio::task::JoinHandle;

const PARTITIONS: i32 = 2;
/// Page `page-<k>` lives in partition `k % PARTITIONS`.
const PAGES: u64 = 12;
const USERS: u64 = 8;
/// Event time advances this much per produced record.
const STEP_MS: i64 = 1_000;
const BASE: i64 = 1_700_000_000_000 / MINUTE * MINUTE;
const DEFAULT_ROUNDS: u64 = 6;
const INITIAL_RECORDS: usize = 2_000;
/// The feed sends this many views every `FEED_EVERY`.
const FEED_CHUNK: usize = 60;
const FEED_EVERY: Duration = Duration::from_millis(50);
const MAX_DELAY_MS: u64 = 800;
/// A close this recent before the kill means the kill landed while windows were closing.
const CLOSING_WINDOW_MS: u64 = 100;

fn config(topic: &str, group: &str, dir: &str, h: &PageMinutes) -> ConsumerConfig {
    let builder = ConsumerConfig::builder(common::bootstrap(), group, [topic])
        .instance_id("wcrash-0")
        .session_timeout(Duration::from_secs(10))
        .commit_interval(Duration::from_millis(150))
        // Small, frequent flushes: kills land before, during and after flushes too.
        .flush_max_records(37)
        .flush_interval(Duration::from_millis(50))
        .state_dir(dir);
    h.declare(builder).build().unwrap()
}

/// The child's body; a no-op unless run as the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_crash_child() {
    let Ok(spec) = std::env::var("KS_WCRASH_CHILD") else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [topic, out, group, dir, probe] = parts[..] else {
        panic!("bad KS_WCRASH_CHILD {spec:?}");
    };
    let probe = Probe::create(Path::new(probe));
    common::init_probe_tracing(probe.clone());
    let on_close = probe.clone();
    let handler = PageMinutes {
        slow: true,
        on_close: Some(Arc::new(move |start| {
            on_close.line(&format!("closed {start}"))
        })),
        ..PageMinutes::new(out)
    };
    let config = config(topic, group, dir, &handler);
    let consumer = StatefulConsumer::new(config, Utf8, Utf8, handler);
    consumer.run(std::future::pending()).await.unwrap();
}

/// Page views whose event times advance `STEP_MS` per record: every 7th 8 s out of order
/// (within grace), every 97th 150 s late.
struct Views {
    next: i64,
    /// Picks pages, users and kill delays.
    rng: Rng,
}

impl Views {
    fn batch(&mut self, count: usize) -> Vec<(i32, String, String)> {
        (0..count)
            .map(|_| {
                let i = self.next;
                self.next += 1;
                let page = self.rng.below(PAGES);
                let user = self.rng.below(USERS);
                let mut ts = BASE + i * STEP_MS;
                if i % 7 == 3 {
                    ts -= 8_000;
                }
                if i % 97 == 50 {
                    ts -= 150_000;
                }
                let partition = (page % PARTITIONS as u64) as i32;
                (
                    partition,
                    format!("page-{page}"),
                    format!("user-{user}@{ts}"),
                )
            })
            .collect()
    }

    /// One view per partition 100 minutes after the last: every window before it closes.
    fn close_everything(&self) -> Vec<(i32, String, String)> {
        let far = BASE + self.next * STEP_MS + 100 * MINUTE;
        (0..PARTITIONS)
            .map(|p| (p, format!("page-{p}"), format!("user-0@{far}")))
            .collect()
    }
}

/// Sends `FEED_CHUNK` views every `FEED_EVERY` on its own task until `stop` is set;
/// returns the generator.
fn feed(topic: &str, mut views: Views, stop: Arc<AtomicBool>) -> JoinHandle<Views> {
    let topic = topic.to_string();
    tokio::spawn(async move {
        let producer = common::producer_at(&common::bootstrap());
        let mut tick = tokio::time::interval(FEED_EVERY);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let acks: Vec<_> = views
                .batch(FEED_CHUNK)
                .into_iter()
                .map(|(p, k, v)| {
                    let record = FutureRecord::to(&topic).partition(p).key(&k).payload(&v);
                    producer.send_result(record).unwrap()
                })
                .collect();
            for ack in acks {
                ack.await.unwrap().unwrap();
            }
        }
        views
    })
}

/// The rows an independent computation ([`expected`]) gives from the input topic as stored,
/// the late views, and how many views the topic holds.
fn expected_rows(topic: &str) -> (BTreeSet<Row>, usize, usize) {
    let input = common::read_all(topic, PARTITIONS);
    let views = input.iter().map(|(key, value, _)| {
        let page = String::from_utf8(key.clone().unwrap()).unwrap();
        let k: i32 = page.strip_prefix("page-").unwrap().parse().unwrap();
        let (user, ts) = parse(std::str::from_utf8(value.as_ref().unwrap()).unwrap()).unwrap();
        (k % PARTITIONS, page, user, ts)
    });
    let (rows, late) = expected(views);
    (rows, late, input.len())
}

/// When (unix ms) the child probed each window close.
fn closes(probe: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(probe).unwrap_or_default();
    let closed = |line: &str| line.split_once(" closed ")?.0.parse().ok();
    text.lines().filter_map(closed).collect()
}

fn assert_alive(child: &mut KillOnDrop, round: u64, stderr: &Path) {
    let log = || std::fs::read_to_string(stderr).unwrap_or_default();
    assert!(child.alive(), "child exited in round {round}:\n{}", log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_while_windows_close_loses_no_result_and_never_sends_a_wrong_one() {
    require_broker!();
    if std::env::var("KS_WCRASH_CHILD").is_ok() {
        return;
    }
    common::init_tracing();
    let started = Instant::now();
    let rounds: u64 = std::env::var("KS_WCRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    let (rng, seed) = Rng::from_env_or_clock("KS_WCRASH_SEED");
    println!("windows_crash: seed {seed} (KS_WCRASH_SEED={seed} reproduces), {rounds} rounds");
    let (topic, out, group, dir) = (
        common::unique("wcrash"),
        common::unique("wcrash-out"),
        common::unique("g"),
        common::test_dir(),
    );
    let state_dir = dir.path().join("state").to_str().unwrap().to_string();
    common::create_topic(&topic, PARTITIONS).await;
    common::create_topic(&out, 1).await;
    let mut views = Views { next: 0, rng };
    common::produce(&topic, &views.batch(INITIAL_RECORDS)).await;

    let mut while_closing = 0;
    for round in 0..rounds {
        let (delay, fed_before) = (views.rng.below(MAX_DELAY_MS), views.next);
        let lose_disk = round % 3 == 2;
        if lose_disk {
            std::fs::remove_dir_all(&state_dir).unwrap();
        }
        let probe = dir.path().join(format!("probe-{round}.log"));
        let stderr = dir.path().join(format!("child-{round}.stderr"));
        let child = Command::new(common::self_exe())
            .args(["--exact", "windows_crash_child", "--test-threads=1"])
            .env(
                "KS_WCRASH_CHILD",
                format!("{topic}|{out}|{group}|{state_dir}|{}", probe.display()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(Some(child));
        let spawned = Instant::now();
        let stop_feed = Arc::new(AtomicBool::new(false));
        let feeding = feed(&topic, views, stop_feed.clone());
        let what = "the child closed a window and flushed its state";
        common::wait_until(what, Duration::from_secs(60), || {
            assert_alive(&mut child, round, &stderr);
            !closes(&probe).is_empty() && !common::read_probe(&probe).flushed.is_empty()
        })
        .await;
        let ready = spawned.elapsed();
        tokio::time::sleep(Duration::from_millis(delay)).await;
        assert_alive(&mut child, round, &stderr);
        let kill_ms = common::now_ms();
        child.kill(); // SIGKILL
        stop_feed.store(true, Ordering::Relaxed);
        views = feeding.await.unwrap();
        let fed = views.next - fed_before;
        let closed = closes(&probe);
        let log = common::read_probe(&probe);
        let recent = closed
            .iter()
            .filter(|t| **t <= kill_ms && kill_ms - **t <= CLOSING_WINDOW_MS)
            .count();
        // Closed (results sent or being sent) after the last completed flush: not durable.
        let last_flush = log.flushed.iter().map(|f| f.0).max().unwrap_or(0);
        let unflushed = closed.iter().filter(|t| **t > last_flush).count();
        let landed = recent > 0 && unflushed > 0;
        while_closing += u32::from(landed);
        let mut warnings = log.warnings.clone();
        warnings.dedup();
        println!(
            "round {round}: closed a window and flushed after {:.1} s, SIGKILL {delay} ms \
             later; fed {fed} views; windows closed by this child: {}, in the last \
             {CLOSING_WINDOW_MS} ms: {recent}, after its last completed flush: {unflushed}; \
             flushes: {}; while closing: {landed}; on an empty disk: {lose_disk}; \
             warnings: {warnings:?}",
            ready.as_secs_f64(),
            closed.len(),
            log.flushed.len(),
        );
    }
    assert!(
        while_closing * 3 >= rounds as u32,
        "only {while_closing} of {rounds} kills landed while windows were closing with results \
         sent since the last flush (seed {seed})"
    );

    common::produce(&topic, &views.close_everything()).await;
    let (rows, late, produced) = expected_rows(&topic);
    let kinds = rows.iter().fold([0; 3], |mut kinds, row| {
        kinds[row.window().0 as usize] += 1;
        kinds
    });
    assert!(
        kinds.iter().all(|n| *n > 100) && late > 10,
        "a meaningful input: {kinds:?} minute, session and sliding rows, {late} late views",
    );
    let handler = PageMinutes::new(&out);
    let final_started = Instant::now();
    let running = Running::start(StatefulConsumer::new(
        config(&topic, &group, &state_dir, &handler),
        Utf8,
        Utf8,
        handler,
    ));
    common::wait_until(
        "everything processed and committed",
        // The backlog of six rounds (~35,000 views, each with its session and some with
        // sliding windows) takes ~70 s in a debug build on two cores.
        Duration::from_secs(240),
        || common::committed(&group, &topic, PARTITIONS) == common::end_offsets(&topic, PARTITIONS),
    )
    .await;
    running.stop().await.unwrap();
    let sent: Vec<Row> = common::read_all(&out, 1)
        .into_iter()
        .map(|(_, v, _)| serde_json::from_slice(&v.unwrap()).unwrap())
        .collect();
    let distinct: BTreeSet<Row> = sent.iter().cloned().collect();
    println!(
        "windows_crash: {produced} views ({late} late), {} windows ({kinds:?} minute, session \
         and sliding), {} rows sent ({} duplicates); final run {:.1} s, total {:.1} s",
        rows.len(),
        sent.len(),
        sent.len() - distinct.len(),
        final_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let missing: Vec<&Row> = rows.difference(&distinct).take(10).collect();
    let wrong: Vec<&Row> = distinct.difference(&rows).take(10).collect();
    assert!(
        missing.is_empty() && wrong.is_empty(),
        "after {rounds} SIGKILLs (seed {seed}), of {} windows: missing (first 10) \
         {missing:?}; wrong values (first 10) {wrong:?}",
        rows.len()
    );
}
