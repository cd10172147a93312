//! Ferry's storage engine: a memory-mapped, append-only, crash-safe log of
//! record batches.
//!
//! A [`Log`] is a directory of segments. Each segment is a preallocated
//! `.log` file of concatenated record batches (the format of
//! `ferry_proto::batch`) plus an `.index` file holding a sparse offset index
//! and the recovery checkpoint. Appends are one `pwritev` into the file;
//! reads are zero-copy `Bytes` slices of a read-only map of it. Durability
//! comes from fdatasync under a [`FlushPolicy`]; recovery scans only past the last
//! checkpoint. The byte formats and the crash analysis are in
//! `docs/format.md`; the reasoning for each piece is in the module docs of
//! `mmap` (soundness of the read map under the writer), `segment` (torn
//! writes), `index` (atomic checkpoints), `log::flusher` (flush, roll and
//! seal) and `log::recovery` (open after a crash).

mod config;
mod error;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
mod index;
mod log;
mod mmap;
mod segment;

pub use config::{
    FlushPolicy, LogConfig, MAX_FLUSH_INTERVAL_MS, MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES,
    ParseFlushPolicyError,
};
pub use error::StorageError;
pub use log::{
    AppendInfo, Log, RecoveryStats, ReplaceOutcome, RetentionOutcome, SealedSegment, SegmentInfo,
    Watermarks,
};
