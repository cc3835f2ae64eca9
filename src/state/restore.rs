//! Restore: bring a partition's RocksDB up to its changelogs before the worker processes.
//!
//! Runs on a blocking thread (never in the rebalance callback, never on the poll loop).
//! With intact local state it reads only the changelog tail after the checkpoint — usually
//! nothing. Without local state it replays the whole changelog partition.

use std::time::{Duration, Instant};

use rdkafka::message::{BorrowedMessage, Message};

use super::db::{PartitionDb, StateBatch, StoreCheckpoint};
use super::replay::{resolve, Marker, StoreReplay};
use super::{StateEnv, StateError};
use crate::changelog::{
    changelog_topic, ChangelogError, ChangelogReader, OutRecord, HEADER_ABORTED, HEADER_SEQ,
    HEADER_SOURCE_OFFSET, HEADER_TOUCHED, MARKER_KEY,
};

/// Restored records are written to RocksDB in batches of about this many.
const APPLY_BATCH: usize = 10_000;

/// What a finished restore found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RestoreReport {
    /// Changelog records read.
    pub(crate) records: u64,
    pub(crate) elapsed: Duration,
    /// Source records before this offset are already in the state; `-1`: none.
    pub(crate) source_next: i64,
    /// Sequence number of the partition's next flush.
    pub(crate) next_seq: u64,
}

impl RestoreReport {
    pub(crate) fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.records as f64 / secs
        } else {
            0.0
        }
    }
}

pub(crate) fn malformed(
    topic: &str,
    partition: i32,
    offset: i64,
    reason: impl Into<String>,
) -> ChangelogError {
    ChangelogError::Malformed {
        topic: topic.to_string(),
        partition,
        offset,
        reason: reason.into(),
    }
}

fn parse_marker(topic: &str, msg: &BorrowedMessage<'_>) -> Result<Marker, ChangelogError> {
    let header = |name| crate::changelog::reader_header(msg, name);
    let bad = |reason: &str| malformed(topic, msg.partition(), msg.offset(), reason);
    let number = |name| -> Result<i64, ChangelogError> {
        header(name)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(&format!("marker without a valid {name} header")))
    };
    let list = |name| {
        header(name)
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    Ok(Marker {
        seq: u64::try_from(number(HEADER_SEQ)?).map_err(|_| bad("negative ks.seq"))?,
        source_next: number(HEADER_SOURCE_OFFSET)?,
        touched: list(HEADER_TOUCHED).collect(),
        aborted: list(HEADER_ABORTED)
            .map(|s| s.parse().map_err(|_| bad("bad ks.aborted")))
            .collect::<Result<_, _>>()?,
    })
}

/// Restores every store of `partition`. Returns `Ok(None)` when `stop` asked to abandon it.
///
/// # Errors
/// [`StateError::CheckpointAhead`] when a local checkpoint points past the changelog's end
/// (the caller wipes and restores again); changelog and RocksDB errors otherwise.
pub(crate) fn restore(
    db: &PartitionDb,
    env: &StateEnv,
    partition: i32,
    stop: &dyn Fn() -> bool,
) -> Result<Option<RestoreReport>, StateError> {
    let started = Instant::now();
    let config = &env.config;
    let reader = ChangelogReader::new(config).map_err(|source| ChangelogError::Read {
        topic: String::new(),
        partition,
        source,
    })?;
    let source_topic = &config.topics[0];
    let mut plans = Vec::with_capacity(config.stores.len());
    for (index, spec) in config.stores.iter().enumerate() {
        let topic = changelog_topic(&config.group_id, &spec.name);
        let checkpoint = db.checkpoint(index)?;
        let marks = reader.watermarks(&topic, partition)?;
        if checkpoint.changelog_next > marks.high {
            return Err(StateError::CheckpointAhead {
                store: spec.name.clone(),
                path: db.path().to_path_buf(),
                checkpoint: checkpoint.changelog_next,
                changelog_end: marks.high,
            });
        }
        plans.push((
            topic,
            checkpoint,
            checkpoint.changelog_next.max(marks.low),
            marks.high,
        ));
    }
    let total: u64 = plans
        .iter()
        .map(|(_, _, from, to)| (to - from).max(0) as u64)
        .sum();
    env.listener
        .on_restore_start(source_topic, partition, total);
    tracing::info!(topic = %source_topic, partition, records = total, "restore started");

    let mut restored = 0u64;
    let mut replays = Vec::with_capacity(plans.len());
    for (index, (topic, checkpoint, from, to)) in plans.iter().enumerate() {
        let mut replay = StoreReplay::new(config.stores[index].name.clone(), *checkpoint);
        let finished = reader.read(
            topic,
            partition,
            *from,
            *to,
            stop,
            |msg| -> Result<(), StateError> {
                restored += 1;
                match msg.key() {
                    Some(MARKER_KEY) => replay.push_marker(msg.offset(), parse_marker(topic, msg)?),
                    Some(key) => replay.push_data(key.to_vec(), msg.payload().map(<[u8]>::to_vec)),
                    None => {
                        return Err(malformed(
                            topic,
                            partition,
                            msg.offset(),
                            "record without a key",
                        )
                        .into())
                    }
                }
                if replay.ready_len() >= APPLY_BATCH {
                    apply_ready(db, index, &mut replay)?;
                    env.listener.on_restore_progress(
                        source_topic,
                        partition,
                        restored,
                        total.saturating_sub(restored),
                    );
                }
                Ok(())
            },
        )?;
        if !finished {
            return Ok(None);
        }
        apply_ready(db, index, &mut replay)?;
        replays.push(replay);
    }

    let resolution = resolve(&mut replays);
    let mut batch = StateBatch::default();
    for (index, outcome) in resolution.stores.iter().enumerate() {
        if let Some((data, checkpoint)) = &outcome.apply {
            batch
                .entries
                .extend(data.iter().map(|(k, v)| (index, k.clone(), v.clone())));
            batch.checkpoints.push((index, *checkpoint));
        }
    }
    db.write(batch)?;
    let mut next_seq = resolution.next_seq;
    if resolution.stores.iter().any(|o| !o.repair.is_empty()) {
        repair(db, env, partition, &resolution, next_seq)?;
        next_seq += 1;
    }
    let report = RestoreReport {
        records: restored,
        elapsed: started.elapsed(),
        source_next: resolution.source_next,
        next_seq,
    };
    env.listener
        .on_restore_end(source_topic, partition, report.records, report.elapsed);
    tracing::info!(
        topic = %source_topic, partition, records = report.records,
        rate = report.rate(), source_next = report.source_next, "restore finished"
    );
    Ok(Some(report))
}

fn apply_ready(db: &PartitionDb, index: usize, replay: &mut StoreReplay) -> Result<(), StateError> {
    if let Some((data, checkpoint)) = replay.take_ready() {
        let entries = data.into_iter().map(|(k, v)| (index, k, v)).collect();
        db.write(StateBatch {
            entries,
            checkpoints: vec![(index, checkpoint)],
        })?;
    }
    Ok(())
}

/// Overwrites the changelog records of a partial flush with the restored values, then marks
/// the repair complete, so every later replay reaches the same state.
fn repair(
    db: &PartitionDb,
    env: &StateEnv,
    partition: i32,
    resolution: &super::replay::Resolution,
    seq: u64,
) -> Result<(), StateError> {
    let config = &env.config;
    let touched: Vec<usize> = (0..resolution.stores.len())
        .filter(|&i| !resolution.stores[i].repair.is_empty())
        .collect();
    let touched_names: Vec<&str> = touched
        .iter()
        .map(|&i| config.stores[i].name.as_str())
        .collect();
    tracing::warn!(
        partition, aborted = ?resolution.aborted, stores = ?touched_names,
        "changelog ends with an incomplete flush; rolling it back"
    );
    let headers = |marker: bool| {
        let mut h = vec![
            (HEADER_SEQ.to_string(), seq.to_string().into_bytes()),
            (
                HEADER_SOURCE_OFFSET.to_string(),
                resolution.source_next.to_string().into_bytes(),
            ),
        ];
        if marker {
            h.push((
                HEADER_TOUCHED.to_string(),
                touched_names.join(",").into_bytes(),
            ));
            let aborted = resolution
                .aborted
                .map(|s| s.to_string())
                .unwrap_or_default();
            h.push((HEADER_ABORTED.to_string(), aborted.into_bytes()));
        }
        h
    };
    let mut records = Vec::new();
    for &index in &touched {
        let topic = changelog_topic(&config.group_id, &config.stores[index].name);
        for key in &resolution.stores[index].repair {
            let value = db.get(index, key)?;
            records.push(OutRecord {
                topic: topic.clone(),
                partition,
                key: Some(key.clone()),
                value,
                headers: headers(false),
            });
        }
    }
    let markers: Vec<OutRecord> = touched
        .iter()
        .map(|&index| OutRecord {
            topic: changelog_topic(&config.group_id, &config.stores[index].name),
            partition,
            key: Some(MARKER_KEY.to_vec()),
            value: Some(seq.to_string().into_bytes()),
            headers: headers(true),
        })
        .collect();
    let handle = tokio::runtime::Handle::current();
    handle.block_on(env.writer.send_all(records))?;
    let offsets = handle.block_on(env.writer.send_all(markers))?;
    let checkpoints = touched
        .iter()
        .zip(offsets)
        .map(|(&index, offset)| {
            (
                index,
                StoreCheckpoint {
                    changelog_next: offset + 1,
                    seq,
                    source_next: resolution.source_next,
                },
            )
        })
        .collect();
    db.write(StateBatch {
        entries: Vec::new(),
        checkpoints,
    })
}
