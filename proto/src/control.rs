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

use crate::batch::{BatchBuilder, NO_SEQUENCE, ProducerStamp, ValidBatch};

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
