//! The transaction coordinator and the read side, driven with raw
//! requests: all-or-nothing visibility under read_committed, offsets that
//! commit with the transaction, fencing, idempotent EndTxn, timeouts, and
//! recovery of a transaction that was prepared before a crash.

mod support;

use ferry_broker::{BrokerConfig, EmbeddedBroker};
use ferry_proto::ErrorCode;
use ferry_proto::control::{ControlType, marker_batch};
use ferry_proto::v1;
use support::*;

async fn setup() -> (EmbeddedBroker, Client) {
    let broker = EmbeddedBroker::start(BrokerConfig::ephemeral())
        .await
        .unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    client.create_topic("t", 2).await;
    (broker, client)
}

fn code(c: u32) -> ErrorCode {
    ErrorCode::from_u32(c)
}

#[tokio::test]
async fn committed_records_become_visible_together_and_aborted_ones_never() {
    let (_broker, client) = setup().await;
    let mut t = init(&client, "tx", 0).await;
    assert_eq!(add(&client, &t, "t", 0).await, 0);
    assert_eq!(add(&client, &t, "t", 1).await, 0);
    assert_eq!(
        send(&client, &mut t, "t", 0, &["a1", "a2"])
            .await
            .error_code,
        0
    );
    assert_eq!(send(&client, &mut t, "t", 1, &["b1"]).await.error_code, 0);
    let (seen, lso) = read(&client, "t", 0, true).await;
    assert!(
        seen.is_empty(),
        "open transaction is invisible to read_committed"
    );
    assert_eq!(lso, 0, "the LSO stops at the open transaction");
    assert_eq!(
        read(&client, "t", 0, false).await.0,
        ["a1", "a2"],
        "read_uncommitted sees it"
    );
    let r = end(&client, &t, true).await;
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    assert_eq!(
        r.producer_epoch,
        t.epoch + 1,
        "the epoch is bumped after every transaction"
    );
    let (seen, lso) = read(&client, "t", 0, true).await;
    assert_eq!(seen, ["a1", "a2"]);
    assert_eq!(lso, 3, "records and marker are below the LSO");
    assert_eq!(read(&client, "t", 1, true).await.0, ["b1"]);

    // The next transaction runs on the new epoch from sequence 0, and aborts.
    t.epoch = r.producer_epoch;
    t.seq.clear();
    assert_eq!(add(&client, &t, "t", 0).await, 0);
    assert_eq!(send(&client, &mut t, "t", 0, &["x1"]).await.error_code, 0);
    let r = end(&client, &t, false).await;
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    let (seen, lso) = read(&client, "t", 0, true).await;
    assert_eq!(seen, ["a1", "a2"], "aborted records are never visible");
    assert_eq!(lso, 5);
    assert_eq!(read(&client, "t", 0, false).await.0, ["a1", "a2", "x1"]);
}

#[tokio::test]
async fn writes_to_unregistered_partitions_and_control_batches_from_clients_are_refused() {
    let (_broker, client) = setup().await;
    let mut t = init(&client, "tx", 0).await;
    let r = send(&client, &mut t, "t", 0, &["nope"]).await;
    assert_eq!(
        code(r.error_code),
        ErrorCode::PartitionNotInTransaction,
        "{}",
        r.error_message
    );
    assert_eq!(add(&client, &t, "t", 0).await, 0);
    let r = send(&client, &mut t, "t", 1, &["nope"]).await;
    assert_eq!(code(r.error_code), ErrorCode::PartitionNotInTransaction);
    let marker = marker_batch(t.pid, 0, ControlType::Commit, 1);
    let r = client
        .raw()
        .produce(v1::ProduceRequest {
            topic: "t".into(),
            batch: marker,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(r.error_code), ErrorCode::InvalidRequest);
    assert_eq!(read(&client, "t", 1, false).await.0, Vec::<String>::new());
}

#[tokio::test]
async fn a_new_producer_with_the_same_id_fences_the_old_one_and_aborts_its_transaction() {
    let (_broker, client) = setup().await;
    let mut old = init(&client, "tx", 0).await;
    assert_eq!(add(&client, &old, "t", 0).await, 0);
    assert_eq!(
        send(&client, &mut old, "t", 0, &["zombie"])
            .await
            .error_code,
        0
    );
    let new = init(&client, "tx", 0).await;
    assert_eq!(new.pid, old.pid);
    assert!(new.epoch > old.epoch);
    assert_eq!(
        code(add(&client, &old, "t", 1).await),
        ErrorCode::ProducerFenced
    );
    let r = send(&client, &mut old, "t", 0, &["late"]).await;
    assert_eq!(
        code(r.error_code),
        ErrorCode::InvalidProducerEpoch,
        "{}",
        r.error_message
    );
    assert_eq!(
        code(end(&client, &old, true).await.error_code),
        ErrorCode::ProducerFenced
    );
    let (seen, lso) = read(&client, "t", 0, true).await;
    assert!(seen.is_empty(), "the zombie's write never becomes visible");
    assert_eq!(
        lso, 2,
        "its transaction was aborted, so the LSO moved past it"
    );
}

#[tokio::test]
async fn a_retried_end_txn_gets_the_same_answer_and_epoch() {
    let (_broker, client) = setup().await;
    let mut t = init(&client, "tx", 0).await;
    add(&client, &t, "t", 0).await;
    send(&client, &mut t, "t", 0, &["v"]).await;
    let first = end(&client, &t, true).await;
    let retry = end(&client, &t, true).await;
    assert_eq!(
        (retry.error_code, retry.producer_epoch),
        (0, first.producer_epoch)
    );
    assert_eq!(
        code(end(&client, &t, false).await.error_code),
        ErrorCode::InvalidTxnState,
        "it committed; it cannot now abort"
    );
    assert_eq!(read(&client, "t", 0, true).await.0, ["v"]);
    assert_eq!(
        read(&client, "t", 0, false).await.0,
        ["v"],
        "no second marker or record"
    );
}

#[tokio::test]
async fn offsets_sent_in_a_transaction_commit_with_it_and_vanish_with_an_abort() {
    let (_broker, client) = setup().await;
    let mut t = init(&client, "tx", 0).await;
    for (commit, offset) in [(false, 5u64), (true, 9u64)] {
        for (code, message) in send_offsets(&client, &t, offset).await {
            assert_eq!(code, 0, "{message}");
        }
        assert!(
            client.fetch_offsets("g", "t").await.is_empty(),
            "pending until the marker"
        );
        let r = end(&client, &t, commit).await;
        assert_eq!(r.error_code, 0);
        t.epoch = r.producer_epoch;
        t.seq.clear();
    }
    assert_eq!(
        client.fetch_offsets("g", "t").await.get(&0),
        Some(&9),
        "only the committed offset"
    );
}

#[tokio::test]
async fn a_transaction_past_its_timeout_is_aborted_and_the_lso_advances() {
    let (_broker, client) = setup().await;
    let mut t = init(&client, "slow", 300).await;
    add(&client, &t, "t", 0).await;
    send(&client, &mut t, "t", 0, &["late"]).await;
    let listed = client
        .raw()
        .list_transactions(v1::ListTransactionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.transactions[0].state, "Ongoing");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (seen, lso) = read(&client, "t", 0, true).await;
    assert!(seen.is_empty());
    assert_eq!(lso, 2, "record plus abort marker");
    let r = end(&client, &t, true).await;
    assert_eq!(
        code(r.error_code),
        ErrorCode::InvalidTxnState,
        "{}",
        r.error_message
    );
    assert!(
        r.error_message.contains("CompleteAbort"),
        "{}",
        r.error_message
    );
}

#[tokio::test]
async fn a_hanging_transaction_can_be_listed_and_aborted_by_hand() {
    let (_broker, client) = setup().await;
    let mut t = init(&client, "stuck", 0).await;
    add(&client, &t, "t", 1).await;
    send(&client, &mut t, "t", 1, &["x"]).await;
    let r = client
        .raw()
        .abort_transaction(v1::AbortTransactionRequest {
            transactional_id: "stuck".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    let (seen, lso) = read(&client, "t", 1, true).await;
    assert!(seen.is_empty());
    assert_eq!(lso, 2);
    let listed = client
        .raw()
        .list_transactions(v1::ListTransactionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.transactions[0].state, "CompleteAbort");
}

#[tokio::test]
async fn open_and_committed_transactions_survive_a_crash() {
    let (broker, client) = setup().await;
    let mut done = init(&client, "done", 0).await;
    add(&client, &done, "t", 0).await;
    send(&client, &mut done, "t", 0, &["c1", "c2"]).await;
    assert_eq!(end(&client, &done, true).await.error_code, 0);
    let mut open = init(&client, "open", 0).await;
    add(&client, &open, "t", 0).await;
    send(&client, &mut open, "t", 0, &["o1"]).await;

    let broker = broker.crash_and_restart().await.unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    let (seen, lso) = read(&client, "t", 0, true).await;
    assert_eq!(seen, ["c1", "c2"]);
    assert_eq!(
        lso, 3,
        "the open transaction still holds the LSO after recovery"
    );
    // The producer finishes its transaction after the restart.
    let r = end(&client, &open, true).await;
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    assert_eq!(read(&client, "t", 0, true).await.0, ["c1", "c2", "o1"]);
}

#[tokio::test]
async fn the_internal_logs_stay_the_size_of_their_state_across_a_crash() {
    // 4 KiB segments: the transaction and offsets logs restate every few
    // dozen transactions.
    let mut config = BrokerConfig::ephemeral();
    config.log.segment_bytes = 4096;
    let broker = EmbeddedBroker::start(config).await.unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    client.create_topic("t", 1).await;
    let mut producers = [init(&client, "a", 0).await, init(&client, "b", 0).await];
    let mut last_committed = 0;
    for round in 0..150u64 {
        for t in &mut producers {
            assert_eq!(add(&client, t, "t", 0).await, 0);
            assert_eq!(send(&client, t, "t", 0, &["v"]).await.error_code, 0);
            for (code, message) in send_offsets(&client, t, round).await {
                assert_eq!(code, 0, "{message}");
            }
            let commit = round % 3 != 0;
            let r = end(&client, t, commit).await;
            assert_eq!(r.error_code, 0, "{}", r.error_message);
            if commit {
                last_committed = round;
            }
            t.epoch = r.producer_epoch;
            t.seq.clear();
        }
    }
    // One left open across the crash, offsets and all.
    let open = init(&client, "open", 0).await;
    assert_eq!(add(&client, &open, "t", 0).await, 0);
    for (code, message) in send_offsets(&client, &open, 10_000).await {
        assert_eq!(code, 0, "{message}");
    }
    for log in broker.state().internal_logs() {
        // Hundreds of kilobytes were written to each; a few segments are
        // left.
        assert!(log.bytes <= 6 * 4096, "{log:?}");
        assert!(log.log_start_offset > 0, "{log:?}");
    }

    let broker = broker.crash_and_restart().await.unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    assert_eq!(
        client.fetch_offsets("g", "t").await.get(&0),
        Some(&last_committed),
        "the last committed transaction's offset survives"
    );
    let listed = client
        .raw()
        .list_transactions(v1::ListTransactionsRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut states: Vec<_> = listed
        .transactions
        .iter()
        .map(|t| (t.transactional_id.as_str(), t.state.as_str()))
        .collect();
    states.sort_unstable();
    assert_eq!(
        states,
        [
            ("a", "CompleteCommit"),
            ("b", "CompleteCommit"),
            ("open", "Ongoing")
        ]
    );
    let r = end(&client, &open, true).await;
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    assert_eq!(client.fetch_offsets("g", "t").await.get(&0), Some(&10_000));
}
