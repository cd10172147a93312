//! The transition table of [`super::apply`], one row per legal and
//! illegal transition.

use ferry_proto::ErrorCode;

use super::*;

const NOW: i64 = 50_000;
const PID: i64 = 7;

fn meta(state: TxnState, epoch: i16) -> TxnMeta {
    TxnMeta {
        transactional_id: "t".into(),
        producer_id: PID,
        epoch,
        state,
        partitions: BTreeSet::new(),
        groups: BTreeSet::new(),
        timeout_ms: 1_000,
        started_ms: 40_000,
        updated_ms: 40_000,
        keep_epoch: false,
    }
}

fn with(mut m: TxnMeta, f: impl FnOnce(&mut TxnMeta)) -> TxnMeta {
    f(&mut m);
    m
}

fn tp(topic: &str, p: u32) -> (String, u32) {
    (topic.to_string(), p)
}

/// An `Ongoing` transaction at epoch 3 with `a/0` and group `g`.
fn ongoing() -> TxnMeta {
    with(meta(TxnState::Ongoing, 3), |m| {
        m.partitions.insert(tp("a", 0));
        m.groups.insert("g".into());
    })
}

fn prepared(commit: bool) -> TxnMeta {
    with(ongoing(), |m| m.state = TxnState::prepare(commit))
}

fn init(fresh: Option<i64>) -> Event {
    Event::Init {
        timeout_ms: 2_000,
        now_ms: NOW,
        fresh_producer_id: fresh,
        keep_epoch: false,
    }
}

fn add(epoch: i16, partitions: &[(String, u32)]) -> Event {
    Event::AddPartitions {
        producer_id: PID,
        epoch,
        partitions: partitions.to_vec(),
        now_ms: NOW,
    }
}

fn add_group(epoch: i16, group: &str) -> Event {
    Event::AddOffsets {
        producer_id: PID,
        epoch,
        group: group.into(),
        now_ms: NOW,
    }
}

fn offset_commit(pid: i64, epoch: i16, group: &str) -> Event {
    Event::OffsetCommit {
        producer_id: pid,
        epoch,
        group: group.into(),
    }
}

fn end(pid: i64, epoch: i16, commit: bool) -> Event {
    Event::EndTxn {
        producer_id: pid,
        epoch,
        commit,
        now_ms: NOW,
    }
}

fn complete(commit: bool, fresh: Option<i64>) -> Event {
    Event::Complete {
        commit,
        now_ms: NOW,
        fresh_producer_id: fresh,
        keep_epoch: false,
    }
}

/// The effects of finishing the transaction of `m` (already in its
/// `Prepare*` state): the commit protocol of `txn/mod.rs`.
fn finish_effects(m: &TxnMeta, commit: bool) -> Vec<Effect> {
    let mut v = vec![
        Effect::Adopt,
        Effect::Failpoint("txn::before_prepare"),
        Effect::Persist,
        Effect::Failpoint("txn::after_prepare"),
    ];
    for (topic, partition) in &m.partitions {
        v.push(Effect::WriteMarker {
            topic: topic.clone(),
            partition: *partition,
            producer_id: m.producer_id,
            epoch: m.epoch,
            commit,
        });
        v.push(Effect::Failpoint("txn::between_markers"));
    }
    v.extend([
        Effect::AwaitMarkers,
        Effect::EndOffsets {
            producer_id: m.producer_id,
            epoch: m.epoch,
            commit,
            has_groups: !m.groups.is_empty(),
        },
        Effect::Failpoint("txn::before_complete"),
        Effect::Then(complete(commit, None)),
    ]);
    v
}

fn then(mut v: Vec<Effect>, more: impl IntoIterator<Item = Effect>) -> Vec<Effect> {
    v.extend(more);
    v
}

fn persist_adopt() -> Vec<Effect> {
    vec![Effect::Persist, Effect::Adopt]
}

fn persist_map_adopt(retire: Option<i64>) -> Vec<Effect> {
    vec![
        Effect::Persist,
        Effect::MapProducerId { retire },
        Effect::Adopt,
    ]
}

enum Step {
    Apply(Event),
    Append(i64, i16, &'static str, u32),
}

enum Want {
    /// The new meta and the effects.
    Go(TxnMeta, Vec<Effect>),
    /// No change, no effects.
    Stay,
    /// Refused with this code.
    Refuse(ErrorCode),
}
use Want::{Go, Refuse, Stay};

fn rows() -> Vec<(&'static str, TxnMeta, Step, Want)> {
    use Step::{Append, Apply};
    let new_id = TxnMeta::new("t", 1_000);
    let bumped = |m: &TxnMeta, pid: i64, epoch: i16| {
        with(m.clone(), |n| {
            n.producer_id = pid;
            n.epoch = epoch;
            n.state = TxnState::Empty;
            n.partitions.clear();
            n.groups.clear();
            n.timeout_ms = 2_000;
            n.updated_ms = NOW;
        })
    };
    let preparing = |m: &TxnMeta, commit: bool| {
        with(m.clone(), |n| {
            n.state = TxnState::prepare(commit);
            n.updated_ms = NOW;
        })
    };
    let completed = |m: &TxnMeta, commit: bool, pid: i64, epoch: i16| {
        with(m.clone(), |n| {
            n.producer_id = pid;
            n.epoch = epoch;
            n.state = TxnState::complete(commit);
            n.partitions.clear();
            n.groups.clear();
            n.updated_ms = NOW;
        })
    };
    let opened = |m: &TxnMeta, parts: &[(String, u32)], group: Option<&str>| {
        with(m.clone(), |n| {
            n.state = TxnState::Ongoing;
            n.started_ms = NOW;
            n.updated_ms = NOW;
            n.partitions = parts.iter().cloned().collect();
            n.groups = group.into_iter().map(String::from).collect();
        })
    };
    let a0 = [tp("a", 0)];
    let b1 = [tp("b", 1)];
    let too_many: Vec<_> = (0..=MAX_PARTITIONS_PER_TXN as u32)
        .map(|p| tp("x", p))
        .collect();
    let last_epoch = with(meta(TxnState::CompleteCommit, MAX_EPOCH), |_| {});
    let last_prepared = with(prepared(true), |m| m.epoch = MAX_EPOCH);
    vec![
        // InitProducerId
        (
            "init of a new id asks for a producer id",
            new_id.clone(),
            Apply(init(None)),
            Go(new_id.clone(), vec![Effect::AllocateProducerId]),
        ),
        (
            "init of a new id takes the fresh id at epoch 0",
            new_id.clone(),
            Apply(init(Some(11))),
            Go(bumped(&new_id, 11, 0), persist_map_adopt(None)),
        ),
        (
            "init on an empty id bumps the epoch",
            meta(TxnState::Empty, 3),
            Apply(init(None)),
            Go(
                bumped(&meta(TxnState::Empty, 3), PID, 4),
                persist_map_adopt(None),
            ),
        ),
        (
            "init after a commit bumps the epoch",
            meta(TxnState::CompleteCommit, 3),
            Apply(init(None)),
            Go(
                bumped(&meta(TxnState::CompleteCommit, 3), PID, 4),
                persist_map_adopt(None),
            ),
        ),
        (
            "init after an abort bumps the epoch",
            meta(TxnState::CompleteAbort, 3),
            Apply(init(None)),
            Go(
                bumped(&meta(TxnState::CompleteAbort, 3), PID, 4),
                persist_map_adopt(None),
            ),
        ),
        (
            "init at the last epoch asks for a producer id",
            last_epoch.clone(),
            Apply(init(None)),
            Go(last_epoch.clone(), vec![Effect::AllocateProducerId]),
        ),
        (
            "init at the last epoch takes the fresh id at epoch 0",
            last_epoch.clone(),
            Apply(init(Some(11))),
            Go(bumped(&last_epoch, 11, 0), persist_map_adopt(None)),
        ),
        (
            "init with a transaction open aborts it first, then inits again",
            ongoing(),
            Apply(init(None)),
            Go(
                preparing(&ongoing(), false),
                then(
                    finish_effects(&prepared(false), false),
                    [Effect::Then(init(None))],
                ),
            ),
        ),
        (
            "init during an abort finishes the abort, then inits again",
            prepared(false),
            Apply(init(None)),
            Go(
                prepared(false),
                then(
                    finish_effects(&prepared(false), false),
                    [Effect::Then(init(None))],
                ),
            ),
        ),
        (
            "init during a commit finishes the commit, then inits again",
            prepared(true),
            Apply(init(None)),
            Go(
                prepared(true),
                then(
                    finish_effects(&prepared(true), true),
                    [Effect::Then(init(None))],
                ),
            ),
        ),
        // AddPartitionsToTxn / AddOffsetsToTxn
        (
            "adding a partition to an empty id opens a transaction",
            meta(TxnState::Empty, 3),
            Apply(add(3, &a0)),
            Go(
                opened(&meta(TxnState::Empty, 3), &a0, None),
                persist_adopt(),
            ),
        ),
        (
            "adding a partition after a commit opens the next transaction",
            meta(TxnState::CompleteCommit, 3),
            Apply(add(3, &a0)),
            Go(
                opened(&meta(TxnState::CompleteCommit, 3), &a0, None),
                persist_adopt(),
            ),
        ),
        (
            "adding a partition after an abort opens the next transaction",
            meta(TxnState::CompleteAbort, 3),
            Apply(add(3, &a0)),
            Go(
                opened(&meta(TxnState::CompleteAbort, 3), &a0, None),
                persist_adopt(),
            ),
        ),
        (
            "adding a registered partition again changes nothing",
            ongoing(),
            Apply(add(3, &a0)),
            Stay,
        ),
        (
            "adding a new partition to an open transaction persists it",
            ongoing(),
            Apply(add(3, &b1)),
            Go(
                with(ongoing(), |m| {
                    m.partitions.insert(tp("b", 1));
                    m.updated_ms = NOW;
                }),
                persist_adopt(),
            ),
        ),
        (
            "adding a partition during a commit is refused",
            prepared(true),
            Apply(add(3, &b1)),
            Refuse(ErrorCode::ConcurrentTransactions),
        ),
        (
            "adding a partition during an abort is refused",
            prepared(false),
            Apply(add(3, &b1)),
            Refuse(ErrorCode::ConcurrentTransactions),
        ),
        (
            "adding a partition with an older epoch is fenced",
            ongoing(),
            Apply(add(2, &b1)),
            Refuse(ErrorCode::ProducerFenced),
        ),
        (
            "adding a partition with another producer id is fenced",
            ongoing(),
            Apply(Event::AddPartitions {
                producer_id: PID + 1,
                epoch: 3,
                partitions: b1.to_vec(),
                now_ms: NOW,
            }),
            Refuse(ErrorCode::ProducerFenced),
        ),
        (
            "adding a partition with a newer epoch is an invalid epoch",
            ongoing(),
            Apply(add(4, &b1)),
            Refuse(ErrorCode::InvalidProducerEpoch),
        ),
        (
            "adding more partitions than a transaction may touch is refused",
            meta(TxnState::Empty, 3),
            Apply(add(3, &too_many)),
            Refuse(ErrorCode::InvalidRequest),
        ),
        (
            "adding a group to an empty id opens a transaction",
            meta(TxnState::Empty, 3),
            Apply(add_group(3, "g")),
            Go(
                opened(&meta(TxnState::Empty, 3), &[], Some("g")),
                persist_adopt(),
            ),
        ),
        (
            "adding a registered group again changes nothing",
            ongoing(),
            Apply(add_group(3, "g")),
            Stay,
        ),
        (
            "adding a group during a commit is refused",
            prepared(true),
            Apply(add_group(3, "h")),
            Refuse(ErrorCode::ConcurrentTransactions),
        ),
        (
            "adding a group with an older epoch is fenced",
            ongoing(),
            Apply(add_group(1, "h")),
            Refuse(ErrorCode::ProducerFenced),
        ),
        // TxnOffsetCommit
        (
            "offsets of a registered group may be written",
            ongoing(),
            Apply(offset_commit(PID, 3, "g")),
            Stay,
        ),
        (
            "offsets of an unregistered group are refused",
            ongoing(),
            Apply(offset_commit(PID, 3, "h")),
            Refuse(ErrorCode::InvalidTxnState),
        ),
        (
            "offsets without an open transaction are refused",
            with(ongoing(), |m| m.state = TxnState::CompleteCommit),
            Apply(offset_commit(PID, 3, "g")),
            Refuse(ErrorCode::InvalidTxnState),
        ),
        (
            "offsets during a commit are refused",
            prepared(true),
            Apply(offset_commit(PID, 3, "g")),
            Refuse(ErrorCode::InvalidTxnState),
        ),
        (
            "offsets from an older epoch are fenced",
            ongoing(),
            Apply(offset_commit(PID, 2, "g")),
            Refuse(ErrorCode::ProducerFenced),
        ),
        (
            "offsets from a newer epoch are an invalid epoch",
            ongoing(),
            Apply(offset_commit(PID, 4, "g")),
            Refuse(ErrorCode::InvalidProducerEpoch),
        ),
        // Transactional appends
        (
            "an append to a registered partition is admitted",
            ongoing(),
            Append(PID, 3, "a", 0),
            Stay,
        ),
        (
            "an append to an unregistered partition is not in the transaction",
            ongoing(),
            Append(PID, 3, "b", 1),
            Refuse(ErrorCode::PartitionNotInTransaction),
        ),
        (
            "an append with an older epoch is an invalid epoch",
            ongoing(),
            Append(PID, 2, "a", 0),
            Refuse(ErrorCode::InvalidProducerEpoch),
        ),
        (
            "an append with another producer id is an invalid epoch",
            ongoing(),
            Append(PID + 1, 3, "a", 0),
            Refuse(ErrorCode::InvalidProducerEpoch),
        ),
        (
            "an append during a commit is not in the transaction",
            prepared(true),
            Append(PID, 3, "a", 0),
            Refuse(ErrorCode::PartitionNotInTransaction),
        ),
        (
            "an append after the commit is not in the transaction",
            meta(TxnState::CompleteCommit, 3),
            Append(PID, 3, "a", 0),
            Refuse(ErrorCode::PartitionNotInTransaction),
        ),
        // EndTxn
        (
            "commit of an open transaction prepares, finishes and replies",
            ongoing(),
            Apply(end(PID, 3, true)),
            Go(
                preparing(&ongoing(), true),
                then(
                    finish_effects(&prepared(true), true),
                    [Effect::Failpoint("txn::before_reply")],
                ),
            ),
        ),
        (
            "abort of an open transaction prepares, finishes and replies",
            ongoing(),
            Apply(end(PID, 3, false)),
            Go(
                preparing(&ongoing(), false),
                then(
                    finish_effects(&prepared(false), false),
                    [Effect::Failpoint("txn::before_reply")],
                ),
            ),
        ),
        (
            "commit with nothing added still bumps the epoch",
            meta(TxnState::Empty, 3),
            Apply(end(PID, 3, true)),
            Go(
                preparing(&meta(TxnState::Empty, 3), true),
                then(
                    finish_effects(&meta(TxnState::PrepareCommit, 3), true),
                    [Effect::Failpoint("txn::before_reply")],
                ),
            ),
        ),
        (
            "commit retried during the commit finishes it",
            prepared(true),
            Apply(end(PID, 3, true)),
            Go(
                prepared(true),
                then(
                    finish_effects(&prepared(true), true),
                    [Effect::Failpoint("txn::before_reply")],
                ),
            ),
        ),
        (
            "commit during an abort is refused",
            prepared(false),
            Apply(end(PID, 3, true)),
            Refuse(ErrorCode::InvalidTxnState),
        ),
        (
            "abort during a commit is refused",
            prepared(true),
            Apply(end(PID, 3, false)),
            Refuse(ErrorCode::InvalidTxnState),
        ),
        (
            "commit at the current epoch after a commit is refused",
            meta(TxnState::CompleteCommit, 3),
            Apply(end(PID, 3, true)),
            Refuse(ErrorCode::InvalidTxnState),
        ),
        (
            "a commit retried with the old epoch gets the same answer",
            meta(TxnState::CompleteCommit, 4),
            Apply(end(PID, 3, true)),
            Stay,
        ),
        (
            "an abort retried with the old epoch gets the same answer",
            meta(TxnState::CompleteAbort, 4),
            Apply(end(PID, 3, false)),
            Stay,
        ),
        (
            "an abort retried after a commit is refused",
            meta(TxnState::CompleteCommit, 4),
            Apply(end(PID, 3, false)),
            Refuse(ErrorCode::InvalidTxnState),
        ),
        (
            "a commit retried after an abort is refused",
            meta(TxnState::CompleteAbort, 4),
            Apply(end(PID, 3, true)),
            Refuse(ErrorCode::InvalidTxnState),
        ),
        (
            "a commit from two epochs back is fenced",
            meta(TxnState::CompleteCommit, 4),
            Apply(end(PID, 2, true)),
            Refuse(ErrorCode::ProducerFenced),
        ),
        (
            "a commit from another producer id is fenced",
            ongoing(),
            Apply(end(PID + 1, 3, true)),
            Refuse(ErrorCode::ProducerFenced),
        ),
        (
            "a commit from a newer epoch is an invalid epoch",
            ongoing(),
            Apply(end(PID, 4, true)),
            Refuse(ErrorCode::InvalidProducerEpoch),
        ),
        // Completion (the second half of finishing)
        (
            "completing a commit bumps the epoch and clears the participants",
            prepared(true),
            Apply(complete(true, None)),
            Go(
                completed(&prepared(true), true, PID, 4),
                persist_map_adopt(None),
            ),
        ),
        (
            "completing an abort bumps the epoch and clears the participants",
            prepared(false),
            Apply(complete(false, None)),
            Go(
                completed(&prepared(false), false, PID, 4),
                persist_map_adopt(None),
            ),
        ),
        (
            "completing at the last epoch asks for a producer id",
            last_prepared.clone(),
            Apply(complete(true, None)),
            Go(last_prepared.clone(), vec![Effect::AllocateProducerId]),
        ),
        (
            "completing at the last epoch retires the old producer id",
            last_prepared.clone(),
            Apply(complete(true, Some(11))),
            Go(
                completed(&last_prepared, true, 11, 0),
                persist_map_adopt(Some(PID)),
            ),
        ),
        (
            "completing what was not prepared is refused",
            ongoing(),
            Apply(complete(true, None)),
            Refuse(ErrorCode::InvalidTxnState),
        ),
        (
            "completing the other decision is refused",
            prepared(false),
            Apply(complete(true, None)),
            Refuse(ErrorCode::InvalidTxnState),
        ),
        // Timeout
        (
            "a transaction past its timeout is aborted",
            ongoing(),
            Apply(Event::Timeout { now_ms: NOW }),
            Go(
                preparing(&ongoing(), false),
                finish_effects(&prepared(false), false),
            ),
        ),
        (
            "a transaction within its timeout is left alone",
            ongoing(),
            Apply(Event::Timeout { now_ms: 40_500 }),
            Stay,
        ),
        (
            "the timeout leaves a prepared transaction alone",
            prepared(true),
            Apply(Event::Timeout { now_ms: NOW }),
            Stay,
        ),
        // Manual abort
        (
            "a manual abort of an open transaction aborts it",
            ongoing(),
            Apply(Event::Abort { now_ms: NOW }),
            Go(
                preparing(&ongoing(), false),
                finish_effects(&prepared(false), false),
            ),
        ),
        (
            "a manual abort during an abort finishes the abort",
            prepared(false),
            Apply(Event::Abort { now_ms: NOW }),
            Go(prepared(false), finish_effects(&prepared(false), false)),
        ),
        (
            "a manual abort during a commit finishes the commit",
            prepared(true),
            Apply(Event::Abort { now_ms: NOW }),
            Go(prepared(true), finish_effects(&prepared(true), true)),
        ),
        (
            "a manual abort with nothing open is refused",
            meta(TxnState::CompleteCommit, 3),
            Apply(Event::Abort { now_ms: NOW }),
            Refuse(ErrorCode::InvalidTxnState),
        ),
        (
            "a manual abort of an empty id is refused",
            meta(TxnState::Empty, 3),
            Apply(Event::Abort { now_ms: NOW }),
            Refuse(ErrorCode::InvalidTxnState),
        ),
        // Recovery
        (
            "recovery finishes a prepared commit",
            prepared(true),
            Apply(Event::Recover { now_ms: NOW }),
            Go(prepared(true), finish_effects(&prepared(true), true)),
        ),
        (
            "recovery finishes a prepared abort",
            prepared(false),
            Apply(Event::Recover { now_ms: NOW }),
            Go(prepared(false), finish_effects(&prepared(false), false)),
        ),
        (
            "recovery leaves an open transaction to its timeout",
            ongoing(),
            Apply(Event::Recover { now_ms: NOW }),
            Stay,
        ),
        (
            "recovery leaves a completed transaction alone",
            meta(TxnState::CompleteAbort, 3),
            Apply(Event::Recover { now_ms: NOW }),
            Stay,
        ),
    ]
}

#[test]
fn every_transition_in_the_table_yields_its_state_and_effects_or_its_error() {
    for (name, start, step, want) in rows() {
        let got = match step {
            Step::Apply(event) => apply(&start, event),
            Step::Append(pid, epoch, topic, partition) => {
                check_append(&start, pid, epoch, topic, partition)
                    .map(|()| Transition::unchanged(&start))
            }
        };
        match (want, got) {
            (Go(state, effects), Ok(t)) => {
                assert_eq!(t.state, state, "{name}: state");
                assert_eq!(t.effects, effects, "{name}: effects");
            }
            (Stay, Ok(t)) => {
                assert_eq!(t.state, start, "{name}: state");
                assert!(t.effects.is_empty(), "{name}: effects {:?}", t.effects);
            }
            (Refuse(code), Err(e)) => assert_eq!(e.code(), code, "{name}: {e}"),
            (_, Ok(t)) => panic!("{name}: expected a refusal, got {t:?}"),
            (_, Err(e)) => panic!("{name}: unexpected refusal {e}"),
        }
    }
}

#[test]
fn a_transaction_is_hanging_only_when_open_past_its_timeout() {
    let mut meta = TxnMeta {
        transactional_id: "t".into(),
        producer_id: 1,
        epoch: 0,
        state: TxnState::Ongoing,
        partitions: BTreeSet::new(),
        groups: BTreeSet::new(),
        timeout_ms: 100,
        started_ms: 1_000,
        updated_ms: 1_000,
        keep_epoch: false,
    };
    assert!(!meta.is_hanging(1_050));
    assert!(meta.is_hanging(1_101));
    meta.state = TxnState::CompleteCommit;
    assert!(!meta.is_hanging(5_000));
}

#[test]
fn an_emitted_event_can_be_restamped_and_given_a_fresh_producer_id() {
    assert_eq!(
        init(None).at(7).with_producer_id(3),
        Event::Init {
            timeout_ms: 2_000,
            now_ms: 7,
            fresh_producer_id: Some(3),
            keep_epoch: false,
        }
    );
    assert_eq!(
        complete(true, None).with_producer_id(3),
        complete(true, Some(3))
    );
}
