//! One round of a lab cell: a scenario in one mode and one [`Faults`]
//! column, from a fresh broker to its [`Round`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_client::sink::db::tokio_postgres;
use ferry_client::sink::rusqlite::{self, Connection, params};
use ferry_client::sink::{Event, Sink, SinkError, UniqueSink, UpsertSink, Versioned, Written};
use ferry_client::{
    Client, ClientError, Consumer, ConsumerConfig, ConsumerRecord, Control, EosObserver, EosPoint,
    ExactlyOnce, ExactlyOnceConfig, IsolationLevel, Output, Producer, ProducerConfig, StartFrom,
    Step, TransactionalConfig, TransactionalProducer, TxnOutcome,
};
use ferry_storage::FlushPolicy;
use hdrhistogram::Histogram;
use parking_lot::Mutex;

use super::report::Round;
use super::{Faults, LabConfig, LabError, LabMode, Scenario};
use ferry_bench::{Latency, latency_histogram, record_us};
use ferry_testkit::proxy::splitmix64;
use ferry_testkit::{
    Anomaly, AnomalyKind, CheckOptions, ConsumerStep, CrashPoint, CrashSchedule, CrashingConsumer,
    DeliveryMode, Fault, FaultKind, FaultPlan, FaultProxy, History, Mop, OpKind, OpType, ProcessId,
    Read, RecordingProducer, Report, Targets, Value, ValueGen, check, decode_reads, drain,
    matrix::BrokerUnderTest, patiently,
};

mod at_least_once;
mod exactly_once;
mod pg;
mod sinks;

use at_least_once::consume_at_least_once;
use exactly_once::consume_exactly_once;
pub(crate) use pg::throwaway_postgres;
use pg::{CellDb, consume_with_db_offsets, fulfilment_damage};
use sinks::{AloSink, SinkState, insert_plain, order_event, orders_db, plain_reservations};

/// Partitions of every lab topic.
const PARTITIONS: u32 = 2;
/// SKUs the orders draw from, and each one's starting stock.
const SKUS: u64 = 50;
const STOCK: i64 = 1_000_000_000;
/// Trip updates per trip.
const UPDATES_PER_TRIP: u64 = 20;
/// One consumer poll's longest wait; for exactly-once, how long a step waits
/// for input.
const POLL: Duration = Duration::from_millis(100);
/// Idle polls in a row, once the input is all produced, that end a cell.
const IDLE_POLLS: u32 = 3;

/// The order id, trip, ... of a value: everything derives from it.
fn sku(v: Value) -> u64 {
    v % SKUS
}

fn trip(v: Value, records: u64) -> u64 {
    v % (records / UPDATES_PER_TRIP).max(1)
}

/// The broker of a cell: a fresh in-process one, or the one given.
enum LabBroker {
    Managed(BrokerUnderTest),
    Remote(String),
}

impl LabBroker {
    async fn start(config: &LabConfig) -> Result<LabBroker, LabError> {
        Ok(match &config.broker {
            Some(addr) => LabBroker::Remote(addr.clone()),
            None => LabBroker::Managed(BrokerUnderTest::embedded(FlushPolicy::Always).await?),
        })
    }

    fn addr(&self) -> String {
        match self {
            LabBroker::Managed(b) => b.addr().to_string(),
            LabBroker::Remote(a) => a.clone(),
        }
    }

    /// Crashes and restarts the broker; `false` for one the lab does not
    /// own.
    async fn restart(&mut self) -> Result<bool, LabError> {
        match self {
            LabBroker::Managed(b) => {
                b.kill_and_restart().await?;
                Ok(true)
            }
            LabBroker::Remote(_) => Ok(false),
        }
    }

    async fn stop(self) {
        if let LabBroker::Managed(b) = self {
            let _ = b.stop().await;
        }
    }
}

fn producer_config(mode: DeliveryMode) -> ProducerConfig {
    ProducerConfig {
        delivery_timeout: Duration::from_secs(30),
        retry_backoff: Duration::from_millis(5),
        retry_backoff_max: Duration::from_millis(50),
        ..mode.producer_config()
    }
}

fn consumer_config(group: &str, mode: LabMode) -> ConsumerConfig {
    ConsumerConfig {
        group: Some(group.to_owned()),
        commit_mode: mode.delivery().commit_mode(),
        isolation: IsolationLevel::ReadCommitted,
        start_from: StartFrom::Committed,
        partition_max_bytes: 64 * 1024,
        max_wait: Duration::from_millis(50),
        ..ConsumerConfig::default()
    }
}

/// The names of a cell's topics, group and transactional id, unique per
/// run so that cells can share a broker.
struct Names {
    input: String,
    output: String,
    group: String,
    transactional_id: String,
}

impl Names {
    fn new(scenario: Scenario, mode: LabMode, faults: Faults, seed: u64) -> Names {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let base = format!(
            "lab-{}-{}-{}-{seed}-{nonce}",
            scenario.name(),
            mode.spec().key.replace('_', "-"),
            faults.label()
        );
        Names {
            input: format!("{base}-in"),
            output: format!("{base}-out"),
            group: format!("{base}-g"),
            transactional_id: format!("{base}-txn"),
        }
    }
}

/// What the consumer side measured.
#[derive(Default)]
struct Progress {
    /// Values whose effect happened at least once.
    delivered: HashSet<Value>,
    latency: Option<Histogram<u64>>,
    last_first_delivery: Option<Instant>,
    absorbed: u64,
    crashes: u64,
    caught_up: bool,
    /// Empty polls in a row since everything was produced.
    idle: u32,
    /// When catching up gives up.
    deadline: Option<Instant>,
}

impl Progress {
    /// Whether the cell may stop: everything produced and `IDLE_POLLS`
    /// empty polls since; or out of time (`caught_up` stays false).
    fn finished(&mut self, step_idle: bool, produced: &AtomicBool, config: &LabConfig) -> bool {
        if !produced.load(Ordering::Acquire) {
            self.idle = 0;
            return false;
        }
        let deadline = *self
            .deadline
            .get_or_insert_with(|| Instant::now() + config.catch_up);
        self.idle = if step_idle { self.idle + 1 } else { 0 };
        if self.idle >= IDLE_POLLS {
            self.caught_up = true;
            return true;
        }
        Instant::now() >= deadline
    }

    /// Notes the effect of `values` now, timing each first one from its
    /// send.
    fn effect(&mut self, values: &[Value], sent_at: &Mutex<HashMap<Value, Instant>>) {
        let now = Instant::now();
        let sent_at = sent_at.lock();
        let latency = self.latency.get_or_insert_with(latency_histogram);
        for v in values {
            if self.delivered.insert(*v) {
                if let Some(t) = sent_at.get(v) {
                    record_us(latency, now.duration_since(*t).as_micros() as u64);
                }
                self.last_first_delivery = Some(now);
            }
        }
    }
}

/// Runs one round of a cell on a fresh broker (or the configured one): the
/// scenario's input, consumed in `mode`, under the seeded faults or none;
/// see the [module docs](super).
pub async fn run_cell(
    config: &LabConfig,
    scenario: Scenario,
    mode: LabMode,
    faults: Faults,
) -> Result<Round, LabError> {
    // One fault schedule per scenario: its modes and rounds face the same
    // one.
    let seed = splitmix64(config.seed ^ splitmix64(scenario as u64));
    let names = Names::new(scenario, mode, faults, config.seed);
    // The database modes' own database, made before the broker starts.
    let cell_db = match (mode.spec().postgres, &config.postgres) {
        (false, _) => None,
        (true, Some(url)) => Some(CellDb::create(url, &names).await?),
        (true, None) => return Err(format!("{mode:?} needs a PostgreSQL server").into()),
    };
    let mut broker = LabBroker::start(config).await?;
    let direct = Client::connect(&broker.addr()).await?;
    direct.create_topic(&names.input, PARTITIONS).await?;
    if scenario == Scenario::Orders {
        direct.create_topic(&names.output, PARTITIONS).await?;
    }
    // Fault-free, the traffic takes the same path through the proxy, whose
    // plan is empty.
    let (plan, schedule) = match faults {
        Faults::Seeded => (lost_acks(seed, config), crash_schedule(seed, config)),
        Faults::None => (FaultPlan::new(seed), CrashSchedule::never()),
    };
    let proxy = FaultProxy::start(&broker.addr(), plan).await?;
    let client = Client::connect(&proxy.addr_string()).await?;
    let history = History::new();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join(format!("{}.db", scenario.name()));
    let sent_at: Mutex<HashMap<Value, Instant>> = Mutex::new(HashMap::new());
    let (produced, applied) = (AtomicBool::new(false), AtomicU64::new(0));
    let shared = Shared {
        client: &client,
        names: &names,
        history: &history,
        schedule,
        produced: &produced,
        applied: &applied,
        sent_at: &sent_at,
        config,
    };
    let started = Instant::now();
    let (restarted, progress) = tokio::join!(
        produce_input(&shared, scenario, mode, faults.injected(), &mut broker),
        consume(shared.clone(), scenario, mode, &db, cell_db.as_ref()),
    );
    let restarted = restarted?;
    let (progress, sink) = progress?;
    let consumed = started.elapsed();
    let elapsed = progress
        .last_first_delivery
        .map_or(started.elapsed(), |t| t.duration_since(started));
    let sink = match sink {
        Some(sink) => sink,
        None => downstream_orders(&proxy, &direct, &names, &db).await?,
    };
    let acked = acked_values(&history);
    let mut state = sink.state(scenario).await?;
    // The outbox's half of the sink is the fulfilment topic.
    if mode == LabMode::OutboxRelay {
        let (twice, missing) = fulfilment_damage(&proxy, &direct, &names, &acked).await?;
        state.duplicates += twice;
        state.missing_outputs = missing;
    }
    drop(sink);
    if let Some(db) = cell_db {
        db.drop_db().await;
    }
    let outcome = Outcome {
        state,
        report: check(
            &history.ops(),
            &CheckOptions {
                drained: false,
                group: Some(names.group.clone()),
            },
        ),
        acked,
        progress,
        elapsed,
        lost_acks: proxy.stats().on(Targets::PRODUCE, FaultKind::DropResponse),
        restarted,
    };
    let round = outcome.round(config, scenario, mode, faults);
    let checked = started.elapsed();
    drop(client);
    proxy.shutdown().await;
    broker.stop().await;
    tracing::debug!(
        timed = ?elapsed,
        consumed = ?consumed,
        checked = ?checked,
        stopped = ?started.elapsed(),
        "round finished"
    );
    Ok(round)
}

/// The proxy's plan: the second produce request of each kind always
/// loses its ack, others at random.
fn lost_acks(seed: u64, config: &LabConfig) -> FaultPlan {
    FaultPlan::new(seed)
        .at(Targets::PRODUCE, 2, Fault::DropResponse)
        .with_probability(
            Targets::PRODUCE,
            Fault::DropResponse,
            config.lost_ack_probability,
        )
}

/// The first and third steps that poll records always crash, so that
/// every cell redelivers (a crash during the broker restart cannot
/// resubscribe and does not happen); others at random.
fn crash_schedule(seed: u64, config: &LabConfig) -> CrashSchedule {
    CrashSchedule::random(seed, config.crash_probability, &[CrashPoint::BeforeCommit])
        .at(1, CrashPoint::BeforeCommit)
        .at(3, CrashPoint::BeforeCommit)
}

/// Produces the input, with `restart` restarting the broker halfway once
/// the consumer is busy; returns whether it restarted.
async fn produce_input(
    shared: &Shared<'_>,
    scenario: Scenario,
    mode: LabMode,
    restart: bool,
    broker: &mut LabBroker,
) -> Result<bool, LabError> {
    let Shared {
        client,
        names,
        history,
        produced,
        applied,
        sent_at,
        config,
        ..
    } = *shared;
    let records = config.records;
    let config_p = producer_config(mode.delivery());
    let producer = RecordingProducer::new(
        patiently(|| Producer::new(client.clone(), config_p.clone())).await?,
        history.clone(),
    );
    let mut restarted = false;
    for i in 0..records {
        if restart && i == records / 2 {
            // Restart while both sides are busy: once the consumer has
            // applied a quarter of the input.
            let waiting = Instant::now();
            while applied.load(Ordering::Acquire) < records / 4
                && waiting.elapsed() < config.catch_up
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            restarted = broker.restart().await?;
        }
        // Values count from 1 in send order: route a trip's updates to one
        // partition, so they arrive in order.
        let v = i + 1;
        let partition = match scenario {
            Scenario::Trips => trip(v, records) % u64::from(PARTITIONS),
            _ => i % u64::from(PARTITIONS),
        } as u32;
        let t = Instant::now();
        if let Ok(v) = producer.send(&names.input, Some(partition)).await {
            sent_at.lock().insert(v, t);
        }
    }
    let _ = producer.close().await;
    produced.store(true, Ordering::Release);
    Ok(restarted)
}

/// Consumes in the cell's mode until caught up; the at-least-once modes
/// return their sink.
async fn consume(
    shared: Shared<'_>,
    scenario: Scenario,
    mode: LabMode,
    db: &std::path::Path,
    cell_db: Option<&CellDb>,
) -> Result<(Progress, Option<AloSink>), LabError> {
    match (mode, cell_db) {
        (LabMode::ExactlyOnce, _) => consume_exactly_once(shared).await,
        (LabMode::AtLeastOnceSink | LabMode::AtLeastOnce, _) => {
            let sink = AloSink::open(scenario, mode, db)?;
            consume_at_least_once(shared, scenario, mode, sink).await
        }
        (LabMode::ExactlyOncePg | LabMode::OutboxRelay, Some(cell_db)) => {
            consume_with_db_offsets(shared, mode, cell_db).await
        }
        (LabMode::AtLeastOncePg, Some(cell_db)) => {
            let sink = AloSink::OrdersPg(cell_db.connect().await?);
            consume_at_least_once(shared, scenario, mode, sink).await
        }
        (LabMode::ExactlyOncePg | LabMode::OutboxRelay | LabMode::AtLeastOncePg, None) => {
            Err(format!("{mode:?} needs a PostgreSQL server").into())
        }
    }
}

/// Exactly-once's sink is the output topic: its committed fulfilments
/// reserve the stock, downstream, through the same plain inserts as the
/// at-least-once consumer without a sink.
async fn downstream_orders(
    proxy: &FaultProxy,
    direct: &Client,
    names: &Names,
    db: &std::path::Path,
) -> Result<AloSink, LabError> {
    let out = History::new();
    proxy.set_enabled(false);
    let reads =
        patiently(|| drain(direct, &names.output, &out, Duration::from_millis(300))).await?;
    let mut conn = plain_reservations(orders_db(db)?)?;
    let orders: Vec<Event> = reads.iter().map(|r| order_event(r.value)).collect();
    insert_plain(&mut conn, &orders)?;
    Ok(AloSink::OrdersPlain(conn))
}

/// What a cell measured once its consumer stopped.
struct Outcome {
    progress: Progress,
    /// The sink's final state.
    state: SinkState,
    /// The history checker's report.
    report: Report,
    /// The values whose send was acknowledged.
    acked: HashSet<Value>,
    /// From the start to the last first effect.
    elapsed: Duration,
    lost_acks: u64,
    restarted: bool,
}

impl Outcome {
    /// Everything that broke the mode's guarantee.
    fn problems(&self, config: &LabConfig, mode: LabMode, lost: u64) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.progress.caught_up {
            problems.push(format!(
                "the consumer did not catch up within {:?}",
                config.catch_up
            ));
        }
        if lost > 0 {
            problems.push(format!("{lost} acknowledged events lost"));
        }
        if !mode.spec().duplicates_allowed && self.state.duplicates > 0 {
            problems.push(format!(
                "{} duplicate effects in the sink",
                self.state.duplicates
            ));
        }
        let verdict = self.report.verdict(DeliveryMode::AtLeastOnce);
        if !verdict.is_valid() {
            problems.push(format!("history checker: {verdict}"));
        }
        problems
    }

    fn round(
        &self,
        config: &LabConfig,
        scenario: Scenario,
        mode: LabMode,
        faults: Faults,
    ) -> Round {
        let duplicates_delivered: u64 = self
            .report
            .of(AnomalyKind::DuplicateDelivery)
            .map(|a| match a {
                Anomaly::DuplicateDelivery { deliveries, .. } => deliveries.len() as u64 - 1,
                _ => 0,
            })
            .sum();
        let lost =
            self.state.lost(scenario, &self.acked, config.records) + self.state.missing_outputs;
        let latency = Latency::from_histogram(
            "send_to_effect",
            self.progress
                .latency
                .as_ref()
                .unwrap_or(&latency_histogram()),
        );
        let problems = self.problems(config, mode, lost);
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        Round {
            produced: self.acked.len() as u64,
            sink_rows: self.state.rows,
            duplicates_delivered,
            duplicates_absorbed: self.progress.absorbed,
            duplicates_in_sink: self.state.duplicates,
            lost,
            records_per_sec: self.acked.len() as f64 / secs,
            secs,
            p50_ms: latency.p50_us as f64 / 1000.0,
            p99_ms: latency.p99_us as f64 / 1000.0,
            lost_acks: self.lost_acks,
            crashes: self.progress.crashes,
            broker_restarts: u64::from(self.restarted),
            faults: format!(
                "{} lost produce acks, {} consumer crashes before commit, {}",
                self.lost_acks,
                self.progress.crashes,
                match (self.restarted, faults) {
                    (true, _) => "1 broker restart",
                    (false, Faults::None) => "no broker restart",
                    (false, Faults::Seeded) => "no broker restart (external broker)",
                }
            ),
            problems,
        }
    }
}

/// The values whose send the broker acknowledged.
fn acked_values(history: &History) -> HashSet<Value> {
    history
        .ops()
        .iter()
        .filter(|op| op.kind == OpKind::Send && op.typ == OpType::Ok)
        .flat_map(|op| op.mops.iter())
        .filter_map(|m| match m {
            Mop::Send { value, .. } => Some(*value),
            _ => None,
        })
        .collect()
}

/// Subscribes a crashing consumer to the cell's input, waiting out a
/// broker restart.
async fn subscribe(
    client: &Client,
    names: &Names,
    mode: LabMode,
    history: &History,
    schedule: &CrashSchedule,
) -> Result<CrashingConsumer, ClientError> {
    patiently(|| {
        CrashingConsumer::new(
            client.clone(),
            consumer_config(&names.group, mode),
            &names.input,
            history.clone(),
            schedule.clone(),
        )
    })
    .await
}

/// A failed consumer step (the broker may be restarting): pause, go on.
async fn step_failed(e: ClientError) {
    tracing::debug!(%e, "consumer step failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// What the producing and consuming sides of a cell share.
#[derive(Clone)]
struct Shared<'a> {
    client: &'a Client,
    names: &'a Names,
    history: &'a History,
    schedule: CrashSchedule,
    /// Set once the whole input is produced.
    produced: &'a AtomicBool,
    /// Events whose effect happened, for the restart's timing.
    applied: &'a AtomicU64,
    /// When each value was handed to the producer.
    sent_at: &'a Mutex<HashMap<Value, Instant>>,
    config: &'a LabConfig,
}
