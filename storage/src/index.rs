//! The per-segment `.index` file: sparse offset index plus recovery
//! checkpoint.
//!
//! ```text
//! offset size field
//!      0    4 magic          b"FIDX"
//!      4    2 version        u16 LE = 2 (1 is read: its entries are rebuilt)
//!      6    2 reserved       zero
//!      8    8 base_offset    u64 LE  must equal the segment's file name
//!     16    8 valid_len      u64 LE  bytes of the .log file covered: durable and valid
//!     24    8 next_offset    u64 LE  offset after the last batch in [0, valid_len)
//!     32    8 max_timestamp  i64 LE  largest batch max_timestamp in [0, valid_len), i64::MIN if none
//!     40    4 entry_count    u32 LE
//!     44    4 entries_crc    u32 LE  CRC-32 of the entry bytes
//!     48   12 reserved       zero
//!     60    4 header_crc     u32 LE  CRC-32 of bytes [0, 60)
//!     64 16×n entries        (relative_offset u32 LE, position u32 LE,
//!                             max_timestamp_before i64 LE)
//! ```
//!
//! An entry's `relative_offset` and `position` strictly increase;
//! `max_timestamp_before` (the largest batch `max_timestamp` of the batches
//! before the entry's batch in this segment, `i64::MIN` if none) never
//! decreases, so the same entries are the offset index and the time index:
//! the first batch whose max timestamp reaches `t` lies between the last
//! entry whose `max_timestamp_before` is below `t` and the next entry.
//! Version 1 files (entries without the timestamp, 8 bytes each) keep
//! their header, which still vouches for the segment; their entries are
//! rebuilt by a scan when first needed.
//!
//! # Crash safety
//!
//! The file is only ever replaced whole: written to `NAME.index.tmp`,
//! fsynced, renamed over `NAME.index`, then the directory is fsynced. A crash
//! leaves either the old or the new file (rename is atomic), plus possibly a
//! stray `.tmp` that open deletes. The header has its own CRC, so open can
//! trust `valid_len` after reading 64 bytes; the entries have a separate CRC
//! and are loaded lazily for sealed segments, so opening a log reads a
//! constant number of bytes per sealed segment. An index whose entries fail
//! their CRC is rebuilt from the segment's `[0, valid_len)`, which the header
//! vouches for. `valid_len` is only ever written after the bytes it covers
//! were flushed, so trusting it never trusts bytes a crash could have lost.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use ferry_proto::batch::HEADER_LEN;

use crate::config::MAX_SEGMENT_BYTES;

/// First four bytes of an index file.
pub const INDEX_MAGIC: [u8; 4] = *b"FIDX";
/// The index format version written.
pub const INDEX_VERSION: u16 = 2;
/// The earlier version, whose header is still read (its entries are
/// rebuilt).
pub const INDEX_VERSION_WITHOUT_TIMESTAMPS: u16 = 1;
/// Size of the fixed index header.
pub const INDEX_HEADER_LEN: usize = 64;
/// Size of one entry.
pub const INDEX_ENTRY_LEN: usize = 16;
/// Most entries one index can hold: one per batch of a largest segment.
pub const MAX_INDEX_ENTRIES: u64 = MAX_SEGMENT_BYTES / HEADER_LEN as u64;
/// `max_timestamp` of a segment without batches.
pub const NO_TIMESTAMP: i64 = i64::MIN;

/// Field offsets of the index header, each derived from the one before.
pub mod layout {
    /// `magic: [u8; 4]`.
    pub const MAGIC: usize = 0;
    /// `version: u16`.
    pub const VERSION: usize = MAGIC + 4;
    /// `reserved: u16`.
    pub const RESERVED0: usize = VERSION + 2;
    /// `base_offset: u64`.
    pub const BASE_OFFSET: usize = RESERVED0 + 2;
    /// `valid_len: u64`.
    pub const VALID_LEN: usize = BASE_OFFSET + 8;
    /// `next_offset: u64`.
    pub const NEXT_OFFSET: usize = VALID_LEN + 8;
    /// `max_timestamp: i64`.
    pub const MAX_TIMESTAMP: usize = NEXT_OFFSET + 8;
    /// `entry_count: u32`.
    pub const ENTRY_COUNT: usize = MAX_TIMESTAMP + 8;
    /// `entries_crc: u32`.
    pub const ENTRIES_CRC: usize = ENTRY_COUNT + 4;
    /// `reserved: [u8; 12]`.
    pub const RESERVED1: usize = ENTRIES_CRC + 4;
    /// `header_crc: u32`, covering every byte before it.
    pub const HEADER_CRC: usize = RESERVED1 + 12;
    /// First entry.
    pub const ENTRIES: usize = HEADER_CRC + 4;
}

const _: () = assert!(layout::ENTRIES == INDEX_HEADER_LEN);
const _: () = assert!(layout::HEADER_CRC == 60);
const _: () = assert!(MAX_INDEX_ENTRIES <= u32::MAX as u64);

/// One sparse index entry: the batch starting at `position` has base offset
/// `segment base + relative_offset`, and no batch before it in the segment
/// has a timestamp above `max_timestamp_before`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Base offset of the batch minus the segment's base offset.
    pub relative_offset: u32,
    /// Byte position of the batch in the `.log` file.
    pub position: u32,
    /// Largest batch max timestamp of the batches before this one in the
    /// segment ([`NO_TIMESTAMP`] if none).
    pub max_timestamp_before: i64,
}

/// The decoded index header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexHeader {
    /// Base offset of the segment.
    pub base_offset: u64,
    /// Bytes of the `.log` file this index vouches for.
    pub valid_len: u64,
    /// Offset after the last batch in `[0, valid_len)`.
    pub next_offset: u64,
    /// Largest batch timestamp in `[0, valid_len)`.
    pub max_timestamp: i64,
    /// Number of entries.
    pub entry_count: u32,
    /// CRC of the entries.
    pub entries_crc: u32,
    /// Format version the file was written in.
    pub version: u16,
}

/// The outcome of reading something from disk: it is absent, it is there
/// and valid, or it is there and cannot be trusted.
#[derive(Debug)]
pub enum DiskRead<T> {
    /// No such file.
    Missing,
    /// Read and checked.
    Present(T),
    /// Present but corrupt or unreadable, with the reason.
    Unreadable(String),
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl IndexHeader {
    fn encode(&self) -> [u8; INDEX_HEADER_LEN] {
        let mut b = [0u8; INDEX_HEADER_LEN];
        b[layout::MAGIC..layout::MAGIC + 4].copy_from_slice(&INDEX_MAGIC);
        b[layout::VERSION..layout::VERSION + 2].copy_from_slice(&INDEX_VERSION.to_le_bytes());
        b[layout::BASE_OFFSET..layout::BASE_OFFSET + 8]
            .copy_from_slice(&self.base_offset.to_le_bytes());
        b[layout::VALID_LEN..layout::VALID_LEN + 8].copy_from_slice(&self.valid_len.to_le_bytes());
        b[layout::NEXT_OFFSET..layout::NEXT_OFFSET + 8]
            .copy_from_slice(&self.next_offset.to_le_bytes());
        b[layout::MAX_TIMESTAMP..layout::MAX_TIMESTAMP + 8]
            .copy_from_slice(&self.max_timestamp.to_le_bytes());
        b[layout::ENTRY_COUNT..layout::ENTRY_COUNT + 4]
            .copy_from_slice(&self.entry_count.to_le_bytes());
        b[layout::ENTRIES_CRC..layout::ENTRIES_CRC + 4]
            .copy_from_slice(&self.entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[..layout::HEADER_CRC]);
        b[layout::HEADER_CRC..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8; INDEX_HEADER_LEN]) -> Result<IndexHeader, String> {
        if b[layout::MAGIC..layout::MAGIC + 4] != INDEX_MAGIC {
            return Err("bad magic".into());
        }
        let stored = get_u32(b, layout::HEADER_CRC);
        let computed = crc32fast::hash(&b[..layout::HEADER_CRC]);
        if stored != computed {
            return Err(format!(
                "header CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ));
        }
        let version = u16::from_le_bytes([b[layout::VERSION], b[layout::VERSION + 1]]);
        if version != INDEX_VERSION && version != INDEX_VERSION_WITHOUT_TIMESTAMPS {
            return Err(format!("unsupported version {version}"));
        }
        let header = IndexHeader {
            base_offset: get_u64(b, layout::BASE_OFFSET),
            valid_len: get_u64(b, layout::VALID_LEN),
            next_offset: get_u64(b, layout::NEXT_OFFSET),
            max_timestamp: get_u64(b, layout::MAX_TIMESTAMP) as i64,
            entry_count: get_u32(b, layout::ENTRY_COUNT),
            entries_crc: get_u32(b, layout::ENTRIES_CRC),
            version,
        };
        if header.valid_len > MAX_SEGMENT_BYTES {
            return Err(format!(
                "valid_len {} above {MAX_SEGMENT_BYTES}",
                header.valid_len
            ));
        }
        if u64::from(header.entry_count) > MAX_INDEX_ENTRIES {
            return Err(format!(
                "entry count {} above {MAX_INDEX_ENTRIES}",
                header.entry_count
            ));
        }
        if header.next_offset < header.base_offset {
            return Err("next_offset below base_offset".into());
        }
        Ok(header)
    }
}

fn open_existing(path: &Path) -> Result<Option<File>, String> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("open: {e}")),
    }
}

/// Reads and checks the 64-byte header only.
pub fn read_header(path: &Path) -> DiskRead<IndexHeader> {
    let mut file = match open_existing(path) {
        Ok(Some(f)) => f,
        Ok(None) => return DiskRead::Missing,
        Err(e) => return DiskRead::Unreadable(e),
    };
    let mut b = [0u8; INDEX_HEADER_LEN];
    if let Err(e) = file.read_exact(&mut b) {
        return DiskRead::Unreadable(format!("read header: {e}"));
    }
    match IndexHeader::decode(&b) {
        Ok(h) => DiskRead::Present(h),
        Err(e) => DiskRead::Unreadable(e),
    }
}

/// Reads the whole file: header and entries, both checked.
pub fn read(path: &Path) -> DiskRead<(IndexHeader, Vec<IndexEntry>)> {
    let header = match read_header(path) {
        DiskRead::Present(h) => h,
        DiskRead::Missing => return DiskRead::Missing,
        DiskRead::Unreadable(e) => return DiskRead::Unreadable(e),
    };
    match read_entries(path, &header) {
        DiskRead::Present(entries) => DiskRead::Present((header, entries)),
        DiskRead::Missing => DiskRead::Missing,
        DiskRead::Unreadable(e) => DiskRead::Unreadable(e),
    }
}

/// Reads the entries that `header` describes, checking the file length
/// before allocating and the CRC and ordering after.
pub fn read_entries(path: &Path, header: &IndexHeader) -> DiskRead<Vec<IndexEntry>> {
    if header.version != INDEX_VERSION {
        return DiskRead::Unreadable(format!(
            "version {} entries carry no timestamps",
            header.version
        ));
    }
    let mut file = match open_existing(path) {
        Ok(Some(f)) => f,
        Ok(None) => return DiskRead::Missing,
        Err(e) => return DiskRead::Unreadable(e),
    };
    let expected = INDEX_HEADER_LEN as u64 + u64::from(header.entry_count) * INDEX_ENTRY_LEN as u64;
    match file.metadata() {
        Ok(m) if m.len() == expected => {}
        Ok(m) => {
            return DiskRead::Unreadable(format!(
                "file is {} bytes, header implies {expected}",
                m.len()
            ));
        }
        Err(e) => return DiskRead::Unreadable(format!("stat: {e}")),
    }
    // The length was checked against the file and against MAX_INDEX_ENTRIES.
    let mut bytes = vec![0u8; expected as usize];
    if let Err(e) = file.read_exact(&mut bytes) {
        return DiskRead::Unreadable(format!("read entries: {e}"));
    }
    let body = &bytes[INDEX_HEADER_LEN..];
    let computed = crc32fast::hash(body);
    if computed != header.entries_crc {
        return DiskRead::Unreadable(format!(
            "entries CRC mismatch: stored {:#010x}, computed {computed:#010x}",
            header.entries_crc
        ));
    }
    let mut entries = Vec::with_capacity(header.entry_count as usize);
    for chunk in body.chunks_exact(INDEX_ENTRY_LEN) {
        let e = IndexEntry {
            relative_offset: get_u32(chunk, 0),
            position: get_u32(chunk, 4),
            max_timestamp_before: get_u64(chunk, 8) as i64,
        };
        if let Some(prev) = entries.last() {
            let prev: &IndexEntry = prev;
            if e.relative_offset <= prev.relative_offset || e.position <= prev.position {
                return DiskRead::Unreadable("entries not strictly increasing".into());
            }
            if e.max_timestamp_before < prev.max_timestamp_before {
                return DiskRead::Unreadable("entry timestamps decrease".into());
            }
        }
        if e.max_timestamp_before > header.max_timestamp {
            return DiskRead::Unreadable("entry timestamp above the segment's".into());
        }
        if u64::from(e.position) >= header.valid_len
            || header.base_offset + u64::from(e.relative_offset) >= header.next_offset
        {
            return DiskRead::Unreadable("entry beyond the covered range".into());
        }
        entries.push(e);
    }
    DiskRead::Present(entries)
}

/// Atomically replaces the index at `path`: tmp file, fsync, rename, fsync
/// of the directory.
pub fn write(path: &Path, header: &IndexHeader, entries: &[IndexEntry]) -> io::Result<()> {
    fail::fail_point!("storage::checkpoint", |_| Err(io::Error::other(
        "injected checkpoint failure"
    )));
    let mut body = Vec::with_capacity(entries.len() * INDEX_ENTRY_LEN);
    for e in entries {
        body.extend_from_slice(&e.relative_offset.to_le_bytes());
        body.extend_from_slice(&e.position.to_le_bytes());
        body.extend_from_slice(&e.max_timestamp_before.to_le_bytes());
    }
    let header = IndexHeader {
        entry_count: u32::try_from(entries.len())
            .map_err(|_| io::Error::other("too many index entries"))?,
        entries_crc: crc32fast::hash(&body),
        version: INDEX_VERSION,
        ..*header
    };
    let mut bytes = Vec::with_capacity(INDEX_HEADER_LEN + body.len());
    bytes.extend_from_slice(&header.encode());
    bytes.extend_from_slice(&body);
    crate::fsutil::atomic_write(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> IndexHeader {
        IndexHeader {
            base_offset: 100,
            valid_len: 5000,
            next_offset: 180,
            max_timestamp: 42,
            entry_count: 0,
            entries_crc: 0,
            version: INDEX_VERSION,
        }
    }

    #[test]
    fn an_index_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.index");
        let entries = [
            IndexEntry {
                relative_offset: 10,
                position: 4096,
                max_timestamp_before: 7,
            },
            IndexEntry {
                relative_offset: 20,
                position: 4500,
                max_timestamp_before: 7,
            },
        ];
        write(&path, &header(), &entries).unwrap();
        let DiskRead::Present((h, e)) = read(&path) else {
            panic!()
        };
        assert_eq!(h.next_offset, 180);
        assert_eq!(h.entry_count, 2);
        assert_eq!(e, entries);
        assert!(!crate::fsutil::tmp_path(&path).exists());
    }

    #[test]
    fn every_corrupted_byte_or_truncation_is_unreadable_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.index");
        write(
            &path,
            &header(),
            &[IndexEntry {
                relative_offset: 1,
                position: 64,
                max_timestamp_before: 3,
            }],
        )
        .unwrap();
        let good = std::fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            assert!(matches!(read(&path), DiskRead::Unreadable(_)), "byte {i}");
        }
        for len in 0..good.len() {
            std::fs::write(&path, &good[..len]).unwrap();
            assert!(matches!(read(&path), DiskRead::Unreadable(_)), "len {len}");
        }
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(read(&path), DiskRead::Missing));
    }

    #[test]
    fn a_version_1_header_is_trusted_and_its_entries_are_left_to_a_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.index");
        write(&path, &header(), &[]).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[layout::VERSION..layout::VERSION + 2]
            .copy_from_slice(&INDEX_VERSION_WITHOUT_TIMESTAMPS.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..layout::HEADER_CRC]);
        bytes[layout::HEADER_CRC..layout::ENTRIES].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let DiskRead::Present(h) = read_header(&path) else {
            panic!("a version 1 header is readable")
        };
        assert_eq!((h.version, h.valid_len), (1, 5000));
        assert!(
            matches!(read_entries(&path, &h), DiskRead::Unreadable(r) if r.contains("version 1"))
        );
    }

    #[test]
    fn entry_timestamps_that_decrease_or_pass_the_segment_are_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.index");
        let entry = |relative_offset, position, max_timestamp_before| IndexEntry {
            relative_offset,
            position,
            max_timestamp_before,
        };
        write(&path, &header(), &[entry(1, 64, 9), entry(2, 128, 8)]).unwrap();
        assert!(matches!(read(&path), DiskRead::Unreadable(r) if r.contains("decrease")));
        write(&path, &header(), &[entry(1, 64, 43)]).unwrap();
        assert!(matches!(read(&path), DiskRead::Unreadable(r) if r.contains("above")));
        write(&path, &header(), &[entry(1, 64, 8), entry(2, 128, 42)]).unwrap();
        assert!(matches!(read(&path), DiskRead::Present(_)));
    }
}
