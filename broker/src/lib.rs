//! The Ferry broker: partitions over `ferry-storage` logs, the produce and
//! fetch paths, consumer-group offsets, transactions, limits, metrics, and
//! the gRPC service. [`BrokerState`] is the broker core every front end
//! calls; [`EmbeddedBroker`] runs one inside another process.

mod codec;
mod config;
mod embedded;
mod error;
mod names;
mod offsets;
mod producer_ids;
mod producer_state;
mod replay;
mod server;
mod service;
mod state;
mod topics;
mod txn;

pub use config::{
    BrokerConfig, DEFAULT_PORT, Limits, MAX_FETCH_WAIT_MS, MAX_PARTITIONS_PER_TOPIC, MAX_TOPICS,
    ProducerSettings,
};
pub use embedded::EmbeddedBroker;
pub use error::BrokerError;
pub use ferry_storage::{FlushPolicy, LogConfig};
pub use names::{MAX_NAME_BYTES, NameError, check_name};
pub use producer_ids::{ID_BLOCK, ProducerIds};
pub use producer_state::{
    AbortedTxn, BatchMeta, MAX_BATCHES_PER_PRODUCER, ProducerEntry, ProducerTable, SeqCheck,
    SeqError, check_sequence,
};
pub use server::{Broker, MAX_FRAME_BYTES, Stop};
pub use service::{FerryService, MAX_IN_FLIGHT_PER_STREAM};
pub use state::{
    AckLevel, BrokerState, FetchResult, FetchSpec, InflightGuard, Isolation, MAX_FETCH_PARTITIONS,
    OffsetSpec,
};
pub use topics::{Partition, Topic};
pub use txn::{
    DEFAULT_TXN_TIMEOUT_MS, MAX_PARTITIONS_PER_TXN, MAX_TRANSACTIONAL_IDS, MAX_TXN_TIMEOUT_MS,
    TxnMeta, TxnState,
};
