//! What a send hands back: the [`Delivery`] of one record, which resolves
//! to its [`RecordMetadata`] once the record's batch has an outcome.
//!
//! Every record of a batch shares one [`BatchCompletion`], so a delivery
//! is an `Arc` and an offset delta: the hot path allocates nothing per
//! record.

use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;

use crate::error::ClientError;

/// Where a record was stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: u32,
    /// The record's offset; `None` under [`Acks::None`], which gets no
    /// answer from the broker.
    pub offset: Option<u64>,
}

/// The shared outcome of every record in one batch: the base offset (or
/// `None` under `Acks::None`), or the error.
pub(crate) struct BatchCompletion {
    result: OnceLock<Result<Option<u64>, ClientError>>,
    notify: Notify,
}

impl BatchCompletion {
    pub(super) fn new() -> BatchCompletion {
        BatchCompletion {
            result: OnceLock::new(),
            notify: Notify::new(),
        }
    }

    /// Sets the outcome unless one is set already, and wakes the waiters.
    pub(super) fn complete(&self, result: Result<Option<u64>, ClientError>) {
        if self.result.set(result).is_ok() {
            self.notify.notify_waiters();
        }
    }

    async fn wait(&self) -> &Result<Option<u64>, ClientError> {
        // Fast path: every record of a batch waits on the same completion,
        // and all but the first usually find it done.
        if let Some(result) = self.result.get() {
            return result;
        }
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(result) = self.result.get() {
                return result;
            }
            notified.await;
        }
    }
}

/// The pending outcome of one [`Producer::send`].
///
/// Dropping it does not cancel the send.
pub struct Delivery {
    pub(super) completion: Arc<BatchCompletion>,
    pub(super) topic: Arc<str>,
    pub(super) partition: u32,
    pub(super) offset_delta: u32,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("offset_delta", &self.offset_delta)
            .finish()
    }
}

impl Delivery {
    /// The partition the record was assigned to.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Waits until the record's batch reaches a final outcome.
    pub async fn wait(self) -> Result<RecordMetadata, ClientError> {
        match self.completion.wait().await {
            Ok(base) => Ok(RecordMetadata {
                topic: self.topic,
                partition: self.partition,
                offset: base.map(|b| b + u64::from(self.offset_delta)),
            }),
            Err(e) => Err(e.clone()),
        }
    }
}

impl Delivery {
    /// Whether both records are in the same batch (share one outcome).
    pub(crate) fn same_batch(&self, other: &Delivery) -> bool {
        Arc::ptr_eq(&self.completion, &other.completion)
    }
}

impl Clone for Delivery {
    fn clone(&self) -> Delivery {
        Delivery {
            completion: self.completion.clone(),
            topic: self.topic.clone(),
            partition: self.partition,
            offset_delta: self.offset_delta,
        }
    }
}
