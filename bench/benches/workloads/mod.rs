//! Workloads shared by the criterion bench and the `ratios` example. Each
//! storage workload has a baseline doing the same I/O with plain syscalls.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_proto::batch::{BatchBuilder, ValidBatch};
use ferry_storage::{FlushPolicy, Log, LogConfig};

/// A batch of `record_bytes`-byte values, about `batch_bytes` long.
pub fn batch(record_bytes: usize, batch_bytes: usize) -> Bytes {
    let value = vec![0x5a_u8; record_bytes];
    let mut b = BatchBuilder::with_capacity(1, batch_bytes + 64);
    let per = BatchBuilder::record_size(0, 0, None, Some(&value), &[]);
    for i in 0..(batch_bytes / per).max(1) {
        b.push(1 + i as i64, None, Some(&value), &[]);
    }
    b.finish()
}

/// A batch of one `record_bytes`-byte value stamped `timestamp`.
pub fn batch_at(timestamp: i64, record_bytes: usize) -> Bytes {
    let mut b = BatchBuilder::with_capacity(timestamp, record_bytes + 128);
    b.push(timestamp, None, Some(&vec![0x5a_u8; record_bytes]), &[]);
    b.finish()
}

fn never() -> LogConfig {
    LogConfig {
        flush: FlushPolicy::Never,
        ..LogConfig::default()
    }
}

/// Appends `count` copies of `batch` to a fresh log (policy `Never`) and
/// returns the time the appends took (open and drop excluded).
pub fn append_log(dir: &Path, batch: &Bytes, count: usize) -> Duration {
    let log = Log::open(dir, never()).unwrap();
    let valid = ValidBatch::exact(batch).unwrap();
    let start = Instant::now();
    for _ in 0..count {
        log.append(valid).unwrap();
    }
    let elapsed = start.elapsed();
    drop(log);
    clear(dir);
    elapsed
}

/// The baseline: the same bytes with a `write(2)` per batch to a new file.
pub fn write_file(dir: &Path, batch: &Bytes, count: usize) -> Duration {
    ferry_bench::baseline::write_count(dir, batch, count).unwrap()
}

fn clear(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let _ = std::fs::remove_file(entry.unwrap().path());
    }
}

/// `threads` threads each append `per_thread` batches under the `Always`
/// policy, waiting for durability after each. Returns the elapsed time.
pub fn group_commit(dir: &Path, threads: usize, per_thread: usize, batch: &Bytes) -> Duration {
    let log = Arc::new(
        Log::open(
            dir,
            LogConfig {
                flush: FlushPolicy::Always,
                ..LogConfig::default()
            },
        )
        .unwrap(),
    );
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let log = log.clone();
            let batch = batch.clone();
            std::thread::spawn(move || {
                let valid = ValidBatch::exact(&batch).unwrap();
                for _ in 0..per_thread {
                    let info = log.append(valid).unwrap();
                    log.wait_durable_blocking(info.last_offset).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let elapsed = start.elapsed();
    drop(log);
    clear(dir);
    elapsed
}

/// The baseline: `write` + `fdatasync` per batch, one thread.
pub fn fsync_per_append(dir: &Path, appends: usize, batch: &Bytes) -> Duration {
    ferry_bench::baseline::write_fdatasync_count(dir, batch, appends).unwrap()
}

/// A log with `flushed_bytes` checkpointed and `tail_bytes` appended after
/// the checkpoint, then dropped without close (a crash). `open` reopens it
/// from exactly that state every time.
pub struct RecoveryFixture {
    pub dir: tempfile::TempDir,
    index_path: PathBuf,
    index_bytes: Vec<u8>,
}

impl RecoveryFixture {
    pub fn build(flushed_bytes: u64, tail_bytes: u64) -> RecoveryFixture {
        let dir = tempfile::tempdir().unwrap();
        let b = batch(1024, 64 * 1024);
        let valid = ValidBatch::exact(&b).unwrap();
        {
            let log = Log::open(dir.path(), never()).unwrap();
            while log.size_bytes() < flushed_bytes {
                log.append(valid).unwrap();
            }
            log.close().unwrap();
        }
        let log = Log::open(dir.path(), never()).unwrap();
        let small = batch(1024, 16 * 1024);
        let small = ValidBatch::exact(&small).unwrap();
        let before = log.size_bytes();
        while log.size_bytes() - before < tail_bytes {
            log.append(small).unwrap();
        }
        let active = log.segments().pop().unwrap();
        drop(log);
        let index_bytes = std::fs::read(&active.index_path).unwrap_or_default();
        RecoveryFixture {
            dir,
            index_path: active.index_path,
            index_bytes,
        }
    }

    /// Restores the crashed checkpoint, then times `Log::open`.
    pub fn open(&self) -> Duration {
        std::fs::write(&self.index_path, &self.index_bytes).unwrap();
        let start = Instant::now();
        let log = Log::open(self.dir.path(), never()).unwrap();
        let elapsed = start.elapsed();
        assert!(log.recovery_stats().scanned_bytes > 0);
        drop(log);
        elapsed
    }
}
