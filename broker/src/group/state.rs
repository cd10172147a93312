//! The group state machine: one pure function, [`apply`], decides every
//! transition of a consumer group.
//!
//! [`apply`] takes the group, the [`Settings`], an [`Event`] and the
//! coordinator's clock, and returns either a [`GroupError`] (the request
//! is refused, nothing changes) or a [`Transition`]: the new group and the
//! ordered [`Effect`]s that carry it out (persist, then answer parked
//! Join/Sync requests). It does no I/O and reads no clock; the coordinator
//! (`group::coordinator`) parks the caller, persists, and sends the
//! answers.
//!
//! | state | event | result |
//! |---|---|---|
//! | any | `Join` with a session timeout outside the bounds | `InvalidSessionTimeout` |
//! | any | `Join` with no protocol, or another protocol type than the members' | `InconsistentGroupProtocol` |
//! | any | `Join` whose assignors share none with the other members' common ones | `InconsistentGroupProtocol` |
//! | any | `Join`, dynamic, empty member id | a pending id (until its session timeout), answered `MemberIdRequired` with it; `GroupMaxSizeReached` if members + pending ids are at the limit |
//! | any | `Join`, dynamic, a pending id | becomes a member (`GroupMaxSizeReached` at the limit); `Empty` → `PreparingRebalance` after the initial delay, `Stable`/`CompletingRebalance` → `PreparingRebalance` |
//! | any | `Join` with an unknown non-empty member id | `UnknownMemberId` |
//! | `PreparingRebalance` | `Join` of a member | marked joined; the answer waits for the rebalance to complete |
//! | `Stable` | `Join` of a follower with unchanged protocols | answered at once with the current generation |
//! | `CompletingRebalance` | `Join` of a member with unchanged protocols | answered at once with the current generation |
//! | `Stable`, `CompletingRebalance` | any other `Join` of a member | `PreparingRebalance`, waits |
//! | any | `Join`, static, unknown instance id, empty member id | a new member (no `MemberIdRequired`), rebalance |
//! | any | `Join`, static, known instance id, another non-empty member id | `FencedInstanceId` |
//! | any | `Join`, static, known instance id, empty member id | the old member id is fenced (`FencedInstanceId` to its parked Join/Sync); the member keeps its assignment under a new id; in `Stable` with unchanged protocols no rebalance: answered at once, the leader with `skip_assignment` (KIP-814); else rebalance |
//! | `PreparingRebalance` | every member joined (and the initial delay passed), or the rebalance deadline passed | members that did not join are dropped; generation + 1; protocol chosen; leader kept or the first member; `CompletingRebalance` (`Empty` if none is left); persist; every joined member answered |
//! | `CompletingRebalance` | `Sync` of a follower | parked until the leader's |
//! | `CompletingRebalance` | `Sync` of the leader | assignments stored; `Stable`; persist; every member answered |
//! | `CompletingRebalance` | the deadline passed | members that did not sync are dropped; rebalance |
//! | `Stable` | `Sync` | the member's assignment |
//! | `PreparingRebalance` | `Sync` | `RebalanceInProgress` |
//! | any | `Sync`/`Heartbeat` of an unknown member / another instance id / another generation | `UnknownMemberId` / `FencedInstanceId` / `IllegalGeneration` |
//! | `PreparingRebalance` | `Heartbeat` | session timer reset, `RebalanceInProgress` |
//! | `CompletingRebalance`, `Stable` | `Heartbeat` | session timer reset |
//! | any | `Leave` | each member removed (a static one by instance id); rebalance, or `Empty` with generation + 1 when the last leaves |
//! | any | `Tick` | pending ids and members past their session timeout removed (not a member parked in Join or Sync), then the deadlines above |
//! | `Empty` | `Delete` | `Dead` |
//! | otherwise | `Delete` | `NonEmptyGroup` |
//!
//! The protocol of a generation is chosen by votes (as Kafka does): every
//! member votes for the first of its assignors that every member
//! supports; most votes wins, and a tie goes to the one the leader (the
//! first member) prefers.

use std::collections::BTreeMap;

/// Most groups one broker coordinates (the `max_groups` limit's ceiling).
pub const MAX_GROUPS: usize = 10_000;
/// Most members of one group (the `max_members_per_group` limit's
/// ceiling). With [`MAX_MEMBER_METADATA_BYTES`] and
/// [`MAX_ASSIGNMENT_BYTES`] it bounds the persisted group record.
pub const MAX_GROUP_MEMBERS: usize = 100;
/// Most assignors one member may list.
pub const MAX_PROTOCOLS_PER_MEMBER: usize = 32;
/// Most bytes of metadata one member may send, over all its assignors.
pub const MAX_MEMBER_METADATA_BYTES: usize = 32 * 1024;
/// Largest assignment of one member.
pub const MAX_ASSIGNMENT_BYTES: usize = 32 * 1024;
/// Longest member id, instance id, client id, host, protocol type or
/// assignor name.
pub const MAX_MEMBER_STRING_BYTES: usize = 255;
/// Longest rebalance timeout a member may ask for.
pub const MAX_REBALANCE_TIMEOUT_MS: u32 = 30 * 60_000;

/// A group's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members.
    Empty,
    /// Waiting for the members to (re)join.
    PreparingRebalance,
    /// A generation is formed; waiting for the leader's assignment.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
    /// Deleted.
    Dead,
}

impl GroupState {
    /// The state's name, as ListGroups and DescribeGroup show it.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "empty",
            GroupState::PreparingRebalance => "preparing_rebalance",
            GroupState::CompletingRebalance => "completing_rebalance",
            GroupState::Stable => "stable",
            GroupState::Dead => "dead",
        }
    }
}

/// Why a group request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The request's generation is not the group's.
    #[error("generation {got} is not the group's current generation {current}")]
    IllegalGeneration {
        /// The request's.
        got: i32,
        /// The group's.
        current: i32,
    },
    /// The member id is not a member of the group.
    #[error("unknown member id {0:?}")]
    UnknownMemberId(String),
    /// The group is rebalancing.
    #[error("the group is rebalancing; rejoin")]
    RebalanceInProgress,
    /// A dynamic member's first join: rejoin with this id.
    #[error("rejoin with member id {0:?}")]
    MemberIdRequired(String),
    /// Protocol type or assignors do not match the group's.
    #[error("inconsistent group protocol: {0}")]
    InconsistentGroupProtocol(String),
    /// The group does not exist.
    #[error("group {0:?} not found")]
    GroupIdNotFound(String),
    /// The group has members.
    #[error("group {0:?} has members")]
    NonEmptyGroup(String),
    /// Another member took over the instance id.
    #[error("instance id {0:?} belongs to a newer member")]
    FencedInstanceId(String),
    /// A transaction holds pending offsets.
    #[error("a transaction holds uncommitted offsets for {0}")]
    UnstableOffsetCommit(String),
    /// The group is full.
    #[error("the group already has its maximum of {0} members")]
    GroupMaxSizeReached(usize),
    /// Session timeout outside the broker's bounds.
    #[error("session timeout {got} ms is outside {min}..={max} ms")]
    InvalidSessionTimeout {
        /// Requested.
        got: u32,
        /// Lower bound.
        min: u32,
        /// Upper bound.
        max: u32,
    },
    /// The broker coordinates as many groups as it may.
    #[error("the broker already coordinates its maximum of {0} groups")]
    TooManyGroups(usize),
    /// A field breaks a limit or is malformed.
    #[error("invalid group request: {0}")]
    InvalidRequest(String),
}

/// Coordinator settings the transition function needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Shortest session timeout accepted.
    pub min_session_timeout_ms: u32,
    /// Longest session timeout accepted.
    pub max_session_timeout_ms: u32,
    /// How long a group's first rebalance waits for more members.
    pub initial_rebalance_delay_ms: u32,
    /// Most members (and pending member ids) per group.
    pub max_members: usize,
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its id.
    pub member_id: String,
    /// Its static instance id; empty for a dynamic member.
    pub instance_id: String,
    /// The client's id.
    pub client_id: String,
    /// The client's address.
    pub host: String,
    /// Session timeout.
    pub session_timeout_ms: u32,
    /// Rebalance timeout.
    pub rebalance_timeout_ms: u32,
    /// Assignors, most preferred first, with the member's metadata.
    pub protocols: Vec<(String, Vec<u8>)>,
    /// Its assignment in the current generation.
    pub assignment: Vec<u8>,
    /// `PreparingRebalance`: it joined for the next generation (its Join
    /// is parked).
    pub joined: bool,
    /// `CompletingRebalance`: it sent SyncGroup (its Sync is parked).
    pub synced: bool,
    /// When its session expires, on the coordinator's clock.
    pub expires_ms: i64,
}

impl Member {
    /// Its metadata for `protocol` (empty if it has none).
    pub fn metadata(&self, protocol: &str) -> &[u8] {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map_or(&[][..], |(_, m)| m.as_slice())
    }

    fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|(n, _)| n == protocol)
    }
}

/// A consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: GroupState,
    /// The current generation (0 before the first rebalance).
    pub generation: i32,
    /// The members' protocol type ("consumer").
    pub protocol_type: String,
    /// The current generation's assignor.
    pub protocol_name: String,
    /// The current generation's leader.
    pub leader: String,
    /// Members in join order.
    pub members: Vec<Member>,
    /// Member ids handed out with `MemberIdRequired`, until they expire.
    pub pending: BTreeMap<String, i64>,
    /// `PreparingRebalance`: not complete before this (initial delay).
    pub not_before_ms: i64,
    /// `PreparingRebalance` / `CompletingRebalance`: stop waiting then.
    pub deadline_ms: i64,
}

impl Group {
    /// A group seen for the first time.
    pub fn new(name: &str) -> Group {
        Group {
            name: name.to_string(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol_name: String::new(),
            leader: String::new(),
            members: Vec::new(),
            pending: BTreeMap::new(),
            not_before_ms: 0,
            deadline_ms: 0,
        }
    }

    /// The member with this id.
    pub fn member(&self, member_id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.member_id == member_id)
    }

    fn index(&self, member_id: &str) -> Option<usize> {
        self.members.iter().position(|m| m.member_id == member_id)
    }

    /// The next time a `Event::Tick` may change the group.
    pub fn next_deadline(&self) -> Option<i64> {
        let mut next = self.pending.values().copied().min();
        let mut at = |t: i64| next = Some(next.map_or(t, |n| n.min(t)));
        for m in &self.members {
            if !self.is_parked(m) {
                at(m.expires_ms);
            }
        }
        match self.state {
            GroupState::PreparingRebalance => {
                at(self.deadline_ms);
                // The initial delay matters only once everyone has joined
                // (before, a join completes the rebalance, not the clock).
                if self.members.iter().all(|m| m.joined) {
                    at(self.not_before_ms);
                }
            }
            GroupState::CompletingRebalance => at(self.deadline_ms),
            _ => {}
        }
        next
    }

    /// Whether the member waits in Join or Sync (its session timer does
    /// not run then: the rebalance deadline bounds the wait).
    fn is_parked(&self, m: &Member) -> bool {
        match self.state {
            GroupState::PreparingRebalance => m.joined,
            GroupState::CompletingRebalance => m.synced,
            _ => false,
        }
    }

    fn max_rebalance_timeout(&self) -> i64 {
        self.members
            .iter()
            .map(|m| i64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    /// The assignors every member but `except` supports (`None`: no
    /// other member, anything goes).
    fn common_protocols(&self, except: Option<&str>) -> Option<Vec<String>> {
        let mut others = self
            .members
            .iter()
            .filter(|m| Some(m.member_id.as_str()) != except);
        let first = others.next()?;
        let mut common: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in others {
            common.retain(|p| m.supports(p));
        }
        Some(common)
    }

    /// The protocol chosen by votes (module docs).
    fn choose_protocol(&self) -> Option<String> {
        let common = self.common_protocols(None)?;
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in &self.members {
            if let Some((n, _)) = m.protocols.iter().find(|(n, _)| common.contains(n)) {
                *votes.entry(n.as_str()).or_default() += 1;
            }
        }
        let best = votes.values().copied().max()?;
        self.members[0]
            .protocols
            .iter()
            .map(|(n, _)| n.as_str())
            .find(|n| votes.get(n) == Some(&best))
            .map(str::to_string)
    }
}

/// A JoinGroup request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// Member id; empty on a first join.
    pub member_id: String,
    /// Instance id; empty for a dynamic member.
    pub instance_id: String,
    /// Client id.
    pub client_id: String,
    /// Client address.
    pub host: String,
    /// Session timeout.
    pub session_timeout_ms: u32,
    /// Rebalance timeout (0: the session timeout).
    pub rebalance_timeout_ms: u32,
    /// Protocol type.
    pub protocol_type: String,
    /// Assignors with metadata, most preferred first.
    pub protocols: Vec<(String, Vec<u8>)>,
    /// A fresh member id the coordinator generated, used if the join
    /// needs one.
    pub fresh_member_id: String,
}

/// Something that happens to a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// JoinGroup.
    Join(Join),
    /// SyncGroup.
    Sync {
        /// Member id.
        member_id: String,
        /// Instance id, checked if not empty.
        instance_id: String,
        /// The member's generation.
        generation: i32,
        /// Checked if not empty.
        protocol_type: String,
        /// Checked if not empty.
        protocol_name: String,
        /// The leader's assignment per member id.
        assignments: Vec<(String, Vec<u8>)>,
    },
    /// Heartbeat.
    Heartbeat {
        /// Member id.
        member_id: String,
        /// Instance id, checked if not empty.
        instance_id: String,
        /// The member's generation.
        generation: i32,
    },
    /// LeaveGroup: (member id, instance id) pairs.
    Leave(Vec<(String, String)>),
    /// The timer: apply expiries and deadlines due.
    Tick,
    /// DeleteGroup.
    Delete,
}

/// The answer to a JoinGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinReply {
    /// The generation.
    pub generation: i32,
    /// Its assignor.
    pub protocol_name: String,
    /// Its leader.
    pub leader: String,
    /// The member's id.
    pub member_id: String,
    /// Leader only: (member id, instance id, metadata) of every member.
    pub members: Vec<(String, String, Vec<u8>)>,
    /// KIP-814: keep the current assignment.
    pub skip_assignment: bool,
}

/// The answer to a SyncGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReply {
    /// The generation's assignor.
    pub protocol_name: String,
    /// The member's assignment.
    pub assignment: Vec<u8>,
}

/// One step of carrying out a transition, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Write the transition's group to the offsets log, durably, before
    /// any answer that follows.
    Persist,
    /// Answer the parked JoinGroup of this member (nothing if none).
    ReplyJoin {
        /// Whose.
        member_id: String,
        /// The answer.
        reply: Result<JoinReply, GroupError>,
    },
    /// Answer the parked SyncGroup of this member (nothing if none).
    ReplySync {
        /// Whose.
        member_id: String,
        /// The answer.
        reply: Result<SyncReply, GroupError>,
    },
    /// A rebalance completed (a new generation).
    Rebalanced,
}

/// The outcome of [`apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The group after the transition.
    pub group: Group,
    /// What to do, in order.
    pub effects: Vec<Effect>,
    /// Join/Sync: the member id whose answer the caller waits for (parked
    /// before the effects run).
    pub wait_as: Option<String>,
    /// Heartbeat: its answer (the state may change even when it is an
    /// error: the session timer is reset).
    pub answer: Result<(), GroupError>,
    /// Leave: (member id, instance id, result) per member named.
    pub left: Vec<(String, String, Result<(), GroupError>)>,
}

impl Transition {
    fn new(group: Group) -> Transition {
        Transition {
            group,
            effects: Vec::new(),
            wait_as: None,
            answer: Ok(()),
            left: Vec::new(),
        }
    }

    fn persist(&mut self) {
        if !self.effects.contains(&Effect::Persist) {
            self.effects.insert(0, Effect::Persist);
        }
    }

    fn reply_join(&mut self, member_id: &str, reply: Result<JoinReply, GroupError>) {
        self.effects.push(Effect::ReplyJoin {
            member_id: member_id.to_string(),
            reply,
        });
    }

    fn reply_sync(&mut self, member_id: &str, reply: Result<SyncReply, GroupError>) {
        self.effects.push(Effect::ReplySync {
            member_id: member_id.to_string(),
            reply,
        });
    }
}

/// Decides the transition of `group` on `event` at `now_ms`.
pub fn apply(
    group: &Group,
    settings: &Settings,
    event: Event,
    now_ms: i64,
) -> Result<Transition, GroupError> {
    if group.state == GroupState::Dead && event != Event::Tick {
        return Err(GroupError::GroupIdNotFound(group.name.clone()));
    }
    let mut t = Transition::new(group.clone());
    match event {
        Event::Join(j) => join(&mut t, settings, j, now_ms)?,
        Event::Sync {
            member_id,
            instance_id,
            generation,
            protocol_type,
            protocol_name,
            assignments,
        } => {
            let i = check_member(&t.group, &member_id, &instance_id, generation)?;
            let g = &t.group;
            if (!protocol_type.is_empty() && protocol_type != g.protocol_type)
                || (!protocol_name.is_empty() && protocol_name != g.protocol_name)
            {
                return Err(GroupError::InconsistentGroupProtocol(format!(
                    "sync with {protocol_type:?}/{protocol_name:?}, the generation has {:?}/{:?}",
                    g.protocol_type, g.protocol_name
                )));
            }
            sync(&mut t, i, assignments, now_ms)?;
        }
        Event::Heartbeat {
            member_id,
            instance_id,
            generation,
        } => {
            let i = check_member(&t.group, &member_id, &instance_id, generation)?;
            let g = &mut t.group;
            g.members[i].expires_ms = now_ms + i64::from(g.members[i].session_timeout_ms);
            if g.state == GroupState::PreparingRebalance {
                t.answer = Err(GroupError::RebalanceInProgress);
            }
        }
        Event::Leave(list) => leave(&mut t, list, now_ms)?,
        Event::Tick => tick(&mut t, now_ms),
        Event::Delete => {
            if !t.group.members.is_empty() {
                return Err(GroupError::NonEmptyGroup(t.group.name.clone()));
            }
            t.group.state = GroupState::Dead;
            t.group.pending.clear();
        }
    }
    Ok(t)
}

/// The member's index, after the id, instance id and generation checks of
/// Sync and Heartbeat.
fn check_member(
    g: &Group,
    member_id: &str,
    instance_id: &str,
    generation: i32,
) -> Result<usize, GroupError> {
    // An instance id that now belongs to another member id: a newer
    // process took it over (KIP-345).
    if !instance_id.is_empty()
        && g.members
            .iter()
            .any(|m| m.instance_id == instance_id && m.member_id != member_id)
    {
        return Err(GroupError::FencedInstanceId(instance_id.to_string()));
    }
    let i = g
        .index(member_id)
        .ok_or_else(|| GroupError::UnknownMemberId(member_id.to_string()))?;
    if !instance_id.is_empty() && g.members[i].instance_id != instance_id {
        return Err(GroupError::FencedInstanceId(instance_id.to_string()));
    }
    if generation != g.generation {
        return Err(GroupError::IllegalGeneration {
            got: generation,
            current: g.generation,
        });
    }
    Ok(i)
}

fn check_join_fields(settings: &Settings, j: &Join) -> Result<(), GroupError> {
    if j.session_timeout_ms < settings.min_session_timeout_ms
        || j.session_timeout_ms > settings.max_session_timeout_ms
    {
        return Err(GroupError::InvalidSessionTimeout {
            got: j.session_timeout_ms,
            min: settings.min_session_timeout_ms,
            max: settings.max_session_timeout_ms,
        });
    }
    if j.rebalance_timeout_ms > MAX_REBALANCE_TIMEOUT_MS {
        return Err(GroupError::InvalidRequest(format!(
            "rebalance timeout {} ms exceeds {MAX_REBALANCE_TIMEOUT_MS} ms",
            j.rebalance_timeout_ms
        )));
    }
    if j.protocol_type.is_empty() || j.protocols.is_empty() {
        return Err(GroupError::InconsistentGroupProtocol(
            "a join needs a protocol type and at least one assignor".into(),
        ));
    }
    if j.protocols.len() > MAX_PROTOCOLS_PER_MEMBER {
        return Err(GroupError::InvalidRequest(format!(
            "{} assignors; the limit is {MAX_PROTOCOLS_PER_MEMBER}",
            j.protocols.len()
        )));
    }
    let metadata: usize = j.protocols.iter().map(|(_, m)| m.len()).sum();
    if metadata > MAX_MEMBER_METADATA_BYTES {
        return Err(GroupError::InvalidRequest(format!(
            "{metadata} bytes of member metadata; the limit is {MAX_MEMBER_METADATA_BYTES}"
        )));
    }
    let strings = [
        &j.member_id,
        &j.instance_id,
        &j.client_id,
        &j.host,
        &j.protocol_type,
    ];
    if strings
        .iter()
        .map(|s| s.len())
        .chain(j.protocols.iter().map(|(n, _)| n.len()))
        .any(|l| l > MAX_MEMBER_STRING_BYTES)
    {
        return Err(GroupError::InvalidRequest(format!(
            "an id, name or host is longer than {MAX_MEMBER_STRING_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The join's assignors must share one with the other members' common
/// ones, and its protocol type must be theirs.
fn check_consistent(g: &Group, j: &Join, except: Option<&str>) -> Result<(), GroupError> {
    let others = g
        .members
        .iter()
        .any(|m| Some(m.member_id.as_str()) != except);
    if others && j.protocol_type != g.protocol_type {
        return Err(GroupError::InconsistentGroupProtocol(format!(
            "protocol type {:?}; the group's is {:?}",
            j.protocol_type, g.protocol_type
        )));
    }
    if let Some(common) = g.common_protocols(except)
        && !j.protocols.iter().any(|(n, _)| common.contains(n))
    {
        return Err(GroupError::InconsistentGroupProtocol(format!(
            "none of the assignors is supported by every member (they share {common:?})"
        )));
    }
    Ok(())
}

fn join(t: &mut Transition, s: &Settings, mut j: Join, now: i64) -> Result<(), GroupError> {
    check_join_fields(s, &j)?;
    if j.rebalance_timeout_ms == 0 {
        j.rebalance_timeout_ms = j.session_timeout_ms;
    }
    let g = &mut t.group;
    if !j.instance_id.is_empty() {
        let Some(i) = g
            .members
            .iter()
            .position(|m| m.instance_id == j.instance_id)
        else {
            if !j.member_id.is_empty() {
                return Err(GroupError::UnknownMemberId(j.member_id));
            }
            let id = j.fresh_member_id.clone();
            return add_member(t, s, j, id, now);
        };
        let old = g.members[i].member_id.clone();
        if j.member_id == old {
            return rejoin(t, i, j, now);
        }
        if !j.member_id.is_empty() {
            return Err(GroupError::FencedInstanceId(j.instance_id));
        }
        // A new process with the instance id: it takes the member over.
        check_consistent(g, &j, Some(&old))?;
        let new_id = j.fresh_member_id.clone();
        let m = &mut g.members[i];
        let unchanged = m.protocols == j.protocols;
        m.member_id = new_id.clone();
        m.client_id = j.client_id;
        m.host = j.host;
        m.session_timeout_ms = j.session_timeout_ms;
        m.rebalance_timeout_ms = j.rebalance_timeout_ms;
        m.protocols = j.protocols;
        m.expires_ms = now + i64::from(j.session_timeout_ms);
        if g.leader == old {
            g.leader = new_id.clone();
        }
        let fenced = GroupError::FencedInstanceId(j.instance_id.clone());
        t.reply_join(&old, Err(fenced.clone()));
        t.reply_sync(&old, Err(fenced));
        t.wait_as = Some(new_id.clone());
        let g = &mut t.group;
        match g.state {
            GroupState::Stable if unchanged => {
                let leader = g.leader == new_id;
                let reply = join_reply(g, &g.members[i], leader);
                t.persist();
                t.reply_join(&new_id, Ok(reply));
            }
            GroupState::PreparingRebalance => {
                g.members[i].joined = true;
                maybe_complete(t, now);
            }
            _ => {
                start_rebalance(t, now, now);
                t.group.members[i].joined = true;
                maybe_complete(t, now);
            }
        }
        return Ok(());
    }
    if j.member_id.is_empty() {
        if g.members.len() + g.pending.len() >= s.max_members {
            return Err(GroupError::GroupMaxSizeReached(s.max_members));
        }
        check_consistent(g, &j, None)?;
        let id = j.fresh_member_id;
        g.pending
            .insert(id.clone(), now + i64::from(j.session_timeout_ms));
        t.wait_as = Some(id.clone());
        t.reply_join(&id, Err(GroupError::MemberIdRequired(id.clone())));
        return Ok(());
    }
    if g.pending.contains_key(&j.member_id) {
        let id = j.member_id.clone();
        add_member(t, s, j, id.clone(), now)?;
        t.group.pending.remove(&id);
        return Ok(());
    }
    match g.index(&j.member_id) {
        Some(i) => rejoin(t, i, j, now),
        None => Err(GroupError::UnknownMemberId(j.member_id)),
    }
}

fn add_member(
    t: &mut Transition,
    s: &Settings,
    j: Join,
    id: String,
    now: i64,
) -> Result<(), GroupError> {
    let g = &mut t.group;
    if g.members.len() >= s.max_members {
        return Err(GroupError::GroupMaxSizeReached(s.max_members));
    }
    check_consistent(g, &j, None)?;
    if g.members.is_empty() {
        g.protocol_type = j.protocol_type.clone();
    }
    g.members.push(Member {
        member_id: id.clone(),
        instance_id: j.instance_id,
        client_id: j.client_id,
        host: j.host,
        session_timeout_ms: j.session_timeout_ms,
        rebalance_timeout_ms: j.rebalance_timeout_ms,
        protocols: j.protocols,
        assignment: Vec::new(),
        joined: false,
        synced: false,
        expires_ms: now + i64::from(j.session_timeout_ms),
    });
    let not_before = if g.state == GroupState::Empty {
        now + i64::from(s.initial_rebalance_delay_ms)
    } else {
        now
    };
    start_rebalance(t, now, not_before);
    let i = t.group.members.len() - 1;
    t.group.members[i].joined = true;
    t.wait_as = Some(id);
    maybe_complete(t, now);
    Ok(())
}

fn rejoin(t: &mut Transition, i: usize, j: Join, now: i64) -> Result<(), GroupError> {
    let g = &mut t.group;
    let id = g.members[i].member_id.clone();
    if g.members[i].instance_id != j.instance_id {
        return Err(GroupError::FencedInstanceId(
            g.members[i].instance_id.clone(),
        ));
    }
    check_consistent(g, &j, Some(&id))?;
    let m = &mut g.members[i];
    let unchanged = m.protocols == j.protocols;
    m.client_id = j.client_id;
    m.host = j.host;
    m.session_timeout_ms = j.session_timeout_ms;
    m.rebalance_timeout_ms = j.rebalance_timeout_ms;
    m.protocols = j.protocols;
    m.expires_ms = now + i64::from(j.session_timeout_ms);
    t.wait_as = Some(id.clone());
    let leader = g.leader == id;
    match g.state {
        GroupState::PreparingRebalance => {
            g.members[i].joined = true;
            maybe_complete(t, now);
        }
        GroupState::CompletingRebalance if unchanged => {
            let reply = join_reply(g, &g.members[i], false);
            t.reply_join(&id, Ok(reply));
        }
        GroupState::Stable if unchanged && !leader => {
            let reply = join_reply(g, &g.members[i], false);
            t.reply_join(&id, Ok(reply));
        }
        _ => {
            start_rebalance(t, now, now);
            t.group.members[i].joined = true;
            maybe_complete(t, now);
        }
    }
    Ok(())
}

fn join_reply(g: &Group, m: &Member, skip_assignment: bool) -> JoinReply {
    let members = if m.member_id == g.leader {
        g.members
            .iter()
            .map(|x| {
                (
                    x.member_id.clone(),
                    x.instance_id.clone(),
                    x.metadata(&g.protocol_name).to_vec(),
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    JoinReply {
        generation: g.generation,
        protocol_name: g.protocol_name.clone(),
        leader: g.leader.clone(),
        member_id: m.member_id.clone(),
        members,
        skip_assignment,
    }
}

/// Moves to `PreparingRebalance` (no-op if already there): parked syncs
/// are told to rejoin, every member must join again.
fn start_rebalance(t: &mut Transition, now: i64, not_before: i64) {
    if t.group.state == GroupState::PreparingRebalance {
        return;
    }
    if t.group.state == GroupState::CompletingRebalance {
        let parked: Vec<String> = t
            .group
            .members
            .iter()
            .filter(|m| m.synced)
            .map(|m| m.member_id.clone())
            .collect();
        for id in parked {
            t.reply_sync(&id, Err(GroupError::RebalanceInProgress));
        }
    }
    let g = &mut t.group;
    g.state = GroupState::PreparingRebalance;
    for m in &mut g.members {
        m.joined = false;
        m.synced = false;
    }
    g.not_before_ms = not_before;
    g.deadline_ms = now + g.max_rebalance_timeout();
}

/// Completes a `PreparingRebalance` whose members all joined, or whose
/// deadline passed.
fn maybe_complete(t: &mut Transition, now: i64) {
    let g = &mut t.group;
    if g.state != GroupState::PreparingRebalance {
        return;
    }
    let all = g.members.iter().all(|m| m.joined);
    let ready = g.members.is_empty() || now >= g.deadline_ms || (all && now >= g.not_before_ms);
    if !ready {
        return;
    }
    g.members.retain(|m| m.joined);
    g.generation += 1;
    t.persist();
    t.effects.push(Effect::Rebalanced);
    let g = &mut t.group;
    let Some(protocol) = g.choose_protocol() else {
        g.state = GroupState::Empty;
        g.protocol_name.clear();
        g.leader.clear();
        return;
    };
    g.protocol_name = protocol;
    if g.member(&g.leader).is_none() {
        g.leader = g.members[0].member_id.clone();
    }
    g.state = GroupState::CompletingRebalance;
    g.deadline_ms = now + g.max_rebalance_timeout();
    for m in &mut g.members {
        m.joined = false;
        m.synced = false;
        m.expires_ms = now + i64::from(m.session_timeout_ms);
    }
    let replies: Vec<(String, JoinReply)> = g
        .members
        .iter()
        .map(|m| (m.member_id.clone(), join_reply(g, m, false)))
        .collect();
    for (id, reply) in replies {
        t.reply_join(&id, Ok(reply));
    }
}

fn sync(
    t: &mut Transition,
    i: usize,
    assignments: Vec<(String, Vec<u8>)>,
    now: i64,
) -> Result<(), GroupError> {
    let g = &mut t.group;
    let id = g.members[i].member_id.clone();
    match g.state {
        GroupState::PreparingRebalance => return Err(GroupError::RebalanceInProgress),
        GroupState::Empty | GroupState::Dead => return Err(GroupError::UnknownMemberId(id)),
        GroupState::Stable => {
            g.members[i].expires_ms = now + i64::from(g.members[i].session_timeout_ms);
            let reply = SyncReply {
                protocol_name: g.protocol_name.clone(),
                assignment: g.members[i].assignment.clone(),
            };
            t.wait_as = Some(id.clone());
            t.reply_sync(&id, Ok(reply));
        }
        GroupState::CompletingRebalance => {
            if id == g.leader {
                if let Some((_, a)) = assignments
                    .iter()
                    .find(|(_, a)| a.len() > MAX_ASSIGNMENT_BYTES)
                {
                    return Err(GroupError::InvalidRequest(format!(
                        "an assignment of {} bytes; the limit is {MAX_ASSIGNMENT_BYTES}",
                        a.len()
                    )));
                }
                for m in &mut g.members {
                    m.assignment = assignments
                        .iter()
                        .find(|(mid, _)| *mid == m.member_id)
                        .map(|(_, a)| a.clone())
                        .unwrap_or_default();
                }
            }
            let m = &mut g.members[i];
            m.synced = true;
            m.expires_ms = now + i64::from(m.session_timeout_ms);
            t.wait_as = Some(id.clone());
            if id == g.leader {
                g.state = GroupState::Stable;
                for m in &mut g.members {
                    m.synced = false;
                    m.expires_ms = now + i64::from(m.session_timeout_ms);
                }
                let replies: Vec<(String, SyncReply)> = g
                    .members
                    .iter()
                    .map(|m| {
                        (
                            m.member_id.clone(),
                            SyncReply {
                                protocol_name: g.protocol_name.clone(),
                                assignment: m.assignment.clone(),
                            },
                        )
                    })
                    .collect();
                t.persist();
                for (mid, reply) in replies {
                    t.reply_sync(&mid, Ok(reply));
                }
            }
        }
    }
    Ok(())
}

/// Removes member `i`, telling its parked requests.
fn remove(t: &mut Transition, i: usize) {
    let m = t.group.members.remove(i);
    let gone = GroupError::UnknownMemberId(m.member_id.clone());
    t.reply_join(&m.member_id, Err(gone.clone()));
    t.reply_sync(&m.member_id, Err(gone));
}

fn leave(t: &mut Transition, list: Vec<(String, String)>, now: i64) -> Result<(), GroupError> {
    if list.is_empty() {
        return Err(GroupError::InvalidRequest("a leave names no member".into()));
    }
    let mut removed = false;
    for (member_id, instance_id) in list {
        let g = &mut t.group;
        let found = if !instance_id.is_empty() {
            match g.members.iter().position(|m| m.instance_id == instance_id) {
                None => Err(GroupError::UnknownMemberId(member_id.clone())),
                Some(i) if !member_id.is_empty() && g.members[i].member_id != member_id => {
                    Err(GroupError::FencedInstanceId(instance_id.clone()))
                }
                Some(i) => Ok(Some(i)),
            }
        } else if g.pending.remove(&member_id).is_some() {
            Ok(None)
        } else {
            g.index(&member_id)
                .map(Some)
                .ok_or_else(|| GroupError::UnknownMemberId(member_id.clone()))
        };
        let result = match found {
            Ok(Some(i)) => {
                remove(t, i);
                removed = true;
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        t.left.push((member_id, instance_id, result));
    }
    if removed {
        start_rebalance(t, now, now);
        maybe_complete(t, now);
    }
    Ok(())
}

fn tick(t: &mut Transition, now: i64) {
    t.group.pending.retain(|_, expires| *expires > now);
    let mut removed = false;
    let mut i = 0;
    while i < t.group.members.len() {
        let m = &t.group.members[i];
        if m.expires_ms <= now && !t.group.is_parked(m) {
            remove(t, i);
            removed = true;
        } else {
            i += 1;
        }
    }
    if t.group.state == GroupState::CompletingRebalance && now >= t.group.deadline_ms {
        let mut i = 0;
        while i < t.group.members.len() {
            if t.group.members[i].synced {
                i += 1;
            } else {
                remove(t, i);
                removed = true;
            }
        }
    }
    if removed {
        start_rebalance(t, now, now);
    }
    maybe_complete(t, now);
}

/// Whether an offset commit may be written to `group` (`None`: a group
/// the coordinator does not know). `transactional`: a TxnOffsetCommit
/// (KIP-447), which is not refused during `CompletingRebalance`.
///
/// - generation `<= 0` with an empty member id is a simple commit:
///   allowed only while the group has no members (`UnknownMemberId`);
/// - otherwise the instance id, if given, must be the member's
///   (`FencedInstanceId`), the member must belong to the group
///   (`UnknownMemberId`; for a TxnOffsetCommit to a group with no members,
///   `IllegalGeneration`), the generation must be the group's
///   (`IllegalGeneration`), and a plain commit is refused while the
///   group completes a rebalance (`RebalanceInProgress`).
pub fn check_commit(
    group: Option<&Group>,
    generation: i32,
    member_id: &str,
    instance_id: &str,
    transactional: bool,
) -> Result<(), GroupError> {
    let members = group.map_or(0, |g| g.members.len());
    if generation <= 0 && member_id.is_empty() {
        if members > 0 {
            return Err(GroupError::UnknownMemberId(String::new()));
        }
        return Ok(());
    }
    let Some(g) = group.filter(|_| members > 0) else {
        if transactional {
            return Err(GroupError::IllegalGeneration {
                got: generation,
                current: group.map_or(0, |g| g.generation),
            });
        }
        return Err(GroupError::UnknownMemberId(member_id.to_string()));
    };
    if !instance_id.is_empty()
        && let Some(m) = g.members.iter().find(|m| m.instance_id == instance_id)
        && m.member_id != member_id
    {
        return Err(GroupError::FencedInstanceId(instance_id.to_string()));
    }
    let Some(m) = g.member(member_id) else {
        return Err(GroupError::UnknownMemberId(member_id.to_string()));
    };
    if !instance_id.is_empty() && m.instance_id != instance_id {
        return Err(GroupError::FencedInstanceId(instance_id.to_string()));
    }
    if generation != g.generation {
        return Err(GroupError::IllegalGeneration {
            got: generation,
            current: g.generation,
        });
    }
    if !transactional && g.state == GroupState::CompletingRebalance {
        return Err(GroupError::RebalanceInProgress);
    }
    Ok(())
}

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;
