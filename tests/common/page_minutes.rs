//! The windowed job the window tests run against the broker, on the event time carried in
//! the value (`"<user>@<ts>"`), with every kind of window:
//! - distinct users (one member entry per `(page, user)`) and views per page and one-minute
//!   tumbling window with 10 s grace;
//! - views per page session (20 s inactivity gap, 10 s grace);
//! - for the users whose name ends in `0`, views and distinct pages per user sliding window
//!   (30 s time difference, 10 s grace; a fraction of the views, as every view opens two
//!   windows).
//!
//! Every closed window's [`Row`] goes to one output topic. Also the same rows computed
//! without the library ([`expected`]), to check the output against. Included with
//! `#[path]` by `windows.rs` and `windows_crash.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kafka_stateful::codec::{Bincode, Json, Utf8};
use kafka_stateful::window::{ClosedWindow, SessionDef, SlidingDef, WindowDef};
use kafka_stateful::{
    ConsumerConfigBuilder, Handler, HandlerError, Output, PartitionContext, Record,
};
use serde::{Deserialize, Serialize};

pub const MINUTE: i64 = 60_000;
pub const GRACE: i64 = 10_000;
pub const SESSION_GAP: i64 = 20_000;
pub const SESSION_GRACE: i64 = 10_000;
pub const SLIDE: i64 = 30_000;
pub const SLIDE_GRACE: i64 = 10_000;

/// A closed window's result, as sent on its close. Windows are `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Row {
    Minute {
        page: String,
        start: i64,
        unique: u64,
        views: u64,
    },
    Session {
        page: String,
        start: i64,
        end: i64,
        views: u64,
    },
    /// `unique` counts distinct pages.
    Sliding {
        user: String,
        start: i64,
        end: i64,
        unique: u64,
        views: u64,
    },
}

impl Row {
    /// Which window it is: a minute by its start (any page: a minute closes for all at
    /// once), a session or sliding window by its page and start.
    pub fn window(&self) -> (u8, String, i64) {
        match self {
            Row::Minute { start, .. } => (0, String::new(), *start),
            Row::Session { page, start, .. } => (1, page.clone(), *start),
            Row::Sliding { user, start, .. } => (2, user.clone(), *start),
        }
    }
}

/// `"<user>@<ts>"` → `(user, ts)`.
pub fn parse(value: &str) -> Option<(String, i64)> {
    let (user, ts) = value.split_once('@')?;
    Some((user.to_string(), ts.parse().ok()?))
}

#[derive(Clone)]
pub struct PageMinutes {
    pub members: WindowDef<(String, String), ()>,
    pub counts: WindowDef<String, (u64, u64)>,
    /// Views per page session.
    pub sessions: SessionDef<String, u64>,
    /// The pages of a user's views, for sliding windows.
    pub recent: SlidingDef<String, String>,
    pub output: Output<String, Row>,
    /// Sleeps 1 ms on every other record (a child that must stay behind its feed).
    pub slow: bool,
    /// Called with a window's start when it closes, before its rows are sent.
    pub on_close: Option<Arc<dyn Fn(i64) + Send + Sync>>,
}

impl PageMinutes {
    pub fn new(output_topic: &str) -> Self {
        let (minute, grace) = (
            Duration::from_millis(MINUTE as u64),
            Duration::from_millis(GRACE as u64),
        );
        Self {
            members: WindowDef::tumbling("members", minute, grace, Bincode::new(), Bincode::new()),
            counts: WindowDef::tumbling("counts", minute, grace, Utf8, Bincode::new()),
            sessions: SessionDef::new(
                "sessions",
                millis(SESSION_GAP),
                millis(SESSION_GRACE),
                Utf8,
                Bincode::new(),
            ),
            recent: SlidingDef::new("recent", millis(SLIDE), millis(SLIDE_GRACE), Utf8, Utf8),
            output: Output::new(output_topic, Utf8, Json::new()),
            slow: false,
            on_close: None,
        }
    }
}

/// Whether a user's views go to the sliding windows.
pub fn slides(user: &str) -> bool {
    user.ends_with('0')
}

fn millis(ms: i64) -> Duration {
    Duration::from_millis(ms as u64)
}

impl PageMinutes {
    /// Declares the job's window stores.
    pub fn declare(&self, builder: ConsumerConfigBuilder) -> ConsumerConfigBuilder {
        builder
            .window(&self.members)
            .window(&self.counts)
            .session_window(&self.sessions)
            .sliding_window(&self.recent)
    }
}

impl Handler<String, String> for PageMinutes {
    fn event_time(&self, r: &Record<String, String>) -> Option<i64> {
        parse(r.value.as_deref()?).map(|(_, ts)| ts)
    }

    async fn handle(
        &self,
        r: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let page = r.key.ok_or("no page")?;
        let (user, _) = parse(r.value.as_deref().ok_or("no value")?).ok_or("bad value")?;
        if self.slow && r.offset % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let windows = ctx.window(&self.members)?.windows();
        let member = (page, user);
        for w in windows {
            let first = {
                let mut members = ctx.window(&self.members)?;
                let first = members.get(w, &member)?.is_none();
                if first {
                    members.put(w, &member, &())?;
                }
                first
            };
            let mut counts = ctx.window(&self.counts)?;
            let (u, v) = counts.get(w, &member.0)?.unwrap_or((0, 0));
            counts.put(w, &member.0, &(u + u64::from(first), v + 1))?;
        }
        ctx.session_window(&self.sessions)?.aggregate(
            &member.0,
            |a, b| a + b,
            |views| views.unwrap_or(0) + 1,
        )?;
        if slides(&member.1) {
            ctx.sliding_window(&self.recent)?
                .add(&member.1, &member.0)?;
        }
        Ok(())
    }

    async fn on_window_closed(
        &self,
        closed: ClosedWindow,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let (start, end) = (closed.window.start, closed.window.end);
        let rows: Vec<Row> = if closed.store == self.counts.name() {
            if let Some(on_close) = &self.on_close {
                on_close(start);
            }
            let entries = closed.entries(&self.counts)?;
            entries
                .into_iter()
                .map(|(page, (unique, views))| Row::Minute {
                    page,
                    start,
                    unique,
                    views,
                })
                .collect()
        } else if closed.store == self.sessions.name() {
            let entries = closed.entries(&self.sessions)?;
            entries
                .into_iter()
                .map(|(page, views)| Row::Session {
                    page,
                    start,
                    end,
                    views,
                })
                .collect()
        } else if closed.store == self.recent.name() {
            let records = closed.entries(&self.recent)?;
            let user = records.first().ok_or("an empty sliding window")?.0.clone();
            let pages: BTreeSet<&String> = records.iter().map(|(_, page)| page).collect();
            vec![Row::Sliding {
                user,
                start,
                end,
                unique: pages.len() as u64,
                views: records.len() as u64,
            }]
        } else {
            Vec::new()
        };
        for row in rows {
            let key = match &row {
                Row::Minute { page, .. } | Row::Session { page, .. } => page.clone(),
                Row::Sliding { user, .. } => user.clone(),
            };
            ctx.send(&self.output, Some(&key), Some(&row))?;
        }
        Ok(())
    }
}

/// The rows a correct run sends, and the late views, for `views` `(partition, page, user, ts)`
/// in each partition's offset order, computed without the library. Stream time is the
/// highest event time so far, per partition. A view is late (counted once) when it is late
/// for any kind of window:
/// - a minute window `[start, start + 1 min)` is closed once `stream time >= end + grace`;
///   its row is due then;
/// - a session `[first, last]` of a page is closed once `stream time > last + gap + grace`;
///   a view at `t` is late for sessions when its own session would be closed, and otherwise
///   joins (merges) the page's open sessions within `gap` of `t`;
/// - a view at `t` of a sliding user opens that user's sliding windows `[t - 30 s, t]`
///   (unless closed already) and `[t + 1, t + 1 + 30 s]`, each closed once stream time passes its end plus grace and
///   computed from the user's views kept at that moment; a right window is reported when
///   not empty and not the same as the left window ending where it ends; a view is late
///   when every window that can hold it closed (`stream time > t + 30 s + grace`).
pub fn expected(
    views: impl IntoIterator<Item = (i32, String, String, i64)>,
) -> (BTreeSet<Row>, usize) {
    let (rows, late, _) = simulate(views);
    (rows, late)
}

/// The sessions still open at the end, per page: `[first, last + 1)` and views.
#[allow(dead_code)] // not every test that includes this file queries them
pub fn open_sessions(
    views: impl IntoIterator<Item = (i32, String, String, i64)>,
) -> BTreeMap<String, Vec<(i64, i64, u64)>> {
    let (_, _, sessions) = simulate(views);
    let mut open: BTreeMap<String, Vec<(i64, i64, u64)>> = BTreeMap::new();
    for partition in sessions.into_values() {
        for (page, sessions) in partition.0 {
            let sessions = sessions
                .into_iter()
                .map(|(first, last, views)| (first, last + 1, views));
            open.entry(page).or_default().extend(sessions);
        }
    }
    for sessions in open.values_mut() {
        sessions.sort();
    }
    open.retain(|_, sessions| !sessions.is_empty());
    open
}

type Simulated = (BTreeSet<Row>, usize, BTreeMap<i32, Sessions>);

fn simulate(views: impl IntoIterator<Item = (i32, String, String, i64)>) -> Simulated {
    let mut stream: BTreeMap<i32, i64> = BTreeMap::new();
    let mut windows: BTreeMap<(i32, i64, String), (BTreeSet<String>, u64)> = BTreeMap::new();
    let mut rows = BTreeSet::new();
    let mut sessions: BTreeMap<i32, Sessions> = BTreeMap::new();
    let mut sliding: BTreeMap<i32, Sliding> = BTreeMap::new();
    let mut late = 0;
    for (partition, page, user, ts) in views {
        let now = stream.entry(partition).or_insert(i64::MIN);
        *now = (*now).max(ts);
        let now = *now;
        let start = ts.div_euclid(MINUTE) * MINUTE;
        let minute_late = now >= start + MINUTE + GRACE;
        if !minute_late {
            let w = windows.entry((partition, start, page.clone())).or_default();
            w.0.insert(user.clone());
            w.1 += 1;
        }
        let sessions = sessions.entry(partition).or_default();
        let session_late = sessions.view(&page, ts, now, &mut rows);
        let sliding = sliding.entry(partition).or_default();
        let sliding_late = slides(&user) && sliding.view(&user, &page, ts, now);
        sliding.close(now, &mut rows);
        late += usize::from(minute_late || session_late || sliding_late);
    }
    rows.extend(
        windows
            .into_iter()
            .filter(|((p, start, _), _)| stream[p] >= start + MINUTE + GRACE)
            .map(|((_, start, page), (users, views))| Row::Minute {
                page,
                start,
                unique: users.len() as u64,
                views,
            }),
    );
    (rows, late, sessions)
}

/// A partition's open sessions per page: `(first, last, views)`.
#[derive(Default)]
struct Sessions(BTreeMap<String, Vec<(i64, i64, u64)>>);

impl Sessions {
    /// Adds a view (merging the open sessions within the gap), then closes the sessions
    /// stream time `now` passed (after every view, as timers fire); whether it was late.
    fn view(&mut self, page: &str, ts: i64, now: i64, rows: &mut BTreeSet<Row>) -> bool {
        let closed = |last: i64| now > last + SESSION_GAP + SESSION_GRACE;
        let late = closed(ts);
        if !late {
            let open = self.0.entry(page.to_string()).or_default();
            let near = |s: &(i64, i64, u64)| {
                !closed(s.1) && s.1 >= ts - SESSION_GAP && s.0 <= ts + SESSION_GAP
            };
            let (mut first, mut last, mut views) = (ts, ts, 1);
            for s in open.iter().filter(|s| near(s)) {
                first = first.min(s.0);
                last = last.max(s.1);
                views += s.2;
            }
            open.retain(|s| !near(s));
            open.push((first, last, views));
        }
        for (p, open) in &mut self.0 {
            for &(first, last, views) in open.iter().filter(|s| closed(s.1)) {
                let (page, start, end) = (p.clone(), first, last + 1);
                rows.insert(Row::Session {
                    page,
                    start,
                    end,
                    views,
                });
            }
            open.retain(|s| !closed(s.1));
        }
        late
    }
}

/// A partition's sliding windows: the views (pages) each user keeps, and pending window
/// closes `(at, user, t, right)`.
#[derive(Default)]
struct Sliding {
    kept: BTreeMap<String, Vec<(i64, String)>>,
    closes: BTreeSet<(i64, String, i64, bool)>,
}

impl Sliding {
    /// Adds a view; whether it was late.
    fn view(&mut self, user: &str, page: &str, ts: i64, now: i64) -> bool {
        let late = now > ts + SLIDE + SLIDE_GRACE;
        if !late {
            let kept = self.kept.entry(user.to_string()).or_default();
            kept.push((ts, page.to_string()));
            if now <= ts + SLIDE_GRACE {
                self.closes
                    .insert((ts + SLIDE_GRACE + 1, user.to_string(), ts, false));
            }
            self.closes
                .insert((ts + 1 + SLIDE + SLIDE_GRACE + 1, user.to_string(), ts, true));
        }
        late
    }

    /// Closes the windows stream time `now` passed (after every view, as timers fire).
    fn close(&mut self, now: i64, rows: &mut BTreeSet<Row>) {
        while let Some(first) = self.closes.first().cloned() {
            if first.0 > now {
                break;
            }
            self.closes.pop_first();
            let (_, user, t, right) = first;
            let kept = self.kept.entry(user.clone()).or_default();
            let (from, to) = if right {
                (t + 1, t + 1 + SLIDE)
            } else {
                (t - SLIDE, t)
            };
            let inside: Vec<&(i64, String)> = kept
                .iter()
                .filter(|(at, _)| (from..=to).contains(at))
                .collect();
            let same_as_left = right && inside.iter().any(|(at, _)| *at == to);
            if !inside.is_empty() && !same_as_left {
                let pages: BTreeSet<&String> = inside.iter().map(|(_, p)| p).collect();
                rows.insert(Row::Sliding {
                    user: user.clone(),
                    start: from,
                    end: to + 1,
                    unique: pages.len() as u64,
                    views: inside.len() as u64,
                });
            }
            if right {
                kept.retain(|(at, _)| *at != t);
            }
        }
    }
}
