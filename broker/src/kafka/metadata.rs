//! ApiVersions, Metadata, FindCoordinator and DescribeCluster: who the
//! broker is and which topics it has. One broker, node [`NODE_ID`], leads
//! every partition at leader epoch 0 with itself as the only replica.

use std::sync::Arc;

use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use kafka_protocol::messages::describe_cluster_request::DescribeClusterRequest;
use kafka_protocol::messages::describe_cluster_response::{
    DescribeClusterBroker, DescribeClusterResponse,
};
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::NODE_ID;
use super::conn::Ctx;
use super::errors::code;
use crate::auth::actions::Action;
use crate::error::BrokerError;
use crate::topics::Topic;

/// The cluster id Metadata and DescribeCluster report.
pub(crate) const CLUSTER_ID: &str = "ferry";

/// FindCoordinator key types (KIP-98).
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

pub(crate) fn str(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub(crate) fn topic_name(s: &str) -> TopicName {
    TopicName(str(s))
}

pub(crate) async fn api_versions(cx: &Ctx<'_>, _req: ApiVersionsRequest) -> ApiVersionsResponse {
    super::versions::answer_api_versions(cx.version).0
}

/// The topic named `name`, created with the default partition count if
/// it is missing, auto-creation is on and the request allows it.
pub(crate) async fn topic_or_create(
    cx: &Ctx<'_>,
    name: &str,
    allow_create: bool,
) -> Result<Arc<Topic>, BrokerError> {
    let state = cx.state();
    match state.topic(name) {
        Ok(t) => Ok(t),
        Err(e) if !(allow_create && state.config().auto_create_topics) => Err(e),
        Err(_) => {
            cx.authorize(Action::CreateTopic(name))?;
            let s = state.clone();
            let owned = name.to_string();
            let partitions = state.config().default_partitions;
            let created = tokio::task::spawn_blocking(move || s.create_topic(&owned, partitions))
                .await
                .map_err(|e| BrokerError::InvalidRequest(format!("create topic: {e}")))?;
            match created {
                Ok(()) => tracing::info!(topic = name, partitions, "created topic on first use"),
                // Another client created it first.
                Err(BrokerError::TopicAlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
            state.topic(name)
        }
    }
}

fn describe_topic(topic: &Topic) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default();
    t.name = Some(topic_name(&topic.name));
    t.partitions = topic
        .partitions
        .iter()
        .map(|p| {
            let mut mp = MetadataResponsePartition::default();
            mp.partition_index = p.id as i32;
            mp.leader_id = BrokerId(NODE_ID);
            mp.leader_epoch = 0;
            mp.replica_nodes = vec![BrokerId(NODE_ID)];
            mp.isr_nodes = vec![BrokerId(NODE_ID)];
            mp
        })
        .collect();
    t
}

pub(crate) async fn metadata(cx: &Ctx<'_>, req: MetadataRequest) -> MetadataResponse {
    let mut resp = MetadataResponse::default();
    let mut broker = MetadataResponseBroker::default();
    broker.node_id = BrokerId(NODE_ID);
    broker.host = str(&cx.conn.advertised.host);
    broker.port = i32::from(cx.conn.advertised.port);
    resp.brokers = vec![broker];
    if cx.version >= 2 {
        resp.cluster_id = Some(str(CLUSTER_ID));
    }
    if cx.version >= 1 {
        resp.controller_id = BrokerId(NODE_ID);
    }
    // v0 asks for every topic with an empty list; v1+ with a null one.
    let names = match req.topics {
        None => None,
        Some(t) if t.is_empty() && cx.version == 0 => None,
        Some(t) => Some(t),
    };
    let caller = cx.caller();
    resp.topics = match names {
        // Every topic the caller may see.
        None => cx
            .state()
            .topics()
            .iter()
            .filter(|t| cx.state().may(&caller, Action::DescribeTopic(&t.name)))
            .map(|t| describe_topic(t))
            .collect(),
        Some(requested) => {
            let mut out = Vec::with_capacity(requested.len());
            for rt in requested {
                let name = rt
                    .name
                    .as_ref()
                    .map(|n| n.0.to_string())
                    .unwrap_or_default();
                let described = match cx.authorize(Action::DescribeTopic(&name)) {
                    Ok(()) => topic_or_create(cx, &name, req.allow_auto_topic_creation).await,
                    Err(e) => Err(e),
                };
                match described {
                    Ok(t) => out.push(describe_topic(&t)),
                    Err(e) => {
                        let mut t = MetadataResponseTopic::default();
                        t.name = Some(topic_name(&name));
                        t.error_code = cx.code(&e);
                        out.push(t);
                    }
                }
            }
            out
        }
    };
    resp
}

pub(crate) async fn find_coordinator(
    cx: &Ctx<'_>,
    req: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let mut resp = FindCoordinatorResponse::default();
    let known = matches!(req.key_type, KEY_TYPE_GROUP | KEY_TYPE_TRANSACTION);
    // Finding a coordinator needs describe on what it coordinates.
    let allowed = |key: &str| match req.key_type {
        KEY_TYPE_GROUP => cx.authorize(Action::DescribeGroup(key)),
        _ => cx.authorize(Action::DescribeTransaction(key)),
    };
    let host = str(&cx.conn.advertised.host);
    let port = i32::from(cx.conn.advertised.port);
    if cx.version >= 4 {
        resp.coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let mut c = Coordinator::default();
                let denied = if known { allowed(&key).err() } else { None };
                c.key = key;
                if let Some(e) = denied {
                    c.error_code = cx.code(&e);
                    c.error_message = Some(str(&e.to_string()));
                    c.node_id = BrokerId(-1);
                } else if known {
                    c.node_id = BrokerId(NODE_ID);
                    c.host = host.clone();
                    c.port = port;
                } else {
                    c.error_code = cx.raw(code::INVALID_REQUEST);
                    c.error_message = Some(str("unknown coordinator key type"));
                }
                c
            })
            .collect();
    } else if let Some(e) = known.then(|| allowed(&req.key)).and_then(Result::err) {
        resp.error_code = cx.code(&e);
        resp.node_id = BrokerId(-1);
        if cx.version >= 1 {
            resp.error_message = Some(str(&e.to_string()));
        }
    } else if known {
        resp.node_id = BrokerId(NODE_ID);
        resp.host = host;
        resp.port = port;
    } else {
        resp.error_code = cx.raw(code::INVALID_REQUEST);
        if cx.version >= 1 {
            resp.error_message = Some(str("unknown coordinator key type"));
        }
    }
    resp
}

pub(crate) async fn describe_cluster(
    cx: &Ctx<'_>,
    _req: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let mut resp = DescribeClusterResponse::default();
    resp.cluster_id = str(CLUSTER_ID);
    resp.controller_id = BrokerId(NODE_ID);
    let mut b = DescribeClusterBroker::default();
    b.broker_id = BrokerId(NODE_ID);
    b.host = str(&cx.conn.advertised.host);
    b.port = i32::from(cx.conn.advertised.port);
    resp.brokers = vec![b];
    resp
}
