//! Model test of the idempotent producer on the broker: random
//! interleavings of new batches, deliveries in any order within the
//! in-flight window (retries, duplicates, lost responses), epoch bumps, and
//! graceful or crash restarts, checked against a model of what the client
//! may observe. Whatever the interleaving, no batch is ever appended twice,
//! batches of one epoch land in sequence order, and a retry of an applied
//! batch gets its original offsets.
//!
//! `FERRY_SEED` replays a run; the seed in use is printed.

use std::collections::VecDeque;

use ferry_broker::{BrokerConfig, BrokerError, BrokerState, SeqError};
use ferry_proto::batch::{BatchBuilder, BatchIter, ProducerStamp};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

const PID: i64 = 42;
const WINDOW: usize = 5;

#[derive(Debug, Clone)]
struct MBatch {
    id: usize,
    epoch: i16,
    first_seq: i32,
    records: usize,
    /// Base offset once appended.
    applied: Option<u64>,
    acked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Appended(u64),
    Duplicate(u64),
    OutOfOrder,
    InvalidEpoch,
    UnknownProducer,
}

#[derive(Debug, Clone)]
struct Model {
    epoch: i16,
    next_seq: i32,
    batches: Vec<MBatch>,
    /// Batch ids in log order.
    log: Vec<usize>,
    log_end: u64,
    /// The epoch the broker holds for the producer, once it appended one.
    broker_epoch: Option<i16>,
    /// The last `WINDOW` appended batch ids of the broker's epoch.
    window: VecDeque<usize>,
    /// The batch the last delivery sent, and what must happen to it.
    last: Option<(usize, Outcome)>,
}

impl Model {
    fn unacked(&self) -> Vec<usize> {
        self.batches
            .iter()
            .filter(|b| !b.acked)
            .map(|b| b.id)
            .collect()
    }

    fn in_flight_current_epoch(&self) -> usize {
        self.batches
            .iter()
            .filter(|b| !b.acked && b.epoch == self.epoch)
            .count()
    }

    /// What delivering batch `id` must do, stated from the client's view.
    fn outcome(&self, id: usize) -> Outcome {
        let b = &self.batches[id];
        let Some(broker_epoch) = self.broker_epoch else {
            return if b.first_seq == 0 {
                Outcome::Appended(self.log_end)
            } else {
                Outcome::UnknownProducer
            };
        };
        if b.epoch < broker_epoch {
            return Outcome::InvalidEpoch;
        }
        if b.epoch > broker_epoch {
            return if b.first_seq == 0 {
                Outcome::Appended(self.log_end)
            } else {
                Outcome::OutOfOrder
            };
        }
        if let Some(base) = b.applied {
            assert!(
                self.window.contains(&id),
                "an unacked applied batch is always in the window"
            );
            return Outcome::Duplicate(base);
        }
        // Appended only if every earlier batch of its epoch already is.
        let predecessors_applied = self
            .batches
            .iter()
            .filter(|o| o.epoch == b.epoch && o.id < b.id)
            .all(|o| o.applied.is_some());
        if predecessors_applied {
            Outcome::Appended(self.log_end)
        } else {
            Outcome::OutOfOrder
        }
    }
}

#[derive(Debug, Clone)]
enum Transition {
    Create { records: usize },
    Deliver { pick: usize, lose_response: bool },
    BumpEpoch,
    Restart { graceful: bool },
}

struct IdempotenceModel;

impl ReferenceStateMachine for IdempotenceModel {
    type State = Model;
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model {
            epoch: 0,
            next_seq: 0,
            batches: Vec::new(),
            log: Vec::new(),
            log_end: 0,
            broker_epoch: None,
            window: VecDeque::new(),
            last: None,
        })
        .boxed()
    }

    fn transitions(_: &Model) -> BoxedStrategy<Transition> {
        prop_oneof![
            4 => (1usize..4).prop_map(|records| Transition::Create { records }),
            6 => (0usize..8, proptest::bool::weighted(0.3))
                .prop_map(|(pick, lose_response)| Transition::Deliver { pick, lose_response }),
            1 => Just(Transition::BumpEpoch),
            1 => any::<bool>().prop_map(|graceful| Transition::Restart { graceful }),
        ]
        .boxed()
    }

    fn preconditions(state: &Model, t: &Transition) -> bool {
        match t {
            Transition::Create { .. } => state.in_flight_current_epoch() < WINDOW,
            Transition::Deliver { pick, .. } => *pick < state.unacked().len(),
            _ => true,
        }
    }

    fn apply(mut state: Model, t: &Transition) -> Model {
        state.last = None;
        match *t {
            Transition::Create { records } => {
                let id = state.batches.len();
                state.batches.push(MBatch {
                    id,
                    epoch: state.epoch,
                    first_seq: state.next_seq,
                    records,
                    applied: None,
                    acked: false,
                });
                state.next_seq += records as i32;
            }
            Transition::Deliver {
                pick,
                lose_response,
            } => {
                let id = state.unacked()[pick];
                let outcome = state.outcome(id);
                state.last = Some((id, outcome));
                match outcome {
                    Outcome::Appended(base) => {
                        let epoch = state.batches[id].epoch;
                        if state.broker_epoch != Some(epoch) {
                            state.window.clear();
                        }
                        state.broker_epoch = Some(epoch);
                        state.batches[id].applied = Some(base);
                        state.log.push(id);
                        state.log_end += state.batches[id].records as u64;
                        state.window.push_back(id);
                        if state.window.len() > WINDOW {
                            state.window.pop_front();
                        }
                        state.batches[id].acked = !lose_response;
                    }
                    Outcome::Duplicate(_) => state.batches[id].acked = !lose_response,
                    // A refused batch is given up by the client.
                    _ => state.batches[id].acked = true,
                }
            }
            Transition::BumpEpoch => {
                state.epoch += 1;
                state.next_seq = 0;
            }
            Transition::Restart { .. } => {}
        }
        state
    }
}

struct Sut {
    dir: tempfile::TempDir,
    state: Option<BrokerState>,
}

fn open(dir: &std::path::Path) -> BrokerState {
    let mut config = BrokerConfig::ephemeral().with_data_dir(dir);
    // Small segments keep each open and close cheap.
    config.log.segment_bytes = 256 * 1024;
    BrokerState::open(config).unwrap()
}

fn batch_bytes(b: &MBatch) -> bytes::Bytes {
    let mut builder = BatchBuilder::new(1_000).producer(ProducerStamp {
        producer_id: PID,
        producer_epoch: b.epoch,
        base_sequence: b.first_seq,
    });
    for k in 0..b.records {
        builder.push(1_000, None, Some(format!("b{}-{k}", b.id).as_bytes()), &[]);
    }
    builder.finish()
}

impl StateMachineTest for IdempotenceModel {
    type SystemUnderTest = Sut;
    type Reference = IdempotenceModel;

    fn init_test(_: &Model) -> Sut {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path());
        state.create_topic("t", 1).unwrap();
        Sut {
            dir,
            state: Some(state),
        }
    }

    fn apply(mut sut: Sut, model: &Model, t: Transition) -> Sut {
        match t {
            Transition::Create { .. } | Transition::BumpEpoch => {}
            Transition::Deliver { .. } => {
                // `model` is the state after the transition: it names the
                // batch delivered and the outcome required.
                let (delivered, want) = model.last.expect("a delivery records its outcome");
                let bytes = batch_bytes(&model.batches[delivered]);
                let got = match sut.state.as_ref().unwrap().append("t", 0, &bytes) {
                    Ok((_, info)) if want == Outcome::Appended(info.base_offset) => want,
                    Ok((_, info)) => Outcome::Duplicate(info.base_offset),
                    Err(BrokerError::Sequence(SeqError::OutOfOrderSequence { .. })) => {
                        Outcome::OutOfOrder
                    }
                    Err(BrokerError::Sequence(SeqError::InvalidProducerEpoch { .. })) => {
                        Outcome::InvalidEpoch
                    }
                    Err(BrokerError::Sequence(SeqError::UnknownProducerId { .. })) => {
                        Outcome::UnknownProducer
                    }
                    Err(e) => panic!("unexpected error {e}"),
                };
                assert_eq!(got, want, "delivery of batch {delivered}");
            }
            Transition::Restart { graceful } => {
                let state = sut.state.take().unwrap();
                if graceful {
                    state.close();
                }
                drop(state);
                sut.state = Some(open(sut.dir.path()));
            }
        }
        sut
    }

    fn check_invariants(sut: &Sut, model: &Model) {
        let p = sut.state.as_ref().unwrap().partition("t", 0).unwrap();
        assert_eq!(p.log.next_offset(), model.log_end);
        let bytes = p.log.read(0, usize::MAX, model.log_end).unwrap();
        let mut values = Vec::new();
        for b in BatchIter::new(&bytes) {
            for r in b.unwrap().records().unwrap().iter() {
                values.push(String::from_utf8(r.unwrap().value.unwrap().to_vec()).unwrap());
            }
        }
        let expected: Vec<String> = model
            .log
            .iter()
            .flat_map(|&id| (0..model.batches[id].records).map(move |k| format!("b{id}-{k}")))
            .collect();
        assert_eq!(
            values, expected,
            "the log holds each applied batch once, in order"
        );
    }
}

fn seed() -> u64 {
    let seed = std::env::var("FERRY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("idempotence model seed: FERRY_SEED={seed}");
    seed
}

static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(*SEED.get_or_init(seed)),
        failure_persistence: None,
        ..Config::default()
    }
}

prop_state_machine! {
    #![proptest_config(config(32))]
    #[test]
    fn no_interleaving_of_retries_reorders_epoch_bumps_or_restarts_duplicates_or_reorders_a_batch(sequential 1..40 => IdempotenceModel);
}

prop_state_machine! {
    #![proptest_config(config(500))]
    #[test]
    #[ignore = "long soak of the idempotence model"]
    fn the_idempotence_model_holds_over_many_long_runs(sequential 1..150 => IdempotenceModel);
}

/// A segment roll writes a producer snapshot, so a crash long after it
/// replays only the tail.
#[test]
fn a_segment_roll_snapshots_the_producer_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = BrokerConfig::ephemeral().with_data_dir(dir.path());
    config.log.segment_bytes = 4096;
    let state = BrokerState::open(config.clone()).unwrap();
    state.create_topic("t", 1).unwrap();
    let snapshot = dir.path().join("topics/t/0.producers");
    let mut seq = 0;
    for id in 0..200 {
        let b = MBatch {
            id,
            epoch: 0,
            first_seq: seq,
            records: 3,
            applied: None,
            acked: false,
        };
        seq += 3;
        state.append("t", 0, &batch_bytes(&b)).unwrap();
    }
    let p = state.partition("t", 0).unwrap();
    assert!(p.log.segments().len() > 2, "the log rolled");
    let (offset, table) =
        ferry_broker::ProducerTable::decode_snapshot(&std::fs::read(&snapshot).unwrap())
            .expect("a snapshot was written at the roll");
    assert!(offset > 0 && offset <= p.log.next_offset());
    assert_eq!(table.get(PID).unwrap().batches.len(), 5, "the whole window");
    drop(p);
    drop(state); // a crash: no clean-shutdown snapshot
    let state = BrokerState::open(config).unwrap();
    let again = MBatch {
        id: 199,
        epoch: 0,
        first_seq: seq - 3,
        records: 3,
        applied: None,
        acked: false,
    };
    let (_, info) = state.append("t", 0, &batch_bytes(&again)).unwrap();
    assert_eq!(
        info.base_offset, 597,
        "the retry after the crash is a duplicate at its original offset"
    );
}
