//! Bytes as each record the broker writes to its own logs and files:
//! transaction-log values, offsets-log keys, group metadata, and
//! producer-state snapshots (also with a matching CRC). None may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ferry_broker::decode_stored(data);
});
