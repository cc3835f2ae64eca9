//! Routing fetched records to per-partition bounded queues, with pause/resume bookkeeping.
//!
//! The router never blocks the poll loop: a record that does not fit is kept in the
//! partition's overflow (records fetched before a pause took effect are never dropped) and
//! the partition is reported for pausing. It is reported for resuming once its overflow is
//! empty and its queue is at most half full, so a partition does not flap on every record.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc::{self, error::TrySendError};

use crate::offset::PartitionProgress;

/// A topic and partition.
pub(crate) type TopicPartition = (String, i32);

struct Lane<M> {
    tx: mpsc::Sender<M>,
    overflow: VecDeque<M>,
    paused: bool,
    progress: Arc<PartitionProgress>,
}

pub(crate) struct Router<M> {
    lanes: HashMap<TopicPartition, Lane<M>>,
    capacity: usize,
}

impl<M> Router<M> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            lanes: HashMap::new(),
            capacity,
        }
    }

    /// Opens a lane for an assigned partition; returns the worker's end of its queue.
    pub(crate) fn open(
        &mut self,
        tp: TopicPartition,
        progress: Arc<PartitionProgress>,
    ) -> mpsc::Receiver<M> {
        let (tx, rx) = mpsc::channel(self.capacity);
        self.lanes.insert(
            tp,
            Lane {
                tx,
                overflow: VecDeque::new(),
                paused: false,
                progress,
            },
        );
        rx
    }

    /// Closes a revoked partition's lane: nothing more is routed to it and its overflow is
    /// dropped (those records were never processed, so they are not committed either).
    pub(crate) fn close(&mut self, tp: &TopicPartition) {
        self.lanes.remove(tp);
    }

    #[cfg(test)]
    pub(crate) fn is_open(&self, tp: &TopicPartition) -> bool {
        self.lanes.contains_key(tp)
    }

    /// Routes one record. Returns `Some(tp)` when the partition must now be paused.
    /// Records of partitions without a lane (revoked meanwhile) are dropped: they are
    /// uncommitted and will be fetched again by their new owner.
    pub(crate) fn route(&mut self, tp: &TopicPartition, msg: M) -> Option<TopicPartition> {
        let lane = self.lanes.get_mut(tp)?;
        if !lane.overflow.is_empty() {
            lane.overflow.push_back(msg);
            return None;
        }
        match lane.tx.try_send(msg) {
            Ok(()) => {
                lane.progress.queued.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(TrySendError::Full(msg)) => {
                lane.overflow.push_back(msg);
                if lane.paused {
                    None
                } else {
                    lane.paused = true;
                    lane.progress.paused.store(true, Ordering::Relaxed);
                    Some(tp.clone())
                }
            }
            // The worker stopped (it failed; the poll loop learns why through its error
            // channel). Keep nothing: the record stays uncommitted.
            Err(TrySendError::Closed(_)) => None,
        }
    }

    /// Moves overflow into queues that have room, and reports paused partitions whose
    /// queue drained to half its capacity.
    pub(crate) fn drain_overflow(&mut self) -> Vec<TopicPartition> {
        let mut resume = Vec::new();
        for (tp, lane) in &mut self.lanes {
            while let Some(msg) = lane.overflow.pop_front() {
                match lane.tx.try_send(msg) {
                    Ok(()) => {
                        lane.progress.queued.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(TrySendError::Full(msg)) => {
                        lane.overflow.push_front(msg);
                        break;
                    }
                    Err(TrySendError::Closed(_)) => {
                        lane.overflow.clear();
                        break;
                    }
                }
            }
            if lane.paused && lane.overflow.is_empty() && lane.tx.capacity() * 2 >= self.capacity {
                lane.paused = false;
                lane.progress.paused.store(false, Ordering::Relaxed);
                resume.push(tp.clone());
            }
        }
        resume
    }

    /// Whether any partition is paused (or has overflow to move): the poll loop then
    /// polls briefly, so a drained queue is refilled and resumed without waiting out a full
    /// poll timeout.
    pub(crate) fn has_backlog(&self) -> bool {
        self.lanes
            .values()
            .any(|l| l.paused || !l.overflow.is_empty())
    }

    /// Records buffered outside the queues, across partitions.
    #[cfg(test)]
    pub(crate) fn overflow_len(&self) -> usize {
        self.lanes.values().map(|l| l.overflow.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        ("t".to_string(), p)
    }

    #[test]
    fn full_queue_pauses_once_and_keeps_every_record() {
        let mut router = Router::new(2);
        let mut rx = router.open(tp(0), Arc::default());
        assert_eq!(router.route(&tp(0), 1), None);
        assert_eq!(router.route(&tp(0), 2), None);
        assert_eq!(router.route(&tp(0), 3), Some(tp(0)), "third record pauses");
        assert_eq!(
            router.route(&tp(0), 4),
            None,
            "already paused: no second pause"
        );
        assert_eq!(router.overflow_len(), 2);

        // Nothing was drained yet: no resume.
        assert!(router.drain_overflow().is_empty());
        // The worker takes two; the two overflow records move in; queue full again: no resume.
        assert_eq!(rx.try_recv().unwrap(), 1);
        assert_eq!(rx.try_recv().unwrap(), 2);
        assert!(router.drain_overflow().is_empty());
        assert_eq!(router.overflow_len(), 0);
        // The worker takes one: half empty, overflow empty: resume.
        assert_eq!(rx.try_recv().unwrap(), 3);
        assert_eq!(router.drain_overflow(), vec![tp(0)]);
        assert_eq!(rx.try_recv().unwrap(), 4, "order is kept across the pause");
    }

    #[test]
    fn one_full_partition_does_not_pause_another() {
        let mut router = Router::new(1);
        let _rx0 = router.open(tp(0), Arc::default());
        let mut rx1 = router.open(tp(1), Arc::default());
        router.route(&tp(0), 1);
        assert_eq!(router.route(&tp(0), 2), Some(tp(0)));
        assert_eq!(router.route(&tp(1), 10), None);
        assert_eq!(rx1.try_recv().unwrap(), 10);
    }

    #[test]
    fn records_for_closed_partitions_are_dropped() {
        let mut router = Router::new(1);
        let _rx = router.open(tp(0), Arc::default());
        router.close(&tp(0));
        assert!(!router.is_open(&tp(0)));
        assert_eq!(router.route(&tp(0), 1), None);
        assert_eq!(router.overflow_len(), 0);
    }
}
