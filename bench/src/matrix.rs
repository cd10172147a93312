//! The standard matrix: every mode × 100 B and 1 KiB records × fsync
//! never and always, with exactly-once at several transaction lengths.
//! Each cell runs on a fresh embedded broker; each mode's throughput is
//! reported as a ratio to at-least-once with the same record size and
//! fsync policy, which gives the cost of its guarantee.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_broker::FlushPolicy;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

use super::workload::{
    self, BenchError, BenchReport, Kind, Progress, RunLength, Target, human_size,
};
use super::{Baseline, baseline, fmt_ratio, ratio};
use ferry_client::DeliveryMode;

/// Record sizes of the standard matrix.
pub const SIZES: [usize; 2] = [100, 1024];
/// Transaction lengths of exactly-once in the standard matrix.
pub const TXN_MS: [u64; 3] = [10, 100, 1000];

/// What to run.
#[derive(Clone, Debug)]
pub struct MatrixConfig {
    /// How long each cell produces.
    pub stop: RunLength,
    pub sizes: Vec<usize>,
    pub fsyncs: Vec<FlushPolicy>,
    /// Exactly-once runs once per transaction length.
    pub txn_ms: Vec<u64>,
    pub modes: Vec<DeliveryMode>,
    pub batch_bytes: usize,
    pub buffer_bytes: usize,
    pub linger_ms: u64,
    pub producers: usize,
    pub partitions: u32,
    /// Parent of the cells' temporary data dirs.
    pub parent: Option<PathBuf>,
    /// Measure loopback TCP (and, for cells that fsync, `write`+`fdatasync`)
    /// for this long right before each cell, so its ratios use a baseline
    /// taken under the same background load. `None`: use the run's one
    /// baseline only.
    pub cell_baseline: Option<Duration>,
    /// Run the whole matrix this many times and show each cell's median.
    pub rounds: usize,
}

impl Default for MatrixConfig {
    fn default() -> MatrixConfig {
        let w = workload::WorkloadConfig::default();
        MatrixConfig {
            stop: RunLength::Duration(Duration::from_secs(5)),
            sizes: SIZES.to_vec(),
            fsyncs: vec![FlushPolicy::Never, FlushPolicy::Always],
            txn_ms: TXN_MS.to_vec(),
            modes: DeliveryMode::ALL.to_vec(),
            batch_bytes: w.batch_bytes,
            buffer_bytes: w.buffer_bytes,
            linger_ms: w.linger_ms,
            producers: w.producers,
            partitions: w.partitions,
            parent: None,
            cell_baseline: None,
            rounds: 1,
        }
    }
}

/// One cell to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellSpec {
    pub mode: DeliveryMode,
    pub record_size: usize,
    pub fsync: String,
    pub txn_ms: Option<u64>,
}

impl CellSpec {
    /// `at-least-once 100 B fsync never`.
    pub fn label(&self) -> String {
        format!(
            "{}{} {} fsync {}",
            self.mode.name(),
            self.txn_ms.map_or(String::new(), |t| format!(" {t} ms")),
            human_size(self.record_size),
            self.fsync
        )
    }
}

/// A cell's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    #[serde(flatten)]
    pub spec: CellSpec,
    pub records_per_sec: Option<f64>,
    pub mb_per_sec: Option<f64>,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    /// Records/s ÷ at-least-once's with the same size and fsync.
    pub vs_at_least_once: Option<f64>,
    /// Loopback TCP measured right before the cell.
    pub loopback_tcp_mb_per_sec: Option<f64>,
    /// `write`+`fdatasync` bandwidth measured right before the cell.
    pub write_fdatasync_mb_per_sec: Option<f64>,
    /// MB/s ÷ raw loopback TCP (the cell's own measurement if it has one,
    /// else the run's baseline).
    pub vs_loopback_tcp: Option<f64>,
    /// MB/s ÷ `write`+`fdatasync` bandwidth.
    pub vs_write_fdatasync: Option<f64>,
    /// Records/s of every round, in run order; the cell shows the median.
    pub runs_records_per_sec: Vec<f64>,
    /// Why the cell has no numbers, or what failed in it.
    pub error: Option<String>,
    pub report: Option<BenchReport>,
}

/// The matrix's results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Matrix {
    pub baseline: Option<Baseline>,
    pub cells: Vec<Cell>,
    /// Times each cell ran; each shows its median run.
    pub rounds: usize,
    pub seconds: f64,
}

/// The cells of `config`, in the order they run and are tabled: by fsync,
/// then size, then mode.
pub fn cells(config: &MatrixConfig) -> Vec<CellSpec> {
    let mut out = Vec::new();
    for flush in &config.fsyncs {
        for &record_size in &config.sizes {
            for &mode in &config.modes {
                let txns: Vec<Option<u64>> = if mode == DeliveryMode::ExactlyOnce {
                    config.txn_ms.iter().copied().map(Some).collect()
                } else {
                    vec![None]
                };
                for txn_ms in txns {
                    out.push(CellSpec {
                        mode,
                        record_size,
                        fsync: flush.to_string(),
                        txn_ms,
                    });
                }
            }
        }
    }
    out
}

impl Matrix {
    /// Runs every cell in turn on a fresh embedded broker. `before_cell`
    /// is called with the cell's index and spec before it starts.
    pub fn run(
        config: &MatrixConfig,
        baseline: Option<Baseline>,
        progress: &Progress,
        mut before_cell: impl FnMut(usize, &CellSpec),
    ) -> Result<Matrix, BenchError> {
        let started = std::time::Instant::now();
        let specs = cells(config);
        let rounds = config.rounds.max(1);
        let mut runs: Vec<Vec<Cell>> = vec![Vec::with_capacity(rounds); specs.len()];
        // Whole rounds one after another, so each cell's runs spread over
        // the run's changing background load.
        for round in 0..rounds {
            for (i, spec) in specs.iter().enumerate() {
                before_cell(round * specs.len() + i, spec);
                runs[i].push(run_cell(config, spec, progress)?);
            }
        }
        let cells = runs.into_iter().map(median_cell).collect();
        let mut matrix = Matrix {
            baseline,
            cells,
            rounds,
            seconds: started.elapsed().as_secs_f64(),
        };
        matrix.compute_ratios();
        Ok(matrix)
    }

    /// Fills in every cell's ratios from its throughput, the at-least-once
    /// cell with the same size and fsync, and the baseline.
    pub fn compute_ratios(&mut self) {
        let reference: Vec<Option<f64>> = self
            .cells
            .iter()
            .map(|c| {
                self.cells
                    .iter()
                    .find(|r| {
                        r.spec.mode == DeliveryMode::AtLeastOnce
                            && r.spec.record_size == c.spec.record_size
                            && r.spec.fsync == c.spec.fsync
                    })
                    .and_then(|r| r.records_per_sec)
            })
            .collect();
        for (cell, reference) in self.cells.iter_mut().zip(reference) {
            cell.vs_at_least_once = cell
                .records_per_sec
                .zip(reference)
                .and_then(|(x, r)| ratio(x, r));
            let Some(mb) = cell.mb_per_sec else {
                continue;
            };
            let tcp = cell
                .loopback_tcp_mb_per_sec
                .or(self.baseline.as_ref().map(|b| b.loopback_tcp.mb_per_sec));
            let sync = cell
                .write_fdatasync_mb_per_sec
                .or(self.baseline.as_ref().map(|b| b.fdatasync_bulk.mb_per_sec));
            cell.vs_loopback_tcp = tcp.and_then(|t| ratio(mb, t));
            cell.vs_write_fdatasync = sync.and_then(|s| ratio(mb, s));
        }
    }

    /// The table in markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "| fsync | record | mode | records/s | MB/s | p50 ms | p99 ms | ÷ at-least-once | ÷ loopback TCP | ÷ write+fdatasync |\n\
             |---|---|---|--:|--:|--:|--:|--:|--:|--:|\n",
        );
        let ms =
            |us: Option<u64>| us.map_or("–".to_string(), |u| format!("{:.2}", u as f64 / 1e3));
        for c in &self.cells {
            let mode = match c.spec.txn_ms {
                Some(t) => format!("{} ({t} ms txns)", c.spec.mode.name()),
                None => c.spec.mode.name().to_string(),
            };
            let Some(rps) = c.records_per_sec else {
                s.push_str(&format!(
                    "| {} | {} | {mode} | – | – | – | – | – | – | – |\n",
                    c.spec.fsync,
                    human_size(c.spec.record_size),
                ));
                continue;
            };
            s.push_str(&format!(
                "| {} | {} | {mode} | {:.0} | {:.1} | {} | {} | {} | {} | {} |\n",
                c.spec.fsync,
                human_size(c.spec.record_size),
                rps,
                c.mb_per_sec.unwrap_or(0.0),
                ms(c.p50_us),
                ms(c.p99_us),
                fmt_ratio(c.vs_at_least_once),
                fmt_ratio(c.vs_loopback_tcp),
                if c.spec.fsync == "never" {
                    "–".to_string()
                } else {
                    fmt_ratio(c.vs_write_fdatasync)
                },
            ));
        }
        if self
            .cells
            .iter()
            .any(|c| c.loopback_tcp_mb_per_sec.is_some())
        {
            s.push_str(
                "\n÷ loopback TCP and ÷ write+fdatasync are against baselines measured right before each cell.\n",
            );
        }
        if self.rounds > 1 {
            s.push_str(&format!(
                "Each cell is the median of {} runs.\n",
                self.rounds
            ));
        }
        let errors: Vec<String> = self
            .cells
            .iter()
            .filter_map(|c| {
                c.error
                    .as_ref()
                    .map(|e| format!("- {}: {e}", c.spec.label()))
            })
            .collect();
        if !errors.is_empty() {
            s.push('\n');
            s.push_str(&errors.join("\n"));
            s.push('\n');
        }
        s
    }

    /// Writes a bar chart of records/s per cell, one panel per record size
    /// and fsync policy, each bar labelled with its ratio to at-least-once.
    pub fn chart_svg(&self, path: &Path) -> Result<(), BenchError> {
        let mut groups: Vec<(usize, String)> = Vec::new();
        for c in &self.cells {
            let g = (c.spec.record_size, c.spec.fsync.clone());
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        let columns = groups.len().clamp(1, 2);
        let rows = groups.len().div_ceil(columns).max(1);
        let root = SVGBackend::new(path, (600 * columns as u32, 420 * rows as u32 + 40))
            .into_drawing_area();
        root.fill(&WHITE)?;
        let (title, body) = root.split_vertically(40);
        title.draw_text(
            "ferry bench matrix: records/s (label: ÷ at-least-once)",
            &("sans-serif", 20).into_font().color(&BLACK),
            (10, 10),
        )?;
        let panels = body.split_evenly((rows, columns));
        for (panel, (size, fsync)) in panels.iter().zip(&groups) {
            let cells: Vec<&Cell> = self
                .cells
                .iter()
                .filter(|c| c.spec.record_size == *size && &c.spec.fsync == fsync)
                .collect();
            let n = cells.len() as u32;
            let top = cells
                .iter()
                .filter_map(|c| c.records_per_sec)
                .fold(0.0_f64, f64::max)
                .max(1.0)
                / 1e6
                * 1.2;
            let labels: Vec<String> = cells.iter().map(|c| short_label(&c.spec)).collect();
            let mut chart = ChartBuilder::on(panel)
                .caption(
                    format!("{} records, fsync {fsync}", human_size(*size)),
                    ("sans-serif", 16),
                )
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(50)
                .build_cartesian_2d((0u32..n).into_segmented(), 0f64..top)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .y_desc("M records/s")
                .x_labels(n as usize)
                .x_label_formatter(&|v| match v {
                    SegmentValue::CenterOf(i) => {
                        labels.get(*i as usize).cloned().unwrap_or_default()
                    }
                    _ => String::new(),
                })
                .draw()?;
            chart.draw_series(cells.iter().enumerate().filter_map(|(i, c)| {
                let y = c.records_per_sec? / 1e6;
                let i = i as u32;
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), y),
                    ],
                    Palette99::pick(c.spec.mode as usize).filled(),
                );
                bar.set_margin(0, 0, 6, 6);
                Some(bar)
            }))?;
            chart.draw_series(cells.iter().enumerate().filter_map(|(i, c)| {
                let y = c.records_per_sec? / 1e6;
                let text = match c.vs_at_least_once {
                    Some(r) => format!("{y:.2}M, {r:.2}×"),
                    None => format!("{y:.2}M"),
                };
                Some(Text::new(
                    text,
                    (SegmentValue::CenterOf(i as u32), y),
                    ("sans-serif", 12)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                ))
            }))?;
        }
        root.present()?;
        Ok(())
    }
}

/// Runs one cell on a fresh embedded broker, after its own baselines when
/// `config.cell_baseline` asks for them. A failed run is a cell with an
/// error, not an error.
fn run_cell(
    config: &MatrixConfig,
    spec: &CellSpec,
    progress: &Progress,
) -> Result<Cell, BenchError> {
    let flush: FlushPolicy = spec.fsync.parse()?;
    let w = workload::WorkloadConfig {
        kind: Kind::Produce,
        mode: spec.mode,
        record_size: spec.record_size,
        batch_bytes: config.batch_bytes,
        buffer_bytes: config.buffer_bytes,
        linger_ms: config.linger_ms,
        producers: config.producers,
        partitions: config.partitions,
        txn_ms: spec.txn_ms.unwrap_or(100),
        stop: config.stop,
        compression: ferry_client::Compression::None,
    };
    let target = Target::Embedded {
        flush,
        parent: config.parent.clone(),
    };
    let (tcp, sync) = match config.cell_baseline {
        Some(each) => {
            let dir = config.parent.clone().unwrap_or_else(std::env::temp_dir);
            let tcp = baseline::loopback_tcp(each)?.mb_per_sec;
            let sync = match flush {
                FlushPolicy::Never => None,
                _ => Some(
                    baseline::write_fdatasync(&dir, baseline::BULK_SYNC_CHUNK_BYTES, each)?
                        .mb_per_sec,
                ),
            };
            (Some(tcp), sync)
        }
        None => (None, None),
    };
    let mut cell = Cell {
        spec: spec.clone(),
        records_per_sec: None,
        mb_per_sec: None,
        p50_us: None,
        p99_us: None,
        loopback_tcp_mb_per_sec: tcp,
        write_fdatasync_mb_per_sec: sync,
        vs_at_least_once: None,
        vs_loopback_tcp: None,
        vs_write_fdatasync: None,
        runs_records_per_sec: Vec::new(),
        error: None,
        report: None,
    };
    match workload::run(&w, &target, progress) {
        Ok(report) => {
            cell.records_per_sec = Some(report.records_per_sec);
            cell.mb_per_sec = Some(report.mb_per_sec);
            cell.p50_us = Some(report.latency.p50_us);
            cell.p99_us = Some(report.latency.p99_us);
            cell.runs_records_per_sec = vec![report.records_per_sec];
            cell.error = report.first_error.clone();
            cell.report = Some(report);
        }
        Err(e) => cell.error = Some(e.to_string()),
    }
    Ok(cell)
}

/// The run with the median throughput (failed runs count as slowest),
/// carrying every run's throughput.
fn median_cell(mut runs: Vec<Cell>) -> Cell {
    let all: Vec<f64> = runs.iter().filter_map(|c| c.records_per_sec).collect();
    runs.sort_by(|a, b| {
        let key = |c: &Cell| c.records_per_sec.unwrap_or(f64::NEG_INFINITY);
        key(a).total_cmp(&key(b))
    });
    let mut median = runs.swap_remove(runs.len() / 2);
    median.runs_records_per_sec = all;
    median
}

/// `ALO`, `EOS 100ms`, ...
fn short_label(spec: &CellSpec) -> String {
    let mode = match spec.mode {
        DeliveryMode::AtMostOnce => "AMO",
        DeliveryMode::AtLeastOnce => "ALO",
        DeliveryMode::Idempotent => "idem",
        DeliveryMode::ExactlyOnce => "EOS",
    };
    match spec.txn_ms {
        Some(t) => format!("{mode} {t}ms"),
        None => mode.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(mode: DeliveryMode, size: usize, fsync: &str, rps: Option<f64>) -> Cell {
        Cell {
            spec: CellSpec {
                mode,
                record_size: size,
                fsync: fsync.into(),
                txn_ms: (mode == DeliveryMode::ExactlyOnce).then_some(100),
            },
            records_per_sec: rps,
            mb_per_sec: rps.map(|r| r * size as f64 / 1e6),
            p50_us: Some(1500),
            p99_us: Some(9000),
            loopback_tcp_mb_per_sec: None,
            write_fdatasync_mb_per_sec: None,
            vs_at_least_once: None,
            vs_loopback_tcp: None,
            vs_write_fdatasync: None,
            runs_records_per_sec: Vec::new(),
            error: None,
            report: None,
        }
    }

    #[test]
    fn a_repeated_cell_shows_its_median_run() {
        let runs = vec![
            cell(DeliveryMode::Idempotent, 100, "never", Some(3.0)),
            cell(DeliveryMode::Idempotent, 100, "never", None),
            cell(DeliveryMode::Idempotent, 100, "never", Some(1.0)),
            cell(DeliveryMode::Idempotent, 100, "never", Some(2.0)),
            cell(DeliveryMode::Idempotent, 100, "never", Some(5.0)),
        ];
        let m = median_cell(runs);
        assert_eq!(m.records_per_sec, Some(2.0));
        assert_eq!(m.runs_records_per_sec, vec![3.0, 1.0, 2.0, 5.0]);
    }

    #[test]
    fn the_standard_matrix_has_every_mode_size_and_fsync() {
        let specs = cells(&MatrixConfig::default());
        // (3 plain modes + 3 transaction lengths) × 2 sizes × 2 policies.
        assert_eq!(specs.len(), 24);
        assert_eq!(specs[0].fsync, "never");
        assert_eq!(specs.last().unwrap().fsync, "always");
        assert_eq!(
            specs
                .iter()
                .filter(|s| s.mode == DeliveryMode::ExactlyOnce)
                .filter_map(|s| s.txn_ms)
                .take(3)
                .collect::<Vec<_>>(),
            TXN_MS.to_vec()
        );
    }

    #[test]
    fn ratios_are_against_at_least_once_of_the_same_size_and_fsync() {
        let mut m = Matrix {
            baseline: Some(Baseline {
                loopback_tcp: super::super::baseline::Throughput {
                    mb_per_sec: 1000.0,
                    ..Default::default()
                },
                ..Baseline::default()
            }),
            cells: vec![
                cell(DeliveryMode::AtLeastOnce, 100, "never", Some(1_000_000.0)),
                cell(DeliveryMode::Idempotent, 100, "never", Some(970_000.0)),
                cell(DeliveryMode::AtLeastOnce, 100, "always", Some(200_000.0)),
                cell(DeliveryMode::Idempotent, 100, "always", Some(100_000.0)),
                cell(DeliveryMode::Idempotent, 1024, "always", Some(50_000.0)),
                cell(DeliveryMode::ExactlyOnce, 100, "never", None),
            ],
            rounds: 1,
            seconds: 1.0,
        };
        m.compute_ratios();
        let r: Vec<Option<f64>> = m.cells.iter().map(|c| c.vs_at_least_once).collect();
        assert_eq!(
            r,
            vec![Some(1.0), Some(0.97), Some(1.0), Some(0.5), None, None]
        );
        // 1e6 records/s × 100 B = 100 MB/s against 1000 MB/s.
        assert_eq!(m.cells[0].vs_loopback_tcp, Some(0.1));
        // The disk baseline is zero here: no ratio rather than infinity.
        assert_eq!(m.cells[0].vs_write_fdatasync, None);

        let md = m.markdown();
        assert!(
            md.contains(
                "| never | 100 B | idempotent | 970000 | 97.0 | 1.50 | 9.00 | 0.97 | 0.10 | – |"
            ),
            "{md}"
        );
        assert!(md.contains("exactly-once (100 ms txns) | – |"), "{md}");

        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("m.svg");
        m.chart_svg(&svg).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg") && text.contains("0.97×"), "{text}");

        // A cell's own baseline wins over the run's.
        m.cells[1].loopback_tcp_mb_per_sec = Some(194.0);
        m.compute_ratios();
        assert_eq!(m.cells[1].vs_loopback_tcp, Some(0.5));
    }
}
