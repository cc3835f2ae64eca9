//! Checkpoints: how far a store's state stands in its changelog and in the source partition.
//! Plain values: `db` stores them, changelog markers and headers carry them
//! (`changelog::format`), `replay` computes them and `offset` tracks done records with them;
//! kept apart so that all of those read this file and it reads none of them.

use serde::{Deserialize, Serialize};

/// Where a store's state stands relative to its changelog and the source partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoreCheckpoint {
    /// Next changelog offset to read: everything before it is in RocksDB. It always follows
    /// a marker (flush or epoch) of this store.
    pub(crate) changelog_next: i64,
    /// Epoch of that marker's writer.
    pub(crate) epoch: u64,
    /// Flush sequence number of the last flush applied.
    pub(crate) seq: u64,
    /// Next source offset: every source record before it is reflected in the state.
    pub(crate) source_next: i64,
    /// Timestamp of the source record before `source_next` (-1: unknown).
    #[serde(default = "unknown")]
    pub(crate) source_timestamp: i64,
    /// The partition's stream time at `source_next` (-1: none).
    #[serde(default = "unknown")]
    pub(crate) stream_time: i64,
    /// Source records after `source_next` reflected too (see `SourcePosition::done`).
    #[serde(default, skip_serializing_if = "DoneSet::is_empty")]
    pub(crate) source_done: DoneSet,
    /// The last flush applied was complete but not yet confirmed by a later record of this
    /// store (a standby replica applies it early, see `replay::release_complete`): an epoch
    /// marker that voids it means this state must be rebuilt.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) unsettled: bool,
}

fn unknown() -> i64 {
    -1
}

impl StoreCheckpoint {
    /// No local state: replay the whole changelog.
    pub(crate) const EMPTY: Self = Self {
        changelog_next: 0,
        epoch: 0,
        seq: 0,
        source_next: -1,
        source_timestamp: -1,
        stream_time: -1,
        source_done: DoneSet::EMPTY,
        unsettled: false,
    };

    /// The checkpoint after the marker at `changelog_next - 1`, written by `(epoch, seq)`,
    /// for a state that reflects the source up to `source`.
    pub(crate) fn at(
        changelog_next: i64,
        (epoch, seq): (u64, u64),
        source: &SourcePosition,
    ) -> Self {
        Self {
            changelog_next,
            epoch,
            seq,
            source_next: source.next,
            source_timestamp: source.last_timestamp,
            stream_time: source.stream_time,
            source_done: source.done.clone(),
            unsettled: false,
        }
    }
}

/// How far the state reflects the source partition: every record before `next`, the last
/// of which had timestamp `last_timestamp` (a fingerprint: a recreated source topic has
/// other records at the same offsets), and the records at or after `next` in `done`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourcePosition {
    pub(crate) next: i64,
    /// `-1` when unknown.
    pub(crate) last_timestamp: i64,
    /// The partition's stream time (highest event time seen, milliseconds); `-1`: none.
    pub(crate) stream_time: i64,
    /// Records at or after `next` that are applied too: with key-level concurrency, records
    /// complete out of order, and a flush reflects those that completed above the lowest
    /// one still running. Empty otherwise.
    pub(crate) done: DoneSet,
}

impl SourcePosition {
    pub(crate) const NONE: Self = Self {
        next: -1,
        last_timestamp: -1,
        stream_time: -1,
        done: DoneSet::EMPTY,
    };

    /// The later of two positions (a later flush reaches as far, with at least as many
    /// records done after it).
    pub(crate) fn max(self, other: Self) -> Self {
        if (other.next, other.done.len()) > (self.next, self.done.len()) {
            other
        } else {
            self
        }
    }

    /// Whether the record at `offset` is reflected in the state.
    pub(crate) fn covers(&self, offset: i64) -> bool {
        offset < self.next || self.done.contains(offset)
    }
}

/// Source offsets whose records are applied, as sorted disjoint ranges `[start, end)`;
/// shared (cheap to clone), and allocation-free when empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DoneSet(Option<std::sync::Arc<[(i64, i64)]>>);

impl DoneSet {
    pub(crate) const EMPTY: Self = Self(None);

    /// The set of these ranges (sorted, disjoint, non-empty ranges).
    pub(crate) fn from_ranges(ranges: Vec<(i64, i64)>) -> Self {
        if ranges.is_empty() {
            Self(None)
        } else {
            Self(Some(ranges.into()))
        }
    }

    pub(crate) fn ranges(&self) -> &[(i64, i64)] {
        self.0.as_deref().unwrap_or_default()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Offsets in the set.
    pub(crate) fn len(&self) -> u64 {
        self.ranges().iter().map(|(a, b)| (b - a) as u64).sum()
    }

    pub(crate) fn contains(&self, offset: i64) -> bool {
        let ranges = self.ranges();
        match ranges.binary_search_by(|(start, _)| start.cmp(&offset)) {
            Ok(_) => true,
            Err(0) => false,
            Err(i) => offset < ranges[i - 1].1,
        }
    }

    /// `a-b,c-d` (header and checkpoint text); empty for the empty set.
    pub(crate) fn to_text(&self) -> String {
        let parts: Vec<String> = self
            .ranges()
            .iter()
            .map(|(a, b)| format!("{a}-{b}"))
            .collect();
        parts.join(",")
    }

    /// Parses [`to_text`](Self::to_text); `None` for malformed text.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        if text.is_empty() {
            return Some(Self::EMPTY);
        }
        let mut ranges = Vec::new();
        for part in text.split(',') {
            let (a, b) = part.split_once('-')?;
            let (a, b): (i64, i64) = (a.parse().ok()?, b.parse().ok()?);
            if b <= a || ranges.last().is_some_and(|&(_, end)| a < end) {
                return None;
            }
            ranges.push((a, b));
        }
        Some(Self::from_ranges(ranges))
    }
}

impl serde::Serialize for DoneSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_text())
    }
}

impl<'de> serde::Deserialize<'de> for DoneSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).ok_or_else(|| serde::de::Error::custom("malformed done set"))
    }
}
