//! `ferry broker`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use ferry_broker::{Broker, BrokerConfig, FlushPolicy, Stop};

use super::CliError;

/// Run a broker in the foreground until SIGINT or SIGTERM.
#[derive(Debug, clap::Args)]
pub struct BrokerArgs {
    /// Data directory [default: ./ferry-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on, HOST:PORT [default: 127.0.0.1:7400].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Flush policy: always (group commit), interval=MS, or never [default: always].
    #[arg(long)]
    fsync: Option<FlushPolicy>,
    /// HTTP listener for the web console (/), the admin API (/api/v1/),
    /// Prometheus metrics (/metrics) and /health: HOST:PORT, or `off`
    /// [default: 127.0.0.1:7401].
    #[arg(long, alias = "metrics-listen", value_parser = parse_listen_or_off)]
    http_listen: Option<ListenOrOff>,
    /// Kafka protocol listener, HOST:PORT, or `off` [default: 127.0.0.1:9092].
    #[arg(long, value_parser = parse_listen_or_off)]
    kafka_listen: Option<ListenOrOff>,
    /// HOST:PORT that Kafka clients are told to connect to [default: the
    /// Kafka listen address].
    #[arg(long, value_parser = parse_advertise)]
    kafka_advertise: Option<String>,
    /// Create a topic when a Kafka client's metadata request names a
    /// missing one: true or false [default: true].
    #[arg(long)]
    auto_create_topics: Option<bool>,
    /// Partitions of an automatically created topic [default: 1].
    #[arg(long)]
    default_partitions: Option<u32>,
    /// Credentials file (`ferry user add`): every gRPC request must then
    /// carry one of its bearer tokens, and every Kafka connection must
    /// authenticate with SASL.
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// Serve on non-loopback addresses although no authentication is
    /// configured: anyone who can reach the ports may do anything.
    #[arg(long)]
    allow_anonymous: bool,
    /// Milliseconds a Kafka client has from a request's first byte to its
    /// last before its connection is closed [default: 10000].
    #[arg(long)]
    request_header_timeout_ms: Option<u64>,
    /// TLS certificate chain (PEM) for the gRPC and Kafka listeners, which
    /// then speak TLS only; needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) for mutual TLS: every client must present a
    /// certificate they signed, and its subject is the client's principal.
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// ACL file: once clients authenticate, each request needs an ACL
    /// that allows it; Kafka's CreateAcls and DeleteAcls rewrite it, and
    /// SIGHUP rereads it [default: DATA_DIR/acls.toml].
    #[arg(long, value_name = "FILE")]
    acls: Option<PathBuf>,
    /// A principal (NAME or User:NAME) allowed everything whatever the
    /// ACLs say; repeatable.
    #[arg(long = "super-user", value_name = "NAME")]
    super_users: Vec<String>,
    /// A byte-rate quota, USER:KEY=BYTES_PER_SEC with KEY
    /// producer_byte_rate or consumer_byte_rate; USER * is every
    /// principal without one of its own, and callers without
    /// authentication share the quota of ANONYMOUS. Repeatable; adds to
    /// the config file's [quotas].
    #[arg(long = "quota", value_name = "USER:KEY=RATE", value_parser = parse_quota)]
    quotas: Vec<String>,
    /// TOML config file; flags override its settings.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Segment size in bytes.
    #[arg(long)]
    segment_bytes: Option<u64>,
    /// Delete old segments once a partition exceeds this many bytes.
    #[arg(long)]
    retention_bytes: Option<u64>,
    /// Delete segments whose newest record is older than this.
    #[arg(long)]
    retention_ms: Option<u64>,
    /// How often the log cleaner looks for compacted partitions to clean,
    /// in milliseconds [default: 15000].
    #[arg(long)]
    cleaner_interval_ms: Option<u64>,
    /// Most bytes per second the log cleaner reads [default: no limit].
    #[arg(long)]
    cleaner_max_bytes_per_sec: Option<u64>,
    /// Shortest session timeout a group member may ask for [default: 6000].
    #[arg(long)]
    group_min_session_timeout_ms: Option<u32>,
    /// Longest session timeout a group member may ask for [default: 1800000].
    #[arg(long)]
    group_max_session_timeout_ms: Option<u32>,
    /// How long a new group's first rebalance waits for more members [default: 3000].
    #[arg(long)]
    group_initial_rebalance_delay_ms: Option<u32>,
}

/// `--kafka-listen`, `--http-listen`: an address, or off.
#[derive(Debug, Clone, Copy)]
pub struct ListenOrOff(Option<SocketAddr>);

fn parse_listen_or_off(s: &str) -> Result<ListenOrOff, String> {
    if s == "off" {
        return Ok(ListenOrOff(None));
    }
    s.parse()
        .map(|a| ListenOrOff(Some(a)))
        .map_err(|e| format!("{e}: expected HOST:PORT (an IP address and port) or off"))
}

fn parse_quota(s: &str) -> Result<String, String> {
    ferry_broker::quota::QuotaConfig::default()
        .add_spec(s)
        .map(|()| s.to_string())
}

fn parse_advertise(s: &str) -> Result<String, String> {
    ferry_broker::Advertised::parse(s).map(|_| s.to_string())
}

pub fn run(args: BrokerArgs) -> Result<ExitCode, CliError> {
    super::init_tracing("info");
    let mut config = BrokerConfig::default();
    if let Some(path) = &args.config {
        config = config.merge_toml_file(path)?;
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.fsync {
        config.log.flush = v;
    }
    if let Some(ListenOrOff(v)) = args.http_listen {
        config.http_listen = v;
    }
    if let Some(ListenOrOff(v)) = args.kafka_listen {
        config.kafka_listen = v;
    }
    if let Some(v) = args.kafka_advertise {
        config.kafka_advertise = Some(v);
    }
    if let Some(v) = args.auto_create_topics {
        config.auto_create_topics = v;
    }
    if let Some(v) = args.credentials {
        config.credentials_file = Some(v);
    }
    if args.allow_anonymous {
        config.allow_anonymous = true;
    }
    if let Some(v) = args.request_header_timeout_ms {
        config.request_header_timeout_ms = v;
    }
    if let Some(v) = args.tls_cert {
        config.tls_cert = Some(v);
    }
    if let Some(v) = args.tls_key {
        config.tls_key = Some(v);
    }
    if let Some(v) = args.tls_client_ca {
        config.tls_client_ca = Some(v);
    }
    if let Some(v) = args.acls {
        config.acl_file = Some(v);
    }
    if !args.super_users.is_empty() {
        config.super_users = args.super_users;
    }
    for spec in &args.quotas {
        config
            .quotas
            .add_spec(spec)
            .map_err(ferry_broker::BrokerError::Config)?;
    }
    if let Some(v) = args.default_partitions {
        config.default_partitions = v;
    }
    if let Some(v) = args.segment_bytes {
        config.log.segment_bytes = v;
    }
    if let Some(v) = args.retention_bytes {
        config.log.retention_bytes = Some(v);
    }
    if let Some(v) = args.retention_ms {
        config.log.retention_ms = Some(v);
    }
    if let Some(v) = args.cleaner_interval_ms {
        config.cleaner.interval = std::time::Duration::from_millis(v);
    }
    if let Some(v) = args.cleaner_max_bytes_per_sec {
        config.cleaner.max_bytes_per_sec = Some(v);
    }
    if let Some(v) = args.group_min_session_timeout_ms {
        config.group_min_session_timeout_ms = v;
    }
    if let Some(v) = args.group_max_session_timeout_ms {
        config.group_max_session_timeout_ms = v;
    }
    if let Some(v) = args.group_initial_rebalance_delay_ms {
        config.group_initial_rebalance_delay_ms = v;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let data_dir = config.data_dir.clone();
        let flush = config.log.flush;
        let broker = tokio::task::spawn_blocking(move || Broker::open(config)).await??;
        let listeners = broker.bind().await?;
        let addr = listeners.grpc_addr()?;
        let kafka = listeners.kafka_addr();
        let http = listeners.http_addr();
        tracing::info!(%addr, kafka = ?kafka, data_dir = %data_dir.display(), fsync = %flush, "broker ready");
        let mut out = std::io::stdout().lock();
        writeln!(out, "ferry broker listening on {addr}")?;
        if let Some(k) = kafka {
            writeln!(out, "ferry broker serving Kafka clients on {k}")?;
        }
        if let Some(h) = http {
            writeln!(out, "ferry broker serving the console on http://{h}/")?;
        }
        out.flush()?;
        drop(out);
        tokio::spawn(reload_on_sighup(broker.clone()));
        broker.serve(listeners, stop_signal()).await?;
        Ok::<_, CliError>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Rereads the credentials file and the ACL file on every SIGHUP; a file
/// that does not read or check leaves what it held in force, with an
/// error logged.
async fn reload_on_sighup(broker: Broker) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: credentials and ACLs are read only at start");
        return;
    };
    while hangups.recv().await.is_some() {
        if let Some(store) = broker.credentials() {
            match store.reload() {
                Ok(()) => {
                    let users = store.current().users().count();
                    tracing::info!(path = %store.path().display(), credentials = users, "reloaded the credentials file");
                    store.warn_if_no_token();
                }
                Err(e) => {
                    tracing::error!(error = %e, "kept the credentials in force: the file did not reload")
                }
            }
        }
        let acls = broker.state().acls();
        if acls.enabled() {
            match acls.reload() {
                Ok(n) => {
                    tracing::info!(path = %acls.path().display(), acls = n, "reloaded the ACL file")
                }
                Err(e) => {
                    tracing::error!(error = %e, "kept the ACLs in force: the file did not reload")
                }
            }
        }
    }
}

async fn stop_signal() -> Stop {
    super::terminated().await;
    Stop::Graceful
}
