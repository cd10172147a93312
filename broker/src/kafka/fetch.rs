//! Fetch, ListOffsets and OffsetForLeaderEpoch: reading, and finding
//! where to read. A fetch returns the stored batches as they are; under
//! read_committed it stops at the last stable offset and lists the
//! aborted transactions in range, which Kafka clients use to drop those
//! records.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ProducerId;
use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchResponse, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::list_offsets_request::ListOffsetsRequest;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderEpochRequest;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderEpochResponse, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{ApiKey, ResponseHeader};
use kafka_protocol::protocol::Encodable;

use super::conn::{Close, Ctx};
use super::errors::code;
use super::frame::Frame;
use super::metadata::topic_name;
use crate::auth::actions::Action;
use crate::config::MAX_FETCH_WAIT_MS;
use crate::error::BrokerError;
use crate::state::{FetchSpec, Isolation, OffsetSpec};

/// ListOffsets timestamps with a meaning of their own.
const LATEST_TIMESTAMP: i64 = -1;
const EARLIEST_TIMESTAMP: i64 = -2;

/// Kafka's isolation levels.
const READ_COMMITTED: i8 = 1;

fn isolation(level: i8) -> Isolation {
    if level == READ_COMMITTED {
        Isolation::ReadCommitted
    } else {
        Isolation::ReadUncommitted
    }
}

pub(crate) async fn fetch(cx: &Ctx<'_>, req: FetchRequest) -> FetchResponse {
    let mut resp = FetchResponse::default();
    let isolation = isolation(req.isolation_level);
    // Offsets and partitions that cannot be valid are answered without
    // asking the core; the rest are fetched together.
    let mut specs = Vec::new();
    let mut early: Vec<(String, i32, i16)> = Vec::new();
    for t in &req.topics {
        let topic = t.topic.0.to_string();
        let denied = cx
            .authorize(Action::Consume(&topic))
            .err()
            .map(|e| super::errors::of(&e));
        for p in &t.partitions {
            if let Some(code) = denied {
                early.push((topic.clone(), p.partition, code));
                continue;
            }
            match (u32::try_from(p.partition), u64::try_from(p.fetch_offset)) {
                (Ok(partition), Ok(offset)) => specs.push(FetchSpec {
                    topic: topic.clone(),
                    partition,
                    offset,
                    max_bytes: u32::try_from(p.partition_max_bytes).unwrap_or(0).max(1),
                }),
                (Err(_), _) => {
                    early.push((topic.clone(), p.partition, code::UNKNOWN_TOPIC_OR_PARTITION))
                }
                (_, Err(_)) => early.push((topic.clone(), p.partition, code::OFFSET_OUT_OF_RANGE)),
            }
        }
    }
    // min_bytes 0 means "answer at once".
    let wait = if req.min_bytes <= 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(req.max_wait_ms.clamp(0, MAX_FETCH_WAIT_MS as i32) as u64)
    };
    let max_bytes = usize::try_from(req.max_bytes)
        .ok()
        .filter(|m| *m > 0)
        .unwrap_or(usize::MAX);
    let _busy = cx.state().enter();
    let results = cx
        .state()
        .fetch(
            specs,
            wait,
            req.min_bytes.max(1) as usize,
            max_bytes,
            isolation,
        )
        .await;
    let mut topics: Vec<FetchableTopicResponse> = Vec::new();
    let mut push = |topic: &str, pd: PartitionData| match topics
        .iter_mut()
        .find(|t| t.topic.0.as_str() == topic)
    {
        Some(t) => t.partitions.push(pd),
        None => {
            let mut t = FetchableTopicResponse::default();
            t.topic = topic_name(topic);
            t.partitions.push(pd);
            topics.push(t);
        }
    };
    match results {
        Err(e) => resp.error_code = cx.code(&e),
        Ok(results) => {
            for r in results {
                let mut pd = PartitionData::default();
                pd.partition_index = r.spec.partition as i32;
                pd.high_watermark = r.high_watermark as i64;
                pd.last_stable_offset = r.last_stable_offset as i64;
                pd.log_start_offset = r.log_start_offset as i64;
                if isolation == Isolation::ReadCommitted {
                    pd.aborted_transactions = Some(
                        r.aborted
                            .iter()
                            .map(|a| {
                                let mut at = AbortedTransaction::default();
                                at.producer_id = ProducerId(a.producer_id);
                                at.first_offset = a.first_offset as i64;
                                at
                            })
                            .collect(),
                    );
                }
                match r.records {
                    Ok(b) => pd.records = Some(b),
                    Err(e) => {
                        pd.error_code = cx.code(&e);
                        pd.high_watermark = -1;
                        pd.last_stable_offset = -1;
                        pd.log_start_offset = -1;
                    }
                }
                push(&r.spec.topic, pd);
            }
        }
    }
    for (topic, partition, error) in early {
        let mut pd = PartitionData::default();
        pd.partition_index = partition;
        pd.error_code = cx.raw(error);
        pd.high_watermark = -1;
        push(&topic, pd);
    }
    let bytes: usize = topics
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| p.records.as_ref().map_or(0, Bytes::len))
        .sum();
    resp.throttle_time_ms = cx.throttle(crate::quota::Direction::Fetch, bytes);
    resp.responses = topics;
    resp
}

fn list_one(
    cx: &Ctx<'_>,
    topic: &str,
    partition: i32,
    timestamp: i64,
    level: i8,
) -> Result<u64, BrokerError> {
    let unknown = || BrokerError::UnknownTopicOrPartition {
        topic: topic.to_string(),
        partition: 0,
    };
    cx.authorize(Action::DescribeTopic(topic))?;
    let partition = u32::try_from(partition).map_err(|_| unknown())?;
    let state = cx.state();
    match timestamp {
        LATEST_TIMESTAMP if isolation(level) == Isolation::ReadCommitted => {
            Ok(state.partition(topic, partition)?.last_stable_offset())
        }
        LATEST_TIMESTAMP => state.list_offset(topic, partition, OffsetSpec::Latest),
        EARLIEST_TIMESTAMP => state.list_offset(topic, partition, OffsetSpec::Earliest),
        ts if ts >= 0 => state.list_offset(topic, partition, OffsetSpec::ByTimestamp(ts)),
        other => Err(BrokerError::InvalidRequest(format!(
            "ListOffsets timestamp {other} is not supported (only -1 latest, -2 earliest, or a time)"
        ))),
    }
}

pub(crate) async fn list_offsets(cx: &Ctx<'_>, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut resp = ListOffsetsResponse::default();
    resp.topics = req
        .topics
        .iter()
        .map(|t| {
            let topic = t.name.0.as_str();
            let mut tr = ListOffsetsTopicResponse::default();
            tr.name = t.name.clone();
            tr.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut pr = ListOffsetsPartitionResponse::default();
                    pr.partition_index = p.partition_index;
                    match list_one(
                        cx,
                        topic,
                        p.partition_index,
                        p.timestamp,
                        req.isolation_level,
                    ) {
                        Ok(o) => {
                            pr.offset = o as i64;
                            pr.timestamp = -1;
                            if cx.version >= 4 {
                                pr.leader_epoch = 0;
                            }
                        }
                        Err(e) => {
                            pr.error_code = cx.code(&e);
                            pr.offset = -1;
                            pr.timestamp = -1;
                        }
                    }
                    pr
                })
                .collect();
            tr
        })
        .collect();
    resp
}

/// Every partition has one leader epoch, 0, which ends at the high
/// watermark: a client validating its position after a leader change
/// learns that nothing was truncated.
pub(crate) async fn offset_for_leader_epoch(
    cx: &Ctx<'_>,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let mut resp = OffsetForLeaderEpochResponse::default();
    resp.topics = req
        .topics
        .iter()
        .map(|t| {
            let mut tr = OffsetForLeaderTopicResult::default();
            tr.topic = t.topic.clone();
            tr.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut e = EpochEndOffset::default();
                    e.partition = p.partition;
                    let found = u32::try_from(p.partition)
                        .map_err(|_| BrokerError::UnknownTopicOrPartition {
                            topic: t.topic.0.to_string(),
                            partition: 0,
                        })
                        .and_then(|pi| {
                            cx.authorize(Action::DescribeTopic(t.topic.0.as_str()))?;
                            cx.state().partition(t.topic.0.as_str(), pi)
                        });
                    match found {
                        Ok(part) => {
                            e.leader_epoch = 0;
                            e.end_offset = part.visible_offset() as i64;
                        }
                        Err(err) => {
                            e.error_code = cx.code(&err);
                            e.leader_epoch = -1;
                            e.end_offset = -1;
                        }
                    }
                    e
                })
                .collect();
            tr
        })
        .collect();
    resp
}

/// Encodes a fetch response frame whose record batches are the stored
/// bytes themselves, not copies: the frame's segments alternate between
/// the small encoded parts and the batches. The bytes are those that
/// [`conn::encode`] would write; each partition's fields come from the
/// codec, and only the records field, which it encodes last, is written
/// here.
pub(crate) fn encode_response(
    correlation_id: i32,
    version: i16,
    mut resp: FetchResponse,
) -> Result<Frame, Close> {
    let failed = |e: &dyn std::fmt::Display| Close::Encode(ApiKey::Fetch, version, e.to_string());
    // v12 and later are flexible: compact lengths and tagged fields.
    let flexible = version >= 12;
    // How the codec writes a null `records`, followed in flexible versions
    // by the partition's empty tagged fields.
    let null_tail: &[u8] = if flexible { &[0, 0] } else { &[0xff; 4] };
    let mut frame = Frame::default();
    let mut head = BytesMut::with_capacity(256);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header
        .encode(&mut head, ApiKey::Fetch.response_header_version(version))
        .map_err(|e| failed(&e))?;
    head.put_i32(resp.throttle_time_ms);
    if version >= 7 {
        head.put_i16(resp.error_code);
        head.put_i32(resp.session_id);
    }
    put_len(&mut head, flexible, resp.responses.len());
    let mut scratch = BytesMut::new();
    for t in &mut resp.responses {
        let name = t.topic.0.as_bytes();
        if flexible {
            put_uvarint(&mut head, name.len() as u64 + 1);
        } else {
            let len = i16::try_from(name.len()).map_err(|e| failed(&e))?;
            head.put_i16(len);
        }
        head.extend_from_slice(name);
        put_len(&mut head, flexible, t.partitions.len());
        for p in &mut t.partitions {
            let records = p.records.take();
            scratch.clear();
            p.encode(&mut scratch, version).map_err(|e| failed(&e))?;
            if !scratch.ends_with(null_tail) {
                return Err(failed(&"a partition's records are not its last field"));
            }
            head.extend_from_slice(&scratch[..scratch.len() - null_tail.len()]);
            match records {
                None => {
                    head.extend_from_slice(&null_tail[..null_tail.len() - usize::from(flexible)])
                }
                Some(b) => {
                    if flexible {
                        put_uvarint(&mut head, b.len() as u64 + 1);
                    } else {
                        let len = i32::try_from(b.len()).map_err(|e| failed(&e))?;
                        head.put_i32(len);
                    }
                    frame.push(head.split().freeze());
                    frame.push(b);
                }
            }
            if flexible {
                head.put_u8(0); // the partition's tagged fields: none
            }
        }
        if flexible {
            head.put_u8(0); // the topic's tagged fields
        }
    }
    if flexible {
        head.put_u8(0); // the response's tagged fields
    }
    frame.push(head.freeze());
    let size = i32::try_from(frame.remaining()).map_err(|e| failed(&e))?;
    frame.push_front(Bytes::copy_from_slice(&size.to_be_bytes()));
    Ok(frame)
}

/// An array length: compact (length + 1, unsigned varint) or an i32.
fn put_len(buf: &mut BytesMut, flexible: bool, len: usize) {
    if flexible {
        put_uvarint(buf, len as u64 + 1);
    } else {
        buf.put_i32(len as i32);
    }
}

fn put_uvarint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

#[cfg(test)]
mod tests {
    use crate::kafka::conn;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::StrBytes;
    use proptest::prelude::*;

    use super::*;

    fn response() -> impl Strategy<Value = FetchResponse> {
        let partition = (
            any::<i32>(),
            any::<i16>(),
            any::<i64>(),
            proptest::option::of(proptest::collection::vec(
                (any::<i64>(), any::<i64>()),
                0..3,
            )),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        )
            .prop_map(|(index, error, hw, aborted, records)| {
                let mut pd = PartitionData::default();
                pd.partition_index = index;
                pd.error_code = error;
                pd.high_watermark = hw;
                pd.last_stable_offset = hw / 2;
                pd.log_start_offset = hw / 3;
                pd.aborted_transactions = aborted.map(|v| {
                    v.into_iter()
                        .map(|(id, first)| {
                            let mut a = AbortedTransaction::default();
                            a.producer_id = ProducerId(id);
                            a.first_offset = first;
                            a
                        })
                        .collect()
                });
                pd.records = records.map(Bytes::from);
                pd
            });
        let topic = ("[a-z.]{0,140}", proptest::collection::vec(partition, 0..4)).prop_map(
            |(name, partitions)| {
                let mut t = FetchableTopicResponse::default();
                t.topic = TopicName(StrBytes::from_string(name));
                t.partitions = partitions;
                t
            },
        );
        (
            any::<i32>(),
            any::<i16>(),
            any::<i32>(),
            proptest::collection::vec(topic, 0..4),
        )
            .prop_map(|(throttle, error, session, topics)| {
                let mut r = FetchResponse::default();
                r.throttle_time_ms = throttle;
                r.error_code = error;
                r.session_id = session;
                r.responses = topics;
                r
            })
    }

    proptest! {
        /// The zero-copy frame holds exactly the bytes the codec writes,
        /// at every fetch version served, with its batches left where they
        /// were.
        #[test]
        fn the_zero_copy_fetch_frame_matches_the_codec(
            resp in response(),
            version in 4i16..=12,
            correlation_id in any::<i32>(),
        ) {
            let mut resp = resp;
            if version < 7 {
                resp.error_code = 0;
                resp.session_id = 0;
            }
            let want = conn::encode(correlation_id, ApiKey::Fetch, version, &resp).unwrap();
            let batches: Vec<Bytes> = resp
                .responses
                .iter()
                .flat_map(|t| t.partitions.iter().filter_map(|p| p.records.clone()))
                .filter(|b| !b.is_empty())
                .collect();
            let frame = encode_response(correlation_id, version, resp).unwrap();
            prop_assert_eq!(frame.remaining(), want.len());
            prop_assert_eq!(frame.to_vec(), want.to_vec());
            let mut slices = [std::io::IoSlice::new(&[]); 64];
            let n = frame.chunks_vectored(&mut slices);
            for b in &batches {
                prop_assert!(
                    slices[..n].iter().any(|s| s.as_ptr() == b.as_ptr() && s.len() == b.len()),
                    "a batch was copied"
                );
            }
        }
    }
}
