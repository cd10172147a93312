//! The group coordinator over gRPC: joins forming one generation with a
//! leader, sync distributing the leader's assignment, session expiry,
//! leave, static membership (rejoin without a rebalance, fencing of an
//! older instance), fenced offset commits, a restart, limits, and the
//! admin requests.

mod support;

use std::time::Duration;

use ferry_broker::{BrokerConfig, EmbeddedBroker};
use ferry_proto::ErrorCode;
use ferry_proto::v1;
use support::*;

const SESSION_MS: u32 = 400;
const REBALANCE_MS: u32 = 3000;

async fn setup(config: BrokerConfig) -> (EmbeddedBroker, Client) {
    let broker = EmbeddedBroker::start(config).await.unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    client.create_topic("t", 4).await;
    (broker, client)
}

/// Groups wait this long for more members before their first rebalance,
/// so members joining together form one generation.
fn config() -> BrokerConfig {
    let mut c = BrokerConfig::ephemeral();
    c.group_initial_rebalance_delay_ms = 300;
    c
}

fn code(c: u32) -> ErrorCode {
    ErrorCode::from_u32(c)
}

fn join_request(
    group: &str,
    member_id: &str,
    instance: &str,
    metadata: &[u8],
) -> v1::JoinGroupRequest {
    v1::JoinGroupRequest {
        group: group.into(),
        member_id: member_id.into(),
        group_instance_id: instance.into(),
        session_timeout_ms: SESSION_MS,
        rebalance_timeout_ms: REBALANCE_MS,
        protocol_type: "consumer".into(),
        protocols: vec![v1::GroupProtocol {
            name: "range".into(),
            metadata: metadata.to_vec().into(),
        }],
        client_id: "test".into(),
    }
}

async fn join_raw(c: &Client, req: v1::JoinGroupRequest) -> v1::JoinGroupResponse {
    c.raw().join_group(req).await.unwrap().into_inner()
}

/// Joins as a dynamic member (answering MEMBER_ID_REQUIRED) or, with an
/// instance id, a static one; `member_id` rejoins as that member.
async fn join(c: &Client, group: &str, member_id: &str, instance: &str) -> v1::JoinGroupResponse {
    let mut r = join_raw(c, join_request(group, member_id, instance, b"sub")).await;
    if code(r.error_code) == ErrorCode::MemberIdRequired {
        assert!(!r.member_id.is_empty());
        r = join_raw(c, join_request(group, &r.member_id, instance, b"sub")).await;
    }
    r
}

async fn sync(
    c: &Client,
    group: &str,
    j: &v1::JoinGroupResponse,
    instance: &str,
    assignments: Vec<(String, Vec<u8>)>,
) -> v1::SyncGroupResponse {
    c.raw()
        .sync_group(v1::SyncGroupRequest {
            group: group.into(),
            generation_id: j.generation_id,
            member_id: j.member_id.clone(),
            group_instance_id: instance.into(),
            protocol_type: "consumer".into(),
            protocol_name: j.protocol_name.clone(),
            assignments: assignments
                .into_iter()
                .map(|(member_id, a)| v1::SyncGroupAssignment {
                    member_id,
                    assignment: a.into(),
                })
                .collect(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The leader's assignment: partition i of "t" to member i (as opaque
/// bytes).
fn assign(j: &v1::JoinGroupResponse) -> Vec<(String, Vec<u8>)> {
    j.members
        .iter()
        .enumerate()
        .map(|(i, m)| (m.member_id.clone(), format!("t/{i}").into_bytes()))
        .collect()
}

async fn heartbeat(c: &Client, group: &str, member_id: &str, generation: i32) -> ErrorCode {
    let r = c
        .raw()
        .heartbeat(v1::HeartbeatRequest {
            group: group.into(),
            generation_id: generation,
            member_id: member_id.into(),
            group_instance_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    code(r.error_code)
}

async fn commit(
    c: &Client,
    group: &str,
    generation: i32,
    member_id: &str,
    offset: u64,
) -> ErrorCode {
    let r = c
        .raw()
        .commit_offsets(v1::CommitOffsetsRequest {
            group: group.into(),
            offsets: vec![v1::PartitionOffset {
                topic: "t".into(),
                partition: 0,
                offset,
            }],
            generation_id: generation,
            member_id: member_id.into(),
            group_instance_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    code(r.error_code)
}

async fn describe(c: &Client, group: &str) -> v1::DescribeGroupResponse {
    c.raw()
        .describe_group(v1::DescribeGroupRequest {
            group: group.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// `n` dynamic members join "g" concurrently and sync; returns each
/// member's (join response, assignment), leader first.
async fn form(c: &Client, n: usize) -> Vec<(v1::JoinGroupResponse, Vec<u8>)> {
    let joins: Vec<_> = (0..n)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { join(&c, "g", "", "").await })
        })
        .collect();
    let mut members = Vec::new();
    for j in joins {
        let r = j.await.unwrap();
        assert_eq!(r.error_code, 0, "{}", r.error_message);
        members.push(r);
    }
    members.sort_by_key(|m| m.member_id != m.leader_id);
    let syncs: Vec<_> = members
        .iter()
        .map(|m| {
            let c = c.clone();
            let m = m.clone();
            tokio::spawn(async move {
                let a = if m.member_id == m.leader_id {
                    assign(&m)
                } else {
                    Vec::new()
                };
                let r = sync(&c, "g", &m, "", a).await;
                assert_eq!(r.error_code, 0, "{}", r.error_message);
                (m, r.assignment.to_vec())
            })
        })
        .collect();
    let mut out = Vec::new();
    for s in syncs {
        out.push(s.await.unwrap());
    }
    out
}

#[tokio::test]
async fn members_join_one_generation_with_one_leader_and_sync_hands_out_its_assignment() {
    let (_broker, c) = setup(config()).await;
    let members = form(&c, 3).await;
    let generation = members[0].0.generation_id;
    assert!(generation >= 1);
    let leader = members[0].0.leader_id.clone();
    for (j, _) in &members {
        assert_eq!(j.generation_id, generation, "one generation");
        assert_eq!(j.leader_id, leader, "one leader");
        assert_eq!(j.protocol_name, "range");
        if j.member_id == leader {
            assert_eq!(j.members.len(), 3, "the leader gets every member");
            assert!(j.members.iter().all(|m| &m.metadata[..] == b"sub"));
        } else {
            assert!(j.members.is_empty(), "followers get no members");
        }
    }
    let expected = assign(&members[0].0);
    let mut got: Vec<(String, Vec<u8>)> = members
        .iter()
        .map(|(j, a)| (j.member_id.clone(), a.clone()))
        .collect();
    got.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(got, want, "each member gets the leader's assignment for it");
    let d = describe(&c, "g").await;
    assert_eq!(d.state, "stable");
    assert_eq!(d.generation_id, generation);
    assert_eq!(d.members.len(), 3);
    assert!(
        d.members
            .iter()
            .all(|m| m.host == "127.0.0.1" && m.client_id == "test")
    );
}

#[tokio::test]
async fn a_member_that_stops_heartbeating_is_removed_and_the_others_rejoin_a_newer_generation() {
    let (_broker, c) = setup(config()).await;
    let members = form(&c, 2).await;
    let (a, _) = &members[0];
    let (b, _) = &members[1];
    // Only `a` heartbeats; `b`'s session runs out.
    let mut rebalancing = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        match heartbeat(&c, "g", &a.member_id, a.generation_id).await {
            ErrorCode::None => {}
            ErrorCode::RebalanceInProgress => {
                rebalancing = true;
                break;
            }
            other => panic!("heartbeat: {other:?}"),
        }
    }
    assert!(rebalancing, "b's expiry starts a rebalance");
    let r = join(&c, "g", &a.member_id, "").await;
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    assert!(r.generation_id > a.generation_id, "a newer generation");
    assert_eq!(r.members.len(), 1, "b is gone");
    assert_eq!(
        heartbeat(&c, "g", &b.member_id, b.generation_id).await,
        ErrorCode::UnknownMemberId
    );
}

#[tokio::test]
async fn leave_removes_the_member_at_once_and_rebalances() {
    let (_broker, c) = setup(config()).await;
    let members = form(&c, 2).await;
    let (a, _) = &members[0];
    let (b, _) = &members[1];
    let r = c
        .raw()
        .leave_group(v1::LeaveGroupRequest {
            group: "g".into(),
            members: vec![v1::LeavingMember {
                member_id: b.member_id.clone(),
                group_instance_id: String::new(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.error_code, 0);
    assert_eq!(r.members[0].error_code, 0);
    assert_eq!(
        heartbeat(&c, "g", &a.member_id, a.generation_id).await,
        ErrorCode::RebalanceInProgress
    );
    let r = join(&c, "g", &a.member_id, "").await;
    assert_eq!(r.generation_id, a.generation_id + 1);
    assert_eq!(r.members.len(), 1);
}

#[tokio::test]
async fn a_static_member_rejoining_keeps_its_assignment_without_a_rebalance() {
    let (_broker, c) = setup(BrokerConfig::ephemeral()).await;
    let leader = join(&c, "g", "", "static-1").await;
    assert_eq!(leader.error_code, 0, "{}", leader.error_message);
    let follower_join = {
        let c = c.clone();
        tokio::spawn(async move { join(&c, "g", "", "static-2").await })
    };
    // The second member's join starts a rebalance the leader rejoins.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let leader = join(&c, "g", &leader.member_id, "static-1").await;
    let follower = follower_join.await.unwrap();
    assert_eq!(follower.error_code, 0, "{}", follower.error_message);
    assert_eq!(leader.generation_id, follower.generation_id);
    let s = sync(&c, "g", &leader, "static-1", assign(&leader)).await;
    assert_eq!(s.error_code, 0);
    let s = sync(&c, "g", &follower, "static-2", Vec::new()).await;
    let assignment = s.assignment.to_vec();
    assert!(!assignment.is_empty());
    // The follower restarts: a new process with the same instance id.
    let again = join(&c, "g", "", "static-2").await;
    assert_eq!(again.error_code, 0, "{}", again.error_message);
    assert_eq!(
        again.generation_id, follower.generation_id,
        "no generation bump"
    );
    assert_ne!(again.member_id, follower.member_id);
    let s = sync(&c, "g", &again, "static-2", Vec::new()).await;
    assert_eq!(s.error_code, 0);
    assert_eq!(s.assignment.to_vec(), assignment, "the assignment is kept");
    assert_eq!(describe(&c, "g").await.state, "stable");
    // The old process is fenced.
    assert_eq!(
        heartbeat(&c, "g", &follower.member_id, follower.generation_id).await,
        ErrorCode::UnknownMemberId
    );
    // The leader restarts too: it gets skip_assignment and every member.
    let l2 = join(&c, "g", "", "static-1").await;
    assert_eq!(l2.generation_id, leader.generation_id);
    assert!(l2.skip_assignment);
    assert_eq!(l2.leader_id, l2.member_id);
    assert_eq!(l2.members.len(), 2);
}

#[tokio::test]
async fn a_second_process_with_the_same_instance_id_fences_the_first() {
    let (_broker, c) = setup(BrokerConfig::ephemeral()).await;
    let first = join(&c, "g", "", "inst").await;
    assert_eq!(first.error_code, 0);
    // Parked in its sync? No: it is the leader; sync at once.
    let s = sync(&c, "g", &first, "inst", assign(&first)).await;
    assert_eq!(s.error_code, 0);
    let second = join(&c, "g", "", "inst").await;
    assert_eq!(second.error_code, 0);
    // The first process's calls are fenced.
    let r = c
        .raw()
        .join_group(join_request("g", &first.member_id, "inst", b"sub"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(r.error_code), ErrorCode::FencedInstanceId);
    let r = sync(&c, "g", &first, "inst", Vec::new()).await;
    assert_eq!(code(r.error_code), ErrorCode::FencedInstanceId);
    let r = c
        .raw()
        .heartbeat(v1::HeartbeatRequest {
            group: "g".into(),
            generation_id: first.generation_id,
            member_id: first.member_id.clone(),
            group_instance_id: "inst".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(r.error_code), ErrorCode::FencedInstanceId);
    let r = c
        .raw()
        .commit_offsets(v1::CommitOffsetsRequest {
            group: "g".into(),
            offsets: vec![v1::PartitionOffset {
                topic: "t".into(),
                partition: 0,
                offset: 5,
            }],
            generation_id: first.generation_id,
            member_id: first.member_id.clone(),
            group_instance_id: "inst".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(r.error_code), ErrorCode::FencedInstanceId);
}

#[tokio::test]
async fn commits_are_fenced_by_generation_and_membership() {
    let (_broker, c) = setup(config()).await;
    // A simple commit while the group has no members (today's clients).
    assert_eq!(commit(&c, "g", 0, "", 3).await, ErrorCode::None);
    let members = form(&c, 1).await;
    let (m, _) = &members[0];
    assert_eq!(
        commit(&c, "g", m.generation_id, &m.member_id, 10).await,
        ErrorCode::None
    );
    assert_eq!(c.fetch_offsets("g", "t").await.get(&0), Some(&10));
    assert_eq!(
        commit(&c, "g", m.generation_id - 1, &m.member_id, 99).await,
        ErrorCode::IllegalGeneration
    );
    assert_eq!(
        commit(&c, "g", m.generation_id, "stranger", 99).await,
        ErrorCode::UnknownMemberId
    );
    assert_eq!(
        commit(&c, "g", -1, "", 99).await,
        ErrorCode::UnknownMemberId,
        "a simple commit while the group has members"
    );
    assert_eq!(
        c.fetch_offsets("g", "t").await.get(&0),
        Some(&10),
        "unchanged"
    );

    // TxnOffsetCommit: a stale generation is refused; none is accepted.
    let t = init(&c, "tx", 0).await;
    let r = c
        .raw()
        .add_offsets_to_txn(v1::AddOffsetsToTxnRequest {
            transactional_id: "tx".into(),
            producer_id: t.pid,
            producer_epoch: t.epoch,
            group: "g".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.error_code, 0);
    let txn_commit = |generation: i32, member: &str| v1::TxnOffsetCommitRequest {
        transactional_id: "tx".into(),
        producer_id: t.pid,
        producer_epoch: t.epoch,
        group: "g".into(),
        offsets: vec![v1::PartitionOffset {
            topic: "t".into(),
            partition: 0,
            offset: 20,
        }],
        generation_id: generation,
        member_id: member.into(),
        group_instance_id: String::new(),
    };
    let r = c
        .raw()
        .txn_offset_commit(txn_commit(m.generation_id + 5, &m.member_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(r.error_code), ErrorCode::IllegalGeneration);
    let r = c
        .raw()
        .txn_offset_commit(txn_commit(-1, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.error_code, 0, "no member: only the producer epoch fences");
    // The pending offset makes require_stable fetches unstable.
    let r = c
        .raw()
        .fetch_offsets(v1::FetchOffsetsRequest {
            group: "g".into(),
            topic: "t".into(),
            require_stable: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(r.error_code), ErrorCode::UnstableOffsetCommit);
    assert_eq!(end(&c, &t, true).await.error_code, 0);
    assert_eq!(c.fetch_offsets("g", "t").await.get(&0), Some(&20));
    // An unknown group answers no offsets and no error.
    let r = c
        .raw()
        .fetch_offsets(v1::FetchOffsetsRequest {
            group: "nobody".into(),
            topic: "t".into(),
            require_stable: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.error_code, r.offsets.len()), (0, 0));
}

#[tokio::test]
async fn the_generation_survives_a_restart_and_old_members_are_fenced() {
    let (broker, c) = setup(config()).await;
    let members = form(&c, 2).await;
    let (a, _) = members[0].clone();
    let before = a.generation_id;
    let broker = broker.restart().await.unwrap();
    let c = Client::connect(&broker.addr_string()).await.unwrap();
    let d = describe(&c, "g").await;
    assert_eq!((d.state.as_str(), d.generation_id), ("empty", before));
    assert_eq!(
        heartbeat(&c, "g", &a.member_id, a.generation_id).await,
        ErrorCode::UnknownMemberId
    );
    assert_eq!(
        commit(&c, "g", a.generation_id, &a.member_id, 7).await,
        ErrorCode::UnknownMemberId
    );
    let r = join(&c, "g", "", "").await;
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    assert_eq!(r.generation_id, before + 1, "never reused");
    let broker = broker.crash_and_restart().await.unwrap();
    let c = Client::connect(&broker.addr_string()).await.unwrap();
    assert_eq!(describe(&c, "g").await.generation_id, before + 1);
}

#[tokio::test]
async fn limits_give_their_errors_and_change_nothing() {
    let mut config = BrokerConfig::ephemeral();
    config.limits.max_groups = 1;
    config.limits.max_members_per_group = 1;
    let (_broker, c) = setup(config).await;
    let mut bad = join_request("g", "", "", b"sub");
    bad.session_timeout_ms = 10;
    assert_eq!(
        code(join_raw(&c, bad).await.error_code),
        ErrorCode::InvalidSessionTimeout
    );
    let mut big = join_request(
        "g",
        "",
        "",
        &vec![0; ferry_broker::MAX_MEMBER_METADATA_BYTES + 1],
    );
    big.session_timeout_ms = SESSION_MS;
    assert_eq!(
        code(join_raw(&c, big).await.error_code),
        ErrorCode::InvalidRequest
    );
    let listed = c
        .raw()
        .list_groups(v1::ListGroupsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.groups.is_empty(),
        "refused joins leave no group behind"
    );
    let m = join(&c, "g", "", "").await;
    assert_eq!(m.error_code, 0);
    let r = join_raw(&c, join_request("g", "", "", b"sub")).await;
    assert_eq!(code(r.error_code), ErrorCode::GroupMaxSizeReached);
    let r = join_raw(&c, join_request("h", "", "", b"sub")).await;
    assert_eq!(code(r.error_code), ErrorCode::TooManyGroups);
    let d = describe(&c, "g").await;
    assert_eq!((d.members.len(), d.generation_id), (1, m.generation_id));
}

#[tokio::test]
async fn groups_are_listed_described_and_deleted_only_when_empty() {
    let (_broker, c) = setup(config()).await;
    assert_eq!(
        code(describe(&c, "g").await.error_code),
        ErrorCode::GroupIdNotFound
    );
    let members = form(&c, 1).await;
    let (m, _) = &members[0];
    assert_eq!(
        commit(&c, "g", m.generation_id, &m.member_id, 4).await,
        ErrorCode::None
    );
    let listed = c
        .raw()
        .list_groups(v1::ListGroupsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.groups.len(), 1);
    assert_eq!(
        (
            listed.groups[0].group.as_str(),
            listed.groups[0].state.as_str(),
            listed.groups[0].members
        ),
        ("g", "stable", 1)
    );
    let d = describe(&c, "g").await;
    assert_eq!(d.protocol_type, "consumer");
    assert_eq!(d.protocol_name, "range");
    assert_eq!(d.leader_id, m.member_id);
    assert_eq!(&d.members[0].assignment[..], b"t/0");
    assert_eq!(&d.members[0].metadata[..], b"sub");
    let mut other = join_request("g", "", "x", b"sub");
    other.protocols[0].name = "roundrobin".into();
    let r = join_raw(&c, other).await;
    assert_eq!(code(r.error_code), ErrorCode::InconsistentGroupProtocol);
    let mut other = join_request("g", "", "x", b"sub");
    other.protocol_type = "connect".into();
    let r = join_raw(&c, other).await;
    assert_eq!(code(r.error_code), ErrorCode::InconsistentGroupProtocol);
    assert_eq!(describe(&c, "g").await, d, "refused joins change nothing");
    let delete = |g: &str| {
        let c = c.clone();
        let g = g.to_string();
        async move {
            code(
                c.raw()
                    .delete_group(v1::DeleteGroupRequest { group: g })
                    .await
                    .unwrap()
                    .into_inner()
                    .error_code,
            )
        }
    };
    assert_eq!(delete("g").await, ErrorCode::NonEmptyGroup);
    assert_eq!(delete("nobody").await, ErrorCode::GroupIdNotFound);
    let r = c
        .raw()
        .leave_group(v1::LeaveGroupRequest {
            group: "g".into(),
            members: vec![v1::LeavingMember {
                member_id: m.member_id.clone(),
                group_instance_id: String::new(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.members[0].error_code, 0);
    assert_eq!(describe(&c, "g").await.state, "empty");
    assert_eq!(delete("g").await, ErrorCode::None);
    assert!(
        c.fetch_offsets("g", "t").await.is_empty(),
        "its offsets are gone"
    );
    assert_eq!(
        code(describe(&c, "g").await.error_code),
        ErrorCode::GroupIdNotFound
    );
    // A group with only simple commits can be deleted too.
    assert_eq!(commit(&c, "plain", 0, "", 1).await, ErrorCode::None);
    assert_eq!(describe(&c, "plain").await.state, "empty");
    assert_eq!(delete("plain").await, ErrorCode::None);
    assert!(c.fetch_offsets("plain", "t").await.is_empty());
}

#[tokio::test]
async fn a_deleted_groups_offsets_stay_deleted_after_a_restart() {
    let (broker, c) = setup(BrokerConfig::ephemeral()).await;
    assert_eq!(commit(&c, "plain", 0, "", 1).await, ErrorCode::None);
    let r = c
        .raw()
        .delete_group(v1::DeleteGroupRequest {
            group: "plain".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.error_code, 0);
    assert_eq!(commit(&c, "plain", 0, "", 2).await, ErrorCode::None);
    let broker = broker.crash_and_restart().await.unwrap();
    let c = Client::connect(&broker.addr_string()).await.unwrap();
    assert_eq!(
        c.fetch_offsets("plain", "t").await.get(&0),
        Some(&2),
        "the commit after the delete"
    );
}

#[tokio::test]
async fn a_parked_join_of_the_older_process_is_answered_fenced_instance_id() {
    let (_broker, c) = setup(config()).await;
    let joins: Vec<_> = ["inst", "", ""]
        .into_iter()
        .map(|instance| {
            let c = c.clone();
            tokio::spawn(async move { (instance, join(&c, "g", "", instance).await) })
        })
        .collect();
    let mut members = Vec::new();
    for j in joins {
        let (instance, r) = j.await.unwrap();
        assert_eq!(r.error_code, 0, "{}", r.error_message);
        members.push((instance, r));
    }
    let generation = members[0].1.generation_id;
    assert!(members.iter().all(|(_, m)| m.generation_id == generation));
    let a = members[0].1.clone();
    let b = members[1].1.clone();
    // b rejoins with new metadata: a rebalance that waits for a and c.
    let b_join = {
        let c = c.clone();
        let b = b.clone();
        tokio::spawn(
            async move { join_raw(&c, join_request("g", &b.member_id, "", b"changed")).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The old process of "inst" rejoins and is parked (c has not rejoined).
    let a_old = {
        let c = c.clone();
        let a = a.clone();
        tokio::spawn(async move { join(&c, "g", &a.member_id, "inst").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A new process with the same instance id takes over.
    let a_new = {
        let c = c.clone();
        tokio::spawn(async move { join(&c, "g", "", "inst").await })
    };
    let old = a_old.await.unwrap();
    assert_eq!(code(old.error_code), ErrorCode::FencedInstanceId);
    // c rejoins: the rebalance completes for b, the new a and c.
    let cj = join(&c, "g", &members[2].1.member_id, "").await;
    let new = a_new.await.unwrap();
    let bj = b_join.await.unwrap();
    for r in [&cj, &new, &bj] {
        assert_eq!(r.error_code, 0, "{}", r.error_message);
        assert_eq!(r.generation_id, generation + 1);
    }
    assert_eq!(
        new.leader_id, new.member_id,
        "the new process took over the leader"
    );
    assert_eq!(new.members.len(), 3);
}
