//! The stable error code table shared by the broker, the wire and clients.
//!
//! Numbers are part of the protocol: a code is never renumbered, and a
//! retired number is never reused. Each code says whether the failed
//! operation surely did not happen (**definite**) or may have happened
//! (**indefinite**), and whether retrying the same request is safe and
//! useful. Clients retry only where [`ErrorCode::is_retriable`] says so.

/// A stable error code. `0` means success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// Success.
    None = 0,
    /// An error the broker could not classify. Indefinite.
    Unknown = 1,
    /// A batch failed its CRC or bounds checks. Definite.
    CorruptMessage = 2,
    /// A batch is larger than the broker's batch limit. Definite.
    MessageTooLarge = 3,
    /// A request is larger than the broker's request limit. Definite.
    RequestTooLarge = 4,
    /// The topic or partition does not exist. Definite.
    UnknownTopicOrPartition = 5,
    /// A topic with that name exists already. Definite.
    TopicAlreadyExists = 6,
    /// The request is malformed or its fields are out of range. Definite.
    InvalidRequest = 7,
    /// The fetch offset is outside the log. Definite.
    OffsetOutOfRange = 8,
    /// The operation did not complete in time; it may still. Indefinite.
    RequestTimedOut = 9,
    /// The log failed (a failed flush, a full disk) and refuses writes.
    /// Indefinite: the append may have reached the page cache.
    StorageError = 10,
    /// The broker is shutting down and did not start the operation. Definite.
    BrokerShuttingDown = 11,
    /// The broker is at its connection limit. Definite.
    TooManyConnections = 12,
    /// The topic name is not allowed. Definite.
    InvalidTopic = 13,
    /// The partition count is out of range. Definite.
    InvalidPartitions = 14,
    /// The broker no longer knows the producer id (it expired). Definite.
    UnknownProducerId = 15,
    /// The batch's sequence number is not the next one expected. Definite.
    OutOfOrderSequence = 16,
    /// The batch's producer epoch is older than the current one. Definite.
    InvalidProducerEpoch = 17,
    /// A newer producer with the same transactional id fenced this one. Definite.
    ProducerFenced = 18,
    /// The request is not legal in the transaction's current state. Definite.
    InvalidTxnState = 19,
    /// The broker tracks as many producer ids as it allows. Definite.
    ProducerIdQuotaExceeded = 20,
    /// Another transaction operation for this id is still completing. Definite.
    ConcurrentTransactions = 21,
    /// The consumer group name is not allowed. Definite.
    InvalidGroup = 22,
    /// The connection failed before a response arrived. Indefinite.
    NetworkError = 23,
    /// A transactional append to a partition not added to the transaction. Definite.
    PartitionNotInTransaction = 24,
    /// The transaction ran past its timeout and was aborted. Definite.
    TransactionTimedOut = 25,
    /// The request's group generation is not the current one. Definite.
    IllegalGeneration = 26,
    /// The group does not know the member id (never joined, or removed). Definite.
    UnknownMemberId = 27,
    /// The group is rebalancing: the member must rejoin. Definite.
    RebalanceInProgress = 28,
    /// A first join: rejoin with the member id in this response (KIP-394). Definite.
    MemberIdRequired = 29,
    /// The member's protocol type or assignors share nothing with the group's. Definite.
    InconsistentGroupProtocol = 30,
    /// The group does not exist. Definite.
    GroupIdNotFound = 31,
    /// The group still has members. Definite.
    NonEmptyGroup = 32,
    /// A newer member with the same group instance id fenced this one. Definite.
    FencedInstanceId = 33,
    /// A transaction holds pending offsets for the partition. Definite.
    UnstableOffsetCommit = 34,
    /// The group has as many members as it allows. Definite.
    GroupMaxSizeReached = 35,
    /// The session timeout is outside the broker's bounds. Definite.
    InvalidSessionTimeout = 36,
    /// The broker tracks as many groups as it allows. Definite.
    TooManyGroups = 37,
    /// The request carried no credential the broker accepts (a missing or
    /// wrong bearer token). Definite, and not retried: the same request
    /// fails the same way until the client is given a valid credential.
    AuthenticationFailed = 38,
    /// The caller is authenticated but no ACL allows what it asked (or
    /// one denies it). Definite, and not retried: the same request fails
    /// the same way until an ACL changes.
    AuthorizationFailed = 39,
    /// A topic setting the broker does not have, or a value it cannot
    /// take. Definite, and not retried.
    InvalidConfig = 40,
    /// A record the topic cannot take: one without a key, produced to a
    /// compacted topic. Definite, and not retried.
    InvalidRecord = 41,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 42] = [
        ErrorCode::None,
        ErrorCode::Unknown,
        ErrorCode::CorruptMessage,
        ErrorCode::MessageTooLarge,
        ErrorCode::RequestTooLarge,
        ErrorCode::UnknownTopicOrPartition,
        ErrorCode::TopicAlreadyExists,
        ErrorCode::InvalidRequest,
        ErrorCode::OffsetOutOfRange,
        ErrorCode::RequestTimedOut,
        ErrorCode::StorageError,
        ErrorCode::BrokerShuttingDown,
        ErrorCode::TooManyConnections,
        ErrorCode::InvalidTopic,
        ErrorCode::InvalidPartitions,
        ErrorCode::UnknownProducerId,
        ErrorCode::OutOfOrderSequence,
        ErrorCode::InvalidProducerEpoch,
        ErrorCode::ProducerFenced,
        ErrorCode::InvalidTxnState,
        ErrorCode::ProducerIdQuotaExceeded,
        ErrorCode::ConcurrentTransactions,
        ErrorCode::InvalidGroup,
        ErrorCode::NetworkError,
        ErrorCode::PartitionNotInTransaction,
        ErrorCode::TransactionTimedOut,
        ErrorCode::IllegalGeneration,
        ErrorCode::UnknownMemberId,
        ErrorCode::RebalanceInProgress,
        ErrorCode::MemberIdRequired,
        ErrorCode::InconsistentGroupProtocol,
        ErrorCode::GroupIdNotFound,
        ErrorCode::NonEmptyGroup,
        ErrorCode::FencedInstanceId,
        ErrorCode::UnstableOffsetCommit,
        ErrorCode::GroupMaxSizeReached,
        ErrorCode::InvalidSessionTimeout,
        ErrorCode::TooManyGroups,
        ErrorCode::AuthenticationFailed,
        ErrorCode::AuthorizationFailed,
        ErrorCode::InvalidConfig,
        ErrorCode::InvalidRecord,
    ];

    /// The code's wire number.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// The code for a wire number; unknown numbers map to `Unknown`.
    pub fn from_u32(n: u32) -> ErrorCode {
        ErrorCode::ALL
            .get(n as usize)
            .copied()
            .unwrap_or(ErrorCode::Unknown)
    }

    /// Whether the failed operation surely did not take effect.
    pub fn is_definite(self) -> bool {
        !matches!(
            self,
            ErrorCode::Unknown
                | ErrorCode::RequestTimedOut
                | ErrorCode::StorageError
                | ErrorCode::NetworkError
        )
    }

    /// Whether resending the same request may succeed and is safe.
    ///
    /// An indefinite error is retriable: under at-least-once a retry may
    /// duplicate, which that mode allows, and under idempotence the broker
    /// recognises the retry. `StorageError` is not: the log stays failed.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::Unknown
                | ErrorCode::RequestTimedOut
                | ErrorCode::BrokerShuttingDown
                | ErrorCode::TooManyConnections
                | ErrorCode::NetworkError
                | ErrorCode::ConcurrentTransactions
                | ErrorCode::UnstableOffsetCommit
        )
    }

    /// A stable snake_case name, for logs, JSON and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::None => "none",
            ErrorCode::Unknown => "unknown",
            ErrorCode::CorruptMessage => "corrupt_message",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::RequestTooLarge => "request_too_large",
            ErrorCode::UnknownTopicOrPartition => "unknown_topic_or_partition",
            ErrorCode::TopicAlreadyExists => "topic_already_exists",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::OffsetOutOfRange => "offset_out_of_range",
            ErrorCode::RequestTimedOut => "request_timed_out",
            ErrorCode::StorageError => "storage_error",
            ErrorCode::BrokerShuttingDown => "broker_shutting_down",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::InvalidTopic => "invalid_topic",
            ErrorCode::InvalidPartitions => "invalid_partitions",
            ErrorCode::UnknownProducerId => "unknown_producer_id",
            ErrorCode::OutOfOrderSequence => "out_of_order_sequence",
            ErrorCode::InvalidProducerEpoch => "invalid_producer_epoch",
            ErrorCode::ProducerFenced => "producer_fenced",
            ErrorCode::InvalidTxnState => "invalid_txn_state",
            ErrorCode::ProducerIdQuotaExceeded => "producer_id_quota_exceeded",
            ErrorCode::ConcurrentTransactions => "concurrent_transactions",
            ErrorCode::InvalidGroup => "invalid_group",
            ErrorCode::NetworkError => "network_error",
            ErrorCode::PartitionNotInTransaction => "partition_not_in_transaction",
            ErrorCode::TransactionTimedOut => "transaction_timed_out",
            ErrorCode::IllegalGeneration => "illegal_generation",
            ErrorCode::UnknownMemberId => "unknown_member_id",
            ErrorCode::RebalanceInProgress => "rebalance_in_progress",
            ErrorCode::MemberIdRequired => "member_id_required",
            ErrorCode::InconsistentGroupProtocol => "inconsistent_group_protocol",
            ErrorCode::GroupIdNotFound => "group_id_not_found",
            ErrorCode::NonEmptyGroup => "non_empty_group",
            ErrorCode::FencedInstanceId => "fenced_instance_id",
            ErrorCode::UnstableOffsetCommit => "unstable_offset_commit",
            ErrorCode::GroupMaxSizeReached => "group_max_size_reached",
            ErrorCode::InvalidSessionTimeout => "invalid_session_timeout",
            ErrorCode::TooManyGroups => "too_many_groups",
            ErrorCode::AuthenticationFailed => "authentication_failed",
            ErrorCode::AuthorizationFailed => "authorization_failed",
            ErrorCode::InvalidConfig => "invalid_config",
            ErrorCode::InvalidRecord => "invalid_record",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_dense_and_round_trip() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(code.as_u32() as usize, i, "{code} is out of place in ALL");
            assert_eq!(ErrorCode::from_u32(code.as_u32()), *code);
        }
        assert_eq!(ErrorCode::from_u32(9999), ErrorCode::Unknown);
    }

    #[test]
    fn numbers_never_change() {
        // The wire depends on these; this test fails if someone renumbers.
        assert_eq!(ErrorCode::CorruptMessage as u32, 2);
        assert_eq!(ErrorCode::OffsetOutOfRange as u32, 8);
        assert_eq!(ErrorCode::StorageError as u32, 10);
        assert_eq!(ErrorCode::OutOfOrderSequence as u32, 16);
        assert_eq!(ErrorCode::ProducerFenced as u32, 18);
        assert_eq!(ErrorCode::TransactionTimedOut as u32, 25);
        assert_eq!(ErrorCode::IllegalGeneration as u32, 26);
        assert_eq!(ErrorCode::TooManyGroups as u32, 37);
        assert_eq!(ErrorCode::AuthenticationFailed as u32, 38);
        assert_eq!(ErrorCode::AuthorizationFailed as u32, 39);
        assert_eq!(ErrorCode::InvalidConfig as u32, 40);
        assert_eq!(ErrorCode::InvalidRecord as u32, 41);
    }

    #[test]
    fn only_indefinite_or_transient_errors_are_retried() {
        assert!(ErrorCode::RequestTimedOut.is_retriable());
        assert!(!ErrorCode::RequestTimedOut.is_definite());
        assert!(!ErrorCode::CorruptMessage.is_retriable());
        assert!(!ErrorCode::OutOfOrderSequence.is_retriable());
        assert!(!ErrorCode::StorageError.is_definite());
        assert!(!ErrorCode::StorageError.is_retriable());
    }
}
