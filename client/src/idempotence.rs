//! The idempotent producer's bookkeeping, kept free of I/O so every
//! decision is unit-tested without a network.
//!
//! - [`Sequencer`]: one partition's producer epoch and next sequence
//!   number. A batch takes its stamp when it is sealed; sequences count
//!   records and wrap to 0 after `i32::MAX`, as the broker's do.
//! - [`decide`]: what the sender does with a failed produce response, for
//!   a plain, idempotent or transactional producer ([`ProducerMode`]).
//!
//! # Why go-back-N needs no extra bookkeeping
//!
//! The broker appends an idempotent batch only if its first sequence
//! follows the last one it stored for the partition. When batch `k` fails
//! with a retriable error, the later batches already in flight reach the
//! broker without their predecessor and are refused with
//! `OutOfOrderSequence` (or `UnknownProducerId` while nothing of the
//! producer is stored in the partition). The sender requeues them behind
//! `k`, in sequence order, so they go out again after `k`: the refusal is
//! the "go back". If `k` had in fact been stored (an indefinite error), the
//! later batches land, and the resent `k` is answered as a duplicate with
//! its original offsets. With at most [`MAX_IN_FLIGHT_IDEMPOTENT`] batches
//! in flight, a resent batch is always within the broker's 5-batch window.

use ferry_proto::ErrorCode;
use ferry_proto::batch::ProducerStamp;
use ferry_proto::batch::sequence::{self, advance};

use crate::error::ClientError;

/// Most batches per partition an idempotent producer has in flight: the
/// number of batches the broker remembers per producer and partition, so
/// that every retry is recognised as a duplicate. One constant with the
/// broker's window ([`sequence::WINDOW`]).
pub const MAX_IN_FLIGHT_IDEMPOTENT: usize = sequence::WINDOW;

/// One partition's producer epoch and the sequence the next sealed batch
/// starts at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sequencer {
    /// Epoch stamped on new batches.
    pub(crate) epoch: i16,
    /// First sequence of the next batch.
    pub(crate) next: i32,
}

impl Sequencer {
    pub(crate) fn new(epoch: i16) -> Sequencer {
        Sequencer { epoch, next: 0 }
    }

    /// The stamp of the next batch, of `records` records; moves past it.
    pub(crate) fn stamp(&mut self, producer_id: i64, records: u32) -> ProducerStamp {
        let stamp = ProducerStamp {
            producer_id,
            producer_epoch: self.epoch,
            base_sequence: self.next,
        };
        // A batch holds at most MAX_RECORDS_PER_BATCH (2^20) records.
        debug_assert!(records <= ferry_proto::batch::MAX_RECORDS_PER_BATCH);
        self.next = advance(self.next, records as i32);
        stamp
    }

    /// Moves to the next epoch, whose sequences start again at 0.
    pub(crate) fn bump(&mut self) -> Result<(), ClientError> {
        if self.epoch == i16::MAX {
            return Err(ClientError::broker(
                ErrorCode::InvalidProducerEpoch,
                "the producer epoch is exhausted; start a new producer",
            ));
        }
        self.epoch += 1;
        self.next = 0;
        Ok(())
    }
}

/// What the sender does with a batch whose response carried an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Resend the same bytes after a backoff.
    Retry,
    /// An earlier batch of the partition is being retried and this one was
    /// refused because it arrived before it: resend the same bytes after
    /// that batch, with no backoff of its own.
    AwaitPredecessor,
    /// Fail this batch.
    Fail,
    /// Fail this batch, which surely was not stored; the later batches of
    /// the partition are renumbered from 0 under the next epoch so the hole
    /// it leaves in the sequence does not block them.
    FailAndRenumber,
    /// The broker does not know the producer in this partition (it
    /// expired, or its batches were lost): renumber this batch and the
    /// later ones from 0 under the next epoch and resend.
    Renumber,
    /// Fail this batch and every later batch of the partition with the
    /// error, and refuse the partition's future batches: the sequence is
    /// broken (records were lost, or another producer took over the id).
    FailPartition,
}

/// Which guarantees the producer whose batch failed gives; decides what
/// [`decide`] may do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProducerMode {
    /// No producer id: batches carry no sequence, and a retry may
    /// duplicate.
    Plain,
    /// Producer id, epoch and sequences; the producer moves a partition to
    /// the next epoch on its own to repair a sequence.
    Idempotent,
    /// Idempotent, inside transactions: the epoch belongs to the
    /// transaction coordinator, so a sequence that needs a new epoch fails
    /// the partition instead (the transaction must abort), and the next
    /// transaction starts it afresh.
    Transactional,
}

/// Decides a failed response.
///
/// `earlier_unacked` says whether a batch of the same partition sealed
/// before this one is still unresolved (waiting for a retry or in flight).
///
/// | code | idempotent, earlier batch unresolved | idempotent, all earlier acked | transactional | plain |
/// |---|---|---|---|---|
/// | retriable | `Retry` | `Retry` | `Retry` | `Retry` |
/// | `OutOfOrderSequence` | `AwaitPredecessor` | `FailPartition` | as idempotent | `Fail` |
/// | `UnknownProducerId` | `AwaitPredecessor` | `Renumber` | `Renumber` becomes `FailPartition` | `Fail` |
/// | `InvalidProducerEpoch`, `ProducerFenced` | `FailPartition` | `FailPartition` | `FailPartition` | `Fail` |
/// | other definite | `FailPartition` | `FailAndRenumber` | `FailAndRenumber` becomes `FailPartition` | `Fail` |
/// | other indefinite | `FailPartition` | `FailPartition` | `FailPartition` | `Fail` |
///
/// A definite failure behind an unresolved batch fails the partition
/// because that earlier batch, still under the old epoch, may yet be
/// stored: renumbering around it could duplicate or reorder. A
/// transactional producer never renumbers: it decides as an idempotent one
/// would, except that every decision needing a new epoch fails the
/// partition.
pub(crate) fn decide(code: ErrorCode, mode: ProducerMode, earlier_unacked: bool) -> Action {
    if code.is_retriable() {
        return Action::Retry;
    }
    if mode == ProducerMode::Plain {
        return Action::Fail;
    }
    let action = match code {
        ErrorCode::OutOfOrderSequence | ErrorCode::UnknownProducerId if earlier_unacked => {
            Action::AwaitPredecessor
        }
        ErrorCode::UnknownProducerId => Action::Renumber,
        ErrorCode::OutOfOrderSequence
        | ErrorCode::InvalidProducerEpoch
        | ErrorCode::ProducerFenced => Action::FailPartition,
        c if c.is_definite() && !earlier_unacked => Action::FailAndRenumber,
        _ => Action::FailPartition,
    };
    let needs_new_epoch = matches!(action, Action::Renumber | Action::FailAndRenumber);
    if mode == ProducerMode::Transactional && needs_new_epoch {
        Action::FailPartition
    } else {
        action
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_count_records_from_zero() {
        let mut s = Sequencer::new(0);
        let a = s.stamp(7, 3);
        let b = s.stamp(7, 1);
        let c = s.stamp(7, 10);
        assert_eq!(
            (a.base_sequence, b.base_sequence, c.base_sequence),
            (0, 3, 4)
        );
        assert_eq!(s.next, 14);
        assert!(
            [a, b, c]
                .iter()
                .all(|x| x.producer_id == 7 && x.producer_epoch == 0)
        );
    }

    #[test]
    fn sequences_wrap_to_zero_after_i32_max_like_the_broker() {
        assert_eq!(advance(i32::MAX, 1), 0);
        assert_eq!(advance(i32::MAX - 1, 3), 1);
        assert_eq!(advance(i32::MAX - 2, 2), i32::MAX);
        assert_eq!(advance(5, 0), 5);
        let mut s = Sequencer {
            epoch: 0,
            next: i32::MAX - 1,
        };
        let stamp = s.stamp(1, 3);
        assert_eq!(stamp.base_sequence, i32::MAX - 1);
        assert_eq!(s.next, 1);
        // The broker's view of that batch: last sequence 0, next 1.
        let mut b = ferry_proto::batch::BatchBuilder::new(0).producer(stamp);
        for _ in 0..3 {
            b.push(0, None, Some(b"x"), &[]);
        }
        let bytes = b.finish();
        let header = ferry_proto::batch::BatchHeader::decode(&bytes).unwrap();
        assert_eq!(header.last_sequence(), 0);
        assert_eq!(advance(header.last_sequence(), 1), s.next);
    }

    #[test]
    fn a_bump_moves_to_the_next_epoch_at_sequence_zero() {
        let mut s = Sequencer::new(0);
        s.stamp(1, 40);
        s.bump().unwrap();
        assert_eq!(s, Sequencer { epoch: 1, next: 0 });
        let mut last = Sequencer {
            epoch: i16::MAX,
            next: 9,
        };
        let err = last.bump().unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidProducerEpoch);
        assert_eq!(last.next, 9, "a refused bump changes nothing");
    }

    #[test]
    fn renumbering_restamps_batches_in_order_and_they_stay_valid() {
        let mut s = Sequencer::new(0);
        let batches: Vec<_> = [2u32, 1, 3]
            .iter()
            .map(|&n| {
                let mut b = ferry_proto::batch::BatchBuilder::new(0).producer(s.stamp(4, n));
                for _ in 0..n {
                    b.push(0, None, Some(b"v"), &[]);
                }
                b.finish()
            })
            .collect();
        s.bump().unwrap();
        let renumbered: Vec<_> = batches
            .iter()
            .map(|b| {
                let h = ferry_proto::batch::BatchHeader::decode(b).unwrap();
                ferry_proto::batch::restamp(b, s.stamp(4, h.record_count))
            })
            .collect();
        let firsts: Vec<_> = renumbered
            .iter()
            .map(|b| {
                let v = ferry_proto::batch::ValidBatch::exact(b).unwrap();
                (v.header().producer_epoch, v.header().base_sequence)
            })
            .collect();
        assert_eq!(firsts, vec![(1, 0), (1, 2), (1, 3)]);
        assert_eq!(s.next, 6);
    }

    #[test]
    fn every_error_code_has_a_decision_matching_the_table() {
        use Action::*;
        for code in ErrorCode::ALL.into_iter().skip(1) {
            for earlier in [false, true] {
                let plain = decide(code, ProducerMode::Plain, earlier);
                let idem = decide(code, ProducerMode::Idempotent, earlier);
                let txn = decide(code, ProducerMode::Transactional, earlier);
                if code.is_retriable() {
                    assert_eq!((plain, idem, txn), (Retry, Retry, Retry), "{code}");
                    continue;
                }
                assert_eq!(plain, Fail, "{code}: without idempotence, fail the batch");
                let expected = match (code, earlier) {
                    (ErrorCode::OutOfOrderSequence | ErrorCode::UnknownProducerId, true) => {
                        AwaitPredecessor
                    }
                    (ErrorCode::UnknownProducerId, false) => Renumber,
                    (ErrorCode::OutOfOrderSequence, false)
                    | (ErrorCode::InvalidProducerEpoch | ErrorCode::ProducerFenced, _) => {
                        FailPartition
                    }
                    (c, false) if c.is_definite() => FailAndRenumber,
                    _ => FailPartition,
                };
                assert_eq!(idem, expected, "{code}, earlier unacked: {earlier}");
                let in_txn = match expected {
                    Renumber | FailAndRenumber => FailPartition,
                    other => other,
                };
                assert_eq!(txn, in_txn, "{code} in a transaction, earlier: {earlier}");
            }
        }
    }

    #[test]
    fn the_sequence_errors_are_retried_only_behind_an_unresolved_batch() {
        assert_eq!(
            decide(
                ErrorCode::OutOfOrderSequence,
                ProducerMode::Idempotent,
                true
            ),
            Action::AwaitPredecessor
        );
        assert_eq!(
            decide(
                ErrorCode::OutOfOrderSequence,
                ProducerMode::Idempotent,
                false
            ),
            Action::FailPartition
        );
        assert_eq!(
            decide(
                ErrorCode::UnknownProducerId,
                ProducerMode::Idempotent,
                false
            ),
            Action::Renumber
        );
        assert_eq!(
            decide(ErrorCode::ProducerFenced, ProducerMode::Idempotent, false),
            Action::FailPartition
        );
        assert_eq!(
            decide(ErrorCode::MessageTooLarge, ProducerMode::Idempotent, false),
            Action::FailAndRenumber
        );
        assert_eq!(
            decide(ErrorCode::StorageError, ProducerMode::Idempotent, false),
            Action::FailPartition
        );
        assert_eq!(
            decide(ErrorCode::NetworkError, ProducerMode::Idempotent, false),
            Action::Retry
        );
    }

    #[test]
    fn inside_a_transaction_the_sender_never_moves_to_a_new_epoch_itself() {
        use ProducerMode::{Idempotent, Transactional};
        let within_transaction = |code, earlier| {
            (
                decide(code, Idempotent, earlier),
                decide(code, Transactional, earlier),
            )
        };
        assert_eq!(
            within_transaction(ErrorCode::UnknownProducerId, false),
            (Action::Renumber, Action::FailPartition)
        );
        assert_eq!(
            within_transaction(ErrorCode::MessageTooLarge, false),
            (Action::FailAndRenumber, Action::FailPartition)
        );
        for (code, earlier, kept) in [
            (ErrorCode::NetworkError, false, Action::Retry),
            (
                ErrorCode::OutOfOrderSequence,
                true,
                Action::AwaitPredecessor,
            ),
            (ErrorCode::UnknownProducerId, true, Action::AwaitPredecessor),
            (ErrorCode::ProducerFenced, false, Action::FailPartition),
            (ErrorCode::StorageError, false, Action::FailPartition),
        ] {
            assert_eq!(within_transaction(code, earlier), (kept, kept), "{code}");
        }
        assert_eq!(
            decide(ErrorCode::MessageTooLarge, ProducerMode::Plain, false),
            Action::Fail
        );
    }
}
