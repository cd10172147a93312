//! Quotas on both front ends: a principal over its produce or fetch
//! byte rate is served, told its throttle, and held back for it; a
//! principal without a quota is never throttled, even beside one in debt.
//! Only lower bounds on time are asserted (a throttle is at least this
//! long); how closely a throttled producer tracks its quota is measured
//! by `ferry bench quota`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_broker::auth::Credentials;
use ferry_broker::quota::QuotaConfig;
use ferry_broker::{BrokerConfig, EmbeddedBroker};
use ferry_proto::batch::BatchBuilder;
use ferry_proto::v1;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use tonic::transport::Channel;

mod support;
use support::kafka::Raw;

fn quotas(specs: &[&str]) -> QuotaConfig {
    let mut q = QuotaConfig::default();
    for s in specs {
        q.add_spec(s).unwrap();
    }
    q
}

fn batch_of(bytes: usize) -> Bytes {
    let mut b = BatchBuilder::new(1);
    b.push(1, None, Some(&vec![7u8; bytes]), &[]);
    b.finish()
}

#[tokio::test]
async fn grpc_throttles_the_principal_over_its_quota_and_not_the_one_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials.toml");
    let mut creds = Credentials::default();
    let slow = creds.add_token("slow").unwrap();
    let free = creds.add_token("free").unwrap();
    creds.save(&file).unwrap();
    let broker = EmbeddedBroker::start(BrokerConfig {
        credentials_file: Some(file),
        super_users: vec!["slow".into(), "free".into()],
        // slow: 10 KiB/s produce, 100 KiB/s fetch; nothing for anyone else.
        quotas: quotas(&[
            "slow:producer_byte_rate=10240",
            "slow:consumer_byte_rate=102400",
        ]),
        ..BrokerConfig::ephemeral()
    })
    .await
    .unwrap();
    broker.state().create_topic("t", 1).unwrap();
    let channel = Channel::from_shared(format!("http://{}", broker.addr_string()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = v1::ferry_client::FerryClient::new(channel);
    fn req<T>(token: &str, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    }
    let produce = |n| v1::ProduceRequest {
        topic: "t".into(),
        partition: 0,
        batch: batch_of(n),
        acks: v1::Acks::All as i32,
        correlation_id: 1,
    };

    // 20 KiB against a 5 KiB burst: about 1.5 s of debt. The response
    // is held back that long and says so; the record is appended.
    let started = Instant::now();
    let r = raw
        .produce(req(&slow, produce(20 * 1024)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    assert!(r.throttle_time_ms >= 1000, "{r:?}");
    assert!(started.elapsed() >= Duration::from_millis(u64::from(r.throttle_time_ms)));

    // The free principal, right after, with far more bytes: no throttle.
    for _ in 0..3 {
        let r = raw
            .produce(req(&free, produce(64 * 1024)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((r.error_code, r.throttle_time_ms), (0, 0), "{r:?}");
    }

    // Fetching the 212 KiB (1.6 s of slow's fetch debt): free is not throttled, slow is (its own fetch
    // quota), and both get the records.
    let fetch = || v1::FetchRequest {
        partitions: vec![v1::FetchPartition {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            max_bytes: 0,
        }],
        max_bytes: 0,
        max_wait_ms: 0,
        min_bytes: 1,
        isolation: v1::IsolationLevel::ReadUncommitted as i32,
    };
    let r = raw.fetch(req(&free, fetch())).await.unwrap().into_inner();
    assert_eq!(r.throttle_time_ms, 0, "{}", r.error_message);
    assert!(!r.partitions[0].records.is_empty());
    let started = Instant::now();
    let r = raw.fetch(req(&slow, fetch())).await.unwrap().into_inner();
    assert!(!r.partitions[0].records.is_empty());
    assert!(r.throttle_time_ms > 0, "{r:?}");
    assert!(started.elapsed() >= Duration::from_millis(u64::from(r.throttle_time_ms)));
    assert_eq!(
        broker.state().topic("t").unwrap().partitions[0]
            .log
            .next_offset(),
        4,
        "every produce was appended, throttled or not"
    );
}

#[tokio::test]
async fn kafka_reports_the_throttle_at_once_and_mutes_the_connection_for_it() {
    // Without authentication every client is ANONYMOUS and shares its
    // quota.
    let broker = EmbeddedBroker::start(BrokerConfig {
        quotas: quotas(&["ANONYMOUS:producer_byte_rate=10240"]),
        ..BrokerConfig::ephemeral()
    })
    .await
    .unwrap();
    broker.state().create_topic("t", 1).unwrap();
    let addr = broker.kafka_addr().unwrap();
    std::thread::spawn(move || {
        let mut k = Raw::connect(addr);
        let mut pd = produce_request::PartitionProduceData::default();
        pd.index = 0;
        pd.records = Some(batch_of(20 * 1024));
        let mut td = produce_request::TopicProduceData::default();
        td.name = TopicName(StrBytes::from_static_str("t"));
        td.partition_data = vec![pd];
        let mut req = ProduceRequest::default();
        req.acks = -1;
        req.timeout_ms = 10_000;
        req.topic_data = vec![td];

        let started = Instant::now();
        let r = k.call(9, &req);
        let throttle = r.throttle_time_ms;
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
        assert!(throttle >= 1000, "{r:?}");
        // The next request on the connection, however small, is read
        // only once the throttle has passed.
        let v = k.call(3, &ApiVersionsRequest::default());
        assert_eq!(v.error_code, 0);
        assert!(started.elapsed() >= Duration::from_millis(throttle as u64));

        // Fetch has no quota here: no throttle.
        let mut fp = fetch_request::FetchPartition::default();
        fp.partition = 0;
        fp.partition_max_bytes = 1 << 20;
        let mut ft = fetch_request::FetchTopic::default();
        ft.topic = TopicName(StrBytes::from_static_str("t"));
        ft.partitions = vec![fp];
        let mut fetch = FetchRequest::default();
        fetch.max_bytes = 1 << 20;
        fetch.topics = vec![ft];
        fetch.replica_id = BrokerId(-1);
        let f = k.call(4, &fetch);
        assert_eq!(f.throttle_time_ms, 0);
        assert!(f.responses[0].partitions[0].records.is_some());
    })
    .join()
    .unwrap();
}
