//! The broker a run crashes: in-process, or a `ferry broker` subprocess.

use super::*;

enum Inner {
    Embedded(Box<EmbeddedBroker>),
    Process(BrokerProcess),
}

/// A broker the matrix can crash: in-process, or a `ferry broker`
/// subprocess killed with `kill -9`.
pub struct BrokerUnderTest {
    inner: Option<Inner>,
    addr: String,
    restarts: u64,
}

impl std::fmt::Debug for BrokerUnderTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerUnderTest")
            .field("addr", &self.addr)
            .field("restarts", &self.restarts)
            .finish()
    }
}

/// Errors of a run.
pub type RunError = Box<dyn std::error::Error + Send + Sync>;

impl BrokerUnderTest {
    /// An in-process broker on a temporary directory, without the Kafka
    /// listener: the matrix speaks gRPC, and a listener it does not use
    /// would only be one more port to take back after each restart (and
    /// to find taken by another socket in the meantime).
    pub async fn embedded(flush: FlushPolicy) -> Result<BrokerUnderTest, BrokerError> {
        let config = BrokerConfig {
            kafka_listen: None,
            ..BrokerConfig::ephemeral().with_flush(flush)
        };
        let broker = EmbeddedBroker::start(config).await?;
        Ok(BrokerUnderTest {
            addr: broker.addr_string(),
            inner: Some(Inner::Embedded(Box::new(broker))),
            restarts: 0,
        })
    }

    /// `bin broker --data-dir DIR --listen 127.0.0.1:0 --fsync FLUSH`, with
    /// the group settings of [`BrokerConfig::ephemeral`] (sessions from
    /// 100 ms, no initial rebalance delay) for the group members'
    /// short sessions, and no Kafka listener (see [`Self::embedded`]).
    pub fn process(bin: &Path, dir: &Path, fsync: &str) -> std::io::Result<BrokerUnderTest> {
        let args = [
            "--kafka-listen",
            "off",
            "--fsync",
            fsync,
            "--group-min-session-timeout-ms",
            "100",
            "--group-initial-rebalance-delay-ms",
            "0",
        ];
        let broker = BrokerProcess::start_with_args(bin, dir, "127.0.0.1:0", args)?;
        Ok(BrokerUnderTest {
            addr: broker.addr().to_string(),
            inner: Some(Inner::Process(broker)),
            restarts: 0,
        })
    }

    /// `host:port`; the same across restarts.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// How many times it was crashed and restarted.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Crashes (in-process: no flush; subprocess: `kill -9`) and restarts.
    pub async fn kill_and_restart(&mut self) -> Result<(), RunError> {
        let inner = self.inner.take().ok_or("the broker is gone")?;
        let inner = match inner {
            Inner::Embedded(b) => Inner::Embedded(Box::new(b.crash_and_restart().await?)),
            Inner::Process(p) => {
                Inner::Process(tokio::task::spawn_blocking(move || p.kill9_and_restart()).await??)
            }
        };
        self.inner = Some(inner);
        self.restarts += 1;
        Ok(())
    }

    /// Crashes, tears the tail of every log, and restarts. In-process the
    /// non-durable tail is zeroed from a random byte and garbage written
    /// at the cut; a subprocess's durable offsets are unknown after
    /// `kill -9`, so its logs only get garbage past the last valid batch.
    /// Returns the records cut.
    pub async fn tear_and_restart(&mut self, seed: u64) -> Result<u64, RunError> {
        let inner = self.inner.take().ok_or("the broker is gone")?;
        let (inner, cut) = match inner {
            Inner::Embedded(b) => {
                let (b, report) = crash_and_tear(*b, TailDamage::TruncateAndGarbage, seed).await?;
                (Inner::Embedded(Box::new(b)), report.records_cut())
            }
            Inner::Process(p) => {
                let (p, report) = tokio::task::spawn_blocking(move || {
                    p.kill9_tear_and_restart(TailDamage::Garbage, &DurableFloors::new(), seed)
                })
                .await??;
                (Inner::Process(p), report.records_cut())
            }
        };
        self.inner = Some(inner);
        self.restarts += 1;
        Ok(cut)
    }

    /// Stops the broker (gracefully for a subprocess's exit status).
    pub async fn stop(mut self) -> Result<(), RunError> {
        match self.inner.take() {
            Some(Inner::Embedded(b)) => b.shutdown().await?,
            Some(Inner::Process(p)) => {
                tokio::task::spawn_blocking(move || p.sigterm()).await??;
            }
            None => {}
        }
        Ok(())
    }
}
