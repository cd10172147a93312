//! Measures the storage engine's three headline ratios against baselines
//! run in the same process, and prints them:
//!
//! * append throughput ÷ `write(2)` of the same bytes (target ≥ 0.8);
//! * group commit with 64 appenders ÷ `write`+`fdatasync` per append
//!   (target ≥ 10);
//! * recovery time of 1 GiB + 1 MiB tail ÷ 10 MiB + 1 MiB tail
//!   (target ≤ 1.5).
//!
//! Run with `cargo run --release -p ferry-bench --example ratios`.

#[path = "../benches/workloads/mod.rs"]
mod workloads;

use std::time::Duration;

/// Median of `runs` measurements.
fn median(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    let mut v: Vec<Duration> = (0..runs).map(|_| f()).collect();
    v.sort();
    v[runs / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();

    for (record_bytes, batch_bytes) in [(100, 16 * 1024), (1024, 64 * 1024)] {
        let batch = workloads::batch(record_bytes, batch_bytes);
        let count = 64 * 1024 * 1024 / batch.len();
        let mb = (count * batch.len()) as f64 / 1e6;
        // Interleave to share whatever the machine is doing.
        let mut log = Vec::new();
        let mut raw = Vec::new();
        for _ in 0..7 {
            log.push(workloads::append_log(path, &batch, count));
            raw.push(workloads::write_file(path, &batch, count));
        }
        log.sort();
        raw.sort();
        let (log, raw) = (log[3], raw[3]);
        println!(
            "append {record_bytes} B records in {} KiB batches: log {:.0} MB/s, write(2) {:.0} MB/s, ratio {:.2} (target >= 0.8)",
            batch_bytes / 1024,
            mb / log.as_secs_f64(),
            mb / raw.as_secs_f64(),
            raw.as_secs_f64() / log.as_secs_f64()
        );
    }

    let batch = workloads::batch(100, 1024);
    let fsync_appends = 300;
    let fsync = median(3, || {
        workloads::fsync_per_append(path, fsync_appends, &batch)
    });
    let fsync_rate = fsync_appends as f64 / fsync.as_secs_f64();
    println!("write+fdatasync per append: {fsync_rate:.0} appends/s");
    for threads in [1, 8, 64] {
        let per_thread = 4000 / threads;
        let t = median(3, || {
            workloads::group_commit(path, threads, per_thread, &batch)
        });
        let rate = (per_thread * threads) as f64 / t.as_secs_f64();
        println!(
            "always, {threads} appenders: {rate:.0} appends/s, ratio {:.1}{}",
            rate / fsync_rate,
            if threads == 64 { " (target >= 10)" } else { "" }
        );
    }

    let tail = 1024 * 1024;
    let large = workloads::RecoveryFixture::build(1024 * 1024 * 1024, tail);
    let small = workloads::RecoveryFixture::build(10 * 1024 * 1024, tail);
    let mut l = Vec::new();
    let mut s = Vec::new();
    for _ in 0..15 {
        l.push(large.open());
        s.push(small.open());
    }
    l.sort();
    s.sort();
    let (l, s) = (l[7], s[7]);
    println!(
        "recovery: 1 GiB + 1 MiB tail {:.2} ms, 10 MiB + 1 MiB tail {:.2} ms, ratio {:.2} (target <= 1.5)",
        l.as_secs_f64() * 1e3,
        s.as_secs_f64() * 1e3,
        l.as_secs_f64() / s.as_secs_f64()
    );
}
