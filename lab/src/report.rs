//! The lab's results: one [`Round`] per run of a cell, one [`Row`] per
//! scenario, mode and [`Faults`] column summing its rounds up, and the
//! [`Comparison`]s between modes, as a table, JSON and an SVG bar chart.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;

use super::{Faults, LabConfig, LabMode, Scenario};
use ferry_bench::{fmt_ratio, ratio};

/// What one round of a cell measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Round {
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
    /// Seconds from the first send to the last first delivery.
    pub secs: f64,
    /// End-to-end latency, send to effect (the sink write, or for
    /// exactly-once the commit), of each event's first delivery, in
    /// milliseconds.
    pub p50_ms: f64,
    /// 99th percentile of the same.
    pub p99_ms: f64,
    /// Produce responses the proxy dropped.
    pub lost_acks: u64,
    /// Consumer crashes before the commit.
    pub crashes: u64,
    /// Broker restarts (0 or 1).
    pub broker_restarts: u64,
    /// The faults that fired, in words.
    pub faults: String,
    /// Why the mode's guarantee did not hold in this round.
    pub problems: Vec<String>,
}

/// One cell's measurements: a scenario in one mode and one column, over
/// its rounds. Throughput and latency are the **median** of the rounds
/// (of the two middle ones, for an even count); the damage counts
/// (`duplicates_*`, `lost`, `sink_rows`) and the fault counts are each the
/// **most** any round had, the worst round for that count; `produced` is
/// the fewest any round had acknowledged. A round that failed to run
/// counts in `rounds` and `problems` only.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The pipeline.
    pub scenario: Scenario,
    /// The delivery mode.
    pub mode: LabMode,
    /// The mode as the table shows it.
    pub label: String,
    /// `"fault-free"` or `"faulted"`.
    pub column: Faults,
    /// Input records acknowledged by the broker (fewest in a round).
    pub produced: u64,
    /// Rows in the sink at the end (most in a round).
    pub sink_rows: u64,
    /// Deliveries of an event the group had delivered before (most in a
    /// round).
    pub duplicates_delivered: u64,
    /// Repeats the sink absorbed (most in a round).
    pub duplicates_absorbed: u64,
    /// Extra effects in the sink (most in a round).
    pub duplicates_in_sink: u64,
    /// Acknowledged events without their effect (most in a round).
    pub lost: u64,
    /// Median acknowledged input records per second.
    pub records_per_sec: f64,
    /// Median round duration in seconds, first send to last first
    /// delivery.
    pub secs: f64,
    /// Median of the rounds' median send-to-effect latency, milliseconds.
    pub p50_ms: f64,
    /// Median of the rounds' 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Rounds run, failed ones included.
    pub rounds: u32,
    /// Each round's records per second, in order (failed rounds left out).
    pub rounds_records_per_sec: Vec<f64>,
    /// Each round's duration in seconds, in order (failed rounds left out).
    pub rounds_secs: Vec<f64>,
    /// Produce responses lost (most in a round).
    pub lost_acks: u64,
    /// Consumer crashes before the commit (most in a round).
    pub crashes: u64,
    /// Broker restarts (most in a round).
    pub broker_restarts: u64,
    /// Faults that fired, in words: one description, or one per round
    /// where the rounds differ.
    pub faults: String,
    /// What the mode promises.
    pub guarantee: String,
    /// Whether it held in every round.
    pub held: bool,
    /// Why it did not, or why a round failed, prefixed with the round when
    /// there are several.
    pub problems: Vec<String>,
}

/// The median of `values`: the middle one, or the mean of the two middle
/// ones; NaN for none.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Row {
    /// Sums up a cell's rounds, in order; an `Err` is a round that failed
    /// to run.
    pub fn from_rounds(
        scenario: Scenario,
        mode: LabMode,
        column: Faults,
        rounds: Vec<Result<Round, String>>,
    ) -> Row {
        let several = rounds.len() > 1;
        let prefix = |i: usize| {
            if several {
                format!("round {}: ", i + 1)
            } else {
                String::new()
            }
        };
        let mut problems = Vec::new();
        for (i, round) in rounds.iter().enumerate() {
            match round {
                Ok(r) => problems.extend(r.problems.iter().map(|p| format!("{}{p}", prefix(i)))),
                Err(e) => problems.push(format!("{}the cell failed: {e}", prefix(i))),
            }
        }
        let ok: Vec<&Round> = rounds.iter().filter_map(|r| r.as_ref().ok()).collect();
        let most = |f: fn(&Round) -> u64| ok.iter().map(|r| f(r)).max().unwrap_or(0);
        let mid = |f: fn(&Round) -> f64| {
            if ok.is_empty() {
                0.0
            } else {
                median(&ok.iter().map(|r| f(r)).collect::<Vec<_>>())
            }
        };
        let faults = {
            let first = ok.first().map_or("", |r| r.faults.as_str());
            if ok.iter().all(|r| r.faults == first) {
                first.to_owned()
            } else {
                rounds
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| {
                        r.as_ref()
                            .ok()
                            .map(|r| format!("{}{}", prefix(i), r.faults))
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        };
        Row {
            scenario,
            mode,
            label: mode.label(scenario),
            column,
            produced: ok.iter().map(|r| r.produced).min().unwrap_or(0),
            sink_rows: most(|r| r.sink_rows),
            duplicates_delivered: most(|r| r.duplicates_delivered),
            duplicates_absorbed: most(|r| r.duplicates_absorbed),
            duplicates_in_sink: most(|r| r.duplicates_in_sink),
            lost: most(|r| r.lost),
            records_per_sec: mid(|r| r.records_per_sec),
            secs: mid(|r| r.secs),
            p50_ms: mid(|r| r.p50_ms),
            p99_ms: mid(|r| r.p99_ms),
            rounds: rounds.len() as u32,
            rounds_records_per_sec: ok.iter().map(|r| r.records_per_sec).collect(),
            rounds_secs: ok.iter().map(|r| r.secs).collect(),
            lost_acks: most(|r| r.lost_acks),
            crashes: most(|r| r.crashes),
            broker_restarts: most(|r| r.broker_restarts),
            faults,
            guarantee: mode.guarantee().into(),
            held: !rounds.is_empty() && problems.is_empty(),
            problems,
        }
    }
}

/// What faults did to a mode: its faulted row's damage, worst round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Damage {
    /// Duplicates delivered to the consumer.
    pub duplicates_delivered: u64,
    /// Duplicate effects left in the sink.
    pub duplicates_in_sink: u64,
    /// Acknowledged events lost.
    pub lost: u64,
    /// Whether the guarantee held in every faulted round.
    pub held: bool,
}

impl Damage {
    fn of(row: &Row) -> Damage {
        Damage {
            duplicates_delivered: row.duplicates_delivered,
            duplicates_in_sink: row.duplicates_in_sink,
            lost: row.lost,
            held: row.held,
        }
    }
}

/// One pair of [`Scenario::comparisons`]: what the numerator mode costs
/// against the denominator, from the fault-free column, and what faults
/// did to each, from the faulted column.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// Its key in [`LabReport::ratios`]: `<numerator>_vs_<denominator>`
    /// from the modes' [`key`](super::ModeSpec::key)s, prefixed with
    /// `<scenario>_` outside orders.
    pub key: String,
    /// The scenario both modes ran.
    pub scenario: Scenario,
    /// The mode on top of the ratio.
    pub numerator: LabMode,
    /// The mode below.
    pub denominator: LabMode,
    /// Fault-free throughput, numerator ÷ denominator (medians of the
    /// rounds): the cost. `None` unless both fault-free rows held.
    pub throughput_ratio: Option<f64>,
    /// The same from the faulted column, for reference: the fault
    /// schedule decides it as much as the modes do. `None` unless both
    /// faulted rows held.
    pub throughput_ratio_faulted: Option<f64>,
    /// The numerator's damage under faults.
    pub numerator_damage: Option<Damage>,
    /// The denominator's damage under faults.
    pub denominator_damage: Option<Damage>,
}

impl Comparison {
    fn new(scenario: Scenario, numerator: LabMode, denominator: LabMode, rows: &[Row]) -> Self {
        let row = |mode: LabMode, column: Faults| {
            rows.iter()
                .find(|r| r.scenario == scenario && r.mode == mode && r.column == column)
        };
        let rps = |mode, column| {
            row(mode, column)
                .filter(|r| r.held && !r.rounds_records_per_sec.is_empty())
                .map_or(f64::NAN, |r| r.records_per_sec)
        };
        let throughput = |column| ratio(rps(numerator, column), rps(denominator, column));
        let (n, d) = (numerator.spec().key, denominator.spec().key);
        Comparison {
            key: match scenario {
                Scenario::Orders => format!("{n}_vs_{d}"),
                _ => format!("{}_{n}_vs_{d}", scenario.name()),
            },
            scenario,
            numerator,
            denominator,
            throughput_ratio: throughput(Faults::None),
            throughput_ratio_faulted: throughput(Faults::Seeded),
            numerator_damage: row(numerator, Faults::Seeded).map(Damage::of),
            denominator_damage: row(denominator, Faults::Seeded).map(Damage::of),
        }
    }

    /// `numerator ÷ denominator`, in words.
    fn title(&self) -> String {
        format!(
            "{}: {} ÷ {}",
            self.scenario.name(),
            self.numerator.label(self.scenario),
            self.denominator.label(self.scenario)
        )
    }
}

/// A lab run's results.
#[derive(Clone, Debug, Serialize)]
pub struct LabReport {
    /// The fault schedule's seed.
    pub seed: u64,
    /// Input records per cell and round.
    pub records_per_cell: u64,
    /// Rounds per cell.
    pub rounds: u32,
    /// Cells whose median round was shorter than this many seconds are
    /// flagged in the table.
    pub min_cell_secs: f64,
    /// One row per scenario, mode and column: each mode's fault-free row,
    /// then its faulted one.
    pub rows: Vec<Row>,
    /// The cost ratios: each comparison's key → its fault-free throughput
    /// ratio ([`Comparison::throughput_ratio`]), `null` when not measured.
    pub ratios: BTreeMap<String, Option<f64>>,
    /// Every comparison in full, in [`Scenario::comparisons`] order.
    pub comparisons: Vec<Comparison>,
    /// Why the PostgreSQL modes did not run, when they did not.
    pub postgres_skipped: Option<String>,
}

impl LabReport {
    /// Collects the rows and compares the modes of each scenario run.
    pub fn new(config: &LabConfig, rows: Vec<Row>) -> LabReport {
        let comparisons: Vec<Comparison> = config
            .scenarios()
            .into_iter()
            .flat_map(|s| s.comparisons().iter().map(move |&(n, d)| (s, n, d)))
            .map(|(s, n, d)| Comparison::new(s, n, d, &rows))
            .collect();
        LabReport {
            seed: config.seed,
            records_per_cell: config.records,
            rounds: config.rounds.max(1),
            min_cell_secs: config.min_cell_secs,
            ratios: comparisons
                .iter()
                .map(|c| (c.key.clone(), c.throughput_ratio))
                .collect(),
            comparisons,
            rows,
            postgres_skipped: None,
        }
    }

    /// Whether every mode kept its guarantee, in both columns.
    pub fn all_held(&self) -> bool {
        !self.rows.is_empty() && self.rows.iter().all(|r| r.held)
    }

    /// The row of a scenario, mode and column.
    pub fn row(&self, scenario: Scenario, mode: LabMode, column: Faults) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.scenario == scenario && r.mode == mode && r.column == column)
    }

    /// The table, in markdown, with the comparisons, the faults and any
    /// violation below it.
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| scenario | mode | faults | produced | sink rows | dups delivered | dups absorbed | dups in sink | lost | records/s | records/s per round | secs | p50 ms | p99 ms | guarantee |\n\
             |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for r in &self.rows {
            let per_round: Vec<String> = r
                .rounds_records_per_sec
                .iter()
                .map(|x| format!("{x:.0}"))
                .collect();
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {} |\n",
                r.scenario.name(),
                r.label,
                r.column.label(),
                r.produced,
                r.sink_rows,
                r.duplicates_delivered,
                r.duplicates_absorbed,
                r.duplicates_in_sink,
                r.lost,
                r.records_per_sec,
                per_round.join(" / "),
                r.secs,
                r.p50_ms,
                r.p99_ms,
                if r.held { "held" } else { "VIOLATED" },
            ));
        }
        s.push_str(&format!(
            "\nseed {}, {} records per cell, {} round{} per cell: records/s, secs and latency are the median round's; \
             produced is the fewest, and the duplicate, lost and fault counts the most, in any round.\n",
            self.seed,
            self.records_per_cell,
            self.rounds,
            if self.rounds == 1 { "" } else { "s" },
        ));
        if !self.comparisons.is_empty() {
            s.push_str(
                "cost (fault-free throughput ratio; faulted in brackets, which the fault schedule decides) \
                 and damage under faults (numerator vs denominator):\n",
            );
        }
        for c in &self.comparisons {
            let damage = match (c.numerator_damage, c.denominator_damage) {
                (Some(n), Some(d)) => format!(
                    "dups delivered {} vs {}, dups in sink {} vs {}, lost {} vs {}",
                    n.duplicates_delivered,
                    d.duplicates_delivered,
                    n.duplicates_in_sink,
                    d.duplicates_in_sink,
                    n.lost,
                    d.lost
                ),
                _ => "not measured".into(),
            };
            s.push_str(&format!(
                "  {} = {} ({}); {}\n",
                c.title(),
                fmt_ratio(c.throughput_ratio),
                fmt_ratio(c.throughput_ratio_faulted),
                damage
            ));
        }
        s.push_str("faults per cell:\n");
        for r in &self.rows {
            s.push_str(&format!(
                "  {} / {} / {}: {}\n",
                r.scenario.name(),
                r.label,
                r.column.label(),
                r.faults
            ));
        }
        let short: Vec<String> = self
            .rows
            .iter()
            .filter(|r| !r.rounds_secs.is_empty() && r.secs < self.min_cell_secs)
            .map(|r| format!("{} / {} / {}", r.scenario.name(), r.label, r.column.label()))
            .collect();
        if !short.is_empty() {
            s.push_str(&format!(
                "note: the median round lasted under {} s in {}: a short sample of throughput (raise --records)\n",
                self.min_cell_secs,
                short.join(", ")
            ));
        }
        if let Some(why) = &self.postgres_skipped {
            s.push_str(&format!(
                "note: the PostgreSQL modes were skipped: {why} (give --postgres URL, or install PostgreSQL)\n"
            ));
        }
        for r in self.rows.iter().filter(|r| !r.held) {
            s.push_str(&format!(
                "VIOLATED {} / {} / {} ({}): {}\n",
                r.scenario.name(),
                r.label,
                r.column.label(),
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

    /// A grouped bar chart, one group per scenario and mode: on the left
    /// the median throughput fault-free and faulted, with each round's
    /// range as a whisker; on the right the duplicates delivered and left
    /// in the sink, in both columns.
    pub fn chart_svg(&self, path: &Path) -> Result<(), LabChartError> {
        let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let (title, body) = root.split_vertically(36);
        title.draw_text(
            &format!(
                "ferry lab (seed {}, {} records per cell, {})",
                self.seed,
                self.records_per_cell,
                if self.rounds == 1 {
                    "1 round".to_owned()
                } else {
                    format!("{} rounds: median, whiskers the rounds' range", self.rounds)
                }
            ),
            &("sans-serif", 18).into_font().color(&BLACK),
            (10, 8),
        )?;
        let (left, right) = body.split_horizontally(600);
        let mut cells: Vec<(Scenario, LabMode)> = Vec::new();
        for r in &self.rows {
            if !cells.contains(&(r.scenario, r.mode)) {
                cells.push((r.scenario, r.mode));
            }
        }
        let labels: Vec<String> = cells
            .iter()
            .map(|(s, m)| format!("{}: {}", s.name(), m.spec().short))
            .collect();
        let column = |column: Faults, f: fn(&Row) -> f64| -> Vec<f64> {
            cells
                .iter()
                .map(|&(s, m)| self.row(s, m, column).map_or(0.0, f))
                .collect()
        };
        let spread = |column: Faults| -> Vec<Option<(f64, f64)>> {
            cells
                .iter()
                .map(|&(s, m)| {
                    let v = &self.row(s, m, column)?.rounds_records_per_sec;
                    let lo = v.iter().copied().reduce(f64::min)?;
                    let hi = v.iter().copied().reduce(f64::max)?;
                    (v.len() > 1).then_some((lo, hi))
                })
                .collect()
        };
        bars(
            &left,
            "records/s",
            &labels,
            &[
                Series {
                    name: "fault-free",
                    values: column(Faults::None, |r| r.records_per_sec),
                    color: 0,
                    spread: spread(Faults::None),
                },
                Series {
                    name: "faulted",
                    values: column(Faults::Seeded, |r| r.records_per_sec),
                    color: 1,
                    spread: spread(Faults::Seeded),
                },
            ],
        )?;
        let series = |name, column_, f: fn(&Row) -> f64, color| Series {
            name,
            values: column(column_, f),
            color,
            spread: Vec::new(),
        };
        bars(
            &right,
            "duplicates (worst round)",
            &labels,
            &[
                series(
                    "delivered, fault-free",
                    Faults::None,
                    |r| r.duplicates_delivered as f64,
                    2,
                ),
                series(
                    "delivered, faulted",
                    Faults::Seeded,
                    |r| r.duplicates_delivered as f64,
                    3,
                ),
                series(
                    "in sink, fault-free",
                    Faults::None,
                    |r| r.duplicates_in_sink as f64,
                    4,
                ),
                series(
                    "in sink, faulted",
                    Faults::Seeded,
                    |r| r.duplicates_in_sink as f64,
                    5,
                ),
            ],
        )?;
        root.present()?;
        Ok(())
    }
}

/// Chart errors.
pub type LabChartError = Box<dyn std::error::Error + Send + Sync>;

/// One series of bars: a value per group, and optionally a whisker from
/// low to high.
struct Series<'a> {
    name: &'a str,
    values: Vec<f64>,
    color: usize,
    spread: Vec<Option<(f64, f64)>>,
}

/// A bar's label: whole numbers, thousands as `k` past 10 000.
fn compact(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

/// One panel of grouped bars: a group per label, a bar per series.
fn bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    labels: &[String],
    series: &[Series<'_>],
) -> Result<(), LabChartError>
where
    DB::ErrorType: 'static,
{
    let n = labels.len() as u32;
    let width = series.len() as f64;
    let top = series
        .iter()
        .flat_map(|s| {
            s.values
                .iter()
                .copied()
                .chain(s.spread.iter().flatten().map(|(_, hi)| *hi))
        })
        .fold(0.0_f64, f64::max)
        .max(1.0)
        // Headroom for the value labels and, above them, the legend.
        * (1.3 + 0.08 * width);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..f64::from(n.max(1)), 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_label_formatter(&|v| {
            if v.fract() == 0.0 || *v >= 10_000.0 {
                compact(*v)
            } else {
                format!("{v:.1}")
            }
        })
        .draw()?;
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
    for (k, s) in series.iter().enumerate() {
        let style = Palette99::pick(s.color).filled();
        let x0 = |i: usize| i as f64 + 0.1 + 0.8 * k as f64 / width;
        let mid = |i: usize| x0(i) + 0.4 / width;
        chart
            .draw_series(
                s.values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Rectangle::new([(x0(i), 0.0), (x0(i) + 0.8 / width, *v)], style)),
            )?
            .label(s.name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], style));
        let cap = 0.1 / width;
        for (i, range) in s.spread.iter().enumerate() {
            if let Some((lo, hi)) = *range {
                chart.draw_series([
                    PathElement::new(vec![(mid(i), lo), (mid(i), hi)], BLACK),
                    PathElement::new(vec![(mid(i) - cap, lo), (mid(i) + cap, lo)], BLACK),
                    PathElement::new(vec![(mid(i) - cap, hi), (mid(i) + cap, hi)], BLACK),
                ])?;
            }
        }
        chart.draw_series(s.values.iter().enumerate().map(|(i, v)| {
            let top = s.spread.get(i).copied().flatten().map_or(*v, |(_, hi)| hi);
            Text::new(
                compact(*v),
                (mid(i), top),
                ("sans-serif", 10)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(rps: f64, dups: u64, problems: &[&str]) -> Round {
        Round {
            produced: 100,
            sink_rows: 100 + dups,
            duplicates_delivered: dups,
            duplicates_in_sink: dups,
            records_per_sec: rps,
            secs: 100.0 / rps,
            p50_ms: rps / 10.0,
            p99_ms: rps / 5.0,
            faults: "none".into(),
            problems: problems.iter().map(|p| p.to_string()).collect(),
            ..Round::default()
        }
    }

    #[test]
    fn median_of_odd_even_and_no_values() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn a_row_takes_the_median_rate_and_the_worst_damage() {
        let row = Row::from_rounds(
            Scenario::Orders,
            LabMode::AtLeastOnce,
            Faults::Seeded,
            vec![
                Ok(round(300.0, 5, &[])),
                Ok(round(100.0, 9, &[])),
                Ok(round(200.0, 1, &[])),
            ],
        );
        assert_eq!(row.records_per_sec, 200.0);
        assert_eq!((row.p50_ms, row.p99_ms), (20.0, 40.0));
        assert_eq!(row.rounds_records_per_sec, vec![300.0, 100.0, 200.0]);
        assert_eq!(row.rounds_secs.len(), 3);
        assert_eq!(row.secs, 0.5);
        assert_eq!((row.duplicates_delivered, row.sink_rows), (9, 109));
        assert_eq!((row.rounds, row.faults.as_str()), (3, "none"));
        assert!(row.held && row.problems.is_empty());
    }

    #[test]
    fn a_row_holds_only_if_every_round_held_and_ran() {
        let broke = Row::from_rounds(
            Scenario::Views,
            LabMode::AtLeastOnceSink,
            Faults::None,
            vec![Ok(round(100.0, 0, &[])), Ok(round(100.0, 0, &["1 lost"]))],
        );
        assert!(!broke.held);
        assert_eq!(broke.problems, vec!["round 2: 1 lost".to_string()]);
        let failed = Row::from_rounds(
            Scenario::Views,
            LabMode::AtLeastOnceSink,
            Faults::None,
            vec![Ok(round(100.0, 0, &[])), Err("no broker".into())],
        );
        assert!(!failed.held);
        assert_eq!(failed.rounds, 2);
        assert_eq!(failed.rounds_records_per_sec, vec![100.0]);
        assert_eq!(failed.problems, vec!["round 2: the cell failed: no broker"]);
        let none = Row::from_rounds(
            Scenario::Views,
            LabMode::AtLeastOnceSink,
            Faults::None,
            vec![],
        );
        assert!(!none.held);
    }

    fn cell(mode: LabMode, column: Faults, rps: f64, dups: u64) -> Row {
        Row::from_rounds(
            Scenario::Orders,
            mode,
            column,
            vec![Ok(round(rps, dups, &[]))],
        )
    }

    #[test]
    fn cost_comes_from_the_fault_free_column_and_damage_from_the_faulted_one() {
        let config = LabConfig {
            scenarios: vec![Scenario::Orders],
            ..LabConfig::fast(1)
        };
        let rows = vec![
            cell(LabMode::ExactlyOnce, Faults::None, 100.0, 0),
            cell(LabMode::ExactlyOnce, Faults::Seeded, 175.0, 3),
            cell(LabMode::AtLeastOnceSink, Faults::None, 80.0, 0),
            cell(LabMode::AtLeastOnceSink, Faults::Seeded, 100.0, 40),
            cell(LabMode::AtLeastOnce, Faults::None, 50.0, 0),
            Row::from_rounds(
                Scenario::Orders,
                LabMode::AtLeastOnce,
                Faults::Seeded,
                vec![Ok(round(60.0, 30, &["did not catch up"]))],
            ),
        ];
        let report = LabReport::new(&config, rows);
        let r = |k: &str| report.ratios[k];
        assert_eq!(r("exactly_once_vs_at_least_once_no_sink"), Some(2.0));
        assert_eq!(r("at_least_once_sink_vs_exactly_once"), Some(0.8));
        assert_eq!(r("exactly_once_vs_at_least_once_sink"), Some(1.25));
        assert_eq!(
            r("at_least_once_no_sink_vs_at_least_once_sink"),
            Some(0.625)
        );
        assert_eq!(report.ratios.len(), Scenario::Orders.comparisons().len());
        let c = &report.comparisons[1];
        assert_eq!(c.key, "at_least_once_sink_vs_exactly_once");
        assert_eq!(c.throughput_ratio_faulted, Some(100.0 / 175.0));
        assert_eq!(c.numerator_damage.unwrap().duplicates_delivered, 40);
        assert_eq!(c.denominator_damage.unwrap().duplicates_in_sink, 3);
        // A row that broke its guarantee gives no ratio, but its damage.
        let plain = &report.comparisons[0];
        assert_eq!(plain.throughput_ratio_faulted, None);
        assert_eq!(plain.throughput_ratio, Some(2.0));
        let d = plain.denominator_damage.unwrap();
        assert_eq!((d.duplicates_delivered, d.held), (30, false));
        let table = report.table();
        assert!(
            table.contains("| orders | exactly-once | fault-free |"),
            "{table}"
        );
        assert!(
            table.contains("| orders | exactly-once | faulted |"),
            "{table}"
        );
        assert!(table.contains("= 2.00 (n/a)"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["rows"][1]["column"], "faulted");
        assert_eq!(json["rows"][0]["column"], "fault-free");
        assert_eq!(json["ratios"]["exactly_once_vs_at_least_once_sink"], 1.25);
        assert!(json["ratios"]["exactly_once_vs_at_least_once_no_sink"].is_number());
    }
}
