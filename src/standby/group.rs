//! What a member learns of its group from the broker, for placing standbys: the live
//! members (`DescribeGroups`) and who owns each partition — the writer of the last record
//! of the partition in the first store's changelog: every owner writes an epoch marker to
//! every store's changelog when it takes a partition, and flush markers afterwards, each
//! naming it (`ks.owner`). (Commit metadata would say the same, but not every broker returns
//! it: nisshi 0.8.1 answers an empty string.)
//!
//! A client of its own, outside the group (it never subscribes), so the poll loop's consumer
//! is never called from another thread. Blocking.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::placement::GroupView;
use crate::changelog::changelog_topic;
use crate::changelog::format::HEADER_OWNER;
use crate::config::ConsumerConfig;
use crate::offset::TopicPartition;

const TIMEOUT: Duration = Duration::from_secs(10);
/// How long the last changelog records are waited for.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// The group's members and owners, read from the broker.
pub(crate) struct GroupReader {
    client: BaseConsumer,
    group: String,
    /// The first store's changelog.
    changelog: String,
    /// Owners seen so far: a partition whose last record names nobody (a data record of a
    /// flush in progress) keeps the owner seen before.
    owners: BTreeMap<TopicPartition, String>,
}

impl GroupReader {
    pub(crate) fn new(config: &ConsumerConfig) -> Result<Self, KafkaError> {
        Ok(Self {
            client: config.group_reader().create()?,
            group: config.group_id.clone(),
            changelog: changelog_topic(&config.group_id, &config.stores[0].name),
            owners: BTreeMap::new(),
        })
    }

    /// The live members and the current owner of each of `partitions` (as far as known).
    pub(crate) fn view(&mut self, partitions: &[TopicPartition]) -> Result<GroupView, KafkaError> {
        let groups = self.client.fetch_group_list(Some(&self.group), TIMEOUT)?;
        let mut members: Vec<String> = groups
            .groups()
            .iter()
            .filter(|g| g.name() == self.group)
            .flat_map(|g| g.members())
            .map(|m| member_name(m.id()).to_string())
            .collect();
        members.sort();
        members.dedup();
        let found = self.owners(partitions)?;
        self.owners.extend(found);
        Ok(GroupView {
            members,
            owners: self.owners.clone(),
        })
    }

    /// The partition count of `topic` (`None`: it does not exist).
    pub(crate) fn partition_count(&self, topic: &str) -> Result<Option<i32>, KafkaError> {
        let metadata = self.client.fetch_metadata(Some(topic), TIMEOUT)?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .filter(|&n| n > 0))
    }

    /// The owner named on the last record of each partition's changelog.
    fn owners(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, String>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        let mut wanted = BTreeMap::new();
        for (topic, partition) in partitions {
            let (_, high) = self
                .client
                .fetch_watermarks(&self.changelog, *partition, TIMEOUT)?;
            if high > 0 {
                tpl.add_partition_offset(&self.changelog, *partition, Offset::Offset(high - 1))?;
                wanted.insert(*partition, topic.clone());
            }
        }
        let mut owners = BTreeMap::new();
        if wanted.is_empty() {
            return Ok(owners);
        }
        self.client.assign(&tpl)?;
        let deadline = Instant::now() + READ_TIMEOUT;
        while !wanted.is_empty() && Instant::now() < deadline {
            let Some(Ok(msg)) = self.client.poll(Duration::from_millis(100)) else {
                continue;
            };
            let Some(topic) = wanted.remove(&msg.partition()) else {
                continue;
            };
            let owner = msg.headers().and_then(|hs| {
                hs.iter()
                    .find(|h| h.key == HEADER_OWNER)
                    .and_then(|h| std::str::from_utf8(h.value?).ok().map(str::to_string))
            });
            if let Some(owner) = owner {
                owners.insert((topic, msg.partition()), owner);
            }
        }
        let _ = self.client.unassign();
        Ok(owners)
    }
}

/// A member's name from its member id: the broker makes ids `<client.id>-<uuid>` (Apache
/// Kafka) or `<group.instance.id>-<uuid>` (nisshi), and the group consumer's `client.id` is
/// its `group.instance.id`, so both give the instance id. (A `client.id` set by hand breaks
/// that on Apache Kafka: the member does not find itself and places no replicas.)
fn member_name(member_id: &str) -> &str {
    const UUID: usize = 36;
    match member_id.len().checked_sub(UUID + 1) {
        Some(cut)
            if member_id.as_bytes()[cut] == b'-'
                && member_id[cut + 1..]
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b'-') =>
        {
            &member_id[..cut]
        }
        _ => member_id,
    }
}

#[cfg(test)]
mod tests {
    use super::member_name;

    #[test]
    fn member_names_are_ids_without_their_uuid() {
        assert_eq!(
            member_name("job-1-0b6c3a62-8d5e-4c1e-9a51-7f1d2c3b4a5e"),
            "job-1"
        );
        assert_eq!(member_name("plain"), "plain");
        assert_eq!(member_name("x-not-a-uuid-at-all"), "x-not-a-uuid-at-all");
    }
}
