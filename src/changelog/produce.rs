//! One record handed to librdkafka through a topic handle kept per topic.
//!
//! rdkafka's `BaseProducer::send` names the topic of every record: it copies the name into
//! a new C string, and librdkafka looks the topic up by name under the client's write lock
//! (`rd_kafka_topic_new0`). A flush hands hundreds of thousands of records to a few
//! changelog topics, each with the same stamp header, which the caller had to copy into a
//! fresh `OwnedHeaders` per record. [`HandleProducer`] keeps one librdkafka topic handle per
//! topic name, and [`HandleProducer::produce`] gives it to `rd_kafka_produceva` (`RD_KAFKA_VTYPE_RKT`: a
//! reference count instead of a lookup), with the headers built straight from borrowed
//! bytes into librdkafka's own list.

#![allow(unsafe_code)] // audited: each block says why it is sound

use std::ffi::{c_char, c_void, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use rdkafka::bindings as rdsys;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::IntoOpaque;

/// A record's headers, borrowed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Headers<'a> {
    /// One header: a changelog data record's stamp, shared by every record of its flush.
    One(&'a str, &'a [u8]),
    /// Any number (changelog markers, output and dead-letter records).
    List(&'a [(String, Vec<u8>)]),
}

impl Headers<'_> {
    fn count(&self) -> usize {
        match self {
            Self::One(..) => 1,
            Self::List(hs) => hs.len(),
        }
    }

    fn for_each(&self, mut f: impl FnMut(&str, &[u8])) {
        match self {
            Self::One(name, value) => f(name, value),
            Self::List(hs) => hs.iter().for_each(|(n, v)| f(n, v)),
        }
    }
}

/// One record to produce, borrowed.
pub(crate) struct OutRef<'a> {
    pub(crate) topic: &'a str,
    /// `-1`: the producer's partitioner decides.
    pub(crate) partition: i32,
    pub(crate) key: Option<&'a [u8]>,
    /// `None` is a tombstone.
    pub(crate) value: Option<&'a [u8]>,
    pub(crate) headers: Headers<'a>,
}

/// A librdkafka topic handle (`rd_kafka_topic_t`), and the client that made it.
#[derive(Debug)]
struct TopicHandle {
    topic: NonNull<rdsys::rd_kafka_topic_t>,
    client: *mut rdsys::rd_kafka_t,
}

// SAFETY: librdkafka's topic handles may be used and released from any thread.
unsafe impl Send for TopicHandle {}
// SAFETY: as above; librdkafka synchronises what a handle refers to.
unsafe impl Sync for TopicHandle {}

/// A topic handle lent by its [`HandleProducer`]: it cannot outlive the producer, so the
/// handle is always released before the client.
#[derive(Debug, Clone)]
pub(crate) struct TopicRef<'p> {
    handle: Arc<TopicHandle>,
    _producer: PhantomData<&'p ()>,
}

impl Drop for TopicHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from `rd_kafka_topic_new` and is released once, here.
        // Handles live in a `HandleProducer`, which releases them before its client.
        unsafe { rdsys::rd_kafka_topic_destroy(self.topic.as_ptr()) }
    }
}

/// A producer, and its topic handles by name, made on first use and kept while the
/// producer lives (a consumer produces to its changelog, output and dead-letter topics: a
/// few). The handles are declared first: they are released before the client.
pub(crate) struct HandleProducer<C: ProducerContext + 'static> {
    handles: Mutex<Vec<(String, Arc<TopicHandle>)>>,
    producer: ThreadedProducer<C>,
}

impl<C: ProducerContext + 'static> HandleProducer<C> {
    pub(crate) fn new(producer: ThreadedProducer<C>) -> Self {
        Self {
            handles: Mutex::default(),
            producer,
        }
    }

    pub(crate) fn producer(&self) -> &ThreadedProducer<C> {
        &self.producer
    }

    /// The handle of `topic`.
    ///
    /// # Errors
    /// When librdkafka refuses the name (too long, or with a NUL byte).
    pub(crate) fn topic(&self, topic: &str) -> Result<TopicRef<'_>, KafkaError> {
        let lend = |handle: &Arc<TopicHandle>| TopicRef {
            handle: handle.clone(),
            _producer: PhantomData,
        };
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, handle)) = handles.iter().find(|(name, _)| name == topic) {
            return Ok(lend(handle));
        }
        let name = CString::new(topic)?;
        let client = self.producer.client().native_ptr();
        // SAFETY: `client` is live while `self` is; a null configuration takes the client's
        // default topic configuration.
        let made =
            unsafe { rdsys::rd_kafka_topic_new(client, name.as_ptr(), std::ptr::null_mut()) };
        let Some(made) = NonNull::new(made) else {
            // SAFETY: reads the calling thread's last librdkafka error, set by the call above.
            let code = unsafe { rdsys::rd_kafka_last_error() };
            return Err(KafkaError::MessageProduction(RDKafkaErrorCode::from(code)));
        };
        let handle = Arc::new(TopicHandle {
            topic: made,
            client,
        });
        handles.push((topic.to_string(), handle.clone()));
        Ok(lend(&handle))
    }

    /// Hands `record` to librdkafka through `topic`, the handle of `record.topic` (copied:
    /// nothing is borrowed past the call), created at `created_ms` (milliseconds since the
    /// epoch; one clock read per send call instead of librdkafka's per record); `opaque`
    /// comes back in its delivery report, as with rdkafka's `send`.
    ///
    /// # Errors
    /// librdkafka's refusal (a full local queue among them), with `opaque` given back.
    pub(crate) fn produce(
        &self,
        topic: &TopicRef<'_>,
        record: &OutRef<'_>,
        created_ms: i64,
        opaque: C::DeliveryOpaque,
    ) -> Result<(), (KafkaError, C::DeliveryOpaque)> {
        let topic = &topic.handle;
        let client = self.producer.client().native_ptr();
        if topic.client != client {
            return Err((
                KafkaError::MessageProduction(RDKafkaErrorCode::InvalidArgument),
                opaque,
            ));
        }
        // SAFETY: `client` is live and made `topic` (checked above); rdkafka's delivery
        // callback of a `ThreadedProducer<C>` turns the opaque pointer back into a
        // `C::DeliveryOpaque`.
        unsafe { produce(client, topic, record, created_ms, opaque) }
    }
}

/// A byte slice as librdkafka's (pointer, size); null for none.
fn mem(bytes: Option<&[u8]>) -> rdsys::rd_kafka_vu_s__bindgen_ty_1 {
    let (ptr, size) = bytes.map_or((std::ptr::null_mut(), 0), |b| {
        (b.as_ptr().cast_mut().cast::<c_void>(), b.len())
    });
    rdsys::rd_kafka_vu_s__bindgen_ty_1 {
        mem: rdsys::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 { ptr, size },
    }
}

fn vu(
    vtype: rdsys::rd_kafka_vtype_t,
    u: rdsys::rd_kafka_vu_s__bindgen_ty_1,
) -> rdsys::rd_kafka_vu_t {
    rdsys::rd_kafka_vu_t { vtype, u }
}

/// Hands `record` to librdkafka for `topic` (copied: nothing is borrowed past the call),
/// with `created_ms` as its timestamp; `opaque` comes back in its delivery report, as with rdkafka's `send`.
///
/// # Errors
/// librdkafka's refusal (a full local queue among them), with `opaque` given back.
///
/// # Safety
/// `client` is the live `rd_kafka_t` that made `topic`, of a producer whose delivery
/// reports turn their opaque pointer back into an `O` (rdkafka's `ProducerContext` with
/// `DeliveryOpaque = O`).
unsafe fn produce<O: IntoOpaque>(
    client: *mut rdsys::rd_kafka_t,
    topic: &TopicHandle,
    record: &OutRef<'_>,
    created_ms: i64,
    opaque: O,
) -> Result<(), (KafkaError, O)> {
    use rdsys::rd_kafka_vtype_t::*;
    let headers = match record.headers.count() {
        0 => None,
        n => {
            // SAFETY: a new list, owned here until librdkafka takes it.
            let list = unsafe { rdsys::rd_kafka_headers_new(n) };
            record.headers.for_each(|name, value| {
                // SAFETY: `list` is live; the name and value are copied by the call, with
                // their sizes given (no terminating NUL needed).
                unsafe {
                    rdsys::rd_kafka_header_add(
                        list,
                        name.as_ptr().cast::<c_char>(),
                        name.len() as isize,
                        value.as_ptr().cast::<c_void>(),
                        value.len() as isize,
                    );
                }
            });
            Some(list)
        }
    };
    let opaque_ptr = opaque.into_ptr();
    let args = [
        vu(
            RD_KAFKA_VTYPE_RKT,
            rdsys::rd_kafka_vu_s__bindgen_ty_1 {
                rkt: topic.topic.as_ptr(),
            },
        ),
        vu(
            RD_KAFKA_VTYPE_PARTITION,
            rdsys::rd_kafka_vu_s__bindgen_ty_1 {
                i32_: record.partition,
            },
        ),
        vu(
            RD_KAFKA_VTYPE_MSGFLAGS,
            rdsys::rd_kafka_vu_s__bindgen_ty_1 {
                i: rdsys::RD_KAFKA_MSG_F_COPY,
            },
        ),
        vu(
            RD_KAFKA_VTYPE_TIMESTAMP,
            rdsys::rd_kafka_vu_s__bindgen_ty_1 { i64_: created_ms },
        ),
        vu(RD_KAFKA_VTYPE_VALUE, mem(record.value)),
        vu(RD_KAFKA_VTYPE_KEY, mem(record.key)),
        vu(
            RD_KAFKA_VTYPE_OPAQUE,
            rdsys::rd_kafka_vu_s__bindgen_ty_1 { ptr: opaque_ptr },
        ),
        vu(
            RD_KAFKA_VTYPE_HEADERS,
            rdsys::rd_kafka_vu_s__bindgen_ty_1 {
                headers: headers.unwrap_or(std::ptr::null_mut()),
            },
        ),
    ];
    let count = if headers.is_some() {
        args.len()
    } else {
        args.len() - 1
    };
    // SAFETY: `client` is live and made `topic` (the caller's contract); every pointer in
    // `args` is valid for the call, and librdkafka copies the key and value (F_COPY).
    let error = unsafe { rdsys::rd_kafka_produceva(client, args.as_ptr(), count) };
    if error.is_null() {
        // librdkafka owns the headers list now, and gives the opaque pointer back in the
        // delivery report.
        return Ok(());
    }
    // SAFETY: `error` is the error object librdkafka returned, read and released once.
    let code = unsafe {
        let code = rdsys::rd_kafka_error_code(error);
        rdsys::rd_kafka_error_destroy(error);
        code
    };
    if let Some(list) = headers {
        // SAFETY: a failed call leaves the headers list with the caller.
        unsafe { rdsys::rd_kafka_headers_destroy(list) };
    }
    // SAFETY: a failed call leaves the opaque pointer unused; it came from `into_ptr` above.
    let opaque = unsafe { O::from_ptr(opaque_ptr) };
    Err((
        KafkaError::MessageProduction(RDKafkaErrorCode::from(code)),
        opaque,
    ))
}
