//! The changelog record format (version 2): how stamps, flush markers and epoch markers are
//! written into Kafka records, and read back.
//!
//! Every record carries one header `ks` = `2.<epoch>.<seq>` (format version, writer's epoch,
//! flush sequence number). A record without it, or with another version, is refused with a
//! clear error instead of being misread.
//!
//! | record | key | value | more headers |
//! |---|---|---|---|
//! | data | the store key | the value, none for a delete | — |
//! | flush marker | [`FLUSH_KEY`] | none | `ks.source-offset`, `ks.source-ts`, `ks.stream-time`, `ks.touched`, `ks.source-done` |
//! | epoch marker | [`EPOCH_KEY`] | none | `ks.source-offset`, `ks.source-ts`, `ks.stream-time`, `ks.source-done` |
//!
//! `ks.source-offset` is the next source offset the state reflects, `ks.source-ts` the
//! timestamp of the source record before it (a fingerprint of the source topic),
//! `ks.stream-time` the partition's stream time there, and `ks.source-done` (only when not
//! empty; `a-b,c-d`: offset ranges `[a, b)`) the records after `ks.source-offset` that the
//! state reflects too (key-level concurrency completes records out of order).
//!
//! Marker keys start with a NUL byte and name the crate, so a store key would have to be
//! exactly these bytes to collide; compaction keeps the latest marker of each kind.

use rdkafka::message::{BorrowedMessage, Headers, Message};

use super::ChangelogError;
use crate::state::checkpoint::{DoneSet, SourcePosition};
use crate::state::replay::{Entry, Stamp};

/// The format version this crate writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 2;
pub(crate) const FLUSH_KEY: &[u8] = b"\0kafka-stateful/flush";
pub(crate) const EPOCH_KEY: &[u8] = b"\0kafka-stateful/epoch";
pub(crate) const HEADER_STAMP: &str = "ks";
pub(crate) const HEADER_SOURCE_OFFSET: &str = "ks.source-offset";
pub(crate) const HEADER_SOURCE_TIMESTAMP: &str = "ks.source-ts";
pub(crate) const HEADER_STREAM_TIME: &str = "ks.stream-time";
pub(crate) const HEADER_TOUCHED: &str = "ks.touched";
pub(crate) const HEADER_SOURCE_DONE: &str = "ks.source-done";
/// On epoch and flush markers: the writer's `group.instance.id` (static members), so any
/// member can tell who owns a partition from its changelog's last record (standby
/// placement); ignored by replay.
pub(crate) const HEADER_OWNER: &str = "ks.owner";

/// The `ks` header value of `stamp`.
pub(crate) fn stamp_header(stamp: Stamp) -> Vec<u8> {
    format!("{FORMAT_VERSION}.{}.{}", stamp.epoch, stamp.seq).into_bytes()
}

/// A record to produce: key, value and headers.
pub(crate) type Encoded = (Vec<u8>, Option<Vec<u8>>, Vec<(&'static str, Vec<u8>)>);

/// The Kafka record of a changelog entry.
pub(crate) fn encode(stamp: Stamp, entry: &Entry) -> Encoded {
    let mut headers = vec![(HEADER_STAMP, stamp_header(stamp))];
    match entry {
        Entry::Data { key, value } => (key.clone(), value.clone(), headers),
        Entry::Flush { source, touched } => {
            push_source(&mut headers, source);
            headers.push((HEADER_TOUCHED, touched.join(",").into_bytes()));
            (FLUSH_KEY.to_vec(), None, headers)
        }
        Entry::Epoch { source } => {
            push_source(&mut headers, source);
            (EPOCH_KEY.to_vec(), None, headers)
        }
    }
}

fn push_source(headers: &mut Vec<(&'static str, Vec<u8>)>, source: &SourcePosition) {
    headers.push((HEADER_SOURCE_OFFSET, source.next.to_string().into_bytes()));
    headers.push((
        HEADER_SOURCE_TIMESTAMP,
        source.last_timestamp.to_string().into_bytes(),
    ));
    headers.push((
        HEADER_STREAM_TIME,
        source.stream_time.to_string().into_bytes(),
    ));
    if !source.done.is_empty() {
        headers.push((HEADER_SOURCE_DONE, source.done.to_text().into_bytes()));
    }
}

fn header<'a>(msg: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a [u8]> {
    msg.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
}

fn text<'a>(msg: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    header(msg, name).and_then(|v| std::str::from_utf8(v).ok())
}

/// Parses `2.<epoch>.<seq>`.
pub(crate) fn parse_stamp(value: &[u8]) -> Result<Stamp, String> {
    let text = std::str::from_utf8(value).map_err(|_| "ks header is not text".to_string())?;
    let mut parts = text.split('.');
    let version: u32 = parts
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("ks header {text:?} has no format version"))?;
    if version != FORMAT_VERSION {
        return Err(format!(
            "changelog format version {version} is not supported by this version of \
             kafka-stateful (it reads version {FORMAT_VERSION})"
        ));
    }
    let mut number = |what| {
        parts
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("ks header {text:?} lacks a valid {what}"))
    };
    Ok(Stamp {
        epoch: number("epoch")?,
        seq: number("sequence number")?,
    })
}

/// Reads a changelog record back.
///
/// # Errors
/// [`ChangelogError::Malformed`] for a record without a key or a valid `ks` header, or of
/// another format version.
pub(crate) fn decode(msg: &BorrowedMessage<'_>) -> Result<(Stamp, Entry), ChangelogError> {
    let bad = |reason: String| ChangelogError::Malformed {
        topic: msg.topic().to_string(),
        partition: msg.partition(),
        offset: msg.offset(),
        reason,
    };
    let stamp = header(msg, HEADER_STAMP)
        .ok_or_else(|| {
            bad("no ks header: not written by kafka-stateful 0.2 or later (delete the changelog topic and local state to rebuild)".into())
        })
        .and_then(|v| parse_stamp(v).map_err(bad))?;
    let source = || -> Result<SourcePosition, ChangelogError> {
        Ok(SourcePosition {
            next: text(msg, HEADER_SOURCE_OFFSET)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("marker without a valid ks.source-offset header".into()))?,
            last_timestamp: text(msg, HEADER_SOURCE_TIMESTAMP)
                .and_then(|v| v.parse().ok())
                .unwrap_or(-1),
            stream_time: text(msg, HEADER_STREAM_TIME)
                .and_then(|v| v.parse().ok())
                .unwrap_or(-1),
            done: match text(msg, HEADER_SOURCE_DONE) {
                None => DoneSet::EMPTY,
                Some(v) => DoneSet::parse(v)
                    .ok_or_else(|| bad(format!("marker with a malformed ks.source-done {v:?}")))?,
            },
        })
    };
    let entry = match msg.key() {
        None => return Err(bad("record without a key".into())),
        Some(FLUSH_KEY) => Entry::Flush {
            source: source()?,
            touched: text(msg, HEADER_TOUCHED)
                .unwrap_or("")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        },
        Some(EPOCH_KEY) => Entry::Epoch { source: source()? },
        Some(key) => Entry::Data {
            key: key.to_vec(),
            value: msg.payload().map(<[u8]>::to_vec),
        },
    };
    Ok((stamp, entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_other_versions_are_refused() {
        let stamp = Stamp {
            epoch: 7,
            seq: 1234,
        };
        assert_eq!(stamp_header(stamp), b"2.7.1234");
        assert_eq!(parse_stamp(b"2.7.1234"), Ok(stamp));
        let err = parse_stamp(b"3.7.1234").unwrap_err();
        assert!(err.contains("version 3 is not supported"), "{err}");
        assert!(parse_stamp(b"2.x.1").is_err());
        assert!(parse_stamp(b"2.1").is_err());
    }

    #[test]
    fn markers_get_their_keys_and_headers() {
        let stamp = Stamp { epoch: 1, seq: 2 };
        let (key, value, headers) = encode(
            stamp,
            &Entry::Flush {
                source: SourcePosition {
                    next: 40,
                    last_timestamp: 7,
                    stream_time: 9,
                    done: DoneSet::from_ranges(vec![(42, 44), (50, 51)]),
                },
                touched: vec!["a".into(), "b".into()],
            },
        );
        assert_eq!(key, FLUSH_KEY);
        assert_eq!(value, None);
        assert!(headers.contains(&(HEADER_TOUCHED, b"a,b".to_vec())));
        assert!(headers.contains(&(HEADER_SOURCE_OFFSET, b"40".to_vec())));
        assert!(headers.contains(&(HEADER_SOURCE_DONE, b"42-44,50-51".to_vec())));
        let (key, _, _) = encode(
            stamp,
            &Entry::Epoch {
                source: SourcePosition::NONE,
            },
        );
        assert_eq!(key, EPOCH_KEY);
    }
}
