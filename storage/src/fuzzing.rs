//! Log recovery over arbitrary bytes, shared by the `log_recovery` fuzz
//! target and the property test that runs in every `cargo test`: a
//! segment file and an index file with any contents must open (or fail
//! with an error), never panic, and what recovery keeps must be whole.

use std::path::Path;

use ferry_proto::batch::ValidBatch;

use crate::segment::{index_file_name, log_file_name};
use crate::{LogConfig, MIN_SEGMENT_BYTES, StorageError};

/// Writes `segment` and `index` as the first segment's files in the empty
/// directory `dir`, opens the log there, and checks what recovery kept:
/// every byte read back is a sequence of valid batches with consecutive
/// offsets below the high watermark, the index recovery left matches one
/// rebuilt from the kept batches, and a clean close and reopen keep the
/// same log. Panics when one of those fails; a file recovery refuses is an
/// `Err`, and so is damage inside a prefix that recovery trusted to the
/// index's checkpoint (the read that meets it refuses it).
pub fn recover(dir: &Path, segment: &[u8], index: &[u8]) -> Result<(), StorageError> {
    let io = |e: std::io::Error| StorageError::Io {
        op: "write fuzz input",
        path: dir.to_path_buf(),
        source: e,
    };
    std::fs::write(dir.join(log_file_name(0)), segment).map_err(io)?;
    if !index.is_empty() {
        std::fs::write(dir.join(index_file_name(0)), index).map_err(io)?;
    }
    let config = LogConfig {
        segment_bytes: MIN_SEGMENT_BYTES,
        ..LogConfig::default()
    };
    let log = crate::Log::open(dir, config.clone())?;
    let (start, end) = (log.log_start_offset(), log.next_offset());
    let mut next = start;
    while next < end {
        let bytes = log.read(next, 1 << 20, end)?;
        assert!(!bytes.is_empty(), "no batch at {next} below the end {end}");
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let batch = ValidBatch::new(rest).expect("recovery kept an invalid batch");
            let h = batch.header();
            assert_eq!(h.base_offset, next, "offsets are not consecutive");
            next = h.base_offset + u64::from(h.last_offset_delta) + 1;
            rest = &rest[batch.bytes().len()..];
        }
    }
    assert_eq!(next, end, "the kept batches end before the high watermark");
    assert_eq!(
        log.index_entries()?,
        log.rebuilt_index_entries()?,
        "the recovered index differs from one rebuilt from the kept batches"
    );
    log.close()?;
    drop(log);
    // Once more: a clean reopen keeps the same log.
    let again = crate::Log::open(dir, config)?;
    assert_eq!(
        (again.log_start_offset(), again.next_offset()),
        (start, end),
        "a clean reopen changed the log"
    );
    Ok(())
}
