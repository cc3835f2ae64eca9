//! A versioned table's history in its store ([`super::super::versions`] has the layout):
//! the version writes of a batch, with their pruning, and as-of lookups.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};

use super::super::versions;
use super::{Entry, Layout, TableStore};
use crate::state::StateError;

/// A versioned table's column family of versions ([`super::super::versions`]).
#[derive(Debug)]
pub(super) struct History {
    pub(super) store: usize,
    pub(super) retention_ms: i64,
    /// The newest timestamp written (`i64::MIN`: none), persisted with each batch.
    pub(super) newest: AtomicI64,
    /// A bound at or below every version's timestamp (`i64::MAX`: none written; `i64::MIN`:
    /// unknown, a store from before it was kept), persisted with each batch. While the
    /// horizon stays below it, nothing can be pruned.
    pub(super) oldest: AtomicI64,
}

/// A stored version: its time and value (`None`: a tombstone).
#[cfg(test)]
pub(super) type Version = (i64, Option<Vec<u8>>);

/// A version key to write, with its stored bytes (`None`: delete it).
pub(super) type VersionWrite = (Vec<u8>, Option<Vec<u8>>);

/// What an as-of lookup found.
pub(crate) enum AsOf<T> {
    /// The version at or before the time (`None`: absent or deleted then).
    Found(Option<T>),
    /// The time is before the history the table keeps: `oldest` is the earliest time it
    /// answers for.
    TooOld { oldest: i64 },
    /// The table keeps no versions.
    NotVersioned,
}

impl TableStore {
    /// The version puts and deletes for `entries` (visited in key order, `order`): each
    /// written key's versions, old and new, pruned to what lookups from `horizon` on need.
    /// When `nothing_to_prune` (every version, stored or new, is after the horizon), a key
    /// whose new versions all come after its newest one needs no read of its history: they
    /// are added and its head moves.
    pub(super) fn version_writes(
        &self,
        layout: &Layout,
        store: usize,
        order: &[usize],
        entries: &[Entry<'_>],
        horizon: i64,
        nothing_to_prune: bool,
    ) -> Result<(Vec<VersionWrite>, Vec<VersionWrite>), StateError> {
        let mut writes = Vec::with_capacity(order.len());
        let mut heads = Vec::new();
        let mut i = 0;
        while i < order.len() {
            let key = entries[order[i]].key;
            let run = order[i..]
                .iter()
                .take_while(|&&j| entries[j].key == key)
                .count();
            // time → the version's bytes, whether RocksDB holds that time, and whether
            // this batch writes it (the later record of one time wins).
            let mut by_time: BTreeMap<i64, (Vec<u8>, bool, bool)> = BTreeMap::new();
            // A key without a head has no versions (the newest is never pruned): a
            // bootstrap's first write of each key skips the history seek (an iterator per
            // key, most of a versioned bootstrap's cost), as does a key only appended to.
            let first_new = order[i..i + run]
                .iter()
                .map(|&j| entries[j].time)
                .min()
                .unwrap_or(i64::MIN);
            let appended = |newest: i64| nothing_to_prune && newest < first_new;
            if self
                .head_time(layout, key)?
                .is_some_and(|newest| !appended(newest))
            {
                for (k, v) in self.db.prefix(store, &versions::prefix(key))? {
                    if let Some(t) = versions::time_of(&k) {
                        by_time.insert(t, (v, true, false));
                    }
                }
            }
            for &j in &order[i..i + run] {
                let e = entries[j];
                let time = e.time;
                let in_db = by_time.get(&time).is_some_and(|v| v.1);
                by_time.insert(time, (versions::encode(e.value), in_db, true));
            }
            // The newest version changed: the head follows (see `versions`).
            if let Some((&time, (bytes, _, true))) = by_time.last_key_value() {
                heads.push((key.to_vec(), Some(versions::encode_head(time, bytes))));
            }
            let times: Vec<(i64, bool)> = by_time
                .iter()
                .map(|(&t, (v, _, _))| (t, versions::decode(v).is_none()))
                .collect();
            let kept = versions::first_kept(&times, horizon);
            for (n, (time, (bytes, in_db, written))) in by_time.into_iter().enumerate() {
                if n < kept && in_db {
                    writes.push((versions::key(key, time), None));
                } else if n >= kept && written {
                    writes.push((versions::key(key, time), Some(bytes)));
                }
            }
            i += run;
        }
        Ok((heads, writes))
    }

    /// The time of `key`'s newest version, from its head (without caching the answer).
    fn head_time(&self, layout: &Layout, key: &[u8]) -> Result<Option<i64>, StateError> {
        let time = |head: &[u8]| versions::decode_head(head).map_or(i64::MAX, |(t, _)| t);
        if let Some(cached) = layout.cache.as_ref().and_then(|c| c.peek(key)) {
            return Ok(cached.as_deref().map(time));
        }
        self.db.get_with(layout.latest, key, time)
    }

    /// `f` of the value `key` had at `time` in a versioned table.
    pub(crate) fn as_of_with<T>(
        &self,
        table: usize,
        key: &[u8],
        time: i64,
        f: impl Fn(&[u8]) -> T,
    ) -> Result<AsOf<T>, StateError> {
        let Some(history) = &self.tables[table].versions else {
            return Ok(AsOf::NotVersioned);
        };
        let newest = history.newest.load(Ordering::Relaxed);
        if newest != i64::MIN {
            let oldest = newest.saturating_sub(history.retention_ms);
            if time < oldest {
                return Ok(AsOf::TooOld { oldest });
            }
        }
        // The head answers for times at or after the key's newest version (and says when a
        // key has no version at all); earlier times seek.
        let head = self.latest(table, key)?;
        let head = head
            .as_deref()
            .map(|head| match versions::decode_head(head) {
                Some((newest, stored)) if newest <= time => Ok(versions::decode(stored).map(&f)),
                _ => Err(()),
            });
        let found = match head {
            None => None,
            Some(Ok(found)) => found,
            Some(Err(())) => self
                .db
                .last_at_or_before_with(
                    history.store,
                    &versions::prefix(key),
                    &versions::key(key, time),
                    |stored| versions::decode(stored).map(&f),
                )?
                .flatten(),
        };
        Ok(AsOf::Found(found))
    }

    /// The stored versions of a versioned table's `key`: `(time, value)` in time order.
    #[cfg(test)]
    pub(crate) fn versions_of(&self, table: usize, key: &[u8]) -> Result<Vec<Version>, StateError> {
        let Some(history) = &self.tables[table].versions else {
            return Ok(Vec::new());
        };
        Ok(self
            .db
            .prefix(history.store, &versions::prefix(key))?
            .into_iter()
            .filter_map(|(k, v)| {
                Some((
                    versions::time_of(&k)?,
                    versions::decode(&v).map(<[u8]>::to_vec),
                ))
            })
            .collect())
    }
}
