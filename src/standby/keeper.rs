//! The keeper thread: places the replicas, opens them, reads their changelogs, and deletes
//! directories nobody here uses any more (see the [module docs](super)).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::{
    close, forget, group, placement, Shared, Slot, StandbyReplicas, StandbyStats, POLL, RETRY,
};
use crate::offset::TopicPartition;
use crate::state::log::LogPartition;
use crate::state::replica::Replica;
use crate::state::{partition_dir, StateEnv, StateError};
use crate::table::tables_dir;

/// The keeper thread's state.
pub(super) struct Keeper {
    env: StateEnv,
    settings: StandbyReplicas,
    partitions: Vec<TopicPartition>,
    group: group::GroupReader,
    shared: Arc<Shared>,
    /// This member's `group.instance.id` (standby replicas need static membership).
    me: String,
    /// The replicas placement asks this member to keep.
    wanted: BTreeSet<TopicPartition>,
    refreshed: Option<Instant>,
    /// Partitions the group last saw this member commit: their directories are kept even
    /// before this member's assignment arrives (after a restart).
    mine: BTreeSet<TopicPartition>,
    /// Directories neither owned nor kept, since when.
    stale: BTreeMap<TopicPartition, Instant>,
    /// Replicas that failed, and when: not tried again before [`RETRY`].
    failed: BTreeMap<TopicPartition, Instant>,
}

impl Keeper {
    pub(super) fn new(
        env: StateEnv,
        settings: StandbyReplicas,
        partitions: Vec<TopicPartition>,
        group: group::GroupReader,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            me: env.config.instance_id.clone().unwrap_or_default(),
            env,
            settings,
            partitions,
            group,
            shared,
            wanted: BTreeSet::new(),
            refreshed: None,
            mine: BTreeSet::new(),
            stale: BTreeMap::new(),
            failed: BTreeMap::new(),
        }
    }

    pub(super) fn run(mut self) {
        loop {
            let (changed, stopping) = {
                let mut slots = self.shared.slots();
                (std::mem::take(&mut slots.changed), slots.stopping)
            };
            if stopping {
                break;
            }
            let due = self
                .refreshed
                .is_none_or(|at| at.elapsed() >= self.settings.refresh);
            if changed || due {
                self.refresh();
            }
            self.drop_unwanted();
            for tp in self.wanted.clone() {
                self.catch_up(&tp);
            }
            self.clean_up();
            let slots = self.shared.slots();
            if !slots.changed && !slots.stopping {
                let _ = self.shared.wake.wait_timeout(slots, POLL);
            }
        }
        let replicas = std::mem::take(&mut self.shared.slots().replicas);
        for (tp, slot) in replicas {
            if let Slot::Idle(replica) = slot {
                close(*replica, &tp);
            }
            forget(&self.shared.stats, &tp);
        }
    }

    /// Reads the group and recomputes the replicas to keep.
    fn refresh(&mut self) {
        if !self.shared.slots().assignment_seen {
            return;
        }
        let view = match self.group.view(&self.partitions) {
            Ok(view) => view,
            Err(error) => {
                tracing::warn!(%error, "standby replicas: reading the group failed; keeping the current replicas");
                return;
            }
        };
        self.refreshed = Some(Instant::now());
        self.mine = view
            .owners
            .iter()
            .filter(|(_, owner)| **owner == self.me)
            .map(|(tp, _)| tp.clone())
            .collect();
        let owned = self.shared.slots().claimed.clone();
        let wanted = placement::standby_set(
            &view,
            &self.me,
            &self.partitions,
            &owned,
            self.settings.replicas,
            self.env.config.assignment,
        );
        if wanted != self.wanted {
            tracing::info!(replicas = ?wanted, members = ?view.members, "standby replicas changed");
        }
        self.wanted = wanted;
    }

    /// Closes replicas no longer wanted (claimed ones are closed by their claim).
    fn drop_unwanted(&mut self) {
        let mut slots = self.shared.slots();
        let unwanted: Vec<TopicPartition> = slots
            .replicas
            .keys()
            .filter(|tp| !self.wanted.contains(*tp))
            .cloned()
            .collect();
        let mut closing = Vec::new();
        for tp in unwanted {
            if let Some(Slot::Idle(replica)) = slots.replicas.remove(&tp) {
                closing.push((tp, replica));
            }
        }
        drop(slots);
        for (tp, replica) in closing {
            tracing::info!(topic = %tp.0, partition = tp.1, "standby replica no longer kept");
            close(*replica, &tp);
            forget(&self.shared.stats, &tp);
        }
    }

    /// One pass of one replica: opened if needed, then read up to the changelogs' ends.
    fn catch_up(&mut self, tp: &TopicPartition) {
        if self.failed.get(tp).is_some_and(|at| at.elapsed() < RETRY) {
            return;
        }
        let taken = {
            let mut slots = self.shared.slots();
            if slots.claimed.contains(tp) || slots.stopping {
                return;
            }
            match slots.replicas.insert(tp.clone(), Slot::Busy) {
                Some(Slot::Idle(replica)) => Some(replica),
                _ => None,
            }
        };
        let mut replica = match taken.or_else(|| self.open(tp).map(Box::new)) {
            Some(replica) => replica,
            None => {
                self.shared.slots().replicas.remove(tp);
                self.shared.wake.notify_all();
                return;
            }
        };
        let shared = self.shared.clone();
        let stop = || {
            let slots = shared.slots();
            slots.claimed.contains(tp) || slots.stopping
        };
        let mut changelog = LogPartition {
            log: self.env.log.as_ref(),
            partition: tp.1,
            stop: &stop,
        };
        let result = replica.catch_up(&mut changelog);
        let mut slots = self.shared.slots();
        match result {
            Ok(None) => {
                slots.replicas.insert(tp.clone(), Slot::Idle(replica));
            }
            Ok(Some(pass)) => {
                let stats = StandbyStats {
                    lag: pass.lag,
                    records_read: pass.records_read,
                    void_records: pass.voided,
                };
                self.shared.stats.standby_set(tp.clone(), stats);
                crate::observe::metrics::standby_lag(&tp.0, tp.1, stats.lag);
                slots.replicas.insert(tp.clone(), Slot::Idle(replica));
            }
            Err(
                error @ (StateError::CheckpointAhead { .. }
                | StateError::ChangelogReplaced { .. }
                | StateError::Damaged { .. }),
            ) => {
                slots.replicas.remove(tp);
                drop(slots);
                tracing::warn!(topic = %tp.0, partition = tp.1, %error,
                    "standby replica does not match its changelog: wiping it (the next pass reads the changelog again)");
                if let Err(error) = replica.destroy() {
                    tracing::warn!(%error, "standby replica: wiping failed");
                }
                slots = self.shared.slots();
            }
            Err(error) => {
                slots.replicas.remove(tp);
                drop(slots);
                tracing::warn!(topic = %tp.0, partition = tp.1, %error, retry = ?RETRY,
                    "standby replica: reading its changelogs failed");
                self.failed.insert(tp.clone(), Instant::now());
                close(*replica, tp);
                slots = self.shared.slots();
            }
        }
        drop(slots);
        self.shared.wake.notify_all();
    }

    fn open(&mut self, tp: &TopicPartition) -> Option<Replica> {
        let path = self.path(tp)?;
        match Replica::open(&self.env, path) {
            Ok(replica) => {
                tracing::info!(topic = %tp.0, partition = tp.1, "standby replica opened");
                self.shared.slots().warm.insert(tp.clone());
                self.stale.remove(tp);
                Some(replica)
            }
            // Its owner in this process has not closed it yet: next pass.
            Err(StateError::Locked { .. }) => None,
            Err(error) => {
                tracing::warn!(topic = %tp.0, partition = tp.1, %error, retry = ?RETRY,
                    "standby replica cannot be opened");
                self.failed.insert(tp.clone(), Instant::now());
                None
            }
        }
    }

    fn path(&self, tp: &TopicPartition) -> Option<PathBuf> {
        partition_dir(&self.env.config, &tp.0, tp.1)
    }

    /// Deletes the directories of partitions neither owned nor kept for `cleanup_delay`
    /// (the partition's state and its co-partitioned tables' copies). Nothing before the
    /// group was read once: until then every directory looks unused.
    fn clean_up(&mut self) {
        if self.refreshed.is_none() {
            return;
        }
        let now = Instant::now();
        for tp in &self.partitions {
            let Some(path) = self.path(tp) else { return };
            let tables = tables_dir(&self.env.config, &tp.0, tp.1);
            let slots = self.shared.slots();
            let in_use = slots.claimed.contains(tp) || slots.replicas.contains_key(tp);
            let kept = self.wanted.contains(tp) || self.mine.contains(tp);
            if in_use || kept || !(path.exists() || tables.exists()) {
                self.stale.remove(tp);
                continue;
            }
            let since = *self.stale.entry(tp.clone()).or_insert(now);
            if since.elapsed() < self.settings.cleanup_delay {
                continue;
            }
            // Under the lock: a claim waits until the directory is gone (its owner then
            // restores from the changelog).
            tracing::info!(path = %path.display(), delay = ?self.settings.cleanup_delay,
                "deleting the state of a partition neither owned nor kept as a standby");
            let mut slots = slots;
            slots.warm.remove(tp);
            for dir in [&path, &tables].into_iter().filter(|d| d.exists()) {
                if let Err(error) = std::fs::remove_dir_all(dir) {
                    tracing::warn!(path = %dir.display(), %error, "deleting stale state failed");
                }
            }
            drop(slots);
            self.stale.remove(tp);
        }
    }
}
