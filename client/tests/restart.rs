//! State that must survive restarts: committed offsets and acked records,
//! after a graceful stop and after a crash. Plus the metrics endpoint.

use std::time::Duration;

use ferry_broker::{BrokerConfig, EmbeddedBroker};
use ferry_client::{
    Acks, Client, CommitMode, Consumer, ConsumerConfig, Producer, ProducerConfig, StartFrom,
};

async fn produce(client: &Client, topic: &str, n: usize) {
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::All,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut deliveries = Vec::new();
    for i in 0..n {
        let v = format!("v{i}");
        deliveries.push(
            producer
                .send(topic, None, Some(v.as_bytes()))
                .await
                .unwrap(),
        );
    }
    producer.flush().await.unwrap();
    for d in deliveries {
        d.wait().await.unwrap();
    }
}

#[tokio::test]
async fn committed_offsets_survive_a_graceful_restart_and_a_crash() {
    let broker = EmbeddedBroker::start(BrokerConfig::ephemeral())
        .await
        .unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    client.create_topic("t", 2).await.unwrap();
    client
        .commit_offsets("g", &[("t".into(), 0, 17), ("t".into(), 1, 4)])
        .await
        .unwrap();

    let broker = broker.restart().await.unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    let got = client.fetch_offsets("g", "t").await.unwrap();
    assert_eq!(got.get(&0), Some(&17));
    assert_eq!(got.get(&1), Some(&4));
    client
        .commit_offsets("g", &[("t".into(), 0, 20)])
        .await
        .unwrap();

    // An acknowledged commit was durable under fsync=always: a crash keeps it.
    let broker = broker.crash_and_restart().await.unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    let got = client.fetch_offsets("g", "t").await.unwrap();
    assert_eq!(got.get(&0), Some(&20));
    assert_eq!(got.get(&1), Some(&4));
    assert!(client.fetch_offsets("other", "t").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_consumer_resumes_from_its_committed_offset_after_a_restart() {
    let broker = EmbeddedBroker::start(BrokerConfig::ephemeral())
        .await
        .unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    client.create_topic("t", 1).await.unwrap();
    produce(&client, "t", 100).await;

    let config = ConsumerConfig {
        group: Some("g".into()),
        commit_mode: CommitMode::After,
        start_from: StartFrom::Committed,
        ..Default::default()
    };
    let mut consumer = Consumer::new(client.clone(), config.clone()).await.unwrap();
    consumer.assign(&[("t".into(), 0)]).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 40 {
        for r in consumer.poll(Duration::from_millis(500)).await.unwrap() {
            seen.push(r.offset);
        }
    }
    // Commit exactly 40 records' worth.
    consumer.seek("t", 0, 40);
    consumer.commit().await.unwrap();
    drop(consumer);

    let broker = broker.crash_and_restart().await.unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    let mut consumer = Consumer::new(client, config).await.unwrap();
    consumer.assign(&[("t".into(), 0)]).await.unwrap();
    assert_eq!(consumer.position("t", 0), Some(40));
    let mut rest = Vec::new();
    while rest.len() < 60 {
        let batch = consumer.poll(Duration::from_millis(500)).await.unwrap();
        assert!(
            !batch.is_empty(),
            "records after the committed offset must still be there"
        );
        rest.extend(batch.into_iter().map(|r| r.offset));
    }
    assert_eq!(rest, (40..100).collect::<Vec<u64>>());
}

#[tokio::test]
async fn acked_records_survive_an_in_process_crash() {
    let broker = EmbeddedBroker::start(BrokerConfig::ephemeral())
        .await
        .unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    client.create_topic("t", 3).await.unwrap();
    produce(&client, "t", 3000).await;
    let broker = broker.crash_and_restart().await.unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    let d = client.describe_topic("t").await.unwrap();
    let total: u64 = d.partitions.iter().map(|p| p.high_watermark).sum();
    assert_eq!(total, 3000);
    for p in &d.partitions {
        assert_eq!(
            p.durable_watermark, p.high_watermark,
            "recovery flushes what it keeps"
        );
    }
}

#[tokio::test]
async fn the_metrics_endpoint_serves_prometheus_text() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut config = BrokerConfig::ephemeral();
    config.http_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    let broker = EmbeddedBroker::start(config).await.unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    client.create_topic("t", 1).await.unwrap();
    produce(&client, "t", 10).await;
    let body = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    })
    .await
    .unwrap();
    assert!(body.contains("ferry_records_in_total"), "{body}");
    assert!(body.contains("ferry_produce_latency_seconds"), "{body}");
}
