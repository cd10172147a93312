//! Per-topic settings, named as Kafka names them (`cleanup.policy`,
//! `segment.bytes`, `min.cleanable.dirty.ratio`, `delete.retention.ms`), so
//! that the same `--config KEY=VALUE` pairs and CreateTopics configs work
//! against Ferry and against Kafka. Every front end parses them here, once.

use std::collections::BTreeMap;
use std::fmt;

use ferry_storage::{MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES};
use serde::{Deserialize, Serialize};

/// Most config pairs accepted in one request.
pub const MAX_TOPIC_CONFIGS: usize = 32;
/// Longest config key or value accepted.
pub const MAX_TOPIC_CONFIG_BYTES: usize = 256;
/// Default `delete.retention.ms`: how long a tombstone, and a transaction
/// marker left with no records, outlive their cleaning (Kafka's: 24 h).
pub const DEFAULT_DELETE_RETENTION_MS: u64 = 24 * 60 * 60 * 1000;
/// Default `min.cleanable.dirty.ratio` (Kafka's).
pub const DEFAULT_MIN_CLEANABLE_DIRTY_RATIO: f64 = 0.5;

/// What happens to old records (`cleanup.policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanupPolicy {
    /// Whole segments are deleted by the broker's retention settings.
    #[default]
    Delete,
    /// Only the latest record per key is kept.
    Compact,
    /// Both: compacted, and old segments deleted by retention.
    CompactDelete,
}

impl CleanupPolicy {
    /// Whether the cleaner compacts the topic.
    pub fn compacts(self) -> bool {
        matches!(self, CleanupPolicy::Compact | CleanupPolicy::CompactDelete)
    }

    /// Whether retention deletes the topic's old segments.
    pub fn deletes(self) -> bool {
        matches!(self, CleanupPolicy::Delete | CleanupPolicy::CompactDelete)
    }
}

impl fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
        })
    }
}

/// A topic's settings, stored in its `meta.json`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TopicConfig {
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// `segment.bytes`; the broker's default when unset.
    pub segment_bytes: Option<u64>,
    /// `min.cleanable.dirty.ratio`: the share of a compacted log not
    /// cleaned yet at which the cleaner takes it on.
    pub min_cleanable_dirty_ratio: f64,
    /// `delete.retention.ms`.
    pub delete_retention_ms: u64,
}

impl Default for TopicConfig {
    fn default() -> TopicConfig {
        TopicConfig {
            cleanup_policy: CleanupPolicy::Delete,
            segment_bytes: None,
            min_cleanable_dirty_ratio: DEFAULT_MIN_CLEANABLE_DIRTY_RATIO,
            delete_retention_ms: DEFAULT_DELETE_RETENTION_MS,
        }
    }
}

/// Why a config pair was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicConfigError {
    /// Not a setting Ferry has.
    #[error(
        "unknown topic config {key:?}: expected one of cleanup.policy, segment.bytes, min.cleanable.dirty.ratio, delete.retention.ms"
    )]
    UnknownKey {
        /// The key.
        key: String,
    },
    /// A known setting with a value it cannot take.
    #[error("invalid value {value:?} for topic config {key}: {expected}")]
    InvalidValue {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// What it may be.
        expected: String,
    },
    /// More pairs, or longer ones, than the limits allow.
    #[error("{0}")]
    OverLimit(String),
}

impl TopicConfig {
    /// Builds a config from `KEY=VALUE` pairs over the defaults. A key
    /// given twice takes its last value, as Kafka's tools do.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<TopicConfig, TopicConfigError> {
        let mut config = TopicConfig::default();
        for (n, (key, value)) in pairs.into_iter().enumerate() {
            if n >= MAX_TOPIC_CONFIGS {
                return Err(TopicConfigError::OverLimit(format!(
                    "more than {MAX_TOPIC_CONFIGS} topic configs"
                )));
            }
            if key.len() > MAX_TOPIC_CONFIG_BYTES || value.len() > MAX_TOPIC_CONFIG_BYTES {
                return Err(TopicConfigError::OverLimit(format!(
                    "topic config key or value longer than {MAX_TOPIC_CONFIG_BYTES} bytes"
                )));
            }
            config.set(key.trim(), value.trim())?;
        }
        Ok(config)
    }

    /// Parses one `KEY=VALUE` argument, as `--config` takes it.
    pub fn split_pair(arg: &str) -> Result<(&str, &str), String> {
        arg.split_once('=')
            .ok_or_else(|| format!("expected KEY=VALUE, got {arg:?}"))
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), TopicConfigError> {
        let invalid = |expected: String| TopicConfigError::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            expected,
        };
        match key {
            "cleanup.policy" => {
                let mut parts: Vec<&str> = value.split(',').map(str::trim).collect();
                parts.sort_unstable();
                parts.dedup();
                self.cleanup_policy = match parts.as_slice() {
                    ["delete"] => CleanupPolicy::Delete,
                    ["compact"] => CleanupPolicy::Compact,
                    ["compact", "delete"] => CleanupPolicy::CompactDelete,
                    _ => {
                        return Err(invalid("delete, compact, or compact,delete".to_string()));
                    }
                };
            }
            "segment.bytes" => {
                let range = MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES;
                let bytes = value
                    .parse::<u64>()
                    .ok()
                    .filter(|b| range.contains(b))
                    .ok_or_else(|| {
                        invalid(format!(
                            "a byte count in [{MIN_SEGMENT_BYTES}, {MAX_SEGMENT_BYTES}]"
                        ))
                    })?;
                self.segment_bytes = Some(bytes);
            }
            "min.cleanable.dirty.ratio" => {
                self.min_cleanable_dirty_ratio = value
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| invalid("a number in [0, 1]".to_string()))?;
            }
            "delete.retention.ms" => {
                self.delete_retention_ms = value
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms <= i64::MAX as u64)
                    .ok_or_else(|| invalid("milliseconds, 0 or more".to_string()))?;
            }
            _ => {
                return Err(TopicConfigError::UnknownKey {
                    key: key.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The settings as Kafka-named pairs, for describe; `segment_bytes`
    /// is the effective value, given the broker's default.
    pub fn to_pairs(&self, default_segment_bytes: u64) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "cleanup.policy".to_string(),
                self.cleanup_policy.to_string(),
            ),
            (
                "segment.bytes".to_string(),
                self.segment_bytes
                    .unwrap_or(default_segment_bytes)
                    .to_string(),
            ),
            (
                "min.cleanable.dirty.ratio".to_string(),
                self.min_cleanable_dirty_ratio.to_string(),
            ),
            (
                "delete.retention.ms".to_string(),
                self.delete_retention_ms.to_string(),
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_named_pairs_parse_over_the_defaults_and_print_back() {
        let c = TopicConfig::from_pairs([
            ("cleanup.policy", "delete,compact"),
            ("segment.bytes", "65536"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("delete.retention.ms", "100"),
        ])
        .unwrap();
        assert_eq!(c.cleanup_policy, CleanupPolicy::CompactDelete);
        assert!(c.cleanup_policy.compacts() && c.cleanup_policy.deletes());
        let pairs = c.to_pairs(1 << 26);
        assert_eq!(pairs["cleanup.policy"], "compact,delete");
        assert_eq!(pairs["segment.bytes"], "65536");
        assert_eq!(pairs["min.cleanable.dirty.ratio"], "0.01");
        assert_eq!(pairs["delete.retention.ms"], "100");
        let again = TopicConfig::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(again.unwrap(), c);
        let d = TopicConfig::default();
        assert_eq!(d.cleanup_policy, CleanupPolicy::Delete);
        assert_eq!(
            d.to_pairs(1 << 26)["segment.bytes"],
            (1u64 << 26).to_string()
        );
    }

    #[test]
    fn bad_keys_values_and_sizes_are_refused_with_what_was_expected() {
        let err = |k: &str, v: &str| TopicConfig::from_pairs([(k, v)]).unwrap_err().to_string();
        assert!(err("retention.bytes.typo", "1").contains("unknown topic config"));
        assert!(err("cleanup.policy", "compacted").contains("compact,delete"));
        assert!(err("segment.bytes", "10").contains("byte count"));
        assert!(err("min.cleanable.dirty.ratio", "1.5").contains("[0, 1]"));
        assert!(err("delete.retention.ms", "-1").contains("milliseconds"));
        let many: Vec<(&str, &str)> = vec![("delete.retention.ms", "1"); MAX_TOPIC_CONFIGS + 1];
        assert!(matches!(
            TopicConfig::from_pairs(many),
            Err(TopicConfigError::OverLimit(_))
        ));
        assert_eq!(TopicConfig::split_pair("a=b=c").unwrap(), ("a", "b=c"));
        assert!(TopicConfig::split_pair("nokey").is_err());
    }

    #[test]
    fn a_meta_json_written_before_topic_configs_reads_as_the_defaults() {
        let c: TopicConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, TopicConfig::default());
    }
}
