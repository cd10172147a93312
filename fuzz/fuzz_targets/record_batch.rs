//! Bytes as a record batch: framing, CRC-32C and every record, as the
//! append path and recovery check them. Validation must never panic; a
//! batch it accepts must iterate to exactly its record count.
#![no_main]

use ferry_proto::batch::{ValidBatch, check_framing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = check_framing(bytes);
    if let Ok(batch) = ValidBatch::new(bytes) {
        // Validated, so decompressing (if compressed) succeeds again and
        // every record reads.
        let records = batch.records().expect("a valid batch's records read");
        let n = records.iter().filter(|r| r.is_ok()).count();
        assert_eq!(n as u32, batch.header().record_count);
    }
});
