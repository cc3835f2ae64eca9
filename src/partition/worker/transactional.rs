//! A flush under exactly-once: one unit of the member's open transaction (see
//! `changelog::transaction`). It produces the outputs its records deferred and appends
//! the state's changelog records, registers the offset they reach, and — only once that
//! transaction committed — writes RocksDB and lets the offset count as durable.

use std::sync::Arc;

use super::*;
use crate::changelog::transaction::{Transactions, TxnFailed};
use crate::partition::outputs::Sent;
use crate::state::{FlushDone, StagedFlush};

fn aborted(failed: TxnFailed) -> Error {
    Error::Transaction {
        reason: failed.0.to_string(),
    }
}

impl<KC, VC, H> Worker<KC, VC, H>
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    /// Sends what a timer or a lifecycle hook staged. Under at-least-once it is produced and
    /// acknowledged now (there is no record whose commit could wait for it). Under
    /// exactly-once it joins the next flush, in the transaction that also holds the timer's
    /// or hook's state writes: a firing's outputs are never committed without its effects.
    pub(super) async fn send_outbox(
        &mut self,
        ctx: &mut PartitionContext,
    ) -> Result<(), crate::changelog::ChangelogError> {
        if self.shared.transactions.is_none() {
            return records::send_outbox(&self.shared, ctx).await;
        }
        let outbox = ctx.take_outbox();
        if !outbox.is_empty() {
            let offset = self.committable().map_or(-1, |p| p.next - 1);
            self.outputs
                .push(offset, crate::changelog::Pending::deferred(outbox));
        }
        Ok(())
    }

    /// The flush of `outputs` and the state's `job`, reaching source offset `next`. An error
    /// before the unit finished drops it, which aborts the transaction: nothing of a failed
    /// flush is ever committed.
    pub(super) fn transactional_flush_job(
        &self,
        txn: Arc<Transactions>,
        mut outputs: Sent,
        job: Option<StagedFlush>,
        next: i64,
        urgent: bool,
    ) -> impl std::future::Future<Output = Result<Option<FlushDone>, Error>> + Send + 'static {
        let (topic, partition) = (self.topic.clone(), self.partition);
        let progress = self.progress.clone();
        async move {
            let output_error = |offset, error| Error::Output {
                topic: topic.to_string(),
                partition,
                offset,
                key: None,
                source: Box::new(error),
            };
            let unit = txn.enter().await.map_err(aborted)?;
            let mut sent = Vec::new();
            for (offset, records) in outputs.take_deferred() {
                let pending = unit
                    .send(records)
                    .await
                    .map_err(|e| output_error(offset, e))?;
                sent.push((offset, pending));
            }
            let appended = match job {
                Some(job) => Some(job.await?),
                None => None,
            };
            for (offset, pending) in sent {
                pending.wait().await.map_err(|e| output_error(offset, e))?;
            }
            unit.register(&topic, partition, next, progress);
            let seq = unit.finish();
            if urgent {
                txn.commit_soon();
            }
            txn.committed(seq).await.map_err(aborted)?;
            match appended {
                Some(appended) => Ok(Some(appended.write().await?)),
                None => Ok(None),
            }
        }
    }
}
