//! `ferry lab`: the delivery-semantics lab (see `ferry_lab`).

use std::path::PathBuf;
use std::process::ExitCode;

use ferry_lab::{LabConfig, Scenario};

use super::CliError;

/// Arguments of `ferry lab`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Runs three pipelines end to end, each delivery mode side by side, in two \
columns on the same input: fault-free (nothing lost, crashed or restarted), \
which measures what a mode costs, and faulted, under one seeded fault \
schedule: lost produce acks, consumer crashes before the offset commit, and \
a broker restart halfway through the input.

  orders  reserve stock in SQLite and write a fulfilment event:
          exactly-once; at-least-once + unique sink; at-least-once, plain INSERT;
          and reserve stock in PostgreSQL: exactly-once with the offsets in
          the database; the same with the fulfilment through an outbox and
          its relay; at-least-once, plain INSERT
  views   one row per view event_id: at-least-once + unique sink
  trips   latest state per trip_id by timestamp: at-least-once + upsert sink

Each cell runs --rounds times, rounds interleaved across modes. Prints a \
row per scenario, mode and column (records produced, sink rows, duplicates \
delivered / absorbed / left in the sink, lost, records/s and each round's, \
seconds, p50 and p99 end-to-end latency): rates and latencies are the median \
round's, duplicate and lost counts the worst round's. Below it, the cost \
ratios (orders: exactly-once / at-least-once, at-least-once + unique sink / \
exactly-once, offsets in PostgreSQL / at-least-once into PostgreSQL, ...) \
from the fault-free medians, each with both modes' damage \
under faults. Exits 1 if a mode broke its own guarantee in either column: \
exactly-once and the idempotent sinks must lose nothing and hold no \
duplicate; at-least-once without a sink must lose nothing (its duplicates \
are reported).

The PostgreSQL modes use --postgres URL, each cell in a database of its own \
that it creates and drops; without it, a throwaway durable server (initdb in \
a temporary directory, a free loopback port), found under \
/usr/lib/postgresql/*/bin, in FERRY_POSTGRES_BIN or on PATH. Without either, \
they are skipped and the report says so.")]
pub struct LabArgs {
    /// Input records per cell and round [default: 1500000; 600 with
    /// --fast].
    #[arg(long)]
    records: Option<u64>,
    /// Rounds per cell: the table shows the median throughput and latency
    /// and the worst round's damage [default: 3; 1 with --fast].
    #[arg(long)]
    rounds: Option<u32>,
    /// The small preset for CI: 600 records per cell, one round, faults
    /// more often.
    #[arg(long)]
    fast: bool,
    /// Seed of the fault schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Use this broker, HOST:PORT, instead of a fresh in-process one per
    /// cell (it is not restarted).
    #[arg(long, value_name = "ADDR")]
    broker: Option<String>,
    /// The PostgreSQL server of the database modes, e.g.
    /// postgres://user@127.0.0.1:5432/postgres (the user must be allowed
    /// to create databases) [default: a throwaway server].
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// Only these scenarios, comma-separated: orders, views, trips.
    #[arg(long, value_delimiter = ',', value_parser = parse_scenario)]
    scenario: Vec<Scenario>,
    /// Write the results as JSON to PATH, or to stdout (the table then
    /// goes to stderr) when PATH is left out.
    #[arg(long, value_name = "PATH", num_args = 0..=1)]
    json: Option<Option<PathBuf>>,
    /// Write a bar chart of throughput and duplicates, fault-free next to
    /// faulted, as SVG.
    #[arg(long, value_name = "PATH")]
    chart: Option<PathBuf>,
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    Scenario::ALL
        .into_iter()
        .find(|sc| sc.name() == s)
        .ok_or_else(|| format!("unknown scenario {s:?}: expected orders, views or trips"))
}

/// Runs `ferry lab`.
pub fn run(args: LabArgs) -> Result<ExitCode, CliError> {
    super::init_tracing("warn");
    let mut config = if args.fast {
        LabConfig::fast(args.seed)
    } else {
        LabConfig::new(args.seed)
    };
    if let Some(n) = args.records {
        if n < 2 {
            return Err("--records must be at least 2".into());
        }
        config.records = n;
    }
    config.rounds = match args.rounds {
        Some(0) => return Err("--rounds must be at least 1".into()),
        Some(n) => n,
        None if args.fast => 1,
        None => 3,
    };
    config.broker = args.broker;
    if let Some(url) = &args.postgres {
        ferry_lab::check_postgres_url(url).map_err(|e| format!("--postgres {url:?}: {e}"))?;
    }
    config.postgres = args.postgres;
    config.scenarios = args.scenario;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(ferry_lab::run(&config));
    let table = report.table();
    match &args.json {
        Some(None) => {
            eprint!("{table}");
            println!("{}", report.to_json());
        }
        Some(Some(path)) => {
            print!("{table}");
            std::fs::write(path, report.to_json() + "\n")
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        None => print!("{table}"),
    }
    if let Some(path) = &args.chart {
        report
            .chart_svg(path)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    if report.all_held() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: a delivery mode broke its guarantee (see VIOLATED above)");
        Ok(ExitCode::FAILURE)
    }
}
