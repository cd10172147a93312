//! Storage benchmarks, each next to its baseline in the same run:
//! append vs `write(2)`, group commit vs `write`+`fdatasync` per append,
//! and recovery of a large vs a small log with the same un-flushed tail.
//!
//! `cargo bench -p ferry-bench --bench storage` (a few minutes). For the three ratios
//! directly: `cargo run --release -p ferry-bench --example ratios`.

mod workloads;

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const APPEND_TOTAL_BYTES: usize = 32 * 1024 * 1024;

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("append");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for (record_bytes, batch_bytes) in [(100, 16 * 1024), (1024, 64 * 1024)] {
        let batch = workloads::batch(record_bytes, batch_bytes);
        let count = APPEND_TOTAL_BYTES / batch.len();
        group.throughput(Throughput::Bytes((count * batch.len()) as u64));
        let name = format!("{record_bytes}B_records_{}KiB_batches", batch_bytes / 1024);
        group.bench_function(format!("log/{name}"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| workloads::append_log(dir.path(), &batch, count))
                    .sum()
            })
        });
        group.bench_function(format!("write2_baseline/{name}"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| workloads::write_file(dir.path(), &batch, count))
                    .sum()
            })
        });
    }
    group.finish();
}

fn group_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let batch = workloads::batch(100, 1024);
    let mut group = c.benchmark_group("always");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(1));
    for threads in [1, 8, 64] {
        group.bench_function(format!("group_commit/{threads}_appenders"), |b| {
            b.iter_custom(|iters| {
                let per_thread = (iters as usize).div_ceil(threads);
                let elapsed = workloads::group_commit(dir.path(), threads, per_thread, &batch);
                elapsed.mul_f64(iters as f64 / (per_thread * threads) as f64)
            })
        });
    }
    group.bench_function("fdatasync_per_append_baseline", |b| {
        b.iter_custom(|iters| workloads::fsync_per_append(dir.path(), iters as usize, &batch))
    });
    group.finish();
}

fn recovery(c: &mut Criterion) {
    let tail = 1024 * 1024;
    let large = workloads::RecoveryFixture::build(1024 * 1024 * 1024, tail);
    let small = workloads::RecoveryFixture::build(10 * 1024 * 1024, tail);
    let mut group = c.benchmark_group("recovery");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    group.bench_function("open/1GiB_flushed_1MiB_tail", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| large.open()).sum())
    });
    group.bench_function("open/10MiB_flushed_1MiB_tail_baseline", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| small.open()).sum())
    });
    group.finish();
}

criterion_group!(benches, append, group_commit, recovery);
criterion_main!(benches);
