//! Routing fetched records to per-partition queues, bounded in bytes and records, with
//! pause/resume bookkeeping.
//!
//! The router never blocks the poll loop and never drops a fetched record of an assigned
//! partition: records are collected into one [`RecordBatch`] per partition per poll round
//! and sent as a whole. A partition whose queue holds more than its budget (bytes or
//! records), or any partition while all queues together hold more than the process budget,
//! is reported for pausing; it is resumed once its queue drained to half its budget, so it
//! does not flap. Pausing is costly in librdkafka (it discards the partition's prefetched
//! records, which are fetched again on resume), so the budgets are sized to absorb
//! librdkafka's bursts when the handler keeps up.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rdkafka::message::BorrowedMessage;
use tokio::sync::mpsc;

use crate::batch::RecordBatch;
use crate::offset::{PartitionProgress, QueueGauge};

/// A topic and partition.
pub(crate) type TopicPartition = (String, i32);

/// Queue budgets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub(crate) partition_bytes: usize,
    pub(crate) partition_records: usize,
    pub(crate) total_bytes: usize,
}

struct Lane {
    tx: mpsc::UnboundedSender<RecordBatch>,
    filling: Option<RecordBatch>,
    gauge: Arc<QueueGauge>,
    /// Since when the partition is paused.
    paused: Option<std::time::Instant>,
    progress: Arc<PartitionProgress>,
}

pub(crate) struct Router {
    /// Open lanes; closed ones leave a hole that the next open reuses.
    lanes: Vec<Option<Lane>>,
    /// Lane index by topic, then partition (looked up by `&str`: no allocation per record).
    index: HashMap<String, HashMap<i32, usize>>,
    budget: Budget,
    /// The partition and lane of the previous record: librdkafka hands records over in runs
    /// per partition, so most records skip the map lookups.
    last: Option<(String, i32, usize)>,
}

impl Router {
    pub(crate) fn new(budget: Budget) -> Self {
        Self {
            lanes: Vec::new(),
            index: HashMap::new(),
            budget,
            last: None,
        }
    }

    /// Opens a lane for an assigned partition; returns the worker's end of its queue.
    pub(crate) fn open(
        &mut self,
        (topic, partition): TopicPartition,
        progress: Arc<PartitionProgress>,
        gauge: Arc<QueueGauge>,
    ) -> mpsc::UnboundedReceiver<RecordBatch> {
        self.close(&(topic.clone(), partition));
        let (tx, rx) = mpsc::unbounded_channel();
        let lane = Lane {
            tx,
            filling: None,
            gauge,
            paused: None,
            progress,
        };
        let slot = match self.lanes.iter().position(Option::is_none) {
            Some(free) => {
                self.lanes[free] = Some(lane);
                free
            }
            None => {
                self.lanes.push(Some(lane));
                self.lanes.len() - 1
            }
        };
        self.index.entry(topic).or_default().insert(partition, slot);
        rx
    }

    /// Closes a revoked partition's lane: nothing more is routed to it. Records still queued
    /// were never processed, so they are not committed either.
    pub(crate) fn close(&mut self, (topic, partition): &TopicPartition) {
        self.last = None;
        if let Some(partitions) = self.index.get_mut(topic) {
            if let Some(slot) = partitions.remove(partition) {
                self.lanes[slot] = None;
            }
            if partitions.is_empty() {
                self.index.remove(topic);
            }
        }
    }

    fn slot(&self, topic: &str, partition: i32) -> Option<usize> {
        self.index.get(topic)?.get(&partition).copied()
    }

    #[cfg(test)]
    pub(crate) fn is_open(&self, (topic, partition): &TopicPartition) -> bool {
        self.slot(topic, *partition).is_some()
    }

    /// Adds a fetched record to its partition's batch. Records of partitions without a lane
    /// (revoked meanwhile) are dropped: they are uncommitted and their new owner fetches them.
    pub(crate) fn push(&mut self, msg: &BorrowedMessage<'_>) {
        use rdkafka::message::Message;
        let (topic, partition) = (msg.topic(), msg.partition());
        let slot = match &self.last {
            Some((t, p, slot)) if *p == partition && t == topic => Some(*slot),
            _ => {
                let slot = self.slot(topic, partition);
                self.last = slot.map(|s| (topic.to_string(), partition, s));
                slot
            }
        };
        if let Some(Some(lane)) = slot.map(|s| &mut self.lanes[s]) {
            lane.filling
                .get_or_insert_with(RecordBatch::default)
                .push(msg);
        }
    }

    #[cfg(test)]
    pub(crate) fn push_batch(&mut self, (topic, partition): &TopicPartition, batch: RecordBatch) {
        if let Some(Some(lane)) = self.slot(topic, *partition).map(|s| &mut self.lanes[s]) {
            lane.filling = Some(batch);
        }
    }

    /// Open lanes with their topic and partition.
    fn open_lanes(&mut self) -> impl Iterator<Item = (TopicPartition, &mut Lane)> {
        let names: Vec<(usize, TopicPartition)> = self
            .index
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(move |(p, s)| (*s, (t.clone(), *p))))
            .collect();
        let mut lanes: Vec<Option<&mut Lane>> = self.lanes.iter_mut().map(Option::as_mut).collect();
        names
            .into_iter()
            .filter_map(move |(slot, tp)| lanes[slot].take().map(|lane| (tp, lane)))
    }

    /// Sends the batches collected this round. Returns the partitions to pause.
    pub(crate) fn send(&mut self) -> Vec<TopicPartition> {
        let mut sent_any = false;
        for lane in self.lanes.iter_mut().flatten() {
            {
                let Some(batch) = lane.filling.take() else {
                    continue;
                };
                let (records, bytes) = (batch.records.len(), batch.bytes);
                // Counted before sending, so the worker never subtracts what was not added.
                lane.gauge.records.fetch_add(records, Ordering::AcqRel);
                lane.gauge.bytes.fetch_add(bytes, Ordering::AcqRel);
                if lane.tx.send(batch).is_err() {
                    // The worker stopped (it failed, and the poll loop learns why through
                    // its error channel, or it was fenced): keep nothing.
                    lane.gauge.taken(records, bytes);
                }
                sent_any = true;
            }
        }
        if !sent_any {
            return Vec::new();
        }
        let over_total = self.total_bytes() > self.budget.total_bytes;
        let budget = self.budget;
        let mut pause = Vec::new();
        for (tp, lane) in self.open_lanes() {
            let bytes = lane.gauge.bytes.load(Ordering::Acquire);
            let records = lane.gauge.records.load(Ordering::Acquire);
            let over = bytes > budget.partition_bytes
                || records > budget.partition_records
                || (over_total && records > 0);
            if over && lane.paused.is_none() {
                lane.paused = Some(std::time::Instant::now());
                lane.progress.paused.store(true, Ordering::Relaxed);
                lane.progress.pauses.fetch_add(1, Ordering::Relaxed);
                pause.push(tp);
            }
        }
        pause
    }

    fn total_bytes(&self) -> usize {
        self.lanes
            .iter()
            .flatten()
            .map(|l| l.gauge.bytes.load(Ordering::Acquire))
            .sum()
    }

    /// Paused partitions whose queue drained to half its budget (while all queues together
    /// are below half the process budget): to resume.
    pub(crate) fn drained(&mut self) -> Vec<TopicPartition> {
        if !self.has_paused() {
            return Vec::new();
        }
        let total_ok = self.total_bytes() * 2 <= self.budget.total_bytes;
        let budget = self.budget;
        let mut resume = Vec::new();
        for (tp, lane) in self.open_lanes() {
            let bytes = lane.gauge.bytes.load(Ordering::Acquire);
            let records = lane.gauge.records.load(Ordering::Acquire);
            if let Some(since) = lane.paused.filter(|_| {
                total_ok
                    && bytes * 2 <= budget.partition_bytes
                    && records * 2 <= budget.partition_records
            }) {
                lane.paused = None;
                lane.progress.paused.store(false, Ordering::Relaxed);
                lane.progress
                    .paused_ms
                    .fetch_add(since.elapsed().as_millis() as u64, Ordering::Relaxed);
                resume.push(tp);
            }
        }
        resume
    }

    /// Whether any partition is paused: the poll loop then polls more often, so a drained
    /// queue is resumed without waiting out a full poll timeout.
    pub(crate) fn has_paused(&self) -> bool {
        self.lanes.iter().flatten().any(|l| l.paused.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        ("t".to_string(), p)
    }

    fn batch(n: usize) -> RecordBatch {
        let mut b = RecordBatch::default();
        for i in 0..n {
            b.push_raw(i as i64, Some(b"k"), Some(&[0u8; 36]), &[]);
        }
        b
    }

    const BUDGET: Budget = Budget {
        partition_bytes: 1000,
        partition_records: 100,
        total_bytes: 10_000,
    };

    #[test]
    fn a_partition_over_its_budget_pauses_once_keeps_every_record_and_resumes_at_half() {
        let mut router = Router::new(BUDGET);
        let gauge = Arc::new(QueueGauge::default());
        let mut rx = router.open(tp(0), Arc::default(), gauge.clone());
        // 101 bytes per record: 9 records fit in 1000 bytes, the 10th goes over.
        router.push_batch(&tp(0), batch(9));
        assert!(router.send().is_empty());
        router.push_batch(&tp(0), batch(2));
        assert_eq!(router.send(), vec![tp(0)], "over budget: pause");
        router.push_batch(&tp(0), batch(1));
        assert!(router.send().is_empty(), "already paused: no second pause");
        assert_eq!(gauge.records.load(Ordering::Relaxed), 12, "nothing dropped");
        assert!(router.drained().is_empty());
        // The worker takes the first two batches (11 records): 1 left, below half: resume.
        for _ in 0..2 {
            let b = rx.try_recv().unwrap();
            gauge.taken(b.records.len(), b.bytes);
        }
        assert_eq!(router.drained(), vec![tp(0)]);
        assert!(!router.has_paused());
        assert_eq!(rx.try_recv().unwrap().records.len(), 1, "order is kept");
    }

    #[test]
    fn one_full_partition_does_not_pause_another_unless_the_process_budget_is_spent() {
        let mut router = Router::new(Budget {
            total_bytes: 2500,
            ..BUDGET
        });
        let _rx0 = router.open(tp(0), Arc::default(), Arc::default());
        let _rx1 = router.open(tp(1), Arc::default(), Arc::default());
        router.push_batch(&tp(0), batch(11));
        assert_eq!(router.send(), vec![tp(0)]);
        router.push_batch(&tp(1), batch(5));
        assert!(router.send().is_empty(), "partition 1 is within its budget");
        router.push_batch(&tp(1), batch(9));
        // 11 + 14 records of 101 bytes: 2525 bytes, over the process budget.
        assert_eq!(router.send(), vec![tp(1)]);
    }

    #[test]
    fn records_for_closed_partitions_are_dropped() {
        let mut router = Router::new(BUDGET);
        let gauge = Arc::new(QueueGauge::default());
        let _rx = router.open(tp(0), Arc::default(), gauge.clone());
        router.close(&tp(0));
        assert!(!router.is_open(&tp(0)));
        router.push_batch(&tp(0), batch(3));
        assert!(router.send().is_empty());
        assert_eq!(gauge.records.load(Ordering::Relaxed), 0);
    }
}
