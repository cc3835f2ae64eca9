//! A table's read cache: its latest values in memory, in front of RocksDB.
//!
//! A join reads the table once per input record. A RocksDB point read of a table row costs
//! ~1.9 µs here (index and data block seeks, two block-cache lookups under a mutex): more
//! than the rest of a count job per record. Kafka Streams keeps a record cache in front of
//! its stores for the same reason. This cache holds the bytes of the latest-value column
//! family (a versioned table's heads), and a key known to be absent, bounded in bytes
//! ([`crate::ConsumerConfigBuilder::memory_budget`] gives it its share). `quick_cache`
//! (sharded, S3-FIFO eviction, weighted by bytes) serves it: global tables are read by every
//! worker at once, and its eviction keeps hot keys under scans better than a plain LRU.
//!
//! It is written through: every write of the table puts the new bytes here after RocksDB
//! holds them. A read that missed inserts what it read only if no write came in between
//! (a generation number, checked and bumped under one lock), so a value read before a
//! write can never be cached after it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use quick_cache::sync::Cache;
use quick_cache::Weighter;

/// The cached bytes of a key: `None` when the table does not hold it.
pub(crate) type Cached = Option<Arc<[u8]>>;

/// A cached key, inline up to 24 bytes: a lookup compares it without following a pointer
/// to the key's own allocation.
type Key = smallvec::SmallVec<[u8; 24]>;

/// Bytes an entry costs besides its key and value: the key's inline buffer, the shared
/// value's header and the cache's own slot (estimated).
const ENTRY_OVERHEAD: u64 = 80;

#[derive(Clone)]
struct Bytes;

impl Weighter<Key, Cached> for Bytes {
    fn weight(&self, key: &Key, value: &Cached) -> u64 {
        weight_of(key, value)
    }
}

fn weight_of(key: &[u8], value: &Cached) -> u64 {
    (key.len() + value.as_ref().map_or(0, |v| v.len())) as u64 + ENTRY_OVERHEAD
}

pub(crate) struct ReadCache {
    entries: Cache<Key, Cached, Bytes>,
    /// Bumped by every write (under `writes`): a read that missed caches what it read only
    /// when the generation did not move meanwhile.
    generation: AtomicU64,
    writes: Mutex<()>,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("entries", &self.entries.len())
            .field("bytes", &self.entries.weight())
            .finish()
    }
}

impl ReadCache {
    /// A cache of about `bytes`; `None` below what one entry needs.
    pub(crate) fn new(bytes: usize) -> Option<Self> {
        let bytes = bytes as u64;
        (bytes >= 4 * ENTRY_OVERHEAD).then(|| Self {
            entries: Cache::with_weighter((bytes / (2 * ENTRY_OVERHEAD)) as usize, bytes, Bytes),
            generation: AtomicU64::new(0),
            writes: Mutex::new(()),
        })
    }

    /// `key`'s bytes from the cache, or from `read` (then cached).
    pub(crate) fn get_or_read<E>(
        &self,
        key: &[u8],
        read: impl FnOnce() -> Result<Option<Vec<u8>>, E>,
    ) -> Result<Cached, E> {
        if let Some(cached) = self.entries.get(key) {
            return Ok(cached);
        }
        let before = self.generation.load(Ordering::Acquire);
        let read: Cached = read()?.map(Arc::from);
        let _writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(Ordering::Acquire) == before {
            self.entries.insert(Key::from_slice(key), read.clone());
        }
        Ok(read)
    }

    /// `key`'s bytes if cached (`Some(None)`: cached as absent), without reading or caching.
    pub(crate) fn peek(&self, key: &[u8]) -> Option<Cached> {
        self.entries.peek(key)
    }

    /// The table now holds `entries` (written to RocksDB already), in order: the later of
    /// two writes of one key wins.
    pub(crate) fn written<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) {
        let _writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        // While there is room, writes fill the cache (a bootstrapped table that fits is read
        // from memory from its first join on). Once full, a write only replaces a cached
        // value: a bootstrap larger than the cache would otherwise spend an insert and an
        // eviction on every row, most of them never read. Each shard evicts at its own share
        // of the capacity, before the whole is full: filling stops at nine tenths of it.
        let fill_to = self.entries.capacity() / 10 * 9;
        let mut room = fill_to.saturating_sub(self.entries.weight());
        for (key, value) in entries {
            let value: Cached = value.map(Arc::from);
            let weight = weight_of(key, &value);
            if weight <= room {
                room -= weight;
                self.entries.insert(Key::from_slice(key), value);
            } else {
                // Absent: nothing stale to replace.
                let _ = self.entries.replace(Key::from_slice(key), value, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(value: Option<&[u8]>) -> impl FnOnce() -> Result<Option<Vec<u8>>, ()> + '_ {
        move || Ok(value.map(<[u8]>::to_vec))
    }

    #[test]
    fn a_miss_is_read_once_then_served_from_memory() {
        let cache = ReadCache::new(1 << 20).unwrap();
        assert_eq!(
            cache
                .get_or_read(b"k", read(Some(b"v")))
                .unwrap()
                .as_deref(),
            Some(&b"v"[..])
        );
        let again = cache.get_or_read(b"k", || -> Result<_, ()> { panic!("read again") });
        assert_eq!(again.unwrap().as_deref(), Some(&b"v"[..]));
        // Absence is cached too.
        assert_eq!(cache.get_or_read(b"absent", read(None)).unwrap(), None);
        let again = cache.get_or_read(b"absent", || -> Result<_, ()> { panic!("read again") });
        assert_eq!(again.unwrap(), None);
    }

    #[test]
    fn writes_replace_cached_values_and_the_last_write_of_a_key_wins() {
        let cache = ReadCache::new(1 << 20).unwrap();
        cache.get_or_read(b"k", read(Some(b"old"))).unwrap();
        cache.written([
            (&b"k"[..], Some(&b"1"[..])),
            (&b"k"[..], Some(&b"2"[..])),
            (&b"gone"[..], None),
        ]);
        let fail = || -> Result<_, ()> { panic!("written keys are cached") };
        assert_eq!(
            cache.get_or_read(b"k", fail).unwrap().as_deref(),
            Some(&b"2"[..])
        );
        assert_eq!(cache.get_or_read(b"gone", fail).unwrap(), None);
    }

    #[test]
    fn a_value_read_before_a_write_is_not_cached_after_it() {
        let cache = ReadCache::new(1 << 20).unwrap();
        // The write lands while the miss is reading the old value from the database.
        let stale = cache
            .get_or_read(b"k", || {
                cache.written([(&b"k"[..], Some(&b"new"[..]))]);
                Ok::<_, ()>(Some(b"old".to_vec()))
            })
            .unwrap();
        assert_eq!(
            stale.as_deref(),
            Some(&b"old"[..]),
            "the read itself returns what it read"
        );
        let fail = || -> Result<_, ()> { panic!("the written value is cached") };
        assert_eq!(
            cache.get_or_read(b"k", fail).unwrap().as_deref(),
            Some(&b"new"[..])
        );
    }

    #[test]
    fn once_full_writes_replace_cached_keys_and_add_no_others() {
        let cache = ReadCache::new(64 << 10).unwrap();
        let value = [7u8; 100];
        let keys: Vec<[u8; 4]> = (0..2_000u32).map(u32::to_be_bytes).collect();
        cache.written(keys.iter().map(|k| (&k[..], Some(&value[..]))));
        let full = cache.entries.len();
        assert!(full > 100 && full < 2_000, "{cache:?}");
        let cached = keys
            .iter()
            .find(|k| cache.entries.peek(&k[..]).is_some())
            .unwrap();
        let uncached = keys
            .iter()
            .find(|k| cache.entries.peek(&k[..]).is_none())
            .unwrap();
        // Larger than the tenth of the capacity a full cache leaves.
        let large = [9u8; 8 << 10];
        cache.written([
            (&uncached[..], Some(&large[..])),
            (&cached[..], Some(&b"new"[..])),
        ]);
        assert_eq!(
            cache.entries.peek(&cached[..]).unwrap().as_deref(),
            Some(&b"new"[..])
        );
        assert!(
            cache.entries.peek(&uncached[..]).is_none(),
            "{} of {}",
            cache.entries.weight(),
            cache.entries.capacity()
        );
        // A later read of the uncached key reads the database, which holds the write.
        let read_large = cache.get_or_read(&uncached[..], || Ok::<_, ()>(Some(large.to_vec())));
        assert_eq!(read_large.unwrap().as_deref(), Some(&large[..]));
    }

    #[test]
    fn the_cache_stays_within_its_bytes() {
        let cache = ReadCache::new(64 << 10).unwrap();
        for i in 0..10_000u32 {
            let value = Some(vec![7u8; 100]);
            cache
                .get_or_read(&i.to_be_bytes(), || Ok::<_, ()>(value))
                .unwrap();
        }
        assert!(cache.entries.weight() <= 64 << 10, "{:?}", cache);
        assert!(cache.entries.len() > 100, "{:?}", cache);
    }
}
