//! The worker's side of tables (see [`crate::table`]): bootstrap at assignment, updates
//! applied before the input records they precede in time, and while no input waits.

use super::*;
use crate::table::PartitionTables;

impl<KC, VC, H> Worker<KC, VC, H>
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    /// Reads the partition's co-partitioned tables up to their end offsets on a blocking
    /// thread, then starts feeding them; hands the handler's reads to `ctx`. `false` when
    /// the partition was revoked meanwhile.
    pub(super) async fn open_tables(&mut self, ctx: &mut PartitionContext) -> Result<bool, Error> {
        let Some(env) = self.shared.tables.clone() else {
            return Ok(true);
        };
        let (topic, partition, stop) = (self.topic.clone(), self.partition, self.stop.clone());
        let progress = self.progress.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let on_progress = |done: u64, total: u64| {
                let _ = progress.restore_started.set(Instant::now());
                progress.table_total.store(total, Ordering::Relaxed);
                progress.table_done.store(done, Ordering::Relaxed);
            };
            PartitionTables::open(
                &env,
                (&topic, partition),
                &|| stop.is_stopped(),
                &on_progress,
            )
        })
        .await
        .map_err(|e| Error::WorkerPanicked {
            topic: self.topic.to_string(),
            partition,
            message: if e.is_panic() {
                panic_message(e.into_panic().as_ref())
            } else {
                "table bootstrap cancelled".into()
            },
        })??;
        let Some((tables, done)) = opened else {
            return Ok(false);
        };
        self.progress
            .table_bootstrapped
            .store(done.records, Ordering::Relaxed);
        self.progress
            .table_rate_bits
            .store(done.rate().to_bits(), Ordering::Relaxed);
        self.progress.skipped.fetch_add(done.bad, Ordering::Relaxed);
        ctx.set_tables(tables.reads().clone());
        self.tables = Some(tables);
        Ok(true)
    }

    /// Whether the tables are aligned for the record at `raw` without more (see
    /// [`PartitionTables::aligned_now`]); otherwise [`align_tables`](Self::align_tables).
    /// Checked before that call: it is made for every input record.
    pub(super) fn tables_aligned_now(&mut self, raw: &RawRecord) -> bool {
        self.tables
            .as_mut()
            .is_none_or(|t| t.aligned_now(raw.timestamp))
    }

    /// Before the record at `raw`: the table updates that precede it in time.
    pub(super) async fn align_tables(&mut self, raw: &RawRecord) -> Result<(), Error> {
        if let Some(tables) = self.tables.as_mut().filter(|t| t.is_aligned()) {
            let bad = tables.bad;
            tables.align(raw.timestamp).await?;
            self.count_bad_table_records(bad);
        }
        Ok(())
    }

    /// Table updates arrived, or the input was caught up with: while no input record waits,
    /// the updates not later than the input so far apply (see
    /// [`PartitionTables::apply_idle`]).
    pub(super) async fn tables_arrived(&mut self, input: &Source) -> Result<(), Error> {
        if let Some(tables) = self.tables.as_mut() {
            if input.is_empty() {
                let bad = tables.bad;
                tables.apply_idle().await?;
                self.count_bad_table_records(bad);
            }
        }
        Ok(())
    }

    fn count_bad_table_records(&self, before: u64) {
        if let Some(tables) = &self.tables {
            self.progress
                .skipped
                .fetch_add(tables.bad - before, Ordering::Relaxed);
        }
    }
}

/// Resolves when table updates arrived for `tables`; never without tables.
pub(super) async fn arrived(tables: &mut Option<PartitionTables>) {
    match tables {
        Some(tables) => tables.arrived().await,
        None => std::future::pending().await,
    }
}
