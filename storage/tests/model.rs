//! Model-based test: random appends, flushes, crashes (the durable prefix
//! plus any prefix of the un-flushed tail survives; the rest is zeroed or
//! overwritten with garbage), reopens and reads, checked against a shadow
//! model of the log after every step.
//!
//! The proptest seed is printed; rerun with `FERRY_SEED=<seed>`. Failures
//! shrink to a minimal sequence of transitions.

mod common;

use common::{make_batch, read_batches, seed, stored};
use ferry_proto::batch::ValidBatch;
use ferry_storage::{FlushPolicy, Log, LogConfig};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SEGMENT_BYTES: u64 = 8 * 1024;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        index_interval_bytes: 700,
        flush: FlushPolicy::Never,
        checkpoint_interval_bytes: 2048,
        ..LogConfig::default()
    }
}

#[derive(Clone, Debug)]
struct MBatch {
    id: u64,
    records: usize,
    value_len: usize,
    base_offset: u64,
    position: u64,
    len: u64,
}

impl MBatch {
    fn next_offset(&self) -> u64 {
        self.base_offset + self.records as u64
    }
    fn bytes(&self) -> Vec<u8> {
        stored(
            &make_batch(self.id, self.records, self.value_len),
            self.base_offset,
        )
    }
}

#[derive(Clone, Debug)]
struct MSeg {
    base: u64,
    batches: Vec<MBatch>,
    len: u64,
    durable_len: u64,
}

#[derive(Clone, Debug)]
struct CrashPlan {
    seg_base: u64,
    cut: u64,
    old_len: u64,
    garbage_seed: Option<u64>,
}

#[derive(Clone, Debug)]
struct Model {
    segments: Vec<MSeg>,
    next_offset: u64,
    next_id: u64,
    crash: Option<CrashPlan>,
}

impl Model {
    /// A lower bound of the log's durable offset: the end of the durable
    /// prefix. A rolled segment is sealed in the background, so it counts
    /// as durable only from the next flush on.
    fn durable_offset(&self) -> u64 {
        let mut durable = self.segments[0].base;
        for seg in &self.segments {
            for b in &seg.batches {
                if b.position + b.len > seg.durable_len {
                    return durable;
                }
                durable = b.next_offset();
            }
            if seg.durable_len < seg.len {
                return durable;
            }
            durable = durable.max(seg.batches.last().map_or(seg.base, MBatch::next_offset));
        }
        durable
    }

    fn all_durable(&mut self) {
        for seg in &mut self.segments {
            seg.durable_len = seg.len;
        }
    }

    fn all_batches(&self) -> impl Iterator<Item = &MBatch> {
        self.segments.iter().flat_map(|s| s.batches.iter())
    }

    /// What `Log::read(offset, max_bytes, upper)` must return.
    fn expected_read(&self, offset: u64, max_bytes: usize, upper: u64) -> Vec<u8> {
        let limit = upper.min(self.next_offset);
        if offset >= limit {
            return Vec::new();
        }
        for seg in &self.segments {
            let Some(i) = seg.batches.iter().position(|b| b.next_offset() > offset) else {
                continue;
            };
            if seg.batches[i].base_offset > offset {
                continue;
            }
            let mut out = Vec::new();
            for b in &seg.batches[i..] {
                if b.next_offset() > limit
                    || (!out.is_empty() && out.len() + b.len as usize > max_bytes)
                {
                    break;
                }
                out.extend_from_slice(&b.bytes());
            }
            return out;
        }
        Vec::new()
    }
}

#[derive(Clone, Debug)]
enum Transition {
    Append {
        records: usize,
        value_len: usize,
    },
    Flush,
    Crash {
        cut_fraction: u16,
        garbage: Option<u64>,
    },
    Reopen,
    Read {
        offset_fraction: u16,
        max_bytes: usize,
        durable_only: bool,
    },
}

/// The bytes a crash leaves in `[cut, old_len)`: zeros, or garbage.
fn crash_damage(cut: u64, old_len: u64, garbage_seed: Option<u64>) -> Vec<u8> {
    let mut damage = vec![0u8; (old_len - cut) as usize];
    if let Some(seed) = garbage_seed {
        StdRng::seed_from_u64(seed).fill(&mut damage[..]);
    }
    damage
}

struct LogModel;

impl ReferenceStateMachine for LogModel {
    type State = Model;
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model {
            segments: vec![MSeg {
                base: 0,
                batches: Vec::new(),
                len: 0,
                durable_len: 0,
            }],
            next_offset: 0,
            next_id: 0,
            crash: None,
        })
        .boxed()
    }

    fn transitions(_state: &Model) -> BoxedStrategy<Transition> {
        prop_oneof![
            6 => (1usize..6, prop_oneof![0usize..200, 200usize..1500])
                .prop_map(|(records, value_len)| Transition::Append { records, value_len }),
            2 => Just(Transition::Flush),
            2 => (any::<u16>(), proptest::option::of(any::<u64>()))
                .prop_map(|(cut_fraction, garbage)| Transition::Crash { cut_fraction, garbage }),
            1 => Just(Transition::Reopen),
            3 => (any::<u16>(), 1usize..20_000, any::<bool>())
                .prop_map(|(offset_fraction, max_bytes, durable_only)| Transition::Read { offset_fraction, max_bytes, durable_only }),
        ]
        .boxed()
    }

    fn apply(mut state: Model, t: &Transition) -> Model {
        state.crash = None;
        match *t {
            Transition::Append { records, value_len } => {
                let len = make_batch(state.next_id, records, value_len).len() as u64;
                let last = state.segments.last_mut().unwrap();
                if last.len + len > SEGMENT_BYTES {
                    state.segments.push(MSeg {
                        base: state.next_offset,
                        batches: Vec::new(),
                        len: 0,
                        durable_len: 0,
                    });
                }
                let last = state.segments.last_mut().unwrap();
                last.batches.push(MBatch {
                    id: state.next_id,
                    records,
                    value_len,
                    base_offset: state.next_offset,
                    position: last.len,
                    len,
                });
                last.len += len;
                state.next_offset += records as u64;
                state.next_id += 1;
            }
            Transition::Flush | Transition::Reopen => state.all_durable(),
            Transition::Crash {
                cut_fraction,
                garbage,
            } => {
                let last = state.segments.last_mut().unwrap();
                let span = last.len - last.durable_len;
                let cut = last.durable_len + span * u64::from(cut_fraction) / u64::from(u16::MAX);
                state.crash = Some(CrashPlan {
                    seg_base: last.base,
                    cut,
                    old_len: last.len,
                    garbage_seed: garbage,
                });
                // A batch survives iff the damage left its bytes unchanged
                // (zeroing bytes that were zero already changes nothing).
                let damage = crash_damage(cut, last.len, garbage);
                let survivors = last
                    .batches
                    .iter()
                    .take_while(|b| {
                        let bytes = b.bytes();
                        (b.position..b.position + b.len)
                            .filter(|p| *p >= cut)
                            .all(|p| bytes[(p - b.position) as usize] == damage[(p - cut) as usize])
                    })
                    .count();
                last.batches.truncate(survivors);
                last.len = last.batches.last().map_or(0, |b| b.position + b.len);
                state.next_offset = last.batches.last().map_or(last.base, MBatch::next_offset);
                // Recovery flushes everything it keeps.
                state.all_durable();
            }
            Transition::Read { .. } => {}
        }
        state
    }
}

struct Sut {
    dir: tempfile::TempDir,
    log: Option<Log>,
}

impl Sut {
    fn log(&self) -> &Log {
        self.log.as_ref().unwrap()
    }
}

impl StateMachineTest for LogModel {
    type SystemUnderTest = Sut;
    type Reference = LogModel;

    fn init_test(_: &Model) -> Sut {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), config()).unwrap();
        Sut {
            dir,
            log: Some(log),
        }
    }

    fn apply(mut sut: Sut, model: &Model, t: Transition) -> Sut {
        match t {
            Transition::Append { records, value_len } => {
                let b = make_batch(model.next_id - 1, records, value_len);
                let info = sut.log().append(ValidBatch::exact(&b).unwrap()).unwrap();
                assert_eq!(info.last_offset + 1, model.next_offset);
            }
            Transition::Flush => sut.log().flush().unwrap(),
            Transition::Reopen => {
                sut.log.take().unwrap().close().unwrap();
                let log = Log::open(sut.dir.path(), config()).unwrap();
                assert_eq!(
                    log.recovery_stats().scanned_bytes,
                    0,
                    "close leaves nothing to scan"
                );
                sut.log = Some(log);
            }
            Transition::Crash { .. } => {
                let plan = model.crash.clone().unwrap();
                let seg = sut.log().segments().pop().unwrap();
                assert_eq!(
                    (seg.base_offset, seg.data_len),
                    (plan.seg_base, plan.old_len)
                );
                assert!(
                    seg.durable_len <= plan.cut,
                    "the cut never reaches durable data"
                );
                drop(sut.log.take());
                let mut bytes = std::fs::read(&seg.log_path).unwrap();
                let range = plan.cut as usize..plan.old_len as usize;
                bytes[range].copy_from_slice(&crash_damage(
                    plan.cut,
                    plan.old_len,
                    plan.garbage_seed,
                ));
                std::fs::write(&seg.log_path, &bytes).unwrap();
                sut.log = Some(Log::open(sut.dir.path(), config()).unwrap());
            }
            Transition::Read {
                offset_fraction,
                max_bytes,
                durable_only,
            } => {
                let log = sut.log();
                let start = log.log_start_offset();
                let offset = start
                    + (model.next_offset - start + 1) * u64::from(offset_fraction)
                        / (u64::from(u16::MAX) + 1);
                let upper = if durable_only {
                    log.durable_offset()
                } else {
                    log.next_offset()
                };
                let got = log.read(offset, max_bytes, upper).unwrap();
                assert_eq!(
                    got.to_vec(),
                    model.expected_read(offset, max_bytes, upper),
                    "read({offset}, {max_bytes}, {upper})"
                );
            }
        }
        sut
    }

    fn check_invariants(sut: &Sut, model: &Model) {
        let log = sut.log();
        assert_eq!(log.next_offset(), model.next_offset);
        assert!(log.durable_offset() >= model.durable_offset());
        let segs = log.segments();
        let bases: Vec<_> = segs.iter().map(|s| (s.base_offset, s.data_len)).collect();
        let want: Vec<_> = model.segments.iter().map(|s| (s.base, s.len)).collect();
        assert_eq!(bases, want);
        let got = read_batches(log);
        let want: Vec<Vec<u8>> = model.all_batches().map(MBatch::bytes).collect();
        assert!(got == want, "log content differs from the model");
        assert_eq!(
            log.index_entries().unwrap(),
            log.rebuilt_index_entries().unwrap()
        );
    }
}

static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

fn proptest_config() -> Config {
    Config {
        cases: 48,
        rng_seed: RngSeed::Fixed(*SEED.get_or_init(|| seed("model"))),
        failure_persistence: None,
        ..Config::default()
    }
}

prop_state_machine! {
    #![proptest_config(proptest_config())]
    #[test]
    fn the_log_matches_its_model_through_appends_flushes_crashes_and_reopens(sequential 1..40 => LogModel);
}

fn long_config() -> Config {
    Config {
        cases: 1000,
        ..proptest_config()
    }
}

prop_state_machine! {
    #![proptest_config(long_config())]
    #[test]
    #[ignore = "long soak of the model test"]
    fn the_log_matches_its_model_over_many_long_runs(sequential 1..120 => LogModel);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Recovery over arbitrary segment and index bytes (the
    /// `log_recovery` fuzz target's check, on a small budget): it opens
    /// or errs, never panics, and keeps only whole, consecutive batches
    /// with an index that matches them.
    #[test]
    fn recovery_of_arbitrary_segment_and_index_bytes_keeps_only_whole_batches(
        segment in proptest::collection::vec(any::<u8>(), 0..4096),
        index in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let _ = ferry_storage::fuzzing::recover(dir.path(), &segment, &index);
    }

    /// The same over a real log's files, cut short and with a byte
    /// flipped: the likely shapes of a crash or a bad disk.
    #[test]
    fn recovery_of_a_damaged_real_log_keeps_only_whole_batches(
        batches in 1usize..12,
        cut in any::<proptest::sample::Index>(),
        flip in any::<proptest::sample::Index>(),
        index_cut in any::<proptest::sample::Index>(),
    ) {
        let written = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: ferry_storage::MIN_SEGMENT_BYTES,
            index_interval_bytes: 64,
            ..LogConfig::default()
        };
        let log = Log::open(written.path(), config).unwrap();
        for i in 0..batches {
            log.append(ValidBatch::new(&make_batch(i as u64, 1 + i % 3, 40)).unwrap()).unwrap();
        }
        log.close().unwrap();
        drop(log);
        let read = |name: &str| std::fs::read(written.path().join(name)).unwrap();
        let mut segment = read("00000000000000000000.log");
        let index = read("00000000000000000000.index");
        let used = segment.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        segment.truncate(cut.index(used + 1));
        if !segment.is_empty() {
            let at = flip.index(segment.len());
            segment[at] ^= 0x5a;
        }
        let index = &index[..index_cut.index(index.len() + 1)];
        let dir = tempfile::tempdir().unwrap();
        let _ = ferry_storage::fuzzing::recover(dir.path(), &segment, index);
    }
}

/// A flushed, checkpointed batch damaged afterwards (a bad disk, not a
/// crash): recovery trusts the checkpoint and does not scan it, so the
/// read that meets it must refuse it. Found by the property test above,
/// with its first byte (the base offset, outside the CRC) flipped.
#[test]
fn damage_below_the_checkpoint_is_a_read_error_not_an_empty_read() {
    for flip in [0usize, 13, 30, 90] {
        let written = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: ferry_storage::MIN_SEGMENT_BYTES,
            ..LogConfig::default()
        };
        let log = Log::open(written.path(), config.clone()).unwrap();
        log.append(ValidBatch::new(&make_batch(0, 2, 40)).unwrap())
            .unwrap();
        log.close().unwrap();
        drop(log);
        let path = written.path().join("00000000000000000000.log");
        let mut segment = std::fs::read(&path).unwrap();
        segment[flip] ^= 0x5a;
        std::fs::write(&path, &segment).unwrap();
        let log = Log::open(written.path(), config).unwrap();
        assert_eq!(log.next_offset(), 2, "the checkpoint is trusted");
        let err = log
            .read(0, 1 << 20, 2)
            .expect_err(&format!("byte {flip} flipped"));
        assert!(
            matches!(err, ferry_storage::StorageError::Corrupt { .. }),
            "byte {flip}: {err}"
        );
    }
}
