//! The log cleaner: compaction of topics with `cleanup.policy=compact`.
//!
//! What a cleaning keeps is decided here, once; how a rewritten segment
//! replaces the old ones without a crash ever losing both is the storage
//! engine's (`ferry_storage::Log::replace_segments`).
//!
//! # What is cleaned
//!
//! The cleanable range of a partition is its sealed segments from the log
//! start up to the first that reaches past the last stable offset: the
//! active segment is never cleaned, and every transaction with a record in
//! the range has ended, so whether it committed or aborted is known. The
//! range is cleaned when its dirty part (the segments written since the
//! last cleaning) is at least `min.cleanable.dirty.ratio` of it.
//!
//! # What is kept
//!
//! One pass reads the range and maps each key to the offset of its latest
//! record, leaving out aborted transactions. A second pass rewrites each
//! batch with only:
//!
//! - the records that are their key's latest, except a latest record with
//!   a null value (a tombstone) whose timestamp is more than
//!   `delete.retention.ms` old: consumers that are behind have had that
//!   long to see the delete;
//! - records without a key, which no later record replaces;
//! - no record of an aborted transaction;
//! - each transaction marker, until no record of its transaction is left
//!   and the marker is more than `delete.retention.ms` old. An abort
//!   marker goes one cleaning after its transaction's records, and its
//!   entry in the aborted-transaction index goes first: a consumer told of
//!   an abort whose marker is gone would skip the producer's later
//!   transactions, and one that sees a marker it was not told of ignores
//!   it.
//!
//! A rewritten batch keeps its base offset, offset span (last offset
//! delta), producer id, epoch and base sequence; its records keep their
//! offsets and timestamps, and it is compressed as it was. A batch left
//! with no record is dropped, and its offsets become a gap.
//!
//! # Producer state
//!
//! Dropping a producer's batches must not shorten its idempotence window.
//! Before swapping anything, a cleaning writes the producer state as of
//! the range's end (`N.producers-cleaned`, synced): the state of the last
//! cleaning, replayed over the batches written since, which no cleaning
//! has touched yet. A start that cannot use the latest snapshot replays
//! from there instead of over the cleaned batches.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ferry_proto::batch::{
    BatchBuilder, BatchHeader, Record, RecordIter, ValidBatch, check_framing,
};
use ferry_proto::control::{ControlType, marker_type};
use ferry_storage::SealedSegment;

use crate::error::BrokerError;
use crate::producer_state::{AbortedTxn, ProducerTable};
use crate::topic_config::TopicConfig;
use crate::topics::Partition;

/// Default bytes of keys the cleaner maps in one cleaning; a range with
/// more is cleaned in parts, oldest first.
pub const DEFAULT_CLEANER_MAX_MAP_BYTES: usize = 128 << 20;
/// Largest `cleaner_max_map_bytes`.
pub const MAX_CLEANER_MAP_BYTES: usize = 4 << 30;
/// Map bytes counted per key beyond the key itself (the offset, the hash
/// table's slot and the allocation).
const MAP_ENTRY_OVERHEAD: usize = 48;

/// How the cleaner runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CleanerSettings {
    /// How often the cleaner looks for a partition to clean.
    pub interval: Duration,
    /// Most bytes per second it reads, or no limit.
    pub max_bytes_per_sec: Option<u64>,
    /// Most bytes of keys mapped in one cleaning.
    pub max_map_bytes: usize,
}

impl Default for CleanerSettings {
    fn default() -> CleanerSettings {
        CleanerSettings {
            interval: Duration::from_secs(15),
            max_bytes_per_sec: None,
            max_map_bytes: DEFAULT_CLEANER_MAX_MAP_BYTES,
        }
    }
}

/// What one cleaning of one partition did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CleanOutcome {
    /// The cleaned range `[start, end)`.
    pub start: u64,
    /// End of the cleaned range.
    pub end: u64,
    /// Bytes of the range read.
    pub bytes_read: u64,
    /// Bytes of the segments swapped in.
    pub bytes_written: u64,
    /// Segments replaced.
    pub segments_replaced: usize,
    /// Records dropped.
    pub records_removed: u64,
}

/// Paces reading to a byte rate.
struct Throttle {
    rate: Option<u64>,
    started: Instant,
    bytes: u64,
}

impl Throttle {
    fn new(rate: Option<u64>) -> Throttle {
        Throttle {
            rate,
            started: Instant::now(),
            bytes: 0,
        }
    }

    /// Counts `bytes` read, sleeping while ahead of the rate.
    fn read(&mut self, bytes: u64) {
        self.bytes += bytes;
        if let Some(rate) = self.rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
}

/// The dirty ratio of a partition's cleanable range, for the gauge and
/// the trigger: the share of its bytes written since the last cleaning.
pub fn dirty_ratio(p: &Partition) -> Result<f64, BrokerError> {
    let range = cleanable(p)?;
    let (_, cleaned_to) = cleaned_state(p, &range);
    Ok(ratio(&range, cleaned_to))
}

/// The sealed segments below the last stable offset, oldest first.
fn cleanable(p: &Partition) -> Result<Vec<SealedSegment>, BrokerError> {
    let lso = p.last_stable_offset();
    let mut sealed = p.log.sealed_segments()?;
    let keep = sealed.iter().take_while(|s| s.next_offset <= lso).count();
    sealed.truncate(keep);
    Ok(sealed)
}

/// The producer table of the last cleaning and the offset it reached, or
/// an empty table from the range's start.
fn cleaned_state(p: &Partition, range: &[SealedSegment]) -> (ProducerTable, u64) {
    let start = range.first().map_or(0, |s| s.base_offset);
    std::fs::read(p.cleaned_snapshot_path())
        .ok()
        .and_then(|buf| ProducerTable::decode_snapshot(&buf))
        .map(|(offset, table)| (table, offset))
        .unwrap_or((ProducerTable::default(), start))
}

fn ratio(range: &[SealedSegment], cleaned_to: u64) -> f64 {
    let total: u64 = range.iter().map(|s| s.bytes.len() as u64).sum();
    let dirty: u64 = range
        .iter()
        .filter(|s| s.base_offset >= cleaned_to)
        .map(|s| s.bytes.len() as u64)
        .sum();
    if total == 0 {
        0.0
    } else {
        dirty as f64 / total as f64
    }
}

/// Whether the transactional batch with `header` belongs to an aborted
/// transaction.
fn aborted(header: &BatchHeader, index: &HashMap<i64, Vec<AbortedTxn>>) -> bool {
    header.is_transactional()
        && index.get(&header.producer_id).is_some_and(|txns| {
            txns.iter()
                .any(|t| t.first_offset <= header.base_offset && header.base_offset < t.last_offset)
        })
}

/// Every batch of `seg`, its header and bytes, with framing and CRC
/// checked. The log validated every record as it wrote or recovered them;
/// the record iterators check each length again as they read. A batch
/// that fails stops the cleaning, changing nothing.
fn batches(seg: &SealedSegment) -> impl Iterator<Item = Result<(BatchHeader, &[u8]), BrokerError>> {
    let mut pos = 0;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || pos >= seg.bytes.len() {
            return None;
        }
        match check_framing(&seg.bytes[pos..]) {
            Ok(h) => {
                let at = pos;
                pos += h.batch_len as usize;
                Some(Ok((h, &seg.bytes[at..pos])))
            }
            Err(e) => {
                failed = true;
                Some(Err(e.into()))
            }
        }
    })
}

/// The marker type of a control batch.
fn marker(bytes: &[u8]) -> Result<Option<ControlType>, BrokerError> {
    Ok(marker_type(&ValidBatch::new(bytes)?))
}

/// Calls `f` with every record of the batch with header `h`: read in place
/// when uncompressed, else decompressed once.
fn for_each_record(
    h: &BatchHeader,
    bytes: &[u8],
    mut f: impl FnMut(&Record<'_>),
) -> Result<(), BrokerError> {
    if !h.is_compressed() {
        for r in RecordIter::new(h, bytes) {
            f(&r?);
        }
    } else {
        let batch = ValidBatch::new(bytes)?;
        for r in batch.records()?.iter() {
            f(&r?);
        }
    }
    Ok(())
}

/// Cleans `p` if its dirty ratio has reached `config`'s, or whatever its
/// ratio with `force`. `now_ms` is the clock tombstone and marker
/// retention is measured against. Returns `None` when there was nothing
/// to clean. `stop` is asked before each segment; once it says so the
/// cleaning ends with `ShuttingDown`, leaving the groups swapped in so far
/// (each swap is whole) and the rest as they were.
pub fn clean_partition(
    p: &Partition,
    config: &TopicConfig,
    settings: &CleanerSettings,
    now_ms: i64,
    force: bool,
    stop: &dyn Fn() -> bool,
) -> Result<Option<CleanOutcome>, BrokerError> {
    let check = || {
        if stop() {
            Err(BrokerError::ShuttingDown)
        } else {
            Ok(())
        }
    };
    let mut range = cleanable(p)?;
    let (mut table, cleaned_to) = cleaned_state(p, &range);
    let dirty = ratio(&range, cleaned_to);
    if range.is_empty() || dirty == 0.0 || (!force && dirty < config.min_cleanable_dirty_ratio) {
        return Ok(None);
    }
    let start = range[0].base_offset;
    let end_all = range.last().map_or(start, |s| s.next_offset);
    let mut index: HashMap<i64, Vec<AbortedTxn>> = HashMap::new();
    for t in p.aborted_between(start, end_all) {
        index.entry(t.producer_id).or_default().push(t);
    }
    let mut throttle = Throttle::new(settings.max_bytes_per_sec);

    // Pass 1: the latest offset of every key, segment by segment, until
    // the map is full; the range ends with the last segment mapped.
    // Abort markers whose transactions have no record left go too.
    let horizon =
        now_ms.saturating_sub(i64::try_from(config.delete_retention_ms).unwrap_or(i64::MAX));
    // Per key: its latest offset, and whether that record is a tombstone
    // past its retention.
    let mut latest: HashMap<Box<[u8]>, (u64, bool)> = HashMap::new();
    let mut keyless: HashSet<u64> = HashSet::new();
    let mut map_bytes = 0usize;
    let mut mapped = 0;
    let mut in_txn: HashMap<i64, u64> = HashMap::new();
    let mut empty_aborts: HashSet<(i64, u64)> = HashSet::new();
    for seg in &range {
        check()?;
        for batch in batches(seg) {
            let (h, bytes) = batch?;
            let h = &h;
            if h.is_control() {
                let records = in_txn.remove(&h.producer_id).unwrap_or(0);
                if records == 0
                    && h.max_timestamp < horizon
                    && marker(bytes)? == Some(ControlType::Abort)
                {
                    empty_aborts.insert((h.producer_id, h.base_offset));
                }
                continue;
            }
            if h.is_transactional() {
                *in_txn.entry(h.producer_id).or_default() += 1;
            }
            if aborted(h, &index) {
                continue;
            }
            for_each_record(h, bytes, |r| {
                let Some(key) = r.key else {
                    keyless.insert(h.base_offset);
                    return;
                };
                let offset = h.base_offset + u64::from(r.offset_delta);
                let expired = r.value.is_none() && h.record_timestamp(r.timestamp_delta) < horizon;
                match latest.get_mut(key) {
                    Some(o) => *o = (offset, expired),
                    None => {
                        map_bytes += key.len() + MAP_ENTRY_OVERHEAD;
                        latest.insert(key.into(), (offset, expired));
                    }
                }
            })?;
        }
        throttle.read(seg.bytes.len() as u64);
        mapped += 1;
        if map_bytes >= settings.max_map_bytes {
            break;
        }
    }
    range.truncate(mapped);
    let end = range.last().map_or(start, |s| s.next_offset);
    if cleaned_to > end {
        // An earlier cleaning reached further; it will again.
        return Ok(None);
    }

    // The producer state at `end` is durable before any batch is dropped.
    for seg in range.iter().filter(|s| s.next_offset > cleaned_to) {
        for batch in batches(seg) {
            let (h, bytes) = batch?;
            if h.base_offset >= cleaned_to {
                let commit = if h.is_control() {
                    marker(bytes)?.map(|k| k == ControlType::Commit)
                } else {
                    None
                };
                table.replay(&h, commit);
            }
        }
    }
    let producers = p.producer_settings();
    table.expire(now_ms, producers.expiry_ms);
    table.forget_aborted(&empty_aborts);
    table
        .write_snapshot(p.cleaned_snapshot_path(), end)
        .map_err(|source| BrokerError::Io {
            op: "write cleaned producer snapshot",
            path: p.cleaned_snapshot_path().display().to_string(),
            source,
        })?;

    if !empty_aborts.is_empty() {
        p.forget_aborted(&empty_aborts)?;
    }

    // Pass 2: rewrite, packing consecutive segments into cleaned ones of
    // at most a segment's size, and swap each group in.
    let mut kept: Vec<u64> = latest
        .into_values()
        .filter(|(_, expired)| !expired)
        .map(|(offset, _)| offset)
        .collect();
    kept.sort_unstable();
    let mut rewrite = Rewrite {
        kept: &kept,
        keyless: &keyless,
        index: &index,
        empty_aborts: &empty_aborts,
        horizon,
        kept_in_txn: HashMap::new(),
        removed: 0,
    };
    let target = p.log.segment_bytes() as usize;
    let mut outcome = CleanOutcome {
        start,
        end,
        ..CleanOutcome::default()
    };
    let mut group: Vec<SealedSegment> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    let mut group_removed = 0u64;
    for seg in range {
        check()?;
        let before = rewrite.removed;
        let mut seg_out = Vec::with_capacity(seg.bytes.len() / 2);
        for batch in batches(&seg) {
            let (h, bytes) = batch?;
            rewrite.batch(&h, bytes, &mut seg_out)?;
        }
        outcome.bytes_read += seg.bytes.len() as u64;
        throttle.read(seg.bytes.len() as u64);
        if !group.is_empty() && out.len() + seg_out.len() > target {
            swap(p, &group, &out, group_removed, &mut outcome)?;
            group.clear();
            out.clear();
            group_removed = 0;
        }
        group_removed += rewrite.removed - before;
        out.extend_from_slice(&seg_out);
        group.push(seg);
    }
    swap(p, &group, &out, group_removed, &mut outcome)?;
    outcome.records_removed = rewrite.removed;
    Ok(Some(outcome))
}

/// Swaps `out` in for `group`, unless the group is one segment from which
/// nothing was removed.
fn swap(
    p: &Partition,
    group: &[SealedSegment],
    out: &[u8],
    removed: u64,
    outcome: &mut CleanOutcome,
) -> Result<(), BrokerError> {
    if group.is_empty() || (group.len() == 1 && removed == 0) {
        return Ok(());
    }
    let r = p.log.replace_segments(group, out)?;
    outcome.segments_replaced += r.segments_replaced;
    outcome.bytes_written += r.bytes_after;
    Ok(())
}

/// The second pass's state: what to keep, and the records kept so far of
/// each producer's transaction that has not reached its marker yet.
struct Rewrite<'a> {
    /// The offsets to keep of keyed records, sorted: each key's latest,
    /// unless it is a tombstone past its retention.
    kept: &'a [u64],
    /// Base offsets of the batches with a record without a key.
    keyless: &'a HashSet<u64>,
    index: &'a HashMap<i64, Vec<AbortedTxn>>,
    /// Abort markers removed, by producer and offset.
    empty_aborts: &'a HashSet<(i64, u64)>,
    /// Tombstones and empty transactions' markers with a timestamp below
    /// this are removed.
    horizon: i64,
    kept_in_txn: HashMap<i64, u64>,
    removed: u64,
}

impl Rewrite<'_> {
    /// How many offsets to keep lie in `[from, to]`.
    fn kept_between(&self, from: u64, to: u64) -> u64 {
        let lo = self.kept.partition_point(|&o| o < from);
        let hi = self.kept.partition_point(|&o| o <= to);
        (hi - lo) as u64
    }

    /// Appends what is kept of the batch with header `h` and `bytes`
    /// (framing and CRC checked) to `out`. A batch that keeps all its
    /// records or none is decided from the kept offsets alone, without
    /// reading its records.
    fn batch(
        &mut self,
        h: &BatchHeader,
        bytes: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), BrokerError> {
        let count = u64::from(h.record_count);
        if h.is_control() {
            let kept = self.kept_in_txn.remove(&h.producer_id).unwrap_or(0);
            let gone = match marker(bytes)? {
                Some(ControlType::Abort) => {
                    self.empty_aborts.contains(&(h.producer_id, h.base_offset))
                }
                _ => kept == 0 && h.max_timestamp < self.horizon,
            };
            if gone {
                self.removed += count;
            } else {
                out.extend_from_slice(bytes);
            }
            return Ok(());
        }
        if aborted(h, self.index) {
            self.removed += count;
            return Ok(());
        }
        let in_range = self.kept_between(h.base_offset, h.last_offset());
        let kept = if self.keyless.contains(&h.base_offset) || (in_range > 0 && in_range < count) {
            self.rewrite(h, bytes, out)?
        } else {
            if in_range == count {
                out.extend_from_slice(bytes);
            }
            in_range
        };
        self.removed += count - kept;
        if h.is_transactional() {
            *self.kept_in_txn.entry(h.producer_id).or_default() += kept;
        }
        Ok(())
    }

    /// Appends the batch with only its kept records (all of them: the
    /// batch as it is); returns how many it kept.
    fn rewrite(
        &self,
        h: &BatchHeader,
        bytes: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<u64, BrokerError> {
        let batch = ValidBatch::new(bytes)?;
        let records = batch.records()?;
        let mut keep = Vec::with_capacity(h.record_count as usize);
        for r in records.iter() {
            let r = r?;
            let offset = h.base_offset + u64::from(r.offset_delta);
            if r.key.is_none() || self.kept.binary_search(&offset).is_ok() {
                keep.push(r);
            }
        }
        let kept = keep.len() as u64;
        if kept == u64::from(h.record_count) {
            out.extend_from_slice(bytes);
        } else if kept > 0 {
            let mut b = BatchBuilder::rewriting(h, bytes.len());
            for r in &keep {
                let headers: Vec<(&[u8], Option<&[u8]>)> = r.headers().collect();
                b.push_at(
                    r.offset_delta,
                    h.first_timestamp.wrapping_add(r.timestamp_delta),
                    r.key,
                    r.value,
                    &headers,
                );
            }
            let at = out.len();
            out.extend_from_slice(&b.finish_compressed(batch.compression()));
            // The base offset lies outside the CRC.
            ferry_proto::batch::patch_base_offset(&mut out[at..], h.base_offset);
        }
        Ok(kept)
    }
}

/// One partition's cleaning, as [`clean_all`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CleanReport {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// What was done.
    pub outcome: CleanOutcome,
}

/// Cleans every partition of every compacted topic that is due (or all
/// of them with `force`), publishing the cleaner's metrics. A partition
/// that fails is logged and left as it was; the others go on.
pub fn clean_all(state: &crate::BrokerState, force: bool) -> Vec<CleanReport> {
    let settings = state.config().cleaner;
    let mut reports = Vec::new();
    for topic in state.topics() {
        if !topic.config.cleanup_policy.compacts() {
            continue;
        }
        for p in &topic.partitions {
            if state.is_shutting_down() {
                return reports;
            }
            let labels = [
                ("topic", topic.name.to_string()),
                ("partition", p.id.to_string()),
            ];
            let now = ferry_proto::now_ms();
            let stop = || state.is_shutting_down();
            match clean_partition(p, &topic.config, &settings, now, force, &stop) {
                Ok(Some(outcome)) => {
                    metrics::counter!("ferry_cleaner_bytes_read_total")
                        .increment(outcome.bytes_read);
                    metrics::counter!("ferry_cleaner_bytes_written_total")
                        .increment(outcome.bytes_written);
                    metrics::counter!("ferry_cleaner_records_removed_total")
                        .increment(outcome.records_removed);
                    metrics::gauge!("ferry_cleaner_last_clean_timestamp_seconds", &labels)
                        .set(now as f64 / 1000.0);
                    tracing::info!(
                        topic = %topic.name, partition = p.id, start = outcome.start, end = outcome.end,
                        bytes_read = outcome.bytes_read, bytes_written = outcome.bytes_written,
                        records_removed = outcome.records_removed, "cleaned"
                    );
                    reports.push(CleanReport {
                        topic: topic.name.to_string(),
                        partition: p.id,
                        outcome,
                    });
                }
                Ok(None) => {}
                Err(BrokerError::ShuttingDown) => return reports,
                Err(e) => {
                    metrics::counter!("ferry_cleaner_failures_total").increment(1);
                    tracing::warn!(topic = %topic.name, partition = p.id, error = %e, "cleaning failed; segments swapped in before the failure are whole, the rest are as they were");
                }
            }
            if let Ok(r) = dirty_ratio(p) {
                metrics::gauge!("ferry_cleaner_dirty_ratio", &labels).set(r);
            }
        }
    }
    reports
}

/// Starts the cleaner on its own thread: every `interval` it cleans what
/// is due, until the broker shuts down.
pub fn spawn(
    state: std::sync::Arc<crate::BrokerState>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ferry-cleaner".into())
        .spawn(move || {
            let every = state.config().cleaner.interval;
            let tick = every.min(Duration::from_millis(100));
            let mut next = Instant::now() + every;
            while !state.is_shutting_down() {
                std::thread::sleep(tick);
                if Instant::now() >= next {
                    clean_all(&state, false);
                    next = Instant::now() + every;
                }
            }
        })
}
