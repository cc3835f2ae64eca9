//! Replay bookkeeping: which changelog records may be applied, and which must be rolled back.
//!
//! Pure logic, no Kafka and no RocksDB, so every crash point can be tested in-process.
//!
//! A flush writes data records to each touched store's changelog, waits for their acks, then
//! writes one marker per touched store. A crash can leave the *last* flush partial: data
//! without markers, or markers in some touched stores but not all. Replay therefore:
//!
//! 1. holds back the records of each store's last marked flush until all stores are read,
//!    and never applies records after a store's last marker (its *tail*);
//! 2. applies a held flush only if every store it touched has its marker (or a checkpoint
//!    at or past it); otherwise the flush is rolled back;
//! 3. *repairs* rolled-back and tail keys: the restorer writes their current (pre-flush)
//!    values to the changelog with a new marker listing the rolled-back flush in
//!    `ks.aborted`. Later replays that meet a held flush followed by a marker aborting it
//!    drop the held records, so a full replay of the log gives the same state.
//!
//! Flushes run one at a time per partition and a flush starts only after the previous one's
//! markers are acknowledged (or after a restore repaired it), so only the last flush of a log
//! can be partial.

use std::collections::BTreeSet;

use super::db::StoreCheckpoint;

/// A marker record's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Marker {
    pub(crate) seq: u64,
    pub(crate) source_next: i64,
    pub(crate) touched: Vec<String>,
    pub(crate) aborted: Vec<u64>,
}

/// `(key, value)`; `None` is a tombstone.
pub(crate) type KeyValue = (Vec<u8>, Option<Vec<u8>>);

#[derive(Debug)]
struct Held {
    marker: Marker,
    changelog_next: i64,
    data: Vec<KeyValue>,
}

/// Replay state of one store.
#[derive(Debug)]
pub(crate) struct StoreReplay {
    pub(crate) name: String,
    checkpoint: StoreCheckpoint,
    held: Option<Held>,
    tail: Vec<KeyValue>,
    ready: Vec<KeyValue>,
    ready_checkpoint: Option<StoreCheckpoint>,
    max_seq: u64,
}

impl StoreReplay {
    pub(crate) fn new(name: impl Into<String>, checkpoint: StoreCheckpoint) -> Self {
        Self {
            name: name.into(),
            checkpoint,
            held: None,
            tail: Vec::new(),
            ready: Vec::new(),
            ready_checkpoint: None,
            max_seq: checkpoint.seq,
        }
    }

    pub(crate) fn push_data(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.tail.push((key, value));
    }

    /// A marker at changelog `offset`: the previous held flush is complete (unless this
    /// marker aborts it), and the records since it become the new held flush.
    pub(crate) fn push_marker(&mut self, offset: i64, marker: Marker) {
        self.max_seq = self.max_seq.max(marker.seq);
        if let Some(held) = self.held.take() {
            if !marker.aborted.contains(&held.marker.seq) {
                self.ready.extend(held.data);
                self.ready_checkpoint = Some(StoreCheckpoint {
                    changelog_next: held.changelog_next,
                    seq: held.marker.seq,
                    source_next: held.marker.source_next,
                });
            }
        }
        let data = std::mem::take(&mut self.tail);
        self.held = Some(Held {
            marker,
            changelog_next: offset + 1,
            data,
        });
    }

    /// Records that are safe to apply now, with the checkpoint to write with them.
    pub(crate) fn take_ready(&mut self) -> Option<(Vec<KeyValue>, StoreCheckpoint)> {
        let checkpoint = self.ready_checkpoint.take()?;
        Some((std::mem::take(&mut self.ready), checkpoint))
    }

    pub(crate) fn ready_len(&self) -> usize {
        self.ready.len()
    }

    fn has_flush(&self, seq: u64) -> bool {
        self.checkpoint.seq >= seq
            || self.ready_checkpoint.is_some_and(|c| c.seq >= seq)
            || self.held.as_ref().is_some_and(|h| h.marker.seq == seq)
    }
}

/// What to do with one store once every store's changelog was read.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct StoreOutcome {
    /// Records to apply, with the checkpoint to write with them.
    pub(crate) apply: Option<(Vec<KeyValue>, StoreCheckpoint)>,
    /// Keys whose changelog records must be overwritten with their current state.
    pub(crate) repair: BTreeSet<Vec<u8>>,
}

/// The decision for the whole partition.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Resolution {
    pub(crate) stores: Vec<StoreOutcome>,
    /// The flush that was found incomplete and rolled back.
    pub(crate) aborted: Option<u64>,
    /// Sequence number for the next marker (the repair, or the next flush).
    pub(crate) next_seq: u64,
    /// Next source offset reflected by the restored state; `-1` when unknown (no flush yet).
    pub(crate) source_next: i64,
}

/// Decides, across all stores of a partition, which held flushes apply and what to repair.
pub(crate) fn resolve(stores: &mut [StoreReplay]) -> Resolution {
    let last = stores
        .iter()
        .filter_map(|s| s.held.as_ref().map(|h| h.marker.clone()))
        .max_by_key(|m| m.seq);
    let complete = last.as_ref().is_none_or(|m| {
        m.touched.iter().all(|name| {
            // A touched store that is no longer declared cannot be checked; it is not replayed either.
            stores
                .iter()
                .find(|s| &s.name == name)
                .is_none_or(|s| s.has_flush(m.seq))
        })
    });
    let aborted = if complete {
        None
    } else {
        last.as_ref().map(|m| m.seq)
    };
    let next_seq = stores.iter().map(|s| s.max_seq).max().unwrap_or(0) + 1;
    let mut source_next = stores
        .iter()
        .map(|s| s.checkpoint.source_next)
        .max()
        .unwrap_or(-1);
    let mut outcomes = Vec::with_capacity(stores.len());
    for store in stores.iter_mut() {
        let mut outcome = StoreOutcome::default();
        if let Some(held) = store.held.take() {
            if Some(held.marker.seq) == aborted {
                outcome.repair.extend(held.data.into_iter().map(|(k, _)| k));
            } else {
                store.ready.extend(held.data);
                store.ready_checkpoint = Some(StoreCheckpoint {
                    changelog_next: held.changelog_next,
                    seq: held.marker.seq,
                    source_next: held.marker.source_next,
                });
            }
        }
        outcome
            .repair
            .extend(std::mem::take(&mut store.tail).into_iter().map(|(k, _)| k));
        if let Some(ready) = store.take_ready() {
            source_next = source_next.max(ready.1.source_next);
            outcome.apply = Some(ready);
        }
        outcomes.push(outcome);
    }
    Resolution {
        stores: outcomes,
        aborted,
        next_seq,
        source_next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(seq: u64, source_next: i64, touched: &[&str], aborted: &[u64]) -> Marker {
        Marker {
            seq,
            source_next,
            touched: touched.iter().map(|s| s.to_string()).collect(),
            aborted: aborted.to_vec(),
        }
    }

    fn kv(k: &str, v: &str) -> (Vec<u8>, Option<Vec<u8>>) {
        (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()))
    }

    fn applied_keys(o: &StoreOutcome) -> Vec<String> {
        o.apply
            .iter()
            .flat_map(|(d, _)| d)
            .map(|(k, _)| String::from_utf8(k.clone()).unwrap())
            .collect()
    }

    #[test]
    fn complete_flushes_apply_and_the_tail_is_repaired() {
        let mut s = StoreReplay::new("a", StoreCheckpoint::EMPTY);
        s.push_data(b"x".to_vec(), Some(b"1".to_vec()));
        s.push_marker(1, marker(1, 10, &["a"], &[]));
        s.push_data(b"y".to_vec(), Some(b"2".to_vec()));
        s.push_marker(3, marker(2, 20, &["a"], &[]));
        s.push_data(b"z".to_vec(), Some(b"3".to_vec())); // crash before the marker
        let mut stores = [s];
        let r = resolve(&mut stores);
        assert_eq!(r.aborted, None);
        assert_eq!(applied_keys(&r.stores[0]), ["x", "y"]);
        assert_eq!(
            r.stores[0].apply.as_ref().unwrap().1,
            StoreCheckpoint {
                changelog_next: 4,
                seq: 2,
                source_next: 20
            }
        );
        assert_eq!(r.stores[0].repair, BTreeSet::from([b"z".to_vec()]));
        assert_eq!(r.source_next, 20);
        assert_eq!(r.next_seq, 3);
    }

    #[test]
    fn flush_marked_in_one_store_but_not_another_is_rolled_back() {
        let mut a = StoreReplay::new("a", StoreCheckpoint::EMPTY);
        let mut b = StoreReplay::new("b", StoreCheckpoint::EMPTY);
        a.push_data(b"a1".to_vec(), Some(vec![1]));
        a.push_marker(1, marker(1, 5, &["a", "b"], &[]));
        b.push_data(b"b1".to_vec(), Some(vec![1]));
        b.push_marker(1, marker(1, 5, &["a", "b"], &[]));
        // Flush 2 touched both; only a's marker made it.
        a.push_data(b"a2".to_vec(), Some(vec![2]));
        a.push_marker(3, marker(2, 9, &["a", "b"], &[]));
        b.push_data(b"b2".to_vec(), Some(vec![2]));
        let mut stores = [a, b];
        let r = resolve(&mut stores);
        assert_eq!(r.aborted, Some(2));
        assert_eq!(applied_keys(&r.stores[0]), ["a1"]);
        assert_eq!(applied_keys(&r.stores[1]), ["b1"]);
        assert_eq!(r.stores[0].repair, BTreeSet::from([b"a2".to_vec()]));
        assert_eq!(r.stores[1].repair, BTreeSet::from([b"b2".to_vec()]));
        assert_eq!(
            r.source_next, 5,
            "the rolled-back flush's source records are processed again"
        );
        assert_eq!(r.next_seq, 3);
    }

    #[test]
    fn a_store_checkpointed_past_the_flush_counts_as_having_it() {
        let mut a = StoreReplay::new(
            "a",
            StoreCheckpoint {
                changelog_next: 4,
                seq: 2,
                source_next: 9,
            },
        );
        let mut b = StoreReplay::new("b", StoreCheckpoint::EMPTY);
        b.push_data(b"b2".to_vec(), Some(vec![2]));
        b.push_marker(0, marker(2, 9, &["a", "b"], &[]));
        let mut stores = [a, b];
        let r = resolve(&mut stores);
        assert_eq!(r.aborted, None);
        assert_eq!(applied_keys(&r.stores[1]), ["b2"]);
        assert_eq!(r.source_next, 9);
        a = StoreReplay::new("a", StoreCheckpoint::EMPTY);
        drop(a);
    }

    #[test]
    fn replay_after_repairs_drops_aborted_flushes_even_when_a_repair_was_itself_cut_short() {
        // Log of store a: flush 1 ok, flush 2 partial (b lacks its marker), repair 3 marked in
        // a only (crash), repair 4 complete. A full replay must end with a1 and the pre-flush-2
        // value of a2 (here: absent -> tombstone written by the repair).
        let mut a = StoreReplay::new("a", StoreCheckpoint::EMPTY);
        let mut b = StoreReplay::new("b", StoreCheckpoint::EMPTY);
        a.push_data(b"a1".to_vec(), Some(vec![1]));
        a.push_marker(1, marker(1, 5, &["a"], &[]));
        a.push_data(b"a2".to_vec(), Some(vec![2]));
        a.push_marker(3, marker(2, 9, &["a", "b"], &[]));
        b.push_data(b"b2".to_vec(), Some(vec![2]));
        a.push_data(b"a2".to_vec(), None);
        a.push_marker(5, marker(3, 5, &["a", "b"], &[2]));
        b.push_data(b"b2".to_vec(), None);
        a.push_data(b"a2".to_vec(), None);
        a.push_marker(7, marker(4, 5, &["a", "b"], &[3]));
        b.push_data(b"b2".to_vec(), None);
        b.push_marker(2, marker(4, 5, &["a", "b"], &[3]));
        let mut stores = [a, b];
        let r = resolve(&mut stores);
        assert_eq!(r.aborted, None);
        let a_applied = &r.stores[0].apply.as_ref().unwrap().0;
        assert_eq!(a_applied, &vec![kv("a1", "\u{1}"), (b"a2".to_vec(), None)]);
        assert!(r.stores[0].repair.is_empty() && r.stores[1].repair.is_empty());
        // b applies its whole segment in order; the repair's tombstone comes last and wins.
        let b_applied = &r.stores[1].apply.as_ref().unwrap().0;
        assert_eq!(b_applied.last(), Some(&(b"b2".to_vec(), None)));
        assert_eq!(r.source_next, 5);
        assert_eq!(r.next_seq, 5);
    }

    #[test]
    fn ready_records_stream_out_before_the_end() {
        let mut s = StoreReplay::new("a", StoreCheckpoint::EMPTY);
        for seq in 1..=3 {
            s.push_data(format!("k{seq}").into_bytes(), Some(vec![seq as u8]));
            s.push_marker(
                2 * seq as i64 - 1,
                marker(seq, 10 * seq as i64, &["a"], &[]),
            );
        }
        assert_eq!(s.ready_len(), 2, "the last marked flush is held back");
        let (data, ck) = s.take_ready().unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(ck.seq, 2);
        assert!(s.take_ready().is_none());
    }
}
