//! The Kafka front end at the byte level: the version handshake, every
//! advertised key and version answering, bad input closing only its own
//! connection, and the transaction rules Kafka clients rely on (a write to
//! an unregistered partition refused; the epoch kept across transactions
//! for EndTxn v0–4 clients, with sequences continuing).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferry_broker::{BrokerConfig, EmbeddedBroker};
use ferry_proto::batch::{BatchBuilder, ProducerStamp};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};

mod support;
use support::kafka::{Raw, sasl_plain};

async fn broker() -> EmbeddedBroker {
    EmbeddedBroker::start(BrokerConfig::ephemeral())
        .await
        .unwrap()
}

fn kafka(b: &EmbeddedBroker) -> std::net::SocketAddr {
    b.kafka_addr().expect("ephemeral brokers serve Kafka")
}

fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().unwrap()
}

#[tokio::test]
async fn api_versions_above_the_maximum_is_answered_at_v0_with_unsupported_version_and_the_ranges()
{
    let b = broker().await;
    let addr = kafka(&b);
    blocking(move || {
        let mut c = Raw::connect(addr);
        // A version from the future: its header is not decoded, only the
        // correlation id is echoed, in a v0 response.
        let mut body = BytesMut::new();
        body.put_i16(ApiKey::ApiVersions as i16);
        body.put_i16(99);
        body.put_i32(42);
        body.put_slice(b"\x00\x00whatever follows");
        c.send_frame(&body);
        let mut frame = c.read_frame().expect("answered");
        assert_eq!(frame.get_i32(), 42);
        let resp = ApiVersionsResponse::decode(&mut frame, 0).unwrap();
        assert_eq!(resp.error_code, 35, "UNSUPPORTED_VERSION");
        let max = resp
            .api_keys
            .iter()
            .find(|k| k.api_key == ApiKey::ApiVersions as i16)
            .unwrap()
            .max_version;
        // The client retries at our maximum, on the same connection.
        let ok = c.call(max, &ApiVersionsRequest::default());
        assert_eq!(ok.error_code, 0);
        let produce = ok
            .api_keys
            .iter()
            .find(|k| k.api_key == ApiKey::Produce as i16)
            .unwrap();
        assert_eq!(
            (produce.min_version, produce.max_version),
            (0, 11),
            "Produce from 0 (older librdkafka enables compression only then) to 11 (no KIP-890 part 2)"
        );
    });
}

/// A default request of `key` at `version`, encoded, or `None` for a key
/// the test has no type for.
fn default_request(c: &mut Raw, key: ApiKey, version: i16) -> Option<(i32, BytesMut)> {
    if key == ApiKey::Produce {
        // acks = 0 would get no response at all.
        let mut req = ProduceRequest::default();
        req.acks = -1;
        return Some(c.encode(version, &req));
    }
    macro_rules! enc {
        ($($k:ident => $t:ty),* $(,)?) => {
            match key {
                $(ApiKey::$k => Some(c.encode(version, &<$t>::default())),)*
                _ => None,
            }
        };
    }
    enc! {
        Fetch => FetchRequest, ListOffsets => ListOffsetsRequest,
        Metadata => MetadataRequest, OffsetCommit => OffsetCommitRequest,
        OffsetFetch => OffsetFetchRequest, FindCoordinator => FindCoordinatorRequest,
        JoinGroup => JoinGroupRequest, Heartbeat => HeartbeatRequest,
        LeaveGroup => LeaveGroupRequest, SyncGroup => SyncGroupRequest,
        DescribeGroups => DescribeGroupsRequest, ListGroups => ListGroupsRequest,
        ApiVersions => ApiVersionsRequest, CreateTopics => CreateTopicsRequest,
        DeleteTopics => DeleteTopicsRequest, InitProducerId => InitProducerIdRequest,
        OffsetForLeaderEpoch => OffsetForLeaderEpochRequest,
        AddPartitionsToTxn => AddPartitionsToTxnRequest, AddOffsetsToTxn => AddOffsetsToTxnRequest,
        EndTxn => EndTxnRequest, TxnOffsetCommit => TxnOffsetCommitRequest,
        DescribeConfigs => DescribeConfigsRequest, DeleteGroups => DeleteGroupsRequest,
        CreatePartitions => CreatePartitionsRequest, DescribeProducers => DescribeProducersRequest,
        DescribeCluster => DescribeClusterRequest, DescribeTransactions => DescribeTransactionsRequest,
        ListTransactions => ListTransactionsRequest,
        DescribeAcls => DescribeAclsRequest, CreateAcls => CreateAclsRequest,
        DeleteAcls => DeleteAclsRequest,
        SaslHandshake => SaslHandshakeRequest, SaslAuthenticate => SaslAuthenticateRequest,
    }
}

#[tokio::test]
async fn every_advertised_key_and_version_answers_a_default_request_on_the_same_connection() {
    let b = broker().await;
    let addr = kafka(&b);
    blocking(move || {
        let mut c = Raw::connect(addr);
        let versions = c.call(3, &ApiVersionsRequest::default());
        let mut answered = 0;
        for k in &versions.api_keys {
            let key = ApiKey::try_from(k.api_key).unwrap();
            // Produce v0–2 are advertised for old clients and refused.
            let min = if key == ApiKey::Produce {
                3
            } else {
                k.min_version
            };
            for v in min..=k.max_version {
                let (correlation_id, buf) = default_request(&mut c, key, v)
                    .unwrap_or_else(|| panic!("no request type for {key:?}"));
                c.send_frame(&buf);
                let mut frame = c
                    .read_frame()
                    .unwrap_or_else(|| panic!("{key:?} v{v} closed the connection"));
                let header =
                    ResponseHeader::decode(&mut frame, key.response_header_version(v)).unwrap();
                assert_eq!(header.correlation_id, correlation_id, "{key:?} v{v}");
                answered += 1;
            }
        }
        assert!(answered > 150, "{answered} key/version pairs answered");
    });
}

#[tokio::test]
async fn bad_frames_close_only_their_own_connection() {
    let b = broker().await;
    let addr = kafka(&b);
    blocking(move || {
        let mut good = Raw::connect(addr);
        assert_eq!(good.call(3, &ApiVersionsRequest::default()).error_code, 0);

        // A size over the request limit, read before anything allocates.
        let mut c = Raw::connect(addr);
        c.stream.write_all(&i32::MAX.to_be_bytes()).unwrap();
        assert!(c.closed(), "an oversized frame closes the connection");
        // A negative size.
        let mut c = Raw::connect(addr);
        c.stream.write_all(&(-5i32).to_be_bytes()).unwrap();
        assert!(c.closed());
        // An unknown API key.
        let mut c = Raw::connect(addr);
        c.send_frame(&[0x7f, 0x00, 0, 0, 0, 0, 0, 1]);
        assert!(c.closed(), "an unknown key closes the connection");
        // A version outside the advertised range.
        let mut c = Raw::connect(addr);
        c.send_frame(&[0, 3, 0, 99, 0, 0, 0, 1, 0, 0]);
        assert!(c.closed(), "Metadata v99 closes the connection");
        // Produce v2 (message format v0/v1).
        let mut c = Raw::connect(addr);
        c.send_frame(&[0, 0, 0, 2, 0, 0, 0, 1, 0, 0]);
        assert!(c.closed(), "Produce v2 is refused");
        // A body that does not decode: Metadata v1 with a topic count
        // far past the bytes that follow.
        let mut c = Raw::connect(addr);
        let mut body = BytesMut::new();
        body.put_i16(ApiKey::Metadata as i16);
        body.put_i16(1);
        body.put_i32(7);
        body.put_i16(-1);
        body.put_i32(3);
        body.put_slice(b"\x00\x01");
        c.send_frame(&body);
        assert!(c.closed(), "a truncated body closes the connection");
        // A count of two billion topics in a 14-byte body: refused before
        // the codec sizes a vector from it (which would abort the broker).
        let mut c = Raw::connect(addr);
        let mut body = BytesMut::new();
        body.put_i16(ApiKey::Metadata as i16);
        body.put_i16(1);
        body.put_i32(8);
        body.put_i16(-1);
        body.put_i32(i32::MAX);
        c.send_frame(&body);
        assert!(c.closed(), "an impossible count closes the connection");
        // The same with a compact (flexible) array count.
        let mut c = Raw::connect(addr);
        let mut body = BytesMut::new();
        body.put_i16(ApiKey::Metadata as i16);
        body.put_i16(12);
        body.put_i32(9);
        body.put_i16(-1);
        body.put_u8(0); // header tagged fields
        body.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        c.send_frame(&body);
        assert!(
            c.closed(),
            "an impossible compact count closes the connection"
        );

        // The first connection never noticed.
        assert_eq!(good.call(3, &ApiVersionsRequest::default()).error_code, 0);
        let md = good.call(12, &MetadataRequest::default());
        assert_eq!(md.brokers.len(), 1);
    });
}

fn produce_request(topic: &str, partition: i32, batch: Bytes, tid: Option<&str>) -> ProduceRequest {
    let mut pd = produce_request::PartitionProduceData::default();
    pd.index = partition;
    pd.records = Some(batch);
    let mut td = produce_request::TopicProduceData::default();
    td.name = TopicName(StrBytes::from_string(topic.to_string()));
    td.partition_data = vec![pd];
    let mut req = ProduceRequest::default();
    req.acks = -1;
    req.timeout_ms = 10_000;
    req.transactional_id = tid.map(|t| TransactionalId(StrBytes::from_string(t.to_string())));
    req.topic_data = vec![td];
    req
}

fn txn_batch(pid: i64, epoch: i16, seq: i32, value: &[u8]) -> Bytes {
    let mut b = BatchBuilder::new(1_000)
        .producer(ProducerStamp {
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
        })
        .transactional(true);
    b.push(1_000, None, Some(value), &[]);
    b.finish()
}

fn partition_error(resp: &ProduceResponse) -> i16 {
    resp.responses[0].partition_responses[0].error_code
}

#[tokio::test]
async fn transactions_of_epoch_keeping_clients_refuse_unregistered_partitions_and_continue_sequences()
 {
    let b = broker().await;
    b.state().create_topic("t", 2).unwrap();
    let addr = kafka(&b);
    blocking(move || {
        let mut c = Raw::connect(addr);
        let tid = "tv1";
        let mut init = InitProducerIdRequest::default();
        init.transactional_id = Some(TransactionalId(StrBytes::from_static_str("tv1")));
        init.transaction_timeout_ms = 60_000;
        let id = c.call(1, &init);
        assert_eq!(id.error_code, 0);
        let (pid, epoch) = (id.producer_id.0, id.producer_epoch);

        // Not added to the transaction: refused (KIP-890 part 1).
        let r = c.call(
            7,
            &produce_request("t", 0, txn_batch(pid, epoch, 0, b"early"), Some(tid)),
        );
        assert_eq!(partition_error(&r), 48, "INVALID_TXN_STATE");

        let add = |c: &mut Raw, epoch: i16| {
            let mut t = add_partitions_to_txn_request::AddPartitionsToTxnTopic::default();
            t.name = TopicName(StrBytes::from_static_str("t"));
            t.partitions = vec![0];
            let mut req = AddPartitionsToTxnRequest::default();
            req.v3_and_below_transactional_id = TransactionalId(StrBytes::from_static_str("tv1"));
            req.v3_and_below_producer_id = ProducerId(pid);
            req.v3_and_below_producer_epoch = epoch;
            req.v3_and_below_topics = vec![t];
            let r = c.call(0, &req);
            r.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code
        };
        let end = |c: &mut Raw, epoch: i16, commit: bool| {
            let mut req = EndTxnRequest::default();
            req.transactional_id = TransactionalId(StrBytes::from_static_str("tv1"));
            req.producer_id = ProducerId(pid);
            req.producer_epoch = epoch;
            req.committed = commit;
            c.call(1, &req).error_code
        };
        assert_eq!(add(&mut c, epoch), 0);
        let r = c.call(
            7,
            &produce_request("t", 0, txn_batch(pid, epoch, 0, b"one"), Some(tid)),
        );
        assert_eq!(partition_error(&r), 0);
        assert_eq!(end(&mut c, epoch, true), 0);
        // A retried EndTxn at the same epoch gets the same answer.
        assert_eq!(end(&mut c, epoch, true), 0);
        assert_eq!(
            end(&mut c, epoch, false),
            48,
            "the other decision is refused"
        );

        // The next transaction, at the same epoch, with the sequence
        // continuing from 1, as librdkafka sends it.
        assert_eq!(add(&mut c, epoch), 0, "the epoch was kept");
        let r = c.call(
            7,
            &produce_request("t", 0, txn_batch(pid, epoch, 1, b"two"), Some(tid)),
        );
        assert_eq!(
            partition_error(&r),
            0,
            "sequences continue across transactions"
        );
        // A replay of the first transaction's batch is a duplicate, not a
        // write into this one.
        let r = c.call(
            7,
            &produce_request("t", 0, txn_batch(pid, epoch, 0, b"one"), Some(tid)),
        );
        assert_ne!(r.responses[0].partition_responses[0].base_offset, 2);
        assert_eq!(end(&mut c, epoch, false), 0);

        // read_committed sees "one" only.
        let mut fp = fetch_request::FetchPartition::default();
        fp.partition = 0;
        fp.fetch_offset = 0;
        fp.partition_max_bytes = 1 << 20;
        let mut ft = fetch_request::FetchTopic::default();
        ft.topic = TopicName(StrBytes::from_static_str("t"));
        ft.partitions = vec![fp];
        let mut fetch = FetchRequest::default();
        fetch.max_wait_ms = 0;
        fetch.min_bytes = 0;
        fetch.max_bytes = 1 << 20;
        fetch.isolation_level = 1;
        fetch.topics = vec![ft];
        let resp = c.call(11, &fetch);
        let p = &resp.responses[0].partitions[0];
        assert_eq!(p.error_code, 0);
        let aborted = p.aborted_transactions.as_ref().unwrap();
        assert_eq!(
            aborted.len(),
            1,
            "the second transaction is listed as aborted"
        );
        assert_eq!(aborted[0].producer_id.0, pid);
        assert_eq!(p.last_stable_offset, p.high_watermark);
    });
}

#[tokio::test]
async fn create_partitions_grows_a_topic_durably_and_refuses_to_shrink_it() {
    let b = broker().await;
    b.state().create_topic("grow", 2).unwrap();
    let addr = kafka(&b);
    let grow = move |count: i32| {
        blocking(move || {
            let mut c = Raw::connect(addr);
            let mut t = create_partitions_request::CreatePartitionsTopic::default();
            t.name = TopicName(StrBytes::from_static_str("grow"));
            t.count = count;
            let mut req = CreatePartitionsRequest::default();
            req.topics = vec![t];
            req.timeout_ms = 10_000;
            c.call(3, &req).results[0].error_code
        })
    };
    assert_eq!(grow(5), 0);
    assert_eq!(
        grow(3),
        37,
        "INVALID_PARTITIONS: partitions are never removed"
    );
    // Records go to a new partition, and the count survives a restart.
    b.state()
        .append("grow", 4, &one_record(b"in four"))
        .unwrap();
    let b = b.restart().await.unwrap();
    let topic = b.state().topic("grow").unwrap();
    assert_eq!(topic.partitions.len(), 5);
    assert_eq!(topic.partitions[4].log.next_offset(), 1);
}

fn one_record(value: &[u8]) -> Bytes {
    let mut b = BatchBuilder::new(1);
    b.push(1, None, Some(value), &[]);
    b.finish()
}

/// A slowloris: a client that starts a request and never finishes it is
/// closed after `request_header_timeout_ms`, while an idle connection that
/// has not started one stays open, and a neighbour keeps being served.
#[tokio::test]
async fn a_request_that_does_not_arrive_within_the_header_timeout_closes_its_connection() {
    let b = EmbeddedBroker::start(BrokerConfig {
        request_header_timeout_ms: 300,
        ..BrokerConfig::ephemeral()
    })
    .await
    .unwrap();
    let addr = kafka(&b);
    blocking(move || {
        let mut idle = Raw::connect(addr);
        let mut slow = Raw::connect(addr);
        // The size and half a header, then nothing.
        slow.stream.write_all(&[0, 0, 0, 10, 0, 18]).unwrap();
        let started = std::time::Instant::now();
        assert!(slow.closed(), "the slow request's connection is closed");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(15),
            "closed after {waited:?}"
        );
        // Dripping a byte at a time does not reset the clock.
        let mut drip = Raw::connect(addr);
        drip.stream.write_all(&[0, 0, 0, 10]).unwrap();
        let started = std::time::Instant::now();
        let mut closed = false;
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(50));
            if drip.stream.write_all(&[0]).is_err() {
                closed = true;
                break;
            }
        }
        assert!(closed || drip.closed(), "a dripping request is closed");
        assert!(started.elapsed() < Duration::from_secs(15));
        // Idle longer than the header timeout, then a whole request: served.
        assert_eq!(idle.call(3, &ApiVersionsRequest::default()).error_code, 0);
    });
}

/// With credentials, a connection may send only ApiVersions and the SASL
/// requests until it authenticates: anything else closes it. PLAIN with
/// the right password opens the rest; a wrong one is answered with
/// SASL_AUTHENTICATION_FAILED and the connection closes.
#[tokio::test]
async fn an_unauthenticated_kafka_connection_may_only_authenticate() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials.toml");
    let mut creds = ferry_broker::auth::Credentials::default();
    creds
        .add_scram(
            "alice",
            ferry_broker::auth::Mechanism::ScramSha256,
            b"pencil",
        )
        .unwrap();
    creds.save(&file).unwrap();
    let b = EmbeddedBroker::start(BrokerConfig {
        credentials_file: Some(file),
        super_users: vec!["alice".into()],
        ..BrokerConfig::ephemeral()
    })
    .await
    .unwrap();
    let addr = kafka(&b);
    blocking(move || {
        let plain = |c: &mut Raw, password: &str| {
            let mut hs = SaslHandshakeRequest::default();
            hs.mechanism = StrBytes::from_static_str("PLAIN");
            let resp = c.call(1, &hs);
            assert_eq!(resp.error_code, 0);
            let names: Vec<&str> = resp.mechanisms.iter().map(|m| m.as_str()).collect();
            assert_eq!(names, ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]);
            let mut auth = SaslAuthenticateRequest::default();
            auth.auth_bytes = Bytes::from(format!("\0alice\0{password}"));
            c.call(2, &auth)
        };

        let mut c = Raw::connect(addr);
        assert_eq!(c.call(3, &ApiVersionsRequest::default()).error_code, 0);
        let (_, buf) = c.encode(12, &MetadataRequest::default());
        c.send_frame(&buf);
        assert!(
            c.closed(),
            "Metadata before authenticating closes the connection"
        );

        let mut c = Raw::connect(addr);
        assert_eq!(plain(&mut c, "pencil").error_code, 0);
        let meta = c.call(12, &MetadataRequest::default());
        assert_eq!(
            meta.brokers.len(),
            1,
            "authenticated, the connection is served"
        );

        let mut c = Raw::connect(addr);
        let refused = plain(&mut c, "pencil!");
        assert_eq!(refused.error_code, 58, "SASL_AUTHENTICATION_FAILED");
        assert!(refused.error_message.is_some());
        assert!(c.closed(), "a failed authentication closes the connection");
    });
}

/// Thousands of connection attempts past the limit: each is closed at
/// once, the connections held keep being served, and once they close the
/// listener takes new ones again.
#[tokio::test]
async fn a_flood_of_connections_past_the_limit_is_refused_and_the_listener_recovers() {
    let mut config = BrokerConfig::ephemeral();
    config.limits.max_connections = 16;
    let b = EmbeddedBroker::start(config).await.unwrap();
    let addr = kafka(&b);
    blocking(move || {
        let mut held: Vec<Raw> = (0..16).map(|_| Raw::connect(addr)).collect();
        for c in &mut held {
            assert_eq!(c.call(3, &ApiVersionsRequest::default()).error_code, 0);
        }
        for i in 0..2000 {
            let Ok(mut s) = TcpStream::connect(addr) else {
                continue;
            };
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut byte = [0u8; 1];
            // Closed by the broker: end of stream, or a reset.
            match s.read(&mut byte) {
                Ok(0) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                    ) => {}
                other => panic!("connection {i} past the limit was not closed: {other:?}"),
            }
        }
        for c in &mut held {
            assert_eq!(c.call(3, &ApiVersionsRequest::default()).error_code, 0);
        }
        drop(held);
        // The permits come back as the held connections close.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut c = Raw::connect(addr);
            let (_, buf) = c.encode(3, &ApiVersionsRequest::default());
            c.send_frame(&buf);
            if c.read_frame().is_some() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the listener did not recover"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

/// Guessing: a hundred wrong passwords in a row are each refused with
/// SASL_AUTHENTICATION_FAILED and close their connection; nothing locks
/// the user out or slows the broker for others, and the right password
/// still opens a connection afterwards. (The comparison itself is
/// constant-time, `subtle::ConstantTimeEq`; timing is not measured in a
/// test on a shared machine.)
#[tokio::test]
async fn many_wrong_passwords_are_each_refused_and_the_right_one_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials.toml");
    let mut creds = ferry_broker::auth::Credentials::default();
    creds
        .add_scram(
            "alice",
            ferry_broker::auth::Mechanism::ScramSha256,
            b"correct horse",
        )
        .unwrap();
    creds.save(&file).unwrap();
    let b = EmbeddedBroker::start(BrokerConfig {
        credentials_file: Some(file),
        super_users: vec!["alice".into()],
        ..BrokerConfig::ephemeral()
    })
    .await
    .unwrap();
    let addr = b.kafka_addr().unwrap();
    tokio::task::spawn_blocking(move || {
        // A connection authenticated before the guessing keeps working.
        let mut kept = Raw::connect(addr);
        assert_eq!(sasl_plain(&mut kept, "alice", "correct horse"), 0);
        for i in 0..100 {
            let mut c = Raw::connect(addr);
            let guess = format!("guess-{i}");
            assert_eq!(sasl_plain(&mut c, "alice", &guess), 58, "{guess}");
            assert!(c.closed(), "{guess}: the connection stays open");
        }
        let mut c = Raw::connect(addr);
        assert_eq!(sasl_plain(&mut c, "alice", "correct horse"), 0);
        assert_eq!(c.call(12, &MetadataRequest::default()).brokers.len(), 1);
        assert_eq!(kept.call(12, &MetadataRequest::default()).brokers.len(), 1);
    })
    .await
    .unwrap();
}
