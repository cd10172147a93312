//! The Ferry broker: partitions over `ferry-storage` logs, the produce and
//! fetch paths, consumer-group offsets, limits, metrics, and the gRPC
//! service. [`EmbeddedBroker`] runs one inside another process.

mod config;
pub mod coordinator;
mod embedded;
mod error;
mod offsets;
mod producer_ids;
pub mod producer_state;
mod replay;
mod server;
mod service;
mod state;
mod topics;

pub use config::{
    BrokerConfig, DEFAULT_PORT, Limits, MAX_FETCH_WAIT_MS, MAX_NAME_BYTES,
    MAX_PARTITIONS_PER_TOPIC, MAX_TOPICS,
};
pub use embedded::EmbeddedBroker;
pub use error::{BrokerError, check_name};
pub use ferry_storage::{FlushPolicy, LogConfig};
pub use producer_ids::{ID_BLOCK, ProducerIds};
pub use server::{Broker, MAX_FRAME_BYTES, Stop};
pub use service::{FerryService, MAX_IN_FLIGHT_PER_STREAM};
pub use state::{AckLevel, BrokerState, FetchResult, FetchSpec, Isolation, MAX_FETCH_PARTITIONS};
pub use topics::{Partition, ProducerSettings, Topic, Topics};
