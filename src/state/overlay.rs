//! The unflushed overlay: writes since the last flush, combined per key, plus the writes of
//! the record being handled (staged until its handler returns `Ok`).
//!
//! Reads go staged → pending → (flush in flight) → RocksDB, so a handler reads its own
//! writes. Because pending is a map per store, N updates to one key between two flushes
//! leave one entry: one changelog record and one RocksDB write (write-combining). Staging
//! costs O(writes of the record): the staged writes are a short list, moved into the maps
//! when the record succeeds. The maps are hash maps: point reads and writes cost the same
//! at 1 000 or 1 000 000 dirty keys; a prefix scan looks at every dirty key of its store.

use std::collections::HashMap;
use std::sync::Arc;

use super::KeyValues;

/// A staged write: store index, key, value (`None`: a delete).
pub(crate) type Write = (usize, Vec<u8>, Option<Vec<u8>>);

/// `None` is a delete.
pub(crate) type Entries = HashMap<Vec<u8>, Option<Vec<u8>>, foldhash::fast::RandomState>;

/// Bytes accounted per entry on top of its key and value (map node and vectors).
const ENTRY_OVERHEAD: usize = 48;

/// What the overlay knows about a key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup<'a> {
    /// Written since the last flush (`None`: deleted).
    Written(Option<&'a [u8]>),
    /// Not written since the last flush: ask the database.
    Unknown,
}

#[derive(Debug)]
pub(crate) struct Overlay {
    /// The entries a flush in flight is writing: read until it is applied to RocksDB.
    flushing: Option<Arc<Vec<Entries>>>,
    pending: Vec<Entries>,
    staged: Vec<(usize, Vec<u8>, Option<Vec<u8>>)>,
    /// Approximate bytes held by `pending`.
    bytes: usize,
}

fn size(key: &[u8], value: &Option<Vec<u8>>) -> usize {
    ENTRY_OVERHEAD + key.len() + value.as_ref().map_or(0, Vec::len)
}

impl Overlay {
    pub(crate) fn new(stores: usize) -> Self {
        Self {
            flushing: None,
            pending: vec![Entries::default(); stores],
            staged: Vec::new(),
            bytes: 0,
        }
    }

    pub(crate) fn get(&self, store: usize, key: &[u8]) -> Lookup<'_> {
        if let Some((_, _, value)) = self
            .staged
            .iter()
            .rev()
            .find(|(s, k, _)| *s == store && k.as_slice() == key)
        {
            return Lookup::Written(value.as_deref());
        }
        self.pending[store]
            .get(key)
            .or_else(|| self.flushing.as_ref().and_then(|f| f[store].get(key)))
            .map_or(Lookup::Unknown, |v| Lookup::Written(v.as_deref()))
    }

    /// Stages a write of the current record.
    pub(crate) fn write(&mut self, store: usize, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.staged.push((store, key, value));
    }

    /// The current record's handler succeeded: its writes join the overlay.
    pub(crate) fn commit_staged(&mut self) {
        // Drained, not taken: the list keeps its capacity for the next record instead of
        // being allocated again per record.
        let mut staged = std::mem::take(&mut self.staged);
        self.commit(staged.drain(..));
        self.staged = staged;
    }

    /// Writes of a record that succeeded join the overlay, in order.
    pub(crate) fn commit(&mut self, writes: impl IntoIterator<Item = Write>) {
        use std::collections::hash_map::Entry;
        for (store, key, value) in writes {
            let added = size(&key, &value);
            // One hash per write: the entry API, not `get_mut` then `insert`.
            match self.pending[store].entry(key) {
                Entry::Occupied(mut existing) => {
                    let old = size(existing.key(), existing.get());
                    self.bytes = self.bytes + added - old;
                    existing.insert(value);
                }
                Entry::Vacant(slot) => {
                    self.bytes += added;
                    slot.insert(value);
                }
            }
        }
    }

    /// The current record failed or was cancelled: forget its writes.
    pub(crate) fn discard_staged(&mut self) {
        self.staged.clear();
    }

    /// Distinct keys waiting for the next flush.
    pub(crate) fn dirty_keys(&self) -> usize {
        self.pending.iter().map(Entries::len).sum()
    }

    /// Approximate bytes waiting for the next flush.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes everything waiting for a flush, per store.
    pub(crate) fn take(&mut self) -> Vec<Entries> {
        self.bytes = 0;
        // The next interval will likely write as many keys: start at that capacity instead of
        // growing (and rehashing) from empty again. (Reusing the flushed maps instead measured
        // no faster: `benches/micro.rs` overlay/interval_200000_keys, 86 vs 83 ms.)
        self.pending
            .iter_mut()
            .map(|entries| {
                let capacity = entries.len();
                std::mem::replace(
                    entries,
                    Entries::with_capacity_and_hasher(capacity, Default::default()),
                )
            })
            .collect()
    }

    /// Hands everything waiting to a flush that runs while processing goes on: reads see
    /// these entries until [`end_flush`](Self::end_flush). At most one flush is in flight.
    pub(crate) fn start_flush(&mut self) -> Arc<Vec<Entries>> {
        debug_assert!(self.flushing.is_none(), "one flush in flight at a time");
        let entries = Arc::new(self.take());
        self.flushing = Some(entries.clone());
        entries
    }

    /// The flush in flight is in RocksDB: its entries are read from there now.
    pub(crate) fn end_flush(&mut self) {
        self.flushing = None;
    }

    /// Calls `f` with the newest unflushed entry of every key of `store` written before the
    /// current record (pending over flushing; `None` is a delete).
    pub(crate) fn for_each_written(&self, store: usize, mut f: impl FnMut(&[u8], Option<&[u8]>)) {
        let pending = &self.pending[store];
        for (k, v) in pending {
            f(k, v.as_deref());
        }
        if let Some(flushing) = &self.flushing {
            for (k, v) in flushing[store]
                .iter()
                .filter(|(k, _)| !pending.contains_key(*k))
            {
                f(k, v.as_deref());
            }
        }
    }

    /// Merges the overlay over `base` (database entries under `prefix`, in key order),
    /// dropping deletes; `extra` are writes staged outside the overlay (a record in flight
    /// under key-level concurrency), newest of all. Costs one pass over the store's dirty
    /// keys plus a sort of those under `prefix` and a linear merge: no tree is built.
    pub(crate) fn merge_prefix(
        &self,
        store: usize,
        prefix: &[u8],
        base: KeyValues,
        extra: &[Write],
    ) -> KeyValues {
        // Overlay entries under the prefix, newest layer last: flushing, pending, staged.
        let mut written: Vec<(&[u8], Option<&[u8]>)> = Vec::new();
        let layers = self
            .flushing
            .iter()
            .map(|f| &f[store])
            .chain(std::iter::once(&self.pending[store]));
        for layer in layers {
            written.extend(
                layer
                    .iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| (k.as_slice(), v.as_deref())),
            );
        }
        written.extend(
            self.staged
                .iter()
                .chain(extra)
                .filter(|(s, k, _)| *s == store && k.starts_with(prefix))
                .map(|(_, k, v)| (k.as_slice(), v.as_deref())),
        );
        if written.is_empty() {
            return base;
        }
        // A stable sort keeps the layers in order among equal keys: the last one wins.
        written.sort_by(|a, b| a.0.cmp(b.0));
        let mut newest: Vec<(&[u8], Option<&[u8]>)> = Vec::with_capacity(written.len());
        for entry in written {
            match newest.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => newest.push(entry),
            }
        }
        let mut merged = Vec::with_capacity(base.len() + newest.len());
        let mut base = base.into_iter().peekable();
        for (key, value) in newest {
            while let Some(older) = base.next_if(|(k, _)| k.as_slice() < key) {
                merged.push(older);
            }
            base.next_if(|(k, _)| k.as_slice() == key);
            if let Some(value) = value {
                merged.push((key.to_vec(), value.to_vec()));
            }
        }
        merged.extend(base);
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_see_staged_then_pending_writes() {
        let mut o = Overlay::new(1);
        assert_eq!(o.get(0, b"k"), Lookup::Unknown);
        o.write(0, b"k".to_vec(), Some(b"1".to_vec()));
        assert_eq!(o.get(0, b"k"), Lookup::Written(Some(&b"1"[..])));
        o.commit_staged();
        o.write(0, b"k".to_vec(), None);
        assert_eq!(
            o.get(0, b"k"),
            Lookup::Written(None),
            "staged delete hides the pending value"
        );
        o.discard_staged();
        assert_eq!(
            o.get(0, b"k"),
            Lookup::Written(Some(&b"1"[..])),
            "a failed record's writes vanish"
        );
    }

    #[test]
    fn many_updates_to_one_key_combine_into_one_entry_and_bytes_track_it() {
        let mut o = Overlay::new(2);
        for i in 0..100u32 {
            o.write(0, b"hot".to_vec(), Some(i.to_be_bytes().to_vec()));
            o.commit_staged();
        }
        assert_eq!(o.bytes(), ENTRY_OVERHEAD + 3 + 4);
        o.write(1, b"gone".to_vec(), None);
        o.commit_staged();
        assert_eq!(o.dirty_keys(), 2);
        let taken = o.take();
        assert_eq!(taken[0].len(), 1);
        assert_eq!(taken[0][&b"hot"[..]], Some(99u32.to_be_bytes().to_vec()));
        assert_eq!(taken[1][&b"gone"[..]], None, "deletes become tombstones");
        assert_eq!((o.dirty_keys(), o.bytes()), (0, 0));
    }

    #[test]
    fn reads_see_a_flush_in_flight_until_it_ends() {
        let mut o = Overlay::new(1);
        o.write(0, b"k".to_vec(), Some(b"1".to_vec()));
        o.commit_staged();
        let flushing = o.start_flush();
        assert_eq!(flushing[0].len(), 1);
        assert_eq!(o.dirty_keys(), 0);
        assert_eq!(o.get(0, b"k"), Lookup::Written(Some(&b"1"[..])));
        o.write(0, b"k".to_vec(), Some(b"2".to_vec()));
        o.commit_staged();
        assert_eq!(
            o.get(0, b"k"),
            Lookup::Written(Some(&b"2"[..])),
            "newer pending wins"
        );
        assert_eq!(
            o.merge_prefix(0, b"", vec![], &[]),
            vec![(b"k".to_vec(), b"2".to_vec())]
        );
        o.end_flush();
        assert_eq!(o.get(0, b"k"), Lookup::Written(Some(&b"2"[..])));
    }

    #[test]
    fn the_latest_staged_write_of_a_record_wins() {
        let mut o = Overlay::new(1);
        o.write(0, b"k".to_vec(), Some(b"1".to_vec()));
        o.write(0, b"k".to_vec(), Some(b"2".to_vec()));
        assert_eq!(o.get(0, b"k"), Lookup::Written(Some(&b"2"[..])));
        o.commit_staged();
        assert_eq!(o.take()[0][&b"k"[..]], Some(b"2".to_vec()));
    }

    #[test]
    fn prefix_merge_applies_overlay_over_database() {
        let mut o = Overlay::new(1);
        o.write(0, b"a/2".to_vec(), None);
        o.write(0, b"a/3".to_vec(), Some(b"new".to_vec()));
        o.write(0, b"b/1".to_vec(), Some(b"other".to_vec()));
        o.commit_staged();
        o.write(0, b"a/4".to_vec(), Some(b"staged".to_vec()));
        let base = vec![
            (b"a/1".to_vec(), b"x".to_vec()),
            (b"a/2".to_vec(), b"y".to_vec()),
        ];
        let merged = o.merge_prefix(0, b"a/", base, &[]);
        assert_eq!(
            merged,
            vec![
                (b"a/1".to_vec(), b"x".to_vec()),
                (b"a/3".to_vec(), b"new".to_vec()),
                (b"a/4".to_vec(), b"staged".to_vec())
            ]
        );
    }

    #[test]
    fn prefix_merge_takes_the_newest_layer_and_keeps_database_order() {
        let mut o = Overlay::new(1);
        o.write(0, b"p/b".to_vec(), Some(b"flushing".to_vec()));
        o.write(0, b"p/d".to_vec(), None);
        o.commit_staged();
        let _flushing = o.start_flush();
        o.write(0, b"p/b".to_vec(), None);
        o.write(0, b"p/e".to_vec(), Some(b"pending".to_vec()));
        o.commit_staged();
        o.write(0, b"p/e".to_vec(), Some(b"staged".to_vec()));
        o.write(0, b"q/a".to_vec(), Some(b"other prefix".to_vec()));
        let base = ["p/a", "p/b", "p/c", "p/d", "p/f"]
            .map(|k| (k.as_bytes().to_vec(), b"db".to_vec()))
            .to_vec();
        let merged: Vec<(String, String)> = o
            .merge_prefix(0, b"p/", base, &[])
            .into_iter()
            .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
            .collect();
        let expected = [
            ("p/a", "db"),
            ("p/c", "db"),
            ("p/e", "staged"),
            ("p/f", "db"),
        ];
        assert_eq!(
            merged,
            expected
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .to_vec()
        );
    }
}
