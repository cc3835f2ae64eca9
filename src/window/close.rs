//! Closing a window: its close timer's key, the entries handed to
//! [`Handler::on_window_closed`](crate::Handler::on_window_closed), and their deletion.

use std::sync::Arc;

use super::{start_of, start_prefix, Window, WindowDef};
use crate::codec::CodecError;
use crate::state::{KeyValues, PartitionState};

/// The key of a window's close timer: store name, then window start.
pub(super) fn close_key(store: &str, start: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + store.len() + 8);
    key.push(store.len() as u8);
    key.extend_from_slice(store.as_bytes());
    key.extend_from_slice(&start_prefix(start));
    key
}

pub(super) fn parse_close_key(key: &[u8]) -> Option<(String, i64)> {
    let len = *key.first()? as usize;
    let store = std::str::from_utf8(key.get(1..1 + len)?).ok()?.to_string();
    Some((store, start_of(key.get(1 + len..)?)?))
}

/// A window that closed: its final entries, as
/// [`Handler::on_window_closed`](crate::Handler::on_window_closed) gets them.
#[derive(Debug, Clone)]
pub struct ClosedWindow {
    /// The window store's name.
    pub store: String,
    /// The window.
    pub window: Window,
    /// The store's entries: full keys (window start, then the encoded key) and values.
    entries: Arc<KeyValues>,
}

impl ClosedWindow {
    /// The window's entries decoded with `def`'s codecs (`def` must be this store's).
    ///
    /// # Errors
    /// Codec errors.
    pub fn entries<K: Send + 'static, V: Send + 'static>(
        &self,
        def: &WindowDef<K, V>,
    ) -> Result<Vec<(K, V)>, CodecError> {
        self.entries
            .iter()
            .map(|(k, v)| Ok((def.key.decode(&k[8..])?, def.value.decode(v)?)))
            .collect()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the window has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A window whose close timer fired: its final entries, handed to
/// [`Handler::on_window_closed`](crate::Handler::on_window_closed). `None` when its store
/// is no longer declared.
///
/// # Errors
/// A malformed timer key, RocksDB errors.
pub(crate) fn closing(
    state: &PartitionState,
    key: &[u8],
    at: i64,
) -> Result<Option<ClosedWindow>, crate::StateError> {
    let (store, start) =
        parse_close_key(key).ok_or_else(|| crate::StateError::CorruptMetadata {
            path: std::path::PathBuf::new(),
            reason: "malformed window close timer".into(),
        })?;
    let Some(index) = state.store_index(&store) else {
        return Ok(None);
    };
    let entries = Arc::new(state.prefix(index, &start_prefix(start))?);
    let window = Window {
        start,
        end: window_end(state, index, start).unwrap_or(at),
    };
    Ok(Some(ClosedWindow {
        store,
        window,
        entries,
    }))
}

/// A window's end, from its store's declared size.
fn window_end(state: &PartitionState, index: usize, start: i64) -> Option<i64> {
    Some(start + state.store_spec(index)?.window_size()?)
}
