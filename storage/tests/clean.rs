//! Swapping cleaned segments into a log: gaps read as the next batch, a
//! cleaned segment survives close, crash and a lost index, a second
//! cleaning replaces the first, and a crash at every step of the swap
//! leaves the old segments or the new one, never neither and never both.

mod common;

use common::{append, make_batch, read_batches};
use ferry_proto::batch::{BatchIter, ValidBatch};
use ferry_storage::{FlushPolicy, Log, LogConfig, SealedSegment};

/// The crash matrix sets failpoints for the whole process, which would
/// fail the swaps of tests running beside it: every test here holds this.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 8192,
        index_interval_bytes: 256,
        flush: FlushPolicy::Never,
        checkpoint_interval_bytes: 0,
        ..LogConfig::default()
    }
}

/// A log of about `segments` sealed segments of 1 KiB batches, the last
/// one followed by data in the active segment.
fn filled(dir: &std::path::Path, segments: usize) -> Log {
    let log = Log::open(dir, config()).unwrap();
    let mut id = 0;
    while log.segments().len() <= segments + 1 {
        append(&log, &make_batch(id, 4, 200));
        id += 1;
    }
    log.flush().unwrap();
    log
}

/// The batches of `segs` whose base offset is even: a stand-in for what a
/// cleaner keeps.
fn keep_even(segs: &[SealedSegment]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in segs {
        for b in BatchIter::new(&s.bytes) {
            let b = b.unwrap();
            if (b.header().base_offset / 4) % 2 == 0 {
                out.extend_from_slice(b.bytes());
            }
        }
    }
    out
}

/// (base offset, bytes) of every batch, read one at a time.
fn contents(log: &Log) -> Vec<(u64, Vec<u8>)> {
    read_batches(log)
        .into_iter()
        .map(|b| (ValidBatch::new(&b).unwrap().header().base_offset, b))
        .collect()
}

/// What `contents` reads after the segments below `end` were replaced by
/// `keep_even` of them.
fn after_keep_even(before: &[(u64, Vec<u8>)], end: u64) -> Vec<(u64, Vec<u8>)> {
    before
        .iter()
        .filter(|(o, _)| *o >= end || (o / 4) % 2 == 0)
        .cloned()
        .collect()
}

/// The names of the files in `dir`.
fn file_names(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn wait_sealed(log: &Log, at_least: usize) -> Vec<SealedSegment> {
    for _ in 0..500 {
        let sealed = log.sealed_segments().unwrap();
        if sealed.len() >= at_least {
            return sealed;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("segments were not sealed");
}

#[test]
fn a_cleaned_segment_reads_across_its_gaps_and_survives_close_crash_and_a_lost_index() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let log = filled(dir.path(), 4);
    let sealed = wait_sealed(&log, 4);
    let before = contents(&log);
    let cleaned = &sealed[..3];
    let end = cleaned[2].next_offset;
    let outcome = log.replace_segments(cleaned, &keep_even(cleaned)).unwrap();
    assert_eq!(outcome.segments_replaced, 3);
    assert!(outcome.bytes_after < outcome.bytes_before);
    let expected = after_keep_even(&before, end);
    assert_eq!(contents(&log), expected);
    // An offset inside a gap reads the next batch that is left.
    let in_gap = log.read(4, 1, u64::MAX).unwrap();
    assert_eq!(ValidBatch::new(&in_gap).unwrap().header().base_offset, 8);
    assert_eq!(log.log_start_offset(), 0);
    let next = log.next_offset();
    log.close().unwrap();
    drop(log);

    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(contents(&log), expected);
    assert_eq!(log.next_offset(), next);
    assert_eq!(
        log.recovery_stats().scanned_bytes,
        0,
        "the cleaned index is trusted"
    );
    let cleaned_index = log.segments()[0].index_path.clone();
    assert!(cleaned_index.to_str().unwrap().contains('-'));
    append(&log, &make_batch(1000, 1, 10));
    drop(log); // a crash

    std::fs::remove_file(&cleaned_index).unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.recovery_stats().rebuilt_indexes, 1);
    assert_eq!(&contents(&log)[..expected.len()], &expected[..]);
    assert_eq!(
        log.index_entries().unwrap(),
        log.rebuilt_index_entries().unwrap()
    );
}

#[test]
fn cleaning_a_cleaned_segment_again_replaces_it_and_its_neighbour() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let log = filled(dir.path(), 4);
    let sealed = wait_sealed(&log, 4);
    log.replace_segments(&sealed[..2], &keep_even(&sealed[..2]))
        .unwrap();
    let sealed = log.sealed_segments().unwrap();
    assert!(sealed[0].cleaned && !sealed[1].cleaned);
    // The second pass keeps only the batches at multiples of 8 in the
    // first segment range, and the even ones of its neighbour.
    let mut kept = Vec::new();
    for b in BatchIter::new(&sealed[0].bytes) {
        let b = b.unwrap();
        if b.header().base_offset % 16 == 0 {
            kept.extend_from_slice(b.bytes());
        }
    }
    kept.extend(keep_even(&sealed[1..2]));
    log.replace_segments(&sealed[..2], &kept).unwrap();
    let after = contents(&log);
    log.close().unwrap();
    drop(log);
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(contents(&log), after);
    let names: Vec<String> = file_names(dir.path())
        .into_iter()
        .filter(|n| n.ends_with(".log"))
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.contains('-')).count(),
        1,
        "one cleaned segment is left: {names:?}"
    );
}

#[test]
fn a_swap_that_no_longer_matches_the_log_changes_nothing() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let log = filled(dir.path(), 3);
    let sealed = wait_sealed(&log, 3);
    let before = contents(&log);
    log.replace_segments(&sealed[..1], &keep_even(&sealed[..1]))
        .unwrap();
    let after = contents(&log);
    // The same segments again: they are gone now.
    assert!(log.replace_segments(&sealed[..1], &[]).is_err());
    // Batches outside the range are refused.
    let sealed = log.sealed_segments().unwrap();
    assert!(
        log.replace_segments(&sealed[1..2], &keep_even(&sealed[2..3]))
            .is_err()
    );
    assert_eq!(contents(&log), after);
    assert_ne!(before, after);
}

#[cfg(feature = "failpoints")]
mod crash_matrix {
    use super::*;

    /// Every step of the swap, and which side of the commit point it is.
    const STEPS: [(&str, bool); 4] = [
        ("storage::clean::before_rename", false),
        ("storage::clean::after_rename", true),
        ("storage::clean::mid_delete", true),
        ("storage::clean::before_index", true),
    ];

    #[test]
    fn a_crash_at_every_step_of_the_swap_leaves_the_old_segments_or_the_new_one() {
        let _serial = one_at_a_time();
        let _scenario = fail::FailScenario::setup();
        for (step, committed) in STEPS {
            let dir = tempfile::tempdir().unwrap();
            let log = filled(dir.path(), 4);
            let sealed = wait_sealed(&log, 4);
            let old = contents(&log);
            let cleaned = keep_even(&sealed[..3]);
            let end = sealed[2].next_offset;
            let new = after_keep_even(&old, end);
            fail::cfg(step, "return").unwrap();
            assert!(
                log.replace_segments(&sealed[..3], &cleaned).is_err(),
                "{step}"
            );
            fail::remove(step);
            drop(sealed);
            drop(log); // the crash
            let log = Log::open(dir.path(), config()).unwrap();
            let found = contents(&log);
            let expected = if committed { &new } else { &old };
            assert_eq!(&found, expected, "after a crash at {step}");
            let files = file_names(dir.path());
            assert!(
                files.iter().all(|f| !f.ends_with(".tmp")),
                "{step}: {files:?}"
            );
            assert_eq!(
                files.iter().filter(|f| f.contains('-')).count(),
                if committed { 2 } else { 0 },
                "{step}: the cleaned segment and its index, or nothing of it: {files:?}"
            );
        }
    }
}

#[test]
fn a_cleaning_that_keeps_nothing_leaves_an_empty_segment_that_reads_as_a_gap_and_reopens() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let log = filled(dir.path(), 3);
    let sealed = wait_sealed(&log, 3);
    let before = contents(&log);
    let end = sealed[1].next_offset;
    log.replace_segments(&sealed[..2], &[]).unwrap();
    let expected: Vec<_> = before.iter().filter(|(o, _)| *o >= end).cloned().collect();
    assert_eq!(contents(&log), expected);
    let first = log.read(0, 1, u64::MAX).unwrap();
    assert_eq!(ValidBatch::new(&first).unwrap().header().base_offset, end);
    assert_eq!(log.log_start_offset(), 0);
    let next = log.next_offset();
    drop(log); // a crash
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(contents(&log), expected);
    assert_eq!(log.next_offset(), next);
    let first = log.read(0, 1, u64::MAX).unwrap();
    assert_eq!(ValidBatch::new(&first).unwrap().header().base_offset, end);
}

#[test]
fn a_log_whose_last_file_is_a_cleaned_segment_reopens_with_a_new_active_segment_after_it() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let log = filled(dir.path(), 3);
    let sealed = wait_sealed(&log, 3);
    let end = sealed.last().unwrap().next_offset;
    let before = contents(&log);
    log.replace_segments(&sealed, &keep_even(&sealed)).unwrap();
    log.close().unwrap();
    drop(log);
    // Every segment after the cleaned one is lost (a segment file whose
    // directory entry never reached the disk).
    for name in file_names(dir.path()) {
        let base: u64 = name.split(['.', '-']).next().unwrap().parse().unwrap();
        if base >= end {
            std::fs::remove_file(dir.path().join(name)).unwrap();
        }
    }
    let log = Log::open(dir.path(), config()).unwrap();
    let expected: Vec<_> = after_keep_even(&before, end)
        .into_iter()
        .filter(|(o, _)| *o < end)
        .collect();
    // Read until the gap at the end of the cleaned range, which holds
    // nothing to return.
    let mut got = Vec::new();
    let mut offset = 0;
    loop {
        let bytes = log.read(offset, 1, u64::MAX).unwrap();
        let Some(batch) = BatchIter::new(&bytes).next() else {
            break;
        };
        let h = *batch.unwrap().header();
        got.push((h.base_offset, bytes.to_vec()));
        offset = h.next_offset();
    }
    let offsets = |v: &[(u64, Vec<u8>)]| v.iter().map(|b| b.0).collect::<Vec<_>>();
    assert_eq!(offsets(&got), offsets(&expected));
    assert!(got == expected, "the kept batches read back as written");
    assert_eq!(
        log.next_offset(),
        end,
        "the log continues where the cleaned range ends"
    );
    let info = append(&log, &make_batch(5000, 2, 10));
    assert_eq!(info.base_offset, end);
    log.close().unwrap();
    drop(log);
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.next_offset(), end + 2);
}
