//! Output records in flight. A record's output records are handed to the producer when its
//! handler returns, and handling goes on at once; their acknowledgements are waited for by
//! the flush that makes the record's offset durable (before its changelog records, so a
//! flush that finds an output lost writes nothing). A record's offset is therefore
//! committable only once its state writes and its output records are both durable — one
//! watermark for both — and a partition pays one acknowledgement wait per flush, not one
//! broker round trip per record.
//!
//! The same holds under key-level concurrency: a record in flight that finishes joins the
//! outputs the next flush waits for.
//!
//! An acknowledgement that never comes (the producer gave up: topic deleted, not
//! authorized, `delivery.timeout.ms` passed) ends the partition with `Error::Output`
//! naming the first record whose outputs were lost: nothing from it on is committed, and
//! the next owner handles it again. Skipping it instead is not possible: its state writes
//! and the records after it were applied already.
//!
//! Memory: what waits in the producer is bounded by its local queue
//! (`queue.buffering.max.kbytes`, from the memory budget); a full queue makes the next
//! send wait.

use crate::changelog::{ChangelogError, OutRecord, Pending};

/// Output records sent since the last flush started, with the source offset of the record
/// that sent them.
#[derive(Debug, Default)]
pub(crate) struct OutputsInFlight {
    sent: Vec<(i64, Pending)>,
    /// Bytes of the records not produced yet (deferred under exactly-once).
    deferred_bytes: usize,
}

impl OutputsInFlight {
    /// The record at `offset` sent output records.
    pub(crate) fn push(&mut self, offset: i64, pending: Pending) {
        self.deferred_bytes += pending.deferred_bytes();
        self.sent.push((offset, pending));
    }

    /// The acknowledgement group the next record's outputs may join: the last one pushed,
    /// until a flush takes it. (Under key-level concurrency records do not join: one still
    /// in flight when a flush took the group would join a group that flush already waits
    /// for, and no later flush would wait for its outputs.)
    pub(crate) fn open_group(&self) -> Option<Pending> {
        self.sent.last().map(|(_, pending)| pending.share())
    }

    /// Bytes of the output records held here until the next flush produces them (under
    /// exactly-once; counted against the overlay's budget).
    pub(crate) fn deferred_bytes(&self) -> usize {
        self.deferred_bytes
    }

    /// Whether no output record waits for a flush.
    pub(crate) fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// Everything sent so far, for a flush to wait for.
    pub(crate) fn take(&mut self) -> Sent {
        self.deferred_bytes = 0;
        Sent(std::mem::take(&mut self.sent))
    }
}

/// Output records a flush waits for.
#[derive(Debug, Default)]
pub(crate) struct Sent(Vec<(i64, Pending)>);

impl Sent {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The records not produced yet, with the offset of the record that sent them.
    pub(crate) fn take_deferred(&mut self) -> Vec<(i64, Vec<OutRecord>)> {
        self.0
            .iter_mut()
            .map(|(offset, pending)| (*offset, pending.take_deferred()))
            .filter(|(_, records)| !records.is_empty())
            .collect()
    }

    /// Waits for every acknowledgement, in send order.
    ///
    /// # Errors
    /// The source offset of the first record whose output was not acknowledged, and why.
    pub(crate) async fn acknowledged(self) -> Result<(), (i64, ChangelogError)> {
        for (offset, pending) in self.0 {
            pending.wait().await.map_err(|error| (offset, error))?;
        }
        Ok(())
    }
}
