//! Carries out the transitions `state::apply` decides: one [`Group`] per
//! name behind an async lock, the parked JoinGroup and SyncGroup answers
//! (oneshot channels), the timer that applies session expiries and
//! rebalance deadlines, and persistence in the offsets log.
//!
//! The clock is the runtime's (`tokio::time::Instant`), in milliseconds
//! since the coordinator opened; no timer survives a restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedMutexGuard, oneshot};

use super::codec;
use super::state::{self, Effect, Event, Group, GroupError, Join, JoinReply, Settings, SyncReply};
use crate::error::BrokerError;
use crate::names::check_name;
use crate::offsets::OffsetStore;

type JoinTx = oneshot::Sender<Result<JoinReply, GroupError>>;
type SyncTx = oneshot::Sender<Result<SyncReply, GroupError>>;

/// One group and the requests parked on it.
#[derive(Debug)]
pub(crate) struct Entry {
    group: Group,
    joins: HashMap<String, JoinTx>,
    syncs: HashMap<String, SyncTx>,
}

/// Who waits for the outcome of an event.
enum Park {
    None,
    Join(JoinTx),
    Sync(SyncTx),
}

/// A member's claim on a group, as an offset commit carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitFence {
    /// The member's generation; `<= 0` with an empty member id is a
    /// simple commit.
    pub generation: i32,
    /// The member's id.
    pub member_id: String,
    /// Its instance id, checked if set.
    pub instance_id: String,
}

/// The group coordinator.
#[derive(Debug)]
pub(crate) struct GroupCoordinator {
    offsets: Arc<OffsetStore>,
    settings: Settings,
    max_groups: usize,
    groups: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Entry>>>>,
    timer: Notify,
    start: tokio::time::Instant,
    id_base: u64,
    next_id: AtomicU64,
}

impl GroupCoordinator {
    /// Restores every group the offsets log has metadata for: its
    /// generation and protocol type, with no members (module docs of
    /// `group`).
    pub(crate) fn open(
        offsets: Arc<OffsetStore>,
        settings: Settings,
        max_groups: usize,
    ) -> GroupCoordinator {
        let mut groups = HashMap::new();
        for (name, value) in offsets.take_replayed_groups() {
            let Some(stored) = codec::decode(&value) else {
                tracing::warn!(group = %name, "skipping unreadable group record");
                continue;
            };
            let mut g = Group::new(&name);
            g.generation = stored.generation;
            g.protocol_type = stored.protocol_type;
            groups.insert(
                name,
                Arc::new(tokio::sync::Mutex::new(Entry {
                    group: g,
                    joins: HashMap::new(),
                    syncs: HashMap::new(),
                })),
            );
        }
        tracing::info!(groups = groups.len(), "restored consumer groups");
        metrics::gauge!("ferry_groups").set(groups.len() as f64);
        metrics::gauge!("ferry_group_members").set(0.0);
        let id_base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        GroupCoordinator {
            offsets,
            settings,
            max_groups,
            groups: Mutex::new(groups),
            timer: Notify::new(),
            start: tokio::time::Instant::now(),
            id_base,
            next_id: AtomicU64::new(0),
        }
    }

    fn now(&self) -> i64 {
        self.start.elapsed().as_millis() as i64
    }

    /// A member id never handed out before (the time the broker opened
    /// and a counter).
    fn fresh_member_id(&self, client_id: &str) -> String {
        let prefix = if client_id.is_empty() || client_id.len() > 64 {
            "member"
        } else {
            client_id
        };
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:x}-{n}", self.id_base)
    }

    /// Locks the group's entry, creating it if `create`. Returns whether
    /// it was created.
    async fn lock(
        &self,
        name: &str,
        create: bool,
    ) -> Result<Option<(OwnedMutexGuard<Entry>, bool)>, BrokerError> {
        check_name(name).map_err(|reason| BrokerError::InvalidGroup {
            name: name.to_string(),
            reason,
        })?;
        loop {
            let (arc, created) = {
                let mut groups = self.groups.lock();
                match groups.get(name) {
                    Some(e) => (e.clone(), false),
                    None if !create => return Ok(None),
                    None => {
                        if groups.len() >= self.max_groups {
                            return Err(GroupError::TooManyGroups(self.max_groups).into());
                        }
                        let e = Arc::new(tokio::sync::Mutex::new(Entry {
                            group: Group::new(name),
                            joins: HashMap::new(),
                            syncs: HashMap::new(),
                        }));
                        groups.insert(name.to_string(), e.clone());
                        metrics::gauge!("ferry_groups").set(groups.len() as f64);
                        (e, true)
                    }
                }
            };
            let guard = arc.clone().lock_owned().await;
            // The timer or a delete may have dropped the entry meanwhile.
            let current = self
                .groups
                .lock()
                .get(name)
                .is_some_and(|e| Arc::ptr_eq(e, &arc));
            if current {
                return Ok(Some((guard, created)));
            }
        }
    }

    /// Drops the group from the map (the caller holds its lock).
    fn forget(&self, name: &str) {
        let mut groups = self.groups.lock();
        groups.remove(name);
        metrics::gauge!("ferry_groups").set(groups.len() as f64);
    }

    /// Applies `event`, persists if the transition says so, adopts the new
    /// group, parks the caller, and sends the answers in order.
    async fn run(
        &self,
        entry: &mut Entry,
        event: Event,
        park: Park,
    ) -> Result<state::Transition, BrokerError> {
        let t = state::apply(&entry.group, &self.settings, event, self.now())?;
        let earlier = match (t.group.next_deadline(), entry.group.next_deadline()) {
            (Some(new), Some(old)) => new < old,
            (new, _) => new.is_some(),
        };
        if t.effects.contains(&Effect::Persist) {
            self.offsets
                .write_group(&t.group.name, &codec::encode(&t.group))
                .await?;
        }
        let delta = t.group.members.len() as f64 - entry.group.members.len() as f64;
        if delta != 0.0 {
            metrics::gauge!("ferry_group_members").increment(delta);
        }
        entry.group = t.group.clone();
        // A request parked again under the same member id replaces the
        // older one, which is told to rejoin.
        if let Some(id) = &t.wait_as {
            match park {
                Park::None => {}
                Park::Join(tx) => {
                    if let Some(old) = entry.joins.insert(id.clone(), tx) {
                        let _ = old.send(Err(GroupError::RebalanceInProgress));
                    }
                }
                Park::Sync(tx) => {
                    if let Some(old) = entry.syncs.insert(id.clone(), tx) {
                        let _ = old.send(Err(GroupError::RebalanceInProgress));
                    }
                }
            }
        }
        for effect in &t.effects {
            match effect {
                Effect::Persist => {}
                Effect::Rebalanced => {
                    metrics::counter!("ferry_group_rebalances_total").increment(1);
                }
                Effect::ReplyJoin { member_id, reply } => {
                    if let Some(tx) = entry.joins.remove(member_id) {
                        let _ = tx.send(reply.clone());
                    }
                }
                Effect::ReplySync { member_id, reply } => {
                    if let Some(tx) = entry.syncs.remove(member_id) {
                        let _ = tx.send(reply.clone());
                    }
                }
            }
        }
        // The timer sleeps until the earliest deadline it knows; wake it
        // only if this group's came nearer (a later one it finds itself).
        if earlier {
            self.timer.notify_one();
        }
        Ok(t)
    }

    /// JoinGroup: resolves when the member's generation is formed (or at
    /// once: `MemberIdRequired`, an unchanged rejoin, an error).
    pub(crate) async fn join(&self, group: &str, mut j: Join) -> Result<JoinReply, BrokerError> {
        j.fresh_member_id = self.fresh_member_id(&j.client_id);
        let (tx, rx) = oneshot::channel();
        {
            let Some((mut entry, created)) = self.lock(group, true).await? else {
                return Err(GroupError::GroupIdNotFound(group.to_string()).into());
            };
            if let Err(e) = self.run(&mut entry, Event::Join(j), Park::Join(tx)).await {
                if created && entry.group == Group::new(group) {
                    self.forget(group);
                }
                return Err(e);
            }
        }
        match rx.await {
            Ok(r) => Ok(r?),
            Err(_) => Err(GroupError::RebalanceInProgress.into()),
        }
    }

    /// SyncGroup: resolves with the member's assignment once the leader
    /// sent it.
    pub(crate) async fn sync(
        &self,
        group: &str,
        event: Event,
        member_id: &str,
    ) -> Result<SyncReply, BrokerError> {
        let (tx, rx) = oneshot::channel();
        {
            let Some((mut entry, _)) = self.lock(group, false).await? else {
                return Err(GroupError::UnknownMemberId(member_id.to_string()).into());
            };
            self.run(&mut entry, event, Park::Sync(tx)).await?;
        }
        match rx.await {
            Ok(r) => Ok(r?),
            Err(_) => Err(GroupError::RebalanceInProgress.into()),
        }
    }

    /// Heartbeat.
    pub(crate) async fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
        instance_id: &str,
        generation: i32,
    ) -> Result<(), BrokerError> {
        let Some((mut entry, _)) = self.lock(group, false).await? else {
            return Err(GroupError::UnknownMemberId(member_id.to_string()).into());
        };
        let event = Event::Heartbeat {
            member_id: member_id.to_string(),
            instance_id: instance_id.to_string(),
            generation,
        };
        let t = self.run(&mut entry, event, Park::None).await?;
        Ok(t.answer?)
    }

    /// LeaveGroup: each member's result.
    pub(crate) async fn leave(
        &self,
        group: &str,
        members: Vec<(String, String)>,
    ) -> Result<Vec<(String, String, Result<(), GroupError>)>, BrokerError> {
        let Some((mut entry, _)) = self.lock(group, false).await? else {
            return Ok(members
                .into_iter()
                .map(|(m, i)| {
                    let e = GroupError::UnknownMemberId(m.clone());
                    (m, i, Err(e))
                })
                .collect());
        };
        let t = self
            .run(&mut entry, Event::Leave(members), Park::None)
            .await?;
        Ok(t.left)
    }

    /// The group as it is now, if the coordinator knows it.
    pub(crate) async fn describe(&self, group: &str) -> Result<Option<Group>, BrokerError> {
        Ok(self.lock(group, false).await?.map(|(e, _)| e.group.clone()))
    }

    /// Every group the coordinator knows, by name.
    pub(crate) async fn list(&self) -> Vec<Group> {
        let entries: Vec<_> = self.groups.lock().values().cloned().collect();
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            out.push(e.lock().await.group.clone());
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// DeleteGroup: refused while it has members; removes its metadata and
    /// its committed offsets durably.
    pub(crate) async fn delete(&self, group: &str) -> Result<(), BrokerError> {
        match self.lock(group, false).await? {
            None => {
                if !self.offsets.has_offsets(group) {
                    return Err(GroupError::GroupIdNotFound(group.to_string()).into());
                }
                self.offsets.delete_group(group).await
            }
            Some((mut entry, _)) => {
                let t = state::apply(&entry.group, &self.settings, Event::Delete, self.now())?;
                self.offsets.delete_group(group).await?;
                entry.group = t.group;
                self.forget(group);
                Ok(())
            }
        }
    }

    /// Checks an offset commit against the group (`state::check_commit`)
    /// and returns the group's lock, to hold while the offsets are
    /// written, so no rebalance completes between the check and the write.
    pub(crate) async fn fence_commit(
        &self,
        group: &str,
        fence: &CommitFence,
        transactional: bool,
    ) -> Result<Option<OwnedMutexGuard<Entry>>, BrokerError> {
        let entry = self.lock(group, false).await?.map(|(e, _)| e);
        state::check_commit(
            entry.as_ref().map(|e| &e.group),
            fence.generation,
            &fence.member_id,
            &fence.instance_id,
            transactional,
        )?;
        Ok(entry)
    }

    /// The earliest deadline of any group.
    async fn next_deadline(&self) -> Option<i64> {
        let entries: Vec<_> = self.groups.lock().values().cloned().collect();
        let mut next: Option<i64> = None;
        for e in entries {
            if let Some(t) = e.lock().await.group.next_deadline() {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        next
    }

    /// Applies a tick to every group with a deadline due, and forgets
    /// groups that never formed a generation and have nothing pending.
    pub(crate) async fn tick(&self) {
        let names: Vec<String> = self.groups.lock().keys().cloned().collect();
        for name in names {
            let Ok(Some((mut entry, _))) = self.lock(&name, false).await else {
                continue;
            };
            let due = entry.group.next_deadline().is_some_and(|t| t <= self.now());
            if due && let Err(e) = self.run(&mut entry, Event::Tick, Park::None).await {
                tracing::error!(group = %name, error = %e, "group timer failed");
            }
            if entry.group == Group::new(&name) && entry.joins.is_empty() {
                self.forget(&name);
            }
        }
    }

    /// Runs the timers until the future is dropped: sleeps until the
    /// earliest deadline (or until an event changes them), then ticks.
    pub(crate) async fn run_timers(&self) {
        loop {
            let changed = self.timer.notified();
            let sleep = match self.next_deadline().await {
                Some(t) => {
                    let at = self.start + Duration::from_millis(t.max(0) as u64);
                    tokio::time::sleep_until(at)
                }
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            tokio::select! {
                _ = sleep => {}
                _ = changed => {}
            }
            self.tick().await;
        }
    }
}
