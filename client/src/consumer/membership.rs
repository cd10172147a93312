//! A consumer's membership in its group: JoinGroup and SyncGroup (run by
//! the consumer's own `poll`), heartbeats on a task of their own, and
//! LeaveGroup.
//!
//! The heartbeat task only watches: it keeps the session alive while the
//! application processes records, and records what the coordinator says
//! in the shared [`Phase`]: a rebalance began (`Rejoin`), the member was
//! dropped or its generation is gone (`Lost`), another process took its
//! instance id (`Fenced`). It also leaves the group when the application
//! stops polling for longer than the maximum poll interval. Everything that
//! changes the assignment happens in `poll`, on the application's task,
//! so that positions and commits never race a rebalance.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::{ErrorCode, v1};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{ClientError, check};
use crate::group::{
    Assignment, Assignor, MemberSubscription, PROTOCOL_TYPE, RebalanceProtocol, Subscription,
};
use crate::retry::{Backoff, timed};

/// Longest a single group RPC other than JoinGroup and SyncGroup may take.
const GROUP_RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between attempts of a join round that failed with a retriable
/// error.
const REJOIN_PAUSE: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));
/// Join rounds one `join` call tries before it gives up with the last
/// error (each MEMBER_ID_REQUIRED, REBALANCE_IN_PROGRESS or stale-member
/// answer costs one).
const MAX_JOIN_ROUNDS: u32 = 50;

/// The group protocol's identity of a member: what commits and heartbeats
/// carry, and what a transactional producer needs to commit offsets for
/// the group (KIP-447).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMetadata {
    /// The group.
    pub group: String,
    /// The generation the member holds (`-1` before its first join).
    pub generation: i32,
    /// Its member id (empty before its first join).
    pub member_id: String,
    /// Its static instance id, if it has one.
    pub instance_id: Option<String>,
}

/// What the heartbeat task has learnt since the last `poll`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Not a member yet, or between `poll`s that join.
    Unjoined,
    /// Holding an assignment in the current generation.
    Stable,
    /// The coordinator began a rebalance (or a cooperative revocation
    /// needs another round): join again on the next `poll`.
    Rejoin,
    /// The member is no longer in the group (its session expired, its
    /// generation is stale, or it left after the poll interval ran out):
    /// its partitions may be someone else's already.
    Lost(String),
    /// Another process joined with this member's instance id.
    Fenced,
}

#[derive(Debug)]
struct Shared {
    generation: i32,
    member_id: String,
    phase: Phase,
    last_poll: Instant,
}

/// The group settings a [`Membership`] runs with.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub group: String,
    pub instance_id: Option<String>,
    pub session_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub max_poll_interval: Duration,
}

/// A finished join round: the generation and this member's partitions.
#[derive(Debug)]
pub(crate) struct Joined {
    pub assigned: BTreeSet<(String, u32)>,
    pub protocol: RebalanceProtocol,
}

pub(crate) struct Membership {
    client: Client,
    settings: Settings,
    assignors: Vec<Box<dyn Assignor>>,
    shared: Arc<Mutex<Shared>>,
    /// Wakes the heartbeat task when the member (re)joins, so that its
    /// timers start from the join rather than from its last sleep.
    joined: Arc<Notify>,
    heartbeat: JoinHandle<()>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shared = self.shared.lock();
        f.debug_struct("Membership")
            .field("group", &self.settings.group)
            .field("generation", &shared.generation)
            .field("member_id", &shared.member_id)
            .field("phase", &shared.phase)
            .finish()
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        // Dropped without `leave`: the coordinator notices when the
        // session times out, as it would for a crashed process.
        self.heartbeat.abort();
    }
}

impl Membership {
    /// Starts the heartbeat task; the member joins on the first `join`.
    pub(crate) fn new(
        client: Client,
        settings: Settings,
        assignors: Vec<Box<dyn Assignor>>,
    ) -> Membership {
        let shared = Arc::new(Mutex::new(Shared {
            generation: -1,
            member_id: String::new(),
            phase: Phase::Unjoined,
            last_poll: Instant::now(),
        }));
        let joined = Arc::new(Notify::new());
        let heartbeat = tokio::spawn(heartbeats(
            client.clone(),
            settings.clone(),
            Arc::clone(&shared),
            Arc::clone(&joined),
        ));
        Membership {
            client,
            settings,
            assignors,
            shared,
            joined,
            heartbeat,
        }
    }

    pub(crate) fn group(&self) -> &str {
        &self.settings.group
    }

    /// The member's identity for commits.
    pub(crate) fn metadata(&self) -> GroupMetadata {
        let shared = self.shared.lock();
        GroupMetadata {
            group: self.settings.group.clone(),
            generation: shared.generation,
            member_id: shared.member_id.clone(),
            instance_id: self.settings.instance_id.clone(),
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        self.shared.lock().phase.clone()
    }

    /// The application polled: the maximum poll interval starts again.
    pub(crate) fn touch(&self) {
        self.shared.lock().last_poll = Instant::now();
    }

    /// Marks the member for another join on the next `poll` (unless it was
    /// lost or fenced meanwhile, which say more).
    pub(crate) fn request_rejoin(&self) {
        let mut shared = self.shared.lock();
        if matches!(shared.phase, Phase::Stable | Phase::Unjoined) {
            shared.phase = Phase::Rejoin;
        }
    }

    /// Takes note of an error a commit got: a stale generation or member
    /// means the member is out of the group.
    pub(crate) fn note_commit_error(&self, error: &ClientError) {
        let mut shared = self.shared.lock();
        match error.code() {
            ErrorCode::IllegalGeneration | ErrorCode::UnknownMemberId
                if shared.phase != Phase::Fenced =>
            {
                shared.phase = Phase::Lost(error.to_string());
            }
            ErrorCode::FencedInstanceId => shared.phase = Phase::Fenced,
            ErrorCode::RebalanceInProgress if shared.phase == Phase::Stable => {
                shared.phase = Phase::Rejoin;
            }
            _ => {}
        }
    }

    /// After a lost membership: forget the generation and the member id.
    /// A static member joins again with no member id under its instance
    /// id, which the coordinator (if it still knows the instance) answers
    /// with its partitions under a new id.
    pub(crate) fn reset(&self) {
        let mut shared = self.shared.lock();
        shared.generation = -1;
        shared.member_id.clear();
        shared.phase = Phase::Unjoined;
    }

    /// Joins the group (or joins again) subscribed to `topics`, owning
    /// `owned`, and returns this member's assignment of the new
    /// generation. The leader runs the assignor. Retries the rounds the
    /// protocol asks to repeat (a member id to learn, a rebalance that
    /// restarted, a stale member id).
    pub(crate) async fn join(
        &self,
        topics: &[String],
        owned: &BTreeSet<(String, u32)>,
    ) -> Result<Joined, ClientError> {
        self.shared.lock().phase = Phase::Unjoined;
        let owned: Vec<(String, u32)> = owned.iter().cloned().collect();
        let metadata: bytes::Bytes = Subscription::new(topics.iter().cloned(), &owned)
            .encode()
            .map_err(|e| ClientError::InvalidArgument(format!("subscription: {e}")))?
            .into();
        let mut last = None;
        for round in 0..MAX_JOIN_ROUNDS {
            if round > 0 {
                let backoff = Backoff::new(REJOIN_PAUSE.0, REJOIN_PAUSE.1);
                tokio::time::sleep(backoff.delay(round - 1)).await;
            }
            match self.join_round(&metadata).await {
                Ok(joined) => {
                    self.shared.lock().phase = Phase::Stable;
                    self.joined.notify_one();
                    return Ok(joined);
                }
                Err(e) => {
                    match e.code() {
                        ErrorCode::MemberIdRequired | ErrorCode::RebalanceInProgress => {}
                        ErrorCode::IllegalGeneration => {}
                        // The coordinator does not know the id (it expired,
                        // or a restarted broker forgot its members): join
                        // as new, static members included, or the member
                        // would repeat the stale id forever.
                        ErrorCode::UnknownMemberId => self.shared.lock().member_id.clear(),
                        _ if e.is_retriable() => {}
                        _ => return Err(e),
                    }
                    tracing::debug!(group = %self.settings.group, error = %e, round, "joining again");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(ClientError::Timeout {
            what: "joining the group",
            after_ms: 0,
        }))
    }

    async fn join_round(&self, metadata: &bytes::Bytes) -> Result<Joined, ClientError> {
        let member_id = self.shared.lock().member_id.clone();
        let rebalance_timeout = self.settings.max_poll_interval;
        let request = v1::JoinGroupRequest {
            group: self.settings.group.clone(),
            member_id,
            group_instance_id: self.settings.instance_id.clone().unwrap_or_default(),
            session_timeout_ms: millis(self.settings.session_timeout),
            rebalance_timeout_ms: millis(rebalance_timeout),
            protocol_type: PROTOCOL_TYPE.to_owned(),
            protocols: self
                .assignors
                .iter()
                .map(|a| v1::GroupProtocol {
                    name: a.name().to_owned(),
                    metadata: metadata.clone(),
                })
                .collect(),
            client_id: "ferry-client".to_owned(),
        };
        // The coordinator parks a join until the rebalance completes,
        // which takes up to the rebalance timeout.
        let join = timed("JoinGroup", rebalance_timeout + GROUP_RPC_TIMEOUT, async {
            Ok(self.client.raw().join_group(request).await?.into_inner())
        })
        .await?;
        if !join.member_id.is_empty() {
            self.shared.lock().member_id = join.member_id.clone();
        }
        check(join.error_code, &join.error_message)?;
        let assignor = self
            .assignors
            .iter()
            .find(|a| a.name() == join.protocol_name)
            .ok_or_else(|| {
                ClientError::broker(
                    ErrorCode::InconsistentGroupProtocol,
                    format!(
                        "the group chose assignor {:?}, which this consumer did not offer",
                        join.protocol_name
                    ),
                )
            })?;
        let assignments = if join.leader_id == join.member_id && !join.skip_assignment {
            self.assign(assignor.as_ref(), &join.members).await?
        } else {
            Vec::new()
        };
        let sync = v1::SyncGroupRequest {
            group: self.settings.group.clone(),
            generation_id: join.generation_id,
            member_id: join.member_id.clone(),
            group_instance_id: self.settings.instance_id.clone().unwrap_or_default(),
            protocol_type: PROTOCOL_TYPE.to_owned(),
            protocol_name: join.protocol_name.clone(),
            assignments,
        };
        let sync = timed("SyncGroup", rebalance_timeout + GROUP_RPC_TIMEOUT, async {
            Ok(self.client.raw().sync_group(sync).await?.into_inner())
        })
        .await?;
        check(sync.error_code, &sync.error_message)?;
        let assigned = if sync.assignment.is_empty() {
            BTreeSet::new()
        } else {
            Assignment::decode(&sync.assignment)
                .map_err(|e| {
                    ClientError::broker(
                        ErrorCode::CorruptMessage,
                        format!("the group's assignment for this member: {e}"),
                    )
                })?
                .partitions()
        };
        self.shared.lock().generation = join.generation_id;
        Ok(Joined {
            assigned,
            protocol: assignor.rebalance_protocol(),
        })
    }

    /// The leader's part: every member's subscription through the chosen
    /// assignor, over the partition counts of the subscribed topics.
    async fn assign(
        &self,
        assignor: &dyn Assignor,
        members: &[v1::JoinGroupMember],
    ) -> Result<Vec<v1::SyncGroupAssignment>, ClientError> {
        let mut subscriptions = Vec::with_capacity(members.len());
        for m in members {
            // A member whose metadata this leader cannot read gets
            // nothing rather than failing the whole group.
            let subscription = Subscription::decode(&m.metadata).unwrap_or_else(|e| {
                tracing::warn!(member = %m.member_id, error = %e, "unreadable subscription");
                Subscription::new(Vec::<String>::new(), &[])
            });
            subscriptions.push(MemberSubscription {
                member_id: m.member_id.clone(),
                group_instance_id: (!m.group_instance_id.is_empty())
                    .then(|| m.group_instance_id.clone()),
                subscription,
            });
        }
        let topics: BTreeSet<&str> = subscriptions
            .iter()
            .flat_map(|s| s.subscription.topics.iter().map(String::as_str))
            .collect();
        let mut partitions = BTreeMap::new();
        for topic in topics {
            match self.client.describe_topic(topic).await {
                Ok(d) => {
                    partitions.insert(topic.to_owned(), d.partitions.len() as u32);
                }
                Err(e) if e.code() == ErrorCode::UnknownTopicOrPartition => {}
                Err(e) => return Err(e),
            }
        }
        let plan = assignor.assign(&subscriptions, &partitions);
        plan.into_iter()
            .map(|(member_id, partitions)| {
                let assignment = Assignment::new(&partitions).encode().map_err(|e| {
                    ClientError::InvalidArgument(format!("assignment for {member_id}: {e}"))
                })?;
                Ok(v1::SyncGroupAssignment {
                    member_id,
                    assignment: assignment.into(),
                })
            })
            .collect()
    }

    /// Leaves the group (LeaveGroup), so that the others rebalance at once
    /// instead of after this member's session timeout. A member that never
    /// joined has nothing to leave.
    pub(crate) async fn leave(&self) -> Result<(), ClientError> {
        let member_id = {
            let mut shared = self.shared.lock();
            shared.phase = Phase::Unjoined;
            shared.generation = -1;
            std::mem::take(&mut shared.member_id)
        };
        self.heartbeat.abort();
        if member_id.is_empty() {
            return Ok(());
        }
        leave_group(&self.client, &self.settings, member_id).await
    }
}

async fn leave_group(
    client: &Client,
    settings: &Settings,
    member_id: String,
) -> Result<(), ClientError> {
    let request = v1::LeaveGroupRequest {
        group: settings.group.clone(),
        members: vec![v1::LeavingMember {
            member_id,
            group_instance_id: settings.instance_id.clone().unwrap_or_default(),
        }],
    };
    let r = timed("LeaveGroup", GROUP_RPC_TIMEOUT, async {
        Ok(client.raw().leave_group(request).await?.into_inner())
    })
    .await?;
    check(r.error_code, &r.error_message)?;
    for m in r.members {
        let code = ErrorCode::from_u32(m.error_code);
        // Already gone is what leaving wants.
        if code != ErrorCode::None && code != ErrorCode::UnknownMemberId {
            return Err(ClientError::broker(code, "leaving the group"));
        }
    }
    Ok(())
}

/// The heartbeat task: every `heartbeat_interval` while the member holds
/// a generation, a Heartbeat, and what its answer means into the phase.
async fn heartbeats(
    client: Client,
    settings: Settings,
    shared: Arc<Mutex<Shared>>,
    joined: Arc<Notify>,
) {
    let mut next_heartbeat = Instant::now() + settings.heartbeat_interval;
    loop {
        // Wake for the next heartbeat, or sooner when the poll interval
        // runs out first.
        let wake = {
            let s = shared.lock();
            if matches!(s.phase, Phase::Stable | Phase::Rejoin) {
                let poll_deadline = s.last_poll + settings.max_poll_interval;
                next_heartbeat.min(poll_deadline + Duration::from_millis(1))
            } else {
                next_heartbeat
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = joined.notified() => {
                // A new generation: heartbeat from now on.
                next_heartbeat = Instant::now() + settings.heartbeat_interval;
                continue;
            }
        }
        let (generation, member_id, idle) = {
            let s = shared.lock();
            if !matches!(s.phase, Phase::Stable | Phase::Rejoin) {
                next_heartbeat = Instant::now() + settings.heartbeat_interval;
                continue;
            }
            (s.generation, s.member_id.clone(), s.last_poll.elapsed())
        };
        if idle > settings.max_poll_interval {
            tracing::warn!(
                group = %settings.group,
                idle_ms = idle.as_millis() as u64,
                max_poll_interval_ms = settings.max_poll_interval.as_millis() as u64,
                "the application stopped polling; leaving the group"
            );
            {
                let mut s = shared.lock();
                if s.generation == generation && s.member_id == member_id {
                    s.phase = Phase::Lost("the maximum poll interval passed".into());
                }
            }
            if let Err(e) = leave_group(&client, &settings, member_id).await {
                tracing::debug!(error = %e, "leaving after the poll interval failed");
            }
            continue;
        }
        if Instant::now() < next_heartbeat {
            continue;
        }
        next_heartbeat = Instant::now() + settings.heartbeat_interval;
        let request = v1::HeartbeatRequest {
            group: settings.group.clone(),
            generation_id: generation,
            member_id: member_id.clone(),
            group_instance_id: settings.instance_id.clone().unwrap_or_default(),
        };
        let answer = timed("Heartbeat", settings.session_timeout, async {
            let r = client.raw().heartbeat(request).await?.into_inner();
            check(r.error_code, &r.error_message)
        })
        .await;
        let Err(e) = answer else { continue };
        let mut s = shared.lock();
        if s.generation != generation || s.member_id != member_id {
            continue; // the member joined again meanwhile
        }
        match e.code() {
            ErrorCode::RebalanceInProgress => {
                if s.phase == Phase::Stable {
                    s.phase = Phase::Rejoin;
                }
            }
            ErrorCode::IllegalGeneration | ErrorCode::UnknownMemberId => {
                s.phase = Phase::Lost(e.to_string());
            }
            ErrorCode::FencedInstanceId => s.phase = Phase::Fenced,
            _ => tracing::debug!(group = %settings.group, error = %e, "heartbeat failed"),
        }
    }
}

fn millis(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}
