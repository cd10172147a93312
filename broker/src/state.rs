//! The broker's request handling, independent of the transport.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_proto::batch::{BatchHeader, ValidBatch};
use ferry_storage::{AppendInfo, FlushPolicy};
use futures::future::select_all;
use tokio::sync::{Notify, watch};

use crate::config::{BrokerConfig, MAX_FETCH_WAIT_MS};
use crate::coordinator::Coordinator;
use crate::error::BrokerError;
use crate::offsets::OffsetStore;
use crate::producer_ids::ProducerIds;
use crate::topics::{Partition, Topics};

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
    pub aborted: Vec<crate::producer_state::AbortedTxn>,
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

/// The whole broker: topics, offsets and limits.
#[derive(Debug)]
pub struct BrokerState {
    /// Configuration in force.
    pub config: BrokerConfig,
    /// All topics.
    pub topics: Topics,
    /// Consumer-group offsets.
    pub offsets: OffsetStore,
    /// Producer id allocation.
    pub producer_ids: ProducerIds,
    /// The transaction coordinator.
    pub coordinator: Coordinator,
    /// Requests being handled.
    pub inflight: Arc<Inflight>,
    shutting_down: AtomicBool,
    shutdown_tx: watch::Sender<bool>,
    _lock: std::fs::File,
}

impl BrokerState {
    /// Opens (and recovers) everything under the configured data dir.
    pub fn open(config: BrokerConfig) -> Result<BrokerState, BrokerError> {
        config.validate()?;
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| BrokerError::Io {
            op: "create data dir",
            path: dir.display().to_string(),
            source,
        })?;
        let lock = lock_data_dir(dir)?;
        let topics = Topics::open(&dir.join("topics"), config.log.clone(), config.producers)?;
        let producer_ids = ProducerIds::open(dir)?;
        let coordinator = Coordinator::open(&dir.join("__transactions"), config.log.clone())?;
        let offsets = OffsetStore::open(&dir.join("__offsets"), config.log.clone())?;
        let (shutdown_tx, _) = watch::channel(false);
        Ok(BrokerState {
            config,
            topics,
            offsets,
            producer_ids,
            coordinator,
            inflight: Arc::default(),
            shutting_down: AtomicBool::new(false),
            shutdown_tx,
            _lock: lock,
        })
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

    /// Validates and appends one batch. Returns the partition (to wait on)
    /// and where the batch landed. The append itself is synchronous: a
    /// memcpy into the map.
    pub fn append(
        &self,
        topic: &str,
        partition: u32,
        batch: &[u8],
    ) -> Result<(Arc<Partition>, AppendInfo, BatchHeader), BrokerError> {
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
        let valid = ValidBatch::exact(batch)?;
        let header = *valid.header();
        if header.is_control() {
            return Err(BrokerError::InvalidRequest(
                "control batches are written by the transaction coordinator only".into(),
            ));
        }
        let info = if header.is_transactional() {
            self.coordinator.check_append(
                header.producer_id,
                header.producer_epoch,
                topic,
                partition,
                || p.append(valid),
            )?
        } else {
            p.append(valid)?
        };
        metrics::counter!("ferry_bytes_in_total").increment(batch.len() as u64);
        metrics::counter!("ferry_records_in_total").increment(u64::from(header.record_count));
        Ok((p, info, header))
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
        let (p, info, _) = self.append(topic, partition, batch)?;
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

/// Resolves once shutdown has begun. The guard `wait_for` returns is
/// dropped here, so callers can hold this future across awaits.
pub(crate) async fn shutdown_begun(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Takes an exclusive lock on the data dir, so two brokers never share it.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, BrokerError> {
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| BrokerError::Io {
            op: "open lock file",
            path: path.display().to_string(),
            source,
        })?;
    file.try_lock().map_err(|e| {
        BrokerError::Config(format!(
            "data dir {} is in use by another broker ({e})",
            dir.display()
        ))
    })?;
    Ok(file)
}
