//! The memory of every partition's RocksDB, shared: one block cache and one write-buffer
//! manager per consumer, sized from its memory budget (see
//! [`ConsumerConfigBuilder::memory_budget`](crate::ConsumerConfigBuilder::memory_budget)),
//! as Kafka Streams users configure through a `RocksDBConfigSetter`. Without them each
//! partition's database (and column family) sizes its own caches and memtables, and memory
//! follows the partition count instead of the data.

use rocksdb::{BlockBasedOptions, Cache, Options, WriteBufferManager};

/// A memtable is flushed at this size at the latest (the shared write-buffer manager
/// flushes earlier when all memtables together reach its budget).
const MEMTABLE_BYTES: usize = 8 << 20;

/// Shared RocksDB memory of one consumer.
pub(crate) struct RocksMemory {
    cache: Cache,
    buffers: WriteBufferManager,
}

impl std::fmt::Debug for RocksMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksMemory")
            .field("cache_usage", &self.cache.get_usage())
            .field("write_buffer_usage", &self.buffers.get_usage())
            .finish()
    }
}

impl RocksMemory {
    /// A block cache of `cache_bytes` and memtables of `write_bytes` in all. The memtables
    /// are charged to the cache too, so the two together stay within `cache_bytes +
    /// write_bytes`.
    pub(crate) fn new(cache_bytes: usize, write_bytes: usize) -> Self {
        let cache = Cache::new_lru_cache(cache_bytes.max(1 << 20) + write_bytes);
        let buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
            write_bytes.max(1 << 20),
            false,
            cache.clone(),
        );
        Self { cache, buffers }
    }

    /// Column family options drawing on the shared memory. Handlers often read keys that do
    /// not exist yet (a first visit, a new window): bloom filters on the SST files answer
    /// such misses without reading data blocks (Kafka Streams sets one on its stores too);
    /// filters and indexes live in the shared cache, so they count against the budget.
    pub(crate) fn column_family(&self) -> Options {
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_block_cache(&self.cache);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        let mut options = Options::default();
        options.set_block_based_table_factory(&table);
        options.set_write_buffer_size(MEMTABLE_BYTES);
        options.set_write_buffer_manager(&self.buffers);
        options
    }

    /// Database options drawing on the shared memory.
    pub(crate) fn database(&self) -> Options {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_write_buffer_manager(&self.buffers);
        options
    }
}

impl Default for RocksMemory {
    /// 32 MiB of cache and 32 MiB of memtables (tests and tools).
    fn default() -> Self {
        Self::new(32 << 20, 32 << 20)
    }
}
