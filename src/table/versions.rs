//! Versioned tables: every value a key had, by timestamp, for as-of reads
//! ([`Table::as_of`](super::Table::as_of)).
//!
//! A versioned table keeps, beside its latest values, a second column family of versions:
//! the key `len(key) ‖ key ‖ time` (the length first, so that one key's versions are
//! contiguous whatever bytes keys hold; the time as big-endian with its sign bit flipped,
//! so that byte order is time order) maps to the value or a tombstone. "The value of `k` as
//! of `t`" is then one backward seek from `k ‖ t`. Two records of a key with one timestamp
//! are one version: the later in the topic wins, as a `put` with the same timestamp does in
//! Kafka Streams' versioned stores (KIP-889).
//!
//! **The head.** The table's column family of latest values holds, per key, its newest
//! version with that version's time (so on a versioned table [`get`](super::Table::get)
//! reads the version with the highest timestamp, as Kafka Streams' versioned stores do).
//! Most lookups are for a time at or after a key's newest version (live records, and
//! replays of records newer than the key's last change): they cost one point read of the
//! head, the same as `get`; only a lookup before the newest version seeks in the history.
//!
//! **History retention.** Versions older than the retention behind the newest timestamp
//! the table partition has seen are pruned when their key is written again, except the
//! newest of them (it is still the answer for times up to the next version). A lookup at a
//! time before that horizon fails with [`TableError::TooOld`](super::TableError::TooOld)
//! instead of answering from a history that may have been pruned.

/// The prefix all versions of `key` share.
pub(crate) fn prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + key.len() + 8);
    let len = u32::try_from(key.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// The version key of `key` at `time`.
pub(crate) fn key(key: &[u8], time: i64) -> Vec<u8> {
    let mut out = prefix(key);
    push_time(&mut out, time);
    out
}

/// A head's stored bytes: the newest version's time, then its stored bytes.
pub(crate) fn encode_head(time: i64, stored: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + stored.len());
    out.extend_from_slice(&time.to_be_bytes());
    out.extend_from_slice(stored);
    out
}

/// The newest version's time and stored bytes from a head.
pub(crate) fn decode_head(head: &[u8]) -> Option<(i64, &[u8])> {
    let (time, stored) = head.split_at_checked(8)?;
    Some((i64::from_be_bytes(time.try_into().ok()?), stored))
}

/// Appends `time` so that byte order is time order.
pub(crate) fn push_time(out: &mut Vec<u8>, time: i64) {
    out.extend_from_slice(&((time as u64) ^ (1 << 63)).to_be_bytes());
}

/// The time of a version key.
pub(crate) fn time_of(version_key: &[u8]) -> Option<i64> {
    let tail: [u8; 8] = version_key
        .get(version_key.len().checked_sub(8)?..)?
        .try_into()
        .ok()?;
    Some((u64::from_be_bytes(tail) ^ (1 << 63)) as i64)
}

const TOMBSTONE: u8 = 0;
const VALUE: u8 = 1;

/// A version's stored bytes: a tag, then the value as produced.
pub(crate) fn encode(value: Option<&[u8]>) -> Vec<u8> {
    match value {
        None => vec![TOMBSTONE],
        Some(v) => {
            let mut out = Vec::with_capacity(1 + v.len());
            out.push(VALUE);
            out.extend_from_slice(v);
            out
        }
    }
}

/// The value a stored version holds (`None`: a tombstone).
pub(crate) fn decode(stored: &[u8]) -> Option<&[u8]> {
    match stored.split_first() {
        Some((&VALUE, value)) => Some(value),
        _ => None,
    }
}

/// Of one key's versions, in time order (`(time, is_tombstone)`), the index of the first
/// to keep when lookups before `horizon` are refused: the newest version at or before the
/// horizon answers for times from the horizon to the next version, so it stays — unless it
/// is a tombstone, which answers "absent" as no version at all does.
pub(crate) fn first_kept(versions: &[(i64, bool)], horizon: i64) -> usize {
    let at_or_before = versions.partition_point(|&(t, _)| t <= horizon);
    match at_or_before.checked_sub(1) {
        None => 0,
        Some(newest_old) if versions[newest_old].1 => at_or_before,
        Some(newest_old) => newest_old,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_keys_sort_by_key_then_time_whatever_the_key_bytes() {
        let mut keys = [
            key(b"a", 5),
            key(b"a\0", -3),
            key(b"a", -7),
            key(b"ab", 1),
            key(b"a", i64::MAX),
            key(b"", 0),
        ];
        keys.sort();
        let decoded: Vec<_> = keys
            .iter()
            .map(|k| (k[4..k.len() - 8].to_vec(), time_of(k).unwrap()))
            .collect();
        assert_eq!(
            decoded,
            vec![
                (b"".to_vec(), 0),
                (b"a".to_vec(), -7),
                (b"a".to_vec(), 5),
                (b"a".to_vec(), i64::MAX),
                (b"a\0".to_vec(), -3),
                (b"ab".to_vec(), 1),
            ]
        );
        assert!(key(b"a", 9).starts_with(&prefix(b"a")));
        assert!(!key(b"ab", 9).starts_with(&prefix(b"a")));
    }

    #[test]
    fn a_head_holds_the_newest_versions_time_and_bytes() {
        let decoded =
            |head: &[u8]| decode_head(head).map(|(t, s)| (t, decode(s).map(<[u8]>::to_vec)));
        assert_eq!(
            decoded(&encode_head(-5, &encode(Some(b"v")))),
            Some((-5, Some(b"v".to_vec())))
        );
        assert_eq!(decoded(&encode_head(7, &encode(None))), Some((7, None)));
    }

    #[test]
    fn values_and_tombstones_round_trip() {
        assert_eq!(decode(&encode(Some(b"x"))), Some(&b"x"[..]));
        assert_eq!(decode(&encode(Some(b""))), Some(&b""[..]));
        assert_eq!(decode(&encode(None)), None);
    }

    #[test]
    fn pruning_keeps_the_version_that_still_answers_at_the_horizon() {
        let v = |t| (t, false);
        let gone = |t| (t, true);
        // Nothing old enough: keep all.
        assert_eq!(first_kept(&[v(10), v(20)], 5), 0);
        // 10 and 20 are before 25; 20 answers for 25..30: keep from it.
        assert_eq!(first_kept(&[v(10), v(20), v(30)], 25), 1);
        // A version exactly at the horizon answers at it.
        assert_eq!(first_kept(&[v(10), v(20), v(30)], 20), 1);
        // The newest old version is a tombstone: "absent" needs no version.
        assert_eq!(first_kept(&[v(10), gone(20), v(30)], 25), 2);
        assert_eq!(first_kept(&[v(10), gone(20)], 25), 2);
        assert_eq!(first_kept(&[], 25), 0);
    }
}
