//! [`TransactionalProducer`]: writes to many partitions, plus consumer
//! offsets, that become visible together or not at all.
//!
//! # How a transaction runs
//!
//! 1. [`TransactionalProducer::new`] calls `InitProducerId` with the
//!    transactional id. The coordinator bumps the id's epoch, which fences
//!    any older producer of the same id (its calls fail with
//!    `ProducerFenced`) and finishes or aborts the transaction it left open.
//! 2. [`begin`](TransactionalProducer::begin) is local: nothing reaches the
//!    broker until the first send.
//! 3. Before the first record goes to a partition, the partition is
//!    registered with `AddPartitionsToTxn`; the record is handed to the
//!    batching [`Producer`](crate::Producer) only after that returns, so no
//!    batch can reach an unregistered partition. The same request also
//!    registers the partitions the previous transaction wrote to, so a
//!    steady workload pays one registration round trip per transaction,
//!    not one per partition. Batches carry the
//!    transactional bit, the producer id, the epoch, and per-partition
//!    sequence numbers that start at 0 in every transaction.
//! 4. [`send_offsets`](TransactionalProducer::send_offsets) registers the
//!    consumer group (`AddOffsetsToTxn`) and sends the offsets
//!    (`TxnOffsetCommit`); they become the group's committed offsets only if
//!    the transaction commits.
//! 5. [`commit`](TransactionalProducer::commit) flushes and awaits every
//!    send of the transaction, then calls `EndTxn(commit)`, retrying
//!    indefinite errors (`EndTxn` is idempotent per producer id and epoch).
//!    The reply carries the epoch for the next transaction; the producer
//!    adopts it and restarts every partition's sequence at 0.
//!    [`abort`](TransactionalProducer::abort) does the same with
//!    `EndTxn(abort)`.
//!
//! # Errors
//!
//! - **Fatal**: `ProducerFenced`, `InvalidProducerEpoch`,
//!   `OutOfOrderSequence`, an `EndTxn` whose outcome stays unknown, or a
//!   failed abort. The producer is poisoned: every later call fails with
//!   the same error. Drop it; a new `TransactionalProducer` with the same
//!   id fences it and settles the open transaction.
//! - **Abortable**: any other failure inside a transaction (a failed send,
//!   a refused registration, `TransactionTimedOut`, ...). Every call but
//!   [`abort`](TransactionalProducer::abort) fails with that error until
//!   the application aborts; then a new transaction may begin.

use std::future::Future;
use std::time::Duration;

use ferry_proto::ErrorCode;
use ferry_proto::v1;
use tokio::time::Instant;

use crate::client::{Client, partition_offsets};
use crate::consumer::GroupMetadata;
use crate::error::{ClientError, check};
use crate::producer::{Delivery, Producer, ProducerConfig};
use crate::retry::{retry_until, timed};
use crate::topic_table::{Named, TopicTable};

/// Default [`TransactionalConfig::transaction_timeout`].
pub const DEFAULT_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for one transaction RPC before it counts as timed out (and
/// is retried, if the call allows).
const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of a [`TransactionalProducer`].
#[derive(Clone, Debug)]
pub struct TransactionalConfig {
    /// Names the producer across restarts: a new producer with the same id
    /// fences the old one and settles the transaction it left open.
    pub transactional_id: String,
    /// The coordinator aborts a transaction open longer than this. Default
    /// 60 s.
    pub transaction_timeout: Duration,
    /// Batching and retry settings of the underlying producer. Idempotence
    /// is always on and needs [`Acks::All`](crate::Acks::All).
    /// `delivery_timeout` also bounds how long transaction RPCs are retried.
    pub producer: ProducerConfig,
}

impl TransactionalConfig {
    /// Default settings for `transactional_id`.
    pub fn new(transactional_id: impl Into<String>) -> TransactionalConfig {
        TransactionalConfig {
            transactional_id: transactional_id.into(),
            transaction_timeout: DEFAULT_TRANSACTION_TIMEOUT,
            producer: ProducerConfig::default(),
        }
    }
}

/// Whether `code` poisons a transactional producer.
pub fn is_fatal(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::ProducerFenced | ErrorCode::InvalidProducerEpoch | ErrorCode::OutOfOrderSequence
    )
}

#[derive(Debug, Clone)]
enum State {
    /// No transaction is open.
    Ready,
    InTransaction,
    /// Only `abort` may follow.
    Abortable(ClientError),
    /// Poisoned.
    Fatal(ClientError),
}

/// Per-topic bookkeeping: what this transaction did with each partition.
/// Which partition a record goes to is the batching producer's choice
/// ([`Producer::route`]).
#[derive(Debug)]
struct TopicMeta {
    name: String,
    /// Registered with `AddPartitionsToTxn` in this transaction.
    registered: Vec<bool>,
    /// Registered in the previous transaction: registered along with the
    /// first partition this transaction needs.
    used_before: Vec<bool>,
    /// Index in `Txn::batches` of the partition's last batch.
    last_batch: Vec<Option<usize>>,
}

impl Named for TopicMeta {
    fn name(&self) -> &str {
        &self.name
    }
}

impl TopicMeta {
    fn new(name: &str, partitions: u32) -> TopicMeta {
        TopicMeta {
            name: name.to_owned(),
            registered: vec![false; partitions as usize],
            used_before: vec![false; partitions as usize],
            last_batch: vec![None; partitions as usize],
        }
    }

    fn reset(&mut self) {
        std::mem::swap(&mut self.used_before, &mut self.registered);
        self.registered.fill(false);
        self.last_batch.fill(None);
    }
}

/// What the open transaction did.
#[derive(Debug, Default)]
struct Txn {
    /// One delivery per batch, to await them all before committing.
    batches: Vec<Delivery>,
    /// Consumer groups registered with `AddOffsetsToTxn`.
    groups: Vec<String>,
    /// A registration succeeded: the coordinator knows the transaction.
    registered: bool,
    /// A registration failed with an unknown outcome: the coordinator may
    /// know the transaction.
    maybe_registered: bool,
    records: u64,
}

/// A producer whose records, and consumer offsets, commit or abort as one.
///
/// Records sent inside a transaction are invisible to `read_committed`
/// consumers until [`commit`](Self::commit) returns, and never become
/// visible if the transaction aborts. `read_uncommitted` consumers see them
/// at once.
///
/// ```no_run
/// use ferry_client::{Client, TransactionalConfig, TransactionalProducer};
///
/// # async fn demo() -> Result<(), ferry_client::ClientError> {
/// let client = Client::connect("127.0.0.1:7400").await?;
/// let mut producer =
///     TransactionalProducer::new(client, TransactionalConfig::new("order-mirror")).await?;
///
/// producer.begin()?;
/// producer.send("orders", Some(b"o-17"), Some(b"created")).await?;
/// producer.send("audit", None, Some(b"o-17 created")).await?;
/// // The input position the output was computed from, committed atomically
/// // with the output.
/// producer
///     .send_offsets("mirror", &[("orders-in".to_string(), 0, 42)])
///     .await?;
/// match producer.commit().await {
///     Ok(()) => {}
///     Err(e) if producer.is_fatal() => return Err(e), // fenced: stop
///     Err(_) => producer.abort().await?,               // retry the work
/// }
/// # Ok(())
/// # }
/// ```
pub struct TransactionalProducer {
    client: Client,
    config: TransactionalConfig,
    producer: Producer,
    producer_id: i64,
    epoch: i16,
    state: State,
    topics: TopicTable<TopicMeta>,
    txn: Txn,
}

impl std::fmt::Debug for TransactionalProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionalProducer")
            .field("transactional_id", &self.config.transactional_id)
            .field("producer_id", &self.producer_id)
            .field("epoch", &self.epoch)
            .field("state", &self.state)
            .finish()
    }
}

impl TransactionalProducer {
    /// Initialises the transactional id with the coordinator
    /// (`InitProducerId`), fencing older producers of the same id, and
    /// starts the batching producer.
    ///
    /// Once this returns, the transaction a fenced producer left open is
    /// settled, so consumer offsets read afterwards are stable.
    pub async fn new(
        client: Client,
        config: TransactionalConfig,
    ) -> Result<TransactionalProducer, ClientError> {
        if config.transactional_id.is_empty() {
            return Err(ClientError::InvalidArgument(
                "the transactional id is empty".into(),
            ));
        }
        let timeout_ms = u32::try_from(config.transaction_timeout.as_millis())
            .ok()
            .filter(|ms| *ms > 0)
            .ok_or_else(|| {
                ClientError::InvalidArgument(format!(
                    "transaction_timeout {:?} is outside 1 ms ..= {} ms",
                    config.transaction_timeout,
                    u32::MAX
                ))
            })?;
        let mut producer_config = config.producer.clone();
        producer_config.idempotent = true;
        let request = v1::InitProducerIdRequest {
            transactional_id: config.transactional_id.clone(),
            transaction_timeout_ms: timeout_ms,
        };
        let (producer_id, epoch) = retrying("InitProducerId", &producer_config, || {
            let mut raw = client.raw();
            let request = request.clone();
            async move {
                let r = raw.init_producer_id(request).await?.into_inner();
                check(r.error_code, &r.error_message)?;
                Ok((r.producer_id, to_epoch(r.producer_epoch)?))
            }
        })
        .await?;
        let producer =
            Producer::start_transactional(client.clone(), producer_config, producer_id, epoch)?;
        tracing::debug!(
            transactional_id = %config.transactional_id,
            producer_id,
            epoch,
            "transactional producer initialised"
        );
        Ok(TransactionalProducer {
            client,
            config,
            producer,
            producer_id,
            epoch,
            state: State::Ready,
            topics: TopicTable::default(),
            txn: Txn::default(),
        })
    }

    /// The transactional id.
    pub fn transactional_id(&self) -> &str {
        &self.config.transactional_id
    }

    /// The producer id and the epoch of the current (or next) transaction.
    pub fn producer_id(&self) -> (i64, i16) {
        (self.producer_id, self.epoch)
    }

    /// Whether a transaction is open (begun and not yet committed or
    /// aborted), including one that can only abort.
    pub fn in_transaction(&self) -> bool {
        matches!(self.state, State::InTransaction | State::Abortable(_))
    }

    /// Whether the producer is poisoned; see [`Self::fatal_error`].
    pub fn is_fatal(&self) -> bool {
        matches!(self.state, State::Fatal(_))
    }

    /// The error that poisoned the producer, if one did. Every call fails
    /// with it from then on.
    pub fn fatal_error(&self) -> Option<&ClientError> {
        match &self.state {
            State::Fatal(e) => Some(e),
            _ => None,
        }
    }

    /// Records sent in the open transaction.
    pub fn records_in_transaction(&self) -> u64 {
        self.txn.records
    }

    /// Opens a transaction. Local: the broker hears of it with the first
    /// send or `send_offsets`.
    pub fn begin(&mut self) -> Result<(), ClientError> {
        match &self.state {
            State::Ready => {
                self.state = State::InTransaction;
                Ok(())
            }
            State::InTransaction => Err(invalid_state("a transaction is already open")),
            State::Abortable(e) | State::Fatal(e) => Err(e.clone()),
        }
    }

    /// Sends a record inside the open transaction, to the partition its
    /// key hashes to, or to the sticky partition when keyless: the
    /// partition [`Producer::route`] picks, as [`Producer::send`] does.
    ///
    /// Returns once the record is batched. Its [`Delivery`] resolves when
    /// the batch is stored, which does not make it visible to
    /// `read_committed` readers: only [`commit`](Self::commit) does. A
    /// failed send makes the transaction abortable.
    pub async fn send(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<Delivery, ClientError> {
        self.send_inner(topic, None, key, value).await
    }

    /// Like [`send`](Self::send), to an explicit partition.
    pub async fn send_to(
        &mut self,
        topic: &str,
        partition: u32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<Delivery, ClientError> {
        self.send_inner(topic, Some(partition), key, value).await
    }

    async fn send_inner(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<Delivery, ClientError> {
        self.require_open()?;
        let result = self.try_send(topic, partition, key, value).await;
        if let Err(e) = &result {
            self.fail(e.clone());
        }
        result
    }

    async fn try_send(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<Delivery, ClientError> {
        let (t, p) = self.pick_partition(topic, partition, key).await?;
        if !self.topics[t].registered[p as usize] {
            self.add_partitions(topic, p).await?;
        }
        let delivery = self.producer.send_to(topic, p, key, value).await?;
        self.txn.records += 1;
        let batches = &mut self.txn.batches;
        let last = &mut self.topics[t].last_batch[p as usize];
        let known = last.is_some_and(|i| batches[i].same_batch(&delivery));
        if !known {
            *last = Some(batches.len());
            batches.push(delivery.clone());
        }
        Ok(delivery)
    }

    /// The partition for a record, as the batching producer routes it
    /// (fetching the topic's metadata on first use, with retries), and the
    /// index of the topic's bookkeeping.
    async fn pick_partition(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
    ) -> Result<(usize, u32), ClientError> {
        let (p, n) = self.producer.route_counted(topic, partition, key).await?;
        let t = match self.topics.find(topic) {
            Some(t) => t,
            None => self.topics.insert(TopicMeta::new(topic, n)),
        };
        Ok((t, p))
    }

    /// Registers `topic`/`partition`, and every partition the previous
    /// transaction used that this one has not registered yet.
    async fn add_partitions(&mut self, topic: &str, partition: u32) -> Result<(), ClientError> {
        let mut partitions = vec![v1::TopicPartition {
            topic: topic.to_owned(),
            partition,
        }];
        for meta in self.topics.iter() {
            let name = &meta.name;
            for (p, used) in meta.used_before.iter().enumerate() {
                let p = p as u32;
                if *used && !meta.registered[p as usize] && (name != topic || p != partition) {
                    partitions.push(v1::TopicPartition {
                        topic: name.clone(),
                        partition: p,
                    });
                }
            }
        }
        let request = v1::AddPartitionsToTxnRequest {
            transactional_id: self.config.transactional_id.clone(),
            producer_id: self.producer_id,
            producer_epoch: i32::from(self.epoch),
            partitions,
        };
        let client = &self.client;
        let result = retrying("AddPartitionsToTxn", &self.config.producer, || {
            let mut raw = client.raw();
            let request = request.clone();
            async move {
                let r = raw.add_partitions_to_txn(request).await?.into_inner();
                check(r.error_code, &r.error_message)
            }
        })
        .await;
        self.note_registration(&result);
        if result.is_ok() {
            for tp in &request.partitions {
                if let Some(t) = self.topics.position(&tp.topic) {
                    self.topics[t].registered[tp.partition as usize] = true;
                }
            }
        }
        result
    }

    fn note_registration<T>(&mut self, result: &Result<T, ClientError>) {
        match result {
            Ok(_) => self.txn.registered = true,
            Err(e) if !e.code().is_definite() => self.txn.maybe_registered = true,
            Err(_) => {}
        }
    }

    /// Adds consumer offsets to the open transaction: `group`'s committed
    /// offset of each `(topic, partition)` becomes `offset` (the next
    /// offset to read) if, and when, the transaction commits.
    ///
    /// This commit is not fenced by the group, only by the producer epoch;
    /// a member of a group passes its [`GroupMetadata`] to
    /// [`send_member_offsets`](Self::send_member_offsets) instead.
    pub async fn send_offsets(
        &mut self,
        group: &str,
        offsets: &[(String, u32, u64)],
    ) -> Result<(), ClientError> {
        let member = GroupMetadata {
            group: group.to_owned(),
            generation: -1,
            member_id: String::new(),
            instance_id: None,
        };
        self.send_member_offsets(&member, offsets).await
    }

    /// Like [`send_offsets`](Self::send_offsets), as a member of the group
    /// (KIP-447): the coordinator refuses the offsets
    /// (`IllegalGeneration`, `UnknownMemberId`, `FencedInstanceId`) if the
    /// member's generation or ids are stale, so a consumer that lost its
    /// partitions cannot commit them in its transaction. The transaction is
    /// then abortable.
    pub async fn send_member_offsets(
        &mut self,
        member: &GroupMetadata,
        offsets: &[(String, u32, u64)],
    ) -> Result<(), ClientError> {
        let group = member.group.as_str();
        self.require_open()?;
        if group.is_empty() {
            let e = ClientError::InvalidArgument("the consumer group name is empty".into());
            self.fail(e.clone());
            return Err(e);
        }
        if offsets.is_empty() {
            return Ok(());
        }
        let result = self.try_send_offsets(member, offsets).await;
        if let Err(e) = &result {
            self.fail(e.clone());
        }
        result
    }

    async fn try_send_offsets(
        &mut self,
        member: &GroupMetadata,
        offsets: &[(String, u32, u64)],
    ) -> Result<(), ClientError> {
        let group = member.group.as_str();
        let client = self.client.clone();
        if !self.txn.groups.iter().any(|g| g == group) {
            let request = v1::AddOffsetsToTxnRequest {
                transactional_id: self.config.transactional_id.clone(),
                producer_id: self.producer_id,
                producer_epoch: i32::from(self.epoch),
                group: group.to_owned(),
            };
            let result = retrying("AddOffsetsToTxn", &self.config.producer, || {
                let mut raw = client.raw();
                let request = request.clone();
                async move {
                    let r = raw.add_offsets_to_txn(request).await?.into_inner();
                    check(r.error_code, &r.error_message)
                }
            })
            .await;
            self.note_registration(&result);
            result?;
            self.txn.groups.push(group.to_owned());
        }
        let request = v1::TxnOffsetCommitRequest {
            transactional_id: self.config.transactional_id.clone(),
            producer_id: self.producer_id,
            producer_epoch: i32::from(self.epoch),
            group: group.to_owned(),
            offsets: partition_offsets(offsets),
            generation_id: member.generation,
            member_id: member.member_id.clone(),
            group_instance_id: member.instance_id.clone().unwrap_or_default(),
        };
        retrying("TxnOffsetCommit", &self.config.producer, || {
            let mut raw = client.raw();
            let request = request.clone();
            async move {
                let r = raw.txn_offset_commit(request).await?.into_inner();
                check(r.error_code, &r.error_message)
            }
        })
        .await
    }

    /// Commits the open transaction: flushes and awaits every send, then
    /// ends the transaction with `EndTxn(commit)`, retrying while the
    /// outcome is unknown.
    ///
    /// On `Ok` every record and offset of the transaction is visible to
    /// `read_committed` readers, and a new transaction may begin. If a send
    /// failed, or the coordinator refused the commit, the transaction is
    /// abortable: call [`abort`](Self::abort). If the outcome stays
    /// unknown, the producer is poisoned ([`is_fatal`](Self::is_fatal)); a
    /// new producer with the same id settles the transaction one way or
    /// the other.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        match &self.state {
            State::InTransaction => {}
            State::Ready => return Err(invalid_state("no transaction is open")),
            State::Abortable(e) | State::Fatal(e) => return Err(e.clone()),
        }
        if let Err(e) = self.await_sends().await {
            self.fail(e.clone());
            return Err(e);
        }
        self.end(true).await
    }

    /// Aborts the open transaction: waits for its sends to settle (their
    /// outcome no longer matters), then ends it with `EndTxn(abort)`, so
    /// none of its records or offsets ever become visible to
    /// `read_committed` readers. Without an open transaction this does
    /// nothing. A failed abort poisons the producer.
    pub async fn abort(&mut self) -> Result<(), ClientError> {
        match &self.state {
            State::InTransaction | State::Abortable(_) => {}
            State::Ready => return Ok(()),
            State::Fatal(e) => return Err(e.clone()),
        }
        match self.await_sends().await {
            Err(e) if is_fatal(e.code()) => {
                self.state = State::Fatal(e.clone());
                return Err(e);
            }
            Err(ClientError::Closed) => {
                self.state = State::Fatal(ClientError::Closed);
                return Err(ClientError::Closed);
            }
            _ => {}
        }
        self.end(false).await
    }

    /// Flushes the producer and returns the first failure of a send of
    /// this transaction.
    async fn await_sends(&mut self) -> Result<(), ClientError> {
        match self.producer.flush().await {
            // Which failure decides the transaction's fate is chosen below,
            // from every send's own outcome.
            Ok(()) | Err(ClientError::RecordsFailed { .. }) => {}
            Err(e) => return Err(e),
        }
        let mut first_error = None;
        for delivery in std::mem::take(&mut self.txn.batches) {
            if let Err(e) = delivery.wait().await {
                // A fatal error wins over an abortable one.
                if first_error.is_none() || is_fatal(e.code()) {
                    first_error = Some(e);
                }
            }
        }
        for meta in self.topics.iter_mut() {
            meta.last_batch.fill(None);
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn end(&mut self, commit: bool) -> Result<(), ClientError> {
        let what = if commit { "commit" } else { "abort" };
        if !self.txn.registered && !self.txn.maybe_registered {
            // The coordinator never heard of this transaction and nothing
            // was written: there is nothing to end.
            self.finish();
            return Ok(());
        }
        let request = v1::EndTxnRequest {
            transactional_id: self.config.transactional_id.clone(),
            producer_id: self.producer_id,
            producer_epoch: i32::from(self.epoch),
            commit,
        };
        let client = self.client.clone();
        let result = retrying("EndTxn", &self.config.producer, || {
            let mut raw = client.raw();
            let request = request.clone();
            async move {
                let r = raw.end_txn(request).await?.into_inner();
                check(r.error_code, &r.error_message)?;
                Ok((r.producer_id, to_epoch(r.producer_epoch)?))
            }
        })
        .await;
        match result {
            Ok((producer_id, epoch)) => {
                self.adopt(producer_id, epoch).await?;
                tracing::debug!(
                    transactional_id = %self.config.transactional_id,
                    records = self.txn.records,
                    next_epoch = epoch,
                    "transaction {what} done"
                );
                self.finish();
                Ok(())
            }
            Err(e) if !commit && !self.txn.registered && e.code() == ErrorCode::InvalidTxnState => {
                // Only registrations with an unknown outcome were tried,
                // and the coordinator has no transaction to abort.
                self.finish();
                Ok(())
            }
            Err(e) if commit && e.code().is_definite() && !is_fatal(e.code()) => {
                // Refused, so surely not committed: the caller aborts.
                self.state = State::Abortable(e.clone());
                Err(e)
            }
            Err(e) => {
                let e = if is_fatal(e.code()) {
                    e
                } else {
                    ClientError::broker(
                        e.code(),
                        format!(
                            "the {what} of the transaction of {} did not complete ({e}); \
                             its outcome is unknown until a new producer with this id starts",
                            self.config.transactional_id
                        ),
                    )
                };
                self.state = State::Fatal(e.clone());
                Err(e)
            }
        }
    }

    /// Takes the producer id and epoch for the next transaction.
    async fn adopt(&mut self, producer_id: i64, epoch: i16) -> Result<(), ClientError> {
        if producer_id == self.producer_id {
            self.producer.restart_sequences(epoch);
        } else {
            // The coordinator moved to a new producer id (the epoch ran
            // out): start a producer stamped with it.
            let mut config = self.config.producer.clone();
            config.idempotent = true;
            let fresh =
                Producer::start_transactional(self.client.clone(), config, producer_id, epoch)?;
            let old = std::mem::replace(&mut self.producer, fresh);
            let _ = old.close().await;
        }
        self.producer_id = producer_id;
        self.epoch = epoch;
        Ok(())
    }

    fn finish(&mut self) {
        self.txn = Txn::default();
        for meta in self.topics.iter_mut() {
            meta.reset();
        }
        self.state = State::Ready;
    }

    /// Fails unless a transaction is open and healthy.
    fn require_open(&self) -> Result<(), ClientError> {
        match &self.state {
            State::InTransaction => Ok(()),
            State::Ready => Err(invalid_state("no transaction is open: call begin() first")),
            State::Abortable(e) | State::Fatal(e) => Err(e.clone()),
        }
    }

    /// Records a failure inside the open transaction.
    fn fail(&mut self, e: ClientError) {
        if is_fatal(e.code()) {
            self.state = State::Fatal(e);
        } else if matches!(self.state, State::InTransaction) {
            self.state = State::Abortable(e);
        }
    }

    /// Aborts an open transaction, then stops the producer. Closing twice
    /// is harmless.
    pub async fn close(mut self) -> Result<(), ClientError> {
        let aborted = if self.in_transaction() {
            self.abort().await
        } else {
            Ok(())
        };
        self.producer.close().await?;
        aborted
    }
}

#[cfg(test)]
impl TransactionalProducer {
    /// A producer that never talked to a broker: its id (5) and epoch (0)
    /// are made up, and nothing is registered, so only local state changes.
    pub(crate) fn offline_for_tests(client: Client) -> TransactionalProducer {
        let mut config = TransactionalConfig::new("t");
        // Nothing answers: give up on the metadata soon.
        config.producer.delivery_timeout = Duration::from_millis(200);
        // Batches seal when full, never on a timer: what a test sees does
        // not depend on how fast the machine runs it.
        config.producer.linger = Duration::from_secs(3600);
        let producer =
            Producer::start_transactional(client.clone(), config.producer.clone(), 5, 0).unwrap();
        TransactionalProducer {
            client,
            config,
            producer,
            producer_id: 5,
            epoch: 0,
            state: State::Ready,
            topics: TopicTable::default(),
            txn: Txn::default(),
        }
    }
}

fn invalid_state(message: &str) -> ClientError {
    ClientError::broker(ErrorCode::InvalidTxnState, message)
}

fn to_epoch(epoch: i32) -> Result<i16, ClientError> {
    i16::try_from(epoch).map_err(|_| {
        ClientError::broker(
            ErrorCode::InvalidProducerEpoch,
            format!("the broker returned epoch {epoch}"),
        )
    })
}

/// Runs `call` until it succeeds, fails with an error that is not
/// retriable, or `config.delivery_timeout` has passed; each attempt gets
/// [`RPC_TIMEOUT`], and attempts are spaced by the producer's backoff.
async fn retrying<T, F, Fut>(
    what: &'static str,
    config: &ProducerConfig,
    mut call: F,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    retry_until(
        what,
        Instant::now() + config.delivery_timeout,
        config.retry_policy(),
        ClientError::is_retriable,
        || timed(what, RPC_TIMEOUT, call()),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partitioner::partition_for_key;

    fn offline() -> TransactionalProducer {
        TransactionalProducer::offline_for_tests(Client::connect_lazy("127.0.0.1:1").unwrap())
    }

    #[test]
    fn fenced_epoch_and_sequence_errors_are_fatal_others_are_not() {
        for code in ErrorCode::ALL {
            let fatal = matches!(
                code,
                ErrorCode::ProducerFenced
                    | ErrorCode::InvalidProducerEpoch
                    | ErrorCode::OutOfOrderSequence
            );
            assert_eq!(is_fatal(code), fatal, "{code}");
        }
    }

    #[tokio::test]
    async fn calls_outside_a_transaction_are_refused_without_changing_state() {
        let mut p = offline();
        let err = p.send("t", None, Some(b"x")).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidTxnState);
        let err = p.commit().await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidTxnState);
        let err = p
            .send_offsets("g", &[("t".into(), 0, 1)])
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidTxnState);
        assert!(!p.in_transaction() && !p.is_fatal());
        // Aborting with nothing open does nothing.
        p.abort().await.unwrap();
        p.begin().unwrap();
        assert!(p.in_transaction());
        let err = p.begin().unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidTxnState);
    }

    #[tokio::test]
    async fn an_empty_transaction_commits_and_aborts_without_the_broker() {
        let mut p = offline();
        p.begin().unwrap();
        p.commit().await.unwrap();
        assert!(!p.in_transaction());
        p.begin().unwrap();
        p.send_offsets("g", &[]).await.unwrap();
        p.abort().await.unwrap();
        assert_eq!(p.producer_id(), (5, 0), "no EndTxn, no new epoch");
    }

    #[tokio::test]
    async fn a_failed_send_leaves_only_abort() {
        let mut p = offline();
        p.begin().unwrap();
        // Nothing listens on port 1: describing the topic fails.
        let err = p.send("t", None, Some(b"x")).await.unwrap_err();
        assert!(!is_fatal(err.code()));
        assert!(p.in_transaction() && !p.is_fatal());
        let again = p.send("t", None, Some(b"y")).await.unwrap_err();
        assert_eq!(again.to_string(), err.to_string(), "later sends repeat it");
        let commit = p.commit().await.unwrap_err();
        assert_eq!(commit.to_string(), err.to_string());
        assert!(p.begin().is_err());
        p.abort().await.unwrap();
        assert!(!p.in_transaction());
        p.begin().unwrap();
    }

    #[tokio::test]
    async fn a_fatal_error_poisons_every_later_call() {
        let mut p = offline();
        p.begin().unwrap();
        p.fail(ClientError::broker(
            ErrorCode::ProducerFenced,
            "newer epoch",
        ));
        assert!(p.is_fatal());
        assert_eq!(
            p.fatal_error().map(ClientError::code),
            Some(ErrorCode::ProducerFenced)
        );
        for err in [
            p.send("t", None, None).await.unwrap_err(),
            p.send_offsets("g", &[("t".into(), 0, 1)])
                .await
                .unwrap_err(),
            p.commit().await.unwrap_err(),
            p.abort().await.unwrap_err(),
            p.begin().unwrap_err(),
        ] {
            assert_eq!(err.code(), ErrorCode::ProducerFenced);
        }
        // A later abortable error does not unpoison it.
        p.fail(ClientError::broker(ErrorCode::MessageTooLarge, "big"));
        assert!(p.is_fatal());
    }

    #[tokio::test]
    async fn keyed_records_follow_the_partitioner_and_keyless_ones_stick() {
        let mut p = offline();
        p.producer.assume_topic("t", 4);
        for i in 0..40u32 {
            let key = i.to_be_bytes();
            let got = p.pick_partition("t", None, Some(&key)).await.unwrap();
            assert_eq!(got, (0, partition_for_key(&key, 4)));
        }
        let value = vec![0u8; 1000];
        let mut picks = Vec::new();
        for _ in 0..2000 {
            // The sticky partition moves when its batch seals, so send too.
            let (_, picked) = p.pick_partition("t", None, None).await.unwrap();
            p.producer
                .send_to("t", picked, None, Some(&value))
                .await
                .unwrap();
            picks.push(picked);
        }
        let mut runs = picks.clone();
        runs.dedup();
        assert!(runs.len() >= 4, "the keyless partition moves on");
        for pair in runs.windows(2) {
            assert_eq!(pair[1], (pair[0] + 1) % 4);
        }
        let err = p.pick_partition("t", Some(4), None).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnknownTopicOrPartition);
    }

    #[test]
    fn a_transaction_remembers_the_partitions_of_the_one_before() {
        let mut meta = TopicMeta::new("t", 3);
        meta.registered[1] = true;
        meta.last_batch[1] = Some(0);
        meta.reset();
        assert_eq!(meta.used_before, vec![false, true, false]);
        assert_eq!(meta.registered, vec![false; 3]);
        assert_eq!(meta.last_batch, vec![None; 3]);
        meta.registered[2] = true;
        meta.reset();
        assert_eq!(meta.used_before, vec![false, false, true]);
    }

    #[tokio::test]
    async fn retrying_stops_at_a_definite_error_and_retries_indefinite_ones() {
        let config = ProducerConfig {
            retry_backoff: Duration::from_millis(1),
            retry_backoff_max: Duration::from_millis(2),
            delivery_timeout: Duration::from_secs(5),
            ..ProducerConfig::default()
        };
        let mut calls = 0;
        let r: Result<u32, _> = retrying("x", &config, || {
            calls += 1;
            let n = calls;
            async move {
                match n {
                    1 => Err(ClientError::broker(
                        ErrorCode::ConcurrentTransactions,
                        "busy",
                    )),
                    2 => Err(ClientError::broker(ErrorCode::NetworkError, "lost")),
                    _ => Ok(n),
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 3);
        let mut calls = 0;
        let r: Result<(), _> = retrying("x", &config, || {
            calls += 1;
            async { Err(ClientError::broker(ErrorCode::ProducerFenced, "old")) }
        })
        .await;
        assert_eq!(r.unwrap_err().code(), ErrorCode::ProducerFenced);
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn retrying_gives_up_after_the_delivery_timeout() {
        let config = ProducerConfig {
            retry_backoff: Duration::from_millis(5),
            retry_backoff_max: Duration::from_millis(5),
            delivery_timeout: Duration::from_millis(50),
            ..ProducerConfig::default()
        };
        let started = std::time::Instant::now();
        let r: Result<(), _> = retrying("x", &config, || async {
            Err(ClientError::broker(ErrorCode::RequestTimedOut, "slow"))
        })
        .await;
        assert_eq!(r.unwrap_err().code(), ErrorCode::RequestTimedOut);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
