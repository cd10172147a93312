//! The log: the [`Log`] API, appends and reads, and retention. Flushing,
//! rolling and sealing live in [`flusher`]; opening a directory and
//! recovering it after a crash live in [`recovery`].
//!
//! # Concurrency
//!
//! * One appender at a time, serialised by `Inner::appender` (a mutex held
//!   only for the write and bookkeeping of one batch).
//! * Readers take no lock on the data path beyond a brief read lock on the
//!   segment list (to clone an `Arc`) and on the sparse index; they read
//!   below each segment's atomically published end.
//! * The flusher thread (policies `Always` and `Interval`) and explicit
//!   [`Log::flush`] serialise on `Inner::flush_lock`, take the appender lock
//!   only to snapshot what to flush, and fdatasync without holding it, so
//!   appends continue during a flush: that is the group commit.
//! * Lock order: `flush_lock` → `appender` → `segments` / a segment's
//!   `checkpoint` → a segment's `entries` / `durable`. The flusher never
//!   holds the appender lock while it waits for the disk.
//!
//! # Crash safety
//!
//! An append is a write above the segment's published end and makes no
//! promise until `durable_offset` passes it; what makes that promise true
//! (fdatasync before the watermark moves, seals in roll order, no retry after a
//! failed flush) is in [`flusher`], and what a crash can leave behind and
//! how open cuts it back to a valid prefix is in [`recovery`]. See
//! `docs/format.md` for the crash analysis of each step.
//!
//! # Dropping without `close`
//!
//! `Drop` stops the flusher thread without flushing or checkpointing: as far
//! as the files are concerned, it is a crash (the page cache still holds
//! the bytes, which tests then damage on purpose to model lost writes).

mod clean;
mod flusher;
mod recovery;

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::thread::JoinHandle;

use bytes::Bytes;
use ferry_proto::batch::{PATCHED_PREFIX, ValidBatch, patch_base_offset};
use parking_lot::{Condvar, Mutex, RwLock};
use tokio::sync::watch;

use crate::config::{FlushPolicy, LogConfig};
use crate::error::StorageError;
use crate::fsutil;
use crate::index::{self, IndexEntry, NO_TIMESTAMP};
use crate::mmap::{self, Writer};
use crate::segment::{self, DurablePoint, Segment, SegmentName, SegmentRead, wants_entry};

pub use self::clean::{ReplaceOutcome, SealedSegment};
use self::flusher::{FlusherState, Sealing};
pub use self::recovery::RecoveryStats;
use self::recovery::recover;

/// Result of a successful append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset assigned to the batch's first record.
    pub base_offset: u64,
    /// Offset of the batch's last record.
    pub last_offset: u64,
    /// First offset in the log at the time of the append.
    pub log_start_offset: u64,
    /// The append opened a new segment: a good moment for callers to
    /// snapshot state derived from the log. The previous segment is sealed
    /// (flushed, then indexed) in the background; `durable_offset` says
    /// when that is done.
    pub rolled: bool,
}

/// The log's watermarks, published on [`Log::watch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Watermarks {
    /// Offset the next append gets (the high watermark).
    pub next_offset: u64,
    /// Every offset below this is flushed.
    pub durable_offset: u64,
}

/// Description of one segment.
#[derive(Clone, Debug)]
pub struct SegmentInfo {
    /// Offset of the segment's first batch.
    pub base_offset: u64,
    /// Offset after its last batch.
    pub next_offset: u64,
    /// Bytes of batches.
    pub data_len: u64,
    /// Bytes flushed.
    pub durable_len: u64,
    /// The `.log` file.
    pub log_path: PathBuf,
    /// The `.index` file.
    pub index_path: PathBuf,
}

/// What [`Log::apply_retention`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Segments deleted.
    pub segments_deleted: usize,
    /// Data bytes deleted.
    pub bytes_deleted: u64,
    /// First offset in the log afterwards.
    pub log_start_offset: u64,
}

struct Appender {
    active: Arc<Segment>,
    writer: Writer,
    next_offset: u64,
    max_timestamp: i64,
    closed: bool,
}

struct Inner {
    dir: PathBuf,
    config: LogConfig,
    appender: Mutex<Appender>,
    segments: RwLock<Vec<Arc<Segment>>>,
    next_offset: AtomicU64,
    durable_offset: AtomicU64,
    log_start: AtomicU64,
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
    closed: AtomicBool,
    watch: watch::Sender<Watermarks>,
    durable_lock: Mutex<()>,
    durable_cv: Condvar,
    flush_lock: Mutex<()>,
    /// Rolled segments not sealed yet, oldest first.
    sealing: Mutex<VecDeque<Sealing>>,
    flusher_state: Mutex<FlusherState>,
    flusher_cv: Condvar,
    /// Serialises changes to the list of sealed segments: retention,
    /// truncation and the swap of cleaned segments.
    maintenance: Mutex<()>,
    recovery: RecoveryStats,
}

/// An append-only, memory-mapped, crash-safe log of record batches.
pub struct Log {
    inner: Arc<Inner>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.inner.dir)
            .field("next_offset", &self.next_offset())
            .field("durable_offset", &self.durable_offset())
            .finish()
    }
}

impl Log {
    /// Opens (creating if needed) the log in `dir`, runs recovery and starts
    /// the flusher thread, which seals rolled segments and, for the `Always`
    /// and `Interval` policies, flushes the active one.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log, StorageError> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let recovered = recover(&dir, &config)?;
        let next_offset = recovered.appender.next_offset;
        let log_start = recovered.segments[0].base_offset;
        let (watch, _) = watch::channel(Watermarks {
            next_offset,
            durable_offset: next_offset,
        });
        let inner = Arc::new(Inner {
            dir,
            config: config.clone(),
            appender: Mutex::new(recovered.appender),
            segments: RwLock::new(recovered.segments),
            next_offset: AtomicU64::new(next_offset),
            durable_offset: AtomicU64::new(next_offset),
            log_start: AtomicU64::new(log_start),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            closed: AtomicBool::new(false),
            watch,
            durable_lock: Mutex::new(()),
            durable_cv: Condvar::new(),
            flush_lock: Mutex::new(()),
            sealing: Mutex::new(VecDeque::new()),
            flusher_state: Mutex::new(FlusherState::default()),
            flusher_cv: Condvar::new(),
            maintenance: Mutex::new(()),
            recovery: recovered.stats,
        });
        let flusher = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("ferry-flusher".into())
                .spawn(move || inner.flusher_main())
                .map_err(|e| StorageError::io("spawn flusher", PathBuf::new(), e))?
        };
        Ok(Log {
            inner,
            flusher: Mutex::new(Some(flusher)),
        })
    }

    /// Appends `batch`, assigning it the next offsets. The batch is visible
    /// to readers (below `next_offset`) when this returns; it is durable
    /// once `durable_offset` passes it.
    pub fn append(&self, batch: ValidBatch<'_>) -> Result<AppendInfo, StorageError> {
        let inner = &*self.inner;
        let bytes = batch.bytes();
        let header = batch.header();
        let len = bytes.len() as u64;
        let mut app = inner.appender.lock();
        let (base, next) = inner.offsets_for(&app, bytes.len(), header.last_offset_delta)?;
        let pos = app.writer.read_map().published();
        let relative_too_far = base - app.active.base_offset > u64::from(u32::MAX);
        let rolled = pos + len > app.writer.read_map().len() || relative_too_far;
        if rolled {
            inner.roll(&mut app)?;
        }
        let pos = app.writer.read_map().published();
        let seg = app.active.clone();
        // The patched prefix (the base offset and the leader epoch, which
        // the CRC does not cover), then the rest of the batch as sent: one
        // write.
        let mut prefix = [0u8; PATCHED_PREFIX];
        prefix.copy_from_slice(&bytes[..PATCHED_PREFIX]);
        patch_base_offset(&mut prefix, base);
        app.writer
            .write_parts(pos, &[&prefix, &bytes[PATCHED_PREFIX..]])
            .map_err(|e| StorageError::io("append", &seg.log_path, e))?;
        index_batch(
            &seg,
            base,
            pos,
            app.max_timestamp,
            inner.config.index_interval_bytes,
        );
        debug_assert!(next > base, "offsets strictly increase on append");
        app.next_offset = next;
        app.max_timestamp = app.max_timestamp.max(header.max_timestamp);
        seg.max_timestamp
            .fetch_max(header.max_timestamp, Ordering::Relaxed);
        seg.next_offset.store(next, Ordering::Release);
        app.writer.publish(pos + len);
        inner.next_offset.store(next, Ordering::Release);
        inner.watch.send_modify(|w| w.next_offset = next);
        drop(app);
        if inner.config.flush == FlushPolicy::Always {
            let mut st = inner.flusher_state.lock();
            st.pending = true;
            inner.flusher_cv.notify_one();
        }
        Ok(AppendInfo {
            base_offset: base,
            last_offset: next - 1,
            log_start_offset: inner.log_start.load(Ordering::Acquire),
            rolled,
        })
    }

    /// Starts a new segment now, unless the active one is empty, so that
    /// what is appended next begins a segment of its own; returns whether
    /// it rolled. The old segment is sealed in the background, as at any
    /// roll.
    pub fn roll(&self) -> Result<bool, StorageError> {
        let inner = &*self.inner;
        let mut app = inner.appender.lock();
        if app.closed {
            return Err(StorageError::Closed);
        }
        inner.check_failed()?;
        if app.writer.read_map().published() == 0 {
            return Ok(false);
        }
        inner.roll(&mut app)?;
        Ok(true)
    }

    /// Zero-copy read of whole batches from one segment; see the crate docs.
    pub fn read(&self, offset: u64, max_bytes: usize, upper: u64) -> Result<Bytes, StorageError> {
        let inner = &*self.inner;
        let next = inner.next_offset.load(Ordering::Acquire);
        let start = inner.log_start.load(Ordering::Acquire);
        let out_of_range = || StorageError::OffsetOutOfRange {
            requested: offset,
            log_start: start,
            log_end: next,
        };
        if offset < start || offset > next {
            return Err(out_of_range());
        }
        let limit = upper.min(next);
        if offset >= limit {
            return Ok(Bytes::new());
        }
        let candidates: Vec<Arc<Segment>> = {
            let segs = inner.segments.read();
            let i = segs.partition_point(|s| s.base_offset <= offset);
            if i == 0 {
                return Err(out_of_range());
            }
            segs[i - 1..].to_vec()
        };
        for seg in candidates {
            match seg.read(offset, max_bytes, limit)? {
                SegmentRead::Data(b) => return Ok(b),
                SegmentRead::PastEnd => continue,
            }
        }
        Ok(Bytes::new())
    }

    /// First offset in the log.
    pub fn log_start_offset(&self) -> u64 {
        self.inner.log_start.load(Ordering::Acquire)
    }

    /// Offset the next append gets.
    pub fn next_offset(&self) -> u64 {
        self.inner.next_offset.load(Ordering::Acquire)
    }

    /// Every offset below this is flushed.
    pub fn durable_offset(&self) -> u64 {
        self.inner.durable_offset.load(Ordering::Acquire)
    }

    /// Sum of the data bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.inner
            .segments
            .read()
            .iter()
            .map(|s| s.data_len())
            .sum()
    }

    /// The segments, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.inner
            .segments
            .read()
            .iter()
            .map(|s| SegmentInfo {
                base_offset: s.base_offset,
                next_offset: s.next_offset.load(Ordering::Acquire),
                data_len: s.data_len(),
                durable_len: s.durable.lock().len,
                log_path: s.log_path.clone(),
                index_path: s.index_path.clone(),
            })
            .collect()
    }

    /// A receiver updated after every append and every flush.
    pub fn watch(&self) -> watch::Receiver<Watermarks> {
        self.inner.watch.subscribe()
    }

    /// Resolves once `durable_offset > offset`.
    pub async fn wait_durable(&self, offset: u64) -> Result<(), StorageError> {
        let mut rx = self.inner.watch.subscribe();
        loop {
            if let Some(result) = self.inner.durable_outcome(offset) {
                return result;
            }
            if rx.changed().await.is_err() {
                return Err(StorageError::Closed);
            }
        }
    }

    /// Waits until `offset` is durable, unless the flush policy is
    /// [`FlushPolicy::Never`], which promises no durability: then it
    /// returns at once.
    pub async fn wait_durable_unless_never(&self, offset: u64) -> Result<(), StorageError> {
        if self.inner.config.flush == FlushPolicy::Never {
            return Ok(());
        }
        self.wait_durable(offset).await
    }

    /// Appends `batch` and waits until it is durable under the flush policy
    /// (not at all under [`FlushPolicy::Never`]).
    pub async fn append_durable(&self, batch: ValidBatch<'_>) -> Result<AppendInfo, StorageError> {
        let info = self.append(batch)?;
        self.wait_durable_unless_never(info.last_offset).await?;
        Ok(info)
    }

    /// The flush policy the log was opened with.
    pub fn flush_policy(&self) -> FlushPolicy {
        self.inner.config.flush
    }

    /// The size segment files are preallocated to; no batch is larger.
    pub fn segment_bytes(&self) -> u64 {
        self.inner.config.segment_bytes
    }

    /// Blocks until `durable_offset > offset`.
    pub fn wait_durable_blocking(&self, offset: u64) -> Result<(), StorageError> {
        let inner = &*self.inner;
        let mut guard = inner.durable_lock.lock();
        loop {
            if let Some(result) = inner.durable_outcome(offset) {
                return result;
            }
            inner.durable_cv.wait(&mut guard);
        }
    }

    /// Flushes everything appended so far and advances `durable_offset`.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.inner.flush_once(false)
    }

    /// Base offset of the first batch whose max timestamp is at least
    /// `timestamp_ms`, or `None` if there is none.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>, StorageError> {
        let segs: Vec<Arc<Segment>> = self.inner.segments.read().clone();
        for seg in segs {
            let max_ts = seg.max_timestamp.load(Ordering::Relaxed);
            if max_ts == NO_TIMESTAMP || max_ts < timestamp_ms {
                continue;
            }
            if let Some(offset) = seg.offset_for_timestamp(timestamp_ms)? {
                return Ok(Some(offset));
            }
        }
        Ok(None)
    }

    /// Deletes whole sealed segments, oldest first, while the log is larger
    /// than `retention_bytes` (keeping at least that much) or while the
    /// oldest segment's newest record is older than `retention_ms`. The
    /// active segment, and segments whose seal is still queued, are never
    /// deleted.
    pub fn apply_retention(&self, now_ms: i64) -> Result<RetentionOutcome, StorageError> {
        let config = &self.inner.config;
        self.delete_oldest_while("retention", |seg, total| {
            let by_size = config
                .retention_bytes
                .is_some_and(|limit| total - seg.data_len() >= limit);
            let max_ts = seg.max_timestamp.load(Ordering::Relaxed);
            let by_age = config.retention_ms.is_some_and(|ms| {
                max_ts == NO_TIMESTAMP
                    || now_ms.saturating_sub(max_ts) > ms.min(i64::MAX as u64) as i64
            });
            by_size || by_age
        })
    }

    /// Deletes the sealed segments that hold nothing at or after `offset`,
    /// oldest first: for a log whose state from `offset` on restates
    /// everything before it. Like retention, it never deletes the active
    /// segment or one whose seal is still queued.
    pub fn delete_below(&self, offset: u64) -> Result<RetentionOutcome, StorageError> {
        self.delete_oldest_while("truncation", |seg, _| {
            seg.next_offset.load(Ordering::Acquire) <= offset
        })
    }

    /// Deletes sealed segments, oldest first, while `doomed(segment, total
    /// data bytes of the log before deleting it)` holds.
    fn delete_oldest_while(
        &self,
        why: &'static str,
        mut doomed: impl FnMut(&Segment, u64) -> bool,
    ) -> Result<RetentionOutcome, StorageError> {
        let inner = &*self.inner;
        let _maintenance = inner.maintenance.lock();
        // The appender lock keeps a roll from changing the active segment.
        let _app = inner.appender.lock();
        // Segments still queued for sealing are kept too.
        let unsealed = inner.sealing.lock().len();
        let mut deleted = Vec::new();
        {
            let mut segs = inner.segments.write();
            let mut total: u64 = segs.iter().map(|s| s.data_len()).sum();
            let mut count = 0;
            while count + 1 + unsealed < segs.len() && doomed(&segs[count], total) {
                total -= segs[count].data_len();
                count += 1;
            }
            deleted.extend(segs.drain(..count));
            inner
                .log_start
                .store(segs[0].base_offset, Ordering::Release);
        }
        let mut bytes_deleted = 0;
        for seg in &deleted {
            bytes_deleted += seg.data_len();
            // Oldest first, .log before .index: a crash part-way leaves a
            // contiguous log, and an orphaned .index is removed at open.
            // Readers that still map a deleted file keep reading it; Linux
            // frees the blocks when the last map goes.
            segment::remove_files(&seg.log_path, &seg.index_path)?;
        }
        if !deleted.is_empty() {
            fsutil::sync_dir(&inner.dir)
                .map_err(|e| StorageError::io("fsync dir", &inner.dir, e))?;
            tracing::info!(dir = %inner.dir.display(), segments = deleted.len(), bytes_deleted, why, "deleted segments");
        }
        Ok(RetentionOutcome {
            segments_deleted: deleted.len(),
            bytes_deleted,
            log_start_offset: inner.log_start.load(Ordering::Acquire),
        })
    }

    /// Flushes, writes the checkpoint so the next open scans nothing, and
    /// stops the flusher. Idempotent; later appends fail with `Closed`.
    pub fn close(&self) -> Result<(), StorageError> {
        let inner = &*self.inner;
        self.stop_flusher();
        {
            let mut app = inner.appender.lock();
            if app.closed {
                return Ok(());
            }
            app.closed = true;
        }
        let result = inner.flush_once(true);
        inner.closed.store(true, Ordering::Release);
        inner.wake_waiters();
        result
    }

    /// The reason the log failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.inner.failure.lock().clone()
    }

    /// The directory holding the segment files.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// What the last open found.
    #[doc(hidden)]
    pub fn recovery_stats(&self) -> RecoveryStats {
        self.inner.recovery
    }

    /// Per segment: the sparse index as `(absolute offset, position,
    /// max timestamp before)`.
    #[doc(hidden)]
    pub fn index_entries(&self) -> Result<Vec<Vec<AbsoluteEntry>>, StorageError> {
        let segs = self.inner.segments.read().clone();
        segs.iter()
            .map(|s| Ok(absolute(s, &s.entries()?)))
            .collect()
    }

    /// Per segment: the sparse index rebuilt from scratch by a full scan.
    #[doc(hidden)]
    pub fn rebuilt_index_entries(&self) -> Result<Vec<Vec<AbsoluteEntry>>, StorageError> {
        let segs = self.inner.segments.read().clone();
        segs.iter()
            .map(|s| Ok(absolute(s, &s.rebuild_entries()?)))
            .collect()
    }

    fn stop_flusher(&self) {
        {
            let mut st = self.inner.flusher_state.lock();
            st.shutdown = true;
            self.inner.flusher_cv.notify_all();
        }
        if let Some(handle) = self.flusher.lock().take() {
            // A panicking flusher already recorded nothing we could use.
            let _ = handle.join();
        }
    }
}

/// Adds the sparse index entry for a batch appended at `pos`, if one is
/// due; `max_timestamp_before` is the segment's largest timestamp before
/// the batch. The rule is the one a scan uses, so a rebuilt index is the
/// same.
fn index_batch(seg: &Segment, base: u64, pos: u64, max_timestamp_before: i64, interval_bytes: u32) {
    let mut entries = seg.entries.write();
    let entries = entries.get_or_insert_with(Vec::new);
    if wants_entry(pos, entries.last(), interval_bytes) {
        entries.push(IndexEntry {
            relative_offset: (base - seg.base_offset) as u32,
            position: pos as u32,
            max_timestamp_before,
        });
    }
}

/// An index entry as tests compare them: `(absolute offset, position, max
/// timestamp before)`.
pub type AbsoluteEntry = (u64, u64, i64);

fn absolute(seg: &Segment, entries: &[IndexEntry]) -> Vec<AbsoluteEntry> {
    entries
        .iter()
        .map(|e| {
            (
                seg.base_offset + u64::from(e.relative_offset),
                u64::from(e.position),
                e.max_timestamp_before,
            )
        })
        .collect()
}

impl Drop for Log {
    fn drop(&mut self) {
        // No flush, no checkpoint: for the files this is a crash.
        self.stop_flusher();
        self.inner.closed.store(true, Ordering::Release);
        self.inner.wake_waiters();
    }
}

impl Inner {
    fn check_failed(&self) -> Result<(), StorageError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(StorageError::LogFailed {
                reason: self.failure.lock().clone().unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// The offsets `[base, next)` the next batch gets, or why the appender
    /// refuses it.
    fn offsets_for(
        &self,
        app: &Appender,
        len: usize,
        last_offset_delta: u32,
    ) -> Result<(u64, u64), StorageError> {
        if app.closed {
            return Err(StorageError::Closed);
        }
        self.check_failed()?;
        if len as u64 > self.config.segment_bytes {
            return Err(StorageError::BatchTooLarge {
                size: len,
                max: self.config.segment_bytes as usize,
            });
        }
        let base = app.next_offset;
        debug_assert_eq!(
            base,
            self.next_offset.load(Ordering::Relaxed),
            "the appender's next offset is the log's"
        );
        let next = base
            .checked_add(u64::from(last_offset_delta))
            .and_then(|l| l.checked_add(1))
            .ok_or_else(|| StorageError::InvalidConfig("offset space exhausted".into()))?;
        Ok((base, next))
    }

    fn durable_outcome(&self, offset: u64) -> Option<Result<(), StorageError>> {
        if self.durable_offset.load(Ordering::Acquire) > offset {
            return Some(Ok(()));
        }
        if let Err(e) = self.check_failed() {
            return Some(Err(e));
        }
        if self.closed.load(Ordering::Acquire) {
            return Some(Err(StorageError::Closed));
        }
        None
    }

    fn wake_waiters(&self) {
        self.watch.send_modify(|_| {});
        let _guard = self.durable_lock.lock();
        self.durable_cv.notify_all();
    }
}

fn open_rw(path: &Path, create: bool) -> Result<File, StorageError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
        .map_err(|e| StorageError::io("open segment", path, e))
}

fn new_segment(
    dir: &Path,
    name: SegmentName,
    map: Arc<mmap::ReadMap>,
    durable: DurablePoint,
    entries: Option<Vec<IndexEntry>>,
    lazy_header: Option<index::IndexHeader>,
    config: &LogConfig,
) -> Segment {
    Segment {
        base_offset: name.base,
        log_path: dir.join(name.log_file()),
        index_path: dir.join(name.index_file()),
        map,
        next_offset: AtomicU64::new(durable.next_offset),
        max_timestamp: AtomicI64::new(durable.max_timestamp),
        durable: Mutex::new(durable),
        entries: RwLock::new(entries),
        lazy_header,
        checkpoint: Mutex::new(0),
        index_interval_bytes: config.index_interval_bytes,
        cleaned_end: name.cleaned_end,
        trusted_len: 0,
    }
}

#[cfg(test)]
mod tests;
