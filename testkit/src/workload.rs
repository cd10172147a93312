//! Workload pieces that record what they do in a [`History`]: a producer
//! wrapper, a consumer that crashes at chosen points, and a final drain.
//!
//! # Consumer crash points
//!
//! One [`CrashingConsumer::step`] is: poll → process (decode the values) →
//! sink write (the caller's effect) → commit. A crash drops the consumer
//! without committing anything more and starts a new one in the same group
//! as a new process, which resumes from the group's committed offsets:
//!
//! | point | what the crashed process had done |
//! |---|---|
//! | [`CrashPoint::AfterPoll`] | fetched the records (and, with `CommitMode::Before`, committed past them) |
//! | [`CrashPoint::AfterProcess`] | also decoded them, but wrote nothing |
//! | [`CrashPoint::AfterSinkWrite`] | also wrote them to the sink |
//! | [`CrashPoint::BeforeCommit`] | everything but the commit (with transactions this is where the sink write and the commit split) |
//!
//! The history records a poll as `Ok`, that is *delivered*, only once the
//! sink write is done; a poll whose process crashed before the sink write
//! completes as `Fail`, because nothing came of it.
//!
//! # Group members
//!
//! [`CrashingConsumer::new`] assigns itself every partition by hand (no
//! membership); [`CrashingConsumer::member`] subscribes as a member of the
//! group, which splits the partitions between its members and moves them
//! in rebalances. A member's polls are recorded under a new process each
//! time a poll takes part in a rebalance: within one assignment a process
//! must read each partition forwards without gaps, but across assignments
//! another member may have read on (a jump) or the partition may come back
//! from an older committed offset (a redelivery).

use std::future::Future;
use std::time::{Duration, Instant};

use ferry_client::retry::{Backoff, retry_until};
use ferry_client::{
    Client, ClientError, CommitMode, Consumer, ConsumerConfig, ConsumerEvent, ConsumerRecord,
    Producer, StartFrom,
};
use ferry_proto::ErrorCode;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use super::history::{History, Mop, OpKind, ProcessId, Read, Tp, Value, ValueGen};
use super::proxy::splitmix64;

/// Sends unique values through a [`Producer`] and records each send:
/// invoked when handed to the producer, completed when its delivery
/// resolves (`Ok` with the offset; `Fail` for a definite error; `Info` for
/// an indefinite one, such as a delivery timeout).
pub struct RecordingProducer {
    producer: Producer,
    history: History,
    process: ProcessId,
    completions: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for RecordingProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingProducer")
            .field("process", &self.process)
            .finish()
    }
}

impl RecordingProducer {
    /// Wraps `producer`; its sends are recorded as a new process.
    pub fn new(producer: Producer, history: History) -> RecordingProducer {
        let process = history.process();
        RecordingProducer {
            producer,
            history,
            process,
            completions: Mutex::new(Vec::new()),
        }
    }

    /// The process id its sends are recorded under.
    pub fn process(&self) -> ProcessId {
        self.process
    }

    /// The wrapped producer.
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// Sends a fresh value to `partition`, or where the producer puts
    /// keyless records. Returns the value once the producer has it; the
    /// outcome is recorded in the background.
    pub async fn send(&self, topic: &str, partition: Option<u32>) -> Result<Value, ClientError> {
        let value = self.history.next_value();
        let payload = ValueGen::encode(value);
        let sent = match partition {
            Some(p) => self.producer.send_to(topic, p, None, Some(&payload)).await,
            None => self.producer.send(topic, None, Some(&payload)).await,
        };
        let delivery = match sent {
            Ok(d) => d,
            Err(e) => {
                // Refused before it was queued: it never left the process.
                let tp = Tp::new(topic, partition.unwrap_or(0));
                let mop = send_mop(&tp, value, None);
                self.history
                    .invoke(self.process, OpKind::Send, None, vec![mop.clone()])
                    .fail(vec![mop], &e);
                return Err(e);
            }
        };
        let tp = Tp::new(topic, delivery.partition());
        let invocation = self.history.invoke(
            self.process,
            OpKind::Send,
            None,
            vec![send_mop(&tp, value, None)],
        );
        let task = tokio::spawn(async move {
            match delivery.wait().await {
                Ok(meta) => invocation.ok(vec![send_mop(&tp, value, meta.offset)]),
                Err(e) if e.code().is_definite() => {
                    invocation.fail(vec![send_mop(&tp, value, None)], e);
                }
                Err(e) => invocation.info(vec![send_mop(&tp, value, None)], e),
            }
        });
        self.completions.lock().push(task);
        Ok(value)
    }

    /// Flushes the producer and waits until every send so far is recorded.
    /// Failed records are not an error here: each one is recorded in the
    /// history as a failed (or indeterminate) send, for the checker.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let r = match self.producer.flush().await {
            Err(ClientError::RecordsFailed { .. }) => Ok(()),
            r => r,
        };
        let tasks: Vec<_> = std::mem::take(&mut *self.completions.lock());
        for t in tasks {
            let _ = t.await;
        }
        r
    }

    /// Flushes and closes the producer.
    pub async fn close(self) -> Result<(), ClientError> {
        self.flush().await?;
        self.producer.close().await
    }
}

fn send_mop(tp: &Tp, value: Value, offset: Option<u64>) -> Mop {
    Mop::Send {
        tp: tp.clone(),
        value,
        offset,
    }
}

/// Where a [`CrashingConsumer`] may crash; see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CrashPoint {
    /// Right after the poll returned records.
    AfterPoll,
    /// After decoding them, before the sink write.
    AfterProcess,
    /// After the sink write.
    AfterSinkWrite,
    /// Just before the commit.
    BeforeCommit,
}

impl CrashPoint {
    /// Every point, in step order.
    pub const ALL: [CrashPoint; 4] = [
        CrashPoint::AfterPoll,
        CrashPoint::AfterProcess,
        CrashPoint::AfterSinkWrite,
        CrashPoint::BeforeCommit,
    ];
}

impl std::fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CrashPoint::AfterPoll => "after-poll",
            CrashPoint::AfterProcess => "after-process",
            CrashPoint::AfterSinkWrite => "after-sink-write",
            CrashPoint::BeforeCommit => "before-commit",
        })
    }
}

/// When a [`CrashingConsumer`] crashes: scripted steps, and/or each
/// listed point with a probability drawn from a seed. Like
/// [`FaultPlan`](super::FaultPlan), a decision depends only on the seed,
/// the step number and the point.
#[derive(Clone, Debug, Default)]
pub struct CrashSchedule {
    seed: u64,
    probability: f64,
    points: Vec<CrashPoint>,
    scripted: Vec<(u64, CrashPoint)>,
}

impl CrashSchedule {
    /// Never crashes.
    pub fn never() -> CrashSchedule {
        CrashSchedule::default()
    }

    /// At each of `points`, crashes with `probability`.
    pub fn random(seed: u64, probability: f64, points: &[CrashPoint]) -> CrashSchedule {
        CrashSchedule {
            seed,
            probability: probability.clamp(0.0, 1.0),
            points: points.to_vec(),
            scripted: Vec::new(),
        }
    }

    /// Also crashes at `point` of step `step` (1-based; steps that polled
    /// nothing do not count).
    pub fn at(mut self, step: u64, point: CrashPoint) -> CrashSchedule {
        self.scripted.push((step, point));
        self
    }

    /// Whether to crash at `point` of step `step`.
    pub fn crashes(&self, step: u64, point: CrashPoint) -> bool {
        if self.scripted.contains(&(step, point)) {
            return true;
        }
        if !self.points.contains(&point) || self.probability <= 0.0 {
            return false;
        }
        let draw = splitmix64(self.seed ^ splitmix64(step << 8 | point as u64));
        ((draw >> 11) as f64) / ((1u64 << 53) as f64) < self.probability
    }
}

/// What one [`CrashingConsumer::step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumerStep {
    /// Delivered this many records to the sink (and committed, under
    /// `CommitMode::After`); `Delivered(0)` for a poll that made progress
    /// without records (a rebalance).
    Delivered(usize),
    /// The poll returned nothing.
    Idle,
    /// Crashed here; a new consumer process took over.
    Crashed(CrashPoint),
}

/// A consumer in a group that crashes at [`CrashPoint`]s and comes back,
/// recording its polls and commits. Under `CommitMode::After` it commits
/// after every sink write; under `Before`, the consumer commits in `poll`.
pub struct CrashingConsumer {
    client: Client,
    config: ConsumerConfig,
    topic: String,
    history: History,
    schedule: CrashSchedule,
    consumer: Consumer,
    /// A group member (`subscribe`), not a manual assignment.
    member: bool,
    process: ProcessId,
    steps: u64,
    crashes: Vec<(ProcessId, u64, CrashPoint)>,
}

impl std::fmt::Debug for CrashingConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrashingConsumer")
            .field("topic", &self.topic)
            .field("process", &self.process)
            .field("steps", &self.steps)
            .field("crashes", &self.crashes.len())
            .finish()
    }
}

impl CrashingConsumer {
    /// Assigns a consumer with `config` (which needs a group, for its
    /// commits) every partition of `topic`, with no group membership.
    pub async fn new(
        client: Client,
        config: ConsumerConfig,
        topic: &str,
        history: History,
        schedule: CrashSchedule,
    ) -> Result<CrashingConsumer, ClientError> {
        CrashingConsumer::start(client, config, topic, history, schedule, false).await
    }

    /// Subscribes a consumer with `config` (which needs a group) to `topic`
    /// as a member of the group; its incarnations after a crash join as new
    /// members.
    pub async fn member(
        client: Client,
        config: ConsumerConfig,
        topic: &str,
        history: History,
        schedule: CrashSchedule,
    ) -> Result<CrashingConsumer, ClientError> {
        CrashingConsumer::start(client, config, topic, history, schedule, true).await
    }

    async fn start(
        client: Client,
        config: ConsumerConfig,
        topic: &str,
        history: History,
        schedule: CrashSchedule,
        member: bool,
    ) -> Result<CrashingConsumer, ClientError> {
        if config.group.is_none() {
            return Err(ClientError::InvalidArgument(
                "a crashing consumer needs a consumer group to come back to".into(),
            ));
        }
        let consumer = consumer_for(&client, &config, topic, member).await?;
        let process = history.process();
        Ok(CrashingConsumer {
            client,
            config,
            topic: topic.to_owned(),
            history,
            schedule,
            consumer,
            member,
            process,
            steps: 0,
            crashes: Vec::new(),
        })
    }

    /// The consumer of the current incarnation.
    pub fn consumer(&self) -> &Consumer {
        &self.consumer
    }

    /// Leaves the group (a clean exit); commits nothing.
    pub async fn close(self) -> Result<(), ClientError> {
        self.consumer.close().await
    }

    /// A new consumer like this one (same settings, topic and history; no
    /// crashes scheduled), as a new process: for a member, a new member of
    /// the group.
    pub async fn another(&self) -> Result<CrashingConsumer, ClientError> {
        CrashingConsumer::start(
            self.client.clone(),
            self.config.clone(),
            &self.topic,
            self.history.clone(),
            CrashSchedule::never(),
            self.member,
        )
        .await
    }

    /// Crashes between steps: the consumer is dropped without committing
    /// or leaving its group, and a new incarnation starts as a new process
    /// (a new member, for a member).
    pub async fn kill(&mut self) -> Result<(), ClientError> {
        self.crash_as("killed between steps").await
    }

    /// The current process id.
    pub fn process(&self) -> ProcessId {
        self.process
    }

    /// Every crash so far: process, step, point.
    pub fn crashes(&self) -> &[(ProcessId, u64, CrashPoint)] {
        &self.crashes
    }

    /// Steps that polled records so far (the step numbers a
    /// [`CrashSchedule`] counts).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The crash schedule, to add crashes mid-run (for example
    /// `schedule.at(consumer.steps() + 1, point)` for the next step).
    pub fn schedule_mut(&mut self) -> &mut CrashSchedule {
        &mut self.schedule
    }

    /// One poll → process → sink write → commit round; `sink` is the
    /// effect (it receives the decoded values, in poll order, with the
    /// records). Errors of the poll or the commit are returned after being
    /// recorded; the consumer stays usable.
    pub async fn step<F, Fut>(
        &mut self,
        timeout: Duration,
        sink: F,
    ) -> Result<ConsumerStep, ClientError>
    where
        F: FnOnce(Vec<Read>, Vec<ConsumerRecord>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let group = self.config.group.clone();
        let invocation = self.history.invoke(
            self.process,
            OpKind::Poll,
            group.as_deref(),
            vec![Mop::Poll { reads: Vec::new() }],
        );
        let events = match self.consumer.poll_events(timeout).await {
            Ok(events) => events,
            Err(e) => {
                invocation.fail(vec![Mop::Poll { reads: Vec::new() }], &e);
                return Err(e);
            }
        };
        let mut records = Vec::new();
        let mut rebalanced = false;
        for event in events {
            match event {
                ConsumerEvent::Record(r) => records.push(r),
                ConsumerEvent::PartitionEof { .. } => {}
                ConsumerEvent::Assigned { .. }
                | ConsumerEvent::Revoked { .. }
                | ConsumerEvent::Lost { .. } => rebalanced = true,
            }
        }
        if rebalanced {
            // A rebalancing poll returns no records; what this member
            // reads next, it reads under a new assignment.
            invocation.ok(vec![Mop::Poll { reads: Vec::new() }]);
            self.process = self.history.process();
            // Not idle: the group moved on.
            return Ok(ConsumerStep::Delivered(0));
        }
        if records.is_empty() {
            invocation.ok(vec![Mop::Poll { reads: Vec::new() }]);
            return Ok(ConsumerStep::Idle);
        }
        self.steps += 1;
        let step = self.steps;
        let not_delivered = |inv: super::history::Invocation, point: CrashPoint| {
            inv.fail(
                vec![Mop::Poll { reads: Vec::new() }],
                format!("crashed {point} before the sink write"),
            );
        };
        if self.schedule.crashes(step, CrashPoint::AfterPoll) {
            not_delivered(invocation, CrashPoint::AfterPoll);
            return self.crash(CrashPoint::AfterPoll).await;
        }
        let reads = decode_reads(&records);
        if self.schedule.crashes(step, CrashPoint::AfterProcess) {
            not_delivered(invocation, CrashPoint::AfterProcess);
            return self.crash(CrashPoint::AfterProcess).await;
        }
        let n = records.len();
        sink(reads.clone(), records).await;
        invocation.ok(vec![Mop::Poll { reads }]);
        for point in [CrashPoint::AfterSinkWrite, CrashPoint::BeforeCommit] {
            if self.schedule.crashes(step, point) {
                return self.crash(point).await;
            }
        }
        if self.config.commit_mode == CommitMode::After {
            let positions = self.consumer.positions();
            let offsets = positions
                .iter()
                .map(|(t, p, o)| (Tp::new(t.as_str(), *p), *o))
                .collect();
            let commit = self.history.invoke(
                self.process,
                OpKind::Commit,
                group.as_deref(),
                vec![Mop::Commit { offsets }],
            );
            match self.consumer.commit().await {
                Ok(()) => commit.ok(Vec::new()),
                Err(e) if e.code().is_definite() => {
                    commit.fail(Vec::new(), &e);
                    return Err(e);
                }
                Err(e) => {
                    commit.info(Vec::new(), &e);
                    return Err(e);
                }
            }
        }
        Ok(ConsumerStep::Delivered(n))
    }

    /// Drops the consumer without committing (a member without leaving the
    /// group) and starts a new one as a new process.
    async fn crash(&mut self, point: CrashPoint) -> Result<ConsumerStep, ClientError> {
        self.crashes.push((self.process, self.steps, point));
        self.crash_as(point).await?;
        Ok(ConsumerStep::Crashed(point))
    }

    async fn crash_as(&mut self, what: impl std::fmt::Display) -> Result<(), ClientError> {
        self.history.crashed(self.process, &what);
        tracing::debug!(process = self.process, %what, "consumer crashes");
        let consumer = consumer_for(&self.client, &self.config, &self.topic, self.member).await?;
        // The old incarnation goes only now, as a dead process's
        // connection would: without a commit or a LeaveGroup.
        self.consumer = consumer;
        self.process = self.history.process();
        Ok(())
    }
}

/// A consumer of every partition of `topic` (no membership), or with
/// `member` a group member subscribed to it.
async fn consumer_for(
    client: &Client,
    config: &ConsumerConfig,
    topic: &str,
    member: bool,
) -> Result<Consumer, ClientError> {
    let mut consumer = Consumer::new(client.clone(), config.clone()).await?;
    if member {
        consumer.subscribe(topic).await?;
    } else {
        consumer.assign_topic(topic).await?;
    }
    Ok(consumer)
}

/// Reads `topic` from the earliest offset, outside any group, until every
/// partition is read to its end ([`Consumer::at_end`]: its last stable
/// offset under read_committed), or no new record arrived for `idle`,
/// recording each poll (as a new process) for the checker. Returns the
/// reads.
pub async fn drain(
    client: &Client,
    topic: &str,
    history: &History,
    idle: Duration,
) -> Result<Vec<Read>, ClientError> {
    let config = ConsumerConfig {
        group: None,
        commit_mode: CommitMode::None,
        start_from: StartFrom::Earliest,
        max_wait: idle.min(Duration::from_millis(200)),
        ..ConsumerConfig::default()
    };
    let mut consumer = consumer_for(client, &config, topic, false).await?;
    let process = history.process();
    let mut all = Vec::new();
    let mut last_new = Instant::now();
    while last_new.elapsed() < idle && !consumer.at_end() {
        let invocation = history.invoke(
            process,
            OpKind::Poll,
            None,
            vec![Mop::Poll { reads: Vec::new() }],
        );
        let records = match consumer.poll(idle).await {
            Ok(r) => r,
            Err(e) => {
                invocation.fail(Vec::new(), &e);
                return Err(e);
            }
        };
        let reads = decode_reads(&records);
        if !records.is_empty() {
            last_new = Instant::now();
        }
        all.extend(reads.iter().cloned());
        invocation.ok(vec![Mop::Poll { reads }]);
    }
    Ok(all)
}

/// The reads of `records` whose values a [`ValueGen`] made; foreign
/// records are left out.
pub fn decode_reads(records: &[ConsumerRecord]) -> Vec<Read> {
    records
        .iter()
        .filter_map(|r| {
            Some(Read {
                tp: Tp::new(&*r.topic, r.partition),
                offset: r.offset,
                value: ValueGen::decode(r.value.as_deref()?)?,
            })
        })
        .collect()
}

/// How long [`patiently`] waits for the broker.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Retries `f` for up to [`PATIENCE`], every 50 ms, while the broker may
/// still be coming back (a restart, a crash test); a fenced producer is
/// final.
pub async fn patiently<T, F, Fut>(f: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    retry_until(
        "a call to a restarting broker",
        tokio::time::Instant::now() + PATIENCE,
        Backoff::fixed(Duration::from_millis(50)),
        |e| !is_fenced(e),
        f,
    )
    .await
}

/// Whether `e` says a newer producer with the same transactional id took
/// over.
pub fn is_fenced(e: &ClientError) -> bool {
    matches!(
        e.code(),
        ErrorCode::ProducerFenced | ErrorCode::InvalidProducerEpoch
    )
}
