//! The only module with `unsafe`: the two memory maps of a segment file.
//!
//! A segment file is mapped twice, with `MAP_SHARED`, so both maps see the
//! same page-cache pages:
//!
//! * a **write map** ([`Writer`]), `PROT_READ | PROT_WRITE`, owned by the
//!   single appender and dropped when the segment is sealed;
//! * a **read map** ([`ReadMap`]), `PROT_READ`, shared by every reader
//!   through an `Arc` and kept alive by the `Bytes` it hands out.
//!
//! # Why this is sound
//!
//! The read map carries a *published end*, an atomic byte position. The
//! invariant is: **bytes below the published end are never written again
//! through any map while a [`ReadMap`] exists; bytes at or above it are
//! touched only by the one [`Writer`].**
//!
//! * [`Writer`] is created together with its [`ReadMap`] and cannot be
//!   cloned, so there is at most one writer per file. It checks every write
//!   against the published end and refuses writes below it.
//! * [`Writer::publish`] moves the end forward with a `Release` store after
//!   the bytes were written; [`ReadMap::published`] loads it with `Acquire`,
//!   so a reader that sees the new end also sees the bytes.
//! * [`ReadMap::slice`] only forms a `&[u8]` over `[start, end)` with
//!   `end <= published end`, so no reference ever covers a byte that is
//!   being written. The writer never forms a reference over the whole map
//!   either: it copies with raw pointers, and its only `&[u8]`
//!   ([`Writer::unpublished`]) borrows `&self`, which excludes its own
//!   writes for as long as the slice lives.
//! * The published end never moves backwards, and the module never
//!   truncates or shrinks the file, so a mapped page is never cut off
//!   (which would be SIGBUS). Callers must likewise never shrink a mapped
//!   file; the log preallocates segment files before mapping them.
//! * Deleting (unlinking) a mapped file is fine on Linux: the mapping keeps
//!   the inode alive until the last map is dropped.
//!
//! What this module cannot defend against is another process writing or
//! truncating the file; the log directory is owned by one broker.
//!
//! # Prefaulting
//!
//! The first write to each page of a fresh segment faults: the kernel finds
//! (and zero-fills) a page-cache page and maps it writable. On the
//! appender's thread that costs about as much as the copy itself, so
//! [`Writer::prefault_ahead`] asks one process-wide thread to fault the
//! next few MiB in ahead of the writer (`MADV_POPULATE_WRITE`, which maps
//! pages without changing their contents). It is only a hint: if the
//! writer gets there first, it takes the faults itself.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, OnceLock};

use memmap2::{Mmap, MmapOptions, MmapRaw};

/// The read-only map of a segment, shared by readers.
#[derive(Debug)]
pub(crate) struct ReadMap {
    /// `None` for a zero-length file, which cannot be mapped.
    map: Option<Mmap>,
    len: u64,
    published: AtomicU64,
}

/// The writable map of a segment, owned by the single appender.
#[derive(Debug)]
pub(crate) struct Writer {
    raw: Arc<MmapRaw>,
    read: Arc<ReadMap>,
    /// The mapped file, for syncing it once the write map is gone.
    file: Arc<File>,
    /// Everything below this was handed to the prefault thread.
    prefaulted: u64,
}

/// How far ahead of the write position pages are faulted in.
const PREFAULT_AHEAD: u64 = 8 << 20;
/// The unit of one prefault request.
const PREFAULT_CHUNK: u64 = 2 << 20;

type PrefaultRequest = (Arc<MmapRaw>, u64, u64);

/// The process-wide prefault thread, started on first use. `None` if it
/// could not be started: prefaulting is only an optimisation.
fn prefaulter() -> Option<&'static Sender<PrefaultRequest>> {
    static PREFAULTER: OnceLock<Option<Sender<PrefaultRequest>>> = OnceLock::new();
    PREFAULTER
        .get_or_init(|| {
            let (tx, rx) = channel::<PrefaultRequest>();
            std::thread::Builder::new()
                .name("ferry-prefault".into())
                .spawn(move || {
                    for (raw, start, end) in rx {
                        // Advice only; an error (an old kernel without
                        // MADV_POPULATE_WRITE, memory pressure) just leaves
                        // the faults to the writer.
                        let _ = raw.advise_range(
                            memmap2::Advice::PopulateWrite,
                            start as usize,
                            (end - start) as usize,
                        );
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// A clonable handle that can msync ranges of the writable map, used by the
/// flusher thread while the appender keeps writing above the range.
#[derive(Debug, Clone)]
pub(crate) struct FlushHandle {
    raw: Arc<MmapRaw>,
}

/// A segment that will not be written again: its write map, still mapped,
/// and its file.
#[derive(Debug)]
pub(crate) struct Sealer {
    raw: Arc<MmapRaw>,
    file: Arc<File>,
}

impl Sealer {
    /// Unmaps the write map and returns the file. Syncing the file after
    /// that (fdatasync) writes its dirty pages back without write-protecting
    /// a writable mapping page by page, which costs an msync through a
    /// live write map one TLB-shootdown IPI after another.
    pub(crate) fn unmap(self) -> Arc<File> {
        drop(self.raw);
        self.file
    }
}

/// Maps `file` (opened read-write, `len` bytes long) twice.
///
/// `published` is the initial end: bytes below it are immutable from now on.
pub(crate) fn map_writable(
    file: &File,
    len: u64,
    published: u64,
) -> io::Result<(Arc<ReadMap>, Writer)> {
    let read = Arc::new(map_read_only(file, len, published)?);
    let raw = MmapOptions::new().len(to_usize(len)?).map_raw(file)?;
    Ok((
        read.clone(),
        Writer {
            raw: Arc::new(raw),
            read,
            file: Arc::new(file.try_clone()?),
            prefaulted: published.min(len),
        },
    ))
}

/// Maps `file` read-only, with every byte below `published` readable.
pub(crate) fn map_read_only(file: &File, len: u64, published: u64) -> io::Result<ReadMap> {
    let published = published.min(len);
    let map = if len == 0 {
        None
    } else {
        // SAFETY: the map is read-only and we uphold the module invariant:
        // the log never truncates a mapped segment file, and only the one
        // `Writer` of this file writes, above `published`.
        Some(unsafe { MmapOptions::new().len(to_usize(len)?).map(file)? })
    };
    Ok(ReadMap {
        map,
        len,
        published: AtomicU64::new(published),
    })
}

fn to_usize(len: u64) -> io::Result<usize> {
    usize::try_from(len).map_err(|_| io::Error::other("segment larger than the address space"))
}

impl ReadMap {
    /// Length of the mapping, which is the capacity of the segment.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The published end: every byte below it is complete and immutable.
    pub(crate) fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Bytes `[start, end)`, or `None` unless `start <= end <= published`.
    pub(crate) fn slice(&self, start: u64, end: u64) -> Option<&[u8]> {
        if start > end || end > self.published() {
            return None;
        }
        let map = match &self.map {
            Some(map) => map,
            None => return Some(&[]),
        };
        // SAFETY: `end <= published <= len`, so the range is inside the
        // mapping; bytes below `published` are never written again (module
        // invariant), so no mutation overlaps this shared reference for as
        // long as it lives, which is at most as long as `self`.
        Some(unsafe {
            std::slice::from_raw_parts(map.as_ptr().add(start as usize), (end - start) as usize)
        })
    }
}

/// A `Bytes` owner: a published range of a read map, kept alive by an `Arc`.
#[derive(Debug)]
pub(crate) struct MapSlice {
    map: Arc<ReadMap>,
    start: u64,
    end: u64,
}

impl MapSlice {
    /// `[start, end)` of `map`, or `None` unless it is published.
    pub(crate) fn new(map: Arc<ReadMap>, start: u64, end: u64) -> Option<MapSlice> {
        map.slice(start, end)?;
        Some(MapSlice { map, start, end })
    }
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        // Checked in `new`, and the published end only grows.
        self.map.slice(self.start, self.end).unwrap_or(&[])
    }
}

impl Writer {
    /// The read map this writer publishes to.
    pub(crate) fn read_map(&self) -> &Arc<ReadMap> {
        &self.read
    }

    /// Gives up writing: what is left is the file and the write map, to be
    /// dropped by [`Sealer::unmap`] on the thread that syncs the file.
    pub(crate) fn into_sealer(self) -> Sealer {
        Sealer {
            raw: self.raw,
            file: self.file,
        }
    }

    /// A handle for msync.
    pub(crate) fn flush_handle(&self) -> FlushHandle {
        FlushHandle {
            raw: self.raw.clone(),
        }
    }

    fn check_unpublished(&self, pos: u64, len: usize) -> io::Result<()> {
        let end = pos.checked_add(len as u64);
        if pos < self.read.published() || end.is_none_or(|end| end > self.read.len) {
            return Err(io::Error::other(format!(
                "write of {len} bytes at {pos} outside the unpublished range [{}, {})",
                self.read.published(),
                self.read.len
            )));
        }
        Ok(())
    }

    /// Copies `data` to `pos`, which must be at or above the published end.
    pub(crate) fn write(&mut self, pos: u64, data: &[u8]) -> io::Result<()> {
        self.check_unpublished(pos, data.len())?;
        // SAFETY: the range is inside the mapping and at or above the
        // published end, so no reader references it, and `&mut self` on the
        // only writer means no other write or `unpublished` slice is live.
        // The source is a separate allocation, so the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.raw.as_mut_ptr().add(pos as usize),
                data.len(),
            );
        }
        Ok(())
    }

    /// Zeroes `len` bytes at `pos`, which must be at or above the published end.
    pub(crate) fn zero(&mut self, pos: u64, len: usize) -> io::Result<()> {
        self.check_unpublished(pos, len)?;
        // SAFETY: as in `write`.
        unsafe {
            std::ptr::write_bytes(self.raw.as_mut_ptr().add(pos as usize), 0, len);
        }
        Ok(())
    }

    /// Bytes `[start, end)` at or above the published end, for recovery to
    /// inspect before publishing them.
    pub(crate) fn unpublished(&self, start: u64, end: u64) -> Option<&[u8]> {
        if start < self.read.published() || start > end || end > self.read.len {
            return None;
        }
        // SAFETY: inside the mapping; readers never touch bytes at or above
        // the published end, and writes need `&mut self`, which the borrow
        // of `self` held by the returned slice excludes.
        Some(unsafe {
            std::slice::from_raw_parts(
                self.raw.as_ptr().add(start as usize),
                (end - start) as usize,
            )
        })
    }

    /// Asks the prefault thread to fault in the pages up to
    /// [`PREFAULT_AHEAD`] bytes past `pos`, the next write position.
    /// Requests go out a [`PREFAULT_CHUNK`] at a time, or whatever is left
    /// before the end of the map.
    pub(crate) fn prefault_ahead(&mut self, pos: u64) {
        // The writer may have overtaken the prefault thread.
        let start = self.prefaulted.max(pos);
        let want = pos.saturating_add(PREFAULT_AHEAD).min(self.read.len);
        if want <= start || (want - start < PREFAULT_CHUNK && want < self.read.len) {
            return;
        }
        if let Some(tx) = prefaulter() {
            let _ = tx.send((self.raw.clone(), start, want));
        }
        self.prefaulted = want;
    }

    /// Publishes every byte below `end` to readers. `end` never decreases.
    pub(crate) fn publish(&mut self, end: u64) {
        let end = end.min(self.read.len);
        self.read.published.fetch_max(end, Ordering::Release);
    }
}

impl FlushHandle {
    /// msync(MS_SYNC) of `[start, end)`: returns once those bytes are on disk.
    pub(crate) fn flush_range(&self, start: u64, end: u64) -> io::Result<()> {
        if end <= start {
            return Ok(());
        }
        self.raw.flush_range(start as usize, (end - start) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read-write file of `len` zero bytes in `dir`.
    fn sized_file(dir: &std::path::Path, len: u64) -> File {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("f"))
            .unwrap();
        file.set_len(len).unwrap();
        file
    }

    #[test]
    fn readers_see_only_published_bytes_and_writes_below_the_end_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = sized_file(dir.path(), 4096);
        let (read, mut writer) = map_writable(&file, 4096, 0).unwrap();
        writer.write(0, b"hello").unwrap();
        assert!(read.slice(0, 5).is_none());
        writer.publish(5);
        assert_eq!(read.slice(0, 5).unwrap(), b"hello");
        assert!(writer.write(4, b"x").is_err());
        assert!(writer.write(4095, b"xy").is_err());
        let owned = MapSlice::new(read.clone(), 1, 5).unwrap();
        drop(writer);
        assert_eq!(owned.as_ref(), b"ello");
    }

    #[test]
    fn prefault_requests_run_a_chunk_at_a_time_and_stop_at_the_end_of_the_map() {
        let dir = tempfile::tempdir().unwrap();
        let len = PREFAULT_AHEAD * 2;
        let file = sized_file(dir.path(), len);
        let (_read, mut writer) = map_writable(&file, len, 0).unwrap();
        writer.prefault_ahead(0);
        assert_eq!(writer.prefaulted, PREFAULT_AHEAD);
        // Less than a chunk of new ground: no request.
        writer.prefault_ahead(PREFAULT_CHUNK - 1);
        assert_eq!(writer.prefaulted, PREFAULT_AHEAD);
        writer.prefault_ahead(PREFAULT_CHUNK);
        assert_eq!(writer.prefaulted, PREFAULT_AHEAD + PREFAULT_CHUNK);
        // Near the end, the rest of the map goes out even if it is short.
        writer.prefault_ahead(len - 1);
        assert_eq!(writer.prefaulted, len);
        writer.prefault_ahead(len);
        assert_eq!(writer.prefaulted, len);
        // Pages faulted in keep their contents.
        writer.write(0, b"abc").unwrap();
        writer.prefault_ahead(3);
        assert_eq!(writer.unpublished(0, 3).unwrap(), b"abc");
    }
}
