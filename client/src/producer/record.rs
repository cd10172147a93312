//! [`ProducerRecord`]: one record to send, with everything it can carry.

/// One record for [`Producer::send_record`](crate::Producer::send_record):
/// topic, key and value, and optionally a partition, headers and a
/// timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProducerRecord<'a> {
    /// Topic.
    pub topic: &'a str,
    /// An explicit partition, or `None` to partition by key.
    pub partition: Option<u32>,
    /// Key, or `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// Value, or `None` for a null value.
    pub value: Option<&'a [u8]>,
    /// Headers in order, as (key, value); a key may appear twice.
    pub headers: &'a [(&'a [u8], Option<&'a [u8]>)],
    /// Milliseconds since the Unix epoch, or `None` for the moment the
    /// record is batched.
    pub timestamp: Option<i64>,
}

impl<'a> ProducerRecord<'a> {
    /// A record partitioned by key, without headers, stamped when batched.
    pub fn new(topic: &'a str, key: Option<&'a [u8]>, value: Option<&'a [u8]>) -> Self {
        ProducerRecord {
            topic,
            partition: None,
            key,
            value,
            headers: &[],
            timestamp: None,
        }
    }

    /// The same record for an explicit partition.
    pub fn to_partition(self, partition: u32) -> Self {
        ProducerRecord {
            partition: Some(partition),
            ..self
        }
    }

    /// The same record with these headers.
    pub fn with_headers(self, headers: &'a [(&'a [u8], Option<&'a [u8]>)]) -> Self {
        ProducerRecord { headers, ..self }
    }

    /// The same record with its own timestamp.
    pub fn with_timestamp(self, timestamp_ms: i64) -> Self {
        ProducerRecord {
            timestamp: Some(timestamp_ms),
            ..self
        }
    }
}
