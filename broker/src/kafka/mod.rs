//! The Kafka front end: Kafka's wire protocol over the same broker core
//! ([`BrokerState`]) the gRPC service calls, so that unmodified Kafka
//! clients produce, consume, join groups and run transactions, and a
//! record written through either front end is read through the other.
//!
//! - `conn`: one TCP connection: framing (a 4-byte size, then the
//!   request), the request header, the version firewall, and in-order
//!   responses.
//! - `bounds`: the check every request body passes before the
//!   `kafka-protocol` crate decodes it, so no count read off the wire
//!   allocates unchecked.
//! - `versions`: the advertised API keys and versions, and ApiVersions.
//! - `errors`: Kafka's error numbers for Ferry's error codes.
//! - one module per family of requests, each turning decoded
//!   `kafka-protocol` messages into core calls and back: `metadata`
//!   (Metadata, FindCoordinator, DescribeCluster), `produce`, `fetch`
//!   (Fetch, ListOffsets, OffsetForLeaderEpoch), `groups`, `txn`, `admin`
//!   (topics and configs), `acls` (DescribeAcls, CreateAcls, DeleteAcls).
//!
//! Record batches are never decoded here: Ferry's batch format is Kafka's
//! RecordBatch v2, so a produced batch is handed to the core as it came
//! and a fetch returns the stored bytes.

mod acls;
mod admin;
mod bounds;
mod conn;
mod errors;
mod fetch;
mod frame;
mod groups;
mod metadata;
mod produce;
mod sasl;
mod txn;
mod versions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::state::BrokerState;
use conn::{Close, Ctx, Reply};

/// Default port of the Kafka listener.
pub const DEFAULT_KAFKA_PORT: u16 = 9092;
/// The broker's node id in every Kafka response: one broker, leading every
/// partition.
pub const NODE_ID: i32 = 0;
/// A connection with no request for this long is closed (Kafka's
/// `connections.max.idle.ms`).
pub const KAFKA_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Most responses one connection may have waiting to be written (produce
/// acknowledgements waiting for durability); past it the broker stops
/// reading the connection.
pub const MAX_PENDING_RESPONSES: usize = 256;
pub use bounds::MAX_ARRAY_LEN as MAX_KAFKA_ARRAY_LEN;

/// Where clients should connect, as Metadata and FindCoordinator
/// announce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Advertised {
    /// Parses `host:port`.
    pub fn parse(s: &str) -> Result<Advertised, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not host:port"))?;
        let port = port.parse().map_err(|e| format!("{s:?}: bad port: {e}"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{s:?}: empty host"));
        }
        Ok(Advertised {
            host: host.to_string(),
            port,
        })
    }
}

/// Serves Kafka clients on `listener` until the task is aborted.
/// Connections past the broker's connection limit are closed at once.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<BrokerState>,
    advertised: Advertised,
    credentials: Option<Arc<crate::auth::CredentialsStore>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let advertised = Arc::new(advertised);
    let handshake_timeout = Duration::from_millis(state.config().request_header_timeout_ms);
    let permits = Arc::new(Semaphore::new(state.config().limits.max_connections));
    loop {
        let (stream, peer, permit) =
            crate::server::accept_within_limit(&listener, &permits, "Kafka").await;
        let state = state.clone();
        let advertised = advertised.clone();
        let credentials = credentials.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let local = stream
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            // The handshake runs in the connection's own task: a slow one
            // holds up no other client.
            let (stream, certified) = match &tls {
                None => (crate::tls::Stream::Plain(stream), None),
                Some(acceptor) => {
                    match crate::tls::handshake(acceptor, stream, peer, handshake_timeout, "kafka")
                        .await
                    {
                        Some(s) => s,
                        None => return,
                    }
                }
            };
            let link = conn::Link {
                peer,
                local,
                tls: tls.is_some(),
                certified,
            };
            conn::run(stream, link, state, advertised, credentials).await;
        });
    }
}

/// Every served request but Produce (which answers later, see
/// `produce`) and Fetch (whose response is encoded around the stored
/// batches, see `fetch::encode_response`): its key, its request type, and
/// its handler. `dispatch` and
/// the fuzz entry point both expand it, so a key is served and fuzzed by
/// one line.
macro_rules! served {
    ($then:ident) => {
        $then! {
            ApiVersions: ApiVersionsRequest => metadata::api_versions,
            Metadata: MetadataRequest => metadata::metadata,
            FindCoordinator: FindCoordinatorRequest => metadata::find_coordinator,
            DescribeCluster: DescribeClusterRequest => metadata::describe_cluster,
            ListOffsets: ListOffsetsRequest => fetch::list_offsets,
            OffsetForLeaderEpoch: OffsetForLeaderEpochRequest => fetch::offset_for_leader_epoch,
            JoinGroup: JoinGroupRequest => groups::join_group,
            SyncGroup: SyncGroupRequest => groups::sync_group,
            Heartbeat: HeartbeatRequest => groups::heartbeat,
            LeaveGroup: LeaveGroupRequest => groups::leave_group,
            OffsetCommit: OffsetCommitRequest => groups::offset_commit,
            OffsetFetch: OffsetFetchRequest => groups::offset_fetch,
            ListGroups: ListGroupsRequest => groups::list_groups,
            DescribeGroups: DescribeGroupsRequest => groups::describe_groups,
            DeleteGroups: DeleteGroupsRequest => groups::delete_groups,
            InitProducerId: InitProducerIdRequest => txn::init_producer_id,
            AddPartitionsToTxn: AddPartitionsToTxnRequest => txn::add_partitions_to_txn,
            AddOffsetsToTxn: AddOffsetsToTxnRequest => txn::add_offsets_to_txn,
            TxnOffsetCommit: TxnOffsetCommitRequest => txn::txn_offset_commit,
            EndTxn: EndTxnRequest => txn::end_txn,
            ListTransactions: ListTransactionsRequest => txn::list_transactions,
            DescribeTransactions: DescribeTransactionsRequest => txn::describe_transactions,
            CreateTopics: CreateTopicsRequest => admin::create_topics,
            DeleteTopics: DeleteTopicsRequest => admin::delete_topics,
            DescribeConfigs: DescribeConfigsRequest => admin::describe_configs,
            CreatePartitions: CreatePartitionsRequest => admin::create_partitions,
            DescribeProducers: DescribeProducersRequest => admin::describe_producers,
            DescribeAcls: DescribeAclsRequest => acls::describe_acls,
            CreateAcls: CreateAclsRequest => acls::create_acls,
            DeleteAcls: DeleteAclsRequest => acls::delete_acls,
            SaslHandshake: SaslHandshakeRequest => sasl::sasl_handshake,
            SaslAuthenticate: SaslAuthenticateRequest => sasl::sasl_authenticate,
        }
    };
}

/// Decodes the body of a request the connection has admitted, hands it
/// to its handler and encodes the response.
pub(crate) async fn dispatch(
    cx: &Ctx<'_>,
    key: ApiKey,
    correlation_id: i32,
    body: Bytes,
) -> Result<Reply, Close> {
    use kafka_protocol::messages::*;
    let v = cx.version;
    macro_rules! route {
        ($($k:ident: $t:ty => $f:path),* $(,)?) => {
            match key {
                ApiKey::Produce => produce::handle(cx, correlation_id, conn::decode(key, v, body)?),
                ApiKey::Fetch => {
                    let resp = fetch::fetch(cx, conn::decode(key, v, body)?).await;
                    fetch::encode_response(correlation_id, v, resp).map(Reply::Now)
                }
                $(ApiKey::$k => {
                    let resp = $f(cx, conn::decode::<$t>(key, v, body)?).await;
                    conn::encode(correlation_id, key, v, &resp).map(|b| Reply::Now(b.into()))
                })*
                other => Err(Close::Unsupported(other, v)),
            }
        };
    }
    served!(route)
}

/// What a fuzz target can reach without a broker: the checks and the
/// decode a request frame (the bytes after its 4-byte size) goes through
/// on a connection, and the validation of every record batch a Produce
/// carries. Returns why the connection would be closed, if it would.
pub fn decode_request(frame: &[u8]) -> Result<(), String> {
    use kafka_protocol::messages::*;
    let a = match conn::admit(Bytes::copy_from_slice(frame)).map_err(|e| e.to_string())? {
        conn::Admission::Fallback(_) => return Ok(()),
        conn::Admission::Admitted(a) => a,
    };
    let (key, v, body) = (a.key, a.version, a.body);
    macro_rules! decode_all {
        ($($k:ident: $t:ty => $f:path),* $(,)?) => {
            match key {
                ApiKey::Produce => {
                    let req: ProduceRequest = conn::decode(key, v, body).map_err(|e| e.to_string())?;
                    for t in &req.topic_data {
                        for p in &t.partition_data {
                            let mut rest = p.records.as_deref().unwrap_or(&[]);
                            while let Ok(batch) = ferry_proto::batch::ValidBatch::new(rest) {
                                rest = &rest[batch.bytes().len()..];
                            }
                        }
                    }
                    Ok(())
                }
                ApiKey::Fetch => conn::decode::<FetchRequest>(key, v, body).map(|_| ()).map_err(|e| e.to_string()),
                $(ApiKey::$k => conn::decode::<$t>(key, v, body).map(|_| ()).map_err(|e| e.to_string()),)*
                other => Err(Close::Unsupported(other, v).to_string()),
            }
        };
    }
    served!(decode_all)
}

/// The advertised address for a listener bound at `bound`: `configured`
/// if set, else the bound address itself.
pub(crate) fn advertised_for(
    configured: Option<&str>,
    bound: SocketAddr,
) -> Result<Advertised, String> {
    match configured {
        Some(s) => Advertised::parse(s),
        None => Ok(Advertised {
            host: bound.ip().to_string(),
            port: bound.port(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_addresses_parse_and_default_to_the_bound_one() {
        assert_eq!(
            Advertised::parse("broker.example:19092").unwrap(),
            Advertised {
                host: "broker.example".into(),
                port: 19092
            }
        );
        assert!(Advertised::parse("nohost").is_err());
        assert!(Advertised::parse(":9092").is_err());
        assert!(Advertised::parse("h:99999").is_err());
        let bound: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        assert_eq!(
            advertised_for(None, bound).unwrap(),
            Advertised {
                host: "127.0.0.1".into(),
                port: 4242
            }
        );
    }
}
