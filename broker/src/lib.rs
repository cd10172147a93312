//! The Ferry broker: partitions over `ferry-storage` logs, the produce and
//! fetch paths, consumer groups and their offsets, transactions, limits,
//! metrics, and the gRPC service. [`BrokerState`] is the broker core every
//! front end calls; [`EmbeddedBroker`] runs one inside another process.

pub mod auth;
pub mod cleaner;
mod codec;
mod config;
mod data_dir;
mod embedded;
mod error;
mod frame_deadline;
mod group;
mod http;
mod kafka;
mod names;
mod offsets;
mod producer_ids;
mod producer_state;
pub mod quota;
mod replay;
mod restate;
mod server;
mod service;
mod state;
pub mod tls;
mod topic_config;
mod topics;
mod txn;

pub use config::{
    BrokerConfig, DEFAULT_GROUP_INITIAL_REBALANCE_DELAY_MS, DEFAULT_GROUP_MAX_SESSION_TIMEOUT_MS,
    DEFAULT_GROUP_MIN_SESSION_TIMEOUT_MS, DEFAULT_HTTP_PORT, DEFAULT_PORT, Limits,
    MAX_FETCH_WAIT_MS, MAX_PARTITIONS_PER_TOPIC, MAX_TOPICS, ProducerSettings,
};
pub use embedded::EmbeddedBroker;
pub use error::BrokerError;
pub use ferry_storage::{FlushPolicy, LogConfig};
pub use group::{
    CommitFence, Group, GroupError, GroupState, Join, JoinReply, MAX_ASSIGNMENT_BYTES,
    MAX_GROUP_MEMBERS, MAX_GROUPS, MAX_MEMBER_METADATA_BYTES, MAX_MEMBER_STRING_BYTES,
    MAX_PROTOCOLS_PER_MEMBER, MAX_REBALANCE_TIMEOUT_MS, Member, PartitionLog, ResetTo, SyncReply,
    non_empty, reset_targets,
};
pub use http::{
    HISTORY_INTERVAL, HISTORY_SAMPLES, ListenerInfo, MAX_BROWSE_RECORDS, MAX_HTTP_BODY_BYTES,
};
pub use kafka::{
    Advertised, DEFAULT_KAFKA_PORT, KAFKA_IDLE_TIMEOUT, MAX_KAFKA_ARRAY_LEN, MAX_PENDING_RESPONSES,
    NODE_ID, decode_request as decode_kafka_request,
};
pub use names::{MAX_NAME_BYTES, NameError, check_name};
pub use producer_ids::{ID_BLOCK, ProducerIds};
pub use producer_state::{
    AbortedTxn, BatchMeta, MAX_BATCHES_PER_PRODUCER, ProducerEntry, ProducerTable, SeqCheck,
    SeqError, check_sequence,
};
pub use restate::{INTERNAL_SEGMENT_BYTES, InternalLogSize};
pub use server::{Broker, Listeners, MAX_FRAME_BYTES, PeerInfo, Stop};
pub use service::{FUZZED_RPCS, FerryService, MAX_IN_FLIGHT_PER_STREAM, serve_encoded};
pub use state::{
    AckLevel, BrokerState, ConsumerLag, FetchResult, FetchSpec, InflightGuard, Isolation,
    MAX_FETCH_PARTITIONS, OffsetSpec,
};
pub use topic_config::{
    CleanupPolicy, DEFAULT_DELETE_RETENTION_MS, DEFAULT_MIN_CLEANABLE_DIRTY_RATIO,
    MAX_TOPIC_CONFIG_BYTES, MAX_TOPIC_CONFIGS, TopicConfig, TopicConfigError,
};
pub use topics::{Partition, Topic};
pub use txn::{
    DEFAULT_TXN_TIMEOUT_MS, MAX_PARTITIONS_PER_TXN, MAX_TRANSACTIONAL_IDS, MAX_TXN_TIMEOUT_MS,
    TxnMeta, TxnState,
};

/// The decoders of what the broker itself writes to disk, run on
/// arbitrary bytes: a transaction-log value, an offsets-log key (offset
/// and group records), a group metadata value, and a producer-state
/// snapshot (also with its CRC made to match, so the fuzzer gets past
/// it). For the `stored_records` fuzz target and the property test that
/// runs in every `cargo test`; none may panic. Returns how many accepted
/// the input.
#[doc(hidden)]
pub fn decode_stored(data: &[u8]) -> usize {
    let mut with_crc = data.to_vec();
    with_crc.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    [
        txn::codec::decode("fuzz", data).is_some(),
        offsets::decode_key(data).is_some(),
        offsets::decode_group_key(data).is_some(),
        group::codec::decode(data).is_some(),
        ProducerTable::decode_snapshot(data).is_some(),
        ProducerTable::decode_snapshot(&with_crc).is_some(),
    ]
    .into_iter()
    .filter(|&ok| ok)
    .count()
}

#[cfg(test)]
mod stored_tests {
    use proptest::prelude::*;

    proptest! {
        /// Every decoder of the broker's stored formats refuses arbitrary
        /// bytes without panicking.
        #[test]
        fn stored_decoders_take_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = super::decode_stored(&data);
        }
    }
}
