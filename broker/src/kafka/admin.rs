//! Topic administration and configs: CreateTopics, DeleteTopics,
//! CreatePartitions, DescribeConfigs and DescribeProducers. One broker
//! holds one copy of every partition, so a replication factor above 1 is
//! accepted and reported as 1.

use kafka_protocol::messages::ProducerId;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsRequest;
use kafka_protocol::messages::create_partitions_response::{
    CreatePartitionsResponse, CreatePartitionsTopicResult,
};
use kafka_protocol::messages::create_topics_request::CreateTopicsRequest;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult, CreateTopicsResponse,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use kafka_protocol::messages::delete_topics_response::{
    DeletableTopicResult, DeleteTopicsResponse,
};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsRequest;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult,
};
use kafka_protocol::messages::describe_producers_request::DescribeProducersRequest;
use kafka_protocol::messages::describe_producers_response::{
    DescribeProducersResponse, PartitionResponse, ProducerState, TopicResponse,
};

use super::conn::Ctx;
use super::errors::code;
use super::metadata::{str, topic_name};
use crate::auth::actions::Action;
use crate::error::BrokerError;

/// DescribeConfigs resource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// DescribeConfigs config sources.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BrokerError> + Send + 'static,
) -> Result<T, BrokerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BrokerError::InvalidRequest(format!("admin task: {e}")))?
}

pub(crate) async fn create_topics(cx: &Ctx<'_>, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut resp = CreateTopicsResponse::default();
    let default = cx.state().config().default_partitions;
    let _busy = cx.state().enter();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut r = CreatableTopicResult::default();
        r.name = t.name.clone();
        let partitions = match t.num_partitions {
            -1 => Ok(default),
            n => u32::try_from(n).map_err(|_| BrokerError::InvalidPartitions {
                count: 0,
                max: crate::config::MAX_PARTITIONS_PER_TOPIC,
            }),
        };
        let outcome = if let Err(e) = cx.authorize(Action::CreateTopic(&name)) {
            r.error_code = cx.code(&e);
            r.error_message = Some(str(&e.to_string()));
            None
        } else if !t.assignments.is_empty() {
            r.error_code = cx.raw(code::INVALID_REQUEST);
            r.error_message = Some(str(
                "replica assignments are not supported: one broker holds every partition",
            ));
            None
        } else if t.replication_factor == 0 || t.replication_factor < -1 {
            r.error_code = cx.raw(code::INVALID_REPLICATION_FACTOR);
            r.error_message = Some(str("replication factor must be -1 or positive"));
            None
        } else {
            Some(partitions)
        };
        let config = crate::TopicConfig::from_pairs(
            t.configs
                .iter()
                .map(|c| (c.name.as_str(), c.value.as_ref().map_or("", |v| v.as_str()))),
        );
        let outcome = match (outcome, config) {
            (None, _) => None,
            (Some(_), Err(e)) => {
                let e = BrokerError::from(e);
                r.error_code = cx.code(&e);
                r.error_message = Some(str(&e.to_string()));
                None
            }
            (Some(partitions), Ok(config)) => Some((partitions, config)),
        };
        if let Some((partitions, config)) = outcome {
            let result = match partitions {
                Err(e) => Err(e),
                Ok(n) if req.validate_only => crate::names::check_name(&name)
                    .map_err(|reason| BrokerError::InvalidTopic {
                        name: name.clone(),
                        reason,
                    })
                    .and_then(|()| match cx.state().topic(&name) {
                        Ok(_) => Err(BrokerError::TopicAlreadyExists(name.clone())),
                        Err(_) if n == 0 || n > crate::config::MAX_PARTITIONS_PER_TOPIC => {
                            Err(BrokerError::InvalidPartitions {
                                count: n,
                                max: crate::config::MAX_PARTITIONS_PER_TOPIC,
                            })
                        }
                        Err(_) => Ok(()),
                    }),
                Ok(n) => {
                    let s = cx.state().clone();
                    let owned = name.clone();
                    blocking(move || s.create_topic_with_config(&owned, n, config)).await
                }
            };
            match result {
                Ok(()) => {
                    if cx.version >= 5 {
                        r.num_partitions = partitions_of(cx, &name, t.num_partitions, default);
                        r.replication_factor = 1;
                        r.configs = Some(
                            topic_configs(cx, &config)
                                .into_iter()
                                .map(|(name, value, source)| {
                                    let mut c = CreatableTopicConfigs::default();
                                    c.name = str(&name);
                                    c.value = Some(str(&value));
                                    c.read_only = true;
                                    c.config_source = source;
                                    c
                                })
                                .collect(),
                        );
                    }
                }
                Err(e) => {
                    r.error_code = cx.code(&e);
                    r.error_message = Some(str(&e.to_string()));
                }
            }
        }
        resp.topics.push(r);
    }
    resp
}

fn partitions_of(cx: &Ctx<'_>, name: &str, asked: i32, default: u32) -> i32 {
    cx.state()
        .topic(name)
        .map(|t| t.partitions.len() as i32)
        .unwrap_or(if asked == -1 { default as i32 } else { asked })
}

pub(crate) async fn delete_topics(cx: &Ctx<'_>, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let mut resp = DeleteTopicsResponse::default();
    let names: Vec<Option<String>> = if cx.version >= 6 {
        req.topics
            .iter()
            .map(|t| t.name.as_ref().map(|n| n.0.to_string()))
            .collect()
    } else {
        req.topic_names
            .iter()
            .map(|n| Some(n.0.to_string()))
            .collect()
    };
    let _busy = cx.state().enter();
    for name in names {
        let mut r = DeletableTopicResult::default();
        match name {
            None => {
                r.error_code = cx.raw(code::INVALID_REQUEST);
                if cx.version >= 5 {
                    r.error_message =
                        Some(str("topics are deleted by name; Ferry has no topic ids"));
                }
            }
            Some(name) => {
                r.name = Some(topic_name(&name));
                let s = cx.state().clone();
                let owned = name.clone();
                let result = match cx.authorize(Action::DeleteTopic(&name)) {
                    Ok(()) => blocking(move || s.delete_topic(&owned)).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    r.error_code = cx.code(&e);
                    if cx.version >= 5 {
                        r.error_message = Some(str(&e.to_string()));
                    }
                }
            }
        }
        resp.responses.push(r);
    }
    resp
}

/// The settings DescribeConfigs reports for a topic with `topic`'s
/// settings, by Kafka's names: (name, value, source). A topic setting
/// that differs from the default is reported as the topic's own.
fn topic_configs(cx: &Ctx<'_>, topic: &crate::TopicConfig) -> Vec<(String, String, i8)> {
    let c = cx.state().config();
    let log = &c.log;
    let defaults = crate::TopicConfig::default().to_pairs(log.segment_bytes);
    let mut v: Vec<(String, String, i8)> = topic
        .to_pairs(log.segment_bytes)
        .into_iter()
        .map(|(name, value)| {
            let source = match defaults.get(&name) {
                Some(d) if *d == value && name == "segment.bytes" => SOURCE_STATIC_BROKER,
                Some(d) if *d == value => SOURCE_DEFAULT,
                _ => SOURCE_TOPIC,
            };
            (name, value, source)
        })
        .collect();
    let broker_wide = [
        (
            "retention.bytes",
            log.retention_bytes
                .map_or("-1".to_string(), |b| b.to_string()),
            SOURCE_STATIC_BROKER,
        ),
        (
            "retention.ms",
            log.retention_ms.map_or("-1".to_string(), |m| m.to_string()),
            SOURCE_STATIC_BROKER,
        ),
        (
            "max.message.bytes",
            c.limits.max_batch_bytes.to_string(),
            SOURCE_STATIC_BROKER,
        ),
        (
            "message.timestamp.type",
            "CreateTime".to_string(),
            SOURCE_DEFAULT,
        ),
        ("compression.type", "producer".to_string(), SOURCE_DEFAULT),
    ];
    v.extend(
        broker_wide
            .into_iter()
            .map(|(name, value, source)| (name.to_string(), value, source)),
    );
    v
}

fn broker_configs(cx: &Ctx<'_>) -> Vec<(String, String, i8)> {
    let c = cx.state().config();
    let own = [
        (
            "broker.id",
            super::NODE_ID.to_string(),
            SOURCE_STATIC_BROKER,
        ),
        (
            "auto.create.topics.enable",
            c.auto_create_topics.to_string(),
            SOURCE_STATIC_BROKER,
        ),
        (
            "num.partitions",
            c.default_partitions.to_string(),
            SOURCE_STATIC_BROKER,
        ),
        (
            "group.min.session.timeout.ms",
            c.group_min_session_timeout_ms.to_string(),
            SOURCE_STATIC_BROKER,
        ),
        (
            "group.max.session.timeout.ms",
            c.group_max_session_timeout_ms.to_string(),
            SOURCE_STATIC_BROKER,
        ),
        (
            "group.initial.rebalance.delay.ms",
            c.group_initial_rebalance_delay_ms.to_string(),
            SOURCE_STATIC_BROKER,
        ),
        (
            "transaction.max.timeout.ms",
            crate::txn::MAX_TXN_TIMEOUT_MS.to_string(),
            SOURCE_DEFAULT,
        ),
    ];
    let mut v: Vec<(String, String, i8)> = own
        .into_iter()
        .map(|(name, value, source)| (name.to_string(), value, source))
        .collect();
    v.extend(topic_configs(cx, &crate::TopicConfig::default()));
    v
}

pub(crate) async fn describe_configs(
    cx: &Ctx<'_>,
    req: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let mut resp = DescribeConfigsResponse::default();
    for res in req.resources {
        let mut out = DescribeConfigsResult::default();
        out.resource_type = res.resource_type;
        out.resource_name = res.resource_name.clone();
        let configs = match res.resource_type {
            RESOURCE_TOPIC => match cx
                .authorize(Action::DescribeTopicConfigs(res.resource_name.as_str()))
                .and_then(|()| cx.state().topic(res.resource_name.as_str()))
            {
                Ok(topic) => Some(topic_configs(cx, &topic.config)),
                Err(e) => {
                    out.error_code = cx.code(&e);
                    out.error_message = Some(str(&e.to_string()));
                    None
                }
            },
            RESOURCE_BROKER
                if res.resource_name.is_empty()
                    || res.resource_name.as_str() == super::NODE_ID.to_string() =>
            {
                match cx.authorize(Action::DescribeClusterConfigs) {
                    Ok(()) => Some(broker_configs(cx)),
                    Err(e) => {
                        out.error_code = cx.code(&e);
                        out.error_message = Some(str(&e.to_string()));
                        None
                    }
                }
            }
            other => {
                out.error_code = cx.raw(code::INVALID_REQUEST);
                out.error_message = Some(str(&format!(
                    "resource type {other} named {:?} is not described here",
                    res.resource_name.as_str()
                )));
                None
            }
        };
        if let Some(configs) = configs {
            out.configs = configs
                .into_iter()
                .filter(|(name, ..)| {
                    res.configuration_keys
                        .as_ref()
                        .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
                })
                .map(|(name, value, source)| {
                    let mut c = DescribeConfigsResourceResult::default();
                    c.name = str(&name);
                    c.value = Some(str(&value));
                    c.read_only = true;
                    c.config_source = source;
                    c
                })
                .collect();
        }
        resp.results.push(out);
    }
    resp
}

pub(crate) async fn create_partitions(
    cx: &Ctx<'_>,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut resp = CreatePartitionsResponse::default();
    let _busy = cx.state().enter();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut r = CreatePartitionsTopicResult::default();
        r.name = t.name.clone();
        let result = if let Err(e) = cx.authorize(Action::AlterTopic(&name)) {
            Err(e)
        } else if t.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
            Err(BrokerError::InvalidRequest(
                "replica assignments are not supported: one broker holds every partition".into(),
            ))
        } else {
            match u32::try_from(t.count) {
                Err(_) => Err(BrokerError::InvalidPartitions {
                    count: 0,
                    max: crate::config::MAX_PARTITIONS_PER_TOPIC,
                }),
                Ok(n) if req.validate_only => cx.state().topic(&name).and_then(|topic| {
                    let current = topic.partitions.len() as u32;
                    if n <= current || n > crate::config::MAX_PARTITIONS_PER_TOPIC {
                        Err(BrokerError::InvalidPartitions {
                            count: n,
                            max: crate::config::MAX_PARTITIONS_PER_TOPIC,
                        })
                    } else {
                        Ok(())
                    }
                }),
                Ok(n) => {
                    let s = cx.state().clone();
                    let owned = name.clone();
                    blocking(move || s.add_partitions(&owned, n)).await
                }
            }
        };
        if let Err(e) = result {
            r.error_code = cx.code(&e);
            r.error_message = Some(str(&e.to_string()));
        }
        resp.results.push(r);
    }
    resp
}

pub(crate) async fn describe_producers(
    cx: &Ctx<'_>,
    req: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let mut resp = DescribeProducersResponse::default();
    for t in &req.topics {
        let mut tr = TopicResponse::default();
        tr.name = t.name.clone();
        for p in &t.partition_indexes {
            let mut pr = PartitionResponse::default();
            pr.partition_index = *p;
            let found = u32::try_from(*p)
                .map_err(|_| BrokerError::UnknownTopicOrPartition {
                    topic: t.name.0.to_string(),
                    partition: 0,
                })
                .and_then(|pi| {
                    cx.authorize(Action::Consume(t.name.0.as_str()))?;
                    cx.state().partition(t.name.0.as_str(), pi)
                });
            match found {
                Err(e) => {
                    pr.error_code = cx.code(&e);
                    pr.error_message = Some(str(&e.to_string()));
                }
                Ok(part) => {
                    pr.active_producers = part
                        .producers()
                        .into_iter()
                        .map(|(pid, entry, open_at)| {
                            let mut ps = ProducerState::default();
                            ps.producer_id = ProducerId(pid);
                            ps.producer_epoch = i32::from(entry.epoch);
                            ps.last_sequence = entry.batches.back().map_or(-1, |b| b.last_seq);
                            ps.last_timestamp = entry.last_update_ms;
                            ps.coordinator_epoch = -1;
                            ps.current_txn_start_offset = open_at.map_or(-1, |o| o as i64);
                            ps
                        })
                        .collect();
                }
            }
            tr.partitions.push(pr);
        }
        resp.topics.push(tr);
    }
    resp
}
