//! Telling "caught up" from "nothing yet": `Consumer::at_end` and the
//! `PartitionEof` events of `poll_events`, under both isolation levels.

mod common;

use common::broker;
use std::time::{Duration, Instant};

use ferry_client::{
    Client, Consumer, ConsumerConfig, ConsumerEvent, IsolationLevel, Producer, ProducerConfig,
    StartFrom, TransactionalConfig, TransactionalProducer,
};

async fn produce_to(client: &Client, topic: &str, partition: u32, n: usize) {
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let mut deliveries = Vec::new();
    for i in 0..n {
        let v = format!("p{partition}-{i}");
        deliveries.push(
            producer
                .send_to(topic, partition, None, Some(v.as_bytes()))
                .await
                .unwrap(),
        );
    }
    producer.close().await.unwrap();
    for d in deliveries {
        d.wait().await.unwrap();
    }
}

async fn consumer(client: &Client, topic: &str, isolation: IsolationLevel) -> Consumer {
    let mut consumer = Consumer::new(
        client.clone(),
        ConsumerConfig {
            isolation,
            start_from: StartFrom::Earliest,
            max_wait: Duration::from_millis(50),
            ..ConsumerConfig::default()
        },
    )
    .await
    .unwrap();
    consumer.assign_topic(topic).await.unwrap();
    consumer
}

/// Polls until `at_end`, returning (records, end-of-partition events as
/// (partition, offset)).
async fn drain_to_end(consumer: &mut Consumer) -> (usize, Vec<(u32, u64)>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut records, mut eofs) = (0, Vec::new());
    while !consumer.at_end() {
        assert!(Instant::now() < deadline, "never reached the end");
        for event in consumer
            .poll_events(Duration::from_millis(100))
            .await
            .unwrap()
        {
            match event {
                ConsumerEvent::Record(_) => records += 1,
                ConsumerEvent::PartitionEof {
                    partition, offset, ..
                } => eofs.push((partition, offset)),
                other => panic!("no group, so no rebalance: {other:?}"),
            }
        }
    }
    eofs.sort_unstable();
    (records, eofs)
}

#[tokio::test]
async fn each_caught_up_partition_reports_its_end_once_and_again_after_new_records() {
    let (_broker, client) = broker().await;
    client.create_topic("t", 3).await.unwrap();
    produce_to(&client, "t", 0, 7).await;
    produce_to(&client, "t", 1, 3).await;
    // Partition 2 stays empty: its end is offset 0.

    let mut c = consumer(&client, "t", IsolationLevel::ReadUncommitted).await;
    assert!(!c.at_end(), "no fetch has answered yet");
    let (records, eofs) = drain_to_end(&mut c).await;
    assert_eq!(records, 10);
    assert_eq!(eofs, vec![(0, 7), (1, 3), (2, 0)]);

    // Still at the end: no new event, no records.
    let events = c.poll_events(Duration::from_millis(50)).await.unwrap();
    assert!(events.is_empty(), "{events:?}");
    assert!(c.at_end());

    // One more record on partition 1: its record, then its end again.
    produce_to(&client, "t", 1, 1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|e| matches!(e, ConsumerEvent::PartitionEof { .. }))
    {
        assert!(Instant::now() < deadline, "no end reported: {seen:?}");
        seen.extend(c.poll_events(Duration::from_millis(100)).await.unwrap());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        matches!(&seen[0], ConsumerEvent::Record(r) if r.partition == 1 && r.offset == 3),
        "{seen:?}"
    );
    assert!(
        matches!(
            &seen[1],
            ConsumerEvent::PartitionEof {
                partition: 1,
                offset: 4,
                ..
            }
        ),
        "{seen:?}"
    );

    // A rewind leaves the end behind.
    c.seek("t", 0, 2);
    assert!(!c.at_end());
}

#[tokio::test]
async fn under_read_committed_the_end_is_the_last_stable_offset() {
    let (_broker, client) = broker().await;
    client.create_topic("t", 1).await.unwrap();
    produce_to(&client, "t", 0, 4).await;
    let mut txn = TransactionalProducer::new(
        client.clone(),
        TransactionalConfig {
            producer: ProducerConfig {
                linger: Duration::from_millis(1),
                ..ProducerConfig::default()
            },
            ..TransactionalConfig::new("open")
        },
    )
    .await
    .unwrap();
    txn.begin().unwrap();
    let mut pending = Vec::new();
    for i in 0..3 {
        let v = format!("txn-{i}");
        pending.push(txn.send_to("t", 0, None, Some(v.as_bytes())).await.unwrap());
    }
    for d in pending {
        d.wait().await.unwrap();
    }

    // The open transaction holds the last stable offset at 4.
    let mut committed = consumer(&client, "t", IsolationLevel::ReadCommitted).await;
    let (records, eofs) = drain_to_end(&mut committed).await;
    assert_eq!(records, 4);
    assert_eq!(eofs, vec![(0, 4)]);

    // read_uncommitted reads on to the high watermark.
    let mut uncommitted = consumer(&client, "t", IsolationLevel::ReadUncommitted).await;
    let (records, eofs) = drain_to_end(&mut uncommitted).await;
    assert_eq!(records, 7);
    assert_eq!(eofs, vec![(0, 7)]);

    // Once it commits, read_committed is behind again, then catches up
    // past the marker.
    txn.commit().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut more = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "never caught up after the commit"
        );
        for event in committed
            .poll_events(Duration::from_millis(100))
            .await
            .unwrap()
        {
            match event {
                ConsumerEvent::Record(_) => more += 1,
                ConsumerEvent::PartitionEof { offset, .. } => {
                    assert_eq!(more, 3, "the committed records come before the end");
                    // Past the three records and the commit marker.
                    assert_eq!(offset, 8);
                    return;
                }
                other => panic!("no group, so no rebalance: {other:?}"),
            }
        }
    }
}
