//! `ferry bench compaction`: how fast the log cleaner cleans, against
//! sequential `write(2)` of the same bytes and one `fdatasync` in the same
//! run (the cleaner syncs its rewrite too; the page-cache-only rate is
//! reported beside it), and what it costs producers of another topic
//! meanwhile.
//!
//! A compacted topic is filled with `bytes` of records whose keys cycle
//! over `live_fraction` of the record count, so that after cleaning that
//! share is left. Produce to another topic is measured alone, then while
//! the cleaner cleans the first topic on its own thread, then alone again
//! for as long; the cleaning rate is the range's bytes per second of that
//! run (the cleaner reads them twice: once to map the keys, once to
//! rewrite). Everything
//! goes straight into the broker core, with no network in between.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_broker::cleaner::{CleanOutcome, CleanerSettings, clean_partition};
use ferry_broker::{BrokerConfig, BrokerState, FlushPolicy, TopicConfig};
use ferry_proto::batch::BatchBuilder;
use serde::{Deserialize, Serialize};

use crate::ratio;
use crate::workload::BenchError;

/// Records per batch, in the fill and in the other topic's produce.
const RECORDS_PER_BATCH: usize = 32;

/// The settings of a run.
#[derive(Clone, Debug)]
pub struct CompactionBenchConfig {
    /// Bytes of records written to the compacted topic.
    pub bytes: u64,
    /// Value bytes per record.
    pub record_size: usize,
    /// Share of records whose key is still live after cleaning.
    pub live_fraction: f64,
    /// The compacted topic's `segment.bytes`.
    pub segment_bytes: u64,
    /// The cleaner's read limit, if any.
    pub max_bytes_per_sec: Option<u64>,
    /// How long produce to the other topic is measured alone.
    pub alone: Duration,
    /// The broker's flush policy.
    pub flush: FlushPolicy,
    /// Where the temporary data dir goes.
    pub parent: Option<std::path::PathBuf>,
}

impl Default for CompactionBenchConfig {
    fn default() -> CompactionBenchConfig {
        CompactionBenchConfig {
            bytes: 1 << 30,
            record_size: 1024,
            live_fraction: 0.1,
            segment_bytes: 64 << 20,
            max_bytes_per_sec: None,
            alone: Duration::from_secs(5),
            flush: FlushPolicy::Never,
            parent: None,
        }
    }
}

/// What a run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompactionBench {
    pub records: u64,
    pub keys: u64,
    pub record_size: usize,
    pub flush: String,
    /// Bytes of the compacted topic when filled.
    pub log_bytes: u64,
    /// Sequential `write(2)` of `log_bytes` and one `fdatasync` (the
    /// baseline: the cleaner's rewrite is synced too), MB/s.
    pub write_mb_per_sec: f64,
    /// The same writes without the sync (into the page cache only), MB/s.
    pub cached_write_mb_per_sec: f64,
    /// What the cleaning did, and its read rate in MB/s.
    pub outcome: CleanOutcome,
    pub clean_secs: f64,
    pub clean_mb_per_sec: f64,
    /// Cleaning ÷ sequential write.
    pub clean_vs_write: Option<f64>,
    /// Produce to another topic alone (the mean of a window before the
    /// cleaning and one as long as it after) and during it, MB/s.
    pub produce_alone_mb_per_sec: f64,
    pub produce_during_clean_mb_per_sec: f64,
    /// During ÷ alone.
    pub produce_during_vs_alone: Option<f64>,
    /// Records left in the cleaned range, and how many keys they hold.
    pub records_left: u64,
    pub keys_left: u64,
    pub seconds: f64,
}

const MB: f64 = 1e6;

fn batch(first_key: u64, keys: u64, value: &[u8]) -> bytes::Bytes {
    let now = ferry_proto::now_ms();
    let mut b = BatchBuilder::with_capacity(now, RECORDS_PER_BATCH * (value.len() + 40));
    for i in 0..RECORDS_PER_BATCH as u64 {
        let key = format!("key-{:012}", (first_key + i) % keys);
        b.push(now, Some(key.as_bytes()), Some(value), &[]);
    }
    b.finish()
}

/// Produces batches to `topic` until `stop`, returning bytes per second.
fn produce_until(
    state: &BrokerState,
    topic: &str,
    value: &[u8],
    stop: &dyn Fn(Duration) -> bool,
) -> Result<f64, BenchError> {
    let bytes = batch(0, u64::MAX, value);
    let started = Instant::now();
    let mut sent = 0u64;
    while !stop(started.elapsed()) {
        state.append(topic, 0, &bytes)?;
        sent += bytes.len() as u64;
    }
    Ok(sent as f64 / started.elapsed().as_secs_f64())
}

impl CompactionBench {
    pub fn run(
        config: &CompactionBenchConfig,
        mut on_fill: impl FnMut(u64, u64),
    ) -> Result<CompactionBench, BenchError> {
        if config.bytes == 0
            || config.record_size == 0
            || !(config.live_fraction > 0.0 && config.live_fraction <= 1.0)
        {
            return Err(
                "bytes and record size must be positive, the live fraction in (0, 1]".into(),
            );
        }
        let started = Instant::now();
        let tmp = crate::temp_dir("ferry-bench-compaction-", config.parent.as_deref())?;
        let dir = tmp.path().join("data");
        let mut broker = BrokerConfig::ephemeral()
            .with_data_dir(&dir)
            .with_flush(config.flush);
        // The bench runs the cleaning itself.
        broker.cleaner = CleanerSettings {
            interval: Duration::from_secs(3600),
            max_bytes_per_sec: config.max_bytes_per_sec,
            ..CleanerSettings::default()
        };
        let settings = broker.cleaner;
        let state = Arc::new(BrokerState::open(broker)?);
        let segment_bytes = config.segment_bytes.to_string();
        let table = TopicConfig::from_pairs([
            ("cleanup.policy", "compact"),
            ("segment.bytes", segment_bytes.as_str()),
        ])?;
        state.create_topic_with_config("table", 1, table)?;

        let value = vec![0x6b_u8; config.record_size];
        let per_record = config.record_size as u64 + 30;
        let records = (config.bytes / per_record).max(RECORDS_PER_BATCH as u64);
        let keys = ((records as f64 * config.live_fraction) as u64).max(1);
        let mut written = 0u64;
        while written < records {
            state.append("table", 0, &batch(written, keys, &value))?;
            written += RECORDS_PER_BATCH as u64;
            if written.is_multiple_of(RECORDS_PER_BATCH as u64 * 256) {
                on_fill(written, records);
            }
        }
        let p = state.topic("table")?.partitions[0].clone();
        p.log.flush()?;
        let log_bytes = p.log.size_bytes();
        let mib = (log_bytes >> 20).max(1);
        let chunk = vec![0x5a_u8; 1 << 20];
        let written_mb = mib as f64 * (1 << 20) as f64 / MB;
        let cached_secs = crate::baseline::write_count(&dir, &chunk, mib as usize)?.as_secs_f64();
        let write_secs =
            crate::baseline::write_count_synced(&dir, &chunk, mib as usize)?.as_secs_f64();
        let write_mb_per_sec = written_mb / write_secs;
        let cached_write_mb_per_sec = written_mb / cached_secs;

        // Each produce window writes a fresh topic, deleted after it, so
        // that no window pays for the dirty pages of the one before.
        let window = |n: u32, stop: &dyn Fn(Duration) -> bool| -> Result<f64, BenchError> {
            let name = format!("other-{n}");
            state.create_topic(&name, 1)?;
            let rate = produce_until(&state, &name, &value, stop)?;
            state.delete_topic(&name)?;
            Ok(rate)
        };
        let before = window(0, &|t| t >= config.alone)?;
        let done = Arc::new(AtomicBool::new(false));
        let cleaner = {
            let (p, done, table) = (p.clone(), done.clone(), state.topic("table")?.config);
            std::thread::Builder::new()
                .name("ferry-cleaner".into())
                .spawn(move || {
                    let t = Instant::now();
                    let now = ferry_proto::now_ms();
                    let r = clean_partition(&p, &table, &settings, now, true, &|| false);
                    let secs = t.elapsed().as_secs_f64();
                    done.store(true, Ordering::Release);
                    r.map(|o| (o, secs))
                })?
        };
        let produce_during = window(1, &|_| done.load(Ordering::Acquire))?;
        let (outcome, clean_secs) = cleaner
            .join()
            .map_err(|_| BenchError::from("the cleaner panicked"))??;
        let outcome = outcome.ok_or_else(|| BenchError::from("nothing was cleaned"))?;
        let after = window(2, &|t| t.as_secs_f64() >= clean_secs.max(0.1))?;
        let produce_alone = (before + after) / 2.0;

        let (records_left, keys_left) = count_left(&p, outcome.end)?;
        state.close();
        let clean_mb_per_sec = outcome.bytes_read as f64 / MB / clean_secs;
        Ok(CompactionBench {
            records,
            keys,
            record_size: config.record_size,
            flush: config.flush.to_string(),
            log_bytes,
            write_mb_per_sec,
            cached_write_mb_per_sec,
            clean_vs_write: ratio(clean_mb_per_sec, write_mb_per_sec),
            outcome,
            clean_secs,
            clean_mb_per_sec,
            produce_alone_mb_per_sec: produce_alone / MB,
            produce_during_clean_mb_per_sec: produce_during / MB,
            produce_during_vs_alone: ratio(produce_during, produce_alone),
            records_left,
            keys_left,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Whether the cleaning left more than one record of a key.
    pub fn failed(&self) -> u64 {
        u64::from(self.records_left != self.keys_left)
    }

    /// The report as markdown.
    pub fn markdown(&self) -> String {
        let f = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.2}"));
        format!(
            "Cleaning a compacted topic of {:.0} MB ({} records of {} B, {} keys), fsync `{}`\n\n\
             | | MB/s | ratio |\n|---|--:|--:|\n\
             | sequential write(2) of the same bytes, then fdatasync | {:.0} | |\n\
             | the same write(2)s, page cache only | {:.0} | |\n\
             | cleaning (bytes read) | {:.0} | {} × write |\n\
             | produce to another topic, alone | {:.0} | |\n\
             | produce to another topic, while cleaning | {:.0} | {} × alone |\n\n\
             Cleaned [{}, {}) in {:.2} s: {} segments, {:.0} MB read, {:.0} MB written, {} records removed; {} records left for {} keys\n",
            self.log_bytes as f64 / MB,
            self.records,
            self.record_size,
            self.keys,
            self.flush,
            self.write_mb_per_sec,
            self.cached_write_mb_per_sec,
            self.clean_mb_per_sec,
            f(self.clean_vs_write),
            self.produce_alone_mb_per_sec,
            self.produce_during_clean_mb_per_sec,
            f(self.produce_during_vs_alone),
            self.outcome.start,
            self.outcome.end,
            self.clean_secs,
            self.outcome.segments_replaced,
            self.outcome.bytes_read as f64 / MB,
            self.outcome.bytes_written as f64 / MB,
            self.outcome.records_removed,
            self.records_left,
            self.keys_left,
        )
    }
}

/// Records below `end` and the distinct keys among them.
fn count_left(p: &ferry_broker::Partition, end: u64) -> Result<(u64, u64), BenchError> {
    let mut keys = std::collections::HashSet::new();
    let mut records = 0;
    for seg in p.log.sealed_segments()? {
        if seg.next_offset > end {
            break;
        }
        for b in ferry_proto::batch::BatchIter::new(&seg.bytes) {
            let b = b?;
            for r in b.records()?.iter() {
                records += 1;
                keys.insert(r?.key.map(<[u8]>::to_vec));
            }
        }
    }
    Ok((records, keys.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_cleaning_leaves_one_record_per_key_and_reports_its_rates() {
        let config = CompactionBenchConfig {
            bytes: 8 << 20,
            record_size: 256,
            segment_bytes: 1 << 20,
            alone: Duration::from_millis(100),
            ..CompactionBenchConfig::default()
        };
        let bench = CompactionBench::run(&config, |_, _| {}).unwrap();
        assert_eq!(bench.failed(), 0, "{}", bench.markdown());
        assert!(bench.outcome.records_removed > 0, "{}", bench.markdown());
        assert!(bench.clean_mb_per_sec > 0.0 && bench.write_mb_per_sec > 0.0);
        assert!(bench.markdown().contains("× write"));
    }
}
