//! Storage benchmarks, each next to its baseline in the same run:
//! append vs `write(2)`, group commit vs `write`+`fdatasync` per append,
//! recovery of a large vs a small log with the same un-flushed tail, and a
//! lookup by time through the time index vs a walk of the segment's batch
//! headers.
//!
//! `cargo bench -p ferry-bench --bench storage` (a few minutes). For the three ratios
//! directly: `cargo run --release -p ferry-bench --example ratios`.

mod workloads;

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_proto::batch::BatchHeader;

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

/// One full 64 MiB segment of 1 KiB single-record batches, timestamps
/// increasing: `offset_for_timestamp` of a time in the middle, against the
/// walk of batch headers from the segment's start that the lookup did
/// before the index carried timestamps (the same header decoding, without
/// its checks).
fn time_lookup(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let log = ferry_storage::Log::open(dir.path(), ferry_storage::LogConfig::default()).unwrap();
    let mut stamps = 0;
    loop {
        let batch = workloads::batch_at(1000 + stamps, 1024);
        let info = log
            .append(ferry_proto::batch::ValidBatch::exact(&batch).unwrap())
            .unwrap();
        stamps += 1;
        if log.segments().len() > 1 {
            assert!(info.base_offset > 0);
            break;
        }
    }
    let target = 1000 + stamps / 2;
    let want = log.offset_for_timestamp(target).unwrap();
    let segment = log.read(0, usize::MAX, u64::MAX).unwrap();
    let walk = |t: i64| {
        let mut pos = 0;
        while pos < segment.len() {
            let h = BatchHeader::decode(&segment[pos..]).unwrap();
            if h.max_timestamp >= t {
                return Some(h.base_offset);
            }
            pos += h.batch_len as usize;
        }
        None
    };
    assert_eq!(walk(target), want);
    let mut group = c.benchmark_group("time_lookup");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    group.bench_function(format!("index/{stamps}_batches"), |b| {
        b.iter(|| {
            log.offset_for_timestamp(std::hint::black_box(target))
                .unwrap()
        })
    });
    group.bench_function(format!("header_walk_baseline/{stamps}_batches"), |b| {
        b.iter(|| walk(std::hint::black_box(target)))
    });
    group.finish();
}

criterion_group!(benches, append, group_commit, recovery, time_lookup);
criterion_main!(benches);
