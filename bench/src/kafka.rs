//! `ferry bench kafka`: the Kafka front end measured with a real Kafka
//! client, librdkafka (through the `rdkafka` crate, built from source),
//! next to `ferry-client` over gRPC: one embedded broker, the same
//! workloads, the same run.
//!
//! For each record size, three cells:
//!
//! - **produce, idempotent**: acks all with idempotence, from the first
//!   send to the last acknowledgement;
//! - **produce, exactly-once**: transactions of `txn_ms`, from the first
//!   send to the last commit;
//! - **consume, read_committed**: one consumer reads a topic filled (untimed)
//!   by that side's exactly-once producer, from the earliest offset to the
//!   last committed record.
//!
//! Both clients batch alike (`linger_ms`, `batch_bytes`, no compression) and
//! write one partition. The gRPC side is [`workload::run`] against the
//! embedded broker's gRPC address; the Kafka side runs here, on the calling
//! thread, polling librdkafka without blocking. librdkafka delivers one
//! message per consumer poll, so the Kafka consumer reads the clock once
//! per [`CLOCK_EVERY`] messages and its latency is that of every
//! [`CLOCK_EVERY`]th poll.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_broker::{BrokerConfig, EmbeddedBroker, FlushPolicy};
use ferry_client::{Client, Compression};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::workload::{
    self, BenchError, BenchReport, Clock, Kind, Outcome, Progress, RunLength, Target,
};
use super::{Baseline, DeliveryMode, latency_histogram, ratio, record_us};

/// Messages sent, delivered or consumed between two readings of the clock.
pub const CLOCK_EVERY: u32 = 64;
/// Messages sent between two non-blocking polls of the producer, which
/// run its delivery callbacks.
const POLL_EVERY: u64 = 64;
/// How long a producer waits for room when its queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(1);
/// How long each poll waits while a producer drains.
const DRAIN_POLL: Duration = Duration::from_millis(1);
/// How long one consumer poll waits for a message.
const POLL_TIMEOUT: Duration = Duration::from_millis(200);
/// A consume run ends this long after its last message even if records
/// are missing (they count as failed).
const IDLE_END: Duration = Duration::from_secs(5);
/// Longest wait for librdkafka to initialise, commit or flush.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Record sizes of the default run.
pub const SIZES: [usize; 2] = [100, 1024];

/// The settings of a run.
#[derive(Clone, Debug)]
pub struct KafkaBenchConfig {
    pub sizes: Vec<usize>,
    /// How long each cell produces.
    pub duration: Duration,
    /// Transaction length of exactly-once.
    pub txn_ms: u64,
    pub linger_ms: u64,
    pub batch_bytes: usize,
    /// Each gRPC producer's `buffer_bytes`.
    pub buffer_bytes: usize,
    /// The embedded broker's fsync policy.
    pub flush: FlushPolicy,
    /// Where the broker's temporary data dir goes (else the system's
    /// temporary dir).
    pub parent: Option<PathBuf>,
}

impl Default for KafkaBenchConfig {
    fn default() -> KafkaBenchConfig {
        let w = workload::WorkloadConfig::default();
        KafkaBenchConfig {
            sizes: SIZES.to_vec(),
            duration: Duration::from_secs(3),
            txn_ms: w.txn_ms,
            linger_ms: w.linger_ms,
            batch_bytes: w.batch_bytes,
            buffer_bytes: w.buffer_bytes,
            flush: FlushPolicy::Never,
            parent: None,
        }
    }
}

/// One workload, measured through both front ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KafkaCell {
    pub bench: Kind,
    pub mode: DeliveryMode,
    pub record_size: usize,
    /// `ferry-client` over gRPC.
    pub grpc: BenchReport,
    /// librdkafka over the Kafka listener.
    pub kafka: BenchReport,
    /// Kafka records/s ÷ gRPC records/s.
    pub kafka_per_grpc: Option<f64>,
}

/// A whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KafkaBench {
    /// The librdkafka version the Kafka side ran.
    pub librdkafka: String,
    pub fsync: String,
    pub baseline: Option<Baseline>,
    pub cells: Vec<KafkaCell>,
    pub seconds: f64,
}

impl KafkaBench {
    /// Runs every cell against one embedded broker. `on_cell` is called
    /// before each cell with its index and a label.
    pub fn run(
        config: &KafkaBenchConfig,
        baseline: Option<Baseline>,
        mut on_cell: impl FnMut(usize, &str),
    ) -> Result<KafkaBench, BenchError> {
        if config.sizes.is_empty() || config.sizes.contains(&0) {
            return Err("record sizes must be at least 1 byte".into());
        }
        if config.duration.is_zero() || config.txn_ms == 0 {
            return Err("the duration and the transaction length must be positive".into());
        }
        let started = Instant::now();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let dir = crate::temp_dir("ferry-bench-kafka-", config.parent.as_deref())?;
        let broker = rt.block_on(EmbeddedBroker::start(
            BrokerConfig::ephemeral()
                .with_data_dir(dir.path())
                .with_flush(config.flush),
        ))?;
        let kafka_addr = broker
            .kafka_addr()
            .ok_or("the embedded broker has no Kafka listener")?
            .to_string();
        let grpc = Target::Remote {
            addr: broker.addr_string(),
            options: Default::default(),
        };
        let client = rt.block_on(Client::connect(&broker.addr_string()))?;
        let side = KafkaSide {
            addr: kafka_addr,
            config,
            fsync: config.flush.to_string(),
        };

        let mut cells = Vec::new();
        let mut failure = None;
        'sizes: for &size in &config.sizes {
            for (bench, mode) in [
                (Kind::Produce, DeliveryMode::Idempotent),
                (Kind::Produce, DeliveryMode::ExactlyOnce),
                (Kind::Consume, DeliveryMode::ExactlyOnce),
            ] {
                on_cell(
                    cells.len(),
                    &format!("{} {} {}", bench.name(), mode.name(), human(size)),
                );
                let cell = (|| -> Result<KafkaCell, BenchError> {
                    let grpc = workload::run(
                        &grpc_config(config, bench, mode, size),
                        &grpc,
                        &Progress::default(),
                    )?;
                    let topic = unique_topic();
                    rt.block_on(client.create_topic(&topic, 1))?;
                    let kafka = match bench {
                        Kind::Produce => side.produce(&topic, mode, size),
                        _ => side
                            .produce(&topic, DeliveryMode::ExactlyOnce, size)
                            .and_then(|filled| side.consume(&topic, size, filled.records)),
                    };
                    let _ = rt.block_on(client.delete_topic(&topic));
                    let kafka = kafka?;
                    Ok(KafkaCell {
                        bench,
                        mode,
                        record_size: size,
                        kafka_per_grpc: ratio(kafka.records_per_sec, grpc.records_per_sec),
                        grpc: grpc.with_baseline(baseline.as_ref()),
                        kafka: kafka.with_baseline(baseline.as_ref()),
                    })
                })();
                match cell {
                    Ok(c) => cells.push(c),
                    Err(e) => {
                        failure = Some(format!(
                            "{} {} {}: {e}",
                            bench.name(),
                            mode.name(),
                            human(size)
                        ));
                        break 'sizes;
                    }
                }
            }
        }
        drop(client);
        let _ = rt.block_on(broker.crash());
        drop(dir);
        if let Some(f) = failure {
            return Err(f.into());
        }
        Ok(KafkaBench {
            librdkafka: rdkafka::util::get_rdkafka_version().1,
            fsync: config.flush.to_string(),
            baseline,
            cells,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Whether any record failed on either side.
    pub fn failed(&self) -> u64 {
        self.cells
            .iter()
            .map(|c| c.grpc.failed + c.kafka.failed)
            .sum()
    }

    /// The results as a markdown table.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "librdkafka {}, fsync {}, one partition, {} cells in {:.0} s\n\n\
             | bench | mode | size | gRPC rec/s | Kafka rec/s | Kafka ÷ gRPC | gRPC ÷ TCP | Kafka ÷ TCP |\n\
             |---|---|---|--:|--:|--:|--:|--:|\n",
            self.librdkafka,
            self.fsync,
            self.cells.len(),
            self.seconds
        );
        for c in &self.cells {
            let tcp =
                |r: &BenchReport| super::fmt_ratio(r.ratios.as_ref().and_then(|r| r.loopback_tcp));
            s.push_str(&format!(
                "| {} | {} | {} | {:.0} | {:.0} | {} | {} | {} |\n",
                c.bench.name(),
                if c.bench == Kind::Consume {
                    "read_committed"
                } else {
                    c.mode.name()
                },
                human(c.record_size),
                c.grpc.records_per_sec,
                c.kafka.records_per_sec,
                super::fmt_ratio(c.kafka_per_grpc),
                tcp(&c.grpc),
                tcp(&c.kafka),
            ));
        }
        for c in &self.cells {
            for (side, r) in [("gRPC", &c.grpc), ("Kafka", &c.kafka)] {
                if r.failed > 0 {
                    s.push_str(&format!(
                        "\nFAILED: {} {} {} over {side}: {} records ({})",
                        c.bench.name(),
                        c.mode.name(),
                        human(c.record_size),
                        r.failed,
                        r.first_error.as_deref().unwrap_or("unknown error")
                    ));
                }
            }
        }
        s
    }
}

fn human(size: usize) -> String {
    workload::human_size(size)
}

fn grpc_config(
    config: &KafkaBenchConfig,
    kind: Kind,
    mode: DeliveryMode,
    size: usize,
) -> workload::WorkloadConfig {
    workload::WorkloadConfig {
        kind,
        mode,
        record_size: size,
        batch_bytes: config.batch_bytes,
        buffer_bytes: config.buffer_bytes,
        linger_ms: config.linger_ms,
        producers: 1,
        partitions: 1,
        txn_ms: config.txn_ms,
        stop: RunLength::Duration(config.duration),
        compression: Compression::None,
    }
}

fn unique_topic() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "ferry-bench-kafka-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// What the delivery callbacks of one producer saw.
struct Deliveries {
    /// Zero of the send times stamped into values.
    zero: Instant,
    /// Counts and histogram of plain (non-transactional) deliveries.
    seen: Mutex<Seen>,
    /// Whether send-to-ack latencies are recorded (not for transactions,
    /// whose latency runs to the commit).
    timed: bool,
}

struct Seen {
    acked: u64,
    failed: u64,
    first_error: Option<String>,
    last_ack: Instant,
    clock: Clock,
    latency: Histogram<u64>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let mut seen = self.seen.lock();
        match result {
            Ok(m) => {
                seen.acked += 1;
                if self.timed {
                    let now = seen.clock.tick();
                    seen.last_ack = now;
                    if let Some(sent) = m.payload().and_then(workload::stamped) {
                        let since = now.saturating_duration_since(self.zero);
                        record_us(
                            &mut seen.latency,
                            since.saturating_sub(sent).as_micros() as u64,
                        );
                    }
                }
            }
            Err((e, _)) => {
                seen.failed += 1;
                seen.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// The Kafka side of a run.
struct KafkaSide<'a> {
    addr: String,
    config: &'a KafkaBenchConfig,
    fsync: String,
}

impl KafkaSide<'_> {
    /// The report of a Kafka-side run: the gRPC side's settings (which
    /// both clients share), librdkafka's own buffer instead of the gRPC
    /// producer's.
    fn report(&self, bench: Kind, mode: DeliveryMode, size: usize, m: Outcome) -> BenchReport {
        let config = grpc_config(self.config, bench, mode, size);
        let mut r = m.report(
            &config,
            format!("kafka://{}", self.addr),
            Some(self.fsync.clone()),
        );
        r.buffer_bytes = 0;
        r
    }

    /// Produces `size`-byte records to `topic` for the configured
    /// duration, idempotently or in transactions.
    fn produce(
        &self,
        topic: &str,
        mode: DeliveryMode,
        size: usize,
    ) -> Result<BenchReport, BenchError> {
        let transactional = mode == DeliveryMode::ExactlyOnce;
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &self.addr)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", self.config.linger_ms.to_string())
            .set("batch.size", self.config.batch_bytes.to_string())
            .set("compression.type", "none");
        if transactional {
            cc.set("transactional.id", format!("{topic}-txn"));
        }
        let zero = Instant::now();
        let context = Deliveries {
            zero,
            seen: Mutex::new(Seen {
                acked: 0,
                failed: 0,
                first_error: None,
                last_ack: zero,
                clock: Clock::every(CLOCK_EVERY),
                latency: latency_histogram(),
            }),
            timed: !transactional,
        };
        let producer: BaseProducer<Deliveries> = cc.create_with_context(context)?;
        if transactional {
            producer.init_transactions(CLIENT_TIMEOUT)?;
        }

        let mut value = vec![b'x'; size];
        let mut clock = Clock::every(CLOCK_EVERY);
        let mut txn_latency = latency_histogram();
        let mut committed = 0u64;
        let mut last_commit = Instant::now();
        // Send times of the open transaction's records.
        let mut open: Vec<Instant> = Vec::new();
        let mut txn_start = Instant::now();
        let start = clock.refresh();
        let end = start + self.config.duration;
        let txn = Duration::from_millis(self.config.txn_ms);
        let mut sent = 0u64;
        loop {
            let now = clock.tick();
            let done = now >= end;
            if transactional && !open.is_empty() && (done || now.duration_since(txn_start) >= txn) {
                drain(&producer)?;
                producer.commit_transaction(CLIENT_TIMEOUT)?;
                let at = clock.refresh();
                for t in &open {
                    record_us(
                        &mut txn_latency,
                        at.saturating_duration_since(*t).as_micros() as u64,
                    );
                }
                committed += open.len() as u64;
                last_commit = at;
                open.clear();
            }
            if done {
                break;
            }
            if transactional && open.is_empty() {
                producer.begin_transaction()?;
                txn_start = now;
            }
            workload::stamp(&mut value, now.saturating_duration_since(zero));
            match producer.send(BaseRecord::<(), [u8]>::to(topic).payload(&value[..])) {
                Ok(()) => {
                    sent += 1;
                    if transactional {
                        open.push(now);
                    }
                    if sent.is_multiple_of(POLL_EVERY) {
                        producer.poll(Duration::ZERO);
                    }
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(QUEUE_FULL_WAIT);
                    clock.refresh();
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        if !transactional {
            drain(&producer)?;
        }
        let seen = producer.context().seen.lock();
        let m = if transactional {
            Outcome {
                records: committed,
                failed: seen.failed,
                first_error: seen.first_error.clone(),
                elapsed: last_commit.saturating_duration_since(start),
                latency: txn_latency,
                latency_what: "send_to_commit",
            }
        } else {
            Outcome {
                records: seen.acked,
                failed: seen.failed + sent.saturating_sub(seen.acked + seen.failed),
                first_error: seen.first_error.clone(),
                // The clock in the callbacks lags by up to CLOCK_EVERY
                // deliveries; flush returned after the last one.
                elapsed: Instant::now().saturating_duration_since(start),
                latency: seen.latency.clone(),
                latency_what: "send_to_ack",
            }
        };
        drop(seen);
        Ok(self.report(Kind::Produce, mode, size, m))
    }

    /// Reads `expected` committed records of `topic` from its start with
    /// read_committed.
    fn consume(&self, topic: &str, size: usize, expected: u64) -> Result<BenchReport, BenchError> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("group.id", format!("{topic}-group"))
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
        consumer.assign(&tpl)?;

        let mut latency = latency_histogram();
        let mut consumed = 0u64;
        let mut failed = 0u64;
        let mut first_error = None;
        // The clock starts at the first message, once librdkafka has
        // connected, found the partition and its offset.
        let mut start = None::<Instant>;
        let mut last = Instant::now();
        while consumed < expected {
            let asked = consumed
                .is_multiple_of(u64::from(CLOCK_EVERY))
                .then(Instant::now);
            match consumer.poll(POLL_TIMEOUT) {
                Some(Ok(m)) => {
                    consumed += 1;
                    if m.payload().map(<[u8]>::len) != Some(size) {
                        failed += 1;
                        first_error.get_or_insert_with(|| {
                            format!("offset {} has a payload of the wrong size", m.offset())
                        });
                    }
                    if let Some(asked) = asked {
                        last = Instant::now();
                        match start {
                            None => start = Some(last),
                            Some(_) => record_us(&mut latency, (last - asked).as_micros() as u64),
                        }
                    }
                }
                Some(Err(e)) => return Err(e.into()),
                None if last.elapsed() >= IDLE_END => break,
                None => {}
            }
        }
        let end = Instant::now();
        if consumed < expected {
            first_error
                .get_or_insert_with(|| format!("read {consumed} of {expected} committed records"));
            failed += expected - consumed;
        }
        let records = consumed.saturating_sub(1);
        Ok(self.report(
            Kind::Consume,
            DeliveryMode::ExactlyOnce,
            size,
            Outcome {
                records,
                failed,
                first_error,
                elapsed: start.map_or(Duration::ZERO, |s| end.saturating_duration_since(s)),
                latency,
                latency_what: "poll",
            },
        ))
    }
}

/// Waits until every message sent was delivered or failed, running the
/// delivery callbacks. (`flush` would do it too, but it polls in steps of
/// 100 ms, which would stretch every commit to at least that.)
fn drain(producer: &BaseProducer<Deliveries>) -> Result<(), BenchError> {
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    while producer.in_flight_count() > 0 {
        if Instant::now() >= deadline {
            return Err(format!(
                "{} messages still undelivered after {CLIENT_TIMEOUT:?}",
                producer.in_flight_count()
            )
            .into());
        }
        producer.poll(DRAIN_POLL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cell_moves_records_through_both_front_ends() {
        let config = KafkaBenchConfig {
            sizes: vec![100],
            duration: Duration::from_millis(300),
            txn_ms: 50,
            ..KafkaBenchConfig::default()
        };
        let mut labels = Vec::new();
        let bench = KafkaBench::run(&config, None, |i, l| labels.push(format!("{i} {l}")))
            .expect("bench runs");
        assert_eq!(
            labels,
            [
                "0 produce idempotent 100 B",
                "1 produce exactly-once 100 B",
                "2 consume exactly-once 100 B"
            ]
        );
        assert_eq!(bench.failed(), 0, "{}", bench.markdown());
        for c in &bench.cells {
            for r in [&c.grpc, &c.kafka] {
                assert!(r.records > 0, "{}", bench.markdown());
                assert!(r.records_per_sec > 0.0);
                assert_eq!(r.bench, c.bench);
                assert_eq!(r.record_size, 100);
            }
            assert!(c.kafka_per_grpc.is_some());
        }
        let table = bench.markdown();
        assert_eq!(table.matches("| produce |").count(), 2, "{table}");
        assert_eq!(
            table.matches("| consume | read_committed |").count(),
            1,
            "{table}"
        );
    }
}
