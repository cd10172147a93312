//! The real `ferry` binary, end to end: broker, topic admin, produce and
//! consume, and a `kill -9` of the broker with a restart in between.

mod common;

use common::{FERRY, consume_from_earliest, ferry, json_lines};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use ferry_testkit::BrokerProcess;
use std::time::Duration;

/// The real broker binary as a subprocess that can be `kill -9`ed.
fn start_broker(data_dir: &Path, listen: &str) -> BrokerProcess {
    BrokerProcess::start(FERRY, data_dir, listen).expect("start ferry broker")
}

/// `ferry broker` on free ports (gRPC, Kafka and HTTP), before
/// `--data-dir DIR`.
const EPHEMERAL_BROKER: &[&str] = &[
    "broker",
    "--listen",
    "127.0.0.1:0",
    "--kafka-listen",
    "127.0.0.1:0",
    "--http-listen",
    "127.0.0.1:0",
    "--data-dir",
];

#[test]
fn every_acked_record_survives_a_kill_9_of_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = start_broker(&data, "127.0.0.1:0");
    let out = ferry(
        broker.addr(),
        &["topic", "create", "t", "--partitions", "3"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let n = 5000;
    let input: String = (0..n).map(|i| format!("k{}:v{i}\n", i % 11)).collect();
    let out = ferry(
        broker.addr(),
        &["produce", "t", "--key-separator", ":", "--acks", "all"],
        Some(&input),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = json_lines(&out.stdout).pop().unwrap();
    assert_eq!(summary["acked"], n);

    broker.kill9().unwrap();
    let broker = start_broker(&data, "127.0.0.1:0");
    let rows = consume_from_earliest(broker.addr(), "t", &[]);
    let mut values: Vec<String> = rows
        .iter()
        .map(|r| r["value"].as_str().unwrap().to_string())
        .collect();
    values.sort();
    let mut expected: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
    expected.sort();
    assert_eq!(
        values, expected,
        "every acked record, exactly once (nothing was retried)"
    );
    for r in &rows {
        let i: u64 = r["value"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(r["key"], format!("k{}", i % 11));
    }
    // Per partition, offsets are dense and values keep their input order.
    for p in 0..3 {
        let mine: Vec<_> = rows.iter().filter(|r| r["partition"] == p).collect();
        for (i, r) in mine.iter().enumerate() {
            assert_eq!(r["offset"], i as u64, "partition {p} offsets are dense");
        }
        let order: Vec<u64> = mine
            .iter()
            .map(|r| r["value"].as_str().unwrap()[1..].parse().unwrap())
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "partition {p} keeps input order"
        );
    }
    assert!(
        broker.sigterm().unwrap().success(),
        "SIGTERM stops the broker cleanly"
    );
}

#[test]
fn a_producer_rides_through_a_broker_kill_9_and_restart_without_losing_acked_records() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = start_broker(&data, "127.0.0.1:0");
    let addr = broker.addr().to_string();
    assert!(
        ferry(&addr, &["topic", "create", "t"], None)
            .status
            .success()
    );

    // Feed lines slowly enough that the kill lands mid-stream.
    let n = 3000;
    let mut producer = Command::new(FERRY)
        .args([
            "produce",
            "t",
            "--acks",
            "all",
            "--delivery-timeout",
            "60",
            "--broker",
            &addr,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = producer.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        for i in 0..n {
            writeln!(stdin, "v{i}").unwrap();
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(250));
    broker.kill9().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let broker = start_broker(&data, &addr);
    feeder.join().unwrap();
    let out = producer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "producer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json_lines(&out.stdout).pop().unwrap()["acked"], n);

    let mut seen: Vec<u64> = consume_from_earliest(broker.addr(), "t", &[])
        .iter()
        .map(|r| r["value"].as_str().unwrap()[1..].parse().unwrap())
        .collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen,
        (0..n).collect::<Vec<u64>>(),
        "at-least-once: every acked record is present"
    );
}

#[test]
fn bad_flags_unknown_topics_and_a_dead_broker_exit_non_zero_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&dir.path().join("d"), "127.0.0.1:0");
    let out = ferry(
        broker.addr(),
        &["produce", "t", "--acks", "sometimes"],
        Some("x\n"),
    );
    assert!(!out.status.success());
    let out = ferry(
        broker.addr(),
        &["consume", "missing", "--idle-timeout", "500"],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("missing"), "{err}");
    let out = ferry(
        broker.addr(),
        &["consume", "missing", "--commit", "after"],
        None,
    );
    assert!(
        !out.status.success(),
        "--commit after without --group is refused"
    );
    drop(broker);
    let out = ferry("127.0.0.1:1", &["topic", "list"], None);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
}

#[test]
fn topic_configs_given_at_creation_are_described_and_bad_ones_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&dir.path().join("d"), "127.0.0.1:0");
    common::ok(&ferry(
        broker.addr(),
        &[
            "topic",
            "create",
            "table",
            "--config",
            "cleanup.policy=compact",
            "--config",
            "segment.bytes=65536",
            "--config",
            "delete.retention.ms=100",
        ],
        None,
    ));
    let out = ferry(broker.addr(), &["topic", "describe", "table"], None);
    let d = &json_lines(&common::ok(&out).stdout)[0];
    assert_eq!(d["configs"]["cleanup.policy"], "compact", "{d}");
    assert_eq!(d["configs"]["segment.bytes"], "65536", "{d}");
    assert_eq!(d["configs"]["delete.retention.ms"], "100", "{d}");
    assert_eq!(d["configs"]["min.cleanable.dirty.ratio"], "0.5", "{d}");
    for (bad, says) in [
        ("cleanup.policy=compacted", "compact,delete"),
        ("retention.typo=1", "unknown topic config"),
        ("segment.bytes=12", "byte count"),
        ("no-equals-sign", "KEY=VALUE"),
    ] {
        let out = ferry(
            broker.addr(),
            &["topic", "create", "bad", "--config", bad],
            None,
        );
        assert!(!out.status.success(), "{bad} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.lines().next().unwrap_or("").contains(says),
            "{bad}: {err}"
        );
    }
    let out = ferry(broker.addr(), &["topic", "list"], None);
    let listed = String::from_utf8_lossy(&common::ok(&out).stdout).to_string();
    assert!(!listed.contains("bad"), "{listed}");
}

#[test]
fn a_second_broker_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let _first = start_broker(&data, "127.0.0.1:0");
    let out = Command::new(FERRY)
        .args(EPHEMERAL_BROKER)
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
}

/// With no authentication configured, a broker asked to listen beyond
/// loopback refuses before it binds or creates anything, and says how to
/// insist.
#[test]
fn a_broker_without_authentication_refuses_a_non_loopback_listener() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, addr) in [
        ("--listen", "0.0.0.0:0"),
        ("--kafka-listen", "0.0.0.0:0"),
        ("--http-listen", "0.0.0.0:0"),
    ] {
        let data = dir.path().join(flag.trim_start_matches('-'));
        let mut cmd = Command::new(FERRY);
        cmd.args(["broker", "--data-dir"]).arg(&data);
        for loopback in ["--listen", "--kafka-listen", "--http-listen"] {
            if loopback != flag {
                cmd.args([loopback, "127.0.0.1:0"]);
            }
        }
        let out = cmd.args([flag, addr]).output().unwrap();
        assert!(!out.status.success(), "{flag} {addr} was served");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("{flag} {addr}")), "{err}");
        assert!(err.contains("--allow-anonymous"), "{err}");
        assert!(
            !data.exists(),
            "the refused broker created {}",
            data.display()
        );
    }
}

/// Runs `ferry ARGS --broker ADDR` and fails the test if it has not exited
/// within `limit`.
fn ferry_within(addr: &str, args: &[&str], limit: Duration) -> std::process::Output {
    let child = Command::new(FERRY)
        .args(args)
        .args(["--broker", addr])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for ferry"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("ferry {args:?} did not exit within {limit:?}");
        }
    }
}

#[test]
fn consume_exit_at_end_exits_once_caught_up_and_stops_at_the_last_stable_offset() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&dir.path().join("d"), "127.0.0.1:0");
    let addr = broker.addr().to_string();
    let limit = Duration::from_secs(30);
    common::create_topic(&addr, "t", 3);
    let input: String = (0..50).map(|i| format!("k{i}:v{i}\n")).collect();
    common::ok(&ferry(
        &addr,
        &["produce", "t", "--key-separator", ":"],
        Some(&input),
    ));

    // No idle timeout: only reaching the end ends it.
    let out = ferry_within(
        &addr,
        &["consume", "t", "--from", "earliest", "--exit-at-end"],
        limit,
    );
    assert_eq!(json_lines(&common::ok(&out).stdout).len(), 50);

    // An empty topic is at its end at once.
    common::create_topic(&addr, "empty", 2);
    let out = ferry_within(&addr, &["consume", "empty", "--exit-at-end"], limit);
    assert!(json_lines(&common::ok(&out).stdout).is_empty());

    // A committed transaction is read; under read-committed the end is the
    // last stable offset, so with the records above it stays the same.
    common::ok(&ferry(
        &addr,
        &[
            "produce",
            "t",
            "--partition",
            "0",
            "--transactional-id",
            "eot",
        ],
        Some("t1\nt2\n"),
    ));
    let out = ferry_within(
        &addr,
        &["consume", "t", "--from", "earliest", "--exit-at-end"],
        limit,
    );
    assert_eq!(json_lines(&common::ok(&out).stdout).len(), 52);
    broker.sigterm().ok();
}

#[test]
fn consume_from_a_time_starts_at_the_first_record_at_or_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(&dir.path().join("d"), "127.0.0.1:0");
    let addr = broker.addr().to_string();
    let limit = Duration::from_secs(30);
    common::create_topic(&addr, "t", 1);
    for ts in ["1000", "2000", "3000"] {
        let input: String = (0..3).map(|i| format!("{ts}-{i}\n")).collect();
        common::ok(&ferry(
            &addr,
            &["produce", "t", "--timestamp", ts],
            Some(&input),
        ));
    }
    let values_from = |from: &str| -> Vec<String> {
        let out = ferry_within(
            &addr,
            &["consume", "t", "--from", from, "--exit-at-end"],
            limit,
        );
        json_lines(&common::ok(&out).stdout)
            .iter()
            .map(|r| r["value"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        values_from("2000"),
        ["2000-0", "2000-1", "2000-2", "3000-0", "3000-1", "3000-2"]
    );
    assert_eq!(
        values_from("1970-01-01T00:00:02.5Z"),
        ["3000-0", "3000-1", "3000-2"]
    );
    assert_eq!(values_from("0").len(), 9);
    assert!(values_from("3001").is_empty());
    let out = ferry_within(&addr, &["consume", "t", "--from", "yesterday"], limit);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RFC 3339"), "{err}");
    broker.sigterm().ok();
}

#[test]
fn broker_logs_to_a_pipe_are_plain_text_and_a_fresh_start_and_restart_warn_of_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = |data: &Path, topic: &str| {
        let mut child = Command::new(FERRY)
            .args(EPHEMERAL_BROKER)
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        let addr = line.trim().rsplit(' ').next().unwrap().to_string();
        assert!(line.contains("listening on"), "{line}");
        common::create_topic(&addr, topic, 2);
        common::ok(&ferry(&addr, &["produce", topic], Some("a\nb\n")));
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stderr).unwrap()
    };
    let first = run(&data, "t");
    // The second start recovers the first one's logs, then adds a topic.
    let second = run(&data, "u");
    for log in [&first, &second] {
        assert!(!log.contains('\u{1b}'), "ANSI codes in a piped log: {log}");
        assert!(!log.contains("WARN"), "a clean start warned: {log}");
        assert!(log.contains("broker ready"), "{log}");
    }
}

#[test]
fn records_produced_with_every_codec_survive_a_kill_9_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = start_broker(&data, "127.0.0.1:0");
    common::ok(&ferry(broker.addr(), &["topic", "create", "c"], None));
    let mut expected = Vec::new();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let lines: Vec<String> = (0..300)
            .map(|i| format!("{codec}-{i} {}", "payload ".repeat(10)))
            .collect();
        let out = ferry(
            broker.addr(),
            &["produce", "c", "--compression", codec],
            Some(&(lines.join("\n") + "\n")),
        );
        common::ok(&out);
        assert_eq!(json_lines(&out.stdout).pop().unwrap()["acked"], 300);
        expected.extend(lines);
    }
    let out = ferry(
        broker.addr(),
        &["produce", "c", "--compression", "brotli"],
        Some("x\n"),
    );
    assert!(!out.status.success());

    // Recovery checks each compressed batch's framing and CRC only.
    broker.kill9().unwrap();
    let broker = start_broker(&data, "127.0.0.1:0");
    let values: Vec<String> = consume_from_earliest(broker.addr(), "c", &[])
        .iter()
        .map(|r| r["value"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(values, expected);
    assert!(broker.sigterm().unwrap().success());
}

/// Runs `ferry produce TOPIC --broker ADDR` with one environment variable
/// set (how a user passes a token or a CA without a flag), feeding `input`.
fn produce_with_env(
    addr: &str,
    topic: &str,
    (key, value): (&str, &str),
    input: &str,
) -> std::process::Output {
    Command::new(FERRY)
        .args(["produce", topic, "--broker", addr])
        .env(key, value)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(input.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap()
}

fn acl(args: &[&str], file: &std::path::Path) -> std::process::Output {
    Command::new(FERRY)
        .arg("acl")
        .args(args)
        .arg("--acls")
        .arg(file)
        .output()
        .unwrap()
}

/// `ferry acl` writes the file the broker reads: each rule as a JSON
/// line, a bad rule or an empty selection refused with the reason and the
/// file unchanged.
#[test]
fn ferry_acl_adds_lists_and_removes_the_rules_of_the_acl_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acls.toml");
    let lines = |out: &std::process::Output| -> Vec<serde_json::Value> {
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let added = lines(&acl(
        &[
            "add",
            "--principal",
            "app",
            "--topic",
            "orders",
            "--operation",
            "read",
            "--operation",
            "write",
        ],
        &file,
    ));
    assert_eq!(added.len(), 2);
    assert_eq!(added[0]["principal"], "User:app");
    assert_eq!(added[1]["operation"], "write");
    lines(&acl(
        &[
            "add",
            "--principal",
            "*",
            "--cluster",
            "--operation",
            "alter",
            "--deny",
        ],
        &file,
    ));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // What the broker reads is what was added.
    let stored = ferry_broker::auth::acl::load(&file).unwrap();
    assert_eq!(stored.len(), 3);
    assert_eq!(lines(&acl(&["list"], &file)).len(), 3);
    assert_eq!(
        lines(&acl(&["list", "--operation", "write"], &file)).len(),
        1
    );

    let before = std::fs::read(&file).unwrap();
    for (bad, says) in [
        (vec!["remove"], "nothing selected"),
        (
            vec![
                "add",
                "--principal",
                "app",
                "--topic",
                "t",
                "--operation",
                "fly",
            ],
            "unknown operation",
        ),
        (
            vec![
                "add",
                "--principal",
                "app",
                "--topic",
                "*",
                "--prefixed",
                "--operation",
                "read",
            ],
            "prefixed",
        ),
        (
            vec![
                "add",
                "--principal",
                "app",
                "--host",
                "example.org",
                "--topic",
                "t",
                "--operation",
                "read",
            ],
            "IP address",
        ),
        (
            vec!["add", "--principal", "app", "--operation", "read"],
            "required",
        ),
    ] {
        let out = acl(&bad, &file);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{bad:?}: {err}"
        );
        assert_eq!(
            std::fs::read(&file).unwrap(),
            before,
            "{bad:?} changed the file"
        );
    }

    let removed = lines(&acl(
        &["remove", "--principal", "app", "--topic", "orders"],
        &file,
    ));
    assert_eq!(removed.len(), 2);
    let left = lines(&acl(&["list"], &file));
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["permission"], "deny");
    assert_eq!(lines(&acl(&["remove", "--all"], &file)).len(), 1);
    assert!(ferry_broker::auth::acl::load(&file).unwrap().is_empty());
}

fn user(args: &[&str], file: &std::path::Path, stdin: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut child = Command::new(FERRY)
        .arg("user")
        .args(args)
        .arg("--credentials")
        .arg(file)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `ferry user` adds tokens and SCRAM credentials to a file only its owner
/// can read, prints a token once and a password never, lists users
/// without secrets, and refuses duplicates, unknown users and empty
/// passwords with one clear line.
#[test]
fn ferry_user_manages_a_credentials_file_that_holds_no_secret() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials.toml");

    let out = user(&["add", "svc", "--mechanism", "token"], &file, "");
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        token.starts_with("ferry_") && !token.contains(char::is_whitespace),
        "{token}"
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "credentials file mode {mode:o}");

    let out = user(
        &["add", "alice", "--mechanism", "scram-sha-256"],
        &file,
        "pencil\n",
    );
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "a password add prints nothing");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("pencil"), "{text}");
    assert!(!text.contains(&token["ferry_".len()..]), "{text}");

    let out = user(&["list"], &file, "");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "{\"mechanism\":\"token\",\"user\":\"svc\"}\n{\"mechanism\":\"scram-sha-256\",\"user\":\"alice\"}\n"
    );

    for (args, stdin, says) in [
        (
            &["add", "alice", "--mechanism", "scram-sha-256"][..],
            "other\n",
            "already has",
        ),
        (
            &["add", "bob", "--mechanism", "scram-sha-512"][..],
            "",
            "no password",
        ),
        (
            &["add", "bob", "--mechanism", "md5"][..],
            "",
            "expected token",
        ),
        (&["remove", "nobody"][..], "", "no user"),
    ] {
        let out = user(args, &file, stdin);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        text,
        "a refused change wrote the file"
    );

    let out = user(&["remove", "svc"], &file, "");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "{\"removed\":1,\"user\":\"svc\"}\n"
    );
    let out = user(&["list"], &dir.path().join("missing.toml"), "");
    assert!(!out.status.success(), "listing a missing file succeeded");
}

/// A broker started with `--credentials` serves only requests with one of
/// its tokens: `--token` and `FERRY_TOKEN` work, a missing or wrong token
/// fails at once with one line (an authentication failure is not retried),
/// and SIGHUP rereads the file: a removed token stops working, a new one
/// starts, and a broken file changes nothing.
#[test]
fn a_broker_with_credentials_serves_only_requests_bearing_a_valid_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials.toml");
    let out = user(&["add", "svc", "--mechanism", "token"], &file, "");
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let data = dir.path().join("data");
    let args: [std::ffi::OsString; 4] = [
        "--credentials".into(),
        file.clone().into_os_string(),
        "--super-user".into(),
        "svc".into(),
    ];
    let broker = BrokerProcess::start_with_args(FERRY, &data, "127.0.0.1:0", args).expect("start");
    let limit = Duration::from_secs(20);

    let created = ferry_within(
        broker.addr(),
        &["topic", "create", "t", "--token", &token],
        limit,
    );
    assert!(created.status.success(), "{created:?}");
    let with_env = produce_with_env(broker.addr(), "t", ("FERRY_TOKEN", &token), "a\nb\n");
    assert!(with_env.status.success(), "{with_env:?}");

    for (extra, says) in [
        (&[][..], "bearer token"),
        (
            &[
                "--token",
                "ferry_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            ][..],
            "invalid token",
        ),
    ] {
        for cmd in [
            &["topic", "list"][..],
            &["consume", "t", "--exit-at-end"][..],
        ] {
            let args: Vec<&str> = cmd.iter().chain(extra).copied().collect();
            let out = ferry_within(broker.addr(), &args, limit);
            assert!(!out.status.success(), "{args:?} was served");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(says), "{args:?}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        }
    }
    let listed = ferry_within(broker.addr(), &["topic", "list", "--token", &token], limit);
    assert!(listed.status.success(), "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stdout).starts_with("t\t"));

    // Revoked and granted on SIGHUP: the file is reread while serving.
    assert!(user(&["remove", "svc"], &file, "").status.success());
    let out = user(&["add", "svc2", "--mechanism", "token"], &file, "");
    let token2 = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &broker.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -HUP");
    };
    hup();
    let served = |t: &str| {
        ferry_within(broker.addr(), &["topic", "list", "--token", t], limit)
            .status
            .success()
    };
    let deadline = std::time::Instant::now() + limit;
    while served(&token) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !served(&token),
        "a removed token is still accepted after SIGHUP"
    );
    assert!(served(&token2), "a token added before SIGHUP is refused");
    // A broken file keeps the credentials in force.
    std::fs::write(&file, "not toml [").unwrap();
    hup();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        served(&token2),
        "a broken file on SIGHUP revoked the tokens in force"
    );
    drop(data);
}

/// A broker started with `--tls-cert` and `--tls-key` speaks TLS only:
/// `ferry` commands that trust its CA (`--tls-ca` or `FERRY_TLS_CA`) and
/// the Rust client with [`ferry_client::ClientTls`] are served; a
/// plaintext client and one that trusts another certificate fail at
/// once with one line.
#[test]
fn a_broker_with_tls_serves_only_clients_that_trust_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ferry_testkit::pki::TestPki::write(dir.path());
    let mut args = pki.broker_flags(false);
    args.extend(
        [
            "--kafka-listen",
            "off",
            "--request-header-timeout-ms",
            "500",
        ]
        .map(Into::into),
    );
    let broker =
        BrokerProcess::start_with_args(FERRY, dir.path().join("data"), "127.0.0.1:0", args)
            .expect("start");
    let limit = Duration::from_secs(20);
    // A handshake that stalls is cut off at the header timeout, and holds
    // up no other client meanwhile.
    let mut stalled = std::net::TcpStream::connect(broker.addr()).unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let ca = pki.ca.to_str().unwrap();
    let created = ferry_within(
        broker.addr(),
        &["topic", "create", "t", "--tls-ca", ca],
        limit,
    );
    assert!(created.status.success(), "{created:?}");
    let produced = produce_with_env(broker.addr(), "t", ("FERRY_TLS_CA", ca), "a\nb\n");
    assert!(produced.status.success(), "{produced:?}");
    let consumed = ferry_within(
        broker.addr(),
        &[
            "consume",
            "t",
            "--from",
            "earliest",
            "--exit-at-end",
            "--tls-ca",
            ca,
        ],
        limit,
    );
    let values: Vec<String> = json_lines(&consumed.stdout)
        .iter()
        .map(|r| r["value"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(values, ["a", "b"], "{consumed:?}");

    let started = std::time::Instant::now();
    let mut byte = [0u8; 1];
    let n = std::io::Read::read(&mut stalled, &mut byte).expect("closed, not timed out");
    assert_eq!(n, 0, "a stalled handshake got an answer");
    assert!(started.elapsed() < Duration::from_secs(9));

    let wrong_ca = pki.rogue_cert.to_str().unwrap();
    for extra in [&[][..], &["--tls-ca", wrong_ca][..]] {
        let args: Vec<&str> = ["topic", "list"].iter().chain(extra).copied().collect();
        let out = ferry_within(broker.addr(), &args, limit);
        assert!(!out.status.success(), "{args:?} was served");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let options = ferry_client::ConnectOptions {
            tls: Some(ferry_client::ClientTls::from_files(&pki.ca, None, None).unwrap()),
            ..Default::default()
        };
        let client = ferry_client::Client::connect_with(broker.addr(), &options)
            .await
            .expect("connect over TLS");
        let topics = client.list_topics().await.expect("list topics over TLS");
        assert!(topics.iter().any(|t| t.name == "t"), "{topics:?}");
    });
}

/// With `--tls-client-ca`, TLS is mutual: a `ferry` command with a client
/// certificate the CA signed (`--tls-cert`, `--tls-key`) is served with no
/// token, and one without a certificate or with another CA's is refused.
#[test]
fn mutual_tls_serves_only_clients_with_a_certificate_the_ca_signed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ferry_testkit::pki::TestPki::write(dir.path());
    let mut args = pki.broker_flags(true);
    args.extend(["--kafka-listen", "off"].map(Into::into));
    args.extend(["--super-user", ferry_testkit::pki::CLIENT_SUBJECT].map(Into::into));
    let broker =
        BrokerProcess::start_with_args(FERRY, dir.path().join("data"), "127.0.0.1:0", args)
            .expect("start");
    let limit = Duration::from_secs(20);
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (ca, cert, key) = (s(&pki.ca), s(&pki.client_cert), s(&pki.client_key));
    let created = ferry_within(
        broker.addr(),
        &[
            "topic",
            "create",
            "t",
            "--tls-ca",
            &ca,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        limit,
    );
    assert!(created.status.success(), "{created:?}");
    let (rogue, rogue_key) = (s(&pki.rogue_cert), s(&pki.rogue_key));
    for extra in [
        vec!["--tls-ca", ca.as_str()],
        vec![
            "--tls-ca",
            &ca,
            "--tls-cert",
            &rogue,
            "--tls-key",
            &rogue_key,
        ],
    ] {
        let args: Vec<&str> = ["topic", "list"].into_iter().chain(extra).collect();
        let out = ferry_within(broker.addr(), &args, limit);
        assert!(!out.status.success(), "{args:?} was served");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    let out = ferry_within(
        broker.addr(),
        &["topic", "list", "--tls-cert", &cert, "--tls-key", &key],
        limit,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-ca"),
        "{out:?}"
    );
}

/// With authentication on, every gRPC request needs an ACL that allows
/// it: a super user may do anything; a user granted write on one topic
/// may produce there and see it, and is refused everything else (create,
/// other topics, reading, aborting transactions) with an error naming
/// the right it lacks. The ACL file is reread on SIGHUP; a broken one
/// leaves the ACLs in force.
#[test]
fn grpc_requests_need_an_acl_and_the_acl_file_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials.toml");
    let token = |name: &str| {
        let out = user(&["add", name, "--mechanism", "token"], &file, "");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let (admin, app) = (token("admin"), token("app"));
    let acls = dir.path().join("acls.toml");
    let grant = |rules: &str| std::fs::write(&acls, rules).unwrap();
    grant(
        "[[acl]]\nprincipal = \"User:app\"\nresource = \"topic\"\nname = \"orders\"\noperation = \"write\"\n",
    );
    let args: Vec<std::ffi::OsString> = vec![
        "--credentials".into(),
        file.clone().into(),
        "--super-user".into(),
        "admin".into(),
        "--acls".into(),
        acls.clone().into(),
    ];
    let broker =
        BrokerProcess::start_with_args(FERRY, dir.path().join("data"), "127.0.0.1:0", args)
            .expect("start");
    let limit = Duration::from_secs(20);
    let run = |t: &str, cmd: &[&str]| {
        let args: Vec<&str> = cmd.iter().copied().chain(["--token", t]).collect();
        ferry_within(broker.addr(), &args, limit)
    };
    for topic in ["orders", "secret"] {
        let out = run(&admin, &["topic", "create", topic]);
        assert!(out.status.success(), "{out:?}");
    }
    let produced = produce_with_env(broker.addr(), "orders", ("FERRY_TOKEN", &app), "a\nb\n");
    assert!(produced.status.success(), "{produced:?}");
    let listed = run(&app, &["topic", "list"]);
    let names = String::from_utf8_lossy(&listed.stdout);
    assert!(
        names.contains("orders") && !names.contains("secret"),
        "{names}"
    );
    let refused = |out: std::process::Output, says: &str| {
        assert!(!out.status.success(), "served: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("authorization_failed") && err.contains(says),
            "{err}"
        );
    };
    refused(
        produce_with_env(broker.addr(), "secret", ("FERRY_TOKEN", &app), "x\n"),
        "User:app may not describe topic \"secret\"",
    );
    refused(
        run(&app, &["topic", "create", "mine"]),
        "may not create topic \"mine\"",
    );
    refused(
        run(&app, &["topic", "delete", "orders"]),
        "may not delete topic \"orders\"",
    );
    refused(
        run(&app, &["consume", "orders", "--exit-at-end"]),
        "may not read topic \"orders\"",
    );
    refused(
        run(&app, &["txn", "abort", "someone"]),
        "may not alter cluster",
    );

    // Read by prefix, added with `ferry acl` and granted on SIGHUP.
    let added = acl(
        &[
            "add",
            "--principal",
            "app",
            "--topic",
            "ord",
            "--prefixed",
            "--operation",
            "read",
        ],
        &acls,
    );
    assert!(added.status.success(), "{added:?}");
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &broker.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -HUP");
    };
    hup();
    let consumed = || run(&app, &["consume", "orders", "--exit-at-end"]);
    let deadline = std::time::Instant::now() + limit;
    while !consumed().status.success() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = consumed();
    assert!(out.status.success(), "read not granted on SIGHUP: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    // A broken file keeps the ACLs in force.
    grant("[[acl]]\nprincipal = 7\n");
    hup();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        consumed().status.success(),
        "a broken ACL file took the grants away"
    );
}
