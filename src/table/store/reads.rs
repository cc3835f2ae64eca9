//! What a handler reads tables through: its partition's co-partitioned tables and the
//! global ones.

use std::sync::Arc;

use super::super::TableError;
use super::{AsOf, TableStore};
use crate::state::KeyValues;

/// The tables a handler can read: its input partition's co-partitioned tables and the
/// global ones. Shared with the worker that applies the co-partitioned ones.
#[derive(Debug, Clone, Default)]
pub(crate) struct TableReads {
    pub(crate) partition: Option<Arc<TableStore>>,
    pub(crate) global: Vec<(String, Arc<TableStore>)>,
}

/// One table of a [`TableReads`].
pub(crate) struct TableRef<'a> {
    store: &'a TableStore,
    index: usize,
}

impl TableReads {
    pub(crate) fn find(&self, name: &str) -> Option<TableRef<'_>> {
        if let Some(store) = &self.partition {
            if let Some(index) = store.tables.iter().position(|t| t.name == name) {
                return Some(TableRef { store, index });
            }
        }
        self.global
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, store)| TableRef { store, index: 0 })
    }
}

impl TableRef<'_> {
    pub(crate) fn get_with<T>(
        &self,
        key: &[u8],
        f: impl FnOnce(&[u8]) -> T,
    ) -> Result<Option<T>, TableError> {
        Ok(self.store.get_with(self.index, key, f)?)
    }

    pub(crate) fn as_of_with<T>(
        &self,
        key: &[u8],
        time: i64,
        f: impl Fn(&[u8]) -> T,
    ) -> Result<AsOf<T>, TableError> {
        Ok(self.store.as_of_with(self.index, key, time, f)?)
    }

    pub(crate) fn prefix(&self, prefix: &[u8]) -> Result<KeyValues, TableError> {
        Ok(self.store.prefix(self.index, prefix)?)
    }
}
