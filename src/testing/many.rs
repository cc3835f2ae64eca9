//! Handing the driver many records at once: what key-level concurrency needs to overlap
//! them (one record at a time, each waited for, would run them one after another).

use super::*;

impl<KC, VC, H> TestDriver<KC, VC, H>
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    /// Hands `records` to the worker as one fetched batch (the next offsets of the
    /// partition) and waits until all of them were processed.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn send_all(&mut self, records: Vec<TestRecord<KC::Item, VC::Item>>) -> Result<()> {
        let Some(last) = self.submit(records)? else {
            return Ok(());
        };
        let Some(running) = &self.running else {
            return Ok(());
        };
        let progress = running.progress.clone();
        self.wait("the records to be processed", || {
            progress.processed_next.load(Ordering::Acquire) > last
        })
        .await
    }

    /// Hands `records` to the worker as one fetched batch without waiting; returns the last
    /// offset given (`None` for no records).
    ///
    /// # Errors
    /// The driver's codecs' errors.
    pub fn submit(&mut self, records: Vec<TestRecord<KC::Item, VC::Item>>) -> Result<Option<i64>> {
        let mut batch = RecordBatch::default();
        let mut last = None;
        for record in records {
            let encoded = self.encode(record)?;
            let offset = self.next_offset;
            self.next_offset += 1;
            let (_, key, value, timestamp, headers) = &encoded;
            let header_refs: Vec<(&str, Option<&[u8]>)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref()))
                .collect();
            batch.push_raw(offset, key.as_deref(), value.as_deref(), &header_refs);
            batch.set_last_timestamp(*timestamp);
            self.sent
                .push((offset, encoded.1, encoded.2, encoded.3, encoded.4));
            last = Some(offset);
        }
        if let Some(tables) = &mut self.tables {
            tables.deliver();
        }
        if let (Some(running), Some(_)) = (&self.running, last) {
            let _ = running.tx.send(batch);
        }
        Ok(last)
    }

    /// Waits until `done` holds for the partition's [`Progress`] (its durable offset is what
    /// Kafka would hold as committed); fails after 30 s.
    ///
    /// # Errors
    /// The worker's error, if it failed meanwhile.
    pub async fn wait_for(
        &mut self,
        what: &str,
        mut done: impl FnMut(&Progress) -> bool,
    ) -> Result<()> {
        let Some(running) = &self.running else {
            return Ok(());
        };
        let progress = running.progress.clone();
        self.wait(what, || {
            done(&Progress {
                processed_next: progress.processed_next.load(Ordering::Acquire),
                durable_next: progress.durable_next(),
                handled: progress.handled.load(Ordering::Acquire),
            })
        })
        .await
    }
}

impl<KC, VC, H> TestDriver<KC, VC, H>
where
    KC: Codec,
    VC: Codec,
    H: Handler<KC::Item, VC::Item>,
{
    /// The partition is lost (its session expired; another member may own it): the worker
    /// cancels what is in flight, runs `on_lost`, flushes and commits nothing more. Then it
    /// is assigned again, and the records after the last durable offset are delivered again.
    ///
    /// # Errors
    /// Restore and hook errors.
    pub async fn lose_partition(&mut self) -> Result<()> {
        if let Some(running) = self.running.take() {
            let durable = running.progress.durable_next();
            running.stop.lose();
            drop(running.tx);
            let _ = running.join.await;
            if let Ok(error) = self.failures.try_recv() {
                return Err(error);
            }
            // Nothing became durable after the loss: the next owner starts where it was.
            self.committed = durable.max(self.committed);
        }
        self.start().await
    }
}

/// Where the driver's partition stands, for [`TestDriver::wait_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// The lowest offset not processed yet.
    pub processed_next: i64,
    /// The offset a commit would send (everything before it is durable).
    pub durable_next: i64,
    /// Records handled successfully by the current worker.
    pub handled: u64,
}
