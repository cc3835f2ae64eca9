//! The windowed job the window tests run against the broker: distinct users (one member entry
//! per `(page, user)`) and views per page and one-minute tumbling window with 10 s grace, on
//! the event time carried in the value (`"<user>@<ts>"`); a closed window's
//! `(page, window_start, unique_users, views)` goes to an output topic. Also the same
//! figures computed without the library, to check the output against. Included with
//! `#[path]` by `windows.rs` and `windows_crash.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kafka_stateful::codec::{Bincode, Json, Utf8};
use kafka_stateful::window::{ClosedWindow, WindowDef};
use kafka_stateful::{Handler, HandlerError, Output, PartitionContext, Record};

pub const MINUTE: i64 = 60_000;
pub const GRACE: i64 = 10_000;

/// `(page, window_start, unique_users, views)`, as sent on window close.
pub type Row = (String, i64, u64, u64);

/// `"<user>@<ts>"` → `(user, ts)`.
pub fn parse(value: &str) -> Option<(String, i64)> {
    let (user, ts) = value.split_once('@')?;
    Some((user.to_string(), ts.parse().ok()?))
}

#[derive(Clone)]
pub struct PageMinutes {
    pub members: WindowDef<(String, String), ()>,
    pub counts: WindowDef<String, (u64, u64)>,
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
            output: Output::new(output_topic, Utf8, Json::new()),
            slow: false,
            on_close: None,
        }
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
        Ok(())
    }

    async fn on_window_closed(
        &self,
        closed: ClosedWindow,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        if closed.store != self.counts.name() {
            return Ok(());
        }
        if let Some(on_close) = &self.on_close {
            on_close(closed.window.start);
        }
        for (page, (u, v)) in closed.entries(&self.counts)? {
            let row = (page.clone(), closed.window.start, u, v);
            ctx.send(&self.output, Some(&page), Some(&row))?;
        }
        Ok(())
    }
}

/// The rows a correct run sends, and the late views, for `views` `(partition, page, user, ts)`
/// in each partition's offset order: stream time is the highest event time so far; a view
/// whose window closed (`stream time >= end + grace`) is late and not applied; a window's row
/// is due once stream time passed its end plus grace.
pub fn expected(
    views: impl IntoIterator<Item = (i32, String, String, i64)>,
) -> (BTreeSet<Row>, usize) {
    let mut stream: BTreeMap<i32, i64> = BTreeMap::new();
    let mut windows: BTreeMap<(i32, i64, String), (BTreeSet<String>, u64)> = BTreeMap::new();
    let mut late = 0;
    for (partition, page, user, ts) in views {
        let now = stream.entry(partition).or_insert(i64::MIN);
        *now = (*now).max(ts);
        let start = ts.div_euclid(MINUTE) * MINUTE;
        if *now >= start + MINUTE + GRACE {
            late += 1;
            continue;
        }
        let w = windows.entry((partition, start, page)).or_default();
        w.0.insert(user);
        w.1 += 1;
    }
    let rows = windows
        .into_iter()
        .filter(|((p, start, _), _)| stream[p] >= start + MINUTE + GRACE)
        .map(|((_, start, page), (users, views))| (page, start, users.len() as u64, views))
        .collect();
    (rows, late)
}
