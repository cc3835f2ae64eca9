//! Which partitions' stores this member can answer from: a partition's worker registers it
//! as opening when it starts, ready once its state is restored, and removes it when it ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::state::db::PartitionDb;

/// A partition's stores as queries see them.
#[derive(Clone)]
pub(crate) enum Slot {
    /// Assigned, its state being restored (or its tables bootstrapped).
    Opening,
    /// Restored: RocksDB holds what is flushed.
    Ready(Arc<PartitionDb>),
}

/// A topic and partition.
type Part = (Arc<str>, i32);

/// The partitions of one consumer, shared by its workers and its query handles.
#[derive(Default)]
pub(crate) struct QueryRegistry {
    /// Per partition: the registration that set it, and its slot.
    parts: RwLock<HashMap<Part, (u64, Slot)>>,
    registrations: AtomicU64,
}

impl std::fmt::Debug for QueryRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryRegistry").finish_non_exhaustive()
    }
}

impl QueryRegistry {
    /// Registers `(topic, partition)` as opening; the registration is removed when the
    /// returned guard is dropped (the worker ended, however).
    pub(crate) fn opening(self: &Arc<Self>, topic: Arc<str>, partition: i32) -> Registration {
        let id = self.registrations.fetch_add(1, Ordering::Relaxed);
        self.set(id, &topic, partition, Slot::Opening);
        Registration {
            registry: self.clone(),
            id,
            topic,
            partition,
        }
    }

    pub(crate) fn slot(&self, topic: &str, partition: i32) -> Option<Slot> {
        let parts = self.parts.read().unwrap_or_else(|p| p.into_inner());
        parts
            .get(&(Arc::from(topic), partition))
            .map(|(_, slot)| slot.clone())
    }

    /// Every registered partition and whether it is ready.
    pub(crate) fn partitions(&self) -> Vec<(String, i32, bool)> {
        let parts = self.parts.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = parts
            .iter()
            .map(|((t, p), (_, slot))| (t.to_string(), *p, matches!(slot, Slot::Ready(_))))
            .collect();
        out.sort();
        out
    }

    fn set(&self, id: u64, topic: &Arc<str>, partition: i32, slot: Slot) {
        let mut parts = self.parts.write().unwrap_or_else(|p| p.into_inner());
        parts.insert((topic.clone(), partition), (id, slot));
    }
}

/// A worker's registration; removed on drop.
pub(crate) struct Registration {
    registry: Arc<QueryRegistry>,
    id: u64,
    topic: Arc<str>,
    partition: i32,
}

impl Registration {
    /// The partition's state is restored: queries read it from now on.
    pub(crate) fn ready(&self, db: Arc<PartitionDb>) {
        self.registry
            .set(self.id, &self.topic, self.partition, Slot::Ready(db));
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut parts = self
            .registry
            .parts
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let key = (self.topic.clone(), self.partition);
        // A worker of the same partition started since (a quick revoke and assign) keeps its
        // registration.
        if parts.get(&key).is_some_and(|(id, _)| *id == self.id) {
            parts.remove(&key);
        }
    }
}
