//! Session windows: a key's activity, separated by an inactivity gap.
//!
//! A [`SessionDef`] declares a session store with an inactivity `gap` and a `grace`
//! period. Each record adds its event time `t` to its key's session with
//! [`SessionStore::aggregate`]:
//!
//! - records of a key whose event times are at most `gap` apart share a session; a session
//!   runs from its first record's time to its last's ([`Window`] `[first, last + 1)`);
//! - a record within `gap` of two sessions (out of order, within grace) bridges them: they
//!   *merge* into one, their aggregates combined by the caller's merge function in time
//!   order, and the superseded sessions are deleted from the store (a changelog tombstone
//!   each), so no restore brings them back;
//! - a session *closes* once stream time passes `last + gap + grace`: a stream-time timer
//!   fires, [`Handler::on_window_closed`](crate::Handler::on_window_closed) gets the session
//!   (one entry: its key and aggregate), and the session is deleted in the same atomic
//!   flush as the firing — a restore never reopens a closed session;
//! - a record whose own session would already be closed (`stream time > t + gap + grace`)
//!   is *late*: not applied, counted and handled by the [`LatePolicy`](crate::LatePolicy)
//!   like a late record of the other windows.
//!
//! These are Kafka Streams' session windows (`SessionWindows.ofInactivityGapAndGrace`).
//! Cost per record: one prefix read of the key's open sessions, one write, and — when the
//! session's end moves — a timer cancelled and one scheduled (a timer store write each).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::keyed::{framed, push_time, split, time_at};
use super::{close_key, codec_error, millis, Window, WindowAccess};
use crate::codec::{Codec, CodecError};
use crate::state::StateError;
use crate::timer::{Owner, TimeKind};

/// A session window store declaration. Cheap to clone.
pub struct SessionDef<K: Send + 'static, V: Send + 'static> {
    name: Arc<str>,
    pub(super) key: Arc<dyn Codec<Item = K>>,
    pub(super) value: Arc<dyn Codec<Item = V>>,
    gap: i64,
    grace: i64,
}

impl<K: Send + 'static, V: Send + 'static> Clone for SessionDef<K, V> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            key: self.key.clone(),
            value: self.value.clone(),
            gap: self.gap,
            grace: self.grace,
        }
    }
}

impl<K: Send + 'static, V: Send + 'static> fmt::Debug for SessionDef<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionDef")
            .field("name", &self.name)
            .field("gap_ms", &self.gap)
            .field("grace_ms", &self.grace)
            .finish_non_exhaustive()
    }
}

impl<K: Send + 'static, V: Send + 'static> SessionDef<K, V> {
    /// Sessions separated by `gap` of inactivity, closed `grace` after that gap. `name`
    /// names the store (and its changelog) like [`StoreDef::new`](crate::StoreDef::new).
    pub fn new(
        name: &str,
        gap: Duration,
        grace: Duration,
        key: impl Codec<Item = K>,
        value: impl Codec<Item = V>,
    ) -> Self {
        Self {
            name: name.into(),
            key: Arc::new(key),
            value: Arc::new(value),
            gap: millis(gap),
            grace: millis(grace),
        }
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a session whose last record is at `last` is closed at `stream_time`.
    pub fn is_closed(&self, last: i64, stream_time: i64) -> bool {
        stream_time > self.close_time(last).saturating_sub(1)
    }

    /// The stream time at which a session whose last record is at `last` closes.
    fn close_time(&self, last: i64) -> i64 {
        last.saturating_add(self.gap)
            .saturating_add(self.grace)
            .saturating_add(1)
    }

    pub(crate) fn spec(&self) -> crate::state::StoreSpec {
        crate::state::StoreSpec {
            name: self.name.to_string(),
            format: format!(
                "session;key={};value={};gap={};grace={}",
                self.key.name(),
                self.value.name(),
                self.gap,
                self.grace
            ),
            expiry: None,
        }
    }

    /// A key as the store encodes it (queries locate its partition with it).
    pub(crate) fn query_key(&self, key: &K) -> Result<Vec<u8>, CodecError> {
        self.key.encode(key)
    }

    /// The prefix of an encoded key's sessions (queries).
    pub(crate) fn query_prefix(encoded: &[u8]) -> Vec<u8> {
        framed(encoded)
    }

    /// Decodes a raw store entry: the session, its key and aggregate (queries and the test
    /// driver).
    pub(crate) fn decode_entry(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<(Window, K, V), CodecError> {
        let bad = || CodecError::new("session", "malformed entry key");
        let (encoded, _) = split(key).ok_or_else(bad)?;
        let session = session_of(key).ok_or_else(bad)?;
        Ok((
            session,
            self.key.decode(encoded)?,
            self.value.decode(value)?,
        ))
    }
}

/// The store key of a session: the framed key, its last record's time, its first's. Sorted
/// by end, so a key's sessions are in time order.
fn entry_key(framed_key: &[u8], first: i64, last: i64) -> Vec<u8> {
    let mut key = framed_key.to_vec();
    push_time(&mut key, last);
    push_time(&mut key, first);
    key
}

/// The session a store entry holds.
pub(super) fn session_of(entry: &[u8]) -> Option<Window> {
    let last = time_at(entry, 0)?;
    Some(Window {
        start: time_at(entry, 1)?,
        end: last.saturating_add(1),
    })
}

/// A session store of the current partition, opened with
/// [`PartitionContext::session_window`](crate::PartitionContext::session_window).
pub struct SessionStore<'a, K: Send + 'static, V: Send + 'static> {
    def: &'a SessionDef<K, V>,
    access: WindowAccess<'a>,
}

impl<K: Send + 'static, V: Send + 'static> fmt::Debug for SessionStore<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionStore")
            .field("name", &self.def.name)
            .finish_non_exhaustive()
    }
}

/// An open session read from the store: its entry key, bounds and encoded aggregate.
struct Stored {
    key: Vec<u8>,
    first: i64,
    last: i64,
    value: Vec<u8>,
}

impl<'a, K: Send + 'static, V: Send + 'static> SessionStore<'a, K, V> {
    pub(crate) fn open(def: &'a SessionDef<K, V>, access: WindowAccess<'a>) -> Self {
        Self { def, access }
    }

    fn codec_err(&self) -> impl Fn(CodecError) -> StateError + '_ {
        codec_error(&self.def.name)
    }

    /// The key's open sessions (closed ones read as absent, though the timer that deletes
    /// them may not have fired yet), earliest first.
    fn stored(&self, framed_key: &[u8]) -> Result<Vec<Stored>, StateError> {
        let mut open = Vec::new();
        for (key, value) in self.access.state.prefix(self.access.index, framed_key)? {
            let Some(window) = session_of(&key) else {
                continue;
            };
            let last = window.end - 1;
            if !self.def.is_closed(last, self.access.stream_time) {
                open.push(Stored {
                    key,
                    first: window.start,
                    last,
                    value,
                });
            }
        }
        open.sort_by_key(|s| s.first);
        Ok(open)
    }

    /// Adds the current record (at its event time `t`) to `key`'s session and returns that
    /// session: the open sessions of `key` within `gap` of `t` and `t` itself become one.
    /// Their aggregates are combined with `merge` (earliest first), and `update` turns the
    /// result (`None` when `t` starts a new session) into the session's new aggregate.
    ///
    /// Returns `None` — and changes nothing — for a record without an event time, and for a
    /// late record (counted late).
    ///
    /// # Errors
    /// Codec or RocksDB errors.
    pub fn aggregate(
        &mut self,
        key: &K,
        mut merge: impl FnMut(V, V) -> V,
        update: impl FnOnce(Option<V>) -> V,
    ) -> Result<Option<Window>, StateError> {
        let Some(t) = self.access.event_time else {
            return Ok(None);
        };
        if self.def.is_closed(t, self.access.stream_time) {
            *self.access.late = true;
            return Ok(None);
        }
        let encoded = self.def.key.encode(key).map_err(self.codec_err())?;
        let framed_key = framed(&encoded);
        let gap = self.def.gap;
        let merged: Vec<Stored> = self
            .stored(&framed_key)?
            .into_iter()
            .filter(|s| s.last >= t.saturating_sub(gap) && s.first <= t.saturating_add(gap))
            .collect();
        let (mut first, mut last) = (t, t);
        let mut aggregate: Option<V> = None;
        for s in &merged {
            first = first.min(s.first);
            last = last.max(s.last);
            let value = self.def.value.decode(&s.value).map_err(self.codec_err())?;
            aggregate = Some(match aggregate {
                None => value,
                Some(earlier) => merge(earlier, value),
            });
        }
        let value = update(aggregate);
        let value = self.def.value.encode(&value).map_err(self.codec_err())?;
        let new_key = entry_key(&framed_key, first, last);
        for s in merged.iter().filter(|s| s.key != new_key) {
            // Superseded: deleted (a changelog tombstone) with its close timer.
            self.access
                .state
                .write(self.access.index, s.key.clone(), None);
            let close = self.close_timer(&s.key, s.last);
            self.access.state.stage_timer(false, close)?;
        }
        let kept = merged.iter().any(|s| s.key == new_key);
        let close = self.close_timer(&new_key, last);
        self.access
            .state
            .write(self.access.index, new_key, Some(value));
        if !kept {
            self.access.state.stage_timer(true, close)?;
        }
        Ok(Some(Window {
            start: first,
            end: last.saturating_add(1),
        }))
    }

    /// `key`'s open sessions and their aggregates, earliest first.
    ///
    /// # Errors
    /// Codec or RocksDB errors.
    pub fn sessions(&self, key: &K) -> Result<Vec<(Window, V)>, StateError> {
        let encoded = self.def.key.encode(key).map_err(self.codec_err())?;
        self.stored(&framed(&encoded))?
            .into_iter()
            .map(|s| {
                let value = self.def.value.decode(&s.value).map_err(self.codec_err())?;
                let window = Window {
                    start: s.first,
                    end: s.last.saturating_add(1),
                };
                Ok((window, value))
            })
            .collect()
    }

    fn close_timer(&self, entry: &[u8], last: i64) -> crate::timer::Entry {
        (
            TimeKind::Stream,
            self.def.close_time(last),
            Owner::Window,
            close_key(&self.def.name, entry),
        )
    }
}
