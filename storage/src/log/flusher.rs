//! Flushing, rolling and sealing: what moves `durable_offset`.
//!
//! # Crash safety
//!
//! `durable_offset` only advances after an fdatasync covering every byte below
//! it has succeeded. A roll does not wait for the disk: it creates the next
//! segment and queues the old one for sealing. The flusher thread seals
//! queued segments in order (fdatasync the file, then write its final index)
//! before it flushes the active segment, so a flush of the active segment
//! still vouches for the whole log below it. Recovery treats a segment
//! whose seal did not finish like an active segment (see
//! [`super::recovery`]).
//!
//! A failed flush is never retried: the page cache may have dropped the
//! dirty pages and marked them clean ("fsyncgate"), so a retry could
//! succeed without the data being on disk. The log records the failure,
//! refuses all further appends and flushes with [`StorageError::LogFailed`],
//! wakes every waiter with that error, and the durable watermark never
//! moves again.
//!
//! The recovery checkpoint (the active segment's `.index`) is rewritten
//! here after every `checkpoint_interval_bytes` of newly durable data, at
//! roll and at close. Its `valid_len` only covers flushed bytes, so a
//! checkpoint never vouches for data a crash could still lose; a failed
//! checkpoint write only makes the next recovery scan more.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::config::{FlushPolicy, LogConfig, MAX_SEGMENT_BYTES};
use crate::error::StorageError;
use crate::fsutil;
use crate::index::NO_TIMESTAMP;
use crate::mmap::{self, Writer};
use crate::segment::{self, DurablePoint, Segment, SegmentName, flush_range};

use super::{Appender, Inner, new_segment, open_rw};

/// A rolled segment waiting for its final flush and index.
pub(super) struct Sealing {
    seg: Arc<Segment>,
    /// The segment file, synced one last time by the seal.
    file: Arc<File>,
    target: DurablePoint,
}

#[derive(Default)]
pub(super) struct FlusherState {
    pub(super) pending: bool,
    pub(super) shutdown: bool,
}

impl Inner {
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

    pub(super) fn flusher_main(self: Arc<Inner>) {
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

    /// Seals the queued segments, oldest first: fdatasync the file, write
    /// its final index, advance the watermark to its end. The caller holds
    /// `flush_lock`, so one thread at a time seals.
    fn seal_queued(&self) -> Result<(), StorageError> {
        loop {
            self.check_failed()?;
            fail::fail_point!("storage::seal");
            let Some((seg, file, target)) = self
                .sealing
                .lock()
                .front()
                .map(|s| (s.seg.clone(), s.file.clone(), s.target))
            else {
                return Ok(());
            };
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

    /// One group commit: seal the rolled segments, sync everything the
    /// active segment published since the last flush, then advance the
    /// watermark. With `force`, the checkpoint is written even if the
    /// interval has not passed.
    pub(super) fn flush_once(&self, force_checkpoint: bool) -> Result<(), StorageError> {
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
    pub(super) fn roll(&self, app: &mut Appender) -> Result<(), StorageError> {
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
        // The timestamps a segment's index and checkpoint record are its
        // own, as a scan of it finds them.
        app.max_timestamp = NO_TIMESTAMP;
        assert!(
            self.segments
                .read()
                .last()
                .is_some_and(|last| Arc::ptr_eq(last, &old)),
            "only the last segment is written; every one before it is sealed"
        );
        // The seal syncs the old file off this thread, so appends to the
        // new segment do not wait for it.
        self.sealing.lock().push_back(Sealing {
            seg: old,
            file: old_writer.into_file(),
            target,
        });
        self.segments.write().push(new_seg);
        let mut st = self.flusher_state.lock();
        st.pending = true;
        self.flusher_cv.notify_one();
        Ok(())
    }
}

/// Creates, preallocates and maps a new, empty segment file.
fn create_segment(
    dir: &Path,
    base_offset: u64,
    config: &LogConfig,
) -> Result<(Arc<Segment>, Writer), StorageError> {
    let name = SegmentName::plain(base_offset);
    let path = dir.join(name.log_file());
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
    let seg = new_segment(dir, name, map, durable, Some(Vec::new()), None, config);
    Ok((Arc::new(seg), writer))
}
