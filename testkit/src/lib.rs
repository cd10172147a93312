//! A fault-injection kit for stress-testing Ferry, and pipelines built on
//! it, under crashes, lost acknowledgements and retries.
//!
//! The pieces, each usable alone:
//!
//! - [`FaultProxy`]: a gRPC proxy between client and broker that drops
//!   requests, drops responses after the broker applied them (lost acks),
//!   delays, duplicates and disconnects, from a seeded [`FaultPlan`].
//! - Broker crash control: [`BrokerProcess`] runs the real `ferry broker`
//!   binary and `kill -9`s it; [`crash_and_tear`] crashes an
//!   [`EmbeddedBroker`](ferry_broker::EmbeddedBroker) in-process and damages the
//!   tail of every partition log past its durable data before the restart;
//!   [`tear_tails`] does the damage alone, for any stopped broker's data
//!   directory.
//! - Consumer crash points: [`CrashingConsumer`] drops its consumer without
//!   committing after the poll, after processing, after the sink write or
//!   just before the commit, as a seeded [`CrashSchedule`] says.
//! - [`History`]: a thread-safe recorder of every operation (invoke, then
//!   ok / fail / info) with unique values from [`ValueGen`];
//!   [`RecordingProducer`] records a producer's sends for you.
//! - [`check`]: the history checker, after Jepsen's Kafka queue checker,
//!   with a per-[`DeliveryMode`] [`Verdict`].
//! - The guarantee matrix ([`matrix`]): a [`Run`] of [`WorkOp`]s per
//!   delivery mode under chosen [`FaultClass`]es, ending in a [`MatrixRow`];
//!   the root `testkit/tests/guarantees.rs` and `ferry torture` drive it.
//!
//! Every random choice comes from a seed; [`seed`] reads it from the
//! `FERRY_SEED` environment variable (or picks one) and prints it, so a
//! failing run can be repeated exactly. See `docs/testing.md` for a walk
//! through a complete test.
//!
//! [`pki`] writes throwaway certificates for the TLS tests.
//!
//! The kit lives in the `ferry` crate only; the broker and client crates
//! never compile it.

pub mod checker;
pub mod crash;
pub mod history;
pub mod matrix;
pub mod pki;
pub mod postgres;
pub mod proxy;
pub mod workload;

pub use checker::{
    Anomaly, AnomalyKind, CheckOptions, DeliveryMode, Forbids, Report, Stats, Verdict, check,
};
pub use crash::{
    BrokerProcess, DurableFloors, TailDamage, TearReport, TornLog, crash_and_tear, durable_floors,
    tear_tails,
};
pub use history::{
    History, Invocation, Mop, Op, OpKind, OpType, ProcessId, Read, Tp, Value, ValueGen,
};
pub use matrix::{
    BrokerUnderTest, CellReport, FaultClass, MatrixRow, Run, RunConfig, WorkOp, parse_mode,
    run_embedded,
};
pub use postgres::{PostgresError, PostgresOptions, TempPostgres};
pub use proxy::{
    Fault, FaultKind, FaultPlan, FaultProxy, FaultStats, InjectedFault, RpcKind, Targets,
};
pub use workload::{
    ConsumerStep, CrashPoint, CrashSchedule, CrashingConsumer, PATIENCE, RecordingProducer,
    decode_reads, drain, is_fenced, patiently,
};

/// Environment variable holding the seed of a run.
pub const SEED_VAR: &str = "FERRY_SEED";

/// The run's seed: `FERRY_SEED` if set (decimal), else a fresh random one.
/// Prints `FERRY_SEED=<seed>` to stderr either way, so that the test output
/// says how to repeat the run.
///
/// # Panics
/// If `FERRY_SEED` is set but not a number.
pub fn seed() -> u64 {
    let seed = match std::env::var(SEED_VAR) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_VAR}={s:?} is not a u64")),
        Err(_) => rand::random(),
    };
    eprintln!("{SEED_VAR}={seed}");
    seed
}
