//! Opening a log directory: recovery after a clean close or a crash.
//!
//! # Crash safety
//!
//! The recovery checkpoint is the active segment's `.index` file, rewritten
//! atomically (tmp, fsync, rename, directory fsync) by the flusher; its
//! `valid_len` only covers flushed bytes. Open trusts sealed segments'
//! indexes and the checkpointed prefix of the last segment, and scans only
//! the last segment past its checkpoint, so recovery time follows the
//! un-checkpointed tail (at most one checkpoint interval plus whatever was
//! not yet flushed), not the log size.
//!
//! A scan accepts only batches whose framing, CRC and offsets continue the
//! log, so the end it finds is always a batch boundary. Everything past that
//! end is reset to zeros and flushed before the log is used, so a later,
//! shorter life of the segment cannot be followed by a stale batch that
//! looks valid after the next crash. Segments whose seal had not finished
//! are recovered like the active one; if one lost its tail, nothing after it
//! was durable and the log ends there. Every step is idempotent, so a crash
//! during recovery is handled by running it again. See `docs/format.md` for
//! the crash analysis of each step.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::config::{LogConfig, MAX_SEGMENT_BYTES};
use crate::error::StorageError;
use crate::fsutil;
use crate::index::{self, DiskRead, IndexEntry, IndexHeader, NO_TIMESTAMP};
use crate::mmap::{self, Writer};
use crate::segment::{
    self, DurablePoint, Scan, Segment, SegmentName, index_file_name, log_file_name, scan,
};

use super::{Appender, new_segment, open_rw};

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
    /// Bytes past the valid end, up to the last non-zero one, in the
    /// segments recovered for appending: records lost to a torn tail.
    pub lost_bytes: u64,
    /// Segments whose index was rebuilt by a full scan.
    pub rebuilt_indexes: usize,
    /// Segments removed because they followed a segment whose seal had not
    /// finished and whose tail was lost.
    pub dropped_segments: usize,
}

pub(super) struct Recovered {
    pub(super) segments: Vec<Arc<Segment>>,
    pub(super) appender: Appender,
    pub(super) stats: RecoveryStats,
}

/// Recovers the log in `dir`, step by step as in `docs/format.md`: list the
/// segments, open the rolled ones (sealed by their index, the rest like an
/// active segment), then the active one, and make the result durable.
pub(super) fn recover(dir: &Path, config: &LogConfig) -> Result<Recovered, StorageError> {
    let names = segment_names(dir)?;
    let mut stats = RecoveryStats::default();
    let unfinished_from = first_unfinished_seal(dir, &names);
    let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(names.len());
    let cut = open_rolled(
        dir,
        &names,
        unfinished_from,
        config,
        &mut segments,
        &mut stats,
    )?;
    let (active, writer) = match cut {
        Some(cut) => cut,
        None => open_last(dir, &names, &mut segments, config, &mut stats)?,
    };
    // Removed files (stray indexes, dropped segments) stay removed.
    fsutil::sync_dir(dir).map_err(|e| StorageError::io("fsync dir", dir, e))?;
    Ok(assemble(dir, segments, active, writer, stats))
}

/// Creates the directory if needed and lists its segments, oldest first.
/// A new log starts with one segment at offset 0; a log whose last segment
/// is a cleaned one (which is never appended to) gets a new, empty one at
/// its end.
fn segment_names(dir: &Path) -> Result<Vec<SegmentName>, StorageError> {
    std::fs::create_dir_all(dir).map_err(|e| StorageError::io("create dir", dir, e))?;
    let mut names = list_segments(dir)?;
    match names.last() {
        None => names.push(SegmentName::plain(0)),
        Some(SegmentName {
            cleaned_end: Some(end),
            ..
        }) => names.push(SegmentName::plain(*end)),
        Some(_) => {}
    }
    Ok(names)
}

/// Lists the directory: segments, sorted; removes stray temporary files,
/// orphaned index files, and the segments a cleaned segment superseded.
fn list_segments(dir: &Path) -> Result<Vec<SegmentName>, StorageError> {
    let mut logs = Vec::new();
    let mut indexes = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| StorageError::io("read dir", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("read dir", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".index.tmp") || name.ends_with(".log.tmp") {
            // An index being rewritten, or a cleaned segment that was not
            // renamed into place: neither is part of the log yet.
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        if let Some(n) = name.strip_suffix(".log").and_then(SegmentName::parse_stem) {
            logs.push(n);
        } else if let Some(n) = name
            .strip_suffix(".index")
            .and_then(SegmentName::parse_stem)
        {
            indexes.push(n);
        }
    }
    let (kept, superseded) = supersede(logs);
    for name in superseded {
        tracing::info!(dir = %dir.display(), file = %name.log_file(), "removing a segment a cleaned segment replaced");
        segment::remove_files(&dir.join(name.log_file()), &dir.join(name.index_file()))?;
    }
    for name in indexes {
        if kept.binary_search(&name).is_err() {
            let _ = std::fs::remove_file(dir.join(name.index_file()));
        }
    }
    Ok(kept)
}

/// Splits segment files into those that make up the log and those a
/// cleaned segment replaced. A cleaned segment `[b, e)` is renamed into
/// place only once it is complete and synced, and the segments it replaces
/// are deleted only after that, so any other segment whose base lies in
/// `[b, e)` is one of them, left by a crash before its deletion; of two
/// cleaned segments with the same base, the one covering more is newer.
/// Both lists are sorted.
pub(super) fn supersede(mut logs: Vec<SegmentName>) -> (Vec<SegmentName>, Vec<SegmentName>) {
    // By base, and for one base the widest cleaned segment first, the
    // segment as appended last.
    logs.sort_unstable_by_key(|n| (n.base, std::cmp::Reverse(n.cleaned_end.unwrap_or(0))));
    let mut kept: Vec<SegmentName> = Vec::with_capacity(logs.len());
    let mut superseded = Vec::new();
    let mut covered_until = 0;
    for name in logs {
        if !kept.is_empty() && name.base < covered_until {
            superseded.push(name);
            continue;
        }
        if let Some(end) = name.cleaned_end {
            covered_until = end;
        }
        kept.push(name);
    }
    kept.sort_unstable();
    superseded.sort_unstable();
    (kept, superseded)
}

/// The position in `names` of the first segment whose seal did not finish
/// before a crash. Seals finish in roll order, so these are the segments
/// after the last finished seal. Before that point a bad segment is
/// damage, and an error. A cleaned segment was sealed before it was
/// cleaned, so it always counts as finished.
fn first_unfinished_seal(dir: &Path, names: &[SegmentName]) -> usize {
    let rolled = names.len() - 1;
    (0..rolled)
        .rev()
        .find(|&i| {
            names[i].cleaned_end.is_some() || seal_finished(dir, names[i].base, names[i + 1].base)
        })
        .map_or(0, |i| i + 1)
}

/// Opens every segment but the last into `segments`, oldest first. Returns
/// the segment the log now ends at if one whose seal did not finish lost
/// its tail; the segments after it are gone by then.
fn open_rolled(
    dir: &Path,
    names: &[SegmentName],
    unfinished_from: usize,
    config: &LogConfig,
    segments: &mut Vec<Arc<Segment>>,
    stats: &mut RecoveryStats,
) -> Result<Option<(Arc<Segment>, Writer)>, StorageError> {
    let rolled = &names[..names.len() - 1];
    for (i, &name) in rolled.iter().enumerate() {
        let base = name.base;
        if i < unfinished_from {
            let seg = open_sealed(dir, name, config, stats)?;
            if let Some(prev) = segments.last() {
                check_continuity(prev, base)?;
            }
            segments.push(Arc::new(seg));
            continue;
        }
        // Its index is at most a checkpoint: recover it like the active
        // segment (scan past the checkpoint, zero a torn tail).
        let (seg, writer) = open_active(dir, base, config, stats)?;
        if let Some(prev) = segments.last() {
            check_continuity(prev, base)?;
        }
        if seg.next_offset.load(Ordering::Acquire) == names[i + 1].base {
            segments.push(seg);
            continue;
        }
        drop_segments_after(dir, &seg, &names[i + 1..], stats)?;
        return Ok(Some((seg, writer)));
    }
    Ok(None)
}

/// `seg` lost its tail (the machine crashed before its seal's flush), so
/// nothing after it can follow on: the log ends here, as it does at a torn
/// tail of the active segment, and the segments in `dropped` are removed.
/// Nothing lost was durable: the watermark waits for the seal.
fn drop_segments_after(
    dir: &Path,
    seg: &Segment,
    dropped: &[SegmentName],
    stats: &mut RecoveryStats,
) -> Result<(), StorageError> {
    tracing::warn!(
        path = %seg.log_path.display(),
        position = seg.data_len(),
        dropped_segments = dropped.len(),
        "segment lost its tail before it was sealed; the log ends here"
    );
    for name in dropped {
        segment::remove_files(&dir.join(name.log_file()), &dir.join(name.index_file()))?;
    }
    stats.dropped_segments = dropped.len();
    Ok(())
}

/// Opens the last segment for appending. An empty last segment whose base
/// does not continue the log (e.g. left by an external copy) holds
/// nothing, so it is removed and the segment before it reopened for
/// appending; a non-empty one is damage.
fn open_last(
    dir: &Path,
    names: &[SegmentName],
    segments: &mut Vec<Arc<Segment>>,
    config: &LogConfig,
    stats: &mut RecoveryStats,
) -> Result<(Arc<Segment>, Writer), StorageError> {
    let mut last = names[names.len() - 1].base;
    loop {
        let (active, writer) = open_active(dir, last, config, stats)?;
        let Some(prev) = segments.last() else {
            return Ok((active, writer));
        };
        if last == prev.next_offset.load(Ordering::Acquire) {
            return Ok((active, writer));
        }
        if active.data_len() > 0 {
            return Err(discontinuity(prev, last));
        }
        tracing::warn!(path = %active.log_path.display(), "removing an empty segment that does not continue the log");
        let (log_path, index_path) = (active.log_path.clone(), active.index_path.clone());
        // Unmap before removing, and before the previous segment is mapped
        // again for writing.
        drop(writer);
        drop(active);
        for p in [log_path, index_path] {
            let _ = std::fs::remove_file(p);
        }
        if let Some(end) = segments.last().and_then(|p| p.cleaned_end) {
            // A cleaned segment is never appended to: a new one starts
            // where its range ends.
            last = end;
            continue;
        }
        let prev = segments.pop().expect("checked above");
        last = prev.base_offset;
        drop(prev);
    }
}

/// The recovered log: `segments` followed by the active one.
fn assemble(
    dir: &Path,
    mut segments: Vec<Arc<Segment>>,
    active: Arc<Segment>,
    writer: Writer,
    mut stats: RecoveryStats,
) -> Recovered {
    segments.push(active.clone());
    stats.segments = segments.len();
    let next_offset = active.next_offset.load(Ordering::Acquire);
    let max_timestamp = active.max_timestamp.load(Ordering::Acquire);
    tracing::debug!(dir = %dir.display(), ?stats, next_offset, "log recovered");
    Recovered {
        segments,
        appender: Appender {
            active,
            writer,
            next_offset,
            max_timestamp,
            closed: false,
        },
        stats,
    }
}

/// Opens a sealed segment: trusts its index header (64 bytes read), or
/// rebuilds the index by a full scan if it is missing or corrupt.
fn open_sealed(
    dir: &Path,
    name: SegmentName,
    config: &LogConfig,
    stats: &mut RecoveryStats,
) -> Result<Segment, StorageError> {
    let path = dir.join(name.log_file());
    let index_path = dir.join(name.index_file());
    let file = open_rw(&path, false)?;
    let cap = file_len(&file, &path)?.min(MAX_SEGMENT_BYTES);
    match index::read_header(&index_path) {
        DiskRead::Present(h)
            if h.base_offset == name.base
                && h.valid_len <= cap
                && name.cleaned_end.is_none_or(|end| h.next_offset == end) =>
        {
            return trust_sealed(dir, name, &file, cap, h, config);
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
    rebuild_sealed(dir, name, &file, cap, config, stats)
}

/// Maps a sealed segment read-only as its final index describes it; its
/// entries load lazily on the first read.
fn trust_sealed(
    dir: &Path,
    name: SegmentName,
    file: &File,
    cap: u64,
    h: IndexHeader,
    config: &LogConfig,
) -> Result<Segment, StorageError> {
    let map = mmap::map_read_only(file, cap, h.valid_len)
        .map_err(|e| StorageError::io("mmap", dir.join(name.log_file()), e))?;
    let durable = DurablePoint {
        len: h.valid_len,
        next_offset: h.next_offset,
        max_timestamp: h.max_timestamp,
    };
    let mut seg = new_segment(dir, name, Arc::new(map), durable, None, Some(h), config);
    *seg.checkpoint.lock() = h.valid_len;
    seg.trusted_len = h.valid_len;
    Ok(seg)
}

/// Scans a sealed segment whose index is unusable from 0 and writes a
/// fresh index. Later segments follow it, so any non-zero byte after the
/// scan's end is damage to report, never a tail to cut.
fn rebuild_sealed(
    dir: &Path,
    name: SegmentName,
    file: &File,
    cap: u64,
    config: &LogConfig,
    stats: &mut RecoveryStats,
) -> Result<Segment, StorageError> {
    let base = name.base;
    let path = dir.join(name.log_file());
    let (map, mut writer) =
        mmap::map_writable(file, cap, 0).map_err(|e| StorageError::io("mmap", &path, e))?;
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
        name.cleaned_end,
    );
    stats.scanned_bytes += found.end;
    let (nonzero, _) = segment::find_nonzero(file, &writer, found.end, cap);
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
        // A cleaned segment holds its whole range, gaps included.
        next_offset: name.cleaned_end.unwrap_or(found.next_offset),
        max_timestamp: found.max_timestamp,
    };
    let seg = new_segment(dir, name, map, durable, Some(entries), None, config);
    seg.write_index(durable)?;
    Ok(seg)
}

/// Where the scan of a segment being opened for appending starts: its
/// checkpoint, or the start of the segment.
struct Checkpoint {
    len: u64,
    next_offset: u64,
    max_timestamp: i64,
    entries: Vec<IndexEntry>,
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
    let file = open_rw(&path, true)?;
    let cap = extend_to_segment_bytes(&file, &path, config)?;
    let checkpoint = load_checkpoint(&dir.join(index_file_name(base)), base, cap, stats);
    // Nothing else maps the file yet, so the whole of it is "unpublished"
    // until the scan decides where the valid data ends.
    let (map, mut writer) =
        mmap::map_writable(&file, cap, 0).map_err(|e| StorageError::io("mmap", &path, e))?;
    let mut entries = checkpoint.entries;
    let bytes = writer.unpublished(0, cap).unwrap_or(&[]);
    let found = scan(
        bytes,
        checkpoint.len,
        base,
        checkpoint.next_offset,
        checkpoint.max_timestamp,
        &mut entries,
        config.index_interval_bytes,
        None,
    );
    stats.scanned_bytes += found.end - checkpoint.len;
    clear_tail(&file, &path, &mut writer, &found, cap, stats)?;
    // What survived a crash may sit only in the page cache (a process
    // crash): flush it before calling it durable.
    segment::flush_range(&writer.flush_handle(), &path, checkpoint.len, found.end)?;
    writer.publish(found.end);
    let durable = DurablePoint {
        len: found.end,
        next_offset: found.next_offset,
        max_timestamp: found.max_timestamp,
    };
    let name = SegmentName::plain(base);
    let mut seg = new_segment(dir, name, map, durable, Some(entries), None, config);
    *seg.checkpoint.lock() = checkpoint.len;
    seg.trusted_len = checkpoint.len;
    if found.end > checkpoint.len || checkpoint.len == 0 {
        seg.write_index(durable)?;
    }
    Ok((Arc::new(seg), writer))
}

/// Grows the file to `segment_bytes` if it is shorter (not mapped yet, so
/// that is safe) and returns how much of it to map.
fn extend_to_segment_bytes(
    file: &File,
    path: &Path,
    config: &LogConfig,
) -> Result<u64, StorageError> {
    let len = file_len(file, path)?;
    if len < config.segment_bytes {
        segment::preallocate(file, path, config.segment_bytes)?;
    }
    Ok(len.max(config.segment_bytes).min(MAX_SEGMENT_BYTES))
}

/// The segment's checkpoint if its index is usable, else the start of the
/// segment (a full scan).
fn load_checkpoint(
    index_path: &Path,
    base: u64,
    cap: u64,
    stats: &mut RecoveryStats,
) -> Checkpoint {
    match index::read(index_path) {
        DiskRead::Present((h, entries)) if h.base_offset == base && h.valid_len <= cap => {
            return Checkpoint {
                len: h.valid_len,
                next_offset: h.next_offset,
                max_timestamp: h.max_timestamp,
                entries,
            };
        }
        DiskRead::Present(_) | DiskRead::Unreadable(_) => {
            tracing::warn!(path = %index_path.display(), "checkpoint unusable; scanning the segment from the start");
            stats.rebuilt_indexes += 1;
        }
        DiskRead::Missing => {}
    }
    Checkpoint {
        len: 0,
        next_offset: base,
        max_timestamp: NO_TIMESTAMP,
        entries: Vec::new(),
    }
}

/// Resets everything past the valid end to zeros, so that the next appends
/// are never followed by leftovers that could look valid after a later
/// crash.
///
/// Only non-zero bytes past the end are damage: a clean close, a fresh
/// segment and a crash that tore nothing all leave just the preallocated
/// zeros there, which is how every log ends, so that is logged at debug.
/// Anything else lost records, and is a warning that says how many bytes.
fn clear_tail(
    file: &File,
    path: &Path,
    writer: &mut Writer,
    found: &Scan,
    cap: u64,
    stats: &mut RecoveryStats,
) -> Result<(), StorageError> {
    let end = found.end;
    let reset = segment::zero_tail(file, path, writer, end, cap)?;
    stats.zeroed_bytes += reset.zeroed_bytes;
    stats.lost_bytes += reset.lost_bytes;
    let reason = found.stop.as_deref().unwrap_or("end of the segment");
    if reset.lost_bytes > 0 {
        tracing::warn!(
            path = %path.display(),
            position = end,
            lost_bytes = reset.lost_bytes,
            zeroed = reset.zeroed_bytes,
            %reason,
            "torn tail: cut the log at the last valid batch"
        );
    } else {
        tracing::debug!(
            path = %path.display(),
            position = end,
            zeroed = reset.zeroed_bytes,
            %reason,
            "log ends here; only preallocated zeros follow"
        );
    }
    Ok(())
}

fn file_len(file: &File, path: &Path) -> Result<u64, StorageError> {
    Ok(file
        .metadata()
        .map_err(|e| StorageError::io("stat", path, e))?
        .len())
}

/// The segment at `base` has a final index: one that ends where the next
/// segment begins.
pub(super) fn seal_finished(dir: &Path, base: u64, next_base: u64) -> bool {
    matches!(
        index::read_header(&dir.join(index_file_name(base))),
        DiskRead::Present(h) if h.base_offset == base && h.next_offset == next_base
    )
}

fn check_continuity(prev: &Segment, base: u64) -> Result<(), StorageError> {
    if prev.next_offset.load(Ordering::Acquire) != base {
        return Err(discontinuity(prev, base));
    }
    Ok(())
}

/// The error for a segment at `base` that does not start where `prev` ends.
fn discontinuity(prev: &Segment, base: u64) -> StorageError {
    let expected = prev.next_offset.load(Ordering::Acquire);
    StorageError::Corrupt {
        path: prev.log_path.clone(),
        position: prev.data_len(),
        reason: format!("segment ends at offset {expected} but the next segment starts at {base}"),
    }
}
