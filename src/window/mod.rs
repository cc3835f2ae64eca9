//! Windowed stores: aggregates per time window and key, on event time.
//!
//! Three kinds: tumbling and hopping windows ([`WindowDef`], below), session windows
//! ([`SessionDef`], activity separated by an inactivity gap, see [`SessionStore`]) and
//! sliding windows ([`SlidingDef`], a window per record bounded by a time difference, see
//! [`SlidingStore`]). All follow the partition's stream time, close on a stream-time timer
//! into [`Handler::on_window_closed`](crate::Handler::on_window_closed), count late records
//! the same way, and never reopen a closed window on a restore.
//!
//! A [`WindowDef`] declares tumbling (`size`) or hopping (`size`, `advance`) windows with a
//! `grace` period, and codecs for keys and values. The handler opens it with
//! [`PartitionContext::window`](crate::PartitionContext::window), asks which windows the
//! current record falls in ([`WindowStore::windows`]) and reads and updates each window's
//! aggregate per key. Windows follow the partition's stream time (the highest event time
//! processed, see [`Handler::event_time`](crate::Handler::event_time)):
//!
//! - a window `[start, end)` is *open* until stream time reaches `end + grace`;
//! - a record whose windows are all closed is *late*: [`WindowStore::windows`] returns none,
//!   writes to closed windows are refused, the record is counted (`Stats`, metric
//!   `kafka_stateful_records_late_total`) and goes to the
//!   [`LatePolicy`](crate::LatePolicy) (dropped, or dead-lettered with
//!   `ks.error.kind=late`);
//! - when stream time passes `end + grace`, the window *closes*: a stream-time timer fires,
//!   [`Handler::on_window_closed`](crate::Handler::on_window_closed) gets the window's
//!   final entries (and may send them as output records). From then on reads treat the
//!   window as absent, and the next flush deletes every closed window of the store in
//!   RocksDB as one range deletion — no read and no changelog tombstone per entry.
//!
//! The changelog of a window store is `compact,delete` with a time retention of
//! `size + grace + 1 day` (Kafka Streams' windowed changelogs keep the same extra day), so
//! the records of closed windows age out of the topic instead of being tombstoned. A
//! restore applies what the topic still holds and range-deletes every window closed at the
//! restored stream time, in the same batches: no closed window comes back. The day's margin
//! covers a stream that stops for a while: a window stays open (its stream time does not
//! move) while wall time runs on, and its entries must still be in the topic when it is
//! restored. A topic created by an earlier version (compacted only) keeps working; its
//! closed windows' records then stay until overwritten.
//!
//! To emit on every update instead, send the new aggregate from the handler with
//! [`PartitionContext::send`](crate::PartitionContext::send).
//!
//! Layout and cost: an entry's store key is the window start (8 bytes, ordered) followed by
//! the encoded key, so a window's entries are one prefix scan and a key's windows are point
//! reads. Keeping a set (say, the distinct visitors of a page) as one key per member
//! (`(page, user)` → `()`) next to a per-page count costs O(1) writes per record however
//! large the set grows, where one growing value would be rewritten whole on every record.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::{Codec, CodecError};
use crate::state::window_keys::{start_of, start_prefix};
use crate::state::{PartitionState, StateError};

mod close;
#[cfg(test)]
mod driven;
#[cfg(test)]
mod driven_session;
mod keyed;
mod session;
mod sliding;
mod store;
#[cfg(test)]
mod tests;

use close::close_key;
pub use close::ClosedWindow;
pub(crate) use close::{closing, Closing};
pub use session::{SessionDef, SessionStore};
pub use sliding::{SlidingDef, SlidingStore};
pub use store::WindowStore;

/// A window store declaration whose codecs decode its closed windows
/// ([`ClosedWindow::entries`]): [`WindowDef`], [`SessionDef`] or [`SlidingDef`].
pub trait WindowCodecs {
    /// The key type.
    type Key: Send + 'static;
    /// The value type.
    type Value: Send + 'static;
    /// The key codec.
    fn key_codec(&self) -> &dyn Codec<Item = Self::Key>;
    /// The value codec.
    fn value_codec(&self) -> &dyn Codec<Item = Self::Value>;
}

/// Each window declaration decodes with its own key and value codecs.
macro_rules! window_codecs {
    ($($def:ident),*) => {$(
        impl<K: Send + 'static, V: Send + 'static> WindowCodecs for $def<K, V> {
            type Key = K;
            type Value = V;
            fn key_codec(&self) -> &dyn Codec<Item = K> {
                &*self.key
            }
            fn value_codec(&self) -> &dyn Codec<Item = V> {
                &*self.value
            }
        }
    )*};
}
window_codecs!(WindowDef, SessionDef, SlidingDef);

/// A closed window's decoded entries ([`ClosedWindow::entries`]).
pub type Entries<D> = Vec<(<D as WindowCodecs>::Key, <D as WindowCodecs>::Value)>;

/// What a window store opened for the current record works with: its store in the
/// partition's state, the stream time, the record's event time, and its late flag.
pub(crate) struct WindowAccess<'a> {
    index: usize,
    state: &'a mut PartitionState,
    stream_time: i64,
    event_time: Option<i64>,
    late: &'a mut bool,
}

impl<'a> WindowAccess<'a> {
    /// Access to the store `name` of `state`.
    ///
    /// # Errors
    /// [`StateError::UnknownStore`] when it was not declared.
    pub(crate) fn new(
        name: &str,
        state: &'a mut PartitionState,
        (stream_time, event_time): (i64, Option<i64>),
        late: &'a mut bool,
    ) -> Result<Self, StateError> {
        let index = state
            .store_index(name)
            .ok_or_else(|| StateError::UnknownStore(name.to_string()))?;
        Ok(Self {
            index,
            state,
            stream_time,
            event_time,
            late,
        })
    }
}

/// A codec error of window store `store`.
fn codec_error(store: &str) -> impl Fn(CodecError) -> StateError + '_ {
    move |source| StateError::Codec {
        store: store.to_string(),
        source,
    }
}

/// A time window `[start, end)`, in milliseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    /// Inclusive start.
    pub start: i64,
    /// Exclusive end.
    pub end: i64,
}

/// A windowed store declaration. Cheap to clone.
pub struct WindowDef<K: Send + 'static, V: Send + 'static> {
    name: Arc<str>,
    key: Arc<dyn Codec<Item = K>>,
    value: Arc<dyn Codec<Item = V>>,
    size: i64,
    advance: i64,
    grace: i64,
    /// Closes without calling `on_window_closed` ([`WindowDef::closes_silently`]).
    silent: bool,
}

impl<K: Send + 'static, V: Send + 'static> Clone for WindowDef<K, V> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            key: self.key.clone(),
            value: self.value.clone(),
            size: self.size,
            advance: self.advance,
            grace: self.grace,
            silent: self.silent,
        }
    }
}

impl<K: Send + 'static, V: Send + 'static> fmt::Debug for WindowDef<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WindowDef")
            .field("name", &self.name)
            .field("size_ms", &self.size)
            .field("advance_ms", &self.advance)
            .field("grace_ms", &self.grace)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl<K: Send + 'static, V: Send + 'static> WindowDef<K, V> {
    /// Tumbling windows of `size`, closed `grace` after their end. `name` names the store
    /// (and its changelog) like [`StoreDef::new`](crate::StoreDef::new).
    pub fn tumbling(
        name: &str,
        size: Duration,
        grace: Duration,
        key: impl Codec<Item = K>,
        value: impl Codec<Item = V>,
    ) -> Self {
        Self::hopping(name, size, size, grace, key, value)
    }

    /// Hopping windows of `size` starting every `advance`, closed `grace` after their end.
    /// A record falls in `size / advance` windows.
    pub fn hopping(
        name: &str,
        size: Duration,
        advance: Duration,
        grace: Duration,
        key: impl Codec<Item = K>,
        value: impl Codec<Item = V>,
    ) -> Self {
        Self {
            name: name.into(),
            key: Arc::new(key),
            value: Arc::new(value),
            size: millis(size).max(1),
            advance: millis(advance).clamp(1, millis(size).max(1)),
            grace: millis(grace),
            silent: false,
        }
    }

    /// Its windows close without calling
    /// [`Handler::on_window_closed`](crate::Handler::on_window_closed): for a store whose
    /// final entries nobody reads (the members of a set kept next to its count). A close
    /// then reads nothing; the window is still deleted and its late records counted.
    /// Recorded in the store's format.
    #[must_use]
    pub fn closes_silently(mut self) -> Self {
        self.silent = true;
        self
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The windows that contain `time`, earliest first.
    pub fn windows_of(&self, time: i64) -> Vec<Window> {
        let last_start = time.div_euclid(self.advance) * self.advance;
        let mut windows = Vec::new();
        let mut start = last_start;
        while start > time - self.size {
            windows.push(Window {
                start,
                end: start + self.size,
            });
            start -= self.advance;
        }
        windows.reverse();
        windows
    }

    /// Whether `window` is closed at `stream_time`.
    pub fn is_closed(&self, window: Window, stream_time: i64) -> bool {
        stream_time >= window.end.saturating_add(self.grace)
    }

    pub(crate) fn spec(&self) -> crate::state::StoreSpec {
        crate::state::StoreSpec {
            name: self.name.to_string(),
            format: format!(
                "window;key={};value={};size={};advance={};grace={}{}",
                self.key.name(),
                self.value.name(),
                self.size,
                self.advance,
                self.grace,
                if self.silent { ";silent" } else { "" }
            ),
            expiry: None,
        }
    }

    /// Decodes a raw store entry (the test driver reads window stores back).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn decode_entry(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<(Window, K, V), CodecError> {
        let start = start_of(key).ok_or_else(|| CodecError::new("window", "short key"))?;
        Ok((
            Window {
                start,
                end: start + self.size,
            },
            self.key.decode(&key[8..])?,
            self.value.decode(value)?,
        ))
    }

    /// A key as the window store encodes it after the window start (queries).
    pub(crate) fn query_key(&self, key: &K) -> Result<Vec<u8>, CodecError> {
        self.key.encode(key)
    }

    /// Decodes a stored aggregate (queries).
    pub(crate) fn decode_value(&self, value: &[u8]) -> Result<V, CodecError> {
        self.value.decode(value)
    }

    fn encode_key(&self, window: Window, key: &K) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(32);
        out.extend_from_slice(&start_prefix(window.start));
        self.key.encode_into(key, &mut out)?;
        Ok(out)
    }
}
