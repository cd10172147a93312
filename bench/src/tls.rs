//! `ferry bench tls`: what TLS costs on the gRPC path. Two embedded
//! brokers in this process, one plaintext and one with TLS (a throwaway
//! CA and certificate), run the same at-least-once produce and consume
//! workloads through `ferry-client`, alternating, round after round; the
//! report gives each side's records/s and TLS ÷ plaintext, measured in
//! the same run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_broker::{BrokerConfig, EmbeddedBroker, FlushPolicy};
use ferry_client::{ClientTls, Compression, ConnectOptions, DeliveryMode};
use serde::{Deserialize, Serialize};

use crate::ratio;
use crate::workload::{self, BenchError, BenchReport, Kind, Progress, RunLength, Target};

/// Record sizes of the default run.
pub const SIZES: [usize; 1] = [1024];

/// The settings of a run.
#[derive(Clone, Debug)]
pub struct TlsBenchConfig {
    pub sizes: Vec<usize>,
    /// How long each cell runs on each side.
    pub duration: Duration,
    /// Rounds; each cell reports its median round.
    pub rounds: usize,
    pub batch_bytes: usize,
    pub linger_ms: u64,
    /// The brokers' fsync policy.
    pub flush: FlushPolicy,
    /// Where the brokers' temporary data dirs go.
    pub parent: Option<PathBuf>,
}

impl Default for TlsBenchConfig {
    fn default() -> TlsBenchConfig {
        let w = workload::WorkloadConfig::default();
        TlsBenchConfig {
            sizes: SIZES.to_vec(),
            duration: Duration::from_secs(3),
            rounds: 3,
            batch_bytes: w.batch_bytes,
            linger_ms: w.linger_ms,
            flush: FlushPolicy::Never,
            parent: None,
        }
    }
}

/// One workload on both brokers: the median round of each.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TlsCell {
    pub bench: Kind,
    pub record_size: usize,
    pub plaintext: BenchReport,
    pub tls: BenchReport,
    /// TLS records/s ÷ plaintext records/s, of the medians.
    pub tls_per_plaintext: Option<f64>,
    /// Every round's ratio, in order.
    pub round_ratios: Vec<f64>,
}

/// A whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TlsBench {
    pub fsync: String,
    pub rounds: usize,
    pub cells: Vec<TlsCell>,
    pub seconds: f64,
}

fn median(mut reports: Vec<BenchReport>) -> BenchReport {
    reports.sort_by(|a, b| a.records_per_sec.total_cmp(&b.records_per_sec));
    reports.swap_remove(reports.len() / 2)
}

impl TlsBench {
    /// Runs every cell. `on_cell` is called before each round of each cell
    /// with its index and a label.
    pub fn run(
        config: &TlsBenchConfig,
        mut on_cell: impl FnMut(usize, &str),
    ) -> Result<TlsBench, BenchError> {
        if config.sizes.is_empty() || config.sizes.contains(&0) {
            return Err("record sizes must be at least 1 byte".into());
        }
        if config.duration.is_zero() || config.rounds == 0 {
            return Err("the duration and the rounds must be positive".into());
        }
        let started = Instant::now();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let dir = crate::temp_dir("ferry-bench-tls-", config.parent.as_deref())?;
        let pki = ferry_testkit::pki::TestPki::write(dir.path());
        let broker = |name: &str, tls: bool| {
            let mut c = BrokerConfig::ephemeral()
                .with_data_dir(dir.path().join(name))
                .with_flush(config.flush);
            c.kafka_listen = None;
            if tls {
                c.tls_cert = Some(pki.server_cert.clone());
                c.tls_key = Some(pki.server_key.clone());
            }
            rt.block_on(EmbeddedBroker::start(c))
        };
        let plain = broker("plaintext", false)?;
        let secure = broker("tls", true)?;
        let sides = [
            Target::Remote {
                addr: plain.addr_string(),
                options: ConnectOptions::default(),
            },
            Target::Remote {
                addr: secure.addr_string(),
                options: ConnectOptions {
                    tls: Some(ClientTls::from_files(&pki.ca, None, None)?),
                    ..ConnectOptions::default()
                },
            },
        ];
        let mut cells = Vec::new();
        let mut step = 0;
        for &size in &config.sizes {
            for bench in [Kind::Produce, Kind::Consume] {
                let workload = workload::WorkloadConfig {
                    kind: bench,
                    mode: DeliveryMode::AtLeastOnce,
                    record_size: size,
                    batch_bytes: config.batch_bytes,
                    linger_ms: config.linger_ms,
                    producers: 1,
                    partitions: 1,
                    stop: RunLength::Duration(config.duration),
                    compression: Compression::None,
                    ..workload::WorkloadConfig::default()
                };
                let (mut plains, mut tlss, mut round_ratios) = (Vec::new(), Vec::new(), Vec::new());
                for round in 0..config.rounds {
                    on_cell(
                        step,
                        &format!(
                            "{} {} round {}",
                            bench.name(),
                            workload::human_size(size),
                            round + 1
                        ),
                    );
                    step += 1;
                    let p = workload::run(&workload, &sides[0], &Progress::default())?;
                    let t = workload::run(&workload, &sides[1], &Progress::default())?;
                    if let Some(r) = ratio(t.records_per_sec, p.records_per_sec) {
                        round_ratios.push(r);
                    }
                    plains.push(p);
                    tlss.push(t);
                }
                let (plaintext, tls) = (median(plains), median(tlss));
                cells.push(TlsCell {
                    bench,
                    record_size: size,
                    tls_per_plaintext: ratio(tls.records_per_sec, plaintext.records_per_sec),
                    plaintext,
                    tls,
                    round_ratios,
                });
            }
        }
        let _ = rt.block_on(plain.crash());
        let _ = rt.block_on(secure.crash());
        drop(dir);
        Ok(TlsBench {
            fsync: config.flush.to_string(),
            rounds: config.rounds,
            cells,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Records that failed on either side.
    pub fn failed(&self) -> u64 {
        self.cells
            .iter()
            .map(|c| c.plaintext.failed + c.tls.failed)
            .sum()
    }

    /// The report as a markdown table.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "TLS on the gRPC listener, at-least-once, fsync {}, median of {} round(s)\n\n\
             | bench | size | plaintext rec/s | TLS rec/s | plaintext MB/s | TLS MB/s | TLS ÷ plaintext | per round |\n\
             |---|---|--:|--:|--:|--:|--:|---|\n",
            self.fsync, self.rounds
        );
        for c in &self.cells {
            let rounds: Vec<String> = c.round_ratios.iter().map(|r| format!("{r:.2}")).collect();
            out.push_str(&format!(
                "| {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {} | {} |\n",
                c.bench.name(),
                workload::human_size(c.record_size),
                c.plaintext.records_per_sec,
                c.tls.records_per_sec,
                c.plaintext.mb_per_sec,
                c.tls.mb_per_sec,
                c.tls_per_plaintext
                    .map_or("-".into(), |r| format!("{r:.2}")),
                rounds.join(" "),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_brokers_move_records_and_the_report_has_every_cell() {
        let config = TlsBenchConfig {
            duration: Duration::from_millis(300),
            rounds: 1,
            ..TlsBenchConfig::default()
        };
        let bench = TlsBench::run(&config, |_, _| {}).unwrap();
        assert_eq!(bench.cells.len(), 2);
        assert_eq!(bench.failed(), 0);
        for c in &bench.cells {
            assert!(c.plaintext.records > 0 && c.tls.records > 0, "{c:?}");
            assert!(c.tls_per_plaintext.is_some());
        }
        let md = bench.markdown();
        assert!(
            md.contains("| produce | 1 KiB |") && md.contains("| consume | 1 KiB |"),
            "{md}"
        );
    }
}
