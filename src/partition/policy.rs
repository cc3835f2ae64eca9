//! What happens to a record that failed: decode errors, handler errors and panics, after the
//! retries the [`RetryPolicy`](crate::RetryPolicy) allows.

use std::any::Any;

use crate::batch::{RawRecord, RecordBatch};
use crate::changelog::OutRecord;
use crate::codec::CodecError;
use crate::error::Error;
use crate::handler::HandlerError;

/// A failed record, before the policy decides.
pub(crate) enum Failure {
    Decode(CodecError),
    Handler(HandlerError),
    /// The handler or a codec panicked. Not retried: a panic is a bug, not a transient error.
    Panic(String),
    /// An output record of the record was not acknowledged.
    Output(crate::changelog::ChangelogError),
    /// The record was late for every window it falls in (not an error: dead-lettered by the
    /// late policy).
    Late,
}

impl Failure {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Failure::Decode(_) => "decode",
            Failure::Handler(_) => "handler",
            Failure::Panic(_) => "panic",
            Failure::Output(_) => "output",
            Failure::Late => "late",
        }
    }

    pub(crate) fn message(&self) -> String {
        match self {
            Failure::Decode(e) => e.to_string(),
            Failure::Handler(e) => e.to_string(),
            Failure::Panic(m) => m.clone(),
            Failure::Output(e) => e.to_string(),
            Failure::Late => "later than its windows' end plus grace".to_string(),
        }
    }

    /// The error `run()` returns under `ErrorPolicy::Fail`, naming the record by its offset
    /// and key.
    pub(crate) fn into_error(
        self,
        topic: String,
        partition: i32,
        (offset, key): (i64, Option<&[u8]>),
    ) -> Error {
        let key = crate::error::shown_key(key);
        match self {
            Failure::Decode(source) => Error::Decode {
                topic,
                partition,
                offset,
                key,
                source,
            },
            Failure::Handler(source) => Error::Handler {
                topic,
                partition,
                offset,
                key,
                source,
            },
            Failure::Panic(message) => Error::Panicked {
                topic,
                partition,
                offset,
                key,
                message,
            },
            Failure::Output(source) => Error::Output {
                topic,
                partition,
                offset,
                key,
                source: Box::new(source),
            },
            Failure::Late => Error::Handler {
                topic,
                partition,
                offset,
                key,
                source: "late record".into(),
            },
        }
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-text payload".to_string())
}

/// The raw record with `ks.error.*` headers, for the dead-letter topic.
pub(crate) fn dead_letter(
    dead_letter_topic: &str,
    topic: &str,
    partition: i32,
    batch: &RecordBatch,
    raw: &RawRecord,
    failure: &Failure,
) -> OutRecord {
    batch.dead_letter(
        raw,
        dead_letter_topic,
        (topic, partition),
        failure.kind(),
        &failure.message(),
    )
}
