//! One cell of the lab: a scenario in one mode, from a fresh broker to its
//! [`Row`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_client::retry::{Backoff, retry_until};
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

use super::report::Row;
use super::{LabConfig, LabError, LabMode, Scenario};
use ferry_bench::{Latency, latency_histogram, record_us};
use ferry_testkit::proxy::splitmix64;
use ferry_testkit::{
    Anomaly, AnomalyKind, CheckOptions, ConsumerStep, CrashPoint, CrashSchedule, CrashingConsumer,
    DeliveryMode, Fault, FaultKind, FaultPlan, FaultProxy, History, Mop, OpKind, OpType, ProcessId,
    Read, RecordingProducer, Report, Targets, Value, ValueGen, check, decode_reads, drain,
    matrix::BrokerUnderTest,
};

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

/// Retries `f` for up to 20 s, every 50 ms, while the broker may be
/// restarting.
async fn patiently<T, F, Fut>(f: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    retry_until(
        "a call to a restarting broker",
        tokio::time::Instant::now() + Duration::from_secs(20),
        Backoff::fixed(Duration::from_millis(50)),
        |_| true,
        f,
    )
    .await
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
    fn new(scenario: Scenario, mode: LabMode, seed: u64) -> Names {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let mode = match mode {
            LabMode::ExactlyOnce => "eos",
            LabMode::AtLeastOnceSink => "alo-sink",
            LabMode::AtLeastOnce => "alo",
        };
        let base = format!("lab-{}-{mode}-{seed}-{nonce}", scenario.name());
        Names {
            input: format!("{base}-in"),
            output: format!("{base}-out"),
            group: format!("{base}-g"),
            transactional_id: format!("{base}-txn"),
        }
    }
}

/// Where an at-least-once cell applies its deliveries.
enum AloSink {
    /// Orders, plain: every delivery inserts a reservation and takes stock.
    OrdersPlain(Connection),
    /// Orders into a [`UniqueSink`] whose insert takes the stock.
    Orders(UniqueSink),
    Views(UniqueSink),
    Trips(UpsertSink),
}

fn orders_db(path: &std::path::Path) -> Result<Connection, SinkError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch("CREATE TABLE stock (sku INTEGER PRIMARY KEY, qty INTEGER NOT NULL)")?;
    {
        let mut insert = conn.prepare("INSERT INTO stock (sku, qty) VALUES (?1, ?2)")?;
        for s in 0..SKUS {
            insert.execute(params![s as i64, STOCK])?;
        }
    }
    Ok(conn)
}

/// Reservations without a unique key, as an application without an
/// idempotent sink writes them.
fn plain_reservations(conn: Connection) -> Result<Connection, SinkError> {
    conn.execute_batch("CREATE TABLE reservations (event_id TEXT NOT NULL, payload BLOB)")?;
    Ok(conn)
}

fn take_stock(tx: &rusqlite::Transaction<'_>, order: &Event) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE stock SET qty = qty - 1 WHERE sku = ?1",
        params![std::str::from_utf8(&order.payload).unwrap_or("0")],
    )?;
    Ok(())
}

fn order_event(v: Value) -> Event {
    Event::new(v.to_string(), sku(v).to_string())
}

impl AloSink {
    fn open(
        scenario: Scenario,
        mode: LabMode,
        path: &std::path::Path,
    ) -> Result<AloSink, SinkError> {
        Ok(match (scenario, mode) {
            (Scenario::Orders, LabMode::AtLeastOnce) => {
                AloSink::OrdersPlain(plain_reservations(orders_db(path)?)?)
            }
            (Scenario::Orders, _) => AloSink::Orders(
                UniqueSink::with_connection(orders_db(path)?, "reservations")?
                    .on_insert(take_stock),
            ),
            (Scenario::Views, _) => AloSink::Views(UniqueSink::open(path, "views")?),
            (Scenario::Trips, _) => AloSink::Trips(UpsertSink::open(path, "trips")?),
        })
    }

    async fn apply(&mut self, values: &[Value], records: u64) -> Result<Written, SinkError> {
        match self {
            AloSink::OrdersPlain(conn) => {
                let events: Vec<Event> = values.iter().map(|v| order_event(*v)).collect();
                insert_plain(conn, &events)
            }
            AloSink::Orders(sink) => {
                let events: Vec<Event> = values.iter().map(|v| order_event(*v)).collect();
                sink.write(&events).await
            }
            AloSink::Views(sink) => {
                let events: Vec<Event> = values
                    .iter()
                    .map(|v| Event::new(v.to_string(), format!("page-{}", v % 20)))
                    .collect();
                sink.write(&events).await
            }
            AloSink::Trips(sink) => {
                let changes: Vec<Versioned> = values
                    .iter()
                    .map(|v| {
                        Versioned::new(trip(*v, records).to_string(), *v as i64, format!("at-{v}"))
                    })
                    .collect();
                sink.write(&changes).await
            }
        }
    }

    /// [`apply`](Self::apply), retried until it succeeds: the commit
    /// follows it whatever happens. Returns the repeats absorbed.
    async fn apply_until_done(&mut self, values: &[Value], records: u64) -> u64 {
        loop {
            match self.apply(values, records).await {
                Ok(w) => return w.absorbed,
                Err(e) => {
                    tracing::warn!(%e, "sink write failed; retrying");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    fn connection(&self) -> &Connection {
        match self {
            AloSink::OrdersPlain(conn) => conn,
            AloSink::Orders(s) | AloSink::Views(s) => s.connection(),
            AloSink::Trips(s) => s.connection(),
        }
    }
}

/// Inserts each order as a reservation and takes its stock, repeats
/// included: the double charge an at-least-once consumer without an
/// idempotent sink makes.
fn insert_plain(conn: &mut Connection, orders: &[Event]) -> Result<Written, SinkError> {
    let tx = conn.transaction()?;
    {
        let mut insert =
            tx.prepare_cached("INSERT INTO reservations (event_id, payload) VALUES (?1, ?2)")?;
        for order in orders {
            insert.execute(params![order.event_id, &order.payload[..]])?;
            take_stock(&tx, order)?;
        }
    }
    tx.commit()?;
    Ok(Written {
        applied: orders.len() as u64,
        absorbed: 0,
    })
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

/// Runs one cell; see the [module docs](super).
pub async fn run_cell(
    config: &LabConfig,
    scenario: Scenario,
    mode: LabMode,
) -> Result<Row, LabError> {
    // One fault schedule per scenario: its modes face the same one.
    let seed = splitmix64(config.seed ^ splitmix64(scenario as u64));
    let names = Names::new(scenario, mode, config.seed);
    let mut broker = LabBroker::start(config).await?;
    let direct = Client::connect(&broker.addr()).await?;
    direct.create_topic(&names.input, PARTITIONS).await?;
    if scenario == Scenario::Orders {
        direct.create_topic(&names.output, PARTITIONS).await?;
    }
    let proxy = FaultProxy::start(&broker.addr(), lost_acks(seed, config)).await?;
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
        schedule: crash_schedule(seed, config),
        produced: &produced,
        applied: &applied,
        sent_at: &sent_at,
        config,
    };
    let started = Instant::now();
    let (restarted, progress) = tokio::join!(
        produce_input(&shared, scenario, mode, &mut broker),
        consume(shared.clone(), scenario, mode, &db),
    );
    let restarted = restarted?;
    let (progress, sink) = progress?;
    let elapsed = progress
        .last_first_delivery
        .map_or(started.elapsed(), |t| t.duration_since(started));
    let sink = match sink {
        Some(sink) => sink,
        None => downstream_orders(&proxy, &direct, &names, &db).await?,
    };
    let outcome = Outcome {
        state: SinkState::read(scenario, sink.connection(), config.records)?,
        report: check(
            &history.ops(),
            &CheckOptions {
                drained: false,
                group: Some(names.group.clone()),
            },
        ),
        acked: acked_values(&history),
        progress,
        elapsed,
        lost_acks: proxy.stats().on(Targets::PRODUCE, FaultKind::DropResponse),
        restarted,
    };
    let row = outcome.row(config, scenario, mode);
    drop(client);
    proxy.shutdown().await;
    broker.stop().await;
    Ok(row)
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

/// Produces the input, restarting the broker halfway once the consumer
/// is busy; returns whether it restarted.
async fn produce_input(
    shared: &Shared<'_>,
    scenario: Scenario,
    mode: LabMode,
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
        if i == records / 2 {
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
) -> Result<(Progress, Option<AloSink>), LabError> {
    if mode == LabMode::ExactlyOnce {
        consume_exactly_once(shared).await
    } else {
        let sink = AloSink::open(scenario, mode, db)?;
        consume_at_least_once(shared, scenario, mode, sink).await
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
        if mode != LabMode::AtLeastOnce && self.state.duplicates > 0 {
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

    fn row(&self, config: &LabConfig, scenario: Scenario, mode: LabMode) -> Row {
        let duplicates_delivered: u64 = self
            .report
            .of(AnomalyKind::DuplicateDelivery)
            .map(|a| match a {
                Anomaly::DuplicateDelivery { deliveries, .. } => deliveries.len() as u64 - 1,
                _ => 0,
            })
            .sum();
        let lost = self.state.lost(scenario, &self.acked, config.records);
        let latency = Latency::from_histogram(
            "send_to_effect",
            self.progress
                .latency
                .as_ref()
                .unwrap_or(&latency_histogram()),
        );
        let problems = self.problems(config, mode, lost);
        Row {
            scenario,
            mode,
            label: mode.label(scenario),
            produced: self.acked.len() as u64,
            sink_rows: self.state.rows,
            duplicates_delivered,
            duplicates_absorbed: self.progress.absorbed,
            duplicates_in_sink: self.state.duplicates,
            lost,
            records_per_sec: self.acked.len() as f64 / self.elapsed.as_secs_f64().max(1e-9),
            p50_ms: latency.p50_us as f64 / 1000.0,
            p99_ms: latency.p99_us as f64 / 1000.0,
            faults: format!(
                "{} lost produce acks, {} consumer crashes before commit, {}",
                self.lost_acks,
                self.progress.crashes,
                if self.restarted {
                    "1 broker restart"
                } else {
                    "no broker restart (external broker)"
                }
            ),
            guarantee: mode.guarantee().into(),
            held: problems.is_empty(),
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

/// What the sink holds at the end.
struct SinkState {
    rows: u64,
    /// Effects beyond one per event.
    duplicates: u64,
    /// Event ids with an effect (orders, views), or trip → version.
    present: HashMap<u64, i64>,
}

impl SinkState {
    fn read(scenario: Scenario, conn: &Connection, _records: u64) -> Result<SinkState, SinkError> {
        let (table, key, version) = match scenario {
            Scenario::Orders => ("reservations", "event_id", "0"),
            Scenario::Views => ("views", "event_id", "0"),
            Scenario::Trips => ("trips", "key", "version"),
        };
        let rows: i64 =
            conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
        let mut present = HashMap::new();
        let mut stmt = conn.prepare(&format!(
            "SELECT CAST({key} AS INTEGER), MAX({version}) FROM {table} GROUP BY {key}"
        ))?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))? {
            let (k, v) = row?;
            present.insert(k as u64, v);
        }
        let duplicates = match scenario {
            // Every unit of stock taken beyond one per order reserved.
            Scenario::Orders => {
                let taken: i64 = conn.query_row(
                    "SELECT ?1 * COUNT(*) - SUM(qty) FROM stock",
                    params![STOCK],
                    |r| r.get(0),
                )?;
                (taken as u64).saturating_sub(present.len() as u64)
            }
            _ => (rows as u64).saturating_sub(present.len() as u64),
        };
        Ok(SinkState {
            rows: rows as u64,
            duplicates,
            present,
        })
    }

    /// Acknowledged events without their effect: orders and views missing
    /// their row; trips whose row is older than their latest acknowledged
    /// update.
    fn lost(&self, scenario: Scenario, acked: &HashSet<Value>, records: u64) -> u64 {
        match scenario {
            Scenario::Orders | Scenario::Views => acked
                .iter()
                .filter(|v| !self.present.contains_key(v))
                .count() as u64,
            Scenario::Trips => {
                let mut latest: HashMap<u64, Value> = HashMap::new();
                for v in acked {
                    let e = latest.entry(trip(*v, records)).or_default();
                    *e = (*e).max(*v);
                }
                latest
                    .iter()
                    .filter(|(t, v)| self.present.get(t).is_none_or(|have| *have < **v as i64))
                    .count() as u64
            }
        }
    }
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

async fn consume_at_least_once(
    shared: Shared<'_>,
    scenario: Scenario,
    mode: LabMode,
    mut sink: AloSink,
) -> Result<(Progress, Option<AloSink>), LabError> {
    let Shared {
        client,
        names,
        history,
        schedule,
        produced,
        applied,
        sent_at,
        config,
    } = shared;
    let mut consumer = subscribe(client, names, mode, history, &schedule).await?;
    // Orders also write a fulfilment event per delivery, acknowledged
    // before the offsets commit.
    let fulfilments = match scenario {
        Scenario::Orders => Some(
            patiently(|| Producer::new(client.clone(), producer_config(DeliveryMode::AtLeastOnce)))
                .await?,
        ),
        _ => None,
    };
    let mut progress = Progress::default();
    loop {
        let (sink_ref, progress_ref, out) = (&mut sink, &mut progress, &fulfilments);
        let step = consumer
            .step(POLL, move |reads: Vec<Read>, _| async move {
                let values: Vec<Value> = reads.iter().map(|r| r.value).collect();
                progress_ref.absorbed += sink_ref.apply_until_done(&values, config.records).await;
                progress_ref.effect(&values, sent_at);
                applied.store(progress_ref.delivered.len() as u64, Ordering::Release);
                if let Some(producer) = out {
                    send_fulfilments(producer, &names.output, &reads).await;
                }
            })
            .await;
        let step_idle = match step {
            Ok(ConsumerStep::Idle) => true,
            Ok(ConsumerStep::Crashed(_)) => {
                progress.crashes += 1;
                false
            }
            Ok(ConsumerStep::Delivered(_)) => false,
            Err(e) => {
                step_failed(e).await;
                false
            }
        };
        if progress.finished(step_idle, produced, config) {
            break;
        }
    }
    if let Some(p) = fulfilments {
        let _ = p.close().await;
    }
    Ok((progress, Some(sink)))
}

/// Sends a fulfilment per order and waits for every acknowledgement,
/// resending what failed (at least once: repeats are allowed downstream).
async fn send_fulfilments(producer: &Producer, topic: &str, reads: &[Read]) {
    let mut pending: Vec<&Read> = reads.iter().collect();
    for _ in 0..100 {
        let mut deliveries = Vec::new();
        for r in &pending {
            let value = ValueGen::encode(r.value);
            let key = r.value.to_string();
            match producer
                .send_to(topic, r.tp.partition, Some(key.as_bytes()), Some(&value))
                .await
            {
                Ok(d) => deliveries.push((*r, Some(d))),
                Err(_) => deliveries.push((*r, None)),
            }
        }
        let mut failed = Vec::new();
        for (r, d) in deliveries {
            let ok = match d {
                Some(d) => d.wait().await.is_ok(),
                None => false,
            };
            if !ok {
                failed.push(r);
            }
        }
        if failed.is_empty() {
            return;
        }
        pending = failed;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::warn!(left = pending.len(), "fulfilments not acknowledged");
}

/// The lab's exactly-once loop: the producer first (it settles what an
/// earlier instance left open), then the consumer, from the group's
/// committed offsets; one poll per transaction.
async fn exactly_once<O: EosObserver>(
    client: &Client,
    names: &Names,
    watch: O,
) -> Result<ExactlyOnce<O>, LabError> {
    let producer = patiently(|| {
        let mut config = TransactionalConfig::new(names.transactional_id.clone());
        config.transaction_timeout = Duration::from_secs(20);
        config.producer = producer_config(DeliveryMode::ExactlyOnce);
        TransactionalProducer::new(client.clone(), config)
    })
    .await?;
    let consumer = patiently(|| async {
        let mut c = Consumer::new(
            client.clone(),
            consumer_config(&names.group, LabMode::ExactlyOnce),
        )
        .await?;
        c.subscribe(&names.input).await?;
        Ok(c)
    })
    .await?;
    let config = ExactlyOnceConfig {
        max_records: 1,
        max_interval: POLL,
        ..ExactlyOnceConfig::new(names.group.clone())
    };
    Ok(ExactlyOnce::with_observer(
        consumer, producer, config, watch,
    )?)
}

/// The fulfilment of each order, to the partition it came from.
fn fulfilment(topic: &str, record: &ConsumerRecord, out: &mut Vec<Output>) {
    if let Some(v) = record.value.as_deref().and_then(ValueGen::decode) {
        out.push(Output::to_partition(
            topic,
            record.partition,
            Some(Bytes::from(v.to_string())),
            Some(Bytes::from(ValueGen::encode(v))),
        ));
    }
}

/// Watches the exactly-once loop across its instances: records each poll
/// that reached the processing as a delivery, crashes on the schedule
/// just before a commit, and measures what committed.
struct EosWatch<'a> {
    history: &'a History,
    group: &'a str,
    /// The consumer's process: a new one whenever it goes back to
    /// re-read (a crash, an abort, a lost instance).
    process: ProcessId,
    schedule: CrashSchedule,
    /// Steps that polled records (the step numbers the schedule counts).
    steps: u64,
    /// The reads of the transaction in flight.
    batch: Vec<Read>,
    /// Whether the instance is lost (crashed, or its transaction's outcome
    /// unknown) and a new one must take over.
    lost: bool,
    progress: Progress,
    applied: &'a AtomicU64,
    sent_at: &'a Mutex<HashMap<Value, Instant>>,
}

impl EosObserver for EosWatch<'_> {
    // One poll per transaction (`max_records` 1).
    fn polled(&mut self, records: &[ConsumerRecord]) {
        self.steps += 1;
        let reads = decode_reads(records);
        self.history
            .invoke(
                self.process,
                OpKind::Poll,
                Some(self.group),
                vec![Mop::Poll { reads: Vec::new() }],
            )
            .ok(vec![Mop::Poll {
                reads: reads.clone(),
            }]);
        self.batch = reads;
    }

    fn at(&mut self, point: EosPoint) -> Control {
        if point == EosPoint::BeforeCommit
            && self.schedule.crashes(self.steps, CrashPoint::BeforeCommit)
        {
            Control::Crash
        } else {
            Control::Continue
        }
    }

    fn ended(&mut self, outcome: TxnOutcome<'_>) {
        let batch = std::mem::take(&mut self.batch);
        match outcome {
            TxnOutcome::Committed => {
                let values: Vec<Value> = batch.iter().map(|r| r.value).collect();
                self.progress.effect(&values, self.sent_at);
                self.applied
                    .store(self.progress.delivered.len() as u64, Ordering::Release);
                return;
            }
            TxnOutcome::Aborted(e) => {
                tracing::debug!(%e, "transaction aborted; the consumer rewinds");
            }
            TxnOutcome::Unknown(e) => {
                tracing::debug!(%e, "transaction outcome unknown; a new instance settles it");
                self.lost = true;
            }
            TxnOutcome::Crashed(_) => {
                // The process dies with its transaction open: a new
                // instance's producer fences it and aborts the transaction.
                self.history.crashed(self.process, CrashPoint::BeforeCommit);
                self.progress.crashes += 1;
                self.lost = true;
            }
        }
        self.progress.absorbed += batch.len() as u64;
        self.process = self.history.process();
    }
}

async fn consume_exactly_once(shared: Shared<'_>) -> Result<(Progress, Option<AloSink>), LabError> {
    let Shared {
        client,
        names,
        history,
        schedule,
        produced,
        applied,
        sent_at,
        config,
    } = shared;
    let mut watch = EosWatch {
        history,
        group: &names.group,
        process: history.process(),
        schedule,
        steps: 0,
        batch: Vec::new(),
        lost: false,
        progress: Progress::default(),
        applied,
        sent_at,
    };
    let mut eos = exactly_once(client, names, &mut watch).await?;
    loop {
        let step = eos
            .step(|record, out| fulfilment(&names.output, record, out))
            .await;
        let step_idle = matches!(step, Ok(Step::Idle));
        let lost = eos.observer().lost || eos.producer().is_fatal();
        match step {
            Err(e) if !lost => step_failed(e).await,
            _ => {}
        }
        if lost {
            drop(eos);
            watch.lost = false;
            eos = exactly_once(client, names, &mut watch).await?;
        }
        if eos
            .observer_mut()
            .progress
            .finished(step_idle, produced, config)
        {
            break;
        }
    }
    drop(eos);
    Ok((watch.progress, None))
}
