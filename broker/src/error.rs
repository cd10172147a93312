//! Broker errors. Each maps to one stable [`ErrorCode`]; they become wire
//! responses only at the service edge.

use ferry_proto::ErrorCode;
use ferry_proto::batch::BatchError;
use ferry_storage::StorageError;

/// Everything that can go wrong handling a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The topic or partition does not exist.
    #[error("unknown topic or partition: {topic}/{partition}")]
    UnknownTopicOrPartition {
        /// Topic name.
        topic: String,
        /// Partition, if one was named.
        partition: u32,
    },
    /// The topic does not exist.
    #[error("unknown topic: {0}")]
    UnknownTopic(String),
    /// Creating a topic that exists.
    #[error("topic {0} already exists")]
    TopicAlreadyExists(String),
    /// The name breaks the naming rules.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopic {
        /// The name given.
        name: String,
        /// Which rule it breaks.
        reason: crate::names::NameError,
    },
    /// The group name breaks the naming rules.
    #[error("invalid group name {name:?}: {reason}")]
    InvalidGroup {
        /// The name given.
        name: String,
        /// Which rule it breaks.
        reason: crate::names::NameError,
    },
    /// Partition count out of range.
    #[error("invalid partition count {count}: must be in 1..={max}")]
    InvalidPartitions {
        /// Count requested.
        count: u32,
        /// Largest allowed.
        max: u32,
    },
    /// Too many topics.
    #[error("the broker already hosts its maximum of {0} topics")]
    TooManyTopics(usize),
    /// The batch failed validation.
    #[error("corrupt batch: {0}")]
    CorruptBatch(#[from] BatchError),
    /// The batch exceeds the broker's batch limit.
    #[error("batch of {size} bytes exceeds the limit of {max}")]
    BatchTooLarge {
        /// Size received.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// A request field is malformed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The idempotent-producer check refused the batch.
    #[error(transparent)]
    Sequence(#[from] crate::producer_state::SeqError),
    /// The partition tracks as many producer ids as it may.
    #[error(
        "the partition already tracks its maximum of {max} producer ids; retry after idle ones expire"
    )]
    ProducerQuota {
        /// The limit.
        max: usize,
    },
    /// The request is not legal in the transaction's current state.
    #[error("invalid transaction state: {0}")]
    InvalidTxnState(String),
    /// A newer producer with the same transactional id took over.
    #[error("producer of {transactional_id:?} with epoch {epoch} was fenced by epoch {current}")]
    ProducerFenced {
        /// The transactional id.
        transactional_id: String,
        /// Epoch of the request.
        epoch: i16,
        /// Current epoch.
        current: i16,
    },
    /// A transactional request with an epoch that is not the current one.
    #[error("producer epoch {epoch} is not the transaction's current epoch {current}")]
    InvalidEpoch {
        /// Epoch of the request.
        epoch: i16,
        /// Current epoch.
        current: i16,
    },
    /// Another operation on the transaction is still completing.
    #[error("transaction of {0:?} is completing; retry")]
    ConcurrentTransactions(String),
    /// A transactional append to a partition not added to the transaction.
    #[error(
        "{topic}/{partition} is not part of an open transaction of producer {producer_id}; call AddPartitionsToTxn first"
    )]
    NotInTransaction {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Producer id.
        producer_id: i64,
    },
    /// A failpoint fired (feature `failpoints`, tests only). Never
    /// produced without that feature.
    #[doc(hidden)]
    #[error("injected failure at {0}")]
    Injected(&'static str),
    /// A consumer-group request was refused.
    #[error(transparent)]
    Group(#[from] crate::group::GroupError),
    /// The log refused the operation.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// No ACL allows what the caller asked.
    #[error("not authorized: {0}")]
    Unauthorized(#[from] crate::auth::acl::Denied),
    /// The broker is stopping.
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// Bad configuration.
    #[error("configuration error: {0}")]
    Config(String),
    /// A record without a key, produced to a compacted topic: the cleaner
    /// could never replace it.
    #[error("{topic}/{partition} is compacted (cleanup.policy=compact): every record needs a key")]
    KeyRequired {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
    },
    /// A topic setting was refused.
    #[error(transparent)]
    TopicConfig(#[from] crate::TopicConfigError),
    /// An I/O error outside any log (metadata files, sockets).
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or address involved.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl BrokerError {
    /// The stable wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            BrokerError::UnknownTopicOrPartition { .. } | BrokerError::UnknownTopic(_) => {
                ErrorCode::UnknownTopicOrPartition
            }
            BrokerError::TopicAlreadyExists(_) => ErrorCode::TopicAlreadyExists,
            BrokerError::InvalidTopic { .. } | BrokerError::TooManyTopics(_) => {
                ErrorCode::InvalidTopic
            }
            BrokerError::InvalidGroup { .. } => ErrorCode::InvalidGroup,
            BrokerError::InvalidPartitions { .. } => ErrorCode::InvalidPartitions,
            BrokerError::CorruptBatch(BatchError::DecompressedTooLarge { .. }) => {
                ErrorCode::MessageTooLarge
            }
            BrokerError::CorruptBatch(_) => ErrorCode::CorruptMessage,
            BrokerError::BatchTooLarge { .. } => ErrorCode::MessageTooLarge,
            BrokerError::InvalidRequest(_) | BrokerError::Config(_) => ErrorCode::InvalidRequest,
            BrokerError::ShuttingDown => ErrorCode::BrokerShuttingDown,
            BrokerError::TopicConfig(_) => ErrorCode::InvalidConfig,
            BrokerError::KeyRequired { .. } => ErrorCode::InvalidRecord,
            BrokerError::Unauthorized(_) => ErrorCode::AuthorizationFailed,
            BrokerError::ProducerQuota { .. } => ErrorCode::ProducerIdQuotaExceeded,
            BrokerError::InvalidTxnState(_) => ErrorCode::InvalidTxnState,
            BrokerError::ProducerFenced { .. } => ErrorCode::ProducerFenced,
            BrokerError::InvalidEpoch { .. } => ErrorCode::InvalidProducerEpoch,
            BrokerError::ConcurrentTransactions(_) => ErrorCode::ConcurrentTransactions,
            BrokerError::NotInTransaction { .. } => ErrorCode::PartitionNotInTransaction,
            BrokerError::Injected(_) => ErrorCode::Unknown,
            BrokerError::Sequence(e) => match e {
                crate::producer_state::SeqError::InvalidProducerEpoch { .. } => {
                    ErrorCode::InvalidProducerEpoch
                }
                crate::producer_state::SeqError::OutOfOrderSequence { .. } => {
                    ErrorCode::OutOfOrderSequence
                }
                crate::producer_state::SeqError::UnknownProducerId { .. } => {
                    ErrorCode::UnknownProducerId
                }
            },
            BrokerError::Group(e) => {
                use crate::group::GroupError as G;
                match e {
                    G::IllegalGeneration { .. } => ErrorCode::IllegalGeneration,
                    G::UnknownMemberId(_) => ErrorCode::UnknownMemberId,
                    G::RebalanceInProgress => ErrorCode::RebalanceInProgress,
                    G::MemberIdRequired(_) => ErrorCode::MemberIdRequired,
                    G::InconsistentGroupProtocol(_) => ErrorCode::InconsistentGroupProtocol,
                    G::GroupIdNotFound(_) => ErrorCode::GroupIdNotFound,
                    G::NonEmptyGroup(_) => ErrorCode::NonEmptyGroup,
                    G::FencedInstanceId(_) => ErrorCode::FencedInstanceId,
                    G::UnstableOffsetCommit(_) => ErrorCode::UnstableOffsetCommit,
                    G::GroupMaxSizeReached(_) => ErrorCode::GroupMaxSizeReached,
                    G::InvalidSessionTimeout { .. } => ErrorCode::InvalidSessionTimeout,
                    G::TooManyGroups(_) => ErrorCode::TooManyGroups,
                    G::InvalidRequest(_) => ErrorCode::InvalidRequest,
                }
            }
            BrokerError::Io { .. } => ErrorCode::Unknown,
            BrokerError::Storage(e) => match e {
                StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
                StorageError::BatchTooLarge { .. } => ErrorCode::MessageTooLarge,
                StorageError::Closed => ErrorCode::BrokerShuttingDown,
                _ => ErrorCode::StorageError,
            },
        }
    }
}
