//! Ferry's Kafka listener against Kafka clients nobody here wrote:
//! confluent-kafka (librdkafka 2.x) and kafka-python from PyPI, and
//! Debian's kcat (librdkafka 2.0.2, whose older maxima such as Metadata
//! v4 exercise the non-flexible encodings). The Python checks live in
//! `tests/python/kafka_confluent.py` and `tests/python/kafka_python_client.py`
//! and assert what they are named for; these tests start the broker (a
//! real `ferry broker` process, killed with `kill -9` where a test says
//! so) and run them.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{FERRY, ferry, json_lines, ok, python_with_requirements};
use ferry_testkit::BrokerProcess;

/// Flags that make groups form at once in tests.
const BROKER_FLAGS: &[&str] = &[
    "--group-initial-rebalance-delay-ms",
    "0",
    "--group-min-session-timeout-ms",
    "500",
];

fn start(dir: &Path) -> BrokerProcess {
    BrokerProcess::start_with_args(
        FERRY,
        dir.join("data"),
        "127.0.0.1:0",
        BROKER_FLAGS.iter().copied(),
    )
    .expect("start ferry broker")
}

fn kafka(broker: &BrokerProcess) -> String {
    broker
        .kafka_addr()
        .expect("the Kafka listener is on")
        .to_string()
}

fn script(name: &str) -> String {
    format!("{}/tests/python/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs a Python check and requires success, showing its output if not.
fn python(args: &[&str]) -> Output {
    let out = Command::new(python_with_requirements())
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{args:?} failed ({:?})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn confluent(args: &[&str]) -> Output {
    let s = script("kafka_confluent.py");
    let mut all = vec![s.as_str()];
    all.extend_from_slice(args);
    python(&all)
}

/// A `kcat` command, once kcat is known to be installed. It runs without
/// the `LD_LIBRARY_PATH` cargo gives tests: that path holds the librdkafka
/// that the `rdkafka` crate builds for the bench (no OpenSSL, so no TLS
/// and no SCRAM), and kcat would load it instead of Debian's.
fn kcat() -> impl Fn() -> Command {
    let cmd = || {
        let mut c = Command::new("kcat");
        c.env_remove("LD_LIBRARY_PATH");
        c
    };
    let found = cmd().arg("-V").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "kcat is not installed: apt-get install kcat (.ci/run installs it)"
    );
    cmd
}

#[test]
fn kcat_lists_the_broker_and_its_topics_and_round_trips_records() {
    let kcat = kcat();
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    let bs = kafka(&broker);
    common::create_topic(broker.addr(), "kc", 2);
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut child = kcat()
            .args(["-b", &bs])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(s) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kcat {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let listing = run(&["-L"], None);
    assert!(listing.contains(&format!("broker 0 at {bs}")), "{listing}");
    assert!(
        listing.contains("topic \"kc\" with 2 partitions"),
        "{listing}"
    );
    run(&["-P", "-t", "kc", "-K", ":"], Some("a:1\nb:2\nc:3\n"));
    let read = run(&["-C", "-t", "kc", "-e", "-f", "%k=%s\\n"], None);
    let mut lines: Vec<&str> = read.lines().collect();
    lines.sort();
    assert_eq!(lines, ["a=1", "b=2", "c=3"]);
    // The same records through Ferry's own client.
    let records = common::consume_from_earliest(broker.addr(), "kc", &[]);
    let mut values: Vec<&str> = records
        .iter()
        .map(|r| r["value"].as_str().unwrap())
        .collect();
    values.sort();
    assert_eq!(values, ["1", "2", "3"]);
}

#[test]
fn confluent_kafka_produces_consumes_with_a_group_and_administers_topics_and_groups() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    confluent(&["basic", &kafka(&broker)]);
}

#[test]
fn confluent_kafka_transactions_commit_visibly_abort_invisibly_copy_with_offsets_and_fence_a_zombie()
 {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    confluent(&["txn", &kafka(&broker)]);
}

#[test]
fn a_compacted_topic_created_through_admin_client_reads_as_the_latest_value_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut flags = BROKER_FLAGS.to_vec();
    flags.extend(["--cleaner-interval-ms", "200"]);
    let broker =
        BrokerProcess::start_with_args(FERRY, dir.path().join("data"), "127.0.0.1:0", flags)
            .expect("start ferry broker");
    let out = confluent(&["compacted", &kafka(&broker)]);
    let report = json_lines(&out.stdout).pop().unwrap();
    assert!(
        report["compacted_records"].as_u64().unwrap() < 600,
        "{report}"
    );
}

#[test]
fn a_confluent_kafka_group_of_three_splits_six_partitions_and_rebalances_when_one_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    confluent(&["group", &kafka(&broker)]);
}

#[test]
fn a_confluent_kafka_idempotent_producer_loses_and_duplicates_nothing_across_two_kill_9s() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = start(dir.path());
    let bs = kafka(&broker);
    common::create_topic(broker.addr(), "idem", 3);
    let count = "20000";
    let producer = Command::new(python_with_requirements())
        .args([
            &script("kafka_confluent.py"),
            "produce-idempotent",
            &bs,
            "idem",
            count,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        broker = broker.kill9_and_restart().expect("restart after kill -9");
    }
    let out = producer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "producer: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    confluent(&["verify-once", &bs, "idem", count]);
}

#[test]
fn batches_compressed_by_librdkafka_and_by_ferry_are_stored_as_sent_and_read_by_both() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    let bs = kafka(&broker);
    // librdkafka compresses with each codec; it and Ferry read them back.
    let out = confluent(&["compressed", &bs]);
    let topic = json_lines(&out.stdout)[0]["topic"]
        .as_str()
        .unwrap()
        .to_string();
    let read = common::consume_from_earliest(broker.addr(), &topic, &[]);
    assert_eq!(read.len(), 200, "ferry consume read {} records", read.len());
    assert!(read[0]["value"].as_str().unwrap().starts_with("gzip-0-"));
    assert!(read[199]["value"].as_str().unwrap().starts_with("zstd-49-"));
    // Ferry compresses with each codec; librdkafka reads them.
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let t = format!("ferry-{codec}");
        common::create_topic(broker.addr(), &t, 1);
        let input: String = (0..20).map(|i| format!("k{i}:{codec}-{i}\n")).collect();
        ok(&ferry(
            broker.addr(),
            &[
                "produce",
                &t,
                "--key-separator",
                ":",
                "--compression",
                codec,
            ],
            Some(&input),
        ));
        let out = confluent(&["consume-mixed", &bs, &t, "20"]);
        let records = json_lines(&out.stdout)[0]["records"].clone();
        let values: Vec<String> = records
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["value"].as_str().unwrap().to_string())
            .collect();
        let want: Vec<String> = (0..20).map(|i| format!("{codec}-{i}")).collect();
        assert_eq!(values, want, "{codec}");
    }
}

#[test]
fn kafka_python_produces_consumes_and_joins_a_group_of_two() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    python(&[&script("kafka_python_client.py"), &kafka(&broker)]);
}

#[test]
fn records_cross_between_ferry_and_confluent_kafka_with_keys_values_headers_and_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    let bs = kafka(&broker);
    common::create_topic(broker.addr(), "from-ferry", 1);
    common::create_topic(broker.addr(), "from-kafka", 1);

    // Ferry's CLI produces; confluent-kafka reads.
    ok(&ferry(
        broker.addr(),
        &[
            "produce",
            "from-ferry",
            "--key-separator",
            ":",
            "--header",
            "source=ferry",
            "--header",
            "source=twice",
            "--timestamp",
            "1650000000000",
        ],
        Some("k1:v1\nk2:v2\n"),
    ));
    let out = confluent(&["consume-mixed", &bs, "from-ferry", "2"]);
    let report = &json_lines(&out.stdout)[0];
    let records = report["records"].as_array().unwrap();
    assert_eq!(records.len(), 2, "{report}");
    for (r, (k, v)) in records.iter().zip([("k1", "v1"), ("k2", "v2")]) {
        assert_eq!(r["key"], k, "{r}");
        assert_eq!(r["value"], v, "{r}");
        assert_eq!(
            r["headers"],
            serde_json::json!([["source", "ferry"], ["source", "twice"]]),
            "{r}"
        );
        assert_eq!(r["timestamp"], 1_650_000_000_000i64, "{r}");
    }

    // confluent-kafka produces; Ferry's CLI reads.
    confluent(&["produce-mixed", &bs, "from-kafka"]);
    let read = common::consume_from_earliest(broker.addr(), "from-kafka", &[]);
    assert_eq!(read.len(), 5, "{read:?}");
    for (i, r) in read.iter().enumerate() {
        assert_eq!(r["key"], format!("ck{i}"), "{r}");
        assert_eq!(r["value"], format!("cv{i}"), "{r}");
        assert_eq!(r["timestamp"], 1_600_000_000_000i64 + i as i64, "{r}");
        assert_eq!(
            r["headers"],
            serde_json::json!([{"key": "source", "value": "confluent"}, {"key": "n", "value": i.to_string()}]),
            "{r}"
        );
    }
}

#[test]
fn a_confluent_kafka_transactional_copier_copies_every_record_exactly_once_across_two_kill_9s() {
    // scripts/kafka-txn-copier-kill9.sh runs the broker, an idempotent
    // input producer and the copier (tests/python/kafka_txn_copier.py),
    // kills the broker twice mid-copy, and verifies the output with a
    // read_committed consumer; it exits non-zero on any duplicate or gap.
    let script = format!(
        "{}/scripts/kafka-txn-copier-kill9.sh",
        env!("CARGO_MANIFEST_DIR")
    );
    let python = python_with_requirements();
    let out = Command::new("bash")
        .arg(&script)
        .arg(FERRY)
        .arg(&python)
        .args(["12", "3000", "2"])
        .output()
        .expect("run the copier script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdict = json_lines(&out.stdout)
        .into_iter()
        .find(|v| v.get("duplicates").is_some())
        .unwrap_or_else(|| panic!("no verdict in {stdout}"));
    assert_eq!(verdict["records"], 3000, "{stdout}");
    assert_eq!(verdict["duplicates"], 0, "{stdout}");
    assert_eq!(verdict["missing"], 0, "{stdout}");
    assert!(
        stdout.contains("\"aborts\""),
        "the copier reports its aborts: {stdout}"
    );
}

/// Adds a SCRAM-SHA-256 and a SCRAM-SHA-512 credential for `user` to a
/// credentials file in `dir`, through `ferry user add`.
fn scram_user(dir: &Path, user: &str, password: &str) -> std::path::PathBuf {
    use std::io::Write;
    let file = dir.join("credentials.toml");
    for mechanism in ["scram-sha-256", "scram-sha-512"] {
        let mut child = Command::new(FERRY)
            .args([
                "user",
                "add",
                user,
                "--mechanism",
                mechanism,
                "--credentials",
            ])
            .arg(&file)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    file
}

/// With `--credentials`, confluent-kafka authenticates with SCRAM-SHA-256,
/// SCRAM-SHA-512 and PLAIN (on loopback) and produces and consumes; a
/// wrong password, an unknown user and a client without SASL are refused.
/// kcat authenticates with SCRAM-SHA-512 and PLAIN.
#[test]
fn kafka_clients_authenticate_with_sasl_scram_and_plain_and_are_refused_without() {
    let kcat = kcat();
    let dir = tempfile::tempdir().unwrap();
    let file = scram_user(dir.path(), "alice", "pencil");
    let mut args: Vec<std::ffi::OsString> = BROKER_FLAGS.iter().map(Into::into).collect();
    // Authentication is what this test is about: alice may do anything.
    args.extend([
        "--credentials".into(),
        file.into_os_string(),
        "--super-user".into(),
        "alice".into(),
    ]);
    let broker =
        BrokerProcess::start_with_args(FERRY, dir.path().join("data"), "127.0.0.1:0", args)
            .expect("start ferry broker");
    let bs = kafka(&broker);
    confluent(&["sasl", &bs, "alice", "pencil"]);

    let listing = |mechanism: &str, password: &str| {
        kcat()
            .args(["-b", &bs, "-L", "-m", "10"])
            .args(["-X", "security.protocol=SASL_PLAINTEXT"])
            .args(["-X", &format!("sasl.mechanisms={mechanism}")])
            .args(["-X", "sasl.username=alice"])
            .args(["-X", &format!("sasl.password={password}")])
            .output()
            .unwrap()
    };
    for mechanism in ["PLAIN", "SCRAM-SHA-512"] {
        let out = listing(mechanism, "pencil");
        assert!(
            out.status.success(),
            "kcat {mechanism}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("topic \"sasl-scram-sha-256\""), "{text}");
        let out = listing(mechanism, "wrong");
        assert!(
            !out.status.success(),
            "kcat {mechanism} with a wrong password listed the broker"
        );
    }
}

/// Starts a broker with TLS on both listeners (`--tls-cert`, `--tls-key`)
/// and `extra` flags.
fn start_tls(
    dir: &Path,
    pki: &ferry_testkit::pki::TestPki,
    extra: Vec<std::ffi::OsString>,
) -> BrokerProcess {
    let mut args: Vec<std::ffi::OsString> = BROKER_FLAGS.iter().map(Into::into).collect();
    args.extend(pki.broker_flags(false));
    args.extend(extra);
    BrokerProcess::start_with_args(FERRY, dir.join("data"), "127.0.0.1:0", args)
        .expect("start ferry broker")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

/// With TLS and `--credentials`, the Kafka listener is SASL_SSL:
/// confluent-kafka authenticates with SCRAM-SHA-256, SCRAM-SHA-512 and
/// PLAIN (which TLS makes safe off loopback too) and moves records; a wrong
/// password, an unknown user and a TLS client without SASL are refused.
/// kcat lists the broker over SASL_SSL with SCRAM-SHA-256.
#[test]
fn kafka_clients_authenticate_with_sasl_over_tls() {
    let kcat = kcat();
    let dir = tempfile::tempdir().unwrap();
    let pki = ferry_testkit::pki::TestPki::write(dir.path());
    let file = scram_user(dir.path(), "alice", "pencil");
    let broker = start_tls(
        dir.path(),
        &pki,
        vec![
            "--credentials".into(),
            file.into_os_string(),
            "--super-user".into(),
            "alice".into(),
        ],
    );
    let bs = kafka(&broker);
    confluent(&["sasl-ssl", &bs, "alice", "pencil", path(&pki.ca)]);
    let out = kcat()
        .args(["-b", &bs, "-L", "-m", "10"])
        .args(["-X", "security.protocol=SASL_SSL"])
        .args(["-X", &format!("ssl.ca.location={}", path(&pki.ca))])
        .args(["-X", "sasl.mechanisms=SCRAM-SHA-256"])
        .args(["-X", "sasl.username=alice"])
        .args(["-X", "sasl.password=pencil"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kcat: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("topic \"sasl-scram-sha-256-tls\""), "{text}");
}

/// With `--tls-client-ca`, the Kafka listener is mutual TLS: a client
/// certificate the CA signed is all a client needs (confluent-kafka and
/// kcat both produce and consume with one), and a client with no
/// certificate, another CA's certificate, or no TLS is refused.
#[test]
fn kafka_clients_authenticate_with_client_certificates() {
    let kcat = kcat();
    let dir = tempfile::tempdir().unwrap();
    let pki = ferry_testkit::pki::TestPki::write(dir.path());
    let broker = start_tls(
        dir.path(),
        &pki,
        vec![
            "--tls-client-ca".into(),
            pki.ca.clone().into_os_string(),
            "--super-user".into(),
            ferry_testkit::pki::CLIENT_SUBJECT.into(),
        ],
    );
    let bs = kafka(&broker);
    confluent(&[
        "mtls",
        &bs,
        path(&pki.ca),
        path(&pki.client_cert),
        path(&pki.client_key),
        path(&pki.rogue_cert),
        path(&pki.rogue_key),
    ]);
    let ssl = |cmd: &mut Command, cert: &Path, key: &Path| {
        cmd.args(["-b", &bs])
            .args(["-X", "security.protocol=SSL"])
            .args(["-X", &format!("ssl.ca.location={}", path(&pki.ca))])
            .args(["-X", &format!("ssl.certificate.location={}", path(cert))])
            .args(["-X", &format!("ssl.key.location={}", path(key))]);
    };
    let mut produce = kcat();
    ssl(&mut produce, &pki.client_cert, &pki.client_key);
    let produced = produce
        .args(["-P", "-t", "kcat-mtls"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"one\ntwo\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(produced.status.success(), "kcat -P: {produced:?}");
    let mut consume = kcat();
    ssl(&mut consume, &pki.client_cert, &pki.client_key);
    let consumed = consume
        .args(["-C", "-t", "kcat-mtls", "-o", "beginning", "-e", "-q"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&consumed.stdout),
        "one\ntwo\n",
        "kcat -C: {consumed:?}"
    );
    let mut rogue = kcat();
    ssl(&mut rogue, &pki.rogue_cert, &pki.rogue_key);
    let out = rogue.args(["-L", "-m", "5"]).output().unwrap();
    assert!(
        !out.status.success(),
        "kcat with another CA's certificate listed the broker"
    );
}

/// Kafka's ACL API over the broker's own ACLs, with confluent-kafka's
/// AdminClient: a super user grants another user rights with CreateAcls;
/// that user may then produce, consume, join a group and run a
/// transaction where the grants say, and gets the authorization error of
/// the resource it lacks everywhere else (topic, group, transactional id,
/// cluster). DescribeAcls lists the grants, DeleteAcls removes one;
/// kafka-python's admin client does the same, and is refused all of it as
/// the user without a right on the cluster. The grants live in the ACL
/// file and survive a restart.
#[test]
fn kafka_admin_tools_manage_acls_and_the_broker_enforces_them() {
    let dir = tempfile::tempdir().unwrap();
    scram_user(dir.path(), "admin", "pencil");
    let file = scram_user(dir.path(), "app", "pencil");
    let acl_file = dir.path().join("acls.toml");
    let mut args: Vec<std::ffi::OsString> = BROKER_FLAGS.iter().map(Into::into).collect();
    args.extend([
        "--credentials".into(),
        file.into_os_string(),
        "--super-user".into(),
        "admin".into(),
        "--acls".into(),
        acl_file.clone().into_os_string(),
    ]);
    let broker =
        BrokerProcess::start_with_args(FERRY, dir.path().join("data"), "127.0.0.1:0", args)
            .expect("start ferry broker");
    let bs = kafka(&broker);
    let out = confluent(&["acls", &bs, "admin", "app", "pencil"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("\"acls\": 4"), "{report}");
    let out = python(&[
        &script("kafka_python_acls.py"),
        &bs,
        "admin",
        "app",
        "pencil",
    ]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("\"acls\": 3"), "{report}");
    // Three grants are left, in the file the broker reads at start.
    let stored = ferry_broker::auth::acl::load(&acl_file).unwrap();
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert!(
        stored.iter().all(|a| a.principal == "User:app"),
        "{stored:?}"
    );
    let broker = broker.kill9_and_restart().expect("restart");
    let out = confluent(&["describe-acls", &kafka(&broker), "admin", "pencil"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("\"acls\": 3"), "{report}");
}
