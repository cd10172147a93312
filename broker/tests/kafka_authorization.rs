//! The ACL matrix of the Kafka front end: every API the listener serves,
//! sent by a connection that has not authenticated, by a principal no ACL
//! allows, and by one whose ACLs allow everything. The unauthenticated
//! connection is closed; the denied principal gets the authorization error
//! of the resource each API touches (topic 29, group 30, cluster 31,
//! transactional id 53) or an empty listing, and its requests change
//! nothing: the log, the committed offsets, the groups, the open
//! transaction and the ACLs are as they were. DescribeCluster, like
//! Metadata's broker list, is open to every authenticated principal.

use bytes::Bytes;
use ferry_broker::auth::{Credentials, Mechanism};
use ferry_broker::{BrokerConfig, EmbeddedBroker};
use ferry_proto::batch::{BatchBuilder, ProducerStamp};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

mod support;
use support::kafka::{Raw, sasl_plain};

const TOPIC_DENIED: i16 = 29;
const GROUP_DENIED: i16 = 30;
const CLUSTER_DENIED: i16 = 31;
const TXN_DENIED: i16 = 53;
const DENIALS: [i16; 4] = [TOPIC_DENIED, GROUP_DENIED, CLUSTER_DENIED, TXN_DENIED];

/// APIs any authenticated principal may call, as in Kafka: they describe
/// the broker itself, as Metadata's broker list does.
const OPEN: [ApiKey; 1] = [ApiKey::DescribeCluster];

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn topic() -> TopicName {
    TopicName(s("t"))
}

fn group() -> GroupId {
    GroupId(s("g"))
}

fn txn_id() -> TransactionalId {
    TransactionalId(s("tx"))
}

fn plain_batch(value: &[u8]) -> Bytes {
    let mut b = BatchBuilder::new(1);
    b.push(1, None, Some(value), &[]);
    b.finish()
}

fn produce(records: Bytes, tid: Option<TransactionalId>) -> ProduceRequest {
    let mut pd = produce_request::PartitionProduceData::default();
    pd.index = 0;
    pd.records = Some(records);
    let mut td = produce_request::TopicProduceData::default();
    td.name = topic();
    td.partition_data = vec![pd];
    let mut req = ProduceRequest::default();
    req.acks = -1;
    req.timeout_ms = 10_000;
    req.transactional_id = tid;
    req.topic_data = vec![td];
    req
}

/// One API's request, sent by a principal: the error codes of its
/// response that name a resource, and how many entries a listing held.
type Probe = fn(&mut Raw, &Ids) -> Answer;

#[derive(Debug)]
struct Answer {
    codes: Vec<i16>,
    listed: Option<usize>,
}

fn codes(codes: Vec<i16>) -> Answer {
    Answer {
        codes,
        listed: None,
    }
}

/// A listing: no error code of its own to refuse with, only entries
/// (a failed listing counts as one that showed something).
fn listing(error_code: i16, entries: usize) -> Answer {
    Answer {
        codes: Vec::new(),
        listed: Some(if error_code == 0 { entries } else { usize::MAX }),
    }
}

/// The open transaction the admin left, for requests that name it.
struct Ids {
    pid: i64,
    epoch: i16,
}

fn probes() -> Vec<(ApiKey, Probe)> {
    vec![
        (ApiKey::Produce, |c, _| {
            let r = c.call(9, &produce(plain_batch(b"x"), None));
            codes(vec![r.responses[0].partition_responses[0].error_code])
        }),
        (ApiKey::Fetch, |c, _| {
            let mut p = fetch_request::FetchPartition::default();
            p.partition = 0;
            p.partition_max_bytes = 1 << 20;
            let mut t = fetch_request::FetchTopic::default();
            t.topic = topic();
            t.partitions = vec![p];
            let mut req = FetchRequest::default();
            req.replica_id = BrokerId(-1);
            req.max_bytes = 1 << 20;
            req.topics = vec![t];
            let r = c.call(12, &req);
            codes(vec![r.responses[0].partitions[0].error_code])
        }),
        (ApiKey::ListOffsets, |c, _| {
            let mut p = list_offsets_request::ListOffsetsPartition::default();
            p.partition_index = 0;
            p.timestamp = -1;
            let mut t = list_offsets_request::ListOffsetsTopic::default();
            t.name = topic();
            t.partitions = vec![p];
            let mut req = ListOffsetsRequest::default();
            req.replica_id = BrokerId(-1);
            req.topics = vec![t];
            let r = c.call(7, &req);
            codes(vec![r.topics[0].partitions[0].error_code])
        }),
        (ApiKey::Metadata, |c, _| {
            let mut t = metadata_request::MetadataRequestTopic::default();
            t.name = Some(topic());
            let mut req = MetadataRequest::default();
            req.topics = Some(vec![t]);
            let named = c.call(12, &req);
            // Every topic: a listing, of what the caller may describe.
            let all = c.call(12, &MetadataRequest::default());
            Answer {
                codes: vec![named.topics[0].error_code],
                listed: Some(all.topics.len()),
            }
        }),
        (ApiKey::OffsetCommit, |c, _| {
            let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
            p.partition_index = 0;
            p.committed_offset = 1;
            let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
            t.name = topic();
            t.partitions = vec![p];
            let mut req = OffsetCommitRequest::default();
            req.group_id = group();
            req.generation_id_or_member_epoch = -1;
            req.topics = vec![t];
            let r = c.call(8, &req);
            codes(vec![r.topics[0].partitions[0].error_code])
        }),
        (ApiKey::OffsetFetch, |c, _| {
            let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
            t.name = topic();
            t.partition_indexes = vec![0];
            let mut req = OffsetFetchRequest::default();
            req.group_id = group();
            req.topics = Some(vec![t]);
            let r = c.call(7, &req);
            codes(vec![r.error_code])
        }),
        (ApiKey::FindCoordinator, |c, _| {
            let mut req = FindCoordinatorRequest::default();
            req.key = s("g");
            let g = c.call(3, &req);
            req.key = s("tx");
            req.key_type = 1;
            let t = c.call(3, &req);
            codes(vec![g.error_code, t.error_code])
        }),
        (ApiKey::JoinGroup, |c, _| {
            let mut p = join_group_request::JoinGroupRequestProtocol::default();
            p.name = s("range");
            p.metadata = Bytes::from_static(b"\0\0\0\0\0\0\0\0\0\0");
            let mut req = JoinGroupRequest::default();
            req.group_id = group();
            req.session_timeout_ms = 10_000;
            req.rebalance_timeout_ms = 10_000;
            req.protocol_type = s("consumer");
            req.protocols = vec![p];
            // v3: a member without an id joins at once, no second round.
            let r = c.call(3, &req);
            codes(vec![r.error_code])
        }),
        (ApiKey::Heartbeat, |c, _| {
            let mut req = HeartbeatRequest::default();
            req.group_id = group();
            req.generation_id = 1;
            req.member_id = s("m");
            codes(vec![c.call(4, &req).error_code])
        }),
        (ApiKey::LeaveGroup, |c, _| {
            let mut m = leave_group_request::MemberIdentity::default();
            m.member_id = s("m");
            let mut req = LeaveGroupRequest::default();
            req.group_id = group();
            req.members = vec![m];
            codes(vec![c.call(5, &req).error_code])
        }),
        (ApiKey::SyncGroup, |c, _| {
            let mut req = SyncGroupRequest::default();
            req.group_id = group();
            req.generation_id = 1;
            req.member_id = s("m");
            codes(vec![c.call(5, &req).error_code])
        }),
        (ApiKey::DescribeGroups, |c, _| {
            let mut req = DescribeGroupsRequest::default();
            req.groups = vec![group()];
            let r = c.call(5, &req);
            codes(vec![r.groups[0].error_code])
        }),
        (ApiKey::ListGroups, |c, _| {
            let r = c.call(4, &ListGroupsRequest::default());
            listing(r.error_code, r.groups.len())
        }),
        (ApiKey::CreateTopics, |c, _| {
            let mut t = create_topics_request::CreatableTopic::default();
            t.name = TopicName(s("new"));
            t.num_partitions = 1;
            t.replication_factor = 1;
            let mut req = CreateTopicsRequest::default();
            req.topics = vec![t];
            req.timeout_ms = 10_000;
            codes(vec![c.call(7, &req).topics[0].error_code])
        }),
        (ApiKey::DeleteTopics, |c, _| {
            let mut req = DeleteTopicsRequest::default();
            req.topic_names = vec![TopicName(s("doomed"))];
            req.timeout_ms = 10_000;
            codes(vec![c.call(5, &req).responses[0].error_code])
        }),
        (ApiKey::InitProducerId, |c, _| {
            let mut req = InitProducerIdRequest::default();
            req.transactional_id = Some(TransactionalId(s("other-tx")));
            req.transaction_timeout_ms = 60_000;
            req.producer_id = ProducerId(-1);
            req.producer_epoch = -1;
            let tx = c.call(4, &req);
            // An idempotent producer needs write on some topic (or
            // idempotent-write on the cluster).
            req.transactional_id = None;
            let idem = c.call(4, &req);
            codes(vec![tx.error_code, idem.error_code])
        }),
        (ApiKey::OffsetForLeaderEpoch, |c, _| {
            let mut p = offset_for_leader_epoch_request::OffsetForLeaderPartition::default();
            p.partition = 0;
            p.leader_epoch = 0;
            let mut t = offset_for_leader_epoch_request::OffsetForLeaderTopic::default();
            t.topic = topic();
            t.partitions = vec![p];
            let mut req = OffsetForLeaderEpochRequest::default();
            req.replica_id = BrokerId(-1);
            req.topics = vec![t];
            let r = c.call(4, &req);
            codes(vec![r.topics[0].partitions[0].error_code])
        }),
        (ApiKey::AddPartitionsToTxn, |c, ids| {
            let mut t = add_partitions_to_txn_request::AddPartitionsToTxnTopic::default();
            t.name = topic();
            t.partitions = vec![0];
            let mut req = AddPartitionsToTxnRequest::default();
            req.v3_and_below_transactional_id = txn_id();
            req.v3_and_below_producer_id = ProducerId(ids.pid);
            req.v3_and_below_producer_epoch = ids.epoch;
            req.v3_and_below_topics = vec![t];
            let r = c.call(3, &req);
            codes(vec![
                r.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code,
            ])
        }),
        (ApiKey::AddOffsetsToTxn, |c, ids| {
            let mut req = AddOffsetsToTxnRequest::default();
            req.transactional_id = txn_id();
            req.producer_id = ProducerId(ids.pid);
            req.producer_epoch = ids.epoch;
            req.group_id = group();
            codes(vec![c.call(3, &req).error_code])
        }),
        (ApiKey::EndTxn, |c, ids| {
            let mut req = EndTxnRequest::default();
            req.transactional_id = txn_id();
            req.producer_id = ProducerId(ids.pid);
            req.producer_epoch = ids.epoch;
            req.committed = false;
            codes(vec![c.call(3, &req).error_code])
        }),
        (ApiKey::TxnOffsetCommit, |c, ids| {
            let mut p = txn_offset_commit_request::TxnOffsetCommitRequestPartition::default();
            p.partition_index = 0;
            p.committed_offset = 1;
            let mut t = txn_offset_commit_request::TxnOffsetCommitRequestTopic::default();
            t.name = topic();
            t.partitions = vec![p];
            let mut req = TxnOffsetCommitRequest::default();
            req.transactional_id = txn_id();
            req.group_id = group();
            req.producer_id = ProducerId(ids.pid);
            req.producer_epoch = ids.epoch;
            req.topics = vec![t];
            let r = c.call(3, &req);
            codes(vec![r.topics[0].partitions[0].error_code])
        }),
        (ApiKey::DescribeAcls, |c, _| {
            let mut req = DescribeAclsRequest::default();
            req.resource_type_filter = 1; // any
            req.pattern_type_filter = 1; // any
            req.operation = 1; // any
            req.permission_type = 1; // any
            codes(vec![c.call(3, &req).error_code])
        }),
        (ApiKey::CreateAcls, |c, _| {
            let mut a = create_acls_request::AclCreation::default();
            a.resource_type = 2; // topic
            a.resource_name = s("t");
            a.resource_pattern_type = 3; // literal
            a.principal = s("User:intruder");
            a.host = s("*");
            a.operation = 3; // read
            a.permission_type = 3; // allow
            let mut req = CreateAclsRequest::default();
            req.creations = vec![a];
            codes(vec![c.call(3, &req).results[0].error_code])
        }),
        (ApiKey::DeleteAcls, |c, _| {
            let mut f = delete_acls_request::DeleteAclsFilter::default();
            f.resource_type_filter = 1;
            f.pattern_type_filter = 1;
            f.operation = 1;
            f.permission_type = 1;
            let mut req = DeleteAclsRequest::default();
            req.filters = vec![f];
            codes(vec![c.call(3, &req).filter_results[0].error_code])
        }),
        (ApiKey::DescribeConfigs, |c, _| {
            let mut r = describe_configs_request::DescribeConfigsResource::default();
            r.resource_type = 2; // topic
            r.resource_name = s("t");
            let mut b = describe_configs_request::DescribeConfigsResource::default();
            b.resource_type = 4; // broker
            b.resource_name = s("0");
            let mut req = DescribeConfigsRequest::default();
            req.resources = vec![r, b];
            let resp = c.call(4, &req);
            codes(resp.results.iter().map(|r| r.error_code).collect())
        }),
        (ApiKey::CreatePartitions, |c, _| {
            let mut t = create_partitions_request::CreatePartitionsTopic::default();
            t.name = topic();
            t.count = 2;
            let mut req = CreatePartitionsRequest::default();
            req.topics = vec![t];
            req.timeout_ms = 10_000;
            codes(vec![c.call(3, &req).results[0].error_code])
        }),
        (ApiKey::DescribeProducers, |c, _| {
            let mut t = describe_producers_request::TopicRequest::default();
            t.name = topic();
            t.partition_indexes = vec![0];
            let mut req = DescribeProducersRequest::default();
            req.topics = vec![t];
            let r = c.call(0, &req);
            codes(vec![r.topics[0].partitions[0].error_code])
        }),
        (ApiKey::DeleteGroups, |c, _| {
            let mut req = DeleteGroupsRequest::default();
            req.groups_names = vec![GroupId(s("doomed-group"))];
            codes(vec![c.call(2, &req).results[0].error_code])
        }),
        (ApiKey::DescribeCluster, |c, _| {
            codes(vec![
                c.call(1, &DescribeClusterRequest::default()).error_code,
            ])
        }),
        (ApiKey::DescribeTransactions, |c, _| {
            let mut req = DescribeTransactionsRequest::default();
            req.transactional_ids = vec![txn_id()];
            let r = c.call(0, &req);
            codes(vec![r.transaction_states[0].error_code])
        }),
        (ApiKey::ListTransactions, |c, _| {
            let r = c.call(1, &ListTransactionsRequest::default());
            listing(r.error_code, r.transaction_states.len())
        }),
    ]
}

/// What a refused request must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    topics: Vec<(String, usize, u64)>,
    offsets: Vec<(String, u32, u64)>,
    transactions: Vec<String>,
    groups: Vec<String>,
    acls: usize,
}

async fn snapshot(b: &EmbeddedBroker) -> Snapshot {
    let st = b.state();
    let mut topics: Vec<_> = st
        .topics()
        .iter()
        .map(|t| {
            (
                t.name.to_string(),
                t.partitions.len(),
                t.partitions[0].log.next_offset(),
            )
        })
        .collect();
    topics.sort();
    Snapshot {
        topics,
        offsets: st.group_offsets("g"),
        transactions: st
            .list_transactions()
            .iter()
            .map(|t| format!("{t:?}"))
            .collect(),
        groups: st
            .list_groups()
            .await
            .iter()
            .map(|g| format!("{g:?}"))
            .collect(),
        acls: st.acls().current().len(),
    }
}

#[tokio::test]
async fn every_kafka_api_needs_its_right_and_a_denied_request_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials.toml");
    let mut creds = Credentials::default();
    for user in ["admin", "intruder", "app"] {
        creds
            .add_scram(user, Mechanism::ScramSha256, b"secret")
            .unwrap();
    }
    creds.save(&file).unwrap();
    let acls = dir.path().join("acls.toml");
    let mut rules = String::new();
    for (resource, name) in [
        ("topic", "*"),
        ("group", "*"),
        ("transactional-id", "*"),
        ("cluster", "kafka-cluster"),
    ] {
        rules.push_str(&format!(
            "[[acl]]\nprincipal = \"User:app\"\nresource = \"{resource}\"\nname = \"{name}\"\noperation = \"all\"\n\n"
        ));
    }
    std::fs::write(&acls, rules).unwrap();
    let b = EmbeddedBroker::start(BrokerConfig {
        credentials_file: Some(file),
        super_users: vec!["admin".into()],
        acl_file: Some(acls),
        ..BrokerConfig::ephemeral()
    })
    .await
    .unwrap();
    let st = b.state();
    st.create_topic("t", 1).unwrap();
    st.create_topic("doomed", 1).unwrap();
    let addr = b.kafka_addr().unwrap();

    // The admin leaves a record, a committed offset and an open
    // transaction with a record in it.
    let ids = tokio::task::spawn_blocking(move || {
        let mut c = Raw::connect(addr);
        assert_eq!(sasl_plain(&mut c, "admin", "secret"), 0);
        let r = c.call(9, &produce(plain_batch(b"first"), None));
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
        let commit = probes()
            .into_iter()
            .find(|(k, _)| *k == ApiKey::OffsetCommit)
            .unwrap()
            .1;
        let no_ids = Ids { pid: -1, epoch: -1 };
        assert_eq!(commit(&mut c, &no_ids).codes, [0]);
        let mut init = InitProducerIdRequest::default();
        init.transactional_id = Some(txn_id());
        init.transaction_timeout_ms = 60_000;
        init.producer_id = ProducerId(-1);
        init.producer_epoch = -1;
        let r = c.call(4, &init);
        assert_eq!(r.error_code, 0);
        let ids = Ids {
            pid: r.producer_id.0,
            epoch: r.producer_epoch,
        };
        let add = probes()
            .into_iter()
            .find(|(k, _)| *k == ApiKey::AddPartitionsToTxn)
            .unwrap()
            .1;
        assert_eq!(add(&mut c, &ids).codes, [0]);
        let mut tb = BatchBuilder::new(1)
            .producer(ProducerStamp {
                producer_id: ids.pid,
                producer_epoch: ids.epoch,
                base_sequence: 0,
            })
            .transactional(true);
        tb.push(1, None, Some(b"in txn"), &[]);
        let r = c.call(9, &produce(tb.finish(), Some(txn_id())));
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
        ids
    })
    .await
    .unwrap();
    let before = snapshot(&b).await;
    assert_eq!(before.transactions.len(), 1, "{before:?}");
    assert_eq!(before.offsets, [("t".to_string(), 0, 1)]);

    let served: Vec<ApiKey> = probes().iter().map(|(k, _)| *k).collect();
    let (ids, unexpected) = tokio::task::spawn_blocking(move || {
        let mut unexpected = Vec::new();
        // Without authenticating, any of these closes the connection.
        // (The probes' panics on the missing responses are expected:
        // silenced here, the only test of this binary.)
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        for (key, probe) in probes() {
            let mut c = Raw::connect(addr);
            // The probe finds no response and panics; the panic is the
            // expected outcome, and the socket must then be closed.
            let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                probe(&mut c, &ids);
            }))
            .is_ok();
            if answered || !c.closed() {
                unexpected.push(format!("{key:?} was served without authentication"));
            }
        }
        std::panic::set_hook(hook);
        // The intruder is refused with its resource's error, or sees an
        // empty listing.
        let mut c = Raw::connect(addr);
        assert_eq!(sasl_plain(&mut c, "intruder", "secret"), 0);
        for (key, probe) in probes() {
            let a = probe(&mut c, &ids);
            let refused = a.codes.iter().all(|code| DENIALS.contains(code));
            let wrong = if OPEN.contains(&key) {
                a.codes.iter().any(|&code| code != 0)
            } else {
                !refused || a.listed.is_some_and(|n| n != 0)
            };
            if wrong {
                unexpected.push(format!("{key:?} as intruder: {a:?}"));
            }
        }
        (ids, unexpected)
    })
    .await
    .unwrap();
    assert!(unexpected.is_empty(), "{unexpected:#?}");
    assert_eq!(
        snapshot(&b).await,
        before,
        "a refused request changed state"
    );

    // The app, allowed everything by its ACLs, is never refused.
    let unexpected = tokio::task::spawn_blocking(move || {
        let mut unexpected = Vec::new();
        let mut c = Raw::connect(addr);
        assert_eq!(sasl_plain(&mut c, "app", "secret"), 0);
        for (key, probe) in probes() {
            let a = probe(&mut c, &ids);
            if a.codes.iter().any(|code| DENIALS.contains(code)) {
                unexpected.push(format!("{key:?} as app: {a:?}"));
            }
        }
        unexpected
    })
    .await
    .unwrap();
    assert!(unexpected.is_empty(), "{unexpected:#?}");

    // Every API the listener advertises is in the matrix, except the
    // three a connection needs before it is anyone.
    let advertised = tokio::task::spawn_blocking(move || {
        let mut c = Raw::connect(addr);
        c.call(3, &ApiVersionsRequest::default()).api_keys
    })
    .await
    .unwrap();
    for k in advertised {
        let key = ApiKey::try_from(k.api_key).unwrap();
        let before_auth = [
            ApiKey::ApiVersions,
            ApiKey::SaslHandshake,
            ApiKey::SaslAuthenticate,
        ];
        assert!(
            served.contains(&key) || before_auth.contains(&key),
            "{key:?} is not in the matrix"
        );
    }
}
