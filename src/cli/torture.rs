//! `ferry torture`: a soak run of one delivery mode under chosen faults,
//! against a `ferry broker` subprocess that it kills and restarts, judged
//! by the history checker at the end.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ferry_testkit::{BrokerUnderTest, DeliveryMode, FaultClass, MatrixRow, Run, RunConfig, WorkOp};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::CliError;

/// Arguments of `ferry torture`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Each run starts its own broker (this binary's `broker` command) on a fresh \
data directory, produces unique values and consumes them in a group while \
injecting the faults, then drains every topic and checks the history:

  at-most-once   acks=none, no retries, commit before processing: may lose, never duplicates
  at-least-once  acks=all, retries, commit after processing: may duplicate, never loses an acked record
  idempotent     the idempotent producer: no duplicates or reordering from retries
  exactly-once   transactional copier in -> out, read_committed, offsets inside each transaction: nothing

Fault classes: lost-response, broker-kill (kill -9), torn-tail (kill -9 and \
garbage past each log's end), consumer-crash (before its commit), \
zombie-producer (a second instance keeps going), group-rebalance (the \
consumers, or copiers, are a group: one member killed or paused, a new one \
joining). Exits 1 if the mode's guarantee broke; repeat a run with --seed.")]
pub struct TortureArgs {
    /// Delivery mode: at-most-once, at-least-once, idempotent or exactly-once.
    #[arg(long, value_parser = ferry_testkit::parse_mode)]
    mode: DeliveryMode,
    /// Comma-separated fault classes, or all.
    #[arg(long, default_value = "all")]
    faults: String,
    /// How long to run the workload, in seconds (the final check takes a
    /// few more).
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seed for every random choice [default: random; printed].
    #[arg(long)]
    seed: Option<u64>,
    /// Keep the broker's data here instead of a temporary directory (it
    /// must not exist yet).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Inject a fault every this many workload ops, on average.
    #[arg(long, default_value_t = 8)]
    fault_every: u32,
}

/// Runs `ferry torture`.
pub fn run(args: TortureArgs) -> Result<ExitCode, CliError> {
    let faults = FaultClass::parse_list(&args.faults)?;
    if args.duration == 0 {
        return Err("--duration must be at least 1 second".into());
    }
    if args.fault_every == 0 {
        return Err("--fault-every must be at least 1".into());
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(torture(args, faults, seed))
}

async fn torture(
    args: TortureArgs,
    faults: Vec<FaultClass>,
    seed: u64,
) -> Result<ExitCode, CliError> {
    let bin = std::env::current_exe()?;
    let tmp;
    let dir = match &args.data_dir {
        Some(d) => {
            if d.exists() {
                return Err(format!("--data-dir {} already exists", d.display()).into());
            }
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().join("data")
        }
    };
    let config = RunConfig {
        mode: args.mode,
        faults: faults.clone(),
        seed,
    };
    let names: Vec<&str> = faults.iter().map(|f| f.name()).collect();
    eprintln!(
        "ferry torture: mode {}, faults {}, {} s, seed {seed} (repeat with --seed {seed})",
        args.mode,
        names.join(","),
        args.duration
    );
    let fsync = config.fsync_flag();
    let broker = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || BrokerUnderTest::process(&bin, &dir, &fsync)
    })
    .await?
    .map_err(|e| format!("starting the broker: {e}"))?;
    let mut run = Run::start(broker, config).await?;

    let bar = ProgressBar::new(args.duration);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} s  {msg}")?
            .progress_chars("=> "),
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    while Instant::now() < deadline {
        let op = if rng.random_ratio(1, args.fault_every) {
            WorkOp::Fault {
                class: rng.random_range(0..faults.len()) as u8,
                choice: rng.random(),
            }
        } else if rng.random_bool(0.55) {
            WorkOp::Produce {
                records: rng.random_range(1..=20),
                abort: rng.random_ratio(1, 6),
            }
        } else {
            WorkOp::Consume {
                steps: rng.random_range(1..=3),
            }
        };
        run.apply(op).await?;
        bar.set_position(started.elapsed().as_secs().min(args.duration));
        bar.set_message(format!(
            "ops {}  records {}  faults {}  broker restarts {}",
            run.ops(),
            run.records_sent(),
            run.faults_injected(),
            run.broker().restarts()
        ));
    }
    bar.set_message("catching up, draining and checking");
    let cell = run.finish().await?;
    bar.finish_and_clear();
    println!("{}", cell.verdict);
    println!("{}", MatrixRow::table(std::slice::from_ref(&cell.row)));
    let mut by_class: Vec<(String, usize)> = Vec::new();
    for f in &cell.injected {
        let class = f.split(':').next().unwrap_or("").to_string();
        match by_class.iter_mut().find(|(c, _)| *c == class) {
            Some((_, n)) => *n += 1,
            None => by_class.push((class, 1)),
        }
    }
    let summary: Vec<String> = by_class.iter().map(|(c, n)| format!("{c} {n}")).collect();
    println!(
        "seed {seed}; {} s; injected: {}{}",
        started.elapsed().as_secs(),
        if summary.is_empty() {
            "none".to_string()
        } else {
            summary.join(", ")
        },
        if faults.contains(&FaultClass::LostResponse) {
            " (lost responses counted in the faults column)"
        } else {
            ""
        }
    );
    if cell.verdict.is_valid() {
        Ok(ExitCode::SUCCESS)
    } else {
        if let Some(d) = &args.data_dir {
            let path = d.with_extension("history.jsonl");
            if std::fs::write(&path, cell.histories.join("")).is_ok() {
                eprintln!("history written to {}", path.display());
            }
        }
        eprintln!("error: {} broke its guarantee (seed {seed})", args.mode);
        Ok(ExitCode::FAILURE)
    }
}
