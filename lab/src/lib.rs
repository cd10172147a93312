//! `ferry lab`: the delivery-semantics lab. Three pipelines run end to
//! end, in each delivery mode side by side, twice each: once without
//! faults, to measure what a mode costs, and once under one seeded fault
//! schedule, to measure the damage faults do; every mode is checked
//! against its own guarantee in both.
//!
//! | scenario | input event | effect | modes |
//! |---|---|---|---|
//! | `orders` | an order (id, SKU) | reserve one unit of stock in SQLite, write a fulfilment event | exactly-once; at-least-once + [`UniqueSink`](ferry_client::UniqueSink); at-least-once, plain `INSERT` |
//! | `orders` | the same | reserve one unit of stock in PostgreSQL (and, with the outbox, write the fulfilment event) | exactly-once, offsets in the database ([`DbConsumer`](ferry_client::sink::db::DbConsumer)); the same + outbox and [`OutboxRelay`](ferry_client::sink::db::outbox::OutboxRelay); at-least-once, plain `INSERT` |
//! | `views` | a page view with a unique `event_id` | one row per view | at-least-once + [`UniqueSink`](ferry_client::UniqueSink) |
//! | `trips` | a trip update (`trip_id`, timestamp) | the trip's latest state, last write wins | at-least-once + [`UpsertSink`](ferry_client::UpsertSink) |
//!
//! # Cells, columns and rounds
//!
//! A cell is a scenario in one mode and one [`Faults`] column, run for
//! [`LabConfig::rounds`] rounds on the same input (the same values, so the
//! same order ids, SKUs, trips and timestamps). Each round gets a fresh
//! in-process broker (or the `--broker` given, without the restart) behind
//! a [`FaultProxy`](ferry_testkit::FaultProxy). Rounds interleave: round 1
//! of every mode and column of a scenario, then round 2, and so on, so
//! that a slow spell on the machine falls on all of them alike.
//!
//! In the **fault-free** column ([`Faults::None`]) the proxy's plan is
//! empty, the consumer's [`CrashSchedule`](ferry_testkit::CrashSchedule)
//! never crashes and the broker is not restarted: the traffic takes the
//! same path as in the faulted column, and nothing is lost or retried. The
//! **faulted** column ([`Faults::Seeded`]) suffers three faults:
//!
//! - **lost produce acks**: the second produce request's response, and a
//!   seeded share of the others, is dropped after the broker stored the
//!   batch, so the producer retries it;
//! - **consumer crash before the offset commit**: the consumer (a
//!   [`CrashingConsumer`](ferry_testkit::CrashingConsumer); for
//!   exactly-once, the client's [`ExactlyOnce`](ferry_client::ExactlyOnce)
//!   loop, crashed by its observer) dies after its sink write and before
//!   its commit, at its first and third steps with records and then at
//!   seeded steps, and a new one resumes from the group's committed
//!   offsets;
//! - **broker restart**: halfway through the input, the broker crashes
//!   (no flush) and restarts.
//!
//! The fault schedule depends only on the seed and the scenario: every
//! mode and every round of a scenario faces the same one.
//!
//! # The PostgreSQL modes
//!
//! Each cell makes a database of its own on the server of
//! [`LabConfig::postgres`], or on a throwaway durable one the run starts
//! (initdb in a temporary directory, a free loopback port), and drops it
//! at the end; without either, the modes are skipped and the report says
//! why ([`LabReport::postgres_skipped`]). Each batch (one poll) reserves
//! its orders in two statements, whatever the mode.
//!
//! - **Exactly-once, offsets in the database**: a
//!   [`DbConsumer`](ferry_client::sink::db::DbConsumer) commits the
//!   reservations and the next offsets in one database transaction,
//!   fenced by the group generation. Its consumer is a static group
//!   member, so a restart keeps the partitions without a rebalance. A
//!   scheduled crash drops the member and its connection, alternately
//!   before the database commit (the batch rolls back and is read again)
//!   and after it (nothing is read again).
//! - **Outbox + relay**: the same, with each order's fulfilment event
//!   written to the outbox in the same transaction, and an
//!   [`OutboxRelay`](ferry_client::sink::db::outbox::OutboxRelay)
//!   publishing it meanwhile; a consumer crash kills the relay too, as one
//!   process. The fulfilment topic is checked read_committed at the end:
//!   a fulfilment published twice counts as a duplicate in the sink, and
//!   an acknowledged order without one as lost. The timed span ends with
//!   the last fulfilment published.
//! - **At-least-once, plain `INSERT`**: the baseline of both, the same
//!   writes in a transaction of their own, then the offset commit to the
//!   broker.
//!
//! A [`Row`] sums a cell's rounds up: the median throughput and latency
//! percentiles, the worst round's damage, each round's throughput, and
//! whether the guarantee held in every round. The [`LabReport`] compares
//! the pairs of modes each scenario lists in [`Scenario::comparisons`]:
//! what a mode costs, as the ratio of fault-free throughputs, and what
//! faults do to each, from the faulted column (see [`Comparison`]).
//!
//! # Modes
//!
//! The at-least-once modes produce as the guarantees table defines at-least-once
//! (`acks=all`, retries, not idempotent), so a lost ack can store an event
//! twice; the exactly-once mode uses the idempotent producer for its input
//! and the client's [`ExactlyOnce`](ferry_client::ExactlyOnce) loop, as an
//! application would, for its processing and output. Every input event is a unique value of the testkit's
//! [`History`](ferry_testkit::History), and every detail of the event
//! (order id, SKU, trip, timestamp) derives from it.
//!
//! A new mode takes a [`LabMode`] variant, its [`ModeSpec`] in
//! [`LabMode::spec`], its place in [`Scenario::modes`] and, to be compared,
//! in [`Scenario::comparisons`], and the cell code that consumes in it (the
//! `consume` dispatch in the cell module). The table, JSON, ratios and
//! chart pick it up from there.
//!
//! # Cell length
//!
//! Each round produces a fixed number of records ([`LabConfig::records`]):
//! every mode and column processes the same input, so their damage counts
//! compare directly. The default, 1 500 000, is sized so that the
//! fastest cell, exactly-once at about 200 000 records/s on two cores,
//! lasts about 7 s; a faster machine makes shorter cells, so each round's
//! duration is in the row ([`Row::rounds_secs`]), and the table flags a
//! cell whose median round lasted under [`LabConfig::min_cell_secs`]
//! (5 s). The timed span runs from the first send to the last first
//! effect; setting up the broker and checking the history afterwards
//! are outside it.

mod cell;
mod report;

use std::time::Duration;

use ferry_client::DeliveryMode;

pub use cell::run_cell;
pub use report::{Comparison, Damage, LabChartError, LabReport, Round, Row};

/// Errors of the lab.
pub type LabError = Box<dyn std::error::Error + Send + Sync>;

/// The pipelines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Orders → stock reservations + fulfilment events.
    Orders,
    /// Page views, one row each.
    Views,
    /// Trip updates, latest state per trip.
    Trips,
}

impl Scenario {
    /// Every scenario, in table order.
    pub const ALL: [Scenario; 3] = [Scenario::Orders, Scenario::Views, Scenario::Trips];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Orders => "orders",
            Scenario::Views => "views",
            Scenario::Trips => "trips",
        }
    }

    /// The modes it runs in, side by side, in table order.
    pub fn modes(self) -> &'static [LabMode] {
        match self {
            Scenario::Orders => &[
                LabMode::ExactlyOnce,
                LabMode::AtLeastOnceSink,
                LabMode::AtLeastOnce,
                LabMode::ExactlyOncePg,
                LabMode::OutboxRelay,
                LabMode::AtLeastOncePg,
            ],
            Scenario::Views | Scenario::Trips => &[LabMode::AtLeastOnceSink],
        }
    }

    /// The pairs of its modes the report compares, `(numerator,
    /// denominator)`: the throughput ratio numerator ÷ denominator, and
    /// each one's damage under faults. Each mode must be in
    /// [`modes`](Self::modes).
    pub fn comparisons(self) -> &'static [(LabMode, LabMode)] {
        match self {
            Scenario::Orders => &[
                // What exactly-once costs over plain at-least-once.
                (LabMode::ExactlyOnce, LabMode::AtLeastOnce),
                // What the idempotent sink costs, or saves, against
                // exactly-once.
                (LabMode::AtLeastOnceSink, LabMode::ExactlyOnce),
                // The inverse, under the name earlier reports used.
                (LabMode::ExactlyOnce, LabMode::AtLeastOnceSink),
                // What the idempotent sink costs over none.
                (LabMode::AtLeastOnce, LabMode::AtLeastOnceSink),
                // What exactly-once costs when the database holds the
                // offsets, against at-least-once into the same database.
                (LabMode::ExactlyOncePg, LabMode::AtLeastOncePg),
                // What the outbox and its relay add to that.
                (LabMode::OutboxRelay, LabMode::ExactlyOncePg),
            ],
            Scenario::Views | Scenario::Trips => &[],
        }
    }

    /// The idempotent sink its at-least-once + sink mode writes to.
    pub fn sink_name(self) -> &'static str {
        match self {
            Scenario::Orders | Scenario::Views => "unique",
            Scenario::Trips => "upsert",
        }
    }
}

/// A delivery mode of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabMode {
    /// Transactions: outputs and offsets commit together.
    ExactlyOnce,
    /// Commit after the sink write, into an idempotent sink.
    AtLeastOnceSink,
    /// Commit after the sink write, into a sink that applies every
    /// delivery.
    AtLeastOnce,
    /// Offsets in PostgreSQL, committed with the rows in one database
    /// transaction, fenced by the group generation.
    ExactlyOncePg,
    /// [`ExactlyOncePg`](Self::ExactlyOncePg), with each output event
    /// written to the outbox in the same transaction and published by a
    /// relay.
    OutboxRelay,
    /// Commit to the broker after a plain write to PostgreSQL: the
    /// database modes' baseline.
    AtLeastOncePg,
}

/// Everything the lab's report needs to know about a [`LabMode`].
#[derive(Clone, Copy, Debug)]
pub struct ModeSpec {
    /// Its name in ratio keys and topic names, `snake_case`.
    pub key: &'static str,
    /// Its name on the chart.
    pub short: &'static str,
    /// Its label in tables; `{sink}` stands for the scenario's
    /// [`sink_name`](Scenario::sink_name).
    pub label: &'static str,
    /// What the mode promises, as the lab checks it.
    pub guarantee: &'static str,
    /// The client's delivery mode it runs in.
    pub delivery: DeliveryMode,
    /// Whether it may leave a duplicate effect in the sink (it must
    /// never lose an acknowledged event).
    pub duplicates_allowed: bool,
    /// Whether its sink is PostgreSQL (and the mode is skipped without
    /// a server).
    pub postgres: bool,
}

impl LabMode {
    /// What the report needs to know about the mode.
    pub fn spec(self) -> ModeSpec {
        match self {
            LabMode::ExactlyOnce => ModeSpec {
                key: "exactly_once",
                short: "EOS",
                label: "exactly-once",
                guarantee: "no loss, no duplicate in the sink",
                delivery: DeliveryMode::ExactlyOnce,
                duplicates_allowed: false,
                postgres: false,
            },
            LabMode::AtLeastOnceSink => ModeSpec {
                key: "at_least_once_sink",
                short: "ALO+sink",
                label: "at-least-once + {sink} sink",
                guarantee: "no loss, no duplicate row",
                delivery: DeliveryMode::AtLeastOnce,
                duplicates_allowed: false,
                postgres: false,
            },
            LabMode::AtLeastOnce => ModeSpec {
                key: "at_least_once_no_sink",
                short: "ALO",
                label: "at-least-once, no sink",
                guarantee: "no loss (duplicates allowed, reported)",
                delivery: DeliveryMode::AtLeastOnce,
                duplicates_allowed: true,
                postgres: false,
            },
            LabMode::ExactlyOncePg => ModeSpec {
                key: "exactly_once_pg_offsets",
                short: "EOS/PG",
                label: "PostgreSQL: exactly-once, offsets in the database",
                guarantee: "no loss, no duplicate row",
                delivery: DeliveryMode::ExactlyOnce,
                duplicates_allowed: false,
                postgres: true,
            },
            LabMode::OutboxRelay => ModeSpec {
                key: "outbox_relay",
                short: "outbox",
                label: "PostgreSQL: exactly-once + outbox relay",
                guarantee: "no loss, no duplicate row or fulfilment",
                delivery: DeliveryMode::ExactlyOnce,
                duplicates_allowed: false,
                postgres: true,
            },
            LabMode::AtLeastOncePg => ModeSpec {
                key: "at_least_once_pg",
                short: "ALO/PG",
                label: "PostgreSQL: at-least-once, plain INSERT",
                guarantee: "no loss (duplicates allowed, reported)",
                delivery: DeliveryMode::AtLeastOnce,
                duplicates_allowed: true,
                postgres: true,
            },
        }
    }

    /// The client's delivery mode it runs in: exactly-once, or
    /// at-least-once with or without an idempotent sink.
    pub fn delivery(self) -> DeliveryMode {
        self.spec().delivery
    }

    /// Its label in tables.
    pub fn label(self, scenario: Scenario) -> String {
        self.spec().label.replace("{sink}", scenario.sink_name())
    }

    /// What the mode promises, as the lab checks it.
    pub fn guarantee(self) -> &'static str {
        self.spec().guarantee
    }
}

/// The two columns of every mode: without faults, and under the seeded
/// fault schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Faults {
    /// No lost acks, no consumer crash, no broker restart: what the mode
    /// costs.
    #[serde(rename = "fault-free")]
    None,
    /// Lost produce acks, consumer crashes before the commit, one broker
    /// restart: what faults do to the mode.
    #[serde(rename = "faulted")]
    Seeded,
}

impl Faults {
    /// Both columns, in table order.
    pub const ALL: [Faults; 2] = [Faults::None, Faults::Seeded];

    /// Its label in tables and JSON.
    pub fn label(self) -> &'static str {
        match self {
            Faults::None => "fault-free",
            Faults::Seeded => "faulted",
        }
    }

    /// Whether faults are injected.
    pub fn injected(self) -> bool {
        self == Faults::Seeded
    }
}

/// Settings of a lab run.
#[derive(Clone, Debug)]
pub struct LabConfig {
    /// Input records per cell and round.
    pub records: u64,
    /// Rounds per cell (at least 1): the row reports the median throughput
    /// and latency and the worst round's damage.
    pub rounds: u32,
    /// Seeds the fault schedule (and nothing else).
    pub seed: u64,
    /// A broker to use instead of a fresh in-process one per cell. It is
    /// not restarted.
    pub broker: Option<String>,
    /// Share of produce responses lost in the faulted column.
    pub lost_ack_probability: f64,
    /// Chance that a consumer step crashes before its commit in the faulted
    /// column (the first and third steps with records always do).
    pub crash_probability: f64,
    /// How long a cell may take to drain after its input is produced.
    pub catch_up: Duration,
    /// Only these scenarios (all when empty).
    pub scenarios: Vec<Scenario>,
    /// The table flags a cell whose median round lasted less than this
    /// many seconds: its throughput is a short sample.
    pub min_cell_secs: f64,
    /// The PostgreSQL server of the database modes, as a connection URL
    /// (each cell makes a database of its own there). `None`: a
    /// throwaway server is started, or, without server binaries, the
    /// modes are skipped and the report says so.
    pub postgres: Option<String>,
}

impl LabConfig {
    /// The default run: 1 500 000 records per cell, one round, both
    /// columns.
    pub fn new(seed: u64) -> LabConfig {
        LabConfig {
            records: 1_500_000,
            rounds: 1,
            seed,
            broker: None,
            lost_ack_probability: 0.02,
            crash_probability: 0.1,
            catch_up: Duration::from_secs(120),
            scenarios: Vec::new(),
            min_cell_secs: 5.0,
            postgres: None,
        }
    }

    /// The fast preset for CI: 600 records per cell, more faults per
    /// record so each fault still fires; its cells are too short to time,
    /// so none is flagged.
    pub fn fast(seed: u64) -> LabConfig {
        LabConfig {
            records: 600,
            lost_ack_probability: 0.05,
            crash_probability: 0.3,
            catch_up: Duration::from_secs(30),
            min_cell_secs: 0.0,
            ..LabConfig::new(seed)
        }
    }

    fn scenarios(&self) -> Vec<Scenario> {
        if self.scenarios.is_empty() {
            Scenario::ALL.to_vec()
        } else {
            self.scenarios.clone()
        }
    }
}

/// Checks that `url` is a PostgreSQL connection URL (or key=value
/// string) the lab can connect with.
pub fn check_postgres_url(url: &str) -> Result<(), String> {
    url.parse::<ferry_client::sink::db::tokio_postgres::Config>()
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Runs every cell's rounds and collects the rows: per scenario, round 1
/// of each mode in both columns, then round 2, and so on. A round that
/// fails to run is reported in its row's problems, which violates the
/// guarantee.
pub async fn run(config: &LabConfig) -> LabReport {
    let rounds = config.rounds.max(1);
    let mut config = config.clone();
    let needs_postgres = config
        .scenarios()
        .iter()
        .any(|s| s.modes().iter().any(|m| m.spec().postgres));
    let (_server, skipped) = if needs_postgres && config.postgres.is_none() {
        match cell::throwaway_postgres().await {
            Ok(server) => {
                config.postgres = Some(server.url());
                (Some(server), None)
            }
            Err(why) => (None, Some(why)),
        }
    } else {
        (None, None)
    };
    let config = &config;
    let mut rows = Vec::new();
    for scenario in config.scenarios() {
        let cells: Vec<(LabMode, Faults)> = scenario
            .modes()
            .iter()
            .filter(|m| config.postgres.is_some() || !m.spec().postgres)
            .flat_map(|&mode| Faults::ALL.map(|faults| (mode, faults)))
            .collect();
        let mut results: Vec<Vec<Result<Round, String>>> = vec![Vec::new(); cells.len()];
        for round in 1..=rounds {
            for (&(mode, faults), results) in cells.iter().zip(&mut results) {
                tracing::info!(
                    scenario = scenario.name(),
                    mode = %mode.label(scenario),
                    faults = faults.label(),
                    round,
                    "cell"
                );
                results.push(
                    run_cell(config, scenario, mode, faults)
                        .await
                        .map_err(|e| e.to_string()),
                );
            }
        }
        for ((mode, faults), results) in cells.into_iter().zip(results) {
            rows.push(Row::from_rounds(scenario, mode, faults, results));
        }
    }
    let mut report = LabReport::new(config, rows);
    report.postgres_skipped = skipped;
    report
}
