//! Recently read latest values of a co-partitioned table partition, in front of RocksDB.
//!
//! A join reads the same keys again and again (a customer's orders): a hit costs a hash
//! lookup instead of RocksDB's point read. A read that misses goes to RocksDB under the
//! cache's lock, and a write forgets its keys under it, so a read never puts back a value
//! that a write has replaced (a handler under key concurrency may read while the worker
//! applies table updates). Bounded in bytes, keys and values counted: a full cache is
//! emptied and fills again with what is read next.

use std::collections::HashMap;
use std::sync::Mutex;

/// What an entry costs besides its key and value (the map's slot, the boxes).
const ENTRY_OVERHEAD: usize = 64;

type Entries = HashMap<Box<[u8]>, Option<Box<[u8]>>, foldhash::fast::RandomState>;

pub(crate) struct ReadCache {
    inner: Mutex<Inner>,
    budget: usize,
}

#[derive(Default)]
struct Inner {
    /// Key → its raw latest value (`None`: absent).
    entries: Entries,
    bytes: usize,
    hits: u64,
    misses: u64,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

fn cost(key: &[u8], value: Option<&[u8]>) -> usize {
    key.len() + value.map_or(0, <[u8]>::len) + ENTRY_OVERHEAD
}

impl ReadCache {
    /// A cache of at most `budget` bytes; `None` for 0.
    pub(crate) fn new(budget: usize) -> Option<Self> {
        (budget > 0).then(|| Self {
            inner: Mutex::default(),
            budget,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `f` of `key`'s raw latest value: remembered, or read by `load` (under the lock) and
    /// remembered.
    pub(crate) fn read<T, E>(
        &self,
        key: &[u8],
        load: impl FnOnce() -> Result<Option<Vec<u8>>, E>,
        f: impl FnOnce(Option<&[u8]>) -> T,
    ) -> Result<T, E> {
        let mut inner = self.lock();
        if let Some(value) = inner.entries.get(key) {
            let found = f(value.as_deref());
            inner.hits += 1;
            return Ok(found);
        }
        inner.misses += 1;
        let loaded = load()?;
        let found = f(loaded.as_deref());
        let size = cost(key, loaded.as_deref());
        if size <= self.budget {
            if inner.bytes + size > self.budget {
                inner.entries.clear();
                inner.bytes = 0;
            }
            inner.bytes += size;
            inner
                .entries
                .insert(key.into(), loaded.map(Vec::into_boxed_slice));
        }
        Ok(found)
    }

    /// Runs `write` (the RocksDB write of `keys`) and forgets `keys`, under the lock.
    pub(crate) fn write<'k, T>(
        &self,
        keys: impl Iterator<Item = &'k [u8]>,
        write: impl FnOnce() -> T,
    ) -> T {
        let mut inner = self.lock();
        let written = write();
        for key in keys {
            if let Some(value) = inner.entries.remove(key) {
                inner.bytes -= cost(key, value.as_deref());
            }
        }
        written
    }

    /// Hits and misses so far.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.hits, inner.misses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    fn read(cache: &ReadCache, key: &[u8], db: &HashMap<Vec<u8>, Vec<u8>>) -> Option<Vec<u8>> {
        cache
            .read(
                key,
                || Ok::<_, Infallible>(db.get(key).cloned()),
                |v| v.map(<[u8]>::to_vec),
            )
            .unwrap()
    }

    #[test]
    fn reads_are_remembered_absent_keys_too_and_writes_forget_them() {
        let cache = ReadCache::new(1 << 20).unwrap();
        let mut db = HashMap::new();
        db.insert(b"a".to_vec(), b"1".to_vec());
        assert_eq!(read(&cache, b"a", &db), Some(b"1".to_vec()));
        assert_eq!(read(&cache, b"b", &db), None);
        assert_eq!(read(&cache, b"a", &db), Some(b"1".to_vec()));
        assert_eq!(read(&cache, b"b", &db), None);
        assert_eq!(cache.counts(), (2, 2));
        // A write replaces both; the cache forgets them and reads the new values.
        cache.write([&b"a"[..], b"b"].into_iter(), || {
            db.insert(b"a".to_vec(), b"2".to_vec());
            db.insert(b"b".to_vec(), b"3".to_vec());
        });
        assert_eq!(read(&cache, b"a", &db), Some(b"2".to_vec()));
        assert_eq!(read(&cache, b"b", &db), Some(b"3".to_vec()));
    }

    #[test]
    fn a_full_cache_starts_over_and_stays_within_its_budget() {
        let cache = ReadCache::new(3 * (ENTRY_OVERHEAD + 2)).unwrap();
        let db: HashMap<Vec<u8>, Vec<u8>> = (0..10u8).map(|i| (vec![i], vec![i])).collect();
        for i in 0..10u8 {
            assert_eq!(read(&cache, &[i], &db), Some(vec![i]));
            assert!(cache.lock().bytes <= cache.budget);
        }
        assert!(cache.lock().entries.len() <= 3);
        assert!(ReadCache::new(0).is_none());
    }
}
