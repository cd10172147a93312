//! Carries out the transitions `state::apply` decides: one [`TxnMeta`] per
//! transactional id, a lock per id serialising its operations, and the
//! effects (persist, markers, offsets, failpoints) performed in order.
//!
//! The coordinator is given the parts it acts on (topics, the offsets
//! store, the producer-id allocator) when it is built; it never sees the
//! broker that owns it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use ferry_proto::batch::BatchBuilder;
use ferry_storage::{Log, LogConfig};
use parking_lot::{Mutex, MutexGuard};

use super::codec;
use super::state::{
    self, DEFAULT_TXN_TIMEOUT_MS, Effect, Event, MAX_TRANSACTIONAL_IDS, MAX_TXN_TIMEOUT_MS,
    TxnMeta, TxnState,
};
use crate::error::BrokerError;
use crate::names::check_name;
use crate::offsets::OffsetStore;
use crate::producer_ids::ProducerIds;
use crate::restate::{InternalLogSize, Restatement, Restater};
use crate::topics::{Partition, Topics};

/// One transactional id: its meta (read by appends under a short lock) and
/// a lock serialising coordinator operations on it.
#[derive(Debug)]
struct Entry {
    meta: Mutex<TxnMeta>,
    op: tokio::sync::Mutex<()>,
}

impl Entry {
    fn new(meta: TxnMeta) -> Arc<Entry> {
        Arc::new(Entry {
            meta: Mutex::new(meta),
            op: tokio::sync::Mutex::new(()),
        })
    }
}

/// The transaction of one producer id, as a transactional append sees it.
#[derive(Debug)]
pub(crate) struct OpenTxn(Arc<Entry>);

impl OpenTxn {
    /// Checks that the append belongs to the open transaction
    /// ([`state::check_append`]) and returns the meta's guard: the caller
    /// appends while holding it, so the commit cannot start in between.
    pub(crate) fn admit(
        &self,
        pid: i64,
        epoch: i16,
        topic: &str,
        partition: u32,
    ) -> Result<MutexGuard<'_, TxnMeta>, BrokerError> {
        let meta = self.0.meta.lock();
        state::check_append(&meta, pid, epoch, topic, partition)?;
        Ok(meta)
    }
}

/// The transaction coordinator.
#[derive(Debug)]
pub(crate) struct Coordinator {
    log: Log,
    /// Keeps the log bounded (`crate::restate`); every persist holds its
    /// gate.
    restater: Restater,
    /// The last record persisted for each transactional id: what a replay
    /// of the log rebuilds, and what a restatement writes.
    persisted: Mutex<HashMap<String, Vec<u8>>>,
    topics: Arc<Topics>,
    offsets: Arc<OffsetStore>,
    producer_ids: Arc<ProducerIds>,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    by_pid: Mutex<HashMap<i64, Arc<Entry>>>,
}

fn failpoint(name: &'static str) -> Result<(), BrokerError> {
    fail::fail_point!(name, |_| Err(BrokerError::Injected(name)));
    let _ = name;
    Ok(())
}

fn now_ms() -> i64 {
    ferry_proto::now_ms()
}

impl Coordinator {
    /// Opens the transaction log under `dir` and replays it.
    pub(crate) fn open(
        dir: &Path,
        log_config: LogConfig,
        topics: Arc<Topics>,
        offsets: Arc<OffsetStore>,
        producer_ids: Arc<ProducerIds>,
    ) -> Result<Coordinator, BrokerError> {
        let log = Log::open(dir, log_config)?;
        let (restater, metas) = Restater::replay(
            "__transactions",
            &log,
            |metas: &mut HashMap<String, TxnMeta>, batch| {
                for record in batch.records()?.iter() {
                    let record = record?;
                    let (Some(key), Some(value)) = (record.key, record.value) else {
                        continue;
                    };
                    let Ok(tid) = std::str::from_utf8(key) else {
                        continue;
                    };
                    match codec::decode(tid, value) {
                        Some(meta) => {
                            metas.insert(tid.to_string(), meta);
                        }
                        None => tracing::warn!(
                            transactional_id = tid,
                            "skipping unreadable transaction record"
                        ),
                    }
                }
                Ok(())
            },
        )?;
        let persisted = metas
            .iter()
            .map(|(tid, meta)| (tid.clone(), codec::encode(meta)))
            .collect();
        let mut entries = HashMap::new();
        let mut by_pid = HashMap::new();
        for (tid, meta) in metas {
            let pid = meta.producer_id;
            let entry = Entry::new(meta);
            by_pid.insert(pid, entry.clone());
            entries.insert(tid, entry);
        }
        tracing::info!(
            transactional_ids = entries.len(),
            "replayed transaction log"
        );
        Ok(Coordinator {
            log,
            restater,
            persisted: Mutex::new(persisted),
            topics,
            offsets,
            producer_ids,
            entries: Mutex::new(entries),
            by_pid: Mutex::new(by_pid),
        })
    }

    /// Appends `meta` to the transaction log and waits until durable.
    async fn persist(&self, meta: &TxnMeta) -> Result<(), BrokerError> {
        let now = now_ms();
        let mut b = BatchBuilder::new(now);
        b.push(
            now,
            Some(meta.transactional_id.as_bytes()),
            Some(&codec::encode(meta)),
            &[],
        );
        let bytes = b.finish();
        let (_, due) = self
            .restater
            .append(&self.log, &bytes, |_| {
                self.persisted
                    .lock()
                    .insert(meta.transactional_id.clone(), codec::encode(meta));
            })
            .await?;
        if due && let Err(e) = self.restate().await {
            // The record itself is durable; the log is only longer.
            tracing::warn!(error = %e, "restating the transaction log failed");
        }
        Ok(())
    }

    /// Restates the log (`crate::restate`) if it is due: the last record
    /// of every transactional id.
    async fn restate(&self) -> Result<Option<Restatement>, BrokerError> {
        self.restater
            .restate(&self.log, |out| {
                let persisted = self.persisted.lock();
                let mut tids: Vec<_> = persisted.keys().collect();
                tids.sort_unstable();
                for tid in tids {
                    out.push(None, tid.as_bytes(), Some(&persisted[tid]));
                }
            })
            .await
    }

    fn entry(&self, tid: &str) -> Result<Arc<Entry>, BrokerError> {
        self.entries.lock().get(tid).cloned().ok_or_else(|| {
            BrokerError::InvalidTxnState(format!(
                "unknown transactional id {tid:?}; call InitProducerId first"
            ))
        })
    }

    /// Applies `event` to `entry` and carries out the effects in order,
    /// depth first through [`Effect::Then`]. The caller holds the op lock.
    /// Returns the meta in force at the end.
    async fn run(&self, entry: &Arc<Entry>, event: Event) -> Result<TxnMeta, BrokerError> {
        let mut current = entry.meta.lock().clone();
        let first = state::apply(&current, event.clone())?;
        current = first.state;
        let mut stack = vec![(event, first.effects.into_iter())];
        let mut written: Vec<(Arc<Partition>, u64)> = Vec::new();
        loop {
            let Some((event, effects)) = stack.last_mut() else {
                return Ok(current);
            };
            let Some(effect) = effects.next() else {
                stack.pop();
                continue;
            };
            let next = match effect {
                Effect::Adopt => {
                    *entry.meta.lock() = current.clone();
                    None
                }
                Effect::Persist => {
                    self.persist(&current).await?;
                    None
                }
                Effect::Failpoint(name) => {
                    failpoint(name)?;
                    None
                }
                Effect::WriteMarker {
                    topic,
                    partition,
                    producer_id,
                    epoch,
                    commit,
                } => {
                    match self.topics.partition(&topic, partition) {
                        Ok(p) => {
                            let info = p.append_marker(producer_id, epoch, commit)?;
                            written.push((p, info.last_offset));
                        }
                        Err(_) => tracing::warn!(
                            topic,
                            partition,
                            "participant partition is gone; no marker written"
                        ),
                    }
                    None
                }
                Effect::AwaitMarkers => {
                    for (partition, offset) in written.drain(..) {
                        partition.log.wait_durable_unless_never(offset).await?;
                    }
                    None
                }
                Effect::EndOffsets {
                    producer_id,
                    epoch,
                    commit,
                    has_groups,
                } => {
                    if has_groups || self.offsets.has_pending(producer_id) {
                        self.offsets
                            .end_transaction(producer_id, epoch, commit)
                            .await?;
                    }
                    None
                }
                Effect::MapProducerId { retire } => {
                    let mut by_pid = self.by_pid.lock();
                    if let Some(old) = retire {
                        by_pid.remove(&old);
                    }
                    by_pid.insert(current.producer_id, entry.clone());
                    None
                }
                Effect::AllocateProducerId => {
                    let id = self.producer_ids.allocate()?;
                    Some(event.clone().with_producer_id(id))
                }
                Effect::Then(next) => Some(next.at(now_ms())),
            };
            if let Some(next) = next {
                let t = state::apply(&current, next.clone())?;
                current = t.state;
                stack.push((next, t.effects.into_iter()));
            }
        }
    }

    /// `InitProducerId` with a transactional id: finishes or aborts any
    /// open transaction, then bumps the epoch, which fences every older
    /// producer of this id. `keep_epoch`: the producer keeps that epoch
    /// across its transactions ([`TxnMeta::keep_epoch`]).
    pub(crate) async fn init_producer_id(
        &self,
        tid: &str,
        timeout_ms: u32,
        keep_epoch: bool,
    ) -> Result<(i64, i16), BrokerError> {
        check_name(tid).map_err(|reason| {
            BrokerError::InvalidRequest(format!("transactional id {tid:?}: {reason}"))
        })?;
        let timeout_ms = match timeout_ms {
            0 => DEFAULT_TXN_TIMEOUT_MS,
            t if t > MAX_TXN_TIMEOUT_MS => {
                return Err(BrokerError::InvalidRequest(format!(
                    "transaction timeout {t} ms exceeds the broker maximum of {MAX_TXN_TIMEOUT_MS} ms"
                )));
            }
            t => t,
        };
        let entry = {
            let mut entries = self.entries.lock();
            if let Some(e) = entries.get(tid) {
                e.clone()
            } else {
                if entries.len() >= MAX_TRANSACTIONAL_IDS {
                    return Err(BrokerError::InvalidRequest(format!(
                        "the broker already coordinates its maximum of {MAX_TRANSACTIONAL_IDS} transactional ids"
                    )));
                }
                let e = Entry::new(TxnMeta::new(tid, timeout_ms));
                entries.insert(tid.to_string(), e.clone());
                e
            }
        };
        let _op = entry.op.lock().await;
        let event = Event::Init {
            timeout_ms,
            now_ms: now_ms(),
            fresh_producer_id: None,
            keep_epoch,
        };
        let meta = self.run(&entry, event).await?;
        Ok((meta.producer_id, meta.epoch))
    }

    /// Runs `event` on the id's entry under its op lock.
    async fn on(&self, tid: &str, event: Event) -> Result<TxnMeta, BrokerError> {
        let entry = self.entry(tid)?;
        let _op = entry.op.lock().await;
        self.run(&entry, event).await
    }

    /// `AddPartitionsToTxn`: registers partitions with the producer's
    /// transaction, opening one if none is open. Durable before it returns.
    pub(crate) async fn add_partitions(
        &self,
        tid: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, u32)],
    ) -> Result<(), BrokerError> {
        for (topic, p) in partitions {
            self.topics.partition(topic, *p)?;
        }
        let event = Event::AddPartitions {
            producer_id,
            epoch,
            partitions: partitions.to_vec(),
            now_ms: now_ms(),
        };
        self.on(tid, event).await.map(drop)
    }

    /// `AddOffsetsToTxn`: registers a consumer group with the producer's
    /// transaction, opening one if none is open. Durable before it returns.
    pub(crate) async fn add_offsets(
        &self,
        tid: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
    ) -> Result<(), BrokerError> {
        check_name(group).map_err(|reason| BrokerError::InvalidGroup {
            name: group.to_string(),
            reason,
        })?;
        let event = Event::AddOffsets {
            producer_id,
            epoch,
            group: group.to_string(),
            now_ms: now_ms(),
        };
        self.on(tid, event).await.map(drop)
    }

    /// `TxnOffsetCommit`: offsets that become the group's committed offsets
    /// only if the transaction commits.
    pub(crate) async fn txn_offset_commit(
        &self,
        tid: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
        offsets: &[(String, u32, u64)],
    ) -> Result<(), BrokerError> {
        for (topic, p, _) in offsets {
            self.topics.partition(topic, *p)?;
        }
        let entry = self.entry(tid)?;
        let _op = entry.op.lock().await;
        let event = Event::OffsetCommit {
            producer_id,
            epoch,
            group: group.to_string(),
        };
        self.run(&entry, event).await?;
        self.offsets
            .commit_in_transaction(producer_id, epoch, group, offsets)
            .await
    }

    /// The transaction of `pid`, for a transactional append to
    /// [`OpenTxn::admit`] itself to.
    pub(crate) fn open_txn(
        &self,
        pid: i64,
        topic: &str,
        partition: u32,
    ) -> Result<OpenTxn, BrokerError> {
        self.by_pid
            .lock()
            .get(&pid)
            .cloned()
            .map(OpenTxn)
            .ok_or_else(|| state::not_in_transaction(pid, topic, partition))
    }

    /// `EndTxn`. Idempotent per (pid, epoch): a retry of a completed
    /// transaction gets the same answer and the same new epoch.
    pub(crate) async fn end_txn(
        &self,
        tid: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(i64, i16), BrokerError> {
        let event = Event::EndTxn {
            producer_id,
            epoch,
            commit,
            now_ms: now_ms(),
        };
        let meta = self.on(tid, event).await?;
        Ok((meta.producer_id, meta.epoch))
    }

    /// Every transactional id's state.
    pub(crate) fn list(&self) -> Vec<TxnMeta> {
        let mut out: Vec<TxnMeta> = self
            .entries
            .lock()
            .values()
            .map(|e| e.meta.lock().clone())
            .collect();
        out.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        out
    }

    /// Aborts the open transaction of `tid` by hand. The producer is fenced
    /// by the epoch bump and must call `InitProducerId` again.
    pub(crate) async fn abort(&self, tid: &str) -> Result<(), BrokerError> {
        self.on(tid, Event::Abort { now_ms: now_ms() })
            .await
            .map(drop)
    }

    /// Aborts every transaction open past its timeout.
    pub(crate) async fn abort_expired(&self) {
        let now = now_ms();
        let expired: Vec<Arc<Entry>> = self
            .entries
            .lock()
            .values()
            .filter(|e| e.meta.lock().is_hanging(now))
            .cloned()
            .collect();
        for entry in expired {
            let Ok(_op) = entry.op.try_lock() else {
                continue;
            };
            let now = now_ms();
            if !entry.meta.lock().is_hanging(now) {
                continue;
            }
            let tid = entry.meta.lock().transactional_id.clone();
            match self.run(&entry, Event::Timeout { now_ms: now }).await {
                Ok(_) => {
                    tracing::warn!(transactional_id = %tid, "aborted a transaction past its timeout")
                }
                Err(e) => {
                    tracing::error!(transactional_id = %tid, error = %e, "timing out a transaction failed")
                }
            }
        }
    }

    /// After a restart: finish every transaction that was prepared, and
    /// abort partition-level transactions the coordinator no longer has
    /// open (their registration or prepare never became durable).
    pub(crate) async fn recover(&self) -> Result<(), BrokerError> {
        let entries: Vec<Arc<Entry>> = self.entries.lock().values().cloned().collect();
        for entry in entries {
            let _op = entry.op.lock().await;
            self.run(&entry, Event::Recover { now_ms: now_ms() })
                .await?;
        }
        for topic in self.topics.all() {
            for partition in &topic.partitions {
                for (pid, _) in partition.open_transactions() {
                    if self.is_open_in(pid, &topic.name, partition.id) {
                        continue;
                    }
                    let epoch = self
                        .by_pid
                        .lock()
                        .get(&pid)
                        .map_or(0, |e| e.meta.lock().epoch);
                    tracing::warn!(topic = %topic.name, partition = partition.id, producer_id = pid, "aborting a transaction its coordinator does not have open");
                    partition.append_marker(pid, epoch, false)?;
                }
            }
        }
        Ok(())
    }

    fn is_open_in(&self, pid: i64, topic: &str, partition: u32) -> bool {
        self.by_pid.lock().get(&pid).is_some_and(|e| {
            let m = e.meta.lock();
            m.state == TxnState::Ongoing && m.partitions.contains(&(topic.to_string(), partition))
        })
    }

    /// The size of the transaction log.
    pub(crate) fn log_size(&self) -> InternalLogSize {
        InternalLogSize::of("__transactions", &self.log)
    }

    /// Flushes and closes the transaction log.
    pub(crate) fn close(&self) -> Result<(), BrokerError> {
        Ok(self.log.close()?)
    }
}
