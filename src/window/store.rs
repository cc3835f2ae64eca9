//! A tumbling or hopping window store opened for the current record ([`WindowStore`]).

use std::fmt;

use super::{close_key, codec_error, Window, WindowAccess, WindowDef};
use crate::codec::CodecError;
use crate::state::window_keys::start_prefix;
use crate::state::StateError;
use crate::timer::{Owner, TimeKind};

/// A window store of the current partition, opened with
/// [`PartitionContext::window`](crate::PartitionContext::window).
pub struct WindowStore<'a, K: Send + 'static, V: Send + 'static> {
    def: &'a WindowDef<K, V>,
    access: WindowAccess<'a>,
}

impl<K: Send + 'static, V: Send + 'static> fmt::Debug for WindowStore<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WindowStore")
            .field("name", &self.def.name)
            .finish_non_exhaustive()
    }
}

impl<'a, K: Send + 'static, V: Send + 'static> WindowStore<'a, K, V> {
    pub(crate) fn open(def: &'a WindowDef<K, V>, access: WindowAccess<'a>) -> Self {
        Self { def, access }
    }

    fn codec_err(&self) -> impl Fn(CodecError) -> StateError + '_ {
        codec_error(&self.def.name)
    }

    /// The still-open windows the current record falls in (by its event time). Empty for
    /// a record without an event time, and for a late record (which is then counted late).
    pub fn windows(&mut self) -> Vec<Window> {
        let Some(time) = self.access.event_time else {
            return Vec::new();
        };
        let open: Vec<Window> = self
            .def
            .windows_of(time)
            .into_iter()
            .filter(|w| !self.def.is_closed(*w, self.access.stream_time))
            .collect();
        if open.is_empty() {
            *self.access.late = true;
        }
        open
    }

    /// The aggregate of `key` in `window`; `None` once the window is closed.
    ///
    /// # Errors
    /// Codec or RocksDB errors.
    pub fn get(&self, window: Window, key: &K) -> Result<Option<V>, StateError> {
        if self.def.is_closed(window, self.access.stream_time) {
            // Closed windows are deleted by range at the next flush; until then they are
            // still in the store, and must not be seen.
            return Ok(None);
        }
        let key = self.def.encode_key(window, key).map_err(self.codec_err())?;
        self.access
            .state
            .read_with(self.access.index, &key, |b| self.def.value.decode(b))?
            .transpose()
            .map_err(self.codec_err())
    }

    /// Sets the aggregate of `key` in `window`, and makes sure the window closes.
    ///
    /// # Errors
    /// [`StateError::WindowClosed`] when the window is closed (the record is counted late);
    /// codec errors.
    pub fn put(&mut self, window: Window, key: &K, value: &V) -> Result<(), StateError> {
        if self.def.is_closed(window, self.access.stream_time) {
            *self.access.late = true;
            return Err(StateError::WindowClosed {
                store: self.def.name.to_string(),
                start: window.start,
                end: window.end,
            });
        }
        let key = self.def.encode_key(window, key).map_err(self.codec_err())?;
        let value = self.def.value.encode(value).map_err(self.codec_err())?;
        self.access.state.write(self.access.index, key, Some(value));
        if self
            .access
            .state
            .close_known(self.access.index, window.start)
        {
            return Ok(());
        }
        let close = (
            TimeKind::Stream,
            window.end.saturating_add(self.def.grace),
            Owner::Window,
            close_key(&self.def.name, &start_prefix(window.start)),
        );
        if self.access.state.timer_committed(&close) {
            // Only a committed timer is remembered: a staged one vanishes if the record fails.
            self.access
                .state
                .remember_close(self.access.index, window.start);
        } else if !self.access.state.timer_staged(&close) {
            self.access.state.stage_timer(true, close)?;
        }
        Ok(())
    }

    /// Deletes `key` from `window`.
    ///
    /// # Errors
    /// Codec errors.
    pub fn delete(&mut self, window: Window, key: &K) -> Result<(), StateError> {
        let key = self.def.encode_key(window, key).map_err(self.codec_err())?;
        self.access.state.write(self.access.index, key, None);
        Ok(())
    }

    /// The aggregates of `key` in the windows starting in `[from, to]`, earliest first.
    ///
    /// # Errors
    /// Codec or RocksDB errors.
    pub fn fetch(&self, key: &K, from: i64, to: i64) -> Result<Vec<(Window, V)>, StateError> {
        let first = from.div_euclid(self.def.advance) * self.def.advance;
        let first = if first < from {
            first + self.def.advance
        } else {
            first
        };
        let mut out = Vec::new();
        let mut start = first;
        while start <= to {
            let window = Window {
                start,
                end: start + self.def.size,
            };
            if let Some(v) = self.get(window, key)? {
                out.push((window, v));
            }
            start += self.def.advance;
        }
        Ok(out)
    }
}
