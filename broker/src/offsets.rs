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
//! committer never saw succeed. On open the whole log is replayed, later
//! records winning.
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
use ferry_storage::{Log, LogConfig};
use parking_lot::Mutex;

use crate::error::BrokerError;
use crate::names::check_name;

/// Most partitions one commit may carry.
pub const MAX_OFFSETS_PER_COMMIT: usize = 10_000;
const KEY_VERSION: u8 = 0;
/// First key byte of a group metadata record.
const KEY_GROUP: u8 = 1;

type Key = (String, String, u32);
/// An offset of an open transaction: key, offset, and the log offset of
/// its record.
type Pending = (Key, u64, u64);

/// The committed offsets of every group.
#[derive(Debug)]
pub struct OffsetStore {
    log: Log,
    /// Committed offset and the log offset of the commit that set it, so a
    /// commit that became durable later than a newer one cannot win.
    committed: Mutex<HashMap<Key, (u64, u64)>>,
    /// Offsets of open transactions, by producer id: (key, offset, log offset).
    pending: Mutex<HashMap<i64, Vec<Pending>>>,
    /// Group metadata records found by replay, for the group coordinator
    /// to take once.
    replayed_groups: Mutex<HashMap<String, Vec<u8>>>,
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
        let mut committed = HashMap::new();
        let mut pending: HashMap<i64, Vec<Pending>> = HashMap::new();
        let mut groups: HashMap<String, Vec<u8>> = HashMap::new();
        crate::replay::replay(&log, 0, |batch| {
            let h = *batch.header();
            if let Some(kind) = marker_type(batch) {
                let records = pending.remove(&h.producer_id).unwrap_or_default();
                if kind == ControlType::Commit {
                    for (key, value, at) in records {
                        apply(&mut committed, key, value, at);
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
                            groups.insert(group, v.to_vec());
                        }
                        None => {
                            committed.retain(|(g, _, _), _| *g != group);
                            groups.remove(&group);
                        }
                    }
                    continue;
                }
                let (Some(key), Some(value)) = (record.key.and_then(decode_key), record.value)
                else {
                    tracing::warn!(offset = at, "skipping unreadable offsets record");
                    continue;
                };
                let Ok(value) = <[u8; 8]>::try_from(value) else {
                    tracing::warn!(offset = at, "skipping offsets record with a bad value");
                    continue;
                };
                let value = u64::from_le_bytes(value);
                if h.is_transactional() {
                    pending
                        .entry(h.producer_id)
                        .or_default()
                        .push((key, value, at));
                } else {
                    apply(&mut committed, key, value, at);
                }
            }
            Ok(())
        })?;
        tracing::info!(
            groups_partitions = committed.len(),
            "replayed consumer offsets"
        );
        Ok(OffsetStore {
            log,
            committed: Mutex::new(committed),
            pending: Mutex::new(pending),
            replayed_groups: Mutex::new(groups),
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
        self.write_group_record(group, None).await?;
        self.committed.lock().retain(|(g, _, _), _| g != group);
        Ok(())
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
        self.log.append_durable(ValidBatch::exact(&bytes)?).await?;
        Ok(())
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
            .flatten()
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
        let Some(info) = self.write(group, offsets, None).await? else {
            return Ok(());
        };
        let mut committed = self.committed.lock();
        for (i, (topic, partition, offset)) in offsets.iter().enumerate() {
            let key = (group.to_string(), topic.clone(), *partition);
            apply(&mut committed, key, *offset, info.base_offset + i as u64);
        }
        Ok(())
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
        let Some(info) = self.write(group, offsets, Some(stamp)).await? else {
            return Ok(());
        };
        let mut pending = self.pending.lock();
        let list = pending.entry(producer_id).or_default();
        for (i, (topic, partition, offset)) in offsets.iter().enumerate() {
            let key = (group.to_string(), topic.clone(), *partition);
            list.push((key, *offset, info.base_offset + i as u64));
        }
        Ok(())
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
        self.log.append_durable(ValidBatch::exact(&bytes)?).await?;
        let records = self.pending.lock().remove(&producer_id).unwrap_or_default();
        if commit {
            let mut committed = self.committed.lock();
            for (key, value, at) in records {
                apply(&mut committed, key, value, at);
            }
        }
        Ok(())
    }

    /// Whether `producer_id` has offsets waiting for its transaction's end.
    pub fn has_pending(&self, producer_id: i64) -> bool {
        self.pending.lock().contains_key(&producer_id)
    }

    /// Validates and durably appends one batch of offset records.
    async fn write(
        &self,
        group: &str,
        offsets: &[(String, u32, u64)],
        stamp: Option<ProducerStamp>,
    ) -> Result<Option<ferry_storage::AppendInfo>, BrokerError> {
        check_name(group).map_err(|reason| BrokerError::InvalidGroup {
            name: group.to_string(),
            reason,
        })?;
        if offsets.is_empty() {
            return Ok(None);
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
        let info = self.log.append_durable(ValidBatch::exact(&bytes)?).await?;
        Ok(Some(info))
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
