//! Bytes as a segment file and its index: the first two bytes give the
//! index's length, the rest after it is the segment. Recovery must open
//! or refuse them, never panic, and keep only whole, consecutive batches
//! with an index that matches them (`ferry_storage::fuzzing::recover`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (len, rest) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        _ => return,
    };
    let (index, segment) = rest.split_at(len.min(rest.len()));
    let dir = tempfile::tempdir().expect("temp dir");
    let _ = ferry_storage::fuzzing::recover(dir.path(), segment, index);
});
