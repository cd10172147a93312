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
use ferry_client::retry::{Backoff, retry_until};
use ferry_client::{
    Client, ClientError, CommitMode, Consumer, ConsumerConfig, ConsumerRecord, Control, Delivery,
    EosObserver, EosPoint, ExactlyOnce, ExactlyOnceConfig, IsolationLevel, Output, Producer,
    ProducerConfig, StartFrom, Step, TransactionalConfig, TransactionalProducer, TxnOutcome,
};
use ferry_proto::ErrorCode;
use ferry_storage::FlushPolicy;

use super::checker::{AnomalyKind, CheckOptions, DeliveryMode, Report, Verdict, check};
use super::crash::{BrokerProcess, DurableFloors, TailDamage, crash_and_tear};
use super::history::{History, Invocation, Mop, OpKind, ProcessId, Read, Tp, ValueGen};
use super::proxy::{Fault, FaultPlan, FaultProxy, RpcKind, Targets, splitmix64};
use super::workload::{
    ConsumerStep, CrashPoint, CrashSchedule, CrashingConsumer, RecordingProducer, decode_reads,
    drain,
};

/// The topic the non-transactional modes write and read.
pub const TOPIC: &str = "t";
/// The exactly-once source topic.
pub const SOURCE: &str = "in";
/// The exactly-once output topic.
pub const OUTPUT: &str = "out";
/// The consumer group of every mode.
pub const GROUP: &str = "g";
/// The copier's transactional id.
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

/// The fault classes of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultClass {
    /// Produce (and transaction) responses dropped after the broker
    /// applied the request.
    LostResponse,
    /// The broker crashes (no flush) and restarts; recovery runs.
    BrokerKill,
    /// The broker crashes, the non-durable tail of every log is torn
    /// (zeroed from a random byte, garbage written), and it restarts.
    TornTail,
    /// The consumer (for exactly-once: the copier) crashes before its
    /// commit and comes back from the group's committed offsets.
    ConsumerCrash,
    /// A second producer instance takes over while the first keeps going:
    /// with transactions, the same transactional id fences the first; for
    /// the other modes, a stale producer keeps sending after a broker
    /// restart, next to its replacement.
    ZombieProducer,
}

impl FaultClass {
    /// Every class.
    pub const ALL: [FaultClass; 5] = [
        FaultClass::LostResponse,
        FaultClass::BrokerKill,
        FaultClass::TornTail,
        FaultClass::ConsumerCrash,
        FaultClass::ZombieProducer,
    ];

    /// The class's name on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            FaultClass::LostResponse => "lost-response",
            FaultClass::BrokerKill => "broker-kill",
            FaultClass::TornTail => "torn-tail",
            FaultClass::ConsumerCrash => "consumer-crash",
            FaultClass::ZombieProducer => "zombie-producer",
        }
    }

    /// Parses a comma-separated list of names, or `all`.
    pub fn parse_list(s: &str) -> Result<Vec<FaultClass>, String> {
        if s.trim() == "all" {
            return Ok(FaultClass::ALL.to_vec());
        }
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let class = part.parse::<FaultClass>()?;
            if !out.contains(&class) {
                out.push(class);
            }
        }
        if out.is_empty() {
            return Err("no fault class given".into());
        }
        Ok(out)
    }
}

impl std::str::FromStr for FaultClass {
    type Err = String;

    fn from_str(s: &str) -> Result<FaultClass, String> {
        FaultClass::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = FaultClass::ALL.iter().map(|c| c.name()).collect();
                format!(
                    "unknown fault class {s:?}: expected all or a list of {}",
                    names.join(", ")
                )
            })
    }
}

impl std::fmt::Display for FaultClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses a delivery mode name (`at-most-once`, `at-least-once`,
/// `idempotent`, `exactly-once`).
pub fn parse_mode(s: &str) -> Result<DeliveryMode, String> {
    s.parse::<DeliveryMode>().map_err(|_| {
        format!(
            "unknown mode {s:?}: expected at-most-once, at-least-once, idempotent or exactly-once"
        )
    })
}

/// One step of a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkOp {
    /// Hand `records` fresh values to the producer, spread over the
    /// partitions. For exactly-once they go into a source transaction that
    /// the next op settles: committed, or aborted if `abort`.
    Produce {
        /// How many records.
        records: u8,
        /// Exactly-once only: abort the transaction instead of committing.
        abort: bool,
    },
    /// Run this many consumer (or copier) steps.
    Consume {
        /// Steps.
        steps: u8,
    },
    /// Inject the run's fault class number `class` (modulo the number of
    /// classes); `choice` picks details such as the crash point.
    Fault {
        /// Which class of the run.
        class: u8,
        /// Seeds the details.
        choice: u8,
    },
}

impl std::fmt::Display for WorkOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkOp::Produce { records, abort } => {
                write!(
                    f,
                    "produce({records}{})",
                    if *abort { ", abort" } else { "" }
                )
            }
            WorkOp::Consume { steps } => write!(f, "consume({steps})"),
            WorkOp::Fault { class, choice } => write!(f, "fault({class}, {choice})"),
        }
    }
}

enum Inner {
    Embedded(Box<EmbeddedBroker>),
    Process(BrokerProcess),
}

/// A broker the matrix can crash: in-process, or a `ferry broker`
/// subprocess killed with `kill -9`.
pub struct BrokerUnderTest {
    inner: Option<Inner>,
    addr: String,
    restarts: u64,
}

impl std::fmt::Debug for BrokerUnderTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerUnderTest")
            .field("addr", &self.addr)
            .field("restarts", &self.restarts)
            .finish()
    }
}

/// Errors of a run.
pub type RunError = Box<dyn std::error::Error + Send + Sync>;

impl BrokerUnderTest {
    /// An in-process broker on a temporary directory.
    pub async fn embedded(flush: FlushPolicy) -> Result<BrokerUnderTest, BrokerError> {
        let broker = EmbeddedBroker::start(BrokerConfig::ephemeral().with_flush(flush)).await?;
        Ok(BrokerUnderTest {
            addr: broker.addr_string(),
            inner: Some(Inner::Embedded(Box::new(broker))),
            restarts: 0,
        })
    }

    /// `bin broker --data-dir DIR --listen 127.0.0.1:0 --fsync FLUSH`.
    pub fn process(bin: &Path, dir: &Path, fsync: &str) -> std::io::Result<BrokerUnderTest> {
        let broker = BrokerProcess::start_with_args(bin, dir, "127.0.0.1:0", ["--fsync", fsync])?;
        Ok(BrokerUnderTest {
            addr: broker.addr().to_string(),
            inner: Some(Inner::Process(broker)),
            restarts: 0,
        })
    }

    /// `host:port`; the same across restarts.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// How many times it was crashed and restarted.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Crashes (in-process: no flush; subprocess: `kill -9`) and restarts.
    pub async fn kill_and_restart(&mut self) -> Result<(), RunError> {
        let inner = self.inner.take().ok_or("the broker is gone")?;
        let inner = match inner {
            Inner::Embedded(b) => Inner::Embedded(Box::new(b.crash_and_restart().await?)),
            Inner::Process(p) => {
                Inner::Process(tokio::task::spawn_blocking(move || p.kill9_and_restart()).await??)
            }
        };
        self.inner = Some(inner);
        self.restarts += 1;
        Ok(())
    }

    /// Crashes, tears the tail of every log, and restarts. In-process the
    /// non-durable tail is zeroed from a random byte and garbage written
    /// at the cut; a subprocess's durable offsets are unknown after
    /// `kill -9`, so its logs only get garbage past the last valid batch.
    /// Returns the records cut.
    pub async fn tear_and_restart(&mut self, seed: u64) -> Result<u64, RunError> {
        let inner = self.inner.take().ok_or("the broker is gone")?;
        let (inner, cut) = match inner {
            Inner::Embedded(b) => {
                let (b, report) = crash_and_tear(*b, TailDamage::TruncateAndGarbage, seed).await?;
                (Inner::Embedded(Box::new(b)), report.records_cut())
            }
            Inner::Process(p) => {
                let (p, report) = tokio::task::spawn_blocking(move || {
                    p.kill9_tear_and_restart(TailDamage::Garbage, &DurableFloors::new(), seed)
                })
                .await??;
                (Inner::Process(p), report.records_cut())
            }
        };
        self.inner = Some(inner);
        self.restarts += 1;
        Ok(cut)
    }

    /// Stops the broker (gracefully for a subprocess's exit status).
    pub async fn stop(mut self) -> Result<(), RunError> {
        match self.inner.take() {
            Some(Inner::Embedded(b)) => b.shutdown().await?,
            Some(Inner::Process(p)) => {
                tokio::task::spawn_blocking(move || p.sigterm()).await??;
            }
            None => {}
        }
        Ok(())
    }
}

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
}

/// One row of the printed matrix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatrixRow {
    /// The mode.
    pub mode: DeliveryMode,
    /// The fault classes, joined with `+`.
    pub faults: String,
    /// Records acknowledged to the producers (for exactly-once: committed
    /// into the source topic).
    pub records: usize,
    /// Lost writes.
    pub lost: usize,
    /// Values stored twice.
    pub duplicated: usize,
    /// Values one group delivered twice.
    pub redelivered: usize,
    /// Aborted reads (G1a).
    pub aborted_reads: usize,
    /// Every other anomaly (inconsistent offsets, backwards polls and
    /// sends, poll skips).
    pub other: usize,
    /// Faults injected.
    pub faults_injected: u64,
    /// Whether the mode's verdict is valid.
    pub valid: bool,
}

impl MatrixRow {
    /// The table header, aligned with [`MatrixRow`]'s `Display`.
    pub fn header() -> String {
        format!(
            "{:<13} {:<16} {:>7} {:>5} {:>10} {:>11} {:>13} {:>5} {:>6}  {}",
            "mode",
            "fault",
            "records",
            "lost",
            "duplicated",
            "redelivered",
            "aborted-reads",
            "other",
            "faults",
            "verdict"
        )
    }

    /// Header, a rule and the rows.
    pub fn table(rows: &[MatrixRow]) -> String {
        let header = MatrixRow::header();
        let mut out = format!("{header}\n{}\n", "-".repeat(header.len()));
        for r in rows {
            out.push_str(&r.to_string());
            out.push('\n');
        }
        out
    }
}

impl std::fmt::Display for MatrixRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<13} {:<16} {:>7} {:>5} {:>10} {:>11} {:>13} {:>5} {:>6}  {}",
            self.mode.name(),
            self.faults,
            self.records,
            self.lost,
            self.duplicated,
            self.redelivered,
            self.aborted_reads,
            self.other,
            self.faults_injected,
            if self.valid { "valid" } else { "INVALID" }
        )
    }
}

/// What a [`Run`] found.
#[derive(Debug)]
pub struct CellReport {
    /// The checker's report (both histories' anomalies, for exactly-once).
    pub report: Report,
    /// The verdict for the run's mode.
    pub verdict: Verdict,
    /// The matrix row.
    pub row: MatrixRow,
    /// Every fault injected, in order, for the reader.
    pub injected: Vec<String>,
    /// The histories as JSON lines, for a bug report.
    pub histories: Vec<String>,
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

/// The exactly-once copier: the client's [`ExactlyOnce`] loop, one poll
/// per transaction, copying each value of the source topic to the same
/// partition of the output topic, watched by a [`CopierWatch`]. Its
/// transactional id is shared across incarnations.
type Copier = ExactlyOnce<CopierWatch>;

/// Records a copier incarnation's transactions in the histories and
/// injects its faults: a delivery of the source topic counts (its poll is
/// `ok` with the reads) once its transaction commits; the outputs are one
/// send op in the output topic's history.
struct CopierWatch {
    history: History,
    out: History,
    /// The process the copier's committed deliveries are recorded under.
    process: ProcessId,
    /// The process its outputs are recorded under.
    out_process: ProcessId,
    /// The transaction in flight.
    txn: Option<CopierTxn>,
    /// Crash the next transaction here (the matrix's name for the point,
    /// and the loop's).
    crash: Option<(CrashPoint, EosPoint)>,
    /// A zombie stalls its next transaction after the sends, to be
    /// [resumed](ExactlyOnce::resume) once a new incarnation fenced it;
    /// its fenced transaction is then known to be aborted.
    zombie: bool,
    /// Per step: where it crashed.
    crashed: Option<CrashPoint>,
    /// Per step: whether a poll failed.
    poll_failed: bool,
    /// Per step: the values its committed transaction delivered.
    delivered: usize,
    /// Per step: whether its transaction's outcome is unknown (the
    /// incarnation is done).
    unknown: bool,
}

/// One copier transaction in flight: what it read and wrote.
struct CopierTxn {
    poll: Invocation,
    send: Invocation,
    reads: Vec<Read>,
    outputs: Vec<Mop>,
}

impl CopierWatch {
    fn new(history: &History, out: &History) -> CopierWatch {
        CopierWatch {
            history: history.clone(),
            out: out.clone(),
            process: history.process(),
            out_process: out.process(),
            txn: None,
            crash: None,
            zombie: false,
            crashed: None,
            poll_failed: false,
            delivered: 0,
            unknown: false,
        }
    }

    /// Before a step: what it should crash at, and a clean slate.
    fn arm(&mut self, crash: Option<(CrashPoint, EosPoint)>) {
        self.crash = crash;
        self.crashed = None;
        self.poll_failed = false;
        self.delivered = 0;
        self.unknown = false;
    }
}

impl EosObserver for CopierWatch {
    // One poll per transaction (`max_records` 1): the poll and the sends
    // are invoked here, before anything is sent.
    fn polled(&mut self, records: &[ConsumerRecord]) {
        let reads = decode_reads(records);
        let poll = self.history.invoke(
            self.process,
            OpKind::Poll,
            Some(GROUP),
            vec![Mop::Poll { reads: Vec::new() }],
        );
        let outputs: Vec<Mop> = reads
            .iter()
            .map(|r| send_mop(&Tp::new(OUTPUT, r.tp.partition), r.value, None))
            .collect();
        let send = self
            .out
            .invoke(self.out_process, OpKind::Send, None, outputs.clone());
        self.txn = Some(CopierTxn {
            poll,
            send,
            reads,
            outputs,
        });
    }

    fn poll_failed(&mut self, _: &ClientError) {
        self.poll_failed = true;
    }

    fn at(&mut self, point: EosPoint) -> Control {
        if self.zombie {
            return match point {
                EosPoint::AfterSends => Control::Crash,
                _ => Control::Continue,
            };
        }
        match self.crash {
            Some((name, at)) if at == point => {
                self.crashed = Some(name);
                Control::Crash
            }
            _ => Control::Continue,
        }
    }

    fn ended(&mut self, outcome: TxnOutcome<'_>) {
        let Some(txn) = self.txn.take() else {
            return;
        };
        match outcome {
            TxnOutcome::Committed => {
                self.delivered = txn.reads.len();
                txn.poll.ok(vec![Mop::Poll { reads: txn.reads }]);
                txn.send.ok(txn.outputs);
            }
            TxnOutcome::Aborted(e) => txn.fail(e),
            // The successor that fenced a zombie aborted its transaction.
            TxnOutcome::Unknown(e) if self.zombie && is_fenced(e) => txn.fail(e),
            TxnOutcome::Unknown(e) => {
                self.unknown = true;
                txn.info(e);
            }
            TxnOutcome::Crashed(_) => match self.crashed {
                Some(point) => {
                    self.history.crashed(self.process, point);
                    txn.info("crashed");
                }
                // A zombie stalled: its transaction goes on when resumed.
                None => self.txn = Some(txn),
            },
        }
    }
}

impl CopierTxn {
    /// It certainly did not happen.
    fn fail(self, e: impl std::fmt::Display) {
        self.poll.fail(vec![Mop::Poll { reads: Vec::new() }], &e);
        self.send.fail(self.outputs, &e);
    }

    /// It may have happened.
    fn info(self, e: impl std::fmt::Display) {
        self.poll.info(vec![Mop::Poll { reads: Vec::new() }], &e);
        self.send.info(self.outputs, &e);
    }
}

// One per run: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Side {
    Plain {
        producers: Vec<Plain>,
        consumer: Option<Box<CrashingConsumer>>,
        next_partition: u32,
    },
    Exactly {
        source: Option<TransactionalProducer>,
        source_process: ProcessId,
        open: Option<OpenSource>,
        copier: Option<Copier>,
        /// The output topic's history.
        out: History,
        next_partition: u32,
        /// Crash the copier at this point of its next step with input.
        crash_next: Option<(CrashPoint, EosPoint)>,
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

/// How long [`patiently`] waits for the broker.
const PATIENCE: Duration = Duration::from_secs(20);

/// Retries `f` for up to [`PATIENCE`], every 50 ms, while the broker may still be
/// coming back; a fenced producer is final.
async fn patiently<T, F, Fut>(f: F) -> Result<T, ClientError>
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

fn is_fenced(e: &ClientError) -> bool {
    matches!(
        e.code(),
        ErrorCode::ProducerFenced | ErrorCode::InvalidProducerEpoch
    )
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
                consumer: None,
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
            let copier = start_copier(&run.client, &run.history, &out).await?;
            run.side = Side::Exactly {
                source: Some(source),
                source_process: run.history.process(),
                open: None,
                copier: Some(copier),
                out,
                next_partition: 0,
                crash_next: None,
            };
        } else {
            let producer = run.new_plain_producer().await?;
            let consumer = CrashingConsumer::new(
                run.client.clone(),
                group_consumer_config(run.config.mode),
                TOPIC,
                run.history.clone(),
                CrashSchedule::never(),
            )
            .await?;
            run.side = Side::Plain {
                producers: vec![producer],
                consumer: Some(Box::new(consumer)),
                next_partition: 0,
            };
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
    async fn consume_step(&mut self) -> ConsumerStep {
        match &mut self.side {
            Side::Plain { consumer, .. } => match consumer.as_mut() {
                Some(c) => c
                    .step(Duration::from_millis(100), |_, _| async {})
                    .await
                    // A failed poll is not idleness: the caller keeps going.
                    .unwrap_or(ConsumerStep::Delivered(0)),
                None => ConsumerStep::Idle,
            },
            Side::Exactly {
                copier,
                out,
                crash_next,
                ..
            } => {
                // A scheduled crash waits for a step with input.
                let step = copier_step(&self.client, &self.history, out, copier, *crash_next).await;
                if matches!(step, ConsumerStep::Crashed(_)) {
                    *crash_next = None;
                }
                step
            }
        }
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
            Side::Plain { consumer, .. } => {
                let Some(c) = consumer.as_mut() else {
                    return "no consumer".into();
                };
                let point = CrashPoint::ALL[choice as usize % CrashPoint::ALL.len()];
                // The crash fires on the next step that polls records.
                let step = c.steps() + 1;
                let schedule = std::mem::take(c.schedule_mut()).at(step, point);
                *c.schedule_mut() = schedule;
                format!("consumer crashes {point} at step {step}")
            }
            Side::Exactly { crash_next, .. } => {
                let (point, at) = if choice.is_multiple_of(3) {
                    (CrashPoint::AfterSinkWrite, EosPoint::AfterSends)
                } else {
                    (CrashPoint::BeforeCommit, EosPoint::BeforeCommit)
                };
                *crash_next = Some((point, at));
                format!("copier crashes {point} in its next transaction")
            }
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
            copier,
            out,
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
        notes.extend(zombie_copier(&client, &history, out, copier).await);
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
                consumer,
                ..
            } => {
                for p in producers.iter() {
                    let _ = p.producer.flush().await;
                }
                if let Some(c) = consumer.as_mut() {
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

/// A new copier incarnation: the producer first (fencing the previous one
/// and settling its transaction), then the consumer, which resumes from
/// the committed offsets.
async fn start_copier(
    client: &Client,
    history: &History,
    out: &History,
) -> Result<Copier, RunError> {
    let producer =
        patiently(|| TransactionalProducer::new(client.clone(), transactional_config(COPIER_ID)))
            .await?;
    let consumer = patiently(|| async {
        let mut c = Consumer::new(client.clone(), copier_consumer_config()).await?;
        c.subscribe(SOURCE).await?;
        Ok(c)
    })
    .await?;
    let config = ExactlyOnceConfig {
        max_records: 1,
        max_interval: POLL_WAIT,
        ..ExactlyOnceConfig::new(GROUP)
    };
    let watch = CopierWatch::new(history, out);
    Ok(ExactlyOnce::with_observer(
        consumer, producer, config, watch,
    )?)
}

/// The copier's processing: each value of the source topic to the same
/// partition of the output topic; foreign records produce nothing.
fn copy_value(record: &ConsumerRecord, out: &mut Vec<Output>) {
    if let Some(value) = record.value.as_deref().and_then(ValueGen::decode) {
        let payload = Bytes::from(ValueGen::encode(value));
        out.push(Output::to_partition(
            OUTPUT,
            record.partition,
            None,
            Some(payload),
        ));
    }
}

/// One copier step: a transaction if input came; with `crash`, the copier
/// crashes at that point of it instead (and a new incarnation takes over
/// on the next step). An incarnation whose transaction's outcome became
/// unknown is replaced too.
async fn copier_step(
    client: &Client,
    history: &History,
    out: &History,
    copier: &mut Option<Copier>,
    crash: Option<(CrashPoint, EosPoint)>,
) -> ConsumerStep {
    if copier.is_none() {
        *copier = start_copier(client, history, out).await.ok();
    }
    let Some(c) = copier.as_mut() else {
        return ConsumerStep::Idle;
    };
    let before = c.consumer().positions();
    c.observer_mut().arm(crash);
    let step = c.step(copy_value).await;
    let watch = c.observer();
    if let Some(point) = watch.crashed {
        *copier = None;
        return ConsumerStep::Crashed(point);
    }
    match step {
        Ok(Step::Committed { .. }) => ConsumerStep::Delivered(watch.delivered),
        // Idle only if no poll failed and the position moved nowhere: a
        // poll that returned only aborted batches or markers still made
        // progress.
        Ok(Step::Idle) if !watch.poll_failed && c.consumer().positions() == before => {
            ConsumerStep::Idle
        }
        Err(_) if watch.unknown || c.producer().is_fatal() => {
            *copier = None;
            ConsumerStep::Delivered(0)
        }
        // Aborted and rewound, a failed poll, or progress over markers.
        _ => ConsumerStep::Delivered(0),
    }
}

/// The zombie copier: the instance stalls in a transaction with its
/// outputs sent, a new incarnation fences it, and the stalled one then
/// goes on to commit. Returns the note for the reader.
async fn zombie_copier(
    client: &Client,
    history: &History,
    out: &History,
    copier: &mut Option<Copier>,
) -> Option<String> {
    let mut zombie = copier.take()?;
    zombie.observer_mut().arm(None);
    zombie.observer_mut().zombie = true;
    let stalled = zombie.step(copy_value).await;
    let fresh = start_copier(client, history, out).await;
    let note = match stalled {
        Ok(Step::Crashed(_)) => match zombie.resume().await {
            Ok(Step::Committed { .. }) => "zombie copier committed".to_string(),
            Err(e) if is_fenced(&e) => "zombie copier fenced".to_string(),
            Err(e) | Ok(Step::Aborted(e)) => format!("zombie copier: {e}"),
            Ok(step) => format!("zombie copier: {step:?}"),
        },
        _ => "copier had no input to hold open".to_string(),
    };
    *copier = fresh.ok();
    Some(note)
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
