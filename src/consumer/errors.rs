//! Which consumer errors end the consumer, and which librdkafka recovers from by itself.
//!
//! Like Kafka Streams, a consumer that cannot make progress without a change of
//! configuration fails fast with an error saying what to change, instead of logging the
//! same warning forever: a missing source topic (unless the configuration says to wait for
//! it), refused authorization, and `auto.offset.reset=error` without a valid committed
//! offset. Connection errors and the like are retried by librdkafka and only logged.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::subscription::Subscription;
use crate::config::{ConsumerConfig, MissingTopics};
use crate::error::Error;

/// `Ok` for errors librdkafka retries by itself (logged); `Err` for those that end the consumer.
pub(crate) fn classify_poll_error<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    config: &ConsumerConfig,
    error: KafkaError,
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
