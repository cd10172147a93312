//! Crash consistency: damage the un-checkpointed tail of a log in every way
//! a crash (or a bad disk) can, reopen, and require the longest valid
//! prefix, an index equal to a rebuild, appends at the right offset, and
//! every durable record intact.
//!
//! Random cases print their seed; rerun one with `FERRY_SEED=<seed>`.

mod common;

use std::path::Path;

use common::{append, make_batch, read_batches, seed, stored};
use ferry_storage::{FlushPolicy, Log, LogConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SEGMENT_BYTES: u64 = 16 * 1024;
const BATCHES: u64 = 40;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        index_interval_bytes: 256,
        flush: FlushPolicy::Never,
        checkpoint_interval_bytes: 0,
        ..LogConfig::default()
    }
}

/// A log whose last two batches were appended after the last flush (and
/// checkpoint), then dropped without close: a crash.
struct Fixture {
    files: Vec<(String, Vec<u8>)>,
    batches: Vec<Vec<u8>>,
    active_log: String,
    /// Position of every batch of the active segment: (batch index, start, end).
    active_batches: Vec<(usize, u64, u64)>,
    durable_batches: usize,
}

impl Fixture {
    fn build() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), config()).unwrap();
        let mut batches = Vec::new();
        let mut positions = Vec::new();
        for i in 0..BATCHES {
            if i == BATCHES - 2 {
                log.flush().unwrap();
            }
            // The tail batches are small so that trying every byte is cheap.
            let b = if i >= BATCHES - 2 {
                make_batch(i, 2, 30)
            } else {
                make_batch(i, 1 + (i % 4) as usize, 20 + (i as usize * 37) % 300)
            };
            let info = append(&log, &b);
            let seg = log.segments().pop().unwrap();
            positions.push((seg.base_offset, seg.data_len - b.len() as u64, seg.data_len));
            batches.push(stored(&b, info.base_offset));
        }
        let active = log.segments().pop().unwrap();
        assert_eq!(
            active.durable_len,
            active.data_len
                - batches[batches.len() - 1].len() as u64
                - batches[batches.len() - 2].len() as u64
        );
        let active_batches = positions
            .iter()
            .enumerate()
            .filter(|(_, p)| p.0 == active.base_offset)
            .map(|(i, p)| (i, p.1, p.2))
            .collect();
        drop(log);
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let entry = entry.unwrap();
            files.push((
                entry.file_name().into_string().unwrap(),
                std::fs::read(entry.path()).unwrap(),
            ));
        }
        Fixture {
            files,
            batches,
            active_log: active
                .log_path
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_string(),
            active_batches,
            durable_batches: BATCHES as usize - 2,
        }
    }

    /// The un-checkpointed tail: the last two batches.
    fn tail(&self) -> (u64, u64) {
        let n = self.active_batches.len();
        (self.active_batches[n - 2].1, self.active_batches[n - 1].2)
    }

    fn end(&self) -> u64 {
        self.active_batches.last().unwrap().2
    }

    /// Restores the crashed files into a new directory, lets `damage` edit
    /// the active segment file, reopens and checks everything. Returns the
    /// number of batches that survived.
    fn trial(&self, what: &str, damage: impl FnOnce(&Path)) -> usize {
        self.trial_with(what, true, damage)
    }

    /// As [`Fixture::trial`]; `full` also appends, closes and reopens.
    fn trial_with(&self, what: &str, full: bool, damage: impl FnOnce(&Path)) -> usize {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in &self.files {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let active = dir.path().join(&self.active_log);
        damage(&active);
        // Oracle: a batch survives iff it and every batch before it are
        // byte-identical to what was written.
        let mut content = std::fs::read(&active).unwrap();
        content.resize(content.len().max(SEGMENT_BYTES as usize), 0);
        let mut survivors = self.active_batches[0].0;
        for &(i, start, end) in &self.active_batches {
            if content[start as usize..end as usize] != self.batches[i][..] {
                break;
            }
            survivors = i + 1;
        }
        self.check(dir.path(), survivors, full, what);
        survivors
    }

    fn check(&self, dir: &Path, survivors: usize, full: bool, what: &str) {
        let log = Log::open(dir, config()).unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
        assert!(
            survivors >= self.durable_batches,
            "{what}: the damage reached durable data"
        );
        let got = read_batches(&log);
        assert_eq!(got.len(), survivors, "{what}: longest valid prefix");
        for (i, b) in got.iter().enumerate() {
            assert!(b == &self.batches[i], "{what}: batch {i} differs");
        }
        let next = self.next_offset_after(survivors);
        assert_eq!(log.next_offset(), next, "{what}");
        assert_eq!(
            log.durable_offset(),
            next,
            "{what}: recovered data is flushed"
        );
        assert_eq!(
            log.index_entries().unwrap(),
            log.rebuilt_index_entries().unwrap(),
            "{what}: index"
        );
        // Nothing but zeros past the valid end: a torn tail cannot resurface.
        let seg = log.segments().pop().unwrap();
        let content = std::fs::read(&seg.log_path).unwrap();
        if let Some(i) = content[seg.data_len as usize..]
            .iter()
            .position(|b| *b != 0)
        {
            panic!(
                "{what}: non-zero byte at {} past the end {}",
                seg.data_len as usize + i,
                seg.data_len
            );
        }
        if !full {
            return;
        }
        let extra = make_batch(1000, 2, 10);
        assert_eq!(
            append(&log, &extra).base_offset,
            next,
            "{what}: appends continue"
        );
        log.close().unwrap();
        drop(log);
        let log = Log::open(dir, config()).unwrap();
        assert_eq!(
            log.recovery_stats().scanned_bytes,
            0,
            "{what}: close left a full checkpoint"
        );
        assert_eq!(
            read_batches(&log).len(),
            survivors + 1,
            "{what}: reopen is stable"
        );
    }

    fn next_offset_after(&self, survivors: usize) -> u64 {
        self.batches[..survivors]
            .iter()
            .map(|b| {
                ferry_proto::batch::BatchHeader::decode(b)
                    .unwrap()
                    .last_offset_delta as u64
                    + 1
            })
            .sum()
    }
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes);
    std::fs::write(path, &bytes).unwrap();
}

#[test]
fn zeroing_the_tail_at_every_byte_of_the_last_two_batches_keeps_the_longest_valid_prefix() {
    let fx = Fixture::build();
    let (start, end) = fx.tail();
    for cut in start..end {
        fx.trial_with(&format!("zero from {cut}"), cut % 16 == 0, |p| {
            edit(p, |b| b[cut as usize..end as usize].fill(0));
        });
    }
}

#[test]
fn truncating_the_file_at_every_byte_of_the_last_two_batches_keeps_the_longest_valid_prefix() {
    let fx = Fixture::build();
    let (start, end) = fx.tail();
    for cut in start..=end {
        fx.trial_with(&format!("truncate at {cut}"), cut % 16 == 0, |p| {
            edit(p, |b| b.truncate(cut as usize));
        });
    }
}

#[test]
fn random_bit_flips_in_the_unflushed_tail_end_the_log_before_the_damaged_batch() {
    let seed = seed("bit flips");
    let mut rng = StdRng::seed_from_u64(seed);
    let fx = Fixture::build();
    let (start, end) = fx.tail();
    for trial in 0..100 {
        let mut flips: Vec<(u64, u8)> = (0..rng.random_range(1..=3))
            .map(|_| (rng.random_range(start..end), 1u8 << rng.random_range(0..8)))
            .collect();
        // Two flips of the same bit cancel out and damage nothing; one flip
        // per byte keeps every trial a real corruption.
        flips.sort_by_key(|(at, _)| *at);
        flips.dedup_by_key(|(at, _)| *at);
        let survivors = fx.trial_with(
            &format!("seed {seed} trial {trial} flips {flips:?}"),
            trial % 8 == 0,
            |p| {
                edit(p, |b| {
                    for (at, mask) in &flips {
                        b[*at as usize] ^= mask;
                    }
                });
            },
        );
        assert!(
            survivors < BATCHES as usize,
            "trial {trial} flips {flips:?} start {start} end {end}"
        );
    }
}

#[test]
fn garbage_after_the_valid_end_is_ignored_and_zeroed() {
    let seed = seed("garbage");
    let mut rng = StdRng::seed_from_u64(seed);
    let fx = Fixture::build();
    let end = fx.end();
    for trial in 0..60 {
        let gap = if rng.random_bool(0.5) {
            0
        } else {
            rng.random_range(1..2000)
        };
        let at = (end + gap).min(SEGMENT_BYTES - 1);
        let len = rng.random_range(1..=(SEGMENT_BYTES - at).min(4096));
        let garbage: Vec<u8> = match trial % 3 {
            // A copy of an old, valid batch: its offsets do not continue.
            0 => fx.batches[3]
                .iter()
                .copied()
                .cycle()
                .take(len as usize)
                .collect(),
            // Something that looks like a header with a huge length.
            1 => {
                let mut g: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                if g.len() >= 12 {
                    g[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
                }
                g
            }
            _ => (0..len).map(|_| rng.random()).collect(),
        };
        let survivors = fx.trial(
            &format!("seed {seed} trial {trial} garbage at {at} len {len}"),
            |p| {
                edit(p, |b| {
                    b.resize(b.len().max((at + len) as usize), 0);
                    b[at as usize..(at + len) as usize].copy_from_slice(&garbage);
                });
            },
        );
        if gap > 0 || trial % 3 != 0 {
            assert_eq!(survivors, BATCHES as usize);
        }
    }
}

#[test]
fn a_corrupt_checkpoint_falls_back_to_scanning_the_whole_segment() {
    let seed = seed("corrupt checkpoint");
    let mut rng = StdRng::seed_from_u64(seed);
    let fx = Fixture::build();
    let (start, end) = fx.tail();
    for trial in 0..20 {
        let cut = rng.random_range(start..end);
        let index = fx.active_log.replace(".log", ".index");
        fx.trial(&format!("seed {seed} trial {trial} cut {cut}"), |p| {
            edit(p, |b| b[cut as usize..end as usize].fill(0));
            let ip = p.with_file_name(&index);
            if ip.exists() {
                edit(&ip, |b| {
                    let at = rng.random_range(0..b.len());
                    b[at] ^= 1;
                });
            }
        });
    }
}
