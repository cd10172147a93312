//! [`DeliveryMode`]: the four delivery guarantees, and the producer and
//! consumer settings that give each one.
//!
//! | mode | producer | consumer commits |
//! |---|---|---|
//! | at-most-once | `acks=none`, not idempotent | before processing |
//! | at-least-once | `acks=all`, not idempotent | after processing |
//! | idempotent | `acks=all`, idempotent | after processing |
//! | exactly-once | transactional (idempotent, `acks=all`), read `read_committed` | inside the transaction |

use std::str::FromStr;

use crate::consumer::CommitMode;
use crate::error::ClientError;
use crate::producer::{Acks, ProducerConfig};

/// A delivery guarantee.
///
/// [`producer_config`](Self::producer_config) and
/// [`commit_mode`](Self::commit_mode) give the settings for it; override
/// the tuning fields with `..mode.producer_config()`.
///
/// ```
/// use std::time::Duration;
/// use ferry_client::{Acks, DeliveryMode, ProducerConfig};
///
/// let mode: DeliveryMode = "at-most-once".parse().unwrap();
/// let config = ProducerConfig {
///     linger: Duration::from_millis(1),
///     ..mode.producer_config()
/// };
/// assert_eq!((config.acks, config.idempotent), (Acks::None, false));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryMode {
    /// `acks=none`, no retries, commit before processing: may lose, never
    /// duplicates.
    AtMostOnce,
    /// `acks=all` with retries, commit after processing: may duplicate,
    /// never loses an acknowledged record.
    AtLeastOnce,
    /// The idempotent producer: no duplicates or reordering from producer
    /// retries; the consumer may still redeliver.
    Idempotent,
    /// Transactions read `read_committed`, with the offsets committed
    /// inside each transaction: no loss, no duplicates.
    ExactlyOnce,
}

impl DeliveryMode {
    /// Every mode, weakest first.
    pub const ALL: [DeliveryMode; 4] = [
        DeliveryMode::AtMostOnce,
        DeliveryMode::AtLeastOnce,
        DeliveryMode::Idempotent,
        DeliveryMode::ExactlyOnce,
    ];

    /// The mode's name: `at-most-once`, `at-least-once`, `idempotent` or
    /// `exactly-once`.
    pub fn name(self) -> &'static str {
        match self {
            DeliveryMode::AtMostOnce => "at-most-once",
            DeliveryMode::AtLeastOnce => "at-least-once",
            DeliveryMode::Idempotent => "idempotent",
            DeliveryMode::ExactlyOnce => "exactly-once",
        }
    }

    /// `acks` and `idempotent` of the producer for this mode.
    pub fn acks(self) -> (Acks, bool) {
        match self {
            DeliveryMode::AtMostOnce => (Acks::None, false),
            DeliveryMode::AtLeastOnce => (Acks::All, false),
            DeliveryMode::Idempotent | DeliveryMode::ExactlyOnce => (Acks::All, true),
        }
    }

    /// The default producer settings with this mode's `acks` and
    /// `idempotent`. Under exactly-once they are the settings of the
    /// transactional producer's batching producer.
    pub fn producer_config(self) -> ProducerConfig {
        let (acks, idempotent) = self.acks();
        ProducerConfig {
            acks,
            idempotent,
            ..ProducerConfig::default()
        }
    }

    /// When the consumer commits: before processing (at-most-once), after
    /// (at-least-once, idempotent), or never itself (exactly-once, whose
    /// offsets commit inside each transaction).
    pub fn commit_mode(self) -> CommitMode {
        match self {
            DeliveryMode::AtMostOnce => CommitMode::Before,
            DeliveryMode::AtLeastOnce | DeliveryMode::Idempotent => CommitMode::After,
            DeliveryMode::ExactlyOnce => CommitMode::None,
        }
    }

    /// Whether the mode writes through a transactional producer.
    pub fn is_transactional(self) -> bool {
        self == DeliveryMode::ExactlyOnce
    }
}

impl std::fmt::Display for DeliveryMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DeliveryMode {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<DeliveryMode, ClientError> {
        DeliveryMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                ClientError::InvalidArgument(format!(
                    "unknown delivery mode {s:?}: expected one of at-most-once, \
                     at-least-once, idempotent, exactly-once"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_display_by_name() {
        let names: Vec<_> = DeliveryMode::ALL.iter().map(|m| m.to_string()).collect();
        assert_eq!(
            names,
            [
                "at-most-once",
                "at-least-once",
                "idempotent",
                "exactly-once"
            ]
        );
        for mode in DeliveryMode::ALL {
            assert_eq!(mode.name().parse::<DeliveryMode>().unwrap(), mode);
        }
        let err = "exactly_once".parse::<DeliveryMode>().unwrap_err();
        assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
    }

    #[test]
    fn each_mode_maps_to_its_producer_and_commit_settings() {
        use DeliveryMode::*;
        let table = [
            (AtMostOnce, Acks::None, false, CommitMode::Before),
            (AtLeastOnce, Acks::All, false, CommitMode::After),
            (Idempotent, Acks::All, true, CommitMode::After),
            (ExactlyOnce, Acks::All, true, CommitMode::None),
        ];
        for (mode, acks, idempotent, commit) in table {
            let config = mode.producer_config();
            assert_eq!(
                (config.acks, config.idempotent),
                (acks, idempotent),
                "{mode}"
            );
            assert!(config.normalized().is_ok(), "{mode}: a usable config");
            assert_eq!(mode.commit_mode(), commit, "{mode}");
            assert_eq!(mode.is_transactional(), mode == ExactlyOnce);
        }
    }

    #[test]
    fn modes_serialize_in_kebab_case() {
        let json = serde_json::to_string(&DeliveryMode::ALL).unwrap();
        assert_eq!(
            json,
            r#"["at-most-once","at-least-once","idempotent","exactly-once"]"#
        );
        let back: Vec<DeliveryMode> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, DeliveryMode::ALL);
    }
}
