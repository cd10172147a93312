//! Failure injection: a failed flush is fatal, a failed checkpoint is not.
#![cfg(feature = "failpoints")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{append, make_batch, read_batches};
use ferry_proto::batch::ValidBatch;
use ferry_storage::{FlushPolicy, Log, LogConfig, StorageError};
use parking_lot::Mutex;

/// Failpoints are process-global: tests that use them run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn config(flush: FlushPolicy) -> LogConfig {
    LogConfig {
        segment_bytes: 8192,
        flush,
        checkpoint_interval_bytes: 0,
        ..LogConfig::default()
    }
}

#[test]
fn a_failed_flush_makes_the_log_refuse_writes_and_never_ack() {
    let _serial = SERIAL.lock();
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), config(FlushPolicy::Always)).unwrap());
    let b = make_batch(1, 2, 50);
    let ok = append(&log, &b);
    log.wait_durable_blocking(ok.last_offset).unwrap();
    let durable_before = log.durable_offset();

    fail::cfg("storage::flush", "return").unwrap();
    let doomed = append(&log, &b);
    let err = log.wait_durable_blocking(doomed.last_offset).unwrap_err();
    assert!(matches!(err, StorageError::LogFailed { .. }), "{err}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let async_err = rt
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(10),
                log.wait_durable(doomed.last_offset),
            )
            .await
        })
        .unwrap()
        .unwrap_err();
    assert!(matches!(async_err, StorageError::LogFailed { .. }));

    // Even once the disk "recovers", the log never retries and never acks.
    fail::remove("storage::flush");
    assert!(matches!(
        log.append(ValidBatch::exact(&b).unwrap()),
        Err(StorageError::LogFailed { .. })
    ));
    assert!(matches!(log.flush(), Err(StorageError::LogFailed { .. })));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(log.durable_offset(), durable_before);
    assert!(log.failure().unwrap().contains("injected flush failure"));
    // Reads of what is there keep working.
    assert_eq!(read_batches(&log).len(), 2);
    drop(log);
    scenario.teardown();

    let log = Log::open(dir.path(), config(FlushPolicy::Always)).unwrap();
    assert!(log.failure().is_none());
    assert!(log.next_offset() >= durable_before);
}

#[test]
fn a_failed_flush_while_sealing_a_rolled_segment_fails_the_log() {
    let _serial = SERIAL.lock();
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(FlushPolicy::Never)).unwrap();
    let b = make_batch(1, 1, 3000);
    append(&log, &b);
    append(&log, &b);
    fail::cfg("storage::flush", "return").unwrap();
    // The roll itself does not wait for the disk; the seal fails behind it.
    let rolled = log.append(ValidBatch::exact(&b).unwrap()).unwrap();
    assert!(rolled.rolled);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.failure().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the seal never failed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    fail::remove("storage::flush");
    assert!(matches!(
        log.append(ValidBatch::exact(&b).unwrap()),
        Err(StorageError::LogFailed { .. })
    ));
    assert!(matches!(log.flush(), Err(StorageError::LogFailed { .. })));
    // Nothing in the segment that failed to seal was ever called durable.
    assert_eq!(log.durable_offset(), 0);
    scenario.teardown();
}

#[test]
fn durable_offset_never_passes_a_rolled_segment_before_its_seal() {
    let _serial = SERIAL.lock();
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(FlushPolicy::Always)).unwrap();
    let b = make_batch(1, 1, 3000);
    let first = append(&log, &b);
    log.wait_durable_blocking(first.last_offset).unwrap();
    append(&log, &b);
    fail::cfg("storage::seal", "pause").unwrap();
    let rolled = append(&log, &b);
    assert!(rolled.rolled);
    let last = append(&log, &make_batch(2, 1, 100));
    // The flusher is held before the seal; the new segment's appends must
    // not become durable ahead of the segment before them.
    std::thread::sleep(Duration::from_millis(100));
    let durable = log.durable_offset();
    // Release the flusher before asserting, so a failure cannot hang.
    fail::remove("storage::seal");
    assert!(
        durable <= rolled.base_offset,
        "{durable} > {}",
        rolled.base_offset
    );
    log.wait_durable_blocking(last.last_offset).unwrap();
    assert_eq!(log.durable_offset(), log.next_offset());
    let segs = log.segments();
    assert_eq!(segs[0].durable_len, segs[0].data_len);
    scenario.teardown();
}

#[test]
fn a_failed_checkpoint_is_not_fatal_and_recovery_scans_instead() {
    let _serial = SERIAL.lock();
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let b = make_batch(1, 2, 100);
    {
        let log = Log::open(dir.path(), config(FlushPolicy::Never)).unwrap();
        append(&log, &b);
        log.flush().unwrap();
        fail::cfg("storage::checkpoint", "return").unwrap();
        append(&log, &b);
        log.flush().unwrap();
        assert_eq!(log.durable_offset(), 4);
        // The rolled segment's final index cannot be written when it is
        // sealed: its older checkpoint stays, and the log stays usable.
        let big = make_batch(2, 1, 7900);
        let info = append(&log, &big);
        assert!(info.rolled);
        assert_eq!(info.base_offset, 4);
        log.flush().unwrap();
        assert!(log.failure().is_none());
        assert_eq!(log.durable_offset(), 5);
        assert_eq!(log.segments().len(), 2);
        fail::remove("storage::checkpoint");
    }
    scenario.teardown();
    let log = Log::open(dir.path(), config(FlushPolicy::Never)).unwrap();
    assert_eq!(log.next_offset(), 5);
    assert_eq!(read_batches(&log).len(), 3);
    // Both segments were scanned past their last checkpoint.
    assert_eq!(log.recovery_stats().dropped_segments, 0);
    assert!(log.recovery_stats().scanned_bytes >= b.len() as u64 + 7900);
}
