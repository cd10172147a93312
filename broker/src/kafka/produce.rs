//! Produce: each partition's record batches go to the core's append path
//! as they arrived (Ferry's batch format is Kafka's RecordBatch v2), so
//! the idempotence window, the transaction registration check and the
//! batch validation are the same for Kafka clients as for Ferry's own.
//!
//! The appends happen at once, in request order; the response waits for
//! each partition's acknowledgement level (acks 1 = appended, -1 =
//! durable under the flush policy) off the reading path. With acks 0 no
//! response is sent.

use std::sync::Arc;
use std::time::Instant;

use ferry_proto::batch::BatchHeader;
use ferry_storage::AppendInfo;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};

use super::conn::{self, Close, Ctx, Reply};
use super::errors;
use super::metadata::{str, topic_name};
use crate::auth::actions::Action;
use crate::error::BrokerError;
use crate::quota::Direction;
use crate::state::{AckLevel, BrokerState};
use crate::topics::Partition;

type Appended = Result<(Arc<Partition>, AppendInfo), BrokerError>;

/// Splits a partition's records into batches and appends each. A record
/// set normally holds one batch; the result is the first batch's offsets
/// and the last batch's end, or the first error (batches before it stay
/// appended, as each is a complete write of its own).
fn append_all(state: &BrokerState, topic: &str, partition: i32, records: &[u8]) -> Appended {
    let partition = u32::try_from(partition).map_err(|_| BrokerError::UnknownTopicOrPartition {
        topic: topic.to_string(),
        partition: 0,
    })?;
    if records.is_empty() {
        return Err(BrokerError::InvalidRequest(
            "a produce carried no record batch".into(),
        ));
    }
    let mut rest = records;
    let mut first: Option<(Arc<Partition>, AppendInfo)> = None;
    while !rest.is_empty() {
        let len = BatchHeader::decode(rest)?.batch_len as usize;
        let batch = rest.get(..len).ok_or(BrokerError::CorruptBatch(
            ferry_proto::batch::BatchError::Truncated {
                needed: len,
                available: rest.len(),
            },
        ))?;
        let (p, info) = state.append(topic, partition, batch)?;
        first = Some(match first {
            None => (p, info),
            Some((p0, mut i0)) => {
                i0.last_offset = info.last_offset;
                (p0, i0)
            }
        });
        rest = &rest[len..];
    }
    Ok(first.expect("at least one batch"))
}

pub(crate) fn handle(
    cx: &Ctx<'_>,
    correlation_id: i32,
    req: ProduceRequest,
) -> Result<Reply, Close> {
    let started = Instant::now();
    let version = cx.version;
    let state = cx.state().clone();
    let acks = match req.acks {
        0 => AckLevel::None,
        1 => AckLevel::Leader,
        _ => AckLevel::All,
    };
    let bad_acks = !(-1..=1).contains(&req.acks);
    let caller = cx.caller();
    let transactional_id = req.transactional_id.as_ref().map(|id| id.0.to_string());
    let bytes: usize = req
        .topic_data
        .iter()
        .flat_map(|t| &t.partition_data)
        .map(|p| p.records.as_ref().map_or(0, |r| r.len()))
        .sum();
    let throttle_time_ms = cx.throttle(Direction::Produce, bytes);
    let _busy = state.enter();
    let mut appended: Vec<(String, Vec<(i32, Appended)>)> =
        Vec::with_capacity(req.topic_data.len());
    for t in req.topic_data {
        let name = t.name.0.to_string();
        let allowed = state.acls().check(
            &caller,
            Action::Produce {
                topic: &name,
                transactional_id: transactional_id.as_deref(),
            },
        );
        let parts = t
            .partition_data
            .into_iter()
            .map(|p| {
                let r = if let Err(denied) = &allowed {
                    Err(BrokerError::Unauthorized(denied.clone()))
                } else if bad_acks {
                    Err(BrokerError::InvalidRequest(format!(
                        "acks must be 0, 1 or -1, not {}",
                        req.acks
                    )))
                } else {
                    append_all(&state, &name, p.index, p.records.as_deref().unwrap_or(&[]))
                };
                (p.index, r)
            })
            .collect();
        appended.push((name, parts));
    }
    if acks == AckLevel::None && !bad_acks {
        return Ok(Reply::Nothing);
    }
    let busy = state.enter();
    Ok(Reply::Later(Box::pin(async move {
        let _busy = busy;
        let mut resp = ProduceResponse::default();
        resp.throttle_time_ms = throttle_time_ms;
        let mut failed = 0u64;
        for (name, parts) in appended {
            let mut tr = TopicProduceResponse::default();
            tr.name = topic_name(&name);
            for (index, r) in parts {
                let r = match r {
                    Ok((p, info)) => state.await_ack(&p, &info, acks).await.map(|()| info),
                    Err(e) => Err(e),
                };
                let mut pr = PartitionProduceResponse::default();
                pr.index = index;
                match r {
                    Ok(info) => {
                        pr.base_offset = info.base_offset as i64;
                        pr.log_start_offset = info.log_start_offset as i64;
                    }
                    Err(e) => {
                        failed += 1;
                        if e.code() == ferry_proto::ErrorCode::StorageError {
                            tracing::error!(error = %e, "produce failed in storage");
                        }
                        pr.error_code = errors::of(&e);
                        pr.base_offset = -1;
                        if version >= 8 {
                            pr.error_message = Some(str(&e.to_string()));
                        }
                    }
                }
                tr.partition_responses.push(pr);
            }
            resp.responses.push(tr);
        }
        if failed > 0 {
            metrics::counter!("ferry_kafka_request_errors_total", "api" => "Produce")
                .increment(failed);
        }
        metrics::histogram!("ferry_kafka_request_seconds", "api" => "Produce")
            .record(started.elapsed().as_secs_f64());
        match conn::encode(correlation_id, ApiKey::Produce, version, &resp) {
            Ok(b) => Some(b.into()),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a produce response");
                None
            }
        }
    })))
}
