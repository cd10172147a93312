//! The broker's idempotent-producer checks, driven with raw requests:
//! duplicates answer with the original offsets, gaps and zombies are
//! refused, and the window survives graceful restarts, crashes and corrupt
//! snapshots.

mod support;

use bytes::Bytes;
use ferry_broker::{BrokerConfig, EmbeddedBroker};
use ferry_proto::ErrorCode;
use ferry_proto::batch::{BatchBuilder, ProducerStamp};
use ferry_proto::v1;
use support::Client;

fn batch(pid: i64, epoch: i16, seq: i32, n: usize) -> Bytes {
    let now = ferry_proto::now_ms();
    let mut b = BatchBuilder::new(now).producer(ProducerStamp {
        producer_id: pid,
        producer_epoch: epoch,
        base_sequence: seq,
    });
    for i in 0..n {
        b.push(
            now,
            None,
            Some(format!("{pid}-{epoch}-{}", seq as usize + i).as_bytes()),
            &[],
        );
    }
    b.finish()
}

async fn send(client: &Client, b: Bytes) -> v1::ProduceResponse {
    client
        .raw()
        .produce(v1::ProduceRequest {
            correlation_id: 0,
            topic: "t".into(),
            partition: 0,
            acks: v1::Acks::All as i32,
            batch: b,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn init(client: &Client) -> i64 {
    let r = client
        .raw()
        .init_producer_id(v1::InitProducerIdRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    assert_eq!(r.producer_epoch, 0);
    r.producer_id
}

async fn hw(client: &Client) -> u64 {
    client.high_watermark("t", 0).await
}

fn code(r: &v1::ProduceResponse) -> ErrorCode {
    ErrorCode::from_u32(r.error_code)
}

async fn setup(config: BrokerConfig) -> (EmbeddedBroker, Client) {
    let broker = EmbeddedBroker::start(config).await.unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    client.create_topic("t", 1).await;
    (broker, client)
}

#[tokio::test]
async fn a_retried_batch_gets_its_original_offsets_and_is_not_appended_again() {
    let (_broker, client) = setup(BrokerConfig::ephemeral()).await;
    let pid = init(&client).await;
    let first = send(&client, batch(pid, 0, 0, 3)).await;
    let second = send(&client, batch(pid, 0, 3, 2)).await;
    assert_eq!((first.base_offset, second.base_offset), (0, 3));
    let retry = send(&client, batch(pid, 0, 0, 3)).await;
    assert_eq!(code(&retry), ErrorCode::None);
    assert_eq!(
        (retry.base_offset, retry.last_offset),
        (0, 2),
        "original offsets"
    );
    assert_eq!(hw(&client).await, 5, "nothing appended for the retry");
}

#[tokio::test]
async fn gaps_zombies_and_expired_producers_are_refused_with_their_codes() {
    let (_broker, client) = setup(BrokerConfig::ephemeral()).await;
    let pid = init(&client).await;
    send(&client, batch(pid, 1, 0, 2)).await;
    assert_eq!(
        code(&send(&client, batch(pid, 1, 5, 1)).await),
        ErrorCode::OutOfOrderSequence
    );
    assert_eq!(
        code(&send(&client, batch(pid, 0, 2, 1)).await),
        ErrorCode::InvalidProducerEpoch
    );
    let other = init(&client).await;
    assert_ne!(other, pid, "every InitProducerId gets a new id");
    assert_eq!(
        code(&send(&client, batch(other, 0, 7, 1)).await),
        ErrorCode::UnknownProducerId
    );
    assert_eq!(hw(&client).await, 2);
    // A bumped epoch restarting at 0 is accepted.
    assert_eq!(
        code(&send(&client, batch(pid, 2, 0, 1)).await),
        ErrorCode::None
    );
}

#[tokio::test]
async fn the_whole_window_survives_a_crash_a_clean_restart_and_a_corrupt_snapshot() {
    let (broker, client) = setup(BrokerConfig::ephemeral()).await;
    let pid = init(&client).await;
    let mut originals = Vec::new();
    for i in 0..8 {
        let r = send(&client, batch(pid, 0, i * 2, 2)).await;
        originals.push((i * 2, r.base_offset));
    }
    let check_window = |client: Client, originals: Vec<(i32, u64)>| async move {
        // The last five batches are duplicates with their original offsets.
        for &(seq, base) in &originals[3..] {
            let r = send(&client, batch(pid, 0, seq, 2)).await;
            assert_eq!(
                (code(&r), r.base_offset),
                (ErrorCode::None, base),
                "seq {seq}"
            );
        }
        // Older ones have left the window: a sequence error, never an append.
        let r = send(&client, batch(pid, 0, originals[0].0, 2)).await;
        assert_eq!(code(&r), ErrorCode::OutOfOrderSequence);
        assert_eq!(hw(&client).await, 16);
    };

    let broker = broker.crash_and_restart().await.unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    check_window(client, originals.clone()).await;

    let broker = broker.restart().await.unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    check_window(client, originals.clone()).await;

    let (config, tmp) = broker.crash().await.unwrap();
    let snap = config.data_dir.join("topics/t/0.producers");
    if snap.exists() {
        let mut bytes = std::fs::read(&snap).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&snap, bytes).unwrap();
    }
    let broker = EmbeddedBroker::start_with(config, tmp).await.unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    check_window(client.clone(), originals).await;
    let next = send(&client, batch(pid, 0, 16, 1)).await;
    assert_eq!((code(&next), next.base_offset), (ErrorCode::None, 16));
}

#[tokio::test]
async fn producer_ids_stay_unique_across_restarts() {
    let (broker, client) = setup(BrokerConfig::ephemeral()).await;
    let a = init(&client).await;
    let broker = broker.crash_and_restart().await.unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    let b = init(&client).await;
    assert!(b > a, "{a} then {b}");
}

#[tokio::test]
async fn past_the_producer_id_limit_new_producers_get_a_quota_error() {
    let mut config = BrokerConfig::ephemeral();
    config.producers.max_per_partition = 2;
    let (_broker, client) = setup(config).await;
    for _ in 0..2 {
        let pid = init(&client).await;
        assert_eq!(
            code(&send(&client, batch(pid, 0, 0, 1)).await),
            ErrorCode::None
        );
    }
    let third = init(&client).await;
    let r = send(&client, batch(third, 0, 0, 1)).await;
    assert_eq!(
        code(&r),
        ErrorCode::ProducerIdQuotaExceeded,
        "{}",
        r.error_message
    );
    assert!(r.error_message.contains("maximum"));
}
