//! `ferry bench restart`: do restart time and the size of the broker's own
//! logs follow the live state, or the history? One group commits the same
//! partitions again and again (each commit one `CommitOffsets` of every
//! partition, as a consumer commits its assignment), straight into the
//! broker core; then the broker is opened again, once after a crash (its
//! state dropped without a close) and once after a clean close, and each
//! open is timed. Run for a small and a large number of commits, the
//! report gives large ÷ small for the `__offsets` log's size and for both
//! restart times: near 1 when the log is bounded by its state, near the
//! commit ratio when it holds the history.

use std::path::Path;
use std::time::Instant;

use ferry_broker::{BrokerConfig, BrokerState, CommitFence, FlushPolicy};
use serde::{Deserialize, Serialize};

use crate::ratio;
use crate::workload::BenchError;

/// The settings of a run.
#[derive(Clone, Debug)]
pub struct RestartBenchConfig {
    /// Commit counts, one measurement each; the ratios are last ÷ first.
    pub commits: Vec<u64>,
    /// Partitions in every commit.
    pub partitions: u32,
    /// The broker's flush policy while committing (the restarts are timed
    /// the same under every policy).
    pub flush: FlushPolicy,
    /// Where the broker's temporary data dirs go.
    pub parent: Option<std::path::PathBuf>,
}

impl Default for RestartBenchConfig {
    fn default() -> RestartBenchConfig {
        RestartBenchConfig {
            commits: vec![10_000, 1_000_000],
            partitions: 100,
            flush: FlushPolicy::Never,
            parent: None,
        }
    }
}

/// One commit count's measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestartRun {
    pub commits: u64,
    /// Offset records written (commits × partitions).
    pub records: u64,
    /// Seconds the commits took.
    pub commit_secs: f64,
    /// Data bytes left in `__offsets`, and its segment files.
    pub offsets_log_bytes: u64,
    pub offsets_log_segments: usize,
    /// Bytes `__offsets` takes on disk (allocated blocks, preallocation
    /// included).
    pub offsets_disk_bytes: u64,
    /// Milliseconds to open the broker after a crash, and after a clean
    /// close.
    pub restart_after_crash_ms: f64,
    pub restart_after_close_ms: f64,
    /// Whether both restarts found every partition at the last commit.
    pub offsets_intact: bool,
}

/// What a run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestartBench {
    pub partitions: u32,
    pub flush: String,
    pub runs: Vec<RestartRun>,
    /// Last ÷ first: the `__offsets` log's data bytes, and both restarts.
    pub log_bytes_ratio: Option<f64>,
    pub restart_after_crash_ratio: Option<f64>,
    pub restart_after_close_ratio: Option<f64>,
    pub seconds: f64,
}

fn config(dir: &Path, flush: FlushPolicy) -> BrokerConfig {
    let mut c = BrokerConfig::ephemeral()
        .with_data_dir(dir)
        .with_flush(flush);
    // The partitions stay empty: segments of the internal logs' size
    // (not the default 64 MiB) keep their hundred preallocated files
    // small, and leave the internal logs at their default.
    c.log.segment_bytes = ferry_broker::INTERNAL_SEGMENT_BYTES;
    c
}

/// Allocated bytes of the files under `dir`.
fn disk_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        total += entry?.metadata()?.blocks() * 512;
    }
    Ok(total)
}

/// Opens the broker in `dir`, timed, and checks every partition's offset.
fn reopen(
    dir: &Path,
    flush: FlushPolicy,
    partitions: u32,
    expected: u64,
) -> Result<(BrokerState, f64, bool), BenchError> {
    let started = Instant::now();
    let state = BrokerState::open(config(dir, flush))?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let offsets = state.fetch_offsets("g", "t", false)?;
    let intact = offsets.len() == partitions as usize
        && offsets.iter().all(|&(_, offset)| offset == expected);
    Ok((state, ms, intact))
}

impl RestartBench {
    pub fn run(
        config: &RestartBenchConfig,
        mut on_commit: impl FnMut(u64, u64),
    ) -> Result<RestartBench, BenchError> {
        if config.commits.is_empty() || config.commits.contains(&0) || config.partitions == 0 {
            return Err("the commit counts and the partition count must be positive".into());
        }
        let started = Instant::now();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let _runtime = rt.enter();
        let mut runs = Vec::new();
        for &commits in &config.commits {
            let tmp = crate::temp_dir("ferry-bench-restart-", config.parent.as_deref())?;
            let dir = tmp.path().join("data");
            let state = BrokerState::open(self::config(&dir, config.flush))?;
            state.create_topic("t", config.partitions)?;
            let commit_started = Instant::now();
            rt.block_on(async {
                let fence = CommitFence::default();
                let mut offsets: Vec<(String, u32, u64)> =
                    (0..config.partitions).map(|p| ("t".into(), p, 0)).collect();
                for i in 0..commits {
                    for o in &mut offsets {
                        o.2 = i;
                    }
                    state.commit_offsets("g", &offsets, &fence).await?;
                    if i % 1000 == 0 {
                        on_commit(i, commits);
                    }
                }
                Ok::<(), BenchError>(())
            })?;
            let commit_secs = commit_started.elapsed().as_secs_f64();
            let [offsets_log, _] = state.internal_logs();
            let offsets_disk_bytes = disk_bytes(&dir.join("__offsets"))?;
            // A crash: the state is dropped without a close.
            drop(state);
            let last = commits - 1;
            let (state, crash_ms, crash_ok) = reopen(&dir, config.flush, config.partitions, last)?;
            state.close();
            drop(state);
            let (state, close_ms, close_ok) = reopen(&dir, config.flush, config.partitions, last)?;
            state.close();
            runs.push(RestartRun {
                commits,
                records: commits * u64::from(config.partitions),
                commit_secs,
                offsets_log_bytes: offsets_log.bytes,
                offsets_log_segments: offsets_log.segments,
                offsets_disk_bytes,
                restart_after_crash_ms: crash_ms,
                restart_after_close_ms: close_ms,
                offsets_intact: crash_ok && close_ok,
            });
        }
        let (first, last) = (&runs[0], &runs[runs.len() - 1]);
        Ok(RestartBench {
            partitions: config.partitions,
            flush: config.flush.to_string(),
            log_bytes_ratio: ratio(
                last.offsets_log_bytes as f64,
                first.offsets_log_bytes as f64,
            ),
            restart_after_crash_ratio: ratio(
                last.restart_after_crash_ms,
                first.restart_after_crash_ms,
            ),
            restart_after_close_ratio: ratio(
                last.restart_after_close_ms,
                first.restart_after_close_ms,
            ),
            runs,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Runs whose restarts did not find every partition at its last
    /// commit.
    pub fn failed(&self) -> u64 {
        self.runs.iter().filter(|r| !r.offsets_intact).count() as u64
    }

    /// The report as a markdown table.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "Offset commits of the same {} partitions by one group (fsync `{}` while committing)\n\n\
             | commits | records | commit s | `__offsets` data MB | segments | on disk MB | restart after crash ms | restart after close ms | offsets intact |\n\
             |--:|--:|--:|--:|--:|--:|--:|--:|---|\n",
            self.partitions, self.flush
        );
        for r in &self.runs {
            out.push_str(&format!(
                "| {} | {} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {} |\n",
                r.commits,
                r.records,
                r.commit_secs,
                r.offsets_log_bytes as f64 / 1e6,
                r.offsets_log_segments,
                r.offsets_disk_bytes as f64 / 1e6,
                r.restart_after_crash_ms,
                r.restart_after_close_ms,
                if r.offsets_intact { "yes" } else { "NO" },
            ));
        }
        let f = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.2}"));
        let (first, last) = (&self.runs[0], &self.runs[self.runs.len() - 1]);
        out.push_str(&format!(
            "\n{} ÷ {} commits: `__offsets` size {}, restart after crash {}, after close {}\n",
            last.commits,
            first.commits,
            f(self.log_bytes_ratio),
            f(self.restart_after_crash_ratio),
            f(self.restart_after_close_ratio),
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_restarts_find_every_partition_at_its_last_commit() {
        // 40 and 2,000 commits of 100 partitions: about 180 KB and 9 MB of
        // history. The internal segment (16 MiB) is larger than both, so
        // this checks the offsets survive both restarts and the report's
        // arithmetic; the bound itself is checked by the broker's tests on
        // small segments and by the benchmark's own figures.
        let config = RestartBenchConfig {
            commits: vec![40, 2_000],
            ..RestartBenchConfig::default()
        };
        let bench = RestartBench::run(&config, |_, _| {}).unwrap();
        assert_eq!(bench.failed(), 0, "{}", bench.markdown());
        assert_eq!(bench.runs[1].records, 200_000);
        let md = bench.markdown();
        assert!(md.contains("2000 ÷ 40 commits"), "{md}");
    }
}
