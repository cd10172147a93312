//! The transaction state machine: one pure function, [`apply`], decides
//! every transition of a transactional id.
//!
//! [`apply`] takes the id's current [`TxnMeta`] and an [`Event`] and
//! returns either an error (the request is refused, nothing changes) or a
//! [`Transition`]: the new meta and the ordered [`Effect`]s that carry it
//! out. It does no I/O and reads no clock; the coordinator
//! (`txn::coordinator`) performs the effects in order, one at a time.
//!
//! | state | event | result |
//! |---|---|---|
//! | any | `Init` with a new id, or at the last epoch | `AllocateProducerId`, then `Init` again with the id |
//! | `Empty`, `Complete*` | `Init` | epoch + 1 (or the fresh id at epoch 0), `Empty`: persist, map the id, adopt |
//! | `Ongoing`, `PrepareAbort` | `Init` | finish as abort, then `Init` |
//! | `PrepareCommit` | `Init` | finish as commit, then `Init` |
//! | any | `Add*`/`OffsetCommit`/`EndTxn` from another producer id or an older epoch | `ProducerFenced` |
//! | any | the same, from a newer epoch | `InvalidEpoch` |
//! | `Prepare*` | `Add*` | `ConcurrentTransactions` |
//! | `Empty`, `Complete*` | `Add*` | `Ongoing` with only the new participants: persist, adopt |
//! | `Ongoing` | `Add*` of nothing new | no change |
//! | `Ongoing` | `Add*` of something new | persist, adopt |
//! | any | `Add*` past [`MAX_PARTITIONS_PER_TXN`] | `InvalidRequest` |
//! | `Ongoing` with the group | `OffsetCommit` | no change (the offsets are written) |
//! | otherwise | `OffsetCommit` | `InvalidTxnState` |
//! | `Ongoing` with the partition | an append ([`check_append`]) of the current (pid, epoch) | admitted |
//! | any | an append with another (pid, epoch) | `InvalidEpoch` |
//! | otherwise | an append | `NotInTransaction` |
//! | `Complete*`, one epoch on | `EndTxn` retried with the same decision | no change: the same reply |
//! | `Complete*`, one epoch on | `EndTxn` retried with the other decision | `InvalidTxnState` |
//! | `Empty`, `Ongoing`, the matching `Prepare*` | `EndTxn` | finish, then the `txn::before_reply` failpoint |
//! | the other `Prepare*`, `Complete*` | `EndTxn` | `InvalidTxnState` |
//! | `Ongoing` past its timeout | `Timeout` | finish as abort |
//! | otherwise | `Timeout` | no change |
//! | `Ongoing`, `PrepareAbort` / `PrepareCommit` | `Abort` (by hand) | finish as abort / commit |
//! | otherwise | `Abort` | `InvalidTxnState` |
//! | `PrepareCommit` / `PrepareAbort` | `Recover` | finish as commit / abort |
//! | otherwise | `Recover` | no change |
//!
//! "Finish" is steps 1–4 of the commit protocol in `txn/mod.rs`: adopt
//! `Prepare*` in memory (appends stop), persist it, write one marker per
//! participant partition, wait for them, end the group offsets, then
//! [`Event::Complete`]: `Complete*` with the epoch bumped (a fresh id at
//! the last epoch), persisted, mapped and adopted. Every transaction bumps
//! the epoch (KIP-890 style), so sequences restart at 0 and a late request
//! of a finished transaction can never join the next one; except for a
//! producer that keeps its epoch ([`TxnMeta::keep_epoch`], Kafka clients
//! before transaction version 2), whose own EndTxn leaves the epoch as it
//! is and whose sequences continue. What protects those producers from a
//! late request is the registration check: a transactional append to a
//! partition the open transaction has not added is refused.

use std::collections::BTreeSet;

use crate::error::BrokerError;

/// Timeout of a transaction when the producer names none.
pub const DEFAULT_TXN_TIMEOUT_MS: u32 = 60_000;
/// Longest timeout a producer may ask for.
pub const MAX_TXN_TIMEOUT_MS: u32 = 15 * 60_000;
/// Most partitions one transaction may touch.
pub const MAX_PARTITIONS_PER_TXN: usize = 10_000;
/// Most transactional ids one broker coordinates.
pub const MAX_TRANSACTIONAL_IDS: usize = 100_000;
/// The last epoch a producer id is used with: a bump past it takes a fresh
/// producer id at epoch 0 instead.
pub const MAX_EPOCH: i16 = i16::MAX - 1;

/// A transaction's state. The legal transitions are the table in the
/// module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    /// No transaction open.
    Empty,
    /// Partitions or groups were added; writes may happen.
    Ongoing,
    /// Commit decided and durable; markers being written.
    PrepareCommit,
    /// Abort decided and durable; markers being written.
    PrepareAbort,
    /// The last transaction committed.
    CompleteCommit,
    /// The last transaction aborted.
    CompleteAbort,
}

impl TxnState {
    /// The state's name, as `ferry txn list` shows it.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }

    fn prepare(commit: bool) -> TxnState {
        if commit {
            TxnState::PrepareCommit
        } else {
            TxnState::PrepareAbort
        }
    }

    fn complete(commit: bool) -> TxnState {
        if commit {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        }
    }
}

/// What the coordinator knows about one transactional id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMeta {
    /// The transactional id.
    pub transactional_id: String,
    /// Its producer id.
    pub producer_id: i64,
    /// Its current epoch.
    pub epoch: i16,
    /// State of the current or last transaction.
    pub state: TxnState,
    /// Participant partitions.
    pub partitions: BTreeSet<(String, u32)>,
    /// Consumer groups whose offsets the transaction commits.
    pub groups: BTreeSet<String>,
    /// Abort the transaction after this long open.
    pub timeout_ms: u32,
    /// When the current transaction started.
    pub started_ms: i64,
    /// Last change.
    pub updated_ms: i64,
    /// The producer keeps its epoch across transactions: a Kafka client
    /// before transaction version 2 (EndTxn v0–4), which never learns a
    /// new epoch from EndTxn and continues its sequences. Ferry's own
    /// client leaves it off, and every transaction it ends bumps the
    /// epoch. A transaction the coordinator ends itself (timeout, a new
    /// `Init`, an abort by hand) bumps the epoch either way, fencing the
    /// producer that left it open.
    pub keep_epoch: bool,
}

impl TxnMeta {
    /// A transactional id seen for the first time: no producer id yet.
    pub fn new(transactional_id: &str, timeout_ms: u32) -> TxnMeta {
        TxnMeta {
            transactional_id: transactional_id.to_string(),
            producer_id: -1,
            epoch: -1,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            groups: BTreeSet::new(),
            timeout_ms,
            started_ms: 0,
            updated_ms: 0,
            keep_epoch: false,
        }
    }

    /// Whether the transaction is open past its timeout.
    pub fn is_hanging(&self, now_ms: i64) -> bool {
        self.state == TxnState::Ongoing
            && now_ms.saturating_sub(self.started_ms) > i64::from(self.timeout_ms)
    }
}

/// Something that happens to a transactional id: a request, the timeout
/// sweep, a manual abort, or a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `InitProducerId` with this id. `fresh_producer_id` is filled in by
    /// the coordinator after an [`Effect::AllocateProducerId`].
    Init {
        /// Transaction timeout, already checked against the limits.
        timeout_ms: u32,
        /// The clock.
        now_ms: i64,
        /// A newly allocated producer id, if one was asked for.
        fresh_producer_id: Option<i64>,
        /// The producer keeps its epoch across transactions
        /// ([`TxnMeta::keep_epoch`]).
        keep_epoch: bool,
    },
    /// `AddPartitionsToTxn`.
    AddPartitions {
        /// Producer id of the request.
        producer_id: i64,
        /// Epoch of the request.
        epoch: i16,
        /// Partitions to register.
        partitions: Vec<(String, u32)>,
        /// The clock.
        now_ms: i64,
    },
    /// `AddOffsetsToTxn`.
    AddOffsets {
        /// Producer id of the request.
        producer_id: i64,
        /// Epoch of the request.
        epoch: i16,
        /// Consumer group to register.
        group: String,
        /// The clock.
        now_ms: i64,
    },
    /// `TxnOffsetCommit`: may offsets of `group` be written?
    OffsetCommit {
        /// Producer id of the request.
        producer_id: i64,
        /// Epoch of the request.
        epoch: i16,
        /// Consumer group.
        group: String,
    },
    /// `EndTxn`.
    EndTxn {
        /// Producer id of the request.
        producer_id: i64,
        /// Epoch of the request.
        epoch: i16,
        /// Commit (`true`) or abort.
        commit: bool,
        /// The clock.
        now_ms: i64,
    },
    /// The second half of finishing: the markers are written; move to
    /// `Complete*` with the epoch bumped (or kept, see `keep_epoch`).
    Complete {
        /// Commit (`true`) or abort.
        commit: bool,
        /// The clock.
        now_ms: i64,
        /// A newly allocated producer id, if one was asked for.
        fresh_producer_id: Option<i64>,
        /// The producer ended the transaction itself and keeps its epoch.
        keep_epoch: bool,
    },
    /// The timeout sweep found the transaction hanging.
    Timeout {
        /// The clock.
        now_ms: i64,
    },
    /// `AbortTransaction` by hand (`ferry txn abort`).
    Abort {
        /// The clock.
        now_ms: i64,
    },
    /// The broker restarted with this meta replayed from the log.
    Recover {
        /// The clock.
        now_ms: i64,
    },
}

impl Event {
    /// The same event at another time (an event a transition emits runs
    /// later than the one that emitted it).
    pub fn at(mut self, now: i64) -> Event {
        match &mut self {
            Event::Init { now_ms, .. }
            | Event::AddPartitions { now_ms, .. }
            | Event::AddOffsets { now_ms, .. }
            | Event::EndTxn { now_ms, .. }
            | Event::Complete { now_ms, .. }
            | Event::Timeout { now_ms }
            | Event::Abort { now_ms }
            | Event::Recover { now_ms } => *now_ms = now,
            Event::OffsetCommit { .. } => {}
        }
        self
    }

    /// The same event with a freshly allocated producer id.
    pub fn with_producer_id(mut self, id: i64) -> Event {
        if let Event::Init {
            fresh_producer_id, ..
        }
        | Event::Complete {
            fresh_producer_id, ..
        } = &mut self
        {
            *fresh_producer_id = Some(id);
        }
        self
    }
}

/// One step of carrying out a transition, in order. "The state" is the
/// [`Transition::state`] of the latest transition applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Make the state the id's in-memory state: appends see it at once.
    Adopt,
    /// Append the state to the transaction log and wait until durable.
    Persist,
    /// A failpoint (feature `failpoints`) by this name.
    Failpoint(&'static str),
    /// Append the transaction's marker to one participant partition.
    WriteMarker {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Producer id the marker ends.
        producer_id: i64,
        /// Its epoch.
        epoch: i16,
        /// COMMIT (`true`) or ABORT.
        commit: bool,
    },
    /// Wait until every marker written so far is durable.
    AwaitMarkers,
    /// Write the marker to the offsets log (if the transaction has groups
    /// or pending offsets), applying or dropping its pending offsets.
    EndOffsets {
        /// Producer id.
        producer_id: i64,
        /// Its epoch.
        epoch: i16,
        /// Commit (`true`) or abort.
        commit: bool,
        /// Whether groups were registered (if not, only pending offsets
        /// make the marker necessary).
        has_groups: bool,
    },
    /// Map the state's producer id to this transactional id, unmapping
    /// `retire` (the id a fresh one replaced).
    MapProducerId {
        /// The producer id no longer in use, if it changed.
        retire: Option<i64>,
    },
    /// Allocate a producer id, then apply the same event again with it.
    AllocateProducerId,
    /// Apply this event to the state now, carry out its effects, then go
    /// on with the rest.
    Then(Event),
}

/// The outcome of [`apply`]: the new meta and how to get there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The meta once this transition's effects are carried out (before any
    /// [`Effect::Then`] event).
    pub state: TxnMeta,
    /// What to do, in order.
    pub effects: Vec<Effect>,
}

impl Transition {
    fn unchanged(meta: &TxnMeta) -> Transition {
        Transition {
            state: meta.clone(),
            effects: Vec::new(),
        }
    }
}

/// Decides `event` against `meta`. Pure: no I/O, no clock.
pub fn apply(meta: &TxnMeta, event: Event) -> Result<Transition, BrokerError> {
    match event {
        Event::Init {
            timeout_ms,
            now_ms,
            fresh_producer_id,
            keep_epoch,
        } => init(meta, timeout_ms, now_ms, fresh_producer_id, keep_epoch),
        Event::AddPartitions {
            producer_id,
            epoch,
            partitions,
            now_ms,
        } => add(meta, producer_id, epoch, &partitions, None, now_ms),
        Event::AddOffsets {
            producer_id,
            epoch,
            group,
            now_ms,
        } => add(meta, producer_id, epoch, &[], Some(group), now_ms),
        Event::OffsetCommit {
            producer_id,
            epoch,
            group,
        } => {
            check_producer(meta, producer_id, epoch)?;
            if meta.state != TxnState::Ongoing || !meta.groups.contains(&group) {
                return Err(BrokerError::InvalidTxnState(format!(
                    "group {group:?} is not part of an open transaction of {:?}; call AddOffsetsToTxn first",
                    meta.transactional_id
                )));
            }
            Ok(Transition::unchanged(meta))
        }
        Event::EndTxn {
            producer_id,
            epoch,
            commit,
            now_ms,
        } => end_txn(meta, producer_id, epoch, commit, now_ms),
        Event::Complete {
            commit,
            now_ms,
            fresh_producer_id,
            keep_epoch,
        } => complete(meta, commit, now_ms, fresh_producer_id, keep_epoch),
        Event::Timeout { now_ms } => Ok(if meta.is_hanging(now_ms) {
            finish(meta, false, now_ms, false)
        } else {
            Transition::unchanged(meta)
        }),
        Event::Abort { now_ms } => match meta.state {
            TxnState::Ongoing | TxnState::PrepareAbort => Ok(finish(meta, false, now_ms, false)),
            TxnState::PrepareCommit => Ok(finish(meta, true, now_ms, false)),
            s => Err(BrokerError::InvalidTxnState(format!(
                "{:?} has no open transaction (state {})",
                meta.transactional_id,
                s.name()
            ))),
        },
        // Only the producer commits, so a recovered commit keeps the epoch
        // if the producer does; a recovered abort may have been the
        // coordinator's (a timeout) and bumps it.
        Event::Recover { now_ms } => Ok(match meta.state {
            TxnState::PrepareCommit => finish(meta, true, now_ms, meta.keep_epoch),
            TxnState::PrepareAbort => finish(meta, false, now_ms, false),
            _ => Transition::unchanged(meta),
        }),
    }
}

/// Checks that (pid, epoch) is the id's current producer.
fn check_producer(meta: &TxnMeta, pid: i64, epoch: i16) -> Result<(), BrokerError> {
    if pid != meta.producer_id || epoch < meta.epoch {
        return Err(BrokerError::ProducerFenced {
            transactional_id: meta.transactional_id.clone(),
            epoch,
            current: meta.epoch,
        });
    }
    if epoch > meta.epoch {
        return Err(BrokerError::InvalidEpoch {
            epoch,
            current: meta.epoch,
        });
    }
    Ok(())
}

/// May (pid, epoch) append to `topic`/`partition`? The produce path calls
/// this for every transactional batch, under the meta's lock, so it builds
/// no transition: an append changes no transaction state.
pub fn check_append(
    meta: &TxnMeta,
    pid: i64,
    epoch: i16,
    topic: &str,
    partition: u32,
) -> Result<(), BrokerError> {
    if epoch != meta.epoch || pid != meta.producer_id {
        return Err(BrokerError::InvalidEpoch {
            epoch,
            current: meta.epoch,
        });
    }
    if meta.state != TxnState::Ongoing || !meta.partitions.contains(&(topic.to_string(), partition))
    {
        return Err(not_in_transaction(pid, topic, partition));
    }
    Ok(())
}

/// The error of a transactional append the coordinator does not admit.
pub fn not_in_transaction(pid: i64, topic: &str, partition: u32) -> BrokerError {
    BrokerError::NotInTransaction {
        topic: topic.to_string(),
        partition,
        producer_id: pid,
    }
}

fn init(
    meta: &TxnMeta,
    timeout_ms: u32,
    now_ms: i64,
    fresh: Option<i64>,
    keep_epoch: bool,
) -> Result<Transition, BrokerError> {
    let again = Event::Init {
        timeout_ms,
        now_ms,
        fresh_producer_id: None,
        keep_epoch,
    };
    let mut t = match meta.state {
        TxnState::Ongoing | TxnState::PrepareAbort => finish(meta, false, now_ms, false),
        TxnState::PrepareCommit => finish(meta, true, now_ms, false),
        _ => {
            let needs_fresh = meta.producer_id < 0 || meta.epoch >= MAX_EPOCH;
            let Some(mut next) = bumped(meta, needs_fresh, fresh) else {
                return Ok(allocate_first(meta));
            };
            next.state = TxnState::Empty;
            next.partitions.clear();
            next.groups.clear();
            next.timeout_ms = timeout_ms;
            next.updated_ms = now_ms;
            next.keep_epoch = keep_epoch;
            return Ok(Transition {
                state: next,
                effects: vec![
                    Effect::Persist,
                    Effect::MapProducerId { retire: None },
                    Effect::Adopt,
                ],
            });
        }
    };
    t.effects.push(Effect::Then(again));
    Ok(t)
}

fn add(
    meta: &TxnMeta,
    pid: i64,
    epoch: i16,
    partitions: &[(String, u32)],
    group: Option<String>,
    now_ms: i64,
) -> Result<Transition, BrokerError> {
    check_producer(meta, pid, epoch)?;
    let mut next = meta.clone();
    match next.state {
        TxnState::PrepareCommit | TxnState::PrepareAbort => {
            return Err(BrokerError::ConcurrentTransactions(
                meta.transactional_id.clone(),
            ));
        }
        TxnState::Ongoing => {}
        _ => {
            next.state = TxnState::Ongoing;
            next.started_ms = now_ms;
            next.partitions.clear();
            next.groups.clear();
        }
    }
    let before = (next.partitions.len(), next.groups.len());
    next.partitions.extend(partitions.iter().cloned());
    if let Some(g) = group {
        next.groups.insert(g);
    }
    if next.partitions.len() > MAX_PARTITIONS_PER_TXN {
        return Err(BrokerError::InvalidRequest(format!(
            "a transaction may touch at most {MAX_PARTITIONS_PER_TXN} partitions"
        )));
    }
    if meta.state == TxnState::Ongoing && before == (next.partitions.len(), next.groups.len()) {
        return Ok(Transition::unchanged(meta));
    }
    next.updated_ms = now_ms;
    // Durable before any append may rely on it: recovery must know every
    // partition a transaction could have written to.
    Ok(Transition {
        state: next,
        effects: vec![Effect::Persist, Effect::Adopt],
    })
}

fn end_txn(
    meta: &TxnMeta,
    pid: i64,
    epoch: i16,
    commit: bool,
    now_ms: i64,
) -> Result<Transition, BrokerError> {
    // A retry of the EndTxn that completed the last transaction: one
    // epoch behind, or at the same epoch for a producer that keeps it.
    let behind =
        epoch.checked_add(1) == Some(meta.epoch) || (meta.keep_epoch && epoch == meta.epoch);
    let retry_of_completed = pid == meta.producer_id
        && behind
        && matches!(
            meta.state,
            TxnState::CompleteCommit | TxnState::CompleteAbort
        );
    if retry_of_completed {
        return if meta.state == TxnState::complete(commit) {
            Ok(Transition::unchanged(meta))
        } else {
            Err(BrokerError::InvalidTxnState(format!(
                "the transaction already ended with {}",
                meta.state.name()
            )))
        };
    }
    check_producer(meta, pid, epoch)?;
    match meta.state {
        TxnState::Ongoing | TxnState::Empty => {}
        s if s == TxnState::prepare(commit) => {}
        s => {
            return Err(BrokerError::InvalidTxnState(format!(
                "cannot {} a transaction in state {}",
                if commit { "commit" } else { "abort" },
                s.name()
            )));
        }
    }
    let mut t = finish(meta, commit, now_ms, meta.keep_epoch);
    t.effects.push(Effect::Failpoint("txn::before_reply"));
    Ok(t)
}

/// Steps 1–3 of the commit protocol, then [`Event::Complete`] for step 4,
/// which keeps the epoch if `keep_epoch`.
fn finish(meta: &TxnMeta, commit: bool, now_ms: i64, keep_epoch: bool) -> Transition {
    let mut next = meta.clone();
    if matches!(next.state, TxnState::Ongoing | TxnState::Empty) {
        next.state = TxnState::prepare(commit);
        next.updated_ms = now_ms;
    }
    let mut effects = Vec::with_capacity(8 + 2 * next.partitions.len());
    effects.extend([
        Effect::Adopt,
        Effect::Failpoint("txn::before_prepare"),
        Effect::Persist,
        Effect::Failpoint("txn::after_prepare"),
    ]);
    for (topic, partition) in &next.partitions {
        effects.push(Effect::WriteMarker {
            topic: topic.clone(),
            partition: *partition,
            producer_id: next.producer_id,
            epoch: next.epoch,
            commit,
        });
        effects.push(Effect::Failpoint("txn::between_markers"));
    }
    effects.extend([
        Effect::AwaitMarkers,
        Effect::EndOffsets {
            producer_id: next.producer_id,
            epoch: next.epoch,
            commit,
            has_groups: !next.groups.is_empty(),
        },
        Effect::Failpoint("txn::before_complete"),
        Effect::Then(Event::Complete {
            commit,
            now_ms,
            fresh_producer_id: None,
            keep_epoch,
        }),
    ]);
    Transition {
        state: next,
        effects,
    }
}

fn complete(
    meta: &TxnMeta,
    commit: bool,
    now_ms: i64,
    fresh: Option<i64>,
    keep_epoch: bool,
) -> Result<Transition, BrokerError> {
    if meta.state != TxnState::prepare(commit) {
        return Err(BrokerError::InvalidTxnState(format!(
            "cannot complete a transaction in state {}",
            meta.state.name()
        )));
    }
    let next = if keep_epoch {
        Some(meta.clone())
    } else {
        bumped(meta, meta.epoch >= MAX_EPOCH, fresh)
    };
    let Some(mut next) = next else {
        return Ok(allocate_first(meta));
    };
    next.state = TxnState::complete(commit);
    next.partitions.clear();
    next.groups.clear();
    next.updated_ms = now_ms;
    let retire = (next.producer_id != meta.producer_id).then_some(meta.producer_id);
    Ok(Transition {
        state: next,
        effects: vec![
            Effect::Persist,
            Effect::MapProducerId { retire },
            Effect::Adopt,
        ],
    })
}

/// `meta` with its epoch bumped; or, when `needs_fresh` (no producer id
/// yet, or the epoch is used up), with the `fresh` producer id at epoch 0.
/// `None` while there is no fresh id yet: see [`allocate_first`].
fn bumped(meta: &TxnMeta, needs_fresh: bool, fresh: Option<i64>) -> Option<TxnMeta> {
    let mut next = meta.clone();
    match (needs_fresh, fresh) {
        (true, None) => return None,
        (true, Some(id)) => {
            next.producer_id = id;
            next.epoch = 0;
        }
        (false, _) => next.epoch += 1,
    }
    Some(next)
}

/// The transition that asks the coordinator for a fresh producer id; it
/// then applies the event again with it.
fn allocate_first(meta: &TxnMeta) -> Transition {
    Transition {
        state: meta.clone(),
        effects: vec![Effect::AllocateProducerId],
    }
}

#[cfg(test)]
mod tests;
