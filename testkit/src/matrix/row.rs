//! A run's outcome: the printed matrix row and the cell report.

use super::*;

/// One row of the printed matrix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatrixRow {
    /// The mode.
    pub mode: DeliveryMode,
    /// The fault classes, joined with `+`.
    pub faults: String,
    /// Records acknowledged to the producers (for exactly-once: committed
    /// into the source topic).
    pub records: usize,
    /// Lost writes.
    pub lost: usize,
    /// Values stored twice.
    pub duplicated: usize,
    /// Values one group delivered twice.
    pub redelivered: usize,
    /// Aborted reads (G1a).
    pub aborted_reads: usize,
    /// Every other anomaly (inconsistent offsets, backwards polls and
    /// sends, poll skips).
    pub other: usize,
    /// Faults injected.
    pub faults_injected: u64,
    /// Whether the mode's verdict is valid.
    pub valid: bool,
}

impl MatrixRow {
    /// The table header, aligned with [`MatrixRow`]'s `Display`.
    pub fn header() -> String {
        format!(
            "{:<13} {:<16} {:>7} {:>5} {:>10} {:>11} {:>13} {:>5} {:>6}  {}",
            "mode",
            "fault",
            "records",
            "lost",
            "duplicated",
            "redelivered",
            "aborted-reads",
            "other",
            "faults",
            "verdict"
        )
    }

    /// Header, a rule and the rows.
    pub fn table(rows: &[MatrixRow]) -> String {
        let header = MatrixRow::header();
        let mut out = format!("{header}\n{}\n", "-".repeat(header.len()));
        for r in rows {
            out.push_str(&r.to_string());
            out.push('\n');
        }
        out
    }
}

impl std::fmt::Display for MatrixRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<13} {:<16} {:>7} {:>5} {:>10} {:>11} {:>13} {:>5} {:>6}  {}",
            self.mode.name(),
            self.faults,
            self.records,
            self.lost,
            self.duplicated,
            self.redelivered,
            self.aborted_reads,
            self.other,
            self.faults_injected,
            if self.valid { "valid" } else { "INVALID" }
        )
    }
}

/// What a [`Run`] found.
#[derive(Debug)]
pub struct CellReport {
    /// The checker's report (both histories' anomalies, for exactly-once).
    pub report: Report,
    /// The verdict for the run's mode.
    pub verdict: Verdict,
    /// The matrix row.
    pub row: MatrixRow,
    /// Every fault injected, in order, for the reader.
    pub injected: Vec<String>,
    /// The histories as JSON lines, for a bug report.
    pub histories: Vec<String>,
}
