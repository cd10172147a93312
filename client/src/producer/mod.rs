//! [`Producer`]: batching, pipelining, retries and backpressure.
//!
//! The stages of a record have a file each: [`config`] (settings),
//! [`accumulator`] (routing, open batches, sealing), [`delivery`] (what a
//! send hands back), [`sender`] (the background task) with its
//! [`conn`]ection and [`inflight`] tracking. This file is the facade.
//!
//! # How a record travels
//!
//! 1. [`Producer::send`] picks a partition and copies the record into that
//!    partition's open [`BatchBuilder`] (the accumulator). Every record of a
//!    batch shares one [`BatchCompletion`]; a [`Delivery`] is that `Arc` plus
//!    the record's offset delta, so the hot path allocates nothing per
//!    record.
//! 2. A batch is sealed when the next record would push it past
//!    `batch_bytes`, when `linger` has passed since it was opened, or on
//!    [`Producer::flush`] / [`Producer::close`]. Sealing hands the finished
//!    bytes to the background sender task.
//! 3. The sender task owns one `ProduceStream`. It sends at most
//!    `max_in_flight_per_partition` batches per partition, matches
//!    responses by correlation id and completes the batch.
//!
//! # Retries
//!
//! Only retriable outcomes are retried: broker codes for which
//! [`ErrorCode::is_retriable`] holds, and a broken stream. A retry resends
//! the exact bytes of the batch after an exponential backoff, until
//! `delivery_timeout` has passed since the batch was sealed; then its
//! records fail with [`ClientError::Timeout`]. Definite errors fail the
//! batch at once. When the stream breaks, the task reconnects with backoff
//! and resends the batches that were in flight, per partition in their
//! original order.
//!
//! Without idempotence a retry may duplicate a batch the broker already
//! stored (at-least-once allows that), and a batch retried after a
//! broker error may land after a later batch of the same partition that
//! succeeded meanwhile.
//!
//! # Idempotence
//!
//! With [`ProducerConfig::idempotent`] (the default; it requires
//! [`Acks::All`]) the producer gets a producer id from `InitProducerId` when
//! it starts. Each partition has an epoch and a next sequence number, and a
//! batch is stamped with (producer id, epoch, first sequence) when it is
//! sealed; sequences count records. At most
//! [`MAX_IN_FLIGHT_IDEMPOTENT`](crate::MAX_IN_FLIGHT_IDEMPOTENT) batches per
//! partition are in flight, and a retry resends the same bytes, so the
//! broker stores each batch once and answers a retry of a stored batch with
//! its original offsets. What happens on each error is decided by
//! [`crate::idempotence::decide`]:
//!
//! - a retriable error or a broken stream: resend after a backoff. Later
//!   batches of the partition that were already in flight are refused with
//!   `OutOfOrderSequence` (their predecessor is missing) and resent after
//!   it, in order;
//! - `OutOfOrderSequence` with every earlier batch of the partition acked
//!   (records the broker acked were lost), `InvalidProducerEpoch` or
//!   `ProducerFenced`: the batch, every later batch of the partition and
//!   every future batch of the partition fail with that error;
//! - `UnknownProducerId` with every earlier batch acked: the partition's
//!   epoch goes up by one, its unacked batches are renumbered from 0 and
//!   resent;
//! - another definite error: the batch fails, and the partition's later
//!   batches are renumbered under the next epoch so they are not blocked by
//!   the hole.
//!
//! Under [`Acks::None`] the broker answers only errors, so a batch counts
//! as delivered once it is handed to the stream, and nothing is retried
//! (at-most-once).

mod accumulator;
mod config;
mod conn;
mod delivery;
mod inflight;
mod record;
mod sender;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ferry_proto::ErrorCode;
use ferry_proto::batch::{HEADER_LEN, MAX_BATCH_BYTES, MAX_HEADERS_PER_RECORD};
use ferry_proto::v1;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use self::accumulator::{
    Accumulator, Command, FailedRecords, Record, Shared, State, TopicState, start_partition,
};
pub use self::config::{Acks, ProducerConfig};
pub use self::delivery::{Delivery, RecordMetadata};
pub use self::record::ProducerRecord;
use self::sender::SenderTask;
use crate::client::Client;
use crate::error::{ClientError, check};
use crate::idempotence::Sequencer;
use crate::retry::retry_until;
use crate::topic_table::TopicTable;

struct Inner {
    shared: Arc<Shared>,
    client: Client,
    tx: mpsc::UnboundedSender<Command>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Hand over what is still open so that outstanding deliveries
        // resolve; the sender task finishes them and then exits.
        let mut state = self.shared.state.lock();
        let tx = &self.tx;
        self.shared.seal_all(&mut state, &mut |c| {
            let _ = tx.send(c);
        });
        state.closed = true;
    }
}

/// Sends records to the broker in batches.
///
/// Clones share one accumulator and one background sender task. Dropping
/// the last clone hands the open batches to the task, which delivers them
/// and exits; [`Producer::close`] also waits for that.
///
/// ```no_run
/// use ferry_client::{Acks, Client, Producer, ProducerConfig};
///
/// # async fn demo() -> Result<(), ferry_client::ClientError> {
/// let client = Client::connect("127.0.0.1:7400").await?;
/// // Idempotence (the default) needs acks=all; turn it off for acks=leader.
/// let config = ProducerConfig {
///     acks: Acks::Leader,
///     idempotent: false,
///     ..ProducerConfig::default()
/// };
/// let producer = Producer::new(client, config).await?;
/// let mut deliveries = Vec::new();
/// for i in 0..1000u32 {
///     let key = i.to_string();
///     deliveries.push(producer.send("events", Some(key.as_bytes()), Some(b"payload")).await?);
/// }
/// producer.flush().await?;
/// for d in deliveries {
///     d.wait().await?;
/// }
/// producer.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("addr", &self.inner.client.addr())
            .field("config", &self.inner.shared.config)
            .finish()
    }
}

impl Producer {
    /// Starts a producer and its background sender task on the current
    /// tokio runtime. The stream to the broker opens on first use.
    ///
    /// An idempotent producer first asks the broker for a producer id
    /// (`InitProducerId`), so the broker must be reachable.
    pub async fn new(client: Client, config: ProducerConfig) -> Result<Producer, ClientError> {
        let config = config.normalized()?;
        let producer = if config.idempotent {
            Some(init_producer_id(&client).await?)
        } else {
            None
        };
        Ok(Self::start(client, config, producer))
    }

    /// Starts the sender task for a checked config and, when idempotent,
    /// a producer id and epoch.
    fn start(client: Client, config: ProducerConfig, producer: Option<(i64, i16)>) -> Producer {
        Self::launch(client, config, producer, false)
    }

    fn launch(
        client: Client,
        config: ProducerConfig,
        producer: Option<(i64, i16)>,
        transactional: bool,
    ) -> Producer {
        let shared = Arc::new(Shared {
            config,
            producer,
            transactional,
            state: Mutex::new(State {
                topics: TopicTable::default(),
                next_seq: 0,
                closed: false,
                epoch: producer.map_or(0, |(_, e)| e),
            }),
            unacked_bytes: AtomicUsize::new(0),
            failed: Mutex::new(FailedRecords::default()),
            space: Notify::new(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let task = SenderTask::new(shared.clone(), client.clone(), rx);
        tokio::spawn(task.run());
        Producer {
            inner: Arc::new(Inner { shared, client, tx }),
        }
    }

    /// The producer id and the epoch it started with, when idempotent.
    pub fn producer_id(&self) -> Option<(i64, i16)> {
        self.inner.shared.producer
    }

    /// Sends a record to the partition chosen by its key: murmur2 of the
    /// key modulo the partition count (see [`crate::partitioner`]), so
    /// one key always lands on one partition, in send order. Records
    /// without a key go to a "sticky" partition that moves on whenever its
    /// batch is sealed.
    ///
    /// The partition count is fetched once per topic and cached; a missing
    /// topic fails with `UnknownTopicOrPartition`. Waits while
    /// `buffer_bytes` are unacknowledged.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<Delivery, ClientError> {
        self.send_record(ProducerRecord::new(topic, key, value))
            .await
    }

    /// Sends a record to an explicit partition.
    pub async fn send_to(
        &self,
        topic: &str,
        partition: u32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<Delivery, ClientError> {
        self.send_record(ProducerRecord::new(topic, key, value).to_partition(partition))
            .await
    }

    /// Sends a record with everything a record can carry: headers (in
    /// order; a key may repeat) and its own timestamp. Partitioned as
    /// [`send`](Self::send) does unless it names a partition.
    ///
    /// ```no_run
    /// # use ferry_client::{Producer, ProducerRecord};
    /// # async fn demo(producer: Producer) -> Result<(), ferry_client::ClientError> {
    /// let headers: &[(&[u8], Option<&[u8]>)] = &[(b"trace-id", Some(b"abc123"))];
    /// let record = ProducerRecord::new("orders", Some(b"order-17"), Some(b"{}"))
    ///     .with_headers(headers)
    ///     .with_timestamp(1_700_000_000_000);
    /// producer.send_record(record).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_record(&self, record: ProducerRecord<'_>) -> Result<Delivery, ClientError> {
        if record.headers.len() as u64 > MAX_HEADERS_PER_RECORD {
            return Err(ClientError::InvalidArgument(format!(
                "a record may carry at most {MAX_HEADERS_PER_RECORD} headers, not {}",
                record.headers.len()
            )));
        }
        let topic = record.topic;
        let record = Record {
            partition: record.partition,
            key: record.key,
            value: record.value,
            headers: record.headers,
            timestamp: record.timestamp,
        };
        let max_record = MAX_BATCH_BYTES - HEADER_LEN;
        let approx = record.payload() + record.overhead();
        if approx > max_record {
            return Err(ClientError::InvalidArgument(format!(
                "a record of {approx} bytes exceeds the batch limit of {max_record} bytes"
            )));
        }
        self.wait_for_space().await?;
        loop {
            match self.try_append(topic, record)? {
                Some((delivery, sealed)) => {
                    if sealed {
                        // Let the sender task pick the batch up even on a
                        // current-thread runtime where this loop never
                        // waits otherwise.
                        tokio::task::yield_now().await;
                    }
                    return Ok(delivery);
                }
                None => self.load_topic(topic).await?,
            }
        }
    }

    /// Appends `record` under the state lock; `None` if the topic is not
    /// known yet.
    fn try_append(
        &self,
        topic: &str,
        record: Record<'_>,
    ) -> Result<Option<(Delivery, bool)>, ClientError> {
        let shared = &*self.inner.shared;
        let mut state = shared.state.lock();
        if state.closed {
            return Err(ClientError::Closed);
        }
        let state = &mut *state;
        let Some(i) = state.topics.find(topic) else {
            return Ok(None);
        };
        let tx = &self.inner.tx;
        let mut sink = |c| {
            let _ = tx.send(c);
        };
        shared
            .append(&mut state.topics[i], &mut state.next_seq, record, &mut sink)
            .map(Some)
    }

    /// The partition a record sent now would go to: `partition` if given
    /// (it must exist), else the hash of `key` (see [`crate::partitioner`]),
    /// else the current sticky partition for keyless records, which moves
    /// on whenever its batch is sealed. Fetches the topic's partition count
    /// on first use, like a send.
    pub async fn route(
        &self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
    ) -> Result<u32, ClientError> {
        self.route_counted(topic, partition, key)
            .await
            .map(|(p, _)| p)
    }

    /// [`route`](Self::route), with the topic's partition count.
    pub(crate) async fn route_counted(
        &self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
    ) -> Result<(u32, u32), ClientError> {
        loop {
            {
                let mut state = self.inner.shared.state.lock();
                if let Some(i) = state.topics.find(topic) {
                    let ts = &state.topics[i];
                    return Ok((ts.route(partition, key)?, ts.partitions.len() as u32));
                }
            }
            self.load_topic(topic).await?;
        }
    }

    async fn load_topic(&self, topic: &str) -> Result<(), ClientError> {
        // Metadata is fetched on the first send to a topic, which may fall
        // while the broker restarts: retry what is retriable, within the
        // delivery timeout, like any send.
        let config = &self.inner.shared.config;
        let client = &self.inner.client;
        let description = retry_until(
            "DescribeTopic",
            Instant::now() + config.delivery_timeout,
            config.retry_policy(),
            ClientError::is_retriable,
            || client.describe_topic(topic),
        )
        .await?;
        let n = description.partitions.len() as u32;
        if n == 0 {
            return Err(ClientError::broker(
                ErrorCode::UnknownTopicOrPartition,
                format!("topic {topic} has no partitions"),
            ));
        }
        let mut state = self.inner.shared.state.lock();
        let epoch = state.epoch;
        if state.topics.position(topic).is_none() {
            state.topics.insert(TopicState {
                name: Arc::from(topic),
                partitions: (0..n).map(|_| Accumulator::new(epoch)).collect(),
                sticky: start_partition(n),
            });
        }
        Ok(())
    }

    async fn wait_for_space(&self) -> Result<(), ClientError> {
        let shared = &*self.inner.shared;
        let limit = shared.config.buffer_bytes;
        // Fast path without registering a waiter, which takes a lock.
        if shared.unacked_bytes.load(Ordering::Acquire) < limit {
            return Ok(());
        }
        loop {
            let notified = shared.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if shared.unacked_bytes.load(Ordering::Acquire) < limit {
                return Ok(());
            }
            if shared.state.lock().closed {
                return Err(ClientError::Closed);
            }
            notified.await;
        }
    }

    /// Seals every open batch and waits until every batch sealed so far
    /// has succeeded or failed.
    ///
    /// `Ok(())` means every record sent since the previous flush was
    /// acknowledged (under [`Acks::None`], sent). If any failed, the flush
    /// fails with [`ClientError::RecordsFailed`], which counts them and
    /// names the first error; each record's [`Delivery`] still holds its
    /// own outcome. The count starts again after each flush.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.inner.shared.state.lock();
            let sender = &self.inner.tx;
            self.inner.shared.seal_all(&mut state, &mut |c| {
                let _ = sender.send(c);
            });
            self.inner
                .tx
                .send(Command::Flush(tx))
                .map_err(|_| ClientError::Closed)?;
        }
        rx.await.map_err(|_| ClientError::Closed)?;
        self.inner.shared.failed.lock().take_report()
    }

    /// Flushes, then stops the background task. Later sends fail with
    /// [`ClientError::Closed`]. Closing twice is harmless.
    pub async fn close(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.inner.shared.state.lock();
            let sender = &self.inner.tx;
            self.inner.shared.seal_all(&mut state, &mut |c| {
                let _ = sender.send(c);
            });
            state.closed = true;
            if self.inner.tx.send(Command::Close(tx)).is_err() {
                return Ok(());
            }
        }
        self.inner.shared.space.notify_waiters();
        // A dropped answer means the task already stopped: closed either way.
        let _ = rx.await;
        Ok(())
    }

    /// Record bytes sent but not yet acknowledged (or failed).
    pub fn unacked_bytes(&self) -> usize {
        self.inner.shared.unacked_bytes.load(Ordering::Acquire)
    }
}

// Hooks for the transactional producer. The transactional producer drives an
// ordinary `Producer` whose batches carry the transactional bit and whose
// producer id and epoch come from the transaction coordinator.

impl Producer {
    /// Starts a producer whose batches are transactional, stamped with
    /// `producer_id` and `epoch`.
    pub(crate) fn start_transactional(
        client: Client,
        config: ProducerConfig,
        producer_id: i64,
        epoch: i16,
    ) -> Result<Producer, ClientError> {
        let config = config.normalized()?;
        Ok(Self::launch(
            client,
            config,
            Some((producer_id, epoch)),
            true,
        ))
    }

    /// Moves every partition to `epoch` at sequence 0 and clears the
    /// partitions failed in the last transaction. Call only while no batch
    /// is open or unresolved (after [`Producer::flush`]).
    pub(crate) fn restart_sequences(&self, epoch: i16) {
        let mut state = self.inner.shared.state.lock();
        state.epoch = epoch;
        for topic in state.topics.iter_mut() {
            for acc in &mut topic.partitions {
                debug_assert!(acc.open.is_none(), "restart with an open batch");
                acc.seq = Sequencer::new(epoch);
            }
        }
        // Under the lock, so it reaches the task before any later batch.
        let _ = self.inner.tx.send(Command::Restart);
    }
}

#[cfg(test)]
impl Producer {
    /// Makes `topic` known with `partitions` partitions, without asking a
    /// broker; its sticky partition starts at 0.
    pub(crate) fn assume_topic(&self, topic: &str, partitions: u32) {
        let mut state = self.inner.shared.state.lock();
        let epoch = state.epoch;
        state.topics.insert(TopicState {
            name: Arc::from(topic),
            partitions: (0..partitions).map(|_| Accumulator::new(epoch)).collect(),
            sticky: 0,
        });
    }
}

/// Asks the broker for a fresh producer id (epoch 0).
async fn init_producer_id(client: &Client) -> Result<(i64, i16), ClientError> {
    let r = client
        .raw()
        .init_producer_id(v1::InitProducerIdRequest::default())
        .await?
        .into_inner();
    check(r.error_code, &r.error_message)?;
    let epoch = i16::try_from(r.producer_epoch).map_err(|_| {
        ClientError::broker(
            ErrorCode::InvalidProducerEpoch,
            format!("InitProducerId returned epoch {}", r.producer_epoch),
        )
    })?;
    Ok((r.producer_id, epoch))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A producer whose broker never answers, with `topic` known to have
    /// `partitions` partitions, so tests can watch the accumulator.
    pub(super) async fn offline(config: ProducerConfig, topic: &str, partitions: u32) -> Producer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = Client::connect_lazy(&format!("127.0.0.1:{port}")).unwrap();
        // No broker to ask for a producer id: idempotent configs get a
        // made-up one.
        let config = config.normalized().unwrap();
        let id = config.idempotent.then_some((77, 0));
        let producer = Producer::start(client, config, id);
        producer.assume_topic(topic, partitions);
        producer
    }

    pub(super) fn slow_linger() -> ProducerConfig {
        ProducerConfig {
            linger: Duration::from_secs(3600),
            ..ProducerConfig::default()
        }
    }

    #[tokio::test]
    async fn a_record_over_the_batch_limit_is_refused() {
        let producer = offline(slow_linger(), "t", 1).await;
        let huge = vec![0u8; MAX_BATCH_BYTES];
        let err = producer.send("t", None, Some(&huge)).await.unwrap_err();
        assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
    }

    #[tokio::test]
    async fn deliveries_fail_with_timeout_when_no_broker_answers() {
        let config = ProducerConfig {
            linger: Duration::from_millis(1),
            delivery_timeout: Duration::from_millis(300),
            retry_backoff: Duration::from_millis(10),
            retry_backoff_max: Duration::from_millis(50),
            ..ProducerConfig::default()
        };
        let producer = offline(config, "t", 2).await;
        let a = producer.send("t", None, Some(b"a")).await.unwrap();
        let b = producer.send_to("t", 1, None, Some(b"b")).await.unwrap();
        let started = std::time::Instant::now();
        // The flush waits for both outcomes and reports the two failures.
        let flushed = producer.flush().await.unwrap_err();
        assert!(
            matches!(flushed, ClientError::RecordsFailed { failed: 2, .. }),
            "{flushed}"
        );
        for d in [a, b] {
            let err = d.wait().await.unwrap_err();
            assert!(
                matches!(
                    err,
                    ClientError::Timeout {
                        what: "delivery",
                        ..
                    }
                ),
                "{err}"
            );
        }
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert_eq!(producer.unacked_bytes(), 0);
        producer.close().await.unwrap();
        assert!(matches!(
            producer.send("t", None, None).await,
            Err(ClientError::Closed)
        ));
        producer.close().await.unwrap();
    }

    #[tokio::test]
    async fn send_waits_while_the_buffer_is_full() {
        let config = ProducerConfig {
            buffer_bytes: 1000,
            delivery_timeout: Duration::from_millis(300),
            retry_backoff: Duration::from_millis(10),
            ..slow_linger()
        };
        let producer = offline(config, "t", 1).await;
        for _ in 0..10 {
            producer.send("t", None, Some(&[1u8; 100])).await.unwrap();
        }
        assert!(producer.unacked_bytes() >= 1000);
        // Stays blocked while the batch is open; a flush seals it, it times
        // out, the buffer empties and the send goes through.
        let blocked = tokio::time::timeout(
            Duration::from_millis(100),
            producer.send("t", None, Some(b"x")),
        )
        .await;
        assert!(blocked.is_err(), "send did not wait for buffer space");
        let (_, sent) = tokio::join!(producer.flush(), producer.send("t", None, Some(b"x")));
        sent.unwrap();
    }
}
