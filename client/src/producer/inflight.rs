//! In-flight tracking: each partition's queue of batches waiting to be
//! sent or answered, and the [`Tracker`] that completes batches and
//! answers flushes once everything sealed before them is resolved.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::accumulator::{SealedBatch, Shared};
use crate::error::ClientError;

#[derive(Default)]
pub(super) struct PartitionQueue {
    /// Sealed batches not yet sent, ordered by `seq`.
    pub(super) pending: VecDeque<SealedBatch>,
    /// Correlation ids of batches sent and not yet answered, in send order.
    pub(super) in_flight: VecDeque<u64>,
    /// No sends before this (backoff after a retriable error).
    pub(super) retry_at: Option<Instant>,
    /// Set when the partition's idempotent sequence is broken beyond
    /// repair: every later batch fails with this error.
    pub(super) fatal: Option<ClientError>,
}

impl PartitionQueue {
    /// Puts a batch back in `seq` order, so retries keep the original order.
    pub(super) fn requeue(&mut self, batch: SealedBatch) {
        let at = self.pending.partition_point(|b| b.seq < batch.seq);
        self.pending.insert(at, batch);
    }

    /// Whether a batch sealed before `seq` is still unresolved: waiting in
    /// the queue, or in flight.
    pub(super) fn has_unresolved_before(
        &self,
        seq: u64,
        in_flight: &HashMap<u64, SealedBatch>,
    ) -> bool {
        self.pending.front().is_some_and(|b| b.seq < seq)
            || self
                .in_flight
                .iter()
                .any(|c| in_flight.get(c).is_some_and(|b| b.seq < seq))
    }
}

/// Outstanding batches and the flushes waiting on them.
pub(super) struct Tracker {
    pub(super) shared: Arc<Shared>,
    pub(super) outstanding: BTreeSet<u64>,
    pub(super) flushes: Vec<(u64, oneshot::Sender<()>)>,
}

impl Tracker {
    pub(super) fn complete(
        &mut self,
        batch: SealedBatch,
        result: Result<Option<u64>, ClientError>,
    ) {
        self.outstanding.remove(&batch.seq);
        self.shared.release(batch.accounted);
        if let Err(e) = &result {
            self.shared.failed.lock().add(batch.records, e);
        }
        batch.completion.complete(result);
        if !self.flushes.is_empty() {
            let oldest = self.outstanding.first().copied();
            let mut i = 0;
            while i < self.flushes.len() {
                if oldest.is_none_or(|o| o > self.flushes[i].0) {
                    let (_, tx) = self.flushes.swap_remove(i);
                    let _ = tx.send(());
                } else {
                    i += 1;
                }
            }
        }
    }

    pub(super) fn add_flush(&mut self, tx: oneshot::Sender<()>) {
        match self.outstanding.last() {
            None => {
                let _ = tx.send(());
            }
            Some(&newest) => self.flushes.push((newest, tx)),
        }
    }
}

pub(super) type PartitionKey = (Arc<str>, u32);
