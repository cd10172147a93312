//! What the console shows and the admin API returns, read from the broker
//! core with the caller's rights. Each function here is one view: the API
//! serializes it as JSON, the console renders it as HTML.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ferry_proto::batch::DecodedBatchIter;
use ferry_proto::consumer_protocol::Assignment;
use ferry_proto::control::AbortedFilter;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Http;
use crate::BrokerError;
use crate::auth::acl::Caller;
use crate::auth::actions::Action;
use crate::group::GroupError;
use crate::state::{FetchSpec, Isolation, OffsetSpec};

/// Most records one browse returns.
pub const MAX_BROWSE_RECORDS: u32 = 500;
/// Records a browse returns when it does not say.
pub const DEFAULT_BROWSE_RECORDS: u32 = 50;
/// Bytes one browse reads from the log at most.
pub const MAX_BROWSE_BYTES: u32 = 4 * 1024 * 1024;

/// The broker at a glance.
#[derive(Debug, Serialize, ToSchema)]
pub struct BrokerView {
    /// Ferry's version.
    pub version: String,
    /// Milliseconds since the broker started serving.
    pub uptime_ms: u64,
    /// The gRPC listener's address.
    pub grpc_listen: Option<String>,
    /// The Kafka listener's address, if it is on.
    pub kafka_listen: Option<String>,
    /// This listener's address.
    pub http_listen: Option<String>,
    /// The flush policy (`always`, `interval=MS`, `never`).
    pub fsync: String,
    /// The data directory.
    pub data_dir: String,
    /// Bytes the topics' logs hold.
    pub log_bytes: u64,
    /// Size of the data dir's filesystem, if it can be read.
    pub disk_total_bytes: Option<u64>,
    /// Bytes free on it for the broker, if it can be read.
    pub disk_free_bytes: Option<u64>,
    /// Number of topics.
    pub topics: u32,
    /// Whether clients must authenticate.
    pub authentication: bool,
    /// Produce and fetch rates over the last minutes, one point a second.
    pub throughput: Vec<ThroughputPoint>,
}

/// Rates between two readings.
#[derive(Debug, Serialize, ToSchema)]
pub struct ThroughputPoint {
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// Bytes appended per second.
    pub produce_bytes_per_sec: f64,
    /// Offsets appended per second (records and transaction markers).
    pub produce_records_per_sec: f64,
    /// Bytes fetched per second.
    pub fetch_bytes_per_sec: f64,
}

/// A topic in the list.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopicSummary {
    /// Its name.
    pub name: String,
    /// Number of partitions.
    pub partitions: u32,
    /// Bytes its logs hold.
    pub size_bytes: u64,
    /// Sum of its partitions' high watermarks.
    pub high_watermark_sum: u64,
    /// Bytes appended per second, lately.
    pub produce_bytes_per_sec: f64,
    /// Bytes fetched per second, lately.
    pub fetch_bytes_per_sec: f64,
}

/// One topic, partition by partition.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopicView {
    /// Its name.
    pub name: String,
    /// Its partitions.
    pub partitions: Vec<PartitionView>,
    /// Its effective settings, by Kafka's names.
    pub configs: std::collections::BTreeMap<String, String>,
    /// Bytes appended per second, lately.
    pub produce_bytes_per_sec: f64,
    /// Offsets appended per second, lately.
    pub produce_records_per_sec: f64,
    /// Bytes fetched per second, lately.
    pub fetch_bytes_per_sec: f64,
}

/// One partition's log.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartitionView {
    /// Its number.
    pub partition: u32,
    /// First offset in the log.
    pub log_start_offset: u64,
    /// Offset after the last record appended (the log end), as `ferry
    /// topic describe` shows it.
    pub high_watermark: u64,
    /// Offset below which everything is flushed; under `fsync = always`
    /// or `interval`, consumers read below it.
    pub durable_watermark: u64,
    /// Last stable offset: `read_committed` consumers read below it.
    pub last_stable_offset: u64,
    /// Bytes the log holds.
    pub size_bytes: u64,
    /// Number of segment files.
    pub segments: u32,
    /// Producer ids the partition tracks.
    pub producers: u32,
}

/// A topic to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTopic {
    /// Its name: ASCII letters, digits, `.`, `_` and `-`, not starting
    /// with `.` or `__`.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]*$"
    )]
    pub name: String,
    /// Number of partitions (the broker's default if absent).
    #[schema(minimum = 1, maximum = 1024)]
    pub partitions: Option<u32>,
    /// Topic settings by Kafka's names (`cleanup.policy`,
    /// `segment.bytes`, `min.cleanable.dirty.ratio`,
    /// `delete.retention.ms`); the defaults when absent.
    #[serde(default)]
    pub configs: std::collections::BTreeMap<String, String>,
}

/// Isolation of a browse.
#[derive(Debug, Default, Clone, Copy, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IsolationParam {
    /// Only committed records, below the last stable offset.
    #[default]
    ReadCommitted,
    /// Everything below the high watermark, aborted records included.
    ReadUncommitted,
}

/// Where a browse starts and how much it returns.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BrowseQuery {
    /// First offset (the log start if neither this nor `timestamp_ms`).
    pub offset: Option<u64>,
    /// Start at the first record at or after this time (ms since the epoch).
    pub timestamp_ms: Option<i64>,
    /// `read_committed` (default) or `read_uncommitted`.
    pub isolation: Option<IsolationParam>,
    /// Most records to return (default 50, at most 500).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// Records of one partition.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordsPage {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The offset the browse started at.
    pub from_offset: u64,
    /// The offset to continue from.
    pub next_offset: u64,
    /// The partition's first offset.
    pub log_start_offset: u64,
    /// The partition's high watermark.
    pub high_watermark: u64,
    /// The partition's last stable offset.
    pub last_stable_offset: u64,
    /// The isolation the records were read with.
    pub isolation: IsolationParam,
    /// The records, in offset order.
    pub records: Vec<RecordView>,
}

/// One record, with the batch it came in.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordView {
    /// Its offset.
    pub offset: u64,
    /// Its timestamp (ms since the epoch).
    pub timestamp_ms: i64,
    /// Its key, or null.
    pub key: Option<BytesView>,
    /// Its value, or null (a tombstone).
    pub value: Option<BytesView>,
    /// Its headers, in order.
    pub headers: Vec<HeaderView>,
    /// The batch it was written in.
    pub batch: BatchView,
}

/// Bytes, as base64 and, when they are UTF-8, as text.
#[derive(Debug, Serialize, ToSchema)]
pub struct BytesView {
    /// Their length.
    pub len: u64,
    /// The bytes as text, if they are valid UTF-8.
    pub text: Option<String>,
    /// The bytes, base64 (standard alphabet, padded).
    pub base64: String,
}

impl BytesView {
    fn of(b: &[u8]) -> BytesView {
        BytesView {
            len: b.len() as u64,
            text: std::str::from_utf8(b).ok().map(str::to_string),
            base64: STANDARD.encode(b),
        }
    }
}

/// One record header.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeaderView {
    /// Its key.
    pub key: String,
    /// Its value, or null.
    pub value: Option<BytesView>,
}

/// A batch's producer fields.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchView {
    /// Offset of its first record.
    pub base_offset: u64,
    /// Offset of its last record.
    pub last_offset: u64,
    /// Its producer id (-1 for none).
    pub producer_id: i64,
    /// Its producer epoch (-1 for none).
    pub producer_epoch: i32,
    /// Sequence number of its first record (-1 for none).
    pub base_sequence: i32,
    /// Whether it belongs to a transaction.
    pub transactional: bool,
    /// Its compression codec.
    pub compression: String,
}

/// One producer id, over the partitions it wrote to.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProducerView {
    /// The producer id.
    pub producer_id: i64,
    /// Its current epoch (the highest seen).
    pub epoch: i32,
    /// Its last append anywhere (ms since the epoch).
    pub last_seen_ms: i64,
    /// Per partition, what the broker remembers.
    pub partitions: Vec<ProducerPartition>,
}

/// One producer id in one partition.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProducerPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// Sequence number of its last record here.
    pub last_sequence: Option<i32>,
    /// Offset of its last record here.
    pub last_offset: Option<u64>,
    /// Batches remembered for duplicate detection.
    pub batches_remembered: u32,
    /// First offset of its open transaction here, if one is open.
    pub open_transaction_first_offset: Option<u64>,
    /// Its last append here (ms since the epoch).
    pub last_seen_ms: i64,
}

/// One transactional id.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransactionView {
    /// The transactional id.
    pub transactional_id: String,
    /// Its producer id.
    pub producer_id: i64,
    /// Its epoch.
    pub producer_epoch: i32,
    /// State of its current or last transaction.
    pub state: String,
    /// Partitions in the transaction.
    pub partitions: Vec<TopicPartition>,
    /// Groups whose offsets the transaction commits.
    pub groups: Vec<String>,
    /// When the transaction started (ms since the epoch).
    pub started_ms: i64,
    /// How long it has been open, if it is.
    pub age_ms: Option<u64>,
    /// The transaction's timeout.
    pub timeout_ms: u32,
    /// Open past its timeout.
    pub hanging: bool,
}

/// A partition of a topic.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopicPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
}

/// A group in the list.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupSummary {
    /// Its id.
    pub group: String,
    /// Its state (`empty`, `stable`, …).
    pub state: String,
    /// Number of members.
    pub members: u32,
    /// Its protocol type (`consumer`).
    pub protocol_type: String,
    /// Its lag summed over the partitions it committed offsets for.
    pub lag: u64,
}

/// One group.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupView {
    /// Its id.
    pub group: String,
    /// Its state.
    pub state: String,
    /// Its generation.
    pub generation: i32,
    /// Its protocol type.
    pub protocol_type: String,
    /// The current generation's assignor.
    pub protocol: String,
    /// The current generation's leader.
    pub leader: String,
    /// Its members and their assignments.
    pub members: Vec<MemberView>,
    /// Its committed offsets and lag.
    pub offsets: Vec<OffsetView>,
    /// Its total lag over the last minutes, one point a second.
    pub lag_history: Vec<LagPoint>,
}

/// One member of a group.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    /// Its member id.
    pub member_id: String,
    /// Its static instance id (empty for a dynamic member).
    pub instance_id: String,
    /// Its client id.
    pub client_id: String,
    /// Its address.
    pub host: String,
    /// The partitions assigned to it.
    pub assignment: Vec<AssignedTopic>,
    /// The assignment bytes are not a consumer protocol assignment.
    pub assignment_undecodable: bool,
}

/// Partitions of one topic assigned to a member.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssignedTopic {
    /// The topic.
    pub topic: String,
    /// Its partitions.
    pub partitions: Vec<u32>,
}

/// A committed offset.
#[derive(Debug, Serialize, ToSchema)]
pub struct OffsetView {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The committed offset: the next the group reads.
    pub committed: u64,
    /// The partition's end, as consumers see it.
    pub log_end: u64,
    /// `log_end - committed`, never negative.
    pub lag: u64,
}

/// A group's total lag at one reading.
#[derive(Debug, Serialize, ToSchema)]
pub struct LagPoint {
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// The lag.
    pub lag: u64,
}

/// Where a reset moves a group's offsets.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetOffsets {
    /// The topic whose offsets move.
    pub topic: String,
    /// Only this partition (all of the topic's if absent).
    pub partition: Option<u32>,
    /// `earliest`, `latest`, or an offset as a decimal string.
    pub to: String,
}

/// An offset a reset committed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResetResult {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The offset now committed.
    pub offset: u64,
}

impl Http {
    pub(super) fn broker(&self, who: &Caller) -> Result<BrokerView, BrokerError> {
        self.state.authorize(who, Action::DescribeCluster)?;
        let config = self.state.config();
        let topics = self.state.topics();
        let addr = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string());
        let disk = rustix::fs::statvfs(&config.data_dir).ok();
        Ok(BrokerView {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            grpc_listen: addr(self.listeners.grpc),
            kafka_listen: addr(self.listeners.kafka),
            http_listen: addr(self.listeners.http),
            fsync: config.log.flush.to_string(),
            data_dir: config.data_dir.display().to_string(),
            log_bytes: topics
                .iter()
                .flat_map(|t| t.partitions.iter())
                .map(|p| p.log.size_bytes())
                .sum(),
            disk_total_bytes: disk.as_ref().map(|d| d.f_blocks * d.f_frsize),
            disk_free_bytes: disk.as_ref().map(|d| d.f_bavail * d.f_frsize),
            topics: topics.len() as u32,
            authentication: self.credentials.is_some(),
            throughput: self.throughput(None),
        })
    }

    /// The rates of all topics, or one, over the kept history.
    pub(super) fn throughput(&self, topic: Option<&str>) -> Vec<ThroughputPoint> {
        self.history
            .rates(topic)
            .into_iter()
            .map(|(at_ms, r)| ThroughputPoint {
                at_ms,
                produce_bytes_per_sec: r.produce_bytes,
                produce_records_per_sec: r.produce_records,
                fetch_bytes_per_sec: r.fetch_bytes,
            })
            .collect()
    }

    pub(super) fn topics(&self, who: &Caller) -> Vec<TopicSummary> {
        self.state
            .topics()
            .iter()
            .filter(|t| self.state.may(who, Action::DescribeTopic(&t.name)))
            .map(|t| {
                let rates = self.history.current_rates(Some(&t.name));
                TopicSummary {
                    name: t.name.to_string(),
                    partitions: t.partitions.len() as u32,
                    size_bytes: t.partitions.iter().map(|p| p.log.size_bytes()).sum(),
                    high_watermark_sum: t.partitions.iter().map(|p| p.log.next_offset()).sum(),
                    produce_bytes_per_sec: rates.produce_bytes,
                    fetch_bytes_per_sec: rates.fetch_bytes,
                }
            })
            .collect()
    }

    pub(super) fn topic(&self, who: &Caller, name: &str) -> Result<TopicView, BrokerError> {
        self.state.authorize(who, Action::DescribeTopic(name))?;
        let topic = self.state.topic(name)?;
        let rates = self.history.current_rates(Some(name));
        Ok(TopicView {
            name: topic.name.to_string(),
            partitions: topic
                .partitions
                .iter()
                .map(|p| PartitionView {
                    partition: p.id,
                    log_start_offset: p.log.log_start_offset(),
                    high_watermark: p.log.next_offset(),
                    durable_watermark: p.log.durable_offset(),
                    last_stable_offset: p.last_stable_offset(),
                    size_bytes: p.log.size_bytes(),
                    segments: p.log.segments().len() as u32,
                    producers: p.producer_count() as u32,
                })
                .collect(),
            configs: self.state.topic_configs(&topic),
            produce_bytes_per_sec: rates.produce_bytes,
            produce_records_per_sec: rates.produce_records,
            fetch_bytes_per_sec: rates.fetch_bytes,
        })
    }

    pub(super) async fn create_topic(
        &self,
        who: &Caller,
        req: CreateTopic,
    ) -> Result<TopicView, BrokerError> {
        self.state.authorize(who, Action::CreateTopic(&req.name))?;
        let partitions = req
            .partitions
            .unwrap_or(self.state.config().default_partitions);
        let config = crate::TopicConfig::from_pairs(
            req.configs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )?;
        let state = self.state.clone();
        let name = req.name.clone();
        tokio::task::spawn_blocking(move || {
            state.create_topic_with_config(&name, partitions, config)
        })
        .await
        .map_err(|e| BrokerError::Config(format!("create topic: {e}")))??;
        self.topic(who, &req.name)
    }

    pub(super) async fn delete_topic(&self, who: &Caller, name: &str) -> Result<(), BrokerError> {
        self.state.authorize(who, Action::DeleteTopic(name))?;
        let state = self.state.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || state.delete_topic(&name))
            .await
            .map_err(|e| BrokerError::Config(format!("delete topic: {e}")))?
    }

    /// Records of one partition, decoded, with `read_committed` dropping
    /// aborted transactions exactly as a consumer does.
    pub(super) async fn records(
        &self,
        who: &Caller,
        topic: &str,
        partition: u32,
        q: &BrowseQuery,
    ) -> Result<RecordsPage, BrokerError> {
        self.state.authorize(who, Action::Consume(topic))?;
        let p = self.state.partition(topic, partition)?;
        let limit = q
            .limit
            .unwrap_or(DEFAULT_BROWSE_RECORDS)
            .clamp(1, MAX_BROWSE_RECORDS) as usize;
        let isolation = q.isolation.unwrap_or_default();
        let from = match (q.offset, q.timestamp_ms) {
            (Some(o), _) => o,
            (None, Some(ts)) => {
                self.state
                    .list_offset(topic, partition, OffsetSpec::ByTimestamp(ts))?
            }
            (None, None) => p.log.log_start_offset(),
        };
        let mode = match isolation {
            IsolationParam::ReadCommitted => Isolation::ReadCommitted,
            IsolationParam::ReadUncommitted => Isolation::ReadUncommitted,
        };
        let mut page = RecordsPage {
            topic: topic.to_string(),
            partition,
            from_offset: from,
            next_offset: from,
            log_start_offset: p.log.log_start_offset(),
            high_watermark: p.visible_offset(),
            last_stable_offset: p.last_stable_offset(),
            isolation,
            records: Vec::new(),
        };
        let spec = FetchSpec {
            topic: topic.to_string(),
            partition,
            offset: from,
            max_bytes: MAX_BROWSE_BYTES,
        };
        let result = self
            .state
            .fetch(
                vec![spec],
                Duration::ZERO,
                1,
                MAX_BROWSE_BYTES as usize,
                mode,
            )
            .await?
            .pop()
            .ok_or_else(|| BrokerError::InvalidRequest("empty fetch".into()))?;
        let data = result.records?;
        // Under read_uncommitted the fetch lists no aborted transactions,
        // and the filter drops nothing.
        let mut filter = AbortedFilter::new(
            result
                .aborted
                .iter()
                .map(|a| (a.producer_id, a.first_offset)),
        );
        let mut position = from;
        for decoded in DecodedBatchIter::new(&data) {
            let decoded = decoded?;
            let batch = decoded.batch();
            let header = *batch.header();
            let keep = filter.keep_batch(batch);
            if header.next_offset() <= position {
                continue;
            }
            if keep {
                let view = BatchView {
                    base_offset: header.base_offset,
                    last_offset: header.last_offset(),
                    producer_id: header.producer_id,
                    producer_epoch: i32::from(header.producer_epoch),
                    base_sequence: header.base_sequence,
                    transactional: header.is_transactional(),
                    compression: format!("{:?}", batch.compression()).to_lowercase(),
                };
                for record in decoded.records().iter() {
                    let record = record?;
                    let offset = header.base_offset + u64::from(record.offset_delta);
                    if offset < position {
                        continue;
                    }
                    if page.records.len() == limit {
                        page.next_offset = offset;
                        return Ok(page);
                    }
                    page.records.push(RecordView {
                        offset,
                        timestamp_ms: header.record_timestamp(record.timestamp_delta),
                        key: record.key.map(BytesView::of),
                        value: record.value.map(BytesView::of),
                        headers: record
                            .headers()
                            .map(|(k, v)| HeaderView {
                                key: String::from_utf8_lossy(k).into_owned(),
                                value: v.map(BytesView::of),
                            })
                            .collect(),
                        batch: view.clone(),
                    });
                }
            }
            position = header.next_offset();
            page.next_offset = position;
        }
        Ok(page)
    }

    pub(super) fn producers(&self, who: &Caller) -> Vec<ProducerView> {
        let mut by_id: BTreeMap<i64, ProducerView> = BTreeMap::new();
        for topic in self.state.topics() {
            if !self.state.may(who, Action::Consume(&topic.name)) {
                continue;
            }
            for p in &topic.partitions {
                for (pid, entry, open) in p.producers() {
                    let v = by_id.entry(pid).or_insert_with(|| ProducerView {
                        producer_id: pid,
                        epoch: i32::from(entry.epoch),
                        last_seen_ms: entry.last_update_ms,
                        partitions: Vec::new(),
                    });
                    v.epoch = v.epoch.max(i32::from(entry.epoch));
                    v.last_seen_ms = v.last_seen_ms.max(entry.last_update_ms);
                    let last = entry.batches.back();
                    v.partitions.push(ProducerPartition {
                        topic: topic.name.to_string(),
                        partition: p.id,
                        last_sequence: last.map(|b| b.last_seq),
                        last_offset: last.map(|b| b.last_offset),
                        batches_remembered: entry.batches.len() as u32,
                        open_transaction_first_offset: open,
                        last_seen_ms: entry.last_update_ms,
                    });
                }
            }
        }
        by_id.into_values().collect()
    }

    pub(super) fn transactions(&self, who: &Caller) -> Vec<TransactionView> {
        let now = ferry_proto::now_ms();
        self.state
            .list_transactions()
            .into_iter()
            .filter(|m| {
                self.state
                    .may(who, Action::DescribeTransaction(&m.transactional_id))
            })
            .map(|m| {
                let open = m.state == crate::txn::TxnState::Ongoing;
                TransactionView {
                    hanging: m.is_hanging(now),
                    age_ms: open.then(|| now.saturating_sub(m.started_ms).max(0) as u64),
                    state: m.state.name().to_string(),
                    partitions: m
                        .partitions
                        .into_iter()
                        .map(|(topic, partition)| TopicPartition { topic, partition })
                        .collect(),
                    groups: m.groups.into_iter().collect(),
                    transactional_id: m.transactional_id,
                    producer_id: m.producer_id,
                    producer_epoch: i32::from(m.epoch),
                    started_ms: m.started_ms,
                    timeout_ms: m.timeout_ms,
                }
            })
            .collect()
    }

    pub(super) async fn abort_transaction(
        &self,
        who: &Caller,
        transactional_id: &str,
    ) -> Result<(), BrokerError> {
        let _busy = self.state.enter();
        self.state.authorize(who, Action::AbortTransaction)?;
        self.state.abort_transaction(transactional_id).await
    }

    pub(super) async fn groups(&self, who: &Caller) -> Vec<GroupSummary> {
        let mut lag: BTreeMap<String, u64> = BTreeMap::new();
        for l in self.state.consumer_lag() {
            *lag.entry(l.group).or_insert(0) += l.lag;
        }
        let mut out: BTreeMap<String, GroupSummary> = BTreeMap::new();
        for g in self.state.list_groups().await {
            out.insert(
                g.name.clone(),
                GroupSummary {
                    state: g.state.name().to_string(),
                    members: g.members.len() as u32,
                    protocol_type: g.protocol_type,
                    lag: lag.get(&g.name).copied().unwrap_or(0),
                    group: g.name,
                },
            );
        }
        // A group known only by its committed offsets is empty.
        for (name, l) in lag {
            out.entry(name.clone()).or_insert(GroupSummary {
                group: name,
                state: crate::group::GroupState::Empty.name().to_string(),
                members: 0,
                protocol_type: String::new(),
                lag: l,
            });
        }
        out.into_values()
            .filter(|g| self.state.may(who, Action::DescribeGroup(&g.group)))
            .collect()
    }

    pub(super) async fn group(&self, who: &Caller, name: &str) -> Result<GroupView, BrokerError> {
        self.state.authorize(who, Action::DescribeGroup(name))?;
        let offsets: Vec<OffsetView> = self
            .state
            .consumer_lag()
            .into_iter()
            .filter(|l| l.group == name)
            .map(|l| OffsetView {
                topic: l.topic,
                partition: l.partition,
                committed: l.committed,
                log_end: l.log_end,
                lag: l.lag,
            })
            .collect();
        let group = match self.state.describe_group(name).await {
            Ok(g) => g,
            Err(BrokerError::Group(GroupError::GroupIdNotFound(_))) if !offsets.is_empty() => {
                crate::group::Group::new(name)
            }
            Err(e) => return Err(e),
        };
        let members = group
            .members
            .iter()
            .map(|m| {
                let decoded = Assignment::decode(&m.assignment);
                MemberView {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    host: m.host.clone(),
                    assignment_undecodable: decoded.is_err() && !m.assignment.is_empty(),
                    assignment: decoded
                        .map(|a| {
                            let mut by_topic: BTreeMap<String, Vec<u32>> = BTreeMap::new();
                            for (topic, p) in a.partitions() {
                                by_topic.entry(topic).or_default().push(p);
                            }
                            by_topic
                                .into_iter()
                                .map(|(topic, partitions)| AssignedTopic { topic, partitions })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        Ok(GroupView {
            group: group.name.clone(),
            state: group.state.name().to_string(),
            generation: group.generation,
            protocol_type: group.protocol_type.clone(),
            protocol: group.protocol_name.clone(),
            leader: group.leader.clone(),
            members,
            offsets,
            lag_history: self
                .history
                .group_lag(name)
                .into_iter()
                .map(|(at_ms, lag)| LagPoint { at_ms, lag })
                .collect(),
        })
    }

    pub(super) async fn reset_offsets(
        &self,
        who: &Caller,
        group: &str,
        req: ResetOffsets,
    ) -> Result<Vec<ResetResult>, BrokerError> {
        let _busy = self.state.enter();
        self.state.authorize(who, Action::UseGroup(group))?;
        self.state.authorize(who, Action::CommitTopic(&req.topic))?;
        let to = crate::ResetTo::parse(&req.to).map_err(BrokerError::InvalidRequest)?;
        let offsets = self
            .state
            .reset_offsets(group, &req.topic, req.partition, to)
            .await?;
        Ok(offsets
            .into_iter()
            .map(|(topic, partition, offset)| ResetResult {
                topic,
                partition,
                offset,
            })
            .collect())
    }
}
