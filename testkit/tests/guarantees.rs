//! The guarantee matrix: every delivery mode under every fault
//! class, as proptest cases over the workload ops and the fault schedule,
//! each judged by the history checker's verdict for its mode.
//!
//! - at-most-once never duplicates (nor redelivers); its losses are counted;
//! - at-least-once never loses an acknowledged record; its duplicates are
//!   counted;
//! - idempotent: no stored duplicates and no reordering from producer
//!   retries; redelivery by a crashed consumer is allowed;
//! - exactly-once: no anomaly at all (no loss, duplicate, redelivery,
//!   aborted read, inconsistent offsets).
//!
//! Under `group-rebalance` the consuming side is a consumer group (copiers,
//! for exactly-once) that loses a killed or paused member and gains a new
//! one; those cells run half the cases, since each fault waits out a
//! session timeout or a maximum poll interval.
//!
//! The run prints `FERRY_SEED=<n>` and the matrix. `FERRY_SEED=<n>` repeats
//! a run exactly (same cases, same faults); a failure shrinks to a minimal
//! op and fault sequence, printed with the cell. `FERRY_CELL=mode/fault`
//! runs one cell; `FERRY_CASES=<n>` sets the cases per cell. The longer run
//! is `#[ignore]`d: `cargo test -j2 -p ferry-testkit --test guarantees -- --ignored`.

use std::sync::Mutex;

use ferry_testkit::{DeliveryMode, FaultClass, MatrixRow, RunConfig, WorkOp};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

/// One case: the run's fault seed, and the ops with one fault in the
/// middle (`before`, the fault and 4 more records, `after`).
type Case = (u64, Vec<WorkOp>, u8, Vec<WorkOp>);

fn op(max_records: u8) -> impl Strategy<Value = WorkOp> {
    prop_oneof![
        4 => (1..=max_records, prop::bool::weighted(0.2))
            .prop_map(|(records, abort)| WorkOp::Produce { records, abort }),
        2 => (1u8..=3).prop_map(|steps| WorkOp::Consume { steps }),
        1 => any::<u8>().prop_map(|choice| WorkOp::Fault { class: 0, choice }),
    ]
}

fn case(max_ops: usize, max_records: u8) -> impl Strategy<Value = Case> {
    (
        any::<u64>(),
        prop::collection::vec(op(max_records), 1..=max_ops),
        any::<u8>(),
        prop::collection::vec(op(max_records), 0..=max_ops),
    )
}

fn ops_of((_, before, choice, after): &Case) -> Vec<WorkOp> {
    let mut ops = before.clone();
    ops.push(WorkOp::Fault {
        class: 0,
        choice: *choice,
    });
    // Traffic after the fault, so that armed faults (lost responses, a
    // consumer crash waiting for input) fire.
    ops.push(WorkOp::Produce {
        records: 4,
        abort: false,
    });
    ops.extend(after.iter().copied());
    ops
}

fn show(ops: &[WorkOp]) -> String {
    ops.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn rng_for(seed: u64) -> TestRng {
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&splitmix64(seed ^ (i as u64) << 56).to_le_bytes());
    }
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

/// What a failing cell reports.
struct Failure {
    mode: DeliveryMode,
    fault: FaultClass,
    message: String,
}

/// Runs one cell's cases; returns the row of its last case (rows of all
/// cases summed) or the minimal failing case.
fn run_cell(
    seed: u64,
    mode: DeliveryMode,
    fault: FaultClass,
    cases: u32,
    max_ops: usize,
    max_records: u8,
) -> Result<MatrixRow, Failure> {
    let cell_seed = splitmix64(seed ^ ((mode as u64) << 8 | fault as u64));
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 24,
            max_global_rejects: 0,
            ..Config::default()
        },
        rng_for(cell_seed),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let total: Mutex<Option<MatrixRow>> = Mutex::new(None);
    let result = runner.run(&case(max_ops, max_records), |case| {
        let ops = ops_of(&case);
        let config = RunConfig {
            mode,
            faults: vec![fault],
            seed: case.0,
        };
        let cell = runtime
            .block_on(ferry_testkit::run_embedded(config, &ops))
            .map_err(|e| TestCaseError::fail(format!("the run failed: {e}")))?;
        if !cell.verdict.is_valid() {
            return Err(TestCaseError::fail(format!(
                "{}\n  faults: {}\n  row: {}",
                cell.verdict,
                cell.injected.join("; "),
                cell.row
            )));
        }
        let mut total = total.lock().unwrap();
        let sum = match total.take() {
            None => cell.row,
            Some(t) => MatrixRow {
                records: t.records + cell.row.records,
                lost: t.lost + cell.row.lost,
                duplicated: t.duplicated + cell.row.duplicated,
                redelivered: t.redelivered + cell.row.redelivered,
                aborted_reads: t.aborted_reads + cell.row.aborted_reads,
                other: t.other + cell.row.other,
                faults_injected: t.faults_injected + cell.row.faults_injected,
                ..t
            },
        };
        *total = Some(sum);
        Ok(())
    });
    match result {
        Ok(()) => Ok(total.into_inner().unwrap().expect("at least one case ran")),
        Err(TestError::Fail(reason, minimal)) => Err(Failure {
            mode,
            fault,
            message: format!(
                "{reason}\n  minimal case: run seed {}, ops [{}]",
                minimal.0,
                show(&ops_of(&minimal))
            ),
        }),
        Err(TestError::Abort(reason)) => Err(Failure {
            mode,
            fault,
            message: format!("aborted: {reason}"),
        }),
    }
}

/// Runs every selected cell on two threads, prints the matrix, and fails
/// with every invalid cell's minimal case. The group-rebalance cells run
/// `group_cases` cases: each of their faults waits for a session timeout
/// or a maximum poll interval.
fn matrix(cases: u32, group_cases: u32, max_ops: usize, max_records: u8) {
    let seed = ferry_testkit::seed();
    let forced: Option<u32> = std::env::var("FERRY_CASES")
        .ok()
        .and_then(|s| s.parse().ok());
    let cases = forced.unwrap_or(cases);
    let group_cases = forced.unwrap_or(group_cases);
    let only = std::env::var("FERRY_CELL").ok().filter(|c| !c.is_empty());
    let cells: Vec<(DeliveryMode, FaultClass)> = DeliveryMode::ALL
        .into_iter()
        .flat_map(|m| FaultClass::ALL.into_iter().map(move |f| (m, f)))
        .filter(|(m, f)| {
            only.as_deref()
                .is_none_or(|c| c == format!("{}/{}", m.name(), f.name()))
        })
        .collect();
    assert!(!cells.is_empty(), "FERRY_CELL={only:?} names no cell");
    let queue = Mutex::new(cells.clone());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let Some((mode, fault)) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    let n = if fault == FaultClass::GroupRebalance {
                        group_cases
                    } else {
                        cases
                    };
                    let r = run_cell(seed, mode, fault, n, max_ops, max_records);
                    results.lock().unwrap().push(((mode, fault), r));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|((m, f), _)| (*m as u8, *f));
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for (_, r) in results {
        match r {
            Ok(row) => rows.push(row),
            Err(f) => {
                rows.push(MatrixRow {
                    mode: f.mode,
                    faults: f.fault.name().to_string(),
                    records: 0,
                    lost: 0,
                    duplicated: 0,
                    redelivered: 0,
                    aborted_reads: 0,
                    other: 0,
                    faults_injected: 0,
                    valid: false,
                });
                failures.push(f);
            }
        }
    }
    println!(
        "guarantee matrix (FERRY_SEED={seed}, {cases} cases per cell ({group_cases} for group-rebalance), sums over the cases):\n{}",
        MatrixRow::table(&rows)
    );
    if !failures.is_empty() {
        let text: Vec<String> = failures
            .iter()
            .map(|f| format!("{} × {}: {}", f.mode, f.fault, f.message))
            .collect();
        panic!(
            "FERRY_SEED={seed}: {} cell(s) broke their guarantee:\n{}",
            failures.len(),
            text.join("\n")
        );
    }
}

#[test]
fn every_mode_keeps_its_guarantee_under_every_fault_class() {
    matrix(6, 3, 4, 10);
}

#[test]
#[ignore = "long run: a few minutes per cell"]
fn every_mode_keeps_its_guarantee_under_every_fault_class_long() {
    matrix(24, 24, 12, 40);
}

#[test]
fn fault_class_lists_parse() {
    assert_eq!(
        FaultClass::parse_list("all").unwrap(),
        FaultClass::ALL.to_vec()
    );
    assert_eq!(
        FaultClass::parse_list("torn-tail, broker-kill,torn-tail").unwrap(),
        vec![FaultClass::TornTail, FaultClass::BrokerKill]
    );
    assert_eq!(
        FaultClass::parse_list("group-rebalance").unwrap(),
        vec![FaultClass::GroupRebalance]
    );
    assert!(FaultClass::parse_list("meteor").is_err());
    assert_eq!(
        ferry_testkit::parse_mode("exactly-once").unwrap(),
        DeliveryMode::ExactlyOnce
    );
    assert!(ferry_testkit::parse_mode("twice").is_err());
}
