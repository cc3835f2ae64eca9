//! [`ConsumerConfigBuilder`] setters for tables (co-partitioned and global) and their checks.

use std::time::Duration;

use super::ConsumerConfigBuilder;
use crate::config::{ConfigError, ConsumerConfig};

impl ConsumerConfigBuilder {
    /// Declares a co-partitioned table ([`crate::table`]): for each input partition `p`,
    /// partition `p` of `table`'s topic is kept locally, read before the partition's first
    /// record and then in timestamp order with its records. The table topic needs the input
    /// topics' partition count and partitioner. Needs a state directory.
    pub fn table<K: Send + 'static, V: Send + 'static>(
        mut self,
        table: &crate::table::TableDef<K, V>,
    ) -> Self {
        self.config.tables.push(table.spec(false));
        self
    }

    /// Declares a global table ([`crate::table`]): every partition of `table`'s topic is kept
    /// locally, read before any input partition is handled, and readable from every
    /// partition. Needs a state directory.
    pub fn global_table<K: Send + 'static, V: Send + 'static>(
        mut self,
        table: &crate::table::TableDef<K, V>,
    ) -> Self {
        self.config.tables.push(table.spec(true));
        self
    }

    /// How long an input record may wait for its co-partitioned tables to confirm that they
    /// hold every update their topics had at the record's timestamp (default 0: do not
    /// wait; updates fetched by then are applied, later ones after the record). With a wait,
    /// an update produced before an order is applied before the order even when the order
    /// was fetched first; live records then wait about one round trip to the broker. See
    /// [`crate::table`].
    pub fn table_sync_wait(mut self, wait: Duration) -> Self {
        self.config.table_sync_wait = wait;
        self
    }
}

/// Tables need a state dir, names that make a directory or column family name, distinct
/// names and topics, and topics that are not input topics.
pub(super) fn validate_tables(c: &ConsumerConfig) -> Result<(), ConfigError> {
    if c.state_dir.is_none() {
        return Err(ConfigError::Empty(
            "state_dir (required when tables are declared)",
        ));
    }
    let legal = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'))
    };
    for (i, table) in c.tables.iter().enumerate() {
        if !legal(&table.name) {
            return Err(ConfigError::Invalid {
                name: "table name",
                value: table.name.clone(),
                reason: "names a local directory: use only ASCII letters, digits, '.', '_' and '-'",
            });
        }
        if c.tables[..i].iter().any(|t| t.name == table.name) {
            return Err(ConfigError::DuplicateStore(table.name.clone()));
        }
        if c.tables[..i].iter().any(|t| t.topic == table.topic) {
            return Err(ConfigError::Invalid {
                name: "table topic",
                value: table.topic.clone(),
                reason:
                    "two tables read the same topic: declare it once and read it from both places",
            });
        }
        if table.global && table.history.is_some() {
            return Err(ConfigError::Invalid {
                name: "global table",
                value: table.name.clone(),
                reason: "is versioned: as-of reads need a table aligned with the input's time; \
                         declare it with `table` (co-partitioned) or drop `versioned`",
            });
        }
        if c.topics.contains(&table.topic) {
            return Err(ConfigError::Invalid {
                name: "table topic",
                value: table.topic.clone(),
                reason: "is also an input topic: a table is read by the library, not by the group",
            });
        }
    }
    Ok(())
}
