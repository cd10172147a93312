//! Raw-protocol helpers shared by the broker's tests: gRPC below, and
//! the Kafka front end in [`kafka`].
#![allow(dead_code)]

pub mod kafka;

use bytes::Bytes;
use ferry_proto::ErrorCode;
use ferry_proto::batch::{BatchBuilder, BatchIter, ProducerStamp};
use ferry_proto::control::{ControlType, marker_type};
use ferry_proto::v1;

/// A raw protocol client: these tests speak the wire protocol directly.
#[derive(Clone)]
pub struct Client(v1::ferry_client::FerryClient<tonic::transport::Channel>);

impl Client {
    pub async fn connect(addr: &str) -> Result<Client, tonic::transport::Error> {
        Ok(Client(
            v1::ferry_client::FerryClient::connect(format!("http://{addr}")).await?,
        ))
    }

    pub fn raw(&self) -> v1::ferry_client::FerryClient<tonic::transport::Channel> {
        self.0.clone()
    }

    pub async fn create_topic(&self, name: &str, partitions: u32) {
        let r = self.try_create_topic(name, partitions).await;
        assert_eq!(r, Ok(()), "create topic {name}");
    }

    /// Creates a topic; the broker's error code if it refuses.
    pub async fn try_create_topic(&self, name: &str, partitions: u32) -> Result<(), ErrorCode> {
        let r = self
            .raw()
            .create_topic(v1::CreateTopicRequest {
                name: name.into(),
                partitions,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        match ErrorCode::from_u32(r.error_code) {
            ErrorCode::None => Ok(()),
            code => Err(code),
        }
    }

    /// Lists the topics, or the RPC's status if the call fails.
    pub async fn list_topics(&self) -> Result<Vec<String>, tonic::Status> {
        let r = self
            .raw()
            .list_topics(v1::ListTopicsRequest {})
            .await?
            .into_inner();
        Ok(r.topics.into_iter().map(|t| t.name).collect())
    }

    /// The high watermark of one partition.
    pub async fn high_watermark(&self, topic: &str, partition: u32) -> u64 {
        let r = self
            .raw()
            .describe_topic(v1::DescribeTopicRequest { name: topic.into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.error_code, 0, "{}", r.error_message);
        r.partitions
            .iter()
            .find(|p| p.partition == partition)
            .expect("partition described")
            .high_watermark
    }

    pub async fn fetch_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> std::collections::HashMap<u32, u64> {
        self.raw()
            .fetch_offsets(v1::FetchOffsetsRequest {
                group: group.into(),
                topic: topic.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .offsets
            .into_iter()
            .map(|o| (o.partition, o.offset))
            .collect()
    }
}

pub struct Txn {
    pub tid: String,
    pub pid: i64,
    pub epoch: i32,
    /// Next sequence per partition of topic "t".
    pub seq: std::collections::HashMap<u32, i32>,
}

pub async fn init(client: &Client, tid: &str, timeout_ms: u32) -> Txn {
    let r = client
        .raw()
        .init_producer_id(v1::InitProducerIdRequest {
            transactional_id: tid.into(),
            transaction_timeout_ms: timeout_ms,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    Txn {
        tid: tid.into(),
        pid: r.producer_id,
        epoch: r.producer_epoch,
        seq: Default::default(),
    }
}

pub fn txn_batch(t: &Txn, partition: u32, values: &[&str]) -> Bytes {
    let seq = t.seq.get(&partition).copied().unwrap_or(0);
    let mut b = BatchBuilder::new(1)
        .producer(ProducerStamp {
            producer_id: t.pid,
            producer_epoch: t.epoch as i16,
            base_sequence: seq,
        })
        .transactional(true);
    for v in values {
        b.push(1, None, Some(v.as_bytes()), &[]);
    }
    b.finish()
}

pub async fn add(client: &Client, t: &Txn, topic: &str, partition: u32) -> u32 {
    client
        .raw()
        .add_partitions_to_txn(v1::AddPartitionsToTxnRequest {
            transactional_id: t.tid.clone(),
            producer_id: t.pid,
            producer_epoch: t.epoch,
            partitions: vec![v1::TopicPartition {
                topic: topic.into(),
                partition,
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .error_code
}

pub async fn send(
    client: &Client,
    t: &mut Txn,
    topic: &str,
    partition: u32,
    values: &[&str],
) -> v1::ProduceResponse {
    let r = client
        .raw()
        .produce(v1::ProduceRequest {
            correlation_id: 0,
            topic: topic.into(),
            partition,
            acks: v1::Acks::All as i32,
            batch: txn_batch(t, partition, values),
        })
        .await
        .unwrap()
        .into_inner();
    if r.error_code == 0 {
        *t.seq.entry(partition).or_default() += values.len() as i32;
    }
    r
}

pub async fn end(client: &Client, t: &Txn, commit: bool) -> v1::EndTxnResponse {
    client
        .raw()
        .end_txn(v1::EndTxnRequest {
            transactional_id: t.tid.clone(),
            producer_id: t.pid,
            producer_epoch: t.epoch,
            commit,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Values visible at `isolation`, after dropping control batches and,
/// for read_committed, the aborted transactions the broker lists.
pub async fn read(
    client: &Client,
    topic: &str,
    partition: u32,
    committed: bool,
) -> (Vec<String>, u64) {
    let isolation = if committed {
        v1::IsolationLevel::ReadCommitted
    } else {
        v1::IsolationLevel::ReadUncommitted
    };
    let r = client
        .raw()
        .fetch(v1::FetchRequest {
            partitions: vec![v1::FetchPartition {
                topic: topic.into(),
                partition,
                offset: 0,
                max_bytes: 1 << 20,
            }],
            isolation: isolation as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let p = &r.partitions[0];
    assert_eq!(p.error_code, 0, "{}", p.error_message);
    let aborted: Vec<_> = p
        .aborted_transactions
        .iter()
        .map(|a| (a.producer_id, a.first_offset))
        .collect();
    let mut ended_abort: std::collections::HashSet<i64> = Default::default();
    let mut out = Vec::new();
    for b in BatchIter::new(&p.records) {
        let b = b.unwrap();
        let h = *b.header();
        if let Some(kind) = marker_type(&b) {
            if kind == ControlType::Abort {
                ended_abort.insert(h.producer_id);
            }
            continue;
        }
        let dropped = h.is_transactional()
            && aborted
                .iter()
                .any(|&(pid, first)| pid == h.producer_id && h.base_offset >= first)
            && !ended_abort.contains(&h.producer_id);
        if dropped {
            continue;
        }
        for rec in b.records().unwrap().iter() {
            out.push(String::from_utf8(rec.unwrap().value.unwrap().to_vec()).unwrap());
        }
    }
    (out, p.last_stable_offset)
}

/// `AddOffsetsToTxn` then `TxnOffsetCommit` of `offset` for `t`/0 in group
/// "g"; returns the two responses' (code, message).
pub async fn send_offsets(client: &Client, t: &Txn, offset: u64) -> [(u32, String); 2] {
    let r = client
        .raw()
        .add_offsets_to_txn(v1::AddOffsetsToTxnRequest {
            transactional_id: t.tid.clone(),
            producer_id: t.pid,
            producer_epoch: t.epoch,
            group: "g".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let added = (r.error_code, r.error_message);
    let r = client
        .raw()
        .txn_offset_commit(v1::TxnOffsetCommitRequest {
            transactional_id: t.tid.clone(),
            producer_id: t.pid,
            producer_epoch: t.epoch,
            group: "g".into(),
            offsets: vec![v1::PartitionOffset {
                topic: "t".into(),
                partition: 0,
                offset,
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    [added, (r.error_code, r.error_message)]
}
