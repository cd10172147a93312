//! Log configuration and the flush policy.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::StorageError;

/// Smallest segment accepted by [`LogConfig`].
pub const MIN_SEGMENT_BYTES: u64 = 4 * 1024;
/// Largest segment: index positions are `u32`.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 31;
/// Longest flush interval accepted (one day); longer is surely a typo.
pub const MAX_FLUSH_INTERVAL_MS: u64 = 24 * 60 * 60 * 1000;

/// When appended bytes are made durable (fdatasync).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FlushPolicy {
    /// Group commit: a flusher thread syncs everything appended since its
    /// last flush, as soon as there is something to flush.
    #[default]
    Always,
    /// The flusher thread syncs every interval.
    Interval(Duration),
    /// Only explicit [`crate::Log::flush`], segment roll and close flush.
    Never,
}

/// Why a string is not a [`FlushPolicy`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid flush policy {input:?}: expected \"always\", \"never\" or \"interval=MS\" with 0 < MS <= {MAX_FLUSH_INTERVAL_MS}"
)]
pub struct ParseFlushPolicyError {
    /// The rejected input.
    pub input: String,
}

impl From<ParseFlushPolicyError> for String {
    fn from(e: ParseFlushPolicyError) -> String {
        e.to_string()
    }
}

impl FromStr for FlushPolicy {
    type Err = ParseFlushPolicyError;

    fn from_str(s: &str) -> Result<FlushPolicy, ParseFlushPolicyError> {
        let err = || ParseFlushPolicyError {
            input: s.to_string(),
        };
        match s.trim() {
            "always" => Ok(FlushPolicy::Always),
            "never" => Ok(FlushPolicy::Never),
            other => {
                let ms = other.strip_prefix("interval=").ok_or_else(err)?;
                let ms: u64 = ms.trim().parse().map_err(|_| err())?;
                if ms == 0 || ms > MAX_FLUSH_INTERVAL_MS {
                    return Err(err());
                }
                Ok(FlushPolicy::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

impl fmt::Display for FlushPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlushPolicy::Always => f.write_str("always"),
            FlushPolicy::Never => f.write_str("never"),
            FlushPolicy::Interval(d) => write!(f, "interval={}", d.as_millis()),
        }
    }
}

/// Configuration of one [`crate::Log`].
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Size each segment file is preallocated to; a batch that does not fit
    /// in the rest of the active segment starts a new one.
    pub segment_bytes: u64,
    /// One sparse index entry per this many bytes of batches.
    pub index_interval_bytes: u32,
    /// When appends become durable.
    pub flush: FlushPolicy,
    /// Delete old segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// Delete segments whose newest record is older than this.
    pub retention_ms: Option<u64>,
    /// Rewrite the recovery checkpoint after this many newly durable bytes.
    pub checkpoint_interval_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            segment_bytes: 64 * 1024 * 1024,
            index_interval_bytes: 4096,
            flush: FlushPolicy::Always,
            retention_bytes: None,
            retention_ms: None,
            checkpoint_interval_bytes: 8 * 1024 * 1024,
        }
    }
}

impl LogConfig {
    /// Checks the limits; [`crate::Log::open`] calls this.
    pub fn validate(&self) -> Result<(), StorageError> {
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return Err(StorageError::InvalidConfig(format!(
                "segment_bytes = {} is outside [{MIN_SEGMENT_BYTES}, {MAX_SEGMENT_BYTES}]",
                self.segment_bytes
            )));
        }
        if let FlushPolicy::Interval(d) = self.flush
            && (d.is_zero() || d.as_millis() > u128::from(MAX_FLUSH_INTERVAL_MS))
        {
            return Err(StorageError::InvalidConfig(format!(
                "flush interval {d:?} is outside (0, {MAX_FLUSH_INTERVAL_MS}] ms"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_policies_round_trip_through_their_text_form() {
        for p in [
            FlushPolicy::Always,
            FlushPolicy::Never,
            FlushPolicy::Interval(Duration::from_millis(250)),
        ] {
            assert_eq!(p.to_string().parse::<FlushPolicy>().unwrap(), p);
        }
    }

    #[test]
    fn malformed_flush_policies_are_rejected_with_the_accepted_forms() {
        for bad in [
            "",
            "sometimes",
            "interval=",
            "interval=0",
            "interval=-3",
            "interval=x",
        ] {
            let err = bad.parse::<FlushPolicy>().unwrap_err().to_string();
            assert!(
                err.contains("interval=MS") && err.contains("always"),
                "{err}"
            );
        }
    }

    #[test]
    fn segments_below_the_minimum_are_an_invalid_config() {
        let cfg = LogConfig {
            segment_bytes: 100,
            ..LogConfig::default()
        };
        assert!(matches!(
            cfg.validate(),
            Err(StorageError::InvalidConfig(_))
        ));
        assert!(LogConfig::default().validate().is_ok());
    }
}
