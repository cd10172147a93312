//! The real `ferry` binary's transactional commands, end to end: `ferry
//! copy` copying exactly once across a `kill -9` of the copier (and of the
//! broker), `ferry produce --transactional-id`, `ferry consume --isolation`
//! and `ferry txn list`.

mod common;

use common::{FERRY, ferry, json_lines, ok};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_testkit::BrokerProcess;

fn start_broker(data_dir: &Path) -> BrokerProcess {
    BrokerProcess::start(FERRY, data_dir, "127.0.0.1:0").expect("start ferry broker")
}

/// Every record of `topic` under `isolation`, as JSON objects.
fn consume(addr: &str, topic: &str, isolation: &str) -> Vec<serde_json::Value> {
    let out = ferry(
        addr,
        &[
            "consume",
            topic,
            "--from",
            "earliest",
            "--isolation",
            isolation,
            "--idle-timeout",
            "1500",
        ],
        None,
    );
    json_lines(&ok(&out).stdout)
}

/// Writes `from..to` to both partitions of `src`: values `p{P}-{i:05}`,
/// keyed `k{i % 13}` except every third, which has no key.
fn produce_source(addr: &str, src: &str, from: usize, to: usize) -> Vec<String> {
    let mut values = Vec::new();
    for p in 0..2 {
        let mut input = String::new();
        for i in from..to {
            let v = format!("p{p}-{i:05}");
            if i % 3 == 0 {
                input.push_str(&format!("{v}\n"));
            } else {
                input.push_str(&format!("k{}|{v}\n", i % 13));
            }
            values.push(v);
        }
        ok(&ferry(
            addr,
            &[
                "produce",
                src,
                "--partition",
                &p.to_string(),
                "--key-separator",
                "|",
                "--batch-bytes",
                "2048",
            ],
            Some(&input),
        ));
    }
    values
}

fn spawn_copier(addr: &str, extra: &[&str]) -> Child {
    Command::new(FERRY)
        .args([
            "copy",
            "src",
            "dst",
            "--group",
            "copier",
            "--transactional-id",
            "copier-1",
            "--txn-records",
            "100",
            "--txn-ms",
            "20",
        ])
        .args(extra)
        .args(["--broker", addr])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Sum of the high watermarks of `topic`'s partitions.
fn log_end(addr: &str, topic: &str) -> u64 {
    let out = ferry(addr, &["topic", "describe", topic], None);
    let d: serde_json::Value = serde_json::from_slice(&ok(&out).stdout).unwrap();
    d["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["high_watermark"].as_u64().unwrap())
        .sum()
}

fn wait_for_output(addr: &str, topic: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while log_end(addr, topic) < at_least {
        assert!(Instant::now() < deadline, "no output in {topic} after 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `dst` under read_committed holds each value of `input` exactly once,
/// keyed records on the partition their key hashes to, and within each
/// destination partition every source partition's records in source order.
fn check_copy(addr: &str, input: &[String]) {
    let out = consume(addr, "dst", "read-committed");
    let mut got: Vec<String> = out
        .iter()
        .map(|r| r["value"].as_str().unwrap().to_string())
        .collect();
    let mut want = input.to_vec();
    got.sort();
    want.sort();
    let dups = got.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(dups, 0, "duplicates in the copy");
    assert_eq!(got.len(), want.len(), "records lost or added");
    assert_eq!(got, want);
    let mut last: HashMap<(u64, String), String> = HashMap::new();
    for r in &out {
        let v = r["value"].as_str().unwrap().to_string();
        let src = v[..2].to_string();
        let partition = r["partition"].as_u64().unwrap();
        if let Some(prev) = last.insert((partition, src.clone()), v.clone()) {
            assert!(
                prev < v,
                "{src} out of order in dst/{partition}: {prev} then {v}"
            );
        }
        match r["key"].as_str() {
            Some(k) => assert_eq!(
                u64::from(ferry_client::partitioner::partition_for_key(
                    k.as_bytes(),
                    3
                )),
                partition,
                "{v} with key {k} on the wrong partition"
            ),
            None => assert_eq!(
                src[1..].parse::<u64>().unwrap() % 3,
                partition,
                "keyless {v} not on its source partition"
            ),
        }
    }
}

#[test]
fn the_copier_copies_exactly_once_across_a_kill_9_of_itself() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&dir.path().join("data"));
    let addr = broker.addr().to_string();
    ok(&ferry(
        &addr,
        &["topic", "create", "src", "--partitions", "2"],
        None,
    ));
    ok(&ferry(
        &addr,
        &["topic", "create", "dst", "--partitions", "3"],
        None,
    ));

    let mut input = produce_source(&addr, "src", 0, 1000);
    let mut copier = spawn_copier(&addr, &[]);
    wait_for_output(&addr, "dst", 1);
    // More input arrives while the copier runs; it dies mid-way.
    input.extend(produce_source(&addr, "src", 1000, 1500));
    copier.kill().unwrap();
    copier.wait().unwrap();
    input.extend(produce_source(&addr, "src", 1500, 2000));

    // The restarted copier resumes from the committed offsets.
    let out = spawn_copier(&addr, &["--idle-timeout", "1500"])
        .wait_with_output()
        .unwrap();
    ok(&out);
    let summary = json_lines(&out.stdout).pop().expect("a summary line");
    assert!(summary["copied"].as_u64().unwrap() > 0, "{summary}");
    assert!(summary["transactions"].as_u64().unwrap() >= 1, "{summary}");
    check_copy(&addr, &input);

    // The aborted transactions of the killed copier are visible only to
    // read_uncommitted readers, if it left any.
    let all = consume(&addr, "dst", "read-uncommitted");
    assert!(all.len() >= input.len());

    // Nothing new: a third run copies nothing and still exits 0.
    let out = spawn_copier(&addr, &["--idle-timeout", "500"])
        .wait_with_output()
        .unwrap();
    let summary = json_lines(&ok(&out).stdout).pop().unwrap();
    assert_eq!(summary["copied"], 0);
    broker.sigterm().ok();
}

#[test]
fn the_copier_copies_exactly_once_across_a_kill_9_of_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&dir.path().join("data"));
    let addr = broker.addr().to_string();
    ok(&ferry(
        &addr,
        &["topic", "create", "src", "--partitions", "2"],
        None,
    ));
    ok(&ferry(
        &addr,
        &["topic", "create", "dst", "--partitions", "3"],
        None,
    ));
    let mut input = produce_source(&addr, "src", 0, 1500);

    let copier = spawn_copier(&addr, &["--idle-timeout", "3000"]);
    wait_for_output(&addr, "dst", 1);
    // Same address after the restart; the copier's RPCs retry meanwhile.
    let broker = broker.kill9_and_restart().unwrap();
    input.extend(produce_source(&addr, "src", 1500, 2000));
    let out = copier.wait_with_output().unwrap();
    if !out.status.success() {
        // The copier may stop on an error it cannot ride out (its
        // transaction timed out, say); a restart resumes exactly once.
        let out = spawn_copier(&addr, &["--idle-timeout", "1500"])
            .wait_with_output()
            .unwrap();
        ok(&out);
    }
    check_copy(&addr, &input);
    broker.sigterm().ok();
}

#[test]
fn transactional_produce_commits_every_n_lines_and_txn_list_shows_the_id() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&dir.path().join("data"));
    let addr = broker.addr().to_string();
    ok(&ferry(
        &addr,
        &["topic", "create", "tx", "--partitions", "2"],
        None,
    ));
    let input: String = (0..25).map(|i| format!("k{i}:v{i}\n")).collect();
    let out = ferry(
        &addr,
        &[
            "produce",
            "tx",
            "--key-separator",
            ":",
            "--transactional-id",
            "cli-producer",
            "--txn-records",
            "10",
        ],
        Some(&input),
    );
    let summary = json_lines(&ok(&out).stdout).pop().unwrap();
    assert_eq!(
        summary,
        serde_json::json!({"sent": 25, "acked": 25, "failed": 0})
    );
    let committed = consume(&addr, "tx", "read-committed");
    assert_eq!(committed.len(), 25);
    assert!(
        committed
            .iter()
            .all(|r| r["key"].as_str().unwrap().starts_with('k'))
    );
    assert_eq!(consume(&addr, "tx", "read-uncommitted").len(), 25);

    let out = ferry(&addr, &["txn", "list"], None);
    let listed = json_lines(&ok(&out).stdout);
    let mine = listed
        .iter()
        .find(|t| t["transactional_id"] == "cli-producer")
        .expect("the id is listed");
    for field in [
        "producer_id",
        "producer_epoch",
        "state",
        "partitions",
        "groups",
        "hanging",
    ] {
        assert!(mine.get(field).is_some(), "{field} missing from {mine}");
    }
    // Three transactions (10, 10, 5): InitProducerId plus one bump each.
    assert_eq!(mine["producer_epoch"], 3, "{mine}");

    // Nothing is open, so a manual abort is refused with a one-line error.
    let out = ferry(&addr, &["txn", "abort", "cli-producer"], None);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );

    // A transactional producer needs acks=all.
    let out = ferry(
        &addr,
        &[
            "produce",
            "tx",
            "--acks",
            "leader",
            "--transactional-id",
            "x",
        ],
        Some("v\n"),
    );
    assert!(!out.status.success());
    // --txn-records needs --transactional-id.
    let out = ferry(&addr, &["produce", "tx", "--txn-records", "5"], Some("v\n"));
    assert!(!out.status.success());
    broker.sigterm().ok();
}

#[test]
fn a_failing_transactional_produce_counts_its_records_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&dir.path().join("data"));
    let addr = broker.addr().to_string();
    ok(&ferry(
        &addr,
        &["topic", "create", "tx", "--partitions", "1"],
        None,
    ));
    let out = ferry(
        &addr,
        &[
            "produce",
            "tx",
            "--partition",
            "3",
            "--transactional-id",
            "p",
        ],
        Some("a\nb\n"),
    );
    assert!(!out.status.success());
    let summary = json_lines(&out.stdout).pop().unwrap();
    assert_eq!(summary["acked"], 0, "{summary}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(consume(&addr, "tx", "read-uncommitted").is_empty());
    broker.sigterm().ok();
}
