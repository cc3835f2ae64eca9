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

use std::mem::size_of;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use quick_cache::sync::Cache;
use quick_cache::Weighter;

/// Bytes a value can have and still be held in its cache entry.
const INLINE: usize = 126;

/// A key's cached bytes, or that the table does not hold the key.
///
/// A value of up to [`INLINE`] bytes is held in the cache entry itself: a lookup then
/// reads one place in memory. Behind a pointer, the value cost a second memory access per
/// lookup, a ninth of an as-of join's CPU in the bench (where a lookup's entry and value
/// are rarely in the CPU's caches: 200k rows). Larger values are shared, so a lookup does
/// not copy them under the shard's lock.
#[derive(Clone)]
pub(crate) enum Cached {
    Absent,
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Arc<[u8]>),
}

// The inline size is what keeps the whole value at two cache lines.
const _: () = assert!(size_of::<Cached>() == 128);

impl Cached {
    pub(crate) fn of(value: Option<&[u8]>) -> Self {
        match value {
            None => Self::Absent,
            Some(v) if v.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..v.len()].copy_from_slice(v);
                Self::Inline {
                    len: v.len() as u8,
                    bytes,
                }
            }
            Some(v) => Self::Shared(Arc::from(v)),
        }
    }

    /// The bytes, `None` when the table does not hold the key.
    pub(crate) fn as_deref(&self) -> Option<&[u8]> {
        match self {
            Self::Absent => None,
            Self::Inline { len, bytes } => Some(&bytes[..usize::from(*len)]),
            Self::Shared(bytes) => Some(bytes),
        }
    }

    /// Bytes held outside the entry.
    fn heap_bytes(&self) -> usize {
        match self {
            // The shared allocation's counts, then the bytes.
            Self::Shared(bytes) => 16 + bytes.len(),
            _ => 0,
        }
    }
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_deref().fmt(f)
    }
}

impl PartialEq for Cached {
    fn eq(&self, other: &Self) -> bool {
        self.as_deref() == other.as_deref()
    }
}

/// A cached key, inline up to 24 bytes: a lookup compares it without following a pointer
/// to the key's own allocation.
type Key = smallvec::SmallVec<[u8; 24]>;

/// Bytes an entry costs besides what its key and value hold outside it: the key, the value
/// and the cache's own slot and hash-table index (estimated).
const ENTRY_OVERHEAD: u64 = (size_of::<Key>() + size_of::<Cached>() + 24) as u64;

#[derive(Clone)]
struct Bytes;

impl Weighter<Key, Cached> for Bytes {
    fn weight(&self, key: &Key, value: &Cached) -> u64 {
        weight_of(key, value)
    }
}

fn weight_of(key: &[u8], value: &Cached) -> u64 {
    let key_heap = if key.len() > 24 { key.len() } else { 0 };
    (key_heap + value.heap_bytes()) as u64 + ENTRY_OVERHEAD
}

pub(crate) struct ReadCache {
    entries: Cache<Key, Cached, Bytes>,
    /// Bumped by every write (under `writes`): a read that missed caches what it read only
    /// when the generation did not move meanwhile.
    generation: AtomicU64,
    writes: Mutex<()>,
    /// Set once a write found no room (see [`ReadCache::written`]).
    overflowed: AtomicBool,
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
            overflowed: AtomicBool::new(false),
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
        let read = Cached::of(read()?.as_deref());
        let _writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(Ordering::Acquire) == before {
            self.entries.insert(Key::from_slice(key), read.clone());
        }
        Ok(read)
    }

    /// `key`'s bytes if cached (`Some(Cached::Absent)`: cached as absent), without reading or caching.
    pub(crate) fn peek(&self, key: &[u8]) -> Option<Cached> {
        self.entries.peek(key)
    }

    /// The table now holds `entries` (written to RocksDB already), in order: the later of
    /// two writes of one key wins. True the first time a key found no room: from then on,
    /// lookups of keys left out read RocksDB.
    pub(crate) fn written<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> bool {
        let _writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        // While there is room, writes fill the cache (a bootstrapped table that fits is read
        // from memory from its first join on). Once full, a write only replaces a cached
        // value: a bootstrap larger than the cache would otherwise spend an insert and an
        // eviction on every row, most of them never read. Each shard evicts at its own share
        // of the capacity, before the whole is full: filling stops at nine tenths of it.
        let fill_to = self.entries.capacity() / 10 * 9;
        let mut room = fill_to.saturating_sub(self.entries.weight());
        let mut left_out = false;
        for (key, value) in entries {
            let value = Cached::of(value);
            let weight = weight_of(key, &value);
            if weight <= room {
                room -= weight;
                self.entries.insert(Key::from_slice(key), value);
            } else {
                // Absent: nothing stale to replace.
                left_out |= self
                    .entries
                    .replace(Key::from_slice(key), value, true)
                    .is_err();
            }
        }
        left_out && !self.overflowed.swap(true, Ordering::Relaxed)
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
        assert_eq!(
            cache.get_or_read(b"absent", read(None)).unwrap().as_deref(),
            None
        );
        let again = cache.get_or_read(b"absent", || -> Result<_, ()> { panic!("read again") });
        assert_eq!(again.unwrap().as_deref(), None);
    }

    #[test]
    fn values_keep_their_bytes_inline_or_shared_and_empty_is_not_absent() {
        for len in [0, 1, INLINE - 1, INLINE, INLINE + 1, 4096] {
            let value: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let cached = Cached::of(Some(&value));
            assert_eq!(cached.as_deref(), Some(&value[..]), "{len} bytes");
            assert_eq!(matches!(cached, Cached::Shared(_)), len > INLINE);
            assert_eq!(cached.clone(), cached);
        }
        assert_eq!(Cached::of(None).as_deref(), None);
        assert_ne!(Cached::of(None), Cached::of(Some(&[])));
    }

    #[test]
    fn writes_replace_cached_values_and_the_last_write_of_a_key_wins() {
        let cache = ReadCache::new(1 << 20).unwrap();
        cache.get_or_read(b"k", read(Some(b"old"))).unwrap();
        let left_out = cache.written([
            (&b"k"[..], Some(&b"1"[..])),
            (&b"k"[..], Some(&b"2"[..])),
            (&b"gone"[..], None),
        ]);
        assert!(!left_out, "a cache with room holds every write");
        let fail = || -> Result<_, ()> { panic!("written keys are cached") };
        assert_eq!(
            cache.get_or_read(b"k", fail).unwrap().as_deref(),
            Some(&b"2"[..])
        );
        assert_eq!(cache.get_or_read(b"gone", fail).unwrap().as_deref(), None);
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
        assert!(
            cache.written(keys.iter().map(|k| (&k[..], Some(&value[..])))),
            "the first write that finds no room says so"
        );
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
        let said_again = cache.written([
            (&uncached[..], Some(&large[..])),
            (&cached[..], Some(&b"new"[..])),
        ]);
        assert!(!said_again, "only the first time");
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
