//! Producing changelog (and dead-letter) records and waiting for their acknowledgements.

use std::time::Duration;

use futures::future::try_join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use super::ChangelogError;

/// One record to produce.
#[derive(Debug, Clone)]
pub(crate) struct OutRecord {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    /// `None` only for dead letters of key-less records.
    pub(crate) key: Option<Vec<u8>>,
    /// `None` is a tombstone.
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
}

/// A shared idempotent producer (`acks=all`); cheap to clone.
#[derive(Clone)]
pub(crate) struct ChangelogWriter {
    producer: FutureProducer,
}

impl std::fmt::Debug for ChangelogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangelogWriter").finish_non_exhaustive()
    }
}

impl ChangelogWriter {
    pub(crate) fn new(producer: FutureProducer) -> Self {
        Self { producer }
    }

    /// Produces `records` and waits until every one is acknowledged; returns their offsets
    /// in input order. Records are enqueued in order, so within a partition they land in
    /// order (idempotence keeps that through retries).
    ///
    /// # Errors
    /// The first record that was not acknowledged.
    pub(crate) async fn send_all(
        &self,
        records: Vec<OutRecord>,
    ) -> Result<Vec<i64>, ChangelogError> {
        let mut deliveries = Vec::with_capacity(records.len());
        for record in &records {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (key, value) in &record.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let mut future_record = FutureRecord::to(&record.topic)
                .partition(record.partition)
                .headers(headers);
            if let Some(key) = &record.key {
                future_record = future_record.key(key);
            }
            if let Some(value) = &record.value {
                future_record = future_record.payload(value);
            }
            let produce_err = |source| ChangelogError::Produce {
                topic: record.topic.clone(),
                partition: record.partition,
                source,
            };
            loop {
                match self.producer.send_result(future_record) {
                    Ok(delivery) => {
                        deliveries.push(async move {
                            match delivery.await {
                                Ok(Ok(delivery)) => Ok(delivery.offset),
                                Ok(Err((source, _))) => Err(produce_err(source)),
                                Err(_canceled) => Err(produce_err(KafkaError::Canceled)),
                            }
                        });
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                        // The local queue is full: let librdkafka send some, then retry.
                        future_record = returned;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((source, _)) => return Err(produce_err(source)),
                }
            }
        }
        try_join_all(deliveries).await
    }
}
