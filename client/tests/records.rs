//! What a record carries end to end: `send_record` with headers (in
//! order, a key twice, a null value) and its own timestamp comes back from
//! the consumer exactly so, next to plain records stamped when batched.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::broker;
use ferry_client::{
    ClientError, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
};
use tokio::time::Instant;

#[tokio::test]
async fn headers_and_timestamps_survive_the_round_trip() {
    let (broker, client) = broker().await;
    client.create_topic("r", 1).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let headers: &[(&[u8], Option<&[u8]>)] = &[
        (b"trace", Some(b"abc")),
        (b"trace", Some(b"def")),
        (b"empty", Some(b"")),
        (b"null", None),
    ];
    let before = ferry_proto::now_ms();
    producer
        .send_record(
            ProducerRecord::new("r", Some(b"k"), Some(b"with headers"))
                .with_headers(headers)
                .with_timestamp(1_600_000_000_123),
        )
        .await
        .unwrap();
    producer.send("r", None, Some(b"plain")).await.unwrap();
    producer.flush().await.unwrap();

    let mut consumer = Consumer::new(client, ConsumerConfig::default())
        .await
        .unwrap();
    consumer.assign_topic("r").await.unwrap();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while records.len() < 2 {
        assert!(Instant::now() < deadline);
        records.extend(consumer.poll(Duration::from_millis(100)).await.unwrap());
    }
    let first = &records[0];
    assert_eq!(first.timestamp, 1_600_000_000_123);
    let got: Vec<(Bytes, Option<Bytes>)> = first.headers.clone();
    let want: Vec<(Bytes, Option<Bytes>)> = headers
        .iter()
        .map(|(k, v)| (Bytes::copy_from_slice(k), v.map(Bytes::copy_from_slice)))
        .collect();
    assert_eq!(got, want);
    let plain = &records[1];
    assert!(plain.headers.is_empty());
    assert!(plain.timestamp >= before, "stamped when batched");
    producer.close().await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn too_many_headers_are_refused_before_anything_is_sent() {
    let (broker, client) = broker().await;
    client.create_topic("r", 1).await.unwrap();
    let producer = Producer::new(client, ProducerConfig::default())
        .await
        .unwrap();
    let one: (&[u8], Option<&[u8]>) = (b"h", None);
    let headers = vec![one; 1025];
    let err = producer
        .send_record(ProducerRecord::new("r", None, Some(b"v")).with_headers(&headers))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
    producer.close().await.unwrap();
    broker.shutdown().await.unwrap();
}
