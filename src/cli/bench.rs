//! `ferry bench`: produce, consume and end-to-end throughput and latency,
//! reported against physical baselines measured in the same run.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Subcommand;
use ferry_bench::workload::{self, RunLength};
use ferry_bench::{
    Baseline, BaselineConfig, DeliveryMode, Kind, Matrix, MatrixConfig, Progress, Target,
};
use ferry_storage::FlushPolicy;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::CliError;

/// Default length of a run, and of each matrix cell.
const DEFAULT_DURATION_SECS: f64 = 5.0;
/// How often the progress bar is redrawn.
const PROGRESS_TICK: Duration = Duration::from_millis(100);

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Producer throughput, and latency from send to acknowledgement.
    Produce(RunArgs),
    /// Consumer throughput over a topic filled first; latency per poll.
    Consume(RunArgs),
    /// Producers and a consumer together; latency from send to consume.
    E2e(RunArgs),
    /// This machine without Ferry: write(2), write+fdatasync, loopback TCP.
    Baseline(BaselineArgs),
    /// Every mode × 100 B and 1 KiB × fsync never and always, as ratios to
    /// at-least-once; a markdown (or JSON) table and an SVG chart.
    Matrix(MatrixArgs),
    /// Rebalance time of a consumer group: one member leaves, and the clock
    /// runs until every partition is consumed again by the others.
    Rebalance(RebalanceArgs),
    /// The Kafka front end with a real Kafka client (librdkafka) next to
    /// ferry-client over gRPC, on one embedded broker: produce
    /// (idempotent, exactly-once) and read_committed consume at each
    /// record size, as a markdown (or JSON) table with the ratios.
    Kafka(KafkaArgs),
    /// What TLS costs: at-least-once produce and consume through
    /// ferry-client on a plaintext and a TLS broker, alternating, with
    /// TLS ÷ plaintext per cell.
    Tls(TlsArgs),
    /// Whether a produce quota holds: a principal with a
    /// producer_byte_rate and one without, producing at once through
    /// ferry-client; reports throttled rate ÷ quota and the free
    /// producer's rate beside it ÷ alone.
    Quota(QuotaArgs),
    /// Restart time and the size of the `__offsets` log after many offset
    /// commits of the same partitions: a small and a large count, with
    /// large ÷ small for each.
    Restart(RestartArgs),
    /// How fast the log cleaner cleans a compacted topic, against
    /// sequential write(2) of the same bytes, and produce to another topic
    /// while it cleans, against produce alone.
    Compaction(CompactionArgs),
}

#[derive(Debug, clap::Args)]
pub struct CompactionArgs {
    /// Bytes written to the compacted topic before it is cleaned.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// Value bytes per record.
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    /// Share of the records whose key is live after cleaning.
    #[arg(long, default_value_t = 0.1)]
    live: f64,
    /// The compacted topic's segment.bytes.
    #[arg(long, default_value_t = 64 << 20)]
    segment_bytes: u64,
    /// The cleaner's read limit in bytes per second [default: none].
    #[arg(long)]
    cleaner_max_bytes_per_sec: Option<u64>,
    /// Seconds produce to the other topic is measured alone.
    #[arg(long, default_value_t = 5.0)]
    alone_secs: f64,
    /// The broker's fsync policy: always, interval=MS, or never.
    #[arg(long, default_value = "never")]
    fsync: FlushPolicy,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
pub struct RestartArgs {
    /// Commit counts, comma-separated; each one commits every partition.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000u64, 1_000_000])]
    commits: Vec<u64>,
    /// Partitions in every commit.
    #[arg(long, default_value_t = 100)]
    partitions: u32,
    /// The broker's fsync policy while committing: always, interval=MS, or
    /// never.
    #[arg(long, default_value = "never")]
    fsync: FlushPolicy,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
pub struct QuotaArgs {
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// The throttled principal's producer_byte_rate, in bytes/s.
    #[arg(long, default_value_t = 1024 * 1024)]
    quota: u64,
    /// Value bytes per record.
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
pub struct TlsArgs {
    /// Seconds each cell runs on each broker, per round.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Rounds; each cell reports its median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Record sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = ferry_bench::tls::SIZES)]
    record_sizes: Vec<usize>,
    /// The brokers' fsync policy: always, interval=MS, or never.
    #[arg(long, default_value = "never")]
    fsync: FlushPolicy,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
pub struct KafkaArgs {
    /// Seconds each cell produces (a consume cell reads what its side
    /// produced in that time).
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Record sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = ferry_bench::kafka::SIZES)]
    record_sizes: Vec<usize>,
    /// Transaction length of exactly-once, in milliseconds.
    #[arg(long, default_value_t = 100)]
    txn_ms: u64,
    /// The embedded broker's fsync policy: always, interval=MS, or never.
    #[arg(long, default_value = "never")]
    fsync: FlushPolicy,
    /// Batch size of both clients, in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    batch_bytes: usize,
    /// How long a batch of either client waits to fill.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    #[command(flatten)]
    source: BaselineSource,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
pub struct RebalanceArgs {
    /// Members before one leaves.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 6)]
    partitions: u32,
    /// Rounds (fresh topic and group each); the median is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Assignors to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values = ["range", "cooperative-sticky"])]
    assignors: Vec<String>,
    /// The members' session timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    session_timeout_ms: u64,
    /// The members' heartbeat interval in milliseconds: the members that
    /// stay learn of the rebalance from their next heartbeat.
    #[arg(long, default_value_t = 3_000)]
    heartbeat_interval_ms: u64,
    /// Print one JSON object per assignor instead of text.
    #[arg(long)]
    json: bool,
}

/// Flags every subcommand takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Print one JSON object instead of text, and no progress bar.
    #[arg(long)]
    json: bool,
    /// Directory for the embedded broker's temporary data dirs and the disk
    /// baselines. Default: the system's temporary directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Seconds each of the four baseline measurements takes.
    #[arg(long, default_value_t = 0.5)]
    baseline_secs: f64,
}

/// Where the baseline comes from, for the subcommands that report ratios.
#[derive(Debug, Clone, clap::Args)]
pub struct BaselineSource {
    /// Read the baseline from this file (the output of
    /// `ferry bench baseline --json`) instead of measuring it.
    #[arg(long, conflicts_with = "no_baseline")]
    baseline: Option<PathBuf>,
    /// Skip the baseline and the ratios.
    #[arg(long)]
    no_baseline: bool,
}

/// How the producers batch, and how many there are.
#[derive(Debug, Clone, clap::Args)]
pub struct ProducerFlags {
    /// Producer batch size in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    batch_bytes: usize,
    /// Each producer's buffer of records not yet acknowledged, in bytes
    /// (sending waits while it is full). The client library's default is
    /// 64 MiB, for many partitions; with one or a few, a small buffer keeps
    /// batches in the CPU caches and ran faster on every cell.
    #[arg(long, default_value_t = workload::BENCH_BUFFER_BYTES)]
    buffer_bytes: usize,
    /// How long a producer batch waits to fill.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Producers, each with its own connection.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
}

/// Settings of a produce, consume or e2e run.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Stop after this many records (in all, across producers).
    #[arg(long, conflicts_with = "duration")]
    records: Option<u64>,
    /// Stop producing after this many seconds. Default 5 unless --records.
    #[arg(long)]
    duration: Option<f64>,
    /// Value bytes per record.
    #[arg(long, default_value_t = 100)]
    record_size: usize,
    #[command(flatten)]
    producer: ProducerFlags,
    /// at-most-once (acks none), at-least-once (acks all), idempotent (acks
    /// all + idempotence), or exactly-once (transactions of --txn-ms).
    #[arg(long, value_enum, default_value = "at-least-once")]
    mode: DeliveryMode,
    /// Transaction length of --mode exactly-once, in milliseconds.
    #[arg(long, default_value_t = 100)]
    txn_ms: u64,
    /// The producers' batch compression: none, gzip, snappy, lz4 or zstd.
    /// Values are --record-size bytes of 'x' (after an 8-byte stamp), so
    /// they compress very well.
    #[arg(long, default_value = "none")]
    compression: ferry_client::Compression,
    /// The embedded broker's fsync policy: always, interval=MS, or never.
    #[arg(long, default_value = "always")]
    fsync: FlushPolicy,
    /// Run against this broker (HOST:PORT) instead of an embedded one; the
    /// run creates a topic and deletes it after. --fsync does not apply.
    #[arg(long)]
    broker: Option<String>,
    #[command(flatten)]
    source: BaselineSource,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
pub struct BaselineArgs {
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
pub struct MatrixArgs {
    /// Seconds each cell produces.
    #[arg(long, default_value_t = DEFAULT_DURATION_SECS, conflicts_with = "records")]
    duration: f64,
    /// Records each cell produces, instead of --duration.
    #[arg(long)]
    records: Option<u64>,
    /// Record sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = ferry_bench::matrix::SIZES)]
    record_sizes: Vec<usize>,
    /// Transaction lengths of exactly-once, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = ferry_bench::matrix::TXN_MS)]
    txn_ms: Vec<u64>,
    /// fsync policies, comma-separated.
    #[arg(long, value_delimiter = ',', default_values = ["never", "always"])]
    fsync: Vec<FlushPolicy>,
    /// Modes, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["at-most-once", "at-least-once", "idempotent", "exactly-once"])]
    modes: Vec<DeliveryMode>,
    #[command(flatten)]
    producer: ProducerFlags,
    /// Run the whole matrix this many times; each cell shows its median.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Where to write the SVG chart.
    #[arg(long, default_value = "ferry-bench-matrix.svg")]
    chart: PathBuf,
    /// Also write the JSON table to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    #[command(flatten)]
    source: BaselineSource,
    #[command(flatten)]
    common: Common,
}

pub fn run(command: BenchCommand) -> Result<ExitCode, CliError> {
    match command {
        BenchCommand::Produce(args) => run_workload(Kind::Produce, args),
        BenchCommand::Consume(args) => run_workload(Kind::Consume, args),
        BenchCommand::E2e(args) => run_workload(Kind::E2e, args),
        BenchCommand::Baseline(args) => run_baseline(args),
        BenchCommand::Matrix(args) => run_matrix(args),
        BenchCommand::Rebalance(args) => run_rebalance(args),
        BenchCommand::Kafka(args) => run_kafka(args),
        BenchCommand::Tls(args) => run_tls(args),
        BenchCommand::Quota(args) => run_quota(args),
        BenchCommand::Restart(args) => run_restart(args),
        BenchCommand::Compaction(args) => run_compaction(args),
    }
}

fn run_compaction(args: CompactionArgs) -> Result<ExitCode, CliError> {
    if !(args.alone_secs > 0.0 && args.alone_secs <= 3600.0) {
        return Err("--alone-secs must be in (0, 3600]".into());
    }
    let config = ferry_bench::compaction::CompactionBenchConfig {
        bytes: args.bytes,
        record_size: args.record_size,
        live_fraction: args.live,
        segment_bytes: args.segment_bytes,
        max_bytes_per_sec: args.cleaner_max_bytes_per_sec,
        alone: std::time::Duration::from_secs_f64(args.alone_secs),
        flush: args.fsync,
        parent: args.common.data_dir.clone(),
    };
    let bar = cells_bar(args.common.json, 100);
    let bench = ferry_bench::compaction::CompactionBench::run(&config, |done, of| {
        bar.set_position(done * 100 / of.max(1));
        bar.set_message("filling the compacted topic");
    });
    bar.finish_and_clear();
    let bench = bench?;
    print_report(args.common.json, &bench, bench.failed(), || {
        bench.markdown()
    })
}

fn run_restart(args: RestartArgs) -> Result<ExitCode, CliError> {
    let config = ferry_bench::restart::RestartBenchConfig {
        commits: args.commits.clone(),
        partitions: args.partitions,
        flush: args.fsync,
        parent: args.common.data_dir.clone(),
    };
    let bar = cells_bar(args.common.json, args.commits.iter().sum());
    let mut done = 0;
    let mut last = 0;
    let bench = ferry_bench::restart::RestartBench::run(&config, |i, of| {
        if i == 0 {
            done += last;
        }
        last = of;
        bar.set_position(done + i);
        bar.set_message(format!("{of} commits"));
    });
    bar.finish_and_clear();
    let bench = bench?;
    print_report(args.common.json, &bench, bench.failed(), || {
        bench.markdown()
    })
}

fn run_quota(args: QuotaArgs) -> Result<ExitCode, CliError> {
    let config = ferry_bench::quota::QuotaBenchConfig {
        quota_bytes_per_sec: args.quota,
        duration: match stop(None, Some(args.duration))? {
            RunLength::Duration(d) => d,
            RunLength::Records(_) => unreachable!("stop() with no --records gives a duration"),
        },
        record_size: args.record_size,
        parent: args.common.data_dir.clone(),
        ..Default::default()
    };
    let bar = cells_bar(args.common.json, 2);
    let mut step = 0;
    let bench = ferry_bench::quota::QuotaBench::run(&config, |label| {
        bar.set_position(step);
        bar.set_message(label.to_string());
        step += 1;
    });
    bar.finish_and_clear();
    let bench = bench?;
    print_report(args.common.json, &bench, bench.failed(), || {
        bench.markdown()
    })
}

fn run_tls(args: TlsArgs) -> Result<ExitCode, CliError> {
    let config = ferry_bench::tls::TlsBenchConfig {
        sizes: args.record_sizes.clone(),
        duration: match stop(None, Some(args.duration))? {
            RunLength::Duration(d) => d,
            RunLength::Records(_) => unreachable!("stop() with no --records gives a duration"),
        },
        rounds: args.rounds,
        flush: args.fsync,
        parent: args.common.data_dir.clone(),
        ..Default::default()
    };
    let steps = (config.sizes.len() * 2 * config.rounds) as u64;
    let bar = cells_bar(args.common.json, steps);
    let bench = ferry_bench::tls::TlsBench::run(&config, |i, label| {
        bar.set_position(i as u64);
        bar.set_message(label.to_string());
    });
    bar.finish_and_clear();
    let bench = bench?;
    print_report(args.common.json, &bench, bench.failed(), || {
        bench.markdown()
    })
}

fn run_kafka(args: KafkaArgs) -> Result<ExitCode, CliError> {
    let config = ferry_bench::kafka::KafkaBenchConfig {
        sizes: args.record_sizes.clone(),
        duration: match stop(None, Some(args.duration))? {
            RunLength::Duration(d) => d,
            RunLength::Records(_) => unreachable!("stop() with no --records gives a duration"),
        },
        txn_ms: args.txn_ms,
        linger_ms: args.linger_ms,
        batch_bytes: args.batch_bytes,
        flush: args.fsync,
        parent: args.common.data_dir.clone(),
        ..Default::default()
    };
    let baseline = args.source.resolve(&args.common)?;
    let cells = (config.sizes.len() * 3) as u64;
    let bar = cells_bar(args.common.json, cells);
    let bench = ferry_bench::kafka::KafkaBench::run(&config, baseline, |i, label| {
        bar.set_position(i as u64);
        bar.set_message(label.to_string());
    });
    bar.finish_and_clear();
    let bench = bench?;
    print_report(args.common.json, &bench, bench.failed(), || {
        let baseline = bench.baseline.as_ref().map_or(String::new(), |b| {
            format!("baseline in {}:\n{}\n\n", b.dir, b.human())
        });
        format!("{baseline}{}", bench.markdown())
    })
}

/// Prints a finished run as one JSON object or as its text, and exits
/// non-zero when any record failed.
fn print_report<T: serde::Serialize>(
    json: bool,
    report: &T,
    failed: u64,
    text: impl FnOnce() -> String,
) -> Result<ExitCode, CliError> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{}", text());
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_rebalance(args: RebalanceArgs) -> Result<ExitCode, CliError> {
    if ferry_client::group::assignors(&args.assignors).is_err() || args.assignors.is_empty() {
        return Err(format!(
            "--assignors: expected names among range, roundrobin, cooperative-sticky, got {:?}",
            args.assignors
        )
        .into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    for assignor in &args.assignors {
        let config = ferry_bench::rebalance::RebalanceConfig {
            members: args.members,
            partitions: args.partitions,
            rounds: args.rounds,
            assignor: assignor.clone(),
            session_timeout: Duration::from_millis(args.session_timeout_ms),
            heartbeat_interval: Duration::from_millis(args.heartbeat_interval_ms),
        };
        let r = runtime.block_on(ferry_bench::rebalance::measure(&config))?;
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "{}: {} members, {} partitions, one leaves: median {:.1} ms (min {:.1}, max {:.1}, {} rounds) \
                 = {:.0} x one unary RPC round trip ({:.3} ms); heartbeats every {} ms",
                r.assignor,
                r.members,
                r.partitions,
                r.median_ms,
                r.min_ms,
                r.max_ms,
                r.rounds_ms.len(),
                r.rebalance_per_rtt,
                r.rpc_rtt_ms,
                r.heartbeat_interval_ms
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

impl Common {
    fn baseline_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(std::env::temp_dir)
    }

    fn measure_baseline(&self) -> Result<Baseline, CliError> {
        if !(self.baseline_secs > 0.0 && self.baseline_secs.is_finite()) {
            return Err("--baseline-secs must be positive".into());
        }
        let bar = spinner(self.json, "measuring the baseline");
        let b = Baseline::measure(&BaselineConfig {
            dir: self.baseline_dir(),
            each: Duration::from_secs_f64(self.baseline_secs),
        });
        bar.finish_and_clear();
        Ok(b.map_err(|e| format!("baseline in {}: {e}", self.baseline_dir().display()))?)
    }
}

impl BaselineSource {
    fn resolve(&self, common: &Common) -> Result<Option<Baseline>, CliError> {
        if self.no_baseline {
            return Ok(None);
        }
        if let Some(path) = &self.baseline {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("read {}: {e}", path.display()))?;
            return Ok(Some(
                Baseline::from_json(&text).map_err(|e| format!("parse {}: {e}", path.display()))?,
            ));
        }
        common.measure_baseline().map(Some)
    }
}

fn stop(records: Option<u64>, duration: Option<f64>) -> Result<RunLength, CliError> {
    match (records, duration) {
        (Some(n), _) => Ok(RunLength::Records(n)),
        (None, d) => {
            let secs = d.unwrap_or(DEFAULT_DURATION_SECS);
            if !(secs > 0.0 && secs.is_finite()) {
                return Err("--duration must be a positive number of seconds".into());
            }
            Ok(RunLength::Duration(Duration::from_secs_f64(secs)))
        }
    }
}

fn run_workload(kind: Kind, args: RunArgs) -> Result<ExitCode, CliError> {
    let config = workload::WorkloadConfig {
        kind,
        mode: args.mode,
        record_size: args.record_size,
        batch_bytes: args.producer.batch_bytes,
        buffer_bytes: args.producer.buffer_bytes,
        linger_ms: args.producer.linger_ms,
        producers: args.producer.producers,
        partitions: args.producer.partitions,
        txn_ms: args.txn_ms,
        stop: stop(args.records, args.duration)?,
        compression: args.compression,
    };
    config.validate()?;
    let target = match &args.broker {
        Some(addr) => Target::Remote {
            addr: addr.clone(),
            options: Default::default(),
        },
        None => Target::Embedded {
            flush: args.fsync,
            parent: args.common.data_dir.clone(),
        },
    };
    let baseline = args.source.resolve(&args.common)?;

    let progress = Progress::default();
    let bar = run_bar(args.common.json, config.stop);
    let report = with_progress(&bar, &progress, config.stop, || {
        workload::run(&config, &target, &progress)
    });
    bar.finish_and_clear();
    let report = report?.with_baseline(baseline.as_ref());

    if args.common.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.human());
    }
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_baseline(args: BaselineArgs) -> Result<ExitCode, CliError> {
    let b = args.common.measure_baseline()?;
    if args.common.json {
        println!(
            "{}",
            serde_json::json!({ "bench": "baseline", "baseline": b })
        );
    } else {
        println!("baseline in {}:\n{}", b.dir, b.human());
    }
    Ok(ExitCode::SUCCESS)
}

fn run_matrix(args: MatrixArgs) -> Result<ExitCode, CliError> {
    let config = MatrixConfig {
        stop: stop(args.records, Some(args.duration))?,
        sizes: args.record_sizes.clone(),
        fsyncs: args.fsync.clone(),
        txn_ms: args.txn_ms.clone(),
        modes: args.modes.clone(),
        batch_bytes: args.producer.batch_bytes,
        buffer_bytes: args.producer.buffer_bytes,
        linger_ms: args.producer.linger_ms,
        producers: args.producer.producers,
        partitions: args.producer.partitions,
        parent: args.common.data_dir.clone(),
        cell_baseline: (!args.source.no_baseline && args.source.baseline.is_none())
            .then(|| Duration::from_secs_f64(args.common.baseline_secs)),
        rounds: args.rounds,
    };
    let cells = ferry_bench::matrix::cells(&config).len() * args.rounds.max(1);
    if cells == 0 {
        return Err("the matrix is empty: give at least one size, fsync policy and mode".into());
    }
    let baseline = args.source.resolve(&args.common)?;

    let bar = cells_bar(args.common.json, cells as u64);
    let progress = Progress::default();
    let matrix = Matrix::run(&config, baseline, &progress, |i, spec| {
        bar.set_position(i as u64);
        bar.set_message(spec.label());
    });
    bar.finish_and_clear();
    let matrix = matrix?;

    matrix
        .chart_svg(&args.chart)
        .map_err(|e| format!("write chart {}: {e}", args.chart.display()))?;
    let json = serde_json::to_string(&matrix)?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, &json).map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    if args.common.json {
        println!("{json}");
    } else {
        if let Some(b) = &matrix.baseline {
            println!("baseline in {}:\n{}\n", b.dir, b.human());
        }
        print!("{}", matrix.markdown());
        println!(
            "\n{} cells × {} round(s) in {:.0} s; chart: {}",
            matrix.cells.len(),
            matrix.rounds,
            matrix.seconds,
            args.chart.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// No progress bar for JSON output or when stderr is not a terminal.
fn hidden(json: bool) -> bool {
    json || !std::io::stderr().is_terminal()
}

/// A bar of `cells` benchmark cells.
fn cells_bar(json: bool, cells: u64) -> ProgressBar {
    if hidden(json) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(cells), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} cells: {msg}")
            .expect("valid template"),
    );
    bar.enable_steady_tick(PROGRESS_TICK);
    bar
}

fn spinner(json: bool, message: &'static str) -> ProgressBar {
    if hidden(json) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_message(message);
    bar.enable_steady_tick(PROGRESS_TICK);
    bar
}

/// A bar of records for `--records`, of seconds for `--duration`.
fn run_bar(json: bool, stop: RunLength) -> ProgressBar {
    if hidden(json) {
        return ProgressBar::hidden();
    }
    let (len, template) = match stop {
        RunLength::Records(n) => (n, "[{elapsed_precise}] {bar:30} {pos}/{len} records {msg}"),
        RunLength::Duration(d) => (d.as_millis() as u64, "[{elapsed_precise}] {bar:30} {msg}"),
    };
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar
}

/// Runs `f` while a thread moves `bar` along with `progress`.
fn with_progress<T>(
    bar: &ProgressBar,
    progress: &Progress,
    stop: RunLength,
    f: impl FnOnce() -> T,
) -> T {
    if bar.is_hidden() {
        return f();
    }
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let started = Instant::now();
            while !done.load(Ordering::Relaxed) {
                let records = progress.records();
                let phase = if progress.filling() { "filling" } else { "" };
                match stop {
                    RunLength::Records(_) => {
                        bar.set_position(records);
                        bar.set_message(phase);
                    }
                    RunLength::Duration(d) => {
                        let elapsed = started.elapsed().min(d);
                        bar.set_position(elapsed.as_millis() as u64);
                        bar.set_message(format!("{records} records {phase}"));
                    }
                }
                std::thread::sleep(PROGRESS_TICK);
            }
        });
        let out = f();
        done.store(true, Ordering::Relaxed);
        out
    })
}
