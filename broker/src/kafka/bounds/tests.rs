//! The guard is tested against the `kafka-protocol` crate itself.
//!
//! `sample` builds, for every covered request and version, a body with one
//! element in every array at every level, non-empty strings and bytes, and
//! in flexible versions every known tagged field plus an unknown one. The
//! crate must decode it, consume it exactly, and encode it back to the same
//! bytes, which proves the body is what the crate's encoder writes for a
//! fully populated request, and that the schema table agrees with the
//! crate field by field. A few requests are also built directly with the
//! crate's builders. The mutation tests then overwrite each count and
//! length in those samples with a huge value, and the proptests throw
//! random and mutated bodies at the guard and, whenever it accepts, at the
//! crate's decoder.

use super::schema::APIS;
use super::*;
use bytes::{Bytes as ByteBuf, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};
use proptest::prelude::*;

/// The API keys the guard must cover.
const COVERED: &[i16] = &[
    0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22, 23, 24, 25, 26, 28, 29, 30,
    31, 32, 33, 36, 37, 42, 44, 47, 60, 61, 65, 66,
];

/// What the crate's decoder did with a body: how many bytes it read and
/// the request encoded back.
struct Decoded {
    consumed: usize,
    reencoded: Vec<u8>,
}

macro_rules! requests {
    ($($key:literal => $ty:ident,)*) => {
        /// Decodes `body` with the crate, then encodes the result again.
        fn crate_decode(key: i16, version: i16, body: &[u8]) -> Result<Decoded, String> {
            let mut buf = ByteBuf::copy_from_slice(body);
            let mut out = BytesMut::new();
            match key {
                $($key => {
                    let msg = $ty::decode(&mut buf, version).map_err(|e| e.to_string())?;
                    msg.encode(&mut out, version).map_err(|e| e.to_string())?;
                })*
                _ => return Err(format!("no request type for API key {key}")),
            }
            Ok(Decoded { consumed: body.len() - buf.len(), reencoded: out.to_vec() })
        }

        /// The versions the crate's decoder accepts.
        fn decoder_versions(key: i16) -> (i16, i16) {
            match key {
                $($key => ($ty::VERSIONS.min, $ty::VERSIONS.max),)*
                _ => panic!("no request type for API key {key}"),
            }
        }
    };
}

requests! {
    0 => ProduceRequest,
    1 => FetchRequest,
    2 => ListOffsetsRequest,
    3 => MetadataRequest,
    8 => OffsetCommitRequest,
    9 => OffsetFetchRequest,
    10 => FindCoordinatorRequest,
    11 => JoinGroupRequest,
    12 => HeartbeatRequest,
    13 => LeaveGroupRequest,
    14 => SyncGroupRequest,
    15 => DescribeGroupsRequest,
    16 => ListGroupsRequest,
    17 => SaslHandshakeRequest,
    18 => ApiVersionsRequest,
    19 => CreateTopicsRequest,
    20 => DeleteTopicsRequest,
    22 => InitProducerIdRequest,
    23 => OffsetForLeaderEpochRequest,
    24 => AddPartitionsToTxnRequest,
    25 => AddOffsetsToTxnRequest,
    26 => EndTxnRequest,
    28 => TxnOffsetCommitRequest,
    29 => DescribeAclsRequest,
    30 => CreateAclsRequest,
    31 => DeleteAclsRequest,
    32 => DescribeConfigsRequest,
    33 => AlterConfigsRequest,
    36 => SaslAuthenticateRequest,
    37 => CreatePartitionsRequest,
    42 => DeleteGroupsRequest,
    44 => IncrementalAlterConfigsRequest,
    47 => OffsetDeleteRequest,
    60 => DescribeClusterRequest,
    61 => DescribeProducersRequest,
    65 => DescribeTransactionsRequest,
    66 => ListTransactionsRequest,
}

// Building sample bodies from the schema.

/// How a count or length in a sample is encoded.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Prefix {
    I16,
    I32,
    Varint,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum MarkKind {
    ArrayCount,
    Length,
    TagCount,
    TagSize,
}

/// Where a sample holds a count or length read from the wire.
#[derive(Clone, Debug)]
struct Mark {
    at: usize,
    kind: MarkKind,
    prefix: Prefix,
}

#[derive(Default)]
struct Sample {
    body: Vec<u8>,
    marks: Vec<Mark>,
}

/// A tag no covered request knows, so the crate keeps it as unknown.
const UNKNOWN_TAG: u8 = 100;

impl Sample {
    fn mark(&mut self, kind: MarkKind, prefix: Prefix) {
        self.marks.push(Mark {
            at: self.body.len(),
            kind,
            prefix,
        });
    }

    /// A count or length, compact (`n + 1`, one byte here) or not.
    fn length(&mut self, kind: MarkKind, n: u8, compact: bool, wide: bool) {
        let prefix = match (compact, wide) {
            (true, _) => Prefix::Varint,
            (false, false) => Prefix::I16,
            (false, true) => Prefix::I32,
        };
        self.mark(kind, prefix);
        match prefix {
            Prefix::Varint => self.body.push(n + 1),
            Prefix::I16 => self.body.extend_from_slice(&i16::from(n).to_be_bytes()),
            Prefix::I32 => self.body.extend_from_slice(&i32::from(n).to_be_bytes()),
        }
    }

    fn append(&mut self, other: Sample) {
        let base = self.body.len();
        self.marks.extend(other.marks.into_iter().map(|m| Mark {
            at: m.at + base,
            ..m
        }));
        self.body.extend(other.body);
    }
}

fn synth_struct(out: &mut Sample, s: &StructSchema, version: i16) {
    let compact = s.is_flexible(version);
    for field in s.fields.iter().filter(|f| f.in_version(version)) {
        synth_value(out, field.ty, version, compact);
    }
    if !compact {
        return;
    }
    let known: Vec<&Tag> = s
        .tags
        .iter()
        .filter(|t| (t.versions.0..=t.versions.1).contains(&version))
        .collect();
    let count = u8::try_from(known.len() + 1).expect("few tags");
    out.mark(MarkKind::TagCount, Prefix::Varint);
    out.body.push(count);
    for t in known {
        let mut value = Sample::default();
        synth_value(&mut value, t.ty, version, true);
        out.body.push(u8::try_from(t.tag).expect("small tag"));
        out.mark(MarkKind::TagSize, Prefix::Varint);
        out.body
            .push(u8::try_from(value.body.len()).expect("small value"));
        out.append(value);
    }
    out.body.push(UNKNOWN_TAG);
    out.mark(MarkKind::TagSize, Prefix::Varint);
    out.body.extend_from_slice(&[2, 0xab, 0xcd]);
}

fn synth_value(out: &mut Sample, ty: Ty, version: i16, compact: bool) {
    // Every number is 1: never a field's default, so the crate writes the
    // tagged ones back.
    let one = |out: &mut Sample, width: usize| {
        out.body.extend(std::iter::repeat_n(0, width - 1));
        out.body.push(1);
    };
    match ty {
        Ty::Bool | Ty::Int8 => one(out, 1),
        Ty::Int16 => one(out, 2),
        Ty::Int32 => one(out, 4),
        Ty::Int64 => one(out, 8),
        Ty::Uuid => out.body.extend(1..=16),
        Ty::Str | Ty::NullableStr => {
            out.length(MarkKind::Length, 2, compact, false);
            out.body.extend_from_slice(b"ab");
        }
        Ty::Bytes | Ty::NullableBytes => {
            out.length(MarkKind::Length, 3, compact, true);
            out.body.extend_from_slice(&[1, 2, 3]);
        }
        Ty::Array(elem) | Ty::NullableArray(elem) => {
            out.length(MarkKind::ArrayCount, 1, compact, true);
            synth_value(out, elem.ty(), version, compact);
        }
        Ty::Struct(s) => synth_struct(out, s, version),
    }
}

fn sample(api: &Api, version: i16) -> Sample {
    let mut out = Sample::default();
    synth_struct(&mut out, api.body, version);
    out
}

/// Every covered (api, version) the crate decodes, with its sample.
fn all_samples() -> Vec<(&'static Api, i16, Sample)> {
    APIS.iter()
        .flat_map(|api| (api.versions.0..=api.versions.1).map(move |v| (api, v, sample(api, v))))
        .collect()
}

fn api(key: i16) -> &'static Api {
    APIS.iter().find(|a| a.key == key).expect("covered")
}

fn crate_valid_versions(key: i16) -> (i16, i16) {
    let range = ApiKey::try_from(key).expect("known key").valid_versions();
    (range.min, range.max)
}

// The schema against the crate.

#[test]
fn every_listed_api_key_is_covered_once() {
    let keys: Vec<i16> = APIS.iter().map(|a| a.key).collect();
    assert_eq!(keys, COVERED);
}

#[test]
fn schema_versions_are_the_crate_decoders_versions() {
    for api in APIS {
        assert_eq!(api.versions, decoder_versions(api.key), "{}", api.name);
        let (min, max) = crate_valid_versions(api.key);
        assert!(
            api.versions.0 == min && api.versions.1 <= max,
            "{}",
            api.name
        );
    }
}

/// `ApiKey::valid_versions()` names versions the crate's request decoders
/// refuse (OffsetCommit 10, OffsetFetch 10, InitProducerId 6). The guard
/// refuses them too, and so must the listener's ApiVersions answer.
#[test]
fn versions_the_crate_cannot_decode_are_refused() {
    let mut gaps = Vec::new();
    for &key in COVERED {
        let (min, max) = crate_valid_versions(key);
        for version in min..=max {
            if find_api(key, version).is_none() {
                gaps.push((key, version));
                let body = sample(api(key), api(key).versions.1).body;
                assert_eq!(
                    check_request(key, version, &body),
                    Err(BoundsError::UnsupportedRequest {
                        api_key: key,
                        api_version: version
                    })
                );
                assert!(crate_decode(key, version, &body).is_err());
            }
        }
    }
    assert_eq!(gaps, [(8, 10), (9, 10), (22, 6)]);
}

#[test]
fn unknown_keys_and_versions_are_refused() {
    for (key, version) in [(0, 2), (0, 14), (4, 0), (-1, 0), (1000, 0), (18, -1)] {
        assert_eq!(
            check_request(key, version, &[0; 64]),
            Err(BoundsError::UnsupportedRequest {
                api_key: key,
                api_version: version
            })
        );
    }
}

#[test]
fn every_sample_is_what_the_crate_encodes_and_passes_the_guard() {
    let mut checked = 0;
    for (api, version, s) in all_samples() {
        let what = format!("{} v{version}", api.name);
        let decoded = crate_decode(api.key, version, &s.body)
            .unwrap_or_else(|e| panic!("{what}: the crate refuses the sample: {e}"));
        assert_eq!(decoded.consumed, s.body.len(), "{what}: crate read");
        assert_eq!(decoded.reencoded, s.body, "{what}: crate re-encoding");
        assert_eq!(
            walk_request(api.key, version, &s.body),
            Ok(s.body.len()),
            "{what}"
        );
        checked += 1;
    }
    // Every version of every covered key but the three the crate cannot
    // decode.
    let expected: i32 = COVERED
        .iter()
        .map(|&k| {
            let (min, max) = crate_valid_versions(k);
            i32::from(max - min + 1)
        })
        .sum::<i32>()
        - 3;
    assert_eq!(checked, expected);
}

/// A zero-sized array element would let a count reach [`MAX_ARRAY_LEN`]
/// from a handful of bytes; no covered request has one.
#[test]
fn every_array_element_takes_at_least_one_byte() {
    fn visit(s: &StructSchema, version: i16) {
        let compact = s.is_flexible(version);
        for field in s.fields.iter().filter(|f| f.in_version(version)) {
            let ty = match field.ty {
                Ty::Array(e) | Ty::NullableArray(e) => {
                    assert!(e.ty().min_size(version, compact) > 0, "{}", field.name);
                    e.ty()
                }
                ty => ty,
            };
            if let Ty::Struct(inner) = ty {
                visit(inner, version);
            }
        }
    }
    for api in APIS {
        for version in api.versions.0..=api.versions.1 {
            visit(api.body, version);
        }
    }
}

// Requests built with the crate's own builders.

fn encode<T: Encodable>(msg: &T, version: i16) -> Vec<u8> {
    let mut out = BytesMut::new();
    msg.encode(&mut out, version).expect("encodes");
    out.to_vec()
}

fn assert_passes(key: i16, version: i16, body: &[u8]) {
    assert_eq!(
        walk_request(key, version, body),
        Ok(body.len()),
        "key {key} v{version}"
    );
    let decoded = crate_decode(key, version, body).expect("the crate decodes it");
    assert_eq!(decoded.consumed, body.len());
}

/// A UUID whose bytes are all `n`.
fn uuid(n: u8) -> uuid::Uuid {
    uuid::Uuid::from_bytes([n; 16])
}

fn text(text: &'static str) -> StrBytes {
    StrBytes::from_static_str(text)
}

#[test]
fn produce_built_by_the_crate_passes() {
    for version in 3..=13 {
        let partition = produce_request::PartitionProduceData::default()
            .with_index(3)
            .with_records(Some(ByteBuf::from_static(&[0xde; 70])));
        let topic = produce_request::TopicProduceData::default()
            .with_partition_data(vec![partition.clone(), partition]);
        let topic = if version >= 13 {
            topic.with_topic_id(uuid(7))
        } else {
            topic.with_name(TopicName(text("orders")))
        };
        let req = ProduceRequest::default()
            .with_transactional_id(Some(TransactionalId(text("tx-1"))))
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![topic]);
        assert_passes(0, version, &encode(&req, version));
    }
}

#[test]
fn fetch_built_by_the_crate_passes() {
    for version in 4..=18 {
        let mut partition = fetch_request::FetchPartition::default()
            .with_partition(1)
            .with_fetch_offset(42)
            .with_partition_max_bytes(1 << 20);
        if version >= 17 {
            partition = partition.with_replica_directory_id(uuid(9));
        }
        if version >= 18 {
            partition = partition.with_high_watermark(100);
        }
        let mut topic = fetch_request::FetchTopic::default().with_partitions(vec![partition]);
        if version >= 13 {
            topic = topic.with_topic_id(uuid(5));
        } else {
            topic = topic.with_topic(TopicName(text("orders")));
        }
        let mut req = FetchRequest::default()
            .with_max_wait_ms(500)
            .with_max_bytes(1 << 24)
            .with_topics(vec![topic]);
        if version >= 7 {
            let forgotten = fetch_request::ForgottenTopic::default().with_partitions(vec![1, 2]);
            let forgotten = if version >= 13 {
                forgotten.with_topic_id(uuid(6))
            } else {
                forgotten.with_topic(TopicName(text("old")))
            };
            req = req.with_forgotten_topics_data(vec![forgotten]);
        }
        if version >= 11 {
            req = req.with_rack_id(text("rack-a"));
        }
        if version >= 12 {
            req = req.with_cluster_id(Some(text("cluster")));
        }
        if version >= 15 {
            req = req.with_replica_state(
                fetch_request::ReplicaState::default()
                    .with_replica_id(BrokerId(2))
                    .with_replica_epoch(3),
            );
        }
        assert_passes(1, version, &encode(&req, version));
    }
}

#[test]
fn metadata_built_by_the_crate_passes_with_and_without_topics() {
    for version in 0..=13 {
        let topic = metadata_request::MetadataRequestTopic::default()
            .with_name(Some(TopicName(text("orders"))));
        let all = MetadataRequest::default().with_topics(None);
        let some = MetadataRequest::default().with_topics(Some(vec![topic]));
        for req in [all, some] {
            assert_passes(3, version, &encode(&req, version));
        }
    }
}

#[test]
fn join_and_sync_group_built_by_the_crate_pass() {
    for version in 0..=9 {
        let protocol = join_group_request::JoinGroupRequestProtocol::default()
            .with_name(text("range"))
            .with_metadata(ByteBuf::from_static(b"\0\x01subscription"));
        let mut req = JoinGroupRequest::default()
            .with_group_id(GroupId(text("g")))
            .with_session_timeout_ms(10_000)
            .with_member_id(text(""))
            .with_protocol_type(text("consumer"))
            .with_protocols(vec![protocol.clone(), protocol]);
        if version >= 8 {
            req = req.with_reason(Some(text("joining")));
        }
        assert_passes(11, version, &encode(&req, version));
    }
    for version in 0..=5 {
        let assignment = sync_group_request::SyncGroupRequestAssignment::default()
            .with_member_id(text("m-1"))
            .with_assignment(ByteBuf::from_static(b"\0\x01a"));
        let req = SyncGroupRequest::default()
            .with_group_id(GroupId(text("g")))
            .with_member_id(text("m-1"))
            .with_assignments(vec![assignment]);
        assert_passes(14, version, &encode(&req, version));
    }
}

#[test]
fn api_versions_built_by_the_crate_passes() {
    for version in 0..=4 {
        let mut req = ApiVersionsRequest::default();
        if version >= 3 {
            req = req
                .with_client_software_name(text("librdkafka"))
                .with_client_software_version(text("2.14.2"));
        }
        assert_passes(18, version, &encode(&req, version));
    }
}

// What the guard refuses.

/// The attack the guard exists for: a four-byte Metadata v0 body that
/// claims 2^31 - 1 topics.
#[test]
fn a_tiny_body_claiming_a_huge_array_is_refused() {
    assert_eq!(
        check_request(3, 0, &[0x7f, 0xff, 0xff, 0xff]),
        Err(BoundsError::ArrayTooLong {
            path: "MetadataRequest.topics".into(),
            count: 0x7fff_ffff,
            limit: MAX_ARRAY_LEN,
        })
    );
    // Under the limit, but more four-byte (empty) topic names than the
    // four bytes left can hold.
    assert_eq!(
        check_request(3, 0, &[0, 0, 0, 3, 0, 0, 0, 0]),
        Err(BoundsError::ArrayExceedsInput {
            path: "MetadataRequest.topics".into(),
            count: 3,
            min_element_bytes: 2,
            remaining: 4,
        })
    );
}

#[test]
fn errors_name_the_field_path() {
    let s = sample(api(0), 9);
    // The records length in topic_data[0].partition_data[0].
    let at = s
        .marks
        .iter()
        .rfind(|m| m.kind == MarkKind::Length)
        .expect("records");
    let mut body = s.body.clone();
    body[at.at] = 0x7f;
    let err = check_request(0, 9, &body).expect_err("too long");
    assert_eq!(
        err,
        BoundsError::LengthExceedsInput {
            path: "ProduceRequest.topic_data[0].partition_data[0].records".into(),
            length: 0x7e,
            remaining: body.len() - at.at - 1,
        }
    );
    assert!(
        err.to_string()
            .starts_with("ProduceRequest.topic_data[0].partition_data[0].records: length 126"),
        "{err}"
    );
}

/// Overwrites the count or length at `mark` with `value`.
fn overwrite(body: &[u8], mark: &Mark, value: u32) -> Vec<u8> {
    let (width, bytes) = match mark.prefix {
        Prefix::I16 => (
            2,
            u16::try_from(value).expect("fits").to_be_bytes().to_vec(),
        ),
        Prefix::I32 => (4, value.to_be_bytes().to_vec()),
        Prefix::Varint => {
            let mut out = Vec::new();
            let mut v = value;
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
            // The samples' varints are all one byte long.
            (1, out)
        }
    };
    let mut out = body[..mark.at].to_vec();
    out.extend(bytes);
    out.extend_from_slice(&body[mark.at + width..]);
    out
}

#[test]
fn every_huge_array_count_is_refused() {
    let mut mutated = 0;
    for (api, version, s) in all_samples() {
        for mark in s.marks.iter().filter(|m| m.kind == MarkKind::ArrayCount) {
            let what = format!("{} v{version} at byte {}", api.name, mark.at);
            // 0x7fff_ffff elements; as a varint, u32::MAX means 2^32 - 2.
            let huge = if mark.prefix == Prefix::Varint {
                u32::MAX
            } else {
                0x7fff_ffff
            };
            let body = overwrite(&s.body, mark, huge);
            match check_request(api.key, version, &body) {
                Err(BoundsError::ArrayTooLong { count, limit, .. }) => {
                    assert!(count > limit as u64, "{what}")
                }
                other => panic!("{what}: {other:?}"),
            }
            // At the limit, the count passes the first check but not the
            // second: the body is far too short.
            let at_limit = MAX_ARRAY_LEN as u32 + u32::from(mark.prefix == Prefix::Varint);
            let body = overwrite(&s.body, mark, at_limit);
            match check_request(api.key, version, &body) {
                Err(BoundsError::ArrayExceedsInput { count, .. }) => {
                    assert_eq!(count, MAX_ARRAY_LEN as u64, "{what}")
                }
                other => panic!("{what}: {other:?}"),
            }
            mutated += 1;
        }
    }
    // Every array of every version (for kafka-protocol 0.18.0).
    assert_eq!(mutated, 290);
}

#[test]
fn every_huge_string_bytes_or_tag_length_is_refused() {
    let mut mutated = 0;
    for (api, version, s) in all_samples() {
        for mark in s.marks.iter().filter(|m| m.kind != MarkKind::ArrayCount) {
            let what = format!(
                "{} v{version} at byte {} ({:?})",
                api.name, mark.at, mark.kind
            );
            let huge = match mark.prefix {
                Prefix::I16 => 0x7fff,
                Prefix::I32 => 0x7fff_ffff,
                Prefix::Varint => u32::MAX,
            };
            let body = overwrite(&s.body, mark, huge);
            let err = check_request(api.key, version, &body).expect_err(&what);
            match (mark.kind, &err) {
                (MarkKind::Length, BoundsError::LengthExceedsInput { .. })
                | (MarkKind::TagCount, BoundsError::TooManyTaggedFields { .. })
                | (MarkKind::TagSize, BoundsError::LengthExceedsInput { .. })
                | (MarkKind::TagSize, BoundsError::TaggedFieldSize { .. }) => {}
                _ => panic!("{what}: {err:?}"),
            }
            mutated += 1;
        }
    }
    // Every string, bytes field and tagged-field count and size of every
    // version (for kafka-protocol 0.18.0).
    assert_eq!(mutated, 842);
}

#[test]
fn negative_lengths_and_nulls_are_refused_as_the_crate_refuses_them() {
    // JoinGroup v0: group_id is an int16-length string that may not be
    // null; -2 is no length at all.
    let s = sample(api(11), 0);
    let group_id = &s.marks[0];
    assert_eq!(group_id.at, 0);
    for (value, want) in [
        (
            0xffff,
            BoundsError::UnexpectedNull {
                path: "JoinGroupRequest.group_id".into(),
            },
        ),
        (
            0xfffe,
            BoundsError::NegativeLength {
                path: "JoinGroupRequest.group_id".into(),
                length: -2,
            },
        ),
    ] {
        let body = overwrite(&s.body, group_id, value);
        assert_eq!(check_request(11, 0, &body), Err(want));
        assert!(crate_decode(11, 0, &body).is_err());
    }
}

#[test]
fn tagged_fields_must_be_well_formed() {
    // Fetch v12: tag 1 (replica_state) exists only from v15 on.
    let s = sample(api(1), 12);
    let count = s
        .marks
        .iter()
        .rfind(|m| m.kind == MarkKind::TagCount)
        .expect("root tags");
    let mut body = s.body[..count.at].to_vec();
    body.extend_from_slice(&[1, 1, 0]);
    assert_eq!(
        check_request(1, 12, &body),
        Err(BoundsError::TagNotInVersion {
            path: "FetchRequest.replica_state".into(),
            tag: 1,
            version: 12,
        })
    );
    assert!(crate_decode(1, 12, &body).is_err());

    // A known tag whose declared size is not its value's size: the crate
    // would trust the value and misread what follows.
    let mut body = s.body[..count.at].to_vec();
    body.extend_from_slice(&[1, 0, 9, 3, b'a', b'b']);
    assert_eq!(
        check_request(1, 12, &body),
        Err(BoundsError::TaggedFieldSize {
            path: "FetchRequest.cluster_id".into(),
            tag: 0,
            declared: 9,
            actual: 3,
        })
    );
}

#[test]
fn trailing_bytes_are_ignored_like_the_crate_does() {
    for (api, version, s) in all_samples() {
        let mut body = s.body.clone();
        body.extend_from_slice(&[0xff, 0x00]);
        assert_eq!(walk_request(api.key, version, &body), Ok(s.body.len()));
        let decoded = crate_decode(api.key, version, &body).expect("decodes");
        assert_eq!(decoded.consumed, s.body.len());
    }
}

#[test]
fn every_truncation_of_a_sample_is_refused() {
    for (api, version, s) in all_samples() {
        for len in 0..s.body.len() {
            let what = format!("{} v{version} cut to {len}", api.name);
            // A sample's last bytes may belong to an unknown tag; cutting
            // them always leaves something unread.
            assert!(
                check_request(api.key, version, &s.body[..len]).is_err(),
                "{what}"
            );
        }
    }
}

// Properties: no input makes the guard panic, and whatever it accepts the
// crate decodes without aborting, reading the bytes the guard walked.

/// Decodes an accepted body with the crate. A failure is fine (bad UTF-8,
/// an invalid boolean...), but if the crate decodes it, it must have read
/// exactly what the guard walked.
fn crate_agrees(key: i16, version: i16, body: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(walked) = walk_request(key, version, body)
        && let Ok(decoded) = crate_decode(key, version, body)
    {
        prop_assert_eq!(decoded.consumed, walked);
    }
    Ok(())
}

fn any_api_version() -> impl Strategy<Value = (i16, i16)> {
    (0..APIS.len(), any::<prop::sample::Index>()).prop_map(|(i, v)| {
        let api = &APIS[i];
        let span = usize::try_from(api.versions.1 - api.versions.0 + 1).expect("span");
        let offset = i16::try_from(v.index(span)).expect("small");
        (api.key, api.versions.0 + offset)
    })
}

proptest! {
    // Each case takes microseconds; 2048 of each run in well under a second.
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn random_bodies_never_panic((key, version) in any_api_version(),
                                 body in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = check_request(key, version, &body);
        crate_agrees(key, version, &body)?;
    }

    #[test]
    fn mutated_samples_never_panic((key, version) in any_api_version(),
                                   at in any::<prop::sample::Index>(),
                                   byte in any::<u8>()) {
        let mut body = sample(api(key), version).body;
        // ApiVersions v0-2 has an empty body.
        prop_assume!(!body.is_empty());
        let i = at.index(body.len());
        body[i] = byte;
        let _ = check_request(key, version, &body);
        crate_agrees(key, version, &body)?;
    }

    #[test]
    fn spliced_samples_never_panic((key, version) in any_api_version(),
                                   at in any::<prop::sample::Index>(),
                                   insert in prop::collection::vec(any::<u8>(), 1..6)) {
        let mut body = sample(api(key), version).body;
        let i = at.index(body.len() + 1);
        body.splice(i..i, insert);
        let _ = check_request(key, version, &body);
        crate_agrees(key, version, &body)?;
    }
}
