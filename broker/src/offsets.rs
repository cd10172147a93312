//! Consumer-group offsets, kept in an internal log and in memory.
//!
//! Each commit appends one batch to the offsets log (`<data_dir>/__offsets`),
//! one record per partition:
//!
//! ```text
//! key   = u8 version (0) | u16 group_len | group | u16 topic_len | topic | u32 partition
//! value = u64 offset
//! ```
//!
//! (all integers little-endian). The key's first byte is the record's kind:
//! `0` is the offset commit above (kind and version in one), `1` a group's
//! metadata (`group::codec`):
//!
//! ```text
//! key   = u8 kind (1) | u16 group_len | group
//! value = the group record (versioned), or null: the group was deleted,
//!         with every offset committed for it before this record
//! ```
//!
//! The offset-commit part: A commit is acknowledged once its batch is
//! durable under the flush policy, and only then becomes visible to
//! `FetchOffsets`; a crash before that point may lose the commit, which the
//! committer never saw succeed. On open the log is replayed, later
//! records winning; it restates its state at its tail now and then and
//! drops the segments before (`crate::restate`), so the replay reads the
//! live state and a short tail, not every commit ever made.
//!
//! Offsets committed inside a transaction (`TxnOffsetCommit`) are written as
//! a transactional batch stamped with the producer id. They stay pending
//! until the coordinator writes the transaction's marker here: a COMMIT
//! marker makes them the group's committed offsets, an ABORT marker drops
//! them. Replay applies the same rule, so a transaction whose marker never
//! landed leaves its offsets pending until the coordinator finishes it.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use ferry_proto::batch::{BatchBuilder, NO_SEQUENCE, ProducerStamp, ValidBatch};
use ferry_proto::control::{ControlType, marker_batch, marker_type};
use ferry_storage::{AppendInfo, Log, LogConfig};
use parking_lot::Mutex;

use crate::error::BrokerError;
use crate::names::check_name;
use crate::restate::{InternalLogSize, Restatement, Restater};

/// Most partitions one commit may carry.
pub const MAX_OFFSETS_PER_COMMIT: usize = 10_000;
const KEY_VERSION: u8 = 0;
/// First key byte of a group metadata record.
const KEY_GROUP: u8 = 1;

type Key = (String, String, u32);
/// An offset of an open transaction: key, offset, and the log offset of
/// its record.
type Pending = (Key, u64, u64);

/// The offsets an open transaction wrote, with the epoch it wrote them at.
#[derive(Debug, Clone, Default)]
struct OpenTxn {
    epoch: i16,
    offsets: Vec<Pending>,
}

/// The committed offsets of every group.
#[derive(Debug)]
pub struct OffsetStore {
    log: Log,
    /// Keeps the log bounded (`crate::restate`); every write holds its gate.
    restater: Restater,
    /// Committed offset and the log offset of the commit that set it, so a
    /// commit that became durable later than a newer one cannot win.
    committed: Mutex<HashMap<Key, (u64, u64)>>,
    /// Offsets of open transactions, by producer id.
    pending: Mutex<HashMap<i64, OpenTxn>>,
    /// Group metadata records found by replay, for the group coordinator
    /// to take once.
    replayed_groups: Mutex<HashMap<String, Vec<u8>>>,
    /// The latest metadata record of every group, for restatements.
    groups: Mutex<HashMap<String, Vec<u8>>>,
}

/// What replaying the offsets log rebuilds.
#[derive(Debug, Default)]
struct Replayed {
    committed: HashMap<Key, (u64, u64)>,
    pending: HashMap<i64, OpenTxn>,
    groups: HashMap<String, Vec<u8>>,
}

impl Replayed {
    /// Folds one batch of the offsets log in: the rules the live store
    /// follows, in the order the log holds them.
    fn apply(&mut self, batch: &ValidBatch<'_>) -> Result<(), BrokerError> {
        let h = *batch.header();
        if let Some(kind) = marker_type(batch) {
            let open = self.pending.remove(&h.producer_id).unwrap_or_default();
            if kind == ControlType::Commit {
                for (key, value, at) in open.offsets {
                    apply(&mut self.committed, key, value, at);
                }
            }
            return Ok(());
        }
        for record in batch.records()?.iter() {
            let record = record?;
            let at = h.base_offset + u64::from(record.offset_delta);
            if let Some(group) = record.key.and_then(decode_group_key) {
                match record.value {
                    Some(v) => {
                        self.groups.insert(group, v.to_vec());
                    }
                    None => {
                        self.committed.retain(|(g, _, _), _| *g != group);
                        self.groups.remove(&group);
                    }
                }
                continue;
            }
            let (Some(key), Some(value)) = (record.key.and_then(decode_key), record.value) else {
                tracing::warn!(offset = at, "skipping unreadable offsets record");
                continue;
            };
            let Ok(value) = <[u8; 8]>::try_from(value) else {
                tracing::warn!(offset = at, "skipping offsets record with a bad value");
                continue;
            };
            let value = u64::from_le_bytes(value);
            if h.is_transactional() {
                let open = self.pending.entry(h.producer_id).or_default();
                open.epoch = h.producer_epoch;
                open.offsets.push((key, value, at));
            } else {
                apply(&mut self.committed, key, value, at);
            }
        }
        Ok(())
    }
}

fn encode_group_key(group: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + group.len());
    k.push(KEY_GROUP);
    k.extend_from_slice(&(group.len() as u16).to_le_bytes());
    k.extend_from_slice(group.as_bytes());
    k
}

pub(crate) fn decode_group_key(k: &[u8]) -> Option<String> {
    let (&kind, rest) = k.split_first()?;
    if kind != KEY_GROUP {
        return None;
    }
    let (group, rest) = take_str(rest)?;
    rest.is_empty().then_some(group)
}

fn apply(committed: &mut HashMap<Key, (u64, u64)>, key: Key, offset: u64, at: u64) {
    let entry = committed.entry(key).or_insert((offset, at));
    if entry.1 <= at {
        *entry = (offset, at);
    }
}

fn encode_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + group.len() + topic.len());
    k.push(KEY_VERSION);
    k.extend_from_slice(&(group.len() as u16).to_le_bytes());
    k.extend_from_slice(group.as_bytes());
    k.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    k.extend_from_slice(topic.as_bytes());
    k.extend_from_slice(&partition.to_le_bytes());
    k
}

pub(crate) fn decode_key(k: &[u8]) -> Option<Key> {
    let (&version, rest) = k.split_first()?;
    if version != KEY_VERSION {
        return None;
    }
    let (group, rest) = take_str(rest)?;
    let (topic, rest) = take_str(rest)?;
    let partition = u32::from_le_bytes(rest.try_into().ok()?);
    Some((group, topic, partition))
}

fn take_str(b: &[u8]) -> Option<(String, &[u8])> {
    let len = u16::from_le_bytes(b.get(..2)?.try_into().ok()?) as usize;
    let s = b.get(2..2 + len)?;
    Some((String::from_utf8(s.to_vec()).ok()?, &b[2 + len..]))
}

impl OffsetStore {
    /// Opens the offsets log under `dir` and replays it.
    pub fn open(dir: &Path, log_config: LogConfig) -> Result<OffsetStore, BrokerError> {
        let log = Log::open(dir, log_config)?;
        let (restater, state) = Restater::replay("__offsets", &log, Replayed::apply)?;
        tracing::info!(
            groups_partitions = state.committed.len(),
            log_bytes = log.size_bytes(),
            "replayed consumer offsets"
        );
        Ok(OffsetStore {
            log,
            restater,
            committed: Mutex::new(state.committed),
            pending: Mutex::new(state.pending),
            replayed_groups: Mutex::new(state.groups.clone()),
            groups: Mutex::new(state.groups),
        })
    }

    /// The group metadata records replay found (last per group), once.
    pub(crate) fn take_replayed_groups(&self) -> HashMap<String, Vec<u8>> {
        std::mem::take(&mut *self.replayed_groups.lock())
    }

    /// Durably writes a group's metadata record.
    pub(crate) async fn write_group(&self, group: &str, value: &[u8]) -> Result<(), BrokerError> {
        self.write_group_record(group, Some(value)).await
    }

    /// Durably deletes a group: its metadata and every committed offset.
    pub(crate) async fn delete_group(&self, group: &str) -> Result<(), BrokerError> {
        self.write_group_record(group, None).await
    }

    async fn write_group_record(
        &self,
        group: &str,
        value: Option<&[u8]>,
    ) -> Result<(), BrokerError> {
        let now = ferry_proto::now_ms();
        let mut builder = BatchBuilder::new(now);
        builder.push(now, Some(&encode_group_key(group)), value, &[]);
        let bytes: Bytes = builder.finish();
        if bytes.len() > ferry_proto::batch::MAX_BATCH_BYTES {
            return Err(BrokerError::InvalidRequest(format!(
                "group {group:?} metadata of {} bytes is too large to store",
                bytes.len()
            )));
        }
        self.append(&bytes, |_| match value {
            Some(v) => {
                self.groups.lock().insert(group.to_string(), v.to_vec());
            }
            None => {
                self.committed.lock().retain(|(g, _, _), _| g != group);
                self.groups.lock().remove(group);
            }
        })
        .await?;
        Ok(())
    }

    /// Durably appends one batch and, with the restater's gate still held,
    /// applies it to the in-memory state (`update`); then restates the
    /// log if that is due.
    async fn append(
        &self,
        bytes: &[u8],
        update: impl FnOnce(&AppendInfo),
    ) -> Result<AppendInfo, BrokerError> {
        let (info, due) = self.restater.append(&self.log, bytes, update).await?;
        if due && let Err(e) = self.restate().await {
            // The write itself is durable; the log is only longer.
            tracing::warn!(error = %e, "restating the offsets log failed");
        }
        Ok(info)
    }

    /// Restates the log (`crate::restate`) if it is due: the group
    /// records, then every committed and pending offset in the order of
    /// the records that set them, so that a COMMIT marker replayed later
    /// decides between a pending and a committed offset as it does live.
    async fn restate(&self) -> Result<Option<Restatement>, BrokerError> {
        self.restater
            .restate(&self.log, |out| {
                let groups = self.groups.lock();
                let mut names: Vec<_> = groups.keys().collect();
                names.sort_unstable();
                for group in names {
                    out.push(None, &encode_group_key(group), Some(&groups[group]));
                }
                let committed = self.committed.lock();
                let pending = self.pending.lock();
                let mut records: Vec<(u64, Option<ProducerStamp>, &Key, u64)> = committed
                    .iter()
                    .map(|(key, (offset, at))| (*at, None, key, *offset))
                    .collect();
                for (pid, open) in pending.iter() {
                    let stamp = ProducerStamp {
                        producer_id: *pid,
                        producer_epoch: open.epoch,
                        base_sequence: NO_SEQUENCE,
                    };
                    records.extend(
                        open.offsets
                            .iter()
                            .map(|(key, offset, at)| (*at, Some(stamp), key, *offset)),
                    );
                }
                records.sort_unstable_by_key(|r| r.0);
                for (_, stamp, (g, t, p), offset) in records {
                    out.push(stamp, &encode_key(g, t, *p), Some(&offset.to_le_bytes()));
                }
            })
            .await
    }

    /// The size of the offsets log.
    pub(crate) fn log_size(&self) -> InternalLogSize {
        InternalLogSize::of("__offsets", &self.log)
    }

    /// Whether any offset is committed for `group`.
    pub fn has_offsets(&self, group: &str) -> bool {
        self.committed.lock().keys().any(|(g, _, _)| g == group)
    }

    /// Every group with committed offsets.
    pub fn groups_with_offsets(&self) -> std::collections::BTreeSet<String> {
        self.committed
            .lock()
            .keys()
            .map(|(g, _, _)| g.clone())
            .collect()
    }

    /// The partitions of `topic` for which an open transaction holds
    /// offsets of `group`.
    pub fn pending_partitions(&self, group: &str, topic: &str) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .pending
            .lock()
            .values()
            .flat_map(|open| &open.offsets)
            .filter(|((g, t, _), _, _)| g == group && t == topic)
            .map(|((_, _, p), _, _)| *p)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Durably commits `offsets` for `group`.
    pub async fn commit(
        &self,
        group: &str,
        offsets: &[(String, u32, u64)],
    ) -> Result<(), BrokerError> {
        self.write(group, offsets, None, |info| {
            let mut committed = self.committed.lock();
            for (i, (topic, partition, offset)) in offsets.iter().enumerate() {
                let key = (group.to_string(), topic.clone(), *partition);
                apply(&mut committed, key, *offset, info.base_offset + i as u64);
            }
        })
        .await
    }

    /// Durably writes `offsets` for `group` as part of the transaction of
    /// `producer_id`; they take effect when its COMMIT marker is written.
    pub async fn commit_in_transaction(
        &self,
        producer_id: i64,
        epoch: i16,
        group: &str,
        offsets: &[(String, u32, u64)],
    ) -> Result<(), BrokerError> {
        let stamp = ProducerStamp {
            producer_id,
            producer_epoch: epoch,
            base_sequence: NO_SEQUENCE,
        };
        self.write(group, offsets, Some(stamp), |info| {
            let mut pending = self.pending.lock();
            let open = pending.entry(producer_id).or_default();
            open.epoch = epoch;
            for (i, (topic, partition, offset)) in offsets.iter().enumerate() {
                let key = (group.to_string(), topic.clone(), *partition);
                open.offsets
                    .push((key, *offset, info.base_offset + i as u64));
            }
        })
        .await
    }

    /// Writes the marker ending `producer_id`'s transaction and, once it is
    /// durable, applies (commit) or drops (abort) its pending offsets.
    pub async fn end_transaction(
        &self,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(), BrokerError> {
        let kind = if commit {
            ControlType::Commit
        } else {
            ControlType::Abort
        };
        let bytes = marker_batch(producer_id, epoch, kind, ferry_proto::now_ms());
        self.append(&bytes, |_| {
            let open = self.pending.lock().remove(&producer_id).unwrap_or_default();
            if commit {
                let mut committed = self.committed.lock();
                for (key, value, at) in open.offsets {
                    apply(&mut committed, key, value, at);
                }
            }
        })
        .await?;
        Ok(())
    }

    /// Whether `producer_id` has offsets waiting for its transaction's end.
    pub fn has_pending(&self, producer_id: i64) -> bool {
        self.pending.lock().contains_key(&producer_id)
    }

    /// Validates and durably appends one batch of offset records, then
    /// applies it to the in-memory state with `update`.
    async fn write(
        &self,
        group: &str,
        offsets: &[(String, u32, u64)],
        stamp: Option<ProducerStamp>,
        update: impl FnOnce(&AppendInfo),
    ) -> Result<(), BrokerError> {
        check_name(group).map_err(|reason| BrokerError::InvalidGroup {
            name: group.to_string(),
            reason,
        })?;
        if offsets.is_empty() {
            return Ok(());
        }
        if offsets.len() > MAX_OFFSETS_PER_COMMIT {
            return Err(BrokerError::InvalidRequest(format!(
                "{} offsets in one commit; the limit is {MAX_OFFSETS_PER_COMMIT}",
                offsets.len()
            )));
        }
        let now = ferry_proto::now_ms();
        let mut builder = BatchBuilder::new(now);
        if let Some(stamp) = stamp {
            builder = builder.producer(stamp).transactional(true);
        }
        for (topic, partition, offset) in offsets {
            builder.push(
                now,
                Some(&encode_key(group, topic, *partition)),
                Some(&offset.to_le_bytes()),
                &[],
            );
        }
        let bytes: Bytes = builder.finish();
        if bytes.len() > ferry_proto::batch::MAX_BATCH_BYTES {
            return Err(BrokerError::InvalidRequest(
                "offset commit too large".into(),
            ));
        }
        // The offsets log shares the partitions' policy; under `never`
        // nothing waits for durability.
        self.append(&bytes, update).await?;
        Ok(())
    }

    /// Every committed offset: (group, topic, partition, offset), sorted.
    pub fn all_committed(&self) -> Vec<(String, String, u32, u64)> {
        let committed = self.committed.lock();
        let mut out: Vec<_> = committed
            .iter()
            .map(|((g, t, p), (offset, _))| (g.clone(), t.clone(), *p, *offset))
            .collect();
        out.sort_unstable();
        out
    }

    /// The committed offsets of `group` for `topic`, by partition.
    pub fn fetch(&self, group: &str, topic: &str) -> Vec<(u32, u64)> {
        let committed = self.committed.lock();
        let mut out: Vec<(u32, u64)> = committed
            .iter()
            .filter(|((g, t, _), _)| g == group && t == topic)
            .map(|((_, _, p), (offset, _))| (*p, *offset))
            .collect();
        out.sort_unstable();
        out
    }

    /// Flushes and closes the offsets log.
    pub fn close(&self) -> Result<(), BrokerError> {
        Ok(self.log.close()?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ferry_storage::FlushPolicy;
    use proptest::prelude::*;

    use super::*;

    /// Small segments, so that a few dozen commits roll and restate.
    fn config() -> LogConfig {
        crate::restate::internal_log_config(&LogConfig {
            segment_bytes: 4096,
            flush: FlushPolicy::Never,
            ..LogConfig::default()
        })
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Everything a replay rebuilds, without the log offsets the records
    /// sit at (a restatement moves them, keeping their order).
    type View = (
        Vec<(String, String, u32, u64)>,
        BTreeMap<i64, (i16, Vec<(Key, u64)>)>,
        BTreeMap<String, Vec<u8>>,
    );

    fn view(store: &OffsetStore) -> View {
        let pending = store
            .pending
            .lock()
            .iter()
            .map(|(pid, open)| {
                let offsets = open.offsets.iter().map(|(k, v, _)| (k.clone(), *v));
                (*pid, (open.epoch, offsets.collect()))
            })
            .collect();
        let groups = store.groups.lock().clone().into_iter().collect();
        (store.all_committed(), pending, groups)
    }

    #[derive(Debug, Clone)]
    enum Op {
        Commit(u8, u32, u64),
        TxnCommit(i64, u8, u32, u64),
        EndTxn(i64, bool),
        WriteGroup(u8, usize),
        DeleteGroup(u8),
        Reopen { crash: bool },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..3, 0u32..4, 0u64..1000).prop_map(|(g, p, o)| Op::Commit(g, p, o)),
            3 => (0i64..3, 0u8..3, 0u32..4, 0u64..1000)
                .prop_map(|(pid, g, p, o)| Op::TxnCommit(pid, g, p, o)),
            2 => (0i64..3, any::<bool>()).prop_map(|(pid, c)| Op::EndTxn(pid, c)),
            1 => (0u8..3, 0usize..900).prop_map(|(g, len)| Op::WriteGroup(g, len)),
            1 => (0u8..3).prop_map(Op::DeleteGroup),
            1 => any::<bool>().prop_map(|crash| Op::Reopen { crash }),
        ]
    }

    async fn run(store: &OffsetStore, op: &Op) {
        let name = |g: &u8| format!("g{g}");
        match op {
            Op::Commit(g, p, o) => store
                .commit(&name(g), &[("t".into(), *p, *o)])
                .await
                .unwrap(),
            Op::TxnCommit(pid, g, p, o) => store
                .commit_in_transaction(*pid, 7, &name(g), &[("t".into(), *p, *o)])
                .await
                .unwrap(),
            Op::EndTxn(pid, commit) => store.end_transaction(*pid, 7, *commit).await.unwrap(),
            Op::WriteGroup(g, len) => store
                .write_group(&name(g), &vec![*len as u8; *len])
                .await
                .unwrap(),
            Op::DeleteGroup(g) => store.delete_group(&name(g)).await.unwrap(),
            Op::Reopen { .. } => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// However commits, transactional offsets, markers and group
        /// records interleave with the restatements that small segments
        /// force, a reopen (clean or after a crash) rebuilds exactly the
        /// state the store held.
        #[test]
        fn a_reopened_store_holds_what_the_live_one_held(
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let rt = rt();
            let mut store = OffsetStore::open(dir.path(), config()).unwrap();
            for op in ops.iter().chain([&Op::Reopen { crash: true }]) {
                rt.block_on(run(&store, op));
                if let Op::Reopen { crash } = op {
                    let before = view(&store);
                    if !crash {
                        store.close().unwrap();
                    }
                    drop(store);
                    store = OffsetStore::open(dir.path(), config()).unwrap();
                    prop_assert_eq!(view(&store), before);
                }
            }
        }
    }

    #[test]
    fn thousands_of_commits_of_the_same_partitions_leave_a_log_the_size_of_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let store = OffsetStore::open(dir.path(), config()).unwrap();
        let partitions: Vec<(String, u32, u64)> = (0..4).map(|p| ("t".into(), p, 0)).collect();
        rt.block_on(async {
            for i in 0..5_000u64 {
                let offsets: Vec<_> = partitions
                    .iter()
                    .map(|(t, p, _)| (t.clone(), *p, i))
                    .collect();
                store.commit("g", &offsets).await.unwrap();
            }
        });
        let size = store.log_size();
        // 5,000 commits of ~110 bytes are ~540 KiB of history; what is
        // left is at most a few 4 KiB segments.
        assert!(size.bytes <= 4 * 4096, "{size:?}");
        assert!(size.segments <= 4, "{size:?}");
        assert!(size.log_start_offset > 15_000, "{size:?}");
        drop(store);
        let store = OffsetStore::open(dir.path(), config()).unwrap();
        assert_eq!(
            store.fetch("g", "t"),
            (0..4).map(|p| (p, 4_999)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_restatement_a_crash_cut_short_is_abandoned_and_later_commits_count() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let store = OffsetStore::open(dir.path(), config()).unwrap();
        rt.block_on(store.commit("g", &[("t".into(), 0, 5)]))
            .unwrap();
        drop(store);
        // What a crash after BEGIN and part of the state leaves: a stale
        // restated offset and no END.
        {
            let log = Log::open(dir.path(), config()).unwrap();
            log.append(ValidBatch::exact(&crate::restate::begin_batch()).unwrap())
                .unwrap();
            let mut b = BatchBuilder::new(0);
            b.push(
                0,
                Some(&encode_key("g", "t", 0)),
                Some(&1u64.to_le_bytes()),
                &[],
            );
            log.append(ValidBatch::exact(&b.finish()).unwrap()).unwrap();
            log.close().unwrap();
        }
        let store = OffsetStore::open(dir.path(), config()).unwrap();
        assert_eq!(
            store.fetch("g", "t"),
            vec![(0, 5)],
            "the cut restatement is ignored"
        );
        rt.block_on(store.commit("g", &[("t".into(), 1, 9)]))
            .unwrap();
        drop(store);
        let store = OffsetStore::open(dir.path(), config()).unwrap();
        assert_eq!(
            store.fetch("g", "t"),
            vec![(0, 5), (1, 9)],
            "a commit after the abandoned restatement is live state"
        );
    }
}
