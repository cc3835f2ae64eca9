//! The state of one assigned partition: open + restore, and the flush cycle.

use std::path::PathBuf;
use std::sync::Arc;

use super::db::{PartitionDb, StateBatch, StoreCheckpoint};
use super::overlay::Overlay;
use super::restore::{restore, RestoreReport};
use super::StateError;
use crate::changelog::{
    changelog_topic, ChangelogWriter, OutRecord, HEADER_ABORTED, HEADER_SEQ, HEADER_SOURCE_OFFSET,
    HEADER_TOUCHED, MARKER_KEY,
};
use crate::config::ConsumerConfig;
use crate::observe::RestoreListener;

/// What every partition's state shares.
#[derive(Clone)]
pub(crate) struct StateEnv {
    pub(crate) config: Arc<ConsumerConfig>,
    pub(crate) writer: ChangelogWriter,
    pub(crate) listener: Arc<dyn RestoreListener>,
}

/// A partition's stores: RocksDB, the unflushed overlay, and the flush bookkeeping.
#[derive(Debug)]
pub(crate) struct PartitionState {
    pub(super) db: PartitionDb,
    pub(super) overlay: Overlay,
    config: Arc<ConsumerConfig>,
    writer: ChangelogWriter,
    changelogs: Vec<String>,
    partition: i32,
    next_seq: u64,
    /// Next source offset reflected in the flushed state.
    source_next: i64,
}

/// `<state_dir>/<group>/<topic>-<partition>`.
pub(crate) fn partition_dir(
    config: &ConsumerConfig,
    topic: &str,
    partition: i32,
) -> Option<PathBuf> {
    Some(
        config
            .state_dir
            .as_ref()?
            .join(&config.group_id)
            .join(format!("{topic}-{partition}")),
    )
}

impl PartitionState {
    /// Opens the partition's database and restores it from the changelogs. Blocking.
    /// `Ok(None)` when `stop` abandoned the restore (the partition was revoked meanwhile).
    ///
    /// # Errors
    /// Lock, format, RocksDB and changelog errors.
    pub(crate) fn open(
        env: &StateEnv,
        topic: &str,
        partition: i32,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<(Self, RestoreReport)>, StateError> {
        let config = &env.config;
        let Some(path) = partition_dir(config, topic, partition) else {
            return Err(StateError::CorruptMetadata {
                path: PathBuf::new(),
                reason: "no state_dir configured".into(),
            });
        };
        let mut db = PartitionDb::open(&path, &config.stores)?;
        let report = match restore(&db, env, partition, stop) {
            Err(StateError::CheckpointAhead {
                store,
                checkpoint,
                changelog_end,
                ..
            }) => {
                tracing::warn!(
                    path = %path.display(), store, checkpoint, changelog_end,
                    "local checkpoint is past the changelog end (changelog recreated or truncated): \
                     wiping local state and replaying the changelog"
                );
                db.destroy()?;
                db = PartitionDb::open(&path, &config.stores)?;
                restore(&db, env, partition, stop)?
            }
            other => other?,
        };
        Ok(report.map(|report| {
            let state = Self {
                db,
                overlay: Overlay::new(config.stores.len()),
                config: config.clone(),
                writer: env.writer.clone(),
                changelogs: config
                    .stores
                    .iter()
                    .map(|s| changelog_topic(&config.group_id, &s.name))
                    .collect(),
                partition,
                next_seq: report.next_seq,
                source_next: report.source_next,
            };
            (state, report)
        }))
    }

    pub(crate) fn store_index(&self, name: &str) -> Option<usize> {
        self.config.stores.iter().position(|s| s.name == name)
    }

    /// Source records before this offset are already reflected in the state.
    pub(crate) fn restored_source_next(&self) -> i64 {
        self.source_next
    }

    pub(crate) fn overlay_mut(&mut self) -> &mut Overlay {
        &mut self.overlay
    }

    /// Distinct keys waiting for a flush.
    pub(crate) fn dirty_keys(&self) -> usize {
        self.overlay.dirty_keys()
    }

    /// Makes everything in the overlay durable: changelog data, acks, markers, acks, then one
    /// RocksDB batch with the checkpoints. `source_next` is the next unprocessed source offset.
    ///
    /// # Errors
    /// Changelog or RocksDB errors; the partition must then stop without committing.
    pub(crate) async fn flush(&mut self, source_next: i64) -> Result<(), StateError> {
        let entries = self.overlay.take();
        let touched: Vec<usize> = (0..entries.len())
            .filter(|&i| !entries[i].is_empty())
            .collect();
        if touched.is_empty() {
            return Ok(());
        }
        let seq = self.next_seq;
        let base_headers = vec![
            (HEADER_SEQ.to_string(), seq.to_string().into_bytes()),
            (
                HEADER_SOURCE_OFFSET.to_string(),
                source_next.to_string().into_bytes(),
            ),
        ];
        let data: Vec<OutRecord> = touched
            .iter()
            .flat_map(|&i| {
                let topic = &self.changelogs[i];
                let headers = &base_headers;
                let partition = self.partition;
                entries[i].iter().map(move |(key, value)| OutRecord {
                    topic: topic.clone(),
                    partition,
                    key: Some(key.clone()),
                    value: value.clone(),
                    headers: headers.clone(),
                })
            })
            .collect();
        let records = data.len();
        self.writer.send_all(data).await?;

        let touched_names: Vec<&str> = touched
            .iter()
            .map(|&i| self.config.stores[i].name.as_str())
            .collect();
        let mut marker_headers = base_headers.clone();
        marker_headers.push((
            HEADER_TOUCHED.to_string(),
            touched_names.join(",").into_bytes(),
        ));
        marker_headers.push((HEADER_ABORTED.to_string(), Vec::new()));
        let markers = touched
            .iter()
            .map(|&i| OutRecord {
                topic: self.changelogs[i].clone(),
                partition: self.partition,
                key: Some(MARKER_KEY.to_vec()),
                value: Some(seq.to_string().into_bytes()),
                headers: marker_headers.clone(),
            })
            .collect();
        let marker_offsets = self.writer.send_all(markers).await?;

        let mut batch = StateBatch::default();
        for (&i, offset) in touched.iter().zip(marker_offsets) {
            batch.checkpoints.push((
                i,
                StoreCheckpoint {
                    changelog_next: offset + 1,
                    seq,
                    source_next,
                },
            ));
        }
        for (i, store_entries) in entries.into_iter().enumerate() {
            batch
                .entries
                .extend(store_entries.into_iter().map(|(k, v)| (i, k, v)));
        }
        self.db.write(batch)?;
        self.next_seq += 1;
        self.source_next = source_next;
        tracing::debug!(
            partition = self.partition,
            seq,
            records,
            source_next,
            "flushed state"
        );
        Ok(())
    }
}
