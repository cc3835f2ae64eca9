//! Where a record's context finds its partition's state: owned by the worker's context
//! while records run one at a time (no lock on the hot path), or shared by the records in
//! flight under key-level concurrency, each record keeping its own writes until it
//! succeeds — so a record's writes reach the overlay (and a flush) all at once or not at all.

use std::sync::{Arc, Mutex, MutexGuard};

use super::overlay::Write;
use super::PartitionState;

/// A partition's state as a context holds it.
// One slot per context, made once per partition (or record in flight): the owned variant
// stays inline so that the one-record-at-a-time path reaches the state without a pointer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum StateSlot {
    Owned(PartitionState),
    Shared {
        state: Arc<Mutex<PartitionState>>,
        /// This record's writes, applied when it succeeds.
        staged: Vec<Write>,
    },
}

/// What a store handle works on; see [`StateSlot::target`].
pub(crate) enum Target<'a> {
    Owned(&'a mut PartitionState),
    Shared {
        state: &'a Mutex<PartitionState>,
        staged: &'a mut Vec<Write>,
    },
}

/// Locks a shared state. The lock is only ever held for one synchronous state operation (a
/// read, a commit, the start of a flush), never across an await: records in flight take
/// turns on their worker's task. A panic inside one cannot leave the state half-changed, so
/// a poisoned lock is used as it is.
pub(crate) fn lock(state: &Mutex<PartitionState>) -> MutexGuard<'_, PartitionState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl StateSlot {
    /// A context of a record in flight on `state`.
    pub(crate) fn shared(state: Arc<Mutex<PartitionState>>) -> Self {
        Self::Shared {
            state,
            staged: Vec::new(),
        }
    }

    /// Makes `slot`'s state shareable by records in flight; returns the shared handle.
    pub(crate) fn share(slot: &mut Option<Self>) -> Option<Arc<Mutex<PartitionState>>> {
        let state = match slot.take()? {
            Self::Owned(owned) => Arc::new(Mutex::new(owned)),
            Self::Shared { state, .. } => state,
        };
        *slot = Some(Self::shared(state.clone()));
        Some(state)
    }

    pub(crate) fn target(&mut self) -> Target<'_> {
        match self {
            Self::Owned(state) => Target::Owned(state),
            Self::Shared { state, staged } => Target::Shared { state, staged },
        }
    }

    /// The owned state (`None` when shared).
    pub(crate) fn owned(&self) -> Option<&PartitionState> {
        match self {
            Self::Owned(state) => Some(state),
            Self::Shared { .. } => None,
        }
    }

    pub(crate) fn owned_mut(&mut self) -> Option<&mut PartitionState> {
        match self {
            Self::Owned(state) => Some(state),
            Self::Shared { .. } => None,
        }
    }

    /// Runs `f` on the state, owned or shared.
    pub(crate) fn with<R>(&mut self, f: impl FnOnce(&mut PartitionState) -> R) -> R {
        match self {
            Self::Owned(state) => f(state),
            Self::Shared { state, .. } => f(&mut lock(state)),
        }
    }

    /// The current record (or hook) succeeded: its writes join the overlay.
    pub(crate) fn commit_staged(&mut self) {
        match self {
            Self::Owned(state) => state.commit_staged(),
            Self::Shared { state, staged } => {
                if !staged.is_empty() {
                    lock(state).commit_writes(staged.drain(..));
                }
            }
        }
    }

    /// The current record failed: forget its writes.
    pub(crate) fn discard_staged(&mut self) {
        match self {
            Self::Owned(state) => state.discard_staged(),
            Self::Shared { staged, .. } => staged.clear(),
        }
    }
}
