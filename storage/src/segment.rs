//! One segment: a preallocated `.log` file of concatenated batches, its two
//! maps, and its sparse index.
//!
//! # Crash safety
//!
//! * Bytes are appended with `pwritev` into the file, above the published
//!   end (see [`crate::mmap`]); a crash can lose or tear any of them that
//!   were not yet flushed, in any order at page granularity.
//! * The file is preallocated with `fallocate` before it is mapped, so an
//!   append never needs a new disk block: a full disk fails the segment
//!   roll, before anything was acked into the new segment, rather than an
//!   append in the middle of it. (On a filesystem without `fallocate`,
//!   `set_len` makes a sparse file, and a full disk fails that append with
//!   the write's error instead.) The read map covers the whole preallocated
//!   length, which never shrinks, so reading it never faults past the end
//!   of the file.
//! * Recovery ([`scan`]) accepts a batch only if its header and CRC are
//!   valid ([`check_framing`]), it lies inside the file, its leader epoch is
//!   the broker's (the CRC covers neither it nor the base offset), and its
//!   base offset equals the offset the previous batch ended at. The first failure is the
//!   end of the log. A torn write therefore always ends the log at a batch
//!   boundary, never inside one, and a stale batch left over from an
//!   earlier, longer life of the file cannot be mistaken for a new one
//!   (its offsets would not continue). [`zero_tail`] then zeroes every
//!   non-zero byte past the end so that the next appends are not followed
//!   by leftovers that could look valid after a later crash.
//! * The preallocated part of a segment that was never written reads as
//!   zeros, so "non-zero bytes past the end" is exactly what a crash left of
//!   writes that did not survive whole: [`zero_tail`] measures it
//!   ([`TailReset::lost_bytes`]) before resetting the tail, so that recovery
//!   can tell a torn tail from a clean one.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};

use bytes::Bytes;
use ferry_proto::batch::{BatchHeader, HEADER_LEN, LEADER_EPOCH, MAX_BATCH_BYTES, check_framing};
use parking_lot::{Mutex, RwLock};
use rustix::fs::{FallocateFlags, SeekFrom};
use rustix::io::Errno;

use crate::error::StorageError;
use crate::index::{self, DiskRead, IndexEntry, IndexHeader, NO_TIMESTAMP};
use crate::mmap::{FlushHandle, MapSlice, ReadMap, Writer};

/// Bytes checked per step when looking for a non-zero tail.
pub const ZERO_CHECK_CHUNK_BYTES: u64 = 64 * 1024;
/// The page size assumed when aligning ranges (a multiple of the real one
/// on the platforms Ferry runs on is all that matters).
pub const PAGE_BYTES: u64 = 4096;

/// File name of a segment's data.
pub fn log_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.log")
}

/// File name of a segment's index.
pub fn index_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.index")
}

/// Which files hold a segment. A segment as appended is named by its base
/// offset alone; a segment the cleaner rewrote also names the end of the
/// range of offsets it replaced (`BASE-END.log`), because a cleaned segment
/// has gaps and its last batch may end well before `END`. The end in the
/// name is what lets recovery tell, with no other file, which older
/// segments a cleaned one supersedes (see `docs/format.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    /// Offset of the range's first offset.
    pub base: u64,
    /// For a cleaned segment, the offset after its range.
    pub cleaned_end: Option<u64>,
}

impl SegmentName {
    /// A segment as appended.
    pub fn plain(base: u64) -> SegmentName {
        SegmentName {
            base,
            cleaned_end: None,
        }
    }

    /// A cleaned segment holding what is left of `[base, end)`.
    pub fn cleaned(base: u64, end: u64) -> SegmentName {
        SegmentName {
            base,
            cleaned_end: Some(end),
        }
    }

    fn stem(&self) -> String {
        match self.cleaned_end {
            None => format!("{:020}", self.base),
            Some(end) => format!("{:020}-{end:020}", self.base),
        }
    }

    /// The `.log` file's name.
    pub fn log_file(&self) -> String {
        format!("{}.log", self.stem())
    }

    /// The `.index` file's name.
    pub fn index_file(&self) -> String {
        format!("{}.index", self.stem())
    }

    /// Parses a file stem (`BASE` or `BASE-END`, 20 digits each).
    pub fn parse_stem(stem: &str) -> Option<SegmentName> {
        let number = |s: &str| {
            (s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
        };
        match stem.split_once('-') {
            None => number(stem).map(SegmentName::plain),
            Some((base, end)) => {
                let (base, end) = (number(base)?, number(end)?);
                (end > base).then_some(SegmentName::cleaned(base, end))
            }
        }
    }
}

/// The durable prefix of a segment: flushed bytes and what they hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurablePoint {
    /// Bytes flushed.
    pub len: u64,
    /// Offset after the last flushed batch.
    pub next_offset: u64,
    /// Largest timestamp among flushed batches.
    pub max_timestamp: i64,
}

/// A segment, shared by the appender, the flusher and readers.
#[derive(Debug)]
pub struct Segment {
    pub base_offset: u64,
    pub log_path: PathBuf,
    pub index_path: PathBuf,
    pub map: Arc<ReadMap>,
    /// Offset after the last published batch.
    pub next_offset: AtomicU64,
    /// Largest published batch timestamp.
    pub max_timestamp: AtomicI64,
    pub durable: Mutex<DurablePoint>,
    /// Sparse entries; `None` until loaded (sealed segments load lazily).
    pub entries: RwLock<Option<Vec<IndexEntry>>>,
    /// The header read at open, used to load the entries lazily.
    pub lazy_header: Option<IndexHeader>,
    /// `valid_len` of the last index written; serialises index writes.
    pub checkpoint: Mutex<u64>,
    pub index_interval_bytes: u32,
    /// For a cleaned segment, the end of the range it holds; its batches
    /// then only increase in offset, with gaps between them.
    pub cleaned_end: Option<u64>,
    /// Bytes at the start that recovery trusted to an index or checkpoint
    /// written by an earlier run instead of checking them. A read checks
    /// the CRC of each batch it serves from them, so damage to a flushed
    /// prefix (a bad disk, not a crash) is an error, never data.
    pub trusted_len: u64,
}

/// What [`scan`] found.
#[derive(Debug)]
pub struct Scan {
    /// End of the last valid batch.
    pub end: u64,
    /// Offset after the last valid batch.
    pub next_offset: u64,
    /// Largest timestamp seen (or the starting value).
    pub max_timestamp: i64,
    /// Why the scan stopped before `limit`, if it did.
    pub stop: Option<String>,
}

/// Whether the batch at `position` gets an index entry, given the position
/// of the previous entry. A pure function of the positions, so an index
/// built while appending equals one rebuilt by scanning.
pub fn wants_entry(position: u64, last_entry: Option<&IndexEntry>, interval_bytes: u32) -> bool {
    let last = last_entry.map_or(0, |e| u64::from(e.position));
    position > last && position - last >= u64::from(interval_bytes.max(1))
}

/// Walks batches in `bytes[start..]`, which must be the segment's bytes from
/// position 0, checking framing, CRC and offset continuity, adding index
/// entries to `entries`. Never panics or allocates from a length on disk.
///
/// In a segment as appended each batch starts where the previous one
/// ended. In a cleaned segment (`cleaned_end` is set) offsets only have to
/// increase and stay below the end of its range: such a file is written
/// whole, synced and renamed into place, so it has no stale tail for the
/// stricter rule to guard against.
#[allow(clippy::too_many_arguments)]
pub fn scan(
    bytes: &[u8],
    start: u64,
    base_offset: u64,
    expected_next: u64,
    max_timestamp: i64,
    entries: &mut Vec<IndexEntry>,
    interval_bytes: u32,
    cleaned_end: Option<u64>,
) -> Scan {
    let mut pos = start;
    let mut next = expected_next;
    let mut max_ts = max_timestamp;
    let limit = bytes.len() as u64;
    let stop = loop {
        if pos >= limit {
            break None;
        }
        let rest = &bytes[pos as usize..];
        if rest.len() >= HEADER_LEN && rest[..HEADER_LEN].iter().all(|b| *b == 0) {
            break Some("zero header".to_string());
        }
        let header = match check_framing(rest) {
            Ok(h) => h,
            Err(e) => break Some(e.to_string()),
        };
        // The CRC does not cover the leader epoch; the log always holds
        // the one the broker wrote, so any other value is damage.
        if header.leader_epoch != LEADER_EPOCH {
            break Some(format!("leader epoch {}", header.leader_epoch));
        }
        if let Err(reason) = check_base(&header, next, cleaned_end) {
            break Some(reason);
        }
        let relative = header.base_offset - base_offset;
        let Ok(relative) = u32::try_from(relative) else {
            break Some("base offset too far from the segment's base".into());
        };
        let Some(batch_next) = header.last_offset().checked_add(1) else {
            break Some("offset overflow".into());
        };
        let Ok(position) = u32::try_from(pos) else {
            break Some("position beyond u32".into());
        };
        if wants_entry(pos, entries.last(), interval_bytes) {
            entries.push(IndexEntry {
                relative_offset: relative,
                position,
                max_timestamp_before: max_ts,
            });
        }
        next = batch_next;
        max_ts = max_ts.max(header.max_timestamp);
        pos += u64::from(header.batch_len);
    };
    Scan {
        end: pos,
        next_offset: next,
        max_timestamp: max_ts,
        stop,
    }
}

/// Checks that a batch may follow one that ended at `expected`: it starts
/// exactly there, or, in a cleaned segment, anywhere after it and ends
/// within the segment's range.
pub fn check_base(
    header: &BatchHeader,
    expected: u64,
    cleaned_end: Option<u64>,
) -> Result<(), String> {
    let ok = match cleaned_end {
        None => header.base_offset == expected,
        Some(end) => header.base_offset >= expected && header.next_offset() <= end,
    };
    if ok {
        return Ok(());
    }
    Err(match cleaned_end {
        None => format!(
            "base offset {} where {expected} was expected",
            header.base_offset
        ),
        Some(end) => format!(
            "batch [{}, {}) outside [{expected}, {end}) of a cleaned segment",
            header.base_offset,
            header.next_offset()
        ),
    })
}

/// Extends `file` to `len` bytes with real blocks, so later writes through
/// a map cannot fail for lack of space. Falls back to `set_len` (a sparse
/// file) where `fallocate` is unsupported.
pub fn preallocate(file: &File, path: &Path, len: u64) -> Result<(), StorageError> {
    match rustix::fs::fallocate(file, FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(Errno::OPNOTSUPP | Errno::NOSYS) => {
            tracing::warn!(path = %path.display(), "fallocate unsupported; segment file is sparse");
            file.set_len(len)
                .map_err(|e| StorageError::io("set_len", path, e))
        }
        Err(e) => Err(StorageError::io("fallocate", path, e.into())),
    }
}

/// The data regions of `file` within `[from, to)`, via SEEK_DATA/SEEK_HOLE,
/// so that the cost of looking at a preallocated tail follows what was
/// written, not the file size. Falls back to the whole range.
fn data_regions(file: &File, from: u64, to: u64) -> Vec<(u64, u64)> {
    let mut regions = Vec::new();
    let mut pos = from;
    while pos < to {
        let start = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(Errno::NXIO) => break,
            Err(_) => {
                regions.push((pos, to));
                break;
            }
        };
        if start >= to {
            break;
        }
        let end = match rustix::fs::seek(file, SeekFrom::Hole(start)) {
            Ok(e) => e.min(to),
            Err(_) => to,
        };
        if end <= start {
            regions.push((start, to));
            break;
        }
        regions.push((start, end));
        pos = end;
    }
    regions
}

/// A chunk's worth of zeros to compare against.
static ZERO_CHUNK: [u8; ZERO_CHECK_CHUNK_BYTES as usize] = [0; ZERO_CHECK_CHUNK_BYTES as usize];

/// `bytes` (at most one chunk) are all zero. A slice comparison is a
/// memcmp, which stays fast in unoptimised builds too: a byte loop there
/// made every open of a 64 MiB segment take a tenth of a second, as it
/// reads the megabytes of zeros that readahead cached.
fn all_zero(bytes: &[u8]) -> bool {
    match ZERO_CHUNK.get(..bytes.len()) {
        Some(zeros) => bytes == zeros,
        None => bytes.iter().all(|b| *b == 0),
    }
}

/// Positions of non-zero bytes found in `[from, to)` of the unpublished
/// part of a segment: `(first non-zero position, ranges to zero)`.
pub fn find_nonzero(
    file: &File,
    writer: &Writer,
    from: u64,
    to: u64,
) -> (Option<u64>, Vec<(u64, u64)>) {
    let mut first = None;
    let mut dirty = Vec::new();
    for (start, end) in data_regions(file, from, to) {
        let mut chunk = start;
        while chunk < end {
            let chunk_end =
                (chunk - chunk % ZERO_CHECK_CHUNK_BYTES + ZERO_CHECK_CHUNK_BYTES).min(end);
            if let Some(bytes) = writer.unpublished(chunk, chunk_end)
                && !all_zero(bytes)
                && let Some(i) = bytes.iter().position(|b| *b != 0)
            {
                first.get_or_insert(chunk + i as u64);
                match dirty.last_mut() {
                    Some((_, e)) if *e == chunk => *e = chunk_end,
                    _ => dirty.push((chunk, chunk_end)),
                }
            }
            chunk = chunk_end;
        }
    }
    (first, dirty)
}

/// What [`zero_tail`] found past the valid end, and what it reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TailReset {
    /// Bytes from the valid end up to and including the last non-zero byte
    /// after it: what is left of writes that did not survive whole. Zero
    /// when the tail is only the preallocated, never-written zeros.
    pub lost_bytes: u64,
    /// Bytes reset to zeros: non-zero chunks, or the whole rest of the
    /// file where the filesystem resets it in one call.
    pub zeroed_bytes: u64,
}

/// Makes `[from, to)` read as zeros on disk, at a cost that follows what
/// is actually there rather than `to - from`, and reports how much of it
/// was not zero.
///
/// Only the regions SEEK_DATA reports can hold anything but zeros; they
/// are read first to find the last non-zero byte. If there is none, the
/// partial page at `from` needs nothing. Otherwise it is checked and zeroed
/// with writes. If SEEK_DATA reports anything beyond that page (torn
/// writes, or just pages that readahead pulled into the page cache), the
/// rest is reset with `fallocate(FALLOC_FL_ZERO_RANGE)`, which turns it
/// back into unwritten extents and drops its cached pages without reading
/// them, then the file is fsynced. That reset runs even when those pages
/// hold only zeros: leaving the cached pages (including the readahead
/// that reading them here triggers) would make them count as data at the
/// next open, which would read more each time (one readahead window per
/// open). Without ZERO_RANGE support, falls back to zeroing the non-zero
/// chunks with writes.
pub fn zero_tail(
    file: &File,
    path: &Path,
    writer: &mut Writer,
    from: u64,
    to: u64,
) -> Result<TailReset, StorageError> {
    let regions = data_regions(file, from, to);
    let Some(&(_, last_end)) = regions.last() else {
        return Ok(TailReset::default());
    };
    let lost_bytes = last_nonzero(writer, &regions).map_or(0, |last| last + 1 - from);
    let page_end = (from.div_ceil(PAGE_BYTES) * PAGE_BYTES).min(to);
    let mut zeroed = 0;
    if lost_bytes > 0 {
        zeroed += zero_nonzero(file, path, writer, from, page_end)?;
    }
    if last_end > page_end {
        let len = to - page_end;
        let flags = FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(file, flags, page_end, len) {
            Ok(()) => {
                file.sync_all()
                    .map_err(|e| StorageError::io("fsync zeroed tail", path, e))?;
                zeroed += len;
            }
            Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) if lost_bytes > 0 => {
                zeroed += zero_nonzero(file, path, writer, page_end, to)?;
            }
            // All zeros already, and no cheap way to drop the cached pages.
            Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {}
            Err(e) => return Err(StorageError::io("fallocate zero range", path, e.into())),
        }
    }
    Ok(TailReset {
        lost_bytes,
        zeroed_bytes: zeroed,
    })
}

/// Position of the last non-zero byte in `regions` (sorted, of the
/// unpublished part of a segment). Walks backwards a chunk at a time, so
/// damage is found without reading what precedes it in the same region.
fn last_nonzero(writer: &Writer, regions: &[(u64, u64)]) -> Option<u64> {
    for &(start, end) in regions.iter().rev() {
        let mut chunk_end = end;
        while chunk_end > start {
            let chunk = (chunk_end - 1) / ZERO_CHECK_CHUNK_BYTES * ZERO_CHECK_CHUNK_BYTES;
            let chunk = chunk.max(start);
            if let Some(bytes) = writer.unpublished(chunk, chunk_end)
                && !all_zero(bytes)
                && let Some(i) = bytes.iter().rposition(|b| *b != 0)
            {
                return Some(chunk + i as u64);
            }
            chunk_end = chunk;
        }
    }
    None
}

/// Zeroes, with writes, the non-zero chunks of `[from, to)` and
/// flushes them. Returns the bytes zeroed.
fn zero_nonzero(
    file: &File,
    path: &Path,
    writer: &mut Writer,
    from: u64,
    to: u64,
) -> Result<u64, StorageError> {
    let (_, dirty) = find_nonzero(file, writer, from, to);
    let handle = writer.flush_handle();
    let mut zeroed = 0;
    for (start, end) in dirty {
        writer
            .zero(start, (end - start) as usize)
            .map_err(|e| StorageError::io("zero torn tail", path, e))?;
        handle
            .flush_range(start, end)
            .map_err(|e| StorageError::io("fdatasync zeroed tail", path, e))?;
        zeroed += end - start;
    }
    Ok(zeroed)
}

/// Where a read in one segment ended up.
pub enum SegmentRead {
    /// Batches (possibly none, if the first one ends above `upper`).
    Data(Bytes),
    /// The offset is at or past the end of this segment's published data.
    PastEnd,
}

impl Segment {
    /// Records that `point` is flushed, unless a later point already is.
    pub fn mark_durable(&self, point: DurablePoint) {
        let mut durable = self.durable.lock();
        if point.len > durable.len {
            *durable = point;
        }
    }

    /// Bytes published to readers.
    pub fn data_len(&self) -> u64 {
        self.map.published()
    }

    fn corrupt(&self, position: u64, reason: impl Into<String>) -> StorageError {
        StorageError::Corrupt {
            path: self.log_path.clone(),
            position,
            reason: reason.into(),
        }
    }

    /// The header of the published batch at `pos`, checked to lie inside
    /// the published range.
    fn header_at(&self, pos: u64, end: u64) -> Result<BatchHeader, StorageError> {
        let head_end = (pos + HEADER_LEN as u64).min(end);
        let bytes = self
            .map
            .slice(pos, head_end)
            .ok_or_else(|| self.corrupt(pos, "header outside the published range"))?;
        let header = BatchHeader::decode(bytes).map_err(|e| self.corrupt(pos, e.to_string()))?;
        if pos + u64::from(header.batch_len) > end {
            return Err(self.corrupt(pos, "batch runs past the published end"));
        }
        Ok(header)
    }

    /// Loads the sparse entries if they are not loaded yet: from the index
    /// file, or, if that is unreadable, by scanning the published bytes.
    fn ensure_entries(&self) -> Result<(), StorageError> {
        if self.entries.read().is_some() {
            return Ok(());
        }
        let mut guard = self.entries.write();
        if guard.is_some() {
            return Ok(());
        }
        let loaded = match &self.lazy_header {
            Some(h) => match index::read_entries(&self.index_path, h) {
                DiskRead::Present(e) => Some(e),
                DiskRead::Missing => None,
                DiskRead::Unreadable(reason) => {
                    tracing::warn!(path = %self.index_path.display(), %reason, "index entries unreadable; rebuilding from the segment");
                    None
                }
            },
            None => None,
        };
        let entries = match loaded {
            Some(e) => e,
            None => self.rebuild_entries()?,
        };
        *guard = Some(entries);
        Ok(())
    }

    /// Index entries rebuilt from scratch by scanning the published bytes.
    pub fn rebuild_entries(&self) -> Result<Vec<IndexEntry>, StorageError> {
        let end = self.data_len();
        let bytes = self
            .map
            .slice(0, end)
            .ok_or_else(|| self.corrupt(0, "unpublished"))?;
        let mut entries = Vec::new();
        let scan = scan(
            bytes,
            0,
            self.base_offset,
            self.base_offset,
            NO_TIMESTAMP,
            &mut entries,
            self.index_interval_bytes,
            self.cleaned_end,
        );
        if scan.end != end {
            return Err(self.corrupt(scan.end, scan.stop.unwrap_or_default()));
        }
        Ok(entries)
    }

    /// The entries, loading them if needed.
    pub fn entries(&self) -> Result<Vec<IndexEntry>, StorageError> {
        self.ensure_entries()?;
        Ok(self.entries.read().clone().unwrap_or_default())
    }

    /// Position of the indexed batch at or before `offset`.
    /// The position to start looking for `offset` at, and the base offset
    /// of the batch there.
    fn lookup(&self, offset: u64) -> Result<(u64, u64), StorageError> {
        self.ensure_entries()?;
        let guard = self.entries.read();
        let entries = guard.as_deref().unwrap_or(&[]);
        let relative = offset.saturating_sub(self.base_offset);
        let i = entries.partition_point(|e| u64::from(e.relative_offset) <= relative);
        Ok(if i == 0 {
            (0, self.base_offset)
        } else {
            let e = entries[i - 1];
            (
                u64::from(e.position),
                self.base_offset + u64::from(e.relative_offset),
            )
        })
    }

    /// The header of the batch at `pos`, which must start at offset
    /// `expected`: what recovery checks of a batch outside its CRC, checked
    /// on every read because a trusted prefix was not scanned in this run.
    fn batch_at(&self, pos: u64, end: u64, expected: u64) -> Result<BatchHeader, StorageError> {
        let header = self.header_at(pos, end)?;
        check_base(&header, expected, self.cleaned_end).map_err(|r| self.corrupt(pos, r))?;
        if header.leader_epoch != LEADER_EPOCH {
            return Err(self.corrupt(pos, format!("leader epoch {}", header.leader_epoch)));
        }
        Ok(header)
    }

    /// Checks the CRC of the batch at `pos` if it lies in the prefix
    /// recovery trusted without reading.
    fn check_trusted(&self, pos: u64, header: &BatchHeader) -> Result<(), StorageError> {
        if pos >= self.trusted_len {
            return Ok(());
        }
        let bytes = self
            .map
            .slice(pos, pos + u64::from(header.batch_len))
            .ok_or_else(|| self.corrupt(pos, "batch outside the published range"))?;
        check_framing(bytes).map_err(|e| self.corrupt(pos, e.to_string()))?;
        Ok(())
    }

    /// Whole batches from the one holding `offset`, each ending at or below
    /// `upper`, at most `max_bytes` except that the first is always whole.
    /// A batch that does not continue the offsets before it, or a damaged
    /// one in the trusted prefix, is an error.
    pub fn read(
        &self,
        offset: u64,
        max_bytes: usize,
        upper: u64,
    ) -> Result<SegmentRead, StorageError> {
        let end = self.data_len();
        let (mut pos, mut expected) = self.lookup(offset)?;
        loop {
            if pos >= end {
                return Ok(SegmentRead::PastEnd);
            }
            let header = self.batch_at(pos, end, expected)?;
            if header.next_offset() > offset {
                break;
            }
            expected = header.next_offset();
            pos += u64::from(header.batch_len);
        }
        let start = pos;
        let mut total = 0u64;
        while pos < end {
            let header = self.batch_at(pos, end, expected)?;
            if header.next_offset() > upper {
                break;
            }
            let len = u64::from(header.batch_len);
            if total > 0 && total + len > max_bytes as u64 {
                break;
            }
            self.check_trusted(pos, &header)?;
            total += len;
            pos += len;
            expected = header.next_offset();
        }
        if total == 0 {
            return Ok(SegmentRead::Data(Bytes::new()));
        }
        let slice = MapSlice::new(self.map.clone(), start, start + total)
            .ok_or_else(|| self.corrupt(start, "read outside the published range"))?;
        Ok(SegmentRead::Data(Bytes::from_owner(slice)))
    }

    /// Base offset of the first published batch whose max timestamp is at
    /// least `timestamp_ms`. The index says where to start: batches before
    /// the last entry whose `max_timestamp_before` is below the time all
    /// lie below it, and the batch sought comes before the next entry; so
    /// the walk reads at most one index interval of batch headers.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>, StorageError> {
        let end = self.data_len();
        let (mut pos, mut expected) = self.time_lookup(timestamp_ms)?;
        while pos < end {
            let header = self.batch_at(pos, end, expected)?;
            if header.max_timestamp >= timestamp_ms {
                return Ok(Some(header.base_offset));
            }
            expected = header.next_offset();
            pos += u64::from(header.batch_len);
        }
        Ok(None)
    }

    /// The position to start looking for `timestamp_ms` at, and the base
    /// offset of the batch there.
    fn time_lookup(&self, timestamp_ms: i64) -> Result<(u64, u64), StorageError> {
        self.ensure_entries()?;
        let guard = self.entries.read();
        let entries = guard.as_deref().unwrap_or(&[]);
        let i = entries.partition_point(|e| e.max_timestamp_before < timestamp_ms);
        Ok(match i.checked_sub(1).map(|i| entries[i]) {
            None => (0, self.base_offset),
            Some(e) => (
                u64::from(e.position),
                self.base_offset + u64::from(e.relative_offset),
            ),
        })
    }

    /// Writes the index covering the durable prefix, unless one covering as
    /// much or more was written already.
    pub fn write_index(&self, durable: DurablePoint) -> Result<(), StorageError> {
        let mut written = self.checkpoint.lock();
        if *written >= durable.len && durable.len > 0 {
            return Ok(());
        }
        let entries: Vec<IndexEntry> = {
            self.ensure_entries()?;
            let guard = self.entries.read();
            guard
                .as_deref()
                .unwrap_or(&[])
                .iter()
                .copied()
                .filter(|e| u64::from(e.position) < durable.len)
                .collect()
        };
        let header = IndexHeader {
            base_offset: self.base_offset,
            valid_len: durable.len,
            next_offset: durable.next_offset,
            max_timestamp: durable.max_timestamp,
            entry_count: 0,
            entries_crc: 0,
            version: index::INDEX_VERSION,
        };
        index::write(&self.index_path, &header, &entries)
            .map_err(|e| StorageError::io("write index", &self.index_path, e))?;
        *written = durable.len;
        Ok(())
    }
}

/// Makes `[start, end)` of a segment durable (fdatasync). The failpoint lets tests make a
/// flush fail.
pub fn flush_range(
    handle: &FlushHandle,
    path: &Path,
    start: u64,
    end: u64,
) -> Result<(), StorageError> {
    fail::fail_point!("storage::flush", |_| Err(StorageError::io(
        "fdatasync",
        path,
        std::io::Error::other("injected flush failure")
    )));
    handle
        .flush_range(start, end)
        .map_err(|e| StorageError::io("fdatasync", path, e))
}

/// Deletes a segment's `.log` then its `.index`; a file already gone is
/// fine.
pub fn remove_files(log_path: &Path, index_path: &Path) -> Result<(), StorageError> {
    for path in [log_path, index_path] {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("delete segment", path, e)),
        }
    }
    Ok(())
}

/// fdatasync of a whole segment file (a seal). Shares the flush failpoint.
pub fn sync_file(file: &std::fs::File, path: &Path) -> Result<(), StorageError> {
    fail::fail_point!("storage::flush", |_| Err(StorageError::io(
        "fdatasync",
        path,
        std::io::Error::other("injected flush failure")
    )));
    file.sync_data()
        .map_err(|e| StorageError::io("fdatasync", path, e))
}

const _: () = assert!(MAX_BATCH_BYTES as u64 >= ZERO_CHECK_CHUNK_BYTES);

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::batch::{BatchBuilder, patch_base_offset};

    fn batches(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            let mut b = BatchBuilder::new(i as i64);
            b.push(i as i64, None, Some(&[7u8; 100]), &[]);
            b.push(i as i64 + 1, None, Some(&[8u8; 100]), &[]);
            let mut bytes = b.finish().to_vec();
            patch_base_offset(&mut bytes, 10 + 2 * i);
            out.extend_from_slice(&bytes);
        }
        out
    }

    #[test]
    fn a_scan_stops_at_the_first_batch_whose_offsets_do_not_continue() {
        let mut data = batches(5);
        let one = data.len() / 5;
        let mut entries = Vec::new();
        let full = scan(&data, 0, 10, 10, NO_TIMESTAMP, &mut entries, 300, None);
        assert_eq!(
            (full.end, full.next_offset, full.stop),
            (data.len() as u64, 20, None)
        );
        assert_eq!(entries.len(), 2);
        patch_base_offset(&mut data[3 * one..], 99);
        let mut entries = Vec::new();
        let cut = scan(&data, 0, 10, 10, NO_TIMESTAMP, &mut entries, 300, None);
        assert_eq!((cut.end, cut.next_offset), (3 * one as u64, 16));
        assert!(cut.stop.unwrap().contains("expected"));
    }

    #[test]
    fn index_entries_depend_only_on_batch_positions() {
        assert!(!wants_entry(0, None, 0));
        assert!(wants_entry(10, None, 10));
        assert!(!wants_entry(9, None, 10));
        let e = IndexEntry {
            relative_offset: 1,
            position: 10,
            max_timestamp_before: NO_TIMESTAMP,
        };
        assert!(!wants_entry(19, Some(&e), 10));
        assert!(wants_entry(20, Some(&e), 10));
    }

    #[test]
    fn garbage_lengths_end_a_scan_without_panicking() {
        let mut data = batches(2);
        data[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut entries = Vec::new();
        let s = scan(&data, 0, 10, 10, NO_TIMESTAMP, &mut entries, 1, None);
        assert_eq!(s.end, 0);
        assert!(s.stop.is_some());
    }
}
