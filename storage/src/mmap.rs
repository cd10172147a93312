//! The only module with `unsafe`: the read map of a segment file, and the
//! writer that appends to the file underneath it.
//!
//! A segment file is written with `pwrite` and read through one shared,
//! read-only map (`MAP_SHARED`, `PROT_READ`). Both go through the same
//! page-cache pages, so what the writer puts into the file is what the map
//! shows:
//!
//! * the **writer** ([`Writer`]) is owned by the single appender; it writes
//!   with positioned writes (`pwrite`/`pwritev`) and syncs with
//!   `fdatasync`;
//! * the **read map** ([`ReadMap`]) is shared by every reader through an
//!   `Arc` and kept alive by the `Bytes` it hands out, which is what makes
//!   fetches zero-copy.
//!
//! # Why the writer does not write through a map
//!
//! The first store to each page of a writable file map faults: the kernel
//! allocates a page-cache page, zero-fills all of it, and maps it
//! writable; msync of that map then write-protects it again page by page,
//! one TLB shootdown after another. A `pwrite` of a whole page into a
//! preallocated (unwritten) extent copies the bytes into a new page
//! without zeroing it first, there is no fault, and `fdatasync` has no
//! mapping to write-protect.
//!
//! # Why this is sound
//!
//! The read map carries a *published end*, an atomic byte position. The
//! invariant is: **bytes below the published end are never written again
//! while a [`ReadMap`] exists; bytes at or above it are written only by the
//! one [`Writer`].**
//!
//! * [`Writer`] is created together with its [`ReadMap`] and cannot be
//!   cloned, so there is at most one writer per file. It checks every write
//!   against the published end and refuses writes below it.
//! * [`Writer::publish`] moves the end forward with a `Release` store after
//!   the bytes were written; [`ReadMap::published`] loads it with `Acquire`,
//!   so a reader that sees the new end also sees the bytes (the write
//!   system call returned before the store, and the map shows the same
//!   pages the call wrote).
//! * [`ReadMap::slice`] only forms a `&[u8]` over `[start, end)` with
//!   `end <= published end`, so no reference ever covers a byte that is
//!   being written. The writer's only `&[u8]` ([`Writer::unpublished`])
//!   borrows `&self`, while every write takes `&mut self`, so the file
//!   bytes under that slice cannot change for as long as it lives.
//! * The published end never moves backwards, and the module never
//!   truncates or shrinks the file, so a mapped page is never cut off
//!   (which would be SIGBUS). Callers must likewise never shrink a mapped
//!   file; the log preallocates segment files before mapping them.
//! * Deleting (unlinking) a mapped file is fine on Linux: the mapping keeps
//!   the inode alive until the last map is dropped.
//!
//! What this module cannot defend against is another process writing or
//! truncating the file; the log directory is owned by one broker.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{Mmap, MmapOptions};

/// The read-only map of a segment, shared by readers.
#[derive(Debug)]
pub(crate) struct ReadMap {
    /// `None` for a zero-length file, which cannot be mapped.
    map: Option<Mmap>,
    len: u64,
    published: AtomicU64,
}

/// The writer of a segment file, owned by the single appender.
#[derive(Debug)]
pub(crate) struct Writer {
    read: Arc<ReadMap>,
    file: Arc<File>,
}

/// A clonable handle that syncs the segment file, used by the flusher
/// thread while the appender keeps writing above what it syncs.
#[derive(Debug, Clone)]
pub(crate) struct FlushHandle {
    file: Arc<File>,
}

/// Zeros to write from: [`Writer::zero`] writes a chunk of these at a time.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Maps `file` (opened read-write, `len` bytes long) read-only, and returns
/// the map with the one writer of the file.
///
/// `published` is the initial end: bytes below it are immutable from now on.
pub(crate) fn map_writable(
    file: &File,
    len: u64,
    published: u64,
) -> io::Result<(Arc<ReadMap>, Writer)> {
    let read = Arc::new(map_read_only(file, len, published)?);
    Ok((
        read.clone(),
        Writer {
            read,
            file: Arc::new(file.try_clone()?),
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

    /// Gives up writing: what is left is the file, to be synced one last
    /// time when the segment is sealed.
    pub(crate) fn into_file(self) -> Arc<File> {
        self.file
    }

    /// A handle for syncing the file.
    pub(crate) fn flush_handle(&self) -> FlushHandle {
        FlushHandle {
            file: self.file.clone(),
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

    /// Writes `parts`, one after the other, at `pos`, which must be at or
    /// above the published end: one `pwritev`, unless the kernel writes
    /// less than asked (then the rest follows).
    pub(crate) fn write_parts(&mut self, pos: u64, parts: &[&[u8]]) -> io::Result<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        self.check_unpublished(pos, total)?;
        let mut done = 0usize;
        while done < total {
            // The parts not yet written, the first one cut at `done`.
            let mut skip = done;
            let mut slices = Vec::with_capacity(parts.len());
            for part in parts {
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                slices.push(IoSlice::new(&part[skip..]));
                skip = 0;
            }
            match rustix::io::pwritev(&*self.file, &slices, pos + done as u64) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Zeroes `len` bytes at `pos`, which must be at or above the published end.
    pub(crate) fn zero(&mut self, pos: u64, len: usize) -> io::Result<()> {
        self.check_unpublished(pos, len)?;
        let mut at = 0;
        while at < len {
            let n = (len - at).min(ZEROS.len());
            self.write_parts(pos + at as u64, &[&ZEROS[..n]])?;
            at += n;
        }
        Ok(())
    }

    /// Bytes `[start, end)` at or above the published end, for recovery to
    /// inspect before publishing them. They are read through the read map.
    pub(crate) fn unpublished(&self, start: u64, end: u64) -> Option<&[u8]> {
        if start < self.read.published() || start > end || end > self.read.len {
            return None;
        }
        let Some(map) = &self.read.map else {
            return Some(&[]);
        };
        // SAFETY: `end <= len`, so the range is inside the mapping. Readers
        // never touch bytes at or above the published end, and only this
        // writer writes them, through methods that take `&mut self`; the
        // borrow of `self` held by the returned slice excludes those, so
        // the bytes do not change while the slice lives.
        Some(unsafe {
            std::slice::from_raw_parts(map.as_ptr().add(start as usize), (end - start) as usize)
        })
    }

    /// Publishes every byte below `end` to readers. `end` never decreases.
    pub(crate) fn publish(&mut self, end: u64) {
        let end = end.min(self.read.len);
        self.read.published.fetch_max(end, Ordering::Release);
    }
}

impl FlushHandle {
    /// Makes `[start, end)` durable: `fdatasync` of the file, which returns
    /// once every dirty page of it (a superset of the range) and the
    /// metadata needed to read them back are on disk.
    pub(crate) fn flush_range(&self, start: u64, end: u64) -> io::Result<()> {
        if end <= start {
            return Ok(());
        }
        rustix::fs::fdatasync(&*self.file).map_err(io::Error::from)
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
        writer.write_parts(0, &[b"hello"]).unwrap();
        assert!(read.slice(0, 5).is_none());
        writer.publish(5);
        assert_eq!(read.slice(0, 5).unwrap(), b"hello");
        assert!(writer.write_parts(4, &[b"x"]).is_err());
        assert!(writer.write_parts(4095, &[b"xy"]).is_err());
        let owned = MapSlice::new(read.clone(), 1, 5).unwrap();
        drop(writer);
        assert_eq!(owned.as_ref(), b"ello");
    }

    #[test]
    fn parts_land_in_order_and_the_map_shows_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = sized_file(dir.path(), 8192);
        let (read, mut writer) = map_writable(&file, 8192, 0).unwrap();
        writer.write_parts(4090, &[b"abc", b"", b"defgh"]).unwrap();
        assert_eq!(writer.unpublished(4090, 4098).unwrap(), b"abcdefgh");
        writer.zero(4091, 2).unwrap();
        assert_eq!(writer.unpublished(4090, 4098).unwrap(), b"a\0\0defgh");
        assert!(writer.write_parts(8190, &[b"ab", b"c"]).is_err());
        writer.publish(4098);
        assert_eq!(&read.slice(4090, 4098).unwrap()[3..], b"defgh");
        assert!(writer.unpublished(4097, 4098).is_none());
        writer.flush_handle().flush_range(0, 4098).unwrap();
    }
}
