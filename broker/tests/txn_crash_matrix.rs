//! The commit path under a crash at every persistence step: a failpoint
//! stops `EndTxn` before prepare, after prepare, between markers, before
//! the complete record and before the reply; the broker then crashes and
//! restarts. Each time, read_committed sees all of the transaction or none
//! of it, the group's offsets move exactly when the records appear, and
//! after the producer retries its `EndTxn` the outcome is the one it asked
//! for and the LSO has caught up with the high watermark.
#![cfg(feature = "failpoints")]

mod support;

use ferry_broker::{BrokerConfig, EmbeddedBroker};
use ferry_proto::ErrorCode;
use ferry_proto::v1;
use support::{Client, add, end, init, read, send, send_offsets};

const POINTS: [&str; 5] = [
    "txn::before_prepare",
    "txn::after_prepare",
    "txn::between_markers",
    "txn::before_complete",
    "txn::before_reply",
];

async fn describe_lso_hw(client: &Client) -> Vec<(u64, u64)> {
    client
        .raw()
        .describe_topic(v1::DescribeTopicRequest { name: "t".into() })
        .await
        .unwrap()
        .into_inner()
        .partitions
        .iter()
        .map(|p| (p.last_stable_offset, p.high_watermark))
        .collect()
}

async fn visible(client: &Client) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for p in 0..3 {
        out.push(read(client, "t", p, true).await.0);
    }
    out
}

async fn run_point(point: &str, commit: bool) {
    let broker = EmbeddedBroker::start(BrokerConfig::ephemeral())
        .await
        .unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    client.create_topic("t", 3).await;
    let mut t = init(&client, "crashy", 0).await;
    for p in 0..3 {
        assert_eq!(add(&client, &t, "t", p).await, 0);
        let v = format!("p{p}");
        assert_eq!(
            send(&client, &mut t, "t", p, &[&v, &format!("{v}b")])
                .await
                .error_code,
            0
        );
    }
    for (code, message) in send_offsets(&client, &t, 7).await {
        assert_eq!(code, 0, "{message}");
    }

    fail::cfg(point, "return").unwrap();
    let r = end(&client, &t, commit).await;
    fail::remove(point);
    assert_eq!(
        ErrorCode::from_u32(r.error_code),
        ErrorCode::Unknown,
        "{point}: the failpoint fired"
    );

    let broker = broker.crash_and_restart().await.unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    let seen = visible(&client).await;
    let all = seen.iter().all(|v| v.len() == 2);
    let none = seen.iter().all(Vec::is_empty);
    assert!(
        all || none,
        "{point}: torn transaction after the crash: {seen:?}"
    );
    let offsets = client.fetch_offsets("g", "t").await;
    assert_eq!(
        offsets.get(&0) == Some(&7),
        all,
        "{point}: offsets move exactly with the records"
    );
    let prepared = point != "txn::before_prepare";
    if prepared {
        assert_eq!(
            all, commit,
            "{point}: a durable prepare decides the outcome"
        );
    } else {
        assert!(none, "{point}: nothing is visible before the decision");
    }

    // The producer, which saw an error, retries its EndTxn.
    let r = end(&client, &t, commit).await;
    assert_eq!(r.error_code, 0, "{point}: retry: {}", r.error_message);
    assert_eq!(
        r.producer_epoch,
        t.epoch + 1,
        "{point}: the retry returns the new epoch"
    );
    let seen = visible(&client).await;
    assert!(
        seen.iter().all(|v| v.len() == if commit { 2 } else { 0 }),
        "{point}: after retry {seen:?}"
    );
    assert_eq!(
        client.fetch_offsets("g", "t").await.get(&0) == Some(&7),
        commit
    );
    for (lso, hw) in describe_lso_hw(&client).await {
        assert_eq!(
            lso, hw,
            "{point}: the LSO advanced past the finished transaction"
        );
    }
}

#[tokio::test]
async fn a_crash_at_every_step_of_commit_and_abort_leaves_all_or_nothing() {
    let scenario = fail::FailScenario::setup();
    for point in POINTS {
        run_point(point, true).await;
    }
    for point in [
        "txn::after_prepare",
        "txn::between_markers",
        "txn::before_reply",
    ] {
        run_point(point, false).await;
    }
    scenario.teardown();
}
