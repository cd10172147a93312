//! [`Client`]: the connection and the admin / offset RPCs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::v1::{self, ferry_client::FerryClient};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::error::{ClientError, check};
use crate::{GroupMetadata, GroupSummary, PartitionInfo, TopicSummary, group};

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
    token: BearerToken,
}

/// How [`Client::connect_with`] connects.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// A bearer token (from `ferry user add NAME --mechanism token`), sent
    /// in the `authorization` metadata of every request; needed by a
    /// broker started with `--credentials`.
    pub token: Option<String>,
    /// TLS: connect with it, trusting its CA, and present its client
    /// certificate when it has one (mutual TLS). Needed by a broker
    /// started with `--tls-cert`.
    pub tls: Option<ClientTls>,
}

/// Largest PEM file [`ClientTls::from_files`] reads.
pub const MAX_TLS_FILE_BYTES: u64 = 1024 * 1024;

/// The TLS settings of a connection: the CA that the broker's
/// certificate must chain to, and the client's own certificate and key
/// for mutual TLS, all PEM.
#[derive(Clone)]
pub struct ClientTls {
    /// CA certificates (PEM).
    pub ca_pem: Vec<u8>,
    /// A client certificate chain and its private key (PEM).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the broker's certificate must carry; by default the host
    /// of the broker address.
    pub domain: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClientTls")
            .field("identity", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl ClientTls {
    /// Reads the CA file, and the certificate and key files when given
    /// (both or neither).
    pub fn from_files(
        ca: &std::path::Path,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<ClientTls, ClientError> {
        let read = |p: &std::path::Path| -> Result<Vec<u8>, ClientError> {
            use std::io::Read;
            let bad = |m: String| ClientError::InvalidArgument(format!("{}: {m}", p.display()));
            let mut bytes = Vec::new();
            std::fs::File::open(p)
                .map_err(|e| bad(e.to_string()))?
                .take(MAX_TLS_FILE_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| bad(e.to_string()))?;
            if bytes.len() as u64 > MAX_TLS_FILE_BYTES {
                return Err(bad(format!("larger than {MAX_TLS_FILE_BYTES} bytes")));
            }
            Ok(bytes)
        };
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => {
                return Err(ClientError::InvalidArgument(
                    "a client certificate and its key go together".into(),
                ));
            }
        };
        Ok(ClientTls {
            ca_pem: read(ca)?,
            identity,
            domain: None,
        })
    }
}

/// Adds `authorization: Bearer TOKEN` to every request, when there is a
/// token.
#[derive(Clone, Default)]
pub struct BearerToken(Option<tonic::metadata::AsciiMetadataValue>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.write_str(if self.0.is_some() {
            "BearerToken(set)"
        } else {
            "BearerToken(none)"
        })
    }
}

impl BearerToken {
    fn new(token: Option<&str>) -> Result<BearerToken, ClientError> {
        token
            .map(|t| {
                let mut v: tonic::metadata::AsciiMetadataValue =
                    format!("Bearer {t}").parse().map_err(|_| {
                        ClientError::InvalidArgument(
                            "a token must be printable ASCII without spaces".into(),
                        )
                    })?;
                v.set_sensitive(true);
                Ok(v)
            })
            .transpose()
            .map(BearerToken)
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The generated gRPC client as [`Client::raw`] returns it: on the
/// client's connection, with its token.
pub type RawClient = FerryClient<InterceptedService<Channel, BearerToken>>;

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
    /// The offset of the first record with a timestamp at or after this
    /// many milliseconds since the Unix epoch, or the high watermark if
    /// none.
    Timestamp(i64),
}

/// A topic and the state of each of its partitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicDescription {
    /// Topic name.
    pub name: String,
    /// One entry per partition, in partition order.
    pub partitions: Vec<PartitionInfo>,
    /// The topic's effective settings, by Kafka's names.
    pub configs: std::collections::BTreeMap<String, String>,
}

/// A consumer group as [`Client::describe_group`] shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    /// Group name.
    pub group: String,
    /// `empty`, `preparing_rebalance`, `completing_rebalance` or `stable`
    /// (`dead` only in a race with a delete).
    pub state: String,
    /// The generation: 0 for a group that never completed a rebalance
    /// (such as one with committed offsets only).
    pub generation: i32,
    /// The members' protocol type (`"consumer"` for consumers); empty if
    /// no member ever joined.
    pub protocol_type: String,
    /// The assignor chosen for the current generation; empty if none.
    pub protocol: String,
    /// The leader's member id; empty without members.
    pub leader: String,
    /// The members, in the broker's order.
    pub members: Vec<GroupMember>,
}

/// One member of a consumer group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMember {
    /// The member id the broker gave it.
    pub member_id: String,
    /// Its static instance id (KIP-345); `None` for a dynamic member.
    pub instance_id: Option<String>,
    /// The client id it joined with.
    pub client_id: String,
    /// Its address as the broker saw it.
    pub host: String,
    /// Its current assignment: topics, each with its partitions, decoded
    /// from Kafka's `ConsumerProtocolAssignment`. Empty before the leader
    /// assigned anything, and when the bytes could not be decoded (then
    /// [`GroupMember::assignment_undecodable`] is set).
    pub assignment: Vec<(String, Vec<u32>)>,
    /// The member's assignment bytes were not a `ConsumerProtocolAssignment`
    /// (another protocol type, or corrupt), so `assignment` is empty.
    pub assignment_undecodable: bool,
}

fn endpoint(addr: &str, tls: Option<&ClientTls>) -> Result<Endpoint, ClientError> {
    let uri = match (addr.split_once("://"), tls) {
        (Some(("http", rest)), Some(_)) => format!("https://{rest}"),
        (Some(_), _) => addr.to_owned(),
        (None, None) => format!("http://{addr}"),
        (None, Some(_)) => format!("https://{addr}"),
    };
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|e| ClientError::InvalidArgument(format!("bad broker address {addr:?}: {e}")))?;
    if let Some(t) = tls {
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&t.ca_pem));
        if let Some((cert, key)) = &t.identity {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        if let Some(d) = &t.domain {
            config = config.domain_name(d.clone());
        }
        endpoint = endpoint.tls_config(config).map_err(|e| {
            ClientError::InvalidArgument(format!("TLS settings: {}", error_chain(&e)))
        })?;
    }
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
        Client::connect_with(addr, &ConnectOptions::default()).await
    }

    /// [`Client::connect`] with options (a bearer token, TLS).
    pub async fn connect_with(addr: &str, options: &ConnectOptions) -> Result<Client, ClientError> {
        let token = BearerToken::new(options.token.as_deref())?;
        let channel = endpoint(addr, options.tls.as_ref())?
            .connect()
            .await
            .map_err(|e| ClientError::Connect {
                addr: addr.to_owned(),
                reason: error_chain(&e),
            })?;
        Ok(Client::from_channel(addr, channel, token))
    }

    /// Like [`Client::connect`], but connects on first use. Fails only if
    /// `addr` is not a valid address.
    pub fn connect_lazy(addr: &str) -> Result<Client, ClientError> {
        let channel = endpoint(addr, None)?.connect_lazy();
        Ok(Client::from_channel(addr, channel, BearerToken::default()))
    }

    fn from_channel(addr: &str, channel: Channel, token: BearerToken) -> Client {
        Client {
            inner: Arc::new(Inner {
                addr: addr.to_owned(),
                channel,
                token,
            }),
        }
    }

    /// The generated gRPC client on this connection, with its token and
    /// the message size limits raised to [`MAX_MESSAGE_BYTES`].
    pub fn raw(&self) -> RawClient {
        FerryClient::with_interceptor(self.inner.channel.clone(), self.inner.token.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The address this client was created with.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Creates a topic with `partitions` partitions and the broker's
    /// default settings.
    pub async fn create_topic(&self, name: &str, partitions: u32) -> Result<(), ClientError> {
        self.create_topic_with_configs(name, partitions, &[]).await
    }

    /// Creates a topic with settings named as Kafka names them, for
    /// example `("cleanup.policy", "compact")`. An unknown name or a bad
    /// value fails with `InvalidConfig`, and no topic is created.
    pub async fn create_topic_with_configs(
        &self,
        name: &str,
        partitions: u32,
        configs: &[(&str, &str)],
    ) -> Result<(), ClientError> {
        let r = self
            .raw()
            .create_topic(v1::CreateTopicRequest {
                name: name.to_owned(),
                partitions,
                configs: configs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
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
            configs: r.configs.into_iter().collect(),
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

    /// Commits `offsets` as a member of its group: the commit carries the
    /// member's generation and ids, and the coordinator refuses it
    /// (`IllegalGeneration`, `UnknownMemberId`, `FencedInstanceId`) once
    /// they are stale.
    pub async fn commit_member_offsets(
        &self,
        member: &GroupMetadata,
        offsets: &[(String, u32, u64)],
    ) -> Result<(), ClientError> {
        let r = self
            .raw()
            .commit_offsets(v1::CommitOffsetsRequest {
                group: member.group.clone(),
                offsets: partition_offsets(offsets),
                generation_id: member.generation,
                member_id: member.member_id.clone(),
                group_instance_id: member.instance_id.clone().unwrap_or_default(),
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
        self.fetch_offsets_with(group, topic, false).await
    }

    /// Like [`fetch_offsets`](Self::fetch_offsets), but fails with the
    /// retriable `UnstableOffsetCommit` while an open transaction holds
    /// offsets of the group for a partition of the topic: the answer a new
    /// owner of a partition needs, since the transaction may still commit.
    pub async fn fetch_offsets_stable(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<HashMap<u32, u64>, ClientError> {
        self.fetch_offsets_with(group, topic, true).await
    }

    async fn fetch_offsets_with(
        &self,
        group: &str,
        topic: &str,
        require_stable: bool,
    ) -> Result<HashMap<u32, u64>, ClientError> {
        let r = self
            .raw()
            .fetch_offsets(v1::FetchOffsetsRequest {
                group: group.to_owned(),
                topic: topic.to_owned(),
                require_stable,
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

    /// Lists every consumer group the broker knows, by name, including
    /// groups that have only committed offsets (as `empty`, 0 members).
    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>, ClientError> {
        let r = self
            .raw()
            .list_groups(v1::ListGroupsRequest {})
            .await?
            .into_inner();
        check(r.error_code, &r.error_message)?;
        Ok(r.groups)
    }

    /// Describes a consumer group: its state, generation, protocol and
    /// members with their decoded assignments. A group with committed
    /// offsets only is `empty` with no members; an unknown group fails
    /// with [`ErrorCode::GroupIdNotFound`](ferry_proto::ErrorCode::GroupIdNotFound).
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription, ClientError> {
        let r = self
            .raw()
            .describe_group(v1::DescribeGroupRequest {
                group: group.to_owned(),
            })
            .await?
            .into_inner();
        check(r.error_code, &r.error_message)?;
        let members = r
            .members
            .into_iter()
            .map(|m| {
                let (assignment, assignment_undecodable) = match decode_assignment(&m.assignment) {
                    Some(a) => (a, false),
                    None => (Vec::new(), true),
                };
                GroupMember {
                    member_id: m.member_id,
                    instance_id: Some(m.group_instance_id).filter(|id| !id.is_empty()),
                    client_id: m.client_id,
                    host: m.host,
                    assignment,
                    assignment_undecodable,
                }
            })
            .collect();
        Ok(GroupDescription {
            group: if r.group.is_empty() {
                group.to_owned()
            } else {
                r.group
            },
            state: r.state,
            generation: r.generation_id,
            protocol_type: r.protocol_type,
            protocol: r.protocol_name,
            leader: r.leader_id,
            members,
        })
    }

    /// Deletes a consumer group: its metadata and every committed offset.
    /// Refused with [`ErrorCode::NonEmptyGroup`](ferry_proto::ErrorCode::NonEmptyGroup)
    /// while it has members; [`ErrorCode::GroupIdNotFound`](ferry_proto::ErrorCode::GroupIdNotFound)
    /// for a group with neither metadata nor offsets.
    pub async fn delete_group(&self, group: &str) -> Result<(), ClientError> {
        let r = self
            .raw()
            .delete_group(v1::DeleteGroupRequest {
                group: group.to_owned(),
            })
            .await?
            .into_inner();
        check(r.error_code, &r.error_message)
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

/// The topics and partitions of a member's assignment bytes (Kafka's
/// `ConsumerProtocolAssignment`, decoded by [`group::Assignment`]). Empty
/// bytes are a member with nothing assigned yet. `None` if the bytes are
/// not such an assignment.
fn decode_assignment(bytes: &[u8]) -> Option<Vec<(String, Vec<u32>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let assignment = group::Assignment::decode(bytes).ok()?;
    Some(
        assignment
            .assigned_partitions
            .into_iter()
            .map(|tp| (tp.topic, tp.partitions))
            .collect(),
    )
}

/// Every open or hanging transaction the coordinator knows
/// (`ListTransactions`).
pub async fn list_transactions(client: &Client) -> Result<Vec<v1::TransactionInfo>, ClientError> {
    let r = client
        .raw()
        .list_transactions(v1::ListTransactionsRequest {})
        .await?
        .into_inner();
    check(r.error_code, &r.error_message)?;
    Ok(r.transactions)
}

/// Aborts the open transaction of `transactional_id` by hand
/// (`AbortTransaction`), for a producer that is gone and left it hanging.
pub async fn abort_transaction(client: &Client, transactional_id: &str) -> Result<(), ClientError> {
    let r = client
        .raw()
        .abort_transaction(v1::AbortTransactionRequest {
            transactional_id: transactional_id.to_owned(),
        })
        .await?
        .into_inner();
    check(r.error_code, &r.error_message)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes a `ConsumerProtocolAssignment` by hand.
    fn assignment(version: i16, topics: &[(&str, &[i32])], user_data: Option<&[u8]>) -> Vec<u8> {
        let mut b = version.to_be_bytes().to_vec();
        b.extend_from_slice(&(topics.len() as i32).to_be_bytes());
        for (topic, partitions) in topics {
            b.extend_from_slice(&(topic.len() as i16).to_be_bytes());
            b.extend_from_slice(topic.as_bytes());
            b.extend_from_slice(&(partitions.len() as i32).to_be_bytes());
            for p in *partitions {
                b.extend_from_slice(&p.to_be_bytes());
            }
        }
        match user_data {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(d) => {
                b.extend_from_slice(&(d.len() as i32).to_be_bytes());
                b.extend_from_slice(d);
            }
        }
        b
    }

    #[test]
    fn an_assignment_decodes_to_its_topics_and_partitions() {
        let b = assignment(1, &[("a", &[0, 2]), ("b", &[])], Some(b"ud"));
        assert_eq!(
            decode_assignment(&b),
            Some(vec![("a".to_owned(), vec![0, 2]), ("b".to_owned(), vec![])])
        );
        let b = assignment(0, &[("t", &[5])], None);
        assert_eq!(decode_assignment(&b), Some(vec![("t".to_owned(), vec![5])]));
    }

    #[test]
    fn empty_assignment_bytes_are_an_empty_assignment() {
        assert_eq!(decode_assignment(&[]), Some(vec![]));
    }

    #[test]
    fn bytes_after_the_known_fields_are_ignored() {
        let mut b = assignment(7, &[("t", &[1])], None);
        b.extend_from_slice(b"later fields");
        assert_eq!(decode_assignment(&b), Some(vec![("t".to_owned(), vec![1])]));
    }

    #[test]
    fn every_truncation_of_an_assignment_is_refused() {
        let b = assignment(1, &[("topic", &[0, 1, 2])], Some(b"xyz"));
        for len in 1..b.len() {
            assert_eq!(decode_assignment(&b[..len]), None, "{len} bytes");
        }
    }

    #[test]
    fn huge_or_negative_counts_are_refused_without_allocating() {
        let mut b = 1i16.to_be_bytes().to_vec();
        b.extend_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(decode_assignment(&b), None);
        let mut b = 1i16.to_be_bytes().to_vec();
        b.extend_from_slice(&(-2i32).to_be_bytes());
        assert_eq!(decode_assignment(&b), None);
        // One topic whose partition count claims more than the bytes left.
        let mut b = assignment(1, &[("t", &[])], None);
        let count_at = 2 + 4 + 2 + 1;
        b[count_at..count_at + 4].copy_from_slice(&1_000_000i32.to_be_bytes());
        assert_eq!(decode_assignment(&b), None);
    }

    #[test]
    fn negative_versions_partitions_and_lengths_are_refused() {
        assert_eq!(decode_assignment(&assignment(-1, &[], None)), None);
        assert_eq!(
            decode_assignment(&assignment(1, &[("t", &[-1])], None)),
            None
        );
        let mut b = assignment(1, &[], None);
        let at = b.len() - 4;
        b[at..].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(decode_assignment(&b), None);
        let mut b = assignment(1, &[("t", &[])], None);
        b[6..8].copy_from_slice(&(-3i16).to_be_bytes());
        assert_eq!(decode_assignment(&b), None);
    }

    #[test]
    fn a_topic_name_that_is_not_utf8_is_refused() {
        let mut b = assignment(1, &[("ab", &[0])], None);
        b[8] = 0xff;
        assert_eq!(decode_assignment(&b), None);
    }

    #[test]
    fn addresses_without_a_scheme_get_http() {
        let e = endpoint("127.0.0.1:7400", None).unwrap();
        assert_eq!(e.uri().to_string(), "http://127.0.0.1:7400/");
        let e = endpoint("http://localhost:1", None).unwrap();
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
