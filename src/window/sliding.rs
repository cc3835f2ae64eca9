//! Sliding windows: a window per record, bounded by a time difference.
//!
//! A [`SlidingDef`] declares a sliding window store with a time `difference` and a `grace`
//! period; the handler logs each record's value under its key with [`SlidingStore::add`].
//! As in Kafka Streams (`SlidingWindows.ofTimeDifferenceAndGrace`), the windows of a key
//! are the distinct sets of its records that lie within `difference` of each other, one
//! pair per distinct event time `t`:
//!
//! - the *left* window `[t − difference, t]`, ending with the records at `t`;
//! - the *right* window `[t + 1, t + 1 + difference]`, the records just after `t` — only
//!   when it holds a record, and not when a record at exactly `t + 1 + difference` makes it
//!   the same window as that record's left window.
//!
//! A window closes once stream time passes its end plus grace; then
//! [`Handler::on_window_closed`](crate::Handler::on_window_closed) gets it with its records
//! (key and value each, time order), and aggregates them however it likes. Windows are
//! inclusive at both ends here; [`ClosedWindow::window`](super::ClosedWindow) reports them
//! as `[start, end + 1)` like every [`Window`](super::Window). A record is *late* when every
//! window it could fall in is closed (`stream time > t + difference + grace`): not logged,
//! counted, and handed to the [`LatePolicy`](crate::LatePolicy). A record whose own left
//! window closed already still joins the open windows after it.
//!
//! Each record stays in the store until the last window that holds it closes, then its
//! right window's close deletes it (a changelog tombstone). Closing and deleting are
//! flushed atomically with the timer's firing, so a restore reopens nothing. Cost per
//! record: one prefix read (its time's records), one write, two close timers per distinct
//! `(key, t)`; per closed window, a prefix read of the key's logged records.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::keyed::{framed, push_time, split, time_at};
use super::{close_key, codec_error, millis, Window, WindowAccess};
use crate::codec::{Codec, CodecError};
use crate::state::{KeyValues, PartitionState, StateError};
use crate::timer::{Owner, TimeKind};

/// A sliding window store declaration. Cheap to clone.
pub struct SlidingDef<K: Send + 'static, V: Send + 'static> {
    name: Arc<str>,
    pub(super) key: Arc<dyn Codec<Item = K>>,
    pub(super) value: Arc<dyn Codec<Item = V>>,
    difference: i64,
    grace: i64,
}

impl<K: Send + 'static, V: Send + 'static> Clone for SlidingDef<K, V> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            key: self.key.clone(),
            value: self.value.clone(),
            difference: self.difference,
            grace: self.grace,
        }
    }
}

impl<K: Send + 'static, V: Send + 'static> fmt::Debug for SlidingDef<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlidingDef")
            .field("name", &self.name)
            .field("difference_ms", &self.difference)
            .field("grace_ms", &self.grace)
            .finish_non_exhaustive()
    }
}

/// Which of a time's two windows a close timer closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Left = 0,
    Right = 1,
}

impl<K: Send + 'static, V: Send + 'static> SlidingDef<K, V> {
    /// Windows of records at most `difference` apart, closed `grace` after their end.
    /// `name` names the store (and its changelog) like
    /// [`StoreDef::new`](crate::StoreDef::new).
    pub fn new(
        name: &str,
        difference: Duration,
        grace: Duration,
        key: impl Codec<Item = K>,
        value: impl Codec<Item = V>,
    ) -> Self {
        Self {
            name: name.into(),
            key: Arc::new(key),
            value: Arc::new(value),
            difference: millis(difference),
            grace: millis(grace),
        }
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn spec(&self) -> crate::state::StoreSpec {
        crate::state::StoreSpec {
            name: self.name.to_string(),
            format: format!(
                "sliding;key={};value={};difference={};grace={}",
                self.key.name(),
                self.value.name(),
                self.difference,
                self.grace
            ),
            expiry: None,
        }
    }

    /// Decodes a raw store entry: the record's time, key and value (the test driver).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn decode_entry(&self, key: &[u8], value: &[u8]) -> Result<(i64, K, V), CodecError> {
        let bad = || CodecError::new("sliding", "malformed entry key");
        let (encoded, _) = split(key).ok_or_else(bad)?;
        Ok((
            time_at(key, 0).ok_or_else(bad)?,
            self.key.decode(encoded)?,
            self.value.decode(value)?,
        ))
    }
}

/// The window a close timer of `side` at record time `t` closes, inclusive bounds.
pub(super) fn bounds(side: Side, t: i64, difference: i64) -> (i64, i64) {
    match side {
        Side::Left => (t.saturating_sub(difference), t),
        Side::Right => (
            t.saturating_add(1),
            t.saturating_add(1).saturating_add(difference),
        ),
    }
}

/// The stream time at which the window of `side` at `t` closes (its end passed by grace).
fn close_time(side: Side, t: i64, difference: i64, grace: i64) -> i64 {
    bounds(side, t, difference)
        .1
        .saturating_add(grace)
        .saturating_add(1)
}

/// The close timer suffix: the framed key, the record time, the side.
fn timer_suffix(framed_key: &[u8], t: i64, side: Side) -> Vec<u8> {
    let mut suffix = framed_key.to_vec();
    push_time(&mut suffix, t);
    suffix.push(side as u8);
    suffix
}

/// What a sliding window close timer closes.
pub(super) struct Close {
    pub(super) window: Window,
    /// The window's records; empty when there is no window to report.
    pub(super) inside: KeyValues,
    /// The records the close deletes.
    pub(super) retire: Vec<Vec<u8>>,
}

/// A closing sliding window: what the close timer `suffix` of a store with `difference`
/// closes, from the key's logged records, and the entries it retires (a right window's
/// close deletes the records at its time, which no open window holds any more). `None` for
/// a malformed suffix.
pub(super) fn closing(
    state: &PartitionState,
    index: usize,
    suffix: &[u8],
    difference: i64,
) -> Result<Option<Close>, StateError> {
    let (Some((encoded, rest)), Some(t)) = (split(suffix), time_at(suffix, 0)) else {
        return Ok(None);
    };
    let side = match rest.get(8) {
        Some(0) => Side::Left,
        Some(1) => Side::Right,
        _ => return Ok(None),
    };
    let (from, to) = bounds(side, t, difference);
    let logged = state.prefix(index, &framed(encoded))?;
    let retire: Vec<Vec<u8>> = match side {
        Side::Left => Vec::new(),
        Side::Right => logged
            .iter()
            .filter(|(k, _)| time_at(k, 0) == Some(t))
            .map(|(k, _)| k.clone())
            .collect(),
    };
    let mut inside: KeyValues = logged
        .into_iter()
        .filter(|(k, _)| time_at(k, 0).is_some_and(|at| (from..=to).contains(&at)))
        .collect();
    // A right window is the next records' set; the same window as a left one ending at
    // its end is that one's.
    if side == Side::Right && inside.iter().any(|(k, _)| time_at(k, 0) == Some(to)) {
        inside.clear();
    }
    let window = Window {
        start: from,
        end: to.saturating_add(1),
    };
    Ok(Some(Close {
        window,
        inside,
        retire,
    }))
}

/// A sliding window store of the current partition, opened with
/// [`PartitionContext::sliding_window`](crate::PartitionContext::sliding_window).
pub struct SlidingStore<'a, K: Send + 'static, V: Send + 'static> {
    def: &'a SlidingDef<K, V>,
    access: WindowAccess<'a>,
}

impl<K: Send + 'static, V: Send + 'static> fmt::Debug for SlidingStore<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlidingStore")
            .field("name", &self.def.name)
            .finish_non_exhaustive()
    }
}

impl<'a, K: Send + 'static, V: Send + 'static> SlidingStore<'a, K, V> {
    pub(crate) fn open(def: &'a SlidingDef<K, V>, access: WindowAccess<'a>) -> Self {
        Self { def, access }
    }

    fn codec_err(&self) -> impl Fn(CodecError) -> StateError + '_ {
        codec_error(&self.def.name)
    }

    /// Logs `value` under `key` at the current record's event time, for the windows that
    /// will hold it. Returns whether it was logged: not for a record without an event
    /// time, nor for a late one (counted late).
    ///
    /// # Errors
    /// Codec or RocksDB errors.
    pub fn add(&mut self, key: &K, value: &V) -> Result<bool, StateError> {
        let Some(t) = self.access.event_time else {
            return Ok(false);
        };
        let (difference, grace) = (self.def.difference, self.def.grace);
        // The last windows that can hold a record at `t` end at `t + difference` (the left
        // window of a record there, the right window of one just before `t`).
        let last_close = close_time(Side::Left, t.saturating_add(difference), difference, grace);
        if self.access.stream_time >= last_close {
            *self.access.late = true;
            return Ok(false);
        }
        let left_open = self.access.stream_time < close_time(Side::Left, t, difference, grace);
        let encoded = self.def.key.encode(key).map_err(self.codec_err())?;
        let framed_key = framed(&encoded);
        let mut at_t = framed_key.clone();
        push_time(&mut at_t, t);
        // Records at the same time are numbered in arrival order: the numbering is state,
        // so a record handled again after a crash gets the same entry.
        let seq = self.access.state.prefix(self.access.index, &at_t)?.len() as u32;
        let mut entry = at_t;
        entry.extend_from_slice(&seq.to_be_bytes());
        let value = self.def.value.encode(value).map_err(self.codec_err())?;
        self.access
            .state
            .write(self.access.index, entry, Some(value));
        for (side, needed) in [(Side::Left, left_open), (Side::Right, true)] {
            if !needed {
                continue;
            }
            let timer = (
                TimeKind::Stream,
                close_time(side, t, difference, grace),
                Owner::Window,
                close_key(&self.def.name, &timer_suffix(&framed_key, t, side)),
            );
            if !self.access.state.timer_committed(&timer) && !self.access.state.timer_staged(&timer)
            {
                self.access.state.stage_timer(true, timer)?;
            }
        }
        Ok(true)
    }
}
