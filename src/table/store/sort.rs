//! Sorting a run of table records into entries to write and bad records, as the error
//! policy says.

use super::super::{TableError, TableSpec};
use super::Entry;
use crate::batch::RecordBatch;
use crate::changelog::OutRecord;
use crate::codec::CodecError;
use crate::config::ErrorPolicy;

/// What applying a run of table records comes to.
pub(crate) struct Sorted<'b> {
    /// Entries to write (`None`: a tombstone).
    pub(crate) entries: Vec<Entry<'b>>,
    /// Bad records to produce to the dead-letter topic before the checkpoint passes them.
    pub(crate) dead_letters: Vec<OutRecord>,
    /// Bad records left out under `Skip`.
    pub(crate) skipped: u64,
    /// The checkpoint after the run (the first bad record's offset under `Fail`).
    pub(crate) next: i64,
    /// A bad record under `Fail`: the table stops before it.
    pub(crate) failed: Option<TableError>,
}

/// Sorts the records `batch.records[from..to]` of `spec`'s `partition` into entries to write
/// and bad records, as `policy` says.
pub(crate) fn sort_out<'b>(
    spec: &TableSpec,
    partition: i32,
    batch: &'b RecordBatch,
    range: std::ops::Range<usize>,
    policy: &ErrorPolicy,
) -> Sorted<'b> {
    let mut sorted = Sorted {
        entries: Vec::with_capacity(range.len()),
        dead_letters: Vec::new(),
        skipped: 0,
        next: -1,
        failed: None,
    };
    for r in &batch.records[range] {
        let (key, value) = (batch.key(r), batch.value(r));
        let checked = match key {
            None => Err(CodecError::new("table", "record without a key")),
            Some(_) => {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (spec.check)(key, value)))
                    .unwrap_or_else(|_| Err(CodecError::new("table", "codec panicked")))
            }
        };
        match (checked, policy) {
            (Ok(()), _) => sorted.entries.push(Entry {
                key: key.unwrap_or_default(),
                value,
                time: r.timestamp.unwrap_or(0),
            }),
            (Err(source), ErrorPolicy::Fail) => {
                sorted.next = r.offset;
                sorted.failed = Some(TableError::BadRecord {
                    topic: spec.topic.clone(),
                    partition,
                    offset: r.offset,
                    source,
                });
                return sorted;
            }
            (Err(error), ErrorPolicy::Skip) => {
                tracing::warn!(table = %spec.name, topic = %spec.topic, partition, offset = r.offset,
                    %error, "skipping a table record that cannot be decoded");
                sorted.skipped += 1;
            }
            (Err(error), ErrorPolicy::DeadLetter(dlq)) => {
                tracing::warn!(table = %spec.name, topic = %spec.topic, partition, offset = r.offset,
                    dead_letter_topic = %dlq, %error, "dead-lettering a table record that cannot be decoded");
                sorted.dead_letters.push(batch.dead_letter(
                    r,
                    dlq,
                    (&spec.topic, partition),
                    "decode",
                    &error.to_string(),
                ));
            }
        }
        sorted.next = r.offset + 1;
    }
    sorted
}
