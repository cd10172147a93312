//! Criterion benches of the per-batch hot paths a produce or a fetch goes
//! through: batch encode (client), CRC and record validation (broker,
//! consumer), record decode (consumer), the idempotent sequence check
//! (broker), and a fetch served from the log's memory map (broker).
//!
//! `cargo bench -j2 -p ferry-bench --bench hot_paths` (about a minute). Each
//! group reports bytes or elements per second, so the numbers compare
//! directly with `ferry bench baseline`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ferry_broker::{BatchMeta, ProducerEntry, SeqCheck, check_sequence};
use ferry_proto::batch::{BatchBuilder, RecordIter, ValidBatch, check_framing};
use ferry_storage::{FlushPolicy, Log, LogConfig};

/// Record sizes of the standard matrix, in the producer's default batch.
const SIZES: [usize; 2] = [100, 1024];
const BATCH_BYTES: usize = 256 * 1024;
const TIMESTAMP_MS: i64 = 1_700_000_000_000;

/// How many `record_bytes` values fill a `BATCH_BYTES` batch.
fn records_per_batch(record_bytes: usize) -> usize {
    let value = vec![0u8; record_bytes];
    BATCH_BYTES / BatchBuilder::record_size(0, 0, None, Some(&value), &[])
}

/// Encodes `count` copies of `value` as the producer does: one push per
/// record into a buffer reserved up front, then the header and CRC.
fn encode(value: &[u8], count: usize) -> Bytes {
    let mut b = BatchBuilder::with_capacity(TIMESTAMP_MS, BATCH_BYTES + 64);
    for _ in 0..count {
        b.push(TIMESTAMP_MS, None, Some(value), &[]);
    }
    b.finish()
}

fn configure<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group
}

fn batch_codec(c: &mut Criterion) {
    let mut group = configure(c, "batch");
    for size in SIZES {
        let value = vec![0x5a_u8; size];
        let count = records_per_batch(size);
        let batch = encode(&value, count);
        group.throughput(Throughput::Bytes(batch.len() as u64));
        group.bench_with_input(BenchmarkId::new("encode", size), &value, |b, value| {
            b.iter(|| encode(black_box(value), count))
        });
        group.bench_with_input(BenchmarkId::new("decode", size), &batch, |b, batch| {
            let header = check_framing(batch).unwrap();
            b.iter(|| {
                let mut bytes = 0usize;
                for r in RecordIter::new(&header, black_box(batch)) {
                    bytes += r.unwrap().value.map_or(0, <[u8]>::len);
                }
                bytes
            })
        });
        // What the broker runs on every produced batch: header, CRC, and
        // every record's framing.
        group.bench_with_input(BenchmarkId::new("validate", size), &batch, |b, batch| {
            b.iter(|| {
                ValidBatch::exact(black_box(batch))
                    .unwrap()
                    .header()
                    .record_count
            })
        });
        // The CRC alone, as recovery and consumers check it.
        group.bench_with_input(BenchmarkId::new("crc", size), &batch, |b, batch| {
            b.iter(|| check_framing(black_box(batch)).unwrap().crc)
        });
    }
    group.finish();
}

fn sequence_check(c: &mut Criterion) {
    let mut group = configure(c, "check_sequence");
    group.throughput(Throughput::Elements(1));
    // A producer with a full window of five 100-record batches.
    let batches: VecDeque<BatchMeta> = (0..5)
        .map(|i| BatchMeta {
            first_seq: i * 100,
            last_seq: i * 100 + 99,
            base_offset: i as u64 * 100,
            last_offset: i as u64 * 100 + 99,
            record_count: 100,
        })
        .collect();
    let entry = ProducerEntry {
        epoch: 3,
        batches,
        last_update_ms: 0,
    };
    group.bench_function("append", |b| {
        b.iter(|| {
            let r = check_sequence(Some(black_box(&entry)), 3, black_box(500), 599);
            assert_eq!(r, Ok(SeqCheck::Append));
        })
    });
    group.bench_function("duplicate", |b| {
        b.iter(|| {
            let r = check_sequence(Some(black_box(&entry)), 3, black_box(200), 299);
            assert!(matches!(r, Ok(SeqCheck::Duplicate(_))));
        })
    });
    group.bench_function("new_producer", |b| {
        b.iter(|| check_sequence(None, 0, black_box(0), 99).unwrap())
    });
    group.finish();
}

fn fetch(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        LogConfig {
            flush: FlushPolicy::Never,
            ..LogConfig::default()
        },
    )
    .unwrap();
    // 64 MiB of 1 KiB records in 64 KiB batches: all in one segment's map.
    let value = vec![0x5a_u8; 1024];
    let per_batch = 64 * 1024 / BatchBuilder::record_size(0, 0, None, Some(&value), &[]);
    let batch = encode(&value, per_batch);
    let valid = ValidBatch::exact(&batch).unwrap();
    let mut next = 0;
    while log.size_bytes() < 48 * 1024 * 1024 {
        next = log.append(valid).unwrap().last_offset + 1;
    }
    let mut group = configure(c, "log_read");
    for max_bytes in [64 * 1024, 1024 * 1024] {
        group.throughput(Throughput::Bytes(max_bytes as u64));
        group.bench_with_input(
            BenchmarkId::new("from_map", max_bytes),
            &max_bytes,
            |b, &max_bytes| {
                let mut offset = 0u64;
                b.iter(|| {
                    let bytes = log.read(offset, max_bytes, u64::MAX).unwrap();
                    offset = (offset + 7919) % (next - per_batch as u64);
                    bytes.len()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, batch_codec, sequence_check, fetch);
criterion_main!(benches);
