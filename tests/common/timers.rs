//! Shared by the timer tests (`timers_restart.rs`, `timers_move.rs`): a handler that
//! schedules timers from records and records every firing, in a store, an output topic and
//! memory. Included with `#[path]` by those tests only.
#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::common::{self, Probe};
use kafka_stateful::codec::{Bincode, Json, Utf8};
use kafka_stateful::timer::{TimeKind, Timer};
use kafka_stateful::{
    ConsumerConfig, Handler, HandlerError, Output, PartitionContext, Record, StoreDef,
};
use serde::{Deserialize, Serialize};

pub const WAIT: Duration = Duration::from_secs(60);
pub const MINUTE: i64 = 60_000;
pub const BASE: i64 = 1_700_000_000_000 / MINUTE * MINUTE;
/// Keys per kind of timer; key `<kind>-<k>` lives in partition `k % 2`.
pub const KEYS: i32 = 4;

/// A timer that fired, as sent to the output topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Firing {
    pub instance: String,
    pub partition: i32,
    pub key: String,
    pub kind: String,
    pub at: i64,
    /// The key's count in the `fired` store after this firing.
    pub count: u64,
    /// The timer's clock (stream time or wall clock) when it fired.
    pub clock: i64,
}

#[derive(Clone)]
pub struct Scheduler {
    pub instance: String,
    pub fired: StoreDef<String, u64>,
    pub output: Output<String, Firing>,
    pub firings: Arc<Mutex<Vec<Firing>>>,
    pub probe: Option<Arc<Probe>>,
}

impl Scheduler {
    pub fn new(instance: &str, out: &str) -> Self {
        Self {
            instance: instance.to_string(),
            fired: StoreDef::new("fired", Utf8, Bincode::new()),
            output: Output::new(out, Utf8, Json::new()),
            firings: Arc::default(),
            probe: None,
        }
    }

    pub fn fired(&self) -> Vec<Firing> {
        self.firings.lock().unwrap().clone()
    }
}

impl Handler<String, String> for Scheduler {
    fn event_time(&self, r: &Record<String, String>) -> Option<i64> {
        r.value.as_deref()?.split_once('@')?.1.parse().ok()
    }

    async fn handle(
        &self,
        r: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let key = r.key.ok_or("no key")?;
        let value = r.value.ok_or("no value")?;
        let (command, _) = value.split_once('@').ok_or("no event time")?;
        match command.split_once(':') {
            Some(("stream", at)) => ctx.schedule(TimeKind::Stream, at.parse()?, key.as_bytes())?,
            Some(("wall", at)) => ctx.schedule(TimeKind::Wall, at.parse()?, key.as_bytes())?,
            _ => {} // a tick: stream time moved
        }
        Ok(())
    }

    async fn on_timer(&self, timer: Timer, ctx: &mut PartitionContext) -> Result<(), HandlerError> {
        let key = String::from_utf8(timer.key)?;
        let count = {
            let mut fired = ctx.store(&self.fired)?;
            let n = fired.get(&key)?.unwrap_or(0) + 1;
            fired.put(&key, &n)?;
            n
        };
        let firing = Firing {
            instance: self.instance.clone(),
            partition: ctx.partition(),
            key: key.clone(),
            kind: format!("{:?}", timer.kind).to_lowercase(),
            at: timer.at,
            count,
            clock: match timer.kind {
                TimeKind::Stream => ctx.stream_time(),
                _ => common::now_ms() as i64,
            },
        };
        ctx.send(&self.output, Some(&key), Some(&firing))?;
        if let Some(probe) = &self.probe {
            probe.line(&format!("fired {key} {count}"));
        }
        self.firings.lock().unwrap().push(firing);
        Ok(())
    }

    async fn on_assigned(&self, ctx: &mut PartitionContext) -> Result<(), HandlerError> {
        if let Some(probe) = &self.probe {
            probe.line(&format!("assigned {}", ctx.partition()));
        }
        Ok(())
    }
}

pub fn config(
    topic: &str,
    group: &str,
    instance: &str,
    dir: &Path,
    flush: Duration,
) -> ConsumerConfig {
    let h = Scheduler::new(instance, "unused");
    ConsumerConfig::builder(common::bootstrap(), group, [topic])
        .instance_id(instance)
        .session_timeout(Duration::from_secs(10))
        .commit_interval(Duration::from_millis(200))
        .flush_interval(flush)
        .state_dir(dir)
        .store(&h.fired)
        .timers()
        .build()
        .unwrap()
}

/// A stream-time and a wall-clock timer for each of `KEYS` keys; stream time set to `BASE`.
pub fn schedules(wall_at: i64) -> Vec<(i32, String, String)> {
    (0..KEYS)
        .flat_map(|k| {
            let stream_at = BASE + i64::from(k + 1) * MINUTE;
            [
                (
                    k % 2,
                    format!("stream-{k}"),
                    format!("stream:{stream_at}@{BASE}"),
                ),
                (k % 2, format!("wall-{k}"), format!("wall:{wall_at}@{BASE}")),
            ]
        })
        .collect()
}

/// One record per partition moving stream time to `ts`.
pub fn ticks(ts: i64) -> Vec<(i32, String, String)> {
    (0..2)
        .map(|p| (p, format!("tick-{p}"), format!("tick@{ts}")))
        .collect()
}

/// Waits until `group` committed every partition of `topic` (2) to its end.
pub async fn wait_committed_to_end(group: &str, topic: &str) {
    common::wait_until("everything committed", WAIT, || {
        common::committed(group, topic, 2) == common::end_offsets(topic, 2)
    })
    .await;
}
