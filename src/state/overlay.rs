//! The unflushed overlay: writes since the last flush, combined per key, plus the writes of
//! the record being handled (staged until its handler returns `Ok`).
//!
//! Reads go staged → overlay → RocksDB, so a handler reads its own writes. Because the
//! overlay is a map per store, N updates to one key between two flushes leave one entry:
//! one changelog record and one RocksDB write (write-combining).

use std::collections::BTreeMap;

use super::KeyValues;

/// `None` is a delete.
pub(crate) type Entries = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

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
    flushed_pending: Vec<Entries>,
    staged: Vec<Entries>,
}

impl Overlay {
    pub(crate) fn new(stores: usize) -> Self {
        Self {
            flushed_pending: vec![Entries::new(); stores],
            staged: vec![Entries::new(); stores],
        }
    }

    pub(crate) fn get(&self, store: usize, key: &[u8]) -> Lookup<'_> {
        self.staged[store]
            .get(key)
            .or_else(|| self.flushed_pending[store].get(key))
            .map_or(Lookup::Unknown, |v| Lookup::Written(v.as_deref()))
    }

    /// Stages a write of the current record.
    pub(crate) fn write(&mut self, store: usize, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.staged[store].insert(key, value);
    }

    /// The current record's handler succeeded: its writes join the overlay.
    pub(crate) fn commit_staged(&mut self) {
        for (staged, pending) in self.staged.iter_mut().zip(&mut self.flushed_pending) {
            pending.append(staged);
        }
    }

    /// The current record failed or was cancelled: forget its writes.
    pub(crate) fn discard_staged(&mut self) {
        self.staged.iter_mut().for_each(Entries::clear);
    }

    /// Distinct keys waiting for the next flush.
    pub(crate) fn dirty_keys(&self) -> usize {
        self.flushed_pending.iter().map(Entries::len).sum()
    }

    /// Takes everything waiting for a flush, per store.
    pub(crate) fn take(&mut self) -> Vec<Entries> {
        self.flushed_pending
            .iter_mut()
            .map(std::mem::take)
            .collect()
    }

    /// Merges the overlay over `base` (database entries under `prefix`), dropping deletes.
    pub(crate) fn merge_prefix(&self, store: usize, prefix: &[u8], base: KeyValues) -> KeyValues {
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            base.into_iter().map(|(k, v)| (k, Some(v))).collect();
        for layer in [&self.flushed_pending[store], &self.staged[store]] {
            for (k, v) in layer
                .range(prefix.to_vec()..)
                .take_while(|(k, _)| k.starts_with(prefix))
            {
                merged.insert(k.clone(), v.clone());
            }
        }
        merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect()
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
    fn many_updates_to_one_key_combine_into_one_entry() {
        let mut o = Overlay::new(2);
        for i in 0..100u32 {
            o.write(0, b"hot".to_vec(), Some(i.to_be_bytes().to_vec()));
            o.commit_staged();
        }
        o.write(1, b"gone".to_vec(), None);
        o.commit_staged();
        assert_eq!(o.dirty_keys(), 2);
        let taken = o.take();
        assert_eq!(taken[0].len(), 1);
        assert_eq!(taken[0][&b"hot"[..]], Some(99u32.to_be_bytes().to_vec()));
        assert_eq!(taken[1][&b"gone"[..]], None, "deletes become tombstones");
        assert_eq!(o.dirty_keys(), 0);
    }

    #[test]
    fn prefix_merge_applies_overlay_over_database() {
        let mut o = Overlay::new(1);
        o.write(0, b"a/2".to_vec(), None);
        o.write(0, b"a/3".to_vec(), Some(b"new".to_vec()));
        o.write(0, b"b/1".to_vec(), Some(b"other".to_vec()));
        o.commit_staged();
        let base = vec![
            (b"a/1".to_vec(), b"x".to_vec()),
            (b"a/2".to_vec(), b"y".to_vec()),
        ];
        let merged = o.merge_prefix(0, b"a/", base);
        assert_eq!(
            merged,
            vec![
                (b"a/1".to_vec(), b"x".to_vec()),
                (b"a/3".to_vec(), b"new".to_vec())
            ]
        );
    }
}
