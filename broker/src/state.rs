//! The broker's request handling, independent of the transport.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_proto::batch::{DecodedBatch, DecodedBatchIter};
use ferry_storage::{AppendInfo, FlushPolicy};
use futures::future::select_all;
use tokio::sync::{Notify, watch};

use crate::auth::acl::{Authorizer, Caller};
use crate::auth::actions::Action;
use crate::config::{BrokerConfig, MAX_FETCH_WAIT_MS};
use crate::data_dir;
use crate::error::BrokerError;
use crate::group::{CommitFence, Group, GroupCoordinator, GroupError, Join, JoinReply, SyncReply};
use crate::offsets::OffsetStore;
use crate::producer_ids::ProducerIds;
use crate::producer_state::AbortedTxn;
use crate::quota::{Direction, Quotas};
use crate::restate::InternalLogSize;
use crate::topics::{Partition, Topic, Topics};
use crate::txn::{Coordinator, TxnMeta};

/// Most partitions one fetch may name.
pub const MAX_FETCH_PARTITIONS: usize = 4096;

/// When the producer wants its acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckLevel {
    /// No acknowledgement.
    None,
    /// Once appended to the log.
    Leader,
    /// Once durable under the flush policy.
    All,
}

/// One partition's part of a fetch.
#[derive(Debug, Clone)]
pub struct FetchSpec {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// First offset wanted.
    pub offset: u64,
    /// Byte cap for this partition.
    pub max_bytes: u32,
}

/// Which records a fetch may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Everything up to the visible watermark, aborted records included.
    ReadUncommitted,
    /// Only up to the last stable offset, with the aborted transactions in
    /// range listed so the client can drop them.
    ReadCommitted,
}

/// One group's position in one partition against the partition's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerLag {
    pub group: String,
    pub topic: String,
    pub partition: u32,
    /// The group's committed offset: the next one it reads.
    pub committed: u64,
    /// The partition's high watermark (its visible end).
    pub log_end: u64,
    /// `log_end - committed`, never negative.
    pub lag: u64,
}

/// One partition's fetch result.
#[derive(Debug)]
pub struct FetchResult {
    /// Which partition.
    pub spec: FetchSpec,
    /// Batches, or the error for this partition.
    pub records: Result<Bytes, BrokerError>,
    /// Offset below which consumers may read.
    pub high_watermark: u64,
    /// Last stable offset.
    pub last_stable_offset: u64,
    /// First offset in the log.
    pub log_start_offset: u64,
    /// `ReadCommitted` only: aborted transactions overlapping the records.
    pub aborted: Vec<AbortedTxn>,
}

/// Counts requests being handled, so shutdown can wait for them without
/// waiting for idle connections to go away.
#[derive(Debug, Default)]
pub struct Inflight {
    count: AtomicUsize,
    idle: Notify,
}

/// Held while a request is being handled.
#[derive(Debug)]
pub struct InflightGuard(Arc<Inflight>);

impl Inflight {
    /// Marks a request as started until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InflightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InflightGuard(self.clone())
    }

    /// Resolves when no request is being handled.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The broker core: the one API a front end (the gRPC service, or any
/// other protocol) calls. It owns the topics, the offsets store, the
/// producer-id allocator and the transaction coordinator, and every
/// request's checks live in its methods (see "The broker core API" in
/// docs/design.md).
///
/// Methods documented as blocking do file-system work (fsync, rename);
/// call them from a blocking thread.
#[derive(Debug)]
pub struct BrokerState {
    config: BrokerConfig,
    topics: Arc<Topics>,
    offsets: Arc<OffsetStore>,
    producer_ids: Arc<ProducerIds>,
    coordinator: Coordinator,
    groups: GroupCoordinator,
    inflight: Arc<Inflight>,
    authorizer: Authorizer,
    quotas: Quotas,
    shutting_down: AtomicBool,
    shutdown_tx: watch::Sender<bool>,
    _lock: std::fs::File,
}

/// Which offset `list_offset` looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The first offset in the log.
    Earliest,
    /// The visible watermark.
    Latest,
    /// The first offset with a timestamp at or after this one (the visible
    /// watermark if none).
    ByTimestamp(i64),
}

impl BrokerState {
    /// Opens (and recovers) everything under the configured data dir.
    pub fn open(config: BrokerConfig) -> Result<BrokerState, BrokerError> {
        config.validate()?;
        // Read before the data dir is touched: a bad file stops the broker
        // before it does anything.
        let authorizer = if config.authenticates() {
            Authorizer::open(&config.acl_path(), &config.super_users).map_err(|e| {
                BrokerError::Config(format!("--acls {}: {e}", config.acl_path().display()))
            })?
        } else {
            Authorizer::disabled()
        };
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| BrokerError::Io {
            op: "create data dir",
            path: dir.display().to_string(),
            source,
        })?;
        let lock = data_dir::lock(dir)?;
        data_dir::check_format(dir)?;
        let topics = Arc::new(Topics::open(
            &dir.join("topics"),
            config.log.clone(),
            config.producers,
        )?);
        let producer_ids = Arc::new(ProducerIds::open(dir)?);
        let internal = crate::restate::internal_log_config(&config.log);
        let offsets = Arc::new(OffsetStore::open(&dir.join("__offsets"), internal.clone())?);
        let coordinator = Coordinator::open(
            &dir.join("__transactions"),
            internal,
            topics.clone(),
            offsets.clone(),
            producer_ids.clone(),
        )?;
        let groups = GroupCoordinator::open(
            offsets.clone(),
            crate::group::state::Settings {
                min_session_timeout_ms: config.group_min_session_timeout_ms,
                max_session_timeout_ms: config.group_max_session_timeout_ms,
                initial_rebalance_delay_ms: config.group_initial_rebalance_delay_ms,
                max_members: config.limits.max_members_per_group,
            },
            config.limits.max_groups,
        );
        let (shutdown_tx, _) = watch::channel(false);
        let quotas = Quotas::new(config.quotas.clone());
        Ok(BrokerState {
            config,
            topics,
            offsets,
            producer_ids,
            coordinator,
            groups,
            inflight: Arc::default(),
            authorizer,
            quotas,
            shutting_down: AtomicBool::new(false),
            shutdown_tx,
            _lock: lock,
        })
    }

    /// The sizes of the broker's own logs, `__offsets` and
    /// `__transactions`.
    pub fn internal_logs(&self) -> [InternalLogSize; 2] {
        [self.offsets.log_size(), self.coordinator.log_size()]
    }

    /// The configuration in force.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Charges `bytes` produced or fetched to the caller's quota and
    /// returns how long to throttle it for (`crate::quota`).
    pub fn charge(&self, caller: &Caller, direction: Direction, bytes: usize) -> Duration {
        self.quotas.charge(caller, direction, bytes)
    }

    /// The ACLs and the decisions made with them.
    pub fn acls(&self) -> &Authorizer {
        &self.authorizer
    }

    /// The one authorization check both front ends make: whether `caller`
    /// may take `action` ([`Action`] says what each one needs).
    pub fn authorize(&self, caller: &Caller, action: Action<'_>) -> Result<(), BrokerError> {
        Ok(self.authorizer.check(caller, action)?)
    }

    /// Whether `caller` may take `action`, without logging a refusal: for
    /// listings, which leave out what the caller may not see.
    pub fn may(&self, caller: &Caller, action: Action<'_>) -> bool {
        self.authorizer.allows(caller, action)
    }

    /// Marks a request as being handled until the guard drops; shutdown
    /// waits for these.
    pub fn enter(&self) -> InflightGuard {
        self.inflight.enter()
    }

    /// Resolves when no request is being handled.
    pub async fn wait_idle(&self) {
        self.inflight.wait_idle().await;
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// A receiver that turns `true` when shutdown begins.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// Starts shutdown: new work is refused and waits end.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.shutdown_tx.send_replace(true);
    }

    /// Flushes and closes every log.
    pub fn close(&self) {
        self.begin_shutdown();
        self.topics.close_all();
        if let Err(e) = self.offsets.close() {
            tracing::error!(error = %e, "closing the offsets log failed");
        }
        if let Err(e) = self.coordinator.close() {
            tracing::error!(error = %e, "closing the transaction log failed");
        }
    }

    /// Validates and appends one batch: the whole produce check, in order
    /// (shutdown, size, partition, batch CRC and header, control bit, the
    /// open transaction of a transactional batch, the idempotent fields),
    /// then the partition's sequence check and the log append. Returns the
    /// partition (to wait on) and where the batch landed. The append itself
    /// is synchronous: a memcpy into the map.
    pub fn append(
        &self,
        topic: &str,
        partition: u32,
        batch: &[u8],
    ) -> Result<(Arc<Partition>, AppendInfo), BrokerError> {
        if self.is_shutting_down() {
            return Err(BrokerError::ShuttingDown);
        }
        let max = self.config.limits.max_batch_bytes;
        if batch.len() > max {
            return Err(BrokerError::BatchTooLarge {
                size: batch.len(),
                max,
            });
        }
        let p = self.topics.partition(topic, partition)?;
        // Decoded once: validation reads every record, and a compacted
        // topic's key check reads them again from the same decompression.
        let decoded = DecodedBatch::exact(batch)?;
        let header = *decoded.header();
        if header.is_control() {
            return Err(BrokerError::InvalidRequest(
                "control batches are written by the transaction coordinator only".into(),
            ));
        }
        // A compacted topic keeps the latest record per key; a record
        // without one could never be replaced.
        if p.keys_required()
            && decoded
                .records()
                .iter()
                .any(|r| r.is_ok_and(|r| r.key.is_none()))
        {
            return Err(BrokerError::KeyRequired {
                topic: topic.to_string(),
                partition,
            });
        }
        // Only a cleaned batch may span more offsets than it holds records.
        if u64::from(header.record_count) != u64::from(header.last_offset_delta) + 1 {
            return Err(BrokerError::InvalidRequest(format!(
                "a produced batch of {} records must have last offset delta {}, not {}",
                header.record_count,
                header.record_count - 1,
                header.last_offset_delta
            )));
        }
        // A transactional batch is appended while its transaction's meta
        // is locked, so the commit cannot start between check and append.
        let txn = if header.is_transactional() {
            Some(
                self.coordinator
                    .open_txn(header.producer_id, topic, partition)?,
            )
        } else {
            None
        };
        let _admitted = match &txn {
            Some(t) => {
                Some(t.admit(header.producer_id, header.producer_epoch, topic, partition)?)
            }
            None => None,
        };
        if header.producer_id >= 0 && (header.producer_epoch < 0 || header.base_sequence < 0) {
            return Err(BrokerError::InvalidRequest(format!(
                "idempotent batch with producer id {} has epoch {} and sequence {}",
                header.producer_id, header.producer_epoch, header.base_sequence
            )));
        }
        let info = p.append(decoded.into_batch())?;
        drop(_admitted);
        p.count_produced(batch.len());
        metrics::counter!("ferry_bytes_in_total").increment(batch.len() as u64);
        metrics::counter!("ferry_records_in_total").increment(u64::from(header.record_count));
        Ok((p, info))
    }

    /// Waits until an appended batch may be acknowledged at `acks`.
    pub async fn await_ack(
        &self,
        partition: &Partition,
        info: &AppendInfo,
        acks: AckLevel,
    ) -> Result<(), BrokerError> {
        if acks != AckLevel::All || partition.flush_policy() == FlushPolicy::Never {
            return Ok(());
        }
        let mut shutdown = self.shutdown_signal();
        tokio::select! {
            r = partition.log.wait_durable(info.last_offset) => Ok(r?),
            _ = shutdown_begun(&mut shutdown) => {
                // Closing flushes the log, so the wait normally resolves
                // first; if not, the outcome is unknown to the client.
                partition.log.wait_durable(info.last_offset).await.map_err(BrokerError::from)
            }
        }
    }

    /// Appends and waits for the acknowledgement.
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        batch: &[u8],
        acks: AckLevel,
    ) -> Result<AppendInfo, BrokerError> {
        let started = Instant::now();
        let (p, info) = self.append(topic, partition, batch)?;
        self.await_ack(&p, &info, acks).await?;
        metrics::histogram!("ferry_produce_latency_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(info)
    }

    /// Reads from each partition, long-polling up to `max_wait` until at
    /// least `min_bytes` are available.
    pub async fn fetch(
        &self,
        specs: Vec<FetchSpec>,
        max_wait: Duration,
        min_bytes: usize,
        max_bytes: usize,
        isolation: Isolation,
    ) -> Result<Vec<FetchResult>, BrokerError> {
        if specs.len() > MAX_FETCH_PARTITIONS {
            return Err(BrokerError::InvalidRequest(format!(
                "{} partitions in one fetch; the limit is {MAX_FETCH_PARTITIONS}",
                specs.len()
            )));
        }
        if max_wait > Duration::from_millis(u64::from(MAX_FETCH_WAIT_MS)) {
            return Err(BrokerError::InvalidRequest(format!(
                "max_wait_ms {} exceeds the limit of {MAX_FETCH_WAIT_MS}",
                max_wait.as_millis()
            )));
        }
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + max_wait;
        let max_bytes = max_bytes.clamp(1, self.config.limits.max_fetch_bytes);
        let min_bytes = min_bytes.max(1);
        let partitions: Vec<_> = specs
            .iter()
            .map(|s| self.topics.partition(&s.topic, s.partition))
            .collect();
        let mut shutdown = self.shutdown_signal();
        loop {
            // Subscribe before reading, so an append between the read and
            // the wait still wakes us.
            let mut watches: Vec<_> = partitions
                .iter()
                .filter_map(|p| p.as_ref().ok().map(|p| p.log.watch()))
                .collect();
            for w in &mut watches {
                w.borrow_and_update();
            }
            let results = self.read_all(&specs, &partitions, max_bytes, isolation);
            let total: usize = results
                .iter()
                .map(|r| r.records.as_ref().map_or(0, Bytes::len))
                .sum();
            let any_error = results.iter().any(|r| r.records.is_err());
            if total >= min_bytes
                || any_error
                || watches.is_empty()
                || tokio::time::Instant::now() >= deadline
                || self.is_shutting_down()
            {
                metrics::counter!("ferry_bytes_out_total").increment(total as u64);
                for (r, p) in results.iter().zip(&partitions) {
                    if let (Ok(bytes), Ok(p)) = (&r.records, p) {
                        p.count_fetched(bytes.len());
                    }
                }
                metrics::histogram!("ferry_fetch_latency_seconds")
                    .record(started.elapsed().as_secs_f64());
                return Ok(results);
            }
            let changed = select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = shutdown_begun(&mut shutdown) => {}
            }
        }
    }

    fn read_all(
        &self,
        specs: &[FetchSpec],
        partitions: &[Result<Arc<Partition>, BrokerError>],
        max_bytes: usize,
        isolation: Isolation,
    ) -> Vec<FetchResult> {
        let mut budget = max_bytes;
        specs
            .iter()
            .zip(partitions)
            .map(|(spec, p)| match p {
                Err(_) => FetchResult {
                    spec: spec.clone(),
                    records: Err(BrokerError::UnknownTopicOrPartition {
                        topic: spec.topic.clone(),
                        partition: spec.partition,
                    }),
                    high_watermark: 0,
                    last_stable_offset: 0,
                    log_start_offset: 0,
                    aborted: Vec::new(),
                },
                Ok(p) => {
                    let visible = p.visible_offset();
                    let lso = p.last_stable_offset();
                    let upper = match isolation {
                        Isolation::ReadUncommitted => visible,
                        Isolation::ReadCommitted => lso,
                    };
                    let cap = (spec.max_bytes as usize).clamp(1, budget.max(1));
                    // With no budget left, a read of nothing still checks
                    // that the offset is in range.
                    let upper_now = if budget == 0 {
                        spec.offset.min(upper)
                    } else {
                        upper
                    };
                    let records = p
                        .log
                        .read(spec.offset, cap, upper_now)
                        .map_err(BrokerError::from);
                    if let Ok(r) = &records {
                        budget = budget.saturating_sub(r.len());
                    }
                    let aborted = match (&records, isolation) {
                        (Ok(r), Isolation::ReadCommitted) if !r.is_empty() => {
                            p.aborted_between(spec.offset, upper)
                        }
                        _ => Vec::new(),
                    };
                    FetchResult {
                        spec: spec.clone(),
                        records,
                        high_watermark: visible,
                        last_stable_offset: lso,
                        log_start_offset: p.log.log_start_offset(),
                        aborted,
                    }
                }
            })
            .collect()
    }

    /// Runs retention and producer-id expiry on every partition.
    pub fn apply_retention(&self) {
        let now = ferry_proto::now_ms();
        for topic in self.topics.all() {
            if !topic.config.cleanup_policy.deletes() {
                // cleanup.policy=compact: old records go only by cleaning.
                continue;
            }
            for p in &topic.partitions {
                match p.log.apply_retention(now) {
                    Ok(r) if r.segments_deleted > 0 => tracing::info!(
                        topic = %topic.name, partition = p.id, segments = r.segments_deleted,
                        bytes = r.bytes_deleted, log_start = r.log_start_offset, "retention deleted segments"
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(topic = %topic.name, partition = p.id, error = %e, "retention failed")
                    }
                }
            }
        }
    }
}

impl BrokerState {
    /// Creates a topic. Blocking.
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<(), BrokerError> {
        self.topics.create(name, partitions)
    }

    /// Creates a topic with its own settings. Blocking.
    pub fn create_topic_with_config(
        &self,
        name: &str,
        partitions: u32,
        config: crate::TopicConfig,
    ) -> Result<(), BrokerError> {
        self.topics.create_with_config(name, partitions, config)
    }

    /// A topic's effective settings, by Kafka's names.
    pub fn topic_configs(&self, topic: &Topic) -> std::collections::BTreeMap<String, String> {
        topic.config.to_pairs(self.config().log.segment_bytes)
    }

    /// Grows a topic to `total` partitions. Blocking.
    pub fn add_partitions(&self, name: &str, total: u32) -> Result<(), BrokerError> {
        self.topics.add_partitions(name, total)
    }

    /// Deletes a topic and all its data. Blocking.
    pub fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        self.topics.delete(name)
    }

    /// Every topic, by name.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics.all()
    }

    /// The topic named `name`.
    pub fn topic(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        self.topics.get(name)
    }

    /// One partition of a topic.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, BrokerError> {
        self.topics.partition(topic, partition)
    }

    /// The durable offset of every topic partition, keyed by its log
    /// directory. The internal logs (offsets, transactions) are not
    /// included.
    pub fn durable_floors(&self) -> Vec<(PathBuf, u64)> {
        self.topics
            .all()
            .iter()
            .flat_map(|t| t.partitions.iter())
            .map(|p| (p.log.dir().to_path_buf(), p.log.durable_offset()))
            .collect()
    }

    /// `ListOffsets`: one offset of a partition.
    pub fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<u64, BrokerError> {
        let p = self.topics.partition(topic, partition)?;
        let visible = p.visible_offset();
        Ok(match spec {
            OffsetSpec::Earliest => p.log.log_start_offset(),
            OffsetSpec::Latest => visible,
            OffsetSpec::ByTimestamp(ts) => match p.log.offset_for_timestamp(ts)? {
                None => visible,
                Some(base) => first_record_at_or_after(&p, base, ts)?.min(visible),
            },
        })
    }

    /// `CommitOffsets`: durably commits `offsets` for `group`; every
    /// partition must exist. The commit is fenced by the group
    /// (`group::state::check_commit`): a simple commit (no generation, no
    /// member) only while the group has no members, a member's only with
    /// its current generation. The group stays locked until the offsets
    /// are durable, so no rebalance completes in between.
    pub async fn commit_offsets(
        &self,
        group: &str,
        offsets: &[(String, u32, u64)],
        fence: &CommitFence,
    ) -> Result<(), BrokerError> {
        for (topic, partition, _) in offsets {
            self.topics.partition(topic, *partition)?;
        }
        let _locked = self.groups.fence_commit(group, fence, false).await?;
        self.offsets.commit(group, offsets).await
    }

    /// Every group's lag per partition it has committed offsets for: the
    /// partition's high watermark (its visible end) less the committed
    /// offset, never negative. Partitions that no longer exist are left
    /// out.
    pub fn consumer_lag(&self) -> Vec<ConsumerLag> {
        self.offsets
            .all_committed()
            .into_iter()
            .filter_map(|(group, topic, partition, committed)| {
                let log_end = self
                    .topics
                    .partition(&topic, partition)
                    .ok()?
                    .visible_offset();
                Some(ConsumerLag {
                    lag: log_end.saturating_sub(committed),
                    group,
                    topic,
                    partition,
                    committed,
                    log_end,
                })
            })
            .collect()
    }

    /// `FetchOffsets`: the committed offsets of `group` for `topic`, by
    /// partition (none, and no error, for an unknown group). With
    /// `require_stable`, `UnstableOffsetCommit` while an open transaction
    /// holds offsets of the group for a partition of the topic.
    pub fn fetch_offsets(
        &self,
        group: &str,
        topic: &str,
        require_stable: bool,
    ) -> Result<Vec<(u32, u64)>, BrokerError> {
        if require_stable {
            let pending = self.offsets.pending_partitions(group, topic);
            if let Some(p) = pending.first() {
                return Err(GroupError::UnstableOffsetCommit(format!("{topic}/{p}")).into());
            }
        }
        Ok(self.offsets.fetch(group, topic))
    }

    /// Every committed offset of `group`: (topic, partition, offset).
    pub fn group_offsets(&self, group: &str) -> Vec<(String, u32, u64)> {
        self.offsets
            .all_committed()
            .into_iter()
            .filter(|(g, ..)| g == group)
            .map(|(_, topic, partition, offset)| (topic, partition, offset))
            .collect()
    }

    /// Moves `group`'s committed offsets for `topic` (one partition, or
    /// all) to `to`, as `ferry group reset-offsets` does: only while the
    /// group has no members, each offset within its partition's log. The
    /// commit is a simple commit, so a member that joins in between makes
    /// it fail rather than be overwritten.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        partition: Option<u32>,
        to: crate::ResetTo,
    ) -> Result<Vec<(String, u32, u64)>, BrokerError> {
        match self.describe_group(group).await {
            Ok(g) if !g.members.is_empty() => {
                return Err(GroupError::NonEmptyGroup(group.to_string()).into());
            }
            Ok(_) | Err(BrokerError::Group(GroupError::GroupIdNotFound(_))) => {}
            Err(e) => return Err(e),
        }
        let logs: Vec<crate::PartitionLog> = self
            .topic(topic)?
            .partitions
            .iter()
            .map(|p| crate::PartitionLog {
                partition: p.id,
                log_start: p.log.log_start_offset(),
                // As `ferry topic describe` reports it, which the CLI's
                // reset uses.
                log_end: p.log.next_offset(),
            })
            .collect();
        let offsets = crate::reset_targets(topic, &logs, partition, to)
            .map_err(BrokerError::InvalidRequest)?;
        self.commit_offsets(group, &offsets, &CommitFence::default())
            .await?;
        Ok(offsets)
    }

    /// Waits for `fut` unless shutdown begins first.
    async fn unless_shutdown<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        let mut shutdown = self.shutdown_signal();
        tokio::select! {
            r = fut => r,
            _ = shutdown_begun(&mut shutdown) => Err(BrokerError::ShuttingDown),
        }
    }

    /// `JoinGroup`: resolves when the member's generation is formed, or at
    /// once with `MemberIdRequired` (carrying the id), an unchanged rejoin,
    /// or an error. Creates the group on its first join.
    pub async fn join_group(&self, group: &str, join: Join) -> Result<JoinReply, BrokerError> {
        if self.is_shutting_down() {
            return Err(BrokerError::ShuttingDown);
        }
        self.unless_shutdown(self.groups.join(group, join)).await
    }

    /// `SyncGroup`: the member's assignment once the leader has sent it
    /// (the leader's call carries every member's).
    #[allow(clippy::too_many_arguments)]
    pub async fn sync_group(
        &self,
        group: &str,
        member_id: &str,
        instance_id: &str,
        generation: i32,
        protocol_type: &str,
        protocol_name: &str,
        assignments: Vec<(String, Vec<u8>)>,
    ) -> Result<SyncReply, BrokerError> {
        let event = crate::group::state::Event::Sync {
            member_id: member_id.to_string(),
            instance_id: instance_id.to_string(),
            generation,
            protocol_type: protocol_type.to_string(),
            protocol_name: protocol_name.to_string(),
            assignments,
        };
        self.unless_shutdown(self.groups.sync(group, event, member_id))
            .await
    }

    /// `Heartbeat`: resets the member's session timer.
    pub async fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
        instance_id: &str,
        generation: i32,
    ) -> Result<(), BrokerError> {
        self.groups
            .heartbeat(group, member_id, instance_id, generation)
            .await
    }

    /// `LeaveGroup`: removes each (member id, instance id) at once and
    /// rebalances; the result per member.
    pub async fn leave_group(
        &self,
        group: &str,
        members: Vec<(String, String)>,
    ) -> Result<Vec<(String, String, Result<(), GroupError>)>, BrokerError> {
        self.groups.leave(group, members).await
    }

    /// `ListGroups`: every group the coordinator knows, and every group
    /// with committed offsets only (as `Empty`), by name.
    pub async fn list_groups(&self) -> Vec<Group> {
        let mut groups = self.groups.list().await;
        for name in self.offsets.groups_with_offsets() {
            if !groups.iter().any(|g| g.name == name) {
                groups.push(Group::new(&name));
            }
        }
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        groups
    }

    /// `DescribeGroup`: the group now (`Empty` for a group with committed
    /// offsets only), or `GroupIdNotFound`.
    pub async fn describe_group(&self, group: &str) -> Result<Group, BrokerError> {
        match self.groups.describe(group).await? {
            Some(g) => Ok(g),
            None if self.offsets.has_offsets(group) => Ok(Group::new(group)),
            None => Err(GroupError::GroupIdNotFound(group.to_string()).into()),
        }
    }

    /// `DeleteGroup`: `NonEmptyGroup` while it has members; otherwise its
    /// metadata and committed offsets are removed, durably.
    pub async fn delete_group(&self, group: &str) -> Result<(), BrokerError> {
        self.groups.delete(group).await
    }

    /// Runs the group timers (session expiry, rebalance deadlines) until
    /// the future is dropped. The server runs it while serving.
    pub async fn run_group_timers(&self) {
        self.groups.run_timers().await;
    }

    /// `InitProducerId` without a transactional id: a producer id never
    /// handed out before. Blocking.
    pub fn allocate_producer_id(&self) -> Result<i64, BrokerError> {
        self.producer_ids.allocate()
    }

    /// `InitProducerId` with a transactional id: finishes or aborts its
    /// open transaction and bumps the epoch, fencing older producers.
    /// Ferry's own client bumps the epoch with every transaction it ends;
    /// a producer with `keep_epoch` (a Kafka client before transaction
    /// version 2) keeps it across them.
    pub async fn init_producer_id(
        &self,
        transactional_id: &str,
        timeout_ms: u32,
        keep_epoch: bool,
    ) -> Result<(i64, i16), BrokerError> {
        self.coordinator
            .init_producer_id(transactional_id, timeout_ms, keep_epoch)
            .await
    }

    /// `AddPartitionsToTxn`.
    pub async fn add_partitions_to_txn(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, u32)],
    ) -> Result<(), BrokerError> {
        self.coordinator
            .add_partitions(transactional_id, producer_id, epoch, partitions)
            .await
    }

    /// `AddOffsetsToTxn`.
    pub async fn add_offsets_to_txn(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
    ) -> Result<(), BrokerError> {
        self.coordinator
            .add_offsets(transactional_id, producer_id, epoch, group)
            .await
    }

    /// `TxnOffsetCommit`: offsets that take effect if the transaction
    /// commits. With a member or generation it is fenced by the group like
    /// an offset commit (KIP-447, but not refused during a rebalance);
    /// without, only the producer epoch fences it.
    pub async fn txn_offset_commit(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
        offsets: &[(String, u32, u64)],
        fence: &CommitFence,
    ) -> Result<(), BrokerError> {
        let simple = fence.generation <= 0 && fence.member_id.is_empty();
        let _locked = if simple {
            None
        } else {
            self.groups.fence_commit(group, fence, true).await?
        };
        self.coordinator
            .txn_offset_commit(transactional_id, producer_id, epoch, group, offsets)
            .await
    }

    /// `EndTxn`: commits or aborts; returns the producer id and the new
    /// epoch.
    pub async fn end_txn(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(i64, i16), BrokerError> {
        self.coordinator
            .end_txn(transactional_id, producer_id, epoch, commit)
            .await
    }

    /// Every transactional id's state.
    pub fn list_transactions(&self) -> Vec<TxnMeta> {
        self.coordinator.list()
    }

    /// Aborts the open transaction of `transactional_id` by hand.
    pub async fn abort_transaction(&self, transactional_id: &str) -> Result<(), BrokerError> {
        self.coordinator.abort(transactional_id).await
    }

    /// After a restart, before serving: finishes prepared transactions and
    /// aborts partition-level ones the coordinator does not have open.
    pub async fn recover_transactions(&self) -> Result<(), BrokerError> {
        self.coordinator.recover().await
    }

    /// Aborts every transaction open past its timeout.
    pub async fn abort_expired_transactions(&self) {
        self.coordinator.abort_expired().await;
    }
}

/// Resolves once shutdown has begun. The guard `wait_for` returns is
/// dropped here, so callers can hold this future across awaits.
pub(crate) async fn shutdown_begun(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The offset of the first record with a timestamp at or after `ts` in the
/// batch at `base`, which the log found as the first batch whose max
/// timestamp reaches `ts`: a lookup by time answers per record, as
/// Kafka's does, so that a consumer seeking there reads nothing older
/// from that batch. A control batch answers with its base offset.
fn first_record_at_or_after(p: &Partition, base: u64, ts: i64) -> Result<u64, BrokerError> {
    let bytes = p.log.read(base, 1, u64::MAX)?;
    let Some(batch) = DecodedBatchIter::new(&bytes).next() else {
        return Ok(base);
    };
    let batch = batch?;
    let header = batch.header();
    if header.is_control() {
        return Ok(header.base_offset);
    }
    for record in batch.records().iter() {
        let record = record?;
        if header.record_timestamp(record.timestamp_delta) >= ts {
            return Ok(header.base_offset + u64::from(record.offset_delta));
        }
    }
    Ok(header.base_offset)
}
