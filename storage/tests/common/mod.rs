//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use bytes::Bytes;
use ferry_proto::batch::{BatchBuilder, BatchIter, ValidBatch, patch_base_offset};
use ferry_storage::{AppendInfo, Log};

/// A batch whose content is derived from `id`, so any copy can be checked.
pub fn make_batch(id: u64, records: usize, value_len: usize) -> Bytes {
    let mut b = BatchBuilder::new(id as i64);
    for r in 0..records {
        let value: Vec<u8> = (0..value_len)
            .map(|i| (id as usize * 31 + r * 7 + i) as u8)
            .collect();
        b.push(
            id as i64 + r as i64,
            Some(&id.to_le_bytes()),
            Some(&value),
            &[],
        );
    }
    b.finish()
}

/// `batch` as the log stores it: with its base offset patched in.
pub fn stored(batch: &[u8], base_offset: u64) -> Vec<u8> {
    let mut v = batch.to_vec();
    patch_base_offset(&mut v, base_offset);
    v
}

pub fn append(log: &Log, b: &Bytes) -> AppendInfo {
    log.append(ValidBatch::exact(b).unwrap()).unwrap()
}

/// Every batch in the log, read one at a time from the start.
pub fn read_batches(log: &Log) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.next_offset() {
        let bytes = log.read(offset, 1, u64::MAX).unwrap();
        let batch = BatchIter::new(&bytes).next().unwrap().unwrap();
        assert_eq!(
            batch.bytes().len(),
            bytes.len(),
            "max_bytes = 1 returns exactly one batch"
        );
        offset = batch.header().next_offset();
        out.push(bytes.to_vec());
    }
    out
}

/// The seed for a random test: `FERRY_SEED` if set, random otherwise;
/// printed so that a failure can be reproduced.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("FERRY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{test}: FERRY_SEED={seed}");
    seed
}
