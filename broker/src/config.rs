//! Broker configuration: embedded defaults, an optional TOML file, and
//! command-line flags, in increasing order of precedence.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_storage::{FlushPolicy, LogConfig};
use serde::Deserialize;

use crate::error::BrokerError;

/// Default port of `ferry broker`.
pub const DEFAULT_PORT: u16 = 7400;
/// The HTTP listener's default port (console, admin API, metrics).
pub const DEFAULT_HTTP_PORT: u16 = 7401;
/// Largest request the broker decodes by default.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;
/// Largest batch the broker appends by default.
pub const DEFAULT_MAX_BATCH_BYTES: usize = ferry_proto::batch::MAX_BATCH_BYTES;
/// Largest fetch response by default.
pub const DEFAULT_MAX_FETCH_BYTES: usize = 16 * 1024 * 1024;
/// Most concurrent client connections by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Most partitions one topic may have.
pub const MAX_PARTITIONS_PER_TOPIC: u32 = 1024;
/// Most topics one broker hosts.
pub const MAX_TOPICS: usize = 10_000;
/// Longest a fetch may long-poll.
pub const MAX_FETCH_WAIT_MS: u32 = 30_000;

/// Limits that turn oversized or excessive requests into clear errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest gRPC request decoded; larger ones are refused unread.
    pub max_request_bytes: usize,
    /// Largest batch appended (`MessageTooLarge` above it).
    pub max_batch_bytes: usize,
    /// Largest fetch response; requests asking for more are capped.
    pub max_fetch_bytes: usize,
    /// Most concurrent connections; extra connections are closed at once.
    pub max_connections: usize,
    /// Most consumer groups (`TooManyGroups` past it); at most
    /// [`crate::MAX_GROUPS`].
    pub max_groups: usize,
    /// Most members of one group (`GroupMaxSizeReached` past it); at most
    /// [`crate::MAX_GROUP_MEMBERS`].
    pub max_members_per_group: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            max_fetch_bytes: DEFAULT_MAX_FETCH_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_groups: crate::group::MAX_GROUPS,
            max_members_per_group: crate::group::MAX_GROUP_MEMBERS,
        }
    }
}

/// Everything the broker needs to run.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where topics and internal logs live.
    pub data_dir: PathBuf,
    /// Address the gRPC server binds; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Address of the HTTP listener (the console, the admin API,
    /// `/metrics` and `/health`), or `None` for none; port 0 picks a
    /// free port.
    pub http_listen: Option<SocketAddr>,
    /// Address the Kafka listener binds, or `None` for no Kafka listener;
    /// port 0 picks a free port.
    pub kafka_listen: Option<SocketAddr>,
    /// `host:port` that Kafka Metadata and FindCoordinator announce; by
    /// default the Kafka listener's bound address.
    pub kafka_advertise: Option<String>,
    /// Whether a Kafka client's Metadata request creates a topic it names
    /// that does not exist (when the request allows it), as Kafka's
    /// `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// Partitions of an automatically created topic, and of a Kafka
    /// CreateTopics that asks for the default (Kafka's `num.partitions`).
    pub default_partitions: u32,
    /// Log settings used for every partition.
    pub log: LogConfig,
    /// Request limits.
    pub limits: Limits,
    /// How often retention and producer-id expiry run.
    pub retention_check_interval: Duration,
    /// Idempotent-producer state settings.
    pub producers: ProducerSettings,
    /// How the log cleaner of compacted topics runs.
    pub cleaner: crate::cleaner::CleanerSettings,
    /// Shortest session timeout a group member may ask for.
    pub group_min_session_timeout_ms: u32,
    /// Longest session timeout a group member may ask for.
    pub group_max_session_timeout_ms: u32,
    /// How long a new group's first rebalance waits for more members.
    pub group_initial_rebalance_delay_ms: u32,
    /// Whether the broker may listen on a non-loopback address with no
    /// authentication configured. Off by default: a broker reachable from
    /// other machines must be asked for explicitly.
    pub allow_anonymous: bool,
    /// The credentials file (`ferry user`): with it, every gRPC request
    /// must carry a bearer token it holds, and every Kafka connection must
    /// authenticate with SASL (SCRAM, or PLAIN on loopback) first.
    pub credentials_file: Option<PathBuf>,
    /// How long a Kafka client has from the first byte of a request to its
    /// last, in milliseconds; a connection that takes longer (a slowloris)
    /// is closed.
    pub request_header_timeout_ms: u64,
    /// The listeners' TLS certificate chain (PEM); with `tls_key`, the
    /// gRPC and Kafka listeners speak TLS only.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to: with
    /// it, TLS is mutual and a certificate's subject is its client's
    /// principal.
    pub tls_client_ca: Option<PathBuf>,
    /// The ACL file (`docs/security.md`); by default `acls.toml` in the
    /// data dir. Enforced only when the broker authenticates its clients.
    pub acl_file: Option<PathBuf>,
    /// Principals (`NAME` or `User:NAME`) allowed everything, whatever
    /// the ACLs say (Kafka's `super.users`).
    pub super_users: Vec<String>,
    /// Produce and fetch byte rates per principal (`docs/security.md`).
    pub quotas: crate::quota::QuotaConfig,
}

/// Longest `cleaner_interval_ms` (an hour).
pub const MAX_CLEANER_INTERVAL: Duration = Duration::from_secs(3600);

/// Default `request_header_timeout_ms`.
pub const DEFAULT_REQUEST_HEADER_TIMEOUT_MS: u64 = 10_000;
/// Largest `request_header_timeout_ms` (the idle timeout of a Kafka
/// connection, ten minutes).
pub const MAX_REQUEST_HEADER_TIMEOUT_MS: u64 = 600_000;

/// Default `group_min_session_timeout_ms` (Kafka's).
pub const DEFAULT_GROUP_MIN_SESSION_TIMEOUT_MS: u32 = 6_000;
/// Default `group_max_session_timeout_ms` (Kafka's).
pub const DEFAULT_GROUP_MAX_SESSION_TIMEOUT_MS: u32 = 1_800_000;
/// Default `group_initial_rebalance_delay_ms` (Kafka's).
pub const DEFAULT_GROUP_INITIAL_REBALANCE_DELAY_MS: u32 = 3_000;

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: PathBuf::from("ferry-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_HTTP_PORT))),
            kafka_listen: Some(SocketAddr::from((
                [127, 0, 0, 1],
                crate::kafka::DEFAULT_KAFKA_PORT,
            ))),
            kafka_advertise: None,
            auto_create_topics: true,
            default_partitions: 1,
            log: LogConfig::default(),
            limits: Limits::default(),
            retention_check_interval: Duration::from_secs(60),
            producers: ProducerSettings::default(),
            cleaner: crate::cleaner::CleanerSettings::default(),
            group_min_session_timeout_ms: DEFAULT_GROUP_MIN_SESSION_TIMEOUT_MS,
            group_max_session_timeout_ms: DEFAULT_GROUP_MAX_SESSION_TIMEOUT_MS,
            group_initial_rebalance_delay_ms: DEFAULT_GROUP_INITIAL_REBALANCE_DELAY_MS,
            allow_anonymous: false,
            credentials_file: None,
            request_header_timeout_ms: DEFAULT_REQUEST_HEADER_TIMEOUT_MS,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            acl_file: None,
            super_users: Vec::new(),
            quotas: crate::quota::QuotaConfig::default(),
        }
    }
}

impl BrokerConfig {
    /// A config for tests and embedding: loopback, ephemeral ports (gRPC
    /// and Kafka), and a
    /// data dir chosen by [`crate::EmbeddedBroker`] (a temporary one unless
    /// set). Groups rebalance at once and accept session timeouts from
    /// 100 ms, so tests are fast.
    pub fn ephemeral() -> BrokerConfig {
        BrokerConfig {
            data_dir: PathBuf::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            kafka_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            http_listen: None,
            group_min_session_timeout_ms: 100,
            group_initial_rebalance_delay_ms: 0,
            ..BrokerConfig::default()
        }
    }

    /// Same config with another data dir.
    pub fn with_data_dir(mut self, dir: impl AsRef<Path>) -> BrokerConfig {
        self.data_dir = dir.as_ref().to_path_buf();
        self
    }

    /// Same config with another flush policy.
    pub fn with_flush(mut self, flush: FlushPolicy) -> BrokerConfig {
        self.log.flush = flush;
        self
    }

    /// Applies the settings present in a TOML file on top of `self`.
    pub fn merge_toml_file(self, path: &Path) -> Result<BrokerConfig, BrokerError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            BrokerError::Config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        self.merge_toml(&text)
            .map_err(|e| BrokerError::Config(format!("{}: {e}", path.display())))
    }

    /// Applies the settings present in TOML text on top of `self`.
    pub fn merge_toml(mut self, text: &str) -> Result<BrokerConfig, String> {
        let file: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        if let Some(v) = file.data_dir {
            self.data_dir = v;
        }
        if let Some(v) = file.cleaner_interval_ms {
            self.cleaner.interval = Duration::from_millis(v);
        }
        if let Some(v) = file.cleaner_max_bytes_per_sec {
            self.cleaner.max_bytes_per_sec = Some(v);
        }
        if let Some(v) = file.cleaner_max_map_bytes {
            self.cleaner.max_map_bytes = v;
        }
        if let Some(v) = file.listen {
            self.listen = v.parse().map_err(|e| format!("listen = {v:?}: {e}"))?;
        }
        if let Some(v) = file.http_listen {
            self.http_listen = if v == "off" {
                None
            } else {
                Some(v.parse().map_err(|e| format!("http_listen = {v:?}: {e}"))?)
            };
        }
        if let Some(v) = file.kafka_listen {
            self.kafka_listen = if v == "off" {
                None
            } else {
                Some(
                    v.parse()
                        .map_err(|e| format!("kafka_listen = {v:?}: {e}"))?,
                )
            };
        }
        if let Some(v) = file.kafka_advertise {
            crate::kafka::Advertised::parse(&v).map_err(|e| format!("kafka_advertise: {e}"))?;
            self.kafka_advertise = Some(v);
        }
        if let Some(v) = file.auto_create_topics {
            self.auto_create_topics = v;
        }
        if let Some(v) = file.credentials_file {
            self.credentials_file = Some(v);
        }
        if let Some(v) = file.allow_anonymous {
            self.allow_anonymous = v;
        }
        if let Some(v) = file.request_header_timeout_ms {
            self.request_header_timeout_ms = v;
        }
        if let Some(v) = file.tls_cert {
            self.tls_cert = Some(v);
        }
        if let Some(v) = file.tls_key {
            self.tls_key = Some(v);
        }
        if let Some(v) = file.tls_client_ca {
            self.tls_client_ca = Some(v);
        }
        if let Some(v) = file.acl_file {
            self.acl_file = Some(v);
        }
        if let Some(v) = file.super_users {
            self.super_users = v;
        }
        if let Some(v) = file.quotas {
            self.quotas = v.normalized();
        }
        if let Some(v) = file.default_partitions {
            self.default_partitions = v;
        }
        if let Some(v) = file.fsync {
            self.log.flush = v.parse().map_err(|e| format!("fsync = {v:?}: {e}"))?;
        }
        if let Some(v) = file.segment_bytes {
            self.log.segment_bytes = v;
        }
        if let Some(v) = file.retention_bytes {
            self.log.retention_bytes = Some(v);
        }
        if let Some(v) = file.retention_ms {
            self.log.retention_ms = Some(v);
        }
        if let Some(v) = file.producer_id_expiry_ms {
            self.producers.expiry_ms = v;
        }
        if let Some(v) = file.max_producer_ids {
            self.producers.max_per_partition = v;
        }
        if let Some(v) = file.group_min_session_timeout_ms {
            self.group_min_session_timeout_ms = v;
        }
        if let Some(v) = file.group_max_session_timeout_ms {
            self.group_max_session_timeout_ms = v;
        }
        if let Some(v) = file.group_initial_rebalance_delay_ms {
            self.group_initial_rebalance_delay_ms = v;
        }
        if let Some(l) = file.limits {
            if let Some(v) = l.max_request_bytes {
                self.limits.max_request_bytes = v;
            }
            if let Some(v) = l.max_batch_bytes {
                self.limits.max_batch_bytes = v;
            }
            if let Some(v) = l.max_fetch_bytes {
                self.limits.max_fetch_bytes = v;
            }
            if let Some(v) = l.max_connections {
                self.limits.max_connections = v;
            }
            if let Some(v) = l.max_groups {
                self.limits.max_groups = v;
            }
            if let Some(v) = l.max_members_per_group {
                self.limits.max_members_per_group = v;
            }
        }
        Ok(self)
    }

    /// Rejects settings the broker cannot honour.
    pub fn validate(&self) -> Result<(), BrokerError> {
        let c = &self.cleaner;
        if c.interval.is_zero() || c.interval > MAX_CLEANER_INTERVAL {
            return Err(BrokerError::Config(format!(
                "cleaner_interval_ms must be in 1..={}",
                MAX_CLEANER_INTERVAL.as_millis()
            )));
        }
        if c.max_map_bytes < (1 << 20) || c.max_map_bytes > crate::cleaner::MAX_CLEANER_MAP_BYTES {
            return Err(BrokerError::Config(format!(
                "cleaner_max_map_bytes must be in {}..={}",
                1 << 20,
                crate::cleaner::MAX_CLEANER_MAP_BYTES
            )));
        }
        if c.max_bytes_per_sec == Some(0) {
            return Err(BrokerError::Config(
                "cleaner_max_bytes_per_sec must be positive".into(),
            ));
        }
        let l = &self.limits;
        if l.max_batch_bytes == 0 || l.max_batch_bytes > ferry_proto::batch::MAX_BATCH_BYTES {
            return Err(BrokerError::Config(format!(
                "max_batch_bytes must be in 1..={}",
                ferry_proto::batch::MAX_BATCH_BYTES
            )));
        }
        if l.max_request_bytes < l.max_batch_bytes {
            return Err(BrokerError::Config(
                "max_request_bytes must be at least max_batch_bytes".into(),
            ));
        }
        if l.max_connections == 0 || l.max_fetch_bytes == 0 {
            return Err(BrokerError::Config(
                "max_connections and max_fetch_bytes must be positive".into(),
            ));
        }
        if l.max_groups == 0 || l.max_groups > crate::group::MAX_GROUPS {
            return Err(BrokerError::Config(format!(
                "max_groups must be in 1..={}",
                crate::group::MAX_GROUPS
            )));
        }
        if l.max_members_per_group == 0 || l.max_members_per_group > crate::group::MAX_GROUP_MEMBERS
        {
            return Err(BrokerError::Config(format!(
                "max_members_per_group must be in 1..={}",
                crate::group::MAX_GROUP_MEMBERS
            )));
        }
        if self.group_min_session_timeout_ms == 0
            || self.group_min_session_timeout_ms > self.group_max_session_timeout_ms
        {
            return Err(BrokerError::Config(
                "group_min_session_timeout_ms must be positive and at most group_max_session_timeout_ms".into(),
            ));
        }
        if self.default_partitions == 0 || self.default_partitions > MAX_PARTITIONS_PER_TOPIC {
            return Err(BrokerError::Config(format!(
                "default_partitions must be in 1..={MAX_PARTITIONS_PER_TOPIC}"
            )));
        }
        if let Some(a) = &self.kafka_advertise {
            crate::kafka::Advertised::parse(a)
                .map_err(|e| BrokerError::Config(format!("kafka_advertise: {e}")))?;
        }
        if self.request_header_timeout_ms == 0
            || self.request_header_timeout_ms > MAX_REQUEST_HEADER_TIMEOUT_MS
        {
            return Err(BrokerError::Config(format!(
                "request_header_timeout_ms must be in 1..={MAX_REQUEST_HEADER_TIMEOUT_MS}"
            )));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(BrokerError::Config(
                "--tls-cert and --tls-key go together".into(),
            ));
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err(BrokerError::Config(
                "--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS first".into(),
            ));
        }
        if !self.authenticates() && (self.acl_file.is_some() || !self.super_users.is_empty()) {
            return Err(BrokerError::Config(
                "--acls and --super-user need authentication (--credentials or --tls-client-ca): \
                 without it every client is anonymous and no ACL could name one"
                    .into(),
            ));
        }
        if self.super_users.len() > crate::auth::acl::MAX_SUPER_USERS {
            return Err(BrokerError::Config(format!(
                "at most {} super users",
                crate::auth::acl::MAX_SUPER_USERS
            )));
        }
        self.quotas.validate().map_err(BrokerError::Config)?;
        self.check_anonymous_exposure()?;
        if self.group_initial_rebalance_delay_ms > crate::group::MAX_REBALANCE_TIMEOUT_MS {
            return Err(BrokerError::Config(format!(
                "group_initial_rebalance_delay_ms must be at most {}",
                crate::group::MAX_REBALANCE_TIMEOUT_MS
            )));
        }
        Ok(())
    }
}

impl BrokerConfig {
    /// Whether the gRPC and Kafka listeners authenticate their clients
    /// (a credentials file, or mutual TLS); if so, every request is
    /// authorized against the ACLs.
    pub fn authenticates(&self) -> bool {
        self.credentials_file.is_some() || self.tls_client_ca.is_some()
    }

    /// The ACL file in force: `acl_file`, or `acls.toml` in the data dir.
    pub fn acl_path(&self) -> PathBuf {
        self.acl_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("acls.toml"))
    }

    /// The listeners, each with the flag that sets it and whether it
    /// authenticates its clients (gRPC and Kafka do with a credentials
    /// file or with mutual TLS; the metrics endpoint never does).
    fn listeners(&self) -> impl Iterator<Item = (&'static str, SocketAddr, bool)> {
        let authenticates = self.authenticates();
        [
            ("--listen", Some(self.listen), authenticates),
            ("--kafka-listen", self.kafka_listen, authenticates),
            // Plain HTTP: only a credentials file authenticates its callers.
            (
                "--http-listen",
                self.http_listen,
                self.credentials_file.is_some(),
            ),
        ]
        .into_iter()
        .filter_map(|(flag, addr, auth)| addr.map(|a| (flag, a, auth)))
    }

    /// The safe default: a listener that does not authenticate stays on
    /// loopback unless `allow_anonymous` says otherwise. Checked before
    /// anything binds.
    fn check_anonymous_exposure(&self) -> Result<(), BrokerError> {
        if self.allow_anonymous {
            return Ok(());
        }
        match self
            .listeners()
            .find(|(_, a, authenticates)| !authenticates && !a.ip().is_loopback())
        {
            None => Ok(()),
            Some((flag, addr, _)) => {
                let fix = if flag != "--http-listen" {
                    "give --credentials FILE (config credentials_file) or --tls-client-ca FILE \
                     (mutual TLS) so that clients must authenticate, or pass --allow-anonymous (config allow_anonymous = true)"
                } else {
                    "give --credentials FILE (config credentials_file) so that the console and \
                     the admin API require a login, pass --http-listen off, or pass \
                     --allow-anonymous (config allow_anonymous = true)"
                };
                Err(BrokerError::Config(format!(
                    "{flag} {addr} is not a loopback address and does not authenticate \
                     clients: anyone who can reach it could produce, consume and delete \
                     topics; {fix}"
                )))
            }
        }
    }
}

/// The TOML file's shape; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    /// `metrics_listen` is its older name.
    #[serde(alias = "metrics_listen")]
    http_listen: Option<String>,
    kafka_listen: Option<String>,
    kafka_advertise: Option<String>,
    auto_create_topics: Option<bool>,
    default_partitions: Option<u32>,
    fsync: Option<String>,
    segment_bytes: Option<u64>,
    retention_bytes: Option<u64>,
    retention_ms: Option<u64>,
    cleaner_interval_ms: Option<u64>,
    cleaner_max_bytes_per_sec: Option<u64>,
    cleaner_max_map_bytes: Option<usize>,
    producer_id_expiry_ms: Option<i64>,
    max_producer_ids: Option<usize>,
    group_min_session_timeout_ms: Option<u32>,
    group_max_session_timeout_ms: Option<u32>,
    group_initial_rebalance_delay_ms: Option<u32>,
    allow_anonymous: Option<bool>,
    credentials_file: Option<PathBuf>,
    request_header_timeout_ms: Option<u64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    acl_file: Option<PathBuf>,
    super_users: Option<Vec<String>>,
    quotas: Option<crate::quota::QuotaConfig>,
    limits: Option<FileLimits>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_request_bytes: Option<usize>,
    max_batch_bytes: Option<usize>,
    max_fetch_bytes: Option<usize>,
    max_connections: Option<usize>,
    max_groups: Option<usize>,
    max_members_per_group: Option<usize>,
}

/// Settings for idempotent-producer state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerSettings {
    /// Producers idle for longer than this are forgotten.
    pub expiry_ms: i64,
    /// Most producer ids one partition tracks.
    pub max_per_partition: usize,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        ProducerSettings {
            expiry_ms: 24 * 60 * 60 * 1000,
            max_per_partition: 10_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_settings_override_defaults_and_missing_keys_keep_them() {
        let cfg = BrokerConfig::default()
            .merge_toml("fsync = \"interval=50\"\n[limits]\nmax_connections = 7\n")
            .unwrap();
        assert_eq!(
            cfg.log.flush,
            FlushPolicy::Interval(Duration::from_millis(50))
        );
        assert_eq!(cfg.limits.max_connections, 7);
        assert_eq!(cfg.listen, BrokerConfig::default().listen);
        let cfg = BrokerConfig::default()
            .merge_toml(
                "group_min_session_timeout_ms = 50\ngroup_max_session_timeout_ms = 900\n\
                 group_initial_rebalance_delay_ms = 7\n[limits]\nmax_groups = 3\nmax_members_per_group = 2\n",
            )
            .unwrap();
        assert_eq!(cfg.group_min_session_timeout_ms, 50);
        assert_eq!(cfg.group_max_session_timeout_ms, 900);
        assert_eq!(cfg.group_initial_rebalance_delay_ms, 7);
        assert_eq!(
            (cfg.limits.max_groups, cfg.limits.max_members_per_group),
            (3, 2)
        );
        cfg.validate().unwrap();
        let d = BrokerConfig::default();
        assert_eq!(
            (
                d.group_min_session_timeout_ms,
                d.group_max_session_timeout_ms,
                d.group_initial_rebalance_delay_ms
            ),
            (6_000, 1_800_000, 3_000)
        );
    }

    #[test]
    fn a_listener_off_loopback_needs_allow_anonymous_while_no_authentication_exists() {
        let loopback = BrokerConfig::default();
        loopback.validate().unwrap();
        let v6 = BrokerConfig {
            listen: "[::1]:7400".parse().unwrap(),
            ..BrokerConfig::default()
        };
        v6.validate().unwrap();
        for (flag, cfg) in [
            (
                "--listen 0.0.0.0:7400",
                BrokerConfig {
                    listen: "0.0.0.0:7400".parse().unwrap(),
                    ..BrokerConfig::default()
                },
            ),
            (
                "--kafka-listen 10.1.2.3:9092",
                BrokerConfig {
                    kafka_listen: Some("10.1.2.3:9092".parse().unwrap()),
                    ..BrokerConfig::default()
                },
            ),
            (
                "--http-listen [::]:9100",
                BrokerConfig {
                    http_listen: Some("[::]:9100".parse().unwrap()),
                    ..BrokerConfig::default()
                },
            ),
        ] {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
            assert!(e.contains("--allow-anonymous"), "{e}");
            let allowed = BrokerConfig {
                allow_anonymous: true,
                ..cfg
            };
            allowed.validate().unwrap();
        }
        let from_file = BrokerConfig::default()
            .merge_toml("listen = \"0.0.0.0:7400\"\nallow_anonymous = true\n")
            .unwrap();
        from_file.validate().unwrap();
        // Credentials make every listener authenticate (the HTTP one's
        // console and API ask for a login).
        let tokens = BrokerConfig::default()
            .merge_toml(
                "listen = \"0.0.0.0:7400\"\nkafka_listen = \"0.0.0.0:9092\"\n\
                 credentials_file = \"c.toml\"\n",
            )
            .unwrap();
        assert_eq!(tokens.credentials_file, Some(PathBuf::from("c.toml")));
        tokens.validate().unwrap();
        let http = BrokerConfig {
            http_listen: Some("0.0.0.0:9100".parse().unwrap()),
            ..tokens
        };
        http.validate().unwrap();
        // The older name of http_listen still reads.
        let renamed = BrokerConfig::default()
            .merge_toml("metrics_listen = \"127.0.0.1:9100\"\n")
            .unwrap();
        assert_eq!(renamed.http_listen, Some("127.0.0.1:9100".parse().unwrap()));
        let off = BrokerConfig::default()
            .merge_toml("http_listen = \"off\"\n")
            .unwrap();
        assert_eq!(off.http_listen, None);
        // Mutual TLS authenticates too; TLS alone (anyone may connect) does
        // not. The HTTP listener speaks no TLS: mutual TLS does not
        // authenticate it.
        let tls_only = BrokerConfig::default()
            .merge_toml("listen = \"0.0.0.0:7400\"\ntls_cert = \"s.pem\"\ntls_key = \"k.pem\"\n")
            .unwrap();
        let e = tls_only.validate().unwrap_err().to_string();
        assert!(e.contains("--tls-client-ca"), "{e}");
        let mutual = BrokerConfig {
            tls_client_ca: Some(PathBuf::from("ca.pem")),
            kafka_listen: Some("0.0.0.0:9092".parse().unwrap()),
            ..tls_only
        };
        mutual.validate().unwrap();
        let e = BrokerConfig {
            tls_cert: None,
            tls_key: None,
            ..mutual
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("mutual TLS is TLS first"), "{e}");
    }

    #[test]
    fn the_request_header_timeout_is_bounded_and_set_from_the_file() {
        assert_eq!(
            BrokerConfig::default().request_header_timeout_ms,
            DEFAULT_REQUEST_HEADER_TIMEOUT_MS
        );
        let cfg = BrokerConfig::default()
            .merge_toml("request_header_timeout_ms = 250\n")
            .unwrap();
        assert_eq!(cfg.request_header_timeout_ms, 250);
        cfg.validate().unwrap();
        for bad in [0, MAX_REQUEST_HEADER_TIMEOUT_MS + 1] {
            let cfg = BrokerConfig {
                request_header_timeout_ms: bad,
                ..BrokerConfig::default()
            };
            assert!(cfg.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn group_limits_past_their_ceilings_are_rejected() {
        let mut cfg = BrokerConfig::default();
        cfg.limits.max_members_per_group = crate::group::MAX_GROUP_MEMBERS + 1;
        assert!(cfg.validate().is_err());
        let cfg = BrokerConfig {
            group_min_session_timeout_ms: 10_000_000,
            ..BrokerConfig::default()
        };
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        let err = BrokerConfig::default()
            .merge_toml("fsynk = \"always\"")
            .unwrap_err();
        assert!(err.contains("fsynk"), "{err}");
        let err = BrokerConfig::default()
            .merge_toml("fsync = \"sometimes\"")
            .unwrap_err();
        assert!(err.contains("sometimes"), "{err}");
    }

    #[test]
    fn a_request_limit_below_the_batch_limit_is_rejected() {
        let mut cfg = BrokerConfig::default();
        cfg.limits.max_request_bytes = 10;
        assert!(cfg.validate().is_err());
    }
}
