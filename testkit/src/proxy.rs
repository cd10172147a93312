//! [`FaultProxy`]: a gRPC man-in-the-middle between a client and a broker
//! that injects network faults from a seeded, reproducible schedule.
//!
//! The proxy serves `ferry.v1.Ferry` on a loopback port and forwards every
//! RPC to the upstream broker. Before forwarding, it asks its [`FaultPlan`]
//! whether this request gets a [`Fault`]:
//!
//! | fault | unary RPC | one `ProduceStream` message |
//! |---|---|---|
//! | [`Fault::DropRequest`] | not forwarded; the call fails `Unavailable` | not forwarded; the stream breaks |
//! | [`Fault::DropResponse`] | forwarded and applied; the call then fails `Unavailable` (a lost ack) | forwarded; when its response comes back, the stream breaks instead |
//! | [`Fault::Delay`] | forwarded after the delay | forwarded after the delay (later messages wait too: order is kept) |
//! | [`Fault::Duplicate`] | forwarded twice; the caller sees the first answer | sent upstream twice; the second response is swallowed |
//! | [`Fault::Disconnect`] | every connection through the proxy is cut; not forwarded | same, and the stream breaks |
//!
//! # Reproducibility
//!
//! A decision depends only on the plan's seed, the rule, the RPC kind and
//! how many requests of that kind the proxy saw before (1-based `nth`), not
//! on a shared random stream. The same request sequence therefore gets the
//! same faults regardless of how other kinds of RPCs interleave with it.
//! Every injected fault is logged ([`FaultProxy::injected`]) with its kind
//! and `nth`, so a failing run can be turned into a script with
//! [`FaultPlan::at`].

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ferry_proto::v1::{self, ferry_client::FerryClient, ferry_server::Ferry};
use futures::Stream;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

/// Largest gRPC message the proxy passes, either way.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// HTTP/2 frame size on both legs (measured on these machines: the 16 KiB default is
/// the throughput limit).
pub const MAX_FRAME_BYTES: u32 = (1 << 20) - 1;
/// Buffer of the in-memory pipe between a client connection and the
/// proxy's gRPC server.
const PIPE_BYTES: usize = 1 << 20;
/// Most faults kept in the injection log; later ones are only counted.
pub const MAX_LOGGED_FAULTS: usize = 100_000;

/// One RPC of `ferry.v1.Ferry`. A `ProduceStream` counts one request per
/// streamed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RpcKind {
    /// `CreateTopic`.
    CreateTopic,
    /// `DeleteTopic`.
    DeleteTopic,
    /// `ListTopics`.
    ListTopics,
    /// `DescribeTopic`.
    DescribeTopic,
    /// Unary `Produce`.
    Produce,
    /// One message of the bidirectional `ProduceStream`.
    ProduceStream,
    /// `Fetch`.
    Fetch,
    /// `ListOffsets`.
    ListOffsets,
    /// `InitProducerId`.
    InitProducerId,
    /// `AddPartitionsToTxn`.
    AddPartitionsToTxn,
    /// `AddOffsetsToTxn`.
    AddOffsetsToTxn,
    /// `TxnOffsetCommit`.
    TxnOffsetCommit,
    /// `EndTxn`.
    EndTxn,
    /// `ListTransactions`.
    ListTransactions,
    /// `AbortTransaction`.
    AbortTransaction,
    /// `CommitOffsets`.
    CommitOffsets,
    /// `FetchOffsets`.
    FetchOffsets,
    /// `JoinGroup`.
    JoinGroup,
    /// `SyncGroup`.
    SyncGroup,
    /// `Heartbeat`.
    Heartbeat,
    /// `LeaveGroup`.
    LeaveGroup,
    /// `ListGroups`.
    ListGroups,
    /// `DescribeGroup`.
    DescribeGroup,
    /// `DeleteGroup`.
    DeleteGroup,
}

impl RpcKind {
    /// Every kind, in declaration order.
    pub const ALL: [RpcKind; 24] = [
        RpcKind::CreateTopic,
        RpcKind::DeleteTopic,
        RpcKind::ListTopics,
        RpcKind::DescribeTopic,
        RpcKind::Produce,
        RpcKind::ProduceStream,
        RpcKind::Fetch,
        RpcKind::ListOffsets,
        RpcKind::InitProducerId,
        RpcKind::AddPartitionsToTxn,
        RpcKind::AddOffsetsToTxn,
        RpcKind::TxnOffsetCommit,
        RpcKind::EndTxn,
        RpcKind::ListTransactions,
        RpcKind::AbortTransaction,
        RpcKind::CommitOffsets,
        RpcKind::FetchOffsets,
        RpcKind::JoinGroup,
        RpcKind::SyncGroup,
        RpcKind::Heartbeat,
        RpcKind::LeaveGroup,
        RpcKind::ListGroups,
        RpcKind::DescribeGroup,
        RpcKind::DeleteGroup,
    ];

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// A set of [`RpcKind`]s a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Targets(u32);

impl Targets {
    /// Every RPC.
    pub const ALL: Targets = Targets(u32::MAX);
    /// Produce requests, unary or streamed.
    pub const PRODUCE: Targets =
        Targets((1 << RpcKind::Produce as u32) | (1 << RpcKind::ProduceStream as u32));
    /// `Fetch`.
    pub const FETCH: Targets = Targets(1 << RpcKind::Fetch as u32);
    /// `CommitOffsets`.
    pub const COMMIT: Targets = Targets(1 << RpcKind::CommitOffsets as u32);

    /// Exactly these kinds.
    pub fn of(kinds: &[RpcKind]) -> Targets {
        Targets(kinds.iter().fold(0, |acc, k| acc | k.bit()))
    }

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: RpcKind) -> bool {
        self.0 & kind.bit() != 0
    }
}

impl From<RpcKind> for Targets {
    fn from(kind: RpcKind) -> Targets {
        Targets(kind.bit())
    }
}

/// A network fault; see the [module docs](self) for what each does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The request never reaches the broker.
    DropRequest,
    /// The broker applies the request; its answer is lost.
    DropResponse,
    /// The request is held back this long, then forwarded.
    Delay(Duration),
    /// The request reaches the broker twice.
    Duplicate,
    /// Every connection through the proxy is cut; the request is lost.
    Disconnect,
}

/// [`Fault`] without its parameters, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// [`Fault::DropRequest`].
    DropRequest,
    /// [`Fault::DropResponse`].
    DropResponse,
    /// [`Fault::Delay`].
    Delay,
    /// [`Fault::Duplicate`].
    Duplicate,
    /// [`Fault::Disconnect`].
    Disconnect,
}

impl Fault {
    /// The fault's kind.
    pub fn kind(self) -> FaultKind {
        match self {
            Fault::DropRequest => FaultKind::DropRequest,
            Fault::DropResponse => FaultKind::DropResponse,
            Fault::Delay(_) => FaultKind::Delay,
            Fault::Duplicate => FaultKind::Duplicate,
            Fault::Disconnect => FaultKind::Disconnect,
        }
    }
}

#[derive(Clone, Debug)]
enum When {
    /// Each matching request with this probability.
    Probability(f64),
    /// Only the `nth` matching request of a kind (1-based).
    Nth(u64),
}

#[derive(Clone, Debug)]
struct Rule {
    targets: Targets,
    fault: Fault,
    when: When,
}

/// The fault schedule: rules tried in order; the first that fires decides.
///
/// ```
/// use std::time::Duration;
/// use ferry_testkit::{Fault, FaultPlan, RpcKind, Targets};
///
/// // 5% of produce responses lost, the 3rd fetch delayed by 200 ms, and
/// // the 2nd commit's request dropped.
/// let plan = FaultPlan::new(42)
///     .with_probability(Targets::PRODUCE, Fault::DropResponse, 0.05)
///     .at(RpcKind::Fetch, 3, Fault::Delay(Duration::from_millis(200)))
///     .at(RpcKind::CommitOffsets, 2, Fault::DropRequest);
/// assert_eq!(plan.seed(), 42);
/// ```
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    seed: u64,
    rules: Vec<Rule>,
}

impl FaultPlan {
    /// An empty plan (no faults) whose random rules draw from `seed`.
    pub fn new(seed: u64) -> FaultPlan {
        FaultPlan {
            seed,
            rules: Vec::new(),
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Adds a rule: each request in `targets` gets `fault` with
    /// `probability` (0.0 to 1.0).
    pub fn with_probability(
        mut self,
        targets: impl Into<Targets>,
        fault: Fault,
        probability: f64,
    ) -> FaultPlan {
        self.rules.push(Rule {
            targets: targets.into(),
            fault,
            when: When::Probability(probability.clamp(0.0, 1.0)),
        });
        self
    }

    /// Adds a scripted rule: the `nth` (1-based) request of each kind in
    /// `targets` gets `fault`. "Drop the response of the 3rd streamed
    /// produce request" is `.at(RpcKind::ProduceStream, 3, Fault::DropResponse)`.
    pub fn at(mut self, targets: impl Into<Targets>, nth: u64, fault: Fault) -> FaultPlan {
        self.rules.push(Rule {
            targets: targets.into(),
            fault,
            when: When::Nth(nth),
        });
        self
    }

    /// The fault for the `nth` request of `kind`, if any. Pure: depends
    /// only on the plan and the arguments.
    pub fn decide(&self, kind: RpcKind, nth: u64) -> Option<Fault> {
        self.rules.iter().enumerate().find_map(|(i, rule)| {
            if !rule.targets.contains(kind) {
                return None;
            }
            let fires = match rule.when {
                When::Nth(n) => n == nth,
                When::Probability(p) => {
                    let draw = splitmix64(
                        self.seed ^ splitmix64(i as u64) ^ splitmix64((kind as u64) << 40 ^ nth),
                    );
                    // 53 random bits as a float in [0, 1).
                    ((draw >> 11) as f64) / ((1u64 << 53) as f64) < p
                }
            };
            fires.then_some(rule.fault)
        })
    }
}

/// SplitMix64: a fast, well-mixed hash of one u64, for stateless draws.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One fault the proxy injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InjectedFault {
    /// The RPC kind.
    pub kind: RpcKind,
    /// Which request of that kind it was (1-based).
    pub nth: u64,
    /// The fault.
    pub fault: Fault,
}

/// Counts of requests seen and faults injected, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Requests seen, per RPC kind.
    pub requests: HashMap<RpcKind, u64>,
    /// Faults injected, per RPC kind and fault kind.
    pub injected: HashMap<(RpcKind, FaultKind), u64>,
}

impl FaultStats {
    /// Faults of `fault` kind injected on any RPC.
    pub fn total(&self, fault: FaultKind) -> u64 {
        self.injected
            .iter()
            .filter(|((_, f), _)| *f == fault)
            .map(|(_, n)| n)
            .sum()
    }

    /// Faults of `fault` kind injected on RPCs in `targets`.
    pub fn on(&self, targets: impl Into<Targets>, fault: FaultKind) -> u64 {
        let targets = targets.into();
        self.injected
            .iter()
            .filter(|((k, f), _)| *f == fault && targets.contains(*k))
            .map(|(_, n)| n)
            .sum()
    }

    /// Every fault injected.
    pub fn all_faults(&self) -> u64 {
        self.injected.values().sum()
    }

    /// Requests seen of kinds in `targets`.
    pub fn requests_of(&self, targets: impl Into<Targets>) -> u64 {
        let targets = targets.into();
        self.requests
            .iter()
            .filter(|(k, _)| targets.contains(**k))
            .map(|(_, n)| n)
            .sum()
    }
}

struct Shared {
    plan: Mutex<FaultPlan>,
    enabled: AtomicBool,
    seen: Mutex<HashMap<RpcKind, u64>>,
    stats: Mutex<FaultStats>,
    log: Mutex<Vec<InjectedFault>>,
    /// Bumped to cut every connection through the proxy.
    cut: watch::Sender<u64>,
    connections: AtomicU64,
}

impl Shared {
    /// Counts the request and decides its fault.
    fn decide(&self, kind: RpcKind) -> Option<Fault> {
        let nth = {
            let mut seen = self.seen.lock();
            let n = seen.entry(kind).or_insert(0);
            *n += 1;
            *n
        };
        let fault = if self.enabled.load(Ordering::Acquire) {
            self.plan.lock().decide(kind, nth)
        } else {
            None
        };
        let mut stats = self.stats.lock();
        *stats.requests.entry(kind).or_insert(0) += 1;
        if let Some(fault) = fault {
            *stats.injected.entry((kind, fault.kind())).or_insert(0) += 1;
            let mut log = self.log.lock();
            if log.len() < MAX_LOGGED_FAULTS {
                log.push(InjectedFault { kind, nth, fault });
            }
            tracing::debug!(?kind, nth, ?fault, "injecting fault");
        }
        fault
    }

    fn cut_connections(&self) {
        self.cut.send_modify(|g| *g += 1);
    }
}

fn unavailable(what: &str) -> Status {
    Status::unavailable(format!("fault injected by the test proxy: {what}"))
}

/// A fault-injecting gRPC proxy in front of one broker.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use ferry_testkit::{Fault, FaultKind, FaultPlan, FaultProxy, Targets};
/// let plan = FaultPlan::new(7).with_probability(Targets::PRODUCE, Fault::DropResponse, 0.1);
/// let proxy = FaultProxy::start("127.0.0.1:7400", plan).await?;
/// // Point the client at proxy.addr_string() instead of the broker.
/// let client = ferry_client::Client::connect(&proxy.addr_string()).await.unwrap();
/// // ... run a workload ...
/// println!("lost acks: {}", proxy.stats().total(FaultKind::DropResponse));
/// # Ok(()) }
/// ```
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("seed", &self.shared.plan.lock().seed)
            .finish()
    }
}

impl FaultProxy {
    /// Starts a proxy on an ephemeral loopback port, forwarding to the
    /// broker at `upstream` (`host:port`; connected lazily, so the broker
    /// may be down or restarting). Runs on the current tokio runtime.
    pub async fn start(upstream: &str, plan: FaultPlan) -> std::io::Result<FaultProxy> {
        let uri = if upstream.contains("://") {
            upstream.to_owned()
        } else {
            format!("http://{upstream}")
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let channel = endpoint.max_frame_size(MAX_FRAME_BYTES).connect_lazy();
        let (cut, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            plan: Mutex::new(plan),
            enabled: AtomicBool::new(true),
            seen: Mutex::new(HashMap::new()),
            stats: Mutex::new(FaultStats::default()),
            log: Mutex::new(Vec::new()),
            cut,
            connections: AtomicU64::new(0),
        });
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let service = ProxyService {
            shared: shared.clone(),
            upstream: channel,
        };
        let server = v1::ferry_server::FerryServer::new(service)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let incoming = cuttable_incoming(listener, shared.clone());
        let task = tokio::spawn(async move {
            let r = tonic::transport::Server::builder()
                .max_frame_size(MAX_FRAME_BYTES)
                .add_service(server)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "fault proxy stopped with an error");
            }
        });
        Ok(FaultProxy {
            addr,
            shared,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address as `host:port`, as clients take it.
    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    /// Replaces the plan. Request counts (`nth`) keep running.
    pub fn set_plan(&self, plan: FaultPlan) {
        *self.shared.plan.lock() = plan;
    }

    /// Turns fault injection on or off; off, the proxy only forwards (for
    /// example during a final drain). Requests are counted either way.
    pub fn set_enabled(&self, enabled: bool) {
        self.shared.enabled.store(enabled, Ordering::Release);
    }

    /// Cuts every connection through the proxy now.
    pub fn disconnect_all(&self) {
        self.shared.cut_connections();
    }

    /// Counters of requests and injected faults so far.
    pub fn stats(&self) -> FaultStats {
        self.shared.stats.lock().clone()
    }

    /// Every injected fault so far, in order (up to [`MAX_LOGGED_FAULTS`]).
    pub fn injected(&self) -> Vec<InjectedFault> {
        self.shared.log.lock().clone()
    }

    /// Client connections accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.connections.load(Ordering::Acquire)
    }

    /// Stops serving and cuts every connection.
    pub async fn shutdown(mut self) {
        self.shared.cut_connections();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.cut_connections();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Accepts client connections and serves each through an in-memory pipe
/// pumped by a task of its own, so that cutting a connection is dropping
/// the pump: the client sees its TCP connection close and the server sees
/// the pipe end.
fn cuttable_incoming(
    listener: TcpListener,
    shared: Arc<Shared>,
) -> impl Stream<Item = std::io::Result<tokio::io::DuplexStream>> + Send {
    futures::stream::unfold((listener, shared), |(listener, shared)| async move {
        loop {
            let (mut tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "fault proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            shared.connections.fetch_add(1, Ordering::AcqRel);
            let (mut near, far) = tokio::io::duplex(PIPE_BYTES);
            let mut cut = shared.cut.subscribe();
            cut.mark_unchanged();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut tcp, &mut near) => {}
                    _ = cut.changed() => {}
                }
            });
            return Some((Ok(far), (listener, shared)));
        }
    })
}

#[derive(Clone)]
struct ProxyService {
    shared: Arc<Shared>,
    upstream: Channel,
}

type Upstream = FerryClient<Channel>;

impl ProxyService {
    fn client(&self) -> Upstream {
        FerryClient::new(self.upstream.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Forwards one unary RPC, applying the plan's fault. `call` is the
    /// generated client method for the RPC.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        kind: RpcKind,
        request: Request<Req>,
        call: F,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Clone + Send,
        F: Fn(Upstream, Req) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let req = request.into_inner();
        let upstream = self.client();
        match self.shared.decide(kind) {
            None => call(upstream, req).await,
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                call(upstream, req).await
            }
            Some(Fault::DropRequest) => Err(unavailable("request dropped")),
            Some(Fault::DropResponse) => {
                let _ = call(upstream, req).await;
                Err(unavailable(
                    "response dropped after the broker applied the request",
                ))
            }
            Some(Fault::Duplicate) => {
                let first = call(upstream.clone(), req.clone()).await;
                let _ = call(upstream, req).await;
                first
            }
            Some(Fault::Disconnect) => {
                self.shared.cut_connections();
                Err(unavailable("connection cut"))
            }
        }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<v1::ProduceResponse, Status>> + Send>>;

/// Implements `Ferry` for the proxy: every unary RPC is one line naming its
/// method, messages and [`RpcKind`]; a new RPC in the proto needs one more
/// line here (and a new `RpcKind`).
macro_rules! forward_unary {
    ($($method:ident($req:ident) -> $resp:ident as $kind:ident;)*) => {
        #[tonic::async_trait]
        impl Ferry for ProxyService {
            $(
                async fn $method(
                    &self,
                    request: Request<v1::$req>,
                ) -> Result<Response<v1::$resp>, Status> {
                    self.unary(RpcKind::$kind, request, |mut c, r| async move {
                        c.$method(r).await
                    })
                    .await
                }
            )*

            type ProduceStreamStream = ResponseStream;

            async fn produce_stream(
                &self,
                request: Request<Streaming<v1::ProduceRequest>>,
            ) -> Result<Response<ResponseStream>, Status> {
                Ok(Response::new(forward_produce_stream(
                    self.shared.clone(),
                    self.client(),
                    request.into_inner(),
                )))
            }
        }
    };
}

forward_unary! {
    create_topic(CreateTopicRequest) -> CreateTopicResponse as CreateTopic;
    delete_topic(DeleteTopicRequest) -> DeleteTopicResponse as DeleteTopic;
    list_topics(ListTopicsRequest) -> ListTopicsResponse as ListTopics;
    describe_topic(DescribeTopicRequest) -> DescribeTopicResponse as DescribeTopic;
    produce(ProduceRequest) -> ProduceResponse as Produce;
    fetch(FetchRequest) -> FetchResponse as Fetch;
    list_offsets(ListOffsetsRequest) -> ListOffsetsResponse as ListOffsets;
    init_producer_id(InitProducerIdRequest) -> InitProducerIdResponse as InitProducerId;
    add_partitions_to_txn(AddPartitionsToTxnRequest) -> AddPartitionsToTxnResponse as AddPartitionsToTxn;
    add_offsets_to_txn(AddOffsetsToTxnRequest) -> AddOffsetsToTxnResponse as AddOffsetsToTxn;
    txn_offset_commit(TxnOffsetCommitRequest) -> TxnOffsetCommitResponse as TxnOffsetCommit;
    end_txn(EndTxnRequest) -> EndTxnResponse as EndTxn;
    list_transactions(ListTransactionsRequest) -> ListTransactionsResponse as ListTransactions;
    abort_transaction(AbortTransactionRequest) -> AbortTransactionResponse as AbortTransaction;
    commit_offsets(CommitOffsetsRequest) -> CommitOffsetsResponse as CommitOffsets;
    fetch_offsets(FetchOffsetsRequest) -> FetchOffsetsResponse as FetchOffsets;
    join_group(JoinGroupRequest) -> JoinGroupResponse as JoinGroup;
    sync_group(SyncGroupRequest) -> SyncGroupResponse as SyncGroup;
    heartbeat(HeartbeatRequest) -> HeartbeatResponse as Heartbeat;
    leave_group(LeaveGroupRequest) -> LeaveGroupResponse as LeaveGroup;
    list_groups(ListGroupsRequest) -> ListGroupsResponse as ListGroups;
    describe_group(DescribeGroupRequest) -> DescribeGroupResponse as DescribeGroup;
    delete_group(DeleteGroupRequest) -> DeleteGroupResponse as DeleteGroup;
}

/// Forwards a `ProduceStream`, deciding a fault per message. Requests go
/// upstream in arrival order; responses come back in the broker's order.
fn forward_produce_stream(
    shared: Arc<Shared>,
    mut upstream: Upstream,
    mut inbound: Streaming<v1::ProduceRequest>,
) -> ResponseStream {
    let (down_tx, down_rx) = mpsc::channel::<Result<v1::ProduceResponse, Status>>(64);
    tokio::spawn(async move {
        // Unbounded: the client bounds what it has in flight, and a bounded
        // queue here could stall the loop that also drains responses.
        let (up_tx, up_rx) = mpsc::unbounded_channel::<v1::ProduceRequest>();
        let mut responses = match upstream
            .produce_stream(UnboundedReceiverStream::new(up_rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let _ = down_tx.send(Err(status)).await;
                return;
            }
        };
        let mut up_tx = Some(up_tx);
        // Responses to turn into a broken stream (lost acks).
        let mut doomed: HashSet<u64> = HashSet::new();
        // Duplicated requests: `true` once the first response went through.
        let mut duplicated: HashMap<u64, bool> = HashMap::new();
        loop {
            tokio::select! {
                msg = inbound.message(), if up_tx.is_some() => {
                    let req = match msg {
                        Ok(Some(req)) => req,
                        // The client finished sending: let responses drain.
                        Ok(None) => {
                            up_tx = None;
                            continue;
                        }
                        Err(_) => return,
                    };
                    let Some(tx) = up_tx.as_ref() else { continue };
                    let forwarded = match shared.decide(RpcKind::ProduceStream) {
                        None => tx.send(req),
                        Some(Fault::Delay(d)) => {
                            tokio::time::sleep(d).await;
                            tx.send(req)
                        }
                        Some(Fault::DropRequest) => {
                            let _ = down_tx.send(Err(unavailable("request dropped"))).await;
                            return;
                        }
                        Some(Fault::DropResponse) => {
                            doomed.insert(req.correlation_id);
                            tx.send(req)
                        }
                        Some(Fault::Duplicate) => {
                            duplicated.insert(req.correlation_id, false);
                            tx.send(req.clone()).and_then(|()| tx.send(req))
                        }
                        Some(Fault::Disconnect) => {
                            shared.cut_connections();
                            let _ = down_tx.send(Err(unavailable("connection cut"))).await;
                            return;
                        }
                    };
                    if forwarded.is_err() {
                        let _ = down_tx.send(Err(unavailable("upstream stream closed"))).await;
                        return;
                    }
                }
                resp = responses.message() => {
                    let resp = match resp {
                        Ok(Some(r)) => r,
                        Ok(None) => return,
                        Err(status) => {
                            let _ = down_tx.send(Err(status)).await;
                            return;
                        }
                    };
                    let id = resp.correlation_id;
                    if doomed.remove(&id) {
                        let _ = down_tx
                            .send(Err(unavailable("response dropped after the broker applied the request")))
                            .await;
                        return;
                    }
                    if let Some(first_passed) = duplicated.get_mut(&id) {
                        if *first_passed {
                            duplicated.remove(&id);
                            continue;
                        }
                        *first_passed = true;
                    }
                    if down_tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Box::pin(ReceiverStream::new(down_rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_decides_the_same_faults_for_the_same_seed() {
        let plan = FaultPlan::new(9).with_probability(Targets::ALL, Fault::DropRequest, 0.3);
        let a: Vec<_> = (1..200).map(|n| plan.decide(RpcKind::Fetch, n)).collect();
        let b: Vec<_> = (1..200).map(|n| plan.decide(RpcKind::Fetch, n)).collect();
        assert_eq!(a, b);
        let fired = a.iter().filter(|f| f.is_some()).count();
        assert!((30..90).contains(&fired), "about 30% fire: {fired}");
        let other = FaultPlan::new(10).with_probability(Targets::ALL, Fault::DropRequest, 0.3);
        let c: Vec<_> = (1..200).map(|n| other.decide(RpcKind::Fetch, n)).collect();
        assert_ne!(a, c, "another seed, another schedule");
    }

    #[test]
    fn a_scripted_fault_fires_on_the_nth_request_of_its_kinds_only() {
        let plan = FaultPlan::new(0).at(RpcKind::CommitOffsets, 3, Fault::DropResponse);
        assert_eq!(plan.decide(RpcKind::CommitOffsets, 2), None);
        assert_eq!(
            plan.decide(RpcKind::CommitOffsets, 3),
            Some(Fault::DropResponse)
        );
        assert_eq!(plan.decide(RpcKind::Fetch, 3), None);
    }

    #[test]
    fn targets_select_kinds() {
        assert!(Targets::PRODUCE.contains(RpcKind::Produce));
        assert!(Targets::PRODUCE.contains(RpcKind::ProduceStream));
        assert!(!Targets::PRODUCE.contains(RpcKind::Fetch));
        assert!(Targets::ALL.contains(RpcKind::FetchOffsets));
        let t = Targets::of(&[RpcKind::Fetch, RpcKind::ListOffsets]);
        assert!(t.contains(RpcKind::ListOffsets) && !t.contains(RpcKind::Produce));
    }
}
