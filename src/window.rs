//! Windowed stores: aggregates per time window and key, on event time.
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
//!   final entries (and may send them as output records), then every entry of the window
//!   is deleted — in RocksDB and with tombstones in the changelog, so no restore brings a
//!   closed window back.
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
use crate::handler::{Handler, HandlerError, PartitionContext};
use crate::state::{KeyValues, PartitionState, StateError};
use crate::timer::{Owner, TimeKind};

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
        }
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
                "window;key={};value={};size={};advance={};grace={}",
                self.key.name(),
                self.value.name(),
                self.size,
                self.advance,
                self.grace
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

    fn encode_key(&self, window: Window, key: &K) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(32);
        out.extend_from_slice(&start_prefix(window.start));
        self.key.encode_into(key, &mut out)?;
        Ok(out)
    }
}

/// The ordered 8-byte prefix of a window start.
fn start_prefix(start: i64) -> [u8; 8] {
    ((start as u64) ^ (1 << 63)).to_be_bytes()
}

fn start_of(prefix: &[u8]) -> Option<i64> {
    Some((u64::from_be_bytes(prefix.get(..8)?.try_into().ok()?) ^ (1 << 63)) as i64)
}

/// A window store of the current partition, opened with
/// [`PartitionContext::window`](crate::PartitionContext::window).
pub struct WindowStore<'a, K: Send + 'static, V: Send + 'static> {
    def: &'a WindowDef<K, V>,
    index: usize,
    state: &'a mut PartitionState,
    stream_time: i64,
    event_time: Option<i64>,
    late: &'a mut bool,
}

impl<K: Send + 'static, V: Send + 'static> fmt::Debug for WindowStore<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WindowStore")
            .field("name", &self.def.name)
            .finish_non_exhaustive()
    }
}

impl<'a, K: Send + 'static, V: Send + 'static> WindowStore<'a, K, V> {
    pub(crate) fn open(
        def: &'a WindowDef<K, V>,
        state: &'a mut PartitionState,
        stream_time: i64,
        event_time: Option<i64>,
        late: &'a mut bool,
    ) -> Result<Self, StateError> {
        let index = state
            .store_index(&def.name)
            .ok_or_else(|| StateError::UnknownStore(def.name.to_string()))?;
        Ok(Self {
            def,
            index,
            state,
            stream_time,
            event_time,
            late,
        })
    }

    fn codec_err(&self) -> impl Fn(CodecError) -> StateError + '_ {
        |source| StateError::Codec {
            store: self.def.name.to_string(),
            source,
        }
    }

    /// The still-open windows the current record falls in (by its event time). Empty for
    /// a record without an event time, and for a late record (which is then counted late).
    pub fn windows(&mut self) -> Vec<Window> {
        let Some(time) = self.event_time else {
            return Vec::new();
        };
        let open: Vec<Window> = self
            .def
            .windows_of(time)
            .into_iter()
            .filter(|w| !self.def.is_closed(*w, self.stream_time))
            .collect();
        if open.is_empty() {
            *self.late = true;
        }
        open
    }

    /// The aggregate of `key` in `window`.
    ///
    /// # Errors
    /// Codec or RocksDB errors.
    pub fn get(&self, window: Window, key: &K) -> Result<Option<V>, StateError> {
        let key = self.def.encode_key(window, key).map_err(self.codec_err())?;
        self.state
            .read_with(self.index, &key, |b| self.def.value.decode(b))?
            .transpose()
            .map_err(self.codec_err())
    }

    /// Sets the aggregate of `key` in `window`, and makes sure the window closes.
    ///
    /// # Errors
    /// [`StateError::WindowClosed`] when the window is closed (the record is counted late);
    /// codec errors.
    pub fn put(&mut self, window: Window, key: &K, value: &V) -> Result<(), StateError> {
        if self.def.is_closed(window, self.stream_time) {
            *self.late = true;
            return Err(StateError::WindowClosed {
                store: self.def.name.to_string(),
                start: window.start,
                end: window.end,
            });
        }
        let key = self.def.encode_key(window, key).map_err(self.codec_err())?;
        let value = self.def.value.encode(value).map_err(self.codec_err())?;
        self.state.write(self.index, key, Some(value));
        if self.state.close_known(self.index, window.start) {
            return Ok(());
        }
        let close = (
            TimeKind::Stream,
            window.end.saturating_add(self.def.grace),
            Owner::Window,
            close_key(&self.def.name, window.start),
        );
        if self.state.timer_committed(&close) {
            // Only a committed timer is remembered: a staged one vanishes if the record fails.
            self.state.remember_close(self.index, window.start);
        } else if !self.state.timer_staged(&close) {
            self.state.stage_timer(true, close)?;
        }
        Ok(())
    }

    /// Deletes `key` from `window`.
    ///
    /// # Errors
    /// Codec errors.
    pub fn delete(&mut self, window: Window, key: &K) -> Result<(), StateError> {
        let key = self.def.encode_key(window, key).map_err(self.codec_err())?;
        self.state.write(self.index, key, None);
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

/// The key of a window's close timer: store name, then window start.
fn close_key(store: &str, start: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + store.len() + 8);
    key.push(store.len() as u8);
    key.extend_from_slice(store.as_bytes());
    key.extend_from_slice(&start_prefix(start));
    key
}

fn parse_close_key(key: &[u8]) -> Option<(String, i64)> {
    let len = *key.first()? as usize;
    let store = std::str::from_utf8(key.get(1..1 + len)?).ok()?.to_string();
    Some((store, start_of(key.get(1 + len..)?)?))
}

/// A window that closed: its final entries, as [`Handler::on_window_closed`] gets them.
#[derive(Debug, Clone)]
pub struct ClosedWindow {
    /// The window store's name.
    pub store: String,
    /// The window.
    pub window: Window,
    /// The store's entries: full keys (window start, then the encoded key) and values,
    /// shared with the close that deletes them afterwards.
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

/// Closes a window whose close timer fired: the handler's callback, then every entry
/// deleted (staged with the timer's firing).
pub(crate) async fn close<K, V, H: Handler<K, V>>(
    handler: &H,
    key: &[u8],
    at: i64,
    ctx: &mut PartitionContext,
) -> Result<(), HandlerError> {
    let (store, start) = parse_close_key(key).ok_or("malformed window close timer")?;
    let Some(state) = ctx.state_mut() else {
        return Ok(());
    };
    let Some(index) = state.store_index(&store) else {
        // The window store is no longer declared: nothing to close.
        return Ok(());
    };
    let prefix = start_prefix(start);
    let entries = Arc::new(state.prefix(index, &prefix)?);
    let window = Window {
        start,
        end: window_end(state, index, start).unwrap_or(at),
    };
    let closed = ClosedWindow {
        store,
        window,
        entries: entries.clone(),
    };
    handler.on_window_closed(closed, ctx).await?;
    if let Some(state) = ctx.state_mut() {
        // Usually the only owner left (unless the callback kept the `ClosedWindow`).
        let entries = Arc::try_unwrap(entries).unwrap_or_else(|shared| (*shared).clone());
        for (k, _) in entries {
            state.write(index, k, None);
        }
    }
    Ok(())
}

/// A window's end, from its store's declared size.
fn window_end(state: &PartitionState, index: usize, start: i64) -> Option<i64> {
    let format = state.store_format(index)?;
    let size: i64 = format
        .split(';')
        .find_map(|p| p.strip_prefix("size="))?
        .parse()
        .ok()?;
    Some(start + size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Bincode, Utf8};

    fn tumbling() -> WindowDef<String, u64> {
        WindowDef::tumbling(
            "w",
            Duration::from_secs(60),
            Duration::from_secs(10),
            Utf8,
            Bincode::new(),
        )
    }

    #[test]
    fn tumbling_and_hopping_windows_contain_the_right_times() {
        let t = tumbling();
        assert_eq!(
            t.windows_of(61_000),
            vec![Window {
                start: 60_000,
                end: 120_000
            }]
        );
        assert_eq!(t.windows_of(-1)[0].start, -60_000, "negative times too");
        let h: WindowDef<String, u64> = WindowDef::hopping(
            "h",
            Duration::from_secs(60),
            Duration::from_secs(20),
            Duration::ZERO,
            Utf8,
            Bincode::new(),
        );
        let starts: Vec<i64> = h.windows_of(65_000).iter().map(|w| w.start).collect();
        assert_eq!(starts, vec![20_000, 40_000, 60_000]);
        assert!(h
            .windows_of(65_000)
            .iter()
            .all(|w| w.start <= 65_000 && 65_000 < w.end));
    }

    #[test]
    fn a_window_closes_at_its_end_plus_grace() {
        let t = tumbling();
        let w = t.windows_of(0)[0];
        assert!(!t.is_closed(w, 69_999));
        assert!(t.is_closed(w, 70_000));
    }

    #[test]
    fn store_keys_order_by_window_start_and_close_keys_round_trip() {
        let t = tumbling();
        let early = t.encode_key(t.windows_of(-1)[0], &"z".to_string()).unwrap();
        let late = t.encode_key(t.windows_of(1)[0], &"a".to_string()).unwrap();
        assert!(early < late);
        assert_eq!(
            parse_close_key(&close_key("views", -60_000)),
            Some(("views".into(), -60_000))
        );
    }
}

#[cfg(test)]
mod driven {
    //! Windows and timers end to end on the test driver (real worker, real RocksDB).

    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::codec::{Bincode, Json, Utf8};
    use crate::testing::{TestDriver, TestRecord};
    use crate::timer::Timer;
    use crate::{ConsumerConfig, Output, Record, StoreDef};

    type Counts = (u64, u64);

    #[derive(Clone)]
    struct UniqueVisitors {
        members: WindowDef<(String, String), ()>,
        counts: WindowDef<String, Counts>,
        output: Output<String, (i64, u64, u64)>,
        fired: StoreDef<String, u64>,
        closed: Arc<Mutex<Vec<(String, i64)>>>,
    }

    impl UniqueVisitors {
        fn new() -> Self {
            let minute = |name| (name, Duration::from_secs(60), Duration::from_secs(10));
            let (m, size, grace) = minute("members");
            let (c, _, _) = minute("counts");
            Self {
                members: WindowDef::tumbling(m, size, grace, Bincode::new(), Bincode::new()),
                counts: WindowDef::tumbling(c, size, grace, Utf8, Bincode::new()),
                output: Output::new("page-minutes", Utf8, Json::new()),
                fired: StoreDef::new("fired", Utf8, Bincode::new()),
                closed: Arc::default(),
            }
        }
    }

    impl Handler<String, String> for UniqueVisitors {
        async fn handle(
            &self,
            r: Record<String, String>,
            ctx: &mut PartitionContext,
        ) -> Result<(), HandlerError> {
            let (page, user) = (r.key.ok_or("no page")?, r.value.ok_or("no user")?);
            if user == "timer" {
                let at = ctx.event_time().unwrap_or(0);
                ctx.schedule(TimeKind::Wall, at, page.as_bytes())?;
                return Ok(());
            }
            let windows = ctx.window(&self.members)?.windows();
            for w in windows {
                let member = (page.clone(), user.clone());
                let new = {
                    let mut members = ctx.window(&self.members)?;
                    let new = members.get(w, &member)?.is_none();
                    if new {
                        members.put(w, &member, &())?;
                    }
                    new
                };
                let mut counts = ctx.window(&self.counts)?;
                let (unique, views) = counts.get(w, &page)?.unwrap_or((0, 0));
                counts.put(w, &page, &(unique + u64::from(new), views + 1))?;
            }
            Ok(())
        }

        async fn on_window_closed(
            &self,
            closed: ClosedWindow,
            ctx: &mut PartitionContext,
        ) -> Result<(), HandlerError> {
            if closed.store != "counts" {
                return Ok(());
            }
            for (page, (unique, views)) in closed.entries(&self.counts)? {
                self.closed
                    .lock()
                    .unwrap()
                    .push((page.clone(), closed.window.start));
                ctx.send(
                    &self.output,
                    Some(&page),
                    Some(&(closed.window.start, unique, views)),
                )?;
            }
            Ok(())
        }

        async fn on_timer(
            &self,
            timer: Timer,
            ctx: &mut PartitionContext,
        ) -> Result<(), HandlerError> {
            let key = String::from_utf8(timer.key)?;
            let mut fired = ctx.store(&self.fired)?;
            let n = fired.get(&key)?.unwrap_or(0) + 1;
            fired.put(&key, &n)?;
            Ok(())
        }
    }

    async fn driver(h: &UniqueVisitors) -> TestDriver<Utf8, Utf8, UniqueVisitors> {
        let config = ConsumerConfig::builder("unused:9092", "g", ["views"])
            .instance_id("i")
            .state_dir("unused")
            .window(&h.members)
            .window(&h.counts)
            .store(&h.fired)
            .build()
            .unwrap();
        TestDriver::new(config, Utf8, Utf8, h.clone())
            .await
            .unwrap()
    }

    fn view(page: &str, user: &str, secs: i64) -> TestRecord<String, String> {
        TestRecord::new(page.to_string(), user.to_string()).timestamp(secs * 1000)
    }

    fn results(d: &TestDriver<Utf8, Utf8, UniqueVisitors>) -> Vec<(String, (i64, u64, u64))> {
        d.sent_to("page-minutes")
            .iter()
            .map(|r| {
                (
                    String::from_utf8(r.key.clone().unwrap()).unwrap(),
                    serde_json::from_slice(r.value.as_ref().unwrap()).unwrap(),
                )
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn windows_close_once_with_their_final_counts_and_late_records_are_not_applied() {
        let h = UniqueVisitors::new();
        let mut d = driver(&h).await;
        for (page, user, secs) in [
            ("p1", "u1", 0),
            ("p1", "u2", 10),
            ("p1", "u1", 20),
            ("p2", "u3", 30),
        ] {
            d.send(view(page, user, secs)).await.unwrap();
        }
        // Out of order but within grace: still counted in window [0, 60).
        d.send(view("p1", "u3", 65)).await.unwrap();
        d.send(view("p1", "u9", 59)).await.unwrap();
        assert!(
            results(&d).is_empty(),
            "nothing closed before 60 s + 10 s grace"
        );
        d.send(view("p3", "u1", 71)).await.unwrap();
        let mut out = results(&d);
        out.sort();
        assert_eq!(
            out,
            vec![("p1".into(), (0, 3, 4)), ("p2".into(), (0, 1, 1))],
            "window [0, 60): p1 saw u1, u2, u9 in 4 views"
        );
        // Late: its window closed at 70 s.
        d.send(view("p1", "u7", 30)).await.unwrap();
        assert_eq!(d.late(), 1);
        // The closed window's entries are gone; the open window [60, 120) is there.
        let members = d.read_window(&h.members).await.unwrap();
        assert!(
            members.iter().all(|(w, _, _)| w.start == 60_000),
            "{members:?}"
        );
        assert_eq!(members.len(), 2, "(p1, u3) and (p3, u1)");
        // No restore brings the closed window back, nor closes it twice.
        d.crash().await.unwrap();
        d.lose_disk().await.unwrap();
        let members = d.read_window(&h.members).await.unwrap();
        assert!(
            members.iter().all(|(w, _, _)| w.start == 60_000),
            "{members:?}"
        );
        d.send(view("p1", "u1", 200)).await.unwrap();
        let mut out = results(&d);
        out.sort();
        assert_eq!(
            out.len(),
            4,
            "window [60, 120) closed for p1 and p3: {out:?}"
        );
        assert!(out.contains(&("p1".into(), (60_000, 1, 1))));
        assert!(out.contains(&("p3".into(), (60_000, 1, 1))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wall_clock_timers_fire_once_per_flushed_state_even_across_a_crash() {
        let h = UniqueVisitors::new();
        let mut d = driver(&h).await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        // The handler schedules a wall-clock timer at the record's timestamp, an hour ahead.
        d.send(TestRecord::new("t".to_string(), "timer".to_string()).timestamp(now + 3_600_000))
            .await
            .unwrap();
        d.flush().await.unwrap();
        d.advance_wall_clock(Duration::from_secs(60)).await.unwrap();
        assert!(d.read(&h.fired).await.unwrap().is_empty(), "not due yet");
        d.advance_wall_clock(Duration::from_secs(3600))
            .await
            .unwrap();
        // Fired, but not flushed: a crash fires it again, and its write counts once.
        d.crash().await.unwrap();
        d.advance_wall_clock(Duration::from_secs(1)).await.unwrap();
        assert_eq!(d.read(&h.fired).await.unwrap(), vec![("t".to_string(), 1)]);
        d.lose_disk().await.unwrap();
        d.advance_wall_clock(Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            d.read(&h.fired).await.unwrap(),
            vec![("t".to_string(), 1)],
            "a fired timer does not come back from the changelog"
        );
    }
}
