//! `ferry group list|describe|delete|reset-offsets` against the real
//! broker binary.

mod common;

use std::process::Output;

use common::{FERRY, consume_from_earliest, create_topic, ferry, json_lines, ok};
use ferry_proto::{ErrorCode, v1};
use ferry_testkit::BrokerProcess;
use serde_json::{Value, json};

/// A broker whose first rebalance does not wait for more members.
fn start_broker(dir: &tempfile::TempDir) -> BrokerProcess {
    BrokerProcess::start_with_args(
        FERRY,
        dir.path().join("data"),
        "127.0.0.1:0",
        [
            "--group-initial-rebalance-delay-ms",
            "0",
            "--group-min-session-timeout-ms",
            "500",
        ],
    )
    .expect("start ferry broker")
}

/// Produces `n` records to one partition of `topic`.
fn produce(addr: &str, topic: &str, partition: u32, n: usize) {
    let input: String = (0..n).map(|i| format!("v{i}\n")).collect();
    let out = ferry(
        addr,
        &["produce", topic, "--partition", &partition.to_string()],
        Some(&input),
    );
    assert_eq!(json_lines(&ok(&out).stdout).pop().unwrap()["acked"], n);
}

/// `ferry group describe GROUP`, required to succeed, as its one object.
fn describe(addr: &str, group: &str) -> Value {
    let out = ferry(addr, &["group", "describe", group], None);
    let mut lines = json_lines(&ok(&out).stdout);
    assert_eq!(lines.len(), 1, "one JSON object");
    lines.pop().unwrap()
}

/// The `offsets` of a describe as (partition, committed, log_end, lag).
fn offsets(described: &Value) -> Vec<(u64, u64, u64, u64)> {
    described["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["partition"].as_u64().unwrap(),
                o["committed"].as_u64().unwrap(),
                o["log_end"].as_u64().unwrap(),
                o["lag"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Asserts a failure: exit 1 and exactly one line on stderr, containing
/// `needle`. Nothing on stdout.
fn fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one error line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn reset(addr: &str, group: &str, topic: &str, extra: &[&str]) -> Output {
    let mut args = vec!["group", "reset-offsets", group, "--topic", topic];
    args.extend_from_slice(extra);
    ferry(addr, &args, None)
}

/// A topic `t` of two partitions holding 5 and 3 records, read to its end
/// by group `g`, one partition at a time with `--partition` (manual
/// assignment: simple commits, no membership).
fn consumed_by_g(addr: &str) {
    create_topic(addr, "t", 2);
    produce(addr, "t", 0, 5);
    produce(addr, "t", 1, 3);
    let mut read = 0;
    for p in ["0", "1"] {
        let args = ["--group", "g", "--partition", p, "--exit-at-end"];
        read += consume_from_earliest(addr, "t", &args).len();
    }
    assert_eq!(read, 8);
}

#[test]
fn two_consumers_in_a_group_split_the_partitions_and_leave_when_they_exit() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&dir);
    let addr = broker.addr();
    create_topic(addr, "split", 4);
    let spawn = || {
        std::process::Command::new(FERRY)
            .args(["consume", "split", "--group", "pair", "--from", "earliest"])
            // Heartbeats every 333 ms: the first member learns of the
            // second's join long before its idle timeout.
            .args(["--session-timeout-ms", "1000", "--idle-timeout", "4000"])
            .args(["--broker", addr])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    // Both members hold two partitions before any record arrives.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = ferry(addr, &["group", "describe", "pair"], None);
        // Not there until the first member joins.
        let d = json_lines(&out.stdout).pop().unwrap_or_default();
        let members = d["members"].as_array().cloned().unwrap_or_default();
        let split = members.len() == 2
            && members
                .iter()
                .all(|m| m["assignment"][0]["partitions"].as_array().map(Vec::len) == Some(2));
        if d["state"] == "stable" && split {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never split: {d}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for p in 0..4 {
        produce(addr, "split", p, 25);
    }
    let mut seen = std::collections::BTreeMap::<u64, std::collections::BTreeSet<String>>::new();
    let mut mine = Vec::new();
    for child in [first, second] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let lines = json_lines(&out.stdout);
        let partitions: std::collections::BTreeSet<u64> = lines
            .iter()
            .map(|r| r["partition"].as_u64().unwrap())
            .collect();
        for r in &lines {
            let value = r["value"].as_str().unwrap().to_owned();
            let fresh = seen
                .entry(r["partition"].as_u64().unwrap())
                .or_default()
                .insert(value);
            assert!(fresh, "a record was printed twice: {r}");
        }
        mine.push(partitions);
    }
    assert_eq!(mine[0].len(), 2, "{mine:?}");
    assert!(mine[0].is_disjoint(&mine[1]), "{mine:?}");
    assert!(seen.values().all(|values| values.len() == 25), "{seen:?}");
    // Both left the group on exit.
    let d = describe(addr, "pair");
    assert_eq!(d["members"], json!([]));
    assert_eq!(d["state"], "empty");
}

#[test]
fn group_list_on_a_fresh_broker_prints_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&dir);
    let out = ferry(broker.addr(), &["group", "list"], None);
    assert!(ok(&out).stdout.is_empty());
}

#[test]
fn describe_shows_committed_offsets_log_end_and_lag_and_lag_grows_with_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&dir);
    let addr = broker.addr();
    consumed_by_g(addr);

    let d = describe(addr, "g");
    assert_eq!(d["group"], "g");
    // A group with offsets only: empty, never rebalanced, no members.
    assert_eq!(d["state"], "empty");
    assert_eq!(d["generation"], 0);
    assert_eq!(d["protocol"], "");
    assert_eq!(d["members"], json!([]));
    assert_eq!(d["offsets"][0]["topic"], "t");
    assert_eq!(offsets(&d), vec![(0, 5, 5, 0), (1, 3, 3, 0)]);

    produce(addr, "t", 0, 4);
    produce(addr, "t", 1, 1);
    assert_eq!(
        offsets(&describe(addr, "g")),
        vec![(0, 5, 9, 4), (1, 3, 4, 1)]
    );

    // ListGroups lists groups that have only committed offsets, as empty.
    let out = ferry(addr, &["group", "list"], None);
    assert_eq!(
        json_lines(&ok(&out).stdout),
        vec![json!({"group": "g", "state": "empty", "members": 0})]
    );
}

#[test]
fn reset_offsets_moves_the_committed_offsets_to_earliest_latest_or_one_offset() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&dir);
    let addr = broker.addr();
    consumed_by_g(addr);

    let out = reset(addr, "g", "t", &["--to", "earliest"]);
    assert_eq!(
        json_lines(&ok(&out).stdout),
        vec![
            json!({"topic": "t", "partition": 0, "offset": 0}),
            json!({"topic": "t", "partition": 1, "offset": 0}),
        ]
    );
    assert_eq!(
        offsets(&describe(addr, "g")),
        vec![(0, 0, 5, 5), (1, 0, 3, 3)]
    );

    ok(&reset(addr, "g", "t", &["--to", "latest"]));
    assert_eq!(
        offsets(&describe(addr, "g")),
        vec![(0, 5, 5, 0), (1, 3, 3, 0)]
    );

    let out = reset(addr, "g", "t", &["--to", "3", "--partition", "0"]);
    assert_eq!(
        json_lines(&ok(&out).stdout),
        vec![json!({"topic": "t", "partition": 0, "offset": 3})]
    );
    assert_eq!(
        offsets(&describe(addr, "g")),
        vec![(0, 3, 5, 2), (1, 3, 3, 0)]
    );

    // A consumer from the committed offsets starts where the reset put it.
    let out = ferry(
        addr,
        &[
            "consume",
            "t",
            "--group",
            "g",
            "--from",
            "committed",
            "--exit-at-end",
        ],
        None,
    );
    let read = json_lines(&ok(&out).stdout);
    let p0: Vec<_> = read.iter().filter(|r| r["partition"] == 0).collect();
    assert_eq!(p0.len(), 2);
    assert_eq!(p0[0]["offset"], 3);
}

#[test]
fn reset_offsets_of_a_new_group_creates_its_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&dir);
    let addr = broker.addr();
    create_topic(addr, "t", 1);
    produce(addr, "t", 0, 2);
    ok(&reset(addr, "fresh", "t", &["--to", "latest"]));
    assert_eq!(offsets(&describe(addr, "fresh")), vec![(0, 2, 2, 0)]);
}

#[test]
fn delete_removes_the_group_and_its_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&dir);
    let addr = broker.addr();
    consumed_by_g(addr);

    ok(&ferry(addr, &["group", "delete", "g"], None));
    fails_with(
        &ferry(addr, &["group", "describe", "g"], None),
        "group_id_not_found",
    );
    assert!(ok(&ferry(addr, &["group", "list"], None)).stdout.is_empty());
    fails_with(
        &ferry(addr, &["group", "delete", "g"], None),
        "group_id_not_found",
    );
}

#[test]
fn bad_to_values_unknown_groups_and_out_of_range_resets_fail_with_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&dir);
    let addr = broker.addr();
    consumed_by_g(addr);

    for bad in ["soon", "-1", "1.5", ""] {
        fails_with(&reset(addr, "g", "t", &["--to", bad]), "--to must be");
    }
    fails_with(
        &reset(addr, "g", "t", &["--to", "6", "--partition", "0"]),
        "outside partition 0",
    );
    fails_with(
        &reset(addr, "g", "t", &["--to", "4"]),
        "outside partition 1",
    );
    fails_with(
        &reset(addr, "g", "t", &["--to", "0", "--partition", "2"]),
        "no partition 2",
    );
    fails_with(
        &reset(addr, "g", "nope", &["--to", "earliest"]),
        "unknown_topic_or_partition",
    );
    // None of the refused resets changed anything.
    assert_eq!(
        offsets(&describe(addr, "g")),
        vec![(0, 5, 5, 0), (1, 3, 3, 0)]
    );

    fails_with(
        &ferry(addr, &["group", "describe", "nope"], None),
        "group_id_not_found",
    );
    fails_with(
        &ferry(addr, &["group", "delete", "nope"], None),
        "group_id_not_found",
    );
}

/// Joins `group` through the raw gRPC client as its only member and syncs
/// an assignment of `topic` partition 0 to itself; returns the member id.
async fn join_one_member(addr: &str, group: &str, topic: &str) -> String {
    let client = ferry_client::Client::connect(addr).await.unwrap();
    let mut raw = client.raw();
    let join = |member_id: &str| v1::JoinGroupRequest {
        group: group.to_owned(),
        member_id: member_id.to_owned(),
        session_timeout_ms: 60_000,
        rebalance_timeout_ms: 60_000,
        protocol_type: "consumer".to_owned(),
        protocols: vec![v1::GroupProtocol {
            name: "range".to_owned(),
            metadata: Vec::new().into(),
        }],
        client_id: "group-cli-test".to_owned(),
        ..Default::default()
    };
    let first = raw.join_group(join("")).await.unwrap().into_inner();
    assert_eq!(first.error_code, ErrorCode::MemberIdRequired.as_u32());
    let joined = raw
        .join_group(join(&first.member_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(joined.error_code, 0, "{}", joined.error_message);
    // ConsumerProtocolAssignment v1: [topic: [0]], null user data.
    let mut assignment = 1i16.to_be_bytes().to_vec();
    assignment.extend_from_slice(&1i32.to_be_bytes());
    assignment.extend_from_slice(&(topic.len() as i16).to_be_bytes());
    assignment.extend_from_slice(topic.as_bytes());
    assignment.extend_from_slice(&1i32.to_be_bytes());
    assignment.extend_from_slice(&0i32.to_be_bytes());
    assignment.extend_from_slice(&(-1i32).to_be_bytes());
    let synced = raw
        .sync_group(v1::SyncGroupRequest {
            group: group.to_owned(),
            generation_id: joined.generation_id,
            member_id: joined.member_id.clone(),
            assignments: vec![v1::SyncGroupAssignment {
                member_id: joined.member_id.clone(),
                assignment: assignment.into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(synced.error_code, 0, "{}", synced.error_message);
    joined.member_id
}

#[test]
fn a_group_with_a_member_shows_it_and_refuses_delete_and_reset() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&dir);
    let addr = broker.addr();
    consumed_by_g(addr);
    let member_id = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(join_one_member(addr, "g", "t"));

    let d = describe(addr, "g");
    assert_eq!(d["state"], "stable");
    assert_eq!(d["generation"], 1);
    assert_eq!(d["protocol"], "range");
    assert_eq!(
        d["members"],
        json!([{
            "member_id": member_id,
            "instance_id": null,
            "host": "127.0.0.1",
            "assignment": [{"topic": "t", "partitions": [0]}],
            "assignment_undecodable": false,
        }])
    );
    // The offsets committed before it joined are still shown.
    assert_eq!(offsets(&d), vec![(0, 5, 5, 0), (1, 3, 3, 0)]);
    let out = ferry(addr, &["group", "list"], None);
    assert_eq!(
        json_lines(&ok(&out).stdout),
        vec![json!({"group": "g", "state": "stable", "members": 1})]
    );

    fails_with(
        &ferry(addr, &["group", "delete", "g"], None),
        "non_empty_group",
    );
    fails_with(
        &reset(addr, "g", "t", &["--to", "earliest"]),
        "has 1 member(s)",
    );
    assert_eq!(
        offsets(&describe(addr, "g")),
        vec![(0, 5, 5, 0), (1, 3, 3, 0)]
    );
}
