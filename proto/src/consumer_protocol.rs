//! The consumer protocol: the member metadata a consumer sends in JoinGroup
//! ([`Subscription`]) and the per-member bytes the leader sends back in
//! SyncGroup ([`Assignment`]).
//!
//! Byte-compatible with Kafka's `ConsumerProtocolSubscription` and
//! `ConsumerProtocolAssignment`: big-endian, an `int16` version first,
//! strings as an `int16` length and UTF-8, arrays as an `int32` count,
//! nullable bytes as an `int32` length with −1 for null.
//!
//! ```text
//! Subscription => version:int16 topics:[string] user_data:nullable_bytes
//!                 owned_partitions:[topic:string partitions:[int32]]   (v1+)
//!                 generation_id:int32                                  (v2+)
//!                 rack_id:nullable_string                              (v3+)
//! Assignment   => version:int16
//!                 assigned_partitions:[topic:string partitions:[int32]]
//!                 user_data:nullable_bytes
//! ```
//!
//! Ferry writes version [`SUBSCRIPTION_VERSION`] and [`ASSIGNMENT_VERSION`].
//! It reads versions 0 to 3; as Kafka does, a higher version is read as the
//! highest known one (versions only ever append fields), and bytes after the
//! last known field are ignored. The v2 `generation_id` and v3 `rack_id` are
//! checked and skipped: the assignors do not use them.
//!
//! These bytes reach a client from other members through the broker, so
//! every length is checked against the bytes left and a named `MAX_*` limit
//! before anything is allocated for it.

use std::collections::{BTreeMap, BTreeSet};

/// The JoinGroup protocol type of consumers, whose member metadata is a
/// [`Subscription`] and whose assignments are [`Assignment`]s.
pub const PROTOCOL_TYPE: &str = "consumer";

/// The subscription version Ferry writes: topics, user data and owned
/// partitions, which cooperative rebalancing needs.
pub const SUBSCRIPTION_VERSION: i16 = 1;
/// The highest subscription version whose fields are known (v3 adds the
/// rack id). Higher versions are read as this one.
pub const MAX_KNOWN_SUBSCRIPTION_VERSION: i16 = 3;
/// The assignment version Ferry writes. Every assignment version so far has
/// the same fields.
pub const ASSIGNMENT_VERSION: i16 = 1;

/// The most topics a subscription may list, and the most topic entries in
/// an owned or assigned partition list (Ferry's broker holds at most 10,000
/// topics).
pub const MAX_TOPICS_PER_SUBSCRIPTION: usize = 10_000;
/// The most partitions, over all its topics, one owned or assigned
/// partition list may hold.
pub const MAX_PARTITIONS_PER_ASSIGNMENT: usize = 100_000;
/// The longest topic name, in bytes: Kafka's limit of 249, which covers
/// Ferry's own 200.
pub const MAX_NAME_BYTES: usize = 249;
/// The longest rack id, in bytes.
pub const MAX_RACK_ID_BYTES: usize = 1024;
/// The most user data bytes a subscription or assignment may carry: one
/// broker frame (1 MiB).
pub const MAX_USER_DATA_BYTES: usize = 1 << 20;

/// Why consumer-protocol bytes could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The bytes end before a field does.
    #[error("truncated {what}: needs {needed} byte(s), {remaining} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        remaining: usize,
    },
    /// A length or count is negative where only −1 (null) is allowed, or
    /// negative at all for a field that cannot be null.
    #[error("invalid length {len} for {what}")]
    NegativeLength {
        /// The field being read.
        what: &'static str,
        /// The length read.
        len: i32,
    },
    /// A length or count is over its `MAX_*` limit.
    #[error("{what} is {len}, over the limit of {max}")]
    TooLong {
        /// The field.
        what: &'static str,
        /// Its length or count.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A string is not UTF-8.
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field.
        what: &'static str,
    },
    /// The version is negative.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion {
        /// `"subscription"` or `"assignment"`.
        what: &'static str,
        /// The version read.
        version: i16,
    },
    /// A partition number is negative (read) or over `i32::MAX` (write).
    #[error("partition {partition} of topic {topic:?} is out of range")]
    PartitionOutOfRange {
        /// The topic.
        topic: String,
        /// The partition number.
        partition: i64,
    },
}

/// One topic and some of its partitions, as the protocol groups them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicPartitions {
    /// The topic.
    pub topic: String,
    /// Partition numbers of `topic`, in the order written.
    pub partitions: Vec<u32>,
}

/// What a member tells the group when it joins: the topics it wants, and
/// (v1+) the partitions it owns now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subscription {
    /// The topics the member subscribes to.
    pub topics: Vec<String>,
    /// Opaque bytes for the assignor; `None` is the protocol's null.
    pub user_data: Option<Vec<u8>>,
    /// The partitions the member owns (empty in v0).
    pub owned_partitions: Vec<TopicPartitions>,
}

/// What the leader gives one member: its partitions for this generation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assignment {
    /// The partitions assigned to the member.
    pub assigned_partitions: Vec<TopicPartitions>,
    /// Opaque bytes from the assignor; `None` is the protocol's null.
    pub user_data: Option<Vec<u8>>,
}

impl Subscription {
    /// A subscription to `topics` owning `owned`, without user data.
    pub fn new<T: Into<String>>(
        topics: impl IntoIterator<Item = T>,
        owned: &[(String, u32)],
    ) -> Subscription {
        Subscription {
            topics: topics.into_iter().map(Into::into).collect(),
            user_data: None,
            owned_partitions: group_by_topic(owned),
        }
    }

    /// The owned partitions as a set of (topic, partition).
    pub fn owned(&self) -> BTreeSet<(String, u32)> {
        flatten(&self.owned_partitions)
    }

    /// The bytes of this subscription, as version [`SUBSCRIPTION_VERSION`].
    ///
    /// # Errors
    /// When a field is over its `MAX_*` limit or a partition is over
    /// `i32::MAX`, so that whatever is written can also be read.
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        let mut w = Writer::default();
        w.i16(SUBSCRIPTION_VERSION);
        w.count(
            self.topics.len(),
            "topic count",
            MAX_TOPICS_PER_SUBSCRIPTION,
        )?;
        for topic in &self.topics {
            w.string(topic, "topic name", MAX_NAME_BYTES)?;
        }
        w.nullable_bytes(self.user_data.as_deref())?;
        w.topic_partitions(&self.owned_partitions)?;
        Ok(w.buf)
    }

    /// Reads a subscription of any version from `bytes`.
    ///
    /// # Errors
    /// On truncated input, negative lengths other than the −1 of nullable
    /// fields, invalid UTF-8, negative partitions, a negative version, or
    /// anything over a `MAX_*` limit.
    pub fn decode(bytes: &[u8]) -> Result<Subscription, ProtocolError> {
        let mut r = Reader::new(bytes);
        let version = r.i16("subscription version")?;
        if version < 0 {
            return Err(ProtocolError::UnsupportedVersion {
                what: "subscription",
                version,
            });
        }
        let version = version.min(MAX_KNOWN_SUBSCRIPTION_VERSION);
        // Each topic name takes at least its 2-byte length.
        let n = r.count("topic count", MAX_TOPICS_PER_SUBSCRIPTION, 2)?;
        let mut topics = Vec::with_capacity(n);
        for _ in 0..n {
            topics.push(r.string("topic name", MAX_NAME_BYTES)?);
        }
        let user_data = r.nullable_bytes("user data", MAX_USER_DATA_BYTES)?;
        let owned_partitions = if version >= 1 {
            r.topic_partitions("owned partitions")?
        } else {
            Vec::new()
        };
        if version >= 2 {
            let _generation_id = r.i32("generation id")?;
        }
        if version >= 3 {
            let _rack_id = r.nullable_string("rack id", MAX_RACK_ID_BYTES)?;
        }
        Ok(Subscription {
            topics,
            user_data,
            owned_partitions,
        })
    }
}

impl Assignment {
    /// An assignment of `partitions`, grouped by topic in topic order,
    /// without user data.
    pub fn new(partitions: &[(String, u32)]) -> Assignment {
        Assignment {
            assigned_partitions: group_by_topic(partitions),
            user_data: None,
        }
    }

    /// The assigned partitions as a set of (topic, partition).
    pub fn partitions(&self) -> BTreeSet<(String, u32)> {
        flatten(&self.assigned_partitions)
    }

    /// The bytes of this assignment, as version [`ASSIGNMENT_VERSION`].
    ///
    /// # Errors
    /// As [`Subscription::encode`].
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        let mut w = Writer::default();
        w.i16(ASSIGNMENT_VERSION);
        w.topic_partitions(&self.assigned_partitions)?;
        w.nullable_bytes(self.user_data.as_deref())?;
        Ok(w.buf)
    }

    /// Reads an assignment of any version from `bytes`.
    ///
    /// # Errors
    /// As [`Subscription::decode`].
    pub fn decode(bytes: &[u8]) -> Result<Assignment, ProtocolError> {
        let mut r = Reader::new(bytes);
        let version = r.i16("assignment version")?;
        if version < 0 {
            return Err(ProtocolError::UnsupportedVersion {
                what: "assignment",
                version,
            });
        }
        let assigned_partitions = r.topic_partitions("assigned partitions")?;
        let user_data = r.nullable_bytes("user data", MAX_USER_DATA_BYTES)?;
        Ok(Assignment {
            assigned_partitions,
            user_data,
        })
    }
}

/// `partitions` grouped by topic, topics and partitions in order, without
/// duplicates.
fn group_by_topic(partitions: &[(String, u32)]) -> Vec<TopicPartitions> {
    let mut by_topic: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
    for (topic, partition) in partitions {
        by_topic.entry(topic).or_default().insert(*partition);
    }
    by_topic
        .into_iter()
        .map(|(topic, partitions)| TopicPartitions {
            topic: topic.to_owned(),
            partitions: partitions.into_iter().collect(),
        })
        .collect()
}

fn flatten(list: &[TopicPartitions]) -> BTreeSet<(String, u32)> {
    list.iter()
        .flat_map(|tp| tp.partitions.iter().map(|p| (tp.topic.clone(), *p)))
        .collect()
}

#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn i16(&mut self, v: i16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// An array count, checked against `max` (which is below `i32::MAX`).
    fn count(&mut self, n: usize, what: &'static str, max: usize) -> Result<(), ProtocolError> {
        check_max(what, n, max)?;
        self.i32(n as i32);
        Ok(())
    }

    fn string(&mut self, s: &str, what: &'static str, max: usize) -> Result<(), ProtocolError> {
        // Every string limit is below i16::MAX.
        check_max(what, s.len(), max)?;
        self.i16(s.len() as i16);
        self.buf.extend_from_slice(s.as_bytes());
        Ok(())
    }

    fn nullable_bytes(&mut self, b: Option<&[u8]>) -> Result<(), ProtocolError> {
        match b {
            None => self.i32(-1),
            Some(b) => {
                self.count(b.len(), "user data", MAX_USER_DATA_BYTES)?;
                self.buf.extend_from_slice(b);
            }
        }
        Ok(())
    }

    fn topic_partitions(&mut self, list: &[TopicPartitions]) -> Result<(), ProtocolError> {
        self.count(list.len(), "topic count", MAX_TOPICS_PER_SUBSCRIPTION)?;
        let total: usize = list.iter().map(|tp| tp.partitions.len()).sum();
        check_max("partition count", total, MAX_PARTITIONS_PER_ASSIGNMENT)?;
        for tp in list {
            self.string(&tp.topic, "topic name", MAX_NAME_BYTES)?;
            self.i32(tp.partitions.len() as i32);
            for &p in &tp.partitions {
                let p = i32::try_from(p).map_err(|_| ProtocolError::PartitionOutOfRange {
                    topic: tp.topic.clone(),
                    partition: i64::from(p),
                })?;
                self.i32(p);
            }
        }
        Ok(())
    }
}

fn check_max(what: &'static str, len: usize, max: usize) -> Result<(), ProtocolError> {
    if len > max {
        return Err(ProtocolError::TooLong { what, len, max });
    }
    Ok(())
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        if n > self.rest.len() {
            return Err(ProtocolError::Truncated {
                what,
                needed: n,
                remaining: self.rest.len(),
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, ProtocolError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, ProtocolError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A non-null array count, at most `max`, whose elements (at least
    /// `min_element_bytes` each) fit in the bytes left: so a count can be
    /// allocated for once it passes.
    fn count(
        &mut self,
        what: &'static str,
        max: usize,
        min_element_bytes: usize,
    ) -> Result<usize, ProtocolError> {
        let n = self.i32(what)?;
        let n = usize::try_from(n).map_err(|_| ProtocolError::NegativeLength { what, len: n })?;
        check_max(what, n, max)?;
        let needed = n.saturating_mul(min_element_bytes);
        if needed > self.rest.len() {
            return Err(ProtocolError::Truncated {
                what,
                needed,
                remaining: self.rest.len(),
            });
        }
        Ok(n)
    }

    fn utf8(bytes: &[u8], what: &'static str) -> Result<String, ProtocolError> {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| ProtocolError::InvalidUtf8 { what })
    }

    fn string(&mut self, what: &'static str, max: usize) -> Result<String, ProtocolError> {
        let len = self.i16(what)?;
        let len = usize::try_from(len).map_err(|_| ProtocolError::NegativeLength {
            what,
            len: i32::from(len),
        })?;
        check_max(what, len, max)?;
        let bytes = self.take(len, what)?;
        Self::utf8(bytes, what)
    }

    fn nullable_string(
        &mut self,
        what: &'static str,
        max: usize,
    ) -> Result<Option<String>, ProtocolError> {
        let len = self.i16(what)?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| ProtocolError::NegativeLength {
            what,
            len: i32::from(len),
        })?;
        check_max(what, len, max)?;
        let bytes = self.take(len, what)?;
        Self::utf8(bytes, what).map(Some)
    }

    fn nullable_bytes(
        &mut self,
        what: &'static str,
        max: usize,
    ) -> Result<Option<Vec<u8>>, ProtocolError> {
        let len = self.i32(what)?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| ProtocolError::NegativeLength { what, len })?;
        check_max(what, len, max)?;
        Ok(Some(self.take(len, what)?.to_vec()))
    }

    fn topic_partitions(
        &mut self,
        what: &'static str,
    ) -> Result<Vec<TopicPartitions>, ProtocolError> {
        // Each entry takes at least a 2-byte name length and a 4-byte count.
        let n = self.count(what, MAX_TOPICS_PER_SUBSCRIPTION, 6)?;
        let mut list = Vec::with_capacity(n);
        let mut total = 0usize;
        for _ in 0..n {
            let topic = self.string("topic name", MAX_NAME_BYTES)?;
            let count = self.count("partition count", MAX_PARTITIONS_PER_ASSIGNMENT, 4)?;
            total += count;
            check_max("partition count", total, MAX_PARTITIONS_PER_ASSIGNMENT)?;
            let mut partitions = Vec::with_capacity(count);
            for _ in 0..count {
                let p = self.i32("partition")?;
                let p = u32::try_from(p).map_err(|_| ProtocolError::PartitionOutOfRange {
                    topic: topic.clone(),
                    partition: i64::from(p),
                })?;
                partitions.push(p);
            }
            list.push(TopicPartitions { topic, partitions });
        }
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tp(topic: &str, partitions: &[u32]) -> TopicPartitions {
        TopicPartitions {
            topic: topic.to_owned(),
            partitions: partitions.to_vec(),
        }
    }

    #[test]
    fn a_v1_subscription_encodes_to_the_bytes_of_the_kafka_format() {
        let sub = Subscription {
            topics: vec!["a".into(), "bc".into()],
            user_data: None,
            owned_partitions: vec![tp("a", &[0])],
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x00, 0x01,                         // version 1
            0x00, 0x00, 0x00, 0x02,             // 2 topics
            0x00, 0x01, b'a',                   // "a"
            0x00, 0x02, b'b', b'c',             // "bc"
            0xff, 0xff, 0xff, 0xff,             // user data: null
            0x00, 0x00, 0x00, 0x01,             // 1 owned topic
            0x00, 0x01, b'a',                   //   "a"
            0x00, 0x00, 0x00, 0x01,             //   1 partition
            0x00, 0x00, 0x00, 0x00,             //   partition 0
        ];
        assert_eq!(sub.encode().unwrap(), expected);
        assert_eq!(Subscription::decode(expected).unwrap(), sub);
    }

    #[test]
    fn an_assignment_encodes_to_the_bytes_of_the_kafka_format() {
        let assignment = Assignment {
            assigned_partitions: vec![tp("a", &[0, 2]), tp("bc", &[1])],
            user_data: Some(vec![0xab]),
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x00, 0x01,                         // version 1
            0x00, 0x00, 0x00, 0x02,             // 2 topics
            0x00, 0x01, b'a',                   //   "a"
            0x00, 0x00, 0x00, 0x02,             //   2 partitions
            0x00, 0x00, 0x00, 0x00,             //   0
            0x00, 0x00, 0x00, 0x02,             //   2
            0x00, 0x02, b'b', b'c',             //   "bc"
            0x00, 0x00, 0x00, 0x01,             //   1 partition
            0x00, 0x00, 0x00, 0x01,             //   1
            0x00, 0x00, 0x00, 0x01, 0xab,       // user data: 1 byte
        ];
        assert_eq!(assignment.encode().unwrap(), expected);
        assert_eq!(Assignment::decode(expected).unwrap(), assignment);
    }

    #[test]
    fn a_v0_subscription_has_no_owned_partitions() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x00, 0x00,                         // version 0
            0x00, 0x00, 0x00, 0x01,             // 1 topic
            0x00, 0x01, b't',
            0x00, 0x00, 0x00, 0x00,             // user data: empty, not null
        ];
        let sub = Subscription::decode(bytes).unwrap();
        assert_eq!(sub.topics, vec!["t".to_owned()]);
        assert_eq!(sub.user_data, Some(Vec::new()));
        assert!(sub.owned_partitions.is_empty());
    }

    #[test]
    fn a_v3_subscription_is_read_skipping_generation_and_rack() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x00, 0x03,                         // version 3
            0x00, 0x00, 0x00, 0x01, 0x00, 0x01, b't',
            0xff, 0xff, 0xff, 0xff,             // user data: null
            0x00, 0x00, 0x00, 0x01, 0x00, 0x01, b't',
            0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x05,
            0x00, 0x00, 0x00, 0x07,             // generation 7
            0x00, 0x02, b'r', b'1',             // rack "r1"
        ];
        let sub = Subscription::decode(bytes).unwrap();
        assert_eq!(sub.owned(), BTreeSet::from([("t".to_owned(), 5)]));
        // Truncating the rack id is an error: v3 fields are required.
        assert!(matches!(
            Subscription::decode(&bytes[..bytes.len() - 1]),
            Err(ProtocolError::Truncated {
                what: "rack id",
                ..
            })
        ));
        // A null rack id is allowed.
        let mut null_rack = bytes[..bytes.len() - 4].to_vec();
        null_rack.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(Subscription::decode(&null_rack).unwrap(), sub);
    }

    #[test]
    fn a_version_above_the_known_ones_is_read_as_the_highest_known() {
        let mut bytes = Subscription::new(["t"], &[("t".into(), 1)])
            .encode()
            .unwrap();
        bytes[1] = 9;
        bytes.extend_from_slice(&[0, 0, 0, 1]); // generation
        bytes.extend_from_slice(&[0xff, 0xff]); // rack: null
        bytes.extend_from_slice(&[1, 2, 3]); // a future field
        let sub = Subscription::decode(&bytes).unwrap();
        assert_eq!(sub, Subscription::new(["t"], &[("t".into(), 1)]));
    }

    #[test]
    fn a_negative_version_is_rejected() {
        assert_eq!(
            Subscription::decode(&[0xff, 0xff]),
            Err(ProtocolError::UnsupportedVersion {
                what: "subscription",
                version: -1
            })
        );
        assert!(matches!(
            Assignment::decode(&[0x80, 0x00]),
            Err(ProtocolError::UnsupportedVersion { .. })
        ));
    }

    #[test]
    fn a_null_topic_array_is_rejected_because_topics_are_not_nullable() {
        let bytes = [0, 1, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            Subscription::decode(&bytes),
            Err(ProtocolError::NegativeLength {
                what: "topic count",
                len: -1
            })
        );
    }

    #[test]
    fn a_null_topic_name_is_rejected() {
        let bytes = [0, 1, 0, 0, 0, 1, 0xff, 0xff];
        assert!(matches!(
            Subscription::decode(&bytes),
            Err(ProtocolError::NegativeLength {
                what: "topic name",
                ..
            })
        ));
    }

    #[test]
    fn user_data_lengths_below_minus_one_are_rejected() {
        let bytes = [0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xfe];
        assert_eq!(
            Subscription::decode(&bytes),
            Err(ProtocolError::NegativeLength {
                what: "user data",
                len: -2
            })
        );
    }

    #[test]
    fn a_huge_count_is_rejected_before_anything_is_allocated() {
        // 2^31 - 1 topics in a 6-byte message.
        let bytes = [0, 1, 0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            Subscription::decode(&bytes),
            Err(ProtocolError::TooLong {
                what: "topic count",
                ..
            })
        ));
        // A count under the limit that the bytes left cannot hold.
        let bytes = [0, 1, 0, 0, 0x27, 0x10];
        assert_eq!(
            Subscription::decode(&bytes),
            Err(ProtocolError::Truncated {
                what: "topic count",
                needed: 20_000,
                remaining: 0
            })
        );
    }

    #[test]
    fn partitions_over_the_limit_across_topics_are_rejected() {
        let half = MAX_PARTITIONS_PER_ASSIGNMENT / 2 + 1;
        let assignment = Assignment {
            assigned_partitions: vec![tp("a", &vec![0; half]), tp("b", &vec![0; half])],
            user_data: None,
        };
        assert!(matches!(
            assignment.encode(),
            Err(ProtocolError::TooLong {
                what: "partition count",
                ..
            })
        ));
        // Written by hand past the encoder's check, the reader refuses too.
        let mut w = Writer::default();
        w.i16(1);
        w.i32(2);
        for topic in ["a", "b"] {
            w.string(topic, "topic name", MAX_NAME_BYTES).unwrap();
            w.i32(half as i32);
            for _ in 0..half {
                w.i32(0);
            }
        }
        w.i32(-1);
        assert!(matches!(
            Assignment::decode(&w.buf),
            Err(ProtocolError::TooLong {
                what: "partition count",
                ..
            })
        ));
    }

    #[test]
    fn a_topic_name_over_the_limit_is_rejected_both_ways() {
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let sub = Subscription::new([long.clone()], &[]);
        assert!(matches!(
            sub.encode(),
            Err(ProtocolError::TooLong {
                what: "topic name",
                ..
            })
        ));
        let mut bytes = vec![0, 0, 0, 0, 0, 1];
        bytes.extend_from_slice(&(long.len() as i16).to_be_bytes());
        bytes.extend_from_slice(long.as_bytes());
        bytes.extend_from_slice(&[0xff; 4]);
        assert!(matches!(
            Subscription::decode(&bytes),
            Err(ProtocolError::TooLong {
                what: "topic name",
                ..
            })
        ));
    }

    #[test]
    fn invalid_utf8_in_a_topic_name_is_rejected() {
        let bytes = [0, 0, 0, 0, 0, 1, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            Subscription::decode(&bytes),
            Err(ProtocolError::InvalidUtf8 { what: "topic name" })
        );
    }

    #[test]
    fn a_negative_partition_is_rejected() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x00, 0x00,
            0x00, 0x00, 0x00, 0x01, 0x00, 0x01, b't',
            0x00, 0x00, 0x00, 0x01, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff,
        ];
        assert_eq!(
            Assignment::decode(bytes),
            Err(ProtocolError::PartitionOutOfRange {
                topic: "t".into(),
                partition: -1
            })
        );
    }

    #[test]
    fn a_partition_over_i32_max_cannot_be_written() {
        let assignment = Assignment::new(&[("t".into(), u32::MAX)]);
        assert!(matches!(
            assignment.encode(),
            Err(ProtocolError::PartitionOutOfRange { .. })
        ));
    }

    #[test]
    fn new_groups_partitions_by_topic_in_order_without_duplicates() {
        let a = Assignment::new(&[
            ("b".into(), 1),
            ("a".into(), 3),
            ("a".into(), 0),
            ("a".into(), 3),
        ]);
        assert_eq!(a.assigned_partitions, vec![tp("a", &[0, 3]), tp("b", &[1])]);
    }

    fn topic_name() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z0-9._-]{0,12}", "\\PC{0,8}"]
            .prop_filter("fits the limit", |s: &String| s.len() <= MAX_NAME_BYTES)
    }

    fn topic_partitions() -> impl Strategy<Value = Vec<TopicPartitions>> {
        prop::collection::vec(
            (
                topic_name(),
                prop::collection::vec(0..=i32::MAX as u32, 0..6),
            )
                .prop_map(|(topic, partitions)| TopicPartitions { topic, partitions }),
            0..5,
        )
    }

    fn user_data() -> impl Strategy<Value = Option<Vec<u8>>> {
        prop::option::of(prop::collection::vec(any::<u8>(), 0..16))
    }

    fn subscription() -> impl Strategy<Value = Subscription> {
        (
            prop::collection::vec(topic_name(), 0..6),
            user_data(),
            topic_partitions(),
        )
            .prop_map(|(topics, user_data, owned_partitions)| Subscription {
                topics,
                user_data,
                owned_partitions,
            })
    }

    fn assignment() -> impl Strategy<Value = Assignment> {
        (topic_partitions(), user_data()).prop_map(|(assigned_partitions, user_data)| Assignment {
            assigned_partitions,
            user_data,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn a_subscription_round_trips_and_every_strict_prefix_is_truncated(sub in subscription()) {
            let bytes = sub.encode().unwrap();
            prop_assert_eq!(Subscription::decode(&bytes).unwrap(), sub);
            for end in 0..bytes.len() {
                let is_truncated = matches!(
                    Subscription::decode(&bytes[..end]),
                    Err(ProtocolError::Truncated { .. })
                );
                prop_assert!(is_truncated, "prefix of {} bytes", end);
            }
        }

        #[test]
        fn an_assignment_round_trips_and_every_strict_prefix_is_truncated(a in assignment()) {
            let bytes = a.encode().unwrap();
            prop_assert_eq!(Assignment::decode(&bytes).unwrap(), a);
            for end in 0..bytes.len() {
                let is_truncated = matches!(
                    Assignment::decode(&bytes[..end]),
                    Err(ProtocolError::Truncated { .. })
                );
                prop_assert!(is_truncated, "prefix of {} bytes", end);
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
            let _ = Subscription::decode(&bytes);
            let _ = Assignment::decode(&bytes);
        }

        #[test]
        fn decoding_corrupted_encodings_never_panics(
            sub in subscription(),
            a in assignment(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            for mut bytes in [sub.encode().unwrap(), a.encode().unwrap()] {
                for (at, value) in &flips {
                    let i = at.index(bytes.len());
                    bytes[i] = *value;
                }
                let _ = Subscription::decode(&bytes);
                let _ = Assignment::decode(&bytes);
            }
        }
    }
}
