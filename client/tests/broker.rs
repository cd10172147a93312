//! The client against a real broker running in this process.

mod common;

use common::broker;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ferry_broker::{BrokerConfig, EmbeddedBroker};
use ferry_client::partitioner::partition_for_key;
use ferry_client::{
    Acks, Client, ClientError, CommitMode, Consumer, ConsumerConfig, ConsumerRecord,
    IsolationLevel, OffsetSpec, Producer, ProducerConfig, StartFrom,
};
use ferry_proto::ErrorCode;

fn earliest(group: Option<&str>, commit_mode: CommitMode) -> ConsumerConfig {
    ConsumerConfig {
        group: group.map(str::to_owned),
        commit_mode,
        isolation: IsolationLevel::ReadUncommitted,
        start_from: StartFrom::Earliest,
        max_wait: Duration::from_millis(100),
        ..ConsumerConfig::default()
    }
}

/// Polls until `want` records arrived or 10 s passed.
async fn read(consumer: &mut Consumer, want: usize) -> Vec<ConsumerRecord> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        out.extend(consumer.poll(Duration::from_millis(200)).await.unwrap());
    }
    out
}

async fn read_topic(client: &Client, topic: &str, want: usize) -> Vec<ConsumerRecord> {
    let mut consumer = Consumer::new(client.clone(), earliest(None, CommitMode::None))
        .await
        .unwrap();
    consumer.assign_topic(topic).await.unwrap();
    read(&mut consumer, want).await
}

#[tokio::test]
async fn admin_calls_round_trip() {
    let (broker, client) = broker().await;
    client.create_topic("admin", 3).await.unwrap();
    let err = client.create_topic("admin", 3).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::TopicAlreadyExists);
    let topics = client.list_topics().await.unwrap();
    assert!(
        topics
            .iter()
            .any(|t| t.name == "admin" && t.partitions == 3)
    );
    let d = client.describe_topic("admin").await.unwrap();
    assert_eq!(d.name, "admin");
    assert_eq!(
        d.partitions.iter().map(|p| p.partition).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(
        client
            .list_offsets("admin", 1, OffsetSpec::Latest)
            .await
            .unwrap(),
        0
    );
    client
        .commit_offsets("g", &[("admin".into(), 2, 7)])
        .await
        .unwrap();
    let offsets = client.fetch_offsets("g", "admin").await.unwrap();
    assert_eq!(offsets, HashMap::from([(2, 7)]));
    client.delete_topic("admin").await.unwrap();
    let err = client.describe_topic("admin").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnknownTopicOrPartition);
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn records_round_trip_under_every_acks_mode() {
    let (broker, client) = broker().await;
    for acks in [Acks::All, Acks::Leader, Acks::None] {
        let topic = format!("rt-{acks}");
        client.create_topic(&topic, 2).await.unwrap();
        let config = ProducerConfig {
            acks,
            batch_bytes: 4096,
            idempotent: acks == Acks::All,
            ..ProducerConfig::default()
        };
        let producer = Producer::new(client.clone(), config).await.unwrap();
        let mut deliveries = Vec::new();
        for i in 0..500u32 {
            let value = format!("{acks}-{i}");
            deliveries.push(
                producer
                    .send(&topic, None, Some(value.as_bytes()))
                    .await
                    .unwrap(),
            );
        }
        producer.flush().await.unwrap();
        let mut offsets = HashSet::new();
        for d in deliveries {
            let meta = d.wait().await.unwrap();
            assert_eq!(&*meta.topic, topic);
            match acks {
                Acks::None => assert_eq!(meta.offset, None),
                _ => assert!(offsets.insert((meta.partition, meta.offset.unwrap()))),
            }
        }
        producer.close().await.unwrap();
        let records = read_topic(&client, &topic, 500).await;
        let values: HashSet<Vec<u8>> = records
            .iter()
            .map(|r| r.value.clone().unwrap().to_vec())
            .collect();
        assert_eq!(values.len(), 500, "acks={acks}");
        for i in 0..500u32 {
            assert!(values.contains(format!("{acks}-{i}").as_bytes()));
        }
        if acks != Acks::None {
            let read: HashSet<(u32, u64)> =
                records.iter().map(|r| (r.partition, r.offset)).collect();
            assert_eq!(read, offsets);
        }
    }
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn keyed_records_land_on_one_partition_in_send_order() {
    let (broker, client) = broker().await;
    client.create_topic("keyed", 4).await.unwrap();
    let config = ProducerConfig {
        batch_bytes: 1024,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), config).await.unwrap();
    let mut deliveries = Vec::new();
    for i in 0..400u32 {
        let key = format!("key-{}", i % 10);
        let value = format!("{key}/{i}");
        let d = producer
            .send("keyed", Some(key.as_bytes()), Some(value.as_bytes()))
            .await
            .unwrap();
        assert_eq!(d.partition(), partition_for_key(key.as_bytes(), 4));
        deliveries.push((key, d));
    }
    let mut last: HashMap<String, u64> = HashMap::new();
    for (key, d) in deliveries {
        let meta = d.wait().await.unwrap();
        let offset = meta.offset.unwrap();
        if let Some(prev) = last.insert(key, offset) {
            assert!(prev < offset, "offsets of one key go up in send order");
        }
    }
    let records = read_topic(&client, "keyed", 400).await;
    assert_eq!(records.len(), 400);
    let mut seen: HashMap<Vec<u8>, (u32, u32)> = HashMap::new();
    for r in &records {
        let key = r.key.clone().unwrap().to_vec();
        let value = String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap();
        let n: u32 = value.rsplit('/').next().unwrap().parse().unwrap();
        if let Some((partition, prev)) = seen.insert(key, (r.partition, n)) {
            assert_eq!(partition, r.partition);
            assert!(prev < n, "a key's records are read in send order");
        }
    }
    producer.close().await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_long_poll_wakes_when_data_arrives() {
    let (broker, client) = broker().await;
    client.create_topic("wake", 1).await.unwrap();
    let config = ConsumerConfig {
        start_from: StartFrom::Latest,
        max_wait: Duration::from_secs(10),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client.clone(), config).await.unwrap();
    consumer.assign_topic("wake").await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let started = Instant::now();
    let poll = tokio::spawn(async move {
        let records = consumer.poll(Duration::from_secs(10)).await.unwrap();
        (records, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    producer
        .send("wake", None, Some(b"ping"))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let (records, waited) = poll.await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value.as_deref(), Some(&b"ping"[..]));
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    producer.close().await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_poll_with_nothing_to_read_returns_empty_after_the_timeout() {
    let (broker, client) = broker().await;
    client.create_topic("quiet", 1).await.unwrap();
    let mut consumer = Consumer::new(client, ConsumerConfig::default())
        .await
        .unwrap();
    consumer.assign_topic("quiet").await.unwrap();
    let started = Instant::now();
    assert!(
        consumer
            .poll(Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(consumer.position("quiet", 0), Some(0));
    broker.shutdown().await.unwrap();
}

async fn produce_values(client: &Client, topic: &str, n: u32) {
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    for i in 0..n {
        producer
            .send_to(topic, 0, None, Some(format!("v{i}").as_bytes()))
            .await
            .unwrap();
    }
    producer.close().await.unwrap();
}

#[tokio::test]
async fn commit_after_redelivers_what_a_crashed_consumer_did_not_commit() {
    let (broker, client) = broker().await;
    client.create_topic("after", 1).await.unwrap();
    produce_values(&client, "after", 20).await;
    let config = ConsumerConfig {
        start_from: StartFrom::Committed,
        ..earliest(Some("g-after"), CommitMode::After)
    };

    // Processes everything, then "crashes" before committing.
    let mut first = Consumer::new(client.clone(), config.clone()).await.unwrap();
    first.assign_topic("after").await.unwrap();
    assert_eq!(read(&mut first, 20).await.len(), 20);
    drop(first);

    // The replacement gets every record again, and commits this time.
    let mut second = Consumer::new(client.clone(), config.clone()).await.unwrap();
    second.assign_topic("after").await.unwrap();
    let again = read(&mut second, 20).await;
    assert_eq!(again.len(), 20);
    assert_eq!(again[0].offset, 0);
    second.commit().await.unwrap();
    drop(second);

    let mut third = Consumer::new(client.clone(), config).await.unwrap();
    third.assign_topic("after").await.unwrap();
    assert_eq!(third.position("after", 0), Some(20));
    assert!(
        third
            .poll(Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty()
    );
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn commit_before_never_redelivers_after_a_crash() {
    let (broker, client) = broker().await;
    client.create_topic("before", 1).await.unwrap();
    produce_values(&client, "before", 20).await;
    let config = ConsumerConfig {
        start_from: StartFrom::Committed,
        ..earliest(Some("g-before"), CommitMode::Before)
    };

    // Receives the records and "crashes" before processing them.
    let mut first = Consumer::new(client.clone(), config.clone()).await.unwrap();
    first.assign_topic("before").await.unwrap();
    let got = read(&mut first, 20).await;
    assert_eq!(got.len(), 20);
    drop(first);
    assert_eq!(
        client.fetch_offsets("g-before", "before").await.unwrap(),
        HashMap::from([(0, 20)])
    );

    produce_values(&client, "before", 5).await;
    let mut second = Consumer::new(client.clone(), config).await.unwrap();
    second.assign_topic("before").await.unwrap();
    let next = read(&mut second, 5).await;
    let values: Vec<_> = next.iter().map(|r| r.offset).collect();
    assert_eq!(values, vec![20, 21, 22, 23, 24], "no record is seen twice");
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_missing_topic_or_partition_is_a_definite_error() {
    let (broker, client) = broker().await;
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let err = producer.send("nope", None, Some(b"x")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnknownTopicOrPartition);
    client.create_topic("two", 2).await.unwrap();
    let err = producer
        .send_to("two", 2, None, Some(b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnknownTopicOrPartition);
    let mut consumer = Consumer::new(client, ConsumerConfig::default())
        .await
        .unwrap();
    let err = consumer.assign_topic("nope").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnknownTopicOrPartition);
    producer.close().await.unwrap();
    let err = producer.send("two", None, Some(b"x")).await.unwrap_err();
    assert!(matches!(err, ClientError::Closed));
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_out_of_range_position_is_reset() {
    let (broker, client) = broker().await;
    client.create_topic("oor", 1).await.unwrap();
    produce_values(&client, "oor", 3).await;
    let mut consumer = Consumer::new(client, earliest(None, CommitMode::None))
        .await
        .unwrap();
    consumer.seek("oor", 0, 1000);
    let records = consumer.poll(Duration::from_millis(200)).await.unwrap();
    assert!(records.is_empty());
    assert_eq!(consumer.position("oor", 0), Some(0));
    assert_eq!(read(&mut consumer, 3).await.len(), 3);
    broker.shutdown().await.unwrap();
}

/// Sends `n` records while `disrupt` runs, and returns the acked values.
async fn produce_through(
    producer: &Producer,
    topic: &str,
    n: u32,
    disrupt: impl std::future::Future<Output = EmbeddedBroker>,
) -> (EmbeddedBroker, Vec<String>) {
    let sending = async {
        let mut deliveries = Vec::new();
        for i in 0..n {
            let value = format!("r{i}");
            let d = producer
                .send(topic, Some(value.as_bytes()), Some(value.as_bytes()))
                .await
                .unwrap();
            deliveries.push((value, d));
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let mut acked = Vec::new();
        for (value, d) in deliveries {
            match d.wait().await {
                Ok(_) => acked.push(value),
                Err(e) => panic!("{value} failed: {e}"),
            }
        }
        acked
    };
    let (broker, acked) = tokio::join!(disrupt, sending);
    (broker, acked)
}

/// Stops the broker gracefully and starts a new one on the same data dir
/// and port.
async fn restart(broker: EmbeddedBroker) -> EmbeddedBroker {
    let config = BrokerConfig {
        listen: broker.addr(),
        ..BrokerConfig::ephemeral().with_data_dir(broker.data_dir())
    };
    broker.shutdown().await.expect("broker stops");
    EmbeddedBroker::start(config)
        .await
        .expect("broker starts again")
}

/// Stops the broker without flushing, as `kill -9` would, and starts it
/// again: recovery runs.
async fn crash_and_restart(broker: EmbeddedBroker) -> EmbeddedBroker {
    let (config, tmp) = broker.crash().await.expect("broker stops");
    EmbeddedBroker::start_with(config, tmp)
        .await
        .expect("broker recovers")
}

#[tokio::test]
async fn the_producer_survives_a_broker_restart_without_losing_acked_records() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start(BrokerConfig::ephemeral().with_data_dir(dir.path()))
        .await
        .unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    client.create_topic("restart", 3).await.unwrap();
    let config = ProducerConfig {
        batch_bytes: 2048,
        delivery_timeout: Duration::from_secs(30),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), config).await.unwrap();
    let (broker, acked) = produce_through(&producer, "restart", 3000, async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        restart(broker).await
    })
    .await;
    producer.close().await.unwrap();
    assert_eq!(acked.len(), 3000);
    let read: HashSet<Vec<u8>> = read_topic(&client, "restart", 3000)
        .await
        .into_iter()
        .map(|r| r.value.unwrap().to_vec())
        .collect();
    for value in &acked {
        assert!(read.contains(value.as_bytes()), "acked {value} was lost");
    }
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn acked_records_survive_a_broker_crash() {
    let (broker, client) = broker().await;
    client.create_topic("crash", 2).await.unwrap();
    let config = ProducerConfig {
        batch_bytes: 2048,
        delivery_timeout: Duration::from_secs(30),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), config).await.unwrap();
    let (broker, acked) = produce_through(&producer, "crash", 3000, async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        crash_and_restart(broker).await
    })
    .await;
    producer.close().await.unwrap();
    let read: HashSet<Vec<u8>> = read_topic(&client, "crash", acked.len())
        .await
        .into_iter()
        .map(|r| r.value.unwrap().to_vec())
        .collect();
    for value in &acked {
        assert!(read.contains(value.as_bytes()), "acked {value} was lost");
    }
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn deliveries_time_out_while_the_broker_is_gone() {
    let (broker, client) = broker().await;
    client.create_topic("gone", 1).await.unwrap();
    let config = ProducerConfig {
        delivery_timeout: Duration::from_millis(600),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).await.unwrap();
    producer
        .send("gone", None, Some(b"first"))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    broker.shutdown().await.unwrap();
    let started = Instant::now();
    let err = producer
        .send("gone", None, Some(b"lost"))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    producer.close().await.unwrap();
}
