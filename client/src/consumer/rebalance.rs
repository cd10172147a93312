//! A subscribed consumer's part in its group: the rebalance steps `poll`
//! takes (revoke, join, take over the assignment) and the committed
//! offsets a new owner starts from. Membership itself (join and sync
//! rounds, heartbeats, leave) is `membership.rs`.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use ferry_proto::ErrorCode;

use super::membership::{Membership, Phase};
use super::{CommitMode, Consumer, ConsumerEvent};
use crate::error::ClientError;
use crate::group::{AssignmentChange, RebalanceProtocol};
use crate::retry::{Backoff, retry_until};

/// Longest a newly assigned partition waits for a transaction that holds
/// offsets for it to end before the poll fails (the committed offset is
/// not final until then).
const MAX_STABLE_OFFSETS_WAIT: Duration = Duration::from_secs(60);

/// A subscribed consumer's part in its group.
#[derive(Debug)]
pub(super) struct GroupState {
    pub(super) membership: Membership,
    /// The subscribed topics.
    pub(super) topics: Vec<String>,
    /// The partitions the group assigned and this consumer still holds.
    pub(super) owned: BTreeSet<(String, u32)>,
    /// The chosen assignor's protocol, once joined.
    pub(super) protocol: Option<RebalanceProtocol>,
    /// Polls that took part in a rebalance.
    pub(super) rebalances: u64,
}

impl Consumer {
    /// One step of the group protocol, if the group needs one: the events
    /// it caused, or `None` when the member is stable (or has no group).
    pub(super) async fn rebalance(&mut self) -> Result<Option<Vec<ConsumerEvent>>, ClientError> {
        let result = self.rebalance_step().await;
        if let (Ok(Some(_)), Some(g)) = (&result, &mut self.group) {
            g.rebalances += 1;
        }
        result
    }

    async fn rebalance_step(&mut self) -> Result<Option<Vec<ConsumerEvent>>, ClientError> {
        let Some(g) = &self.group else {
            return Ok(None);
        };
        g.membership.touch();
        match g.membership.phase() {
            Phase::Stable => return Ok(None),
            Phase::Fenced => {
                return Err(ClientError::broker(
                    ErrorCode::FencedInstanceId,
                    format!(
                        "another consumer joined group {} with instance id {}",
                        g.membership.group(),
                        self.config.group_instance_id.as_deref().unwrap_or("")
                    ),
                ));
            }
            Phase::Lost(why) => {
                let lost: Vec<(String, u32)> = g.owned.iter().cloned().collect();
                g.membership.reset();
                if !lost.is_empty() {
                    tracing::warn!(
                        group = %g.membership.group(),
                        partitions = lost.len(),
                        reason = %why,
                        "the consumer is no longer in the group; its partitions are lost"
                    );
                    self.drop_partitions(&lost.iter().cloned().collect());
                    if let Some(g) = &mut self.group {
                        g.owned.clear();
                    }
                    return Ok(Some(vec![ConsumerEvent::Lost { partitions: lost }]));
                }
            }
            Phase::Rejoin | Phase::Unjoined => {
                // Eager: give everything up before joining, and let the
                // application see it before the partitions move on.
                if g.protocol == Some(RebalanceProtocol::Eager) && !g.owned.is_empty() {
                    let all = g.owned.clone();
                    let event = self.revoke(&all).await;
                    return Ok(Some(vec![event]));
                }
            }
        }
        self.join().await.map(Some)
    }

    /// Joins the group and takes over the assignment it gives.
    async fn join(&mut self) -> Result<Vec<ConsumerEvent>, ClientError> {
        let g = self.group.as_ref().expect("a group member");
        let joined = g.membership.join(&g.topics, &g.owned).await?;
        let change = AssignmentChange::between(&g.owned, &joined.assigned);
        if let Some(g) = &mut self.group {
            g.protocol = Some(joined.protocol);
        }
        let mut events = Vec::new();
        if !change.revoked.is_empty() {
            // Cooperative: what moves is only revoked in this round; its
            // new owner gets it in the next, which this member's rejoin
            // starts.
            events.push(self.revoke(&change.revoked).await);
            if let Some(g) = &self.group {
                g.membership.request_rejoin();
            }
        }
        if !change.added.is_empty() {
            let added: Vec<(String, u32)> = change.added.iter().cloned().collect();
            if let Err(e) = self.resolve_and_seek(&added, true).await {
                self.drop_partitions(&change.added);
                if let Some(g) = &self.group {
                    g.membership.request_rejoin();
                }
                return Err(e);
            }
            if let Some(g) = &mut self.group {
                g.owned.extend(change.added.iter().cloned());
            }
            tracing::info!(
                group = ?self.config.group,
                partitions = ?added,
                "partitions assigned"
            );
            events.push(ConsumerEvent::Assigned { partitions: added });
        }
        Ok(events)
    }

    /// Stops reading `partitions`, committing their positions first under
    /// [`CommitMode::After`].
    async fn revoke(&mut self, partitions: &BTreeSet<(String, u32)>) -> ConsumerEvent {
        let positions: Vec<(String, u32, u64)> = partitions
            .iter()
            .filter_map(|(t, p)| self.position(t, *p).map(|o| (t.clone(), *p, o)))
            .collect();
        if self.config.commit_mode == CommitMode::After
            && !positions.is_empty()
            && let Err(e) = self.commit_list(&positions).await
        {
            tracing::warn!(
                error = %e,
                "could not commit the positions of revoked partitions; their next owner reads from the last commit"
            );
        }
        self.drop_partitions(partitions);
        if let Some(g) = &mut self.group {
            for tp in partitions {
                g.owned.remove(tp);
            }
        }
        tracing::info!(group = ?self.config.group, partitions = ?positions, "partitions revoked");
        ConsumerEvent::Revoked {
            partitions: positions,
        }
    }

    pub(super) fn drop_partitions(&mut self, partitions: &BTreeSet<(String, u32)>) {
        self.assignments
            .retain(|a| !partitions.contains(&(a.topic.to_string(), a.partition)));
    }

    /// The group's committed offsets for `topic`, once no open transaction
    /// holds offsets for them (`UnstableOffsetCommit` is retried).
    pub(super) async fn stable_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<HashMap<u32, u64>, ClientError> {
        retry_until(
            "FetchOffsets",
            tokio::time::Instant::now() + MAX_STABLE_OFFSETS_WAIT,
            Backoff::new(Duration::from_millis(20), Duration::from_millis(500)),
            ClientError::is_retriable,
            || async {
                if let Some(g) = &self.group {
                    g.membership.touch();
                }
                self.client.fetch_offsets_stable(group, topic).await
            },
        )
        .await
    }
}
