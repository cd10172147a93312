//! The API keys and versions the Kafka front end speaks, and ApiVersions.
//!
//! [`SUPPORTED`] is the one table: ApiVersions advertises it, and the
//! connection refuses (and closes on) any key or version outside it. A
//! range starts at the lowest version the clients we test send (and
//! librdkafka before 2.11.1 checks for: Produce 0, FindCoordinator 0, the
//! group APIs 0, InitProducerId 0) and stops at what is implemented: no
//! topic ids (Fetch ≤ 12), no KIP-848 groups, no transaction version 2
//! (Produce ≤ 11, EndTxn ≤ 4, AddPartitionsToTxn ≤ 3).

use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};

use super::errors::code;

/// One advertised key and its inclusive version range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    pub key: ApiKey,
    pub min: i16,
    pub max: i16,
}

const fn r(key: ApiKey, min: i16, max: i16) -> Range {
    Range { key, min, max }
}

/// Produce versions below this one carry message sets v0/v1, which Ferry
/// does not store: they are advertised (see the module docs) and refused.
pub(crate) const PRODUCE_MIN_DECODED: i16 = 3;

/// Every key the front end answers, with its versions.
pub(crate) const SUPPORTED: &[Range] = &[
    r(ApiKey::Produce, 0, 11),
    r(ApiKey::Fetch, 4, 12),
    r(ApiKey::ListOffsets, 1, 7),
    r(ApiKey::Metadata, 0, 12),
    r(ApiKey::OffsetCommit, 2, 9),
    r(ApiKey::OffsetFetch, 1, 9),
    r(ApiKey::FindCoordinator, 0, 6),
    r(ApiKey::JoinGroup, 0, 9),
    r(ApiKey::Heartbeat, 0, 4),
    r(ApiKey::LeaveGroup, 0, 5),
    r(ApiKey::SyncGroup, 0, 5),
    r(ApiKey::DescribeGroups, 0, 5),
    r(ApiKey::ListGroups, 0, 4),
    r(ApiKey::ApiVersions, 0, 4),
    r(ApiKey::CreateTopics, 2, 7),
    r(ApiKey::DeleteTopics, 1, 6),
    r(ApiKey::InitProducerId, 0, 5),
    r(ApiKey::OffsetForLeaderEpoch, 2, 4),
    r(ApiKey::AddPartitionsToTxn, 0, 3),
    r(ApiKey::AddOffsetsToTxn, 0, 3),
    r(ApiKey::EndTxn, 0, 4),
    r(ApiKey::TxnOffsetCommit, 0, 3),
    r(ApiKey::DescribeAcls, 1, 3),
    r(ApiKey::CreateAcls, 1, 3),
    r(ApiKey::DeleteAcls, 1, 3),
    r(ApiKey::DescribeConfigs, 1, 4),
    r(ApiKey::CreatePartitions, 0, 3),
    r(ApiKey::DescribeProducers, 0, 0),
    r(ApiKey::DeleteGroups, 0, 2),
    r(ApiKey::DescribeCluster, 0, 1),
    r(ApiKey::DescribeTransactions, 0, 0),
    r(ApiKey::ListTransactions, 0, 1),
    // v0 is advertised because librdkafka before 2.1 enables SASL only
    // when a broker lists SaslHandshake v0; such a client still picks v1
    // when SaslAuthenticate is listed, and then speaks KIP-152. The tokens
    // a v0-only client (Kafka 0.10) sends next, outside Kafka's framing,
    // are not read: its connection closes at the first one.
    r(ApiKey::SaslHandshake, 0, 1),
    r(ApiKey::SaslAuthenticate, 0, 2),
];

/// The advertised range of `key`, if it is served.
pub(crate) fn range(key: ApiKey) -> Option<Range> {
    SUPPORTED.iter().copied().find(|r| r.key == key)
}

/// Whether `key` at `version` is served.
pub(crate) fn supported(key: ApiKey, version: i16) -> bool {
    range(key).is_some_and(|r| (r.min..=r.max).contains(&version))
}

/// The ApiVersions answer: every range, and `error_code` (NONE, or
/// UNSUPPORTED_VERSION for a request above our maximum, KIP-511).
pub(crate) fn api_versions(error_code: i16) -> ApiVersionsResponse {
    let mut resp = ApiVersionsResponse::default();
    resp.error_code = error_code;
    resp.api_keys = SUPPORTED
        .iter()
        .map(|r| {
            let mut v = ApiVersion::default();
            v.api_key = r.key as i16;
            v.min_version = r.min;
            v.max_version = r.max;
            v
        })
        .collect();
    resp
}

/// The answer to an ApiVersions request at `version`, and the version to
/// encode it with: a request above our maximum gets a v0 response with
/// UNSUPPORTED_VERSION and our ranges, so the client can retry lower.
pub(crate) fn answer_api_versions(version: i16) -> (ApiVersionsResponse, i16) {
    let max = range(ApiKey::ApiVersions).map_or(0, |r| r.max);
    if version > max {
        (api_versions(code::UNSUPPORTED_VERSION), 0)
    } else {
        (api_versions(code::NONE), version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_advertised_range_is_one_the_codec_can_decode() {
        for r in SUPPORTED {
            let valid = r.key.valid_versions();
            let min = if r.key == ApiKey::Produce {
                PRODUCE_MIN_DECODED
            } else {
                r.min
            };
            assert!(
                min >= valid.min && r.max <= valid.max && min <= r.max,
                "{:?} {}..={} outside the codec's {}..={}",
                r.key,
                min,
                r.max,
                valid.min,
                valid.max
            );
        }
    }

    #[test]
    fn each_key_is_listed_once() {
        for (i, a) in SUPPORTED.iter().enumerate() {
            assert!(
                SUPPORTED[i + 1..].iter().all(|b| b.key != a.key),
                "{:?} twice",
                a.key
            );
        }
    }

    #[test]
    fn an_api_versions_request_above_the_maximum_gets_a_v0_error_with_the_ranges() {
        let (resp, v) = answer_api_versions(99);
        assert_eq!((resp.error_code, v), (code::UNSUPPORTED_VERSION, 0));
        assert_eq!(resp.api_keys.len(), SUPPORTED.len());
        let (resp, v) = answer_api_versions(3);
        assert_eq!((resp.error_code, v), (code::NONE, 3));
    }

    #[test]
    fn transaction_version_2_is_not_reachable() {
        // Clients switch to KIP-890 part 2 only with Produce v12+ and
        // EndTxn v5; neither may be advertised until they are built.
        assert!(range(ApiKey::Produce).unwrap().max <= 11);
        assert!(range(ApiKey::EndTxn).unwrap().max <= 4);
    }
}
