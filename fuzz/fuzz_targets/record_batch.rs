//! Bytes as a record batch: framing, CRC-32C and every record, as the
//! append path and recovery check them. Validation must never panic; a
//! batch it accepts must iterate to exactly its record count.
//!
//! Random bytes almost never carry a right CRC, so each input is also
//! checked with its length, magic and CRC fields set to match it: that
//! copy reaches the header checks, decompression and the records.
#![no_main]

use ferry_proto::batch::{HEADER_LEN, ValidBatch, check_framing, layout};
use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    let _ = check_framing(bytes);
    if let Ok(batch) = ValidBatch::new(bytes) {
        // Validated, so decompressing (if compressed) succeeds again and
        // every record reads.
        let records = batch.records().expect("a valid batch's records read");
        let n = records.iter().filter(|r| r.is_ok()).count();
        assert_eq!(n as u32, batch.header().record_count);
    }
}

fuzz_target!(|bytes: &[u8]| {
    check(bytes);
    if bytes.len() >= HEADER_LEN {
        let mut fixed = bytes.to_vec();
        // batch_length counts the bytes after itself.
        let len = (fixed.len() - layout::LEADER_EPOCH) as i32;
        fixed[layout::BATCH_LEN..layout::BATCH_LEN + 4].copy_from_slice(&len.to_be_bytes());
        fixed[layout::MAGIC] = 2;
        let crc = crc32c::crc32c(&fixed[layout::ATTRIBUTES..]);
        fixed[layout::CRC..layout::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        check(&fixed);
    }
});
