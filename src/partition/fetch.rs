//! A partition's librdkafka queue read in batches.
//!
//! rdkafka's `PartitionQueue::poll` takes one record per call: per record it reads the
//! clock (twice: rdkafka's deadline and librdkafka's timeout), takes the queue's lock and
//! wakes or waits for librdkafka's broker thread, which appends to the same queue under the
//! same lock. Profiled on the no-store job, that lock's futex waits and wake-ups and the
//! clock reads were a third of the CPU. `rd_kafka_consume_batch_queue` takes up to a batch
//! of records with one lock and one clock read. rdkafka does not expose the native queue of
//! a `PartitionQueue`, so [`BatchQueue`] holds its own reference to the partition's queue
//! (`rd_kafka_queue_get_partition`, the queue `split_partition_queue` split off) next to the
//! `PartitionQueue`, which keeps the consumer alive and owns the non-empty callback.

#![allow(unsafe_code)] // audited: each block says why it is sound

use std::collections::VecDeque;
use std::ffi::{CStr, CString};
use std::ptr::NonNull;
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::batch::{RecordBatch, RECORD_OVERHEAD};

/// Records taken from a queue at once, before the worker handles them.
const MAX_RECORDS: usize = 1024;

/// A split partition queue, whatever the consumer's context type.
pub(crate) trait FetchQueue: Send + Sync + 'static {
    /// Moves up to [`MAX_RECORDS`] waiting records (about `max_bytes`) into the empty
    /// `batch`, without blocking; returns an error librdkafka reported for the partition
    /// instead, if any (the records before it are in `batch`).
    fn fill(&mut self, batch: &mut RecordBatch, max_bytes: usize) -> Result<(), KafkaError>;
}

/// One record per call: the fallback when librdkafka gives no second handle on the queue
/// (see the module docs).
impl<C: ConsumerContext + 'static> FetchQueue for PartitionQueue<C> {
    fn fill(&mut self, batch: &mut RecordBatch, max_bytes: usize) -> Result<(), KafkaError> {
        while batch.records.len() < MAX_RECORDS && batch.bytes < max_bytes {
            match self.poll(Duration::ZERO) {
                None => break,
                Some(Ok(msg)) => batch.push(&msg),
                Some(Err(error)) => return Err(error),
            }
        }
        Ok(())
    }
}

/// What a call took after an error: the records and errors behind it, in queue order.
enum Taken {
    Records(RecordBatch),
    Error(KafkaError),
}

/// A split partition queue read with `rd_kafka_consume_batch_queue`.
pub(crate) struct BatchQueue<C: ConsumerContext + 'static> {
    /// Our reference to the partition's queue, released on drop (before `_queue`'s).
    native: NonNull<rdsys::rd_kafka_queue_t>,
    /// Scratch space for the message pointers of one call; empty between calls.
    messages: Vec<*mut rdsys::rd_kafka_message_t>,
    /// Records and errors taken behind an error, handed out before the queue is read again
    /// (the error goes to the poll loop first, as with one record per call).
    behind: VecDeque<Taken>,
    /// Average bytes of a record of the last batch: how many records fit the byte budget.
    record_bytes: usize,
    /// Keeps the consumer (and so the client handle) alive; owns the non-empty callback.
    _queue: PartitionQueue<C>,
}

// SAFETY: librdkafka queues are thread-safe (every operation takes the queue's lock), the
// handle stays valid while `_queue` keeps the consumer alive, and `messages` holds no
// pointer between calls.
unsafe impl<C: ConsumerContext + 'static> Send for BatchQueue<C> {}
// SAFETY: every operation takes `&mut self`; a shared reference can do nothing.
unsafe impl<C: ConsumerContext + 'static> Sync for BatchQueue<C> {}

impl<C: ConsumerContext + 'static> BatchQueue<C> {
    /// A batch reader of the queue `queue` split off for `topic` `partition` of `consumer`;
    /// `Err(queue)` when librdkafka has no such queue (then read it one record at a time).
    pub(crate) fn new(
        consumer: &BaseConsumer<C>,
        queue: PartitionQueue<C>,
        topic: &str,
        partition: i32,
    ) -> Result<Self, PartitionQueue<C>> {
        let Ok(topic) = CString::new(topic) else {
            return Err(queue);
        };
        // SAFETY: the client handle is valid while `consumer` lives; `topic` is a valid
        // NUL-terminated string for the call. The result is NULL or a new reference to the
        // partition's queue, which `Drop` releases exactly once.
        let native = unsafe {
            rdsys::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
            )
        };
        match NonNull::new(native) {
            Some(native) => Ok(Self {
                native,
                messages: Vec::with_capacity(MAX_RECORDS),
                behind: VecDeque::new(),
                record_bytes: 0,
                _queue: queue,
            }),
            None => Err(queue),
        }
    }
}

impl<C: ConsumerContext + 'static> Drop for BatchQueue<C> {
    fn drop(&mut self) {
        // SAFETY: `native` is our own reference, released once; the consumer is still
        // alive (`_queue` drops after this).
        unsafe { rdsys::rd_kafka_queue_destroy(self.native.as_ptr()) }
    }
}

impl<C: ConsumerContext + 'static> FetchQueue for BatchQueue<C> {
    fn fill(&mut self, batch: &mut RecordBatch, max_bytes: usize) -> Result<(), KafkaError> {
        if let Some(taken) = self.behind.pop_front() {
            return match taken {
                Taken::Records(records) => {
                    *batch = records;
                    Ok(())
                }
                Taken::Error(error) => Err(error),
            };
        }
        // A count within the byte budget: librdkafka's call takes a count, not bytes.
        let want = match self.record_bytes {
            0 => 1,
            bytes => (max_bytes / bytes).clamp(1, MAX_RECORDS),
        };
        // SAFETY: `messages` has room for `want` (≤ its capacity) pointers; a timeout of 0
        // does not block. librdkafka writes `taken` message pointers that the caller owns.
        let taken = unsafe {
            rdsys::rd_kafka_consume_batch_queue(
                self.native.as_ptr(),
                0,
                self.messages.as_mut_ptr(),
                want,
            )
        };
        if taken < 0 {
            // SAFETY: reads this thread's last librdkafka error; no pointer involved.
            let code = unsafe { rdsys::rd_kafka_last_error() };
            return Err(KafkaError::MessageConsumption(code.into()));
        }
        // SAFETY: librdkafka initialized the first `taken` (≤ `want`) elements.
        unsafe { self.messages.set_len(taken as usize) };
        let mut error = None;
        let mut messages = std::mem::take(&mut self.messages);
        for &message in &messages {
            // SAFETY: each pointer is a message librdkafka handed over; it is read, then
            // destroyed exactly once, and not used after.
            unsafe {
                let m = &*message;
                match message_error(m) {
                    Some(e) if error.is_none() => error = Some(e),
                    Some(e) => self.behind.push_back(Taken::Error(e)),
                    None if error.is_none() => copy_into(batch, m),
                    None => copy_into(self.segment_behind(), m),
                }
                rdsys::rd_kafka_message_destroy(message);
            }
        }
        messages.clear();
        self.messages = messages;
        if !batch.records.is_empty() {
            self.record_bytes = (batch.bytes / batch.records.len()).max(RECORD_OVERHEAD);
        }
        error.map_or(Ok(()), Err)
    }
}

impl<C: ConsumerContext + 'static> BatchQueue<C> {
    /// The records segment at the end of what waits behind an error.
    fn segment_behind(&mut self) -> &mut RecordBatch {
        if !matches!(self.behind.back(), Some(Taken::Records(_))) {
            self.behind
                .push_back(Taken::Records(RecordBatch::default()));
        }
        match self.behind.back_mut() {
            Some(Taken::Records(records)) => records,
            _ => unreachable!("a records segment was just pushed"),
        }
    }
}

/// The error a message stands for, as rdkafka reports it.
fn message_error(m: &rdsys::rd_kafka_message_t) -> Option<KafkaError> {
    if m.err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return None;
    }
    let code = RDKafkaErrorCode::from(m.err);
    Some(if code == RDKafkaErrorCode::PartitionEOF {
        KafkaError::PartitionEOF(m.partition)
    } else {
        KafkaError::MessageConsumption(code)
    })
}

/// Copies a record into `target`.
///
/// # Safety
/// `m` is a valid message librdkafka handed over and not destroyed yet.
unsafe fn copy_into(target: &mut RecordBatch, m: &rdsys::rd_kafka_message_t) {
    let bytes = |ptr: *mut std::ffi::c_void, len: usize| {
        (!ptr.is_null()).then(|| std::slice::from_raw_parts(ptr as *const u8, len))
    };
    let message = std::ptr::from_ref(m).cast_mut();
    let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
    let at = rdsys::rd_kafka_message_timestamp(message, &mut kind);
    let timestamp = (at != -1
        && kind != rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE)
        .then_some(at);
    let mut headers: *mut rdsys::rd_kafka_headers_t = std::ptr::null_mut();
    let has_headers = rdsys::rd_kafka_message_headers(message, &mut headers)
        == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        && !headers.is_null();
    let headers = has_headers.then_some(HeaderIter {
        headers,
        next: 0,
        _message: std::marker::PhantomData,
    });
    target.push_parts(
        m.offset,
        timestamp,
        bytes(m.key, m.key_len),
        bytes(m.payload, m.len),
        headers,
    );
}

/// The headers of a message, borrowed from it.
struct HeaderIter<'a> {
    headers: *mut rdsys::rd_kafka_headers_t,
    next: usize,
    _message: std::marker::PhantomData<&'a rdsys::rd_kafka_message_t>,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (String, Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0);
        // SAFETY: `headers` belongs to the message borrowed for 'a; librdkafka returns
        // pointers into it (a NUL-terminated name, a value of `size` bytes or NULL).
        unsafe {
            let err = rdsys::rd_kafka_header_get_all(
                self.headers,
                self.next,
                &mut name,
                &mut value,
                &mut size,
            );
            if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                return None;
            }
            self.next += 1;
            let name = CStr::from_ptr(name).to_string_lossy().into_owned();
            let value =
                (!value.is_null()).then(|| std::slice::from_raw_parts(value.cast::<u8>(), size));
            Some((name, value))
        }
    }
}
