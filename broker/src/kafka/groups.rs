//! The classic consumer-group protocol and committed offsets, mapped onto
//! the group coordinator and the offsets store: JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch, ListGroups,
//! DescribeGroups and DeleteGroups.
//!
//! Kafka clients before JoinGroup v4 do not know MEMBER_ID_REQUIRED
//! (KIP-394): for them the front end rejoins at once with the id the
//! coordinator handed out, which is what a v4+ client does itself.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::GroupId;
use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::delete_groups_response::{
    DeletableGroupResult, DeleteGroupsResponse,
};
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::describe_groups_response::{
    DescribeGroupsResponse, DescribedGroup, DescribedGroupMember,
};
use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::heartbeat_response::HeartbeatResponse;
use kafka_protocol::messages::join_group_request::JoinGroupRequest;
use kafka_protocol::messages::join_group_response::{JoinGroupResponse, JoinGroupResponseMember};
use kafka_protocol::messages::leave_group_request::LeaveGroupRequest;
use kafka_protocol::messages::leave_group_response::{LeaveGroupResponse, MemberResponse};
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::list_groups_response::{ListGroupsResponse, ListedGroup};
use kafka_protocol::messages::offset_commit_request::OffsetCommitRequest;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequest;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponse, OffsetFetchResponseGroup, OffsetFetchResponsePartition,
    OffsetFetchResponsePartitions, OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequest;
use kafka_protocol::messages::sync_group_response::SyncGroupResponse;
use kafka_protocol::protocol::StrBytes;

use super::conn::Ctx;
use super::errors::code;
use super::metadata::{str, topic_name};
use crate::auth::actions::Action;
use crate::error::BrokerError;
use crate::group::{CommitFence, GroupError, GroupState, Join};

/// Kafka's name of a group state.
pub(crate) fn state_name(s: GroupState) -> &'static str {
    match s {
        GroupState::Empty => "Empty",
        GroupState::PreparingRebalance => "PreparingRebalance",
        GroupState::CompletingRebalance => "CompletingRebalance",
        GroupState::Stable => "Stable",
        GroupState::Dead => "Dead",
    }
}

fn opt(s: &Option<StrBytes>) -> String {
    s.as_ref().map(|s| s.to_string()).unwrap_or_default()
}

fn non_empty(s: &str) -> Option<StrBytes> {
    (!s.is_empty()).then(|| str(s))
}

fn timeout(ms: i32) -> u32 {
    // A negative timeout is out of every bound the coordinator accepts.
    u32::try_from(ms).unwrap_or(0)
}

pub(crate) async fn join_group(cx: &Ctx<'_>, req: JoinGroupRequest) -> JoinGroupResponse {
    let group = req.group_id.0.to_string();
    let mut join = Join {
        member_id: req.member_id.to_string(),
        instance_id: opt(&req.group_instance_id),
        client_id: cx.client_id.clone(),
        host: cx.conn.link.peer.ip().to_string(),
        session_timeout_ms: timeout(req.session_timeout_ms),
        rebalance_timeout_ms: timeout(if cx.version >= 1 {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms
        }),
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.to_vec()))
            .collect(),
        fresh_member_id: String::new(),
    };
    let _busy = cx.state().enter();
    let mut r = match cx.authorize(Action::UseGroup(&group)) {
        Ok(()) => cx.state().join_group(&group, join.clone()).await,
        Err(e) => Err(e),
    };
    if cx.version < 4
        && let Err(BrokerError::Group(GroupError::MemberIdRequired(id))) = &r
    {
        join.member_id = id.clone();
        r = cx.state().join_group(&group, join).await;
    }
    let mut resp = JoinGroupResponse::default();
    match r {
        Ok(r) => {
            resp.generation_id = r.generation;
            if cx.version >= 7 {
                resp.protocol_type = Some(req.protocol_type.clone());
            }
            resp.protocol_name = Some(str(&r.protocol_name));
            resp.leader = str(&r.leader);
            resp.member_id = str(&r.member_id);
            if cx.version >= 9 {
                resp.skip_assignment = r.skip_assignment;
            }
            resp.members = r
                .members
                .into_iter()
                .map(|(member_id, instance_id, metadata)| {
                    let mut m = JoinGroupResponseMember::default();
                    m.member_id = str(&member_id);
                    if cx.version >= 5 {
                        m.group_instance_id = non_empty(&instance_id);
                    }
                    m.metadata = Bytes::from(metadata);
                    m
                })
                .collect();
        }
        Err(e) => {
            if let BrokerError::Group(GroupError::MemberIdRequired(id)) = &e {
                resp.member_id = str(id);
            }
            resp.error_code = cx.code(&e);
            resp.generation_id = -1;
        }
    }
    resp
}

pub(crate) async fn sync_group(cx: &Ctx<'_>, req: SyncGroupRequest) -> SyncGroupResponse {
    let _busy = cx.state().enter();
    if let Err(e) = cx.authorize(Action::UseGroup(req.group_id.0.as_str())) {
        let mut resp = SyncGroupResponse::default();
        resp.error_code = cx.code(&e);
        return resp;
    }
    let r = cx
        .state()
        .sync_group(
            req.group_id.0.as_str(),
            req.member_id.as_str(),
            &opt(&req.group_instance_id),
            req.generation_id,
            &opt(&req.protocol_type),
            &opt(&req.protocol_name),
            req.assignments
                .iter()
                .map(|a| (a.member_id.to_string(), a.assignment.to_vec()))
                .collect(),
        )
        .await;
    let mut resp = SyncGroupResponse::default();
    match r {
        Ok(r) => {
            if cx.version >= 5 {
                resp.protocol_type = req.protocol_type.clone();
                resp.protocol_name = Some(str(&r.protocol_name));
            }
            resp.assignment = Bytes::from(r.assignment);
        }
        Err(e) => resp.error_code = cx.code(&e),
    }
    resp
}

pub(crate) async fn heartbeat(cx: &Ctx<'_>, req: HeartbeatRequest) -> HeartbeatResponse {
    let _busy = cx.state().enter();
    if let Err(e) = cx.authorize(Action::UseGroup(req.group_id.0.as_str())) {
        let mut resp = HeartbeatResponse::default();
        resp.error_code = cx.code(&e);
        return resp;
    }
    let r = cx
        .state()
        .heartbeat(
            req.group_id.0.as_str(),
            req.member_id.as_str(),
            &opt(&req.group_instance_id),
            req.generation_id,
        )
        .await;
    let mut resp = HeartbeatResponse::default();
    resp.error_code = cx.code_of(&r);
    resp
}

pub(crate) async fn leave_group(cx: &Ctx<'_>, req: LeaveGroupRequest) -> LeaveGroupResponse {
    let members: Vec<(String, String)> = if cx.version >= 3 {
        req.members
            .iter()
            .map(|m| (m.member_id.to_string(), opt(&m.group_instance_id)))
            .collect()
    } else {
        vec![(req.member_id.to_string(), String::new())]
    };
    let _busy = cx.state().enter();
    let mut resp = LeaveGroupResponse::default();
    let left = match cx.authorize(Action::UseGroup(req.group_id.0.as_str())) {
        Ok(()) => {
            cx.state()
                .leave_group(req.group_id.0.as_str(), members)
                .await
        }
        Err(e) => Err(e),
    };
    match left {
        Ok(results) => {
            if cx.version >= 3 {
                resp.members = results
                    .into_iter()
                    .map(|(member_id, instance_id, r)| {
                        let mut m = MemberResponse::default();
                        m.member_id = str(&member_id);
                        m.group_instance_id = non_empty(&instance_id);
                        m.error_code = match r {
                            Ok(()) => code::NONE,
                            Err(e) => cx.code(&BrokerError::from(e)),
                        };
                        m
                    })
                    .collect();
            } else if let Some((_, _, Err(e))) = results.into_iter().next() {
                resp.error_code = cx.code(&BrokerError::from(e));
            }
        }
        Err(e) => resp.error_code = cx.code(&e),
    }
    resp
}

/// Offsets below zero name no position; Kafka clients never commit them.
fn offset_of(o: i64) -> Result<u64, BrokerError> {
    u64::try_from(o).map_err(|_| BrokerError::InvalidRequest(format!("offset {o} is negative")))
}

pub(crate) async fn offset_commit(cx: &Ctx<'_>, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let group = req.group_id.0.to_string();
    let mut offsets = Vec::new();
    let mut refused: BTreeMap<(String, i32), BrokerError> = BTreeMap::new();
    let caller = cx.caller();
    for t in &req.topics {
        let topic_denied = cx
            .state()
            .acls()
            .check(&caller, Action::CommitTopic(t.name.0.as_str()))
            .err();
        for p in &t.partitions {
            let key = (t.name.0.to_string(), p.partition_index);
            if let Some(d) = &topic_denied {
                refused.insert(key, BrokerError::Unauthorized(d.clone()));
                continue;
            }
            match (
                u32::try_from(p.partition_index),
                offset_of(p.committed_offset),
            ) {
                (Ok(pi), Ok(o)) => offsets.push((key.0.clone(), pi, o)),
                (Err(_), _) => {
                    refused.insert(
                        key.clone(),
                        BrokerError::UnknownTopicOrPartition {
                            topic: key.0.clone(),
                            partition: 0,
                        },
                    );
                }
                (_, Err(e)) => {
                    refused.insert(key, e);
                }
            }
        }
    }
    let fence = CommitFence {
        generation: req.generation_id_or_member_epoch,
        member_id: req.member_id.to_string(),
        instance_id: opt(&req.group_instance_id),
    };
    let _busy = cx.state().enter();
    let r = match cx.authorize(Action::UseGroup(&group)) {
        Ok(()) => cx.state().commit_offsets(&group, &offsets, &fence).await,
        Err(e) => Err(e),
    };
    let mut resp = OffsetCommitResponse::default();
    resp.topics = req
        .topics
        .iter()
        .map(|t| {
            let mut tr = OffsetCommitResponseTopic::default();
            tr.name = t.name.clone();
            tr.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut pr = OffsetCommitResponsePartition::default();
                    pr.partition_index = p.partition_index;
                    pr.error_code = match refused.get(&(t.name.0.to_string(), p.partition_index)) {
                        Some(e) => cx.code(e),
                        None => cx.code_of(&r),
                    };
                    pr
                })
                .collect();
            tr
        })
        .collect();
    resp
}

/// A topic's (partition, committed offset or -1, Kafka error) triples.
type TopicOffsets = (String, Vec<(i32, i64, i16)>);

/// One group's committed offsets for the requested partitions (`None`:
/// every partition it has committed), with -1 where it has none. An
/// unknown group is not an error: every offset is -1.
fn fetch_group(
    cx: &Ctx<'_>,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> Result<Vec<TopicOffsets>, BrokerError> {
    let state = cx.state();
    cx.authorize(Action::DescribeGroup(group))?;
    let caller = cx.caller();
    let topics = match topics {
        Some(t) => t,
        // Every topic the group committed to that the caller may see.
        None => {
            let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
            for (topic, partition, _) in state.group_offsets(group) {
                by_topic.entry(topic).or_default().push(partition as i32);
            }
            by_topic
                .into_iter()
                .filter(|(t, _)| state.may(&caller, Action::DescribeTopic(t)))
                .collect()
        }
    };
    let mut out = Vec::with_capacity(topics.len());
    for (topic, partitions) in topics {
        if let Err(e) = state.authorize(&caller, Action::DescribeTopic(&topic)) {
            let code = cx.code(&e);
            out.push((topic, partitions.iter().map(|p| (*p, -1, code)).collect()));
            continue;
        }
        let committed: BTreeMap<u32, u64> = match state.fetch_offsets(group, &topic, require_stable)
        {
            Ok(c) => c.into_iter().collect(),
            // Pending transactional offsets: this topic's partitions say so.
            Err(e @ BrokerError::Group(GroupError::UnstableOffsetCommit(_))) => {
                let code = cx.code(&e);
                out.push((topic, partitions.iter().map(|p| (*p, -1, code)).collect()));
                continue;
            }
            Err(e) => return Err(e),
        };
        let parts = partitions
            .iter()
            .map(|p| {
                let o = u32::try_from(*p)
                    .ok()
                    .and_then(|pi| committed.get(&pi))
                    .map_or(-1, |o| *o as i64);
                (*p, o, code::NONE)
            })
            .collect();
        out.push((topic, parts));
    }
    Ok(out)
}

pub(crate) async fn offset_fetch(cx: &Ctx<'_>, req: OffsetFetchRequest) -> OffsetFetchResponse {
    let mut resp = OffsetFetchResponse::default();
    if cx.version >= 8 {
        resp.groups = req
            .groups
            .iter()
            .map(|g| {
                let topics = g.topics.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                        .collect()
                });
                let mut gr = OffsetFetchResponseGroup::default();
                gr.group_id = g.group_id.clone();
                match fetch_group(cx, g.group_id.0.as_str(), topics, req.require_stable) {
                    Ok(found) => {
                        gr.topics = found
                            .into_iter()
                            .map(|(topic, parts)| {
                                let mut t = OffsetFetchResponseTopics::default();
                                t.name = topic_name(&topic);
                                t.partitions = parts
                                    .into_iter()
                                    .map(|(p, o, code)| {
                                        let mut pr = OffsetFetchResponsePartitions::default();
                                        pr.partition_index = p;
                                        pr.committed_offset = o;
                                        pr.committed_leader_epoch = -1;
                                        pr.metadata = Some(StrBytes::default());
                                        pr.error_code = code;
                                        pr
                                    })
                                    .collect();
                                t
                            })
                            .collect();
                    }
                    Err(e) => gr.error_code = cx.code(&e),
                }
                gr
            })
            .collect();
        return resp;
    }
    let topics = req.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
            .collect()
    });
    let require_stable = cx.version >= 7 && req.require_stable;
    match fetch_group(cx, req.group_id.0.as_str(), topics, require_stable) {
        Ok(found) => {
            resp.topics = found
                .into_iter()
                .map(|(topic, parts)| {
                    let mut t = OffsetFetchResponseTopic::default();
                    t.name = topic_name(&topic);
                    t.partitions = parts
                        .into_iter()
                        .map(|(p, o, code)| {
                            let mut pr = OffsetFetchResponsePartition::default();
                            pr.partition_index = p;
                            pr.committed_offset = o;
                            if cx.version >= 5 {
                                pr.committed_leader_epoch = -1;
                            }
                            pr.metadata = Some(StrBytes::default());
                            pr.error_code = code;
                            pr
                        })
                        .collect();
                    t
                })
                .collect();
        }
        Err(e) => {
            let code = cx.code(&e);
            if cx.version >= 2 {
                resp.error_code = code;
            }
        }
    }
    resp
}

pub(crate) async fn list_groups(cx: &Ctx<'_>, req: ListGroupsRequest) -> ListGroupsResponse {
    let mut resp = ListGroupsResponse::default();
    let wanted: Vec<String> = req.states_filter.iter().map(|s| s.to_lowercase()).collect();
    let caller = cx.caller();
    resp.groups = cx
        .state()
        .list_groups()
        .await
        .into_iter()
        .filter(|g| wanted.is_empty() || wanted.contains(&state_name(g.state).to_lowercase()))
        .filter(|g| cx.state().may(&caller, Action::DescribeGroup(&g.name)))
        .map(|g| {
            let mut l = ListedGroup::default();
            l.group_id = GroupId(str(&g.name));
            l.protocol_type = str(&g.protocol_type);
            if cx.version >= 4 {
                l.group_state = str(state_name(g.state));
            }
            l
        })
        .collect();
    resp
}

pub(crate) async fn describe_groups(
    cx: &Ctx<'_>,
    req: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut resp = DescribeGroupsResponse::default();
    for id in &req.groups {
        let mut d = DescribedGroup::default();
        d.group_id = id.clone();
        let described = match cx.authorize(Action::DescribeGroup(id.0.as_str())) {
            Ok(()) => cx.state().describe_group(id.0.as_str()).await,
            Err(e) => Err(e),
        };
        match described {
            Ok(g) => {
                d.group_state = str(state_name(g.state));
                d.protocol_type = str(&g.protocol_type);
                d.protocol_data = str(&g.protocol_name);
                d.members = g
                    .members
                    .iter()
                    .map(|m| {
                        let mut dm = DescribedGroupMember::default();
                        dm.member_id = str(&m.member_id);
                        if cx.version >= 4 {
                            dm.group_instance_id = non_empty(&m.instance_id);
                        }
                        dm.client_id = str(&m.client_id);
                        dm.client_host = str(&m.host);
                        dm.member_metadata = Bytes::from(m.metadata(&g.protocol_name).to_vec());
                        dm.member_assignment = Bytes::from(m.assignment.clone());
                        dm
                    })
                    .collect();
            }
            // Kafka describes an unknown group as Dead, not as an error.
            Err(BrokerError::Group(GroupError::GroupIdNotFound(_))) => {
                d.group_state = str("Dead");
            }
            Err(e) => d.error_code = cx.code(&e),
        }
        resp.groups.push(d);
    }
    resp
}

pub(crate) async fn delete_groups(cx: &Ctx<'_>, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut resp = DeleteGroupsResponse::default();
    let _busy = cx.state().enter();
    for id in &req.groups_names {
        let r = match cx.authorize(Action::DeleteGroup(id.0.as_str())) {
            Ok(()) => cx.state().delete_group(id.0.as_str()).await,
            Err(e) => Err(e),
        };
        let mut d = DeletableGroupResult::default();
        d.group_id = id.clone();
        d.error_code = cx.code_of(&r);
        resp.results.push(d);
    }
    resp
}
