//! The log: segments, the single appender, the flusher, recovery and
//! retention.
//!
//! # Concurrency
//!
//! * One appender at a time, serialised by `Inner::appender` (a mutex held
//!   only for the memcpy and bookkeeping of one batch).
//! * Readers take no lock on the data path beyond a brief read lock on the
//!   segment list (to clone an `Arc`) and on the sparse index; they read
//!   below each segment's atomically published end.
//! * The flusher thread (policies `Always` and `Interval`) and explicit
//!   [`Log::flush`] serialise on `Inner::flush_lock`, take the appender lock
//!   only to snapshot what to flush, and msync without holding it, so
//!   appends continue during a flush: that is the group commit.
//! * Lock order: `flush_lock` → `appender` → `segments` / a segment's
//!   `checkpoint` → a segment's `entries` / `durable`. The flusher never
//!   holds the appender lock while it waits for the disk.
//!
//! # Durability and the recovery checkpoint
//!
//! `durable_offset` only advances after an msync covering every byte below
//! it has succeeded. A roll does not wait for the disk: it creates the next
//! segment and queues the old one for sealing. The flusher thread seals
//! queued segments in order (msync all of it, then write its final index)
//! before it flushes the active segment, so a flush of the active segment
//! still vouches for the whole log below it. Recovery treats a segment
//! whose seal did not finish like an active segment (see `recover`).
//!
//! A failed flush is never retried: the page cache may have dropped the
//! dirty pages and marked them clean ("fsyncgate"), so a retry could
//! succeed without the data being on disk. The log records the failure,
//! refuses all further appends and flushes with [`StorageError::LogFailed`],
//! wakes every waiter with that error, and the durable watermark never
//! moves again.
//!
//! The recovery checkpoint is the active segment's `.index` file, rewritten
//! (atomically: tmp, fsync, rename, directory fsync) after every
//! `checkpoint_interval_bytes` of newly durable data, at roll and at close.
//! Its `valid_len` only covers flushed bytes. Open trusts sealed segments'
//! indexes and the checkpointed prefix of the last segment, and scans only
//! the last segment past its checkpoint, so recovery time follows the
//! un-checkpointed tail (at most one checkpoint interval plus whatever was
//! not yet flushed), not the log size. See `docs/format.md` for the crash
//! analysis of each step.
//!
//! # Dropping without `close`
//!
//! `Drop` stops the flusher thread without flushing or checkpointing: as far
//! as the files are concerned, it is a crash (the page cache still holds
//! the bytes, which tests then damage on purpose to model lost writes).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::thread::JoinHandle;

use bytes::Bytes;
use ferry_proto::batch::ValidBatch;
use parking_lot::{Condvar, Mutex, RwLock};
use tokio::sync::watch;

use crate::config::{FlushPolicy, LogConfig, MAX_SEGMENT_BYTES};
use crate::error::StorageError;
use crate::fsutil;
use crate::index::{self, DiskRead, IndexEntry, NO_TIMESTAMP};
use crate::mmap::{self, Writer};
use crate::segment::{
    self, DurablePoint, Segment, SegmentRead, flush_range, index_file_name, log_file_name, scan,
    wants_entry,
};

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

/// Counters from the last open, for tests and logs.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Segments found.
    pub segments: usize,
    /// Bytes of batches scanned past checkpoints.
    pub scanned_bytes: u64,
    /// Bytes past the valid end that were reset to zeros.
    pub zeroed_bytes: u64,
    /// Segments whose index was rebuilt by a full scan.
    pub rebuilt_indexes: usize,
    /// Segments removed because they followed a segment whose seal had not
    /// finished and whose tail was lost.
    pub dropped_segments: usize,
}

/// A rolled segment waiting for its final flush and index.
struct Sealing {
    seg: Arc<Segment>,
    /// Taken by the seal, which unmaps it and syncs the file.
    sealer: Option<mmap::Sealer>,
    target: DurablePoint,
}

struct Appender {
    active: Arc<Segment>,
    writer: Writer,
    next_offset: u64,
    max_timestamp: i64,
    closed: bool,
}

#[derive(Default)]
struct FlusherState {
    pending: bool,
    shutdown: bool,
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
        if app.closed {
            return Err(StorageError::Closed);
        }
        inner.check_failed()?;
        if len > inner.config.segment_bytes {
            return Err(StorageError::BatchTooLarge {
                size: bytes.len(),
                max: inner.config.segment_bytes as usize,
            });
        }
        let base = app.next_offset;
        debug_assert_eq!(
            base,
            inner.next_offset.load(Ordering::Relaxed),
            "the appender's next offset is the log's"
        );
        let next = base
            .checked_add(u64::from(header.last_offset_delta))
            .and_then(|l| l.checked_add(1))
            .ok_or_else(|| StorageError::InvalidConfig("offset space exhausted".into()))?;
        let pos = app.writer.read_map().published();
        let relative_too_far = base - app.active.base_offset > u64::from(u32::MAX);
        let rolled = pos + len > app.writer.read_map().len() || relative_too_far;
        if rolled {
            inner.roll(&mut app)?;
        }
        let pos = app.writer.read_map().published();
        let seg = app.active.clone();
        app.writer
            .write(pos, bytes)
            .and_then(|()| app.writer.write(pos, &base.to_le_bytes()))
            .map_err(|e| StorageError::io("append", &seg.log_path, e))?;
        {
            let mut entries = seg.entries.write();
            let entries = entries.get_or_insert_with(Vec::new);
            if wants_entry(pos, entries.last(), inner.config.index_interval_bytes) {
                entries.push(IndexEntry {
                    relative_offset: (base - seg.base_offset) as u32,
                    position: pos as u32,
                });
            }
        }
        debug_assert!(next > base, "offsets strictly increase on append");
        app.next_offset = next;
        app.max_timestamp = app.max_timestamp.max(header.max_timestamp);
        seg.max_timestamp
            .fetch_max(header.max_timestamp, Ordering::Relaxed);
        seg.next_offset.store(next, Ordering::Release);
        app.writer.publish(pos + len);
        app.writer.prefault_ahead(pos + len);
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
        let inner = &*self.inner;
        let config = &inner.config;
        // The appender lock keeps a roll from changing the active segment.
        let _app = inner.appender.lock();
        // Segments still queued for sealing are kept too.
        let unsealed = inner.sealing.lock().len();
        let mut doomed = Vec::new();
        {
            let mut segs = inner.segments.write();
            let mut total: u64 = segs.iter().map(|s| s.data_len()).sum();
            let mut count = 0;
            while count + 1 + unsealed < segs.len() {
                let seg = &segs[count];
                let size = seg.data_len();
                let by_size = config
                    .retention_bytes
                    .is_some_and(|limit| total - size >= limit);
                let max_ts = seg.max_timestamp.load(Ordering::Relaxed);
                let by_age = config.retention_ms.is_some_and(|ms| {
                    max_ts == NO_TIMESTAMP
                        || now_ms.saturating_sub(max_ts) > ms.min(i64::MAX as u64) as i64
                });
                if !(by_size || by_age) {
                    break;
                }
                total -= size;
                count += 1;
            }
            doomed.extend(segs.drain(..count));
            inner
                .log_start
                .store(segs[0].base_offset, Ordering::Release);
        }
        let mut bytes_deleted = 0;
        for seg in &doomed {
            bytes_deleted += seg.data_len();
            // Oldest first, .log before .index: a crash part-way leaves a
            // contiguous log, and an orphaned .index is removed at open.
            // Readers that still map a deleted file keep reading it; Linux
            // frees the blocks when the last map goes.
            segment::remove_files(&seg.log_path, &seg.index_path)?;
        }
        if !doomed.is_empty() {
            fsutil::sync_dir(&inner.dir)
                .map_err(|e| StorageError::io("fsync dir", &inner.dir, e))?;
            tracing::info!(dir = %inner.dir.display(), segments = doomed.len(), bytes_deleted, "retention deleted segments");
        }
        Ok(RetentionOutcome {
            segments_deleted: doomed.len(),
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

    /// Per segment: the sparse index as `(absolute offset, position)`.
    #[doc(hidden)]
    pub fn index_entries(&self) -> Result<Vec<Vec<(u64, u64)>>, StorageError> {
        let segs = self.inner.segments.read().clone();
        segs.iter()
            .map(|s| Ok(absolute(s, &s.entries()?)))
            .collect()
    }

    /// Per segment: the sparse index rebuilt from scratch by a full scan.
    #[doc(hidden)]
    pub fn rebuilt_index_entries(&self) -> Result<Vec<Vec<(u64, u64)>>, StorageError> {
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

fn absolute(seg: &Segment, entries: &[IndexEntry]) -> Vec<(u64, u64)> {
    entries
        .iter()
        .map(|e| {
            (
                seg.base_offset + u64::from(e.relative_offset),
                u64::from(e.position),
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

    /// Puts the log in the permanent failed state.
    fn fail(&self, error: &StorageError) -> StorageError {
        let reason = error.to_string();
        {
            let mut failure = self.failure.lock();
            if failure.is_none() {
                tracing::error!(dir = %self.dir.display(), %reason, "flush failed; log is now read-only");
                *failure = Some(reason.clone());
            }
        }
        self.failed.store(true, Ordering::Release);
        self.wake_waiters();
        StorageError::LogFailed { reason }
    }

    fn advance_durable(&self, next_offset: u64) {
        assert!(
            next_offset <= self.next_offset.load(Ordering::Acquire),
            "the durable offset never passes the high watermark"
        );
        let before = self.durable_offset.fetch_max(next_offset, Ordering::AcqRel);
        if next_offset > before {
            self.watch
                .send_modify(|w| w.durable_offset = w.durable_offset.max(next_offset));
            let _guard = self.durable_lock.lock();
            self.durable_cv.notify_all();
        }
    }

    fn flusher_main(self: Arc<Inner>) {
        loop {
            {
                let mut st = self.flusher_state.lock();
                match self.config.flush {
                    FlushPolicy::Interval(d) => {
                        if !st.shutdown {
                            self.flusher_cv.wait_for(&mut st, d);
                        }
                    }
                    _ => {
                        while !st.pending && !st.shutdown {
                            self.flusher_cv.wait(&mut st);
                        }
                    }
                }
                if st.shutdown {
                    return;
                }
                st.pending = false;
            }
            let result = if self.config.flush == FlushPolicy::Never {
                let _flush = self.flush_lock.lock();
                self.seal_queued()
            } else {
                self.flush_once(false)
            };
            if result.is_err() && self.failed.load(Ordering::Acquire) {
                return;
            }
        }
    }

    /// Seals the queued segments, oldest first: unmap the write map,
    /// fdatasync the file, write its final index, advance the watermark to
    /// its end. The caller holds `flush_lock`, so one thread at a time
    /// seals.
    fn seal_queued(&self) -> Result<(), StorageError> {
        loop {
            self.check_failed()?;
            fail::fail_point!("storage::seal");
            let Some((seg, sealer, target)) = self
                .sealing
                .lock()
                .front_mut()
                .map(|s| (s.seg.clone(), s.sealer.take(), s.target))
            else {
                return Ok(());
            };
            // `None` only if an earlier attempt failed, which failed the log.
            let Some(sealer) = sealer else {
                return self.check_failed();
            };
            let file = sealer.unmap();
            if let Err(e) = segment::sync_file(&file, &seg.log_path) {
                return Err(self.fail(&e));
            }
            seg.mark_durable(target);
            if let Err(e) = seg.write_index(target) {
                // The data is durable; recovery rebuilds the index from the
                // segment's last checkpoint, so this is not fatal.
                tracing::warn!(path = %seg.index_path.display(), error = %e, "index write at seal failed");
            }
            self.sealing.lock().pop_front();
            self.advance_durable(target.next_offset);
        }
    }

    /// One group commit: seal the rolled segments, msync everything the
    /// active segment published since the last flush, then advance the
    /// watermark. With `force`, the checkpoint is written even if the
    /// interval has not passed.
    fn flush_once(&self, force_checkpoint: bool) -> Result<(), StorageError> {
        let _flush = self.flush_lock.lock();
        self.check_failed()?;
        // Snapshot the active segment first: every segment rolled before
        // the snapshot is in the queue by then, and is sealed below before
        // the watermark moves past it.
        let (seg, handle, target) = {
            let app = self.appender.lock();
            let target = DurablePoint {
                len: app.writer.read_map().published(),
                next_offset: app.next_offset,
                max_timestamp: app.max_timestamp,
            };
            (app.active.clone(), app.writer.flush_handle(), target)
        };
        self.seal_queued()?;
        let from = seg.durable.lock().len;
        if target.len > from {
            if let Err(e) = flush_range(&handle, &seg.log_path, from, target.len) {
                return Err(self.fail(&e));
            }
            seg.mark_durable(target);
        }
        self.advance_durable(target.next_offset);
        let durable = *seg.durable.lock();
        let checkpointed = *seg.checkpoint.lock();
        let due = durable.len.saturating_sub(checkpointed) >= self.config.checkpoint_interval_bytes;
        if (force_checkpoint || due)
            && let Err(e) = seg.write_index(durable)
        {
            // The data is durable; only the recovery shortcut is stale, so
            // this is not fatal, and nothing is acked on its basis.
            tracing::warn!(error = %e, "checkpoint write failed");
            if force_checkpoint {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Starts a new active segment at `next_offset` and queues the old one
    /// for sealing by the flusher thread, so appends never wait for the
    /// disk here. If creating the new file fails (disk full), the old
    /// segment simply stays active.
    ///
    /// Until its seal finishes, the old segment's `.index` is at most a
    /// checkpoint of a flushed prefix; recovery scans such a segment past
    /// its checkpoint, and if its tail was lost, the log ends there.
    fn roll(&self, app: &mut Appender) -> Result<(), StorageError> {
        let target = DurablePoint {
            len: app.writer.read_map().published(),
            next_offset: app.next_offset,
            max_timestamp: app.max_timestamp,
        };
        let (new_seg, new_writer) = create_segment(&self.dir, app.next_offset, &self.config)?;
        if let Err(e) = fsutil::sync_dir(&self.dir) {
            let _ = std::fs::remove_file(&new_seg.log_path);
            return Err(StorageError::io("fsync dir", &self.dir, e));
        }
        let old_writer = std::mem::replace(&mut app.writer, new_writer);
        let old = std::mem::replace(&mut app.active, new_seg.clone());
        assert!(
            self.segments
                .read()
                .last()
                .is_some_and(|last| Arc::ptr_eq(last, &old)),
            "only the last segment is written; every one before it is sealed"
        );
        // The seal unmaps the write map, off this thread: a munmap here
        // measurably slowed appends.
        self.sealing.lock().push_back(Sealing {
            seg: old,
            sealer: Some(old_writer.into_sealer()),
            target,
        });
        self.segments.write().push(new_seg);
        let mut st = self.flusher_state.lock();
        st.pending = true;
        self.flusher_cv.notify_one();
        Ok(())
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
    base_offset: u64,
    map: Arc<mmap::ReadMap>,
    durable: DurablePoint,
    entries: Option<Vec<IndexEntry>>,
    lazy_header: Option<index::IndexHeader>,
    config: &LogConfig,
) -> Segment {
    Segment {
        base_offset,
        log_path: dir.join(log_file_name(base_offset)),
        index_path: dir.join(index_file_name(base_offset)),
        map,
        next_offset: AtomicU64::new(durable.next_offset),
        max_timestamp: AtomicI64::new(durable.max_timestamp),
        durable: Mutex::new(durable),
        entries: RwLock::new(entries),
        lazy_header,
        checkpoint: Mutex::new(0),
        index_interval_bytes: config.index_interval_bytes,
    }
}

/// Creates, preallocates and maps a new, empty segment file.
fn create_segment(
    dir: &Path,
    base_offset: u64,
    config: &LogConfig,
) -> Result<(Arc<Segment>, Writer), StorageError> {
    let path = dir.join(log_file_name(base_offset));
    let file = open_rw(&path, true)?;
    let len = file
        .metadata()
        .map_err(|e| StorageError::io("stat", &path, e))?
        .len();
    if len < config.segment_bytes
        && let Err(e) = segment::preallocate(&file, &path, config.segment_bytes)
    {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    let cap = len.max(config.segment_bytes).min(MAX_SEGMENT_BYTES);
    let (map, writer) =
        mmap::map_writable(&file, cap, 0).map_err(|e| StorageError::io("mmap", &path, e))?;
    let durable = DurablePoint {
        len: 0,
        next_offset: base_offset,
        max_timestamp: NO_TIMESTAMP,
    };
    let seg = new_segment(
        dir,
        base_offset,
        map,
        durable,
        Some(Vec::new()),
        None,
        config,
    );
    Ok((Arc::new(seg), writer))
}

struct Recovered {
    segments: Vec<Arc<Segment>>,
    appender: Appender,
    stats: RecoveryStats,
}

/// Lists the directory: segment base offsets, sorted; removes stray
/// temporary and orphaned index files.
fn list_segments(dir: &Path) -> Result<Vec<u64>, StorageError> {
    let mut logs = Vec::new();
    let mut indexes = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| StorageError::io("read dir", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("read dir", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".index.tmp") {
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        let parse = |stem: &str| {
            (stem.len() == 20)
                .then(|| stem.parse::<u64>().ok())
                .flatten()
        };
        if let Some(base) = name.strip_suffix(".log").and_then(parse) {
            logs.push(base);
        } else if let Some(base) = name.strip_suffix(".index").and_then(parse) {
            indexes.push(base);
        }
    }
    logs.sort_unstable();
    for base in indexes {
        if logs.binary_search(&base).is_err() {
            let _ = std::fs::remove_file(dir.join(index_file_name(base)));
        }
    }
    Ok(logs)
}

/// Opens a sealed segment: trusts its index header (64 bytes read), or
/// rebuilds the index by a full scan if it is missing or corrupt.
fn open_sealed(
    dir: &Path,
    base: u64,
    config: &LogConfig,
    stats: &mut RecoveryStats,
) -> Result<Segment, StorageError> {
    let path = dir.join(log_file_name(base));
    let index_path = dir.join(index_file_name(base));
    let file = open_rw(&path, false)?;
    let file_len = file
        .metadata()
        .map_err(|e| StorageError::io("stat", &path, e))?
        .len();
    let cap = file_len.min(MAX_SEGMENT_BYTES);
    match index::read_header(&index_path) {
        DiskRead::Present(h) if h.base_offset == base && h.valid_len <= cap => {
            let map = mmap::map_read_only(&file, cap, h.valid_len)
                .map_err(|e| StorageError::io("mmap", &path, e))?;
            let durable = DurablePoint {
                len: h.valid_len,
                next_offset: h.next_offset,
                max_timestamp: h.max_timestamp,
            };
            let seg = new_segment(dir, base, Arc::new(map), durable, None, Some(h), config);
            *seg.checkpoint.lock() = h.valid_len;
            return Ok(seg);
        }
        DiskRead::Present(h) => {
            tracing::warn!(path = %index_path.display(), header = ?h, "index does not match its segment; rebuilding");
        }
        DiskRead::Missing => {
            tracing::warn!(path = %index_path.display(), "index missing; rebuilding")
        }
        DiskRead::Unreadable(reason) => {
            tracing::warn!(path = %index_path.display(), %reason, "index unreadable; rebuilding")
        }
    }
    stats.rebuilt_indexes += 1;
    let (map, mut writer) =
        mmap::map_writable(&file, cap, 0).map_err(|e| StorageError::io("mmap", &path, e))?;
    let mut entries = Vec::new();
    let bytes = writer.unpublished(0, cap).unwrap_or(&[]);
    let found = scan(
        bytes,
        0,
        base,
        base,
        NO_TIMESTAMP,
        &mut entries,
        config.index_interval_bytes,
    );
    stats.scanned_bytes += found.end;
    let (nonzero, _) = segment::find_nonzero(&file, &writer, found.end, cap);
    if let Some(position) = nonzero {
        return Err(StorageError::Corrupt {
            path,
            position: found.end,
            reason: format!(
                "sealed segment has an invalid batch ({}) followed by data at byte {position}",
                found.stop.unwrap_or_default()
            ),
        });
    }
    segment::flush_range(&writer.flush_handle(), &path, 0, found.end)?;
    writer.publish(found.end);
    drop(writer);
    let durable = DurablePoint {
        len: found.end,
        next_offset: found.next_offset,
        max_timestamp: found.max_timestamp,
    };
    let seg = new_segment(dir, base, map, durable, Some(entries), None, config);
    seg.write_index(durable)?;
    Ok(seg)
}

/// Opens the last segment for appending: trusts its checkpoint, scans past
/// it, zeroes the torn tail, flushes what it recovered.
fn open_active(
    dir: &Path,
    base: u64,
    config: &LogConfig,
    stats: &mut RecoveryStats,
) -> Result<(Arc<Segment>, Writer), StorageError> {
    let path = dir.join(log_file_name(base));
    let index_path = dir.join(index_file_name(base));
    let file = open_rw(&path, true)?;
    let file_len = file
        .metadata()
        .map_err(|e| StorageError::io("stat", &path, e))?
        .len();
    if file_len < config.segment_bytes {
        // Not mapped yet, so growing it is safe.
        segment::preallocate(&file, &path, config.segment_bytes)?;
    }
    let cap = file_len.max(config.segment_bytes).min(MAX_SEGMENT_BYTES);
    let checkpoint = match index::read(&index_path) {
        DiskRead::Present((h, entries)) if h.base_offset == base && h.valid_len <= cap => {
            Some((h, entries))
        }
        DiskRead::Present(_) | DiskRead::Unreadable(_) => {
            tracing::warn!(path = %index_path.display(), "checkpoint unusable; scanning the segment from the start");
            stats.rebuilt_indexes += 1;
            None
        }
        DiskRead::Missing => None,
    };
    let (start, next, max_ts, mut entries, checkpointed) = match checkpoint {
        Some((h, entries)) => (
            h.valid_len,
            h.next_offset,
            h.max_timestamp,
            entries,
            h.valid_len,
        ),
        None => (0, base, NO_TIMESTAMP, Vec::new(), 0),
    };
    // Nothing else maps the file yet, so the whole of it is "unpublished"
    // until the scan decides where the valid data ends.
    let (map, mut writer) =
        mmap::map_writable(&file, cap, 0).map_err(|e| StorageError::io("mmap", &path, e))?;
    let bytes = writer.unpublished(0, cap).unwrap_or(&[]);
    let found = scan(
        bytes,
        start,
        base,
        next,
        max_ts,
        &mut entries,
        config.index_interval_bytes,
    );
    let end = found.end;
    stats.scanned_bytes += end - start;
    if let Some(reason) = &found.stop
        && end > 0
    {
        tracing::info!(path = %path.display(), position = end, %reason, "log ends here");
    }
    let zeroed = segment::zero_tail(&file, &path, &mut writer, end, cap)?;
    stats.zeroed_bytes += zeroed;
    if zeroed > 0 {
        tracing::warn!(path = %path.display(), position = end, zeroed, "zeroed a torn tail");
    }
    // What survived a crash may sit only in the page cache (a process
    // crash): flush it before calling it durable.
    segment::flush_range(&writer.flush_handle(), &path, start, end)?;
    writer.publish(end);
    let durable = DurablePoint {
        len: end,
        next_offset: found.next_offset,
        max_timestamp: found.max_timestamp,
    };
    let seg = new_segment(dir, base, map, durable, Some(entries), None, config);
    *seg.checkpoint.lock() = checkpointed;
    if end > checkpointed || checkpointed == 0 {
        seg.write_index(durable)?;
    }
    Ok((Arc::new(seg), writer))
}

fn recover(dir: &Path, config: &LogConfig) -> Result<Recovered, StorageError> {
    std::fs::create_dir_all(dir).map_err(|e| StorageError::io("create dir", dir, e))?;
    let mut bases = list_segments(dir)?;
    let mut stats = RecoveryStats::default();
    if bases.is_empty() {
        bases.push(0);
    }
    let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len());
    // Seals finish in roll order, so the segments whose seal did not finish
    // before a crash are the ones after the last finished seal. Before
    // that point a bad segment is damage, and an error.
    let sealed = bases.len() - 1;
    let finished: Vec<bool> = (0..sealed)
        .map(|i| seal_finished(dir, bases[i], bases[i + 1]))
        .collect();
    let unfinished_from = finished.iter().rposition(|&f| f).map_or(0, |i| i + 1);
    let mut cut = None;
    for (i, &base) in bases[..sealed].iter().enumerate() {
        if i < unfinished_from {
            let seg = open_sealed(dir, base, config, &mut stats)?;
            if let Some(prev) = segments.last() {
                check_continuity(prev, base)?;
            }
            segments.push(Arc::new(seg));
            continue;
        }
        // Its index is at most a checkpoint: recover it like the active
        // segment (scan past the checkpoint, zero a torn tail).
        let (seg, writer) = open_active(dir, base, config, &mut stats)?;
        if let Some(prev) = segments.last() {
            check_continuity(prev, base)?;
        }
        if seg.next_offset.load(Ordering::Acquire) == bases[i + 1] {
            segments.push(seg);
            continue;
        }
        // Its tail was lost (the machine crashed before the seal's flush),
        // so nothing after it can follow on: the log ends here, as it does
        // at a torn tail of the active segment. Nothing lost was durable.
        let dropped = &bases[i + 1..];
        tracing::warn!(
            path = %seg.log_path.display(),
            position = seg.data_len(),
            dropped_segments = dropped.len(),
            "segment lost its tail before it was sealed; the log ends here"
        );
        for &b in dropped {
            segment::remove_files(&dir.join(log_file_name(b)), &dir.join(index_file_name(b)))?;
        }
        stats.dropped_segments = dropped.len();
        cut = Some((seg, writer));
        break;
    }
    let mut last = bases[bases.len() - 1];
    let (active, writer) = if let Some(cut) = cut {
        cut
    } else {
        loop {
            let (active, writer) = open_active(dir, last, config, &mut stats)?;
            let Some(prev) = segments.last() else {
                break (active, writer);
            };
            let expected = prev.next_offset.load(Ordering::Acquire);
            if last == expected {
                break (active, writer);
            }
            if active.data_len() > 0 {
                return Err(StorageError::Corrupt {
                    path: prev.log_path.clone(),
                    position: prev.data_len(),
                    reason: format!(
                        "segment ends at offset {expected} but the next segment starts at {last}"
                    ),
                });
            }
            // An empty segment file with a wrong name (e.g. left by an external
            // copy): it holds nothing, so drop it and append to the one before.
            tracing::warn!(path = %active.log_path.display(), "removing an empty segment that does not continue the log");
            let (log_path, index_path) = (active.log_path.clone(), active.index_path.clone());
            drop(writer);
            drop(active);
            for p in [log_path, index_path] {
                let _ = std::fs::remove_file(p);
            }
            let prev = segments.pop().expect("checked above");
            last = prev.base_offset;
            drop(prev);
        }
    };
    fsutil::sync_dir(dir).map_err(|e| StorageError::io("fsync dir", dir, e))?;
    segments.push(active.clone());
    stats.segments = segments.len();
    let next_offset = active.next_offset.load(Ordering::Acquire);
    let max_timestamp = active.max_timestamp.load(Ordering::Acquire);
    tracing::debug!(dir = %dir.display(), ?stats, next_offset, "log recovered");
    Ok(Recovered {
        segments,
        appender: Appender {
            active,
            writer,
            next_offset,
            max_timestamp,
            closed: false,
        },
        stats,
    })
}

/// The segment at `base` has a final index: one that ends where the next
/// segment begins.
fn seal_finished(dir: &Path, base: u64, next_base: u64) -> bool {
    matches!(
        index::read_header(&dir.join(index_file_name(base))),
        DiskRead::Present(h) if h.base_offset == base && h.next_offset == next_base
    )
}

fn check_continuity(prev: &Segment, base: u64) -> Result<(), StorageError> {
    let expected = prev.next_offset.load(Ordering::Acquire);
    if expected != base {
        return Err(StorageError::Corrupt {
            path: prev.log_path.clone(),
            position: prev.data_len(),
            reason: format!(
                "segment ends at offset {expected} but the next segment starts at {base}"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
