//! The transaction coordinator: two-phase commit of writes plus consumer
//! offsets.
//!
//! Each transactional id has one [`TxnMeta`]: producer id, epoch, state,
//! the participant partitions and consumer groups, timeout and times. Every
//! change is appended to the transaction log (`<data_dir>/__transactions`,
//! key = transactional id, value = the encoded meta, see `codec`) and made
//! durable before it takes effect; replaying that log rebuilds the
//! coordinator.
//!
//! The module is split by concern:
//!
//! - `state`: [`TxnState`], [`TxnMeta`] and the one pure transition
//!   function `state::apply` (event in, new meta and ordered effects out),
//!   with the full transition table in its docs and a table-driven test.
//! - `coordinator`: [`Coordinator`] keeps one meta per id, serialises the
//!   operations on an id, and carries out a transition's effects in order
//!   (persist, markers, offsets, failpoints). It decides nothing itself.
//! - `codec`: the transaction log's record value.
//!
//! ```text
//!            AddPartitions/AddOffsets           EndTxn(commit)
//!   Empty ───────────────────────────▶ Ongoing ───────────────▶ PrepareCommit ──markers──▶ CompleteCommit
//!     ▲                                   │  EndTxn(abort), timeout,                          │
//!     │                                   │  InitProducerId, txn abort                         │
//!     │                                   ▼                                                    │
//!     │                              PrepareAbort ──markers──▶ CompleteAbort                   │
//!     └──────────── InitProducerId (epoch + 1) ◀───────────────────┴──────────────────────────┘
//!                  Complete* ──AddPartitions──▶ Ongoing (the next transaction)
//! ```
//!
//! Commit, step by step, and what a crash at each point leaves:
//!
//! 1. In memory, `Ongoing → PrepareCommit`: from here no transactional
//!    append is accepted (appends check the state under the same lock).
//!    Crash: the log still says `Ongoing`; the producer retries `EndTxn`
//!    or the timeout aborts. Nothing was visible.
//! 2. Append `PrepareCommit` and wait until durable. **This is the
//!    decision.** Crash after: recovery finishes the commit.
//! 3. Append a COMMIT marker to every participant partition and to the
//!    offsets log (whose pending offsets then become the group's committed
//!    offsets), and wait until durable. Crash between markers: recovery
//!    writes them all again; a second marker is harmless because the
//!    partition no longer has the transaction open.
//! 4. Append `CompleteCommit` with the epoch bumped (so a late request of
//!    this transaction can never join the next one), durable.
//! 5. Reply with the new epoch. A lost reply is harmless: `EndTxn` retried
//!    with the old epoch finds `CompleteCommit` one epoch on and returns
//!    the same answer.
//!
//! Abort is the same with ABORT markers. Failpoints (feature `failpoints`)
//! sit between each step: `txn::before_prepare`, `txn::after_prepare`,
//! `txn::between_markers`, `txn::before_complete`, `txn::before_reply`.
//! They are [`state::Effect::Failpoint`]s, so their places are part of each
//! transition.

pub(crate) mod codec;
mod coordinator;
pub(crate) mod state;

pub(crate) use coordinator::Coordinator;
pub use state::{
    DEFAULT_TXN_TIMEOUT_MS, MAX_PARTITIONS_PER_TXN, MAX_TRANSACTIONAL_IDS, MAX_TXN_TIMEOUT_MS,
    TxnMeta, TxnState,
};
