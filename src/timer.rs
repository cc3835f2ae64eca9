//! Timers: per-partition callbacks at a stream time or a wall-clock time.
//!
//! A handler (or a hook) schedules a timer with
//! [`PartitionContext::schedule`](crate::PartitionContext::schedule); when its time has come
//! the partition's worker calls [`Handler::on_timer`](crate::Handler::on_timer), in time
//! order, between records, with store access and output records like a record. Stream-time
//! timers fire once the partition's stream time reaches them (after the record that moved
//! it); wall-clock timers are checked every 100 ms.
//!
//! Timers are state: they live in an internal store (`ks.timers`, with its changelog), so a
//! restart or a new owner of the partition still fires them, and a timer's firing — its
//! removal and its effects — is flushed atomically with everything else: a crash before the
//! flush fires it again (its output is at-least-once, its state writes exactly once).
//! Declare them with [`ConsumerConfigBuilder::timers`](crate::ConsumerConfigBuilder::timers);
//! windows do it for you. Every pending timer is also kept in memory (about 64 bytes plus
//! its key), for finding the next due one without reading the store.

use std::collections::BTreeSet;

/// The name of the internal store of timers.
pub(crate) const TIMER_STORE: &str = "ks.timers";

/// Which clock a timer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum TimeKind {
    /// The partition's stream time (highest event time processed).
    Stream,
    /// Wall-clock time of this process.
    Wall,
}

impl TimeKind {
    fn tag(self) -> u8 {
        match self {
            TimeKind::Stream => 0,
            TimeKind::Wall => 1,
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            0 => Some(TimeKind::Stream),
            1 => Some(TimeKind::Wall),
            _ => None,
        }
    }
}

/// The system's wall clock in milliseconds since the epoch (wall-clock timers and TTLs; the
/// test driver adds an offset).
pub(crate) fn wall_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Whose timer it is: the handler's, or the library's (window close).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Owner {
    Handler = 0,
    Window = 1,
    /// The sweep of a store with a TTL ([`crate::state::ttl`]).
    Expiry = 2,
}

/// A timer that fired.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timer {
    /// Its clock.
    pub kind: TimeKind,
    /// The time it was scheduled at, in milliseconds since the epoch.
    pub at: i64,
    /// The key it was scheduled with.
    pub key: Vec<u8>,
}

/// A pending timer, ordered by clock, time, owner, key.
pub(crate) type Entry = (TimeKind, i64, Owner, Vec<u8>);

/// The store key of a timer: clock, time (sign-flipped big-endian, so byte order is time
/// order), owner, key.
pub(crate) fn encode((kind, at, owner, key): &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + key.len());
    out.push(kind.tag());
    out.extend_from_slice(&((*at as u64) ^ (1 << 63)).to_be_bytes());
    out.push(*owner as u8);
    out.extend_from_slice(key);
    out
}

pub(crate) fn decode(bytes: &[u8]) -> Option<Entry> {
    let kind = TimeKind::from_tag(*bytes.first()?)?;
    let at = u64::from_be_bytes(bytes.get(1..9)?.try_into().ok()?) ^ (1 << 63);
    let owner = match bytes.get(9)? {
        0 => Owner::Handler,
        1 => Owner::Window,
        2 => Owner::Expiry,
        _ => return None,
    };
    Some((kind, at as i64, owner, bytes[10..].to_vec()))
}

/// The pending timers of a partition, in firing order.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    pending: BTreeSet<Entry>,
}

impl Timers {
    pub(crate) fn insert(&mut self, entry: Entry) -> bool {
        self.pending.insert(entry)
    }

    pub(crate) fn remove(&mut self, entry: &Entry) -> bool {
        self.pending.remove(entry)
    }

    /// The earliest timer of `kind` due at `now`, if any.
    pub(crate) fn next_due(&self, kind: TimeKind, now: i64) -> Option<Entry> {
        self.first_due(kind, now).cloned()
    }

    pub(crate) fn is_due(&self, kind: TimeKind, now: i64) -> bool {
        self.first_due(kind, now).is_some()
    }

    fn first_due(&self, kind: TimeKind, now: i64) -> Option<&Entry> {
        let first = self
            .pending
            .range((kind, i64::MIN, Owner::Handler, Vec::new())..)
            .next()?;
        (first.0 == kind && first.1 <= now).then_some(first)
    }

    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn contains(&self, entry: &Entry) -> bool {
        self.pending.contains(entry)
    }

    /// Whether any pending timer matches `f`.
    pub(crate) fn any(&self, f: impl FnMut(&Entry) -> bool) -> bool {
        self.pending.iter().any(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_keys_sort_in_firing_order_and_round_trip() {
        let entries = [
            (TimeKind::Stream, -5, Owner::Handler, b"a".to_vec()),
            (TimeKind::Stream, 0, Owner::Window, b"w".to_vec()),
            (
                TimeKind::Stream,
                1_700_000_000_000,
                Owner::Handler,
                Vec::new(),
            ),
            (TimeKind::Wall, 3, Owner::Handler, b"z".to_vec()),
        ];
        let keys: Vec<Vec<u8>> = entries.iter().map(encode).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for (entry, key) in entries.iter().zip(&keys) {
            assert_eq!(decode(key).as_ref(), Some(entry));
        }
    }

    #[test]
    fn only_due_timers_of_the_asked_clock_come_out_earliest_first() {
        let mut t = Timers::default();
        t.insert((TimeKind::Wall, 1, Owner::Handler, b"w".to_vec()));
        t.insert((TimeKind::Stream, 20, Owner::Handler, b"b".to_vec()));
        t.insert((TimeKind::Stream, 10, Owner::Handler, b"a".to_vec()));
        assert_eq!(t.next_due(TimeKind::Stream, 5), None);
        let first = t.next_due(TimeKind::Stream, 25).unwrap();
        assert_eq!(first.1, 10);
        t.remove(&first);
        assert_eq!(t.next_due(TimeKind::Stream, 25).unwrap().1, 20);
        assert_eq!(t.next_due(TimeKind::Wall, 1).unwrap().3, b"w");
        assert_eq!(t.len(), 3 - 1);
    }
}
