//! Oversized and malformed requests get clear errors, and the broker keeps
//! serving everyone else.

mod support;

use ferry_broker::{BrokerConfig, EmbeddedBroker};
use ferry_proto::ErrorCode;
use ferry_proto::batch::BatchBuilder;
use ferry_proto::v1;
use support::Client;

fn batch(values: &[&[u8]]) -> bytes::Bytes {
    let mut b = BatchBuilder::new(ferry_proto::now_ms());
    for v in values {
        b.push(ferry_proto::now_ms(), None, Some(v), &[]);
    }
    b.finish()
}

fn produce_req(topic: &str, batch: bytes::Bytes) -> v1::ProduceRequest {
    v1::ProduceRequest {
        correlation_id: 1,
        topic: topic.into(),
        partition: 0,
        acks: v1::Acks::All as i32,
        batch,
    }
}

async fn start(max_batch: usize, max_request: usize) -> (EmbeddedBroker, Client) {
    let mut config = BrokerConfig::ephemeral();
    config.limits.max_batch_bytes = max_batch;
    config.limits.max_request_bytes = max_request;
    let broker = EmbeddedBroker::start(config).await.unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    client.create_topic("t", 1).await;
    (broker, client)
}

async fn assert_still_serving(client: &Client) {
    let mut raw = client.raw();
    let r = raw
        .produce(produce_req("t", batch(&[b"still-alive"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.error_code, 0, "{}", r.error_message);
}

#[tokio::test]
async fn a_corrupt_batch_is_rejected_with_corrupt_message_and_nothing_is_appended() {
    let (_broker, client) = start(1 << 20, 4 << 20).await;
    let mut raw = client.raw();
    let mut bad = batch(&[b"hello"]).to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let r = raw
        .produce(produce_req("t", bad.into()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ErrorCode::from_u32(r.error_code),
        ErrorCode::CorruptMessage,
        "{}",
        r.error_message
    );
    let garbage = raw
        .produce(produce_req(
            "t",
            bytes::Bytes::from_static(b"not a batch at all"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ErrorCode::from_u32(garbage.error_code),
        ErrorCode::CorruptMessage
    );
    assert_eq!(
        client.high_watermark("t", 0).await,
        0,
        "a rejected batch must not be appended"
    );
    assert_still_serving(&client).await;
}

#[tokio::test]
async fn a_batch_over_the_batch_limit_gets_message_too_large() {
    let (_broker, client) = start(64 * 1024, 4 << 20).await;
    let mut raw = client.raw();
    let big = vec![7u8; 100 * 1024];
    let r = raw
        .produce(produce_req("t", batch(&[&big])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ErrorCode::from_u32(r.error_code),
        ErrorCode::MessageTooLarge,
        "{}",
        r.error_message
    );
    assert_still_serving(&client).await;
}

#[tokio::test]
async fn a_request_over_the_request_limit_is_refused_unread() {
    let (_broker, client) = start(1 << 20, 1 << 20).await;
    let mut raw = client.raw();
    let huge = vec![1u8; 3 << 20];
    let status = raw
        .produce(produce_req("t", bytes::Bytes::from(huge)))
        .await
        .expect_err("an oversized request must fail");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status}");
    assert!(status.message().contains("too large"), "{status}");
    assert_still_serving(&client).await;
}

#[tokio::test]
async fn unknown_topics_partitions_and_bad_fields_get_definite_errors() {
    let (_broker, client) = start(1 << 20, 4 << 20).await;
    let mut raw = client.raw();
    let r = raw
        .produce(produce_req("nope", batch(&[b"x"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ErrorCode::from_u32(r.error_code),
        ErrorCode::UnknownTopicOrPartition
    );
    let mut req = produce_req("t", batch(&[b"x"]));
    req.partition = 9;
    let r = raw.produce(req).await.unwrap().into_inner();
    assert_eq!(
        ErrorCode::from_u32(r.error_code),
        ErrorCode::UnknownTopicOrPartition
    );
    let mut req = produce_req("t", batch(&[b"x"]));
    req.acks = 42;
    let r = raw.produce(req).await.unwrap().into_inner();
    assert_eq!(ErrorCode::from_u32(r.error_code), ErrorCode::InvalidRequest);
    let r = raw
        .fetch(v1::FetchRequest {
            partitions: vec![v1::FetchPartition {
                topic: "t".into(),
                partition: 0,
                offset: 0,
                max_bytes: 1024,
            }],
            max_wait_ms: 10 * 60 * 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ErrorCode::from_u32(r.error_code),
        ErrorCode::InvalidRequest,
        "a ten-minute long poll is over the limit"
    );
    let r = raw
        .fetch(v1::FetchRequest {
            partitions: vec![v1::FetchPartition {
                topic: "t".into(),
                partition: 0,
                offset: 999,
                max_bytes: 1024,
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ErrorCode::from_u32(r.partitions[0].error_code),
        ErrorCode::OffsetOutOfRange
    );
    for (name, parts, code) in [
        ("bad/name", 1, ErrorCode::InvalidTopic),
        ("__internal", 1, ErrorCode::InvalidTopic),
        ("zero", 0, ErrorCode::InvalidPartitions),
        ("many", 5000, ErrorCode::InvalidPartitions),
        ("t", 1, ErrorCode::TopicAlreadyExists),
    ] {
        let err = client.try_create_topic(name, parts).await.expect_err(name);
        assert_eq!(err, code, "{name}: {err:?}");
    }
    assert_still_serving(&client).await;
}

#[tokio::test]
async fn connections_past_the_limit_are_closed_and_the_others_keep_working() {
    let mut config = BrokerConfig::ephemeral();
    config.limits.max_connections = 2;
    let broker = EmbeddedBroker::start(config).await.unwrap();
    let addr = broker.addr_string();
    let a = Client::connect(&addr).await.unwrap();
    a.create_topic("t", 1).await;
    let b = Client::connect(&addr).await.unwrap();
    b.list_topics().await.unwrap();
    // The third connection is accepted by the kernel and closed at once.
    let third_refused = match Client::connect(&addr).await {
        Ok(c) => c.list_topics().await.is_err(),
        Err(_) => true,
    };
    assert!(third_refused, "a third connection must be refused");
    a.list_topics().await.unwrap();
    b.list_topics().await.unwrap();
}

/// A gRPC slowloris: a connection that starts the HTTP/2 preface, or a
/// frame, and never finishes it is closed after
/// `request_header_timeout_ms`; one idle between frames stays open, and
/// a neighbour keeps being served.
#[tokio::test]
async fn an_http2_frame_that_does_not_arrive_within_the_header_timeout_closes_its_connection() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let broker = EmbeddedBroker::start(BrokerConfig {
        request_header_timeout_ms: 300,
        ..BrokerConfig::ephemeral()
    })
    .await
    .unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    client.create_topic("t", 1).await;
    let addr = broker.addr();
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
    let closed_after = |sent: Vec<u8>| {
        std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(&sent).unwrap();
            let started = Instant::now();
            let mut buf = [0u8; 4096];
            // Drain what the server sends (its SETTINGS) until it closes.
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return started.elapsed(),
                    Ok(_) => {}
                }
            }
        })
    };
    let half_preface = closed_after(PREFACE[..10].to_vec());
    let half_frame = closed_after([PREFACE, SETTINGS, &[0, 0, 8, 6]].concat());
    // Whole preface and SETTINGS, then silence: not a slowloris.
    let mut idle = std::net::TcpStream::connect(addr).unwrap();
    idle.write_all(&[PREFACE, SETTINGS].concat()).unwrap();
    for t in [half_preface, half_frame] {
        let waited = tokio::task::spawn_blocking(move || t.join().unwrap())
            .await
            .unwrap();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert!(waited < Duration::from_secs(20), "never closed");
    }
    assert_still_serving(&client).await;
    // The idle one is still open: a read finds the server's frames, or
    // waits, but not the end of the stream.
    idle.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match idle.read(&mut buf) {
            Ok(0) => panic!("the idle connection was closed"),
            Ok(_) => continue,
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "{e}"
                );
                break;
            }
        }
    }
}
