//! The storage error type.

use std::path::PathBuf;

/// Everything that can go wrong in the storage engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An I/O call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A flush failed earlier; the log refuses every write from then on,
    /// because a failed fsync must never be retried and acked.
    #[error("log failed and is read-only: {reason}")]
    LogFailed {
        /// The first failure.
        reason: String,
    },
    /// The log was closed.
    #[error("log is closed")]
    Closed,
    /// The offset is not in the log.
    #[error("offset {requested} out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        /// Offset asked for.
        requested: u64,
        /// First offset in the log.
        log_start: u64,
        /// Next offset to be written.
        log_end: u64,
    },
    /// The batch cannot fit in a segment.
    #[error("batch of {size} bytes exceeds the {max}-byte segment")]
    BatchTooLarge {
        /// Batch size.
        size: usize,
        /// Largest batch a segment holds.
        max: usize,
    },
    /// Data on disk is corrupt where it cannot be a torn write.
    #[error("corrupt log file {} at byte {position}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte position in the file.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// The configuration is out of bounds.
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
}

impl StorageError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> StorageError {
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
