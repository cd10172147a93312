//! [`ExactlyOnce`]: consume → process → produce → commit, where the
//! output records and the input positions commit in one transaction.
//!
//! Each [`step`](ExactlyOnce::step) runs one transaction:
//!
//! 1. poll the `read_committed` consumer and pass each record to the
//!    process closure, which appends the records to produce;
//! 2. send those inside the transaction;
//! 3. after `max_records` input records (checked after each poll, so a
//!    transaction may hold a little more) or `max_interval` since its first
//!    record, add the consumer's positions with
//!    [`send_offsets`](crate::TransactionalProducer::send_offsets) and
//!    commit.
//!
//! A crash anywhere leaves either the whole transaction (outputs and
//! positions) or none of it, so a restarted loop resumes from the last
//! committed positions and produces each output exactly once. On an
//! abortable error the step aborts and rewinds the consumer to the
//! positions of the last commit; on a fatal one (the producer was fenced)
//! it stops with the error.
//!
//! An [`EosObserver`] watches each step from the inside: the records each
//! poll returned, the outputs sent, the start of the commit and how the
//! transaction ended. At an [`EosPoint`] it may also stop the step as if
//! the process had crashed there, which is how fault-injection harnesses
//! drive this loop. The default observer, `()`, does nothing and costs
//! nothing. A step crashed after its sends can also be
//! [resumed](ExactlyOnce::resume), as a stalled process that wakes up
//! would go on: the way to drive a zombie instance against its successor.

use std::time::Duration;

use bytes::Bytes;
use ferry_proto::ErrorCode;
use tokio::time::Instant;

use crate::consumer::{CommitMode, Consumer, ConsumerEvent, ConsumerRecord, IsolationLevel};
use crate::error::ClientError;
use crate::transactional::TransactionalProducer;

/// Abortable errors that are not retriable end [`ExactlyOnce::run`] after
/// this many aborted transactions in a row.
const MAX_ABORTS_IN_A_ROW: u32 = 3;
/// Pause after an aborted transaction before the next one.
const ABORT_PAUSE: Duration = Duration::from_millis(100);

/// Settings of an [`ExactlyOnce`] loop.
#[derive(Clone, Debug)]
pub struct ExactlyOnceConfig {
    /// Consumer group whose offsets commit inside each transaction.
    pub group: String,
    /// Commit once a transaction holds this many input records. Default
    /// 1000.
    pub max_records: u64,
    /// Commit this long after a transaction's first input record at the
    /// latest. Default 100 ms.
    pub max_interval: Duration,
}

impl ExactlyOnceConfig {
    /// Default settings for `group`.
    pub fn new(group: impl Into<String>) -> ExactlyOnceConfig {
        ExactlyOnceConfig {
            group: group.into(),
            max_records: 1000,
            max_interval: Duration::from_millis(100),
        }
    }
}

/// One record for the process closure to produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// Topic.
    pub topic: String,
    /// Partition, or `None` to partition by key (sticky when keyless).
    pub partition: Option<u32>,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
}

impl Output {
    /// A record partitioned by its key.
    pub fn new(topic: impl Into<String>, key: Option<Bytes>, value: Option<Bytes>) -> Output {
        Output {
            topic: topic.into(),
            partition: None,
            key,
            value,
        }
    }

    /// A record for an explicit partition.
    pub fn to_partition(
        topic: impl Into<String>,
        partition: u32,
        key: Option<Bytes>,
        value: Option<Bytes>,
    ) -> Output {
        Output {
            topic: topic.into(),
            partition: Some(partition),
            key,
            value,
        }
    }
}

/// A point inside a step at which an [`EosObserver`] may crash it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EosPoint {
    /// A poll returned records; none of them processed yet.
    AfterPoll,
    /// Every output of the transaction was sent; the offsets are not added
    /// yet.
    AfterSends,
    /// The offsets were added to the transaction; the commit is not sent
    /// yet.
    BeforeCommit,
}

impl std::fmt::Display for EosPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EosPoint::AfterPoll => "after-poll",
            EosPoint::AfterSends => "after-sends",
            EosPoint::BeforeCommit => "before-commit",
        })
    }
}

/// What an [`EosObserver`] wants at an [`EosPoint`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Stop the step here, leaving the transaction open as a crashed
    /// process would; the step returns [`Step::Crashed`].
    Crash,
}

/// How a transaction of an [`ExactlyOnce`] step ended.
#[derive(Clone, Copy, Debug)]
pub enum TxnOutcome<'a> {
    /// It committed: its outputs and offsets are visible.
    Committed,
    /// It was aborted after this error: none of it is visible, and the
    /// consumer was rewound.
    Aborted(&'a ClientError),
    /// Its outcome is unknown because of this error (the producer was
    /// fenced, the commit's outcome stayed unknown, or the abort failed);
    /// the loop stops. A new producer with the same transactional id
    /// settles it.
    Unknown(&'a ClientError),
    /// The observer crashed the step at this point; the transaction is
    /// left open.
    Crashed(EosPoint),
}

/// Watches the steps of an [`ExactlyOnce`] loop. Every method has a no-op
/// default; `()` is the observer that watches nothing.
///
/// Within one transaction the calls come in this order: [`polled`] once
/// per poll that returned records (with [`at`]`(AfterPoll)` after each),
/// [`sent`] once per output handed to the producer, [`at`]`(AfterSends)`,
/// [`committing`], [`at`]`(BeforeCommit)`, and last [`ended`]. Before the
/// first of them, [`rebalanced`] reports each poll that took part in a
/// rebalance of the group. A step without input only reports failed polls
/// and rebalances.
///
/// [`polled`]: EosObserver::polled
/// [`at`]: EosObserver::at
/// [`sent`]: EosObserver::sent
/// [`committing`]: EosObserver::committing
/// [`ended`]: EosObserver::ended
/// [`rebalanced`]: EosObserver::rebalanced
pub trait EosObserver {
    /// A poll returned these records (never empty), before any is
    /// processed.
    fn polled(&mut self, records: &[ConsumerRecord]) {
        let _ = records;
    }

    /// A poll failed. Outside a transaction a retriable error is retried
    /// within the step; inside one the transaction aborts.
    fn poll_failed(&mut self, error: &ClientError) {
        let _ = error;
    }

    /// `output` was handed to the transactional producer.
    fn sent(&mut self, output: &Output) {
        let _ = output;
    }

    /// The step reached `point`; [`Control::Crash`] stops it there.
    fn at(&mut self, point: EosPoint) -> Control {
        let _ = point;
        Control::Continue
    }

    /// The commit begins: these consumer positions are added to the
    /// transaction, then it commits.
    fn committing(&mut self, offsets: &[(String, u32, u64)]) {
        let _ = offsets;
    }

    /// The transaction ended.
    fn ended(&mut self, outcome: TxnOutcome<'_>) {
        let _ = outcome;
    }

    /// A poll between transactions took part in a rebalance of the
    /// consumer's group: these [`Assigned`](ConsumerEvent::Assigned),
    /// [`Revoked`](ConsumerEvent::Revoked) and [`Lost`](ConsumerEvent::Lost)
    /// events (never empty). Records polled after it are read under the new
    /// assignment; a rebalance never happens inside a transaction.
    fn rebalanced(&mut self, events: &[ConsumerEvent]) {
        let _ = events;
    }
}

/// Watches nothing.
impl EosObserver for () {}

/// Lends an observer to a loop, so that it outlives the loop: a harness
/// that replaces crashed instances keeps one observer across them.
impl<O: EosObserver + ?Sized> EosObserver for &mut O {
    fn polled(&mut self, records: &[ConsumerRecord]) {
        (**self).polled(records);
    }

    fn poll_failed(&mut self, error: &ClientError) {
        (**self).poll_failed(error);
    }

    fn sent(&mut self, output: &Output) {
        (**self).sent(output);
    }

    fn at(&mut self, point: EosPoint) -> Control {
        (**self).at(point)
    }

    fn committing(&mut self, offsets: &[(String, u32, u64)]) {
        (**self).committing(offsets);
    }

    fn ended(&mut self, outcome: TxnOutcome<'_>) {
        (**self).ended(outcome);
    }

    fn rebalanced(&mut self, events: &[ConsumerEvent]) {
        (**self).rebalanced(events);
    }
}

/// What one [`ExactlyOnce::step`] did.
#[derive(Debug)]
#[non_exhaustive]
pub enum Step {
    /// A transaction committed.
    Committed {
        /// Input records it consumed.
        records: u64,
        /// Output records it produced.
        outputs: u64,
    },
    /// No input arrived within `max_interval`; no transaction was needed.
    Idle,
    /// The transaction failed with this abortable error. It was aborted
    /// and the consumer rewound to the last committed positions; the next
    /// step processes the same input again.
    Aborted(ClientError),
    /// The [`EosObserver`] crashed the step at this point. The transaction
    /// is left open and the consumer is not rewound, as after a process
    /// crash: drop the loop, and start a new instance (whose producer
    /// fences this one and settles the transaction). A step crashed at
    /// [`EosPoint::AfterSends`] or [`EosPoint::BeforeCommit`] may instead
    /// go on with [`ExactlyOnce::resume`].
    Crashed(EosPoint),
}

/// Totals of an [`ExactlyOnce::run`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Input records in committed transactions.
    pub records: u64,
    /// Output records in committed transactions.
    pub outputs: u64,
    /// Committed transactions.
    pub transactions: u64,
    /// Aborted transactions.
    pub aborted: u64,
}

/// The exactly-once processing loop: each [`step`](Self::step) polls a
/// `read_committed` consumer, passes the records to a process closure that
/// appends the records to produce, sends those inside a transaction, and
/// commits them together with the consumer's positions. A crash anywhere
/// leaves all of a transaction or none of it; an abortable error aborts
/// and rewinds the consumer to the last committed positions; a fatal one
/// (fenced by a newer instance) ends the loop.
///
/// Create the [`TransactionalProducer`] first, then subscribe the consumer
/// (with [`StartFrom::Committed`](crate::StartFrom::Committed)): starting
/// the producer settles any transaction a previous instance left open, so
/// the committed offsets the consumer reads are final.
///
/// ```no_run
/// use ferry_client::{
///     Client, CommitMode, Consumer, ConsumerConfig, ExactlyOnce, ExactlyOnceConfig, Output,
///     TransactionalConfig, TransactionalProducer,
/// };
///
/// # async fn demo() -> Result<(), ferry_client::ClientError> {
/// let client = Client::connect("127.0.0.1:7400").await?;
/// let producer =
///     TransactionalProducer::new(client.clone(), TransactionalConfig::new("upper-1")).await?;
/// let mut consumer = Consumer::new(
///     client,
///     ConsumerConfig {
///         group: Some("upper".into()),
///         commit_mode: CommitMode::None, // offsets commit in the transactions
///         ..ConsumerConfig::default()   // read_committed, from the committed offsets
///     },
/// )
/// .await?;
/// consumer.subscribe("words").await?;
/// let mut eos = ExactlyOnce::new(consumer, producer, ExactlyOnceConfig::new("upper"))?;
/// let totals = eos
///     .run(
///         |record, out| {
///             let upper = record.value.as_ref().map(|v| v.to_ascii_uppercase().into());
///             out.push(Output::new("upper-words", record.key.clone(), upper));
///         },
///         None, // forever
///     )
///     .await?;
/// println!("{} records in {} transactions", totals.records, totals.transactions);
/// # Ok(())
/// # }
/// ```
pub struct ExactlyOnce<O: EosObserver = ()> {
    consumer: Consumer,
    producer: TransactionalProducer,
    config: ExactlyOnceConfig,
    outputs: Vec<Output>,
    observer: O,
    /// The transaction of a step crashed after its sends, for
    /// [`ExactlyOnce::resume`].
    stalled: Option<(EosPoint, Txn)>,
}

/// The transaction of one step so far.
#[derive(Clone, Debug)]
struct Txn {
    /// The consumer positions to rewind to if it aborts: every record
    /// before them is accounted for (committed, or a marker or aborted
    /// record that produces nothing).
    rewind_to: Vec<(String, u32, u64)>,
    /// Input records processed.
    records: u64,
    /// Output records sent.
    outputs: u64,
}

impl<O: EosObserver> std::fmt::Debug for ExactlyOnce<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExactlyOnce")
            .field("consumer", &self.consumer)
            .field("producer", &self.producer)
            .field("config", &self.config)
            .finish()
    }
}

impl ExactlyOnce {
    /// Joins a subscribed consumer and a transactional producer. The
    /// consumer must read `read_committed` and commit nothing itself.
    pub fn new(
        consumer: Consumer,
        producer: TransactionalProducer,
        config: ExactlyOnceConfig,
    ) -> Result<ExactlyOnce, ClientError> {
        ExactlyOnce::with_observer(consumer, producer, config, ())
    }
}

impl<O: EosObserver> ExactlyOnce<O> {
    /// Like [`ExactlyOnce::new`], with `observer` watching every step.
    pub fn with_observer(
        consumer: Consumer,
        producer: TransactionalProducer,
        config: ExactlyOnceConfig,
        observer: O,
    ) -> Result<ExactlyOnce<O>, ClientError> {
        if consumer.config().isolation != IsolationLevel::ReadCommitted {
            return Err(ClientError::InvalidArgument(
                "exactly-once processing needs a read-committed consumer".into(),
            ));
        }
        if consumer.config().commit_mode != CommitMode::None {
            return Err(ClientError::InvalidArgument(
                "the consumer must not commit offsets itself (commit mode none): \
                 they commit inside each transaction"
                    .into(),
            ));
        }
        if config.group.is_empty() {
            return Err(ClientError::InvalidArgument(
                "the consumer group name is empty".into(),
            ));
        }
        if let Some(member) = consumer.group_metadata()
            && member.group != config.group
        {
            return Err(ClientError::InvalidArgument(format!(
                "the consumer is a member of group {}, not {}",
                member.group, config.group
            )));
        }
        if config.max_records == 0 || config.max_interval.is_zero() {
            return Err(ClientError::InvalidArgument(
                "max_records and max_interval must be positive".into(),
            ));
        }
        Ok(ExactlyOnce {
            consumer,
            producer,
            config,
            outputs: Vec::new(),
            observer,
            stalled: None,
        })
    }

    /// The observer.
    pub fn observer(&self) -> &O {
        &self.observer
    }

    /// The observer, to change what it injects between steps.
    pub fn observer_mut(&mut self) -> &mut O {
        &mut self.observer
    }

    /// The consumer.
    pub fn consumer(&self) -> &Consumer {
        &self.consumer
    }

    /// The producer.
    pub fn producer(&self) -> &TransactionalProducer {
        &self.producer
    }

    /// Takes the loop apart.
    pub fn into_parts(self) -> (Consumer, TransactionalProducer) {
        (self.consumer, self.producer)
    }

    /// Runs one transaction: poll and process until `max_records` input
    /// records (checked after each poll, so a transaction may hold a little
    /// more) or `max_interval` after the first one, then commit the outputs
    /// with the consumer's positions. Without input within `max_interval`
    /// it returns [`Step::Idle`] and opens no transaction.
    ///
    /// Returns `Err` only when the loop cannot go on: the producer is
    /// poisoned (fenced by a newer instance, or an unknown commit outcome),
    /// an abort failed, or polling failed for good outside a transaction.
    pub async fn step<F>(&mut self, mut process: F) -> Result<Step, ClientError>
    where
        F: FnMut(&ConsumerRecord, &mut Vec<Output>),
    {
        self.stalled = None;
        let mut txn = Txn {
            rewind_to: Vec::new(),
            records: 0,
            outputs: 0,
        };
        let started = Instant::now();
        let mut first_record_at = None;
        loop {
            let deadline = first_record_at.unwrap_or(started) + self.config.max_interval;
            let now = Instant::now();
            if now >= deadline || txn.records >= self.config.max_records {
                break;
            }
            // An open transaction holds the current assignment: a rebalance
            // waits until it commits, which happens now if one is pending.
            let in_txn = first_record_at.is_some();
            if in_txn && self.consumer.rebalance_pending() {
                break;
            }
            if !in_txn {
                txn.rewind_to = self.consumer.positions();
            }
            let polled = if in_txn {
                self.consumer.poll_deferring_rebalance(deadline - now).await
            } else {
                self.poll_between_transactions(deadline - now).await
            };
            let polled = match polled {
                Ok(polled) => polled,
                Err(e) => {
                    self.observer.poll_failed(&e);
                    if first_record_at.is_some() {
                        return self.abort_and_rewind(e, &txn.rewind_to).await;
                    }
                    if !e.is_retriable() {
                        return Err(e);
                    }
                    tracing::debug!(%e, "poll failed; retrying");
                    tokio::time::sleep(ABORT_PAUSE.min(deadline - now)).await;
                    continue;
                }
            };
            if polled.is_empty() {
                continue;
            }
            self.observer.polled(&polled);
            // Not resumable: these records are not processed yet.
            if let Some(step) = self.crash_at(EosPoint::AfterPoll, None) {
                return Ok(step);
            }
            for record in &polled {
                if first_record_at.is_none() {
                    if let Err(e) = self.producer.begin() {
                        return self.abort_and_rewind(e, &txn.rewind_to).await;
                    }
                    first_record_at = Some(Instant::now());
                }
                txn.records += 1;
                process(record, &mut self.outputs);
                match self.send_outputs().await {
                    Ok(n) => txn.outputs += n,
                    Err(e) => return self.abort_and_rewind(e, &txn.rewind_to).await,
                }
            }
        }
        if first_record_at.is_none() {
            return Ok(Step::Idle);
        }
        self.commit(txn, None).await
    }

    /// Goes on with the last step, which the observer crashed at
    /// [`EosPoint::AfterSends`] or [`EosPoint::BeforeCommit`], from that
    /// point, as a process that had only stalled there would: it adds the
    /// consumer's positions to the transaction (unless it had) and
    /// commits, and the observer sees the rest of the step. Harnesses use
    /// it to drive a zombie: an instance that stalls in the middle of a
    /// transaction while a newer one fences it, then tries to commit, which
    /// must fail (the producer is fenced: `Err`, the outcome reported as
    /// [`TxnOutcome::Unknown`]).
    ///
    /// Fails with [`ClientError::InvalidArgument`] if the last step did not
    /// crash at one of those points, or was already resumed.
    pub async fn resume(&mut self) -> Result<Step, ClientError> {
        let Some((point, txn)) = self.stalled.take() else {
            return Err(ClientError::InvalidArgument(
                "no step crashed after its sends to resume".into(),
            ));
        };
        self.commit(txn, Some(point)).await
    }

    /// The end of a transaction whose outputs are all sent: add the
    /// consumer's positions, then commit. `resumed` is the point a crashed
    /// step is resumed from, which is not crashed at again.
    async fn commit(&mut self, txn: Txn, resumed: Option<EosPoint>) -> Result<Step, ClientError> {
        if resumed != Some(EosPoint::BeforeCommit) {
            if resumed.is_none()
                && let Some(step) = self.crash_at(EosPoint::AfterSends, Some(&txn))
            {
                return Ok(step);
            }
            let positions = self.consumer.positions();
            self.observer.committing(&positions);
            let sent = match self.consumer.group_metadata() {
                Some(member) => self.producer.send_member_offsets(&member, &positions).await,
                None => {
                    self.producer
                        .send_offsets(&self.config.group, &positions)
                        .await
                }
            };
            if let Err(e) = sent {
                return self.abort_and_rewind(e, &txn.rewind_to).await;
            }
            if let Some(step) = self.crash_at(EosPoint::BeforeCommit, Some(&txn)) {
                return Ok(step);
            }
        }
        match self.producer.commit().await {
            Ok(()) => {
                self.observer.ended(TxnOutcome::Committed);
                Ok(Step::Committed {
                    records: txn.records,
                    outputs: txn.outputs,
                })
            }
            Err(e) => self.abort_and_rewind(e, &txn.rewind_to).await,
        }
    }

    /// A poll that may take part in a rebalance, which the observer hears
    /// of before any record polled under the new assignment.
    async fn poll_between_transactions(
        &mut self,
        timeout: Duration,
    ) -> Result<Vec<ConsumerRecord>, ClientError> {
        let mut records = Vec::new();
        let mut changes = Vec::new();
        for event in self.consumer.poll_events(timeout).await? {
            match event {
                ConsumerEvent::Record(r) => records.push(r),
                ConsumerEvent::PartitionEof { .. } => {}
                change => changes.push(change),
            }
        }
        if !changes.is_empty() {
            self.observer.rebalanced(&changes);
        }
        Ok(records)
    }

    /// Sends the outputs the process closure appended; returns how many.
    async fn send_outputs(&mut self) -> Result<u64, ClientError> {
        let mut sent = 0;
        for out in std::mem::take(&mut self.outputs) {
            match out.partition {
                Some(p) => {
                    self.producer
                        .send_to(&out.topic, p, out.key.as_deref(), out.value.as_deref())
                        .await?
                }
                None => {
                    self.producer
                        .send(&out.topic, out.key.as_deref(), out.value.as_deref())
                        .await?
                }
            };
            self.observer.sent(&out);
            sent += 1;
        }
        Ok(sent)
    }

    /// `Some(Step::Crashed)` if the observer crashes the step at `point`;
    /// the step's transaction `txn`, if given, is kept for
    /// [`resume`](Self::resume).
    fn crash_at(&mut self, point: EosPoint, txn: Option<&Txn>) -> Option<Step> {
        match self.observer.at(point) {
            Control::Continue => None,
            Control::Crash => {
                tracing::debug!(%point, "the observer crashed the step");
                self.stalled = txn.map(|txn| (point, txn.clone()));
                self.observer.ended(TxnOutcome::Crashed(point));
                Some(Step::Crashed(point))
            }
        }
    }

    async fn abort_and_rewind(
        &mut self,
        error: ClientError,
        rewind_to: &[(String, u32, u64)],
    ) -> Result<Step, ClientError> {
        if self.producer.is_fatal() {
            self.observer.ended(TxnOutcome::Unknown(&error));
            return Err(error);
        }
        tracing::warn!(%error, "aborting the transaction and rewinding the consumer");
        // A stale generation: the consumer joins again on its next poll.
        self.consumer.note_commit_error(&error);
        if let Err(e) = self.producer.abort().await {
            self.observer.ended(TxnOutcome::Unknown(&e));
            return Err(e);
        }
        self.observer.ended(TxnOutcome::Aborted(&error));
        for (topic, partition, offset) in rewind_to {
            self.consumer.seek(topic, *partition, *offset);
        }
        Ok(Step::Aborted(error))
    }

    /// Runs steps until `idle_timeout` passes without input (forever with
    /// `None`; a rebalance of the consumer's group starts the clock
    /// again), or a step fails; also stops after
    /// 3 aborted transactions in a row whose error is not retriable, and
    /// after a step the observer crashed.
    pub async fn run<F>(
        &mut self,
        mut process: F,
        idle_timeout: Option<Duration>,
    ) -> Result<Totals, ClientError>
    where
        F: FnMut(&ConsumerRecord, &mut Vec<Output>),
    {
        let mut totals = Totals::default();
        let mut last_input = Instant::now();
        let mut aborts_in_a_row = 0u32;
        let mut rebalances = self.consumer.rebalances();
        loop {
            let step = self.step(&mut process).await?;
            // Time spent joining the group is not idle time.
            if self.consumer.rebalances() != rebalances || !self.consumer.joined() {
                rebalances = self.consumer.rebalances();
                last_input = Instant::now();
            }
            match step {
                Step::Committed { records, outputs } => {
                    totals.records += records;
                    totals.outputs += outputs;
                    totals.transactions += 1;
                    aborts_in_a_row = 0;
                    last_input = Instant::now();
                }
                Step::Idle => {
                    if idle_timeout.is_some_and(|idle| last_input.elapsed() >= idle) {
                        return Ok(totals);
                    }
                }
                Step::Aborted(e) => {
                    totals.aborted += 1;
                    last_input = Instant::now();
                    // Fenced by the group: the next step rejoins it.
                    if !e.is_retriable() && !is_group_fencing(&e) {
                        aborts_in_a_row += 1;
                        if aborts_in_a_row >= MAX_ABORTS_IN_A_ROW {
                            return Err(e);
                        }
                    }
                    tokio::time::sleep(ABORT_PAUSE).await;
                }
                Step::Crashed(_) => return Ok(totals),
            }
        }
    }
}

/// Whether `e` says the consumer's group membership is stale (a rebalance
/// moved on without it): the transaction aborts, and the consumer joins
/// again.
fn is_group_fencing(e: &ClientError) -> bool {
    matches!(
        e.code(),
        ErrorCode::IllegalGeneration | ErrorCode::UnknownMemberId | ErrorCode::RebalanceInProgress
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Client;
    use crate::consumer::ConsumerConfig;
    use crate::transactional::{TransactionalConfig, TransactionalProducer};

    #[test]
    fn outputs_name_their_partition_or_leave_it_to_the_key() {
        let o = Output::new("t", Some(Bytes::from_static(b"k")), None);
        assert_eq!(o.partition, None);
        let o = Output::to_partition("t", 2, None, Some(Bytes::from_static(b"v")));
        assert_eq!(o.partition, Some(2));
        assert_eq!(ExactlyOnceConfig::new("g").max_records, 1000);
    }

    #[tokio::test]
    async fn the_loop_needs_a_read_committed_consumer_that_commits_nothing() {
        let client = Client::connect_lazy("127.0.0.1:1").unwrap();
        let producer = || TransactionalProducer::offline_for_tests(client.clone());
        let bad = [
            ConsumerConfig {
                isolation: IsolationLevel::ReadUncommitted,
                ..ConsumerConfig::default()
            },
            ConsumerConfig {
                group: Some("g".into()),
                commit_mode: CommitMode::After,
                ..ConsumerConfig::default()
            },
        ];
        for config in bad {
            let consumer = Consumer::new(client.clone(), config).await.unwrap();
            let err =
                ExactlyOnce::new(consumer, producer(), ExactlyOnceConfig::new("g")).unwrap_err();
            assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
        }
        let consumer = Consumer::new(client.clone(), ConsumerConfig::default())
            .await
            .unwrap();
        assert!(ExactlyOnce::new(consumer, producer(), ExactlyOnceConfig::new("")).is_err());
        let consumer = Consumer::new(client.clone(), ConsumerConfig::default())
            .await
            .unwrap();
        assert!(ExactlyOnce::new(consumer, producer(), ExactlyOnceConfig::new("g")).is_ok());
        let _ = TransactionalConfig::new("unused");
    }

    #[tokio::test]
    async fn a_step_without_input_is_idle_and_opens_no_transaction() {
        let client = Client::connect_lazy("127.0.0.1:1").unwrap();
        // No assignment: poll just waits.
        let consumer = Consumer::new(client.clone(), ConsumerConfig::default())
            .await
            .unwrap();
        let config = ExactlyOnceConfig {
            max_interval: Duration::from_millis(20),
            ..ExactlyOnceConfig::new("g")
        };
        let mut eos = ExactlyOnce::new(
            consumer,
            TransactionalProducer::offline_for_tests(client),
            config,
        )
        .unwrap();
        let step = eos.step(|_, _| unreachable!("no input")).await.unwrap();
        assert!(matches!(step, Step::Idle), "{step:?}");
        assert!(!eos.producer().in_transaction());
        let totals = eos
            .run(|_, _| {}, Some(Duration::from_millis(50)))
            .await
            .unwrap();
        assert_eq!(totals, Totals::default());
    }
}
