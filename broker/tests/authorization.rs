//! The ACL matrix of the gRPC front end: every RPC, called by a
//! principal no ACL allows, by one whose ACLs allow everything, and with no
//! credential at all. The denied calls get `authorization_failed` (or an
//! empty listing) and change nothing: the log, the committed offsets, the
//! group and the open transaction are as they were.

use ferry_broker::auth::Credentials;
use ferry_broker::{BrokerConfig, EmbeddedBroker};
use ferry_proto::ErrorCode;
use ferry_proto::batch::{BatchBuilder, ProducerStamp};
use ferry_proto::v1;
use tonic::Request;
use tonic::transport::Channel;

type Raw = v1::ferry_client::FerryClient<Channel>;

/// A connection speaking as one principal (or as nobody).
struct As {
    raw: Raw,
    token: Option<String>,
}

impl As {
    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(t) = &self.token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    }
}

/// What one RPC answered.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The response's error code.
    Code(ErrorCode),
    /// A listing, with how many entries it held.
    Listed(usize),
    /// The call failed with this status.
    Status(tonic::Code),
}

fn code(c: u32) -> Outcome {
    Outcome::Code(ErrorCode::from_u32(c))
}

/// The open transaction and the group member the admin set up.
struct Ids {
    pid: i64,
    epoch: i32,
    member: String,
    generation: i32,
}

fn batch() -> bytes::Bytes {
    let mut b = BatchBuilder::new(1);
    b.push(1, None, Some(b"v"), &[]);
    b.finish()
}

fn txn_batch(pid: i64, epoch: i32, seq: i32) -> bytes::Bytes {
    let mut b = BatchBuilder::new(1)
        .producer(ProducerStamp {
            producer_id: pid,
            producer_epoch: epoch as i16,
            base_sequence: seq,
        })
        .transactional(true);
    b.push(1, None, Some(b"in-txn"), &[]);
    b.finish()
}

fn tp() -> Vec<v1::TopicPartition> {
    vec![v1::TopicPartition {
        topic: "t".into(),
        partition: 0,
    }]
}

fn offsets() -> Vec<v1::PartitionOffset> {
    vec![v1::PartitionOffset {
        topic: "t".into(),
        partition: 0,
        offset: 0,
    }]
}

fn join(member: &str) -> v1::JoinGroupRequest {
    v1::JoinGroupRequest {
        group: "g".into(),
        member_id: member.into(),
        session_timeout_ms: 30_000,
        rebalance_timeout_ms: 30_000,
        protocol_type: "consumer".into(),
        protocols: vec![v1::GroupProtocol {
            name: "range".into(),
            metadata: bytes::Bytes::from_static(b"m"),
        }],
        ..Default::default()
    }
}

/// Calls every RPC of the Ferry service once, as `who`, against the
/// topic "t", the group "g" and the transaction "tx"; the deleting ones
/// last.
async fn every_rpc(who: &As, ids: &Ids) -> Vec<(&'static str, Outcome)> {
    use Outcome::*;
    let mut c = who.raw.clone();
    let st = |s: tonic::Status| Status(s.code());
    let mut out = Vec::new();
    macro_rules! call {
        ($name:literal, $rpc:ident, $msg:expr, |$r:ident| $get:expr) => {{
            let o = match c.$rpc(who.req($msg)).await {
                Ok(resp) => {
                    let $r = resp.into_inner();
                    $get
                }
                Err(s) => st(s),
            };
            out.push(($name, o));
        }};
    }
    call!(
        "CreateTopic",
        create_topic,
        v1::CreateTopicRequest {
            name: "new".into(),
            partitions: 1,
            ..Default::default()
        },
        |r| code(r.error_code)
    );
    call!("ListTopics", list_topics, v1::ListTopicsRequest {}, |r| {
        Listed(r.topics.len())
    });
    call!(
        "DescribeTopic",
        describe_topic,
        v1::DescribeTopicRequest { name: "t".into() },
        |r| code(r.error_code)
    );
    let produce = v1::ProduceRequest {
        correlation_id: 1,
        topic: "t".into(),
        partition: 0,
        acks: v1::Acks::All as i32,
        batch: batch(),
    };
    call!("Produce", produce, produce.clone(), |r| code(r.error_code));
    let o = match c
        .produce_stream(who.req(futures::stream::iter([produce])))
        .await
    {
        Ok(resp) => {
            use futures::StreamExt;
            match resp.into_inner().next().await {
                Some(Ok(r)) => code(r.error_code),
                Some(Err(s)) => st(s),
                None => Listed(0),
            }
        }
        Err(s) => st(s),
    };
    out.push(("ProduceStream", o));
    call!(
        "Fetch",
        fetch,
        v1::FetchRequest {
            partitions: vec![v1::FetchPartition {
                topic: "t".into(),
                partition: 0,
                offset: 0,
                max_bytes: 0
            }],
            ..Default::default()
        },
        |r| code(if r.error_code != 0 {
            r.error_code
        } else {
            r.partitions.first().map_or(0, |p| p.error_code)
        })
    );
    call!(
        "ListOffsets",
        list_offsets,
        v1::ListOffsetsRequest {
            topic: "t".into(),
            partition: 0,
            ..Default::default()
        },
        |r| code(r.error_code)
    );
    call!(
        "InitProducerId",
        init_producer_id,
        v1::InitProducerIdRequest::default(),
        |r| code(r.error_code)
    );
    call!(
        "InitProducerId(tx)",
        init_producer_id,
        v1::InitProducerIdRequest {
            transactional_id: "tx".into(),
            transaction_timeout_ms: 0
        },
        |r| code(r.error_code)
    );
    call!(
        "AddPartitionsToTxn",
        add_partitions_to_txn,
        v1::AddPartitionsToTxnRequest {
            transactional_id: "tx".into(),
            producer_id: ids.pid,
            producer_epoch: ids.epoch,
            partitions: tp(),
        },
        |r| code(r.error_code)
    );
    call!(
        "AddOffsetsToTxn",
        add_offsets_to_txn,
        v1::AddOffsetsToTxnRequest {
            transactional_id: "tx".into(),
            producer_id: ids.pid,
            producer_epoch: ids.epoch,
            group: "g".into(),
        },
        |r| code(r.error_code)
    );
    call!(
        "TxnOffsetCommit",
        txn_offset_commit,
        v1::TxnOffsetCommitRequest {
            transactional_id: "tx".into(),
            producer_id: ids.pid,
            producer_epoch: ids.epoch,
            group: "g".into(),
            offsets: offsets(),
            ..Default::default()
        },
        |r| code(r.error_code)
    );
    call!(
        "ListTransactions",
        list_transactions,
        v1::ListTransactionsRequest {},
        |r| Listed(r.transactions.len())
    );
    call!(
        "CommitOffsets",
        commit_offsets,
        v1::CommitOffsetsRequest {
            group: "g".into(),
            offsets: offsets(),
            generation_id: ids.generation,
            member_id: ids.member.clone(),
            ..Default::default()
        },
        |r| code(r.error_code)
    );
    call!(
        "FetchOffsets",
        fetch_offsets,
        v1::FetchOffsetsRequest {
            group: "g".into(),
            topic: "t".into(),
            ..Default::default()
        },
        |r| code(r.error_code)
    );
    call!("JoinGroup", join_group, join("intruder"), |r| code(
        r.error_code
    ));
    call!(
        "SyncGroup",
        sync_group,
        v1::SyncGroupRequest {
            group: "g".into(),
            generation_id: ids.generation,
            member_id: ids.member.clone(),
            ..Default::default()
        },
        |r| code(r.error_code)
    );
    call!(
        "Heartbeat",
        heartbeat,
        v1::HeartbeatRequest {
            group: "g".into(),
            generation_id: ids.generation,
            member_id: ids.member.clone(),
            ..Default::default()
        },
        |r| code(r.error_code)
    );
    call!("ListGroups", list_groups, v1::ListGroupsRequest {}, |r| {
        Listed(r.groups.len())
    });
    call!(
        "DescribeGroup",
        describe_group,
        v1::DescribeGroupRequest { group: "g".into() },
        |r| code(r.error_code)
    );
    call!(
        "EndTxn",
        end_txn,
        v1::EndTxnRequest {
            transactional_id: "tx".into(),
            producer_id: ids.pid,
            producer_epoch: ids.epoch,
            commit: false,
        },
        |r| code(r.error_code)
    );
    call!(
        "AbortTransaction",
        abort_transaction,
        v1::AbortTransactionRequest {
            transactional_id: "tx".into()
        },
        |r| code(r.error_code)
    );
    call!(
        "LeaveGroup",
        leave_group,
        v1::LeaveGroupRequest {
            group: "g".into(),
            members: vec![v1::LeavingMember {
                member_id: ids.member.clone(),
                ..Default::default()
            }],
        },
        |r| code(r.error_code)
    );
    call!(
        "DeleteGroup",
        delete_group,
        v1::DeleteGroupRequest { group: "g".into() },
        |r| code(r.error_code)
    );
    call!(
        "DeleteTopic",
        delete_topic,
        v1::DeleteTopicRequest { name: "t".into() },
        |r| code(r.error_code)
    );
    out
}

/// What the broker holds, to compare before and after the denied calls.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    topics: Vec<String>,
    high_watermark: u64,
    committed: Vec<(u32, u64)>,
    transactions: Vec<(String, String, usize)>,
    group: (String, i32, usize),
}

async fn snapshot_topics(admin: &As) -> Vec<String> {
    let mut c = admin.raw.clone();
    c.list_topics(admin.req(v1::ListTopicsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .topics
        .into_iter()
        .map(|t| t.name)
        .collect()
}

async fn snapshot(admin: &As) -> Snapshot {
    let mut c = admin.raw.clone();
    let topics = snapshot_topics(admin).await;
    let d = c
        .describe_topic(admin.req(v1::DescribeTopicRequest { name: "t".into() }))
        .await
        .unwrap()
        .into_inner();
    let o = c
        .fetch_offsets(admin.req(v1::FetchOffsetsRequest {
            group: "g".into(),
            topic: "t".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let tx = c
        .list_transactions(admin.req(v1::ListTransactionsRequest {}))
        .await
        .unwrap()
        .into_inner();
    let g = c
        .describe_group(admin.req(v1::DescribeGroupRequest { group: "g".into() }))
        .await
        .unwrap()
        .into_inner();
    Snapshot {
        topics,
        high_watermark: d.partitions[0].high_watermark,
        committed: o.offsets.iter().map(|p| (p.partition, p.offset)).collect(),
        transactions: tx
            .transactions
            .iter()
            .map(|t| {
                (
                    t.transactional_id.clone(),
                    t.state.clone(),
                    t.partitions.len(),
                )
            })
            .collect(),
        group: (g.state, g.generation_id, g.members.len()),
    }
}

#[tokio::test]
async fn every_grpc_request_needs_its_right_and_a_denied_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials.toml");
    let mut creds = Credentials::default();
    let admin_token = creds.add_token("admin").unwrap();
    let intruder_token = creds.add_token("intruder").unwrap();
    let app_token = creds.add_token("app").unwrap();
    creds.save(&file).unwrap();
    let acls = dir.path().join("acls.toml");
    // app may do everything, by ACL rather than as a super user.
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
    let broker = EmbeddedBroker::start(BrokerConfig {
        credentials_file: Some(file),
        super_users: vec!["admin".into()],
        acl_file: Some(acls),
        ..BrokerConfig::ephemeral()
    })
    .await
    .unwrap();
    let channel = Channel::from_shared(format!("http://{}", broker.addr_string()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let who = |token: Option<&str>| As {
        raw: Raw::new(channel.clone()),
        token: token.map(str::to_string),
    };
    let admin = who(Some(&admin_token));

    // The admin sets up a topic with a record, a group with a member and
    // a committed offset, and an open transaction.
    let mut c = admin.raw.clone();
    let ok = |code: u32, msg: &str| assert_eq!(code, 0, "{msg}");
    let r = c
        .create_topic(admin.req(v1::CreateTopicRequest {
            name: "t".into(),
            partitions: 1,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    ok(r.error_code, &r.error_message);
    let r = c
        .produce(admin.req(v1::ProduceRequest {
            correlation_id: 0,
            topic: "t".into(),
            partition: 0,
            acks: v1::Acks::All as i32,
            batch: batch(),
        }))
        .await
        .unwrap()
        .into_inner();
    ok(r.error_code, &r.error_message);
    let first = c
        .join_group(admin.req(join("")))
        .await
        .unwrap()
        .into_inner();
    let joined = c
        .join_group(admin.req(join(&first.member_id)))
        .await
        .unwrap()
        .into_inner();
    ok(joined.error_code, &joined.error_message);
    let synced = c
        .sync_group(admin.req(v1::SyncGroupRequest {
            group: "g".into(),
            generation_id: joined.generation_id,
            member_id: joined.member_id.clone(),
            protocol_type: "consumer".into(),
            protocol_name: "range".into(),
            assignments: vec![v1::SyncGroupAssignment {
                member_id: joined.member_id.clone(),
                assignment: bytes::Bytes::from_static(b"a"),
            }],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    ok(synced.error_code, &synced.error_message);
    let r = c
        .commit_offsets(admin.req(v1::CommitOffsetsRequest {
            group: "g".into(),
            offsets: vec![v1::PartitionOffset {
                topic: "t".into(),
                partition: 0,
                offset: 1,
            }],
            generation_id: joined.generation_id,
            member_id: joined.member_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    ok(r.error_code, &r.error_message);
    let init = c
        .init_producer_id(admin.req(v1::InitProducerIdRequest {
            transactional_id: "tx".into(),
            transaction_timeout_ms: 60_000,
        }))
        .await
        .unwrap()
        .into_inner();
    ok(init.error_code, &init.error_message);
    let r = c
        .add_partitions_to_txn(admin.req(v1::AddPartitionsToTxnRequest {
            transactional_id: "tx".into(),
            producer_id: init.producer_id,
            producer_epoch: init.producer_epoch,
            partitions: tp(),
        }))
        .await
        .unwrap()
        .into_inner();
    ok(r.error_code, &r.error_message);
    let r = c
        .produce(admin.req(v1::ProduceRequest {
            correlation_id: 0,
            topic: "t".into(),
            partition: 0,
            acks: v1::Acks::All as i32,
            batch: txn_batch(init.producer_id, init.producer_epoch, 0),
        }))
        .await
        .unwrap()
        .into_inner();
    ok(r.error_code, &r.error_message);
    let ids = Ids {
        pid: init.producer_id,
        epoch: init.producer_epoch,
        member: joined.member_id.clone(),
        generation: joined.generation_id,
    };
    let before = snapshot(&admin).await;
    assert_eq!(before.transactions.len(), 1, "{before:?}");
    assert_eq!(before.group.2, 1, "{before:?}");

    // Without a credential, nothing is served.
    let anonymous = every_rpc(&who(None), &ids).await;
    // The 24 RPCs, InitProducerId both idempotent and transactional.
    assert_eq!(anonymous.len(), 25);
    for (rpc, o) in &anonymous {
        assert_eq!(*o, Outcome::Status(tonic::Code::Unauthenticated), "{rpc}");
    }
    // A principal no ACL names is refused every request, and listings
    // show it nothing.
    let denied = every_rpc(&who(Some(&intruder_token)), &ids).await;
    for (rpc, o) in &denied {
        let expected = if matches!(*rpc, "ListTopics" | "ListTransactions" | "ListGroups") {
            Outcome::Listed(0)
        } else {
            Outcome::Code(ErrorCode::AuthorizationFailed)
        };
        assert_eq!(*o, expected, "{rpc}");
    }
    // ... and changed nothing.
    assert_eq!(snapshot(&admin).await, before);

    // A principal whose ACLs allow everything is refused nothing (the
    // calls may still fail for their own reasons: a stale generation, a
    // fenced epoch).
    let allowed = every_rpc(&who(Some(&app_token)), &ids).await;
    for (rpc, o) in &allowed {
        assert!(
            !matches!(
                o,
                Outcome::Code(ErrorCode::AuthorizationFailed)
                    | Outcome::Listed(0)
                    | Outcome::Status(_)
            ),
            "{rpc}: {o:?}"
        );
    }
    let after = snapshot_topics(&admin).await;
    assert_eq!(
        after,
        vec!["new".to_string()],
        "app created new and deleted t"
    );
}

/// Guessing tokens: hundreds of wrong ones, on one connection, are each
/// refused `UNAUTHENTICATED` before any handler runs; the right token on
/// the same connection is still served afterwards, and nothing was
/// created by the refused requests.
#[tokio::test]
async fn many_wrong_tokens_are_each_refused_and_the_right_one_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials.toml");
    let mut creds = Credentials::default();
    let token = creds.add_token("admin").unwrap();
    creds.save(&file).unwrap();
    let broker = EmbeddedBroker::start(BrokerConfig {
        credentials_file: Some(file),
        super_users: vec!["admin".into()],
        ..BrokerConfig::ephemeral()
    })
    .await
    .unwrap();
    let channel = Channel::from_shared(format!("http://{}", broker.addr_string()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let create = |t: &str, name: String| {
        As {
            raw: Raw::new(channel.clone()),
            token: Some(t.to_string()),
        }
        .req(v1::CreateTopicRequest {
            name,
            partitions: 1,
            ..Default::default()
        })
    };
    // Wrong tokens of every shape: near misses of the right one (same
    // length, one character changed), random ones, and garbage.
    let mut guesses: Vec<String> = (0..100)
        .map(|i| {
            let mut g: Vec<char> = token.chars().collect();
            let at = i % g.len();
            g[at] = if g[at] == 'A' { 'B' } else { 'A' };
            g.into_iter().collect()
        })
        .collect();
    guesses.extend((0..100).map(|i| format!("ferry_{i:040}")));
    guesses.extend((0..100).map(|i| "x".repeat(i + 1)));
    for (i, guess) in guesses.iter().enumerate() {
        let status = Raw::new(channel.clone())
            .create_topic(create(guess, format!("guess-{i}")))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{guess}");
    }
    let r = Raw::new(channel.clone())
        .create_topic(create(&token, "real".into()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    let names: Vec<String> = broker
        .state()
        .topics()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(names, ["real"]);
}
