//! The four compression codecs of Kafka's RecordBatch v2.
//!
//! A compressed batch keeps its 61-byte header in the clear; everything
//! after it is one compressed blob that decompresses to the records,
//! encoded exactly as in an uncompressed batch. The codec is attributes
//! bits 0–2:
//!
//! | id | codec  | blob |
//! |----|--------|------|
//! | 0  | none   | the records themselves |
//! | 1  | gzip   | a gzip stream (RFC 1952), possibly several members |
//! | 2  | snappy | raw snappy, or the xerial "snappy-java" framing: magic `\x82SNAPPY\0`, version i32 BE, compatible version i32 BE, then `[length i32 BE, raw snappy chunk]*` |
//! | 3  | lz4    | LZ4 frames (the standard frame format, magic `0x184D2204`) |
//! | 4  | zstd   | zstd frames (RFC 8878) |
//!
//! The Java client writes xerial-framed snappy and librdkafka writes raw
//! snappy; decoding tells them apart by the magic. Ferry writes the xerial
//! framing, which both read.
//!
//! Decompression is bounded: output past [`MAX_DECOMPRESSED_BATCH_BYTES`]
//! is refused as soon as the decoder produces it, so a small blob that
//! expands without end (a decompression bomb) costs at most that many
//! bytes of memory, and corrupt data is a [`BatchError`], never a panic.
//!
//! Every codec is pure Rust: `flate2` on miniz_oxide, `snap`, `lz4_flex`
//! and `ruzstd`. `ruzstd`'s encoder implements its "fastest" level (about
//! zstd's level 1), which is the one Ferry produces with.

use std::fmt;
use std::io::{Read, Write};
use std::str::FromStr;

use super::BatchError;

/// Most bytes the records of one compressed batch may decompress to.
///
/// Four times [`super::MAX_BATCH_BYTES`]: a compressed batch may hold more
/// record bytes than the largest uncompressed batch (the Java producer
/// sizes batches by their compressed size), and text or JSON records
/// commonly compress 4–10×, so the cap admits every batch a real client
/// sends under Kafka's default 1 MiB request limit with room to spare,
/// while bounding the memory one batch can make the broker or a consumer
/// allocate while checking it.
pub const MAX_DECOMPRESSED_BATCH_BYTES: usize = 64 * 1024 * 1024;

const _: () = assert!(MAX_DECOMPRESSED_BATCH_BYTES >= super::MAX_BATCH_BYTES);
const _: () = assert!(MAX_DECOMPRESSED_BATCH_BYTES <= i32::MAX as usize);

/// The xerial snappy-java stream header's magic.
pub const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
/// The xerial header: magic, version i32, compatible version i32.
const XERIAL_HEADER_LEN: usize = XERIAL_MAGIC.len() + 8;
/// The xerial version and compatible version snappy-java writes.
const XERIAL_VERSION: i32 = 1;
/// Uncompressed bytes per xerial chunk, as snappy-java writes them.
const XERIAL_BLOCK_BYTES: usize = 32 * 1024;
/// Bytes a bounded read asks the decoder for at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A batch's compression codec: attributes bits 0–2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Compression {
    /// Uncompressed records.
    #[default]
    None = 0,
    /// gzip (deflate).
    Gzip = 1,
    /// Snappy, raw or xerial-framed.
    Snappy = 2,
    /// LZ4 frame format.
    Lz4 = 3,
    /// Zstandard.
    Zstd = 4,
}

impl Compression {
    /// Every codec, in id order.
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// The codec with this id (attributes bits 0–2), if it is one.
    pub fn from_id(id: u8) -> Option<Compression> {
        Compression::ALL.get(usize::from(id)).copied()
    }

    /// The codec's id, as stored in attributes bits 0–2.
    pub fn id(self) -> u8 {
        self as u8
    }

    /// The codec's name, as Kafka clients spell it (`compression.type`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A codec name that is not one of `none`, `gzip`, `snappy`, `lz4`, `zstd`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compression {0:?} (expected none, gzip, snappy, lz4 or zstd)")]
pub struct UnknownCompression(pub String);

impl FromStr for Compression {
    type Err = UnknownCompression;

    fn from_str(s: &str) -> Result<Compression, UnknownCompression> {
        Compression::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownCompression(s.to_string()))
    }
}

/// Decompresses `input`, compressed with `codec`, refusing output past
/// `max` bytes with [`BatchError::DecompressedTooLarge`]. Never allocates
/// more than `max` bytes of output.
///
/// [`Compression::None`] returns a copy of `input` under the same bound.
pub fn decompress(codec: Compression, input: &[u8], max: usize) -> Result<Vec<u8>, BatchError> {
    let corrupt = |reason: String| BatchError::Decompress { codec, reason };
    match codec {
        Compression::None => {
            if input.len() > max {
                return Err(BatchError::DecompressedTooLarge { codec, max });
            }
            Ok(input.to_vec())
        }
        Compression::Gzip => {
            read_bounded(codec, flate2::read::MultiGzDecoder::new(input), input, max)
        }
        Compression::Snappy => {
            if input.starts_with(XERIAL_MAGIC) {
                snappy_xerial(input, max)
            } else {
                let mut out = Vec::new();
                snappy_raw(input, max, &mut out)?;
                Ok(out)
            }
        }
        Compression::Lz4 => {
            read_bounded(codec, lz4_flex::frame::FrameDecoder::new(input), input, max)
        }
        Compression::Zstd => {
            if input.is_empty() {
                return Err(corrupt("empty zstd blob".into()));
            }
            let mut out = Vec::new();
            let mut rest = input;
            // A zstd blob may be several frames back to back; each one's
            // window (the decoder's buffer) is bounded by the cap.
            while !rest.is_empty() {
                let decoder = ruzstd::decoding::StreamingDecoder::new_with_max_window_size(
                    &mut rest, max as u64,
                )
                .map_err(|e| corrupt(e.to_string()))?;
                read_bounded_into(codec, decoder, max, &mut out)?;
            }
            Ok(out)
        }
    }
}

/// Reads `reader` to its end into a new vector, at most `max` bytes.
fn read_bounded(
    codec: Compression,
    reader: impl Read,
    input: &[u8],
    max: usize,
) -> Result<Vec<u8>, BatchError> {
    // Most record batches compress 2–4×; start there so that typical
    // batches need one or two allocations.
    let mut out = Vec::with_capacity(input.len().saturating_mul(4).min(max));
    read_bounded_into(codec, reader, max, &mut out)?;
    Ok(out)
}

/// Appends `reader`'s output to `out`, refusing to let `out` pass `max`
/// bytes; capacity never exceeds `max` either.
fn read_bounded_into(
    codec: Compression,
    mut reader: impl Read,
    max: usize,
    out: &mut Vec<u8>,
) -> Result<(), BatchError> {
    loop {
        let len = out.len();
        if len == out.capacity() {
            // One byte past the cap tells a full batch from a bomb.
            let room = (max + 1).saturating_sub(len);
            if room == 0 {
                return Err(BatchError::DecompressedTooLarge { codec, max });
            }
            out.reserve_exact(len.max(READ_CHUNK_BYTES).min(room));
        }
        // Zero and hand out one chunk at a time: decoders return a block
        // or so per call, and zeroing all spare capacity each time would
        // cost quadratic time.
        let want = (out.capacity() - len)
            .min(max + 1 - len)
            .min(READ_CHUNK_BYTES);
        out.resize(len + want, 0);
        let n = loop {
            match reader.read(&mut out[len..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    out.truncate(len);
                    return Err(BatchError::Decompress {
                        codec,
                        reason: e.to_string(),
                    });
                }
            }
        };
        out.truncate(len + n);
        if n == 0 {
            return Ok(());
        }
        if out.len() > max {
            return Err(BatchError::DecompressedTooLarge { codec, max });
        }
    }
}

/// Appends the raw snappy block `input` to `out`, within `max` bytes in all.
fn snappy_raw(input: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), BatchError> {
    let codec = Compression::Snappy;
    let corrupt = |e: snap::Error| BatchError::Decompress {
        codec,
        reason: e.to_string(),
    };
    // The block starts with its decompressed length: check it before
    // allocating anything.
    let len = snap::raw::decompress_len(input).map_err(corrupt)?;
    if len > max.saturating_sub(out.len()) {
        return Err(BatchError::DecompressedTooLarge { codec, max });
    }
    let start = out.len();
    out.resize(start + len, 0);
    let n = snap::raw::Decoder::new()
        .decompress(input, &mut out[start..])
        .map_err(corrupt)?;
    out.truncate(start + n);
    Ok(())
}

/// Decompresses snappy-java's xerial framing.
fn snappy_xerial(input: &[u8], max: usize) -> Result<Vec<u8>, BatchError> {
    let corrupt = |reason: &str| BatchError::Decompress {
        codec: Compression::Snappy,
        reason: reason.to_string(),
    };
    if input.len() < XERIAL_HEADER_LEN {
        return Err(corrupt("truncated xerial snappy header"));
    }
    let mut pos = XERIAL_HEADER_LEN;
    let mut out = Vec::new();
    while pos < input.len() {
        let Some(len) = input.get(pos..pos + 4) else {
            return Err(corrupt("truncated xerial chunk length"));
        };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        pos += 4;
        let len = usize::try_from(len).map_err(|_| corrupt("negative xerial chunk length"))?;
        if len > input.len() - pos {
            return Err(corrupt("xerial chunk length exceeds the data"));
        }
        snappy_raw(&input[pos..pos + len], max, &mut out)?;
        pos += len;
    }
    Ok(out)
}

/// Appends `input` compressed with `codec` to `out`.
///
/// # Panics
/// If `codec` is [`Compression::None`]: there is nothing to compress.
pub fn compress(codec: Compression, input: &[u8], out: &mut Vec<u8>) -> Result<(), BatchError> {
    let failed = |reason: String| BatchError::Compress { codec, reason };
    match codec {
        Compression::None => panic!("compress called without a codec"),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            enc.write_all(input).map_err(|e| failed(e.to_string()))?;
            enc.finish().map_err(|e| failed(e.to_string()))?;
        }
        Compression::Snappy => {
            out.extend_from_slice(XERIAL_MAGIC);
            out.extend_from_slice(&XERIAL_VERSION.to_be_bytes());
            out.extend_from_slice(&XERIAL_VERSION.to_be_bytes());
            let mut enc = snap::raw::Encoder::new();
            for chunk in input.chunks(XERIAL_BLOCK_BYTES) {
                let at = out.len();
                out.extend_from_slice(&[0; 4]);
                out.resize(at + 4 + snap::raw::max_compress_len(chunk.len()), 0);
                let n = enc
                    .compress(chunk, &mut out[at + 4..])
                    .map_err(|e| failed(e.to_string()))?;
                out.truncate(at + 4 + n);
                out[at..at + 4].copy_from_slice(&(n as i32).to_be_bytes());
            }
        }
        Compression::Lz4 => {
            // Independent 64 KiB blocks without checksums: what the Java
            // client and librdkafka write, and what every reader accepts.
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max64KB)
                .block_mode(lz4_flex::frame::BlockMode::Independent);
            let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, out);
            enc.write_all(input).map_err(|e| failed(e.to_string()))?;
            enc.finish().map_err(|e| failed(e.to_string()))?;
        }
        Compression::Zstd => {
            ruzstd::encoding::compress(input, out, ruzstd::encoding::CompressionLevel::Fastest);
        }
    }
    Ok(())
}
