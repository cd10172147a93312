//! The SQLite backend of the database sinks: offsets and outbox in the
//! application's own SQLite database.

use std::future::Future;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::outbox::{OutboxRow, OutboxStore};
use super::{
    DbConsumer, DbObserver, DbPoint, Fence, OffsetCommit, OffsetStore, check_fence, check_names,
    crashed,
};
use crate::consumer::ConsumerRecord;
use crate::sink::SinkError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ferry_offsets (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER,
    generation INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
);
CREATE TABLE IF NOT EXISTS ferry_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    partition INTEGER,
    key BLOB,
    value BLOB
);";

/// Offsets (and outbox) in SQLite. Each claim and commit is an
/// `IMMEDIATE` transaction, which takes the database's write lock first:
/// SQLite serialises them whole.
pub struct SqliteOffsets {
    conn: Connection,
}

impl std::fmt::Debug for SqliteOffsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOffsets").finish_non_exhaustive()
    }
}

/// Stores an output event in the outbox, inside the application's
/// transaction; the [`OutboxRelay`](super::outbox::OutboxRelay) publishes it.
pub fn enqueue(
    tx: &Transaction<'_>,
    topic: &str,
    partition: Option<u32>,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO ferry_outbox (topic, partition, key, value) VALUES (?1, ?2, ?3, ?4)",
        params![topic, partition, key, value],
    )?;
    Ok(())
}

impl SqliteOffsets {
    /// Uses `conn`, creating the tables if they are missing.
    pub fn new(conn: Connection) -> Result<SqliteOffsets, SinkError> {
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteOffsets { conn })
    }

    /// The connection, for the application's reads.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The stored next offset of a partition.
    pub fn offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, SinkError> {
        let v: Option<Option<i64>> = self
            .conn
            .query_row(
                "SELECT next_offset FROM ferry_offsets WHERE group_id = ?1 AND topic = ?2 AND partition = ?3",
                params![group, topic, partition],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.flatten().map(|o| o as u64))
    }

    /// Commits `commit` with the application's writes (`apply`) in one
    /// transaction, fenced; see the [module docs](super).
    pub fn commit<R>(
        &mut self,
        commit: &OffsetCommit,
        observer: &mut impl DbObserver,
        apply: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<R>,
    ) -> Result<R, SinkError> {
        let topics: Vec<&str> = commit.offsets.iter().map(|(t, _, _)| t.as_str()).collect();
        check_names(&commit.fence, &topics)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (topic, partition, _) in &commit.offsets {
            check_fence(
                &commit.fence,
                topic,
                *partition,
                generation(&tx, &commit.fence, topic, *partition)?,
            )?;
        }
        let out = apply(&tx)?;
        for (topic, partition, next) in &commit.offsets {
            tx.execute(
                "INSERT INTO ferry_offsets (group_id, topic, partition, next_offset, generation)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (group_id, topic, partition)
                 DO UPDATE SET next_offset = excluded.next_offset, generation = excluded.generation",
                params![commit.fence.group, topic, partition, *next as i64, commit.fence.generation],
            )?;
        }
        if observer.at(DbPoint::BeforeDbCommit) {
            return Err(crashed(DbPoint::BeforeDbCommit));
        }
        tx.commit()?;
        if observer.at(DbPoint::AfterDbCommit) {
            return Err(crashed(DbPoint::AfterDbCommit));
        }
        Ok(out)
    }
}

fn generation(
    tx: &Transaction<'_>,
    fence: &Fence,
    topic: &str,
    partition: u32,
) -> rusqlite::Result<Option<i32>> {
    tx.query_row(
        "SELECT generation FROM ferry_offsets WHERE group_id = ?1 AND topic = ?2 AND partition = ?3",
        params![fence.group, topic, partition],
        |r| r.get(0),
    )
    .optional()
}

impl OffsetStore for SqliteOffsets {
    fn claim(
        &mut self,
        fence: &Fence,
        partitions: &[(String, u32)],
    ) -> impl Future<Output = Result<Vec<Option<u64>>, SinkError>> + Send {
        let result = (|| {
            let topics: Vec<&str> = partitions.iter().map(|(t, _)| t.as_str()).collect();
            check_names(fence, &topics)?;
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut offsets = Vec::with_capacity(partitions.len());
            for (topic, partition) in partitions {
                check_fence(
                    fence,
                    topic,
                    *partition,
                    generation(&tx, fence, topic, *partition)?,
                )?;
                let next: Option<i64> = tx.query_row(
                    "INSERT INTO ferry_offsets (group_id, topic, partition, next_offset, generation)
                     VALUES (?1, ?2, ?3, NULL, ?4)
                     ON CONFLICT (group_id, topic, partition) DO UPDATE SET generation = excluded.generation
                     RETURNING next_offset",
                    params![fence.group, topic, partition, fence.generation],
                    |r| r.get(0),
                )?;
                offsets.push(next.map(|o| o as u64));
            }
            tx.commit()?;
            Ok(offsets)
        })();
        std::future::ready(result)
    }
}

impl OutboxStore for SqliteOffsets {
    fn after(
        &mut self,
        id: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<OutboxRow>, SinkError>> + Send {
        let result = (|| {
            let mut stmt = self.conn.prepare_cached(
                "SELECT id, topic, partition, key, value FROM ferry_outbox WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt
                .query_map(params![id, limit as i64], |r| {
                    Ok(OutboxRow {
                        id: r.get(0)?,
                        topic: r.get(1)?,
                        partition: r.get(2)?,
                        key: r.get::<_, Option<Vec<u8>>>(3)?.map(Into::into),
                        value: r.get::<_, Option<Vec<u8>>>(4)?.map(Into::into),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })();
        std::future::ready(result)
    }

    fn delete_through(&mut self, id: i64) -> impl Future<Output = Result<u64, SinkError>> + Send {
        let result = self
            .conn
            .execute("DELETE FROM ferry_outbox WHERE id <= ?1", params![id])
            .map(|n| n as u64)
            .map_err(SinkError::from);
        std::future::ready(result)
    }
}

impl DbConsumer<SqliteOffsets> {
    /// Commits `records` (one poll's) with `apply`'s writes in one SQLite
    /// transaction, fenced by the generation. On failure nothing applied,
    /// and the partitions go back to the batch's start.
    pub fn commit<R>(
        &mut self,
        records: &[ConsumerRecord],
        observer: &mut impl DbObserver,
        apply: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<R>,
    ) -> Result<R, SinkError> {
        let commit = OffsetCommit::of(self.fence(), records);
        let result = self.store.commit(&commit, observer, apply);
        if let Err(e) = &result {
            self.rewind(records, e);
        }
        result
    }
}
