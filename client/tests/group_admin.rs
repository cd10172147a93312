//! The group admin calls (`list_groups`, `describe_group`, `delete_group`)
//! against a broker in this process, with a member joined by hand through
//! the raw gRPC client.

mod common;

use common::broker;
use ferry_client::Client;
use ferry_proto::{ErrorCode, v1};

fn join(group: &str, member_id: &str) -> v1::JoinGroupRequest {
    v1::JoinGroupRequest {
        group: group.to_owned(),
        member_id: member_id.to_owned(),
        // Long enough that the member outlives the test.
        session_timeout_ms: 60_000,
        rebalance_timeout_ms: 60_000,
        protocol_type: "consumer".to_owned(),
        protocols: vec![v1::GroupProtocol {
            name: "range".to_owned(),
            metadata: b"opaque subscription".to_vec().into(),
        }],
        client_id: "group-admin-test".to_owned(),
        ..Default::default()
    }
}

/// A `ConsumerProtocolAssignment` v1 written by hand: topics with their
/// partitions, and null user data.
fn encode_assignment(topics: &[(&str, &[i32])]) -> Vec<u8> {
    let mut b = 1i16.to_be_bytes().to_vec();
    b.extend_from_slice(&(topics.len() as i32).to_be_bytes());
    for (topic, partitions) in topics {
        b.extend_from_slice(&(topic.len() as i16).to_be_bytes());
        b.extend_from_slice(topic.as_bytes());
        b.extend_from_slice(&(partitions.len() as i32).to_be_bytes());
        for p in *partitions {
            b.extend_from_slice(&p.to_be_bytes());
        }
    }
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b
}

/// Joins `group` as its only member and syncs `assignment` for itself as
/// the leader; returns the member id and the generation.
async fn join_and_sync(client: &Client, group: &str, assignment: Vec<u8>) -> (String, i32) {
    let mut raw = client.raw();
    let first = raw.join_group(join(group, "")).await.unwrap().into_inner();
    assert_eq!(first.error_code, ErrorCode::MemberIdRequired.as_u32());
    assert!(!first.member_id.is_empty());
    let joined = raw
        .join_group(join(group, &first.member_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(joined.error_code, 0, "{}", joined.error_message);
    assert_eq!(joined.leader_id, joined.member_id);
    let synced = raw
        .sync_group(v1::SyncGroupRequest {
            group: group.to_owned(),
            generation_id: joined.generation_id,
            member_id: joined.member_id.clone(),
            protocol_type: "consumer".to_owned(),
            protocol_name: joined.protocol_name.clone(),
            assignments: vec![v1::SyncGroupAssignment {
                member_id: joined.member_id.clone(),
                assignment: assignment.into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(synced.error_code, 0, "{}", synced.error_message);
    (joined.member_id, joined.generation_id)
}

#[tokio::test]
async fn describe_group_decodes_a_member_and_its_assignment() {
    let (_broker, client) = broker().await;
    let assignment = encode_assignment(&[("orders", &[0, 2]), ("audit", &[1])]);
    let (member_id, generation) = join_and_sync(&client, "g", assignment).await;

    let d = client.describe_group("g").await.unwrap();
    assert_eq!(d.group, "g");
    assert_eq!(d.state, "stable");
    assert_eq!(d.generation, generation);
    assert!(generation >= 1);
    assert_eq!(d.protocol_type, "consumer");
    assert_eq!(d.protocol, "range");
    assert_eq!(d.leader, member_id);
    assert_eq!(d.members.len(), 1);
    let m = &d.members[0];
    assert_eq!(m.member_id, member_id);
    assert_eq!(m.instance_id, None);
    assert_eq!(m.client_id, "group-admin-test");
    assert!(!m.host.is_empty());
    assert!(!m.assignment_undecodable);
    assert_eq!(
        m.assignment,
        vec![
            ("orders".to_owned(), vec![0, 2]),
            ("audit".to_owned(), vec![1]),
        ]
    );

    let listed = client.list_groups().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].group, "g");
    assert_eq!(listed[0].state, "stable");
    assert_eq!(listed[0].members, 1);
    assert_eq!(listed[0].protocol_type, "consumer");
}

#[tokio::test]
async fn an_assignment_that_is_not_the_consumer_protocol_shows_as_empty_and_flagged() {
    let (_broker, client) = broker().await;
    join_and_sync(&client, "g", b"\x00\x01\xff\xff".to_vec()).await;
    let d = client.describe_group("g").await.unwrap();
    assert_eq!(d.members.len(), 1);
    assert!(d.members[0].assignment.is_empty());
    assert!(d.members[0].assignment_undecodable);
}

#[tokio::test]
async fn delete_group_is_refused_while_the_group_has_a_member() {
    let (_broker, client) = broker().await;
    client.create_topic("orders", 1).await.unwrap();
    join_and_sync(&client, "g", encode_assignment(&[("orders", &[0])])).await;
    let err = client.delete_group("g").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::NonEmptyGroup, "{err}");
    // Still there, member and all.
    assert_eq!(client.describe_group("g").await.unwrap().members.len(), 1);
}

#[tokio::test]
async fn a_group_with_only_committed_offsets_is_empty_and_can_be_deleted() {
    let (_broker, client) = broker().await;
    client.create_topic("orders", 2).await.unwrap();
    assert!(client.list_groups().await.unwrap().is_empty());
    client
        .commit_offsets("offsets-only", &[("orders".into(), 1, 4)])
        .await
        .unwrap();

    let listed = client.list_groups().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].group, "offsets-only");
    assert_eq!(listed[0].state, "empty");
    assert_eq!(listed[0].members, 0);
    let d = client.describe_group("offsets-only").await.unwrap();
    assert_eq!(d.state, "empty");
    assert_eq!(d.generation, 0);
    assert!(d.members.is_empty());

    client.delete_group("offsets-only").await.unwrap();
    assert!(client.list_groups().await.unwrap().is_empty());
    assert!(
        client
            .fetch_offsets("offsets-only", "orders")
            .await
            .unwrap()
            .is_empty()
    );
    let err = client.describe_group("offsets-only").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::GroupIdNotFound, "{err}");
    let err = client.delete_group("offsets-only").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::GroupIdNotFound, "{err}");
}
