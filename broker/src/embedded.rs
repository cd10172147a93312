//! A broker inside the current process, for tests and for applications
//! that want no separate broker process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::server::{Broker, Stop};
use crate::state::BrokerState;

/// A broker running on its own thread and single-threaded runtime, on a
/// loopback port.
///
/// ```no_run
/// # async fn demo() -> Result<(), ferry_broker::BrokerError> {
/// use ferry_broker::{BrokerConfig, EmbeddedBroker};
/// let broker = EmbeddedBroker::start(BrokerConfig::ephemeral()).await?;
/// println!("serving on {}", broker.addr());
/// broker.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    kafka_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    data_dir: PathBuf,
    config: BrokerConfig,
    tmp: Option<Arc<tempfile::TempDir>>,
    stop: Option<oneshot::Sender<Stop>>,
    thread: Option<std::thread::JoinHandle<Result<(), BrokerError>>>,
    state: Option<Arc<BrokerState>>,
}

impl EmbeddedBroker {
    /// Starts a broker. An empty `data_dir` means a fresh temporary
    /// directory, removed when the last broker using it is dropped.
    pub async fn start(config: BrokerConfig) -> Result<EmbeddedBroker, BrokerError> {
        let tmp = if config.data_dir.as_os_str().is_empty() {
            Some(Arc::new(
                tempfile::Builder::new()
                    .prefix("ferry-")
                    .tempdir()
                    .map_err(|source| BrokerError::Io {
                        op: "create temporary data dir",
                        path: std::env::temp_dir().display().to_string(),
                        source,
                    })?,
            ))
        } else {
            None
        };
        Self::start_in(config, tmp).await
    }

    async fn start_in(
        mut config: BrokerConfig,
        tmp: Option<Arc<tempfile::TempDir>>,
    ) -> Result<EmbeddedBroker, BrokerError> {
        if let Some(t) = &tmp {
            config.data_dir = t.path().to_path_buf();
        }
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<Stop>();
        let thread_config = config.clone();
        let thread = std::thread::Builder::new()
            .name("ferry-embedded-broker".into())
            .spawn(move || -> Result<(), BrokerError> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| BrokerError::Io {
                        op: "start runtime",
                        path: String::new(),
                        source,
                    })?;
                rt.block_on(async move {
                    let opened = Broker::open(thread_config);
                    let broker = match opened {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return Ok(());
                        }
                    };
                    let listeners = match broker.bind().await {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return Ok(());
                        }
                    };
                    let addr = listeners
                        .grpc_addr()
                        .expect("bound listener has an address");
                    let bound = (addr, listeners.kafka_addr(), listeners.http_addr());
                    let _ = ready_tx.send(Ok((bound, broker.state().clone())));
                    broker
                        .serve(
                            listeners,
                            async move { stop_rx.await.unwrap_or(Stop::Graceful) },
                        )
                        .await
                })
            })
            .map_err(|source| BrokerError::Io {
                op: "spawn broker thread",
                path: String::new(),
                source,
            })?;
        let ((addr, kafka_addr, http_addr), state) = ready_rx.await.map_err(|_| {
            BrokerError::Config("embedded broker thread died while starting".into())
        })??;
        Ok(EmbeddedBroker {
            addr,
            kafka_addr,
            http_addr,
            data_dir: config.data_dir.clone(),
            config,
            tmp,
            stop: Some(stop_tx),
            thread: Some(thread),
            state: Some(state),
        })
    }

    /// The address the broker listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Kafka listener's address, unless the config turned it off.
    pub fn kafka_addr(&self) -> Option<SocketAddr> {
        self.kafka_addr
    }

    /// The HTTP listener's address (console, admin API, metrics), if the
    /// config turned it on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The address as `host:port`, as clients and the CLI take it.
    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The broker's state, for white-box tests.
    ///
    /// # Panics
    /// After the broker was stopped.
    pub fn state(&self) -> &Arc<BrokerState> {
        self.state.as_ref().expect("the embedded broker is running")
    }

    async fn stop(&mut self, how: Stop) -> Result<(), BrokerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(how);
        }
        // Our reference must go too: the state holds the data-dir lock and
        // the logs, which a restart opens again.
        self.state = None;
        if let Some(thread) = self.thread.take() {
            return tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|e| BrokerError::Config(format!("join: {e}")))?
                .map_err(|_| BrokerError::Config("embedded broker thread panicked".into()))?;
        }
        Ok(())
    }

    /// Stops gracefully: drains connections, flushes and closes the logs.
    pub async fn shutdown(mut self) -> Result<(), BrokerError> {
        self.stop(Stop::Graceful).await
    }

    /// Stops gracefully and starts again on the same data dir and port.
    pub async fn restart(mut self) -> Result<EmbeddedBroker, BrokerError> {
        self.stop(Stop::Graceful).await?;
        self.start_again().await
    }

    /// Stops without flushing or checkpointing, as `kill -9` would, and
    /// starts again on the same data dir and port: recovery runs.
    pub async fn crash_and_restart(mut self) -> Result<EmbeddedBroker, BrokerError> {
        self.stop(Stop::Crash).await?;
        self.start_again().await
    }

    /// Stops without flushing, and returns the config (with its data dir)
    /// and the temporary dir guard, so a test can damage files before
    /// starting again with [`EmbeddedBroker::start_with`].
    pub async fn crash(
        mut self,
    ) -> Result<(BrokerConfig, Option<Arc<tempfile::TempDir>>), BrokerError> {
        self.stop(Stop::Crash).await?;
        let mut config = self.config.clone();
        config.listen = self.addr;
        config.kafka_listen = self.kafka_addr;
        config.http_listen = self.http_addr;
        Ok((config, self.tmp.take()))
    }

    /// Starts on a config and temporary dir guard returned by
    /// [`EmbeddedBroker::crash`].
    pub async fn start_with(
        config: BrokerConfig,
        tmp: Option<Arc<tempfile::TempDir>>,
    ) -> Result<EmbeddedBroker, BrokerError> {
        Self::start_in(config, tmp).await
    }

    async fn start_again(&mut self) -> Result<EmbeddedBroker, BrokerError> {
        let mut config = self.config.clone();
        config.listen = self.addr;
        config.kafka_listen = self.kafka_addr;
        config.http_listen = self.http_addr;
        Self::start_in(config, self.tmp.clone()).await
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(Stop::Graceful);
        }
        if let Some(thread) = self.thread.take() {
            let joined = thread.join();
            // Surface a broker panic in the test that owns the broker,
            // unless that test is already unwinding.
            if joined.is_err() && !std::thread::panicking() {
                panic!("the embedded broker thread panicked");
            }
        }
    }
}
