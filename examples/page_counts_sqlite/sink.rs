//! A batch sink: per-page view counts in SQLite, each batch written in one SQLite
//! transaction together with its partition's next offset ("offsets with the data"), so the
//! counts are exact across crashes without Kafka transactions. Shared by the example and by
//! `tests/batch_sqlite.rs`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kafka_stateful::{fatal, Handler, HandlerError, PartitionContext, Record};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// Page views keyed by page; counts them per page into SQLite.
#[derive(Clone)]
pub struct PageCounts {
    db: Arc<Mutex<Connection>>,
    /// Batches written.
    pub batches: Arc<AtomicU64>,
    /// Views written.
    pub rows: Arc<AtomicU64>,
}

impl PageCounts {
    /// Opens (creating if needed) the database at `path`.
    ///
    /// # Errors
    /// SQLite's.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        // WAL: readers (the test, a dashboard) do not block the writer. FULL: a committed
        // batch survives a power loss too, not only a killed process.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS page_views (page TEXT PRIMARY KEY, views INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS kafka_offsets (
                 topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
                 PRIMARY KEY (topic, partition));",
        )?;
        Ok(Self {
            db: Arc::new(Mutex::new(conn)),
            batches: Arc::default(),
            rows: Arc::default(),
        })
    }

    /// Views per page in the database at `path`.
    ///
    /// # Errors
    /// SQLite's.
    pub fn counts(path: &Path) -> rusqlite::Result<HashMap<String, u64>> {
        let conn = Connection::open(path)?;
        let mut query = conn.prepare("SELECT page, views FROM page_views")?;
        let rows = query.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.collect()
    }

    /// The next offset stored per partition of `topic` in the database at `path`.
    ///
    /// # Errors
    /// SQLite's.
    pub fn offsets(path: &Path, topic: &str) -> rusqlite::Result<BTreeMap<i32, i64>> {
        let conn = Connection::open(path)?;
        let mut query =
            conn.prepare("SELECT partition, next_offset FROM kafka_offsets WHERE topic = ?1")?;
        let rows = query.query_map([topic], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.collect()
    }

    /// Adds `views` per page and moves the partition's stored offset to `next`, in one
    /// transaction; refuses (fatal) when the stored offset is already past `first`: another
    /// writer — a member that lost the partition and did not notice — wrote these records.
    fn write(
        conn: &mut Connection,
        (topic, partition): (&str, i32),
        (first, next): (i64, i64),
        views: &HashMap<String, u64>,
    ) -> Result<(), HandlerError> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stored: Option<i64> = tx
            .query_row(
                "SELECT next_offset FROM kafka_offsets WHERE topic = ?1 AND partition = ?2",
                params![topic, partition],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(stored) = stored.filter(|&s| s > first) {
            return Err(fatal(format!(
                "{topic}/{partition}: offset {stored} is already stored, past this batch's first record {first}: another member wrote these records"
            )));
        }
        {
            let mut add = tx.prepare_cached(
                "INSERT INTO page_views (page, views) VALUES (?1, ?2)
                 ON CONFLICT (page) DO UPDATE SET views = views + excluded.views",
            )?;
            for (page, n) in views {
                add.execute(params![page, n])?;
            }
        }
        tx.execute(
            "INSERT INTO kafka_offsets (topic, partition, next_offset) VALUES (?1, ?2, ?3)
             ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
            params![topic, partition, next],
        )?;
        tx.commit()?;
        Ok(())
    }
}

impl Handler<String, String> for PageCounts {
    async fn handle(
        &self,
        record: Record<String, String>,
        ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        self.handle_batch(vec![record], ctx).await
    }

    async fn handle_batch(
        &self,
        records: Vec<Record<String, String>>,
        _ctx: &mut PartitionContext,
    ) -> Result<(), HandlerError> {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(());
        };
        let (topic, partition) = (first.topic.to_string(), first.partition);
        let (first, next) = (first.offset, last.offset + 1);
        let mut views: HashMap<String, u64> = HashMap::new();
        for record in &records {
            let page = record.key.clone().ok_or("a page view without a page")?;
            *views.entry(page).or_default() += 1;
        }
        let db = self.db.clone();
        // SQLite blocks: off the async workers.
        tokio::task::spawn_blocking(move || {
            let mut conn = db.lock().unwrap_or_else(|p| p.into_inner());
            Self::write(&mut conn, (&topic, partition), (first, next), &views)
        })
        .await??;
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(records.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn stored_offset(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, HandlerError> {
        let db = self.db.clone();
        let topic = topic.to_string();
        let stored = tokio::task::spawn_blocking(move || {
            let conn = db.lock().unwrap_or_else(|p| p.into_inner());
            conn.query_row(
                "SELECT next_offset FROM kafka_offsets WHERE topic = ?1 AND partition = ?2",
                params![topic, partition],
                |row| row.get(0),
            )
            .optional()
        })
        .await??;
        Ok(stored)
    }
}
