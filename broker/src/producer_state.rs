//! Idempotent-producer state of one partition.
//!
//! For every producer id that wrote to the partition, the broker keeps the
//! current epoch and a window of the last [`MAX_BATCHES_PER_PRODUCER`]
//! batches (first and last sequence, offsets, record count). One pure
//! function, [`check_sequence`], decides what to do with an incoming batch;
//! every branch of it has a row in the table-driven test below.
//!
//! The state is derived from the log: every idempotent batch carries its
//! producer id, epoch and base sequence in its header, so replaying the log
//! rebuilds the table exactly. Snapshots (written at segment roll and at
//! clean shutdown, holding the whole window) only shorten that replay: a
//! snapshot taken at offset `X` summarises batches below `X`, and recovery
//! replays from `X`. A snapshot that fails its CRC, or claims an offset
//! beyond the recovered log, is ignored and the log is replayed from its
//! start.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use ferry_proto::batch::{BatchHeader, sequence};

use crate::codec::Reader;

/// Batches remembered per producer, and the most a client may have in
/// flight per partition.
pub const MAX_BATCHES_PER_PRODUCER: usize = sequence::WINDOW;

/// One remembered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    /// Sequence of the first record.
    pub first_seq: i32,
    /// Sequence of the last record.
    pub last_seq: i32,
    /// Offset of the first record.
    pub base_offset: u64,
    /// Offset of the last record.
    pub last_offset: u64,
    /// Records in the batch.
    pub record_count: u32,
}

/// What the broker knows about one producer id in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    /// Current epoch.
    pub epoch: i16,
    /// The last batches, oldest first.
    pub batches: VecDeque<BatchMeta>,
    /// Wall-clock time of the last append, for expiry.
    pub last_update_ms: i64,
}

/// What to do with an idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// Append it.
    Append,
    /// It was appended before: answer with these original offsets and
    /// append nothing.
    Duplicate(BatchMeta),
}

/// Why an idempotent batch is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SeqError {
    /// The epoch is older than the current one: a zombie. Fatal.
    #[error("producer epoch {got} is older than the current epoch {current}")]
    InvalidProducerEpoch {
        /// Current epoch.
        current: i16,
        /// Epoch in the batch.
        got: i16,
    },
    /// A gap or overlap in the sequence. Fatal to the client.
    #[error("out of order sequence: expected {expected}, got {got}")]
    OutOfOrderSequence {
        /// Sequence the broker expects next.
        expected: i32,
        /// First sequence of the batch.
        got: i32,
    },
    /// The broker has no state for the producer (it expired) and the batch
    /// does not start a fresh sequence.
    #[error("unknown producer id; it may have expired (first sequence {got})")]
    UnknownProducerId {
        /// First sequence of the batch.
        got: i32,
    },
}

/// Decides an incoming idempotent batch with `epoch` and sequences
/// `first_seq..=last_seq` against the producer's entry, if any.
///
/// | case | result |
/// |---|---|
/// | no entry, first seq = 0 | `Append` (a new producer in this partition) |
/// | no entry, first seq ≠ 0 | `UnknownProducerId` |
/// | epoch lower than current | `InvalidProducerEpoch` |
/// | higher epoch, first seq = 0 | `Append`; the window restarts |
/// | higher epoch, first seq ≠ 0 | `OutOfOrderSequence` |
/// | same epoch, batch equals one in the window | `Duplicate` with the original offsets |
/// | same epoch, first seq = last seq + 1 | `Append` |
/// | same epoch, any other seq | `OutOfOrderSequence` |
pub fn check_sequence(
    entry: Option<&ProducerEntry>,
    epoch: i16,
    first_seq: i32,
    last_seq: i32,
) -> Result<SeqCheck, SeqError> {
    let Some(entry) = entry else {
        return if first_seq == 0 {
            Ok(SeqCheck::Append)
        } else {
            Err(SeqError::UnknownProducerId { got: first_seq })
        };
    };
    if epoch < entry.epoch {
        return Err(SeqError::InvalidProducerEpoch {
            current: entry.epoch,
            got: epoch,
        });
    }
    if epoch > entry.epoch {
        return if first_seq == 0 {
            Ok(SeqCheck::Append)
        } else {
            Err(SeqError::OutOfOrderSequence {
                expected: 0,
                got: first_seq,
            })
        };
    }
    if let Some(dup) = entry
        .batches
        .iter()
        .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
    {
        return Ok(SeqCheck::Duplicate(*dup));
    }
    let expected = entry
        .batches
        .back()
        .map_or(0, |b| sequence::next(b.last_seq));
    if first_seq == expected {
        Ok(SeqCheck::Append)
    } else {
        Err(SeqError::OutOfOrderSequence {
            expected,
            got: first_seq,
        })
    }
}

/// A transaction that aborted in this partition: `read_committed`
/// consumers drop the producer's transactional batches from `first_offset`
/// up to the abort marker at `last_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    /// Producer id of the transaction.
    pub producer_id: i64,
    /// First offset the transaction wrote here.
    pub first_offset: u64,
    /// Offset of the abort marker.
    pub last_offset: u64,
}

/// The producer table of one partition: idempotence windows, open
/// transactions and the aborted-transaction index.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProducerTable {
    entries: HashMap<i64, ProducerEntry>,
    /// Open transactions: producer id → first offset written here.
    ongoing: HashMap<i64, u64>,
    /// Aborted transactions, in marker order (so sorted by `last_offset`).
    aborted: Vec<AbortedTxn>,
}

impl ProducerTable {
    /// The entry of `producer_id`, if tracked.
    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.entries.get(&producer_id)
    }

    /// Every tracked producer, by producer id, with the first offset of
    /// its open transaction here, if any.
    pub fn producers(&self) -> Vec<(i64, ProducerEntry, Option<u64>)> {
        let mut v: Vec<_> = self
            .entries
            .iter()
            .map(|(pid, e)| (*pid, e.clone(), self.ongoing.get(pid).copied()))
            .collect();
        v.sort_by_key(|(pid, ..)| *pid);
        v
    }

    /// Number of producer ids tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no producer id is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records an appended idempotent batch.
    pub fn record(&mut self, header: &BatchHeader, now_ms: i64) {
        let meta = BatchMeta {
            first_seq: header.base_sequence,
            last_seq: header.last_sequence(),
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
            record_count: header.record_count,
        };
        let entry = self
            .entries
            .entry(header.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: header.producer_epoch,
                batches: VecDeque::with_capacity(MAX_BATCHES_PER_PRODUCER),
                last_update_ms: now_ms,
            });
        if header.producer_epoch != entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == MAX_BATCHES_PER_PRODUCER {
            entry.batches.pop_front();
        }
        entry.batches.push_back(meta);
        entry.last_update_ms = entry.last_update_ms.max(now_ms);
    }

    /// Forgets producers idle for longer than `max_idle_ms`, except those
    /// with an open transaction. Returns how many were removed.
    pub fn expire(&mut self, now_ms: i64, max_idle_ms: i64) -> usize {
        let before = self.entries.len();
        let ongoing = &self.ongoing;
        self.entries.retain(|pid, e| {
            ongoing.contains_key(pid) || now_ms.saturating_sub(e.last_update_ms) <= max_idle_ms
        });
        before - self.entries.len()
    }

    /// Notes a transactional batch at `offset`: the first one opens the
    /// producer's transaction in this partition.
    pub fn note_transactional(&mut self, producer_id: i64, offset: u64) {
        self.ongoing.entry(producer_id).or_insert(offset);
    }

    /// Ends the producer's open transaction with a marker at `offset`.
    /// A marker with no open transaction (a marker written twice) changes
    /// nothing.
    pub fn end_transaction(&mut self, producer_id: i64, offset: u64, commit: bool) {
        if let Some(first) = self.ongoing.remove(&producer_id)
            && !commit
        {
            self.aborted.push(AbortedTxn {
                producer_id,
                first_offset: first,
                last_offset: offset,
            });
        }
    }

    /// First offset of the oldest open transaction.
    pub fn first_unstable_offset(&self) -> Option<u64> {
        self.ongoing.values().copied().min()
    }

    /// Producers with an open transaction here.
    pub fn ongoing(&self) -> impl Iterator<Item = (i64, u64)> + '_ {
        self.ongoing.iter().map(|(p, o)| (*p, *o))
    }

    /// Aborted transactions overlapping offsets `[from, to)`.
    pub fn aborted_between(&self, from: u64, to: u64) -> Vec<AbortedTxn> {
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted[start..]
            .iter()
            .filter(|a| a.first_offset < to)
            .copied()
            .collect()
    }

    /// Drops the index entries of aborted transactions whose markers, at
    /// the offsets in `markers` by producer, the cleaner removes: no
    /// record of them is left, and a consumer told of an abort whose
    /// marker is gone would skip the producer's later transactions.
    pub fn forget_aborted(&mut self, markers: &std::collections::HashSet<(i64, u64)>) {
        self.aborted
            .retain(|a| !markers.contains(&(a.producer_id, a.last_offset)));
    }

    /// Drops index entries wholly below the log start.
    pub fn truncate_aborted_below(&mut self, log_start: u64) {
        let cut = self.aborted.partition_point(|a| a.last_offset < log_start);
        self.aborted.drain(..cut);
    }

    /// Applies one batch read from the log during recovery.
    pub fn replay(&mut self, header: &BatchHeader, marker: Option<bool>) {
        if header.producer_id < 0 {
            return;
        }
        match marker {
            Some(commit) => self.end_transaction(header.producer_id, header.base_offset, commit),
            None => {
                if header.base_sequence >= 0 {
                    self.record(header, header.max_timestamp);
                }
                if header.is_transactional() {
                    self.note_transactional(header.producer_id, header.base_offset);
                }
            }
        }
    }

    /// Encodes the table as a snapshot taken at log offset `offset`.
    ///
    /// ```text
    /// magic "FPS2" | u64 offset | u32 producers |
    ///   per producer: i64 id | i16 epoch | i64 last_update_ms | u8 n |
    ///     n × (i32 first_seq | i32 last_seq | u64 base_offset | u64 last_offset | u32 record_count)
    /// | u32 open transactions | per open: i64 id | u64 first_offset
    /// | u32 aborted | per aborted: i64 id | u64 first_offset | u64 last_offset
    /// | u32 crc32 of everything before it
    /// ```
    pub fn encode_snapshot(&self, offset: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.entries.len() * 160);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        let mut ids: Vec<_> = self.entries.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let e = &self.entries[&id];
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&e.epoch.to_le_bytes());
            out.extend_from_slice(&e.last_update_ms.to_le_bytes());
            out.push(e.batches.len() as u8);
            for b in &e.batches {
                out.extend_from_slice(&b.first_seq.to_le_bytes());
                out.extend_from_slice(&b.last_seq.to_le_bytes());
                out.extend_from_slice(&b.base_offset.to_le_bytes());
                out.extend_from_slice(&b.last_offset.to_le_bytes());
                out.extend_from_slice(&b.record_count.to_le_bytes());
            }
        }
        let mut ongoing: Vec<_> = self.ongoing.iter().collect();
        ongoing.sort_unstable();
        out.extend_from_slice(&(ongoing.len() as u32).to_le_bytes());
        for (pid, first) in ongoing {
            out.extend_from_slice(&pid.to_le_bytes());
            out.extend_from_slice(&first.to_le_bytes());
        }
        out.extend_from_slice(&(self.aborted.len() as u32).to_le_bytes());
        for a in &self.aborted {
            out.extend_from_slice(&a.producer_id.to_le_bytes());
            out.extend_from_slice(&a.first_offset.to_le_bytes());
            out.extend_from_slice(&a.last_offset.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a snapshot; `None` if it is corrupt in any way.
    pub fn decode_snapshot(buf: &[u8]) -> Option<(u64, ProducerTable)> {
        let body_len = buf.len().checked_sub(4)?;
        let (body, crc) = buf.split_at(body_len);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut r = Reader::new(body);
        if r.take(4)? != SNAPSHOT_MAGIC {
            return None;
        }
        let offset = r.u64()?;
        let count = r.u32()? as usize;
        if count > MAX_SNAPSHOT_PRODUCERS {
            return None;
        }
        let mut entries = HashMap::with_capacity(count);
        for _ in 0..count {
            let id = r.u64()? as i64;
            let epoch = r.u16()? as i16;
            let last_update_ms = r.u64()? as i64;
            let n = r.u8()? as usize;
            if n > MAX_BATCHES_PER_PRODUCER {
                return None;
            }
            let mut batches = VecDeque::with_capacity(n);
            for _ in 0..n {
                batches.push_back(BatchMeta {
                    first_seq: r.u32()? as i32,
                    last_seq: r.u32()? as i32,
                    base_offset: r.u64()?,
                    last_offset: r.u64()?,
                    record_count: r.u32()?,
                });
            }
            entries.insert(
                id,
                ProducerEntry {
                    epoch,
                    batches,
                    last_update_ms,
                },
            );
        }
        let open = r.u32()? as usize;
        if open > MAX_SNAPSHOT_PRODUCERS {
            return None;
        }
        let mut ongoing = HashMap::with_capacity(open);
        for _ in 0..open {
            ongoing.insert(r.u64()? as i64, r.u64()?);
        }
        let n_aborted = r.u32()? as usize;
        if n_aborted > MAX_SNAPSHOT_ABORTED {
            return None;
        }
        let mut aborted = Vec::with_capacity(n_aborted);
        for _ in 0..n_aborted {
            aborted.push(AbortedTxn {
                producer_id: r.u64()? as i64,
                first_offset: r.u64()?,
                last_offset: r.u64()?,
            });
        }
        r.is_done().then_some((
            offset,
            ProducerTable {
                entries,
                ongoing,
                aborted,
            },
        ))
    }

    /// Writes a snapshot atomically (temporary file, fsync, rename,
    /// directory fsync).
    pub fn write_snapshot(&self, path: &Path, offset: u64) -> std::io::Result<()> {
        ferry_storage::fsutil::atomic_write(path, &self.encode_snapshot(offset))
    }
}

const SNAPSHOT_MAGIC: &[u8; 4] = b"FPS2";
/// Most aborted transactions a snapshot may list.
pub const MAX_SNAPSHOT_ABORTED: usize = 1 << 24;
/// Most producers a snapshot may list; a larger count marks it corrupt.
pub const MAX_SNAPSHOT_PRODUCERS: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(first: i32, last: i32, base: u64) -> BatchMeta {
        BatchMeta {
            first_seq: first,
            last_seq: last,
            base_offset: base,
            last_offset: base + (last - first) as u64,
            record_count: (last - first + 1) as u32,
        }
    }

    fn entry(epoch: i16, batches: &[BatchMeta]) -> ProducerEntry {
        ProducerEntry {
            epoch,
            batches: batches.iter().copied().collect(),
            last_update_ms: 0,
        }
    }

    /// Name, entry, epoch, first seq, last seq, expected decision.
    type Case<'a> = (
        &'a str,
        Option<&'a ProducerEntry>,
        i16,
        i32,
        i32,
        Result<SeqCheck, SeqError>,
    );

    #[test]
    fn every_branch_of_the_sequence_check_decides_as_the_table_says() {
        let window = entry(3, &[meta(0, 9, 100), meta(10, 19, 110), meta(20, 29, 120)]);
        let wrapped = entry(1, &[meta(i32::MAX - 1, i32::MAX, 7)]);
        use SeqCheck::*;
        let cases: Vec<Case<'_>> = vec![
            (
                "unknown producer starting at 0 is new",
                None,
                0,
                0,
                4,
                Ok(Append),
            ),
            (
                "unknown producer not at 0 has expired",
                None,
                0,
                5,
                9,
                Err(SeqError::UnknownProducerId { got: 5 }),
            ),
            (
                "stale epoch is a zombie",
                Some(&window),
                2,
                30,
                39,
                Err(SeqError::InvalidProducerEpoch { current: 3, got: 2 }),
            ),
            (
                "higher epoch from 0 restarts the window",
                Some(&window),
                4,
                0,
                9,
                Ok(Append),
            ),
            (
                "higher epoch not from 0 is out of order",
                Some(&window),
                4,
                30,
                39,
                Err(SeqError::OutOfOrderSequence {
                    expected: 0,
                    got: 30,
                }),
            ),
            (
                "next sequence appends",
                Some(&window),
                3,
                30,
                39,
                Ok(Append),
            ),
            (
                "retry of the newest batch is a duplicate",
                Some(&window),
                3,
                20,
                29,
                Ok(Duplicate(meta(20, 29, 120))),
            ),
            (
                "retry of the oldest batch is a duplicate",
                Some(&window),
                3,
                0,
                9,
                Ok(Duplicate(meta(0, 9, 100))),
            ),
            (
                "a gap is out of order",
                Some(&window),
                3,
                31,
                39,
                Err(SeqError::OutOfOrderSequence {
                    expected: 30,
                    got: 31,
                }),
            ),
            (
                "an overlap that is no window batch is out of order",
                Some(&window),
                3,
                15,
                24,
                Err(SeqError::OutOfOrderSequence {
                    expected: 30,
                    got: 15,
                }),
            ),
            (
                "same first seq, different length is out of order",
                Some(&window),
                3,
                20,
                25,
                Err(SeqError::OutOfOrderSequence {
                    expected: 30,
                    got: 20,
                }),
            ),
            (
                "sequence wraps to zero after i32::MAX",
                Some(&wrapped),
                1,
                0,
                3,
                Ok(Append),
            ),
        ];
        for (name, entry, epoch, first, last, want) in cases {
            assert_eq!(check_sequence(entry, epoch, first, last), want, "{name}");
        }
    }

    fn header(pid: i64, epoch: i16, seq: i32, count: u32, base: u64) -> BatchHeader {
        BatchHeader {
            base_offset: base,
            batch_len: 100,
            crc: 0,
            attributes: 0,
            leader_epoch: 0,
            producer_epoch: epoch,
            last_offset_delta: count - 1,
            first_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            base_sequence: seq,
            record_count: count,
        }
    }

    #[test]
    fn the_window_keeps_only_the_last_five_batches_and_restarts_on_a_new_epoch() {
        let mut t = ProducerTable::default();
        for i in 0..7 {
            t.record(&header(1, 0, i * 2, 2, u64::from(i as u32) * 2), 10);
        }
        let e = t.get(1).unwrap();
        assert_eq!(e.batches.len(), MAX_BATCHES_PER_PRODUCER);
        assert_eq!(e.batches.front().unwrap().first_seq, 4);
        t.record(&header(1, 1, 0, 1, 50), 11);
        let e = t.get(1).unwrap();
        assert_eq!((e.epoch, e.batches.len()), (1, 1));
    }

    #[test]
    fn idle_producers_expire_and_busy_ones_stay() {
        let mut t = ProducerTable::default();
        t.record(&header(1, 0, 0, 1, 0), 1_000);
        t.record(&header(2, 0, 0, 1, 1), 9_000);
        assert_eq!(t.expire(10_000, 5_000), 1);
        assert!(t.get(1).is_none() && t.get(2).is_some());
    }

    #[test]
    fn the_lso_is_the_oldest_open_transaction_and_aborts_are_indexed() {
        let mut t = ProducerTable::default();
        t.note_transactional(1, 10);
        t.note_transactional(2, 12);
        t.note_transactional(1, 15);
        assert_eq!(t.first_unstable_offset(), Some(10));
        t.end_transaction(1, 20, false);
        assert_eq!(t.first_unstable_offset(), Some(12));
        t.end_transaction(2, 21, true);
        t.end_transaction(2, 22, true);
        assert_eq!(t.first_unstable_offset(), None);
        let a = AbortedTxn {
            producer_id: 1,
            first_offset: 10,
            last_offset: 20,
        };
        assert_eq!(t.aborted_between(0, 100), vec![a]);
        assert_eq!(t.aborted_between(20, 100), vec![a]);
        assert!(t.aborted_between(21, 100).is_empty());
        assert!(t.aborted_between(0, 10).is_empty());
        t.truncate_aborted_below(21);
        assert!(t.aborted_between(0, 100).is_empty());
    }

    #[test]
    fn a_producer_with_an_open_transaction_never_expires() {
        let mut t = ProducerTable::default();
        t.record(&header(1, 0, 0, 1, 0), 0);
        t.note_transactional(1, 0);
        assert_eq!(t.expire(1_000_000, 10), 0);
        t.end_transaction(1, 5, true);
        assert_eq!(t.expire(1_000_000, 10), 1);
    }

    #[test]
    fn a_snapshot_round_trips_the_whole_window_and_any_corruption_is_rejected() {
        let mut t = ProducerTable::default();
        for i in 0..6 {
            t.record(&header(7, 2, i * 3, 3, u64::from(i as u32) * 3), 5);
        }
        t.record(&header(9, 0, 0, 1, 40), 6);
        t.note_transactional(9, 40);
        t.note_transactional(11, 20);
        t.end_transaction(11, 30, false);
        let snap = t.encode_snapshot(41);
        let (offset, back) = ProducerTable::decode_snapshot(&snap).unwrap();
        assert_eq!(offset, 41);
        assert_eq!(back, t);
        assert_eq!(
            back.get(7).unwrap().batches.len(),
            5,
            "the whole window, not just the last batch"
        );
        for i in 0..snap.len() {
            let mut bad = snap.clone();
            bad[i] ^= 0x40;
            assert!(
                ProducerTable::decode_snapshot(&bad).is_none(),
                "flip at {i} accepted"
            );
        }
        for len in 0..snap.len() {
            assert!(ProducerTable::decode_snapshot(&snap[..len]).is_none());
        }
    }
}
