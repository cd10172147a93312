//! The [`Assignor`] trait, the choice of assignors by name, and what a
//! member does with the assignment it gets ([`AssignmentChange`]).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use super::Subscription;
use super::{CooperativeStickyAssignor, RangeAssignor, RoundRobinAssignor};

/// A member id, as the group coordinator hands it out in JoinGroup.
pub type MemberId = String;

/// An assignor's answer: each member's partitions, as (topic, partition)
/// in order. Every member given to [`Assignor::assign`] has an entry, empty
/// when it gets nothing.
pub type GroupAssignment = BTreeMap<MemberId, Vec<(String, u32)>>;

/// One member of the group as the leader sees it in the JoinGroup
/// response: its ids and its decoded [`Subscription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSubscription {
    /// The member id.
    pub member_id: MemberId,
    /// The static member id (`group.instance.id`), if the member has one.
    pub group_instance_id: Option<String>,
    /// What the member subscribes to and owns.
    pub subscription: Subscription,
}

impl MemberSubscription {
    /// A dynamic member (no group instance id).
    pub fn new(member_id: impl Into<MemberId>, subscription: Subscription) -> MemberSubscription {
        MemberSubscription {
            member_id: member_id.into(),
            group_instance_id: None,
            subscription,
        }
    }

    /// Whether the member subscribes to `topic`.
    pub fn subscribes_to(&self, topic: &str) -> bool {
        self.subscription.topics.iter().any(|t| t == topic)
    }
}

/// How members give partitions up in a rebalance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RebalanceProtocol {
    /// Every member revokes all its partitions before it joins; the
    /// assignment is complete in one round.
    Eager,
    /// Members keep their partitions while they join; a partition that
    /// changes owner is first only revoked, and assigned to its new owner in
    /// a second rebalance (KIP-429).
    Cooperative,
}

/// A partition assignment strategy, run by the group leader over every
/// member's subscription, chosen by name as Kafka's
/// `partition.assignment.strategy` does.
///
/// Implementations are deterministic: the same members (in any order) and
/// partition counts give the same assignment.
pub trait Assignor: Send + Sync + std::fmt::Debug {
    /// The protocol name members list in JoinGroup, such as `"range"`.
    fn name(&self) -> &'static str;

    /// How members hand partitions over under this assignor.
    fn rebalance_protocol(&self) -> RebalanceProtocol;

    /// Assigns the partitions of every topic in `partitions_per_topic` that
    /// some member subscribes to. Topics no member subscribes to, and
    /// subscribed topics missing from `partitions_per_topic`, are left out.
    /// Member ids are unique; if one appears twice only its first entry
    /// counts.
    fn assign(
        &self,
        members: &[MemberSubscription],
        partitions_per_topic: &BTreeMap<String, u32>,
    ) -> GroupAssignment;
}

/// The assignors a consumer offers by default, in order of preference:
/// Kafka's default `partition.assignment.strategy`.
pub const DEFAULT_ASSIGNORS: [&str; 2] = ["range", "cooperative-sticky"];

/// The assignor called `name` (`"range"`, `"roundrobin"` or
/// `"cooperative-sticky"`), or `None`.
pub fn by_name(name: &str) -> Option<Box<dyn Assignor>> {
    match name {
        "range" => Some(Box::new(RangeAssignor)),
        "roundrobin" => Some(Box::new(RoundRobinAssignor)),
        "cooperative-sticky" => Some(Box::new(CooperativeStickyAssignor)),
        _ => None,
    }
}

/// An assignor name [`assignors`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown partition assignor {0:?} (known: range, roundrobin, cooperative-sticky)")]
pub struct UnknownAssignor(pub String);

/// The assignors called `names`, in that order, for a configured
/// `partition.assignment.strategy`.
///
/// # Errors
/// [`UnknownAssignor`] with the first name that is not known.
pub fn assignors<S: AsRef<str>>(names: &[S]) -> Result<Vec<Box<dyn Assignor>>, UnknownAssignor> {
    names
        .iter()
        .map(|n| by_name(n.as_ref()).ok_or_else(|| UnknownAssignor(n.as_ref().to_owned())))
        .collect()
}

/// [`DEFAULT_ASSIGNORS`], built.
pub fn default_assignors() -> Vec<Box<dyn Assignor>> {
    DEFAULT_ASSIGNORS
        .iter()
        .filter_map(|n| by_name(n))
        .collect()
}

/// What a member does when its assignment arrives: stop consuming (after
/// committing) the `revoked` partitions and start the `added` ones.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AssignmentChange {
    /// Owned before, not assigned now: owned − assigned.
    pub revoked: BTreeSet<(String, u32)>,
    /// Assigned now, not owned before: assigned − owned.
    pub added: BTreeSet<(String, u32)>,
}

impl AssignmentChange {
    /// The change from the partitions a member `owned` to those it was
    /// `assigned`.
    pub fn between(
        owned: &BTreeSet<(String, u32)>,
        assigned: &BTreeSet<(String, u32)>,
    ) -> AssignmentChange {
        AssignmentChange {
            revoked: owned.difference(assigned).cloned().collect(),
            added: assigned.difference(owned).cloned().collect(),
        }
    }

    /// Whether the member must join again after revoking: under
    /// [`RebalanceProtocol::Cooperative`], revoked partitions are handed to
    /// their new owners only in the next rebalance, which this member's
    /// rejoin starts.
    pub fn needs_rejoin(&self) -> bool {
        !self.revoked.is_empty()
    }
}

/// Kafka's member order for range and round robin: members with a group
/// instance id first, by instance id, then the others by member id. Ties
/// (equal instance ids) fall back to the member id so the order is total.
pub(crate) fn kafka_member_order(a: &MemberSubscription, b: &MemberSubscription) -> Ordering {
    match (&a.group_instance_id, &b.group_instance_id) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
    .then_with(|| a.member_id.cmp(&b.member_id))
}

/// The members with duplicate ids dropped (the first entry of each id
/// stays), in `order`.
pub(crate) fn unique_members(
    members: &[MemberSubscription],
    order: impl Fn(&MemberSubscription, &MemberSubscription) -> Ordering,
) -> Vec<&MemberSubscription> {
    let mut seen = BTreeSet::new();
    let mut unique: Vec<&MemberSubscription> = members
        .iter()
        .filter(|m| seen.insert(m.member_id.as_str()))
        .collect();
    unique.sort_by(|a, b| order(a, b));
    unique
}

/// An assignment with an empty entry for each of `members`.
pub(crate) fn empty_assignment(members: &[&MemberSubscription]) -> GroupAssignment {
    members
        .iter()
        .map(|m| (m.member_id.clone(), Vec::new()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(parts: &[(&str, u32)]) -> BTreeSet<(String, u32)> {
        parts.iter().map(|(t, p)| ((*t).to_owned(), *p)).collect()
    }

    #[test]
    fn by_name_knows_the_three_kafka_names_and_nothing_else() {
        for name in ["range", "roundrobin", "cooperative-sticky"] {
            assert_eq!(by_name(name).unwrap().name(), name);
        }
        assert!(by_name("sticky").is_none());
        assert!(by_name("Range").is_none());
    }

    #[test]
    fn the_defaults_are_range_then_cooperative_sticky() {
        let names: Vec<_> = default_assignors().iter().map(|a| a.name()).collect();
        assert_eq!(names, DEFAULT_ASSIGNORS);
        assert_eq!(
            by_name("cooperative-sticky").unwrap().rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        assert_eq!(
            by_name("range").unwrap().rebalance_protocol(),
            RebalanceProtocol::Eager
        );
    }

    #[test]
    fn assignors_names_the_first_unknown_strategy() {
        assert_eq!(
            assignors(&["range", "sticky", "nope"]).unwrap_err(),
            UnknownAssignor("sticky".into())
        );
        assert_eq!(assignors(&["roundrobin"]).unwrap().len(), 1);
    }

    #[test]
    fn the_change_is_owned_minus_assigned_and_assigned_minus_owned() {
        let owned = set(&[("a", 0), ("a", 1), ("b", 0)]);
        let assigned = set(&[("a", 1), ("b", 0), ("b", 1)]);
        let change = AssignmentChange::between(&owned, &assigned);
        assert_eq!(change.revoked, set(&[("a", 0)]));
        assert_eq!(change.added, set(&[("b", 1)]));
        assert!(change.needs_rejoin());
        let same = AssignmentChange::between(&owned, &owned);
        assert_eq!(same, AssignmentChange::default());
        assert!(!same.needs_rejoin());
    }

    #[test]
    fn static_members_come_first_by_instance_id_then_dynamic_by_member_id() {
        let member = |id: &str, instance: Option<&str>| MemberSubscription {
            member_id: id.into(),
            group_instance_id: instance.map(Into::into),
            subscription: Subscription::default(),
        };
        let members = [
            member("a", None),
            member("b", Some("z")),
            member("c", Some("y")),
            member("d", None),
            member("a", Some("x")), // a duplicate id: dropped
        ];
        let order: Vec<_> = unique_members(&members, kafka_member_order)
            .iter()
            .map(|m| m.member_id.as_str())
            .collect();
        assert_eq!(order, ["c", "b", "a", "d"]);
    }
}
