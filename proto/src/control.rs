//! Control batches: the transaction markers the coordinator writes to
//! every partition a transaction touched.
//!
//! A control batch has the control and transactional attribute bits set,
//! carries the transaction's producer id and epoch, no sequence number, and
//! exactly one record in Kafka's control record layout, whose key is
//!
//! ```text
//! i16 version (0) | i16 type (0 = ABORT, 1 = COMMIT)            big-endian
//! ```
//!
//! and whose value is Kafka's end-transaction marker:
//!
//! ```text
//! i16 version (0) | i32 coordinator epoch (0: one coordinator)  big-endian
//! ```
//!
//! Consumers never return control records to the application;
//! `read_committed` consumers use ABORT markers to end the span of a
//! producer's aborted batches.

use bytes::Bytes;

use std::collections::HashSet;

use crate::batch::{BatchBuilder, BatchHeader, NO_SEQUENCE, ProducerStamp, ValidBatch};

/// Which way a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlType {
    /// The transaction aborted: its records are never visible to
    /// `read_committed` consumers.
    Abort,
    /// The transaction committed.
    Commit,
}

const CONTROL_KEY_VERSION: u16 = 0;
const CONTROL_KEY_LEN: usize = 4;
const MARKER_VALUE_VERSION: u16 = 0;
/// The coordinator epoch Ferry's single transaction coordinator writes.
const COORDINATOR_EPOCH: i32 = 0;

impl ControlType {
    fn code(self) -> u16 {
        match self {
            ControlType::Abort => 0,
            ControlType::Commit => 1,
        }
    }

    /// The control record's key.
    pub fn key(self) -> [u8; CONTROL_KEY_LEN] {
        let mut k = [0u8; CONTROL_KEY_LEN];
        k[..2].copy_from_slice(&CONTROL_KEY_VERSION.to_be_bytes());
        k[2..].copy_from_slice(&self.code().to_be_bytes());
        k
    }

    /// The control record's value: the end-transaction marker.
    pub fn marker_value() -> [u8; 6] {
        let mut v = [0u8; 6];
        v[..2].copy_from_slice(&MARKER_VALUE_VERSION.to_be_bytes());
        v[2..].copy_from_slice(&COORDINATOR_EPOCH.to_be_bytes());
        v
    }

    /// Parses a control record's key; `None` if it is not one.
    pub fn from_key(key: &[u8]) -> Option<ControlType> {
        let key: &[u8; CONTROL_KEY_LEN] = key.try_into().ok()?;
        if u16::from_be_bytes([key[0], key[1]]) != CONTROL_KEY_VERSION {
            return None;
        }
        match u16::from_be_bytes([key[2], key[3]]) {
            0 => Some(ControlType::Abort),
            1 => Some(ControlType::Commit),
            _ => None,
        }
    }
}

/// Builds the marker batch ending a transaction of `producer_id`/`epoch`.
pub fn marker_batch(producer_id: i64, epoch: i16, kind: ControlType, timestamp_ms: i64) -> Bytes {
    let mut b = BatchBuilder::new(timestamp_ms)
        .producer(ProducerStamp {
            producer_id,
            producer_epoch: epoch,
            base_sequence: NO_SEQUENCE,
        })
        .transactional(true)
        .control(true);
    b.push(
        timestamp_ms,
        Some(&kind.key()),
        Some(&ControlType::marker_value()),
        &[],
    );
    b.finish()
}

/// The marker type of a control batch, or `None` if the batch is not a
/// well-formed control batch.
pub fn marker_type(batch: &ValidBatch<'_>) -> Option<ControlType> {
    if !batch.header().is_control() {
        return None;
    }
    // Control batches are never compressed, so this borrows.
    let records = batch.records().ok()?;
    let record = records.iter().next()?.ok()?;
    ControlType::from_key(record.key?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_round_trips_through_its_batch() {
        for kind in [ControlType::Abort, ControlType::Commit] {
            let bytes = marker_batch(9, 3, kind, 1000);
            let batch = ValidBatch::exact(&bytes).unwrap();
            let h = batch.header();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!((h.producer_id, h.producer_epoch), (9, 3));
            assert_eq!(marker_type(&batch), Some(kind));
        }
    }

    #[test]
    fn unknown_control_keys_are_not_markers() {
        assert_eq!(ControlType::from_key(&[0, 0, 0, 7]), None);
        assert_eq!(ControlType::from_key(&[0, 1, 0, 0]), None);
        assert_eq!(ControlType::from_key(&[0, 0, 0]), None);
        assert_eq!(
            ControlType::from_key(&[0, 0, 0, 1]),
            Some(ControlType::Commit)
        );
    }
}

/// Drops the batches of aborted transactions from one partition's fetched
/// data under `read_committed`.
///
/// The broker sends, with each `read_committed` fetch, the aborted
/// transactions overlapping the returned records as (producer id, first
/// offset) pairs. A transactional batch of producer `P` is dropped when an
/// aborted transaction of `P` started at or before the batch's last offset
/// and `P`'s ABORT marker has not been seen since: a producer has at most
/// one open transaction per partition, so the marker ends the span. Batches
/// of other producers, non-transactional batches, and `P`'s batches of
/// later (committed) transactions pass.
///
/// Batches must be given in offset order, control batches included.
#[derive(Debug, Default)]
pub struct AbortedFilter {
    /// Aborted transactions not reached yet, sorted by first offset,
    /// latest first so the next one pops off the end.
    upcoming: Vec<(u64, i64)>,
    /// Producers inside an aborted transaction at the current batch.
    active: HashSet<i64>,
}

impl AbortedFilter {
    /// A filter for the aborted transactions of one fetch result, as
    /// (producer id, first offset) pairs.
    pub fn new(aborted: impl IntoIterator<Item = (i64, u64)>) -> AbortedFilter {
        let mut upcoming: Vec<(u64, i64)> = aborted
            .into_iter()
            .map(|(producer_id, first_offset)| (first_offset, producer_id))
            .collect();
        upcoming.sort_unstable_by(|a, b| b.cmp(a));
        AbortedFilter {
            upcoming,
            active: HashSet::new(),
        }
    }

    /// A filter that drops nothing (`read_uncommitted`).
    pub fn none() -> AbortedFilter {
        AbortedFilter::default()
    }

    /// [`AbortedFilter::keep`] for a whole batch: reads its marker type
    /// if it is a control batch.
    pub fn keep_batch(&mut self, batch: &ValidBatch<'_>) -> bool {
        let header = batch.header();
        let marker = if header.is_control() {
            marker_type(batch)
        } else {
            None
        };
        self.keep(header, marker)
    }

    /// Whether the records of the batch with this header are returned to
    /// the application. Must be called for every batch in offset order,
    /// control batches included; `marker` is the batch's marker type if it
    /// is a control batch. Control batches are never returned.
    pub fn keep(&mut self, header: &BatchHeader, marker: Option<ControlType>) -> bool {
        while let Some(&(first, pid)) = self.upcoming.last() {
            if first > header.last_offset() {
                break;
            }
            self.active.insert(pid);
            self.upcoming.pop();
        }
        if header.is_control() {
            if marker == Some(ControlType::Abort) {
                self.active.remove(&header.producer_id);
            }
            return false;
        }
        !(header.is_transactional() && self.active.contains(&header.producer_id))
    }
}
