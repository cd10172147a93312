//! Bounded internal logs: the state of `__offsets` and `__transactions`,
//! restated at the tail of its log so that the history before it can go.
//!
//! Both logs are "latest value per key" logs: a start replays them to
//! rebuild the committed offsets, the group records and the transaction
//! metadata. Without help they grow with every commit ever made, and so
//! does the replay. A **restatement** writes the whole replayed state again
//! at the log's tail, between two marker batches:
//!
//! ```text
//! BEGIN | the state, as the log's ordinary batches | END
//! ```
//!
//! Replay ([`Restater::replay`]) builds the state into a fresh copy from a
//! BEGIN on and swaps it in at the END, so everything before a complete
//! restatement no longer counts. BEGIN opens a segment of its own
//! ([`Log::roll`]), and once END is durable [`Log::delete_below`] deletes
//! every segment before it. A restatement cut short (a crash, a failed
//! append) has no END: its copy is thrown away, and an ABANDON marker is
//! written (at once, or at the next open) so that the batches after it go
//! to the live state again. A crash between END and the deletion leaves
//! old segments that the next restatement deletes; replaying them first
//! changes nothing, since the END replaces what they built.
//!
//! Writers hold the gate shared ([`Restater::append`]) from before their
//! append until the in-memory state reflects it; a restatement holds it
//! exclusively, so the state it writes is exactly what a replay of the log
//! up to BEGIN gives, and no other batch lands between BEGIN and END.
//!
//! A restatement is due once the bytes written since the last one reach
//! both [`RESTATE_AFTER_BYTES`] (or the segment size, if smaller) and twice
//! the last restatement's size. The log then holds the state plus at most
//! that much, a restart replays no more, and restating costs at most half
//! of what the writers wrote: restart time and disk use follow the live
//! state, not the number of commits ever made.
//!
//! A marker is a batch of one record whose key is [`MARKER_KEY`]: `0xFF`
//! starts no UTF-8 text (no transactional id) and no offsets record kind.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use ferry_proto::batch::{BatchBuilder, ProducerStamp, ValidBatch};
use ferry_storage::{AppendInfo, FlushPolicy, Log, LogConfig, StorageError};
use tokio::sync::RwLock;

use crate::error::BrokerError;

/// Largest segment of an internal log; a smaller configured segment size
/// (tests) is used as it is.
pub const INTERNAL_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Bytes written since the last restatement that make the next one due
/// (or the segment size, if smaller), unless twice the last restatement is
/// more. Small, so that a restart replays little beyond the state.
pub const RESTATE_AFTER_BYTES: u64 = 1024 * 1024;
/// Largest batch of restated records (a single larger record, which fit the
/// log when it was first written, goes in a batch of its own).
pub const MAX_RESTATE_BATCH_BYTES: usize = 1024 * 1024;
/// Key of a restatement marker record.
pub const MARKER_KEY: &[u8] = &[0xFF, b'R'];

/// Largest encoded marker batch (header and one short record).
const MAX_MARKER_BATCH_BYTES: usize = 96;

/// The configuration of an internal log: the partitions' flush policy,
/// segments of at most [`INTERNAL_SEGMENT_BYTES`], and no retention
/// (restatement bounds it instead).
pub(crate) fn internal_log_config(partitions: &LogConfig) -> LogConfig {
    LogConfig {
        segment_bytes: partitions.segment_bytes.min(INTERNAL_SEGMENT_BYTES),
        retention_bytes: None,
        retention_ms: None,
        ..partitions.clone()
    }
}

/// Which marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Begin = 0,
    End = 1,
    Abandon = 2,
}

fn marker_batch(marker: Marker) -> Bytes {
    let now = ferry_proto::now_ms();
    let mut b = BatchBuilder::new(now);
    b.push(now, Some(MARKER_KEY), Some(&[marker as u8]), &[]);
    b.finish()
}

/// A BEGIN marker, for tests that stage a restatement a crash cut short.
#[cfg(test)]
pub(crate) fn begin_batch() -> Bytes {
    marker_batch(Marker::Begin)
}

/// The marker `batch` is, if it is one.
fn marker_of(batch: &ValidBatch<'_>) -> Result<Option<Marker>, BrokerError> {
    let h = batch.header();
    if h.record_count != 1 || h.is_transactional() || batch.bytes().len() > MAX_MARKER_BATCH_BYTES {
        return Ok(None);
    }
    let records = batch.records()?;
    let Some(record) = records.iter().next().transpose()? else {
        return Ok(None);
    };
    if record.key != Some(MARKER_KEY) {
        return Ok(None);
    }
    Ok(match record.value {
        Some([0]) => Some(Marker::Begin),
        Some([1]) => Some(Marker::End),
        Some([2]) => Some(Marker::Abandon),
        _ => {
            tracing::warn!(
                offset = h.base_offset,
                "skipping a restatement marker of an unknown kind"
            );
            None
        }
    })
}

/// What a restatement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restatement {
    /// Batches of state written between the markers.
    pub batches: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Segments deleted afterwards.
    pub segments_deleted: usize,
    /// First offset of the log afterwards.
    pub log_start_offset: u64,
}

/// How large an internal log is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalLogSize {
    /// `__offsets` or `__transactions`.
    pub name: &'static str,
    /// Data bytes in its segments.
    pub bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// First offset still in the log.
    pub log_start_offset: u64,
    /// Offset the next record gets.
    pub next_offset: u64,
}

impl InternalLogSize {
    pub(crate) fn of(name: &'static str, log: &Log) -> InternalLogSize {
        InternalLogSize {
            name,
            bytes: log.size_bytes(),
            segments: log.segments().len(),
            log_start_offset: log.log_start_offset(),
            next_offset: log.next_offset(),
        }
    }
}

/// Keeps one internal log bounded by restating its state.
#[derive(Debug)]
pub(crate) struct Restater {
    /// `__offsets` or `__transactions`, for logs and metrics.
    name: &'static str,
    gate: RwLock<()>,
    /// Bytes appended since the last restatement began.
    since: AtomicU64,
    /// Bytes of the last restatement's state.
    last_bytes: AtomicU64,
    /// A restatement failed and its ABANDON could not be written either:
    /// later batches would replay into a copy that never ends, so nothing
    /// more is written.
    poisoned: AtomicBool,
    min_bytes: u64,
    batch_budget: usize,
}

impl Restater {
    /// Replays `log`: `apply` folds each batch into a state, which a
    /// complete restatement replaces whole. Writes the ABANDON marker an
    /// unfinished restatement needs before anything else is appended.
    pub(crate) fn replay<S: Default>(
        name: &'static str,
        log: &Log,
        mut apply: impl FnMut(&mut S, &ValidBatch<'_>) -> Result<(), BrokerError>,
    ) -> Result<(Restater, S), BrokerError> {
        let mut live = S::default();
        let mut copy: Option<S> = None;
        let mut since = 0u64;
        let mut last_bytes = 0u64;
        let mut copy_bytes = 0u64;
        crate::replay::replay(log, 0, |batch| {
            let len = batch.bytes().len() as u64;
            since += len;
            match marker_of(batch)? {
                Some(Marker::Begin) => {
                    copy = Some(S::default());
                    copy_bytes = 0;
                    since = len;
                }
                Some(Marker::End) => {
                    if let Some(state) = copy.take() {
                        live = state;
                        last_bytes = copy_bytes;
                    }
                }
                Some(Marker::Abandon) => copy = None,
                None => match copy.as_mut() {
                    Some(state) => {
                        copy_bytes += len;
                        apply(state, batch)?;
                    }
                    None => apply(&mut live, batch)?,
                },
            }
            Ok(())
        })?;
        let restater = Restater::new(name, log, since, last_bytes);
        if copy.is_some() {
            tracing::warn!(log = name, "abandoning a restatement a crash cut short");
            restater.abandon(log)?;
        }
        Ok((restater, live))
    }

    fn new(name: &'static str, log: &Log, since: u64, last_bytes: u64) -> Restater {
        let segment = log.segment_bytes();
        Restater {
            name,
            gate: RwLock::new(()),
            since: AtomicU64::new(since),
            last_bytes: AtomicU64::new(last_bytes),
            poisoned: AtomicBool::new(false),
            min_bytes: segment.min(RESTATE_AFTER_BYTES),
            batch_budget: MAX_RESTATE_BATCH_BYTES.min(segment as usize / 2),
        }
    }

    /// Appends ABANDON and flushes it: rare (open after a crash, or a
    /// failed restatement), so a blocking flush is fine.
    fn abandon(&self, log: &Log) -> Result<(), BrokerError> {
        let bytes = marker_batch(Marker::Abandon);
        log.append(ValidBatch::exact(&bytes)?)?;
        log.flush()?;
        Ok(())
    }

    /// A writer's append: durably appends `bytes` to `log` and applies
    /// them to the in-memory state (`update`) with the gate held shared, so
    /// no restatement starts in between; refused once a failed
    /// restatement could not be abandoned. Returns whether a restatement
    /// is now due, which the caller then runs with its state.
    pub(crate) async fn append(
        &self,
        log: &Log,
        bytes: &[u8],
        update: impl FnOnce(&AppendInfo),
    ) -> Result<(AppendInfo, bool), BrokerError> {
        let info = {
            let _gate = self.gate.read().await;
            self.check_poisoned()?;
            let info = log.append_durable(ValidBatch::exact(bytes)?).await?;
            update(&info);
            info
        };
        Ok((info, self.appended(bytes.len() as u64)))
    }

    fn check_poisoned(&self) -> Result<(), BrokerError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StorageError::LogFailed {
                reason: format!(
                    "{}: a restatement failed part-way and could not be abandoned; restart the broker",
                    self.name
                ),
            }
            .into());
        }
        Ok(())
    }

    /// Counts `bytes` a writer appended; whether a restatement is due.
    fn appended(&self, bytes: u64) -> bool {
        let since = self.since.fetch_add(bytes, Ordering::AcqRel) + bytes;
        self.due(since)
    }

    fn due(&self, since: u64) -> bool {
        since
            >= self
                .min_bytes
                .max(2 * self.last_bytes.load(Ordering::Acquire))
    }

    /// Restates the state `state` describes, unless another restatement got
    /// there first. `state` runs with the gate held exclusively, and
    /// returns the state as batches in the order a replay must see them.
    pub(crate) async fn restate(
        &self,
        log: &Log,
        state: impl FnOnce(&mut StateBatches),
    ) -> Result<Option<Restatement>, BrokerError> {
        let _exclusive = self.gate.write().await;
        self.check_poisoned()?;
        if !self.due(self.since.load(Ordering::Acquire)) {
            return Ok(None);
        }
        let mut batches = StateBatches::new(self.batch_budget);
        state(&mut batches);
        let batches = batches.finish();
        // BEGIN opens a segment, so that every segment before it can go.
        log.roll()?;
        let begin = marker_batch(Marker::Begin);
        let begin = log.append(ValidBatch::exact(&begin)?)?;
        match self.write_state(log, &batches).await {
            Ok(bytes) => {
                let out = log.delete_below(begin.base_offset)?;
                self.since.store(bytes, Ordering::Release);
                self.last_bytes.store(bytes, Ordering::Release);
                metrics::counter!("ferry_internal_log_restatements_total", "log" => self.name)
                    .increment(1);
                tracing::debug!(
                    log = self.name,
                    batches = batches.len(),
                    bytes,
                    segments_deleted = out.segments_deleted,
                    "restated"
                );
                Ok(Some(Restatement {
                    batches: batches.len(),
                    bytes,
                    segments_deleted: out.segments_deleted,
                    log_start_offset: out.log_start_offset,
                }))
            }
            Err(e) => {
                tracing::error!(log = self.name, error = %e, "restatement failed; abandoning it");
                if let Err(e2) = self.abandon(log) {
                    tracing::error!(log = self.name, error = %e2, "could not abandon the restatement");
                    self.poisoned.store(true, Ordering::Release);
                }
                Err(e)
            }
        }
    }

    /// Appends the state and the END marker, and waits until they are
    /// durable (under the `never` policy too: the segments before BEGIN are
    /// deleted next).
    async fn write_state(&self, log: &Log, batches: &[Bytes]) -> Result<u64, BrokerError> {
        let mut bytes = 0;
        for b in batches {
            log.append(ValidBatch::exact(b)?)?;
            bytes += b.len() as u64;
        }
        let end = marker_batch(Marker::End);
        let end = log.append(ValidBatch::exact(&end)?)?;
        durable(log, end.last_offset).await?;
        Ok(bytes)
    }
}

/// Waits until `offset` is durable, flushing by hand under `never`.
async fn durable(log: &Log, offset: u64) -> Result<(), BrokerError> {
    if log.flush_policy() == FlushPolicy::Never {
        log.flush()?;
    } else {
        log.wait_durable(offset).await?;
    }
    Ok(())
}

/// Builds the batches of a restatement: records in order, a new batch
/// whenever the producer stamp changes or the budget is reached.
#[derive(Debug)]
pub(crate) struct StateBatches {
    budget: usize,
    now: i64,
    open: Option<(Option<ProducerStamp>, BatchBuilder)>,
    done: Vec<Bytes>,
}

impl StateBatches {
    fn new(budget: usize) -> StateBatches {
        StateBatches {
            budget,
            now: ferry_proto::now_ms(),
            open: None,
            done: Vec::new(),
        }
    }

    /// Adds one record; `stamp` makes it part of a transactional batch of
    /// that producer, as the record it restates was.
    pub(crate) fn push(&mut self, stamp: Option<ProducerStamp>, key: &[u8], value: Option<&[u8]>) {
        let size = BatchBuilder::record_size(0, 0, Some(key), value, &[]);
        let fits = self.open.as_ref().is_some_and(|(s, b)| {
            *s == stamp
                && b.size() + size <= self.budget
                && b.len() < crate::offsets::MAX_OFFSETS_PER_COMMIT as u32
        });
        if !fits {
            self.seal();
            let mut builder = BatchBuilder::new(self.now);
            if let Some(stamp) = stamp {
                builder = builder.producer(stamp).transactional(true);
            }
            self.open = Some((stamp, builder));
        }
        if let Some((_, b)) = self.open.as_mut() {
            b.push(self.now, Some(key), value, &[]);
        }
    }

    fn seal(&mut self) {
        if let Some((_, b)) = self.open.take() {
            self.done.push(b.finish());
        }
    }

    fn finish(mut self) -> Vec<Bytes> {
        self.seal();
        self.done
    }
}
