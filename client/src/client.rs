//! [`Client`]: the connection and the admin / offset RPCs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::v1::{self, ferry_client::FerryClient};
use tonic::transport::{Channel, Endpoint};

use crate::error::{ClientError, check};
use crate::{PartitionInfo, TopicSummary};

/// How long [`Client::connect`] waits for the TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest gRPC message the client sends or accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// HTTP/2 frame size. The 16 KiB default, not the flow-control window,
/// limits throughput for 64-256 KiB batches (measured with a bare stream).
pub const MAX_FRAME_BYTES: u32 = (1 << 20) - 1;

/// A connection to one broker.
///
/// Cheap to clone: clones share one tonic `Channel` (one HTTP/2
/// connection), which reconnects by itself after the broker goes away.
///
/// ```no_run
/// # async fn demo() -> Result<(), ferry_client::ClientError> {
/// let client = ferry_client::Client::connect("127.0.0.1:7400").await?;
/// client.create_topic("orders", 4).await?;
/// for topic in client.list_topics().await? {
///     println!("{} ({} partitions)", topic.name, topic.partitions);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    addr: String,
    channel: Channel,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

/// Which offset [`Client::list_offsets`] looks up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The high watermark: the offset the next record will get.
    Latest,
    /// The first offset whose batch has a timestamp at or after this many
    /// milliseconds since the Unix epoch, or the high watermark if none.
    Timestamp(i64),
}

/// A topic and the state of each of its partitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicDescription {
    /// Topic name.
    pub name: String,
    /// One entry per partition, in partition order.
    pub partitions: Vec<PartitionInfo>,
}

fn endpoint(addr: &str) -> Result<Endpoint, ClientError> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| ClientError::InvalidArgument(format!("bad broker address {addr:?}: {e}")))?;
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .max_frame_size(MAX_FRAME_BYTES)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20)))
}

impl Client {
    /// Connects to a broker at `addr` (`"127.0.0.1:7400"` or
    /// `"http://127.0.0.1:7400"`). Fails with [`ClientError::Connect`] if
    /// nothing accepts the connection within 5 s.
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        let channel = endpoint(addr)?
            .connect()
            .await
            .map_err(|e| ClientError::Connect {
                addr: addr.to_owned(),
                reason: error_chain(&e),
            })?;
        Ok(Client::from_channel(addr, channel))
    }

    /// Like [`Client::connect`], but connects on first use. Fails only if
    /// `addr` is not a valid address.
    pub fn connect_lazy(addr: &str) -> Result<Client, ClientError> {
        let channel = endpoint(addr)?.connect_lazy();
        Ok(Client::from_channel(addr, channel))
    }

    fn from_channel(addr: &str, channel: Channel) -> Client {
        Client {
            inner: Arc::new(Inner {
                addr: addr.to_owned(),
                channel,
            }),
        }
    }

    /// The generated gRPC client on this connection, with the message size
    /// limits raised to [`MAX_MESSAGE_BYTES`].
    pub fn raw(&self) -> FerryClient<Channel> {
        FerryClient::new(self.inner.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The address this client was created with.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Creates a topic with `partitions` partitions.
    pub async fn create_topic(&self, name: &str, partitions: u32) -> Result<(), ClientError> {
        let r = self
            .raw()
            .create_topic(v1::CreateTopicRequest {
                name: name.to_owned(),
                partitions,
            })
            .await?
            .into_inner();
        check(r.error_code, &r.error_message)
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let r = self
            .raw()
            .delete_topic(v1::DeleteTopicRequest {
                name: name.to_owned(),
            })
            .await?
            .into_inner();
        check(r.error_code, &r.error_message)
    }

    /// Lists every topic with its partition count.
    pub async fn list_topics(&self) -> Result<Vec<TopicSummary>, ClientError> {
        let r = self
            .raw()
            .list_topics(v1::ListTopicsRequest {})
            .await?
            .into_inner();
        check(r.error_code, &r.error_message)?;
        Ok(r.topics)
    }

    /// Describes a topic's partitions (offsets, watermarks, sizes).
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription, ClientError> {
        let r = self
            .raw()
            .describe_topic(v1::DescribeTopicRequest {
                name: name.to_owned(),
            })
            .await?
            .into_inner();
        check(r.error_code, &r.error_message)?;
        let mut partitions = r.partitions;
        partitions.sort_by_key(|p| p.partition);
        Ok(TopicDescription {
            name: if r.name.is_empty() {
                name.to_owned()
            } else {
                r.name
            },
            partitions,
        })
    }

    /// Looks up an offset of one partition.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<u64, ClientError> {
        let (spec, timestamp_ms) = match spec {
            OffsetSpec::Earliest => (v1::OffsetSpec::Earliest, 0),
            OffsetSpec::Latest => (v1::OffsetSpec::Latest, 0),
            OffsetSpec::Timestamp(ts) => (v1::OffsetSpec::ByTimestamp, ts),
        };
        let r = self
            .raw()
            .list_offsets(v1::ListOffsetsRequest {
                topic: topic.to_owned(),
                partition,
                spec: spec as i32,
                timestamp_ms,
            })
            .await?
            .into_inner();
        check(r.error_code, &r.error_message)?;
        Ok(r.offset)
    }

    /// Commits `(topic, partition, offset)` triples for `group`. By
    /// convention the committed offset is the next offset to consume.
    pub async fn commit_offsets(
        &self,
        group: &str,
        offsets: &[(String, u32, u64)],
    ) -> Result<(), ClientError> {
        let r = self
            .raw()
            .commit_offsets(v1::CommitOffsetsRequest {
                group: group.to_owned(),
                offsets: partition_offsets(offsets),
                ..Default::default()
            })
            .await?
            .into_inner();
        check(r.error_code, &r.error_message)
    }

    /// The offsets `group` committed for `topic`, by partition. Partitions
    /// without a committed offset are absent.
    pub async fn fetch_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<HashMap<u32, u64>, ClientError> {
        let r = self
            .raw()
            .fetch_offsets(v1::FetchOffsetsRequest {
                group: group.to_owned(),
                topic: topic.to_owned(),
                ..Default::default()
            })
            .await?
            .into_inner();
        check(r.error_code, &r.error_message)?;
        Ok(r.offsets
            .into_iter()
            .filter(|o| o.topic.is_empty() || o.topic == topic)
            .map(|o| (o.partition, o.offset))
            .collect())
    }
}

/// An error and its sources, joined, because tonic's transport error says
/// only "transport error" at the top level.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// `(topic, partition, offset)` triples as the protocol's offset list.
pub(crate) fn partition_offsets(offsets: &[(String, u32, u64)]) -> Vec<v1::PartitionOffset> {
    offsets
        .iter()
        .map(|(topic, partition, offset)| v1::PartitionOffset {
            topic: topic.clone(),
            partition: *partition,
            offset: *offset,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_without_a_scheme_get_http() {
        let e = endpoint("127.0.0.1:7400").unwrap();
        assert_eq!(e.uri().to_string(), "http://127.0.0.1:7400/");
        let e = endpoint("http://localhost:1").unwrap();
        assert_eq!(e.uri().host(), Some("localhost"));
        assert!(e.get_tcp_nodelay());
    }

    #[test]
    fn a_malformed_address_is_an_invalid_argument() {
        assert!(matches!(
            Client::connect_lazy("not a uri"),
            Err(ClientError::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn connecting_to_a_closed_port_fails_with_connect() {
        // Bind then drop a listener to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = Client::connect(&format!("127.0.0.1:{port}"))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
        assert!(err.is_retriable());
    }
}
