//! What the client's integration tests share: an embedded broker on an
//! ephemeral data dir, and a client connected to it.

use ferry_broker::{BrokerConfig, EmbeddedBroker};
use ferry_client::Client;

/// A fresh in-process broker (`BrokerConfig::ephemeral()`) and a client.
pub async fn broker() -> (EmbeddedBroker, Client) {
    let broker = EmbeddedBroker::start(BrokerConfig::ephemeral())
        .await
        .expect("broker starts");
    let client = Client::connect(&broker.addr_string())
        .await
        .expect("client connects");
    (broker, client)
}
