//! The history checker, after Jepsen's Kafka queue checker
//! (`jepsen.tests.kafka`).
//!
//! [`check`] reads a [`History`](super::History) (or its operations) and
//! reports every [`Anomaly`] it can prove, each with the values and offsets
//! involved:
//!
//! | anomaly | meaning |
//! |---|---|
//! | [`AnomalyKind::LostWrite`] | an acknowledged send was never read, although a read went past its offset (or the history ends with a complete drain) |
//! | [`AnomalyKind::Duplicate`] | one value stored at two offsets (a producer retry wrote it twice) |
//! | [`AnomalyKind::DuplicateDelivery`] | one consumer group delivered a value more than once (redelivery after a consumer crash, or a stored duplicate) |
//! | [`AnomalyKind::InconsistentOffsets`] | one offset holds two values |
//! | [`AnomalyKind::AbortedRead`] | a value whose send certainly failed (or was aborted) was read: G1a |
//! | [`AnomalyKind::NonMonotonicPoll`] | one consumer process read a partition's offsets going backwards |
//! | [`AnomalyKind::NonMonotonicSend`] | one producer process's acknowledged offsets in a partition went backwards (reordering by retries) |
//! | [`AnomalyKind::PollSkip`] | one consumer process jumped over offsets that hold known values |
//! | [`AnomalyKind::Unseen`] | acknowledged, but not read by the end of the history (no read went past it) |
//!
//! [`Report::verdict`] then judges the anomalies against a
//! [`DeliveryMode`], following the README's delivery-guarantees table: which kinds the
//! mode forbids, and counts of the kinds it allows.
//!
//! # What counts as a read
//!
//! Only polls that completed `Ok` carry reads. By default every such poll
//! counts; with [`CheckOptions::group`] only the polls of that consumer
//! group count for lost writes, so a test can check what a group
//! *delivered* while a final drain outside the group still feeds the
//! offset-to-value map (which is what inconsistent offsets, duplicates and
//! poll skips are judged against).

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub use ferry_client::DeliveryMode;

use super::history::{Mop, Op, OpKind, OpType, ProcessId, Read, Tp, Value};

/// What to assume about the history's end.
#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    /// The history ends with polls that read every partition to its end:
    /// an acknowledged value nobody read is then lost, not merely unseen.
    pub drained: bool,
    /// Count only this group's polls as reads for lost writes and unseen
    /// values, and report only its duplicate deliveries (see the
    /// [module docs](self)).
    pub group: Option<String>,
}

impl CheckOptions {
    /// The history ends with a drain (see [`CheckOptions::drained`]), and
    /// every group's reads count.
    pub fn drained() -> CheckOptions {
        CheckOptions {
            drained: true,
            group: None,
        }
    }
}

/// The kind of an [`Anomaly`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnomalyKind {
    /// See [`Anomaly::LostWrite`].
    LostWrite,
    /// See [`Anomaly::Duplicate`].
    Duplicate,
    /// See [`Anomaly::DuplicateDelivery`].
    DuplicateDelivery,
    /// See [`Anomaly::InconsistentOffsets`].
    InconsistentOffsets,
    /// See [`Anomaly::AbortedRead`].
    AbortedRead,
    /// See [`Anomaly::NonMonotonicPoll`].
    NonMonotonicPoll,
    /// See [`Anomaly::NonMonotonicSend`].
    NonMonotonicSend,
    /// See [`Anomaly::PollSkip`].
    PollSkip,
    /// See [`Anomaly::Unseen`].
    Unseen,
}

impl AnomalyKind {
    /// Every kind.
    pub const ALL: [AnomalyKind; 9] = [
        AnomalyKind::LostWrite,
        AnomalyKind::Duplicate,
        AnomalyKind::DuplicateDelivery,
        AnomalyKind::InconsistentOffsets,
        AnomalyKind::AbortedRead,
        AnomalyKind::NonMonotonicPoll,
        AnomalyKind::NonMonotonicSend,
        AnomalyKind::PollSkip,
        AnomalyKind::Unseen,
    ];

    /// Jepsen-style name.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::LostWrite => "lost-write",
            AnomalyKind::Duplicate => "duplicate",
            AnomalyKind::DuplicateDelivery => "duplicate-delivery",
            AnomalyKind::InconsistentOffsets => "inconsistent-offsets",
            AnomalyKind::AbortedRead => "aborted-read",
            AnomalyKind::NonMonotonicPoll => "non-monotonic-poll",
            AnomalyKind::NonMonotonicSend => "non-monotonic-send",
            AnomalyKind::PollSkip => "poll-skip",
            AnomalyKind::Unseen => "unseen",
        }
    }
}

impl std::fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One proven anomaly, with what proves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Anomaly {
    /// An acknowledged value that no counted poll read.
    LostWrite {
        /// The value.
        value: Value,
        /// Where it was acknowledged.
        tp: Tp,
        /// Its acknowledged offset, if the ack carried one.
        offset: Option<u64>,
        /// Highest offset a counted poll read in `tp`, if any.
        read_up_to: Option<u64>,
    },
    /// A value stored at more than one offset.
    Duplicate {
        /// The value.
        value: Value,
        /// Every place it was seen or acknowledged at.
        positions: Vec<(Tp, u64)>,
    },
    /// A value one consumer group delivered more than once.
    DuplicateDelivery {
        /// The value.
        value: Value,
        /// The group.
        group: String,
        /// Each delivery: position and the process that polled it.
        deliveries: Vec<Delivery>,
    },
    /// One offset holding several values.
    InconsistentOffsets {
        /// Where.
        tp: Tp,
        /// Which offset.
        offset: u64,
        /// The values seen or acknowledged there.
        values: Vec<Value>,
    },
    /// A value whose send failed definitely, read anyway.
    AbortedRead {
        /// The value.
        value: Value,
        /// Where it was read.
        tp: Tp,
        /// At which offset.
        offset: u64,
        /// The failed send's completion, by history index.
        send_op: usize,
        /// The poll that read it.
        poll_op: usize,
    },
    /// A process read offsets going backwards in a partition.
    NonMonotonicPoll {
        /// The consumer process.
        process: ProcessId,
        /// Where.
        tp: Tp,
        /// The offset read before.
        prev_offset: u64,
        /// The offset read next, not above `prev_offset`.
        offset: u64,
        /// The poll with the second read.
        poll_op: usize,
    },
    /// A process's acknowledged offsets went backwards in a partition.
    NonMonotonicSend {
        /// The producer process.
        process: ProcessId,
        /// Where.
        tp: Tp,
        /// Earlier send: value and offset.
        prev: (Value, u64),
        /// Later send: value and an offset not above the earlier one.
        next: (Value, u64),
    },
    /// A process jumped over offsets that hold known values.
    PollSkip {
        /// The consumer process.
        process: ProcessId,
        /// Where.
        tp: Tp,
        /// The offset read before the jump.
        prev_offset: u64,
        /// The offset read after it.
        offset: u64,
        /// The known `(offset, value)`s in between.
        skipped: Vec<(u64, Value)>,
        /// The poll after the jump.
        poll_op: usize,
    },
    /// Acknowledged, and not read by the end (nothing read past it).
    Unseen {
        /// The value.
        value: Value,
        /// Where it was acknowledged.
        tp: Tp,
        /// At which offset, if known.
        offset: Option<u64>,
    },
}

impl Anomaly {
    /// The anomaly's kind.
    pub fn kind(&self) -> AnomalyKind {
        match self {
            Anomaly::LostWrite { .. } => AnomalyKind::LostWrite,
            Anomaly::Duplicate { .. } => AnomalyKind::Duplicate,
            Anomaly::DuplicateDelivery { .. } => AnomalyKind::DuplicateDelivery,
            Anomaly::InconsistentOffsets { .. } => AnomalyKind::InconsistentOffsets,
            Anomaly::AbortedRead { .. } => AnomalyKind::AbortedRead,
            Anomaly::NonMonotonicPoll { .. } => AnomalyKind::NonMonotonicPoll,
            Anomaly::NonMonotonicSend { .. } => AnomalyKind::NonMonotonicSend,
            Anomaly::PollSkip { .. } => AnomalyKind::PollSkip,
            Anomaly::Unseen { .. } => AnomalyKind::Unseen,
        }
    }
}

/// Counts of what the history holds, for context in reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Send micro-operations invoked.
    pub sends: usize,
    /// Sends acknowledged (`Ok`).
    pub acked: usize,
    /// Sends that definitely failed.
    pub failed: usize,
    /// Sends with an unknown outcome (`Info`, or never completed).
    pub indeterminate: usize,
    /// Records read by `Ok` polls, repeats included.
    pub reads: usize,
    /// Distinct values read.
    pub distinct_read: usize,
}

/// What [`check`] found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Every anomaly, grouped by kind in [`AnomalyKind::ALL`] order.
    pub anomalies: Vec<Anomaly>,
    /// Counts of the history's contents.
    pub stats: Stats,
}

impl Report {
    /// Anomalies of one kind.
    pub fn of(&self, kind: AnomalyKind) -> impl Iterator<Item = &Anomaly> {
        self.anomalies.iter().filter(move |a| a.kind() == kind)
    }

    /// How many anomalies of `kind`.
    pub fn count(&self, kind: AnomalyKind) -> usize {
        self.of(kind).count()
    }

    /// Count per kind, every kind present (zeros included).
    pub fn counts(&self) -> BTreeMap<AnomalyKind, usize> {
        AnomalyKind::ALL
            .iter()
            .map(|k| (*k, self.count(*k)))
            .collect()
    }

    /// Whether the history shows no anomaly at all (unseen values aside).
    pub fn is_clean(&self) -> bool {
        self.anomalies
            .iter()
            .all(|a| a.kind() == AnomalyKind::Unseen)
    }

    /// Judges the anomalies against `mode`.
    pub fn verdict(&self, mode: DeliveryMode) -> Verdict {
        let mut forbidden = BTreeMap::new();
        let mut allowed = BTreeMap::new();
        for (kind, n) in self.counts() {
            if mode.forbids(kind) {
                forbidden.insert(kind, n);
            } else {
                allowed.insert(kind, n);
            }
        }
        let examples = self
            .anomalies
            .iter()
            .filter(|a| mode.forbids(a.kind()))
            .take(MAX_EXAMPLES)
            .cloned()
            .collect();
        Verdict {
            mode,
            forbidden,
            allowed,
            examples,
        }
    }
}

/// How many forbidden anomalies a [`Verdict`] keeps as examples.
pub const MAX_EXAMPLES: usize = 10;

/// The anomaly rules of each [`DeliveryMode`] (the README's
/// delivery-guarantees table), as an extension of the client's mode.
pub trait Forbids {
    /// Whether the mode forbids `kind`.
    fn forbids(self, kind: AnomalyKind) -> bool;
}

impl Forbids for DeliveryMode {
    /// Whether the mode forbids `kind` (the guarantees table). Inconsistent offsets,
    /// aborted reads, backwards polls and poll skips are bugs in every
    /// mode. Unseen values are never a violation by themselves: they mean
    /// the history stopped reading early (check with
    /// [`CheckOptions::drained`] to turn them into lost writes).
    fn forbids(self, kind: AnomalyKind) -> bool {
        use AnomalyKind as K;
        match kind {
            K::InconsistentOffsets | K::AbortedRead | K::NonMonotonicPoll | K::PollSkip => true,
            K::Unseen => false,
            K::LostWrite => self != DeliveryMode::AtMostOnce,
            K::Duplicate => matches!(
                self,
                DeliveryMode::AtMostOnce | DeliveryMode::Idempotent | DeliveryMode::ExactlyOnce
            ),
            K::DuplicateDelivery => {
                matches!(self, DeliveryMode::AtMostOnce | DeliveryMode::ExactlyOnce)
            }
            K::NonMonotonicSend => {
                matches!(self, DeliveryMode::Idempotent | DeliveryMode::ExactlyOnce)
            }
        }
    }
}

/// A report judged against one mode.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// The mode.
    pub mode: DeliveryMode,
    /// Counts of the kinds the mode forbids.
    pub forbidden: BTreeMap<AnomalyKind, usize>,
    /// Counts of the kinds the mode allows.
    pub allowed: BTreeMap<AnomalyKind, usize>,
    /// Up to [`MAX_EXAMPLES`] forbidden anomalies.
    pub examples: Vec<Anomaly>,
}

impl Verdict {
    /// Whether no forbidden anomaly occurred.
    pub fn is_valid(&self) -> bool {
        self.forbidden.values().all(|n| *n == 0)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |m: &BTreeMap<AnomalyKind, usize>| {
            let parts: Vec<String> = m
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| format!("{k}={n}"))
                .collect();
            if parts.is_empty() {
                "none".to_string()
            } else {
                parts.join(", ")
            }
        };
        write!(
            f,
            "{}: {} (forbidden: {}; allowed: {})",
            self.mode,
            if self.is_valid() { "valid" } else { "INVALID" },
            list(&self.forbidden),
            list(&self.allowed)
        )?;
        for a in &self.examples {
            write!(f, "\n  {a:?}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendOutcome {
    Acked,
    Failed,
    Indeterminate,
}

struct SendRecord {
    process: ProcessId,
    tp: Tp,
    offset: Option<u64>,
    outcome: SendOutcome,
    /// Index of the completion (or the invocation, if none).
    op: usize,
    /// Index of the invocation: the order the process sent in.
    invoked: usize,
}

/// One delivery of a value: where, and by which process.
type Delivery = (Tp, u64, ProcessId);

/// Acknowledged sends of one process in one partition: (invocation index,
/// value, offset).
type AckedSends = Vec<(usize, Value, u64)>;

/// A read with the poll and process that made it.
struct PollRead<'a> {
    read: &'a Read,
    op: &'a Op,
}

/// Checks a list of history entries (see [`History::ops`](super::History::ops)).
pub fn check(ops: &[Op], options: &CheckOptions) -> Report {
    let sends = collect_sends(ops);
    let facts = Facts::gather(&sends, ops, options);
    let mut anomalies = lost_writes(&facts, options.drained);
    anomalies.extend(duplicates(&facts));
    anomalies.extend(duplicate_deliveries(&facts));
    anomalies.extend(inconsistent_offsets(&facts));
    anomalies.extend(aborted_reads(&facts));
    let (backwards, skips) = poll_order(&facts);
    anomalies.extend(backwards);
    anomalies.extend(send_order(&facts));
    anomalies.extend(skips);
    anomalies.extend(unseen(&facts, options.drained));
    // Stable: within a kind, anomalies keep the order they were found in.
    anomalies.sort_by_key(Anomaly::kind);

    let all_read: BTreeSet<Value> = facts.polls.iter().map(|p| p.read.value).collect();
    let stats = Stats {
        sends: sends.len(),
        acked: count_outcome(&sends, SendOutcome::Acked),
        failed: count_outcome(&sends, SendOutcome::Failed),
        indeterminate: count_outcome(&sends, SendOutcome::Indeterminate),
        reads: facts.polls.len(),
        distinct_read: all_read.len(),
    };
    Report { anomalies, stats }
}

/// What every anomaly rule looks at, gathered once from the history.
struct Facts<'a> {
    /// Every send by value, with its outcome.
    sends: &'a BTreeMap<Value, SendRecord>,
    /// Every read of every successful poll, in history order.
    polls: Vec<PollRead<'a>>,
    /// Every (partition, offset) -> values, from acks and reads.
    by_offset: BTreeMap<&'a Tp, BTreeMap<u64, BTreeSet<Value>>>,
    /// Values read by the polls that count (see [`CheckOptions::group`]).
    read_values: BTreeSet<Value>,
    /// Highest offset read per partition by the polls that count.
    max_read: HashMap<&'a Tp, u64>,
    /// The reads of the polls that count, in history order.
    counted: Vec<usize>,
}

impl<'a> Facts<'a> {
    fn gather(
        sends: &'a BTreeMap<Value, SendRecord>,
        ops: &'a [Op],
        options: &CheckOptions,
    ) -> Facts<'a> {
        let polls: Vec<PollRead<'a>> = ops
            .iter()
            .filter(|op| op.typ == OpType::Ok && op.kind == OpKind::Poll)
            .flat_map(|op| {
                op.mops.iter().flat_map(move |m| match m {
                    Mop::Poll { reads } => reads.iter().map(|read| PollRead { read, op }).collect(),
                    _ => Vec::new(),
                })
            })
            .collect();

        let mut by_offset: BTreeMap<&'a Tp, BTreeMap<u64, BTreeSet<Value>>> = BTreeMap::new();
        for (v, s) in sends {
            if let (SendOutcome::Acked, Some(o)) = (s.outcome, s.offset) {
                by_offset
                    .entry(&s.tp)
                    .or_default()
                    .entry(o)
                    .or_default()
                    .insert(*v);
            }
        }
        for p in &polls {
            by_offset
                .entry(&p.read.tp)
                .or_default()
                .entry(p.read.offset)
                .or_default()
                .insert(p.read.value);
        }

        let is_counted = |op: &Op| match &options.group {
            None => true,
            Some(g) => op.group.as_deref() == Some(g.as_str()),
        };
        let counted: Vec<usize> = (0..polls.len())
            .filter(|&i| is_counted(polls[i].op))
            .collect();
        let mut read_values = BTreeSet::new();
        let mut max_read: HashMap<&'a Tp, u64> = HashMap::new();
        for &i in &counted {
            let p = &polls[i];
            read_values.insert(p.read.value);
            let m = max_read.entry(&p.read.tp).or_insert(p.read.offset);
            *m = (*m).max(p.read.offset);
        }
        Facts {
            sends,
            polls,
            by_offset,
            read_values,
            max_read,
            counted,
        }
    }

    fn counted_polls(&self) -> impl Iterator<Item = &PollRead<'a>> {
        self.counted.iter().map(|&i| &self.polls[i])
    }

    /// Acknowledged sends nobody (who counts) read, with whether a read
    /// went past their offset.
    fn unread_acked(&self) -> impl Iterator<Item = (&Value, &SendRecord, Option<u64>, bool)> {
        self.sends
            .iter()
            .filter(|(v, s)| s.outcome == SendOutcome::Acked && !self.read_values.contains(v))
            .map(|(v, s)| {
                let read_up_to = self.max_read.get(&s.tp).copied();
                let read_past = matches!((s.offset, read_up_to), (Some(o), Some(m)) if m > o);
                (v, s, read_up_to, read_past)
            })
    }
}

/// Acknowledged values nobody read although a read went past them, or,
/// after a drain, at all.
fn lost_writes(f: &Facts<'_>, drained: bool) -> Vec<Anomaly> {
    f.unread_acked()
        .filter(|(_, _, _, read_past)| *read_past || drained)
        .map(|(v, s, read_up_to, _)| Anomaly::LostWrite {
            value: *v,
            tp: s.tp.clone(),
            offset: s.offset,
            read_up_to,
        })
        .collect()
}

/// Acknowledged values nobody read yet, where no read went past them and
/// the history does not end with a drain.
fn unseen(f: &Facts<'_>, drained: bool) -> Vec<Anomaly> {
    f.unread_acked()
        .filter(|(_, _, _, read_past)| !*read_past && !drained)
        .map(|(v, s, _, _)| Anomaly::Unseen {
            value: *v,
            tp: s.tp.clone(),
            offset: s.offset,
        })
        .collect()
}

/// One value at several positions.
fn duplicates(f: &Facts<'_>) -> Vec<Anomaly> {
    let mut positions: BTreeMap<Value, BTreeSet<(&Tp, u64)>> = BTreeMap::new();
    for (tp, offsets) in &f.by_offset {
        for (o, values) in offsets {
            for v in values {
                positions.entry(*v).or_default().insert((tp, *o));
            }
        }
    }
    positions
        .into_iter()
        .filter(|(_, at)| at.len() > 1)
        .map(|(v, at)| Anomaly::Duplicate {
            value: v,
            positions: at.iter().map(|(tp, o)| ((*tp).clone(), *o)).collect(),
        })
        .collect()
}

/// One value delivered more than once to one group.
fn duplicate_deliveries(f: &Facts<'_>) -> Vec<Anomaly> {
    let mut deliveries: BTreeMap<(&str, Value), Vec<Delivery>> = BTreeMap::new();
    for p in f.counted_polls() {
        if let Some(g) = p.op.group.as_deref() {
            deliveries.entry((g, p.read.value)).or_default().push((
                p.read.tp.clone(),
                p.read.offset,
                p.op.process,
            ));
        }
    }
    deliveries
        .into_iter()
        .filter(|(_, d)| d.len() > 1)
        .map(|((group, value), d)| Anomaly::DuplicateDelivery {
            value,
            group: group.to_string(),
            deliveries: d,
        })
        .collect()
}

/// Several values at one position.
fn inconsistent_offsets(f: &Facts<'_>) -> Vec<Anomaly> {
    let mut found = Vec::new();
    for (tp, offsets) in &f.by_offset {
        for (o, values) in offsets {
            if values.len() > 1 {
                found.push(Anomaly::InconsistentOffsets {
                    tp: (*tp).clone(),
                    offset: *o,
                    values: values.iter().copied().collect(),
                });
            }
        }
    }
    found
}

/// Reads of values whose send definitely failed (G1a).
fn aborted_reads(f: &Facts<'_>) -> Vec<Anomaly> {
    f.polls
        .iter()
        .filter_map(|p| {
            let s = f.sends.get(&p.read.value)?;
            (s.outcome == SendOutcome::Failed).then(|| Anomaly::AbortedRead {
                value: p.read.value,
                tp: p.read.tp.clone(),
                offset: p.read.offset,
                send_op: s.op,
                poll_op: p.op.index,
            })
        })
        .collect()
}

/// Per process and partition, polls must move forward (the first list)
/// without skipping known offsets (the second).
fn poll_order(f: &Facts<'_>) -> (Vec<Anomaly>, Vec<Anomaly>) {
    let mut last_read: HashMap<(ProcessId, &Tp), u64> = HashMap::new();
    let mut backwards = Vec::new();
    let mut skips = Vec::new();
    for p in &f.polls {
        let offset = p.read.offset;
        let Some(prev) = last_read.insert((p.op.process, &p.read.tp), offset) else {
            continue;
        };
        if offset <= prev {
            backwards.push(Anomaly::NonMonotonicPoll {
                process: p.op.process,
                tp: p.read.tp.clone(),
                prev_offset: prev,
                offset,
                poll_op: p.op.index,
            });
        } else if offset > prev + 1 {
            let skipped: Vec<(u64, Value)> = f
                .by_offset
                .get(&p.read.tp)
                .map(|offsets| {
                    offsets
                        .range(prev + 1..offset)
                        .flat_map(|(o, vs)| vs.iter().map(move |v| (*o, *v)))
                        .collect()
                })
                .unwrap_or_default();
            if !skipped.is_empty() {
                skips.push(Anomaly::PollSkip {
                    process: p.op.process,
                    tp: p.read.tp.clone(),
                    prev_offset: prev,
                    offset,
                    skipped,
                    poll_op: p.op.index,
                });
            }
        }
    }
    (backwards, skips)
}

/// Per process and partition, acknowledged offsets must grow in send order.
fn send_order(f: &Facts<'_>) -> Vec<Anomaly> {
    let mut by_process: BTreeMap<(ProcessId, &Tp), AckedSends> = BTreeMap::new();
    for (v, s) in f.sends {
        if let (SendOutcome::Acked, Some(o)) = (s.outcome, s.offset) {
            by_process
                .entry((s.process, &s.tp))
                .or_default()
                .push((s.invoked, *v, o));
        }
    }
    let mut found = Vec::new();
    for ((process, tp), mut list) in by_process {
        list.sort_unstable();
        for w in list.windows(2) {
            let ((_, v0, o0), (_, v1, o1)) = (w[0], w[1]);
            if o1 <= o0 {
                found.push(Anomaly::NonMonotonicSend {
                    process,
                    tp: tp.clone(),
                    prev: (v0, o0),
                    next: (v1, o1),
                });
            }
        }
    }
    found
}

fn count_outcome(sends: &BTreeMap<Value, SendRecord>, outcome: SendOutcome) -> usize {
    sends.values().filter(|s| s.outcome == outcome).count()
}

/// Every sent value with its outcome: the completion's, or indeterminate
/// for an invocation that never completed.
///
/// A value sent by more than one operation (a copier's input copied again
/// by the member that took its partition over, after the first attempt
/// aborted) takes the most definite success: acknowledged if any send was,
/// failed only if every send failed. A failed attempt next to an
/// acknowledged one is therefore no aborted read; had it become visible
/// after all, the value would be stored twice (a duplicate).
fn collect_sends(ops: &[Op]) -> BTreeMap<Value, SendRecord> {
    fn rank(o: SendOutcome) -> u8 {
        match o {
            SendOutcome::Failed => 0,
            SendOutcome::Indeterminate => 1,
            SendOutcome::Acked => 2,
        }
    }
    let mut sends: BTreeMap<Value, SendRecord> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.kind == OpKind::Send) {
        let outcome = match op.typ {
            OpType::Invoke => SendOutcome::Indeterminate,
            OpType::Ok => SendOutcome::Acked,
            OpType::Fail => SendOutcome::Failed,
            OpType::Info => SendOutcome::Indeterminate,
        };
        let invoked = op.invoke_index.unwrap_or(op.index);
        for m in &op.mops {
            if let Mop::Send { tp, value, offset } = m {
                // A completion comes after its invocation and replaces it;
                // another operation's send only if it is no less definite.
                if let Some(prev) = sends.get(value)
                    && prev.invoked != invoked
                    && rank(prev.outcome) > rank(outcome)
                {
                    continue;
                }
                sends.insert(
                    *value,
                    SendRecord {
                        process: op.process,
                        tp: tp.clone(),
                        offset: *offset,
                        outcome,
                        op: op.index,
                        invoked,
                    },
                );
            }
        }
    }
    sends
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::History;

    fn tp(p: u32) -> Tp {
        Tp::new("t", p)
    }

    fn send(tp: &Tp, value: Value, offset: Option<u64>) -> Mop {
        Mop::Send {
            tp: tp.clone(),
            value,
            offset,
        }
    }

    /// A small DSL for hand-made histories.
    struct H(History);

    impl H {
        fn new() -> H {
            H(History::new())
        }
        fn sent(&self, p: ProcessId, tp: &Tp, v: Value, offset: u64) {
            self.0
                .invoke(p, OpKind::Send, None, vec![send(tp, v, None)])
                .ok(vec![send(tp, v, Some(offset))]);
        }
        fn send_failed(&self, p: ProcessId, tp: &Tp, v: Value) {
            self.0
                .invoke(p, OpKind::Send, None, vec![send(tp, v, None)])
                .fail(vec![send(tp, v, None)], "rejected");
        }
        fn polled(&self, p: ProcessId, group: Option<&str>, reads: &[(&Tp, u64, Value)]) {
            let reads = reads
                .iter()
                .map(|(tp, offset, value)| Read {
                    tp: (*tp).clone(),
                    offset: *offset,
                    value: *value,
                })
                .collect();
            self.0
                .invoke(p, OpKind::Poll, group, vec![Mop::Poll { reads: vec![] }])
                .ok(vec![Mop::Poll { reads }]);
        }
        fn check(&self, drained: bool) -> Report {
            check(
                &self.0.ops(),
                &CheckOptions {
                    drained,
                    group: None,
                },
            )
        }
    }

    fn only(report: &Report) -> Vec<AnomalyKind> {
        let mut kinds: Vec<_> = report.anomalies.iter().map(Anomaly::kind).collect();
        kinds.dedup();
        kinds
    }

    #[test]
    fn a_clean_history_shows_no_anomaly_and_is_valid_in_every_mode() {
        let h = H::new();
        let (a, b) = (tp(0), tp(1));
        h.sent(0, &a, 1, 0);
        h.sent(0, &a, 2, 1);
        h.sent(0, &b, 3, 0);
        h.polled(1, Some("g"), &[(&a, 0, 1), (&a, 1, 2)]);
        h.polled(1, Some("g"), &[(&b, 0, 3)]);
        let r = h.check(true);
        assert!(r.anomalies.is_empty(), "{:?}", r.anomalies);
        assert_eq!(r.stats.acked, 3);
        assert_eq!(r.stats.distinct_read, 3);
        for mode in DeliveryMode::ALL {
            assert!(r.verdict(mode).is_valid(), "{}", r.verdict(mode));
        }
    }

    #[test]
    fn an_acked_value_skipped_by_every_read_past_it_is_a_lost_write() {
        let h = H::new();
        let a = tp(0);
        h.sent(0, &a, 1, 0);
        h.sent(0, &a, 2, 1);
        h.sent(0, &a, 3, 2);
        // A new consumer incarnation starts past offset 1 (not a poll skip:
        // it is another process).
        h.polled(1, None, &[(&a, 0, 1)]);
        h.polled(2, None, &[(&a, 2, 3)]);
        let r = h.check(false);
        assert_eq!(only(&r), vec![AnomalyKind::LostWrite]);
        assert_eq!(
            r.anomalies[0],
            Anomaly::LostWrite {
                value: 2,
                tp: a,
                offset: Some(1),
                read_up_to: Some(2)
            }
        );
        assert!(!r.verdict(DeliveryMode::AtLeastOnce).is_valid());
        assert!(r.verdict(DeliveryMode::AtMostOnce).is_valid());
        assert_eq!(
            r.verdict(DeliveryMode::AtMostOnce).allowed[&AnomalyKind::LostWrite],
            1
        );
    }

    #[test]
    fn an_acked_value_nobody_read_is_unseen_unless_the_history_was_drained() {
        let h = H::new();
        let a = tp(0);
        h.sent(0, &a, 1, 0);
        h.sent(0, &a, 2, 1);
        h.polled(1, None, &[(&a, 0, 1)]);
        let r = h.check(false);
        assert_eq!(only(&r), vec![AnomalyKind::Unseen]);
        assert_eq!(
            r.anomalies[0],
            Anomaly::Unseen {
                value: 2,
                tp: a.clone(),
                offset: Some(1)
            }
        );
        assert!(r.is_clean());
        assert!(r.verdict(DeliveryMode::ExactlyOnce).is_valid());
        let r = h.check(true);
        assert_eq!(only(&r), vec![AnomalyKind::LostWrite]);
    }

    #[test]
    fn one_value_at_two_offsets_is_a_duplicate() {
        let h = H::new();
        let a = tp(0);
        // A retried batch: acked at 1, but the lost first attempt sits at 0.
        h.sent(0, &a, 7, 1);
        h.polled(1, None, &[(&a, 0, 7), (&a, 1, 7)]);
        let r = h.check(true);
        assert_eq!(only(&r), vec![AnomalyKind::Duplicate]);
        assert_eq!(
            r.anomalies[0],
            Anomaly::Duplicate {
                value: 7,
                positions: vec![(a.clone(), 0), (a, 1)]
            }
        );
        assert!(r.verdict(DeliveryMode::AtLeastOnce).is_valid());
        assert!(!r.verdict(DeliveryMode::Idempotent).is_valid());
        assert!(!r.verdict(DeliveryMode::AtMostOnce).is_valid());
    }

    #[test]
    fn a_group_delivering_one_offset_twice_is_a_duplicate_delivery() {
        let h = H::new();
        let a = tp(0);
        h.sent(0, &a, 1, 0);
        h.sent(0, &a, 2, 1);
        // Consumer 1 crashed before committing; consumer 2 redelivers.
        h.polled(1, Some("g"), &[(&a, 0, 1), (&a, 1, 2)]);
        h.polled(2, Some("g"), &[(&a, 1, 2)]);
        // Another group reading it too is no duplicate.
        h.polled(3, Some("other"), &[(&a, 1, 2)]);
        let r = h.check(true);
        assert_eq!(only(&r), vec![AnomalyKind::DuplicateDelivery]);
        assert_eq!(
            r.anomalies[0],
            Anomaly::DuplicateDelivery {
                value: 2,
                group: "g".into(),
                deliveries: vec![(a.clone(), 1, 1), (a, 1, 2)]
            }
        );
        assert!(r.verdict(DeliveryMode::AtLeastOnce).is_valid());
        assert!(r.verdict(DeliveryMode::Idempotent).is_valid());
        assert!(!r.verdict(DeliveryMode::AtMostOnce).is_valid());
        assert!(!r.verdict(DeliveryMode::ExactlyOnce).is_valid());
    }

    #[test]
    fn two_values_at_one_offset_are_inconsistent_offsets() {
        let h = H::new();
        let a = tp(0);
        h.sent(0, &a, 1, 0);
        h.polled(1, None, &[(&a, 0, 9)]);
        h.sent(0, &a, 9, 1);
        h.polled(1, None, &[(&a, 1, 9)]);
        let r = h.check(false);
        let kinds = only(&r);
        assert!(
            kinds.contains(&AnomalyKind::InconsistentOffsets),
            "{kinds:?}"
        );
        let inconsistent: Vec<_> = r.of(AnomalyKind::InconsistentOffsets).collect();
        assert_eq!(
            inconsistent[0],
            &Anomaly::InconsistentOffsets {
                tp: a,
                offset: 0,
                values: vec![1, 9]
            }
        );
        for mode in DeliveryMode::ALL {
            assert!(!r.verdict(mode).is_valid());
        }
    }

    #[test]
    fn a_value_copied_again_after_a_failed_attempt_counts_as_acked() {
        let h = H::new();
        let a = tp(0);
        // The new owner's copy commits; the old one's aborts afterwards.
        h.sent(1, &a, 7, 0);
        h.send_failed(0, &a, 7);
        h.polled(2, None, &[(&a, 0, 7)]);
        let r = h.check(true);
        assert!(r.anomalies.is_empty(), "{:?}", r.anomalies);
        assert_eq!(r.stats.acked, 1);
        // Had the aborted attempt become visible, the value is stored twice.
        h.polled(2, None, &[(&a, 1, 7)]);
        assert_eq!(only(&h.check(true)), vec![AnomalyKind::Duplicate]);
    }

    #[test]
    fn reading_a_value_whose_send_failed_is_an_aborted_read() {
        let h = H::new();
        let a = tp(0);
        h.send_failed(0, &a, 5);
        h.polled(1, None, &[(&a, 0, 5)]);
        let r = h.check(true);
        assert_eq!(only(&r), vec![AnomalyKind::AbortedRead]);
        match &r.anomalies[0] {
            Anomaly::AbortedRead {
                value,
                offset,
                send_op,
                poll_op,
                ..
            } => {
                assert_eq!((*value, *offset), (5, 0));
                assert_eq!(*send_op, 1);
                assert_eq!(*poll_op, 3);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.stats.failed, 1);
    }

    #[test]
    fn a_process_reading_backwards_is_a_non_monotonic_poll() {
        let h = H::new();
        let a = tp(0);
        h.sent(0, &a, 1, 0);
        h.sent(0, &a, 2, 1);
        h.polled(1, None, &[(&a, 0, 1), (&a, 1, 2)]);
        h.polled(1, None, &[(&a, 0, 1)]);
        let r = h.check(true);
        assert_eq!(only(&r), vec![AnomalyKind::NonMonotonicPoll]);
        assert_eq!(
            r.anomalies[0],
            Anomaly::NonMonotonicPoll {
                process: 1,
                tp: a,
                prev_offset: 1,
                offset: 0,
                poll_op: 7
            }
        );
    }

    #[test]
    fn a_process_whose_acks_go_backwards_is_a_non_monotonic_send() {
        let h = H::new();
        let a = tp(0);
        // The first batch's ack was lost; its retry landed after the second.
        h.sent(0, &a, 1, 1);
        h.sent(0, &a, 2, 0);
        h.polled(1, None, &[(&a, 0, 2), (&a, 1, 1)]);
        let r = h.check(true);
        assert_eq!(only(&r), vec![AnomalyKind::NonMonotonicSend]);
        assert_eq!(
            r.anomalies[0],
            Anomaly::NonMonotonicSend {
                process: 0,
                tp: a,
                prev: (1, 1),
                next: (2, 0)
            }
        );
        assert!(r.verdict(DeliveryMode::AtLeastOnce).is_valid());
        assert!(!r.verdict(DeliveryMode::Idempotent).is_valid());
    }

    #[test]
    fn a_process_jumping_over_known_offsets_is_a_poll_skip() {
        let h = H::new();
        let a = tp(0);
        for (v, o) in [(1, 0), (2, 1), (3, 2), (4, 3)] {
            h.sent(0, &a, v, o);
        }
        h.polled(1, None, &[(&a, 0, 1)]);
        h.polled(1, None, &[(&a, 3, 4)]);
        // Someone else read the rest, so nothing is lost.
        h.polled(2, None, &[(&a, 1, 2), (&a, 2, 3)]);
        let r = h.check(true);
        assert_eq!(only(&r), vec![AnomalyKind::PollSkip]);
        assert_eq!(
            r.anomalies[0],
            Anomaly::PollSkip {
                process: 1,
                tp: a,
                prev_offset: 0,
                offset: 3,
                skipped: vec![(1, 2), (2, 3)],
                poll_op: 11
            }
        );
    }

    #[test]
    fn a_gap_without_known_values_is_no_skip() {
        // Offsets 1 and 2 hold, say, transaction markers: nothing known.
        let h = H::new();
        let a = tp(0);
        h.sent(0, &a, 1, 0);
        h.sent(0, &a, 2, 3);
        h.polled(1, None, &[(&a, 0, 1), (&a, 3, 2)]);
        assert!(h.check(true).anomalies.is_empty());
    }

    #[test]
    fn with_a_group_only_its_polls_count_as_reads() {
        let h = H::new();
        let a = tp(0);
        h.sent(0, &a, 1, 0);
        h.sent(0, &a, 2, 1);
        // The group delivered only offset 1 (it lost offset 0 in a crash
        // after committing); a drain outside the group saw both.
        h.polled(1, Some("g"), &[(&a, 1, 2)]);
        h.polled(2, None, &[(&a, 0, 1), (&a, 1, 2)]);
        // Another group's redelivery is not this group's business.
        h.polled(3, Some("other"), &[(&a, 0, 1)]);
        h.polled(4, Some("other"), &[(&a, 0, 1)]);
        let all = h.check(true);
        assert_eq!(only(&all), vec![AnomalyKind::DuplicateDelivery]);
        let group = check(
            &h.0.ops(),
            &CheckOptions {
                drained: true,
                group: Some("g".into()),
            },
        );
        assert_eq!(only(&group), vec![AnomalyKind::LostWrite]);
    }

    #[test]
    fn an_unfinished_or_info_send_is_indeterminate_and_never_lost() {
        let h = H::new();
        let a = tp(0);
        let inv = h.0.invoke(0, OpKind::Send, None, vec![send(&a, 1, None)]);
        drop(inv);
        h.0.invoke(0, OpKind::Send, None, vec![send(&a, 2, None)])
            .info(vec![send(&a, 2, None)], "timeout");
        let r = h.check(true);
        assert!(r.anomalies.is_empty());
        assert_eq!(r.stats.indeterminate, 2);
    }

    #[test]
    fn the_mode_table_follows_design_section_2() {
        use AnomalyKind as K;
        use DeliveryMode as M;
        assert!(!M::AtMostOnce.forbids(K::LostWrite));
        assert!(M::AtMostOnce.forbids(K::Duplicate));
        assert!(M::AtMostOnce.forbids(K::DuplicateDelivery));
        assert!(M::AtLeastOnce.forbids(K::LostWrite));
        assert!(!M::AtLeastOnce.forbids(K::Duplicate));
        assert!(!M::AtLeastOnce.forbids(K::DuplicateDelivery));
        assert!(M::Idempotent.forbids(K::Duplicate));
        assert!(M::Idempotent.forbids(K::NonMonotonicSend));
        assert!(!M::Idempotent.forbids(K::DuplicateDelivery));
        for k in K::ALL {
            assert_eq!(M::ExactlyOnce.forbids(k), k != K::Unseen, "{k}");
        }
    }
}
