//! The lab's results: one [`Row`] per scenario and mode, as a table, JSON
//! and an SVG bar chart.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;

use super::{LabConfig, LabMode, Scenario};
use ferry_bench::{fmt_ratio, ratio};

/// One cell's measurements.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The pipeline.
    pub scenario: Scenario,
    /// The delivery mode.
    pub mode: LabMode,
    /// The mode as the table shows it.
    pub label: String,
    /// Input records acknowledged by the broker.
    pub produced: u64,
    /// Rows in the sink at the end (orders: reservations; views: views;
    /// trips: trips).
    pub sink_rows: u64,
    /// Deliveries of an event the consumer group had delivered before
    /// (after a crash, or of an event a retry stored twice).
    pub duplicates_delivered: u64,
    /// Repeats the sink absorbed: ignored by a unique key, a version, or an
    /// aborted transaction.
    pub duplicates_absorbed: u64,
    /// Extra effects in the sink: orders, reservations beyond one per
    /// order (double charges); views, rows beyond one per view.
    pub duplicates_in_sink: u64,
    /// Acknowledged events without their effect in the sink at the end.
    pub lost: u64,
    /// Acknowledged input records per second, from the first send to the
    /// last first delivery.
    pub records_per_sec: f64,
    /// End-to-end latency, send to effect (the sink write, or for
    /// exactly-once the commit), of each event's first delivery, in
    /// milliseconds.
    pub p50_ms: f64,
    /// 99th percentile of the same.
    pub p99_ms: f64,
    /// Faults that fired: lost acks, consumer crashes, broker restarts.
    pub faults: String,
    /// What the mode promises.
    pub guarantee: String,
    /// Whether it held.
    pub held: bool,
    /// Why it did not, or why the cell failed.
    pub problems: Vec<String>,
}

impl Row {
    /// The row of a cell that could not run.
    pub fn failed(_config: &LabConfig, scenario: Scenario, mode: LabMode, error: String) -> Row {
        Row {
            scenario,
            mode,
            label: mode.label(scenario),
            produced: 0,
            sink_rows: 0,
            duplicates_delivered: 0,
            duplicates_absorbed: 0,
            duplicates_in_sink: 0,
            lost: 0,
            records_per_sec: 0.0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            faults: String::new(),
            guarantee: mode.guarantee().into(),
            held: false,
            problems: vec![format!("the cell failed: {error}")],
        }
    }
}

/// Throughput ratios between the orders modes, measured in one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ModeRatios {
    /// Exactly-once ÷ at-least-once + unique sink.
    pub exactly_once_vs_at_least_once_sink: Option<f64>,
    /// Exactly-once ÷ at-least-once without a sink.
    pub exactly_once_vs_at_least_once_no_sink: Option<f64>,
    /// At-least-once without a sink ÷ at-least-once + unique sink.
    pub at_least_once_no_sink_vs_sink: Option<f64>,
}

/// A lab run's results.
#[derive(Clone, Debug, Serialize)]
pub struct LabReport {
    /// The fault schedule's seed.
    pub seed: u64,
    /// Input records per cell.
    pub records_per_cell: u64,
    /// One row per cell.
    pub rows: Vec<Row>,
    /// Orders throughput ratios.
    pub ratios: ModeRatios,
}

impl LabReport {
    /// Collects the rows and computes the ratios.
    pub fn new(config: &LabConfig, rows: Vec<Row>) -> LabReport {
        let rps = |mode: LabMode| {
            rows.iter()
                .find(|r| r.scenario == Scenario::Orders && r.mode == mode && r.problems.is_empty())
                .map_or(f64::NAN, |r| r.records_per_sec)
        };
        let (eos, sink, plain) = (
            rps(LabMode::ExactlyOnce),
            rps(LabMode::AtLeastOnceSink),
            rps(LabMode::AtLeastOnce),
        );
        LabReport {
            seed: config.seed,
            records_per_cell: config.records,
            ratios: ModeRatios {
                exactly_once_vs_at_least_once_sink: ratio(eos, sink),
                exactly_once_vs_at_least_once_no_sink: ratio(eos, plain),
                at_least_once_no_sink_vs_sink: ratio(plain, sink),
            },
            rows,
        }
    }

    /// Whether every mode kept its guarantee.
    pub fn all_held(&self) -> bool {
        !self.rows.is_empty() && self.rows.iter().all(|r| r.held)
    }

    /// The table, in markdown, with the ratios and any violation below it.
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| scenario | mode | produced | sink rows | dups delivered | dups absorbed | dups in sink | lost | records/s | p50 ms | p99 ms | guarantee |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {} |\n",
                r.scenario.name(),
                r.label,
                r.produced,
                r.sink_rows,
                r.duplicates_delivered,
                r.duplicates_absorbed,
                r.duplicates_in_sink,
                r.lost,
                r.records_per_sec,
                r.p50_ms,
                r.p99_ms,
                if r.held { "held" } else { "VIOLATED" },
            ));
        }
        s.push_str(&format!(
            "\nseed {}, {} records per cell. orders throughput: exactly-once ÷ (at-least-once + unique sink) = {}; \
             exactly-once ÷ (at-least-once, no sink) = {}; (at-least-once, no sink) ÷ (at-least-once + unique sink) = {}\n",
            self.seed,
            self.records_per_cell,
            fmt_ratio(self.ratios.exactly_once_vs_at_least_once_sink),
            fmt_ratio(self.ratios.exactly_once_vs_at_least_once_no_sink),
            fmt_ratio(self.ratios.at_least_once_no_sink_vs_sink),
        ));
        s.push_str("faults per cell:\n");
        for r in &self.rows {
            s.push_str(&format!(
                "  {} / {}: {}\n",
                r.scenario.name(),
                r.label,
                r.faults
            ));
        }
        for r in self.rows.iter().filter(|r| !r.held) {
            s.push_str(&format!(
                "VIOLATED {} / {} ({}): {}\n",
                r.scenario.name(),
                r.label,
                r.guarantee,
                r.problems.join("; ")
            ));
        }
        s
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serialises")
    }

    /// A bar chart: throughput per cell, and next to it the duplicates
    /// delivered, absorbed and left in the sink.
    pub fn chart_svg(&self, path: &Path) -> Result<(), LabChartError> {
        let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let (title, body) = root.split_vertically(36);
        title.draw_text(
            &format!(
                "ferry lab (seed {}, {} records per cell)",
                self.seed, self.records_per_cell
            ),
            &("sans-serif", 20).into_font().color(&BLACK),
            (10, 8),
        )?;
        let (left, right) = body.split_horizontally(550);
        let labels: Vec<String> = self
            .rows
            .iter()
            .map(|r| format!("{}: {}", r.scenario.name(), short(r.mode)))
            .collect();
        let throughput: Vec<f64> = self.rows.iter().map(|r| r.records_per_sec).collect();
        bars(
            &left,
            "records/s",
            &labels,
            &[("records/s", &throughput, 0)],
        )?;
        let delivered: Vec<f64> = self
            .rows
            .iter()
            .map(|r| r.duplicates_delivered as f64)
            .collect();
        let absorbed: Vec<f64> = self
            .rows
            .iter()
            .map(|r| r.duplicates_absorbed as f64)
            .collect();
        let in_sink: Vec<f64> = self
            .rows
            .iter()
            .map(|r| r.duplicates_in_sink as f64)
            .collect();
        bars(
            &right,
            "duplicates",
            &labels,
            &[
                ("delivered", &delivered, 1),
                ("absorbed", &absorbed, 2),
                ("in sink", &in_sink, 3),
            ],
        )?;
        root.present()?;
        Ok(())
    }
}

/// Chart errors.
pub type LabChartError = Box<dyn std::error::Error + Send + Sync>;

fn short(mode: LabMode) -> &'static str {
    match mode {
        LabMode::ExactlyOnce => "EOS",
        LabMode::AtLeastOnceSink => "ALO+sink",
        LabMode::AtLeastOnce => "ALO",
    }
}

/// One panel of grouped bars: a group per label, a bar per series.
fn bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    labels: &[String],
    series: &[(&str, &[f64], usize)],
) -> Result<(), LabChartError>
where
    DB::ErrorType: 'static,
{
    let n = labels.len() as u32;
    let width = series.len() as f64;
    let top = series
        .iter()
        .flat_map(|(_, v, _)| v.iter().copied())
        .fold(0.0_f64, f64::max)
        .max(1.0)
        * 1.25;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..f64::from(n.max(1)), 0f64..top)?;
    chart.configure_mesh().disable_x_mesh().x_labels(0).draw()?;
    for (i, label) in labels.iter().enumerate() {
        chart.draw_series(std::iter::once(Text::new(
            label.clone(),
            (i as f64 + 0.5, 0.0),
            ("sans-serif", 11)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        )))?;
    }
    for (s, (name, values, color)) in series.iter().enumerate() {
        let style = Palette99::pick(*color).filled();
        let x0 = |i: usize| i as f64 + 0.1 + 0.8 * s as f64 / width;
        chart
            .draw_series(
                values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Rectangle::new([(x0(i), 0.0), (x0(i) + 0.8 / width, *v)], style)),
            )?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], style));
        chart.draw_series(values.iter().enumerate().map(|(i, v)| {
            Text::new(
                format!("{v:.0}"),
                (x0(i) + 0.4 / width, *v),
                ("sans-serif", 10)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        }))?;
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}
