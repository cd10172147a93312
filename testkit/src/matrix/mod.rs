//! The guarantee matrix: one workload per delivery mode, run under one or
//! more fault classes, judged by the [checker](super::checker).
//!
//! A run is a sequence of [`WorkOp`]s applied by a [`Run`] against a
//! [`BrokerUnderTest`] (in-process or a `ferry broker` subprocess) behind a
//! [`FaultProxy`]:
//!
//! - [`WorkOp::Produce`] hands records to the mode's producer (for
//!   exactly-once: opens a source transaction and sends into it, committed
//!   or aborted by the next op, so a fault can land in the middle);
//! - [`WorkOp::Consume`] runs consumer steps (for exactly-once: steps of
//!   the copier, the client's [`ExactlyOnce`] loop itself, which reads the
//!   source topic `read_committed` and writes each value to the output
//!   topic in a transaction holding its input offsets; an observer records
//!   its history and injects its crashes);
//! - [`WorkOp::Fault`] injects one of the run's [`FaultClass`]es.
//!
//! Without [`FaultClass::GroupRebalance`] the consuming side is one
//! consumer (or copier) that assigns itself every partition; with it, a
//! consumer group of several members (see [`group`]).
//!
//! [`Run::finish`] turns faults off, lets the consumers catch up, drains
//! every topic and returns a [`CellReport`]: the checker's report, the
//! verdict for the mode and a [`MatrixRow`].
//!
//! | mode | producer | consumer |
//! |---|---|---|
//! | at-most-once | `acks=none`, no retries | group, commits before processing |
//! | at-least-once | `acks=all`, not idempotent, retries | group, commits after processing |
//! | idempotent | the default (idempotent) producer | group, commits after processing |
//! | exactly-once | `TransactionalProducer` into `in` | copier `in` → `out`: `read_committed`, offsets inside each transaction |
//!
//! For exactly-once two histories are checked: the source topic as the
//! copier's group delivered it (a delivery counts once its transaction
//! commits), and the output topic as stored. Their anomalies add up.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_broker::{BrokerConfig, BrokerError, EmbeddedBroker};

use ferry_client::{
    Client, ClientError, CommitMode, Consumer, ConsumerConfig, ConsumerEvent, ConsumerRecord,
    Control, Delivery, EosObserver, EosPoint, ExactlyOnce, ExactlyOnceConfig, IsolationLevel,
    Output, Producer, ProducerConfig, StartFrom, Step, TransactionalConfig, TransactionalProducer,
    TxnOutcome,
};
use ferry_storage::FlushPolicy;

use super::checker::{AnomalyKind, CheckOptions, DeliveryMode, Report, Verdict, check};
use super::crash::{BrokerProcess, DurableFloors, TailDamage, crash_and_tear};
use super::history::{History, Invocation, Mop, OpKind, ProcessId, Read, Tp, ValueGen};
use super::proxy::{Fault, FaultPlan, FaultProxy, RpcKind, Targets, splitmix64};
use super::workload::{
    ConsumerStep, CrashPoint, CrashSchedule, CrashingConsumer, RecordingProducer, decode_reads,
    drain, is_fenced, patiently,
};

mod broker;
mod copier;
pub mod group;
mod ops;
mod row;

pub use broker::{BrokerUnderTest, RunError};
use copier::CopierSpec;
use group::{CopierSlot, Member, Until};
pub use ops::{FaultClass, WorkOp, parse_mode};
pub use row::{CellReport, MatrixRow};

/// The topic the non-transactional modes write and read.
pub const TOPIC: &str = "t";
/// The exactly-once source topic.
pub const SOURCE: &str = "in";
/// The exactly-once output topic.
pub const OUTPUT: &str = "out";
/// The consumer group of every mode.
pub const GROUP: &str = "g";
/// The copier's transactional id (the first copier's, with the group
/// fault).
const COPIER_ID: &str = "copier";
/// The source producer's transactional id.
const SOURCE_ID: &str = "source";
/// Partitions per topic.
pub const PARTITIONS: u32 = 2;
/// The consumers' longest fetch wait; also how long a copier step waits
/// for input, so that an idle step is one empty poll.
const POLL_WAIT: Duration = Duration::from_millis(50);
/// How long the consumers may go without progress while catching up at
/// the end of a run.
const CATCH_UP: Duration = Duration::from_secs(30);
/// Probability of a lost response per produce (and transaction) request
/// while [`FaultClass::LostResponse`] is on.
const LOST_RESPONSE_PROBABILITY: f64 = 0.2;

/// The settings of a [`Run`].
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The delivery mode.
    pub mode: DeliveryMode,
    /// The fault classes [`WorkOp::Fault`] picks from.
    pub faults: Vec<FaultClass>,
    /// Seeds every random choice of the run.
    pub seed: u64,
}

impl RunConfig {
    /// The flush policy the broker should run with: torn tails need a
    /// non-durable tail to cut, so they get an interval flush.
    pub fn flush_policy(&self) -> FlushPolicy {
        if self.faults.contains(&FaultClass::TornTail) {
            FlushPolicy::Interval(Duration::from_millis(100))
        } else {
            FlushPolicy::Always
        }
    }

    /// [`RunConfig::flush_policy`] as a `ferry broker --fsync` value.
    pub fn fsync_flag(&self) -> String {
        match self.flush_policy() {
            FlushPolicy::Interval(d) => format!("interval={}", d.as_millis()),
            FlushPolicy::Never => "never".into(),
            FlushPolicy::Always => "always".into(),
        }
    }

    /// Whether the consuming side is a group of members
    /// ([`FaultClass::GroupRebalance`]) rather than one consumer.
    pub fn group_members(&self) -> bool {
        self.faults.contains(&FaultClass::GroupRebalance)
    }
}

/// A producer instance of a non-transactional mode.
struct Plain {
    producer: RecordingProducer,
}

/// A source transaction sent but not yet settled.
struct OpenSource {
    invocation: Invocation,
    sends: Vec<(Tp, u64, Delivery)>,
    abort: bool,
}

// One per run: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Side {
    Plain {
        producers: Vec<Plain>,
        /// One consumer, or the members of the group.
        consumers: Vec<CrashingConsumer>,
        next_partition: u32,
    },
    Exactly {
        source: Option<TransactionalProducer>,
        source_process: ProcessId,
        open: Option<OpenSource>,
        /// One copier, or the members of the group.
        copiers: Vec<CopierSlot>,
        /// The output topic's history.
        out: History,
        next_partition: u32,
    },
}

/// A workload in progress; see the [module docs](self).
pub struct Run {
    config: RunConfig,
    broker: BrokerUnderTest,
    proxy: FaultProxy,
    client: Client,
    history: History,
    side: Side,
    faults_injected: u64,
    injected: Vec<String>,
    ops: u64,
    sent: u64,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("config", &self.config)
            .field("broker", &self.broker)
            .field("ops", &self.ops)
            .finish()
    }
}

fn plain_producer_config(mode: DeliveryMode) -> ProducerConfig {
    ProducerConfig {
        linger: Duration::from_millis(1),
        batch_bytes: 256,
        delivery_timeout: Duration::from_secs(30),
        retry_backoff: Duration::from_millis(5),
        retry_backoff_max: Duration::from_millis(50),
        ..mode.producer_config()
    }
}

fn transactional_config(id: &str) -> TransactionalConfig {
    let mut config = TransactionalConfig::new(id);
    config.transaction_timeout = Duration::from_secs(20);
    config.producer = ProducerConfig {
        linger: Duration::from_millis(1),
        batch_bytes: 256,
        delivery_timeout: Duration::from_secs(20),
        retry_backoff: Duration::from_millis(5),
        retry_backoff_max: Duration::from_millis(50),
        ..ProducerConfig::default()
    };
    config
}

fn group_consumer_config(mode: DeliveryMode) -> ConsumerConfig {
    ConsumerConfig {
        group: Some(GROUP.into()),
        // Plain modes only: before (at-most-once) or after.
        commit_mode: mode.commit_mode(),
        isolation: IsolationLevel::ReadUncommitted,
        start_from: StartFrom::Committed,
        partition_max_bytes: 64,
        max_wait: Duration::from_millis(50),
        ..ConsumerConfig::default()
    }
}

fn copier_consumer_config() -> ConsumerConfig {
    ConsumerConfig {
        group: Some(GROUP.into()),
        commit_mode: CommitMode::None,
        isolation: IsolationLevel::ReadCommitted,
        start_from: StartFrom::Committed,
        partition_max_bytes: 64,
        max_wait: POLL_WAIT,
        ..ConsumerConfig::default()
    }
}

impl Run {
    /// Creates the topics, the proxy, and the mode's producers and
    /// consumers against `broker`.
    pub async fn start(broker: BrokerUnderTest, config: RunConfig) -> Result<Run, RunError> {
        let direct = Client::connect(broker.addr()).await?;
        let topics: &[&str] = if config.mode == DeliveryMode::ExactlyOnce {
            &[SOURCE, OUTPUT]
        } else {
            &[TOPIC]
        };
        for t in topics {
            direct.create_topic(t, PARTITIONS).await?;
        }
        let proxy = FaultProxy::start(broker.addr(), FaultPlan::new(config.seed)).await?;
        let client = Client::connect(&proxy.addr_string()).await?;
        let history = History::new();
        let mut run = Run {
            side: Side::Plain {
                producers: Vec::new(),
                consumers: Vec::new(),
                next_partition: 0,
            },
            config,
            broker,
            proxy,
            client,
            history,
            faults_injected: 0,
            injected: Vec::new(),
            ops: 0,
            sent: 0,
        };
        run.set_base_plan();
        if run.config.mode == DeliveryMode::ExactlyOnce {
            let source =
                TransactionalProducer::new(run.client.clone(), transactional_config(SOURCE_ID))
                    .await?;
            let out = History::new();
            let copiers = if run.config.group_members() {
                group::start_copiers(&run.client, &run.history, &out, run.config.seed).await?
            } else {
                let spec = CopierSpec::single();
                vec![CopierSlot::start(&run.client, &run.history, &out, spec).await?]
            };
            run.side = Side::Exactly {
                source: Some(source),
                source_process: run.history.process(),
                open: None,
                copiers,
                out,
                next_partition: 0,
            };
        } else {
            let producer = run.new_plain_producer().await?;
            let consumers = if run.config.group_members() {
                let mode = run.config.mode;
                group::start_consumers(&run.client, &run.history, mode, run.config.seed).await?
            } else {
                let consumer = CrashingConsumer::new(
                    run.client.clone(),
                    group_consumer_config(run.config.mode),
                    TOPIC,
                    run.history.clone(),
                    CrashSchedule::never(),
                )
                .await?;
                vec![consumer]
            };
            run.side = Side::Plain {
                producers: vec![producer],
                consumers,
                next_partition: 0,
            };
        }
        if run.config.group_members() {
            // The members join before the workload begins.
            run.step_all(0).await;
        }
        Ok(run)
    }

    /// The broker.
    pub fn broker(&self) -> &BrokerUnderTest {
        &self.broker
    }

    /// Faults injected so far (each crash, each lost response, ...).
    pub fn faults_injected(&self) -> u64 {
        self.faults_injected + self.proxy.stats().all_faults()
    }

    /// Records handed to the producers so far.
    pub fn records_sent(&self) -> u64 {
        self.sent
    }

    /// Ops applied so far.
    pub fn ops(&self) -> u64 {
        self.ops
    }

    fn lost_response_targets(&self) -> Targets {
        if self.config.mode == DeliveryMode::ExactlyOnce {
            Targets::of(&[
                RpcKind::Produce,
                RpcKind::ProduceStream,
                RpcKind::AddPartitionsToTxn,
                RpcKind::AddOffsetsToTxn,
                RpcKind::TxnOffsetCommit,
                RpcKind::EndTxn,
            ])
        } else {
            Targets::PRODUCE
        }
    }

    /// The proxy plan between faults: lost responses at random if that
    /// class is on, nothing otherwise.
    fn set_base_plan(&self) {
        let mut plan = FaultPlan::new(self.config.seed);
        if self.config.faults.contains(&FaultClass::LostResponse) {
            plan = plan.with_probability(
                self.lost_response_targets(),
                Fault::DropResponse,
                LOST_RESPONSE_PROBABILITY,
            );
        }
        self.proxy.set_plan(plan);
    }

    async fn new_plain_producer(&self) -> Result<Plain, RunError> {
        let client = self.client.clone();
        let config = plain_producer_config(self.config.mode);
        let producer = patiently(|| Producer::new(client.clone(), config.clone())).await?;
        Ok(Plain {
            producer: RecordingProducer::new(producer, self.history.clone()),
        })
    }

    /// Applies one op. Client errors are part of the workload (recorded in
    /// the history); only a broker that cannot restart is an error.
    pub async fn apply(&mut self, op: WorkOp) -> Result<(), RunError> {
        self.ops += 1;
        tracing::debug!(%op, "apply");
        match op {
            WorkOp::Produce { records, abort } => self.produce(records, abort).await,
            WorkOp::Consume { steps } => {
                self.settle_source().await;
                for _ in 0..steps {
                    self.consume_step().await;
                }
                Ok(())
            }
            WorkOp::Fault { class, choice } => {
                let class = self.config.faults[class as usize % self.config.faults.len()];
                self.fault(class, choice).await
            }
        }
    }

    async fn produce(&mut self, records: u8, abort: bool) -> Result<(), RunError> {
        self.settle_source().await;
        self.sent += u64::from(records);
        let history = self.history.clone();
        match &mut self.side {
            Side::Plain {
                producers,
                next_partition,
                ..
            } => {
                for _ in 0..records {
                    let i = *next_partition as usize % producers.len();
                    let p = *next_partition % PARTITIONS;
                    *next_partition += 1;
                    // A refused send is recorded as failed; go on.
                    let _ = producers[i].producer.send(TOPIC, Some(p)).await;
                }
            }
            Side::Exactly {
                source,
                source_process,
                open,
                next_partition,
                ..
            } => {
                let Some(producer) = source.as_mut() else {
                    return Ok(());
                };
                let values: Vec<(Tp, u64)> = (0..records)
                    .map(|_| {
                        let p = *next_partition % PARTITIONS;
                        *next_partition += 1;
                        (Tp::new(SOURCE, p), history.next_value())
                    })
                    .collect();
                let mops = values
                    .iter()
                    .map(|(tp, v)| send_mop(tp, *v, None))
                    .collect();
                let invocation = history.invoke(*source_process, OpKind::Send, None, mops);
                let mut txn = OpenSource {
                    invocation,
                    sends: Vec::new(),
                    abort,
                };
                if let Err(e) = producer.begin() {
                    txn.invocation.fail(Vec::new(), e);
                    return Ok(());
                }
                for (tp, v) in values {
                    let payload = ValueGen::encode(v);
                    match producer
                        .send_to(SOURCE, tp.partition, None, Some(&payload))
                        .await
                    {
                        Ok(d) => txn.sends.push((tp, v, d)),
                        Err(_) => {
                            // The transaction is abortable now; the settle
                            // aborts it.
                            txn.abort = true;
                            break;
                        }
                    }
                }
                *open = Some(txn);
            }
        }
        Ok(())
    }

    /// Commits (or aborts) the open source transaction and records its
    /// outcome; a poisoned producer is replaced by a new instance, which
    /// settles the transaction on the coordinator.
    async fn settle_source(&mut self) {
        let Side::Exactly {
            source,
            open,
            source_process,
            ..
        } = &mut self.side
        else {
            return;
        };
        let Some(txn) = open.take() else {
            return;
        };
        let Some(producer) = source.as_mut() else {
            txn.invocation.info(Vec::new(), "no source producer");
            return;
        };
        let all = txn.mops();
        let outcome = if txn.abort {
            producer.abort().await.map(|()| false)
        } else {
            match producer.commit().await {
                Ok(()) => Ok(true),
                Err(e) if producer.is_fatal() => Err(e),
                Err(_) => producer.abort().await.map(|()| false),
            }
        };
        match outcome {
            Ok(true) => txn.committed().await,
            Ok(false) => txn.invocation.fail(all, "aborted"),
            Err(e) => {
                txn.invocation.info(all, &e);
                *source = None;
                *source_process = self.history.process();
                let client = self.client.clone();
                *source = patiently(|| {
                    TransactionalProducer::new(client.clone(), transactional_config(SOURCE_ID))
                })
                .await
                .ok();
            }
        }
    }

    /// One consumer (or copier) step; errors are recorded and skipped.
    /// Group members step together, until the group settles.
    async fn consume_step(&mut self) -> ConsumerStep {
        if self.config.group_members() {
            return self.step_all(1).await;
        }
        match &mut self.side {
            Side::Plain { consumers, .. } => match consumers.first_mut() {
                Some(c) => Member::step(c).await,
                None => ConsumerStep::Idle,
            },
            Side::Exactly { copiers, .. } => match copiers.first_mut() {
                // A scheduled crash waits for a step with input.
                Some(c) => c.step().await,
                None => ConsumerStep::Idle,
            },
        }
    }

    /// `steps` steps of every group member, together, then more until the
    /// group settled; idle if it settled and every member's last step was.
    async fn step_all(&mut self, steps: u32) -> ConsumerStep {
        let client = &self.client;
        let together = match &mut self.side {
            Side::Plain { consumers, .. } => {
                group::step_together(client, consumers, steps, Until::Settled).await
            }
            Side::Exactly { copiers, .. } => {
                group::step_together(client, copiers, steps, Until::Settled).await
            }
        };
        together.combined()
    }

    async fn fault(&mut self, class: FaultClass, choice: u8) -> Result<(), RunError> {
        let seed = splitmix64(self.config.seed ^ self.ops);
        self.faults_injected += 1;
        let what = match class {
            FaultClass::LostResponse => {
                // The next request of each kind loses its response, then
                // the base probability applies again.
                let stats = self.proxy.stats();
                let mut plan = FaultPlan::new(seed);
                for kind in RpcKind::ALL {
                    if self.lost_response_targets().contains(kind) {
                        let next = stats.requests_of(Targets::of(&[kind])) + 1;
                        plan = plan.at(kind, next, Fault::DropResponse);
                    }
                }
                plan = plan.with_probability(
                    self.lost_response_targets(),
                    Fault::DropResponse,
                    LOST_RESPONSE_PROBABILITY,
                );
                self.proxy.set_plan(plan);
                // Counted by the proxy when they fire.
                self.faults_injected -= 1;
                "lost responses armed".to_string()
            }
            FaultClass::BrokerKill => {
                self.broker.kill_and_restart().await?;
                "broker killed and restarted".to_string()
            }
            FaultClass::TornTail => {
                // Every other time, right after the producers' records are
                // acknowledged: anything acknowledged before its flush is
                // then still in the tail that gets torn.
                let after_acks = choice.is_multiple_of(2);
                if after_acks {
                    self.await_acks().await;
                }
                let cut = self.broker.tear_and_restart(seed).await?;
                format!(
                    "torn tail{}: {cut} records cut",
                    if after_acks { " right after acks" } else { "" }
                )
            }
            FaultClass::ConsumerCrash => self.consumer_crash(choice).await,
            FaultClass::ZombieProducer => self.zombie().await?,
            FaultClass::GroupRebalance => self.group_fault(choice).await,
        };
        tracing::debug!(%class, %what, "fault");
        self.injected.push(format!("{class}: {what}"));
        Ok(())
    }

    /// Waits for every send so far to be acknowledged (or to fail); for
    /// exactly-once, settles the open source transaction.
    async fn await_acks(&mut self) {
        match &self.side {
            Side::Plain { producers, .. } => {
                for p in producers {
                    let _ = p.producer.flush().await;
                }
            }
            Side::Exactly { .. } => self.settle_source().await,
        }
    }

    async fn consumer_crash(&mut self, choice: u8) -> String {
        match &mut self.side {
            Side::Plain { consumers, .. } => {
                if consumers.is_empty() {
                    return "no consumer".into();
                }
                let point = CrashPoint::ALL[choice as usize % CrashPoint::ALL.len()];
                let i = choice as usize / CrashPoint::ALL.len() % consumers.len();
                let c = &mut consumers[i];
                // The crash fires on the next step that polls records.
                let step = c.steps() + 1;
                let schedule = std::mem::take(c.schedule_mut()).at(step, point);
                *c.schedule_mut() = schedule;
                format!("consumer {i} crashes {point} at step {step}")
            }
            Side::Exactly { copiers, .. } => {
                if copiers.is_empty() {
                    return "no copier".into();
                }
                let (point, at) = if choice.is_multiple_of(3) {
                    (CrashPoint::AfterSinkWrite, EosPoint::AfterSends)
                } else {
                    (CrashPoint::BeforeCommit, EosPoint::BeforeCommit)
                };
                let i = choice as usize / 3 % copiers.len();
                copiers[i].crash_next((point, at));
                format!("copier {i} crashes {point} in its next transaction")
            }
        }
    }

    /// [`FaultClass::GroupRebalance`]: a member killed or paused, a new
    /// one joining (see [`group`]).
    async fn group_fault(&mut self, choice: u8) -> String {
        if !self.config.group_members() {
            return "no group".into();
        }
        // Fresh input on every partition, readable before the fault, so
        // that the member it hits is in the middle of its work.
        let _ = self.produce(2 * PARTITIONS as u8, false).await;
        self.await_acks().await;
        let client = &self.client;
        match &mut self.side {
            Side::Plain { consumers, .. } => {
                group::rebalance_fault(client, consumers, choice).await
            }
            Side::Exactly { copiers, .. } => group::rebalance_fault(client, copiers, choice).await,
        }
    }

    async fn zombie(&mut self) -> Result<String, RunError> {
        if self.config.mode != DeliveryMode::ExactlyOnce {
            return self.zombie_plain().await;
        }
        let history = self.history.clone();
        let client = self.client.clone();
        let Side::Exactly {
            source,
            source_process,
            open,
            copiers,
            ..
        } = &mut self.side
        else {
            return Ok(String::new());
        };
        // The source: a new instance fences the one with the open
        // transaction, which then tries to commit anyway.
        let mut notes = Vec::new();
        if let Some(zombie) = source.take() {
            let fresh = patiently(|| {
                TransactionalProducer::new(client.clone(), transactional_config(SOURCE_ID))
            })
            .await?;
            notes.extend(zombie_source(zombie, open.take()).await);
            *source = Some(fresh);
            *source_process = history.process();
        }
        if let Some(c) = copiers.first_mut() {
            notes.extend(c.zombie().await);
        }
        Ok(notes.join("; "))
    }

    /// The application restarts with the broker: a new producer, while the
    /// old instance keeps sending next to it.
    async fn zombie_plain(&mut self) -> Result<String, RunError> {
        self.broker.kill_and_restart().await?;
        let fresh = self.new_plain_producer().await?;
        let Side::Plain { producers, .. } = &mut self.side else {
            return Ok(String::new());
        };
        producers.push(fresh);
        Ok(format!(
            "broker restarted; {} producer instances now send side by side",
            producers.len()
        ))
    }

    /// Turns faults off, lets the consumers catch up, drains every topic
    /// and judges the histories.
    pub async fn finish(mut self) -> Result<CellReport, RunError> {
        self.settle_source().await;
        self.proxy.set_enabled(false);
        let direct = Client::connect(self.broker.addr()).await?;
        self.prepare_catch_up().await;
        self.catch_up().await?;
        let (report, records, histories) = self.judge(&direct).await?;
        let verdict = report.verdict(self.config.mode);
        let row = self.row(&report, records, verdict.is_valid());
        let histories = histories.iter().map(History::to_json_lines).collect();
        let injected = std::mem::take(&mut self.injected);
        // Stop the clients before the broker.
        drop(self.side);
        self.proxy.shutdown().await;
        let _ = self.broker.stop().await;
        Ok(CellReport {
            report,
            verdict,
            row,
            injected,
            histories,
        })
    }

    /// No more crashes of the plain consumer, every plain send settled; a
    /// source producer for exactly-once (a copier crash still pending
    /// happens during the catch-up).
    async fn prepare_catch_up(&mut self) {
        match &mut self.side {
            Side::Plain {
                producers,
                consumers,
                ..
            } => {
                for p in producers.iter() {
                    let _ = p.producer.flush().await;
                }
                for c in consumers.iter_mut() {
                    *c.schedule_mut() = CrashSchedule::never();
                }
            }
            Side::Exactly { source, .. } => {
                if source.is_none() {
                    let client = self.client.clone();
                    *source = patiently(|| {
                        TransactionalProducer::new(client.clone(), transactional_config(SOURCE_ID))
                    })
                    .await
                    .ok();
                }
            }
        }
    }

    /// Consumer steps until three idle ones in a row. A long backlog is
    /// fine as long as records keep coming.
    async fn catch_up(&mut self) -> Result<(), RunError> {
        let mut progress = Instant::now();
        let mut idle = 0;
        while idle < 3 {
            if progress.elapsed() > CATCH_UP {
                return Err("the consumers made no progress for 30 s".into());
            }
            match self.consume_step().await {
                ConsumerStep::Idle => idle += 1,
                ConsumerStep::Delivered(0) => idle = 0,
                ConsumerStep::Delivered(_) | ConsumerStep::Crashed(_) => {
                    idle = 0;
                    progress = Instant::now();
                }
            }
        }
        Ok(())
    }

    /// Drains every topic into its history and checks them: the report
    /// (for exactly-once, both histories' anomalies), the records
    /// acknowledged, and the histories.
    async fn judge(&self, direct: &Client) -> Result<(Report, usize, Vec<History>), RunError> {
        let idle = Duration::from_millis(300);
        let drained = |group: Option<&str>| CheckOptions {
            drained: true,
            group: group.map(str::to_owned),
        };
        match &self.side {
            Side::Plain { .. } => {
                drain(direct, TOPIC, &self.history, idle).await?;
                let report = check(&self.history.ops(), &drained(Some(GROUP)));
                let records = report.stats.acked;
                Ok((report, records, vec![self.history.clone()]))
            }
            Side::Exactly { out, .. } => {
                drain(direct, SOURCE, &self.history, idle).await?;
                drain(direct, OUTPUT, out, idle).await?;
                let delivered = check(&self.history.ops(), &drained(Some(GROUP)));
                let stored = check(&out.ops(), &drained(None));
                let records = delivered.stats.acked;
                let mut anomalies = delivered.anomalies;
                anomalies.extend(stored.anomalies);
                anomalies.sort_by_key(|a| a.kind());
                let report = Report {
                    anomalies,
                    stats: delivered.stats,
                };
                Ok((report, records, vec![self.history.clone(), out.clone()]))
            }
        }
    }

    /// The matrix row of a judged run.
    fn row(&self, report: &Report, records: usize, valid: bool) -> MatrixRow {
        let other = [
            AnomalyKind::InconsistentOffsets,
            AnomalyKind::NonMonotonicPoll,
            AnomalyKind::NonMonotonicSend,
            AnomalyKind::PollSkip,
        ]
        .iter()
        .map(|k| report.count(*k))
        .sum();
        let faults: Vec<&str> = self.config.faults.iter().map(|f| f.name()).collect();
        MatrixRow {
            mode: self.config.mode,
            faults: if self.config.faults.len() == FaultClass::ALL.len() {
                "all".to_string()
            } else {
                faults.join("+")
            },
            records,
            lost: report.count(AnomalyKind::LostWrite),
            duplicated: report.count(AnomalyKind::Duplicate),
            redelivered: report.count(AnomalyKind::DuplicateDelivery),
            aborted_reads: report.count(AnomalyKind::AbortedRead),
            other,
            faults_injected: self.faults_injected(),
            valid,
        }
    }
}

fn send_mop(tp: &Tp, value: u64, offset: Option<u64>) -> Mop {
    Mop::Send {
        tp: tp.clone(),
        value,
        offset,
    }
}

impl OpenSource {
    /// Its sends, without offsets.
    fn mops(&self) -> Vec<Mop> {
        self.sends
            .iter()
            .map(|(tp, v, _)| send_mop(tp, *v, None))
            .collect()
    }

    /// Completes it as committed, with the offsets the sends got.
    async fn committed(self) {
        let mut mops = Vec::new();
        for (tp, v, d) in self.sends {
            let offset = d.wait().await.ok().and_then(|m| m.offset);
            mops.push(send_mop(&tp, v, offset));
        }
        self.invocation.ok(mops);
    }
}

/// The zombie source producer, fenced by a new instance, sends more and
/// tries to commit its open transaction anyway. Returns the note for the
/// reader.
async fn zombie_source(
    mut zombie: TransactionalProducer,
    open: Option<OpenSource>,
) -> Option<String> {
    let txn = open?;
    let all = txn.mops();
    // More sends after the fence, then the commit.
    let late = zombie.send_to(SOURCE, 0, None, Some(b"late")).await;
    Some(match zombie.commit().await {
        Ok(()) => {
            txn.committed().await;
            "zombie source committed".to_string()
        }
        Err(e) if is_fenced(&e) || late.as_ref().is_err_and(is_fenced) => {
            // Fenced: the new instance aborted it.
            txn.invocation.fail(all, &e);
            "zombie source fenced".to_string()
        }
        Err(e) => {
            txn.invocation.info(all, &e);
            format!("zombie source: {e}")
        }
    })
}

/// Runs `ops` as one cell against a fresh in-process broker.
pub async fn run_embedded(config: RunConfig, ops: &[WorkOp]) -> Result<CellReport, RunError> {
    let broker = BrokerUnderTest::embedded(config.flush_policy()).await?;
    let mut run = Run::start(broker, config).await?;
    for op in ops {
        run.apply(*op).await?;
    }
    run.finish().await
}

/// A fresh data directory path under `base` for a subprocess broker.
pub fn data_dir(base: &Path, seed: u64) -> PathBuf {
    base.join(format!("ferry-torture-{seed}"))
}
