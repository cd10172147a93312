//! The idempotent producer against an in-process broker: dense offsets with
//! no duplicates, exactly-once-in-order through broker crashes, and the
//! epoch bump after the broker forgets the producer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferry_broker::{BrokerConfig, EmbeddedBroker};
use ferry_client::{
    Client, CommitMode, Consumer, ConsumerConfig, ConsumerRecord, IsolationLevel, Producer,
    ProducerConfig, StartFrom,
};

/// Reads `topic` from the start until `want` records arrived, or nothing
/// new came for 2 s.
async fn read_all(client: &Client, topic: &str, want: usize) -> Vec<ConsumerRecord> {
    let config = ConsumerConfig {
        group: None,
        commit_mode: CommitMode::None,
        isolation: IsolationLevel::ReadUncommitted,
        start_from: StartFrom::Earliest,
        max_wait: Duration::from_millis(100),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client.clone(), config).await.unwrap();
    consumer.assign_topic(topic).await.unwrap();
    let mut out = Vec::new();
    let mut last_new = Instant::now();
    while out.len() < want && last_new.elapsed() < Duration::from_secs(2) {
        let batch = consumer.poll(Duration::from_millis(200)).await.unwrap();
        if !batch.is_empty() {
            last_new = Instant::now();
        }
        out.extend(batch);
    }
    // Anything beyond `want` would be a duplicate: look a little longer.
    out.extend(consumer.poll(Duration::from_millis(300)).await.unwrap());
    out
}

/// Values are `"{i}"`. Checks that every one of `0..n` appears exactly
/// once, and in increasing order within each partition (the send order:
/// each key stays on one partition and values grow with the send order).
fn assert_exactly_once_in_order(records: &[ConsumerRecord], n: u64) {
    let mut per_partition: HashMap<u32, Vec<(u64, u64)>> = HashMap::new();
    let mut seen = vec![0u32; n as usize];
    for r in records {
        let v: u64 = std::str::from_utf8(r.value.as_deref().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        seen[v as usize] += 1;
        per_partition
            .entry(r.partition)
            .or_default()
            .push((r.offset, v));
    }
    let missing: Vec<_> = (0..n).filter(|&i| seen[i as usize] == 0).collect();
    let duplicated: Vec<_> = (0..n).filter(|&i| seen[i as usize] > 1).collect();
    assert!(
        missing.is_empty(),
        "{} missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        duplicated.is_empty(),
        "{} duplicated, first {:?}",
        duplicated.len(),
        &duplicated[..duplicated.len().min(10)]
    );
    for (p, mut rows) in per_partition {
        rows.sort_unstable();
        for w in rows.windows(2) {
            assert!(w[0].0 < w[1].0, "partition {p}: offset {} twice", w[0].0);
            assert!(
                w[0].1 < w[1].1,
                "partition {p}: {} at offset {} before {} at offset {}",
                w[0].1,
                w[0].0,
                w[1].1,
                w[1].0
            );
        }
    }
}

/// Sends `"{i}"` for `i` in `range`, keyed by `i % keys`, and returns the
/// deliveries' outcomes in send order.
async fn send_range(
    producer: &Producer,
    topic: &str,
    range: std::ops::Range<u64>,
    keys: u64,
    pause_every: u64,
) -> Vec<ferry_client::Delivery> {
    let mut deliveries = Vec::new();
    for i in range {
        let key = (i % keys).to_string();
        let value = i.to_string();
        deliveries.push(
            producer
                .send(topic, Some(key.as_bytes()), Some(value.as_bytes()))
                .await
                .unwrap(),
        );
        if pause_every > 0 && i % pause_every == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    deliveries
}

#[tokio::test]
async fn an_idempotent_round_trip_has_dense_offsets_and_no_duplicates() {
    let broker = EmbeddedBroker::start(BrokerConfig::ephemeral())
        .await
        .unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    client.create_topic("idem", 3).await.unwrap();
    let config = ProducerConfig {
        batch_bytes: 512,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), config).await.unwrap();
    let (pid, epoch) = producer.producer_id().expect("idempotent by default");
    assert!(pid >= 0);
    assert_eq!(epoch, 0);
    let n = 3000;
    let deliveries = send_range(&producer, "idem", 0..n, 11, 0).await;
    producer.flush().await.unwrap();
    let mut offsets: HashMap<u32, Vec<u64>> = HashMap::new();
    for d in deliveries {
        let meta = d.wait().await.unwrap();
        offsets
            .entry(meta.partition)
            .or_default()
            .push(meta.offset.unwrap());
    }
    for (p, list) in &offsets {
        assert_eq!(
            list,
            &(0..list.len() as u64).collect::<Vec<_>>(),
            "partition {p}: offsets dense and in send order"
        );
    }
    producer.close().await.unwrap();
    let records = read_all(&client, "idem", n as usize).await;
    assert_eq!(records.len(), n as usize);
    assert_exactly_once_in_order(&records, n);
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn crashes_mid_stream_leave_each_record_once_and_in_send_order() {
    let mut broker = EmbeddedBroker::start(BrokerConfig::ephemeral())
        .await
        .unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    client.create_topic("crash", 3).await.unwrap();
    let config = ProducerConfig {
        batch_bytes: 1024,
        linger: Duration::from_millis(1),
        retry_backoff: Duration::from_millis(10),
        retry_backoff_max: Duration::from_millis(100),
        delivery_timeout: Duration::from_secs(60),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), config).await.unwrap();
    let n = 12_000u64;
    let crashes = 3;
    let sending = async {
        let deliveries = send_range(&producer, "crash", 0..n, 17, 50).await;
        producer.flush().await.unwrap();
        let mut failed = Vec::new();
        for (i, d) in deliveries.into_iter().enumerate() {
            if let Err(e) = d.wait().await {
                failed.push((i, e.to_string()));
            }
        }
        failed
    };
    let crashing = async {
        for _ in 0..crashes {
            tokio::time::sleep(Duration::from_millis(60)).await;
            // Crash without flushing, with batches in flight, as kill -9
            // would; recovery runs on restart.
            broker = broker.crash_and_restart().await.unwrap();
        }
        broker
    };
    let (failed, broker) = tokio::join!(sending, crashing);
    assert!(
        failed.is_empty(),
        "{} deliveries failed, first {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    producer.close().await.unwrap();
    let records = read_all(&client, "crash", n as usize).await;
    assert_exactly_once_in_order(&records, n);
    assert_eq!(records.len(), n as usize);
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_producer_the_broker_forgot_bumps_its_epoch_and_renumbers() {
    let mut config = BrokerConfig::ephemeral();
    config.producers.expiry_ms = 1;
    let broker = EmbeddedBroker::start(config).await.unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    client.create_topic("forgot", 1).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let first = send_range(&producer, "forgot", 0..50, 1, 0).await;
    producer.flush().await.unwrap();
    for d in first {
        d.wait().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let partition = broker.state().partition("forgot", 0).unwrap();
    assert_eq!(partition.expire_producers(ferry_proto::now_ms()), 1);
    // The next batch continues the sequence, which the broker no longer
    // knows: UNKNOWN_PRODUCER_ID, then a renumbered resend under epoch 1.
    let second = send_range(&producer, "forgot", 50..100, 1, 0).await;
    producer.flush().await.unwrap();
    let mut offsets = Vec::new();
    for d in second {
        offsets.push(d.wait().await.unwrap().offset.unwrap());
    }
    assert_eq!(offsets, (50..100).collect::<Vec<_>>());
    producer.close().await.unwrap();
    // The log holds epoch 0 batches, then epoch 1 batches from sequence 0.
    let fetched = client
        .raw()
        .fetch(ferry_proto::v1::FetchRequest {
            partitions: vec![ferry_proto::v1::FetchPartition {
                topic: "forgot".into(),
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
    let stamps: Vec<(i16, i32)> =
        ferry_proto::batch::BatchIter::new(&fetched.partitions[0].records)
            .map(|b| {
                let h = *b.unwrap().header();
                (h.producer_epoch, h.base_sequence)
            })
            .collect();
    let (pid, _) = producer.producer_id().unwrap();
    assert!(pid >= 0);
    assert_eq!(stamps.first(), Some(&(0, 0)), "{stamps:?}");
    let bumped = stamps
        .iter()
        .position(|s| s.0 == 1)
        .expect("an epoch-1 batch");
    assert_eq!(stamps[bumped], (1, 0), "{stamps:?}");
    assert!(stamps[..bumped].iter().all(|s| s.0 == 0), "{stamps:?}");
    assert!(stamps[bumped..].iter().all(|s| s.0 == 1), "{stamps:?}");
    let records = read_all(&client, "forgot", 100).await;
    assert_eq!(records.len(), 100);
    assert_exactly_once_in_order(&records, 100);
    broker.shutdown().await.unwrap();
}
