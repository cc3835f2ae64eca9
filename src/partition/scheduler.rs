//! Key-level concurrency: which fetched records of a partition may start, and how far the
//! partition's records are finished while they complete out of order.
//!
//! Records of one key (a missing key is one key) start one at a time, in offset order;
//! records of different keys run at once, up to `limit`. A record starts only while its
//! offset is within `lookahead` of the lowest unfinished one, so a stuck key cannot grow
//! memory or the records to replay after a crash without bound. Among the records that may
//! start, the lowest offset goes first, which keeps the commit moving.
//!
//! The [`Completion`] half answers what a flush makes durable: every record below the
//! lowest unfinished one, and the finished records above it (a [`DoneSet`]), so that after a
//! crash those are recognised and not applied twice.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use crate::batch::{RawRecord, RecordBatch};
use crate::state::checkpoint::{DoneSet, SourcePosition};

/// A record's key as the scheduler orders by it: a 64-bit hash of its bytes (0 for a
/// record without a key). Two keys that hash alike are only kept in order with each other,
/// which costs concurrency, never correctness; hashing spares a key copy per record.
pub(crate) type Key = u64;

fn key_of(key: Option<&[u8]>) -> Key {
    use std::hash::BuildHasher;
    key.map_or(0, |k| {
        foldhash::fast::FixedState::with_seed(0x5EED).hash_one(k) | 1
    })
}

/// A fetched record waiting to start: its batch and index in it.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) batch: Arc<RecordBatch>,
    pub(crate) index: usize,
}

impl Pending {
    pub(crate) fn raw(&self) -> &RawRecord {
        &self.batch.records[self.index]
    }

    pub(crate) fn offset(&self) -> i64 {
        self.raw().offset
    }

    fn key(&self) -> Key {
        key_of(self.batch.key(self.raw()))
    }
}

/// A key with a record running, and the records waiting behind it.
#[derive(Debug, Default)]
struct KeyQueue {
    running: bool,
    waiting: VecDeque<Pending>,
}

/// Decides which records start; see the module docs.
#[derive(Debug)]
pub(crate) struct KeyScheduler {
    limit: usize,
    lookahead: i64,
    /// Keys with a record running or waiting; gone once idle.
    keys: HashMap<Key, KeyQueue, foldhash::fast::FixedState>,
    /// Keys free to start their next record, by that record's offset (a min-heap).
    ready: BinaryHeap<Reverse<(i64, Key)>>,
    /// Emptied queues, kept for the next busy key (no allocation per record).
    spare: Vec<VecDeque<Pending>>,
    running: usize,
    waiting: usize,
    pub(crate) completion: Completion,
}

impl KeyScheduler {
    /// A scheduler starting after `start` (the restored or committed position).
    pub(crate) fn new(limit: usize, lookahead: usize, start: SourcePosition) -> Self {
        Self {
            limit: limit.max(1),
            lookahead: lookahead.max(1) as i64,
            keys: HashMap::default(),
            ready: BinaryHeap::new(),
            spare: Vec::new(),
            running: 0,
            waiting: 0,
            completion: Completion::new(start),
        }
    }

    /// Takes in a fetched record: queued behind its key. A record `applied` says is in the
    /// state already finishes at once (`false` is returned) and never starts.
    pub(crate) fn push(&mut self, pending: Pending, applied: &SourcePosition) -> bool {
        let raw = pending.raw();
        let offset = raw.offset;
        self.completion
            .received(offset, raw.timestamp.unwrap_or(-1));
        if applied.covers(offset) {
            self.completion.finished(offset, -1);
            return false;
        }
        let key = pending.key();
        let spare = &mut self.spare;
        let queue = self.keys.entry(key).or_insert_with(|| KeyQueue {
            running: false,
            waiting: spare.pop().unwrap_or_default(),
        });
        if !queue.running && queue.waiting.is_empty() {
            self.ready.push(Reverse((offset, key)));
        }
        queue.waiting.push_back(pending);
        self.waiting += 1;
        true
    }

    /// The next record that may start, if any; it counts as running until
    /// [`finish`](Self::finish) or [`abandon`](Self::abandon).
    pub(crate) fn next(&mut self) -> Option<(Key, Pending)> {
        if self.running >= self.limit {
            return None;
        }
        let Reverse((offset, _)) = *self.ready.peek()?;
        let low = self.completion.lowest_unfinished().unwrap_or(offset);
        if offset - low >= self.lookahead {
            return None;
        }
        let Reverse((_, key)) = self.ready.pop()?;
        let queue = self.keys.get_mut(&key)?;
        let pending = queue.waiting.pop_front()?;
        queue.running = true;
        self.running += 1;
        self.waiting -= 1;
        Some((key, pending))
    }

    /// The running record `offset` of `key` finished (handled, skipped or dead-lettered);
    /// `stream_time` is the partition's stream time after it (-1: unchanged).
    pub(crate) fn finish(&mut self, key: Key, offset: i64, stream_time: i64) {
        self.completion.finished(offset, stream_time);
        self.release(key);
    }

    /// The running record of `key` will not finish here (the partition is stopping): its
    /// key is free, the record stays unfinished.
    pub(crate) fn abandon(&mut self, key: Key) {
        self.release(key);
    }

    fn release(&mut self, key: Key) {
        self.running -= 1;
        let Some(queue) = self.keys.get_mut(&key) else {
            return;
        };
        queue.running = false;
        match queue.waiting.front() {
            Some(next) => self.ready.push(Reverse((next.offset(), key))),
            None => {
                if let Some(queue) = self.keys.remove(&key) {
                    self.spare.push(queue.waiting);
                }
            }
        }
    }

    /// Records running now.
    pub(crate) fn running(&self) -> usize {
        self.running
    }

    /// Records received that have not started.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting
    }
}

/// How far a partition's records are finished when they finish out of order.
#[derive(Debug)]
pub(crate) struct Completion {
    /// Records received and not yet below the lowest unfinished one: offset, timestamp,
    /// finished.
    open: VecDeque<(i64, i64, bool)>,
    /// Where the finished prefix reaches.
    prefix: SourcePosition,
    /// Highest stream time of the finished records.
    stream_time: i64,
    /// Whether anything finished since the start (otherwise nothing is committable yet).
    any: bool,
}

impl Completion {
    fn new(start: SourcePosition) -> Self {
        let stream_time = start.stream_time;
        Self {
            open: VecDeque::new(),
            any: start.next >= 0,
            prefix: SourcePosition {
                done: DoneSet::EMPTY,
                ..start
            },
            stream_time,
        }
    }

    fn received(&mut self, offset: i64, timestamp: i64) {
        self.open.push_back((offset, timestamp, false));
    }

    fn finished(&mut self, offset: i64, stream_time: i64) {
        self.any = true;
        self.stream_time = self.stream_time.max(stream_time);
        let found = self.open.binary_search_by(|(o, _, _)| o.cmp(&offset));
        if let Ok(i) = found {
            self.open[i].2 = true;
        }
        while let Some(&(offset, timestamp, true)) = self.open.front() {
            self.open.pop_front();
            self.prefix.next = offset + 1;
            self.prefix.last_timestamp = timestamp;
        }
    }

    /// The lowest offset received and not finished.
    pub(crate) fn lowest_unfinished(&self) -> Option<i64> {
        self.open.front().map(|(o, _, _)| *o)
    }

    /// What [`committable`](Self::committable) would say of the next offset, in O(1).
    pub(crate) fn next(&self) -> Option<i64> {
        self.any
            .then(|| self.lowest_unfinished().unwrap_or(self.prefix.next))
    }

    /// What a flush of the finished records' writes reaches: every record before the
    /// lowest unfinished one, and the finished ones after it. `None` before anything
    /// finished.
    pub(crate) fn committable(&self) -> Option<SourcePosition> {
        if !self.any {
            return None;
        }
        let mut position = SourcePosition {
            stream_time: self.stream_time,
            ..self.prefix.clone()
        };
        if let Some(&(first, _, _)) = self.open.front() {
            position.next = first;
            // Runs of finished records (offsets between them that were never received do
            // not exist in the partition) become ranges.
            let mut ranges: Vec<(i64, i64)> = Vec::new();
            let mut run: Option<(i64, i64)> = None;
            for &(offset, _, done) in &self.open {
                match (done, &mut run) {
                    (true, Some((_, end))) => *end = offset + 1,
                    (true, None) => run = Some((offset, offset + 1)),
                    (false, Some(r)) => {
                        ranges.push(*r);
                        run = None;
                    }
                    (false, None) => {}
                }
            }
            ranges.extend(run);
            position.done = DoneSet::from_ranges(ranges);
        }
        Some(position)
    }
}

#[cfg(test)]
mod tests;
