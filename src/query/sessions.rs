//! Session windows read from outside the handler.

use super::{codec_err, QueryError, StateQuery};
use crate::codec::CodecError;
use crate::window::{SessionDef, Window};

impl StateQuery {
    /// `key`'s sessions in `sessions` as flushed — `(session, aggregate)`, earliest first —
    /// in the partition of the input topic that `key` is produced to (the session store
    /// keyed like the topic). A closed session is gone once the flush after its close
    /// landed.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn sessions_of<K: Send + 'static, V: Send + 'static>(
        &self,
        sessions: &SessionDef<K, V>,
        key: &K,
    ) -> Result<Vec<(Window, V)>, QueryError> {
        let name = sessions.name();
        self.store_index(name)?;
        let encoded = sessions.query_key(key).map_err(codec_err(name))?;
        let (topic, partition) = self.locate(&encoded).await?;
        self.sessions(sessions, (&topic, partition), key).await
    }

    /// `key`'s sessions in `sessions` as flushed, from `(topic, partition)`: `(session,
    /// aggregate)`, earliest first.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn sessions<K: Send + 'static, V: Send + 'static>(
        &self,
        sessions: &SessionDef<K, V>,
        (topic, partition): (&str, i32),
        key: &K,
    ) -> Result<Vec<(Window, V)>, QueryError> {
        let name = sessions.name();
        let encoded = sessions.query_key(key).map_err(codec_err(name))?;
        let prefix = SessionDef::<K, V>::query_prefix(&encoded);
        let found = self
            .read_store(name, (topic, partition), |db, index| {
                db.prefix(index, &prefix)
            })
            .await?;
        found
            .into_iter()
            .map(|(k, v)| {
                let (session, _, value) = sessions.decode_entry(&k, &v)?;
                Ok((session, value))
            })
            .collect::<Result<_, CodecError>>()
            .map_err(codec_err(name))
    }
}
