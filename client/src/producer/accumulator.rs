//! The accumulator: each partition's open batch, and sealing.
//!
//! [`Shared::append`] routes a record to a partition ([`TopicState::route`])
//! and copies it into that partition's open [`BatchBuilder`]. A batch is
//! sealed when the next record would push it past `batch_bytes`; sealing
//! stamps it (when idempotent), finishes its bytes and hands the
//! [`SealedBatch`] to the sender task as a [`Command`]. The keyless
//! "sticky" partition moves on whenever its batch seals.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use ferry_proto::ErrorCode;
use ferry_proto::batch::{BatchBuilder, ProducerStamp};
use ferry_proto::varint;
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::config::ProducerConfig;
use super::delivery::{BatchCompletion, Delivery};
use crate::error::ClientError;
use crate::idempotence::Sequencer;
use crate::partitioner::partition_for_key;
use crate::topic_table::{Named, TopicTable};

/// Most framing bytes a header-less record adds to its key and value:
/// length (5), attributes (1), timestamp delta (10), offset delta (5), key
/// and value lengths (5 + 5), header count (1).
const MAX_RECORD_OVERHEAD: usize = 32;
/// Most bytes one header's framing takes: two varint lengths.
const MAX_HEADER_OVERHEAD: usize = 2 * varint::MAX_VARINT_LEN_U64;
/// Smallest buffer a new batch reserves.
const MIN_BATCH_CAPACITY: usize = 1024;

/// A sealed batch on its way to the broker.
pub(super) struct SealedBatch {
    /// Producer-wide number, increasing in seal order; within a partition
    /// it orders the batches.
    pub(super) seq: u64,
    pub(super) topic: Arc<str>,
    pub(super) partition: u32,
    pub(super) bytes: Bytes,
    /// The producer stamp in `bytes`, or [`ProducerStamp::NONE`].
    pub(super) stamp: ProducerStamp,
    /// Records in the batch.
    pub(super) records: u32,
    /// Bytes this batch holds against `buffer_bytes`.
    pub(super) accounted: usize,
    pub(super) completion: Arc<BatchCompletion>,
    pub(super) sealed_at: Instant,
    pub(super) attempts: u32,
}

impl Drop for SealedBatch {
    fn drop(&mut self) {
        // Reached only if the sender task dies with the batch unresolved;
        // never leave a Delivery waiting forever.
        self.completion.complete(Err(ClientError::Closed));
    }
}

pub(super) enum Command {
    /// A batch was opened; seal it at `deadline` if it is still open.
    Opened {
        topic: Arc<str>,
        partition: u32,
        seq: u64,
        deadline: Instant,
    },
    Sealed(SealedBatch),
    /// Answer once every batch sealed before this command is resolved.
    Flush(oneshot::Sender<()>),
    /// Like `Flush`, then stop the task.
    Close(oneshot::Sender<()>),
    /// Transactional producers only: a new epoch starts and every
    /// partition is usable again (see [`Producer::restart_sequences`](super::Producer::restart_sequences)).
    Restart,
}

pub(super) struct OpenBatch {
    pub(super) seq: u64,
    pub(super) first_ts: i64,
    pub(super) builder: BatchBuilder,
    pub(super) completion: Arc<BatchCompletion>,
    pub(super) record_bytes: usize,
}

pub(super) struct Accumulator {
    pub(super) open: Option<OpenBatch>,
    /// Capacity to reserve for the next batch: the size of the last one,
    /// so steady traffic never regrows the buffer.
    pub(super) next_capacity: usize,
    /// The partition's epoch and next sequence; used only when idempotent.
    /// Batches take their stamp here when sealed, under the state lock, so
    /// stamps follow seal order.
    pub(super) seq: Sequencer,
}

impl Accumulator {
    pub(super) fn new(epoch: i16) -> Accumulator {
        Accumulator {
            open: None,
            next_capacity: MIN_BATCH_CAPACITY,
            seq: Sequencer::new(epoch),
        }
    }
}

pub(super) struct TopicState {
    pub(super) name: Arc<str>,
    pub(super) partitions: Vec<Accumulator>,
    /// Partition for records without a key; moves on when its batch seals.
    pub(super) sticky: u32,
}

impl Named for TopicState {
    fn name(&self) -> &str {
        &self.name
    }
}

impl TopicState {
    /// The partition a record goes to: `partition` if given (it must
    /// exist), else the key's hash ([`partition_for_key`]), else the
    /// sticky partition.
    pub(super) fn route(
        &self,
        partition: Option<u32>,
        key: Option<&[u8]>,
    ) -> Result<u32, ClientError> {
        let n = self.partitions.len() as u32;
        match (partition, key) {
            (Some(p), _) if p >= n => Err(ClientError::broker(
                ErrorCode::UnknownTopicOrPartition,
                format!("topic {} has no partition {p} (it has {n})", self.name),
            )),
            (Some(p), _) => Ok(p),
            (None, Some(k)) => Ok(partition_for_key(k, n)),
            (None, None) => Ok(self.sticky),
        }
    }
}

pub(super) struct State {
    pub(super) topics: TopicTable<TopicState>,
    pub(super) next_seq: u64,
    pub(super) closed: bool,
    /// Epoch of partitions first used from now on; changes only through
    /// [`Producer::restart_sequences`](super::Producer::restart_sequences).
    pub(super) epoch: i16,
}

/// One record to append, and where it was asked to go.
#[derive(Clone, Copy)]
pub(super) struct Record<'a> {
    /// An explicit partition, or `None` to route by key.
    pub(super) partition: Option<u32>,
    pub(super) key: Option<&'a [u8]>,
    pub(super) value: Option<&'a [u8]>,
    pub(super) headers: &'a [(&'a [u8], Option<&'a [u8]>)],
    /// The record's timestamp, or `None` for the time it is batched.
    pub(super) timestamp: Option<i64>,
}

impl Record<'_> {
    /// Key, value and header bytes.
    pub(super) fn payload(&self) -> usize {
        self.key.map_or(0, <[u8]>::len)
            + self.value.map_or(0, <[u8]>::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len))
                .sum::<usize>()
    }

    /// An upper bound on the encoded size beyond [`payload`](Self::payload).
    pub(super) fn overhead(&self) -> usize {
        MAX_RECORD_OVERHEAD + self.headers.len() * MAX_HEADER_OVERHEAD
    }
}

/// State shared by the producer handles and the sender task.
pub(super) struct Shared {
    pub(super) config: ProducerConfig,
    /// Producer id and initial epoch from `InitProducerId`; `None` when not
    /// idempotent.
    pub(super) producer: Option<(i64, i16)>,
    /// Batches carry the transactional bit (a transactional producer).
    pub(super) transactional: bool,
    pub(super) state: Mutex<State>,
    pub(super) unacked_bytes: AtomicUsize,
    pub(super) space: Notify,
    /// Records that failed since the last flush, for its report.
    pub(super) failed: Mutex<FailedRecords>,
}

/// Records whose batch failed, counted until a flush reports them.
#[derive(Default)]
pub(super) struct FailedRecords {
    pub(super) count: u64,
    pub(super) first: Option<ClientError>,
}

impl FailedRecords {
    /// Adds `records` failed with `error`.
    pub(super) fn add(&mut self, records: u32, error: &ClientError) {
        self.count += u64::from(records);
        self.first.get_or_insert_with(|| error.clone());
    }

    /// The report of a flush: an error naming the failures, if any; then
    /// the count starts again.
    pub(super) fn take_report(&mut self) -> Result<(), ClientError> {
        let taken = std::mem::take(self);
        match taken.first {
            None => Ok(()),
            Some(first) => Err(ClientError::RecordsFailed {
                failed: taken.count,
                first_error: Box::new(first),
            }),
        }
    }
}

impl Shared {
    pub(super) fn release(&self, bytes: usize) {
        self.unacked_bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.space.notify_waiters();
    }

    /// Seals the open batch of `topic`/`partition`, if any, handing it to
    /// `sink`.
    pub(super) fn seal(
        &self,
        topic: &mut TopicState,
        partition: u32,
        sink: &mut impl FnMut(Command),
    ) {
        let n = topic.partitions.len() as u32;
        let acc = &mut topic.partitions[partition as usize];
        let Some(open) = acc.open.take() else {
            return;
        };
        let records = open.builder.len();
        let size = open.builder.size();
        let stamp = match self.producer {
            Some((producer_id, _)) => acc.seq.stamp(producer_id, records),
            None => ProducerStamp::NONE,
        };
        let bytes = open
            .builder
            .producer(stamp)
            .transactional(self.transactional)
            .finish_compressed(self.config.compression);
        acc.next_capacity = size.clamp(
            MIN_BATCH_CAPACITY.min(self.config.batch_bytes),
            self.config.batch_bytes,
        );
        if topic.sticky == partition {
            topic.sticky = (partition + 1) % n;
        }
        sink(Command::Sealed(SealedBatch {
            seq: open.seq,
            topic: topic.name.clone(),
            partition,
            bytes,
            stamp,
            records,
            accounted: open.record_bytes,
            completion: open.completion,
            sealed_at: Instant::now(),
            attempts: 0,
        }));
    }

    /// Copies one record into the open batch of the partition it routes
    /// to, opening one if needed, and hands sealed batches to `sink`.
    /// Returns the delivery and whether a batch was sealed.
    pub(super) fn append(
        &self,
        ts: &mut TopicState,
        next_seq: &mut u64,
        record: Record<'_>,
        sink: &mut impl FnMut(Command),
    ) -> Result<(Delivery, bool), ClientError> {
        let mut p = ts.route(record.partition, record.key)?;
        let now_ms = ferry_proto::now_ms();
        let mut sealed = false;
        // Seal first if the record does not fit; a keyless record then
        // follows the sticky partition to its new place. Every round seals
        // one open batch, so this ends.
        while !self.fits(&ts.partitions[p as usize], now_ms, &record) {
            self.seal(ts, p, sink);
            sealed = true;
            p = ts.route(record.partition, record.key)?;
        }
        let name = ts.name.clone();
        let open = self.open_batch(
            &name,
            &mut ts.partitions[p as usize],
            p,
            next_seq,
            now_ms,
            sink,
        );
        let offset_delta = open.builder.len();
        let before = open.builder.size();
        let timestamp = record.timestamp.unwrap_or(now_ms);
        open.builder
            .push(timestamp, record.key, record.value, record.headers);
        let added = open.builder.size() - before;
        open.record_bytes += added;
        self.unacked_bytes.fetch_add(added, Ordering::AcqRel);
        let delivery = Delivery {
            completion: open.completion.clone(),
            topic: name,
            partition: p,
            offset_delta,
        };
        if open.builder.size() >= self.config.batch_bytes {
            self.seal(ts, p, sink);
            sealed = true;
        }
        Ok((delivery, sealed))
    }

    /// Whether `record` fits in the partition's open batch (true when none
    /// is open).
    fn fits(&self, acc: &Accumulator, now_ms: i64, record: &Record<'_>) -> bool {
        let Some(open) = &acc.open else {
            return true;
        };
        let batch_bytes = self.config.batch_bytes;
        // The exact size costs a second pass over the varints; the upper
        // bound settles nearly every record.
        open.builder.size() + record.payload() + record.overhead() <= batch_bytes
            || open.builder.size()
                + BatchBuilder::record_size(
                    open.builder.len(),
                    record
                        .timestamp
                        .unwrap_or(now_ms)
                        .wrapping_sub(open.first_ts),
                    record.key,
                    record.value,
                    record.headers,
                )
                <= batch_bytes
    }

    /// The partition's open batch, opened now (and announced to the sender
    /// task, which seals it when `linger` runs out) if there is none.
    fn open_batch<'a>(
        &self,
        topic: &Arc<str>,
        acc: &'a mut Accumulator,
        partition: u32,
        next_seq: &mut u64,
        now_ms: i64,
        sink: &mut impl FnMut(Command),
    ) -> &'a mut OpenBatch {
        let capacity = acc.next_capacity;
        acc.open.get_or_insert_with(|| {
            let seq = *next_seq;
            *next_seq += 1;
            sink(Command::Opened {
                topic: topic.clone(),
                partition,
                seq,
                deadline: Instant::now() + self.config.linger,
            });
            OpenBatch {
                seq,
                first_ts: now_ms,
                builder: BatchBuilder::with_capacity(now_ms, capacity),
                completion: Arc::new(BatchCompletion::new()),
                record_bytes: 0,
            }
        })
    }

    pub(super) fn seal_all(&self, state: &mut State, sink: &mut impl FnMut(Command)) {
        for topic in state.topics.iter_mut() {
            for p in 0..topic.partitions.len() as u32 {
                self.seal(topic, p, sink);
            }
        }
    }
}

/// A starting sticky partition that differs between producers, so that
/// many short-lived producers do not all pile onto partition 0.
pub(super) fn start_partition(n: u32) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos % n
}

#[cfg(test)]
mod tests {

    use ferry_proto::ErrorCode;
    use ferry_proto::batch::HEADER_LEN;

    use super::super::Producer;
    use super::super::ProducerConfig;
    use super::super::tests::{offline, slow_linger};
    use super::*;

    /// Seals every open batch of topic `t` and returns them in seal order.
    fn seal_now(producer: &Producer) -> Vec<SealedBatch> {
        let shared = &producer.inner.shared;
        let mut state = shared.state.lock();
        let mut out = Vec::new();
        shared.seal_all(&mut state, &mut |c| {
            if let Command::Sealed(b) = c {
                out.push(b);
            }
        });
        out
    }

    #[tokio::test]
    async fn batches_are_stamped_at_seal_with_sequences_counting_records() {
        let producer = offline(slow_linger(), "t", 2).await;
        let mut stamps = Vec::new();
        for (p, n) in [(0u32, 3), (1, 2), (0, 1), (0, 4)] {
            for _ in 0..n {
                producer.send_to("t", p, None, Some(b"v")).await.unwrap();
            }
            for b in seal_now(&producer) {
                let h = ferry_proto::batch::ValidBatch::exact(&b.bytes)
                    .unwrap()
                    .header()
                    .to_owned();
                assert_eq!(
                    (h.producer_id, h.producer_epoch, h.base_sequence),
                    (
                        b.stamp.producer_id,
                        b.stamp.producer_epoch,
                        b.stamp.base_sequence
                    )
                );
                assert_eq!(h.record_count, b.records);
                stamps.push((b.partition, h.producer_id, h.base_sequence, b.records));
            }
        }
        assert_eq!(
            stamps,
            vec![(0, 77, 0, 3), (1, 77, 0, 2), (0, 77, 3, 1), (0, 77, 4, 4)],
            "each partition counts its own records from 0"
        );
    }

    #[tokio::test]
    async fn batches_of_a_plain_producer_carry_no_stamp() {
        let config = ProducerConfig {
            idempotent: false,
            ..slow_linger()
        };
        let producer = offline(config, "t", 1).await;
        producer.send("t", None, Some(b"v")).await.unwrap();
        let sealed = seal_now(&producer);
        let h = ferry_proto::batch::BatchHeader::decode(&sealed[0].bytes).unwrap();
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (-1, -1, -1)
        );
    }

    #[tokio::test]
    async fn a_batch_is_sealed_before_it_would_exceed_batch_bytes() {
        let config = ProducerConfig {
            batch_bytes: 1000,
            ..slow_linger()
        };
        let producer = offline(config, "t", 1).await;
        let value = [7u8; 100];
        let mut deliveries = Vec::new();
        for _ in 0..30 {
            deliveries.push(producer.send("t", None, Some(&value)).await.unwrap());
        }
        // Records of one batch share one completion.
        let mut batches: Vec<Vec<u32>> = Vec::new();
        for (i, d) in deliveries.iter().enumerate() {
            let same = i > 0 && Arc::ptr_eq(&d.completion, &deliveries[i - 1].completion);
            if same {
                batches.last_mut().unwrap().push(d.offset_delta);
            } else {
                batches.push(vec![d.offset_delta]);
            }
        }
        let per_batch =
            (1000 - HEADER_LEN) / BatchBuilder::record_size(0, 0, None, Some(&value), &[]);
        assert!(batches.len() >= 30 / per_batch);
        for b in &batches[..batches.len() - 1] {
            assert_eq!(b.len(), per_batch, "{batches:?}");
            assert_eq!(b, &(0..per_batch as u32).collect::<Vec<_>>());
        }
        assert_eq!(
            producer.unacked_bytes(),
            30 * BatchBuilder::record_size(0, 0, None, Some(&value), &[])
        );
    }

    #[tokio::test]
    async fn keyless_records_stick_to_a_partition_until_its_batch_seals() {
        let config = ProducerConfig {
            batch_bytes: 600,
            ..slow_linger()
        };
        let producer = offline(config, "t", 3).await;
        let mut partitions = Vec::new();
        for _ in 0..40 {
            let d = producer.send("t", None, Some(&[0u8; 100])).await.unwrap();
            partitions.push(d.partition());
        }
        let mut runs = partitions.clone();
        runs.dedup();
        assert!(runs.len() > 3, "the sticky partition moves: {partitions:?}");
        for pair in runs.windows(2) {
            assert_eq!(pair[1], (pair[0] + 1) % 3);
        }
    }

    #[tokio::test]
    async fn keyed_records_follow_the_partitioner() {
        let producer = offline(slow_linger(), "t", 5).await;
        for i in 0..50u32 {
            let key = i.to_be_bytes();
            let d = producer.send("t", Some(&key), None).await.unwrap();
            assert_eq!(d.partition(), partition_for_key(&key, 5));
        }
        let err = producer.send_to("t", 5, None, None).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnknownTopicOrPartition);
    }
}
