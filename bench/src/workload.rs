//! Produce, consume and end-to-end workloads against one broker.
//!
//! The client side runs on one current-thread runtime (on two cores it beat
//! a multi-threaded one); an embedded broker runs on its own thread and
//! runtime, as [`EmbeddedBroker`] does. So the client and the broker each
//! get about one core, as they would on two machines' worth of one core.
//!
//! # What is timed
//!
//! - **produce**: from the first `send` to the last acknowledgement.
//!   Latency is per record, from the `send` call to the moment its
//!   delivery resolved (for `at-most-once`, handed to the connection; for
//!   `exactly-once`, its transaction committed).
//!   Deliveries are awaited in send order on a separate task, so a record
//!   acknowledged before an earlier one of another partition is counted
//!   when the earlier one is.
//! - **consume**: the topic is filled first (untimed), then one consumer
//!   reads it all from the earliest offset. Latency is per `poll`.
//! - **e2e**: producers and one consumer run together; latency is per
//!   record, from its `send` to the `poll` that returned it. The send time
//!   travels in the first 8 bytes of the value, so records must be at
//!   least 8 bytes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use ferry_broker::{BrokerConfig, EmbeddedBroker, FlushPolicy};
use ferry_client::{
    Client, ClientError, CommitMode, Compression, ConnectOptions, Consumer, ConsumerConfig,
    Delivery, DeliveryMode, Producer, ProducerConfig, StartFrom, TransactionalConfig,
    TransactionalProducer,
};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Baseline, Latency, MB, Ratios, latency_histogram, record_us};

/// Errors of a benchmark run.
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;

/// Deliveries handed from a producer task to its waiter task at a time.
const DELIVERY_CHUNK: usize = 64;
/// A partly filled chunk of deliveries is handed over once its first
/// record is this old, so slow sends do not hide acknowledgements.
const DELIVERY_CHUNK_AGE: Duration = Duration::from_micros(200);
/// Chunks queued per waiter before the producer task waits.
const MAX_QUEUED_CHUNKS: usize = 1024;
/// Records sent, or acknowledgements seen, between two readings of the
/// clock when nothing waits (see [`Clock`]).
const CLOCK_EVERY: u32 = 16;
/// How long one consumer `poll` waits for data.
const POLL_TIMEOUT: Duration = Duration::from_millis(200);
/// An e2e or consume run ends this long after the last new record once
/// every producer is done, even if records are missing (at-most-once may
/// lose some).
const IDLE_END: Duration = Duration::from_secs(2);
/// Bytes of the send timestamp at the start of each value.
pub const STAMP_BYTES: usize = 8;
/// Most producers one run starts.
pub const MAX_PRODUCERS: usize = 256;

/// Which workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Produce,
    Consume,
    E2e,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Produce => "produce",
            Kind::Consume => "consume",
            Kind::E2e => "e2e",
        }
    }
}

/// When the bench's consumer commits under `mode`: as the mode says, except
/// that under exactly-once (whose offsets commit inside the producer's
/// transactions) the measuring consumer is a plain one and commits after
/// each poll.
fn consumer_commit_mode(mode: DeliveryMode) -> CommitMode {
    match mode.commit_mode() {
        CommitMode::None => CommitMode::After,
        other => other,
    }
}

/// Where the broker is.
#[derive(Clone, Debug)]
pub enum Target {
    /// An [`EmbeddedBroker`] in this process on a fresh temporary data dir
    /// (inside `parent`, else the system's temporary dir), removed after.
    Embedded {
        flush: FlushPolicy,
        parent: Option<PathBuf>,
    },
    /// A running broker; the run creates a topic and deletes it after.
    Remote {
        addr: String,
        /// How to connect (a token, TLS).
        options: ConnectOptions,
    },
}

impl Target {
    /// `embedded` or the address.
    pub fn name(&self) -> String {
        match self {
            Target::Embedded { .. } => "embedded".to_string(),
            Target::Remote { addr, .. } => addr.clone(),
        }
    }

    /// The fsync policy, when this run controls it.
    pub fn fsync(&self) -> Option<String> {
        match self {
            Target::Embedded { flush, .. } => Some(flush.to_string()),
            Target::Remote { .. } => None,
        }
    }
}

/// When producers stop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RunLength {
    /// After this many records in all.
    Records(u64),
    /// After this long.
    Duration(Duration),
}

/// The producers' default buffer in the bench (see `--buffer-bytes`).
pub const BENCH_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// One run's settings.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub kind: Kind,
    pub mode: DeliveryMode,
    pub record_size: usize,
    pub batch_bytes: usize,
    /// Each producer's `buffer_bytes`.
    pub buffer_bytes: usize,
    pub linger_ms: u64,
    pub producers: usize,
    pub partitions: u32,
    /// Transaction length of `exactly-once`.
    pub txn_ms: u64,
    pub stop: RunLength,
    /// The producers' batch compression.
    pub compression: Compression,
}

impl Default for WorkloadConfig {
    fn default() -> WorkloadConfig {
        let producer = ProducerConfig::default();
        WorkloadConfig {
            kind: Kind::Produce,
            mode: DeliveryMode::AtLeastOnce,
            record_size: 100,
            batch_bytes: producer.batch_bytes,
            buffer_bytes: BENCH_BUFFER_BYTES,
            linger_ms: producer.linger.as_millis() as u64,
            producers: 1,
            partitions: 1,
            txn_ms: 100,
            stop: RunLength::Duration(Duration::from_secs(5)),
            compression: Compression::None,
        }
    }
}

impl WorkloadConfig {
    /// Rejects settings the run cannot honour.
    pub fn validate(&self) -> Result<(), BenchError> {
        if self.producers == 0 || self.producers > MAX_PRODUCERS {
            return Err(format!("--producers must be 1..={MAX_PRODUCERS}").into());
        }
        if self.partitions == 0 {
            return Err("--partitions must be at least 1".into());
        }
        if self.record_size == 0 {
            return Err("--record-size must be at least 1".into());
        }
        if self.buffer_bytes == 0 {
            return Err("--buffer-bytes must be at least 1".into());
        }
        if self.kind == Kind::E2e && self.record_size < STAMP_BYTES {
            return Err(format!(
                "e2e carries the send time in the value: --record-size must be at least {STAMP_BYTES}"
            )
            .into());
        }
        if self.mode == DeliveryMode::ExactlyOnce && self.txn_ms == 0 {
            return Err("--txn-ms must be at least 1".into());
        }
        match self.stop {
            RunLength::Records(0) => Err("--records must be at least 1".into()),
            RunLength::Duration(d) if d.is_zero() => Err("--duration must be positive".into()),
            _ => Ok(()),
        }
    }
}

/// Live counters a progress bar can read while a run goes on.
#[derive(Debug, Default)]
pub struct Progress {
    records: AtomicU64,
    filling: AtomicBool,
}

impl Progress {
    /// Records finished so far in the current phase: acknowledged, or
    /// consumed.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Whether a consume run is still filling its topic.
    pub fn filling(&self) -> bool {
        self.filling.load(Ordering::Relaxed)
    }

    fn add(&self, n: u64) {
        self.records.fetch_add(n, Ordering::Relaxed);
    }

    fn phase(&self, filling: bool) {
        self.filling.store(filling, Ordering::Relaxed);
        self.records.store(0, Ordering::Relaxed);
    }
}

/// The result of one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub bench: Kind,
    pub mode: DeliveryMode,
    /// `embedded` or the broker's address.
    pub broker: String,
    /// The embedded broker's fsync policy; `None` for a remote broker.
    pub fsync: Option<String>,
    pub record_size: usize,
    pub batch_bytes: usize,
    pub buffer_bytes: usize,
    pub linger_ms: u64,
    pub producers: usize,
    pub partitions: u32,
    pub txn_ms: Option<u64>,
    /// The producers' batch compression, when not `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// Records acknowledged (produce) or consumed (consume, e2e).
    pub records: u64,
    /// Records whose delivery failed.
    pub failed: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub records_per_sec: f64,
    /// Value bytes per second, in MB (10^6 bytes).
    pub mb_per_sec: f64,
    pub latency: Latency,
    pub baseline: Option<Baseline>,
    pub ratios: Option<Ratios>,
}

impl BenchReport {
    /// Adds the baseline and the ratios to it.
    pub fn with_baseline(mut self, baseline: Option<&Baseline>) -> BenchReport {
        self.ratios = baseline.map(|b| Ratios::of(self.mb_per_sec, b));
        self.baseline = baseline.cloned();
        self
    }

    /// A few lines for people.
    pub fn human(&self) -> String {
        let mut s = format!(
            "{} {} ({} records, {} producer(s), {} partition(s), broker {}{}{}): \
             {} records in {:.2} s\n\
             {:.0} records/s, {:.1} MB/s\n\
             latency ({}): {}",
            self.bench.name(),
            self.mode.name(),
            human_size(self.record_size),
            self.producers,
            self.partitions,
            self.broker,
            self.fsync
                .as_deref()
                .map_or(String::new(), |f| format!(", fsync {f}")),
            self.txn_ms
                .map_or(String::new(), |t| format!(", {t} ms transactions")),
            self.records,
            self.seconds,
            self.records_per_sec,
            self.mb_per_sec,
            self.latency.what,
            self.latency.human(),
        );
        if self.failed > 0 {
            s.push_str(&format!(
                "\nFAILED: {} records ({})",
                self.failed,
                self.first_error.as_deref().unwrap_or("unknown error")
            ));
        }
        if let Some(r) = &self.ratios {
            let size = human_size(self.record_size);
            s.push_str(&format!(
                "\n{} at {size} = {} × loopback TCP, {} × write(2)",
                self.bench.name(),
                super::fmt_ratio(r.loopback_tcp),
                super::fmt_ratio(r.write),
            ));
            if self.fsync.as_deref() != Some("never") {
                s.push_str(&format!(
                    ", {} × write+fdatasync",
                    super::fmt_ratio(r.write_fdatasync)
                ));
            }
        }
        s
    }
}

/// `100 B`, `1 KiB`, `1.5 KiB`.
pub fn human_size(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else if bytes >= 1024 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

/// Runs one workload on a fresh current-thread runtime.
pub fn run(
    config: &WorkloadConfig,
    target: &Target,
    progress: &Progress,
) -> Result<BenchReport, BenchError> {
    config.validate()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(config, target, progress))
}

async fn run_async(
    config: &WorkloadConfig,
    target: &Target,
    progress: &Progress,
) -> Result<BenchReport, BenchError> {
    let session = Session::open(target, config.partitions).await?;
    let outcome = match config.kind {
        Kind::Produce => produce(config, &session, progress).await,
        Kind::Consume => consume(config, &session, progress).await,
        Kind::E2e => e2e(config, &session, progress).await,
    };
    session.close().await;
    Ok(outcome?.report(config, target.name(), target.fsync()))
}

/// What a workload measured.
pub(crate) struct Outcome {
    pub(crate) records: u64,
    pub(crate) failed: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) elapsed: Duration,
    pub(crate) latency: Histogram<u64>,
    pub(crate) latency_what: &'static str,
}

impl Outcome {
    /// The report of a run of `config` against `broker`.
    pub(crate) fn report(
        self,
        config: &WorkloadConfig,
        broker: String,
        fsync: Option<String>,
    ) -> BenchReport {
        let seconds = self.elapsed.as_secs_f64().max(1e-9);
        BenchReport {
            bench: config.kind,
            mode: config.mode,
            broker,
            fsync,
            record_size: config.record_size,
            batch_bytes: config.batch_bytes,
            buffer_bytes: config.buffer_bytes,
            linger_ms: config.linger_ms,
            producers: config.producers,
            partitions: config.partitions,
            txn_ms: (config.mode == DeliveryMode::ExactlyOnce).then_some(config.txn_ms),
            compression: (config.compression != Compression::None)
                .then(|| config.compression.to_string()),
            records: self.records,
            failed: self.failed,
            first_error: self.first_error,
            seconds,
            records_per_sec: self.records as f64 / seconds,
            mb_per_sec: (self.records * config.record_size as u64) as f64 / MB / seconds,
            latency: Latency::from_histogram(self.latency_what, &self.latency),
            baseline: None,
            ratios: None,
        }
    }
}

/// A broker to run against, with a fresh topic on it.
struct Session {
    embedded: Option<(EmbeddedBroker, tempfile::TempDir)>,
    addr: String,
    options: ConnectOptions,
    topic: String,
    client: Client,
}

impl Session {
    async fn open(target: &Target, partitions: u32) -> Result<Session, BenchError> {
        let (embedded, addr, options) = match target {
            Target::Embedded { flush, parent } => {
                let dir = crate::temp_dir("ferry-bench-", parent.as_deref())?;
                let config = BrokerConfig::ephemeral()
                    .with_data_dir(dir.path())
                    .with_flush(*flush);
                let broker = EmbeddedBroker::start(config).await?;
                let addr = broker.addr_string();
                (Some((broker, dir)), addr, ConnectOptions::default())
            }
            Target::Remote { addr, options } => (None, addr.clone(), options.clone()),
        };
        let client = Client::connect_with(&addr, &options).await?;
        let topic = unique_topic();
        client.create_topic(&topic, partitions).await?;
        Ok(Session {
            embedded,
            addr,
            options,
            topic,
            client,
        })
    }

    /// Deletes the topic from a remote broker; stops an embedded one
    /// without flushing (its data dir is deleted next, so flushing would
    /// only cost time) and removes its data dir.
    async fn close(self) {
        match self.embedded {
            Some((broker, dir)) => {
                let _ = broker.crash().await;
                drop(dir);
            }
            None => {
                let _ = self.client.delete_topic(&self.topic).await;
            }
        }
    }
}

fn unique_topic() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000);
    format!(
        "ferry-bench-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn producer_config(config: &WorkloadConfig, mode: DeliveryMode) -> ProducerConfig {
    ProducerConfig {
        linger: Duration::from_millis(config.linger_ms),
        batch_bytes: config.batch_bytes,
        buffer_bytes: config.buffer_bytes,
        compression: config.compression,
        ..mode.producer_config()
    }
}

/// What the producers of a run did: per producer, then summed.
struct Produced {
    acked: u64,
    failed: u64,
    first_error: Option<String>,
    /// When the last delivery resolved.
    last_ack: Instant,
    latency: Histogram<u64>,
}

impl Produced {
    fn new(now: Instant) -> Produced {
        Produced {
            acked: 0,
            failed: 0,
            first_error: None,
            last_ack: now,
            latency: latency_histogram(),
        }
    }

    fn merge(&mut self, other: Produced) -> Result<(), BenchError> {
        self.acked += other.acked;
        self.failed += other.failed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.last_ack = self.last_ack.max(other.last_ack);
        self.latency.add(&other.latency)?;
        Ok(())
    }

    fn error(&mut self, e: impl ToString) {
        self.first_error.get_or_insert_with(|| e.to_string());
    }
}

/// The producers of one mode.
enum Producers {
    Plain(Vec<Producer>),
    Transactional(Vec<TransactionalProducer>),
}

/// Runs `config.producers` producers in `mode` until `config.stop`, each
/// with its own connection. `clock` is the zero of the send times stamped
/// into values. Returns when sending started, and what the producers did.
async fn run_producers(
    config: &WorkloadConfig,
    mode: DeliveryMode,
    session: &Session,
    progress: &Progress,
    clock: Instant,
) -> Result<(Instant, Produced), BenchError> {
    let producer_config = producer_config(config, mode);
    let producers = if mode == DeliveryMode::ExactlyOnce {
        let mut v = Vec::with_capacity(config.producers);
        for i in 0..config.producers {
            let client = Client::connect_with(&session.addr, &session.options).await?;
            let mut txn = TransactionalConfig::new(format!("{}-txn-{i}", session.topic));
            txn.producer = producer_config.clone();
            v.push(TransactionalProducer::new(client, txn).await?);
        }
        Producers::Transactional(v)
    } else {
        let mut v = Vec::with_capacity(config.producers);
        for _ in 0..config.producers {
            let client = Client::connect_with(&session.addr, &session.options).await?;
            v.push(Producer::new(client, producer_config.clone()).await?);
        }
        Producers::Plain(v)
    };

    let start = Instant::now();
    let quotas = split(config.stop, config.producers, start);
    // Spawned tasks count into a shared counter; this task mirrors it into
    // `progress` while it waits.
    let counter = Arc::new(AtomicU64::new(0));
    let sender = Sender {
        topic: session.topic.clone(),
        record_size: config.record_size,
        clock,
        counter: counter.clone(),
    };
    let tasks: Vec<_> = match producers {
        Producers::Plain(v) => v
            .into_iter()
            .zip(quotas)
            .map(|(p, quota)| tokio::spawn(sender.clone().plain(p, quota)))
            .collect(),
        Producers::Transactional(v) => {
            let txn = Duration::from_millis(config.txn_ms);
            v.into_iter()
                .zip(quotas)
                .map(|(p, quota)| tokio::spawn(sender.clone().transactional(p, quota, txn)))
                .collect()
        }
    };
    let mut all = futures::future::join_all(tasks);
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    let results = loop {
        tokio::select! {
            r = &mut all => break r,
            _ = ticker.tick() => progress.records.store(counter.load(Ordering::Relaxed), Ordering::Relaxed),
        }
    };
    let mut produced = Produced::new(start);
    for r in results {
        produced.merge(r?)?;
    }
    progress.records.store(produced.acked, Ordering::Relaxed);
    if produced.acked == 0
        && let Some(e) = &produced.first_error
    {
        return Err(format!("no record was acknowledged: {e}").into());
    }
    Ok((start, produced))
}

/// What every producer task of a run shares.
#[derive(Clone)]
struct Sender {
    topic: String,
    record_size: usize,
    /// Zero of the send times stamped into values.
    clock: Instant,
    /// Records acknowledged so far, by all producers.
    counter: Arc<AtomicU64>,
}

impl Sender {
    /// A plain producer: sends until the quota is used up while a second
    /// task awaits the deliveries in send order, then closes the producer.
    async fn plain(self, producer: Producer, quota: Quota) -> Produced {
        let (tx, rx) = mpsc::channel(MAX_QUEUED_CHUNKS);
        let waiter = tokio::spawn(await_deliveries(rx, self.counter.clone()));
        let sent = self.send_records(&producer, quota, tx).await;
        let closed = producer.close().await;
        let mut produced = match waiter.await {
            Ok(p) => p,
            Err(e) => {
                let mut p = Produced::new(Instant::now());
                p.error(format!("delivery task: {e}"));
                p
            }
        };
        if let Err(e) = sent.and(closed) {
            produced.error(e);
        }
        produced
    }

    /// Sends records until the quota is used up, handing each delivery
    /// with its send time to the waiter behind `tx`.
    async fn send_records(
        &self,
        producer: &Producer,
        quota: Quota,
        tx: mpsc::Sender<Vec<(Instant, Delivery)>>,
    ) -> Result<(), ClientError> {
        let mut value = vec![b'x'; self.record_size];
        let mut chunk = Vec::with_capacity(DELIVERY_CHUNK);
        let mut sent = 0u64;
        let mut clock = Clock::new();
        loop {
            let now = clock.tick();
            if quota.done(sent, now) {
                break;
            }
            stamp(&mut value, now.saturating_duration_since(self.clock));
            let delivery = clock
                .timed(producer.send(&self.topic, None, Some(&value)))
                .await?;
            sent += 1;
            chunk.push((now, delivery));
            if chunk.len() == DELIVERY_CHUNK || now.duration_since(chunk[0].0) >= DELIVERY_CHUNK_AGE
            {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(DELIVERY_CHUNK));
                if clock.timed(tx.send(full)).await.is_err() {
                    break;
                }
            }
        }
        if !chunk.is_empty() {
            let _ = tx.send(chunk).await;
        }
        producer.flush().await
    }

    /// A transactional producer: sends until the quota is used up,
    /// committing whenever the open transaction is `txn` old (and at the
    /// end). A record's latency runs from its send to its transaction's
    /// commit, when it becomes visible to `read_committed` readers. A
    /// failed transaction is aborted and its records count as failed.
    async fn transactional(
        self,
        mut producer: TransactionalProducer,
        quota: Quota,
        txn: Duration,
    ) -> Produced {
        let mut out = Produced::new(Instant::now());
        let mut value = vec![b'x'; self.record_size];
        let mut sent = 0u64;
        // Send times of the open transaction's records.
        let mut open: Vec<Instant> = Vec::new();
        let mut txn_start = Instant::now();
        let mut clock = Clock::new();
        loop {
            let now = clock.tick();
            let done = quota.done(sent, now);
            if (done || now.duration_since(txn_start) >= txn) && !open.is_empty() {
                let committed = producer.commit().await;
                let end = clock.refresh();
                match committed {
                    Ok(()) => {
                        for t in &open {
                            record_us(
                                &mut out.latency,
                                end.saturating_duration_since(*t).as_micros() as u64,
                            );
                        }
                        out.acked += open.len() as u64;
                        out.last_ack = end;
                        self.counter.fetch_add(open.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        out.failed += open.len() as u64;
                        out.error(&e);
                        if producer.abort().await.is_err() || producer.is_fatal() {
                            break;
                        }
                    }
                }
                open.clear();
            }
            if done {
                break;
            }
            if !producer.in_transaction() {
                if let Err(e) = producer.begin() {
                    out.error(e);
                    break;
                }
                txn_start = now;
            }
            stamp(&mut value, now.saturating_duration_since(self.clock));
            if let Err(e) = clock
                .timed(producer.send(&self.topic, None, Some(&value)))
                .await
            {
                // The transaction can only abort now; its records are lost.
                out.failed += 1 + open.len() as u64;
                out.error(e);
                open.clear();
                sent += 1;
                if producer.abort().await.is_err() || producer.is_fatal() {
                    break;
                }
                continue;
            }
            sent += 1;
            open.push(now);
        }
        if let Err(e) = producer.close().await {
            out.error(e);
        }
        out
    }
}

/// A clock read once per [`CLOCK_EVERY`] ticks, and again after anything
/// that had to wait: at a million records a second, reading it per record
/// costs more than the error it avoids (a few microseconds on
/// millisecond latencies).
pub(crate) struct Clock {
    now: Instant,
    ticks: u32,
    every: u32,
}

impl Clock {
    fn new() -> Clock {
        Clock::every(CLOCK_EVERY)
    }

    /// A clock read once per `every` ticks.
    pub(crate) fn every(every: u32) -> Clock {
        Clock {
            now: Instant::now(),
            ticks: 0,
            every: every.max(1),
        }
    }

    /// The time, read afresh every `every` calls.
    pub(crate) fn tick(&mut self) -> Instant {
        self.ticks += 1;
        if self.ticks >= self.every {
            self.refresh();
        }
        self.now
    }

    pub(crate) fn refresh(&mut self) -> Instant {
        self.now = Instant::now();
        self.ticks = 0;
        self.now
    }

    /// Awaits `f`, reading the clock again if `f` did not finish at once.
    async fn timed<F: std::future::Future>(&mut self, f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        match futures::poll!(f.as_mut()) {
            Poll::Ready(out) => out,
            Poll::Pending => {
                let out = f.await;
                self.refresh();
                out
            }
        }
    }
}

/// Each producer's share of `stop`.
fn split(stop: RunLength, producers: usize, start: Instant) -> Vec<Quota> {
    match stop {
        RunLength::Records(n) => {
            let p = producers as u64;
            (0..p)
                .map(|i| Quota::Records(n / p + u64::from(i < n % p)))
                .collect()
        }
        RunLength::Duration(d) => vec![Quota::Until(start + d); producers],
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Quota {
    Records(u64),
    Until(Instant),
}

impl Quota {
    fn done(self, sent: u64, now: Instant) -> bool {
        match self {
            Quota::Records(n) => sent >= n,
            Quota::Until(t) => now >= t,
        }
    }
}

/// Writes the send time since `clock`, in nanoseconds, into the value's
/// first [`STAMP_BYTES`] bytes (when it has that many).
pub(crate) fn stamp(value: &mut [u8], since_clock: Duration) {
    if let Some(head) = value.get_mut(..STAMP_BYTES) {
        head.copy_from_slice(&(since_clock.as_nanos() as u64).to_le_bytes());
    }
}

/// The send time [`stamp`]ed into `value`.
pub(crate) fn stamped(value: &[u8]) -> Option<Duration> {
    let head: [u8; STAMP_BYTES] = value.get(..STAMP_BYTES)?.try_into().ok()?;
    Some(Duration::from_nanos(u64::from_le_bytes(head)))
}

/// Awaits deliveries in send order and records each one's latency.
async fn await_deliveries(
    mut rx: mpsc::Receiver<Vec<(Instant, Delivery)>>,
    progress: Arc<AtomicU64>,
) -> Produced {
    let mut out = Produced::new(Instant::now());
    let mut clock = Clock::new();
    while let Some(chunk) = rx.recv().await {
        clock.refresh();
        let n = chunk.len() as u64;
        for (sent, delivery) in chunk {
            let result = clock.timed(delivery.wait()).await;
            let now = clock.tick();
            match result {
                Ok(_) => {
                    out.acked += 1;
                    record_us(
                        &mut out.latency,
                        now.saturating_duration_since(sent).as_micros() as u64,
                    );
                }
                Err(e) => {
                    out.failed += 1;
                    out.first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        out.last_ack = Instant::now();
        progress.fetch_add(n, Ordering::Relaxed);
    }
    out
}

async fn produce(
    config: &WorkloadConfig,
    session: &Session,
    progress: &Progress,
) -> Result<Outcome, BenchError> {
    let clock = Instant::now();
    let (start, p) = run_producers(config, config.mode, session, progress, clock).await?;
    Ok(Outcome {
        records: p.acked,
        failed: p.failed,
        first_error: p.first_error,
        elapsed: p.last_ack.saturating_duration_since(start),
        latency: p.latency,
        latency_what: if config.mode == DeliveryMode::ExactlyOnce {
            "send_to_commit"
        } else {
            "send_to_ack"
        },
    })
}

async fn new_consumer(config: &WorkloadConfig, session: &Session) -> Result<Consumer, ClientError> {
    let client = Client::connect_with(&session.addr, &session.options).await?;
    let mut consumer = Consumer::new(
        client,
        ConsumerConfig {
            group: Some(format!("{}-group", session.topic)),
            commit_mode: consumer_commit_mode(config.mode),
            start_from: StartFrom::Earliest,
            ..ConsumerConfig::default()
        },
    )
    .await?;
    consumer.assign_topic(&session.topic).await?;
    Ok(consumer)
}

/// Polls until `expected()` records (a number that may still grow while
/// it is `None`) were read, or [`IDLE_END`] passes without a record once
/// it is known. Calls `on_poll` with each poll's records and the time
/// they arrived.
async fn consume_loop(
    consumer: &mut Consumer,
    mode: DeliveryMode,
    expected: impl Fn() -> Option<u64>,
    progress: &Progress,
    mut on_poll: impl FnMut(&[ferry_client::ConsumerRecord], Instant, Instant),
) -> Result<(u64, Instant), ClientError> {
    let mut consumed = 0u64;
    let mut last_record = Instant::now();
    loop {
        if let Some(n) = expected()
            && (consumed >= n || last_record.elapsed() >= IDLE_END)
        {
            break;
        }
        let asked = Instant::now();
        let records = consumer.poll(POLL_TIMEOUT).await?;
        if records.is_empty() {
            continue;
        }
        let arrived = Instant::now();
        last_record = arrived;
        consumed += records.len() as u64;
        on_poll(&records, asked, arrived);
        if consumer_commit_mode(mode) == CommitMode::After {
            consumer.commit().await?;
        }
        progress.add(records.len() as u64);
    }
    Ok((consumed, last_record))
}

async fn consume(
    config: &WorkloadConfig,
    session: &Session,
    progress: &Progress,
) -> Result<Outcome, BenchError> {
    progress.phase(true);
    let clock = Instant::now();
    let (_, filled) = run_producers(config, config.mode, session, progress, clock).await?;
    if filled.acked == 0 {
        return Err(format!(
            "filling the topic failed: {}",
            filled
                .first_error
                .as_deref()
                .unwrap_or("no record acknowledged")
        )
        .into());
    }
    progress.phase(false);
    let mut consumer = new_consumer(config, session).await?;
    let mut latency = latency_histogram();
    let start = Instant::now();
    let (consumed, last) = consume_loop(
        &mut consumer,
        config.mode,
        || Some(filled.acked),
        progress,
        |_, asked, arrived| {
            record_us(&mut latency, (arrived - asked).as_micros() as u64);
        },
    )
    .await?;
    Ok(Outcome {
        records: consumed,
        failed: filled.acked.saturating_sub(consumed),
        first_error: (consumed < filled.acked)
            .then(|| format!("read {consumed} of {} acknowledged records", filled.acked)),
        elapsed: last.saturating_duration_since(start),
        latency,
        latency_what: "poll",
    })
}

async fn e2e(
    config: &WorkloadConfig,
    session: &Session,
    progress: &Progress,
) -> Result<Outcome, BenchError> {
    let clock = Instant::now();
    let mut consumer = new_consumer(config, session).await?;
    // Producers report into a private counter; the consumer drives the
    // progress shown.
    let producer_progress = Progress::default();
    let expected = std::cell::Cell::new(None::<u64>);
    let mut latency = latency_histogram();
    let mut unstamped = 0u64;
    let consumer_run = consume_loop(
        &mut consumer,
        config.mode,
        || expected.get(),
        progress,
        |records, _, arrived| {
            let now = arrived.saturating_duration_since(clock);
            for r in records {
                match r.value.as_deref().and_then(stamped) {
                    Some(sent) => {
                        record_us(&mut latency, now.saturating_sub(sent).as_micros() as u64)
                    }
                    None => unstamped += 1,
                }
            }
        },
    );
    let producers_run = async {
        let r = run_producers(config, config.mode, session, &producer_progress, clock).await;
        match &r {
            Ok((_, p)) => expected.set(Some(p.acked)),
            Err(_) => expected.set(Some(0)),
        }
        r
    };
    let (consumed, produced) = tokio::join!(consumer_run, producers_run);
    let (start, produced) = produced?;
    let (consumed, last) = consumed?;
    if unstamped > 0 {
        return Err(format!("{unstamped} records carried no send time").into());
    }
    Ok(Outcome {
        records: consumed,
        failed: produced.failed + produced.acked.saturating_sub(consumed),
        first_error: produced.first_error.or_else(|| {
            (consumed < produced.acked)
                .then(|| format!("read {consumed} of {} acknowledged records", produced.acked))
        }),
        elapsed: last.saturating_duration_since(start),
        latency,
        latency_what: "send_to_consume",
    })
}

#[cfg(test)]
mod tests {
    use ferry_client::Acks;

    use super::*;

    #[test]
    fn record_quotas_add_up_and_durations_are_shared() {
        let start = Instant::now();
        let q = split(RunLength::Records(10), 3, start);
        assert_eq!(
            q,
            vec![Quota::Records(4), Quota::Records(3), Quota::Records(3)]
        );
        let d = split(RunLength::Duration(Duration::from_secs(1)), 2, start);
        assert_eq!(d, vec![Quota::Until(start + Duration::from_secs(1)); 2]);
    }

    #[test]
    fn send_times_round_trip_through_values() {
        let mut v = vec![0u8; 100];
        stamp(&mut v, Duration::from_nanos(123_456_789));
        assert_eq!(stamped(&v), Some(Duration::from_nanos(123_456_789)));
        let mut short = vec![7u8; 4];
        stamp(&mut short, Duration::from_secs(1));
        assert_eq!(short, vec![7u8; 4]);
        assert_eq!(stamped(&short), None);
    }

    #[test]
    fn modes_map_to_acks_and_idempotence() {
        assert_eq!(DeliveryMode::AtMostOnce.acks(), (Acks::None, false));
        assert_eq!(DeliveryMode::AtLeastOnce.acks(), (Acks::All, false));
        assert_eq!(DeliveryMode::Idempotent.acks(), (Acks::All, true));
        assert_eq!(human_size(100), "100 B");
        assert_eq!(human_size(1024), "1 KiB");
    }

    #[test]
    fn invalid_settings_are_refused() {
        let ok = WorkloadConfig::default();
        assert!(ok.validate().is_ok());
        for bad in [
            WorkloadConfig {
                producers: 0,
                ..ok.clone()
            },
            WorkloadConfig {
                kind: Kind::E2e,
                record_size: 4,
                ..ok.clone()
            },
            WorkloadConfig {
                stop: RunLength::Records(0),
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
