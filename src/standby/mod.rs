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

pub(crate) mod group;
mod keeper;
mod placement;
mod settings;
mod stats;

pub use settings::StandbyReplicas;
pub use stats::StandbyStats;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::offset::TopicPartition;
use crate::state::replica::Replica;
use crate::state::StateEnv;

/// How often the keeper reads the changelogs of its replicas.
const POLL: Duration = Duration::from_millis(200);
/// A replica that failed (to open, or to read) is tried again after this long.
const RETRY: Duration = Duration::from_secs(5);

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
    Idle(Box<Replica>),
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
        let replica = slots.replicas.remove(tp);
        drop(slots);
        if let Some(Slot::Idle(replica)) = replica {
            close(*replica, tp);
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
            stats,
        });
        let keeper = keeper::Keeper::new(env, settings, partitions, group, shared.clone());
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

/// Reports a promotion (from the restoring worker's blocking thread): log, listener, stats
/// and metrics.
pub(crate) fn report_promotion(
    env: &StateEnv,
    stats: &crate::observe::StatsInner,
    (topic, partition): (&str, i32),
    restored: &crate::state::restore::Restored,
) {
    tracing::info!(%topic, partition, records = restored.records, elapsed = ?restored.elapsed,
        "standby replica promoted");
    env.listener
        .on_standby_promoted(topic, partition, restored.records, restored.elapsed);
    stats
        .standby_promotions
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    crate::observe::metrics::standby_promoted(topic, partition);
}

fn close(replica: Replica, tp: &TopicPartition) {
    if let Err(error) = replica.close() {
        tracing::warn!(topic = %tp.0, partition = tp.1, %error, "standby replica: persisting its last writes failed");
    }
}
