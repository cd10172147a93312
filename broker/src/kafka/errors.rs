//! Kafka's error numbers for Ferry's stable [`ErrorCode`]s.
//!
//! [`kafka_code`] is the one place the two tables meet; its test walks
//! every Ferry code. Numbers are Kafka's (`org.apache.kafka.common.protocol.Errors`).

use ferry_proto::ErrorCode;

use crate::error::BrokerError;

/// Kafka error numbers the front end uses.
pub(crate) mod code {
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const NETWORK_EXCEPTION: i16 = 13;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const RECORD_LIST_TOO_LARGE: i16 = 18;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
    pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
    pub const ILLEGAL_SASL_STATE: i16 = 34;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_CONFIG: i16 = 40;
    pub const INVALID_RECORD: i16 = 87;
    pub const INVALID_REQUEST: i16 = 42;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const INVALID_TXN_STATE: i16 = 48;
    pub const INVALID_TRANSACTION_TIMEOUT: i16 = 50;
    pub const CONCURRENT_TRANSACTIONS: i16 = 51;
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    pub const SECURITY_DISABLED: i16 = 54;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const SASL_AUTHENTICATION_FAILED: i16 = 58;
    pub const UNKNOWN_PRODUCER_ID: i16 = 59;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub const FENCED_INSTANCE_ID: i16 = 82;
    pub const UNSTABLE_OFFSET_COMMIT: i16 = 88;
    pub const PRODUCER_FENCED: i16 = 90;
    pub const TRANSACTIONAL_ID_NOT_FOUND: i16 = 105;
}

/// Kafka's number for a Ferry error code.
///
/// `BrokerShuttingDown` becomes NOT_LEADER_OR_FOLLOWER, which every
/// Kafka client answers by refreshing metadata and retrying, as it would
/// during a leader change. Ferry codes with no Kafka counterpart (the
/// broker-wide producer-id and group quotas) become
/// UNKNOWN_SERVER_ERROR; their message says which limit was hit.
pub(crate) fn kafka_code(c: ErrorCode) -> i16 {
    use code::*;
    match c {
        ErrorCode::None => NONE,
        ErrorCode::Unknown => UNKNOWN_SERVER_ERROR,
        ErrorCode::CorruptMessage => CORRUPT_MESSAGE,
        ErrorCode::MessageTooLarge => MESSAGE_TOO_LARGE,
        ErrorCode::RequestTooLarge => RECORD_LIST_TOO_LARGE,
        ErrorCode::UnknownTopicOrPartition => UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode::TopicAlreadyExists => TOPIC_ALREADY_EXISTS,
        ErrorCode::InvalidRequest => INVALID_REQUEST,
        ErrorCode::OffsetOutOfRange => OFFSET_OUT_OF_RANGE,
        ErrorCode::RequestTimedOut => REQUEST_TIMED_OUT,
        ErrorCode::StorageError => KAFKA_STORAGE_ERROR,
        ErrorCode::BrokerShuttingDown => NOT_LEADER_OR_FOLLOWER,
        ErrorCode::TooManyConnections => NETWORK_EXCEPTION,
        ErrorCode::InvalidTopic => INVALID_TOPIC_EXCEPTION,
        ErrorCode::InvalidPartitions => INVALID_PARTITIONS,
        ErrorCode::UnknownProducerId => UNKNOWN_PRODUCER_ID,
        ErrorCode::OutOfOrderSequence => OUT_OF_ORDER_SEQUENCE_NUMBER,
        ErrorCode::InvalidProducerEpoch => INVALID_PRODUCER_EPOCH,
        ErrorCode::ProducerFenced => PRODUCER_FENCED,
        ErrorCode::InvalidTxnState => INVALID_TXN_STATE,
        ErrorCode::ProducerIdQuotaExceeded => UNKNOWN_SERVER_ERROR,
        ErrorCode::ConcurrentTransactions => CONCURRENT_TRANSACTIONS,
        ErrorCode::InvalidGroup => INVALID_GROUP_ID,
        ErrorCode::NetworkError => NETWORK_EXCEPTION,
        // KIP-890 part 1: a transactional write to an unregistered
        // partition is an invalid transaction state.
        ErrorCode::PartitionNotInTransaction => INVALID_TXN_STATE,
        // The coordinator aborted the transaction and bumped the epoch:
        // the producer's requests now carry a stale epoch, which Kafka
        // clients treat as an abortable error.
        ErrorCode::TransactionTimedOut => INVALID_PRODUCER_EPOCH,
        ErrorCode::IllegalGeneration => ILLEGAL_GENERATION,
        ErrorCode::UnknownMemberId => UNKNOWN_MEMBER_ID,
        ErrorCode::RebalanceInProgress => REBALANCE_IN_PROGRESS,
        ErrorCode::MemberIdRequired => MEMBER_ID_REQUIRED,
        ErrorCode::InconsistentGroupProtocol => INCONSISTENT_GROUP_PROTOCOL,
        ErrorCode::GroupIdNotFound => GROUP_ID_NOT_FOUND,
        ErrorCode::NonEmptyGroup => NON_EMPTY_GROUP,
        ErrorCode::FencedInstanceId => FENCED_INSTANCE_ID,
        ErrorCode::UnstableOffsetCommit => UNSTABLE_OFFSET_COMMIT,
        ErrorCode::GroupMaxSizeReached => GROUP_MAX_SIZE_REACHED,
        ErrorCode::InvalidSessionTimeout => INVALID_SESSION_TIMEOUT,
        ErrorCode::TooManyGroups => UNKNOWN_SERVER_ERROR,
        ErrorCode::AuthenticationFailed => SASL_AUTHENTICATION_FAILED,
        // Kafka has one number per kind of resource; [`of`] picks it from
        // the refusal. Without one, the cluster's.
        ErrorCode::AuthorizationFailed => CLUSTER_AUTHORIZATION_FAILED,
        ErrorCode::InvalidConfig => INVALID_CONFIG,
        ErrorCode::InvalidRecord => INVALID_RECORD,
    }
}

/// Kafka's number for a refusal of the authorizer: one per kind of
/// resource.
pub(crate) fn denied(d: &crate::auth::acl::Denied) -> i16 {
    use crate::auth::acl::ResourceType;
    match d.resource {
        ResourceType::Topic => code::TOPIC_AUTHORIZATION_FAILED,
        ResourceType::Group => code::GROUP_AUTHORIZATION_FAILED,
        ResourceType::TransactionalId => code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        ResourceType::Cluster => code::CLUSTER_AUTHORIZATION_FAILED,
    }
}

/// Kafka's number for a broker error.
pub(crate) fn of(e: &BrokerError) -> i16 {
    match e {
        BrokerError::Unauthorized(d) => denied(d),
        _ => kafka_code(e.code()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ferry_code_has_a_kafka_number_and_only_success_maps_to_none() {
        let mut unmapped = Vec::new();
        for c in ErrorCode::ALL {
            let k = kafka_code(c);
            if (k == code::NONE) != (c == ErrorCode::None) {
                panic!("{c} maps to {k}");
            }
            if k == code::UNKNOWN_SERVER_ERROR {
                unmapped.push(c);
            }
        }
        // Only codes Kafka has no counterpart for fall back to the
        // unknown server error; a new code must be mapped on purpose.
        assert_eq!(
            unmapped,
            [
                ErrorCode::Unknown,
                ErrorCode::ProducerIdQuotaExceeded,
                ErrorCode::TooManyGroups
            ]
        );
    }

    #[test]
    fn the_numbers_clients_act_on_are_kafkas() {
        assert_eq!(kafka_code(ErrorCode::OutOfOrderSequence), 45);
        assert_eq!(kafka_code(ErrorCode::UnknownProducerId), 59);
        assert_eq!(kafka_code(ErrorCode::MemberIdRequired), 79);
        assert_eq!(kafka_code(ErrorCode::UnstableOffsetCommit), 88);
        assert_eq!(kafka_code(ErrorCode::RebalanceInProgress), 27);
        assert_eq!(kafka_code(ErrorCode::PartitionNotInTransaction), 48);
        assert_eq!(kafka_code(ErrorCode::AuthenticationFailed), 58);
    }
}
