//! `ferry bench` end to end, kept small: each run moves a few thousand
//! records and measures baselines for a few tens of milliseconds.

use std::process::Command;

use serde_json::Value;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// Runs `ferry bench ARGS --json --data-dir DIR` (ARGS split at
/// whitespace) and parses its stdout.
fn bench_json(dir: &std::path::Path, args: &str) -> Value {
    let args: Vec<&str> = args.split_whitespace().collect();
    let out = Command::new(FERRY)
        .arg("bench")
        .args(&args)
        .args(["--json", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ferry bench {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line expected: {stdout}");
    serde_json::from_str(lines[0]).unwrap()
}

fn positive(v: &Value, pointer: &str) -> f64 {
    let x = v
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} missing in {v}"));
    assert!(x > 0.0 && x.is_finite(), "{pointer} = {x} in {v}");
    x
}

#[test]
fn produce_prints_throughput_latency_and_ratios_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let v = bench_json(
        dir.path(),
        "produce --records 2000 --fsync never --baseline-secs 0.05",
    );
    assert_eq!(v["bench"], "produce");
    assert_eq!(v["mode"], "at-least-once");
    assert_eq!(v["fsync"], "never");
    assert_eq!(v["records"], 2000);
    assert_eq!(v["failed"], 0);
    let rps = positive(&v, "/records_per_sec");
    let mbps = positive(&v, "/mb_per_sec");
    assert!((mbps * 1e6 / rps - 100.0).abs() < 1e-6, "{v}");
    assert_eq!(v["latency"]["what"], "send_to_ack");
    assert_eq!(v["latency"]["samples"], 2000);
    for p in ["p50_us", "p99_us", "p999_us", "max_us"] {
        positive(&v, &format!("/latency/{p}"));
    }
    let tcp = positive(&v, "/baseline/loopback_tcp/mb_per_sec");
    let r = positive(&v, "/ratios/loopback_tcp");
    assert!((r - mbps / tcp).abs() < 1e-9 * r.max(1.0), "{v}");
    positive(&v, "/ratios/write");
    // The embedded broker's data dir is gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn baseline_measures_disk_and_loopback_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let v = bench_json(dir.path(), "baseline --baseline-secs 0.05");
    assert_eq!(v["bench"], "baseline");
    positive(&v, "/baseline/write/mb_per_sec");
    positive(&v, "/baseline/fdatasync_4k/ops_per_sec");
    positive(&v, "/baseline/fdatasync_4k/latency/p50_us");
    positive(&v, "/baseline/fdatasync_bulk/mb_per_sec");
    positive(&v, "/baseline/loopback_tcp/mb_per_sec");

    // A saved baseline is reused instead of measured again.
    let saved = dir.path().join("baseline.json");
    std::fs::write(&saved, v.to_string()).unwrap();
    let run = bench_json(
        dir.path(),
        &format!(
            "produce --records 500 --fsync never --mode at-most-once --baseline {}",
            saved.display()
        ),
    );
    assert_eq!(run["baseline"], v["baseline"]);
    assert_eq!(run["records"], 500);
}

#[test]
fn e2e_and_consume_read_every_record() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, what) in [("e2e", "send_to_consume"), ("consume", "poll")] {
        let v = bench_json(
            dir.path(),
            &format!(
                "{kind} --records 3000 --partitions 2 --producers 2 --fsync never --mode idempotent --no-baseline"
            ),
        );
        assert_eq!(v["bench"], kind);
        assert_eq!(v["records"], 3000, "{v}");
        assert_eq!(v["failed"], 0, "{v}");
        assert_eq!(v["latency"]["what"], what);
        positive(&v, "/latency/p50_us");
        assert!(v["ratios"].is_null() && v["baseline"].is_null());
    }
}

#[test]
fn exactly_once_commits_transactions_and_reads_them_committed() {
    let dir = tempfile::tempdir().unwrap();
    let v = bench_json(
        dir.path(),
        "e2e --records 3000 --mode exactly-once --txn-ms 10 --fsync never --no-baseline",
    );
    assert_eq!(v["mode"], "exactly-once");
    assert_eq!(v["txn_ms"], 10);
    assert_eq!(v["records"], 3000, "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    let p = bench_json(
        dir.path(),
        "produce --records 2000 --mode exactly-once --txn-ms 10 --fsync never --no-baseline",
    );
    assert_eq!(p["records"], 2000, "{p}");
    assert_eq!(p["latency"]["what"], "send_to_commit");
}

#[test]
fn matrix_writes_a_table_and_a_chart() {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("chart.svg");
    let v = bench_json(
        dir.path(),
        &format!(
            "matrix --records 1000 --record-sizes 100 --fsync never --modes at-least-once,idempotent --no-baseline --chart {}",
            chart.display()
        ),
    );
    let cells = v["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2, "{v}");
    assert_eq!(cells[0]["mode"], "at-least-once");
    assert_eq!(cells[0]["vs_at_least_once"], 1.0);
    assert_eq!(cells[1]["mode"], "idempotent");
    positive(&cells[1], "/vs_at_least_once");
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
}

#[test]
fn bad_settings_fail_with_one_clear_line() {
    let out = Command::new(FERRY)
        .args(["bench", "e2e", "--record-size", "4", "--no-baseline"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--record-size must be at least 8"), "{err}");
}

#[test]
fn rebalance_measures_each_round_from_the_leave_to_every_partition_consumed_again() {
    let out = Command::new(FERRY)
        .args(["bench", "rebalance", "--members", "2", "--partitions", "3"])
        .args(["--rounds", "2", "--assignors", "range,cooperative-sticky"])
        .args([
            "--session-timeout-ms",
            "1000",
            "--heartbeat-interval-ms",
            "100",
        ])
        .arg("--json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let assignors: Vec<&str> = reports
        .iter()
        .map(|r| r["assignor"].as_str().unwrap())
        .collect();
    assert_eq!(assignors, ["range", "cooperative-sticky"]);
    for r in &reports {
        assert_eq!(r["rounds_ms"].as_array().unwrap().len(), 2, "{r}");
        let median = positive(r, "/median_ms");
        assert!(positive(r, "/min_ms") <= median && median <= positive(r, "/max_ms"));
        let rtt = positive(r, "/rpc_rtt_ms");
        let ratio = positive(r, "/rebalance_per_rtt");
        assert!((ratio - median / rtt).abs() < 1e-6 * ratio.max(1.0), "{r}");
        assert_eq!(r["members"], 2);
        assert_eq!(r["heartbeat_interval_ms"], 100);
    }

    // Bad input is one clear error.
    let out = Command::new(FERRY)
        .args(["bench", "rebalance", "--assignors", "fastest"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fastest"));
}
