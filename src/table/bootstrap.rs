//! Bootstrap: read a table partition from its local checkpoint to the end offset it has now,
//! before anything reads the table. Blocking: runs on blocking threads.

use std::time::{Duration, Instant};

use super::source::TableSource;
use super::store::{sort_out, TableStore};
use super::{TableError, TableSpec};
use crate::changelog::{ChangelogError, OutRecord};
use crate::config::ErrorPolicy;
use crate::state::StateError;

/// Produces dead letters and waits for their acknowledgements (from a blocking thread).
pub(crate) type SendBlocking<'a> = &'a dyn Fn(Vec<OutRecord>) -> Result<(), ChangelogError>;

/// What a bootstrap read.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Bootstrapped {
    /// Table records read.
    pub(crate) records: u64,
    /// Bad records skipped or dead-lettered.
    pub(crate) bad: u64,
    pub(crate) elapsed: Duration,
}

impl Bootstrapped {
    pub(crate) fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.records as f64 / secs
        } else {
            0.0
        }
    }
}

/// One table partition to bring up to date: the table's index in the store, its spec, and
/// the partition.
pub(crate) struct Part<'a> {
    pub(crate) index: usize,
    pub(crate) spec: &'a TableSpec,
    pub(crate) partition: i32,
}

/// How a bootstrap reports and decides.
pub(crate) struct Run<'a> {
    pub(crate) source: &'a dyn TableSource,
    pub(crate) policy: &'a ErrorPolicy,
    pub(crate) send: SendBlocking<'a>,
    pub(crate) stop: &'a dyn Fn() -> bool,
    /// `(read, to read)` over all parts.
    pub(crate) progress: &'a mut dyn FnMut(u64, u64),
}

/// Reads every part from its checkpoint to its current end offset into `store`, in batches
/// each written atomically with its checkpoint. `Ok(None)`: stopped.
///
/// # Errors
/// [`StateError::CheckpointAhead`] (inside [`TableError::State`]) when a checkpoint lies past
/// its partition's end: the topic was recreated or truncated, and the caller wipes the store
/// and bootstraps again. [`TableError::BadRecord`] under `ErrorPolicy::Fail`; read, produce
/// and RocksDB errors.
pub(crate) fn bootstrap(
    store: &TableStore,
    parts: &[Part<'_>],
    run: &mut Run<'_>,
) -> Result<Option<Bootstrapped>, TableError> {
    let started = Instant::now();
    let mut plans = Vec::with_capacity(parts.len());
    for part in parts {
        let checkpoint = store.checkpoint(part.index, part.partition)?;
        let (low, high) = run.source.watermarks(&part.spec.topic, part.partition)?;
        if checkpoint > high {
            return Err(StateError::CheckpointAhead {
                store: part.spec.name.clone(),
                path: store.path().to_path_buf(),
                checkpoint,
                changelog_end: high,
            }
            .into());
        }
        if checkpoint < low {
            // Retention removed records the table never read: keys they deleted may remain.
            tracing::warn!(table = %part.spec.name, topic = %part.spec.topic, partition = part.partition,
                checkpoint, low, "table topic no longer holds the records after the local checkpoint; reading from its start");
        }
        plans.push((checkpoint.max(low), high));
    }
    let total: u64 = plans
        .iter()
        .map(|(from, to)| (to - from).max(0) as u64)
        .sum();
    let mut done = Bootstrapped::default();
    (run.progress)(0, total);
    for (part, &(from, to)) in parts.iter().zip(&plans) {
        if from >= to {
            continue;
        }
        let Run {
            source,
            policy,
            send,
            stop,
            progress,
        } = run;
        let finished = source.read(
            &part.spec.topic,
            part.partition,
            (from, to),
            *stop,
            &mut |batch| {
                let sorted = sort_out(
                    part.spec,
                    part.partition,
                    batch,
                    0..batch.records.len(),
                    policy,
                );
                done.bad += sorted.skipped + sorted.dead_letters.len() as u64;
                if !sorted.dead_letters.is_empty() {
                    send(sorted.dead_letters)?;
                }
                // With the write-ahead log: a bootstrap cut short by a crash resumes after its
                // last batch instead of starting over.
                store.write(
                    part.index,
                    part.partition,
                    &sorted.entries,
                    sorted.next,
                    true,
                )?;
                done.records += batch.records.len() as u64;
                progress(done.records, total);
                match sorted.failed {
                    Some(error) => Err(error),
                    None => Ok(()),
                }
            },
        );
        if !finished? {
            return Ok(None);
        }
    }
    done.elapsed = started.elapsed();
    Ok(Some(done))
}
