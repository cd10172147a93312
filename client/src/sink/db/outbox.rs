//! The transactional outbox: output events written to a table in the
//! same database transaction as the rows and the offsets, and a relay
//! that publishes them to the broker exactly once.
//!
//! The application stores each event with `enqueue` (one per backend;
//! `postgres::enqueue`, or `postgres::enqueue_all` for a batch in one
//! statement, and `sqlite::enqueue`) inside its
//! [`DbConsumer`](super::DbConsumer) commit. The outbox's ids follow commit
//! order: a PostgreSQL writer locks the outbox from its first `enqueue` to
//! its commit, and SQLite has a single writer, so no row can commit
//! behind one the relay has passed.
//!
//! The [`OutboxRelay`] publishes rows in id order, a batch per broker
//! transaction, and commits its position (the next id) in the *same*
//! broker transaction, as the offset of a group of its own
//! (`ferry-outbox.{transactional_id}`, on partition 0 of a topic the relay
//! writes to). A relay that dies mid-batch leaves an open transaction; the
//! next relay's producer, with the same transactional id, fences it and
//! aborts it, then reads the committed position: the batch is published
//! again, once, and read_committed consumers never see the aborted copy.
//! Rows at or below the position are deleted from the outbox afterwards;
//! a crash before the delete leaves rows that the position skips, and the
//! next relay deletes them when it starts.
//!
//! # When to choose it
//!
//! Broker transactions ([`ExactlyOnce`](crate::ExactlyOnce)) cover a
//! pipeline whose every effect is a topic. When the effect is a database
//! row, keep the offsets in the database ([`DbConsumer`](super::DbConsumer));
//! when such a pipeline also emits events, put them in the outbox, so the
//! row, the event and the position are one database commit. The cost: the
//! event reaches the topic a relay hop later, and the outbox's writers
//! serialise on it.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use ferry_proto::ErrorCode;

use crate::client::Client;
use crate::error::ClientError;
use crate::sink::SinkError;
use crate::transactional::{TransactionalConfig, TransactionalProducer};

/// Most rows one relay transaction publishes.
pub const MAX_RELAY_BATCH: usize = 10_000;

/// One event in the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRow {
    /// Its id: commit order.
    pub id: i64,
    /// The topic it goes to.
    pub topic: String,
    /// Its partition; `None` lets the producer's partitioner choose.
    pub partition: Option<u32>,
    /// The record's key.
    pub key: Option<Bytes>,
    /// The record's value.
    pub value: Option<Bytes>,
}

/// A backend's outbox table.
pub trait OutboxStore {
    /// Up to `limit` rows with an id above `id`, in id order.
    fn after(
        &mut self,
        id: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<OutboxRow>, SinkError>> + Send;

    /// Deletes the rows up to `id`; returns how many.
    fn delete_through(&mut self, id: i64) -> impl Future<Output = Result<u64, SinkError>> + Send;
}

/// Settings of a relay.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// The relay's transactional id: one per outbox; a new relay with it
    /// fences the previous one.
    pub transactional_id: String,
    /// A topic the relay publishes to, whose partition 0 keys its
    /// position.
    pub position_topic: String,
    /// Rows per transaction (at most [`MAX_RELAY_BATCH`]).
    pub batch: usize,
    /// How long an idle [`OutboxRelay::step`] waits before looking again.
    pub idle_wait: Duration,
    /// Transaction timeout of the producer.
    pub transaction_timeout: Duration,
}

impl RelayConfig {
    /// The defaults: batches of 500, 20 ms idle wait.
    pub fn new(
        transactional_id: impl Into<String>,
        position_topic: impl Into<String>,
    ) -> RelayConfig {
        RelayConfig {
            transactional_id: transactional_id.into(),
            position_topic: position_topic.into(),
            batch: 500,
            idle_wait: Duration::from_millis(20),
            transaction_timeout: Duration::from_secs(30),
        }
    }

    /// The group whose offset is the relay's position.
    pub fn position_group(&self) -> String {
        format!("ferry-outbox.{}", self.transactional_id)
    }
}

/// What one [`OutboxRelay::step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayStep {
    /// Nothing to publish.
    Idle,
    /// Published this many rows, committed.
    Published(u64),
}

/// Publishes an outbox to the broker exactly once; see the
/// [module docs](self).
pub struct OutboxRelay<S> {
    store: S,
    producer: TransactionalProducer,
    client: Client,
    config: RelayConfig,
    /// The last id published and committed.
    position: i64,
}

impl<S> std::fmt::Debug for OutboxRelay<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("config", &self.config)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl<S: OutboxStore> OutboxRelay<S> {
    /// Starts a relay: fences any earlier one with the same transactional
    /// id (aborting what it left open) and reads the committed position.
    pub async fn new(
        client: Client,
        store: S,
        config: RelayConfig,
    ) -> Result<OutboxRelay<S>, SinkError> {
        if config.batch == 0 || config.batch > MAX_RELAY_BATCH {
            return Err(SinkError::Invalid(format!(
                "relay batch {}: 1 to {MAX_RELAY_BATCH}",
                config.batch
            )));
        }
        let mut txn = TransactionalConfig::new(config.transactional_id.clone());
        txn.transaction_timeout = config.transaction_timeout;
        let producer = TransactionalProducer::new(client.clone(), txn).await?;
        let position = loop {
            match client
                .fetch_offsets_stable(&config.position_group(), &config.position_topic)
                .await
            {
                Ok(offsets) => break offsets.get(&0).map_or(0, |next| *next as i64 - 1),
                Err(e) if e.code() == ErrorCode::UnstableOffsetCommit => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let mut store = store;
        if position > 0 {
            // What a predecessor published but died before deleting.
            if let Err(e) = store.delete_through(position).await {
                tracing::debug!(%e, "outbox cleanup failed");
            }
        }
        Ok(OutboxRelay {
            store,
            producer,
            client,
            config,
            position,
        })
    }

    /// The last id published.
    pub fn position(&self) -> i64 {
        self.position
    }

    /// The backend.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The broker client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Publishes the next batch in one transaction with the position. A
    /// failure leaves the position where it was; after a fatal one (the
    /// relay was fenced, or the outcome is unknown), start a new relay.
    pub async fn step(&mut self) -> Result<RelayStep, SinkError> {
        let rows = self.store.after(self.position, self.config.batch).await?;
        let Some(last) = rows.last().map(|r| r.id) else {
            tokio::time::sleep(self.config.idle_wait).await;
            return Ok(RelayStep::Idle);
        };
        if let Err(e) = self.publish(&rows, last).await {
            if self.producer.in_transaction() && !self.producer.is_fatal() {
                let _ = self.producer.abort().await;
            }
            return Err(e.into());
        }
        self.position = last;
        if let Err(e) = self.store.delete_through(last).await {
            // Harmless: the position skips what is left.
            tracing::debug!(%e, "outbox cleanup failed");
        }
        Ok(RelayStep::Published(rows.len() as u64))
    }

    async fn publish(&mut self, rows: &[OutboxRow], last: i64) -> Result<(), ClientError> {
        self.producer.begin()?;
        for row in rows {
            let (key, value) = (row.key.as_deref(), row.value.as_deref());
            match row.partition {
                Some(p) => self.producer.send_to(&row.topic, p, key, value).await?,
                None => self.producer.send(&row.topic, key, value).await?,
            };
        }
        let next = (last + 1) as u64;
        self.producer
            .send_offsets(
                &self.config.position_group(),
                &[(self.config.position_topic.clone(), 0, next)],
            )
            .await?;
        self.producer.commit().await
    }

    /// Whether the relay must be replaced (fenced, or an unknown outcome).
    pub fn is_fatal(&self) -> bool {
        self.producer.is_fatal()
    }

    /// Stops the relay.
    pub async fn close(self) -> Result<(), ClientError> {
        self.producer.close().await
    }
}
