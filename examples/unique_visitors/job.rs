//! The unique-visitors job itself: its records, its handler and the views it generates. Shared
//! by the example (`main.rs`) and the throughput bench, which measures exactly this job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_stateful::codec::{Bincode, Json, Utf8};
use kafka_stateful::window::{ClosedWindow, WindowDef};
use kafka_stateful::{Handler, HandlerError, Output, PartitionContext, Record};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};

/// A page view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct View {
    pub page: String,
    pub user: String,
    /// Event time, milliseconds since the epoch.
    pub ts: i64,
}

/// A closed minute of a page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageMinute {
    pub page: String,
    pub window_start: i64,
    pub unique_visitors: u64,
    pub views: u64,
}

/// Per page and minute: the users seen, and `(unique, views)`.
pub struct UniqueVisitors {
    pub members: WindowDef<(String, String), ()>,
    pub counts: WindowDef<String, (u64, u64)>,
    output: Output<String, PageMinute>,
    /// Views handled (late ones included).
    pub handled: Arc<AtomicU64>,
    /// Page-minutes closed and sent.
    pub closed: Arc<AtomicU64>,
    /// The five busiest page-minutes closed.
    pub samples: Arc<Mutex<Vec<PageMinute>>>,
}

impl UniqueVisitors {
    pub fn new(output_topic: &str) -> Self {
        let (minute, grace) = (Duration::from_secs(60), Duration::from_secs(10));
        Self {
            // Its closes report nothing (the counts do): no read of its entries per close.
            members: WindowDef::tumbling("members", minute, grace, Bincode::new(), Bincode::new())
                .closes_silently(),
            counts: WindowDef::tumbling("counts", minute, grace, Utf8, Bincode::new()),
            output: Output::new(output_topic, Utf8, Json::new()),
            handled: Arc::default(),
            closed: Arc::default(),
            samples: Arc::default(),
        }
    }
}

impl Handler<String, View> for UniqueVisitors {
    /// The view's own time, not the Kafka timestamp.
    fn event_time(&self, record: &Record<String, View>) -> Option<i64> {
        record.value.as_ref().map(|v| v.ts)
    }

    async fn handle(
        &self,
        record: Record<String, View>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        self.handled.fetch_add(1, Ordering::Relaxed);
        let Some(view) = record.value else {
            return Ok(());
        };
        // Empty for a late view (its minute closed): it is counted late, nothing applied.
        let windows = ctx.window(&self.members)?.windows();
        let member = (view.page, view.user);
        let page = &member.0;
        for window in windows {
            let first_visit = {
                let mut members = ctx.window(&self.members)?;
                let first = members.get(window, &member)?.is_none();
                if first {
                    members.put(window, &member, &())?;
                }
                first
            };
            let mut counts = ctx.window(&self.counts)?;
            let (unique, views) = counts.get(window, page)?.unwrap_or((0, 0));
            counts.put(window, page, &(unique + u64::from(first_visit), views + 1))?;
        }
        Ok(())
    }

    async fn on_window_closed(
        &self,
        closed: ClosedWindow,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        if closed.store != self.counts.name() {
            return Ok(()); // the members of the minute: deleted, nothing to report
        }
        for (page, (unique_visitors, views)) in closed.entries(&self.counts)? {
            let result = PageMinute {
                page: page.clone(),
                window_start: closed.window.start,
                unique_visitors,
                views,
            };
            if self
                .closed
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(500)
            {
                tracing::debug!(?result, "minute closed");
            }
            // The five busiest page-minutes, for the summary.
            let mut samples = self.samples.lock().map_err(|_| "poisoned")?;
            samples.push(result.clone());
            samples.sort_by(|a, b| b.views.cmp(&a.views).then(a.page.cmp(&b.page)));
            samples.truncate(5);
            ctx.send(&self.output, Some(&page), Some(&result))?;
        }
        Ok(())
    }
}

/// View `i` of `n`, spread over ten minutes from `start` (ms): 1000 pages (a few popular), a
/// long tail of 100,000 users, 5% out of order within the grace period and 1% late.
pub fn generated_view(i: u64, n: u64, start: i64) -> View {
    let r = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let popular = (r >> 8) % 1000;
    let page = format!("/product/{}", popular * popular / 1000);
    let user = format!("user-{}", (r >> 24) % 100_000 * ((r >> 40) % 3 + 1) / 3);
    let span = 10 * 60_000i64;
    let mut ts = start + span * i as i64 / n.max(1) as i64;
    match r % 100 {
        0 => ts -= 90_000,    // late: its minute closed already
        1..=5 => ts -= 8_000, // out of order, within the grace period
        _ => {}
    }
    View { page, user, ts }
}

/// Produces views `0..n` of [`generated_view`] to `topic`, keyed by page, and waits for every
/// acknowledgement (at most 50 000 in flight: within librdkafka's default local queue).
pub async fn produce_views(
    producer: &FutureProducer,
    topic: &str,
    n: u64,
    start: i64,
) -> Result<(), KafkaError> {
    let mut pending = Vec::new();
    for i in 0..n {
        let view = generated_view(i, n, start);
        let value = serde_json::to_vec(&view).expect("a view encodes");
        let record = FutureRecord::to(topic).key(&view.page).payload(&value);
        pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
        if pending.len() >= 50_000 || i + 1 == n {
            for delivery in futures::future::join_all(pending.drain(..)).await {
                delivery
                    .map_err(|_| KafkaError::Canceled)?
                    .map_err(|(e, _)| e)?;
            }
        }
    }
    Ok(())
}
