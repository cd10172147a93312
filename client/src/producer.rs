//! [`Producer`]: batching, pipelining, retries and backpressure.
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

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use ferry_proto::ErrorCode;
use ferry_proto::batch::{BatchBuilder, HEADER_LEN, MAX_BATCH_BYTES, ProducerStamp, restamp};
use ferry_proto::v1;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;

use crate::client::Client;
use crate::error::{ClientError, check};
use crate::idempotence::{Action, MAX_IN_FLIGHT_IDEMPOTENT, Sequencer, decide};
use crate::partitioner::partition_for_key;
use crate::topic_table::{Named, TopicTable};

/// How many produce requests may wait in the stream's send queue. Only a
/// buffer in front of HTTP/2 flow control; the in-flight limit is per
/// partition.
const REQUEST_QUEUE_LEN: usize = 16;
/// Most commands the sender task takes in one go before it looks at the
/// connection again.
const MAX_COMMANDS_PER_WAKEUP: usize = 256;
/// How often batches waiting for a retry or a response are checked
/// against their delivery timeout.
const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Most framing bytes a header-less record adds to its key and value:
/// length (5), attributes (1), timestamp delta (10), offset delta (5), key
/// and value lengths (5 + 5), header count (1).
const MAX_RECORD_OVERHEAD: usize = 32;
/// Smallest buffer a new batch reserves.
const MIN_BATCH_CAPACITY: usize = 1024;

/// Which acknowledgement the producer waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// No acknowledgement: a record counts as sent once handed to the
    /// connection. At-most-once; never retried.
    None,
    /// The broker appended the batch to its log (page cache).
    Leader,
    /// The batch is durable under the broker's fsync policy.
    All,
}

impl Acks {
    fn to_proto(self) -> v1::Acks {
        match self {
            Acks::None => v1::Acks::None,
            Acks::Leader => v1::Acks::Leader,
            Acks::All => v1::Acks::All,
        }
    }
}

impl FromStr for Acks {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Acks, ClientError> {
        match s {
            "none" => Ok(Acks::None),
            "leader" => Ok(Acks::Leader),
            "all" => Ok(Acks::All),
            other => Err(ClientError::InvalidArgument(format!(
                "unknown acks {other:?}: expected one of none, leader, all"
            ))),
        }
    }
}

impl std::fmt::Display for Acks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Acks::None => "none",
            Acks::Leader => "leader",
            Acks::All => "all",
        })
    }
}

/// Producer settings.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// Acknowledgement to wait for. Default [`Acks::All`].
    pub acks: Acks,
    /// How long a batch stays open for more records. Default 5 ms.
    pub linger: Duration,
    /// A batch is sealed before it would grow past this. Default 256 KiB,
    /// capped at [`MAX_BATCH_BYTES`]. A single larger record gets a batch
    /// of its own.
    pub batch_bytes: usize,
    /// How long after sealing a batch may be retried. Default 120 s.
    pub delivery_timeout: Duration,
    /// First retry backoff, doubled per attempt. Default 50 ms.
    pub retry_backoff: Duration,
    /// Largest retry backoff. Default 1 s.
    pub retry_backoff_max: Duration,
    /// Batches per partition sent and not yet answered. Default 5, and at
    /// most [`MAX_IN_FLIGHT_IDEMPOTENT`] when `idempotent`.
    pub max_in_flight_per_partition: usize,
    /// Stamp batches with a producer id, epoch and sequence numbers so the
    /// broker stores each batch exactly once and in order, however often it
    /// is retried. Default `true`. Requires [`Acks::All`].
    pub idempotent: bool,
    /// `send` waits while this many record bytes are unacknowledged.
    /// Default 64 MiB.
    pub buffer_bytes: usize,
}

impl Default for ProducerConfig {
    fn default() -> ProducerConfig {
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_bytes: 256 * 1024,
            delivery_timeout: Duration::from_secs(120),
            retry_backoff: Duration::from_millis(50),
            retry_backoff_max: Duration::from_secs(1),
            max_in_flight_per_partition: 5,
            buffer_bytes: 64 * 1024 * 1024,
            idempotent: true,
        }
    }
}

impl ProducerConfig {
    fn normalized(mut self) -> Result<ProducerConfig, ClientError> {
        if self.batch_bytes <= HEADER_LEN {
            return Err(ClientError::InvalidArgument(format!(
                "batch_bytes {} must exceed the {HEADER_LEN}-byte batch header",
                self.batch_bytes
            )));
        }
        self.batch_bytes = self.batch_bytes.min(MAX_BATCH_BYTES);
        if self.max_in_flight_per_partition == 0 {
            return Err(ClientError::InvalidArgument(
                "max_in_flight_per_partition must be at least 1".into(),
            ));
        }
        if self.idempotent && self.acks != Acks::All {
            return Err(ClientError::InvalidArgument(format!(
                "an idempotent producer needs acks=all, not acks={}; \
                 set idempotent to false for acks={0}",
                self.acks
            )));
        }
        if self.idempotent && self.max_in_flight_per_partition > MAX_IN_FLIGHT_IDEMPOTENT {
            return Err(ClientError::InvalidArgument(format!(
                "an idempotent producer allows at most {MAX_IN_FLIGHT_IDEMPOTENT} batches in \
                 flight per partition, not {}",
                self.max_in_flight_per_partition
            )));
        }
        if self.buffer_bytes == 0 {
            return Err(ClientError::InvalidArgument(
                "buffer_bytes must be at least 1".into(),
            ));
        }
        self.retry_backoff_max = self.retry_backoff_max.max(self.retry_backoff);
        Ok(self)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.min(16);
        self.retry_backoff
            .saturating_mul(factor)
            .min(self.retry_backoff_max)
    }
}

/// Where a record was stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: u32,
    /// The record's offset; `None` under [`Acks::None`], which gets no
    /// answer from the broker.
    pub offset: Option<u64>,
}

/// The shared outcome of every record in one batch: the base offset (or
/// `None` under `Acks::None`), or the error.
pub(crate) struct BatchCompletion {
    result: OnceLock<Result<Option<u64>, ClientError>>,
    notify: Notify,
}

impl BatchCompletion {
    fn new() -> BatchCompletion {
        BatchCompletion {
            result: OnceLock::new(),
            notify: Notify::new(),
        }
    }

    /// Sets the outcome unless one is set already, and wakes the waiters.
    fn complete(&self, result: Result<Option<u64>, ClientError>) {
        if self.result.set(result).is_ok() {
            self.notify.notify_waiters();
        }
    }

    async fn wait(&self) -> &Result<Option<u64>, ClientError> {
        // Fast path: every record of a batch waits on the same completion,
        // and all but the first usually find it done.
        if let Some(result) = self.result.get() {
            return result;
        }
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(result) = self.result.get() {
                return result;
            }
            notified.await;
        }
    }
}

/// The pending outcome of one [`Producer::send`].
///
/// Dropping it does not cancel the send.
pub struct Delivery {
    completion: Arc<BatchCompletion>,
    topic: Arc<str>,
    partition: u32,
    offset_delta: u32,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("offset_delta", &self.offset_delta)
            .finish()
    }
}

impl Delivery {
    /// The partition the record was assigned to.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Waits until the record's batch reaches a final outcome.
    pub async fn wait(self) -> Result<RecordMetadata, ClientError> {
        match self.completion.wait().await {
            Ok(base) => Ok(RecordMetadata {
                topic: self.topic,
                partition: self.partition,
                offset: base.map(|b| b + u64::from(self.offset_delta)),
            }),
            Err(e) => Err(e.clone()),
        }
    }
}

/// A sealed batch on its way to the broker.
struct SealedBatch {
    /// Producer-wide number, increasing in seal order; within a partition
    /// it orders the batches.
    seq: u64,
    topic: Arc<str>,
    partition: u32,
    bytes: Bytes,
    /// The producer stamp in `bytes`, or [`ProducerStamp::NONE`].
    stamp: ProducerStamp,
    /// Records in the batch.
    records: u32,
    /// Bytes this batch holds against `buffer_bytes`.
    accounted: usize,
    completion: Arc<BatchCompletion>,
    sealed_at: Instant,
    attempts: u32,
}

impl Drop for SealedBatch {
    fn drop(&mut self) {
        // Reached only if the sender task dies with the batch unresolved;
        // never leave a Delivery waiting forever.
        self.completion.complete(Err(ClientError::Closed));
    }
}

enum Command {
    /// A batch was opened; seal it at `deadline` if it is still open.
    Opened {
        topic: Arc<str>,
        partition: u32,
        seq: u64,
        deadline: Instant,
    },
    Sealed(SealedBatch),
    /// Answer once every batch sealed before this command is resolved.
    Flush(oneshot::Sender<()>),
    /// Like `Flush`, then stop the task.
    Close(oneshot::Sender<()>),
    /// Transactional producers only: a new epoch starts and every
    /// partition is usable again (see [`Producer::restart_sequences`]).
    Restart,
}

struct OpenBatch {
    seq: u64,
    first_ts: i64,
    builder: BatchBuilder,
    completion: Arc<BatchCompletion>,
    record_bytes: usize,
}

struct Accumulator {
    open: Option<OpenBatch>,
    /// Capacity to reserve for the next batch: the size of the last one,
    /// so steady traffic never regrows the buffer.
    next_capacity: usize,
    /// The partition's epoch and next sequence; used only when idempotent.
    /// Batches take their stamp here when sealed, under the state lock, so
    /// stamps follow seal order.
    seq: Sequencer,
}

impl Accumulator {
    fn new(epoch: i16) -> Accumulator {
        Accumulator {
            open: None,
            next_capacity: MIN_BATCH_CAPACITY,
            seq: Sequencer::new(epoch),
        }
    }
}

struct TopicState {
    name: Arc<str>,
    partitions: Vec<Accumulator>,
    /// Partition for records without a key; moves on when its batch seals.
    sticky: u32,
}

impl Named for TopicState {
    fn name(&self) -> &str {
        &self.name
    }
}

struct State {
    topics: TopicTable<TopicState>,
    next_seq: u64,
    closed: bool,
    /// Epoch of partitions first used from now on; changes only through
    /// [`Producer::restart_sequences`].
    epoch: i16,
}

/// State shared by the producer handles and the sender task.
struct Shared {
    config: ProducerConfig,
    /// Producer id and initial epoch from `InitProducerId`; `None` when not
    /// idempotent.
    producer: Option<(i64, i16)>,
    /// Batches carry the transactional bit (see `crate::transactional`).
    transactional: bool,
    state: Mutex<State>,
    unacked_bytes: AtomicUsize,
    space: Notify,
}

impl Shared {
    fn release(&self, bytes: usize) {
        self.unacked_bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.space.notify_waiters();
    }

    /// Seals the open batch of `topic`/`partition`, if any, handing it to
    /// `sink`.
    fn seal(&self, topic: &mut TopicState, partition: u32, sink: &mut impl FnMut(Command)) {
        let n = topic.partitions.len() as u32;
        let acc = &mut topic.partitions[partition as usize];
        let Some(open) = acc.open.take() else {
            return;
        };
        let records = open.builder.len();
        let stamp = match self.producer {
            Some((producer_id, _)) => acc.seq.stamp(producer_id, records),
            None => ProducerStamp::NONE,
        };
        let bytes = open
            .builder
            .producer(stamp)
            .transactional(self.transactional)
            .finish();
        acc.next_capacity = bytes.len().clamp(
            MIN_BATCH_CAPACITY.min(self.config.batch_bytes),
            self.config.batch_bytes,
        );
        if topic.sticky == partition {
            topic.sticky = (partition + 1) % n;
        }
        sink(Command::Sealed(SealedBatch {
            seq: open.seq,
            topic: topic.name.clone(),
            partition,
            bytes,
            stamp,
            records,
            accounted: open.record_bytes,
            completion: open.completion,
            sealed_at: Instant::now(),
            attempts: 0,
        }));
    }

    fn seal_all(&self, state: &mut State, sink: &mut impl FnMut(Command)) {
        for topic in state.topics.iter_mut() {
            for p in 0..topic.partitions.len() as u32 {
                self.seal(topic, p, sink);
            }
        }
    }
}

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
        self.send_inner(topic, None, key, value).await
    }

    /// Sends a record to an explicit partition.
    pub async fn send_to(
        &self,
        topic: &str,
        partition: u32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<Delivery, ClientError> {
        self.send_inner(topic, Some(partition), key, value).await
    }

    async fn send_inner(
        &self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<Delivery, ClientError> {
        let shared = &*self.inner.shared;
        let max_record = MAX_BATCH_BYTES - HEADER_LEN;
        let approx = key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len);
        if approx > max_record {
            return Err(ClientError::InvalidArgument(format!(
                "a record of {approx} bytes exceeds the batch limit of {max_record} bytes"
            )));
        }
        self.wait_for_space().await?;
        loop {
            let outcome = {
                let mut state = shared.state.lock();
                if state.closed {
                    return Err(ClientError::Closed);
                }
                let state = &mut *state;
                match state.topics.find(topic) {
                    None => None,
                    Some(i) => {
                        let ts = &mut state.topics[i];
                        Some(self.append(ts, &mut state.next_seq, partition, key, value)?)
                    }
                }
            };
            match outcome {
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

    /// Copies one record into its partition's open batch. Returns the
    /// delivery and whether a batch was sealed.
    fn append(
        &self,
        ts: &mut TopicState,
        next_seq: &mut u64,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<(Delivery, bool), ClientError> {
        let shared = &*self.inner.shared;
        let n = ts.partitions.len() as u32;
        let pick = |ts: &TopicState| match (partition, key) {
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, n),
            (None, None) => ts.sticky,
        };
        let mut p = pick(ts);
        if p >= n {
            return Err(ClientError::broker(
                ErrorCode::UnknownTopicOrPartition,
                format!("topic {} has no partition {p} (it has {n})", ts.name),
            ));
        }
        let tx = &self.inner.tx;
        let mut sink = |c| {
            let _ = tx.send(c);
        };
        let now_ms = ferry_proto::now_ms();
        let batch_bytes = shared.config.batch_bytes;
        let linger = shared.config.linger;
        let mut sealed = false;
        // Seal first if the record does not fit; a keyless record then
        // follows the sticky partition to its new place. Every round seals
        // one open batch, so this ends.
        let payload = key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len);
        while let Some(open) = &ts.partitions[p as usize].open {
            // The exact size costs a second pass over the varints; the
            // upper bound settles nearly every record.
            let fits = open.builder.size() + payload + MAX_RECORD_OVERHEAD <= batch_bytes
                || open.builder.size()
                    + BatchBuilder::record_size(
                        open.builder.len(),
                        now_ms.wrapping_sub(open.first_ts),
                        key,
                        value,
                        &[],
                    )
                    <= batch_bytes;
            if fits {
                break;
            }
            shared.seal(ts, p, &mut sink);
            sealed = true;
            p = pick(ts);
        }
        let name = ts.name.clone();
        let acc = &mut ts.partitions[p as usize];
        let open = acc.open.get_or_insert_with(|| {
            let seq = *next_seq;
            *next_seq += 1;
            sink(Command::Opened {
                topic: name.clone(),
                partition: p,
                seq,
                deadline: Instant::now() + linger,
            });
            OpenBatch {
                seq,
                first_ts: now_ms,
                builder: BatchBuilder::with_capacity(now_ms, acc.next_capacity),
                completion: Arc::new(BatchCompletion::new()),
                record_bytes: 0,
            }
        });
        let before = open.builder.size();
        let offset_delta = open.builder.len();
        open.builder.push(now_ms, key, value, &[]);
        let added = open.builder.size() - before;
        open.record_bytes += added;
        shared.unacked_bytes.fetch_add(added, Ordering::AcqRel);
        let delivery = Delivery {
            completion: open.completion.clone(),
            topic: name,
            partition: p,
            offset_delta,
        };
        if open.builder.size() >= batch_bytes {
            shared.seal(ts, p, &mut sink);
            sealed = true;
        }
        Ok((delivery, sealed))
    }

    async fn load_topic(&self, topic: &str) -> Result<(), ClientError> {
        // Metadata is fetched on the first send to a topic, which may fall
        // while the broker restarts: retry what is retriable, within the
        // delivery timeout, like any send.
        let config = &self.inner.shared.config;
        let started = tokio::time::Instant::now();
        let mut attempt = 0;
        let description = loop {
            match self.inner.client.describe_topic(topic).await {
                Ok(d) => break d,
                Err(e) if e.is_retriable() && started.elapsed() < config.delivery_timeout => {
                    tokio::time::sleep(config.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
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
    /// has succeeded or failed. Individual failures are reported through
    /// each record's [`Delivery`], not here.
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
        rx.await.map_err(|_| ClientError::Closed)
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

// Hooks for `crate::transactional`. The transactional producer drives an
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

impl Delivery {
    /// Whether both records are in the same batch (share one outcome).
    pub(crate) fn same_batch(&self, other: &Delivery) -> bool {
        Arc::ptr_eq(&self.completion, &other.completion)
    }
}

impl Clone for Delivery {
    fn clone(&self) -> Delivery {
        Delivery {
            completion: self.completion.clone(),
            topic: self.topic.clone(),
            partition: self.partition,
            offset_delta: self.offset_delta,
        }
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

/// A starting sticky partition that differs between producers, so that
/// many short-lived producers do not all pile onto partition 0.
fn start_partition(n: u32) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos % n
}

type StreamResult = Result<tonic::Response<Streaming<v1::ProduceResponse>>, tonic::Status>;
type ConnectFuture = Pin<Box<dyn Future<Output = StreamResult> + Send>>;

enum Conn {
    /// No stream; reconnect at `retry_at` once there is work.
    Down { retry_at: Instant },
    /// The call is starting. Requests may queue already.
    Connecting {
        req_tx: mpsc::Sender<v1::ProduceRequest>,
        call: ConnectFuture,
    },
    Up {
        req_tx: mpsc::Sender<v1::ProduceRequest>,
        responses: Box<Streaming<v1::ProduceResponse>>,
    },
}

impl Conn {
    fn req_tx(&self) -> Option<&mpsc::Sender<v1::ProduceRequest>> {
        match self {
            Conn::Down { .. } => None,
            Conn::Connecting { req_tx, .. } | Conn::Up { req_tx, .. } => Some(req_tx),
        }
    }
}

enum ConnEvent {
    Connected(Result<Box<Streaming<v1::ProduceResponse>>, tonic::Status>),
    Response(Result<Option<v1::ProduceResponse>, tonic::Status>),
    /// The request queue has room again.
    Space,
}

/// Waits for the next thing the connection has to say. Pending forever
/// when there is no connection.
async fn conn_event(conn: &mut Conn, want_space: bool) -> ConnEvent {
    match conn {
        Conn::Down { .. } => std::future::pending().await,
        Conn::Connecting { req_tx, call } => tokio::select! {
            r = call.as_mut() => ConnEvent::Connected(r.map(|r| Box::new(r.into_inner()))),
            _ = req_tx.reserve(), if want_space => ConnEvent::Space,
        },
        Conn::Up { req_tx, responses } => tokio::select! {
            r = responses.message() => ConnEvent::Response(r),
            _ = req_tx.reserve(), if want_space => ConnEvent::Space,
        },
    }
}

#[derive(Default)]
struct PartitionQueue {
    /// Sealed batches not yet sent, ordered by `seq`.
    pending: VecDeque<SealedBatch>,
    /// Correlation ids of batches sent and not yet answered, in send order.
    in_flight: VecDeque<u64>,
    /// No sends before this (backoff after a retriable error).
    retry_at: Option<Instant>,
    /// Set when the partition's idempotent sequence is broken beyond
    /// repair: every later batch fails with this error.
    fatal: Option<ClientError>,
}

impl PartitionQueue {
    /// Puts a batch back in `seq` order, so retries keep the original order.
    fn requeue(&mut self, batch: SealedBatch) {
        let at = self.pending.partition_point(|b| b.seq < batch.seq);
        self.pending.insert(at, batch);
    }

    /// Whether a batch sealed before `seq` is still unresolved: waiting in
    /// the queue, or in flight.
    fn has_unresolved_before(&self, seq: u64, in_flight: &HashMap<u64, SealedBatch>) -> bool {
        self.pending.front().is_some_and(|b| b.seq < seq)
            || self
                .in_flight
                .iter()
                .any(|c| in_flight.get(c).is_some_and(|b| b.seq < seq))
    }
}

/// Outstanding batches and the flushes waiting on them.
struct Tracker {
    shared: Arc<Shared>,
    outstanding: BTreeSet<u64>,
    flushes: Vec<(u64, oneshot::Sender<()>)>,
}

impl Tracker {
    fn complete(&mut self, batch: SealedBatch, result: Result<Option<u64>, ClientError>) {
        self.outstanding.remove(&batch.seq);
        self.shared.release(batch.accounted);
        batch.completion.complete(result);
        if !self.flushes.is_empty() {
            let oldest = self.outstanding.first().copied();
            let mut i = 0;
            while i < self.flushes.len() {
                if oldest.is_none_or(|o| o > self.flushes[i].0) {
                    let (_, tx) = self.flushes.swap_remove(i);
                    let _ = tx.send(());
                } else {
                    i += 1;
                }
            }
        }
    }

    fn add_flush(&mut self, tx: oneshot::Sender<()>) {
        match self.outstanding.last() {
            None => {
                let _ = tx.send(());
            }
            Some(&newest) => self.flushes.push((newest, tx)),
        }
    }
}

type PartitionKey = (Arc<str>, u32);

/// The background task: owns the `ProduceStream` and every sealed batch.
struct SenderTask {
    shared: Arc<Shared>,
    client: Client,
    acks: v1::Acks,
    idempotent: bool,
    rx: mpsc::UnboundedReceiver<Command>,
    rx_open: bool,
    lingers: VecDeque<(Instant, Arc<str>, u32, u64)>,
    partitions: HashMap<PartitionKey, PartitionQueue>,
    in_flight: HashMap<u64, SealedBatch>,
    /// Correlation ids of requests still on the stream whose batches were
    /// taken back for renumbering or failed; their answers are ignored.
    abandoned: HashSet<u64>,
    tracker: Tracker,
    conn: Conn,
    conn_failures: u32,
    next_correlation_id: u64,
    /// The request queue was full on the last pump.
    blocked: bool,
    closers: Vec<oneshot::Sender<()>>,
    next_expiry_check: Instant,
}

impl SenderTask {
    fn new(
        shared: Arc<Shared>,
        client: Client,
        rx: mpsc::UnboundedReceiver<Command>,
    ) -> SenderTask {
        let now = Instant::now();
        SenderTask {
            acks: shared.config.acks.to_proto(),
            idempotent: shared.producer.is_some(),
            tracker: Tracker {
                shared: shared.clone(),
                outstanding: BTreeSet::new(),
                flushes: Vec::new(),
            },
            shared,
            client,
            rx,
            rx_open: true,
            lingers: VecDeque::new(),
            partitions: HashMap::new(),
            in_flight: HashMap::new(),
            abandoned: HashSet::new(),
            conn: Conn::Down { retry_at: now },
            conn_failures: 0,
            next_correlation_id: 0,
            blocked: false,
            closers: Vec::new(),
            next_expiry_check: now + EXPIRY_CHECK_INTERVAL,
        }
    }

    fn has_work(&self) -> bool {
        !self.tracker.outstanding.is_empty()
    }

    fn finished(&self) -> bool {
        (!self.rx_open || !self.closers.is_empty()) && !self.has_work()
    }

    async fn run(mut self) {
        loop {
            if self.finished() {
                break;
            }
            let now = Instant::now();
            self.maybe_connect(now);
            self.pump(now);
            let deadline = self.next_deadline(now);
            enum Event {
                Command(Option<Command>),
                Timer,
                Conn(ConnEvent),
            }
            let event = tokio::select! {
                c = self.rx.recv(), if self.rx_open => Event::Command(c),
                _ = tokio::time::sleep_until(deadline) => Event::Timer,
                e = conn_event(&mut self.conn, self.blocked) => Event::Conn(e),
            };
            match event {
                Event::Command(Some(c)) => {
                    self.handle_command(c);
                    // Take what else queued up without a trip through the
                    // select, bounded so responses are never starved.
                    for _ in 0..MAX_COMMANDS_PER_WAKEUP {
                        let Ok(c) = self.rx.try_recv() else { break };
                        self.handle_command(c);
                    }
                }
                Event::Command(None) => self.rx_open = false,
                Event::Timer => {}
                Event::Conn(ConnEvent::Space) => self.blocked = false,
                Event::Conn(ConnEvent::Connected(Ok(response))) => {
                    if let Conn::Connecting { req_tx, .. } =
                        std::mem::replace(&mut self.conn, Conn::Down { retry_at: now })
                    {
                        self.conn = Conn::Up {
                            req_tx,
                            responses: response,
                        };
                    }
                }
                Event::Conn(ConnEvent::Connected(Err(status))) => self.broken(&status.into()),
                Event::Conn(ConnEvent::Response(Ok(Some(r)))) => self.handle_response(r),
                Event::Conn(ConnEvent::Response(Ok(None))) => self.broken(&ClientError::broker(
                    ErrorCode::NetworkError,
                    "the broker closed the produce stream",
                )),
                Event::Conn(ConnEvent::Response(Err(status))) => self.broken(&status.into()),
            }
            let now = Instant::now();
            self.seal_lingered(now);
            if now >= self.next_expiry_check {
                self.expire(now);
                self.next_expiry_check = now + EXPIRY_CHECK_INTERVAL;
            }
        }
        for tx in self.closers.drain(..) {
            let _ = tx.send(());
        }
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Opened {
                topic,
                partition,
                seq,
                deadline,
            } => self.lingers.push_back((deadline, topic, partition, seq)),
            Command::Sealed(batch) => {
                self.tracker.outstanding.insert(batch.seq);
                let key = (batch.topic.clone(), batch.partition);
                let q = self.partitions.entry(key).or_default();
                match &q.fatal {
                    Some(error) => self.tracker.complete(batch, Err(error.clone())),
                    None => q.requeue(batch),
                }
            }
            Command::Flush(tx) => self.tracker.add_flush(tx),
            // The loop ends once nothing is outstanding; nothing new can
            // arrive because the producer is marked closed.
            Command::Close(tx) => self.closers.push(tx),
            Command::Restart => {
                for q in self.partitions.values_mut() {
                    q.fatal = None;
                    q.retry_at = None;
                }
            }
        }
    }

    /// Seals batches whose linger ran out. Linger is one constant, so
    /// deadlines arrive in order and a queue suffices.
    fn seal_lingered(&mut self, now: Instant) {
        if self.lingers.front().is_none_or(|(d, ..)| *d > now) {
            return;
        }
        let mut sealed = Vec::new();
        {
            let mut state = self.shared.state.lock();
            // Batches the application sealed before now are in the channel;
            // take them first so each partition's batches stay in order.
            while let Ok(c) = self.rx.try_recv() {
                sealed.push(c);
            }
            while let Some((deadline, ..)) = self.lingers.front() {
                if *deadline > now {
                    break;
                }
                let Some((_, topic, partition, seq)) = self.lingers.pop_front() else {
                    break;
                };
                if let Some(i) = state.topics.position(&topic) {
                    let ts = &mut state.topics[i];
                    let still_open = ts.partitions[partition as usize]
                        .open
                        .as_ref()
                        .is_some_and(|o| o.seq == seq);
                    if still_open {
                        self.shared.seal(ts, partition, &mut |c| sealed.push(c));
                    }
                }
            }
        }
        for c in sealed {
            self.handle_command(c);
        }
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        let mut deadline = now + Duration::from_secs(3600);
        if let Some((d, ..)) = self.lingers.front() {
            deadline = deadline.min(*d);
        }
        if self.has_work() {
            deadline = deadline.min(self.next_expiry_check);
            if let Conn::Down { retry_at } = &self.conn {
                deadline = deadline.min(*retry_at);
            }
            // Past retry times are due at the next pump; counting them here
            // would spin while the connection is down.
            for q in self.partitions.values() {
                if let Some(t) = q.retry_at.filter(|t| *t > now && !q.pending.is_empty()) {
                    deadline = deadline.min(t);
                }
            }
        }
        deadline.max(now)
    }

    fn maybe_connect(&mut self, now: Instant) {
        let Conn::Down { retry_at } = &self.conn else {
            return;
        };
        if !self.has_work() || *retry_at > now {
            return;
        }
        let (req_tx, req_rx) = mpsc::channel(REQUEST_QUEUE_LEN);
        let mut raw = self.client.raw();
        let call: ConnectFuture =
            Box::pin(async move { raw.produce_stream(ReceiverStream::new(req_rx)).await });
        self.conn = Conn::Connecting { req_tx, call };
        self.blocked = false;
    }

    /// Sends every batch that may go now, until the request queue is full.
    fn pump(&mut self, now: Instant) {
        let Some(req_tx) = self.conn.req_tx() else {
            return;
        };
        if self.blocked {
            return;
        }
        let max_in_flight = self.shared.config.max_in_flight_per_partition;
        let acks_none = self.acks == v1::Acks::None;
        let mut closed = false;
        'partitions: for q in self.partitions.values_mut() {
            if q.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            q.retry_at = None;
            while !q.pending.is_empty() && q.in_flight.len() < max_in_flight {
                let permit = match req_tx.try_reserve() {
                    Ok(permit) => permit,
                    Err(mpsc::error::TrySendError::Full(())) => {
                        self.blocked = true;
                        break 'partitions;
                    }
                    Err(mpsc::error::TrySendError::Closed(())) => {
                        closed = true;
                        break 'partitions;
                    }
                };
                let Some(mut batch) = q.pending.pop_front() else {
                    break;
                };
                let correlation_id = self.next_correlation_id;
                self.next_correlation_id += 1;
                batch.attempts += 1;
                permit.send(v1::ProduceRequest {
                    correlation_id,
                    topic: batch.topic.to_string(),
                    partition: batch.partition,
                    acks: self.acks as i32,
                    batch: batch.bytes.clone(),
                });
                if acks_none {
                    self.tracker.complete(batch, Ok(None));
                } else {
                    q.in_flight.push_back(correlation_id);
                    self.in_flight.insert(correlation_id, batch);
                }
            }
        }
        if closed {
            self.broken(&ClientError::broker(
                ErrorCode::NetworkError,
                "the produce stream closed",
            ));
        }
    }

    fn handle_response(&mut self, r: v1::ProduceResponse) {
        self.conn_failures = 0;
        if self.abandoned.remove(&r.correlation_id) {
            return;
        }
        let Some(batch) = self.in_flight.remove(&r.correlation_id) else {
            if r.error_code != 0 {
                // Acks::None batches, or batches that already timed out.
                tracing::warn!(
                    correlation_id = r.correlation_id,
                    code = %ErrorCode::from_u32(r.error_code),
                    message = %r.error_message,
                    "produce failed for a batch already reported as sent"
                );
            }
            return;
        };
        let key = (batch.topic.clone(), batch.partition);
        let q = self.partitions.entry(key.clone()).or_default();
        if let Some(i) = q.in_flight.iter().position(|c| *c == r.correlation_id) {
            q.in_flight.remove(i);
        }
        if r.error_code == 0 {
            self.tracker.complete(batch, Ok(Some(r.base_offset)));
            return;
        }
        let code = ErrorCode::from_u32(r.error_code);
        let error = ClientError::broker(code, r.error_message);
        let earlier = q.has_unresolved_before(batch.seq, &self.in_flight);
        let mut action = decide(code, self.idempotent, earlier);
        if self.shared.transactional {
            action = crate::transactional::within_transaction(action);
        }
        let now = Instant::now();
        let timeout = self.shared.config.delivery_timeout;
        match action {
            Action::Retry | Action::AwaitPredecessor | Action::Renumber
                if now.duration_since(batch.sealed_at) >= timeout =>
            {
                self.tracker.complete(batch, Err(delivery_timeout(timeout)));
            }
            Action::Retry => {
                tracing::debug!(
                    topic = %batch.topic,
                    partition = batch.partition,
                    epoch = batch.stamp.producer_epoch,
                    sequence = batch.stamp.base_sequence,
                    %error,
                    "retrying batch"
                );
                q.retry_at =
                    Some(now + self.shared.config.backoff(batch.attempts.saturating_sub(1)));
                q.requeue(batch);
            }
            Action::AwaitPredecessor => {
                tracing::debug!(
                    topic = %batch.topic,
                    partition = batch.partition,
                    %error,
                    "batch arrived before its predecessor; resending after it"
                );
                q.requeue(batch);
            }
            Action::Fail => self.tracker.complete(batch, Err(error)),
            Action::Renumber => {
                tracing::warn!(
                    topic = %batch.topic,
                    partition = batch.partition,
                    %error,
                    "the broker does not know this producer here; bumping the epoch and renumbering"
                );
                q.requeue(batch);
                if let Err(e) = self.renumber(&key) {
                    self.fail_partition(&key, None, e);
                }
            }
            Action::FailAndRenumber => {
                self.tracker.complete(batch, Err(error));
                if let Err(e) = self.renumber(&key) {
                    self.fail_partition(&key, None, e);
                }
            }
            Action::FailPartition => self.fail_partition(&key, Some(batch), error),
        }
    }

    /// Fails `batch` and every other unresolved batch of the partition with
    /// `error`, and marks the partition so later batches fail too. Used
    /// when the idempotent sequence cannot be repaired; it is logged as an
    /// error and every affected delivery reports it.
    fn fail_partition(
        &mut self,
        key: &PartitionKey,
        batch: Option<SealedBatch>,
        error: ClientError,
    ) {
        tracing::error!(
            topic = %key.0,
            partition = key.1,
            %error,
            "idempotent sequence broken; failing this and every later batch of the partition"
        );
        if let Some(batch) = batch {
            self.tracker.complete(batch, Err(error.clone()));
        }
        // Batches sealed but still in the channel fail on arrival, through
        // `fatal`.
        let q = self.partitions.entry(key.clone()).or_default();
        for c in q.in_flight.drain(..) {
            if let Some(b) = self.in_flight.remove(&c) {
                self.abandoned.insert(c);
                self.tracker.complete(b, Err(error.clone()));
            }
        }
        for b in q.pending.drain(..) {
            self.tracker.complete(b, Err(error.clone()));
        }
        q.retry_at = None;
        q.fatal = Some(error);
    }

    /// Moves the partition to its next epoch and renumbers its unresolved
    /// batches from sequence 0, in seal order. Batches in flight are taken
    /// back first: the broker refuses them (their sequence does not follow
    /// anything it stored), so their answers are ignored and they are sent
    /// again with their new numbers.
    fn renumber(&mut self, key: &PartitionKey) -> Result<(), ClientError> {
        let Some((producer_id, _)) = self.shared.producer else {
            return Ok(());
        };
        let shared = self.shared.clone();
        // Under the state lock nothing new is sealed, and every batch
        // sealed so far is in the channel or already here.
        let mut state = shared.state.lock();
        while let Ok(c) = self.rx.try_recv() {
            self.handle_command(c);
        }
        let q = self.partitions.entry(key.clone()).or_default();
        if q.fatal.is_some() {
            return Ok(());
        }
        for c in std::mem::take(&mut q.in_flight) {
            if let Some(b) = self.in_flight.remove(&c) {
                self.abandoned.insert(c);
                q.requeue(b);
            }
        }
        let acc = state
            .topics
            .position(&key.0)
            .and_then(|i| state.topics[i].partitions.get_mut(key.1 as usize))
            .expect("a partition with batches has an accumulator");
        acc.seq.bump()?;
        for b in &mut q.pending {
            let stamp = acc.seq.stamp(producer_id, b.records);
            b.bytes = restamp(&b.bytes, stamp);
            b.stamp = stamp;
        }
        tracing::info!(
            topic = %key.0,
            partition = key.1,
            epoch = acc.seq.epoch,
            batches = q.pending.len(),
            "renumbered the partition's unacked batches under a new epoch"
        );
        Ok(())
    }

    /// The stream failed: every in-flight batch goes back to its queue in
    /// order, and a new stream opens after a backoff.
    fn broken(&mut self, error: &ClientError) {
        if self.has_work() {
            tracing::warn!(%error, "produce stream broke; reconnecting");
        } else {
            tracing::debug!(%error, "idle produce stream closed");
        }
        let now = Instant::now();
        let backoff = self.shared.config.backoff(self.conn_failures);
        self.conn_failures = self.conn_failures.saturating_add(1);
        self.conn = Conn::Down {
            retry_at: now + backoff,
        };
        self.blocked = false;
        // Nothing more arrives on the old stream.
        self.abandoned.clear();
        let timeout = self.shared.config.delivery_timeout;
        for (_, batch) in self.in_flight.drain() {
            let key = (batch.topic.clone(), batch.partition);
            let q = self.partitions.entry(key).or_default();
            q.in_flight.clear();
            if now.duration_since(batch.sealed_at) >= timeout {
                self.tracker.complete(batch, Err(delivery_timeout(timeout)));
            } else {
                q.requeue(batch);
            }
        }
    }

    /// Fails batches past their delivery timeout, waiting or in flight.
    /// Batches of a partition were sealed in `seq` order, so only the front
    /// of each queue needs a look.
    fn expire(&mut self, now: Instant) {
        let timeout = self.shared.config.delivery_timeout;
        let expired = |b: &SealedBatch| now.duration_since(b.sealed_at) >= timeout;
        for q in self.partitions.values_mut() {
            while q.pending.front().is_some_and(expired) {
                if let Some(batch) = q.pending.pop_front() {
                    self.tracker.complete(batch, Err(delivery_timeout(timeout)));
                }
            }
            while let Some(&c) = q.in_flight.front() {
                if !self.in_flight.get(&c).is_some_and(expired) {
                    break;
                }
                if let Some(batch) = self.in_flight.remove(&c) {
                    self.tracker.complete(batch, Err(delivery_timeout(timeout)));
                }
                q.in_flight.pop_front();
            }
        }
    }
}

fn delivery_timeout(timeout: Duration) -> ClientError {
    ClientError::Timeout {
        what: "delivery",
        after_ms: timeout.as_millis() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A producer whose broker never answers, with `topic` known to have
    /// `partitions` partitions, so tests can watch the accumulator.
    async fn offline(config: ProducerConfig, topic: &str, partitions: u32) -> Producer {
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
        let mut state = producer.inner.shared.state.lock();
        state.topics.insert(TopicState {
            name: Arc::from(topic),
            partitions: (0..partitions).map(|_| Accumulator::new(0)).collect(),
            sticky: 0,
        });
        drop(state);
        producer
    }

    fn slow_linger() -> ProducerConfig {
        ProducerConfig {
            linger: Duration::from_secs(3600),
            ..ProducerConfig::default()
        }
    }

    #[test]
    fn acks_parse_and_display() {
        for acks in [Acks::None, Acks::Leader, Acks::All] {
            assert_eq!(acks.to_string().parse::<Acks>().unwrap(), acks);
        }
        let err = "2".parse::<Acks>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid argument: unknown acks \"2\": expected one of none, leader, all"
        );
    }

    #[test]
    fn config_is_checked_and_capped() {
        let c = ProducerConfig {
            batch_bytes: usize::MAX,
            ..ProducerConfig::default()
        }
        .normalized()
        .unwrap();
        assert_eq!(c.batch_bytes, MAX_BATCH_BYTES);
        for bad in [
            ProducerConfig {
                batch_bytes: HEADER_LEN,
                ..ProducerConfig::default()
            },
            ProducerConfig {
                max_in_flight_per_partition: 0,
                ..ProducerConfig::default()
            },
            ProducerConfig {
                max_in_flight_per_partition: MAX_IN_FLIGHT_IDEMPOTENT + 1,
                ..ProducerConfig::default()
            },
        ] {
            assert!(matches!(
                bad.normalized(),
                Err(ClientError::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn idempotence_is_the_default_and_needs_acks_all() {
        assert!(ProducerConfig::default().idempotent);
        for acks in [Acks::None, Acks::Leader] {
            let err = ProducerConfig {
                acks,
                ..ProducerConfig::default()
            }
            .normalized()
            .unwrap_err();
            assert!(
                matches!(&err, ClientError::InvalidArgument(m) if m.contains("needs acks=all")),
                "{err}"
            );
            ProducerConfig {
                acks,
                idempotent: false,
                max_in_flight_per_partition: 20,
                ..ProducerConfig::default()
            }
            .normalized()
            .unwrap();
        }
    }

    /// Seals every open batch of topic `t` and returns them in seal order.
    fn seal_now(producer: &Producer) -> Vec<SealedBatch> {
        let shared = &producer.inner.shared;
        let mut state = shared.state.lock();
        let mut out = Vec::new();
        shared.seal_all(&mut state, &mut |c| {
            if let Command::Sealed(b) = c {
                out.push(b);
            }
        });
        out
    }

    #[tokio::test]
    async fn batches_are_stamped_at_seal_with_sequences_counting_records() {
        let producer = offline(slow_linger(), "t", 2).await;
        let mut stamps = Vec::new();
        for (p, n) in [(0u32, 3), (1, 2), (0, 1), (0, 4)] {
            for _ in 0..n {
                producer.send_to("t", p, None, Some(b"v")).await.unwrap();
            }
            for b in seal_now(&producer) {
                let h = ferry_proto::batch::ValidBatch::exact(&b.bytes)
                    .unwrap()
                    .header()
                    .to_owned();
                assert_eq!(
                    (h.producer_id, h.producer_epoch, h.base_sequence),
                    (
                        b.stamp.producer_id,
                        b.stamp.producer_epoch,
                        b.stamp.base_sequence
                    )
                );
                assert_eq!(h.record_count, b.records);
                stamps.push((b.partition, h.producer_id, h.base_sequence, b.records));
            }
        }
        assert_eq!(
            stamps,
            vec![(0, 77, 0, 3), (1, 77, 0, 2), (0, 77, 3, 1), (0, 77, 4, 4)],
            "each partition counts its own records from 0"
        );
    }

    #[tokio::test]
    async fn batches_of_a_plain_producer_carry_no_stamp() {
        let config = ProducerConfig {
            idempotent: false,
            ..slow_linger()
        };
        let producer = offline(config, "t", 1).await;
        producer.send("t", None, Some(b"v")).await.unwrap();
        let sealed = seal_now(&producer);
        let h = ferry_proto::batch::BatchHeader::decode(&sealed[0].bytes).unwrap();
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (-1, -1, -1)
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = ProducerConfig::default();
        assert_eq!(c.backoff(0), Duration::from_millis(50));
        assert_eq!(c.backoff(1), Duration::from_millis(100));
        assert_eq!(c.backoff(4), Duration::from_millis(800));
        assert_eq!(c.backoff(5), Duration::from_secs(1));
        assert_eq!(c.backoff(u32::MAX), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_batch_is_sealed_before_it_would_exceed_batch_bytes() {
        let config = ProducerConfig {
            batch_bytes: 1000,
            ..slow_linger()
        };
        let producer = offline(config, "t", 1).await;
        let value = [7u8; 100];
        let mut deliveries = Vec::new();
        for _ in 0..30 {
            deliveries.push(producer.send("t", None, Some(&value)).await.unwrap());
        }
        // Records of one batch share one completion.
        let mut batches: Vec<Vec<u32>> = Vec::new();
        for (i, d) in deliveries.iter().enumerate() {
            let same = i > 0 && Arc::ptr_eq(&d.completion, &deliveries[i - 1].completion);
            if same {
                batches.last_mut().unwrap().push(d.offset_delta);
            } else {
                batches.push(vec![d.offset_delta]);
            }
        }
        let per_batch =
            (1000 - HEADER_LEN) / BatchBuilder::record_size(0, 0, None, Some(&value), &[]);
        assert!(batches.len() >= 30 / per_batch);
        for b in &batches[..batches.len() - 1] {
            assert_eq!(b.len(), per_batch, "{batches:?}");
            assert_eq!(b, &(0..per_batch as u32).collect::<Vec<_>>());
        }
        assert_eq!(
            producer.unacked_bytes(),
            30 * BatchBuilder::record_size(0, 0, None, Some(&value), &[])
        );
    }

    #[tokio::test]
    async fn keyless_records_stick_to_a_partition_until_its_batch_seals() {
        let config = ProducerConfig {
            batch_bytes: 600,
            ..slow_linger()
        };
        let producer = offline(config, "t", 3).await;
        let mut partitions = Vec::new();
        for _ in 0..40 {
            let d = producer.send("t", None, Some(&[0u8; 100])).await.unwrap();
            partitions.push(d.partition());
        }
        let mut runs = partitions.clone();
        runs.dedup();
        assert!(runs.len() > 3, "the sticky partition moves: {partitions:?}");
        for pair in runs.windows(2) {
            assert_eq!(pair[1], (pair[0] + 1) % 3);
        }
    }

    #[tokio::test]
    async fn keyed_records_follow_the_partitioner() {
        let producer = offline(slow_linger(), "t", 5).await;
        for i in 0..50u32 {
            let key = i.to_be_bytes();
            let d = producer.send("t", Some(&key), None).await.unwrap();
            assert_eq!(d.partition(), partition_for_key(&key, 5));
        }
        let err = producer.send_to("t", 5, None, None).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnknownTopicOrPartition);
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
        producer.flush().await.unwrap();
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
