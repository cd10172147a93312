//! Command-line parsing and dispatch. The commands, flags and JSON shapes
//! here are a public contract: keep them stable.

mod acl;
mod bench;
mod broker;
mod consume;
mod copy;
mod group;
mod lab;
mod lines;
mod membership;
mod produce;
mod topic;
mod torture;
mod txn;
mod user;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Errors the CLI reports: one line on stderr and a non-zero exit.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

/// Ferry: a message broker with at-most-once, at-least-once and
/// exactly-once delivery.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The `--broker` flag every client command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerAddr {
    /// Broker address, HOST:PORT.
    #[arg(
        long,
        env = "FERRY_BROKER",
        default_value = "127.0.0.1:7400",
        global = true
    )]
    pub broker: String,
    /// Bearer token, for a broker started with --credentials (from `ferry
    /// user add NAME --mechanism token`).
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Connect with TLS, trusting the CA certificates (PEM) in this file,
    /// for a broker started with --tls-cert.
    #[arg(long, env = "FERRY_TLS_CA", global = true)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --tls-key and
    /// --tls-ca.
    #[arg(long, env = "FERRY_TLS_CERT", global = true)]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "FERRY_TLS_KEY", hide_env_values = true, global = true)]
    pub tls_key: Option<std::path::PathBuf>,
}

impl BrokerAddr {
    /// Connects to the broker, with the token and TLS settings given.
    pub async fn connect(&self) -> Result<ferry_client::Client, ferry_client::ClientError> {
        ferry_client::Client::connect_with(&self.broker, &self.options()?).await
    }

    /// The connection options the flags ask for.
    pub fn options(&self) -> Result<ferry_client::ConnectOptions, ferry_client::ClientError> {
        let tls = match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (None, None, None) => None,
            (None, ..) => {
                return Err(ferry_client::ClientError::InvalidArgument(
                    "--tls-cert and --tls-key need --tls-ca: the CA that signed the broker's certificate"
                        .into(),
                ));
            }
            (Some(ca), cert, key) => Some(ferry_client::ClientTls::from_files(
                ca,
                cert.as_deref(),
                key.as_deref(),
            )?),
        };
        Ok(ferry_client::ConnectOptions {
            token: self.token.clone(),
            tls,
        })
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a broker.
    Broker(broker::BrokerArgs),
    /// Create, list, describe and delete topics.
    Topic {
        #[command(subcommand)]
        command: topic::TopicCommand,
        #[command(flatten)]
        broker: BrokerAddr,
    },
    /// Produce one record per line of standard input.
    Produce(produce::ProduceArgs),
    /// Print records as JSON lines.
    Consume(consume::ConsumeArgs),
    /// Copy one topic to another exactly once.
    Copy(copy::CopyArgs),
    /// List open and hanging transactions, or abort one.
    Txn {
        #[command(subcommand)]
        command: txn::TxnCommand,
        #[command(flatten)]
        broker: BrokerAddr,
    },
    /// List, describe and delete consumer groups, or reset their offsets.
    Group {
        #[command(subcommand)]
        command: group::GroupCommand,
        #[command(flatten)]
        broker: BrokerAddr,
    },
    /// Measure throughput and latency against this machine's baselines.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Soak one delivery mode under faults against a broker it kills and
    /// restarts, and check the guarantee.
    Torture(torture::TortureArgs),
    /// Run the delivery-semantics lab: each mode side by side under faults,
    /// measured and checked.
    Lab(lab::LabArgs),
    /// Add, remove and list the users of a credentials file.
    User {
        #[command(subcommand)]
        command: user::UserCommand,
    },
    /// Add, remove and list the rules of an ACL file.
    Acl {
        #[command(subcommand)]
        command: acl::AclCommand,
    },
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Broker(args) => broker::run(args),
        Command::Topic { command, broker } => {
            client_runtime()?.block_on(topic::run(command, broker))
        }
        Command::Produce(args) => client_runtime()?.block_on(produce::run(args)),
        Command::Consume(args) => client_runtime()?.block_on(consume::run(args)),
        Command::Bench { command } => bench::run(command),
        Command::Torture(args) => torture::run(args),
        Command::Lab(args) => lab::run(args),
        Command::User { command } => user::run(command),
        Command::Acl { command } => acl::run(command),
        Command::Copy(args) => client_runtime()?.block_on(copy::run(args)),
        Command::Txn { command, broker } => client_runtime()?.block_on(txn::run(command, broker)),
        Command::Group { command, broker } => {
            client_runtime()?.block_on(group::run(command, broker))
        }
    }
}

/// One current-thread runtime per side: on two cores it beat a
/// multi-threaded one for the client.
fn client_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Logs to stderr; `RUST_LOG` overrides the default level.
fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only on a terminal: a log file or a pipe gets plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Resolves on SIGTERM or SIGINT (never, if the handlers cannot be
/// installed): how long-running commands end cleanly.
pub(crate) async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with kill -9");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
