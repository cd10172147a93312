//! `ferry lab`: the delivery-semantics lab. Three pipelines run end to end
//! under one seeded fault schedule, in each delivery mode side by side,
//! and every mode is checked against its own guarantee.
//!
//! | scenario | input event | effect | modes |
//! |---|---|---|---|
//! | `orders` | an order (id, SKU) | reserve one unit of stock in SQLite, write a fulfilment event | exactly-once; at-least-once + [`UniqueSink`](ferry_client::UniqueSink); at-least-once, plain `INSERT` |
//! | `views` | a page view with a unique `event_id` | one row per view | at-least-once + [`UniqueSink`](ferry_client::UniqueSink) |
//! | `trips` | a trip update (`trip_id`, timestamp) | the trip's latest state, last write wins | at-least-once + [`UpsertSink`](ferry_client::UpsertSink) |
//!
//! Each cell (scenario × mode) gets a fresh in-process broker (or the
//! `--broker` given, without the restart), behind a
//! [`FaultProxy`](ferry_testkit::FaultProxy) that loses produce
//! acknowledgements at random, and suffers three faults:
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
//! The at-least-once modes produce as the guarantees table defines at-least-once
//! (`acks=all`, retries, not idempotent), so a lost ack can store an event
//! twice; the exactly-once mode uses the idempotent producer for its input
//! and the client's [`ExactlyOnce`](ferry_client::ExactlyOnce) loop, as an
//! application would, for its processing and output. Every input event is a unique value of the testkit's
//! [`History`](ferry_testkit::History), and every detail of the event
//! (order id, SKU, trip, timestamp) derives from it.

mod cell;
mod report;

use std::time::Duration;

use ferry_client::DeliveryMode;

pub use cell::run_cell;
pub use report::{LabReport, Row};

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

    /// The modes it runs in, side by side.
    pub fn modes(self) -> &'static [LabMode] {
        match self {
            Scenario::Orders => &[
                LabMode::ExactlyOnce,
                LabMode::AtLeastOnceSink,
                LabMode::AtLeastOnce,
            ],
            Scenario::Views | Scenario::Trips => &[LabMode::AtLeastOnceSink],
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
}

impl LabMode {
    /// The client's delivery mode it runs in: exactly-once, or
    /// at-least-once with or without an idempotent sink.
    pub fn delivery(self) -> DeliveryMode {
        match self {
            LabMode::ExactlyOnce => DeliveryMode::ExactlyOnce,
            LabMode::AtLeastOnceSink | LabMode::AtLeastOnce => DeliveryMode::AtLeastOnce,
        }
    }

    /// Its label in tables.
    pub fn label(self, scenario: Scenario) -> String {
        match self {
            LabMode::ExactlyOnce => "exactly-once".into(),
            LabMode::AtLeastOnceSink => format!("at-least-once + {} sink", scenario.sink_name()),
            LabMode::AtLeastOnce => "at-least-once, no sink".into(),
        }
    }

    /// What the mode promises, as the lab checks it.
    pub fn guarantee(self) -> &'static str {
        match self {
            LabMode::ExactlyOnce => "no loss, no duplicate in the sink",
            LabMode::AtLeastOnceSink => "no loss, no duplicate row",
            LabMode::AtLeastOnce => "no loss (duplicates allowed, reported)",
        }
    }
}

/// Settings of a lab run.
#[derive(Clone, Debug)]
pub struct LabConfig {
    /// Input records per cell.
    pub records: u64,
    /// Seeds the fault schedule (and nothing else).
    pub seed: u64,
    /// A broker to use instead of a fresh in-process one per cell. It is
    /// not restarted.
    pub broker: Option<String>,
    /// Share of produce responses lost.
    pub lost_ack_probability: f64,
    /// Chance that a consumer step crashes before its commit (the first
    /// and third steps with records always do).
    pub crash_probability: f64,
    /// How long a cell may take to drain after its input is produced.
    pub catch_up: Duration,
    /// Only these scenarios (all when empty).
    pub scenarios: Vec<Scenario>,
}

impl LabConfig {
    /// The default run: 100 000 records per cell.
    pub fn new(seed: u64) -> LabConfig {
        LabConfig {
            records: 100_000,
            seed,
            broker: None,
            lost_ack_probability: 0.02,
            crash_probability: 0.1,
            catch_up: Duration::from_secs(60),
            scenarios: Vec::new(),
        }
    }

    /// The fast preset for CI: 600 records per cell, more faults per
    /// record so each fault still fires.
    pub fn fast(seed: u64) -> LabConfig {
        LabConfig {
            records: 600,
            lost_ack_probability: 0.05,
            crash_probability: 0.3,
            catch_up: Duration::from_secs(30),
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

/// Runs every cell in turn and collects the rows. A cell that fails to run
/// is reported as an error row, which violates its guarantee.
pub async fn run(config: &LabConfig) -> LabReport {
    let mut rows = Vec::new();
    for scenario in config.scenarios() {
        for &mode in scenario.modes() {
            tracing::info!(scenario = scenario.name(), mode = %mode.label(scenario), "cell");
            let row = match run_cell(config, scenario, mode).await {
                Ok(row) => row,
                Err(e) => Row::failed(config, scenario, mode, e.to_string()),
            };
            rows.push(row);
        }
    }
    LabReport::new(config, rows)
}
