//! Model test of the group state machine: random joins (changed or not),
//! new processes of static members, syncs, heartbeats, leaves, time passing
//! (session expiry, rebalance deadlines), commits and broker restarts (the
//! group restored from its last persisted record), driven by simulated
//! clients whose leader assigns disjoint partition sets. Invariants:
//!
//! - in one generation no partition is handed to two members (a static
//!   member's new process is the same member);
//! - a commit is accepted only with the group's current generation, and
//!   that generation is never older than one any member was told;
//! - the generation never goes back, across restarts too, and every
//!   generation a member is told was persisted first.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

use super::*;
use crate::group::codec;

const CLIENTS: usize = 4;
const PARTITIONS: u32 = 8;
const SETTINGS: Settings = Settings {
    min_session_timeout_ms: 100,
    max_session_timeout_ms: 10_000,
    initial_rebalance_delay_ms: 50,
    max_members: 10,
};

#[derive(Debug, Clone)]
enum Op {
    Join(usize, bool),
    NewProcess(usize),
    Sync(usize),
    Heartbeat(usize),
    Leave(usize),
    Advance(u16),
    Commit(usize),
    Restart,
}

struct Reference;

impl ReferenceStateMachine for Reference {
    type State = ();
    type Transition = Op;

    fn init_state() -> BoxedStrategy<()> {
        Just(()).boxed()
    }

    fn transitions(_: &()) -> BoxedStrategy<Op> {
        let c = 0..CLIENTS;
        prop_oneof![
            4 => (c.clone(), prop::bool::weighted(0.2)).prop_map(|(c, ch)| Op::Join(c, ch)),
            1 => c.clone().prop_map(Op::NewProcess),
            4 => c.clone().prop_map(Op::Sync),
            3 => c.clone().prop_map(Op::Heartbeat),
            1 => c.clone().prop_map(Op::Leave),
            3 => (1u16..400).prop_map(Op::Advance),
            2 => c.prop_map(Op::Commit),
            1 => Just(Op::Restart),
        ]
        .boxed()
    }

    fn apply(state: (), _: &Op) {
        state
    }
}

#[derive(Debug, Default, Clone)]
struct Client {
    member_id: String,
    generation: i32,
    /// The last join answer, not yet synced.
    joined: Option<JoinReply>,
    waiting: bool,
}

#[derive(Debug)]
struct Sut {
    group: Group,
    now: i64,
    clients: Vec<Client>,
    parked_join: HashMap<String, usize>,
    parked_sync: HashMap<String, usize>,
    /// The last persisted group record.
    persisted: Option<Vec<u8>>,
    persisted_generation: i32,
    /// The newest generation any member was told.
    told: i32,
    /// (generation, partition) → owner (instance id, or member id).
    owners: BTreeMap<(i32, u32), String>,
    /// Member ids generated so far.
    ids: u64,
}

fn instance(c: usize) -> String {
    if c < 2 {
        format!("s{c}")
    } else {
        String::new()
    }
}

fn owner(c: usize, member_id: &str) -> String {
    if c < 2 {
        instance(c)
    } else {
        member_id.to_string()
    }
}

enum Caller {
    None,
    Join(usize),
    Sync(usize),
}

impl Sut {
    fn run(&mut self, event: Event, caller: Caller) -> Result<Transition, GroupError> {
        let t = apply(&self.group, &SETTINGS, event, self.now)?;
        if t.effects.contains(&Effect::Persist) {
            self.persisted = Some(codec::encode(&t.group));
            assert!(
                t.group.generation >= self.persisted_generation,
                "generation went back"
            );
            self.persisted_generation = t.group.generation;
        }
        if let Some(id) = &t.wait_as {
            match caller {
                Caller::None => {}
                Caller::Join(c) => {
                    self.parked_join.insert(id.clone(), c);
                    self.clients[c].waiting = true;
                }
                Caller::Sync(c) => {
                    self.parked_sync.insert(id.clone(), c);
                    self.clients[c].waiting = true;
                }
            }
        }
        self.group = t.group.clone();
        for e in &t.effects {
            match e {
                Effect::ReplyJoin { member_id, reply } => {
                    if let Some(c) = self.parked_join.remove(member_id) {
                        self.clients[c].waiting = false;
                        self.deliver_join(c, reply.clone());
                    }
                }
                Effect::ReplySync { member_id, reply } => {
                    if let Some(c) = self.parked_sync.remove(member_id) {
                        self.clients[c].waiting = false;
                        self.deliver_sync(c, reply.clone());
                    }
                }
                Effect::Persist | Effect::Rebalanced => {}
            }
        }
        Ok(t)
    }

    fn deliver_join(&mut self, c: usize, r: Result<JoinReply, GroupError>) {
        let client = &mut self.clients[c];
        match r {
            Ok(r) => {
                assert!(
                    r.generation <= self.persisted_generation,
                    "generation {} told before it was persisted",
                    r.generation
                );
                self.told = self.told.max(r.generation);
                client.member_id = r.member_id.clone();
                client.generation = r.generation;
                client.joined = Some(r);
            }
            Err(GroupError::MemberIdRequired(id)) => client.member_id = id,
            Err(GroupError::UnknownMemberId(_) | GroupError::FencedInstanceId(_)) => {
                *client = Client::default();
            }
            Err(_) => {}
        }
    }

    fn deliver_sync(&mut self, c: usize, r: Result<SyncReply, GroupError>) {
        match r {
            Ok(r) => {
                let generation = self.clients[c].generation;
                let me = owner(c, &self.clients[c].member_id);
                for chunk in r.assignment.chunks(4) {
                    let p = u32::from_le_bytes(chunk.try_into().unwrap());
                    let prev = self.owners.insert((generation, p), me.clone());
                    if let Some(prev) = prev {
                        assert_eq!(
                            prev, me,
                            "partition {p} of generation {generation} has two owners"
                        );
                    }
                }
            }
            Err(GroupError::UnknownMemberId(_) | GroupError::FencedInstanceId(_)) => {
                self.clients[c] = Client::default();
            }
            Err(_) => {}
        }
    }

    fn join_event(&mut self, c: usize, changed: bool) -> Event {
        self.ids += 1;
        Event::Join(Join {
            member_id: self.clients[c].member_id.clone(),
            instance_id: instance(c),
            client_id: format!("c{c}"),
            host: "h".into(),
            session_timeout_ms: 300,
            rebalance_timeout_ms: 1000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), vec![c as u8, u8::from(changed)])],
            fresh_member_id: format!("m{c}-{}", self.ids),
        })
    }

    /// The client's process is gone: its parked requests go nowhere.
    fn drop_parked(&mut self, c: usize) {
        self.parked_join.retain(|_, v| *v != c);
        self.parked_sync.retain(|_, v| *v != c);
        self.clients[c] = Client::default();
    }
}

impl StateMachineTest for Reference {
    type SystemUnderTest = Sut;
    type Reference = Reference;

    fn init_test(_: &()) -> Sut {
        Sut {
            group: Group::new("g"),
            now: 0,
            clients: vec![Client::default(); CLIENTS],
            parked_join: HashMap::new(),
            parked_sync: HashMap::new(),
            persisted: None,
            persisted_generation: 0,
            told: 0,
            owners: BTreeMap::new(),
            ids: 0,
        }
    }

    fn apply(mut sut: Sut, _: &(), op: Op) -> Sut {
        match op {
            Op::Join(c, changed) if !sut.clients[c].waiting => {
                let e = sut.join_event(c, changed);
                if let Err(e) = sut.run(e, Caller::Join(c)) {
                    sut.deliver_join(c, Err(e));
                }
            }
            Op::NewProcess(c) => {
                sut.drop_parked(c);
                let e = sut.join_event(c, false);
                if let Err(e) = sut.run(e, Caller::Join(c)) {
                    sut.deliver_join(c, Err(e));
                }
            }
            Op::Sync(c) if !sut.clients[c].waiting => {
                if let Some(j) = sut.clients[c].joined.take() {
                    let assignments = if j.members.is_empty() || j.skip_assignment {
                        Vec::new()
                    } else {
                        // The leader's assignor: partitions round-robin.
                        let mut per: Vec<Vec<u8>> = vec![Vec::new(); j.members.len()];
                        for p in 0..PARTITIONS {
                            per[p as usize % j.members.len()].extend_from_slice(&p.to_le_bytes());
                        }
                        j.members.iter().map(|m| m.0.clone()).zip(per).collect()
                    };
                    let e = Event::Sync {
                        member_id: j.member_id.clone(),
                        instance_id: instance(c),
                        generation: j.generation,
                        protocol_type: "consumer".into(),
                        protocol_name: j.protocol_name.clone(),
                        assignments,
                    };
                    if let Err(e) = sut.run(e, Caller::Sync(c)) {
                        sut.deliver_sync(c, Err(e));
                    }
                }
            }
            Op::Heartbeat(c) if !sut.clients[c].member_id.is_empty() => {
                let e = Event::Heartbeat {
                    member_id: sut.clients[c].member_id.clone(),
                    instance_id: instance(c),
                    generation: sut.clients[c].generation,
                };
                if let Err(GroupError::UnknownMemberId(_) | GroupError::FencedInstanceId(_)) =
                    sut.run(e, Caller::None)
                    && !sut.clients[c].waiting
                {
                    sut.clients[c] = Client::default();
                }
            }
            Op::Leave(c) if !sut.clients[c].member_id.is_empty() => {
                let who = vec![(sut.clients[c].member_id.clone(), instance(c))];
                let _ = sut.run(Event::Leave(who), Caller::None);
                sut.drop_parked(c);
            }
            Op::Advance(ms) => {
                sut.now += i64::from(ms);
                sut.run(Event::Tick, Caller::None)
                    .expect("a tick never fails");
            }
            Op::Commit(c) if !sut.clients[c].member_id.is_empty() => {
                let client = &sut.clients[c];
                let ok = check_commit(
                    Some(&sut.group),
                    client.generation,
                    &client.member_id,
                    &instance(c),
                    false,
                )
                .is_ok();
                if ok {
                    assert_eq!(
                        client.generation, sut.group.generation,
                        "a stale generation committed"
                    );
                    assert!(sut.group.member(&client.member_id).is_some());
                }
            }
            Op::Restart => {
                let mut g = Group::new("g");
                if let Some(p) = &sut.persisted {
                    let stored = codec::decode(p).expect("the persisted record decodes");
                    g.generation = stored.generation;
                    g.protocol_type = stored.protocol_type;
                }
                sut.group = g;
                sut.parked_join.clear();
                sut.parked_sync.clear();
                for c in &mut sut.clients {
                    c.waiting = false;
                }
            }
            _ => {}
        }
        sut
    }

    fn check_invariants(sut: &Sut, _: &()) {
        let g = &sut.group;
        assert!(
            g.generation >= sut.told,
            "the group's generation is older than one told"
        );
        assert!(g.members.len() <= SETTINGS.max_members);
        let mut ids: Vec<&str> = g.members.iter().map(|m| m.member_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), g.members.len(), "member ids are unique");
        let mut inst: Vec<&str> = g
            .members
            .iter()
            .map(|m| m.instance_id.as_str())
            .filter(|i| !i.is_empty())
            .collect();
        let n = inst.len();
        inst.sort_unstable();
        inst.dedup();
        assert_eq!(inst.len(), n, "instance ids are unique");
        if matches!(
            g.state,
            GroupState::CompletingRebalance | GroupState::Stable
        ) {
            assert!(g.member(&g.leader).is_some(), "the leader is a member");
        }
        if g.state == GroupState::Empty {
            assert!(g.members.is_empty());
        }
    }
}

prop_state_machine! {
    #![proptest_config(Config { cases: 256, failure_persistence: None, ..Config::default() })]
    #[test]
    fn no_interleaving_hands_a_partition_to_two_members_or_lets_a_stale_generation_commit(
        sequential 1..80 => Reference
    );
}
