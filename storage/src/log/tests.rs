use std::time::Duration;

use ferry_proto::batch::{BatchBuilder, BatchIter, PATCHED_PREFIX, ValidBatch};

use super::recovery::seal_finished;
use super::*;
use crate::segment::log_file_name;

fn batch(first_ts: i64, records: usize, value_len: usize) -> Bytes {
    let mut b = BatchBuilder::new(first_ts);
    for i in 0..records {
        b.push(first_ts + i as i64, None, Some(&vec![b'v'; value_len]), &[]);
    }
    b.finish()
}

fn append(log: &Log, b: &Bytes) -> AppendInfo {
    log.append(ValidBatch::exact(b).unwrap()).unwrap()
}

fn config(segment_bytes: u64, flush: FlushPolicy) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 512,
        flush,
        checkpoint_interval_bytes: 1 << 20,
        ..LogConfig::default()
    }
}

/// The index built while appending equals one rebuilt by a full scan.
fn assert_index_matches_a_rebuild(log: &Log) {
    assert_eq!(
        log.index_entries().unwrap(),
        log.rebuilt_index_entries().unwrap()
    );
}

/// Every batch's (base offset, record values) read back one offset at a time.
fn read_all(log: &Log) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.next_offset() {
        let bytes = log.read(offset, 1, u64::MAX).unwrap();
        let batches: Vec<_> = BatchIter::new(&bytes).map(Result::unwrap).collect();
        assert_eq!(batches.len(), 1);
        let h = batches[0].header();
        out.push((h.base_offset, h.record_count));
        offset = h.next_offset();
    }
    out
}

#[test]
fn appends_get_consecutive_offsets_and_read_back_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(64 * 1024, FlushPolicy::Never)).unwrap();
    let a = batch(1, 3, 10);
    let b = batch(2, 2, 10);
    assert_eq!(append(&log, &a).base_offset, 0);
    let info = append(&log, &b);
    assert_eq!(
        (info.base_offset, info.last_offset, info.log_start_offset),
        (3, 4, 0)
    );
    assert_eq!(log.next_offset(), 5);
    let got = log.read(0, usize::MAX, u64::MAX).unwrap();
    // Byte for byte but the patched base offset and leader epoch.
    let (len, rest) = (8..12, PATCHED_PREFIX);
    assert_eq!(&got[len.clone()], &a[len.clone()]);
    assert_eq!(&got[rest..a.len()], &a[rest..]);
    let got_b = &got[a.len()..];
    assert_eq!(&got_b[len.clone()], &b[len]);
    assert_eq!(&got_b[rest..], &b[rest..]);
    // An offset inside a batch returns the whole batch it belongs to.
    let mid = log.read(4, 1, u64::MAX).unwrap();
    assert_eq!(ValidBatch::exact(&mid).unwrap().header().base_offset, 3);
    assert!(log.read(5, 100, u64::MAX).unwrap().is_empty());
    assert!(matches!(
        log.read(6, 100, u64::MAX),
        Err(StorageError::OffsetOutOfRange { requested: 6, .. })
    ));
}

#[test]
fn reads_stop_at_the_upper_watermark_and_at_max_bytes_but_return_the_first_batch_whole() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(64 * 1024, FlushPolicy::Never)).unwrap();
    let b = batch(1, 2, 100);
    for _ in 0..4 {
        append(&log, &b);
    }
    assert_eq!(log.read(0, 1, u64::MAX).unwrap().len(), b.len());
    assert_eq!(
        log.read(0, 2 * b.len() + 1, u64::MAX).unwrap().len(),
        2 * b.len()
    );
    assert_eq!(log.read(0, usize::MAX, 4).unwrap().len(), 2 * b.len());
    assert_eq!(log.read(0, usize::MAX, 3).unwrap().len(), b.len());
    assert!(log.read(0, usize::MAX, 1).unwrap().is_empty());
    assert!(log.read(4, usize::MAX, 4).unwrap().is_empty());
}

#[test]
fn a_batch_that_does_not_fit_rolls_and_reads_continue_across_the_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap();
    let b = batch(1, 1, 1000);
    for _ in 0..10 {
        append(&log, &b);
    }
    // Rolled segments are sealed in the background; a flush waits for that.
    log.flush().unwrap();
    let segs = log.segments();
    assert!(segs.len() >= 3, "{segs:?}");
    for pair in segs.windows(2) {
        assert_eq!(pair[0].next_offset, pair[1].base_offset);
        // Sealed segments are flushed in full.
        assert_eq!(pair[0].durable_len, pair[0].data_len);
    }
    // Reading at the end of a segment continues into the next one, and one
    // read never spans two segments.
    let first_end = segs[0].next_offset;
    let got = log.read(first_end, usize::MAX, u64::MAX).unwrap();
    assert_eq!(
        ValidBatch::new(&got).unwrap().header().base_offset,
        first_end
    );
    assert_eq!(got.len() as u64, segs[1].data_len);
    assert_eq!(read_all(&log).len(), 10);
    assert_eq!(log.size_bytes(), 10 * b.len() as u64);
}

#[test]
fn a_batch_larger_than_a_segment_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap();
    let b = batch(1, 1, 5000);
    assert!(matches!(
        log.append(ValidBatch::exact(&b).unwrap()),
        Err(StorageError::BatchTooLarge { max: 4096, .. })
    ));
    assert_eq!(log.next_offset(), 0);
}

#[test]
fn a_closed_log_reopens_without_scanning_and_continues_at_the_next_offset() {
    let dir = tempfile::tempdir().unwrap();
    let b = batch(1, 2, 300);
    {
        let log = Log::open(dir.path(), config(8192, FlushPolicy::Never)).unwrap();
        for _ in 0..20 {
            append(&log, &b);
        }
        log.close().unwrap();
        log.close().unwrap();
        assert!(matches!(
            log.append(ValidBatch::exact(&b).unwrap()),
            Err(StorageError::Closed)
        ));
    }
    let log = Log::open(dir.path(), config(8192, FlushPolicy::Never)).unwrap();
    let stats = log.recovery_stats();
    assert_eq!((stats.scanned_bytes, stats.rebuilt_indexes), (0, 0));
    assert_eq!(log.next_offset(), 40);
    assert_eq!(log.durable_offset(), 40);
    assert_eq!(append(&log, &b).base_offset, 40);
    assert_eq!(read_all(&log).len(), 21);
    assert_index_matches_a_rebuild(&log);
}

#[test]
fn a_dropped_log_recovers_its_unflushed_tail_by_scanning() {
    let dir = tempfile::tempdir().unwrap();
    let b = batch(1, 2, 300);
    {
        let log = Log::open(dir.path(), config(64 * 1024, FlushPolicy::Never)).unwrap();
        for _ in 0..5 {
            append(&log, &b);
        }
        log.flush().unwrap();
        for _ in 0..5 {
            append(&log, &b);
        }
        assert_eq!(log.durable_offset(), 10);
    }
    let log = Log::open(dir.path(), config(64 * 1024, FlushPolicy::Never)).unwrap();
    assert!(log.recovery_stats().scanned_bytes > 0);
    assert_eq!(log.next_offset(), 20);
    assert_eq!(log.durable_offset(), 20);
    assert_index_matches_a_rebuild(&log);
}

#[test]
fn always_policy_group_commits_and_wakes_blocking_and_async_waiters() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), config(1 << 20, FlushPolicy::Always)).unwrap());
    let b = batch(1, 1, 100);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let log = log.clone();
            let b = b.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    let info = append(&log, &b);
                    log.wait_durable_blocking(info.last_offset).unwrap();
                    assert!(log.durable_offset() > info.last_offset);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let info = append(&log, &b);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), log.wait_durable(info.last_offset))
            .await
            .unwrap()
            .unwrap();
    });
    assert_eq!(log.durable_offset(), 81);
    assert_eq!(
        *log.watch().borrow(),
        Watermarks {
            next_offset: 81,
            durable_offset: 81
        }
    );
}

#[test]
fn a_long_wait_under_the_interval_policy_wakes_when_the_timer_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        config(1 << 20, FlushPolicy::Interval(Duration::from_millis(200))),
    )
    .unwrap();
    let info = append(&log, &batch(1, 1, 10));
    let start = std::time::Instant::now();
    log.wait_durable_blocking(info.last_offset).unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn never_policy_flushes_only_on_demand_and_close_fails_pending_waiters() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), config(1 << 20, FlushPolicy::Never)).unwrap());
    append(&log, &batch(1, 1, 10));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(log.durable_offset(), 0);
    let waiter = {
        let log = log.clone();
        std::thread::spawn(move || log.wait_durable_blocking(5))
    };
    log.flush().unwrap();
    assert_eq!(log.durable_offset(), 1);
    log.close().unwrap();
    assert!(matches!(waiter.join().unwrap(), Err(StorageError::Closed)));
}

/// A log with `retention_bytes = 0` holding ten 1000-byte batches in 4 KiB
/// segments.
fn ten_segments_all_past_retention(dir: &Path) -> Log {
    let mut cfg = config(4096, FlushPolicy::Never);
    cfg.retention_bytes = Some(0);
    let log = Log::open(dir, cfg).unwrap();
    for _ in 0..10 {
        append(&log, &batch(1, 1, 1000));
    }
    log
}

#[test]
fn retention_deletes_only_whole_sealed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = ten_segments_all_past_retention(dir.path());
    log.flush().unwrap();
    let before = log.segments();
    let held = log.read(0, usize::MAX, u64::MAX).unwrap();
    let out = log.apply_retention(0).unwrap();
    let after = log.segments();
    assert_eq!(after.len(), 1, "only the active segment is left");
    assert_eq!(out.segments_deleted, before.len() - 1);
    assert_eq!(out.log_start_offset, after[0].base_offset);
    assert_eq!(log.log_start_offset(), after[0].base_offset);
    assert!(!before[0].log_path.exists() && !before[0].index_path.exists());
    // A read handed out before the deletion still sees its bytes.
    assert_eq!(ValidBatch::new(&held).unwrap().header().base_offset, 0);
    assert!(matches!(
        log.read(0, 1, u64::MAX),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    drop(log);
    let log = Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap();
    assert_eq!(log.log_start_offset(), after[0].base_offset);
    assert_eq!(log.next_offset(), 10);
}

#[test]
fn a_roll_by_hand_starts_the_next_append_in_a_segment_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(64 * 1024, FlushPolicy::Never)).unwrap();
    assert!(!log.roll().unwrap(), "an empty active segment is kept");
    append(&log, &batch(1, 2, 10));
    assert!(log.roll().unwrap());
    assert!(!log.roll().unwrap());
    let info = append(&log, &batch(2, 1, 10));
    assert!(!info.rolled);
    log.flush().unwrap();
    let segs = log.segments();
    assert_eq!(segs.len(), 2);
    assert_eq!((segs[1].base_offset, segs[1].next_offset), (2, 3));
    assert_eq!(log.delete_below(2).unwrap().segments_deleted, 1);
    assert_eq!(read_all(&log), vec![(2, 1)]);
    drop(log);
    let log = Log::open(dir.path(), config(64 * 1024, FlushPolicy::Never)).unwrap();
    assert_eq!((log.log_start_offset(), log.next_offset()), (2, 3));
}

#[test]
fn delete_below_removes_only_segments_wholly_before_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap();
    // Two batches of one record per segment: segments start at 0, 2, 4, 6.
    for ts in 0..7 {
        append(&log, &batch(ts, 1, 1500));
    }
    log.flush().unwrap();
    // Offset 3 sits in the segment starting at 2: only [0, 2) goes.
    let out = log.delete_below(3).unwrap();
    assert_eq!(out.segments_deleted, 1);
    assert_eq!(log.log_start_offset(), 2);
    assert_eq!(log.delete_below(3).unwrap().segments_deleted, 0);
    // Past the end: everything but the active segment goes.
    let out = log.delete_below(u64::MAX).unwrap();
    assert_eq!(out.segments_deleted, 2);
    assert_eq!(log.log_start_offset(), 6);
    assert_eq!(read_all(&log), vec![(6, 1)]);
    drop(log);
    let log = Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap();
    assert_eq!((log.log_start_offset(), log.next_offset()), (6, 7));
}

#[test]
fn retention_by_age_uses_each_segments_newest_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(4096, FlushPolicy::Never);
    cfg.retention_ms = Some(1000);
    let log = Log::open(dir.path(), cfg).unwrap();
    for ts in [100, 200, 300, 5000, 5100, 5200] {
        append(&log, &batch(ts, 1, 1500));
    }
    // Two batches per segment: segments end at ts 200, 5000, 5200.
    log.flush().unwrap();
    let out = log.apply_retention(5500).unwrap();
    assert_eq!(out.segments_deleted, 1);
    assert_eq!(log.log_start_offset(), 2);
}

#[test]
fn offset_for_timestamp_finds_the_first_batch_that_reaches_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap();
    for ts in [10, 20, 30, 40, 50] {
        append(&log, &batch(ts, 2, 1200));
    }
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(21).unwrap(), Some(2));
    assert_eq!(log.offset_for_timestamp(41).unwrap(), Some(6));
    assert_eq!(log.offset_for_timestamp(42).unwrap(), Some(8));
    assert_eq!(log.offset_for_timestamp(52).unwrap(), None);
}

/// The first of `batches` (base offset, max timestamp) whose max timestamp
/// reaches `t`: what a walk of every batch finds.
fn first_reaching(batches: &[(u64, i64)], t: i64) -> Option<u64> {
    batches.iter().find(|(_, ts)| *ts >= t).map(|(o, _)| *o)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

    /// Timestamps in any order (CreateTime is the producer's): the lookup
    /// through the time entries, while appending, after a close (entries
    /// from the files) and after a crash (entries rebuilt by recovery),
    /// equals a walk of every batch.
    #[test]
    fn a_time_lookup_through_the_index_finds_what_a_walk_of_every_batch_finds(
        stamps in proptest::collection::vec(0i64..1000, 1..120),
        probes in proptest::collection::vec(-5i64..1010, 1..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut batches = Vec::new();
        let check = |log: &Log, batches: &[(u64, i64)]| {
            for &t in &probes {
                proptest::prop_assert_eq!(
                    log.offset_for_timestamp(t).unwrap(),
                    first_reaching(batches, t),
                    "timestamp {}", t
                );
            }
            assert_index_matches_a_rebuild(log);
            Ok(())
        };
        {
            let log = Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap();
            for &ts in &stamps {
                batches.push((append(&log, &batch(ts, 1, 200)).base_offset, ts));
            }
            check(&log, &batches)?;
            log.close().unwrap();
        }
        {
            let log = Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap();
            check(&log, &batches)?;
            for &ts in stamps.iter().rev().take(10) {
                batches.push((append(&log, &batch(ts, 1, 200)).base_offset, ts));
            }
        }
        let log = Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap();
        check(&log, &batches)?;
    }
}

#[test]
fn a_time_lookup_reads_batch_headers_from_its_index_entry_not_the_segment_start() {
    let dir = tempfile::tempdir().unwrap();
    let segs = {
        let log = Log::open(dir.path(), config(64 * 1024, FlushPolicy::Never)).unwrap();
        for ts in 0..40 {
            append(&log, &batch(ts * 10, 1, 200));
        }
        log.close().unwrap();
        log.segments()
    };
    // Damage the first batch's length: any walk from position 0 now fails.
    let mut data = std::fs::read(&segs[0].log_path).unwrap();
    data[ferry_proto::batch::layout::BATCH_LEN..ferry_proto::batch::layout::BATCH_LEN + 4]
        .copy_from_slice(&i32::MAX.to_be_bytes());
    std::fs::write(&segs[0].log_path, &data).unwrap();
    let log = Log::open(dir.path(), config(64 * 1024, FlushPolicy::Never)).unwrap();
    assert!(matches!(
        log.offset_for_timestamp(0),
        Err(StorageError::Corrupt { position: 0, .. })
    ));
    // Batches are 200-odd bytes and entries 512 bytes apart: timestamp 300
    // is batch 30, found from the entry before it.
    assert_eq!(log.offset_for_timestamp(300).unwrap(), Some(30));
    assert_eq!(log.offset_for_timestamp(391).unwrap(), None);
}

#[test]
fn each_segment_records_its_own_max_timestamp_not_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let segs = {
        let log = Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap();
        // Two batches per segment; the late timestamp comes first, so a
        // running maximum over the whole log would stamp every later
        // segment with it.
        for ts in [9000, 100, 110, 120, 130, 140] {
            append(&log, &batch(ts, 1, 1500));
        }
        log.close().unwrap();
        log.segments()
    };
    let recorded: Vec<i64> = segs
        .iter()
        .map(|s| match index::read_header(&s.index_path) {
            index::DiskRead::Present(h) => h.max_timestamp,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(recorded, vec![9000, 120, 140]);
    let log = Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap();
    assert_eq!(log.offset_for_timestamp(9001).unwrap(), None);
    assert_index_matches_a_rebuild(&log);
}

#[test]
fn a_missing_sealed_index_is_rebuilt_and_a_corrupt_sealed_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let b = batch(1, 1, 1000);
    let segs = {
        let log = Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap();
        for _ in 0..10 {
            append(&log, &b);
        }
        log.close().unwrap();
        log.segments()
    };
    std::fs::remove_file(&segs[0].index_path).unwrap();
    std::fs::write(&segs[1].index_path, b"garbage").unwrap();
    {
        let log = Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap();
        assert_eq!(log.recovery_stats().rebuilt_indexes, 2);
        assert_eq!(read_all(&log).len(), 10);
        assert_index_matches_a_rebuild(&log);
    }
    // Damage inside a sealed segment whose index is also gone: data after
    // the damage must not be silently dropped.
    std::fs::remove_file(&segs[0].index_path).unwrap();
    let mut data = std::fs::read(&segs[0].log_path).unwrap();
    data[b.len() + 100] ^= 0xff;
    std::fs::write(&segs[0].log_path, &data).unwrap();
    let err = Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap_err();
    match err {
        StorageError::Corrupt { path, position, .. } => {
            assert_eq!(path, segs[0].log_path);
            assert_eq!(position, b.len() as u64);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_stray_empty_segment_file_that_does_not_continue_the_log_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap();
        for _ in 0..3 {
            append(&log, &batch(1, 1, 100));
        }
        log.close().unwrap();
    }
    std::fs::write(dir.path().join(log_file_name(1000)), b"").unwrap();
    std::fs::write(dir.path().join("00000000000000000007.index.tmp"), b"x").unwrap();
    let log = Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap();
    assert_eq!(log.next_offset(), 3);
    assert_eq!(log.segments().len(), 1);
    assert!(!dir.path().join(log_file_name(1000)).exists());
    assert_eq!(append(&log, &batch(1, 1, 100)).base_offset, 3);
}

#[test]
fn invalid_configs_are_rejected_at_open() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Log::open(dir.path(), config(100, FlushPolicy::Never)),
        Err(StorageError::InvalidConfig(_))
    ));
}

/// Closes a log of `batches` 1000-byte batches in 4 KiB segments (three
/// batches each) and returns its segments.
fn sealed_log(dir: &Path, batches: usize) -> (Bytes, Vec<SegmentInfo>) {
    let b = batch(1, 1, 1000);
    let log = Log::open(dir, config(4096, FlushPolicy::Never)).unwrap();
    for _ in 0..batches {
        append(&log, &b);
    }
    log.close().unwrap();
    (b, log.segments())
}

/// Replaces a segment's final index with a checkpoint of its first batch,
/// which is what the file holds while the segment waits for its seal.
fn unseal(seg: &SegmentInfo, batch_len: usize) {
    let header = index::IndexHeader {
        base_offset: seg.base_offset,
        valid_len: batch_len as u64,
        next_offset: seg.base_offset + 1,
        max_timestamp: 1,
        entry_count: 0,
        entries_crc: 0,
        version: index::INDEX_VERSION,
    };
    index::write(&seg.index_path, &header, &[]).unwrap();
}

#[test]
fn a_crash_with_seals_queued_loses_nothing_the_page_cache_holds() {
    let dir = tempfile::tempdir().unwrap();
    let b = batch(1, 1, 1000);
    {
        let log = Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap();
        for _ in 0..30 {
            append(&log, &b);
        }
        // Dropped without close: a process crash, seals done or not.
    }
    let log = Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap();
    assert_eq!(read_all(&log).len(), 30);
    assert_eq!(log.recovery_stats().dropped_segments, 0);
    assert_index_matches_a_rebuild(&log);
}

#[test]
fn a_segment_whose_seal_did_not_finish_is_scanned_past_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (b, segs) = sealed_log(dir.path(), 10);
    assert_eq!(segs.len(), 4);
    unseal(&segs[2], b.len());
    let log = Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap();
    assert_eq!(read_all(&log).len(), 10);
    let stats = log.recovery_stats();
    assert_eq!(stats.dropped_segments, 0);
    assert_eq!(stats.scanned_bytes, 2 * b.len() as u64);
    assert_index_matches_a_rebuild(&log);
    drop(log);
    // Its index is final now: the next open scans nothing.
    let log = Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap();
    assert_eq!(log.recovery_stats().scanned_bytes, 0);
}

#[test]
fn a_segment_that_lost_its_tail_before_its_seal_ends_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (b, segs) = sealed_log(dir.path(), 10);
    unseal(&segs[2], b.len());
    // The machine crashed before the seal's msync: the third batch of the
    // segment never reached the disk, though later pages did.
    let mut data = std::fs::read(&segs[2].log_path).unwrap();
    let third = 2 * b.len();
    data[third..third + 512].fill(0);
    std::fs::write(&segs[2].log_path, &data).unwrap();
    let log = Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap();
    let stats = log.recovery_stats();
    assert_eq!(stats.dropped_segments, 1);
    assert_eq!(log.next_offset(), segs[2].base_offset + 2);
    assert_eq!(read_all(&log).len(), 8);
    assert!(!segs[3].log_path.exists());
    assert!(!segs[3].index_path.exists());
    // The log goes on from where it now ends.
    assert_eq!(append(&log, &b).base_offset, segs[2].base_offset + 2);
    log.close().unwrap();
    let log = Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap();
    assert_eq!(read_all(&log).len(), 9);
}

#[test]
fn an_unfinished_seal_before_a_finished_one_is_damage_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let (b, segs) = sealed_log(dir.path(), 10);
    // Seals finish in order, so a stale index behind a final one cannot be
    // left by a crash: refuse to open rather than drop what follows.
    unseal(&segs[1], b.len());
    match Log::open(dir.path(), config(4096, FlushPolicy::Never)).unwrap_err() {
        StorageError::Corrupt { path, .. } => assert_eq!(path, segs[1].log_path),
        other => panic!("{other}"),
    }
    assert!(segs[3].log_path.exists());
}

#[test]
fn durable_offset_passes_a_rolled_segment_only_once_it_is_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(4096, FlushPolicy::Always)).unwrap();
    let b = batch(1, 1, 1000);
    let mut last = None;
    for _ in 0..10 {
        last = Some(append(&log, &b));
    }
    log.wait_durable_blocking(last.unwrap().last_offset)
        .unwrap();
    assert!(log.inner.sealing.lock().is_empty());
    for seg in &log.segments()[..3] {
        assert_eq!(seg.durable_len, seg.data_len);
        assert!(seal_finished(dir.path(), seg.base_offset, seg.next_offset));
    }
}

#[test]
fn retention_keeps_segments_whose_seal_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let log = ten_segments_all_past_retention(dir.path());
    // Hold the flusher off the queue while retention runs.
    let flush_guard = log.inner.flush_lock.lock();
    let queued = log.inner.sealing.lock().len();
    let before = log.segments().len();
    let out = log.apply_retention(0).unwrap();
    assert_eq!(out.segments_deleted, before - 1 - queued);
    drop(flush_guard);
    log.flush().unwrap();
    assert_eq!(log.apply_retention(0).unwrap().segments_deleted, queued);
    assert_eq!(log.segments().len(), 1);
}

/// Events one thread logged, as `(level, message and fields)`.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<(tracing::Level, String)>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Fields<'a>(&'a mut String);
        impl tracing::field::Visit for Fields<'_> {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                use std::fmt::Write;
                let _ = write!(self.0, " {}={value:?}", field.name());
            }
        }
        let mut line = String::new();
        event.record(&mut Fields(&mut line));
        self.0.lock().push((*event.metadata().level(), line));
    }
}

impl Captured {
    /// Runs `f` with this thread's events captured. Recovery runs on the
    /// thread that opens the log, so its events are all here.
    fn during<T>(f: impl FnOnce() -> T) -> (T, Captured) {
        use tracing_subscriber::layer::SubscriberExt;
        let captured = Captured::default();
        let subscriber = tracing_subscriber::Registry::default().with(captured.clone());
        let out = tracing::subscriber::with_default(subscriber, f);
        (out, captured)
    }

    /// The events above debug level.
    fn loud(&self) -> Vec<(tracing::Level, String)> {
        use tracing::Level;
        self.0
            .lock()
            .iter()
            .filter(|(level, _)| matches!(*level, Level::ERROR | Level::WARN | Level::INFO))
            .cloned()
            .collect()
    }
}

fn open_captured(dir: &Path, config: LogConfig) -> (Log, Captured) {
    let (log, captured) = Captured::during(|| Log::open(dir, config));
    (log.unwrap(), captured)
}

#[test]
fn a_fresh_log_and_a_cleanly_closed_one_open_without_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(1 << 20, FlushPolicy::Never);
    let (log, captured) = open_captured(dir.path(), config.clone());
    assert_eq!(captured.loud(), vec![], "fresh open");
    assert_eq!(log.recovery_stats().lost_bytes, 0);
    let b = batch(1, 2, 300);
    for _ in 0..10 {
        append(&log, &b);
    }
    log.close().unwrap();
    drop(log);
    let (log, captured) = open_captured(dir.path(), config);
    assert_eq!(captured.loud(), vec![], "reopen after close");
    assert_eq!(log.recovery_stats().lost_bytes, 0);
    assert_eq!(log.next_offset(), 20);
}

#[test]
fn a_flushed_log_dropped_without_close_reopens_without_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(1 << 20, FlushPolicy::Never);
    let b = batch(1, 2, 300);
    {
        let log = Log::open(dir.path(), config.clone()).unwrap();
        for _ in 0..10 {
            append(&log, &b);
        }
        log.flush().unwrap();
    }
    let (log, captured) = open_captured(dir.path(), config);
    assert_eq!(captured.loud(), vec![]);
    let stats = log.recovery_stats();
    assert!(
        stats.scanned_bytes > 0,
        "the tail past the checkpoint is scanned"
    );
    assert_eq!(stats.lost_bytes, 0);
    assert_eq!(log.next_offset(), 20);
}

/// Writes `bytes` at `position` of the file, as a crash might have left them.
fn write_at(path: &Path, position: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, position).unwrap();
}

/// The one warning recovery logged, which must report `lost_bytes`.
fn assert_one_torn_tail_warning(captured: &Captured, lost_bytes: u64) {
    let loud = captured.loud();
    assert_eq!(loud.len(), 1, "{loud:?}");
    let (level, line) = &loud[0];
    assert_eq!(*level, tracing::Level::WARN, "{line}");
    assert!(
        line.contains(&format!(" lost_bytes={lost_bytes} ")),
        "{line}"
    );
}

#[test]
fn garbage_after_the_valid_end_is_a_torn_tail_warned_with_its_lost_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(1 << 20, FlushPolicy::Never);
    let b = batch(1, 2, 300);
    let end = {
        let log = Log::open(dir.path(), config.clone()).unwrap();
        for _ in 0..10 {
            append(&log, &b);
        }
        log.close().unwrap();
        log.segments()[0].data_len
    };
    let path = dir.path().join(log_file_name(0));
    write_at(&path, end + 1000, &[0xab; 100]);
    let (log, captured) = open_captured(dir.path(), config);
    assert_one_torn_tail_warning(&captured, 1100);
    assert_eq!(log.recovery_stats().lost_bytes, 1100);
    assert_eq!(log.next_offset(), 20, "the valid batches all survive");
    let content = std::fs::read(&path).unwrap();
    assert!(content[end as usize..].iter().all(|b| *b == 0));
}

#[test]
fn a_garbled_last_batch_is_cut_and_warned_with_the_bytes_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(1 << 20, FlushPolicy::Never);
    let b = batch(1, 2, 300);
    {
        let log = Log::open(dir.path(), config.clone()).unwrap();
        for _ in 0..3 {
            append(&log, &b);
        }
        log.flush().unwrap();
    }
    let path = dir.path().join(log_file_name(0));
    let valid_end = 2 * b.len() as u64;
    write_at(&path, valid_end + b.len() as u64 / 2, &[0xff; 8]);
    // The precise loss: up to the last non-zero byte of the garbled batch.
    let content = std::fs::read(&path).unwrap();
    let last = content[valid_end as usize..]
        .iter()
        .rposition(|b| *b != 0)
        .unwrap() as u64;
    let (log, captured) = open_captured(dir.path(), config);
    assert_one_torn_tail_warning(&captured, last + 1);
    assert_eq!(log.recovery_stats().lost_bytes, last + 1);
    assert_eq!(log.next_offset(), 4, "the log ends after the second batch");
}

#[test]
fn a_cleaned_segment_supersedes_every_segment_whose_base_lies_in_its_range() {
    use crate::segment::SegmentName;
    let (p, c) = (SegmentName::plain, SegmentName::cleaned);
    // A crash after the rename of 0-300 and before the deletion of the
    // segments it replaced, with an earlier, narrower cleaning of 0-100.
    let found = vec![p(300), c(0, 100), p(0), p(100), p(200), c(0, 300), p(400)];
    let (kept, superseded) = super::recovery::supersede(found);
    assert_eq!(kept, vec![c(0, 300), p(300), p(400)]);
    assert_eq!(superseded, vec![p(0), c(0, 100), p(100), p(200)]);
    assert_eq!(
        SegmentName::parse_stem("00000000000000000000-00000000000000000300"),
        Some(c(0, 300))
    );
    assert_eq!(
        SegmentName::parse_stem("00000000000000000300-00000000000000000300"),
        None
    );
    assert_eq!(SegmentName::parse_stem("0000000000000000030"), None);
}
