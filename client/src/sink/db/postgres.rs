//! The PostgreSQL backend of the database sinks, on tokio-postgres.

use tokio_postgres::{Client, GenericClient, Transaction};

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
    next_offset BIGINT,
    generation INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
);
CREATE TABLE IF NOT EXISTS ferry_outbox (
    id BIGSERIAL PRIMARY KEY,
    topic TEXT NOT NULL,
    partition INTEGER,
    key BYTEA,
    value BYTEA
);";

/// The advisory lock key that serialises creating the tables.
const SCHEMA_LOCK: i64 = 0x6665_7272_795f_6462;

/// Offsets (and outbox) in PostgreSQL. Claims and commits lock the
/// partitions' rows (`SELECT ... FOR UPDATE`), in a fixed order, so a
/// stale member's commit and the new owner's claim never interleave.
pub struct PgOffsets {
    client: Client,
}

impl std::fmt::Debug for PgOffsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOffsets").finish_non_exhaustive()
    }
}

/// Stores an output event in the outbox, inside the application's
/// transaction; the [`OutboxRelay`](super::outbox::OutboxRelay) publishes it.
pub async fn enqueue(
    tx: &Transaction<'_>,
    topic: &str,
    partition: Option<u32>,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<(), tokio_postgres::Error> {
    enqueue_all(tx, topic, &[(partition, key, value)]).await
}

/// An output event for [`enqueue_all`]: its partition (`None`: the
/// producer's partitioner chooses), key and value.
pub type OutboxEvent<'a> = (Option<u32>, Option<&'a [u8]>, Option<&'a [u8]>);

/// Stores output events for `topic`, each `(partition, key, value)`, in
/// the outbox in one statement, inside the application's transaction;
/// their ids follow the slice's order.
pub async fn enqueue_all(
    tx: &Transaction<'_>,
    topic: &str,
    events: &[OutboxEvent<'_>],
) -> Result<(), tokio_postgres::Error> {
    // Held to the commit: ids then follow commit order.
    tx.batch_execute("LOCK TABLE ferry_outbox IN EXCLUSIVE MODE")
        .await?;
    let partitions: Vec<Option<i32>> = events.iter().map(|e| e.0.map(|p| p as i32)).collect();
    let keys: Vec<Option<&[u8]>> = events.iter().map(|e| e.1).collect();
    let values: Vec<Option<&[u8]>> = events.iter().map(|e| e.2).collect();
    tx.execute(
        "INSERT INTO ferry_outbox (topic, partition, key, value)
         SELECT $1, p, k, v FROM UNNEST($2::integer[], $3::bytea[], $4::bytea[])
         WITH ORDINALITY AS e(p, k, v, n) ORDER BY n",
        &[&topic, &partitions, &keys, &values],
    )
    .await?;
    Ok(())
}

/// Locks the row of a partition and reads its generation.
async fn generation(
    tx: &impl GenericClient,
    fence: &Fence,
    topic: &str,
    partition: u32,
) -> Result<Option<i32>, tokio_postgres::Error> {
    let row = tx
        .query_opt(
            "SELECT generation FROM ferry_offsets
             WHERE group_id = $1 AND topic = $2 AND partition = $3 FOR UPDATE",
            &[&fence.group, &topic, &(partition as i32)],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

impl PgOffsets {
    /// Uses `client`, creating the tables if they are missing.
    pub async fn new(client: Client) -> Result<PgOffsets, SinkError> {
        // Two sessions creating the same table at once collide in the
        // catalog despite IF NOT EXISTS: serialise on an advisory lock.
        client
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {SCHEMA} COMMIT;"
            ))
            .await?;
        Ok(PgOffsets { client })
    }

    /// Connects to `url` (spawning the connection's task) and uses it.
    pub async fn connect(url: &str) -> Result<PgOffsets, SinkError> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%e, "postgres connection ended");
            }
        });
        PgOffsets::new(client).await
    }

    /// The client, for the application's reads.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The stored next offset of a partition.
    pub async fn offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, SinkError> {
        let row = self
            .client
            .query_opt(
                "SELECT next_offset FROM ferry_offsets WHERE group_id = $1 AND topic = $2 AND partition = $3",
                &[&group, &topic, &(partition as i32)],
            )
            .await?;
        Ok(row
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .map(|o| o as u64))
    }

    /// Commits `commit` with the application's writes (`apply`) in one
    /// transaction, fenced; see the [module docs](super).
    pub async fn commit<R>(
        &mut self,
        commit: &OffsetCommit,
        observer: &mut impl DbObserver,
        apply: impl AsyncFnOnce(&Transaction<'_>) -> Result<R, tokio_postgres::Error>,
    ) -> Result<R, SinkError> {
        let topics: Vec<&str> = commit.offsets.iter().map(|(t, _, _)| t.as_str()).collect();
        check_names(&commit.fence, &topics)?;
        let tx = self.client.transaction().await?;
        for (topic, partition, _) in &commit.offsets {
            let stored = generation(&tx, &commit.fence, topic, *partition).await?;
            check_fence(&commit.fence, topic, *partition, stored)?;
        }
        let out = apply(&tx).await?;
        let upsert = tx
            .prepare(
                "INSERT INTO ferry_offsets (group_id, topic, partition, next_offset, generation)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (group_id, topic, partition)
                 DO UPDATE SET next_offset = EXCLUDED.next_offset, generation = EXCLUDED.generation",
            )
            .await?;
        for (topic, partition, next) in &commit.offsets {
            tx.execute(
                &upsert,
                &[
                    &commit.fence.group,
                    topic,
                    &(*partition as i32),
                    &(*next as i64),
                    &commit.fence.generation,
                ],
            )
            .await?;
        }
        if observer.at(DbPoint::BeforeDbCommit) {
            // Dropping the transaction rolls it back, as the server does
            // when a client dies.
            return Err(crashed(DbPoint::BeforeDbCommit));
        }
        tx.commit().await?;
        if observer.at(DbPoint::AfterDbCommit) {
            return Err(crashed(DbPoint::AfterDbCommit));
        }
        Ok(out)
    }
}

impl OffsetStore for PgOffsets {
    async fn claim(
        &mut self,
        fence: &Fence,
        partitions: &[(String, u32)],
    ) -> Result<Vec<Option<u64>>, SinkError> {
        {
            let topics: Vec<&str> = partitions.iter().map(|(t, _)| t.as_str()).collect();
            check_names(fence, &topics)?;
            let tx = self.client.transaction().await?;
            let mut offsets = Vec::with_capacity(partitions.len());
            for (topic, partition) in partitions {
                // Create the row if missing, then lock it.
                tx.execute(
                    "INSERT INTO ferry_offsets (group_id, topic, partition, next_offset, generation)
                     VALUES ($1, $2, $3, NULL, $4) ON CONFLICT DO NOTHING",
                    &[&fence.group, topic, &(*partition as i32), &fence.generation],
                )
                .await?;
                let stored = generation(&tx, fence, topic, *partition).await?;
                check_fence(fence, topic, *partition, stored)?;
                let row = tx
                    .query_one(
                        "UPDATE ferry_offsets SET generation = $4
                         WHERE group_id = $1 AND topic = $2 AND partition = $3
                         RETURNING next_offset",
                        &[&fence.group, topic, &(*partition as i32), &fence.generation],
                    )
                    .await?;
                offsets.push(row.get::<_, Option<i64>>(0).map(|o| o as u64));
            }
            tx.commit().await?;
            Ok(offsets)
        }
    }
}

impl OutboxStore for PgOffsets {
    async fn after(&mut self, id: i64, limit: usize) -> Result<Vec<OutboxRow>, SinkError> {
        {
            let rows = self
                .client
                .query(
                    "SELECT id, topic, partition, key, value FROM ferry_outbox
                     WHERE id > $1 ORDER BY id LIMIT $2",
                    &[&id, &(limit as i64)],
                )
                .await?;
            Ok(rows
                .into_iter()
                .map(|r| OutboxRow {
                    id: r.get(0),
                    topic: r.get(1),
                    partition: r.get::<_, Option<i32>>(2).map(|p| p as u32),
                    key: r.get::<_, Option<Vec<u8>>>(3).map(Into::into),
                    value: r.get::<_, Option<Vec<u8>>>(4).map(Into::into),
                })
                .collect())
        }
    }

    async fn delete_through(&mut self, id: i64) -> Result<u64, SinkError> {
        {
            Ok(self
                .client
                .execute("DELETE FROM ferry_outbox WHERE id <= $1", &[&id])
                .await?)
        }
    }
}

impl DbConsumer<PgOffsets> {
    /// Commits `records` (one poll's) with `apply`'s writes in one
    /// PostgreSQL transaction, fenced by the generation. On failure
    /// nothing applied, and the partitions go back to the batch's start.
    pub async fn commit<R>(
        &mut self,
        records: &[ConsumerRecord],
        observer: &mut impl DbObserver,
        apply: impl AsyncFnOnce(&Transaction<'_>) -> Result<R, tokio_postgres::Error>,
    ) -> Result<R, SinkError> {
        let commit = OffsetCommit::of(self.fence(), records);
        let result = self.store.commit(&commit, observer, apply).await;
        if let Err(e) = &result {
            self.rewind(records, e);
        }
        result
    }
}
