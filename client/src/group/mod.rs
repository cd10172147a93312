//! Consumer groups, from the client's side: the consumer protocol's bytes
//! and the partition assignors.
//!
//! Ferry's broker runs a group coordinator following Kafka's classic group
//! protocol, in which the coordinator only keeps membership and the
//! partitions are divided on the client side, by the group's leader:
//!
//! 1. **Join.** Each member sends JoinGroup with protocol type
//!    [`PROTOCOL_TYPE`] and, for each assignor it offers in order of
//!    preference (by default [`DEFAULT_ASSIGNORS`]), the assignor's name and
//!    its [`Subscription`] bytes: the topics it wants and the partitions it
//!    owns now. The coordinator picks an assignor every member offers,
//!    starts a new generation and makes one member the leader.
//! 2. **Assign.** Only the leader gets every member's subscription back.
//!    It decodes them into [`MemberSubscription`]s, looks up the partition
//!    count of each subscribed topic, runs the chosen [`Assignor`] (found
//!    with [`by_name`]) and sends SyncGroup with one [`Assignment`] per
//!    member. The others send an empty SyncGroup.
//! 3. **Take over.** Each member gets its own [`Assignment`] from SyncGroup
//!    and compares it with what it owned ([`AssignmentChange`]): it commits
//!    and stops the `revoked` partitions, starts the `added` ones, then
//!    heartbeats until the coordinator says a rebalance has begun (a member
//!    joined, left, timed out, or the subscribed topics changed), and joins
//!    again.
//!
//! How partitions change hands depends on the assignor's
//! [`RebalanceProtocol`]:
//!
//! - **Eager** ([`RangeAssignor`], [`RoundRobinAssignor`]): every member
//!   revokes everything before it joins, so nobody consumes during the
//!   rebalance, and the new assignment is complete at once.
//! - **Cooperative** ([`CooperativeStickyAssignor`], KIP-429): members keep
//!   consuming while they join and send what they own. The leader's
//!   assignment leaves out every partition that is moving to another
//!   member, so in the first round its old owner only revokes it (after
//!   committing its offsets). A member that revoked anything joins again
//!   ([`AssignmentChange::needs_rejoin`]), and in that second round the
//!   freed partitions, owned by nobody now, go to their new owners.
//!   Partitions that do not move are never stopped.
//!
//! ```
//! use std::collections::BTreeMap;
//! use ferry_client::group::{
//!     Assignment, AssignmentChange, MemberSubscription, Subscription, by_name,
//! };
//!
//! # fn main() -> Result<(), ferry_client::group::ProtocolError> {
//! let partitions = BTreeMap::from([("events".to_owned(), 3)]);
//! let assignor = by_name("cooperative-sticky").expect("a known assignor");
//!
//! // The leader decodes every member's JoinGroup metadata ...
//! let joined = Subscription::new(["events"], &[]).encode()?;
//! let members = vec![
//!     MemberSubscription::new("m1", Subscription::decode(&joined)?),
//!     MemberSubscription::new("m2", Subscription::decode(&joined)?),
//! ];
//! // ... and sends each member its Assignment in SyncGroup.
//! let plan = assignor.assign(&members, &partitions);
//! let for_m1 = Assignment::new(&plan["m1"]).encode()?;
//!
//! // m1 owned nothing: it starts two partitions.
//! let mine = Assignment::decode(&for_m1)?.partitions();
//! let change = AssignmentChange::between(&Default::default(), &mine);
//! assert_eq!(change.added.len(), 2);
//!
//! // m3 joins; m1 and m2 join again owning what they were given.
//! let members = vec![
//!     MemberSubscription::new("m1", Subscription::new(["events"], &plan["m1"])),
//!     MemberSubscription::new("m2", Subscription::new(["events"], &plan["m2"])),
//!     MemberSubscription::new("m3", Subscription::new(["events"], &[])),
//! ];
//! let first = assignor.assign(&members, &partitions);
//! // Round one: m1 only gives a partition up; m3 gets nothing yet.
//! let change = AssignmentChange::between(
//!     &members[0].subscription.owned(),
//!     &first["m1"].iter().cloned().collect(),
//! );
//! assert_eq!(change.revoked.len(), 1);
//! assert!(change.needs_rejoin());
//! assert!(first["m3"].is_empty());
//!
//! // Round two, after m1 revoked: the freed partition goes to m3.
//! let members: Vec<_> = members
//!     .iter()
//!     .map(|m| {
//!         let owned = &first[&m.member_id];
//!         MemberSubscription::new(m.member_id.clone(), Subscription::new(["events"], owned))
//!     })
//!     .collect();
//! let second = assignor.assign(&members, &partitions);
//! assert_eq!(second["m3"], [("events".to_owned(), 2)]);
//! assert_eq!(second["m1"], first["m1"]);
//! # Ok(())
//! # }
//! ```

mod assignor;
mod range;
mod roundrobin;
mod sticky;
#[cfg(test)]
mod testing;

pub use assignor::{
    AssignmentChange, Assignor, DEFAULT_ASSIGNORS, GroupAssignment, MemberId, MemberSubscription,
    RebalanceProtocol, UnknownAssignor, assignors, by_name, default_assignors,
};
pub use ferry_proto::consumer_protocol::{
    ASSIGNMENT_VERSION, Assignment, MAX_KNOWN_SUBSCRIPTION_VERSION, MAX_NAME_BYTES,
    MAX_PARTITIONS_PER_ASSIGNMENT, MAX_RACK_ID_BYTES, MAX_TOPICS_PER_SUBSCRIPTION,
    MAX_USER_DATA_BYTES, PROTOCOL_TYPE, ProtocolError, SUBSCRIPTION_VERSION, Subscription,
    TopicPartitions,
};
pub use range::RangeAssignor;
pub use roundrobin::RoundRobinAssignor;
pub use sticky::CooperativeStickyAssignor;
