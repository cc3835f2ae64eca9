//! Creating and verifying changelog topics.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::{changelog_topic, ChangelogError};
use crate::config::ConsumerConfig;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Partition count of `topic`, `None` when it does not exist.
///
/// Asks through a consumer-type client: a producer-type (admin) client's metadata request
/// allows auto-creation, and brokers with auto-creation on would create the topic with the
/// default partition count instead of answering "unknown".
pub(crate) fn partition_count(
    config: &ConsumerConfig,
    topic: &str,
) -> Result<Option<usize>, ChangelogError> {
    let admin_err = |source| ChangelogError::Admin {
        topic: topic.to_string(),
        source,
    };
    let client: BaseConsumer = config
        .admin()
        .set("allow.auto.create.topics", "false")
        .create()
        .map_err(admin_err)?;
    let metadata = client
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|source| ChangelogError::Admin {
            topic: topic.to_string(),
            source,
        })?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len()))
}

fn admin_client(
    config: &ConsumerConfig,
    topic: &str,
) -> Result<AdminClient<DefaultClientContext>, ChangelogError> {
    config
        .admin()
        .create()
        .map_err(|source| ChangelogError::Admin {
            topic: topic.to_string(),
            source,
        })
}

/// Partition count of the (single) source topic of a stateful consumer.
pub(crate) fn source_partition_count(config: &ConsumerConfig) -> Result<usize, ChangelogError> {
    let topic = &config.topics[0];
    partition_count(config, topic)?.ok_or_else(|| ChangelogError::SourceTopicMissing {
        topic: topic.clone(),
    })
}

/// Creates missing changelog topics (compacted, `partitions` partitions) and verifies the
/// partition count of existing ones: every store's at once, each metadata lookup on a
/// blocking thread (a consumer with several stores starts no slower than with one).
pub(crate) async fn ensure_changelogs(
    config: &ConsumerConfig,
    partitions: usize,
) -> Result<(), ChangelogError> {
    futures::future::try_join_all(
        config
            .stores
            .iter()
            .map(|store| ensure_changelog(config, store, partitions)),
    )
    .await?;
    Ok(())
}

/// [`partition_count`] off the async runtime's threads.
async fn partition_count_blocking(
    config: &ConsumerConfig,
    topic: &str,
) -> Result<Option<usize>, ChangelogError> {
    let (config, name) = (config.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || partition_count(&config, &name))
        .await
        .map_err(|_| ChangelogError::Admin {
            topic: topic.to_string(),
            source: KafkaError::AdminOpCreation("metadata lookup panicked".into()),
        })?
}

async fn ensure_changelog(
    config: &ConsumerConfig,
    store: &crate::state::StoreSpec,
    partitions: usize,
) -> Result<(), ChangelogError> {
    let topic = changelog_topic(&config.group_id, &store.name);
    tracing::debug!(%topic, "checking changelog topic");
    if partition_count_blocking(config, &topic).await?.is_none() {
        tracing::debug!(%topic, "creating changelog topic");
        let admin = admin_client(config, &topic)?;
        create(&admin, config, &topic, partitions, store.window_span()).await?;
    }
    // Verify what is there now, whoever created it.
    match partition_count_blocking(config, &topic).await? {
        Some(found) if found == partitions => Ok(()),
        Some(found) => Err(ChangelogError::PartitionMismatch {
            topic,
            expected: partitions,
            found,
        }),
        None => Err(ChangelogError::Admin {
            topic,
            source: KafkaError::AdminOp(RDKafkaErrorCode::UnknownTopicOrPartition),
        }),
    }
}

/// What a window store's changelog keeps beyond `size + grace` (Kafka Streams'
/// `windowstore.changelog.additional.retention.ms` default): a day.
const WINDOW_RETENTION_MARGIN_MS: i64 = 24 * 60 * 60 * 1000;

async fn create(
    admin: &AdminClient<DefaultClientContext>,
    config: &ConsumerConfig,
    topic: &str,
    partitions: usize,
    window_span: Option<i64>,
) -> Result<(), ChangelogError> {
    let replication = config.changelog_replication;
    let admin_err = |source| ChangelogError::Admin {
        topic: topic.to_string(),
        source,
    };
    let partitions = i32::try_from(partitions)
        .map_err(|_| admin_err(KafkaError::AdminOpCreation("too many partitions".into())))?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication))
        .set("cleanup.policy", "compact")
        // Compaction keeps only the latest record of a key. A zombie's void record can be
        // the latest of its key until the partition's owner rewrites it at its next flush:
        // an hour's lag keeps the valid record it shadows until then.
        .set("min.compaction.lag.ms", "3600000");
    // A window store's changelog also expires by time, as Kafka Streams' windowed changelogs
    // do: closed windows are never tombstoned (see `crate::window`), their records age out.
    let retention = window_span.map(|span| span.saturating_add(WINDOW_RETENTION_MARGIN_MS));
    let retention = retention.map(|ms| ms.to_string());
    let new_topic = match &retention {
        Some(ms) => new_topic
            .set("cleanup.policy", "compact,delete")
            .set("retention.ms", ms),
        None => new_topic,
    };
    let results = admin
        .create_topics(
            [&new_topic],
            &AdminOptions::new().request_timeout(Some(METADATA_TIMEOUT)),
        )
        .await
        .map_err(admin_err)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(admin_err(KafkaError::AdminOp(code))),
        }
    }
    tracing::info!(topic, partitions, "created changelog topic");
    // Metadata can lag the creation: wait until the topic is visible.
    let deadline = std::time::Instant::now() + METADATA_TIMEOUT;
    while partition_count_blocking(config, topic).await?.is_none() {
        if std::time::Instant::now() > deadline {
            return Err(admin_err(KafkaError::AdminOp(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
