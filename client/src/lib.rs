//! Async Rust client for the Ferry broker.
//!
//! - [`Client`]: one HTTP/2 connection to a broker, cheap to clone, with the
//!   topic admin, consumer-offset and consumer-group admin calls.
//! - [`Producer`]: batches records per partition and pipelines the batches
//!   over one bidirectional `ProduceStream`, retrying what is safe to retry
//!   until the delivery timeout. Idempotent by default: producer id, epoch
//!   and per-partition sequence numbers let the broker store every batch
//!   exactly once and in order, however often it is retried.
//! - [`Consumer`]: long-polls assigned partitions, validates every batch's
//!   CRC, and commits offsets before (at-most-once) or after (at-least-once)
//!   the application processes the records. `read_committed` by default:
//!   records of open or aborted transactions are never returned.
//! - [`TransactionalProducer`]: writes to many partitions, plus consumer
//!   offsets, that commit or abort together.
//! - [`DeliveryMode`]: at-most-once, at-least-once, idempotent or
//!   exactly-once, with the producer and consumer settings of each.
//! - [`ExactlyOnce`]: the consume → process → produce → commit loop, in
//!   transactions of N records or T milliseconds.
//! - [`group`]: consumer groups' client side: the consumer protocol's
//!   subscription and assignment bytes (as Kafka's), and the `range`,
//!   `roundrobin` and `cooperative-sticky` partition assignors.
//! - [`sink`]: idempotent sinks that make at-least-once delivery apply each
//!   event once ([`DedupCache`], and with the `sqlite` feature `UniqueSink`
//!   and `UpsertSink`), and [`TransactionalSink`] for exactly-once output.
//!
//! ```
//! use std::time::Duration;
//! use ferry_client::{Client, Consumer, ConsumerConfig, Producer, ProducerConfig, StartFrom};
//! # use ferry_broker::{BrokerConfig, EmbeddedBroker};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let broker = EmbeddedBroker::start(BrokerConfig::ephemeral()).await?;
//! # let addr = broker.addr_string();
//! // `addr` is a broker's HOST:PORT, such as the default "127.0.0.1:7400".
//! let client = Client::connect(&addr).await?;
//! client.create_topic("events", 3).await?;
//!
//! let producer = Producer::new(client.clone(), ProducerConfig::default()).await?;
//! let delivery = producer.send("events", Some(b"user-1"), Some(b"hello")).await?;
//! let meta = delivery.wait().await?;
//! println!("stored at {}/{} offset {:?}", meta.topic, meta.partition, meta.offset);
//! producer.close().await?;
//!
//! let config = ConsumerConfig { start_from: StartFrom::Earliest, ..ConsumerConfig::default() };
//! let mut consumer = Consumer::new(client, config).await?;
//! consumer.subscribe("events").await?;
//! let mut read = 0;
//! // Until every partition is read to its end, not until a poll comes back empty.
//! while !consumer.at_end() {
//!     for record in consumer.poll(Duration::from_secs(1)).await? {
//!         println!("{}:{} {:?}", record.partition, record.offset, record.value);
//!         read += 1;
//!     }
//! }
//! assert_eq!(read, 1);
//! # Ok(())
//! # }
//! ```
//!
//! ## Knowing what happened
//!
//! - A [`Delivery`] resolves to the record's offset or its error:
//!   [`Delivery::wait`] waits, [`Delivery::try_result`] only looks, so an
//!   application can keep a bounded window of sends (see its example).
//! - [`Producer::flush`] fails with [`ClientError::RecordsFailed`] when any
//!   record sent since the previous flush failed, counting them: `Ok(())`
//!   means every one was acknowledged.
//! - [`Consumer::at_end`] and the [`ConsumerEvent::PartitionEof`] events of
//!   [`Consumer::poll_events`] tell "caught up" from "nothing arrived yet".

mod client;
mod consumer;
mod delivery_mode;
mod eos;
mod error;
pub mod group;
mod idempotence;
pub mod partitioner;
mod producer;
pub mod retry;
pub mod sink;
mod topic_table;
mod transactional;

pub use client::{
    BearerToken, CONNECT_TIMEOUT, Client, ClientTls, ConnectOptions, GroupDescription, GroupMember,
    MAX_FRAME_BYTES, MAX_MESSAGE_BYTES, MAX_TLS_FILE_BYTES, OffsetSpec, RawClient,
    TopicDescription, abort_transaction, list_transactions,
};
pub use consumer::{
    CommitMode, Consumer, ConsumerConfig, ConsumerEvent, ConsumerRecord, GroupMetadata,
    IsolationLevel, StartFrom,
};
pub use delivery_mode::DeliveryMode;
pub use eos::{
    Control, EosObserver, EosPoint, ExactlyOnce, ExactlyOnceConfig, Output, Step, Totals,
    TxnOutcome,
};
pub use error::ClientError;
pub use ferry_proto::batch::Compression;
pub use ferry_proto::v1::{
    GroupSummary, PartitionInfo, TopicPartition, TopicSummary, TransactionInfo,
};
pub use idempotence::MAX_IN_FLIGHT_IDEMPOTENT;
pub use producer::{Acks, Delivery, Producer, ProducerConfig, ProducerRecord, RecordMetadata};
pub use sink::{DedupCache, Sink, SinkError, TransactionalSink, Written};
#[cfg(feature = "sqlite")]
pub use sink::{UniqueSink, UpsertSink};
pub use transactional::{
    DEFAULT_TRANSACTION_TIMEOUT, TransactionalConfig, TransactionalProducer, is_fatal,
};
