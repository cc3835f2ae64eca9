//! The timers of a partition's state: staged with the current record, committed with it,
//! and the library's own (window closes, TTL sweeps).

use super::PartitionState;
use crate::config::ConsumerConfig;
use crate::state::db::PartitionDb;
use crate::state::StateError;
use crate::timer::Timers;

impl PartitionState {
    /// Schedules (`insert`) or cancels a timer, with the current record.
    ///
    /// # Errors
    /// [`StateError::TimersNotDeclared`].
    pub(crate) fn stage_timer(
        &mut self,
        insert: bool,
        entry: crate::timer::Entry,
    ) -> Result<(), StateError> {
        let Some((store, _)) = &self.timers else {
            return Err(StateError::TimersNotDeclared);
        };
        let value = insert.then(Vec::new);
        self.overlay
            .write(*store, crate::timer::encode(&entry), value);
        self.staged_timers.push((insert, entry));
        Ok(())
    }

    /// The earliest timer of `kind` due at `now`.
    pub(crate) fn next_timer(
        &self,
        kind: crate::timer::TimeKind,
        now: i64,
    ) -> Option<crate::timer::Entry> {
        self.timers.as_ref()?.1.next_due(kind, now)
    }

    /// Whether a timer of `kind` is due at `now` (without copying it out).
    pub(crate) fn timer_due(&self, kind: crate::timer::TimeKind, now: i64) -> bool {
        self.timers
            .as_ref()
            .is_some_and(|(_, timers)| timers.is_due(kind, now))
    }

    /// Whether the current record staged `entry`.
    pub(crate) fn timer_staged(&self, entry: &crate::timer::Entry) -> bool {
        self.staged_timers
            .iter()
            .any(|(insert, e)| *insert && e == entry)
    }

    /// Whether `entry` is pending from an earlier record (not only staged by this one).
    pub(crate) fn timer_committed(&self, entry: &crate::timer::Entry) -> bool {
        self.timers.as_ref().is_some_and(|(_, t)| t.contains(entry))
    }

    /// Whether the close timer of window `start` of `store` is known to be pending.
    pub(crate) fn close_known(&self, store: usize, start: i64) -> bool {
        self.closes_known.contains(&(store, start))
    }

    /// Remembers that the close timer of window `start` of `store` is pending (committed).
    pub(crate) fn remember_close(&mut self, store: usize, start: i64) {
        if self.closes_known.len() >= 64 {
            self.closes_known.clear();
        }
        self.closes_known.push((store, start));
    }

    /// Makes sure the TTL sweep of `store` is scheduled (with the current record).
    pub(crate) fn ensure_sweep(
        &mut self,
        store: usize,
        expiry: crate::state::ttl::Expiry,
        now: i64,
    ) -> Result<(), StateError> {
        if self.sweeping[store] {
            return Ok(());
        }
        let name = &self.config.stores[store].name;
        let staged = self.staged_timers.iter().any(|(insert, e)| {
            *insert && e.2 == crate::timer::Owner::Expiry && e.3 == name.as_bytes()
        });
        if staged {
            return Ok(());
        }
        let timer = expiry.sweep_timer(name, now.saturating_add(expiry.sweep_interval()));
        self.stage_timer(true, timer)
    }

    /// The sweep timer of the store named `name` fired at `now` (on its clock): stages the
    /// deletion of its expired entries and the next sweep. Returns how many expired.
    pub(crate) fn sweep_expired(&mut self, name: &[u8], now: i64) -> Result<usize, StateError> {
        let Some((store, expiry)) = self
            .config
            .stores
            .iter()
            .enumerate()
            .find(|(_, s)| s.name.as_bytes() == name)
            .and_then(|(i, s)| Some((i, s.expiry?)))
        else {
            return Ok(0); // no longer declared with a TTL: the sweep ends
        };
        let expired_at = |stored: &[u8]| {
            crate::state::ttl::unstamp(stored)
                .is_some_and(|(written, _)| expiry.expired(written, now))
        };
        let mut expired = Vec::new();
        let overlay = &self.overlay;
        self.db.for_each(store, |key, value| {
            if overlay.get(store, key) == crate::state::overlay::Lookup::Unknown
                && expired_at(value)
            {
                expired.push(key.to_vec());
            }
        })?;
        overlay.for_each_written(store, |key, value| {
            if value.is_some_and(expired_at) {
                expired.push(key.to_vec());
            }
        });
        let count = expired.len();
        for key in expired {
            self.overlay.write(store, key, None);
        }
        let next = expiry.sweep_timer(
            &self.config.stores[store].name,
            now.saturating_add(expiry.sweep_interval()),
        );
        self.stage_timer(true, next)?;
        Ok(count)
    }

    /// Whether timers are declared.
    pub(crate) fn has_timers(&self) -> bool {
        self.timers.is_some()
    }

    /// Pending timers.
    pub(crate) fn pending_timers(&self) -> usize {
        self.timers.as_ref().map_or(0, |(_, t)| t.len())
    }
}

/// Per store, whether `timers` holds its TTL sweep.
pub(super) fn sweeping(config: &ConsumerConfig, timers: Option<&(usize, Timers)>) -> Vec<bool> {
    config
        .stores
        .iter()
        .map(|s| {
            timers.is_some_and(|(_, t)| {
                t.any(|e| e.2 == crate::timer::Owner::Expiry && e.3 == s.name.as_bytes())
            })
        })
        .collect()
}

/// Reads the pending timers from the timer store, if timers are declared.
pub(super) fn load_timers(
    db: &PartitionDb,
    config: &ConsumerConfig,
) -> Result<Option<(usize, Timers)>, StateError> {
    let Some(store) = config
        .stores
        .iter()
        .position(|s| s.name == crate::timer::TIMER_STORE)
    else {
        return Ok(None);
    };
    let mut timers = Timers::default();
    for (key, _) in db.prefix(store, b"")? {
        if let Some(entry) = crate::timer::decode(&key) {
            timers.insert(entry);
        }
    }
    Ok(Some((store, timers)))
}
