//! The group fault ([`FaultClass::GroupRebalance`]): the consuming side is
//! a consumer group of several members sharing the partitions.
//!
//! A run with this class starts [`START_MEMBERS`] members, subscribed with
//! `Consumer::subscribe`, with short sessions ([`SESSION_TIMEOUT`],
//! heartbeats every [`HEARTBEAT_INTERVAL`], [`MAX_POLL_INTERVAL`]) and an
//! assignor drawn from the run's seed (eager `range` or
//! `cooperative-sticky`):
//!
//! - for the plain modes, [`CrashingConsumer`] members committing as their
//!   mode does (before processing for at-most-once, after it otherwise);
//! - for exactly-once, copiers (the client's `ExactlyOnce` loop), each
//!   with its own transactional id, whose transactions carry the member's
//!   generation into `TxnOffsetCommit` (KIP-447).
//!
//! Members must poll at the same time, as separate processes do: a
//! rebalance waits (up to the maximum poll interval) for every member to
//! join again, so stepping them one after the other would stall each join
//! on members that are not polling. `step_together` runs every member's
//! steps concurrently, and keeps them all polling until the group has
//! settled: stable, every member in the current
//! generation, every partition owned.
//!
//! The fault (`rebalance_fault`) picks one member at random and either
//!
//! - **kills** it: it crashes (dropped without a commit or a LeaveGroup)
//!   at a random point of its next step with input (or between steps if
//!   it has none), and its process restarts as a new member (a copier
//!   with its transactional id, which fences its open transaction); the
//!   group drops the dead member after its session timeout; or
//! - **pauses** it: it stops polling (a copier in the middle of a
//!   transaction, with its outputs sent and its offsets not yet added),
//!   a new member joins, the others take over its partitions once its
//!   maximum poll interval has passed and catch up on them; then it wakes
//!   and goes on where it stopped. A paused copier's commit must be
//!   refused (its generation is stale) and its transaction aborted;
//!   accepting it would write its outputs a second time. The woken member
//!   joins again, or leaves (`close`) when the group has
//!   [`MAX_MEMBERS`] without it.
//!
//! The history records a member's polls under a new process after each
//! rebalance (see [`workload`](super::super::workload)), and the checker
//! judges the group's deliveries as for one consumer: at-least-once loses
//! nothing, exactly-once delivers and stores each value once.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::copier::{
    Copier, CopierSpec, copier_step, pause_copier, start_copier, wake_copier, zombie_copier,
};
use super::*;

/// How long the coordinator keeps a member that stopped heartbeating.
pub const SESSION_TIMEOUT: Duration = Duration::from_millis(400);
/// Heartbeats, a fifth of the session.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(80);
/// How long a member may go without polling before it leaves the group;
/// also how long a rebalance waits for the members to join again.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_millis(600);
/// Members a run starts with.
pub const START_MEMBERS: usize = 2;
/// A woken member leaves rather than join a group this large.
pub const MAX_MEMBERS: usize = 3;
/// Longest [`step_together`] keeps stepping for the group to settle.
const SETTLE_WITHIN: Duration = Duration::from_secs(20);
/// Input records per copier transaction: several polls, so that a
/// rebalance can come due while a transaction is open.
const COPIER_MAX_RECORDS: u64 = 4;

/// The assignor of a run's group, drawn from its seed.
pub(super) fn assignor(seed: u64) -> &'static str {
    if splitmix64(seed ^ 0x0067_726f_7570) & 1 == 0 {
        "range"
    } else {
        "cooperative-sticky"
    }
}

/// `base` as a member of the run's group: short sessions, `assignor`.
pub(super) fn member_config(base: ConsumerConfig, assignor: &str) -> ConsumerConfig {
    ConsumerConfig {
        assignors: vec![assignor.to_owned()],
        session_timeout: SESSION_TIMEOUT,
        heartbeat_interval: HEARTBEAT_INTERVAL,
        max_poll_interval: MAX_POLL_INTERVAL,
        ..base
    }
}

/// One member of the consuming side, as [`step_together`] and
/// [`rebalance_fault`] drive it.
pub(super) trait Member: Sized {
    /// One step (errors are recorded and skipped).
    async fn step(&mut self) -> ConsumerStep;
    /// The current incarnation's consumer, if one runs.
    fn consumer(&self) -> Option<&Consumer>;
    /// Crashes it at `choice`'s point of its next step with input, or now
    /// if that step has none; its process restarts as a new member.
    async fn kill(&mut self, choice: u8) -> String;
    /// Stops it in the middle of its work; true if it holds something open
    /// (a transaction).
    async fn pause(&mut self) -> bool;
    /// Wakes it where [`pause`](Member::pause) stopped it (`holding`:
    /// what that returned).
    async fn wake(&mut self, holding: bool) -> String;
    /// A new member of the group, of the same kind.
    async fn newcomer(&self) -> Result<Self, RunError>;
    /// Leaves the group for good.
    async fn leave(self);
}

impl Member for CrashingConsumer {
    async fn step(&mut self) -> ConsumerStep {
        CrashingConsumer::step(self, Duration::from_millis(100), |_, _| async {})
            .await
            // A failed poll is not idleness: the caller keeps going.
            .unwrap_or(ConsumerStep::Delivered(0))
    }

    fn consumer(&self) -> Option<&Consumer> {
        Some(CrashingConsumer::consumer(self))
    }

    async fn kill(&mut self, choice: u8) -> String {
        let point = CrashPoint::ALL[(choice >> 3) as usize % CrashPoint::ALL.len()];
        let before = self.schedule_mut().clone();
        let at = self.steps() + 1;
        *self.schedule_mut() = before.clone().at(at, point);
        let step = Member::step(self).await;
        *self.schedule_mut() = before;
        if let ConsumerStep::Crashed(point) = step {
            return format!("consumer killed {point}");
        }
        match CrashingConsumer::kill(self).await {
            Ok(()) => "consumer killed between steps".to_string(),
            Err(e) => format!("consumer killed; its restart failed: {e}"),
        }
    }

    async fn pause(&mut self) -> bool {
        false
    }

    async fn wake(&mut self, _: bool) -> String {
        "paused consumer polls again".to_string()
    }

    async fn newcomer(&self) -> Result<Self, RunError> {
        Ok(self.another().await?)
    }

    async fn leave(self) {
        let _ = self.close().await;
    }
}

/// One copier of the run: its settings and the incarnation running, which
/// the next step starts if there is none.
pub(super) struct CopierSlot {
    client: Client,
    history: History,
    out: History,
    spec: CopierSpec,
    copier: Option<Copier>,
    /// Crash at this point of its next step with input.
    crash_next: Option<(CrashPoint, EosPoint)>,
    /// Numbers the transactional ids of newcomers.
    ids: Arc<AtomicU32>,
}

impl CopierSlot {
    /// The copier of `spec`, started now.
    pub(super) async fn start(
        client: &Client,
        history: &History,
        out: &History,
        spec: CopierSpec,
    ) -> Result<CopierSlot, RunError> {
        let copier = start_copier(client, history, out, &spec).await?;
        Ok(CopierSlot {
            client: client.clone(),
            history: history.clone(),
            out: out.clone(),
            spec,
            copier: Some(copier),
            crash_next: None,
            ids: Arc::new(AtomicU32::new(1)),
        })
    }

    /// Crashes it at `point` in its next transaction.
    pub(super) fn crash_next(&mut self, point: (CrashPoint, EosPoint)) {
        self.crash_next = Some(point);
    }

    /// The zombie fault on this copier (see [`zombie_copier`]).
    pub(super) async fn zombie(&mut self) -> Option<String> {
        zombie_copier(
            &self.client,
            &self.history,
            &self.out,
            &self.spec,
            &mut self.copier,
        )
        .await
    }
}

impl Member for CopierSlot {
    async fn step(&mut self) -> ConsumerStep {
        let step = copier_step(
            &self.client,
            &self.history,
            &self.out,
            &self.spec,
            &mut self.copier,
            self.crash_next,
        )
        .await;
        if matches!(step, ConsumerStep::Crashed(_)) {
            self.crash_next = None;
        }
        step
    }

    fn consumer(&self) -> Option<&Consumer> {
        self.copier.as_ref().map(|c| c.consumer())
    }

    async fn kill(&mut self, choice: u8) -> String {
        let points = [
            (CrashPoint::AfterPoll, EosPoint::AfterPoll),
            (CrashPoint::AfterSinkWrite, EosPoint::AfterSends),
            (CrashPoint::BeforeCommit, EosPoint::BeforeCommit),
        ];
        let point = points[(choice >> 3) as usize % points.len()];
        let before = self.crash_next.replace(point);
        let step = Member::step(self).await;
        if let ConsumerStep::Crashed(at) = step {
            self.crash_next = before;
            return format!("copier {} killed {at}", self.spec.id);
        }
        self.crash_next = before;
        // Dropped between transactions; the next step restarts it.
        self.copier = None;
        format!("copier {} killed between transactions", self.spec.id)
    }

    async fn pause(&mut self) -> bool {
        match self.copier.as_mut() {
            Some(c) => pause_copier(c).await,
            None => false,
        }
    }

    async fn wake(&mut self, holding: bool) -> String {
        let Some(c) = self.copier.as_mut() else {
            return "paused copier was gone".to_string();
        };
        if !holding {
            return format!("{} polls again", self.spec.id);
        }
        let (note, goes_on) = wake_copier(c).await;
        if !goes_on {
            self.copier = None;
        }
        format!("{}: {note}", self.spec.id)
    }

    async fn newcomer(&self) -> Result<Self, RunError> {
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        let spec = CopierSpec {
            id: format!("{COPIER_ID}-{n}"),
            ..self.spec.clone()
        };
        let mut slot = CopierSlot::start(&self.client, &self.history, &self.out, spec).await?;
        slot.ids = Arc::clone(&self.ids);
        Ok(slot)
    }

    async fn leave(self) {
        if let Some(c) = self.copier {
            let (consumer, producer) = c.into_parts();
            let _ = consumer.close().await;
            let _ = producer.close().await;
        }
    }
}

/// The copiers of a run with the group fault: members of the group, each
/// with its own transactional id.
pub(super) async fn start_copiers(
    client: &Client,
    history: &History,
    out: &History,
    seed: u64,
) -> Result<Vec<CopierSlot>, RunError> {
    let spec = CopierSpec {
        id: COPIER_ID.to_owned(),
        consumer: member_config(copier_consumer_config(), assignor(seed)),
        member: true,
        max_records: COPIER_MAX_RECORDS,
    };
    let first = CopierSlot::start(client, history, out, spec).await?;
    let mut all = vec![first];
    while all.len() < START_MEMBERS {
        all.push(all[0].newcomer().await?);
    }
    Ok(all)
}

/// The consumers of a plain run with the group fault.
pub(super) async fn start_consumers(
    client: &Client,
    history: &History,
    mode: DeliveryMode,
    seed: u64,
) -> Result<Vec<CrashingConsumer>, RunError> {
    let config = member_config(group_consumer_config(mode), assignor(seed));
    let mut all = Vec::new();
    for _ in 0..START_MEMBERS {
        let c = CrashingConsumer::member(
            client.clone(),
            config.clone(),
            TOPIC,
            history.clone(),
            CrashSchedule::never(),
        )
        .await?;
        all.push(c);
    }
    Ok(all)
}

/// When [`step_together`] stops, once every member has taken its steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Until {
    /// Right then.
    Steps,
    /// Once the group is stable with exactly these members, each in the
    /// current generation, and every partition is owned by one of them.
    Settled,
    /// Settled, and each member's last step found nothing to read: they
    /// have caught up on every partition.
    Idle,
}

/// What one member looked like after its last step.
#[derive(Clone, Debug, Default)]
struct Seen {
    steps: u32,
    last: Option<ConsumerStep>,
    /// Member id and generation, while it holds an assignment.
    member: Option<(String, i32)>,
    partitions: Vec<u32>,
}

impl Seen {
    fn of(consumer: Option<&Consumer>) -> (Option<(String, i32)>, Vec<u32>) {
        let Some(c) = consumer else {
            return (None, Vec::new());
        };
        let member = c
            .group_metadata()
            .filter(|_| c.joined())
            .filter(|m| m.generation > 0 && !m.member_id.is_empty())
            .map(|m| (m.member_id, m.generation));
        let partitions = c.positions().iter().map(|(_, p, _)| *p).collect();
        (member, partitions)
    }
}

/// What a [`step_together`] did.
#[derive(Debug)]
pub(super) struct Together {
    /// Every step of every member.
    pub steps: Vec<ConsumerStep>,
    /// Whether it stopped because the condition held (not the deadline).
    pub settled: bool,
    /// Whether every member's last step found nothing to read.
    pub last_idle: bool,
}

impl Together {
    /// The steps as one: a crash if any crashed, idle if the group settled
    /// and every member's last step was idle, else what was delivered.
    pub fn combined(&self) -> ConsumerStep {
        if let Some(c) = self
            .steps
            .iter()
            .find(|s| matches!(s, ConsumerStep::Crashed(_)))
        {
            return *c;
        }
        let delivered: usize = self
            .steps
            .iter()
            .map(|s| match s {
                ConsumerStep::Delivered(n) => *n,
                _ => 0,
            })
            .sum();
        if delivered == 0 && self.last_idle && self.settled {
            ConsumerStep::Idle
        } else {
            ConsumerStep::Delivered(delivered)
        }
    }
}

/// Steps every member `steps` times, concurrently, then keeps them all
/// stepping until `until` holds (or [`SETTLE_WITHIN`] passed).
pub(super) async fn step_together<M: Member>(
    client: &Client,
    members: &mut [M],
    steps: u32,
    until: Until,
) -> Together {
    let seen: RefCell<Vec<Seen>> = RefCell::new(vec![Seen::default(); members.len()]);
    let stop = Cell::new(false);
    let all = RefCell::new(Vec::new());
    let runners = members.iter_mut().enumerate().map(|(i, m)| {
        let (seen, stop, all) = (&seen, &stop, &all);
        async move {
            loop {
                let done = seen.borrow()[i].steps >= steps;
                if done && (until == Until::Steps || stop.get()) {
                    return;
                }
                let step = m.step().await;
                all.borrow_mut().push(step);
                let (member, partitions) = Seen::of(m.consumer());
                let mut s = seen.borrow_mut();
                s[i].steps += 1;
                s[i].last = Some(step);
                s[i].member = member;
                s[i].partitions = partitions;
            }
        }
    });
    let settled = Cell::new(until == Until::Steps);
    let watch = async {
        if until == Until::Steps {
            return;
        }
        let deadline = Instant::now() + SETTLE_WITHIN;
        loop {
            tokio::time::sleep(POLL_WAIT).await;
            let snapshot = seen.borrow().clone();
            if snapshot.iter().all(|s| s.steps >= steps) && holds(client, &snapshot, until).await {
                settled.set(true);
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(?until, "the group did not settle");
                break;
            }
        }
        stop.set(true);
    };
    futures::join!(futures::future::join_all(runners), watch);
    let last_idle = seen
        .borrow()
        .iter()
        .all(|s| s.last == Some(ConsumerStep::Idle));
    Together {
        steps: all.into_inner(),
        settled: settled.get(),
        last_idle,
    }
}

/// Whether `until` holds for members last seen as `seen`.
async fn holds(client: &Client, seen: &[Seen], until: Until) -> bool {
    let mut ids = BTreeSet::new();
    let mut generations = BTreeSet::new();
    let mut partitions = BTreeSet::new();
    for s in seen {
        let Some((id, generation)) = &s.member else {
            return false;
        };
        if until == Until::Idle && s.last != Some(ConsumerStep::Idle) {
            return false;
        }
        ids.insert(id.clone());
        generations.insert(*generation);
        partitions.extend(s.partitions.iter().copied());
    }
    if partitions.len() != PARTITIONS as usize || generations.len() > 1 {
        return false;
    }
    let Ok(group) = client.describe_group(GROUP).await else {
        return false;
    };
    let members: BTreeSet<String> = group.members.into_iter().map(|m| m.member_id).collect();
    group.state == "stable" && members == ids && generations.contains(&group.generation)
}

/// The group fault on `members`; returns the note for the reader.
pub(super) async fn rebalance_fault<M: Member>(
    client: &Client,
    members: &mut Vec<M>,
    choice: u8,
) -> String {
    if members.is_empty() {
        return "no group members".to_string();
    }
    // A member with partitions, if any: it has the fresh input in hand.
    let owners: Vec<usize> = (0..members.len())
        .filter(|&i| {
            members[i]
                .consumer()
                .is_some_and(|c| !c.positions().is_empty())
        })
        .collect();
    let victim = if owners.is_empty() {
        (choice >> 1) as usize % members.len()
    } else {
        owners[(choice >> 1) as usize % owners.len()]
    };
    if choice & 1 == 0 {
        let note = members[victim].kill(choice).await;
        let settled = step_together(client, members, 1, Until::Idle).await;
        return format!(
            "member {victim} of {}: {note}{}",
            members.len(),
            unsettled(&settled)
        );
    }
    let mut paused = members.remove(victim);
    let holding = paused.pause().await;
    match paused.newcomer().await {
        Ok(m) => members.push(m),
        Err(e) => tracing::warn!(%e, "the newcomer could not start"),
    }
    // Without the paused member: it leaves once its poll interval passes,
    // and the others take its partitions over and catch up on them.
    let moved = step_together(client, members, 1, Until::Idle).await;
    let woke = paused.wake(holding).await;
    let mut note = format!(
        "member {victim} paused{}, a new member joined{}; {woke}",
        if holding { " in a transaction" } else { "" },
        unsettled(&moved)
    );
    if members.len() >= MAX_MEMBERS {
        paused.leave().await;
        note.push_str("; it left the group");
    } else {
        members.push(paused);
    }
    let settled = step_together(client, members, 1, Until::Settled).await;
    note.push_str(unsettled(&settled));
    note
}

fn unsettled(t: &Together) -> &'static str {
    if t.settled {
        ""
    } else {
        " (the group did not settle)"
    }
}
