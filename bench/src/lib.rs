//! The workloads behind `ferry bench`, usable from tests and benches too.
//!
//! - [`baseline`]: what the hardware does without Ferry, measured in the
//!   same run: sequential `write(2)`, `write`+`fdatasync`, and loopback TCP.
//! - [`workload`]: produce, consume and end-to-end runs against an
//!   in-process [`EmbeddedBroker`](ferry_broker::EmbeddedBroker) or a remote
//!   broker, with hdrhistogram latencies.
//! - [`restart`]: restart time and internal-log size after many offset
//!   commits.
//! - [`matrix`]: the standard matrix of modes × record sizes × fsync
//!   policies, as a markdown table, JSON, and an SVG chart.
//!
//! Absolute numbers on a shared machine are noise, so every result is also
//! reported as a ratio to a baseline measured in the same run (see
//! [`Ratios`]).

pub mod baseline;
pub mod compaction;
pub mod kafka;
pub mod matrix;
pub mod quota;
pub mod rebalance;
pub mod restart;
pub mod tls;
pub mod workload;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

pub use baseline::{Baseline, BaselineConfig};
pub use ferry_client::DeliveryMode;
pub use matrix::{Matrix, MatrixConfig};
pub use workload::{BenchReport, Kind, Progress, Target, WorkloadConfig};

/// Largest latency a histogram records, in microseconds (one hour); longer
/// ones count as this.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Bytes in the MB of every MB/s figure (decimal, as disks and NICs count).
pub const MB: f64 = 1e6;

/// A latency histogram in microseconds with 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Records `us` microseconds, clamped into the histogram's range.
pub fn record_us(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, MAX_LATENCY_US));
}

/// A latency distribution: percentiles of a histogram, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// What was timed, e.g. `send_to_ack`.
    pub what: String,
    /// Number of samples.
    pub samples: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    /// Summarises `h`; all zeros when it is empty.
    pub fn from_histogram(what: &str, h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency {
                what: what.to_string(),
                ..Latency::default()
            };
        }
        Latency {
            what: what.to_string(),
            samples: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }

    /// `p50 1.23 ms, p99 ..., p999 ..., max ...`.
    pub fn human(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "p50 {:.3} ms, p99 {:.3} ms, p999 {:.3} ms, max {:.3} ms",
            ms(self.p50_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us)
        )
    }
}

/// A fresh temporary directory named `prefix…`, inside `parent` (created
/// if missing) or the system's temporary directory; removed on drop.
pub fn temp_dir(
    prefix: &str,
    parent: Option<&std::path::Path>,
) -> std::io::Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    match parent {
        Some(p) => {
            std::fs::create_dir_all(p)?;
            builder.tempdir_in(p)
        }
        None => builder.tempdir(),
    }
}

/// `numerator ÷ denominator`, or `None` when the denominator is not a
/// positive finite number (a baseline that was skipped or failed).
pub fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    if numerator.is_finite() && denominator.is_finite() && denominator > 0.0 {
        Some(numerator / denominator)
    } else {
        None
    }
}

/// A run's throughput as multiples of the baselines'.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ratios {
    /// Record bytes per second ÷ raw loopback TCP bytes per second.
    pub loopback_tcp: Option<f64>,
    /// Record bytes per second ÷ sequential `write(2)` bytes per second.
    pub write: Option<f64>,
    /// Record bytes per second ÷ `write`+`fdatasync` bytes per second (of
    /// [`baseline::BULK_SYNC_CHUNK_BYTES`] writes): how much of the disk's
    /// durable bandwidth group commit delivers.
    pub write_fdatasync: Option<f64>,
}

impl Ratios {
    /// The ratios of `mb_per_sec` to each of `baseline`'s throughputs.
    pub fn of(mb_per_sec: f64, baseline: &Baseline) -> Ratios {
        Ratios {
            loopback_tcp: ratio(mb_per_sec, baseline.loopback_tcp.mb_per_sec),
            write: ratio(mb_per_sec, baseline.write.mb_per_sec),
            write_fdatasync: ratio(mb_per_sec, baseline.fdatasync_bulk.mb_per_sec),
        }
    }
}

/// `0.41` as "0.41", `None` as "n/a".
pub fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".to_string(), |r| format!("{r:.2}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_needs_a_positive_finite_denominator() {
        assert_eq!(ratio(41.0, 100.0), Some(0.41));
        assert_eq!(ratio(0.0, 100.0), Some(0.0));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(1.0, -2.0), None);
        assert_eq!(ratio(1.0, f64::NAN), None);
        assert_eq!(ratio(f64::INFINITY, 1.0), None);
        assert_eq!(fmt_ratio(Some(0.4149)), "0.41");
        assert_eq!(fmt_ratio(None), "n/a");
    }

    #[test]
    fn latency_percentiles_come_from_the_histogram() {
        let mut h = latency_histogram();
        for us in 1..=1000 {
            record_us(&mut h, us);
        }
        record_us(&mut h, 0);
        record_us(&mut h, u64::MAX);
        let l = Latency::from_histogram("x", &h);
        assert_eq!(l.samples, 1002);
        assert!((495..=505).contains(&l.p50_us), "{l:?}");
        assert!((985..=1000).contains(&l.p99_us), "{l:?}");
        assert!(l.max_us >= MAX_LATENCY_US, "{l:?}");
        let empty = Latency::from_histogram("y", &latency_histogram());
        assert_eq!(empty.samples, 0);
        assert_eq!(empty.max_us, 0);
    }
}
