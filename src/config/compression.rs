//! How the consumer's own producers (changelog, dead-letter and output records) compress.

/// Compression of the record batches this consumer produces: changelog records, flush and
/// epoch markers, dead-lettered and output records. (What it *reads* may use any codec:
/// every one Kafka has is built in.)
///
/// The default, [`Lz4`](Self::Lz4), costs little CPU (a few percent of a flush) and makes
/// changelog batches of JSON or bincode state several times smaller: less to send, to store
/// and to read back on a restore. [`Zstd`](Self::Zstd) compresses better for more CPU;
/// [`None`](Self::None) saves the CPU where the broker or the network is never the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compression {
    /// No compression.
    None,
    /// gzip: widely supported, the most CPU per byte.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4 (the default).
    #[default]
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// librdkafka's `compression.type` value.
    pub(crate) fn as_rdkafka(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}
