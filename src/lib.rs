//! Ferry: a single-node message broker with at-most-once, at-least-once
//! and exactly-once delivery.
//!
//! This crate is the `ferry` command and a facade over the workspace:
//! [`broker`] (with [`EmbeddedBroker`]), [`client`], [`proto`] and
//! [`storage`]. [`testkit`] is the fault-injection kit and history
//! checker for stress tests. [`bench`] holds the workloads and baselines
//! behind `ferry bench`. [`lab`] runs the delivery-semantics lab behind
//! `ferry lab`.

pub use ferry_broker as broker;
pub use ferry_broker::{BrokerConfig, EmbeddedBroker};
pub use ferry_client as client;
pub use ferry_proto as proto;
pub use ferry_storage as storage;

pub mod bench;
pub mod lab;
pub mod testkit;
