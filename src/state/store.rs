//! Typed store declarations and the handles handlers use.

use std::fmt;
use std::sync::Arc;

use super::slot::{lock, Target};
use super::ttl::{self, Expiry};
use super::{StateError, StoreSpec};
use crate::codec::Codec;
use crate::timer::TimeKind;

/// A named store with typed keys and values. Declare it on the builder with
/// [`ConsumerConfigBuilder::store`](crate::ConsumerConfigBuilder::store) and open it in the
/// handler with [`PartitionContext::store`](crate::PartitionContext::store). Cheap to clone.
///
/// ```
/// use kafka_stateful::{codec::{Bincode, Utf8}, StoreDef};
/// let counts: StoreDef<String, u64> = StoreDef::new("counts", Utf8, Bincode::new());
/// assert_eq!(counts.name(), "counts");
/// ```
pub struct StoreDef<K: Send + 'static, V: Send + 'static> {
    name: Arc<str>,
    key: Arc<dyn Codec<Item = K>>,
    value: Arc<dyn Codec<Item = V>>,
    version: u32,
    expiry: Option<Expiry>,
}

impl<K: Send + 'static, V: Send + 'static> Clone for StoreDef<K, V> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            key: self.key.clone(),
            value: self.value.clone(),
            version: self.version,
            expiry: self.expiry,
        }
    }
}

impl<K: Send + 'static, V: Send + 'static> fmt::Debug for StoreDef<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreDef")
            .field("name", &self.name)
            .field("format", &self.spec().format)
            .finish()
    }
}

impl<K: Send + 'static, V: Send + 'static> StoreDef<K, V> {
    /// A store called `name` (letters, digits, `.`, `_`, `-`: it becomes part of the
    /// changelog topic's name).
    pub fn new(name: &str, key: impl Codec<Item = K>, value: impl Codec<Item = V>) -> Self {
        Self {
            name: name.into(),
            key: Arc::new(key),
            value: Arc::new(value),
            version: 1,
            expiry: None,
        }
    }

    /// Version of your state schema (default 1), recorded with the codec names. Opening a
    /// store written with another version is a clear error instead of misread bytes.
    pub fn with_version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Entries not written for `ttl` on `clock` (the partition's stream time, or the wall
    /// clock) are gone: reads no longer see them, and a periodic sweep deletes them with
    /// changelog tombstones. Costs 8 bytes per entry and a scan of the store per sweep (every
    /// quarter of the TTL, at least every second); see [`crate::state::ttl`]. Enables timers.
    ///
    /// A store cannot switch between with and without a TTL (its format records it); the
    /// TTL itself may change between runs.
    pub fn with_ttl(mut self, ttl: std::time::Duration, clock: TimeKind) -> Self {
        self.expiry = Some(Expiry::new(ttl, clock));
        self
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Encodes a key as the store keeps it (queries).
    pub(crate) fn encode_key(&self, key: &K) -> Result<Vec<u8>, crate::codec::CodecError> {
        self.key.encode(key)
    }

    /// Decodes a stored value (queries): a TTL store's write time is taken off.
    pub(crate) fn decode_value(&self, value: &[u8]) -> Result<V, crate::codec::CodecError> {
        let value = match self.expiry {
            Some(_) => {
                ttl::unstamp(value)
                    .ok_or_else(|| crate::codec::CodecError::new("ttl", "no write time"))?
                    .1
            }
            None => value,
        };
        self.value.decode(value)
    }

    /// Decodes a raw entry of this store (the test driver and queries read stores back).
    pub(crate) fn decode(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<(K, V), crate::codec::CodecError> {
        Ok((self.key.decode(key)?, self.decode_value(value)?))
    }

    pub(crate) fn spec(&self) -> StoreSpec {
        StoreSpec {
            name: self.name.to_string(),
            format: format!(
                "key={};value={};version={}",
                self.key.name(),
                self.value.name(),
                self.version
            ) + self.expiry.as_ref().map_or("", Expiry::format),
            expiry: self.expiry,
        }
    }
}

/// A typed view of one store of the current partition. Reads see the writes of earlier
/// records that are not flushed yet, and the current record's own writes. The current
/// record's writes are kept only if its handler returns `Ok`.
pub struct Store<'a, K: Send + 'static, V: Send + 'static> {
    def: &'a StoreDef<K, V>,
    index: usize,
    state: Target<'a>,
    /// The clocks of TTLs.
    clock: ttl::Clock,
}

impl<K: Send + 'static, V: Send + 'static> fmt::Debug for Store<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("name", &self.def.name)
            .finish_non_exhaustive()
    }
}

impl<'a, K: Send + 'static, V: Send + 'static> Store<'a, K, V> {
    pub(crate) fn open(
        def: &'a StoreDef<K, V>,
        state: Target<'a>,
        clock: ttl::Clock,
    ) -> Result<Self, StateError> {
        let index = match &state {
            Target::Owned(state) => state.store_index(&def.name),
            Target::Shared { state, .. } => lock(state).store_index(&def.name),
        }
        .ok_or_else(|| StateError::UnknownStore(def.name.to_string()))?;
        Ok(Self {
            def,
            index,
            state,
            clock,
        })
    }

    /// The current time on `expiry`'s clock.
    fn now(&self, expiry: &Expiry) -> i64 {
        self.clock.now(expiry.clock)
    }

    /// The value bytes of a stored entry, `None` if it has expired.
    fn live<'v>(&self, stored: &'v [u8]) -> Option<&'v [u8]> {
        let Some(expiry) = &self.def.expiry else {
            return Some(stored);
        };
        let (written, value) = ttl::unstamp(stored)?;
        (!expiry.expired(written, self.now(expiry))).then_some(value)
    }

    fn codec_err(&self) -> impl Fn(crate::codec::CodecError) -> StateError + '_ {
        |source| StateError::Codec {
            store: self.def.name.to_string(),
            source,
        }
    }

    /// The value of `key`, if any.
    ///
    /// # Errors
    /// Codec or RocksDB errors.
    pub fn get(&self, key: &K) -> Result<Option<V>, StateError> {
        let key = self.def.key.encode(key).map_err(self.codec_err())?;
        let decode = |b: &[u8]| self.live(b).map(|live| self.def.value.decode(live));
        let found = match &self.state {
            Target::Owned(state) => state.read_with(self.index, &key, decode)?,
            Target::Shared { state, staged } => {
                // This record's own writes first, then what the others committed.
                match staged
                    .iter()
                    .rev()
                    .find(|(s, k, _)| *s == self.index && *k == key)
                {
                    Some((_, _, value)) => value.as_deref().map(decode),
                    None => lock(state).read_with(self.index, &key, decode)?,
                }
            }
        };
        found.flatten().transpose().map_err(self.codec_err())
    }

    fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        match &mut self.state {
            Target::Owned(state) => state.write(self.index, key, value),
            Target::Shared { staged, .. } => staged.push((self.index, key, value)),
        }
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    /// Codec errors.
    pub fn put(&mut self, key: &K, value: &V) -> Result<(), StateError> {
        let key = self.def.key.encode(key).map_err(self.codec_err())?;
        let mut value = self.def.value.encode(value).map_err(self.codec_err())?;
        if let Some(expiry) = self.def.expiry {
            let now = self.now(&expiry);
            value = ttl::stamp(now, value);
            match &mut self.state {
                Target::Owned(state) => state.ensure_sweep(self.index, expiry, now)?,
                // `build()` refuses TTLs with key-level concurrency: their sweeps are timers.
                Target::Shared { .. } => return Err(StateError::NotWithConcurrency("TTL stores")),
            }
        }
        self.write(key, Some(value));
        Ok(())
    }

    /// Deletes `key` (a tombstone in the changelog).
    ///
    /// # Errors
    /// Codec errors.
    pub fn delete(&mut self, key: &K) -> Result<(), StateError> {
        let key = self.def.key.encode(key).map_err(self.codec_err())?;
        self.write(key, None);
        Ok(())
    }

    /// Entries whose *encoded* key starts with `prefix`, in encoded-key order (meaningful
    /// with [`Utf8`](crate::codec::Utf8) or [`RawBytes`](crate::codec::RawBytes) keys).
    /// Collects into memory: keep prefixes selective.
    ///
    /// # Errors
    /// Codec or RocksDB errors.
    pub fn prefix(&self, prefix: &[u8]) -> Result<Vec<(K, V)>, StateError> {
        let merged = match &self.state {
            Target::Owned(state) => state.prefix(self.index, prefix)?,
            Target::Shared { state, staged } => {
                let state = lock(state);
                let base = state.db.prefix(self.index, prefix)?;
                state.overlay.merge_prefix(self.index, prefix, base, staged)
            }
        };
        merged
            .into_iter()
            .filter_map(|(k, v)| {
                let live = self.live(&v)?;
                let key = self.def.key.decode(&k);
                let value = self.def.value.decode(live);
                Some(key.and_then(|k| Ok((k, value?))).map_err(self.codec_err()))
            })
            .collect()
    }
}
