//! Standby replicas: warm copies of partitions this member does not own, so that when their
//! owner is lost for good the member that inherits a partition restores only the changelog
//! records after its replica's checkpoint instead of the whole changelog.
//!
//! # How it runs
//!
//! One thread per consumer (the *keeper*) decides which partitions to keep
//! ([`placement`], from the group's members and owners read by [`group`]), opens their
//! directories `<state_dir>/<group>/<topic>-<partition>` — the same ones an owner uses — and
//! tails their changelogs with readers outside the group that never commit, applying the
//! records with the restore's rules ([`crate::state::replica`]). It runs a pass every
//! [`POLL`] and recomputes the set every `refresh` and whenever this member's assignment
//! changes.
//!
//! A worker that is assigned a partition first *claims* it ([`Standbys::claim`]): the
//! keeper stops reading it and closes the replica, then the worker opens the directory with
//! the normal restore, which reads only what follows the replica's checkpoint (a
//! *promotion*). Replicas never serve a handler. When the worker goes (revoke), its claim
//! ends and the partition may become a replica again.
//!
//! Directories of partitions this member neither owns nor keeps are deleted once they have
//! been neither for `cleanup_delay` (only when standbys are on: without them nothing is
//! deleted automatically).

mod group;
mod placement;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::offset::TopicPartition;
use crate::state::replica::Replica;
use crate::state::{partition_dir, StateEnv, StateError};

/// How often the keeper reads the changelogs of its replicas.
const POLL: Duration = Duration::from_millis(200);

/// Standby replicas: how many warm copies of each partition the group keeps besides its
/// owner, and how this member keeps its share. Set with
/// [`ConsumerConfigBuilder::standby_replicas`](crate::ConsumerConfigBuilder::standby_replicas).
///
/// ```
/// use std::time::Duration;
/// use kafka_stateful::StandbyReplicas;
/// let standbys = StandbyReplicas::new(1).cleanup_delay(Duration::from_secs(600));
/// # let _ = standbys;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyReplicas {
    pub(crate) replicas: usize,
    pub(crate) cleanup_delay: Duration,
    pub(crate) refresh: Duration,
}

impl StandbyReplicas {
    /// `replicas` warm copies of each partition on other members (like Kafka Streams'
    /// `num.standby.replicas`). Defaults: stale directories deleted after 10 minutes, the
    /// group's membership read every 5 seconds.
    pub fn new(replicas: usize) -> Self {
        Self {
            replicas,
            cleanup_delay: Duration::from_secs(600),
            refresh: Duration::from_secs(5),
        }
    }

    /// How long the directory of a partition this member neither owns nor keeps stays on
    /// disk (it may come back). Kafka Streams' `state.cleanup.delay.ms`.
    pub fn cleanup_delay(mut self, delay: Duration) -> Self {
        self.cleanup_delay = delay;
        self
    }

    /// How often the group's members and owners are read to recompute the replicas (they
    /// are also recomputed whenever this member's assignment changes).
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh = interval;
        self
    }
}

/// A standby replica's figures (see [`StatsSnapshot::standbys`](crate::StatsSnapshot)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StandbyStats {
    /// Changelog records behind the changelogs' ends, all stores: what a promotion would
    /// read now.
    pub lag: u64,
    /// Changelog records read since the replica was opened.
    pub records_read: u64,
    /// Changelog data records it did not apply because the restore rules make them void: a
    /// zombie's writes after its successor took over, or a flush that never completed.
    pub void_records: u64,
}

/// Partitions a worker claimed, and the replicas the keeper holds.
#[derive(Default)]
struct Slots {
    claimed: BTreeSet<TopicPartition>,
    replicas: BTreeMap<TopicPartition, Slot>,
    /// Set by claims and releases: the assignment changed, recompute the replica set.
    changed: bool,
    /// Whether this member got its first assignment: before it, the partitions it is about
    /// to own look like anybody's, and nothing is placed.
    assignment_seen: bool,
    /// Partitions whose directory holds a replica this member kept (open or not): a claim
    /// of one is a promotion.
    warm: BTreeSet<TopicPartition>,
    stopping: bool,
}

enum Slot {
    /// Open, not being read: a claim closes it at once.
    Idle(Box<Replica>, StandbyStats),
    /// The keeper is reading it.
    Busy,
}

struct Shared {
    slots: Mutex<Slots>,
    stats: Arc<crate::observe::StatsInner>,
    /// Signalled when a busy replica is returned, and on claims and releases.
    wake: Condvar,
}

impl Shared {
    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The standby keeper of one consumer; stops (closing every replica) when dropped.
pub(crate) struct Standbys {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Standbys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standbys").finish_non_exhaustive()
    }
}

/// A worker's claim on its partition: from its assignment on, the keeper starts no pass on
/// it. Released when dropped (the worker is gone, its state closed).
pub(crate) struct Claim {
    shared: Arc<Shared>,
    tp: TopicPartition,
}

impl Claim {
    /// Waits until the keeper is done with the partition's replica and closes it; returns
    /// whether this member kept the partition warm (a promotion: the restore reads only
    /// what follows the replica's checkpoint). Blocking, briefly: a pass in progress is
    /// abandoned at its next poll.
    pub(crate) fn take_replica(&self) -> bool {
        let tp = &self.tp;
        let mut slots = self.shared.slots();
        while matches!(slots.replicas.get(tp), Some(Slot::Busy)) {
            slots = self
                .shared
                .wake
                .wait(slots)
                .unwrap_or_else(|p| p.into_inner());
        }
        let promoted = slots.warm.remove(tp);
        if let Some(Slot::Idle(replica, _)) = slots.replicas.remove(tp) {
            drop(slots);
            close(*replica, tp);
        } else {
            drop(slots);
        }
        forget(&self.shared.stats, tp);
        promoted
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut slots = self.shared.slots();
        slots.claimed.remove(&self.tp);
        slots.changed = true;
        self.shared.wake.notify_all();
    }
}

impl Standbys {
    /// Starts the keeper for the `partitions` of the source topic.
    ///
    /// # Errors
    /// When the group reader cannot be created.
    pub(crate) fn start(
        env: StateEnv,
        settings: StandbyReplicas,
        partitions: Vec<TopicPartition>,
        stats: Arc<crate::observe::StatsInner>,
    ) -> Result<Self, crate::Error> {
        let group = group::GroupReader::new(&env.config)?;
        let shared = Arc::new(Shared {
            slots: Mutex::new(Slots {
                changed: true,
                ..Slots::default()
            }),
            wake: Condvar::new(),
            stats: stats.clone(),
        });
        let keeper = Keeper {
            env,
            settings,
            partitions,
            group,
            shared: shared.clone(),
            stats,
            wanted: BTreeSet::new(),
            refreshed: None,
            mine: BTreeSet::new(),
            stale: BTreeMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("kafka-stateful-standby".into())
            .spawn(move || keeper.run())
            .map_err(|e| crate::Error::Fatal {
                code: "Thread".into(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Takes `tp` for its owner, at its assignment (non-blocking: the worker waits for the
    /// replica with [`Claim::take_replica`] before it opens the state).
    pub(crate) fn claim(&self, tp: &TopicPartition) -> Claim {
        let mut slots = self.shared.slots();
        slots.claimed.insert(tp.clone());
        slots.changed = true;
        self.shared.wake.notify_all();
        Claim {
            shared: self.shared.clone(),
            tp: tp.clone(),
        }
    }

    /// The member got an assignment (possibly empty): from now on what it owns is known.
    pub(crate) fn assignment_seen(&self) {
        let mut slots = self.shared.slots();
        if !slots.assignment_seen {
            slots.assignment_seen = true;
            slots.changed = true;
            self.shared.wake.notify_all();
        }
    }
}

impl Drop for Standbys {
    fn drop(&mut self) {
        self.shared.slots().stopping = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A replica is no longer kept here: its figures go.
fn forget(stats: &crate::observe::StatsInner, tp: &TopicPartition) {
    stats.standby_remove(tp);
    crate::observe::metrics::standby_lag(&tp.0, tp.1, 0);
}

fn close(replica: Replica, tp: &TopicPartition) {
    if let Err(error) = replica.close() {
        tracing::warn!(topic = %tp.0, partition = tp.1, %error, "standby replica: persisting its last writes failed");
    }
}

/// The keeper thread's state.
struct Keeper {
    env: StateEnv,
    settings: StandbyReplicas,
    partitions: Vec<TopicPartition>,
    group: group::GroupReader,
    shared: Arc<Shared>,
    stats: Arc<crate::observe::StatsInner>,
    /// The replicas placement asks this member to keep.
    wanted: BTreeSet<TopicPartition>,
    refreshed: Option<Instant>,
    /// Partitions the group last saw this member commit: their directories are kept even
    /// before this member's assignment arrives (after a restart).
    mine: BTreeSet<TopicPartition>,
    /// Directories neither owned nor kept, since when.
    stale: BTreeMap<TopicPartition, Instant>,
}

impl Keeper {
    fn run(mut self) {
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
            if let Slot::Idle(replica, _) = slot {
                close(*replica, &tp);
            }
            forget(&self.stats, &tp);
        }
    }

    /// Reads the group and recomputes the replicas to keep.
    fn refresh(&mut self) {
        let Some(me) = self.env.config.instance_id.clone() else {
            return;
        };
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
            .filter(|(_, owner)| **owner == me)
            .map(|(tp, _)| tp.clone())
            .collect();
        let owned = self.shared.slots().claimed.clone();
        let wanted = placement::standby_set(
            &view,
            &me,
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
            if let Some(Slot::Idle(replica, _)) = slots.replicas.remove(&tp) {
                closing.push((tp, replica));
            }
        }
        drop(slots);
        for (tp, replica) in closing {
            tracing::info!(topic = %tp.0, partition = tp.1, "standby replica no longer kept");
            close(*replica, &tp);
            forget(&self.stats, &tp);
        }
    }

    /// One pass of one replica: opened if needed, then read up to the changelogs' ends.
    fn catch_up(&mut self, tp: &TopicPartition) {
        let taken = {
            let mut slots = self.shared.slots();
            if slots.claimed.contains(tp) || slots.stopping {
                return;
            }
            match slots.replicas.insert(tp.clone(), Slot::Busy) {
                Some(Slot::Idle(replica, stats)) => Some((replica, stats)),
                _ => None,
            }
        };
        let (mut replica, mut stats) = match taken {
            Some(taken) => taken,
            None => match self.open(tp) {
                Some(replica) => (Box::new(replica), StandbyStats::default()),
                None => {
                    self.shared.slots().replicas.remove(tp);
                    self.shared.wake.notify_all();
                    return;
                }
            },
        };
        let names: Vec<String> = self.env.config.stores.iter().map(|s| s.name.clone()).collect();
        let shared = self.shared.clone();
        let stop = || {
            let slots = shared.slots();
            slots.claimed.contains(tp) || slots.stopping
        };
        let result = replica.catch_up(self.env.log.as_ref(), &names, &stop);
        let mut slots = self.shared.slots();
        match result {
            Ok(pass) => {
                stats.records_read += pass.records;
                stats.lag = pass.lag;
                stats.void_records = pass.voided;
                self.stats.standby_set(tp.clone(), stats);
                crate::observe::metrics::standby_lag(&tp.0, tp.1, pass.lag);
                slots.replicas.insert(tp.clone(), Slot::Idle(replica, stats));
            }
            Err(
                error @ (StateError::CheckpointAhead { .. } | StateError::ChangelogReplaced { .. }),
            ) => {
                slots.replicas.remove(tp);
                drop(slots);
                tracing::warn!(topic = %tp.0, partition = tp.1, %error,
                    "standby replica does not belong to this changelog (topic recreated or truncated): wiping it");
                if let Err(error) = replica.destroy() {
                    tracing::warn!(%error, "standby replica: wiping failed");
                }
                slots = self.shared.slots();
            }
            Err(error) => {
                slots.replicas.remove(tp);
                drop(slots);
                tracing::warn!(topic = %tp.0, partition = tp.1, %error, "standby replica: reading its changelogs failed; retrying");
                close(*replica, tp);
                slots = self.shared.slots();
            }
        }
        drop(slots);
        self.shared.wake.notify_all();
    }

    fn open(&mut self, tp: &TopicPartition) -> Option<Replica> {
        let path = self.path(tp)?;
        match Replica::open(&self.env, path, tp.1) {
            Ok(replica) => {
                tracing::info!(topic = %tp.0, partition = tp.1, "standby replica opened");
                self.shared.slots().warm.insert(tp.clone());
                self.stale.remove(tp);
                Some(replica)
            }
            // Its owner in this process has not closed it yet: next pass.
            Err(StateError::Locked { .. }) => None,
            Err(error) => {
                tracing::warn!(topic = %tp.0, partition = tp.1, %error, "standby replica cannot be opened");
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
            let tables = path.with_file_name(format!("{}-{}.tables", tp.0, tp.1));
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
