//! What a member learns of its group from the broker, for placing standbys: the live
//! members (`DescribeGroups`) and who last committed each partition (the commit metadata
//! every member writes, see [`owner_metadata`]).
//!
//! A client of its own, outside the group (it never subscribes), so the poll loop's consumer
//! is never called from another thread. Blocking.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::placement::GroupView;
use crate::config::ConsumerConfig;
use crate::offset::TopicPartition;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The metadata a member commits with its offsets: `owner=<group.instance.id>`.
pub(crate) fn owner_metadata(instance_id: &str) -> String {
    format!("owner={instance_id}")
}

/// The group's members and owners, read from the broker.
pub(crate) struct GroupReader {
    client: BaseConsumer,
    group: String,
}

impl GroupReader {
    pub(crate) fn new(config: &ConsumerConfig) -> Result<Self, KafkaError> {
        Ok(Self {
            client: config.group_reader().create()?,
            group: config.group_id.clone(),
        })
    }

    /// The live members and the last owner of each of `partitions`.
    pub(crate) fn view(&self, partitions: &[TopicPartition]) -> Result<GroupView, KafkaError> {
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
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in partitions {
            tpl.add_partition(topic, *partition);
        }
        let committed = self.client.committed_offsets(tpl, TIMEOUT)?;
        let owners = committed
            .elements()
            .iter()
            .filter(|e| matches!(e.offset(), Offset::Offset(_)))
            .filter_map(|e| {
                let owner = e.metadata().strip_prefix("owner=")?;
                Some(((e.topic().to_string(), e.partition()), owner.to_string()))
            })
            .collect::<BTreeMap<_, _>>();
        Ok(GroupView { members, owners })
    }
}

/// A member's name from its member id: the broker makes ids `<client.id>-<uuid>` (Apache
/// Kafka) or `<group.instance.id>-<uuid>` (nisshi), and the group consumer's `client.id` is
/// its `group.instance.id`, so both give the instance id.
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
