//! Ferry: a single-node message broker with at-most-once, at-least-once
//! and exactly-once delivery.
//!
//! This crate is the `ferry` command and a facade over the product crates:
//! [`broker`] (with [`EmbeddedBroker`]), [`client`], [`proto`] and
//! [`storage`]. The tools around the product have crates of their own:
//! `ferry-testkit` (fault proxy, crash tools, history checker, the
//! guarantee matrix), `ferry-bench` (behind `ferry bench`) and `ferry-lab`
//! (behind `ferry lab`); a test that wants the fault kit depends on
//! `ferry-testkit` alone.

pub use ferry_broker as broker;
pub use ferry_broker::{BrokerConfig, EmbeddedBroker};
pub use ferry_client as client;
pub use ferry_proto as proto;
pub use ferry_storage as storage;
