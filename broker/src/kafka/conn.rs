//! One Kafka connection: frames in, responses out in request order.
//!
//! A request is read (4-byte size, then at most `max_request_bytes`),
//! its key and version are checked against [`versions::SUPPORTED`], its
//! header is decoded, its body passes the bounds check (`kafka::bounds`)
//! and is decoded, and it is handled. Requests are handled
//! one at a time in arrival order, as a Kafka broker does, with one
//! exception that keeps pipelined producers fast: a produce is appended
//! at once, and only its wait for durability runs while later requests
//! are read. Responses leave in request order.
//!
//! A frame over the limit, an unknown key, an unsupported version (other
//! than ApiVersions, which gets a v0 UNSUPPORTED_VERSION answer listing
//! the ranges, KIP-511) or a body that does not decode closes this
//! connection with a log line and `ferry_kafka_closed_total{reason}`; it
//! never affects another connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::errors;
use super::frame::Frame;
use super::sasl::Sasl;
use super::versions::{self, PRODUCE_MIN_DECODED};
use super::{Advertised, KAFKA_IDLE_TIMEOUT, MAX_PENDING_RESPONSES};
use crate::auth::{CredentialsStore, Principal};
use crate::error::BrokerError;
use crate::state::BrokerState;

/// Smallest frame: API key, API version and correlation id.
const MIN_FRAME_BYTES: usize = 8;

/// A response still being computed (a produce waiting for durability);
/// `None` when no response is due.
pub(crate) type Deferred = Pin<Box<dyn Future<Output = Option<Frame>> + Send>>;

/// What handling one request produced.
pub(crate) enum Reply {
    /// The encoded response frame.
    Now(Frame),
    /// A response that completes later.
    Later(Deferred),
    /// No response (a produce with acks = 0).
    Nothing,
}

/// Why a connection is closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Close {
    #[error("frame of {0} bytes is outside [{MIN_FRAME_BYTES}, the request limit {1}]")]
    FrameSize(i64, usize),
    #[error("unknown API key {0}")]
    UnknownKey(i16),
    #[error("{0:?} v{1} is not supported")]
    Unsupported(ApiKey, i16),
    #[error(
        "Produce v{0} carries message format v0/v1, which Ferry does not store; use Produce v{PRODUCE_MIN_DECODED} or later"
    )]
    OldProduce(i16),
    #[error("{0:?} v{1} did not decode: {2}")]
    Malformed(ApiKey, i16, String),
    #[error("{0:?} v{1} refused before decoding: {2}")]
    OutOfBounds(ApiKey, i16, super::bounds::BoundsError),
    #[error("{0:?} v{1} response did not encode: {2}")]
    Encode(ApiKey, i16, String),
    #[error("a request took longer than request_header_timeout_ms ({0} ms) to arrive")]
    HeaderTimeout(u64),
    #[error("{0:?} before the connection authenticated")]
    Unauthenticated(ApiKey),
}

impl Close {
    fn reason(&self) -> &'static str {
        match self {
            Close::FrameSize(..) => "frame_size",
            Close::UnknownKey(_) => "unknown_key",
            Close::Unsupported(..) | Close::OldProduce(_) => "unsupported_version",
            Close::Malformed(..) => "malformed",
            Close::OutOfBounds(..) => "bounds",
            Close::Encode(..) => "encode",
            Close::HeaderTimeout(_) => "header_timeout",
            Close::Unauthenticated(_) => "unauthenticated",
        }
    }
}

/// What a connection is over: its two ends, and its TLS.
pub(crate) struct Link {
    pub peer: SocketAddr,
    /// The listener's own address (PLAIN only on loopback or TLS).
    pub local: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The subject of the client's verified certificate (mutual TLS).
    pub certified: Option<Principal>,
}

/// One connection's context.
pub(crate) struct Conn {
    pub state: Arc<BrokerState>,
    pub advertised: Arc<Advertised>,
    pub link: Link,
    /// With credentials, a connection without a client certificate must
    /// authenticate with SASL first.
    pub credentials: Option<Arc<CredentialsStore>>,
    pub sasl: parking_lot::Mutex<Sasl>,
    /// Until when the connection is muted: a client over its quota has
    /// its response at once, with `throttle_time_ms`, and its next
    /// request is not read before the throttle has passed.
    pub muted_until: parking_lot::Mutex<Option<tokio::time::Instant>>,
}

impl Conn {
    /// Whether a request must wait for SASL: with credentials, on a
    /// connection that no client certificate authenticated.
    pub fn needs_sasl(&self) -> bool {
        self.credentials.is_some() && self.link.certified.is_none()
    }
}

/// One request's context: the connection, the version, the client id,
/// and a count of the errors its response carries (for metrics).
pub(crate) struct Ctx<'a> {
    pub conn: &'a Conn,
    pub version: i16,
    pub client_id: String,
    errors: AtomicU32,
}

impl Ctx<'_> {
    /// The broker core.
    pub fn state(&self) -> &Arc<BrokerState> {
        &self.conn.state
    }

    /// Who the connection is, for the authorizer: the user SASL
    /// authenticated, else the subject of the client's certificate, else
    /// nobody; and the client's address.
    pub fn caller(&self) -> crate::auth::acl::Caller {
        let principal = match &*self.conn.sasl.lock() {
            super::sasl::Sasl::Done(p) => Some(p.clone()),
            _ => self.conn.link.certified.clone(),
        };
        crate::auth::acl::Caller {
            principal,
            host: Some(self.conn.link.peer.ip()),
        }
    }

    /// Whether the caller may take `action`; the refusal is a broker
    /// error whose Kafka number names the kind of resource.
    pub fn authorize(&self, action: crate::auth::actions::Action<'_>) -> Result<(), BrokerError> {
        self.state().authorize(&self.caller(), action)
    }

    /// Charges `bytes` to the caller's quota, mutes the connection for
    /// the throttle that results, and returns it as `throttle_time_ms`.
    pub fn throttle(&self, direction: crate::quota::Direction, bytes: usize) -> i32 {
        let t = self.state().charge(&self.caller(), direction, bytes);
        if t.is_zero() {
            return 0;
        }
        let until = tokio::time::Instant::now() + t;
        let mut muted = self.conn.muted_until.lock();
        *muted = Some(muted.map_or(until, |m| m.max(until)));
        i32::try_from(t.as_millis()).unwrap_or(i32::MAX)
    }

    /// Kafka's number for `e`, counted as one error of this request.
    pub fn code(&self, e: &BrokerError) -> i16 {
        self.errors.fetch_add(1, Ordering::Relaxed);
        errors::of(e)
    }

    /// Kafka's number for a result.
    pub fn code_of<T>(&self, r: &Result<T, BrokerError>) -> i16 {
        match r {
            Ok(_) => errors::code::NONE,
            Err(e) => self.code(e),
        }
    }

    /// Counts a Kafka error number decided by the front end itself.
    pub fn raw(&self, code: i16) -> i16 {
        if code != errors::code::NONE {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        code
    }
}

/// Serves one connection until the client closes it, it idles past
/// [`KAFKA_IDLE_TIMEOUT`], it sends something the broker refuses, or the
/// broker shuts down.
pub(crate) async fn run(
    stream: crate::tls::Stream,
    link: Link,
    state: Arc<BrokerState>,
    advertised: Arc<Advertised>,
    credentials: Option<Arc<CredentialsStore>>,
) {
    metrics::gauge!("ferry_kafka_connections").increment(1.0);
    let peer = link.peer;
    let (rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel::<Deferred>(MAX_PENDING_RESPONSES);
    let writer = tokio::spawn(write_loop(wr, rx));
    let max = state.config().limits.max_request_bytes;
    let conn = Conn {
        state,
        advertised,
        link,
        credentials,
        sasl: parking_lot::Mutex::new(Sasl::Start),
        muted_until: parking_lot::Mutex::new(None),
    };
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let mut buf = BytesMut::new();
    let header_timeout_ms = conn.state.config().request_header_timeout_ms;
    let header_timeout = Duration::from_millis(header_timeout_ms);
    let mut shutdown = conn.state.shutdown_signal();
    loop {
        // Between requests a connection may idle; once a request's first
        // byte is in, the rest must follow within the header timeout.
        let first = tokio::select! {
            r = tokio::time::timeout(KAFKA_IDLE_TIMEOUT, async { rd.fill_buf().await.map(|b| b.is_empty()) }) => r,
            _ = crate::state::shutdown_begun(&mut shutdown) => break,
        };
        match first {
            Err(_) => {
                tracing::debug!(%peer, "closing idle Kafka connection");
                break;
            }
            Ok(Ok(true)) => break,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "Kafka connection failed");
                break;
            }
        }
        // A throttled client's next request waits in the socket.
        let muted = conn.muted_until.lock().take();
        if let Some(until) = muted {
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                _ = crate::state::shutdown_begun(&mut shutdown) => break,
            }
        }
        let frame = tokio::select! {
            f = tokio::time::timeout(header_timeout, read_frame(&mut rd, &mut buf, max)) => f,
            _ = crate::state::shutdown_begun(&mut shutdown) => break,
        };
        let frame = match frame {
            Err(_) => {
                refuse(&peer, &Close::HeaderTimeout(header_timeout_ms));
                break;
            }
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) => break,
            Ok(Err(FrameError::Io(e))) => {
                tracing::debug!(%peer, error = %e, "Kafka connection failed");
                break;
            }
            Ok(Err(FrameError::Close(c))) => {
                refuse(&peer, &c);
                break;
            }
        };
        match handle_frame(&conn, frame).await {
            Ok(Reply::Now(b)) => {
                if tx
                    .send(Box::pin(std::future::ready(Some(b))))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Ok(Reply::Later(f)) => {
                if tx.send(f).await.is_err() {
                    break;
                }
            }
            Ok(Reply::Nothing) => {}
            Err(c) => {
                refuse(&peer, &c);
                break;
            }
        }
        // A failed authentication step was answered; the connection ends.
        if conn.sasl.lock().failed() {
            break;
        }
    }
    // Responses already due are still written, then the socket closes.
    drop(tx);
    let _ = writer.await;
    metrics::gauge!("ferry_kafka_connections").decrement(1.0);
}

fn refuse(peer: &SocketAddr, c: &Close) {
    metrics::counter!("ferry_kafka_closed_total", "reason" => c.reason()).increment(1);
    tracing::warn!(%peer, error = %c, "closing Kafka connection");
}

enum FrameError {
    Io(std::io::Error),
    Close(Close),
}

/// Reads one frame; `None` at a clean end of stream between frames.
async fn read_frame<R: AsyncReadExt + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Bytes>, FrameError> {
    let mut len = [0u8; 4];
    match rd.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(FrameError::Io(e)),
    }
    let n = i64::from(i32::from_be_bytes(len));
    if n < MIN_FRAME_BYTES as i64 || n > max as i64 {
        return Err(FrameError::Close(Close::FrameSize(n, max)));
    }
    // Read into the connection's buffer, not a fresh zeroed one: a produce
    // frame is up to a batch long, and a fresh allocation that large costs
    // a page fault and a kernel zero-fill per page. Once the previous
    // frames are dropped (their batches are copied into the log when
    // appended), `reserve` takes their space back.
    let n = n as usize;
    buf.reserve(n);
    let mut body = rd.take(n as u64);
    while buf.len() < n {
        if body.read_buf(buf).await.map_err(FrameError::Io)? == 0 {
            return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    Ok(Some(buf.split_to(n).freeze()))
}

async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Deferred>) {
    let mut pending = FuturesOrdered::new();
    let mut open = true;
    loop {
        tokio::select! {
            f = rx.recv(), if open && pending.len() < MAX_PENDING_RESPONSES => match f {
                Some(f) => pending.push_back(f),
                None => open = false,
            },
            Some(resp) = pending.next(), if !pending.is_empty() => {
                if let Some(mut frame) = resp
                    && wr.write_all_buf(&mut frame).await.is_err()
                {
                    return;
                }
            }
            else => break,
        }
    }
    let _ = wr.shutdown().await;
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

/// A request frame that passed every check before its body is decoded.
pub(crate) struct Admitted {
    pub key: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    pub header: RequestHeader,
    /// The body, after the header; it passed the bounds guard.
    pub body: Bytes,
}

/// What the checks before decoding decided.
pub(crate) enum Admission {
    /// Decode and handle it.
    Admitted(Admitted),
    /// An ApiVersions request above our maximum: this v0 answer (KIP-511).
    Fallback(Bytes),
}

/// The checks every frame passes before its body is decoded: a known
/// key, a served version (or the ApiVersions fallback), Produce v3+, a
/// header that decodes, and the bounds guard over the body. Needs no
/// broker, so the fuzz targets run it as the connection does.
pub(crate) fn admit(frame: Bytes) -> Result<Admission, Close> {
    if frame.len() < MIN_FRAME_BYTES {
        return Err(Close::FrameSize(frame.len() as i64, MIN_FRAME_BYTES));
    }
    let raw_key = be_i16(&frame, 0);
    let version = be_i16(&frame, 2);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let key = ApiKey::try_from(raw_key).map_err(|_| Close::UnknownKey(raw_key))?;
    if key == ApiKey::ApiVersions {
        let (resp, v) = versions::answer_api_versions(version);
        if v != version {
            // The header of an unknown version cannot be trusted to
            // decode; the v0 answer needs only the correlation id.
            return encode(correlation_id, key, 0, &resp).map(Admission::Fallback);
        }
    }
    if !versions::supported(key, version) {
        return Err(Close::Unsupported(key, version));
    }
    if key == ApiKey::Produce && version < PRODUCE_MIN_DECODED {
        return Err(Close::OldProduce(version));
    }
    let mut body = frame;
    let header = RequestHeader::decode(&mut body, key.request_header_version(version))
        .map_err(|e| Close::Malformed(key, version, e.to_string()))?;
    super::bounds::check_request(raw_key, version, &body)
        .map_err(|e| Close::OutOfBounds(key, version, e))?;
    Ok(Admission::Admitted(Admitted {
        key,
        version,
        correlation_id,
        header,
        body,
    }))
}

/// Decodes and handles one request frame.
async fn handle_frame(conn: &Conn, frame: Bytes) -> Result<Reply, Close> {
    let Admitted {
        key,
        version,
        correlation_id,
        header,
        body,
    } = match admit(frame)? {
        Admission::Admitted(a) => a,
        Admission::Fallback(answer) => {
            metrics::counter!("ferry_kafka_requests_total", "api" => "ApiVersions", "version" => "unsupported").increment(1);
            return Ok(Reply::Now(answer.into()));
        }
    };
    if !conn.sasl.lock().admits(conn.needs_sasl(), key) {
        return Err(Close::Unauthenticated(key));
    }
    let api = api_name(key);
    metrics::counter!("ferry_kafka_requests_total", "api" => api, "version" => version.to_string())
        .increment(1);
    let cx = Ctx {
        conn,
        version,
        client_id: header
            .client_id
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        errors: AtomicU32::new(0),
    };
    let started = Instant::now();
    let reply = super::dispatch(&cx, key, correlation_id, body).await?;
    if let Reply::Now(_) = reply {
        metrics::histogram!("ferry_kafka_request_seconds", "api" => api)
            .record(started.elapsed().as_secs_f64());
    }
    let errors = cx.errors.load(Ordering::Relaxed);
    if errors > 0 {
        metrics::counter!("ferry_kafka_request_errors_total", "api" => api)
            .increment(u64::from(errors));
    }
    Ok(reply)
}

/// Decodes a request body of type `T` at the context's version.
pub(crate) fn decode<T: Decodable>(key: ApiKey, version: i16, mut body: Bytes) -> Result<T, Close> {
    T::decode(&mut body, version).map_err(|e| Close::Malformed(key, version, e.to_string()))
}

/// Encodes a response frame: size, response header, body.
pub(crate) fn encode<R: Encodable>(
    correlation_id: i32,
    key: ApiKey,
    version: i16,
    resp: &R,
) -> Result<Bytes, Close> {
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    let header_version = key.response_header_version(version);
    // Sized up front: a fetch response carries up to its max_bytes of
    // batches, and growing the buffer by doubling would copy them again
    // at every step.
    let size = header
        .compute_size(header_version)
        .and_then(|h| Ok(h + resp.compute_size(version)?))
        .map_err(|e| Close::Encode(key, version, e.to_string()))?;
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_i32(0);
    header
        .encode(&mut buf, header_version)
        .and_then(|()| resp.encode(&mut buf, version))
        .map_err(|e| Close::Encode(key, version, e.to_string()))?;
    let n = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&n.to_be_bytes());
    Ok(buf.freeze())
}

/// The key's name, for metric labels.
pub(crate) fn api_name(key: ApiKey) -> &'static str {
    match key {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::OffsetForLeaderEpoch => "OffsetForLeaderEpoch",
        ApiKey::AddPartitionsToTxn => "AddPartitionsToTxn",
        ApiKey::AddOffsetsToTxn => "AddOffsetsToTxn",
        ApiKey::EndTxn => "EndTxn",
        ApiKey::TxnOffsetCommit => "TxnOffsetCommit",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::DescribeProducers => "DescribeProducers",
        ApiKey::DeleteGroups => "DeleteGroups",
        ApiKey::DescribeCluster => "DescribeCluster",
        ApiKey::DescribeTransactions => "DescribeTransactions",
        ApiKey::ListTransactions => "ListTransactions",
        ApiKey::SaslHandshake => "SaslHandshake",
        ApiKey::SaslAuthenticate => "SaslAuthenticate",
        _ => "other",
    }
}
