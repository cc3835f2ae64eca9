//! The key layout of window stores, known to the state layer so that it can delete closed
//! windows by range: an entry's key is its window start (8 bytes, ordered) followed by the
//! encoded key.

/// The ordered 8-byte prefix of a window start.
pub(crate) fn start_prefix(start: i64) -> [u8; 8] {
    ((start as u64) ^ (1 << 63)).to_be_bytes()
}

/// The window start a key begins with.
pub(crate) fn start_of(prefix: &[u8]) -> Option<i64> {
    Some((u64::from_be_bytes(prefix.get(..8)?.try_into().ok()?) ^ (1 << 63)) as i64)
}
