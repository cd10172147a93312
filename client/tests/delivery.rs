//! What a producer tells its caller: a `Delivery` can be asked whether it
//! finished without being consumed, and `flush` fails when records sent
//! since the previous flush failed.

use std::time::Duration;

use ferry_broker::{BrokerConfig, EmbeddedBroker};
use ferry_client::{Client, ClientError, Producer, ProducerConfig};
use ferry_proto::ErrorCode;

/// A broker that refuses batches over 1 KiB, and a client.
async fn broker_with_small_batches() -> (EmbeddedBroker, Client) {
    let mut config = BrokerConfig::ephemeral();
    config.limits.max_batch_bytes = 1024;
    let broker = EmbeddedBroker::start(config).await.unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    client.create_topic("t", 1).await.unwrap();
    (broker, client)
}

#[tokio::test]
async fn a_delivery_reports_its_outcome_without_being_consumed() {
    let (_broker, client) = broker_with_small_batches().await;
    let producer = Producer::new(
        client,
        ProducerConfig {
            // The batch stays open until the flush seals it.
            linger: Duration::from_secs(30),
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();
    let d = producer.send("t", None, Some(b"one")).await.unwrap();
    assert!(d.try_result().is_none(), "buffered, not yet sent");
    assert!(!d.is_done());

    producer.flush().await.unwrap();
    assert!(d.is_done());
    let meta = d.try_result().expect("flushed").unwrap();
    assert_eq!(meta.offset, Some(0));
    // Asking did not consume it: the same outcome, waited for.
    assert_eq!(d.wait().await.unwrap(), meta);
}

#[tokio::test]
async fn flush_counts_the_records_that_failed_since_the_last_flush() {
    let (_broker, client) = broker_with_small_batches().await;
    let producer = Producer::new(
        client,
        ProducerConfig {
            linger: Duration::from_secs(30),
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();

    // Four 400-byte records make one batch over the broker's 1 KiB limit:
    // the broker refuses it, for good.
    let value = vec![b'x'; 400];
    let mut deliveries = Vec::new();
    for _ in 0..4 {
        deliveries.push(producer.send("t", None, Some(&value)).await.unwrap());
    }
    let err = producer.flush().await.expect_err("the batch was refused");
    match &err {
        ClientError::RecordsFailed {
            failed,
            first_error,
        } => {
            assert_eq!(*failed, 4, "{err}");
            assert_eq!(first_error.code(), ErrorCode::MessageTooLarge, "{err}");
        }
        other => panic!("expected RecordsFailed, got {other:?}"),
    }
    assert_eq!(err.code(), ErrorCode::MessageTooLarge);
    assert!(!err.is_retriable());
    for d in deliveries {
        let e = d.try_result().expect("done").unwrap_err();
        assert_eq!(e.code(), ErrorCode::MessageTooLarge);
    }

    // The count starts again: a flush of records that all succeed is Ok.
    let d = producer.send("t", None, Some(b"small")).await.unwrap();
    producer.flush().await.unwrap();
    assert_eq!(d.wait().await.unwrap().offset, Some(0));
    // And a flush with nothing new is Ok too.
    producer.flush().await.unwrap();
}
