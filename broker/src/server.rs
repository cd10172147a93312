//! Running the broker: the gRPC server with health and reflection, the
//! connection limit, metrics, retention, and graceful shutdown.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ferry_proto::v1::ferry_server::FerryServer;
use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::Connected;

use crate::auth::grpc::GrpcAuth;
use crate::auth::{CredentialsStore, Principal};
use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::frame_deadline::Deadline;
use crate::service::FerryService;
use crate::state::BrokerState;
use crate::tls::{self, Tls};

/// HTTP/2 frame size on the server. The 16 KiB default, not the flow
/// control window, limits throughput for 64–256 KiB batches.
pub const MAX_FRAME_BYTES: u32 = (1 << 20) - 1;
/// How long graceful shutdown waits for running requests.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// How the broker should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Drain connections, flush and close every log.
    Graceful,
    /// Stop at once without flushing or checkpointing: on disk this looks
    /// like a crash, and the next open runs recovery.
    Crash,
}

/// The bound listeners of a broker: gRPC, and Kafka and HTTP unless they
/// are off.
#[derive(Debug)]
pub struct Listeners {
    /// The gRPC listener.
    pub grpc: TcpListener,
    /// The Kafka listener.
    pub kafka: Option<TcpListener>,
    /// The HTTP listener (console, admin API, metrics).
    pub http: Option<TcpListener>,
}

impl Listeners {
    /// The gRPC address.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// The Kafka address, if the Kafka listener is on.
    pub fn kafka_addr(&self) -> Option<SocketAddr> {
        self.kafka.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The HTTP address, if the HTTP listener is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// An opened broker, ready to serve.
#[derive(Debug, Clone)]
pub struct Broker {
    state: Arc<BrokerState>,
    credentials: Option<Arc<CredentialsStore>>,
    tls: Option<Tls>,
}

impl Broker {
    /// Opens and recovers the data dir. Blocking: call it off the async
    /// threads, or before serving.
    pub fn open(config: BrokerConfig) -> Result<Broker, BrokerError> {
        // Read before the data dir is touched: a bad file stops the broker
        // before it does anything.
        let credentials = match &config.credentials_file {
            Some(path) => {
                let store = CredentialsStore::load(path).map_err(|e| {
                    BrokerError::Config(format!("--credentials {}: {e}", path.display()))
                })?;
                store.warn_if_no_token();
                Some(Arc::new(store))
            }
            None => None,
        };
        let tls = tls::load(&config)?;
        Ok(Broker {
            state: Arc::new(BrokerState::open(config)?),
            credentials,
            tls,
        })
    }

    /// The credentials in force, when the broker has a credentials file:
    /// keep it to [`CredentialsStore::reload`] them while the broker
    /// serves (`ferry broker` does on SIGHUP).
    pub fn credentials(&self) -> Option<Arc<CredentialsStore>> {
        self.credentials.clone()
    }

    /// The shared state (for tests and embedding).
    pub fn state(&self) -> &Arc<BrokerState> {
        &self.state
    }

    /// Binds the configured listen addresses (gRPC, then Kafka). A busy
    /// address is an error naming the setting it came from.
    pub async fn bind(&self) -> Result<Listeners, BrokerError> {
        let config = self.state.config();
        let bind = |addr: SocketAddr, flag: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| BrokerError::Io {
                    op: flag,
                    path: addr.to_string(),
                    source,
                })
        };
        let grpc = bind(config.listen, "bind --listen").await?;
        let kafka = match config.kafka_listen {
            Some(addr) => Some(bind(addr, "bind --kafka-listen").await?),
            None => None,
        };
        let http = match config.http_listen {
            Some(addr) => Some(bind(addr, "bind --http-listen").await?),
            None => None,
        };
        Ok(Listeners { grpc, kafka, http })
    }

    /// Serves on `listener` until `stop` resolves, then stops as it says.
    pub async fn serve(
        self,
        listeners: Listeners,
        stop: impl std::future::Future<Output = Stop> + Send,
    ) -> Result<(), BrokerError> {
        let info = crate::http::ListenerInfo {
            grpc: listeners.grpc_addr().ok(),
            kafka: listeners.kafka_addr(),
            http: listeners.http_addr(),
        };
        let Listeners {
            grpc: listener,
            kafka,
            http,
        } = listeners;
        let state = self.state.clone();
        let limits = state.config().limits;
        let http = http.map(|l| {
            tracing::info!(addr = ?info.http, "serving the console, the admin API and /metrics over HTTP");
            tokio::spawn(crate::http::serve(
                l,
                state.clone(),
                self.credentials.clone(),
                info.clone(),
            ))
        });
        describe_metrics();

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<FerryServer<FerryService>>()
            .await;
        // Reflection in both versions: grpcurl and current tools speak v1;
        // grpcio-reflection, Postman, evans and older grpcurl speak v1alpha.
        // Each lists the Ferry service and the health service.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(ferry_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let auth = GrpcAuth::new(self.credentials.clone());
        let reflection_v1 = InterceptedService::new(
            reflection()
                .build_v1()
                .map_err(|e| BrokerError::Config(format!("reflection: {e}")))?,
            auth.clone(),
        );
        let reflection_v1alpha = InterceptedService::new(
            reflection()
                .build_v1alpha()
                .map_err(|e| BrokerError::Config(format!("reflection: {e}")))?,
            auth.clone(),
        );
        let ferry = InterceptedService::new(
            FerryServer::new(FerryService::new(state.clone()))
                .max_decoding_message_size(limits.max_request_bytes)
                .max_encoding_message_size(limits.max_fetch_bytes + 1024 * 1024),
            auth,
        );

        // Finish transactions that were prepared before a crash, before
        // anyone can read the partitions they touched.
        state.recover_transactions().await?;
        let retention = tokio::spawn(retention_loop(state.clone()));
        let cleaner = crate::cleaner::spawn(state.clone()).map_err(|source| BrokerError::Io {
            op: "start the log cleaner",
            path: String::new(),
            source,
        })?;
        let txn_timeouts = tokio::spawn(txn_timeout_loop(state.clone()));
        let lag = tokio::spawn(lag_metrics_loop(state.clone()));
        let group_timers = {
            let s = state.clone();
            tokio::spawn(async move { s.run_group_timers().await })
        };
        let kafka = match kafka {
            Some(l) => {
                let bound = l.local_addr().map_err(|source| BrokerError::Io {
                    op: "kafka listener address",
                    path: String::new(),
                    source,
                })?;
                let advertised =
                    crate::kafka::advertised_for(state.config().kafka_advertise.as_deref(), bound)
                        .map_err(BrokerError::Config)?;
                tracing::info!(addr = %bound, advertised = %format!("{}:{}", advertised.host, advertised.port), "serving Kafka clients");
                Some(tokio::spawn(crate::kafka::serve(
                    l,
                    state.clone(),
                    advertised,
                    self.credentials.clone(),
                    self.tls.as_ref().map(|t| t.kafka.clone()),
                )))
            }
            None => None,
        };
        let handshake_timeout = Duration::from_millis(state.config().request_header_timeout_ms);
        let incoming = limited_incoming(
            listener,
            limits.max_connections,
            self.tls.as_ref().map(|t| t.grpc.clone()),
            handshake_timeout,
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Stop>();
        let shutdown_state = state.clone();
        let signal = async move {
            let how = stop.await;
            tracing::info!(?how, "broker stopping");
            shutdown_state.begin_shutdown();
            let _ = stop_tx.send(how);
        };
        let server = tonic::transport::Server::builder()
            .max_frame_size(MAX_FRAME_BYTES)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(ferry)
            .serve_with_incoming_shutdown(incoming, signal);
        // Idle connections and long-lived streams may stay open; after the
        // stop signal, wait (bounded) only for requests being handled, then
        // close the logs regardless.
        let mut server = Box::pin(server);
        let mut stop_rx = stop_rx;
        let (how, server_done) = tokio::select! {
            r = &mut server => {
                r.map_err(|e| BrokerError::Config(format!("server: {e}")))?;
                (stop_rx.try_recv().unwrap_or(Stop::Graceful), true)
            }
            how = &mut stop_rx => (how.unwrap_or(Stop::Graceful), false),
        };
        if how == Stop::Graceful {
            let drained = tokio::time::timeout(SHUTDOWN_DRAIN, async {
                // A finished server future must not be polled again.
                tokio::select! {
                    _ = &mut server, if !server_done => {}
                    _ = state.wait_idle() => {}
                }
            })
            .await;
            if drained.is_err() {
                tracing::warn!("requests still running after the drain period; closing anyway");
            }
        }
        retention.abort();
        // The cleaner stops between partitions once shutdown has begun; a
        // cleaning under way finishes (or fails, changing nothing) first.
        state.begin_shutdown();
        let _ = tokio::task::spawn_blocking(move || cleaner.join()).await;
        txn_timeouts.abort();
        lag.abort();
        group_timers.abort();
        if let Some(k) = kafka {
            k.abort();
        }
        if let Some(h) = http {
            h.abort();
        }
        drop(server);
        match how {
            Stop::Graceful => {
                let s = state.clone();
                tokio::task::spawn_blocking(move || s.close())
                    .await
                    .map_err(|e| BrokerError::Config(format!("close: {e}")))?;
                tracing::info!("broker stopped; logs flushed and closed");
            }
            Stop::Crash => tracing::warn!("broker crashed on purpose; recovery runs on next open"),
        }
        Ok(())
    }
}

async fn retention_loop(state: Arc<BrokerState>) {
    let every = state.config().retention_check_interval;
    loop {
        tokio::time::sleep(every).await;
        let s = state.clone();
        let _ = tokio::task::spawn_blocking(move || s.apply_retention()).await;
    }
}

/// How often `ferry_consumer_lag` is brought up to date.
pub const LAG_METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// Publishes every group's lag per partition as the gauge
/// `ferry_consumer_lag{group, topic, partition}`.
async fn lag_metrics_loop(state: Arc<BrokerState>) {
    loop {
        tokio::time::sleep(LAG_METRICS_INTERVAL).await;
        if state.is_shutting_down() {
            return;
        }
        for l in state.consumer_lag() {
            metrics::gauge!(
                "ferry_consumer_lag",
                "group" => l.group,
                "topic" => l.topic,
                "partition" => l.partition.to_string()
            )
            .set(l.lag as f64);
        }
    }
}

/// How often open transactions are checked against their timeouts.
pub const TXN_TIMEOUT_CHECK: Duration = Duration::from_millis(500);

async fn txn_timeout_loop(state: Arc<BrokerState>) {
    loop {
        tokio::time::sleep(TXN_TIMEOUT_CHECK).await;
        if state.is_shutting_down() {
            return;
        }
        state.abort_expired_transactions().await;
    }
}

fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "ferry_consumer_lag",
        "Records between a group's committed offset and the partition's high watermark"
    );
    describe_counter!(
        "ferry_bytes_in_total",
        Unit::Bytes,
        "Batch bytes appended by producers"
    );
    describe_counter!(
        "ferry_bytes_out_total",
        Unit::Bytes,
        "Batch bytes returned by fetches"
    );
    describe_counter!("ferry_records_in_total", "Records appended by producers");
    describe_counter!(
        "ferry_connections_refused_total",
        "Connections closed at the connection limit"
    );
    describe_histogram!(
        "ferry_produce_latency_seconds",
        Unit::Seconds,
        "Produce: receipt to acknowledgement"
    );
    describe_histogram!(
        "ferry_fetch_latency_seconds",
        Unit::Seconds,
        "Fetch: receipt to response, long-poll included"
    );
    describe_counter!(
        "ferry_kafka_requests_total",
        "Kafka requests received, by API and version"
    );
    describe_counter!(
        "ferry_kafka_request_errors_total",
        "Error codes in Kafka responses, by API"
    );
    describe_histogram!(
        "ferry_kafka_request_seconds",
        Unit::Seconds,
        "Kafka requests: receipt to response (produce: to acknowledgement), by API"
    );
    describe_gauge!("ferry_kafka_connections", "Open Kafka connections");
    describe_counter!(
        "ferry_kafka_closed_total",
        "Kafka connections closed for a bad request, by reason"
    );
    describe_counter!(
        "ferry_auth_failures_total",
        "Requests refused for a missing, malformed or invalid credential, by listener and reason"
    );
    describe_counter!(
        "ferry_tls_handshake_failures_total",
        "TLS handshakes that failed or timed out, by listener"
    );
    describe_counter!(
        "ferry_authorization_denied_total",
        "Requests an ACL refused, by resource type and operation"
    );
    describe_counter!(
        "ferry_grpc_closed_total",
        "gRPC connections closed for an HTTP/2 frame not finished in time, by reason"
    );
    describe_counter!(
        "ferry_quota_throttled_total",
        "Requests throttled for a principal over its quota, by direction"
    );
    describe_counter!(
        "ferry_quota_throttle_milliseconds_total",
        Unit::Milliseconds,
        "Throttle time given to principals over their quotas, by direction"
    );
    describe_histogram!(
        "ferry_flush_latency_seconds",
        Unit::Seconds,
        "One log flush (msync)"
    );
}

/// Who is at the other end of a gRPC connection: its address, and the
/// principal its client certificate names (mutual TLS). The gRPC server
/// puts it in each request's extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// The subject of its verified client certificate, if it sent one.
    pub principal: Option<Principal>,
}

impl PeerInfo {
    /// The peer of a request the gRPC server received.
    pub fn of<T>(req: &tonic::Request<T>) -> Option<&PeerInfo> {
        req.extensions().get::<PeerInfo>()
    }
}

/// A connection holding one of the limited connection permits.
struct LimitedConn {
    /// The header timeout applies to every HTTP/2 frame read.
    stream: crate::frame_deadline::Deadline<tls::Stream>,
    info: PeerInfo,
    _permit: OwnedSemaphorePermit,
}

impl Connected for LimitedConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for LimitedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.stream.get_mut()).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream.get_mut()).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream.get_mut()).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.stream.get_mut()).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.get_ref().is_write_vectored()
    }
}

/// The next connection `listener` may serve, with one of `permits`, for
/// both listeners. An accept error (the peer reset, say) is logged and
/// skipped: it is not fatal to the listener. A connection past the limit
/// is closed at once, so the limit holds without queueing
/// (`ferry_connections_refused_total`). TCP_NODELAY is set: Nagle costs
/// two orders of magnitude on pipelined produce. Cancel-safe: nothing is
/// awaited between an accept and the return.
pub(crate) async fn accept_within_limit(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    name: &'static str,
) -> (tokio::net::TcpStream, SocketAddr, OwnedSemaphorePermit) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("ferry_connections_refused_total").increment(1);
            tracing::warn!(listener = name, %peer, "connection limit reached; closing new connection");
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        return (stream, peer, permit);
    }
}

/// Accepts connections through [`accept_within_limit`]. With
/// TLS, each handshake runs in its own task (bounded by `handshake_timeout`)
/// and the connection is yielded once it is done, so a slow handshake
/// delays no other client. Dropping the stream closes the listener.
fn limited_incoming(
    listener: TcpListener,
    max_connections: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handshake_timeout: Duration,
) -> impl Stream<Item = io::Result<LimitedConn>> + Send {
    let permits = Arc::new(Semaphore::new(max_connections));
    let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel::<LimitedConn>();
    let state = (listener, permits, done_tx, done_rx);
    futures::stream::unfold(state, move |(listener, permits, done_tx, mut done_rx)| {
        let tls = tls.clone();
        async move {
            loop {
                let (stream, peer, permit) = tokio::select! {
                    a = accept_within_limit(&listener, &permits, "gRPC") => a,
                    Some(conn) = done_rx.recv() => {
                        return Some((Ok(conn), (listener, permits, done_tx, done_rx)));
                    }
                };
                match &tls {
                    None => {
                        let conn = LimitedConn {
                            stream: Deadline::new(tls::Stream::Plain(stream), handshake_timeout),
                            info: PeerInfo {
                                remote: peer,
                                principal: None,
                            },
                            _permit: permit,
                        };
                        return Some((Ok(conn), (listener, permits, done_tx, done_rx)));
                    }
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        let done = done_tx.clone();
                        tokio::spawn(async move {
                            let Some((stream, principal)) =
                                tls::handshake(&acceptor, stream, peer, handshake_timeout, "grpc")
                                    .await
                            else {
                                return;
                            };
                            let _ = done.send(LimitedConn {
                                stream: Deadline::new(stream, handshake_timeout),
                                info: PeerInfo {
                                    remote: peer,
                                    principal,
                                },
                                _permit: permit,
                            });
                        });
                    }
                }
            }
        }
    })
}
