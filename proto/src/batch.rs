//! The record batch: the unit of append, flush, fetch and transfer.
//!
//! One byte layout serves the client, the wire and the disk: Kafka's
//! RecordBatch v2 (magic 2), byte for byte, so that a batch produced by a
//! Kafka client is stored and served as it came, and a Kafka fetch is a
//! copy of the log (see `docs/format.md`). A producer builds a batch with
//! [`BatchBuilder`]; the broker checks it with [`ValidBatch::new`], copies
//! it into the log unchanged and patches only the base offset and the
//! partition leader epoch, which sit before the CRC so that patching never
//! invalidates the checksum.
//!
//! ```text
//! offset size field
//!      0    8 base_offset             i64 BE  assigned by the broker; not covered by the CRC
//!      8    4 batch_length            i32 BE  bytes after this field (the whole batch less 12)
//!     12    4 partition_leader_epoch  i32 BE  set by the broker (0); not covered by the CRC
//!     16    1 magic                   i8      = 2
//!     17    4 crc                     u32 BE  CRC-32C (Castagnoli) of bytes [21, end)
//!     21    2 attributes              i16 BE  bits 0-2 compression (0 = none), 3 timestamp type,
//!                                             4 transactional, 5 control
//!     23    4 last_offset_delta       i32 BE  offset of the last record minus base_offset
//!     27    8 base_timestamp          i64 BE  milliseconds since the Unix epoch
//!     35    8 max_timestamp           i64 BE
//!     43    8 producer_id             i64 BE  -1 when not idempotent
//!     51    2 producer_epoch          i16 BE  -1 when there is no producer id
//!     53    4 base_sequence           i32 BE  -1 when not idempotent
//!     57    4 record_count            i32 BE
//!     61    . records
//! ```
//!
//! Each record is `length varint, attributes i8 (0), timestamp_delta
//! varlong, offset_delta varint, key_length varint (-1 = null), key,
//! value_length varint (-1 = null), value, header_count varint`, then per
//! header `key_length varint, key, value_length varint (-1 = null),
//! value`; every varint zigzag-encoded, as Kafka writes them.
//!
//! A compressed batch (attributes bits 0–2, see [`compression`]) keeps its
//! header in the clear and holds its records as one compressed blob after
//! it. [`ValidBatch::new`] decompresses the blob into a bounded buffer to
//! check every record, and keeps only the original bytes: the log stores a
//! compressed batch as it was sent. [`ValidBatch::records`] and
//! [`DecodedBatch`] hand out the records, borrowed from the batch when it
//! is uncompressed and from an owned decompressed buffer when it is not;
//! [`check_framing`] (recovery's check) never decompresses.
//!
//! Decoding never trusts a length: every length is checked against the
//! bytes actually present and against a named `MAX_*` limit before use, so a
//! hostile buffer can make decoding fail but never panic, allocate or read
//! out of bounds.

use bytes::Bytes;

use crate::varint::{self, VarintError};

pub mod compression;
pub mod sequence;

pub use compression::{Compression, MAX_DECOMPRESSED_BATCH_BYTES};

/// Size of the fixed batch header.
pub const HEADER_LEN: usize = 61;
/// The only batch format version this code reads and writes: Kafka's v2.
pub const MAGIC: u8 = 2;
/// Bytes before (and including) the length field, which the length does
/// not count (Kafka's `LOG_OVERHEAD`).
pub const LENGTH_OVERHEAD: usize = 12;
/// Largest batch accepted anywhere: on the wire, by the broker, on disk.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Most records one batch may hold.
pub const MAX_RECORDS_PER_BATCH: u32 = 1 << 20;
/// Most headers one record may carry.
pub const MAX_HEADERS_PER_RECORD: u64 = 1024;
/// Smallest possible encoded record: length, attributes, two deltas, null
/// key, null value, zero headers — one byte each.
pub const MIN_RECORD_LEN: usize = 7;
/// The bytes at the start of a batch that [`patch_base_offset`] rewrites
/// (base offset, length, leader epoch), none of them covered by the CRC.
pub const PATCHED_PREFIX: usize = layout::MAGIC;
/// The partition leader epoch the broker writes: a single broker leads
/// every partition in epoch 0.
pub const LEADER_EPOCH: i32 = 0;

/// Field offsets, each derived from the one before it.
pub mod layout {
    /// `base_offset: i64`.
    pub const BASE_OFFSET: usize = 0;
    /// `batch_length: i32`.
    pub const BATCH_LEN: usize = BASE_OFFSET + 8;
    /// `partition_leader_epoch: i32`.
    pub const LEADER_EPOCH: usize = BATCH_LEN + 4;
    /// `magic: i8`.
    pub const MAGIC: usize = LEADER_EPOCH + 4;
    /// `crc: u32`.
    pub const CRC: usize = MAGIC + 1;
    /// `attributes: i16`; the CRC covers this field and everything after.
    pub const ATTRIBUTES: usize = CRC + 4;
    /// `last_offset_delta: i32`.
    pub const LAST_OFFSET_DELTA: usize = ATTRIBUTES + 2;
    /// `base_timestamp: i64`.
    pub const FIRST_TIMESTAMP: usize = LAST_OFFSET_DELTA + 4;
    /// `max_timestamp: i64`.
    pub const MAX_TIMESTAMP: usize = FIRST_TIMESTAMP + 8;
    /// `producer_id: i64`.
    pub const PRODUCER_ID: usize = MAX_TIMESTAMP + 8;
    /// `producer_epoch: i16`.
    pub const PRODUCER_EPOCH: usize = PRODUCER_ID + 8;
    /// `base_sequence: i32`.
    pub const BASE_SEQUENCE: usize = PRODUCER_EPOCH + 2;
    /// `record_count: i32`.
    pub const RECORD_COUNT: usize = BASE_SEQUENCE + 4;
    /// First byte after the header.
    pub const RECORDS: usize = RECORD_COUNT + 4;
}

const _: () = assert!(layout::RECORDS == HEADER_LEN);
const _: () = assert!(layout::MAGIC == 16);
const _: () = assert!(layout::ATTRIBUTES == 21);
const _: () = assert!(LENGTH_OVERHEAD == layout::LEADER_EPOCH);
const _: () = assert!(MAX_BATCH_BYTES <= i32::MAX as usize);
const _: () = assert!((MAX_RECORDS_PER_BATCH as usize) * MIN_RECORD_LEN > MAX_BATCH_BYTES / 8);

const COMPRESSION_MASK: u16 = 0b0000_0111;
/// Set when the broker stamped the timestamps (LogAppendTime); Ferry
/// accepts and keeps it, and writes CreateTime (0).
const TIMESTAMP_TYPE_BIT: u16 = 1 << 3;
/// A builder's max timestamp before its first record.
const NO_RECORD_TIMESTAMP: i64 = i64::MIN;
const TRANSACTIONAL_BIT: u16 = 1 << 4;
const CONTROL_BIT: u16 = 1 << 5;
const KNOWN_ATTRIBUTES: u16 =
    COMPRESSION_MASK | TIMESTAMP_TYPE_BIT | TRANSACTIONAL_BIT | CONTROL_BIT;

/// No producer id: the batch is not idempotent.
pub const NO_PRODUCER_ID: i64 = -1;
/// No producer epoch.
pub const NO_PRODUCER_EPOCH: i16 = -1;
/// No sequence number.
pub const NO_SEQUENCE: i32 = -1;

/// Why a buffer is not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Fewer bytes are present than the batch needs.
    #[error("batch truncated: needs {needed} bytes, {available} available")]
    Truncated {
        /// Bytes the header says the batch occupies (or the header size).
        needed: usize,
        /// Bytes actually present.
        available: usize,
    },
    /// The length field is outside `[HEADER_LEN, MAX_BATCH_BYTES]`.
    #[error("batch length {len} outside [{min}, {max}]")]
    BadLength {
        /// The length read.
        len: u64,
        /// Smallest allowed.
        min: usize,
        /// Largest allowed.
        max: usize,
    },
    /// Unknown format version.
    #[error("unsupported batch magic {0} (expected {MAGIC})")]
    BadMagic(u8),
    /// The checksum does not match the bytes.
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// Attribute bits this version does not know, a compression codec
    /// other than the four, or a compressed control batch.
    #[error("unsupported batch attributes {0:#06x}")]
    BadAttributes(u16),
    /// The compressed records could not be decompressed.
    #[error("corrupt {codec} data: {reason}")]
    Decompress {
        /// The batch's codec.
        codec: Compression,
        /// What the decoder reported.
        reason: String,
    },
    /// The compressed records decompress to more than
    /// [`MAX_DECOMPRESSED_BATCH_BYTES`].
    #[error("{codec} records decompress past the limit of {max} bytes")]
    DecompressedTooLarge {
        /// The batch's codec.
        codec: Compression,
        /// The limit.
        max: usize,
    },
    /// Compressing the records failed.
    #[error("{codec} compression failed: {reason}")]
    Compress {
        /// The codec asked for.
        codec: Compression,
        /// What the encoder reported.
        reason: String,
    },
    /// [`RecordIter::new`] was given a compressed batch, whose records it
    /// cannot read in place; [`ValidBatch::records`] decompresses them.
    #[error("the records are {0}-compressed")]
    CompressedRecords(Compression),
    /// The records do not agree with the header or with their own lengths.
    #[error("corrupt record {index}: {reason}")]
    CorruptRecord {
        /// Index of the record within the batch.
        index: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// The header's record count is zero or above `MAX_RECORDS_PER_BATCH`.
    #[error("record count {0} outside [1, {MAX_RECORDS_PER_BATCH}]")]
    BadRecordCount(u32),
}

/// The decoded fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Length of the whole batch in bytes.
    pub batch_len: u32,
    /// Stored CRC.
    pub crc: u32,
    /// Raw attribute bits.
    pub attributes: u16,
    /// The partition leader epoch (outside the CRC).
    pub leader_epoch: i32,
    /// Producer epoch, or [`NO_PRODUCER_EPOCH`].
    pub producer_epoch: i16,
    /// Offset of the last record minus the base offset.
    pub last_offset_delta: u32,
    /// Timestamp of the first record.
    pub first_timestamp: i64,
    /// Largest record timestamp.
    pub max_timestamp: i64,
    /// Producer id, or [`NO_PRODUCER_ID`].
    pub producer_id: i64,
    /// Sequence number of the first record, or [`NO_SEQUENCE`].
    pub base_sequence: i32,
    /// Number of records.
    pub record_count: u32,
}

fn read_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}
fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}
fn read_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(b)
}
fn write(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

impl BatchHeader {
    /// Decodes and bounds-checks the header at the start of `buf`.
    ///
    /// Checks the length field, magic and attributes, but neither the CRC
    /// nor the records; use [`ValidBatch::new`] for the whole batch.
    pub fn decode(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Truncated {
                needed: HEADER_LEN,
                available: buf.len(),
            });
        }
        // The field counts the bytes after itself; read as i32, a
        // negative length is as bad as a huge one.
        let field = i64::from(read_u32(buf, layout::BATCH_LEN) as i32);
        let total = field + LENGTH_OVERHEAD as i64;
        if total < HEADER_LEN as i64 || total > MAX_BATCH_BYTES as i64 {
            return Err(BatchError::BadLength {
                len: total.max(0) as u64,
                min: HEADER_LEN,
                max: MAX_BATCH_BYTES,
            });
        }
        let batch_len = total as u32;
        let magic = buf[layout::MAGIC];
        if magic != MAGIC {
            return Err(BatchError::BadMagic(magic));
        }
        let attributes = read_u16(buf, layout::ATTRIBUTES);
        // Kafka never compresses a control batch, and a marker must be
        // readable without decompressing.
        let codec = attributes & COMPRESSION_MASK;
        if attributes & !KNOWN_ATTRIBUTES != 0
            || codec > u16::from(Compression::Zstd.id())
            || (codec != 0 && attributes & CONTROL_BIT != 0)
        {
            return Err(BatchError::BadAttributes(attributes));
        }
        let record_count = read_u32(buf, layout::RECORD_COUNT);
        if record_count == 0 || record_count > MAX_RECORDS_PER_BATCH {
            return Err(BatchError::BadRecordCount(record_count));
        }
        let last_offset_delta = read_u32(buf, layout::LAST_OFFSET_DELTA);
        if last_offset_delta > i32::MAX as u32 {
            return Err(BatchError::CorruptRecord {
                index: 0,
                reason: "negative last offset delta",
            });
        }
        let base_offset = read_u64(buf, layout::BASE_OFFSET);
        if base_offset > i64::MAX as u64 {
            return Err(BatchError::CorruptRecord {
                index: 0,
                reason: "negative base offset",
            });
        }
        Ok(BatchHeader {
            base_offset,
            batch_len,
            crc: read_u32(buf, layout::CRC),
            attributes,
            leader_epoch: read_u32(buf, layout::LEADER_EPOCH) as i32,
            producer_epoch: read_u16(buf, layout::PRODUCER_EPOCH) as i16,
            last_offset_delta,
            first_timestamp: read_u64(buf, layout::FIRST_TIMESTAMP) as i64,
            max_timestamp: read_u64(buf, layout::MAX_TIMESTAMP) as i64,
            producer_id: read_u64(buf, layout::PRODUCER_ID) as i64,
            base_sequence: read_u32(buf, layout::BASE_SEQUENCE) as i32,
            record_count,
        })
    }

    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.last_offset_delta)
    }

    /// Offset just past the batch.
    pub fn next_offset(&self) -> u64 {
        self.last_offset() + 1
    }

    /// Whether the batch belongs to a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    /// Whether the batch is a control batch (a transaction marker).
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }

    /// The timestamp of a record of this batch with `timestamp_delta`:
    /// the first timestamp plus the delta, or under log-append time the
    /// batch's max timestamp (the time the log appended it), as Kafka
    /// readers take it.
    pub fn record_timestamp(&self, timestamp_delta: i64) -> i64 {
        if self.attributes & TIMESTAMP_TYPE_BIT != 0 {
            self.max_timestamp
        } else {
            self.first_timestamp.wrapping_add(timestamp_delta)
        }
    }

    /// The codec of the records, or `None` if bits 0–2 name none of the
    /// four (never for a header from [`BatchHeader::decode`]).
    /// Whether the records are compressed.
    pub fn is_compressed(&self) -> bool {
        self.attributes & COMPRESSION_MASK != 0
    }

    fn codec(&self) -> Option<Compression> {
        Compression::from_id((self.attributes & COMPRESSION_MASK) as u8)
    }

    /// Sequence number of the last record, wrapping as Kafka's does. It
    /// follows the offset span, which a cleaned batch keeps when its last
    /// records are gone.
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence == NO_SEQUENCE {
            return NO_SEQUENCE;
        }
        sequence::advance(self.base_sequence, self.last_offset_delta as i32)
    }
}

/// CRC-32C of a batch's covered bytes: everything from the attributes on.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[layout::ATTRIBUTES..])
}

/// Overwrites the base offset of the batch at the start of `buf`, and its
/// partition leader epoch with [`LEADER_EPOCH`].
///
/// Both are outside the CRC, so the batch stays valid.
pub fn patch_base_offset(buf: &mut [u8], base_offset: u64) {
    write(buf, layout::BASE_OFFSET, &base_offset.to_be_bytes());
    write(buf, layout::LEADER_EPOCH, &LEADER_EPOCH.to_be_bytes());
}

/// Returns a copy of `batch` carrying `stamp` (producer id, epoch and base
/// sequence) in its header, with the CRC recomputed.
///
/// The stamp lives inside the CRC-covered header, so a producer that must
/// renumber a sealed batch (after a producer-epoch bump) rewrites those
/// fields and the checksum; the records are copied unchanged.
///
/// # Panics
/// If `batch` is shorter than [`HEADER_LEN`].
pub fn restamp(batch: &[u8], stamp: ProducerStamp) -> Bytes {
    assert!(batch.len() >= HEADER_LEN, "a batch has a full header");
    let mut b = batch.to_vec();
    write(
        &mut b,
        layout::PRODUCER_EPOCH,
        &stamp.producer_epoch.to_be_bytes(),
    );
    write(
        &mut b,
        layout::PRODUCER_ID,
        &stamp.producer_id.to_be_bytes(),
    );
    write(
        &mut b,
        layout::BASE_SEQUENCE,
        &stamp.base_sequence.to_be_bytes(),
    );
    let crc = compute_crc(&b);
    write(&mut b, layout::CRC, &crc.to_be_bytes());
    Bytes::from(b)
}

/// Checks the header and CRC of the batch at the start of `buf`, but not
/// the records. Returns the header; the batch is `buf[..header.batch_len]`.
///
/// This is the check recovery runs on every batch past the checkpoint.
pub fn check_framing(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::decode(buf)?;
    let len = header.batch_len as usize;
    if buf.len() < len {
        return Err(BatchError::Truncated {
            needed: len,
            available: buf.len(),
        });
    }
    let computed = compute_crc(&buf[..len]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// A batch whose header, CRC and every record have been checked.
///
/// The only way to get one is [`ValidBatch::new`], so code that takes a
/// `ValidBatch` (the log's append path) need not check again.
#[derive(Debug, Clone, Copy)]
pub struct ValidBatch<'a> {
    header: BatchHeader,
    bytes: &'a [u8],
}

impl<'a> ValidBatch<'a> {
    /// Validates the batch at the start of `buf`. Bytes after the batch are
    /// ignored; use [`ValidBatch::exact`] to reject them.
    ///
    /// A compressed batch's records are decompressed into a buffer of at
    /// most [`MAX_DECOMPRESSED_BATCH_BYTES`], checked, and dropped; use
    /// [`DecodedBatch::new`] to keep them.
    pub fn new(buf: &'a [u8]) -> Result<ValidBatch<'a>, BatchError> {
        DecodedBatch::new(buf).map(DecodedBatch::into_batch)
    }

    /// Validates `buf`, which must hold exactly one batch.
    pub fn exact(buf: &'a [u8]) -> Result<ValidBatch<'a>, BatchError> {
        DecodedBatch::exact(buf).map(DecodedBatch::into_batch)
    }

    /// The decoded header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch's bytes, exactly `batch_len` long (compressed records
    /// stay compressed).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The codec of the records.
    pub fn compression(&self) -> Compression {
        self.header.codec().unwrap_or_default()
    }

    /// The records: borrowed from the batch if it is uncompressed, else
    /// decompressed (again) into an owned buffer. They were validated, so
    /// decompressing succeeds as it did then, and every record the
    /// iterator yields is `Ok`.
    pub fn records(&self) -> Result<Records<'a>, BatchError> {
        Records::of(&self.header, self.bytes)
    }
}

/// The records of a batch: the bytes after the header of an uncompressed
/// batch, borrowed, or a compressed batch's records decompressed into an
/// owned buffer. [`Records::iter`] reads both the same way.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    header: BatchHeader,
    bytes: RecordBytes<'a>,
}

#[derive(Debug, Clone)]
enum RecordBytes<'a> {
    Borrowed(&'a [u8]),
    Decompressed(Bytes),
}

impl<'a> Records<'a> {
    /// The records of `batch` (exactly `header.batch_len` bytes, framing
    /// checked), decompressing them if the header says so.
    fn of(header: &BatchHeader, batch: &'a [u8]) -> Result<Records<'a>, BatchError> {
        let body = &batch[HEADER_LEN..];
        let bytes = match header.codec() {
            Some(Compression::None) => RecordBytes::Borrowed(body),
            Some(codec) => RecordBytes::Decompressed(Bytes::from(compression::decompress(
                codec,
                body,
                MAX_DECOMPRESSED_BATCH_BYTES,
            )?)),
            None => return Err(BatchError::BadAttributes(header.attributes)),
        };
        Ok(Records {
            header: *header,
            bytes,
        })
    }

    /// Iterates the records, checking every length.
    pub fn iter(&self) -> RecordIter<'_> {
        RecordIter::over(&self.header, self.as_bytes())
    }

    /// The encoded records, decompressed.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.bytes {
            RecordBytes::Borrowed(b) => b,
            RecordBytes::Decompressed(b) => b,
        }
    }

    /// The buffer the records were decompressed into, or `None` if they
    /// are borrowed from the batch. Keys and values of a compressed batch
    /// can be sliced out of it (`Bytes::slice_ref`) without a copy.
    pub fn decompressed(&self) -> Option<&Bytes> {
        match &self.bytes {
            RecordBytes::Borrowed(_) => None,
            RecordBytes::Decompressed(b) => Some(b),
        }
    }
}

/// A validated batch together with its records, decompressed once.
///
/// What a reader of records wants: [`ValidBatch::new`] followed by
/// [`ValidBatch::records`] would decompress a compressed batch twice.
#[derive(Debug, Clone)]
pub struct DecodedBatch<'a> {
    batch: ValidBatch<'a>,
    records: Records<'a>,
}

impl<'a> DecodedBatch<'a> {
    /// Validates the batch at the start of `buf` (framing, CRC, and every
    /// record, decompressed if need be) and keeps its records.
    pub fn new(buf: &'a [u8]) -> Result<DecodedBatch<'a>, BatchError> {
        let header = check_framing(buf)?;
        let bytes = &buf[..header.batch_len as usize];
        let records = Records::of(&header, bytes)?;
        let mut iter = records.iter();
        for record in &mut iter {
            record?;
        }
        iter.finish()?;
        Ok(DecodedBatch {
            batch: ValidBatch { header, bytes },
            records,
        })
    }

    /// Like [`DecodedBatch::new`] for a `buf` that must hold exactly one
    /// batch.
    pub fn exact(buf: &'a [u8]) -> Result<DecodedBatch<'a>, BatchError> {
        let decoded = DecodedBatch::new(buf)?;
        let len = decoded.batch.bytes.len();
        if len != buf.len() {
            return Err(BatchError::BadLength {
                len: buf.len() as u64,
                min: len,
                max: len,
            });
        }
        Ok(decoded)
    }

    /// The validated batch.
    pub fn batch(&self) -> &ValidBatch<'a> {
        &self.batch
    }

    /// The decoded header.
    pub fn header(&self) -> &BatchHeader {
        &self.batch.header
    }

    /// The records, each already checked.
    pub fn records(&self) -> &Records<'a> {
        &self.records
    }

    /// Drops the records, keeping the validated batch.
    pub fn into_batch(self) -> ValidBatch<'a> {
        self.batch
    }
}

/// One record, borrowed from its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Offset relative to the batch's base offset.
    pub offset_delta: u32,
    /// Timestamp relative to the batch's first timestamp.
    pub timestamp_delta: i64,
    /// Key, or `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// Value, or `None` for a null value (a tombstone).
    pub value: Option<&'a [u8]>,
    headers: &'a [u8],
    header_count: u32,
}

impl<'a> Record<'a> {
    /// Iterates the record's headers as `(key, value)` pairs.
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter {
            buf: self.headers,
            pos: 0,
            remaining: self.header_count,
        }
    }
}

/// Iterator over a record's headers. Headers were bounds-checked when the
/// record was decoded, so iteration cannot fail.
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    buf: &'a [u8],
    pos: usize,
    remaining: u32,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let (key, value) = decode_header(self.buf, &mut self.pos).ok()?;
        Some((key?, value))
    }
}

/// Iterator over the records of a batch that decodes lazily and checks
/// every length. After the last record, [`RecordIter::finish`] confirms
/// the records filled the batch exactly.
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    /// The encoded records, and nothing else.
    buf: &'a [u8],
    pos: usize,
    index: u32,
    count: u32,
    last_offset_delta: u32,
    prev_offset_delta: Option<u32>,
    failed: bool,
    /// Set when built over a compressed batch's blob, which it refuses.
    compressed: Option<Compression>,
}

impl<'a> RecordIter<'a> {
    /// Iterates the records of the uncompressed `batch`, whose header is
    /// `header`, in place. Over a compressed batch it yields one
    /// [`BatchError::CompressedRecords`]: use [`ValidBatch::records`].
    pub fn new(header: &BatchHeader, batch: &'a [u8]) -> RecordIter<'a> {
        let end = (header.batch_len as usize).min(batch.len());
        let mut iter = RecordIter::over(header, &batch[HEADER_LEN.min(end)..end]);
        iter.compressed = match header.codec() {
            Some(Compression::None) => None,
            codec => Some(codec.unwrap_or_default()),
        };
        iter
    }

    /// Iterates `records`, the encoded records of the batch with `header`.
    fn over(header: &BatchHeader, records: &'a [u8]) -> RecordIter<'a> {
        RecordIter {
            buf: records,
            pos: 0,
            index: 0,
            count: header.record_count,
            last_offset_delta: header.last_offset_delta,
            prev_offset_delta: None,
            failed: false,
            compressed: None,
        }
    }

    /// Checks that all records were read and they filled the batch exactly.
    pub fn finish(&self) -> Result<(), BatchError> {
        let corrupt = |reason| BatchError::CorruptRecord {
            index: self.index,
            reason,
        };
        if self.index != self.count {
            return Err(corrupt("fewer records than the header's count"));
        }
        if self.pos != self.buf.len() {
            return Err(corrupt("trailing bytes after the last record"));
        }
        // The last record may sit below the header's last offset delta: a
        // compacted batch keeps its span after its last records are gone.
        // Every delta was checked against the header as it was read.
        Ok(())
    }

    fn decode_next(&mut self) -> Result<Record<'a>, BatchError> {
        if let Some(codec) = self.compressed {
            return Err(BatchError::CompressedRecords(codec));
        }
        let index = self.index;
        let corrupt = |reason| BatchError::CorruptRecord { index, reason };
        let varint_err = |e: VarintError| match e {
            VarintError::Truncated => corrupt("truncated varint"),
            VarintError::Overlong => corrupt("overlong varint"),
        };
        let len = varint::get_varint(self.buf, &mut self.pos).map_err(varint_err)?;
        let remaining = self.buf.len() - self.pos;
        if len < 0 {
            return Err(corrupt("negative record length"));
        }
        let len = len as u64;
        if len > remaining as u64 {
            return Err(corrupt("record length exceeds the batch"));
        }
        let end = self.pos + len as usize;
        let rec = &self.buf[..end];
        let mut pos = self.pos;
        let attributes = *rec.get(pos).ok_or(corrupt("missing record attributes"))?;
        if attributes != 0 {
            return Err(corrupt("unknown record attributes"));
        }
        pos += 1;
        let timestamp_delta = varint::get_varint(rec, &mut pos).map_err(varint_err)?;
        let offset_delta = varint::get_varint(rec, &mut pos).map_err(varint_err)?;
        let offset_delta = u32::try_from(offset_delta)
            .ok()
            .filter(|d| *d <= i32::MAX as u32)
            .ok_or(corrupt("offset delta outside [0, i32::MAX]"))?;
        if let Some(prev) = self.prev_offset_delta
            && offset_delta <= prev
        {
            return Err(corrupt("offset deltas not strictly increasing"));
        }
        if offset_delta > self.last_offset_delta {
            return Err(corrupt(
                "offset delta beyond the header's last offset delta",
            ));
        }
        let key = get_bytes(rec, &mut pos).map_err(corrupt)?;
        let value = get_bytes(rec, &mut pos).map_err(corrupt)?;
        let header_count = varint::get_varint(rec, &mut pos).map_err(varint_err)?;
        if header_count < 0 {
            return Err(corrupt("negative header count"));
        }
        let header_count = header_count as u64;
        if header_count > MAX_HEADERS_PER_RECORD {
            return Err(corrupt("too many headers"));
        }
        let headers_start = pos;
        for _ in 0..header_count {
            let (key, _) = decode_header(rec, &mut pos).map_err(corrupt)?;
            if key.is_none() {
                return Err(corrupt("null header key"));
            }
        }
        if pos != end {
            return Err(corrupt("record length disagrees with its fields"));
        }
        self.pos = end;
        self.prev_offset_delta = Some(offset_delta);
        Ok(Record {
            offset_delta,
            timestamp_delta,
            key,
            value,
            headers: &rec[headers_start..end],
            header_count: header_count as u32,
        })
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.index >= self.count {
            return None;
        }
        let result = self.decode_next();
        match result {
            Ok(_) => self.index += 1,
            Err(_) => self.failed = true,
        }
        Some(result)
    }
}

/// Reads a zigzag length (-1 = null) and that many bytes.
fn get_bytes<'a>(buf: &'a [u8], pos: &mut usize) -> Result<Option<&'a [u8]>, &'static str> {
    let len = varint::get_varint(buf, pos).map_err(|_| "bad length varint")?;
    if len == -1 {
        return Ok(None);
    }
    if len < 0 {
        return Err("negative length");
    }
    let len = len as u64;
    if len > (buf.len() - *pos) as u64 {
        return Err("field length exceeds the record");
    }
    let start = *pos;
    *pos += len as usize;
    Ok(Some(&buf[start..*pos]))
}

type HeaderPair<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

fn decode_header<'a>(buf: &'a [u8], pos: &mut usize) -> Result<HeaderPair<'a>, &'static str> {
    let key = get_bytes(buf, pos)?;
    let value = get_bytes(buf, pos)?;
    Ok((key, value))
}

/// Producer identity stamped on a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    /// Producer id.
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
    /// Sequence number of the batch's first record.
    pub base_sequence: i32,
}

impl ProducerStamp {
    /// The stamp of a producer without idempotence.
    pub const NONE: ProducerStamp = ProducerStamp {
        producer_id: NO_PRODUCER_ID,
        producer_epoch: NO_PRODUCER_EPOCH,
        base_sequence: NO_SEQUENCE,
    };
}

/// Builds one batch in the exact format stored on disk.
///
/// ```
/// use ferry_proto::batch::{BatchBuilder, ValidBatch};
///
/// let mut builder = BatchBuilder::new(1_700_000_000_000);
/// builder.push(1_700_000_000_000, Some(b"key"), Some(b"value"), &[]);
/// let bytes = builder.finish();
/// let batch = ValidBatch::exact(&bytes).unwrap();
/// assert_eq!(batch.header().record_count, 1);
/// ```
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    first_timestamp: i64,
    max_timestamp: i64,
    count: u32,
    stamp: ProducerStamp,
    attributes: u16,
    /// Offset delta of the last record pushed; `None` before the first.
    last_delta: Option<u32>,
    /// The last offset delta the header must carry at least: a rewritten
    /// batch keeps its original span, so that its producer's sequence
    /// range and the next batch's offsets stay as they were.
    min_last_delta: u32,
}

impl BatchBuilder {
    /// Starts an empty batch whose timestamps are relative to `first_timestamp`.
    pub fn new(first_timestamp: i64) -> BatchBuilder {
        Self::with_capacity(first_timestamp, 1024)
    }

    /// Like [`BatchBuilder::new`], reserving `capacity` bytes up front.
    pub fn with_capacity(first_timestamp: i64, capacity: usize) -> BatchBuilder {
        let mut buf = Vec::with_capacity(capacity.clamp(HEADER_LEN, MAX_BATCH_BYTES));
        buf.resize(HEADER_LEN, 0);
        BatchBuilder {
            buf,
            first_timestamp,
            max_timestamp: NO_RECORD_TIMESTAMP,
            count: 0,
            stamp: ProducerStamp::NONE,
            attributes: 0,
            last_delta: None,
            min_last_delta: 0,
        }
    }

    /// Starts a rewrite of the batch with `header` (what a log cleaner
    /// does): the same first timestamp, producer stamp, attributes
    /// (compression aside: [`BatchBuilder::finish_compressed`] picks it)
    /// and last offset delta. Records are pushed with their original
    /// offset deltas by [`BatchBuilder::push_at`]; those left out become
    /// gaps.
    pub fn rewriting(header: &BatchHeader, capacity: usize) -> BatchBuilder {
        let mut b = BatchBuilder::with_capacity(header.first_timestamp, capacity);
        b.stamp = ProducerStamp {
            producer_id: header.producer_id,
            producer_epoch: header.producer_epoch,
            base_sequence: header.base_sequence,
        };
        b.attributes = header.attributes & !COMPRESSION_MASK;
        b.min_last_delta = header.last_offset_delta;
        if header.attributes & TIMESTAMP_TYPE_BIT != 0 {
            // Log-append time: the header's timestamp is the record time.
            b.max_timestamp = header.max_timestamp;
        }
        b
    }

    /// Stamps the batch with a producer id, epoch and base sequence.
    pub fn producer(mut self, stamp: ProducerStamp) -> BatchBuilder {
        self.stamp = stamp;
        self
    }

    /// Marks the batch as part of a transaction.
    pub fn transactional(mut self, yes: bool) -> BatchBuilder {
        if yes {
            self.attributes |= TRANSACTIONAL_BIT;
        } else {
            self.attributes &= !TRANSACTIONAL_BIT;
        }
        self
    }

    /// Marks the batch as a control batch.
    pub fn control(mut self, yes: bool) -> BatchBuilder {
        if yes {
            self.attributes |= CONTROL_BIT;
        } else {
            self.attributes &= !CONTROL_BIT;
        }
        self
    }

    /// Encoded size of a record with these fields, framing included.
    pub fn record_size(
        offset_delta: u32,
        timestamp_delta: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) -> usize {
        let body = Self::body_len(offset_delta, timestamp_delta, key, value, headers);
        varint::varint_len(body as i64) + body
    }

    fn bytes_len(b: Option<&[u8]>) -> usize {
        match b {
            None => 1,
            Some(b) => varint::varint_len(b.len() as i64) + b.len(),
        }
    }

    fn body_len(
        offset_delta: u32,
        timestamp_delta: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) -> usize {
        1 + varint::varint_len(timestamp_delta)
            + varint::varint_len(i64::from(offset_delta))
            + Self::bytes_len(key)
            + Self::bytes_len(value)
            + varint::varint_len(headers.len() as i64)
            + headers
                .iter()
                .map(|(k, v)| Self::bytes_len(Some(k)) + Self::bytes_len(*v))
                .sum::<usize>()
    }

    /// Appends a record. The caller keeps the batch under its size limit
    /// with [`BatchBuilder::size`] and [`BatchBuilder::record_size`].
    pub fn push(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) {
        let offset_delta = self.last_delta.map_or(0, |d| d + 1);
        self.push_at(offset_delta, timestamp, key, value, headers);
    }

    /// Appends a record at `offset_delta` from the base offset, which must
    /// be above every delta pushed before.
    ///
    /// # Panics
    /// If `offset_delta` does not increase.
    pub fn push_at(
        &mut self,
        offset_delta: u32,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) {
        assert!(
            self.last_delta.is_none_or(|d| offset_delta > d),
            "offset deltas must increase"
        );
        let timestamp_delta = timestamp.wrapping_sub(self.first_timestamp);
        let body = Self::body_len(offset_delta, timestamp_delta, key, value, headers);
        let out = &mut self.buf;
        varint::put_varint(out, body as i64);
        out.push(0);
        varint::put_varint(out, timestamp_delta);
        varint::put_varint(out, i64::from(offset_delta));
        put_bytes(out, key);
        put_bytes(out, value);
        varint::put_varint(out, headers.len() as i64);
        for (k, v) in headers {
            put_bytes(out, Some(k));
            put_bytes(out, *v);
        }
        self.count += 1;
        self.last_delta = Some(offset_delta);
        if self.attributes & TIMESTAMP_TYPE_BIT == 0 {
            self.max_timestamp = self.max_timestamp.max(timestamp);
        }
    }

    /// Number of records so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Whether no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size so far, header included.
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    /// Writes the header and CRC and returns the batch, with base offset 0.
    ///
    /// # Panics
    /// If no record was pushed: an empty batch cannot be represented.
    pub fn finish(mut self) -> Bytes {
        assert!(self.count > 0, "a batch needs at least one record");
        self.write_header(self.attributes);
        Bytes::from(self.buf)
    }

    /// Like [`BatchBuilder::finish`], with the records compressed with
    /// `codec`.
    ///
    /// If the compressed batch would exceed [`MAX_BATCH_BYTES`] (records
    /// that do not compress, in a batch already near the limit) or the
    /// records exceed [`MAX_DECOMPRESSED_BATCH_BYTES`], the batch is
    /// written uncompressed instead, exactly as [`BatchBuilder::finish`]
    /// writes it: compression saves bytes, it is never a reason to refuse
    /// records. [`ValidBatch::compression`] of the result tells which.
    ///
    /// # Panics
    /// If no record was pushed: an empty batch cannot be represented.
    pub fn finish_compressed(self, codec: Compression) -> Bytes {
        assert!(self.count > 0, "a batch needs at least one record");
        match self.compress_records(codec) {
            Some(out) => {
                let attributes = (self.attributes & !COMPRESSION_MASK) | u16::from(codec.id());
                let mut compressed = BatchBuilder { buf: out, ..self };
                compressed.write_header(attributes);
                Bytes::from(compressed.buf)
            }
            None => self.finish(),
        }
    }

    /// A header's worth of space followed by the records compressed with
    /// `codec`, or `None` if the batch is to stay uncompressed.
    fn compress_records(&self, codec: Compression) -> Option<Vec<u8>> {
        let records = &self.buf[HEADER_LEN..];
        if codec == Compression::None || records.len() > MAX_DECOMPRESSED_BATCH_BYTES {
            return None;
        }
        let mut out = Vec::with_capacity(HEADER_LEN + records.len() / 2);
        out.resize(HEADER_LEN, 0);
        // Every encoder writes into memory, which cannot fail; an error
        // would leave the records uncompressed, never lost.
        compression::compress(codec, records, &mut out).ok()?;
        (out.len() <= MAX_BATCH_BYTES).then_some(out)
    }

    /// Fills in the header of `self.buf`, records already in place, with
    /// `attributes`, and the CRC last.
    fn write_header(&mut self, attributes: u16) {
        let length = (self.buf.len() - LENGTH_OVERHEAD) as u32;
        let b = &mut self.buf;
        write(b, layout::BASE_OFFSET, &0u64.to_be_bytes());
        write(b, layout::BATCH_LEN, &length.to_be_bytes());
        write(b, layout::LEADER_EPOCH, &(-1i32).to_be_bytes());
        b[layout::MAGIC] = MAGIC;
        write(b, layout::ATTRIBUTES, &attributes.to_be_bytes());
        let last_delta = self.last_delta.unwrap_or(0).max(self.min_last_delta);
        write(b, layout::LAST_OFFSET_DELTA, &last_delta.to_be_bytes());
        write(
            b,
            layout::FIRST_TIMESTAMP,
            &self.first_timestamp.to_be_bytes(),
        );
        // The largest record timestamp, whatever the first timestamp (the
        // records' base) is: lookups by time and retention read it.
        let max_timestamp = match self.max_timestamp {
            NO_RECORD_TIMESTAMP => self.first_timestamp,
            ts => ts,
        };
        write(b, layout::MAX_TIMESTAMP, &max_timestamp.to_be_bytes());
        write(
            b,
            layout::PRODUCER_ID,
            &self.stamp.producer_id.to_be_bytes(),
        );
        write(
            b,
            layout::PRODUCER_EPOCH,
            &self.stamp.producer_epoch.to_be_bytes(),
        );
        write(
            b,
            layout::BASE_SEQUENCE,
            &self.stamp.base_sequence.to_be_bytes(),
        );
        write(b, layout::RECORD_COUNT, &self.count.to_be_bytes());
        let crc = compute_crc(b);
        write(b, layout::CRC, &crc.to_be_bytes());
    }
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => varint::put_varint(out, -1),
        Some(b) => {
            varint::put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// Splits a buffer of concatenated batches (a fetch response, a segment)
/// into validated batches. Stops with an error at the first bad batch.
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    inner: DecodedBatchIter<'a>,
}

impl<'a> BatchIter<'a> {
    /// Iterates the batches in `buf`.
    pub fn new(buf: &'a [u8]) -> BatchIter<'a> {
        BatchIter {
            inner: DecodedBatchIter::new(buf),
        }
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<ValidBatch<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|r| r.map(DecodedBatch::into_batch))
    }
}

/// Like [`BatchIter`], yielding each batch with its records decoded once
/// ([`DecodedBatch`]): the iterator for readers of records.
#[derive(Debug, Clone)]
pub struct DecodedBatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> DecodedBatchIter<'a> {
    /// Iterates the batches in `buf`.
    pub fn new(buf: &'a [u8]) -> DecodedBatchIter<'a> {
        DecodedBatchIter { buf, pos: 0 }
    }
}

impl<'a> Iterator for DecodedBatchIter<'a> {
    type Item = Result<DecodedBatch<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let result = DecodedBatch::new(&self.buf[self.pos..]);
        match &result {
            Ok(batch) => self.pos += batch.batch().bytes().len(),
            Err(_) => self.pos = self.buf.len(),
        }
        Some(result)
    }
}

#[cfg(test)]
mod tests;
