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

/// A lookup by time names the first record at or after it, inside a
/// batch too, with timestamps in any order; past every record it is the
/// high watermark. A consumer told to start from a time starts there.
#[tokio::test]
async fn a_lookup_by_time_answers_per_record_and_a_consumer_starts_there() {
    let (_broker, client) = broker().await;
    client.create_topic("times", 1).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let stamps = [1_000, 3_000, 2_000, 4_000, 4_000, 5_000];
    let mut deliveries = Vec::new();
    for (i, ts) in stamps.iter().enumerate() {
        let value = format!("v{i}");
        deliveries.push(
            producer
                .send_record(
                    ProducerRecord::new("times", None, Some(value.as_bytes()))
                        .to_partition(0)
                        .with_timestamp(*ts),
                )
                .await
                .unwrap(),
        );
    }
    producer.flush().await.unwrap();
    for d in deliveries {
        d.wait().await.unwrap();
    }
    for t in [
        0, 1_000, 1_001, 2_500, 3_000, 3_001, 4_000, 4_001, 5_000, 5_001,
    ] {
        let want = stamps
            .iter()
            .position(|ts| *ts >= t)
            .map_or(stamps.len() as u64, |i| i as u64);
        let got = client
            .list_offsets("times", 0, ferry_client::OffsetSpec::Timestamp(t))
            .await
            .unwrap();
        assert_eq!(got, want, "timestamp {t}");
    }
    let mut consumer = Consumer::new(
        client.clone(),
        ConsumerConfig {
            start_from: ferry_client::StartFrom::Timestamp(3_001),
            ..ConsumerConfig::default()
        },
    )
    .await
    .unwrap();
    consumer.assign(&[("times".to_string(), 0)]).await.unwrap();
    let mut values = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while values.len() < 3 && Instant::now() < deadline {
        for r in consumer.poll(Duration::from_millis(200)).await.unwrap() {
            values.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
        }
    }
    assert_eq!(values, ["v3", "v4", "v5"]);
}
