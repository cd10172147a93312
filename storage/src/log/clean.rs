//! Swapping cleaned segments into the log.
//!
//! The storage engine does not decide what a cleaner keeps: it hands the
//! sealed segments out ([`Log::sealed_segments`]) and swaps in a rewritten
//! one ([`Log::replace_segments`]), so that the rule "either the old
//! segments or the new one, never neither and never both" lives here once.
//!
//! # Crash safety
//!
//! Replacing the sealed segments covering `[b, e)` with their cleaned
//! rewrite `b-e.log` takes these steps (the table with what a crash after
//! each leaves, and what the next open does, is in `docs/format.md`):
//!
//! 1. write `b-e.log.tmp` and fdatasync it;
//! 2. rename it to `b-e.log` and fsync the directory: the commit point;
//! 3. swap the new segment into the in-memory list (readers that hold the
//!    old ones keep reading their maps);
//! 4. delete the old segments' files, oldest first, and fsync the
//!    directory;
//! 5. write the new segment's index (atomically, as every index).
//!
//! Open removes every `*.log.tmp` (step 1 did not commit), and removes any
//! segment whose base lies inside the range of a cleaned segment, which
//! after step 2 can only be a replaced one a crash left behind
//! (`recovery::supersede`). A cleaned segment without an index is
//! rebuilt by a scan that allows its gaps.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::error::StorageError;
use crate::fsutil;
use crate::index::NO_TIMESTAMP;
use crate::mmap::{self, MapSlice};
use crate::segment::{self, DurablePoint, Segment, SegmentName, scan};

use super::{Inner, Log, new_segment, open_rw};

/// A sealed segment, as handed to a cleaner.
#[derive(Clone, Debug)]
pub struct SealedSegment {
    /// First offset of its range.
    pub base_offset: u64,
    /// Offset after its range (the next segment's base).
    pub next_offset: u64,
    /// Largest batch timestamp in it.
    pub max_timestamp: i64,
    /// It was written by an earlier cleaning.
    pub cleaned: bool,
    /// Its batches: a zero-copy view of the segment's map.
    pub bytes: Bytes,
    segment: Arc<Segment>,
}

/// What [`Log::replace_segments`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplaceOutcome {
    /// Segments replaced.
    pub segments_replaced: usize,
    /// Data bytes of the replaced segments.
    pub bytes_before: u64,
    /// Data bytes of the cleaned segment.
    pub bytes_after: u64,
}

impl Log {
    /// The sealed segments, oldest first: all but the active one and those
    /// whose seal is still queued. The same segments retention may delete.
    pub fn sealed_segments(&self) -> Result<Vec<SealedSegment>, StorageError> {
        let inner = &*self.inner;
        let segs: Vec<Arc<Segment>> = {
            // As in retention: the appender lock keeps a roll from changing
            // which segment is active while the list is taken.
            let _app = inner.appender.lock();
            let unsealed = inner.sealing.lock().len();
            let segs = inner.segments.read();
            let sealed = segs.len().saturating_sub(1 + unsealed);
            segs[..sealed].to_vec()
        };
        segs.into_iter()
            .map(|seg| {
                let len = seg.data_len();
                let slice = MapSlice::new(seg.map.clone(), 0, len).ok_or_else(|| {
                    StorageError::Corrupt {
                        path: seg.log_path.clone(),
                        position: 0,
                        reason: "sealed segment outside its map".into(),
                    }
                })?;
                Ok(SealedSegment {
                    base_offset: seg.base_offset,
                    next_offset: seg.next_offset.load(Ordering::Acquire),
                    max_timestamp: seg.max_timestamp.load(Ordering::Relaxed),
                    cleaned: seg.cleaned_end.is_some(),
                    bytes: Bytes::from_owner(slice),
                    segment: seg,
                })
            })
            .collect()
    }

    /// Replaces `old`, consecutive sealed segments from
    /// [`Log::sealed_segments`], with one cleaned segment holding
    /// `batches`: whole batches that keep their offsets, in increasing
    /// order, inside the range `old` covers. Offsets that are gone become
    /// gaps: a read from one gets the next batch after it. Crash-safe as
    /// described in the module docs; fails, changing nothing, if a segment
    /// of `old` is no longer in the log (retention deleted it meanwhile).
    pub fn replace_segments(
        &self,
        old: &[SealedSegment],
        batches: &[u8],
    ) -> Result<ReplaceOutcome, StorageError> {
        let inner = &*self.inner;
        let (first, last) = match (old.first(), old.last()) {
            (Some(f), Some(l)) => (f, l),
            _ => return Err(StorageError::InvalidConfig("nothing to replace".into())),
        };
        if old.windows(2).any(|w| w[0].next_offset != w[1].base_offset) {
            return Err(StorageError::InvalidConfig(
                "segments to replace are not consecutive".into(),
            ));
        }
        let name = SegmentName::cleaned(first.base_offset, last.next_offset);
        let path = inner.dir.join(name.log_file());
        let mut entries = Vec::new();
        let found = scan(
            batches,
            0,
            name.base,
            name.base,
            NO_TIMESTAMP,
            &mut entries,
            inner.config.index_interval_bytes,
            name.cleaned_end,
        );
        if found.end != batches.len() as u64 {
            return Err(StorageError::Corrupt {
                path,
                position: found.end,
                reason: format!(
                    "cleaned batches are not valid: {}",
                    found.stop.unwrap_or_default()
                ),
            });
        }
        // One swap or retention run at a time.
        let _maintenance = inner.maintenance.lock();
        inner.check_present(old)?;
        inner.check_failed()?;
        write_synced(&fsutil::tmp_path(&path), batches)?;
        fail::fail_point!("storage::clean::before_rename", |_| Err(injected()));
        std::fs::rename(fsutil::tmp_path(&path), &path)
            .map_err(|e| StorageError::io("rename cleaned segment", &path, e))?;
        fsutil::sync_dir(&inner.dir).map_err(|e| StorageError::io("fsync dir", &inner.dir, e))?;
        fail::fail_point!("storage::clean::after_rename", |_| Err(injected()));
        let file = open_rw(&path, false)?;
        let len = batches.len() as u64;
        let map =
            mmap::map_read_only(&file, len, len).map_err(|e| StorageError::io("mmap", &path, e))?;
        let durable = DurablePoint {
            len,
            next_offset: last.next_offset,
            max_timestamp: found.max_timestamp,
        };
        let seg = Arc::new(new_segment(
            &inner.dir,
            name,
            Arc::new(map),
            durable,
            Some(entries),
            None,
            &inner.config,
        ));
        {
            let mut segs = inner.segments.write();
            let at = segs
                .iter()
                .position(|s| Arc::ptr_eq(s, &first.segment))
                .expect("checked under the maintenance lock");
            segs.splice(at..at + old.len(), [seg.clone()]);
        }
        let bytes_before: u64 = old.iter().map(|s| s.bytes.len() as u64).sum();
        for (i, s) in old.iter().enumerate() {
            if i == 1 {
                fail::fail_point!("storage::clean::mid_delete", |_| Err(injected()));
            }
            segment::remove_files(&s.segment.log_path, &s.segment.index_path)?;
        }
        fsutil::sync_dir(&inner.dir).map_err(|e| StorageError::io("fsync dir", &inner.dir, e))?;
        fail::fail_point!("storage::clean::before_index", |_| Err(injected()));
        seg.write_index(durable)?;
        tracing::debug!(dir = %inner.dir.display(), segment = %name.log_file(), replaced = old.len(), bytes_before, bytes_after = len, "swapped in a cleaned segment");
        Ok(ReplaceOutcome {
            segments_replaced: old.len(),
            bytes_before,
            bytes_after: len,
        })
    }
}

impl Inner {
    /// Checks that `old` is still a run of the log's segments.
    fn check_present(&self, old: &[SealedSegment]) -> Result<(), StorageError> {
        let segs = self.segments.read();
        let at = segs.iter().position(|s| Arc::ptr_eq(s, &old[0].segment));
        let present = at.is_some_and(|at| {
            segs.len() > at + old.len()
                && old
                    .iter()
                    .zip(&segs[at..])
                    .all(|(o, s)| Arc::ptr_eq(&o.segment, s))
        });
        if present {
            Ok(())
        } else {
            Err(StorageError::InvalidConfig(
                "the segments to replace are no longer in the log".into(),
            ))
        }
    }
}

#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn injected() -> StorageError {
    StorageError::io(
        "clean",
        std::path::PathBuf::new(),
        std::io::Error::other("injected failure"),
    )
}

/// Writes `bytes` to a new file at `path` and fdatasyncs it.
fn write_synced(path: &std::path::Path, bytes: &[u8]) -> Result<(), StorageError> {
    let _ = std::fs::remove_file(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| StorageError::io("create cleaned segment", path, e))?;
    file.write_all(bytes)
        .map_err(|e| StorageError::io("write cleaned segment", path, e))?;
    segment::sync_file(&file, path)
}
