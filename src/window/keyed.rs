//! The key layout of session and sliding window stores: a key's entries lie together (the
//! encoded key, framed by its length so that no key is a prefix of another), each followed
//! by ordered times. One key's sessions or records are then one prefix scan.

use crate::state::window_keys::{start_of, start_prefix};

/// The framed key: its length (4 bytes) and the encoded key.
pub(super) fn framed(encoded: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + encoded.len() + 16);
    out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    out.extend_from_slice(encoded);
    out
}

/// Appends an ordered time to a framed key.
pub(super) fn push_time(out: &mut Vec<u8>, time: i64) {
    out.extend_from_slice(&start_prefix(time));
}

/// The encoded key of a stored entry, and the bytes after it.
pub(super) fn split(entry: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(entry.get(..4)?.try_into().ok()?) as usize;
    let key = entry.get(4..4 + len)?;
    Some((key, &entry[4 + len..]))
}

/// The `n`th ordered time after the framed key of `entry`.
pub(super) fn time_at(entry: &[u8], n: usize) -> Option<i64> {
    let (_, rest) = split(entry)?;
    start_of(rest.get(n * 8..)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_keys_keep_keys_apart_and_times_in_order() {
        let mut a = framed(b"ab");
        push_time(&mut a, -5);
        let mut b = framed(b"abc");
        push_time(&mut b, -5);
        assert!(
            !b.starts_with(&framed(b"ab")),
            "no key is a prefix of another"
        );
        assert_eq!(split(&a), Some((&b"ab"[..], &start_prefix(-5)[..])));
        assert_eq!(time_at(&a, 0), Some(-5));
        let (mut early, mut late) = (framed(b"k"), framed(b"k"));
        push_time(&mut early, -1);
        push_time(&mut late, 3);
        assert!(early < late, "times sort in byte order, negative first");
    }
}
