//! The producer's settings: [`Acks`] and [`ProducerConfig`], and the check
//! that turns a config into one the producer can run with.

use std::str::FromStr;
use std::time::Duration;

use ferry_proto::batch::{Compression, HEADER_LEN, MAX_BATCH_BYTES};
use ferry_proto::v1;

use crate::error::ClientError;
use crate::idempotence::MAX_IN_FLIGHT_IDEMPOTENT;
use crate::retry::Backoff;

/// Which acknowledgement the producer waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// No acknowledgement: a record counts as sent once handed to the
    /// connection. At-most-once; never retried.
    None,
    /// The broker appended the batch to its log (page cache).
    Leader,
    /// The batch is durable under the broker's fsync policy.
    All,
}

impl Acks {
    pub(super) fn to_proto(self) -> v1::Acks {
        match self {
            Acks::None => v1::Acks::None,
            Acks::Leader => v1::Acks::Leader,
            Acks::All => v1::Acks::All,
        }
    }
}

impl FromStr for Acks {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Acks, ClientError> {
        match s {
            "none" => Ok(Acks::None),
            "leader" => Ok(Acks::Leader),
            "all" => Ok(Acks::All),
            other => Err(ClientError::InvalidArgument(format!(
                "unknown acks {other:?}: expected one of none, leader, all"
            ))),
        }
    }
}

impl std::fmt::Display for Acks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Acks::None => "none",
            Acks::Leader => "leader",
            Acks::All => "all",
        })
    }
}

/// Producer settings.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// Acknowledgement to wait for. Default [`Acks::All`].
    pub acks: Acks,
    /// How long a batch stays open for more records. Default 5 ms.
    pub linger: Duration,
    /// A batch is sealed before it would grow past this. Default 256 KiB,
    /// capped at [`MAX_BATCH_BYTES`]. A single larger record gets a batch
    /// of its own.
    pub batch_bytes: usize,
    /// How long after sealing a batch may be retried. Default 120 s.
    pub delivery_timeout: Duration,
    /// First retry backoff, doubled per attempt. Default 50 ms.
    pub retry_backoff: Duration,
    /// Largest retry backoff. Default 1 s.
    pub retry_backoff_max: Duration,
    /// Batches per partition sent and not yet answered. Default 5, and at
    /// most [`MAX_IN_FLIGHT_IDEMPOTENT`] when `idempotent`.
    pub max_in_flight_per_partition: usize,
    /// Stamp batches with a producer id, epoch and sequence numbers so the
    /// broker stores each batch exactly once and in order, however often it
    /// is retried. Default `true`. Requires [`Acks::All`].
    pub idempotent: bool,
    /// `send` waits while this many record bytes are unacknowledged.
    /// Default 64 MiB.
    pub buffer_bytes: usize,
    /// Codec a batch's records are compressed with when it is sealed
    /// (Kafka's `compression.type`). Default [`Compression::None`].
    /// `batch_bytes` bounds a batch's uncompressed size, as librdkafka's
    /// `batch.size` does.
    pub compression: Compression,
}

impl Default for ProducerConfig {
    fn default() -> ProducerConfig {
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_bytes: 256 * 1024,
            delivery_timeout: Duration::from_secs(120),
            retry_backoff: Duration::from_millis(50),
            retry_backoff_max: Duration::from_secs(1),
            max_in_flight_per_partition: 5,
            buffer_bytes: 64 * 1024 * 1024,
            idempotent: true,
            compression: Compression::None,
        }
    }
}

impl ProducerConfig {
    /// Checks the settings, caps `batch_bytes` at [`MAX_BATCH_BYTES`] and
    /// raises `retry_backoff_max` to at least `retry_backoff`.
    pub(crate) fn normalized(mut self) -> Result<ProducerConfig, ClientError> {
        if self.batch_bytes <= HEADER_LEN {
            return Err(ClientError::InvalidArgument(format!(
                "batch_bytes {} must exceed the {HEADER_LEN}-byte batch header",
                self.batch_bytes
            )));
        }
        self.batch_bytes = self.batch_bytes.min(MAX_BATCH_BYTES);
        if self.max_in_flight_per_partition == 0 {
            return Err(ClientError::InvalidArgument(
                "max_in_flight_per_partition must be at least 1".into(),
            ));
        }
        if self.idempotent && self.acks != Acks::All {
            return Err(ClientError::InvalidArgument(format!(
                "an idempotent producer needs acks=all, not acks={}; \
                 set idempotent to false for acks={0}",
                self.acks
            )));
        }
        if self.idempotent && self.max_in_flight_per_partition > MAX_IN_FLIGHT_IDEMPOTENT {
            return Err(ClientError::InvalidArgument(format!(
                "an idempotent producer allows at most {MAX_IN_FLIGHT_IDEMPOTENT} batches in \
                 flight per partition, not {}",
                self.max_in_flight_per_partition
            )));
        }
        if self.buffer_bytes == 0 {
            return Err(ClientError::InvalidArgument(
                "buffer_bytes must be at least 1".into(),
            ));
        }
        self.retry_backoff_max = self.retry_backoff_max.max(self.retry_backoff);
        Ok(self)
    }

    /// The retry backoff these settings describe.
    pub(crate) fn retry_policy(&self) -> Backoff {
        Backoff::new(self.retry_backoff, self.retry_backoff_max)
    }

    /// The pause before retry number `attempt` (0 for the first).
    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        self.retry_policy().delay(attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_parse_and_display() {
        for acks in [Acks::None, Acks::Leader, Acks::All] {
            assert_eq!(acks.to_string().parse::<Acks>().unwrap(), acks);
        }
        let err = "2".parse::<Acks>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid argument: unknown acks \"2\": expected one of none, leader, all"
        );
    }

    #[test]
    fn config_is_checked_and_capped() {
        let c = ProducerConfig {
            batch_bytes: usize::MAX,
            ..ProducerConfig::default()
        }
        .normalized()
        .unwrap();
        assert_eq!(c.batch_bytes, MAX_BATCH_BYTES);
        for bad in [
            ProducerConfig {
                batch_bytes: HEADER_LEN,
                ..ProducerConfig::default()
            },
            ProducerConfig {
                max_in_flight_per_partition: 0,
                ..ProducerConfig::default()
            },
            ProducerConfig {
                max_in_flight_per_partition: MAX_IN_FLIGHT_IDEMPOTENT + 1,
                ..ProducerConfig::default()
            },
        ] {
            assert!(matches!(
                bad.normalized(),
                Err(ClientError::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn idempotence_is_the_default_and_needs_acks_all() {
        assert!(ProducerConfig::default().idempotent);
        for acks in [Acks::None, Acks::Leader] {
            let err = ProducerConfig {
                acks,
                ..ProducerConfig::default()
            }
            .normalized()
            .unwrap_err();
            assert!(
                matches!(&err, ClientError::InvalidArgument(m) if m.contains("needs acks=all")),
                "{err}"
            );
            ProducerConfig {
                acks,
                idempotent: false,
                max_in_flight_per_partition: 20,
                ..ProducerConfig::default()
            }
            .normalized()
            .unwrap();
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = ProducerConfig::default();
        assert_eq!(c.backoff(0), Duration::from_millis(50));
        assert_eq!(c.backoff(1), Duration::from_millis(100));
        assert_eq!(c.backoff(4), Duration::from_millis(800));
        assert_eq!(c.backoff(5), Duration::from_secs(1));
        assert_eq!(c.backoff(u32::MAX), Duration::from_secs(1));
    }
}
