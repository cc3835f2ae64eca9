//! [`ConsumerConfigBuilder`] setters for memory: fetched-record queues and unflushed writes,
//! per partition and in all.

use super::ConsumerConfigBuilder;

impl ConsumerConfigBuilder {
    /// Records fetched ahead per partition (default 100 000; librdkafka's
    /// `queued.min.messages`).
    ///
    /// Each assigned partition's records wait in its own librdkafka queue, which its worker
    /// polls. librdkafka keeps fetching a partition until its queue holds this many records
    /// or [`queue_bytes`](Self::queue_bytes), and then simply stops until the worker takes
    /// records out: a slow partition holds its budget and no more, and no other partition
    /// waits for it. Nothing fetched is dropped.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.config.queue_capacity = capacity;
        self
    }

    /// Bytes fetched ahead per partition (librdkafka's `queued.max.messages.kbytes`, which
    /// applies per partition with the partition queues this consumer uses). Default: the
    /// fetched-records share of the [`memory_budget`](Self::memory_budget) divided by the
    /// subscribed topics' partitions, between 256 KiB and 16 MiB.
    ///
    /// The bound is librdkafka's: a fetch already in flight when the queue fills still
    /// lands, so a queue can exceed it by one fetch response — `max.partition.fetch.bytes`,
    /// or one whole record batch as the producer wrote it when that is larger (brokers
    /// never split a batch). The worker also holds the batch it took out, at most this much.
    pub fn queue_bytes(mut self, bytes: usize) -> Self {
        self.config.queue_bytes = bytes;
        self.config.sizes_set.queue_bytes = true;
        self
    }

    /// Bytes fetched ahead across all partitions, divided among the subscribed topics'
    /// partitions when [`queue_bytes`](Self::queue_bytes) is not set (default: a quarter of
    /// the [`memory_budget`](Self::memory_budget)).
    pub fn total_queue_bytes(mut self, bytes: usize) -> Self {
        self.config.total_queue_bytes = bytes;
        self.config.sizes_set.total_queue_bytes = true;
        self
    }

    /// Bytes of unflushed state writes per partition before a flush is started early
    /// (default 64 MiB): keys and values in the write overlay.
    pub fn overlay_bytes(mut self, bytes: usize) -> Self {
        self.config.overlay_bytes = bytes;
        self.config.sizes_set.overlay_bytes = true;
        self
    }

    /// The consumer's memory budget in bytes (default 192 MiB), in four equal shares:
    /// RocksDB's block cache and RocksDB's memtables (each shared by every partition's
    /// database, as one `Cache` and one `WriteBufferManager`), fetched records waiting for
    /// their partition's worker, and unflushed state writes. The last two are divided among
    /// the partitions of the subscribed topics (known at start), unless set with
    /// [`queue_bytes`](Self::queue_bytes), [`total_queue_bytes`](Self::total_queue_bytes) or
    /// [`overlay_bytes`](Self::overlay_bytes): a consumer of 64 partitions does not hold 64
    /// times the memory of one. With [tables](Self::table) declared, five sixths of the
    /// block cache's share go to the tables' read caches instead (their latest values in
    /// memory, one cache per partition's co-partitioned tables and one per global table,
    /// divided evenly): a join reads its table once per record, and a read from memory
    /// costs a fraction of a RocksDB point read. The process also has librdkafka's and the
    /// runtime's own memory (some tens of MB).
    pub fn memory_budget(mut self, bytes: usize) -> Self {
        self.config.memory_budget = bytes;
        self
    }
}
