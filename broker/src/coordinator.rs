//! The transaction coordinator: two-phase commit of writes plus consumer
//! offsets.
//!
//! Each transactional id has one [`TxnMeta`]: producer id, epoch, state,
//! the participant partitions and consumer groups, timeout and times. Every
//! change is appended to the transaction log (`<data_dir>/__transactions`,
//! key = transactional id, value = the encoded meta) and made durable
//! before it takes effect; replaying that log rebuilds the coordinator.
//!
//! ```text
//!            AddPartitions/AddOffsets           EndTxn(commit)
//!   Empty ───────────────────────────▶ Ongoing ───────────────▶ PrepareCommit ──markers──▶ CompleteCommit
//!     ▲                                   │  EndTxn(abort), timeout,                          │
//!     │                                   │  InitProducerId, txn abort                         │
//!     │                                   ▼                                                    │
//!     │                              PrepareAbort ──markers──▶ CompleteAbort                   │
//!     └──────────── InitProducerId (epoch + 1) ◀───────────────────┴──────────────────────────┘
//!                  Complete* ──AddPartitions──▶ Ongoing (the next transaction)
//! ```
//!
//! Commit, step by step, and what a crash at each point leaves:
//!
//! 1. In memory, `Ongoing → PrepareCommit`: from here no transactional
//!    append is accepted (appends check the state under the same lock).
//!    Crash: the log still says `Ongoing`; the producer retries `EndTxn`
//!    or the timeout aborts. Nothing was visible.
//! 2. Append `PrepareCommit` and wait until durable. **This is the
//!    decision.** Crash after: recovery finishes the commit.
//! 3. Append a COMMIT marker to every participant partition and to the
//!    offsets log (whose pending offsets then become the group's committed
//!    offsets), and wait until durable. Crash between markers: recovery
//!    writes them all again; a second marker is harmless because the
//!    partition no longer has the transaction open.
//! 4. Append `CompleteCommit` with the epoch bumped (so a late request of
//!    this transaction can never join the next one), durable.
//! 5. Reply with the new epoch. A lost reply is harmless: `EndTxn` retried
//!    with the old epoch finds `CompleteCommit` one epoch on and returns
//!    the same answer.
//!
//! Abort is the same with ABORT markers. Failpoints (feature `failpoints`)
//! sit between each step: `txn::before_prepare`, `txn::after_prepare`,
//! `txn::between_markers`, `txn::before_complete`, `txn::before_reply`.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use ferry_proto::batch::{BatchBuilder, ValidBatch};
use ferry_storage::{FlushPolicy, Log, LogConfig};
use parking_lot::Mutex;

use crate::error::{BrokerError, check_name};
use crate::state::BrokerState;

/// Timeout of a transaction when the producer names none.
pub const DEFAULT_TXN_TIMEOUT_MS: u32 = 60_000;
/// Longest timeout a producer may ask for.
pub const MAX_TXN_TIMEOUT_MS: u32 = 15 * 60_000;
/// Most partitions one transaction may touch.
pub const MAX_PARTITIONS_PER_TXN: usize = 10_000;
/// Most transactional ids one broker coordinates.
pub const MAX_TRANSACTIONAL_IDS: usize = 100_000;
const META_VERSION: u8 = 0;

/// A transaction's state. The legal transitions are drawn in the module
/// docs and in docs/protocol.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    /// No transaction open.
    Empty,
    /// Partitions or groups were added; writes may happen.
    Ongoing,
    /// Commit decided and durable; markers being written.
    PrepareCommit,
    /// Abort decided and durable; markers being written.
    PrepareAbort,
    /// The last transaction committed.
    CompleteCommit,
    /// The last transaction aborted.
    CompleteAbort,
}

impl TxnState {
    fn code(self) -> u8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
        }
    }

    fn from_code(c: u8) -> Option<TxnState> {
        Some(match c {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            _ => return None,
        })
    }

    /// The state's name, as `ferry txn list` shows it.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }

    fn prepare(commit: bool) -> TxnState {
        if commit {
            TxnState::PrepareCommit
        } else {
            TxnState::PrepareAbort
        }
    }

    fn complete(commit: bool) -> TxnState {
        if commit {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        }
    }
}

/// What the coordinator knows about one transactional id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMeta {
    /// The transactional id.
    pub transactional_id: String,
    /// Its producer id.
    pub producer_id: i64,
    /// Its current epoch.
    pub epoch: i16,
    /// State of the current or last transaction.
    pub state: TxnState,
    /// Participant partitions.
    pub partitions: BTreeSet<(String, u32)>,
    /// Consumer groups whose offsets the transaction commits.
    pub groups: BTreeSet<String>,
    /// Abort the transaction after this long open.
    pub timeout_ms: u32,
    /// When the current transaction started.
    pub started_ms: i64,
    /// Last change.
    pub updated_ms: i64,
}

impl TxnMeta {
    /// Whether the transaction is open past its timeout.
    pub fn is_hanging(&self, now_ms: i64) -> bool {
        self.state == TxnState::Ongoing
            && now_ms.saturating_sub(self.started_ms) > i64::from(self.timeout_ms)
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        v.push(META_VERSION);
        v.extend_from_slice(&self.producer_id.to_le_bytes());
        v.extend_from_slice(&self.epoch.to_le_bytes());
        v.push(self.state.code());
        v.extend_from_slice(&self.timeout_ms.to_le_bytes());
        v.extend_from_slice(&self.started_ms.to_le_bytes());
        v.extend_from_slice(&self.updated_ms.to_le_bytes());
        v.extend_from_slice(&(self.partitions.len() as u32).to_le_bytes());
        for (topic, p) in &self.partitions {
            put_str(&mut v, topic);
            v.extend_from_slice(&p.to_le_bytes());
        }
        v.extend_from_slice(&(self.groups.len() as u32).to_le_bytes());
        for g in &self.groups {
            put_str(&mut v, g);
        }
        v
    }

    fn decode(transactional_id: &str, b: &[u8]) -> Option<TxnMeta> {
        let mut r = Reader { b, pos: 0 };
        if r.take(1)?[0] != META_VERSION {
            return None;
        }
        let producer_id = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let epoch = i16::from_le_bytes(r.take(2)?.try_into().ok()?);
        let state = TxnState::from_code(r.take(1)?[0])?;
        let timeout_ms = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
        let started_ms = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let updated_ms = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let n = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
        if n > MAX_PARTITIONS_PER_TXN {
            return None;
        }
        let mut partitions = BTreeSet::new();
        for _ in 0..n {
            let topic = r.str()?;
            let p = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
            partitions.insert((topic, p));
        }
        let n = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
        if n > MAX_PARTITIONS_PER_TXN {
            return None;
        }
        let mut groups = BTreeSet::new();
        for _ in 0..n {
            groups.insert(r.str()?);
        }
        (r.pos == b.len()).then(|| TxnMeta {
            transactional_id: transactional_id.to_string(),
            producer_id,
            epoch,
            state,
            partitions,
            groups,
            timeout_ms,
            started_ms,
            updated_ms,
        })
    }
}

fn put_str(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(&(s.len() as u16).to_le_bytes());
    v.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn str(&mut self) -> Option<String> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().ok()?) as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

/// One transactional id: its meta (read by appends under a short lock) and
/// a lock serialising coordinator operations on it.
#[derive(Debug)]
struct Entry {
    meta: Mutex<TxnMeta>,
    op: tokio::sync::Mutex<()>,
}

/// The transaction coordinator.
#[derive(Debug)]
pub struct Coordinator {
    log: Log,
    flush: FlushPolicy,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    by_pid: Mutex<HashMap<i64, Arc<Entry>>>,
}

macro_rules! failpoint {
    ($name:literal) => {
        fail::fail_point!($name, |_| Err(BrokerError::Injected($name)));
    };
}

fn now_ms() -> i64 {
    ferry_proto::now_ms()
}

impl Coordinator {
    /// Opens the transaction log under `dir` and replays it.
    pub fn open(dir: &Path, log_config: LogConfig) -> Result<Coordinator, BrokerError> {
        let flush = log_config.flush;
        let log = Log::open(dir, log_config)?;
        let mut metas: HashMap<String, TxnMeta> = HashMap::new();
        crate::replay::replay(&log, 0, |batch| {
            for record in batch.records() {
                let record = record?;
                let (Some(key), Some(value)) = (record.key, record.value) else {
                    continue;
                };
                let Ok(tid) = std::str::from_utf8(key) else {
                    continue;
                };
                match TxnMeta::decode(tid, value) {
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
        })?;
        let mut entries = HashMap::new();
        let mut by_pid = HashMap::new();
        for (tid, meta) in metas {
            let pid = meta.producer_id;
            let entry = Arc::new(Entry {
                meta: Mutex::new(meta),
                op: tokio::sync::Mutex::new(()),
            });
            by_pid.insert(pid, entry.clone());
            entries.insert(tid, entry);
        }
        tracing::info!(
            transactional_ids = entries.len(),
            "replayed transaction log"
        );
        Ok(Coordinator {
            log,
            flush,
            entries: Mutex::new(entries),
            by_pid: Mutex::new(by_pid),
        })
    }

    async fn persist(&self, meta: &TxnMeta) -> Result<(), BrokerError> {
        let now = now_ms();
        let mut b = BatchBuilder::new(now);
        b.push(
            now,
            Some(meta.transactional_id.as_bytes()),
            Some(&meta.encode()),
            &[],
        );
        let bytes: Bytes = b.finish();
        let info = self.log.append(ValidBatch::exact(&bytes)?)?;
        if self.flush != FlushPolicy::Never {
            self.log.wait_durable(info.last_offset).await?;
        }
        Ok(())
    }

    fn entry(&self, tid: &str) -> Result<Arc<Entry>, BrokerError> {
        self.entries.lock().get(tid).cloned().ok_or_else(|| {
            BrokerError::InvalidTxnState(format!(
                "unknown transactional id {tid:?}; call InitProducerId first"
            ))
        })
    }

    /// Checks that (pid, epoch) is the id's current producer.
    fn check_producer(meta: &TxnMeta, pid: i64, epoch: i16) -> Result<(), BrokerError> {
        if pid != meta.producer_id || epoch < meta.epoch {
            return Err(BrokerError::ProducerFenced {
                transactional_id: meta.transactional_id.clone(),
                epoch,
                current: meta.epoch,
            });
        }
        if epoch > meta.epoch {
            return Err(BrokerError::InvalidEpoch {
                epoch,
                current: meta.epoch,
            });
        }
        Ok(())
    }

    /// `InitProducerId` with a transactional id: finishes or aborts any
    /// open transaction, then bumps the epoch, which fences every older
    /// producer of this id.
    pub async fn init_producer_id(
        &self,
        state: &BrokerState,
        tid: &str,
        timeout_ms: u32,
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
                let e = Arc::new(Entry {
                    meta: Mutex::new(TxnMeta {
                        transactional_id: tid.to_string(),
                        producer_id: -1,
                        epoch: -1,
                        state: TxnState::Empty,
                        partitions: BTreeSet::new(),
                        groups: BTreeSet::new(),
                        timeout_ms,
                        started_ms: 0,
                        updated_ms: 0,
                    }),
                    op: tokio::sync::Mutex::new(()),
                });
                entries.insert(tid.to_string(), e.clone());
                e
            }
        };
        let _op = entry.op.lock().await;
        let current = entry.meta.lock().clone();
        match current.state {
            TxnState::Ongoing | TxnState::PrepareAbort => {
                self.complete(state, &entry, false).await?
            }
            TxnState::PrepareCommit => self.complete(state, &entry, true).await?,
            _ => {}
        }
        let mut meta = entry.meta.lock().clone();
        if meta.producer_id < 0 || meta.epoch >= i16::MAX - 1 {
            meta.producer_id = state.producer_ids.allocate()?;
            meta.epoch = 0;
        } else {
            meta.epoch += 1;
        }
        meta.state = TxnState::Empty;
        meta.partitions.clear();
        meta.groups.clear();
        meta.timeout_ms = timeout_ms;
        meta.updated_ms = now_ms();
        self.persist(&meta).await?;
        let result = (meta.producer_id, meta.epoch);
        self.by_pid.lock().insert(meta.producer_id, entry.clone());
        *entry.meta.lock() = meta;
        Ok(result)
    }

    /// Registers partitions (`AddPartitionsToTxn`) or a group
    /// (`AddOffsetsToTxn`) with the producer's transaction, opening one if
    /// none is open. Durable before it returns.
    pub async fn add(
        &self,
        state: &BrokerState,
        tid: &str,
        pid: i64,
        epoch: i16,
        partitions: &[(String, u32)],
        group: Option<&str>,
    ) -> Result<(), BrokerError> {
        for (topic, p) in partitions {
            state.topics.partition(topic, *p)?;
        }
        if let Some(g) = group {
            check_name(g).map_err(|reason| BrokerError::InvalidGroup {
                name: g.to_string(),
                reason,
            })?;
        }
        let entry = self.entry(tid)?;
        let _op = entry.op.lock().await;
        let mut meta = entry.meta.lock().clone();
        Self::check_producer(&meta, pid, epoch)?;
        match meta.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                return Err(BrokerError::ConcurrentTransactions(tid.to_string()));
            }
            TxnState::Ongoing => {}
            _ => {
                meta.state = TxnState::Ongoing;
                meta.started_ms = now_ms();
                meta.partitions.clear();
                meta.groups.clear();
            }
        }
        let before = (meta.partitions.len(), meta.groups.len(), meta.state);
        let was_ongoing = entry.meta.lock().state == TxnState::Ongoing;
        meta.partitions.extend(partitions.iter().cloned());
        if let Some(g) = group {
            meta.groups.insert(g.to_string());
        }
        if meta.partitions.len() > MAX_PARTITIONS_PER_TXN {
            return Err(BrokerError::InvalidRequest(format!(
                "a transaction may touch at most {MAX_PARTITIONS_PER_TXN} partitions"
            )));
        }
        if was_ongoing && before == (meta.partitions.len(), meta.groups.len(), meta.state) {
            return Ok(());
        }
        meta.updated_ms = now_ms();
        // Durable before any append may rely on it: recovery must know
        // every partition a transaction could have written to.
        self.persist(&meta).await?;
        *entry.meta.lock() = meta;
        Ok(())
    }

    /// `TxnOffsetCommit`: offsets that become the group's committed offsets
    /// only if the transaction commits.
    pub async fn txn_offset_commit(
        &self,
        state: &BrokerState,
        tid: &str,
        pid: i64,
        epoch: i16,
        group: &str,
        offsets: &[(String, u32, u64)],
    ) -> Result<(), BrokerError> {
        for (topic, p, _) in offsets {
            state.topics.partition(topic, *p)?;
        }
        let entry = self.entry(tid)?;
        let _op = entry.op.lock().await;
        let meta = entry.meta.lock().clone();
        Self::check_producer(&meta, pid, epoch)?;
        if meta.state != TxnState::Ongoing || !meta.groups.contains(group) {
            return Err(BrokerError::InvalidTxnState(format!(
                "group {group:?} is not part of an open transaction of {tid:?}; call AddOffsetsToTxn first"
            )));
        }
        state
            .offsets
            .commit_in_transaction(pid, epoch, group, offsets)
            .await
    }

    /// Runs `append` if (pid, epoch) has an open transaction with
    /// `topic`/`partition` registered, holding the transaction's lock so
    /// that the commit cannot start in between.
    pub fn check_append<T>(
        &self,
        pid: i64,
        epoch: i16,
        topic: &str,
        partition: u32,
        append: impl FnOnce() -> Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        let entry = self.by_pid.lock().get(&pid).cloned();
        let not_registered = || BrokerError::NotInTransaction {
            topic: topic.to_string(),
            partition,
            producer_id: pid,
        };
        let Some(entry) = entry else {
            return Err(not_registered());
        };
        let meta = entry.meta.lock();
        if epoch != meta.epoch || pid != meta.producer_id {
            return Err(BrokerError::InvalidEpoch {
                epoch,
                current: meta.epoch,
            });
        }
        if meta.state != TxnState::Ongoing
            || !meta.partitions.contains(&(topic.to_string(), partition))
        {
            return Err(not_registered());
        }
        append()
    }

    /// `EndTxn`. Idempotent per (pid, epoch): a retry of a completed
    /// transaction gets the same answer and the same new epoch.
    pub async fn end_txn(
        &self,
        state: &BrokerState,
        tid: &str,
        pid: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(i64, i16), BrokerError> {
        let entry = self.entry(tid)?;
        let _op = entry.op.lock().await;
        let meta = entry.meta.lock().clone();
        let done = TxnState::complete(commit);
        let retry_of_completed = pid == meta.producer_id
            && epoch.checked_add(1) == Some(meta.epoch)
            && matches!(
                meta.state,
                TxnState::CompleteCommit | TxnState::CompleteAbort
            );
        if retry_of_completed {
            return if meta.state == done {
                Ok((meta.producer_id, meta.epoch))
            } else {
                Err(BrokerError::InvalidTxnState(format!(
                    "the transaction already ended with {}",
                    meta.state.name()
                )))
            };
        }
        Self::check_producer(&meta, pid, epoch)?;
        match meta.state {
            TxnState::Ongoing | TxnState::Empty => {}
            s if s == TxnState::prepare(commit) => {}
            s => {
                return Err(BrokerError::InvalidTxnState(format!(
                    "cannot {} a transaction in state {}",
                    if commit { "commit" } else { "abort" },
                    s.name()
                )));
            }
        }
        self.complete(state, &entry, commit).await?;
        failpoint!("txn::before_reply");
        let meta = entry.meta.lock();
        Ok((meta.producer_id, meta.epoch))
    }

    /// Steps 1–4 of the module docs. The caller holds the op lock.
    async fn complete(
        &self,
        state: &BrokerState,
        entry: &Entry,
        commit: bool,
    ) -> Result<(), BrokerError> {
        let meta = {
            let mut m = entry.meta.lock();
            if matches!(m.state, TxnState::Ongoing | TxnState::Empty) {
                m.state = TxnState::prepare(commit);
                m.updated_ms = now_ms();
            }
            m.clone()
        };
        failpoint!("txn::before_prepare");
        self.persist(&meta).await?;
        failpoint!("txn::after_prepare");
        let mut written = Vec::with_capacity(meta.partitions.len());
        for (topic, p) in &meta.partitions {
            match state.topics.partition(topic, *p) {
                Ok(partition) => {
                    let info = partition.append_marker(meta.producer_id, meta.epoch, commit)?;
                    written.push((partition, info.last_offset));
                }
                Err(_) => tracing::warn!(
                    topic,
                    partition = p,
                    "participant partition is gone; no marker written"
                ),
            }
            failpoint!("txn::between_markers");
        }
        for (partition, offset) in written {
            if partition.flush_policy() != FlushPolicy::Never {
                partition.log.wait_durable(offset).await?;
            }
        }
        if !meta.groups.is_empty() || state.offsets.has_pending(meta.producer_id) {
            state
                .offsets
                .end_transaction(meta.producer_id, meta.epoch, commit)
                .await?;
        }
        failpoint!("txn::before_complete");
        let mut next = meta.clone();
        next.state = TxnState::complete(commit);
        next.partitions.clear();
        next.groups.clear();
        next.updated_ms = now_ms();
        if next.epoch >= i16::MAX - 1 {
            next.producer_id = state.producer_ids.allocate()?;
            next.epoch = 0;
        } else {
            next.epoch += 1;
        }
        self.persist(&next).await?;
        if next.producer_id != meta.producer_id {
            self.by_pid.lock().remove(&meta.producer_id);
        }
        let entry_arc = self.entries.lock().get(&meta.transactional_id).cloned();
        if let Some(e) = entry_arc {
            self.by_pid.lock().insert(next.producer_id, e);
        }
        tracing::debug!(transactional_id = %meta.transactional_id, commit, epoch = next.epoch, "transaction complete");
        *entry.meta.lock() = next;
        Ok(())
    }

    /// Every transactional id's state.
    pub fn list(&self) -> Vec<TxnMeta> {
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
    pub async fn abort(&self, state: &BrokerState, tid: &str) -> Result<(), BrokerError> {
        let entry = self.entry(tid)?;
        let _op = entry.op.lock().await;
        let s = entry.meta.lock().state;
        match s {
            TxnState::Ongoing | TxnState::PrepareAbort => self.complete(state, &entry, false).await,
            TxnState::PrepareCommit => self.complete(state, &entry, true).await,
            s => Err(BrokerError::InvalidTxnState(format!(
                "{tid:?} has no open transaction (state {})",
                s.name()
            ))),
        }
    }

    /// Aborts every transaction open past its timeout.
    pub async fn abort_expired(&self, state: &BrokerState) {
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
            if !entry.meta.lock().is_hanging(now_ms()) {
                continue;
            }
            let tid = entry.meta.lock().transactional_id.clone();
            match self.complete(state, &entry, false).await {
                Ok(()) => {
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
    pub async fn recover(&self, state: &BrokerState) -> Result<(), BrokerError> {
        let entries: Vec<Arc<Entry>> = self.entries.lock().values().cloned().collect();
        for entry in entries {
            let _op = entry.op.lock().await;
            let s = entry.meta.lock().state;
            match s {
                TxnState::PrepareCommit => self.complete(state, &entry, true).await?,
                TxnState::PrepareAbort => self.complete(state, &entry, false).await?,
                _ => {}
            }
        }
        for topic in state.topics.all() {
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

    /// Flushes and closes the transaction log.
    pub fn close(&self) -> Result<(), BrokerError> {
        Ok(self.log.close()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_metadata_round_trips_and_rejects_truncation() {
        let meta = TxnMeta {
            transactional_id: "copier".into(),
            producer_id: 17,
            epoch: 3,
            state: TxnState::PrepareCommit,
            partitions: [("a".to_string(), 0), ("b".to_string(), 2)]
                .into_iter()
                .collect(),
            groups: ["g".to_string()].into_iter().collect(),
            timeout_ms: 60_000,
            started_ms: 5,
            updated_ms: 9,
        };
        let enc = meta.encode();
        assert_eq!(TxnMeta::decode("copier", &enc), Some(meta));
        for len in 0..enc.len() {
            assert!(TxnMeta::decode("copier", &enc[..len]).is_none());
        }
    }

    #[test]
    fn a_transaction_is_hanging_only_when_open_past_its_timeout() {
        let mut meta = TxnMeta {
            transactional_id: "t".into(),
            producer_id: 1,
            epoch: 0,
            state: TxnState::Ongoing,
            partitions: BTreeSet::new(),
            groups: BTreeSet::new(),
            timeout_ms: 100,
            started_ms: 1_000,
            updated_ms: 1_000,
        };
        assert!(!meta.is_hanging(1_050));
        assert!(meta.is_hanging(1_101));
        meta.state = TxnState::CompleteCommit;
        assert!(!meta.is_hanging(5_000));
    }
}
