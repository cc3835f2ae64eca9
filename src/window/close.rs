//! Closing a window: its close timer's key, the entries handed to
//! [`Handler::on_window_closed`](crate::Handler::on_window_closed), and what the close
//! deletes.

use std::sync::Arc;

use super::{keyed, session, sliding, start_of, start_prefix, Entries, Window, WindowCodecs};
use crate::codec::CodecError;
use crate::state::{KeyValues, PartitionState, StateError};

/// The key of a window's close timer: the store's name (length first), then what the store
/// closes: a window start (tumbling and hopping), a session's entry key, or a sliding
/// window's key, time and side.
pub(super) fn close_key(store: &str, what: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + store.len() + what.len());
    key.push(store.len() as u8);
    key.extend_from_slice(store.as_bytes());
    key.extend_from_slice(what);
    key
}

pub(super) fn parse_close_key(key: &[u8]) -> Option<(&str, &[u8])> {
    let len = *key.first()? as usize;
    let store = std::str::from_utf8(key.get(1..1 + len)?).ok()?;
    Some((store, &key[1 + len..]))
}

/// How a closed window's entry keys hold the user's key.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// Window start (8 bytes), then the encoded key.
    Started,
    /// The encoded key framed by its length, then times ([`keyed`]).
    Framed,
}

/// A window that closed: its final entries, as
/// [`Handler::on_window_closed`](crate::Handler::on_window_closed) gets them.
#[derive(Debug, Clone)]
pub struct ClosedWindow {
    /// The window store's name.
    pub store: String,
    /// The window. For a session, `[first record, last record + 1)`; for a sliding
    /// window, `[start, end + 1)` of its inclusive bounds.
    pub window: Window,
    /// The store's entries: full store keys and values.
    entries: Arc<KeyValues>,
    layout: Layout,
}

impl ClosedWindow {
    /// The window's entries decoded with `def`'s codecs (`def` must be this store's): per
    /// key its aggregate (tumbling and hopping windows), the one key and aggregate of a
    /// session, or a sliding window's records (key and value each, in time order).
    ///
    /// # Errors
    /// Codec errors.
    pub fn entries<D: WindowCodecs>(&self, def: &D) -> Result<Entries<D>, CodecError> {
        let malformed = || CodecError::new("window", "malformed entry key");
        self.entries
            .iter()
            .map(|(k, v)| {
                let key = match self.layout {
                    Layout::Started => k.get(8..).ok_or_else(malformed)?,
                    Layout::Framed => keyed::split(k).ok_or_else(malformed)?.0,
                };
                Ok((def.key_codec().decode(key)?, def.value_codec().decode(v)?))
            })
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

/// What a close timer closes: the window for the handler (none when there is nothing to
/// report), and the entries the close deletes with it.
#[derive(Debug)]
pub(crate) struct Closing {
    pub(crate) closed: Option<ClosedWindow>,
    store: usize,
    retire: Vec<Vec<u8>>,
}

impl Closing {
    /// Stages the deletion of the entries the close retires (tumbling and hopping windows
    /// retire none: the next flush deletes them by range).
    pub(crate) fn retire(&self, state: &mut PartitionState) {
        for key in &self.retire {
            state.write(self.store, key.clone(), None);
        }
    }
}

/// What the window close timer `key`, due at `at`, closes. `None` when its store is no
/// longer declared.
///
/// # Errors
/// A malformed timer key, RocksDB errors.
pub(crate) fn closing(
    state: &PartitionState,
    key: &[u8],
    at: i64,
) -> Result<Option<Closing>, StateError> {
    let malformed = || StateError::CorruptMetadata {
        path: std::path::PathBuf::new(),
        reason: "malformed window close timer".into(),
    };
    let (store, what) = parse_close_key(key).ok_or_else(malformed)?;
    let Some(index) = state.store_index(store) else {
        return Ok(None);
    };
    let spec = state.store_spec(index).ok_or_else(malformed)?;
    let closing = |window, entries: KeyValues, layout, retire| Closing {
        closed: (!entries.is_empty() || matches!(layout, Layout::Started)).then(|| ClosedWindow {
            store: store.to_string(),
            window,
            entries: Arc::new(entries),
            layout,
        }),
        store: index,
        retire,
    };
    if let Some(difference) = spec.field("sliding", "difference") {
        let close = sliding::closing(state, index, what, difference)?.ok_or_else(malformed)?;
        return Ok(Some(closing(
            close.window,
            close.inside,
            Layout::Framed,
            close.retire,
        )));
    }
    if spec.format.starts_with("session;") {
        let window = session::session_of(what).ok_or_else(malformed)?;
        // A session merged into another had its timer cancelled; one that is gone was
        // closed by an earlier firing of this timer.
        let entries: KeyValues = state
            .read_with(index, what, <[u8]>::to_vec)?
            .map(|value| (what.to_vec(), value))
            .into_iter()
            .collect();
        let retire = entries.iter().map(|(k, _)| k.clone()).collect();
        return Ok(Some(closing(window, entries, Layout::Framed, retire)));
    }
    if spec.format.split(';').any(|field| field == "silent") {
        // Nobody reads its entries: nothing to collect (the flush deletes the window).
        return Ok(Some(Closing {
            closed: None,
            store: index,
            retire: Vec::new(),
        }));
    }
    let start = start_of(what).ok_or_else(malformed)?;
    let entries = state.prefix(index, &start_prefix(start))?;
    let window = Window {
        start,
        end: spec.window_size().map_or(at, |size| start + size),
    };
    Ok(Some(closing(window, entries, Layout::Started, Vec::new())))
}
