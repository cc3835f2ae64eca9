//! Where outputs and dead letters go under exactly-once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::Transactions;
use crate::changelog::{ChangelogError, OutRecord, Pending, RecordSink};

/// The records sink of an exactly-once consumer. A handler's outputs are deferred: the
/// flush that commits the record's offset produces them, in the same transaction. Records
/// sent and waited for at once (dead letters, a lifecycle hook's outputs) are produced in
/// the open transaction as a unit of their own, and become visible when it commits.
#[derive(Debug)]
pub(crate) struct TransactionalSink {
    pub(crate) transactions: Arc<Transactions>,
}

impl RecordSink for TransactionalSink {
    fn send_records(
        &self,
        records: Vec<OutRecord>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<i64>, ChangelogError>> + Send + '_>> {
        Box::pin(async move {
            let unit = self
                .transactions
                .enter()
                .await
                .map_err(|failed| aborted(&records, failed))?;
            let offsets = unit.send(records).await?.wait().await?;
            unit.finish();
            Ok(offsets)
        })
    }

    fn enqueue_records(
        &self,
        records: Vec<OutRecord>,
    ) -> Pin<Box<dyn Future<Output = Result<Pending, ChangelogError>> + Send + '_>> {
        Box::pin(async move { Ok(Pending::deferred(records)) })
    }
}

/// The error of records that could not be produced because transactions stopped.
pub(crate) fn aborted(records: &[OutRecord], failed: super::TxnFailed) -> ChangelogError {
    let (topic, partition) = records
        .first()
        .map_or((String::new(), -1), |r| (r.topic.clone(), r.partition));
    ChangelogError::Transaction {
        topic,
        partition,
        reason: failed.0.to_string(),
    }
}
