//! The transition table of `apply` and `check_commit`, row by row.

use super::*;

const S: Settings = Settings {
    min_session_timeout_ms: 100,
    max_session_timeout_ms: 10_000,
    initial_rebalance_delay_ms: 0,
    max_members: 3,
};

fn member(id: &str, instance: &str) -> Member {
    Member {
        member_id: id.into(),
        instance_id: instance.into(),
        client_id: "c".into(),
        host: "h".into(),
        session_timeout_ms: 1000,
        rebalance_timeout_ms: 1000,
        protocols: vec![("range".into(), id.as_bytes().to_vec())],
        assignment: format!("a-{id}").into_bytes(),
        joined: false,
        synced: false,
        expires_ms: 1000,
    }
}

fn stable() -> Group {
    let mut g = Group::new("g");
    g.state = GroupState::Stable;
    g.generation = 1;
    g.protocol_type = "consumer".into();
    g.protocol_name = "range".into();
    g.leader = "m1".into();
    g.members = vec![member("m1", ""), member("m2", "i2")];
    g
}

fn preparing() -> Group {
    let mut g = stable();
    g.state = GroupState::PreparingRebalance;
    g.members[0].joined = true;
    g.deadline_ms = 2000;
    g
}

fn completing() -> Group {
    let mut g = stable();
    g.state = GroupState::CompletingRebalance;
    g.generation = 2;
    g.deadline_ms = 2000;
    g
}

fn empty() -> Group {
    let mut g = Group::new("g");
    g.generation = 3;
    g.protocol_type = "consumer".into();
    g
}

fn join(member_id: &str, instance: &str) -> Event {
    join_with(member_id, instance, 1000, "range")
}

fn join_with(member_id: &str, instance: &str, session: u32, protocol: &str) -> Event {
    Event::Join(Join {
        member_id: member_id.into(),
        instance_id: instance.into(),
        client_id: "c".into(),
        host: "h".into(),
        session_timeout_ms: session,
        rebalance_timeout_ms: 1000,
        protocol_type: "consumer".into(),
        protocols: vec![(protocol.into(), member_id.as_bytes().to_vec())],
        fresh_member_id: "new".into(),
    })
}

fn sync(member_id: &str, generation: i32, assignments: &[(&str, &str)]) -> Event {
    Event::Sync {
        member_id: member_id.into(),
        instance_id: String::new(),
        generation,
        protocol_type: String::new(),
        protocol_name: String::new(),
        assignments: assignments
            .iter()
            .map(|(m, a)| (m.to_string(), a.as_bytes().to_vec()))
            .collect(),
    }
}

fn hb(member_id: &str, generation: i32) -> Event {
    Event::Heartbeat {
        member_id: member_id.into(),
        instance_id: String::new(),
        generation,
    }
}

fn leave(list: &[(&str, &str)]) -> Event {
    Event::Leave(
        list.iter()
            .map(|(m, i)| (m.to_string(), i.to_string()))
            .collect(),
    )
}

/// An effect as the table spells it.
fn show(e: &Effect) -> String {
    let err = |e: &GroupError| BrokerErrorName::of(e);
    match e {
        Effect::Persist => "persist".into(),
        Effect::Rebalanced => "rebalanced".into(),
        Effect::ReplyJoin { member_id, reply } => match reply {
            Ok(r) => format!(
                "join {member_id}: gen {} leader {} members {}{}",
                r.generation,
                r.leader,
                r.members.len(),
                if r.skip_assignment { " skip" } else { "" }
            ),
            Err(e) => format!("join {member_id}: {}", err(e)),
        },
        Effect::ReplySync { member_id, reply } => match reply {
            Ok(r) => format!(
                "sync {member_id}: {}",
                String::from_utf8_lossy(&r.assignment)
            ),
            Err(e) => format!("sync {member_id}: {}", err(e)),
        },
    }
}

struct BrokerErrorName;
impl BrokerErrorName {
    fn of(e: &GroupError) -> &'static str {
        match e {
            GroupError::IllegalGeneration { .. } => "illegal_generation",
            GroupError::UnknownMemberId(_) => "unknown_member_id",
            GroupError::RebalanceInProgress => "rebalance_in_progress",
            GroupError::MemberIdRequired(_) => "member_id_required",
            GroupError::InconsistentGroupProtocol(_) => "inconsistent_group_protocol",
            GroupError::GroupIdNotFound(_) => "group_id_not_found",
            GroupError::NonEmptyGroup(_) => "non_empty_group",
            GroupError::FencedInstanceId(_) => "fenced_instance_id",
            GroupError::UnstableOffsetCommit(_) => "unstable_offset_commit",
            GroupError::GroupMaxSizeReached(_) => "group_max_size_reached",
            GroupError::InvalidSessionTimeout { .. } => "invalid_session_timeout",
            GroupError::TooManyGroups(_) => "too_many_groups",
            GroupError::InvalidRequest(_) => "invalid_request",
        }
    }
}

/// One row: the group before, the event and clock, and either the error
/// or (state, generation, leader, effects, heartbeat answer).
struct Row {
    name: &'static str,
    before: fn() -> Group,
    event: Event,
    now: i64,
    expect: Result<(GroupState, i32, &'static str, Vec<&'static str>), &'static str>,
    answer: Option<&'static str>,
}

fn row(
    name: &'static str,
    before: fn() -> Group,
    event: Event,
    now: i64,
    expect: Result<(GroupState, i32, &'static str, Vec<&'static str>), &'static str>,
) -> Row {
    Row {
        name,
        before,
        event,
        now,
        expect,
        answer: None,
    }
}

use GroupState::*;

fn rows() -> Vec<Row> {
    vec![
        row(
            "join: session timeout below the bound",
            empty,
            join_with("", "", 50, "range"),
            0,
            Err("invalid_session_timeout"),
        ),
        row(
            "join: session timeout above the bound",
            empty,
            join_with("", "", 20_000, "range"),
            0,
            Err("invalid_session_timeout"),
        ),
        row(
            "join: no assignor in common",
            stable,
            join_with("", "", 1000, "roundrobin"),
            0,
            Err("inconsistent_group_protocol"),
        ),
        row(
            "join: dynamic, empty id → pending id",
            stable,
            join("", ""),
            0,
            Ok((Stable, 1, "m1", vec!["join new: member_id_required"])),
        ),
        row(
            "join: unknown member id",
            stable,
            join("zz", ""),
            0,
            Err("unknown_member_id"),
        ),
        row(
            "join: first member of an empty group completes at once (no delay)",
            empty,
            join("", "i9"),
            0,
            Ok((
                CompletingRebalance,
                4,
                "new",
                vec![
                    "persist",
                    "rebalanced",
                    "join new: gen 4 leader new members 1",
                ],
            )),
        ),
        row(
            "join: follower rejoins a stable group unchanged → current generation",
            stable,
            join("m2", "i2"),
            0,
            Ok((Stable, 1, "m1", vec!["join m2: gen 1 leader m1 members 0"])),
        ),
        row(
            "join: leader rejoins a stable group → rebalance, waits",
            stable,
            join("m1", ""),
            0,
            Ok((PreparingRebalance, 1, "m1", vec![])),
        ),
        row(
            "join: last member joins a preparing group → next generation",
            preparing,
            join("m2", "i2"),
            10,
            Ok((
                CompletingRebalance,
                2,
                "m1",
                vec![
                    "persist",
                    "rebalanced",
                    "join m1: gen 2 leader m1 members 2",
                    "join m2: gen 2 leader m1 members 0",
                ],
            )),
        ),
        row(
            "join: static, another live member id for the instance",
            stable,
            join("zz", "i2"),
            0,
            Err("fenced_instance_id"),
        ),
        row(
            "join: static rejoin, new process, stable and unchanged → no rebalance",
            stable,
            Event::Join(Join {
                protocols: vec![("range".into(), b"m2".to_vec())],
                ..match join("", "i2") {
                    Event::Join(j) => j,
                    _ => unreachable!(),
                }
            }),
            0,
            Ok((
                Stable,
                1,
                "m1",
                vec![
                    "persist",
                    "join m2: fenced_instance_id",
                    "sync m2: fenced_instance_id",
                    "join new: gen 1 leader m1 members 0",
                ],
            )),
        ),
        row(
            "sync: follower in a completing group waits",
            completing,
            sync("m2", 2, &[]),
            0,
            Ok((CompletingRebalance, 2, "m1", vec![])),
        ),
        row(
            "sync: the leader's assignment makes the group stable",
            completing,
            sync("m1", 2, &[("m1", "x1"), ("m2", "x2")]),
            0,
            Ok((
                Stable,
                2,
                "m1",
                vec!["persist", "sync m1: x1", "sync m2: x2"],
            )),
        ),
        row(
            "sync: stale generation",
            completing,
            sync("m2", 1, &[]),
            0,
            Err("illegal_generation"),
        ),
        row(
            "sync: unknown member",
            completing,
            sync("zz", 2, &[]),
            0,
            Err("unknown_member_id"),
        ),
        row(
            "sync: while preparing",
            preparing,
            sync("m2", 1, &[]),
            0,
            Err("rebalance_in_progress"),
        ),
        row(
            "sync: stable returns the assignment",
            stable,
            sync("m2", 1, &[]),
            0,
            Ok((Stable, 1, "m1", vec!["sync m2: a-m2"])),
        ),
        row(
            "heartbeat: stable",
            stable,
            hb("m2", 1),
            0,
            Ok((Stable, 1, "m1", vec![])),
        ),
        row(
            "heartbeat: stale generation",
            stable,
            hb("m2", 0),
            0,
            Err("illegal_generation"),
        ),
        row(
            "heartbeat: unknown member",
            stable,
            hb("zz", 1),
            0,
            Err("unknown_member_id"),
        ),
        Row {
            answer: Some("rebalance_in_progress"),
            ..row(
                "heartbeat: preparing",
                preparing,
                hb("m2", 1),
                0,
                Ok((PreparingRebalance, 1, "m1", vec![])),
            )
        },
        row(
            "leave: a member → rebalance",
            stable,
            leave(&[("m2", "")]),
            0,
            Ok((
                PreparingRebalance,
                1,
                "m1",
                vec!["join m2: unknown_member_id", "sync m2: unknown_member_id"],
            )),
        ),
        row(
            "leave: the last members → empty, generation + 1",
            stable,
            leave(&[("m1", ""), ("", "i2")]),
            0,
            Ok((
                Empty,
                2,
                "",
                vec![
                    "persist",
                    "join m1: unknown_member_id",
                    "sync m1: unknown_member_id",
                    "join m2: unknown_member_id",
                    "sync m2: unknown_member_id",
                    "rebalanced",
                ],
            )),
        ),
        row(
            "tick: a member past its session → removed, rebalance",
            stable,
            Event::Tick,
            1000,
            Ok((
                Empty,
                2,
                "",
                vec![
                    "persist",
                    "join m1: unknown_member_id",
                    "sync m1: unknown_member_id",
                    "join m2: unknown_member_id",
                    "sync m2: unknown_member_id",
                    "rebalanced",
                ],
            )),
        ),
        row(
            "tick: nothing due",
            stable,
            Event::Tick,
            999,
            Ok((Stable, 1, "m1", vec![])),
        ),
        row(
            "tick: rebalance deadline drops the member that did not rejoin",
            preparing,
            Event::Tick,
            2000,
            Ok((
                CompletingRebalance,
                2,
                "m1",
                vec![
                    "persist",
                    "join m2: unknown_member_id",
                    "sync m2: unknown_member_id",
                    "rebalanced",
                    "join m1: gen 2 leader m1 members 1",
                ],
            )),
        ),
        row(
            "tick: sync deadline drops the leader that did not sync",
            completing,
            Event::Tick,
            2000,
            Ok((
                Empty,
                3,
                "",
                vec![
                    "persist",
                    "join m1: unknown_member_id",
                    "sync m1: unknown_member_id",
                    "join m2: unknown_member_id",
                    "sync m2: unknown_member_id",
                    "rebalanced",
                ],
            )),
        ),
        row(
            "delete: a group with members",
            stable,
            Event::Delete,
            0,
            Err("non_empty_group"),
        ),
        row(
            "delete: an empty group",
            empty,
            Event::Delete,
            0,
            Ok((Dead, 3, "", vec![])),
        ),
    ]
}

#[test]
fn every_row_of_the_transition_table() {
    for r in rows() {
        let before = (r.before)();
        let got = apply(&before, &S, r.event.clone(), r.now);
        match (&r.expect, got) {
            (Err(code), Err(e)) => assert_eq!(BrokerErrorName::of(&e), *code, "{}", r.name),
            (Err(code), Ok(t)) => panic!("{}: expected {code}, got {:?}", r.name, t.effects),
            (Ok(_), Err(e)) => panic!("{}: unexpected error {e}", r.name),
            (Ok((state, generation, leader, effects)), Ok(t)) => {
                assert_eq!(t.group.state, *state, "{}: state", r.name);
                assert_eq!(t.group.generation, *generation, "{}: generation", r.name);
                assert_eq!(t.group.leader, *leader, "{}: leader", r.name);
                let shown: Vec<String> = t.effects.iter().map(show).collect();
                assert_eq!(shown, *effects, "{}: effects", r.name);
                let answer = t.answer.as_ref().err().map(BrokerErrorName::of);
                assert_eq!(answer, r.answer, "{}: answer", r.name);
            }
        }
    }
}

#[test]
fn the_group_size_limit_counts_members_and_pending_ids() {
    let mut g = stable();
    g.pending.insert("p".into(), 5000);
    let e = apply(&g, &S, join("", ""), 0).unwrap_err();
    assert_eq!(e, GroupError::GroupMaxSizeReached(3));
    let e = apply(&g, &S, join("", "i3"), 0).unwrap();
    assert_eq!(
        e.group.members.len(),
        3,
        "a static member is not a pending id"
    );
}

#[test]
fn a_static_leader_rejoining_unchanged_gets_skip_assignment_and_keeps_its_assignment() {
    let mut g = stable();
    g.members[0].instance_id = "i1".into();
    let Event::Join(mut j) = join("", "i1") else {
        unreachable!()
    };
    j.protocols = vec![("range".into(), b"m1".to_vec())];
    let t = apply(&g, &S, Event::Join(j), 0).unwrap();
    assert_eq!(t.group.generation, 1, "no rebalance");
    assert_eq!(t.group.leader, "new");
    assert_eq!(t.group.member("new").unwrap().assignment, b"a-m1");
    assert!(
        t.effects
            .iter()
            .map(show)
            .any(|s| s == "join new: gen 1 leader new members 2 skip")
    );
}

#[test]
fn the_protocol_is_chosen_by_votes_and_ties_go_to_the_first_member() {
    let mut g = stable();
    g.members[0].protocols = vec![("a".into(), vec![]), ("b".into(), vec![])];
    g.members[1].protocols = vec![("b".into(), vec![]), ("a".into(), vec![])];
    assert_eq!(g.choose_protocol().as_deref(), Some("a"));
    let mut third = member("m3", "");
    third.protocols = vec![("b".into(), vec![])];
    g.members.push(third);
    assert_eq!(g.choose_protocol().as_deref(), Some("b"));
}

#[test]
fn commit_fencing_rules() {
    let s = stable();
    let mut c = completing();
    c.members[1].instance_id = "i2".into();
    let e = empty();
    let name = |r: Result<(), GroupError>| r.err().map(|e| BrokerErrorName::of(&e));
    // (what, group, generation, member id, instance id, transactional, error)
    type CommitRow<'a> = (
        &'a str,
        Option<&'a Group>,
        i32,
        &'a str,
        &'a str,
        bool,
        Option<&'a str>,
    );
    let table: Vec<CommitRow<'_>> = vec![
        ("simple, unknown group", None, -1, "", "", false, None),
        ("simple, empty group", Some(&e), 0, "", "", false, None),
        (
            "simple, group with members",
            Some(&s),
            -1,
            "",
            "",
            false,
            Some("unknown_member_id"),
        ),
        (
            "member, current generation",
            Some(&s),
            1,
            "m1",
            "",
            false,
            None,
        ),
        (
            "member, stale generation",
            Some(&s),
            0,
            "m1",
            "",
            false,
            Some("illegal_generation"),
        ),
        (
            "member, future generation",
            Some(&s),
            2,
            "m1",
            "",
            false,
            Some("illegal_generation"),
        ),
        (
            "unknown member",
            Some(&s),
            1,
            "zz",
            "",
            false,
            Some("unknown_member_id"),
        ),
        (
            "instance of another member",
            Some(&s),
            1,
            "m1",
            "i2",
            false,
            Some("fenced_instance_id"),
        ),
        (
            "member of an empty group",
            Some(&e),
            3,
            "m1",
            "",
            false,
            Some("unknown_member_id"),
        ),
        (
            "completing rebalance",
            Some(&c),
            2,
            "m1",
            "",
            false,
            Some("rebalance_in_progress"),
        ),
        (
            "txn: completing rebalance is fine",
            Some(&c),
            2,
            "m1",
            "",
            true,
            None,
        ),
        (
            "txn: stale generation",
            Some(&c),
            1,
            "m1",
            "",
            true,
            Some("illegal_generation"),
        ),
        (
            "txn: no group",
            None,
            4,
            "m1",
            "",
            true,
            Some("illegal_generation"),
        ),
    ];
    for (what, g, generation, m, i, txn, expect) in table {
        assert_eq!(
            name(check_commit(g, generation, m, i, txn)),
            expect,
            "{what}"
        );
    }
}

#[test]
fn the_next_deadline_never_lies_in_the_past_while_waiting_for_joins() {
    // A new group waits out the initial delay only once everyone joined;
    // before that, a timer at the (past) delay would fire again and again.
    let s = Settings {
        initial_rebalance_delay_ms: 100,
        ..S
    };
    let t = apply(&empty(), &s, join("", "i1"), 0).unwrap();
    assert_eq!(t.group.state, PreparingRebalance);
    assert_eq!(t.group.next_deadline(), Some(100), "the delay");
    let mut g = t.group;
    g.members.push(member("m9", ""));
    g.members[1].expires_ms = 5000;
    assert_eq!(
        g.next_deadline(),
        Some(1000),
        "the rebalance deadline, not the delay"
    );
    let t = apply(&g, &s, Event::Tick, 100).unwrap();
    assert_eq!(t.group.state, PreparingRebalance, "m9 has not joined");
    let t = apply(&t.group, &s, Event::Tick, 1000).unwrap();
    assert_eq!(t.group.state, CompletingRebalance, "the deadline drops m9");
    assert_eq!(t.group.members.len(), 1);
}
