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
    /// The record's offset; `None` under [`Acks::None`](crate::Acks::None), which gets no
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

/// The pending outcome of one [`Producer::send`](crate::Producer::send).
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
        let Delivery {
            completion,
            topic,
            partition,
            offset_delta,
        } = self;
        let outcome = completion.wait().await;
        metadata(topic, partition, offset_delta, outcome)
    }

    /// The record's outcome if its batch has one already, without waiting:
    /// `None` while the record is still buffered or in flight. Lets an
    /// application keep a window of sends and look at each without
    /// consuming its handle.
    ///
    /// ```no_run
    /// # use std::collections::VecDeque;
    /// # use ferry_client::{Delivery, Producer};
    /// # async fn demo(producer: Producer) -> Result<(), ferry_client::ClientError> {
    /// // At most 10 000 records unacknowledged: retire the finished ones
    /// // from the front, and wait for the oldest only when the window is full.
    /// let mut window: VecDeque<Delivery> = VecDeque::new();
    /// for i in 0..100_000u32 {
    ///     while window.front().is_some_and(|d| d.try_result().is_some()) {
    ///         window.pop_front().unwrap().wait().await?;
    ///     }
    ///     if window.len() == 10_000 {
    ///         window.pop_front().unwrap().wait().await?;
    ///     }
    ///     window.push_back(producer.send("orders", None, Some(&i.to_be_bytes())).await?);
    /// }
    /// producer.flush().await?; // fails if any record since the last flush failed
    /// # Ok(())
    /// # }
    /// ```
    pub fn try_result(&self) -> Option<Result<RecordMetadata, ClientError>> {
        let outcome = self.completion.result.get()?;
        Some(metadata(
            self.topic.clone(),
            self.partition,
            self.offset_delta,
            outcome,
        ))
    }

    /// Whether the record's batch has a final outcome (see
    /// [`try_result`](Self::try_result)).
    pub fn is_done(&self) -> bool {
        self.completion.result.get().is_some()
    }
}

/// A record's outcome from its batch's.
fn metadata(
    topic: Arc<str>,
    partition: u32,
    offset_delta: u32,
    outcome: &Result<Option<u64>, ClientError>,
) -> Result<RecordMetadata, ClientError> {
    match outcome {
        Ok(base) => Ok(RecordMetadata {
            topic,
            partition,
            offset: base.map(|b| b + u64::from(offset_delta)),
        }),
        Err(e) => Err(e.clone()),
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
