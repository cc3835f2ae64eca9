//! Fetched records on their way from the poll loop to a partition worker, in batches.
//!
//! librdkafka's records live in the consumer's memory and cannot leave the poll thread, so
//! they are copied. One batch per partition and poll round keeps that copy to one buffer
//! allocation for all keys and values, and the hand-off to one channel send, instead of
//! three allocations and a send per record.

use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::changelog::OutRecord;

/// Bytes accounted per record on top of its key, value and headers (the record's own
/// fields and its share of the batch), for the queue budgets.
pub(crate) const RECORD_OVERHEAD: usize = 64;

type Span = (usize, usize);

/// Header names with the span of their value (`None`: a header without a value).
type RawHeaders = Box<[(String, Option<Span>)]>;

/// One fetched record of a [`RecordBatch`].
#[derive(Debug, Clone)]
pub(crate) struct RawRecord {
    pub(crate) offset: i64,
    /// Milliseconds since the epoch, when the broker gave one.
    pub(crate) timestamp: Option<i64>,
    key: Option<Span>,
    value: Option<Span>,
    headers: Option<RawHeaders>,
}

/// Records of one partition, in offset order, with their bytes in one buffer.
#[derive(Debug, Default)]
pub(crate) struct RecordBatch {
    pub(crate) records: Vec<RawRecord>,
    buf: Vec<u8>,
    /// Accounted size, for the queue budgets.
    pub(crate) bytes: usize,
}

impl RecordBatch {
    fn put(&mut self, bytes: Option<&[u8]>) -> Option<Span> {
        bytes.map(|b| {
            let start = self.buf.len();
            self.buf.extend_from_slice(b);
            (start, b.len())
        })
    }

    /// Copies a fetched record in.
    pub(crate) fn push(&mut self, msg: &BorrowedMessage<'_>) {
        let headers = msg
            .headers()
            .map(|hs| hs.iter().map(|h| (h.key.to_string(), h.value)));
        let timestamp = msg.timestamp().to_millis();
        self.push_parts(msg.offset(), timestamp, msg.key(), msg.payload(), headers);
    }

    /// Copies a fetched record in from its parts (`headers`: `None` for a record without
    /// any).
    pub(crate) fn push_parts<'h>(
        &mut self,
        offset: i64,
        timestamp: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Option<impl Iterator<Item = (String, Option<&'h [u8]>)>>,
    ) {
        let key = self.put(key);
        let value = self.put(value);
        let headers = headers.map(|hs| {
            hs.map(|(name, value)| (name, self.put(value)))
                .collect::<Box<[_]>>()
        });
        let record = RawRecord {
            offset,
            timestamp,
            key,
            value,
            headers,
        };
        self.bytes += self.record_bytes(&record);
        self.records.push(record);
    }

    /// Adds a record built in memory (tests and the test driver).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn push_raw(
        &mut self,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) {
        let key = self.put(key);
        let value = self.put(value);
        let headers = (!headers.is_empty()).then(|| {
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), self.put(*v)))
                .collect::<Box<[_]>>()
        });
        let record = RawRecord {
            offset,
            timestamp: None,
            key,
            value,
            headers,
        };
        self.bytes += self.record_bytes(&record);
        self.records.push(record);
    }

    /// Sets the timestamp of the last record added.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn set_last_timestamp(&mut self, timestamp: Option<i64>) {
        if let Some(last) = self.records.last_mut() {
            last.timestamp = timestamp;
        }
    }

    fn slice(&self, span: Option<Span>) -> Option<&[u8]> {
        span.map(|(start, len)| &self.buf[start..start + len])
    }

    pub(crate) fn key(&self, r: &RawRecord) -> Option<&[u8]> {
        self.slice(r.key)
    }

    pub(crate) fn value(&self, r: &RawRecord) -> Option<&[u8]> {
        self.slice(r.value)
    }

    /// The record's headers as sent (`None` value: a header without a value).
    pub(crate) fn headers<'a>(
        &'a self,
        r: &'a RawRecord,
    ) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + 'a {
        r.headers
            .iter()
            .flat_map(|hs| hs.iter())
            .map(|(k, v)| (k.as_str(), self.slice(*v)))
    }

    /// The raw record `r` with `ks.error.*` headers saying where it came from and why it
    /// failed, for a dead-letter topic.
    pub(crate) fn dead_letter(
        &self,
        r: &RawRecord,
        dead_letter_topic: &str,
        (topic, partition): (&str, i32),
        kind: &str,
        message: &str,
    ) -> OutRecord {
        let mut headers: Vec<(String, Vec<u8>)> = self
            .headers(r)
            .map(|(k, v)| (k.to_string(), v.unwrap_or_default().to_vec()))
            .collect();
        headers.extend([
            ("ks.error.topic".to_string(), topic.as_bytes().to_vec()),
            (
                "ks.error.partition".to_string(),
                partition.to_string().into_bytes(),
            ),
            (
                "ks.error.offset".to_string(),
                r.offset.to_string().into_bytes(),
            ),
            ("ks.error.kind".to_string(), kind.as_bytes().to_vec()),
            ("ks.error.message".to_string(), message.as_bytes().to_vec()),
        ]);
        OutRecord {
            topic: dead_letter_topic.to_string(),
            partition: -1, // RD_KAFKA_PARTITION_UA: the producer's partitioner decides
            key: self.key(r).map(<[u8]>::to_vec),
            value: self.value(r).map(<[u8]>::to_vec),
            headers,
        }
    }

    /// Accounted size of one record, for the queue budgets.
    pub(crate) fn record_bytes(&self, r: &RawRecord) -> usize {
        RECORD_OVERHEAD
            + r.key.map_or(0, |k| k.1)
            + r.value.map_or(0, |v| v.1)
            + r.headers
                .as_ref()
                .map_or(0, |hs| hs.iter().map(|(k, _)| k.len() + 16).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_values_and_headers_come_back_as_pushed() {
        let mut batch = RecordBatch::default();
        batch.push_raw(
            7,
            Some(b"k1"),
            Some(b"value-1"),
            &[("h", Some(b"x")), ("e", None)],
        );
        batch.push_raw(9, None, None, &[]);
        let (a, b) = (&batch.records[0], &batch.records[1]);
        assert_eq!(batch.key(a), Some(&b"k1"[..]));
        assert_eq!(batch.value(a), Some(&b"value-1"[..]));
        let headers: Vec<_> = batch.headers(a).collect();
        assert_eq!(headers, vec![("h", Some(&b"x"[..])), ("e", None)]);
        assert_eq!((batch.key(b), batch.value(b)), (None, None));
        assert_eq!(batch.headers(b).count(), 0);
        assert_eq!(b.offset, 9);
    }
}
