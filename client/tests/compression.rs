//! A producer with compression, through an embedded broker, to a
//! consumer: for every codec the records come back exactly as sent, and
//! the broker stores and serves the batches still compressed.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::broker;
use ferry_client::{
    Client, Compression, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
};
use ferry_proto::batch::BatchIter;
use tokio::time::Instant;

const RECORDS: usize = 200;

fn value(i: usize) -> Vec<u8> {
    format!("order {i}: {} ", "widget ".repeat(20)).into_bytes()
}

/// The batches stored for `topic`/0, as the broker serves them.
async fn stored_batches(client: &Client, topic: &str) -> Bytes {
    let fetched = client
        .raw()
        .fetch(ferry_proto::v1::FetchRequest {
            partitions: vec![ferry_proto::v1::FetchPartition {
                topic: topic.into(),
                partition: 0,
                offset: 0,
                max_bytes: 1 << 20,
            }],
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 1 << 20,
            isolation: 0,
        })
        .await
        .unwrap()
        .into_inner();
    fetched.partitions[0].records.clone()
}

#[tokio::test]
async fn every_codec_round_trips_through_the_broker() {
    let (broker, client) = broker().await;
    for codec in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let topic = format!("c-{codec}");
        client.create_topic(&topic, 1).await.unwrap();
        let producer = Producer::new(
            client.clone(),
            ProducerConfig {
                compression: codec,
                // Several batches, so the consumer walks more than one.
                batch_bytes: 16 * 1024,
                ..ProducerConfig::default()
            },
        )
        .await
        .unwrap();
        for i in 0..RECORDS {
            let key = format!("k{i}");
            let v = value(i);
            let headers: &[(&[u8], Option<&[u8]>)] = &[(b"n", Some(key.as_bytes())), (b"z", None)];
            let record = ProducerRecord::new(&topic, Some(key.as_bytes()), Some(&v))
                .with_headers(headers)
                .to_partition(0);
            producer.send_record(record).await.unwrap();
        }
        producer.flush().await.unwrap();
        producer.close().await.unwrap();

        let stored = stored_batches(&client, &topic).await;
        let batches: Vec<_> = BatchIter::new(&stored).map(Result::unwrap).collect();
        assert!(batches.len() > 1, "{codec}: {} batches", batches.len());
        for b in &batches {
            assert_eq!(b.compression(), codec, "stored as sent");
        }
        let uncompressed: usize = (0..RECORDS).map(|i| value(i).len()).sum();
        assert!(
            stored.len() < uncompressed / 3,
            "{codec}: {} bytes stored for {uncompressed} of values",
            stored.len()
        );

        let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default())
            .await
            .unwrap();
        consumer.assign_topic(&topic).await.unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < RECORDS {
            assert!(Instant::now() < deadline, "{codec}: {} records", got.len());
            got.extend(consumer.poll(Duration::from_millis(100)).await.unwrap());
        }
        assert_eq!(got.len(), RECORDS, "{codec}");
        for (i, r) in got.iter().enumerate() {
            let key = format!("k{i}");
            assert_eq!(r.offset, i as u64, "{codec}");
            assert_eq!(r.key.as_deref(), Some(key.as_bytes()), "{codec}");
            assert_eq!(r.value.as_deref(), Some(&value(i)[..]), "{codec}");
            assert_eq!(
                r.headers,
                vec![
                    (Bytes::from_static(b"n"), Some(Bytes::from(key))),
                    (Bytes::from_static(b"z"), None)
                ],
                "{codec}"
            );
        }
    }
    broker.shutdown().await.unwrap();
}
