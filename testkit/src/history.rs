//! The operation history: what every client process asked for and what it
//! got, in the shape of Jepsen's queue histories, for the
//! [checker](super::checker).
//!
//! Each operation is recorded twice: once when it is *invoked*, and once
//! when it *completes* as [`OpType::Ok`] (it happened, with these results),
//! [`OpType::Fail`] (it certainly did not happen) or [`OpType::Info`] (it
//! may or may not have happened: a timeout, a lost connection, a crash).
//! An invocation that never completes counts as `Info`.
//!
//! An operation carries micro-operations ([`Mop`]): one send, one poll's
//! reads, one commit. Transactions, when they come, are operations with
//! several micro-operations, so the format does not change.
//!
//! Every value written must be unique across the history; [`ValueGen`]
//! hands out such values and encodes them as record payloads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;

/// A unique record value.
pub type Value = u64;
/// A client process: one producer, or one incarnation of a consumer (a
/// consumer that crashes and comes back is a new process, as in Jepsen).
pub type ProcessId = u64;

/// A topic partition.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Tp {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
}

impl Tp {
    /// `topic`/`partition`.
    pub fn new(topic: impl Into<String>, partition: u32) -> Tp {
        Tp {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for Tp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Invocation or completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    /// The process started the operation.
    Invoke,
    /// It happened; the micro-operations hold the results.
    Ok,
    /// It certainly did not happen.
    Fail,
    /// Unknown: it may or may not have happened.
    Info,
}

/// What an operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum OpKind {
    /// Send one or more records.
    Send,
    /// Poll records (reads by a consumer, or by a final drain).
    Poll,
    /// Commit consumer offsets.
    Commit,
    /// A process crashed on purpose (recorded as `Info`, for the reader of
    /// the history; the checker ignores it).
    Crash,
}

/// One record read by a poll.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Read {
    /// Where.
    pub tp: Tp,
    /// At which offset.
    pub offset: u64,
    /// Which value.
    pub value: Value,
}

/// A micro-operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mop {
    /// One record sent; `offset` is known once acknowledged.
    Send {
        /// Destination partition.
        tp: Tp,
        /// The unique value.
        value: Value,
        /// Offset from the acknowledgement, if any.
        offset: Option<u64>,
    },
    /// The records one poll returned (empty at invocation).
    Poll {
        /// Records in the order the poll returned them.
        reads: Vec<Read>,
    },
    /// Offsets committed: the next offset to read, per partition.
    Commit {
        /// `(partition, next offset)`.
        offsets: Vec<(Tp, u64)>,
    },
}

/// One history entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Op {
    /// Position in the history.
    pub index: usize,
    /// For completions: the index of the invocation.
    pub invoke_index: Option<usize>,
    /// The process.
    pub process: ProcessId,
    /// Invocation or completion.
    #[serde(rename = "type")]
    pub typ: OpType,
    /// What the operation does.
    pub kind: OpKind,
    /// Consumer group of a poll or commit, if any. Polls outside a group
    /// (a final drain) observe the log but deliver nothing.
    pub group: Option<String>,
    /// Micro-operations.
    pub mops: Vec<Mop>,
    /// Nanoseconds since the history began.
    pub time_ns: u64,
    /// Why it failed, for `Fail` and `Info`.
    pub error: Option<String>,
}

/// Unique values, and their encoding as record payloads.
#[derive(Debug, Default)]
pub struct ValueGen {
    next: AtomicU64,
}

impl ValueGen {
    /// Values from 1 upwards.
    pub fn new() -> ValueGen {
        ValueGen::default()
    }

    /// A value never handed out before by this generator.
    pub fn next_value(&self) -> Value {
        self.next.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The payload for `value`: its decimal digits.
    pub fn encode(value: Value) -> Vec<u8> {
        value.to_string().into_bytes()
    }

    /// The value of a payload made by [`ValueGen::encode`], or `None` for
    /// a foreign record.
    pub fn decode(payload: &[u8]) -> Option<Value> {
        std::str::from_utf8(payload).ok()?.parse().ok()
    }
}

struct Inner {
    ops: Mutex<Vec<Op>>,
    start: Instant,
    next_process: AtomicU64,
    values: ValueGen,
}

/// A thread- and task-safe history recorder. Clones share one history.
#[derive(Clone)]
pub struct History {
    inner: Arc<Inner>,
}

impl Default for History {
    fn default() -> History {
        History::new()
    }
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("ops", &self.inner.ops.lock().len())
            .finish()
    }
}

/// A recorded invocation waiting for its completion. Dropping it without
/// completing leaves the operation indeterminate, which the checker treats
/// like `Info`.
#[derive(Debug)]
#[must_use = "complete the invocation with ok, fail or info"]
pub struct Invocation {
    history: History,
    index: usize,
    process: ProcessId,
    kind: OpKind,
    group: Option<String>,
}

impl Invocation {
    /// The invocation's index in the history.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The process.
    pub fn process(&self) -> ProcessId {
        self.process
    }

    /// Completes as `Ok` with the results.
    pub fn ok(self, mops: Vec<Mop>) {
        self.complete(OpType::Ok, mops, None);
    }

    /// Completes as `Fail`: it certainly did not happen.
    pub fn fail(self, mops: Vec<Mop>, error: impl std::fmt::Display) {
        self.complete(OpType::Fail, mops, Some(error.to_string()));
    }

    /// Completes as `Info`: it may have happened.
    pub fn info(self, mops: Vec<Mop>, error: impl std::fmt::Display) {
        self.complete(OpType::Info, mops, Some(error.to_string()));
    }

    fn complete(self, typ: OpType, mops: Vec<Mop>, error: Option<String>) {
        self.history.push(
            self.process,
            typ,
            self.kind,
            self.group.clone(),
            mops,
            Some(self.index),
            error,
        );
    }
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History {
            inner: Arc::new(Inner {
                ops: Mutex::new(Vec::new()),
                start: Instant::now(),
                next_process: AtomicU64::new(0),
                values: ValueGen::new(),
            }),
        }
    }

    /// A fresh process id.
    pub fn process(&self) -> ProcessId {
        self.inner.next_process.fetch_add(1, Ordering::AcqRel)
    }

    /// A fresh unique value.
    pub fn next_value(&self) -> Value {
        self.inner.values.next_value()
    }

    /// Records an invocation.
    pub fn invoke(
        &self,
        process: ProcessId,
        kind: OpKind,
        group: Option<&str>,
        mops: Vec<Mop>,
    ) -> Invocation {
        let group = group.map(str::to_owned);
        let index = self.push(
            process,
            OpType::Invoke,
            kind,
            group.clone(),
            mops,
            None,
            None,
        );
        Invocation {
            history: self.clone(),
            index,
            process,
            kind,
            group,
        }
    }

    /// Records that `process` crashed on purpose, and where.
    pub fn crashed(&self, process: ProcessId, at: impl std::fmt::Display) {
        self.push(
            process,
            OpType::Info,
            OpKind::Crash,
            None,
            Vec::new(),
            None,
            Some(at.to_string()),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &self,
        process: ProcessId,
        typ: OpType,
        kind: OpKind,
        group: Option<String>,
        mops: Vec<Mop>,
        invoke_index: Option<usize>,
        error: Option<String>,
    ) -> usize {
        let time_ns = self.inner.start.elapsed().as_nanos() as u64;
        let mut ops = self.inner.ops.lock();
        let index = ops.len();
        ops.push(Op {
            index,
            invoke_index,
            process,
            typ,
            kind,
            group,
            mops,
            time_ns,
            error,
        });
        index
    }

    /// A copy of every operation so far.
    pub fn ops(&self) -> Vec<Op> {
        self.inner.ops.lock().clone()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.inner.ops.lock().len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The history as JSON lines, one entry per line, for saving next to a
    /// failing test's seed.
    pub fn to_json_lines(&self) -> String {
        let ops = self.inner.ops.lock();
        let mut out = String::new();
        for op in ops.iter() {
            out.push_str(&serde_json::to_string(op).unwrap_or_default());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_unique_and_round_trip_through_payloads() {
        let g = ValueGen::new();
        let a = g.next_value();
        let b = g.next_value();
        assert_ne!(a, b);
        assert_eq!(ValueGen::decode(&ValueGen::encode(b)), Some(b));
        assert_eq!(ValueGen::decode(b"not a value"), None);
    }

    #[test]
    fn completions_point_at_their_invocations_across_threads() {
        let h = History::new();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || {
                    let p = h.process();
                    for _ in 0..50 {
                        let v = h.next_value();
                        let tp = Tp::new("t", 0);
                        let inv = h.invoke(
                            p,
                            OpKind::Send,
                            None,
                            vec![Mop::Send {
                                tp: tp.clone(),
                                value: v,
                                offset: None,
                            }],
                        );
                        inv.ok(vec![Mop::Send {
                            tp,
                            value: v,
                            offset: Some(v),
                        }]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let ops = h.ops();
        assert_eq!(ops.len(), 400);
        for op in ops.iter().filter(|o| o.typ == OpType::Ok) {
            let inv = &ops[op.invoke_index.unwrap()];
            assert_eq!(inv.typ, OpType::Invoke);
            assert_eq!(inv.process, op.process);
        }
        assert_eq!(h.to_json_lines().lines().count(), 400);
    }
}
