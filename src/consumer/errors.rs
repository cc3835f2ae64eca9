//! Which consumer errors end the consumer, and which librdkafka recovers from by itself.
//!
//! Like Kafka Streams, a consumer that cannot make progress without a change of
//! configuration fails fast with an error saying what to change, instead of logging the
//! same warning forever: a missing source topic (unless the configuration says to wait for
//! it), refused authorization, and `auto.offset.reset=error` without a valid committed
//! offset. Connection errors and the like are retried by librdkafka and only logged —
//! except a failed TLS handshake or SASL authentication, which a retry never heals.
//!
//! Errors on a partition's queue (from its worker) are judged the same way, with the
//! partition and the offset it is stuck at in the error: a batch librdkafka cannot
//! decompress or parse would be fetched again forever, a silent stall.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::subscription::Subscription;
use crate::config::{ConsumerConfig, MissingTopics};
use crate::error::Error;
use crate::observe::StatsInner;
use crate::partition::source::FetchError;

/// Partition errors logged so far, by partition and code: each is logged once (at warn),
/// its retries only counted.
pub(crate) type FetchErrorsSeen = HashSet<(String, i32, i32)>;

/// Judges an error from a partition's queue: `Err` ends the consumer with the partition
/// and offset named; anything else is counted (stats, metrics) and logged once.
pub(crate) fn classify_fetch_error<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    config: &ConsumerConfig,
    fetch: FetchError,
    (stats, seen): (&StatsInner, &mut FetchErrorsSeen),
) -> Result<(), Error> {
    let FetchError {
        partition: (topic, partition),
        error,
    } = fetch;
    stats.fetch_errors.fetch_add(1, Ordering::Relaxed);
    let Some(code) = error.rdkafka_error_code() else {
        tracing::warn!(topic, partition, %error, "partition error");
        return Ok(());
    };
    crate::observe::metrics::fetch_error(&topic, partition, &format!("{code:?}"));
    let offset = || position(consumer, &topic, partition);
    let unreadable = |reason: &str| Error::Fetch {
        topic: topic.clone(),
        partition,
        offset: offset(),
        code: format!("{code:?}"),
        reason: format!("{error}: {reason}"),
    };
    match code {
        RDKafkaErrorCode::NotImplemented | RDKafkaErrorCode::UnsupportedCompressionType => Err(
            unreadable("the batch's compression codec is not supported by this build"),
        ),
        RDKafkaErrorCode::BadMessage
        | RDKafkaErrorCode::BadCompression
        | RDKafkaErrorCode::InvalidMessage
        | RDKafkaErrorCode::InvalidMessageSize
        | RDKafkaErrorCode::InvalidRecord
        | RDKafkaErrorCode::UnsupportedForMessageFormat => {
            Err(unreadable("the batch is corrupt or cannot be parsed"))
        }
        RDKafkaErrorCode::AutoOffsetReset => Err(Error::NoValidOffset {
            reason: format!("{topic}[{partition}] at offset {}: {error}", offset()),
        }),
        RDKafkaErrorCode::TopicAuthorizationFailed => Err(Error::NotAuthorized {
            code: format!("{code:?}"),
            reason: format!("reading {topic}[{partition}]: {error}"),
        }),
        // A deleted topic: librdkafka says its partitions are gone, then that it is unknown.
        RDKafkaErrorCode::UnknownTopicOrPartition
        | RDKafkaErrorCode::UnknownTopic
        | RDKafkaErrorCode::UnknownPartition => classify_poll_error(
            consumer,
            config,
            KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition),
            None,
        ),
        _ => {
            if seen.insert((topic.clone(), partition, code as i32)) {
                tracing::warn!(topic, partition, %error, "partition error (retried by librdkafka; logged once)");
            } else {
                tracing::debug!(topic, partition, %error, "partition error");
            }
            Ok(())
        }
    }
}

/// The offset a partition is at (the next to read), -1 when librdkafka does not know.
fn position<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str, partition: i32) -> i64 {
    consumer
        .position()
        .ok()
        .and_then(|tpl| {
            tpl.find_partition(topic, partition)
                .and_then(|p| p.offset().to_raw())
        })
        .unwrap_or(-1)
}

/// `Ok` for errors librdkafka retries by itself (logged); `Err` for those that end the consumer.
///
/// `last_failure` is librdkafka's last logged connection failure, the only place that says
/// why a TLS handshake or an authentication failed.
pub(crate) fn classify_poll_error<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    config: &ConsumerConfig,
    error: KafkaError,
    last_failure: Option<String>,
) -> Result<(), Error> {
    let Some(code) = error.rdkafka_error_code() else {
        tracing::warn!(%error, "consumer error");
        return Ok(());
    };
    match code {
        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
            if config.missing_topics == MissingTopics::Fail =>
        {
            Err(Error::TopicMissing {
                topic: missing_topic(consumer, config),
            })
        }
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::GroupAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed => Err(Error::NotAuthorized {
            code: format!("{code:?}"),
            reason: error.to_string(),
        }),
        RDKafkaErrorCode::AutoOffsetReset => Err(Error::NoValidOffset {
            reason: error.to_string(),
        }),
        RDKafkaErrorCode::SSL
        | RDKafkaErrorCode::Authentication
        | RDKafkaErrorCode::SaslAuthenticationFailed => Err(Error::Connection {
            code: format!("{code:?}"),
            reason: last_failure.unwrap_or_else(|| error.to_string()),
        }),
        RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown => {
            // Already logged by librdkafka (through the client context's log).
            tracing::debug!(%error, "consumer error");
            Ok(())
        }
        _ => {
            tracing::warn!(%error, "consumer error");
            Ok(())
        }
    }
}

/// Names the subscribed topic the broker does not know, for the error message.
fn missing_topic<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    config: &ConsumerConfig,
) -> String {
    let Ok(subscription) = Subscription::new(&config.topics) else {
        return config.topics.join(",");
    };
    let missing = subscription
        .literal_topics()
        .find(|topic| {
            consumer
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .map(|md| {
                    md.topics().iter().all(|t| {
                        t.name() != *topic || t.error().is_some() || t.partitions().is_empty()
                    })
                })
                .unwrap_or(false)
        })
        .map(str::to_string)
        .unwrap_or_else(|| config.topics.join(","));
    missing
}

/// librdkafka's description of `code` (`rd_kafka_err2str`), as rdkafka shows it in
/// parentheses after the code's name.
fn describe(code: RDKafkaErrorCode) -> Option<String> {
    let shown = code.to_string();
    let (_, description) = shown.split_once(" (")?;
    Some(description.strip_suffix(')')?.to_string())
}

/// A partition error librdkafka only logs when a partition queue is read in batches.
///
/// `rd_kafka_consume_batch_queue` (see `partition::fetch`) returns a partition's fetch
/// errors as messages, but the errors librdkafka puts on the queue when the partition or
/// its topic stops existing (`rd_kafka_toppar_enq_error`) go to the error callback, which
/// rdkafka does not set, so librdkafka logs them (facility `ERROR`) as
/// `<client>: <topic> [<partition>]: <reason> (<error description>)`. rdkafka's per-record
/// poll returned them as error events. This reads them back from that log line, for the
/// error codes librdkafka uses there, so they are judged like any partition error.
pub(crate) fn partition_error_logged(log_message: &str) -> Option<FetchError> {
    let (_client, rest) = log_message.split_once(": ")?;
    let (topic, rest) = rest.split_once(" [")?;
    let (partition, rest) = rest.split_once("]: ")?;
    let partition: i32 = partition.parse().ok()?;
    let description = rest.strip_suffix(')')?.rsplit_once(" (")?.1;
    let code = [
        RDKafkaErrorCode::UnknownTopicOrPartition,
        RDKafkaErrorCode::UnknownPartition,
        RDKafkaErrorCode::UnknownTopic,
        RDKafkaErrorCode::TopicAuthorizationFailed,
    ]
    .into_iter()
    .find(|code| describe(*code).as_deref() == Some(description))?;
    Some(FetchError {
        partition: (topic.to_string(), partition),
        error: KafkaError::MessageConsumption(code),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_errors_librdkafka_only_logs_are_read_back() {
        let logged = |reason: &str, code: RDKafkaErrorCode| {
            let description = describe(code).unwrap();
            format!("codec-0#consumer-12: page-views [3]: {reason} ({description})")
        };
        assert_eq!(
            describe(RDKafkaErrorCode::UnknownTopicOrPartition).as_deref(),
            Some("Broker: Unknown topic or partition"),
            "as librdkafka logs it"
        );
        for (reason, code) in [
            (
                "topic does not exist",
                RDKafkaErrorCode::UnknownTopicOrPartition,
            ),
            (
                "desired partition is no longer available",
                RDKafkaErrorCode::UnknownPartition,
            ),
            (
                "desired partition is not available",
                RDKafkaErrorCode::TopicAuthorizationFailed,
            ),
        ] {
            let error = partition_error_logged(&logged(reason, code)).unwrap();
            assert_eq!(error.partition, ("page-views".to_string(), 3));
            assert_eq!(error.error.rdkafka_error_code(), Some(code));
        }
        let other = logged("fetch failed", RDKafkaErrorCode::BrokerTransportFailure);
        assert!(partition_error_logged(&other).is_none(), "only these codes");
        assert!(partition_error_logged("rdkafka#consumer-1: no partition here").is_none());
    }
    use crate::offset::TopicPartition;

    fn fetch_error(code: RDKafkaErrorCode) -> FetchError {
        let partition: TopicPartition = ("page-views".into(), 3);
        FetchError {
            partition,
            error: KafkaError::MessageConsumption(code),
        }
    }

    /// The zstd stall of issue 30: librdkafka reports every fetch of a batch it cannot
    /// decompress on the partition's queue, and the consumer used to log it and go on
    /// waiting. Such errors now end the consumer naming the partition; transient ones are
    /// counted every time and logged once.
    #[test]
    fn an_unreadable_batch_ends_the_consumer_and_a_transient_error_is_counted() {
        let config = ConsumerConfig::builder("127.0.0.1:1", "g", ["page-views"])
            .instance_id("i-0")
            .build()
            .unwrap();
        // Never connects: only its position (unknown here) is asked for.
        let consumer: BaseConsumer = config.admin().create().unwrap();
        let stats = StatsInner::default();
        let mut seen = FetchErrorsSeen::default();
        for code in [
            RDKafkaErrorCode::NotImplemented,
            RDKafkaErrorCode::BadCompression,
            RDKafkaErrorCode::BadMessage,
            RDKafkaErrorCode::InvalidRecord,
        ] {
            let err =
                classify_fetch_error(&consumer, &config, fetch_error(code), (&stats, &mut seen))
                    .unwrap_err();
            assert!(
                matches!(&err, Error::Fetch { topic, partition: 3, offset: -1, .. } if topic == "page-views"),
                "{err}"
            );
            assert!(err.to_string().contains("page-views[3]"), "{err}");
        }
        for _ in 0..3 {
            let transient = fetch_error(RDKafkaErrorCode::RequestTimedOut);
            classify_fetch_error(&consumer, &config, transient, (&stats, &mut seen)).unwrap();
        }
        assert_eq!(seen.len(), 1, "logged once");
        assert_eq!(stats.fetch_errors.load(Ordering::Relaxed), 7);
    }
}
